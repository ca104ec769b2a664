//! Section 1: what mcptap costs processes it does not watch. Syscall micro-benchmarks (a
//! pipe, a Unix socketpair and loopback TCP in one thread, and `dd | cat`) with no agent,
//! with empty programs on mcptap's hooks (the floor), with mcptap watching other processes
//! and with mcptap watching every process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use super::Scale;
use super::env::{Env, State, free_port};
use super::stats::{median, verdict};
use crate::step;

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
pub struct Unwatched(Vec<BTreeMap<&'static str, f64>>);

impl Unwatched {
    /// Not measured: every figure NaN.
    pub fn empty() -> Self {
        let m: BTreeMap<_, _> = State::EVERY.iter().map(|s| (s.label(), f64::NAN)).collect();
        Unwatched(vec![m; UNWATCHED.len()])
    }
}

/// One pass of every workload, in [`UNWATCHED`] order: ns per syscall.
fn workloads_once(env: &Env, s: &Scale) -> Result<[f64; 4]> {
    Ok([
        ping(env, "pipe", s.ping_count)?,
        ping(env, "unix", s.ping_count / 2)?,
        ping(env, "socket", s.sock_count)?,
        dd(s.dd_count)?,
    ])
}

/// Every state in every round, each state's workloads three times.
pub fn measure(env: &Env, s: &Scale) -> Result<Unwatched> {
    let mut runs: Vec<BTreeMap<&str, Vec<f64>>> = vec![BTreeMap::new(); UNWATCHED.len()];
    for round in 0..s.rounds {
        for state in State::EVERY {
            step(&format!(
                "bench 1/5: unwatched cost, round {}, {}",
                round + 1,
                state.label()
            ));
            let agent = env.start(state, free_port(), &[])?;
            for _ in 0..3 {
                for (w, ns) in workloads_once(env, s)?.into_iter().enumerate() {
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

/// The report's section 1.
pub fn write_section(md: &mut String, u: &Unwatched) {
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
    for st in State::EVERY {
        let l = st.label();
        let mut row = format!("| {l} |");
        let mut parts = Vec::new();
        for (w, m) in u.0.iter().enumerate() {
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
}
