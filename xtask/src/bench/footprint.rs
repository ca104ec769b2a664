//! Section 5: footprint. The agent's RSS with many TCP sessions open at once (each has had
//! one exchange and stays open); its CPU and peak RSS under load are in sections 2 and 3.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;

use super::Scale;
use super::env::{Env, Proc, free_port, http_get, metric, wait_for_port};
use super::stats::{Better, Ratio, median, verdict};
use crate::step;

/// RSS with sessions open.
#[derive(Clone, Copy, Debug, Default)]
pub struct Footprint {
    /// Agent VmRSS, kB.
    pub rss_kb: u64,
    /// Sessions the agent said it tracked (`mcptap_tracked_sessions`).
    pub tracked: f64,
}

/// RSS of the agent with `count` sessions open.
pub fn measure(env: &Env, count: u64) -> Result<Footprint> {
    step(&format!("bench 5/5: RSS with {count} sessions open"));
    let port = free_port();
    let agent = env.agent(port, &[])?;
    let sport = free_port();
    let server = Proc {
        child: Command::new(&env.peer)
            .args(["server-tcp", &sport.to_string()])
            .stdout(Stdio::null())
            .spawn()?,
    };
    wait_for_port(sport, Duration::from_secs(30), Duration::from_millis(20));
    let mut holder = Command::new(&env.peer)
        .args(["sessions", &sport.to_string(), &count.to_string(), "60"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line)?;
    std::thread::sleep(Duration::from_secs(3));
    let text = http_get(port, "/metrics").unwrap_or_default();
    let tracked = metric(&text, "mcptap_tracked_sessions", &[]);
    let (_, rss, _) = agent.usage();
    let _ = holder.kill();
    let _ = holder.wait();
    drop(server);
    agent.stop();
    Ok(Footprint {
        rss_kb: rss,
        tracked,
    })
}

/// The report's section 5.
pub fn write_section(md: &mut String, s: &Scale, f: &Footprint) {
    let _ = writeln!(md, "\n## 5. Footprint\n");
    let _ = writeln!(
        md,
        "Agent CPU and peak RSS under load are in the tables above. With {} TCP sessions open ({} tracked): RSS {} MiB ({}; target at most 64 MiB).",
        s.sessions,
        f.tracked,
        f.rss_kb / 1024,
        verdict(f.rss_kb <= 64 * 1024)
    );
}

/// RSS with sessions open, both binaries, in pairs that alternate which goes first.
pub struct Compared {
    pub sessions: u64,
    pub baseline: Vec<Footprint>,
    pub current: Vec<Footprint>,
}

/// `rounds` pairs; the current binary's median round for section 5 too.
pub fn measure_pair(
    current: &Env,
    baseline: &Env,
    count: u64,
    rounds: usize,
) -> Result<(Footprint, Compared)> {
    let mut c = Compared {
        sessions: count,
        baseline: Vec::new(),
        current: Vec::new(),
    };
    for round in 0..rounds {
        for base_now in [round % 2 == 0, round % 2 == 1] {
            if base_now {
                c.baseline.push(measure(baseline, count)?);
            } else {
                c.current.push(measure(current, count)?);
            }
        }
    }
    let mut cur = c.current.clone();
    cur.sort_by_key(|f| f.rss_kb);
    Ok((cur[cur.len() / 2], c))
}

/// The footprint part of the "Before and after" section.
pub fn write_compared(md: &mut String, c: &Compared) {
    let rss = |v: &[Footprint]| median(v.iter().map(|f| f.rss_kb as f64).collect());
    let ratios: Vec<f64> = c
        .current
        .iter()
        .zip(&c.baseline)
        .map(|(n, b)| n.rss_kb as f64 / b.rss_kb as f64)
        .collect();
    let r = Ratio::of(ratios);
    let _ = writeln!(
        md,
        "\n### Footprint\n\nRSS with {} TCP sessions open, {} round{}: baseline {:.1} MiB, current {:.1} MiB; current/baseline {} ({}).",
        c.sessions,
        c.current.len(),
        if c.current.len() == 1 { "" } else { "s" },
        rss(&c.baseline) / 1024.0,
        rss(&c.current) / 1024.0,
        r.show(),
        r.verdict(Better::Lower)
    );
}
