//! Loading, configuring and draining the kernel programs. Needs root (or CAP_BPF, CAP_PERFMON
//! and read access to /proc); everything downstream of [`Probes::drain`] does not.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, ProgramArray, RingBuf},
    programs::{Program, ProgramFd, RawTracePoint},
};
use log::{debug, info, warn};
use mcptap_abi::{
    Comm, Config, FD_MAP_ENTRIES, FDSTATE_REJECTED, FdKey, FdState, IDS_PER_WORD, KernelOffsets,
    SelfTest, TAIL_SHIP_MORE, WATCH_BY_COMM, WATCH_BY_PID, counter, id_byte, id_word, names,
};

use super::tls::Tls;
use super::{btf::Btf, comm_key};

/// The kernel programs, built by `agent/build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mcptap"));

/// The name, among the kernel counters, of the runs of mcptap's programs the kernel skipped
/// (`bpf_prog_info.recursion_misses`): read from the kernel, not counted by the programs.
pub const RECURSION_MISSES: &str = "prog_recursion_misses";

/// Which processes to capture.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Comm names (matched on the first 15 bytes, as the kernel stores them).
    pub comms: Vec<String>,
    /// Process ids.
    pub pids: Vec<u32>,
}

impl Scope {
    /// No filter: every process is a candidate.
    pub fn is_all(&self) -> bool {
        self.comms.is_empty() && self.pids.is_empty()
    }
}

/// Settings for [`Probes::load`].
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    /// Processes to watch.
    pub scope: Scope,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_bytes: u32,
    /// Capture TLS plaintext with uprobes on OpenSSL.
    pub tls: bool,
}

/// What the start-up checks found, for the log and for `/ready`.
#[derive(Clone, Debug, Default)]
pub struct StartupReport {
    /// `/sys/kernel/security/lockdown`'s current mode, if the file exists.
    pub lockdown: Option<String>,
    /// Whether `bpf_probe_read_kernel` worked in the self-test.
    pub probe_read_kernel: bool,
    /// The offsets handed to the programs.
    pub offsets: KernelOffsets,
    /// Attached programs, by name.
    pub attached: Vec<String>,
}

/// What [`Preflight::check`] found: everything loading needs, learned without a side effect.
#[derive(Clone, Debug)]
pub struct Preflight {
    offsets: KernelOffsets,
    lockdown: Option<String>,
}

impl Preflight {
    /// Check what live capture needs before anything is changed (a port bound, a file
    /// created, a program loaded): the capabilities, the `--pid`s, and the kernel's BTF.
    pub fn check(settings: &ProbeSettings) -> Result<Preflight> {
        check_privileges()?;
        for pid in &settings.scope.pids {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                bail!(
                    "--pid {pid}: no such process (--pid watches a running process and the children it starts)"
                );
            }
        }
        let btf = Btf::from_sys_fs()?;
        let offsets = btf
            .kernel_offsets()
            .context("this kernel's BTF lacks a structure mcptap reads")?;
        debug!("kernel offsets from BTF: {offsets:?}");
        Ok(Preflight {
            offsets,
            lockdown: lockdown_mode(),
        })
    }
}

/// The loaded, attached programs and the maps userspace uses.
pub struct Probes {
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
    fds: HashMap<MapData, FdKey, FdState>,
    counters: PerCpuArray<MapData, u64>,
    prog_fds: Vec<(String, aya::programs::ProgramFd)>,
    /// The OpenSSL probes, unless TLS capture is off or could not start.
    tls: Option<super::tls::Tls>,
    sweeper: FdSweeper,
    _kernel_log: Option<KernelLog>,
}

fn lockdown_mode() -> Option<String> {
    let s = std::fs::read_to_string("/sys/kernel/security/lockdown").ok()?;
    // "none [integrity] confidentiality": the bracketed word is the current mode.
    let start = s.find('[')?;
    let end = s[start..].find(']')? + start;
    Some(s[start + 1..end].to_string())
}

/// Capabilities (bit numbers) mcptap cannot start without: loading tracing programs and
/// reading kernel memory from them. CAP_SYS_ADMIN stands in for both on any kernel.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
/// Capabilities that let mcptap name every process: reading /proc/PID/fd of processes with
/// other owners or more privileges than its own. Without them it runs, and says what it loses.
const CAP_SYS_PTRACE: u32 = 19;
const CAP_DAC_READ_SEARCH: u32 = 2;

fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .unwrap_or(0)
}

/// The capabilities in `need` that `eff` lacks, by name.
fn missing_caps(eff: u64, need: &[(u32, &'static str)]) -> Vec<&'static str> {
    need.iter()
        .filter(|(bit, _)| eff & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect()
}

// Capabilities, not the uid, decide: root in a container or under capsh may lack them, and a
// non-root user may hold them.
fn check_privileges() -> Result<()> {
    let eff = effective_caps();
    let missing = if eff & (1 << CAP_SYS_ADMIN) != 0 {
        Vec::new()
    } else {
        missing_caps(eff, &[(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")])
    };
    if !missing.is_empty() {
        // SAFETY: geteuid has no preconditions.
        let who = if unsafe { libc::geteuid() } == 0 {
            "runs as root but"
        } else {
            "is not root and"
        };
        bail!(
            "mcptap loads eBPF programs; this process {who} lacks {}: run it as root (`sudo \
             mcptap ...`) or grant CAP_BPF and CAP_PERFMON (plus CAP_SYS_PTRACE and \
             CAP_DAC_READ_SEARCH to name every process)",
            missing.join(" and ")
        );
    }
    let naming = missing_caps(
        eff,
        &[
            (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
            (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
        ],
    );
    if !naming.is_empty() {
        log::warn!(
            "without {} mcptap cannot read /proc/PID/fd of processes more privileged than \
             itself or owned by other users: their pipes cannot be paired into sessions",
            naming.join(" and ")
        );
    }
    Ok(())
}

fn explain_load_error(e: aya::EbpfError) -> anyhow::Error {
    let text = format!("{e:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        anyhow!(
            "the kernel refused to load mcptap's programs ({text}); run as root or grant \
             CAP_BPF and CAP_PERFMON"
        )
    } else if text.contains("RINGBUF") || text.contains("ring") {
        anyhow!("loading failed: {text}; mcptap needs BPF ring buffers (Linux 5.8 or newer)")
    } else {
        anyhow!("loading mcptap's programs failed: {text}")
    }
}

/// The programs' settings for `settings`, and the size of the per-pid maps (one bit of a
/// word per possible pid).
fn kernel_config(settings: &ProbeSettings) -> (Config, u32) {
    let scope = &settings.scope;
    let config = Config {
        all_processes: scope.is_all() as u8,
        comm_filter: (!scope.comms.is_empty()) as u8,
        _pad: [0; 2],
        self_tgid: std::process::id(),
        // Wake the agent when a quarter of the ring is used; it drains on a timer too.
        wakeup_bytes: settings.ring_bytes / 4,
        _pad2: 0,
    };
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4 << 20);
    (config, pid_max.div_ceil(IDS_PER_WORD).max(1))
}

/// Put the `--comm` names in the kernel's map, before anything is attached.
fn mark_comms(ebpf: &mut Ebpf, scope: &Scope) -> Result<()> {
    let mut comms: HashMap<_, Comm, u8> =
        HashMap::try_from(ebpf.map_mut(names::COMMS).context("COMMS map")?)?;
    for c in &scope.comms {
        if c.len() > 15 {
            warn!(
                "--comm {c:?} is longer than the kernel's 15-byte comm; matching {:?}",
                super::comm_str(&comm_key(c))
            );
        }
        comms.insert(comm_key(c), 1, 0)?;
    }
    Ok(())
}

/// Load the tail-called program that ships the rest of a long syscall, and put it in its
/// slot; returns its fd.
fn load_ship_more(ebpf: &mut Ebpf) -> Result<ProgramFd> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(names::PROG_SHIP_MORE)
        .context("ship_more program missing")?
        .try_into()?;
    prog.load().context("verifier rejected ship_more")?;
    let fd = prog.fd()?.try_clone()?;
    let tail = prog.fd()?.try_clone()?;
    let mut tails = ProgramArray::try_from(ebpf.map_mut(names::TAILS).context("TAILS")?)?;
    tails.set(TAIL_SHIP_MORE, &tail, 0)?;
    Ok(fd)
}

/// Attach the tracepoints: fork and exec first, so that no process slips between the /proc
/// scan and the data hooks.
fn attach_all(
    ebpf: &mut Ebpf,
    prog_fds: &mut Vec<(String, ProgramFd)>,
    report: &mut StartupReport,
) -> Result<()> {
    let mut kernel_btf = None;
    for (prog_name, tp) in [
        (names::PROG_FORK, names::TP_FORK),
        (names::PROG_EXEC, names::TP_EXEC),
        (names::PROG_EXIT, names::TP_EXIT),
        (names::PROG_SYS_EXIT, names::TP_SYS_EXIT),
        (names::PROG_SYS_ENTER, names::TP_SYS_ENTER),
    ] {
        let (fd, hook) = attach(ebpf, prog_name, tp, &mut kernel_btf)?;
        prog_fds.push((prog_name.to_string(), fd));
        report.attached.push(format!("{prog_name}@{hook}"));
    }
    Ok(())
}

/// The OpenSSL probes, unless `--no-tls`; a failure is a warning, and capture goes on
/// without them.
fn start_tls(ebpf: &mut Ebpf, settings: &ProbeSettings, report: &mut StartupReport) -> Option<Tls> {
    if !settings.tls {
        return None;
    }
    match Tls::start(ebpf, !settings.scope.is_all()) {
        Ok(t) => {
            report.attached.push("uprobes@OpenSSL".to_string());
            Some(t)
        }
        Err(e) => {
            warn!("TLS capture disabled: {e:#}");
            None
        }
    }
}

impl Probes {
    /// Resolve offsets, load the programs, self-test, attach, and mark watched processes.
    pub fn load(settings: &ProbeSettings, pre: Preflight) -> Result<(Self, StartupReport)> {
        let Preflight { offsets, lockdown } = pre;
        let scope = &settings.scope;
        let (config, watch_words) = kernel_config(settings);
        let mut ebpf = EbpfLoader::new()
            .override_global(names::OFFSETS, &offsets, true)
            .override_global(names::CONFIG, &config, true)
            // The programs' log statements above mcptap's log level are dead code to the
            // verifier (log::LevelFilter and aya-log's levels share their numbers).
            .override_global(aya_log::LEVEL, &(log::max_level() as u8), false)
            .map_max_entries(names::EVENTS, settings.ring_bytes)
            .map_max_entries(names::WATCH, watch_words)
            .map_max_entries(names::GEN, watch_words)
            .map_max_entries(names::INFLIGHT, watch_words)
            .load(EBPF_OBJECT)
            .map_err(explain_load_error)?;

        let mut report = StartupReport {
            lockdown,
            offsets,
            ..Default::default()
        };
        // Before any program runs, so that what the self-test says is read.
        let kernel_log = KernelLog::start(&mut ebpf)?;
        report.probe_read_kernel = self_test(&mut ebpf)?;
        // Mark watched processes before attaching, so their first syscalls are seen.
        if !scope.is_all() {
            mark_comms(&mut ebpf, scope)?;
        }
        let mut prog_fds = vec![(
            names::PROG_SHIP_MORE.to_string(),
            load_ship_more(&mut ebpf)?,
        )];
        attach_all(&mut ebpf, &mut prog_fds, &mut report)?;
        if !scope.is_all() {
            let mut watch: Array<_, u64> =
                Array::try_from(ebpf.map_mut(names::WATCH).context("WATCH map")?)?;
            // Twice: a process that forked during the first pass is caught by the second.
            for _ in 0..2 {
                mark_existing(&mut watch, scope)?;
            }
        }
        // After the watch map is marked: in per-pid mode the probes follow it.
        let tls = start_tls(&mut ebpf, settings, &mut report);

        // Loading parsed the kernel's BTF several times (ours and aya's): give that memory back.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        let ring = RingBuf::try_from(ebpf.take_map(names::EVENTS).context("EVENTS map")?)?;
        let fds_map = ebpf.take_map(names::FDS).context("FDS map")?;
        let sweeper = FdSweeper::start(&fds_map)?;
        let fds = HashMap::try_from(fds_map)?;
        let counters =
            PerCpuArray::try_from(ebpf.take_map(names::COUNTERS).context("COUNTERS map")?)?;
        let probes = Probes {
            ebpf,
            ring,
            fds,
            counters,
            prog_fds,
            tls,
            sweeper,
            _kernel_log: kernel_log,
        };
        Ok((probes, report))
    }

    /// Keep the OpenSSL probes on the processes that need them.
    pub fn process_note(&mut self, note: super::ProcessNote) {
        let Some(tls) = self.tls.as_mut() else {
            return;
        };
        match note {
            super::ProcessNote::Exec(pid) => tls.exec(&mut self.ebpf, pid),
            super::ProcessNote::Exit(pid) => tls.exit(&mut self.ebpf, pid),
            super::ProcessNote::TlsSocket(pid) => tls.tls_socket(&mut self.ebpf, pid),
        }
    }

    /// The agent is stopping: start taking the OpenSSL probes off (each waits for a kernel
    /// grace period), while what the ring buffer holds is worked through.
    pub fn begin_stop(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.stop(&mut self.ebpf);
        }
    }

    /// The binaries whose OpenSSL was probed since the start, by mode (none without TLS).
    pub fn tls_probed_binaries(&self) -> BTreeMap<&'static str, u64> {
        self.tls
            .as_ref()
            .map(Tls::probed_binaries)
            .unwrap_or_default()
    }

    /// What the TLS probes found in each process (empty without TLS).
    pub fn tls_libraries(&self) -> super::host::TlsLibraries {
        self.tls.as_ref().map(Tls::libraries).unwrap_or_default()
    }

    /// The binaries whose TLS library was recognised, by library and how their probes fared.
    pub fn tls_probe_states(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.tls.as_ref().map(Tls::probe_states).unwrap_or_default()
    }

    /// Drop the TLS probes of processes that are gone unannounced.
    pub fn reap(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.reap(&mut self.ebpf);
        }
    }

    /// Wait until the ring buffer has data or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).context("poll on the ring buffer");
            }
        }
        Ok(())
    }

    /// Hand pending records to `f`, up to `max` records or `max_bytes` bytes (the first
    /// record whatever its size); returns how many there were, and whether a limit stopped it
    /// (more may be waiting).
    pub fn drain(
        &mut self,
        max: usize,
        max_bytes: usize,
        mut f: impl FnMut(&[u8]),
    ) -> (usize, bool) {
        let (mut n, mut bytes) = (0, 0);
        while n < max && bytes < max_bytes {
            let Some(item) = self.ring.next() else {
                return (n, false);
            };
            bytes += item.len();
            f(&item);
            n += 1;
        }
        (n, true)
    }

    /// The kernel counters, summed over CPUs, by name.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for (i, name) in counter::NAMES.iter().enumerate() {
            let sum = self
                .counters
                .get(&(i as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            out.insert(*name, sum);
        }
        out.insert(RECURSION_MISSES, self.recursion_misses());
        out
    }

    /// Runs of our programs the kernel skipped because one was already running on that CPU
    /// (a preempted program). Each is a syscall mcptap did not see.
    fn recursion_misses(&self) -> u64 {
        self.prog_fds
            .iter()
            .filter_map(|(_, fd)| prog_recursion_misses(fd))
            .sum()
    }

    /// Tell the kernel to stop shipping (tgid, fd): userspace found it is not MCP. Ignored when
    /// the fd has since been reused for another inode.
    pub fn reject(&mut self, tgid: u32, fd: i32, inode: u64) {
        let key = FdKey { tgid, fd };
        if let Ok(mut st) = self.fds.get(&key, 0)
            && st.inode == inode
        {
            st.flags |= FDSTATE_REJECTED;
            if let Err(e) = self.fds.insert(key, st, 0) {
                debug!("could not reject {tgid}/{fd}: {e}");
            }
        }
    }

    /// Names of attached programs.
    pub fn program_count(&self) -> usize {
        self.ebpf.programs().count()
    }

    /// Entries of the kernel's fd map at the last sweep, and its capacity.
    pub fn fd_map_size(&self) -> (u64, u64) {
        (
            self.sweeper.entries.load(Ordering::Relaxed),
            FD_MAP_ENTRIES as u64,
        )
    }
}

