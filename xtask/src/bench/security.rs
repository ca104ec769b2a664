//! Section 10: what the security rules cost the userspace pipeline. A content-bearing stdio
//! workload (`assets/content_calls.py`: tools/list with real descriptions, then tools/call
//! results of 1–4 KiB of prose, as text or as JSON text, one in 25 carrying an email address
//! or a card number) is recorded (`mcptap --record`) and replayed (`mcptap replay --quiet
//! --jsonl -`, as section 4 does) with the default rules and with `--rule-off all`, in
//! rounds that alternate which goes first: messages/s each way and their ratio. Every replay
//! with the rules on must report a finding for each match the workload planted, and none
//! with them off, or the section fails: a scanner that finds nothing would otherwise look
//! free.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use super::Scale;
use super::env::{Env, free_port};
use super::recfile;
use super::stats::{Better, Ratio, median, quartiles};
use crate::{root, step};

/// The target: scanning keeps at least this share of the replay's throughput.
const TARGET_RATIO: f64 = 0.90;

/// What the workload made: its calls, and the matches it planted by rule id.
#[derive(Default)]
pub struct Workload {
    pub sessions: u64,
    pub calls: u64,
    pub planted: BTreeMap<String, u64>,
    /// Payload bytes of the capture's data records (what the pipeline reads).
    pub bytes: u64,
}

/// What one replay reported.
#[derive(Default)]
struct Replayed {
    seconds: f64,
    /// Messages it said it read (the `agent_stop` event's stats).
    messages: u64,
    /// `tools/call` exchanges it wrote.
    calls: u64,
    /// Findings it wrote, by rule id.
    findings: BTreeMap<String, u64>,
}

/// The section's figures.
#[derive(Default)]
pub struct Scanning {
    pub workload: Workload,
    /// Messages a replay read.
    pub messages: u64,
    /// Seconds of each replay with the default rules, and with `--rule-off all`, per round.
    pub on: Vec<f64>,
    pub off: Vec<f64>,
    /// Findings of a replay with the default rules, by rule id.
    pub findings: BTreeMap<String, u64>,
}

impl Scanning {
    /// Per round: throughput with the rules over throughput without (the same file, so the
    /// time without over the time with).
    fn ratios(&self) -> Vec<f64> {
        self.on
            .iter()
            .zip(&self.off)
            .map(|(on, off)| off / on)
            .collect()
    }

    /// Per round: what the rules added, in µs per `tools/call` (its arguments and result
    /// scanned).
    fn added_us(&self) -> Vec<f64> {
        let calls = self.workload.calls.max(1) as f64;
        self.on
            .iter()
            .zip(&self.off)
            .map(|(on, off)| (on - off) / calls * 1e6)
            .collect()
    }
}

