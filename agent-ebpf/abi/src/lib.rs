//! The one home of the kernel/user ABI of mcptap.
//!
//! Everything that crosses the boundary between the eBPF programs (`agent-ebpf`) and the
//! userspace agent (`agent`) is defined here, once: the records in the ring buffer, the values
//! of the maps that userspace reads or writes, the globals userspace sets before load, and the
//! indices of the per-CPU counters. The crate is `no_std` and has no dependencies so that both
//! the `bpfel-unknown-none` build and the host build compile the very same layout.
//!
//! Every struct is `#[repr(C)]`, has explicit padding and a size that the tests pin down, so a
//! change to the layout is a deliberate, visible act.
#![no_std]
#![deny(missing_docs)]

/// Ring buffer record: payload bytes of one read or write (one chunk of it).
pub const RECORD_DATA: u8 = 1;
/// Ring buffer record: a tracked fd was closed; no payload.
pub const RECORD_CLOSE: u8 = 2;
/// Ring buffer record: a watched process called execve; no payload.
pub const RECORD_EXEC: u8 = 3;
/// Ring buffer record: the leader thread of a watched process exited; no payload.
pub const RECORD_EXIT: u8 = 4;
/// Ring buffer record: the addresses of a socket, sent once when its fd is first classified;
/// the payload is a [`SocketInfo`].
pub const RECORD_SOCKET: u8 = 5;
/// Ring buffer record: a TCP socket was found to carry TLS (the first bytes the kernel saw
/// on it are a TLS record); no payload. Its ciphertext is never shipped: its plaintext comes
/// from the OpenSSL probes as [`FLAG_TLS`] records, or not at all (another TLS library). Sent
/// again, flagged [`FLAG_TLS`], when an SSL object is bound to the socket: from then on its
/// plaintext is captured.
pub const RECORD_TLS: u8 = 6;

/// Direction: bytes the process read (received).
pub const DIR_IN: u8 = 0;
/// Direction: bytes the process wrote (sent).
pub const DIR_OUT: u8 = 1;

/// fd kind: not something mcptap captures (regular file, tty, eventfd, UDP, ...).
pub const FD_OTHER: u8 = 0;
/// fd kind: an anonymous pipe or a FIFO.
pub const FD_PIPE: u8 = 1;
/// fd kind: an AF_UNIX stream socket (socketpair or path-connected).
pub const FD_UNIX: u8 = 2;
/// fd kind: an AF_INET or AF_INET6 stream socket.
pub const FD_TCP: u8 = 3;

/// Record flag: data of this fd was lost in the kernel (ring buffer full, a read fault, a
/// missed syscall exit) between the previous record of this fd and this one. Userspace must
/// resynchronise the stream at the next frame boundary.
pub const FLAG_LOST_BEFORE: u8 = 1 << 0;
/// Record flag: this is the last record of its syscall and the syscall's bytes after
/// `offset + len` were not shipped (per-syscall chunk limit or a fault). `total` still says
/// how many bytes the syscall moved.
pub const FLAG_TRUNCATED: u8 = 1 << 1;
/// Record flag: the payload is TLS plaintext, captured where OpenSSL's `SSL_read`/`SSL_write`
/// returned, not the bytes of a syscall; `fd` and `inode` name the socket the TLS session
/// runs over, so the plaintext joins that socket's streams.
pub const FLAG_TLS: u8 = 1 << 2;
/// Record flag: the kernel made this fd's state entry afresh for this syscall, with no earlier
/// entry to go by: a new fd, or one whose entry the LRU map evicted. When userspace already
/// holds a stream for the fd, the entry was evicted, and with it possibly a pending loss mark
/// ([`FDSTATE_LOST`]) or a rejection: userspace resynchronises the stream and counts it.
pub const FLAG_STATE_NEW: u8 = 1 << 3;

/// `FdState::flags`: userspace decided this fd does not carry MCP; the kernel ships nothing
/// more for it until it is closed or its fd is reused for another file.
pub const FDSTATE_REJECTED: u8 = 1 << 0;
/// `FdState::flags`: data was lost for this fd; the next record carries [`FLAG_LOST_BEFORE`].
pub const FDSTATE_LOST: u8 = 1 << 1;
/// `FdState::flags`: the socket carries TLS; its syscalls' bytes (ciphertext) are never
/// shipped, though they are still looked at until an SSL object is bound to the socket.
pub const FDSTATE_TLS: u8 = 1 << 2;
/// `FdState::flags`: an SSL object is bound to this TLS socket (its plaintext is captured), so
/// the socket's syscalls need no more attention than a rejected fd's. Never set for rustls,
/// whose connections keep being bound by their socket's syscalls.
pub const FDSTATE_TLS_BOUND: u8 = 1 << 3;
/// `FdState::flags`: a syscall moved data on this fd since the entry was made; the TLS check
/// looks at the first such data only.
pub const FDSTATE_SEEN: u8 = 1 << 4;
/// `FdState::flags`: the entry was made afresh (see [`FLAG_STATE_NEW`]); like
/// [`FDSTATE_LOST`], the mark travels with the fd's next record and is then cleared.
pub const FDSTATE_NEW: u8 = 1 << 5;
/// `FdState::flags` that travel with the fd's next data record (as [`FLAG_LOST_BEFORE`] and
/// [`FLAG_STATE_NEW`]) and are cleared once a record carried them.
pub const FDSTATE_PENDING_MARKS: u8 = FDSTATE_LOST | FDSTATE_NEW;

