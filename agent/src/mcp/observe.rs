//! One view of one message: what it says of the session's ends, then correlation (requests,
//! responses) or reporting (notifications).

use super::correlate::{Derived, KeyRef, Outcome, Sighting};
use super::derive::{self, Advertised, Repeats, ToolBook};
use super::inspect::Answer;
use super::message::{self, Kind, Message, Target};
use super::report;
use super::session::Session;
use super::transport::Seen;
use super::transport::route::{Route, Side, View, other};
use super::{Handshake, State, Tracker, client_method, server_method};
use crate::signal::{self, Ctx, Role, Signal, What};

impl Tracker {
    /// One view of one message.
    pub(super) fn observe(
        &mut self,
        cx: &mut Ctx<'_>,
        route: &Route,
        v: &View,
        msg: &Message<'_>,
        seen: Seen,
    ) {
        self.stats.views += 1;
        self.now = self.now.max(v.ts());
        let sighting = Sighting {
            sender: route.sender,
            viewer_is_sender: route.viewer == route.sender,
            ts: v.ts(),
            hash: seen.hash,
            bytes: seen.bytes,
        };
        let st = self.state(cx, route, v.ts());
        learn(&mut st.session, route, v, msg);
        match msg.kind {
            Kind::Request => self.request(cx, route, msg, sighting),
            Kind::Response | Kind::Error => self.response(cx, route, msg, sighting),
            Kind::Notification => self.notification(cx, route, msg, sighting),
        }
        // Only the exchange this message belongs to can have become ready now; the others
        // wait for the tick (looking at all of them per message would cost a flood of open
        // requests dearly).
        if let Some(t) = touched(msg, route.sender) {
            self.emit_ready_for(&route.key, Some(t), cx);
        }
        if self.states.len() > self.cfg.max_sessions || self.pending_estimate > self.cfg.max_pending
        {
            self.enforce_caps(cx);
        }
    }

    fn request(&mut self, cx: &mut Ctx<'_>, route: &Route, msg: &Message<'_>, seen: Sighting) {
        let st = self.states.get_mut(&route.key).expect("made by observe");
        let outcome = st.corr.request(seen, msg, route.addrs.as_ref());
        if outcome == Outcome::Late {
            self.stats.late_views += 1;
        }
        // Pushed out by a flood of one id: they end now, unanswered.
        for p in st.corr.take_evicted() {
            self.stats.evicted_pending += 1;
            self.stats.exchanges += 1;
            let rec = report::exchange(&mut st.session, cx.procs, p, &self.cfg, cx.clock);
            st.count_exchange(rec.status);
            cx.out.push(Signal::Exchange(rec));
        }
        if matches!(outcome, Outcome::New | Outcome::DuplicateId) {
            self.pending_estimate += 1;
            let id = msg.id.as_deref().expect("requests have ids");
            let derived = derive_request(
                &mut self.book,
                st.tools.as_ref(),
                &mut st.repeats,
                msg,
                self.cfg.payloads,
            );
            self.stats.bad_schemas = self.book.bad_schemas;
            let found = self
                .inspect
                .request(&mut st.watch, msg, cx.clock.wall_ns(seen.ts));
            if let Some(p) = st.corr.newest_mut(seen.sender, id) {
                p.derived = derived;
                p.derived.findings = found;
            }
            if msg.method.as_deref() == Some("initialize") {
                st.handshake = Some(Handshake {
                    start_ns: seen.ts,
                    requested: msg.protocol_version.as_deref().map(String::from),
                    answered: None,
                    initialized_ns: None,
                    done: false,
                });
            }
        }
        if outcome == Outcome::DuplicateId {
            self.stats.duplicate_ids += 1;
            let what = What::DuplicateId {
                id: String::from(msg.id.as_deref().unwrap_or_default()),
                method: String::from(msg.method.as_deref().unwrap_or_default()),
            };
            cx.out
                .push(report::session_event(st, cx.procs, cx.clock, seen.ts, what));
        }
    }

