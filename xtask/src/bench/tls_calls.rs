//! Section 7: what one TLS read or write costs, per TLS library whose plaintext mcptap reads.
//!
//! A client on each library makes back-to-back MCP `tools/call`s (HTTP/1.1 POSTs answered
//! with JSON, one keep-alive connection) to one MCP server on OpenSSL: Python's `ssl`
//! (OpenSSL), `gnutls-cli` driven through its standard input and output (GnuTLS), a small
//! net/http program (Go's crypto/tls) built here from `assets/tls_loop_go`, and the tests'
//! rustls peer (`rustls_mcp bench`: tokio-rustls under hyper). Each round
//! runs every client in three states, in an order that changes from round to round: no
//! agent, mcptap with `--no-tls` (its syscall hooks, no uprobes) and mcptap watching every
//! process with its probes set. What is timed is the client process's CPU time over the
//! timed calls: a uprobe's trap and program run on the thread that makes the call, so that
//! is where their cost lands, and the server's own probes (it is watched too) do not blur
//! it. Divided by the client's TLS reads and writes per request, counted in each "on" run's
//! own recording (`--record`: every read or write that moves plaintext is one record, or
//! several chunks of which the first has offset 0), the difference between the states is the
//! cost of one call: on − `--no-tls` the probes alone, on − off all of mcptap.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::Scale;
use super::env::{Env, Proc, free_port, http_get, metric, processes_named, wait_for_port};
use super::recfile;
use super::stats::{Better, Ratio, median};
use crate::{root, run, step};

/// The target for the probes' cost of one call, µs (section 2's target for one probe hit,
/// here for a whole call: two or three hits and the copy of the plaintext).
const TARGET_US: f64 = 3.0;

/// A TLS library, as its client exercises it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lib {
    OpenSsl,
    GnuTls,
    Go,
    Rustls,
}

impl Lib {
    const ALL: [Lib; 4] = [Lib::OpenSsl, Lib::GnuTls, Lib::Go, Lib::Rustls];

    fn label(self) -> &'static str {
        match self {
            Lib::OpenSsl => "OpenSSL (Python's `ssl`, blocking socket)",
            Lib::GnuTls => "GnuTLS (`gnutls-cli`, driven through its stdin and stdout)",
            Lib::Go => "Go crypto/tls (net/http client)",
            Lib::Rustls => "rustls (tokio-rustls under hyper, the tests' `rustls_mcp bench`)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Lib::OpenSsl => "OpenSSL",
            Lib::GnuTls => "GnuTLS",
            Lib::Go => "Go",
            Lib::Rustls => "rustls",
        }
    }

    /// The `tls_lib` of its records.
    fn tls_lib(self) -> u8 {
        match self {
            Lib::OpenSsl => 1,
            Lib::GnuTls => 2,
            Lib::Go => 3,
            Lib::Rustls => 5,
        }
    }

    /// Its name in the agent's log lines and metric labels.
    fn agent_name(self) -> &'static str {
        match self {
            Lib::OpenSsl => "openssl",
            Lib::GnuTls => "gnutls",
            Lib::Go => "go",
            Lib::Rustls => "rustls",
        }
    }
}

/// What runs in a part of a round.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Arm {
    Off,
    NoTls,
    On,
}

/// A round's parts: every rotation of the three, then each reversed.
fn order(round: usize) -> Vec<Arm> {
    use Arm::*;
    let rotations = [[Off, NoTls, On], [NoTls, On, Off], [On, Off, NoTls]];
    let mut v = rotations[(round / 2) % 3].to_vec();
    if round % 2 == 1 {
        v.reverse();
    }
    v
}

/// One timed client run, as the client reports it.
#[derive(Clone, Copy, Debug, Default)]
struct Timed {
    /// The process doing TLS (gnutls-cli's, not its driver's).
    pid: u32,
    /// Every HTTP request it made (initialize, the notification, warm-up and timed calls).
    requests: u64,
    /// Timed calls.
    calls: u64,
    wall_ns: f64,
    /// The TLS process's CPU time over the timed calls.
    cpu_ns: f64,
}

impl Timed {
    fn cpu_us_per_request(&self) -> f64 {
        self.cpu_ns / self.calls as f64 / 1e3
    }

    fn requests_per_s(&self) -> f64 {
        self.calls as f64 / (self.wall_ns / 1e9)
    }
}

