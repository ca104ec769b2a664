//! OpenAI Chat Completions (`POST .../chat/completions`), which vLLM, Ollama, LiteLLM and most
//! gateways speak too.
//!
//! Request: `model`, `messages` (a `system`/`developer` message is one of them), their
//! `tool_calls` (arguments as a JSON string), `tools[].function.name` (or `custom.name`),
//! `stream`, `max_completion_tokens` or `max_tokens`; `tool` messages are the results carried
//! back (and legacy `function` messages). Reply: `choices[0]` (`message.content`, `refusal`,
//! `reasoning_content`/`reasoning`, `tool_calls`, `finish_reason`) and `usage`, whole or as
//! `chat.completion.chunk` deltas ending with `[DONE]`.

use std::borrow::Cow;

use super::common::{
    ArgsKind, Body, Calls, Fp, Gen, List, MAX_CALLS, Obj, UsageKeys, args_text, call, content_hash,
    content_text, error_of, finish_reply, not_json, obj_of, part_hash, part_text, reason, stop_of,
    string_args_hash, take_usage, text_hash, whole_call,
};
use super::{Accumulator, ModelApi, NotThisApi, Options};
use crate::llm::{Api, CarriedResult, OfferedTool, Request, Response, ToolCall};

/// The Chat Completions API.
pub struct OpenAiChat;

/// The Chat Completions API's reader.
pub static API: OpenAiChat = OpenAiChat;

const USAGE: UsageKeys = UsageKeys {
    input: &["prompt_tokens"],
    output: &["completion_tokens"],
    cache_read: &["prompt_tokens_details", "cached_tokens"],
    cache_write: &[],
    reasoning: &["completion_tokens_details", "reasoning_tokens"],
};

/// The key of a legacy `function_call` in a stream (it has no index).
const LEGACY_KEY: u64 = u64::MAX - 1;
/// Keys given to streamed tool calls that come without an index (some servers omit it).
const UNINDEXED_KEYS: u64 = 1 << 62;

impl ModelApi for OpenAiChat {
    fn api(&self) -> Api {
        Api::ChatCompletions
    }

    fn request(&self, _path: &str, body: &[u8], opts: Options) -> Result<Request, NotThisApi> {
        request(body, opts)
    }

    fn response(&self, status: u16, body: &[u8], opts: Options) -> Response {
        response(status, body, opts)
    }

    fn stream(&self, opts: Options) -> Box<dyn Accumulator> {
        Box::new(Stream::new(opts))
    }
}

fn request(body: &[u8], opts: Options) -> Result<Request, NotThisApi> {
    let Body { obj, list } = Body::parse(body, "messages")?;
    let model = obj.str("model").ok_or(NotThisApi::Shape("model"))?;
    let Some(List::Items(messages)) = list else {
        return Err(NotThisApi::Shape("messages"));
    };
    let mut req = Request {
        model: Some(model.into_owned()),
        stream: obj.bool("stream").unwrap_or(false),
        max_tokens: obj
            .u64("max_completion_tokens")
            .or_else(|| obj.u64("max_tokens")),
        tools: obj
            .items("tools")
            .iter()
            .filter_map(|t| t.obj("function").or_else(|| t.obj("custom"))?.str("name"))
            .map(|name| OfferedTool {
                name: name.into_owned(),
                namespace: None,
            })
            .collect(),
        ..Request::default()
    };
    for (i, m) in messages.iter().enumerate() {
        let h = message_hash(m, i, &mut req.results);
        req.messages.push(h);
    }
    if opts.payloads {
        req.prompt = messages.last().and_then(|m| {
            let mut out = Gen::new(opts);
            content_text(m.raw("content"), &mut out, part_text);
            out.payload()
        });
    }
    Ok(req)
}

