//! mcptap's kernel programs.
//!
//! Data path: `raw_tp/sys_enter` filters by process, classifies the fd (pipe, AF_UNIX or TCP
//! stream socket; anything else is ignored) and stashes the syscall's arguments by thread;
//! `raw_tp/sys_exit` picks the stash up and ships the bytes the syscall moved into the ring
//! buffer in chunks of up to [`CHUNK_MAX`] bytes, from a per-CPU scratch buffer so that a small
//! write makes a small record. A syscall larger than one program invocation can ship continues
//! in `ship_more`, which tail-calls itself.
//!
//! Kernel structures are read with `bpf_probe_read_kernel` at offsets that userspace resolved
//! from the running kernel's BTF (the `OFFSETS` global); nothing here depends on one kernel's
//! headers.
//!
//! TLS: uprobes on OpenSSL (`SSL_read`, `SSL_write` and their `_ex` forms) ship the plaintext
//! through the same chunking path, flagged [`FLAG_TLS`] and attributed to the socket the SSL
//! object runs over, so it joins that socket's streams. The binding comes from the ciphertext
//! itself: what OpenSSL hands its write BIO (`BIO_write` inside an SSL call) is what the
//! application then writes to the socket, whether OpenSSL writes it there itself (socket BIO)
//! or the application moves it (memory BIOs: Python's asyncio, Node). A socket whose first
//! bytes are a TLS record is marked TLS and its ciphertext is never shipped.
//!
//! Nothing is dropped silently: every loss increments a per-CPU counter and marks the fd, so
//! the next record of that fd carries [`FLAG_LOST_BEFORE`].
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, generated,
    },
    macros::{btf_tracepoint, map, raw_tracepoint, uprobe, uretprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::{BtfTracePointContext, ProbeContext, RawTracePointContext, RetProbeContext},
};
use mcptap_abi::{
    CHUNK_MAX, CHUNKS_PER_CALL, CIPHER_KEY_BYTES, Config, DIR_IN, DIR_OUT, EventHeader,
    FD_MAP_ENTRIES, FD_OTHER, FD_PIPE, FD_TCP, FD_UNIX, FDSTATE_LOST, FDSTATE_NEW,
    FDSTATE_PENDING_MARKS, FDSTATE_REJECTED, FDSTATE_SEEN, FDSTATE_TLS, FDSTATE_TLS_BOUND,
    FLAG_LOST_BEFORE, FLAG_STATE_NEW, FLAG_TLS, FLAG_TRUNCATED, FdKey, FdState, HEADER_SIZE,
    KernelOffsets, MAX_IOVECS, MAX_TAIL_CALLS, OFFSET_MISSING, RECORD_CLOSE, RECORD_DATA,
    RECORD_EXEC, RECORD_EXIT, RECORD_SOCKET, RECORD_TLS, SCRATCH_SIZE, SKIP_KEY_MASK, SKIP_SLOTS,
    SelfTest, SocketInfo, SslCall, SslKey, SslSocket, Stash, TAIL_SHIP_MORE, UNIX_PATH_MAX,
    WATCH_BY_COMM, WATCH_BY_PID, cipher_key, counter, looks_tls, skip_entry, skip_slot, syscall,
};

#[unsafe(no_mangle)]
static OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets::ZERO);
#[unsafe(no_mangle)]
static CONFIG: Global<Config> = Global::new(Config::ZERO);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);
#[map]
static FDS: LruHashMap<FdKey, FdState> = LruHashMap::with_max_entries(FD_MAP_ENTRIES, 0);
#[map]
static STASH: HashMap<u32, Stash> = HashMap::with_max_entries(32768, 0);
/// One byte per tgid, eight to a word; userspace sizes it from pid_max. Byte stores keep
/// concurrent updates of neighbouring tgids from clobbering each other.
#[map]
static WATCH: Array<u64> = Array::with_max_entries(4096, 0);
#[map]
static GEN: Array<u64> = Array::with_max_entries(4096, 0);
#[map]
static INFLIGHT: Array<u64> = Array::with_max_entries(4096, 0);
#[map]
static SKIP: Array<u64> = Array::with_max_entries(SKIP_SLOTS, 0);
#[map]
static COMMS: HashMap<[u8; 16], u8> = HashMap::with_max_entries(256, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
/// Per-CPU scratch buffers, one per kind of program that may be preempted by another kind on
/// its CPU: [`SCRATCH_SYSCALL`], [`SCRATCH_SOCKET`], [`SCRATCH_TLS`].
#[map]
static SCRATCH: PerCpuArray<[u8; SCRATCH_SIZE]> = PerCpuArray::with_max_entries(3, 0);
/// Shipping state, one per lane: [`JOB_SYSCALL`], [`JOB_TLS`].
#[map]
static JOBS: PerCpuArray<Job> = PerCpuArray::with_max_entries(2, 0);
#[map]
static TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static TLS_TAILS: ProgramArray = ProgramArray::with_max_entries(1, 0);
#[map]
static SSL_CALLS: HashMap<u32, SslCall> = HashMap::with_max_entries(32768, 0);
#[map]
static SSL_SOCKETS: LruHashMap<SslKey, SslSocket> = LruHashMap::with_max_entries(65536, 0);
#[map]
static CIPHER_KEYS: LruHashMap<u64, SslKey> = LruHashMap::with_max_entries(16384, 0);
/// Whether this CPU's TLS lane is in use. Raw tracepoint programs never run twice at once on
/// one CPU (the kernel skips and counts the second), but uprobe programs have no such guard: a
/// kernel that preempts BPF programs could let two tasks' TLS shipping share the lane.
#[map]
static TLS_BUSY: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `sys_exit` and `ship_more`.
const SCRATCH_SYSCALL: u32 = 0;
/// Socket records from `sys_enter`.
const SCRATCH_SOCKET: u32 = 1;
/// Everything the uprobe programs ship.
const SCRATCH_TLS: u32 = 2;
const JOB_SYSCALL: u32 = 0;
const JOB_TLS: u32 = 1;
#[map]
static SELFTEST: Array<SelfTest> = Array::with_max_entries(1, 0);

/// Progress of shipping one syscall's bytes, carried across tail calls on one CPU.
#[repr(C)]
struct Job {
    hdr: EventHeader,
    /// User address of the next iovec to read, or 0 for a single buffer.
    iov_ptr: u64,
    /// iovecs left to read.
    iov_left: u64,
    /// Current buffer and bytes left in it.
    cur_base: u64,
    cur_left: u64,
    /// Bytes shipped so far (the next chunk's offset).
    shipped: u64,
    tail_calls: u32,
    _pad: u32,
}

#[cfg(bpf_target_arch = "x86_64")]
mod arch {
    pub const NR_READ: i64 = 0;
    pub const NR_WRITE: i64 = 1;
    pub const NR_CLOSE: i64 = 3;
    pub const NR_READV: i64 = 19;
    pub const NR_WRITEV: i64 = 20;
    pub const NR_SENDTO: i64 = 44;
    pub const NR_RECVFROM: i64 = 45;
    pub const NR_SENDMSG: i64 = 46;
    pub const NR_RECVMSG: i64 = 47;
    pub const NR_DUP2: i64 = 33;
    pub const NR_DUP3: i64 = 292;
    pub const NR_CLOSE_RANGE: i64 = 436;
    /// `struct pt_regs` words holding syscall args 0, 1, 2, 3: di, si, dx, r10.
    pub const ARG_WORDS: [usize; 4] = [14, 13, 12, 7];
}

#[cfg(bpf_target_arch = "aarch64")]
mod arch {
    pub const NR_CLOSE: i64 = 57;
    pub const NR_READ: i64 = 63;
    pub const NR_WRITE: i64 = 64;
    pub const NR_READV: i64 = 65;
    pub const NR_WRITEV: i64 = 66;
    pub const NR_SENDTO: i64 = 206;
    pub const NR_RECVFROM: i64 = 207;
    pub const NR_SENDMSG: i64 = 211;
    pub const NR_RECVMSG: i64 = 212;
    /// aarch64 has no dup2.
    pub const NR_DUP2: i64 = -1;
    pub const NR_DUP3: i64 = 24;
    pub const NR_CLOSE_RANGE: i64 = 436;
    /// `struct pt_regs` starts with regs[31]: regs[0..4] hold args 0, 1, 2, 3 at entry.
    pub const ARG_WORDS: [usize; 4] = [0, 1, 2, 3];
}

const S_IFMT: u16 = 0o170000;
const S_IFIFO: u16 = 0o010000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: i16 = 1;
const MSG_PEEK: u64 = 2;
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
fn count(idx: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        unsafe { *p += n };
    }
}

