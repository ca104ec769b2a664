//! Section 8: the userspace pipeline on HTTP/2 and WebSocket. The Python SDK (1.x, the `h2ws`
//! peer) makes the same echo calls over Streamable HTTP on HTTP/1.1 (uvicorn), over HTTP/2
//! with prior knowledge (h2c: hypercorn, httpx with h2) and over WebSocket with
//! permessage-deflate (`websockets` under uvicorn); each workload is recorded
//! (`mcptap --record`, both ends watched) and replayed (`mcptap replay`, as section 4 does)
//! in rounds that rotate which capture goes first: captured MB/s and calls/s on one core,
//! and, with valgrind, the instructions one call costs (callgrind: the replay's, less an
//! empty recording's).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::Scale;
use super::env::{Env, Proc, free_port, wait_for_port};
use super::recfile;
use super::stats::{median, quartiles};
use crate::{root, step};

/// A workload: how its server is started and its client told where to go.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Http1,
    H2c,
    WebSocket,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Http1, Kind::H2c, Kind::WebSocket];

    fn label(self) -> &'static str {
        match self {
            Kind::Http1 => "Streamable HTTP, HTTP/1.1 (uvicorn, httpx)",
            Kind::H2c => "Streamable HTTP, HTTP/2 h2c (hypercorn, httpx with h2)",
            Kind::WebSocket => "WebSocket, permessage-deflate (`websockets` under uvicorn)",
        }
    }

    fn file(self) -> &'static str {
        match self {
            Kind::Http1 => "transport-http1.mcptap",
            Kind::H2c => "transport-h2c.mcptap",
            Kind::WebSocket => "transport-ws.mcptap",
        }
    }

    fn server_args(self) -> &'static [&'static str] {
        match self {
            Kind::Http1 => &["--transport", "http"],
            Kind::H2c => &["--transport", "http", "--hypercorn"],
            Kind::WebSocket => &["--transport", "ws"],
        }
    }

    fn client_args(self, port: u16) -> Vec<String> {
        match self {
            Kind::Http1 => vec!["--url".into(), format!("http://127.0.0.1:{port}/mcp")],
            Kind::H2c => vec![
                "--http2".into(),
                "--url".into(),
                format!("http://127.0.0.1:{port}/mcp"),
            ],
            Kind::WebSocket => vec![
                "--websocket".into(),
                "--url".into(),
                format!("ws://127.0.0.1:{port}/ws"),
            ],
        }
    }

    /// Whether a replayed `tools/call` exchange came over this transport.
    fn is_mine(self, v: &serde_json::Value) -> bool {
        match self {
            Kind::Http1 => v["http_version"] == "1.1",
            Kind::H2c => v["http_version"] == "2",
            Kind::WebSocket => v["transport"] == "websocket",
        }
    }
}

/// One capture and its replays.
pub struct Capture {
    kind: Kind,
    file: PathBuf,
    /// `tools/call`s the client made.
    calls: u64,
    /// Payload bytes of the capture's data records (what the pipeline reads).
    bytes: u64,
    /// Seconds of each timed replay.
    seconds: Vec<f64>,
    /// Instructions of one call's replay (callgrind), if measured.
    instructions: Option<f64>,
}

/// The section's figures.
#[derive(Default)]
pub struct Transports {
    /// Clients one after the other, and echo calls each makes.
    pub clients: u64,
    pub echo: u64,
    pub captures: Vec<Capture>,
    /// Why there are no instruction counts, if there are none.
    pub no_profile: Option<String>,
}

