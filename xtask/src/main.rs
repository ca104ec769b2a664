//! mcptap's tasks: `cargo xtask <task>`.
//!
//! - `bootstrap`: install and check the toolchain and kernel mounts (idempotent).
//! - `run [-- ARGS]`: bootstrap, build (release) and run mcptap watching the host.
//! - `test`: bootstrap, install the real MCP peers, build, and run every test.
//! - `peers`: install the real MCP peers the end-to-end tests drive.
//! - `lint`: rustfmt check and clippy (the eBPF crate separately, on nightly).
//! - `bench [--smoke] [--baseline REV] [--only LIST]`: the benchmark suite; rewrites
//!   BENCHMARKS.md (a smoke or compared run writes to target/ instead; a partial run writes
//!   target/bench-partial.md and replaces its own sections in BENCHMARKS.md, marked).
//! - `fuzz [--seconds N] [TARGET...]`: every cargo-fuzz target, N seconds each.
//! - `soak [--minutes N]`: steady real MCP load; RSS, loss and accounting over time.

mod bench;
mod bootstrap;
mod deploy;
mod fuzz;
mod peers;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "mcptap's build, run, test and bootstrap tasks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install and check what building and running mcptap needs: LLVM 22, bpf-linker,
    /// nightly rust-src, and the tracefs, debugfs, bpffs and securityfs mounts.
    Bootstrap,
    /// Bootstrap, build mcptap (release) and run it watching the host. Arguments after `--`
    /// go to mcptap, e.g. `cargo xtask run -- --comm node --jsonl -`.
    Run {
        /// Arguments for mcptap.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Bootstrap, install the MCP peers, build, and run every test (unit and end-to-end).
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Install the real MCP peers used by the end-to-end tests into target/peers.
    Peers,
    /// Check formatting and run clippy on every crate.
    Lint,
    /// Measure mcptap (cost to unwatched processes, overhead on MCP traffic, capacity,
    /// pipeline speed, footprint) and rewrite BENCHMARKS.md.
    Bench {
        /// A quick pass that only checks the suite runs; writes target/bench-smoke.md.
        #[arg(long)]
        smoke: bool,
        /// Also measure the agent of git revision REV, interleaved with this tree's in the
        /// same run, and add a "Before and after" section (ratios current/baseline, verdicts).
        /// REV is checked out as a worktree under target/baseline/<short-rev>/src (reused
        /// when there) and built there with its own `cargo build --release -p mcptap`; both
        /// binaries are release builds, with --smoke too. With --smoke or --only the report
        /// goes to target/bench-baseline.md, never to BENCHMARKS.md.
        #[arg(long, value_name = "REV")]
        baseline: Option<String>,
        /// Only these sections, comma-separated (names or numbers 1-10), e.g.
        /// `--only capacity,replay` or `--only tls-calls,transports`; the report goes to
        /// target/bench-partial.md and replaces those sections in BENCHMARKS.md, each marked
        /// with its command, commit and machine (with --baseline: bench-baseline.md only).
        #[arg(long, value_name = "LIST", value_delimiter = ',')]
        only: Vec<bench::Section>,
    },
    /// Steady real MCP load for N minutes with mcptap watching: RSS over time, lost events,
    /// every call accounted for; writes SOAK.md (committed beside BENCHMARKS.md).
    Soak {
        /// Minutes of load.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
    },
    /// Fuzz the parsers (ndjson, http, sse, mcp, record, llm, http2, websocket) with cargo fuzz, N seconds each,
    /// from the seeds in agent/fuzz/seeds; a crash stops with the input that caused it.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets.
        targets: Vec<String>,
    },
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cargo that runs us.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Run a command, failing with its name when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// Print a step.
pub fn step(msg: &str) {
    eprintln!("xtask: {msg}");
}

fn build(release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--package", "mcptap"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("mcptap"))
}

/// Seconds per fuzz target in `cargo xtask test`.
const FUZZ_SMOKE_SECONDS: u64 = 10;

