//! Network transports, end to end: Streamable HTTP (SSE and JSON replies, stateless, protocol
//! 2026-07-28), the legacy HTTP+SSE transport, and HTTP over a Unix socket, with real SDK
//! servers and clients on 127.0.0.1.

use std::process::Command;

use mcptap_e2e::*;

/// The fixture server on `venv`'s SDK, serving `args` (after `--transport`).
fn py_server(venv: &str, args: &[&str]) -> Command {
    py_fixture(venv, "py_server.py", args)
}

/// The fixture client on `venv`'s SDK with `args`.
fn py_client(venv: &str, args: &[&str]) -> Command {
    py_fixture(venv, "py_client.py", args)
}

/// Run a Python SDK server/client pair over HTTP and check every call and the session.
fn python_http(
    name: &str,
    venv: &str,
    server_args: &[&str],
    client_args: &[&str],
    transport: &str,
    stateless: bool,
) -> (Records, ClientRun) {
    let dir = scratch(name);
    let port = port();
    let p = port.to_string();
    let mut sargs = server_args.to_vec();
    sargs.extend(["--port", &p]);
    let agent = Agent::start(&dir, &[]);
    let server = Server::on_port(&mut py_server(venv, &sargs), &dir, "server", port);
    let path = if transport == "sse" { "sse" } else { "mcp" };
    let url = format!("http://127.0.0.1:{port}/{path}");
    let mut cargs = vec!["--echo", "5", "--url", &url];
    cargs.extend(client_args);
    let mut run = run_client(&mut py_client(venv, &cargs), &dir);
    assert_eq!(
        run.server_pid,
        Some(server.pid()),
        "whoami names the server"
    );
    run.server_pid = Some(server.pid());
    drop(server);
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    check_session(&recs, &run, transport, stateless);
    let any = recs.exchanges_of_client(run.pid)[0];
    assert_eq!(any["server_address"], "127.0.0.1");
    assert_eq!(any["server_port"], port);
    assert_eq!(any["client_address"], "127.0.0.1");
    (recs, run)
}

/// mcp 1.x server and client, Streamable HTTP with SSE replies; the Python client opens a new
/// connection per POST, so the session is joined by Mcp-Session-Id.
#[test]
fn python_streamable_http_sse_replies() {
    let (recs, run) = python_http(
        "http_py_sse",
        "mcp1",
        &["--transport", "http"],
        &[],
        "http",
        false,
    );
    let init = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .find(|r| r["method"] == "initialize")
        .expect("initialize");
    assert_eq!(init["http_status"], 200);
    assert_eq!(init["server"]["name"], "mcptap-fixture");
    // Several connections carried the session.
    let ports: std::collections::BTreeSet<u64> = recs
        .exchanges_of_client(run.pid)
        .iter()
        .map(|r| r["client_port"].as_u64().unwrap())
        .collect();
    assert!(ports.len() > 1, "{ports:?}");
}

/// mcp 1.x, `json_response=True`: application/json replies with Content-Length.
#[test]
fn python_streamable_http_json_replies() {
    python_http(
        "http_py_json",
        "mcp1",
        &["--transport", "http", "--json"],
        &[],
        "http",
        false,
    );
}

/// mcp 1.x, `stateless_http=True`: no session id; each request scoped by its connection.
#[test]
fn python_streamable_http_stateless() {
    python_http(
        "http_py_stateless",
        "mcp1",
        &["--transport", "http", "--stateless"],
        &[],
        "http",
        true,
    );
}

/// mcp 2.x Client and server: protocol 2026-07-28, no initialize, no session.
#[test]
fn python_mcp2_client_speaks_2026_07_28_over_http() {
    let (recs, run) = python_http(
        "http_py2",
        "mcp2",
        &["--transport", "http"],
        &[],
        "http",
        true,
    );
    assert_eq!(run.protocol_version.as_deref(), Some("2026-07-28"));
    let mine = recs.exchanges_of_client(run.pid);
    assert!(mine.iter().all(|r| r["method"] != "initialize"));
    assert!(mine.iter().any(|r| r["method"] == "server/discover"));
    let call = mine.iter().find(|r| r["tool"] == "echo").unwrap();
    assert_eq!(call["protocol_version"], "2026-07-28");
    assert_eq!(call["client"]["name"], "mcp");
    assert_eq!(call["server"]["name"], "mcptap-fixture");
}

