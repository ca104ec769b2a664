//! Section 2: what capture adds to a watched round trip. Real SDK clients and servers make
//! back-to-back `tools/call`s with the agent off and on (watching every process), paired in
//! each round in alternating order; the workloads are shared with the soak.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::Scale;
use super::env::{CpuMeter, Env, Proc, free_port, wait_for_port};
use super::stats::{median, quartiles, verdict};
use crate::{root, step};

/// A latency workload: (name, command to run, server to start first).
pub struct Workload {
    pub name: &'static str,
    pub client: Command,
    pub server: Option<(Command, u16)>,
}

impl Workload {
    /// Start the workload's server, if it has one, and wait until it accepts.
    pub fn start_server(&mut self) -> Result<Option<Proc>> {
        let Some((mut c, port)) = self.server.take() else {
            return Ok(None);
        };
        let p = Proc::quiet(&mut c)?;
        if !wait_for_port(port, Duration::from_secs(30), Duration::from_millis(50)) {
            bail!("{} did not start", self.name);
        }
        Ok(Some(p))
    }
}

/// A self-signed certificate for 127.0.0.1 in `dir` (`cert.pem`, `key.pem` beside it).
fn self_signed(dir: &Path) -> Result<PathBuf> {
    let cert = dir.join("cert.pem");
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-nodes", "-days", "1"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl req")?;
    if !st.success() {
        bail!("openssl req could not make a certificate");
    }
    Ok(cert)
}

/// The TypeScript SDK over stdio and Streamable HTTP, and the Python SDK over stdio.
pub fn workloads(env: &Env, s: &Scale) -> Vec<Workload> {
    let node_dir = env.peers.join("node");
    let everything = "node_modules/@modelcontextprotocol/server-everything/dist/index.js";
    let fixtures = root().join("tests").join("fixtures");
    let _ = std::fs::copy(
        fixtures.join("node_bench.mjs"),
        node_dir.join("node_bench.mjs"),
    );
    let (calls, warmup) = (s.calls.to_string(), s.warmup.to_string());
    let mut node_stdio = Command::new("node");
    node_stdio
        .current_dir(&node_dir)
        .args(["node_bench.mjs", everything, &calls, &warmup]);
    let port = free_port();
    let mut node_http = Command::new("node");
    node_http.current_dir(&node_dir).args([
        "node_bench.mjs",
        everything,
        &calls,
        &warmup,
        "--url",
        &format!("http://127.0.0.1:{port}/mcp"),
    ]);
    let mut http_server = Command::new("node");
    http_server
        .current_dir(&node_dir)
        .args([everything, "streamableHttp"])
        .env("PORT", port.to_string());
    let py = env.peers.join("mcp2").join("bin").join("python");
    let mut py_stdio = Command::new(&py);
    py_stdio
        .arg(fixtures.join("py_bench.py"))
        .args([&calls, &warmup, "--"])
        .arg(&py)
        .arg(fixtures.join("py_server.py"));
    vec![
        Workload {
            name: "TypeScript SDK ↔ server-everything, stdio",
            client: node_stdio,
            server: None,
        },
        Workload {
            name: "TypeScript SDK ↔ server-everything, Streamable HTTP",
            client: node_http,
            server: Some((http_server, port)),
        },
        Workload {
            name: "Python SDK 2.x ↔ fixture server, stdio",
            client: py_stdio,
            server: None,
        },
    ]
}

/// HTTPS: what the OpenSSL uprobes cost a watched round trip (libssl on both sides, mcp 2.x
/// client and server over uvicorn's TLS).
fn https_workload(env: &Env, s: &Scale) -> Result<Workload> {
    let fixtures = root().join("tests").join("fixtures");
    let py = env.peers.join("mcp2").join("bin").join("python");
    let cert = self_signed(&env.dir)?;
    let port = free_port();
    let mut client = Command::new(&py);
    client
        .arg(fixtures.join("py_bench.py"))
        .args([&s.calls.to_string(), &s.warmup.to_string(), "--url"])
        .arg(format!("https://127.0.0.1:{port}/mcp"))
        .env("SSL_CERT_FILE", &cert);
    let mut server = Command::new(&py);
    server
        .arg(fixtures.join("py_server.py"))
        .args(["--transport", "http", "--port", &port.to_string()])
        .arg("--certfile")
        .arg(&cert)
        .arg("--keyfile")
        .arg(env.dir.join("key.pem"));
    Ok(Workload {
        name: "Python SDK 2.x ↔ fixture server, Streamable HTTPS (OpenSSL uprobes)",
        client,
        server: Some((server, port)),
    })
}

