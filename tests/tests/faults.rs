//! Faults: kernel event loss, processes dying mid-call or mid-message, an agent started in the
//! middle of a session, an OTLP backend that is down, slow or failing, and SIGTERM under load.
//! Root, real kernel, real MCP peers.

use std::process::{Command, Stdio};

use mcptap_e2e::otlp::{Proto, Receiver, attr};
use mcptap_e2e::*;
use serde_json::Value;

fn python(venv: &str) -> std::path::PathBuf {
    peers().join(venv).join("bin/python")
}

/// Every reported exchange of `client` is one of the calls it made, with the status it saw,
/// or `no_response` when the answer was among the bytes lost: loss may hide an answer or a
/// call, but never invents a call or an outcome. Something real must have been reported too,
/// or an agent that reports nothing would pass: returns the exchanges that match a call
/// exactly (the status the client saw), at least one.
fn nothing_invented<'a>(recs: &'a Records, run: &ClientRun) -> Vec<&'a Value> {
    let mut calls: Vec<&Call> = run.calls.iter().collect();
    let mine: Vec<(&Value, &str, &str)> = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .filter_map(|x| {
            let method = x["method"].as_str().unwrap_or("");
            if !["tools/call", "resources/read", "prompts/get"].contains(&method) {
                return None;
            }
            let target = x["tool"]
                .as_str()
                .or(x["resource_uri"].as_str())
                .or(x["prompt"].as_str())
                .unwrap_or("");
            Some((x, method, target))
        })
        .collect();
    // Exchanges with an outcome first, then those whose answer was lost: a lost answer may
    // belong to any call of its target, so it must not take one that a whole exchange needs.
    let mut exact = Vec::new();
    for lost in [false, true] {
        for &(x, method, target) in &mine {
            if (x["status"] == "no_response") != lost {
                continue;
            }
            let i = calls
                .iter()
                .position(|c| {
                    c.method == method && c.target == target && (lost || c.status == x["status"])
                })
                .unwrap_or_else(|| panic!("an exchange the client never had: {x}"));
            calls.remove(i);
            if !lost {
                exact.push(x);
            }
        }
    }
    assert!(
        !exact.is_empty(),
        "not one of client {}'s {} calls was reported with its outcome: {:#?}",
        run.pid,
        run.calls.len(),
        recs.exchanges_of_client(run.pid)
    );
    exact
}

/// The check itself has teeth: an agent that reported nothing, or made up an outcome, fails it.
#[test]
fn nothing_invented_fails_on_nothing_and_on_inventions() {
    let run: ClientRun = serde_json::from_value(serde_json::json!({
        "pid": 7,
        "calls": [
            {"method": "tools/call", "target": "echo", "status": "ok", "code": null, "ms": 1.0},
            {"method": "tools/call", "target": "add", "status": "ok", "code": null, "ms": 1.0},
        ],
    }))
    .unwrap();
    let exchange = |tool: &str, status: &str| {
        serde_json::json!({"kind": "exchange", "ts": "t", "method": "tools/call",
            "tool": tool, "status": status, "client": {"pid": 7}})
    };
    let fails = |recs: Vec<Value>| {
        let recs = Records(recs);
        std::panic::catch_unwind(|| {
            nothing_invented(&recs, &run);
        })
        .is_err()
    };
    assert!(fails(vec![]), "nothing reported");
    assert!(fails(vec![exchange("echo", "no_response")]), "only losses");
    assert!(
        fails(vec![exchange("echo", "error")]),
        "an invented outcome"
    );
    assert!(fails(vec![exchange("nope", "ok")]), "an invented call");
    assert!(!fails(vec![
        exchange("echo", "ok"),
        exchange("add", "no_response")
    ]));
}

