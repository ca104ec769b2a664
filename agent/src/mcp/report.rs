//! What the tracker reports: finished exchanges (once every view that can arrive has), the
//! handshake, session starts, and the events about a session.

use super::correlate::{Found, KeyRef, Pending};
use super::message::{Kind, Target};
use super::session::Session;
use super::transport::route::{Side, other};
use super::{GIVE_UP_FACTOR, State, Tracker, TrackerConfig, client_method, ms, privacy};
use super::{derive, server_method};
use crate::capture::recording::ClockAnchor;
use crate::conn::fd::Addr;
use crate::signal::process::Processes;
use crate::signal::{self, Ctx, Event, Role, Signal, Status, What};

/// Whether an open exchange is done.
enum Ready {
    /// Not yet: views may still arrive.
    No,
    /// Every view that can arrive has.
    Yes,
    /// Given up waiting for a view of a watched side (counted as a missing twin).
    Incomplete,
}

/// Whether `p` is done, given which sides are `observed` (watched), at `now`.
fn readiness(p: &Pending, observed: [bool; 2], now: u64, cfg: &TrackerConfig) -> Ready {
    let waited = |t: u64, limit: u64| now.saturating_sub(t) >= limit;
    let Some(resp_at) = p.response_seen_ns else {
        let over = if let Some(c) = p.cancelled_ns {
            waited(c, cfg.settle_ns.max(cfg.twin_grace_ns))
        } else if let Some(a) = p.abandoned_ns {
            waited(a, cfg.settle_ns)
        } else {
            let limit = cfg.response_timeout_ns.saturating_mul(GIVE_UP_FACTOR);
            waited(p.first_seen(), limit)
        };
        return if over { Ready::Yes } else { Ready::No };
    };
    let requester = p.requester;
    let responder = other(requester);
    let complete = (!observed[responder] || p.resp.sent.is_some())
        && (!observed[requester] || p.resp.received.is_some())
        && (!observed[requester] || p.req.sent.is_some())
        && (!observed[responder] || p.req.received.is_some());
    let both_seen = observed[0] && observed[1];
    if complete && (both_seen || waited(resp_at, cfg.settle_ns)) {
        Ready::Yes
    } else if waited(resp_at, cfg.twin_grace_ns) {
        if complete {
            Ready::Yes
        } else {
            Ready::Incomplete
        }
    } else {
        Ready::No
    }
}

impl Tracker {
    pub(super) fn emit_ready(&mut self, key: &super::SessionKey, cx: &mut Ctx<'_>) {
        self.emit_ready_for(key, None, cx);
    }

    /// Report the exchanges of a session that are done: all of them, or only those of one
    /// (requester, id).
    pub(super) fn emit_ready_for(
        &mut self,
        key: &super::SessionKey,
        only: Option<KeyRef<'_>>,
        cx: &mut Ctx<'_>,
    ) {
        let (cfg, now) = (&self.cfg, self.now);
        let Some(st) = self.states.get_mut(key) else {
            return;
        };
        let observed = [st.session.ends[0].observed, st.session.ends[1].observed];
        let mut missing = 0;
        let done = st
            .corr
            .take_ready(only, |p| match readiness(p, observed, now, cfg) {
                Ready::No => false,
                Ready::Yes => true,
                Ready::Incomplete => {
                    missing += 1;
                    true
                }
            });
        self.stats.missing_twins += missing;
        for p in done {
            let first_seen = p.first_seen();
            let rec = exchange(&mut st.session, cx.procs, p, cfg, cx.clock);
            self.stats.exchanges += 1;
            st.count_exchange(rec.status);
            push_started(st, cx.procs, cx.clock, first_seen, cx.out);
            let initialize = rec.method == "initialize";
            let (status, duration) = (rec.status, rec.timing.duration_ms);
            cx.out.push(Signal::Exchange(rec));
            if initialize {
                answered(st, cx, (status, duration), now);
                st.release_http(cx.procs, cx.out);
            }
        }
    }
}