/// One library's rounds.
#[derive(Default)]
pub struct LibFigures {
    off: Vec<Timed>,
    no_tls: Vec<Timed>,
    on: Vec<Timed>,
    /// Per "on" run: the client's (reads, writes) in its recording, over its requests.
    counted: Vec<(u64, u64, u64)>,
    /// How the agent said it probed the library.
    probes: String,
}

impl LibFigures {
    /// The figures of these rounds alone.
    fn of_rounds(&self, rounds: &[usize]) -> LibFigures {
        fn pick<T: Copy>(v: &[T], rounds: &[usize]) -> Vec<T> {
            rounds.iter().filter_map(|&r| v.get(r).copied()).collect()
        }
        LibFigures {
            off: pick(&self.off, rounds),
            no_tls: pick(&self.no_tls, rounds),
            on: pick(&self.on, rounds),
            counted: pick(&self.counted, rounds),
            probes: self.probes.clone(),
        }
    }

    /// TLS (reads, writes) per request, over every "on" run.
    fn per_request(&self) -> (f64, f64) {
        let (r, w, n) = self
            .counted
            .iter()
            .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
        (r as f64 / n.max(1) as f64, w as f64 / n.max(1) as f64)
    }

    /// Per round: µs the agent adds to one TLS call, over `base` (no agent, or `--no-tls`).
    fn added_per_call(&self, base: &[Timed]) -> Vec<f64> {
        self.on
            .iter()
            .zip(base)
            .zip(&self.counted)
            .map(|((on, b), &(r, w, n))| {
                let per_request = (r + w) as f64 / n.max(1) as f64;
                (on.cpu_us_per_request() - b.cpu_us_per_request()) / per_request
            })
            .collect()
    }
}

/// The section's figures.
#[derive(Default)]
pub struct TlsCalls {
    pub calls: u64,
    pub warmup: u64,
    pub libs: Vec<(Lib, LibFigures)>,
    /// Per round: whether another mcptap (someone else's: a test's agent) was running at
    /// the start or the end of one of its timed runs. Its probes and hooks would be in
    /// every state, "off" included, and the difference would not be this agent's.
    pub shared: Vec<bool>,
}

impl TlsCalls {
    /// The rounds the figures are taken from: those no other agent shared, if there are at
    /// least five of them; otherwise every round.
    fn rounds(&self) -> Vec<usize> {
        let clean: Vec<usize> = (0..self.shared.len())
            .filter(|&r| !self.shared[r])
            .collect();
        if clean.len() >= 5 {
            clean
        } else {
            (0..self.shared.len()).collect()
        }
    }
}

/// Whether an mcptap other than `mine` runs.
fn another_agent(mine: Option<u32>) -> bool {
    processes_named("mcptap")
        .into_iter()
        .chain(processes_named("mcptap-bench"))
        .any(|p| Some(p) != mine)
}

/// The clients and the server they call.
struct Setup {
    script: PathBuf,
    go: PathBuf,
    rustls: PathBuf,
    cert: PathBuf,
    port: u16,
    dir: PathBuf,
}

impl Setup {
    fn client(&self, lib: Lib, warmup: u64, calls: u64) -> Command {
        let port = self.port.to_string();
        let (w, n) = (warmup.to_string(), calls.to_string());
        match lib {
            Lib::OpenSsl | Lib::GnuTls => {
                let mut c = Command::new("python3");
                c.arg(&self.script)
                    .arg(if lib == Lib::OpenSsl {
                        "openssl"
                    } else {
                        "gnutls"
                    })
                    .arg(&port)
                    .arg(&self.cert)
                    .args([&w, &n]);
                c
            }
            Lib::Go => {
                let mut c = Command::new(&self.go);
                c.arg("-url")
                    .arg(format!("https://127.0.0.1:{port}/mcp"))
                    .arg("-ca")
                    .arg(&self.cert)
                    .args(["-warmup", &w, "-calls", &n]);
                c
            }
            Lib::Rustls => {
                let mut c = Command::new(&self.rustls);
                c.arg("bench")
                    .arg("-url")
                    .arg(format!("https://127.0.0.1:{port}/mcp"))
                    .arg("-ca")
                    .arg(&self.cert)
                    .args(["-warmup", &w, "-calls", &n]);
                c
            }
        }
    }