#[inline(always)]
fn read_kernel<T>(base: u64, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// The byte for `id` in an array of `u64` words holding eight ids each. Byte stores keep
/// concurrent updates of neighbouring ids from clobbering each other.
#[inline(always)]
fn byte_of(map: &Array<u64>, id: u32) -> u8 {
    match map.get_ptr(id >> 3) {
        Some(word) => unsafe { *(word as *const u8).add((id & 7) as usize) },
        None => 0,
    }
}

#[inline(always)]
fn set_byte(map: &Array<u64>, id: u32, value: u8) {
    if let Some(word) = map.get_ptr_mut(id >> 3) {
        unsafe { *(word as *mut u8).add((id & 7) as usize) = value };
    }
}

/// The process's cached fd states are no longer trustworthy.
#[inline(always)]
fn bump_gen(tgid: u32) {
    set_byte(&GEN, tgid, byte_of(&GEN, tgid).wrapping_add(1));
}

/// The watch byte of `tgid`: 0 or a combination of [`WATCH_BY_COMM`] and [`WATCH_BY_PID`].
#[inline(always)]
fn watch_byte(tgid: u32) -> u8 {
    byte_of(&WATCH, tgid)
}

/// Is `tgid` a process we capture? The agent itself never is.
#[inline(always)]
fn watched(tgid: u32) -> bool {
    let cfg = CONFIG.load();
    if tgid == cfg.self_tgid {
        return false;
    }
    cfg.all_processes != 0 || watch_byte(tgid) != 0
}

#[inline(always)]
fn set_watch_byte(tgid: u32, value: u8) {
    set_byte(&WATCH, tgid, value);
}

/// Ring buffer output flags: no wake-up until enough waits, so the agent drains in batches.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let threshold = CONFIG.load().wakeup_bytes as u64;
    if threshold == 0 || EVENTS.query(BPF_RB_AVAIL_DATA) >= threshold {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// The `struct file *` behind `fd` in the current task: 0 when the fd is not open, `None`
/// when the task's file table could not be read.
#[inline(always)]
fn current_file(fd: i32) -> Option<u64> {
    if fd < 0 {
        return Some(0);
    }
    let off = OFFSETS.load();
    let task = unsafe { bpf_get_current_task() };
    let files = read_kernel::<u64>(task, off.task_files)?;
    let fdt = read_kernel::<u64>(files, off.files_fdt)?;
    let max_fds = read_kernel::<u32>(fdt, off.fdt_max_fds)?;
    if fd as u32 >= max_fds {
        return Some(0);
    }
    let array = read_kernel::<u64>(fdt, off.fdt_fd)?;
    read_kernel::<u64>(array + (fd as u64) * 8, 0)
}

/// Classify `file` (pipe, AF_UNIX/TCP stream socket, other) from its inode and socket.
/// Returns the state and, for sockets, the `struct sock *` and the AF_UNIX peer's; `None`
/// when a kernel structure could not be read (nothing is then known, and nothing cached).
#[inline(always)]
fn classify(file: u64) -> Option<(FdState, u64, u64)> {
    let off = OFFSETS.load();
    let mut st = FdState {
        file,
        ..FdState::default()
    };
    let inode = read_kernel::<u64>(file, off.file_inode)?;
    let mode = read_kernel::<u16>(inode, off.inode_mode)?;
    st.inode = read_kernel::<u64>(inode, off.inode_ino)?;
    match mode & S_IFMT {
        S_IFIFO => st.kind = FD_PIPE,
        S_IFSOCK => {
            let sock = read_kernel::<u64>(file, off.file_private_data)?;
            if read_kernel::<i16>(sock, off.socket_type)? != SOCK_STREAM {
                return Some((st, 0, 0));
            }
            let sk = read_kernel::<u64>(sock, off.socket_sk)?;
            let mut peer = 0;
            match read_kernel::<u16>(sk, off.sock_family) {
                Some(AF_UNIX) => {
                    st.kind = FD_UNIX;
                    // The peer's inode pairs the two ends of a socketpair (Node hands its
                    // children stdio over those) the way the shared inode pairs a pipe.
                    peer = read_kernel::<u64>(sk, off.unix_peer).unwrap_or(0);
                    if peer != 0 {
                        let psock = read_kernel::<u64>(peer, off.sock_socket).unwrap_or(0);
                        if psock != 0 {
                            st.peer_inode = read_kernel::<u64>(
                                psock + off.socket_to_inode as u64,
                                off.inode_ino,
                            )
                            .unwrap_or(0);
                        }
                    }
                }
                Some(AF_INET) | Some(AF_INET6) => st.kind = FD_TCP,
                _ => {}
            }
            return Some((st, sk, peer));
        }
        _ => {}
    }
    Some((st, 0, 0))
}

/// What a syscall's fd is, as far as capture is concerned.
enum Fd {
    /// A pipe or stream socket, with its state entry in `FDS`.
    Tracked(*mut FdState),
    /// Something mcptap never captures (a regular file, a tty, UDP): not kept in `FDS`, so
    /// that the map holds only what matters; the skip cache remembers it instead.
    Untracked,
    /// Not open, or its kernel structures could not be read (counted): nothing is cached,
    /// the next syscall looks again.
    Unknown,
}

/// The state of (tgid, fd), from the cache when it still describes the same file. A socket
/// seen for the first time is announced with a record built in scratch slot `scratch`.
#[inline(always)]
fn fd_state(tgid: u32, tid: u32, fd: i32, gen_: u8, scratch: u32) -> Fd {
    let key = FdKey { tgid, fd };
    // Trusted without reading the task's file table: every way an fd can change without a
    // close we see (dup2, dup3, close_range, exec, a new process) bumps the generation.
    let mut fresh = true;
    if let Some(st) = FDS.get_ptr_mut(key) {
        if unsafe { (*st).gen_ } == gen_ {
            return Fd::Tracked(st);
        }
        // Rebuilt for a new generation, not lost to eviction.
        fresh = false;
    }
    let Some(file) = current_file(fd) else {
        count(counter::CLASSIFY_FAULTS, 1);
        return Fd::Unknown;
    };
    if file == 0 {
        return Fd::Unknown;
    }
    let Some((mut st, sk, peer)) = classify(file) else {
        count(counter::CLASSIFY_FAULTS, 1);
        return Fd::Unknown;
    };
    if st.kind == FD_OTHER {
        if !fresh {
            let _ = FDS.remove(key);
        }
        return Fd::Untracked;
    }
    st.gen_ = gen_;
    if fresh {
        st.flags |= FDSTATE_NEW;
    }
    if FDS.insert(key, st, 0).is_err() {
        count(counter::STASH_FULL, 1);
        return Fd::Unknown;
    }
    if st.kind == FD_TCP || st.kind == FD_UNIX {
        emit_socket(tgid, tid, fd, &st, sk, peer, scratch);
    }
    match FDS.get_ptr_mut(key) {
        Some(st) => Fd::Tracked(st),
        None => Fd::Unknown,
    }
}

/// Read the path of AF_UNIX `sk` (if bound) into `path`; returns its length.
#[inline(always)]
fn unix_path(sk: u64, path: *mut u8) -> u16 {
    let off = OFFSETS.load();
    if sk == 0 {
        return 0;
    }
    let Some(addr) = read_kernel::<u64>(sk, off.unix_addr) else {
        return 0;
    };
    if addr == 0 {
        return 0;
    }
    let Some(len) = read_kernel::<i32>(addr, off.unix_address_len) else {
        return 0;
    };
    // `len` counts sun_family (2 bytes) and the path.
    let mut n = (len - 2) as i64;
    if n <= 0 {
        return 0;
    }
    if n > UNIX_PATH_MAX as i64 {
        n = UNIX_PATH_MAX as i64;
    }
    let src = addr + off.unix_address_name as u64 + 2;
    let rc = unsafe { generated::bpf_probe_read_kernel(path as *mut _, n as u32, src as *const _) };
    if rc == 0 { n as u16 } else { 0 }
}

/// Tell userspace where a newly seen socket's two ends are: a [`RECORD_SOCKET`] record, built
/// in scratch slot `scratch` (not the syscall lane's: sys_exit may run on this CPU while the
/// calling program is preempted).
#[inline(always)]
fn emit_socket(tgid: u32, tid: u32, fd: i32, st: &FdState, sk: u64, peer: u64, scratch: u32) {
    let Some(buf) = SCRATCH.get_ptr_mut(scratch) else {
        return;
    };
    let buf = buf as *mut u8;
    let off = OFFSETS.load();
    let info = unsafe { &mut *(buf.add(HEADER_SIZE) as *mut SocketInfo) };
    *info = SocketInfo::default();
    if st.kind == FD_TCP {
        let family = read_kernel::<u16>(sk, off.sock_family).unwrap_or(0);
        info.family = family;
        info.local_port = read_kernel::<u16>(sk, off.sock_num).unwrap_or(0);
        info.remote_port = u16::from_be(read_kernel::<u16>(sk, off.sock_dport).unwrap_or(0));
        if family == AF_INET {
            let l = read_kernel::<[u8; 4]>(sk, off.sock_rcv_saddr).unwrap_or([0; 4]);
            let r = read_kernel::<[u8; 4]>(sk, off.sock_daddr).unwrap_or([0; 4]);
            info.local_addr[..4].copy_from_slice(&l);
            info.remote_addr[..4].copy_from_slice(&r);
        } else if off.sock_v6_daddr != OFFSET_MISSING && off.sock_v6_rcv_saddr != OFFSET_MISSING {
            info.local_addr = read_kernel::<[u8; 16]>(sk, off.sock_v6_rcv_saddr).unwrap_or([0; 16]);
            info.remote_addr = read_kernel::<[u8; 16]>(sk, off.sock_v6_daddr).unwrap_or([0; 16]);
        }
    } else {
        info.family = AF_UNIX;
        info.local_path_len = unix_path(sk, info.local_path.as_mut_ptr());
        info.remote_path_len = unix_path(peer, info.remote_path.as_mut_ptr());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let hdr = EventHeader {
        record: RECORD_SOCKET,
        fd_kind: st.kind,
        tgid,
        tid,
        fd,
        len: core::mem::size_of::<SocketInfo>() as u32,
        ts_enter_ns: now,
        ts_exit_ns: now,
        inode: st.inode,
        peer_inode: st.peer_inode,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..EventHeader::default()
    };
    unsafe {
        *(buf as *mut EventHeader) = hdr;
        let record = core::slice::from_raw_parts(
            buf as *const u8,
            HEADER_SIZE + core::mem::size_of::<SocketInfo>(),
        );
        if EVENTS.output::<[u8]>(record, wakeup_flags()).is_ok() {
            count(counter::RECORDS, 1);
        } else {
            count(counter::RINGBUF_FULL, 1);
        }
    }
}

/// The record flags for an fd state's pending marks.
#[inline(always)]
fn record_marks(state_flags: u8) -> u8 {
    let mut f = 0;
    if state_flags & FDSTATE_LOST != 0 {
        f |= FLAG_LOST_BEFORE;
    }
    if state_flags & FDSTATE_NEW != 0 {
        f |= FLAG_STATE_NEW;
    }
    f
}

/// A syscall that shipped nothing gives its fd's pending marks back, so that the next
/// record still carries them (a read that failed with EAGAIN after a loss).
#[inline(always)]
fn restore_marks(tgid: u32, stash: &Stash) {
    let marks = stash.fd.flags & FDSTATE_PENDING_MARKS;
    if marks == 0 {
        return;
    }
    if let Some(st) = FDS.get_ptr_mut(FdKey {
        tgid,
        fd: stash.fdnum,
    }) && unsafe { (*st).file } == stash.fd.file
    {
        unsafe { (*st).flags |= marks };
    }
}

#[inline(always)]
fn mark_lost(tgid: u32, fd: i32) {
    if let Some(st) = FDS.get_ptr_mut(FdKey { tgid, fd }) {
        unsafe { (*st).flags |= FDSTATE_LOST };
    }
}

/// Syscall argument `n` (0..3) from the `struct pt_regs` that `tp_btf/sys_enter` hands over.
/// The verifier knows the pointer's BTF type, so this is a plain load, not a helper call: it
/// is on the path of every syscall of every process.
#[inline(always)]
fn syscall_arg(regs: *const u64, n: usize) -> u64 {
    unsafe { core::ptr::read_volatile(regs.add(arch::ARG_WORDS[n])) }
}

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    let (sc, dir) = match id {
        arch::NR_READ => (syscall::READ, DIR_IN),
        arch::NR_WRITE => (syscall::WRITE, DIR_OUT),
        arch::NR_READV => (syscall::READV, DIR_IN),
        arch::NR_WRITEV => (syscall::WRITEV, DIR_OUT),
        arch::NR_RECVFROM => (syscall::RECVFROM, DIR_IN),
        arch::NR_SENDTO => (syscall::SENDTO, DIR_OUT),
        arch::NR_RECVMSG => (syscall::RECVMSG, DIR_IN),
        arch::NR_SENDMSG => (syscall::SENDMSG, DIR_OUT),
        arch::NR_CLOSE => (SC_CLOSE, 0),
        arch::NR_DUP2 | arch::NR_DUP3 => (SC_DUP, 0),
        arch::NR_CLOSE_RANGE => (SC_CLOSE_RANGE, 0),
        _ => return 0,
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !watched(tgid) {
        return 0;
    }
    let regs: *const u64 = ctx.arg(0);
    let fd = syscall_arg(regs, 0) as i32;
    // A peek leaves the bytes in the socket: the read that follows moves them, and only that
    // one is captured.
    let peek = match sc {
        syscall::RECVFROM => syscall_arg(regs, 3) & MSG_PEEK != 0,
        syscall::RECVMSG => syscall_arg(regs, 2) & MSG_PEEK != 0,
        _ => false,
    };
    if peek {
        return 0;
    }
    match sc {
        SC_CLOSE => {
            on_close(tgid, pid_tgid as u32, fd);
            return 0;
        }
        SC_DUP => {
            // dup2/dup3 replace the target fd without a close.
            forget_fd(tgid, syscall_arg(regs, 1) as i32);
            return 0;
        }
        SC_CLOSE_RANGE => {
            bump_gen(tgid);
            return 0;
        }
        _ => {}
    }
    let gen_ = byte_of(&GEN, tgid);
    // The fast path of every unwatched fd: one array load and a compare.
    let skip = skip_entry(tgid, fd, gen_);
    let slot = SKIP.get_ptr_mut(skip_slot(tgid, fd));
    if let Some(slot) = slot
        && skip != 0
        && unsafe { *slot } == skip
    {
        return 0;
    }
    let st = match fd_state(tgid, pid_tgid as u32, fd, gen_, SCRATCH_SOCKET) {
        Fd::Tracked(st) => st,
        Fd::Untracked => {
            if let Some(slot) = slot {
                unsafe { *slot = skip };
            }
            return 0;
        }
        Fd::Unknown => return 0,
    };
    let mut state = unsafe { *st };
    // A TLS socket whose SSL object is bound needs nothing more: its plaintext comes from the
    // OpenSSL probes.
    if state.flags & (FDSTATE_REJECTED | FDSTATE_TLS_BOUND) != 0 {
        if state.flags & FDSTATE_REJECTED != 0 {
            count(counter::REJECTED_FDS, 1);
        }
        if let Some(slot) = slot {
            unsafe { *slot = skip };
        }
        return 0;
    }
    let tid = pid_tgid as u32;
    if byte_of(&INFLIGHT, tid) != 0
        && let Some(stale) = STASH.get_ptr(tid)
    {
        // The exit of this thread's previous syscall never ran (the program was busy on this
        // CPU): its bytes are gone, so the fd it was on restarts at a frame boundary.
        count(counter::EXIT_MISSED, 1);
        let stale = unsafe { *stale };
        mark_lost(tgid, stale.fdnum);
        if stale.fdnum == fd {
            state.flags |= FDSTATE_LOST;
        }
    }
    // The pending marks travel with this syscall's first record; clear them in the map
    // (`sys_exit` puts them back if the syscall ships nothing).
    unsafe { (*st).flags &= !FDSTATE_PENDING_MARKS };
    let stash = Stash {
        ptr: syscall_arg(regs, 1),
        count: syscall_arg(regs, 2),
        ts_enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: state,
        fdnum: fd,
        syscall: sc,
        dir,
        _pad: [0; 2],
    };
    if STASH.insert(tid, stash, 0).is_err() {
        count(counter::STASH_FULL, 1);
        mark_lost(tgid, fd);
    } else {
        set_byte(&INFLIGHT, tid, 1);
    }
    0
}

/// `sys_enter`'s markers for the syscalls that change the fd table.
const SC_CLOSE: u8 = 0;
const SC_DUP: u8 = 254;
const SC_CLOSE_RANGE: u8 = 255;

/// Drop what is cached about (tgid, fd): the fd is closed or about to name another file.
#[inline(always)]
fn forget_fd(tgid: u32, fd: i32) {
    if let Some(slot) = SKIP.get_ptr_mut(skip_slot(tgid, fd)) {
        let key = skip_entry(tgid, fd, 0) & SKIP_KEY_MASK;
        if unsafe { *slot } & SKIP_KEY_MASK == key {
            unsafe { *slot = 0 };
        }
    }
    let _ = FDS.remove(FdKey { tgid, fd });
}

#[inline(always)]
fn on_close(tgid: u32, tid: u32, fd: i32) {
    let key = FdKey { tgid, fd };
    let Some(st) = FDS.get_ptr(key) else {
        forget_fd(tgid, fd);
        return;
    };
    let st = unsafe { *st };
    forget_fd(tgid, fd);
    if st.kind == FD_OTHER || st.flags & FDSTATE_REJECTED != 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let hdr = EventHeader {
        record: RECORD_CLOSE,
        fd_kind: st.kind,
        tgid,
        tid,
        fd,
        ts_enter_ns: now,
        ts_exit_ns: now,
        inode: st.inode,
        peer_inode: st.peer_inode,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..EventHeader::default()
    };
    output_header(&hdr);
}

#[inline(always)]
fn output_header(hdr: &EventHeader) {
    output_header_flags(hdr, wakeup_flags());
}

#[inline(always)]
fn output_header_flags(hdr: &EventHeader, flags: u64) {
    if EVENTS.output::<EventHeader>(hdr, flags).is_ok() {
        count(counter::RECORDS, 1);
    } else {
        count(counter::RINGBUF_FULL, 1);
    }
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // Most syscall exits are not ours: a byte test instead of a hash lookup. Only a watched
    // process's syscall is ever in flight.
    if byte_of(&INFLIGHT, tid) == 0 {
        return 0;
    }
    set_byte(&INFLIGHT, tid, 0);
    let Some(stash) = STASH.get_ptr(tid) else {
        return 0;
    };
    let stash = unsafe { *stash };
    let _ = STASH.remove(tid);
    let ret: i64 = ctx.arg(1);
    if ret <= 0 {
        restore_marks(tgid, &stash);
        return 0;
    }
    if stash.fd.kind == FD_TCP
        && stash.fd.flags & (FDSTATE_TLS | FDSTATE_SEEN) != FDSTATE_SEEN
        && tls_ciphertext(tgid, tid, &stash, ret as u64)
    {
        // The plaintext, shipped by the OpenSSL probes, carries the marks instead.
        restore_marks(tgid, &stash);
        return 0;
    }
    let Some(job) = JOBS.get_ptr_mut(JOB_SYSCALL) else {
        return 0;
    };
    let job = unsafe { &mut *job };
    job.hdr = EventHeader {
        record: RECORD_DATA,
        dir: stash.dir,
        fd_kind: stash.fd.kind,
        flags: record_marks(stash.fd.flags),
        syscall: stash.syscall,
        _pad: [0; 3],
        tgid,
        tid,
        fd: stash.fdnum,
        len: 0,
        ts_enter_ns: stash.ts_enter_ns,
        ts_exit_ns: unsafe { bpf_ktime_get_ns() },
        inode: stash.fd.inode,
        peer_inode: stash.fd.peer_inode,
        total: ret as u64,
        offset: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    job.shipped = 0;
    job.tail_calls = 0;
    match stash.syscall {
        syscall::READV | syscall::WRITEV => {
            job.iov_ptr = stash.ptr;
            job.iov_left = stash.count;
            job.cur_base = 0;
            job.cur_left = 0;
        }
        syscall::RECVMSG | syscall::SENDMSG => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24 on 64-bit.
            let iov: [u64; 2] = unsafe { bpf_probe_read_user((stash.ptr + 16) as *const [u64; 2]) }
                .unwrap_or([0, 0]);
            job.iov_ptr = iov[0];
            job.iov_left = iov[1];
            job.cur_base = 0;
            job.cur_left = 0;
        }
        _ => {
            job.iov_ptr = 0;
            job.iov_left = 0;
            job.cur_base = stash.ptr;
            job.cur_left = ret as u64;
        }
    }
    ship(&ctx, job, SCRATCH_SYSCALL, &TAILS);
    0
}

/// Continues shipping a syscall that [`sys_exit`] (or a previous `ship_more`) began.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn ship_more(ctx: RawTracePointContext) -> i32 {
    if let Some(job) = JOBS.get_ptr_mut(JOB_SYSCALL) {
        let job = unsafe { &mut *job };
        job.tail_calls += 1;
        ship(&ctx, job, SCRATCH_SYSCALL, &TAILS);
    }
    0
}

/// Ship up to [`CHUNKS_PER_CALL`] chunks of `job` from scratch slot `scratch`, then tail-call
/// slot [`TAIL_SHIP_MORE`] of `tails` (the lane's own `ship_more`) for the rest. Returns only
/// when the job is finished, shipped or truncated.
#[inline(always)]
fn ship<C: EbpfContext>(ctx: &C, job: &mut Job, scratch: u32, tails: &ProgramArray) {
    let Some(scratch) = SCRATCH.get_ptr_mut(scratch) else {
        return;
    };
    let scratch = scratch as *mut u8;
    for _ in 0..CHUNKS_PER_CALL {
        if job.shipped >= job.hdr.total {
            return;
        }
        if job.cur_left == 0 {
            if job.iov_left == 0 || job.iov_ptr == 0 {
                // The iovecs hold fewer bytes than the syscall returned (another thread
                // changed them): the rest cannot be found, so the syscall ends truncated.
                count(counter::IOV_SHORT, 1);
                truncate(job);
                return;
            }
            let iov: [u64; 2] = match unsafe { bpf_probe_read_user(job.iov_ptr as *const [u64; 2]) }
            {
                Ok(v) => v,
                Err(_) => {
                    count(counter::READ_FAULTS, 1);
                    truncate(job);
                    return;
                }
            };
            job.iov_ptr += 16;
            job.iov_left -= 1;
            job.cur_base = iov[0];
            job.cur_left = iov[1];
            continue;
        }
        let mut n = job.hdr.total - job.shipped;
        if n > job.cur_left {
            n = job.cur_left;
        }
        if n > CHUNK_MAX as u64 {
            n = CHUNK_MAX as u64;
        }
        let hdr = EventHeader {
            offset: job.shipped,
            len: n as u32,
            ..job.hdr
        };
        unsafe {
            *(scratch as *mut EventHeader) = hdr;
            let rc = generated::bpf_probe_read_user(
                scratch.add(HEADER_SIZE) as *mut _,
                n as u32,
                job.cur_base as *const _,
            );
            if rc != 0 {
                count(counter::READ_FAULTS, 1);
                truncate(job);
                return;
            }
            let record = core::slice::from_raw_parts(scratch, HEADER_SIZE + n as usize);
            if EVENTS.output::<[u8]>(record, wakeup_flags()).is_err() {
                count(counter::RINGBUF_FULL, 1);
                count(counter::RINGBUF_FULL_BYTES, job.hdr.total - job.shipped);
                // The rest of this syscall is useless to userspace after a hole.
                mark_lost(job.hdr.tgid, job.hdr.fd);
                return;
            }
        }
        count(counter::RECORDS, 1);
        count(counter::BYTES, n);
        // Only the first record of a syscall carries the marks.
        job.hdr.flags &= !(FLAG_LOST_BEFORE | FLAG_STATE_NEW);
        job.shipped += n;
        job.cur_base += n;
        job.cur_left -= n;
    }
    if job.shipped < job.hdr.total {
        if job.tail_calls >= MAX_TAIL_CALLS || job.iov_left > MAX_IOVECS as u64 {
            truncate(job);
            return;
        }
        unsafe { tails.tail_call(ctx, TAIL_SHIP_MORE) };
        count(counter::TAIL_CALL_FAILED, 1);
        truncate(job);
    }
}

/// Stop shipping `job` and say so: a header-only record flagged truncated, at the offset
/// where shipping stopped, and the counters.
#[inline(always)]
fn truncate(job: &mut Job) {
    count(counter::TRUNCATED, 1);
    count(counter::TRUNCATED_BYTES, job.hdr.total - job.shipped);
    let hdr = EventHeader {
        flags: job.hdr.flags | FLAG_TRUNCATED,
        offset: job.shipped,
        len: 0,
        ..job.hdr
    };
    if EVENTS.output::<EventHeader>(&hdr, wakeup_flags()).is_ok() {
        count(counter::RECORDS, 1);
    } else {
        count(counter::RINGBUF_FULL, 1);
        mark_lost(job.hdr.tgid, job.hdr.fd);
    }
}

/// Where the bytes of a stashed data syscall start, and how many of the `ret` it moved are
/// there contiguously.
#[inline(always)]
fn first_buffer(stash: &Stash, ret: u64) -> Option<(u64, u64)> {
    let iov_array = match stash.syscall {
        syscall::READV | syscall::WRITEV => stash.ptr,
        // struct user_msghdr: msg_iov at 16.
        syscall::RECVMSG | syscall::SENDMSG => unsafe {
            bpf_probe_read_user((stash.ptr + 16) as *const u64).ok()?
        },
        _ => return Some((stash.ptr, ret)),
    };
    let iov: [u64; 2] = unsafe { bpf_probe_read_user(iov_array as *const [u64; 2]).ok()? };
    Some((iov[0], if iov[1] < ret { iov[1] } else { ret }))
}

/// The TLS side of a TCP socket's data syscall. On the socket's first data, decide whether it
/// carries TLS; on a TLS socket's writes, bind the SSL object that produced the ciphertext (see
/// [`bio_write_enter`]). True when the bytes are ciphertext, which are never shipped.
#[inline(always)]
fn tls_ciphertext(tgid: u32, tid: u32, stash: &Stash, ret: u64) -> bool {
    let was_tls = stash.fd.flags & FDSTATE_TLS != 0;
    let fd = stash.fdnum;
    let Some(st) = FDS.get_ptr_mut(FdKey { tgid, fd }) else {
        return was_tls;
    };
    // The fd was closed and reused while this syscall ran: its new file gets its own check.
    if unsafe { (*st).file } != stash.fd.file {
        return was_tls;
    }
    let first = unsafe { (*st).flags } & FDSTATE_SEEN == 0;
    unsafe { (*st).flags |= FDSTATE_SEEN };
    let Some((base, n)) = first_buffer(stash, ret) else {
        return was_tls;
    };
    // A server's OpenSSL reads a record's 5-byte header alone: the check needs 3 bytes, the
    // binding a whole key.
    let Ok(head) = (unsafe { bpf_probe_read_user(base as *const [u64; 2]) }) else {
        return was_tls;
    };
    if first && !was_tls {
        let b = head[0].to_le_bytes();
        if n < 3 || !looks_tls(b[0], b[1], b[2]) {
            return false;
        }
        unsafe { (*st).flags |= FDSTATE_TLS };
        count(counter::TLS_SOCKETS, 1);
        let now = unsafe { bpf_ktime_get_ns() };
        output_header(&EventHeader {
            record: RECORD_TLS,
            fd_kind: FD_TCP,
            tgid,
            tid,
            fd,
            ts_enter_ns: stash.ts_enter_ns,
            ts_exit_ns: now,
            inode: stash.fd.inode,
            comm: bpf_get_current_comm().unwrap_or_default(),
            ..EventHeader::default()
        });
    }
    if stash.dir == DIR_OUT && n >= CIPHER_KEY_BYTES as u64 {
        let k = cipher_key(tgid, head);
        if let Some(ssl) = CIPHER_KEYS.get_ptr(k) {
            let ssl = unsafe { *ssl };
            let sock = SslSocket {
                inode: stash.fd.inode,
                fd,
                _pad: 0,
            };
            if SSL_SOCKETS.insert(ssl, sock, 0).is_ok() {
                unsafe { (*st).flags |= FDSTATE_TLS_BOUND };
                count(counter::TLS_BINDS, 1);
                // Tell userspace the socket will be decrypted (it may carry no plaintext at
                // all: a connection closed right after its handshake).
                output_header(&EventHeader {
                    record: RECORD_TLS,
                    fd_kind: FD_TCP,
                    flags: FLAG_TLS,
                    tgid,
                    tid,
                    fd,
                    ts_enter_ns: stash.ts_enter_ns,
                    ts_exit_ns: unsafe { bpf_ktime_get_ns() },
                    inode: stash.fd.inode,
                    comm: bpf_get_current_comm().unwrap_or_default(),
                    ..EventHeader::default()
                });
            }
            let _ = CIPHER_KEYS.remove(k);
        }
    }
    true
}

/// Entry of `SSL_read`/`SSL_write` (`ex`: the `_ex` forms, whose fourth argument receives the
/// byte count): remember the call until it returns.
#[inline(always)]
fn ssl_enter(ctx: &ProbeContext, op: u8, ex: bool) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !watched((pid_tgid >> 32) as u32) {
        return;
    }
    let call = SslCall {
        ssl: ctx.arg(0).unwrap_or(0),
        buf: ctx.arg(1).unwrap_or(0),
        out: if ex { ctx.arg(3).unwrap_or(0) } else { 0 },
        ts_enter_ns: unsafe { bpf_ktime_get_ns() },
        op,
        depth: 1,
        _pad: [0; 6],
    };
    // Replaces a call whose return never ran (the thread unwound past it).
    if SSL_CALLS.insert(pid_tgid as u32, call, 0).is_err() {
        count(counter::STASH_FULL, 1);
    }
}

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_READ, false);
    0
}

