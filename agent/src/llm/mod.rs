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

/// Who serves the API (the OpenTelemetry `gen_ai.provider.name` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// Anthropic (`anthropic`).
    Anthropic,
    /// OpenAI, and everything that speaks its APIs (vLLM, Ollama, LiteLLM, gateways).
    #[serde(rename = "openai")]
    OpenAi,
    /// Google Gemini (`gcp.gemini` over OTLP).
    Gemini,
}

impl Provider {
    /// The name in JSON lines and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
            Provider::Gemini => "gemini",
        }
    }

    /// The OpenTelemetry `gen_ai.provider.name`.
    pub fn otel_name(self) -> &'static str {
        match self {
            Provider::Anthropic => "anthropic",
            Provider::OpenAi => "openai",
            Provider::Gemini => "gcp.gemini",
        }
    }
}

/// Which API a call spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// Anthropic Messages, `POST .../v1/messages`.
    Messages,
    /// OpenAI Chat Completions, `POST .../chat/completions`.
    ChatCompletions,
    /// OpenAI Responses, `POST .../responses`.
    Responses,
    /// Gemini `generateContent` and `streamGenerateContent`.
    GenerateContent,
}

impl Api {
    /// The name in JSON lines and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Messages => "messages",
            Api::ChatCompletions => "chat_completions",
            Api::Responses => "responses",
            Api::GenerateContent => "generate_content",
        }
    }

    /// The provider whose API this is.
    pub fn provider(self) -> Provider {
        match self {
            Api::Messages => Provider::Anthropic,
            Api::ChatCompletions | Api::Responses => Provider::OpenAi,
            Api::GenerateContent => Provider::Gemini,
        }
    }
}

/// A tool a request offers the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfferedTool {
    /// Its name as the model sees it.
    pub name: String,
    /// The Responses API's `namespace` tool that groups it (an MCP server's functions), if
    /// any.
    pub namespace: Option<String>,
}

/// A tool result a request carries back to the model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CarriedResult {
    /// The id of the tool call it answers (`tool_use_id`, `tool_call_id`, `call_id`, Gemini's
    /// `functionResponse.id`); `None` where the API has none (older Gemini).
    pub call_id: Option<String>,
    /// The tool's name, where the API repeats it (Gemini's `functionResponse.name`).
    pub name: Option<String>,
    /// The API's own error flag: Anthropic's `is_error` (absent means `false`). `None` where
    /// the API has no such flag (Chat Completions `tool` messages, Responses
    /// `function_call_output`, Gemini `functionResponse`): then nothing is guessed.
    pub is_error: Option<bool>,
    /// Bytes of its content as the request encodes it: how tokens per tool are shared out.
    pub bytes: u64,
    /// Index in [`Request::messages`] of the message (or input item) that carries it.
    pub message: usize,
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

/// Usage as the response reported it. `None` where the API did not report that count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Input tokens as reported (Anthropic's `input_tokens` excludes cached tokens; OpenAI's
    /// `prompt_tokens`/`input_tokens` and Gemini's `promptTokenCount` include them).
    #[serde(rename = "input_tokens", skip_serializing_if = "Option::is_none")]
    pub input: Option<u64>,
    /// Output tokens (reasoning included, as every API reports them).
    #[serde(rename = "output_tokens", skip_serializing_if = "Option::is_none")]
    pub output: Option<u64>,
    /// Input tokens read from the prompt cache.
    #[serde(rename = "cache_read_tokens", skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<u64>,
    /// Input tokens written to the prompt cache (Anthropic's `cache_creation_input_tokens`).
    #[serde(rename = "cache_write_tokens", skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<u64>,
    /// Reasoning (thinking) output tokens.
    #[serde(rename = "reasoning_tokens", skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<u64>,
}

impl Usage {
    /// All the input the model read, cached or not (the OpenTelemetry
    /// `gen_ai.usage.input_tokens`): Anthropic's counts added up, the others as reported.
    pub fn total_input(&self, provider: Provider) -> Option<u64> {
        match provider {
            // Counts come from the wire: saturate rather than overflow on a hostile reply.
            Provider::Anthropic => self.input.map(|i| {
                i.saturating_add(self.cache_read.unwrap_or(0))
                    .saturating_add(self.cache_write.unwrap_or(0))
            }),
            Provider::OpenAi | Provider::Gemini => self.input,
        }
    }

    /// Whether any count was reported.
    pub fn any(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }
}

/// Why the model stopped, normalised across APIs (the provider's own word is kept beside it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// It finished its answer (`end_turn`, `stop`, `STOP`, Responses `completed` without
    /// tool calls).
    EndTurn,
    /// It asked for tools (`tool_use`, `tool_calls`, or any reply that carries tool calls).
    ToolUse,
    /// It ran out of output tokens (`max_tokens`, `length`, `MAX_TOKENS`, Responses
    /// `incomplete` for `max_output_tokens`).
    MaxTokens,
    /// The context window filled during generation (`model_context_window_exceeded`).
    ContextOverflow,
    /// A content filter or safety stop (`refusal`, `content_filter`, `SAFETY`, ...).
    Filtered,
    /// Anything else, or not said.
    #[default]
    Other,
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

/// What kind of API error a reply was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 429, `rate_limit_error`, `rate_limit_exceeded`, `RESOURCE_EXHAUSTED`.
    RateLimit,
    /// The prompt does not fit the context window (`context_length_exceeded`, Anthropic's
    /// "prompt is too long", Gemini's token-count `INVALID_ARGUMENT`).
    ContextOverflow,
    /// `overloaded_error`, 529, 503 `UNAVAILABLE`.
    Overloaded,
    /// 401/403: authentication or permission.
    Auth,
    /// Any other 4xx: a request the API refused.
    InvalidRequest,
    /// Any other 5xx, or an error event inside a stream.
    Server,
}

impl ErrorKind {
    /// The name in JSON lines and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::RateLimit => "rate_limit",
            ErrorKind::ContextOverflow => "context_overflow",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Auth => "auth",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Server => "server",
        }
    }
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
