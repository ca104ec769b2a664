//! Locate BoringSSL's `SSL_read`, `SSL_write` and `SSL_do_handshake` in a
//! stripped, statically linked x86-64 ELF (e.g. Bun) so they can be uprobed.
//!
//! BoringSSL's `OPENSSL_PUT_ERROR(lib, reason)` expands to
//! `ERR_put_error(lib, 0, reason, __FILE__, __LINE__)`. Every call site
//! therefore materialises the address of the `".../ssl/ssl_lib.cc"` string of
//! a BoringSSL source tree (`vendor/boringssl/ssl/` in Bun,
//! `third_party/boringssl/src/ssl/` in Chromium) (`mov r32, imm32` in non-PIE builds, `lea r64, [rip+disp32]` in PIE
//! builds) together with immediate `lib`/`reason`/`line` arguments. We:
//!
//! 1. find the path string with `memmem` and map it to virtual addresses;
//! 2. make one linear pass over the executable segments for instructions that
//!    reference it (imm32 or rip-relative);
//! 3. walk back from each reference to the enclosing function's entry
//!    (16-byte aligned, preceded by `int3` padding or `ret`, plausible
//!    prologue);
//! 4. decode each such function from its entry, tracking register immediates,
//!    and record `(reason, line)` at every call that receives the string;
//! 5. identify the functions by their reason sets:
//!    * `SSL_write`: ⊇ {`ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED` 0x42,
//!      `SSL_R_UNINITIALIZED` 0xe2, `SSL_R_SSL_HANDSHAKE_FAILURE` 0xd7,
//!      `SSL_R_BAD_LENGTH` 0x6f};
//!    * `ssl_read_impl`: ⊇ {0xe2, 0xd7}, without 0x42 / 0x6f;
//!    * `SSL_read`: exactly {0x42} and calls `ssl_read_impl`;
//!    * `SSL_do_handshake`: exactly {`SSL_R_CONNECTION_TYPE_NOT_SET` 0x86};
//!      if several, the one called from `SSL_write` / `ssl_read_impl`.
//!
//! Only small windows (one function body each) are ever disassembled.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use mcptap_abi::BORINGSSL_PROBES;

use super::{Library, Plan};
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader as _, ProgramHeader as _};
use object::{Endianness, FileKind};

/// Entry points found in the binary, as FILE offsets of each function's first
/// instruction (what a uprobe `BINARY:0xOFFSET` expects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// `SSL_read(SSL *ssl, void *buf, int num)`.
    pub ssl_read: u64,
    /// `SSL_write(SSL *ssl, const void *buf, int num)`.
    pub ssl_write: u64,
    /// `SSL_do_handshake(SSL *ssl)`, when it could be identified uniquely.
    pub ssl_do_handshake: Option<u64>,
}

/// Why [`find_detailed`] could not produce a [`Found`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// Not an x86-64 ELF (e.g. another architecture).
    NotX86_64,
    /// No `boringssl/ssl/ssl_lib.cc` string, or no code referencing it.
    NoErrorSites,
    /// A function could not be identified uniquely; the string says which and
    /// how many candidates there were.
    Ambiguous(String),
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::NotX86_64 => f.write_str("not an x86-64 ELF"),
            Miss::NoErrorSites => f.write_str("no BoringSSL ssl_lib.cc error sites"),
            Miss::Ambiguous(s) => write!(f, "ambiguous: {s}"),
        }
    }
}

/// Find BoringSSL's `SSL_read`, `SSL_write` and `SSL_do_handshake`.
///
/// Returns `Ok(None)` when the binary has no BoringSSL `ssl_lib.cc` error
/// sites (not BoringSSL, or a build this cannot read) or the functions cannot
/// be identified uniquely; `Err` only for data that is not a well-formed ELF.
#[cfg(test)]
pub fn find(data: &[u8]) -> anyhow::Result<Option<Found>> {
    Ok(find_detailed(data)?.ok())
}