/// mcp 1.x on the legacy HTTP+SSE transport: responses arrive on the GET stream.
#[test]
fn python_legacy_http_sse() {
    python_http(
        "http_py_legacy",
        "mcp1",
        &["--transport", "sse"],
        &["--legacy-sse"],
        "sse",
        false,
    );
}

/// Streamable HTTP on a Unix socket (uvicorn on a path, httpx over it).
#[test]
fn python_streamable_http_over_a_unix_socket() {
    let dir = scratch("http_unix");
    let sock = dir.join("mcp.sock");
    let agent = Agent::start(&dir, &[]);
    let server = Server::start(
        &mut py_server(
            "mcp1",
            &["--transport", "http", "--uds", sock.to_str().unwrap()],
        ),
        &dir,
        "server",
        || std::os::unix::net::UnixStream::connect(&sock).is_ok(),
    );
    let mut run = run_client(
        &mut py_client(
            "mcp1",
            &[
                "--echo",
                "5",
                "--url",
                "http://localhost:8000/mcp",
                "--uds",
                sock.to_str().unwrap(),
            ],
        ),
        &dir,
    );
    run.server_pid = Some(server.pid());
    drop(server);
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    check_session(&recs, &run, "unix", false);
    let any = recs.exchanges_of_client(run.pid)[0];
    assert_eq!(any["server_address"], sock.to_str().unwrap());
    assert!(any.get("server_port").is_none());
}

fn node_http(
    name: &str,
    server: &mut dyn FnMut(u16) -> Command,
    client_args: &[&str],
    transport: &str,
) -> (Records, ClientRun) {
    let dir = scratch(name);
    let port = port();
    let agent = Agent::start(&dir, &[]);
    let server = Server::on_port(&mut server(port), &dir, "server", port);
    let mut args: Vec<String> = client_args
        .iter()
        .map(|a| a.replace("PORT", &port.to_string()))
        .collect();
    args.extend(["--echo".into(), "5".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut run = run_client(&mut node_client(&args), &dir);
    run.server_pid = Some(server.pid());
    drop(server);
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    check_session(&recs, &run, transport, false);
    (recs, run)
}

fn everything(mode: &'static str) -> impl FnMut(u16) -> Command {
    move |port| {
        let mut c = Command::new("node");
        c.current_dir(peers().join("node"))
            .arg("node_modules/@modelcontextprotocol/server-everything/dist/index.js")
            .arg(mode)
            .env("PORT", port.to_string());
        c
    }
}

/// The TypeScript SDK's own server (McpServer + StreamableHTTPServerTransport).
#[test]
fn typescript_sdk_server_over_streamable_http() {
    let (recs, run) = node_http(
        "http_node_server",
        &mut |port| {
            let node_dir = peers().join("node");
            std::fs::copy(
                fixtures().join("node_server.mjs"),
                node_dir.join("node_server.mjs"),
            )
            .unwrap();
            let mut c = Command::new("node");
            c.current_dir(node_dir)
                .arg("node_server.mjs")
                .arg(port.to_string());
            c
        },
        &["--url", "http://127.0.0.1:PORT/mcp"],
        "http",
    );
    let init = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .find(|r| r["method"] == "initialize")
        .unwrap();
    assert_eq!(init["server"]["name"], "mcptap-node-fixture");
}

/// server-everything in streamableHttp mode, with a long-running tool that sends progress
/// notifications before its result in one SSE reply.
#[test]
fn server_everything_streamable_http_with_progress() {
    let (recs, run) = node_http(
        "http_everything",
        &mut everything("streamableHttp"),
        &["--url", "http://127.0.0.1:PORT/mcp", "--long"],
        "http",
    );
    let session = recs.exchanges_of_client(run.pid)[0]["session"].clone();
    let progress = recs
        .kind("notification")
        .into_iter()
        .filter(|n| n["method"] == "notifications/progress" && n["session"] == session)
        .count();
    assert_eq!(progress, 3, "one per step of the long-running operation");
}

/// server-everything in legacy sse mode with the TypeScript SSE client.
#[test]
fn server_everything_legacy_sse() {
    node_http(
        "http_everything_sse",
        &mut everything("sse"),
        &["--sse", "http://127.0.0.1:PORT/sse"],
        "sse",
    );
}
