//! Gemini `generateContent` and `streamGenerateContent` (`POST .../models/{model}:...`, on
//! the Gemini API and on Vertex AI).
//!
//! Request: the model from the path, `contents` (role and parts: text, `functionCall`,
//! `functionResponse`, inline data...), `systemInstruction`, `tools[].functionDeclarations`,
//! `generationConfig.maxOutputTokens`; `functionResponse` parts are the results carried
//! back. The REST API takes snake_case names too (`system_instruction`,
//! `function_declarations`), and curl examples use them; both are read. Reply: one
//! `GenerateContentResponse` (`candidates[0]`, `usageMetadata`, `modelVersion`,
//! `responseId`), or a stream of them (`alt=sse`, or a JSON array without it), the last with
//! a `finishReason`.
//!
//! Usage: `promptTokenCount` is the input (cached tokens included), `cachedContentTokenCount`
//! the cache read; the output is `candidatesTokenCount` plus `thoughtsTokenCount`, which
//! Gemini reports apart (every other API counts reasoning inside the output), and
//! `thoughtsTokenCount` is also the reasoning count.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::common::{
    ArgsKind, Body, Calls, Fp, Gen, List, Obj, UsageKeys, call, content_hash, content_text,
    error_of, obj_of, reason, stop_of, string_content_hash, take_usage, text_hash, value_hash,
    whole_call,
};
use super::{Accumulator, ModelApi, NotThisApi, Options};
use crate::llm::{Api, CarriedResult, OfferedTool, Request, Response};

/// The Gemini API.
pub struct Gemini;

/// The Gemini API's reader.
pub static API: Gemini = Gemini;

/// The counts read by name; the output is added up from two (see the module's doc).
const USAGE: UsageKeys = UsageKeys {
    input: &["promptTokenCount"],
    output: &[],
    cache_read: &["cachedContentTokenCount"],
    cache_write: &[],
    reasoning: &["thoughtsTokenCount"],
};

const FUNCTION_CALL: &[&str] = &["functionCall", "function_call"];
const FUNCTION_RESPONSE: &[&str] = &["functionResponse", "function_response"];

/// The call a Gemini path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Method<'a> {
    /// The model (`gemini-2.5-flash`), as the path spells it.
    pub model: &'a str,
    /// `streamGenerateContent`.
    pub stream: bool,
}

/// The call a request path (with or without its query) names: `.../models/{model}:
/// generateContent` or `:streamGenerateContent`; `None` for anything else (`:countTokens`,
/// `:embedContent`, `:batchGenerateContent`, a model's metadata).
pub fn method_of(path: &str) -> Option<Method<'_>> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.trim_end_matches('/');
    let (rest, verb) = path.rsplit_once(':')?;
    let stream = match verb {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return None,
    };
    let (parent, model) = rest.rsplit_once('/')?;
    let under_models = parent == "models" || parent.ends_with("/models");
    (under_models && !model.is_empty()).then_some(Method { model, stream })
}

impl ModelApi for Gemini {
    fn api(&self) -> Api {
        Api::GenerateContent
    }

    fn request(&self, path: &str, body: &[u8], opts: Options) -> Result<Request, NotThisApi> {
        request(path, body, opts)
    }

    fn response(&self, status: u16, body: &[u8], opts: Options) -> Response {
        response(status, body, opts)
    }

    fn stream(&self, opts: Options) -> Box<dyn Accumulator> {
        Box::new(Chunks::new(opts, 200))
    }
}

fn request(path: &str, body: &[u8], opts: Options) -> Result<Request, NotThisApi> {
    let Body { obj, list } = Body::parse(body, "contents")?;
    let Some(List::Items(contents)) = list else {
        return Err(NotThisApi::Shape("contents"));
    };
    let method = method_of(path);
    let config = obj
        .raw_any(&["generationConfig", "generation_config"])
        .and_then(Obj::of);
    let mut req = Request {
        model: method.map(|m| m.model.to_string()),
        stream: method.is_some_and(|m| m.stream),
        max_tokens: config.and_then(|g| {
            g.u64("maxOutputTokens")
                .or_else(|| g.u64("max_output_tokens"))
        }),
        tools: tools(&obj),
        system: obj
            .raw_any(&["systemInstruction", "system_instruction"])
            .map_or(0, system_hash),
        ..Request::default()
    };
    for (i, c) in contents.iter().enumerate() {
        let h = content_fp(c, i, &mut req.results);
        req.messages.push(h);
    }
    if opts.payloads {
        req.prompt = contents.last().and_then(|c| {
            let mut out = Gen::new(opts);
            content_text(c.raw("parts"), &mut out, part_text);
            out.payload()
        });
    }
    Ok(req)
}

