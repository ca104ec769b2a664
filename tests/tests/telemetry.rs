//! Telemetry, end to end: the derived signals provoked by real peers, a real Prometheus
//! scraping mcptap and answering the queries people write, a real OTLP receiver decoding the
//! official protobufs over gRPC and HTTP, and privacy of argument and result values.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mcptap_e2e::otlp::{Proto, Receiver, attr_str};
use mcptap_e2e::*;
use serde_json::Value;

fn python(venv: &str) -> std::path::PathBuf {
    peers().join(venv).join("bin/python")
}

fn events<'a>(recs: &'a Records, name: &str) -> Vec<&'a Value> {
    recs.kind("event")
        .into_iter()
        .filter(|e| e["event"] == name)
        .collect()
}

/// Every derived signal, provoked by a real SDK client against a real SDK server: a bad
/// argument, an unknown tool, a retried call, a duplicate read, a changed tools/list, stray
/// stdout, and a hung call; each in the JSON lines and in the metrics.
#[test]
fn derived_signals_from_real_peers() {
    let dir = scratch("signals");
    // A timeout short enough for the 3 s sleep to pass it; a slow interpreter start can make
    // initialize pass it too, which is reported the same way.
    let agent = Agent::start(&dir, &["--response-timeout", "1.5"]);
    let run = run_client(
        &mut python_client(
            "mcp1",
            &python("mcp1"),
            &["--echo", "1", "--signals", "--stray", "--hang", "3"],
        ),
        &dir,
    );
    let metrics = agent.metrics();
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);
    let mine = recs.exchanges_of_client(run.pid);
    let find = |tool: &str| -> Vec<&&Value> { mine.iter().filter(|r| r["tool"] == tool).collect() };

    // A bad argument: checked against the advertised schema, path reported, value not.
    let add: Vec<_> = find("add")
        .into_iter()
        .filter(|r| r["schema_valid"] == false)
        .collect();
    assert_eq!(add.len(), 1, "{mine:#?}");
    assert_eq!(add[0]["schema_error"], "/a: type");
    assert_eq!(add[0]["error_class"], "client_misuse");
    assert!(
        !add[0].to_string().contains("\"one\""),
        "argument value leaked: {}",
        add[0]
    );
    let good_add = find("add")
        .into_iter()
        .find(|r| r["schema_valid"] == true)
        .expect("valid add");
    assert!(good_add.get("error_class").is_none());

    // An unknown tool.
    let unknown = find("no_such_tool");
    assert_eq!(unknown[0]["unknown_tool"], true);
    assert_eq!(unknown[0]["error_class"], "client_misuse");
    assert_eq!(find("echo")[0]["unknown_tool"], false);

    // A retried call: the second identical echo names the first.
    let repeats: Vec<_> = find("echo")
        .into_iter()
        .filter(|r| r.get("repeat_of").is_some())
        .collect();
    assert_eq!(repeats.len(), 1, "{mine:#?}");
    let first = find("echo")
        .into_iter()
        .find(|r| Some(r["id"].to_string().as_str()) == repeats[0]["repeat_of"].as_str())
        .expect("the repeated call");
    assert_eq!(first["request_bytes"], repeats[0]["request_bytes"]);

    // A duplicate read.
    let reads: Vec<_> = mine
        .iter()
        .filter(|r| r["resource_uri"] == "res://greeting")
        .collect();
    assert_eq!(reads.len(), 2);
    assert!(reads[0].get("repeat_of").is_none());
    assert_eq!(reads[1]["repeat_of"], reads[0]["id"].to_string());

    // The tools/list changed after `grow`.
    let drift = events(&recs, "tool_drift");
    assert_eq!(drift.len(), 1, "{drift:#?}");
    assert_eq!(drift[0]["added"], serde_json::json!(["extra"]));
    assert_eq!(drift[0]["server_name"], "mcptap-fixture");

    // Stray stdout.
    assert_eq!(events(&recs, "stream_corruption").len(), 1);

    // The hung call: reported when it passed the timeout, then completed normally.
    let timeouts = events(&recs, "call_timeout");
    let slept: Vec<_> = timeouts.iter().filter(|e| e["tool"] == "sleep").collect();
    assert_eq!(slept.len(), 1, "{timeouts:#?}");
    assert!(
        timeouts
            .iter()
            .all(|e| e["tool"] == "sleep" || e["method"] == "initialize"),
        "{timeouts:#?}"
    );
    assert!(slept[0]["elapsed_ms"].as_f64().unwrap() >= 1500.0);
    let sleep = find("sleep");
    assert_eq!(sleep[0]["status"], "ok");
    assert!(sleep[0]["duration_ms"].as_f64().unwrap() >= 3000.0);

    // Results carry a token estimate; the handshake and the session are reported.
    assert!(find("echo")[0]["result_tokens_est"].as_u64().unwrap() > 0);
    let hs = events(&recs, "handshake");
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0]["status"], "success");
    assert!(hs[0]["duration_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(events(&recs, "session_start").len(), 1);
    let end = events(&recs, "session_end");
    assert_eq!(end.len(), 1);
    assert_eq!(end[0]["reason"], "process_exit");

    // The same signals as metrics.
    for (name, labels, at_least) in [
        (
            "mcp_tool_schema_violations_total",
            vec![("tool_name", "add")],
            1.0,
        ),
        (
            "mcp_tool_schema_checks_total",
            vec![("tool_name", "add")],
            2.0,
        ),
        (
            "mcp_tool_unknown_calls_total",
            vec![("server", "mcptap-fixture")],
            1.0,
        ),
        (
            "mcp_tool_repeated_calls_total",
            vec![("tool_name", "echo")],
            1.0,
        ),
        ("mcp_resource_duplicate_reads_total", vec![], 1.0),
        (
            "mcp_tool_definition_changes_total",
            vec![("change", "added")],
            1.0,
        ),
        (
            "mcp_calls_timed_out_total",
            vec![("method", "tools/call")],
            1.0,
        ),
        (
            "mcp_stream_corruptions_total",
            vec![("reason", "not_json")],
            1.0,
        ),
        ("mcp_handshakes_total", vec![("status", "success")], 1.0),
        (
            "mcp_tool_calls_total",
            vec![("error_class", "client_misuse")],
            2.0,
        ),
        (
            "mcp_tool_calls_total",
            vec![
                ("error_type", "tool_error"),
                ("error_class", "server_failure"),
            ],
            1.0,
        ),
        (
            "mcp_tool_result_tokens_count",
            vec![("tool_name", "echo")],
            1.0,
        ),
    ] {
        let v = prom_value(&metrics, name, &labels).unwrap_or(0.0);
        assert!(
            v >= at_least,
            "{name}{labels:?} = {v}, want >= {at_least}\n{metrics}"
        );
    }
}

/// A client that asks for a protocol version the server does not speak, gets the server's
/// own, and leaves without `notifications/initialized`: a failed handshake.
#[test]
fn handshake_failure_on_version_mismatch() {
    let dir = scratch("handshake_failure");
    let agent = Agent::start(&dir, &[]);
    let script = r#"
import json, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
req = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
       "params": {"protocolVersion": "1999-01-01", "capabilities": {},
                  "clientInfo": {"name": "old-client", "version": "0.1"}}}
p.stdin.write((json.dumps(req) + "\n").encode()); p.stdin.flush()
reply = json.loads(p.stdout.readline())
print(reply["result"]["protocolVersion"])
p.stdin.close(); p.wait()
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(python("mcp1"))
        .arg(fixtures().join("py_server.py"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let served = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_ne!(served, "1999-01-01");
    let metrics_wait = Instant::now() + Duration::from_secs(10);
    let mut metrics = agent.metrics();
    while prom_value(&metrics, "mcp_handshakes_total", &[("status", "failure")]).is_none()
        && Instant::now() < metrics_wait
    {
        std::thread::sleep(Duration::from_millis(200));
        metrics = agent.metrics();
    }
    let recs = agent.stop();
    let hs: Vec<_> = events(&recs, "handshake")
        .into_iter()
        .filter(|e| e["client"]["name"] == "old-client")
        .collect();
    assert_eq!(hs.len(), 1, "{hs:#?}");
    assert_eq!(hs[0]["status"], "failure");
    assert_eq!(hs[0]["reason"], "version_mismatch");
    assert_eq!(hs[0]["requested_version"], "1999-01-01");
    assert_eq!(hs[0]["protocol_version"], served.as_str());
    assert_eq!(
        prom_value(
            &metrics,
            "mcp_handshakes_total",
            &[
                ("status", "failure"),
                ("reason", "version_mismatch"),
                ("client", "old-client")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// A real Prometheus (Debian's) scrapes mcptap while real peers run a known workload; the
/// queries people already write answer with the right counts; promtool finds nothing to
/// complain about in the exposition.
#[test]
fn prometheus_scrapes_and_answers_promql() {
    let dir = scratch("prometheus");
    let agent = Agent::start(&dir, &[]);
    let (_prom, prom_port) = start_prometheus(&dir, agent.port, None);
    assert!(
        wait_for(60, || promql_ok(prom_port, "up{job=\"mcptap\"}")
            .first()
            .is_some_and(|(_, v)| *v == 1.0)),
        "Prometheus never scraped mcptap"
    );
    // A session held open while Prometheus looks, then the workload finishes.
    let mut holder = python_client("mcp1", &python("mcp1"), &["--echo", "5", "--hold", "10"]);
    let holder = holder
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for(30, || promql_ok(prom_port, "sum(mcp_active_sessions)")
            .first()
            .is_some_and(|(_, v)| *v >= 1.0)),
        "mcp_active_sessions never showed the open session"
    );
    let out = holder.wait_with_output().unwrap();
    assert!(out.status.success());
    let first: ClientRun =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap()).unwrap();
    // Wait until a scrape after the session ended is in.
    assert!(
        wait_for(30, || promql_ok(
            prom_port,
            "sum(mcp_session_duration_seconds_count)"
        )
        .first()
        .is_some_and(|(_, v)| *v >= 1.0)),
        "the ended session never reached Prometheus"
    );
    // A second run increments series Prometheus already knows, so rates see it.
    let second = run_client(
        &mut python_client("mcp1", &python("mcp1"), &["--echo", "5"]),
        &dir,
    );
    let calls = |tool: &str| {
        [&first, &second]
            .iter()
            .map(|r| r.calls.iter().filter(|c| c.target == tool).count())
            .sum::<usize>() as f64
    };
    let want_echo = calls("echo");
    assert!(
        wait_for(30, || promql_ok(
            prom_port,
            "sum(mcp_tool_calls_total{tool_name=\"echo\"})"
        )
        .first()
        .is_some_and(|(_, v)| *v == want_echo)),
        "the second run never reached Prometheus"
    );
    assert!(
        wait_for(30, || promql_ok(
            prom_port,
            "sum(mcp_session_duration_seconds_count)"
        )
        .first()
        .is_some_and(|(_, v)| *v >= 2.0)),
        "the second session's end never reached Prometheus"
    );

    let by_tool = promql_ok(
        prom_port,
        "sum(rate(mcp_tool_calls_total[5m])) by (tool_name)",
    );
    for tool in ["echo", "add", "fail", "whoami"] {
        assert!(
            by_tool
                .iter()
                .any(|(l, v)| l.contains(&format!("\"{tool}\"")) && *v > 0.0),
            "{tool}: {by_tool:?}"
        );
    }
    let totals = promql_ok(prom_port, "sum(mcp_tool_calls_total) by (tool_name)");
    let total = |tool: &str| {
        totals
            .iter()
            .find(|(l, _)| l.contains(&format!("\"{tool}\"")))
            .map(|(_, v)| *v)
    };
    assert_eq!(total("echo"), Some(calls("echo")), "{totals:?}");
    assert_eq!(total("fail"), Some(calls("fail")));
    let err_rate = promql_ok(
        prom_port,
        "sum(rate(mcp_tool_calls_total{status=\"error\"}[5m])) by (tool_name) / sum(rate(mcp_tool_calls_total[5m])) by (tool_name)",
    );
    let rate_of = |tool: &str| {
        err_rate
            .iter()
            .find(|(l, _)| l.contains(&format!("\"{tool}\"")))
            .map(|(_, v)| *v)
    };
    assert_eq!(rate_of("fail"), Some(1.0), "{err_rate:?}");
    // No error series for echo: PromQL leaves it out of the ratio.
    assert_eq!(rate_of("echo"), None, "{err_rate:?}");
    let p95 = promql_ok(
        prom_port,
        "histogram_quantile(0.95, sum(rate(mcp_tool_call_duration_seconds_bucket[5m])) by (le, tool_name))",
    );
    let echo_p95 = p95
        .iter()
        .find(|(l, _)| l.contains("\"echo\""))
        .map(|(_, v)| *v)
        .unwrap();
    assert!(echo_p95 > 0.0 && echo_p95 < 5.0, "{p95:?}");
    let active = promql_ok(prom_port, "mcp_active_sessions");
    assert!(
        !active.is_empty() && active.iter().all(|(_, v)| *v == 0.0),
        "{active:?}"
    );
    let median = promql_ok(
        prom_port,
        "histogram_quantile(0.5, rate(mcp_session_duration_seconds_bucket[24h]))",
    );
    assert!(
        median.iter().any(|(_, v)| v.is_finite() && *v > 0.0),
        "{median:?}"
    );
    let reads = promql_ok(
        prom_port,
        "sum(rate(mcp_resource_reads_total[5m])) by (resource_uri)",
    );
    for uri in ["res://greeting", "res://missing"] {
        assert!(reads.iter().any(|(l, _)| l.contains(uri)), "{reads:?}");
    }
    let errors = promql_ok(prom_port, "sum(mcp_errors_total) by (code)");
    assert!(
        errors
            .iter()
            .any(|(l, v)| l.contains("\"code\":\"0\"") && *v >= 1.0),
        "{errors:?}"
    );
    let classes = promql_ok(
        prom_port,
        "sum(mcp_tool_calls_total{status=\"error\"}) by (error_class)",
    );
    for class in ["client_misuse", "server_failure"] {
        assert!(
            classes.iter().any(|(l, v)| l.contains(class) && *v >= 1.0),
            "{classes:?}"
        );
    }

    let text = agent.metrics();
    let check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        check.status.success() && check.stdout.is_empty() && check.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    agent.stop();
}

fn otlp_end_to_end(proto: Proto) {
    let dir = scratch(match proto {
        Proto::Grpc => "otlp_grpc",
        Proto::Http => "otlp_http",
    });
    let receiver = Receiver::start(proto);
    let endpoint = receiver.endpoint();
    let agent = Agent::start_with_env(
        &dir,
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-protocol",
            match proto {
                Proto::Grpc => "grpc",
                Proto::Http => "http/protobuf",
            },
        ],
        &[
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ("OTEL_SERVICE_NAME", "mcptap-under-test"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=e2e"),
        ],
    );
    let run = run_client(
        &mut python_client("mcp1", &python("mcp1"), &["--echo", "2", "--signals"]),
        &dir,
    );
    let recs = agent.stop();
    check_calls(&recs, &run, Sides::Both);

    let spans = receiver.spans();
    let mine: Vec<_> = spans
        .iter()
        .filter(|(_, s)| {
            s.attributes.iter().any(|kv| kv.key == "process.pid")
                && (attr_str(&s.attributes, "process.pid") == Some(run.pid.to_string())
                    || attr_str(&s.attributes, "process.pid")
                        == run.server_pid.map(|p| p.to_string()))
        })
        .collect();
    assert!(
        !mine.is_empty(),
        "no spans for the workload: {} spans",
        spans.len()
    );
    let (res, _) = &mine[0];
    assert_eq!(
        attr_str(res, "service.name").as_deref(),
        Some("mcptap-under-test")
    );
    assert_eq!(
        attr_str(res, "deployment.environment").as_deref(),
        Some("e2e")
    );

    // One CLIENT and one SERVER span per call, named "{method} {target}", the server span a
    // child of the client span.
    let fail: Vec<_> = mine
        .iter()
        .filter(|(_, s)| s.name == "tools/call fail")
        .collect();
    assert_eq!(
        fail.len(),
        2,
        "{:?}",
        mine.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
    );
    let client = fail
        .iter()
        .find(|(_, s)| s.kind == 3)
        .expect("CLIENT span")
        .1
        .clone();
    let server = fail
        .iter()
        .find(|(_, s)| s.kind == 2)
        .expect("SERVER span")
        .1
        .clone();
    assert_eq!(server.parent_span_id, client.span_id);
    assert_eq!(server.trace_id, client.trace_id);
    assert!(server.start_time_unix_nano >= client.start_time_unix_nano);
    assert!(server.end_time_unix_nano <= client.end_time_unix_nano);
    for (k, v) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "fail"),
        ("gen_ai.operation.name", "execute_tool"),
        ("network.transport", "pipe"),
        ("error.type", "tool_error"),
    ] {
        assert_eq!(attr_str(&client.attributes, k).as_deref(), Some(v), "{k}");
    }
    assert!(attr_str(&client.attributes, "jsonrpc.request.id").is_some());
    assert!(attr_str(&client.attributes, "mcp.protocol.version").is_some());
    assert_eq!(
        client.status.as_ref().map(|s| s.code),
        Some(2),
        "error status"
    );
    let ok_echo = mine
        .iter()
        .find(|(_, s)| s.name == "tools/call echo")
        .unwrap();
    assert_eq!(ok_echo.1.status.as_ref().map_or(0, |s| s.code), 0);
    // A resource read and a prompt carry their names.
    let read = mine
        .iter()
        .find(|(_, s)| s.name.starts_with("resources/read"))
        .unwrap();
    assert_eq!(
        attr_str(&read.1.attributes, "mcp.resource.uri").as_deref(),
        Some("res://greeting")
    );
    let prompt = mine
        .iter()
        .find(|(_, s)| s.name == "prompts/get greet")
        .unwrap();
    assert_eq!(
        attr_str(&prompt.1.attributes, "gen_ai.prompt.name").as_deref(),
        Some("greet")
    );

    // The traceparent the client put in _meta is the parent of the CLIENT span.
    let traced: Vec<_> = mine
        .iter()
        .filter(|(_, s)| hex(&s.trace_id) == "0af7651916cd43dd8448eb211c80319c")
        .collect();
    assert_eq!(traced.len(), 2, "both spans of the traced call");
    let c = traced.iter().find(|(_, s)| s.kind == 3).unwrap();
    assert_eq!(hex(&c.1.parent_span_id), "b7ad6b7169203331");

    // Metrics: the convention histograms with their units and bucket advice, and the signals.
    assert!(
        receiver.wait(15, |r| r.metric("mcp.tool.calls").is_some()),
        "no metrics exported"
    );
    for name in [
        "mcp.client.operation.duration",
        "mcp.server.operation.duration",
    ] {
        let m = receiver
            .metric(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(m.unit, "s");
        let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Histogram(h)) = m.data
        else {
            panic!("{name} is not a histogram")
        };
        let dp = &h.data_points[0];
        assert_eq!(dp.explicit_bounds.first(), Some(&0.0001));
        assert_eq!(dp.explicit_bounds.last(), Some(&300.0));
        for advice in [
            0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ] {
            assert!(
                dp.explicit_bounds.contains(&advice),
                "{name} lacks bucket {advice}"
            );
        }
        assert!(
            h.data_points
                .iter()
                .any(|dp| attr_str(&dp.attributes, "mcp.method.name").as_deref()
                    == Some("tools/call"))
        );
    }
    let calls = receiver.metric("mcp.tool.calls").unwrap();
    let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(sum)) = calls.data else {
        panic!("mcp.tool.calls is not a sum")
    };
    assert!(sum.is_monotonic);
    let fail_calls: f64 = sum
        .data_points
        .iter()
        .filter(|dp| attr_str(&dp.attributes, "gen_ai.tool.name").as_deref() == Some("fail"))
        .map(|dp| match dp.value {
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(
                v,
            )) => v,
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v)) => {
                v as f64
            }
            None => 0.0,
        })
        .sum();
    assert_eq!(fail_calls, 1.0);
    for name in [
        "mcp.client.session.duration",
        "mcp.server.session.duration",
        "mcp.tool.schema_violations",
        "mcp.handshakes",
    ] {
        assert!(receiver.metric(name).is_some(), "{name} missing");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// OTLP over gRPC.
#[test]
fn otlp_grpc_traces_and_metrics() {
    otlp_end_to_end(Proto::Grpc);
}

/// OTLP over HTTP/protobuf.
#[test]
fn otlp_http_traces_and_metrics() {
    otlp_end_to_end(Proto::Http);
}

/// Argument and result values appear nowhere by default; with --payloads they appear with
/// secrets redacted. Every output is searched: JSON lines, spans, Prometheus and OTLP
/// metrics, and the agent's log.
#[test]
fn payloads_are_opt_in_and_redacted() {
    for payloads in [false, true] {
        let dir = scratch(if payloads {
            "payloads_on"
        } else {
            "payloads_off"
        });
        let receiver = Receiver::start(Proto::Http);
        let endpoint = receiver.endpoint();
        let mut args = vec!["--otlp-endpoint", &endpoint];
        if payloads {
            args.push("--payloads");
        }
        let agent = Agent::start_with_env(&dir, &args, &[("OTEL_METRIC_EXPORT_INTERVAL", "500")]);
        let run = run_client(
            &mut python_client("mcp1", &python("mcp1"), &["--echo", "1", "--login"]),
            &dir,
        );
        let metrics = agent.metrics();
        let log = agent.log();
        let recs = agent.stop();
        check_calls(&recs, &run, Sides::Both);
        let jsonl = std::fs::read_to_string(dir.join("out.jsonl")).unwrap();
        let spans = format!("{:?}", receiver.spans());
        let otlp_metrics = receiver.metrics_text();
        assert!(
            !otlp_metrics.is_empty() && otlp_metrics != "[]",
            "no OTLP metrics received"
        );
        let outputs = [
            ("jsonl", &jsonl),
            ("spans", &spans),
            ("metrics", &metrics),
            ("OTLP metrics", &otlp_metrics),
            ("log", &log),
        ];
        for (what, text) in outputs {
            for secret in ["hunter2", "terces-2retnuh", "tok-"] {
                assert!(!text.contains(secret), "{secret} leaked into {what}");
            }
        }
        let login = recs
            .exchanges_of_client(run.pid)
            .into_iter()
            .find(|r| r["tool"] == "login")
            .unwrap()
            .clone();
        // The URI that carried credentials is reported without them (check_calls found it
        // under its trimmed form), whatever --payloads says.
        assert!(
            recs.exchanges_of_client(run.pid)
                .iter()
                .any(|r| r["resource_uri"] == "res://missing/x"),
            "trimmed resource URI"
        );
        if payloads {
            assert_eq!(login["arguments"]["user"], "alice");
            assert_eq!(login["arguments"]["password"], "[REDACTED]");
            let result = login["result"].to_string();
            assert!(
                result.contains("[REDACTED]") && result.contains("alice"),
                "{result}"
            );
            assert!(spans.contains("gen_ai.tool.call.arguments"));
            assert!(spans.contains("alice"));
        } else {
            assert!(login.get("arguments").is_none() && login.get("result").is_none());
            for (what, text) in outputs {
                assert!(
                    !text.contains("alice"),
                    "argument value in {what} without --payloads"
                );
                assert!(
                    !text.contains("hello 0"),
                    "argument value in {what} without --payloads"
                );
            }
        }
    }
}