/// Syscall that carried a [`RECORD_DATA`] record.
pub mod syscall {
    /// read(2)
    pub const READ: u8 = 1;
    /// write(2)
    pub const WRITE: u8 = 2;
    /// readv(2)
    pub const READV: u8 = 3;
    /// writev(2)
    pub const WRITEV: u8 = 4;
    /// recvfrom(2), and recv(3) which is built on it
    pub const RECVFROM: u8 = 5;
    /// sendto(2), and send(3) which is built on it
    pub const SENDTO: u8 = 6;
    /// recvmsg(2)
    pub const RECVMSG: u8 = 7;
    /// sendmsg(2)
    pub const SENDMSG: u8 = 8;
    /// OpenSSL's `SSL_read` or `SSL_read_ex` (TLS plaintext, [`super::FLAG_TLS`]).
    pub const SSL_READ: u8 = 9;
    /// OpenSSL's `SSL_write` or `SSL_write_ex` (TLS plaintext, [`super::FLAG_TLS`]).
    pub const SSL_WRITE: u8 = 10;
}

/// Size of one per-CPU scratch value. The kernel refuses per-CPU values above 32 KiB.
pub const SCRATCH_SIZE: usize = 32 * 1024;
/// Most payload bytes one ring buffer record carries.
pub const CHUNK_MAX: usize = SCRATCH_SIZE - core::mem::size_of::<EventHeader>();
/// Chunks one program invocation ships before it tail-calls itself for the rest.
pub const CHUNKS_PER_CALL: u32 = 24;
/// Tail calls one syscall may use (the kernel's limit is 33).
pub const MAX_TAIL_CALLS: u32 = 32;
/// Most bytes one syscall can have shipped; beyond this it is truncated, flagged and counted.
pub const MAX_SYSCALL_BYTES: u64 =
    (CHUNK_MAX as u64) * (CHUNKS_PER_CALL as u64) * (MAX_TAIL_CALLS as u64 + 1);
// The Python SDK sends a 4 MiB result as one 8 MiB write; leave room for twice that.
const _: () = assert!(MAX_SYSCALL_BYTES >= 16 * 1024 * 1024);
// Every header must fit in front of a non-empty chunk of the scratch buffer.
const _: () = assert!(HEADER_SIZE < SCRATCH_SIZE);

/// Most iovec entries walked for one readv/writev/recvmsg/sendmsg.
pub const MAX_IOVECS: u32 = 1024;

/// Header of every ring buffer record. For [`RECORD_DATA`] `len` payload bytes follow it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// One of the `RECORD_*` constants.
    pub record: u8,
    /// [`DIR_IN`] or [`DIR_OUT`].
    pub dir: u8,
    /// One of the `FD_*` constants.
    pub fd_kind: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// One of the [`syscall`] constants (0 for records that are not data).
    pub syscall: u8,
    /// For TLS plaintext ([`FLAG_TLS`] data): the library it came from, one of the
    /// [`tls_lib`] constants; 0 otherwise.
    pub tls_lib: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// File descriptor in the process.
    pub fd: i32,
    /// Payload bytes following this header.
    pub len: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) at syscall entry.
    pub ts_enter_ns: u64,
    /// CLOCK_MONOTONIC at syscall exit.
    pub ts_exit_ns: u64,
    /// Inode number of the pipe or socket behind the fd.
    pub inode: u64,
    /// For a connected AF_UNIX socket, the inode number of its peer socket; otherwise 0.
    pub peer_inode: u64,
    /// Bytes the whole syscall moved (its return value).
    pub total: u64,
    /// Offset of this chunk within the syscall's bytes.
    pub offset: u64,
    /// The thread's comm at the time of the syscall.
    pub comm: Comm,
}

/// Size in bytes of [`EventHeader`].
pub const HEADER_SIZE: usize = core::mem::size_of::<EventHeader>();

/// Key of the per-fd state map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdKey {
    /// Process id.
    pub tgid: u32,
    /// File descriptor.
    pub fd: i32,
}

/// What the kernel knows about one (tgid, fd): its classification, cached, and userspace's
/// verdict. The `file` pointer validates the cache: when the fd now points at another
/// `struct file` (close and reuse, dup2, exec), the entry is rebuilt.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdState {
    /// Kernel address of the `struct file` this entry describes (an identity, never
    /// dereferenced by userspace).
    pub file: u64,
    /// Inode of the pipe or socket.
    pub inode: u64,
    /// Peer socket inode for connected AF_UNIX sockets.
    pub peer_inode: u64,
    /// One of the `FD_*` constants.
    pub kind: u8,
    /// `FDSTATE_*` bits.
    pub flags: u8,
    /// The process's fd-table generation when this entry was made (see `names::GEN`).
    pub gen_: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 5],
}

/// Arguments of a data syscall saved at entry until its exit, keyed by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stash {
    /// User address of the buffer, of the iovec array, or of the msghdr.
    pub ptr: u64,
    /// Buffer length, or iovec count.
    pub count: u64,
    /// CLOCK_MONOTONIC at entry.
    pub ts_enter_ns: u64,
    /// Classification of the fd at entry.
    pub fd: FdState,
    /// The file descriptor.
    pub fdnum: i32,
    /// One of the [`syscall`] constants.
    pub syscall: u8,
    /// [`DIR_IN`] or [`DIR_OUT`].
    pub dir: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
}

