//! The HTTP binding: HTTP/1.1 transactions in, routed MCP messages out, for both HTTP
//! transports ([`super::streamable`] and [`super::legacy_sse`] name their sessions).
//!
//! It is one [`HttpApp`]: a transaction is MCP's when its request carries MCP headers, or it
//! is a POST whose body is JSON-RPC, or a GET whose event stream carries an `endpoint` event or
//! JSON-RPC; a connection where such a transaction turns out not to be MCP is refused (and, if
//! no other protocol keeps it, rejected: the kernel stops shipping it). A 4xx/5xx reply with no
//! JSON-RPC answer ends the requests of its transaction as errors with that status.
//!
//! A transaction whose heads were not decoded (HTTP/2 first seen mid-way) has no method,
//! path, status or headers: its bodies alone say whether it is MCP, its session is the
//! connection (as for a server that names none), and a status it does not have is never an
//! HTTP error.

use xxhash_rust::xxh3::xxh3_64;

use super::links::Links;
use super::route::{HttpEnd, HttpNaming, Route, View, http_route};
use super::{At, Config, Deliver, HttpSeen, Oversize, Seen, Stats, Stray, legacy_sse, streamable};
use crate::capture::{Dir, FdKind};
use crate::conn::verdict::{Reason, Verdict};
use crate::mcp::message::{self, Id, Kind, Message, Parsed};
use crate::proto::AppCx;
use crate::proto::http::{Claim, Holds, HttpApp};
use crate::signal::{Signal, What};
use crate::wire::http::{ConnEvent, Role, Txn};

/// A request body waiting for its response head.
struct Held {
    seq: u64,
    body: Vec<u8>,
    view: View,
}

/// What the binding keeps per HTTP connection (the framing is the connection's own).
#[derive(Default)]
pub struct McpConn {
    verdict: Verdict,
    held: Vec<Held>,
    /// JSON-RPC request ids sent in each transaction, and those answered in it.
    ids: crate::FastMap<u64, (Vec<Id>, crate::FastSet<Id>)>,
    /// The session this connection's legacy `endpoint` event named.
    legacy: Option<String>,
}

impl Holds for McpConn {
    /// Request bodies held for their response's head.
    fn held(&self) -> usize {
        self.held.iter().map(|h| h.body.len()).sum()
    }
}

fn ids_of(parsed: &Parsed<'_>, want: impl Fn(&Message<'_>) -> bool) -> Vec<Id> {
    let one = |m: &Message<'_>| want(m).then(|| m.id()).flatten();
    match parsed {
        Parsed::One(m) => one(m).into_iter().collect(),
        Parsed::Batch(ms) => ms.iter().filter_map(one).collect(),
    }
}

fn request_ids(parsed: &Parsed<'_>) -> Vec<Id> {
    ids_of(parsed, |m| m.kind == Kind::Request)
}

fn response_ids(parsed: &Parsed<'_>) -> Vec<Id> {
    ids_of(parsed, |m| matches!(m.kind, Kind::Response | Kind::Error))
}

/// MCP over HTTP, for one record's work: the tracker messages go to, and the transport's
/// links, counters and settings.
pub struct McpHttp<'a, D: ?Sized> {
    /// Where messages go.
    pub tracker: &'a mut D,
    /// Who is at the far end of each link.
    pub links: &'a mut Links,
    /// Counters.
    pub stats: &'a mut Stats,
    /// Settings.
    pub cfg: &'a Config,
}

impl<D: Deliver + ?Sized> McpHttp<'_, D> {
    /// The binding's work context for one app context.
    fn at<'b, 'c>(&'b mut self, cx: &'b mut AppCx<'_, 'c>) -> At<'b, 'c, D> {
        At {
            cx: &mut *cx.cx,
            tracker: &mut *self.tracker,
            links: &mut *self.links,
            stats: &mut *self.stats,
            cfg: self.cfg,
            key: cx.key,
            base: cx.base,
            socket: cx.socket,
            now: cx.now,
        }
    }
}

/// What every event of one connection needs: its framing's role and the binding's state.
struct ConnAt<'m> {
    role: Role,
    meta: &'m mut McpConn,
    base: View,
}

