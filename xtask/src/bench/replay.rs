//! Section 4: the userspace pipeline alone. A capture recorded (`mcptap --record`) from the
//! 200 B pipe workload is run through `mcptap replay` on one core, and, with valgrind, the
//! instructions a message view costs in the replay of a smaller one are counted by pipeline
//! stage with callgrind ([`stages`]), for the baseline's binary too when there is one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Result;

use super::Scale;
use super::capacity::{Step, capacity_run};
use super::env::Env;
use super::stages::{self, Counts, STAGES};
use super::stats::{Better, Ratio, median, verdict};
use crate::step;

/// The replay's figures.
pub struct Replay {
    pub messages: u64,
    pub seconds: f64,
    /// Instructions per view by stage (callgrind), or why there are none.
    pub instructions: Result<Counts, String>,
    /// The same for the baseline's binary, when there is one.
    pub baseline_instructions: Option<Result<Counts, String>>,
}

impl Replay {
    /// Not measured.
    pub fn empty() -> Self {
        Replay {
            messages: 0,
            seconds: f64::NAN,
            instructions: Err(String::new()),
            baseline_instructions: None,
        }
    }
}

/// Record the capture the replay runs on, into the bench's directory.
pub fn record(env: &Env, s: &Scale) -> Result<PathBuf> {
    step("bench 4/5: recording a capture for the replay benchmark");
    let file = env.dir.join("capture.mcptap");
    let st = Step {
        tcp: false,
        rate: if s.smoke { 5_000 } else { 40_000 },
        size: 200,
        secs: if s.smoke { 0.5 } else { 3.0 },
    };
    capacity_run(env, st, Some(&file))?;
    Ok(file)
}

/// One `mcptap replay` of `file` by `mcptap`: (seconds, messages it says it read).
pub fn replay_once(mcptap: &Path, file: &Path) -> Result<(f64, u64)> {
    let t = Instant::now();
    let out = Command::new(mcptap)
        .args(["replay", file.to_str().unwrap(), "--quiet", "--jsonl", "-"])
        .output()?;
    let seconds = t.elapsed().as_secs_f64();
    let stop = String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find(|l| l.contains("\"agent_stop\""))
        .map(str::to_string)
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&stop).unwrap_or_default();
    Ok((seconds, v["stats"]["messages"].as_u64().unwrap_or(0)))
}

/// Record, replay (once for a smoke run, else three times) and profile.
pub fn measure(env: &Env, s: &Scale) -> Result<Replay> {
    let file = record(env, s)?;
    step("bench 4/5: replaying it");
    let mut times = Vec::new();
    let mut messages = 0;
    for _ in 0..if s.smoke { 1 } else { 3 } {
        let (t, m) = replay_once(&env.mcptap, &file)?;
        times.push(t);
        messages = m;
    }
    let small = small_capture(env, s)?;
    Ok(Replay {
        messages,
        seconds: median(times),
        instructions: instructions(&env.mcptap, small.as_deref(), env, "current")?,
        baseline_instructions: None,
    })
}

/// The smaller capture callgrind replays (recorded by `env`'s agent), if valgrind is there
/// (`None` otherwise: no count).
fn small_capture(env: &Env, s: &Scale) -> Result<Option<PathBuf>> {
    let have_valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_valgrind {
        return Ok(None);
    }
    step("bench 4/5: recording a smaller capture for callgrind");
    let small = env.dir.join("small.mcptap");
    let st = Step {
        tcp: false,
        rate: if s.smoke { 200 } else { 5_000 },
        size: 200,
        secs: 1.0,
    };
    capacity_run(env, st, Some(&small))?;
    Ok(Some(small))
}

/// `mcptap`'s instructions per view of `small` by stage, or why there are none.
fn instructions(
    mcptap: &Path,
    small: Option<&Path>,
    env: &Env,
    tag: &str,
) -> Result<Result<Counts, String>> {
    let Some(small) = small else {
        return Ok(Err("valgrind is not installed".into()));
    };
    step(&format!(
        "bench 4/5: counting the {tag} binary's instructions with callgrind"
    ));
    let (_, views) = replay_once(mcptap, small)?;
    if views == 0 {
        return Ok(Err(format!("{} read no messages", mcptap.display())));
    }
    Ok(stages::count(mcptap, small, views, &env.dir, tag)?
        .ok_or_else(|| "callgrind did not run the replay".to_string()))
}

