//! What time and endings do to sessions: responses that never came, hung calls, stalled
//! handshakes, idle and exited sessions, HTTP sessions deleted by their client, and the caps
//! on sessions and open requests.

use super::message::Target;
use super::report::{self, push_started, server_identity, server_side};
use super::transport::route::{SessionKey, other};
use super::{CONN_IDLE_NS, SEEN_CAP, State, Tracker, ms};
use crate::bounded::{held_back, least_recent, nth_oldest};
use crate::capture::recording::ClockAnchor;
use crate::signal::process::Processes;
use crate::signal::{self, Ctx, Role, Signal, What};

impl Tracker {
    /// A watched process exited: open calls on its sessions end as `no_response` once the
    /// views already in flight have had their chance.
    pub fn process_exit(&mut self, pid: u32, ts: u64, cx: &mut Ctx<'_>) {
        self.now = self.now.max(ts);
        cx.procs.exited(pid);
        self.inspect.process_exit(pid);
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
            self.emit_ready(&key, cx);
        }
    }

    /// Time passes: emit what waited long enough, report hung calls and stalled handshakes,
    /// expire orphans and idle sessions.
    pub fn tick(&mut self, now: u64, cx: &mut Ctx<'_>) {
        self.now = self.now.max(now);
        let keys: Vec<SessionKey> = self.states.keys().cloned().collect();
        for key in keys {
            self.emit_ready(&key, cx);
            let st = self.states.get_mut(&key).expect("listed");
            self.stats.orphan_responses += expire_orphans(st, cx, self.now, self.cfg.twin_grace_ns);
            self.hung_calls(&key, cx);
            let st = self.states.get_mut(&key).expect("listed");
            let timeout = self.cfg.handshake_timeout_ns;
            if st.handshake.as_ref().is_some_and(|h| {
                h.answered
                    .is_some_and(|(_, at)| self.now.saturating_sub(at) >= timeout)
            }) && let Some(e) = report::unfinished_handshake(st, cx.procs, cx.clock, self.now)
            {
                cx.out.push(e);
            }
            self.stats.evicted_views += forget_views(st, self.now, self.cfg.twin_grace_ns);
            st.corr.release_spare();
            if let Some(reason) = self.ended(&key) {
                self.remove_session(&key, self.now, reason, cx);
            }
        }
        self.enforce_caps(cx);
    }

    /// Calls past the response timeout are reported once, as `call_timeout` events.
    fn hung_calls(&mut self, key: &SessionKey, cx: &mut Ctx<'_>) {
        let (now, timeout) = (self.now, self.cfg.response_timeout_ns);
        let st = self.states.get_mut(key).expect("listed");
        let mut hung = Vec::new();
        for p in st.corr.open_iter_mut() {
            if p.response.is_none()
                && !p.derived.timeout_reported
                && now.saturating_sub(p.first_seen()) >= timeout
            {
                p.derived.timeout_reported = true;
                let elapsed = now - p.first_seen();
                hung.push((
                    p.method.clone(),
                    p.target.clone(),
                    String::from(&*p.id.0),
                    elapsed,
                ));
            }
        }
        for (method, target, id, elapsed) in hung {
            self.stats.call_timeouts += 1;
            push_started(st, cx.procs, cx.clock, now, cx.out);
            let server = server_side(&mut st.session, cx.procs);
            let what = What::CallTimeout {
                method,
                id,
                elapsed_ms: ms(elapsed),
                tool: match target {
                    Target::Tool(t) => Some(t.into_owned()),
                    _ => None,
                },
                server_name: server_identity(&st.session, server, cx.procs),
            };
            cx.out
                .push(report::session_event(st, cx.procs, cx.clock, now, what));
        }
    }

    /// Why a session is over, if it is: nothing open, and idle too long, or a side exited.
    fn ended(&self, key: &SessionKey) -> Option<&'static str> {
        let st = self.states.get(key)?;
        let grace = self.cfg.twin_grace_ns;
        let exited = st.session.ends.iter().any(|e| e.exited_ns.is_some());
        let idle = self.now.saturating_sub(st.session.last_ns);
        let idle_limit = if st.is_session() {
            self.cfg.idle_ns
        } else {
            CONN_IDLE_NS
        };
        let open = st.corr.open_count() > 0 || st.corr.orphan_count() > 0;
        if open || !(idle > idle_limit || (exited && idle > grace)) {
            return None;
        }
        Some(if exited { "process_exit" } else { "idle" })
    }

    /// Hold memory to the configured caps. Evicting down to 90% of a cap, not to the cap,
    /// keeps a flood from paying for a sort on every tick.
    pub(super) fn enforce_caps(&mut self, cx: &mut Ctx<'_>) {
        let open: usize = self.open_exchanges();
        self.pending_estimate = open.min(self.cfg.max_pending * 9 / 10);
        if open > self.cfg.max_pending {
            self.cap_pending(open, cx);
        }
        self.cap_sessions(cx);
    }

    /// Too many requests open: the oldest end as `no_response`.
    fn cap_pending(&mut self, open: usize, cx: &mut Ctx<'_>) {
        let excess = open - self.cfg.max_pending * 9 / 10;
        let firsts = self
            .states
            .values()
            .flat_map(|st| st.corr.open_iter())
            .filter(|p| p.abandoned_ns.is_none())
            .map(|p| p.first_seen());
        let cutoff = nth_oldest(firsts, excess);
        // Abandoned a settle ago: `emit_ready` ends them now, as `no_response`.
        let at = self.now.saturating_sub(self.cfg.settle_ns);
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
                held_back(held)
            );
        }
        for key in touched {
            self.emit_ready(&key, cx);
        }
    }

    /// Too many sessions: the least recently active end (`evicted`).
    fn cap_sessions(&mut self, cx: &mut Ctx<'_>) {
        let victims = least_recent(
            self.states
                .iter()
                .map(|(k, st)| (st.session.last_ns, k.clone())),
            self.cfg.max_sessions,
        );
        if victims.is_empty() {
            return;
        }
        if let Some(held) = self.logs[1].allow() {
            log::warn!(
                "{} sessions held (cap {}, --max-sessions): ending the {} least recently \
                 active{}",
                self.states.len(),
                self.cfg.max_sessions,
                victims.len(),
                held_back(held)
            );
        }
        let (now, settle) = (self.now, self.cfg.settle_ns);
        for key in victims {
            if let Some(st) = self.states.get_mut(&key) {
                st.corr.abandon_all(now.saturating_sub(settle));
            }
            self.emit_ready(&key, cx);
            // Answers still waiting for their other view go with the session: counted.
            if let Some(st) = self.states.get(&key) {
                self.stats.evicted_pending += st.corr.open_count() as u64;
            }
            self.remove_session(&key, now, "evicted", cx);
            self.stats.evicted_sessions += 1;
        }
    }

    /// Forget a session, reporting its end.
    fn remove_session(
        &mut self,
        key: &SessionKey,
        now: u64,
        reason: &'static str,
        cx: &mut Ctx<'_>,
    ) {
        let Some(mut st) = self.states.remove(key) else {
            return;
        };
        st.release_http(cx.procs, cx.out);
        if let Some(e) = report::unfinished_handshake(&mut st, cx.procs, cx.clock, now) {
            cx.out.push(e);
        }
        if st.started {
            cx.out
                .push(session_end(&mut st, cx.procs, cx.clock, (now, reason)));
        }
        let ends = [st.session.ends[0].pid, st.session.ends[1].pid];
        if st.session.transport.is_http() && st.is_session() {
            self.bury(key.clone(), st.session);
        }
        for pid in ends.into_iter().flatten() {
            let Some(set) = self.by_pid.get_mut(&pid) else {
                continue;
            };
            set.remove(key);
            if set.is_empty() {
                self.by_pid.remove(&pid);
                self.released.push(pid);
            }
        }
    }

    /// The client ended an HTTP session (DELETE): its open calls end, then the session.
    pub(super) fn end_session(&mut self, key: &SessionKey, ts: u64, cx: &mut Ctx<'_>) {
        self.now = self.now.max(ts);
        if let Some(st) = self.states.get_mut(key) {
            st.corr.abandon_all(ts);
            st.session.last_ns = st.session.last_ns.max(ts);
        }
        // Answers already on their way still get their settle time.
        let saved = self.now;
        self.now = ts + self.cfg.settle_ns;
        self.emit_ready(key, cx);
        self.now = saved.max(self.now);
        if self
            .states
            .get(key)
            .is_some_and(|st| st.corr.open_count() == 0)
        {
            self.remove_session(key, ts, "deleted", cx);
        }
    }
}