/// An OpenSSL call in flight on a thread, saved at its entry until its return, keyed by
/// thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslCall {
    /// The `SSL *` (an identity in the process, never dereferenced).
    pub ssl: u64,
    /// User address of the plaintext buffer (`SSL_read`/`SSL_write`).
    pub buf: u64,
    /// `size_t *` out-parameter of `SSL_read_ex`/`SSL_write_ex` (bytes moved), or 0.
    pub out: u64,
    /// CLOCK_MONOTONIC at entry.
    pub ts_enter_ns: u64,
    /// [`syscall::SSL_READ`], [`syscall::SSL_WRITE`], or 0 for a handshake call
    /// (`SSL_do_handshake`, `SSL_connect`, `SSL_accept`), which only names the SSL object
    /// whose ciphertext `BIO_write` sees.
    pub op: u8,
    /// Hooked calls on this SSL object nested in this one (`SSL_connect` calls
    /// `SSL_do_handshake`), so that only the outermost return ends it.
    pub depth: u8,
    /// The library called, one of the [`tls_lib`] constants.
    pub lib: u8,
    /// Non-zero when `buf` is an array of `out` iovecs (rustls's `write_vectored`), not one
    /// buffer.
    pub vectored: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 4],
}

/// The TLS libraries whose plaintext is read (the `tls_lib` of records).
pub mod tls_lib {
    /// OpenSSL, and forks that keep its names.
    pub const OPENSSL: u8 = 1;
    /// GnuTLS.
    pub const GNUTLS: u8 = 2;
    /// Go's `crypto/tls`.
    pub const GO: u8 = 3;
    /// BoringSSL linked into a stripped binary (Bun).
    pub const BORINGSSL: u8 = 4;
    /// rustls, found by its symbols.
    pub const RUSTLS: u8 = 5;
}

/// A rustls plaintext write whose connection has no socket yet, parked by thread until the
/// write of its ciphertext that follows (rustls only buffers what `Writer::write` is given; the
/// caller then flushes it, `ChunkVecBuffer::write_to`, on the same thread, the plaintext
/// buffer still live).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RustlsParked {
    /// The write: its connection (`ssl`), buffer and entry time.
    pub call: SslCall,
    /// Bytes rustls took.
    pub n: u64,
}

/// The first chunk of plaintext a rustls `Reader::into_first_chunk` returned on a thread, kept
/// until the `Reader::consume` that says how much of it the caller took (tokio-rustls reads
/// this way, without `Read::read`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RustlsChunk {
    /// The connection's received-plaintext buffer (the `Reader`'s first field): its identity.
    pub conn: u64,
    /// Where the chunk starts (0: none, or an error); until the return, where the call writes
    /// its result.
    pub ptr: u64,
    /// Its length.
    pub len: u64,
    /// CLOCK_MONOTONIC at the entry of `into_first_chunk`.
    pub ts_enter_ns: u64,
    /// Whether the call returned (`ptr` is the chunk's).
    pub returned: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 7],
}

/// How long a parked rustls write waits for its flush (ns); a write found older is dropped,
/// counted as unbound.
pub const RUSTLS_PARK_NS: u64 = 10_000_000;

/// The rustls probes (by demangled name, see the agent's `capture::tls::rustls`): plaintext
/// writes at `Writer::write`/`write_vectored` (returns: `io::Result<usize>`, tag in RAX and
/// count in RDX), reads at `Read::read` or at the `into_first_chunk`/`consume` pair, and the
/// flush whose socket write binds a connection that has none yet.
pub const RUSTLS_PROBES: [(&str, &str, bool); 11] = [
    ("Writer::write", "rustls_write_enter", false),
    ("Writer::write", "rustls_data_ret", true),
    ("Writer::write_vectored", "rustls_writev_enter", false),
    ("Writer::write_vectored", "rustls_data_ret", true),
    ("Reader::read", "rustls_read_enter", false),
    ("Reader::read", "rustls_data_ret", true),
    ("Reader::into_first_chunk", "rustls_chunk_enter", false),
    ("Reader::into_first_chunk", "rustls_chunk_ret", true),
    ("Reader::consume", "rustls_consume_enter", false),
    ("ChunkVecBuffer::write_to", "rustls_flush_enter", false),
    ("ChunkVecBuffer::write_to", "rustls_flush_ret", true),
];

/// A Go `crypto/tls.(*Conn).Read`/`Write` call between its entry and one of its `ret`s,
/// keyed by process and goroutine (an [`SslKey`] whose `ssl` is the `g`): a goroutine may
/// move to another thread while it blocks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoCall {
    /// The `*tls.Conn` (an identity, like an `SSL *`).
    pub conn: u64,
    /// User address of the plaintext buffer.
    pub buf: u64,
    /// CLOCK_MONOTONIC at entry.
    pub ts_enter_ns: u64,
    /// The socket's fd, read through [`GO_CONN_OFFSETS`] at entry; -1 when it could not be.
    pub fd: i32,
    /// [`syscall::SSL_READ`] or [`syscall::SSL_WRITE`].
    pub op: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 3],
}

/// From a Go `*tls.Conn` to its socket's fd, in bytes: the data word of `Conn.conn` (a
/// `net.Conn` interface), the `*netFD` in the `net.TCPConn` (or `UnixConn`) it points to,
/// `pfd.Sysfd` in the `netFD`. The same in every Go release with the register ABI (1.17+);
/// userspace checks each binary against them before probing it.
pub const GO_CONN_OFFSETS: [u64; 3] = [8, 0, 16];

/// The Go `crypto/tls` probes: (function, program, at its returns). The return program goes
/// on every `ret` instruction of Read (plain uprobes: a uretprobe rewrites the return address
/// on a stack Go may move). Write's plaintext is shipped at its entry, whole: its goroutine
/// may be descheduled between the socket write and its return for longer than the peer takes
/// to answer, so a record shipped at the return could come after the answer's.
pub const GO_PROBES: [(&str, &str, bool); 3] = [
    ("crypto/tls.(*Conn).Read", "go_tls_read_enter", false),
    ("crypto/tls.(*Conn).Read", "go_tls_ret", true),
    ("crypto/tls.(*Conn).Write", "go_tls_write_enter", false),
];