/// A ring buffer far too small for the traffic: the loss is counted, logged and reported,
/// nothing is made up from what was left, and the small calls that fit still come through
/// whole: right tool, status ok, both ends' views.
#[test]
fn tiny_ring_buffer_loses_counts_and_invents_nothing() {
    let dir = scratch("tiny_ring");
    let agent = Agent::start(&dir, &["--ring-buffer-size", "8K", "--comm", "python"]);
    let run = run_client(
        &mut python_client(
            "mcp1",
            &python("mcp1"),
            &[
                "--echo",
                "20",
                "--big-arg",
                "300000",
                "--big-result",
                "300000",
            ],
        ),
        &dir,
    );
    // Counters are read every second.
    let counted = wait_for(10, || {
        prom_value(&agent.metrics(), "mcptap_lost_events_total", &[]).unwrap_or(0.0) > 0.0
    });
    let metrics = agent.metrics();
    let log = agent.log();
    let recs = agent.stop();
    assert!(counted, "no loss counted with an 8K ring:\n{metrics}");
    assert!(log.contains("ringbuf_full"), "loss not logged: {log}");
    assert!(
        recs.kind("event")
            .iter()
            .any(|e| e["event"] == "kernel_loss"),
        "no kernel_loss event"
    );
    let exact = nothing_invented(&recs, &run);
    // The 20 small echo calls (tens of bytes each) fit the ring: some must survive whole.
    let whole: Vec<&&Value> = exact
        .iter()
        .filter(|x| {
            x["method"] == "tools/call"
                && x["tool"] == "echo"
                && x["status"] == "ok"
                && x["request_bytes"].as_u64().is_some_and(|b| b < 1_000)
                && x["client_duration_ms"].as_f64().is_some()
                && x["server_duration_ms"].as_f64().is_some()
                && run.server_pid.is_some_and(|p| x["server"]["pid"] == p)
        })
        .collect();
    let made = run
        .calls
        .iter()
        .filter(|c| c.target == "echo" && c.status == "ok")
        .count();
    assert!(
        !whole.is_empty(),
        "none of the {made} small echo calls came through whole with an 8K ring: {:#?}",
        recs.exchanges_of_client(run.pid)
    );
}

/// The server is SIGKILLed in the middle of a call: the call ends as `no_response`, the
/// session ends with the process, and the agent lets go of its streams.
#[test]
fn server_killed_mid_call_ends_as_no_response() {
    let dir = scratch("killed_mid_call");
    let agent = Agent::start(&dir, &["--comm", "python"]);
    let mut client = python_client("mcp1", &python("mcp1"), &["--echo", "1", "--hang", "60"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("client.log")).unwrap())
        .spawn()
        .unwrap();
    let in_flight = || {
        prom_value(
            &agent.metrics(),
            "mcp_tool_calls_in_flight",
            &[("tool_name", "sleep")],
        )
        .unwrap_or(0.0)
            >= 1.0
    };
    assert!(
        wait_for(60, in_flight),
        "the sleep call never went in flight"
    );
    let server = children_of(client.id())
        .into_iter()
        .next()
        .expect("the client's server process");
    let streams_before = prom_value(&agent.metrics(), "mcptap_tracked_streams", &[]).unwrap_or(0.0);
    // SAFETY: killing a process this test started (the client's child).
    unsafe { libc::kill(server as i32, libc::SIGKILL) };
    let _ = client.wait();
    let released = wait_for(20, || {
        prom_value(&agent.metrics(), "mcptap_tracked_streams", &[]).unwrap_or(f64::MAX)
            < streams_before
            && prom_value(
                &agent.metrics(),
                "mcp_tool_calls_in_flight",
                &[("tool_name", "sleep")],
            )
            .unwrap_or(0.0)
                == 0.0
    });
    let recs = agent.stop();
    let sleep: Vec<&Value> = recs
        .exchanges_of_client(client.id())
        .into_iter()
        .filter(|x| x["tool"] == "sleep")
        .collect();
    assert_eq!(sleep.len(), 1, "{sleep:#?}");
    assert_eq!(sleep[0]["status"], "no_response");
    assert!(
        released,
        "streams or the in-flight call still held after the kill"
    );
    let session = format!("stdio:{}-{server}", client.id());
    assert!(
        recs.kind("event")
            .iter()
            .any(|e| e["event"] == "session_end"
                && e["session"] == session.as_str()
                && e["reason"] == "process_exit"),
        "no session_end for {session}"
    );
}

