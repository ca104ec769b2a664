//! Where OpenSSL lives, and the uprobes that capture TLS plaintext from it.
//!
//! The kernel programs (`ssl_*`, `bio_write_enter`) go on the functions named in
//! [`mcptap_abi::TLS_PROBES`], in every binary that exports them: the shared `libssl` and
//! `libcrypto` (Python, curl), or a program with OpenSSL linked in (`node`). A uprobe is set on
//! an inode, so one library reached through several paths or mount namespaces is one target,
//! identified by (device, inode).
//!
//! Watching every process, each such binary is probed once for all processes: the system's
//! OpenSSL libraries and whatever the running processes have mapped at start, then each new
//! program at its exec. With `--comm`/`--pid` the probes are set per watched process instead,
//! so unwatched processes never take the uprobe trap: the system libraries (a process may load
//! them later, as Python loads `_ssl` on first use) and what the process has mapped. A TLS
//! socket in a process whose OpenSSL was not probed yet (a library loaded from an unusual
//! path, a child that forked without exec) brings a fresh look at its mappings, so its later
//! connections are covered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroU32;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context as _, Result};
use aya::Ebpf;
use aya::maps::{Array, MapData, ProgramArray};
use aya::programs::UProbe;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLink, UProbeLinkId, UProbeScope};
use log::{debug, info};
use mcptap_abi::{TAIL_SHIP_MORE, TLS_PROBES, names};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// A file's identity: what a uprobe is really attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// Where the probes go in a binary with OpenSSL.
type Offsets = Rc<Plan>;

/// The symbols probed, each once.
fn probed_symbols() -> Vec<&'static str> {
    let mut v: Vec<&str> = Vec::new();
    let wrappers = INTERNAL.iter().flat_map(|w| [w.0, w.1]);
    for symbol in TLS_PROBES.iter().map(|p| p.0).chain(wrappers) {
        if !v.contains(&symbol) {
            v.push(symbol);
        }
    }
    v
}

/// A file mapped read-only: the symbol tables of a 100 MB `node` are read in place, without
/// a copy and without a read per symbol name.
struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    fn open(path: &Path) -> std::io::Result<Mapped> {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
        // Shared, not private: the kernel writes the breakpoints of uprobes already on the
        // file (another tracer's, or a previous agent's still being released) into every
        // private mapping that may execute, so a private one would show their int3 where
        // the code's first instruction is. It never writes them into shared mappings.
        // SAFETY: a fresh read-only mapping of a file we opened; unmapped on drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` readable bytes at `ptr` for as long as the mapping lives.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// File offsets of the probed functions that `path` exports in its dynamic symbol table (the
/// offset is what a uprobe is set at: the symbol's address translated through its section),
/// and where each one's code is in the file: `(symbol, offset, end of its section)`.
fn exported_offsets_in(data: &[u8]) -> Result<Vec<(&'static str, u64, u64)>> {
    let obj = object::File::parse(data)?;
    let wanted = probed_symbols();
    let mut out = Vec::new();
    for sym in obj.dynamic_symbols() {
        if !sym.is_definition() {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let Some(&wanted) = wanted.iter().find(|w| **w == name) else {
            continue;
        };
        let Some(index) = sym.section_index() else {
            continue;
        };
        let section = obj.section_by_index(index)?;
        let Some((offset, size)) = section.file_range() else {
            continue;
        };
        let at = sym.address() - section.address() + offset;
        out.push((wanted, at, offset + size));
    }
    Ok(out)
}

#[cfg(test)]
fn exported_offsets(path: &Path) -> Result<Vec<(&'static str, u64)>> {
    let data = Mapped::open(path)?;
    Ok(exported_offsets_in(data.bytes())?
        .into_iter()
        .map(|(s, o, _)| (s, o))
        .collect())
}

/// Where the uprobes go in one binary: `(program, file offset, what is probed there)`.
#[derive(Debug, Default)]
struct Plan {
    probes: Vec<(&'static str, u64, &'static str)>,
    /// How `SSL_read`/`SSL_write` are probed: [`Mode::Internal`] on the internal functions
    /// both forms call, or [`Mode::Exported`] on the exported symbols.
    ssl: Option<Mode>,
    /// How `BIO_write` is probed.
    bio: Option<Mode>,
}

impl Plan {
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
enum Mode {
    /// At the entry of the internal function that the exported wrappers call, an instruction
    /// (`push`) the kernel emulates: no single-step per hit.
    Internal,
    /// At the exported symbols (single-stepped when their first instruction is not one the
    /// kernel emulates).
    Exported,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Internal => "internal",
            Mode::Exported => "exported",
        }
    }
}

/// How far into an exported function the call to its internal function is looked for.
const WRAPPER_SCAN: usize = 96;

/// Whether `code` starts with an instruction x86 uprobes emulate rather than single-step, of
/// those a function begins with: `push %reg` (with or without a REX.B prefix).
fn emulated_entry(code: &[u8]) -> bool {
    matches!(code, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..])
}

