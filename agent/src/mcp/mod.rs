//! Stage 4, MCP: messages, sessions and correlation.
//!
//! [`message`] turns a frame into the facts of one JSON-RPC message. [`session`] works out
//! which two processes it travels between and who is client and server. [`correlate`] pairs
//! requests with responses and the sender's view of each message with the receiver's. The
//! [`Tracker`] ties them together and turns finished exchanges into [`Signal`]s.

pub mod correlate;
pub mod derive;
pub mod message;
pub mod privacy;
pub mod session;

use std::collections::BTreeMap;

use crate::bounded::{TableStat, least_recent, nth_oldest};
use crate::capture::host::Host;
use crate::capture::recording::ClockAnchor;
use crate::signal::{self, Event, Role, Signal, Status, What};

use correlate::{Correlator, Derived, Outcome, Pending};
use derive::{Advertised, Repeats, ToolBook};
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
    /// A request with no response after this long is reported as a hung call (a
    /// `call_timeout` event); after ten times as long it is given up as `no_response`.
    pub response_timeout_ns: u64,
    /// An initialize answered but not followed by `notifications/initialized` within this
    /// long is a failed handshake.
    pub handshake_timeout_ns: u64,
    /// Sessions idle this long are forgotten.
    pub idle_ns: u64,
    /// Keep argument and result values for the outputs (`--payloads`), redacted.
    pub payloads: bool,
    /// Report resource URIs whole (`--full-resource-uris`), not without userinfo, query
    /// and fragment.
    pub full_resource_uris: bool,
    /// Wall clock at a monotonic instant, for timestamps.
    pub clock: ClockAnchor,
    /// Most sessions (and stateless connections) held; past it the least recently active
    /// are ended (`session_end` reason `evicted`) and counted.
    pub max_sessions: usize,
    /// Most requests awaiting an answer, over all sessions; past it the oldest end as
    /// `no_response` and are counted.
    pub max_pending: usize,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            twin_grace_ns: 1_000_000_000,
            settle_ns: 50_000_000,
            response_timeout_ns: 300_000_000_000,
            handshake_timeout_ns: 10_000_000_000,
            idle_ns: 3_600_000_000_000,
            payloads: false,
            full_resource_uris: false,
            clock: ClockAnchor::default(),
            max_sessions: 20_000,
            max_pending: 50_000,
        }
    }
}

/// A request left unanswered this many response timeouts is given up as `no_response`.
const GIVE_UP_FACTOR: u64 = 10;
/// Connection-scoped state (stateless HTTP) idle this long is forgotten.
const CONN_IDLE_NS: u64 = 30_000_000_000;

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
    /// Tool definitions that changed.
    pub drifts: u64,
    /// Calls that exceeded the response timeout.
    pub call_timeouts: u64,
    /// Advertised input schemas that did not compile.
    pub bad_schemas: u64,
    /// Sessions ended early because `max_sessions` were held.
    pub evicted_sessions: u64,
    /// Requests given up as `no_response` because `max_pending` were open.
    pub evicted_pending: u64,
    /// Notification views forgotten early because a session held [`SEEN_CAP`] of them.
    pub evicted_views: u64,
}

/// Most notification and junk-line views one session remembers for pairing both sides'
/// views; a flood past it forgets the oldest (a notification may then be reported twice).
const SEEN_CAP: usize = 4096;

/// The initialize handshake of a session.
#[derive(Debug)]
struct Handshake {
    /// When the initialize request was first seen (monotonic).
    start_ns: u64,
    /// The protocol version the client asked for.
    requested: Option<String>,
    /// The answer: ok, and when it was reported.
    answered: Option<(bool, u64)>,
    /// Reported as a `handshake` event.
    done: bool,
}

struct State {
    session: Session,
    corr: Correlator,
    /// Views of notifications and junk lines, by (sender side, hash): (sender's, receiver's).
    seen: crate::FastMap<(Side, u64), ([u32; 2], u64)>,
    /// Tools the server advertised in this session's latest `tools/list`.
    tools: Option<Advertised>,
    /// Earlier calls and reads, to find repeats.
    repeats: Repeats,
    handshake: Option<Handshake>,
    /// `session_start` was reported.
    started: bool,
    /// Exchanges reported.
    exchanges: u64,
}

