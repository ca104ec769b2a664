//! Go's `crypto/tls`: plain uprobes at the entry of `(*Conn).Read` and `(*Conn).Write` and at
//! every `ret` of each (never uretprobes: they rewrite a return address on a stack the Go
//! runtime may move). Go's register ABI: at entry the receiver is in RAX, the buffer in RBX,
//! its length in RCX, the goroutine in R14; at a `ret`, `n` is in RAX and R14 is still the
//! goroutine. A goroutine may block in Read and return on another thread, so calls are kept
//! by (process, goroutine). The socket is the `*tls.Conn`'s own, read through
//! [`GO_CONN_OFFSETS`]; its plaintext is shipped like OpenSSL's, in the TLS lane.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
};
use mcptap_abi::{GO_CONN_OFFSETS, GoCall, SslCall, SslKey, SslSocket, counter, syscall, tls_lib};

use crate::{
    fd::{Fd, fd_state},
    maps::{GEN, GO_CALLS, SCRATCH_TLS, byte_of, count, watched},
    tls::ship_in_lane,
};

/// The registers of a uprobe's context.
#[inline(always)]
fn regs(ctx: &ProbeContext) -> &aya_ebpf::bindings::pt_regs {
    unsafe { &*ctx.regs }
}

/// The socket fd of a `*tls.Conn`, through the `net.Conn` it wraps; `None` when a read
/// faults (a `tls.Conn` over something that is not a socket connection).
#[inline(always)]
fn conn_fd(conn: u64) -> Option<i32> {
    let [iface, netfd, sysfd] = GO_CONN_OFFSETS;
    let inner: u64 = unsafe { bpf_probe_read_user((conn + iface) as *const u64).ok()? };
    let fd_ptr: u64 = unsafe { bpf_probe_read_user((inner + netfd) as *const u64).ok()? };
    let fd: i64 = unsafe { bpf_probe_read_user((fd_ptr + sysfd) as *const i64).ok()? };
    i32::try_from(fd).ok().filter(|fd| *fd >= 0)
}

/// The call being entered, when its process is watched: the `*tls.Conn`, the buffer, the
/// time and the socket's fd; with the process, the thread and the goroutine.
#[inline(always)]
fn entered(ctx: &ProbeContext, op: u8) -> Option<(SslKey, u32, GoCall)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !watched(tgid) {
        return None;
    }
    let r = regs(ctx);
    let call = GoCall {
        conn: r.rax,
        buf: r.rbx,
        ts_enter_ns: unsafe { bpf_ktime_get_ns() },
        fd: conn_fd(r.rax).unwrap_or(-1),
        op,
        _pad: [0; 3],
    };
    let goroutine = SslKey {
        tgid,
        _pad: 0,
        ssl: r.r14,
    };
    Some((goroutine, pid_tgid as u32, call))
}

/// Entry of `crypto/tls.(*Conn).Read`: remember the call until one of its `ret`s.
#[uprobe]
pub fn go_tls_read_enter(ctx: ProbeContext) -> u32 {
    if let Some((goroutine, _, call)) = entered(&ctx, syscall::SSL_READ) {
        // A second entry before a return (the stack grew, and the function started over)
        // replaces the first.
        if GO_CALLS.insert(goroutine, call, 0).is_err() {
            count(counter::STASH_FULL, 1);
        }
    }
    0
}

/// Entry of `crypto/tls.(*Conn).Write`: its buffer is shipped whole, now (a write that then
/// fails is reported as sent).
#[uprobe]
pub fn go_tls_write_enter(ctx: ProbeContext) -> u32 {
    if let Some((goroutine, tid, call)) = entered(&ctx, syscall::SSL_WRITE) {
        let _ = ship_go(&ctx, goroutine.tgid, tid, &call, regs(&ctx).rcx as i64);
    }
    0
}

/// A `ret` of Read: ship the plaintext it read.
#[uprobe]
pub fn go_tls_ret(ctx: ProbeContext) -> u32 {
    match try_go_ret(&ctx) {
        Some(()) | None => 0,
    }
}

#[inline(always)]
fn try_go_ret(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let r = regs(ctx);
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: r.r14,
    };
    let call = unsafe { *GO_CALLS.get_ptr(key)? };
    let _ = GO_CALLS.remove(key);
    ship_go(ctx, tgid, tid, &call, r.rax as i64)
}

/// Ship `n` plaintext bytes of `call` (nothing when `n` is not positive) as its socket's.
#[inline(always)]
fn ship_go(ctx: &ProbeContext, tgid: u32, tid: u32, call: &GoCall, n: i64) -> Option<()> {
    if n <= 0 {
        return None;
    }
    let n = n as u64;
    if call.fd < 0 {
        // Plaintext of a connection whose socket could not be read: counted, not shipped.
        count(counter::TLS_UNBOUND, 1);
        count(counter::TLS_UNBOUND_BYTES, n);
        return None;
    }
    let inode = match fd_state(tgid, tid, call.fd, byte_of(&GEN, tgid), SCRATCH_TLS) {
        Fd::Tracked(st) => unsafe { (*st).inode },
        _ => {
            count(counter::TLS_AFTER_CLOSE, 1);
            return None;
        }
    };
    let sock = SslSocket {
        inode,
        fd: call.fd,
        _pad: 0,
    };
    let ssl = SslCall {
        ssl: call.conn,
        buf: call.buf,
        out: 0,
        ts_enter_ns: call.ts_enter_ns,
        op: call.op,
        depth: 1,
        lib: tls_lib::GO,
        vectored: 0,
        _pad: [0; 4],
    };
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.conn,
    };
    ship_in_lane(ctx, key, sock, tid, &ssl, n)
}
