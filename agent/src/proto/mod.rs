//! Stage 4, application protocols: which framing each stream speaks, and, for HTTP, which
//! application protocol each transaction carries.
//!
//! A stream picks its framing from its first bytes: HTTP/1.x, HTTP/2 (from its start, or
//! first seen mid-way), or newline-delimited JSON (MCP's stdio transport, and MCP over plain
//! sockets); TLS records and binary bytes are refused. Lines go to MCP's stdio binding ([`crate::mcp::transport::stdio`]); HTTP
//! transactions go, one by one, to the application protocol that claims them ([`http`]):
//! MCP's HTTP binding ([`crate::mcp::transport::http`]) or a model API
//! ([`crate::llm::http`]). [`Stage`] is what `conn` hands every stream to.
//!
//! Adding a protocol over HTTP is a module behind [`http::HttpApp`] and its place in the
//! `PROTOCOL_LIST` markers of [`http`]; adding a framing is a module behind
//! [`framing::ConnFraming`] and its line in [`framing::FRAMINGS`].

pub mod framing;
pub mod http;
pub mod websocket;

use crate::capture::Dir;
use crate::conn::fd::{Fd, FdKey, SocketEnds};
use crate::conn::stream::{Stream, StreamKey};
use crate::conn::verdict::Verdict;
use crate::conn::{Bytes, Io, Upper};
use crate::llm;
use crate::mcp::transport::route::View;
use crate::mcp::transport::{self, At, Binding, Deliver, Transport, stdio};
use crate::signal::{Ctx, Signal, What};
use framing::{ConnFraming, Detected, First, Parts};

/// What an application protocol works with while it takes one record's events.
pub struct AppCx<'a, 'c> {
    /// The host, the processes, the clock and the signals' queue.
    pub cx: &'a mut Ctx<'c>,
    /// The stream the record belongs to.
    pub key: StreamKey,
    /// Its view template (times are filled in per message).
    pub base: View,
    /// The socket's ends, when it is one.
    pub socket: Option<&'a SocketEnds>,
    /// The time of the record being worked on (CLOCK_MONOTONIC ns).
    pub now: u64,
}

/// What a stream keeps: newline-delimited JSON is framed per direction; every other framing
/// keeps the connection's both directions in the fd's [`ConnFraming`].
#[derive(Debug, Default)]
pub enum StreamFraming {
    /// No bytes yet.
    #[default]
    Undecided,
    /// Newline-delimited JSON.
    Lines(stdio::Lines),
    /// The fd's connection framing has it.
    Conn,
}

/// Every protocol's persistent state: MCP's bindings and the model APIs'.
pub struct Protocols {
    /// MCP's transport bindings.
    pub mcp: Transport,
    /// The model APIs.
    pub llm: llm::http::Llm,
    /// What the HTTP framings counted.
    pub http: http::Stats,
}

impl Protocols {
    /// The protocols with their settings.
    pub fn new(mcp: transport::Config, llm: llm::http::Config) -> Self {
        Protocols {
            mcp: Transport::new(mcp),
            llm: llm::http::Llm::new(llm),
            http: http::Stats::default(),
        }
    }

    /// The stage `conn` hands streams to, with the tracker MCP messages go to.
    pub fn stage<'a>(&'a mut self, tracker: &'a mut dyn Deliver) -> Stage<'a> {
        Stage {
            protocols: self,
            tracker,
        }
    }
}

/// The protocols bound to MCP's tracker for one record's work: what `conn` calls.
pub struct Stage<'a> {
    protocols: &'a mut Protocols,
    tracker: &'a mut dyn Deliver,
}

