//! `--baseline REV`: an older revision's agent, built from its own tree, measured beside this
//! tree's in the same run. The tree is a git worktree under `target/baseline/<short-rev>/src`
//! (made once, reused), built with its own `cargo build --release -p mcptap` (its build.rs
//! builds its own kernel programs) into `target/baseline/<short-rev>/target`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::env::Env;
use super::stats::TOLERANCE;
use super::{capacity, footprint, latency, replay, unwatched};
use crate::{root, run, step};

/// The baseline's agent.
pub struct Baseline {
    /// The short revision, as the directories and the report name it.
    pub short: String,
    /// Its commit's subject line.
    pub subject: String,
    /// Its release `mcptap`.
    pub mcptap: PathBuf,
}

/// `git ARGS` in `dir`: its trimmed stdout, or an error with its stderr.
fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A worktree of `full` (a commit hash) at `src`: made if missing, reused if it is there
/// already, moved back to `full` if it is at another commit.
fn worktree(src: &Path, full: &str) -> Result<()> {
    if src.join(".git").exists() {
        let head = git(src, &["rev-parse", "HEAD"])?;
        if head != full {
            step(&format!(
                "baseline: {} is at {head}; checking out {full}",
                src.display()
            ));
            git(src, &["checkout", "--quiet", "--detach", full])?;
        } else {
            step(&format!("baseline: reusing the tree at {}", src.display()));
        }
        return Ok(());
    }
    if src.exists() {
        bail!(
            "{} exists but is not a git worktree: remove it and run again",
            src.display()
        );
    }
    step(&format!(
        "baseline: adding a worktree of {full} at {}",
        src.display()
    ));
    let parent = src.parent().expect("a parent");
    std::fs::create_dir_all(parent)?;
    // --force: the path may still be registered from a tree deleted by hand.
    let src_str = src.to_str().context("a UTF-8 path")?;
    git(
        &root(),
        &[
            "worktree", "add", "--quiet", "--detach", "--force", src_str, full,
        ],
    )?;
    Ok(())
}

/// Make (or reuse) the baseline's tree and build its release agent.
pub fn prepare(rev: &str) -> Result<Baseline> {
    let full = git(
        &root(),
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .with_context(|| format!("--baseline {rev} is not a commit here"))?;
    let short = git(&root(), &["rev-parse", "--short", &full])?;
    let subject = git(&root(), &["log", "-1", "--format=%s", &full])?;
    let dir = root().join("target").join("baseline").join(&short);
    let src = dir.join("src");
    worktree(&src, &full)?;
    let target = dir.join("target");
    step(&format!(
        "baseline: building {short}'s release mcptap (its own build.rs, into {})",
        target.display()
    ));
    run(crate::cargo()
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--release", "--package", "mcptap"]))
    .with_context(|| format!("building the baseline {short}"))?;
    let mcptap = target.join("release").join("mcptap");
    if !mcptap.is_file() {
        bail!("the baseline's build left no {}", mcptap.display());
    }
    Ok(Baseline {
        short,
        subject,
        mcptap,
    })
}

impl Baseline {
    /// The environment that runs the baseline's agent: `current`'s peers, its own scratch
    /// directory.
    pub fn env(&self, current: &Env) -> Result<Env> {
        let dir = current.dir.join(format!("baseline-{}", self.short));
        std::fs::create_dir_all(&dir)?;
        Ok(Env {
            mcptap: self.mcptap.clone(),
            peer: current.peer.clone(),
            rustls_peer: current.rustls_peer.clone(),
            peers: current.peers.clone(),
            dir,
        })
    }
}

/// The sections' before/after figures (each present when its section ran).
#[derive(Default)]
pub struct Compared {
    pub unwatched: Option<unwatched::Compared>,
    pub latency: Vec<latency::Compared>,
    pub capacity: Vec<capacity::Compared>,
    pub replay: Option<replay::Compared>,
    pub footprint: Option<footprint::Compared>,
}

/// The report's "Before and after" section.
pub fn write_section(md: &mut String, b: &Baseline, c: &Compared) {
    let _ = writeln!(md, "\n## Before and after\n");
    let _ = writeln!(
        md,
        "Baseline: `{}` ({}), built from its own tree (target/baseline/{}/src) with its own `cargo build --release -p mcptap`; current: this tree's release build. The same `bench_peer` and MCP peers drive both, in the same run, and each pair of runs alternates which binary goes first. Ratios are current/baseline (median [quartiles] where there are rounds). Verdict: *not worse* when the quartile on the worse side is within {:.0}% of no change (or better), *worse* when even the other quartile is past no change on the worse side, *inconclusive* when the range straddles no change. A single figure (no rounds) gets a verdict by the same rule, but nothing measures its noise.",
        b.short,
        b.subject.replace('|', "\\|"),
        b.short,
        TOLERANCE * 100.0
    );
    if let Some(u) = &c.unwatched {
        unwatched::write_compared(md, u);
    }
    if !c.latency.is_empty() {
        latency::write_compared(md, &c.latency);
    }
    if !c.capacity.is_empty() {
        capacity::write_compared(md, &c.capacity);
    }
    if let Some(r) = &c.replay {
        replay::write_compared(md, r);
    }
    if let Some(f) = &c.footprint {
        footprint::write_compared(md, f);
    }
}
