//! Harness for mcptap's end-to-end tests: start the real agent on the real kernel, drive real
//! MCP peers (the official Python and TypeScript SDKs, installed by `cargo xtask peers`), and
//! compare what the agent reports with what the clients measured themselves.
//!
//! Run through `cargo xtask test`, which sets `MCPTAP_BIN` and `MCPTAP_PEERS` and runs these
//! tests one at a time, as root.

pub mod agentic;
pub mod otlp;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

/// Where the peers are installed.
pub fn peers() -> PathBuf {
    PathBuf::from(
        std::env::var("MCPTAP_PEERS")
            .expect("MCPTAP_PEERS is not set: run the end-to-end tests through `cargo xtask test`"),
    )
}

/// The mcptap binary under test.
pub fn mcptap_bin() -> PathBuf {
    PathBuf::from(
        std::env::var("MCPTAP_BIN")
            .expect("MCPTAP_BIN is not set: run the end-to-end tests through `cargo xtask test`"),
    )
}

/// The test fixtures directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A scratch directory for one test, kept after the run for inspection.
pub fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("target")
        .join("e2e")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The tests need root to load eBPF programs; say so instead of failing obscurely.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "end-to-end tests load eBPF programs and must run as root"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Status code of `GET path` on 127.0.0.1:port, if the port answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// The body of `GET path` on 127.0.0.1:port.
pub fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // The agent answers with Content-Length; a chunked answer would need de-chunking.
    body.to_string()
}

/// The value of one Prometheus series in exposition text: `name{labels}` exactly as
/// rendered, or a prefix match on `name{` with every `label="value"` pair present.
pub fn prom_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// A running mcptap.
pub struct Agent {
    child: Child,
    /// Its JSON lines output.
    pub jsonl: PathBuf,
    /// Its /health and /ready port.
    pub port: u16,
    stderr: PathBuf,
}

/// Wait (at most 30 s) until no stopped agent's `mcptap-release` child is left: while it
/// detaches its uprobes it holds the kernel's uprobe lock in turns, and a new agent's
/// attaches, the per-process TLS probes among them, queue behind it.
pub fn wait_for_released_probes() {
    let deadline = Instant::now() + Duration::from_secs(30);
    while releasing() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a live (not zombie) `mcptap-release` process exists.
fn releasing() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ...": a zombie has let go of its fds already.
        stat.contains("(mcptap-release) ") && !stat.contains("(mcptap-release) Z")
    })
}

impl Agent {
    /// Start mcptap with `args` (plus --jsonl, --listen, --quiet) and wait until /ready says
    /// every probe is attached.
    pub fn start(dir: &Path, args: &[&str]) -> Agent {
        Self::start_with_env(dir, args, &[])
    }

