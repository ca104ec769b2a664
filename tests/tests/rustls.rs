//! rustls, end to end: an MCP server and client written in the tests on rustls
//! (tokio-rustls under hyper, `src/bin/rustls_mcp.rs`, rustls built optimised as released
//! binaries have it), over HTTPS with HTTP/2 and with HTTP/1.1, and the client against the
//! Python SDK's server (OpenSSL at the other end). Every call once, with its session, status,
//! duration and both ends' views, and each end's TLS library. A stripped copy, whose rustls
//! has no symbols left, is recognised and reported as not readable: in the log, in
//! `mcptap_tls_probes{library="rustls",state="failed"}`, and its connections in
//! `mcptap_tls_undecrypted_streams_total{library="rustls"}`.
//!
//! A Rust binary is probed when a process first runs it: each test runs it once and waits for
//! the agent to say so before its client runs (the first-milliseconds limit the README
//! states, as for Go).

use std::path::{Path, PathBuf};
use std::process::Command;

use mcptap_e2e::*;

const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "mcptap=debug")];

/// The peer, as cargo built it for these tests.
fn peer() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rustls_mcp"))
}

/// Wait until the agent's log says `what` of the file named `name`: that it is probed, or that
/// its library cannot be.
fn wait_examined(agent: &Agent, name: &str, what: &str) {
    // The name whole: `rustls_mcp` is not `rustls_mcp-stripped`.
    let file = format!("/{name} ");
    let seen = || {
        agent
            .log()
            .lines()
            .any(|l| l.contains(what) && l.contains(&file))
    };
    assert!(
        wait_for(30, seen),
        "no {what:?} for {name}:\n{}",
        agent.log()
    );
}

/// Run `bin` as a server for a moment, so that the agent examines it (a process that exits
/// at once is gone before its program is looked at), and wait until it says `what` of it.
fn examine_first(agent: &Agent, bin: &Path, dir: &Path, cert: &Path, what: &str) {
    let server = peer_server(bin, dir, port(), cert, false);
    wait_examined(agent, bin.file_name().unwrap().to_str().unwrap(), what);
    drop(server);
}

/// HTTP/2 over TLS, both ends on rustls.
#[test]
fn rustls_server_and_client_over_h2() {
    require_root();
    let dir = scratch("rustls_h2");
    let (cert, _) = certificate(&dir);
    let bin = peer();
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let server = peer_server(&bin, &dir, port, &cert, false);
    wait_examined(&agent, "rustls_mcp", "probes on");
    let run = run_client(&mut peer_client(&bin, port, &cert, false), &dir);
    assert_eq!(
        run.server_pid,
        Some(server.pid()),
        "whoami names the server"
    );
    drop(server);
    let recs = agent.stop();
    check_peer_run(&recs, &run, port, "2", ("rustls", "rustls"));
}

/// HTTP/1.1 over TLS: the rustls client against the Python SDK's server.
#[test]
fn rustls_client_to_python_sdk_over_http1() {
    require_root();
    let dir = scratch("rustls_http1");
    let (cert, _) = certificate(&dir);
    let bin = peer();
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    examine_first(&agent, &bin, &dir, &cert, "probes on");
    let server = python_https_server("mcp1", &dir, port, &cert, &["--json"]);
    let run = run_client(&mut peer_client(&bin, port, &cert, true), &dir);
    assert_eq!(
        run.server_pid,
        Some(server.pid()),
        "whoami names the server"
    );
    drop(server);
    let recs = agent.stop();
    check_peer_run(&recs, &run, port, "1.1", ("rustls", "openssl"));
}

/// A stripped build: rustls is recognised by its sources' paths, reported as not readable,
/// and its connections counted undecrypted under its name; the other end (rustls with
/// symbols) is still read.
#[test]
fn stripped_rustls_is_recognised_and_counted() {
    require_root();
    let dir = scratch("rustls_stripped");
    let (cert, _) = certificate(&dir);
    let stripped = dir.join("rustls_mcp-stripped");
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(peer())
        .arg(&stripped)
        .status()
        .expect("objcopy (binutils)");
    assert!(status.success());
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    examine_first(&agent, &stripped, &dir, &cert, "rustls is linked in");
    const UNDECRYPTED: &str = "mcptap_tls_undecrypted_streams_total";
    let rustls = [("library", "rustls")];
    let failed = [("library", "rustls"), ("state", "failed")];
    assert!(metric_reaching(&agent, "mcptap_tls_probes", &failed, 1.0) >= 1.0);
    let before = prom_value(&agent.metrics(), UNDECRYPTED, &rustls).unwrap_or(0.0);
    let server = peer_server(&peer(), &dir, port, &cert, false);
    wait_examined(&agent, "rustls_mcp", "probes on");
    let run = run_client(&mut peer_client(&stripped, port, &cert, false), &dir);
    let server_pid = server.pid();
    drop(server);
    let after = metric_reaching(&agent, UNDECRYPTED, &rustls, before + 1.0);
    assert!(after >= before + 1.0, "{UNDECRYPTED} {before} -> {after}");
    let recs = agent.stop();
    assert_eq!(run.server_pid, Some(server_pid), "whoami names the server");
    // The server's end, read, has every call once; the client's end, not read, nothing (so
    // the client is not known by its pid).
    let served: Vec<_> = recs
        .kind("exchange")
        .into_iter()
        .filter(|r| r["server"]["pid"] == server_pid && r["method"] == "tools/call")
        .collect();
    assert_eq!(served.len(), run.calls.len(), "{served:#?}");
    for call in &run.calls {
        let n = served
            .iter()
            .filter(|r| r["tool"] == call.target.as_str() && r["status"] == call.status.as_str())
            .count();
        assert!(n >= 1, "{call:?} not served: {served:#?}");
    }
    for r in served {
        assert_eq!(r["server_tls_library"], "rustls", "{r}");
        assert!(r.get("client_tls_library").is_none(), "{r}");
        assert!(r.get("client_duration_ms").is_none(), "{r}");
        assert!(r["server_duration_ms"].as_f64().is_some(), "{r}");
    }
    assert!(recs.exchanges_of_client(run.pid).is_empty());
}
