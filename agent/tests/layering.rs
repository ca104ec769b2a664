//! The module tree is the pipeline, one way: a module may use the stages before its own, and
//! the signal model, never a stage after it. This test reads every source file and fails on
//! a `crate::` path that points forward.

use std::path::{Path, PathBuf};

/// The stage a module path (relative to `src`, `::`-separated) belongs to; `None` for the
/// modules outside the pipeline (the composition, the CLI, the driver, shared utilities)
/// and for the signal model, which every stage may use.
fn stage(module: &str) -> Option<u8> {
    const STAGES: &[(&str, u8)] = &[
        ("capture", 1),
        ("conn", 2),
        ("wire", 3),
        ("mcp::transport", 4),
        // The parsed message is what the bindings produce; privacy decides how ids and
        // values are named where they are first read.
        ("mcp::message", 4),
        ("mcp::privacy", 4),
        // The model APIs read beside MCP, from the same HTTP transactions.
        ("llm", 4),
        // Which protocol each stream and HTTP transaction carries: it composes the bindings.
        ("proto", 4),
        ("mcp", 5),
        // Model calls joined to the MCP exchanges they caused: above both.
        ("agentic", 6),
        ("enrich", 7),
        ("output", 8),
    ];
    STAGES
        .iter()
        .find(|(name, _)| module == *name || module.starts_with(&format!("{name}::")))
        .map(|(_, n)| *n)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/mcp/transport/http.rs` → `mcp::transport::http`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let parts: Vec<_> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .filter(|c| c != "mod")
        .collect();
    parts.join("::")
}

/// Whether a file is test code (its imports are not the pipeline's).
fn is_test(module: &str) -> bool {
    module.ends_with("tests") || module.contains("::tests::") || module.ends_with("_tests")
}

/// Every `crate::a::b` path in `text` outside `#[cfg(test)]` modules, as `a::b`.
fn crate_paths(text: &str) -> Vec<String> {
    let body = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or(text);
    let mut out = Vec::new();
    for line in body.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + 7..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(path.trim_end_matches(':').to_string());
        }
    }
    out
}

#[test]
fn every_import_points_back_up_the_pipeline() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut forward = Vec::new();
    for f in &files {
        let module = module_of(&src, f);
        let Some(own) = stage(&module) else {
            continue;
        };
        if is_test(&module) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for path in crate_paths(&text) {
            if let Some(to) = stage(&path)
                && to > own
            {
                forward.push(format!(
                    "{module} (stage {own}) uses crate::{path} (stage {to})"
                ));
            }
        }
    }
    assert!(files.len() > 40, "found only {} files", files.len());
    assert!(
        forward.is_empty(),
        "imports pointing forward:\n{}",
        forward.join("\n")
    );
}

#[test]
fn the_rule_is_checked_against_something() {
    // The parser finds paths, and the stages order them.
    let found = crate_paths(
        "use crate::mcp::message::Message;\n// crate::output\nlet x = crate::output::jsonl::encode(&s);",
    );
    assert_eq!(found, ["mcp::message::Message", "output::jsonl::encode"]);
    assert!(stage("output::jsonl") > stage("mcp::transport::http"));
    assert_eq!(stage("signal::process"), None);
    assert_eq!(stage("mcp::observe"), Some(5));
}
