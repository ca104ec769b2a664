//! The agentic layer on made-up model calls and exchanges: threads, tasks, links, signals.

use super::*;
use crate::llm::{Api, CarriedResult, ErrorKind, Provider, Stop, Usage};
use crate::signal::{Endpoint, LlmFacts, LlmToolCall, LlmToolResult, Role, Status, TaskEnd};

const PID: u32 = 42;
const MS: u64 = 1_000_000;

fn joiner() -> Joiner {
    Joiner::new(Config::default(), ClockAnchor::default())
}

/// A model call at `at` ms lasting 10 ms, with these message fingerprints, tool calls asked
/// (name, id, args hash) and results carried (id, flag, message index, bytes).
struct Call {
    at: u64,
    messages: Vec<u64>,
    asks: Vec<(&'static str, &'static str, u64)>,
    carries: Vec<(&'static str, Option<bool>, usize, u64)>,
    offered: Vec<&'static str>,
    usage: Option<(u64, u64)>,
    status: LlmStatus,
    error: Option<ErrorKind>,
}

impl Default for Call {
    fn default() -> Self {
        Call {
            at: 0,
            messages: vec![1],
            asks: Vec::new(),
            carries: Vec::new(),
            offered: vec!["echo", "add"],
            usage: None,
            status: LlmStatus::Ok,
            error: None,
        }
    }
}

fn llm(c: Call) -> Signal {
    let asks = c.asks.iter().map(|(name, id, h)| LlmToolCall {
        id: Some(id.to_string()),
        name: name.to_string(),
        hallucinated: !c.offered.contains(name),
        args_hash: Some(*h),
        ..Default::default()
    });
    let results = c
        .carries
        .iter()
        .map(|(id, flag, msg, bytes)| CarriedResult {
            call_id: Some(id.to_string()),
            is_error: *flag,
            bytes: *bytes,
            message: *msg,
            ..Default::default()
        });
    let results: Vec<CarriedResult> = results.collect();
    Signal::LlmCall(Box::new(LlmCall {
        ts_ns: c.at * MS,
        provider: Some(Provider::Anthropic),
        api: Some(Api::Messages),
        model: Some("m".into()),
        status: c.status,
        error_type: c.error,
        duration_ms: 10.0,
        usage: Usage {
            input: c.usage.map(|u| u.0),
            output: c.usage.map(|u| u.1),
            ..Default::default()
        },
        tools_offered: c.offered.iter().map(|s| s.to_string()).collect(),
        tool_calls: asks.collect(),
        tool_results: results
            .iter()
            .map(|r| LlmToolResult {
                id: r.call_id.clone(),
                is_error: r.is_error,
                ..Default::default()
            })
            .collect(),
        process: Endpoint {
            pid: Some(PID),
            ..Default::default()
        },
        facts: LlmFacts {
            messages: c.messages,
            results,
            stop: if c.asks.is_empty() {
                Stop::EndTurn
            } else {
                Stop::ToolUse
            },
            ..Default::default()
        },
        ..Default::default()
    }))
}

fn mcp(at: u64, tool: &str, args: u64, status: Status, id: u32) -> Signal {
    Signal::Exchange(Exchange {
        ts_ns: at * MS,
        method: "tools/call".into(),
        id: id.to_string(),
        tool: Some(tool.into()),
        status,
        requester: Role::Client,
        timing: crate::signal::Timing {
            duration_ms: Some(1.0),
            ..Default::default()
        },
        session: Some("stdio:42-43".into()),
        trace: crate::signal::TraceContext {
            args_hash: Some(args),
            ..Default::default()
        },
        client: Endpoint {
            pid: Some(PID),
            ..Default::default()
        },
        server: Endpoint {
            pid: Some(43),
            name: Some("srv".into()),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Feed signals in order, then run time forward to `until` ms and finish.
fn drive(j: &mut Joiner, signals: Vec<Signal>, until: u64) -> Vec<Signal> {
    let procs = Processes::default();
    let mut out = Vec::new();
    for s in signals {
        let mut v = vec![s];
        j.take(&mut v, &mut out, &procs);
    }
    j.tick(until * MS, &mut out);
    j.finish(&mut out);
    out
}

fn calls(out: &[Signal]) -> Vec<&LlmCall> {
    out.iter()
        .filter_map(|s| match s {
            Signal::LlmCall(c) => Some(&**c),
            _ => None,
        })
        .collect()
}

fn ends(out: &[Signal]) -> Vec<&TaskEnd> {
    out.iter()
        .filter_map(|s| match s {
            Signal::Event(e) => match &e.what {
                What::TaskEnd(t) => Some(t),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn by_turn<'a>(out: &'a [Signal], task: &str, turn: u32) -> &'a LlmCall {
    calls(out)
        .into_iter()
        .find(|c| c.task.as_deref() == Some(task) && c.turn == Some(turn))
        .unwrap_or_else(|| panic!("no turn {turn} of {task}: {out:#?}"))
}

#[test]
fn a_failing_tool_then_a_recovery_counts_one_error_and_one_self_correction() {
    let mut j = joiner();
    let out = drive(
        &mut j,
        vec![
            llm(Call {
                at: 0,
                messages: vec![1],
                asks: vec![("echo", "t1", 5)],
                usage: Some((100, 10)),
                ..Default::default()
            }),
            mcp(20, "echo", 5, Status::ToolError, 1),
            llm(Call {
                at: 30,
                messages: vec![1, 2, 3],
                carries: vec![("t1", None, 2, 50)],
                asks: vec![("echo", "t2", 6)],
                usage: Some((150, 10)),
                ..Default::default()
            }),
            mcp(50, "echo", 6, Status::Ok, 2),
            llm(Call {
                at: 60,
                messages: vec![1, 2, 3, 4, 5],
                carries: vec![("t2", None, 4, 10)],
                usage: Some((200, 5)),
                ..Default::default()
            }),
        ],
        10_000,
    );
    let t2 = by_turn(&out, "42-1", 2);
    assert_eq!(
        t2.errors_fed_back, 1,
        "the tool error went back to the model"
    );
    assert_eq!(t2.self_corrections, 1, "and its next tool call succeeded");
    assert!(t2.tool_results[0].failed);
    // 150 in, less 100 in and 10 out: 40 tokens for the one new result.
    assert_eq!(t2.tool_results[0].tokens, Some(40));
    let t3 = by_turn(&out, "42-1", 3);
    assert_eq!((t3.errors_fed_back, t3.self_corrections), (0, 0));
    let e = ends(&out);
    assert_eq!(e.len(), 1);
    assert_eq!((e[0].outcome, e[0].turns), ("completed", 3));
    assert_eq!(
        (e[0].errors_fed_back, e[0].self_corrections, e[0].mcp_calls),
        (1, 1, 2)
    );
}

#[test]
fn a_hallucinated_tool_is_never_linked_and_counts_as_an_error_fed_back() {
    let mut j = joiner();
    let out = drive(
        &mut j,
        vec![
            llm(Call {
                asks: vec![("nope", "t1", 1)],
                ..Default::default()
            }),
            llm(Call {
                at: 30,
                messages: vec![1, 2, 3],
                carries: vec![("t1", Some(true), 2, 10)],
                asks: vec![("echo", "t2", 2)],
                ..Default::default()
            }),
            mcp(40, "echo", 2, Status::Ok, 1),
        ],
        10_000,
    );
    let t1 = by_turn(&out, "42-1", 1);
    assert!(t1.tool_calls[0].hallucinated);
    assert!(t1.tool_calls[0].exchange.is_none());
    let t2 = by_turn(&out, "42-1", 2);
    assert_eq!((t2.errors_fed_back, t2.self_corrections), (1, 1));
    assert!(t2.tool_calls[0].exchange.is_some());
    assert_eq!(ends(&out)[0].hallucinations, 1);
}

#[test]
fn interleaved_threads_are_separate_tasks_and_calls_link_by_name_and_arguments() {
    let mut j = joiner();
    let out = drive(
        &mut j,
        vec![
            llm(Call {
                at: 0,
                messages: vec![10],
                asks: vec![("add", "a1", 100)],
                ..Default::default()
            }),
            llm(Call {
                at: 1,
                messages: vec![20],
                asks: vec![("add", "b1", 200)],
                ..Default::default()
            }),
            // The second task's call runs first: the arguments tell them apart.
            mcp(20, "add", 200, Status::Ok, 1),
            mcp(21, "add", 100, Status::Ok, 2),
            llm(Call {
                at: 30,
                messages: vec![20, 21, 22],
                carries: vec![("b1", None, 2, 10)],
                ..Default::default()
            }),
            llm(Call {
                at: 31,
                messages: vec![10, 11, 12],
                carries: vec![("a1", None, 2, 10)],
                ..Default::default()
            }),
        ],
        10_000,
    );
    let a = by_turn(&out, "42-1", 1);
    let b = by_turn(&out, "42-2", 1);
    assert_eq!(a.tool_calls[0].exchange.as_ref().unwrap().id.0, "2");
    assert_eq!(b.tool_calls[0].exchange.as_ref().unwrap().id.0, "1");
    assert_eq!(by_turn(&out, "42-2", 2).turn, Some(2));
    assert_eq!(by_turn(&out, "42-1", 2).turn, Some(2));
    assert_eq!(ends(&out).len(), 2);
}

#[test]
fn prefixed_names_link_and_unrelated_mcp_calls_are_unrequested() {
    let mut j = joiner();
    let out = drive(
        &mut j,
        vec![
            llm(Call {
                asks: vec![("mcp__srv__echo", "t1", 7)],
                offered: vec!["mcp__srv__echo"],
                ..Default::default()
            }),
            mcp(20, "echo", 9, Status::Ok, 1),
            mcp(21, "other", 1, Status::Ok, 2),
        ],
        10_000,
    );
    assert!(calls(&out)[0].tool_calls[0].exchange.is_some());
    assert_eq!(j.stats.unrequested, 1);
}

#[test]
fn a_retry_after_a_rate_limit_is_the_same_task_and_flagged() {
    let mut j = joiner();
    let out = drive(
        &mut j,
        vec![
            llm(Call {
                status: LlmStatus::Error,
                error: Some(ErrorKind::RateLimit),
                ..Default::default()
            }),
            llm(Call {
                at: 20,
                ..Default::default()
            }),
        ],
        10_000,
    );
    let c = calls(&out);
    assert_eq!(c.len(), 2);
    assert!(!c[0].retry && c[1].retry);
    assert_eq!(c[1].task, c[0].task);
    assert_eq!(
        (ends(&out)[0].outcome, ends(&out)[0].turns),
        ("completed", 2)
    );
}

#[test]
fn tasks_end_as_their_last_call_left_them() {
    // A context overflow ends the task at once.
    let mut j = joiner();
    let out = drive(
        &mut j,
        vec![llm(Call {
            status: LlmStatus::Error,
            error: Some(ErrorKind::ContextOverflow),
            ..Default::default()
        })],
        10,
    );
    assert_eq!(ends(&out)[0].outcome, "context_overflow");
    // A cut-off stream, then the process exits.
    let mut j = joiner();
    let procs = Processes::default();
    let mut out = Vec::new();
    let mut v = vec![llm(Call {
        status: LlmStatus::CutOff,
        ..Default::default()
    })];
    j.take(&mut v, &mut out, &procs);
    j.process_exit(PID, 100 * MS);
    j.tick(200 * MS, &mut out);
    assert_eq!(ends(&out)[0].outcome, "cut_off");
    // Tools asked for and nothing after: idle, then abandoned.
    let mut j = Joiner::new(
        Config {
            task_idle_ns: 1_000 * MS,
            ..Config::default()
        },
        ClockAnchor::default(),
    );
    let mut out = Vec::new();
    let mut v = vec![llm(Call {
        asks: vec![("echo", "t1", 1)],
        ..Default::default()
    })];
    j.take(&mut v, &mut out, &procs);
    j.tick(500 * MS, &mut out);
    assert!(ends(&out).is_empty(), "not idle yet");
    j.tick(5_000 * MS, &mut out);
    assert!(
        ends(&out).is_empty(),
        "its tool call may still run for the grace"
    );
    j.tick(8_000 * MS, &mut out);
    assert_eq!(ends(&out)[0].outcome, "abandoned");
    assert!(calls(&out)[0].tool_calls[0].exchange.is_none(), "never ran");
}

#[test]
fn every_table_is_held_to_its_cap() {
    let mut j = Joiner::new(
        Config {
            max_threads: 4,
            max_held: 8,
            ..Config::default()
        },
        ClockAnchor::default(),
    );
    let procs = Processes::default();
    let mut out = Vec::new();
    for i in 0..50u64 {
        let mut v = vec![llm(Call {
            at: i,
            messages: vec![1000 + i],
            asks: vec![("echo", "x", i)],
            ..Default::default()
        })];
        j.take(&mut v, &mut out, &procs);
    }
    let t = j.tables();
    let get = |n: &str| t.iter().find(|s| s.name == n).unwrap();
    assert!(get("agent_threads").len <= 4);
    assert!(get("agent_threads").evicted >= 46);
    assert!(get("agent_held_calls").len <= 8);
    assert!(get("agent_held_calls").evicted > 0);
    j.finish(&mut out);
    assert_eq!(calls(&out).len(), 50, "every record goes out, early or not");
}