/// A thread's latest read of a TLS socket's ciphertext: BoringSSL under Bun's sockets reads
/// it there just before `SSL_read` decrypts it, with no syscall inside the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecentRead {
    /// The socket.
    pub sock: SslSocket,
    /// CLOCK_MONOTONIC at the read's exit.
    pub ts_ns: u64,
}

/// How long after a thread's read of a TLS socket a BoringSSL `SSL_read` with no socket yet
/// is taken to be that socket's (ns): the event loop decrypts what it read at once.
pub const RECENT_READ_NS: u64 = 10_000_000;

/// Key of the SSL binding map: one SSL object of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SslKey {
    /// Process id.
    pub tgid: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// The `SSL *`.
    pub ssl: u64,
}

/// The socket an SSL object's ciphertext was seen on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SslSocket {
    /// Inode of the socket: a binding is only trusted while the fd still names it.
    pub inode: u64,
    /// File descriptor in the process.
    pub fd: i32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

/// Bytes of ciphertext that identify one TLS record: the 5-byte header and 11 bytes of the
/// encrypted (or, for hellos, random) body, which never repeat by chance.
pub const CIPHER_KEY_BYTES: usize = 16;

/// The key under which the kernel remembers ciphertext that OpenSSL handed its write BIO, and
/// looks up the first bytes a TLS socket's write moved: the same bytes from both places bind
/// the SSL object to the socket. Mixes the process in, so that equal bytes in two processes
/// never meet.
#[inline(always)]
pub const fn cipher_key(tgid: u32, bytes: [u64; 2]) -> u64 {
    let h = bytes[0].wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ bytes[1].rotate_left(29);
    (h ^ ((tgid as u64) << 32 | tgid as u64)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

/// Whether the first bytes of a stream are a TLS record header: handshake (22) or application
/// data (23), version 3.x (SSL 3.0 to TLS 1.3 all say 3.x on the wire).
#[inline(always)]
pub const fn looks_tls(b0: u8, b1: u8, b2: u8) -> bool {
    (b0 == 0x16 || b0 == 0x17) && b1 == 3 && b2 <= 4
}

/// Field offsets inside kernel structures, resolved by userspace from the running kernel's
/// BTF and handed to the programs as a read-only global. Offsets are in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `task_struct.files`
    pub task_files: u32,
    /// `files_struct.fdt`
    pub files_fdt: u32,
    /// `fdtable.max_fds`
    pub fdt_max_fds: u32,
    /// `fdtable.fd`
    pub fdt_fd: u32,
    /// `file.f_inode`
    pub file_inode: u32,
    /// `file.private_data`
    pub file_private_data: u32,
    /// `inode.i_mode`
    pub inode_mode: u32,
    /// `inode.i_ino`
    pub inode_ino: u32,
    /// `socket.type`
    pub socket_type: u32,
    /// `socket.sk`
    pub socket_sk: u32,
    /// `sock.__sk_common.skc_family`
    pub sock_family: u32,
    /// `sock.sk_socket`
    pub sock_socket: u32,
    /// `unix_sock.peer`
    pub unix_peer: u32,
    /// `socket_alloc.vfs_inode` minus `socket_alloc.socket`: from a `struct socket *` to its
    /// inode.
    pub socket_to_inode: u32,
    /// `sock.__sk_common.skc_daddr` (IPv4 peer address)
    pub sock_daddr: u32,
    /// `sock.__sk_common.skc_rcv_saddr` (IPv4 local address)
    pub sock_rcv_saddr: u32,
    /// `sock.__sk_common.skc_dport` (peer port, network order)
    pub sock_dport: u32,
    /// `sock.__sk_common.skc_num` (local port, host order)
    pub sock_num: u32,
    /// `sock.__sk_common.skc_v6_daddr`, or [`OFFSET_MISSING`] without IPv6
    pub sock_v6_daddr: u32,
    /// `sock.__sk_common.skc_v6_rcv_saddr`, or [`OFFSET_MISSING`] without IPv6
    pub sock_v6_rcv_saddr: u32,
    /// `unix_sock.addr`
    pub unix_addr: u32,
    /// `unix_address.len`
    pub unix_address_len: u32,
    /// `unix_address.name` (a `struct sockaddr_un`)
    pub unix_address_name: u32,
}

/// A field this kernel does not have (e.g. IPv6 addresses when IPv6 is compiled out).
pub const OFFSET_MISSING: u32 = u32::MAX;

/// Longest AF_UNIX path (`sizeof(sun_path)`).
pub const UNIX_PATH_MAX: usize = 108;

/// Payload of a [`RECORD_SOCKET`] record: where a socket's two ends are.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// AF_INET (2), AF_INET6 (10) or AF_UNIX (1).
    pub family: u16,
    /// Local port, host order (TCP).
    pub local_port: u16,
    /// Peer port, host order (TCP).
    pub remote_port: u16,
    /// Bytes of `local_path` in use (AF_UNIX; 0 when unbound).
    pub local_path_len: u16,
    /// Bytes of `remote_path` in use (AF_UNIX; 0 when the peer is unbound).
    pub remote_path_len: u16,
    /// Explicit padding; always zero.
    pub _pad: [u8; 6],
    /// Local address: IPv4 in the first four bytes, or IPv6; network order.
    pub local_addr: [u8; 16],
    /// Peer address, as `local_addr`.
    pub remote_addr: [u8; 16],
    /// Local AF_UNIX path (a leading NUL marks an abstract name).
    pub local_path: [u8; UNIX_PATH_MAX],
    /// Peer AF_UNIX path.
    pub remote_path: [u8; UNIX_PATH_MAX],
}

