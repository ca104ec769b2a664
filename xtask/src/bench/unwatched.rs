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
use super::stats::{Better, Ratio, against, median, quartiles};
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

/// Median ns/syscall by workload (as [`UNWATCHED`]) and state label; and each round's
/// median, by the same keys, for the ratios' spread.
pub struct Unwatched(
    Vec<BTreeMap<&'static str, f64>>,
    Vec<BTreeMap<&'static str, Vec<f64>>>,
);

impl Unwatched {
    /// Not measured: every figure NaN.
    pub fn empty() -> Self {
        let m: BTreeMap<_, _> = State::EVERY.iter().map(|s| (s.label(), f64::NAN)).collect();
        Unwatched(
            vec![m; UNWATCHED.len()],
            vec![BTreeMap::new(); UNWATCHED.len()],
        )
    }

    /// Workload `w`'s ratio in state `st`, mcptap's added cost over the floor's, per round.
    fn round_ratios(&self, w: usize, st: State) -> Vec<f64> {
        let m = &self.1[w];
        let (Some(none), Some(floor), Some(ns)) = (
            m.get(State::None.label()),
            m.get(State::Floor.label()),
            m.get(st.label()),
        ) else {
            return Vec::new();
        };
        (0..ns.len().min(none.len()).min(floor.len()))
            .map(|r| (ns[r] - none[r]) / (floor[r] - none[r]))
            .collect()
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

/// A state measured with one binary.
#[derive(Clone, Copy, Debug)]
struct Arm {
    state: State,
    baseline: bool,
}

/// A round's arms, in order: every state with the current binary; with a baseline, each
/// agent state also with the baseline's, beside the current's, which of the two first
/// alternating from round to round.
fn arms(round: usize, with_baseline: bool) -> Vec<Arm> {
    let arm = |state, baseline| Arm { state, baseline };
    let mut v = if with_baseline {
        let mut v = vec![arm(State::None, false), arm(State::Floor, false)];
        for st in [State::Other, State::All] {
            let base_first = round % 2 == 1;
            v.push(arm(st, base_first));
            v.push(arm(st, !base_first));
        }
        v
    } else {
        State::EVERY.iter().map(|&st| arm(st, false)).collect()
    };
    // Every other round runs the states the other way round, so that a drift over the run
    // (the machine warming, another tenant) does not always favour the same state.
    if round % 2 == 1 {
        v.reverse();
    }
    v
}

/// One arm: the workloads three times, each figure per workload.
fn run_arm(
    env: &Env,
    base: Option<&Env>,
    s: &Scale,
    round: usize,
    a: Arm,
) -> Result<[Vec<f64>; 4]> {
    step(&format!(
        "bench 1/5: unwatched cost, round {}, {}{}",
        round + 1,
        a.state.label(),
        if a.baseline { ", baseline" } else { "" }
    ));
    let which = if a.baseline {
        base.expect("a baseline")
    } else {
        env
    };
    let agent = which.start(a.state, free_port(), &[])?;
    let mut figures: [Vec<f64>; 4] = Default::default();
    for _ in 0..3 {
        for (w, ns) in workloads_once(env, s)?.into_iter().enumerate() {
            figures[w].push(ns);
        }
    }
    if let Some(a) = agent {
        a.stop();
    }
    Ok(figures)
}

/// Per workload, per (state label, baseline?): each round's median.
type PerRound = Vec<BTreeMap<(&'static str, bool), Vec<f64>>>;

/// Every state in every round, each state's workloads three times; with a baseline, its
/// agent states too.
pub fn measure(env: &Env, base: Option<&Env>, s: &Scale) -> Result<(Unwatched, Option<Compared>)> {
    let mut runs: Vec<BTreeMap<&str, Vec<f64>>> = vec![BTreeMap::new(); UNWATCHED.len()];
    let mut per_round: PerRound = vec![BTreeMap::new(); UNWATCHED.len()];
    for round in 0..s.rounds {
        for a in arms(round, base.is_some()) {
            let figures = run_arm(env, base, s, round, a)?;
            for (w, v) in figures.into_iter().enumerate() {
                let key = (a.state.label(), a.baseline);
                per_round[w].entry(key).or_default().push(median(v.clone()));
                if !a.baseline {
                    runs[w].entry(a.state.label()).or_default().extend(v);
                }
            }
        }
    }
    let rounds = per_round
        .iter()
        .map(|m| {
            m.iter()
                .filter(|((_, baseline), _)| !baseline)
                .map(|((label, _), v)| (*label, v.clone()))
                .collect()
        })
        .collect();
    let current = Unwatched(
        runs.into_iter()
            .map(|m| m.into_iter().map(|(k, v)| (k, median(v))).collect())
            .collect(),
        rounds,
    );
    Ok((current, base.map(|_| compare(&per_round))))
}

/// One workload and agent state, both binaries.
pub struct ComparedRow {
    workload: &'static str,
    state: State,
    none_ns: f64,
    baseline_ns: f64,
    current_ns: f64,
    /// Per round: the current's cost added over no agent, over the baseline's.
    ratios: Vec<f64>,
}

/// Section 1 with both binaries.
pub struct Compared(Vec<ComparedRow>);

fn compare(per_round: &PerRound) -> Compared {
    let mut rows = Vec::new();
    for (w, m) in per_round.iter().enumerate() {
        let none = &m[&(State::None.label(), false)];
        for state in [State::Other, State::All] {
            let cur = &m[&(state.label(), false)];
            let base = &m[&(state.label(), true)];
            let ratios = (0..none.len())
                .map(|r| (cur[r] - none[r]) / (base[r] - none[r]))
                .collect();
            rows.push(ComparedRow {
                workload: UNWATCHED[w].0,
                state,
                none_ns: median(none.clone()),
                baseline_ns: median(base.clone()),
                current_ns: median(cur.clone()),
                ratios,
            });
        }
    }
    Compared(rows)
}

/// The unwatched part of the "Before and after" section.
pub fn write_compared(md: &mut String, c: &Compared) {
    let _ = writeln!(
        md,
        "\n### Cost to processes mcptap does not watch\n\nSection 1's agent states run by both binaries in every round, beside each other, alternating which goes first. The ratio is the current's cost added over no agent, over the baseline's, per round (lower is better; the added costs are tens of ns, so this magnifies noise).\n\n| workload | state | no agent ns | baseline ns | current ns | added cost, current/baseline |\n|---|---|---|---|---|---|"
    );
    for r in &c.0 {
        let ratio = Ratio::of(r.ratios.clone());
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} ({}) |",
            r.workload,
            r.state.label(),
            r.none_ns,
            r.baseline_ns,
            r.current_ns,
            ratio.show(),
            ratio.verdict(Better::Lower)
        );
    }
}

/// The report's section 1.
pub fn write_section(md: &mut String, u: &Unwatched) {
    let _ = writeln!(md, "## 1. Cost to processes mcptap does not watch\n");
    let _ = writeln!(
        md,
        "ns per syscall of each workload; the ratio is mcptap's added cost over the floor's added cost, with the quartiles of the rounds' ratios in brackets (target at most 1.2×: met only when the quartile range is inside it, inconclusive when it straddles it). The states run in the opposite order every other round. Workloads: {}.\n",
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
                let q = quartiles(u.round_ratios(w, st));
                let _ = write!(row, " {ns:.0} | {r:.2}× [{:.2}–{:.2}] |", q.0, q.1);
                parts.push(format!(
                    "{} {r:.2}× [{:.2}–{:.2}] ({})",
                    UNWATCHED[w].0,
                    q.0,
                    q.1,
                    against(q, 1.2, Better::Lower)
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