/// Direct children of `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// A writer dies in the middle of a message: the server reads half a request then end of
/// file. The partial message is reported as `stream_unterminated` and never parsed.
#[test]
fn writer_gone_mid_message_is_unterminated() {
    let dir = scratch("mid_message");
    let agent = Agent::start(&dir, &["--comm", "python", "--comm", "sh"]);
    let init = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"half","version":"1"}}}"#;
    let half = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ec"#;
    // `sleep 1` makes the two writes separate messages in time on purpose: the server reads
    // and answers initialize before the half message, then sees end of file.
    let script = format!(
        "(printf '%s\\n' '{init}'; sleep 1; printf '%s' '{half}') | {} {}",
        python("mcp1").display(),
        fixtures().join("py_server.py").display()
    );
    let out = Command::new("sh")
        .args(["-c", &script])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"id\":0"),
        "the server did not answer initialize"
    );
    // The agent reports the partial message once the writer's end is closed: wait for that
    // rather than a fixed time.
    assert!(
        wait_for(30, || std::fs::read_to_string(&agent.jsonl)
            .unwrap_or_default()
            .contains("\"stream_unterminated\"")),
        "no stream_unterminated event within 30 s:\n{}",
        agent.log()
    );
    let recs = agent.stop();
    let unterminated: Vec<&Value> = recs
        .kind("event")
        .into_iter()
        .filter(|e| e["event"] == "stream_unterminated")
        .collect();
    // One per watched end of the pipe: the shell's write and the server's read.
    assert!(!unterminated.is_empty());
    for e in &unterminated {
        assert_eq!(e["bytes"], half.len(), "{e}");
    }
    assert!(
        recs.kind("exchange").iter().all(|x| x["id"] != 1),
        "an exchange from half a message"
    );
}

/// mcptap starts after the session's initialize: the calls that follow are still tracked,
/// with both sides, and no handshake is made up.
#[test]
fn agent_started_mid_session_tracks_calls() {
    let dir = scratch("mid_session");
    let client = HeldClient::start(&dir, |hold| {
        python_client("mcp1", &python("mcp1"), &[&["--echo", "3"], hold].concat())
    });
    let agent = Agent::start(&dir, &["--comm", "python"]);
    let mut run = client.release();
    let recs = agent.stop();
    // The server was already blocked in read(2) when the probes attached: that read's entry
    // was never seen, so the first request has only the client's view. It is still reported
    // once, correctly; every later call has both views.
    let first = run.calls.remove(0);
    let firsts: Vec<&Value> = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .filter(|x| x["tool"] == first.target.as_str())
        .collect();
    assert_eq!(firsts.len(), 1, "{firsts:#?}");
    assert_eq!(firsts[0]["status"], first.status.as_str());
    let rest = Records(
        recs.0
            .iter()
            .filter(|x| x["tool"] != first.target.as_str())
            .cloned()
            .collect(),
    );
    check_calls(&rest, &run, Sides::Both);
    assert!(
        recs.kind("event")
            .iter()
            .all(|e| e["event"] != "handshake" || e["client"]["pid"] != run.pid),
        "a handshake reported for a session whose initialize was never seen"
    );
}

fn export_failures(metrics: &str) -> f64 {
    ["otlp_traces", "otlp_metrics", "traces", "metrics"]
        .iter()
        .filter_map(|e| prom_value(metrics, "mcptap_export_failures_total", &[("exporter", e)]))
        .sum()
}

