//! `cargo xtask bench`: every measurement side by side in one run, medians of interleaved
//! rounds, written to BENCHMARKS.md (or, with `--smoke`, a quick pass to target/).
//!
//! 1. Cost to unwatched processes: a pipe and a socket micro-benchmark with no agent, with
//!    empty programs on mcptap's hooks (the floor), with mcptap watching other processes, and
//!    with mcptap watching every process ([`unwatched`]), judged on the programs' run time
//!    the kernel counts (`bpf_stats`, [`kstats`]) plus the hooks' trap.
//! 2. Overhead on watched MCP traffic: p50/p99 of back-to-back tools/call, agent off vs on
//!    (stdio, HTTP, and HTTPS through the OpenSSL uprobes), also pinned to one CPU, with the
//!    kernel programs' time per call ([`latency`]), and what one OpenSSL uprobe hit costs
//!    ([`uprobe`]).
//! 3. Capacity: the highest rate with no kernel loss and every exchange correlated
//!    ([`capacity`]).
//! 4. The userspace pipeline alone, on a recorded capture, with callgrind's instructions per
//!    message view by pipeline stage ([`replay`], [`stages`]).
//! 5. Footprint: agent CPU and RSS under load, and RSS idle and with 10,000 and 100,000
//!    sessions open ([`footprint`]).
//! 6. How cost grows: agent CPU against rate, RSS against sessions and message size, drawn
//!    as SVG images beside the report ([`growth`]).
//! 7. What one TLS read or write costs, per TLS library (OpenSSL, GnuTLS, Go): client CPU
//!    per call with no agent, with `--no-tls` and with the probes set ([`tls_calls`]).
//! 8. The userspace pipeline on HTTP/2 and WebSocket captures beside HTTP/1.1, as MB/s,
//!    calls/s and instructions a call ([`transports`]).
//! 9. Server health sampling: the agent's CPU with 100 followed stdio servers read from
//!    /proc every second against not at all, and so the cost of one sample ([`health`]).
//! 10. Security scanning: the replay of a content-bearing capture with the default rules
//!     against `--rule-off all`, and the findings it must report ([`security`]).
//!
//! With `--baseline REV` ([`baseline`]), an older revision's agent is built from its own
//! tree and measured beside this tree's, interleaved in the same run, and the report gains a
//! "Before and after" section; `--only LIST` runs only some sections, and then (not a smoke
//! run, no baseline) also rewrites those sections in BENCHMARKS.md, each marked with the run
//! it comes from, leaving the others as they were ([`splice`]). `MCPTAP_BENCH_BINARY=PATH`
//! measures that agent binary instead of building this tree's (a copy taken aside keeps a
//! long run's figures from a tree others are changing).
//!
//! This module holds the scale of a run, the orchestration and the report's frame; [`env`]
//! starts and reads the agent, [`stats`] makes figures of rounds, and [`soak`] is
//! `cargo xtask soak`.

mod agentic;
mod baseline;
mod capacity;
mod env;
mod footprint;
mod growth;
mod health;
mod kstats;
mod latency;
mod recfile;
mod replay;
mod security;
mod soak;
mod splice;
mod stages;
mod stats;
mod tls_calls;
mod transports;
mod unwatched;
mod uprobe;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

use crate::{root, run, step};
use baseline::{Baseline, Compared};
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
    /// Session counts of section 5's RSS (the first is also the before/after comparison's).
    sessions: &'static [u64],
    /// Session counts of the RSS curve (section 6).
    session_curve: &'static [u64],
    /// Message sizes of the RSS curve, sent at `size_curve_rate` messages/s over a pipe.
    size_curve: &'static [usize],
    size_curve_rate: u64,
    /// Echo sizes of the p50 on/off curve.
    payload_curve: &'static [usize],
    /// Replay rounds of the before/after comparison (each replays with both binaries).
    replay_rounds: usize,
}

