//! Stage 4, MCP: messages, sessions and correlation.
//!
//! [`message`] turns a frame into the facts of one JSON-RPC message. [`session`] works out
//! which two processes it travels between and who is client and server. [`correlate`] pairs
//! requests with responses and the sender's view of each message with the receiver's. The
//! [`Tracker`] ties them together and turns finished exchanges into [`Signal`]s.

pub mod correlate;
pub mod message;
pub mod session;

use std::collections::HashMap;

use crate::capture::procinfo::Host;
use crate::capture::record::ClockAnchor;
use crate::signals::{self, Event, Role, Signal, Status};

use correlate::{Correlator, Outcome, Pending};
use message::{Kind, Message, Target};
use session::{Links, ProcTable, Route, Session, SessionKey, Side, View, other};

/// Timing rules of the tracker, in nanoseconds.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// How long to wait for the other side's view of a message before reporting without it.
    pub twin_grace_ns: u64,
    /// How long a finished exchange waits on a session where only one side has been seen,
    /// in case the other side's first records are still in flight.
    pub settle_ns: u64,
    /// A request with no response after this long is reported as `no_response`.
    pub response_timeout_ns: u64,
    /// Sessions idle this long are forgotten.
    pub idle_ns: u64,
    /// Wall clock at a monotonic instant, for timestamps.
    pub clock: ClockAnchor,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            twin_grace_ns: 1_000_000_000,
            settle_ns: 50_000_000,
            response_timeout_ns: 300_000_000_000,
            idle_ns: 3_600_000_000_000,
            clock: ClockAnchor::default(),
        }
    }
}

/// Counters of what the tracker did, for the agent's own metrics.
#[derive(Clone, Debug, Default)]
pub struct TrackerStats {
    /// Messages observed (views, so a message seen by both sides counts twice).
    pub views: u64,
    /// Exchanges reported.
    pub exchanges: u64,
    /// Notifications reported.
    pub notifications: u64,
    /// Views that arrived after their exchange was reported.
    pub late_views: u64,
    /// Responses no request was found for.
    pub orphan_responses: u64,
    /// Requests reusing an open id.
    pub duplicate_ids: u64,
    /// Exchanges reported with a view missing although its side is watched.
    pub missing_twins: u64,
}

struct State {
    session: Session,
    corr: Correlator,
    /// Views of notifications and junk lines, by (sender side, hash): (sender's, receiver's).
    seen: HashMap<(Side, u64), ([u32; 2], u64)>,
}

/// Sessions and correlation for every MCP conversation on the host.
pub struct Tracker {
    cfg: TrackerConfig,
    states: HashMap<SessionKey, State>,
    links: Links,
    /// Processes, for naming ends.
    pub procs: ProcTable,
    /// What happened so far.
    pub stats: TrackerStats,
    now: u64,
}

/// Methods only a client sends.
fn client_method(m: &str) -> bool {
    m == "initialize"
        || m == "server/discover"
        || m.starts_with("tools/")
        || m.starts_with("resources/")
        || m.starts_with("prompts/")
        || m == "completion/complete"
        || m == "logging/setLevel"
        || m == "notifications/initialized"
        || m == "notifications/roots/list_changed"
}