impl ConnAt<'_> {
    fn dirs(&self) -> (Dir, Dir) {
        match self.role {
            Role::Client => (Dir::Out, Dir::In),
            Role::Server => (Dir::In, Dir::Out),
        }
    }

    fn view(&self, dir: Dir, first: u64, last: u64) -> View {
        View {
            dir,
            first_enter_ns: first,
            last_exit_ns: last,
            ..self.base
        }
    }

    fn route<D: Deliver + ?Sized>(
        &self,
        at: &At<'_, '_, D>,
        txn: &Txn,
        from_client: bool,
    ) -> Route {
        let resp = txn.response.as_ref();
        let session_id = txn
            .request
            .headers
            .session_id
            .as_deref()
            .or_else(|| resp.and_then(|r| r.headers.session_id.as_deref()));
        let legacy = txn
            .request
            .target
            .as_deref()
            .and_then(legacy_sse::session_in)
            .or_else(|| self.meta.legacy.clone());
        http_route(&HttpNaming {
            tgid: self.base.tgid,
            inode: self.base.inode,
            peer_inode: self.base.peer_inode,
            socket: at.socket,
            unix: at.socket.is_some_and(|s| s.unix) || self.base.kind == FdKind::Unix,
            end: match self.role {
                Role::Client => HttpEnd::Client,
                Role::Server => HttpEnd::Server,
            },
            session_id,
            legacy: legacy.as_deref(),
            from_client,
            http_status: resp.and_then(|r| r.status),
            protocol_version: txn.request.headers.protocol_version.as_deref(),
            raw_ids: at.cfg.raw_session_ids,
        })
    }
}

impl<D: Deliver + ?Sized> HttpApp for McpHttp<'_, D> {
    type Conn = McpConn;

    fn claim(&self, _role: Role, txn: &Txn) -> Claim {
        let h = &txn.request.headers;
        let method = txn.request.method.as_deref().unwrap_or("");
        if streamable::mcp_headers(h) {
            Claim::Yes
        } else if !txn.request.decoded() || streamable::may_be_mcp(method, h) {
            // A head not decoded says nothing: its body decides.
            // POSTs are decided by their body, GETs by their event stream.
            Claim::Maybe
        } else {
            Claim::No
        }
    }

    fn claim_body(&mut self, _conn: &mut McpConn, _txn: &Txn, body: &[u8]) -> bool {
        message::parse_with(body, message::Options { payloads: false }).is_ok()
    }

    fn event(
        &mut self,
        conn: &mut McpConn,
        cx: &mut AppCx<'_, '_>,
        role: Role,
        e: ConnEvent<'_>,
    ) -> Verdict {
        let base = cx.base;
        let mut at = self.at(cx);
        let mut c = ConnAt {
            role,
            meta: conn,
            base,
        };
        event(&mut c, &mut at, e);
        conn.verdict
    }

    fn close(&mut self, mut conn: McpConn, cx: &mut AppCx<'_, '_>, role: Role, left: &[Txn]) {
        if !conn.verdict.kept() {
            return;
        }
        let base = cx.base;
        let mut at = self.at(cx);
        let mut c = ConnAt {
            role,
            meta: &mut conn,
            base,
        };
        for txn in left {
            release(&mut c, &mut at, txn);
            let end = at.now;
            served(&mut c, &mut at, txn, end);
        }
    }
}

fn event<D: Deliver + ?Sized>(c: &mut ConnAt<'_>, at: &mut At<'_, '_, D>, e: ConnEvent<'_>) {
    match e {
        ConnEvent::RequestHead(txn) => request_head(c, txn),
        ConnEvent::RequestBody {
            txn,
            body,
            first_enter_ns,
            last_exit_ns,
        } => request_body(c, at, txn, body, (first_enter_ns, last_exit_ns)),
        ConnEvent::ResponseHead(txn) => {
            // A head not decoded leaves it to the body.
            let decoded = txn.response.as_ref().is_some_and(|r| r.decoded());
            if c.meta.verdict.probing() && decoded {
                let sse = txn.response.as_ref().is_some_and(|r| r.is_sse());
                let get = txn.request.method.as_deref() == Some("GET");
                if !(get && sse) {
                    c.meta.verdict = Verdict::Rejected(Reason::HttpNotMcp);
                    return;
                }
            }
            release(c, at, txn);
        }
        ConnEvent::ResponseBody {
            txn,
            body,
            first_enter_ns,
            last_exit_ns,
        } => response_body(c, at, txn, body, (first_enter_ns, last_exit_ns)),
        ConnEvent::Sse { txn, event } => sse_event(c, at, txn, event),
        ConnEvent::Done(txn) => done(c, at, txn),
        ConnEvent::Oversize { txn, len } => {
            let from_client = txn.response.is_none();
            let route = c.route(at, txn, from_client);
            let (req_dir, resp_dir) = c.dirs();
            let dir = if from_client { req_dir } else { resp_dir };
            let (first, last) = (txn.request.first_enter_ns, txn.request.last_exit_ns);
            let view = c.view(dir, first, last);
            let big = Oversize {
                view: &view,
                route: &route,
                len,
                prefix: b"",
            };
            at.oversize(&big, Verdict::Kept);
        }
        ConnEvent::Error(why) => broken(c, at, why),
        // The router's: about the connection, never handed to an app.
        ConnEvent::Role(_) => {}
    }
}

