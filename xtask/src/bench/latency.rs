//! Section 2: what capture adds to a watched round trip. Real SDK clients and servers make
//! back-to-back `tools/call`s with the agent off and on (watching every process), paired in
//! each round in alternating order, then again with the client and server pinned to one CPU
//! (`taskset`); beside the wall-clock ratios, the kernel programs' own run time per call
//! (`bpf_stats`, [`kstats`]). The workloads are shared with the soak.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::Scale;
use super::env::{CpuMeter, Env, Proc, free_port, http_get, metric, wait_for_port};
use super::kstats::{self, Snapshot};
use super::stats::{Better, Ratio, median};
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
pub fn self_signed(dir: &Path) -> Result<PathBuf> {
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

/// The TypeScript SDK over stdio echoing a message of `size` bytes (the payload curve).
pub fn payload_workload(env: &Env, s: &Scale, size: usize) -> Workload {
    let node_dir = env.peers.join("node");
    let everything = "node_modules/@modelcontextprotocol/server-everything/dist/index.js";
    let _ = std::fs::copy(
        root().join("tests/fixtures/node_bench.mjs"),
        node_dir.join("node_bench.mjs"),
    );
    let mut client = Command::new("node");
    client.current_dir(&node_dir).args([
        "node_bench.mjs",
        everything,
        &s.calls.to_string(),
        &s.warmup.to_string(),
        "--size",
        &size.to_string(),
    ]);
    Workload {
        name: "TypeScript SDK ↔ server-everything, stdio, sized echo",
        client,
        server: None,
    }
}

/// `rounds` rounds of `w` off and on, alternating which goes first: each round's p50
/// on/off ratio.
pub fn on_off_ratios(env: &Env, w: &mut Workload, rounds: usize, calls: u64) -> Result<Vec<f64>> {
    let mut ratios = Vec::new();
    for round in 0..rounds {
        let (mut off, mut on) = (f64::NAN, f64::NAN);
        for arm in order(round, false) {
            match arm {
                Arm::Off => off = run_latency(w)?.0,
                _ => on = run_watched(env, w, calls)?.times.0,
            }
        }
        ratios.push(on / off);
    }
    Ok(ratios)
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
    /// The rounds' p50 on/off ratios.
    ratios: Vec<f64>,
    /// The same with the client and server pinned to one CPU: the medians of p50 off and
    /// on, ms, and the rounds' ratios.
    pinned: (f64, f64),
    pinned_ratios: Vec<f64>,
    /// Each "on" run's kernel program time per `tools/call` the agent reported, µs.
    kernel_us: Vec<f64>,
    /// Each round's p50 off plus that round's kernel time per call, over p50 off: the ratio
    /// the programs alone would make (a round trip's traps and the agent's wake-ups add to it).
    kernel_ratios: Vec<f64>,
    agent_cpu: f64,
    agent_hwm_kb: u64,
    /// The fewest `tools/call` exchanges the agent reported in one "on" run.
    captured: f64,
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

/// What one run with the agent on measured.
struct OnRun {
    /// (p50, p99) ms.
    times: (f64, f64),
    /// Agent CPU, %, and VmHWM, kB.
    cpu: f64,
    hwm: u64,
    /// `tools/call` exchanges the agent reported.
    captured: f64,
    /// The agent's programs' run time per call, µs ([`per_call_us`]).
    kernel_us: f64,
}

/// The `tools/call` exchanges an agent on `port` reports, once it reports `calls` (a figure
/// "on" means nothing unless the agent saw what it timed: over HTTPS, through the uprobes);
/// an error if it falls short for 10 s.
fn captured_calls(port: u16, name: &str, calls: u64) -> Result<f64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = http_get(port, "/metrics").unwrap_or_default();
        let n = metric(&text, "mcp_requests_total", &["method=\"tools/call\""]);
        if n >= calls as f64 {
            return Ok(n);
        }
        if std::time::Instant::now() > deadline {
            bail!("{name}: the agent reported {n} of the {calls} calls it was timed on");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A run with the agent on, proved to have captured the calls it timed.
fn run_watched(env: &Env, w: &mut Workload, calls: u64) -> Result<OnRun> {
    let port = free_port();
    let agent = env.agent(port, &[])?;
    let background = kstats::background_ns_per_s(agent.pid(), Duration::from_millis(300));
    let meter = CpuMeter::start(&agent);
    let (times, samples) = sampled(agent.pid(), port, || run_latency(w));
    let times = times?;
    let (cpu, hwm) = meter.read(&agent);
    let captured = captured_calls(port, w.name, calls)?;
    agent.stop();
    Ok(OnRun {
        times,
        cpu,
        hwm,
        captured,
        kernel_us: per_call_us(&samples, background),
    })
}

/// Run `run` while another thread samples, every 20 ms, the agent's programs' counters and
/// the `tools/call`s it has reported.
fn sampled<T>(pid: u32, port: u16, run: impl FnOnce() -> T) -> (T, Vec<(Snapshot, f64)>) {
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut v = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let text = http_get(port, "/metrics").unwrap_or_default();
                let calls = metric(&text, "mcp_requests_total", &["method=\"tools/call\""]);
                v.push((Snapshot::of(pid), calls));
                std::thread::sleep(Duration::from_millis(20));
            }
            v
        });
        let out = run();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, sampler.join().unwrap_or_default())
    })
}

