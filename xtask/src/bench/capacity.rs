//! Section 3: capacity. The synthetic peers (`bench_peer`) send `tools/call` at a set rate
//! over a pipe or loopback TCP, both ends watched; a step passes with no kernel loss, every
//! exchange correlated and the rate achieved. Each series climbs its rates until a step
//! fails.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::Scale;
use super::env::{CpuMeter, Env, Proc, free_port, http_get, metric, wait_for_port};
use super::stats::{Better, Ratio, change, verdict};
use crate::step;

/// One step's outcome.
#[derive(Clone, Debug)]
pub struct CapacityRun {
    pub rate: u64,
    pub achieved: f64,
    /// Share of the requests sent that the agent correlated with their answer.
    pub correlated: f64,
    pub lost: f64,
    pub ok: bool,
    /// Agent CPU, % of one core, over the step and its catch-up.
    pub cpu: f64,
    pub hwm_kb: u64,
}

/// One capacity step: the synthetic peers at `rate` messages/s of `size` bytes for `secs`.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub tcp: bool,
    pub rate: u64,
    pub size: usize,
    pub secs: f64,
}

/// A series of steps: one transport and size, climbing `rates`.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    pub tcp: bool,
    pub size: usize,
    pub rates: &'static [u64],
}

impl Series {
    /// The report's series, in its order.
    pub fn all(s: &Scale) -> [Series; 4] {
        let series = |tcp, size, rates| Series { tcp, size, rates };
        [
            series(false, 200, s.small_rates),
            series(true, 200, s.small_rates),
            series(false, 64 * 1024, s.large_rates),
            series(true, 64 * 1024, s.large_rates),
        ]
    }

    /// "pipe" or "TCP", as the report names the transport.
    pub fn transport(&self) -> &'static str {
        if self.tcp { "TCP" } else { "pipe" }
    }

    pub fn step(&self, rate: u64, s: &Scale) -> Step {
        Step {
            tcp: self.tcp,
            rate,
            size: self.size,
            secs: s.capacity_secs,
        }
    }
}

/// The `tools/call` exchanges the agent reported as successful, in a `/metrics` text.
fn correlated_calls(text: &str) -> f64 {
    metric(
        text,
        "mcp_requests_total",
        &["method=\"tools/call\"", "status=\"success\""],
    )
}

/// Kernel loss: lost events, truncated syscalls and read faults.
fn lost_events(text: &str) -> f64 {
    metric(text, "mcptap_lost_events_total", &[])
        + metric(
            text,
            "mcptap_kernel_events_total",
            &["event=\"truncated_syscalls\""],
        )
        + metric(
            text,
            "mcptap_kernel_events_total",
            &["event=\"read_faults\""],
        )
}

/// `bench_peer server-tcp` on a free port, accepting.
fn tcp_server(env: &Env) -> Result<(Proc, u16)> {
    let sport = free_port();
    let child = Command::new(&env.peer)
        .args(["server-tcp", &sport.to_string()])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    wait_for_port(sport, Duration::from_secs(10), Duration::from_millis(20));
    Ok((Proc { child }, sport))
}

/// Run the client for the step (against the TCP server on `sport`, or its own stdio
/// server): (requests sent, rate achieved /s).
fn drive(env: &Env, st: Step, sport: Option<u16>) -> Result<(f64, f64)> {
    let mut c = Command::new(&env.peer);
    match sport {
        Some(sport) => c.args(["client-tcp", &sport.to_string()]),
        None => c.arg("client-stdio"),
    };
    let out = c
        .args([
            st.rate.to_string(),
            st.size.to_string(),
            st.secs.to_string(),
        ])
        .output()
        .context("bench_peer client")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bench_peer output")?;
    let sent = v["sent"].as_f64().unwrap_or(0.0);
    Ok((sent, sent / v["seconds"].as_f64().unwrap_or(1.0)))
}

