//! HTTP/2, end to end: the Python SDK's Streamable HTTP app under hypercorn, driven by the
//! SDK's client on httpx with HTTP/2 only, over cleartext with prior knowledge (h2c) and over
//! TLS with ALPN `h2` (plaintext from OpenSSL), and by a hand-written client on Node's own
//! `node:http2` (nghttp2) over h2c. Every call once, with its session, status, duration, both
//! ends' views, and `http_version` 2 on every exchange. And an h2c connection mcptap joins
//! mid-way: read without its headers, every later call still reported.

use std::path::Path;
use std::process::Command;

use mcptap_e2e::*;

const VENV: &str = "h2ws";

/// The fixture server under hypercorn: h2c without a certificate, h2 over TLS with one.
fn hypercorn_server(dir: &Path, port: u16, cert: Option<&Path>) -> Server {
    let mut c = Command::new(peers().join(VENV).join("bin/python"));
    c.arg(fixtures().join("py_server.py")).args([
        "--transport",
        "http",
        "--hypercorn",
        "--port",
        &port.to_string(),
    ]);
    if let Some(cert) = cert {
        c.arg("--certfile")
            .arg(cert)
            .arg("--keyfile")
            .arg(cert.with_file_name("key.pem"));
    }
    Server::on_port(&mut c, dir, "server", port)
}

/// The SDK client on httpx, HTTP/2 only.
fn h2_client(url: &str, cert: Option<&Path>) -> Command {
    let mut c = Command::new(peers().join(VENV).join("bin/python"));
    c.arg(fixtures().join("py_client.py"))
        .args(["--echo", "5", "--http2", "--url", url]);
    if let Some(cert) = cert {
        c.env("SSL_CERT_FILE", cert);
    }
    c
}

/// Node's built-in `node:http2` client, MCP by hand over one session (prior knowledge on
/// http://), with py_client.py's tool calls.
fn node_h2_client(url: &str, cert: Option<&Path>) -> Command {
    assert!(cert.is_none(), "the node:http2 client runs over h2c only");
    let mut c = Command::new("node");
    c.arg(fixtures().join("node_h2_client.mjs"))
        .args(["--echo", "5", "--url", url]);
    c
}

/// What every test checks once the server and the agent stopped.
fn check(recs: &Records, run: &ClientRun, port: u16, tls: bool) {
    check_calls(recs, run, Sides::Both);
    check_session(recs, run, "http", false);
    let mine = recs.exchanges_of_client(run.pid);
    for r in &mine {
        assert_eq!(r["http_version"], "2", "{r}");
        assert_eq!(r["server_port"], port, "{r}");
        assert_eq!(r["tls"].as_bool().unwrap_or(false), tls, "{r}");
    }
    let server = run.server_pid.expect("server pid");
    for pid in [run.pid, server] {
        assert_no_trouble(recs, pid);
    }
}

fn run_h2(name: &str, tls: bool, client: fn(&str, Option<&Path>) -> Command) {
    require_root();
    let dir = scratch(name);
    let cert = tls.then(|| certificate(&dir).0);
    let port = port();
    let agent = Agent::start(&dir, &[]);
    let server = hypercorn_server(&dir, port, cert.as_deref());
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}/mcp");
    let run = run_client(&mut client(&url, cert.as_deref()), &dir);
    assert_eq!(
        run.server_pid,
        Some(server.pid()),
        "whoami names the server"
    );
    assert!(
        run.session_id.is_some(),
        "the server gave the client a session"
    );
    drop(server);
    let recs = agent.stop();
    check(&recs, &run, port, tls);
}

/// Cleartext HTTP/2 with prior knowledge: the client's preface starts the connection.
#[test]
fn python_sdk_over_h2c() {
    run_h2("http2_h2c", false, h2_client);
}

/// HTTP/2 inside TLS (ALPN h2), read as plaintext from OpenSSL at both ends.
#[test]
fn python_sdk_over_h2_tls() {
    run_h2("http2_tls", true, h2_client);
}

/// Node's `node:http2` client by hand over h2c, one HTTP/2 session for every request; replies
/// are SSE streams, each ending its HTTP/2 stream.
#[test]
fn node_http2_client_over_h2c() {
    run_h2("http2_node_h2c", false, node_h2_client);
}

/// mcptap starts while an h2c connection is open (the SDK's client on httpx, HTTP/2 only,
/// initialized and waiting, to hypercorn): the connection is joined mid-way, its header
/// blocks are not decoded, and the calls made on new streams are still reported, each once,
/// with its status, over HTTP/2, and the connection is counted.
#[test]
fn an_h2c_connection_joined_mid_way_is_read_without_its_headers() {
    require_root();
    let dir = scratch("http2_midway");
    let port = port();
    let server = hypercorn_server(&dir, port, None);
    let url = format!("http://127.0.0.1:{port}/mcp");
    let client = HeldClient::start(&dir, |hold| {
        let mut c = h2_client(&url, None);
        c.args(hold);
        c
    });
    let agent = Agent::start(&dir, &[]);
    let mut run = client.release();
    run.server_pid = Some(server.pid());
    drop(server);
    let recs = agent.stop();
    let stop = recs.kind("event");
    let stop = stop
        .iter()
        .find(|e| e["event"] == "agent_stop")
        .expect("agent_stop");
    let midway = &stop["stats"]["http2_midstream"];
    assert!(midway["connections"].as_u64() >= Some(1), "{midway}");
    assert!(
        midway["header_blocks_undecoded"].as_u64() >= Some(1),
        "{midway}"
    );
    // Every call made after the agent came, once, with its status and both ends' views.
    check_calls(&recs, &run, Sides::Both);
    for r in recs.exchanges_of_client(run.pid) {
        assert_eq!(r["http_version"], "2", "{r}");
        assert_eq!(r["server_port"], port, "{r}");
        // The status line was in a header block that was not decoded.
        assert!(r.get("http_status").is_none(), "{r}");
    }
    assert_no_trouble(&recs, run.pid);
}
