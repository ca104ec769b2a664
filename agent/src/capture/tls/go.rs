//! Go's `crypto/tls` in an x86-64 ELF binary: where `(*Conn).Read` and `(*Conn).Write` are
//! in the file (the entry, and every `ret`, since a uretprobe would break Go's movable
//! stacks), the Go release, and the struct offsets from a `*tls.Conn` to its socket's fd.
//!
//! The functions come from `.symtab` when the binary has one, else from Go's own function
//! table (`.gopclntab`, which `-ldflags=-s -w` and `strip` keep): found by section name, or
//! by its header's magic where the linker merged it into `.data.rel.ro` (external linking
//! with `-buildmode=pie`). Only Go 1.17 and later are taken: older releases pass arguments
//! on the stack, not in the registers the probes read.
//!
//! At the entry of both functions (Go's ABIInternal): the receiver `*Conn` is in RAX, the
//! buffer's pointer in RBX, its length in RCX (its capacity in RDI), and the goroutine `g` in
//! R14. At every `ret`: `n` in RAX, the error's itab in RBX (zero when nil), its data in RCX,
//! R14 still `g`. A goroutine may move to another thread while it blocks in Read, so the
//! entry and its return are matched by `g` (with the pid: g addresses repeat across
//! processes), not by thread id. A function whose stack must grow runs its entry twice (once
//! before `runtime.morestack`, once after).
//!
//! Checked on go1.19.8 by disassembly, and live with uprobe_events at the offsets `find`
//! gives, over HTTP/1.1 and HTTP/2: the plaintext at RBX for RCX bytes, `n` and a nil error at
//! the rets, a Read entered on one thread and returning on another with the same R14, and the
//! fd read through [`ConnOffsets`] matching the socket in `/proc/PID/fd`.

use anyhow::{Context as _, Result, bail};
use mcptap_abi::{GO_CONN_OFFSETS, GO_PROBES};

use super::{Library, Plan};
use iced_x86::{Code, Decoder, DecoderOptions, Instruction};
use object::{FileKind, Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};

/// The symbol of the read function.
const READ: &str = "crypto/tls.(*Conn).Read";
/// The symbol of the write function.
const WRITE: &str = "crypto/tls.(*Conn).Write";
/// The magic at the start of `.go.buildinfo`.
const BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// Bounds on what is believed of a function table, found by scanning or not.
const MAX_FUNCS: u64 = 10_000_000;
/// No Go function this module looks for is anywhere near this long.
const MAX_FUNC_SIZE: u64 = 1 << 20;

/// Go's `crypto/tls` in one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoTls {
    /// The Go release that built the binary, e.g. `go1.19.8`, when the binary says.
    pub version: Option<String>,
    /// `crypto/tls.(*Conn).Read`.
    pub read: GoFunc,
    /// `crypto/tls.(*Conn).Write`.
    pub write: GoFunc,
    /// From the `*tls.Conn` to the socket's fd.
    pub offsets: ConnOffsets,
}

/// A Go function as uprobes are set on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFunc {
    /// File offset of the function's first instruction.
    pub entry: u64,
    /// Where its entry probe goes: the stack check's conditional jump when the function
    /// begins with one (the kernel emulates a `jcc`, where it single-steps the `cmp` the
    /// function begins with), else the entry. The arguments' registers and R14 are the same
    /// there; a stack that grows runs the check again (the probe fires again, and its second
    /// hit replaces the first).
    pub probe_at: u64,
    /// File offsets of every `ret` instruction in the function, in address order.
    pub returns: Vec<u64>,
}

/// Byte offsets to go from a `*crypto/tls.Conn` to the socket fd: `Conn.conn` (a `net.Conn`
/// interface: itab pointer, data pointer) → the data pointer is a `*net.TCPConn` whose first
/// field's pointer is the `*net.netFD` → `netFD.pfd` (`poll.FD`) → `Sysfd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnOffsets {
    /// Offset of the interface's data word inside `tls.Conn`.
    pub conn_iface_data: u64,
    /// Offset of the `*netFD` inside `net.TCPConn` (through the embedded `net.conn`).
    pub tcpconn_fd: u64,
    /// Offset of `pfd.Sysfd` (an `int`) inside `net.netFD`.
    pub netfd_sysfd: u64,
}