fn request_head(c: &mut ConnAt<'_>, txn: &Txn) {
    if !c.meta.verdict.probing() {
        return;
    }
    let h = &txn.request.headers;
    let method = txn.request.method.as_deref().unwrap_or("");
    if streamable::mcp_headers(h) {
        c.meta.verdict = Verdict::Kept;
    } else if txn.request.decoded() && !streamable::may_be_mcp(method, h) {
        // POSTs are decided by their body, GETs by their event stream; nothing else is MCP.
        c.meta.verdict = Verdict::Rejected(Reason::HttpNotMcp);
    }
}

fn request_body<D: Deliver + ?Sized>(
    c: &mut ConnAt<'_>,
    at: &mut At<'_, '_, D>,
    txn: &Txn,
    body: &[u8],
    (first, last): (u64, u64),
) {
    at.stats.frames += 1;
    let view = c.view(c.dirs().0, first, last);
    let parsed = match message::parse_with(body, at.parse_opts()) {
        Ok(p) => p,
        Err(err) => {
            if c.meta.verdict.probing() {
                c.meta.verdict = Verdict::Rejected(Reason::HttpNotMcp);
            } else {
                let route = c.route(at, txn, true);
                at.stray(&Stray::of(view, body, err.class()), &route, false);
            }
            return;
        }
    };
    c.meta.verdict = Verdict::Kept;
    let ids = &mut c.meta.ids.entry(txn.seq).or_default().0;
    ids.extend(request_ids(&parsed));
    let named = txn.request.headers.session_id.is_some()
        || txn
            .request
            .target
            .as_deref()
            .and_then(legacy_sse::session_in)
            .is_some();
    if streamable::held_for_session(&parsed, named, txn.response.is_some()) {
        // Its response names the session: wait for that head.
        c.meta.held.push(Held {
            seq: txn.seq,
            body: body.to_vec(),
            view,
        });
    } else {
        let route = c.route(at, txn, true);
        at.deliver(&route, &view, &parsed, body, body.len() as u64);
    }
}

fn response_body<D: Deliver + ?Sized>(
    c: &mut ConnAt<'_>,
    at: &mut At<'_, '_, D>,
    txn: &Txn,
    body: &[u8],
    (first, last): (u64, u64),
) {
    at.stats.frames += 1;
    let view = c.view(c.dirs().1, first, last);
    let probing = c.meta.verdict.probing();
    match message::parse_with(body, at.parse_opts()) {
        Ok(parsed) => {
            // Only a transaction whose heads were not decoded gets here undecided.
            c.meta.verdict = Verdict::Kept;
            if let Some((_, answered)) = c.meta.ids.get_mut(&txn.seq) {
                answered.extend(response_ids(&parsed));
            }
            // An error with `"id": null` answers the transaction's requests: the HTTP failure
            // at its end names them.
            let route = c.route(at, txn, false);
            at.deliver(&route, &view, &parsed, body, body.len() as u64);
        }
        Err(_) if probing => c.meta.verdict = Verdict::Rejected(Reason::HttpNotMcp),
        Err(err) => {
            let resp = txn.response.as_ref();
            let failed = resp.and_then(|r| r.status).is_some_and(|s| s >= 400);
            // A 202 carries no message (the legacy transport's says `Accepted` in text), nor
            // does a body that says it is not JSON.
            let not_json = resp.and_then(|r| r.status) == Some(202)
                || resp
                    .and_then(|r| r.headers.content_type.as_deref())
                    .is_some_and(|t| !t.contains("json"));
            // An error page is reported as the HTTP failure it is; anything else that is not
            // JSON-RPC corrupts the stream.
            if !failed && !not_json {
                let route = c.route(at, txn, false);
                at.stray(&Stray::of(view, body, err.class()), &route, false);
            }
        }
    }
}