fn tools(obj: &Obj) -> Vec<OfferedTool> {
    let mut out = Vec::new();
    for t in obj.items("tools") {
        let decls = t.raw_any(&["functionDeclarations", "function_declarations"]);
        if let Some(List::Items(decls)) = decls.map(List::of) {
            out.extend(
                decls
                    .iter()
                    .filter_map(|d| d.str("name"))
                    .map(|n| OfferedTool {
                        name: n.into_owned(),
                        namespace: None,
                    }),
            );
        }
    }
    out
}

/// `systemInstruction`: a content (its parts count, not its role), or a bare string as some
/// clients send it.
fn system_hash(raw: &RawValue) -> u64 {
    match List::of(raw) {
        List::Text(t) => string_content_hash(&t),
        _ => match Obj::of(raw) {
            Some(c) => content_hash(c.raw("parts"), part_hash),
            None => value_hash(raw),
        },
    }
}

/// A content's fingerprint (role and parts), noting the function responses it carries.
fn content_fp(c: &Obj, index: usize, results: &mut Vec<CarriedResult>) -> u64 {
    let parts = content_hash(c.raw("parts"), |p| {
        if let Some(r) = p.raw_any(FUNCTION_RESPONSE).and_then(Obj::of) {
            results.push(CarriedResult {
                call_id: r.str("id").map(Cow::into_owned),
                name: r.str("name").map(Cow::into_owned),
                is_error: None,
                bytes: r.raw("response").map_or(0, |x| x.get().len() as u64),
                message: index,
            });
        }
        part_hash(p)
    });
    Fp::new(b'm')
        .opt(c.str("role").as_deref())
        .u64(parts)
        .finish()
}

/// A part's hash: text (a thought apart), a function call by id, name and arguments, a
/// function response by id, name and response; anything else by all its members but the
/// opaque `thoughtSignature`.
fn part_hash(p: &Obj) -> u64 {
    if let Some(t) = p.str("text") {
        return match p.bool("thought") {
            Some(true) => Fp::new(b'h').str(&t).finish(),
            _ => text_hash(&t),
        };
    }
    for (tag, keys, value) in [
        (b'c', FUNCTION_CALL, "args"),
        (b'r', FUNCTION_RESPONSE, "response"),
    ] {
        if let Some(f) = p.raw_any(keys).and_then(Obj::of) {
            return Fp::new(tag)
                .opt(f.str("id").as_deref())
                .opt(f.str("name").as_deref())
                .u64(f.raw(value).map_or(0, value_hash))
                .finish();
        }
    }
    p.hash_except(&["thoughtSignature", "thought_signature"])
}

fn part_text(p: &Obj, out: &mut Gen) {
    if let Some(t) = p.str("text") {
        out.part(&t);
    } else if let Some(r) = p.raw_any(FUNCTION_RESPONSE).and_then(Obj::of) {
        out.part(r.raw("response").map_or("", RawValue::get));
    }
}

fn response(status: u16, body: &[u8], opts: Options) -> Response {
    let mut acc = Chunks::new(opts, status);
    let Ok(text) = std::str::from_utf8(body) else {
        return acc.finish_whole(false);
    };
    // `streamGenerateContent` without `alt=sse` answers with a JSON array of chunks.
    if text.trim_start().starts_with('[') {
        let Ok(chunks) = serde_json::from_str::<Vec<&RawValue>>(text) else {
            return acc.finish_whole(false);
        };
        for c in chunks.iter().filter_map(|c| Obj::of(c)) {
            acc.chunk(&c);
        }
        return acc.finish_whole(true);
    }
    match Obj::parse(text) {
        Some(obj) => {
            acc.chunk(&obj);
            acc.finish_whole(true)
        }
        None => acc.finish_whole(false),
    }
}

/// `GenerateContentResponse` chunks added up: a whole reply is one, a stream many.
struct Chunks {
    opts: Options,
    status: u16,
    r: Response,
    text: Gen,
    calls: Calls,
    /// The last `candidatesTokenCount` (the output is this plus the thoughts).
    candidates: Option<u64>,
}

