//! Section 1: what mcptap costs processes it does not watch. Syscall micro-benchmarks (a
//! pipe, a Unix socketpair and loopback TCP in one thread, and `dd | cat`) with no agent,
//! with empty programs on mcptap's hooks (the floor), with mcptap watching other processes
//! and with mcptap watching every process.
//!
//! The target (mcptap's added cost at most 1.2× the floor's) is judged on the kernel's own
//! counters ([`kstats`]), not on wall-clock differences of ~100 ns on a syscall that takes
//! 0.4–4 µs: an added cost is the hooks' trap (the same for both: the same tracepoints, hit
//! as often) plus the programs' run time, which `bpf_stats` counts per program. The trap is
//! what the many-iteration pipe loop's wall time adds with the floor on, less its programs'
//! counted time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::Scale;
use super::env::{Env, State, free_port};
use super::kstats::{self, Snapshot};
use super::stats::{Better, Ratio, median};
use crate::step;

/// One workload run: wall ns per syscall and how many syscalls it timed.
pub struct Timed {
    pub ns: f64,
    pub syscalls: f64,
}

/// `dd bs=64 | cat` (dd's reads and writes; cat runs on the other core): ns per dd syscall.
fn dd(count: u64) -> Result<Timed> {
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
    let syscalls = (2 * count) as f64;
    Ok(Timed {
        ns: t.elapsed().as_nanos() as f64 / syscalls,
        syscalls,
    })
}