    fn run_client(&self, lib: Lib, warmup: u64, calls: u64) -> Result<Timed> {
        let out = self
            .client(lib, warmup, calls)
            .output()
            .with_context(|| format!("running the {} client", lib.short()))?;
        if !out.status.success() {
            bail!(
                "the {} client failed ({}): {}",
                lib.short(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("the {} client's report", lib.short()))?;
        let n = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        Ok(Timed {
            pid: v["pid"].as_u64().unwrap_or(0) as u32,
            requests: v["requests"].as_u64().unwrap_or(0),
            calls: v["calls"].as_u64().unwrap_or(0),
            wall_ns: n("wall_ns"),
            cpu_ns: n("cpu_ns"),
        })
    }
}

/// Build the Go client as `peers.rs` builds the Go peer (Debian's Go, no module proxy).
fn build_go(env: &Env) -> Result<PathBuf> {
    let out = env.dir.join("tlsloop");
    let go = env.peers.join("go");
    run(Command::new("go")
        .current_dir(root().join("xtask/src/bench/assets/tls_loop_go"))
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", go.join("cache"))
        .env("GOPATH", go.join("gopath")))
    .context("go build of the bench's Go TLS client")?;
    Ok(out)
}

/// Poll the agent's `/metrics` on `port` until `ok` says yes (30 s at most).
fn wait_metrics(port: u16, what: &str, ok: impl Fn(&str) -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if ok(&http_get(port, "/metrics").unwrap_or_default()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: the per-call cost would mean nothing");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What the agent's log says of how it probed `lib` in the system's libraries the clients
/// use (its "probed at ..." lines, without the parts that name nothing).
fn probe_detail(log: &Path, lib: Lib) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tag = format!(": {}: ", lib.agent_name());
    let files: &[&str] = match lib {
        Lib::OpenSsl => &["/libssl.so", "/libcrypto.so"],
        Lib::GnuTls => &["/libgnutls.so"],
        Lib::Go => &["/tlsloop"],
        Lib::Rustls => &["/rustls_mcp"],
    };
    let mut parts: Vec<String> = Vec::new();
    for l in text.lines() {
        let Some((head, detail)) = l.split_once(&tag) else {
            continue;
        };
        if !files.iter().any(|f| head.contains(f)) {
            continue;
        }
        for p in detail.trim().split(", ") {
            if !p.contains("(none)") && !parts.iter().any(|q| q == p) {
                parts.push(p.to_string());
            }
        }
    }
    // SSL_read/SSL_write first, then BIO_write.
    parts.sort_by_key(|p| p.starts_with("BIO"));
    parts.join(", ")
}

/// The agent in `arm`'s state (recording into `record` when on), with every library's
/// probes set once it says so; `None` for no agent.
fn start_arm(env: &Env, setup: &Setup, arm: Arm, record: &Path) -> Result<Option<Proc>> {
    let port = free_port();
    let rec = record.display().to_string();
    let extra: Vec<&str> = match arm {
        Arm::Off => Vec::new(),
        Arm::NoTls => vec!["--no-tls"],
        Arm::On => vec!["--record", &rec],
    };
    let agent = match arm {
        Arm::Off => None,
        _ => Some(env.agent(port, &extra)?),
    };
    if arm == Arm::On {
        wait_metrics(port, "OpenSSL and GnuTLS were not probed", |t| {
            metric(t, "mcptap_tls_probed_binaries", &["mode=\"internal\""]) >= 1.0
                && metric(
                    t,
                    "mcptap_tls_probes",
                    &["library=\"gnutls\"", "state=\"probed\""],
                ) >= 1.0
        })?;
    }
    // The Go and rustls clients' binaries are probed when they first run under this agent,
    // and only if the process is still there when the agent attaches (a binary whose
    // probing failed is not tried again): a long run of each, stopped once the agent says
    // how it went. The other states run them once too, untimed, so that every timed run
    // finds them paged in.
    for lib in [Lib::Go, Lib::Rustls] {
        prime(setup, lib, arm, port)?;
    }
    Ok(agent)
}

/// Have `lib`'s client binary probed by the agent on `port` (`arm` on), or just run once.
/// The agent's log names the binary when it examines it and when it cannot probe it: other
/// binaries with the same library (`rustup` has rustls) move the metrics too.
fn prime(setup: &Setup, lib: Lib, arm: Arm, port: u16) -> Result<()> {
    if arm != Arm::On {
        setup.run_client(lib, 0, 5)?;
        return Ok(());
    }
    let probed = |t: &str| {
        metric(
            t,
            "mcptap_tls_probes",
            &[
                &format!("library=\"{}\"", lib.agent_name()),
                "state=\"probed\"",
            ],
        )
    };
    let before = probed(&http_get(port, "/metrics").unwrap_or_default());
    let running = Proc::quiet(&mut setup.client(lib, 0, 100_000_000))?;
    let file = match lib {
        Lib::Go => "/tlsloop",
        _ => "/rustls_mcp",
    };
    let log = setup.dir.join("agent.log");
    let said = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(&format!("{file}{what}")))
    };
    let examined = format!(": {}: ", lib.agent_name());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !said(&examined) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let what = format!("the {} client was not probed", lib.short());
    let waited = if said(" has ") {
        Err(anyhow::anyhow!(
            "the agent could not probe the {} client; see {}",
            lib.short(),
            log.display()
        ))
    } else {
        wait_metrics(port, &what, |t| probed(t) >= before + 1.0)
    };
    running.stop();
    waited
}

/// Measure the rounds.
pub fn measure(env: &Env, s: &Scale) -> Result<TlsCalls> {
    step("bench 7: what a TLS call costs, per library: building the Go client");
    super::latency::self_signed(&env.dir)?;
    let setup = Setup {
        script: root().join("xtask/src/bench/assets/tls_loop.py"),
        go: build_go(env)?,
        rustls: env.rustls_peer.clone(),
        cert: env.dir.join("cert.pem"),
        port: free_port(),
        dir: env.dir.clone(),
    };
    let _server = Proc::quiet(
        Command::new("python3")
            .arg(&setup.script)
            .arg("server")
            .arg(setup.port.to_string())
            .arg(&setup.cert)
            .arg(env.dir.join("key.pem")),
    )?;
    if !wait_for_port(
        setup.port,
        Duration::from_secs(30),
        Duration::from_millis(50),
    ) {
        bail!("the bench's TLS server did not listen");
    }
    // A smoke run only checks that every part runs.
    let (warmup, calls) = if s.smoke {
        (s.warmup, s.calls)
    } else {
        (s.warmup * 2, s.calls * 5)
    };
    let mut out = TlsCalls {
        calls,
        warmup,
        libs: Lib::ALL
            .iter()
            .map(|&l| (l, LibFigures::default()))
            .collect(),
        shared: Vec::new(),
    };
    let record = setup.dir.join("tls-calls.mcptap");
    for round in 0..s.latency_rounds {
        step(&format!(
            "bench 7: what a TLS call costs, round {} of {}",
            round + 1,
            s.latency_rounds
        ));
        let mut shared = false;
        for arm in order(round) {
            let agent = start_arm(env, &setup, arm, &record)?;
            let mine = agent.as_ref().map(Proc::pid);
            for k in 0..Lib::ALL.len() {
                let i = (k + round) % Lib::ALL.len();
                let lib = Lib::ALL[i];
                shared |= another_agent(mine);
                let t = setup.run_client(lib, warmup, calls)?;
                shared |= another_agent(mine);
                let f = &mut out.libs[i].1;
                match arm {
                    Arm::Off => f.off.push(t),
                    Arm::NoTls => f.no_tls.push(t),
                    Arm::On => f.on.push(t),
                }
            }
            let Some(agent) = agent else { continue };
            agent.stop();
            if arm != Arm::On {
                continue;
            }
            // The run's own count of each client's TLS calls: all of its requests must be
            // there, or the probes missed some and the figure means nothing.
            for (lib, f) in &mut out.libs {
                let t = f.on.last().copied().unwrap_or_default();
                let (r, w) = recfile::tls_calls(&record, t.pid, lib.tls_lib())?;
                if r < t.requests || w < t.requests {
                    bail!(
                        "the {} client made {} requests but the agent recorded {r} TLS reads and {w} writes of it",
                        lib.short(),
                        t.requests
                    );
                }
                f.counted.push((r, w, t.requests));
                if f.probes.is_empty() {
                    f.probes = probe_detail(&env.dir.join("agent.log"), *lib);
                }
            }
        }
        if shared {
            step("bench 7: another mcptap ran during this round; it is left out if enough are not");
        }
        out.shared.push(shared);
    }
    let _ = std::fs::remove_file(&record);
    Ok(out)
}

/// `median [q1–q3]` of µs figures.
fn show(v: &[f64]) -> String {
    let r = Ratio::of(v.to_vec());
    format!("{:.2} [{:.2}–{:.2}]", r.median, r.spread.0, r.spread.1)
}

/// The report's section 7.
pub fn write_section(md: &mut String, s: &Scale, t: &TlsCalls) {
    let _ = writeln!(md, "\n## 7. What a TLS call costs, per library\n");
    let kept = t.rounds();
    let libs: Vec<(Lib, LibFigures)> = t
        .libs
        .iter()
        .map(|(l, f)| (*l, f.of_rounds(&kept)))
        .collect();
    let rounds = t.shared.len();
    let shared = t.shared.iter().filter(|&&x| x).count();
    let note = match shared {
        0 => String::new(),
        n if kept.len() < rounds => format!(
            " Another mcptap (someone else's) ran during {n} of the rounds: they are left out, and the figures are of the other {}.",
            kept.len()
        ),
        n => format!(
            " Another mcptap (someone else's) ran during {n} of the rounds, too many to leave out: its probes and hooks are in every state of those, \"off\" included."
        ),
    };
    let _ = writeln!(
        md,
        "A client on each TLS library makes back-to-back MCP `tools/call`s (HTTP/1.1 POSTs answered with JSON, one keep-alive connection) to one MCP server on OpenSSL (`xtask/src/bench/assets/tls_loop.py`; the Go client is `assets/tls_loop_go`, built by Debian's Go; the rustls client is the tests' peer, `rustls_mcp bench`, on tokio-rustls under hyper): {} timed calls after {} warm-up ones, {rounds} rounds; each round runs every client with no agent, with mcptap `--no-tls` (its syscall hooks, no uprobes) and with mcptap watching every process, its probes set, in an order that rotates from round to round. Timed is the client process's CPU time (user and system, every thread: Python's process clock, gnutls-cli's `/proc/PID/task/*/schedstat`, Go's and the rustls client's getrusage) over the timed calls: a uprobe's trap and program run on the calling thread, so their cost lands there, and the server's own probes (it is watched too) stay out of it. TLS calls per request are counted in every \"on\" run's own recording (`--record`; each read or write that moved plaintext is a record), and the run is refused unless every request's read and write are there. Added per call = the difference in CPU µs per request over those calls: on − `--no-tls` is the probes alone, on − off all of mcptap (its syscall hooks too, which cost gnutls-cli more than its TLS calls: it writes what it receives to its standard output a byte at a time, about 165 `write`s a response by `strace -c`). Target: the probes at most {TARGET_US} µs a call (the per-hit target of section 2, for a whole call), \"met\" only when the quartile range is inside it, \"inconclusive\" when it straddles it.{note}{}\n",
        t.calls,
        t.warmup,
        if s.smoke {
            " (A smoke run: the figures are not measurements.)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "| client (TLS library) | how the agent probed it | TLS calls a request (reads + writes) | requests/s off | requests/s on | client CPU µs a request: off / `--no-tls` / on | µs added a TLS call: probes | µs added a TLS call: all of mcptap |\n|---|---|---|---|---|---|---|---|"
    );
    let med = |v: &[Timed], f: fn(&Timed) -> f64| median(v.iter().map(f).collect());
    for (lib, f) in &libs {
        let (r, w) = f.per_request();
        let probes = if f.probes.is_empty() {
            "(not in the log)".to_string()
        } else {
            f.probes.replace('|', "\\|")
        };
        let _ = writeln!(
            md,
            "| {} | {probes} | {:.2} ({r:.2} + {w:.2}) | {:.0} | {:.0} | {:.1} / {:.1} / {:.1} | {} | {} |",
            lib.label(),
            r + w,
            med(&f.off, Timed::requests_per_s),
            med(&f.on, Timed::requests_per_s),
            med(&f.off, Timed::cpu_us_per_request),
            med(&f.no_tls, Timed::cpu_us_per_request),
            med(&f.on, Timed::cpu_us_per_request),
            show(&f.added_per_call(&f.no_tls)),
            show(&f.added_per_call(&f.off)),
        );
    }
    let verdicts: Vec<String> = libs
        .iter()
        .map(|(lib, f)| {
            let v = f.added_per_call(&f.no_tls);
            let r = Ratio::of(v);
            format!(
                "{} **{:.2} µs** [{:.2}–{:.2}] ({})",
                lib.short(),
                r.median,
                r.spread.0,
                r.spread.1,
                r.against(TARGET_US, Better::Lower)
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "\nThe probes' cost of one TLS read or write: {}.",
        verdicts.join("; ")
    );
}

#[cfg(test)]
mod tests {
    use super::{Arm, order};

    #[test]
    fn every_arm_takes_every_place() {
        for place in 0..3 {
            let seen: Vec<Arm> = (0..6).map(|r| order(r)[place]).collect();
            for arm in [Arm::Off, Arm::NoTls, Arm::On] {
                assert_eq!(seen.iter().filter(|&&a| a == arm).count(), 2, "{place}");
            }
        }
    }
}
