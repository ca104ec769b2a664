//! Go's `crypto/tls`, end to end: an MCP server and client written in the tests on Go's
//! net/http (tests/fixtures/go_mcp, built by Debian's Go into the peers' cache), over HTTPS
//! with HTTP/2 negotiated (Go's default) and over HTTP/1.1, from a binary with its symbol
//! table and from a stripped one (found by Go's own function table). Every call once, with
//! its session, status, duration and both ends' views, and `go` as both ends' TLS library.
//! A binary replaced at its path (as agent CLIs update themselves) is probed again without a
//! restart.
//!
//! A Go binary is probed when a process first runs it (its inode is then probed for every
//! later process): each test waits for the agent to say so before its client runs, since a
//! process that makes its calls within the first milliseconds of a binary's first run
//! finishes before its probes are set (the limit the README states).

use std::path::PathBuf;

use mcptap_e2e::*;

fn go_bin(name: &str) -> PathBuf {
    let p = peers().join("go").join(name);
    assert!(
        p.is_file(),
        "no Go peer {}: `cargo xtask peers` builds it",
        p.display()
    );
    p
}

/// Wait until the agent's log says the probes are on the file named `name` (its debug log).
fn wait_probed(agent: &Agent, name: &str, times: usize) {
    let probed = || {
        agent
            .log()
            .lines()
            .filter(|l| l.contains("probes on") && l.contains(name))
            .count()
            >= times
    };
    assert!(
        wait_for(30, probed),
        "{name} not probed {times} time(s):\n{}",
        agent.log()
    );
}

const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "mcptap=debug")];

fn run_go(name: &str, bin: &str, http1: bool) {
    require_root();
    let dir = scratch(name);
    let (cert, _) = certificate(&dir);
    let bin = go_bin(bin);
    let port = port();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let server = peer_server(&bin, &dir, port, &cert, http1);
    wait_probed(&agent, bin.file_name().unwrap().to_str().unwrap(), 1);
    let run = run_client(&mut peer_client(&bin, port, &cert, http1), &dir);
    assert_eq!(
        run.server_pid,
        Some(server.pid()),
        "whoami names the server"
    );
    drop(server);
    let recs = agent.stop();
    check_peer_run(
        &recs,
        &run,
        port,
        if http1 { "1.1" } else { "2" },
        ("go", "go"),
    );
}

/// HTTP/2 over TLS, both ends Go, the binary with its symbol table.
#[test]
fn go_server_and_client_over_h2() {
    run_go("gotls_h2", "mcpgo", false);
}

/// HTTP/1.1 over TLS, both ends Go, a stripped position-independent binary.
#[test]
fn stripped_go_over_http1() {
    run_go("gotls_http1", "mcpgo-pie-stripped", true);
}

/// An agent CLI replaced at its path while mcptap runs: the new file (a new inode, here a
/// different build) is examined and probed when it next runs, and its calls are read.
#[test]
fn a_go_binary_replaced_at_its_path_is_probed_again() {
    require_root();
    let dir = scratch("gotls_update");
    let (cert, _) = certificate(&dir);
    let cli = dir.join("agent-cli");
    std::fs::copy(go_bin("mcpgo-stripped"), &cli).unwrap();
    let agent = Agent::start_with_env(&dir, &[], DEBUG);
    let mut runs = Vec::new();
    for (version, build) in [(1, "mcpgo-stripped"), (2, "mcpgo-pie-stripped")] {
        if version == 2 {
            // The update: a new file renamed over the old one, as installers do.
            let next = dir.join("agent-cli.new");
            std::fs::copy(go_bin(build), &next).unwrap();
            std::fs::rename(&next, &cli).unwrap();
        }
        let port = port();
        let server = peer_server(&cli, &dir, port, &cert, false);
        wait_probed(&agent, "agent-cli", version);
        let run = run_client(&mut peer_client(&cli, port, &cert, false), &dir);
        runs.push((run, port));
        drop(server);
    }
    let log = agent.log();
    let recs = agent.stop();
    for (run, port) in &runs {
        check_peer_run(&recs, run, *port, "2", ("go", "go"));
    }
    let examined = log.lines().filter(|l| l.contains("agent-cli: go:")).count();
    assert_eq!(examined, 2, "each file examined once:\n{log}");
}
