//! From signals to metrics: every exchange, notification, model call and event updates the
//! [`Registry`] (an exchange's and a model call's security findings too); gauges and the
//! agent's own counters are refreshed on each tick.

use std::collections::{BTreeMap, HashMap};

use super::{Def, Handle, Lv, Registry, defs};
use crate::signal::{Endpoint, Event, Exchange, Notification, Role, Signal, Status, What};

/// The name a metric labels an endpoint by: its MCP name, else its comm.
pub(super) fn name(e: &Endpoint) -> &str {
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

/// The labels the metrics of one exchange share, each looked up in the registry once for
/// all of them.
#[derive(Clone, Copy)]
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
    /// The request's direction.
    request_dir: Lv<'a>,
    /// The response's direction.
    response_dir: Lv<'a>,
    /// The transport.
    transport: Lv<'a>,
    /// The response's message kind: `response`, or `error` for a JSON-RPC error.
    response_kind: Lv<'a>,
}

impl<'a> Labels<'a> {
    /// The labels of `x`, whose status and error type are `outcome`.
    fn of(r: &Registry, x: &'a Exchange, (status, error_type): (&'static str, &'a str)) -> Self {
        let (ns, pod) = k8s_labels(&x.server);
        let responder = match x.requester {
            Role::Server => Role::Client,
            _ => Role::Server,
        };
        let response_kind = if x.status == Status::Error && x.error_code.is_some() {
            "error"
        } else {
            "response"
        };
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
            request_dir: r.resolve(direction(x.requester)),
            response_dir: r.resolve(direction(responder)),
            transport: r.resolve(x.transport.as_str()),
            response_kind: r.resolve(response_kind),
        }
    }
}

/// The series one exchange can update, by what it updates them for.
#[derive(Clone, Copy)]
enum Slot {
    PromptGets,
    ToolCalls,
    ToolDuration,
    ToolTokens,
    SchemaChecked,
    SchemaViolations,
    UnknownTools,
    RepeatedCalls,
    ResourceReads,
    ResourceBytes,
    DuplicateReads,
    Requests,
    Errors,
    ClientOperation,
    ServerOperation,
    RequestMessages,
    RequestSize,
    ResponseMessages,
    ResponseSize,
}

const SLOTS: usize = Slot::ResponseSize as usize + 1;

/// The series of one shape of exchange, by [`Slot`]; `None` where none is known yet, or
/// where a label value overflowed (such updates go by labels every time, and are counted).
type Handles = [Option<Handle>; SLOTS];

/// Shapes held at most: past it the cache starts again (it only saves lookups; the
/// registry's own caps bound the series).
const MAX_SHAPES: usize = 1024;

/// The series exchanges updated, by the exchange's shape: every value its metrics' labels
/// are made of ([`shape`]). Looking each label up and then each series cost some 25 hash
/// lookups of strings an exchange; one lookup of its shape finds them all. A [`Handle`]
/// stays valid while the registry lives (series are never removed, a kept label value is
/// kept for good), so the cache lives in the registry.
#[derive(Default)]
pub(super) struct ExchangeSeries {
    by_shape: HashMap<Box<[u8]>, Handles, foldhash::fast::FixedState>,
    /// The shape being looked up, kept for its allocation.
    shape: Vec<u8>,
    /// Shapes forgotten because the cache was full.
    pub(super) evicted: u64,
}

impl ExchangeSeries {
    /// Shapes held, their cap, and those forgotten.
    pub(super) fn table(&self) -> crate::bounded::TableStat {
        crate::bounded::TableStat::new(
            "metric_handles",
            self.by_shape.len(),
            MAX_SHAPES,
            self.evicted,
        )
    }

    /// Remember the `handles` of `shape`.
    fn keep(&mut self, shape: &[u8], handles: Handles) {
        if let Some(known) = self.by_shape.get_mut(shape) {
            *known = handles;
            return;
        }
        if handles.iter().all(Option::is_none) {
            return;
        }
        if self.by_shape.len() >= MAX_SHAPES {
            self.evicted += self.by_shape.len() as u64;
            self.by_shape.clear();
        }
        self.by_shape.insert(shape.into(), handles);
    }
}