/// A message's fingerprint: role, content, tool calls and the call a `tool` message answers.
fn message_hash(m: &Obj, index: usize, results: &mut Vec<CarriedResult>) -> u64 {
    let role = m.str("role");
    let mut fp = Fp::new(b'm');
    fp.opt(role.as_deref())
        .u64(content_hash(m.raw("content"), part_hash));
    for c in m.items("tool_calls") {
        fp.u64(call_hash(&c));
    }
    if let Some(f) = m.obj("function_call") {
        fp.u64(
            Fp::new(b'c')
                .opt(None)
                .opt(f.str("name").as_deref())
                .u64(string_args_hash(f.raw("arguments")))
                .finish(),
        );
    }
    fp.opt(m.str("tool_call_id").as_deref());
    let bytes = m.raw("content").map_or(0, |c| c.get().len() as u64);
    match role.as_deref() {
        Some("tool") => results.push(CarriedResult {
            call_id: m.str("tool_call_id").map(Cow::into_owned),
            name: None,
            is_error: None,
            bytes,
            message: index,
        }),
        Some("function") => results.push(CarriedResult {
            call_id: None,
            name: m.str("name").map(Cow::into_owned),
            is_error: None,
            bytes,
            message: index,
        }),
        _ => {}
    }
    fp.finish()
}

/// A tool call's hash: id, name and the canonical hash of its decoded arguments (a custom
/// tool's input by its text).
fn call_hash(c: &Obj) -> u64 {
    let (name, args) = if let Some(f) = c.obj("function") {
        (f.str("name"), string_args_hash(f.raw("arguments")))
    } else if let Some(k) = c.obj("custom") {
        (k.str("name"), k.str("input").map_or(0, |t| text_hash(&t)))
    } else {
        (None, 0)
    };
    Fp::new(b'c')
        .opt(c.str("id").as_deref())
        .opt(name.as_deref())
        .u64(args)
        .finish()
}

/// The choice mcptap reads: index 0 (a request for `n` > 1 answers is read for its first).
fn first_choice<'a>(obj: &Obj<'a>) -> Option<Obj<'a>> {
    obj.items("choices")
        .into_iter()
        .find(|c| c.u64("index").unwrap_or(0) == 0)
}

fn response(status: u16, body: &[u8], opts: Options) -> Response {
    let Some(obj) = obj_of(body) else {
        return not_json(status);
    };
    let mut r = Response {
        complete: true,
        id: obj.str("id").map(Cow::into_owned),
        model: obj.str("model").map(Cow::into_owned),
        ..Response::default()
    };
    // vLLM writes its error at the top: `{"object": "error", "message": ..., "type": ...}`.
    let err = obj.obj("error");
    let top = obj.str("object").as_deref() == Some("error");
    if status >= 400 || err.is_some() || top {
        let err = err.as_ref().or(top.then_some(&obj));
        r.error = Some(error_of(status, err, &["code", "type"]));
    }
    if let Some(u) = obj.obj("usage") {
        take_usage(&mut r.usage, &u, &USAGE);
    }
    let mut text = Gen::new(opts);
    if let Some(choice) = first_choice(&obj) {
        r.finish_reason = choice.str("finish_reason").map(|s| reason(&s));
        if let Some(m) = choice.obj("message") {
            message_reply(&m, &mut text, &mut r.tool_calls, opts);
        }
    }
    r.stop = stop_of(r.finish_reason.as_deref(), !r.tool_calls.is_empty());
    r.text_bytes = text.bytes;
    r.completion = text.payload();
    r
}

/// What a reply's message holds: text, reasoning and tool calls.
fn message_reply(m: &Obj, text: &mut Gen, calls: &mut Vec<ToolCall>, opts: Options) {
    match m.list("content") {
        List::Text(t) => text.text(&t),
        List::Items(parts) => {
            for p in &parts {
                if matches!(p.str("type").as_deref(), Some("text" | "output_text")) {
                    text.text(&p.str("text").unwrap_or_default());
                }
            }
        }
        List::Other => {}
    }
    if let Some(t) = m.str("refusal") {
        text.text(&t);
    }
    if let Some(t) = m.str("reasoning_content").or_else(|| m.str("reasoning")) {
        text.reasoning(&t);
    }
    for c in m.items("tool_calls") {
        match (c.obj("function"), c.obj("custom")) {
            (Some(f), _) => push_call(calls, c.str("id"), &f, ArgsKind::Json, opts),
            (None, Some(k)) => push_call(calls, c.str("id"), &k, ArgsKind::Text, opts),
            (None, None) => {}
        }
    }
    // The legacy `function_call` is its own `function`, without an id.
    if let Some(f) = m.obj("function_call") {
        push_call(calls, None, &f, ArgsKind::Json, opts);
    }
}

