//! `cargo xtask bench`: every measurement side by side in one run, medians of interleaved
//! rounds, written to BENCHMARKS.md (or, with `--smoke`, a quick pass to target/).
//!
//! 1. Cost to unwatched processes: a pipe and a socket micro-benchmark with no agent, with
//!    empty programs on mcptap's hooks (the floor), with mcptap watching other processes, and
//!    with mcptap watching every process.
//! 2. Overhead on watched MCP traffic: p50/p99 of back-to-back tools/call, agent off vs on
//!    (stdio, HTTP, and HTTPS through the OpenSSL uprobes).
//! 3. Capacity: the highest rate with no kernel loss and every exchange correlated.
//! 4. The userspace pipeline alone, on a recorded capture, with a profile.
//! 5. Footprint: agent CPU and RSS under load, and RSS with 1,000 sessions open.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{root, run, step};

/// How much to measure.
struct Scale {
    smoke: bool,
    dd_count: u64,
    ping_count: u64,
    sock_count: u64,
    rounds: usize,
    latency_rounds: usize,
    calls: u64,
    warmup: u64,
    capacity_secs: f64,
    small_rates: &'static [u64],
    large_rates: &'static [u64],
    sessions: u64,
}

const FULL: Scale = Scale {
    smoke: false,
    dd_count: 2_000_000,
    ping_count: 1_000_000,
    sock_count: 200_000,
    rounds: 5,
    latency_rounds: 12,
    calls: 2000,
    warmup: 200,
    capacity_secs: 3.0,
    small_rates: &[10_000, 25_000, 50_000, 75_000, 100_000, 150_000, 200_000],
    large_rates: &[1_000, 2_000, 4_000, 8_000, 12_000, 16_000],
    sessions: 1000,
};

const SMOKE: Scale = Scale {
    smoke: true,
    dd_count: 100_000,
    ping_count: 50_000,
    sock_count: 10_000,
    rounds: 1,
    latency_rounds: 1,
    calls: 50,
    warmup: 10,
    capacity_secs: 0.5,
    small_rates: &[5_000],
    large_rates: &[500],
    sessions: 50,
};

/// The first and third quartiles.
fn quartiles(mut v: Vec<f64>) -> (f64, f64) {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.75))
}