/// Methods only a server sends.
fn server_method(m: &str) -> bool {
    m == "sampling/createMessage"
        || m == "roots/list"
        || m == "elicitation/create"
        || m == "notifications/message"
        || m == "notifications/tools/list_changed"
        || m == "notifications/resources/list_changed"
        || m == "notifications/resources/updated"
        || m == "notifications/prompts/list_changed"
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl Tracker {
    /// A tracker with no sessions.
    pub fn new(cfg: TrackerConfig) -> Self {
        Tracker {
            cfg,
            states: HashMap::new(),
            links: Links::default(),
            procs: ProcTable::default(),
            stats: TrackerStats::default(),
            now: 0,
        }
    }

    /// The route of a view of a newline-delimited link (stdio pipes and socketpairs, Unix
    /// sockets): the session is the pair of processes at the link's two ends.
    pub fn link_route(&mut self, host: &mut dyn Host, v: &View, transport: &'static str) -> Route {
        let key = self.links.resolve(host, v);
        let (lo, hi) = match key {
            SessionKey::Procs { lo, hi } => (lo, hi),
            _ => unreachable!("links resolve to process pairs"),
        };
        // Sides of a process pair follow pid order; an unknown peer (0) takes the free side.
        let viewer = if lo == v.tgid && lo != 0 { 0 } else { 1 };
        let viewer = if hi == v.tgid { 1 } else { viewer };
        let peer = if viewer == 0 { hi } else { lo };
        let sender = match v.dir {
            crate::capture::Dir::Out => viewer,
            crate::capture::Dir::In => other(viewer),
        };
        Route {
            key,
            transport,
            sender,
            viewer,
            viewer_pid: v.tgid,
            peer_pid: (peer != 0).then_some(peer),
            roles_fixed: false,
            label: None,
            http_status: None,
            addrs: None,
            protocol_version: None,
        }
    }

    fn state(&mut self, host: &mut dyn Host, route: &Route, now: u64) -> &mut State {
        let st = self
            .states
            .entry(route.key.clone())
            .or_insert_with(|| State {
                session: Session::new(route, now),
                corr: Correlator::default(),
                seen: HashMap::new(),
            });
        st.session.last_ns = st.session.last_ns.max(now);
        let end = &mut st.session.ends[route.viewer];
        end.observed = true;
        end.pid.get_or_insert(route.viewer_pid);
        if let Some(peer) = route.peer_pid {
            st.session.ends[other(route.viewer)].pid.get_or_insert(peer);
            // The far end may be a process that is not watched: name it from /proc.
            self.procs.note(host, peer, "");
        }
        st
    }

    /// One view of one message.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        host: &mut dyn Host,
        route: &Route,
        v: &View,
        msg: &Message,
        hash: u64,
        bytes: u64,
        out: &mut Vec<Signal>,
    ) {
        self.stats.views += 1;
        self.now = self.now.max(v.ts());
        let now = self.now;
        let (viewer, sender) = (route.viewer, route.sender);
        let viewer_is_sender = viewer == sender;
        let clock = self.cfg.clock;
        self.state(host, route, v.ts());
        let st = self.states.get_mut(&route.key).expect("just inserted");
        let s = &mut st.session;

        if let Some(m) = msg.method.as_deref() {
            if client_method(m) {
                s.set_role(sender, Role::Client);
            } else if server_method(m) {
                s.set_role(sender, Role::Server);
            }
        }
        if let Some(info) = &msg.peer_info {
            if msg.peer_info_is_server {
                s.set_role(sender, Role::Server);
            }
            s.ends[sender].info.get_or_insert_with(|| info.clone());
        }
        if s.protocol_version.is_none() {
            s.protocol_version = route.protocol_version.clone();
        }
        if let Some(pv) = &msg.protocol_version {
            // The initialize result's version is the negotiated one; a request's is a proposal
            // that a result may override.
            if msg.kind == Kind::Response || s.protocol_version.is_none() {
                s.protocol_version = Some(pv.clone());
            }
        }

        match msg.kind {
            Kind::Request => {
                let outcome = st.corr.request(
                    sender,
                    msg,
                    viewer_is_sender,
                    v.ts(),
                    hash,
                    bytes,
                    route.addrs.as_ref(),
                );
                if outcome == Outcome::Late {
                    self.stats.late_views += 1;
                }
                if outcome == Outcome::DuplicateId {
                    self.stats.duplicate_ids += 1;
                    let e = Event::new(clock.wall_ns(v.ts()), "duplicate_id")
                        .with(
                            "id",
                            msg.id.as_ref().map(|i| i.0.clone()).unwrap_or_default(),
                        )
                        .with("method", msg.method.clone().unwrap_or_default());
                    out.push(Signal::Event(Event {
                        session: st.session.label(&self.procs),
                        ..e
                    }));
                }
            }
            Kind::Response | Kind::Error => {
                if msg.id.is_none() {
                    // e.g. -32700 parse errors: nothing to correlate with.
                    if viewer_is_sender || !st.session.ends[sender].observed {
                        out.push(Signal::Event(Event {
                            session: st.session.label(&self.procs),
                            ..Event::new(clock.wall_ns(v.ts()), "error_without_id")
                                .with("error_code", msg.error_code.unwrap_or(0))
                        }));
                    }
                } else if st.corr.response(
                    sender,
                    msg,
                    viewer_is_sender,
                    v.ts(),
                    hash,
                    bytes,
                    now,
                    route.http_status,
                ) == Outcome::Late
                {
                    self.stats.late_views += 1;
                }
            }
            Kind::Notification => {
                let slot = if viewer_is_sender { 0 } else { 1 };
                let entry = st.seen.entry((sender, hash)).or_insert(([0, 0], now));
                entry.0[slot] += 1;
                entry.1 = now;
                let first = entry.0[slot] > entry.0[1 - slot];
                if let (Some(id), true) = (&msg.cancels, first) {
                    st.corr.cancel(sender, id, v.ts());
                }
                if first {
                    self.stats.notifications += 1;
                    let method = msg.method.clone().unwrap_or_default();
                    let s = &mut st.session;
                    let from = s.ends[sender].role.unwrap_or(Role::Unknown);
                    let c = s.side_with_role(Role::Client, &self.procs, sender);
                    out.push(Signal::Notification(signals::Notification {
                        ts_ns: clock.wall_ns(v.ts()),
                        transport: s.transport,
                        session: s.label(&self.procs),
                        method,
                        from,
                        client: s.endpoint(c, &self.procs),
                        server: s.endpoint(other(c), &self.procs),
                        bytes,
                    }));
                }
            }
        }
        self.emit_ready(&route.key, out);
    }

    /// A line that is not a JSON-RPC message on a stream that carries MCP. Returns false when
    /// it is the other side's view of a line already reported.
    pub fn observe_junk(
        &mut self,
        host: &mut dyn Host,
        route: &Route,
        v: &View,
        hash: u64,
    ) -> bool {
        let slot = if route.viewer == route.sender { 0 } else { 1 };
        let st = self.state(host, route, v.ts());
        let entry = st
            .seen
            .entry((route.sender, hash))
            .or_insert(([0, 0], v.ts()));
        entry.0[slot] += 1;
        entry.1 = v.ts();
        entry.0[slot] > entry.0[1 - slot]
    }

    /// The label of a route's session, for events about it.
    pub fn session_label(
        &mut self,
        host: &mut dyn Host,
        route: &Route,
        now: u64,
    ) -> Option<String> {
        self.state(host, route, now);
        let st = self.states.get_mut(&route.key).expect("just inserted");
        st.session.label(&self.procs)
    }

    /// A watched process exited: open calls on its sessions end as `no_response` once the
    /// views already in flight have had their chance.
    pub fn process_exit(&mut self, pid: u32, ts: u64, out: &mut Vec<Signal>) {
        self.now = self.now.max(ts);
        let keys: Vec<SessionKey> = self
            .states
            .iter()
            .filter(|(_, st)| st.session.involves(pid))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let st = self.states.get_mut(&key).expect("listed");
            for end in st.session.ends.iter_mut() {
                if end.pid == Some(pid) {
                    end.exited_ns.get_or_insert(ts);
                }
            }
            st.corr.abandon_all(ts);
            self.emit_ready(&key, out);
        }
    }

    /// Time passes: emit what waited long enough, expire orphans and idle sessions.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Signal>) {
        self.now = self.now.max(now);
        let keys: Vec<SessionKey> = self.states.keys().cloned().collect();
        for key in keys {
            self.emit_ready(&key, out);
            let grace = self.cfg.twin_grace_ns;
            let now = self.now;
            let st = self.states.get_mut(&key).expect("listed");
            for o in st.corr.expire_orphans(now, grace) {
                self.stats.orphan_responses += 1;
                let label = st.session.label(&self.procs);
                out.push(Signal::Event(Event {
                    session: label,
                    ..Event::new(self.cfg.clock.wall_ns(o.ts), "orphan_response")
                        .with("id", o.msg.id.map(|i| i.0).unwrap_or_default())
                }));
            }
            st.seen
                .retain(|_, (_, last)| now.saturating_sub(*last) < 10 * grace);
            let exited = st.session.ends.iter().any(|e| e.exited_ns.is_some());
            let idle = now.saturating_sub(st.session.last_ns);
            if st.corr.open_count() == 0
                && st.corr.orphans.is_empty()
                && (idle > self.cfg.idle_ns || (exited && idle > grace))
            {
                let ends = [st.session.ends[0].pid, st.session.ends[1].pid];
                self.states.remove(&key);
                for pid in ends.into_iter().flatten() {
                    if !self.states.values().any(|st| st.session.involves(pid)) {
                        self.links.forget_process(pid);
                    }
                }
            }
        }
    }

    /// Exchanges still open (for shutdown accounting).
    pub fn open_exchanges(&self) -> usize {
        self.states.values().map(|s| s.corr.open_count()).sum()
    }

    /// Sessions tracked.
    pub fn session_count(&self) -> usize {
        self.states.len()
    }

    fn emit_ready(&mut self, key: &SessionKey, out: &mut Vec<Signal>) {
        let cfg = &self.cfg;
        let now = self.now;
        let Some(st) = self.states.get_mut(key) else {
            return;
        };
        let observed = [st.session.ends[0].observed, st.session.ends[1].observed];
        let both_seen = observed[0] && observed[1];
        let mut missing = 0;
        let ready = |p: &Pending| -> bool {
            let Some(resp_at) = p.response_seen_ns else {
                if let Some(c) = p.cancelled_ns {
                    return now.saturating_sub(c) >= cfg.settle_ns.max(cfg.twin_grace_ns);
                }
                if let Some(a) = p.abandoned_ns {
                    return now.saturating_sub(a) >= cfg.settle_ns;
                }
                return now.saturating_sub(p.first_seen()) >= cfg.response_timeout_ns;
            };
            let requester = p.requester;
            let responder = other(requester);
            let complete = (!observed[responder] || p.resp.sent.is_some())
                && (!observed[requester] || p.resp.received.is_some())
                && (!observed[requester] || p.req.sent.is_some())
                && (!observed[responder] || p.req.received.is_some());
            let waited = now.saturating_sub(resp_at);
            if complete && (both_seen || waited >= cfg.settle_ns) {
                return true;
            }
            if waited >= cfg.twin_grace_ns {
                if !complete {
                    missing += 1;
                }
                return true;
            }
            false
        };
        let done = st.corr.take_ready(ready);
        self.stats.missing_twins += missing;
        for p in done {
            let rec = build_exchange(&mut st.session, &self.procs, &p, cfg);
            self.stats.exchanges += 1;
            out.push(Signal::Exchange(rec));
        }
    }
}

