//! TLS plaintext from uprobes on OpenSSL (`SSL_read`, `SSL_write`, their `_ex` forms), shipped
//! through the same chunking path as syscalls, flagged `FLAG_TLS` and attributed to the socket
//! the SSL object runs over, so that it joins that socket's streams.
//!
//! The SSL object is bound to its socket by the ciphertext itself: what OpenSSL hands its
//! write BIO (`BIO_write` inside an SSL call) is what the application then writes to the
//! socket, whether OpenSSL writes it there itself (socket BIO) or the application moves it
//! (memory BIOs: Python's asyncio, Node). [`tls_ciphertext`], on the syscall path, marks a
//! socket whose first bytes are a TLS record and makes the binding; such a socket's
//! ciphertext is never shipped.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use mcptap_abi::{
    CIPHER_KEY_BYTES, DIR_IN, DIR_OUT, EventHeader, FD_TCP, FDSTATE_PENDING_MARKS,
    FDSTATE_REJECTED, FDSTATE_SEEN, FDSTATE_TLS, FDSTATE_TLS_BOUND, FLAG_TLS, FdKey, FdState,
    RECENT_READ_NS, RECORD_DATA, RECORD_TLS, RecentRead, SslCall, SslKey, SslSocket, Stash,
    cipher_key, counter, looks_tls, syscall, tls_lib,
};

use crate::{
    fd::{Fd, fd_state, mark_lost, record_marks},
    maps::{
        CIPHER_KEYS, FDS, GEN, JOB_TLS, JOBS, RECENT_TLS_READS, SCRATCH_TLS, SSL_CALLS,
        SSL_SOCKETS, TLS_BUSY, TLS_TAILS, byte_of, count, watched,
    },
    ship::{output_header, ship},
};

/// Where the bytes of a stashed data syscall start, and how many of the `ret` it moved are
/// there contiguously.
#[inline(always)]
pub fn first_buffer(stash: &Stash, ret: u64) -> Option<(u64, u64)> {
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
pub fn tls_ciphertext(tgid: u32, tid: u32, stash: &Stash, ret: u64) -> bool {
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
        output_tls_record(tgid, tid, stash, 0);
    }
    if stash.dir == DIR_IN {
        let recent = RecentRead {
            sock: SslSocket {
                inode: stash.fd.inode,
                fd: stash.fdnum,
                _pad: 0,
            },
            ts_ns: unsafe { bpf_ktime_get_ns() },
        };
        let _ = RECENT_TLS_READS.insert(tid, recent, 0);
    }
    if let Some(call) = SSL_CALLS.get_ptr(tid) {
        // The socket syscall of a TLS call's own transport (GnuTLS's default push and pull
        // functions, OpenSSL's socket BIO, the BIO Bun's sockets give BoringSSL), a data call
        // or a handshake: this thread's call is on this socket.
        let key = SslKey {
            tgid,
            _pad: 0,
            ssl: unsafe { (*call).ssl },
        };
        if !bound_live(key) {
            bind(st, tgid, tid, stash, key, unsafe { (*call).lib });
        }
        if stash.dir == DIR_OUT && n >= CIPHER_KEY_BYTES as u64 {
            // What an OpenSSL socket BIO remembered of this ciphertext is not needed.
            let _ = CIPHER_KEYS.remove(cipher_key(tgid, head));
        }
    } else if stash.dir == DIR_OUT && n >= CIPHER_KEY_BYTES as u64 {
        bind_ssl(st, tgid, tid, stash, cipher_key(tgid, head));
    }
    true
}

/// A TLS socket's write whose first bytes are ciphertext that an SSL object handed its write
/// BIO (key `k`, see [`bio_write_enter`]): bind that object to the socket (`st`), so its
/// plaintext is shipped as the socket's.
#[inline(always)]
fn bind_ssl(st: *mut FdState, tgid: u32, tid: u32, stash: &Stash, k: u64) {
    let Some(ssl) = CIPHER_KEYS.get_ptr(k) else {
        return;
    };
    bind(st, tgid, tid, stash, unsafe { *ssl }, tls_lib::OPENSSL);
    let _ = CIPHER_KEYS.remove(k);
}

