//! HTTP transactions to their application protocol: each transaction of a connection goes to
//! the first [`HttpApp`] that claims it (MCP over Streamable HTTP or legacy SSE, a model API,
//! or none), so that one connection can carry more than one, and a new protocol over HTTP is
//! one module behind the trait plus its line in [`APPS`].
//!
//! An app judges a transaction first by its request head ([`Claim`]); a head that several
//! apps may want is settled by its body, each asked in turn ([`HttpApp::claim_body`]) except
//! the last, which takes it and judges the body itself. A connection is kept once any app
//! keeps it; while nothing has kept it, a transaction no app claims, or an app's refusal,
//! rejects it (and the kernel stops shipping it).

use super::AppCx;
use super::framing::{ConnFraming, Detected, First, Parts};
use crate::bounded::{LogLimit, held_back};
use crate::capture::FdKind;
use crate::conn::Bytes;
use crate::conn::stream::StreamKey;
use crate::conn::verdict::{Reason, Verdict};
use crate::llm;
use crate::mcp::transport;
use crate::wire::http::{ConnEvent, HttpWire, Midstream, Role, Txn};
use crate::wire::{http1, http2};

/// How an app judges a transaction from its request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Its own: the head alone says so (MCP headers).
    Yes,
    /// Its own if the body says so (a POST to a model API's path, any POST for MCP).
    Maybe,
    /// Not its own.
    No,
}

/// What an app keeps per connection says how many bytes it holds (they count against
/// `--max-buffered-bytes`).
pub trait Holds {
    /// Bytes held.
    fn held(&self) -> usize;
}

/// An application protocol carried by HTTP transactions.
pub trait HttpApp {
    /// What it keeps per connection.
    type Conn: Default + Holds;
    /// The transaction's request head (`txn.request`), seen from a process at `role`.
    fn claim(&self, role: Role, txn: &Txn) -> Claim;
    /// Whether a transaction it answered [`Claim::Maybe`] for is its own, from its request
    /// body; it may keep what it read of the body in `conn` for the events to come.
    fn claim_body(&mut self, conn: &mut Self::Conn, txn: &Txn, body: &[u8]) -> bool;
    /// An event of a transaction it took, in order; returns its verdict on the connection
    /// (`Probing` until it is sure, `Rejected` when the connection is not its own after all).
    fn event(
        &mut self,
        conn: &mut Self::Conn,
        cx: &mut AppCx<'_, '_>,
        role: Role,
        e: ConnEvent<'_>,
    ) -> Verdict;
    /// The connection ended; `left` are the transactions it took that never got (all of) an
    /// answer.
    fn close(&mut self, conn: Self::Conn, cx: &mut AppCx<'_, '_>, role: Role, left: &[Txn]);
}

/// The apps over HTTP, in the order they are asked.
// PROTOCOL_LIST: an application protocol over HTTP is one variant here, one in `APPS`, one
// field of `Apps` and `AppConns`, and one arm in `with_app!`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppId {
    /// A model API (`llm::http`): asked first, since it claims only its own paths.
    Llm = 0,
    /// MCP over Streamable HTTP and legacy SSE (`mcp::transport::http`).
    Mcp = 1,
}

/// Every app, in the order they are asked.
pub const APPS: [AppId; 2] = [AppId::Llm, AppId::Mcp];

/// The apps for one record's work (each borrows its own state).
pub struct Apps<L, M> {
    /// The model APIs.
    pub llm: L,
    /// MCP.
    pub mcp: M,
}

/// What the apps keep for one connection.
#[derive(Default)]
pub struct AppConns<L, M> {
    llm: Option<L>,
    mcp: Option<M>,
}

/// Run `$body` with `$a` the app `$id` and `$c` its connection state (made if absent).
macro_rules! with_app {
    ($apps:expr, $conns:expr, $id:expr, |$a:ident, $c:ident| $body:expr) => {
        match $id {
            AppId::Llm => {
                let $a = &mut $apps.llm;
                let $c = $conns.llm.get_or_insert_with(Default::default);
                $body
            }
            AppId::Mcp => {
                let $a = &mut $apps.mcp;
                let $c = $conns.mcp.get_or_insert_with(Default::default);
                $body
            }
        }
    };
}

