//! The real MCP peers the end-to-end tests drive, installed from PyPI and npm into a cache
//! under `target/peers`. Versions are pinned so that a test run means the same thing on every
//! machine; a stamp file per peer makes reinstalling a no-op.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::{root, run, step};

/// Python virtualenvs: (directory, pip requirement).
const PYTHON: &[(&str, &str)] = &[
    // The 1.x line: FastMCP, initialize handshake.
    ("mcp1", "mcp[cli]==1.30.0"),
    // The 2.x line: MCPServer, protocol 2026-07-28 without initialize.
    ("mcp2", "mcp==2.3.0"),
    // HTTP/2 (hypercorn serving, httpx with h2 calling) and WebSocket (the 1.x SDK's
    // websocket transport on `websockets`, permessage-deflate by default).
    (
        "h2ws",
        "mcp[cli]==1.30.0 hypercorn==0.18.0 h2==4.4.1 httpx[http2]==0.29.0 websockets==17.4",
    ),
    // TLS that is not OpenSSL (pure Python), for the test of TLS mcptap cannot decrypt.
    ("tlslite", "tlslite-ng==0.8.2"),
    // The agentic layer's peers: two agent frameworks and the model APIs' client libraries
    // (pointed at the tests' scripted model server). pydantic-ai's MCP client is FastMCP's,
    // which needs mcp 2.3: the one mcp both frameworks accept.
    (
        "agents",
        "openai-agents==0.24.0 pydantic-ai-slim[openai,anthropic,mcp]==2.78.0 \
         anthropic==2.17.0 openai==3.63.0 google-genai==3.6.1 mcp==2.3.0 fastmcp-slim==4.2.3",
    ),
];

/// npm packages installed together in `node/`.
const NPM: &[&str] = &[
    "@modelcontextprotocol/sdk@1.32.2",
    "@modelcontextprotocol/server-everything@2026.8.31",
    // A clean server with roots: the security tests' no-findings baseline.
    "@modelcontextprotocol/server-filesystem@2026.8.31",
    // The model APIs' Node client libraries (openai 7 declares node >= 22, and runs on 20).
    "openai@7.60.0",
    "@anthropic-ai/sdk@1.17.0",
    // A WebSocket for the SDK's WebSocketClientTransport (Node 20 has no global one).
    "ws@8.23.1",
    // Bun (its package carries the binary): BoringSSL linked in and stripped.
    "bun@1.4.4",
];

pub fn stamped(dir: &Path, spec: &str) -> bool {
    std::fs::read_to_string(dir.join(".mcptap-stamp")).is_ok_and(|s| s == spec)
}

fn stamp(dir: &Path, spec: &str) -> Result<()> {
    std::fs::write(dir.join(".mcptap-stamp"), spec).context("writing the peer stamp")
}

/// A fresh virtualenv in `dir` with `req` (requirements separated by spaces) pip-installed,
/// stamped so that the next run skips it.
pub fn python_venv(dir: &Path, req: &str) -> Result<()> {
    step(&format!("installing {req} into {}", dir.display()));
    let _ = std::fs::remove_dir_all(dir);
    run(Command::new("python3").args(["-m", "venv"]).arg(dir)).context("python3 -m venv failed")?;
    run(Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(req.split_whitespace()))
    .with_context(|| format!("pip install {req}"))?;
    stamp(dir, req)
}

/// Debian packages the tests use: (a command it provides, the package). Prometheus (2.42,
/// with promtool): the telemetry tests scrape mcptap with it; gnutls-bin: `gnutls-cli`, the
/// GnuTLS client of the TLS tests.
/// golang-go: Go 1.19, which builds the Go peers (tests/fixtures/go_mcp).
const DEBIAN: &[(&str, &str)] = &[
    ("promtool", "prometheus"),
    ("gnutls-cli", "gnutls-bin"),
    ("go", "golang-go"),
];

/// Install the Debian packages whose commands are missing.
fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN
        .iter()
        .filter(|(cmd, _)| {
            // `go version` is how Go says it; the others take --version.
            let arg = if *cmd == "go" { "version" } else { "--version" };
            !Command::new(cmd)
                .arg(arg)
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        step("ok: the Debian packages the tests use are installed");
        return Ok(());
    }
    step(&format!("installing Debian's {}", missing.join(" ")));
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        run(Command::new("apt-get").arg("update"))?;
        install().with_context(|| format!("apt-get could not install {}", missing.join(" ")))?;
    }
    Ok(())
}

/// The Go peer (tests/fixtures/go_mcp: an MCP server and client on net/http and crypto/tls)
/// built by Debian's Go, standard library only, as the TLS tests and the Go unit tests use it:
/// (name, `go build` arguments).
const GO_BUILDS: &[(&str, &[&str])] = &[
    ("mcpgo", &[]),
    ("mcpgo-stripped", &["-ldflags=-s -w"]),
    ("mcpgo-pie", &["-buildmode=pie"]),
    ("mcpgo-pie-stripped", &["-buildmode=pie", "-ldflags=-s -w"]),
];

/// Build the Go peer into `dir`, unless its sources and Go are what the stamp says.
fn go_peers(dir: &Path) -> Result<()> {
    let src = root().join("tests/fixtures/go_mcp");
    let version = Command::new("go")
        .arg("version")
        .output()
        .context("go version")?;
    let mut spec = String::from_utf8_lossy(&version.stdout).into_owned();
    for f in ["go.mod", "main.go"] {
        spec.push_str(&std::fs::read_to_string(src.join(f)).context("reading the Go peer")?);
    }
    // A digest of Go's version and the sources (a new toolchain may only rebuild them).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&spec, &mut h);
    let spec = format!("{:016x}", std::hash::Hasher::finish(&h));
    if stamped(dir, &spec) {
        step(&format!("ok: the Go peer in {}", dir.display()));
        return Ok(());
    }
    step(&format!("building the Go peer into {}", dir.display()));
    std::fs::create_dir_all(dir)?;
    for (name, args) in GO_BUILDS {
        run(Command::new("go")
            .current_dir(&src)
            .args(["build", "-o"])
            .arg(dir.join(name))
            .args(*args)
            .arg(".")
            // No module proxy is reachable here, and the peer needs none.
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath")))
        .with_context(|| format!("go build of {name}"))?;
    }
    stamp(dir, &spec)
}

/// Install every peer; returns the cache directory.
pub fn install() -> Result<PathBuf> {
    debian_packages()?;
    let base = root().join("target").join("peers");
    std::fs::create_dir_all(&base)?;
    for (name, req) in PYTHON {
        let dir = base.join(name);
        if stamped(&dir, req) {
            step(&format!("ok: {req} in {}", dir.display()));
            continue;
        }
        python_venv(&dir, req)?;
    }
    go_peers(&base.join("go"))?;
    let node = base.join("node");
    let spec = NPM.join(" ");
    if stamped(&node, &spec) {
        step(&format!("ok: {spec} in {}", node.display()));
    } else {
        step(&format!("installing {spec} into {}", node.display()));
        let _ = std::fs::remove_dir_all(&node);
        std::fs::create_dir_all(&node)?;
        std::fs::write(node.join("package.json"), "{\"private\":true}\n")?;
        run(Command::new("npm")
            .current_dir(&node)
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .args(NPM))
        .context("npm install of the MCP peers failed")?;
        stamp(&node, &spec)?;
    }
    Ok(base)
}
