//! Stage 6, signals: the one internal model of what mcptap reports. Every exporter (console,
//! JSON lines, and the metric and trace exporters) encodes these same values; none of them
//! looks further upstream. Process identity lives here too ([`process`]), and [`Ctx`] is what
//! the stages that make signals work with.

pub mod health;
pub mod llm;
pub mod process;
pub mod security;

use serde::Serialize;

use crate::capture::host::Host;
use crate::capture::recording::ClockAnchor;

/// What every stage is handed besides its own state while it works on a record: the host to
/// ask about processes and pipes, what is known of the processes, the clock that turns kernel
/// times into wall-clock times, and the queue finished signals go to.
pub struct Ctx<'a> {
    /// The host (live procfs, or a recording's answers).
    pub host: &'a mut dyn Host,
    /// The processes named so far.
    pub procs: &'a mut process::Processes,
    /// Wall clock at a monotonic instant.
    pub clock: ClockAnchor,
    /// Where signals go.
    pub out: &'a mut Vec<Signal>,
}

impl Ctx<'_> {
    /// Wall-clock nanoseconds of a CLOCK_MONOTONIC time.
    pub fn wall(&self, mono: u64) -> u64 {
        self.clock.wall_ns(mono)
    }

    /// An event about a stream of process `tgid` (fd `fd`) at monotonic `ts`.
    pub fn stream_event(&self, what: What, tgid: u32, fd: i32, ts: u64) -> Event {
        Event {
            pid: Some(tgid),
            comm: self.procs.get(tgid).map(|p| p.comm.clone()),
            fd: Some(fd),
            ..Event::new(self.wall(ts), what)
        }
    }
}

/// How an MCP conversation travelled: the same name in every output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// A message per line over pipes or the Unix socketpairs a Node parent hands its child.
    #[default]
    Stdio,
    /// A named Unix socket: a message per line, or HTTP over it.
    Unix,
    /// Streamable HTTP (and stateless HTTP).
    Http,
    /// The legacy HTTP+SSE transport (2024-11-05).
    Sse,
    /// Newline-delimited JSON over TCP (no standard transport; some servers speak it).
    Tcp,
    /// A JSON-RPC message per WebSocket text message (subprotocol `mcp`).
    #[serde(rename = "websocket")]
    WebSocket,
}

/// The TLS library whose plaintext mcptap read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsLibrary {
    /// OpenSSL (and forks that keep its names).
    OpenSsl,
    /// GnuTLS.
    GnuTls,
    /// Go's `crypto/tls`.
    Go,
    /// BoringSSL linked into a stripped binary (Bun).
    BoringSsl,
    /// rustls.
    Rustls,
}

impl TlsLibrary {
    /// Its name in records, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsLibrary::OpenSsl => "openssl",
            TlsLibrary::GnuTls => "gnutls",
            TlsLibrary::Go => "go",
            TlsLibrary::BoringSsl => "boringssl",
            TlsLibrary::Rustls => "rustls",
        }
    }

    /// The library a capture record's `tls_lib` names.
    pub fn from_abi(b: u8) -> Option<TlsLibrary> {
        match b {
            mcptap_abi::tls_lib::OPENSSL => Some(TlsLibrary::OpenSsl),
            mcptap_abi::tls_lib::GNUTLS => Some(TlsLibrary::GnuTls),
            mcptap_abi::tls_lib::GO => Some(TlsLibrary::Go),
            mcptap_abi::tls_lib::BORINGSSL => Some(TlsLibrary::BoringSsl),
            mcptap_abi::tls_lib::RUSTLS => Some(TlsLibrary::Rustls),
            _ => None,
        }
    }
}

/// The HTTP version a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum HttpVersion {
    /// HTTP/1.0 or HTTP/1.1.
    #[serde(rename = "1.1")]
    Http11,
    /// HTTP/2 (over TLS with ALPN `h2`, or cleartext with prior knowledge).
    #[serde(rename = "2")]
    Http2,
}

impl HttpVersion {
    /// The OpenTelemetry `network.protocol.version`.
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http11 => "1.1",
            HttpVersion::Http2 => "2",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Transport {
    /// The name used in every output.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Stdio => "stdio",
            Transport::Unix => "unix",
            Transport::Http => "http",
            Transport::Sse => "sse",
            Transport::Tcp => "tcp",
            Transport::WebSocket => "websocket",
        }
    }

    /// The OpenTelemetry `network.transport`.
    pub fn network(self) -> &'static str {
        match self {
            Transport::Stdio => "pipe",
            Transport::Unix => "unix",
            Transport::Http | Transport::Sse | Transport::Tcp | Transport::WebSocket => "tcp",
        }
    }

    /// Whether its messages travel in HTTP requests and replies.
    pub fn is_http(self) -> bool {
        matches!(self, Transport::Http | Transport::Sse)
    }
}

