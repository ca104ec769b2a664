//! The metrics model: every metric mcptap exports is defined once here ([`defs`]), stored in
//! one [`Registry`], fed from the signals ([`record`]), and encoded by the exporters
//! (Prometheus text, OTLP).
//!
//! Label values are bounded: each label of each metric keeps at most `label_limit` distinct
//! values; the rest are reported as `other` and counted in `mcptap_label_overflow_total`.

pub mod record;

use std::collections::HashMap;
#[cfg(test)]
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// What kind of metric.
#[derive(Debug, PartialEq)]
pub enum Kind {
    /// Monotonic total.
    Counter,
    /// Current value.
    Gauge,
    /// Distribution with these upper bounds.
    Histogram(&'static [f64]),
}

/// One metric's definition.
#[derive(Debug)]
pub struct Def {
    /// Prometheus name (counters end in `_total`; units are suffixes).
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Kind.
    pub kind: Kind,
    /// Label names (Prometheus).
    pub labels: &'static [&'static str],
    /// OpenTelemetry instrument name.
    pub otel_name: &'static str,
    /// OpenTelemetry unit (UCUM).
    pub otel_unit: &'static str,
    /// OpenTelemetry attribute keys, in label order (semantic-convention names).
    pub otel_labels: &'static [&'static str],
}

/// Call latency buckets, 100 µs to 5 minutes (local stdio tools answer in under 1 ms), plus
/// the OpenTelemetry MCP conventions' advice.
pub const LATENCY: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    10.0, 30.0, 60.0, 120.0, 300.0,
];
/// Session lengths: a second to a day.
pub const SESSION: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0, 43200.0, 86400.0,
];
/// Message and content sizes.
pub const SIZE: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
];
/// Result token estimates.
pub const TOKENS: &[f64] = &[
    16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
];

macro_rules! def {
    ($id:ident, $name:literal, $kind:expr, [$($l:literal),*], $otel:literal, $unit:literal, [$($ol:literal),*], $help:literal) => {
        #[doc = $help]
        pub const $id: Def = Def {
            name: $name,
            help: $help,
            kind: $kind,
            labels: &[$($l),*],
            otel_name: $otel,
            otel_unit: $unit,
            otel_labels: &[$($ol),*],
        };
    };
}

pub mod agent;
pub mod health;
pub mod security;

/// Every metric.
pub mod defs {
    use super::{Def, Kind, LATENCY, SESSION, SIZE, TOKENS};