/// Wait for the agent on `port` to have correlated `sent` exchanges beyond `base` (or give
/// up after a while); its `/metrics` then.
fn catch_up(port: u16, base: f64, sent: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = http_get(port, "/metrics").unwrap_or_default();
        if correlated_calls(&text) - base >= sent || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Drive the synthetic peers through one step; count what mcptap correlated and lost.
/// `record` makes the agent also write its capture there.
pub fn capacity_run(env: &Env, st: Step, record: Option<&Path>) -> Result<CapacityRun> {
    let port = free_port();
    // The default configuration: capacity is what a user gets without tuning.
    let record = record.map(|r| r.display().to_string());
    let extra: Vec<&str> = match &record {
        Some(r) => vec!["--record", r],
        None => Vec::new(),
    };
    let agent = env.agent(port, &extra)?;
    let server = if st.tcp { Some(tcp_server(env)?) } else { None };
    let base = correlated_calls(&http_get(port, "/metrics").unwrap_or_default());
    let meter = CpuMeter::start(&agent);
    let (sent, achieved) = drive(env, st, server.as_ref().map(|s| s.1))?;
    let text = catch_up(port, base, sent);
    let (cpu, hwm) = meter.read(&agent);
    let correlated = correlated_calls(&text) - base;
    let lost = lost_events(&text);
    drop(server);
    agent.stop();
    Ok(CapacityRun {
        rate: st.rate,
        achieved,
        correlated: correlated / sent.max(1.0),
        lost,
        ok: lost == 0.0 && correlated >= sent && achieved >= st.rate as f64 * 0.9,
        cpu,
        hwm_kb: hwm,
    })
}

/// The step's progress line.
pub fn announce(series: &Series, rate: u64, who: &str) {
    step(&format!(
        "bench 3/5: capacity, {} B over {}, {rate}/s{who}",
        series.size,
        if series.tcp { "TCP" } else { "a pipe" }
    ));
}

/// Climb the series' rates until a step fails.
pub fn measure(env: &Env, s: &Scale, series: Series) -> Result<Vec<CapacityRun>> {
    let mut runs = Vec::new();
    for &rate in series.rates {
        announce(&series, rate, "");
        let r = capacity_run(env, series.step(rate, s), None)?;
        let ok = r.ok;
        runs.push(r);
        if !ok {
            break;
        }
    }
    Ok(runs)
}

/// The highest passing step of a series: messages/s for 200 B, MB/s for larger messages.
pub fn best(series: &Series, runs: &[CapacityRun]) -> Option<f64> {
    let figure = |r: &CapacityRun| {
        if series.size == 200 {
            r.achieved
        } else {
            r.achieved * series.size as f64 / 1e6
        }
    };
    runs.iter()
        .filter(|r| r.ok)
        .fold(None, |b: Option<f64>, r| {
            Some(b.unwrap_or(0.0).max(figure(r)))
        })
}

/// The report's section 3.
pub fn write_section(md: &mut String, s: &Scale, results: &[(Series, Vec<CapacityRun>)]) {
    let _ = writeln!(md, "\n## 3. Capacity\n");
    let _ = writeln!(
        md,
        "A synthetic client sends `tools/call` requests at a set rate ({} s each step), a server answers each with a short result; both ends are watched, so every message is captured twice. Rates count requests per second (the messages crossing are twice that), and MB/s counts the request bytes (one direction). A step passes with no kernel loss, every exchange correlated, and the rate achieved. Targets: 150,000 requests/s of 200 B; 1,000 MB/s of 64 KiB requests (a single ladder, no rounds: the verdict has no spread to judge).\n",
        s.capacity_secs
    );
    let _ = writeln!(
        md,
        "| transport | size B | requests/s asked | requests/s achieved | request MB/s | correlated | lost | agent CPU | agent peak RSS | pass |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut best_of = BTreeMap::new();
    for (series, runs) in results {
        let (name, size) = (series.transport(), series.size);
        for r in runs {
            let mb = r.achieved * size as f64 / 1e6;
            let _ = writeln!(
                md,
                "| {name} | {size} | {} | {:.0} | {mb:.1} | {:.1}% | {} | {:.0}% | {} MiB | {} |",
                r.rate,
                r.achieved,
                r.correlated * 100.0,
                r.lost + 0.0,
                r.cpu,
                r.hwm_kb / 1024,
                if r.ok { "yes" } else { "no" }
            );
        }
        if let Some(v) = best(series, runs) {
            best_of.insert((name, size), v);
        }
    }
    cpu_per_10k_line(md, results);
    for ((name, size), v) in &best_of {
        if *size == 200 {
            let _ = writeln!(
                md,
                "\nHighest passing rate, 200 B over {name}: {v:.0} requests/s ({}).",
                verdict(*v >= 150_000.0)
            );
        } else {
            let _ = writeln!(
                md,
                "\nHighest passing rate, 64 KiB over {name}: {v:.0} request MB/s ({}).",
                verdict(*v >= 1000.0)
            );
        }
    }
}

/// The target for agent CPU per 10,000 messages/s, % of one core.
const CPU_PER_10K_TARGET: f64 = 3.0;

/// Agent CPU (% of one core) per 10,000 messages/s at each passing 200 B step of `runs`: a
/// request and its response are two messages, each counted once though both ends capture it.
fn cpu_per_10k(runs: &[CapacityRun]) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.ok && r.achieved > 0.0)
        .map(|r| r.cpu / (2.0 * r.achieved / 10_000.0))
        .collect()
}