impl Default for SocketInfo {
    fn default() -> Self {
        SocketInfo {
            family: 0,
            local_port: 0,
            remote_port: 0,
            local_path_len: 0,
            remote_path_len: 0,
            _pad: [0; 6],
            local_addr: [0; 16],
            remote_addr: [0; 16],
            local_path: [0; UNIX_PATH_MAX],
            remote_path: [0; UNIX_PATH_MAX],
        }
    }
}

impl KernelOffsets {
    /// All offsets zero: the value compiled into the object before userspace overrides it.
    pub const ZERO: Self = Self {
        task_tgid: 0,
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_inode: 0,
        file_private_data: 0,
        inode_mode: 0,
        inode_ino: 0,
        socket_type: 0,
        socket_sk: 0,
        sock_family: 0,
        sock_socket: 0,
        unix_peer: 0,
        socket_to_inode: 0,
        sock_daddr: 0,
        sock_rcv_saddr: 0,
        sock_dport: 0,
        sock_num: 0,
        sock_v6_daddr: 0,
        sock_v6_rcv_saddr: 0,
        unix_addr: 0,
        unix_address_len: 0,
        unix_address_name: 0,
    };
}

/// Run-time configuration handed to the programs as a read-only global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// 1: every process is a candidate; 0: only processes marked in the watch map.
    pub all_processes: u8,
    /// 1: a comm filter is set, so exec re-evaluates whether a process is watched.
    pub comm_filter: u8,
    /// Explicit padding; always zero.
    pub _pad: [u8; 2],
    /// The agent's own process id, never captured.
    pub self_tgid: u32,
    /// Records are written without waking the agent until this many bytes wait in the ring
    /// buffer; the agent also drains on its own timer. Batching wake-ups keeps the agent off
    /// the CPU while watched processes run.
    pub wakeup_bytes: u32,
    /// Explicit padding; always zero.
    pub _pad2: u32,
}

impl Config {
    /// Watch nothing: the value compiled into the object before userspace overrides it.
    pub const ZERO: Self = Self {
        all_processes: 0,
        comm_filter: 0,
        _pad: [0; 2],
        self_tgid: 0,
        wakeup_bytes: 0,
        _pad2: 0,
    };
}

/// Capacity of the per-fd state map (`names::FDS`): pipes and stream sockets of watched
/// processes (regular files and other fds are never kept there).
pub const FD_MAP_ENTRIES: u32 = 65_536;

/// Names of the maps and globals, shared so that neither side spells them by hand.
pub mod names {
    /// Ring buffer of records.
    pub const EVENTS: &str = "EVENTS";
    /// Per-fd state, LRU hash of [`super::FdKey`] to [`super::FdState`].
    pub const FDS: &str = "FDS";
    /// In-flight data syscalls, hash of tid to [`super::Stash`].
    pub const STASH: &str = "STASH";
    /// Watched processes: array of `u64` words, one byte per tgid (see [`super::IDS_PER_WORD`]
    /// and [`super::WATCH_BY_COMM`]).
    pub const WATCH: &str = "WATCH";
    /// Per-tgid fd-table generation, one byte per tgid in `u64` words: bumped when fds may
    /// have changed without a close the programs saw (exec, close_range, fork of a new
    /// process, exit), which invalidates that process's cached fd states.
    pub const GEN: &str = "GEN";
    /// Threads with a stashed syscall, one byte per tid in `u64` words: lets `sys_exit` skip
    /// the stash lookup for every other syscall.
    pub const INFLIGHT: &str = "INFLIGHT";
    /// The skip cache: [`super::SKIP_SLOTS`] `u64` words, see [`super::skip_entry`].
    pub const SKIP: &str = "SKIP";
    /// Comm names to watch: hash of [`super::Comm`] to `u8`.
    pub const COMMS: &str = "COMMS";
    /// OpenSSL calls in flight, hash of tid to [`super::SslCall`].
    pub const SSL_CALLS: &str = "SSL_CALLS";
    /// SSL objects bound to their sockets, LRU hash of [`super::SslKey`] to
    /// [`super::SslSocket`].
    pub const SSL_SOCKETS: &str = "SSL_SOCKETS";
    /// Ciphertext OpenSSL wrote for SSL objects not yet bound, LRU hash of
    /// [`super::cipher_key`] to [`super::SslKey`].
    pub const CIPHER_KEYS: &str = "CIPHER_KEYS";
    /// Program array for the TLS chunk-shipping tail call (uprobe programs cannot tail-call
    /// the raw tracepoint's).
    pub const TLS_TAILS: &str = "TLS_TAILS";
    /// Per-CPU counters, indexed by [`super::counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// Program array for the chunk-shipping tail call.
    pub const TAILS: &str = "TAILS";
    /// Self-test results, array of [`super::SelfTest`].
    pub const SELFTEST: &str = "SELFTEST";
    /// Global: [`super::KernelOffsets`].
    pub const OFFSETS: &str = "OFFSETS";
    /// Global: [`super::Config`].
    pub const CONFIG: &str = "CONFIG";
    /// Program on `tp_btf/sys_enter` ([`TP_SYS_ENTER`]).
    pub const PROG_SYS_ENTER: &str = "sys_enter";
    /// Program on `raw_tp/sys_exit` ([`TP_SYS_EXIT`]).
    pub const PROG_SYS_EXIT: &str = "sys_exit";
    /// Tail-called program that ships the rest of a large syscall.
    pub const PROG_SHIP_MORE: &str = "ship_more";
    /// Program on `raw_tp/sched_process_fork` ([`TP_FORK`]).
    pub const PROG_FORK: &str = "sched_fork";
    /// Program on `raw_tp/sched_process_exec` ([`TP_EXEC`]).
    pub const PROG_EXEC: &str = "sched_exec";
    /// Program on `raw_tp/sched_process_exit` ([`TP_EXIT`]).
    pub const PROG_EXIT: &str = "sched_exit";
    /// Start-up self-test program, on `raw_tp/sys_enter` for a moment.
    pub const PROG_SELFTEST: &str = "selftest";
    /// Benchmark floor: an empty program on `tp_btf/sys_enter`.
    pub const PROG_NOOP_ENTER: &str = "noop_enter";
    /// Benchmark floor: an empty program on `raw_tp/sys_exit`.
    pub const PROG_NOOP_EXIT: &str = "noop_exit";
    /// Tail-called program that ships the rest of a large TLS read or write.
    pub const PROG_SSL_SHIP_MORE: &str = "ssl_ship_more";

