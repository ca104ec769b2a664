//! The network transports in the pipeline: HTTP transactions in, routed MCP messages out.
//!
//! Streamable HTTP (2025-03-26 and later): a POST carries a message or batch; its response is
//! JSON or an event stream (progress notifications, then the result); a GET opens the
//! server-to-client stream; the session is named by `Mcp-Session-Id`, which the initialize
//! response assigns, so an initialize request is held until that response's head arrives.
//! Without a session id (stateless servers, protocol 2026-07-28) the connection is the scope.
//!
//! Legacy HTTP+SSE (2024-11-05): a GET stream whose `endpoint` event names the POST URI; the
//! POSTs get 202 and their responses arrive as `message` events on the GET stream. Both are
//! keyed by the session named in that URI's query.
//!
//! A connection is MCP when a request carries MCP headers or a JSON-RPC body, or a GET event
//! stream carries an `endpoint` event or JSON-RPC; anything else (REST, model APIs, web pages)
//! is rejected and the kernel stops shipping it.

use xxhash_rust::xxh3::xxh3_64;

use super::fds::{Fd, FdKey, SocketEnds};
use super::{Junk, Oversize, Pipeline, Stream, Verdict, base_view};
use crate::capture::host::Host;
use crate::capture::{Dir, FdKind, Record};
use crate::conn::stream::StreamKey;
use crate::mcp::message::{self, Id, Kind, Message, Parsed};
use crate::mcp::privacy::session_label;
use crate::mcp::session::{Addr, Addrs, Route, SessionKey, View};
use crate::signal::Signal;
use crate::wire::http1::{Conn, ConnEvent, Role, Txn};

/// Whether a connection is known to carry MCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnVerdict {
    Probing,
    Mcp,
    Rejected(&'static str),
}

/// A request body waiting for its response head.
struct Held {
    seq: u64,
    body: Vec<u8>,
    view: View,
}

/// What the pipeline keeps per HTTP connection besides the framing.
struct Meta {
    verdict: ConnVerdict,
    held: Vec<Held>,
    /// JSON-RPC request ids sent in each transaction, and those answered in it.
    ids: crate::FastMap<u64, (Vec<Id>, crate::FastSet<Id>)>,
    /// The session this connection's legacy `endpoint` event named.
    legacy: Option<String>,
    /// The view template for this fd.
    base: View,
}

/// One process's view of one HTTP connection.
pub(crate) struct ConnState {
    http: Conn,
    meta: Option<Meta>,
}

impl ConnState {
    pub(super) fn new(http: Conn) -> Self {
        ConnState { http, meta: None }
    }

    /// Bytes held for messages not complete yet, and request bodies held for their
    /// response's head.
    pub(crate) fn buffered(&self) -> usize {
        let held: usize = self
            .meta
            .iter()
            .flat_map(|m| &m.held)
            .map(|h| h.body.len())
            .sum();
        self.http.buffered() + held
    }
}

/// What every HTTP event of one process fd needs to be routed.
#[derive(Clone, Copy)]
struct ConnCtx<'a> {
    fk: FdKey,
    socket: Option<&'a SocketEnds>,
    role: Role,
}

/// The session named by a legacy endpoint URI or POST target (`?session_id=` in the Python
/// SDK, `?sessionId=` in the TypeScript SDK).
fn legacy_session(uri: &str) -> Option<String> {
    let query = uri.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "session_id" || k == "sessionId").then(|| v.to_string())
    })
}

fn request_ids(parsed: &Parsed) -> Vec<Id> {
    let one = |m: &Message| (m.kind == Kind::Request).then(|| m.id.clone()).flatten();
    match parsed {
        Parsed::One(m) => one(m).into_iter().collect(),
        Parsed::Batch(ms) => ms.iter().filter_map(one).collect(),
    }
}

fn response_ids(parsed: &Parsed) -> Vec<Id> {
    let one = |m: &Message| {
        matches!(m.kind, Kind::Response | Kind::Error)
            .then(|| m.id.clone())
            .flatten()
    };
    match parsed {
        Parsed::One(m) => one(m).into_iter().collect(),
        Parsed::Batch(ms) => ms.iter().filter_map(one).collect(),
    }
}

fn has_initialize(parsed: &Parsed) -> bool {
    let one = |m: &Message| m.method.as_deref() == Some("initialize");
    match parsed {
        Parsed::One(m) => one(m),
        Parsed::Batch(ms) => ms.iter().any(one),
    }
}