/// Pids of the processes whose comm is `name`.
fn processes_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Sum of every series of `name` whose line contains all `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A process the bench started, stopped with SIGINT.
struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (utime + stime in ticks, VmRSS kB, VmHWM kB).
    fn usage(&self) -> (u64, u64, u64) {
        let pid = self.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (ticks, kb("VmRSS:"), kb("VmHWM:"))
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What runs during a measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    None,
    Floor,
    Other,
    All,
}

impl State {
    fn label(&self) -> &'static str {
        match self {
            State::None => "no agent",
            State::Floor => "floor: empty programs on the same hooks",
            State::Other => "mcptap watching other processes (--comm)",
            State::All => "mcptap watching every process",
        }
    }
}

struct Env {
    mcptap: PathBuf,
    peer: PathBuf,
    peers: PathBuf,
    dir: PathBuf,
}

impl Env {
    /// Start what `state` needs; `None` for no agent. mcptap listens on `port`.
    fn start(&self, state: State, port: u16, extra: &[&str]) -> Result<Option<Proc>> {
        let mut c = Command::new(&self.mcptap);
        match state {
            State::None => return Ok(None),
            State::Floor => {
                c.arg("floor");
            }
            State::Other => {
                c.args(["--quiet", "--comm", "no-such-process"]);
            }
            State::All => {
                c.arg("--quiet");
            }
        }
        if state != State::Floor {
            c.args(["--listen", &format!("127.0.0.1:{port}")])
                .args(extra);
        }
        let child = c
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("agent.log"))?)
            .spawn()
            .context("starting mcptap")?;
        let p = Proc { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        if state == State::Floor {
            // The floor has no endpoint: give it time to attach.
            std::thread::sleep(Duration::from_millis(1500));
        } else {
            while http_get(port, "/ready").is_none() {
                if Instant::now() > deadline {
                    bail!(
                        "mcptap did not become ready; see {}",
                        self.dir.join("agent.log").display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(Some(p))
    }
}

/// ns per syscall of `dd bs=64 | cat` (dd's reads and writes; cat runs on the other core).
fn dd(count: u64) -> Result<f64> {
    let t = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if=/dev/zero bs=64 count={count} 2>/dev/null | cat > /dev/null"
        ))
        .status()?;
    if !st.success() {
        bail!("dd | cat failed");
    }
    Ok(t.elapsed().as_nanos() as f64 / (2 * count) as f64)
}

/// ns per syscall of `bench_peer syscalls KIND`: one thread writing 64 bytes into a pipe or a
/// loopback TCP connection and reading them back, so nothing blocks or waits for a wake-up.
fn ping(env: &Env, kind: &str, count: u64) -> Result<f64> {
    let out = Command::new(&env.peer)
        .args(["syscalls", kind, &count.to_string()])
        .output()?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bench_peer syscalls")?;
    Ok(
        v["seconds"].as_f64().unwrap_or(f64::NAN) * 1e9
            / v["syscalls"].as_f64().unwrap_or(f64::NAN),
    )
}

/// The unwatched workloads, in report order: (name, description).
const UNWATCHED: [(&str, &str); 4] = [
    (
        "pipe",
        "64-byte `write` then `read` on one pipe, in one thread",
    ),
    (
        "Unix socketpair",
        "64-byte `write` then `read` on an AF_UNIX stream socketpair, in one thread",
    ),
    (
        "TCP",
        "64-byte `write` then `read` on a loopback TCP connection, in one thread (the TCP stack's own cost and noise dwarf the hooks')",
    ),
    (
        "dd into cat",
        "`dd if=/dev/zero bs=64 | cat > /dev/null`, wall time per dd syscall",
    ),
];

/// Median ns/syscall by workload (as [`UNWATCHED`]) and state label.
struct Unwatched(Vec<BTreeMap<&'static str, f64>>);

impl Unwatched {
    fn empty() -> Self {
        let all = [State::None, State::Floor, State::Other, State::All];
        let m: BTreeMap<_, _> = all.iter().map(|s| (s.label(), f64::NAN)).collect();
        Unwatched(vec![m; UNWATCHED.len()])
    }
}

fn unwatched(env: &Env, s: &Scale) -> Result<Unwatched> {
    let states = [State::None, State::Floor, State::Other, State::All];
    let mut runs: Vec<BTreeMap<&str, Vec<f64>>> = vec![BTreeMap::new(); UNWATCHED.len()];
    for round in 0..s.rounds {
        for state in states {
            step(&format!(
                "bench 1/5: unwatched cost, round {}, {}",
                round + 1,
                state.label()
            ));
            let agent = env.start(state, free_port(), &[])?;
            for _ in 0..3 {
                let figures = [
                    ping(env, "pipe", s.ping_count)?,
                    ping(env, "unix", s.ping_count / 2)?,
                    ping(env, "socket", s.sock_count)?,
                    dd(s.dd_count)?,
                ];
                for (w, ns) in figures.into_iter().enumerate() {
                    runs[w].entry(state.label()).or_default().push(ns);
                }
            }
            if let Some(a) = agent {
                a.stop();
            }
        }
    }
    Ok(Unwatched(
        runs.into_iter()
            .map(|m| m.into_iter().map(|(k, v)| (k, median(v))).collect())
            .collect(),
    ))
}

/// A latency workload: (name, command to run, server to start first).
struct Workload {
    name: &'static str,
    client: Command,
    server: Option<(Command, u16)>,
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

fn workloads(env: &Env, s: &Scale) -> Vec<Workload> {
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

struct Latency {
    name: &'static str,
    off: (f64, f64),
    on: (f64, f64),
    /// Median of the rounds' p50 on/off ratios, and their quartiles.
    ratio: f64,
    ratio_spread: (f64, f64),
    agent_cpu: f64,
    agent_hwm_kb: u64,
}

fn run_latency(w: &mut Workload) -> Result<(f64, f64)> {
    let out = w.client.output().context(w.name)?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: {}", w.name, String::from_utf8_lossy(&out.stderr)))?;
    Ok((
        v["p50_ms"].as_f64().unwrap_or(f64::NAN),
        v["p99_ms"].as_f64().unwrap_or(f64::NAN),
    ))
}

const HZ: f64 = 100.0;

fn latency(env: &Env, s: &Scale) -> Result<Vec<Latency>> {
    let mut out = Vec::new();
    let mut loads = workloads(env, s);
    loads.push(https_workload(env, s)?);
    for mut w in loads {
        let mut off = Vec::new();
        let mut on = Vec::new();
        let mut cpu = Vec::new();
        let mut hwm = 0;
        let _server = match w.server.take() {
            Some((mut c, port)) => {
                let child = c.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
                let p = Proc { child };
                let deadline = Instant::now() + Duration::from_secs(30);
                while TcpStream::connect(("127.0.0.1", port)).is_err() {
                    if Instant::now() > deadline {
                        bail!("{} did not start", w.name);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Some(p)
            }
            None => None,
        };
        let mut ratios = Vec::new();
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
                let agent = env.start(State::All, free_port(), &[])?.expect("agent");
                let (t0, ..) = agent.usage();
                let start = Instant::now();
                pair[1] = run_latency(&mut w)?;
                let (t1, _, h) = agent.usage();
                cpu.push((t1 - t0) as f64 / HZ / start.elapsed().as_secs_f64() * 100.0);
                hwm = hwm.max(h);
                agent.stop();
            }
            off.push(pair[0]);
            on.push(pair[1]);
            ratios.push(pair[1].0 / pair[0].0);
        }
        let m = |v: &[(f64, f64)], i: usize| {
            median(v.iter().map(|x| if i == 0 { x.0 } else { x.1 }).collect())
        };
        out.push(Latency {
            name: w.name,
            off: (m(&off, 0), m(&off, 1)),
            on: (m(&on, 0), m(&on, 1)),
            ratio: median(ratios.clone()),
            ratio_spread: quartiles(ratios),
            agent_cpu: median(cpu),
            agent_hwm_kb: hwm,
        });
    }
    Ok(out)
}

struct CapacityRun {
    rate: u64,
    achieved: f64,
    correlated: f64,
    lost: f64,
    ok: bool,
    cpu: f64,
    hwm_kb: u64,
}

/// Drive the synthetic peers at `rate` for `secs`; count what mcptap correlated and lost.
fn capacity_run(
    env: &Env,
    tcp: bool,
    rate: u64,
    size: usize,
    secs: f64,
    record: Option<&Path>,
) -> Result<CapacityRun> {
    let port = free_port();
    // The default configuration: capacity is what a user gets without tuning.
    let mut extra: Vec<String> = Vec::new();
    if let Some(r) = record {
        extra.push("--record".into());
        extra.push(r.display().to_string());
    }
    let extra_ref: Vec<&str> = extra.iter().map(String::as_str).collect();
    let agent = env.start(State::All, port, &extra_ref)?.expect("agent");
    let server = if tcp {
        let sport = free_port();
        let child = Command::new(&env.peer)
            .args(["server-tcp", &sport.to_string()])
            .stdout(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", sport)).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Some((Proc { child }, sport))
    } else {
        None
    };
    let before = http_get(port, "/metrics").unwrap_or_default();
    let base = metric(
        &before,
        "mcp_requests_total",
        &["method=\"tools/call\"", "status=\"success\""],
    );
    let (t0, ..) = agent.usage();
    let start = Instant::now();
    let mut c = Command::new(&env.peer);
    match &server {
        Some((_, sport)) => c.args(["client-tcp", &sport.to_string()]),
        None => c.arg("client-stdio"),
    };
    let out = c
        .args([rate.to_string(), size.to_string(), secs.to_string()])
        .output()
        .context("bench_peer client")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bench_peer output")?;
    let sent = v["sent"].as_f64().unwrap_or(0.0);
    let achieved = sent / v["seconds"].as_f64().unwrap_or(1.0);
    // Wait for the agent to catch up (or give up after a while).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut text;
    loop {
        text = http_get(port, "/metrics").unwrap_or_default();
        let got = metric(
            &text,
            "mcp_requests_total",
            &["method=\"tools/call\"", "status=\"success\""],
        ) - base;
        if got >= sent || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (t1, _, hwm) = agent.usage();
    let cpu = (t1 - t0) as f64 / HZ / start.elapsed().as_secs_f64() * 100.0;
    let correlated = metric(
        &text,
        "mcp_requests_total",
        &["method=\"tools/call\"", "status=\"success\""],
    ) - base;
    let lost = metric(&text, "mcptap_lost_events_total", &[])
        + metric(
            &text,
            "mcptap_kernel_events_total",
            &["event=\"truncated_syscalls\""],
        )
        + metric(
            &text,
            "mcptap_kernel_events_total",
            &["event=\"read_faults\""],
        );
    drop(server);
    agent.stop();
    Ok(CapacityRun {
        rate,
        achieved,
        correlated: correlated / sent.max(1.0),
        lost,
        ok: lost == 0.0 && correlated >= sent && achieved >= rate as f64 * 0.9,
        cpu,
        hwm_kb: hwm,
    })
}

fn capacity(
    env: &Env,
    s: &Scale,
    tcp: bool,
    size: usize,
    rates: &[u64],
) -> Result<Vec<CapacityRun>> {
    let mut runs = Vec::new();
    for &rate in rates {
        step(&format!(
            "bench 3/5: capacity, {} B over {}, {rate}/s",
            size,
            if tcp { "TCP" } else { "a pipe" }
        ));
        let r = capacity_run(env, tcp, rate, size, s.capacity_secs, None)?;
        let ok = r.ok;
        runs.push(r);
        if !ok {
            break;
        }
    }
    Ok(runs)
}

struct Replay {
    messages: u64,
    seconds: f64,
    profile: String,
}

fn replay(env: &Env, s: &Scale) -> Result<Replay> {
    step("bench 4/5: recording a capture for the replay benchmark");
    let file = env.dir.join("capture.mcptap");
    let rate = if s.smoke { 5_000 } else { 40_000 };
    capacity_run(
        env,
        false,
        rate,
        200,
        if s.smoke { 0.5 } else { 3.0 },
        Some(&file),
    )?;
    step("bench 4/5: replaying it");
    let mut times = Vec::new();
    let mut messages = 0;
    for _ in 0..if s.smoke { 1 } else { 3 } {
        let t = Instant::now();
        let out = Command::new(&env.mcptap)
            .args(["replay", file.to_str().unwrap(), "--quiet", "--jsonl", "-"])
            .output()?;
        times.push(t.elapsed().as_secs_f64());
        let stop = String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .find(|l| l.contains("\"agent_stop\""))
            .map(str::to_string)
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&stop).unwrap_or_default();
        messages = v["stats"]["messages"].as_u64().unwrap_or(0);
    }
    let mut profile = String::new();
    let have_valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_valgrind && !s.smoke {
        step("bench 4/5: profiling the replay with callgrind");
        let small = env.dir.join("small.mcptap");
        capacity_run(env, false, 5_000, 200, 1.0, Some(&small))?;
        let cg = env.dir.join("callgrind.out");
        let st = Command::new("valgrind")
            .args([
                "--tool=callgrind",
                &format!("--callgrind-out-file={}", cg.display()),
            ])
            .arg(&env.mcptap)
            .args(["replay", small.to_str().unwrap(), "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if st.success() {
            let out = Command::new("callgrind_annotate")
                .args(["--inclusive=yes", "--threshold=100"])
                .arg(&cg)
                .output()?;
            let mut rows = profile_rows(&String::from_utf8_lossy(&out.stdout));
            rows.truncate(15);
            for (pct, f) in rows {
                let _ = writeln!(profile, "| {pct:.1}% | `{}` |", f.replace('|', "\\|"));
            }
        }
        if profile.is_empty() {
            profile = "(no profile: callgrind did not produce mcptap's functions)\n".into();
        }
    } else if !s.smoke {
        profile = "(no profile: valgrind is not installed)\n".into();
    }
    Ok(Replay {
        messages,
        seconds: median(times),
        profile,
    })
}

/// mcptap's functions in `callgrind_annotate --inclusive=yes` output, as (share of the
/// program's instructions in %, function), in the file's order (most inclusive first).
fn profile_rows(text: &str) -> Vec<(f64, String)> {
    let total: f64 = text
        .lines()
        .find(|l| l.contains("PROGRAM TOTALS"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or(0.0);
    let mut rows = Vec::new();
    if total <= 0.0 {
        return rows;
    }
    for l in text.lines() {
        // "  356,568,911 (99.78%)  ???:mcptap::main [/path/to/mcptap]"
        let Some((head, rest)) = l.split_once(')') else {
            continue;
        };
        let Some(Ok(n)) = head
            .split_whitespace()
            .next()
            .map(|n| n.replace(',', "").parse::<f64>())
        else {
            continue;
        };
        // "file:function [object]": the file has no colon, the function may have many.
        let place = rest.trim();
        let place = place.rsplit_once(" [").map_or(place, |(p, _)| p);
        let f = place.split_once(':').map_or(place, |(_, f)| f);
        if f.starts_with("mcptap::") || f.starts_with("<mcptap::") {
            rows.push((n / total * 100.0, f.to_string()));
        }
    }
    rows
}

/// RSS of the agent with `count` sessions open.
fn sessions_rss(env: &Env, count: u64) -> Result<(u64, f64)> {
    step(&format!("bench 5/5: RSS with {count} sessions open"));
    let port = free_port();
    let agent = env.start(State::All, port, &[])?.expect("agent");
    let sport = free_port();
    let server = Proc {
        child: Command::new(&env.peer)
            .args(["server-tcp", &sport.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    };
    while TcpStream::connect(("127.0.0.1", sport)).is_err() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut holder = Command::new(&env.peer)
        .args(["sessions", &sport.to_string(), &count.to_string(), "60"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line)?;
    std::thread::sleep(Duration::from_secs(3));
    let text = http_get(port, "/metrics").unwrap_or_default();
    let tracked = metric(&text, "mcptap_tracked_sessions", &[]);
    let (_, rss, _) = agent.usage();
    let _ = holder.kill();
    let _ = holder.wait();
    drop(server);
    agent.stop();
    Ok((rss, tracked))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(root())
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!(
        "Machine: {cpu}, {cores} cores; Linux {kernel}. Commit {commit}{}. Run {date}.",
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    )
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

/// Run the suite and write the report.
pub fn bench(smoke: bool) -> Result<()> {
    crate::bootstrap::all()?;
    let peers = crate::peers::install()?;
    // The smoke run only checks that the suite runs, so it takes the debug build `cargo xtask
    // test` has made already rather than a release build of its own (minutes on 2 cores);
    // the figures it writes are not measurements.
    let profile = if smoke { "debug" } else { "release" };
    let mut build = crate::cargo();
    build.args(["build", "--package", "mcptap", "--package", "xtask"]);
    if !smoke {
        build.arg("--release");
    }
    run(&mut build)?;
    // Another agent would add its own cost to every state, "no agent" included.
    let others = processes_named("mcptap");
    if !others.is_empty() {
        bail!(
            "mcptap is already running (pid {others:?}): stop it first, or every figure includes its cost"
        );
    }
    let s = if smoke { &SMOKE } else { &FULL };
    let dir = root().join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    let env = Env {
        mcptap: root().join("target").join(profile).join("mcptap"),
        peer: root().join("target").join(profile).join("bench_peer"),
        peers,
        dir,
    };

    // MCPTAP_BENCH_ONLY=1,3 runs only those sections (for working on one; the report then
    // goes to target/ and says so).
    let only: Vec<u32> = std::env::var("MCPTAP_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default();
    let want = |n: u32| only.is_empty() || only.contains(&n);
    let unwatched = if want(1) {
        unwatched(&env, s)?
    } else {
        Unwatched::empty()
    };
    let latency = if want(2) {
        latency(&env, s)?
    } else {
        Vec::new()
    };
    let (small_pipe, small_tcp, large_pipe, large_tcp) = if want(3) {
        (
            capacity(&env, s, false, 200, s.small_rates)?,
            capacity(&env, s, true, 200, s.small_rates)?,
            capacity(&env, s, false, 64 * 1024, s.large_rates)?,
            capacity(&env, s, true, 64 * 1024, s.large_rates)?,
        )
    } else {
        Default::default()
    };
    let replay = if want(4) {
        replay(&env, s)?
    } else {
        Replay {
            messages: 0,
            seconds: f64::NAN,
            profile: String::new(),
        }
    };
    let (rss_sessions, tracked) = if want(5) {
        sessions_rss(&env, s.sessions)?
    } else {
        (0, 0.0)
    };

    let mut md = String::new();
    let _ = writeln!(md, "# mcptap benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench`{}; every figure is a median of interleaved rounds measured in the same run. {}\n",
        if smoke {
            " --smoke (a quick pass: figures are not meaningful)"
        } else {
            ""
        },
        machine()
    );

    let _ = writeln!(md, "## 1. Cost to processes mcptap does not watch\n");
    let _ = writeln!(
        md,
        "ns per syscall of each workload; the ratio is mcptap's added cost over the floor's added cost (target at most 1.2×). Workloads: {}.\n",
        UNWATCHED
            .iter()
            .map(|(n, d)| format!("*{n}*: {d}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        md,
        "| state | {} |\n|---|{}",
        UNWATCHED
            .iter()
            .map(|(n, _)| format!("{n} ns | ratio"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|---|".repeat(UNWATCHED.len())
    );
    let mut verdicts = Vec::new();
    for st in [State::None, State::Floor, State::Other, State::All] {
        let l = st.label();
        let mut row = format!("| {l} |");
        let mut parts = Vec::new();
        for (w, m) in unwatched.0.iter().enumerate() {
            let ns = m[l];
            let base = m[State::None.label()];
            let floor = m[State::Floor.label()] - base;
            if matches!(st, State::Other | State::All) {
                let r = (ns - base) / floor;
                let _ = write!(row, " {ns:.0} | {r:.2}× |");
                parts.push(format!(
                    "{} {r:.2}× ({})",
                    UNWATCHED[w].0,
                    verdict(r <= 1.2)
                ));
            } else {
                let _ = write!(row, " {ns:.0} | |");
            }
        }
        let _ = writeln!(md, "{row}");
        if !parts.is_empty() {
            verdicts.push(format!("{l}: {}.", parts.join(", ")));
        }
    }
    for v in verdicts {
        let _ = writeln!(md, "\n{v}");
    }

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
    for l in &latency {
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

    let _ = writeln!(md, "\n## 3. Capacity\n");
    let _ = writeln!(
        md,
        "A synthetic client sends `tools/call` requests at a set rate ({} s each step), a server answers each; both watched, so every message is captured twice. A step passes with no kernel loss, every exchange correlated, and the rate achieved. Targets: 50,000 messages/s of 200 B; 500 MB/s of 64 KiB messages.\n",
        s.capacity_secs
    );
    let _ = writeln!(
        md,
        "| transport | size | rate asked /s | achieved /s | MB/s | correlated | lost | agent CPU | agent peak RSS | pass |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut best = BTreeMap::new();
    for (name, size, runs) in [
        ("pipe", 200, &small_pipe),
        ("TCP", 200, &small_tcp),
        ("pipe", 65536, &large_pipe),
        ("TCP", 65536, &large_tcp),
    ] {
        for r in runs.iter() {
            let mb = r.achieved * size as f64 / 1e6;
            let _ = writeln!(
                md,
                "| {name} | {size} | {} | {:.0} | {mb:.1} | {:.1}% | {} | {:.0}% | {} MiB | {} |",
                r.rate,
                r.achieved,
                r.correlated * 100.0,
                r.lost + 0.0,
                r.cpu,
                r.hwm_kb / 1024,
                if r.ok { "yes" } else { "no" }
            );
            if r.ok {
                let e = best.entry((name, size)).or_insert(0.0f64);
                *e = e.max(if size == 200 { r.achieved } else { mb });
            }
        }
    }
    for ((name, size), v) in &best {
        if *size == 200 {
            let _ = writeln!(
                md,
                "\nHighest passing rate, 200 B over {name}: {v:.0} messages/s ({}).",
                verdict(*v >= 50_000.0)
            );
        } else {
            let _ = writeln!(
                md,
                "\nHighest passing rate, 64 KiB over {name}: {v:.0} MB/s ({}).",
                verdict(*v >= 500.0)
            );
        }
    }

    let _ = writeln!(md, "\n## 4. The userspace pipeline alone\n");
    let rate = replay.messages as f64 / replay.seconds;
    let _ = writeln!(
        md,
        "`mcptap replay` of a capture recorded from the 200 B pipe workload: {} messages (both views of every message) in {:.2} s: **{:.0} messages/s** on one core ({}; target 300,000).\n",
        replay.messages,
        replay.seconds,
        rate,
        verdict(rate >= 300_000.0)
    );
    if replay.profile.starts_with('(') {
        let _ = writeln!(md, "{}", replay.profile);
    } else if !replay.profile.is_empty() {
        let _ = writeln!(
            md,
            "Where the time goes (callgrind, inclusive instructions of the replay):\n\n| share | function |\n|---|---|\n{}",
            replay.profile
        );
    }

    let _ = writeln!(md, "\n## 5. Footprint\n");
    let _ = writeln!(
        md,
        "Agent CPU and peak RSS under load are in the tables above. With {} TCP sessions open ({} tracked): RSS {} MiB ({}; target at most 64 MiB).",
        s.sessions,
        tracked,
        rss_sessions / 1024,
        verdict(rss_sessions <= 64 * 1024)
    );

    let out = if smoke || !only.is_empty() {
        root().join("target").join(if smoke {
            "bench-smoke.md"
        } else {
            "bench-partial.md"
        })
    } else {
        root().join("BENCHMARKS.md")
    };
    std::fs::write(&out, &md)?;
    step(&format!("wrote {}", out.display()));
    print!("{md}");
    Ok(())
}

/// `cargo xtask soak --minutes N`: steady real MCP load (the Python SDK 2.x client and the
/// fixture server over stdio, and the TypeScript SDK over Streamable HTTP to server-everything,
/// one session after another) with mcptap watching this process tree. Every 30 s it samples
/// the agent's RSS, kernel loss and the calls it counted; at the end every call the clients
/// made must be counted, none lost, and RSS flat. Writes target/soak.md.
pub fn soak(minutes: u64) -> Result<()> {
    crate::bootstrap::all()?;
    let peers = crate::peers::install()?;
    run(crate::cargo().args(["build", "--release", "--package", "mcptap"]))?;
    let dir = root().join("target").join("soak");
    std::fs::create_dir_all(&dir)?;
    let env = Env {
        mcptap: root().join("target/release/mcptap"),
        peer: root().join("target/release/bench_peer"),
        peers,
        dir: dir.clone(),
    };
    let port = free_port();
    let me = std::process::id().to_string();
    // Watch only this process tree, so the figures are the soak's own traffic.
    let agent = env
        .start(State::All, port, &["--pid", &me])?
        .expect("agent");
    let scale = Scale {
        calls: 1_000,
        warmup: 0,
        ..SMOKE
    };
    let mut loads = workloads(&env, &scale);
    // The HTTP server runs for the whole soak.
    let mut server = None;
    for w in &mut loads {
        if let Some((cmd, port)) = &mut w.server {
            server = Some(Proc {
                child: cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?,
            });
            while TcpStream::connect(("127.0.0.1", *port)).is_err() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let mut loads: Vec<Workload> = loads
        .into_iter()
        .filter(|w| !w.name.contains("TypeScript SDK ↔ server-everything, stdio"))
        .collect();
    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let mut made = 0u64;
    let mut samples = Vec::new();
    let mut next_sample = start;
    let counted = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("mcp_tool_calls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    step(&format!("soak: {minutes} min of steady MCP load"));
    let mut i = 0;
    while Instant::now() < end {
        let n = loads.len();
        let w = &mut loads[i % n];
        i += 1;
        let out = w.client.output().context(w.name)?;
        if !out.status.success() {
            bail!(
                "{} failed: {}",
                w.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        made += scale.calls;
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(30);
            let text = http_get(port, "/metrics").unwrap_or_default();
            let (_, rss, _) = agent.usage();
            samples.push((
                start.elapsed().as_secs(),
                rss,
                made,
                counted(&text),
                metric(&text, "mcptap_lost_events_total", &[]),
            ));
            step(&format!(
                "soak: {:>4} s  RSS {} MiB  calls made {made}  counted {}",
                start.elapsed().as_secs(),
                rss / 1024,
                counted(&text)
            ));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let text = http_get(port, "/metrics").unwrap_or_default();
    let (_, rss, hwm) = agent.usage();
    let total_counted = counted(&text);
    let lost = metric(&text, "mcptap_lost_events_total", &[]);
    samples.push((start.elapsed().as_secs(), rss, made, total_counted, lost));
    agent.stop();
    drop(server);

    let half = samples.len() / 2;
    let mid_rss = samples.get(half).map_or(0, |s| s.1);
    let growth = rss as f64 / mid_rss.max(1) as f64;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# mcptap soak\n\n{minutes} min of steady load ({}), mcptap watching the soak's process tree. {}.\n\n| s | RSS MiB | calls made | calls counted | lost events |\n|---|---|---|---|---|",
        loads.iter().map(|w| w.name).collect::<Vec<_>>().join("; "),
        machine()
    );
    for (t, rss, made, counted, lost) in &samples {
        let _ = writeln!(
            md,
            "| {t} | {:.1} | {made} | {counted} | {lost} |",
            *rss as f64 / 1024.0
        );
    }
    let _ = writeln!(
        md,
        "\nCalls made {made}, counted {total_counted}; lost events {lost}; RSS at the end {:.1} MiB, {growth:.2}× the midpoint's; peak {:.1} MiB.",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    let out = root().join("target").join("soak.md");
    std::fs::write(&out, &md)?;
    step(&format!("soak report: {}", out.display()));
    if total_counted as u64 != made || lost > 0.0 || growth > 1.10 {
        bail!(
            "soak failed: {made} calls made, {total_counted} counted, {lost} lost events, RSS {growth:.2}× the midpoint's"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Lines as callgrind_annotate 3.19 prints them (from a real profile of `mcptap replay`).
    #[test]
    fn reads_mcptaps_functions_from_callgrind_annotate() {
        let text = "\
--------------------------------------------------------------------------------
357,350,275 (100.0%)  PROGRAM TOTALS
--------------------------------------------------------------------------------
357,350,275 (100.0%)  ???:0x000000000001ab70 [/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2]
356,677,944 (99.81%)  ???:main [/work/main/target/release/mcptap]
356,568,911 (99.78%)  ???:mcptap::main [/work/main/target/release/mcptap]
247,185,433 (69.17%)  ???:mcptap::pipeline::Pipeline::ingest [/work/main/target/release/mcptap]
 72,407,555 (20.26%)  ???:<mcptap::signals::telemetry::Recorder as mcptap::signals::Sink>::emit [/work/main/target/release/mcptap]
";
        let rows = super::profile_rows(text);
        let names: Vec<&str> = rows.iter().map(|(_, f)| f.as_str()).collect();
        assert_eq!(
            names,
            [
                "mcptap::main",
                "mcptap::pipeline::Pipeline::ingest",
                "<mcptap::signals::telemetry::Recorder as mcptap::signals::Sink>::emit"
            ]
        );
        assert!((rows[1].0 - 69.17).abs() < 0.01, "{rows:?}");
    }
}