/// Why bytes are missing from a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The kernel lost data of this fd (ring buffer full, fault, missed syscall exit).
    KernelLoss,
    /// The kernel stopped shipping a syscall part-way (per-syscall limit or fault).
    Truncated,
    /// A syscall's chunks did not arrive complete and in order.
    MissingChunk,
    /// Two threads' syscalls on one fd interleaved their chunks.
    Interleaved,
    /// The kernel forgot this fd's state (its LRU map evicted the entry), and with it maybe
    /// a mark of lost bytes: the stream resynchronises to be safe.
    StateEvicted,
    /// The agent's budget for buffered bytes (`--max-buffered-bytes`) was spent: the
    /// partial message of the stream that passed it was dropped.
    BufferBudget,
}

impl GapReason {
    /// Name used in events and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            GapReason::KernelLoss => "kernel_loss",
            GapReason::Truncated => "truncated",
            GapReason::MissingChunk => "missing_chunk",
            GapReason::Interleaved => "interleaved",
            GapReason::StateEvicted => "state_evicted",
            GapReason::BufferBudget => "buffer_budget",
        }
    }
}

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
    /// (`container_id`, `k8s_pod`, ...; see [`crate::capture::cgroup::Identity`]).
    #[serde(flatten)]
    pub k8s: Option<std::sync::Arc<crate::capture::cgroup::Identity>>,
}

impl Endpoint {
    /// Process `pid` as the process table knows it (no MCP identity).
    pub fn of_process(pid: u32, procs: &process::Processes) -> Endpoint {
        match procs.get(pid) {
            Some(p) => Endpoint::of_info(p),
            None => Endpoint {
                pid: Some(pid),
                ..Default::default()
            },
        }
    }

    /// The process `info` describes (no MCP identity).
    pub fn of_info(info: &crate::capture::host::ProcInfo) -> Endpoint {
        Endpoint {
            pid: Some(info.pid),
            comm: info.comm.clone(),
            exe: info.exe.clone(),
            name: None,
            version: None,
            k8s: info.k8s.clone(),
        }
    }
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
///
/// A record of parts (as Pixie's HTTP record is): the exchange itself, then its timing,
/// network, derived signals, agentic link, payload and trace context, each written flat into
/// the JSON line (`#[serde(flatten)]`), so the JSONL schema does not depend on the grouping.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Exchange {
    /// Wall-clock nanoseconds when the request was first seen.
    #[serde(skip)]
    pub ts_ns: u64,
    /// `stdio`, `unix`, `http`, `sse` or `tcp`.
    pub transport: Transport,
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
    /// How long it took.
    #[serde(flatten)]
    pub timing: Timing,
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
    /// Where it travelled: the connection's ends and TLS (network transports).
    #[serde(flatten)]
    pub network: Network,
    /// What mcptap worked out beyond the outcome (never a value).
    #[serde(flatten)]
    pub derived: Derived,
    /// The agentic layer's names for it: the task and turn whose model asked for it.
    #[serde(flatten)]
    pub agent: AgentLink,
    /// Argument and result values, only with `--payloads`, secrets redacted.
    #[serde(flatten)]
    pub payload: Payload,
    /// What its spans hang from, and what links it to a model's tool call (not written in
    /// JSON lines).
    #[serde(skip)]
    pub trace: TraceContext,
    /// What the security rules found in it (written as their own `finding` lines).
    #[serde(skip)]
    pub findings: Vec<security::Finding>,
}

/// How long it took, from each side watched.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timing {
    /// Duration in milliseconds: the client's view when it was seen, else the server's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Request sent to response received, on the client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_duration_ms: Option<f64>,
    /// Request received to response sent, on the server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_duration_ms: Option<f64>,
    /// Wall-clock ns the client sent the request (spans).
    #[serde(skip)]
    pub client_start_ns: Option<u64>,
    /// Wall-clock ns the server received the request (spans).
    #[serde(skip)]
    pub server_start_ns: Option<u64>,
}

