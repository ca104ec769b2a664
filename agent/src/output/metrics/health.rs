//! Server health metrics: what the processes serving MCP use (named over OTLP by the
//! OpenTelemetry process conventions: `process.cpu.time`, `process.memory.usage`,
//! `process.unix.file_descriptor.count`, `process.thread.count`, with the server as an
//! attribute), whether each server name is up, the HTTP requests MCP servers serve, and the
//! errors of each ended session.

use super::record::name;
use super::{Def, Kind, LATENCY, Registry};
use crate::signal::health::{HttpRequest, ServerReport};
use crate::signal::{Endpoint, SessionEnd};

/// Errors per ended session.
pub const ERRORS_PER_SESSION: &[f64] = &[0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 1000.0];

def!(
    CPU,
    "mcp_server_process_cpu_seconds_total",
    Kind::Counter,
    ["server", "k8s_namespace", "k8s_pod", "k8s_container"],
    "process.cpu.time",
    "s",
    [
        "server",
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.container.name"
    ],
    "CPU time (user and system) of the processes serving MCP under a server name in one container: those alive, plus those that exited while the group lived."
);
def!(
    RESIDENT,
    "mcp_server_process_resident_memory_bytes",
    Kind::Gauge,
    ["server", "k8s_namespace", "k8s_pod", "k8s_container"],
    "process.memory.usage",
    "By",
    [
        "server",
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.container.name"
    ],
    "Resident memory of the live processes serving MCP under a server name in one container, summed."
);
def!(
    OPEN_FDS,
    "mcp_server_process_open_fds",
    Kind::Gauge,
    ["server", "k8s_namespace", "k8s_pod", "k8s_container"],
    "process.unix.file_descriptor.count",
    "{file_descriptor}",
    [
        "server",
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.container.name"
    ],
    "Open file descriptors of those processes, summed."
);
def!(
    FD_USAGE,
    "mcp_server_process_fd_usage_ratio",
    Kind::Gauge,
    ["server", "k8s_namespace", "k8s_pod", "k8s_container"],
    "mcp.server.process.file_descriptor.utilization",
    "1",
    [
        "server",
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.container.name"
    ],
    "The highest share of its open-file limit (soft RLIMIT_NOFILE) any of those processes uses, 0 to 1."
);
def!(
    THREADS,
    "mcp_server_process_threads",
    Kind::Gauge,
    ["server", "k8s_namespace", "k8s_pod", "k8s_container"],
    "process.thread.count",
    "{thread}",
    [
        "server",
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.container.name"
    ],
    "Threads of those processes, summed."
);
def!(
    PROCESSES,
    "mcp_server_processes",
    Kind::Gauge,
    ["server"],
    "mcp.server.processes",
    "{process}",
    ["server"],
    "Live processes serving MCP under a server name."
);
def!(
    UP,
    "mcp_server_up",
    Kind::Gauge,
    ["server"],
    "mcp.server.up",
    "1",
    ["server"],
    "1 while a process serving the server name lives; 0 from the exit of its last one until another appears. The series goes --server-forget after it fell to 0."
);
def!(
    RESTARTS,
    "mcp_server_restarts_total",
    Kind::Counter,
    ["server"],
    "mcp.server.restarts",
    "{restart}",
    ["server"],
    "A server name's process replaced by a new one: a new process serving the name after one of its processes exited."
);
def!(
    HTTP_REQUESTS,
    "mcp_http_requests_total",
    Kind::Counter,
    ["server", "method", "endpoint", "status"],
    "mcp.http.server.requests",
    "{request}",
    [
        "server",
        "http.request.method",
        "http.route",
        "http.response.status_code"
    ],
    "HTTP requests on MCP connections (Streamable HTTP and legacy SSE: POSTs, event-stream GETs, DELETEs), counted once, from the server's view when it is watched; endpoint is the path with the query dropped and identifiers collapsed to {id}; status none when the connection ended before an answer."
);
def!(
    HTTP_DURATION,
    "mcp_http_request_duration_seconds",
    Kind::Histogram(LATENCY),
    ["server", "method", "endpoint"],
    "http.server.request.duration",
    "s",
    ["server", "http.request.method", "http.route"],
    "First byte of the request to the last of the response (an event-stream GET: its whole life)."
);
def!(
    SESSION_ERRORS,
    "mcp_session_errors",
    Kind::Histogram(ERRORS_PER_SESSION),
    ["transport", "server"],
    "mcp.session.errors",
    "{error}",
    ["network.transport", "server"],
    "Failed exchanges (JSON-RPC errors, tool errors, no response) of each ended session: whether errors spread over sessions or gather in a few."
);

/// The labels of a server's process metrics: name, namespace, pod, container.
fn group_labels(e: &Endpoint) -> Vec<String> {
    let k = e.k8s.as_deref();
    let field = |f: fn(&crate::capture::cgroup::Identity) -> &Option<String>| {
        k.and_then(|k| f(k).clone()).unwrap_or_default()
    };
    vec![
        name(e).to_string(),
        field(|k| &k.namespace),
        field(|k| &k.pod),
        field(|k| &k.container),
    ]
}

/// A round of the health stage: every server name's state, and what each group uses when it
/// sampled. Series of names and groups no longer reported go.
pub fn servers(r: &mut Registry, rep: &ServerReport) {
    let names = |f: fn(&crate::signal::health::ServerState) -> f64| {
        rep.servers
            .iter()
            .map(move |s| (vec![s.server.clone()], f(s)))
    };
    r.replace_all(&UP, names(|s| if s.up { 1.0 } else { 0.0 }));
    r.replace_all(&PROCESSES, names(|s| s.processes as f64));
    r.replace_all(&RESTARTS, names(|s| s.restarts as f64));
    let Some(usage) = &rep.usage else {
        return;
    };
    type Get = fn(&crate::signal::health::ServerUsage) -> f64;
    let metrics: [(&'static Def, Get); 5] = [
        (&CPU, |u| u.cpu_seconds),
        (&RESIDENT, |u| u.resident_bytes as f64),
        (&OPEN_FDS, |u| u.open_fds as f64),
        (&FD_USAGE, |u| u.fd_usage_ratio),
        (&THREADS, |u| u.threads as f64),
    ];
    for (def, get) in metrics {
        r.replace_all(def, usage.iter().map(|u| (group_labels(&u.server), get(u))));
    }
}

/// One HTTP request an MCP server served.
pub fn http_request(r: &mut Registry, h: &HttpRequest) {
    let server = name(&h.server);
    let mut code = itoa::Buffer::new();
    let status = match h.http_status {
        Some(s) => code.format(s),
        None => "none",
    };
    let method = h.http_method.as_str();
    let endpoint = h.endpoint.as_str();
    r.inc(&HTTP_REQUESTS, &[server, method, endpoint, status], 1.0);
    r.observe(
        &HTTP_DURATION,
        &[server, method, endpoint],
        h.duration_ms / 1000.0,
    );
}

/// A session ended: its errors.
pub fn session_end(r: &mut Registry, end: &SessionEnd) {
    r.observe(
        &SESSION_ERRORS,
        &[end.transport.as_str(), name(&end.server)],
        end.errors as f64,
    );
}