/// Where a transaction went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// Its head left it to these apps (a bit per [`AppId`]); its body decides.
    Open(u8),
    /// This app took it.
    App(AppId),
    /// No app wanted it.
    Nobody,
}

/// One process's view of one HTTP connection: the framing of both directions, which app
/// took each transaction, and what each app keeps.
pub struct HttpConn<L, M> {
    http: Box<dyn HttpWire>,
    owners: crate::FastMap<u64, Owner>,
    apps: AppConns<L, M>,
    /// Apps that refused this connection: they are not asked again.
    refused: u8,
    /// What the apps' verdicts add up to.
    verdict: Verdict,
}

impl<L, M> std::fmt::Debug for HttpConn<L, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConn")
            .field("verdict", &self.verdict)
            .finish_non_exhaustive()
    }
}

fn bit(id: AppId) -> u8 {
    1 << id as u8
}

/// A request with no body to judge: its head settles it. A head not decoded says nothing
/// of its body: one may follow.
fn bodiless(txn: &Txn) -> bool {
    let h = &txn.request.headers;
    txn.request.decoded() && !h.chunked && h.content_length.unwrap_or(0) == 0
}

impl<L: Default, M: Default> HttpConn<L, M> {
    /// A connection whose framing `http` detected.
    pub fn new(http: Box<dyn HttpWire>) -> Self {
        HttpConn {
            http,
            owners: Default::default(),
            apps: AppConns::default(),
            refused: 0,
            verdict: Verdict::default(),
        }
    }

    /// Bytes held: the framing's, and the apps'.
    pub fn buffered(&self) -> usize
    where
        L: Holds,
        M: Holds,
    {
        self.http.buffered()
            + self.apps.llm.as_ref().map_or(0, Holds::held)
            + self.apps.mcp.as_ref().map_or(0, Holds::held)
    }

    /// The bytes of one record in direction `cx.key.dir`; returns the connection's verdict
    /// after them.
    pub fn push<A, B>(
        &mut self,
        apps: &mut Apps<A, B>,
        cx: &mut AppCx<'_, '_>,
        data: crate::conn::Bytes<'_>,
    ) -> Verdict
    where
        A: HttpApp<Conn = L>,
        B: HttpApp<Conn = M>,
    {
        let role = self.http.role();
        let dir = cx.key.dir;
        let HttpConn {
            http,
            owners,
            apps: conns,
            refused,
            verdict,
        } = self;
        let mut route = Router {
            owners,
            conns,
            refused,
            verdict,
            role,
        };
        cx.base.http = Some(http.version());
        http.push(dir, data.data, data.enter_ns, data.exit_ns, &mut |e| {
            route.event(apps, cx, e)
        });
        self.verdict
    }

    /// The connection ended (closed, its process exited, or its bytes were lost): bodies
    /// delimited by the close end, and every app finishes what it held.
    pub fn close<A, B>(self, apps: &mut Apps<A, B>, cx: &mut AppCx<'_, '_>, ts: u64)
    where
        A: HttpApp<Conn = L>,
        B: HttpApp<Conn = M>,
    {
        let role = self.http.role();
        let HttpConn {
            mut http,
            mut owners,
            apps: mut conns,
            mut refused,
            mut verdict,
        } = self;
        let mut route = Router {
            owners: &mut owners,
            conns: &mut conns,
            refused: &mut refused,
            verdict: &mut verdict,
            role,
        };
        cx.base.http = Some(http.version());
        let left = http.finish(ts, &mut |e| route.event(apps, cx, e));
        // No app took anything before the role was known.
        let Some(role) = role else {
            return;
        };
        for id in APPS {
            let mine: Vec<Txn> = left
                .iter()
                .filter(|t| owners.get(&t.seq) == Some(&Owner::App(id)))
                .cloned()
                .collect();
            match id {
                AppId::Llm => {
                    if let Some(c) = conns.llm.take() {
                        apps.llm.close(c, cx, role, &mine);
                    }
                }
                AppId::Mcp => {
                    if let Some(c) = conns.mcp.take() {
                        apps.mcp.close(c, cx, role, &mine);
                    }
                }
            }
        }
    }
}