    def!(
        TOOL_CALLS,
        "mcp_tool_calls_total",
        Kind::Counter,
        [
            "tool_name",
            "server",
            "client",
            "status",
            "error_type",
            "error_class",
            "k8s_namespace",
            "k8s_pod"
        ],
        "mcp.tool.calls",
        "{call}",
        [
            "gen_ai.tool.name",
            "server",
            "client",
            "status",
            "error.type",
            "error_class",
            "k8s.namespace.name",
            "k8s.pod.name"
        ],
        "tools/call exchanges, by outcome: status success or error; error_type the JSON-RPC code, tool_error, no_response, cancelled or http_NNN; error_class client_misuse, server_failure or other."
    );
    def!(
        TOOL_DURATION,
        "mcp_tool_call_duration_seconds",
        Kind::Histogram(LATENCY),
        ["tool_name", "server", "k8s_namespace", "k8s_pod"],
        "mcp.tool.call.duration",
        "s",
        [
            "gen_ai.tool.name",
            "server",
            "k8s.namespace.name",
            "k8s.pod.name"
        ],
        "tools/call latency: the client's view when it is watched, otherwise the server's."
    );
    def!(
        TOOL_IN_FLIGHT,
        "mcp_tool_calls_in_flight",
        Kind::Gauge,
        ["tool_name", "server"],
        "mcp.tool.calls.in_flight",
        "{call}",
        ["gen_ai.tool.name", "server"],
        "tools/call requests sent and not yet answered."
    );
    def!(
        TOOL_TOKENS,
        "mcp_tool_result_tokens",
        Kind::Histogram(TOKENS),
        ["tool_name", "server"],
        "mcp.tool.result.tokens",
        "{token}",
        ["gen_ai.tool.name", "server"],
        "Estimated tokens of each tool result: the JSON-encoded length of its text divided by 4."
    );
    def!(
        SCHEMA_VIOLATIONS,
        "mcp_tool_schema_violations_total",
        Kind::Counter,
        ["tool_name", "server"],
        "mcp.tool.schema_violations",
        "{call}",
        ["gen_ai.tool.name", "server"],
        "tools/call arguments that do not satisfy the inputSchema the server advertised."
    );
    def!(
        SCHEMA_CHECKED,
        "mcp_tool_schema_checks_total",
        Kind::Counter,
        ["tool_name", "server"],
        "mcp.tool.schema_checks",
        "{call}",
        ["gen_ai.tool.name", "server"],
        "tools/call arguments checked against an advertised inputSchema."
    );
    def!(
        UNKNOWN_TOOLS,
        "mcp_tool_unknown_calls_total",
        Kind::Counter,
        ["server", "client"],
        "mcp.tool.unknown_calls",
        "{call}",
        ["server", "client"],
        "Calls to tool names the server never advertised in its tools/list."
    );
    def!(
        REPEATED_CALLS,
        "mcp_tool_repeated_calls_total",
        Kind::Counter,
        ["tool_name", "server"],
        "mcp.tool.repeated_calls",
        "{call}",
        ["gen_ai.tool.name", "server"],
        "Calls identical (tool and canonical arguments) to an earlier call of the same session: retry loops."
    );
    def!(
        TOOL_DRIFT,
        "mcp_tool_definition_changes_total",
        Kind::Counter,
        ["server", "change"],
        "mcp.tool.definition_changes",
        "{tool}",
        ["server", "change"],
        "Tool definitions that changed from what the same server advertised before (change: added, removed or changed)."
    );
    def!(
        RESOURCE_READS,
        "mcp_resource_reads_total",
        Kind::Counter,
        [
            "resource_uri",
            "server",
            "status",
            "k8s_namespace",
            "k8s_pod"
        ],
        "mcp.resource.reads",
        "{read}",
        [
            "mcp.resource.uri",
            "server",
            "status",
            "k8s.namespace.name",
            "k8s.pod.name"
        ],
        "resources/read exchanges, by URI and outcome."
    );
    def!(
        RESOURCE_BYTES,
        "mcp_resource_read_bytes",
        Kind::Histogram(SIZE),
        ["server"],
        "mcp.resource.read.size",
        "By",
        ["server"],
        "Size of the contents returned by resources/read."
    );
    def!(
        DUPLICATE_READS,
        "mcp_resource_duplicate_reads_total",
        Kind::Counter,
        ["server"],
        "mcp.resource.duplicate_reads",
        "{read}",
        ["server"],
        "resources/read of a URI already read in the same session."
    );
    def!(
        PROMPT_GETS,
        "mcp_prompt_gets_total",
        Kind::Counter,
        [
            "prompt_name",
            "server",
            "status",
            "k8s_namespace",
            "k8s_pod"
        ],
        "mcp.prompt.gets",
        "{get}",
        [
            "gen_ai.prompt.name",
            "server",
            "status",
            "k8s.namespace.name",
            "k8s.pod.name"
        ],
        "prompts/get exchanges, by prompt and outcome."
    );
    def!(
        HANDSHAKES,
        "mcp_handshakes_total",
        Kind::Counter,
        ["server", "client", "status", "reason"],
        "mcp.handshakes",
        "{handshake}",
        ["server", "client", "status", "reason"],
        "initialize → result → notifications/initialized, by outcome (reason on failure: error, no_response, version_mismatch, no_initialized or cancelled)."
    );
    def!(
        HANDSHAKE_DURATION,
        "mcp_handshake_duration_seconds",
        Kind::Histogram(LATENCY),
        ["server"],
        "mcp.handshake.duration",
        "s",
        ["server"],
        "From the initialize request to notifications/initialized."
    );
    def!(
        ACTIVE_SESSIONS,
        "mcp_active_sessions",
        Kind::Gauge,
        ["transport", "server"],
        "mcp.sessions.active",
        "{session}",
        ["network.transport", "server"],
        "Sessions open now."
    );
    def!(
        SESSIONS,
        "mcp_sessions_total",
        Kind::Counter,
        ["transport", "server"],
        "mcp.sessions",
        "{session}",
        ["network.transport", "server"],
        "Sessions started."
    );
    def!(
        SESSION_DURATION,
        "mcp_session_duration_seconds",
        Kind::Histogram(SESSION),
        ["transport", "server"],
        "mcp.session.duration",
        "s",
        ["network.transport", "server"],
        "Length of ended sessions, first to last message."
    );
    def!(
        ERRORS,
        "mcp_errors_total",
        Kind::Counter,
        ["code", "method", "server", "k8s_namespace", "k8s_pod"],
        "mcp.errors",
        "{error}",
        [
            "rpc.response.status_code",
            "mcp.method.name",
            "server",
            "k8s.namespace.name",
            "k8s.pod.name"
        ],
        "JSON-RPC error responses, by code (-32700, -32600, -32601, -32602, -32603 and others)."
    );
    def!(
        REQUESTS,
        "mcp_requests_total",
        Kind::Counter,
        [
            "method",
            "server",
            "status",
            "error_type",
            "k8s_namespace",
            "k8s_pod"
        ],
        "mcp.requests",
        "{request}",
        [
            "mcp.method.name",
            "server",
            "status",
            "error.type",
            "k8s.namespace.name",
            "k8s.pod.name"
        ],
        "Every request/response exchange, by method and outcome."
    );
    def!(
        MESSAGES,
        "mcp_messages_total",
        Kind::Counter,
        ["direction", "kind", "transport"],
        "mcp.messages",
        "{message}",
        ["direction", "kind", "network.transport"],
        "JSON-RPC messages, by direction (client_to_server, server_to_client) and kind (request, response, error, notification)."
    );
    def!(
        MESSAGE_SIZE,
        "mcp_message_size_bytes",
        Kind::Histogram(SIZE),
        ["direction", "kind"],
        "mcp.message.size",
        "By",
        ["direction", "kind"],
        "Size of JSON-RPC messages on the wire."
    );
    def!(
        CLIENT_OPERATION,
        "mcp_client_operation_duration_seconds",
        Kind::Histogram(LATENCY),
        [
            "mcp_method_name",
            "gen_ai_tool_name",
            "error_type",
            "server"
        ],
        "mcp.client.operation.duration",
        "s",
        [
            "mcp.method.name",
            "gen_ai.tool.name",
            "error.type",
            "server"
        ],
        "Duration of MCP requests as the client saw them (OpenTelemetry MCP conventions)."
    );
    def!(
        SERVER_OPERATION,
        "mcp_server_operation_duration_seconds",
        Kind::Histogram(LATENCY),
        [
            "mcp_method_name",
            "gen_ai_tool_name",
            "error_type",
            "server",
            "k8s_namespace",
            "k8s_pod"
        ],
        "mcp.server.operation.duration",
        "s",
        [
            "mcp.method.name",
            "gen_ai.tool.name",
            "error.type",
            "server",
            "k8s.namespace.name",
            "k8s.pod.name"
        ],
        "Duration of MCP requests as the server saw them (OpenTelemetry MCP conventions)."
    );
    def!(
        CLIENT_SESSION,
        "mcp_client_session_duration_seconds",
        Kind::Histogram(SESSION),
        ["transport", "server"],
        "mcp.client.session.duration",
        "s",
        ["network.transport", "server"],
        "Duration of sessions whose client was watched (OpenTelemetry MCP conventions)."
    );
    def!(
        SERVER_SESSION,
        "mcp_server_session_duration_seconds",
        Kind::Histogram(SESSION),
        ["transport", "server"],
        "mcp.server.session.duration",
        "s",
        ["network.transport", "server"],
        "Duration of sessions whose server was watched (OpenTelemetry MCP conventions)."
    );
    def!(
        CALL_TIMEOUTS,
        "mcp_calls_timed_out_total",
        Kind::Counter,
        ["method", "server"],
        "mcp.calls.timed_out",
        "{call}",
        ["mcp.method.name", "server"],
        "Requests with no response after --response-timeout (hung calls)."
    );
    def!(
        CORRUPTIONS,
        "mcp_stream_corruptions_total",
        Kind::Counter,
        ["reason"],
        "mcp.stream.corruptions",
        "{line}",
        ["reason"],
        "Non-JSON-RPC output on an MCP stream (stray stdout), or broken HTTP framing."
    );