const FULL: Scale = Scale {
    smoke: false,
    dd_count: 2_000_000,
    ping_count: 1_000_000,
    sock_count: 200_000,
    rounds: 5,
    latency_rounds: 12,
    calls: 600,
    warmup: 200,
    capacity_secs: 3.0,
    small_rates: &[10_000, 25_000, 50_000, 75_000, 100_000, 150_000, 200_000],
    large_rates: &[1_000, 2_000, 4_000, 8_000, 12_000, 16_000, 20_000],
    sessions: &[10_000, 100_000],
    session_curve: &[10, 100, 1000, 10_000, 100_000],
    size_curve: &[256, 4096, 65_536, 262_144, 1_048_576],
    size_curve_rate: 200,
    payload_curve: &[16, 1024, 16_384, 262_144],
    replay_rounds: 9,
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
    sessions: &[50, 16_000],
    session_curve: &[10, 50],
    size_curve: &[256, 65_536],
    size_curve_rate: 100,
    payload_curve: &[16, 16_384],
    replay_rounds: 3,
};

/// The report's sections, as `--only` names them (or numbers them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Section 1, cost to processes mcptap does not watch.
    #[value(alias = "1")]
    Unwatched,
    /// Section 2, overhead on watched MCP traffic.
    #[value(alias = "2")]
    Latency,
    /// Section 3, capacity.
    #[value(alias = "3")]
    Capacity,
    /// Section 4, the userspace pipeline alone (`mcptap replay`).
    #[value(alias = "4")]
    Replay,
    /// Section 5, footprint.
    #[value(alias = "5")]
    Footprint,
    /// Section 6, how cost grows (curves drawn as images).
    #[value(alias = "6")]
    Growth,
    /// Section 7, what one TLS read or write costs, per TLS library.
    #[value(alias = "7")]
    TlsCalls,
    /// Section 8, the userspace pipeline on HTTP/2 and WebSocket captures.
    #[value(alias = "8")]
    Transports,
    /// Section 9, what sampling the processes that serve MCP costs the agent.
    #[value(alias = "9")]
    Health,
    /// Section 10, what the security rules cost the userspace pipeline.
    #[value(alias = "10")]
    Security,
}

impl Section {
    fn name(self) -> String {
        use clap::ValueEnum as _;
        self.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string())
    }
}

/// What `cargo xtask bench` was asked for.
pub struct Options {
    /// A quick pass that only checks the suite runs.
    pub smoke: bool,
    /// A git revision to build and measure beside this tree.
    pub baseline: Option<String>,
    /// Only these sections (empty: every one).
    pub only: Vec<Section>,
}

impl Options {
    /// The smoke run `cargo xtask test` makes.
    pub fn smoke() -> Options {
        Options {
            smoke: true,
            baseline: None,
            only: Vec::new(),
        }
    }

    fn wants(&self, s: Section) -> bool {
        self.only.is_empty() || self.only.contains(&s)
    }

    fn partial(&self) -> bool {
        !self.only.is_empty()
    }

    /// Release builds, unless a plain smoke run (a baseline is always compared release
    /// against release: a ratio to a debug build would mean nothing).
    fn release(&self) -> bool {
        !self.smoke || self.baseline.is_some()
    }

    /// The command line of the run (its flags, without the report's glosses).
    fn command(&self) -> String {
        let mut c = String::from("cargo xtask bench");
        if self.smoke {
            c.push_str(" --smoke");
        }
        if let Some(rev) = &self.baseline {
            let _ = write!(c, " --baseline {rev}");
        }
        if self.partial() {
            let names: Vec<String> = self.only.iter().map(|s| s.name()).collect();
            let _ = write!(c, " --only {}", names.join(","));
        }
        c
    }

    /// The flags, as the report's first line repeats them.
    fn flags(&self) -> String {
        let mut f = String::new();
        if self.smoke {
            f.push_str(" --smoke (a quick pass: figures are not meaningful)");
        }
        if let Some(rev) = &self.baseline {
            let _ = write!(f, " --baseline {rev}");
        }
        if self.partial() {
            let names: Vec<String> = self.only.iter().map(|s| s.name()).collect();
            let _ = write!(
                f,
                " --only {} (the other sections were not run)",
                names.join(",")
            );
        }
        f
    }
}