/// Where it travelled: the connection's ends and TLS (network transports).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Network {
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
    /// The HTTP version that carried them: `1.1` or `2` (HTTP, and WebSocket's handshake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_version: Option<HttpVersion>,
    /// The TLS library the client's plaintext was read from (`openssl`, `gnutls`, `go`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls_library: Option<TlsLibrary>,
    /// The TLS library the server's plaintext was read from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_tls_library: Option<TlsLibrary>,
}

/// What mcptap worked out beyond the outcome (never a value).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Derived {
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
}

/// The agentic layer's names for it: the task and turn whose model asked for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AgentLink {
    /// The agent task whose model asked for this tool call (the agentic layer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The turn of that task that asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn: Option<u32>,
}

/// Argument and result values, only with `--payloads`, secrets redacted.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Payload {
    /// Arguments, only with `--payloads`, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    /// Result, only with `--payloads`, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// What its spans hang from, and what links it to a model's tool call (not written in JSON
/// lines).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TraceContext {
    /// Canonical hash of a tool call's arguments.
    pub args_hash: Option<u64>,
    /// The agentic layer's `execute_tool` span this call ran for, as a W3C traceparent: the
    /// CLIENT span's parent (ahead of one from `_meta`).
    pub agent_parent: Option<String>,
    /// W3C trace context the request carried in `_meta` (or, for a tool call a model asked
    /// for, the context of the agentic layer's `execute_tool` span).
    pub traceparent: Option<String>,
    /// W3C trace state the request carried in `_meta`.
    pub tracestate: Option<String>,
}

/// JSON text written into the output as it is (a JSON-RPC id: a number stays a number).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawJson(pub String);

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match serde_json::value::RawValue::from_string(self.0.clone()) {
            Ok(raw) => raw.serialize(s),
            Err(_) => s.serialize_str(&self.0),
        }
    }
}

/// How a model call ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmStatus {
    /// A whole reply.
    #[default]
    Ok,
    /// An API error (an error body, or an error event in the stream).
    Error,
    /// The reply stopped before its end (the connection closed, or its process exited).
    CutOff,
}

impl LlmStatus {
    /// The name used in every output.
    pub fn as_str(self) -> &'static str {
        match self {
            LlmStatus::Ok => "ok",
            LlmStatus::Error => "error",
            LlmStatus::CutOff => "cut_off",
        }
    }
}

/// The MCP exchange a model's tool call became.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ExchangeRef {
    /// Its session, as in the exchange record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Its JSON-RPC id, as on the wire.
    pub id: RawJson,
}

/// A tool call a model asked for, and where it went.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LlmToolCall {
    /// Its id (`toolu_...`, `call_...`), where the API gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The tool's name as the model wrote it.
    pub name: String,
    /// The Responses API's namespace of the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The tool was not among those the request offered.
    pub hallucinated: bool,
    /// The MCP `tools/call` it became, or null: served by the host itself, hallucinated, or
    /// never run.
    pub exchange: Option<ExchangeRef>,
    /// The arguments, only with `--payloads`, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Value>,
    /// Canonical hash of the arguments (matches the MCP call's).
    #[serde(skip)]
    pub args_hash: Option<u64>,
    /// When the tool ran, as far as it is known (wall-clock ns): from the reply that asked
    /// for it to its MCP exchange's end, or to the request that carried its result back.
    #[serde(skip)]
    pub window: Option<(u64, u64)>,
}

/// A tool result a model request carried back.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LlmToolResult {
    /// The id of the tool call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The API's error flag; null where the API has none (then see `failed`).
    pub is_error: Option<bool>,
    /// The tool call it answers failed: the API's flag, its MCP exchange's outcome, or a
    /// hallucinated tool (written only when true).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    /// The tool call it answers ran as an MCP tool: its name there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Input tokens this result cost the model (its share of the prompt's growth), when
    /// the turn's usage tells.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// The MCP server that produced it (for the tokens-per-tool metric).
    #[serde(skip)]
    pub server: Option<String>,
}

/// What the agentic layer needs of a model call and does not report: fingerprints of the
/// conversation, the results by position, times.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LlmFacts {
    /// The request's first byte (CLOCK_MONOTONIC ns).
    pub start_ns: u64,
    /// The reply's last byte, or when it was cut off.
    pub end_ns: u64,
    /// Fingerprint of the system prompt (0: none).
    pub system: u64,
    /// Fingerprint of each message or input item.
    pub messages: Vec<u64>,
    /// The tool results the request carried, with their positions and sizes.
    pub results: Vec<llm::CarriedResult>,
    /// Responses API: the response this one continues.
    pub previous_response_id: Option<String>,
    /// Why the model stopped, normalised.
    pub stop: llm::Stop,
    /// The trace of its task (the agentic layer's spans).
    pub trace: Option<u128>,
}

