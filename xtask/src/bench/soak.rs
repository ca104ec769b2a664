//! `cargo xtask soak --minutes N`: steady real MCP load (the Python SDK 2.x client and the
//! fixture server over stdio, and the TypeScript SDK over Streamable HTTP to server-everything,
//! one session after another) with mcptap watching this process tree. Every 30 s it samples
//! the agent's RSS, kernel loss and the calls it counted; at the end every call the clients
//! made must be counted, none lost, and RSS flat. Writes SOAK.md at the top of the checkout,
//! which is committed beside BENCHMARKS.md.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::env::{Env, Proc, State, free_port, http_get, metric};
use super::latency::{Workload, workloads};
use super::{SMOKE, Scale, machine};
use crate::{root, run, step};

/// One sample of the agent.
struct Sample {
    /// Seconds since the load began.
    secs: u64,
    rss_kb: u64,
    made: u64,
    counted: f64,
    lost: f64,
}

/// The tool calls the agent counted, in a `/metrics` text.
fn counted(text: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with("mcp_tool_calls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The agent under soak and what it has seen.
struct Soak {
    agent: Proc,
    port: u16,
    start: Instant,
    made: u64,
    samples: Vec<Sample>,
}

impl Soak {
    fn sample(&mut self) {
        let text = http_get(self.port, "/metrics").unwrap_or_default();
        let (_, rss, _) = self.agent.usage();
        self.samples.push(Sample {
            secs: self.start.elapsed().as_secs(),
            rss_kb: rss,
            made: self.made,
            counted: counted(&text),
            lost: metric(&text, "mcptap_lost_events_total", &[]),
        });
    }

    /// Run the workloads' clients in turn until `end`, sampling every 30 s.
    fn drive(&mut self, loads: &mut [Workload], end: Instant) -> Result<()> {
        let mut next_sample = self.start;
        let mut i = 0;
        while Instant::now() < end {
            let n = loads.len();
            let w = &mut loads[i % n];
            i += 1;
            let out = w.client.output().context(w.name)?;
            if !out.status.success() {
                bail!(
                    "{} failed: {}",
                    w.name,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // Counted by the client (every call that returned), not assumed from what it
            // was asked to make.
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("{}: {}", w.name, String::from_utf8_lossy(&out.stdout)))?;
            self.made += v["made"]
                .as_u64()
                .with_context(|| format!("{} printed no \"made\" count", w.name))?;
            if Instant::now() >= next_sample {
                next_sample += Duration::from_secs(30);
                self.sample();
                let last = self.samples.last().expect("a sample");
                step(&format!(
                    "soak: {:>4} s  RSS {} MiB  calls made {}  counted {}",
                    self.start.elapsed().as_secs(),
                    last.rss_kb / 1024,
                    self.made,
                    last.counted
                ));
            }
        }
        Ok(())
    }
}

/// Start the workloads' servers (they run for the whole soak) and drop the workloads the soak
/// does not run.
fn start_servers(loads: Vec<Workload>) -> Result<(Vec<Workload>, Vec<Proc>)> {
    let mut servers = Vec::new();
    let mut kept = Vec::new();
    for mut w in loads {
        if let Some(p) = w.start_server()? {
            servers.push(p);
        }
        if !w.name.contains("TypeScript SDK ↔ server-everything, stdio") {
            kept.push(w);
        }
    }
    Ok((kept, servers))
}

/// RSS at the last sample over RSS at the middle one.
fn growth(samples: &[Sample]) -> f64 {
    let last = samples.last().map_or(0, |s| s.rss_kb);
    let mid_rss = samples.get(samples.len() / 2).map_or(0, |s| s.rss_kb);
    last as f64 / mid_rss.max(1) as f64
}

/// The soak's report.
fn report(minutes: u64, loads: &[Workload], samples: &[Sample], hwm_kb: u64) -> String {
    let last = samples.last().expect("a final sample");
    let growth = growth(samples);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# mcptap soak\n\n{minutes} min of steady load ({}), mcptap watching the soak's process tree. {}.\n\n| s | RSS MiB | calls made (counted by the clients) | calls counted by mcptap | lost events |\n|---|---|---|---|---|",
        loads.iter().map(|w| w.name).collect::<Vec<_>>().join("; "),
        machine()
    );
    for s in samples {
        let _ = writeln!(
            md,
            "| {} | {:.1} | {} | {} | {} |",
            s.secs,
            s.rss_kb as f64 / 1024.0,
            s.made,
            s.counted,
            s.lost
        );
    }
    let _ = writeln!(
        md,
        "\nCalls made {}, counted {}; lost events {}; RSS at the end {:.1} MiB, {growth:.2}× the midpoint's; peak {:.1} MiB.",
        last.made,
        last.counted,
        last.lost,
        last.rss_kb as f64 / 1024.0,
        hwm_kb as f64 / 1024.0
    );
    md
}

/// Run the soak and write SOAK.md; fails if a call went uncounted, an event was
/// lost, or RSS grew more than 10% over the second half.
pub fn soak(minutes: u64) -> Result<()> {
    crate::bootstrap::all()?;
    let peers = crate::peers::install()?;
    run(crate::cargo().args(["build", "--release", "--package", "mcptap"]))?;
    let dir = root().join("target").join("soak");
    std::fs::create_dir_all(&dir)?;
    let env = Env {
        mcptap: root().join("target/release/mcptap"),
        peer: root().join("target/release/bench_peer"),
        // The soak runs no TLS client.
        rustls_peer: root().join("target/release/rustls_mcp"),
        peers,
        dir: dir.clone(),
    };
    let port = free_port();
    let me = std::process::id().to_string();
    // Watch only this process tree, so the figures are the soak's own traffic.
    let agent = env
        .start(State::All, port, &["--pid", &me])?
        .expect("agent");
    let scale = Scale {
        calls: 1_000,
        warmup: 0,
        ..SMOKE
    };
    let (mut loads, servers) = start_servers(workloads(&env, &scale))?;
    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let mut soak = Soak {
        agent,
        port,
        start,
        made: 0,
        samples: Vec::new(),
    };
    step(&format!("soak: {minutes} min of steady MCP load"));
    soak.drive(&mut loads, end)?;
    std::thread::sleep(Duration::from_secs(3));
    soak.sample();
    let (_, _, hwm) = soak.agent.usage();
    let Soak { agent, samples, .. } = soak;
    agent.stop();
    drop(servers);

    let md = report(minutes, &loads, &samples, hwm);
    let out = root().join("SOAK.md");
    std::fs::write(&out, &md)?;
    step(&format!("soak report: {}", out.display()));
    let last = samples.last().expect("a final sample");
    let growth = growth(&samples);
    if last.counted as u64 != last.made || last.lost > 0.0 || growth > 1.10 {
        bail!(
            "soak failed: {} calls made, {} counted, {} lost events, RSS {growth:.2}× the midpoint's",
            last.made,
            last.counted,
            last.lost
        );
    }
    Ok(())
}