    def!(
        AGENT_RECORDS,
        "mcptap_records_total",
        Kind::Counter,
        [],
        "mcptap.records",
        "{record}",
        [],
        "Kernel records processed."
    );
    def!(
        AGENT_BYTES,
        "mcptap_captured_bytes_total",
        Kind::Counter,
        [],
        "mcptap.captured",
        "By",
        [],
        "Payload bytes captured."
    );
    def!(
        AGENT_KERNEL,
        "mcptap_kernel_events_total",
        Kind::Counter,
        ["event"],
        "mcptap.kernel.events",
        "{event}",
        ["event"],
        "The kernel programs' counters: records, bytes, and every kind of loss (ringbuf_full_records, truncated_syscalls, read_faults, stash_full, exit_missed, tail_call_failed, prog_recursion_misses, ...)."
    );
    def!(
        AGENT_LOST,
        "mcptap_lost_events_total",
        Kind::Counter,
        [],
        "mcptap.lost_events",
        "{event}",
        [],
        "Events lost in the kernel (ring buffer full, stash full, missed exits, failed tail calls, skipped program runs, a busy TLS lane)."
    );
    def!(
        AGENT_TRUNCATED,
        "mcptap_truncated_messages_total",
        Kind::Counter,
        [],
        "mcptap.truncated_messages",
        "{message}",
        [],
        "Messages over --max-message-bytes, dropped and reported."
    );
    def!(
        AGENT_PARSE_ERRORS,
        "mcptap_parse_errors_total",
        Kind::Counter,
        ["class"],
        "mcptap.parse_errors",
        "{frame}",
        ["class"],
        "Frames of MCP streams that were not JSON-RPC, by class."
    );
    def!(
        AGENT_REJECTED,
        "mcptap_streams_rejected_total",
        Kind::Counter,
        ["reason"],
        "mcptap.streams_rejected",
        "{stream}",
        ["reason"],
        "Streams found not to carry MCP (the kernel stops shipping them), by reason."
    );
    def!(
        AGENT_GAPS,
        "mcptap_stream_gaps_total",
        Kind::Counter,
        ["reason"],
        "mcptap.stream_gaps",
        "{gap}",
        ["reason"],
        "Holes in MCP streams, by reason."
    );
    def!(
        AGENT_H2_MIDSTREAM,
        "mcptap_http2_midstream_connections_total",
        Kind::Counter,
        [],
        "mcptap.http2.midstream.connections",
        "{connection}",
        [],
        "HTTP/2 connections first seen mid-way (older than the agent), per watched end: framed, but their header blocks are never decoded (the HPACK state they need went by before the agent came)."
    );
    def!(
        AGENT_H2_SKIPPED,
        "mcptap_http2_midstream_streams_skipped_total",
        Kind::Counter,
        [],
        "mcptap.http2.midstream.streams_skipped",
        "{stream}",
        [],
        "Streams of HTTP/2 connections first seen mid-way that were already open when the agent came (or before the connection showed which end is which): skipped, since their bodies are not whole."
    );
    def!(
        AGENT_H2_UNDECODED,
        "mcptap_http2_midstream_header_blocks_total",
        Kind::Counter,
        [],
        "mcptap.http2.midstream.header_blocks",
        "{block}",
        [],
        "Header blocks of HTTP/2 connections first seen mid-way, not decoded: their transactions go up without method, path, status or headers."
    );
    def!(
        AGENT_TLS_UNDECRYPTED,
        "mcptap_tls_undecrypted_streams_total",
        Kind::Counter,
        ["library"],
        "mcptap.tls.undecrypted_streams",
        "{stream}",
        ["library"],
        "TLS connections that ended with no plaintext captured, by the TLS library the probes found in the process (openssl, gnutls, go, boringssl; unknown when none they read: rustls, BoringSSL, Java, ...): a library not read, one that could not be probed, or a connection older than the probes."
    );
    def!(
        AGENT_TLS_PROBED,
        "mcptap_tls_probed_binaries",
        Kind::Gauge,
        ["mode"],
        "mcptap.tls.probed_binaries",
        "{binary}",
        ["mode"],
        "Binaries whose OpenSSL was probed since the start, by mode: internal (SSL_read/SSL_write probed at the internal functions they call, whose first instruction the kernel emulates), exported (at the exported symbols, single-stepped where they begin with an instruction the kernel cannot emulate), bio_internal or bio_exported (BIO_write alone: libcrypto)."
    );
    def!(
        AGENT_TLS_PROBES,
        "mcptap_tls_probes",
        Kind::Gauge,
        ["library", "state"],
        "mcptap.tls.probes",
        "{binary}",
        ["library", "state"],
        "Binaries whose TLS library was recognised since the start, by library (openssl, gnutls, go, boringssl) and state: probed (its probes are set), failed (recognised, but the kernel refused a probe; the log says why, once per binary)."
    );
    def!(
        AGENT_EXPORT_FAILURES,
        "mcptap_export_failures_total",
        Kind::Counter,
        ["exporter"],
        "mcptap.export.failures",
        "{batch}",
        ["exporter"],
        "Export attempts that failed."
    );
    def!(
        AGENT_EXPORT_DROPPED,
        "mcptap_export_dropped_total",
        Kind::Counter,
        ["exporter"],
        "mcptap.export.dropped",
        "{item}",
        ["exporter"],
        "Items dropped because an exporter's queue was full."
    );
    def!(
        AGENT_LABEL_OVERFLOW,
        "mcptap_label_overflow_total",
        Kind::Counter,
        ["metric", "label"],
        "mcptap.label_overflow",
        "{value}",
        ["metric", "label"],
        "Label values beyond the per-label limit, reported as \"other\"."
    );
    def!(
        K8S_API_ERRORS,
        "mcptap_k8s_api_errors_total",
        Kind::Counter,
        ["reason"],
        "mcptap.k8s.api_errors",
        "{error}",
        ["reason"],
        "Failed calls to the Kubernetes API server while watching this node's pods (reason: connect, tls, token, http, status, decode or timeout); pod names stay as last known."
    );
    def!(
        AGENT_EVICTIONS,
        "mcptap_evictions_total",
        Kind::Counter,
        ["table"],
        "mcptap.evictions",
        "{entry}",
        ["table"],
        "Entries forgotten early to hold memory to the caps, by table (see mcptap_table_entries): pending requests end as no_response, sessions with reason evicted, partial messages past --max-buffered-bytes as a buffer_budget gap."
    );
    def!(
        AGENT_SESSIONS,
        "mcptap_tracked_sessions",
        Kind::Gauge,
        [],
        "mcptap.tracked.sessions",
        "{session}",
        [],
        "Sessions and connections the agent holds state for."
    );
    def!(
        AGENT_STREAMS,
        "mcptap_tracked_streams",
        Kind::Gauge,
        [],
        "mcptap.tracked.streams",
        "{stream}",
        [],
        "Streams the agent holds state for."
    );
    def!(
        AGENT_TABLE_ENTRIES,
        "mcptap_table_entries",
        Kind::Gauge,
        ["table"],
        "mcptap.table.entries",
        "{entry}",
        ["table"],
        "Entries each bounded table holds now (table: streams, rejected_fds, buffered_bytes, sessions, pending_requests, notification_views, processes, links, tool_servers, metric_series, metric_handles, kernel_fds, agent_processes, agent_threads, agent_tool_calls, agent_held_calls, server_processes, server_names)."
    );
    def!(
        AGENT_TABLE_CAPACITY,
        "mcptap_table_capacity",
        Kind::Gauge,
        ["table"],
        "mcptap.table.capacity",
        "{entry}",
        ["table"],
        "The most entries each bounded table holds; past it the table evicts (mcptap_evictions_total)."
    );
    def!(
        AGENT_CAPTURE_LAG,
        "mcptap_capture_lag_seconds",
        Kind::Gauge,
        [],
        "mcptap.capture.lag",
        "s",
        [],
        "How far behind the clock the records being worked through are: 0 once the ring buffer is drained; it grows while more arrives than the agent can take (the kernel then drops what does not fit, counted in mcptap_lost_events_total)."
    );
    def!(
        AGENT_SERIES_OVERFLOW,
        "mcptap_series_overflow_total",
        Kind::Counter,
        ["metric"],
        "mcptap.series_overflow",
        "{observation}",
        ["metric"],
        "Observations that would have added a series past --max-series; recorded in the metric's series whose labels are all \"other\"."
    );