/// The `session_end` event of a session that was reported started.
fn session_end(
    st: &mut State,
    procs: &Processes,
    clock: ClockAnchor,
    (now, reason): (u64, &'static str),
) -> Signal {
    let s = &mut st.session;
    let c = s.side_with_role(Role::Client, procs, 0);
    let end = s
        .last_ns
        .max(s.ends.iter().filter_map(|e| e.exited_ns).max().unwrap_or(0));
    let what = What::SessionEnd(signal::SessionEnd {
        transport: s.transport,
        reason,
        duration_ms: ms(end.saturating_sub(s.started_ns)),
        exchanges: st.exchanges,
        errors: u64::from(st.errors),
        client_observed: s.ends[c].observed,
        server_observed: s.ends[other(c)].observed,
        client: s.endpoint(c, procs),
        server: s.endpoint(other(c), procs),
        protocol_version: s.protocol_version.clone(),
    });
    report::session_event(st, procs, clock, end.min(now.max(end)), what)
}

/// Responses whose request never showed up within `grace`: reported as orphans; returns how
/// many.
fn expire_orphans(st: &mut State, cx: &mut Ctx<'_>, now: u64, grace: u64) -> u64 {
    let gone = st.corr.expire_orphans(now, grace);
    for o in &gone {
        let what = What::OrphanResponse {
            id: String::from(o.msg.id.as_deref().unwrap_or_default()),
        };
        cx.out.push(report::session_event(
            st, cx.procs, cx.clock, o.seen.ts, what,
        ));
    }
    gone.len() as u64
}

/// Views of notifications kept for pairing are forgotten after a while, and past
/// [`SEEN_CAP`]; returns how many went to the cap.
fn forget_views(st: &mut State, now: u64, grace: u64) -> u64 {
    st.seen
        .retain(|_, (_, last)| now.saturating_sub(*last) < 10 * grace);
    if st.seen.len() <= SEEN_CAP {
        // An idle session holds no room for views it forgot.
        if st.seen.is_empty() {
            st.seen.shrink_to_fit();
        }
        return 0;
    }
    let before = st.seen.len();
    let cutoff = nth_oldest(
        st.seen.values().map(|(_, last)| *last),
        before - SEEN_CAP / 2,
    );
    st.seen.retain(|_, (_, last)| *last > cutoff);
    (before - st.seen.len()) as u64
}
