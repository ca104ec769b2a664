//! The agentic layer's metrics: model calls by the OpenTelemetry GenAI conventions
//! (semantic-conventions-genai as of 2026-10, schema `gen-ai-dev/1.42.0-dev`: the
//! `gen_ai.client.inference.*` duration, time to first chunk, the usage counters and the
//! per-operation token histograms), and mcptap's own `mcp_agent_*` for tasks, turns and what
//! the model does with its tools. Prometheus names are the OTLP names translated the usual
//! way (dots to underscores, the unit as a suffix, `_total` on counters).

use super::{Def, Kind, Registry};
use crate::signal::{LlmCall, TaskEnd};

/// GenAI durations, seconds (the conventions' advice).
pub const GENAI_TIME: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// GenAI token counts (the conventions' advice).
pub const GENAI_TOKENS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// Turns per task.
pub const TURNS: &[f64] = &[
    1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0, 128.0,
];

def!(
    INFERENCE_DURATION,
    "gen_ai_client_inference_duration_seconds",
    Kind::Histogram(GENAI_TIME),
    [
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_response_model",
        "server_address",
        "server_port",
        "error_type"
    ],
    "gen_ai.client.inference.duration",
    "s",
    [
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "server.address",
        "server.port",
        "error.type"
    ],
    "Model calls, from the request's first byte to the reply's last, by model and outcome (error_type empty on success; rate_limit, context_overflow, overloaded, auth, invalid_request, server or cut_off otherwise)."
);
def!(
    TIME_TO_FIRST_CHUNK,
    "gen_ai_client_inference_time_to_first_chunk_seconds",
    Kind::Histogram(GENAI_TIME),
    [
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_response_model",
        "server_address",
        "server_port"
    ],
    "gen_ai.client.inference.time_to_first_chunk",
    "s",
    [
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "server.address",
        "server.port"
    ],
    "Streamed model calls: from the request's first byte to the first generated content."
);

macro_rules! usage_counter {
    ($id:ident, $name:literal, $otel:literal, $help:literal) => {
        def!(
            $id,
            $name,
            Kind::Counter,
            [
                "gen_ai_operation_name",
                "gen_ai_provider_name",
                "gen_ai_request_model",
                "gen_ai_response_model",
                "server_address",
                "server_port",
                "gen_ai_token_modality"
            ],
            $otel,
            "{token}",
            [
                "gen_ai.operation.name",
                "gen_ai.provider.name",
                "gen_ai.request.model",
                "gen_ai.response.model",
                "server.address",
                "server.port",
                "gen_ai.token.modality"
            ],
            $help
        );
    };
}

usage_counter!(
    USAGE_INPUT,
    "gen_ai_client_inference_usage_input_tokens_total",
    "gen_ai.client.inference.usage.input_tokens",
    "Input tokens of model calls as the replies reported them, cached ones included (modality unknown: the APIs do not split them)."
);
usage_counter!(
    USAGE_OUTPUT,
    "gen_ai_client_inference_usage_output_tokens_total",
    "gen_ai.client.inference.usage.output_tokens",
    "Output tokens of model calls, reasoning included."
);
usage_counter!(
    USAGE_CACHE_READ,
    "gen_ai_client_inference_usage_cache_read_input_tokens_total",
    "gen_ai.client.inference.usage.cache_read.input_tokens",
    "Input tokens read from the provider's prompt cache."
);
usage_counter!(
    USAGE_CACHE_WRITE,
    "gen_ai_client_inference_usage_cache_write_input_tokens_total",
    "gen_ai.client.inference.usage.cache_write.input_tokens",
    "Input tokens written to the provider's prompt cache."
);
usage_counter!(
    USAGE_REASONING,
    "gen_ai_client_inference_usage_reasoning_output_tokens_total",
    "gen_ai.client.inference.usage.reasoning.output_tokens",
    "Reasoning output tokens."
);
def!(
    OPERATION_INPUT,
    "gen_ai_client_inference_operation_input_tokens",
    Kind::Histogram(GENAI_TOKENS),
    [
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_response_model",
        "server_address",
        "server_port",
        "error_type"
    ],
    "gen_ai.client.inference.operation.input_tokens",
    "{token}",
    [
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "server.address",
        "server.port",
        "error.type"
    ],
    "Input tokens per model call, cached included (0 for a call that reported none)."
);
def!(
    OPERATION_OUTPUT,
    "gen_ai_client_inference_operation_output_tokens",
    Kind::Histogram(GENAI_TOKENS),
    [
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_response_model",
        "server_address",
        "server_port",
        "error_type"
    ],
    "gen_ai.client.inference.operation.output_tokens",
    "{token}",
    [
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "server.address",
        "server.port",
        "error.type"
    ],
    "Output tokens per model call (0 for a call that reported none)."
);
def!(
    TASKS,
    "mcp_agent_tasks_total",
    Kind::Counter,
    ["outcome"],
    "mcp.agent.tasks",
    "{task}",
    ["outcome"],
    "Agent tasks that ended, by outcome: completed, error, max_tokens, context_overflow, cut_off or abandoned."
);
def!(
    TURNS_PER_TASK,
    "mcp_agent_turns",
    Kind::Histogram(TURNS),
    ["outcome"],
    "mcp.agent.turns",
    "{turn}",
    ["outcome"],
    "Model calls per ended task, by outcome."
);
def!(
    TOOL_CALLS_ASKED,
    "mcp_agent_tool_calls_total",
    Kind::Counter,
    ["gen_ai_request_model", "link"],
    "mcp.agent.tool_calls",
    "{call}",
    ["gen_ai.request.model", "link"],
    "Tool calls models asked for, by what became of them: mcp (an MCP tools/call), local (served by the host itself, or never run) or hallucinated (a tool the request did not offer)."
);
def!(
    HALLUCINATIONS,
    "mcp_agent_tool_hallucinations_total",
    Kind::Counter,
    ["gen_ai_request_model"],
    "mcp.agent.tool_hallucinations",
    "{call}",
    ["gen_ai.request.model"],
    "Tool calls naming a tool that the request did not offer."
);
def!(
    ERRORS_FED_BACK,
    "mcp_agent_errors_fed_back_total",
    Kind::Counter,
    ["gen_ai_request_model"],
    "mcp.agent.errors_fed_back",
    "{result}",
    ["gen_ai.request.model"],
    "Tool results carried back to the model that were errors (the API's flag, the MCP exchange's outcome, or an answer to a hallucinated tool)."
);
def!(
    SELF_CORRECTIONS,
    "mcp_agent_self_corrections_total",
    Kind::Counter,
    ["gen_ai_request_model"],
    "mcp.agent.self_corrections",
    "{result}",
    ["gen_ai.request.model"],
    "Errors fed back after which the model's next tool call succeeded."
);
def!(
    RESULT_TOKENS,
    "mcp_agent_tool_result_tokens",
    Kind::Histogram(GENAI_TOKENS),
    ["tool_name", "server"],
    "mcp.agent.tool_result.tokens",
    "{token}",
    ["gen_ai.tool.name", "server"],
    "Input tokens a tool result cost the model: the growth of the prompt from the turn that asked for the tool to the turn that carried its result, less the model's own output, shared among the new results by size (server local for tools the host served)."
);
def!(
    UNREQUESTED,
    "mcp_agent_unrequested_tool_calls_total",
    Kind::Counter,
    [],
    "mcp.agent.unrequested_tool_calls",
    "{call}",
    [],
    "MCP tools/call exchanges of processes that talk to a model that no model tool call asked for."
);

