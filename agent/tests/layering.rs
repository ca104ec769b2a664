//! The module tree is the pipeline, one way: a module may use the stages before its own, and
//! the signal model, never a stage after it. The signal model may use only what capture says
//! of processes and clocks; no stage (and not the signal model) may use the modules that
//! compose the pipeline (`cli`, `pipeline`, `run`, `fuzz`). This test reads every source file
//! and fails on a path that breaks a rule: `crate::` paths, grouped imports
//! (`use crate::{a::b, c::{d, e}}`) and `super::` paths, resolved against the file's module.

use std::path::{Path, PathBuf};

/// Where a module stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// A pipeline stage, by its number.
    Stage(u8),
    /// The signal model: every stage uses it; it uses only capture's facts.
    Signal,
    /// The composition (command line, pipeline, driver, fuzz bodies): uses everything, used
    /// by no stage.
    Composition,
    /// Shared utilities at the crate's root (`bounded`, the hash map types).
    Shared,
}

/// The place of a module path (relative to `src`, `::`-separated).
fn place(module: &str) -> Place {
    const STAGES: &[(&str, u8)] = &[
        ("capture", 1),
        ("conn", 2),
        ("wire", 3),
        // What the security rules match in text: pure, used by the MCP and model API readers.
        ("detect", 3),
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
        // The processes that serve MCP, followed from the signals that name them.
        ("health", 6),
        // Findings that need more than one message: new executables, leaks to a model.
        ("security", 6),
        ("enrich", 7),
        ("output", 8),
    ];
    let within = |name: &str| module == name || module.starts_with(&format!("{name}::"));
    if let Some((_, n)) = STAGES.iter().find(|(name, _)| within(name)) {
        return Place::Stage(*n);
    }
    if within("signal") {
        Place::Signal
    } else if ["cli", "pipeline", "run", "fuzz", "main", "lib"]
        .iter()
        .any(|m| within(m))
    {
        Place::Composition
    } else {
        Place::Shared
    }
}

/// Why `from` may not use `to`, if it may not.
fn breaks(from: &str, to: &str) -> Option<String> {
    match (place(from), place(to)) {
        (Place::Stage(a), Place::Stage(b)) if b > a => {
            Some(format!("stage {a} uses stage {b}: it points forward"))
        }
        (Place::Stage(_) | Place::Signal | Place::Shared, Place::Composition) => {
            Some("only the composition may use the composition".into())
        }
        (Place::Signal, Place::Stage(b)) if b != 1 => Some(format!(
            "the signal model uses stage {b}: it may use only capture's facts"
        )),
        (Place::Shared, Place::Stage(_) | Place::Signal) => {
            Some("a shared utility uses a stage".into())
        }
        _ => None,
    }
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

/// The code of `text` outside its `#[cfg(test)] mod tests` and without comments.
fn code(text: &str) -> String {
    let body = text
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or(text);
    body.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The paths of a use tree starting at `s` (after its `prefix::`): `a::b`, `a::{b, c::d}`,
/// `a::*`; each as `prefix::...`, with how many bytes of `s` the tree took.
fn tree(s: &str, prefix: &str) -> (Vec<String>, usize) {
    let s_trim = s.trim_start();
    let skipped = s.len() - s_trim.len();
    if let Some(rest) = s_trim.strip_prefix('{') {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            let r = &rest[at..];
            let r_trim = r.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
            at += r.len() - r_trim.len();
            if r_trim.starts_with('}') || r_trim.is_empty() {
                return (out, skipped + 1 + at + 1);
            }
            let (paths, used) = tree(r_trim, prefix);
            if used == 0 {
                return (out, skipped + 1 + at);
            }
            out.extend(paths);
            at += used;
        }
    }
    let seg: String = s_trim.chars().take_while(|c| is_ident(*c)).collect();
    if seg.is_empty() {
        // `*`, or a bare prefix.
        return (
            vec![prefix.to_string()],
            skipped + s_trim.starts_with('*') as usize,
        );
    }
    let path = if prefix.is_empty() {
        seg.clone()
    } else {
        format!("{prefix}::{seg}")
    };
    let after = &s_trim[seg.len()..];
    match after.strip_prefix("::") {
        Some(more) => {
            let (paths, used) = tree(more, &path);
            (paths, skipped + seg.len() + 2 + used)
        }
        None => (vec![path], skipped + seg.len()),
    }
}

/// The module a `super::` path of `module` starts from, `n` levels up.
fn up(module: &str, n: usize) -> String {
    let mut parts: Vec<&str> = module.split("::").collect();
    for _ in 0..n {
        parts.pop();
    }
    parts.join("::")
}

/// Every module path `text` (the code of `module`) names: `crate::` paths and `super::`
/// paths resolved, grouped imports expanded.
fn paths(module: &str, text: &str) -> Vec<String> {
    let code = code(text);
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while at < code.len() {
        let rest = &code[at..];
        let boundary = at == 0 || !is_ident(bytes[at - 1] as char);
        if boundary && rest.starts_with("crate::") {
            let (found, used) = tree(&rest[7..], "");
            out.extend(found.into_iter().filter(|p| !p.is_empty()));
            at += 7 + used.max(1);
        } else if boundary && rest.starts_with("super::") {
            let mut n = 0;
            let mut r = rest;
            while let Some(more) = r.strip_prefix("super::") {
                n += 1;
                r = more;
            }
            let base = up(module, n);
            let (found, used) = tree(r, &base);
            out.extend(found.into_iter().filter(|p| !p.is_empty()));
            at += rest.len() - r.len() + used.max(1);
        } else {
            at += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}

#[test]
fn every_import_points_back_up_the_pipeline() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for f in &files {
        let module = module_of(&src, f);
        if is_test(&module) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        for path in paths(&module, &text) {
            if let Some(why) = breaks(&module, &path) {
                wrong.push(format!("{module} uses crate::{path}: {why}"));
            }
        }
    }
    assert!(files.len() > 40, "found only {} files", files.len());
    assert!(
        wrong.is_empty(),
        "imports against the pipeline's order:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_rules_are_checked_against_something() {
    // Plain, grouped and nested imports, and paths inside code.
    let found = paths(
        "wire::http1",
        "use crate::mcp::message::Message;\n// crate::output\nlet x = crate::output::jsonl::encode(&s);\nuse crate::{conn::{fd, stream::Gap}, capture::*};",
    );
    assert_eq!(
        found,
        [
            "mcp::message::Message",
            "output::jsonl::encode",
            "conn::fd",
            "conn::stream::Gap",
            "capture"
        ]
    );
    // `super::` resolves against the file's module.
    assert_eq!(
        paths(
            "mcp::transport::http",
            "use super::{route::View, At};\nuse super::super::observe;"
        ),
        [
            "mcp::transport::route::View",
            "mcp::transport::At",
            "mcp::observe"
        ]
    );
    // The rules.
    assert!(breaks("wire::http1", "output::jsonl").is_some());
    assert!(breaks("output::jsonl", "wire::http1").is_none());
    assert!(breaks("conn", "signal::Ctx").is_none());
    assert!(breaks("signal", "llm::api").is_some());
    assert!(breaks("signal", "capture::host").is_none());
    assert!(breaks("output", "cli::OutputArgs").is_some());
    assert!(breaks("run", "output").is_none());
    assert!(breaks("bounded", "mcp").is_some());
    assert_eq!(place("mcp::observe"), Place::Stage(5));
    assert_eq!(place("signal::process"), Place::Signal);
    assert_eq!(place("FastMap"), Place::Shared);
}