/// Everything the labels of `x`'s metrics are made of, as bytes in `out`: exchanges of one
/// shape update the same series.
fn shape(x: &Exchange, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[x.status as u8, x.requester as u8, x.transport as u8]);
    out.extend_from_slice(&x.error_code.map_or([0xff; 8], i64::to_le_bytes));
    out.push(x.error_code.is_some() as u8);
    out.extend_from_slice(&x.http_status.map_or(u32::MAX, u32::from).to_le_bytes());
    let (ns, pod) = k8s_labels(&x.server);
    for text in [
        Some(name(&x.server)),
        Some(name(&x.client)),
        Some(ns),
        Some(pod),
        x.derived.error_class,
        Some(x.method.as_str()),
        x.tool.as_deref(),
        x.resource_uri.as_deref(),
        x.prompt.as_deref(),
    ] {
        // Each text after its length (absent: a length no text has), so no two shapes
        // share their bytes.
        let len = text.map_or(u32::MAX, |t| t.len() as u32);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(text.unwrap_or("").as_bytes());
    }
}

/// One exchange's updates: through the handles of its shape where there are some, else by
/// its labels (looked up when first needed), keeping the handles that gives.
struct Update<'r, 'a> {
    r: &'r mut Registry,
    x: &'a Exchange,
    /// Status and error type ([`outcome`]).
    outcome: (&'static str, &'a str),
    /// The JSON-RPC error code as text.
    code: Option<&'a str>,
    labels: Option<Labels<'a>>,
    handles: Handles,
}

impl<'a> Update<'_, 'a> {
    fn labels(&mut self) -> Labels<'a> {
        *self
            .labels
            .get_or_insert_with(|| Labels::of(self.r, self.x, self.outcome))
    }

    /// Count one in the `slot` series of the counter `def`, whose labels are `labels`.
    fn inc<const N: usize>(
        &mut self,
        slot: Slot,
        def: &'static Def,
        labels: impl FnOnce(Labels<'a>) -> [Lv<'a>; N],
    ) {
        match self.handles[slot as usize] {
            Some(h) => self.r.inc_at(h, 1.0),
            None => {
                let lvs = labels(self.labels());
                self.handles[slot as usize] = self.r.inc_lv(def, &lvs, 1.0);
            }
        }
    }

    /// Observe `v` in the `slot` series of the histogram `def`, whose labels are `labels`.
    fn observe<const N: usize>(
        &mut self,
        slot: Slot,
        def: &'static Def,
        labels: impl FnOnce(Labels<'a>) -> [Lv<'a>; N],
        v: f64,
    ) {
        match self.handles[slot as usize] {
            Some(h) => self.r.observe_at(def, h, v),
            None => {
                let lvs = labels(self.labels());
                self.handles[slot as usize] = self.r.observe_lv(def, &lvs, v);
            }
        }
    }
}

/// The metrics of one exchange: those of its tool, resource or prompt, then those of every
/// request, then its messages.
fn exchange(r: &mut Registry, x: &Exchange) {
    let (status, error_type) = outcome(x);
    let code = x.error_code.map(|c| c.to_string());
    let mut shape_of_x = std::mem::take(&mut r.exchanges.shape);
    shape(x, &mut shape_of_x);
    let known = r.exchanges.by_shape.get(shape_of_x.as_slice()).copied();
    let mut u = Update {
        r,
        x,
        outcome: (status, &error_type),
        code: code.as_deref(),
        labels: None,
        handles: known.unwrap_or([None; SLOTS]),
    };
    match (x.method.as_str(), &x.resource_uri, &x.prompt) {
        ("tools/call", ..) if x.tool.is_some() => tool_call(&mut u),
        ("resources/read", Some(uri), _) => resource_read(&mut u, uri),
        ("prompts/get", _, Some(prompt)) => {
            u.inc(Slot::PromptGets, &defs::PROMPT_GETS, |l| {
                [prompt.as_str().into(), l.server, l.status, l.ns, l.pod]
            });
        }
        _ => {}
    }
    requests(&mut u);
    messages(&mut u);
    let handles = u.handles;
    if known != Some(handles) {
        r.exchanges.keep(&shape_of_x, handles);
    }
    r.exchanges.shape = shape_of_x;
}