/// A whole tool call of a reply: `f` is its `function` (name, arguments) or `custom` (name,
/// input).
fn push_call(
    calls: &mut Vec<ToolCall>,
    id: Option<Cow<str>>,
    f: &Obj,
    kind: ArgsKind,
    opts: Options,
) {
    if calls.len() >= MAX_CALLS {
        return;
    }
    let args = match kind {
        ArgsKind::Json => args_text(f.raw("arguments")),
        ArgsKind::Text => f.str("input").unwrap_or_default(),
    };
    calls.push(whole_call(call(id, f.str("name"), None), &args, kind, opts));
}

/// A streamed reply being added up.
struct Stream {
    r: Response,
    text: Gen,
    calls: Calls,
    /// Calls seen without an index so far.
    unindexed: u64,
}

impl Stream {
    fn new(opts: Options) -> Self {
        Stream {
            r: Response::default(),
            text: Gen::new(opts),
            calls: Calls::new(opts),
            unindexed: 0,
        }
    }

    fn delta(&mut self, d: &Obj) -> bool {
        let mut content = false;
        for t in [d.str("content"), d.str("refusal")].into_iter().flatten() {
            self.text.text(&t);
            content |= !t.is_empty();
        }
        // Servers name the reasoning text either way (some send both, with the same text).
        if let Some(t) = d.str("reasoning_content").or_else(|| d.str("reasoning")) {
            self.text.reasoning(&t);
            content |= !t.is_empty();
        }
        for tc in d.items("tool_calls") {
            content |= self.tool_delta(&tc);
        }
        if let Some(f) = d.obj("function_call") {
            content |= self.call_piece(LEGACY_KEY, None, &f, ArgsKind::Json);
        }
        content
    }

    /// One tool call's delta: the first names it (id, name), the rest carry arguments.
    fn tool_delta(&mut self, tc: &Obj) -> bool {
        let id = tc.str("id");
        // Without an index, a call is known by its id (repeated on each delta by some).
        let known = id.as_deref().and_then(|i| self.calls.key_of(i));
        let key = match (tc.u64("index"), known) {
            (Some(i), _) | (None, Some(i)) => i,
            (None, None) if id.is_some() => {
                self.unindexed += 1;
                UNINDEXED_KEYS + self.unindexed
            }
            (None, None) => match self.calls.last_key() {
                Some(k) => k,
                None => return false,
            },
        };
        match (tc.obj("function"), tc.obj("custom")) {
            (Some(f), _) => self.call_piece(key, id, &f, ArgsKind::Json),
            (None, Some(k)) => self.call_piece(key, id, &k, ArgsKind::Text),
            (None, None) => self.call_piece(key, id, &Obj::default(), ArgsKind::Json),
        }
    }

    fn call_piece(&mut self, key: u64, id: Option<Cow<str>>, f: &Obj, kind: ArgsKind) -> bool {
        let name = f.str("name");
        if !self.calls.is_open(key) {
            if id.is_none() && name.is_none() {
                return false;
            }
            let item = id.as_deref().map(str::to_string);
            self.calls
                .start(key, item.as_deref(), call(id, name, None), kind);
        }
        let piece = match kind {
            ArgsKind::Json => args_text(f.raw("arguments")),
            ArgsKind::Text => f.str("input").unwrap_or_default(),
        };
        self.calls.append(Some(key), None, &piece);
        true
    }
}

impl Accumulator for Stream {
    fn event(&mut self, _event: &str, data: &[u8]) -> bool {
        if data.trim_ascii() == b"[DONE]" {
            self.r.complete = true;
            self.calls.complete_all();
            return false;
        }
        let Some(obj) = obj_of(data) else {
            return false;
        };
        if let Some(e) = obj.obj("error") {
            self.r.error = Some(error_of(200, Some(&e), &["code", "type"]));
            self.r.complete = true;
            return false;
        }
        self.r.id = self.r.id.take().or(obj.str("id").map(Cow::into_owned));
        self.r.model = self
            .r
            .model
            .take()
            .or(obj.str("model").map(Cow::into_owned));
        if let Some(u) = obj.obj("usage") {
            take_usage(&mut self.r.usage, &u, &USAGE);
        }
        let mut content = false;
        if let Some(choice) = first_choice(&obj) {
            if let Some(d) = choice.obj("delta") {
                content = self.delta(&d);
            }
            if let Some(f) = choice.str("finish_reason") {
                self.r.finish_reason = Some(reason(&f));
                self.calls.complete_all();
            }
        }
        content
    }