#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_READ, true);
    0
}

#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_WRITE, false);
    0
}

#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_WRITE, true);
    0
}

/// Entry of `SSL_do_handshake`, `SSL_connect` or `SSL_accept`: nothing to ship, but the
/// ciphertext `BIO_write` sees meanwhile belongs to this SSL object.
#[uprobe]
pub fn ssl_handshake_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !watched((pid_tgid >> 32) as u32) {
        return 0;
    }
    let tid = pid_tgid as u32;
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    if let Some(c) = SSL_CALLS.get_ptr_mut(tid)
        && unsafe { (*c).ssl } == ssl
        && unsafe { (*c).depth } > 0
    {
        // Inside a call on the same object (SSL_connect → SSL_do_handshake).
        unsafe { (*c).depth = (*c).depth.saturating_add(1) };
        return 0;
    }
    let call = SslCall {
        ssl,
        ts_enter_ns: unsafe { bpf_ktime_get_ns() },
        depth: 1,
        ..SslCall::default()
    };
    if SSL_CALLS.insert(tid, call, 0).is_err() {
        count(counter::STASH_FULL, 1);
    }
    0
}

#[uretprobe]
pub fn ssl_handshake_ret(_ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(c) = SSL_CALLS.get_ptr_mut(tid) {
        unsafe {
            if (*c).depth > 1 {
                (*c).depth -= 1;
            } else if (*c).op == 0 {
                let _ = SSL_CALLS.remove(tid);
            }
        }
    }
    0
}

