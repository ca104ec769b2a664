//! Section 9: what following the processes that serve MCP costs. One holder process starts
//! N minimal stdio servers and makes the initialize handshake with each
//! (`assets/stdio_servers.py`), so that the agent follows N server processes; the agent's CPU
//! over a window is measured with `--process-interval 1s` (every server read from /proc once
//! a second, fifteen times the default rate) and with `off`, in rounds that alternate which
//! goes first. The difference over the samples taken is the cost of one process sample.
//! Sampling is the agent's own userspace work on its timer: no kernel program changes; what
//! it adds to section 1's figures is the agent's own /proc reads (about a dozen syscalls a
//! sample). To show it, section 1's pipe workload (a process the agent watches nothing of
//! once its pipe is found not to carry MCP) is timed under one agent sampling every second,
//! with the N servers to sample and with none, in rounds that alternate which goes first.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::Scale;
use super::env::{CpuMeter, Env, free_port, http_get, metric};
use super::stats::{Better, Ratio, median};
use crate::{root, step};

/// One sample's target: at the default interval (15 s), 100 servers cost the agent
/// 100 × this / 15 s of CPU.
const TARGET_US: f64 = 200.0;

/// The rounds' figures.
#[derive(Default)]
pub struct Sampling {
    /// Servers followed.
    pub servers: u64,
    /// Seconds each window lasted.
    pub window_s: f64,
    /// Syscalls of each pipe timing.
    pub syscalls: f64,
    /// Agent CPU, % of a core, sampling every second, per round.
    pub on: Vec<f64>,
    /// The same, not sampling, per round.
    pub off: Vec<f64>,
    /// Section 1's pipe workload, ns a syscall, with servers being sampled, per round.
    pub pipe_on: Vec<f64>,
    /// The same, under the same agent with no server to sample.
    pub pipe_off: Vec<f64>,
}

impl Sampling {
    /// µs of agent CPU per process sample, per round.
    fn per_sample_us(&self) -> Vec<f64> {
        let per_second = self.servers as f64;
        self.on
            .iter()
            .zip(&self.off)
            .map(|(on, off)| (on - off) / 100.0 * 1e6 / per_second)
            .collect()
    }
}

/// The holder of N idle stdio servers, ready.
struct Holder {
    child: std::process::Child,
}

