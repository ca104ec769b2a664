//! Whether a stream carries something mcptap reads (MCP, or a model API's calls): the one
//! state machine every framing feeds.
//!
//! A stream starts [`Verdict::Probing`]. Evidence moves it: a message of a protocol mcptap
//! reads (a JSON-RPC message, a model call) makes it [`Verdict::Kept`] for good; something that is not one is tolerated once while probing (the
//! agent may have started in the middle of a message, whose tail then arrives first), and a
//! second time, or a thing that cannot be MCP at all, makes it [`Verdict::Rejected`], after
//! which the kernel is told to stop shipping the fd. On a stream already kept, something that
//! is not a message is corruption: reported, and the stream stays kept.

/// Why a stream is not one mcptap reads (`mcptap_streams_rejected_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// TLS records: ciphertext of a connection the kernel did not see start.
    Tls,
    /// Binary bytes.
    Binary,
    /// Two lines that are not JSON.
    NotJson,
    /// JSON that is not JSON-RPC.
    JsonNotJsonrpc,
    /// No line that starts like JSON in the first 64 KiB.
    NoJsonLines,
    /// HTTP that is neither MCP nor a model API's call.
    HttpNotMcp,
    /// HTTP whose framing broke.
    HttpBroken,
    /// WebSocket whose framing broke (or whose compressed messages did not inflate).
    WebSocketBroken,
    /// HTTP that lost bytes: its next message boundary cannot be found.
    HttpGap,
    /// An HTTP connection given up to hold `--max-buffered-bytes`.
    BufferBudget,
}

impl Reason {
    /// The name in `agent_stop` and the metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Tls => "tls",
            Reason::Binary => "binary",
            Reason::NotJson => "not_json",
            Reason::JsonNotJsonrpc => "json_not_jsonrpc",
            Reason::NoJsonLines => "no_json_lines",
            Reason::HttpNotMcp => "http_not_mcp",
            Reason::HttpBroken => "http_broken",
            Reason::WebSocketBroken => "websocket_broken",
            Reason::HttpGap => "http_gap",
            Reason::BufferBudget => "buffer_budget",
        }
    }
}

/// What is known about a stream's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet; `junk` frames that were not JSON-RPC were seen.
    Probing {
        /// Frames seen that were not JSON-RPC.
        junk: u8,
    },
    /// Carries a protocol mcptap reads: JSON-RPC (MCP), or model calls.
    Kept,
    /// Does not, for this reason (counted in `mcptap_streams_rejected_total`).
    Rejected(Reason),
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict::Probing { junk: 0 }
    }
}

/// What to make of a frame that is not a JSON-RPC message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stray {
    /// Probing, the first such frame: held until the stream is decided, reported as
    /// corruption if it turns out to carry MCP.
    Held,
    /// The stream is not MCP.
    Rejects,
    /// The stream carries MCP: corruption, reported now.
    Corrupts,
    /// Already rejected: nothing to do.
    Ignored,
}

impl Verdict {
    /// A message of a protocol mcptap reads was seen.
    pub fn message(self) -> Verdict {
        match self {
            Verdict::Rejected(r) => Verdict::Rejected(r),
            _ => Verdict::Kept,
        }
    }

    /// A frame that is not JSON-RPC: `json` says whether it was JSON at all (JSON that is not
    /// JSON-RPC is proof enough that the stream is something else).
    pub fn stray(self, json: bool) -> (Verdict, Stray) {
        match self {
            Verdict::Probing { junk } if json || junk >= 1 => {
                let reason = if json {
                    Reason::JsonNotJsonrpc
                } else {
                    Reason::NotJson
                };
                (Verdict::Rejected(reason), Stray::Rejects)
            }
            Verdict::Probing { junk } => (Verdict::Probing { junk: junk + 1 }, Stray::Held),
            Verdict::Kept => (Verdict::Kept, Stray::Corrupts),
            Verdict::Rejected(r) => (Verdict::Rejected(r), Stray::Ignored),
        }
    }

    /// The stream cannot be MCP, for `reason`; a stream already known to be MCP stays so.
    pub fn reject(self, reason: Reason) -> Verdict {
        match self {
            Verdict::Kept => Verdict::Kept,
            Verdict::Rejected(r) => Verdict::Rejected(r),
            Verdict::Probing { .. } => Verdict::Rejected(reason),
        }
    }

    /// Not decided yet.
    pub fn probing(self) -> bool {
        matches!(self, Verdict::Probing { .. })
    }

    /// Carries a protocol mcptap reads.
    pub fn kept(self) -> bool {
        self == Verdict::Kept
    }

    /// The reason it was rejected, if it was.
    pub fn rejected(self) -> Option<Reason> {
        match self {
            Verdict::Rejected(r) => Some(r),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_stray_line_is_tolerated_while_probing_and_a_message_decides() {
        let v = Verdict::default();
        let (v, s) = v.stray(false);
        assert_eq!((v, s), (Verdict::Probing { junk: 1 }, Stray::Held));
        assert_eq!(v.message(), Verdict::Kept);
        assert_eq!(
            v.stray(false),
            (Verdict::Rejected(Reason::NotJson), Stray::Rejects)
        );
        assert_eq!(
            Verdict::default().stray(true),
            (Verdict::Rejected(Reason::JsonNotJsonrpc), Stray::Rejects)
        );
        assert_eq!(Verdict::Kept.stray(false), (Verdict::Kept, Stray::Corrupts));
        assert_eq!(Verdict::Kept.reject(Reason::Binary), Verdict::Kept);
        assert_eq!(
            Verdict::default().reject(Reason::Binary).rejected(),
            Some(Reason::Binary)
        );
        assert_eq!(
            Verdict::Rejected(Reason::Tls).message(),
            Verdict::Rejected(Reason::Tls)
        );
    }
}