/// One workload's figures.
pub struct Latency {
    name: &'static str,
    /// Medians of (p50, p99) ms, agent off and on.
    off: (f64, f64),
    on: (f64, f64),
    /// Median of the rounds' p50 on/off ratios, and their quartiles.
    ratio: f64,
    ratio_spread: (f64, f64),
    agent_cpu: f64,
    agent_hwm_kb: u64,
}

/// One run of the workload's client: (p50, p99) ms.
pub fn run_latency(w: &mut Workload) -> Result<(f64, f64)> {
    let out = w.client.output().context(w.name)?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: {}", w.name, String::from_utf8_lossy(&out.stderr)))?;
    Ok((
        v["p50_ms"].as_f64().unwrap_or(f64::NAN),
        v["p99_ms"].as_f64().unwrap_or(f64::NAN),
    ))
}

/// A run with the agent on: ((p50, p99) ms, agent CPU %, agent VmHWM kB).
fn run_watched(env: &Env, w: &mut Workload) -> Result<((f64, f64), f64, u64)> {
    let agent = env.agent(free_port(), &[])?;
    let meter = CpuMeter::start(&agent);
    let times = run_latency(w)?;
    let (cpu, hwm) = meter.read(&agent);
    agent.stop();
    Ok((times, cpu, hwm))
}

/// Every round of one workload.
fn measure_one(env: &Env, s: &Scale, mut w: Workload) -> Result<Latency> {
    let (mut off, mut on, mut cpu, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut hwm = 0;
    let _server = w.start_server()?;
    for round in 0..s.latency_rounds {
        step(&format!("bench 2/5: {}, round {}", w.name, round + 1));
        // Off and on are paired within a round, in alternating order, so that the
        // machine's drift cancels in each round's ratio.
        let mut pair = [(f64::NAN, f64::NAN); 2];
        for on_now in [round % 2 == 1, round % 2 == 0] {
            if !on_now {
                pair[0] = run_latency(&mut w)?;
                continue;
            }
            let (times, c, h) = run_watched(env, &mut w)?;
            pair[1] = times;
            cpu.push(c);
            hwm = hwm.max(h);
        }
        off.push(pair[0]);
        on.push(pair[1]);
        ratios.push(pair[1].0 / pair[0].0);
    }
    let m = |v: &[(f64, f64)], i: usize| {
        median(v.iter().map(|x| if i == 0 { x.0 } else { x.1 }).collect())
    };
    Ok(Latency {
        name: w.name,
        off: (m(&off, 0), m(&off, 1)),
        on: (m(&on, 0), m(&on, 1)),
        ratio: median(ratios.clone()),
        ratio_spread: quartiles(ratios),
        agent_cpu: median(cpu),
        agent_hwm_kb: hwm,
    })
}

/// Every workload, HTTPS last.
pub fn measure(env: &Env, s: &Scale) -> Result<Vec<Latency>> {
    let mut loads = workloads(env, s);
    loads.push(https_workload(env, s)?);
    loads.into_iter().map(|w| measure_one(env, s, w)).collect()
}

/// The report's section 2.
pub fn write_section(md: &mut String, s: &Scale, latency: &[Latency]) {
    let _ = writeln!(md, "\n## 2. Overhead on watched MCP traffic\n");
    let _ = writeln!(
        md,
        "{} back-to-back `tools/call` after {} warm-up calls, agent off and on (watching every process), {} rounds; each round runs both, in alternating order. The p50 ratio is the median of the rounds' on/off ratios (quartiles in brackets: this machine's own round-to-round noise). Target: p50 ratio at most 1.03.\n",
        s.calls, s.warmup, s.latency_rounds
    );
    let _ = writeln!(
        md,
        "| workload | p50 off ms | p50 on ms | p50 ratio | p99 off ms | p99 on ms | agent CPU | agent peak RSS |\n|---|---|---|---|---|---|---|---|"
    );
    for l in latency {
        let r = l.ratio;
        let _ = writeln!(
            md,
            "| {} | {:.3} | {:.3} | {:.3} [{:.2}–{:.2}] ({}) | {:.3} | {:.3} | {:.1}% | {} MiB |",
            l.name,
            l.off.0,
            l.on.0,
            r,
            l.ratio_spread.0,
            l.ratio_spread.1,
            verdict(r <= 1.03),
            l.off.1,
            l.on.1,
            l.agent_cpu,
            l.agent_hwm_kb / 1024
        );
    }
}
