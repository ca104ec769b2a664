//! Empty programs on the hooks of `sys_enter` and `sys_exit`, for `mcptap floor`: what they
//! cost is what any program there costs, the floor that mcptap's overhead is measured against.
//! No map, no helper.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};

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