    /// Every definition, in exposition order.
    pub const ALL: &[&Def] = &[
        &TOOL_CALLS,
        &TOOL_DURATION,
        &TOOL_IN_FLIGHT,
        &TOOL_TOKENS,
        &SCHEMA_VIOLATIONS,
        &SCHEMA_CHECKED,
        &UNKNOWN_TOOLS,
        &REPEATED_CALLS,
        &TOOL_DRIFT,
        &RESOURCE_READS,
        &RESOURCE_BYTES,
        &DUPLICATE_READS,
        &PROMPT_GETS,
        &HANDSHAKES,
        &HANDSHAKE_DURATION,
        &ACTIVE_SESSIONS,
        &SESSIONS,
        &SESSION_DURATION,
        &ERRORS,
        &REQUESTS,
        &MESSAGES,
        &MESSAGE_SIZE,
        &CLIENT_OPERATION,
        &SERVER_OPERATION,
        &CLIENT_SESSION,
        &SERVER_SESSION,
        &CALL_TIMEOUTS,
        &CORRUPTIONS,
        &AGENT_RECORDS,
        &AGENT_BYTES,
        &AGENT_KERNEL,
        &AGENT_LOST,
        &AGENT_TRUNCATED,
        &AGENT_PARSE_ERRORS,
        &AGENT_REJECTED,
        &AGENT_GAPS,
        &AGENT_H2_MIDSTREAM,
        &AGENT_H2_SKIPPED,
        &AGENT_H2_UNDECODED,
        &AGENT_TLS_UNDECRYPTED,
        &AGENT_TLS_PROBED,
        &AGENT_TLS_PROBES,
        &AGENT_EXPORT_FAILURES,
        &AGENT_EXPORT_DROPPED,
        &AGENT_LABEL_OVERFLOW,
        &K8S_API_ERRORS,
        &AGENT_EVICTIONS,
        &AGENT_SESSIONS,
        &AGENT_STREAMS,
        &AGENT_TABLE_ENTRIES,
        &AGENT_TABLE_CAPACITY,
        &AGENT_SERIES_OVERFLOW,
        &AGENT_CAPTURE_LAG,
        &super::agent::INFERENCE_DURATION,
        &super::agent::TIME_TO_FIRST_CHUNK,
        &super::agent::USAGE_INPUT,
        &super::agent::USAGE_OUTPUT,
        &super::agent::USAGE_CACHE_READ,
        &super::agent::USAGE_CACHE_WRITE,
        &super::agent::USAGE_REASONING,
        &super::agent::OPERATION_INPUT,
        &super::agent::OPERATION_OUTPUT,
        &super::agent::TASKS,
        &super::agent::TURNS_PER_TASK,
        &super::agent::TOOL_CALLS_ASKED,
        &super::agent::HALLUCINATIONS,
        &super::agent::ERRORS_FED_BACK,
        &super::agent::SELF_CORRECTIONS,
        &super::agent::RESULT_TOKENS,
        &super::agent::UNREQUESTED,
        &super::health::CPU,
        &super::health::RESIDENT,
        &super::health::OPEN_FDS,
        &super::health::FD_USAGE,
        &super::health::THREADS,
        &super::health::PROCESSES,
        &super::health::UP,
        &super::health::RESTARTS,
        &super::health::HTTP_REQUESTS,
        &super::health::HTTP_DURATION,
        &super::health::SESSION_ERRORS,
        &super::security::FINDINGS,
    ];
}

/// One series' value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Counter or gauge.
    Number(f64),
    /// Histogram: counts per bucket (not cumulative), sum and count.
    Histogram {
        /// Observations per bucket, the last being +Inf.
        buckets: Vec<u64>,
        /// Sum of observations.
        sum: f64,
        /// Number of observations.
        count: u64,
    },
}