/// Record the workload into the bench's directory: the capture and what the workload says
/// it made.
fn record(env: &Env, sessions: u64, calls: u64) -> Result<(PathBuf, Workload)> {
    step(&format!(
        "bench 10: recording {sessions} sessions x {calls} content-bearing tool calls"
    ));
    let file = env.dir.join("security.mcptap");
    let f = file.display().to_string();
    // Both ends are python3 (the client and the servers it starts): only they are recorded.
    let agent = env.agent(free_port(), &["--record", &f, "--comm", "python3"])?;
    let out = Command::new("python3")
        .arg(root().join("xtask/src/bench/assets/content_calls.py"))
        .args([sessions.to_string(), calls.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running python3 content_calls.py");
    agent.stop();
    let out = out?;
    if !out.status.success() {
        bail!("content_calls.py failed ({})", out.status);
    }
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("content_calls.py printed {:?}", out.stdout))?;
    let planted = ["email", "card-number"]
        .into_iter()
        .map(|rule| (rule.to_string(), summary[rule].as_u64().unwrap_or(0)))
        .collect();
    let workload = Workload {
        sessions,
        calls: summary["calls"].as_u64().unwrap_or(0),
        planted,
        bytes: recfile::payload_bytes(&file)?,
    };
    Ok((file, workload))
}

/// One `mcptap replay` of `file`, with every rule off when `rules_off`.
fn replay(mcptap: &Path, file: &Path, rules_off: bool) -> Result<Replayed> {
    let mut c = Command::new(mcptap);
    c.arg("replay").arg(file).args(["--quiet", "--jsonl", "-"]);
    if rules_off {
        c.args(["--rule-off", "all"]);
    }
    let t = Instant::now();
    let out = c.output().context("running mcptap replay")?;
    let seconds = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "mcptap replay{} failed ({}): {}",
            if rules_off { " --rule-off all" } else { "" },
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut r = Replayed {
        seconds,
        ..Default::default()
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        match v["kind"].as_str() {
            Some("finding") => {
                let rule = v["rule"].as_str().unwrap_or("?").to_string();
                *r.findings.entry(rule).or_default() += 1;
            }
            Some("exchange") if v["method"] == "tools/call" => r.calls += 1,
            Some("event") if v["event"] == "agent_stop" => {
                r.messages = v["stats"]["messages"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    }
    Ok(r)
}

/// Refuse a replay whose findings do not match the workload: every planted match found with
/// the rules on, nothing found with them off. A recording that lost calls is named as such.
fn check(w: &Workload, r: &Replayed, rules_off: bool) -> Result<()> {
    if r.calls < w.calls {
        bail!(
            "the replay wrote {} tools/call exchanges of the {} the workload made: the recording lost some",
            r.calls,
            w.calls
        );
    }
    if rules_off {
        let total: u64 = r.findings.values().sum();
        if total > 0 {
            bail!(
                "mcptap replay --rule-off all still wrote findings: {:?}",
                r.findings
            );
        }
        return Ok(());
    }
    for (rule, &planted) in &w.planted {
        let found = r.findings.get(rule).copied().unwrap_or(0);
        if found < planted {
            bail!(
                "the replay found {found} {rule} matches of the {planted} the workload planted (findings: {:?}): the scanner misses them",
                r.findings
            );
        }
    }
    Ok(())
}

/// Record the workload, replay it once each way untimed (paging the binary in, and checking
/// the findings), then in rounds that alternate which goes first.
pub fn measure(env: &Env, s: &Scale) -> Result<Scanning> {
    let (sessions, calls) = if s.smoke { (2, 250) } else { (8, 5000) };
    let (file, workload) = record(env, sessions, calls)?;
    let mut r = Scanning {
        workload,
        ..Default::default()
    };
    step("bench 10: replaying it once each way, untimed");
    for rules_off in [false, true] {
        check(
            &r.workload,
            &replay(&env.mcptap, &file, rules_off)?,
            rules_off,
        )?;
    }
    let rounds = s.replay_rounds;
    for round in 0..rounds {
        step(&format!(
            "bench 10: replaying it, round {} of {rounds}, rules on and off",
            round + 1
        ));
        let off_first = round % 2 == 1;
        for rules_off in [off_first, !off_first] {
            let one = replay(&env.mcptap, &file, rules_off)?;
            check(&r.workload, &one, rules_off)?;
            r.messages = one.messages;
            if rules_off {
                r.off.push(one.seconds);
            } else {
                r.on.push(one.seconds);
                r.findings = one.findings;
            }
        }
    }
    Ok(r)
}

/// `email 40, card-number 40`: counts by rule id.
fn by_rule(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    parts.join(", ")
}

/// Section 10 of the report.
pub fn write_section(md: &mut String, r: &Scanning) {
    let _ = writeln!(md, "## 10. Security scanning\n");
    let w = &r.workload;
    let _ = writeln!(
        md,
        "What the security rules cost the userspace pipeline. A stdio workload (`xtask/src/bench/assets/content_calls.py`, Python's standard library) of {} sessions, each the initialize handshake, a tools/list of six tools with descriptions as real servers write them, and {} tools/call whose results carry 1–4 KiB of prose (as text, or as JSON text of records, a third of them); one result in 25 carries an email address or a card number that passes the Luhn check, in turn ({} planted). Recorded (`mcptap --record`, both ends watched: {:.1} MB of payload), then replayed (`mcptap replay --quiet --jsonl -`, as section 4) with the default rules and with `--rule-off all`, once each way untimed, then {} rounds that alternate which goes first. Every replay with the rules on must write a finding for each planted match, and none with them off, or the section fails. Target: scanning keeps at least {:.0}% of the replay's throughput (with / without ≥ {TARGET_RATIO}).\n",
        w.sessions,
        w.calls / w.sessions.max(1),
        by_rule(&w.planted),
        w.bytes as f64 / 1e6,
        r.on.len(),
        TARGET_RATIO * 100.0,
    );
    let (on, off) = (median(r.on.clone()), median(r.off.clone()));
    let rate = |secs: f64| r.messages as f64 / secs;
    let mb = |secs: f64| w.bytes as f64 / 1e6 / secs;
    let _ = writeln!(
        md,
        "| rules | median s | messages/s | payload MB/s |\n|---|---:|---:|---:|\n| default (all on) | {on:.3} | {:.0} | {:.1} |\n| `--rule-off all` | {off:.3} | {:.0} | {:.1} |\n",
        rate(on),
        mb(on),
        rate(off),
        mb(off),
    );
    let ratio = Ratio::of(r.ratios());
    let _ = writeln!(
        md,
        "{} messages a replay (both views of every message). Throughput with the rules / without: **{}** ({}). Findings of a replay with the rules on: {} (each planted match found; none with `--rule-off all`).\n",
        r.messages,
        ratio.show(),
        ratio.against(TARGET_RATIO, Better::Higher),
        by_rule(&r.findings),
    );
    write_absolute(md, r);
}

/// The cost in absolute terms: µs per call, ns per KiB of payload, a core's share at a rate.
fn write_absolute(md: &mut String, r: &Scanning) {
    let added = r.added_us();
    let us = median(added.clone());
    let (q1, q3) = quartiles(added);
    // One view's payload per call: the recording holds both views.
    let kib_per_call = r.workload.bytes as f64 / 2.0 / 1024.0 / r.workload.calls.max(1) as f64;
    let _ = writeln!(
        md,
        "In absolute terms the rules add **{us:.2} µs [{q1:.2}–{q3:.2}] a tools/call** (its arguments and its result of {kib_per_call:.1} KiB on average: {:.0} ns a KiB), on one core of this machine. At 10,000 messages/s of this traffic (5,000 calls/s) that is {:.1}% of a core; traffic of small results (section 4's) pays the prefilter over a few hundred bytes a message. `--rule-off secret,pii` removes the content scanning and nearly all of this cost (the definition rules read only the rare lists).\n",
        us * 1000.0 / kib_per_call,
        us * 5000.0 / 1e6 * 100.0,
    );
}
