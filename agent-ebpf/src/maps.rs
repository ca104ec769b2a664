//! Every map and global the programs share, with what each holds, and the small accessors
//! over them (counters, the byte-per-id arrays, the watch test).
//!
//! One place for all of them because every program module uses several, and because their
//! names are the ABI: userspace finds each by the name in `mcptap_abi::names` (the static's
//! name here), and sizes some of them (`EVENTS`, `WATCH`, `GEN`, `INFLIGHT`) before load.

use aya_ebpf::{
    Global,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use mcptap_abi::{
    Comm, Config, FD_MAP_ENTRIES, FdKey, FdState, GoCall, KernelOffsets, RecentRead, RustlsChunk,
    RustlsParked, SCRATCH_SIZE, SKIP_SLOTS, SelfTest, SslCall, SslKey, SslSocket, Stash, counter,
    id_byte, id_word,
};

use crate::ship::Job;

#[unsafe(no_mangle)]
pub static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::ZERO);
#[unsafe(no_mangle)]
pub static CONFIG: Global<Config> = Global::new(Config::ZERO);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);
#[map]
pub static FDS: LruHashMap<FdKey, FdState> = LruHashMap::with_max_entries(FD_MAP_ENTRIES, 0);
#[map]
pub static STASH: HashMap<u32, Stash> = HashMap::with_max_entries(32768, 0);
/// One byte per tgid, eight to a word; userspace sizes it from pid_max. Byte stores keep
/// concurrent updates of neighbouring tgids from clobbering each other.
#[map]
pub static WATCH: Array<u64> = Array::with_max_entries(4096, 0);
#[map]
pub static GEN: Array<u64> = Array::with_max_entries(4096, 0);
#[map]
pub static INFLIGHT: Array<u64> = Array::with_max_entries(4096, 0);
#[map]
pub static SKIP: Array<u64> = Array::with_max_entries(SKIP_SLOTS, 0);
#[map]
pub static COMMS: HashMap<Comm, u8> = HashMap::with_max_entries(256, 0);
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
/// Per-CPU scratch buffers, one per kind of program that may be preempted by another kind on
/// its CPU: [`SCRATCH_SYSCALL`], [`SCRATCH_SOCKET`], [`SCRATCH_TLS`].
#[map]
pub static SCRATCH: PerCpuArray<[u8; SCRATCH_SIZE]> = PerCpuArray::with_max_entries(3, 0);
/// Shipping state, one per lane: [`JOB_SYSCALL`], [`JOB_TLS`].
#[map]
pub static JOBS: PerCpuArray<Job> = PerCpuArray::with_max_entries(2, 0);
#[map]
pub static TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static TLS_TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
pub static SSL_CALLS: HashMap<u32, SslCall> = HashMap::with_max_entries(32768, 0);
/// Each thread's latest read of a TLS socket, by thread id.
#[map]
pub static RECENT_TLS_READS: LruHashMap<u32, RecentRead> = LruHashMap::with_max_entries(16384, 0);
/// Go `crypto/tls` calls in progress, by (process, goroutine).
#[map]
pub static GO_CALLS: LruHashMap<SslKey, GoCall> = LruHashMap::with_max_entries(32768, 0);
/// rustls plaintext writes waiting for the flush that binds their connection, by thread id.
#[map]
pub static RUSTLS_PARKED: LruHashMap<u32, RustlsParked> = LruHashMap::with_max_entries(16384, 0);
/// The chunk each thread's rustls `into_first_chunk` returned, until its `consume`.
#[map]
pub static RUSTLS_CHUNKS: LruHashMap<u32, RustlsChunk> = LruHashMap::with_max_entries(16384, 0);
#[map]
pub static SSL_SOCKETS: LruHashMap<SslKey, SslSocket> = LruHashMap::with_max_entries(65536, 0);
#[map]
pub static CIPHER_KEYS: LruHashMap<u64, SslKey> = LruHashMap::with_max_entries(16384, 0);
/// Whether this CPU's TLS lane is in use. Raw tracepoint programs never run twice at once on
/// one CPU (the kernel skips and counts the second), but uprobe programs have no such guard: a
/// kernel that preempts BPF programs could let two tasks' TLS shipping share the lane.
#[map]
pub static TLS_BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `sys_exit` and `ship_more`.
pub const SCRATCH_SYSCALL: u32 = 0;
/// Socket records from `sys_enter`.
pub const SCRATCH_SOCKET: u32 = 1;
/// Everything the uprobe programs ship.
pub const SCRATCH_TLS: u32 = 2;
pub const JOB_SYSCALL: u32 = 0;
pub const JOB_TLS: u32 = 1;
#[map]
pub static SELFTEST: Array<SelfTest> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn count(idx: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *p += n };
    }
}

/// The byte for `id` in an array of `u64` words holding eight ids each. Byte stores keep
/// concurrent updates of neighbouring ids from clobbering each other.
#[inline(always)]
pub fn byte_of(map: &Array<u64>, id: u32) -> u8 {
    match map.get_ptr(id_word(id)) {
        Some(word) => unsafe { *(word as *const u8).add(id_byte(id) as usize) },
        None => 0,
    }
}

#[inline(always)]
pub fn set_byte(map: &Array<u64>, id: u32, value: u8) {
    if let Some(word) = map.get_ptr_mut(id_word(id)) {
        unsafe { *(word as *mut u8).add(id_byte(id) as usize) = value };
    }
}

/// The process's cached fd states are no longer trustworthy.
#[inline(always)]
pub fn bump_gen(tgid: u32) {
    set_byte(&GEN, tgid, byte_of(&GEN, tgid).wrapping_add(1));
}

/// The watch byte of `tgid`: 0 or a combination of
/// [`WATCH_BY_COMM`](mcptap_abi::WATCH_BY_COMM) and [`WATCH_BY_PID`](mcptap_abi::WATCH_BY_PID).
#[inline(always)]
pub fn watch_byte(tgid: u32) -> u8 {
    byte_of(&WATCH, tgid)
}

/// Is `tgid` a process we capture? The agent itself never is.
#[inline(always)]
pub fn watched(tgid: u32) -> bool {
    let cfg = CONFIG.load();
    if tgid == cfg.self_tgid {
        return false;
    }
    cfg.all_processes != 0 || watch_byte(tgid) != 0
}

#[inline(always)]
pub fn set_watch_byte(tgid: u32, value: u8) {
    set_byte(&WATCH, tgid, value);
}