/// Find Go `crypto/tls` in an ELF file's bytes: `None` if it is not an x86-64 Go binary of
/// Go 1.17 or later, or has no `crypto/tls.(*Conn).Read`/`Write`; `Err` only on a malformed
/// ELF file (including functions that lie outside it).
pub fn find(data: &[u8]) -> Result<Option<GoTls>> {
    let obj = match FileKind::parse(data) {
        Ok(FileKind::Elf64) => object::File::parse(data).context("malformed ELF file")?,
        Ok(_) => return Ok(None),
        Err(_) if data.starts_with(b"\x7fELF") => bail!("malformed ELF header"),
        Err(_) => return Ok(None),
    };
    if obj.architecture() != object::Architecture::X86_64 {
        return Ok(None);
    }
    let elf = Elf { data, obj };
    let Some([read, write]) = elf.functions() else {
        return Ok(None);
    };
    let version = elf.version();
    if version.as_deref().is_some_and(|v| !register_abi(v)) {
        return Ok(None);
    }
    Ok(Some(GoTls {
        read: elf.go_func(READ, read)?,
        write: elf.go_func(WRITE, write)?,
        offsets: conn_offsets(version.as_deref()),
        version,
    }))
}

/// Go is linked into executables, which are always examined: no mapped library is.
pub fn maybe_in(_path: &str) -> bool {
    false
}

/// No Go in the system's library directories.
pub fn system_libraries() -> Vec<std::path::PathBuf> {
    Vec::new()
}

/// Where the probes go in a Go binary: the entry of `(*Conn).Read` and `(*Conn).Write` and
/// every `ret` of each. A binary whose struct offsets are not the ones the kernel programs
/// read ([`GO_CONN_OFFSETS`]) is recognised but not probed.
pub fn plan(data: &[u8]) -> Result<Option<Plan>> {
    let Some(tls) = find(data)? else {
        return Ok(None);
    };
    let version = tls
        .version
        .clone()
        .unwrap_or_else(|| "an unknown Go".into());
    let o = tls.offsets;
    let offsets = [o.conn_iface_data, o.tcpconn_fd, o.netfd_sysfd];
    let mut probes = Vec::new();
    for (func, f) in [(READ, &tls.read), (WRITE, &tls.write)] {
        for &(symbol, prog, at_ret) in &GO_PROBES {
            if symbol != func {
                continue;
            }
            if at_ret {
                probes.extend(f.returns.iter().map(|&r| (prog, r, symbol)));
            } else {
                probes.push((prog, f.probe_at, symbol));
            }
        }
    }
    let blocked = (offsets != GO_CONN_OFFSETS).then(|| {
        format!("{version}'s struct offsets {offsets:?} are not the {GO_CONN_OFFSETS:?} read")
    });
    Ok(Some(Plan {
        library: Library::Go,
        mode: "go",
        detail: format!(
            "{version}: crypto/tls.(*Conn).Read (entry and {} returns) and Write (entry)",
            tls.read.returns.len(),
        ),
        probes,
        blocked,
        carries_data: true,
    }))
}

/// The offset in `code` (a Go function from its entry) of the `jbe` of its stack check
/// (`[lea -N(%rsp),%r12;] cmp 0x10(%r14),%rsp|%r12; jbe morestack`), or 0 when it does not
/// begin that way. None of those instructions writes RAX, RBX, RCX or R14.
fn past_stack_check(code: &[u8]) -> u64 {
    let window = &code[..code.len().min(32)];
    let mut decoder = Decoder::with_ip(64, window, 0, DecoderOptions::NONE);
    let mut checked = false;
    for _ in 0..4 {
        if !decoder.can_decode() {
            break;
        }
        let i = decoder.decode();
        match i.mnemonic() {
            iced_x86::Mnemonic::Lea if i.op0_register() == iced_x86::Register::R12 => {}
            iced_x86::Mnemonic::Cmp
                if i.memory_base() == iced_x86::Register::R14
                    && i.memory_displacement64() == 0x10 =>
            {
                checked = true;
            }
            iced_x86::Mnemonic::Jbe if checked => return i.ip(),
            _ => break,
        }
    }
    0
}

