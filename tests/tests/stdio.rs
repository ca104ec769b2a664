//! stdio MCP, end to end: real SDK clients and servers, the real kernel, the real agent.

use std::process::{Command, Stdio};
use std::time::Duration;

use mcptap_e2e::*;

fn python(venv: &str) -> std::path::PathBuf {
    peers().join(venv).join("bin/python")
}

/// mcp 1.x (FastMCP) client and server: initialize handshake, both ends named.
#[test]
fn python_mcp1_fastmcp_over_pipes() {
    let dir = scratch("python_mcp1");
    let agent = Agent::start(&dir, &[]);
    let run = run_client(
        &mut python_client("mcp1", &python("mcp1"), &["--echo", "5", "--stray"]),
        &dir,
    );
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);

    // The `stray` tool wrote a debug line to fd 1, the transport on mcp 1.x: reported once as
    // corruption of that session (both ends saw it), and the next call still correlated.
    let session = format!("stdio:{}-{}", run.pid, run.server_pid.unwrap());
    let corrupt: Vec<_> = recs
        .kind("event")
        .into_iter()
        .filter(|e| e["event"] == "stream_corruption" && e["session"] == session.as_str())
        .collect();
    assert_eq!(corrupt.len(), 1, "{corrupt:#?}");
    assert_eq!(corrupt[0]["bytes"], "debug: stray output from a tool".len());
    assert_eq!(corrupt[0]["reason"], "not_json");

    let init: Vec<_> = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .filter(|r| r["method"] == "initialize")
        .collect();
    assert_eq!(init.len(), 1, "{init:#?}");
    let i = init[0];
    assert_eq!(i["status"], "ok");
    assert_eq!(i["transport"], "stdio");
    assert_eq!(i["server"]["name"], "mcptap-fixture");
    assert_eq!(i["client"]["name"], "mcp");
    assert_eq!(
        i["protocol_version"].as_str(),
        run.protocol_version.as_deref()
    );
    assert_eq!(i["client"]["comm"], "python");
    assert!(i["client"]["exe"].as_str().unwrap().contains("python"));
    assert_eq!(
        i["session"],
        format!("stdio:{}-{}", run.pid, run.server_pid.unwrap()).as_str()
    );
    // notifications/initialized is reported once although both ends saw it.
    let n: Vec<_> = recs
        .kind("notification")
        .into_iter()
        .filter(|r| r["client"]["pid"] == run.pid && r["method"] == "notifications/initialized")
        .collect();
    assert_eq!(n.len(), 1, "{n:#?}");
    assert_eq!(n[0]["from"], "client");
}

/// mcp 2.x: protocol 2026-07-28, no initialize; identities come from `_meta`.
#[test]
fn python_mcp2_modern_protocol_over_pipes() {
    let dir = scratch("python_mcp2");
    let agent = Agent::start(&dir, &[]);
    let run = run_client(
        &mut python_client("mcp2", &python("mcp2"), &["--echo", "5"]),
        &dir,
    );
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    assert_eq!(run.protocol_version.as_deref(), Some("2026-07-28"));
    let mine = recs.exchanges_of_client(run.pid);
    assert!(mine.iter().all(|r| r["method"] != "initialize"));
    let call = mine
        .iter()
        .find(|r| r["tool"] == "echo")
        .expect("an echo call");
    assert_eq!(call["protocol_version"], "2026-07-28");
    assert_eq!(call["client"]["name"], "mcp");
    assert_eq!(call["server"]["name"], "mcptap-fixture");
}

/// The TypeScript SDK client spawns server-everything over Unix socketpairs, not pipes.
#[test]
fn typescript_sdk_and_server_everything_over_socketpairs() {
    let dir = scratch("node_everything");
    let agent = Agent::start(&dir, &[]);
    let run = run_client(&mut node_client(&["--echo", "5"]), &dir);
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    let init = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .find(|r| r["method"] == "initialize")
        .expect("initialize");
    assert_eq!(init["client"]["name"], "mcptap-e2e-node");
    assert_eq!(init["server"]["name"], "mcp-servers/everything");
    assert_eq!(init["transport"], "stdio");
}

