//! The syscall path: `sys_enter` filters by process and syscall, classifies the fd and
//! stashes the arguments of a data syscall by thread; `sys_exit` picks the stash up and ships
//! the bytes the syscall moved. `close`, `dup2`/`dup3` and `close_range` keep the fd cache
//! honest.
//!
//! This runs for every syscall of every process on the host: an unwatched process costs the
//! syscall-id switch and one watch-byte load at entry and one in-flight byte load at exit, an
//! unwatched fd of a watched process one skip-cache load more. Everything here is
//! `#[inline(always)]` so that the fast path stays that and the verifier sees one function.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use mcptap_abi::{
    DIR_IN, DIR_OUT, EventHeader, FD_OTHER, FD_TCP, FDSTATE_LOST, FDSTATE_PENDING_MARKS,
    FDSTATE_REJECTED, FDSTATE_SEEN, FDSTATE_TLS, FDSTATE_TLS_BOUND, FdKey, FdState, RECORD_CLOSE,
    RECORD_DATA, SKIP_KEY_MASK, Stash, counter, skip_entry, skip_slot, syscall,
};

use crate::{
    fd::{Fd, fd_state, mark_lost, record_marks, restore_marks},
    maps::{
        FDS, GEN, INFLIGHT, JOB_SYSCALL, JOBS, SCRATCH_SOCKET, SCRATCH_SYSCALL, SKIP, STASH, TAILS,
        bump_gen, byte_of, count, set_byte, watched,
    },
    ship::{Job, output_header, ship},
    tls::tls_ciphertext,
};

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

const MSG_PEEK: u64 = 2;

/// Syscall argument `n` (0..3) from the `struct pt_regs` that `tp_btf/sys_enter` hands over.
/// The verifier knows the pointer's BTF type, so this is a plain load, not a helper call: it
/// is on the path of every syscall of every process.
#[inline(always)]
fn syscall_arg(regs: *const u64, n: usize) -> u64 {
    unsafe { core::ptr::read_volatile(regs.add(arch::ARG_WORDS[n])) }
}

/// Entry of every syscall of every process: a data syscall of a watched process on a pipe or
/// stream socket is stashed until its exit; close, dup2/dup3 and close_range keep the fd cache
/// right.
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    match try_sys_enter(&ctx) {
        Some(()) | None => 0,
    }
}

