//! mcptap's kernel programs.
//!
//! Data path: `tp_btf/sys_enter` filters by process, classifies the fd (pipe, AF_UNIX or TCP
//! stream socket; anything else is ignored) and stashes the syscall's arguments by thread;
//! `raw_tp/sys_exit` picks the stash up and ships the bytes the syscall moved into the ring
//! buffer in chunks of up to [`CHUNK_MAX`](mcptap_abi::CHUNK_MAX) bytes, from a per-CPU scratch
//! buffer so that a small write makes a small record. A syscall larger than one program
//! invocation can ship continues in `ship_more`, which tail-calls itself.
//!
//! Kernel structures are read with `bpf_probe_read_kernel` at offsets that userspace resolved
//! from the running kernel's BTF (the `OFFSETS` global); nothing here depends on one kernel's
//! headers.
//!
//! TLS: uprobes on OpenSSL (`SSL_read`, `SSL_write` and their `_ex` forms) ship the plaintext
//! through the same chunking path, flagged [`FLAG_TLS`](mcptap_abi::FLAG_TLS) and attributed
//! to the socket the SSL object runs over, so it joins that socket's streams. The binding
//! comes from the ciphertext itself: what OpenSSL hands its write BIO (`BIO_write` inside an
//! SSL call) is what the application then writes to the socket, whether OpenSSL writes it
//! there itself (socket BIO) or the application moves it (memory BIOs: Python's asyncio,
//! Node). A socket whose first bytes are a TLS record is marked TLS and its ciphertext is
//! never shipped.
//!
//! Nothing is dropped silently: every loss increments a per-CPU counter and marks the fd, so
//! the next record of that fd carries [`FLAG_LOST_BEFORE`](mcptap_abi::FLAG_LOST_BEFORE).
//!
//! The modules: [`maps`] (every map and global), [`syscall`] (the syscall path), [`fd`] (fd
//! classification and the fd cache), [`ship`] (records and chunk shipping), [`tls`] (the
//! OpenSSL probes), [`process`] (fork, exec, exit), [`selftest`] and [`floor`] (the empty
//! programs benchmarks measure against). Everything the agent also knows (record layouts,
//! map names, counters) is in `mcptap_abi`.
#![no_std]
#![no_main]

mod fd;
mod floor;
mod gotls;
mod maps;
mod process;
mod rustls;
mod selftest;
mod ship;
mod syscall;
mod tls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
