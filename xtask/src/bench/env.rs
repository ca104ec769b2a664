//! What every measurement stands on: the binaries it runs ([`Env`]), the agent started in
//! the state a measurement needs ([`State`]), the processes the bench starts and stops
//! ([`Proc`]), and reading the agent's HTTP endpoints (`/ready`, `/metrics`).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Clock ticks per second of `/proc/PID/stat`'s utime and stime.
pub const HZ: f64 = 100.0;

/// Pids of the processes whose comm is `name`.
pub fn processes_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .collect()
}

/// A loopback TCP port nobody listens on (as of now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until something accepts on loopback `port`, polling every `poll`; false after
/// `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration, poll: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(poll);
    }
    true
}

/// The body of `GET path` on loopback `port`, if it answers 200.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// Sum of every series of `name` whose line contains all `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A process the bench started, stopped with SIGINT.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// Start `cmd` with its output thrown away.
    pub fn quiet(cmd: &mut Command) -> Result<Proc> {
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        Ok(Proc { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (utime + stime in ticks, VmRSS kB, VmHWM kB).
    pub fn usage(&self) -> (u64, u64, u64) {
        let pid = self.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (ticks, kb("VmRSS:"), kb("VmHWM:"))
    }

    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The agent's CPU use, in % of one core, since a [`Proc::usage`] sample.
pub struct CpuMeter {
    ticks: u64,
    since: Instant,
}

impl CpuMeter {
    pub fn start(agent: &Proc) -> Self {
        CpuMeter {
            ticks: agent.usage().0,
            since: Instant::now(),
        }
    }

    /// (% of one core since the start, VmHWM kB now).
    pub fn read(&self, agent: &Proc) -> (f64, u64) {
        let (t1, _, hwm) = agent.usage();
        let cpu = (t1 - self.ticks) as f64 / HZ / self.since.elapsed().as_secs_f64() * 100.0;
        (cpu, hwm)
    }
}

/// What runs during a measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum State {
    None,
    Floor,
    Other,
    All,
}

impl State {
    /// Every state, in report order.
    pub const EVERY: [State; 4] = [State::None, State::Floor, State::Other, State::All];

    pub fn label(&self) -> &'static str {
        match self {
            State::None => "no agent",
            State::Floor => "floor: empty programs on the same hooks",
            State::Other => "mcptap watching other processes (--comm)",
            State::All => "mcptap watching every process",
        }
    }
}

/// The binaries a measurement runs, and where it leaves its files.
pub struct Env {
    /// The agent measured.
    pub mcptap: PathBuf,
    /// The synthetic peers (`bench_peer`).
    pub peer: PathBuf,
    /// The tests' rustls MCP peer (`rustls_mcp`), the rustls client of section 7.
    pub rustls_peer: PathBuf,
    /// The installed MCP peers (target/peers).
    pub peers: PathBuf,
    /// Scratch files: logs, captures, certificates.
    pub dir: PathBuf,
}

/// Wait (at most 30 s) until no stopped agent's `mcptap-release` child is left: while it
/// detaches its uprobes, the kernel's uprobe lock and CPU go to it, not to what is measured.
fn wait_for_released_probes() {
    let releasing = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                stat.contains("(mcptap-release) ") && !stat.contains("(mcptap-release) Z")
            })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while releasing() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Env {
    /// Start what `state` needs; `None` for no agent. mcptap listens on `port`.
    pub fn start(&self, state: State, port: u16, extra: &[&str]) -> Result<Option<Proc>> {
        wait_for_released_probes();
        let mut c = Command::new(&self.mcptap);
        match state {
            State::None => return Ok(None),
            State::Floor => {
                c.arg("floor");
            }
            State::Other => {
                c.args(["--quiet", "--comm", "no-such-process"]);
            }
            State::All => {
                c.arg("--quiet");
            }
        }
        if state != State::Floor {
            c.args(["--listen", &format!("127.0.0.1:{port}")])
                .args(extra);
        }
        let child = c
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("agent.log"))?)
            .spawn()
            .context("starting mcptap")?;
        let p = Proc { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        if state == State::Floor {
            // The floor has no endpoint: give it time to attach.
            std::thread::sleep(Duration::from_millis(1500));
        } else {
            while http_get(port, "/ready").is_none() {
                if Instant::now() > deadline {
                    bail!(
                        "mcptap did not become ready; see {}",
                        self.dir.join("agent.log").display()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(Some(p))
    }

    /// Start mcptap watching every process, listening on `port`.
    pub fn agent(&self, port: u16, extra: &[&str]) -> Result<Proc> {
        Ok(self.start(State::All, port, extra)?.expect("agent"))
    }
}
