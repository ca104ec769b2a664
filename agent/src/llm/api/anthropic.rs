//! Anthropic Messages (`POST .../v1/messages`).
//!
//! Request: `model`, `messages` (content a string or blocks), `system`, `tools[].name`
//! (server tools such as `web_search` included), `stream`, `max_tokens`; `tool_result`
//! blocks are the results carried back. Reply: `content` blocks (`text`, `thinking`,
//! `tool_use`), `stop_reason` and `usage`, whole or as the event stream `message_start`,
//! `content_block_start`/`_delta`/`_stop`, `message_delta`, `message_stop` (and `error`).

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::common::{
    ArgsKind, Body, Calls, Fp, Gen, List, MAX_CALLS, Obj, UsageKeys, call, content_hash,
    content_text, error_of, finish_reply, not_json, obj_of, reason, stop_of, take_usage, text_hash,
    value_hash, whole_call,
};
use super::{Accumulator, ModelApi, NotThisApi, Options};
use crate::llm::{Api, CarriedResult, OfferedTool, Request, Response};

/// The Messages API.
pub struct AnthropicMessages;

/// The Messages API's reader.
pub static API: AnthropicMessages = AnthropicMessages;

/// Anthropic's `input_tokens` leaves out the cached tokens, reported beside it.
const USAGE: UsageKeys = UsageKeys {
    input: &["input_tokens"],
    output: &["output_tokens"],
    cache_read: &["cache_read_input_tokens"],
    cache_write: &["cache_creation_input_tokens"],
    reasoning: &[],
};

impl ModelApi for AnthropicMessages {
    fn api(&self) -> Api {
        Api::Messages
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
        max_tokens: obj.u64("max_tokens"),
        tools: obj
            .items("tools")
            .iter()
            .filter_map(|t| t.str("name"))
            .map(|name| OfferedTool {
                name: name.into_owned(),
                namespace: None,
            })
            .collect(),
        system: obj
            .raw("system")
            .map_or(0, |s| content_hash(Some(s), block_hash)),
        ..Request::default()
    };
    for (i, m) in messages.iter().enumerate() {
        let h = message_hash(m, i, &mut req.results);
        req.messages.push(h);
    }
    if opts.payloads {
        req.prompt = messages.last().and_then(prompt_of);
    }
    Ok(req)
}

/// A message's fingerprint (role and content), noting the tool results it carries.
fn message_hash(m: &Obj, index: usize, results: &mut Vec<CarriedResult>) -> u64 {
    let content = content_hash(m.raw("content"), |b| {
        if b.str("type").as_deref() == Some("tool_result") {
            results.push(CarriedResult {
                call_id: b.str("tool_use_id").map(Cow::into_owned),
                name: None,
                is_error: Some(b.bool("is_error").unwrap_or(false)),
                bytes: b.raw("content").map_or(0, |c| c.get().len() as u64),
                message: index,
            });
        }
        block_hash(b)
    });
    Fp::new(b'm')
        .opt(m.str("role").as_deref())
        .u64(content)
        .finish()
}

/// A content block's hash: text by its text, tool calls and results by what identifies them,
/// anything else by all its members; never by `cache_control`, which clients move to the
/// newest message each turn.
fn block_hash(b: &Obj) -> u64 {
    match b.str("type").as_deref() {
        Some("text") => text_hash(&b.str("text").unwrap_or_default()),
        Some("tool_use") => Fp::new(b'c')
            .opt(b.str("id").as_deref())
            .opt(b.str("name").as_deref())
            .u64(b.raw("input").map_or(0, value_hash))
            .finish(),
        Some("tool_result") => Fp::new(b'r')
            .opt(b.str("tool_use_id").as_deref())
            .u64(u64::from(b.bool("is_error").unwrap_or(false)))
            .u64(content_hash(b.raw("content"), block_hash))
            .finish(),
        _ => b.hash_except(&["cache_control"]),
    }
}

/// The last message's text for `--payloads`: its text blocks and the text of the tool
/// results it carries.
fn prompt_of(m: &Obj) -> Option<String> {
    let mut out = Gen::new(Options { payloads: true });
    content_text(m.raw("content"), &mut out, block_text);
    out.payload()
}