/// Run a section's measurement and say how long it took (a full run's length is the sum).
fn timed<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = std::time::Instant::now();
    let out = f()?;
    step(&format!("{name} took {:.0} s", t.elapsed().as_secs_f64()));
    Ok(out)
}

/// Everything one run measured (a section not run holds its empty figures).
struct Results {
    unwatched: Unwatched,
    latency: Vec<Latency>,
    uprobe: uprobe::UprobeCost,
    capacity: Vec<(Series, Vec<CapacityRun>)>,
    replay: Replay,
    model_traffic: agentic::ModelTraffic,
    /// Section 5: the idle agent (0 sessions), then each of the scale's session counts.
    footprint: Vec<(u64, Footprint)>,
    growth: growth::Growth,
    tls_calls: tls_calls::TlsCalls,
    transports: transports::Transports,
    health: health::Sampling,
    security: security::Scanning,
}

/// A run: the current binary's environment, the baseline's if there is one, the scale.
struct Run<'a> {
    env: &'a Env,
    base: Option<&'a Env>,
    s: &'a Scale,
}

impl Run<'_> {
    fn capacity(&self, compared: &mut Compared) -> Result<Vec<(Series, Vec<CapacityRun>)>> {
        let mut out = Vec::new();
        for (k, series) in Series::all(self.s).into_iter().enumerate() {
            let runs = match self.base {
                Some(base) => {
                    let c = capacity::measure_pair(self.env, base, self.s, series, k)?;
                    let runs = c.current_runs();
                    compared.capacity.push(c);
                    runs
                }
                None => capacity::measure(self.env, self.s, series)?,
            };
            out.push((series, runs));
        }
        Ok(out)
    }

    fn replay(&self, compared: &mut Compared) -> Result<Replay> {
        let Some(base) = self.base else {
            return replay::measure(self.env, self.s);
        };
        let (r, c) = replay::measure_pair(self.env, base, self.s, self.s.replay_rounds)?;
        compared.replay = Some(c);
        Ok(r)
    }

    fn footprint(&self, compared: &mut Compared) -> Result<Vec<(u64, Footprint)>> {
        let mut out = vec![(0, footprint::measure(self.env, 0)?)];
        for (i, &n) in self.s.sessions.iter().enumerate() {
            let f = match self.base {
                Some(base) if i == 0 => {
                    let (f, c) = footprint::measure_pair(self.env, base, n, self.s.rounds)?;
                    compared.footprint = Some(c);
                    f
                }
                _ => footprint::measure(self.env, n)?,
            };
            out.push((n, f));
        }
        Ok(out)
    }

    /// Run the sections `opts` takes; with a baseline, also its before/after figures.
    fn measure(&self, opts: &Options) -> Result<(Results, Compared)> {
        let mut compared = Compared::default();
        let unwatched = if opts.wants(Section::Unwatched) {
            let (u, c) = timed("section 1", || {
                unwatched::measure(self.env, self.base, self.s)
            })?;
            compared.unwatched = c;
            u
        } else {
            Unwatched::empty()
        };
        let latency = if opts.wants(Section::Latency) {
            let (l, c) = timed("section 2", || {
                latency::measure(self.env, self.base, self.s)
            })?;
            compared.latency = c;
            l
        } else {
            Vec::new()
        };
        let want = |sec| opts.wants(sec);
        let results = Results {
            unwatched,
            latency,
            uprobe: if want(Section::Latency) {
                timed("section 2's uprobe hit", || {
                    uprobe::measure(self.env, self.s)
                })?
            } else {
                uprobe::UprobeCost::default()
            },
            capacity: if want(Section::Capacity) {
                timed("section 3", || self.capacity(&mut compared))?
            } else {
                Vec::new()
            },
            replay: if want(Section::Replay) {
                timed("section 4", || self.replay(&mut compared))?
            } else {
                Replay::empty()
            },
            model_traffic: if want(Section::Replay) {
                timed("section 4's agentic replay", || {
                    agentic::measure(self.env, self.s)
                })?
            } else {
                agentic::ModelTraffic::default()
            },
            footprint: if want(Section::Footprint) {
                timed("section 5", || self.footprint(&mut compared))?
            } else {
                Vec::new()
            },
            growth: if want(Section::Growth) {
                timed("section 6", || growth::measure(self.env, self.s))?
            } else {
                growth::Growth::default()
            },
            tls_calls: if want(Section::TlsCalls) {
                timed("section 7", || tls_calls::measure(self.env, self.s))?
            } else {
                tls_calls::TlsCalls::default()
            },
            transports: if want(Section::Transports) {
                timed("section 8", || transports::measure(self.env, self.s))?
            } else {
                transports::Transports::default()
            },
            health: if want(Section::Health) {
                timed("section 9", || health::measure(self.env, self.s))?
            } else {
                health::Sampling::default()
            },
            security: if want(Section::Security) {
                timed("section 10", || security::measure(self.env, self.s))?
            } else {
                security::Scanning::default()
            },
        };
        Ok((results, compared))
    }
}