/// Like [`find`], but says why nothing was found.
pub fn find_detailed(data: &[u8]) -> anyhow::Result<Result<Found, Miss>> {
    let Some(segs) = load_segments(data)? else {
        return Ok(Err(Miss::NotX86_64));
    };
    let img = Image { data, segs };
    let strings = img.path_strings();
    if strings.is_empty() {
        return Ok(Err(Miss::NoErrorSites));
    }
    let funcs = img.error_functions(&strings);
    if funcs.is_empty() {
        return Ok(Err(Miss::NoErrorSites));
    }
    Ok(identify(&img, &funcs))
}

/// `ERR_LIB_SSL`.
const LIB_SSL: u64 = 0x10;
/// `ERR_R_SHOULD_NOT_HAVE_BEEN_CALLED`.
const R_NOT_CALLED: u64 = 0x42;
/// `SSL_R_BAD_LENGTH`.
const R_BAD_LENGTH: u64 = 0x6f;
/// `SSL_R_SSL_HANDSHAKE_FAILURE`.
const R_HS_FAILURE: u64 = 0xd7;
/// `SSL_R_UNINITIALIZED`.
const R_UNINIT: u64 = 0xe2;
/// `SSL_R_CONNECTION_TYPE_NOT_SET`.
const R_CONN_TYPE_NOT_SET: u64 = 0x86;

/// The end of the path of `ssl_lib.cc`, whose whole path must name a `boringssl` directory
/// (Bun's `.../boringssl/ssl/ssl_lib.cc`, Chromium's `.../boringssl/src/ssl/ssl_lib.cc`).
const NEEDLE: &[u8] = b"/ssl/ssl_lib.cc\0";
/// What the path before [`NEEDLE`] must contain.
const TREE: &[u8] = b"boringssl";
/// Furthest we walk back from an error site looking for the function entry.
const MAX_FUNC_WALK: u64 = 0x4000;
/// Longest function body we decode.
const MAX_FUNC_LEN: u64 = 0x4000;

/// A `PT_LOAD` segment: file range and its virtual address.
#[derive(Debug, Clone, Copy)]
struct Seg {
    vaddr: u64,
    offset: u64,
    filesz: u64,
    exec: bool,
}

/// Parse the program headers; `Ok(None)` for a non-x86-64 ELF.
fn load_segments(data: &[u8]) -> anyhow::Result<Option<Vec<Seg>>> {
    match FileKind::parse(data).context("not an ELF file")? {
        FileKind::Elf64 => {}
        FileKind::Elf32 => return Ok(None),
        other => anyhow::bail!("not an ELF file ({other:?})"),
    }
    let hdr = FileHeader64::<Endianness>::parse(data).context("bad ELF header")?;
    let e = hdr.endian().context("bad ELF endianness")?;
    if hdr.e_machine(e) != elf::EM_X86_64 {
        return Ok(None);
    }
    let phdrs = hdr
        .program_headers(e, data)
        .context("bad program headers")?;
    let len = data.len() as u64;
    let segs = phdrs
        .iter()
        .filter(|p| p.p_type(e) == elf::PT_LOAD)
        .map(|p| Seg {
            vaddr: p.p_vaddr(e),
            offset: p.p_offset(e),
            filesz: p.p_filesz(e),
            exec: p.p_flags(e) & elf::PF_X != 0,
        })
        .filter(|s| s.offset.checked_add(s.filesz).is_some_and(|end| end <= len))
        .filter(|s| s.vaddr.checked_add(s.filesz).is_some())
        .collect();
    Ok(Some(segs))
}

/// The file plus its loadable segments.
struct Image<'a> {
    data: &'a [u8],
    segs: Vec<Seg>,
}

/// One `ERR_put_error` call: (reason, line).
#[doc(hidden)]
pub type Site = (u64, Option<u64>);

/// Error sites grouped by function entry vaddr.
type Funcs = BTreeMap<u64, Vec<Site>>;

/// Inclusive-exclusive vaddr range whose references count as "the path string".
#[derive(Debug, Clone, Copy)]
struct StrRange {
    lo: u64,
    hi: u64,
}