impl Chunks {
    fn new(opts: Options, status: u16) -> Self {
        Chunks {
            opts,
            status,
            r: Response::default(),
            text: Gen::new(opts),
            calls: Calls::new(opts),
            candidates: None,
        }
    }

    /// One chunk; true when it carried text or a call.
    fn chunk(&mut self, obj: &Obj) -> bool {
        if let Some(e) = obj.obj("error") {
            self.r.error = Some(error_of(self.status, Some(&e), &["status"]));
            self.r.complete = true;
            return false;
        }
        self.r.id = self
            .r
            .id
            .take()
            .or(obj.str("responseId").map(Cow::into_owned));
        self.r.model = self
            .r
            .model
            .take()
            .or(obj.str("modelVersion").map(Cow::into_owned));
        if let Some(u) = obj.obj("usageMetadata") {
            take_usage(&mut self.r.usage, &u, &USAGE);
            self.candidates = u.u64("candidatesTokenCount").or(self.candidates);
        }
        let candidate = obj
            .items("candidates")
            .into_iter()
            .find(|c| c.u64("index").unwrap_or(0) == 0);
        let Some(c) = candidate else {
            // A prompt blocked before any candidate: its block reason is why it stopped.
            let blocked = obj.obj("promptFeedback").and_then(|f| f.str("blockReason"));
            if let Some(b) = blocked {
                self.r.finish_reason = Some(reason(&b));
                self.r.complete = true;
            }
            return false;
        };
        let mut content = false;
        for p in c
            .obj("content")
            .map(|c| c.items("parts"))
            .unwrap_or_default()
        {
            content |= self.part(&p);
        }
        if let Some(f) = c.str("finishReason") {
            self.r.finish_reason = Some(reason(&f));
            self.r.complete = true;
        }
        content
    }

    fn part(&mut self, p: &Obj) -> bool {
        if let Some(t) = p.str("text") {
            match p.bool("thought") {
                Some(true) => self.text.reasoning(&t),
                _ => self.text.text(&t),
            }
            return !t.is_empty();
        }
        // Calls come whole, never split across chunks.
        let Some(f) = p.raw_any(FUNCTION_CALL).and_then(Obj::of) else {
            return false;
        };
        let args = f.raw("args").map_or("", RawValue::get);
        let c = call(f.str("id"), f.str("name"), None);
        self.calls
            .add(whole_call(c, args, ArgsKind::Json, self.opts));
        true
    }

    fn finish_whole(self, parsed: bool) -> Response {
        let status = self.status;
        let mut r = self.into_response();
        r.complete = parsed;
        if status >= 400 && r.error.is_none() {
            r.error = Some(error_of(status, None, &[]));
        }
        r
    }

    fn into_response(self) -> Response {
        let Chunks {
            mut r,
            text,
            calls,
            candidates,
            ..
        } = self;
        if candidates.is_some() || r.usage.reasoning.is_some() {
            r.usage.output = Some(
                candidates
                    .unwrap_or(0)
                    .saturating_add(r.usage.reasoning.unwrap_or(0)),
            );
        }
        r.tool_calls = calls.finish();
        r.stop = stop_of(r.finish_reason.as_deref(), !r.tool_calls.is_empty());
        r.text_bytes = text.bytes;
        r.completion = text.payload();
        r
    }
}

impl Accumulator for Chunks {
    fn event(&mut self, _event: &str, data: &[u8]) -> bool {
        obj_of(data).is_some_and(|obj| self.chunk(&obj))
    }

    fn held(&self) -> usize {
        self.text.held() + self.calls.held()
    }