fn block_text(b: &Obj, out: &mut Gen) {
    match b.str("type").as_deref() {
        Some("text") => out.part(&b.str("text").unwrap_or_default()),
        Some("tool_result") => content_text(b.raw("content"), out, block_text),
        _ => {}
    }
}

/// The error a body is: `{"type": "error", "error": {"type": "overloaded_error", ...}}`.
fn is_error(status: u16, obj: &Obj) -> bool {
    status >= 400 || obj.str("type").as_deref() == Some("error") || obj.raw("error").is_some()
}

fn response(status: u16, body: &[u8], opts: Options) -> Response {
    let Some(obj) = obj_of(body) else {
        return not_json(status);
    };
    let mut r = Response {
        complete: true,
        id: obj.str("id").map(Cow::into_owned),
        model: obj.str("model").map(Cow::into_owned),
        finish_reason: obj.str("stop_reason").map(|s| reason(&s)),
        ..Response::default()
    };
    if is_error(status, &obj) {
        r.error = Some(error_of(status, obj.obj("error").as_ref(), &["type"]));
    }
    if let Some(u) = obj.obj("usage") {
        take_usage(&mut r.usage, &u, &USAGE);
    }
    let mut text = Gen::new(opts);
    for b in obj.items("content") {
        match b.str("type").as_deref() {
            Some("text") => text.text(&b.str("text").unwrap_or_default()),
            Some("thinking") => text.reasoning(&b.str("thinking").unwrap_or_default()),
            Some("tool_use") if r.tool_calls.len() < MAX_CALLS => {
                let args = b.raw("input").map_or("", RawValue::get);
                let c = call(b.str("id"), b.str("name"), None);
                r.tool_calls.push(whole_call(c, args, ArgsKind::Json, opts));
            }
            _ => {}
        }
    }
    r.stop = stop_of(r.finish_reason.as_deref(), !r.tool_calls.is_empty());
    r.text_bytes = text.bytes;
    r.completion = text.payload();
    r
}

/// A streamed reply being added up.
struct Stream {
    r: Response,
    text: Gen,
    calls: Calls,
}

impl Stream {
    fn new(opts: Options) -> Self {
        Stream {
            r: Response::default(),
            text: Gen::new(opts),
            calls: Calls::new(opts),
        }
    }

    fn message_start(&mut self, obj: &Obj) {
        let Some(m) = obj.obj("message") else {
            return;
        };
        self.r.id = self.r.id.take().or(m.str("id").map(Cow::into_owned));
        self.r.model = self.r.model.take().or(m.str("model").map(Cow::into_owned));
        if let Some(u) = m.obj("usage") {
            take_usage(&mut self.r.usage, &u, &USAGE);
        }
    }

    /// A block starts: a tool call, or text that may already hold some.
    fn block_start(&mut self, obj: &Obj) -> bool {
        let Some(b) = obj.obj("content_block") else {
            return false;
        };
        match b.str("type").as_deref() {
            Some("tool_use") => {
                let Some(i) = obj.u64("index") else {
                    return false;
                };
                let c = call(b.str("id"), b.str("name"), None);
                self.calls.start(i, None, c, ArgsKind::Json);
                true
            }
            // The model's own calls of server tools: content, but not a call mcptap follows.
            Some("server_tool_use" | "mcp_tool_use") => true,
            Some("text") => {
                let t = b.str("text").unwrap_or_default();
                self.text.text(&t);
                !t.is_empty()
            }
            Some("thinking") => {
                let t = b.str("thinking").unwrap_or_default();
                self.text.reasoning(&t);
                !t.is_empty()
            }
            _ => false,
        }
    }

    fn block_delta(&mut self, obj: &Obj) -> bool {
        let Some(d) = obj.obj("delta") else {
            return false;
        };
        match d.str("type").as_deref() {
            Some("text_delta") => {
                let t = d.str("text").unwrap_or_default();
                self.text.text(&t);
                !t.is_empty()
            }
            Some("thinking_delta") => {
                let t = d.str("thinking").unwrap_or_default();
                self.text.reasoning(&t);
                !t.is_empty()
            }
            Some("input_json_delta") => {
                let (Some(i), Some(p)) = (obj.u64("index"), d.str("partial_json")) else {
                    return false;
                };
                // A server tool's input is content too, though not a call mcptap follows.
                self.calls.append(Some(i), None, &p);
                !p.is_empty()
            }
            _ => false,
        }
    }