/// The instruction targets per view, quiet and with JSONL.
const QUIET_TARGET: f64 = 5_000.0;
const JSONL_TARGET: f64 = 7_000.0;

/// The replay rate target, views/s on one core.
const RATE_TARGET: f64 = 1_000_000.0;

/// The instructions table: a column pair (quiet, JSONL) per binary.
fn write_instructions(md: &mut String, cols: &[(&str, &Counts)]) {
    let Some((_, first)) = cols.first() else {
        return;
    };
    let _ = writeln!(
        md,
        "Instructions per message view by pipeline stage (callgrind: `mcptap replay` of a smaller capture of the same workload, {} views, `--quiet` and `--quiet --jsonl -`, less an empty recording's; each stage is its entry point's inclusive count less the stage it calls, as `xtask/src/bench/profile-round3.md` describes; a stage whose entry point a build does not have reads 0, and its cost lands in \"rest\"). Callgrind counts are repeatable to the instruction: one run is the figure, no quartiles.{}\n",
        first.views,
        if cols.len() > 1 {
            " Before (the baseline's binary) and after (this tree's), on the same file."
        } else {
            ""
        }
    );
    let head: Vec<String> = cols
        .iter()
        .map(|(who, _)| format!("{who} quiet | {who} JSONL").trim().to_string())
        .collect();
    let _ = writeln!(
        md,
        "| stage | {} |\n|---|{}",
        head.join(" | "),
        "---:|---:|".repeat(cols.len())
    );
    for (i, name) in STAGES.iter().enumerate() {
        let cells: Vec<String> = cols
            .iter()
            // `+ 0.0`: a stage of nothing prints 0, not -0.
            .map(|(_, c)| {
                format!(
                    "{:.0} | {:.0}",
                    c.quiet.stages[i] + 0.0,
                    c.jsonl.stages[i] + 0.0
                )
            })
            .collect();
        let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
    }
    let totals: Vec<String> = cols
        .iter()
        .map(|(_, c)| format!("**{:.0}** | **{:.0}**", c.quiet.total, c.jsonl.total))
        .collect();
    let _ = writeln!(
        md,
        "| **total less empty recording** | {} |",
        totals.join(" | ")
    );
    let (_, now) = cols[cols.len() - 1];
    let _ = writeln!(
        md,
        "\nInstructions per view{}: **{:.0}** quiet ({}; target at most {QUIET_TARGET:.0}), **{:.0}** with JSONL ({}; target at most {JSONL_TARGET:.0}).\n",
        if cols.len() > 1 { ", this tree" } else { "" },
        now.quiet.total,
        verdict(now.quiet.total <= QUIET_TARGET),
        now.jsonl.total,
        verdict(now.jsonl.total <= JSONL_TARGET)
    );
}

/// The report's section 4.
pub fn write_section(md: &mut String, replay: &Replay) {
    let _ = writeln!(md, "\n## 4. The userspace pipeline alone\n");
    let rate = replay.messages as f64 / replay.seconds;
    let _ = writeln!(
        md,
        "`mcptap replay --quiet --jsonl -` of a capture recorded from the 200 B pipe workload: {} messages (both views of every message) in {:.2} s: **{:.0} messages/s** on one core ({}; target {RATE_TARGET:.0}).\n",
        replay.messages,
        replay.seconds,
        rate,
        verdict(rate >= RATE_TARGET)
    );
    let mut cols = Vec::new();
    if let Some(b) = &replay.baseline_instructions {
        match b {
            Ok(c) => cols.push(("baseline", c)),
            Err(why) => {
                let _ = writeln!(md, "(no instruction counts for the baseline: {why})\n");
            }
        }
    }
    match &replay.instructions {
        Ok(c) => {
            cols.push((if cols.is_empty() { "" } else { "current" }, c));
            write_instructions(md, &cols);
        }
        Err(why) if !why.is_empty() => {
            let _ = writeln!(md, "(no instruction counts: {why})\n");
        }
        Err(_) => {}
    }
}

/// One binary's replays of the shared capture.
#[derive(Default)]
pub struct Replays {
    pub seconds: Vec<f64>,
    /// Messages it said it read, per replay.
    pub messages: Vec<u64>,
    /// How a replay failed, if one did.
    pub failure: Option<String>,
}

/// The same capture replayed by both binaries, in rounds that alternate which goes first.
pub struct Compared {
    pub baseline: Replays,
    pub current: Replays,
    /// Per round: the baseline's time over the current's (the current's throughput over the
    /// baseline's, the input being the same file).
    pub ratios: Vec<f64>,
}

