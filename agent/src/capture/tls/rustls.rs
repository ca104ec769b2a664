//! rustls, by its symbols: a Rust binary keeps a symbol table unless it is stripped, and the
//! functions at the edge of rustls's buffered API are not generic, so each is compiled once,
//! in rustls, under a name that says what it is (demangled: `<rustls::conn::connection::Writer
//! as std::io::Write>::write`). Probed: the plaintext writes (`Writer::write`,
//! `write_vectored`), the reads (`Reader`'s `Read::read`, and the `into_first_chunk` and
//! `consume` pair tokio-rustls reads through), and the ciphertext flush
//! (`ChunkVecBuffer::write_to`) whose socket write binds a connection that has no socket yet
//! (see the kernel side). Matched by their path's ends, so the modules rustls moves its types
//! between releases do not matter.
//!
//! A binary with rustls but without these symbols (stripped, or built with link-time
//! optimisation that inlined them) is recognised by the paths of rustls's sources its panic
//! messages carry, and reported as not readable.

use std::path::PathBuf;

use anyhow::Result;
use mcptap_abi::RUSTLS_PROBES;
use memchr::memmem;

use super::elf::symbol_offsets_in;
use super::{Library, Plan};

/// Each probed function's label in [`RUSTLS_PROBES`], and how its demangled name (without
/// the hash) starts and ends.
const FUNCTIONS: [(&str, &str, &str); 6] = [
    (
        "Writer::write",
        "<rustls::",
        "::Writer as std::io::Write>::write",
    ),
    (
        "Writer::write_vectored",
        "<rustls::",
        "::Writer as std::io::Write>::write_vectored",
    ),
    (
        "Reader::read",
        "<rustls::",
        "::Reader as std::io::Read>::read",
    ),
    (
        "Reader::into_first_chunk",
        "rustls::",
        "::Reader::into_first_chunk",
    ),
    (
        "Reader::consume",
        "<rustls::",
        "::Reader as std::io::BufRead>::consume",
    ),
    (
        "ChunkVecBuffer::write_to",
        "rustls::",
        "::ChunkVecBuffer::write_to",
    ),
];

/// rustls lives in executables (and the odd Rust shared library): no mapped library is
/// looked at for it by name.
pub fn maybe_in(_path: &str) -> bool {
    false
}

/// The system keeps no rustls library.
pub fn system_libraries() -> Vec<PathBuf> {
    Vec::new()
}

/// The label of the probed function a symbol names, if it names one.
fn label_of(mangled: &[u8]) -> Option<&'static str> {
    // Every mangling spells the crate's name out: most symbols are passed over without being
    // demangled.
    memmem::find(mangled, b"rustls")?;
    let name = std::str::from_utf8(mangled).ok()?;
    let demangled = format!("{:#}", rustc_demangle::try_demangle(name).ok()?);
    FUNCTIONS
        .iter()
        .find(|(_, start, end)| demangled.starts_with(start) && demangled.ends_with(end))
        .map(|f| f.0)
}

/// Where a binary keeps its constant strings (`.rodata`), or the whole file when it has no
/// such section: every program the host runs without rustls's symbols is searched, and its
/// code and debug sections are most of it.
fn read_only_data(data: &[u8]) -> &[u8] {
    use object::{Object as _, ObjectSection as _};
    object::File::parse(data)
        .ok()
        .and_then(|o| o.section_by_name(".rodata")?.data().ok())
        .unwrap_or(data)
}