impl Pipeline {
    /// Bytes of an HTTP-framed stream.
    pub(super) fn http_data(
        &mut self,
        host: &mut dyn Host,
        key: &StreamKey,
        fd: &mut Fd,
        stream: &mut Stream,
        rec: &Record<'_>,
    ) {
        let fk = FdKey::of(key);
        let Some(mut cs) = fd.http.take() else {
            return;
        };
        let base = base_view(key, fd, stream);
        let mut meta = cs.meta.take().unwrap_or_else(|| Meta {
            verdict: ConnVerdict::Probing,
            held: Vec::new(),
            ids: Default::default(),
            legacy: None,
            base,
        });
        let cx = ConnCtx {
            fk,
            socket: fd.socket.as_deref(),
            role: cs.http.role(),
        };
        cs.http.push(
            key.dir,
            rec.data,
            rec.hdr.ts_enter_ns,
            rec.hdr.ts_exit_ns,
            &mut |e| {
                if !matches!(meta.verdict, ConnVerdict::Rejected(_)) {
                    self.http_event(host, &cx, &mut meta, e);
                }
            },
        );
        match meta.verdict {
            ConnVerdict::Rejected(why) => {
                self.reject(&fk, fd, Some(why));
            }
            v => {
                if v == ConnVerdict::Mcp {
                    stream.verdict = Verdict::Mcp;
                }
                cs.meta = Some(meta);
                fd.http = Some(cs);
            }
        }
    }

    fn http_route(&self, cx: &ConnCtx<'_>, meta: &Meta, txn: &Txn, from_client: bool) -> Route {
        let (fk, role) = (&cx.fk, cx.role);
        let unix = cx.socket.is_some_and(|s| s.unix) || meta.base.kind == FdKind::Unix;
        let (local, remote) = cx
            .socket
            .map(|s| (s.local.clone(), s.remote.clone()))
            .unwrap_or_else(|| {
                (
                    Addr::Unix(format!("socket:{}", fk.inode)),
                    Addr::Unix("?".into()),
                )
            });
        let addrs = match role {
            Role::Client => Addrs {
                client: local,
                server: remote,
            },
            Role::Server => Addrs {
                client: remote,
                server: local,
            },
        };
        let server = addrs.server.to_string();
        let resp = txn.response.as_ref();
        let sid = txn
            .request
            .headers
            .session_id
            .clone()
            .or_else(|| resp.and_then(|r| r.headers.session_id.clone()));
        let legacy = txn
            .request
            .target
            .as_deref()
            .and_then(legacy_session)
            .or_else(|| meta.legacy.clone());
        let (key, label, mut transport) = if let Some(id) = sid {
            (
                SessionKey::Http {
                    server,
                    id: id.clone(),
                },
                Some(session_label(&id, self.cfg.raw_session_ids)),
                "http",
            )
        } else if let Some(id) = legacy {
            (
                SessionKey::Http {
                    server,
                    id: id.clone(),
                },
                Some(session_label(&id, self.cfg.raw_session_ids)),
                "sse",
            )
        } else {
            // Unix clients are unbound: the client socket's inode tells connections apart.
            let client = if unix {
                let client_inode = match role {
                    Role::Client => fk.inode,
                    Role::Server => meta.base.peer_inode,
                };
                format!("socket:{client_inode}")
            } else {
                addrs.client.to_string()
            };
            (SessionKey::Conn { client, server }, None, "http")
        };
        if unix {
            transport = "unix";
        }
        Route {
            key,
            transport,
            sender: if from_client { 0 } else { 1 },
            viewer: match role {
                Role::Client => 0,
                Role::Server => 1,
            },
            viewer_pid: fk.tgid,
            peer_pid: None,
            roles_fixed: true,
            label,
            http_status: if from_client {
                None
            } else {
                resp.and_then(|r| r.status)
            },
            addrs: Some(addrs),
            protocol_version: txn.request.headers.protocol_version.clone(),
        }
    }

    fn view(meta: &Meta, dir: Dir, first: u64, last: u64) -> View {
        View {
            dir,
            first_enter_ns: first,
            last_exit_ns: last,
            ..meta.base
        }
    }