/// Bind SSL object `ssl` of library `lib` to the stashed syscall's socket (`st`).
#[inline(always)]
fn bind(st: *mut FdState, tgid: u32, tid: u32, stash: &Stash, ssl: SslKey, lib: u8) {
    let sock = SslSocket {
        inode: stash.fd.inode,
        fd: stash.fdnum,
        _pad: 0,
    };
    if SSL_SOCKETS.insert(ssl, sock, 0).is_ok() {
        unsafe { (*st).flags |= bound_mark(lib) };
        count(counter::TLS_BINDS, 1);
        // Tell userspace the socket will be decrypted (it may carry no plaintext at all: a
        // connection closed right after its handshake).
        output_tls_record(tgid, tid, stash, FLAG_TLS);
    }
}

/// What marks a socket whose connection is bound, by library: [`FDSTATE_TLS_BOUND`], which
/// spares its later syscalls the syscall path, unless the library is rustls, whose
/// connections are bound again and again by those syscalls (a connection moves in memory
/// with the Rust value that holds it, and its reads and writes have different identities).
#[inline(always)]
fn bound_mark(lib: u8) -> u8 {
    if lib == tls_lib::RUSTLS {
        0
    } else {
        FDSTATE_TLS_BOUND
    }
}

/// A [`RECORD_TLS`] record for the stashed syscall's socket: found to carry TLS (`flags` 0),
/// or bound to its SSL object ([`FLAG_TLS`]).
#[inline(always)]
fn output_tls_record(tgid: u32, tid: u32, stash: &Stash, flags: u8) {
    output_header(&EventHeader {
        record: RECORD_TLS,
        fd_kind: FD_TCP,
        flags,
        tgid,
        tid,
        fd: stash.fdnum,
        ts_enter_ns: stash.ts_enter_ns,
        ts_exit_ns: unsafe { bpf_ktime_get_ns() },
        inode: stash.fd.inode,
        comm: bpf_get_current_comm().unwrap_or_default(),
        ..EventHeader::default()
    });
}

/// Entry of `SSL_read`/`SSL_write` (`ex`: the `_ex` forms, whose fourth argument receives the
/// byte count): remember the call until it returns.
#[inline(always)]
pub fn ssl_enter(ctx: &ProbeContext, op: u8, ex: bool, lib: u8) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !watched((pid_tgid >> 32) as u32) {
        return;
    }
    if lib == tls_lib::BORINGSSL && op == syscall::SSL_READ {
        bind_recent_read(pid_tgid, ctx.arg(0).unwrap_or(0));
    }
    let call = SslCall {
        ssl: ctx.arg(0).unwrap_or(0),
        buf: ctx.arg(1).unwrap_or(0),
        out: if ex { ctx.arg(3).unwrap_or(0) } else { 0 },
        ts_enter_ns: unsafe { bpf_ktime_get_ns() },
        op,
        depth: 1,
        lib,
        vectored: 0,
        _pad: [0; 4],
    };
    // Replaces a call whose return never ran (the thread unwound past it).
    if SSL_CALLS.insert(pid_tgid as u32, call, 0).is_err() {
        count(counter::STASH_FULL, 1);
    }
}

/// Whether SSL object `key` is bound to a socket that is still open as that fd (a freed SSL
/// object's address is reused for a new connection's).
#[inline(always)]
pub fn bound_live(key: SslKey) -> bool {
    let Some(sock) = SSL_SOCKETS.get_ptr(key) else {
        return false;
    };
    let sock = unsafe { *sock };
    FDS.get_ptr(FdKey {
        tgid: key.tgid,
        fd: sock.fd,
    })
    .is_some_and(|st| unsafe { (*st).inode } == sock.inode)
}

/// A BoringSSL `SSL_read` on an SSL object with no socket yet (a server's, whose handshake
/// and writes make no syscall inside a call): the socket this thread read ciphertext from
/// just before is its.
#[inline(always)]
pub fn bind_recent_read(pid_tgid: u64, ssl: u64) {
    let key = SslKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        ssl,
    };
    if bound_live(key) {
        return;
    }
    let Some(recent) = RECENT_TLS_READS.get_ptr(pid_tgid as u32) else {
        return;
    };
    let recent = unsafe { *recent };
    if unsafe { bpf_ktime_get_ns() }.saturating_sub(recent.ts_ns) < RECENT_READ_NS
        && SSL_SOCKETS.insert(key, recent.sock, 0).is_ok()
    {
        count(counter::TLS_BINDS, 1);
    }
}

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_READ, false, tls_lib::OPENSSL);
    0
}