/// The per-tool metrics of a `tools/call`.
fn tool_call(u: &mut Update<'_, '_>) {
    let x = u.x;
    u.inc(Slot::ToolCalls, &defs::TOOL_CALLS, |l| {
        [
            l.tool,
            l.server,
            l.client,
            l.status,
            l.error_type,
            l.class,
            l.ns,
            l.pod,
        ]
    });
    if let Some(d) = x.timing.duration_ms {
        u.observe(
            Slot::ToolDuration,
            &defs::TOOL_DURATION,
            |l| [l.tool, l.server, l.ns, l.pod],
            secs(d),
        );
    }
    if let Some(t) = x.derived.result_tokens_est {
        u.observe(
            Slot::ToolTokens,
            &defs::TOOL_TOKENS,
            |l| [l.tool, l.server],
            t as f64,
        );
    }
    if let Some(valid) = x.derived.schema_valid {
        u.inc(Slot::SchemaChecked, &defs::SCHEMA_CHECKED, |l| {
            [l.tool, l.server]
        });
        if !valid {
            u.inc(Slot::SchemaViolations, &defs::SCHEMA_VIOLATIONS, |l| {
                [l.tool, l.server]
            });
        }
    }
    if x.derived.unknown_tool == Some(true) {
        u.inc(Slot::UnknownTools, &defs::UNKNOWN_TOOLS, |l| {
            [l.server, l.client]
        });
    }
    if x.derived.repeat_of.is_some() {
        u.inc(Slot::RepeatedCalls, &defs::REPEATED_CALLS, |l| {
            [l.tool, l.server]
        });
    }
}

/// The per-resource metrics of a `resources/read`.
fn resource_read<'a>(u: &mut Update<'_, 'a>, uri: &'a str) {
    let x = u.x;
    u.inc(Slot::ResourceReads, &defs::RESOURCE_READS, |l| {
        [uri.into(), l.server, l.status, l.ns, l.pod]
    });
    if let Some(b) = x.derived.content_bytes {
        u.observe(
            Slot::ResourceBytes,
            &defs::RESOURCE_BYTES,
            |l| [l.server],
            b as f64,
        );
    }
    if x.derived.repeat_of.is_some() {
        u.inc(Slot::DuplicateReads, &defs::DUPLICATE_READS, |l| [l.server]);
    }
}

/// What every request counts, whatever its method: the request and its error, and each
/// watched side's operation time.
fn requests(u: &mut Update<'_, '_>) {
    let x = u.x;
    u.inc(Slot::Requests, &defs::REQUESTS, |l| {
        [l.method, l.server, l.status, l.error_type, l.ns, l.pod]
    });
    if let Some(code) = u.code {
        u.inc(Slot::Errors, &defs::ERRORS, |l| {
            [code.into(), l.method, l.server, l.ns, l.pod]
        });
    }
    if let Some(d) = x.timing.client_duration_ms {
        u.observe(
            Slot::ClientOperation,
            &defs::CLIENT_OPERATION,
            |l| [l.method, l.tool, l.error_type, l.server],
            secs(d),
        );
    }
    if let Some(d) = x.timing.server_duration_ms {
        u.observe(
            Slot::ServerOperation,
            &defs::SERVER_OPERATION,
            |l| [l.method, l.tool, l.error_type, l.server, l.ns, l.pod],
            secs(d),
        );
    }
}

