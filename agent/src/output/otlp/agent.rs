//! The agentic layer's spans, by the GenAI conventions: a task is an `invoke_agent` span
//! (INTERNAL), each of its model calls a `chat {model}` span (CLIENT; `generate_content
//! {model}` for Gemini) under it, and each tool call the model asked for an
//! `execute_tool {tool}` span (INTERNAL) under its turn, which parents the MCP exchange's
//! CLIENT span when the call ran over MCP. Ids come from [`crate::signal::trace_ids`], so
//! these spans and the exchange's agree without shared state.

use std::borrow::Cow;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::{findings, process_attributes, push_known, time};
use crate::llm::Api;
use crate::output::metrics::agent::error_type;
use crate::signal::trace_ids::{span, tool_part};
use crate::signal::{LlmCall, LlmStatus, TaskEnd};

/// Where a span sits and what it says.
struct Shape {
    trace: u128,
    id: u64,
    parent: u64,
    kind: SpanKind,
    name: String,
    window: (u64, u64),
    attributes: Vec<KeyValue>,
    error: Option<String>,
}

fn build(s: Shape) -> SpanData {
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(s.trace.to_be_bytes()),
            SpanId::from_bytes(s.id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: if s.parent == 0 {
            SpanId::INVALID
        } else {
            SpanId::from_bytes(s.parent.to_be_bytes())
        },
        parent_span_is_remote: false,
        span_kind: s.kind,
        name: Cow::Owned(s.name),
        start_time: time(s.window.0),
        end_time: time(s.window.1.max(s.window.0)),
        attributes: s.attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match s.error {
            Some(e) => Status::error(e),
            None => Status::Unset,
        },
        instrumentation_scope: InstrumentationScope::builder("mcptap")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}

fn operation(c: &LlmCall) -> &'static str {
    match c.api {
        Some(Api::GenerateContent) => "generate_content",
        _ => "chat",
    }
}

/// The GenAI attributes of a model call.
fn call_attributes(c: &LlmCall, out: &mut Vec<KeyValue>) {
    let s = |k: &'static str, v: &str| KeyValue::new(k, v.to_string());
    out.push(s("gen_ai.operation.name", operation(c)));
    if let Some(p) = c.provider {
        out.push(s("gen_ai.provider.name", p.otel_name()));
    }
    let known = [
        ("gen_ai.request.model", &c.model),
        ("gen_ai.response.model", &c.response_model),
        ("gen_ai.response.id", &c.response_id),
        ("server.address", &c.server_address),
    ];
    push_known(known, out);
    if let Some(p) = c.server_port {
        out.push(KeyValue::new("server.port", i64::from(p)));
    }
    if c.stream {
        out.push(KeyValue::new("gen_ai.request.stream", true));
    }
    if let Some(f) = &c.finish_reason {
        let reasons = vec![opentelemetry::StringValue::from(f.clone())];
        out.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(reasons.into()),
        ));
    }
    let input = c.provider.and_then(|p| c.usage.total_input(p));
    for (k, v) in [
        ("gen_ai.usage.input_tokens", input),
        ("gen_ai.usage.output_tokens", c.usage.output),
        ("gen_ai.usage.cache_read.input_tokens", c.usage.cache_read),
        ("gen_ai.usage.cache_write.input_tokens", c.usage.cache_write),
        ("gen_ai.usage.reasoning.output_tokens", c.usage.reasoning),
    ] {
        if let Some(v) = v {
            out.push(KeyValue::new(k, v as i64));
        }
    }
    if let Some(t) = c.ttft_ms {
        out.push(KeyValue::new(
            "gen_ai.response.time_to_first_chunk",
            t / 1e3,
        ));
    }
    if let Some(h) = c.http_status {
        out.push(KeyValue::new("http.response.status_code", i64::from(h)));
    }
    if let Some(t) = &c.task {
        out.push(s("mcptap.task.id", t));
    }
    if let Some(t) = c.turn {
        out.push(KeyValue::new("mcptap.task.turn", i64::from(t)));
    }
}

