//! Server health, end to end: the processes that serve MCP as mcptap samples them (checked
//! against /proc), a server whose tool leaks memory, the HTTP requests a server serves
//! (checked against the server's own access log), a server killed mid-session going down
//! and firing the shipped alert (promtool, on the series mcptap exported), its restart, and
//! the errors of each ended session.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mcptap_e2e::agentic::venv_python;
use mcptap_e2e::*;
use serde_json::Value;

const FIXTURE: &str = "mcptap-fixture";

/// The JSON lines mcptap has written so far (a line still being written is left out).
fn lines_so_far(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// A server metric of the fixture server now.
fn fixture_metric(agent: &Agent, name: &str) -> Option<f64> {
    prom_value(&agent.metrics(), name, &[("server", FIXTURE)])
}

/// VmRSS of `pid` in bytes, and its open fds, from /proc.
fn proc_usage(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (kib * 1024.0, fds as f64)
}

/// Requests by (method, path, status) from uvicorn's access log lines
/// (`... - "POST /mcp HTTP/1.1" 200 OK`).
fn access_log(path: &Path) -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let Some((_, rest)) = line.split_once(" - \"") else {
            continue;
        };
        let Some((request, after)) = rest.split_once("\" ") else {
            continue;
        };
        let mut r = request.split(' ');
        let (method, target) = (r.next().unwrap(), r.next().unwrap());
        let path = target.split('?').next().unwrap().to_string();
        let status = after.split(' ').next().unwrap().to_string();
        *out.entry((method.to_string(), path, status)).or_default() += 1;
    }
    out
}

/// `mcp_http_requests_total` of the fixture server by (method, endpoint, status).
fn http_requests(agent: &Agent) -> BTreeMap<(String, String, String), u64> {
    let text = agent.metrics();
    let label = |l: &str, k: &str| {
        let start = l.find(&format!("{k}=\""))? + k.len() + 2;
        Some(l[start..].split('"').next()?.to_string())
    };
    text.lines()
        .filter(|l| l.starts_with("mcp_http_requests_total{"))
        .filter(|l| l.contains(&format!("server=\"{FIXTURE}\"")))
        .map(|l| {
            let key = (
                label(l, "method").unwrap(),
                label(l, "endpoint").unwrap(),
                label(l, "status").unwrap(),
            );
            (
                key,
                l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64,
            )
        })
        .collect()
}

/// The annotations alerts.yml gives `alert`, rendered for `server` (its double-quoted
/// one-line values and its folded `runbook`).
fn annotations(alert: &str, server: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml"),
    )
    .unwrap();
    let rule: Vec<&str> = text
        .split("- alert: ")
        .find(|r| r.starts_with(&format!("{alert}\n")))
        .unwrap()
        .lines()
        .collect();
    let at = rule
        .iter()
        .position(|l| l.trim() == "annotations:")
        .unwrap();
    let mut out = Vec::new();
    let mut i = at + 1;
    while i < rule.len() {
        let Some((key, value)) = rule[i].trim().split_once(": ") else {
            break;
        };
        let value = if value == ">-" {
            let indent = rule[i].len() - rule[i].trim_start().len();
            let mut folded = Vec::new();
            while i + 1 < rule.len() && rule[i + 1].len() - rule[i + 1].trim_start().len() > indent
            {
                i += 1;
                folded.push(rule[i].trim());
            }
            folded.join(" ")
        } else {
            value.trim_matches('"').to_string()
        };
        assert!(
            !value.contains("$value"),
            "{key}: a value this test cannot render"
        );
        out.push((
            key.to_string(),
            value.replace("{{ $labels.server }}", server),
        ));
        i += 1;
    }
    out
}