/// The struct offsets for a Go release. `tls.Conn` has begun with `conn net.Conn` in every
/// release; `net.TCPConn{conn{fd *netFD}}`, `netFD{pfd poll.FD}` and `poll.FD{fdmu fdMutex
/// (16 bytes: state uint64, rsema, wsema uint32); Sysfd int}` have held since Go 1.9
/// (internal/poll). Claimed for Go 1.17 (the first release this module accepts) through
/// 1.25 from the sources, checked on go1.19.8 against DWARF and reflect (see the tests), and
/// assumed for later releases.
fn conn_offsets(_version: Option<&str>) -> ConnOffsets {
    ConnOffsets {
        conn_iface_data: 8,
        tcpconn_fd: 0,
        netfd_sysfd: 16,
    }
}

/// Whether a Go release passes arguments in registers (ABIInternal, Go 1.17 and later on
/// amd64). Versions it cannot read (`devel ...`, other spellings) are taken as recent.
fn register_abi(version: &str) -> bool {
    let Some(rest) = version.strip_prefix("go1.") else {
        return true;
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse::<u32>().map_or(true, |minor| minor >= 17)
}

/// A function's address range: (virtual address, size in bytes).
type Range = (u64, u64);

/// The ELF file being read.
struct Elf<'a> {
    data: &'a [u8],
    obj: object::File<'a>,
}

impl<'a> Elf<'a> {
    /// The address ranges of Read and Write: from `.symtab`, else from the function table.
    fn functions(&self) -> Option<[Range; 2]> {
        // Every other executable a host runs is spared the walk of its symbol table.
        if !self.looks_like_go() {
            return None;
        }
        let [read, write] = self.symbols([READ, WRITE]);
        if let (Some(r), Some(w)) = (read, write)
            && r.1 > 0
            && w.1 > 0
        {
            return Some([r, w]);
        }
        let text = self.symbols(["runtime.text"])[0].map(|s| s.0);
        let pcln = self.pclntab(text)?;
        let [read, write] = pcln.lookup([READ, WRITE]);
        Some([read?, write?])
    }

    /// Whether the file has a section only Go's linker writes, or no section headers at all
    /// (then only a scan can tell): what spares other binaries the scan for a function table.
    fn looks_like_go(&self) -> bool {
        const GO_SECTIONS: [&str; 4] = [
            ".go.buildinfo",
            ".gopclntab",
            ".data.rel.ro.gopclntab",
            ".note.go.buildid",
        ];
        let mut sections = self.obj.sections().peekable();
        sections.peek().is_none()
            || sections.any(|s| s.name().is_ok_and(|n| GO_SECTIONS.contains(&n)))
    }

    /// The addresses and sizes of the `.symtab` symbols `names`.
    fn symbols<const N: usize>(&self, names: [&str; N]) -> [Option<Range>; N] {
        let mut out = [None; N];
        for sym in self.obj.symbols() {
            let Ok(name) = sym.name_bytes() else { continue };
            if let Some(i) = names.iter().position(|n| n.as_bytes() == name) {
                out[i] = Some((sym.address(), sym.size()));
            }
        }
        out
    }