/// The OTLP collector is down, then failing, then slow, then healthy: capture goes on
/// throughout, failures are counted, and export recovers without a restart.
#[test]
fn otlp_down_failing_slow_then_recovered() {
    let dir = scratch("otlp_faults");
    let port = port();
    let agent = Agent::start_with_env(
        &dir,
        &[
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{port}"),
            "--otlp-protocol",
            "http/protobuf",
            "--comm",
            "python",
        ],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "500")],
    );
    let client = |echo: &str| {
        run_client(
            &mut python_client("mcp1", &python("mcp1"), &["--echo", echo]),
            &dir,
        )
    };
    // Down: nothing listens.
    let down = client("2");
    assert!(
        wait_for(20, || export_failures(&agent.metrics()) > 0.0),
        "no export failure counted while the collector was down:\n{}",
        agent.metrics()
    );
    // Up, but answering 503.
    let receiver = Receiver::start_on(Proto::Http, port);
    receiver.fail_with(503);
    let failed_before = export_failures(&agent.metrics());
    let failing = client("2");
    assert!(
        wait_for(20, || export_failures(&agent.metrics()) > failed_before),
        "503s not counted as failures"
    );
    // Slow (2 s per answer), then healthy: spans of a new workload arrive.
    receiver.fail_with(0);
    receiver.delay(2_000);
    let slow = client("2");
    receiver.delay(0);
    let healthy = client("2");
    let pid = healthy.pid.to_string();
    assert!(
        receiver.wait(30, |r| r.spans().iter().any(|(_, s)| {
            attr(&s.attributes, "process.pid").is_some_and(|v| match v {
                opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(i) => {
                    i.to_string() == pid
                }
                opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s) => {
                    *s == pid
                }
                _ => false,
            })
        })),
        "export did not recover: no spans for the last workload"
    );
    let recs = agent.stop();
    // Capture never stopped.
    for run in [&down, &failing, &slow, &healthy] {
        check_calls(&recs, run, Sides::Both);
    }
}

/// SIGTERM while a client is mid-workload: exit 0, the JSON lines flushed whole and closed
/// by `agent_stop`, and the programs detached (the kernel forgets them).
#[test]
fn sigterm_under_load_flushes_and_exits_zero() {
    let dir = scratch("sigterm_load");
    let agent = Agent::start(&dir, &["--comm", "python"]);
    let mut client = python_client("mcp1", &python("mcp1"), &["--echo", "3000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(60, || prom_value(
            &agent.metrics(),
            "mcp_tool_calls_total",
            &[("tool_name", "echo"), ("status", "success")]
        )
        .unwrap_or(0.0)
            > 200.0),
        "the load never started"
    );
    let progs_before = bpf_program_count();
    let jsonl = agent.jsonl.clone();
    // `stop` sends SIGTERM and asserts exit 0 within 30 s.
    let recs = agent.stop();
    let _ = client.kill();
    let _ = client.wait();
    let text = std::fs::read_to_string(&jsonl).unwrap();
    assert!(text.ends_with('\n'), "the last line was cut");
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "agent_stop", "{last}");
    assert!(recs.kind("exchange").len() > 200);
    // The programs went with the agent's fds.
    assert!(
        wait_for(10, || bpf_program_count() < progs_before),
        "bpf programs still loaded after exit ({progs_before} before)"
    );
}

/// Programs loaded in the kernel now (BPF_PROG_GET_NEXT_ID walk).
fn bpf_program_count() -> usize {
    const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
    let mut id: u32 = 0;
    let mut n = 0;
    loop {
        // union bpf_attr { struct { __u32 start_id; __u32 next_id; __u32 open_flags; } }
        let mut attr = [0u32; 4];
        attr[0] = id;
        // SAFETY: bpf(2) reads and writes only the attr buffer we pass, of the size we pass.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_GET_NEXT_ID,
                attr.as_mut_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if r != 0 {
            return n;
        }
        id = attr[1];
        n += 1;
    }
}