impl Image<'_> {
    fn vaddr_to_off(&self, va: u64) -> Option<u64> {
        self.segs
            .iter()
            .find(|s| va >= s.vaddr && va - s.vaddr < s.filesz)
            .map(|s| s.offset + (va - s.vaddr))
    }

    /// Executable bytes starting at `va`, at most `len` long.
    fn code_at(&self, va: u64, len: u64) -> Option<&[u8]> {
        let s = self
            .segs
            .iter()
            .find(|s| s.exec && va >= s.vaddr && va - s.vaddr < s.filesz)?;
        let start = s.offset + (va - s.vaddr);
        let end = s.offset + s.filesz.min((va - s.vaddr).saturating_add(len));
        self.data.get(start as usize..end as usize)
    }

    /// Virtual address ranges of every `.../boringssl/.../ssl/ssl_lib.cc`
    /// string: from the string's first byte up to the start of `/ssl/`, so that
    /// a reference to any suffix still naming the file counts. Read-only
    /// segments are searched first; executable ones only if that finds none.
    fn path_strings(&self) -> Vec<StrRange> {
        let mut out = Vec::new();
        for exec in [false, true] {
            for s in self.segs.iter().filter(|s| s.exec == exec) {
                let seg = &self.data[s.offset as usize..(s.offset + s.filesz) as usize];
                for pos in memchr::memmem::find_iter(seg, NEEDLE) {
                    let start = memchr::memrchr(0, &seg[..pos]).map_or(0, |z| z + 1);
                    if memchr::memmem::find(&seg[start..pos], TREE).is_none() {
                        continue;
                    }
                    let lo = s.vaddr + start as u64;
                    out.push(StrRange {
                        lo,
                        hi: lo + (pos - start) as u64 + 1,
                    });
                }
            }
            if !out.is_empty() {
                break;
            }
        }
        out
    }

    /// Group every error site naming the path string by enclosing function.
    fn error_functions(&self, strs: &[StrRange]) -> Funcs {
        let refs = self.string_refs(strs);
        let mut by_func: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for r in refs {
            if let Some(f) = self.function_start(r) {
                by_func.entry(f).or_default().push(r);
            }
        }
        let mut out = Funcs::new();
        for (f, refs) in by_func {
            let sites = self.sites_in(f, &refs, strs);
            if !sites.is_empty() {
                out.insert(f, sites);
            }
        }
        out
    }
}

/// Does `v` fall in one of the string ranges?
fn is_str(strs: &[StrRange], v: u64) -> bool {
    strs.iter().any(|s| v >= s.lo && v < s.hi)
}

impl Image<'_> {
    /// Vaddrs of instructions referencing the string: one pass per executable
    /// segment for `lea r64,[rip+disp32]`, plus `memmem` for each imm32.
    fn string_refs(&self, strs: &[StrRange]) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        for s in self.segs.iter().filter(|s| s.exec) {
            let code = &self.data[s.offset as usize..(s.offset + s.filesz) as usize];
            scan_rip_rel(code, s.vaddr, strs, &mut out);
            scan_imm32(code, s.vaddr, strs, &mut out);
        }
        out
    }
}

/// Find `[REX.W] 8d modrm(mod=00,rm=101) disp32` whose target is the string.
fn scan_rip_rel(code: &[u8], base: u64, strs: &[StrRange], out: &mut BTreeSet<u64>) {
    for q in memchr::memchr_iter(0x8d, code) {
        let (Some(&modrm), Some(d)) = (code.get(q + 1), code.get(q + 2..q + 6)) else {
            continue;
        };
        if q == 0 || modrm & 0xc7 != 0x05 || code[q - 1] & 0xf8 != 0x48 {
            continue;
        }
        let disp = i32::from_le_bytes([d[0], d[1], d[2], d[3]]) as i64;
        let next = base + q as u64 + 6;
        if is_str(strs, next.wrapping_add_signed(disp)) {
            out.insert(base + q as u64 - 1);
        }
    }
}