/// The report: every section (a partial run only those it ran), then the before/after
/// comparison if there is a baseline.
fn report(
    s: &Scale,
    opts: &Options,
    r: &Results,
    before_after: Option<(&Baseline, &Compared)>,
    images: &growth::Images,
) -> Result<String> {
    let mut md = String::new();
    let _ = writeln!(md, "# mcptap benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench`{}; every figure is a median of interleaved rounds measured in the same run. {}{}\n",
        opts.flags(),
        machine(),
        agent_note()
    );
    let want = |sec| !opts.partial() || opts.wants(sec);
    if want(Section::Unwatched) {
        unwatched::write_section(&mut md, &r.unwatched);
    }
    if want(Section::Latency) {
        latency::write_section(&mut md, s, &r.latency);
        uprobe::write_part(&mut md, &r.uprobe);
    }
    if want(Section::Capacity) {
        capacity::write_section(&mut md, s, &r.capacity);
    }
    if want(Section::Replay) {
        replay::write_section(&mut md, &r.replay);
        agentic::write_part(&mut md, &r.model_traffic);
    }
    if want(Section::Footprint) {
        footprint::write_section(&mut md, &r.footprint);
    }
    if want(Section::Growth) {
        growth::write_section(&mut md, s, images, &r.capacity, &r.growth)?;
    }
    if want(Section::TlsCalls) {
        tls_calls::write_section(&mut md, s, &r.tls_calls);
    }
    if want(Section::Transports) {
        let pipe = opts
            .wants(Section::Replay)
            .then_some((r.replay.messages, r.replay.seconds));
        transports::write_section(&mut md, &r.transports, pipe);
    }
    if want(Section::Health) {
        health::write_section(&mut md, &r.health);
    }
    if want(Section::Security) {
        security::write_section(&mut md, &r.security);
    }
    if let Some((b, c)) = before_after {
        baseline::write_section(&mut md, b, c);
    }
    Ok(md)
}