impl State {
    fn new(session: Session) -> Self {
        State {
            session,
            corr: Correlator::default(),
            seen: Default::default(),
            tools: None,
            repeats: Repeats::default(),
            handshake: None,
            started: false,
            exchanges: 0,
        }
    }

    /// Sessions worth reporting as such: not a single stateless connection.
    fn is_session(&self) -> bool {
        !matches!(self.session.key, SessionKey::Conn { .. })
    }
}

/// How a view of a message was seen: a hash of its bytes (what pairs the sender's view with
/// the receiver's) and its size on the wire.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    /// Hash of the message bytes.
    pub hash: u64,
    /// Bytes it took on the wire.
    pub bytes: u64,
}

/// Sessions and correlation for every MCP conversation on the host.
pub struct Tracker {
    cfg: TrackerConfig,
    states: crate::FastMap<SessionKey, State>,
    /// The sessions each process is an end of, for exits.
    by_pid: crate::FastMap<u32, crate::FastSet<SessionKey>>,
    links: Links,
    book: ToolBook,
    /// Processes, for naming ends.
    pub procs: ProcTable,
    /// What happened so far.
    pub stats: TrackerStats,
    now: u64,
    last_gc_ns: u64,
    /// Requests open at the last count, plus those seen since: when it passes the cap, the
    /// cap is enforced at once rather than at the next tick.
    pending_estimate: usize,
    /// The cap warnings (pending requests, sessions), held back under a flood.
    logs: [crate::bounded::LogLimit; 2],
}