    fn http_event(
        &mut self,
        host: &mut dyn Host,
        cx: &ConnCtx<'_>,
        meta: &mut Meta,
        e: ConnEvent<'_>,
    ) {
        let fk = &cx.fk;
        let (req_dir, resp_dir) = match cx.role {
            Role::Client => (Dir::Out, Dir::In),
            Role::Server => (Dir::In, Dir::Out),
        };
        match e {
            ConnEvent::RequestHead(txn) => {
                if meta.verdict == ConnVerdict::Probing {
                    let h = &txn.request.headers;
                    let method = txn.request.method.as_deref().unwrap_or("");
                    if h.session_id.is_some()
                        || h.protocol_version.is_some()
                        || h.mcp_method.is_some()
                    {
                        meta.verdict = ConnVerdict::Mcp;
                    } else if method == "POST" || (method == "GET" && h.accept_sse) {
                        // Decided by the body, or by the event stream.
                    } else {
                        meta.verdict = ConnVerdict::Rejected("http_not_mcp");
                    }
                }
            }
            ConnEvent::RequestBody {
                txn,
                body,
                first_enter_ns,
                last_exit_ns,
            } => {
                self.stats.frames += 1;
                let view = Self::view(meta, req_dir, first_enter_ns, last_exit_ns);
                match message::parse_with(body, self.parse_opts()) {
                    Ok(parsed) => {
                        meta.verdict = ConnVerdict::Mcp;
                        meta.ids
                            .entry(txn.seq)
                            .or_default()
                            .0
                            .extend(request_ids(&parsed));
                        let named = txn.request.headers.session_id.is_some()
                            || txn
                                .request
                                .target
                                .as_deref()
                                .and_then(legacy_session)
                                .is_some();
                        if !named && has_initialize(&parsed) && txn.response.is_none() {
                            // Its response names the session: wait for that head.
                            meta.held.push(Held {
                                seq: txn.seq,
                                body: body.to_vec(),
                                view,
                            });
                        } else {
                            let route = self.http_route(cx, meta, txn, true);
                            self.deliver(host, &route, &view, &parsed, body, body.len() as u64);
                        }
                    }
                    Err(err) => {
                        if meta.verdict == ConnVerdict::Probing {
                            meta.verdict = ConnVerdict::Rejected("http_not_mcp");
                        } else {
                            let route = self.http_route(cx, meta, txn, true);
                            self.http_junk(host, fk, &route, &view, body, err.class());
                        }
                    }
                }
            }
            ConnEvent::ResponseHead(txn) => {
                if meta.verdict == ConnVerdict::Probing {
                    let sse = txn.response.as_ref().is_some_and(|r| r.headers.is_sse());
                    let get = txn.request.method.as_deref() == Some("GET");
                    if !(get && sse) {
                        meta.verdict = ConnVerdict::Rejected("http_not_mcp");
                        return;
                    }
                }
                self.release(host, cx, meta, txn);
            }
            ConnEvent::ResponseBody {
                txn,
                body,
                first_enter_ns,
                last_exit_ns,
            } => {
                self.stats.frames += 1;
                let view = Self::view(meta, resp_dir, first_enter_ns, last_exit_ns);
                match message::parse_with(body, self.parse_opts()) {
                    Ok(parsed) => {
                        if let Some((_, answered)) = meta.ids.get_mut(&txn.seq) {
                            answered.extend(response_ids(&parsed));
                        }
                        // An error with `"id": null` answers the transaction's requests: the
                        // HTTP failure below names them.
                        let route = self.http_route(cx, meta, txn, false);
                        self.deliver(host, &route, &view, &parsed, body, body.len() as u64);
                    }
                    Err(err) => {
                        let failed = txn
                            .response
                            .as_ref()
                            .and_then(|r| r.status)
                            .is_some_and(|s| s >= 400);
                        // An error page is reported as the HTTP failure it is; anything else
                        // that is not JSON-RPC corrupts the stream.
                        if !failed {
                            let route = self.http_route(cx, meta, txn, false);
                            self.http_junk(host, fk, &route, &view, body, err.class());
                        }
                    }
                }
            }
            ConnEvent::Sse { txn, event } => {
                self.stats.frames += 1;
                let view = Self::view(meta, resp_dir, event.first_enter_ns, event.last_exit_ns);
                if event.event == "endpoint" {
                    let uri = String::from_utf8_lossy(event.data);
                    if let Some(id) = legacy_session(&uri) {
                        meta.legacy = Some(id);
                        meta.verdict = ConnVerdict::Mcp;
                    }
                    return;
                }
                match message::parse_with(event.data, self.parse_opts()) {
                    Ok(parsed) => {
                        meta.verdict = ConnVerdict::Mcp;
                        if let Some((_, answered)) = meta.ids.get_mut(&txn.seq) {
                            answered.extend(response_ids(&parsed));
                        }
                        let route = self.http_route(cx, meta, txn, false);
                        let data = event.data;
                        self.deliver(host, &route, &view, &parsed, data, data.len() as u64);
                    }
                    Err(err) => {
                        if meta.verdict == ConnVerdict::Probing {
                            meta.verdict = ConnVerdict::Rejected("http_not_mcp");
                        } else {
                            let route = self.http_route(cx, meta, txn, false);
                            self.http_junk(host, fk, &route, &view, event.data, err.class());
                        }
                    }
                }
            }
            ConnEvent::Done(txn) => {
                self.release(host, cx, meta, txn);
                let status = txn.response.as_ref().and_then(|r| r.status);
                if txn.request.method.as_deref() == Some("DELETE")
                    && txn.request.headers.session_id.is_some()
                    && status.is_some_and(|s| (200..300).contains(&s))
                {
                    // The client ended the session.
                    let route = self.http_route(cx, meta, txn, false);
                    let ts = txn.response.as_ref().map_or(self.now, |r| r.last_exit_ns);
                    self.tracker.end_session(&route.key, ts, &mut self.out);
                }
                let (ids, answered) = meta.ids.remove(&txn.seq).unwrap_or_default();
                if let Some(status) = status.filter(|s| *s >= 400) {
                    // The server refused the request at the HTTP level: each request in it
                    // ends with that status and no JSON-RPC response.
                    let resp = txn.response.as_ref().expect("status implies a response");
                    let view = Self::view(meta, resp_dir, resp.first_enter_ns, resp.last_exit_ns);
                    let route = self.http_route(cx, meta, txn, false);
                    for id in ids.into_iter().filter(|id| !answered.contains(id)) {
                        let msg = Message {
                            kind: Kind::Error,
                            id: Some(id.clone()),
                            ..Message::default()
                        };
                        let hash = xxh3_64(format!("http {status} {}", id.0).as_bytes());
                        self.tracker.observe(
                            host,
                            &route,
                            &view,
                            &msg,
                            crate::mcp::Seen { hash, bytes: 0 },
                            &mut self.out,
                        );
                    }
                }
            }
            ConnEvent::Oversize { txn, len } => {
                let from_client = txn.response.is_none();
                let route = self.http_route(cx, meta, txn, from_client);
                let dir = if from_client { req_dir } else { resp_dir };
                let view = Self::view(
                    meta,
                    dir,
                    txn.request.first_enter_ns,
                    txn.request.last_exit_ns,
                );
                let big = Oversize {
                    key: &fk.stream(dir),
                    view: &view,
                    route: &route,
                    len,
                    prefix: b"",
                };
                self.oversize(host, &big, Verdict::Mcp);
            }
            ConnEvent::Error(why) => {
                self.stats.http_errors += 1;
                if meta.verdict == ConnVerdict::Mcp {
                    let key = StreamKey {
                        tgid: fk.tgid,
                        fd: fk.fd,
                        dir: req_dir,
                        inode: fk.inode,
                    };
                    let what = crate::signal::What::StreamCorruption {
                        reason: "http",
                        bytes: None,
                        before_first_message: false,
                        detail: Some(why),
                    };
                    let e = self.stream_event(what, &key, self.now);
                    self.out.push(Signal::Event(e));
                }
                meta.verdict = ConnVerdict::Rejected("http_broken");
            }
        }
    }

