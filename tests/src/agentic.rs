//! The agentic layer's test peers: the scripted model server (`model_server.py`) and the
//! agent hosts that talk to it (`agent_loop.py`, `agent_frameworks.py`, `node_agent.mjs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::{Server, fixtures, peers, port};

/// The python of a peers' virtualenv.
pub fn venv_python(venv: &str) -> PathBuf {
    peers().join(venv).join("bin/python")
}

/// The MCP fixture server on stdio, as a command line for a driver's `--mcp-stdio`.
pub fn mcp_stdio() -> String {
    format!(
        "{} {}",
        venv_python("mcp1").display(),
        fixtures().join("py_server.py").display()
    )
}

/// The scripted model server, with its log.
pub struct Model {
    _server: Server,
    /// Its log: one JSON line per request.
    pub log: PathBuf,
    /// Its root URL.
    pub url: String,
}

impl Model {
    /// Serve `scripts` on a free port (HTTPS with `tls`: certificate and key).
    pub fn start(dir: &Path, scripts: Value, tls: Option<(&Path, &Path)>) -> Model {
        let script = dir.join("script.json");
        std::fs::write(&script, json!({ "scripts": scripts }).to_string()).unwrap();
        let log = dir.join("model.jsonl");
        let p = port();
        let mut c = Command::new("python3");
        c.arg(fixtures().join("model_server.py"))
            .arg("--script")
            .arg(&script)
            .arg("--log")
            .arg(&log)
            .args(["--port", &p.to_string()]);
        if let Some((cert, key)) = tls {
            c.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        Model {
            _server: Server::on_port(&mut c, dir, "model", p),
            log,
            url: format!("{scheme}://127.0.0.1:{p}"),
        }
    }

    /// The requests it answered, in order.
    pub fn log(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// What a driver reported: its pid, and per task what the host did.
pub struct Drive {
    /// Its process.
    pub pid: u32,
    /// Its report.
    pub out: Value,
}

/// Run a driver to its end; it prints one JSON line.
pub fn drive(cmd: &mut Command, dir: &Path, name: &str) -> Drive {
    let out: Value = crate::run_report(cmd, dir, name);
    Drive {
        pid: out["pid"].as_u64().expect("pid") as u32,
        out,
    }
}

/// `agent_loop.py` (the client libraries' own tool loop) with `args`.
pub fn agent_loop(model: &Model, args: &[&str], tasks: &[&str]) -> Command {
    let mut c = Command::new(venv_python("agents"));
    c.arg(fixtures().join("agent_loop.py"))
        .args(["--base-url", &model.url, "--mcp-stdio", &mcp_stdio()])
        .args(args);
    for t in tasks {
        c.args(["--task", t]);
    }
    c
}

/// `agent_frameworks.py FRAMEWORK` with `args`.
pub fn framework(model: &Model, which: &str, args: &[&str], tasks: &[&str]) -> Command {
    let mut c = Command::new(venv_python("agents"));
    c.arg(fixtures().join("agent_frameworks.py"))
        .arg(which)
        .args(["--base-url", &model.url])
        .args(args);
    for t in tasks {
        c.args(["--task", t]);
    }
    c
}

/// The Node tool loop (`node_agent.mjs`), run from the peers' npm tree.
pub fn node_agent(model: &Model, args: &[&str], tasks: &[&str]) -> Command {
    let node_dir = peers().join("node");
    std::fs::copy(
        fixtures().join("node_agent.mjs"),
        node_dir.join("node_agent.mjs"),
    )
    .expect("copy node_agent.mjs");
    let mut c = Command::new("node");
    c.current_dir(&node_dir)
        .arg("node_agent.mjs")
        .args(["--base-url", &model.url, "--mcp-stdio", &mcp_stdio()])
        .args(args);
    for t in tasks {
        c.args(["--task", t]);
    }
    c
}
