//! WebSocket, end to end: the Python SDK's websocket client and server (subprotocol `mcp`,
//! on `websockets` under uvicorn), with permessage-deflate negotiated and refused, and the
//! TypeScript SDK's WebSocketClientTransport (on the `ws` package) against the same server.
//! Every call once, with status, duration and both ends' views, transport `websocket`; the
//! agent's log says what each end negotiated, so a test of compressed frames cannot pass on
//! plain ones.

use std::path::Path;
use std::process::Command;

use serde::Deserialize;

use mcptap_e2e::*;

const VENV: &str = "h2ws";
const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "mcptap=debug")];

/// The Python fixture server's MCP over WebSocket at /ws, refusing permessage-deflate unless
/// `deflate`.
fn ws_server(dir: &Path, port: u16, deflate: bool) -> Server {
    let mut s = Command::new(peers().join(VENV).join("bin/python"));
    s.arg(fixtures().join("py_server.py"))
        .args(["--transport", "ws", "--port", &port.to_string()]);
    if !deflate {
        s.arg("--no-deflate");
    }
    Server::on_port(&mut s, dir, "server", port)
}

/// What the agent's debug log says a WebSocket's permessage-deflate is, given the
/// `Sec-WebSocket-Extensions` of its 101 (empty when it had none), read per RFC 7692 here:
/// `client_no_context_takeover` concerns what the client sends, `server_...` the server.
fn deflate_said(extensions: &str) -> String {
    let (mut to_server, mut to_client) = ("off", "off");
    let deflate = extensions.split(',').find_map(|ext| {
        let mut params = ext.split(';').map(str::trim);
        params
            .next()
            .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
            .then_some(params)
    });
    if let Some(params) = deflate {
        (to_server, to_client) = ("on", "on");
        for p in params {
            let key = p.split('=').next().unwrap_or("").trim();
            if key.eq_ignore_ascii_case("client_no_context_takeover") {
                to_server = "on without context takeover";
            } else if key.eq_ignore_ascii_case("server_no_context_takeover") {
                to_client = "on without context takeover";
            }
        }
    }
    format!("permessage-deflate {to_server} to the server, {to_client} to the client")
}

/// What every test checks once the server and the agent stopped: every call once with both
/// ends' views, no session, the server's port, HTTP/1.1 (the handshake's), one switch to
/// WebSocket per end with subprotocol `mcp` and `deflate` (as [`deflate_said`] words it) in the
/// agent's `log`, and no gap or corruption at either end.
fn check_ws(recs: &Records, log: &str, run: &ClientRun, port: u16, deflate: &str) {
    check_calls(recs, run, Sides::Both);
    check_session(recs, run, "websocket", true);
    for r in recs.exchanges_of_client(run.pid) {
        assert_eq!(r["server_port"], port, "{r}");
        assert_eq!(r["http_version"], "1.1", "{r}");
    }
    for pid in [run.pid, run.server_pid.expect("server pid")] {
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
        assert!(
            switched[0].contains(deflate),
            "want {deflate:?}: {}",
            switched[0]
        );
        assert_no_trouble(recs, pid);
    }
}

fn run_ws(name: &str, deflate: bool) {
    require_root();
    let dir = scratch(name);
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let server = ws_server(&dir, port, deflate);
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut c = Command::new(peers().join(VENV).join("bin/python"));
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
    let want = deflate_said(if deflate { "permessage-deflate" } else { "" });
    check_ws(&recs, &log, &run, port, &want);
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

/// node_ws_client.mjs's report: a client run and the handshake's extensions as it saw them.
#[derive(Deserialize)]
struct WsRun {
    #[serde(flatten)]
    run: ClientRun,
    /// `Sec-WebSocket-Extensions` the client sent.
    offered: String,
    /// `Sec-WebSocket-Extensions` the server's 101 answered.
    negotiated: String,
}

/// The TypeScript SDK's WebSocketClientTransport on `ws` (with its defaults, which offer
/// permessage-deflate and compress messages from 1 KiB) against the Python server with
/// deflate on; one echo is big enough that the client's frames are compressed too. What the
/// agent says was negotiated must be what the client's handshake got.
#[test]
fn ts_sdk_websocket_client() {
    require_root();
    let dir = scratch("websocket_ts_sdk");
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let server = ws_server(&dir, port, true);
    let node_dir = node_fixture("node_ws_client.mjs");
    let url = format!("ws://127.0.0.1:{port}/ws");
    let mut c = Command::new("node");
    c.current_dir(&node_dir).arg("node_ws_client.mjs").args([
        "--echo",
        "5",
        "--big-arg",
        "4096",
        "--url",
        &url,
    ]);
    let ws: WsRun = run_report(&mut c, &dir, "client");
    assert_eq!(
        ws.run.server_pid,
        Some(server.pid()),
        "whoami names the server"
    );
    drop(server);
    let log = agent.log();
    let recs = agent.stop();
    let offered = ws
        .offered
        .to_ascii_lowercase()
        .contains("permessage-deflate");
    let negotiated = ws
        .negotiated
        .to_ascii_lowercase()
        .contains("permessage-deflate");
    assert_eq!(
        offered, negotiated,
        "the server takes any deflate offer: offered {:?}, got {:?}",
        ws.offered, ws.negotiated
    );
    check_ws(&recs, &log, &ws.run, port, &deflate_said(&ws.negotiated));
}
