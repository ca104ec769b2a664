//! Stage 4, the transport bindings: the ordered bytes of each stream in, MCP messages with
//! their routes out.
//!
//! Each stream picks its framing from its first bytes: HTTP/1.x (the network transports) or
//! newline-delimited JSON (stdio, and MCP over plain sockets); TLS records, HTTP/2 and binary
//! bytes are not MCP. Each framing feeds one [`Binding`]:
//!
//! - [`stdio`]: one JSON-RPC message per line, over pipes, socketpairs, Unix sockets or TCP;
//! - [`http`]: HTTP/1.1 transactions, with [`streamable`] (Streamable HTTP, sessions named by
//!   `Mcp-Session-Id`) and [`legacy_sse`] (the 2024-11-05 HTTP+SSE transport, sessions named
//!   in the endpoint URI) naming their sessions.
//!
//! Every route is built in [`route`]; which process is at the far end of a link is learned in
//! [`links`]. What a binding finds goes to the tracker through [`Deliver`], and the stream's
//! verdict goes back to `conn`, which owns the streams. Adding a protocol is a new module
//! behind [`Binding`].

pub mod http;
pub mod legacy_sse;
pub mod links;
pub mod route;
pub mod stdio;
pub mod streamable;

use xxhash_rust::xxh3::xxh3_64;

use super::message::{self, Message, Parsed};
use crate::capture::{Dir, FdKind};
use crate::conn::fd::{Fd, FdKey, SocketEnds};
use crate::conn::stream::{Stream, StreamKey};
use crate::conn::verdict::Verdict;
use crate::conn::{Io, Upper};
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
    fn message(&mut self, cx: &mut Ctx<'_>, route: &Route, v: &View, msg: &Message, seen: Seen);
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
}

