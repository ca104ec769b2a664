//! OpenAI Responses (`POST .../responses`).
//!
//! Request: `model`, `input` (a string, or items: messages, `function_call`s,
//! `function_call_output`s, reasoning and the rest), `instructions`, `tools`,
//! `previous_response_id`, `stream`, `max_output_tokens`; `function_call_output` (and
//! `custom_tool_call_output`) items are the results carried back. Reply: `output` items,
//! `status` with `incomplete_details`, `error` and `usage`, whole or as the
//! `response.*` event stream.
//!
//! Offered tools: a `function` or `custom` tool by its name; each function of a `namespace`
//! tool by its name, with the namespace's; an `mcp` tool by its `server_label` (its tools
//! run on OpenAI's side and are never the client's calls); any other built-in tool
//! (`web_search`, `file_search`, `code_interpreter`, ...) by its `type`.

use std::borrow::Cow;

use super::common::{
    ArgsKind, Body, Calls, Fp, Gen, List, MAX_CALLS, Obj, UsageKeys, args_text, call, content_hash,
    content_text, error_of, finish_reply, not_json, obj_of, part_hash, part_text, reason, stop_of,
    string_args_hash, string_content_hash, take_usage, text_hash, value_hash, whole_call,
};
use super::{Accumulator, ModelApi, NotThisApi, Options};
use crate::llm::{Api, CarriedResult, OfferedTool, Request, Response, ToolCall};

/// The Responses API.
pub struct OpenAiResponses;

/// The Responses API's reader.
pub static API: OpenAiResponses = OpenAiResponses;

const USAGE: UsageKeys = UsageKeys {
    input: &["input_tokens"],
    output: &["output_tokens"],
    cache_read: &["input_tokens_details", "cached_tokens"],
    cache_write: &[],
    reasoning: &["output_tokens_details", "reasoning_tokens"],
};

