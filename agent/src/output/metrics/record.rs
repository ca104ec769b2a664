//! From signals to metrics: every exchange, notification and event updates the [`Registry`];
//! gauges and the agent's own counters are refreshed on each tick.

use std::collections::BTreeMap;

use super::{Lv, Registry, defs};
use crate::signal::{Endpoint, Event, Exchange, Notification, Role, Signal, Status, What};

fn name(e: &Endpoint) -> &str {
    match e.name.as_deref() {
        Some(n) if !n.is_empty() => n,
        _ if !e.comm.is_empty() => &e.comm,
        _ => "unknown",
    }
}

/// The namespace and pod of an endpoint's process ("" outside Kubernetes, or before the API
/// server named it): the server side's labels on the per-request metrics.
fn k8s_labels(e: &Endpoint) -> (&str, &str) {
    match e.k8s.as_deref() {
        Some(k) => (
            k.namespace.as_deref().unwrap_or(""),
            k.pod.as_deref().unwrap_or(""),
        ),
        None => ("", ""),
    }
}

/// `success` or `error`, and the error type: the JSON-RPC code, `tool_error`, `no_response`,
/// `cancelled`, or `http_NNN` for HTTP-level failures.
pub fn outcome(x: &Exchange) -> (&'static str, String) {
    match x.status {
        Status::Ok => ("success", String::new()),
        Status::ToolError => ("error", "tool_error".into()),
        Status::NoResponse => ("error", "no_response".into()),
        Status::Cancelled => ("error", "cancelled".into()),
        Status::Error => (
            "error",
            match (x.error_code, x.http_status) {
                (Some(c), _) => c.to_string(),
                (None, Some(h)) => format!("http_{h}"),
                (None, None) => "error".into(),
            },
        ),
    }
}

fn direction(from: Role) -> &'static str {
    match from {
        Role::Server => "server_to_client",
        _ => "client_to_server",
    }
}

/// Milliseconds as the seconds the duration histograms are in.
fn secs(ms: f64) -> f64 {
    ms / 1000.0
}

/// The labels the per-request metrics of one exchange share, each looked up in the registry
/// once for all of them.
struct Labels<'a> {
    /// Server name.
    server: Lv<'a>,
    /// Client name.
    client: Lv<'a>,
    /// The server's namespace ("" outside Kubernetes).
    ns: Lv<'a>,
    /// The server's pod ("" outside Kubernetes).
    pod: Lv<'a>,
    /// `success` or `error`.
    status: Lv<'a>,
    /// What went wrong, "" on success (see [`outcome`]).
    error_type: Lv<'a>,
    /// The error's class, "" when none was given.
    class: Lv<'a>,
    /// The method.
    method: Lv<'a>,
    /// The tool, "" for other methods.
    tool: Lv<'a>,
}

impl<'a> Labels<'a> {
    /// The labels of `x`, whose status and error type are `outcome`.
    fn of(r: &Registry, x: &'a Exchange, (status, error_type): (&'static str, &'a str)) -> Self {
        let (ns, pod) = k8s_labels(&x.server);
        Labels {
            server: r.resolve(name(&x.server)),
            client: r.resolve(name(&x.client)),
            ns: r.resolve(ns),
            pod: r.resolve(pod),
            status: r.resolve(status),
            error_type: r.resolve(error_type),
            class: r.resolve(x.derived.error_class.unwrap_or("")),
            method: r.resolve(&x.method),
            tool: r.resolve(x.tool.as_deref().unwrap_or("")),
        }
    }
}

/// The metrics of one exchange: those of its tool, resource or prompt, then those of every
/// request, then its messages.
fn exchange(r: &mut Registry, x: &Exchange) {
    let (status, error_type) = outcome(x);
    let l = Labels::of(r, x, (status, &error_type));
    match (x.method.as_str(), &x.resource_uri, &x.prompt) {
        ("tools/call", ..) if x.tool.is_some() => tool_call(r, x, &l),
        ("resources/read", Some(uri), _) => resource_read(r, x, uri, &l),
        ("prompts/get", _, Some(prompt)) => {
            r.inc_lv(
                &defs::PROMPT_GETS,
                &[prompt.as_str().into(), l.server, l.status, l.ns, l.pod],
                1.0,
            );
        }
        _ => {}
    }
    requests(r, x, &l);
    messages(r, x);
}

