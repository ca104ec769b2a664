//! The stdio binding: one JSON-RPC message per line (MCP's stdio transport), over pipes and
//! the socketpairs a Node parent hands its children, and the same framing over named Unix
//! sockets and plain TCP.
//!
//! A line that does not parse is held while the stream is still being decided (the agent may
//! have started in the middle of a message) and reported as corruption if the stream turns
//! out to carry MCP; the tail of a message cut by a hole is expected and only counted.

use super::route::{self, Route, SessionKey, View};
use super::{At, Binding, Deliver, Oversize, PROBE_LIMIT, Stray};
use crate::capture::FdKind;
use crate::conn::Bytes;
use crate::conn::verdict::{self, Verdict};
use crate::mcp::message::{self, ParseError};
use crate::signal::Transport;
use crate::wire::ndjson::{self, Framer};

/// What the binding keeps per stream: the line framer, and a line that did not parse before
/// the stream's first message.
#[derive(Debug)]
pub struct Lines {
    framer: Framer,
    held: Vec<Stray>,
}

impl Lines {
    /// Lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Lines {
            framer: Framer::new(max_line),
            held: Vec::new(),
        }
    }

    /// A hole: the partial line is dropped; returns its bytes.
    pub fn gap(&mut self) -> u64 {
        self.framer.gap()
    }

    /// End of stream: the length of an unterminated last line, if any.
    pub fn finish(&mut self) -> Option<u64> {
        self.framer.finish()
    }

    /// Bytes held in memory for the current line.
    pub fn held(&self) -> usize {
        self.framer.held()
    }
}

/// The stdio binding.
pub struct Stdio;

/// The route of a newline-delimited view: stdio pipes and socketpairs and named Unix
/// sockets join the two processes at the link's ends; TCP joins the connection.
fn route_of<D: Deliver + ?Sized>(at: &mut At<'_, '_, D>, v: &View) -> Route {
    match v.kind {
        FdKind::Pipe => {
            let key = resolve(at, v);
            route::link_route(key, v, Transport::Stdio)
        }
        FdKind::Unix => {
            let named = at.socket.filter(|s| s.named_unix());
            let key = resolve(at, v);
            let transport = if named.is_some() {
                Transport::Unix
            } else {
                Transport::Stdio
            };
            let mut r = route::link_route(key, v, transport);
            r.addrs = named.map(route::unix_addrs);
            r
        }
        FdKind::Tcp => route::tcp_route(v, at.socket),
    }
}

/// The session of a link's view; a session that was filed under a provisional key (its far
/// end unknown) moves to its real one as soon as that is known.
fn resolve<D: Deliver + ?Sized>(at: &mut At<'_, '_, D>, v: &View) -> SessionKey {
    let key = at.links.resolve(at.cx.host, v);
    for (old, new) in at.links.take_renames() {
        at.tracker.session_renamed(&old, &new);
    }
    key
}

impl Binding for Stdio {
    type State = Lines;

    fn take<D: Deliver + ?Sized>(
        &mut self,
        lines: &mut Lines,
        at: &mut At<'_, '_, D>,
        bytes: Bytes<'_>,
        mut verdict: Verdict,
    ) -> Verdict {
        let mut framer = std::mem::replace(&mut lines.framer, Framer::new(0));
        framer.push(bytes.data, bytes.enter_ns, bytes.exit_ns, |o| {
            if verdict.rejected().is_some() {
                return;
            }
            verdict = match o {
                ndjson::Output::Frame(f) => {
                    let v = at.view(at.key.dir, f.first_enter_ns, f.last_exit_ns);
                    line(lines, at, &v, &f, verdict)
                }
                ndjson::Output::Oversize {
                    len,
                    prefix,
                    first_enter_ns,
                    last_exit_ns,
                } => {
                    let v = at.view(at.key.dir, first_enter_ns, last_exit_ns);
                    let route = route_of(at, &v);
                    let big = Oversize {
                        view: &v,
                        route: &route,
                        len,
                        prefix: &prefix,
                    };
                    at.oversize(&big, verdict)
                }
            };
        });
        let stuck = verdict.probing()
            && framer.pending() > PROBE_LIMIT
            && !matches!(
                framer.pending_bytes().trim_ascii_start().first(),
                Some(b'{') | Some(b'[')
            );
        lines.framer = framer;
        if stuck {
            return Verdict::Rejected(verdict::Reason::NoJsonLines);
        }
        verdict
    }
}

/// One line of a newline-delimited stream; returns the stream's verdict after it.
fn line<D: Deliver + ?Sized>(
    lines: &mut Lines,
    at: &mut At<'_, '_, D>,
    v: &View,
    f: &ndjson::Frame<'_>,
    verdict: Verdict,
) -> Verdict {
    let bytes = f.bytes;
    at.stats.frames += 1;
    let err = match message::parse_with(bytes, at.parse_opts()) {
        Ok(parsed) => {
            // Lines that did not parse before this first message were on an MCP stream after
            // all: stray output (or the tail of a message the agent started in the middle
            // of). Either way, unparsed bytes on the stream: report them.
            for s in std::mem::take(&mut lines.held) {
                let route = route_of(at, &s.view);
                at.stray(&s, &route, true);
            }
            let route = route_of(at, v);
            // The newline counts: it is part of what the sender wrote.
            at.deliver(&route, v, &parsed, bytes, bytes.len() as u64 + 1);
            return verdict.message();
        }
        Err(err) => err,
    };
    if verdict.kept() && f.after_gap {
        // The tail of a message cut by a hole: expected, already reported.
        at.stats.resync_dropped_bytes += bytes.len() as u64 + 1;
        return verdict;
    }
    let (after, what) = verdict.stray(err == ParseError::NotJsonRpc);
    match what {
        verdict::Stray::Held => lines.held.push(Stray::of(*v, bytes, err.class())),
        verdict::Stray::Corrupts => {
            let route = route_of(at, v);
            at.stray(&Stray::of(*v, bytes, err.class()), &route, false);
        }
        verdict::Stray::Rejects | verdict::Stray::Ignored => {}
    }
    after
}