/// The parts of a connection the events of one push work on.
struct Router<'r, L, M> {
    owners: &'r mut crate::FastMap<u64, Owner>,
    conns: &'r mut AppConns<L, M>,
    refused: &'r mut u8,
    verdict: &'r mut Verdict,
    /// This process's role: `None` until the framing says (no transaction comes before).
    role: Option<Role>,
}

impl<L: Default, M: Default> Router<'_, L, M> {
    fn event<A, B>(&mut self, apps: &mut Apps<A, B>, cx: &mut AppCx<'_, '_>, e: ConnEvent<'_>)
    where
        A: HttpApp<Conn = L>,
        B: HttpApp<Conn = M>,
    {
        if self.verdict.rejected().is_some() {
            return;
        }
        if let ConnEvent::Role(role) = e {
            // The framing learned it (HTTP/2 joined mid-way): about the connection, not for
            // the apps, which are told the role with every event.
            self.role = Some(role);
            return;
        }
        if let ConnEvent::Error(why) = e {
            // Broken framing: every app on the connection hears it.
            for id in APPS {
                if self.present(id) {
                    self.deliver_to(apps, cx, id, ConnEvent::Error(why));
                }
            }
            // Nothing more can be framed on it, kept or not: the kernel may stop shipping it.
            *self.verdict = Verdict::Rejected(Reason::HttpBroken);
            return;
        }
        let txn = e.txn().expect("every other event has a transaction");
        if self.role.is_none() {
            // Never: the framing says the role before any transaction's event.
            return;
        }
        if txn.request.headers.switches() {
            // A protocol switch's handshake: whatever it carries is the next framing's to
            // judge, not an application's.
            return;
        }
        let done = matches!(e, ConnEvent::Done(_));
        let seq = txn.seq;
        let owner = match (&e, self.owners.get(&txn.seq).copied()) {
            (ConnEvent::RequestHead(_), _) | (_, None) => self.claim(apps, txn),
            (ConnEvent::RequestBody { body, .. }, Some(Owner::Open(mask))) => {
                self.claim_by_body(apps, cx, txn, mask, body)
            }
            // An event before the body (an early response, an oversized request) settles it
            // for the first app that may want it.
            (_, Some(Owner::Open(mask))) => self.assign(apps, cx, txn, first(mask)),
            (_, Some(o)) => o,
        };
        match owner {
            Owner::App(id) => self.deliver_to(apps, cx, id, e),
            Owner::Nobody => self.settle(Reason::HttpNotMcp),
            Owner::Open(_) => {}
        }
        if done {
            self.owners.remove(&seq);
        }
    }

    fn present(&self, id: AppId) -> bool {
        match id {
            AppId::Llm => self.conns.llm.is_some(),
            AppId::Mcp => self.conns.mcp.is_some(),
        }
    }

    /// A request head: which apps may want it.
    fn claim<A, B>(&mut self, apps: &Apps<A, B>, txn: &Txn) -> Owner
    where
        A: HttpApp<Conn = L>,
        B: HttpApp<Conn = M>,
    {
        let mut open = 0u8;
        let mut owner = Owner::Nobody;
        let Some(role) = self.role else {
            return owner;
        };
        for id in APPS {
            if *self.refused & bit(id) != 0 {
                continue;
            }
            let claim = match id {
                AppId::Llm => apps.llm.claim(role, txn),
                AppId::Mcp => apps.mcp.claim(role, txn),
            };
            match claim {
                Claim::Yes if open == 0 => {
                    owner = Owner::App(id);
                    break;
                }
                Claim::Yes | Claim::Maybe => open |= bit(id),
                Claim::No => {}
            }
        }
        if open != 0 {
            // A head that no body will settle goes to the first app that may want it.
            owner = if bodiless(txn) {
                Owner::App(first(open))
            } else {
                Owner::Open(open)
            };
        }
        self.owners.insert(txn.seq, owner);
        owner
    }

    /// A request body settles a transaction its head left open: each app in turn, the last
    /// one without asking (it judges the body itself).
    fn claim_by_body<A, B>(
        &mut self,
        apps: &mut Apps<A, B>,
        cx: &mut AppCx<'_, '_>,
        txn: &Txn,
        mut open: u8,
        body: &[u8],
    ) -> Owner
    where
        A: HttpApp<Conn = L>,
        B: HttpApp<Conn = M>,
    {
        while open.count_ones() > 1 {
            let id = first(open);
            open &= !bit(id);
            let conns = &mut *self.conns;
            if with_app!(apps, conns, id, |a, c| a.claim_body(c, txn, body)) {
                return self.assign(apps, cx, txn, id);
            }
        }
        self.assign(apps, cx, txn, first(open))
    }

    /// `id` takes a transaction whose head it has not seen yet: it sees it now.
    fn assign<A, B>(
        &mut self,
        apps: &mut Apps<A, B>,
        cx: &mut AppCx<'_, '_>,
        txn: &Txn,
        id: AppId,
    ) -> Owner
    where
        A: HttpApp<Conn = L>,
        B: HttpApp<Conn = M>,
    {
        self.owners.insert(txn.seq, Owner::App(id));
        self.deliver_to(apps, cx, id, ConnEvent::RequestHead(txn));
        Owner::App(id)
    }

    fn deliver_to<A, B>(
        &mut self,
        apps: &mut Apps<A, B>,
        cx: &mut AppCx<'_, '_>,
        id: AppId,
        e: ConnEvent<'_>,
    ) where
        A: HttpApp<Conn = L>,
        B: HttpApp<Conn = M>,
    {
        if *self.refused & bit(id) != 0 {
            return;
        }
        let Some(role) = self.role else {
            return;
        };
        let conns = &mut *self.conns;
        let v = with_app!(apps, conns, id, |a, c| a.event(c, cx, role, e));
        match v {
            Verdict::Kept => *self.verdict = self.verdict.message(),
            Verdict::Rejected(reason) => {
                *self.refused |= bit(id);
                self.settle(reason);
            }
            Verdict::Probing { .. } => {}
        }
    }

    /// Something was refused for `reason` (a transaction no app wanted, an app's refusal,
    /// broken framing): the connection is rejected unless an app already keeps it.
    fn settle(&mut self, reason: Reason) {
        if !self.verdict.kept() {
            *self.verdict = self.verdict.reject(reason);
        }
    }
}