/// `bench_peer syscalls KIND`: one thread writing 64 bytes into a pipe or a loopback TCP
/// connection and reading them back, so nothing blocks or waits for a wake-up.
pub fn ping(env: &Env, kind: &str, count: u64) -> Result<Timed> {
    let out = Command::new(&env.peer)
        .args(["syscalls", kind, &count.to_string()])
        .output()?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("bench_peer syscalls")?;
    let syscalls = v["syscalls"].as_f64().unwrap_or(f64::NAN);
    Ok(Timed {
        ns: v["seconds"].as_f64().unwrap_or(f64::NAN) * 1e9 / syscalls,
        syscalls,
    })
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

/// One workload's figures in one state: wall ns per syscall, and the state's programs' run
/// time and runs per syscall by the kernel's counters (the machine's other processes' share,
/// measured over an idle window beforehand, taken off). No agent has no counters: 0.
#[derive(Clone, Copy, Debug, Default)]
struct Figure {
    wall_ns: f64,
    kernel_ns: f64,
    runs: f64,
}

/// Per workload (as [`UNWATCHED`]), per (state label, baseline?): each round's figure (the
/// median of the round's passes).
type PerRound = Vec<BTreeMap<(&'static str, bool), Vec<Figure>>>;

/// Section 1's figures: each round's, per workload and state, for the current binary.
pub struct Unwatched {
    rounds: Vec<BTreeMap<&'static str, Vec<Figure>>>,
    /// Whether the kernel's counters could be read (`kernel.bpf_stats_enabled`).
    counted: bool,
}

impl Unwatched {
    /// Not measured: no rounds.
    pub fn empty() -> Self {
        Unwatched {
            rounds: vec![BTreeMap::new(); UNWATCHED.len()],
            counted: false,
        }
    }

    /// Workload `w` in state `st`: each round's figure.
    fn of(&self, w: usize, st: State) -> &[Figure] {
        self.rounds[w].get(st.label()).map_or(&[], Vec::as_slice)
    }

    /// The median of `f` of workload `w`'s rounds in state `st`.
    fn median(&self, w: usize, st: State, f: fn(&Figure) -> f64) -> f64 {
        median(self.of(w, st).iter().map(f).collect())
    }

    /// Each round's trap cost per program run: what the floor adds to the pipe loop's wall
    /// time less what its programs' counted run time is, over the runs a syscall makes (at
    /// least 0: noise cannot make a trap free of cost, and 0 only makes the ratio larger).
    fn trap_per_run(&self) -> Vec<f64> {
        let (none, floor) = (self.of(0, State::None), self.of(0, State::Floor));
        none.iter()
            .zip(floor)
            .map(|(n, f)| ((f.wall_ns - n.wall_ns - f.kernel_ns) / f.runs).max(0.0))
            .collect()
    }

    /// Workload `w` in state `st`, each round: mcptap's added cost over the floor's, each
    /// the trap (its programs' runs per syscall × the trap per run) plus its programs'
    /// counted run time.
    fn counted_ratios(&self, w: usize, st: State) -> Vec<f64> {
        let trap = self.trap_per_run();
        let (floor, ours) = (self.of(w, State::Floor), self.of(w, st));
        (0..trap.len().min(floor.len()).min(ours.len()))
            .map(|r| {
                let added = |f: &Figure| trap[r] * f.runs + f.kernel_ns;
                added(&ours[r]) / added(&floor[r])
            })
            .collect()
    }

    /// Workload `w` in state `st`, each round: the wall-clock ratio, mcptap's added ns over
    /// the floor's.
    fn wall_ratios(&self, w: usize, st: State) -> Vec<f64> {
        let (none, floor, ours) = (
            self.of(w, State::None),
            self.of(w, State::Floor),
            self.of(w, st),
        );
        (0..none.len().min(floor.len()).min(ours.len()))
            .map(|r| (ours[r].wall_ns - none[r].wall_ns) / (floor[r].wall_ns - none[r].wall_ns))
            .collect()
    }
}

/// One pass of every workload, in [`UNWATCHED`] order, with the programs of `agent` (if
/// any) counted around each: its figures. `background` is their run time per second with
/// nothing measured running.
fn workloads_once(
    env: &Env,
    s: &Scale,
    agent: Option<u32>,
    background: f64,
) -> Result<[Figure; 4]> {
    let runs: [&dyn Fn() -> Result<Timed>; 4] = [
        &|| ping(env, "pipe", s.ping_count),
        &|| ping(env, "unix", s.ping_count / 2),
        &|| ping(env, "socket", s.sock_count),
        &|| dd(s.dd_count),
    ];
    let mut out = [Figure::default(); 4];
    for (f, run) in out.iter_mut().zip(runs) {
        let before = agent.map(Snapshot::of);
        let t = run()?;
        f.wall_ns = t.ns;
        if let (Some(pid), Some(before)) = (agent, before) {
            let after = Snapshot::of(pid);
            let (ns, secs) = after.since(&before);
            f.kernel_ns = (ns - background * secs).max(0.0) / t.syscalls;
            f.runs = after.run_cnt.saturating_sub(before.run_cnt) as f64 / t.syscalls;
        }
    }
    Ok(out)
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

/// The median of each field of a round's passes.
fn median_figure(v: &[Figure]) -> Figure {
    let m = |f: fn(&Figure) -> f64| median(v.iter().map(f).collect());
    Figure {
        wall_ns: m(|f| f.wall_ns),
        kernel_ns: m(|f| f.kernel_ns),
        runs: m(|f| f.runs),
    }
}

/// One arm: the workloads three times; each workload's median figure.
fn run_arm(env: &Env, base: Option<&Env>, s: &Scale, round: usize, a: Arm) -> Result<[Figure; 4]> {
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
    let pid = agent.as_ref().map(|a| a.pid());
    let background = pid.map_or(0.0, |p| {
        kstats::background_ns_per_s(p, Duration::from_millis(500))
    });
    let mut passes: [Vec<Figure>; 4] = Default::default();
    for _ in 0..3 {
        for (w, f) in workloads_once(env, s, pid, background)?
            .into_iter()
            .enumerate()
        {
            passes[w].push(f);
        }
    }
    if let Some(a) = agent {
        a.stop();
    }
    Ok(passes.map(|v| median_figure(&v)))
}

/// Every state in every round, each state's workloads three times; with a baseline, its
/// agent states too. The kernel's program counters are on for the whole section.
pub fn measure(env: &Env, base: Option<&Env>, s: &Scale) -> Result<(Unwatched, Option<Compared>)> {
    let counting = kstats::Enabled::on();
    let mut per_round: PerRound = vec![BTreeMap::new(); UNWATCHED.len()];
    for round in 0..s.rounds {
        for a in arms(round, base.is_some()) {
            let figures = run_arm(env, base, s, round, a)?;
            for (w, f) in figures.into_iter().enumerate() {
                let key = (a.state.label(), a.baseline);
                per_round[w].entry(key).or_default().push(f);
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
    let current = Unwatched {
        rounds,
        counted: counting.is_some(),
    };
    Ok((current, base.map(|_| compare(&per_round))))
}

/// One workload and agent state, both binaries.
pub struct ComparedRow {
    workload: &'static str,
    state: State,
    none_ns: f64,
    baseline: Figure,
    current: Figure,
    /// Per round: the current's programs' counted run time per syscall over the baseline's.
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
            let ratios = cur
                .iter()
                .zip(base)
                .map(|(c, b)| c.kernel_ns / b.kernel_ns)
                .collect();
            rows.push(ComparedRow {
                workload: UNWATCHED[w].0,
                state,
                none_ns: median(none.iter().map(|f| f.wall_ns).collect()),
                baseline: median_figure(base),
                current: median_figure(cur),
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
        "\n### Cost to processes mcptap does not watch\n\nSection 1's agent states run by both binaries in every round, beside each other, alternating which goes first. The ratio is the current's programs' run time per syscall (the kernel's `bpf_stats` counters) over the baseline's, per round (lower is better); the wall-clock ns are beside it.\n\n| workload | state | no agent ns | baseline ns | current ns | programs ns a syscall, baseline | current | current/baseline |\n|---|---|---|---|---|---|---|---|"
    );
    for r in &c.0 {
        let ratio = Ratio::of(r.ratios.clone());
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {} ({}) |",
            r.workload,
            r.state.label(),
            r.none_ns,
            r.baseline.wall_ns,
            r.current.wall_ns,
            r.baseline.kernel_ns,
            r.current.kernel_ns,
            ratio.show(),
            ratio.verdict(Better::Lower)
        );
    }
}

/// The target: mcptap's added cost at most this many times the floor's.
const TARGET: f64 = 1.2;

/// The report's section 1.
pub fn write_section(md: &mut String, u: &Unwatched) {
    let _ = writeln!(
        md,
        "## 1. Cost to processes mcptap does not watch
"
    );
    let _ = writeln!(
        md,
        "Workloads: {}. Each round runs every state, each state's workloads three times (the round's figure is their median); the states run in the opposite order every other round.\n",
        UNWATCHED
            .iter()
            .map(|(n, d)| format!("*{n}*: {d}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    write_counted(md, u);
    write_wall(md, u);
}

/// The verdicts, from the kernel's counters.
fn write_counted(md: &mut String, u: &Unwatched) {
    let trap = Ratio::of(u.trap_per_run());
    let _ = writeln!(
        md,
        "**Method.** An added cost is the hooks' trap plus the programs' run time. With `kernel.bpf_stats_enabled=1` (on for this section, restored after) the kernel counts each program's runs and run time; the agent's (or the floor's) program fds give them (`/proc/PID/fdinfo`), read before and after each workload, less the machine's other processes' share (the programs' run time per second over 0.5 s with nothing measured running, times the workload's duration), over the workload's syscalls. A tracepoint calls each program attached to it the same way, so a program run's trap is the same for the floor and mcptap (mcptap's share grows with its runs a syscall, counted too: more programs on a hook are more calls); its cost per run is the floor's wall-clock addition to the pipe loop (a million syscalls a pass, the least noisy) less the floor's counted run time, over its runs: {:.1} ns [{:.1}–{:.1}] a run (at least 0 each round; a lower trap only makes the ratio larger). The ratio, per round, is (trap × runs + programs' run time) for mcptap over the same for the floor, ns per syscall; target at most {TARGET}×, \"met\" only when the quartile range is inside it.{}\n",
        trap.median,
        trap.spread.0,
        trap.spread.1,
        if u.counted {
            ""
        } else {
            " **The counters could not be turned on: no verdicts.**"
        }
    );
    let _ = writeln!(
        md,
        "| state | {} |\n|---|{}",
        UNWATCHED
            .iter()
            .map(|(n, _)| format!("{n}: programs ns a syscall | runs a syscall | ratio"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|---|---|".repeat(UNWATCHED.len())
    );
    let mut verdicts = Vec::new();
    for st in [State::Floor, State::Other, State::All] {
        let mut row = format!("| {} |", st.label());
        let mut parts = Vec::new();
        for (w, (name, _)) in UNWATCHED.iter().enumerate() {
            let ns = u.median(w, st, |f| f.kernel_ns);
            let runs = u.median(w, st, |f| f.runs);
            if st == State::Floor {
                let _ = write!(row, " {ns:.1} | {runs:.2} | |");
                continue;
            }
            let r = Ratio::of(u.counted_ratios(w, st));
            let v = r.against(TARGET, Better::Lower);
            let _ = write!(row, " {ns:.1} | {runs:.2} | {}× ({v}) |", r.show());
            parts.push(format!("{name} {}× ({v})", r.show()));
        }
        let _ = writeln!(md, "{row}");
        if !parts.is_empty() {
            verdicts.push(format!("{}: {}.", st.label(), parts.join(", ")));
        }
    }
    for v in verdicts {
        let _ = writeln!(md, "\n{v}");
    }
}

/// The wall-clock table: ns per syscall, and the ratio of the added ns, judged only where
/// the figure can be (a negative round or a median outside its quartiles is noise).
fn write_wall(md: &mut String, u: &Unwatched) {
    let _ = writeln!(
        md,
        "\nWall clock, ns per syscall (the counters on in every state with programs); the ratio is mcptap's added ns over the floor's, per round, median [quartiles]. On TCP and the socketpair the added ns are a few per cent of the syscall, inside the rounds' noise: these ratios are shown, and judged only where they can be; the verdicts above are the section's.\n"
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
    for st in State::EVERY {
        let mut row = format!("| {} |", st.label());
        for w in 0..UNWATCHED.len() {
            let ns = u.median(w, st, |f| f.wall_ns);
            if matches!(st, State::Other | State::All) {
                let r = Ratio::of(u.wall_ratios(w, st));
                let _ = write!(
                    row,
                    " {ns:.0} | {}× ({}) |",
                    r.show(),
                    r.against(TARGET, Better::Lower)
                );
            } else {
                let _ = write!(row, " {ns:.0} | |");
            }
        }
        let _ = writeln!(md, "{row}");
    }
}
