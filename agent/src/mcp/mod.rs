//! Stage 5, MCP: messages, sessions and correlation, for every MCP conversation on the host.
//!
//! [`transport`] frames each stream and routes each message to its session; [`message`] holds
//! the facts of one JSON-RPC message; [`session`] says who the two ends are and which is
//! client and which server; [`correlate`] pairs requests with responses and the sender's view
//! of each message with the receiver's; [`derive`](mod@derive) works out what MCP users ask for beyond
//! the messages (schema checks, unknown tools, repeats, drift); [`privacy`] decides what
//! leaves the host. The [`Tracker`] ties them together: it takes what the bindings deliver
//! and turns finished exchanges, notifications and session events into [`Signal`]s.
//!
//! [`Signal`]: crate::signal::Signal

pub mod correlate;
pub mod derive;
pub mod message;
pub mod privacy;
pub mod session;
pub mod transport;

mod inspect;
mod observe;
mod report;
mod timers;

use std::collections::BTreeMap;

use crate::bounded::TableStat;
use crate::signal::process::Processes;
use crate::signal::{Ctx, Role, Signal};
use correlate::Correlator;
use derive::{Advertised, Repeats, ToolBook};
use message::Message;
use session::Session;
use transport::route::{self, Route, SessionKey, Side, View, other};
use transport::{Deliver, Seen};

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
    /// Most sessions (and stateless connections) held; past it the least recently active
    /// are ended (`session_end` reason `evicted`) and counted.
    pub max_sessions: usize,
    /// Most requests awaiting an answer, over all sessions; past it the oldest end as
    /// `no_response` and are counted.
    pub max_pending: usize,
    /// The security rules to apply, and the hasher of their matches (`None`: none).
    pub scanner: Option<crate::detect::Scanner>,
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
            max_sessions: 20_000,
            max_pending: 50_000,
            scanner: None,
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
    /// Notification views forgotten early because a session held `SEEN_CAP` of them.
    pub evicted_views: u64,
    /// Ended HTTP sessions forgotten before the requests that outlived them ended.
    pub evicted_ended: u64,
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
    /// When `notifications/initialized` was seen, if it came before the initialize exchange
    /// was reported (which waits for views that may still be in flight).
    initialized_ns: Option<u64>,
    /// Reported as a `handshake` event.
    done: bool,
}

/// What the tracker keeps per session.
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
    /// Of them, those that failed (errors, tool errors, no response); u32 keeps the state
    /// in its size class.
    errors: u32,
    /// HTTP requests that ended before the initialize answer named the server (legacy SSE
    /// answers on the event stream, after the POST): held for its name.
    // Boxed: 8 bytes in every session's state rather than a Vec's 24, for what few hold.
    #[allow(clippy::box_collection)]
    held_http: Option<Box<Vec<Signal>>>,
    /// Its sides are the other way round from its key's order (it was renamed).
    flip: bool,
    /// What the security rules remember of it (made when a rule first needs it).
    watch: Option<Box<inspect::SessionWatch>>,
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
            errors: 0,
            held_http: None,
            flip: false,
            watch: None,
        }
    }

    /// One more exchange of this session reported, ending as `status`.
    fn count_exchange(&mut self, status: crate::signal::Status) {
        use crate::signal::Status;
        self.exchanges += 1;
        if matches!(
            status,
            Status::Error | Status::ToolError | Status::NoResponse
        ) {
            self.errors = self.errors.saturating_add(1);
        }
    }

    /// An initialize is on its way and has not named the server yet.
    fn naming_server(&self) -> bool {
        self.handshake
            .as_ref()
            .is_some_and(|h| h.answered.is_none())
            && self
                .session
                .ends
                .iter()
                .all(|e| e.role != Some(Role::Server) || e.info.is_none())
    }

    /// The HTTP requests held for the server's name go out, named as the session now knows
    /// its ends.
    fn release_http(&mut self, procs: &Processes, out: &mut Vec<Signal>) {
        let Some(held) = self.held_http.take() else {
            return;
        };
        let server = self.session.side_with_role(Role::Server, procs, 0);
        let (client, server) = (
            self.session.endpoint(other(server), procs),
            self.session.endpoint(server, procs),
        );
        for mut sig in *held {
            if let Signal::Http(h) = &mut sig {
                h.server = server.clone();
                h.client = client.clone();
            }
            out.push(sig);
        }
    }

    /// Sessions worth reporting as such: not a single stateless connection.
    fn is_session(&self) -> bool {
        !matches!(self.session.key, SessionKey::Conn { .. })
    }

    /// Count one view of a notification or a stray frame; true when it is the first view of
    /// it from its side (the other side's view of the same bytes is not reported again).
    fn first_view(&mut self, sender: Side, viewer_is_sender: bool, hash: u64, now: u64) -> bool {
        let slot = if viewer_is_sender { 0 } else { 1 };
        let entry = self.seen.entry((sender, hash)).or_insert(([0, 0], now));
        entry.0[slot] += 1;
        entry.1 = now;
        entry.0[slot] > entry.0[1 - slot]
    }
}