/// The programs' run time per `tools/call`, µs, between the first sample that saw a call and
/// the first that saw the last: the client's and server's start-up and exit (thousands of
/// syscalls the programs also see) fall outside; the machine's other processes' share
/// (`background` ns/s) is taken off. NaN if the samples saw too few calls.
fn per_call_us(samples: &[(Snapshot, f64)], background: f64) -> f64 {
    let last = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let (Some(a), Some(b)) = (
        samples.iter().find(|s| s.1 > 0.0),
        samples.iter().find(|s| s.1 >= last),
    ) else {
        return f64::NAN;
    };
    let calls = b.1 - a.1;
    if calls < 10.0 {
        return f64::NAN;
    }
    let (ns, secs) = b.0.since(&a.0);
    (ns - background * secs).max(0.0) / calls / 1000.0
}

/// Who runs in a round's part: no agent, the current agent or the baseline's.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Arm {
    Off,
    Current,
    Baseline,
}

/// A round's arms in order. Off and on alternate which goes first; with a baseline, the
/// three arms take every order in turn (a rotation, then its reverse).
fn order(round: usize, with_baseline: bool) -> Vec<Arm> {
    use Arm::*;
    if !with_baseline {
        return if round.is_multiple_of(2) {
            vec![Off, Current]
        } else {
            vec![Current, Off]
        };
    }
    let rotations = [
        [Off, Current, Baseline],
        [Current, Baseline, Off],
        [Baseline, Off, Current],
    ];
    let mut v = rotations[(round / 2) % 3].to_vec();
    if round % 2 == 1 {
        v.reverse();
    }
    v
}

/// One agent's figures over the rounds.
#[derive(Default)]
struct Watched {
    times: Vec<(f64, f64)>,
    cpu: Vec<f64>,
    hwm: u64,
    captured: Vec<f64>,
    kernel_us: Vec<f64>,
}

impl Watched {
    fn push(&mut self, r: OnRun) {
        self.times.push(r.times);
        self.cpu.push(r.cpu);
        self.hwm = self.hwm.max(r.hwm);
        self.captured.push(r.captured);
        self.kernel_us.push(r.kernel_us);
    }
}

/// Medians of (p50, p99).
fn medians(v: &[(f64, f64)]) -> (f64, f64) {
    (
        median(v.iter().map(|x| x.0).collect()),
        median(v.iter().map(|x| x.1).collect()),
    )
}

/// `cmd` run by `taskset -c 0`: on CPU 0 only, with every process it starts.
fn pinned(cmd: &Command) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", "0"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// Every thread of a running process (the workload's server) onto `cpus` (`taskset` syntax).
fn set_affinity(server: &Option<Proc>, cpus: &str) -> Result<()> {
    if let Some(p) = server {
        let st = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &p.pid().to_string()])
            .stdout(Stdio::null())
            .status()
            .context("taskset")?;
        if !st.success() {
            bail!("taskset -p {cpus} failed");
        }
    }
    Ok(())
}

/// Off and on with the client and server on CPU 0 (the agent free to run on the other),
/// in `round`'s order: (p50 off, p50 on, the "on" run).
fn pinned_pair(
    env: &Env,
    w: &mut Workload,
    server: &Option<Proc>,
    calls: u64,
    round: usize,
) -> Result<(f64, OnRun)> {
    let all = format!(
        "0-{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
    );
    set_affinity(server, "0")?;
    let mut pw = Workload {
        name: w.name,
        client: pinned(&w.client),
        server: None,
    };
    let (mut off, mut on) = (f64::NAN, None);
    for arm in order(round, false) {
        match arm {
            Arm::Off => off = run_latency(&mut pw)?.0,
            _ => on = Some(run_watched(env, &mut pw, calls)?),
        }
    }
    set_affinity(server, &all)?;
    Ok((off, on.expect("an on arm")))
}