    fn response(&mut self, cx: &mut Ctx<'_>, route: &Route, msg: &Message<'_>, seen: Sighting) {
        let st = self.states.get_mut(&route.key).expect("made by observe");
        if msg.id.is_none() {
            // e.g. -32700 parse errors: nothing to correlate with. Reported from one view.
            if seen.viewer_is_sender || !st.session.ends[seen.sender].observed {
                let what = What::ErrorWithoutId {
                    error_code: msg.error_code.unwrap_or(0),
                };
                cx.out
                    .push(report::session_event(st, cx.procs, cx.clock, seen.ts, what));
            }
            return;
        }
        let outcome = st.corr.response(seen, msg, self.now, route.http_status);
        if outcome == Outcome::Late {
            self.stats.late_views += 1;
        }
        if outcome == Outcome::New {
            self.inspect_response(cx, route, msg, seen);
        }
        let st = self.states.get_mut(&route.key).expect("made by observe");
        let Some(tools) = &msg.tools else {
            return;
        };
        if !matches!(outcome, Outcome::New | Outcome::Orphan) {
            return;
        }
        let server = report::server_identity(&st.session, seen.sender, cx.procs);
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
            cx.out
                .push(report::session_event(st, cx.procs, cx.clock, seen.ts, what));
        }
    }

    /// A new response goes past the security rules; what they find rides on its exchange.
    fn inspect_response(&mut self, cx: &Ctx<'_>, route: &Route, msg: &Message<'_>, seen: Sighting) {
        let st = self.states.get_mut(&route.key).expect("made by observe");
        let id = msg
            .id
            .as_deref()
            .expect("responses with no id return earlier");
        let Some(p) = st.corr.answered_mut(other(seen.sender), id, seen.hash) else {
            return;
        };
        // Only the lists' rules use the server's name: no copy of it for every result.
        let server = if p.method.ends_with("/list") {
            report::server_identity(&st.session, seen.sender, cx.procs)
        } else {
            String::new()
        };
        let answer = Answer {
            method: &p.method,
            server: &server,
            client_pid: st.session.ends[other(seen.sender)].pid,
            msg,
            ts_ns: cx.clock.wall_ns(seen.ts),
        };
        let found = self.inspect.response(&mut st.watch, &answer);
        p.derived.findings.extend(found);
    }

    fn notification(&mut self, cx: &mut Ctx<'_>, route: &Route, msg: &Message<'_>, seen: Sighting) {
        let now = self.now;
        let st = self.states.get_mut(&route.key).expect("made by observe");
        if !st.first_view(seen.sender, seen.viewer_is_sender, seen.hash, now) {
            return;
        }
        if let Some(id) = &msg.cancels {
            st.corr.cancel(seen.sender, id, seen.ts);
        }
        if msg.method.as_deref() == Some("notifications/initialized") {
            initialized(st, cx, seen.ts);
        }
        self.stats.notifications += 1;
        report::push_started(st, cx.procs, cx.clock, seen.ts, cx.out);
        let s = &mut st.session;
        let from = s.ends[seen.sender].role.unwrap_or(Role::Unknown);
        let c = s.side_with_role(Role::Client, cx.procs, seen.sender);
        cx.out.push(Signal::Notification(signal::Notification {
            ts_ns: cx.clock.wall_ns(seen.ts),
            transport: s.transport,
            session: s.label(cx.procs),
            method: String::from(msg.method.as_deref().unwrap_or_default()),
            from,
            tls: s.tls,
            client: s.endpoint(c, cx.procs),
            server: s.endpoint(other(c), cx.procs),
            bytes: seen.bytes,
        }));
    }
}

/// `notifications/initialized` completes a handshake whose initialize was answered; when the
/// answer is not reported yet (it waits for views still in flight), the time is kept for
/// when it is.
fn initialized(st: &mut State, cx: &mut Ctx<'_>, ts: u64) {
    let Some(h) = &mut st.handshake else {
        return;
    };
    if h.done {
        return;
    }
    match h.answered {
        Some((true, _)) => report::handshake_done(st, cx, ts),
        Some((false, _)) => {}
        None => h.initialized_ns = Some(ts),
    }
}

/// What a message says of its session: the roles its method implies, the peer's info, the
/// protocol version, TLS.
fn learn(s: &mut Session, route: &Route, v: &View, msg: &Message<'_>) {
    let sender = route.sender;
    s.tls |= v.tls;
    if v.http.is_some() {
        s.http_version = v.http;
    }
    if v.tls_library.is_some() {
        s.ends[route.viewer].tls_library = v.tls_library;
    }
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
            s.protocol_version = Some(String::from(&**pv));
        }
    }
}

/// The exchange a message can have completed: (requester, id).
fn touched<'m>(msg: &'m Message<'_>, sender: Side) -> Option<KeyRef<'m>> {
    match msg.kind {
        Kind::Request => msg.id.as_deref().map(|id| (sender, id)),
        Kind::Response | Kind::Error => msg.id.as_deref().map(|id| (other(sender), id)),
        Kind::Notification => msg.cancels.as_deref().map(|id| (sender, id)),
    }
}

/// What is worked out about a request when it is first seen.
fn derive_request(
    book: &mut ToolBook,
    tools: Option<&Advertised>,
    repeats: &mut Repeats,
    msg: &Message<'_>,
    payloads: bool,
) -> Derived {
    let method = msg.method.as_deref().unwrap_or("");
    let id = msg.id.as_deref().unwrap_or("");
    let mut d = Derived {
        traceparent: msg.traceparent.as_deref().map(String::from),
        tracestate: msg.tracestate.as_deref().map(String::from),
        ..Derived::default()
    };
    match &msg.target {
        Target::Tool(tool) => {
            d.check = book.check(tools, tool, msg.arguments.as_deref());
            d.args_hash = msg.arguments.as_deref().and_then(derive::canonical_hash);
            d.repeat_of = repeats.seen(derive::call_key_of(method, tool, d.args_hash), id);
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
                String::from(&**a)
            } else {
                format!("{{\"mcptap.truncated\":{}}}", a.len())
            }
        });
    }
    d
}
