//! What an fd is: the current task's file table and the file's inode and socket, read at the
//! offsets userspace resolved from BTF, classified (pipe, AF_UNIX or TCP stream socket, other)
//! and cached per (tgid, fd) in `FDS`, with the marks that travel with the fd's next record.
//!
//! Apart from the syscall path because the TLS path asks the same question about the socket
//! an SSL object runs over.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel, generated,
};
use mcptap_abi::{
    EventHeader, FD_OTHER, FD_PIPE, FD_TCP, FD_UNIX, FDSTATE_LOST, FDSTATE_NEW,
    FDSTATE_PENDING_MARKS, FLAG_LOST_BEFORE, FLAG_STATE_NEW, FdKey, FdState, HEADER_SIZE,
    OFFSET_MISSING, RECORD_SOCKET, SocketInfo, Stash, UNIX_PATH_MAX, counter,
};

use crate::{
    maps::{EVENTS, FDS, OFFSETS, SCRATCH, count},
    ship::wakeup_flags,
};

const S_IFMT: u16 = 0o170000;
const S_IFIFO: u16 = 0o010000;
const S_IFSOCK: u16 = 0o140000;
const SOCK_STREAM: i16 = 1;

const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

#[inline(always)]
pub fn read_kernel<T>(base: u64, off: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

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
pub enum Fd {
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
pub fn fd_state(tgid: u32, tid: u32, fd: i32, gen_: u8, scratch: u32) -> Fd {
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
pub fn record_marks(state_flags: u8) -> u8 {
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
pub fn restore_marks(tgid: u32, stash: &Stash) {
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
pub fn mark_lost(tgid: u32, fd: i32) {
    if let Some(st) = FDS.get_ptr_mut(FdKey { tgid, fd }) {
        unsafe { (*st).flags |= FDSTATE_LOST };
    }
}