impl ModelApi for OpenAiResponses {
    fn api(&self) -> Api {
        Api::Responses
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
    let Body { obj, list } = Body::parse(body, "input")?;
    let model = obj.str("model").ok_or(NotThisApi::Shape("model"))?;
    let mut req = Request {
        model: Some(model.into_owned()),
        stream: obj.bool("stream").unwrap_or(false),
        max_tokens: obj.u64("max_output_tokens"),
        tools: tools(&obj),
        system: obj
            .raw("instructions")
            .map_or(0, |raw| match List::of(raw) {
                List::Text(t) => string_content_hash(&t),
                List::Items(items) => {
                    let mut fp = Fp::new(b's');
                    for (i, it) in items.iter().enumerate() {
                        fp.u64(item_hash(it, i, &mut Vec::new()));
                    }
                    fp.finish()
                }
                List::Other => value_hash(raw),
            }),
        previous_response_id: obj.str("previous_response_id").map(Cow::into_owned),
        ..Request::default()
    };
    let mut prompt = Gen::new(opts);
    match list {
        Some(List::Items(items)) => {
            for (i, it) in items.iter().enumerate() {
                let h = item_hash(it, i, &mut req.results);
                req.messages.push(h);
            }
            if let Some(last) = items.last() {
                item_text(last, &mut prompt);
            }
        }
        // A string input is one user message.
        Some(List::Text(t)) => {
            req.messages
                .push(message_hash(Some("user"), string_content_hash(&t)));
            prompt.part(&t);
        }
        _ if req.previous_response_id.is_some() => {}
        _ => return Err(NotThisApi::Shape("input")),
    }
    req.prompt = prompt.payload();
    Ok(req)
}

fn tools(obj: &Obj) -> Vec<OfferedTool> {
    let tool = |name: &str, namespace: Option<&str>| OfferedTool {
        name: name.to_string(),
        namespace: namespace.map(str::to_string),
    };
    let mut out = Vec::new();
    for t in obj.items("tools") {
        match t.str("type").as_deref() {
            Some("function" | "custom") => out.extend(t.str("name").map(|n| tool(&n, None))),
            Some("namespace") => {
                let ns = t.str("name");
                for f in t.items("tools") {
                    out.extend(f.str("name").map(|n| tool(&n, ns.as_deref())));
                }
            }
            Some("mcp") => out.push(tool(
                t.str("server_label").as_deref().unwrap_or("mcp"),
                None,
            )),
            Some(other) => out.push(tool(other, None)),
            None => {}
        }
    }
    out
}

fn message_hash(role: Option<&str>, content: u64) -> u64 {
    Fp::new(b'm').opt(role).u64(content).finish()
}

/// An input item's fingerprint, noting the tool result it carries. Messages by role and
/// content, calls by call id, name, namespace and arguments, outputs by call id and output;
/// other items (reasoning, references, server tools' calls) by all their members.
fn item_hash(it: &Obj, index: usize, results: &mut Vec<CarriedResult>) -> u64 {
    let call_fp = |args: u64| {
        Fp::new(b'c')
            .opt(it.str("call_id").as_deref())
            .opt(it.str("name").as_deref())
            .opt(it.str("namespace").as_deref())
            .u64(args)
            .finish()
    };
    match it.str("type").as_deref() {
        None | Some("message") => message_hash(
            it.str("role").as_deref(),
            content_hash(it.raw("content"), part_hash),
        ),
        Some("function_call") => call_fp(string_args_hash(it.raw("arguments"))),
        Some("custom_tool_call") => call_fp(it.str("input").map_or(0, |t| text_hash(&t))),
        Some("function_call_output" | "custom_tool_call_output") => {
            results.push(CarriedResult {
                call_id: it.str("call_id").map(Cow::into_owned),
                name: None,
                is_error: None,
                bytes: it.raw("output").map_or(0, |o| o.get().len() as u64),
                message: index,
            });
            Fp::new(b'r')
                .opt(it.str("call_id").as_deref())
                .u64(content_hash(it.raw("output"), part_hash))
                .finish()
        }
        Some(_) => it.hash_except(&[]),
    }
}

/// An item's text for `--payloads`: a message's text parts, or a call output's text.
fn item_text(it: &Obj, out: &mut Gen) {
    match it.str("type").as_deref() {
        None | Some("message") => content_text(it.raw("content"), out, part_text),
        Some("function_call_output" | "custom_tool_call_output") => {
            content_text(it.raw("output"), out, part_text)
        }
        _ => {}
    }
}

fn response(status: u16, body: &[u8], opts: Options) -> Response {
    let Some(obj) = obj_of(body) else {
        return not_json(status);
    };
    let mut r = Response {
        complete: true,
        ..Response::default()
    };
    // A failed response (`status: failed`) carries its error beside the rest.
    if status >= 400 || obj.raw("error").is_some() {
        r.error = Some(error_of(
            status,
            obj.obj("error").as_ref(),
            &["code", "type"],
        ));
    }
    take_final(&mut r, &obj);
    let mut text = Gen::new(opts);
    for it in obj.items("output") {
        output_item(&it, &mut text, &mut r.tool_calls, opts);
    }
    r.stop = stop_of(r.finish_reason.as_deref(), !r.tool_calls.is_empty());
    r.text_bytes = text.bytes;
    r.completion = text.payload();
    r
}

/// What a response object says of the whole reply: id, model, usage, and the status as the
/// finish reason (`incomplete:max_output_tokens` when incomplete for a reason).
fn take_final(r: &mut Response, resp: &Obj) {
    r.id = r.id.take().or(resp.str("id").map(Cow::into_owned));
    r.model = r.model.take().or(resp.str("model").map(Cow::into_owned));
    if let Some(u) = resp.obj("usage") {
        take_usage(&mut r.usage, &u, &USAGE);
    }
    if let Some(s) = resp.str("status") {
        let why = resp.obj("incomplete_details").and_then(|d| d.str("reason"));
        r.finish_reason = Some(match why {
            Some(w) if s == "incomplete" => reason(&format!("{s}:{w}")),
            _ => reason(&s),
        });
    }
}

/// One output item of a whole reply: text, reasoning, or a tool call.
fn output_item(it: &Obj, text: &mut Gen, calls: &mut Vec<ToolCall>, opts: Options) {
    let kind = match it.str("type").as_deref() {
        Some("message") => {
            for p in it.items("content") {
                match p.str("type").as_deref() {
                    Some("output_text") => text.text(&p.str("text").unwrap_or_default()),
                    Some("refusal") => text.text(&p.str("refusal").unwrap_or_default()),
                    _ => {}
                }
            }
            return;
        }
        Some("reasoning") => {
            for p in it.items("summary").iter().chain(&it.items("content")) {
                text.reasoning(&p.str("text").unwrap_or_default());
            }
            return;
        }
        Some("function_call") => ArgsKind::Json,
        Some("custom_tool_call") => ArgsKind::Text,
        _ => return,
    };
    if calls.len() < MAX_CALLS {
        let c = call(it.str("call_id"), it.str("name"), it.str("namespace"));
        let args = match kind {
            ArgsKind::Json => args_text(it.raw("arguments")),
            ArgsKind::Text => it.str("input").unwrap_or_default(),
        };
        calls.push(whole_call(c, &args, kind, opts));
    }
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

    /// `response.output_item.added`: a tool call starts.
    fn item_added(&mut self, obj: &Obj) -> bool {
        let Some(it) = obj.obj("item") else {
            return false;
        };
        let kind = match it.str("type").as_deref() {
            Some("function_call") => ArgsKind::Json,
            Some("custom_tool_call") => ArgsKind::Text,
            _ => return false,
        };
        let c = call(it.str("call_id"), it.str("name"), it.str("namespace"));
        // Without an output index the call is found by its item id alone.
        let key = obj.u64("output_index").unwrap_or(u64::MAX);
        self.calls.start(key, it.str("id").as_deref(), c, kind);
        true
    }

    /// `response.output_item.done`: a tool call's final item, its arguments whole.
    fn item_done(&mut self, obj: &Obj) {
        let Some(it) = obj.obj("item") else {
            return;
        };
        let whole = match it.str("type").as_deref() {
            Some("function_call") => it.str("arguments"),
            Some("custom_tool_call") => it.str("input"),
            _ => return,
        };
        let key = obj.u64("output_index");
        self.calls
            .complete(key, it.str("id").as_deref(), whole.as_deref());
    }

    /// `response.completed`, `.incomplete`, `.failed`: the whole response, less its output
    /// (already read from the events).
    fn end(&mut self, obj: &Obj) {
        if let Some(resp) = obj.obj("response") {
            take_final(&mut self.r, &resp);
            if let Some(e) = resp.obj("error") {
                self.r.error = Some(error_of(200, Some(&e), &["code", "type"]));
            }
        }
        self.calls.complete_all();
        self.r.complete = true;
    }
}

impl Accumulator for Stream {
    fn event(&mut self, event: &str, data: &[u8]) -> bool {
        let Some(obj) = obj_of(data) else {
            return false;
        };
        let kind = obj.str("type");
        let key = obj.u64("output_index");
        let item = obj.str("item_id");
        match kind.as_deref().unwrap_or(event) {
            "response.created" | "response.in_progress" | "response.queued" => {
                if let Some(resp) = obj.obj("response") {
                    self.r.id = self.r.id.take().or(resp.str("id").map(Cow::into_owned));
                    self.r.model = self
                        .r
                        .model
                        .take()
                        .or(resp.str("model").map(Cow::into_owned));
                }
            }
            "response.output_item.added" => return self.item_added(&obj),
            "response.function_call_arguments.delta" | "response.custom_tool_call_input.delta" => {
                let d = obj.str("delta").unwrap_or_default();
                return self.calls.append(key, item.as_deref(), &d) && !d.is_empty();
            }
            "response.function_call_arguments.done" => {
                let whole = obj.str("arguments");
                self.calls.complete(key, item.as_deref(), whole.as_deref());
            }
            "response.custom_tool_call_input.done" => {
                let whole = obj.str("input");
                self.calls.complete(key, item.as_deref(), whole.as_deref());
            }
            "response.output_item.done" => self.item_done(&obj),
            "response.output_text.delta" | "response.refusal.delta" => {
                let d = obj.str("delta").unwrap_or_default();
                self.text.text(&d);
                return !d.is_empty();
            }
            "response.reasoning_text.delta" | "response.reasoning_summary_text.delta" => {
                let d = obj.str("delta").unwrap_or_default();
                self.text.reasoning(&d);
                return !d.is_empty();
            }
            "response.completed" | "response.incomplete" | "response.failed" => self.end(&obj),
            // The error event carries its code at the top (`{"type": "error", "code": ...}`).
            "error" => {
                self.r.error = Some(match obj.obj("error") {
                    Some(e) => error_of(200, Some(&e), &["code", "type"]),
                    None => error_of(200, Some(&obj), &["code"]),
                });
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
    use crate::llm::{ErrorKind, Stop, Usage};
    use crate::wire::json::canonical_hash;

    const QUIET: Options = Options { payloads: false };
    const PAYLOADS: Options = Options { payloads: true };

    /// A turn as the openai-agents SDK sends it without server-side state: the whole
    /// conversation (reasoning item included) as input, a function tool, built-in tools, an
    /// MCP server and a namespace of functions.
    const AGENTS: &str = r#"{"include":["reasoning.encrypted_content"],"input":[{"content":"What's the weather in Paris? Then look up order 42.","role":"user"},{"id":"rs_68c1f0a9d8e0819db1d5b34f0e2e4a3c","summary":[],"type":"reasoning","encrypted_content":"gAAAAABowfCpQm9yZ2FuaXNhdGlvbg=="},{"arguments":"{\"city\":\"Paris\"}","call_id":"call_kd8Yb2rP1nX0Qe5T","name":"get_weather","type":"function_call","id":"fc_68c1f0aa1b4c819d8f0e9a2b7c6d5e4f","status":"completed"},{"call_id":"call_kd8Yb2rP1nX0Qe5T","output":"18°C and sunny","type":"function_call_output"},{"arguments":"{\"id\":\"42\"}","call_id":"call_n1Qw2Er3Ty4Ui5Op","name":"lookup","namespace":"crm","type":"function_call","id":"fc_68c1f0ab","status":"completed"},{"call_id":"call_n1Qw2Er3Ty4Ui5Op","output":[{"type":"input_text","text":"{\"order\":42,\"state\":\"shipped\"}"}],"type":"function_call_output"}],"model":"gpt-5","instructions":"You are a helpful agent.","tools":[{"name":"get_weather","parameters":{"properties":{"city":{"title":"City","type":"string"}},"required":["city"],"title":"get_weather_args","type":"object","additionalProperties":false},"strict":true,"type":"function","description":"Get the weather."},{"type":"web_search"},{"type":"mcp","server_label":"deepwiki","server_url":"https://mcp.deepwiki.com/mcp","require_approval":"never"},{"type":"namespace","name":"crm","description":"CRM tools","tools":[{"type":"function","name":"lookup","parameters":{"type":"object","properties":{"id":{"type":"string"}}}},{"type":"function","name":"update","parameters":{"type":"object","properties":{}}}]},{"type":"code_interpreter","container":{"type":"auto"}}],"stream":true,"store":false,"reasoning":{"effort":"low"},"max_output_tokens":4096,"parallel_tool_calls":true}"#;

    fn req(body: &str) -> Request {
        API.request("/v1/responses", body.as_bytes(), QUIET)
            .unwrap()
    }

    #[test]
    fn an_agents_sdk_turn_reads_items_tools_and_results() {
        let r = req(AGENTS);
        assert_eq!(r.model.as_deref(), Some("gpt-5"));
        assert!(r.stream);
        assert_eq!(r.max_tokens, Some(4096));
        let tools: Vec<_> = r
            .tools
            .iter()
            .map(|t| (t.name.as_str(), t.namespace.as_deref()))
            .collect();
        assert_eq!(
            tools,
            [
                ("get_weather", None),
                ("web_search", None),
                ("deepwiki", None),
                ("lookup", Some("crm")),
                ("update", Some("crm")),
                ("code_interpreter", None),
            ]
        );
        assert_ne!(r.system, 0);
        assert_eq!(r.messages.len(), 6);
        assert_eq!(r.previous_response_id, None);
        assert_eq!(
            r.results,
            [
                CarriedResult {
                    call_id: Some("call_kd8Yb2rP1nX0Qe5T".into()),
                    name: None,
                    is_error: None,
                    bytes: r#""18°C and sunny""#.len() as u64,
                    message: 3,
                },
                CarriedResult {
                    call_id: Some("call_n1Qw2Er3Ty4Ui5Op".into()),
                    name: None,
                    is_error: None,
                    bytes:
                        r#"[{"type":"input_text","text":"{\"order\":42,\"state\":\"shipped\"}"}]"#
                            .len() as u64,
                    message: 5,
                },
            ]
        );
    }

    #[test]
    fn items_hash_by_what_they_say_not_how_they_are_written() {
        let r = req(AGENTS);
        // The call item echoed with its arguments spaced out and its status changed.
        let echoed = AGENTS.replace(
            r#"{"arguments":"{\"city\":\"Paris\"}","call_id":"call_kd8Yb2rP1nX0Qe5T","name":"get_weather","type":"function_call","id":"fc_68c1f0aa1b4c819d8f0e9a2b7c6d5e4f","status":"completed"}"#,
            r#"{"type":"function_call","call_id":"call_kd8Yb2rP1nX0Qe5T","name":"get_weather","arguments":"{\"city\": \"Paris\"}"}"#,
        );
        assert_ne!(echoed, AGENTS);
        assert_eq!(req(&echoed).messages, r.messages);
        // The namespace is part of a call.
        let moved = AGENTS.replace(r#""namespace":"crm","#, r#""namespace":"erp","#);
        assert_ne!(req(&moved).messages[4], r.messages[4]);
        assert_eq!(req(&moved).messages[..4], r.messages[..4]);
        // An easy message, a typed one, and one with input_text parts are one message.
        let easy = req(r#"{"model":"m","input":[{"role":"user","content":"hi there"}]}"#);
        let typed = req(
            r#"{"model":"m","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"hi there"}]}]}"#,
        );
        let string = req(r#"{"model":"m","input":"hi there"}"#);
        assert_eq!(easy.messages, typed.messages);
        assert_eq!(easy.messages, string.messages);
        assert_ne!(
            req(r#"{"model":"m","input":[{"role":"developer","content":"hi there"}]}"#).messages,
            easy.messages
        );
    }

    #[test]
    fn a_continuation_names_the_previous_response() {
        let r = req(
            r#"{"model":"gpt-4.1","previous_response_id":"resp_68c1f0a8c4b48190a1f0d52f3b7b0e2c","input":[{"type":"function_call_output","call_id":"call_kd8Yb2rP1nX0Qe5T","output":"{\"temp\": 18}"}],"tools":[{"type":"function","name":"get_weather","parameters":{}}],"stream":false}"#,
        );
        assert_eq!(
            r.previous_response_id.as_deref(),
            Some("resp_68c1f0a8c4b48190a1f0d52f3b7b0e2c")
        );
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.results.len(), 1);
        assert_eq!(r.system, 0);
        let bare = req(r#"{"model":"gpt-4.1","previous_response_id":"resp_1"}"#);
        assert!(bare.messages.is_empty());
        assert_eq!(bare.previous_response_id.as_deref(), Some("resp_1"));
    }

    #[test]
    fn shapes_that_are_not_responses_requests() {
        let e = |b: &str| API.request("/v1/responses", b.as_bytes(), QUIET).err();
        assert_eq!(e(r#"{"input":"hi"}"#), Some(NotThisApi::Shape("model")));
        assert_eq!(e(r#"{"model":"m"}"#), Some(NotThisApi::Shape("input")));
        assert_eq!(
            e(r#"{"model":"m","input":7}"#),
            Some(NotThisApi::Shape("input"))
        );
        assert_eq!(e("{"), Some(NotThisApi::NotJson));
    }

    #[test]
    fn payloads_keep_the_last_item_text() {
        let r = API
            .request("/v1/responses", AGENTS.as_bytes(), PAYLOADS)
            .unwrap();
        assert_eq!(
            r.prompt.as_deref(),
            Some(r#"{"order":42,"state":"shipped"}"#)
        );
        let s = API.request("/v1/responses", br#"{"model":"m","input":"Tell me a three sentence bedtime story about a unicorn."}"#, PAYLOADS).unwrap();
        assert_eq!(
            s.prompt.as_deref(),
            Some("Tell me a three sentence bedtime story about a unicorn.")
        );
        assert_eq!(req(r#"{"model":"m","input":"x"}"#).prompt, None);
    }

    const REPLY_CALLS: &str = r#"{"id":"resp_68c1f0a8c4b48190a1f0d52f3b7b0e2c","object":"response","created_at":1757540520,"status":"completed","background":false,"error":null,"incomplete_details":null,"instructions":"You are a helpful agent.","max_output_tokens":4096,"model":"gpt-5-2025-08-07","output":[{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"Need weather."}]},{"id":"fc_1","type":"function_call","status":"completed","arguments":"{\"city\":\"Paris\"}","call_id":"call_kd8Yb2rP1nX0Qe5T","name":"get_weather"},{"id":"fc_2","type":"function_call","status":"completed","arguments":"{\"id\":\"42\"}","call_id":"call_n1Qw2Er3Ty4Ui5Op","name":"lookup","namespace":"crm"}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":"low","summary":null},"store":false,"temperature":1.0,"text":{"format":{"type":"text"},"verbosity":"medium"},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":321,"input_tokens_details":{"cached_tokens":128},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":408},"user":null,"metadata":{}}"#;

    #[test]
    fn a_whole_reply_with_calls_in_a_namespace() {
        let r = API.response(200, REPLY_CALLS.as_bytes(), QUIET);
        assert!(r.complete);
        assert_eq!(r.error, None);
        assert_eq!(
            r.id.as_deref(),
            Some("resp_68c1f0a8c4b48190a1f0d52f3b7b0e2c")
        );
        assert_eq!(r.model.as_deref(), Some("gpt-5-2025-08-07"));
        assert_eq!(
            r.usage,
            Usage {
                input: Some(321),
                output: Some(87),
                cache_read: Some(128),
                cache_write: None,
                reasoning: Some(64),
            }
        );
        assert_eq!(
            (r.finish_reason.as_deref(), r.stop),
            (Some("completed"), Stop::ToolUse)
        );
        let calls: Vec<_> = r
            .tool_calls
            .iter()
            .map(|c| (c.id.as_deref(), c.name.as_str(), c.namespace.as_deref()))
            .collect();
        assert_eq!(
            calls,
            [
                (Some("call_kd8Yb2rP1nX0Qe5T"), "get_weather", None),
                (Some("call_n1Qw2Er3Ty4Ui5Op"), "lookup", Some("crm"))
            ]
        );
        assert_eq!(r.tool_calls[1].args_hash, canonical_hash(r#"{"id": "42"}"#));
        assert_eq!(r.tool_calls[1].args_bytes, 11);
        assert_eq!(r.text_bytes, "Need weather.".len() as u64);
    }

    #[test]
    fn whole_replies_that_end_run_out_or_fail() {
        let done = API.response(200, r#"{"id":"resp_2","object":"response","status":"completed","error":null,"incomplete_details":null,"model":"gpt-4.1-2025-04-14","output":[{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","annotations":[],"logprobs":[],"text":"It's 18°C and sunny in Paris."}]}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}"#.as_bytes(), PAYLOADS);
        assert_eq!((done.stop, done.tool_calls.len()), (Stop::EndTurn, 0));
        assert_eq!(
            done.completion.as_deref(),
            Some("It's 18°C and sunny in Paris.")
        );
        let short = API.response(200, br#"{"id":"resp_3","object":"response","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"model":"gpt-5","output":[{"type":"reasoning","id":"rs_1","summary":[]}],"usage":{"input_tokens":10,"output_tokens":16,"output_tokens_details":{"reasoning_tokens":16}}}"#, QUIET);
        assert_eq!(
            (short.finish_reason.as_deref(), short.stop),
            (Some("incomplete:max_output_tokens"), Stop::MaxTokens)
        );
        let filtered = API.response(200, br#"{"id":"resp_4","status":"incomplete","incomplete_details":{"reason":"content_filter"},"output":[]}"#, QUIET);
        assert_eq!(filtered.stop, Stop::Filtered);
        let failed = API.response(200, br#"{"id":"resp_5","object":"response","status":"failed","error":{"code":"server_error","message":"The model failed to generate a response."},"incomplete_details":null,"model":"gpt-5","output":[],"usage":null}"#, QUIET);
        assert_eq!(
            failed.error.map(|e| (e.kind, e.code)),
            Some((ErrorKind::Server, Some("server_error".into())))
        );
        assert_eq!(
            (failed.id.as_deref(), failed.finish_reason.as_deref()),
            (Some("resp_5"), Some("failed"))
        );
    }

    #[test]
    fn error_bodies_are_classified() {
        for (status, body, kind, code) in [
            (
                400,
                r#"{"error":{"message":"Your input exceeds the context window of this model. Please adjust your input and try again.","type":"invalid_request_error","param":"input","code":"context_length_exceeded"}}"#,
                ErrorKind::ContextOverflow,
                "context_length_exceeded",
            ),
            (
                400,
                r#"{"error":{"message":"Previous response with id 'resp_x' not found.","type":"invalid_request_error","param":"previous_response_id","code":"previous_response_not_found"}}"#,
                ErrorKind::InvalidRequest,
                "previous_response_not_found",
            ),
            (
                429,
                r#"{"error":{"message":"Rate limit reached for gpt-5 in organization org-abc on tokens per min (TPM).","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
                ErrorKind::RateLimit,
                "rate_limit_exceeded",
            ),
            (
                401,
                r#"{"error":{"message":"Incorrect API key provided.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
                ErrorKind::Auth,
                "invalid_api_key",
            ),
            (
                500,
                r#"{"error":{"message":"An error occurred while processing your request.","type":"server_error","param":null,"code":"server_error"}}"#,
                ErrorKind::Server,
                "server_error",
            ),
        ] {
            let r = API.response(status, body.as_bytes(), QUIET);
            let e = r.error.unwrap_or_else(|| panic!("{status}: no error"));
            assert_eq!((e.kind, e.code.as_deref()), (kind, Some(code)), "{body}");
        }
    }

    fn event(name: &str, data: &str) -> String {
        format!("event: {name}\ndata: {data}\n\n")
    }

    const CREATED: &str = r#"{"id":"resp_68c1f0a8c4b48190a1f0d52f3b7b0e2c","object":"response","created_at":1757540520,"status":"in_progress","background":false,"error":null,"incomplete_details":null,"instructions":"You are a helpful agent.","max_output_tokens":4096,"model":"gpt-5-2025-08-07","output":[],"parallel_tool_calls":true,"tools":[],"usage":null}"#;

    /// Reasoning, then two calls (one in a namespace), streamed.
    fn calls_stream() -> Vec<String> {
        vec![
            event(
                "response.created",
                &format!(
                    r#"{{"type":"response.created","sequence_number":0,"response":{CREATED}}}"#
                ),
            ),
            event(
                "response.in_progress",
                &format!(
                    r#"{{"type":"response.in_progress","sequence_number":1,"response":{CREATED}}}"#
                ),
            ),
            event(
                "response.output_item.added",
                r#"{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{"id":"rs_1","type":"reasoning","summary":[]}}"#,
            ),
            event(
                "response.reasoning_summary_part.added",
                r#"{"type":"response.reasoning_summary_part.added","sequence_number":3,"item_id":"rs_1","output_index":0,"summary_index":0,"part":{"type":"summary_text","text":""}}"#,
            ),
            event(
                "response.reasoning_summary_text.delta",
                r#"{"type":"response.reasoning_summary_text.delta","sequence_number":4,"item_id":"rs_1","output_index":0,"summary_index":0,"delta":"Need weather.","obfuscation":"Xq"}"#,
            ),
            event(
                "response.reasoning_summary_text.done",
                r#"{"type":"response.reasoning_summary_text.done","sequence_number":5,"item_id":"rs_1","output_index":0,"summary_index":0,"text":"Need weather."}"#,
            ),
            event(
                "response.output_item.done",
                r#"{"type":"response.output_item.done","sequence_number":6,"output_index":0,"item":{"id":"rs_1","type":"reasoning","summary":[{"type":"summary_text","text":"Need weather."}]}}"#,
            ),
            event(
                "response.output_item.added",
                r#"{"type":"response.output_item.added","sequence_number":7,"output_index":1,"item":{"id":"fc_1","type":"function_call","status":"in_progress","arguments":"","call_id":"call_kd8Yb2rP1nX0Qe5T","name":"get_weather"}}"#,
            ),
            event(
                "response.function_call_arguments.delta",
                r#"{"type":"response.function_call_arguments.delta","sequence_number":8,"item_id":"fc_1","output_index":1,"delta":"{\"city\":","obfuscation":"a1"}"#,
            ),
            event(
                "response.function_call_arguments.delta",
                r#"{"type":"response.function_call_arguments.delta","sequence_number":9,"item_id":"fc_1","output_index":1,"delta":"\"Paris\"}","obfuscation":"b2"}"#,
            ),
            event(
                "response.function_call_arguments.done",
                r#"{"type":"response.function_call_arguments.done","sequence_number":10,"item_id":"fc_1","output_index":1,"arguments":"{\"city\":\"Paris\"}"}"#,
            ),
            event(
                "response.output_item.done",
                r#"{"type":"response.output_item.done","sequence_number":11,"output_index":1,"item":{"id":"fc_1","type":"function_call","status":"completed","arguments":"{\"city\":\"Paris\"}","call_id":"call_kd8Yb2rP1nX0Qe5T","name":"get_weather"}}"#,
            ),
            event(
                "response.output_item.added",
                r#"{"type":"response.output_item.added","sequence_number":12,"output_index":2,"item":{"id":"fc_2","type":"function_call","status":"in_progress","arguments":"","call_id":"call_n1Qw2Er3Ty4Ui5Op","name":"lookup","namespace":"crm"}}"#,
            ),
            event(
                "response.function_call_arguments.delta",
                r#"{"type":"response.function_call_arguments.delta","sequence_number":13,"item_id":"fc_2","output_index":2,"delta":"{\"id\":\"42\"}"}"#,
            ),
            event(
                "response.function_call_arguments.done",
                r#"{"type":"response.function_call_arguments.done","sequence_number":14,"item_id":"fc_2","output_index":2,"arguments":"{\"id\":\"42\"}"}"#,
            ),
            event(
                "response.output_item.done",
                r#"{"type":"response.output_item.done","sequence_number":15,"output_index":2,"item":{"id":"fc_2","type":"function_call","status":"completed","arguments":"{\"id\":\"42\"}","call_id":"call_n1Qw2Er3Ty4Ui5Op","name":"lookup","namespace":"crm"}}"#,
            ),
            event(
                "response.completed",
                &format!(
                    r#"{{"type":"response.completed","sequence_number":16,"response":{REPLY_CALLS}}}"#
                ),
            ),
        ]
    }

    fn reply(writes: &[String]) -> Vec<u8> {
        sse_reply(&writes.iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn a_streamed_reply_is_the_same_however_split_and_as_the_whole_one() {
        let bytes = reply(&calls_stream());
        let r = same_however_split(&API, QUIET, &bytes);
        assert_eq!(r, API.response(200, REPLY_CALLS.as_bytes(), QUIET));
        let p = same_however_split(&API, PAYLOADS, &bytes);
        assert_eq!(p, API.response(200, REPLY_CALLS.as_bytes(), PAYLOADS));
        let (_, content) = replay_events(&API, QUIET, &[&bytes]);
        let firsts: Vec<usize> = content
            .iter()
            .enumerate()
            .filter(|(_, c)| **c)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(firsts, [4, 7, 8, 9, 12, 13]);
    }

    #[test]
    fn a_text_stream_and_an_incomplete_one() {
        let text = reply(&[
            event(
                "response.created",
                &format!(
                    r#"{{"type":"response.created","sequence_number":0,"response":{CREATED}}}"#
                ),
            ),
            event(
                "response.output_item.added",
                r#"{"type":"response.output_item.added","sequence_number":1,"output_index":0,"item":{"id":"msg_1","type":"message","status":"in_progress","content":[],"role":"assistant"}}"#,
            ),
            event(
                "response.content_part.added",
                r#"{"type":"response.content_part.added","sequence_number":2,"item_id":"msg_1","output_index":0,"content_index":0,"part":{"type":"output_text","annotations":[],"logprobs":[],"text":""}}"#,
            ),
            event(
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","sequence_number":3,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"It's 18°C","logprobs":[]}"#,
            ),
            event(
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","sequence_number":4,"item_id":"msg_1","output_index":0,"content_index":0,"delta":" in Paris.","logprobs":[]}"#,
            ),
            event(
                "response.output_text.done",
                r#"{"type":"response.output_text.done","sequence_number":5,"item_id":"msg_1","output_index":0,"content_index":0,"text":"It's 18°C in Paris.","logprobs":[]}"#,
            ),
            event(
                "response.completed",
                r#"{"type":"response.completed","sequence_number":6,"response":{"id":"resp_68c1f0a8c4b48190a1f0d52f3b7b0e2c","status":"completed","model":"gpt-5-2025-08-07","output":[{"type":"message","content":[{"type":"output_text","text":"It's 18°C in Paris."}]}],"usage":{"input_tokens":40,"output_tokens":9}}}"#,
            ),
        ]);
        let r = same_however_split(&API, PAYLOADS, &text);
        assert_eq!((r.stop, r.complete), (Stop::EndTurn, true));
        assert_eq!(r.completion.as_deref(), Some("It's 18°C in Paris."));
        assert_eq!(r.text_bytes, "It's 18°C in Paris.".len() as u64);
        let short = reply(&[
            event(
                "response.created",
                &format!(
                    r#"{{"type":"response.created","sequence_number":0,"response":{CREATED}}}"#
                ),
            ),
            event(
                "response.reasoning_text.delta",
                r#"{"type":"response.reasoning_text.delta","sequence_number":1,"item_id":"rs_1","output_index":0,"content_index":0,"delta":"Hmm"}"#,
            ),
            event(
                "response.incomplete",
                r#"{"type":"response.incomplete","sequence_number":2,"response":{"id":"resp_68c1f0a8c4b48190a1f0d52f3b7b0e2c","status":"incomplete","incomplete_details":{"reason":"max_output_tokens"},"model":"gpt-5-2025-08-07","output":[],"usage":{"input_tokens":40,"output_tokens":16,"output_tokens_details":{"reasoning_tokens":16}}}}"#,
            ),
        ]);
        let r = same_however_split(&API, QUIET, &short);
        assert!(r.complete);
        assert_eq!(
            (r.finish_reason.as_deref(), r.stop),
            (Some("incomplete:max_output_tokens"), Stop::MaxTokens)
        );
        assert_eq!((r.text_bytes, r.usage.reasoning), (3, Some(16)));
    }

    #[test]
    fn error_events_and_failed_responses_end_the_stream() {
        let mut writes = calls_stream()[..9].to_vec();
        writes.push(event("error", r#"{"type":"error","sequence_number":9,"code":"server_error","message":"An error occurred while processing your request.","param":null}"#));
        let r = same_however_split(&API, QUIET, &reply(&writes));
        assert!(r.complete);
        assert_eq!(
            r.error.map(|e| (e.kind, e.code)),
            Some((ErrorKind::Server, Some("server_error".into())))
        );
        assert_eq!(r.tool_calls.len(), 1);
        assert_eq!(r.tool_calls[0].args_hash, None);
        let mut failed = calls_stream()[..2].to_vec();
        failed.push(event("response.failed", r#"{"type":"response.failed","sequence_number":2,"response":{"id":"resp_68c1f0a8c4b48190a1f0d52f3b7b0e2c","status":"failed","error":{"code":"rate_limit_exceeded","message":"Rate limit reached."},"model":"gpt-5-2025-08-07","output":[],"usage":null}}"#));
        let r = same_however_split(&API, QUIET, &reply(&failed));
        assert_eq!(r.error.map(|e| e.kind), Some(ErrorKind::RateLimit));
        assert_eq!(
            (r.finish_reason.as_deref(), r.complete),
            (Some("failed"), true)
        );
    }

    #[test]
    fn a_stream_cut_off_is_incomplete() {
        let bytes = reply(&calls_stream());
        let mid = cut_after(
            &API,
            &bytes,
            "event: response.function_call_arguments.done",
            true,
        );
        assert!(!mid.complete);
        assert_eq!(mid.tool_calls.len(), 1);
        // `{"city":"Paris"}` came whole in its two pieces: hashed though never confirmed.
        assert_eq!(
            mid.tool_calls[0].args_hash,
            canonical_hash(r#"{"city":"Paris"}"#)
        );
        let half = cut_after(&API, &bytes, "\"obfuscation\":\"a1\"}\n\n", false);
        assert_eq!(
            (half.tool_calls[0].args_hash, half.tool_calls[0].args_bytes),
            (None, 8)
        );
        let before_end = cut_after(&API, &bytes, "event: response.completed", true);
        assert!(!before_end.complete);
        assert_eq!(before_end.tool_calls.len(), 2);
        assert!(before_end.tool_calls.iter().all(|c| c.args_hash.is_some()));
        assert_eq!(
            before_end.usage,
            Usage::default(),
            "usage comes with the last event"
        );
        assert_eq!(
            before_end.id.as_deref(),
            Some("resp_68c1f0a8c4b48190a1f0d52f3b7b0e2c")
        );
    }

    #[test]
    fn custom_tool_calls_hash_their_input_as_a_string() {
        let whole = API.response(200, br#"{"id":"resp_c","status":"completed","output":[{"type":"custom_tool_call","id":"ctc_1","call_id":"call_c1","name":"run_sql","input":"SELECT 1;"}]}"#, QUIET);
        assert_eq!(
            whole.tool_calls[0].args_hash,
            canonical_hash(r#""SELECT 1;""#)
        );
        let streamed = reply(&[
            event(
                "response.output_item.added",
                r#"{"type":"response.output_item.added","output_index":0,"item":{"type":"custom_tool_call","id":"ctc_1","call_id":"call_c1","name":"run_sql","input":""}}"#,
            ),
            event(
                "response.custom_tool_call_input.delta",
                r#"{"type":"response.custom_tool_call_input.delta","output_index":0,"item_id":"ctc_1","delta":"SELECT "}"#,
            ),
            event(
                "response.custom_tool_call_input.delta",
                r#"{"type":"response.custom_tool_call_input.delta","output_index":0,"item_id":"ctc_1","delta":"1;"}"#,
            ),
            event(
                "response.custom_tool_call_input.done",
                r#"{"type":"response.custom_tool_call_input.done","output_index":0,"item_id":"ctc_1","input":"SELECT 1;"}"#,
            ),
            event(
                "response.completed",
                r#"{"type":"response.completed","response":{"id":"resp_c","status":"completed"}}"#,
            ),
        ]);
        assert_eq!(
            same_however_split(&API, QUIET, &streamed).tool_calls,
            whole.tool_calls
        );
    }
}
