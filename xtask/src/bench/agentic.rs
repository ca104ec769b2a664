//! Section 4, second part: the agentic layer's cost. A real agent run is recorded (the
//! Anthropic client library's tool loop, streamed, several tasks at once, each turn carrying
//! the whole conversation again, over stdio MCP, against the scripted model server) and
//! replayed on one core: model calls per second, and bytes of model traffic (request and
//! reply bodies) per second.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use super::Scale;
use super::env::{Env, free_port, wait_for_port};
use super::stats::median;
use crate::{root, step};

/// What the replays of the agent run measured.
#[derive(Default)]
pub struct ModelTraffic {
    /// Tasks, turns per task and bytes of each tool result of the run.
    pub tasks: usize,
    pub turns: usize,
    pub result_bytes: usize,
    /// Model calls the replay reported.
    pub calls: u64,
    /// Request and reply body bytes of those calls.
    pub bytes: u64,
    /// Exchanges the replay linked to a model's tool call.
    pub linked: u64,
    /// Median seconds of a replay.
    pub seconds: f64,
}

/// The run's script: every task asks for `big` (a result of `size` characters) each turn,
/// then answers; the conversation, and so each request, grows by a result a turn.
fn script(tasks: usize, turns: usize, size: usize) -> serde_json::Value {
    let mut scripts = serde_json::Map::new();
    for t in 0..tasks {
        let mut steps: Vec<serde_json::Value> = (0..turns - 1)
            .map(|_| serde_json::json!({"tools": [{"name": "big", "arguments": {"size": size}}]}))
            .collect();
        steps.push(serde_json::json!({"text": "done"}));
        scripts.insert(format!("t{t}"), serde_json::Value::Array(steps));
    }
    serde_json::json!({ "scripts": scripts })
}

/// Record the agent run into the bench's directory; returns the capture.
fn record(env: &Env, (tasks, turns, size): (usize, usize, usize)) -> Result<PathBuf> {
    let fixtures = root().join("tests").join("fixtures");
    let script_file = env.dir.join("agentic-script.json");
    std::fs::write(&script_file, script(tasks, turns, size).to_string())?;
    let model_port = free_port();
    let mut model = Command::new("python3")
        .arg(fixtures.join("model_server.py"))
        .arg("--script")
        .arg(&script_file)
        .arg("--log")
        .arg(env.dir.join("agentic-model.jsonl"))
        .args(["--port", &model_port.to_string(), "--event-delay", "0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.dir.join("agentic-model.log"))?)
        .spawn()
        .context("starting the scripted model server")?;
    let ready = wait_for_port(
        model_port,
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(50),
    );
    let file = env.dir.join("agentic.mcptap");
    let result = (|| {
        if !ready {
            bail!(
                "the scripted model server did not listen; see {}",
                env.dir.join("agentic-model.log").display()
            );
        }
        // The model server runs as python3, unwatched: only the agent's side is recorded,
        // as on a host that talks to a remote model.
        let port = free_port();
        let f = file.display().to_string();
        let agent = env.agent(port, &["--record", &f, "--comm", "python"])?;
        let run = agent_run(env, &fixtures, model_port, tasks);
        agent.stop();
        run
    })();
    let _ = model.kill();
    let _ = model.wait();
    result.map(|()| file)
}

/// The tool loop of the `agents` peer, its tasks at once, to the end.
fn agent_run(env: &Env, fixtures: &Path, model_port: u16, tasks: usize) -> Result<()> {
    let python = env.peers.join("agents").join("bin").join("python");
    let server = format!(
        "{} {}",
        env.peers.join("mcp1").join("bin").join("python").display(),
        fixtures.join("py_server.py").display()
    );
    let mut c = Command::new(&python);
    c.arg(fixtures.join("agent_loop.py"))
        .args(["--api", "messages", "--stream", "--max-turns", "1000"])
        .args(["--base-url", &format!("http://127.0.0.1:{model_port}")])
        .args(["--mcp-stdio", &server]);
    for t in 0..tasks {
        c.args(["--task", &format!("script:t{t} fetch")]);
    }
    let out = c
        .stderr(Stdio::null())
        .output()
        .context("running agent_loop.py")?;
    if !out.status.success() {
        bail!("agent_loop.py failed ({})", out.status);
    }
    Ok(())
}

/// One replay: (seconds, model calls, their body bytes, linked exchanges).
fn replay_once(mcptap: &Path, file: &Path) -> Result<(f64, u64, u64, u64)> {
    let t = Instant::now();
    let out = Command::new(mcptap)
        .args(["replay", file.to_str().unwrap(), "--quiet", "--jsonl", "-"])
        .output()?;
    let seconds = t.elapsed().as_secs_f64();
    let (mut calls, mut bytes, mut linked) = (0, 0, 0);
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        match v["kind"].as_str() {
            Some("llm_call") => {
                calls += 1;
                bytes += v["request_bytes"].as_u64().unwrap_or(0)
                    + v["response_bytes"].as_u64().unwrap_or(0);
            }
            Some("exchange") if v["task"].is_string() => linked += 1,
            _ => {}
        }
    }
    Ok((seconds, calls, bytes, linked))
}

/// Record the run and replay it (once for a smoke run, else five times).
pub fn measure(env: &Env, s: &Scale) -> Result<ModelTraffic> {
    let (tasks, turns, size) = if s.smoke {
        (2, 4, 8192)
    } else {
        (8, 40, 16384)
    };
    step(&format!(
        "bench 4/5: recording an agent run ({tasks} tasks x {turns} turns) for the agentic layer"
    ));
    let mut m = ModelTraffic {
        tasks,
        turns,
        result_bytes: size,
        ..Default::default()
    };
    // A run that cannot be recorded or replayed whole fails the bench (and the smoke run of
    // `cargo xtask test`), rather than leave a line in the report nobody reads.
    let file = record(env, (tasks, turns, size)).context("recording the agent run")?;
    step("bench 4/5: replaying the agent run");
    let mut times = Vec::new();
    for _ in 0..if s.smoke { 1 } else { 5 } {
        let (t, calls, bytes, linked) = replay_once(&env.mcptap, &file)?;
        times.push(t);
        (m.calls, m.bytes, m.linked) = (calls, bytes, linked);
    }
    m.seconds = median(times);
    let want = (tasks * turns) as u64;
    if m.calls != want {
        bail!(
            "the replay of the agent run reported {} model calls of the {want} it made",
            m.calls
        );
    }
    Ok(m)
}

/// The part of section 4 about model traffic.
pub fn write_part(md: &mut String, m: &ModelTraffic) {
    let _ = writeln!(md, "\n### Model traffic (the agentic layer)\n");
    if m.calls == 0 {
        let _ = writeln!(md, "Not measured.");
        return;
    }
    let _ = writeln!(
        md,
        "`mcptap replay` of a recorded agent run: the Anthropic client library's tool loop (streamed), {} tasks at once, {} turns each, every turn asking for an MCP tool whose result ({} KiB of text) the next turn carries back with the whole conversation, over stdio MCP; the agent's side only (the model server unwatched). {} model calls ({} exchanges linked to them), {:.1} MB of request and reply bodies, replayed in {:.2} s (median of {}): **{:.0} model calls/s** and **{:.1} MB/s of model traffic** on one core.",
        m.tasks,
        m.turns,
        m.result_bytes / 1024,
        m.calls,
        m.linked,
        m.bytes as f64 / 1e6,
        m.seconds,
        if m.turns <= 4 { 1 } else { 5 },
        m.calls as f64 / m.seconds,
        m.bytes as f64 / 1e6 / m.seconds,
    );
}
