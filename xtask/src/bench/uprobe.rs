//! Part of section 2: what one OpenSSL uprobe hit costs. A Python process runs SSL_write +
//! SSL_read pairs between two in-memory TLS ends (`tests/fixtures/tls_pairs.py`: no socket,
//! so only OpenSSL and the probes are timed) with the agent off and on (watching every
//! process), in rounds that alternate which goes first. The time the agent adds to a pair,
//! over the probe hits in a pair, is the cost of one hit: the kernel's trap and the program.
//! The ends are memory BIOs bound to no socket, so the programs return early (counted as
//! `tls_unbound_calls`): the figure is a hit's floor, not the cost of one that ships data.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::Scale;
use super::env::{Env, State, free_port, http_get, metric};
use super::stats::{Better, Ratio, median};
use crate::{root, step};

/// Probe hits in one pair: entry and return of `ssl_write_internal` (the client's
/// SSL_write) and of `ssl_read_internal` (the server's SSL_read), and `bio_write_intern`
/// twice (SSL_write putting its record into the client's write BIO; the record moved into
/// the server's read BIO).
pub const HITS_PER_PAIR: f64 = 6.0;

/// The target for one hit, µs.
const TARGET_US: f64 = 3.0;

/// The rounds' figures.
#[derive(Default)]
pub struct UprobeCost {
    pub pairs: u64,
    /// ns per pair, agent off, per round.
    pub off: Vec<f64>,
    /// ns per pair, agent on, per round.
    pub on: Vec<f64>,
}

impl UprobeCost {
    /// µs per hit, per round.
    fn per_hit(&self) -> Vec<f64> {
        self.on
            .iter()
            .zip(&self.off)
            .map(|(on, off)| (on - off) / HITS_PER_PAIR / 1000.0)
            .collect()
    }
}

/// One run of the pairs: ns per pair.
fn pairs_once(env: &Env, pairs: u64) -> Result<f64> {
    let cert = env.dir.join("cert.pem");
    let out = Command::new(env.peers.join("mcp2").join("bin").join("python"))
        .arg(root().join("tests").join("fixtures").join("tls_pairs.py"))
        .arg(pairs.to_string())
        .arg(&cert)
        .arg(env.dir.join("key.pem"))
        .output()
        .context("running tls_pairs.py")?;
    if !out.status.success() {
        bail!("tls_pairs.py: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let ns = v["ns"].as_f64().context("tls_pairs.py printed no ns")?;
    Ok(ns / pairs as f64)
}

/// Measure the rounds.
pub fn measure(env: &Env, s: &Scale) -> Result<UprobeCost> {
    step("bench 2/5: what one OpenSSL uprobe hit costs");
    super::latency::self_signed(&env.dir)?;
    let pairs = if s.smoke { 2_000 } else { 20_000 };
    let mut cost = UprobeCost {
        pairs,
        ..UprobeCost::default()
    };
    for round in 0..s.latency_rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for on in order {
            if !on {
                cost.off.push(pairs_once(env, pairs)?);
                continue;
            }
            let port = free_port();
            let agent = env.start(State::All, port, &[])?.expect("agent");
            // The on run proves the probes were there: libssl probed at its internal
            // functions (the path HITS_PER_PAIR counts), as the next tick's gauges say.
            let probed = || {
                let text = http_get(port, "/metrics").unwrap_or_default();
                metric(&text, "mcptap_tls_probed_binaries", &["mode=\"internal\""]) >= 1.0
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while !probed() {
                if Instant::now() > deadline {
                    bail!(
                        "no OpenSSL probed at its internal functions: the hit cost means nothing"
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            cost.on.push(pairs_once(env, pairs)?);
            agent.stop();
        }
    }
    Ok(cost)
}

/// The part of section 2 that reports it.
pub fn write_part(md: &mut String, c: &UprobeCost) {
    if c.on.is_empty() {
        return;
    }
    let per = c.per_hit();
    let r = Ratio::of(per);
    let _ = writeln!(
        md,
        "\nOne OpenSSL uprobe hit: {} SSL_write + SSL_read pairs between in-memory TLS ends in one Python process (`tests/fixtures/tls_pairs.py`, no socket), agent off and on, {} rounds: {:.2} µs a pair off, {:.2} on; over the {HITS_PER_PAIR} probe hits of a pair, **{:.2} µs a hit** [{:.2}–{:.2}], the kernel's trap and the program together ({}; target at most {TARGET_US} µs). The TLS ends are bound to no socket, so the programs count each call as unbound and return without shipping: this is a hit's floor; the HTTPS row above is the whole cost on real traffic.",
        c.pairs,
        c.on.len(),
        median(c.off.clone()) / 1000.0,
        median(c.on.clone()) / 1000.0,
        r.median,
        r.spread.0,
        r.spread.1,
        r.against(TARGET_US, Better::Lower)
    );
}