/// `BIO_write` inside an SSL call is OpenSSL handing ciphertext to the SSL object's write BIO
/// (or its buffering BIO in front of it): remember its first bytes for the SSL object until
/// a TLS socket's write shows the same bytes ([`tls_ciphertext`]). Once the object is bound,
/// this costs one lookup.
#[uprobe]
pub fn bio_write_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = SSL_CALLS.get_ptr(pid_tgid as u32) else {
        return 0;
    };
    let len: i32 = ctx.arg(2).unwrap_or(0);
    if (len as i64) < CIPHER_KEY_BYTES as i64 {
        return 0;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: unsafe { (*call).ssl },
    };
    if let Some(sock) = SSL_SOCKETS.get_ptr(key) {
        let sock = unsafe { *sock };
        // Bound, unless that fd has been closed or reused since (a freed SSL's address
        // reused for a new connection).
        if let Some(st) = FDS.get_ptr(FdKey { tgid, fd: sock.fd })
            && unsafe { (*st).inode } == sock.inode
        {
            return 0;
        }
    }
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    if let Ok(head) = unsafe { bpf_probe_read_user(buf as *const [u64; 2]) } {
        let _ = CIPHER_KEYS.insert(cipher_key(tgid, head), key, 0);
    }
    0
}

/// Return of `SSL_read`, `SSL_write` or their `_ex` forms: ship the plaintext they moved.
#[uretprobe]
pub fn ssl_data_ret(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let Some(call) = SSL_CALLS.get_ptr(tid) else {
        return 0;
    };
    let call = unsafe { *call };
    if call.op == 0 {
        // A handshake call's entry is on top: this return is not the call it describes.
        return 0;
    }
    let _ = SSL_CALLS.remove(tid);
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    let sock = SSL_SOCKETS.get_ptr(key).map(|s| unsafe { *s });
    let ret: i32 = ctx.ret();
    let n = if call.out != 0 {
        if ret != 1 {
            return 0;
        }
        match unsafe { bpf_probe_read_user(call.out as *const u64) } {
            Ok(n) => n,
            Err(_) => {
                // How many bytes moved is unknown: the stream has a hole.
                count(counter::READ_FAULTS, 1);
                if let Some(sock) = sock {
                    mark_lost(tgid, sock.fd);
                }
                return 0;
            }
        }
    } else if ret > 0 {
        ret as u64
    } else {
        return 0;
    };
    if n == 0 {
        return 0;
    }
    let Some(sock) = sock else {
        // Plaintext of an SSL object whose socket is not known: counted, not shipped.
        count(counter::TLS_UNBOUND, 1);
        count(counter::TLS_UNBOUND_BYTES, n);
        return 0;
    };
    let Some(busy) = TLS_BUSY.get_ptr_mut(0) else {
        return 0;
    };
    if unsafe { *busy } != 0 {
        count(counter::TLS_BUSY, 1);
        mark_lost(tgid, sock.fd);
        return 0;
    }
    unsafe { *busy = 1 };
    ship_tls(&ctx, key, sock, tid, &call, n);
    // Not reached when shipping went on in a tail call: `ssl_ship_more` frees the lane then.
    unsafe { *busy = 0 };
    0
}