/// Run `promtool test rules` on the shipped alerts with `series` (name{labels} → values one
/// second apart) and the alerts expected `firing` and `silent` at the given seconds.
fn promtool_down_test(dir: &Path, series: &[(String, Vec<f64>)], silent: u64, firing: u64) {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let mut yaml = format!(
        "rule_files: [{}]\nevaluation_interval: 1s\ntests:\n  - interval: 1s\n    input_series:\n",
        rules.canonicalize().unwrap().display()
    );
    for (s, values) in series {
        let v: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        yaml += &format!("      - series: '{s}'\n        values: '{}'\n", v.join(" "));
    }
    yaml += &format!(
        "    alert_rule_test:\n      - eval_time: {silent}s\n        alertname: MCPServerDown\n        exp_alerts: []\n      - eval_time: {firing}s\n        alertname: MCPServerDown\n        exp_alerts:\n          - exp_labels: {{severity: critical, server: {FIXTURE}}}\n            exp_annotations:\n"
    );
    for (k, v) in annotations("MCPServerDown", FIXTURE) {
        yaml += &format!(
            "              {k}: {}\n",
            serde_json::to_string(&v).unwrap()
        );
    }
    let path = dir.join("down_test.yml");
    std::fs::write(&path, &yaml).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("promtool (Debian's prometheus package) must be installed");
    assert!(
        out.status.success(),
        "promtool test rules on the recorded series failed:\n{}\n{}\n{yaml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Streamable HTTP server (the Python SDK's, under uvicorn) through its life: its usage as
/// /proc shows it, its memory growing with a leaking tool, its requests as its access log
/// lists them, its kill mid-session (down, and the alert firing on the recorded series), and
/// its restart.
#[test]
fn an_http_server_from_first_call_to_kill_and_restart() {
    let dir = scratch("health_http");
    let agent = Agent::start(&dir, &["--process-interval", "1s"]);
    let port = port();
    let p = port.to_string();
    let server_args = ["--transport", "http", "--port", &p];
    let server = Server::on_port(
        &mut py_fixture("mcp2", "py_server.py", &server_args),
        &dir,
        "server",
        port,
    );
    let spid = server.pid();
    let url = format!("http://127.0.0.1:{port}/mcp");
    let run = run_client(
        &mut py_fixture("mcp2", "py_client.py", &["--echo", "2", "--url", &url]),
        &dir,
    );
    assert_eq!(run.server_pid, Some(spid));

    // Its resident memory and open fds as /proc has them, within a sample (1 s).
    let close = |agent: &Agent| {
        let (rss, fds) = proc_usage(spid);
        let m = fixture_metric(agent, "mcp_server_process_resident_memory_bytes");
        let f = fixture_metric(agent, "mcp_server_process_open_fds");
        m.is_some_and(|m| (m - rss).abs() <= 2.0 * 1048576.0) && f == Some(fds)
    };
    assert!(
        wait_for(20, || close(&agent)),
        "/proc: {:?}; metrics: rss {:?} fds {:?}",
        proc_usage(spid),
        fixture_metric(&agent, "mcp_server_process_resident_memory_bytes"),
        fixture_metric(&agent, "mcp_server_process_open_fds"),
    );
    assert_eq!(fixture_metric(&agent, "mcp_server_up"), Some(1.0));
    assert_eq!(fixture_metric(&agent, "mcp_server_processes"), Some(1.0));
    let sample = lines_so_far(&agent.jsonl)
        .into_iter()
        .rev()
        .find(|r| r["kind"] == "server_process" && r["process"]["pid"] == spid)
        .expect("a server_process line for the server");
    assert_eq!(sample["process"]["name"], FIXTURE);
    let limits = std::fs::read_to_string(format!("/proc/{spid}/limits")).unwrap();
    let soft: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        .unwrap();
    assert_eq!(sample["max_fds"], soft, "{sample}");
    assert!(sample["cpu_seconds"].as_f64().unwrap() > 0.0, "{sample}");

    // A tool that keeps 16 MiB a call: four calls, 64 MiB more.
    let before = fixture_metric(&agent, "mcp_server_process_resident_memory_bytes").unwrap();
    run_client(
        &mut py_fixture(
            "mcp2",
            "py_client.py",
            &["--echo", "0", "--hoard", "4", "--url", &url],
        ),
        &dir,
    );
    assert!(
        wait_for(20, || fixture_metric(
            &agent,
            "mcp_server_process_resident_memory_bytes"
        )
        .is_some_and(|m| m >= before + 60.0 * 1048576.0)),
        "resident memory did not grow by 64 MiB from {before}: {:?} (/proc {:?})",
        fixture_metric(&agent, "mcp_server_process_resident_memory_bytes"),
        proc_usage(spid)
    );

    // Every request the server logged, by method, path and status.
    // uvicorn writes its access log to stdout.
    let log = dir.join("server.out");
    assert!(
        wait_for(20, || http_requests(&agent) == access_log(&log)),
        "mcp_http_requests_total {:?} against the access log {:?}",
        http_requests(&agent),
        access_log(&log)
    );
    assert!(
        access_log(&log)
            .keys()
            .any(|(m, p, s)| m == "POST" && p == "/mcp" && s == "200")
    );

    // A session held open, then the server killed under it.
    let held_log = dir.join("held.log");
    let mut held = py_fixture("mcp2", "py_client.py", &["--hold", "300", "--url", &url])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&held_log).unwrap())
        .spawn()
        .unwrap();
    assert!(
        wait_for(30, || std::fs::read_to_string(&held_log)
            .unwrap_or_default()
            .contains("holding")),
        "the held client never got its session"
    );
    // mcp_server_up as a scrape a second sees it.
    let mut up = Vec::new();
    let scrape = |agent: &Agent, up: &mut Vec<f64>| {
        up.push(fixture_metric(agent, "mcp_server_up").unwrap_or(f64::NAN));
        std::thread::sleep(Duration::from_secs(1));
    };
    for _ in 0..5 {
        scrape(&agent, &mut up);
    }
    let killed_at = up.len();
    // SAFETY: signalling the server this test started.
    unsafe { libc::kill(spid as i32, libc::SIGKILL) };
    let killed = Instant::now();
    // At least 66 scrapes after the kill: the alert's `for: 1m` must pass on what mcptap
    // exported, one scrape a second (each at least a second apart).
    while up.len() < killed_at + 66 || killed.elapsed() < Duration::from_secs(66) {
        scrape(&agent, &mut up);
    }
    let _ = held.kill();
    let _ = held.wait();
    drop(server);
    assert!(up[..killed_at].iter().all(|v| *v == 1.0), "{up:?}");
    let down_from = up
        .iter()
        .position(|v| *v == 0.0)
        .expect("mcp_server_up never fell to 0");
    assert!(
        down_from <= killed_at + 3 && up[down_from..].iter().all(|v| *v == 0.0),
        "down at the kill's next scrapes, and stays down: {up:?}"
    );
    let series = vec![(
        format!("mcp_server_up{{job=\"mcptap\",instance=\"agent\",server=\"{FIXTURE}\"}}"),
        up.clone(),
    )];
    promtool_down_test(
        &dir,
        &series,
        (down_from + 30) as u64,
        (up.len() - 1) as u64,
    );
    let down: Vec<Value> = lines_so_far(&agent.jsonl)
        .into_iter()
        .filter(|r| r["event"] == "server_down")
        .collect();
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(
        (down[0]["server"].as_str(), down[0]["pid"].as_u64()),
        (Some(FIXTURE), Some(spid as u64))
    );

    // Started again: one restart.
    let again = Server::on_port(
        &mut py_fixture("mcp2", "py_server.py", &server_args),
        &dir,
        "server2",
        port,
    );
    run_client(
        &mut py_fixture("mcp2", "py_client.py", &["--echo", "0", "--url", &url]),
        &dir,
    );
    assert!(
        wait_for(20, || fixture_metric(&agent, "mcp_server_restarts_total")
            == Some(1.0)
            && fixture_metric(&agent, "mcp_server_up") == Some(1.0)),
        "{:?} restarts, up {:?}",
        fixture_metric(&agent, "mcp_server_restarts_total"),
        fixture_metric(&agent, "mcp_server_up")
    );
    let restarts: Vec<Value> = lines_so_far(&agent.jsonl)
        .into_iter()
        .filter(|r| r["event"] == "server_restart")
        .collect();
    assert_eq!(restarts.len(), 1, "{restarts:?}");
    assert_eq!(restarts[0]["pid"], again.pid());
    assert_eq!(restarts[0]["restarts"], 1);
    assert!(
        restarts[0]["down_s"].as_f64().unwrap() >= 64.0,
        "{}",
        restarts[0]
    );
    drop(again);
    agent.stop();
}

