//! Bun's BoringSSL, end to end: Bun links BoringSSL statically and exports none of its names,
//! so mcptap finds `SSL_read`, `SSL_write` and `SSL_do_handshake` by their error-reporting
//! sites. The TypeScript SDK's client under Bun calls the Python SDK's server over HTTPS, and
//! the Python SDK's client calls an MCP server on `Bun.serve` with TLS (the TypeScript SDK's
//! web-standard Streamable HTTP transport): every call once, both ends' views, each end's TLS
//! library.

use std::path::PathBuf;
use std::process::Command;

use mcptap_e2e::*;

const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "mcptap=debug")];

fn bun() -> PathBuf {
    let p = peers().join("node/node_modules/bun/bin/bun.exe");
    assert!(
        p.is_file(),
        "no Bun at {}: `cargo xtask peers` installs it",
        p.display()
    );
    p
}

/// Wait until the agent has probed the peers' Bun (a process running it is there): a process
/// that makes its calls within the first milliseconds of a binary's first run would finish
/// before its probes are set.
fn wait_probed(agent: &Agent) {
    let bun = bun();
    let path = bun.to_str().unwrap();
    let probed = || {
        agent
            .log()
            .lines()
            .any(|l| l.contains("probes on") && l.contains(path))
    };
    assert!(wait_for(30, probed), "{path} not probed:\n{}", agent.log());
}

/// Probe the peers' Bun before a short-lived Bun client runs: a Bun that waits, until probed.
fn probe_bun(agent: &Agent, dir: &std::path::Path) {
    let mut idle = Command::new(bun());
    idle.args(["-e", "await Bun.sleep(60000)"]);
    let idle = Server::start(&mut idle, dir, "idle-bun", || true);
    wait_probed(agent);
    drop(idle);
}

/// The TypeScript SDK's client under Bun, over HTTPS to the Python SDK's server (OpenSSL).
#[test]
fn ts_sdk_client_under_bun_over_https() {
    require_root();
    let dir = scratch("bun_client");
    let (cert, _) = certificate(&dir);
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    probe_bun(&agent, &dir);
    let server = python_https_server("mcp1", &dir, port, &cert, &[]);
    let url = format!("https://127.0.0.1:{port}/mcp");
    let mut c = node_client_of(&bun(), std::path::Path::new("none"), &["--url", &url]);
    c.env("NODE_EXTRA_CA_CERTS", &cert);
    let mut run = run_client(&mut c, &dir);
    run.server_pid = Some(server.pid());
    drop(server);
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    check_session(&recs, &run, "http", false);
    check_tls_libraries(&recs, &run, ("boringssl", "openssl"));
}

/// The Python SDK's client (OpenSSL) over HTTPS to an MCP server on `Bun.serve`.
#[test]
fn python_sdk_client_to_bun_serve_over_https() {
    require_root();
    let dir = scratch("bun_server");
    let (cert, key) = certificate(&dir);
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let node_dir = peers().join("node");
    std::fs::copy(
        fixtures().join("bun_server.mjs"),
        node_dir.join("bun_server.mjs"),
    )
    .expect("copy the Bun server");
    let mut s = Command::new(bun());
    s.current_dir(&node_dir)
        .arg("bun_server.mjs")
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key);
    let server = Server::on_port(&mut s, &dir, "server", port);
    wait_probed(&agent);
    let url = format!("https://127.0.0.1:{port}/mcp");
    let mut c = Command::new(peers().join("mcp1/bin/python"));
    c.arg(fixtures().join("py_client.py"))
        .args(["--echo", "5", "--url", &url])
        .env("SSL_CERT_FILE", &cert);
    let run = run_client(&mut c, &dir);
    assert_eq!(
        run.server_pid,
        Some(server.pid()),
        "whoami names the server"
    );
    drop(server);
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    check_session(&recs, &run, "http", false);
    check_tls_libraries(&recs, &run, ("openssl", "boringssl"));
}