/// Called with every histogram observation (the OTLP exporter records them into its own
/// histograms).
pub type ObserveHook = Box<dyn Fn(&'static Def, &[&str], f64) + Send>;

/// Labels per metric at most (a test checks every definition).
const MAX_LABELS: usize = 8;

/// A series' label values as ids into the registry's [`Values`]: lookups on the hot path
/// hash eight integers and allocate nothing.
type LabelIds = [u32; MAX_LABELS];

type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// A hasher for keys the registry makes itself, never the wire: label ids (dense integers it
/// assigned) and the addresses of metric names. A multiply-mix per word is enough for them,
/// and costs a fraction of a general hasher's length prefix and byte loop (two lookups of
/// eight ids for each of the dozen series an exchange updates).
#[derive(Default)]
struct WordHasher(u64);

impl WordHasher {
    fn mix(&mut self, w: u64) {
        self.0 = (self.0 ^ w)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(26);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        for b in words.remainder() {
            self.mix(u64::from(*b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits and its tag from the high ones.
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        x ^ (x >> 29)
    }
}

/// A map keyed by what [`WordHasher`] hashes.
type WordMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

/// Every label value some metric keeps, once, with the id all metrics know it by. Only
/// values a label accepted are here, so the label limit bounds it too.
#[derive(Default)]
struct Values {
    ids: FastMap<Arc<str>, u32>,
    values: Vec<Arc<str>>,
}

/// The id of [`OTHER`], interned first.
const OTHER_ID: u32 = 0;

impl Values {
    fn get(&self, v: &str) -> Option<u32> {
        self.ids.get(v).copied()
    }

    fn intern(&mut self, v: &str) -> u32 {
        if let Some(id) = self.get(v) {
            return id;
        }
        let id = self.values.len() as u32;
        let v: Arc<str> = v.into();
        self.values.push(v.clone());
        self.ids.insert(v, id);
        id
    }

    fn of(&self, ids: &LabelIds, n: usize) -> Vec<Arc<str>> {
        ids[..n]
            .iter()
            .map(|id| self.values[*id as usize].clone())
            .collect()
    }

    fn names(&self, ids: &LabelIds, n: usize) -> Vec<&str> {
        ids[..n]
            .iter()
            .map(|id| &*self.values[*id as usize])
            .collect()
    }
}

/// The values one label of one metric keeps: at most the label limit, [`OTHER`] aside. A
/// bit per value id: ids are dense and few (the label limit bounds them), and a test of one
/// bit is cheaper than a hash lookup on every observation.
#[derive(Default)]
struct Kept {
    bits: Vec<u64>,
    len: usize,
}

impl Kept {
    fn contains(&self, id: u32) -> bool {
        let (word, bit) = (id as usize / 64, id % 64);
        self.bits.get(word).is_some_and(|w| w >> bit & 1 == 1)
    }

    fn insert(&mut self, id: u32) {
        let (word, bit) = (id as usize / 64, id % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        self.len += (self.bits[word] >> bit & 1 == 0) as usize;
        self.bits[word] |= 1 << bit;
    }
}

/// A label value, with its registry-wide id if the caller looked it up already
/// ([`Registry::resolve`]): a value that many metrics of one signal carry is then hashed once.
#[derive(Clone, Copy, Debug)]
pub struct Lv<'a> {
    text: &'a str,
    id: Option<u32>,
}

impl<'a> From<&'a str> for Lv<'a> {
    fn from(text: &'a str) -> Self {
        Lv { text, id: None }
    }
}

/// The series of one metric.
#[derive(Default)]
struct Metric {
    labels: Vec<Kept>,
    /// Where each series is in `series`, by its label ids.
    index: WordMap<LabelIds, u32>,
    /// Every series, in the order they were made: never removed, so a [`Handle`] to one
    /// stays valid.
    series: Vec<(LabelIds, Value)>,
    /// Series [`Registry::replace_all`] took out of `index`, by where they are in `series`:
    /// one that comes back takes its old place (so `series` grows only with new label sets).
    retired: WordMap<LabelIds, u32>,
}

impl Metric {
    /// Every series, in `index`'s order.
    fn each(&self) -> impl Iterator<Item = (&LabelIds, &Value)> {
        self.index.values().map(|&i| {
            let (ids, v) = &self.series[i as usize];
            (ids, v)
        })
    }
}

/// Where one series is in the registry, for a caller that updates it again and again
/// without looking its labels up each time ([`record`] keeps them per exchange shape). Given
/// only for a series whose label values were all kept, none folded into `other`: the same
/// values then always name the same series, and nothing is counted in the overflow metrics
/// by updating it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handle {
    at: u32,
    series: u32,
}

/// All series of all metrics.
pub struct Registry {
    /// The metrics that have series, in the order they got their first.
    metrics: Vec<Metric>,
    /// Where each metric is in `metrics`, by name.
    index: FastMap<&'static str, usize>,
    /// The same, by the address and length of the name: a definition is a `const`, so each use
    /// holds the same `'static` text, nearly always at one address; equal address and length
    /// mean equal text, and a copy at another address falls back to `index`. Saves hashing
    /// the name for every series updated.
    by_address: WordMap<(usize, usize), usize>,
    values: Values,
    label_limit: usize,
    /// Most series of the metrics whose labels come from the wire (every `mcp_*` metric);
    /// the agent's own `mcptap_*` metrics have labels the code bounds.
    max_series: usize,
    series: usize,
    hook: Option<ObserveHook>,
    /// The series each shape of exchange updates ([`record`]).
    exchanges: record::ExchangeSeries,
}

/// One series copied out of the registry: its label values and its value.
pub type SeriesCopy = (Vec<Arc<str>>, Value);

/// Series of every metric, copied out of the registry so that rendering them holds no lock.
pub struct Snapshot {
    metrics: Vec<(&'static Def, Vec<SeriesCopy>)>,
}

impl Snapshot {
    /// The series of every metric that has some, in definition order, each metric's series
    /// ordered by label values.
    pub fn metrics(&self) -> impl Iterator<Item = (&'static Def, &[SeriesCopy])> {
        self.metrics.iter().map(|(d, s)| (*d, s.as_slice()))
    }
}

/// Count `v` in a histogram with these bounds.
fn add_observation(entry: &mut Value, bounds: &[f64], v: f64) {
    if let Value::Histogram {
        buckets,
        sum,
        count,
    } = entry
    {
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        buckets[i] += 1;
        *sum += v;
        *count += 1;
    }
}

/// The label value for values past the limit.
pub const OTHER: &str = "other";

/// `f` of `labels` as [`Lv`]s not looked up yet (on the stack: no allocation).
fn with_lvs<R>(labels: &[&str], f: impl FnOnce(&[Lv<'_>]) -> R) -> R {
    let mut lvs = [Lv::from(""); MAX_LABELS];
    for (lv, text) in lvs.iter_mut().zip(labels) {
        *lv = Lv::from(*text);
    }
    f(&lvs[..labels.len().min(MAX_LABELS)])
}

impl Registry {
    /// An empty registry keeping at most `label_limit` values per label and `max_series`
    /// series of the `mcp_*` metrics.
    pub fn new(label_limit: usize, max_series: usize) -> Self {
        let mut values = Values::default();
        let other = values.intern(OTHER);
        debug_assert_eq!(other, OTHER_ID);
        Registry {
            metrics: Vec::new(),
            index: FastMap::default(),
            by_address: WordMap::default(),
            values,
            label_limit: label_limit.max(1),
            max_series: max_series.max(1),
            series: 0,
            hook: None,
            exchanges: record::ExchangeSeries::default(),
        }
    }

    /// The registry's tables: the series held of the bounded metrics (their cap, and the
    /// observations folded into `other` because of it), and the cache of series handles by
    /// exchange shape.
    pub fn tables(&self) -> Vec<crate::bounded::TableStat> {
        vec![self.series_table(), self.exchanges.table()]
    }

    /// Series held of the bounded metrics, their cap, and the observations folded into
    /// `other` because of it.
    pub fn series_table(&self) -> crate::bounded::TableStat {
        let overflow = self
            .metric(defs::AGENT_SERIES_OVERFLOW.name)
            .map(|m| {
                m.each()
                    .map(|(_, v)| match v {
                        Value::Number(n) => *n as u64,
                        Value::Histogram { count, .. } => *count,
                    })
                    .sum()
            })
            .unwrap_or(0);
        crate::bounded::TableStat::new("metric_series", self.series, self.max_series, overflow)
    }

    /// Every series, copied.
    pub fn snapshot(&self) -> Snapshot {
        let metrics = defs::ALL
            .iter()
            .filter_map(|def| {
                let m = self.metric(def.name)?;
                let mut series: Vec<SeriesCopy> = m
                    .each()
                    .map(|(ids, v)| (self.values.of(ids, def.labels.len()), v.clone()))
                    .collect();
                series.sort_by(|a, b| a.0.cmp(&b.0));
                (!series.is_empty()).then_some((*def, series))
            })
            .collect();
        Snapshot { metrics }
    }

    /// Forward every histogram observation to `hook` too.
    pub fn set_observe_hook(&mut self, hook: ObserveHook) {
        self.hook = Some(hook);
    }

    /// The metric named `name`, if it has series.
    fn metric(&self, name: &str) -> Option<&Metric> {
        self.index.get(name).map(|&at| &self.metrics[at])
    }

    /// `v` with its id, if some metric keeps it: the caller passes the same [`Lv`] to every
    /// metric of a signal and the value is hashed once.
    pub fn resolve<'a>(&self, v: &'a str) -> Lv<'a> {
        Lv {
            text: v,
            id: self.values.get(v),
        }
    }

    /// The ids and value of the series `labels` name, made by `fresh` if it is new, and its
    /// [`Handle`] if no label value was folded into `other`.
    fn slot(
        &mut self,
        def: &'static Def,
        labels: &[Lv<'_>],
        fresh: impl FnOnce() -> Value,
    ) -> (Option<Handle>, LabelIds, &mut Value) {
        debug_assert_eq!(labels.len(), def.labels.len(), "{}", def.name);
        let (at, ids, overflowed, folded) = self.place(def, labels);
        let clean = !overflowed.iter().any(|o| *o) && folded.is_none();
        if !clean {
            self.count_folds(def, &overflowed, folded);
        }
        let m = &mut self.metrics[at];
        let next = m.series.len() as u32;
        let Metric {
            index,
            series,
            retired,
            ..
        } = m;
        let i = match index.get(&ids) {
            Some(&i) => i,
            None => {
                // New, or back from retirement: made fresh either way.
                let i = retired.remove(&ids).unwrap_or(next);
                index.insert(ids, i);
                if i == next {
                    series.push((ids, fresh()));
                } else {
                    series[i as usize].1 = fresh();
                }
                i
            }
        };
        let handle = clean.then_some(Handle {
            at: at as u32,
            series: i,
        });
        (handle, ids, &mut m.series[i as usize].1)
    }

    /// The metric's place in `metrics`, the ids of a series' labels, which labels
    /// overflowed, and whether the series was folded into `other` by the cap (`Some(true)`
    /// the first time that series is).
    fn place(
        &mut self,
        def: &'static Def,
        labels: &[Lv<'_>],
    ) -> (usize, LabelIds, [bool; MAX_LABELS], Option<bool>) {
        // The agent's own `mcptap_*` metrics have labels the code bounds: the limit is for
        // values from the wire. (Limiting them too made counting an overflow of
        // `mcptap_label_overflow_total`'s own `metric` label recurse without end.)
        let own = def.name.starts_with("mcptap_");
        let limit = if own { usize::MAX } else { self.label_limit };
        let at = self.at(def.name);
        let m = &mut self.metrics[at];
        if m.labels.len() < labels.len() {
            m.labels.resize_with(labels.len(), Kept::default);
        }
        let mut ids = [OTHER_ID; MAX_LABELS];
        let mut overflowed = [false; MAX_LABELS];
        for (i, lv) in labels.iter().enumerate().take(MAX_LABELS) {
            let known = lv.id.or_else(|| self.values.get(lv.text));
            let kept = &mut m.labels[i];
            ids[i] = match known {
                // `other` is always kept and does not count against the limit.
                Some(id) if id == OTHER_ID || kept.contains(id) => id,
                _ if kept.len < limit => {
                    let id = known.unwrap_or_else(|| self.values.intern(lv.text));
                    kept.insert(id);
                    id
                }
                _ => {
                    overflowed[i] = true;
                    OTHER_ID
                }
            };
        }
        if own || m.index.contains_key(&ids) {
            return (at, ids, overflowed, None);
        }
        if self.series < self.max_series {
            self.series += 1;
            return (at, ids, overflowed, None);
        }
        ids[..def.labels.len()].fill(OTHER_ID);
        let first = !m.index.contains_key(&ids);
        self.series += first as usize;
        (at, ids, overflowed, Some(first))
    }

    /// The place of the metric named `name` in `metrics`, made if it has none yet.
    fn at(&mut self, name: &'static str) -> usize {
        let address = (name.as_ptr() as usize, name.len());
        if let Some(&at) = self.by_address.get(&address) {
            return at;
        }
        let at = *self.index.entry(name).or_insert_with(|| {
            self.metrics.push(Metric::default());
            self.metrics.len() - 1
        });
        self.by_address.insert(address, at);
        at
    }

    /// Count the label values and the series [`Registry::place`] folded into `other`.
    fn count_folds(&mut self, def: &'static Def, overflowed: &[bool], folded: Option<bool>) {
        for (i, _) in overflowed.iter().enumerate().filter(|(_, o)| **o) {
            self.inc(&defs::AGENT_LABEL_OVERFLOW, &[def.name, def.labels[i]], 1.0);
        }
        let Some(first) = folded else {
            return;
        };
        self.inc(&defs::AGENT_SERIES_OVERFLOW, &[def.name], 1.0);
        if self.series == self.max_series + 1 && first {
            log::warn!(
                "{} metric series (cap {}, --max-series): new label sets are counted as \"other\"",
                self.max_series,
                self.max_series
            );
        }
    }

    /// Add to a counter.
    pub fn inc(&mut self, def: &'static Def, labels: &[&str], by: f64) {
        with_lvs(labels, |l| {
            self.inc_lv(def, l, by);
        });
    }

    /// Add to a counter, the labels given as [`Lv`]s; the series' [`Handle`] if it has one.
    pub fn inc_lv(&mut self, def: &'static Def, labels: &[Lv<'_>], by: f64) -> Option<Handle> {
        let (handle, _, value) = self.slot(def, labels, || Value::Number(0.0));
        if let Value::Number(n) = value {
            *n += by;
        }
        handle
    }

    /// Add to the counter series `h` (from [`Registry::inc_lv`]).
    pub fn inc_at(&mut self, h: Handle, by: f64) {
        if let Value::Number(n) = &mut self.metrics[h.at as usize].series[h.series as usize].1 {
            *n += by;
        }
    }

    /// Set a gauge, or a counter to a total kept elsewhere.
    pub fn set(&mut self, def: &'static Def, labels: &[&str], v: f64) {
        with_lvs(labels, |l| {
            *self.slot(def, l, || Value::Number(0.0)).2 = Value::Number(v);
        });
    }

    /// Replace every series of a gauge; series absent now read 0 (a gauge that went to zero
    /// is still reported).
    pub fn set_all(
        &mut self,
        def: &'static Def,
        values: impl IntoIterator<Item = (Vec<String>, f64)>,
    ) {
        if let Some(&at) = self.index.get(def.name) {
            for (_, v) in &mut self.metrics[at].series {
                *v = Value::Number(0.0);
            }
        }
        for (labels, v) in values {
            let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
            // Values past the limit add up in `other`.
            with_lvs(&refs, |l| {
                if let Value::Number(n) = self.slot(def, l, || Value::Number(0.0)).2 {
                    *n += v;
                }
            });
        }
    }

    /// Replace every series of a metric with `values`: series absent from them go (they are
    /// no longer reported), unlike [`Registry::set_all`], where they read 0.
    pub fn replace_all(
        &mut self,
        def: &'static Def,
        values: impl IntoIterator<Item = (Vec<String>, f64)>,
    ) {
        if let Some(&at) = self.index.get(def.name) {
            let m = &mut self.metrics[at];
            let gone = m.index.len();
            m.retired.extend(m.index.drain());
            if !def.name.starts_with("mcptap_") {
                self.series = self.series.saturating_sub(gone);
            }
        }
        self.set_all(def, values);
    }

    /// Record a histogram observation.
    pub fn observe(&mut self, def: &'static Def, labels: &[&str], v: f64) {
        with_lvs(labels, |l| {
            self.observe_lv(def, l, v);
        });
    }

    /// Record a histogram observation, the labels given as [`Lv`]s; the series' [`Handle`]
    /// if it has one.
    pub fn observe_lv(&mut self, def: &'static Def, labels: &[Lv<'_>], v: f64) -> Option<Handle> {
        let Kind::Histogram(bounds) = def.kind else {
            debug_assert!(false, "{} is not a histogram", def.name);
            return None;
        };
        let (handle, ids, entry) = self.slot(def, labels, || Value::Histogram {
            buckets: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        });
        add_observation(entry, bounds, v);
        self.call_hook(def, &ids, v);
        handle
    }

    /// Record an observation in the histogram series `h` of `def` (from
    /// [`Registry::observe_lv`]).
    pub fn observe_at(&mut self, def: &'static Def, h: Handle, v: f64) {
        let Kind::Histogram(bounds) = def.kind else {
            debug_assert!(false, "{} is not a histogram", def.name);
            return;
        };
        let (ids, entry) = &mut self.metrics[h.at as usize].series[h.series as usize];
        add_observation(entry, bounds, v);
        let ids = *ids;
        self.call_hook(def, &ids, v);
    }

    /// Show an observation of the series `ids` of `def` to the hook, if there is one.
    fn call_hook(&self, def: &'static Def, ids: &LabelIds, v: f64) {
        if let Some(hook) = &self.hook {
            // The hook sees the bounded values, as the registry keeps them.
            hook(def, &self.values.names(ids, def.labels.len()), v);
        }
    }

    /// The series of one metric, with their label values copied out.
    pub fn series_owned(&self, def: &Def) -> Vec<SeriesCopy> {
        let Some(m) = self.metric(def.name) else {
            return Vec::new();
        };
        m.each()
            .map(|(ids, v)| (self.values.of(ids, def.labels.len()), v.clone()))
            .collect()
    }

    /// The series of one metric, ordered by label values.
    pub fn series(&self, def: &Def) -> Vec<(Vec<&str>, &Value)> {
        let Some(m) = self.metric(def.name) else {
            return Vec::new();
        };
        let n = def.labels.len();
        let mut out: Vec<_> = m
            .each()
            .map(|(ids, v)| (self.values.names(ids, n), v))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// A counter's or gauge's value (tests and summaries).
    pub fn value(&self, def: &Def, labels: &[&str]) -> Option<f64> {
        let (_, v) = self
            .series(def)
            .into_iter()
            .find(|(names, _)| names == labels)?;
        match v {
            Value::Number(n) => Some(*n),
            Value::Histogram { count, .. } => Some(*count as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README documents every metric, so it cannot fall behind the code.
    #[test]
    fn readme_lists_every_metric() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        for d in defs::ALL {
            assert!(
                readme.contains(&format!("`{}`", d.name)),
                "README lacks {}",
                d.name
            );
            assert!(
                !d.help.contains('|'),
                "{}: help text breaks the README table",
                d.name
            );
        }
    }

    #[test]
    fn definitions_are_consistent() {
        let mut names = HashSet::new();
        for d in defs::ALL {
            assert!(names.insert(d.name), "duplicate {}", d.name);
            assert_eq!(d.labels.len(), d.otel_labels.len(), "{}", d.name);
            assert!(d.labels.len() <= MAX_LABELS, "{}", d.name);
            match d.kind {
                Kind::Counter => assert!(d.name.ends_with("_total"), "{}", d.name),
                _ => assert!(!d.name.ends_with("_total"), "{}", d.name),
            }
            if let Kind::Histogram(b) = d.kind {
                assert!(b.windows(2).all(|w| w[0] < w[1]), "{}", d.name);
            }
        }
        assert_eq!(LATENCY.first(), Some(&0.0001));
        assert_eq!(LATENCY.last(), Some(&300.0));
    }

    #[test]
    fn labels_are_bounded_and_overflow_counted() {
        let mut r = Registry::new(2, 1000);
        for uri in ["a", "b", "c", "d", "a"] {
            r.inc(&defs::RESOURCE_READS, &[uri, "srv", "success", "", ""], 1.0);
        }
        assert_eq!(
            r.value(&defs::RESOURCE_READS, &["a", "srv", "success", "", ""]),
            Some(2.0)
        );
        assert_eq!(
            r.value(&defs::RESOURCE_READS, &[OTHER, "srv", "success", "", ""]),
            Some(2.0)
        );
        assert_eq!(
            r.value(
                &defs::AGENT_LABEL_OVERFLOW,
                &["mcp_resource_reads_total", "resource_uri"]
            ),
            Some(2.0)
        );
    }

    /// More metrics overflowing than the label limit lets `mcptap_label_overflow_total` name:
    /// its own labels are the agent's, never limited, so counting the overflow ends (it
    /// overflowed the stack when they were limited too).
    #[test]
    fn overflows_of_more_metrics_than_the_limit_are_each_counted() {
        let mut r = Registry::new(1, 1000);
        for uri in ["a", "b"] {
            r.inc(&defs::RESOURCE_READS, &[uri, "srv", "success", "", ""], 1.0);
            r.inc(&defs::SCHEMA_CHECKED, &[uri, "srv"], 1.0);
        }
        for (metric, label) in [
            ("mcp_resource_reads_total", "resource_uri"),
            (defs::SCHEMA_CHECKED.name, defs::SCHEMA_CHECKED.labels[0]),
        ] {
            assert_eq!(
                r.value(&defs::AGENT_LABEL_OVERFLOW, &[metric, label]),
                Some(1.0),
                "{metric}"
            );
        }
    }

    /// A definition whose name text sits at another address (a copy of the literal) is still
    /// the same metric: the address is only a shortcut to the name.
    #[test]
    fn a_name_at_another_address_is_the_same_metric() {
        let mut r = Registry::new(100, 100);
        r.inc(&defs::SCHEMA_CHECKED, &["t", "srv"], 1.0);
        let copy: &'static str = Box::leak(defs::SCHEMA_CHECKED.name.to_string().into_boxed_str());
        let moved: &'static Def = Box::leak(Box::new(Def {
            name: copy,
            ..defs::SCHEMA_CHECKED
        }));
        r.inc(moved, &["t", "srv"], 1.0);
        r.inc(moved, &["u", "srv"], 1.0);
        assert_eq!(r.value(&defs::SCHEMA_CHECKED, &["t", "srv"]), Some(2.0));
        assert_eq!(r.value(&defs::SCHEMA_CHECKED, &["u", "srv"]), Some(1.0));
        assert_eq!(r.series_table().len, 2);
    }

    #[test]
    fn replaced_series_go_and_come_back_in_their_old_place() {
        let mut r = Registry::new(100, 3);
        let up = &super::health::UP;
        let names = |ns: &[(&str, f64)]| -> Vec<(Vec<String>, f64)> {
            ns.iter().map(|(n, v)| (vec![n.to_string()], *v)).collect()
        };
        r.replace_all(up, names(&[("a", 1.0), ("b", 0.0)]));
        assert_eq!(
            (r.value(up, &["a"]), r.value(up, &["b"])),
            (Some(1.0), Some(0.0))
        );
        r.replace_all(up, names(&[("b", 1.0)]));
        assert_eq!(r.value(up, &["a"]), None, "gone, not 0");
        assert_eq!(r.series(up).len(), 1);
        // Back, fresh, in its old slot: the store does not grow with churn, and the series
        // cap (3) counts only what is reported.
        for _ in 0..10 {
            r.replace_all(up, names(&[("a", 2.0), ("b", 1.0), ("c", 1.0)]));
            r.replace_all(up, names(&[("c", 1.0)]));
        }
        r.replace_all(up, names(&[("a", 2.0), ("b", 1.0), ("c", 1.0)]));
        assert_eq!(r.value(up, &["a"]), Some(2.0));
        assert_eq!(r.series(up).len(), 3);
        assert_eq!(r.metrics[r.index[up.name]].series.len(), 3);
        assert_eq!(
            r.value(&defs::AGENT_SERIES_OVERFLOW, &["mcp_server_up"]),
            None
        );
    }

    #[test]
    fn series_past_the_cap_fold_into_other_and_are_counted() {
        let mut r = Registry::new(100, 3);
        for tool in ["a", "b", "c", "d", "e"] {
            r.inc(&defs::SCHEMA_CHECKED, &[tool, "srv"], 1.0);
        }
        assert_eq!(r.value(&defs::SCHEMA_CHECKED, &["c", "srv"]), Some(1.0));
        assert_eq!(r.value(&defs::SCHEMA_CHECKED, &["d", "srv"]), None);
        assert_eq!(
            r.value(&defs::SCHEMA_CHECKED, &[OTHER, OTHER]),
            Some(2.0),
            "the two past the cap, in the all-other series"
        );
        let t = r.series_table();
        assert_eq!((t.len, t.cap, t.evicted), (4, 3, 2));
        // The agent's own metrics are not held to the cap.
        r.set(&defs::AGENT_RECORDS, &[], 1.0);
        assert_eq!(r.value(&defs::AGENT_RECORDS, &[]), Some(1.0));
        // A snapshot holds the same series.
        let snap = r.snapshot();
        let (_, series) = snap
            .metrics()
            .find(|(d, _)| d.name == defs::SCHEMA_CHECKED.name)
            .unwrap();
        assert_eq!(series.len(), 4);
    }

    #[test]
    fn histograms_bucket_and_sum() {
        let mut r = Registry::new(10, 1000);
        for v in [0.00005, 0.0003, 400.0] {
            r.observe(&defs::TOOL_DURATION, &["echo", "srv", "", ""], v);
        }
        let series = r.series(&defs::TOOL_DURATION);
        let (_, v) = series.first().unwrap();
        let Value::Histogram {
            buckets,
            sum,
            count,
        } = v
        else {
            panic!()
        };
        assert_eq!(*count, 3);
        assert!((sum - 400.00035).abs() < 1e-9);
        assert_eq!(buckets[0], 1);
        assert_eq!(buckets[2], 1);
        assert_eq!(*buckets.last().unwrap(), 1);
    }
}