/// The per-tool metrics of a `tools/call`.
fn tool_call(r: &mut Registry, x: &Exchange, l: &Labels<'_>) {
    let (tool, server) = (l.tool, l.server);
    r.inc_lv(
        &defs::TOOL_CALLS,
        &[
            tool,
            server,
            l.client,
            l.status,
            l.error_type,
            l.class,
            l.ns,
            l.pod,
        ],
        1.0,
    );
    if let Some(d) = x.timing.duration_ms {
        r.observe_lv(&defs::TOOL_DURATION, &[tool, server, l.ns, l.pod], secs(d));
    }
    if let Some(t) = x.derived.result_tokens_est {
        r.observe_lv(&defs::TOOL_TOKENS, &[tool, server], t as f64);
    }
    if let Some(valid) = x.derived.schema_valid {
        r.inc_lv(&defs::SCHEMA_CHECKED, &[tool, server], 1.0);
        if !valid {
            r.inc_lv(&defs::SCHEMA_VIOLATIONS, &[tool, server], 1.0);
        }
    }
    if x.derived.unknown_tool == Some(true) {
        r.inc_lv(&defs::UNKNOWN_TOOLS, &[server, l.client], 1.0);
    }
    if x.derived.repeat_of.is_some() {
        r.inc_lv(&defs::REPEATED_CALLS, &[tool, server], 1.0);
    }
}

/// The per-resource metrics of a `resources/read`.
fn resource_read(r: &mut Registry, x: &Exchange, uri: &str, l: &Labels<'_>) {
    r.inc_lv(
        &defs::RESOURCE_READS,
        &[uri.into(), l.server, l.status, l.ns, l.pod],
        1.0,
    );
    if let Some(b) = x.derived.content_bytes {
        r.observe_lv(&defs::RESOURCE_BYTES, &[l.server], b as f64);
    }
    if x.derived.repeat_of.is_some() {
        r.inc_lv(&defs::DUPLICATE_READS, &[l.server], 1.0);
    }
}

/// What every request counts, whatever its method: the request and its error, and each
/// watched side's operation time.
fn requests(r: &mut Registry, x: &Exchange, l: &Labels<'_>) {
    let (server, ns, pod, method) = (l.server, l.ns, l.pod, l.method);
    r.inc_lv(
        &defs::REQUESTS,
        &[method, server, l.status, l.error_type, ns, pod],
        1.0,
    );
    if let Some(code) = x.error_code {
        r.inc_lv(
            &defs::ERRORS,
            &[code.to_string().as_str().into(), method, server, ns, pod],
            1.0,
        );
    }
    if let Some(d) = x.timing.client_duration_ms {
        r.observe_lv(
            &defs::CLIENT_OPERATION,
            &[method, l.tool, l.error_type, server],
            secs(d),
        );
    }
    if let Some(d) = x.timing.server_duration_ms {
        r.observe_lv(
            &defs::SERVER_OPERATION,
            &[method, l.tool, l.error_type, server, ns, pod],
            secs(d),
        );
    }
}

/// The request and its response (or error) as messages: counts and sizes by direction.
fn messages(r: &mut Registry, x: &Exchange) {
    let req_dir = r.resolve(direction(x.requester));
    let resp_dir = r.resolve(direction(match x.requester {
        Role::Server => Role::Client,
        _ => Role::Server,
    }));
    let transport = r.resolve(x.transport.as_str());
    let request = r.resolve("request");
    r.inc_lv(&defs::MESSAGES, &[req_dir, request, transport], 1.0);
    r.observe_lv(
        &defs::MESSAGE_SIZE,
        &[req_dir, request],
        x.request_bytes as f64,
    );
    if let Some(b) = x.response_bytes {
        let kind = r.resolve(if x.status == Status::Error && x.error_code.is_some() {
            "error"
        } else {
            "response"
        });
        r.inc_lv(&defs::MESSAGES, &[resp_dir, kind, transport], 1.0);
        r.observe_lv(&defs::MESSAGE_SIZE, &[resp_dir, kind], b as f64);
    }
}

