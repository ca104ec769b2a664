//! Stage 4, MCP's transport bindings: frames of the streams that carry MCP in, MCP messages
//! with their routes out.
//!
//! [`crate::proto`] picks each stream's framing and each HTTP transaction's protocol; MCP's
//! share of them comes here:
//!
//! - [`stdio`]: one JSON-RPC message per line, over pipes, socketpairs, Unix sockets or TCP
//!   (a [`Binding`]);
//! - [`http`]: HTTP/1.1 transactions (an [`crate::proto::http::HttpApp`]), with
//!   [`streamable`] (Streamable HTTP, sessions named by `Mcp-Session-Id`) and [`legacy_sse`]
//!   (the 2024-11-05 HTTP+SSE transport, sessions named in the endpoint URI) naming their
//!   sessions.
//!
//! Every route is built in [`route`]; which process is at the far end of a link is learned in
//! [`links`]. What a binding finds goes to the tracker through [`Deliver`], and the stream's
//! verdict goes back to `conn`, which owns the streams.

pub mod http;
pub mod legacy_sse;
pub mod links;
pub mod route;
pub mod stdio;
pub mod streamable;
pub mod websocket;

use xxhash_rust::xxh3::xxh3_64;

use super::message::{self, Message, Parsed};
use crate::capture::Dir;
use crate::conn::fd::SocketEnds;
use crate::conn::stream::StreamKey;
use crate::conn::verdict::Verdict;
use crate::signal::{Ctx, Signal, What};
use links::Links;
use route::{Route, SessionKey, View};

/// A probing stream is rejected when this many bytes arrive without a line that starts like
/// JSON.
pub const PROBE_LIMIT: usize = 64 * 1024;

/// How a message was seen: a hash of its bytes (what pairs the sender's view with the
/// receiver's) and its size on the wire.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    /// Hash of the message bytes.
    pub hash: u64,
    /// Bytes it took on the wire.
    pub bytes: u64,
}

/// Where the bindings hand what they find: the tracker.
pub trait Deliver {
    /// One view of one message.
    fn message(&mut self, cx: &mut Ctx<'_>, route: &Route, v: &View, msg: &Message<'_>, seen: Seen);
    /// A frame on an MCP stream that is not a message; false when it is the other side's
    /// view of one already reported.
    fn stray(&mut self, cx: &mut Ctx<'_>, route: &Route, v: &View, hash: u64) -> bool;
    /// The label of a route's session, for events about it.
    fn session_label(&mut self, cx: &mut Ctx<'_>, route: &Route, ts: u64) -> Option<String>;
    /// The client ended an HTTP session (DELETE).
    fn session_deleted(&mut self, cx: &mut Ctx<'_>, key: &SessionKey, ts: u64);
    /// A session given a provisional key (a link's far end not named yet) is known by `new`
    /// from now on.
    fn session_renamed(&mut self, old: &SessionKey, new: &SessionKey);
    /// An HTTP transaction of an MCP connection ended, as the route's viewer saw it.
    fn http_request(&mut self, cx: &mut Ctx<'_>, route: &Route, txn: &HttpSeen<'_>);
}

/// One HTTP transaction of an MCP connection, as one end saw it.
#[derive(Clone, Copy, Debug)]
pub struct HttpSeen<'a> {
    /// Request method.
    pub method: &'a str,
    /// Request target.
    pub target: &'a str,
    /// Response status, if a response head came.
    pub status: Option<u16>,
    /// Entry time of the request's first byte (monotonic ns).
    pub start_ns: u64,
    /// When the response ended, or the connection (monotonic ns).
    pub end_ns: u64,
}

/// A transport binding: a stream's bytes in (it frames them with `wire`), MCP messages and
/// their routes out to the tracker.
pub trait Binding {
    /// What the binding keeps for a stream (or a connection).
    type State;
    /// Take one record's bytes of a stream whose verdict so far is `verdict`; returns the
    /// verdict after them.
    fn take<D: Deliver + ?Sized>(
        &mut self,
        st: &mut Self::State,
        at: &mut At<'_, '_, D>,
        bytes: crate::conn::Bytes<'_>,
        verdict: Verdict,
    ) -> Verdict;
}

/// Settings of the bindings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Longest message accepted; longer ones are dropped and reported as truncated.
    pub max_message_bytes: usize,
    /// Keep argument and result values (`--payloads`).
    pub payloads: bool,
    /// Report HTTP session ids as they are (`--raw-session-ids`).
    pub raw_session_ids: bool,
}

/// What the bindings counted.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Frames produced by framing (lines, HTTP bodies, SSE events).
    pub frames: u64,
    /// Messages parsed (batch elements count one each).
    pub messages: u64,
    /// Frames of accepted streams that did not parse, by class.
    pub parse_errors: std::collections::BTreeMap<&'static str, u64>,
    /// Bytes of lines dropped as the tail of a message cut by a hole.
    pub resync_dropped_bytes: u64,
    /// Messages longer than the limit, dropped and reported.
    pub oversize: u64,
    /// Streams that ended inside a message.
    pub unterminated: u64,
    /// HTTP connections whose framing could not be parsed.
    pub http_errors: u64,
}