    // The tracepoints the programs attach to. The programs' attributes spell them too (an
    // attribute takes a literal); the agent's tests check the object against these.

    /// Syscall entry: `sys_enter`, `selftest`, `noop_enter`.
    pub const TP_SYS_ENTER: &str = "sys_enter";
    /// Syscall exit: `sys_exit` (and the tail-called `ship_more`), `noop_exit`.
    pub const TP_SYS_EXIT: &str = "sys_exit";
    /// A task forked: `sched_fork`.
    pub const TP_FORK: &str = "sched_process_fork";
    /// A task called execve: `sched_exec`.
    pub const TP_EXEC: &str = "sched_process_exec";
    /// A task exited: `sched_exit`.
    pub const TP_EXIT: &str = "sched_process_exit";
}

/// The GnuTLS probes: (symbol, program, is a return probe), in `libgnutls`'s dynamic symbol
/// table. The record functions take the OpenSSL data functions' arguments in the same places
/// and return the bytes moved, so the return program is OpenSSL's; the session is bound to
/// its socket by the socket syscall its default transport makes inside the call.
pub const GNUTLS_PROBES: [(&str, &str, bool); 4] = [
    ("gnutls_record_recv", "gnutls_read_enter", false),
    ("gnutls_record_recv", "ssl_data_ret", true),
    ("gnutls_record_send", "gnutls_write_enter", false),
    ("gnutls_record_send", "ssl_data_ret", true),
];

/// The BoringSSL probes, for a binary that links it statically and exports none of its names
/// (Bun): the functions are found by their error-reporting sites, and named here as BoringSSL
/// names them. They take OpenSSL's arguments, so the return programs are OpenSSL's; the
/// handshake's own socket writes bind an SSL object to its socket.
pub const BORINGSSL_PROBES: [(&str, &str, bool); 6] = [
    ("SSL_read", "boringssl_read_enter", false),
    ("SSL_read", "ssl_data_ret", true),
    ("SSL_write", "boringssl_write_enter", false),
    ("SSL_write", "ssl_data_ret", true),
    ("SSL_do_handshake", "ssl_handshake_enter", false),
    ("SSL_do_handshake", "ssl_handshake_ret", true),
];

/// The OpenSSL probes: (symbol, program, is a return probe). Symbols are looked up in each
/// binary's dynamic symbol table: `SSL_*` in libssl (or a binary with OpenSSL linked in, such
/// as `node`), `BIO_write` in libcrypto (or that same binary).
pub const OPENSSL_PROBES: [(&str, &str, bool); 15] = [
    ("SSL_read", "ssl_read_enter", false),
    ("SSL_read", "ssl_data_ret", true),
    ("SSL_read_ex", "ssl_read_ex_enter", false),
    ("SSL_read_ex", "ssl_data_ret", true),
    ("SSL_write", "ssl_write_enter", false),
    ("SSL_write", "ssl_data_ret", true),
    ("SSL_write_ex", "ssl_write_ex_enter", false),
    ("SSL_write_ex", "ssl_data_ret", true),
    ("SSL_do_handshake", "ssl_handshake_enter", false),
    ("SSL_do_handshake", "ssl_handshake_ret", true),
    ("SSL_connect", "ssl_handshake_enter", false),
    ("SSL_connect", "ssl_handshake_ret", true),
    ("SSL_accept", "ssl_handshake_enter", false),
    ("SSL_accept", "ssl_handshake_ret", true),
    ("BIO_write", "bio_write_enter", false),
];

/// The kernel's `TASK_COMM_LEN`: a comm is at most 15 bytes and a NUL.
pub const COMM_LEN: usize = 16;
/// A comm as the kernel keeps it (NUL-padded): in records, and the key of `names::COMMS`.
pub type Comm = [u8; COMM_LEN];

/// Ids (tgids or tids) per `u64` word in the byte-per-id arrays `names::WATCH`, `names::GEN`
/// and `names::INFLIGHT`: the byte of id `i` is byte [`id_byte`]`(i)` of word [`id_word`]`(i)`
/// in memory order, that is bits `8 * id_byte(i)` and up of the little-endian word. The
/// programs store single bytes, so that updates of neighbouring ids do not clobber each other.
pub const IDS_PER_WORD: u32 = 8;

/// The word of `id` in a byte-per-id array (see [`IDS_PER_WORD`]).
#[inline(always)]
pub const fn id_word(id: u32) -> u32 {
    id / IDS_PER_WORD
}

/// The byte of `id` within its word (see [`IDS_PER_WORD`]).
#[inline(always)]
pub const fn id_byte(id: u32) -> u32 {
    id % IDS_PER_WORD
}

