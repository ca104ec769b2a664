//! The agentic layer, end to end: real agent hosts (the Anthropic, OpenAI and Gemini client
//! libraries in a tool-use loop, the `openai-agents` and `pydantic-ai` frameworks, the Node
//! client libraries) talking to the tests' scripted model server (`model_server.py`, the APIs'
//! real wire formats) and to the real MCP fixture server, with mcptap watching the host.
//!
//! Each test checks every model call once against the model server's own log (usage, status,
//! tool calls, tools offered), every link from a tool call to its MCP exchange (both ways:
//! the call names the exchange, the exchange names the task and turn) and to the request that
//! carried its result back, and each signal's exact count (tasks by outcome, turns,
//! hallucinations, errors fed back, self-corrections, tokens per tool).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use mcptap_e2e::agentic::*;
use mcptap_e2e::otlp::{Proto, Receiver, attr_str};
use mcptap_e2e::*;
use serde_json::{Value, json};

/// The records of `pid` once its model calls number `calls` and `tasks` of its tasks have
/// ended (the agent holds a call's record until its links are known).
fn wait_agentic(agent: &Agent, pid: u32, calls: usize, tasks: usize) -> Records {
    let mut last = Records(Vec::new());
    let ok = wait_for(60, || {
        last = Records::read(&agent.jsonl);
        llm_calls(&last, pid).len() >= calls && task_ends(&last, pid).len() >= tasks
    });
    assert!(
        ok,
        "pid {pid}: {} of {calls} model calls, {} of {tasks} task ends after 60 s\n{}",
        llm_calls(&last, pid).len(),
        task_ends(&last, pid).len(),
        agent.log()
    );
    last
}

fn llm_calls(r: &Records, pid: u32) -> Vec<Value> {
    r.kind("llm_call")
        .into_iter()
        .filter(|c| c["process"]["pid"] == pid)
        .cloned()
        .collect()
}

fn task_ends(r: &Records, pid: u32) -> Vec<Value> {
    r.kind("event")
        .into_iter()
        .filter(|e| e["event"] == "task_end" && e["process"]["pid"] == pid)
        .cloned()
        .collect()
}

/// The reply id the model server gives a script's step, per API.
fn reply_id(line: &Value) -> Option<String> {
    let (s, n) = (line["script"].as_str()?, line["step"].as_u64()?);
    Some(match line["api"].as_str()? {
        "messages" => format!("msg_{s}_{n}"),
        "chat_completions" => format!("chatcmpl-{s}-{n}"),
        "responses" => format!("resp_{s}_{n}"),
        _ => format!("gen-{s}-{n}"),
    })
}

/// Each model call paired with the model server's line for it: by reply id where the call
/// has one, the rest by request size in order (a retry sends the same body again).
fn pair(calls: &[Value], log: &[Value]) -> Vec<(Value, Value)> {
    assert_eq!(
        calls.len(),
        log.len(),
        "every request the model server answered is one llm_call, once:\ncalls {calls:#?}\nlog {log:#?}"
    );
    let mut left: Vec<Option<&Value>> = log.iter().map(Some).collect();
    let mut out = Vec::new();
    let mut rest = Vec::new();
    for c in calls {
        let by_id = c["response_id"].as_str().and_then(|id| {
            left.iter()
                .position(|l| l.is_some_and(|l| reply_id(l).as_deref() == Some(id)))
        });
        match by_id {
            Some(i) => out.push((c.clone(), left[i].take().unwrap().clone())),
            None => rest.push(c),
        }
    }
    for c in rest {
        let i = left
            .iter()
            .position(|l| l.is_some_and(|l| l["request_bytes"] == c["request_bytes"]))
            .unwrap_or_else(|| panic!("no model server line for {c}"));
        out.push((c.clone(), left[i].take().unwrap().clone()));
    }
    out
}