/// The label values every GenAI metric of a call starts with.
fn genai_labels(c: &LlmCall) -> [String; 6] {
    let api = c.api.map_or("chat", |a| match a {
        crate::llm::Api::GenerateContent => "generate_content",
        _ => "chat",
    });
    [
        api.to_string(),
        c.provider.map_or("", |p| p.otel_name()).to_string(),
        c.model.clone().unwrap_or_default(),
        c.response_model.clone().unwrap_or_default(),
        c.server_address.clone().unwrap_or_default(),
        c.server_port.map(|p| p.to_string()).unwrap_or_default(),
    ]
}

/// The error type of a call for the metrics: empty when it succeeded.
pub fn error_type(c: &LlmCall) -> &'static str {
    match (c.error_type, c.status) {
        (Some(e), _) => e.as_str(),
        (None, crate::signal::LlmStatus::CutOff) => "cut_off",
        _ => "",
    }
}

/// The metrics of one model call.
pub fn llm_call(r: &mut Registry, c: &LlmCall) {
    let l = genai_labels(c);
    let base: Vec<&str> = l.iter().map(String::as_str).collect();
    let with = |x: &'static str| {
        let mut v = base.clone();
        v.push(x);
        v
    };
    let err = error_type(c);
    r.observe(&INFERENCE_DURATION, &with(err), c.duration_ms / 1e3);
    if let Some(t) = c.ttft_ms {
        r.observe(&TIME_TO_FIRST_CHUNK, &base, t / 1e3);
    }
    let u = &c.usage;
    let input = c.provider.and_then(|p| u.total_input(p));
    for (def, v) in [
        (&USAGE_INPUT, input),
        (&USAGE_OUTPUT, u.output),
        (&USAGE_CACHE_READ, u.cache_read),
        (&USAGE_CACHE_WRITE, u.cache_write),
        (&USAGE_REASONING, u.reasoning),
    ] {
        if let Some(v) = v {
            r.inc(def, &with("unknown"), v as f64);
        }
    }
    r.observe(&OPERATION_INPUT, &with(err), input.unwrap_or(0) as f64);
    r.observe(&OPERATION_OUTPUT, &with(err), u.output.unwrap_or(0) as f64);
    agentic(r, c);
}

/// What one model call says of the model's way with tools.
fn agentic(r: &mut Registry, c: &LlmCall) {
    let model = c.model.as_deref().unwrap_or("");
    for t in &c.tool_calls {
        let link = if t.hallucinated {
            "hallucinated"
        } else if t.exchange.is_some() {
            "mcp"
        } else {
            "local"
        };
        r.inc(&TOOL_CALLS_ASKED, &[model, link], 1.0);
        if t.hallucinated {
            r.inc(&HALLUCINATIONS, &[model], 1.0);
        }
    }
    if c.errors_fed_back > 0 {
        r.inc(&ERRORS_FED_BACK, &[model], f64::from(c.errors_fed_back));
    }
    if c.self_corrections > 0 {
        r.inc(&SELF_CORRECTIONS, &[model], f64::from(c.self_corrections));
    }
    for res in &c.tool_results {
        if let Some(tokens) = res.tokens {
            let tool = res.tool.as_deref().unwrap_or("unknown");
            let server = res.server.as_deref().unwrap_or("local");
            r.observe(&RESULT_TOKENS, &[tool, server], tokens as f64);
        }
    }
}

/// The metrics of an ended task.
pub fn task_end(r: &mut Registry, t: &TaskEnd) {
    r.inc(&TASKS, &[t.outcome], 1.0);
    r.observe(&TURNS_PER_TASK, &[t.outcome], f64::from(t.turns));
}
