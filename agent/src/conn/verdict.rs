//! Whether a stream carries MCP: the one state machine every framing feeds.
//!
//! A stream starts [`Verdict::Probing`]. Evidence moves it: a JSON-RPC message makes it
//! [`Verdict::Mcp`] for good; something that is not one is tolerated once while probing (the
//! agent may have started in the middle of a message, whose tail then arrives first), and a
//! second time, or a thing that cannot be MCP at all, makes it [`Verdict::Rejected`], after
//! which the kernel is told to stop shipping the fd. On a stream already known to carry MCP,
//! something that is not a message is corruption: reported, and the stream stays MCP.

/// What is known about a stream's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet; `junk` frames that were not JSON-RPC were seen.
    Probing {
        /// Frames seen that were not JSON-RPC.
        junk: u8,
    },
    /// Carries JSON-RPC.
    Mcp,
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
    /// A JSON-RPC message was seen.
    pub fn message(self) -> Verdict {
        match self {
            Verdict::Rejected(r) => Verdict::Rejected(r),
            _ => Verdict::Mcp,
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
            Verdict::Mcp => (Verdict::Mcp, Stray::Corrupts),
            Verdict::Rejected(r) => (Verdict::Rejected(r), Stray::Ignored),
        }
    }

    /// The stream cannot be MCP, for `reason`; a stream already known to be MCP stays so.
    pub fn reject(self, reason: &'static str) -> Verdict {
        match self {
            Verdict::Mcp => Verdict::Mcp,
            Verdict::Rejected(r) => Verdict::Rejected(r),
            Verdict::Probing { .. } => Verdict::Rejected(reason),
        }
    }

    /// Not decided yet.
    pub fn probing(self) -> bool {
        matches!(self, Verdict::Probing { .. })
    }

    /// Carries MCP.
    pub fn mcp(self) -> bool {
        self == Verdict::Mcp
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
        assert_eq!(v.message(), Verdict::Mcp);
        assert_eq!(
            v.stray(false),
            (Verdict::Rejected("not_json"), Stray::Rejects)
        );
        assert_eq!(
            Verdict::default().stray(true),
            (Verdict::Rejected("json_not_jsonrpc"), Stray::Rejects)
        );
        assert_eq!(Verdict::Mcp.stray(false), (Verdict::Mcp, Stray::Corrupts));
        assert_eq!(Verdict::Mcp.reject("binary"), Verdict::Mcp);
        assert_eq!(
            Verdict::default().reject("binary").rejected(),
            Some("binary")
        );
        assert_eq!(Verdict::Rejected("x").message(), Verdict::Rejected("x"));
    }
}
