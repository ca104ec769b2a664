//! A flood against small caps: 10,000 short MCP sessions over loopback TCP, then 1,000
//! sessions each left with a call that is never answered. The agent's memory must plateau,
//! its tables stay within their caps, and every eviction be counted. Root, real kernel; the
//! peers are this test's own threads speaking newline-delimited JSON-RPC over TCP, watched
//! with `--pid`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};

use mcptap_e2e::*;

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"flood","version":"1"}}}"#;
const INIT_OK: &str = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"flood-server","version":"1"}}}"#;
const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
const CALL_OK: &str =
    r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}"#;

/// A server thread: answers every line that has an id, except calls to `never`.
fn serve(listener: TcpListener) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { return };
        std::thread::spawn(move || {
            let mut w = conn.try_clone().unwrap();
            for line in BufReader::new(conn).lines() {
                let Ok(line) = line else { return };
                let reply = if line.contains("\"initialize\"") {
                    INIT_OK
                } else if line.contains("\"never\"") {
                    continue;
                } else {
                    CALL_OK
                };
                if w.write_all(format!("{reply}\n").as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
}

/// One short session: initialize, one call, close.
fn short_session(port: u16) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    for msg in [INIT, CALL] {
        c.write_all(format!("{msg}\n").as_bytes()).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
    }
}

/// The echo calls the agent has counted, over every label.
fn echo_calls(metrics: &str) -> f64 {
    prom_value(metrics, "mcp_tool_calls_total", &[("tool_name", "echo")]).unwrap_or(0.0)
}

#[test]
fn flood_of_sessions_and_unanswered_calls_plateaus() {
    let dir = scratch("flood");
    // Room for 1,000 held connections (both ends are in this process).
    let lim = libc::rlimit {
        rlim_cur: 8192,
        rlim_max: 8192,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    let me = std::process::id().to_string();
    let agent = Agent::start(
        &dir,
        &[
            "--pid",
            &me,
            "--max-sessions",
            "500",
            "--max-pending",
            "300",
            "--max-streams",
            "2000",
        ],
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || serve(listener));

    let mut rss = Vec::new();
    for round in 0..4 {
        for _ in 0..2_500 {
            short_session(port);
        }
        // Measure once the agent has caught up: every call made so far is counted.
        let made = ((round + 1) * 2_500) as f64;
        assert!(
            wait_for(60, || echo_calls(&agent.metrics()) >= made),
            "the agent did not count the first {made} calls within 60 s (counted {})",
            echo_calls(&agent.metrics())
        );
        rss.push(agent.rss_kib());
        eprintln!(
            "after {} sessions: RSS {} KiB",
            (round + 1) * 2_500,
            rss[round]
        );
    }
    // 1,000 sessions, each with a call that is never answered, all held open.
    let mut held = Vec::new();
    for i in 0..1_000 {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut line = String::new();
        c.write_all(format!("{INIT}\n").as_bytes()).unwrap();
        r.read_line(&mut line).unwrap();
        let never = CALL
            .replace("\"echo\"", "\"never\"")
            .replace("\"id\":1", &format!("\"id\":{i}"));
        c.write_all(format!("{never}\n").as_bytes()).unwrap();
        held.push(c);
    }
    // Wait for what is asserted below (the caps' evictions), then measure.
    let evicted_in = |m: &str, table: &str| {
        prom_value(m, "mcptap_evictions_total", &[("table", table)]).unwrap_or(0.0)
    };
    wait_for(60, || {
        let m = agent.metrics();
        evicted_in(&m, "pending_requests") >= 600.0 && evicted_in(&m, "sessions") >= 400.0
    });
    let metrics = agent.metrics();
    rss.push(agent.rss_kib());
    eprintln!("with 1,000 calls held: RSS {} KiB", rss[4]);
    drop(held);
    let recs = agent.stop();

    let evicted = |table: &str| evicted_in(&metrics, table);
    let tracked = prom_value(&metrics, "mcptap_tracked_sessions", &[]).unwrap_or(f64::MAX);
    assert!(tracked <= 500.0, "sessions past the cap: {tracked}");
    assert!(
        evicted("pending_requests") >= 600.0,
        "unanswered calls past the cap not evicted:\n{metrics}"
    );
    assert!(
        evicted("sessions") >= 400.0,
        "sessions not evicted:\n{metrics}"
    );
    // Every short session's call was reported, and the evicted calls as no_response.
    let xs = recs.kind("exchange");
    let ok = xs
        .iter()
        .filter(|x| x["tool"] == "echo" && x["status"] == "ok")
        .count();
    assert_eq!(ok, 10_000, "short sessions' calls reported");
    let gave_up = xs
        .iter()
        .filter(|x| x["tool"] == "never" && x["status"] == "no_response")
        .count();
    assert!(
        gave_up >= 600,
        "{gave_up} unanswered calls reported as no_response"
    );
    // Memory plateaus: the last three quarters of the flood add little to the first.
    let growth = rss[3] as f64 / rss[0] as f64;
    assert!(
        growth < 1.25,
        "RSS grew {growth:.2}x over the flood: {rss:?} KiB"
    );
    let held_growth = rss[4] as f64 / rss[3] as f64;
    assert!(
        held_growth < 1.25,
        "1,000 held calls grew RSS {held_growth:.2}x: {rss:?} KiB"
    );
}
