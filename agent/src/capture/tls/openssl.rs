//! OpenSSL (and forks that keep its exported names): the shared `libssl` and `libcrypto`
//! (Python, curl), or a program with OpenSSL linked in (`node`). `SSL_read`/`SSL_write` and
//! their `_ex` forms carry the plaintext, `BIO_write` inside an SSL call binds the SSL object
//! to its socket by the ciphertext; where both forms of a pair call one internal function
//! whose first instruction the kernel emulates, that function is probed instead (no
//! single-step per call).

use std::path::PathBuf;

use anyhow::Result;
use mcptap_abi::OPENSSL_PROBES;

use super::elf::exported_offsets_in;
use super::x86::{calls, emulated_entry, passthrough_call};
use super::{Library, Plan};

/// The symbols probed, each once.
pub fn probed_symbols() -> Vec<&'static str> {
    let mut v: Vec<&str> = Vec::new();
    let wrappers = INTERNAL.iter().flat_map(|w| [w.0, w.1]);
    for symbol in OPENSSL_PROBES.iter().map(|p| p.0).chain(wrappers) {
        if !v.contains(&symbol) {
            v.push(symbol);
        }
    }
    v
}

/// How each family of OpenSSL calls is probed in one binary, while it is planned.
#[derive(Debug, Default)]
struct Modes {
    probes: Vec<(&'static str, u64, &'static str)>,
    /// How `SSL_read`/`SSL_write` are probed: [`Mode::Internal`] on the internal functions
    /// both forms call, or [`Mode::Exported`] on the exported symbols.
    ssl: Option<Mode>,
    /// How `BIO_write` is probed.
    bio: Option<Mode>,
}

impl Modes {
    /// How the binary is probed, for the metrics: its `SSL_read`/`SSL_write`'s [`Mode`], or
    /// `bio_internal`/`bio_exported` for a binary with `BIO_write` alone (libcrypto).
    fn mode(&self) -> &'static str {
        match (self.ssl, self.bio) {
            (Some(m), _) => m.name(),
            (None, Some(Mode::Internal)) => "bio_internal",
            (None, Some(Mode::Exported)) => "bio_exported",
            (None, None) => "none",
        }
    }
}

/// Where a family of OpenSSL calls is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// At the entry of the internal function that the exported wrappers call, an instruction
    /// (`push`) the kernel emulates: no single-step per hit.
    Internal,
    /// At the exported symbols (single-stepped when their first instruction is not one the
    /// kernel emulates).
    Exported,
}

impl Mode {
    /// Its name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Internal => "internal",
            Mode::Exported => "exported",
        }
    }
}

/// The internal function that both `plain` and `ex` (exported functions at these file
/// offsets of `data`, within a section ending at `end`) run: `ex` passes its arguments on to
/// it unchanged, `plain` calls it too, and its first instruction is one the kernel emulates.
fn internal_target(data: &[u8], plain: u64, ex: u64, end: u64) -> Option<u64> {
    let code = |at: u64| data.get(at as usize..end.min(data.len() as u64) as usize);
    let rel = passthrough_call(code(ex)?)?;
    let target = u64::try_from(ex as i64 + rel).ok()?;
    if target >= end || !calls(code(plain)?, target as i64 - plain as i64) {
        return None;
    }
    emulated_entry(code(target)?).then_some(target)
}

/// The internal functions probed in place of exported pairs: (plain, `_ex`, what, entry
/// program, return program). The entry programs are those of the `_ex` forms: the internal
/// function takes the `_ex` form's arguments (see [`passthrough_call`]).
const INTERNAL: [(&str, &str, &str, &str, Option<&str>); 3] = [
    (
        "SSL_read",
        "SSL_read_ex",
        "ssl_read_internal",
        "ssl_read_ex_enter",
        Some("ssl_data_ret"),
    ),
    (
        "SSL_write",
        "SSL_write_ex",
        "ssl_write_internal",
        "ssl_write_ex_enter",
        Some("ssl_data_ret"),
    ),
    (
        "BIO_write",
        "BIO_write_ex",
        "bio_write_intern",
        "bio_write_enter",
        None,
    ),
];

/// Where to probe a binary, from the file's bytes: the internal functions where they are
/// found safe to probe, the exported symbols otherwise.
pub fn plan(data: &[u8]) -> Result<Option<Plan>> {
    let exported = exported_offsets_in(data, &probed_symbols())?;
    let find = |s: &str| exported.iter().find(|(n, _, _)| *n == s).copied();
    let mut plan = Modes::default();
    let mut replaced: Vec<&str> = Vec::new();
    for (plain, ex, what, enter, ret) in INTERNAL {
        let (Some((_, p, end)), Some((_, e, _))) = (find(plain), find(ex)) else {
            continue;
        };
        let Some(target) = internal_target(data, p, e, end) else {
            continue;
        };
        plan.probes.push((enter, target, what));
        if let Some(ret) = ret {
            plan.probes.push((ret, target, what));
        }
        replaced.extend([plain, ex]);
    }
    for (symbol, prog, _) in OPENSSL_PROBES {
        if replaced.contains(&symbol) {
            continue;
        }
        if let Some((_, at, _)) = find(symbol) {
            plan.probes.push((prog, at, symbol));
        }
    }
    let has = |s: &str| exported.iter().any(|(n, _, _)| *n == s);
    let mode = |s: &str| {
        if replaced.contains(&s) {
            Mode::Internal
        } else {
            Mode::Exported
        }
    };
    if has("SSL_read") && has("SSL_write") {
        // Both directions must be internal to call the binary internal.
        plan.ssl = Some(
            if mode("SSL_read") == Mode::Internal && mode("SSL_write") == Mode::Internal {
                Mode::Internal
            } else {
                Mode::Exported
            },
        );
    }
    if has("BIO_write") {
        plan.bio = Some(mode("BIO_write"));
    }
    if plan.ssl.is_none() && plan.bio.is_none() {
        return Ok(None);
    }
    Ok(Some(Plan {
        library: Library::OpenSsl,
        mode: plan.mode(),
        detail: format!(
            "SSL_read/SSL_write probed at the {} entry points, BIO_write at the {}",
            plan.ssl.map_or("(none)", Mode::name),
            plan.bio.map_or("(none)", Mode::name),
        ),
        probes: plan.probes,
        blocked: None,
        carries_data: plan.ssl.is_some(),
    }))
}