/// A stdio server: each ended session's errors (the client's own account of its failed
/// calls), the server going down when its client quits, and the next spawn a restart.
#[test]
fn stdio_sessions_count_their_errors_and_each_spawn_restarts_the_server() {
    let dir = scratch("health_stdio");
    let agent = Agent::start(&dir, &["--process-interval", "1s"]);
    let py = venv_python("mcp2");
    let first = run_client(&mut python_client("mcp2", &py, &["--echo", "2"]), &dir);
    let second = run_client(&mut python_client("mcp2", &py, &["--echo", "1"]), &dir);
    let failed = |run: &ClientRun| run.calls.iter().filter(|c| c.status != "ok").count() as u64;
    let (f1, f2) = (failed(&first), failed(&second));
    assert!(f1 >= 3, "the workload fails some calls: {:?}", first.calls);
    let ended = |run: &ClientRun| {
        let session = format!("stdio:{}-{}", run.pid, run.server_pid.unwrap());
        lines_so_far(&agent.jsonl)
            .into_iter()
            .find(|r| r["event"] == "session_end" && r["session"] == session.as_str())
    };
    assert!(
        wait_for(20, || ended(&first).is_some() && ended(&second).is_some()),
        "both sessions end"
    );
    assert_eq!(ended(&first).unwrap()["errors"], f1);
    assert_eq!(ended(&second).unwrap()["errors"], f2);
    let text = agent.metrics();
    let labels = [("transport", "stdio"), ("server", FIXTURE)];
    assert_eq!(
        prom_value(&text, "mcp_session_errors_sum", &labels),
        Some((f1 + f2) as f64)
    );
    assert_eq!(
        prom_value(&text, "mcp_session_errors_count", &labels),
        Some(2.0)
    );
    let recs = agent.stop();
    let down: Vec<&Value> = recs
        .0
        .iter()
        .filter(|r| r["event"] == "server_down")
        .collect();
    let restart: Vec<&Value> = recs
        .0
        .iter()
        .filter(|r| r["event"] == "server_restart")
        .collect();
    let (p1, p2) = (first.server_pid.unwrap(), second.server_pid.unwrap());
    assert_eq!(
        down.iter()
            .map(|r| r["pid"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [p1 as u64, p2 as u64],
        "{down:?}"
    );
    assert_eq!(restart.len(), 1, "{restart:?}");
    assert_eq!(
        (restart[0]["pid"].as_u64(), restart[0]["server"].as_str()),
        (Some(p2 as u64), Some(FIXTURE))
    );
    // Any sample of these short-lived servers (they may end before a sample: this checks
    // only the ones taken, the HTTP test checks that sampling happens) names the MCP name.
    for pid in [p1, p2] {
        let samples: Vec<&Value> = recs
            .kind("server_process")
            .into_iter()
            .filter(|r| r["process"]["pid"] == pid)
            .collect();
        assert!(
            samples.iter().all(|r| r["process"]["name"] == FIXTURE),
            "{samples:?}"
        );
    }
}

/// Requests by endpoint over both HTTP transports (mcp 1.x): the legacy transport's event
/// stream GET and its POSTs to `/messages/` (their session query dropped), and Streamable
/// HTTP's POSTs, GET stream and closing DELETE, counted as the servers' access logs list them.
#[test]
fn http_requests_by_endpoint_over_both_http_transports() {
    let dir = scratch("health_endpoints");
    let agent = Agent::start(&dir, &[]);
    let (sse_port, http_port) = (port(), port());
    let (a, b) = (sse_port.to_string(), http_port.to_string());
    let sse = Server::on_port(
        &mut py_fixture(
            "mcp1",
            "py_server.py",
            &["--transport", "sse", "--port", &a, "--access-log"],
        ),
        &dir,
        "sse",
        sse_port,
    );
    let http = Server::on_port(
        &mut py_fixture(
            "mcp1",
            "py_server.py",
            &["--transport", "http", "--port", &b, "--access-log"],
        ),
        &dir,
        "http",
        http_port,
    );
    let (sse_pid, http_pid) = (sse.pid(), http.pid());
    let sse_url = format!("http://127.0.0.1:{sse_port}/sse");
    let http_url = format!("http://127.0.0.1:{http_port}/mcp");
    for args in [
        vec!["--echo", "3", "--url", &sse_url, "--legacy-sse"],
        vec!["--echo", "3", "--url", &http_url],
    ] {
        run_client(&mut py_fixture("mcp1", "py_client.py", &args), &dir);
    }
    let logged = || {
        let mut all = access_log(&dir.join("sse.out"));
        for (k, n) in access_log(&dir.join("http.out")) {
            *all.entry(k).or_default() += n;
        }
        all
    };
    assert!(
        wait_for(20, || http_requests(&agent) == logged()),
        "mcp_http_requests_total {:?} against the access logs {:?}",
        http_requests(&agent),
        logged()
    );
    let seen = logged();
    let has = |m: &str, p: &str| seen.keys().any(|(a, b, _)| a == m && b == p);
    assert!(
        has("GET", "/sse") && has("POST", "/messages/") && has("POST", "/mcp"),
        "the workload reaches each endpoint: {seen:?}"
    );
    let text = agent.metrics();
    let count = prom_value(
        &text,
        "mcp_http_request_duration_seconds_count",
        &[
            ("server", FIXTURE),
            ("method", "POST"),
            ("endpoint", "/mcp"),
        ],
    );
    let posts: u64 = seen
        .iter()
        .filter(|((m, p, _), _)| m == "POST" && p == "/mcp")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(count, Some(posts as f64), "one duration per request");
    drop((sse, http));
    let recs = agent.stop();
    // The legacy transport's `202 Accepted` bodies are not stream corruption.
    for server in [sse_pid, http_pid] {
        assert_no_trouble(&recs, server);
    }
}
