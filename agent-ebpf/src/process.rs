//! Process lifecycle, from the scheduler's tracepoints: a fork passes the watch byte on, an
//! exec re-evaluates the comm filter and tells userspace (which then probes the new program
//! for OpenSSL), an exit ends the process's streams. Each also keeps the fd-table generation
//! and the per-thread stashes honest, since fds change there without a close we see.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use mcptap_abi::{Comm, EventHeader, RECORD_EXEC, RECORD_EXIT, WATCH_BY_COMM, WATCH_BY_PID};

use crate::{
    fd::read_kernel,
    maps::{
        COMMS, CONFIG, INFLIGHT, OFFSETS, SSL_CALLS, STASH, bump_gen, byte_of, set_byte,
        set_watch_byte, watch_byte, watched,
    },
    ship::{BPF_RB_FORCE_WAKEUP, output_header, output_header_flags},
};

/// A new process inherits its parent's watch byte: a `--pid` tree stays watched, and a child
/// of a `--comm` process is watched until it execs something else.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_fork(ctx: RawTracePointContext) -> i32 {
    match try_sched_fork(&ctx) {
        Some(()) | None => 0,
    }
}

#[inline(always)]
fn try_sched_fork(ctx: &RawTracePointContext) -> Option<()> {
    let child: u64 = ctx.arg(1);
    let off = OFFSETS.load();
    let child_tgid = read_kernel::<u32>(child, off.task_tgid)?;
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if child_tgid != parent_tgid {
        // A new process: whatever is cached under its (possibly reused) pid is stale.
        bump_gen(child_tgid);
        if CONFIG.load().all_processes == 0 {
            set_watch_byte(child_tgid, watch_byte(parent_tgid));
        }
    }
    Some(())
}

/// After exec the comm is the new program's: re-evaluate the comm filter, and tell userspace
/// to refresh what it knows of the process.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_exec(_ctx: RawTracePointContext) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // Exec closed the close-on-exec fds.
    bump_gen(tgid);
    let comm = bpf_get_current_comm().unwrap_or_default();
    refilter_comm(tgid, &comm);
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

/// With `--comm`, whether `tgid` is watched for its comm is decided again for its new `comm`;
/// being in a `--pid` tree stays.
#[inline(always)]
fn refilter_comm(tgid: u32, comm: &Comm) {
    let cfg = CONFIG.load();
    if cfg.all_processes == 0 && cfg.comm_filter != 0 {
        let by_pid = watch_byte(tgid) & WATCH_BY_PID;
        let by_comm = if COMMS.get_ptr(*comm).is_some() {
            WATCH_BY_COMM
        } else {
            0
        };
        set_watch_byte(tgid, by_pid | by_comm);
    }
}

/// A thread exited: its in-flight syscall and OpenSSL call are dropped. When it was the leader
/// of a watched process, userspace ends the process's streams and pending calls.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_exit(_ctx: RawTracePointContext) -> i32 {
    match try_sched_exit() {
        Some(()) | None => 0,
    }
}

#[inline(always)]
fn try_sched_exit() -> Option<()> {
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
        return None;
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
    Some(())
}