/// Where the probes go in a binary: every function found, when they cover both directions;
/// a blocked plan for rustls without them; `None` for a binary without rustls.
pub fn plan(data: &[u8]) -> Result<Option<Plan>> {
    let found = symbol_offsets_in(data, label_of)?;
    let has = |label: &str| found.iter().any(|f| f.0 == label);
    let writes =
        has("ChunkVecBuffer::write_to") && (has("Writer::write") || has("Writer::write_vectored"));
    let reads = has("Reader::read") || (has("Reader::into_first_chunk") && has("Reader::consume"));
    if writes && reads {
        let probes = RUSTLS_PROBES
            .iter()
            .flat_map(|&(label, prog, _)| {
                found
                    .iter()
                    .filter(move |f| f.0 == label)
                    .map(move |f| (prog, f.1, label))
            })
            .collect();
        return Ok(Some(Plan {
            library: Library::Rustls,
            mode: "symbols",
            detail: format!("{} functions probed by their symbols", found.len()),
            probes,
            blocked: None,
            carries_data: true,
        }));
    }
    let why = if !found.is_empty() {
        let mut labels: Vec<_> = found.iter().map(|f| f.0).collect();
        labels.dedup();
        format!(
            "rustls's plaintext functions are there only in part ({}): the others were inlined \
             (link-time optimisation), or the program never reads or writes through rustls",
            labels.join(", ")
        )
    } else if memmem::find(read_only_data(data), b"/rustls-0.").is_some() {
        // Where rustls's sources were (a registry's `rustls-0.23.46/src/...`), as its panic
        // messages name them: rustls is in there even when its symbols are not.
        "rustls is linked in, but its functions have no symbols (a stripped binary): its \
         plaintext cannot be read"
            .to_string()
    } else {
        return Ok(None);
    };
    Ok(Some(Plan {
        library: Library::Rustls,
        mode: "symbols",
        detail: "rustls without the symbols of its read and write functions".into(),
        probes: Vec::new(),
        blocked: Some(why),
        carries_data: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangled_names_pick_their_functions() {
        // Names as rustc writes them (legacy mangling), from mcptap's own build of rustls.
        let legacy = "_ZN67_$LT$rustls..conn..connection..Writer$u20$as$u20$std..io..Write$GT$5write17h8dbc694a72cef61dE";
        assert_eq!(label_of(legacy.as_bytes()), Some("Writer::write"));
        let chunk = "_ZN6rustls4conn10connection6Reader16into_first_chunk17h0123456789abcdefE";
        assert_eq!(label_of(chunk.as_bytes()), Some("Reader::into_first_chunk"));
        let flush = "_ZN6rustls6vecbuf14ChunkVecBuffer8write_to17h0123456789abcdefE";
        assert_eq!(label_of(flush.as_bytes()), Some("ChunkVecBuffer::write_to"));
        // Another crate's Writer, and a rustls function that is not probed.
        let other =
            "_ZN48_$LT$mylib..Writer$u20$as$u20$std..io..Write$GT$5write17h0123456789abcdefE";
        assert_eq!(label_of(other.as_bytes()), None);
        let unprobed = "_ZN6rustls6vecbuf14ChunkVecBuffer6append17h0123456789abcdefE";
        assert_eq!(label_of(unprobed.as_bytes()), None);
        let closure = "_ZN6rustls6vecbuf14ChunkVecBuffer8write_to28_$u7b$$u7b$closure$u7d$$u7d$17h78bae67bd56a2439E";
        assert_eq!(label_of(closure.as_bytes()), None);
    }

    /// This test binary links rustls (the agent's Kubernetes client and OTLP exporter use it),
    /// through tokio-rustls: a real build to plan for, with its symbols and stripped of them.
    #[test]
    fn a_rust_binary_with_rustls_is_planned_and_a_stripped_one_blocked() {
        let me = std::env::current_exe().unwrap();
        let data = super::super::elf::Mapped::open(&me).unwrap();
        let plan = plan(data.bytes()).unwrap().expect("rustls in this binary");
        assert_eq!(plan.library, Library::Rustls);
        assert!(plan.blocked.is_none(), "{plan:?}");
        for prog in [
            "rustls_write_enter",
            "rustls_chunk_enter",
            "rustls_chunk_ret",
            "rustls_consume_enter",
            "rustls_flush_enter",
            "rustls_flush_ret",
        ] {
            assert!(plan.probes.iter().any(|p| p.0 == prog), "{prog}: {plan:?}");
        }
        let stripped = std::env::temp_dir().join(format!("mcptap-stripped-{}", std::process::id()));
        let status = std::process::Command::new("objcopy")
            .arg("--strip-all")
            .arg(&me)
            .arg(&stripped)
            .status()
            .expect("objcopy (binutils)");
        assert!(status.success());
        let data = super::super::elf::Mapped::open(&stripped).unwrap();
        let blocked = super::plan(data.bytes())
            .unwrap()
            .expect("rustls still recognised");
        let _ = std::fs::remove_file(&stripped);
        assert!(
            blocked.probes.is_empty() && blocked.blocked.is_some(),
            "{blocked:?}"
        );
    }

    #[test]
    fn functions_are_the_probe_list_labels() {
        for (label, _, _) in FUNCTIONS {
            assert!(RUSTLS_PROBES.iter().any(|p| p.0 == label), "{label}");
        }
        for (label, _, _) in RUSTLS_PROBES {
            assert!(FUNCTIONS.iter().any(|f| f.0 == label), "{label}");
        }
    }
}