/// How often the kernel's fd map is swept of the entries of processes that are gone.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A thread that sweeps the kernel's fd map: a process's fds vanish with it without a close
/// the programs see, so its entries would wait for the LRU to push them out, taking room from
/// live ones. Entries of processes that no longer exist are deleted; the count is kept for
/// `mcptap_table_entries{table="kernel_fds"}`.
struct FdSweeper {
    entries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FdSweeper {
    fn start(map: &aya::maps::Map) -> Result<FdSweeper> {
        let aya::maps::Map::LruHashMap(data) = map else {
            bail!("the FDS map is not an LRU hash map");
        };
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .context("duplicating the FDS map fd")?;
        let own = aya::maps::MapData::from_fd(fd)?;
        let fds: HashMap<MapData, FdKey, FdState> =
            HashMap::try_from(aya::maps::Map::LruHashMap(own))?;
        let entries = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (entries.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("mcptap-fd-sweep".into())
            .spawn(move || sweep_loop(fds, &e, &s))
            .context("starting the fd map sweeper")?;
        Ok(FdSweeper {
            entries,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for FdSweeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn sweep_loop(mut fds: HashMap<MapData, FdKey, FdState>, entries: &AtomicU64, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(SWEEP_EVERY);
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // Listed first, deleted after: a hash map's iteration restarts when its current key
        // goes. Bounded by twice the capacity in case the programs churn it meanwhile.
        let keys: Vec<FdKey> = fds
            .keys()
            .take(2 * FD_MAP_ENTRIES as usize)
            .filter_map(Result::ok)
            .collect();
        let mut alive: std::collections::HashMap<u32, bool> = Default::default();
        let mut gone = 0;
        for k in &keys {
            let live = *alive
                .entry(k.tgid)
                .or_insert_with(|| std::path::Path::new(&format!("/proc/{}", k.tgid)).exists());
            if !live && fds.remove(k).is_ok() {
                gone += 1;
            }
        }
        entries.store((keys.len() - gone) as u64, Ordering::Relaxed);
        if gone > 0 {
            debug!(
                "fd map sweep: {} entries, {gone} of exited processes removed",
                keys.len()
            );
        }
    }
}

/// A thread that writes the kernel programs' messages (aya-log: the self-test, failures that
/// should not happen) to mcptap's log as they come, so that the capture loop never waits on
/// them. It owns the log map's fd, which the programs' instructions refer to by number: it must
/// outlive the loading of every program, so it stays until the probes are dropped.
struct KernelLog {
    /// Dropped to stop the thread: it sees the pipe hang up.
    stop: Option<std::io::PipeWriter>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KernelLog {
    /// `None` (and a warning) when the object has no log map to read.
    fn start(ebpf: &mut Ebpf) -> Result<Option<KernelLog>> {
        let (stop_rx, stop_tx) = std::io::pipe().context("a pipe to stop the log reader")?;
        let logger = match aya_log::EbpfLogger::init(ebpf) {
            Ok(logger) => logger,
            Err(e) => {
                warn!("the kernel programs' own messages will not be logged: {e}");
                return Ok(None);
            }
        };
        // The logger now owns the map's fd: if it went, no program could load.
        let thread = std::thread::Builder::new()
            .name("mcptap-ebpf-log".into())
            .spawn(move || kernel_log_loop(logger, stop_rx))
            .context("starting the kernel log reader")?;
        Ok(Some(KernelLog {
            stop: Some(stop_tx),
            thread: Some(thread),
        }))
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn kernel_log_loop(
    mut logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    stop: std::io::PipeReader,
) {
    let mut fds = [
        libc::pollfd {
            fd: logger.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfds, for as long as the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            warn!("reading the kernel programs' messages: poll: {err}");
            break;
        }
        // aya-log panics on a record it cannot parse; the record is consumed all the same.
        let flushed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.flush())).is_ok();
        if !flushed {
            warn!("a message of the kernel programs could not be read");
        }
        if fds[1].revents != 0 {
            return;
        }
    }
    // Keep the map's fd until told to stop, since the programs' instructions name it.
    let _ = std::io::Read::read(&mut &stop, &mut [0u8; 1]);
}

impl Drop for Probes {
    fn drop(&mut self) {
        // The uprobes first, all at once; the programs then go quickly.
        if let Some(tls) = self.tls.as_mut() {
            tls.shutdown(&mut self.ebpf);
        }
    }
}

/// Set the watch byte of every running process in scope.
fn mark_existing(watch: &mut Array<&mut MapData, u64>, scope: &Scope) -> Result<()> {
    let keys: Vec<Comm> = scope.comms.iter().map(|c| comm_key(c)).collect();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        bail!("cannot list /proc: mcptap needs procfs mounted to find processes");
    };
    // pid → (parent, comm), to find the descendants of every --pid as well.
    let mut procs: std::collections::HashMap<u32, (u32, String)> = Default::default();
    for pid in super::host::pids_in(dir) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": the comm may hold spaces and parentheses.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let ppid = stat[close + 1..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        procs.insert(pid, (ppid, comm));
    }
    let in_pid_tree = |mut pid: u32| {
        for _ in 0..64 {
            if scope.pids.contains(&pid) {
                return true;
            }
            match procs.get(&pid) {
                Some(&(ppid, _)) if ppid != 0 && ppid != pid => pid = ppid,
                _ => return false,
            }
        }
        false
    };
    for (&pid, (_, comm)) in &procs {
        let mut byte = 0u8;
        if in_pid_tree(pid) {
            byte |= WATCH_BY_PID;
        }
        if keys.contains(&comm_key(comm)) {
            byte |= WATCH_BY_COMM;
        }
        if byte != 0 {
            let word = id_word(pid);
            let mut v = watch.get(&word, 0).unwrap_or(0);
            v |= (byte as u64) << (id_byte(pid) * 8);
            watch.set(word, v, 0)?;
        }
    }
    Ok(())
}

/// Load only the self-test, run it on one of our own syscalls, and report whether
/// `bpf_probe_read_kernel` read the right tgid through the BTF offset.
fn self_test(ebpf: &mut Ebpf) -> Result<bool> {
    let prog: &mut RawTracePoint = ebpf
        .program_mut(names::PROG_SELFTEST)
        .context("selftest program missing")?
        .try_into()?;
    if let Err(e) = prog.load() {
        warn!(
            "self-test: the kernel refused a program that calls bpf_probe_read_kernel ({e}); \
             lockdown may forbid reading kernel memory"
        );
        return Err(anyhow!(e).context(
            "bpf_probe_read_kernel is not permitted here (kernel lockdown in confidentiality \
             mode?); mcptap needs it to classify file descriptors",
        ));
    }
    let link = prog.attach(names::TP_SYS_ENTER)?;
    // Any syscall of ours triggers it.
    for _ in 0..3 {
        let _ = std::fs::metadata("/proc/self");
    }
    prog.detach(link)?;
    let results: Array<_, SelfTest> =
        Array::try_from(ebpf.map(names::SELFTEST).context("SELFTEST map")?)?;
    let st = results.get(&0, 0)?;
    if st.ran == 0 {
        warn!("self-test program did not run; cannot confirm bpf_probe_read_kernel works");
        return Ok(false);
    }
    if st.read_ret != 0 {
        bail!(
            "self-test: bpf_probe_read_kernel failed with {} under this kernel's lockdown mode; \
             mcptap cannot classify file descriptors",
            st.read_ret
        );
    }
    if st.tgid_read != st.tgid_helper {
        bail!(
            "self-test: task_struct.tgid read at the BTF offset gave {} but the process is {}; \
             the BTF offsets do not match this kernel",
            st.tgid_read,
            st.tgid_helper
        );
    }
    info!(
        "self-test: bpf_probe_read_kernel permitted; task_struct.tgid read through BTF offset matches ({})",
        st.tgid_read
    );
    Ok(true)
}

/// `bpf_prog_info.recursion_misses` of a program (Linux 5.12+), via the bpf syscall.
fn prog_recursion_misses(fd: &aya::programs::ProgramFd) -> Option<u64> {
    // SAFETY: both are plain C structs/unions for which all-zero is the documented initial value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr: aya_obj::generated::bpf_attr = unsafe { std::mem::zeroed() };
    attr.info.bpf_fd = fd.as_fd().as_raw_fd() as u32;
    attr.info.info_len = std::mem::size_of_val(&info) as u32;
    attr.info.info = &mut info as *mut _ as u64;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    // SAFETY: attr points at a valid bpf_attr whose info buffer is `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut _,
            std::mem::size_of_val(&attr),
        )
    };
    (rc == 0).then_some(info.recursion_misses)
}

/// The benchmark floor: empty programs on the hooks mcptap uses, nothing else. Dropping it
/// detaches them.
pub struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    /// Load and attach the empty programs.
    pub fn attach() -> Result<Floor> {
        check_privileges()?;
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(explain_load_error)?;
        let mut kernel_btf = None;
        for (prog_name, tp) in [
            (names::PROG_NOOP_EXIT, names::TP_SYS_EXIT),
            (names::PROG_NOOP_ENTER, names::TP_SYS_ENTER),
        ] {
            attach(&mut ebpf, prog_name, tp, &mut kernel_btf)?;
        }
        Ok(Floor { _ebpf: ebpf })
    }
}

/// Load program `name` and attach it to tracepoint `tp`, as the kind of program the object
/// declares it: a raw tracepoint, or a BTF-typed one (which needs the kernel's BTF, parsed
/// once into `kernel_btf`). Returns the program's fd and the hook, as `kind/tracepoint`.
fn attach(
    ebpf: &mut Ebpf,
    name: &str,
    tp: &str,
    kernel_btf: &mut Option<aya::Btf>,
) -> Result<(ProgramFd, String)> {
    let rejected = || format!("the kernel's verifier rejected {name}");
    let attaching = || format!("attaching {name} to tracepoint {tp}");
    match ebpf
        .program_mut(name)
        .with_context(|| format!("{name} program missing"))?
    {
        Program::RawTracePoint(p) => {
            p.load().with_context(rejected)?;
            p.attach(tp).with_context(attaching)?;
            Ok((p.fd()?.try_clone()?, format!("raw_tp/{tp}")))
        }
        Program::BtfTracePoint(p) => {
            let btf = match kernel_btf {
                Some(b) => b,
                None => kernel_btf.insert(
                    aya::Btf::from_sys_fs().context("reading the kernel's BTF for tp_btf")?,
                ),
            };
            p.load(tp, btf).with_context(rejected)?;
            p.attach().with_context(attaching)?;
            Ok((p.fd()?.try_clone()?, format!("tp_btf/{tp}")))
        }
        _ => bail!("{name} is neither a raw nor a BTF tracepoint program"),
    }
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    use super::*;

    /// The programs' attributes name their tracepoints with literals; the agent attaches them
    /// by the ABI's names. A program's section must be the hook the agent attaches it to.
    #[test]
    fn programs_sit_on_the_tracepoints_the_abi_names() {
        let obj = object::File::parse(EBPF_OBJECT).unwrap();
        let section_of = |prog: &str| {
            let sym = obj
                .symbols()
                .find(|s| s.name() == Ok(prog))
                .unwrap_or_else(|| panic!("no program {prog} in the object"));
            let index = sym.section_index().unwrap();
            obj.section_by_index(index)
                .unwrap()
                .name()
                .unwrap()
                .to_string()
        };
        for (prog, section) in [
            (
                names::PROG_SYS_ENTER,
                format!("tp_btf/{}", names::TP_SYS_ENTER),
            ),
            (
                names::PROG_NOOP_ENTER,
                format!("tp_btf/{}", names::TP_SYS_ENTER),
            ),
            (
                names::PROG_SELFTEST,
                format!("raw_tp/{}", names::TP_SYS_ENTER),
            ),
            (
                names::PROG_SYS_EXIT,
                format!("raw_tp/{}", names::TP_SYS_EXIT),
            ),
            (
                names::PROG_SHIP_MORE,
                format!("raw_tp/{}", names::TP_SYS_EXIT),
            ),
            (
                names::PROG_NOOP_EXIT,
                format!("raw_tp/{}", names::TP_SYS_EXIT),
            ),
            (names::PROG_FORK, format!("raw_tp/{}", names::TP_FORK)),
            (names::PROG_EXEC, format!("raw_tp/{}", names::TP_EXEC)),
            (names::PROG_EXIT, format!("raw_tp/{}", names::TP_EXIT)),
        ] {
            assert_eq!(section_of(prog), section, "{prog}");
        }
    }
}
