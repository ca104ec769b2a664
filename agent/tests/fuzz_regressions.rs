//! Every fuzz seed (cut from real captures) and every input that once broke a fuzz target,
//! replayed through the same checks the fuzzers run (`mcptap::fuzz`), so a fixed crash stays
//! fixed without nightly or cargo-fuzz.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(base.join(kind).join(target)) else {
            continue;
        };
        for entry in dir {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            eprintln!("{}", path.display());
            check(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for the {target} fuzz target");
}

#[test]
fn ndjson() {
    replay("ndjson", mcptap::fuzz::ndjson);
}

#[test]
fn http() {
    replay("http", mcptap::fuzz::http);
}

#[test]
fn sse() {
    replay("sse", mcptap::fuzz::sse);
}

#[test]
fn mcp() {
    replay("mcp", mcptap::fuzz::mcp);
}

#[test]
fn record() {
    replay("record", mcptap::fuzz::record);
}

#[test]
fn llm() {
    replay("llm", mcptap::fuzz::llm);
}

#[test]
fn http2() {
    replay("http2", mcptap::fuzz::http2);
}

#[test]
fn websocket() {
    replay("websocket", mcptap::fuzz::websocket);
}

#[test]
fn message() {
    replay("message", mcptap::fuzz::message);
}
