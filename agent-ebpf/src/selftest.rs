//! The start-up self-test, attached by userspace for a moment before anything else: can a
//! program read kernel memory here (lockdown), and is the BTF offset of `task_struct.tgid`
//! right? Every classification depends on both. The result goes to userspace in the
//! `SELFTEST` map, and what was read to the agent's log (aya-log), once.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use aya_log_ebpf::{error, info, warn};
use mcptap_abi::SelfTest;

use crate::maps::{CONFIG, OFFSETS, SELFTEST};

/// Start-up self-test: read this task's tgid through `bpf_get_current_task()` and
/// `bpf_probe_read_kernel` at the BTF offset, for the agent's own thread only. It tells
/// userspace whether lockdown lets programs read kernel memory and whether the offset is right.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn selftest(ctx: RawTracePointContext) -> i32 {
    match try_selftest(&ctx) {
        Some(()) | None => 0,
    }
}

#[inline(always)]
fn try_selftest(ctx: &RawTracePointContext) -> Option<()> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid != CONFIG.load().self_tgid {
        return None;
    }
    let Some(out) = SELFTEST.get_ptr_mut(0) else {
        error!(ctx, "kernel self-test: the SELFTEST map has no slot 0");
        return None;
    };
    // It runs for every syscall of the agent while attached: say what it read the first time.
    let first = unsafe { (*out).ran } == 0;
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
    if first && read_ret == 0 {
        info!(
            ctx,
            "kernel self-test: bpf_probe_read_kernel read tgid {} at task_struct offset {}; \
             bpf_get_current_pid_tgid says {}",
            tgid_read,
            off.task_tgid,
            tgid
        );
    } else if first {
        warn!(
            ctx,
            "kernel self-test: bpf_probe_read_kernel at task_struct offset {} failed with {}",
            off.task_tgid,
            read_ret
        );
    }
    Some(())
}