/// Ship `n` plaintext bytes of `call` as records of its SSL object's socket, in the TLS lane
/// (which the caller holds).
#[inline(always)]
fn ship_tls(ctx: &RetProbeContext, key: SslKey, sock: SslSocket, tid: u32, call: &SslCall, n: u64) {
    let tgid = key.tgid;
    let st = match fd_state(tgid, tid, sock.fd, byte_of(&GEN, tgid), SCRATCH_TLS) {
        Fd::Tracked(st) if unsafe { (*st).inode } == sock.inode => Some(st),
        _ => None,
    };
    let Some(st) = st else {
        // The socket is closed (its fd is gone or names another file now): these bytes
        // never travel.
        let _ = SSL_SOCKETS.remove(key);
        count(counter::TLS_AFTER_CLOSE, 1);
        return;
    };
    let state = unsafe { *st };
    if state.flags & FDSTATE_REJECTED != 0 {
        return;
    }
    // The plaintext flows, so the ciphertext must not (an entry rebuilt since the binding has
    // lost those marks); the pending marks travel with this record.
    unsafe {
        (*st).flags =
            (state.flags | FDSTATE_TLS | FDSTATE_TLS_BOUND | FDSTATE_SEEN) & !FDSTATE_PENDING_MARKS;
    }
    let Some(job) = JOBS.get_ptr_mut(JOB_TLS) else {
        return;
    };
    let job = unsafe { &mut *job };
    job.hdr = EventHeader {
        record: RECORD_DATA,
        dir: if call.op == syscall::SSL_READ {
            DIR_IN
        } else {
            DIR_OUT
        },
        fd_kind: state.kind,
        flags: FLAG_TLS | record_marks(state.flags),
        syscall: call.op,
        _pad: [0; 3],
        tgid,
        tid,
        fd: sock.fd,
        len: 0,
        ts_enter_ns: call.ts_enter_ns,
        ts_exit_ns: unsafe { bpf_ktime_get_ns() },
        inode: state.inode,
        peer_inode: state.peer_inode,
        total: n,
        offset: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    job.iov_ptr = 0;
    job.iov_left = 0;
    job.cur_base = call.buf;
    job.cur_left = n;
    job.shipped = 0;
    job.tail_calls = 0;
    ship(ctx, job, SCRATCH_TLS, &TLS_TAILS);
}

/// Continues shipping TLS plaintext that [`ssl_data_ret`] began.
#[uretprobe]
pub fn ssl_ship_more(ctx: RetProbeContext) -> u32 {
    if let Some(job) = JOBS.get_ptr_mut(JOB_TLS) {
        let job = unsafe { &mut *job };
        job.tail_calls += 1;
        ship(&ctx, job, SCRATCH_TLS, &TLS_TAILS);
    }
    if let Some(busy) = TLS_BUSY.get_ptr_mut(0) {
        unsafe { *busy = 0 };
    }
    0
}

/// A new process inherits its parent's watch byte: a `--pid` tree stays watched, and a child
/// of a `--comm` process is watched until it execs something else.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_fork(ctx: RawTracePointContext) -> i32 {
    let child: u64 = ctx.arg(1);
    let off = OFFSETS.load();
    let Some(child_tgid) = read_kernel::<u32>(child, off.task_tgid) else {
        return 0;
    };
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if child_tgid != parent_tgid {
        // A new process: whatever is cached under its (possibly reused) pid is stale.
        bump_gen(child_tgid);
        if CONFIG.load().all_processes == 0 {
            set_watch_byte(child_tgid, watch_byte(parent_tgid));
        }
    }
    0
}

