//! Stage 4, LLM APIs: the model calls a process makes, read from the same HTTP transactions
//! MCP's HTTP binding reads, beside MCP and never mistaken for it.
//!
//! [`api`] recognises a model API by method, path and body shape (never by host name) and
//! reads only what the agentic layer needs from each request and each response (JSON or a
//! streamed event stream): the model, the tools offered, a fingerprint of each message of
//! the conversation, the tool results the request carries back, and from the response the
//! tool calls, the usage as reported, why it stopped, or the API error. Prompt, completion and
//! tool text are never kept unless `--payloads` asks for them. [`http`] is the binding: one
//! [`HttpApp`](crate::proto::http::HttpApp) that pairs each request with its response and
//! reports a [`crate::signal::LlmCall`].

pub mod api;
pub mod http;

// The vocabulary of model calls belongs to the signal model, which every output reads.
pub use crate::signal::llm::{Api, CarriedResult, ErrorKind, Provider, Stop, Usage};

/// A tool a request offers the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfferedTool {
    /// Its name as the model sees it.
    pub name: String,
    /// The Responses API's `namespace` tool that groups it (an MCP server's functions), if
    /// any.
    pub namespace: Option<String>,
}

/// What mcptap reads of a model request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The model asked for (`model`; Gemini's from the path).
    pub model: Option<String>,
    /// The reply is streamed (`stream: true`; Gemini's `streamGenerateContent`).
    pub stream: bool,
    /// The tools offered, in order.
    pub tools: Vec<OfferedTool>,
    /// A fingerprint of the system prompt (`system`, `instructions`,
    /// `systemInstruction`; a Chat Completions `system`/`developer` message is one of the
    /// messages instead), 0 when there is none.
    pub system: u64,
    /// A fingerprint of each message (Chat Completions, Messages, Gemini `contents`) or
    /// input item (Responses), in order. Two encodings of the same message by the same
    /// client hash the same: the fingerprint covers the role and the content (text, tool call
    /// ids, names and canonical arguments, tool result ids and content), and ignores what
    /// clients move between requests (Anthropic's `cache_control`).
    pub messages: Vec<u64>,
    /// The tool results carried back, in order.
    pub results: Vec<CarriedResult>,
    /// Responses API: the earlier response this one continues (`previous_response_id`).
    pub previous_response_id: Option<String>,
    /// `max_tokens` / `max_completion_tokens` / `max_output_tokens` /
    /// `generationConfig.maxOutputTokens`.
    pub max_tokens: Option<u64>,
    /// With `--payloads` only: the last message's text, redacted, at most
    /// [`MAX_PAYLOAD_TEXT`] bytes.
    pub prompt: Option<String>,
}

/// A tool call the model asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolCall {
    /// Its id (`toolu_...`, `call_...`; Gemini's `functionCall.id` when present).
    pub id: Option<String>,
    /// The tool's name as the model wrote it.
    pub name: String,
    /// The Responses API's `namespace` of the call, if any.
    pub namespace: Option<String>,
    /// [`crate::wire::json::canonical_hash`] of the arguments (Chat Completions and Responses
    /// carry them as a JSON string: its decoded text is hashed); `None` when they are not
    /// one JSON value (a cut stream).
    pub args_hash: Option<u64>,
    /// Bytes of the arguments' JSON text.
    pub args_bytes: u64,
    /// With `--payloads` only: the arguments, redacted.
    pub arguments: Option<serde_json::Value>,
}

/// An API error: an error body (any status), or an error event inside a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// What kind of error.
    pub kind: ErrorKind,
    /// The provider's own type or code (`rate_limit_error`, `context_length_exceeded`,
    /// `RESOURCE_EXHAUSTED`, ...), at most 64 bytes; never the message text.
    pub code: Option<String>,
}

/// What mcptap reads of a model response: a whole JSON body, or a stream's events added up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// The response's id (`msg_...`, `chatcmpl-...`, `resp_...`, Gemini's `responseId`).
    pub id: Option<String>,
    /// The model that answered.
    pub model: Option<String>,
    /// Usage as reported (in a stream: the last report of each count).
    pub usage: Usage,
    /// The provider's own stop reason (`end_turn`, `tool_calls`, `MAX_TOKENS`, Responses
    /// `completed` / `incomplete:max_output_tokens`), at most 64 bytes.
    pub finish_reason: Option<String>,
    /// The stop reason, normalised.
    pub stop: Stop,
    /// Tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// The API error the reply was, or that a stream ended with.
    pub error: Option<ApiError>,
    /// The reply ended as the API ends one: a whole JSON body, or a stream's final event
    /// (`message_stop`, `[DONE]`, `response.completed`/`failed`/`incomplete`, Gemini's last
    /// chunk with a `finishReason`). A stream without it was cut off.
    pub complete: bool,
    /// Bytes of generated text (text and reasoning deltas or blocks).
    pub text_bytes: u64,
    /// With `--payloads` only: the generated text, redacted, at most [`MAX_PAYLOAD_TEXT`]
    /// bytes.
    pub completion: Option<String>,
}

/// The most text kept per call with `--payloads`.
pub const MAX_PAYLOAD_TEXT: usize = 16 * 1024;