/// The target (relative to the start of `code`) of the first instruction of `code` when it
/// is a wrapper that passes its register arguments on unchanged: only `push %reg`, `sub
/// $imm8,%rsp` and copies of registers into callee-saved ones (`mov %reg,%rbx/%rbp/%r12-15`)
/// before a `call rel32`. The callee then receives exactly the wrapper's arguments, whatever
/// its declared signature says.
fn passthrough_call(code: &[u8]) -> Option<i64> {
    let mut i = 0;
    while i < 32 {
        match code.get(i..)? {
            [0x50..=0x57, ..] => i += 1,
            [0x41, 0x50..=0x57, ..] => i += 2,
            // sub $imm8,%rsp
            [0x48, 0x83, 0xec, _, ..] => i += 4,
            // mov %r64,%r64 (89 /r, register form) into rbx, rbp or r12-r15.
            [rex @ (0x48 | 0x49 | 0x4c | 0x4d), 0x89, modrm, ..] if modrm >> 6 == 3 => {
                let rm = (modrm & 7) | if rex & 1 != 0 { 8 } else { 0 };
                if !matches!(rm, 3 | 5 | 12..=15) {
                    return None;
                }
                i += 3;
            }
            [0xe8, a, b, c, d, ..] => {
                let rel = i32::from_le_bytes([*a, *b, *c, *d]) as i64;
                return Some(i as i64 + 5 + rel);
            }
            _ => return None,
        }
    }
    None
}