/// One call to a model API, seen from the process that made it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LlmCall {
    /// Wall-clock nanoseconds of the request's first byte.
    #[serde(skip)]
    pub ts_ns: u64,
    /// `anthropic`, `openai` or `gemini`.
    pub provider: Option<llm::Provider>,
    /// `messages`, `chat_completions`, `responses` or `generate_content`.
    pub api: Option<llm::Api>,
    /// The model asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The model that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_model: Option<String>,
    /// The reply's id (`msg_...`, `chatcmpl-...`, `resp_...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
    /// The reply was streamed.
    pub stream: bool,
    /// How it ended.
    pub status: LlmStatus,
    /// The reply's HTTP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// For errors: `rate_limit`, `context_overflow`, `overloaded`, `auth`,
    /// `invalid_request` or `server`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_type: Option<llm::ErrorKind>,
    /// The provider's own error type or code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// `Retry-After` of a refused call, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_s: Option<u32>,
    /// Request's first byte to the reply's last (or to the cut).
    pub duration_ms: f64,
    /// Request's first byte to the first generated content of a streamed reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Usage as the reply reported it.
    #[serde(flatten)]
    pub usage: llm::Usage,
    /// The provider's own stop reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The tools the request offered, by the names the model sees.
    pub tools_offered: Vec<String>,
    /// The tool calls the model asked for.
    pub tool_calls: Vec<LlmToolCall>,
    /// The tool results the request carries back to the model for the first time (a request
    /// repeats the whole conversation; older results were reported with their own turn).
    pub tool_results: Vec<LlmToolResult>,
    /// The task (one conversation thread's run to an answer) this call belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// Its turn in the task, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn: Option<u32>,
    /// It repeats the previous call of its thread, which failed or was cut off.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retry: bool,
    /// Tool results this request carries back for the first time that are errors: the API's
    /// flag, the MCP exchange's outcome, or an answer to a hallucinated tool.
    #[serde(skip_serializing_if = "is_zero")]
    pub errors_fed_back: u32,
    /// Those errors, when the first tool call of this reply succeeded.
    #[serde(skip_serializing_if = "is_zero")]
    pub self_corrections: u32,
    /// Bytes of the request body.
    pub request_bytes: u64,
    /// Bytes of the reply body.
    pub response_bytes: u64,
    /// The process that made the call.
    pub process: Endpoint,
    /// The API's address (IP or Unix socket path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_address: Option<String>,
    /// The API's port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_port: Option<u16>,
    /// It travelled inside TLS; written only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// The HTTP version that carried it: `1.1` or `2`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_version: Option<HttpVersion>,
    /// The TLS library its plaintext was read from, when TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_library: Option<TlsLibrary>,
    /// The last message's text, only with `--payloads`, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The generated text, only with `--payloads`, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion: Option<String>,
    /// What the agentic layer works with.
    #[serde(skip)]
    pub facts: LlmFacts,
    /// What the security rules found in it (written as their own `finding` lines).
    #[serde(skip)]
    pub findings: Vec<security::Finding>,
}

/// A notification, reported once even when both sides saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Notification {
    /// Wall-clock nanoseconds when it was first seen.
    #[serde(skip)]
    pub ts_ns: u64,
    /// Transport.
    pub transport: Transport,
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

