//! Section 4: the userspace pipeline alone. A capture recorded (`mcptap --record`) from the
//! 200 B pipe workload is run through `mcptap replay` on one core, and, with valgrind, the
//! replay of a smaller one is profiled with callgrind.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Result;

use super::Scale;
use super::capacity::{Step, capacity_run};
use super::env::Env;
use super::stats::{Better, Ratio, median, verdict};
use crate::step;

/// The replay's figures.
pub struct Replay {
    pub messages: u64,
    pub seconds: f64,
    pub profile: String,
}

impl Replay {
    /// Not measured.
    pub fn empty() -> Self {
        Replay {
            messages: 0,
            seconds: f64::NAN,
            profile: String::new(),
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
    Ok(Replay {
        messages,
        seconds: median(times),
        profile: profile(env, s)?,
    })
}

/// The callgrind profile's rows (a note in brackets instead when there is none; nothing
/// for a smoke run).
pub fn profile(env: &Env, s: &Scale) -> Result<String> {
    if s.smoke {
        return Ok(String::new());
    }
    let have_valgrind = Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_valgrind {
        return Ok("(no profile: valgrind is not installed)\n".into());
    }
    step("bench 4/5: profiling the replay with callgrind");
    let small = env.dir.join("small.mcptap");
    let st = Step {
        tcp: false,
        rate: 5_000,
        size: 200,
        secs: 1.0,
    };
    capacity_run(env, st, Some(&small))?;
    let cg = env.dir.join("callgrind.out");
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            &format!("--callgrind-out-file={}", cg.display()),
        ])
        .arg(&env.mcptap)
        .args(["replay", small.to_str().unwrap(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let mut profile = String::new();
    if status.success() {
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
    Ok(profile)
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

/// The report's section 4.
pub fn write_section(md: &mut String, replay: &Replay) {
    let _ = writeln!(md, "\n## 4. The userspace pipeline alone\n");
    let rate = replay.messages as f64 / replay.seconds;
    let _ = writeln!(
        md,
        "`mcptap replay` of a capture recorded from the 200 B pipe workload: {} messages (both views of every message) in {:.2} s: **{:.0} messages/s** on one core ({}; target 600,000).\n",
        replay.messages,
        replay.seconds,
        rate,
        verdict(rate >= 600_000.0)
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
    let replay = Replay {
        messages: c.current.messages.last().copied().unwrap_or(0),
        seconds: median(c.current.seconds.clone()),
        profile: profile(current, s)?,
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