#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_READ, true, tls_lib::OPENSSL);
    0
}

#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_WRITE, false, tls_lib::OPENSSL);
    0
}

#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_WRITE, true, tls_lib::OPENSSL);
    0
}

/// Entry of `gnutls_record_recv(session, data, size)`: OpenSSL's `SSL_read` shape.
#[uprobe]
pub fn gnutls_read_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_READ, false, tls_lib::GNUTLS);
    0
}

/// Entry of `gnutls_record_send(session, data, size)`.
#[uprobe]
pub fn gnutls_write_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_WRITE, false, tls_lib::GNUTLS);
    0
}

/// Entry of BoringSSL's `SSL_read` (found, not exported).
#[uprobe]
pub fn boringssl_read_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_READ, false, tls_lib::BORINGSSL);
    0
}

/// Entry of BoringSSL's `SSL_write`.
#[uprobe]
pub fn boringssl_write_enter(ctx: ProbeContext) -> u32 {
    ssl_enter(&ctx, syscall::SSL_WRITE, false, tls_lib::BORINGSSL);
    0
}

/// Entry of `SSL_do_handshake`, `SSL_connect` or `SSL_accept`: nothing to ship, but the
/// ciphertext `BIO_write` sees meanwhile belongs to this SSL object.
#[uprobe]
pub fn ssl_handshake_enter(ctx: ProbeContext) -> u32 {
    match try_ssl_handshake_enter(&ctx) {
        Some(()) | None => 0,
    }
}

#[inline(always)]
fn try_ssl_handshake_enter(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !watched((pid_tgid >> 32) as u32) {
        return None;
    }
    let tid = pid_tgid as u32;
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    if let Some(c) = SSL_CALLS.get_ptr_mut(tid)
        && unsafe { (*c).ssl } == ssl
        && unsafe { (*c).depth } > 0
    {
        // Inside a call on the same object (SSL_connect → SSL_do_handshake).
        unsafe { (*c).depth = (*c).depth.saturating_add(1) };
        return None;
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
    Some(())
}

/// Return of a handshake call: the outermost one ends its entry.
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
    match try_bio_write_enter(&ctx) {
        Some(()) | None => 0,
    }
}

#[inline(always)]
fn try_bio_write_enter(ctx: &ProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let call = SSL_CALLS.get_ptr(pid_tgid as u32)?;
    let len: i32 = ctx.arg(2).unwrap_or(0);
    if (len as i64) < CIPHER_KEY_BYTES as i64 {
        return None;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: unsafe { (*call).ssl },
    };
    if bound_live(key) {
        return None;
    }
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    if let Ok(head) = unsafe { bpf_probe_read_user(buf as *const [u64; 2]) } {
        let _ = CIPHER_KEYS.insert(cipher_key(tgid, head), key, 0);
    }
    Some(())
}

/// Return of `SSL_read`, `SSL_write` or their `_ex` forms: ship the plaintext they moved.
#[uretprobe]
pub fn ssl_data_ret(ctx: RetProbeContext) -> u32 {
    match try_ssl_data_ret(&ctx) {
        Some(()) | None => 0,
    }
}

#[inline(always)]
fn try_ssl_data_ret(ctx: &RetProbeContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let call = unsafe { *SSL_CALLS.get_ptr(tid)? };
    if call.op == 0 {
        // A handshake call's entry is on top: this return is not the call it describes.
        return None;
    }
    let _ = SSL_CALLS.remove(tid);
    let tgid = (pid_tgid >> 32) as u32;
    let key = SslKey {
        tgid,
        _pad: 0,
        ssl: call.ssl,
    };
    let sock = SSL_SOCKETS.get_ptr(key).map(|s| unsafe { *s });
    let n = plaintext_len(&call, ctx.ret(), tgid, sock)?;
    let Some(sock) = sock else {
        // Plaintext of an SSL object whose socket is not known: counted, not shipped.
        count(counter::TLS_UNBOUND, 1);
        count(counter::TLS_UNBOUND_BYTES, n);
        return None;
    };
    ship_in_lane(ctx, key, sock, tid, &call, n)
}