    /// Go's function table: its section, else found by its header anywhere in the file.
    fn pclntab(&self, text: Option<u64>) -> Option<Pclntab<'a>> {
        for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
            let Some(section) = self.obj.section_by_name(name) else {
                continue;
            };
            if let Some(p) = section.data().ok().and_then(|d| Pclntab::parse(d, text)) {
                return Some(p);
            }
        }
        self.data
            .chunks_exact(8)
            .enumerate()
            .filter(|(_, c)| Pclntab::magic(c).is_some())
            .find_map(|(i, _)| Pclntab::parse(self.data.get(i * 8..)?, text))
    }

    /// File offset of the `len` bytes at virtual address `addr`, through the section (else
    /// the segment) that holds them in the file.
    fn file_offset(&self, addr: u64, len: u64) -> Option<u64> {
        let end = addr.checked_add(len)?;
        let inside = |start: u64, (off, size): (u64, u64)| {
            (start != 0 && addr >= start && end <= start.checked_add(size)?)
                .then(|| off.checked_add(addr - start))
                .flatten()
        };
        let from_sections = self
            .obj
            .sections()
            .find_map(|s| inside(s.address(), s.file_range()?));
        from_sections.or_else(|| {
            self.obj
                .segments()
                .find_map(|s| inside(s.address(), s.file_range()))
        })
    }

    /// The `len` bytes at virtual address `addr`, when the file holds them.
    fn bytes_at(&self, addr: u64, len: u64) -> Option<&'a [u8]> {
        let off = usize::try_from(self.file_offset(addr, len)?).ok()?;
        self.data
            .get(off..off.checked_add(usize::try_from(len).ok()?)?)
    }

    /// The function `name` at `range` as a uprobe target: its entry and its `ret`s.
    fn go_func(&self, name: &str, (addr, size): Range) -> Result<GoFunc> {
        if size == 0 || size > MAX_FUNC_SIZE {
            bail!("{name} has an implausible size {size}");
        }
        let entry = self
            .file_offset(addr, size)
            .with_context(|| format!("{name} at {addr:#x} is not in the file"))?;
        let code = self
            .bytes_at(addr, size)
            .with_context(|| format!("{name} at {addr:#x} is not in the file"))?;
        Ok(GoFunc {
            entry,
            probe_at: entry + past_stack_check(code),
            returns: returns(code, entry),
        })
    }

    /// The Go release: from `.go.buildinfo`, else from `runtime.buildVersion`.
    fn version(&self) -> Option<String> {
        self.buildinfo_version().or_else(|| {
            let (addr, _) = self.symbols(["runtime.buildVersion"])[0]?;
            self.go_string(addr)
        })
    }

    /// The version recorded in `.go.buildinfo` (found by section name, else by its magic).
    fn buildinfo_version(&self) -> Option<String> {
        let info = match self.obj.section_by_name(".go.buildinfo") {
            Some(s) => s.data().ok()?,
            None => {
                let at = self
                    .data
                    .chunks_exact(16)
                    .position(|c| c.starts_with(BUILDINFO_MAGIC))?;
                self.data.get(at * 16..)?
            }
        };
        if !info.starts_with(BUILDINFO_MAGIC) {
            return None;
        }
        let (ptr_size, flags) = (*info.get(14)?, *info.get(15)?);
        if flags & 2 != 0 {
            // Go 1.18+: the strings follow the 32-byte header, each as uvarint length + bytes.
            let (len, n) = uvarint(info.get(32..)?)?;
            let start = 32 + n;
            let end = start.checked_add(usize::try_from(len).ok()?)?;
            return valid_version(info.get(start..end)?);
        }
        // Older: a pointer to the version's Go string header.
        if ptr_size != 8 || flags & 1 != 0 {
            return None;
        }
        self.go_string(u64::from_le_bytes(info.get(16..24)?.try_into().ok()?))
    }

    /// The version held in the Go string header (pointer, length) at `addr`.
    fn go_string(&self, addr: u64) -> Option<String> {
        let header = self.bytes_at(addr, 16)?;
        let ptr = u64::from_le_bytes(header.get(..8)?.try_into().ok()?);
        let len = u64::from_le_bytes(header.get(8..16)?.try_into().ok()?);
        if len > 256 {
            return None;
        }
        valid_version(self.bytes_at(ptr, len)?)
    }
}

/// `bytes` as a Go version string, if they look like one.
fn valid_version(bytes: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(bytes).ok()?;
    let plausible = (s.starts_with("go") || s.starts_with("devel"))
        && s.len() < 128
        && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    plausible.then(|| s.to_string())
}

/// An unsigned LEB128 varint and how many bytes it took.
fn uvarint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// File offsets of the `ret` instructions in `code`, a function that starts at file offset
/// `entry`. Decoding runs to the end of the function: the int3 padding after its last
/// instruction decodes harmlessly.
fn returns(code: &[u8], entry: u64) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut out = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instruction);
        if matches!(instruction.code(), Code::Retnq | Code::Retnq_imm16) {
            out.push(entry + instruction.ip());
        }
    }
    out
}

