//! Idempotent set-up of what building and running mcptap needs. Every check says what it
//! found; every install says what it does. Run as often as you like.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{run, step};

/// LLVM major version shared by bpf-linker and the nightly rustc that builds the eBPF crate.
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";
const NIGHTLY: &str = "nightly";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Everything, in order.
pub fn all() -> Result<()> {
    llvm_dev()?;
    nightly()?;
    bpf_linker()?;
    mounts()?;
    Ok(())
}

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// cargo-fuzz, for `cargo xtask fuzz` (and the short pass `cargo xtask test` runs).
pub fn cargo_fuzz() -> Result<()> {
    if let Some(v) = output(Command::new("cargo-fuzz").arg("--version"))
        && v.contains(CARGO_FUZZ_VERSION)
    {
        step(&format!("ok: {}", v.trim()));
        return Ok(());
    }
    step(&format!(
        "installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 1 minute)"
    ));
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args([
            "install",
            "--locked",
            "--force",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
        ]),
    )
    .context("installing cargo-fuzz failed")
}

fn llvm_dev() -> Result<()> {
    let pkg = format!("llvm-{LLVM_MAJOR}-dev");
    let installed = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", &pkg]))
        .is_some_and(|s| s.contains("install ok installed"));
    if installed {
        step(&format!("ok: {pkg} is installed"));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "{pkg} is missing and installing it needs root: run `sudo apt-get install -y {pkg}` or rerun as root"
        );
    }
    step(&format!("installing {pkg} (about 750 MB) with apt-get"));
    let install = || {
        run(Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", &pkg])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    if install().is_err() {
        // A fresh machine has stale or no package lists.
        run(Command::new("apt-get").args(["update"]))?;
        install().with_context(|| format!("apt-get could not install {pkg}"))?;
    }
    Ok(())
}

fn nightly() -> Result<()> {
    let vv = output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-vV"])).with_context(|| {
        format!("the `{NIGHTLY}` toolchain is missing: the eBPF crate builds with it (`rustup toolchain install {NIGHTLY}`; its LLVM must be {LLVM_MAJOR})")
    })?;
    let major: u32 = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .context("cannot read the nightly rustc's LLVM version")?;
    if major != LLVM_MAJOR {
        bail!(
            "the {NIGHTLY} rustc uses LLVM {major}, but bpf-linker here is built against LLVM {LLVM_MAJOR}; \
             bitcode from a newer LLVM does not link (\"Invalid record\"). Use a nightly with LLVM {LLVM_MAJOR} \
             (rustc 1.97/1.98) as `{NIGHTLY}`"
        );
    }
    step(&format!("ok: {NIGHTLY} rustc uses LLVM {major}"));
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))
    .unwrap_or_default();
    if comps.lines().any(|l| l.starts_with("rust-src")) {
        step(&format!("ok: {NIGHTLY} has rust-src"));
    } else {
        step(&format!(
            "adding rust-src to {NIGHTLY} (build-std needs it)"
        ));
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let llvm_bin = format!("/usr/lib/llvm-{LLVM_MAJOR}/bin");
    if let Some(v) = output(Command::new("bpf-linker").arg("--version")) {
        let path =
            output(Command::new("sh").args(["-c", "command -v bpf-linker"])).unwrap_or_default();
        let libs = output(Command::new("ldd").arg(path.trim())).unwrap_or_default();
        let want = format!("libLLVM.so.{LLVM_MAJOR}");
        let want_alt = format!("libLLVM-{LLVM_MAJOR}");
        if libs.contains(&want) || libs.contains(&want_alt) {
            step(&format!(
                "ok: {} linked against LLVM {LLVM_MAJOR}",
                v.trim()
            ));
            return Ok(());
        }
        step(&format!(
            "{} is not linked against LLVM {LLVM_MAJOR}; rebuilding it",
            v.trim()
        ));
    } else {
        step(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about 2 minutes)"
        ));
    }
    let path = format!("{llvm_bin}:{}", std::env::var("PATH").unwrap_or_default());
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "--locked",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ])
            // /usr/bin/llvm-config is LLVM 14 here; the LLVM 22 one must come first.
            .env("PATH", path),
    )
    .context("building bpf-linker failed (it needs llvm-22-dev)")?;
    if output(Command::new("bpf-linker").arg("--version")).is_none() {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// Filesystems the agent and its tools expect: tracefs (tracepoints), debugfs (older tracefs
/// location), bpffs (pinning), securityfs (the lockdown mode report).
fn mounts() -> Result<()> {
    let wanted = [
        ("tracefs", "/sys/kernel/tracing"),
        ("debugfs", "/sys/kernel/debug"),
        ("bpf", "/sys/fs/bpf"),
        ("securityfs", "/sys/kernel/security"),
    ];
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    for (fs, dir) in wanted {
        let mounted = mounts.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, d, t) = (f.next(), f.next(), f.next());
            d == Some(dir) && t == Some(fs)
        });
        if mounted {
            step(&format!("ok: {fs} mounted at {dir}"));
            continue;
        }
        if !is_root() {
            bail!(
                "{fs} is not mounted at {dir} and mounting it needs root: `sudo mount -t {fs} {fs} {dir}`"
            );
        }
        step(&format!("mounting {fs} at {dir}"));
        run(Command::new("mount").args(["-t", fs, fs, dir]))
            .with_context(|| format!("mounting {fs} at {dir}"))?;
    }
    Ok(())
}
