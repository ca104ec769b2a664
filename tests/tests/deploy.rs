//! The deployment files against a real mcptap and a real Prometheus (Debian's): every PromQL
//! expression of the Grafana dashboard and of the alerting rules runs without error on what
//! mcptap exports, the key panels show the workload, Prometheus loads and evaluates every
//! rule cleanly, the drift alert fires on a real tool-definition change, and the card-number
//! and leak alerts on a real card number in a tool's result that the model is then sent.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use mcptap_e2e::*;
use serde_json::Value;

fn python(venv: &str) -> PathBuf {
    peers().join(venv).join("bin/python")
}

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy")
}

/// A Prometheus HTTP API answer. HTTP/1.0, so the body is never chunked.
fn prom_api(port: u16, path: &str) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to Prometheus");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {buf}"));
    assert_eq!(v["status"], "success", "{path}: {v}");
    v["data"].clone()
}

/// Grafana's template variables as they read with every value selected, and the interval
/// macros as Grafana would fill them in for a short time range at a 1 s scrape interval.
fn substitute(expr: &str) -> String {
    select(expr, ".*", ".*")
}

/// [`substitute`] with one server and one client selected.
fn select(expr: &str, server: &str, client: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "5m")
        .replace("$server", server)
        .replace("$client", client)
}

/// Every (panel title, expr) of a dashboard, rows' nested panels included.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((p["title"].as_str().unwrap_or("").to_string(), e.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// The `expr:` of every rule in a Prometheus rules file: a plain scalar on the key's line,
/// or a block scalar (`|`, `>`, with chomping indicators) made of the lines indented deeper
/// than the key. Quoted plain scalars lose their quotes. No YAML crate is a dependency here,
/// so the caller checks that the count matches the rules.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            i += 1;
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() {
                let l = lines[i];
                let ind = l.len() - l.trim_start().len();
                if !l.trim().is_empty() && ind <= indent {
                    break;
                }
                body.push(l.trim());
                i += 1;
            }
            out.push(body.join("\n").trim().to_string());
        } else {
            let v = rest
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .or_else(|| rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
                .unwrap_or(rest);
            out.push(v.to_string());
            i += 1;
        }
    }
    out
}

#[test]
fn rule_expr_parser_reads_block_and_plain_scalars() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: |\n          sum(x)\n\n          > 0\n        labels:\n          a: b\n      - alert: B\n        expr: 'up == 0'\n      - record: r\n        expr: rate(y[5m])\n";
    assert_eq!(
        rule_exprs(yaml),
        ["sum(x)\n\n> 0", "up == 0", "rate(y[5m])"]
    );
}

/// Whether alert `name` fires for the fixture server (`server="mcptap-fixture"`).
fn firing(prom_port: u16, name: &str) -> bool {
    prom_api(prom_port, "/api/v1/alerts")["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| {
            a["labels"]["alertname"] == name
                && a["labels"]["server"] == "mcptap-fixture"
                && a["state"] == "firing"
        })
}