/// Replay `file` with `mcptap` into `into`: its time, or NaN and the failure noted.
fn replay_into(mcptap: &Path, file: &Path, into: &mut Replays) -> Result<f64> {
    let (t, m, failure) = replay_checked(mcptap, file)?;
    into.seconds.push(t);
    into.messages.push(m);
    if failure.is_some() && into.failure.is_none() {
        into.failure = failure;
    }
    Ok(if m == 0 { f64::NAN } else { t })
}

/// A replay that also says why it read nothing: (seconds, messages, failure).
fn replay_checked(mcptap: &Path, file: &Path) -> Result<(f64, u64, Option<String>)> {
    let (t, m) = replay_once(mcptap, file)?;
    if m > 0 {
        return Ok((t, m, None));
    }
    let out = Command::new(mcptap)
        .args(["replay", file.to_str().unwrap(), "--quiet"])
        .output()?;
    let why = format!(
        "{} read no messages ({}): {}",
        mcptap.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    step(&format!("warning: {why}"));
    Ok((t, m, Some(why)))
}

/// Record once, replay with both binaries in `rounds` rounds; the current binary's figures
/// for section 4 too.
pub fn measure_pair(
    current: &Env,
    baseline: &Env,
    s: &Scale,
    rounds: usize,
) -> Result<(Replay, Compared)> {
    let file = record(current, s)?;
    let mut c = Compared {
        baseline: Replays::default(),
        current: Replays::default(),
        ratios: Vec::new(),
    };
    // One untimed replay each first: the first run of a binary also pages it in from disk
    // (a few hundred ms here, more than a smoke-sized replay takes).
    step("bench 4/5: replaying it once with each binary, untimed");
    replay_once(&baseline.mcptap, &file)?;
    replay_once(&current.mcptap, &file)?;
    for round in 0..rounds {
        step(&format!(
            "bench 4/5: replaying it, round {} of {rounds}, baseline and current",
            round + 1
        ));
        let (mut tb, mut tc) = (f64::NAN, f64::NAN);
        for base_now in [round % 2 == 0, round % 2 == 1] {
            if base_now {
                tb = replay_into(&baseline.mcptap, &file, &mut c.baseline)?;
            } else {
                tc = replay_into(&current.mcptap, &file, &mut c.current)?;
            }
        }
        c.ratios.push(tb / tc);
    }
    let small = small_capture(current, s)?;
    let replay = Replay {
        messages: c.current.messages.last().copied().unwrap_or(0),
        seconds: median(c.current.seconds.clone()),
        instructions: instructions(&current.mcptap, small.as_deref(), current, "current")?,
        baseline_instructions: Some(instructions(
            &baseline.mcptap,
            small.as_deref(),
            baseline,
            "baseline",
        )?),
    };
    Ok((replay, c))
}

/// A row of the before/after replay table.
fn replays_row(md: &mut String, who: &str, r: &Replays) {
    let seconds = median(r.seconds.clone());
    let messages = r.messages.last().copied().unwrap_or(0);
    let _ = writeln!(
        md,
        "| {who} | {messages} | {seconds:.3} | {:.0} |",
        messages as f64 / seconds
    );
}

/// The replay part of the "Before and after" section.
pub fn write_compared(md: &mut String, c: &Compared) {
    let _ = writeln!(
        md,
        "\n### The userspace pipeline alone\n\nThe capture of section 4 (recorded by the current binary) replayed by both, once untimed, then {} rounds, alternating which goes first.\n\n| binary | messages read | median s | messages/s |\n|---|---|---|---|",
        c.ratios.len()
    );
    replays_row(md, "baseline", &c.baseline);
    replays_row(md, "current", &c.current);
    let r = Ratio::of(c.ratios.clone());
    let _ = writeln!(
        md,
        "\nThroughput on the same file, current/baseline: {} ({}).",
        r.show(),
        r.verdict(Better::Higher)
    );
    let (b, n) = (&c.baseline.messages, &c.current.messages);
    if b.last() != n.last() {
        let _ = writeln!(
            md,
            "\nThe two binaries read different message counts from the same file ({} and {}): their pipelines parse it differently, so the throughputs are of different work.",
            b.last().unwrap_or(&0),
            n.last().unwrap_or(&0)
        );
    }
    for f in [&c.baseline.failure, &c.current.failure]
        .into_iter()
        .flatten()
    {
        let _ = writeln!(md, "\n{}", f.replace('|', "\\|"));
    }
}