fn sse_event<D: Deliver + ?Sized>(
    c: &mut ConnAt<'_>,
    at: &mut At<'_, '_, D>,
    txn: &Txn,
    event: crate::wire::sse::Event<'_>,
) {
    at.stats.frames += 1;
    let view = c.view(c.dirs().1, event.first_enter_ns, event.last_exit_ns);
    if let Some(named) = legacy_sse::endpoint_session(event.event, event.data) {
        if let Some(id) = named {
            c.meta.legacy = Some(id);
            c.meta.verdict = Verdict::Kept;
        }
        return;
    }
    match message::parse_with(event.data, at.parse_opts()) {
        Ok(parsed) => {
            c.meta.verdict = Verdict::Kept;
            if let Some((_, answered)) = c.meta.ids.get_mut(&txn.seq) {
                answered.extend(response_ids(&parsed));
            }
            let route = c.route(at, txn, false);
            let data = event.data;
            at.deliver(&route, &view, &parsed, data, data.len() as u64);
        }
        Err(err) => {
            if c.meta.verdict.probing() {
                c.meta.verdict = Verdict::Rejected(Reason::HttpNotMcp);
            } else {
                let route = c.route(at, txn, false);
                at.stray(&Stray::of(view, event.data, err.class()), &route, false);
            }
        }
    }
}

/// Report the HTTP request `txn` itself, ended at `end_ns` (a request whose head was not
/// decoded has no method or path to report).
fn served<D: Deliver + ?Sized>(c: &mut ConnAt<'_>, at: &mut At<'_, '_, D>, txn: &Txn, end_ns: u64) {
    let (Some(method), Some(target)) = (&txn.request.method, &txn.request.target) else {
        return;
    };
    let route = c.route(at, txn, false);
    let seen = HttpSeen {
        method,
        target,
        status: txn.response.as_ref().and_then(|r| r.status),
        start_ns: txn.request.first_enter_ns,
        end_ns,
    };
    at.tracker.http_request(at.cx, &route, &seen);
}

fn done<D: Deliver + ?Sized>(c: &mut ConnAt<'_>, at: &mut At<'_, '_, D>, txn: &Txn) {
    release(c, at, txn);
    let end = at.now;
    served(c, at, txn, end);
    if streamable::ends_session(txn) {
        // The client ended the session.
        let route = c.route(at, txn, false);
        let ts = txn.response.as_ref().map_or(at.now, |r| r.last_exit_ns);
        at.tracker.session_deleted(at.cx, &route.key, ts);
    }
    let (ids, answered) = c.meta.ids.remove(&txn.seq).unwrap_or_default();
    let status = txn.response.as_ref().and_then(|r| r.status);
    let Some(status) = status.filter(|s| *s >= 400) else {
        return;
    };
    // The server refused the request at the HTTP level: each request in it ends with that
    // status and no JSON-RPC response.
    let resp = txn.response.as_ref().expect("status implies a response");
    let view = c.view(c.dirs().1, resp.first_enter_ns, resp.last_exit_ns);
    let route = c.route(at, txn, false);
    for id in ids.into_iter().filter(|id| !answered.contains(id)) {
        let msg = Message {
            kind: Kind::Error,
            id: Some(std::borrow::Cow::Borrowed(&id.0)),
            ..Message::default()
        };
        let hash = xxh3_64(format!("http {status} {}", id.0).as_bytes());
        at.tracker
            .message(at.cx, &route, &view, &msg, Seen { hash, bytes: 0 });
    }
}

fn broken<D: Deliver + ?Sized>(c: &mut ConnAt<'_>, at: &mut At<'_, '_, D>, why: &'static str) {
    at.stats.http_errors += 1;
    if c.meta.verdict.kept() {
        let what = What::StreamCorruption {
            reason: "http",
            bytes: None,
            before_first_message: false,
            detail: Some(why),
        };
        let e = at.cx.stream_event(what, at.key.tgid, at.key.fd, at.now);
        at.cx.out.push(Signal::Event(e));
    }
    c.meta.verdict = Verdict::Rejected(Reason::HttpBroken);
}

/// Deliver the request bodies held for `txn`, now that its response head names the session
/// (or never will).
fn release<D: Deliver + ?Sized>(c: &mut ConnAt<'_>, at: &mut At<'_, '_, D>, txn: &Txn) {
    let (mine, rest): (Vec<Held>, Vec<Held>) = std::mem::take(&mut c.meta.held)
        .into_iter()
        .partition(|h| h.seq == txn.seq);
    c.meta.held = rest;
    for h in mine {
        if let Ok(parsed) = message::parse_with(&h.body, at.parse_opts()) {
            let route = c.route(at, txn, true);
            at.deliver(&route, &h.view, &parsed, &h.body, h.body.len() as u64);
        }
    }
}