    fn held(&self) -> usize {
        self.text.held() + self.calls.held()
    }

    fn finish(self: Box<Self>) -> Response {
        let Stream { r, text, calls, .. } = *self;
        finish_reply(r, &text, calls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::api::common::testing::{
        cut_after, replay_events, same_however_split, sse_reply,
    };
    use crate::llm::{ErrorKind, Stop, Usage};
    use crate::wire::json::canonical_hash;

    const QUIET: Options = Options { payloads: false };
    const PAYLOADS: Options = Options { payloads: true };

    /// A second turn as the `openai` Python SDK sends it: the system message, the question,
    /// the model's two parallel calls and both results.
    const TURN2: &str = r#"{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What's the weather in Paris and Lyon?"},{"role":"assistant","content":null,"tool_calls":[{"id":"call_a1B2c3D4e5F6g7H8","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},{"id":"call_Z9y8X7w6V5u4T3s2","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Lyon\"}"}}]},{"role":"tool","tool_call_id":"call_a1B2c3D4e5F6g7H8","content":"18°C and sunny"},{"role":"tool","tool_call_id":"call_Z9y8X7w6V5u4T3s2","content":"15°C and cloudy"}],"model":"gpt-4o-2024-08-06","max_completion_tokens":2048,"parallel_tool_calls":true,"stream":true,"stream_options":{"include_usage":true},"tools":[{"type":"function","function":{"name":"get_weather","description":"Get the weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false},"strict":true}},{"type":"function","function":{"name":"lookup_order","parameters":{"type":"object","properties":{}}}}]}"#;

    fn req(body: &str) -> Request {
        API.request("/v1/chat/completions", body.as_bytes(), QUIET)
            .unwrap()
    }

    #[test]
    fn a_multi_turn_request_with_parallel_calls_and_results() {
        let r = req(TURN2);
        assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert!(r.stream);
        assert_eq!(r.max_tokens, Some(2048));
        let names: Vec<_> = r.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["get_weather", "lookup_order"]);
        assert_eq!(r.system, 0, "the system message is one of the messages");
        assert_eq!(r.messages.len(), 5);
        assert_eq!(
            r.results,
            [
                CarriedResult {
                    call_id: Some("call_a1B2c3D4e5F6g7H8".into()),
                    name: None,
                    is_error: None,
                    bytes: r#""18°C and sunny""#.len() as u64,
                    message: 3,
                },
                CarriedResult {
                    call_id: Some("call_Z9y8X7w6V5u4T3s2".into()),
                    name: None,
                    is_error: None,
                    bytes: r#""15°C and cloudy""#.len() as u64,
                    message: 4,
                },
            ]
        );
        assert_ne!(r.messages[3], r.messages[4]);
    }

    #[test]
    fn the_sdk_echoing_the_reply_message_hashes_as_the_message_it_was() {
        // `messages.append(completion.choices[0].message)`: the SDK dumps its model, nulls and
        // all, in its own key order, and the arguments as the server wrote them.
        let dumped = TURN2.replace(
            r#"{"role":"assistant","content":null,"tool_calls":[{"id":"call_a1B2c3D4e5F6g7H8","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}"#,
            r#"{"content":null,"refusal":null,"role":"assistant","annotations":[],"audio":null,"function_call":null,"tool_calls":[{"id":"call_a1B2c3D4e5F6g7H8","function":{"arguments":"{\"city\": \"Paris\"}","name":"get_weather"},"type":"function"}"#,
        );
        assert_ne!(dumped, TURN2);
        assert_eq!(req(&dumped).messages, req(TURN2).messages);
        let other = TURN2.replace(r#"{\"city\":\"Lyon\"}"#, r#"{\"city\":\"Nice\"}"#);
        assert_ne!(req(&other).messages[2], req(TURN2).messages[2]);
        assert_eq!(req(&other).messages[..2], req(TURN2).messages[..2]);
    }

    #[test]
    fn content_parts_legacy_limits_and_functions() {
        // vLLM and Ollama clients still send `max_tokens`; an image part is hashed whole; a
        // string equals one text part; legacy `function` messages are results by name.
        let body = r#"{"model":"Qwen/Qwen2.5-VL-7B-Instruct","max_tokens":512,"messages":[{"role":"user","content":[{"type":"text","text":"What is in this image?"},{"type":"image_url","image_url":{"url":"data:image/jpeg;base64,/9j/4AAQSkZJRg=="}}]},{"role":"assistant","content":"A cat.","function_call":null},{"role":"assistant","content":null,"function_call":{"name":"get_time","arguments":"{}"}},{"role":"function","name":"get_time","content":"12:00"}],"tools":[{"type":"custom","custom":{"name":"run_sql","description":"SQL"}}]}"#;
        let r = req(body);
        assert_eq!((r.max_tokens, r.stream), (Some(512), false));
        assert_eq!(r.tools[0].name, "run_sql");
        assert_eq!(r.results.len(), 1);
        assert_eq!(
            (
                r.results[0].call_id.as_deref(),
                r.results[0].name.as_deref()
            ),
            (None, Some("get_time"))
        );
        let image = body.replace("/9j/4AAQSkZJRg==", "/9j/4AAQSkZJRh==");
        assert_ne!(req(&image).messages[0], r.messages[0]);
        let parts = req(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"A cat."}]}]}"#,
        );
        let plain = req(r#"{"model":"m","messages":[{"role":"user","content":"A cat."}]}"#);
        assert_eq!(parts.messages, plain.messages);
        assert_ne!(plain.messages[0], r.messages[1], "the role counts");
    }

    #[test]
    fn pydantic_ai_omits_empty_content_and_repeats_the_conversation() {
        // pydantic-ai's OpenAI model leaves `content` out of a tool-calling assistant message
        // and sends the whole history again each turn.
        let turn1 = r#"{"messages":[{"role":"system","content":"Roll dice for the user."},{"role":"user","content":"Roll me a die."}],"model":"gpt-4o","n":1,"parallel_tool_calls":true,"tool_choice":"auto","tools":[{"type":"function","function":{"name":"roll_die","description":"Roll a six-sided die.","parameters":{"additionalProperties":false,"properties":{},"type":"object"},"strict":true}}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let turn2 = r#"{"messages":[{"role":"system","content":"Roll dice for the user."},{"role":"user","content":"Roll me a die."},{"role":"assistant","tool_calls":[{"id":"call_Qd7p2xRbM1","type":"function","function":{"name":"roll_die","arguments":"{}"}}]},{"role":"tool","tool_call_id":"call_Qd7p2xRbM1","content":"4"}],"model":"gpt-4o","n":1,"parallel_tool_calls":true,"tool_choice":"auto","tools":[{"type":"function","function":{"name":"roll_die","description":"Roll a six-sided die.","parameters":{"additionalProperties":false,"properties":{},"type":"object"},"strict":true}}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let (a, b) = (req(turn1), req(turn2));
        assert_eq!(b.messages[..2], a.messages[..]);
        assert_eq!(b.results.len(), 1);
        assert_eq!((b.results[0].bytes, b.results[0].message), (3, 3));
        let with_null = turn2.replace(
            r#"{"role":"assistant","tool_calls""#,
            r#"{"role":"assistant","content":null,"tool_calls""#,
        );
        assert_eq!(req(&with_null).messages, b.messages);
    }

    #[test]
    fn shapes_that_are_not_chat_requests() {
        let e = |b: &str| {
            API.request("/v1/chat/completions", b.as_bytes(), QUIET)
                .err()
        };
        assert_eq!(e(r#"{"messages":[]}"#), Some(NotThisApi::Shape("model")));
        assert_eq!(
            e(r#"{"model":"m","prompt":"hi"}"#),
            Some(NotThisApi::Shape("messages"))
        );
        assert_eq!(
            e(r#"{"model":"m","messages":{}}"#),
            Some(NotThisApi::Shape("messages"))
        );
        assert_eq!(e("not json"), Some(NotThisApi::NotJson));
    }

    #[test]
    fn payloads_keep_the_last_message_text() {
        let r = API
            .request("/v1/chat/completions", TURN2.as_bytes(), PAYLOADS)
            .unwrap();
        assert_eq!(r.prompt.as_deref(), Some("15°C and cloudy"));
        let parts = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"token=abc123secret"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"thanks"}]}]}"#;
        let p = API
            .request("/v1/chat/completions", parts.as_bytes(), PAYLOADS)
            .unwrap();
        assert_eq!(p.prompt.as_deref(), Some("[REDACTED]\nthanks"));
    }

    const REPLY_TOOLS: &str = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_a1B2c3D4e5F6g7H8","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}},{"id":"call_Z9y8X7w6V5u4T3s2","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Lyon\"}"}}],"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":82,"completion_tokens":44,"total_tokens":126,"prompt_tokens_details":{"cached_tokens":64,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_eb9dce56a8"}"#;

    #[test]
    fn a_whole_reply_with_tool_calls() {
        let r = API.response(200, REPLY_TOOLS.as_bytes(), QUIET);
        assert!(r.complete);
        assert_eq!(r.error, None);
        assert_eq!(
            r.id.as_deref(),
            Some("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG")
        );
        assert_eq!(
            r.usage,
            Usage {
                input: Some(82),
                output: Some(44),
                cache_read: Some(64),
                cache_write: None,
                reasoning: Some(0),
            }
        );
        assert_eq!(
            (r.finish_reason.as_deref(), r.stop),
            (Some("tool_calls"), Stop::ToolUse)
        );
        assert_eq!(r.tool_calls.len(), 2);
        let c = &r.tool_calls[1];
        assert_eq!(
            (c.id.as_deref(), c.name.as_str()),
            (Some("call_Z9y8X7w6V5u4T3s2"), "get_weather")
        );
        assert_eq!(c.args_hash, canonical_hash(r#"{"city":"Lyon"}"#));
        assert_eq!(c.args_bytes, r#"{"city": "Lyon"}"#.len() as u64);
        assert_eq!(r.text_bytes, 0);
        let p = API.response(200, REPLY_TOOLS.as_bytes(), PAYLOADS);
        assert_eq!(
            p.tool_calls[0].arguments,
            Some(serde_json::json!({"city": "Paris"}))
        );
        assert_eq!(p.completion, None);
    }

    #[test]
    fn whole_replies_that_stop_run_out_are_filtered_or_reason() {
        let text = API.response(200, br#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Paris: 18C, Lyon: 15C."},"finish_reason":"stop"}],"usage":{"prompt_tokens":120,"completion_tokens":11,"total_tokens":131}}"#, PAYLOADS);
        assert_eq!((text.stop, text.text_bytes), (Stop::EndTurn, 22));
        assert_eq!(text.completion.as_deref(), Some("Paris: 18C, Lyon: 15C."));
        assert_eq!((text.usage.cache_read, text.usage.reasoning), (None, None));
        let long = API.response(200, br#"{"id":"chatcmpl-2","choices":[{"index":0,"message":{"role":"assistant","content":"Once"},"finish_reason":"length"}]}"#, QUIET);
        assert_eq!(long.stop, Stop::MaxTokens);
        let filtered = API.response(200, br#"{"id":"chatcmpl-3","choices":[{"index":0,"message":{"role":"assistant","content":null},"finish_reason":"content_filter"}]}"#, QUIET);
        assert_eq!(filtered.stop, Stop::Filtered);
        // DeepSeek and vLLM put the reasoning beside the answer.
        let reasoning = API.response(200, br#"{"id":"x","model":"deepseek-reasoner","choices":[{"index":0,"message":{"role":"assistant","content":"42","reasoning_content":"Let me think."},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":20,"completion_tokens_details":{"reasoning_tokens":15}}}"#, PAYLOADS);
        assert_eq!(reasoning.text_bytes, 2 + 13);
        assert_eq!(reasoning.completion.as_deref(), Some("42"));
        assert_eq!(reasoning.usage.reasoning, Some(15));
        // The second choice of an `n: 2` request is not read.
        let two = API.response(200, br#"{"choices":[{"index":1,"message":{"content":"bb"},"finish_reason":"length"},{"index":0,"message":{"content":"a"},"finish_reason":"stop"}]}"#, QUIET);
        assert_eq!((two.text_bytes, two.stop), (1, Stop::EndTurn));
    }

    #[test]
    fn error_bodies_are_classified() {
        for (status, body, kind, code) in [
            (
                429,
                r#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 29000, Requested 2000. Please try again in 2s.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
                ErrorKind::RateLimit,
                Some("rate_limit_exceeded"),
            ),
            (
                429,
                r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
                ErrorKind::RateLimit,
                Some("insufficient_quota"),
            ),
            (
                400,
                r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130412 tokens. Please reduce the length of the messages.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
                ErrorKind::ContextOverflow,
                Some("context_length_exceeded"),
            ),
            (
                400,
                r#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion).","type":"BadRequestError","param":null,"code":400}"#,
                ErrorKind::ContextOverflow,
                Some("BadRequestError"),
            ),
            (
                400,
                r#"{"error":{"message":"Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.","type":"invalid_request_error","param":"messages.[3].role","code":null}}"#,
                ErrorKind::InvalidRequest,
                Some("invalid_request_error"),
            ),
            (
                401,
                r#"{"error":{"message":"Incorrect API key provided: sk-proj-****abcd. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
                ErrorKind::Auth,
                Some("invalid_api_key"),
            ),
            (
                500,
                r#"{"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}"#,
                ErrorKind::Server,
                Some("server_error"),
            ),
            (
                503,
                r#"{"error":{"message":"The engine is currently overloaded, please try again later","type":"server_error","param":null,"code":null}}"#,
                ErrorKind::Server,
                Some("server_error"),
            ),
            (
                529,
                r#"{"error":{"message":"Overloaded","type":"overloaded_error"}}"#,
                ErrorKind::Overloaded,
                Some("overloaded_error"),
            ),
        ] {
            let r = API.response(status, body.as_bytes(), QUIET);
            let e = r.error.unwrap_or_else(|| panic!("{status}: no error"));
            assert_eq!((e.kind, e.code.as_deref()), (kind, code), "{body}");
            assert!(r.complete);
        }
        let gateway = API.response(504, b"upstream request timeout", QUIET);
        assert_eq!(gateway.error.map(|e| e.kind), Some(ErrorKind::Server));
    }

    fn chunk(rest: &str) -> String {
        format!(
            "data: {{\"id\":\"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_eb9dce56a8\",{rest}}}\n\n"
        )
    }

    /// Parallel tool calls streamed with `stream_options.include_usage`.
    fn tools_stream() -> Vec<String> {
        vec![
            chunk(
                r#""choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a1B2c3D4e5F6g7H8","type":"function","function":{"name":"get_weather","arguments":""}}],"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null"#,
            ),
            chunk(
                r#""choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]},"logprobs":null,"finish_reason":null}],"usage":null"#,
            ),
            chunk(
                r#""choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\": \"Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null"#,
            ),
            chunk(
                r#""choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_Z9y8X7w6V5u4T3s2","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null"#,
            ),
            chunk(
                r#""choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"city\": \"Lyon\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null"#,
            ),
            chunk(
                r#""choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null"#,
            ),
            chunk(
                r#""choices":[],"usage":{"prompt_tokens":82,"completion_tokens":44,"total_tokens":126,"prompt_tokens_details":{"cached_tokens":64,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}"#,
            ),
            "data: [DONE]\n\n".to_string(),
        ]
    }

    fn reply(writes: &[String]) -> Vec<u8> {
        sse_reply(&writes.iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn a_streamed_reply_with_usage_is_the_same_however_split() {
        let bytes = reply(&tools_stream());
        let r = same_however_split(&API, QUIET, &bytes);
        let whole = API.response(200, REPLY_TOOLS.as_bytes(), QUIET);
        assert_eq!(r, whole, "streamed and whole agree");
        let p = same_however_split(&API, PAYLOADS, &bytes);
        assert_eq!(
            p.tool_calls[1].arguments,
            Some(serde_json::json!({"city": "Lyon"}))
        );
        let (_, content) = replay_events(&API, QUIET, &[&bytes]);
        assert_eq!(content, [true, true, true, true, true, false, false, false]);
    }

    #[test]
    fn a_text_stream_without_usage_has_none() {
        let bytes = reply(&[
            chunk(
                r#""choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]"#,
            ),
            chunk(
                r#""choices":[{"index":0,"delta":{"content":"Paris: 18C"},"logprobs":null,"finish_reason":null}]"#,
            ),
            chunk(
                r#""choices":[{"index":0,"delta":{"content":", Lyon: 15C."},"logprobs":null,"finish_reason":null}]"#,
            ),
            chunk(r#""choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"#),
            "data: [DONE]\n\n".to_string(),
        ]);
        let r = same_however_split(&API, PAYLOADS, &bytes);
        assert!(r.complete);
        assert_eq!(r.usage, Usage::default());
        assert_eq!((r.stop, r.text_bytes), (Stop::EndTurn, 22));
        assert_eq!(r.completion.as_deref(), Some("Paris: 18C, Lyon: 15C."));
        assert_eq!(r.model.as_deref(), Some("gpt-4o-2024-08-06"));
    }

    #[test]
    fn reasoning_deltas_and_usage_on_the_last_chunk() {
        // vLLM and DeepSeek stream the reasoning apart and may put usage on the last chunk.
        let bytes = reply(&[
            "data: {\"id\":\"chatcmpl-9\",\"model\":\"deepseek-reasoner\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"Think.\"}}]}\n\n".to_string(),
            "data: {\"id\":\"chatcmpl-9\",\"model\":\"deepseek-reasoner\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"42\",\"reasoning_content\":null}}]}\n\n".to_string(),
            "data: {\"id\":\"chatcmpl-9\",\"model\":\"deepseek-reasoner\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":20,\"completion_tokens_details\":{\"reasoning_tokens\":15}}}\n\n".to_string(),
            "data: [DONE]\n\n".to_string(),
        ]);
        let r = same_however_split(&API, QUIET, &bytes);
        assert_eq!(r.text_bytes, 6 + 2);
        assert_eq!(
            (r.usage.input, r.usage.output, r.usage.reasoning),
            (Some(10), Some(20), Some(15))
        );
    }

    #[test]
    fn an_error_chunk_mid_stream_ends_it() {
        let mut writes = tools_stream()[..2].to_vec();
        writes.push("data: {\"error\":{\"message\":\"The server had an error while processing your request. Sorry about that!\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n".to_string());
        let r = same_however_split(&API, QUIET, &reply(&writes));
        assert!(r.complete);
        assert_eq!(
            r.error.map(|e| (e.kind, e.code)),
            Some((ErrorKind::Server, Some("server_error".into())))
        );
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].args_hash, None, "its arguments never ended");
    }

    #[test]
    fn a_stream_cut_off_is_incomplete() {
        let bytes = reply(&tools_stream());
        let mid = cut_after(&API, &bytes, r#"ty\": \"Paris"#, true);
        assert!(!mid.complete);
        assert_eq!(mid.tool_calls.len(), 1);
        assert_eq!(mid.tool_calls[0].args_hash, None);
        assert_eq!(mid.tool_calls[0].args_bytes, 4);
        // Cut after the first call's arguments ended but before the reply said so: they are
        // one whole value, so hashed.
        let second = cut_after(&API, &bytes, "call_Z9y8X7w6V5u4T3s2", false);
        assert_eq!(second.tool_calls.len(), 1);
        assert_eq!(
            second.tool_calls[0].args_hash,
            canonical_hash(r#"{"city":"Paris"}"#)
        );
        let before_done = cut_after(&API, &bytes, "data: [DONE]", true);
        assert!(!before_done.complete);
        assert_eq!(before_done.usage.input, Some(82));
        assert_eq!(before_done.tool_calls.len(), 2);
    }

    #[test]
    fn calls_streamed_without_an_index_are_told_apart_by_id() {
        // Some OpenAI-compatible servers omit `index` and send each call whole.
        let bytes = reply(&[
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"tool_calls\":[{\"id\":\"a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}},{\"id\":\"b\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]}}]}\n\n".to_string(),
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n".to_string(),
            "data: [DONE]\n\n".to_string(),
        ]);
        let r = same_however_split(&API, QUIET, &bytes);
        let got: Vec<_> = r
            .tool_calls
            .iter()
            .map(|c| (c.id.as_deref(), c.name.as_str(), c.args_hash))
            .collect();
        let repeated = reply(&[
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"id\":\"a\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\":\"}}]}}]}\n\n".to_string(),
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"id\":\"a\",\"function\":{\"arguments\":\"1}\"}}]}}]}\n\n".to_string(),
            "data: [DONE]\n\n".to_string(),
        ]);
        let again = same_however_split(&API, QUIET, &repeated);
        assert_eq!(again.tool_calls.len(), 1);
        assert_eq!(again.tool_calls[0].args_hash, canonical_hash(r#"{"x":1}"#));
        assert_eq!(
            got,
            [
                (Some("a"), "f", canonical_hash(r#"{"x":1}"#)),
                (Some("b"), "g", canonical_hash("{}"))
            ]
        );
    }
}