/// Something about the capture itself (loss, corruption, resynchronisation) or about a
/// session's life (its start, handshake and end, a drifting tool list, a hung call).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Wall-clock nanoseconds.
    #[serde(skip)]
    pub ts_ns: u64,
    /// What happened, with what is known of it; written as `"event": NAME` and its fields.
    #[serde(flatten)]
    pub what: What,
    /// Process, when the event is about one of its streams.
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
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The events, each with its own fields (the README's table documents them).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum What {
    /// Something on an MCP stream that is not a JSON-RPC message, or HTTP framing that broke.
    StreamCorruption {
        /// Parse class (`not_json`, `not_jsonrpc`, ...) or `http`.
        reason: &'static str,
        /// Bytes of the line or body.
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
        /// It came before the stream's first message.
        #[serde(skip_serializing_if = "is_false")]
        before_first_message: bool,
        /// What broke (HTTP).
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<&'static str>,
    },
    /// Bytes of an MCP stream were lost; framing resynchronises.
    StreamGap {
        /// Why (`kernel_loss`, `truncated`, ...).
        reason: GapReason,
        /// Buffered bytes dropped to resynchronise.
        dropped_bytes: u64,
        /// Bytes known to be missing.
        #[serde(skip_serializing_if = "Option::is_none")]
        missing_bytes: Option<u64>,
    },
    /// A message over `--max-message-bytes`, dropped.
    MessageTruncated {
        /// Its length.
        bytes: u64,
        /// The limit.
        limit: u64,
        /// Its method, when readable.
        #[serde(skip_serializing_if = "Option::is_none")]
        method: Option<String>,
    },
    /// A stream ended inside a message.
    StreamUnterminated {
        /// Bytes of the partial message.
        bytes: u64,
    },
    /// A kernel loss counter rose.
    KernelLoss {
        /// The counter's name.
        counter: &'static str,
        /// By how much.
        delta: u64,
        /// Its total.
        total: u64,
    },
    /// A response whose request was never seen.
    OrphanResponse {
        /// The id, as JSON text.
        id: String,
    },
    /// A request reused the id of one still open.
    DuplicateId {
        /// The id, as JSON text.
        id: String,
        /// The method.
        method: String,
    },
    /// An error response with `id: null`.
    ErrorWithoutId {
        /// Its code.
        error_code: i64,
    },
    /// Requests still open when mcptap stopped.
    InFlightAtStop {
        /// How many.
        exchanges: u64,
    },
    /// initialize → result → `notifications/initialized`, or how it failed.
    Handshake(Handshake),
    /// A session's first record.
    SessionStart {
        /// Transport.
        transport: Transport,
        /// The client.
        client: Endpoint,
        /// The server.
        server: Endpoint,
    },
    /// A session's end.
    SessionEnd(SessionEnd),
    /// A server's tools/list differs from what it advertised before.
    ToolDrift {
        /// The server's name.
        server_name: String,
        /// Tools added.
        added: Vec<String>,
        /// Tools removed.
        removed: Vec<String>,
        /// Tools whose definition changed.
        changed: Vec<String>,
    },
    /// A request passed `--response-timeout` without an answer.
    CallTimeout {
        /// Its method.
        method: String,
        /// Its id, as JSON text.
        id: String,
        /// How long it has waited.
        elapsed_ms: f64,
        /// Its tool.
        #[serde(skip_serializing_if = "Option::is_none")]
        tool: Option<String>,
        /// The server's name.
        server_name: String,
    },
    /// An agent task ended (the agentic layer).
    TaskEnd(TaskEnd),
    /// The last process serving a server name exited (the event's `pid`): the server is
    /// down.
    ServerDown {
        /// The server name.
        server: String,
        /// How long it had been seen serving, in seconds.
        served_s: f64,
    },
    /// A new process (the event's `pid`) serves a server name whose process exited before:
    /// a restart.
    ServerRestart {
        /// The server name.
        server: String,
        /// Restarts of that name so far.
        restarts: u64,
        /// How long the name was down (no process serving it), in seconds; 0 when another
        /// process served it meanwhile.
        down_s: f64,
    },
    /// mcptap stopped: everything it counted.
    AgentStop {
        /// The counters, userspace and kernel.
        stats: serde_json::Value,
    },
}

/// How a handshake went.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Handshake {
    /// `success` or `failure`.
    pub status: &'static str,
    /// Transport.
    pub transport: Transport,
    /// The client.
    pub client: Endpoint,
    /// The server.
    pub server: Endpoint,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// From the initialize request to `notifications/initialized`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// The version the client asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_version: Option<String>,
    /// The version negotiated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
}

/// How an agent task ended: one conversation thread of one process, from its first model
/// call to the answer (or to what stopped it).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TaskEnd {
    /// The task.
    pub task: String,
    /// `completed`, `error`, `max_tokens`, `context_overflow`, `cut_off` or `abandoned`.
    pub outcome: &'static str,
    /// Model calls (turns).
    pub turns: u32,
    /// First request to the last reply.
    pub duration_ms: f64,
    /// Tool calls the model asked for.
    pub tool_calls: u32,
    /// Those that became MCP `tools/call` exchanges.
    pub mcp_calls: u32,
    /// Those naming a tool the request did not offer.
    pub hallucinations: u32,
    /// Errors fed back to the model.
    pub errors_fed_back: u32,
    /// Errors after which the model's next tool call succeeded.
    pub self_corrections: u32,
    /// Input tokens over all turns, cached included.
    pub input_tokens: u64,
    /// Output tokens over all turns.
    pub output_tokens: u64,
    /// The models it called.
    pub models: Vec<String>,
    /// The process that ran it.
    pub process: Endpoint,
    /// When it started (wall-clock ns: its first request).
    #[serde(skip)]
    pub start_ns: u64,
    /// Its trace.
    #[serde(skip)]
    pub trace: u128,
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionEnd {
    /// Transport.
    pub transport: Transport,
    /// `process_exit`, `deleted`, `idle` or `evicted`.
    pub reason: &'static str,
    /// First to last message.
    pub duration_ms: f64,
    /// Exchanges reported.
    pub exchanges: u64,
    /// Of them, those that failed: a JSON-RPC error, a tool error, or no response.
    pub errors: u64,
    /// The client's own records were seen.
    pub client_observed: bool,
    /// The server's own records were seen.
    pub server_observed: bool,
    /// The client.
    pub client: Endpoint,
    /// The server.
    pub server: Endpoint,
    /// The version negotiated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<String>,
}