fn notification(r: &mut Registry, n: &Notification) {
    let dir = direction(n.from);
    r.inc(
        &defs::MESSAGES,
        &[dir, "notification", n.transport.as_str()],
        1.0,
    );
    r.observe(&defs::MESSAGE_SIZE, &[dir, "notification"], n.bytes as f64);
}

fn event(r: &mut Registry, e: &Event) {
    match &e.what {
        What::Handshake(h) => {
            let server = name(&h.server);
            let client = name(&h.client);
            let reason = h.reason.unwrap_or("");
            r.inc(&defs::HANDSHAKES, &[server, client, h.status, reason], 1.0);
            if let (Some(ms), "success") = (h.duration_ms, h.status) {
                r.observe(&defs::HANDSHAKE_DURATION, &[server], ms / 1000.0);
            }
        }
        What::SessionStart {
            transport, server, ..
        } => r.inc(&defs::SESSIONS, &[transport.as_str(), name(server)], 1.0),
        What::SessionEnd(end) => {
            let labels = [end.transport.as_str(), name(&end.server)];
            let secs = end.duration_ms / 1000.0;
            r.observe(&defs::SESSION_DURATION, &labels, secs);
            if end.client_observed {
                r.observe(&defs::CLIENT_SESSION, &labels, secs);
            }
            if end.server_observed {
                r.observe(&defs::SERVER_SESSION, &labels, secs);
            }
        }
        What::ToolDrift {
            server_name,
            added,
            removed,
            changed,
        } => {
            for (change, names) in [("added", added), ("removed", removed), ("changed", changed)] {
                if !names.is_empty() {
                    r.inc(
                        &defs::TOOL_DRIFT,
                        &[server_name, change],
                        names.len() as f64,
                    );
                }
            }
        }
        What::CallTimeout {
            method,
            server_name,
            ..
        } => r.inc(&defs::CALL_TIMEOUTS, &[method, server_name], 1.0),
        What::StreamCorruption { reason, .. } => r.inc(&defs::CORRUPTIONS, &[reason], 1.0),
        What::TaskEnd(t) => super::agent::task_end(r, t),
        _ => {}
    }
}

/// Update the metrics for one signal.
pub fn record(r: &mut Registry, s: &Signal) {
    match s {
        Signal::Exchange(x) => exchange(r, x),
        Signal::Notification(n) => notification(r, n),
        Signal::LlmCall(c) => super::agent::llm_call(r, c),
        Signal::Event(e) => event(r, e),
    }
}

/// What the agent itself counted, set on each tick.
#[derive(Default)]
pub struct AgentTotals<'a> {
    /// Kernel records processed.
    pub records: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Oversize messages.
    pub truncated: u64,
    /// Parse errors by class.
    pub parse_errors: Option<&'a BTreeMap<&'static str, u64>>,
    /// Rejected streams by reason.
    pub rejected: Option<&'a BTreeMap<&'static str, u64>>,
    /// Stream gaps by reason.
    pub gaps: Option<&'a BTreeMap<&'static str, u64>>,
    /// HTTP/2 connections first seen mid-way, and what they could not read.
    pub http2_midstream: Option<crate::wire::http::Midstream>,
    /// TLS streams with no plaintext captured, by the library found in the process.
    pub tls_undecrypted: Option<&'a BTreeMap<&'static str, u64>>,
    /// Binaries whose OpenSSL is probed, by mode.
    pub tls_probed: Option<&'a BTreeMap<&'static str, u64>>,
    /// Binaries whose TLS library was recognised, by (library, state).
    pub tls_probes: Option<&'a BTreeMap<(&'static str, &'static str), u64>>,
    /// Kernel counters.
    pub kernel: Option<&'a BTreeMap<String, u64>>,
    /// Open tools/call by (tool, server).
    pub in_flight: BTreeMap<(String, String), u64>,
    /// Active sessions by (transport, server).
    pub sessions: BTreeMap<(&'static str, String), u64>,
    /// State held.
    pub tracked_sessions: u64,
    /// Streams held (counting them takes a walk of the table: not on every refresh).
    pub tracked_streams: Option<u64>,
    /// Export failures and drops by exporter.
    pub export: BTreeMap<&'static str, (u64, u64)>,
    /// Every bounded table: size, cap, evictions (not on every refresh either).
    pub tables: Vec<crate::bounded::TableStat>,
    /// How far behind the clock capture is, in seconds (live only).
    pub lag_seconds: Option<f64>,
    /// MCP tool calls of processes that talk to a model that no model asked for.
    pub unrequested_tool_calls: u64,
}