/// The first app in `open`.
fn first(open: u8) -> AppId {
    APPS.into_iter()
        .find(|id| open & bit(*id) != 0)
        .expect("a non-empty set")
}

/// The connection state of an HTTP connection: the framing and what each app keeps.
// PROTOCOL_LIST: each app's connection state, in `APPS` order.
pub type Http = HttpConn<llm::http::Calls, transport::http::McpConn>;

// PROTOCOL_LIST: every app over HTTP, built for one record's work.
type RecordApps<'b> =
    Apps<llm::http::LlmHttp<'b>, transport::http::McpHttp<'b, dyn transport::Deliver + 'b>>;

/// The HTTP apps for one record.
fn apps<'b>(parts: &'b mut Parts<'_>) -> RecordApps<'b> {
    let p = &mut *parts.protocols;
    Apps {
        llm: p.llm.app(),
        mcp: transport::http::McpHttp {
            tracker: &mut *parts.tracker,
            links: &mut p.mcp.links,
            stats: &mut p.mcp.stats,
            cfg: &p.mcp.cfg,
        },
    }
}

/// HTTP/1.x: a request or a response line (not over pipes).
pub fn detect_http1(first: &First<'_>) -> Detected {
    if first.kind == FdKind::Pipe {
        return Detected::No;
    }
    let head = first.bytes.trim_ascii_start();
    match http1::Conn::detect(first.dir, head, first.max_message) {
        Some(conn) => Detected::Conn(Box::new(Http::new(Box::new(conn)))),
        None => Detected::No,
    }
}