/// Every round of one workload: off and on (with a baseline, its agent as a third arm),
/// then off and on pinned to one CPU.
fn measure_one(
    env: &Env,
    base: Option<&Env>,
    s: &Scale,
    mut w: Workload,
) -> Result<(Latency, Option<Compared>)> {
    let (mut off, mut on, mut theirs) = (Vec::new(), Watched::default(), Watched::default());
    let (mut pinned_off, mut pinned_on) = (Vec::new(), Watched::default());
    let server = w.start_server()?;
    for round in 0..s.latency_rounds {
        step(&format!("bench 2/5: {}, round {}", w.name, round + 1));
        // The arms of a round run back to back, in an order that changes from round to
        // round, so that the machine's drift cancels in each round's ratios.
        for arm in order(round, base.is_some()) {
            match arm {
                Arm::Off => off.push(run_latency(&mut w)?),
                Arm::Current => on.push(run_watched(env, &mut w, s.calls)?),
                Arm::Baseline => {
                    theirs.push(run_watched(base.expect("a baseline"), &mut w, s.calls)?)
                }
            }
        }
        let (p_off, p_on) = pinned_pair(env, &mut w, &server, s.calls, round)?;
        pinned_off.push(p_off);
        pinned_on.push(p_on);
    }
    let ratios = on
        .times
        .iter()
        .zip(&off)
        .map(|(n, f)| n.0 / f.0)
        .collect::<Vec<_>>();
    let compared = base.map(|_| Compared {
        name: w.name,
        off_p50: medians(&off).0,
        baseline: medians(&theirs.times).0,
        current: medians(&on.times).0,
        ratios: on
            .times
            .iter()
            .zip(&theirs.times)
            .map(|(n, b)| n.0 / b.0)
            .collect(),
        baseline_cpu: median(theirs.cpu.clone()),
        current_cpu: median(on.cpu.clone()),
    });
    let kernel_us = on.kernel_us.clone();
    let latency = Latency {
        name: w.name,
        off: medians(&off),
        on: medians(&on.times),
        kernel_ratios: off
            .iter()
            .zip(&kernel_us)
            .map(|(f, k)| (f.0 + k / 1000.0) / f.0)
            .collect(),
        kernel_us,
        ratios,
        pinned: (median(pinned_off.clone()), medians(&pinned_on.times).0),
        pinned_ratios: pinned_on
            .times
            .iter()
            .zip(&pinned_off)
            .map(|(n, f)| n.0 / f)
            .collect(),
        agent_cpu: median(on.cpu),
        agent_hwm_kb: on.hwm,
        captured: on.captured.iter().copied().fold(f64::INFINITY, f64::min),
    };
    Ok((latency, compared))
}

/// Every workload, HTTPS last; with a baseline, its figures beside the current's.
pub fn measure(env: &Env, base: Option<&Env>, s: &Scale) -> Result<(Vec<Latency>, Vec<Compared>)> {
    let _counting = kstats::Enabled::on();
    let mut loads = workloads(env, s);
    loads.push(https_workload(env, s)?);
    let (mut out, mut compared) = (Vec::new(), Vec::new());
    for w in loads {
        let (l, c) = measure_one(env, base, s, w)?;
        out.push(l);
        compared.extend(c);
    }
    Ok((out, compared))
}

/// One workload's round trips with both agents.
pub struct Compared {
    name: &'static str,
    off_p50: f64,
    baseline: f64,
    current: f64,
    /// Per round: the current's p50 over the baseline's.
    ratios: Vec<f64>,
    baseline_cpu: f64,
    current_cpu: f64,
}