/// The initialize exchange was reported: a failure ends the handshake; a success completes it
/// if `notifications/initialized` was already seen.
fn answered(st: &mut State, cx: &mut Ctx<'_>, (status, duration): (Status, Option<f64>), now: u64) {
    let Some(h) = &mut st.handshake else {
        return;
    };
    if h.answered.is_some() {
        return;
    }
    let ok = status == Status::Ok;
    h.answered = Some((ok, now));
    if ok {
        if let Some(t) = h.initialized_ns {
            handshake_done(st, cx, t);
        }
        return;
    }
    h.done = true;
    let reason = match status {
        Status::NoResponse => "no_response",
        Status::Cancelled => "cancelled",
        _ => "error",
    };
    let outcome = HandshakeOutcome {
        ok: false,
        reason: Some(reason),
        duration_ms: duration,
        requested: h.requested.clone(),
    };
    cx.out
        .push(handshake_event(st, cx.procs, cx.clock, now, outcome));
}

/// The handshake completed with `notifications/initialized` at `ts`.
pub(super) fn handshake_done(st: &mut State, cx: &mut Ctx<'_>, ts: u64) {
    let Some(h) = &mut st.handshake else {
        return;
    };
    h.done = true;
    let outcome = HandshakeOutcome {
        ok: true,
        reason: None,
        duration_ms: Some(ms(ts.saturating_sub(h.start_ns))),
        requested: h.requested.clone(),
    };
    push_started(st, cx.procs, cx.clock, ts, cx.out);
    cx.out
        .push(handshake_event(st, cx.procs, cx.clock, ts, outcome));
}

/// A handshake answered but never completed (timed out, or its session ended): the failure
/// to report, once.
pub(super) fn unfinished_handshake(
    st: &mut State,
    procs: &Processes,
    clock: ClockAnchor,
    ts: u64,
) -> Option<Signal> {
    let h = st.handshake.as_mut()?;
    if h.done || !matches!(h.answered, Some((true, _))) {
        return None;
    }
    h.done = true;
    let mismatch = h.requested.is_some() && h.requested != st.session.protocol_version;
    let reason = if mismatch {
        "version_mismatch"
    } else {
        "no_initialized"
    };
    let outcome = HandshakeOutcome {
        ok: false,
        reason: Some(reason),
        duration_ms: None,
        requested: h.requested.clone(),
    };
    Some(handshake_event(st, procs, clock, ts, outcome))
}