/// HTTP/2: the client's preface, or the server's first SETTINGS frame (not over pipes).
pub fn detect_http2(first: &First<'_>) -> Detected {
    if first.kind == FdKind::Pipe {
        return Detected::No;
    }
    match http2::Conn::detect(first.dir, first.bytes, first.max_message) {
        Some(conn) => Detected::Conn(Box::new(Http::new(Box::new(conn)))),
        None => Detected::No,
    }
}

/// HTTP/2 frames that do not start a connection (the agent started after it did; not over
/// pipes): framed without decoding its header blocks, its streams opened in view as
/// transactions whose heads are not decoded, and what it cannot read counted
/// ([`Stats::http2_midstream`]).
pub fn detect_http2_midstream(first: &First<'_>) -> Detected {
    if first.kind == FdKind::Pipe {
        return Detected::No;
    }
    match http2::Conn::joined(first.bytes, first.max_message) {
        Some(conn) => Detected::Conn(Box::new(Http::new(Box::new(conn)))),
        None => Detected::No,
    }
}

/// What the HTTP framings counted across connections.
#[derive(Debug, Default)]
pub struct Stats {
    /// HTTP/2 connections first seen mid-way, and what they could not read
    /// (`mcptap_http2_midstream_*`, `agent_stop`'s `http2_midstream`).
    pub http2_midstream: Midstream,
    log: LogLimit,
}

impl Stats {
    /// Counts what a connection (of the process and fd in `key`) first seen mid-way could not
    /// read since the last time, and says so in the log.
    fn midstream(&mut self, m: Midstream, key: &StreamKey) {
        if m.is_empty() {
            return;
        }
        self.http2_midstream.add(m);
        let (pid, fd) = (key.tgid, key.fd);
        if m.connections > 0
            && let Some(held) = self.log.allow()
        {
            log::info!(
                "pid {pid} fd {fd}: HTTP/2 connection first seen mid-way: its header blocks \
                 are not decoded and the streams open before are skipped \
                 (mcptap_http2_midstream_*){}",
                held_back(held)
            );
        }
        if m.streams_skipped > 0 || m.header_blocks_undecoded > 0 {
            log::debug!(
                "pid {pid} fd {fd}: HTTP/2 joined mid-way: {} streams skipped, {} header \
                 blocks not decoded",
                m.streams_skipped,
                m.header_blocks_undecoded
            );
        }
    }
}

impl ConnFraming for Http {
    fn name(&self) -> &'static str {
        match self.http.version() {
            crate::signal::HttpVersion::Http11 => "http/1.1",
            crate::signal::HttpVersion::Http2 => "http/2",
        }
    }

    fn push(&mut self, parts: &mut Parts<'_>, cx: &mut AppCx<'_, '_>, data: Bytes<'_>) -> Verdict {
        let mut apps = apps(parts);
        let verdict = HttpConn::push(self, &mut apps, cx, data);
        let midstream = self.http.take_midstream();
        parts.protocols.http.midstream(midstream, &cx.key);
        verdict
    }

    fn next(
        &mut self,
        parts: &mut Parts<'_>,
        cx: &mut AppCx<'_, '_>,
    ) -> Option<Box<dyn ConnFraming>> {
        let up = self.http.upgraded()?;
        let role = self.http.role()?;
        super::websocket::after_upgrade(up, role, parts, cx)
    }

    fn close(self: Box<Self>, parts: &mut Parts<'_>, cx: &mut AppCx<'_, '_>, ts: u64) {
        let mut apps = apps(parts);
        HttpConn::close(*self, &mut apps, cx, ts);
    }

    fn held(&self) -> usize {
        self.buffered()
    }
}