/// What a binding works with while it takes one stream's frames.
pub struct At<'a, 'c, D: ?Sized> {
    /// The host, the processes, the clock and the signals' queue.
    pub cx: &'a mut Ctx<'c>,
    /// Where messages go.
    pub tracker: &'a mut D,
    /// Who is at the far end of each link.
    pub links: &'a mut Links,
    /// Counters.
    pub stats: &'a mut Stats,
    /// Settings.
    pub cfg: &'a Config,
    /// The stream.
    pub key: StreamKey,
    /// Its view template (times are filled in per message).
    pub base: View,
    /// The socket's ends, when it is one.
    pub socket: Option<&'a SocketEnds>,
    /// The time of the record being worked on (CLOCK_MONOTONIC ns).
    pub now: u64,
}

/// A frame that is not a JSON-RPC message, as reported.
#[derive(Debug)]
pub struct Stray {
    /// The view it was seen in.
    pub view: View,
    /// Hash of its bytes (pairs both ends' views).
    pub hash: u64,
    /// Its length.
    pub len: u64,
    /// Why it is not a message.
    pub class: &'static str,
}

impl Stray {
    /// A stray frame of `bytes` in view `view`.
    pub fn of(view: View, bytes: &[u8], class: &'static str) -> Self {
        Stray {
            view,
            hash: xxh3_64(bytes),
            len: bytes.len() as u64,
            class,
        }
    }
}

/// A message over the size limit.
pub struct Oversize<'a> {
    /// Its view.
    pub view: &'a View,
    /// Its route.
    pub route: &'a Route,
    /// Its length.
    pub len: u64,
    /// Its first bytes.
    pub prefix: &'a [u8],
}

/// `"method":"..."` from the start of a message too long to parse whole.
fn sniff_method(prefix: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(prefix);
    let at = text.find("\"method\"")?;
    let rest = text[at + 8..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

impl<D: Deliver + ?Sized> At<'_, '_, D> {
    /// Parse options of the bindings.
    pub fn parse_opts(&self) -> message::Options {
        message::Options {
            payloads: self.cfg.payloads,
        }
    }

    /// The stream's view for a message first seen at `first` and last at `last`.
    pub fn view(&self, dir: Dir, first: u64, last: u64) -> View {
        View {
            dir,
            first_enter_ns: first,
            last_exit_ns: last,
            ..self.base
        }
    }

    /// Hand parsed messages to the tracker, `size` being the bytes they took on the wire.
    pub fn deliver(
        &mut self,
        route: &Route,
        v: &View,
        parsed: &Parsed<'_>,
        bytes: &[u8],
        size: u64,
    ) {
        let hash = xxh3_64(bytes);
        match parsed {
            Parsed::One(m) => {
                self.stats.messages += 1;
                let seen = Seen { hash, bytes: size };
                self.tracker.message(self.cx, route, v, m, seen);
            }
            Parsed::Batch(ms) => {
                let n = ms.len() as u64;
                for (i, m) in ms.iter().enumerate() {
                    self.stats.messages += 1;
                    // Each element needs its own identity for matching the two views.
                    let h = (hash ^ (i as u64 + 1)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    let seen = Seen {
                        hash: h,
                        bytes: size / n,
                    };
                    self.tracker.message(self.cx, route, v, m, seen);
                }
            }
        }
    }

    /// Something on an MCP stream that is not a JSON-RPC message; reported once even when
    /// both ends saw it.
    pub fn stray(&mut self, s: &Stray, route: &Route, before_first: bool) {
        *self.stats.parse_errors.entry(s.class).or_default() += 1;
        if self.tracker.stray(self.cx, route, &s.view, s.hash) {
            let what = What::StreamCorruption {
                reason: s.class,
                bytes: Some(s.len),
                before_first_message: before_first,
                detail: None,
            };
            let key = self.key_of(s.view.dir);
            let mut e = self.cx.stream_event(what, key.tgid, key.fd, s.view.ts());
            e.session = self.tracker.session_label(self.cx, route, s.view.ts());
            self.cx.out.push(Signal::Event(e));
        }
    }

    /// A message over the size limit, on a stream whose verdict so far is `verdict`; returns
    /// the verdict after it.
    pub fn oversize(&mut self, big: &Oversize<'_>, verdict: Verdict) -> Verdict {
        self.stats.oversize += 1;
        let looks_rpc = big.prefix.trim_ascii_start().starts_with(b"{")
            && memchr::memmem::find(big.prefix, b"\"jsonrpc\"").is_some();
        let verdict = if verdict.probing() && looks_rpc {
            Verdict::Kept
        } else {
            verdict
        };
        if !verdict.kept() {
            return verdict;
        }
        let what = What::MessageTruncated {
            bytes: big.len,
            limit: self.cfg.max_message_bytes as u64,
            method: sniff_method(big.prefix),
        };
        let mut e = self
            .cx
            .stream_event(what, self.key.tgid, self.key.fd, big.view.ts());
        let hash = xxh3_64(big.prefix) ^ big.len;
        if self.tracker.stray(self.cx, big.route, big.view, hash) {
            e.session = self
                .tracker
                .session_label(self.cx, big.route, big.view.ts());
            self.cx.out.push(Signal::Event(e));
        }
        verdict
    }

    fn key_of(&self, dir: Dir) -> StreamKey {
        StreamKey { dir, ..self.key }
    }
}

/// The bindings and what they share: the link resolver, counters and settings.
pub struct Transport {
    /// Settings.
    pub cfg: Config,
    /// Counters.
    pub stats: Stats,
    /// Who is at the far end of each link.
    pub links: Links,
    /// The stdio binding.
    pub stdio: stdio::Stdio,
}

impl Transport {
    /// Bindings with `cfg`.
    pub fn new(cfg: Config) -> Self {
        Transport {
            cfg,
            stats: Stats::default(),
            links: Links::default(),
            stdio: stdio::Stdio,
        }
    }
}