/// The latency part of the "Before and after" section.
pub fn write_compared(md: &mut String, compared: &[Compared]) {
    let _ = writeln!(
        md,
        "\n### Overhead on watched MCP traffic\n\nSection 2's rounds with a third part, the baseline's agent on; the three parts take every order in turn. The ratio is the current's p50 over the baseline's, per round (lower is better).\n\n| workload | p50 off ms | p50 baseline ms | p50 current ms | p50 current/baseline | agent CPU baseline | agent CPU current |\n|---|---|---|---|---|---|---|"
    );
    for c in compared {
        let r = Ratio::of(c.ratios.clone());
        let _ = writeln!(
            md,
            "| {} | {:.3} | {:.3} | {:.3} | {} ({}) | {:.1}% | {:.1}% |",
            c.name,
            c.off_p50,
            c.baseline,
            c.current,
            r.show(),
            r.verdict(Better::Lower),
            c.baseline_cpu,
            c.current_cpu
        );
    }
}

/// The p50 on/off target of every workload.
const TARGET: f64 = 1.03;

/// A workload's verdict: the wall-clock ratio's, unpinned or pinned, whichever decides
/// (both deciding and disagreeing: inconclusive); else "not met" if the kernel programs'
/// time alone already puts the ratio past the target.
fn decide(l: &Latency) -> String {
    let wall = Ratio::of(l.ratios.clone()).against(TARGET, Better::Lower);
    let pinned = Ratio::of(l.pinned_ratios.clone()).against(TARGET, Better::Lower);
    let kernel = Ratio::of(l.kernel_ratios.clone());
    let decided = |v: &str| v == "met" || v == "**not met**";
    match (decided(&wall), decided(&pinned)) {
        (true, true) if wall != pinned => {
            format!("inconclusive: unpinned {wall}, pinned {pinned}")
        }
        (true, _) => wall,
        (_, true) => format!("{pinned}, pinned"),
        _ if kernel.against(TARGET, Better::Lower) == "**not met**" => {
            "**not met**, by the kernel programs' time alone".into()
        }
        _ => format!("{wall}; pinned {pinned}"),
    }
}

/// The report's section 2.
pub fn write_section(md: &mut String, s: &Scale, latency: &[Latency]) {
    let _ = writeln!(md, "\n## 2. Overhead on watched MCP traffic\n");
    let _ = writeln!(
        md,
        "{} back-to-back `tools/call` after {} warm-up calls, agent off and on (watching every process), {} rounds; each round runs both, in alternating order, then both again with the client and its server pinned to CPU 0 (`taskset -c 0`; the agent free to run on the other core), which takes the scheduler's placement out of the noise. A p50 ratio is the median of the rounds' on/off ratios (quartiles in brackets: this machine's own round-to-round noise). Beside them, the kernel programs' own run time per call (`bpf_stats`: the agent's programs' `run_time_ns`, sampled every 20 ms beside the `tools/call`s the agent has reported, from the first sample that saw a call to the first that saw the last, so the processes' start-up and exit fall outside; less the machine's other processes' share measured over 0.3 s before; over the calls between), and the ratio it alone would make ((p50 off + that time) / p50 off: a floor under the wall-clock ratio). Every \"on\" run must see the agent report at least the calls it timed (`mcp_requests_total{{method=\"tools/call\"}}` on its `/metrics`; over HTTPS that needs the uprobes), or the bench stops. Target: p50 ratio at most {TARGET}, \"met\" only when a quartile range is inside it, \"not met\" when it is outside (or the kernel programs' ratio alone is), else inconclusive with why.\n",
        s.calls, s.warmup, s.latency_rounds
    );
    let _ = writeln!(
        md,
        "| workload | p50 off ms | p50 on ms | p50 ratio | pinned p50 off / on ms | pinned p50 ratio | kernel programs µs a call | their ratio alone | verdict | p99 off ms | p99 on ms | agent CPU | agent peak RSS | calls the agent reported (fewest in one run) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for l in latency {
        let k = Ratio::of(l.kernel_us.clone());
        let _ = writeln!(
            md,
            "| {} | {:.3} | {:.3} | {} | {:.3} / {:.3} | {} | {:.1} [{:.1}–{:.1}] | {} | {} | {:.3} | {:.3} | {:.1}% | {} MiB | {:.0} |",
            l.name,
            l.off.0,
            l.on.0,
            Ratio::of(l.ratios.clone()).show(),
            l.pinned.0,
            l.pinned.1,
            Ratio::of(l.pinned_ratios.clone()).show(),
            k.median,
            k.spread.0,
            k.spread.1,
            Ratio::of(l.kernel_ratios.clone()).show(),
            decide(l),
            l.off.1,
            l.on.1,
            l.agent_cpu,
            l.agent_hwm_kb / 1024,
            l.captured
        );
    }
}