impl Stage<'_> {
    fn parts(&mut self) -> Parts<'_> {
        Parts {
            protocols: &mut *self.protocols,
            tracker: &mut *self.tracker,
        }
    }

    /// Pick how to frame a stream from its first bytes; its verdict when it is rejected.
    fn choose(
        &self,
        io: &mut Io<'_, StreamFraming, dyn ConnFraming>,
        first: &[u8],
    ) -> Option<Verdict> {
        if io.shared.is_some() {
            // The other direction of this fd already found its connection framing.
            io.stream.upper = StreamFraming::Conn;
            return None;
        }
        let max_message = self.protocols.mcp.cfg.max_message_bytes;
        let first = First {
            kind: io.kind,
            dir: io.key.dir,
            bytes: first,
            max_message,
        };
        match framing::choose(&first) {
            Detected::Conn(conn) => {
                *io.shared = Some(conn);
                io.stream.upper = StreamFraming::Conn;
            }
            Detected::Lines | Detected::No => {
                io.stream.upper = StreamFraming::Lines(stdio::Lines::new(max_message));
            }
            Detected::Refuse(reason) => return Some(Verdict::Rejected(reason)),
        }
        None
    }

    /// One record of a newline-delimited stream.
    fn lines(
        &mut self,
        io: &mut Io<'_, StreamFraming, dyn ConnFraming>,
        base: View,
        data: Bytes<'_>,
        cx: &mut Ctx<'_>,
    ) -> Verdict {
        let verdict = io.stream.verdict;
        let StreamFraming::Lines(lines) = &mut io.stream.upper else {
            return verdict;
        };
        let p = &mut *self.protocols;
        let mut at = At {
            cx,
            tracker: &mut *self.tracker,
            links: &mut p.mcp.links,
            stats: &mut p.mcp.stats,
            cfg: &p.mcp.cfg,
            key: io.key,
            base,
            socket: io.socket,
            now: data.exit_ns,
        };
        p.mcp.stdio.take(lines, &mut at, data, verdict)
    }
}

/// The view template of one direction of an fd.
fn base_view<S>(
    key: &StreamKey,
    kind: crate::capture::FdKind,
    peer_inode: u64,
    stream: &Stream<S>,
) -> View {
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
        http: None,
        tls_library: stream.tls_library,
    }
}

impl Upper for Stage<'_> {
    type Stream = StreamFraming;
    type Shared = dyn ConnFraming;

    fn bytes(
        &mut self,
        io: &mut Io<'_, StreamFraming, dyn ConnFraming>,
        data: Bytes<'_>,
        cx: &mut Ctx<'_>,
    ) -> Verdict {
        if matches!(io.stream.upper, StreamFraming::Undecided)
            && let Some(v) = self.choose(io, data.data)
        {
            return v;
        }
        let base = base_view(&io.key, io.kind, io.peer_inode, io.stream);
        if !matches!(io.stream.upper, StreamFraming::Conn) {
            return self.lines(io, base, data, cx);
        }
        let Some(conn) = io.shared.as_deref_mut() else {
            return io.stream.verdict;
        };
        let mut app_cx = AppCx {
            cx,
            key: io.key,
            base,
            socket: io.socket,
            now: data.exit_ns,
        };
        let mut parts = self.parts();
        let verdict = conn.push(&mut parts, &mut app_cx, data);
        match conn.next(&mut parts, &mut app_cx) {
            Some(next) => {
                *io.shared = Some(next);
                // The new framing judges the connection afresh.
                Verdict::default()
            }
            None => verdict,
        }
    }

    fn gap(&mut self, io: &mut Io<'_, StreamFraming, dyn ConnFraming>) -> Option<u64> {
        match &mut io.stream.upper {
            StreamFraming::Lines(lines) => Some(lines.gap()),
            // A connection framing cannot find its next boundary after a hole.
            StreamFraming::Conn => None,
            StreamFraming::Undecided => Some(0),
        }
    }

    fn close(
        &mut self,
        fk: FdKey,
        fd: &mut Fd<StreamFraming, dyn ConnFraming>,
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
            http: None,
            tls_library: None,
        };
        let mut app_cx = AppCx {
            cx,
            key: fk.stream(Dir::In),
            base,
            socket: fd.socket.as_deref(),
            now: ts,
        };
        conn.close(&mut self.parts(), &mut app_cx, ts);
    }

    fn finish(
        &mut self,
        key: StreamKey,
        stream: &mut Stream<StreamFraming>,
        ts: u64,
        cx: &mut Ctx<'_>,
    ) {
        if let StreamFraming::Lines(lines) = &mut stream.upper
            && let Some(n) = lines.finish()
        {
            self.protocols.mcp.stats.unterminated += 1;
            let what = What::StreamUnterminated { bytes: n };
            let e = cx.stream_event(what, key.tgid, key.fd, ts);
            cx.out.push(Signal::Event(e));
        }
    }

    fn held(stream: &StreamFraming) -> usize {
        match stream {
            StreamFraming::Lines(l) => l.held(),
            _ => 0,
        }
    }

    fn held_shared(shared: &dyn ConnFraming) -> usize {
        shared.held()
    }
}