    /// Deliver the request bodies held for `txn`, now that its response head names the
    /// session (or never will).
    fn release(&mut self, host: &mut dyn Host, cx: &ConnCtx<'_>, meta: &mut Meta, txn: &Txn) {
        let held: Vec<Held> = {
            let (mine, rest) = std::mem::take(&mut meta.held)
                .into_iter()
                .partition(|h| h.seq == txn.seq);
            meta.held = rest;
            mine
        };
        for h in held {
            if let Ok(parsed) = message::parse_with(&h.body, self.parse_opts()) {
                let route = self.http_route(cx, meta, txn, true);
                self.deliver(host, &route, &h.view, &parsed, &h.body, h.body.len() as u64);
            }
        }
    }

    fn http_junk(
        &mut self,
        host: &mut dyn Host,
        fk: &FdKey,
        route: &Route,
        view: &View,
        bytes: &[u8],
        class: &'static str,
    ) {
        let j = Junk {
            view: *view,
            hash: xxh3_64(bytes),
            len: bytes.len() as u64,
            class,
        };
        self.corruption(host, &fk.stream(view.dir), &j, route, false);
    }

    /// The connection closed (or its process exited, or lost bytes): bodies delimited by the
    /// close end, held requests are delivered as they are.
    pub(super) fn http_close(
        &mut self,
        host: &mut dyn Host,
        fk: &FdKey,
        fd: &Fd,
        mut cs: Box<ConnState>,
        ts: u64,
    ) {
        let Some(mut meta) = cs.meta.take() else {
            return;
        };
        let cx = ConnCtx {
            fk: *fk,
            socket: fd.socket.as_deref(),
            role: cs.http.role(),
        };
        let left = cs.http.finish(ts, &mut |e| {
            if meta.verdict == ConnVerdict::Mcp {
                self.http_event(host, &cx, &mut meta, e);
            }
        });
        if meta.verdict == ConnVerdict::Mcp {
            for txn in &left {
                self.release(host, &cx, &mut meta, txn);
            }
        }
    }
}