/// A turn's `chat` span, its security findings as events on it, and its tool calls'
/// `execute_tool` spans; none for a call that belongs to no task.
pub fn turn_spans(c: &LlmCall, payloads: bool) -> Vec<SpanData> {
    let (Some(trace), Some(turn)) = (c.facts.trace, c.turn) else {
        return Vec::new();
    };
    let turn_id = span(trace, u64::from(turn));
    let mut attributes = Vec::new();
    call_attributes(c, &mut attributes);
    process_attributes(&c.process, &mut attributes);
    let err = error_type(c);
    if !err.is_empty() {
        attributes.push(KeyValue::new("error.type", err));
    }
    if payloads && let Some(text) = &c.completion {
        attributes.push(KeyValue::new("gen_ai.output.messages", text.clone()));
    }
    let model = c.model.as_deref().unwrap_or("");
    let end = c.ts_ns + (c.duration_ms * 1e6) as u64;
    let mut chat = build(Shape {
        trace,
        id: turn_id,
        parent: span(trace, 0),
        kind: SpanKind::Client,
        name: format!("{} {model}", operation(c)).trim_end().to_string(),
        window: (c.ts_ns, end),
        attributes,
        error: (c.status != LlmStatus::Ok).then(|| err.to_string()),
    });
    for f in &c.findings {
        findings::add(&mut chat, f);
    }
    let mut out = vec![chat];
    for (i, t) in c.tool_calls.iter().enumerate() {
        let mut attributes = vec![
            KeyValue::new("gen_ai.operation.name", "execute_tool"),
            KeyValue::new("gen_ai.tool.name", t.name.clone()),
            KeyValue::new("gen_ai.tool.type", "function"),
        ];
        if let Some(id) = &t.id {
            attributes.push(KeyValue::new("gen_ai.tool.call.id", id.clone()));
        }
        if payloads && let Some(a) = &t.arguments {
            attributes.push(KeyValue::new("gen_ai.tool.call.arguments", a.to_string()));
        }
        process_attributes(&c.process, &mut attributes);
        let error = t.hallucinated.then(|| "tool_not_offered".to_string());
        if let Some(e) = &error {
            attributes.push(KeyValue::new("error.type", e.clone()));
        }
        out.push(build(Shape {
            trace,
            id: span(trace, tool_part(turn, i)),
            parent: turn_id,
            kind: SpanKind::Internal,
            name: format!("execute_tool {}", t.name),
            window: t.window.unwrap_or((end, end)),
            attributes,
            error,
        }));
    }
    out
}

/// A task's `invoke_agent` span, the root of its trace.
pub fn task_span(t: &TaskEnd) -> SpanData {
    let mut attributes = vec![
        KeyValue::new("gen_ai.operation.name", "invoke_agent"),
        KeyValue::new("gen_ai.usage.input_tokens", t.input_tokens as i64),
        KeyValue::new("gen_ai.usage.output_tokens", t.output_tokens as i64),
        KeyValue::new("mcptap.task.id", t.task.clone()),
        KeyValue::new("mcptap.task.outcome", t.outcome),
        KeyValue::new("mcptap.task.turns", i64::from(t.turns)),
    ];
    if let [model] = t.models.as_slice() {
        attributes.push(KeyValue::new("gen_ai.request.model", model.clone()));
    }
    process_attributes(&t.process, &mut attributes);
    let failed = !matches!(t.outcome, "completed" | "abandoned");
    if failed {
        attributes.push(KeyValue::new("error.type", t.outcome));
    }
    build(Shape {
        trace: t.trace,
        id: span(t.trace, 0),
        parent: 0,
        kind: SpanKind::Internal,
        name: "invoke_agent".to_string(),
        window: (t.start_ns, t.start_ns + (t.duration_ms * 1e6) as u64),
        attributes,
        error: failed.then(|| t.outcome.to_string()),
    })
}