/// The CPU-per-message target, judged on the spread over every passing 200 B step.
fn cpu_per_10k_line(md: &mut String, results: &[(Series, Vec<CapacityRun>)]) {
    let per: Vec<f64> = results
        .iter()
        .filter(|(series, _)| series.size == 200)
        .flat_map(|(_, runs)| cpu_per_10k(runs))
        .collect();
    if per.is_empty() {
        return;
    }
    let r = Ratio::of(per.clone());
    let _ = writeln!(
        md,
        "\nAgent CPU per 10,000 messages/s (a request and its response are two messages), over the {} passing 200 B steps of both transports: {:.1}% of one core [{:.1}–{:.1}] ({}; target at most {CPU_PER_10K_TARGET}%).",
        per.len(),
        r.median,
        r.spread.0,
        r.spread.1,
        r.against(CPU_PER_10K_TARGET, Better::Lower)
    );
}

/// Both binaries at one rate; a binary whose step failed runs no higher rate, so either may
/// be missing.
pub struct RatePair {
    pub rate: u64,
    pub baseline: Option<CapacityRun>,
    pub current: Option<CapacityRun>,
}

/// One series climbed by both binaries.
pub struct Compared {
    pub series: Series,
    pub steps: Vec<RatePair>,
}

impl Compared {
    /// The current binary's runs, as section 3 shows them (up to its first failing step).
    pub fn current_runs(&self) -> Vec<CapacityRun> {
        self.steps
            .iter()
            .filter_map(|p| p.current.clone())
            .collect()
    }

    fn baseline_runs(&self) -> Vec<CapacityRun> {
        self.steps
            .iter()
            .filter_map(|p| p.baseline.clone())
            .collect()
    }
}

/// Climb the series with both binaries: at each rate both run, one after the other, the
/// baseline first at every other rate (`offset` shifts the alternation from series to
/// series); each stops at its first failing step.
pub fn measure_pair(
    current: &Env,
    baseline: &Env,
    s: &Scale,
    series: Series,
    offset: usize,
) -> Result<Compared> {
    let mut steps: Vec<RatePair> = Vec::new();
    let failed = |p: Option<&CapacityRun>| p.is_some_and(|r| !r.ok);
    let (mut base_done, mut cur_done) = (false, false);
    for (i, &rate) in series.rates.iter().enumerate() {
        let mut pair = RatePair {
            rate,
            baseline: None,
            current: None,
        };
        let base_first = (i + offset).is_multiple_of(2);
        for is_base in [base_first, !base_first] {
            let (env, done, who) = if is_base {
                (baseline, base_done, ", baseline")
            } else {
                (current, cur_done, ", current")
            };
            if done {
                continue;
            }
            announce(&series, rate, who);
            let r = Some(capacity_run(env, series.step(rate, s), None)?);
            if is_base {
                pair.baseline = r
            } else {
                pair.current = r
            }
        }
        base_done |= failed(pair.baseline.as_ref());
        cur_done |= failed(pair.current.as_ref());
        steps.push(pair);
        if base_done && cur_done {
            break;
        }
    }
    Ok(Compared { series, steps })
}

