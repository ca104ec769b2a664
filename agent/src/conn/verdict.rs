//! Whether a stream carries something mcptap reads (MCP, or a model API's calls): the one
//! state machine every framing feeds.
//!
//! A stream starts [`Verdict::Probing`]. Evidence moves it: a message of a protocol mcptap
//! reads (a JSON-RPC message, a model call) makes it [`Verdict::Kept`] for good; something that is not one is tolerated once while probing (the
//! agent may have started in the middle of a message, whose tail then arrives first), and a
//! second time, or a thing that cannot be MCP at all, makes it [`Verdict::Rejected`], after
//! which the kernel is told to stop shipping the fd. On a stream already kept, something that
//! is not a message is corruption: reported, and the stream stays kept.

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
    Rejected(&'static str),
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
                let reason = if json { "json_not_jsonrpc" } else { "not_json" };
                (Verdict::Rejected(reason), Stray::Rejects)
            }
            Verdict::Probing { junk } => (Verdict::Probing { junk: junk + 1 }, Stray::Held),
            Verdict::Kept => (Verdict::Kept, Stray::Corrupts),
            Verdict::Rejected(r) => (Verdict::Rejected(r), Stray::Ignored),
        }
    }

    /// The stream cannot be MCP, for `reason`; a stream already known to be MCP stays so.
    pub fn reject(self, reason: &'static str) -> Verdict {
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
    pub fn rejected(self) -> Option<&'static str> {
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
            (Verdict::Rejected("not_json"), Stray::Rejects)
        );
        assert_eq!(
            Verdict::default().stray(true),
            (Verdict::Rejected("json_not_jsonrpc"), Stray::Rejects)
        );
        assert_eq!(Verdict::Kept.stray(false), (Verdict::Kept, Stray::Corrupts));
        assert_eq!(Verdict::Kept.reject("binary"), Verdict::Kept);
        assert_eq!(
            Verdict::default().reject("binary").rejected(),
            Some("binary")
        );
        assert_eq!(Verdict::Rejected("x").message(), Verdict::Rejected("x"));
    }
}