#[cfg(test)]
/// Whether what a binary exports is worth probing (as [`plan`] decides): the data functions of libssl, or the write
/// BIO of libcrypto (which binds SSL objects to sockets).
fn worth_probing(offsets: &[(&str, u64)]) -> bool {
    let has = |s: &str| offsets.iter().any(|(n, _)| *n == s);
    (has("SSL_read") && has("SSL_write")) || has("BIO_write")
}

/// Whether a mapped library may hold OpenSSL (the system's, or a copy bundled by a package,
/// e.g. `libssl-1a2b3c.so.3`). Executables are always looked at: OpenSSL may be linked in.
pub fn maybe_in(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.contains("ssl") || name.contains("crypto")
}

/// The system's OpenSSL libraries: `libssl.so*` and `libcrypto.so*` in the usual library
/// directories.
pub fn system_libraries() -> Vec<PathBuf> {
    super::procs::system_files(&["libssl.so", "libcrypto.so"])
}

#[cfg(test)]
mod tests {
    use super::super::elf::{Mapped, exported_offsets};
    use super::*;

    #[test]
    fn finds_openssl_in_the_system_libraries() {
        let libs = system_libraries();
        // The TLS tests need OpenSSL 3 (Debian's libssl3): missing, this fails, never skips.
        let ssl = libs
            .iter()
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libssl.so.3"))
            })
            .unwrap_or_else(|| panic!("no libssl.so.3 among {libs:?}: install libssl3"));
        let offsets = exported_offsets(ssl, &probed_symbols()).unwrap();
        assert!(worth_probing(&offsets), "{offsets:?}");
        for sym in [
            "SSL_read",
            "SSL_read_ex",
            "SSL_write",
            "SSL_write_ex",
            "SSL_do_handshake",
        ] {
            assert!(
                offsets.iter().any(|(s, _)| *s == sym),
                "{sym} in {offsets:?}"
            );
        }
        // libssl calls BIO_write, libcrypto defines it.
        assert!(!offsets.iter().any(|(s, _)| *s == "BIO_write"));
    }

    #[test]
    fn debian_libssl_is_probed_at_its_internal_functions() {
        let libs = system_libraries();
        let Some(ssl) = libs.iter().find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libssl.so.3"))
        }) else {
            panic!("no libssl.so.3 among {libs:?}: install libssl3");
        };
        let data = Mapped::open(ssl).unwrap();
        let plan = plan(data.bytes()).unwrap().expect("libssl has OpenSSL");
        assert_eq!(plan.mode, "internal", "{plan:?}");
        let at = |what: &str| plan.probes.iter().filter(|p| p.2 == what).count();
        assert_eq!(at("ssl_read_internal"), 2, "{plan:?}");
        assert_eq!(at("ssl_write_internal"), 2, "{plan:?}");
        for sym in ["SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex"] {
            assert_eq!(at(sym), 0, "{sym} probed twice: {plan:?}");
        }
        assert_eq!(at("SSL_do_handshake"), 2, "{plan:?}");
        for p in &plan.probes {
            let code = &data.bytes()[p.1 as usize..];
            if p.2.contains("internal") {
                assert!(emulated_entry(code), "{p:?}");
            }
        }
    }

    #[test]
    fn debian_libcrypto_bio_write_is_probed_inside() {
        let libs = system_libraries();
        let crypto = libs
            .iter()
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libcrypto.so.3"))
            })
            .unwrap_or_else(|| panic!("no libcrypto.so.3 among {libs:?}"));
        let data = Mapped::open(crypto).unwrap();
        let plan = plan(data.bytes())
            .unwrap()
            .expect("libcrypto has BIO_write");
        assert_eq!(plan.mode, "bio_internal", "{plan:?}");
        assert_eq!(plan.probes.len(), 1, "{plan:?}");
        assert_eq!(plan.probes[0].2, "bio_write_intern");
    }

    #[test]
    fn only_openssl_like_mappings_are_examined() {
        assert!(maybe_in("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(maybe_in(
            "/venv/lib/python3.11/site-packages/x.libs/libcrypto-1a2b.so.3"
        ));
        assert!(!maybe_in("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(!worth_probing(&[("SSL_read", 1)]));
        assert!(worth_probing(&[("BIO_write", 1)]));
    }
}