/// Find `mov r32, imm32` (`b8+r`, optionally REX.B) / `mov r/m64, simm32`
/// (`48 c7 c0+r`) whose immediate is the string's (first-byte) address.
fn scan_imm32(code: &[u8], base: u64, strs: &[StrRange], out: &mut BTreeSet<u64>) {
    for s in strs {
        let Ok(imm) = u32::try_from(s.lo) else {
            continue;
        };
        for p in memchr::memmem::find_iter(code, &imm.to_le_bytes()) {
            let at = |k: usize| p.checked_sub(k).and_then(|i| code.get(i)).copied();
            let start = match (at(3), at(2), at(1)) {
                (_, Some(0x41), Some(0xb8..=0xbf)) => p - 2,
                (_, _, Some(0xb8..=0xbf)) => p - 1,
                (Some(0x48 | 0x49), Some(0xc7), Some(0xc0..=0xc7)) => p - 3,
                _ => continue,
            };
            out.insert(base + start as u64);
        }
    }
}

/// Register values known from immediates, indexed by GPR number.
#[derive(Default, Clone)]
struct Regs([Option<u64>; 16]);

/// GPR number (rax=0 … r15=15) of any-width general purpose register.
fn gpr(r: Register) -> Option<usize> {
    let n = r as usize;
    let (al, ah, bh, spl, r15l) = (
        Register::AL as usize,
        Register::AH as usize,
        Register::BH as usize,
        Register::SPL as usize,
        Register::R15L as usize,
    );
    let (ax, r15w, eax, r15d, rax, r15) = (
        Register::AX as usize,
        Register::R15W as usize,
        Register::EAX as usize,
        Register::R15D as usize,
        Register::RAX as usize,
        Register::R15 as usize,
    );
    match n {
        _ if (al..ah).contains(&n) => Some(n - al),
        _ if (ah..=bh).contains(&n) => Some(n - ah),
        _ if (spl..=r15l).contains(&n) => Some(n - spl + 4),
        _ if (ax..=r15w).contains(&n) => Some(n - ax),
        _ if (eax..=r15d).contains(&n) => Some(n - eax),
        _ if (rax..=r15).contains(&n) => Some(n - rax),
        _ => None,
    }
}

const RDI: usize = 7;
const RSI: usize = 6;
const RDX: usize = 2;
const RCX: usize = 1;
const R8: usize = 8;

impl Regs {
    /// Update for one instruction (conservatively forgets written registers).
    fn step(&mut self, ins: &Instruction) {
        let dst = if ins.op_count() >= 1 && ins.op0_kind() == OpKind::Register {
            gpr(ins.op0_register())
        } else {
            None
        };
        let Some(d) = dst else { return };
        let val = match ins.mnemonic() {
            Mnemonic::Mov if ins.op_count() == 2 => ins.try_immediate(1).ok(),
            Mnemonic::Lea if ins.is_ip_rel_memory_operand() => Some(ins.ip_rel_memory_address()),
            Mnemonic::Xor
                if ins.op1_kind() == OpKind::Register && gpr(ins.op1_register()) == Some(d) =>
            {
                Some(0)
            }
            Mnemonic::Cmp | Mnemonic::Test | Mnemonic::Push => return,
            _ => None,
        };
        // 32-bit immediates zero-extend; keep what iced reports.
        self.0[d] = val;
    }

    /// If this is an `ERR_put_error(lib, [0,] reason, file, line)` call with
    /// the path string, return (reason, line).
    fn error_site(&self, strs: &[StrRange]) -> Option<Site> {
        let r = &self.0;
        let holds = |i: usize| r[i].is_some_and(|v| is_str(strs, v));
        let (reason, line) = if holds(RCX) {
            (r[RDX], r[R8])
        } else if holds(RDX) {
            (r[RSI], r[RCX])
        } else {
            return None;
        };
        if r[RDI].is_some_and(|l| l != LIB_SSL) {
            return None;
        }
        Some((reason?, line))
    }
}

/// Is the instruction a plausible function entry?
fn plausible_prologue(ins: &Instruction) -> bool {
    let reg0 =
        || (ins.op_count() >= 1 && ins.op0_kind() == OpKind::Register).then(|| ins.op0_register());
    match ins.mnemonic() {
        Mnemonic::Endbr64 => true,
        Mnemonic::Push => matches!(
            reg0(),
            Some(
                Register::RBP
                    | Register::RBX
                    | Register::R12
                    | Register::R13
                    | Register::R14
                    | Register::R15
            )
        ),
        Mnemonic::Sub => reg0() == Some(Register::RSP),
        _ => false,
    }
}