/// A 1 MiB argument and a 4 MiB result (an 8 MiB write from the Python server) arrive
/// intact, correlated, with nothing lost or truncated in the kernel.
#[test]
fn one_mib_argument_and_four_mib_result_are_captured_intact() {
    let dir = scratch("large_messages");
    let agent = Agent::start(&dir, &[]);
    let run = run_client(
        &mut python_client(
            "mcp2",
            &python("mcp2"),
            &[
                "--echo",
                "1",
                "--big-arg",
                "1048576",
                "--big-result",
                "4194304",
            ],
        ),
        &dir,
    );
    let node = run_client(
        &mut node_client(&["--echo", "1", "--big-arg", "1048576"]),
        &dir,
    );
    let log = agent.log();
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    check_calls(&recs, &node, Sides::Both);
    let big_arg = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .find(|r| r["tool"] == "echo" && r["request_bytes"].as_u64().unwrap() > 1 << 20)
        .expect("the 1 MiB echo");
    assert!(
        big_arg["response_bytes"].as_u64().unwrap() > 1 << 20,
        "{big_arg}"
    );
    let big_result = recs
        .exchanges_of_client(run.pid)
        .into_iter()
        .find(|r| r["tool"] == "big")
        .expect("the 4 MiB result");
    assert!(
        big_result["response_bytes"].as_u64().unwrap() > 4 << 20,
        "{big_result}"
    );
    assert!(
        recs.exchanges_of_client(node.pid)
            .iter()
            .any(|r| r["tool"] == "echo" && r["request_bytes"].as_u64().unwrap() > 1 << 20),
        "node's 1 MiB echo over a socketpair"
    );
    let losses: Vec<_> = recs
        .kind("event")
        .into_iter()
        .filter(|e| {
            e["event"] == "kernel_loss"
                || e["event"] == "stream_gap"
                || e["event"] == "message_truncated"
        })
        .collect();
    assert!(losses.is_empty(), "{losses:#?}\n{log}");
}