    fn message_delta(&mut self, obj: &Obj) {
        if let Some(s) = obj.obj("delta").and_then(|d| d.str("stop_reason")) {
            self.r.finish_reason = Some(reason(&s));
        }
        // Output tokens are cumulative; some servers repeat the input counts here too.
        if let Some(u) = obj.obj("usage") {
            take_usage(&mut self.r.usage, &u, &USAGE);
        }
    }
}

impl Accumulator for Stream {
    fn event(&mut self, event: &str, data: &[u8]) -> bool {
        let Some(obj) = obj_of(data) else {
            return false;
        };
        let kind = obj.str("type");
        match kind.as_deref().unwrap_or(event) {
            "message_start" => self.message_start(&obj),
            "content_block_start" => return self.block_start(&obj),
            "content_block_delta" => return self.block_delta(&obj),
            "content_block_stop" => {
                if let Some(i) = obj.u64("index") {
                    self.calls.complete(Some(i), None, None);
                }
            }
            "message_delta" => self.message_delta(&obj),
            "message_stop" => self.r.complete = true,
            "error" => {
                self.r.error = Some(error_of(200, obj.obj("error").as_ref(), &["type"]));
                self.r.complete = true;
            }
            _ => {}
        }
        false
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
    use crate::llm::{ErrorKind, MAX_PAYLOAD_TEXT, Stop, Usage};
    use crate::wire::json::canonical_hash;

    const QUIET: Options = Options { payloads: false };
    const PAYLOADS: Options = Options { payloads: true };

    /// A first turn as Claude Code sends it: system blocks and the newest message marked for
    /// caching, an MCP tool and a server tool offered.
    const TURN1: &str = r#"{"model":"claude-sonnet-4-5-20250929","max_tokens":32000,"stream":true,"system":[{"type":"text","text":"You are Claude Code, Anthropic's official CLI for Claude.","cache_control":{"type":"ephemeral"}},{"type":"text","text":"You are an interactive CLI tool that helps users with software engineering tasks.\n\n# Tone and style\nBe concise.","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":"text","text":"<system-reminder>\nAs you answer the user's questions, you can use the following context.\n</system-reminder>"},{"type":"text","text":"What's the weather in Paris and in Lyon?","cache_control":{"type":"ephemeral"}}]}],"tools":[{"name":"get_weather","description":"Get the current weather in a given city","input_schema":{"type":"object","properties":{"city":{"type":"string","description":"The city"}},"required":["city"],"additionalProperties":false,"$schema":"http://json-schema.org/draft-07/schema#"}},{"name":"mcp__github__search_issues","description":"Search issues","input_schema":{"type":"object","properties":{"q":{"type":"string"}}}},{"type":"web_search_20250305","name":"web_search","max_uses":5}],"metadata":{"user_id":"user_2f0c_account__session_6a0f"},"temperature":1,"thinking":{"type":"enabled","budget_tokens":4000}}"#;

    /// The next turn: the model's two parallel calls and their results (one an error), the
    /// cache mark moved to the newest block.
    const TURN2: &str = r#"{"model":"claude-sonnet-4-5-20250929","max_tokens":32000,"stream":true,"system":[{"type":"text","text":"You are Claude Code, Anthropic's official CLI for Claude.","cache_control":{"type":"ephemeral"}},{"type":"text","text":"You are an interactive CLI tool that helps users with software engineering tasks.\n\n# Tone and style\nBe concise.","cache_control":{"type":"ephemeral"}}],"messages":[{"role":"user","content":[{"type":"text","text":"<system-reminder>\nAs you answer the user's questions, you can use the following context.\n</system-reminder>"},{"type":"text","text":"What's the weather in Paris and in Lyon?"}]},{"role":"assistant","content":[{"type":"thinking","thinking":"The user wants weather for two cities.","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pk"},{"type":"text","text":"I'll check both cities."},{"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather","input":{"city":"Paris"}},{"type":"tool_use","id":"toolu_01B7xKqgM9v1Vb1Yb8Zq2WcT","name":"get_weather","input":{"city":"Lyon"}}]},{"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_01A09q90qw90lq917835lq9","content":"Paris: 18°C, sunny"},{"type":"tool_result","tool_use_id":"toolu_01B7xKqgM9v1Vb1Yb8Zq2WcT","content":[{"type":"text","text":"Error: weather service timed out"}],"is_error":true,"cache_control":{"type":"ephemeral"}}]}],"tools":[{"name":"get_weather","description":"Get the current weather in a given city","input_schema":{"type":"object","properties":{"city":{"type":"string","description":"The city"}},"required":["city"],"additionalProperties":false,"$schema":"http://json-schema.org/draft-07/schema#"}},{"name":"mcp__github__search_issues","description":"Search issues","input_schema":{"type":"object","properties":{"q":{"type":"string"}}}},{"type":"web_search_20250305","name":"web_search","max_uses":5}],"metadata":{"user_id":"user_2f0c_account__session_6a0f"},"temperature":1,"thinking":{"type":"enabled","budget_tokens":4000}}"#;

    fn req(body: &str) -> Request {
        API.request("/v1/messages?beta=true", body.as_bytes(), QUIET)
            .unwrap()
    }

    /// The same JSON with other whitespace and its keys sorted, as another encoder writes it.
    fn reencoded(body: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        serde_json::to_string_pretty(&v).unwrap()
    }

    #[test]
    fn a_claude_code_turn_reads_model_tools_system_and_messages() {
        let r = req(TURN1);
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        assert!(r.stream);
        assert_eq!(r.max_tokens, Some(32000));
        let names: Vec<_> = r.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["get_weather", "mcp__github__search_issues", "web_search"]
        );
        assert!(r.tools.iter().all(|t| t.namespace.is_none()));
        assert_ne!(r.system, 0);
        assert_eq!(r.messages.len(), 1);
        assert!(r.results.is_empty());
        assert_eq!(r.prompt, None, "no text without --payloads");
        assert_eq!(r.previous_response_id, None);
    }

