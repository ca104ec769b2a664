//! Section 5: footprint. The agent's RSS with many TCP sessions open at once (each has had
//! one exchange and stays open); its CPU and peak RSS under load are in sections 2 and 3.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Result;

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

/// Sessions one pair of bench processes (a server and a holder) keeps open: each holds one
/// fd a session, under an open-file limit (20,000 on this machine) that a process without
/// CAP_SYS_RESOURCE cannot raise; and one server port takes at most the ephemeral range's
/// worth (32768–60999 by default) of connections from 127.0.0.1.
const SESSIONS_PER_PAIR: u64 = 15_000;

/// The agent's caps that would end sessions before `count` are open (its defaults: 20,000
/// sessions, 100,000 fds; each session here is two fds, both ends watched), raised.
fn caps_for(count: u64) -> Vec<String> {
    if count <= 10_000 {
        return Vec::new();
    }
    vec![
        "--max-sessions".into(),
        (count + count / 5).to_string(),
        "--max-streams".into(),
        (3 * count).to_string(),
    ]
}

/// Poll the agent's `mcptap_tracked_sessions` until it reaches `count` or stops growing for
/// 3 s (at most 60 s): the agent may still be reading the connections' events.
fn settled_sessions(port: u16, count: u64) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (-1.0, std::time::Instant::now());
    loop {
        let text = http_get(port, "/metrics").unwrap_or_default();
        let n = metric(&text, "mcptap_tracked_sessions", &[]);
        if n != last {
            (last, since) = (n, std::time::Instant::now());
        }
        let stable = since.elapsed() > Duration::from_secs(3);
        if n >= count as f64 && since.elapsed() > Duration::from_secs(1)
            || stable
            || std::time::Instant::now() > deadline
        {
            return n;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// RSS of the agent with `count` sessions open (0: idle, the same steps with no session).
pub fn measure(env: &Env, count: u64) -> Result<Footprint> {
    step(&format!("bench 5/5: RSS with {count} sessions open"));
    let port = free_port();
    let caps = caps_for(count);
    let agent = env.agent(port, &caps.iter().map(String::as_str).collect::<Vec<_>>())?;
    // One pair after another, each holding its share, all held until the RSS is read.
    let (mut servers, mut holders) = (Vec::new(), Vec::new());
    let mut left = count;
    while left > 0 || servers.is_empty() {
        let n = left.min(SESSIONS_PER_PAIR);
        left -= n;
        let sport = free_port();
        servers.push(Proc {
            child: Command::new(&env.peer)
                .args(["server-sessions", &sport.to_string(), &n.to_string()])
                .stdout(Stdio::null())
                .spawn()?,
        });
        wait_for_port(sport, Duration::from_secs(30), Duration::from_millis(20));
        let mut holder = Command::new(&env.peer)
            .args(["sessions", &sport.to_string(), &n.to_string(), "600"])
            .stdout(Stdio::piped())
            .spawn()?;
        // It prints once its sessions are open.
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line)?;
        holders.push(Proc { child: holder });
    }
    let tracked = settled_sessions(port, count);
    let (_, rss, _) = agent.usage();
    drop(holders);
    drop(servers);
    agent.stop();
    Ok(Footprint {
        rss_kb: rss,
        tracked,
    })
}

/// The RSS target at `count` sessions, MiB, if the issue sets one.
fn target_mib(count: u64) -> Option<u64> {
    match count {
        10_000 => Some(56),
        100_000 => Some(160),
        _ => None,
    }
}

/// The most an idle session may add, KiB.
const PER_SESSION_KIB: f64 = 1.0;

/// The report's section 5: `f` holds the idle agent (0 sessions) first, then each count.
pub fn write_section(md: &mut String, f: &[(u64, Footprint)]) {
    let _ = writeln!(md, "\n## 5. Footprint\n");
    let Some((_, idle)) = f.iter().find(|(n, _)| *n == 0) else {
        return;
    };
    let _ = writeln!(
        md,
        "Agent CPU and peak RSS under load are in the tables above. Here: the agent's RSS with N TCP sessions open from 127.0.0.1 (each has had one `tools/call` exchange and stays open; both ends watched; the bench's server answers them on one thread and holds them; {SESSIONS_PER_PAIR} sessions to a pair of bench processes, as a process's open-file limit here is 20,000), once the agent's `mcptap_tracked_sessions` stops growing; idle is the same steps with no session. Above 10,000 sessions the agent runs with `--max-sessions` and `--max-streams` raised past N (its defaults, 20,000 and 100,000, would end sessions). Per session = (RSS at N − idle RSS) / N. One run per count: RSS does not vary from run to run the way times do, so there is no spread to judge. Idle RSS: {:.1} MiB.\n\n| sessions open | tracked | RSS MiB | target | per session KiB (target at most {PER_SESSION_KIB}) |\n|---|---|---|---|---|",
        idle.rss_kb as f64 / 1024.0
    );
    for (n, r) in f.iter().filter(|(n, _)| *n > 0) {
        let mib = r.rss_kb as f64 / 1024.0;
        let per = (r.rss_kb as f64 - idle.rss_kb as f64) / *n as f64;
        let target = target_mib(*n).map_or_else(
            || "–".to_string(),
            |t| format!("at most {t} ({})", verdict(mib <= t as f64)),
        );
        let _ = writeln!(
            md,
            "| {n} | {:.0} | {mib:.1} | {target} | {per:.2} ({}) |",
            r.tracked,
            verdict(per <= PER_SESSION_KIB && r.tracked >= *n as f64)
        );
    }
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