/// The request and its response (or error) as messages: counts and sizes by direction.
fn messages(u: &mut Update<'_, '_>) {
    let x = u.x;
    let request: Lv<'_> = "request".into();
    u.inc(Slot::RequestMessages, &defs::MESSAGES, |l| {
        [l.request_dir, request, l.transport]
    });
    u.observe(
        Slot::RequestSize,
        &defs::MESSAGE_SIZE,
        |l| [l.request_dir, request],
        x.request_bytes as f64,
    );
    if let Some(b) = x.response_bytes {
        u.inc(Slot::ResponseMessages, &defs::MESSAGES, |l| {
            [l.response_dir, l.response_kind, l.transport]
        });
        u.observe(
            Slot::ResponseSize,
            &defs::MESSAGE_SIZE,
            |l| [l.response_dir, l.response_kind],
            b as f64,
        );
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
            super::health::session_end(r, end);
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
        Signal::Exchange(x) => {
            exchange(r, x);
            super::security::findings(r, &x.findings);
        }
        Signal::Notification(n) => notification(r, n),
        Signal::LlmCall(c) => {
            super::agent::llm_call(r, c);
            super::security::findings(r, &c.findings);
        }
        Signal::Event(e) => event(r, e),
        Signal::Http(h) => super::health::http_request(r, h),
        Signal::Servers(rep) => super::health::servers(r, rep),
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::output::prometheus::render;

    /// Exchanges of a few shapes, some repeated, some with more label values than the
    /// limit keeps.
    fn exchanges() -> Vec<Exchange> {
        let mut all = Vec::new();
        for i in 0..40u32 {
            let mut x = Exchange {
                method: ["tools/call", "resources/read", "prompts/get", "ping"][i as usize % 4]
                    .into(),
                tool: Some(format!("tool{}", i % 5)),
                resource_uri: Some(format!("file:///{i}")),
                prompt: Some(format!("p{}", i % 3)),
                status: [Status::Ok, Status::Error, Status::ToolError][i as usize % 3],
                error_code: (i % 6 == 1).then_some(-32602),
                http_status: (i % 9 == 4).then_some(503),
                requester: if i % 8 == 0 {
                    Role::Server
                } else {
                    Role::Client
                },
                request_bytes: 100 + u64::from(i),
                response_bytes: (i % 5 != 0).then_some(40),
                ..Default::default()
            };
            x.server.name = Some(format!("srv{}", i % 4));
            x.client.comm = "node".into();
            x.timing.duration_ms = Some(f64::from(i) / 3.0);
            x.timing.client_duration_ms = (i % 2 == 0).then_some(1.5);
            x.timing.server_duration_ms = Some(0.25);
            x.derived.schema_valid = (i % 3 != 2).then_some(i % 2 == 0);
            x.derived.unknown_tool = Some(i % 10 == 3);
            x.derived.repeat_of = (i % 4 == 1).then(|| "1".into());
            x.derived.result_tokens_est = Some(u64::from(i) * 10);
            x.derived.content_bytes = Some(2048);
            x.derived.error_class = (i % 3 == 1).then_some("client_misuse");
            all.push(x);
        }
        // Again, in another order: every shape now has its handles.
        let again: Vec<Exchange> = all.iter().rev().cloned().collect();
        all.extend(again);
        all
    }

    /// The exposition and the hook's observations after `xs`, the cache of shapes
    /// forgotten before each exchange when `cached` is false.
    fn outputs(xs: &[Exchange], limit: usize, cap: usize, cached: bool) -> (String, String) {
        let mut r = Registry::new(limit, cap);
        let seen = Arc::new(Mutex::new(String::new()));
        let hook_seen = seen.clone();
        r.set_observe_hook(Box::new(move |def, labels, v| {
            let line = format!("{} {labels:?} {v}\n", def.name);
            hook_seen.lock().unwrap().push_str(&line);
        }));
        for x in xs {
            if !cached {
                r.exchanges = ExchangeSeries::default();
            }
            record(&mut r, &Signal::Exchange(x.clone()));
        }
        let text = render(&r.snapshot());
        let seen = seen.lock().unwrap().clone();
        (text, seen)
    }

    /// Updates through handles give the exposition, overflow counts and histogram
    /// observations that looking every label up gives, with and without labels and series
    /// past their caps.
    #[test]
    fn handles_change_nothing_reported() {
        let xs = exchanges();
        for (limit, cap) in [(100, 10_000), (8, 10_000), (8, 25), (100, 5)] {
            let by_labels = outputs(&xs, limit, cap, false);
            let by_handles = outputs(&xs, limit, cap, true);
            assert_eq!(by_handles.0, by_labels.0, "limit {limit}, cap {cap}");
            assert_eq!(by_handles.1, by_labels.1, "limit {limit}, cap {cap}");
            if limit == 8 {
                assert!(by_handles.0.contains("mcptap_label_overflow_total{"));
            }
            if cap == 5 {
                assert!(by_handles.0.contains("mcptap_series_overflow_total{"));
            }
        }
    }
}
