//! The start-up self-test, attached by userspace for a moment before anything else: can a
//! program read kernel memory here (lockdown), and is the BTF offset of `task_struct.tgid`
//! right? Every classification depends on both.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
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
fn try_selftest(_ctx: &RawTracePointContext) -> Option<()> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid != CONFIG.load().self_tgid {
        return None;
    }
    let out = SELFTEST.get_ptr_mut(0)?;
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
    Some(())
}