/// The layout of a function table, by Go release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PclnLayout {
    /// Go 1.16 and 1.17 (magic 0xfffffffa): absolute entries, 8-byte table words.
    Go116,
    /// Go 1.18 and later (0xfffffff0, 0xfffffff1): entries relative to textStart, 4-byte words.
    Go118,
}

/// Go's function table (`runtime.pclntab`), as far as names and entries go.
#[derive(Debug)]
struct Pclntab<'a> {
    data: &'a [u8],
    layout: PclnLayout,
    nfunc: usize,
    text_start: u64,
    /// Offset of `funcnametab` in `data`.
    funcnames: usize,
    /// Offset of `pclntable` (whose start is the function table) in `data`.
    table: usize,
}

impl<'a> Pclntab<'a> {
    /// The layout that an 8-byte header start announces (little-endian, 64-bit, quantum 1).
    fn magic(head: &[u8]) -> Option<PclnLayout> {
        let layout = match head.get(..8)? {
            [0xfa, 0xff, 0xff, 0xff, 0, 0, 1, 8] => PclnLayout::Go116,
            [0xf0 | 0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8] => PclnLayout::Go118,
            _ => return None,
        };
        Some(layout)
    }

    /// The table that starts at `data`, if its header and first entry hold together. `text`
    /// stands in for a Go 1.18+ header's textStart when that is zero.
    fn parse(data: &'a [u8], text: Option<u64>) -> Option<Self> {
        let layout = Self::magic(data)?;
        let word = |i: usize| read_u64(data, 8 * i);
        let nfunc = word(1)?;
        // Go 1.18 added textStart after nfiles, moving the later words by one.
        let (text_start, rest) = match layout {
            PclnLayout::Go116 => (0, 3),
            PclnLayout::Go118 => (Some(word(3)?).filter(|&t| t != 0).or(text)?, 4),
        };
        let funcnames = usize::try_from(word(rest)?).ok()?;
        let table = usize::try_from(word(rest + 4)?).ok()?;
        if nfunc == 0 || nfunc > MAX_FUNCS || funcnames >= data.len() {
            return None;
        }
        let table = Pclntab {
            data,
            layout,
            nfunc: usize::try_from(nfunc).ok()?,
            text_start,
            funcnames,
            table,
        };
        // The first function's own record must repeat the table's entry for it.
        let (entry, func) = table.entry(0)?;
        (table.func_entry(func)? == entry && table.entry(table.nfunc).is_some()).then_some(table)
    }

    /// Entry `i` of the function table: (the function's address, offset of its `_func`).
    /// Entry `nfunc` is the end of the text.
    fn entry(&self, i: usize) -> Option<(u64, usize)> {
        match self.layout {
            PclnLayout::Go116 => {
                let at = self.table.checked_add(i.checked_mul(16)?)?;
                let func = usize::try_from(read_u64(self.data, at.checked_add(8)?)?).ok()?;
                Some((read_u64(self.data, at)?, func))
            }
            PclnLayout::Go118 => {
                let at = self.table.checked_add(i.checked_mul(8)?)?;
                let func = usize::try_from(read_u32(self.data, at.checked_add(4)?)?).ok()?;
                let addr = self
                    .text_start
                    .checked_add(u64::from(read_u32(self.data, at)?))?;
                Some((addr, func))
            }
        }
    }

    /// The entry address that the `_func` at `func` (relative to the table) records.
    fn func_entry(&self, func: usize) -> Option<u64> {
        let at = self.table.checked_add(func)?;
        match self.layout {
            PclnLayout::Go116 => read_u64(self.data, at),
            PclnLayout::Go118 => self
                .text_start
                .checked_add(u64::from(read_u32(self.data, at)?)),
        }
    }