/// Whether `code` has a `call rel32` to `target` (relative to the start of `code`) in its
/// first [`WRAPPER_SCAN`] bytes.
fn calls(code: &[u8], target: i64) -> bool {
    let n = code.len().min(WRAPPER_SCAN);
    (0..n).any(|i| {
        code.get(i..i + 5).is_some_and(|c| {
            c[0] == 0xe8
                && i as i64 + 5 + i32::from_le_bytes([c[1], c[2], c[3], c[4]]) as i64 == target
        })
    })
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
fn plan(data: &[u8]) -> Result<Plan> {
    let exported = exported_offsets_in(data)?;
    let find = |s: &str| exported.iter().find(|(n, _, _)| *n == s).copied();
    let mut plan = Plan::default();
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
    for (symbol, prog, _) in TLS_PROBES {
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
    Ok(plan)
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
fn maybe_openssl(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.contains("ssl") || name.contains("crypto")
}

/// The executable mappings of `pid` that may hold OpenSSL, as paths through the process's own
/// root (right inside a container too).
fn mapped_libraries(pid: u32) -> Vec<PathBuf> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path
        let mut f = line.split_whitespace();
        let perms = f.nth(1).unwrap_or("");
        let path = f.nth(3).unwrap_or("");
        if !perms.contains('x') || !path.starts_with('/') || line.ends_with("(deleted)") {
            continue;
        }
        if maybe_openssl(path) {
            let p = PathBuf::from(format!("/proc/{pid}/root{path}"));
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// The program `pid` runs, through its own root (right inside a container too), or through
/// ours if the process has gone meanwhile (its binary is still worth probing for the next run).
fn program(pid: u32) -> Option<PathBuf> {
    let target = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let own = PathBuf::from(format!("/proc/{pid}/root{}", target.display()));
    if own.exists() {
        Some(own)
    } else {
        target.exists().then_some(target)
    }
}

/// The system's OpenSSL libraries: `libssl.so*` and `libcrypto.so*` in the usual library
/// directories.
fn system_libraries() -> Vec<PathBuf> {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    let mut dirs = vec![
        PathBuf::from("/lib"),
        PathBuf::from("/lib64"),
        PathBuf::from("/usr/lib"),
        PathBuf::from("/usr/lib64"),
        PathBuf::from("/usr/local/lib"),
        PathBuf::from("/usr/local/lib64"),
    ];
    dirs.push(Path::new("/lib").join(&triplet));
    dirs.push(Path::new("/usr/lib").join(&triplet));
    let mut out = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if (name.starts_with("libssl.so") || name.starts_with("libcrypto.so"))
                && e.path().is_file()
            {
                out.push(e.path());
            }
        }
    }
    out
}

/// The probes attached to one file, by program.
type Links = Vec<(&'static str, UProbeLinkId)>;

/// Who a set of links was attached for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Owner {
    /// Every process (all-process mode).
    All,
    /// One process (`--comm`/`--pid`).
    Pid(u32),
}

/// The OpenSSL probes: which binaries have been looked at, and what is attached where.
pub struct Tls {
    per_pid: bool,
    /// Every file looked at, and its offsets when it has OpenSSL functions.
    examined: HashMap<FileId, Option<Offsets>>,
    /// The system libraries with OpenSSL (probed for every watched process in per-pid mode).
    system: Vec<(FileId, PathBuf)>,
    /// Files attached, per owner, with their links (empty when attaching failed: not retried).
    links: HashMap<Owner, HashMap<FileId, Links>>,
    /// Files probed and attempts refused, for the start-up verdict.
    probed: usize,
    /// Every file probed since the start, and how (see [`Plan::mode`]): probes that are
    /// later taken off (a process exits, the agent stops) leave it here.
    probed_files: HashMap<FileId, &'static str>,
    refused: Option<anyhow::Error>,
    /// When each process's mappings were last looked at because of a TLS socket: a busy
    /// HTTPS server opens many, and its libraries rarely change.
    rescanned: HashMap<u32, std::time::Instant>,
    detacher: Detacher,
}

/// Uprobes leave off the capture thread: each detach waits for a kernel grace period (tens of
/// milliseconds here), so a watched process's exit, or the agent's stop, would otherwise hold
/// capture up for a second or more. Links are dropped (which detaches them) by a thread of
/// their own, many at once, since concurrent waits share their grace periods.
struct Detacher {
    tx: Option<std::sync::mpsc::Sender<Vec<UProbeLink>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Links dropped at once by the detacher.
const DETACH_AT_ONCE: usize = 8;

impl Detacher {
    fn start() -> Result<Detacher> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<UProbeLink>>();
        let thread = std::thread::Builder::new()
            .name("mcptap-detach".into())
            .spawn(move || {
                for mut batch in rx {
                    while !batch.is_empty() {
                        let n = batch.len().saturating_sub(DETACH_AT_ONCE);
                        let some = batch.split_off(n);
                        std::thread::scope(|s| {
                            for link in some {
                                s.spawn(move || drop(link));
                            }
                        });
                    }
                }
            })
            .context("starting the uprobe detacher")?;
        Ok(Detacher {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&self, links: Vec<UProbeLink>) {
        if links.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx
            && let Err(back) = tx.send(links)
        {
            // The thread is gone: detach here, slowly, rather than not at all.
            drop(back.0);
        }
    }

    /// Wait for every link sent to be detached.
    fn finish(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The kernel detaches uprobes one after another, each waiting for a grace period: measured
/// here, eleven probes took 1.24 s to close, ~110 ms each, longer on a loaded machine, and a
/// process's exit waits for its own fds to be released. So a stopping agent forks a child
/// that keeps a copy of the probes' fds (and of nothing else) and lets go of them once the
/// agent has exited: the agent's closes are then only reference drops and its stop is
/// bounded by its drain and flush, while the kernel finishes detaching in the child (named
/// `mcptap-release`, gone a second or so later). If the fork fails the agent detaches them
/// itself, slowly.
fn release_after_exit() {
    let mut pipe = [0i32; 2];
    // SAFETY: pipe(2) writes two fds into the array we pass.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    let max_fd = limit.rlim_cur.clamp(1024, 1 << 20) as i32;
    // SAFETY: the child runs only async-signal-safe calls (close, fcntl, readlink, read,
    // sigaction through signal, prctl, close_range, _exit) and never returns into Rust code.
    match unsafe { libc::fork() } {
        0 => unsafe { release_in_child(pipe[0], max_fd) },
        -1 => {
            log::debug!("stop: fork failed; the probes are detached by the agent");
            // SAFETY: closing the fds pipe(2) just gave us.
            unsafe {
                libc::close(pipe[0]);
                libc::close(pipe[1]);
            }
        }
        child => {
            log::debug!("stop: process {child} releases the probes once the agent has exited");
            // The write end stays open until this process exits: its closing is the signal.
            // SAFETY: closing our copy of the read end.
            unsafe { libc::close(pipe[0]) };
        }
    }
}

/// The child of [`release_after_exit`]: keep only the probes' fds and the pipe's read end,
/// wait for the agent to exit (end of file on the pipe), close them, exit.
///
/// # Safety
/// Only in the child of `fork`, with `read` the read end of a pipe whose write end only the
/// agent holds once every other fd is closed.
unsafe fn release_in_child(read: i32, max_fd: i32) -> ! {
    // SAFETY: plain syscalls on this process's own fds, signal dispositions and name.
    unsafe {
        for fd in 0..max_fd {
            if fd != read && libc::fcntl(fd, libc::F_GETFD) >= 0 && !is_probe_fd(fd) {
                libc::close(fd);
            }
        }
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::prctl(libc::PR_SET_NAME, c"mcptap-release".as_ptr());
        let mut byte = 0u8;
        loop {
            let r = libc::read(read, (&mut byte as *mut u8).cast(), 1);
            if r == 0 || (r < 0 && *libc::__errno_location() != libc::EINTR) {
                break;
            }
        }
        libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32);
        libc::_exit(0)
    }
}

/// Whether `fd` is a perf event or a BPF link: what attaches a probe. Written without
/// allocating (the caller is a forked child).
///
/// # Safety
/// Async-signal-safe; any fd number may be passed.
unsafe fn is_probe_fd(fd: i32) -> bool {
    let mut path = *b"/proc/self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd as u32, 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        path[14 + i] = digits[len - 1 - i];
    }
    let mut target = [0u8; 64];
    // SAFETY: readlink writes at most the buffer's length; the path is NUL-terminated.
    let got = unsafe { libc::readlink(path.as_ptr().cast(), target.as_mut_ptr().cast(), 64) };
    let target = &target[..got.max(0) as usize];
    target.starts_with(b"anon_inode:[perf_event]") || target.starts_with(b"anon_inode:bpf_link")
}

/// How long a TLS socket does not bring another look at the same process's mappings.
const RESCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Load the TLS programs and fill their tail-call slot.
fn load_programs(ebpf: &mut Ebpf) -> Result<()> {
    let mut loaded = HashSet::new();
    for (_, prog, _) in TLS_PROBES {
        if loaded.insert(prog) {
            uprobe(ebpf, prog)?
                .load()
                .with_context(|| format!("the kernel's verifier rejected {prog}"))?;
        }
    }
    let more = uprobe(ebpf, names::PROG_SSL_SHIP_MORE)?;
    more.load()
        .context("the kernel's verifier rejected ssl_ship_more")?;
    let fd = more.fd()?.try_clone()?;
    let mut tails = ProgramArray::try_from(ebpf.map_mut(names::TLS_TAILS).context("TLS_TAILS")?)?;
    tails.set(TAIL_SHIP_MORE, &fd, 0)?;
    Ok(())
}

impl Tls {
    /// Load the TLS programs, fill their tail-call slot, and probe OpenSSL where the processes
    /// in scope have it. `per_pid` means `--comm`/`--pid` narrowed the scope: the watched
    /// processes are those the kernel's watch map marks.
    pub fn start(ebpf: &mut Ebpf, per_pid: bool) -> Result<Tls> {
        load_programs(ebpf)?;
        let mut tls = Tls {
            per_pid,
            examined: HashMap::new(),
            system: Vec::new(),
            links: HashMap::new(),
            probed: 0,
            probed_files: HashMap::new(),
            refused: None,
            rescanned: HashMap::new(),
            detacher: Detacher::start()?,
        };
        for path in system_libraries() {
            if let Some(id) = tls.examine(&path)
                && tls.examined[&id].is_some()
                && !tls.system.iter().any(|(s, _)| *s == id)
            {
                tls.system.push((id, path));
            }
        }
        tls.probe_running(ebpf)?;
        if let (0, Some(e)) = (tls.probed, tls.refused.take()) {
            // Nothing could be probed (perf_event_open of a uprobe wants CAP_SYS_ADMIN on
            // some kernels): say so once instead of at every process.
            tls.exit_all(ebpf);
            return Err(e.context(
                "the kernel refused every uprobe on OpenSSL (perf_event_open of a uprobe may \
                 need CAP_SYS_ADMIN)",
            ));
        }
        info!(
            "TLS: OpenSSL probed in {} binaries ({})",
            tls.probed,
            if per_pid {
                "per watched process"
            } else {
                "for every process"
            }
        );
        Ok(tls)
    }

    /// Probe the processes running now: those the watch map marks (per-pid scope), or every
    /// one, with the system's libraries probed once for all.
    fn probe_running(&mut self, ebpf: &mut Ebpf) -> Result<()> {
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        if self.per_pid {
            let watch: Array<&MapData, u64> =
                Array::try_from(ebpf.map(names::WATCH).context("WATCH map")?)?;
            let watched: Vec<u32> = pids
                .into_iter()
                .filter(|&pid| {
                    let word = watch.get(&mcptap_abi::id_word(pid), 0).unwrap_or(0);
                    (word >> (mcptap_abi::id_byte(pid) * 8)) & 0xff != 0
                })
                .collect();
            for pid in watched {
                self.process(ebpf, pid);
            }
        } else {
            for (id, path) in self.system.clone() {
                self.attach(ebpf, Owner::All, id, &path);
            }
            let me = std::process::id();
            for pid in pids.into_iter().filter(|p| *p != me) {
                self.process(ebpf, pid);
            }
        }
        Ok(())
    }

    /// Identify `path` and look at its symbols once; returns its identity.
    fn examine(&mut self, path: &Path) -> Option<FileId> {
        let meta = std::fs::metadata(path).ok()?;
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        self.examined.entry(id).or_insert_with(|| {
            let planned = Mapped::open(path)
                .map_err(anyhow::Error::from)
                .and_then(|data| plan(data.bytes()));
            match planned {
                Ok(plan) if plan.ssl.is_some() || plan.bio.is_some() => {
                    info!(
                        "TLS: {}: SSL_read/SSL_write probed at the {} entry points, \
                             BIO_write at the {}",
                        path.display(),
                        plan.ssl.map_or("(none)", Mode::name),
                        plan.bio.map_or("(none)", Mode::name),
                    );
                    debug!("TLS: {} probes {:?}", path.display(), plan.probes);
                    Some(Rc::new(plan))
                }
                Ok(_) => None,
                Err(e) => {
                    debug!("TLS: cannot read {}: {e}", path.display());
                    None
                }
            }
        });
        Some(id)
    }

    /// Probe the OpenSSL of process `pid` (its program and the libraries it maps now, plus
    /// the system's in per-pid mode) wherever that is not done yet.
    fn process(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let mut files = Vec::new();
        let mut paths = mapped_libraries(pid);
        paths.extend(program(pid));
        for path in paths {
            if let Some(id) = self.examine(&path) {
                files.push((id, path));
            }
        }
        let owner = if self.per_pid {
            files.extend(self.system.iter().cloned());
            Owner::Pid(pid)
        } else {
            Owner::All
        };
        for (id, path) in files {
            self.attach(ebpf, owner, id, &path);
        }
    }

    /// Detach everything.
    fn exit_all(&mut self, ebpf: &mut Ebpf) {
        for links in std::mem::take(&mut self.links).into_values() {
            self.detach(ebpf, links.into_values().flatten());
        }
    }

    /// Attach the probes to file `id`, reached now at `path`, for `owner`, once.
    fn attach(&mut self, ebpf: &mut Ebpf, owner: Owner, id: FileId, path: &Path) {
        let Some(Some(offsets)) = self.examined.get(&id).cloned() else {
            return;
        };
        if self.links.get(&owner).is_some_and(|d| d.contains_key(&id)) {
            return;
        }
        let scope = match owner {
            Owner::All => UProbeScope::AllProcesses,
            Owner::Pid(pid) => match NonZeroU32::new(pid) {
                Some(p) => UProbeScope::OneProcess(p),
                None => return,
            },
        };
        let started = std::time::Instant::now();
        let mut links = Vec::new();
        for &(prog, offset, symbol) in &offsets.probes {
            let attached = uprobe(ebpf, prog).and_then(|p| {
                p.attach(UProbeAttachLocation::AbsoluteOffset(offset), path, scope)
                    .map_err(anyhow::Error::from)
            });
            match attached {
                Ok(link) => links.push((prog, link)),
                Err(e) => {
                    // All or nothing: an entry probe without its return probe would leave
                    // calls open. Not retried (the process is gone, or it is not permitted).
                    self.detach(ebpf, links);
                    self.links.entry(owner).or_default().insert(id, Vec::new());
                    let e = e.context(format!(
                        "probing {symbol} in {} for {owner:?}",
                        path.display()
                    ));
                    debug!("TLS: {e:#}");
                    self.refused.get_or_insert(e);
                    return;
                }
            }
        }
        debug!(
            "TLS: {} probes on {} for {owner:?} in {:?}",
            links.len(),
            path.display(),
            started.elapsed()
        );
        self.links.entry(owner).or_default().insert(id, links);
        self.probed += 1;
        self.probed_files.insert(id, offsets.mode());
    }

    /// The binaries probed since the start (each once, whoever for), by `Plan::mode`:
    /// `internal` and `exported` always, the others when seen.
    pub fn probed_binaries(&self) -> BTreeMap<&'static str, u64> {
        let mut out: BTreeMap<&'static str, u64> =
            [(Mode::Internal.name(), 0), (Mode::Exported.name(), 0)].into();
        for mode in self.probed_files.values() {
            *out.entry(mode).or_default() += 1;
        }
        out
    }

    /// A watched process started a new program: probe it if it carries OpenSSL.
    pub fn exec(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.process(ebpf, pid);
    }

    /// A TLS socket appeared in `pid`: its OpenSSL may be somewhere not probed yet.
    pub fn tls_socket(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let now = std::time::Instant::now();
        if self
            .rescanned
            .get(&pid)
            .is_some_and(|t| now.duration_since(*t) < RESCAN_EVERY)
        {
            return;
        }
        self.rescanned.insert(pid, now);
        self.process(ebpf, pid);
    }

    /// A watched process exited: its own probes go (per-pid mode).
    pub fn exit(&mut self, ebpf: &mut Ebpf, pid: u32) {
        self.rescanned.remove(&pid);
        if let Some(files) = self.links.remove(&Owner::Pid(pid)) {
            self.detach(ebpf, files.into_values().flatten());
        }
    }

    /// Take links out of their programs and hand them to the detacher.
    fn detach(
        &self,
        ebpf: &mut Ebpf,
        links: impl IntoIterator<Item = (&'static str, UProbeLinkId)>,
    ) {
        let owned: Vec<UProbeLink> = links
            .into_iter()
            .filter_map(|(prog, link)| uprobe(ebpf, prog).ok()?.take_link(link).ok())
            .collect();
        self.detacher.send(owned);
    }

    /// Start detaching every probe: the detacher works while the agent finishes up.
    pub fn detach_all(&mut self, ebpf: &mut Ebpf) {
        let all: Vec<(&'static str, UProbeLinkId)> = std::mem::take(&mut self.links)
            .into_values()
            .flat_map(HashMap::into_values)
            .flatten()
            .collect();
        self.detach(ebpf, all);
    }

    /// The agent is stopping: hand the release of every probe to a child process that
    /// outlives the agent by the kernel's detach time, then start detaching them.
    pub fn stop(&mut self, ebpf: &mut Ebpf) {
        if !self.links.is_empty() {
            release_after_exit();
        }
        self.detach_all(ebpf);
    }

    /// Detach every probe and wait until they are all gone (before the programs are dropped,
    /// which would detach what is left one after the other).
    pub fn shutdown(&mut self, ebpf: &mut Ebpf) {
        self.detach_all(ebpf);
        self.detacher.finish();
    }

    /// Drop the probes of processes that are gone without an exit record (one that left the
    /// scope by exec).
    pub fn reap(&mut self, ebpf: &mut Ebpf) {
        self.rescanned.retain(|_, t| t.elapsed() < RESCAN_EVERY);
        let gone: Vec<u32> = self
            .links
            .keys()
            .filter_map(|o| match o {
                Owner::Pid(pid) if !Path::new(&format!("/proc/{pid}")).exists() => Some(*pid),
                _ => None,
            })
            .collect();
        for pid in gone {
            self.exit(ebpf, pid);
        }
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    ebpf.program_mut(name)
        .with_context(|| format!("{name} program missing"))?
        .try_into()
        .with_context(|| format!("{name} is not a uprobe program"))
}

#[cfg(test)]
mod tests {
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
        let offsets = exported_offsets(ssl).unwrap();
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
    fn decodes_the_internal_call_of_a_wrapper() {
        // Debian's OpenSSL 3.0 SSL_read_ex: sub $0x8,%rsp; call ssl_read_internal.
        let ex = [
            0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff, 0x31, 0xd2,
        ];
        assert_eq!(passthrough_call(&ex), Some(0x35290 - 0x354c0));
        // libcrypto's BIO_write_ex: push %rbp; mov %rdi,%rbp; push %rbx; mov %rdx,%rbx;
        // sub $0x8,%rsp; call bio_write_intern (0x108910 -> 0x108270).
        let bio = [
            0x55, 0x48, 0x89, 0xfd, 0x53, 0x48, 0x89, 0xd3, 0x48, 0x83, 0xec, 0x08, 0xe8, 0x4f,
            0xf9, 0xff, 0xff,
        ];
        assert_eq!(passthrough_call(&bio), Some(0x108270 - 0x108910));
        // OpenSSL 3.2+ SSL_write_ex moves its 4th argument to the 5th (mov %rcx,%r8; xor
        // %ecx,%ecx): the callee's arguments differ, not a pass-through.
        let moved = [
            0x48, 0x83, 0xec, 0x08, 0x49, 0x89, 0xc8, 0x31, 0xc9, 0xe8, 0, 0, 0, 0,
        ];
        assert_eq!(passthrough_call(&moved), None);
        // A write to an argument register (mov %rsp,%rcx) before the call.
        let clobber = [0x48, 0x89, 0xe1, 0xe8, 0, 0, 0, 0];
        assert_eq!(passthrough_call(&clobber), None);
        assert_eq!(passthrough_call(&[0x48, 0x83, 0xec, 0x08]), None);
        // SSL_read: sub $0x18,%rsp; ...; call ssl_read_internal at +0x1e.
        let mut plain = vec![0x90; 0x40];
        plain[0x1e..0x23].copy_from_slice(&[0xe8, 0x3d, 0xfe, 0xff, 0xff]);
        assert!(calls(&plain, 0x35290 - 0x35430));
        assert!(!calls(&plain, 0x35290 - 0x35430 + 1));
        // push %r13 / push %rbp are emulated, sub $0x18,%rsp / xor %eax,%eax are not.
        assert!(emulated_entry(&[0x41, 0x55]) && emulated_entry(&[0x55]));
        assert!(!emulated_entry(&[0x48, 0x83, 0xec, 0x18]) && !emulated_entry(&[0x31, 0xc0]));
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
        let plan = plan(data.bytes()).unwrap();
        assert_eq!(plan.ssl, Some(Mode::Internal), "{plan:?}");
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
        let plan = plan(data.bytes()).unwrap();
        assert_eq!(plan.bio, Some(Mode::Internal), "{plan:?}");
        assert_eq!(plan.probes.len(), 1, "{plan:?}");
        assert_eq!(plan.probes[0].2, "bio_write_intern");
    }

    #[test]
    fn only_openssl_like_mappings_are_examined() {
        assert!(maybe_openssl("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
        assert!(maybe_openssl(
            "/venv/lib/python3.11/site-packages/x.libs/libcrypto-1a2b.so.3"
        ));
        assert!(!maybe_openssl("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(!worth_probing(&[("SSL_read", 1)]));
        assert!(worth_probing(&[("BIO_write", 1)]));
    }
}