/// Watch byte bit: the process's comm is in `--comm`; re-evaluated at exec.
pub const WATCH_BY_COMM: u8 = 1 << 0;
/// Watch byte bit: the process is a `--pid` or one of its descendants; kept across exec.
pub const WATCH_BY_PID: u8 = 1 << 1;

/// Index of the one tail-call slot in `TAILS` (and in `TLS_TAILS`).
pub const TAIL_SHIP_MORE: u32 = 0;

/// Slots in the skip cache (a power of two).
pub const SKIP_SLOTS: u32 = 1 << 16;

/// The skip cache is how an unwatched fd costs almost nothing in all-process mode: a
/// direct-mapped table of (tgid, fd, generation) words naming fds that carry nothing for us
/// (not a pipe or stream socket, or rejected by userspace). One array load and a compare
/// replace the hash lookup of the fd state. A word is one atomic 64-bit store, so a reader
/// never sees half of two entries. Returns 0 (never a valid entry) for fds or tgids that do
/// not fit, which are then never cached.
#[inline(always)]
pub const fn skip_entry(tgid: u32, fd: i32, gen_: u8) -> u64 {
    if fd < 0 || fd >= 1 << 24 || tgid >= 1 << 22 {
        return 0;
    }
    (1 << 63) | ((gen_ as u64) << 46) | ((tgid as u64) << 24) | fd as u64
}

/// The bits of a skip entry that name the fd, without its generation.
pub const SKIP_KEY_MASK: u64 = (1 << 46) - 1;

/// The slot of (tgid, fd) in the skip cache: a multiplicative hash, so neighbouring fds of one
/// process spread out.
#[inline(always)]
pub const fn skip_slot(tgid: u32, fd: i32) -> u32 {
    let key = ((tgid as u64) << 24) ^ (fd as u32 as u64);
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SKIP_SLOTS.trailing_zeros())) as u32
}

/// Indices of the per-CPU counters in `COUNTERS`.
pub mod counter {
    /// Records written to the ring buffer.
    pub const RECORDS: u32 = 0;
    /// Payload bytes written to the ring buffer.
    pub const BYTES: u32 = 1;
    /// Records the ring buffer had no room for.
    pub const RINGBUF_FULL: u32 = 2;
    /// Payload bytes lost because the ring buffer was full.
    pub const RINGBUF_FULL_BYTES: u32 = 3;
    /// Syscalls shipped only in part (per-syscall limit reached).
    pub const TRUNCATED: u32 = 4;
    /// Bytes not shipped because of that limit.
    pub const TRUNCATED_BYTES: u32 = 5;
    /// `bpf_probe_read_user` failures on payload.
    pub const READ_FAULTS: u32 = 6;
    /// Data syscalls (or OpenSSL calls) not tracked because their stash map was full.
    pub const STASH_FULL: u32 = 7;
    /// Syscall exits that never ran for a stashed entry (found stale at the next entry).
    pub const EXIT_MISSED: u32 = 8;
    /// Times the kernel learned to skip an fd that userspace rejected as not MCP (once per fd,
    /// again only if its skip-cache slot was taken over by another fd).
    pub const REJECTED_FDS: u32 = 9;
    /// Kernel structure reads that failed while classifying an fd.
    pub const CLASSIFY_FAULTS: u32 = 10;
    /// Tail calls that failed (the rest of that syscall is lost and flagged).
    pub const TAIL_CALL_FAILED: u32 = 11;
    /// TCP sockets found to carry TLS (their ciphertext is never shipped).
    pub const TLS_SOCKETS: u32 = 12;
    /// SSL objects bound to their socket (their plaintext is captured from then on).
    pub const TLS_BINDS: u32 = 13;
    /// `SSL_read`/`SSL_write` calls whose plaintext was not shipped because the SSL object's
    /// socket was not known (its handshake and first writes happened before the probes).
    pub const TLS_UNBOUND: u32 = 14;
    /// Plaintext bytes of those calls.
    pub const TLS_UNBOUND_BYTES: u32 = 15;
    /// TLS reads and writes dropped because another TLS program held this CPU's shipping
    /// buffer (possible only on kernels that preempt BPF programs).
    pub const TLS_BUSY: u32 = 16;
    /// `SSL_read`/`SSL_write` calls after the SSL object's socket was closed (a server writing
    /// the end of a response its client hung up on): those bytes never travel, so they are
    /// not shipped and not a loss.
    pub const TLS_AFTER_CLOSE: u32 = 17;
    /// Data syscalls whose bytes were not shipped because of an iovec array that did not
    /// hold the bytes the syscall said it moved (changed by another thread meanwhile); the
    /// syscall is shipped in part and flagged truncated.
    pub const IOV_SHORT: u32 = 18;
    /// Number of counters.
    pub const COUNT: u32 = 19;

    /// Counters whose rise means bytes of a watched fd were lost: each is reported as a
    /// `kernel_loss` event. `classify_faults` is among them: a syscall on an fd that could
    /// not be classified is not captured (it is retried at the next syscall).
    pub const LOSSES: [u32; 12] = [
        RINGBUF_FULL,
        RINGBUF_FULL_BYTES,
        TRUNCATED,
        TRUNCATED_BYTES,
        READ_FAULTS,
        STASH_FULL,
        EXIT_MISSED,
        CLASSIFY_FAULTS,
        TAIL_CALL_FAILED,
        TLS_UNBOUND,
        TLS_BUSY,
        IOV_SHORT,
    ];

    /// Counters that count lost events (not bytes): their sum, with the kernel's own
    /// recursion misses, is `mcptap_lost_events_total`. (`tls_unbound_calls`, plaintext of a
    /// connection older than the probes, is reported as a loss but counted apart.)
    pub const LOST_EVENTS: [u32; 7] = [
        RINGBUF_FULL,
        STASH_FULL,
        EXIT_MISSED,
        CLASSIFY_FAULTS,
        TAIL_CALL_FAILED,
        TLS_BUSY,
        IOV_SHORT,
    ];