/// A model call as the model server saw it: outcome, usage, tool calls, tools offered.
fn check_against_log(call: &Value, line: &Value) {
    let want = match line["outcome"].as_str() {
        Some("ok") => "ok",
        Some("cut") => "cut_off",
        _ => "error",
    };
    assert_eq!(call["status"], want, "{call}\n{line}");
    if want == "error" {
        assert_eq!(call["error_type"], line["error_kind"], "{call}\n{line}");
        assert_eq!(call["http_status"], line["http_status"], "{call}\n{line}");
    }
    if want == "ok" {
        for (k, v) in line["usage"].as_object().into_iter().flatten() {
            if !v.is_null() {
                assert_eq!(&call[k], v, "usage {k}: {call}\n{line}");
            }
        }
        let asked: Vec<(&Value, &Value)> = line["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (&t["id"], &t["name"]))
            .collect();
        let seen: Vec<(&Value, &Value)> = call["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (&t["id"], &t["name"]))
            .collect();
        assert_eq!(seen, asked, "tool calls: {call}\n{line}");
    }
    assert_eq!(
        call["tools_offered"], line["tools_offered"],
        "{call}\n{line}"
    );
    assert_eq!(call["model"], line["model"], "{call}\n{line}");
    assert_eq!(call["stream"], line["stream"], "{call}\n{line}");
    // The results carried for the first time are among those the request carried.
    let carried: BTreeSet<String> = line["tool_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].to_string())
        .collect();
    for r in call["tool_results"].as_array().unwrap() {
        assert!(
            carried.contains(&r["id"].to_string()),
            "{r} not carried: {line}"
        );
    }
}

/// What a test expects of the signals, summed over the driver's tasks.
#[derive(Debug, Default, PartialEq, Eq)]
struct Signals {
    /// Tasks by outcome.
    outcomes: BTreeMap<String, u32>,
    hallucinations: u32,
    errors_fed_back: u32,
    self_corrections: u32,
    /// Tool calls that became MCP exchanges.
    mcp_calls: u32,
}

fn outcomes(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
    list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Every check of one driver's run: each model call against the model server's log, each
/// link both ways, the tokens of single-result turns, the tasks; returns the signals counted.
fn check_run(records: &Records, drive: &Drive, log: &[Value]) -> Signals {
    let pid = drive.pid;
    let calls = llm_calls(records, pid);
    for (call, line) in pair(&calls, log) {
        check_against_log(&call, &line);
    }
    check_links(records, &calls, pid);
    let tokens = check_tokens(&calls, log);
    // Tokens per tool need usage: a Chat Completions stream without include_usage has none.
    if calls.iter().any(|c| c["input_tokens"].is_u64()) {
        assert!(tokens > 0, "no turn gave tokens per tool: {calls:#?}");
    }
    check_tasks(records, &calls, pid)
}

/// Every tool call that became an MCP exchange names it, and the exchange names the task and
/// turn back; every MCP tool call of the driver was asked for by its model.
fn check_links(records: &Records, calls: &[Value], pid: u32) {
    let exchanges: Vec<&Value> = records
        .kind("exchange")
        .into_iter()
        .filter(|x| x["client"]["pid"] == pid && x["method"] == "tools/call")
        .collect();
    let mut linked = BTreeSet::new();
    for c in calls {
        for t in c["tool_calls"].as_array().unwrap() {
            let Some(link) = t["exchange"].as_object() else {
                continue;
            };
            assert_eq!(t["hallucinated"], false, "{t}");
            let x = exchanges
                .iter()
                .find(|x| x["session"] == link["session"] && x["id"] == link["id"])
                .unwrap_or_else(|| panic!("no exchange {link:?} for {t}"));
            assert_eq!(x["tool"], t["name"], "{t}\n{x}");
            assert_eq!(x["task"], c["task"], "{x}\n{c}");
            assert_eq!(x["turn"], c["turn"], "{x}\n{c}");
            assert!(linked.insert((x["session"].to_string(), x["id"].to_string())));
        }
    }
    assert_eq!(
        linked.len(),
        exchanges.len(),
        "every MCP tool call of {pid} was a model's, linked once: {exchanges:#?}"
    );
}

/// A turn that carries exactly one result for the first time: the result's tokens are the
/// prompt's growth since the turn that asked for the tool, less that turn's output, as the
/// model server reported them. Returns how many turns were checked.
fn check_tokens(calls: &[Value], log: &[Value]) -> usize {
    let input = |l: &Value| {
        let u = &l["usage"];
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        if l["api"] == "messages" {
            n("input_tokens") + n("cache_read_tokens") + n("cache_write_tokens")
        } else {
            n("input_tokens")
        }
    };
    let by_tool_id: BTreeMap<&str, &Value> = log
        .iter()
        .flat_map(|l| {
            l["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (t["id"].as_str().unwrap_or(""), l))
        })
        .collect();
    let mut checked = 0;
    for c in calls {
        let results = c["tool_results"].as_array().unwrap();
        let [r] = results.as_slice() else { continue };
        let (Some(tokens), Some(asker)) = (
            r["tokens"].as_u64(),
            r["id"].as_str().and_then(|id| by_tool_id.get(id)),
        ) else {
            continue;
        };
        let now = c["input_tokens"].as_u64().unwrap_or(0)
            + c["cache_read_tokens"]
                .as_u64()
                .filter(|_| c["provider"] == "anthropic")
                .unwrap_or(0)
            + c["cache_write_tokens"]
                .as_u64()
                .filter(|_| c["provider"] == "anthropic")
                .unwrap_or(0);
        let before = input(asker) + asker["usage"]["output_tokens"].as_u64().unwrap_or(0);
        assert_eq!(tokens, now.saturating_sub(before), "{c}\nasked by {asker}");
        checked += 1;
    }
    checked
}

/// Tasks: each call's task ends once, with the turns it had; returns the signals counted.
fn check_tasks(records: &Records, calls: &[Value], pid: u32) -> Signals {
    let ends = task_ends(records, pid);
    let mut turns: BTreeMap<&str, u64> = BTreeMap::new();
    for c in calls {
        let task = c["task"].as_str().expect("every call has a task");
        let turn = c["turn"].as_u64().expect("and a turn");
        let n = turns.entry(task).or_default();
        *n = (*n).max(turn);
    }
    assert_eq!(ends.len(), turns.len(), "one task_end per task: {ends:#?}");
    let mut s = Signals::default();
    for e in &ends {
        let task = e["task"].as_str().unwrap();
        assert_eq!(e["turns"].as_u64(), turns.get(task).copied(), "{e}");
        *s.outcomes
            .entry(e["outcome"].as_str().unwrap().to_string())
            .or_default() += 1;
        let n = |k: &str| e[k].as_u64().unwrap() as u32;
        s.hallucinations += n("hallucinations");
        s.errors_fed_back += n("errors_fed_back");
        s.self_corrections += n("self_corrections");
        s.mcp_calls += n("mcp_calls");
    }
    // The per-call counts add up to the tasks'.
    let sum = |k: &str| -> u32 {
        calls
            .iter()
            .map(|c| c[k].as_u64().unwrap_or(0) as u32)
            .sum()
    };
    assert_eq!(sum("errors_fed_back"), s.errors_fed_back);
    assert_eq!(sum("self_corrections"), s.self_corrections);
    s
}

/// Tool calls the driver says went to MCP (or not) are linked (or not), by tool call id.
fn check_driver_view(records: &Records, d: &Drive) {
    let calls = llm_calls(records, d.pid);
    let by_id: BTreeMap<&str, &Value> = calls
        .iter()
        .flat_map(|c| c["tool_calls"].as_array().unwrap())
        .filter_map(|t| Some((t["id"].as_str()?, t)))
        .collect();
    let mut checked = 0;
    for task in d.out["tasks"].as_array().unwrap() {
        for t in task["tool_calls"].as_array().into_iter().flatten() {
            let Some(id) = t["id"].as_str() else { continue };
            let mine = by_id
                .get(id)
                .unwrap_or_else(|| panic!("tool call {id} not in any llm_call"));
            assert_eq!(
                mine["exchange"].is_object(),
                t["mcp"] == true,
                "{t} vs {mine}"
            );
            checked += 1;
        }
    }
    // A driver whose report named no tool call would make this check pass on nothing.
    assert!(checked > 0, "the driver reported no tool calls: {}", d.out);
}

/// The Anthropic client library's tool loop, streamed, over stdio MCP: one process runs four
/// interleaved tasks: tools with a failure and a hallucination on the way, a rate-limited
/// start, a stream cut off mid-answer, and a context that does not fit. The spans make one
/// trace per task, and the metrics count what the records say.
#[test]
fn anthropic_tool_loop_four_interleaved_tasks() {
    let dir = scratch("agent_anthropic");
    let receiver = Receiver::start(Proto::Http);
    let agent = Agent::start_with_env(
        &dir,
        &["--otlp-endpoint", &receiver.endpoint()],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "500")],
    );
    let model = Model::start(
        &dir,
        json!({
            "a": [
                {"tools": [{"name": "add", "arguments": {"a": 2, "b": 3}}]},
                {"tools": [{"name": "fail", "arguments": {"message": "x"}},
                           {"name": "echo", "arguments": {"text": "hi"}}]},
                {"tools": [{"name": "nope", "arguments": {}}]},
                {"tools": [{"name": "echo", "arguments": {"text": "ok"}}]},
                {"text": "done"}
            ],
            "b": [
                {"error": 429, "retry_after": 0},
                {"tools": [{"name": "echo", "arguments": {"text": "b"}}]},
                {"text": "b done"}
            ],
            "c": [
                {"tools": [{"name": "whoami", "arguments": {}}]},
                {"cut": true, "text": "partial answer"}
            ],
            "d": [{"error": "context_overflow"}]
        }),
        None,
    );
    let d = drive(
        &mut agent_loop(
            &model,
            &["--api", "messages", "--stream"],
            &[
                "script:a add",
                "script:b echo",
                "script:c who",
                "script:d big",
            ],
        ),
        &dir,
        "agent_loop",
    );
    // a: 5 calls; b: the 429, its retry, 1 more; c: 2; d: 1 (the client library does not
    // retry a 400).
    let records = wait_agentic(&agent, d.pid, 11, 4);
    let s = check_run(&records, &d, &model.log());
    check_driver_view(&records, &d);
    assert_eq!(
        s,
        Signals {
            outcomes: outcomes(&[("completed", 2), ("context_overflow", 1), ("cut_off", 1)]),
            hallucinations: 1,
            // The failed `fail` (turn 3 of a) and the hallucinated `nope` (turn 4).
            errors_fed_back: 2,
            // After `nope`, the next tool call (echo) succeeded; after `fail`, the next one
            // was the hallucination.
            self_corrections: 1,
            // add, fail, echo, echo (a); echo (b); whoami (c).
            mcp_calls: 6,
        }
    );
    let calls = llm_calls(&records, d.pid);
    let retried: Vec<&Value> = calls.iter().filter(|c| c["retry"] == true).collect();
    assert_eq!(retried.len(), 1, "the call after the 429 is a retry");
    let limited = calls
        .iter()
        .find(|c| c["error_type"] == "rate_limit")
        .unwrap();
    assert_eq!(limited["retry_after_s"], 0);
    assert_eq!(limited["task"], retried[0]["task"]);
    for c in &calls {
        if c["status"] == "ok" {
            assert!(c["ttft_ms"].as_f64().unwrap() <= c["duration_ms"].as_f64().unwrap());
        }
        assert_eq!(c["provider"], "anthropic");
        assert_eq!(c["api"], "messages");
    }
    check_agent_metrics(&agent, &s);
    check_agent_spans(&receiver, &records, d.pid);
    let records = agent.stop();
    // Without --payloads, no prompt, completion or tool text leaves the host.
    let all: String = records.0.iter().map(|r| r.to_string()).collect();
    for text in ["script:a add", "script:c who", "partial answer", "b done"] {
        assert!(!all.contains(text), "{text:?} in the outputs");
    }
}

/// The metrics say what the records say (nothing else on this host talks to a model).
fn check_agent_metrics(agent: &Agent, s: &Signals) {
    let m = |name: &str, labels: &[(&str, &str)], want: f64| {
        let ok = wait_for(30, || {
            prom_value(&agent.metrics(), name, labels).is_some_and(|v| v >= want)
        });
        let got = prom_value(&agent.metrics(), name, labels);
        assert!(
            ok && got == Some(want),
            "{name}{labels:?}: {got:?}, want {want}"
        );
    };
    for (outcome, n) in &s.outcomes {
        m("mcp_agent_tasks_total", &[("outcome", outcome)], *n as f64);
    }
    m(
        "mcp_agent_tool_hallucinations_total",
        &[],
        s.hallucinations as f64,
    );
    m(
        "mcp_agent_errors_fed_back_total",
        &[],
        s.errors_fed_back as f64,
    );
    m(
        "mcp_agent_self_corrections_total",
        &[],
        s.self_corrections as f64,
    );
    m(
        "mcp_agent_tool_calls_total",
        &[("link", "mcp")],
        s.mcp_calls as f64,
    );
    let metrics = agent.metrics();
    for name in [
        "gen_ai_client_inference_duration_seconds_count",
        "gen_ai_client_inference_time_to_first_chunk_seconds_count",
        "gen_ai_client_inference_usage_input_tokens_total",
        "gen_ai_client_inference_operation_output_tokens_count",
        "mcp_agent_turns_count",
        "mcp_agent_tool_result_tokens_count",
    ] {
        assert!(
            prom_value(&metrics, name, &[]).is_some_and(|v| v > 0.0),
            "{name}"
        );
    }
}

/// One trace per task: `invoke_agent` at the root, its turns `chat {model}` under it, each
/// tool call `execute_tool {tool}` under its turn, and the MCP exchange's CLIENT span under
/// that.
fn check_agent_spans(receiver: &Receiver, records: &Records, pid: u32) {
    let calls = llm_calls(records, pid);
    let linked = calls
        .iter()
        .flat_map(|c| c["tool_calls"].as_array().unwrap())
        .filter(|t| t["exchange"].is_object())
        .count();
    let spans = |name: &str| -> Vec<_> {
        receiver
            .spans()
            .into_iter()
            .filter(|(_, s)| attr_str(&s.attributes, "process.pid") == Some(pid.to_string()))
            .filter(|(_, s)| s.name.starts_with(name))
            .map(|(_, s)| s)
            .collect()
    };
    // Spans leave in batches: wait for every one this check counts.
    let ends = task_ends(records, pid).len();
    assert!(
        receiver.wait(30, |_| {
            spans("tools/call").len() >= linked
                && spans("invoke_agent").len() >= ends
                && spans("chat ").len() >= calls.len()
        }),
        "spans: {} MCP of {linked}, {} tasks of {ends}, {} turns of {}",
        spans("tools/call").len(),
        spans("invoke_agent").len(),
        spans("chat ").len(),
        calls.len()
    );
    let tasks = spans("invoke_agent");
    let turns = spans("chat ");
    let tools = spans("execute_tool ");
    let mcp = spans("tools/call");
    assert_eq!(tasks.len(), ends);
    assert_eq!(turns.len(), calls.len());
    for t in &turns {
        let task = tasks.iter().find(|k| k.span_id == t.parent_span_id);
        let task = task.unwrap_or_else(|| panic!("turn {} has no task span", t.name));
        assert_eq!(task.trace_id, t.trace_id);
        assert_eq!(
            attr_str(&t.attributes, "gen_ai.provider.name").as_deref(),
            Some("anthropic")
        );
    }
    for t in &tools {
        assert!(
            turns.iter().any(|c| c.span_id == t.parent_span_id),
            "{}",
            t.name
        );
    }
    for x in mcp.iter().filter(|x| x.kind == 3) {
        let tool = tools.iter().find(|t| t.span_id == x.parent_span_id);
        let tool = tool.unwrap_or_else(|| panic!("MCP span {} not under a tool call", x.name));
        assert_eq!(tool.trace_id, x.trace_id);
        assert_eq!(
            tool.name.strip_prefix("execute_tool "),
            x.name.strip_prefix("tools/call ")
        );
    }
}

/// The OpenAI client libraries, Python and Node, on Chat Completions streamed with usage:
/// parallel tool calls, a failing tool then a recovery, a hallucinated tool. Chat
/// Completions carries no error flag on a tool result: the errors fed back are the MCP
/// exchange's outcome and the hallucination.
#[test]
fn openai_chat_completions_python_and_node() {
    let dir = scratch("agent_openai_chat");
    let agent = Agent::start(&dir, &[]);
    let par = json!([
        {"tools": [{"name": "add", "arguments": {"a": 1, "b": 2}},
                   {"name": "echo", "arguments": {"text": "x"}}]},
        {"text": "both done"}
    ]);
    let fix = json!([
        {"tools": [{"name": "fail", "arguments": {"message": "boom"}}]},
        {"tools": [{"name": "made_up", "arguments": {}}]},
        {"tools": [{"name": "add", "arguments": {"a": 5, "b": 5}}]},
        {"text": "fixed"}
    ]);
    let scripts = json!({"pypar": par, "pyfix": fix, "jspar": par, "jsfix": fix});
    let model = Model::start(&dir, scripts, None);
    let py = drive(
        &mut agent_loop(
            &model,
            &["--api", "chat", "--stream"],
            &["script:pypar", "script:pyfix"],
        ),
        &dir,
        "agent_loop",
    );
    let js = drive(
        &mut node_agent(
            &model,
            &["--api", "chat", "--stream"],
            &["script:jspar", "script:jsfix"],
        ),
        &dir,
        "node_agent",
    );
    let records_py = wait_agentic(&agent, py.pid, 6, 2);
    let records = wait_agentic(&agent, js.pid, 6, 2);
    let log = model.log();
    let (log_py, log_js): (Vec<Value>, Vec<Value>) = log
        .into_iter()
        .partition(|l| l["script"].as_str().is_some_and(|s| s.starts_with("py")));
    let want = Signals {
        outcomes: outcomes(&[("completed", 2)]),
        hallucinations: 1,
        // fail (its exchange ended in a tool error: Chat Completions has no flag) and made_up.
        errors_fed_back: 2,
        // After made_up, add succeeded; after fail, the next call was made_up.
        self_corrections: 1,
        mcp_calls: 4,
    };
    for (d, log) in [(&py, &log_py), (&js, &log_js)] {
        let r = if d.pid == py.pid {
            &records_py
        } else {
            &records
        };
        assert_eq!(check_run(r, d, log), want, "pid {}", d.pid);
        check_driver_view(r, d);
        for c in llm_calls(r, d.pid) {
            assert_eq!(
                (c["provider"].as_str(), c["api"].as_str()),
                (Some("openai"), Some("chat_completions"))
            );
            for res in c["tool_results"].as_array().unwrap() {
                assert!(res["is_error"].is_null(), "no flag to read: {res}");
            }
        }
    }
    agent.stop();
}

/// Gemini (non-streamed, function calls with ids) and the Responses API streamed and
/// stateful (`previous_response_id`: each request holds only what is new).
#[test]
fn gemini_and_stateful_responses() {
    let dir = scratch("agent_gemini_responses");
    let agent = Agent::start(&dir, &[]);
    let model = Model::start(
        &dir,
        json!({
            "gem": [
                {"tools": [{"name": "add", "arguments": {"a": 2, "b": 2}}]},
                {"tools": [{"name": "echo", "arguments": {"text": "g"}}]},
                {"text": "gemini done", "stop": "max_tokens"}
            ],
            // A stateful request holds only what is new: the model server's usage (by request
            // size) would not grow as a real one does, so it is scripted.
            "resp": [
                {"tools": [{"name": "add", "arguments": {"a": 3, "b": 4}}],
                 "usage": {"input": 1000, "output": 10}},
                {"tools": [{"name": "fail", "arguments": {"message": "no"}}],
                 "usage": {"input": 1100, "output": 10}},
                {"tools": [{"name": "echo", "arguments": {"text": "r"}}],
                 "usage": {"input": 1200, "output": 10}},
                {"text": "responses done", "usage": {"input": 1300, "output": 5}}
            ]
        }),
        None,
    );
    let gem = drive(
        &mut agent_loop(&model, &["--api", "gemini"], &["script:gem"]),
        &dir,
        "gemini",
    );
    let resp = drive(
        &mut agent_loop(
            &model,
            &["--api", "responses", "--stream", "--stateful"],
            &["script:resp"],
        ),
        &dir,
        "responses",
    );
    let rg = wait_agentic(&agent, gem.pid, 3, 1);
    let rr = wait_agentic(&agent, resp.pid, 4, 1);
    let log = model.log();
    let (lg, lr): (Vec<Value>, Vec<Value>) = log.into_iter().partition(|l| l["script"] == "gem");
    assert_eq!(
        check_run(&rg, &gem, &lg),
        Signals {
            outcomes: outcomes(&[("max_tokens", 1)]),
            mcp_calls: 2,
            ..Default::default()
        }
    );
    assert_eq!(
        check_run(&rr, &resp, &lr),
        Signals {
            outcomes: outcomes(&[("completed", 1)]),
            errors_fed_back: 1,
            self_corrections: 1,
            mcp_calls: 3,
            ..Default::default()
        }
    );
    for c in llm_calls(&rr, resp.pid).iter().skip(1) {
        assert_eq!(
            c["tool_results"].as_array().unwrap().len(),
            1,
            "stateful: only the new result: {c}"
        );
    }
    for c in llm_calls(&rg, gem.pid) {
        assert_eq!(
            (c["provider"].as_str(), c["api"].as_str()),
            (Some("gemini"), Some("generate_content"))
        );
    }
    agent.stop();
}

/// openai-agents over stdio MCP (Responses, the SDK's default) and over Streamable HTTP MCP
/// (Chat Completions, streamed), with a hallucinated tool returned to the model as an error.
#[test]
fn openai_agents_over_stdio_and_streamable_http() {
    let dir = scratch("agent_openai_agents");
    let agent = Agent::start(&dir, &[]);
    let mcp_port = port();
    let mut c = Command::new(venv_python("mcp1"));
    c.arg(fixtures().join("py_server.py")).args([
        "--transport",
        "http",
        "--port",
        &mcp_port.to_string(),
    ]);
    let _mcp = Server::on_port(&mut c, &dir, "mcp_http", mcp_port);
    let model = Model::start(
        &dir,
        json!({
            "stdio": [
                {"tools": [{"name": "add", "arguments": {"a": 1, "b": 1}},
                           {"name": "echo", "arguments": {"text": "s"}}]},
                {"tools": [{"name": "ghost", "arguments": {}}]},
                {"tools": [{"name": "echo", "arguments": {"text": "t"}}]},
                {"text": "stdio done"}
            ],
            "http": [
                {"tools": [{"name": "fail", "arguments": {"message": "h"}}]},
                {"tools": [{"name": "add", "arguments": {"a": 9, "b": 1}}]},
                {"text": "http done"}
            ]
        }),
        None,
    );
    let stdio = drive(
        &mut framework(
            &model,
            "openai-agents",
            &["--mcp-stdio", &mcp_stdio(), "--tool-not-found", "return"],
            &["script:stdio"],
        ),
        &dir,
        "openai_agents_stdio",
    );
    let url = format!("http://127.0.0.1:{mcp_port}/mcp");
    let http = drive(
        &mut framework(
            &model,
            "openai-agents",
            &["--mcp-http", &url, "--api", "chat", "--stream"],
            &["script:http"],
        ),
        &dir,
        "openai_agents_http",
    );
    let rs = wait_agentic(&agent, stdio.pid, 4, 1);
    let rh = wait_agentic(&agent, http.pid, 3, 1);
    let log = model.log();
    let (ls, lh): (Vec<Value>, Vec<Value>) = log.into_iter().partition(|l| l["script"] == "stdio");
    assert_eq!(
        check_run(&rs, &stdio, &ls),
        Signals {
            outcomes: outcomes(&[("completed", 1)]),
            hallucinations: 1,
            errors_fed_back: 1,
            self_corrections: 1,
            mcp_calls: 3,
        }
    );
    assert_eq!(
        check_run(&rh, &http, &lh),
        Signals {
            outcomes: outcomes(&[("completed", 1)]),
            errors_fed_back: 1,
            self_corrections: 1,
            mcp_calls: 2,
            ..Default::default()
        }
    );
    let xs = rh.exchanges_of_client(http.pid);
    assert!(
        xs.iter()
            .any(|x| x["transport"] == "http" && x["task"].is_string())
    );
    agent.stop();
}

/// pydantic-ai (Anthropic provider, streamed) with its MCP toolset: the unknown tool goes
/// back to the model flagged as an error, and so does the failing tool.
#[test]
fn pydantic_ai_with_an_mcp_server() {
    let dir = scratch("agent_pydantic_ai");
    let agent = Agent::start(&dir, &[]);
    let model = Model::start(
        &dir,
        json!({
            "pai": [
                {"tools": [{"name": "echo", "arguments": {"text": "p"}}]},
                {"tools": [{"name": "fail", "arguments": {"message": "p"}}]},
                {"tools": [{"name": "unheard_of", "arguments": {}}]},
                {"tools": [{"name": "add", "arguments": {"a": 4, "b": 4}}]},
                {"text": "pydantic done"}
            ]
        }),
        None,
    );
    let d = drive(
        &mut framework(
            &model,
            "pydantic-ai",
            &["--mcp-stdio", &mcp_stdio(), "--stream", "--retries", "3"],
            &["script:pai"],
        ),
        &dir,
        "pydantic_ai",
    );
    let r = wait_agentic(&agent, d.pid, 5, 1);
    assert_eq!(
        check_run(&r, &d, &model.log()),
        Signals {
            outcomes: outcomes(&[("completed", 1)]),
            hallucinations: 1,
            errors_fed_back: 2,
            self_corrections: 1,
            mcp_calls: 3,
        }
    );
    let flagged: Vec<Value> = llm_calls(&r, d.pid)
        .iter()
        .flat_map(|c| c["tool_results"].as_array().unwrap().clone())
        .filter(|t| t["is_error"] == true)
        .collect();
    assert_eq!(flagged.len(), 2, "Anthropic's flag on both: {flagged:#?}");
    agent.stop();
}

/// A model over HTTPS: the client library's TLS (OpenSSL) is read by the uprobes, and the
/// calls, links and tasks are the same as over plain HTTP.
#[test]
fn a_model_over_https() {
    let dir = scratch("agent_https");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success());
    let agent = Agent::start(&dir, &[]);
    let model = Model::start(
        &dir,
        json!({
            "tls": [
                {"tools": [{"name": "add", "arguments": {"a": 6, "b": 7}}]},
                {"tools": [{"name": "echo", "arguments": {"text": "secure"}}]},
                {"text": "tls done"}
            ]
        }),
        Some((&cert, &key)),
    );
    let d = drive(
        &mut agent_loop(
            &model,
            &[
                "--api",
                "messages",
                "--stream",
                "--ca",
                cert.to_str().unwrap(),
            ],
            &["script:tls"],
        ),
        &dir,
        "agent_loop",
    );
    let r = wait_agentic(&agent, d.pid, 3, 1);
    assert_eq!(
        check_run(&r, &d, &model.log()),
        Signals {
            outcomes: outcomes(&[("completed", 1)]),
            mcp_calls: 2,
            ..Default::default()
        }
    );
    for c in llm_calls(&r, d.pid) {
        assert_eq!(c["tls"], true, "{c}");
    }
    agent.stop();
}

/// The Anthropic client library for Node (Messages, not streamed): parallel tool calls, a
/// failing tool flagged `is_error` and a recovery.
#[test]
fn anthropic_node_messages() {
    let dir = scratch("agent_anthropic_node");
    let agent = Agent::start(&dir, &[]);
    let model = Model::start(
        &dir,
        json!({
            "nm": [
                {"tools": [{"name": "add", "arguments": {"a": 1, "b": 1}},
                           {"name": "fail", "arguments": {"message": "n"}}]},
                {"tools": [{"name": "echo", "arguments": {"text": "n"}}]},
                {"text": "node done"}
            ]
        }),
        None,
    );
    let d = drive(
        &mut node_agent(&model, &["--api", "messages"], &["script:nm"]),
        &dir,
        "node_agent",
    );
    let r = wait_agentic(&agent, d.pid, 3, 1);
    assert_eq!(
        check_run(&r, &d, &model.log()),
        Signals {
            outcomes: outcomes(&[("completed", 1)]),
            errors_fed_back: 1,
            self_corrections: 1,
            mcp_calls: 3,
            ..Default::default()
        }
    );
    check_driver_view(&r, &d);
    let second = &llm_calls(&r, d.pid)[1];
    let flags: Vec<&Value> = second["tool_results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["is_error"])
        .collect();
    assert_eq!(flags, [&json!(false), &json!(true)], "{second}");
    agent.stop();
}