    #[test]
    fn the_next_turn_keeps_earlier_fingerprints_though_the_cache_mark_moved() {
        let (t1, t2) = (req(TURN1), req(TURN2));
        assert_eq!(t2.messages.len(), 3);
        assert_eq!(t2.messages[0], t1.messages[0]);
        assert_eq!(t2.system, t1.system);
        assert_ne!(t2.messages[1], t2.messages[2]);
        // Re-encoded (other whitespace, keys sorted): the same fingerprints; only the sizes
        // of results as encoded differ.
        let again = req(&reencoded(TURN2));
        assert_eq!((&again.messages, again.system), (&t2.messages, t2.system));
        assert_eq!(again.results[0].bytes, t2.results[0].bytes);
        assert!(again.results[1].bytes > t2.results[1].bytes);
        // A different argument is a different message.
        let other = TURN2.replace(r#"{"city":"Lyon"}"#, r#"{"city":"Nice"}"#);
        assert_ne!(req(&other).messages[1], t2.messages[1]);
        // So is a result that flips its error flag.
        let flipped = TURN2.replace(r#""is_error":true"#, r#""is_error":false"#);
        assert_ne!(req(&flipped).messages[2], t2.messages[2]);
        assert_eq!(req(&flipped).messages[..2], t2.messages[..2]);
    }

    #[test]
    fn tool_results_carry_ids_error_flags_and_sizes() {
        let r = req(TURN2);
        assert_eq!(
            r.results,
            [
                CarriedResult {
                    call_id: Some("toolu_01A09q90qw90lq917835lq9".into()),
                    name: None,
                    is_error: Some(false),
                    bytes: r#""Paris: 18°C, sunny""#.len() as u64,
                    message: 2,
                },
                CarriedResult {
                    call_id: Some("toolu_01B7xKqgM9v1Vb1Yb8Zq2WcT".into()),
                    name: None,
                    is_error: Some(true),
                    bytes: r#"[{"type":"text","text":"Error: weather service timed out"}]"#.len()
                        as u64,
                    message: 2,
                },
            ]
        );
    }

    #[test]
    fn python_sdk_string_content_is_one_text_block() {
        // `client.messages.create(...)` with a plain string, as the quickstart does.
        let plain = req(
            r#"{"max_tokens":1024,"messages":[{"role":"user","content":"Hello, Claude"}],"model":"claude-opus-4-1-20250805"}"#,
        );
        let blocks = req(
            r#"{"model":"claude-opus-4-1-20250805","max_tokens":1024,"messages":[{"role":"user","content":[{"type":"text","text":"Hello, Claude","cache_control":{"type":"ephemeral","ttl":"5m"}}]}]}"#,
        );
        assert_eq!(plain.messages, blocks.messages);
        assert!(!plain.stream);
        assert_eq!(plain.system, 0);
        assert!(plain.tools.is_empty());
        // The system prompt as a string or as one block.
        let s1 = req(r#"{"model":"m","messages":[],"system":"Be brief."}"#);
        let s2 = req(
            r#"{"model":"m","messages":[],"system":[{"type":"text","text":"Be brief.","cache_control":{"type":"ephemeral"}}]}"#,
        );
        assert_eq!(s1.system, s2.system);
        assert_ne!(s1.system, 0);
    }

    #[test]
    fn pydantic_ai_results_with_explicit_flags_and_images() {
        // pydantic-ai writes `is_error: false` itself and puts the type last; an image block
        // is hashed by all its members.
        let body = r#"{"max_tokens":4096,"messages":[{"role":"user","content":[{"text":"Describe this and roll a die.","type":"text"},{"source":{"data":"iVBORw0KGgo=","media_type":"image/png","type":"base64"},"type":"image"}]},{"role":"assistant","content":[{"id":"toolu_01X","input":{},"name":"roll_die","type":"tool_use"}]},{"role":"user","content":[{"tool_use_id":"toolu_01X","content":"4","is_error":false,"type":"tool_result"}]}],"model":"claude-3-5-haiku-latest","tools":[{"name":"roll_die","description":"Roll a six-sided die.","input_schema":{"additionalProperties":false,"properties":{},"type":"object"}}],"stream":false,"tool_choice":{"type":"auto"}}"#;
        let r = req(body);
        assert_eq!(r.messages.len(), 3);
        assert_eq!(r.results.len(), 1);
        assert_eq!(r.results[0].is_error, Some(false));
        assert_eq!(r.results[0].bytes, 3);
        let other_image = body.replace("iVBORw0KGgo=", "R0lGODlhAQ==");
        assert_ne!(req(&other_image).messages[0], r.messages[0]);
        assert_eq!(req(&reencoded(body)).messages, r.messages);
    }

    #[test]
    fn shapes_that_are_not_messages_requests() {
        let e = |b: &str| API.request("/v1/messages", b.as_bytes(), QUIET).err();
        assert_eq!(e(r#"{"messages":[]}"#), Some(NotThisApi::Shape("model")));
        assert_eq!(
            e(r#"{"model":7,"messages":[]}"#),
            Some(NotThisApi::Shape("model"))
        );
        assert_eq!(e(r#"{"model":"m"}"#), Some(NotThisApi::Shape("messages")));
        assert_eq!(
            e(r#"{"model":"m","messages":"hi"}"#),
            Some(NotThisApi::Shape("messages"))
        );
        assert_eq!(
            e(r#"{"model":"m","prompt":"\n\nHuman: hi"}"#),
            Some(NotThisApi::Shape("messages"))
        );
        assert_eq!(e("model=m"), Some(NotThisApi::NotJson));
        assert_eq!(e(r#"[{"model":"m"}]"#), Some(NotThisApi::NotJson));
        // Odd members inside are skipped, not fatal.
        let odd = req(
            r#"{"model":"m","messages":[7,{"role":1,"content":{"x":1}},{"role":"user","content":[null,"s",{"type":"tool_result"}]}],"max_tokens":"many","stream":"yes","tools":{"name":"x"}}"#,
        );
        assert_eq!(odd.messages.len(), 3);
        assert_eq!(odd.results.len(), 1);
        assert_eq!((odd.max_tokens, odd.stream), (None, false));
        assert!(odd.tools.is_empty());
    }

    #[test]
    fn payloads_keep_the_last_message_text_redacted() {
        let r = API
            .request("/v1/messages", TURN2.as_bytes(), PAYLOADS)
            .unwrap();
        assert_eq!(
            r.prompt.as_deref(),
            Some("Paris: 18°C, sunny\nError: weather service timed out")
        );
        let secret = r#"{"model":"m","messages":[{"role":"user","content":"deploy with ANTHROPIC_API_KEY=sk-ant-api03-AbCdEfGhIjKlMnOpQrStUv and go"}]}"#;
        let p = API
            .request("/v1/messages", secret.as_bytes(), PAYLOADS)
            .unwrap()
            .prompt
            .unwrap();
        assert!(!p.contains("AbCdEfGh"), "{p}");
        assert!(p.starts_with("deploy with"));
        let long = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
            "ab".repeat(MAX_PAYLOAD_TEXT)
        );
        let p = API
            .request("/v1/messages", long.as_bytes(), PAYLOADS)
            .unwrap()
            .prompt
            .unwrap();
        assert_eq!(p.len(), MAX_PAYLOAD_TEXT);
    }

    const REPLY_TOOLS: &str = r#"{"id":"msg_01Aq9w938a90dw8q","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"thinking","thinking":"Two cities, two calls.","signature":"EqQBCgIYAhIM"},{"type":"text","text":"I'll check both cities."},{"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9","name":"get_weather","input":{"city":"Paris"}},{"type":"tool_use","id":"toolu_01B7xKqgM9v1Vb1Yb8Zq2WcT","name":"get_weather","input":{"city":"Lyon"}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":1024,"cache_read_input_tokens":2048,"cache_creation":{"ephemeral_5m_input_tokens":1024,"ephemeral_1h_input_tokens":0},"output_tokens":156,"service_tier":"standard"}}"#;

    #[test]
    fn a_whole_reply_with_parallel_tool_calls() {
        let r = API.response(200, REPLY_TOOLS.as_bytes(), QUIET);
        assert!(r.complete);
        assert_eq!(r.error, None);
        assert_eq!(r.id.as_deref(), Some("msg_01Aq9w938a90dw8q"));
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        assert_eq!(
            r.usage,
            Usage {
                input: Some(472),
                output: Some(156),
                cache_read: Some(2048),
                cache_write: Some(1024),
                reasoning: None,
            }
        );
        assert_eq!(
            r.usage.total_input(crate::llm::Provider::Anthropic),
            Some(3544)
        );
        assert_eq!(
            (r.finish_reason.as_deref(), r.stop),
            (Some("tool_use"), Stop::ToolUse)
        );
        assert_eq!(r.tool_calls.len(), 2);
        let c = &r.tool_calls[0];
        assert_eq!(c.id.as_deref(), Some("toolu_01A09q90qw90lq917835lq9"));
        assert_eq!(c.name, "get_weather");
        assert_eq!(c.args_hash, canonical_hash(r#"{ "city": "Paris" }"#));
        assert_eq!(c.args_bytes, 16);
        assert_eq!(c.arguments, None);
        assert_eq!(
            r.text_bytes,
            ("Two cities, two calls.".len() + "I'll check both cities.".len()) as u64
        );
        assert_eq!(r.completion, None);
        let p = API.response(200, REPLY_TOOLS.as_bytes(), PAYLOADS);
        assert_eq!(p.completion.as_deref(), Some("I'll check both cities."));
        assert_eq!(
            p.tool_calls[1].arguments,
            Some(serde_json::json!({"city": "Lyon"}))
        );
    }

    #[test]
    fn whole_replies_that_end_the_turn_or_run_out() {
        let done = API.response(200, br#"{"id":"msg_2","type":"message","role":"assistant","model":"claude-haiku-4-5","content":[{"type":"text","text":"Paris is sunny at 18C; Lyon's service timed out."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":15}}"#, QUIET);
        assert_eq!((done.stop, done.tool_calls.len()), (Stop::EndTurn, 0));
        assert_eq!(done.usage.cache_read, None);
        let cut = API.response(200, br#"{"id":"msg_3","type":"message","role":"assistant","model":"claude-haiku-4-5","content":[{"type":"text","text":"Once upon"}],"stop_reason":"max_tokens","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":2}}"#, QUIET);
        assert_eq!(
            (cut.finish_reason.as_deref(), cut.stop),
            (Some("max_tokens"), Stop::MaxTokens)
        );
        let refused = API.response(200, br#"{"id":"msg_4","type":"message","role":"assistant","content":[],"stop_reason":"refusal","usage":{"input_tokens":9,"output_tokens":0}}"#, QUIET);
        assert_eq!(refused.stop, Stop::Filtered);
        let full = API.response(200, br#"{"id":"msg_5","type":"message","content":[{"type":"text","text":"..."}],"stop_reason":"model_context_window_exceeded"}"#, QUIET);
        assert_eq!(full.stop, Stop::ContextOverflow);
    }

    #[test]
    fn error_bodies_are_classified() {
        for (status, body, kind, code) in [
            (
                429,
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"This request would exceed the rate limit for your organization of 30,000 input tokens per minute."},"request_id":"req_011CU5Lx"}"#,
                ErrorKind::RateLimit,
                "rate_limit_error",
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"},"request_id":"req_011CU5Ly"}"#,
                ErrorKind::ContextOverflow,
                "invalid_request_error",
            ),
            (
                400,
                r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages.1.content.0.tool_use.id: String should match pattern"}}"#,
                ErrorKind::InvalidRequest,
                "invalid_request_error",
            ),
            (
                401,
                r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_011CU5Lz"}"#,
                ErrorKind::Auth,
                "authentication_error",
            ),
            (
                403,
                r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission"}}"#,
                ErrorKind::Auth,
                "permission_error",
            ),
            (
                413,
                r#"{"type":"error","error":{"type":"request_too_large","message":"Request exceeds the maximum allowed number of bytes."}}"#,
                ErrorKind::InvalidRequest,
                "request_too_large",
            ),
            (
                500,
                r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"},"request_id":null}"#,
                ErrorKind::Server,
                "api_error",
            ),
            (
                529,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"},"request_id":"req_011CU5M0"}"#,
                ErrorKind::Overloaded,
                "overloaded_error",
            ),
        ] {
            let r = API.response(status, body.as_bytes(), PAYLOADS);
            let e = r.error.unwrap_or_else(|| panic!("{status}: no error"));
            assert_eq!(
                (e.kind, e.code.as_deref()),
                (kind, Some(code)),
                "{status} {body}"
            );
            assert!(r.complete);
            assert!(r.tool_calls.is_empty() && r.completion.is_none());
        }
        // A proxy's HTML page: an error by its status, not a complete body.
        let html = API.response(502, b"<html><body>502 Bad Gateway</body></html>", QUIET);
        assert_eq!(
            html.error.map(|e| (e.kind, e.code)),
            Some((ErrorKind::Server, None))
        );
        assert!(!html.complete);
        // An error object in a 200 is an error too.
        let e = API.response(
            200,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            QUIET,
        );
        assert_eq!(e.error.map(|e| e.kind), Some(ErrorKind::Overloaded));
    }

    /// A streamed reply as the API writes it: thinking, text, two tool calls, a ping.
    const STREAM: &[&str] = &[
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":1024,\"cache_read_input_tokens\":2048,\"cache_creation\":{\"ephemeral_5m_input_tokens\":1024,\"ephemeral_1h_input_tokens\":0},\"output_tokens\":2,\"service_tier\":\"standard\"}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"The user wants weather for two cities.\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pk\"}}\n\nevent: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"I'll check \"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"both cities.\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01A09q90qw90lq917835lq9\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Pa\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ris\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01B7xKqgM9v1Vb1Yb8Zq2WcT\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Lyon\\\"}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":3}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":156}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];

    #[test]
    fn a_streamed_reply_is_the_same_however_its_bytes_are_split() {
        let bytes = sse_reply(STREAM);
        let r = same_however_split(&API, QUIET, &bytes);
        assert!(r.complete);
        assert_eq!(r.error, None);
        assert_eq!(r.id.as_deref(), Some("msg_01XFDUDYJgAACzvnptvVoYEL"));
        assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
        assert_eq!(
            r.usage,
            Usage {
                input: Some(472),
                output: Some(156),
                cache_read: Some(2048),
                cache_write: Some(1024),
                reasoning: None,
            }
        );
        assert_eq!(
            (r.finish_reason.as_deref(), r.stop),
            (Some("tool_use"), Stop::ToolUse)
        );
        let ids: Vec<_> = r
            .tool_calls
            .iter()
            .map(|c| c.id.as_deref().unwrap())
            .collect();
        assert_eq!(
            ids,
            [
                "toolu_01A09q90qw90lq917835lq9",
                "toolu_01B7xKqgM9v1Vb1Yb8Zq2WcT"
            ]
        );
        // The streamed arguments hash as the whole reply's do.
        let whole = API.response(200, REPLY_TOOLS.as_bytes(), QUIET);
        for (s, w) in r.tool_calls.iter().zip(&whole.tool_calls) {
            assert_eq!((s.args_hash, &s.name), (w.args_hash, &w.name));
        }
        assert_eq!(
            r.tool_calls[0].args_bytes,
            r#"{"city": "Paris"}"#.len() as u64
        );
        assert_eq!(
            r.text_bytes,
            ("The user wants weather for two cities.".len() + "I'll check both cities.".len())
                as u64
        );
        let p = same_however_split(&API, PAYLOADS, &bytes);
        assert_eq!(p.completion.as_deref(), Some("I'll check both cities."));
        assert_eq!(
            p.tool_calls[0].arguments,
            Some(serde_json::json!({"city": "Paris"}))
        );
    }

    #[test]
    fn content_events_are_the_ones_that_carry_generated_content() {
        let (_, content) = replay_events(&API, QUIET, &[&sse_reply(STREAM)]);
        // message_start, thinking start, thinking, signature, stop, text start, ping, text,
        // text, stop, tool start, "", pieces, stop, tool start, piece, stop, delta, stop.
        let want = [
            false, false, true, false, false, false, false, true, true, false, true, false, true,
            true, false, true, true, false, false, false,
        ];
        assert_eq!(content, want);
    }

    #[test]
    fn a_stream_cut_off_is_incomplete_and_its_open_call_has_no_hash() {
        let bytes = sse_reply(STREAM);
        let before_stop = cut_after(&API, &bytes, "event: message_stop", true);
        assert!(!before_stop.complete);
        assert_eq!(before_stop.stop, Stop::ToolUse);
        assert!(before_stop.tool_calls.iter().all(|c| c.args_hash.is_some()));
        let mid_args = cut_after(&API, &bytes, "Pa\"}}\n\n", false);
        assert!(!mid_args.complete);
        assert_eq!(mid_args.tool_calls.len(), 1);
        assert_eq!(mid_args.tool_calls[0].args_hash, None);
        assert_eq!(
            mid_args.tool_calls[0].args_bytes,
            r#"{"city": "Pa"#.len() as u64
        );
        assert_eq!(mid_args.usage.output, Some(2), "the last count reported");
        let start = cut_after(&API, &bytes, "\"service_tier\":\"standard\"}}}\n\n", false);
        assert_eq!(
            (start.complete, start.usage.input, start.text_bytes),
            (false, Some(472), 0)
        );
        let head = cut_after(&API, &bytes, "Transfer-Encoding", false);
        assert_eq!(head, Response::default());
        // Mid-event: the partial event is never dispatched.
        let mid_event = cut_after(&API, &bytes, "both ci", false);
        assert_eq!(
            mid_event.text_bytes,
            ("The user wants weather for two cities.".len() + "I'll check ".len()) as u64
        );
    }

    #[test]
    fn an_error_event_mid_stream_ends_it_with_the_error() {
        let bytes = sse_reply(&[
            STREAM[0],
            STREAM[4],
            STREAM[6],
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        ]);
        let r = same_however_split(&API, QUIET, &bytes);
        assert!(r.complete);
        let e = r.error.unwrap();
        assert_eq!(
            (e.kind, e.code.as_deref()),
            (ErrorKind::Overloaded, Some("overloaded_error"))
        );
        assert_eq!(r.text_bytes, "I'll check ".len() as u64);
        assert_eq!(r.stop, Stop::Other);
        let api_error = sse_reply(&[
            STREAM[0],
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Internal server error\"}}\n\n",
        ]);
        let r = same_however_split(&API, QUIET, &api_error);
        assert_eq!(r.error.map(|e| e.kind), Some(ErrorKind::Server));
    }

    #[test]
    fn a_call_without_arguments_hashes_as_an_empty_object_whole_or_streamed() {
        let bytes = sse_reply(&[
            STREAM[0],
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01X\",\"name\":\"roll_die\",\"input\":{}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
            STREAM[17],
            STREAM[18],
        ]);
        let s = same_however_split(&API, QUIET, &bytes);
        let w = API.response(200, br#"{"id":"msg_1","type":"message","content":[{"type":"tool_use","id":"toolu_01X","name":"roll_die","input":{}}],"stop_reason":"tool_use"}"#, QUIET);
        assert_eq!(s.tool_calls, w.tool_calls);
        assert_eq!(s.tool_calls[0].args_hash, canonical_hash("{}"));
    }
}