/// Watching every process, a pipe of JSON log lines and plain HTTP (python3 -m http.server
/// serving curl) produce no MCP records.
#[test]
fn unrelated_processes_produce_no_records() {
    let dir = scratch("unrelated");
    let agent = Agent::start(&dir, &[]);
    let mut log_pipe = Command::new("sh")
        .arg("-c")
        .arg(r#"python3 -c 'import json,sys
for i in range(300): print(json.dumps({"level":"info","msg":"tick","i":i}), flush=True)' | cat > /dev/null"#)
        .spawn()
        .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ok = false;
    for _ in 0..100 {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/")])
            .output()
            .unwrap();
        if out.status.success() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "http.server did not answer");
    for _ in 0..20 {
        assert!(
            Command::new("curl")
                .args([
                    "-sf",
                    "-o",
                    "/dev/null",
                    &format!("http://127.0.0.1:{port}/")
                ])
                .status()
                .unwrap()
                .success()
        );
    }
    assert!(log_pipe.wait().unwrap().success());
    let server_pid = server.id();
    let _ = server.kill();
    let _ = server.wait();
    let recs = agent.stop();
    let mcp: Vec<_> = recs
        .0
        .iter()
        .filter(|r| r["kind"] == "exchange" || r["kind"] == "notification")
        .collect();
    assert!(mcp.is_empty(), "records from non-MCP traffic: {mcp:#?}");
    assert!(recs.mentioning(server_pid).is_empty());
    let corrupt: Vec<_> = recs
        .kind("event")
        .into_iter()
        .filter(|e| e["event"] == "stream_corruption")
        .collect();
    assert!(corrupt.is_empty(), "{corrupt:#?}");
    // The streams were recognised as not MCP, and the kernel stopped shipping them.
    let stop = recs
        .kind("event")
        .into_iter()
        .find(|e| e["event"] == "agent_stop")
        .expect("agent_stop summary");
    let rejected = &stop["stats"]["streams_rejected"];
    assert!(
        rejected["json_not_jsonrpc"].as_u64().unwrap_or(0) >= 1,
        "{stop}"
    );
    assert!(
        rejected["http_not_mcp"].as_u64().unwrap_or(0) >= 1,
        "{stop}"
    );
    assert!(
        stop["stats"]["kernel"]["rejected_fds"].as_u64().unwrap() > 0,
        "{stop}"
    );
}

/// `--record` then `mcptap replay` (no root needed) reproduces the live exchanges exactly.
#[test]
fn replay_reproduces_live_records() {
    let dir = scratch("replay");
    let rec_file = dir.join("capture.mcptap");
    let agent = Agent::start(&dir, &["--record", rec_file.to_str().unwrap()]);
    let run = run_client(
        &mut python_client("mcp1", &python("mcp1"), &["--echo", "3"]),
        &dir,
    );
    let live = agent.stop();
    check_calls(&live, &run, Sides::Both);

    // The recording holds what processes said: only its owner may read it.
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let meta = std::fs::metadata(&rec_file).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "--record file mode"
    );
    assert_eq!(
        std::fs::metadata(dir.join("out.jsonl"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "--jsonl file mode"
    );
    assert_eq!(meta.uid(), 0);
    // Replay needs no privileges: hand the file to `nobody` and replay it as `nobody`, with
    // no capabilities.
    std::os::unix::fs::chown(&rec_file, Some(65534), Some(65534)).unwrap();
    let replayed = dir.join("replayed.jsonl");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ])
        .arg(mcptap_bin())
        .args([
            "replay",
            rec_file.to_str().unwrap(),
            "--quiet",
            "--jsonl",
            "-",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&replayed, &out.stdout).unwrap();
    let again = Records::read(&replayed);
    check_calls(&again, &run, Sides::Both);
    let key = |r: &&serde_json::Value| {
        (
            r["session"].to_string(),
            r["id"].to_string(),
            r["method"].to_string(),
            r["status"].to_string(),
            r["client_duration_ms"].to_string(),
            r["server_duration_ms"].to_string(),
            r["client"].to_string(),
            r["server"].to_string(),
        )
    };
    let mut a: Vec<_> = live.exchanges_of_client(run.pid).iter().map(key).collect();
    let mut b: Vec<_> = again.exchanges_of_client(run.pid).iter().map(key).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

/// Watching only the server (by comm): every call still appears once, with the server's
/// view of its duration, and the client is named from /proc.
#[test]
fn comm_filter_watches_one_side() {
    let dir = scratch("comm_filter");
    // A venv interpreter under another name gets that name as its comm.
    let server_py = peers().join("mcp1").join("bin").join("mcpsrv");
    if !server_py.exists() {
        std::os::unix::fs::symlink(python("mcp1"), &server_py).unwrap();
    }
    let agent = Agent::start(&dir, &["--comm", "mcpsrv"]);
    let run = run_client(
        &mut python_client("mcp1", &server_py, &["--echo", "3"]),
        &dir,
    );
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::ServerOnly);
    let any = recs.exchanges_of_client(run.pid)[0].clone();
    assert_eq!(any["server"]["comm"], "mcpsrv");
    assert_eq!(any["client"]["comm"], "python");
}

/// `--pid` watches a running process and everything it starts: here a launcher that execs the
/// SDK client, which spawns its server. A concurrent session outside that tree is not seen.
#[test]
fn pid_filter_watches_a_process_tree() {
    let dir = scratch("pid_filter");
    let client = python_client("mcp1", &python("mcp1"), &["--echo", "3"]);
    let mut launcher = Command::new("python3")
        .arg("-c")
        .arg("import os, sys; sys.stdin.readline(); os.execv(sys.argv[1], sys.argv[1:])")
        .arg(client.get_program())
        .args(client.get_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = launcher.id().to_string();
    let agent = Agent::start(&dir, &["--pid", &pid]);
    let outsider = std::thread::spawn({
        let dir = dir.clone();
        move || {
            run_client(
                &mut python_client("mcp1", &python("mcp1"), &["--echo", "3"]),
                &dir,
            )
        }
    });
    use std::io::Write as _;
    launcher.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let out = launcher.wait_with_output().unwrap();
    assert!(out.status.success());
    let run: ClientRun =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let outsider = outsider.join().unwrap();
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    assert!(
        recs.mentioning(outsider.pid).is_empty(),
        "the outsider was watched"
    );
    assert!(recs.mentioning(outsider.server_pid.unwrap()).is_empty());
}

/// A `--pid` that does not exist is a clear error before anything is loaded.
#[test]
fn pid_filter_rejects_a_missing_process() {
    require_root();
    let out = Command::new(mcptap_bin())
        .args(["--pid", "4194303", "--listen", "off", "--quiet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pid 4194303: no such process"), "{err}");
}

/// The TypeScript SDK client spawning a stdio server (the Python SDK's, or server-everything
/// on node), with only one of the two watched (by comm): the other end is found from /proc,
/// every call is reported once in one session named after both processes, and the
/// handshake completes, whichever end is the one seen.
fn node_client_one_side_watched(server: Server, watch: Sides) {
    let name = format!("node_{server:?}_{watch:?}").to_lowercase();
    let dir = scratch(&name);
    // Interpreters under other names get those names as their comms.
    let link = |target: &std::path::Path, at: std::path::PathBuf| {
        if !at.exists() {
            std::os::unix::fs::symlink(target, &at).unwrap();
        }
        at
    };
    let node = Command::new("sh")
        .args(["-c", "command -v node"])
        .output()
        .unwrap();
    let node = std::path::PathBuf::from(String::from_utf8(node.stdout).unwrap().trim());
    let client_node = link(&node, peers().join("mcpcli-node"));
    let (runtime, script, server_comm) = match server {
        // (The interpreter's link stays in its venv's bin, where Python finds its venv from.)
        Server::Python => (
            link(&python("mcp1"), peers().join("mcp1/bin/mcpsrv-py")),
            fixtures().join("py_server.py"),
            "mcpsrv-py",
        ),
        Server::Node => (
            link(&node, peers().join("mcpsrv-node")),
            "node_modules/@modelcontextprotocol/server-everything/dist/index.js".into(),
            "mcpsrv-node",
        ),
    };
    let comm = match watch {
        Sides::ServerOnly => server_comm,
        _ => "mcpcli-node",
    };
    let agent = Agent::start(&dir, &["--comm", comm]);
    let runtime = runtime.to_str().unwrap();
    let mut cmd = node_client_of(
        &client_node,
        &script,
        &["--runtime", runtime, "--echo", "3"],
    );
    let run = run_client(&mut cmd, &dir);
    let recs = agent.stop();
    check_calls(&recs, &run, watch);
    let mine = recs.exchanges_of_client(run.pid);
    let sessions: std::collections::BTreeSet<_> = mine
        .iter()
        .map(|r| r["session"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(sessions.len(), 1, "one session: {sessions:?}");
    let label = sessions.into_iter().next().unwrap();
    let (c, s) = (run.pid, run.server_pid.unwrap());
    assert_eq!(label, format!("stdio:{c}-{s}"), "{mine:#?}");
    assert_eq!(mine[0]["client"]["comm"], "mcpcli-node");
    assert_eq!(mine[0]["server"]["comm"], server_comm);
    let hs: Vec<_> = recs
        .kind("event")
        .into_iter()
        .filter(|e| e["event"] == "handshake" && e["session"] == label)
        .collect();
    assert_eq!(hs.len(), 1, "{hs:#?}");
    assert_eq!(hs[0]["status"], "success", "{}", hs[0]);
    let orphans: Vec<_> = recs
        .kind("event")
        .into_iter()
        .filter(|e| e["event"] == "orphan_response")
        .collect();
    assert!(orphans.is_empty(), "{orphans:#?}");
}

/// Which stdio server the TypeScript client spawns.
#[derive(Clone, Copy, Debug)]
enum Server {
    Python,
    Node,
}

#[test]
fn node_client_python_server_watching_only_the_server() {
    node_client_one_side_watched(Server::Python, Sides::ServerOnly);
}

#[test]
fn node_client_python_server_watching_only_the_client() {
    node_client_one_side_watched(Server::Python, Sides::ClientOnly);
}

#[test]
fn node_client_node_server_watching_only_the_server() {
    node_client_one_side_watched(Server::Node, Sides::ServerOnly);
}

#[test]
fn node_client_node_server_watching_only_the_client() {
    node_client_one_side_watched(Server::Node, Sides::ClientOnly);
}