    fn finish(self: Box<Self>) -> Response {
        self.into_response()
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
    const PATH: &str = "/v1beta/models/gemini-2.5-flash:generateContent";
    const STREAM_PATH: &str = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";

    /// A second turn as google-genai sends it (automatic function calling off): the question,
    /// the model's two calls (the first with its thought signature), both responses.
    const TURN2: &str = r#"{"contents":[{"parts":[{"text":"What's the weather in Paris and Lyon?"}],"role":"user"},{"parts":[{"functionCall":{"args":{"city":"Paris"},"name":"get_weather"},"thoughtSignature":"CiQB0e2Kb7kYc2ljgW5BvD0f"},{"functionCall":{"args":{"city":"Lyon"},"name":"get_weather"}}],"role":"model"},{"parts":[{"functionResponse":{"name":"get_weather","response":{"result":"18°C and sunny"}}},{"functionResponse":{"name":"get_weather","response":{"result":"15°C and cloudy"}}}],"role":"user"}],"systemInstruction":{"parts":[{"text":"You are a weather assistant."}],"role":"user"},"tools":[{"functionDeclarations":[{"description":"Get the weather","name":"get_weather","parameters":{"properties":{"city":{"type":"STRING"}},"required":["city"],"type":"OBJECT"}},{"name":"get_time","parameters":{"type":"OBJECT","properties":{}}}]},{"googleSearch":{}}],"generationConfig":{"maxOutputTokens":1024,"temperature":0.2,"thinkingConfig":{"includeThoughts":true,"thinkingBudget":512}}}"#;

    fn req(path: &str, body: &str) -> Request {
        API.request(path, body.as_bytes(), QUIET).unwrap()
    }

    #[test]
    fn paths_name_the_model_and_whether_it_streams() {
        let m = |p| method_of(p);
        assert_eq!(
            m(PATH),
            Some(Method {
                model: "gemini-2.5-flash",
                stream: false
            })
        );
        assert_eq!(
            m(STREAM_PATH),
            Some(Method {
                model: "gemini-2.5-flash",
                stream: true
            })
        );
        assert_eq!(
            m(
                "/v1/projects/my-proj/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
            ),
            Some(Method {
                model: "gemini-2.5-pro",
                stream: false
            })
        );
        assert_eq!(
            m("models/gemini-2.0-flash-001:streamGenerateContent"),
            Some(Method {
                model: "gemini-2.0-flash-001",
                stream: true
            })
        );
        for p in [
            "/v1beta/models/gemini-2.5-flash:countTokens",
            "/v1beta/models/gemini-2.5-flash:batchGenerateContent",
            "/v1beta/models/gemini-2.5-flash",
            "/v1beta/models/:generateContent",
            "/v1beta/tunedModels/my-model:generateContent",
            "/v1beta/cachedContents:generateContent",
            "/generateContent",
        ] {
            assert_eq!(m(p), None, "{p}");
        }
    }

    #[test]
    fn a_function_calling_turn_reads_model_tools_system_and_results() {
        let r = req(PATH, TURN2);
        assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
        assert!(!r.stream);
        assert!(req(STREAM_PATH, TURN2).stream);
        assert_eq!(r.max_tokens, Some(1024));
        let names: Vec<_> = r.tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["get_weather", "get_time"],
            "built-in tools are not functions"
        );
        assert_ne!(r.system, 0);
        assert_eq!(r.messages.len(), 3);
        assert_eq!(
            r.results,
            [
                CarriedResult {
                    call_id: None,
                    name: Some("get_weather".into()),
                    is_error: None,
                    bytes: r#"{"result":"18°C and sunny"}"#.len() as u64,
                    message: 2,
                },
                CarriedResult {
                    call_id: None,
                    name: Some("get_weather".into()),
                    is_error: None,
                    bytes: r#"{"result":"15°C and cloudy"}"#.len() as u64,
                    message: 2,
                },
            ]
        );
        // A thought signature is opaque: the call is the same without it.
        let unsigned = TURN2.replace(r#","thoughtSignature":"CiQB0e2Kb7kYc2ljgW5BvD0f""#, "");
        assert_eq!(req(PATH, &unsigned).messages, r.messages);
        let other = TURN2.replace(r#"{"city":"Lyon"}"#, r#"{"city":"Nice"}"#);
        assert_ne!(req(PATH, &other).messages[1], r.messages[1]);
    }

    #[test]
    fn calls_and_responses_with_ids() {
        // Vertex AI and the Live API give calls ids, and responses name them.
        let body = r#"{"contents":[{"role":"user","parts":[{"text":"Roll a die."}]},{"role":"model","parts":[{"functionCall":{"id":"adc-1f2e","name":"roll_die","args":{}}}]},{"role":"user","parts":[{"functionResponse":{"id":"adc-1f2e","name":"roll_die","response":{"output":4}}}]}]}"#;
        let r = req(PATH, body);
        assert_eq!(r.results[0].call_id.as_deref(), Some("adc-1f2e"));
        assert_eq!(r.results[0].name.as_deref(), Some("roll_die"));
        assert_eq!((r.system, r.max_tokens), (0, None));
        let without = body.replace(r#""id":"adc-1f2e","#, "");
        assert_ne!(req(PATH, &without).messages[1], r.messages[1]);
        assert_eq!(req(PATH, &without).messages[0], r.messages[0]);
    }

    #[test]
    fn snake_case_as_curl_examples_write_it_reads_the_same() {
        let snake = r#"{"system_instruction":{"parts":[{"text":"You are a weather assistant."}]},"contents":[{"role":"user","parts":[{"text":"What's the weather in Paris and Lyon?"}]},{"role":"model","parts":[{"function_call":{"name":"get_weather","args":{"city":"Paris"}}}]}],"tools":[{"function_declarations":[{"name":"get_weather","description":"Get the weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}]}],"generation_config":{"max_output_tokens":1024}}"#;
        let (s, c) = (req(PATH, snake), req(PATH, TURN2));
        assert_eq!(s.system, c.system);
        assert_eq!(s.messages[0], c.messages[0]);
        assert_eq!(s.tools[0], c.tools[0]);
        assert_eq!(s.max_tokens, Some(1024));
        let one_call = TURN2.replace(
            r#",{"functionCall":{"args":{"city":"Lyon"},"name":"get_weather"}}"#,
            "",
        );
        assert_eq!(s.messages[1], req(PATH, &one_call).messages[1]);
    }

    #[test]
    fn shapes_that_are_not_generate_content_requests() {
        let e = |b: &str| API.request(PATH, b.as_bytes(), QUIET).err();
        assert_eq!(
            e(r#"{"model":"gemini"}"#),
            Some(NotThisApi::Shape("contents"))
        );
        assert_eq!(
            e(r#"{"contents":"hi"}"#),
            Some(NotThisApi::Shape("contents"))
        );
        assert_eq!(e("contents"), Some(NotThisApi::NotJson));
        // No model in the body: it comes from the path alone.
        assert_eq!(req("/somewhere/else", r#"{"contents":[]}"#).model, None);
    }

    #[test]
    fn payloads_keep_the_last_content_text() {
        let r = API.request(PATH, TURN2.as_bytes(), PAYLOADS).unwrap();
        assert_eq!(
            r.prompt.as_deref(),
            Some("{\"result\":\"18°C and sunny\"}\n{\"result\":\"15°C and cloudy\"}")
        );
        let q = API.request(PATH, br#"{"contents":[{"role":"user","parts":[{"text":"My key is AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW, why?"}]}]}"#, PAYLOADS).unwrap();
        assert!(
            q.prompt
                .as_deref()
                .is_some_and(|p| !p.contains("AIzaSy") && p.ends_with(", why?")),
            "{q:?}"
        );
    }

    const REPLY_CALLS: &str = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"CiQB0e2Kb7kYc2ljgW5BvD0f"},{"functionCall":{"name":"get_weather","args":{"city":"Lyon"}}}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":30,"totalTokenCount":200,"promptTokensDetails":[{"modality":"TEXT","tokenCount":120}],"thoughtsTokenCount":50},"modelVersion":"gemini-2.5-flash","responseId":"Xq7AaK2yLpGz1MkP3Zy4kAs"}"#;

    #[test]
    fn a_whole_reply_with_function_calls() {
        let r = API.response(200, REPLY_CALLS.as_bytes(), QUIET);
        assert!(r.complete);
        assert_eq!(r.error, None);
        assert_eq!(r.id.as_deref(), Some("Xq7AaK2yLpGz1MkP3Zy4kAs"));
        assert_eq!(r.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(
            r.usage,
            Usage {
                input: Some(120),
                output: Some(80),
                cache_read: None,
                cache_write: None,
                reasoning: Some(50),
            }
        );
        assert_eq!(
            (r.finish_reason.as_deref(), r.stop),
            (Some("STOP"), Stop::ToolUse)
        );
        assert_eq!(r.tool_calls.len(), 2);
        assert_eq!(
            (r.tool_calls[0].id.as_deref(), r.tool_calls[0].name.as_str()),
            (None, "get_weather")
        );
        assert_eq!(
            r.tool_calls[1].args_hash,
            canonical_hash(r#"{"city":"Lyon"}"#)
        );
        assert_eq!(r.tool_calls[1].args_bytes, 15);
        let p = API.response(200, REPLY_CALLS.as_bytes(), PAYLOADS);
        assert_eq!(
            p.tool_calls[0].arguments,
            Some(serde_json::json!({"city": "Paris"}))
        );
    }

    #[test]
    fn whole_replies_that_stop_run_out_or_are_blocked() {
        let text = API.response(200, r#"{"candidates":[{"content":{"parts":[{"text":"Thinking about it.","thought":true},{"text":"Paris is sunny, 18°C."}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":2000,"candidatesTokenCount":9,"totalTokenCount":2009,"cachedContentTokenCount":1500},"modelVersion":"gemini-2.5-pro","responseId":"r1"}"#.as_bytes(), PAYLOADS);
        assert_eq!(
            (
                text.stop,
                text.usage.cache_read,
                text.usage.output,
                text.usage.reasoning
            ),
            (Stop::EndTurn, Some(1500), Some(9), None)
        );
        assert_eq!(text.completion.as_deref(), Some("Paris is sunny, 18°C."));
        assert_eq!(
            text.text_bytes,
            ("Thinking about it.".len() + "Paris is sunny, 18°C.".len()) as u64
        );
        let long = API.response(200, br#"{"candidates":[{"content":{"parts":[{"text":"Once"}],"role":"model"},"finishReason":"MAX_TOKENS","index":0}],"usageMetadata":{"promptTokenCount":5,"totalTokenCount":1029,"thoughtsTokenCount":1024}}"#, QUIET);
        assert_eq!(
            (long.stop, long.usage.output),
            (Stop::MaxTokens, Some(1024))
        );
        let unsafe_ = API.response(200, br#"{"candidates":[{"finishReason":"SAFETY","index":0,"safetyRatings":[{"category":"HARM_CATEGORY_DANGEROUS_CONTENT","probability":"HIGH","blocked":true}]}]}"#, QUIET);
        assert_eq!(unsafe_.stop, Stop::Filtered);
        let blocked = API.response(200, br#"{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"},"usageMetadata":{"promptTokenCount":7,"totalTokenCount":7},"modelVersion":"gemini-2.5-flash"}"#, QUIET);
        assert_eq!(
            (blocked.finish_reason.as_deref(), blocked.stop),
            (Some("PROHIBITED_CONTENT"), Stop::Filtered)
        );
        assert_eq!(blocked.usage.output, None);
    }

    #[test]
    fn huge_counts_saturate() {
        let r = API.response(200, br#"{"usageMetadata":{"candidatesTokenCount":18446744073709551615,"thoughtsTokenCount":2}}"#, QUIET);
        assert_eq!(r.usage.output, Some(u64::MAX));
    }

    #[test]
    fn error_bodies_are_classified() {
        for (status, body, kind, code) in [
            (
                429,
                r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"34s"}]}}"#,
                ErrorKind::RateLimit,
                "RESOURCE_EXHAUSTED",
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
                ErrorKind::ContextOverflow,
                "INVALID_ARGUMENT",
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#,
                ErrorKind::InvalidRequest,
                "INVALID_ARGUMENT",
            ),
            (
                403,
                r#"{"error":{"code":403,"message":"Permission denied on resource project my-proj.","status":"PERMISSION_DENIED"}}"#,
                ErrorKind::Auth,
                "PERMISSION_DENIED",
            ),
            (
                500,
                r#"{"error":{"code":500,"message":"An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting","status":"INTERNAL"}}"#,
                ErrorKind::Server,
                "INTERNAL",
            ),
            (
                503,
                r#"{"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}"#,
                ErrorKind::Overloaded,
                "UNAVAILABLE",
            ),
        ] {
            let r = API.response(status, body.as_bytes(), QUIET);
            let e = r.error.unwrap_or_else(|| panic!("{status}: no error"));
            assert_eq!((e.kind, e.code.as_deref()), (kind, Some(code)), "{body}");
            assert!(r.complete);
        }
        let html = API.response(502, b"<html>Bad Gateway</html>", QUIET);
        assert_eq!(
            (html.error.map(|e| e.kind), html.complete),
            (Some(ErrorKind::Server), false)
        );
        let empty = API.response(500, b"{}", QUIET);
        assert_eq!(empty.error.map(|e| e.kind), Some(ErrorKind::Server));
    }

    /// A stream (`alt=sse`) as the API writes it: CRLF line ends, thoughts, text, then the
    /// calls and the usage with the finish reason.
    fn chunks() -> Vec<String> {
        let data = |d: &str| format!("data: {d}\r\n\r\n");
        vec![
            data(
                r#"{"candidates":[{"content":{"parts":[{"text":"**Checking the weather**\n\n","thought":true}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":120,"totalTokenCount":140,"promptTokensDetails":[{"modality":"TEXT","tokenCount":120}],"thoughtsTokenCount":20},"modelVersion":"gemini-2.5-flash","responseId":"Xq7AaK2yLpGz1MkP3Zy4kAs"}"#,
            ),
            data(
                r#"{"candidates":[{"content":{"parts":[{"text":"Let me check both."}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":5,"totalTokenCount":175,"thoughtsTokenCount":50},"modelVersion":"gemini-2.5-flash","responseId":"Xq7AaK2yLpGz1MkP3Zy4kAs"}"#,
            ),
            data(
                r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"get_weather","args":{"city":"Paris"}},"thoughtSignature":"CiQB0e2Kb7kYc2ljgW5BvD0f"},{"functionCall":{"name":"get_weather","args":{"city":"Lyon"}}}],"role":"model"},"index":0}],"usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":25,"totalTokenCount":195,"thoughtsTokenCount":50},"modelVersion":"gemini-2.5-flash","responseId":"Xq7AaK2yLpGz1MkP3Zy4kAs"}"#,
            ),
            data(
                r#"{"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":30,"totalTokenCount":200,"promptTokensDetails":[{"modality":"TEXT","tokenCount":120}],"thoughtsTokenCount":50},"modelVersion":"gemini-2.5-flash","responseId":"Xq7AaK2yLpGz1MkP3Zy4kAs"}"#,
            ),
        ]
    }

    fn reply(writes: &[String]) -> Vec<u8> {
        sse_reply(&writes.iter().map(String::as_str).collect::<Vec<_>>())
    }

    #[test]
    fn a_streamed_reply_is_the_same_however_split() {
        let bytes = reply(&chunks());
        let r = same_however_split(&API, QUIET, &bytes);
        assert!(r.complete);
        assert_eq!(r.id.as_deref(), Some("Xq7AaK2yLpGz1MkP3Zy4kAs"));
        let whole = API.response(200, REPLY_CALLS.as_bytes(), QUIET);
        assert_eq!(
            (r.usage, r.stop, &r.finish_reason),
            (whole.usage, whole.stop, &whole.finish_reason)
        );
        assert_eq!(r.tool_calls, whole.tool_calls);
        assert_eq!(
            r.text_bytes,
            ("**Checking the weather**\n\n".len() + "Let me check both.".len()) as u64
        );
        let p = same_however_split(&API, PAYLOADS, &bytes);
        assert_eq!(p.completion.as_deref(), Some("Let me check both."));
        let (_, content) = replay_events(&API, QUIET, &[&bytes]);
        assert_eq!(content, [true, true, true, false]);
    }

    #[test]
    fn a_json_array_without_sse_reads_as_the_stream_does() {
        // `streamGenerateContent` without `alt=sse` answers with one JSON array.
        let parts: Vec<String> = chunks()
            .iter()
            .map(|c| c.trim_start_matches("data: ").trim_end().to_string())
            .collect();
        let array = format!("[{}]", parts.join(",\r\n"));
        let whole = API.response(200, array.as_bytes(), QUIET);
        let streamed = same_however_split(&API, QUIET, &reply(&chunks()));
        assert_eq!(whole, streamed);
    }

    #[test]
    fn a_stream_cut_off_or_ended_by_an_error() {
        let bytes = reply(&chunks());
        let cut = cut_after(
            &API,
            &bytes,
            r#"data: {"candidates":[{"content":{"parts":[{"text":""}]"#,
            true,
        );
        assert!(!cut.complete);
        assert_eq!(cut.tool_calls.len(), 2, "calls come whole");
        assert!(cut.tool_calls.iter().all(|c| c.args_hash.is_some()));
        assert_eq!((cut.usage.output, cut.finish_reason), (Some(75), None));
        let mut writes = chunks()[..2].to_vec();
        writes.push("data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded. Please try again later.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n".to_string());
        let r = same_however_split(&API, QUIET, &reply(&writes));
        assert!(r.complete);
        assert_eq!(
            r.error.map(|e| (e.kind, e.code)),
            Some((ErrorKind::Overloaded, Some("UNAVAILABLE".into())))
        );
    }
}