impl Event {
    /// An event about no process in particular.
    pub fn new(ts_ns: u64, what: What) -> Self {
        Event {
            ts_ns,
            what,
            pid: None,
            comm: None,
            fd: None,
            session: None,
        }
    }

    /// The event's name, as in `"event"`.
    pub fn name(&self) -> &'static str {
        match &self.what {
            What::StreamCorruption { .. } => "stream_corruption",
            What::StreamGap { .. } => "stream_gap",
            What::MessageTruncated { .. } => "message_truncated",
            What::StreamUnterminated { .. } => "stream_unterminated",
            What::KernelLoss { .. } => "kernel_loss",
            What::OrphanResponse { .. } => "orphan_response",
            What::DuplicateId { .. } => "duplicate_id",
            What::ErrorWithoutId { .. } => "error_without_id",
            What::InFlightAtStop { .. } => "in_flight_at_stop",
            What::Handshake(_) => "handshake",
            What::SessionStart { .. } => "session_start",
            What::SessionEnd(_) => "session_end",
            What::ToolDrift { .. } => "tool_drift",
            What::CallTimeout { .. } => "call_timeout",
            What::TaskEnd(_) => "task_end",
            What::ServerDown { .. } => "server_down",
            What::ServerRestart { .. } => "server_restart",
            What::AgentStop { .. } => "agent_stop",
        }
    }

    /// The event's own fields as JSON (for the console, and for tests).
    pub fn detail(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = match serde_json::to_value(&self.what) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        m.remove("event");
        m
    }

    /// The endpoints the event names (handshake, session start and end), for enrichment.
    pub fn endpoints_mut(&mut self) -> Vec<&mut Endpoint> {
        match &mut self.what {
            What::Handshake(Handshake { client, server, .. })
            | What::SessionStart { client, server, .. }
            | What::SessionEnd(SessionEnd { client, server, .. }) => vec![client, server],
            What::TaskEnd(t) => vec![&mut t.process],
            _ => Vec::new(),
        }
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
    /// A call to a model API.
    LlmCall(Box<LlmCall>),
    /// An agent event.
    Event(Event),
    /// An HTTP request an MCP server served.
    Http(Box<health::HttpRequest>),
    /// A round of the server health stage.
    Servers(Box<health::ServerReport>),
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

/// The ids of the agentic layer's spans, derived from what identifies them, so that the
/// layer that links an MCP call to its tool call and the exporter that writes the spans agree
/// without sharing state (and a replay gives the same trace).
pub mod trace_ids {
    use xxhash_rust::xxh3::{xxh3_64_with_seed, xxh3_128};

    /// The trace of a task: its id and its start.
    pub fn task_trace(task: &str, start_ns: u64) -> u128 {
        let mut b = task.as_bytes().to_vec();
        b.extend_from_slice(&start_ns.to_le_bytes());
        xxh3_128(&b) | 1
    }

    /// A span of the task: 0 for the task's own span, `turn` for a turn's, and a turn's tool
    /// calls from `turn << 16 | (index + 1)`. Odd, hence never the invalid zero id.
    pub fn span(trace: u128, part: u64) -> u64 {
        xxh3_64_with_seed(&trace.to_le_bytes(), part) | 1
    }

    /// The part of a turn's tool call `index`.
    pub fn tool_part(turn: u32, index: usize) -> u64 {
        (u64::from(turn) << 16) | (index as u64 + 1)
    }

    /// W3C traceparent text of a span.
    pub fn traceparent(trace: u128, span: u64) -> String {
        format!("00-{trace:032x}-{span:016x}-01")
    }
}
