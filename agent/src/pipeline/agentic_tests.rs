//! The agentic layer through every stage: a process that talks to a model over HTTP and to
//! an MCP server over stdio, as synthetic kernel records.

use super::*;
use crate::capture::encode_record;
use crate::capture::host::FixedHost;
use crate::signal::{LlmCall, LlmStatus, Status, TaskEnd};
use mcptap_abi::{DIR_IN, DIR_OUT, EventHeader, FD_PIPE, RECORD_DATA};

const AGENT: u32 = 100;
const SERVER: u32 = 200;
const MODEL: u32 = 300;
const REQ_PIPE: u64 = 1;
const RESP_PIPE: u64 = 2;
const SOCK: u64 = 77;
const MODEL_SOCK: u64 = 78;

fn rec(tgid: u32, fd: i32, dir: u8, inode: u64, t: (u64, u64), data: &[u8], kind: u8) -> Vec<u8> {
    encode_record(
        &EventHeader {
            record: RECORD_DATA,
            dir,
            fd_kind: kind,
            tgid,
            tid: tgid,
            fd,
            ts_enter_ns: t.0,
            ts_exit_ns: t.1,
            inode,
            total: data.len() as u64,
            ..Default::default()
        },
        data,
    )
}

fn pipe(tgid: u32, fd: i32, dir: u8, inode: u64, t: (u64, u64), data: &[u8]) -> Vec<u8> {
    rec(tgid, fd, dir, inode, t, data, FD_PIPE)
}

fn tcp(tgid: u32, fd: i32, dir: u8, inode: u64, t: (u64, u64), data: &[u8]) -> Vec<u8> {
    rec(tgid, fd, dir, inode, t, data, mcptap_abi::FD_TCP)
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: model\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn reply(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

const TOOLS: &str = r#"[{"name":"echo","description":"Echo","input_schema":{"type":"object"}}]"#;

fn turn1() -> String {
    format!(
        r#"{{"model":"claude-x","max_tokens":100,"tools":{TOOLS},"messages":[{{"role":"user","content":"say hi"}}]}}"#
    )
}

const REPLY1: &str = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x-1","content":[{"type":"tool_use","id":"toolu_1","name":"echo","input":{"text":"hi"}}],"stop_reason":"tool_use","usage":{"input_tokens":100,"output_tokens":20}}"#;

fn turn2() -> String {
    format!(
        r#"{{"model":"claude-x","max_tokens":100,"tools":{TOOLS},"messages":[{{"role":"user","content":"say hi"}},{{"role":"assistant","content":[{{"type":"tool_use","id":"toolu_1","name":"echo","input":{{"text":"hi"}}}}]}},{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"toolu_1","content":"hi"}}]}}]}}"#
    )
}

const REPLY2: &str = r#"{"id":"msg_2","type":"message","role":"assistant","model":"claude-x-1","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":160,"output_tokens":5}}"#;

const MCP_REQ: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}}\n";
const MCP_RESP: &[u8] =
    b"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}}\n";

/// Turn 1 asks for `echo`, the agent calls it over MCP, turn 2 carries the result back and
/// answers. Both the agent's and the model server's views are in the records.
fn conversation() -> Vec<Vec<u8>> {
    let ms = 1_000_000;
    vec![
        tcp(
            AGENT,
            9,
            DIR_OUT,
            SOCK,
            (10 * ms, 11 * ms),
            &post("/v1/messages", &turn1()),
        ),
        tcp(
            MODEL,
            4,
            DIR_IN,
            MODEL_SOCK,
            (10 * ms, 11 * ms),
            &post("/v1/messages", &turn1()),
        ),
        tcp(
            MODEL,
            4,
            DIR_OUT,
            MODEL_SOCK,
            (19 * ms, 20 * ms),
            &reply(200, REPLY1),
        ),
        tcp(
            AGENT,
            9,
            DIR_IN,
            SOCK,
            (11 * ms, 20 * ms),
            &reply(200, REPLY1),
        ),
        pipe(AGENT, 5, DIR_OUT, REQ_PIPE, (21 * ms, 22 * ms), MCP_REQ),
        pipe(SERVER, 0, DIR_IN, REQ_PIPE, (20 * ms, 22 * ms), MCP_REQ),
        pipe(SERVER, 1, DIR_OUT, RESP_PIPE, (23 * ms, 24 * ms), MCP_RESP),
        pipe(AGENT, 6, DIR_IN, RESP_PIPE, (22 * ms, 24 * ms), MCP_RESP),
        tcp(
            AGENT,
            9,
            DIR_OUT,
            SOCK,
            (25 * ms, 26 * ms),
            &post("/v1/messages", &turn2()),
        ),
        tcp(
            AGENT,
            9,
            DIR_IN,
            SOCK,
            (26 * ms, 40 * ms),
            &reply(200, REPLY2),
        ),
    ]
}