/// A process speaks JSON logs through a pipe (mcptap rejects that stream and the kernel stops
/// shipping its fds), closes it, then opens an MCP session whose pipes take the same fd
/// numbers: the closed fds' verdicts are forgotten and the session is captured whole.
#[test]
fn fd_numbers_reused_after_close_are_captured_afresh() {
    let dir = scratch("fd_reuse");
    let agent = Agent::start(&dir, &["--comm", "python"]);
    let run = run_client(
        &mut python_client("mcp1", &python("mcp1"), &["--echo", "3", "--reuse-fds"]),
        &dir,
    );
    let metrics = agent.metrics();
    let recs = agent.stop();
    assert!(
        run.junk_fds.iter().any(|fd| run.session_fds.contains(fd)),
        "the session did not reuse the closed fds {:?} (it held {:?}): the test proves nothing",
        run.junk_fds,
        run.session_fds
    );
    assert!(
        prom_value(
            &metrics,
            "mcptap_streams_rejected_total",
            &[("reason", "json_not_jsonrpc")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "the JSON-log pipe was not rejected first:\n{metrics}"
    );
    check_calls(&recs, &run, Sides::Both);
}

/// The server is started through a shell that execs it: the process keeps its pid and its
/// pipes but becomes a different program. With `--comm python`, it is watched from the exec
/// on, and named by what it became.
#[test]
fn exec_of_a_watched_process_is_followed() {
    let dir = scratch("exec_server");
    let agent = Agent::start(&dir, &["--comm", "python"]);
    let mut cmd = Command::new(python("mcp1"));
    cmd.arg(fixtures().join("py_client.py"))
        .args(["--echo", "3", "--", "sh", "-c", "exec \"$0\" \"$@\""])
        .arg(python("mcp1"))
        .arg(fixtures().join("py_server.py"));
    let run = run_client(&mut cmd, &dir);
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    let x = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .find(|x| x["method"] == "tools/call")
        .expect("an exchange");
    assert_eq!(x["server"]["comm"], "python", "{x}");
}

/// A reader that peeks (`recv` with `MSG_PEEK`) before it reads sees the same bytes twice;
/// only the read moves them, and only the read is captured: every call once, no corruption,
/// no duplicate id.
#[test]
fn peeked_bytes_are_captured_once() {
    use std::io::{BufRead as _, BufReader, Write as _};
    let dir = scratch("msg_peek");
    let me = std::process::id().to_string();
    let agent = Agent::start(&dir, &["--pid", &me]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut peeked = [0u8; 64];
        for _ in 0..6 {
            // Look before reading, as some servers do to sniff a protocol.
            assert!(conn.peek(&mut peeked).unwrap() > 0);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            let reply =
                serde_json::json!({"jsonrpc": "2.0", "id": v["id"], "result": {"content": []}});
            writeln!(w, "{reply}").unwrap();
        }
    });
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    for id in 0..6 {
        let req = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "peeked", "arguments": {}}});
        writeln!(c, "{req}").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
    }
    server.join().unwrap();
    assert!(
        wait_for(20, || Records::read(&agent.jsonl)
            .kind("exchange")
            .iter()
            .filter(|x| x["tool"] == "peeked")
            .count()
            >= 6),
        "calls not reported"
    );
    drop(c);
    let recs = agent.stop();
    let calls: Vec<_> = recs
        .kind("exchange")
        .into_iter()
        .filter(|x| x["tool"] == "peeked")
        .collect();
    assert_eq!(calls.len(), 6, "{calls:#?}");
    assert!(calls.iter().all(|x| x["status"] == "ok"), "{calls:#?}");
    for bad in ["stream_corruption", "duplicate_id", "orphan_response"] {
        let n = recs
            .kind("event")
            .iter()
            .filter(|e| e["event"] == bad)
            .count();
        assert_eq!(n, 0, "{bad} events: a peek was captured as data");
    }
}