/// Sessions and correlation for every MCP conversation on the host.
pub struct Tracker {
    cfg: TrackerConfig,
    /// Boxed: the table holds a key and a pointer per bucket, not a whole state, so its
    /// spare buckets and its copies while it grows cost little.
    states: crate::FastMap<SessionKey, Box<State>>,
    /// The sessions each process is an end of, for exits.
    by_pid: crate::FastMap<u32, crate::FastSet<SessionKey>>,
    book: ToolBook,
    /// What happened so far.
    pub stats: TrackerStats,
    now: u64,
    /// Requests open at the last count, plus those seen since: when it passes the cap, the
    /// cap is enforced at once rather than at the next tick.
    pending_estimate: usize,
    /// The cap warnings (pending requests, sessions), held back under a flood.
    logs: [crate::bounded::LogLimit; 2],
    /// Processes that left their last session since the last [`Tracker::take_released`].
    released: Vec<u32>,
    /// HTTP sessions that ended, for the requests that outlive them (a GET stream, the
    /// DELETE): who their ends were. The [`ENDED_CAP`] latest.
    ended: crate::FastMap<SessionKey, Session>,
    ended_order: std::collections::VecDeque<SessionKey>,
    /// The security rules' memory.
    inspect: inspect::Inspector,
}

/// Ended HTTP sessions remembered for the requests that outlive them.
const ENDED_CAP: usize = 1024;
/// HTTP requests one session holds for its server's name; past it they go out unnamed.
const HELD_HTTP_CAP: usize = 64;

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
            states: Default::default(),
            by_pid: Default::default(),
            book: ToolBook::default(),
            stats: TrackerStats::default(),
            now: 0,
            pending_estimate: 0,
            logs: Default::default(),
            released: Vec::new(),
            ended: Default::default(),
            ended_order: Default::default(),
            inspect: inspect::Inspector::new(cfg.scanner.clone()),
            cfg,
        }
    }

    /// Remember an ended HTTP session's ends for the requests still open on its
    /// connections; the oldest go past [`ENDED_CAP`] (counted).
    fn bury(&mut self, key: SessionKey, session: Session) {
        if self.ended.insert(key.clone(), session).is_none() {
            self.ended_order.push_back(key);
        }
        while self.ended.len() > ENDED_CAP {
            let Some(old) = self.ended_order.pop_front() else {
                break;
            };
            if self.ended.remove(&old).is_some() {
                self.stats.evicted_ended += 1;
            }
        }
    }

    /// The state of a route's session, made if there is none; what the route says of its
    /// ends (the viewer, the peer) is learned.
    fn state(&mut self, cx: &mut Ctx<'_>, route: &Route, now: u64) -> &mut State {
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
                    cx.procs.revalidate(cx.host, pid);
                }
            }
            self.states
                .insert(route.key.clone(), Box::new(State::new(session)));
        }
        // One lookup for the rest: the pid index is a field of its own.
        let by_pid = &mut self.by_pid;
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
            cx.procs.note(cx.host, peer, "");
        }
        for pid in learned.into_iter().flatten() {
            by_pid.entry(pid).or_default().insert(route.key.clone());
        }
        st
    }

    /// The route as its session's sides are: a renamed session may have them the other way
    /// round from its new key's order.
    fn oriented<'r>(&self, route: &'r Route) -> std::borrow::Cow<'r, Route> {
        match self.states.get(&route.key) {
            Some(st) if st.flip => std::borrow::Cow::Owned(route.flipped()),
            _ => std::borrow::Cow::Borrowed(route),
        }
    }

    /// A stdio session filed under a provisional key while its far end was unknown moves to
    /// its real key, so that its identity does not depend on when that end was named. (If
    /// the real key already has a session, the two stay apart.)
    fn rename(&mut self, old: &SessionKey, new: &SessionKey) {
        if self.states.contains_key(new) {
            return;
        }
        let (SessionKey::Procs { lo, hi }, SessionKey::Procs { lo: n_lo, hi: n_hi }) = (old, new)
        else {
            return;
        };
        let Some(mut st) = self.states.remove(old) else {
            return;
        };
        let known = if *lo != 0 { *lo } else { *hi };
        let peer = if *n_lo == known { *n_hi } else { *n_lo };
        // The known process keeps its side; the route's sides follow the new key.
        let inside = route::side_in(old, known) ^ usize::from(st.flip);
        st.flip = route::side_in(new, known) != inside;
        st.session.ends[other(inside)].pid.get_or_insert(peer);
        st.session.rename(new.clone());
        for pid in [known, peer] {
            let set = self.by_pid.entry(pid).or_default();
            set.remove(old);
            set.insert(new.clone());
        }
        self.states.insert(new.clone(), st);
    }

    /// Whether `pid` is an end of a session held.
    pub fn names(&self, pid: u32) -> bool {
        self.by_pid.contains_key(&pid)
    }

    /// Processes that left their last session since the last call: what was learned of
    /// their links can go.
    pub fn take_released(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.released)
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
            self.book.table(),
            TableStat::new(
                "ended_sessions",
                self.ended.len(),
                ENDED_CAP,
                self.stats.evicted_ended,
            ),
        ]
        .into_iter()
        .chain(self.inspect.tables())
        .collect()
    }

    /// Security findings made so far.
    pub fn findings(&self) -> u64 {
        self.inspect.stats.findings
    }

    /// The server each open session is with, for the gauges.
    fn server_of(st: &State, procs: &Processes) -> String {
        st.session
            .ends
            .iter()
            .position(|e| e.role == Some(Role::Server))
            .map(|side| report::server_identity(&st.session, side, procs))
            .unwrap_or_else(|| "unknown".into())
    }

    /// Open tools/call requests by (tool, server), for the in-flight gauge.
    pub fn in_flight(&self, procs: &Processes) -> BTreeMap<(String, String), u64> {
        let mut out = BTreeMap::new();
        for st in self.states.values() {
            for p in st.corr.open_iter() {
                if let (message::Target::Tool(t), None) = (&p.target, &p.response) {
                    let server = Self::server_of(st, procs);
                    *out.entry((t.to_string(), server)).or_insert(0) += 1;
                }
            }
        }
        out
    }

    /// Reported sessions still active, by (transport, server).
    pub fn active_sessions(&self, procs: &Processes) -> BTreeMap<(&'static str, String), u64> {
        let mut out = BTreeMap::new();
        for st in self.states.values().filter(|st| st.started) {
            let server = Self::server_of(st, procs);
            *out.entry((st.session.transport.as_str(), server))
                .or_insert(0) += 1;
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
}

impl Deliver for Tracker {
    fn message(
        &mut self,
        cx: &mut Ctx<'_>,
        route: &Route,
        v: &View,
        msg: &Message<'_>,
        seen: Seen,
    ) {
        let route = self.oriented(route);
        self.observe(cx, &route, v, msg, seen);
    }

    fn stray(&mut self, cx: &mut Ctx<'_>, route: &Route, v: &View, hash: u64) -> bool {
        let route = self.oriented(route);
        let st = self.state(cx, &route, v.ts());
        st.first_view(route.sender, route.viewer == route.sender, hash, v.ts())
    }

    fn session_label(&mut self, cx: &mut Ctx<'_>, route: &Route, ts: u64) -> Option<String> {
        let route = self.oriented(route);
        self.state(cx, &route, ts).session.label(cx.procs)
    }

    fn session_deleted(&mut self, cx: &mut Ctx<'_>, key: &SessionKey, ts: u64) {
        self.end_session(key, ts, cx);
    }

    fn session_renamed(&mut self, old: &SessionKey, new: &SessionKey) {
        self.rename(old, new);
    }

    fn http_request(&mut self, cx: &mut Ctx<'_>, route: &Route, seen: &transport::HttpSeen<'_>) {
        let route = self.oriented(route);
        let mut unknown;
        let known = self.states.contains_key(&route.key) || self.ended.contains_key(&route.key);
        let session = match self.states.get_mut(&route.key) {
            Some(st) if st.naming_server() => {
                let s = &mut st.session;
                if let Some(sig) = report::http_request(s, cx.procs, cx.clock, &route, (seen, true))
                {
                    let held = st.held_http.get_or_insert_default();
                    if held.len() < HELD_HTTP_CAP {
                        held.push(sig);
                    } else {
                        cx.out.push(sig);
                    }
                }
                return;
            }
            Some(st) => &mut st.session,
            None if known => self.ended.get_mut(&route.key).expect("known"),
            None => {
                // No message of it was seen (a refused GET, a DELETE after the end): its
                // ends as this view names them, and no session is made for it.
                unknown = Session::new(&route, seen.start_ns);
                unknown.ends[route.viewer].pid = Some(route.viewer_pid);
                unknown.ends[other(route.viewer)].pid = route.peer_pid;
                &mut unknown
            }
        };
        if let Some(s) = report::http_request(session, cx.procs, cx.clock, &route, (seen, known)) {
            cx.out.push(s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::size_of;

    /// What an idle session costs is mostly these: the table's bucket (key and box) and the
    /// boxed state. A field that makes them bigger should be boxed or made lazy instead.
    #[test]
    fn per_session_entries_stay_small() {
        assert!(size_of::<(SessionKey, Box<State>)>() <= 64);
        // 736 until the lazy box of HTTP requests held for the server's name (8 bytes), 744
        // until the lazy box of what the security rules remember (8 more).
        assert!(size_of::<State>() <= 752);
        assert!(size_of::<Correlator>() <= 240);
        assert!(size_of::<Repeats>() <= 32);
    }
}