/// Record one workload: the agent watching the `python` processes (the venv's), recording;
/// the server; `clients` clients one after the other, each to its end. Returns the
/// `tools/call`s they made.
fn record(env: &Env, kind: Kind, (clients, echo): (u64, u64), file: &Path) -> Result<u64> {
    let py = env.peers.join("h2ws").join("bin").join("python");
    let fixtures = root().join("tests").join("fixtures");
    let port = free_port();
    let agent_port = free_port();
    let f = file.display().to_string();
    let agent = env.agent(agent_port, &["--record", &f, "--comm", "python"])?;
    let server = Proc::quiet(
        Command::new(&py)
            .arg(fixtures.join("py_server.py"))
            .args(kind.server_args())
            .args(["--port", &port.to_string()]),
    )?;
    let result = (|| {
        if !wait_for_port(port, Duration::from_secs(30), Duration::from_millis(50)) {
            bail!("the {kind:?} server did not listen");
        }
        let mut calls = 0;
        for _ in 0..clients {
            let out = Command::new(&py)
                .arg(fixtures.join("py_client.py"))
                .args(["--echo", &echo.to_string()])
                .args(kind.client_args(port))
                .stderr(Stdio::piped())
                .output()
                .context("running py_client.py")?;
            if !out.status.success() {
                bail!(
                    "py_client.py over {kind:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            calls += v["calls"].as_array().map_or(0, |c| {
                c.iter().filter(|c| c["method"] == "tools/call").count()
            }) as u64;
        }
        Ok(calls)
    })();
    server.stop();
    agent.stop();
    result
}

/// One replay: (seconds, `tools/call` exchanges over `kind`'s transport it reported).
fn replay_once(mcptap: &Path, file: &Path, kind: Kind) -> Result<(f64, u64)> {
    let t = Instant::now();
    let out = Command::new(mcptap)
        .args(["replay", file.to_str().unwrap(), "--quiet", "--jsonl", "-"])
        .output()?;
    let seconds = t.elapsed().as_secs_f64();
    let mut calls = 0;
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        if v["kind"] == "exchange" && v["method"] == "tools/call" && kind.is_mine(&v) {
            calls += 1;
        }
    }
    Ok((seconds, calls))
}

/// Instructions callgrind counts for `mcptap replay FILE`.
fn instructions(env: &Env, file: &Path) -> Result<Option<f64>> {
    let out = env.dir.join("transport-callgrind.out");
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            &format!("--callgrind-out-file={}", out.display()),
        ])
        .arg(&env.mcptap)
        .args(["replay", file.to_str().unwrap(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&out)?;
    // "summary: N" (or "totals: N") holds the program's instructions.
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok()))
}

/// Record the three workloads and replay them.
pub fn measure(env: &Env, s: &Scale) -> Result<Transports> {
    // hypercorn ends an HTTP/2 connection after 1,000 requests (its keep_alive_max_requests),
    // and httpx does not carry on over a new one: several clients of 750 calls each.
    let (clients, echo) = if s.smoke { (1, 20) } else { (4, 750) };
    let mut t = Transports {
        clients,
        echo,
        ..Default::default()
    };
    for kind in Kind::ALL {
        step(&format!(
            "bench 8: recording {clients} x {echo} echo calls of the Python SDK over {kind:?}"
        ));
        let file = env.dir.join(kind.file());
        let calls = record(env, kind, (clients, echo), &file)
            .with_context(|| format!("recording the {kind:?} workload"))?;
        let bytes = recfile::payload_bytes(&file)?;
        // One untimed replay first (it pages the binary in), which also checks the capture:
        // every call, over the transport it was made on.
        let (_, seen) = replay_once(&env.mcptap, &file, kind)?;
        if seen < calls {
            bail!(
                "the replay of the {kind:?} capture reported {seen} tools/call exchanges over it of the {calls} made"
            );
        }
        t.captures.push(Capture {
            kind,
            file,
            calls,
            bytes,
            seconds: Vec::new(),
            instructions: None,
        });
    }
    let rounds = if s.smoke { 1 } else { s.replay_rounds };
    for round in 0..rounds {
        step(&format!(
            "bench 8: replaying the three captures, round {} of {rounds}",
            round + 1
        ));
        for k in 0..t.captures.len() {
            let c = &mut t.captures[(k + round) % Kind::ALL.len()];
            let (secs, _) = replay_once(&env.mcptap, &c.file, c.kind)?;
            c.seconds.push(secs);
        }
    }
    if s.smoke {
        return Ok(t);
    }
    let have_valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_valgrind {
        t.no_profile = Some("valgrind is not installed".into());
        return Ok(t);
    }
    step("bench 8: counting the replays' instructions with callgrind");
    // An empty recording (the magic alone): the replay's start and stop, taken off each.
    let empty = env.dir.join("transport-empty.mcptap");
    std::fs::write(&empty, b"MCPTAP\x00\x01")?;
    let Some(base) = instructions(env, &empty)? else {
        t.no_profile = Some("callgrind did not replay an empty recording".into());
        return Ok(t);
    };
    for c in &mut t.captures {
        c.instructions = instructions(env, &c.file)?.map(|n| (n - base) / c.calls as f64);
    }
    Ok(t)
}

