//! The model APIs mcptap reads, one module each behind [`ModelApi`]:
//!
//! - [`anthropic`]: Anthropic Messages (`POST .../v1/messages`);
//! - [`openai_chat`]: OpenAI Chat Completions (`POST .../chat/completions`), which vLLM,
//!   Ollama, LiteLLM and most gateways speak too;
//! - [`openai_responses`]: OpenAI Responses (`POST .../responses`);
//! - [`gemini`]: Gemini `generateContent` and `streamGenerateContent`.
//!
//! A transaction is taken for a model call when its method and path name an API
//! ([`recognise`]) and its body has that API's shape ([`ModelApi::request`]); never by host
//! name. Each module reads only the fields the agentic layer needs, with serde borrowing
//! from the body and skipping the rest unread.
//!
//! Adding an API: a module with a [`ModelApi`] value, its path in [`recognise`], and its
//! [`Api`] variant (marked `LLM_API_LIST` where each must be named).

pub mod anthropic;
mod common;
pub mod gemini;
pub mod openai_chat;
pub mod openai_responses;

use super::{Api, ApiError, Request, Response};

/// What a parser may keep besides the facts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Keep prompt, completion and argument text (`--payloads`), redacted.
    pub payloads: bool,
}

/// Why a body is not a request of the API its path named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotThisApi {
    /// Not JSON (or not an object).
    NotJson,
    /// JSON, but not this API's request shape (the field named is missing or mistyped).
    Shape(&'static str),
}

/// The events of one streamed reply, added up as they come.
pub trait Accumulator: Send {
    /// One server-sent event (`event` is its `event:` field, `message` when absent; `data`
    /// its data lines joined). Returns true when the event carried generated content (text,
    /// reasoning, or a tool call's start or arguments): the first such event is the time to
    /// first token.
    fn event(&mut self, event: &str, data: &[u8]) -> bool;
    /// Bytes held for the reply so far (tool call arguments being gathered, payload text).
    fn held(&self) -> usize;
    /// The reply so far; [`Response::complete`] says whether its final event came.
    fn finish(self: Box<Self>) -> Response;
}

/// One model API.
pub trait ModelApi: Sync {
    /// Which API this is.
    fn api(&self) -> Api;
    /// Read a request body sent to `path` (the request target: path and query).
    fn request(&self, path: &str, body: &[u8], opts: Options) -> Result<Request, NotThisApi>;
    /// Read a whole (not streamed) reply body with HTTP status `status`: a response, or an
    /// error body (any status ≥ 400; a 200 body that is an error object too).
    fn response(&self, status: u16, body: &[u8], opts: Options) -> Response;
    /// A fresh accumulator for a streamed (`text/event-stream`) reply.
    fn stream(&self, opts: Options) -> Box<dyn Accumulator>;
}

/// The API a request is for, from its method and target (path and query); `None` when the
/// path names none. Paths are matched on their ends, so that gateway prefixes
/// (`/openai/v1/...`, `/api/...`) and versions are allowed; sub-resources
/// (`/v1/messages/count_tokens`, `/v1/messages/batches`, `/responses/{id}`) are not calls.
// LLM_API_LIST: every API's path.
pub fn recognise(method: &str, target: &str) -> Option<&'static dyn ModelApi> {
    if method != "POST" {
        return None;
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    let path = path.trim_end_matches('/');
    if path.ends_with("/messages") && !path.ends_with("/chat/messages") {
        Some(&anthropic::API)
    } else if path.ends_with("/chat/completions") {
        Some(&openai_chat::API)
    } else if path.ends_with("/responses") {
        Some(&openai_responses::API)
    } else if gemini::method_of(path).is_some() {
        Some(&gemini::API)
    } else {
        None
    }
}

/// Classify an error from the HTTP status and the provider's type or code (lower-cased
/// comparisons; the code is what the error body named, e.g. `rate_limit_error`).
pub fn error_kind(
    status: u16,
    code: Option<&str>,
    message_says_too_long: bool,
) -> super::ErrorKind {
    use super::ErrorKind::*;
    let code = code.unwrap_or("").to_ascii_lowercase();
    if message_says_too_long || code.contains("context_length") || code.contains("context_window") {
        ContextOverflow
    } else if status == 429 || code.contains("rate_limit") || code == "resource_exhausted" {
        RateLimit
    } else if status == 529 || code.contains("overloaded") || code == "unavailable" {
        Overloaded
    } else if status == 401
        || status == 403
        || code.contains("authentication")
        || code.contains("permission")
    {
        Auth
    } else if (400..500).contains(&status) {
        InvalidRequest
    } else {
        Server
    }
}

/// An [`ApiError`] of `kind` with the provider's code kept (cut to 64 bytes).
pub fn api_error(kind: super::ErrorKind, code: Option<&str>) -> ApiError {
    ApiError {
        kind,
        code: code.map(|c| cut(c, 64).to_string()),
    }
}

/// `s` cut to at most `max` bytes, on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
