//! Stage 4, application protocols: which framing each stream speaks, and, for HTTP, which
//! application protocol each transaction carries.
//!
//! A stream picks its framing from its first bytes: HTTP/1.x, or newline-delimited JSON
//! (MCP's stdio transport, and MCP over plain sockets); TLS records, HTTP/2 and binary bytes
//! are refused. Lines go to MCP's stdio binding ([`crate::mcp::transport::stdio`]); HTTP
//! transactions go, one by one, to the application protocol that claims them ([`http`]):
//! MCP's HTTP binding ([`crate::mcp::transport::http`]) or a model API
//! ([`crate::llm::http`]). [`Stage`] is what `conn` hands every stream to.
//!
//! Adding a protocol over HTTP is a module behind [`http::HttpApp`] and its place in the
//! `PROTOCOL_LIST` markers of [`http`] and here; adding a framing is a [`Framing`] variant
//! and its test in `Stage::choose`.

pub mod http;

use crate::capture::{Dir, FdKind};
use crate::conn::fd::{Fd, FdKey, SocketEnds};
use crate::conn::stream::{Stream, StreamKey};
use crate::conn::verdict::{Reason, Verdict};
use crate::conn::{Bytes, Io, Upper};
use crate::llm;
use crate::mcp::transport::route::View;
use crate::mcp::transport::{self, At, Binding, Deliver, Transport, stdio};
use crate::signal::{Ctx, Signal, What};
use http::{Apps, HttpConn};

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

/// The connection state of an HTTP fd: the framing and what each app keeps.
// PROTOCOL_LIST: each app's connection state, in `http::APPS` order.
pub type Http = HttpConn<llm::http::Calls, transport::http::McpConn>;

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

/// Every protocol's persistent state: MCP's bindings and the model APIs'.
pub struct Protocols {
    /// MCP's transport bindings.
    pub mcp: Transport,
    /// The model APIs.
    pub llm: llm::http::Llm,
}

impl Protocols {
    /// The protocols with their settings.
    pub fn new(mcp: transport::Config, llm: llm::http::Config) -> Self {
        Protocols {
            mcp: Transport::new(mcp),
            llm: llm::http::Llm::new(llm),
        }
    }

    /// The stage `conn` hands streams to, with the tracker MCP messages go to.
    pub fn stage<'a, D: Deliver>(&'a mut self, tracker: &'a mut D) -> Stage<'a, D> {
        Stage {
            protocols: self,
            tracker,
        }
    }
}

/// The protocols bound to MCP's tracker for one record's work: what `conn` calls.
pub struct Stage<'a, D> {
    protocols: &'a mut Protocols,
    tracker: &'a mut D,
}

// PROTOCOL_LIST: every app over HTTP, built for one record's work.
type RecordApps<'b, D> = Apps<llm::http::LlmHttp<'b>, transport::http::McpHttp<'b, D>>;

impl<D: Deliver> Stage<'_, D> {
    /// The HTTP apps for one record.
    fn apps(&mut self) -> RecordApps<'_, D> {
        let p = &mut *self.protocols;
        Apps {
            llm: p.llm.app(),
            mcp: transport::http::McpHttp {
                tracker: &mut *self.tracker,
                links: &mut p.mcp.links,
                stats: &mut p.mcp.stats,
                cfg: &p.mcp.cfg,
            },
        }
    }

    /// Pick how to frame a stream from its first bytes; its verdict when it is rejected.
    fn choose(&self, io: &mut Io<'_, Framing, Http>, first: &[u8]) -> Option<Verdict> {
        let head = first.trim_ascii_start();
        if io.shared.is_some() {
            // The other direction of this fd already found HTTP.
            io.stream.upper = Framing::Http;
            return None;
        }
        let max = self.protocols.mcp.cfg.max_message_bytes;
        if io.kind != FdKind::Pipe
            && let Some(conn) = crate::wire::http1::Conn::detect(io.key.dir, head, max)
        {
            *io.shared = Some(Box::new(HttpConn::new(conn)));
            io.stream.upper = Framing::Http;
            return None;
        }
        let reason = if head.starts_with(b"PRI * HTTP/2") {
            Some(Reason::Http2)
        } else if looks_tls(head) {
            Some(Reason::Tls)
        } else if looks_binary(first) {
            Some(Reason::Binary)
        } else {
            None
        };
        if let Some(reason) = reason {
            return Some(Verdict::Rejected(reason));
        }
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
    type Shared = Http;

    fn bytes(
        &mut self,
        io: &mut Io<'_, Framing, Http>,
        data: Bytes<'_>,
        cx: &mut Ctx<'_>,
    ) -> Verdict {
        if matches!(io.stream.upper, Framing::Undecided)
            && let Some(v) = self.choose(io, data.data)
        {
            return v;
        }
        let base = base_view(&io.key, io.kind, io.peer_inode, io.stream);
        let verdict = io.stream.verdict;
        match &mut io.stream.upper {
            Framing::Lines(lines) => {
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
            Framing::Http => match io.shared.as_deref_mut() {
                Some(conn) => {
                    let mut app_cx = AppCx {
                        cx,
                        key: io.key,
                        base,
                        socket: io.socket,
                        now: data.exit_ns,
                    };
                    let mut apps = self.apps();
                    conn.push(&mut apps, &mut app_cx, data)
                }
                None => verdict,
            },
            Framing::Undecided => unreachable!("chosen above"),
        }
    }

    fn gap(&mut self, io: &mut Io<'_, Framing, Http>) -> Option<u64> {
        match &mut io.stream.upper {
            Framing::Lines(lines) => Some(lines.gap()),
            // HTTP framing cannot find its next boundary after a hole.
            Framing::Http => None,
            Framing::Undecided => Some(0),
        }
    }

    fn close(&mut self, fk: FdKey, fd: &mut Fd<Framing, Http>, ts: u64, cx: &mut Ctx<'_>) {
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
        let mut app_cx = AppCx {
            cx,
            key: fk.stream(Dir::In),
            base,
            socket: fd.socket.as_deref(),
            now: ts,
        };
        let mut apps = self.apps();
        conn.close(&mut apps, &mut app_cx, ts);
    }

    fn finish(&mut self, key: StreamKey, stream: &mut Stream<Framing>, ts: u64, cx: &mut Ctx<'_>) {
        if let Framing::Lines(lines) = &mut stream.upper
            && let Some(n) = lines.finish()
        {
            self.protocols.mcp.stats.unterminated += 1;
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

    fn held_shared(shared: &Http) -> usize {
        shared.buffered()
    }
}