/// What the tests need from the machine that no installer here provides: the kernel's BTF
/// (`/sys/kernel/btf/vmlinux`: the agent resolves kernel structure layouts from it, and
/// every end-to-end test starts the agent) and OpenSSL 3's `libssl.so.3` in the system
/// library directories (the TLS capture's unit and end-to-end tests). Some unit tests skip
/// themselves without these; under `cargo xtask test` a missing one is a failure instead.
fn test_prerequisites() -> Result<()> {
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    let size = std::fs::metadata(btf).map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        bail!(
            "{} is missing or empty: this kernel exposes no BTF (it needs CONFIG_DEBUG_INFO_BTF=y). \
             The agent cannot start without it, so neither can the end-to-end tests; run the tests \
             on a kernel built with BTF",
            btf.display()
        );
    }
    step(&format!(
        "ok: kernel BTF at {} ({size} bytes)",
        btf.display()
    ));
    // The directories the agent searches (agent/src/capture/tls.rs, system_libraries).
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    let dirs = [
        "/lib".to_string(),
        "/lib64".into(),
        "/usr/lib".into(),
        "/usr/lib64".into(),
        "/usr/local/lib".into(),
        "/usr/local/lib64".into(),
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
    ];
    let ssl = dirs.iter().find_map(|d| {
        std::fs::read_dir(d).ok()?.flatten().find_map(|e| {
            let p = e.path();
            (e.file_name().to_string_lossy().starts_with("libssl.so.3") && p.is_file()).then_some(p)
        })
    });
    match ssl {
        Some(p) => step(&format!("ok: OpenSSL 3 at {}", p.display())),
        None => bail!(
            "no libssl.so.3 in {}: the TLS capture tests need OpenSSL 3 \
             (Debian: `apt-get install libssl3`)",
            dirs.join(", ")
        ),
    }
    Ok(())
}

fn test(filter: Option<String>) -> Result<()> {
    bootstrap::all()?;
    test_prerequisites()?;
    let peers = peers::install()?;
    step("checking the deployment files");
    deploy::check()?;
    step("checking formatting");
    run(cargo().args(["fmt", "--all", "--check"]))
        .context("code is not formatted: run `cargo fmt --all`")?;
    let bin = build(false)?;
    step("running unit tests");
    let mut unit = cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "mcptap-e2e",
        "--exclude",
        "mcptap-ebpf",
    ]);
    // The Go unit tests read the Go peer's builds.
    unit.env("MCPTAP_PEERS", &peers);
    if let Some(f) = &filter {
        unit.arg(f);
    }
    run(&mut unit)?;
    step("running end-to-end tests (root, real kernel, real MCP peers)");
    let mut e2e = cargo();
    e2e.args(["test", "--package", "mcptap-e2e"])
        .env("MCPTAP_BIN", &bin)
        .env("MCPTAP_PEERS", &peers)
        .arg("--");
    if let Some(f) = &filter {
        e2e.arg(f);
    }
    // One agent at a time: each test starts its own mcptap watching the whole host.
    e2e.arg("--test-threads=1");
    run(&mut e2e)?;
    if filter.is_none() {
        // Short passes of the long-running tools, so that they cannot rot.
        step("fuzzing every target briefly (the long runs are `cargo xtask fuzz`)");
        fuzz::fuzz(FUZZ_SMOKE_SECONDS, &[], fuzz::Build::Checked)?;
        step("benchmark smoke run (the full suite is `cargo xtask bench`)");
        bench::bench(&bench::Options::smoke())?;
    }
    step("all tests passed");
    Ok(())
}

fn lint() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "mcptap-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Every module's docs build without a broken or private link.
    run(cargo().env("RUSTDOCFLAGS", "-D warnings").args([
        "doc",
        "--package",
        "mcptap",
        "--no-deps",
    ]))?;
    // The no_std eBPF crate only builds for the BPF target, on nightly.
    run(Command::new("rustup")
        .current_dir(root().join("agent-ebpf"))
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "mcptap-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--bins",
            "--",
            "-D",
            "warnings",
        ]))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.task {
        Task::Bootstrap => bootstrap::all(),
        Task::Run { args } => bootstrap::all().and_then(|()| {
            let bin = build(true)?;
            step(&format!("running {} {}", bin.display(), args.join(" ")));
            let mut child = Command::new(bin)
                .args(&args)
                .spawn()
                .context("cannot start mcptap")?;
            // Ctrl-C reaches mcptap too; it flushes, detaches and exits 0. Wait for that
            // instead of dying first.
            // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
            unsafe {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGTERM, libc::SIG_IGN);
            }
            let status = child.wait().context("waiting for mcptap")?;
            if !status.success() {
                bail!("mcptap exited with {status}");
            }
            Ok(())
        }),
        Task::Test { filter } => test(filter),
        Task::Peers => peers::install().map(|_| ()),
        Task::Lint => lint(),
        Task::Bench {
            smoke,
            baseline,
            only,
        } => bench::bench(&bench::Options {
            smoke,
            baseline,
            only,
        }),
        Task::Fuzz { seconds, targets } => fuzz::fuzz(seconds, &targets, fuzz::Build::Sanitized),
        Task::Soak { minutes } => bench::soak(minutes),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
