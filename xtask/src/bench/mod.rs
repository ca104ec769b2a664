//! `cargo xtask bench`: every measurement side by side in one run, medians of interleaved
//! rounds, written to BENCHMARKS.md (or, with `--smoke`, a quick pass to target/).
//!
//! 1. Cost to unwatched processes: a pipe and a socket micro-benchmark with no agent, with
//!    empty programs on mcptap's hooks (the floor), with mcptap watching other processes, and
//!    with mcptap watching every process ([`unwatched`]).
//! 2. Overhead on watched MCP traffic: p50/p99 of back-to-back tools/call, agent off vs on
//!    (stdio, HTTP, and HTTPS through the OpenSSL uprobes) ([`latency`]).
//! 3. Capacity: the highest rate with no kernel loss and every exchange correlated
//!    ([`capacity`]).
//! 4. The userspace pipeline alone, on a recorded capture, with a profile ([`replay`]).
//! 5. Footprint: agent CPU and RSS under load, and RSS with 1,000 sessions open
//!    ([`footprint`]).
//!
//! This module holds the scale of a run, the orchestration and the report's frame; [`env`]
//! starts and reads the agent, [`stats`] makes figures of rounds, and [`soak`] is
//! `cargo xtask soak`.

mod capacity;
mod env;
mod footprint;
mod latency;
mod replay;
mod soak;
mod stats;
mod unwatched;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::{root, run, step};
use capacity::{CapacityRun, Series};
use env::{Env, processes_named};
use footprint::Footprint;
use latency::Latency;
use replay::Replay;
use unwatched::Unwatched;

pub use soak::soak;

/// How much to measure.
pub struct Scale {
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

/// Everything one run measured (a section not run holds its empty figures).
struct Results {
    unwatched: Unwatched,
    latency: Vec<Latency>,
    capacity: Vec<(Series, Vec<CapacityRun>)>,
    replay: Replay,
    footprint: Footprint,
}

/// Run the sections `want` takes (by number, 1 to 5).
fn measure(env: &Env, s: &Scale, want: impl Fn(u32) -> bool) -> Result<Results> {
    let unwatched = if want(1) {
        unwatched::measure(env, s)?
    } else {
        Unwatched::empty()
    };
    let latency = if want(2) {
        latency::measure(env, s)?
    } else {
        Vec::new()
    };
    let mut capacity = Vec::new();
    if want(3) {
        for series in Series::all(s) {
            capacity.push((series, capacity::measure(env, s, series)?));
        }
    }
    let replay = if want(4) {
        replay::measure(env, s)?
    } else {
        Replay::empty()
    };
    let footprint = if want(5) {
        footprint::measure(env, s.sessions)?
    } else {
        Footprint::default()
    };
    Ok(Results {
        unwatched,
        latency,
        capacity,
        replay,
        footprint,
    })
}

/// The report.
fn report(s: &Scale, r: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# mcptap benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench`{}; every figure is a median of interleaved rounds measured in the same run. {}\n",
        if s.smoke {
            " --smoke (a quick pass: figures are not meaningful)"
        } else {
            ""
        },
        machine()
    );
    unwatched::write_section(&mut md, &r.unwatched);
    latency::write_section(&mut md, s, &r.latency);
    capacity::write_section(&mut md, s, &r.capacity);
    replay::write_section(&mut md, &r.replay);
    footprint::write_section(&mut md, s, &r.footprint);
    md
}

/// The machine, kernel, commit and time of a run, as one sentence for a report's head.
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

/// Bootstrap, install the peers and build what the run measures; its [`Env`].
fn prepare(smoke: bool) -> Result<Env> {
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
    let dir = root().join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    Ok(Env {
        mcptap: root().join("target").join(profile).join("mcptap"),
        peer: root().join("target").join(profile).join("bench_peer"),
        peers,
        dir,
    })
}

/// Where the report goes: BENCHMARKS.md only for a full, complete run.
fn report_path(smoke: bool, partial: bool) -> PathBuf {
    if smoke || partial {
        root().join("target").join(if smoke {
            "bench-smoke.md"
        } else {
            "bench-partial.md"
        })
    } else {
        root().join("BENCHMARKS.md")
    }
}

/// Run the suite and write the report.
pub fn bench(smoke: bool) -> Result<()> {
    let env = prepare(smoke)?;
    let s = if smoke { &SMOKE } else { &FULL };
    // MCPTAP_BENCH_ONLY=1,3 runs only those sections (for working on one; the report then
    // goes to target/ and says so).
    let only: Vec<u32> = std::env::var("MCPTAP_BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_default();
    let results = measure(&env, s, |n| only.is_empty() || only.contains(&n))?;
    let md = report(s, &results);
    let out = report_path(smoke, !only.is_empty());
    std::fs::write(&out, &md)?;
    step(&format!("wrote {}", out.display()));
    print!("{md}");
    Ok(())
}