/// After exec the comm is the new program's: re-evaluate the comm filter, and tell userspace
/// to refresh what it knows of the process.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_exec(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Exec closed the close-on-exec fds.
    bump_gen(tgid);
    let cfg = CONFIG.load();
    let comm = bpf_get_current_comm().unwrap_or_default();
    if cfg.all_processes == 0 && cfg.comm_filter != 0 {
        let by_pid = watch_byte(tgid) & WATCH_BY_PID;
        let by_comm = if COMMS.get_ptr(comm).is_some() {
            WATCH_BY_COMM
        } else {
            0
        };
        set_watch_byte(tgid, by_pid | by_comm);
    }
    if watched(tgid) {
        let now = unsafe { bpf_ktime_get_ns() };
        // Wake the agent now: it sets the OpenSSL probes on the new program, which may start
        // TLS within milliseconds.
        output_header_flags(
            &EventHeader {
                record: RECORD_EXEC,
                tgid,
                tid: pid_tgid as u32,
                fd: -1,
                ts_enter_ns: now,
                ts_exit_ns: now,
                comm,
                ..EventHeader::default()
            },
            BPF_RB_FORCE_WAKEUP,
        );
    }
    0
}

/// The leader of a watched process exited: userspace ends its streams and pending calls.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_exit(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // A thread that dies inside a syscall never reaches its exit.
    if byte_of(&INFLIGHT, tid) != 0 {
        set_byte(&INFLIGHT, tid, 0);
        let _ = STASH.remove(tid);
    }
    // Nor does one that dies inside an OpenSSL call reach its return.
    let _ = SSL_CALLS.remove(tid);
    if tid != tgid || !watched(tgid) {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    output_header(&EventHeader {
        record: RECORD_EXIT,
        tgid,
        tid: tgid,
        fd: -1,
        ts_enter_ns: now,
        ts_exit_ns: now,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..EventHeader::default()
    });
    0
}