fn run(records: &[Vec<u8>]) -> Vec<Signal> {
    let mut host = FixedHost::stdio_pair(AGENT, SERVER, REQ_PIPE, RESP_PIPE);
    let mut p = Pipeline::new(PipelineConfig::default());
    for r in records {
        p.ingest(&mut host, r);
    }
    p.finish(60_000_000_000, 0);
    p.drain_signals().collect()
}

fn calls(s: &[Signal]) -> Vec<&LlmCall> {
    s.iter()
        .filter_map(|s| match s {
            Signal::LlmCall(c) => Some(&**c),
            _ => None,
        })
        .collect()
}

fn task_ends(s: &[Signal]) -> Vec<&TaskEnd> {
    s.iter()
        .filter_map(|s| match s {
            Signal::Event(e) => match &e.what {
                What::TaskEnd(t) => Some(t),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn a_tool_call_links_the_model_turn_the_mcp_exchange_and_the_next_turn() {
    let out = run(&conversation());
    let calls = calls(&out);
    assert_eq!(calls.len(), 2, "{out:#?}");
    let (t1, t2) = (calls[0], calls[1]);
    assert_eq!(
        t1.process.pid,
        Some(AGENT),
        "the model server's view is not a call"
    );
    assert_eq!((t1.task.as_deref(), t1.turn), (Some("100-1"), Some(1)));
    assert_eq!((t2.task.as_deref(), t2.turn), (Some("100-1"), Some(2)));
    assert_eq!(t1.status, LlmStatus::Ok);
    assert_eq!(t1.usage.input, Some(100));
    assert_eq!(t1.tools_offered, ["echo"]);
    let tc = &t1.tool_calls[0];
    assert_eq!(
        (tc.name.as_str(), tc.id.as_deref()),
        ("echo", Some("toolu_1"))
    );
    assert!(!tc.hallucinated);
    let link = tc.exchange.as_ref().expect("linked to the MCP call");
    assert_eq!(link.id.0, "7");
    assert_eq!(link.session.as_deref(), Some("stdio:100-200"));
    let x = out
        .iter()
        .find_map(|s| match s {
            Signal::Exchange(x) => Some(x),
            _ => None,
        })
        .expect("the exchange");
    assert_eq!(x.status, Status::Ok);
    assert_eq!(
        (x.agent.task.as_deref(), x.agent.turn),
        (Some("100-1"), Some(1))
    );
    assert!(x.trace.agent_parent.is_some());
    let r = &t2.tool_results[0];
    assert_eq!(
        (r.id.as_deref(), r.is_error, r.failed),
        (Some("toolu_1"), Some(false), false)
    );
    assert_eq!(r.tool.as_deref(), Some("echo"));
    // 160 in now, 100 in and 20 out before: the result cost 40 tokens.
    assert_eq!(r.tokens, Some(40));
    let ends = task_ends(&out);
    assert_eq!(ends.len(), 1);
    assert_eq!((ends[0].outcome, ends[0].turns), ("completed", 2));
    assert_eq!((ends[0].tool_calls, ends[0].mcp_calls), (1, 1));
    assert_eq!((ends[0].input_tokens, ends[0].output_tokens), (260, 25));
}

/// With `--payloads` the record carries the last message's text and the completion, secrets
/// redacted; without, neither.
#[test]
fn payloads_are_opt_in_and_redacted() {
    let key = "sk-proj-Abc123Def456Ghi789Jkl012Mno345";
    let body = format!(
        r#"{{"model":"claude-x","max_tokens":10,"messages":[{{"role":"user","content":"my key is {key}"}}]}}"#
    );
    let answer = format!(
        r#"{{"id":"msg_9","type":"message","model":"claude-x","content":[{{"type":"text","text":"noted {key}"}}],"stop_reason":"end_turn","usage":{{"input_tokens":5,"output_tokens":3}}}}"#
    );
    let ms = 1_000_000;
    let recs = vec![
        tcp(
            AGENT,
            9,
            DIR_OUT,
            SOCK,
            (ms, 2 * ms),
            &post("/v1/messages", &body),
        ),
        tcp(
            AGENT,
            9,
            DIR_IN,
            SOCK,
            (2 * ms, 9 * ms),
            &reply(200, &answer),
        ),
    ];
    for payloads in [false, true] {
        let mut host = FixedHost::stdio_pair(AGENT, SERVER, REQ_PIPE, RESP_PIPE);
        let mut cfg = PipelineConfig::default();
        cfg.tracker.payloads = payloads;
        let mut p = Pipeline::new(cfg);
        for r in &recs {
            p.ingest(&mut host, r);
        }
        p.finish(60_000_000_000, 0);
        let out: Vec<Signal> = p.drain_signals().collect();
        let c = calls(&out)[0].clone();
        let line = crate::output::jsonl::encode(&Signal::LlmCall(Box::new(c.clone())));
        assert!(!line.contains(key), "{line}");
        if payloads {
            let prompt = c.prompt.expect("the prompt, with payloads");
            assert!(
                prompt.starts_with("my key is ") && prompt.contains("REDACTED"),
                "{prompt}"
            );
            let done = c.completion.expect("the completion");
            assert!(
                done.starts_with("noted ") && done.contains("REDACTED"),
                "{done}"
            );
        } else {
            assert!(c.prompt.is_none() && c.completion.is_none());
            assert!(!line.contains("my key is"), "{line}");
        }
    }
}

/// A streamed reply whose final event came is whole, even when the client closes the
/// connection without reading the chunked body's last, empty chunk (Node's fetch does, at
/// times); a stream that stops before its final event is cut off. Both end at their last
/// byte read, or at the close.
#[test]
fn a_stream_is_whole_by_its_final_event_not_by_its_last_chunk() {
    let event = |name: &str, data: &str| {
        let e = format!("event: {name}\ndata: {data}\n\n");
        format!("{:x}\r\n{e}\r\n", e.len())
    };
    let head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    let start = event(
        "message_start",
        r#"{"type":"message_start","message":{"id":"msg_s","model":"claude-x","usage":{"input_tokens":5,"output_tokens":1}}}"#,
    );
    let delta = event(
        "content_block_delta",
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
    );
    let stop = event("message_stop", r#"{"type":"message_stop"}"#);
    let body = r#"{"model":"claude-x","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let ms = 1_000_000;
    let close = encode_record(
        &EventHeader {
            record: mcptap_abi::RECORD_CLOSE,
            fd_kind: mcptap_abi::FD_TCP,
            tgid: AGENT,
            tid: AGENT,
            fd: 9,
            inode: SOCK,
            ts_enter_ns: 50 * ms,
            ts_exit_ns: 50 * ms,
            ..Default::default()
        },
        &[],
    );
    for (events, want) in [
        (format!("{head}{start}{delta}{stop}"), LlmStatus::Ok),
        (format!("{head}{start}{delta}"), LlmStatus::CutOff),
    ] {
        let recs = vec![
            tcp(
                AGENT,
                9,
                DIR_OUT,
                SOCK,
                (ms, 2 * ms),
                &post("/v1/messages", body),
            ),
            tcp(AGENT, 9, DIR_IN, SOCK, (2 * ms, 9 * ms), events.as_bytes()),
            close.clone(),
        ];
        let out = run(&recs);
        let c = calls(&out)[0];
        assert_eq!(c.status, want, "{c:#?}");
        let end = if want == LlmStatus::Ok { 9 } else { 50 };
        assert_eq!(c.duration_ms, (end - 1) as f64, "{c:#?}");
    }
}