/// The report's section 8; `pipe` is section 4's replay (messages, seconds) when this run
/// measured it.
pub fn write_section(md: &mut String, t: &Transports, pipe: Option<(u64, f64)>) {
    let _ = writeln!(md, "\n## 8. HTTP/2 and WebSocket through the pipeline\n");
    let rounds = t.captures.first().map_or(0, |c| c.seconds.len());
    let _ = writeln!(
        md,
        "The Python SDK 1.x (the `h2ws` peer: `tests/fixtures/py_client.py` against `py_server.py`), {} clients one after the other, each making {} echo calls and a few others over each transport (hypercorn ends an HTTP/2 connection after 1,000 requests), recorded by `mcptap --record` watching the `python` processes (both ends), then replayed with `mcptap replay --quiet --jsonl -` on one core as section 4 does: once untimed (which also checks that every `tools/call` comes back, over the transport it was made on), then {rounds} rounds, each replaying the three captures in an order that rotates. MB/s counts the captured payload (what the kernel shipped and the pipeline reads: both ends' bytes; WebSocket messages compressed, as on the wire); calls/s counts the client's `tools/call`s (each seen at both ends). Instructions a call: callgrind's count for the replay, less that of an empty recording (start-up and stop), over the calls: no noise, unlike the times.\n",
        t.clients, t.echo
    );
    let _ = writeln!(
        md,
        "| capture | tools/call | captured MB | captured B a call | replay s (median) | MB/s [quartiles] | calls/s [quartiles] | instructions a call |\n|---|---|---|---|---|---|---|---|"
    );
    for c in &t.captures {
        let mbs: Vec<f64> = c.seconds.iter().map(|s| c.bytes as f64 / 1e6 / s).collect();
        let cps: Vec<f64> = c.seconds.iter().map(|s| c.calls as f64 / s).collect();
        let (qm, qc) = (quartiles(mbs.clone()), quartiles(cps.clone()));
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.0} | {:.3} | {:.1} [{:.1}–{:.1}] | {:.0} [{:.0}–{:.0}] | {} |",
            c.kind.label(),
            c.calls,
            c.bytes as f64 / 1e6,
            c.bytes as f64 / c.calls.max(1) as f64,
            median(c.seconds.clone()),
            median(mbs),
            qm.0,
            qm.1,
            median(cps),
            qc.0,
            qc.1,
            c.instructions
                .map_or_else(|| "–".to_string(), |n| format!("{:.0}", n)),
        );
    }
    if let Some(why) = &t.no_profile {
        let _ = writeln!(md, "\n(No instruction counts: {why}.)");
    }
    if let Some((messages, seconds)) = pipe
        && messages > 0
    {
        let _ = writeln!(
            md,
            "\nIn the same run, section 4's 200 B pipe capture (stdio framing): {:.0} messages/s.",
            messages as f64 / seconds
        );
    }
}