/// Start-up self-test: read this task's tgid through `bpf_get_current_task()` and
/// `bpf_probe_read_kernel` at the BTF offset, for the agent's own thread only. It tells
/// userspace whether lockdown lets programs read kernel memory and whether the offset is right.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn selftest(_ctx: RawTracePointContext) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid != CONFIG.load().self_tgid {
        return 0;
    }
    let Some(out) = SELFTEST.get_ptr_mut(0) else {
        return 0;
    };
    let task = unsafe { bpf_get_current_task() };
    let off = OFFSETS.load();
    let (read_ret, tgid_read) =
        match unsafe { bpf_probe_read_kernel((task + off.task_tgid as u64) as *const u32) } {
            Ok(v) => (0, v),
            Err(e) => (e, 0),
        };
    unsafe {
        *out = SelfTest {
            ran: 1,
            read_ret,
            tgid_read,
            tgid_helper: tgid,
        };
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The floor for benchmarks: an empty program on the same hook as `sys_enter`. What it costs
/// is what any program on this hook costs; mcptap's overhead is measured against it.
#[btf_tracepoint(function = "sys_enter")]
pub fn noop_enter(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// The floor for benchmarks, on the same hook as `sys_exit`.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn noop_exit(_ctx: RawTracePointContext) -> i32 {
    0
}