    /// Human names, in index order, as exported.
    pub const NAMES: [&str; COUNT as usize] = [
        "records",
        "bytes",
        "ringbuf_full_records",
        "ringbuf_full_bytes",
        "truncated_syscalls",
        "truncated_bytes",
        "read_faults",
        "stash_full",
        "exit_missed",
        "rejected_fds",
        "classify_faults",
        "tail_call_failed",
        "tls_sockets",
        "tls_binds",
        "tls_unbound_calls",
        "tls_unbound_bytes",
        "tls_busy",
        "tls_after_close",
        "iov_short",
    ];
}

/// Result of the start-up self-test: can this kernel's lockdown mode let a program read
/// kernel memory with `bpf_probe_read_kernel`?
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelfTest {
    /// 1 once the program ran for the agent's own thread.
    pub ran: u32,
    /// Return value of `bpf_probe_read_kernel` reading `task_struct.tgid`.
    pub read_ret: i32,
    /// The tgid read through `bpf_get_current_task()` at the BTF offset.
    pub tgid_read: u32,
    /// The tgid from `bpf_get_current_pid_tgid()`.
    pub tgid_helper: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `repr(C)`, made only of integers and arrays of integers, with
    // explicit padding, so every bit pattern is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::FdKey {}
    unsafe impl aya::Pod for super::FdState {}
    unsafe impl aya::Pod for super::Stash {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SelfTest {}
    unsafe impl aya::Pod for super::SocketInfo {}
    unsafe impl aya::Pod for super::SslCall {}
    unsafe impl aya::Pod for super::SslKey {}
    unsafe impl aya::Pod for super::SslSocket {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(size_of::<EventHeader>(), 88);
        assert_eq!(size_of::<FdKey>(), 8);
        assert_eq!(size_of::<FdState>(), 32);
        assert_eq!(size_of::<Stash>(), 64);
        assert_eq!(size_of::<KernelOffsets>(), 96);
        assert_eq!(size_of::<SocketInfo>(), 264);
        assert_eq!(size_of::<Config>(), 16);
        assert_eq!(size_of::<SelfTest>(), 16);
        assert_eq!(size_of::<SslCall>(), 40);
        assert_eq!(size_of::<SslKey>(), 16);
        assert_eq!(size_of::<SslSocket>(), 16);
        // The ring buffer aligns records to 8 bytes; a header that is a multiple of 8 keeps
        // the payload aligned too.
        assert_eq!(HEADER_SIZE % 8, 0);
    }

    #[test]
    fn skip_entries_name_one_fd_of_one_generation() {
        let e = skip_entry(4_194_303, (1 << 24) - 1, 255);
        assert_ne!(e, 0);
        assert_ne!(e, skip_entry(4_194_303, (1 << 24) - 1, 254));
        assert_ne!(e, skip_entry(4_194_302, (1 << 24) - 1, 255));
        assert_eq!(
            e & SKIP_KEY_MASK,
            skip_entry(4_194_303, (1 << 24) - 1, 0) & SKIP_KEY_MASK
        );
        assert_eq!(skip_entry(1, -1, 0), 0);
        assert_eq!(skip_entry(1, 1 << 24, 0), 0);
        assert_eq!(skip_entry(1 << 22, 3, 0), 0);
        // Slots stay in range and spread one process's low fds over distinct slots.
        let slots: std::collections::BTreeSet<u32> =
            (0..64).map(|fd| skip_slot(1234, fd)).collect();
        assert!(slots.iter().all(|s| *s < SKIP_SLOTS));
        assert!(slots.len() >= 60, "{} distinct slots", slots.len());
    }

    #[test]
    fn tls_probes_name_each_program_once_per_symbol() {
        let lists = [
            &OPENSSL_PROBES[..],
            &GNUTLS_PROBES[..],
            &GO_PROBES[..],
            &BORINGSSL_PROBES[..],
            &RUSTLS_PROBES[..],
        ];
        for list in lists {
            for (i, a) in list.iter().enumerate() {
                assert!(
                    list[i + 1..].iter().all(|b| (a.0, a.2) != (b.0, b.2)),
                    "{a:?} twice"
                );
                // Return probes are named after what they do on return.
                assert_eq!(a.2, a.1.ends_with("_ret"), "{a:?}");
            }
        }
    }

    #[test]
    fn byte_per_id_words_are_in_memory_order() {
        // The programs store byte `id_byte(id)` of word `id_word(id)`; the agent reads the
        // word and shifts. Both targets are little-endian.
        for id in [0, 7, 8, 13, 4_194_303] {
            let mut word = [0u8; 8];
            word[id_byte(id) as usize] = 0xab;
            let v = u64::from_le_bytes(word);
            assert_eq!((v >> (8 * id_byte(id))) & 0xff, 0xab);
            assert_eq!(id_word(id) * IDS_PER_WORD + id_byte(id), id);
        }
    }

    #[test]
    fn cipher_keys_separate_processes_and_bytes() {
        let k = cipher_key(7, [1, 2]);
        assert_ne!(k, cipher_key(8, [1, 2]));
        assert_ne!(k, cipher_key(7, [1, 3]));
        assert_ne!(k, cipher_key(7, [2, 1]));
        assert!(looks_tls(0x16, 3, 1) && looks_tls(0x17, 3, 3));
        assert!(!looks_tls(b'{', b'"', b'j') && !looks_tls(0x16, 2, 0) && !looks_tls(0x15, 3, 3));
    }
}