/// Ship `n` plaintext bytes of `call` in this CPU's TLS lane, if it is free (a uprobe
/// program may interrupt another on the same CPU: its bytes are then a counted hole).
#[inline(always)]
pub fn ship_in_lane<C: EbpfContext>(
    ctx: &C,
    key: SslKey,
    sock: SslSocket,
    tid: u32,
    call: &SslCall,
    n: u64,
) -> Option<()> {
    let busy = TLS_BUSY.get_ptr_mut(0)?;
    if unsafe { *busy } != 0 {
        count(counter::TLS_BUSY, 1);
        mark_lost(key.tgid, sock.fd);
        return None;
    }
    unsafe { *busy = 1 };
    ship_tls(ctx, key, sock, tid, call, n);
    // Not reached when shipping went on in a tail call: `ssl_ship_more` frees the lane then.
    unsafe { *busy = 0 };
    Some(())
}

/// How many plaintext bytes `call` moved, from its return value `ret` (or, for the `_ex`
/// forms, its out-parameter); `None` when none did, or when that cannot be known (a hole in
/// the stream of `sock`, counted).
#[inline(always)]
fn plaintext_len(call: &SslCall, ret: i32, tgid: u32, sock: Option<SslSocket>) -> Option<u64> {
    let n = if call.out != 0 {
        // The `_ex` forms return 1 on success, OpenSSL's internal functions (probed in their
        // place, with the same arguments) a positive value.
        if ret <= 0 {
            return None;
        }
        match unsafe { bpf_probe_read_user(call.out as *const u64) } {
            Ok(n) => n,
            Err(_) => {
                // How many bytes moved is unknown: the stream has a hole.
                count(counter::READ_FAULTS, 1);
                if let Some(sock) = sock {
                    mark_lost(tgid, sock.fd);
                }
                return None;
            }
        }
    } else if ret > 0 {
        ret as u64
    } else {
        return None;
    };
    if n == 0 { None } else { Some(n) }
}

/// Ship `n` plaintext bytes of `call` as records of its SSL object's socket, in the TLS lane
/// (which the caller holds).
#[inline(always)]
fn ship_tls<C: EbpfContext>(
    ctx: &C,
    key: SslKey,
    sock: SslSocket,
    tid: u32,
    call: &SslCall,
    n: u64,
) -> Option<()> {
    let tgid = key.tgid;
    let state = plaintext_socket(key, sock, tid, call.lib)?;
    let job = unsafe { &mut *JOBS.get_ptr_mut(JOB_TLS)? };
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
        tls_lib: call.lib,
        _pad: [0; 2],
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
    if call.vectored != 0 {
        // `buf` is an array of `out` iovecs (`IoSlice` is `struct iovec` on Unix).
        job.iov_ptr = call.buf;
        job.iov_left = call.out;
        job.cur_base = 0;
        job.cur_left = 0;
    } else {
        job.iov_ptr = 0;
        job.iov_left = 0;
        job.cur_base = call.buf;
        job.cur_left = n;
    }
    job.shipped = 0;
    job.tail_calls = 0;
    ship(ctx, job, SCRATCH_TLS, &TLS_TAILS);
    Some(())
}

/// The state of the socket an SSL object is bound to, as it was before its plaintext is
/// shipped (now marked so that its ciphertext is not, its pending marks taken for the
/// record); `None` when nothing is to be shipped: the socket is closed, or rejected.
#[inline(always)]
fn plaintext_socket(key: SslKey, sock: SslSocket, tid: u32, lib: u8) -> Option<FdState> {
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
        return None;
    };
    let state = unsafe { *st };
    if state.flags & FDSTATE_REJECTED != 0 {
        return None;
    }
    // The plaintext flows, so the ciphertext must not (an entry rebuilt since the binding has
    // lost those marks); the pending marks travel with this record.
    unsafe {
        (*st).flags =
            (state.flags | FDSTATE_TLS | bound_mark(lib) | FDSTATE_SEEN) & !FDSTATE_PENDING_MARKS;
    }
    Some(state)
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
