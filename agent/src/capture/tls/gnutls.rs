//! GnuTLS: `gnutls_record_recv`/`gnutls_record_send` in `libgnutls.so.30` carry the
//! plaintext (the arguments and return value of OpenSSL's `SSL_read`/`SSL_write`), probed at
//! their exported symbols; the session is bound to its socket by the socket syscall its
//! default transport makes inside the call (see the kernel side).

use std::path::PathBuf;

use anyhow::Result;
use mcptap_abi::GNUTLS_PROBES;

use super::elf::exported_offsets_in;
use super::x86::emulated_entry;
use super::{Library, Plan};

/// The probes' symbols.
const SYMBOLS: [&str; 2] = ["gnutls_record_recv", "gnutls_record_send"];

/// Whether a mapped library may be GnuTLS (`libgnutls.so.30`, or a bundled copy).
pub fn maybe_in(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.contains("gnutls")
}

/// Where the probes go in a binary: both record functions, or nothing.
pub fn plan(data: &[u8]) -> Result<Option<Plan>> {
    let exported = exported_offsets_in(data, &SYMBOLS)?;
    let at = |s: &str| exported.iter().find(|(n, _, _)| *n == s).map(|e| e.1);
    let (Some(recv), Some(send)) = (at(SYMBOLS[0]), at(SYMBOLS[1])) else {
        return Ok(None);
    };
    let probes: Vec<_> = GNUTLS_PROBES
        .iter()
        .map(|&(symbol, prog, _)| {
            let offset = if symbol == SYMBOLS[0] { recv } else { send };
            (prog, offset, symbol)
        })
        .collect();
    let emulated = [recv, send]
        .iter()
        .all(|&o| data.get(o as usize..).is_some_and(emulated_entry));
    Ok(Some(Plan {
        library: Library::GnuTls,
        mode: "exported",
        detail: format!(
            "gnutls_record_recv/gnutls_record_send probed at the exported entry points ({})",
            if emulated {
                "emulated"
            } else {
                "single-stepped"
            }
        ),
        probes,
        blocked: None,
        carries_data: true,
    }))
}

/// GnuTLS in the system's library directories.
pub fn system_libraries() -> Vec<PathBuf> {
    super::procs::system_files(&["libgnutls.so"])
}

#[cfg(test)]
mod tests {
    use super::super::elf::Mapped;
    use super::*;

    #[test]
    fn debian_libgnutls_is_planned_at_its_record_functions() {
        let libs = system_libraries();
        let lib = libs
            .iter()
            .find(|p| p.to_string_lossy().contains("libgnutls.so.30"))
            .unwrap_or_else(|| panic!("no libgnutls.so.30 among {libs:?}: install libgnutls30"));
        let data = Mapped::open(lib).unwrap();
        let plan = plan(data.bytes())
            .unwrap()
            .expect("libgnutls has the record functions");
        assert_eq!(plan.library, Library::GnuTls);
        assert_eq!(plan.probes.len(), 4, "{plan:?}");
        let ret = plan.probes.iter().filter(|p| p.0 == "ssl_data_ret").count();
        assert_eq!(ret, 2, "{plan:?}");
        assert!(maybe_in(&lib.to_string_lossy()));
        assert!(!maybe_in("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
    }

    #[test]
    fn openssl_is_not_gnutls() {
        let libs = super::super::openssl::system_libraries();
        let ssl = libs
            .iter()
            .find(|p| p.to_string_lossy().contains("libssl.so.3"))
            .expect("libssl.so.3");
        let data = Mapped::open(ssl).unwrap();
        assert!(plan(data.bytes()).unwrap().is_none());
    }
}