    /// [`Agent::start`] with extra environment variables.
    pub fn start_with_env(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Agent {
        Self::start_under(dir, &[], args, envs)
    }

    /// [`Agent::start_with_env`] with mcptap run by `wrapper` (e.g. `capsh --drop=... --
    /// -c 'exec "$0" "$@"'`), which gets mcptap's path and arguments after its own.
    pub fn start_under(
        dir: &Path,
        wrapper: &[&str],
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Agent {
        Self::launch(dir, wrapper, args, envs, false)
    }

    /// [`Agent::start`] without `--quiet`: the console view goes to `dir/console.log`
    /// (complete once the agent has stopped).
    pub fn start_with_console(dir: &Path, args: &[&str]) -> Agent {
        Self::launch(dir, &[], args, &[], true)
    }

    fn launch(
        dir: &Path,
        wrapper: &[&str],
        args: &[&str],
        envs: &[(&str, &str)],
        console: bool,
    ) -> Agent {
        require_root();
        wait_for_released_probes();
        let jsonl = dir.join("out.jsonl");
        let stderr = dir.join("agent.log");
        let port = free_port();
        let stdout = if console {
            Stdio::from(std::fs::File::create(dir.join("console.log")).unwrap())
        } else {
            Stdio::null()
        };
        let child = mcptap_command(wrapper)
            .args(args)
            .arg("--jsonl")
            .arg(&jsonl)
            .args(if console { &[][..] } else { &["--quiet"][..] })
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .envs(envs.iter().copied())
            .stdout(stdout)
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start mcptap");
        let mut agent = Agent {
            child,
            jsonl,
            port,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = agent.child.try_wait().unwrap() {
                panic!("mcptap exited early ({st}):\n{}", agent.log());
            }
            if http_status(port, "/ready") == Some(200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mcptap not ready in 30 s:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(http_status(port, "/health"), Some(200), "/health");
        agent
    }

    /// The agent's pid (the process the wrapper, if any, exec'd into).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The agent's resident set now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The agent's `/metrics` now.
    pub fn metrics(&self) -> String {
        http_get(self.port, "/metrics")
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// SIGTERM, expect exit 0, return every JSON line it wrote.
    pub fn stop(self) -> Records {
        self.stop_timed().0
    }

    /// [`Agent::stop`], with how long the agent took to exit after the signal.
    pub fn stop_timed(mut self) -> (Records, Duration) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let signalled = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "mcptap did not exit within 30 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = signalled.elapsed();
        assert!(
            status.success(),
            "mcptap exited with {status}:\n{}",
            self.log()
        );
        (Records::read(&self.jsonl), took)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every JSON line of an mcptap output.
#[derive(Debug, Clone)]
pub struct Records(pub Vec<Value>);

impl Records {
    /// Parse a JSON lines file; every line must be a JSON object with `kind` and `ts`.
    pub fn read(path: &Path) -> Records {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Records(
            text.lines()
                .map(|l| {
                    let v: Value = serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}"));
                    assert!(v["kind"].is_string() && v["ts"].is_string(), "{l}");
                    v
                })
                .collect(),
        )
    }

    /// Records of one kind.
    pub fn kind(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|r| r["kind"] == kind).collect()
    }

    /// Exchanges whose client is `pid`.
    pub fn exchanges_of_client(&self, pid: u32) -> Vec<&Value> {
        self.kind("exchange")
            .into_iter()
            .filter(|r| r["client"]["pid"] == pid)
            .collect()
    }

    /// Records that mention `pid` as client, server or event subject.
    pub fn mentioning(&self, pid: u32) -> Vec<&Value> {
        self.0
            .iter()
            .filter(|r| r["client"]["pid"] == pid || r["server"]["pid"] == pid || r["pid"] == pid)
            .collect()
    }
}

/// One call as the client measured it.
#[derive(Debug, Deserialize, Clone)]
pub struct Call {
    /// JSON-RPC method.
    pub method: String,
    /// Tool, resource URI or prompt.
    pub target: String,
    /// ok, error or tool_error.
    pub status: String,
    /// JSON-RPC error code when status is error.
    pub code: Option<i64>,
    /// The client's own measurement, in ms.
    pub ms: f64,
}

/// What a client fixture reports.
#[derive(Debug, Deserialize, Clone)]
pub struct ClientRun {
    /// Client process id.
    pub pid: u32,
    /// Server process id (the client knows it over stdio; over HTTP the harness fills it in).
    #[serde(default)]
    pub server_pid: Option<u32>,
    /// Negotiated protocol version, when the client says.
    #[serde(default)]
    pub protocol_version: Option<String>,
    /// HTTP session id, when the client says.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Calls, in order.
    pub calls: Vec<Call>,
    /// Pipe fds the client used for non-MCP JSON and closed first (`--reuse-fds`).
    #[serde(default)]
    pub junk_fds: Vec<i32>,
    /// Pipe fds the client held during its session.
    #[serde(default)]
    pub session_fds: Vec<i32>,
}

/// Run a client fixture command and parse its report.
pub fn run_client(cmd: &mut Command, dir: &Path) -> ClientRun {
    run_report(cmd, dir, "client")
}

/// Run a fixture command `name` to its end (its stderr in `dir/NAME.log`), require success,
/// and parse the JSON report it prints as its last line.
pub fn run_report<T: serde::de::DeserializeOwned>(cmd: &mut Command, dir: &Path, name: &str) -> T {
    let log = dir.join(format!("{name}.log"));
    let out = cmd
        .stderr(std::fs::File::create(&log).unwrap())
        .output()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} failed ({}): {stdout}\n{}",
        out.status,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("{name} printed nothing"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{name} output {line:?}: {e}"))
}

/// A Python fixture (`py_server.py`, `py_client.py`, ...) run by `venv`'s Python with `args`.
pub fn py_fixture(venv: &str, script: &str, args: &[&str]) -> Command {
    let mut c = Command::new(agentic::venv_python(venv));
    c.arg(fixtures().join(script)).args(args);
    c
}

/// A Python SDK client (`venv` is `mcp1` or `mcp2`) driving the fixture server over stdio.
pub fn python_client(venv: &str, server_python: &Path, extra: &[&str]) -> Command {
    let py = peers().join(venv).join("bin/python");
    let mut c = Command::new(&py);
    c.arg(fixtures().join("py_client.py"))
        .args(extra)
        .arg("--")
        .arg(server_python)
        .arg(fixtures().join("py_server.py"));
    c
}

/// The TypeScript SDK client driving @modelcontextprotocol/server-everything over stdio.
pub fn node_client(extra: &[&str]) -> Command {
    let everything = "node_modules/@modelcontextprotocol/server-everything/dist/index.js";
    node_client_of(Path::new("node"), Path::new(everything), extra)
}

/// The TypeScript SDK client, run by `node`, driving `server` (a path from the peers' node
/// tree, or with `--python PY` in `extra` the Python fixture server) over stdio.
pub fn node_client_of(node: &Path, server: &Path, extra: &[&str]) -> Command {
    let node_dir = node_fixture("node_client.mjs");
    let mut c = Command::new(node);
    c.current_dir(&node_dir).arg("node_client.mjs").arg(server);
    c.args(extra);
    c
}

/// Copy the Node fixture `name`, with the module the client fixtures share
/// (`node_calls.mjs`), into the peers' node tree, and return that tree: ESM resolves
/// packages next to the script, so the script runs from there.
pub fn node_fixture(name: &str) -> PathBuf {
    let node_dir = peers().join("node");
    for f in [name, "node_calls.mjs"] {
        std::fs::copy(fixtures().join(f), node_dir.join(f))
            .unwrap_or_else(|e| panic!("copy {f} into {}: {e}", node_dir.display()));
    }
    node_dir
}

fn target_of(r: &Value) -> String {
    for k in ["tool", "resource_uri", "prompt"] {
        if let Some(s) = r[k].as_str() {
            return s.to_string();
        }
    }
    String::new()
}

/// Which durations a record must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sides {
    /// Both ends watched: client and server durations.
    Both,
    /// Only the server watched.
    ServerOnly,
    /// Only the client watched.
    ClientOnly,
}

/// A `py_client.py` held after its session's initialize (`--wait-for`), so that a test can
/// start mcptap in the middle of the session.
pub struct HeldClient {
    child: Child,
    flag: PathBuf,
}

impl HeldClient {
    /// Start the `py_client.py` command `client` makes of the arguments that hold it
    /// (`--wait-for FILE`, which go before a stdio server's `--`), with its files in `dir`;
    /// returns once the client says it is waiting (up to 60 s).
    pub fn start(dir: &Path, client: impl FnOnce(&[&str]) -> Command) -> HeldClient {
        let flag = dir.join("go");
        let log = dir.join("client.log");
        let child = client(&["--wait-for", flag.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        assert!(
            wait_for(60, || std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("waiting")),
            "client never initialized"
        );
        HeldClient { child, flag }
    }

    /// Let the client go on; its report once it exits successfully.
    pub fn release(mut self) -> ClientRun {
        std::fs::write(&self.flag, "").unwrap();
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        assert!(self.child.wait().unwrap().success(), "client failed");
        serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
    }
}

/// A server process started by a test (HTTP servers), stopped when dropped.
pub struct Server {
    child: std::process::Child,
}

impl Server {
    /// Start `cmd` (its stdout to `NAME.out`, its stderr to `NAME.log` in `dir`) and wait
    /// until `ready` says it is listening (up to 30 s).
    pub fn start(cmd: &mut Command, dir: &Path, name: &str, ready: impl Fn() -> bool) -> Server {
        let mut child = cmd
            .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
            .spawn()
            .expect("start server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "server {name} exited ({st}): {}",
                    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "server {name} not listening in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child }
    }

    /// Start `cmd` and wait for 127.0.0.1:`port` to accept connections.
    pub fn on_port(cmd: &mut Command, dir: &Path, name: &str, port: u16) -> Server {
        Self::start(cmd, dir, name, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
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

/// A free TCP port on 127.0.0.1.
pub fn port() -> u16 {
    free_port()
}

/// The exchanges of `run`'s client all belong to one session, reported the way `transport`
/// reports it: the client's own session id when it knows it, any one id otherwise, or none
/// (stateless). Returns the session id.
pub fn check_session(
    records: &Records,
    run: &ClientRun,
    transport: &str,
    stateless: bool,
) -> Option<String> {
    let mine = records.exchanges_of_client(run.pid);
    assert!(!mine.is_empty(), "no exchanges for client {}", run.pid);
    let sessions: std::collections::BTreeSet<String> = mine
        .iter()
        .map(|r| r["session"].as_str().unwrap_or("").to_string())
        .collect();
    for r in &mine {
        assert_eq!(r["transport"], transport, "{r}");
        if transport != "stdio" && transport != "websocket" {
            assert!(r["http_status"].as_u64().is_some(), "no http_status: {r}");
            assert!(r["server_address"].is_string(), "no server_address: {r}");
        }
    }
    if stateless {
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        assert!(
            sessions.contains(""),
            "stateless exchanges carry no session: {sessions:?}"
        );
        return None;
    }
    assert_eq!(sessions.len(), 1, "one session expected: {sessions:?}");
    let s = sessions.into_iter().next().unwrap();
    assert!(!s.is_empty());
    if let Some(id) = &run.session_id {
        assert_eq!(
            s,
            hashed_session(id),
            "the session the client was given, hashed"
        );
        // The id itself is a bearer-like secret: in no record at all.
        for r in &records.0 {
            let text = r.to_string();
            assert!(
                !text.contains(id.as_str()),
                "the raw session id leaked: {text}"
            );
        }
    }
    Some(s)
}

/// How mcptap reports an HTTP session id by default: `sha256:` and the first 16 hex digits
/// of the id's SHA-256 (computed here independently of the agent).
pub fn hashed_session(id: &str) -> String {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(id.as_bytes());
    let hex: String = d[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Every tools/call, resources/read and prompts/get the client made appears exactly once,
/// with the right name, status, code, processes, and a duration no longer than the client's
/// own measurement.
pub fn check_calls(records: &Records, run: &ClientRun, sides: Sides) {
    const CHECKED: [&str; 3] = ["tools/call", "resources/read", "prompts/get"];
    let mut mine: Vec<&Value> = records
        .exchanges_of_client(run.pid)
        .into_iter()
        .filter(|r| CHECKED.contains(&r["method"].as_str().unwrap_or("")))
        .collect();
    // The client made its calls one after another: pair them with the records in the order
    // they started (records come out as exchanges complete, which over HTTP/2 and
    // WebSocket need not be that order).
    mine.sort_by(|a, b| a["ts"].as_str().cmp(&b["ts"].as_str()));
    let mut used = vec![false; mine.len()];
    for call in &run.calls {
        let found = mine.iter().enumerate().find(|(i, r)| {
            !used[*i]
                && r["method"] == call.method.as_str()
                && target_of(r) == call.target
                && r["status"] == call.status.as_str()
        });
        let Some((i, r)) = found else {
            panic!(
                "call {call:?} not reported once;\nreports for client {}: {:#?}",
                run.pid, mine
            );
        };
        used[i] = true;
        if call.status == "error" {
            assert_eq!(r["error_code"].as_i64(), call.code, "{r}");
        }
        if let Some(sp) = run.server_pid {
            assert_eq!(r["server"]["pid"], sp, "server pid in {r}");
        }
        let d = r["duration_ms"]
            .as_f64()
            .unwrap_or_else(|| panic!("no duration: {r}"));
        assert!(
            d <= call.ms + 0.001,
            "reported {d} ms but the client measured {} ms: {r}",
            call.ms
        );
        match sides {
            Sides::Both => {
                let c = r["client_duration_ms"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("no client view: {r}"));
                let s = r["server_duration_ms"]
                    .as_f64()
                    .unwrap_or_else(|| panic!("no server view: {r}"));
                assert!(s <= c, "server {s} ms > client {c} ms: {r}");
                assert_eq!(c, d);
            }
            Sides::ServerOnly => {
                assert!(r.get("client_duration_ms").is_none(), "{r}");
                assert!(r["server_duration_ms"].as_f64().is_some(), "{r}");
            }
            Sides::ClientOnly => {
                assert!(r.get("server_duration_ms").is_none(), "{r}");
                assert_eq!(r["client_duration_ms"].as_f64(), Some(d), "{r}");
            }
        }
    }
    let extra: Vec<_> = mine
        .iter()
        .zip(&used)
        .filter(|(_, u)| !**u)
        .map(|(r, _)| *r)
        .collect();
    assert!(
        extra.is_empty(),
        "records for calls the client never made: {extra:#?}"
    );
}

/// Poll `ok` every 250 ms for up to `secs`; whether it came true (checked once more at the end).
pub fn wait_for(secs: u64, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    ok()
}

/// Debian's Prometheus scraping mcptap on `target_port` every second, with `rules` loaded
/// when given; returns the server (stopped when dropped) and its port.
pub fn start_prometheus(dir: &Path, target_port: u16, rules: Option<&Path>) -> (Server, u16) {
    let prom_port = port();
    let rules = rules
        .map(|r| format!("rule_files:\n  - {}\n", r.display()))
        .unwrap_or_default();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rules}scrape_configs:\n  - job_name: mcptap\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .unwrap();
    let server = Server::on_port(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        dir,
        "prometheus",
        prom_port,
    );
    (server, prom_port)
}

/// A command that runs mcptap, through `wrapper` when given (which gets mcptap's path and
/// arguments after its own, e.g. `capsh --drop=... -- -c 'exec "$0" "$@"'`).
pub fn mcptap_command<S: AsRef<std::ffi::OsStr>>(wrapper: &[S]) -> Command {
    match wrapper.split_first() {
        Some((prog, rest)) => {
            let mut c = Command::new(prog);
            c.args(rest).arg(mcptap_bin());
            c
        }
        None => Command::new(mcptap_bin()),
    }
}

/// `promtool query instant`: the samples (labels as JSON, value), or promtool's complaint.
pub fn promql(port: u16, expr: &str) -> Result<Vec<(String, f64)>, String> {
    let out = Command::new("promtool")
        .args([
            "query",
            "instant",
            "-o",
            "json",
            &format!("http://127.0.0.1:{port}"),
            expr,
        ])
        .output()
        .map_err(|e| format!("cannot run promtool: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("promtool printed no JSON ({e}): {:?}", out.stdout))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let val = s["value"][1]
                .as_str()
                .unwrap_or("NaN")
                .parse()
                .unwrap_or(f64::NAN);
            (s["metric"].to_string(), val)
        })
        .collect())
}

/// [`promql`], failing the test when promtool complains.
pub fn promql_ok(port: u16, expr: &str) -> Vec<(String, f64)> {
    promql(port, expr).unwrap_or_else(|e| panic!("promtool query {expr}: {e}"))
}

/// A self-signed certificate for 127.0.0.1, made by the openssl CLI: (certificate, key).
pub fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// The value of a series of the agent's /metrics once it reaches `at_least`, or the last value
/// seen after 30 s (generous for a loaded machine; a passing run returns once it is reached):
/// the agent publishes its own counters about once a second.
pub fn metric_reaching(agent: &Agent, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let v = prom_value(&agent.metrics(), name, labels);
        if v.is_some_and(|v| v >= at_least) || std::time::Instant::now() > deadline {
            return v.unwrap_or_else(|| panic!("{name} is not exported"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The Python SDK's fixture server (`venv`'s SDK, Streamable HTTP) over HTTPS on `port`, with
/// `cert` and the `key.pem` beside it, and `extra` arguments.
pub fn python_https_server(
    venv: &str,
    dir: &Path,
    port: u16,
    cert: &Path,
    extra: &[&str],
) -> Server {
    let mut c = Command::new(peers().join(venv).join("bin/python"));
    c.arg(fixtures().join("py_server.py"))
        .args(["--transport", "http", "--port", &port.to_string()])
        .arg("--certfile")
        .arg(cert)
        .arg("--keyfile")
        .arg(cert.with_file_name("key.pem"))
        .args(extra);
    Server::on_port(&mut c, dir, "server", port)
}

/// The MCP server of a peer written in the tests (the Go peer, the rustls peer: one
/// command line), over HTTPS on `port`; HTTP/1.1 only with `http1`.
pub fn peer_server(bin: &Path, dir: &Path, port: u16, cert: &Path, http1: bool) -> Server {
    let mut c = Command::new(bin);
    c.args(["server", "-addr", &format!("127.0.0.1:{port}"), "-cert"])
        .arg(cert)
        .arg("-key")
        .arg(cert.with_file_name("key.pem"));
    if http1 {
        c.arg("-http1");
    }
    Server::on_port(&mut c, dir, "server", port)
}

/// The MCP client of a peer written in the tests, calling the server on `port` (five echo
/// calls among the others), trusting `cert`.
pub fn peer_client(bin: &Path, port: u16, cert: &Path, http1: bool) -> Command {
    let mut c = Command::new(bin);
    c.args(["client", "-url", &format!("https://127.0.0.1:{port}/mcp")])
        .args(["-echo", "5", "-ca"])
        .arg(cert);
    if http1 {
        c.arg("-http1");
    }
    c
}

/// Each of the client's exchanges went inside TLS, read from these libraries at (client,
/// server), and neither end's streams had trouble.
pub fn check_tls_libraries(recs: &Records, run: &ClientRun, libs: (&str, &str)) {
    let mine = recs.exchanges_of_client(run.pid);
    assert!(!mine.is_empty());
    for r in mine {
        assert_eq!(r["tls"], true, "{r}");
        assert_eq!(r["client_tls_library"], libs.0, "{r}");
        assert_eq!(r["server_tls_library"], libs.1, "{r}");
    }
    for pid in [run.pid, run.server_pid.expect("server pid")] {
        assert_no_trouble(recs, pid);
    }
}

/// What every test of a peer written in the tests checks of one client run over HTTPS: each
/// call once from both ends, the session, TLS from `libs` at (client, server), the HTTP
/// `version` and the server's `port`.
pub fn check_peer_run(
    recs: &Records,
    run: &ClientRun,
    port: u16,
    version: &str,
    libs: (&str, &str),
) {
    check_calls(recs, run, Sides::Both);
    check_session(recs, run, "http", false);
    check_tls_libraries(recs, run, libs);
    for r in recs.exchanges_of_client(run.pid) {
        assert_eq!(r["http_version"], version, "{r}");
        assert_eq!(r["server_port"], port, "{r}");
    }
}

/// No stream of process `pid` had a hole, carried something that is not a message, or a
/// message over the size limit.
pub fn assert_no_trouble(records: &Records, pid: u32) {
    let trouble: Vec<_> = records
        .mentioning(pid)
        .into_iter()
        .filter(|r| {
            matches!(
                r["event"].as_str(),
                Some("stream_gap" | "stream_corruption" | "message_truncated")
            )
        })
        .collect();
    assert!(trouble.is_empty(), "{trouble:#?}");
}
