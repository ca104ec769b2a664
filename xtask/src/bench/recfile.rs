//! Reading a `mcptap --record` file for what the bench counts in it: the data records' payload
//! bytes, and the TLS calls of one process (sections 7 and 8).
//!
//! The format is the agent's (`agent/src/capture/recording.rs`): an 8-byte magic, then frames
//! of `tag: u8`, `len: u32 LE` and `len` bytes; tag 1 holds one kernel record, an
//! `EventHeader` (`agent-ebpf/abi`) and its payload. xtask does not link the ABI crate, so the
//! few header fields read here are at their offsets in that `#[repr(C)]` struct, whose layout
//! the ABI's own tests pin down.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

const MAGIC: &[u8; 8] = b"MCPTAP\x00\x01";
const TAG_RECORD: u8 = 1;
/// `RECORD_DATA`: payload bytes of one read or write (one chunk of it).
const RECORD_DATA: u8 = 1;
/// `FLAG_TLS`: the payload is TLS plaintext from a TLS library's probes.
const FLAG_TLS: u8 = 1 << 2;
/// `DIR_OUT`: bytes the process wrote.
const DIR_OUT: u8 = 1;
/// `EventHeader` fields: record, dir, flags, tls_lib (u8); tgid, len (u32); offset (u64).
const AT_RECORD: usize = 0;
const AT_DIR: usize = 1;
const AT_FLAGS: usize = 3;
const AT_TLS_LIB: usize = 5;
const AT_TGID: usize = 8;
const AT_LEN: usize = 20;
const AT_OFFSET: usize = 64;
/// `size_of::<EventHeader>()`.
const HEADER: usize = 88;

/// One data record's fields the bench uses.
#[derive(Clone, Copy, Debug)]
pub struct Data {
    pub tgid: u32,
    pub write: bool,
    /// The TLS library (`tls_lib`: 1 OpenSSL, 2 GnuTLS, 3 Go), 0 for syscall data.
    pub tls_lib: u8,
    pub len: u32,
    /// The first (or only) chunk of its call: one per read or write.
    pub first: bool,
}

/// Every data record of a recording, in file order.
pub fn data_records(file: &Path) -> Result<Vec<Data>> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        bail!("{} is not a mcptap recording", file.display());
    }
    let mut out = Vec::new();
    let mut at = MAGIC.len();
    while at + 5 <= bytes.len() {
        let tag = bytes[at];
        let len = u32::from_le_bytes(bytes[at + 1..at + 5].try_into()?) as usize;
        let Some(body) = bytes.get(at + 5..at + 5 + len) else {
            break; // a frame cut short by the agent's stop
        };
        at += 5 + len;
        if tag != TAG_RECORD || body.len() < HEADER || body[AT_RECORD] != RECORD_DATA {
            continue;
        }
        let u32_at = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().unwrap());
        let offset = u64::from_le_bytes(body[AT_OFFSET..AT_OFFSET + 8].try_into()?);
        out.push(Data {
            tgid: u32_at(AT_TGID),
            write: body[AT_DIR] == DIR_OUT,
            tls_lib: if body[AT_FLAGS] & FLAG_TLS != 0 {
                body[AT_TLS_LIB]
            } else {
                0
            },
            len: u32_at(AT_LEN),
            first: offset == 0,
        });
    }
    Ok(out)
}

/// Payload bytes of every data record: what the pipeline is given to read.
pub fn payload_bytes(file: &Path) -> Result<u64> {
    Ok(data_records(file)?.iter().map(|d| u64::from(d.len)).sum())
}

/// TLS calls of process `tgid` through library `tls_lib` that moved data: (reads, writes).
pub fn tls_calls(file: &Path, tgid: u32, tls_lib: u8) -> Result<(u64, u64)> {
    let (mut reads, mut writes) = (0, 0);
    for d in data_records(file)? {
        if d.tgid == tgid && d.tls_lib == tls_lib && d.first {
            if d.write {
                writes += 1;
            } else {
                reads += 1;
            }
        }
    }
    Ok((reads, writes))
}
