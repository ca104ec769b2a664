//! rustls: plaintext at the boundary of its buffered API, found by symbol (see the agent's
//! `capture::tls::rustls`). rustls makes no syscall of its own: the application moves the
//! ciphertext (`read_tls`/`write_tls`), so a connection is bound to its socket around its
//! calls rather than inside them.
//!
//! - Writes: `Writer::write`/`write_vectored` take `&mut Writer`, whose first word is the
//!   connection (the data pointer of its `&mut dyn PlaintextSink`), and return
//!   `io::Result<usize>` (RAX 0 on success, the count in RDX). A connection with a socket is
//!   shipped at the return. One without is parked by thread: the caller flushes what rustls
//!   buffered at once, on the same thread (`ChunkVecBuffer::write_to`), and the socket write
//!   inside that flush binds the connection (the syscall path sees the flush's entry in
//!   `SSL_CALLS`); the parked plaintext, whose buffer the caller still holds, is shipped at
//!   the flush's return.
//! - Reads: `Read::read` (`&mut Reader`, whose first word is the connection's
//!   received-plaintext buffer) ships at its return; tokio-rustls instead takes
//!   `into_first_chunk` (the slice it returns is kept) and then `consume`s what it copied,
//!   shipped at `consume`'s entry from that slice. A read's connection is bound to the TLS socket its
//!   thread read ciphertext from just before (`read_tls`), as BoringSSL's server reads are.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use mcptap_abi::{
    RUSTLS_PARK_NS, RustlsChunk, RustlsParked, SslCall, SslKey, counter, syscall, tls_lib,
};

use crate::{
    maps::{RUSTLS_CHUNKS, RUSTLS_PARKED, SSL_CALLS, SSL_SOCKETS, count, watched},
    tls::{bind_recent_read, bound_live, ship_in_lane},
};

/// The word `&mut Writer`/`&mut Reader` (argument 0) points to first: the connection.
#[inline(always)]
fn first_word(ctx: &ProbeContext) -> Option<u64> {
    let this: u64 = ctx.arg(0)?;
    unsafe { bpf_probe_read_user(this as *const u64).ok() }
}

/// Remember a plaintext call (`op`, on buffer or iovec array `buf` of `count` entries when
/// `vectored`) on this thread until its return.
#[inline(always)]
fn enter(ctx: &ProbeContext, op: u8, vectored: bool) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !watched((pid_tgid >> 32) as u32) {
        return None;
    }
    let call = SslCall {
        ssl: first_word(ctx)?,
        buf: ctx.arg(1)?,
        out: if vectored { ctx.arg(2)? } else { 0 },
        ts_enter_ns: unsafe { bpf_ktime_get_ns() },
        op,
        depth: 1,
        lib: tls_lib::RUSTLS,
        vectored: vectored as u8,
        _pad: [0; 4],
    };
    if SSL_CALLS.insert(pid_tgid as u32, call, 0).is_err() {
        count(counter::STASH_FULL, 1);
    }
    Some(())
}

/// Entry of `<Writer as io::Write>::write(&mut self, buf: &[u8])`.
#[uprobe]
pub fn rustls_write_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx, syscall::SSL_WRITE, false);
    0
}

/// Entry of `<Writer as io::Write>::write_vectored(&mut self, bufs: &[IoSlice])`.
#[uprobe]
pub fn rustls_writev_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx, syscall::SSL_WRITE, true);
    0
}

/// Entry of `<Reader as io::Read>::read(&mut self, buf: &mut [u8])`.
#[uprobe]
pub fn rustls_read_enter(ctx: ProbeContext) -> u32 {
    let _ = enter(&ctx, syscall::SSL_READ, false);
    0
}

/// Return of a write or `read`: ship what it moved, or park a write whose connection has no
/// socket yet.
#[uretprobe]
pub fn rustls_data_ret(ctx: RetProbeContext) -> u32 {
    match try_data_ret(&ctx) {
        Some(()) | None => 0,
    }
}

#[inline(always)]
fn try_data_ret(ctx: &RetProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let call = unsafe { *SSL_CALLS.get_ptr(tid)? };
    if call.lib != tls_lib::RUSTLS || call.op == 0 {
        return None;
    }
    let _ = SSL_CALLS.remove(tid);
    let regs = unsafe { &*ctx.regs };
    // `io::Result<usize>`: the tag in RAX (0 is `Ok`), the count in RDX.
    if regs.rax != 0 || regs.rdx == 0 {
        return None;
    }
    let n = regs.rdx;
    let key = SslKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        ssl: call.ssl,
    };
    if call.op == syscall::SSL_READ {
        bind_recent_read(pid_tgid, call.ssl);
    } else if !bound_live(key) {
        let parked = RustlsParked { call, n };
        if RUSTLS_PARKED.insert(tid, parked, 0).is_err() {
            count(counter::STASH_FULL, 1);
        }
        return None;
    }
    ship_bound(ctx, key, tid, &call, n)
}