impl Image<'_> {
    /// Decode one instruction at `va`.
    fn decode_one(&self, va: u64) -> Option<Instruction> {
        let code = self.code_at(va, 16)?;
        let mut dec = Decoder::with_ip(64, code, va, DecoderOptions::NONE);
        let ins = dec.decode();
        (!ins.is_invalid()).then_some(ins)
    }

    fn byte_at(&self, va: u64) -> Option<u8> {
        let off = self.vaddr_to_off(va)?;
        self.data.get(off as usize).copied()
    }

    /// Entry of the function containing `site`: the nearest 16-byte aligned
    /// address at or before it that follows `int3` padding (or a `ret` with a
    /// `push rbp; mov rbp, rsp` frame prologue) and decodes as a prologue.
    fn function_start(&self, site: u64) -> Option<u64> {
        let mut va = site & !0xf;
        let floor = site.saturating_sub(MAX_FUNC_WALK);
        while va > floor {
            let prev = self.byte_at(va - 1);
            if matches!(prev, Some(0xcc | 0xc3)) {
                let ok = self.decode_one(va).is_some_and(|i| plausible_prologue(&i));
                let framed = prev == Some(0xcc)
                    || self.code_at(va, 4) == Some(&[0x55, 0x48, 0x89, 0xe5][..]);
                if ok && framed {
                    return Some(va);
                }
            }
            va -= 16;
        }
        None
    }

    /// Decode `f` from its entry through the last reference (plus the call
    /// that follows it) and collect the error sites. References that the
    /// linear decode does not land on exactly are ignored.
    fn sites_in(&self, f: u64, refs: &[u64], strs: &[StrRange]) -> Vec<Site> {
        let last = refs.iter().copied().max().unwrap_or(f);
        let Some(code) = self.code_at(f, (last - f).saturating_add(96)) else {
            return Vec::new();
        };
        let mut dec = Decoder::with_ip(64, code, f, DecoderOptions::NONE);
        let mut regs = Regs::default();
        let mut sites = Vec::new();
        let mut ins = Instruction::default();
        let mut pending = 0usize; // references seen, awaiting their call
        while dec.can_decode() {
            dec.decode_out(&mut ins);
            if ins.is_invalid() || ins.mnemonic() == Mnemonic::Int3 {
                break;
            }
            pending += usize::from(refs.contains(&ins.ip()));
            match ins.mnemonic() {
                Mnemonic::Call | Mnemonic::Jmp => {
                    if let Some(s) = regs.error_site(strs) {
                        sites.push(s);
                        pending = pending.saturating_sub(1);
                    }
                    regs = Regs::default();
                }
                Mnemonic::Ret | Mnemonic::Ud2 => regs = Regs::default(),
                _ => regs.step(&ins),
            }
            if ins.ip() > last && pending == 0 {
                break;
            }
        }
        sites
    }

    /// Direct `call`/`jmp` targets in the function at `f` (up to the first
    /// `int3` or [`MAX_FUNC_LEN`] bytes).
    fn call_targets(&self, f: u64) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        let Some(code) = self.code_at(f, MAX_FUNC_LEN) else {
            return out;
        };
        let mut dec = Decoder::with_ip(64, code, f, DecoderOptions::NONE);
        let mut ins = Instruction::default();
        while dec.can_decode() {
            dec.decode_out(&mut ins);
            if ins.is_invalid() || ins.mnemonic() == Mnemonic::Int3 {
                break;
            }
            if matches!(ins.mnemonic(), Mnemonic::Call | Mnemonic::Jmp)
                && ins.op0_kind() == OpKind::NearBranch64
            {
                out.insert(ins.near_branch_target());
            }
        }
        out
    }
}

/// Reason set of one function.
fn reasons(sites: &[Site]) -> BTreeSet<u64> {
    sites.iter().map(|s| s.0).collect()
}

/// Exactly one element, else a [`Miss::Ambiguous`] naming `what`.
fn only(what: &str, v: Vec<u64>) -> Result<u64, Miss> {
    match v.as_slice() {
        [one] => Ok(*one),
        _ => Err(Miss::Ambiguous(format!(
            "{} candidates for {what}",
            v.len()
        ))),
    }
}

