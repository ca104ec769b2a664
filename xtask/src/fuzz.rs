//! `cargo xtask fuzz`: every cargo-fuzz target in `agent/fuzz`, one after another.
//!
//! Each target starts from its committed seeds (`agent/fuzz/seeds/<target>`, cut from real
//! captures) and the inputs that once broke it (`agent/fuzz/regressions/<target>`), and grows
//! a working corpus under `target/fuzz/corpus/<target>`. A crash stops the run with the path
//! of the input; copy it into `agent/fuzz/regressions/<target>/` and the unit tests replay it
//! from then on (`agent/tests/fuzz_regressions.rs`).

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::{root, step};

/// The targets, in `agent/fuzz/Cargo.toml` and `mcptap::fuzz`.
pub const TARGETS: &[&str] = &[
    "ndjson",
    "http",
    "sse",
    "mcp",
    "record",
    "llm",
    "http2",
    "websocket",
    "message",
];

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(from) else {
        return Ok(());
    };
    for e in entries {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))
            .with_context(|| format!("copying {}", e.path().display()))?;
    }
    Ok(())
}

/// libFuzzer's closing line: "Done 123456 runs in 10 second(s)".
fn runs(stderr: &str) -> Option<u64> {
    let line = stderr.lines().rev().find(|l| l.starts_with("Done "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// How the targets are built.
#[derive(Clone, Copy, PartialEq)]
pub enum Build {
    /// Optimised, with AddressSanitizer: the long runs of `cargo xtask fuzz`.
    Sanitized,
    /// Unoptimised, no sanitizer, overflow checks and debug assertions on: `cargo xtask
    /// test`'s quick pass. It builds in about half the time of the sanitized build on two
    /// cores (which keeps a cold CI run inside its budget), and its overflow checks catch
    /// what a release build wraps silently (they found a record offset that overflowed).
    Checked,
}

impl Build {
    /// cargo fuzz's flags for this build.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Build::Sanitized => &["--release"],
            Build::Checked => &["--dev", "--sanitizer", "none"],
        }
    }

    fn dir(self) -> &'static str {
        match self {
            Build::Sanitized => "build",
            Build::Checked => "build-checked",
        }
    }
}

pub fn fuzz(seconds: u64, only: &[String], build: Build) -> Result<()> {
    crate::bootstrap::all()?;
    crate::bootstrap::cargo_fuzz()?;
    let root = root();
    let work = root.join("target").join("fuzz");
    let fuzz_cmd = || {
        let mut c = Command::new("cargo");
        c.current_dir(root.join("agent"))
            .env_remove("CARGO_TARGET_DIR")
            .env("CARGO_TARGET_DIR", work.join(build.dir()))
            .args(["+nightly", "fuzz"]);
        c
    };
    let targets: Vec<&str> = if only.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in only {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t:?}: the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        only.iter().map(String::as_str).collect()
    };
    step("building the fuzz targets (nightly; the first build takes minutes)");
    crate::run(fuzz_cmd().arg("build").args(build.flags()))?;
    let mut report = Vec::new();
    for t in targets {
        let corpus = work.join("corpus").join(t);
        let artifacts = work.join("artifacts").join(t);
        std::fs::create_dir_all(&corpus)?;
        std::fs::create_dir_all(&artifacts)?;
        let fuzz_dir = root.join("agent").join("fuzz");
        copy_dir(&fuzz_dir.join("seeds").join(t), &corpus)?;
        copy_dir(&fuzz_dir.join("regressions").join(t), &corpus)?;
        step(&format!("fuzzing {t} for {seconds} s"));
        let out = fuzz_cmd()
            .arg("run")
            .args(build.flags())
            .arg(t)
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1")
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped())
            .output()
            .context("cannot start cargo fuzz")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!("{}", tail.join("\n"));
            bail!(
                "fuzz target {t} failed; the input that broke it is in {}: copy it into \
                 agent/fuzz/regressions/{t}/ and fix the bug",
                artifacts.display()
            );
        }
        let n = runs(&stderr).unwrap_or(0);
        let corpus_size = std::fs::read_dir(&corpus)?.count();
        let line =
            format!("{t}: {n} executions in {seconds} s, no crash, corpus {corpus_size} inputs");
        step(&line);
        report.push(line);
    }
    for line in &report {
        step(line);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_libfuzzers_run_count() {
        let err =
            "#1024 pulse\nstat::number_of_executed_units: 99\nDone 123456 runs in 10 second(s)\n";
        assert_eq!(super::runs(err), Some(123_456));
        assert_eq!(super::runs("crashed"), None);
    }
}