/// Refresh gauges and the agent's own totals.
pub fn agent(r: &mut Registry, t: &AgentTotals<'_>) {
    r.set(&defs::AGENT_RECORDS, &[], t.records as f64);
    r.set(&defs::AGENT_BYTES, &[], t.bytes as f64);
    r.set(&defs::AGENT_TRUNCATED, &[], t.truncated as f64);
    if let Some(m) = t.http2_midstream {
        r.set(&defs::AGENT_H2_MIDSTREAM, &[], m.connections as f64);
        r.set(&defs::AGENT_H2_SKIPPED, &[], m.streams_skipped as f64);
        r.set(
            &defs::AGENT_H2_UNDECODED,
            &[],
            m.header_blocks_undecoded as f64,
        );
    }
    for (def, map) in [
        (&defs::AGENT_PARSE_ERRORS, t.parse_errors),
        (&defs::AGENT_REJECTED, t.rejected),
        (&defs::AGENT_GAPS, t.gaps),
        (&defs::AGENT_TLS_PROBED, t.tls_probed),
        (&defs::AGENT_TLS_UNDECRYPTED, t.tls_undecrypted),
    ] {
        for (k, v) in map.into_iter().flatten() {
            r.set(def, &[k], *v as f64);
        }
    }
    for ((lib, state), n) in t.tls_probes.into_iter().flatten() {
        r.set(&defs::AGENT_TLS_PROBES, &[lib, state], *n as f64);
    }
    if let Some(k) = t.kernel {
        for (name, v) in k {
            r.set(&defs::AGENT_KERNEL, &[name], *v as f64);
        }
        let lost: u64 = mcptap_abi::counter::LOST_EVENTS
            .iter()
            .map(|i| mcptap_abi::counter::NAMES[*i as usize])
            .chain([crate::capture::kernel::RECURSION_MISSES])
            .filter_map(|n| k.get(n))
            .sum();
        r.set(&defs::AGENT_LOST, &[], lost as f64);
    }
    r.set_all(
        &defs::TOOL_IN_FLIGHT,
        t.in_flight
            .iter()
            .map(|((tool, server), n)| (vec![tool.clone(), server.clone()], *n as f64)),
    );
    r.set_all(
        &defs::ACTIVE_SESSIONS,
        t.sessions.iter().map(|((transport, server), n)| {
            (vec![transport.to_string(), server.clone()], *n as f64)
        }),
    );
    for t in &t.tables {
        r.set(&defs::AGENT_EVICTIONS, &[t.name], t.evicted as f64);
        r.set(&defs::AGENT_TABLE_ENTRIES, &[t.name], t.len as f64);
        r.set(&defs::AGENT_TABLE_CAPACITY, &[t.name], t.cap as f64);
    }
    r.set(&defs::AGENT_SESSIONS, &[], t.tracked_sessions as f64);
    if let Some(n) = t.tracked_streams {
        r.set(&defs::AGENT_STREAMS, &[], n as f64);
    }
    if let Some(lag) = t.lag_seconds {
        r.set(&defs::AGENT_CAPTURE_LAG, &[], lag);
    }
    if t.unrequested_tool_calls > 0 {
        r.set(
            &super::agent::UNREQUESTED,
            &[],
            t.unrequested_tool_calls as f64,
        );
    }
    for (exporter, (failed, dropped)) in &t.export {
        r.set(&defs::AGENT_EXPORT_FAILURES, &[exporter], *failed as f64);
        r.set(&defs::AGENT_EXPORT_DROPPED, &[exporter], *dropped as f64);
    }
}

/// A [`crate::signal::Sink`] that feeds every signal into a shared registry.
pub struct Recorder(pub std::sync::Arc<std::sync::Mutex<Registry>>);

impl crate::signal::Sink for Recorder {
    fn emit(&mut self, signal: &Signal) {
        let mut r = match self.0.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        record(&mut r, signal);
    }
}