/// Identify the functions from their reason sets (see the module docs).
fn identify(img: &Image<'_>, funcs: &Funcs) -> Result<Found, Miss> {
    let has = |f: &u64, want: &[u64]| {
        let r = reasons(&funcs[f]);
        want.iter().all(|w| r.contains(w))
    };
    let lacks = |f: &u64, bad: &[u64]| {
        let r = reasons(&funcs[f]);
        bad.iter().all(|b| !r.contains(b))
    };
    let exactly = |f: &u64, want: u64| reasons(&funcs[f]) == BTreeSet::from([want]);
    let write_all = [R_NOT_CALLED, R_UNINIT, R_HS_FAILURE, R_BAD_LENGTH];
    let write = only(
        "SSL_write",
        funcs
            .keys()
            .filter(|f| has(f, &write_all))
            .copied()
            .collect(),
    )?;
    let impls: BTreeSet<u64> = funcs
        .keys()
        .filter(|f| has(f, &[R_UNINIT, R_HS_FAILURE]) && lacks(f, &[R_NOT_CALLED, R_BAD_LENGTH]))
        .copied()
        .collect();
    let read = only(
        "SSL_read",
        funcs
            .keys()
            .filter(|f| exactly(f, R_NOT_CALLED))
            .filter(|f| !img.call_targets(**f).is_disjoint(&impls))
            .copied()
            .collect(),
    )?;
    // SSL_do_handshake must also be called from SSL_write or ssl_read_impl.
    let mut callees = img.call_targets(write);
    impls
        .iter()
        .for_each(|i| callees.extend(img.call_targets(*i)));
    let hs: Vec<u64> = funcs
        .keys()
        .filter(|f| exactly(f, R_CONN_TYPE_NOT_SET) && callees.contains(f))
        .copied()
        .collect();
    let off = |va: u64| img.vaddr_to_off(va).ok_or(Miss::NoErrorSites);
    Ok(Found {
        ssl_read: off(read)?,
        ssl_write: off(write)?,
        ssl_do_handshake: only("SSL_do_handshake", hs)
            .ok()
            .and_then(|h| img.vaddr_to_off(h)),
    })
}

/// BoringSSL is linked into executables, which are always examined: no mapped library is.
pub fn maybe_in(_path: &str) -> bool {
    false
}

/// No BoringSSL in the system's library directories.
pub fn system_libraries() -> Vec<std::path::PathBuf> {
    Vec::new()
}