fn build_exchange(
    s: &mut Session,
    procs: &ProcTable,
    p: &Pending,
    cfg: &TrackerConfig,
) -> signals::Exchange {
    let requester_role = if client_method(&p.method) {
        Role::Client
    } else if server_method(&p.method) {
        Role::Server
    } else {
        s.ends[p.requester].role.unwrap_or(Role::Client)
    };
    if s.ends[p.requester].role.is_none() {
        s.set_role(p.requester, requester_role);
    }
    let c = s.side_with_role(Role::Client, procs, p.requester);
    let requester = if p.requester == c {
        Role::Client
    } else {
        Role::Server
    };
    let status = match (&p.response, p.cancelled_ns) {
        (_, Some(_)) => Status::Cancelled,
        (None, None) => Status::NoResponse,
        (Some(r), None) if r.kind == Kind::Error => Status::Error,
        (Some(r), None) if r.is_error => Status::ToolError,
        (Some(_), None) => Status::Ok,
    };
    let span = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(ms(b.saturating_sub(a))),
        _ => None,
    };
    // The side that sent the request reads the response; the other one wrote it.
    let mut client_d = span(p.req.sent, p.resp.received);
    let mut server_d = span(p.req.received, p.resp.sent);
    if status == Status::Cancelled {
        client_d = span(p.req.sent, p.cancelled_ns);
        server_d = None;
    }
    if requester == Role::Server {
        std::mem::swap(&mut client_d, &mut server_d);
    }
    let duration = client_d.or(server_d).or_else(|| {
        let start = p.req.sent.or(p.req.received)?;
        let end = p.resp.received.or(p.resp.sent)?;
        Some(ms(end.saturating_sub(start)))
    });
    let (tool, resource_uri, prompt) = match &p.target {
        Target::Tool(t) => (Some(t.clone()), None, None),
        Target::Resource(u) => (None, Some(u.clone()), None),
        Target::Prompt(n) => (None, None, Some(n.clone())),
        Target::None => (None, None, None),
    };
    let (server_address, server_port) = split_addr(p.addrs.as_ref().map(|a| &a.server));
    let (client_address, client_port) = split_addr(p.addrs.as_ref().map(|a| &a.client));
    signals::Exchange {
        ts_ns: cfg.clock.wall_ns(p.first_seen()),
        transport: s.transport,
        session: s.label(procs),
        method: p.method.clone(),
        id: p.id.0.clone(),
        tool,
        resource_uri,
        prompt,
        status,
        error_code: p
            .response
            .as_ref()
            .filter(|r| r.kind == Kind::Error)
            .and_then(|r| r.error_code),
        http_status: p.response.as_ref().and_then(|r| r.http_status),
        requester,
        duration_ms: duration,
        client_duration_ms: client_d,
        server_duration_ms: server_d,
        client: s.endpoint(c, procs),
        server: s.endpoint(other(c), procs),
        protocol_version: s.protocol_version.clone(),
        request_bytes: p.req_bytes,
        response_bytes: p.response.as_ref().map(|r| r.bytes),
        server_address,
        server_port,
        client_address,
        client_port,
    }
}

fn split_addr(a: Option<&session::Addr>) -> (Option<String>, Option<u16>) {
    match a {
        Some(session::Addr::Ip(ip, port)) => (Some(ip.to_string()), Some(*port)),
        Some(session::Addr::Unix(path)) => (Some(path.clone()), None),
        None => (None, None),
    }
}
