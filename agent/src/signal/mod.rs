//! Stage 5, signals: the one internal model of what mcptap reports. Every exporter (console,
//! JSON lines, and the metric and trace exporters) encodes these same values; none of them
//! looks further upstream. [`metrics`] defines every metric once; [`telemetry`] derives them
//! from the signals.

use serde::Serialize;

/// One side of a conversation, as reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// Process id, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Short command name ("" when unknown).
    pub comm: String,
    /// Executable path ("" when unknown).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub exe: String,
    /// `clientInfo.name` / `serverInfo.name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `clientInfo.version` / `serverInfo.version`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Container and pod, when the process runs in one: written flat into the object
    /// (`container_id`, `k8s_pod`, ...; see [`crate::enrich::k8s::Identity`]).
    #[serde(flatten)]
    pub k8s: Option<std::sync::Arc<crate::enrich::k8s::Identity>>,
}

/// How an exchange ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A result.
    #[default]
    Ok,
    /// A JSON-RPC error object.
    Error,
    /// A result with `isError: true` (the tool failed).
    ToolError,
    /// No response: timed out, or a side exited first.
    NoResponse,
    /// The requester sent `notifications/cancelled`.
    Cancelled,
}

impl Status {
    /// The name used in every output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::ToolError => "tool_error",
            Status::NoResponse => "no_response",
            Status::Cancelled => "cancelled",
        }
    }
}

/// Which MCP role sent a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The MCP client.
    Client,
    /// The MCP server.
    Server,
    /// Not yet known.
    #[default]
    Unknown,
}

/// A request and its response (or the lack of one), seen from one or both sides.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Exchange {
    /// Wall-clock nanoseconds when the request was first seen.
    #[serde(skip)]
    pub ts_ns: u64,
    /// `stdio`, `unix`, `http`, `sse` or `tcp`.
    pub transport: &'static str,
    /// Session identity: `stdio:CLIENTPID-SERVERPID`, or the HTTP session id; absent for
    /// stateless HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// JSON-RPC method.
    pub method: String,
    /// The id as it appeared on the wire (raw JSON text).
    #[serde(skip)]
    pub id: String,
    /// `tools/call` tool name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// `resources/read` URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_uri: Option<String>,
    /// `prompts/get` prompt name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// How it ended.
    pub status: Status,
    /// JSON-RPC error code when `status` is `error` (absent when the error was HTTP-level).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<i64>,
    /// Status of the HTTP response to the request (network transports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Which role sent the request (servers send sampling, roots and elicitation requests).
    pub requester: Role,
    /// Duration in milliseconds: the client's view when it was seen, else the server's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Request sent to response received, on the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_duration_ms: Option<f64>,
    /// Request received to response sent, on the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_duration_ms: Option<f64>,
    /// The MCP client.
    pub client: Endpoint,
    /// The MCP server.
    pub server: Endpoint,
    /// Negotiated (or `_meta`-declared) protocol version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
    /// Size of the request message in bytes.
    pub request_bytes: u64,
    /// Size of the response message in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<u64>,
    /// Server address: IP, or Unix socket path (network transports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_address: Option<String>,
    /// Server port (TCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_port: Option<u16>,
    /// Client address (network transports).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    /// Client port (TCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_port: Option<u16>,
    /// The messages travelled inside TLS (HTTPS), captured as plaintext from OpenSSL; written
    /// only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// For failures: `client_misuse`, `server_failure` or `other`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_class: Option<&'static str>,
    /// Whether the arguments satisfied the tool's advertised `inputSchema` (absent when the
    /// session's `tools/list` was not seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_valid: Option<bool>,
    /// Where they did not: instance path and schema keyword, e.g. `/a: type`. Never a value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_error: Option<String>,
    /// The tool was not in the server's advertised list (absent when no list was seen).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_tool: Option<bool>,
    /// Id of an earlier identical call (same tool or URI and canonical arguments) in the
    /// session: a retry loop or a duplicate read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_of: Option<String>,
    /// Estimated tokens of a tool result (its text's JSON length / 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result_tokens_est: Option<u64>,
    /// Size of a resource's contents (resources/read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_bytes: Option<u64>,
    /// Arguments, only with `--payloads`, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    /// Result, only with `--payloads`, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// W3C trace context the request carried in `_meta`.
    #[serde(skip)]
    pub traceparent: Option<String>,
    /// W3C trace state the request carried in `_meta`.
    #[serde(skip)]
    pub tracestate: Option<String>,
    /// Wall-clock ns the client sent the request (spans).
    #[serde(skip)]
    pub client_start_ns: Option<u64>,
    /// Wall-clock ns the server received the request (spans).
    #[serde(skip)]
    pub server_start_ns: Option<u64>,
}

/// A notification, reported once even when both sides saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notification {
    /// Wall-clock nanoseconds when it was first seen.
    #[serde(skip)]
    pub ts_ns: u64,
    /// Transport.
    pub transport: &'static str,
    /// Session identity (as for exchanges).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Method.
    pub method: String,
    /// Which role sent it.
    pub from: Role,
    /// It travelled inside TLS; written only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// The MCP client.
    pub client: Endpoint,
    /// The MCP server.
    pub server: Endpoint,
    /// Size in bytes.
    pub bytes: u64,
}

/// Something about the capture itself: loss, corruption, resynchronisation, lifecycle.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Wall-clock nanoseconds.
    #[serde(skip)]
    pub ts_ns: u64,
    /// What happened (`stream_corruption`, `stream_gap`, `kernel_loss`, ...).
    pub event: &'static str,
    /// Process, when the event is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its comm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// File descriptor, when the event is about a stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// Session, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Event-specific details.
    #[serde(flatten)]
    pub detail: serde_json::Map<String, serde_json::Value>,
}

impl Event {
    /// An event with no process and no details yet.
    pub fn new(ts_ns: u64, event: &'static str) -> Self {
        Event {
            ts_ns,
            event,
            pid: None,
            comm: None,
            fd: None,
            session: None,
            detail: serde_json::Map::new(),
        }
    }

    /// Add a detail.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.detail.insert(key.to_string(), value.into());
        self
    }
}

/// Everything mcptap reports.
#[derive(Clone, Debug, PartialEq)]
// Exchanges are most of the signals; boxing them would add an allocation to each.
#[allow(clippy::large_enum_variant)]
pub enum Signal {
    /// An exchange.
    Exchange(Exchange),
    /// A notification.
    Notification(Notification),
    /// An agent event.
    Event(Event),
}

/// A consumer of signals: an exporter.
pub trait Sink {
    /// Take one signal.
    fn emit(&mut self, signal: &Signal);
    /// Write out anything buffered.
    fn flush(&mut self) {}
    /// Write out everything and stop (end of input); the sink takes no more signals.
    fn close(&mut self) {
        self.flush();
    }
    /// What the sink failed to deliver so far, by exporter name: (failed attempts, items
    /// dropped). Exported as `mcptap_export_failures_total` and `mcptap_export_dropped_total`.
    fn failures(&self) -> Vec<(&'static str, u64, u64)> {
        Vec::new()
    }
}

impl Sink for Vec<Signal> {
    fn emit(&mut self, signal: &Signal) {
        self.push(signal.clone());
    }
}