/// A run's cells: achieved /s, agent CPU, pass (dashes when it did not run).
fn cells(r: Option<&CapacityRun>) -> String {
    match r {
        Some(r) => format!(
            "{:.0} | {:.0}% | {}",
            r.achieved,
            r.cpu,
            if r.ok { "yes" } else { "no" }
        ),
        None => "– | – | –".into(),
    }
}

/// Agent CPU per message achieved, current over baseline, at the rates both passed.
fn cpu_ratios(c: &Compared) -> Vec<f64> {
    let per_msg = |r: &CapacityRun| r.cpu / r.achieved;
    c.steps
        .iter()
        .filter_map(|p| match (&p.baseline, &p.current) {
            (Some(b), Some(n)) if b.ok && n.ok => Some(per_msg(n) / per_msg(b)),
            _ => None,
        })
        .collect()
}

/// The highest passing step of each binary, their ratio and its verdict.
fn best_line(c: &Compared) -> String {
    let unit = if c.series.size == 200 {
        "messages/s"
    } else {
        "MB/s"
    };
    let top = c.series.rates.last().copied();
    let show = |runs: &[CapacityRun]| match best(&c.series, runs) {
        None => "none".to_string(),
        // Passing the top of the ladder: the capacity is at least this.
        Some(v) if runs.last().is_some_and(|r| r.ok && Some(r.rate) == top) => {
            format!("≥ {v:.0}")
        }
        Some(v) => format!("{v:.0}"),
    };
    let (b, n) = (c.baseline_runs(), c.current_runs());
    let (ratio, verdict) = match (best(&c.series, &b), best(&c.series, &n)) {
        (Some(b), Some(n)) => {
            let r = n / b;
            (format!("{r:.3}"), change((r, r), Better::Higher))
        }
        (None, Some(_)) => ("–".into(), "not worse"),
        (Some(_), None) => ("–".into(), "**worse**"),
        (None, None) => ("–".into(), "inconclusive"),
    };
    format!(
        "highest passing rate baseline {}, current {} {unit}, current/baseline {ratio} ({verdict})",
        show(&b),
        show(&n)
    )
}

/// The capacity part of the "Before and after" section.
pub fn write_compared(md: &mut String, compared: &[Compared]) {
    let _ = writeln!(
        md,
        "\n### Capacity\n\nEach rate of section 3's ladders is run by both binaries, the baseline first at every other rate; each binary stops climbing at its first failing step (≥: it passed the ladder's top, so its capacity is at least that). The CPU ratio is agent CPU per message achieved, current/baseline, at a rate both passed (CPU is read in 10 ms ticks: at low rates and short steps that is coarse).\n"
    );
    let _ = writeln!(
        md,
        "| transport | size | rate asked /s | baseline achieved /s | baseline CPU | baseline pass | current achieved /s | current CPU | current pass | CPU per message, current/baseline |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for c in compared {
        let ratios = cpu_ratios(c);
        let mut both = ratios.iter();
        for p in &c.steps {
            let passed = |r: &Option<CapacityRun>| r.as_ref().is_some_and(|r| r.ok);
            let ratio = if passed(&p.baseline) && passed(&p.current) {
                both.next().map_or("–".into(), |r| format!("{r:.2}"))
            } else {
                "–".into()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {ratio} |",
                c.series.transport(),
                c.series.size,
                p.rate,
                cells(p.baseline.as_ref()),
                cells(p.current.as_ref())
            );
        }
    }
    for c in compared {
        let cpu = Ratio::of(cpu_ratios(c));
        let _ = writeln!(
            md,
            "\n{} over {}: {}; agent CPU per message where both passed, current/baseline {} over {} rate{} ({}).",
            if c.series.size == 200 {
                "200 B"
            } else {
                "64 KiB"
            },
            c.series.transport(),
            best_line(c),
            cpu.show(),
            cpu.rounds,
            if cpu.rounds == 1 { "" } else { "s" },
            cpu.verdict(Better::Lower)
        );
    }
}
