//! Pipeline tests of TLS: OpenSSL plaintext joins its socket's streams; TLS sockets never
//! decrypted are counted once, however they end.

use super::*;
use crate::capture::encode_record;
use crate::capture::host::FixedHost;
use mcptap_abi::{
    DIR_IN, DIR_OUT, EventHeader, FD_TCP, FLAG_TLS, RECORD_CLOSE, RECORD_DATA, RECORD_EXEC,
    RECORD_EXIT, RECORD_TLS, syscall,
};

const CLIENT: u32 = 10;
const SERVER: u32 = 20;

fn header(record: u8, tgid: u32, fd: i32, inode: u64, ts: u64) -> EventHeader {
    EventHeader {
        record,
        fd_kind: FD_TCP,
        tgid,
        tid: tgid,
        fd,
        inode,
        ts_enter_ns: ts,
        ts_exit_ns: ts,
        ..Default::default()
    }
}

/// What `SSL_read`/`SSL_write` returned, as the uprobes ship it.
fn plaintext(tgid: u32, fd: i32, inode: u64, dir: u8, ts: u64, data: &[u8]) -> Vec<u8> {
    let h = EventHeader {
        dir,
        flags: FLAG_TLS,
        syscall: if dir == DIR_IN {
            syscall::SSL_READ
        } else {
            syscall::SSL_WRITE
        },
        total: data.len() as u64,
        ..header(RECORD_DATA, tgid, fd, inode, ts)
    };
    encode_record(&h, data)
}

/// The kernel's word that a socket carries TLS (`bound`: an SSL object is bound to it).
fn tls(tgid: u32, fd: i32, inode: u64, bound: bool) -> Vec<u8> {
    let h = EventHeader {
        flags: if bound { FLAG_TLS } else { 0 },
        ..header(RECORD_TLS, tgid, fd, inode, 1)
    };
    encode_record(&h, &[])
}

/// Where a loopback TCP socket's ends are: `local` and `remote` ports.
fn socket(tgid: u32, fd: i32, inode: u64, local: u16, remote: u16) -> Vec<u8> {
    let mut si = mcptap_abi::SocketInfo {
        family: 2,
        local_port: local,
        remote_port: remote,
        ..Default::default()
    };
    si.local_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    si.remote_addr[..4].copy_from_slice(&[127, 0, 0, 1]);
    // SAFETY: SocketInfo is repr(C) plain integers.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&si as *const mcptap_abi::SocketInfo).cast::<u8>(),
            std::mem::size_of::<mcptap_abi::SocketInfo>(),
        )
    };
    encode_record(
        &header(mcptap_abi::RECORD_SOCKET, tgid, fd, inode, 1),
        bytes,
    )
}

fn ingest(p: &mut Pipeline, records: &[Vec<u8>]) {
    let mut host = FixedHost::default();
    for r in records {
        p.ingest(&mut host, r);
    }
}

#[test]
fn tls_plaintext_is_framed_as_http_and_marks_the_exchange() {
    let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
    let req = [
        format!(
            "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nmcp-session-id: s1\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes(),
        body.to_vec(),
    ]
    .concat();
    let answer = br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;
    let resp = [
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            answer.len()
        )
        .into_bytes(),
        answer.to_vec(),
    ]
    .concat();
    let mut p = Pipeline::new(PipelineConfig::default());
    ingest(
        &mut p,
        &[
            socket(CLIENT, 5, 50, 40000, 8443),
            socket(SERVER, 6, 60, 8443, 40000),
            tls(CLIENT, 5, 50, false),
            tls(SERVER, 6, 60, false),
            tls(CLIENT, 5, 50, true),
            tls(SERVER, 6, 60, true),
            plaintext(CLIENT, 5, 50, DIR_OUT, 1_000, &req),
            plaintext(SERVER, 6, 60, DIR_IN, 2_000, &req),
            plaintext(SERVER, 6, 60, DIR_OUT, 3_000, &resp),
            plaintext(CLIENT, 5, 50, DIR_IN, 4_000, &resp),
        ],
    );
    p.finish(10_000_000, 0);
    let out: Vec<Signal> = p.drain_signals().collect();
    let x: Vec<_> = out
        .iter()
        .filter_map(|s| match s {
            Signal::Exchange(x) => Some(x),
            _ => None,
        })
        .collect();
    assert_eq!(x.len(), 1, "{out:#?}");
    assert!(x[0].network.tls);
    assert_eq!(x[0].transport, crate::signal::Transport::Http);
    assert_eq!(x[0].timing.client_duration_ms, Some(0.003));
    assert_eq!(x[0].timing.server_duration_ms, Some(0.001));
    let line = crate::output::jsonl::encode(&Signal::Exchange(x[0].clone()));
    assert!(line.contains(r#""tls":true"#), "{line}");
    // Both sockets were decrypted: nothing to count, even though they never closed.
    assert_eq!(p.conns.stats.tls_sockets, 2);
    assert_eq!(p.conns.stats.tls_undecrypted, 0);
}

#[test]
fn tls_sockets_never_decrypted_are_counted_once_however_they_end() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let close = |tgid, fd, inode| encode_record(&header(RECORD_CLOSE, tgid, fd, inode, 5), &[]);
    let exit = |tgid| encode_record(&header(RECORD_EXIT, tgid, -1, 0, 5), &[]);
    ingest(
        &mut p,
        &[
            // Closed without an SSL object: counted.
            tls(CLIENT, 3, 30, false),
            close(CLIENT, 3, 30),
            // Bound, then closed with no plaintext at all (a bare handshake): not counted.
            tls(CLIENT, 4, 40, false),
            tls(CLIENT, 4, 40, true),
            close(CLIENT, 4, 40),
            // Its process exits: counted.
            tls(SERVER, 7, 70, false),
            exit(SERVER),
            // Still open at stop: counted then.
            tls(CLIENT, 8, 80, false),
            encode_record(&header(RECORD_EXEC, CLIENT, -1, 0, 5), &[]),
        ],
    );
    assert_eq!(p.conns.stats.tls_sockets, 4);
    assert_eq!(p.conns.stats.tls_undecrypted, 2);
    assert_eq!(
        p.take_process_notes(),
        vec![
            ProcessNote::TlsSocket(CLIENT),
            ProcessNote::TlsSocket(CLIENT),
            ProcessNote::TlsSocket(SERVER),
            ProcessNote::Exit(SERVER),
            ProcessNote::TlsSocket(CLIENT),
            ProcessNote::Exec(CLIENT),
        ]
    );
    // Ciphertext that reached the pipeline (a connection the kernel's check missed) is
    // rejected and counted as not decrypted.
    let mut hello = header(RECORD_DATA, CLIENT, 9, 90, 6);
    hello.dir = DIR_OUT;
    hello.total = 8;
    ingest(
        &mut p,
        &[encode_record(&hello, &[0x16, 3, 1, 0, 0xc8, 1, 0, 0])],
    );
    assert_eq!(p.conns.stats.rejected.get("tls"), Some(&1));
    assert_eq!(p.take_rejects().len(), 1);
    assert_eq!(p.conns.stats.tls_undecrypted, 3);
    p.finish(10_000_000, 0);
    assert_eq!(p.conns.stats.tls_undecrypted, 4);
    // Counted once: a later stop or close finds nothing more.
    p.finish(20_000_000, 0);
    ingest(&mut p, &[close(CLIENT, 8, 80)]);
    assert_eq!(p.conns.stats.tls_undecrypted, 4);
}
