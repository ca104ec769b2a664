//! WebSocket, end to end: the Python SDK's websocket client and server (subprotocol `mcp`,
//! on `websockets` under uvicorn), with permessage-deflate negotiated and refused. Every call
//! once, with status, duration and both ends' views, transport `websocket`; the agent's log
//! says what each end negotiated, so a test of compressed frames cannot pass on plain ones.

use std::process::Command;

use mcptap_e2e::*;

const VENV: &str = "h2ws";
const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "mcptap=debug")];

fn run_ws(name: &str, deflate: bool) {
    require_root();
    let dir = scratch(name);
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let py = peers().join(VENV).join("bin/python");
    let mut s = Command::new(&py);
    s.arg(fixtures().join("py_server.py"))
        .args(["--transport", "ws", "--port", &port.to_string()]);
    if !deflate {
        s.arg("--no-deflate");
    }
    let server = Server::on_port(&mut s, &dir, "server", port);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut c = Command::new(&py);
    c.arg(fixtures().join("py_client.py"))
        .args(["--echo", "5", "--websocket", "--url", &url]);
    let run = run_client(&mut c, &dir);
    assert_eq!(
        run.server_pid,
        Some(server.pid()),
        "whoami names the server"
    );
    drop(server);
    let log = agent.log();
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    check_session(&recs, &run, "websocket", true);
    for r in recs.exchanges_of_client(run.pid) {
        assert_eq!(r["server_port"], port, "{r}");
        assert_eq!(r["http_version"], "1.1", "{r}");
    }
    let want = if deflate {
        "permessage-deflate on to the server, on to the client"
    } else {
        "permessage-deflate off to the server, off to the client"
    };
    for pid in [run.pid, run.server_pid.unwrap()] {
        let me = format!("tgid: {pid},");
        let switched: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&me) && l.contains("switched to WebSocket"))
            .collect();
        assert_eq!(switched.len(), 1, "one switch for {pid}: {switched:#?}");
        assert!(
            switched[0].contains("subprotocol \"mcp\""),
            "{}",
            switched[0]
        );
        assert!(switched[0].contains(want), "{}", switched[0]);
        let trouble: Vec<_> = recs
            .mentioning(pid)
            .into_iter()
            .filter(|r| {
                matches!(
                    r["event"].as_str(),
                    Some("stream_gap" | "stream_corruption" | "message_truncated")
                )
            })
            .collect();
        assert!(trouble.is_empty(), "{trouble:#?}");
    }
}

/// Compressed messages (the `websockets` default), context kept across messages.
#[test]
fn python_sdk_over_websocket_with_deflate() {
    run_ws("websocket_deflate", true);
}

/// Plain frames: the server refuses permessage-deflate.
#[test]
fn python_sdk_over_websocket_without_deflate() {
    run_ws("websocket_plain", false);
}