    /// The name of the `_func` at `func` (relative to the table).
    fn func_name(&self, func: usize) -> Option<&'a [u8]> {
        let name_field = match self.layout {
            PclnLayout::Go116 => 8,
            PclnLayout::Go118 => 4,
        };
        let at = self.table.checked_add(func)?.checked_add(name_field)?;
        let name_off = usize::try_from(read_u32(self.data, at)?).ok()?;
        let names = self.data.get(self.funcnames.checked_add(name_off)?..)?;
        let len = names.iter().position(|&b| b == 0)?;
        names.get(..len)
    }

    /// The address ranges of the functions `names`; a function ends where the next begins.
    fn lookup<const N: usize>(&self, names: [&str; N]) -> [Option<Range>; N] {
        let mut out = [None; N];
        for i in 0..self.nfunc {
            let Some((addr, func)) = self.entry(i) else {
                break;
            };
            let Some(name) = self.func_name(func) else {
                continue;
            };
            if let Some(k) = names.iter().position(|n| n.as_bytes() == name) {
                let end = self.entry(i + 1).map(|e| e.0);
                out[k] = end.and_then(|end| Some((addr, end.checked_sub(addr)?)));
            }
        }
        out
    }
}

/// The little-endian u64 at `at` in `data`.
fn read_u64(data: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        data.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The little-endian u32 at `at` in `data`.
fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// Where the Go fixture binaries are: `$MCPTAP_PEERS/go`, else `target/peers/go`, where
    /// `cargo xtask test` builds tests/fixtures/go_mcp with Debian's Go as `mcpgo`,
    /// `mcpgo-stripped` (`-ldflags='-s -w'`), `mcpgo-pie` and `mcpgo-pie-stripped`
    /// (`-buildmode=pie`).
    fn bin_dir() -> PathBuf {
        std::env::var_os("MCPTAP_PEERS").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/peers/go"),
            |p| PathBuf::from(p).join("go"),
        )
    }

    /// The fixture binary `name`; missing, the test fails (it never skips).
    fn go_bin(name: &str) -> Option<Vec<u8>> {
        let path = bin_dir().join(name);
        match std::fs::read(&path) {
            Ok(data) => Some(data),
            Err(e) => panic!(
                "no Go fixture binary {}: {e} (`cargo xtask test` builds them with Debian's \
                 golang-go)",
                path.display()
            ),
        }
    }

    /// `find` on a fixture that must hold Go TLS, with the checks every build must pass.
    fn found(data: &[u8]) -> GoTls {
        let tls = find(data).unwrap().expect("crypto/tls found");
        for f in [&tls.read, &tls.write] {
            assert_entry_checks_stack_through_r14(data, f.entry);
            // The entry probe sits on the stack check's `jbe` (emulated, not single-stepped).
            assert!(f.probe_at > f.entry && f.probe_at < f.entry + 32, "{f:?}");
            let at = f.probe_at as usize;
            assert!(
                data[at] == 0x76 || data[at..at + 2] == [0x0f, 0x86],
                "jbe at {at:#x}"
            );
            assert!(!f.returns.is_empty(), "{f:?} has no ret");
            for &ret in &f.returns {
                assert!(ret > f.entry && ret < f.entry + MAX_FUNC_SIZE);
                let byte = data[ret as usize];
                assert!(
                    byte == 0xc3 || byte == 0xc2,
                    "byte {byte:#x} at ret {ret:#x}"
                );
            }
        }
        assert!(
            tls.version.as_deref().unwrap().starts_with("go1."),
            "{tls:?}"
        );
        tls
    }

    /// A Go ABIInternal function starts with its stack check against g.stackguard0, g being
    /// R14: `cmp 0x10(%r14),%rsp`, or `lea -N(%rsp),%r12; cmp 0x10(%r14),%r12` for a big
    /// frame (Write). This is the entry's R14 = g that the probes rely on.
    fn assert_entry_checks_stack_through_r14(data: &[u8], entry: u64) {
        let code = &data[entry as usize..entry as usize + 16];
        let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
        let checks = (0..2).map(|_| decoder.decode()).any(|i| {
            i.mnemonic() == iced_x86::Mnemonic::Cmp
                && i.memory_base() == iced_x86::Register::R14
                && i.memory_displacement64() == 0x10
        });
        assert!(checks, "no stack check through R14 at {entry:#x}");
    }

    #[test]
    fn finds_go_tls_in_unstripped_and_stripped_builds() {
        let (Some(full), Some(stripped)) = (go_bin("mcpgo"), go_bin("mcpgo-stripped")) else {
            return;
        };
        let a = found(&full);
        let b = found(&stripped);
        assert!(a.version.as_deref().unwrap().starts_with("go1.19"), "{a:?}");
        // -s -w drops .symtab and DWARF, which come after the code: the code and so the
        // entries and rets found (from .symtab in one, .gopclntab in the other) are the same.
        assert_eq!(a, b);
        eprintln!(
            "{:?}: Read at {:#x} with {} rets, Write at {:#x} with {} rets",
            a.version,
            a.read.entry,
            a.read.returns.len(),
            a.write.entry,
            a.write.returns.len()
        );
    }

    #[test]
    fn function_table_agrees_with_symtab() {
        let Some(data) = go_bin("mcpgo") else { return };
        let elf = Elf {
            data: &data,
            obj: object::File::parse(&*data).unwrap(),
        };
        let from_symtab = elf.symbols([READ, WRITE, "runtime.text"]);
        let pcln = elf.pclntab(None).unwrap();
        assert_eq!(pcln.layout, PclnLayout::Go118);
        assert_eq!(Some(pcln.text_start), from_symtab[2].map(|s| s.0));
        let [read, write] = pcln.lookup([READ, WRITE]);
        // The function table's size runs to the next function, over the symbol's padding.
        for (table, sym) in [(read, from_symtab[0]), (write, from_symtab[1])] {
            let ((a, n), (b, m)) = (table.unwrap(), sym.unwrap());
            assert_eq!(a, b);
            assert!(n >= m && n < m + 64, "table size {n}, symbol size {m}");
        }
        // Found by scanning for the header too, as in a PIE whose table is in .data.rel.ro.
        let scanned = data
            .chunks_exact(8)
            .position(|c| Pclntab::magic(c).is_some())
            .and_then(|i| Pclntab::parse(&data[i * 8..], None))
            .unwrap();
        assert_eq!(scanned.lookup([READ, WRITE]), [read, write]);
    }

    /// The offsets, checked on go1.19.8 (Debian 12's golang-go) three ways: by the fixture's
    /// `offsets` mode (reflect, which sees unexported fields) in this test; and by hand, by
    /// `readelf --debug-dump=info mcpgo` (DW_AT_data_member_location: crypto/tls.Conn.conn 0
    /// (so its data word at 8), net.TCPConn.conn 0, net.conn.fd 0, net.netFD.pfd 0,
    /// internal/poll.FD.fdmu 0 and .Sysfd 16, internal/poll.fdMutex state 0, rsema 8,
    /// wsema 12).
    #[test]
    fn offsets_match_the_go_runtime() {
        let path = bin_dir().join("mcpgo");
        let Some(data) = go_bin("mcpgo") else { return };
        let tls = found(&data);
        let out = std::process::Command::new(&path)
            .arg("offsets")
            .output()
            .unwrap();
        assert!(out.status.success());
        let line = String::from_utf8(out.stdout).unwrap();
        let number = |key: &str| -> u64 {
            let at = line.find(&format!("\"{key}\":")).unwrap() + key.len() + 3;
            let digits: String = line[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().unwrap()
        };
        let want = ConnOffsets {
            conn_iface_data: number("conn_iface_data"),
            tcpconn_fd: number("tcpconn_fd"),
            netfd_sysfd: number("netfd_sysfd"),
        };
        assert_eq!(tls.offsets, want, "{line}");
        assert!(line.contains(&format!("\"go\":\"{}\"", tls.version.unwrap())));
    }

    #[test]
    fn finds_go_tls_in_pie_builds() {
        // The stripped one keeps its code where it was: the same functions must be found.
        for (full, stripped) in [("mcpgo-pie", "mcpgo-pie-stripped")] {
            let (Some(a), Some(b)) = (go_bin(full), go_bin(stripped)) else {
                continue;
            };
            let a = found(&a);
            eprintln!(
                "{full}: Read at {:#x} ({} rets), Write at {:#x} ({} rets)",
                a.read.entry,
                a.read.returns.len(),
                a.write.entry,
                a.write.returns.len()
            );
            assert_eq!(a, found(&b), "{stripped}");
        }
    }

    /// With no section headers at all (as `sstrip` leaves a file), the function table and
    /// the build info are found by their magic, and addresses map through the segments.
    #[test]
    fn finds_go_tls_without_section_headers() {
        let Some(mut data) = go_bin("mcpgo-stripped") else {
            return;
        };
        let want = found(&data);
        // e_shoff, e_shnum and e_shstrndx.
        data[0x28..0x30].fill(0);
        data[0x3c..0x40].fill(0);
        assert_eq!(object::File::parse(&*data).unwrap().sections().count(), 0);
        assert_eq!(found(&data), want);
    }

    #[test]
    fn non_go_elf_is_none() {
        let data = std::fs::read("/bin/ls").unwrap();
        assert_eq!(find(&data).unwrap(), None);
    }

    #[test]
    fn garbage_does_not_panic() {
        assert_eq!(find(b"").unwrap(), None);
        assert_eq!(find(b"#!/bin/sh\necho hi\n").unwrap(), None);
        assert!(find(b"\x7fELF").is_err());
        // A deterministic pseudo-random buffer, bare and behind an ELF magic.
        let mut x = 0x2545f4914f6cdd1du64;
        let mut noise: Vec<u8> = (0..1 << 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = find(&noise);
        noise[..4].copy_from_slice(b"\x7fELF");
        let _ = find(&noise);
    }

    #[test]
    fn damaged_go_binaries_do_not_panic() {
        let Some(data) = go_bin("mcpgo-stripped") else {
            return;
        };
        for len in [64, 4096, data.len() / 3, data.len() / 2, data.len() - 1] {
            let _ = find(&data[..len]);
        }
        // Every header word and the first table entries of the function table, set to
        // values that point nowhere sensible.
        let at = data
            .chunks_exact(8)
            .position(|c| Pclntab::magic(c).is_some())
            .unwrap()
            * 8;
        for word in 1..24 {
            for value in [0u64, 1, 0xffff_fff0, u64::MAX, data.len() as u64] {
                let mut bad = data.clone();
                bad[at + 8 * word..at + 8 * word + 8].copy_from_slice(&value.to_le_bytes());
                let _ = find(&bad);
            }
        }
    }

    /// A Go 1.16/1.17 function table, made by hand: two functions and the end of the text.
    #[test]
    fn reads_a_go116_function_table() {
        let mut t = vec![0xfa, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        let names = b"main.a\0crypto/tls.(*Conn).Read\0";
        let (funcnames, table) = (64u64, 64 + names.len() as u64);
        for w in [2, 0, funcnames, 0, 0, 0, table] {
            t.extend_from_slice(&u64::to_le_bytes(w));
        }
        t.extend_from_slice(names);
        // Function table: (entry, funcoff) x 3, then the two _func records (entry, nameoff).
        for (entry, func) in [(0x1000u64, 48u64), (0x1040, 60), (0x1100, 0)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&func.to_le_bytes());
        }
        for (entry, name) in [(0x1000u64, 0u32), (0x1040, 7)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name.to_le_bytes());
        }
        let pcln = Pclntab::parse(&t, None).unwrap();
        assert_eq!(pcln.layout, PclnLayout::Go116);
        assert_eq!(
            pcln.lookup([READ, "main.a"]),
            [Some((0x1040, 0xc0)), Some((0x1000, 0x40))]
        );
    }

    #[test]
    fn register_abi_from_go_117() {
        assert!(!register_abi("go1.16.15"));
        assert!(!register_abi("go1.9"));
        assert!(register_abi("go1.17"));
        assert!(register_abi("go1.19.8"));
        assert!(register_abi("go1.22rc1"));
        assert!(register_abi("devel go1.23-abcdef"));
    }

    #[test]
    fn rets_of_hand_assembled_code() {
        // cmp 0x10(%r14),%rsp; ret; int3; ret $8; int3 x3 (padding)
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0xc3, 0xcc, 0xc2, 0x08, 0x00, 0xcc, 0xcc, 0xcc,
        ];
        assert_eq!(returns(&code, 0x100), vec![0x104, 0x106]);
        assert_eq!(uvarint(&[0x88, 0x01]), Some((136, 2)));
        assert_eq!(uvarint(&[0x80; 11]), None);
    }
}