/// Ship `n` bytes of `call` if its connection has a socket; count them unbound otherwise.
#[inline(always)]
fn ship_bound<C: EbpfContext>(
    ctx: &C,
    key: SslKey,
    tid: u32,
    call: &SslCall,
    n: u64,
) -> Option<()> {
    let Some(sock) = SSL_SOCKETS.get_ptr(key).map(|s| unsafe { *s }) else {
        count(counter::TLS_UNBOUND, 1);
        count(counter::TLS_UNBOUND_BYTES, n);
        return None;
    };
    ship_in_lane(ctx, key, sock, tid, call, n)
}

/// Entry of `ChunkVecBuffer::write_to` (rustls writing ciphertext out): when this thread
/// parked a write, the socket write inside binds its connection.
#[uprobe]
pub fn rustls_flush_enter(_ctx: ProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(parked) = RUSTLS_PARKED.get_ptr(tid) {
        let call = SslCall {
            ssl: unsafe { (*parked).call.ssl },
            ts_enter_ns: unsafe { bpf_ktime_get_ns() },
            depth: 1,
            lib: tls_lib::RUSTLS,
            ..SslCall::default()
        };
        if SSL_CALLS.insert(tid, call, 0).is_err() {
            count(counter::STASH_FULL, 1);
        }
    }
    0
}

/// Return of `ChunkVecBuffer::write_to`: ship the parked write, now that its connection has
/// a socket (or count it unbound).
#[uretprobe]
pub fn rustls_flush_ret(ctx: RetProbeContext) -> u32 {
    match try_flush_ret(&ctx) {
        Some(()) | None => 0,
    }
}

#[inline(always)]
fn try_flush_ret(ctx: &RetProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    if let Some(c) = SSL_CALLS.get_ptr(tid)
        && unsafe { (*c).lib == tls_lib::RUSTLS && (*c).op == 0 }
    {
        let _ = SSL_CALLS.remove(tid);
    }
    let parked = unsafe { *RUSTLS_PARKED.get_ptr(tid)? };
    let _ = RUSTLS_PARKED.remove(tid);
    let key = SslKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        ssl: parked.call.ssl,
    };
    if unsafe { bpf_ktime_get_ns() }.saturating_sub(parked.call.ts_enter_ns) > RUSTLS_PARK_NS {
        // Not this write's flush: its buffer may be gone.
        count(counter::TLS_UNBOUND, 1);
        count(counter::TLS_UNBOUND_BYTES, parked.n);
        return None;
    }
    ship_bound(ctx, key, tid, &parked.call, parked.n)
}

/// Entry of `Reader::into_first_chunk(self)`: rustc passes the 16-byte `Reader` by reference
/// (RSI; its first word is the connection's buffer) and returns the 16-byte
/// `io::Result<&[u8]>` through the pointer in RDI.
#[uprobe]
pub fn rustls_chunk_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !watched((pid_tgid >> 32) as u32) {
        return 0;
    }
    let reader: u64 = ctx.arg(1).unwrap_or(0);
    let Ok(conn) = (unsafe { bpf_probe_read_user(reader as *const u64) }) else {
        return 0;
    };
    let chunk = RustlsChunk {
        conn,
        ptr: ctx.arg(0).unwrap_or(0),
        len: 0,
        ts_enter_ns: unsafe { bpf_ktime_get_ns() },
        returned: 0,
        _pad: [0; 7],
    };
    let _ = RUSTLS_CHUNKS.insert(pid_tgid as u32, chunk, 0);
    0
}

/// Return of `into_first_chunk`: the slice it wrote (pointer 0 for an error), kept for the
/// `consume` that follows.
#[uretprobe]
pub fn rustls_chunk_ret(_ctx: RetProbeContext) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    if let Some(chunk) = RUSTLS_CHUNKS.get_ptr_mut(tid) {
        unsafe {
            let slice = bpf_probe_read_user((*chunk).ptr as *const [u64; 2]).unwrap_or([0, 0]);
            (*chunk).ptr = slice[0];
            (*chunk).len = if slice[0] == 0 { 0 } else { slice[1] };
            (*chunk).returned = 1;
        }
    }
    0
}

/// Entry of `<Reader as BufRead>::consume(&mut self, amt)`: the caller took the first `amt`
/// bytes of the chunk its thread was last given for this connection; ship them.
#[uprobe]
pub fn rustls_consume_enter(ctx: ProbeContext) -> u32 {
    match try_consume(&ctx) {
        Some(()) | None => 0,
    }
}

#[inline(always)]
fn try_consume(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let chunk = unsafe { *RUSTLS_CHUNKS.get_ptr(tid)? };
    let _ = RUSTLS_CHUNKS.remove(tid);
    let conn = first_word(ctx)?;
    let amt: u64 = ctx.arg(1)?;
    if chunk.conn != conn || chunk.returned == 0 || chunk.ptr == 0 {
        return None;
    }
    let n = if amt < chunk.len { amt } else { chunk.len };
    if n == 0 {
        return None;
    }
    bind_recent_read(pid_tgid, conn);
    let call = SslCall {
        ssl: conn,
        buf: chunk.ptr,
        ts_enter_ns: chunk.ts_enter_ns,
        op: syscall::SSL_READ,
        depth: 1,
        lib: tls_lib::RUSTLS,
        ..SslCall::default()
    };
    let key = SslKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        ssl: conn,
    };
    ship_bound(ctx, key, tid, &call, n)
}