/// Processes known at most; past it the least recently used of those in no session go.
pub const MAX_PROCESSES: usize = 65_536;
/// Process table clean-up, in ns between runs.
const PROCESS_GC_NS: u64 = 1_000_000_000;
/// A process in no session and unused this long is forgotten (unwatched peers never exit
/// here).
const PROCESS_IDLE_NS: u64 = 600_000_000_000;

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
            states: Default::default(),
            by_pid: Default::default(),
            links: Links::default(),
            book: ToolBook::default(),
            procs: ProcTable::default(),
            stats: TrackerStats::default(),
            now: 0,
            last_gc_ns: 0,
            pending_estimate: 0,
            logs: Default::default(),
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
        if !self.states.contains_key(&route.key) {
            let session = Session::new(route, now);
            for pid in session.ends.iter().filter_map(|e| e.pid) {
                self.by_pid
                    .entry(pid)
                    .or_default()
                    .insert(route.key.clone());
                // A pid seen before may be a new process now (an unwatched peer's exit is
                // never seen): check before naming a new session after it.
                if pid != route.viewer_pid {
                    self.procs.revalidate(host, pid);
                }
            }
            self.states.insert(route.key.clone(), State::new(session));
        }
        let st = self.states.get_mut(&route.key).expect("just made");
        st.session.last_ns = st.session.last_ns.max(now);
        let mut learned = [None, None];
        let end = &mut st.session.ends[route.viewer];
        end.observed = true;
        if end.pid.is_none() {
            end.pid = Some(route.viewer_pid);
            learned[0] = end.pid;
        }
        if let Some(peer) = route.peer_pid {
            let far = &mut st.session.ends[other(route.viewer)];
            if far.pid.is_none() {
                far.pid = Some(peer);
                learned[1] = far.pid;
            }
            // The far end may be a process that is not watched: name it from /proc.
            self.procs.note(host, peer, "");
        }
        for pid in learned.into_iter().flatten() {
            self.by_pid
                .entry(pid)
                .or_default()
                .insert(route.key.clone());
        }
        self.states.get_mut(&route.key).expect("just made")
    }

    /// One view of one message.
    pub fn observe(
        &mut self,
        host: &mut dyn Host,
        route: &Route,
        v: &View,
        msg: &Message,
        seen: Seen,
        out: &mut Vec<Signal>,
    ) {
        let Seen { hash, bytes } = seen;
        self.stats.views += 1;
        self.now = self.now.max(v.ts());
        let now = self.now;
        let (viewer, sender) = (route.viewer, route.sender);
        let viewer_is_sender = viewer == sender;
        let clock = self.cfg.clock;
        self.state(host, route, v.ts());
        let st = self.states.get_mut(&route.key).expect("just inserted");
        let s = &mut st.session;
        s.tls |= v.tls;

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
                // Pushed out by a flood of one id: they end now, unanswered.
                for p in st.corr.take_evicted() {
                    self.stats.evicted_pending += 1;
                    self.stats.exchanges += 1;
                    st.exchanges += 1;
                    let rec = build_exchange(&mut st.session, &self.procs, &p, &self.cfg);
                    out.push(Signal::Exchange(rec));
                }
                if matches!(outcome, Outcome::New | Outcome::DuplicateId) {
                    self.pending_estimate += 1;
                    let id = msg.id.clone().expect("requests have ids");
                    let derived = derive_request(
                        &mut self.book,
                        st.tools.as_ref(),
                        &mut st.repeats,
                        msg,
                        self.cfg.payloads,
                    );
                    self.stats.bad_schemas = self.book.bad_schemas;
                    if let Some(p) = st.corr.newest_mut(sender, &id) {
                        p.derived = derived;
                    }
                    if msg.method.as_deref() == Some("initialize") {
                        st.handshake = Some(Handshake {
                            start_ns: v.ts(),
                            requested: msg.protocol_version.clone(),
                            answered: None,
                            done: false,
                        });
                    }
                }
                if outcome == Outcome::DuplicateId {
                    self.stats.duplicate_ids += 1;
                    let what = What::DuplicateId {
                        id: msg.id.as_ref().map(|i| i.0.clone()).unwrap_or_default(),
                        method: msg.method.clone().unwrap_or_default(),
                    };
                    let e = Event::new(clock.wall_ns(v.ts()), what);
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
                            ..Event::new(
                                clock.wall_ns(v.ts()),
                                What::ErrorWithoutId {
                                    error_code: msg.error_code.unwrap_or(0),
                                },
                            )
                        }));
                    }
                } else {
                    let outcome = st.corr.response(
                        sender,
                        msg,
                        viewer_is_sender,
                        v.ts(),
                        hash,
                        bytes,
                        now,
                        route.http_status,
                    );
                    if outcome == Outcome::Late {
                        self.stats.late_views += 1;
                    }
                    if let (Some(tools), Outcome::New | Outcome::Orphan) = (&msg.tools, outcome) {
                        let server = server_identity(&st.session, sender, &self.procs);
                        let (adv, drift) = self.book.advertise(&server, tools);
                        st.tools = Some(adv);
                        if let Some(d) = drift {
                            self.stats.drifts += 1;
                            let what = What::ToolDrift {
                                server_name: server,
                                added: d.added,
                                removed: d.removed,
                                changed: d.changed,
                            };
                            let e = Event::new(clock.wall_ns(v.ts()), what);
                            out.push(Signal::Event(Event {
                                session: st.session.label(&self.procs),
                                ..e
                            }));
                        }
                    }
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
                if first
                    && msg.method.as_deref() == Some("notifications/initialized")
                    && let Some(h) = &mut st.handshake
                    && h.answered.is_some_and(|(ok, _)| ok)
                    && !h.done
                {
                    h.done = true;
                    let ms = ms(v.ts().saturating_sub(h.start_ns));
                    let requested = h.requested.clone();
                    push_started(st, &self.procs, &clock, v.ts(), out);
                    out.push(handshake_event(
                        st,
                        &self.procs,
                        &clock,
                        v.ts(),
                        HandshakeOutcome {
                            ok: true,
                            reason: None,
                            duration_ms: Some(ms),
                            requested: requested,
                        },
                    ));
                }
                if first {
                    self.stats.notifications += 1;
                    push_started(st, &self.procs, &clock, v.ts(), out);
                    let method = msg.method.clone().unwrap_or_default();
                    let s = &mut st.session;
                    let from = s.ends[sender].role.unwrap_or(Role::Unknown);
                    let c = s.side_with_role(Role::Client, &self.procs, sender);
                    out.push(Signal::Notification(signal::Notification {
                        ts_ns: clock.wall_ns(v.ts()),
                        transport: s.transport,
                        session: s.label(&self.procs),
                        method,
                        from,
                        tls: s.tls,
                        client: s.endpoint(c, &self.procs),
                        server: s.endpoint(other(c), &self.procs),
                        bytes,
                    }));
                }
            }
        }
        // Only the exchange this message belongs to can have become ready now; the others
        // wait for the tick (looking at all of them per message would cost a flood of open
        // requests dearly).
        let touched = match msg.kind {
            Kind::Request => msg.id.clone().map(|id| (sender, id)),
            Kind::Response | Kind::Error => msg.id.clone().map(|id| (other(sender), id)),
            Kind::Notification => msg.cancels.clone().map(|id| (sender, id)),
        };
        if let Some(t) = touched {
            self.emit_ready_for(&route.key, Some(&t), out);
        }
        if self.states.len() > self.cfg.max_sessions || self.pending_estimate > self.cfg.max_pending
        {
            self.enforce_caps(out);
        }
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
        self.procs.exited(pid);
        let keys: Vec<SessionKey> = self
            .by_pid
            .get(&pid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            let Some(st) = self.states.get_mut(&key) else {
                continue;
            };
            for end in st.session.ends.iter_mut() {
                if end.pid == Some(pid) {
                    end.exited_ns.get_or_insert(ts);
                }
            }
            st.corr.abandon_all(ts);
            self.emit_ready(&key, out);
        }
    }

    /// Time passes: emit what waited long enough, report hung calls and stalled handshakes,
    /// expire orphans and idle sessions.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Signal>) {
        self.now = self.now.max(now);
        let keys: Vec<SessionKey> = self.states.keys().cloned().collect();
        let clock = self.cfg.clock;
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
                    ..Event::new(
                        clock.wall_ns(o.ts),
                        What::OrphanResponse {
                            id: o.msg.id.map(|i| i.0).unwrap_or_default(),
                        },
                    )
                }));
            }
            // Hung calls: reported once when they pass the response timeout.
            let timeout = self.cfg.response_timeout_ns;
            let mut hung = Vec::new();
            for p in st.corr.open_iter_mut() {
                if p.response.is_none()
                    && !p.derived.timeout_reported
                    && now.saturating_sub(p.first_seen()) >= timeout
                {
                    p.derived.timeout_reported = true;
                    hung.push((
                        p.method.clone(),
                        p.target.clone(),
                        p.id.0.clone(),
                        now - p.first_seen(),
                    ));
                }
            }
            for (method, target, id, elapsed) in hung {
                self.stats.call_timeouts += 1;
                push_started(st, &self.procs, &clock, now, out);
                let server = server_side(&mut st.session, &self.procs);
                let what = What::CallTimeout {
                    method,
                    id,
                    elapsed_ms: ms(elapsed),
                    tool: match target {
                        Target::Tool(t) => Some(t),
                        _ => None,
                    },
                    server_name: server_identity(&st.session, server, &self.procs),
                };
                let mut e = Event::new(clock.wall_ns(now), what);
                e.session = st.session.label(&self.procs);
                out.push(Signal::Event(e));
            }
            // A handshake answered but never completed.
            if let Some(h) = &mut st.handshake
                && let Some((true, at)) = h.answered
                && !h.done
                && now.saturating_sub(at) >= self.cfg.handshake_timeout_ns
            {
                h.done = true;
                let mismatch = h.requested.is_some() && h.requested != st.session.protocol_version;
                let reason = if mismatch {
                    "version_mismatch"
                } else {
                    "no_initialized"
                };
                let requested = h.requested.clone();
                out.push(handshake_event(
                    st,
                    &self.procs,
                    &clock,
                    now,
                    HandshakeOutcome {
                        ok: false,
                        reason: Some(reason),
                        duration_ms: None,
                        requested: requested,
                    },
                ));
            }
            st.seen
                .retain(|_, (_, last)| now.saturating_sub(*last) < 10 * grace);
            if st.seen.len() > SEEN_CAP {
                let before = st.seen.len();
                let cutoff = nth_oldest(
                    st.seen.values().map(|(_, last)| *last),
                    before - SEEN_CAP / 2,
                );
                st.seen.retain(|_, (_, last)| *last > cutoff);
                self.stats.evicted_views += (before - st.seen.len()) as u64;
            }
            let exited = st.session.ends.iter().any(|e| e.exited_ns.is_some());
            let idle = now.saturating_sub(st.session.last_ns);
            let idle_limit = if st.is_session() {
                self.cfg.idle_ns
            } else {
                CONN_IDLE_NS
            };
            if st.corr.open_count() == 0
                && st.corr.orphan_count() == 0
                && (idle > idle_limit || (exited && idle > grace))
            {
                let reason = if exited { "process_exit" } else { "idle" };
                self.remove_session(&key, now, reason, out);
            }
        }
        self.enforce_caps(out);
        self.procs.set_now(self.now);
        if self.now.saturating_sub(self.last_gc_ns) >= PROCESS_GC_NS {
            self.last_gc_ns = self.now;
            self.collect_processes();
        }
    }

    /// Forget processes and links no session needs any more, within their caps.
    fn collect_processes(&mut self) {
        let by_pid = &self.by_pid;
        let named = |pid: u32| by_pid.contains_key(&pid);
        self.procs.collect(named, PROCESS_IDLE_NS, MAX_PROCESSES);
        let cap = self.links_cap();
        if self.links.len() > cap {
            self.links.retain_processes(named);
            if self.links.len() > cap {
                log::warn!(
                    "{} link entries held (cap {cap}): forgetting them all; links are learned again",
                    self.links.len()
                );
                self.links.clear();
            }
        }
    }

    fn links_cap(&self) -> usize {
        self.cfg.max_sessions.saturating_mul(4).max(1024)
    }

    /// The tracker's bounded tables: size, cap, evictions.
    pub fn tables(&self) -> Vec<TableStat> {
        let views: usize = self.states.values().map(|st| st.seen.len()).sum();
        vec![
            TableStat::new(
                "sessions",
                self.states.len(),
                self.cfg.max_sessions,
                self.stats.evicted_sessions,
            ),
            TableStat::new(
                "pending_requests",
                self.open_exchanges(),
                self.cfg.max_pending,
                self.stats.evicted_pending,
            ),
            TableStat::new(
                "notification_views",
                views,
                SEEN_CAP.saturating_mul(self.cfg.max_sessions),
                self.stats.evicted_views,
            ),
            TableStat::new(
                "processes",
                self.procs.len(),
                MAX_PROCESSES,
                self.procs.evicted,
            ),
            TableStat::new(
                "links",
                self.links.len(),
                self.links_cap(),
                self.links.evicted,
            ),
            self.book.table(),
        ]
    }

    /// Hold memory to the configured caps. Evicting down to 90% of a cap, not to the cap,
    /// keeps a flood from paying for a sort on every tick.
    fn enforce_caps(&mut self, out: &mut Vec<Signal>) {
        let now = self.now;
        let open: usize = self.open_exchanges();
        self.pending_estimate = open.min(self.cfg.max_pending * 9 / 10);
        if open > self.cfg.max_pending {
            let excess = open - self.cfg.max_pending * 9 / 10;
            let firsts = self
                .states
                .values()
                .flat_map(|st| st.corr.open_iter())
                .filter(|p| p.abandoned_ns.is_none())
                .map(|p| p.first_seen());
            let cutoff = nth_oldest(firsts, excess);
            // Abandoned a settle ago: `emit_ready` ends them now, as `no_response`.
            let at = now.saturating_sub(self.cfg.settle_ns);
            let mut touched = Vec::new();
            for (key, st) in self.states.iter_mut() {
                let mut n = 0;
                for p in st.corr.open_iter_mut() {
                    if p.abandoned_ns.is_none() && p.first_seen() <= cutoff {
                        p.abandoned_ns = Some(at);
                        n += 1;
                    }
                }
                if n > 0 {
                    self.stats.evicted_pending += n;
                    touched.push(key.clone());
                }
            }
            if let Some(held) = self.logs[0].allow() {
                log::warn!(
                    "{} requests open (cap {}, --max-pending): the oldest end as no_response{}",
                    open,
                    self.cfg.max_pending,
                    crate::bounded::held_back(held)
                );
            }
            for key in touched {
                self.emit_ready(&key, out);
            }
        }
        let victims = least_recent(
            self.states
                .iter()
                .map(|(k, st)| (st.session.last_ns, k.clone())),
            self.cfg.max_sessions,
        );
        if !victims.is_empty() {
            if let Some(held) = self.logs[1].allow() {
                log::warn!(
                    "{} sessions held (cap {}, --max-sessions): ending the {} least recently \
                     active{}",
                    self.states.len(),
                    self.cfg.max_sessions,
                    victims.len(),
                    crate::bounded::held_back(held)
                );
            }
            let settle = self.cfg.settle_ns;
            for key in victims {
                if let Some(st) = self.states.get_mut(&key) {
                    st.corr.abandon_all(now.saturating_sub(settle));
                }
                self.emit_ready(&key, out);
                // Answers still waiting for their other view go with the session: counted.
                if let Some(st) = self.states.get(&key) {
                    self.stats.evicted_pending += st.corr.open_count() as u64;
                }
                self.remove_session(&key, now, "evicted", out);
                self.stats.evicted_sessions += 1;
            }
        }
    }

    /// Forget a session, reporting its end.
    fn remove_session(
        &mut self,
        key: &SessionKey,
        now: u64,
        reason: &'static str,
        out: &mut Vec<Signal>,
    ) {
        let Some(mut st) = self.states.remove(key) else {
            return;
        };
        // A handshake answered but never completed before the session ended.
        if let Some(h) = &mut st.handshake
            && let Some((true, _)) = h.answered
            && !h.done
        {
            h.done = true;
            let mismatch = h.requested.is_some() && h.requested != st.session.protocol_version;
            let reason = if mismatch {
                "version_mismatch"
            } else {
                "no_initialized"
            };
            let requested = h.requested.clone();
            let clock = self.cfg.clock;
            out.push(handshake_event(
                &mut st,
                &self.procs,
                &clock,
                now,
                HandshakeOutcome {
                    ok: false,
                    reason: Some(reason),
                    duration_ms: None,
                    requested,
                },
            ));
        }
        if st.started {
            let s = &mut st.session;
            let c = s.side_with_role(Role::Client, &self.procs, 0);
            let end = s
                .last_ns
                .max(s.ends.iter().filter_map(|e| e.exited_ns).max().unwrap_or(0));
            let what = What::SessionEnd(signal::SessionEnd {
                transport: s.transport,
                reason,
                duration_ms: ms(end.saturating_sub(s.started_ns)),
                exchanges: st.exchanges,
                client_observed: s.ends[c].observed,
                server_observed: s.ends[other(c)].observed,
                client: s.endpoint(c, &self.procs),
                server: s.endpoint(other(c), &self.procs),
                protocol_version: s.protocol_version.clone(),
            });
            let mut e = Event::new(self.cfg.clock.wall_ns(end.min(now.max(end))), what);
            e.session = s.label(&self.procs);
            out.push(Signal::Event(e));
        }
        let ends = [st.session.ends[0].pid, st.session.ends[1].pid];
        for pid in ends.into_iter().flatten() {
            let Some(set) = self.by_pid.get_mut(&pid) else {
                continue;
            };
            set.remove(key);
            if set.is_empty() {
                self.by_pid.remove(&pid);
                self.links.forget_process(pid);
            }
        }
    }

    /// The client ended an HTTP session (DELETE): its open calls end, then the session.
    pub fn end_session(&mut self, key: &SessionKey, ts: u64, out: &mut Vec<Signal>) {
        self.now = self.now.max(ts);
        if let Some(st) = self.states.get_mut(key) {
            st.corr.abandon_all(ts);
            st.session.last_ns = st.session.last_ns.max(ts);
        }
        // Answers already on their way still get their settle time.
        let settle = self.cfg.settle_ns;
        let saved = self.now;
        self.now = ts + settle;
        self.emit_ready(key, out);
        self.now = saved.max(self.now);
        if self
            .states
            .get(key)
            .is_some_and(|st| st.corr.open_count() == 0)
        {
            self.remove_session(key, ts, "deleted", out);
        }
    }

    /// Open tools/call requests by (tool, server), for the in-flight gauge.
    pub fn in_flight(&self) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for st in self.states.values() {
            for p in st.corr.open_iter() {
                if let (Target::Tool(t), None) = (&p.target, &p.response) {
                    let server = st
                        .session
                        .ends
                        .iter()
                        .position(|e| e.role == Some(Role::Server))
                        .map(|side| server_identity(&st.session, side, &self.procs))
                        .unwrap_or_else(|| "unknown".into());
                    *out.entry((t.clone(), server)).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// Reported sessions still active, by (transport, server).
    pub fn active_sessions(&self) -> BTreeMap<(&'static str, String), u64> {
        let mut out = BTreeMap::new();
        for st in self.states.values().filter(|st| st.started) {
            let server = st
                .session
                .ends
                .iter()
                .position(|e| e.role == Some(Role::Server))
                .map(|side| server_identity(&st.session, side, &self.procs))
                .unwrap_or_else(|| "unknown".into());
            *out.entry((st.session.transport, server)).or_insert(0) += 1;
        }
        out
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
        self.emit_ready_for(key, None, out);
    }

    /// Report the exchanges of a session that are done: all of them, or only those of one
    /// (requester, id).
    fn emit_ready_for(
        &mut self,
        key: &SessionKey,
        only: Option<&(session::Side, message::Id)>,
        out: &mut Vec<Signal>,
    ) {
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
                return now.saturating_sub(p.first_seen())
                    >= cfg.response_timeout_ns.saturating_mul(GIVE_UP_FACTOR);
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
        let done = st.corr.take_ready(only, ready);
        self.stats.missing_twins += missing;
        for p in done {
            let rec = build_exchange(&mut st.session, &self.procs, &p, cfg);
            self.stats.exchanges += 1;
            st.exchanges += 1;
            push_started(st, &self.procs, &cfg.clock, p.first_seen(), out);
            if rec.method == "initialize"
                && let Some(h) = &mut st.handshake
                && h.answered.is_none()
            {
                let ok = rec.status == Status::Ok;
                h.answered = Some((ok, now));
                if !ok {
                    h.done = true;
                    let reason = match rec.status {
                        Status::NoResponse => "no_response",
                        Status::Cancelled => "cancelled",
                        _ => "error",
                    };
                    let requested = h.requested.clone();
                    let ms = rec.duration_ms;
                    out.push(Signal::Exchange(rec));
                    out.push(handshake_event(
                        st,
                        &self.procs,
                        &cfg.clock,
                        now,
                        HandshakeOutcome {
                            ok: false,
                            reason: Some(reason),
                            duration_ms: ms,
                            requested: requested,
                        },
                    ));
                    continue;
                }
            }
            out.push(Signal::Exchange(rec));
        }
    }
}

/// What is worked out about a request when it is first seen.
fn derive_request(
    book: &mut ToolBook,
    tools: Option<&Advertised>,
    repeats: &mut Repeats,
    msg: &Message,
    payloads: bool,
) -> Derived {
    let method = msg.method.as_deref().unwrap_or("");
    let id = msg.id.as_ref().map(|i| i.0.as_str()).unwrap_or("");
    let mut d = Derived {
        traceparent: msg.traceparent.clone(),
        tracestate: msg.tracestate.clone(),
        ..Derived::default()
    };
    match &msg.target {
        Target::Tool(tool) => {
            d.check = book.check(tools, tool, msg.arguments.as_deref());
            d.repeat_of =
                repeats.seen(derive::call_key(method, tool, msg.arguments.as_deref()), id);
        }
        Target::Resource(uri) => {
            d.repeat_of = repeats.seen(derive::call_key(method, uri, None), id);
        }
        Target::Prompt(name) => {
            d.repeat_of =
                repeats.seen(derive::call_key(method, name, msg.arguments.as_deref()), id);
        }
        Target::None => {}
    }
    if payloads {
        d.arguments = msg.arguments.as_ref().map(|a| {
            if a.len() <= message::PAYLOAD_LIMIT {
                a.clone()
            } else {
                format!("{{\"mcptap.truncated\":{}}}", a.len())
            }
        });
    }
    d
}

/// The name a server goes by in outputs and metrics: its `serverInfo.name`, else its
/// process's comm.
fn server_identity(s: &Session, side: Side, procs: &ProcTable) -> String {
    let end = &s.ends[side];
    if let Some(info) = &end.info
        && !info.name.is_empty()
    {
        return info.name.clone();
    }
    end.pid
        .and_then(|p| procs.get(p))
        .map(|p| p.comm.clone())
        .unwrap_or_else(|| "unknown".into())
}

/// The side playing the server.
fn server_side(s: &mut Session, procs: &ProcTable) -> Side {
    other(s.side_with_role(Role::Client, procs, 0))
}

/// Report `session_start` before a session's first record.
fn push_started(
    st: &mut State,
    procs: &ProcTable,
    clock: &ClockAnchor,
    ts: u64,
    out: &mut Vec<Signal>,
) {
    if st.started || !st.is_session() {
        return;
    }
    st.started = true;
    let s = &mut st.session;
    let c = s.side_with_role(Role::Client, procs, 0);
    let what = What::SessionStart {
        transport: s.transport,
        client: s.endpoint(c, procs),
        server: s.endpoint(other(c), procs),
    };
    let mut e = Event::new(clock.wall_ns(s.started_ns.min(ts)), what);
    e.session = s.label(procs);
    out.push(Signal::Event(e));
}

/// How a handshake ended, for [`handshake_event`].
struct HandshakeOutcome {
    ok: bool,
    reason: Option<&'static str>,
    duration_ms: Option<f64>,
    requested: Option<String>,
}

/// A `handshake` event: initialize → result → notifications/initialized, or how it failed.
fn handshake_event(
    st: &mut State,
    procs: &ProcTable,
    clock: &ClockAnchor,
    ts: u64,
    h: HandshakeOutcome,
) -> Signal {
    let s = &mut st.session;
    let c = s.side_with_role(Role::Client, procs, 0);
    let what = What::Handshake(signal::Handshake {
        status: if h.ok { "success" } else { "failure" },
        transport: s.transport,
        client: s.endpoint(c, procs),
        server: s.endpoint(other(c), procs),
        reason: h.reason,
        duration_ms: h.duration_ms,
        requested_version: h.requested,
        protocol_version: s.protocol_version.clone(),
    });
    let mut e = Event::new(clock.wall_ns(ts), what);
    e.session = s.label(procs);
    Signal::Event(e)
}

fn build_exchange(
    s: &mut Session,
    procs: &ProcTable,
    p: &Pending,
    cfg: &TrackerConfig,
) -> signal::Exchange {
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
        Target::Resource(u) if cfg.full_resource_uris => (None, Some(u.clone()), None),
        Target::Resource(u) => (None, Some(privacy::trim_uri(u).into_owned()), None),
        Target::Prompt(n) => (None, None, Some(n.clone())),
        Target::None => (None, None, None),
    };
    let (server_address, server_port) = split_addr(p.addrs.as_ref().map(|a| &a.server));
    let (client_address, client_port) = split_addr(p.addrs.as_ref().map(|a| &a.client));
    let error_code = p
        .response
        .as_ref()
        .filter(|r| r.kind == Kind::Error)
        .and_then(|r| r.error_code);
    let http_status = p.response.as_ref().and_then(|r| r.http_status);
    let d = &p.derived;
    // Start times per side, by role (the requester sent the request).
    let (client_start, server_start) = if requester == Role::Client {
        (p.req.sent, p.req.received)
    } else {
        (p.req.received, p.req.sent)
    };
    signal::Exchange {
        ts_ns: cfg.clock.wall_ns(p.first_seen()),
        transport: s.transport,
        session: s.label(procs),
        method: p.method.clone(),
        id: p.id.0.clone(),
        tool,
        resource_uri,
        prompt,
        status,
        error_code,
        http_status,
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
        tls: s.tls,
        error_class: derive::error_class(
            status,
            error_code,
            http_status,
            d.check.schema_valid,
            d.check.unknown_tool,
        ),
        schema_valid: d.check.schema_valid,
        schema_error: d.check.schema_error.clone(),
        unknown_tool: d.check.unknown_tool,
        repeat_of: d.repeat_of.clone(),
        result_tokens_est: p
            .response
            .as_ref()
            .and_then(|r| r.text_bytes)
            .map(derive::tokens_estimate),
        content_bytes: p.response.as_ref().and_then(|r| r.contents_bytes),
        arguments: d.arguments.as_deref().map(privacy::redact),
        result: p
            .response
            .as_ref()
            .and_then(|r| r.result.as_deref())
            .map(privacy::redact),
        traceparent: d.traceparent.clone(),
        tracestate: d.tracestate.clone(),
        client_start_ns: client_start.map(|t| cfg.clock.wall_ns(t)),
        server_start_ns: server_start.map(|t| cfg.clock.wall_ns(t)),
    }
}

fn split_addr(a: Option<&session::Addr>) -> (Option<String>, Option<u16>) {
    match a {
        Some(session::Addr::Ip(ip, port)) => (Some(ip.to_string()), Some(*port)),
        Some(session::Addr::Unix(path)) => (Some(path.clone()), None),
        None => (None, None),
    }
}