/// An HTTP request of a session's connection, once: from the server's view when the server
/// is watched, else from the client's. `known`: the session is in the table (not one made up
/// for a request that outlived it).
pub(super) fn http_request(
    s: &mut Session,
    procs: &Processes,
    clock: ClockAnchor,
    route: &super::Route,
    (seen, known): (&super::transport::HttpSeen<'_>, bool),
) -> Option<Signal> {
    let server = s.side_with_role(Role::Server, procs, route.sender);
    let client = other(server);
    let seen_by = if route.viewer == server {
        Role::Server
    } else {
        Role::Client
    };
    // The server's own view counts it when the server is watched. A session already ended
    // (a GET stream or DELETE that outlived it) no longer says whether it was: a server on
    // this host (a peer the socket names) is taken to be.
    let local_server = !known && route.peer_pid.is_some();
    if seen_by == Role::Client && (s.ends[server].observed || local_server) {
        return None;
    }
    let req = signal::health::HttpRequest {
        ts_ns: clock.wall_ns(seen.start_ns),
        transport: s.transport,
        session: s.label(procs),
        http_method: seen.method.to_string(),
        endpoint: signal::health::endpoint_of(seen.target),
        http_status: seen.status,
        duration_ms: ms(seen.end_ns.saturating_sub(seen.start_ns)),
        seen_by,
        client: s.endpoint(client, procs),
        server: s.endpoint(server, procs),
    };
    Some(Signal::Http(Box::new(req)))
}

/// An event about a session, labelled with it.
pub(super) fn session_event(
    st: &mut State,
    procs: &Processes,
    clock: ClockAnchor,
    ts: u64,
    what: What,
) -> Signal {
    let mut e = Event::new(clock.wall_ns(ts), what);
    e.session = st.session.label(procs);
    Signal::Event(e)
}

/// The name a server goes by in outputs and metrics: its `serverInfo.name`, else its
/// process's comm.
pub(super) fn server_identity(s: &Session, side: Side, procs: &Processes) -> String {
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
pub(super) fn server_side(s: &mut Session, procs: &Processes) -> Side {
    other(s.side_with_role(Role::Client, procs, 0))
}

/// Report `session_start` before a session's first record.
pub(super) fn push_started(
    st: &mut State,
    procs: &Processes,
    clock: ClockAnchor,
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
    let at = s.started_ns.min(ts);
    out.push(session_event(st, procs, clock, at, what));
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
    procs: &Processes,
    clock: ClockAnchor,
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
    session_event(st, procs, clock, ts, what)
}

/// How an exchange ended.
fn status_of(p: &Pending) -> Status {
    match (&p.response, p.cancelled_ns) {
        (_, Some(_)) => Status::Cancelled,
        (None, None) => Status::NoResponse,
        (Some(r), None) if r.kind == Kind::Error => Status::Error,
        (Some(r), None) if r.is_error => Status::ToolError,
        (Some(_), None) => Status::Ok,
    }
}

/// The exchange's durations: (overall, the client's, the server's), in ms.
fn durations(p: &Pending, status: Status, requester: Role) -> [Option<f64>; 3] {
    let span = |a: Option<u64>, b: Option<u64>| Some(ms(b?.saturating_sub(a?)));
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
    let overall = client_d.or(server_d).or_else(|| {
        let start = p.req.sent.or(p.req.received);
        let end = p.resp.received.or(p.resp.sent);
        span(start, end)
    });
    [overall, client_d, server_d]
}

/// The role of the side that sent the request; the session learns it if it did not know.
fn requester_role(s: &mut Session, procs: &Processes, p: &Pending) -> (Role, Side) {
    let role = if client_method(&p.method) {
        Role::Client
    } else if server_method(&p.method) {
        Role::Server
    } else {
        s.ends[p.requester].role.unwrap_or(Role::Client)
    };
    if s.ends[p.requester].role.is_none() {
        s.set_role(p.requester, role);
    }
    let c = s.side_with_role(Role::Client, procs, p.requester);
    let requester = if p.requester == c {
        Role::Client
    } else {
        Role::Server
    };
    (requester, c)
}

/// What the exchange was about: (tool, resource URI, prompt); URIs are trimmed unless asked.
fn target_fields(
    t: Target<'static>,
    full_uris: bool,
) -> (Option<String>, Option<String>, Option<String>) {
    match t {
        Target::Tool(t) => (Some(t.into_owned()), None, None),
        Target::Resource(u) if full_uris => (None, Some(u.into_owned()), None),
        Target::Resource(u) => (None, Some(privacy::trim_uri(&u).into_owned()), None),
        Target::Prompt(n) => (None, None, Some(n.into_owned())),
        Target::None => (None, None, None),
    }
}

/// The record of a finished exchange.
pub(super) fn exchange(
    s: &mut Session,
    procs: &Processes,
    mut p: Pending,
    cfg: &TrackerConfig,
    clock: ClockAnchor,
) -> signal::Exchange {
    let (requester, c) = requester_role(s, procs, &p);
    let status = status_of(&p);
    let [duration, client_d, server_d] = durations(&p, status, requester);
    let target = std::mem::take(&mut p.target);
    let (tool, resource_uri, prompt) = target_fields(target, cfg.full_resource_uris);
    let (server_address, server_port) = split_addr(p.addrs.as_ref().map(|a| &a.server));
    let (client_address, client_port) = split_addr(p.addrs.as_ref().map(|a| &a.client));
    let resp = p.response.as_ref();
    let error_code = resp
        .filter(|r| r.kind == Kind::Error)
        .and_then(|r| r.error_code);
    let http_status = resp.and_then(|r| r.http_status);
    let d = std::mem::take(&mut p.derived);
    // Start times per side, by role (the requester sent the request).
    let (client_start, server_start) = if requester == Role::Client {
        (p.req.sent, p.req.received)
    } else {
        (p.req.received, p.req.sent)
    };
    let (schema_valid, unknown_tool) = (d.check.schema_valid, d.check.unknown_tool);
    // A finding names what it is about: the tool, else the prompt or resource.
    let about = tool
        .as_deref()
        .or(prompt.as_deref())
        .or(resource_uri.as_deref());
    let findings = place_findings(s, procs, &p, c, about, d.findings);
    signal::Exchange {
        ts_ns: clock.wall_ns(p.first_seen()),
        transport: s.transport,
        session: s.label(procs),
        method: std::mem::take(&mut p.method),
        // Not `to_string`: that goes through `Display`.
        id: String::from(&*p.id.0),
        tool,
        resource_uri,
        prompt,
        status,
        error_code,
        http_status,
        requester,
        timing: signal::Timing {
            duration_ms: duration,
            client_duration_ms: client_d,
            server_duration_ms: server_d,
            client_start_ns: client_start.map(|t| clock.wall_ns(t)),
            server_start_ns: server_start.map(|t| clock.wall_ns(t)),
        },
        client: s.endpoint(c, procs),
        server: s.endpoint(other(c), procs),
        protocol_version: s.protocol_version.clone(),
        request_bytes: p.req_bytes,
        response_bytes: resp.map(|r| r.bytes),
        network: signal::Network {
            server_address,
            server_port,
            client_address,
            client_port,
            tls: s.tls,
            http_version: s.http_version,
            client_tls_library: s.ends[c].tls_library,
            server_tls_library: s.ends[other(c)].tls_library,
        },
        derived: signal::Derived {
            error_class: derive::error_class(
                status,
                error_code,
                http_status,
                schema_valid,
                unknown_tool,
            ),
            schema_valid,
            schema_error: d.check.schema_error,
            unknown_tool,
            repeat_of: d.repeat_of,
            result_tokens_est: resp.and_then(|r| r.text_bytes).map(derive::tokens_estimate),
            content_bytes: resp.and_then(|r| r.contents_bytes),
        },
        // The agentic layer names the task and turn, later in the pipeline.
        agent: signal::AgentLink::default(),
        payload: signal::Payload {
            arguments: d.arguments.as_deref().map(privacy::redact),
            result: resp.and_then(|r| r.result.as_deref()).map(privacy::redact),
        },
        trace: signal::TraceContext {
            args_hash: d.args_hash,
            agent_parent: None,
            traceparent: d.traceparent,
            tracestate: d.tracestate,
        },
        findings,
    }
}

/// Findings of an exchange with what the session says of them: its label, the server's
/// name, the method, and the process that sent the message each was found in (the server,
/// for definitions: they are in responses).
fn place_findings(
    s: &mut Session,
    procs: &Processes,
    p: &Pending,
    client: Side,
    tool: Option<&str>,
    found: Vec<Found>,
) -> Vec<signal::security::Finding> {
    if found.is_empty() {
        return Vec::new();
    }
    let session = s.label(procs);
    let server = server_identity(s, other(client), procs);
    found
        .into_iter()
        .map(
            |Found {
                 mut finding,
                 in_response,
             }| {
                let sender = if in_response {
                    other(p.requester)
                } else {
                    p.requester
                };
                // The inspector names a server and a tool only where they differ from the
                // exchange's (a listed item, another server's description).
                finding.session = session.clone();
                finding.server = finding.server.or_else(|| Some(server.clone()));
                finding.tool = finding.tool.or_else(|| tool.map(String::from));
                finding.method = Some(p.method.clone());
                finding.process = s.endpoint(sender, procs);
                finding
            },
        )
        .collect()
}

fn split_addr(a: Option<&Addr>) -> (Option<String>, Option<u16>) {
    a.map(Addr::split)
        .map_or((None, None), |(a, p)| (Some(a), p))
}