/// Where the probes go in a binary with BoringSSL and none of its names: the three functions
/// found by their error sites; `None` when they are not all there.
pub fn plan(data: &[u8]) -> anyhow::Result<Option<Plan>> {
    let found = match find_detailed(data) {
        Ok(Ok(found)) => found,
        Ok(Err(Miss::NotX86_64 | Miss::NoErrorSites)) => return Ok(None),
        Ok(Err(Miss::Ambiguous(why))) => {
            log::debug!("TLS: BoringSSL error sites, but no functions to probe: {why}");
            return Ok(None);
        }
        // Not an ELF file this can read: nothing of BoringSSL in it.
        Err(_) => return Ok(None),
    };
    let at = |symbol: &str| match symbol {
        "SSL_read" => Some(found.ssl_read),
        "SSL_write" => Some(found.ssl_write),
        _ => found.ssl_do_handshake,
    };
    let probes: Vec<_> = BORINGSSL_PROBES
        .iter()
        .filter_map(|&(symbol, prog, _)| Some((prog, at(symbol)?, symbol)))
        .collect();
    Ok(Some(Plan {
        library: Library::BoringSsl,
        mode: "found",
        detail: format!(
            "SSL_read at {:#x}, SSL_write at {:#x}, SSL_do_handshake at {}, found by their \
             error sites",
            found.ssl_read,
            found.ssl_write,
            found
                .ssl_do_handshake
                .map_or("(not found)".into(), |h| format!("{h:#x}")),
        ),
        probes,
        blocked: None,
        carries_data: true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Bun the peers' cache holds (`cargo xtask peers`): (SSL_read, SSL_write,
    /// SSL_do_handshake) file offsets, found by hand in Bun 1.4.4 (its error sites' lines
    /// match BoringSSL's ssl_lib.cc) and checked live with tracefs uprobes on a fetch and on
    /// Bun.serve. Bun 1.4.5 (0x237e500, 0x23ffc30, 0x23640c0) and 1.2.0 (0x593e5e0,
    /// 0x593f2c0, 0x593dec0, whose error calls pass the file in another register) were
    /// found the same way.
    const BUNS: [(&str, u64, u64, u64); 1] = [("1.4.4", 0x265f3b0, 0x26f55c0, 0x2644040)];

    fn bun_path() -> std::path::PathBuf {
        std::env::var_os("MCPTAP_PEERS")
            .map_or_else(
                || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/peers"),
                std::path::PathBuf::from,
            )
            .join("node/node_modules/bun/bin/bun.exe")
    }

    #[test]
    fn bun_versions() {
        for (dir, read, write, hs) in BUNS {
            let path = bun_path();
            let data = std::fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "no Bun at {}: {e} (`cargo xtask peers` installs it)",
                    path.display()
                )
            });
            let t = std::time::Instant::now();
            let found = find(&data).unwrap().expect("Bun has BoringSSL");
            eprintln!("{dir}: {found:x?} in {:?}", t.elapsed());
            assert_eq!(found.ssl_read, read, "{dir} SSL_read");
            assert_eq!(found.ssl_write, write, "{dir} SSL_write");
            assert_eq!(found.ssl_do_handshake, Some(hs), "{dir} SSL_do_handshake");
        }
    }

    #[test]
    fn non_boringssl_is_none() {
        let data = std::fs::read("/bin/ls").unwrap();
        assert_eq!(find(&data).unwrap(), None);
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        assert!(find(&[]).is_err());
        assert!(find(&rnd(4096)).is_err());
        // A valid image with random bytes mutated everywhere after the header.
        let good = synth(true, BUN);
        for round in 0..200 {
            let mut d = good.clone();
            let noise = rnd(d.len());
            for (i, b) in d
                .iter_mut()
                .enumerate()
                .skip(if round % 2 == 0 { 64 } else { 0 })
            {
                if noise[i] < 16 {
                    *b = noise[(i + 1) % noise.len()];
                }
            }
            let _ = find(&d);
            d.truncate(noise[0] as usize * 17 % good.len());
            let _ = find(&d);
        }
    }

    /// `ssl_lib.cc`'s path as Bun's build of BoringSSL has it.
    const BUN: &[u8] = b"/src/vendor/boringssl/ssl/ssl_lib.cc\0";

    /// Chromium's tree (and Electron's) keeps BoringSSL's sources one level down; another
    /// library's `ssl/ssl_lib.cc` is not BoringSSL's.
    #[test]
    fn chromium_tree_is_boringssl_and_another_tree_is_not() {
        let chromium = b"../../third_party/boringssl/src/ssl/ssl_lib.cc\0";
        let f = find(&synth(true, chromium)).unwrap().expect("found");
        assert_eq!(f.ssl_read, 0x1300);
        assert_eq!(f.ssl_write, 0x1400);
        let other = b"../../third_party/wolfssl/src/ssl/ssl_lib.cc\0";
        assert!(find(&synth(true, other)).unwrap().is_none());
    }

    #[test]
    fn synthetic_pie_both_layouts() {
        for new_layout in [true, false] {
            let f = find(&synth(new_layout, BUN)).unwrap().expect("found");
            assert_eq!(
                f,
                Found {
                    ssl_read: 0x1300,
                    ssl_write: 0x1400,
                    ssl_do_handshake: Some(0x1100),
                },
                "new_layout={new_layout}"
            );
        }
    }

    /// A tiny PIE-style ELF: R segment with the path string at 0x200, RX
    /// segment at file 0x1000 / vaddr 0x11000 with hs, impl, read, write, err
    /// in 0x100-byte slots from 0x11100, each referencing the string with `lea [rip+..]`.
    fn synth(new_layout: bool, path: &[u8]) -> Vec<u8> {
        const CODE: u64 = 0x11000;
        const STR: u64 = 0x200;
        let slot = |i: u64| CODE + (i + 1) * 0x100; // slot 0: int3 padding
        let mut d = vec![0u8; 0x2000];
        d[STR as usize..STR as usize + path.len()].copy_from_slice(path);
        elf_header(&mut d, CODE);
        d[0x1000..].fill(0xcc);
        let funcs: [(&[u64], &[u64]); 5] = [
            (&[R_CONN_TYPE_NOT_SET], &[]),
            (&[R_UNINIT, R_HS_FAILURE], &[0]),
            (&[R_NOT_CALLED], &[1]),
            (&[R_NOT_CALLED, R_UNINIT, R_HS_FAILURE, R_BAD_LENGTH], &[0]),
            (&[], &[]),
        ];
        for (i, (reasons, calls)) in funcs.iter().enumerate() {
            let base = slot(i as u64);
            let mut c = vec![0x55, 0x48, 0x89, 0xe5];
            for (n, r) in reasons.iter().enumerate() {
                let r = *r as u32;
                let at = base + c.len() as u64 + 7;
                let disp = (STR as i64 - at as i64) as i32;
                let line = 100 + n as u32;
                if new_layout {
                    c.extend([0x48, 0x8d, 0x0d]); // lea rcx,[rip+d]
                    c.extend(disp.to_le_bytes());
                    c.extend([0xbf, 0x10, 0, 0, 0, 0x31, 0xf6, 0xba]); // edi, esi, edx=
                    c.extend(r.to_le_bytes());
                    c.extend([0x41, 0xb8]); // r8d=line
                    c.extend(line.to_le_bytes());
                } else {
                    c.extend([0x48, 0x8d, 0x15]); // lea rdx,[rip+d]
                    c.extend(disp.to_le_bytes());
                    c.extend([0xbf, 0x10, 0, 0, 0, 0xbe]); // edi, esi=
                    c.extend(r.to_le_bytes());
                    c.push(0xb9); // ecx=line
                    c.extend(line.to_le_bytes());
                }
                call(&mut c, base, slot(4));
            }
            for t in *calls {
                call(&mut c, base, slot(*t));
            }
            c.extend([0x5d, 0xc3]);
            let off = 0x1000 + (i + 1) * 0x100;
            d[off..off + c.len()].copy_from_slice(&c);
        }
        d
    }

    fn call(c: &mut Vec<u8>, base: u64, target: u64) {
        let next = base + c.len() as u64 + 5;
        c.push(0xe8);
        c.extend(((target as i64 - next as i64) as i32).to_le_bytes());
    }

    fn elf_header(d: &mut [u8], code: u64) {
        let put = |d: &mut [u8], at: usize, v: &[u8]| d[at..at + v.len()].copy_from_slice(v);
        put(d, 0, &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
        put(d, 16, &3u16.to_le_bytes()); // ET_DYN
        put(d, 18, &62u16.to_le_bytes()); // EM_X86_64
        put(d, 20, &1u32.to_le_bytes());
        put(d, 32, &64u64.to_le_bytes()); // e_phoff
        put(d, 52, &64u16.to_le_bytes()); // e_ehsize
        put(d, 54, &56u16.to_le_bytes()); // e_phentsize
        put(d, 56, &2u16.to_le_bytes()); // e_phnum
        put(d, 58, &64u16.to_le_bytes()); // e_shentsize
        for (i, (flags, off, va)) in [(4u32, 0u64, 0u64), (5, 0x1000, code)].iter().enumerate() {
            let p = 64 + i * 56;
            put(d, p, &1u32.to_le_bytes()); // PT_LOAD
            put(d, p + 4, &flags.to_le_bytes());
            put(d, p + 8, &off.to_le_bytes());
            put(d, p + 16, &va.to_le_bytes());
            put(d, p + 24, &va.to_le_bytes());
            put(d, p + 32, &0x1000u64.to_le_bytes());
            put(d, p + 40, &0x1000u64.to_le_bytes());
            put(d, p + 48, &0x1000u64.to_le_bytes());
        }
    }
}