/// A transport binding: a stream's bytes in (it frames them with `wire`), MCP messages and
/// their routes out to the tracker.
pub trait Binding {
    /// What the binding keeps for a stream (or a connection).
    type State;
    /// Take one record's bytes of a stream whose verdict so far is `verdict`; returns the
    /// verdict after them.
    fn take<D: Deliver>(
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
pub struct At<'a, 'c, D> {
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

impl<D: Deliver> At<'_, '_, D> {
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
    pub fn deliver(&mut self, route: &Route, v: &View, parsed: &Parsed, bytes: &[u8], size: u64) {
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
            Verdict::Mcp
        } else {
            verdict
        };
        if !verdict.mcp() {
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

/// How a stream's bytes are framed, and what its binding keeps.
#[derive(Debug, Default)]
pub enum Framing {
    /// No bytes yet.
    #[default]
    Undecided,
    /// Newline-delimited JSON.
    Lines(stdio::Lines),
    /// HTTP/1.x: the connection, shared by both directions, is the fd's shared state.
    Http,
}

fn looks_binary(b: &[u8]) -> bool {
    b.iter()
        .take(64)
        .any(|&c| c < 0x09 || (0x0e..0x20).contains(&c) || c == 0x7f)
}

fn looks_tls(b: &[u8]) -> bool {
    b.len() >= 3 && mcptap_abi::looks_tls(b[0], b[1], b[2])
}

/// The bindings and what they share: the link resolver, counters and settings.
pub struct Transport {
    /// Settings.
    pub cfg: Config,
    /// Counters.
    pub stats: Stats,
    /// Who is at the far end of each link.
    pub links: Links,
    stdio: stdio::Stdio,
    http: http::Http,
}

impl Transport {
    /// Bindings with `cfg`.
    pub fn new(cfg: Config) -> Self {
        Transport {
            cfg,
            stats: Stats::default(),
            links: Links::default(),
            stdio: stdio::Stdio,
            http: http::Http,
        }
    }

    /// The stage `conn` hands streams to, with the tracker the messages go to.
    pub fn stage<'a, D: Deliver>(&'a mut self, tracker: &'a mut D) -> Stage<'a, D> {
        Stage {
            transport: self,
            tracker,
        }
    }
}

/// The transport bound to a tracker for one record's work: what `conn` calls.
pub struct Stage<'a, D> {
    transport: &'a mut Transport,
    tracker: &'a mut D,
}

impl<D: Deliver> Stage<'_, D> {
    fn at<'b, 'c>(
        &'b mut self,
        cx: &'b mut Ctx<'c>,
        (key, base, now): (StreamKey, View, u64),
        socket: Option<&'b SocketEnds>,
    ) -> (At<'b, 'c, D>, &'b mut stdio::Stdio, &'b mut http::Http) {
        let t = &mut *self.transport;
        let at = At {
            cx,
            tracker: &mut *self.tracker,
            links: &mut t.links,
            stats: &mut t.stats,
            cfg: &t.cfg,
            key,
            base,
            socket,
            now,
        };
        (at, &mut t.stdio, &mut t.http)
    }

    /// Pick how to frame a stream from its first bytes; its verdict when it is rejected.
    fn choose(&self, io: &mut Io<'_, Framing, http::ConnState>, first: &[u8]) -> Option<Verdict> {
        let head = first.trim_ascii_start();
        if io.shared.is_some() {
            // The other direction of this fd already found HTTP.
            io.stream.upper = Framing::Http;
            return None;
        }
        if io.kind != FdKind::Pipe
            && let Some(conn) = crate::wire::http1::Conn::detect(
                io.key.dir,
                head,
                self.transport.cfg.max_message_bytes,
            )
        {
            *io.shared = Some(Box::new(http::ConnState::new(conn)));
            io.stream.upper = Framing::Http;
            return None;
        }
        let reason = if head.starts_with(b"PRI * HTTP/2") {
            Some("http2")
        } else if looks_tls(head) {
            Some("tls")
        } else if looks_binary(first) {
            Some("binary")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Some(Verdict::Rejected(reason));
        }
        let max = self.transport.cfg.max_message_bytes;
        io.stream.upper = Framing::Lines(stdio::Lines::new(max));
        None
    }
}

/// The view template of one direction of an fd.
fn base_view<S>(key: &StreamKey, kind: FdKind, peer_inode: u64, stream: &Stream<S>) -> View {
    View {
        tgid: key.tgid,
        fd: key.fd,
        dir: key.dir,
        kind,
        inode: key.inode,
        peer_inode,
        first_enter_ns: 0,
        last_exit_ns: 0,
        tls: stream.tls,
    }
}

impl<D: Deliver> Upper for Stage<'_, D> {
    type Stream = Framing;
    type Shared = http::ConnState;

    fn bytes(
        &mut self,
        io: &mut Io<'_, Framing, http::ConnState>,
        data: crate::conn::Bytes<'_>,
        cx: &mut Ctx<'_>,
    ) -> Verdict {
        if matches!(io.stream.upper, Framing::Undecided)
            && let Some(v) = self.choose(io, data.data)
        {
            return v;
        }
        let base = base_view(&io.key, io.kind, io.peer_inode, io.stream);
        let verdict = io.stream.verdict;
        let (mut at, stdio, http) = self.at(cx, (io.key, base, data.exit_ns), io.socket);
        match &mut io.stream.upper {
            Framing::Lines(lines) => stdio.take(lines, &mut at, data, verdict),
            Framing::Http => match io.shared.as_deref_mut() {
                Some(conn) => http.take(conn, &mut at, data, verdict),
                None => verdict,
            },
            Framing::Undecided => unreachable!("chosen above"),
        }
    }

    fn gap(&mut self, io: &mut Io<'_, Framing, http::ConnState>) -> Option<u64> {
        match &mut io.stream.upper {
            Framing::Lines(lines) => Some(lines.gap()),
            // HTTP framing cannot find its next boundary after a hole.
            Framing::Http => None,
            Framing::Undecided => Some(0),
        }
    }

    fn close(
        &mut self,
        fk: FdKey,
        fd: &mut Fd<Framing, http::ConnState>,
        ts: u64,
        cx: &mut Ctx<'_>,
    ) {
        let Some(conn) = fd.shared.take() else {
            return;
        };
        let base = View {
            tgid: fk.tgid,
            fd: fk.fd,
            dir: Dir::In,
            kind: fd.kind,
            inode: fk.inode,
            peer_inode: fd.peer_inode,
            first_enter_ns: 0,
            last_exit_ns: 0,
            tls: fd.tls.is_some(),
        };
        let key = fk.stream(Dir::In);
        let (mut at, _, http) = self.at(cx, (key, base, ts), fd.socket.as_deref());
        http.close(conn, &mut at, ts);
    }

    fn finish(&mut self, key: StreamKey, stream: &mut Stream<Framing>, ts: u64, cx: &mut Ctx<'_>) {
        if let Framing::Lines(lines) = &mut stream.upper
            && let Some(n) = lines.finish()
        {
            self.transport.stats.unterminated += 1;
            let what = What::StreamUnterminated { bytes: n };
            let e = cx.stream_event(what, key.tgid, key.fd, ts);
            cx.out.push(Signal::Event(e));
        }
    }

    fn held(stream: &Framing) -> usize {
        match stream {
            Framing::Lines(l) => l.held(),
            _ => 0,
        }
    }

    fn held_shared(shared: &http::ConnState) -> usize {
        shared.buffered()
    }
}