/// The images of a report go beside it, named after it (`BENCHMARKS.md`: `bench-*.svg`).
fn images_of(report: &Path) -> growth::Images {
    let stem = report.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    growth::Images {
        dir: report.parent().map(Path::to_path_buf).unwrap_or_default(),
        prefix: match stem {
            "bench-smoke" => "bench-smoke-",
            "bench-baseline" => "bench-baseline-",
            "bench-partial" => "bench-partial-",
            _ => "bench-",
        },
    }
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

/// The agent binary `MCPTAP_BENCH_BINARY` names, if it does: measured instead of a build.
fn given_agent() -> Option<PathBuf> {
    std::env::var_os("MCPTAP_BENCH_BINARY")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// What the report's head (or a spliced section) says of the agent measured, when it is not
/// this tree's build.
fn agent_note() -> String {
    given_agent().map_or_else(String::new, |p| {
        let built = Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC", "-r"])
            .arg(&p)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        format!(
            " The agent measured is `{}` (`MCPTAP_BENCH_BINARY`, built {built}), not a build of this tree.",
            p.display()
        )
    })
}

/// Bootstrap, install the peers and build what the run measures; its [`Env`].
fn prepare(opts: &Options) -> Result<Env> {
    crate::bootstrap::all()?;
    let peers = crate::peers::install()?;
    // The smoke run only checks that the suite runs, so it takes the debug build `cargo xtask
    // test` has made already rather than a release build of its own (minutes on 2 cores);
    // the figures it writes are not measurements. Beside a baseline it builds release: the
    // baseline is a release build, and the comparison should run as a real one would.
    let profile = if opts.release() { "release" } else { "debug" };
    let given = given_agent();
    let mut build = crate::cargo();
    build.args(["build", "--package", "xtask"]);
    if given.is_none() {
        build.args(["--package", "mcptap"]);
    }
    if opts.release() {
        build.arg("--release");
    }
    run(&mut build)?;
    // The rustls client of section 7 is the tests' peer, built on its own: `--bin` would
    // narrow the build above to it.
    let mut peer = crate::cargo();
    peer.args(["build", "--package", "mcptap-e2e", "--bin", "rustls_mcp"]);
    if opts.release() {
        peer.arg("--release");
    }
    run(&mut peer)?;
    let dir = root().join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    Ok(Env {
        mcptap: given.unwrap_or_else(|| root().join("target").join(profile).join("mcptap")),
        peer: root().join("target").join(profile).join("bench_peer"),
        rustls_peer: root().join("target").join(profile).join("rustls_mcp"),
        peers,
        dir,
    })
}

/// Where the report goes: BENCHMARKS.md only for a full, complete run; a comparison that is
/// partial or a smoke run goes to target/bench-baseline.md.
fn report_path(opts: &Options) -> PathBuf {
    let target = root().join("target");
    if opts.baseline.is_some() && (opts.smoke || opts.partial()) {
        target.join("bench-baseline.md")
    } else if opts.smoke {
        target.join("bench-smoke.md")
    } else if opts.partial() {
        target.join("bench-partial.md")
    } else {
        root().join("BENCHMARKS.md")
    }
}

/// Run the suite and write the report.
pub fn bench(opts: &Options) -> Result<()> {
    let started = std::time::Instant::now();
    let env = prepare(opts)?;
    let baseline = opts
        .baseline
        .as_deref()
        .map(baseline::prepare)
        .transpose()?;
    let base_env = baseline.as_ref().map(|b| b.env(&env)).transpose()?;
    // Another agent would add its own cost to every state, "no agent" included.
    let mut others = processes_named("mcptap");
    if let Some(name) = given_agent().and_then(|p| Some(p.file_name()?.to_str()?.to_string())) {
        // The kernel keeps 15 bytes of a comm.
        let comm: String = name.chars().take(15).collect();
        if comm != "mcptap" {
            others.extend(processes_named(&comm));
        }
    }
    if !others.is_empty() {
        bail!(
            "mcptap is already running (pid {others:?}): stop it first, or every figure includes its cost"
        );
    }
    let s = if opts.smoke { &SMOKE } else { &FULL };
    let measuring = std::time::Instant::now();
    let run = Run {
        env: &env,
        base: base_env.as_ref(),
        s,
    };
    let (results, compared) = run.measure(opts)?;
    let out = report_path(opts);
    let md = report(
        s,
        opts,
        &results,
        baseline.as_ref().map(|b| (b, &compared)),
        &images_of(&out),
    )?;
    std::fs::write(&out, &md)?;
    step(&format!("wrote {}", out.display()));
    if opts.partial() && !opts.smoke && opts.baseline.is_none() {
        // The sections again, with their images (if any) beside BENCHMARKS.md.
        let main = root().join("BENCHMARKS.md");
        let md = report(s, opts, &results, None, &images_of(&main))?;
        let from = format!(
            "*This section is from `{}`, not from the run the head of this file names. {}{}*",
            opts.command(),
            machine(),
            agent_note()
        );
        let old = std::fs::read_to_string(&main).unwrap_or_default();
        std::fs::write(&main, splice::splice(&old, &md, &from))?;
        step(&format!("rewrote its sections in {}", main.display()));
    }
    print!("{md}");
    step(&format!(
        "bench took {:.0} s ({:.0} s measuring)",
        started.elapsed().as_secs_f64(),
        measuring.elapsed().as_secs_f64()
    ));
    Ok(())
}