impl Holder {
    fn start(n: u64) -> Result<Holder> {
        let mut child = Command::new("python3")
            .arg(root().join("xtask/src/bench/assets/stdio_servers.py"))
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting python3 stdio_servers.py")?;
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped")).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("stdio_servers.py did not get ready: {line:?}");
        }
        Ok(Holder { child })
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Closing its input ends it and its servers.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Wait (at most 60 s) until the agent on `port` follows `n` bench servers.
fn await_followed(port: u16, n: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let followed = || {
        let text = http_get(port, "/metrics").unwrap_or_default();
        metric(&text, "mcp_server_processes", &["server=\"bench-server\""])
    };
    while followed() != n as f64 {
        if Instant::now() > deadline {
            bail!("the agent followed {} bench servers, not {n}", followed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// One window: the agent's CPU (% of a core) with `interval`, N servers followed.
fn window(env: &Env, n: u64, interval: &str, secs: f64) -> Result<f64> {
    let port = free_port();
    let agent = env.agent(port, &["--process-interval", interval])?;
    let holder = Holder::start(n)?;
    await_followed(port, n)?;
    // One interval passes first, so that every window holds as many samples.
    std::thread::sleep(Duration::from_secs(1));
    let meter = CpuMeter::start(&agent);
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (cpu, _) = meter.read(&agent);
    drop(holder);
    agent.stop();
    Ok(cpu)
}

/// Section 1's pipe workload under one agent sampling every second, with N servers to
/// sample and with none, alternating which goes first: (with, without) ns a syscall per
/// round, and the syscalls a timing makes.
fn pipe_rounds(env: &Env, n: u64, rounds: usize, pings: u64) -> Result<(Vec<f64>, Vec<f64>, f64)> {
    let port = free_port();
    let agent = env.agent(port, &["--process-interval", "1s"])?;
    let (mut with, mut without, mut syscalls) = (Vec::new(), Vec::new(), 0.0);
    for round in 0..rounds {
        step(&format!(
            "bench: the pipe workload beside sampling, round {} of {rounds}",
            round + 1,
        ));
        let sampled_first = round % 2 == 0;
        for sampled in [sampled_first, !sampled_first] {
            let holder = if sampled {
                let h = Holder::start(n)?;
                await_followed(port, n)?;
                Some(h)
            } else {
                None
            };
            let t = super::unwatched::ping(env, "pipe", pings)?;
            syscalls = t.syscalls;
            if sampled {
                with.push(t.ns);
            } else {
                without.push(t.ns);
            }
            drop(holder);
            await_followed(port, 0)?;
        }
    }
    agent.stop();
    Ok((with, without, syscalls))
}

/// Section 9's rounds.
pub fn measure(env: &Env, s: &Scale) -> Result<Sampling> {
    let (n, secs) = if s.smoke { (5, 2.0) } else { (100, 20.0) };
    // Several seconds of pipe syscalls, so that each timing spans several samples.
    let pings = 4 * s.ping_count;
    let mut r = Sampling {
        servers: n,
        window_s: secs,
        ..Default::default()
    };
    for round in 0..s.rounds {
        step(&format!(
            "bench: server sampling, round {} of {}",
            round + 1,
            s.rounds
        ));
        let on_first = round % 2 == 0;
        for on in [on_first, !on_first] {
            let cpu = window(env, n, if on { "1s" } else { "off" }, secs)?;
            if on {
                r.on.push(cpu);
            } else {
                r.off.push(cpu);
            }
        }
    }
    (r.pipe_on, r.pipe_off, r.syscalls) = pipe_rounds(env, n, 2 * s.rounds, pings)?;
    Ok(r)
}

/// Section 9 of the report.
pub fn write_section(md: &mut String, r: &Sampling) {
    let _ = writeln!(md, "## 9. Server health sampling\n");
    let _ = writeln!(
        md,
        "What following the processes that serve MCP costs the agent. One holder starts {n} minimal stdio servers (`xtask/src/bench/assets/stdio_servers.py`) and makes the initialize handshake with each, so the agent follows {n} server processes; then the agent's CPU (utime + stime from /proc) over {w:.0} s windows, with `--process-interval 1s` (each server read from /proc once a second: `stat`, `limits`, the `fd` directory) and with `off`, {rounds} rounds that alternate which goes first. Per sample = (on − off) / {n} samples a second. Sampling runs in the agent's own thread on its timer and adds no kernel program: what it adds to section 1's figures is the agent's own reads of /proc, about a dozen syscalls a sample, hooked and filtered out in the kernel like any other unwatched process's. Target: at most {TARGET_US} µs a sample (at the default 15 s interval, 100 servers then cost at most {:.2}% of a core).\n",
        TARGET_US * 100.0 / 15.0 / 1e4,
        n = r.servers,
        w = r.window_s,
        rounds = r.on.len(),
    );
    let _ = writeln!(md, "| | agent CPU, % of a core | verdict |\n|---|---:|---|");
    let _ = writeln!(
        md,
        "| sampling every 1 s | {:.2} | |\n| not sampling (`off`) | {:.2} | |",
        median(r.on.clone()),
        median(r.off.clone()),
    );
    let per = Ratio::of(r.per_sample_us());
    let _ = writeln!(
        md,
        "| **per process sample, µs** | **{}** | {} |\n",
        per.show(),
        per.against(TARGET_US, Better::Lower)
    );
    let moved = Ratio::of(
        r.pipe_on
            .iter()
            .zip(&r.pipe_off)
            .map(|(on, off)| on / off)
            .collect(),
    );
    let _ = writeln!(
        md,
        "Section 1's pipe workload (64-byte `write` then `read` on one pipe, {:.0} syscalls a timing) under one agent with `--process-interval 1s`, timed with the {} servers alive (sampled every second) and with none, {} rounds that alternate which goes first: {:.0} ns a syscall sampling, {:.0} not; sampling / not **{}**, against at most {MOVED}×: {}.\n",
        r.syscalls,
        r.servers,
        r.pipe_on.len(),
        median(r.pipe_on.clone()),
        median(r.pipe_off.clone()),
        moved.show(),
        moved.against(MOVED, Better::Lower)
    );
}

/// How far sampling may move an unwatched process's cost: this machine's noise.
const MOVED: f64 = 1.03;
