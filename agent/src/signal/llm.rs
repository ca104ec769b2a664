//! The vocabulary of model calls, as the signal model reports them and the model APIs' readers
//! ([`crate::llm`]) fill them in: who serves the API, which API, usage, why the model
//! stopped, what kind of error a reply was, and the tool results a request carries back.

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
    /// Index in the request's messages (`crate::llm::Request::messages`) of the message (or
    /// input item) that carries it.
    pub message: usize,
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