/// What a key panel's values must satisfy, and how to say it.
type Want = (fn(f64) -> bool, &'static str);

/// The `client` label mcptap gives the exchanges of client `pid`, from its JSON lines while it
/// runs (a line being written is skipped).
fn client_name(jsonl: &Path, pid: u32) -> Option<String> {
    let found = || {
        std::fs::read_to_string(jsonl)
            .ok()?
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|r| r["kind"] == "exchange" && r["client"]["pid"] == pid)
            .and_then(|r| {
                // The metrics' label: the clientInfo name, else the process's comm.
                let c = &r["client"];
                c["name"]
                    .as_str()
                    .filter(|n| !n.is_empty())
                    .or(c["comm"].as_str())
                    .map(str::to_string)
            })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(n) = found() {
            return Some(n);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Panels that must show the workload, by title, and what their values must satisfy. (The
/// "Active sessions" panel is checked on its own: exactly the one session the test holds open
/// while it is open, none once it ended.)
const KEY_PANELS: &[(&str, Want)] = &[
    ("Calls per minute", (|v| v > 0.0, "> 0")),
    (
        "p95 latency by tool",
        (|v| v > 0.0 && v < 60.0, "in (0, 60) s"),
    ),
    ("Error rate", (|v| v > 0.0 && v <= 1.0, "in (0, 1]")),
    ("Tasks by outcome", (|v| v > 0.0, "> 0")),
    ("Hallucinated tools", (|v| v > 0.0 && v <= 1.0, "in (0, 1]")),
    // The fixture's HTTP server lives through the test, sampled every second.
    ("Server up", (|v| v == 1.0, "= 1")),
    ("Server resident memory", (|v| v > 1048576.0, "> 1 MiB")),
    // The agent runs' echo carries a card number and an email address ([`ECHO_FINDINGS`]).
    ("High and critical findings", (|v| v >= 1.0, ">= 1")),
    ("Findings by server", (|v| v >= 1.0, ">= 1")),
];

/// What the agent runs' `echo` carries, so that mcptap finds personal data in the call's
/// arguments and result: a card number that passes the Luhn check (pii, high) and an email
/// address (pii, low), `{n}` the run's number, so that every run's address is new.
const ECHO_FINDINGS: &str = "invoice {n}: card 4111 1111 1111 1111, billing contact dana.whitfield{n}@northwind-logistics.com";

/// Agent runs the test can make: a model asks for `echo` (with [`ECHO_FINDINGS`]), then for a
/// tool it was not offered, then answers.
const AGENT_RUNS: usize = 8;

/// One agent run (the Anthropic client library's tool loop over the fixture server), the
/// `n`-th.
fn agent_run(model: &mcptap_e2e::agentic::Model, dir: &Path, n: usize) {
    use mcptap_e2e::agentic::{agent_loop, drive};
    let task = format!("script:dep{n} go");
    drive(
        &mut agent_loop(model, &["--api", "messages", "--stream"], &[&task]),
        dir,
        "agent_loop",
    );
}

/// What is wrong with the key panels now: one line per panel without a value it must have.
fn key_panel_errors(prom_port: u16, panels: &[(String, String)]) -> Vec<String> {
    let mut errors = Vec::new();
    for (key, (check, want)) in KEY_PANELS {
        let mut found = false;
        for (_, expr) in panels.iter().filter(|(t, _)| t == key) {
            found = true;
            let q = substitute(expr);
            match promql(prom_port, &q) {
                Ok(samples) if samples.iter().any(|(_, v)| check(*v)) => {}
                Ok(samples) => errors.push(format!(
                    "panel {key:?}: no value {want}: {samples:?}\n  {q}"
                )),
                Err(e) => errors.push(format!("panel {key:?}: {e}\n  {q}")),
            }
        }
        if !found {
            errors.push(format!("no panel titled {key:?}"));
        }
    }
    errors
}

/// The "Active sessions" panel with the fixture server selected: its total, when it answers.
fn fixture_sessions(prom_port: u16, active: &str) -> Option<f64> {
    promql(prom_port, &select(active, "mcptap-fixture", ".*"))
        .ok()
        .map(|s| s.iter().map(|(_, v)| v).sum())
}

#[test]
fn dashboard_and_alerts_query_real_mcptap_metrics() {
    let dir = scratch("deploy");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy().join("grafana/mcptap.json")).unwrap(),
    )
    .expect("deploy/grafana/mcptap.json is JSON");
    let panels = dashboard_queries(&dash);
    let rules_path = deploy().join("prometheus/alerts.yml");
    let rules_text = std::fs::read_to_string(&rules_path).unwrap();
    let alerts = rule_exprs(&rules_text);
    let rule_count = rules_text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("- alert:") || t.starts_with("- record:")
        })
        .count();
    assert_eq!(alerts.len(), rule_count, "one expr per rule: {alerts:#?}");
    assert!(rule_count >= 10 && panels.len() >= 10);

    let agent = Agent::start(&dir, &["--process-interval", "1s"]);
    let (_prom, prom_port) = start_prometheus(&dir, agent.port, Some(&rules_path));
    // The fixture server over Streamable HTTP, alive to the end: the server process and
    // HTTP panels show it.
    let http_port = port();
    let hp = http_port.to_string();
    let _http = Server::on_port(
        &mut py_fixture(
            "mcp2",
            "py_server.py",
            &["--transport", "http", "--port", &hp],
        ),
        &dir,
        "http_server",
        http_port,
    );
    let http_url = format!("http://127.0.0.1:{http_port}/mcp");
    let http_run = || {
        run_client(
            &mut py_fixture("mcp2", "py_client.py", &["--echo", "1", "--url", &http_url]),
            &dir,
        )
    };
    http_run();
    assert!(
        wait_for(60, || promql(prom_port, "up{job=\"mcptap\"}")
            .is_ok_and(|s| s.first().is_some_and(|(_, v)| *v == 1.0))),
        "Prometheus never scraped mcptap"
    );

    // A session held open (with a bad argument, an unknown tool, a retried call, a duplicate
    // read and a tool-definition change), then a second run so that rates see increments.
    let active = panels
        .iter()
        .find(|(t, _)| t == "Active sessions")
        .map(|(_, e)| e.clone())
        .expect("an \"Active sessions\" panel");
    let holder = python_client(
        "mcp1",
        &python("mcp1"),
        &["--echo", "3", "--signals", "--hold", "8"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // While it is held, the panel counts exactly that one session of the fixture server.
    assert!(
        wait_for(30, || fixture_sessions(prom_port, &active) == Some(1.0)),
        "the Active sessions panel never showed the one open session (last: {:?}): {}",
        fixture_sessions(prom_port, &active),
        select(&active, "mcptap-fixture", ".*")
    );
    let out = holder.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: ClientRun =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    let second = run_client(
        &mut python_client("mcp1", &python("mcp1"), &["--echo", "3"]),
        &dir,
    );
    // A model's tool calls over MCP, for the agent behaviour row (more runs below, to keep
    // fresh increments in the panels' window).
    let scripts: serde_json::Map<String, Value> = (0..AGENT_RUNS)
        .map(|n| {
            let text = ECHO_FINDINGS.replace("{n}", &n.to_string());
            let steps = serde_json::json!([
                {"tools": [{"name": "echo", "arguments": {"text": text}}]},
                {"tools": [{"name": "not_offered", "arguments": {}}]},
                {"text": "done"}
            ]);
            (format!("dep{n}"), steps)
        })
        .collect();
    let model = mcptap_e2e::agentic::Model::start(&dir, Value::Object(scripts), None);
    agent_run(&model, &dir, 0);
    let tool_calls = (first.calls.iter().chain(&second.calls))
        .filter(|c| c.method == "tools/call")
        .count() as f64;
    assert!(
        wait_for(30, || promql_ok(prom_port, "sum(mcp_tool_calls_total)")
            .first()
            .is_some_and(|(_, v)| *v >= tool_calls)),
        "the workload's {tool_calls} tool calls never reached Prometheus"
    );
    // Both sessions ended: the panel shows none open for the fixture server (the gauge stays,
    // at 0).
    assert!(
        wait_for(30, || fixture_sessions(prom_port, &active) == Some(0.0)),
        "the Active sessions panel still counts the ended sessions (last: {:?}): {}",
        fixture_sessions(prom_port, &active),
        select(&active, "mcptap-fixture", ".*")
    );

    // The key panels show the workload. Their rates need two scrapes across an increase
    // inside the 1-minute window, which a slow machine reaches later than a fast one: poll
    // for up to 90 s instead of looking once. Should the window slide past the workload's
    // increments first, one more short run every 20 s puts fresh ones in it.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut fed = Instant::now();
    let mut more_runs = 0;
    let key_errors = loop {
        let errors = key_panel_errors(prom_port, &panels);
        if errors.is_empty() || Instant::now() > deadline {
            break errors;
        }
        if fed.elapsed() > Duration::from_secs(20) {
            run_client(
                &mut python_client("mcp1", &python("mcp1"), &["--echo", "1"]),
                &dir,
            );
            more_runs += 1;
            agent_run(&model, &dir, more_runs.min(AGENT_RUNS - 1));
            http_run();
            fed = Instant::now();
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(
        key_errors.is_empty(),
        "the key panels did not show the workload within 90 s ({more_runs} extra runs); last results:\n{}",
        key_errors.join("\n")
    );

    // Every dashboard query runs.
    let mut errors = Vec::new();
    for (title, expr) in &panels {
        let q = substitute(expr);
        if let Err(e) = promql(prom_port, &q) {
            errors.push(format!("panel {title:?}: {e}\n  {q}"));
        }
    }
    // The template variables' label_values(METRIC, LABEL) list what the workload made.
    for v in dash["templating"]["list"].as_array().unwrap() {
        let Some(q) = v["definition"]
            .as_str()
            .and_then(|d| d.strip_prefix("label_values("))
            .and_then(|d| d.strip_suffix(')'))
        else {
            continue;
        };
        let (metric, label) = q.rsplit_once(',').unwrap();
        let q = format!(
            "group by ({}) ({})",
            label.trim(),
            substitute(metric.trim())
        );
        match promql(prom_port, &q) {
            Ok(s) if !s.is_empty() => {}
            other => errors.push(format!("variable {}: {other:?}\n  {q}", v["name"])),
        }
    }
    // With one server and one client selected, every panel that filters by them still shows
    // the workload: a filter on a label the metric lacks would leave it empty.
    // The client's name as mcptap labels it (its clientInfo name), from mcptap's own records
    // of this test's client: other MCP traffic on the host may carry other names.
    let client =
        client_name(&agent.jsonl, first.pid).expect("mcptap's JSON lines name the test's client");
    for (title, expr) in &panels {
        if !expr.contains("$server") && !expr.contains("$client") {
            continue;
        }
        let q = select(expr, "mcptap-fixture", &client);
        match promql(prom_port, &q) {
            Ok(s) if !s.is_empty() => {}
            other => errors.push(format!(
                "panel {title:?} with server mcptap-fixture and client {client}: {other:?}\n  {q}"
            )),
        }
    }
    // Every alert expression runs.
    for expr in &alerts {
        if let Err(e) = promql(prom_port, expr) {
            errors.push(format!("alert expr: {e}\n  {expr}"));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // Prometheus itself loaded every rule and evaluates it cleanly on mcptap's data.
    let groups = prom_api(prom_port, "/api/v1/rules");
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(rules.len(), rule_count, "{groups}");
    for r in &rules {
        assert_eq!(r["health"], "ok", "rule {}: {}", r["name"], r["lastError"]);
    }
    // The workload changed the fixture's tools/list once (`grow`): a series born at 1,
    // which the drift alert must catch without a second change.
    assert!(
        wait_for(30, || {
            prom_api(prom_port, "/api/v1/alerts")["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| {
                    a["labels"]["alertname"] == "MCPToolDefinitionsChanged"
                        && a["labels"]["server"] == "mcptap-fixture"
                        && a["labels"]["change"] == "added"
                        && a["state"] == "firing"
                })
        }),
        "MCPToolDefinitionsChanged did not fire: {}",
        prom_api(prom_port, "/api/v1/alerts")
    );
    // The agent runs' echo carried a card number through the fixture server, and the model's
    // next request carried the result back to the model.
    for alert in ["MCPPersonalDataInFlight", "MCPSecretLeakToModel"] {
        assert!(
            wait_for(30, || firing(prom_port, alert)),
            "{alert} did not fire: {}",
            prom_api(prom_port, "/api/v1/alerts")
        );
    }
    agent.stop();
}