/// `None` as soon as the syscall turns out not to be one to capture: on the fast path that is
/// at the syscall id, the watch byte or the skip cache.
#[inline(always)]
fn try_sys_enter(ctx: &BtfTracePointContext) -> Option<()> {
    let (sc, dir) = traced_syscall(ctx.arg(1))?;
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !watched(tgid) {
        return None;
    }
    let regs: *const u64 = ctx.arg(0);
    let fd = syscall_arg(regs, 0) as i32;
    if peeks(sc, regs) {
        return None;
    }
    // The syscalls that change the fd table. (Inline: as a helper, LLVM lays out the path to
    // the skip cache differently.)
    match sc {
        SC_CLOSE => {
            on_close(tgid, pid_tgid as u32, fd);
            return None;
        }
        SC_DUP => {
            // dup2/dup3 replace the target fd without a close.
            forget_fd(tgid, syscall_arg(regs, 1) as i32);
            return None;
        }
        SC_CLOSE_RANGE => {
            bump_gen(tgid);
            return None;
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
        return None;
    }
    let (st, mut state) = capturable_fd(tgid, pid_tgid as u32, fd, gen_, slot, skip)?;
    let tid = pid_tgid as u32;
    note_missed_exit(tgid, tid, fd, &mut state);
    if state.flags & FDSTATE_TLS == 0 {
        // The pending marks travel with this syscall's first record; clear them in the map
        // (`sys_exit` puts them back if the syscall ships nothing).
        unsafe { (*st).flags &= !FDSTATE_PENDING_MARKS };
    } else {
        // A TLS socket's syscalls ship nothing (its ciphertext never travels): its marks stay
        // in the map for its plaintext's first record, which another thread may ship while
        // this syscall runs; taken here and put back at exit, they would reach a later
        // record too, and mark a stream already under way as new.
        state.flags &= !FDSTATE_PENDING_MARKS;
    }
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
    Some(())
}

/// The syscalls `sys_enter` looks at: data syscalls as their [`syscall`] constant and
/// direction, the ones that change the fd table as an `SC_*` marker; `None` for the rest.
#[inline(always)]
fn traced_syscall(id: i64) -> Option<(u8, u8)> {
    Some(match id {
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
        _ => return None,
    })
}

/// A peek leaves the bytes in the socket: the read that follows moves them, and only that one
/// is captured.
#[inline(always)]
fn peeks(sc: u8, regs: *const u64) -> bool {
    match sc {
        syscall::RECVFROM => syscall_arg(regs, 3) & MSG_PEEK != 0,
        syscall::RECVMSG => syscall_arg(regs, 2) & MSG_PEEK != 0,
        _ => false,
    }
}

/// The state of a data syscall's fd (its entry in `FDS`, and a copy) when its bytes are to be
/// captured. An fd that never will be is remembered in the skip cache: `skip` in `slot`.
#[inline(always)]
fn capturable_fd(
    tgid: u32,
    tid: u32,
    fd: i32,
    gen_: u8,
    slot: Option<*mut u64>,
    skip: u64,
) -> Option<(*mut FdState, FdState)> {
    let st = match fd_state(tgid, tid, fd, gen_, SCRATCH_SOCKET) {
        Fd::Tracked(st) => st,
        Fd::Untracked => {
            if let Some(slot) = slot {
                unsafe { *slot = skip };
            }
            return None;
        }
        Fd::Unknown => return None,
    };
    let state = unsafe { *st };
    // A TLS socket whose SSL object is bound needs nothing more: its plaintext comes from the
    // OpenSSL probes.
    if state.flags & (FDSTATE_REJECTED | FDSTATE_TLS_BOUND) != 0 {
        if state.flags & FDSTATE_REJECTED != 0 {
            count(counter::REJECTED_FDS, 1);
        }
        if let Some(slot) = slot {
            unsafe { *slot = skip };
        }
        return None;
    }
    Some((st, state))
}

/// The exit of this thread's previous syscall never ran (the program was busy on this CPU):
/// its bytes are gone, so the fd it was on restarts at a frame boundary (`state` is `fd`'s).
#[inline(always)]
fn note_missed_exit(tgid: u32, tid: u32, fd: i32, state: &mut FdState) {
    if byte_of(&INFLIGHT, tid) != 0
        && let Some(stale) = STASH.get_ptr(tid)
    {
        count(counter::EXIT_MISSED, 1);
        let stale = unsafe { *stale };
        mark_lost(tgid, stale.fdnum);
        if stale.fdnum == fd {
            state.flags |= FDSTATE_LOST;
        }
    }
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

/// A close: forget the fd, and tell userspace when it was one whose bytes it gets.
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

/// Exit of every syscall of every process: ship the bytes of a stashed data syscall.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    match try_sys_exit(&ctx) {
        Some(()) | None => 0,
    }
}

/// `None` when the syscall shipped nothing: most often at the in-flight byte, the fast path.
#[inline(always)]
fn try_sys_exit(ctx: &RawTracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let tid = pid_tgid as u32;
    // Most syscall exits are not ours: a byte test instead of a hash lookup. Only a watched
    // process's syscall is ever in flight.
    if byte_of(&INFLIGHT, tid) == 0 {
        return None;
    }
    set_byte(&INFLIGHT, tid, 0);
    let stash = unsafe { *STASH.get_ptr(tid)? };
    let _ = STASH.remove(tid);
    let ret: i64 = ctx.arg(1);
    if ret <= 0 {
        restore_marks(tgid, &stash);
        return None;
    }
    if stash.fd.kind == FD_TCP
        && stash.fd.flags & (FDSTATE_TLS | FDSTATE_SEEN) != FDSTATE_SEEN
        && tls_ciphertext(tgid, tid, &stash, ret as u64)
    {
        // The plaintext, shipped by the OpenSSL probes, carries the marks instead.
        restore_marks(tgid, &stash);
        return None;
    }
    let job = unsafe { &mut *JOBS.get_ptr_mut(JOB_SYSCALL)? };
    start_job(job, tgid, tid, &stash, ret as u64);
    ship(ctx, job, SCRATCH_SYSCALL, &TAILS);
    Some(())
}

/// Set `job` up to ship the `ret` bytes that the stashed syscall moved: its header, and where
/// the bytes are (one buffer, or an iovec array to walk).
#[inline(always)]
fn start_job(job: &mut Job, tgid: u32, tid: u32, stash: &Stash, ret: u64) {
    job.hdr = EventHeader {
        record: RECORD_DATA,
        dir: stash.dir,
        fd_kind: stash.fd.kind,
        flags: record_marks(stash.fd.flags),
        syscall: stash.syscall,
        tls_lib: 0,
        _pad: [0; 2],
        tgid,
        tid,
        fd: stash.fdnum,
        len: 0,
        ts_enter_ns: stash.ts_enter_ns,
        ts_exit_ns: unsafe { bpf_ktime_get_ns() },
        inode: stash.fd.inode,
        peer_inode: stash.fd.peer_inode,
        total: ret,
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
            job.cur_left = ret;
        }
    }
}
