//! Pipeline tests: synthetic kernel records through every stage.

use super::*;
use crate::capture::encode_record;
use crate::capture::host::FixedHost;
use crate::signal::Status;
use mcptap_abi::{
    DIR_IN, DIR_OUT, EventHeader, FD_PIPE, FLAG_LOST_BEFORE, RECORD_DATA, RECORD_EXIT,
};

const CLIENT: u32 = 100;
const SERVER: u32 = 200;
const REQ_PIPE: u64 = 1;
const RESP_PIPE: u64 = 2;
const REQ: &[u8] =
    b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}}\n";
const RESP: &[u8] =
    b"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}}\n";

fn host() -> FixedHost {
    FixedHost::stdio_pair(CLIENT, SERVER, REQ_PIPE, RESP_PIPE)
}

/// A TCP socket's data record.
pub(super) fn tcp(
    tgid: u32,
    fd: i32,
    dir: u8,
    inode: u64,
    enter: u64,
    exit: u64,
    data: &[u8],
) -> Vec<u8> {
    let mut r = rec(tgid, fd, dir, inode, enter, exit, data);
    r[2] = mcptap_abi::FD_TCP;
    r
}

/// A socket record: the kernel's word on where a TCP socket's ends are.
fn sock(tgid: u32, fd: i32, inode: u64, local: ([u8; 4], u16), remote: ([u8; 4], u16)) -> Vec<u8> {
    let mut si = mcptap_abi::SocketInfo {
        family: 2,
        local_port: local.1,
        remote_port: remote.1,
        ..Default::default()
    };
    si.local_addr[..4].copy_from_slice(&local.0);
    si.remote_addr[..4].copy_from_slice(&remote.0);
    // SAFETY: SocketInfo is repr(C) plain integers.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&si as *const mcptap_abi::SocketInfo).cast::<u8>(),
            std::mem::size_of::<mcptap_abi::SocketInfo>(),
        )
    };
    encode_record(
        &EventHeader {
            record: mcptap_abi::RECORD_SOCKET,
            fd_kind: mcptap_abi::FD_TCP,
            tgid,
            tid: tgid,
            fd,
            inode,
            ..Default::default()
        },
        bytes,
    )
}

/// One syscall's record: `(tgid, fd, dir, pipe, enter, exit, bytes)`.
pub(super) fn rec(
    tgid: u32,
    fd: i32,
    dir: u8,
    inode: u64,
    enter: u64,
    exit: u64,
    data: &[u8],
) -> Vec<u8> {
    encode_record(
        &EventHeader {
            record: RECORD_DATA,
            dir,
            fd_kind: FD_PIPE,
            tgid,
            tid: tgid,
            fd,
            ts_enter_ns: enter,
            ts_exit_ns: exit,
            inode,
            total: data.len() as u64,
            ..Default::default()
        },
        data,
    )
}

pub(super) fn run(records: &[Vec<u8>], host: &mut FixedHost) -> (Vec<Signal>, Pipeline) {
    let mut p = Pipeline::new(PipelineConfig::default());
    for r in records {
        p.ingest(host, r);
    }
    p.finish(10_000_000_000, 0);
    let out = p.drain_signals().collect();
    (out, p)
}

pub(super) fn exchanges(s: &[Signal]) -> Vec<&crate::signal::Exchange> {
    s.iter()
        .filter_map(|s| match s {
            Signal::Exchange(x) => Some(x),
            _ => None,
        })
        .collect()
}

/// The server reads the request in two pieces split at every possible byte: always one
/// exchange, with both sides' durations from the right syscalls.
#[test]
fn both_views_split_at_every_boundary_make_one_exchange() {
    for cut in 1..REQ.len() {
        let recs = vec![
            rec(CLIENT, 5, DIR_OUT, REQ_PIPE, 1_000, 1_100, REQ),
            rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, &REQ[..cut]),
            rec(SERVER, 0, DIR_IN, REQ_PIPE, 1_250, 1_300, &REQ[cut..]),
            rec(SERVER, 1, DIR_OUT, RESP_PIPE, 5_000, 5_100, RESP),
            rec(CLIENT, 6, DIR_IN, RESP_PIPE, 4_000, 5_200, RESP),
        ];
        let (out, p) = run(&recs, &mut host());
        let xs = exchanges(&out);
        assert_eq!(xs.len(), 1, "cut {cut}: {out:#?}");
        let x = xs[0];
        assert_eq!(x.method, "tools/call");
        assert_eq!(x.tool.as_deref(), Some("echo"));
        assert_eq!(x.status, Status::Ok);
        assert_eq!(x.id, "7");
        // Client: write entry 1000 → read exit 5200. Server: last read exit 1300 → write
        // entry 5000.
        assert_eq!(x.timing.client_duration_ms, Some(0.0042));
        assert_eq!(x.timing.server_duration_ms, Some(0.0037));
        assert_eq!(x.client.pid, Some(CLIENT));
        assert_eq!(x.server.pid, Some(SERVER));
        assert_eq!(x.client.comm, "client");
        assert_eq!(x.request_bytes, REQ.len() as u64);
        assert_eq!(x.session, Some(format!("stdio:{CLIENT}-{SERVER}")));
        assert_eq!(p.tracker.stats.late_views, 0);
    }
}

/// Records from the two processes interleave in any order the ring buffer may produce:
/// still one exchange.
#[test]
fn view_order_does_not_matter() {
    let base = [
        rec(CLIENT, 5, DIR_OUT, REQ_PIPE, 1_000, 1_100, REQ),
        rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, REQ),
        rec(SERVER, 1, DIR_OUT, RESP_PIPE, 5_000, 5_100, RESP),
        rec(CLIENT, 6, DIR_IN, RESP_PIPE, 4_000, 5_200, RESP),
    ];
    // Every permutation that keeps each process's own records in order.
    let orders: [[usize; 4]; 6] = [
        [0, 1, 2, 3],
        [1, 0, 2, 3],
        [1, 2, 0, 3],
        [1, 2, 3, 0],
        [0, 1, 3, 2],
        [1, 0, 3, 2],
    ];
    for order in orders {
        let recs: Vec<Vec<u8>> = order.iter().map(|&i| base[i].clone()).collect();
        let (out, _) = run(&recs, &mut host());
        let xs = exchanges(&out);
        assert_eq!(xs.len(), 1, "order {order:?}: {out:#?}");
        assert_eq!(
            xs[0].timing.client_duration_ms,
            Some(0.0042),
            "order {order:?}"
        );
        assert_eq!(
            xs[0].timing.server_duration_ms,
            Some(0.0038),
            "order {order:?}"
        );
    }
}

/// Only the server is watched: one exchange with the server's view; the client is named
/// from the pipe's holders.
#[test]
fn one_side_watched() {
    let recs = vec![
        rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, REQ),
        rec(SERVER, 1, DIR_OUT, RESP_PIPE, 5_000, 5_100, RESP),
    ];
    let (out, _) = run(&recs, &mut host());
    let xs = exchanges(&out);
    assert_eq!(xs.len(), 1);
    assert_eq!(xs[0].timing.client_duration_ms, None);
    assert_eq!(xs[0].timing.server_duration_ms, Some(0.0038));
    assert_eq!(xs[0].timing.duration_ms, Some(0.0038));
    assert_eq!(xs[0].client.pid, Some(CLIENT));
    assert_eq!(xs[0].client.comm, "client");
}

/// Stray output on the server's stdout: reported once as corruption, framing resyncs and
/// the next response still correlates.
#[test]
fn stray_stdout_is_corruption_and_framing_resyncs() {
    let recs = vec![
        rec(CLIENT, 5, DIR_OUT, REQ_PIPE, 1_000, 1_100, REQ),
        rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, REQ),
        rec(
            SERVER,
            1,
            DIR_OUT,
            RESP_PIPE,
            2_000,
            2_100,
            b"debug: got a call\n",
        ),
        rec(
            CLIENT,
            6,
            DIR_IN,
            RESP_PIPE,
            1_500,
            2_200,
            b"debug: got a call\n",
        ),
        rec(SERVER, 1, DIR_OUT, RESP_PIPE, 5_000, 5_100, RESP),
        rec(CLIENT, 6, DIR_IN, RESP_PIPE, 4_000, 5_200, RESP),
    ];
    let (out, p) = run(&recs, &mut host());
    assert_eq!(exchanges(&out).len(), 1);
    let corrupt: Vec<&Signal> = out
        .iter()
        .filter(|s| matches!(s, Signal::Event(e) if e.name() == "stream_corruption"))
        .collect();
    assert_eq!(corrupt.len(), 1, "{out:#?}");
    assert_eq!(p.protocols.mcp.stats.parse_errors.get("not_json"), Some(&2));
}

/// JSON that is not JSON-RPC on a pipe: the stream is rejected, the kernel is told, and
/// nothing is reported.
#[test]
fn json_logs_are_rejected() {
    let lines = b"{\"level\":\"info\",\"msg\":\"a\"}\n{\"level\":\"info\",\"msg\":\"b\"}\n";
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut h = host();
    p.ingest(&mut h, &rec(300, 1, DIR_OUT, 9, 1, 2, lines));
    p.ingest(&mut h, &rec(300, 1, DIR_OUT, 9, 3, 4, lines));
    p.finish(10, 0);
    let reported: Vec<Signal> = p
        .drain_signals()
        .filter(|s| !matches!(s, Signal::Event(e) if e.name() == "agent_stop"))
        .collect();
    assert!(reported.is_empty(), "{reported:#?}");
    assert_eq!(
        p.take_rejects(),
        vec![Reject {
            tgid: 300,
            fd: 1,
            inode: 9
        }]
    );
    assert_eq!(p.conns.stats.rejected.get("json_not_jsonrpc"), Some(&1));
    // TLS and binary are rejected from their first bytes; plain REST over TCP by its head.
    p.ingest(
        &mut h,
        &rec(301, 1, DIR_OUT, 10, 1, 2, b"\x16\x03\x01\x02\x00"),
    );
    p.ingest(&mut h, &rec(303, 1, DIR_OUT, 12, 1, 2, b"\x00\x01binary"));
    p.ingest(
        &mut h,
        &tcp(
            302,
            4,
            DIR_OUT,
            11,
            1,
            2,
            b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    );
    p.ingest(
        &mut h,
        &tcp(
            304,
            4,
            DIR_OUT,
            13,
            1,
            2,
            b"POST /v1/chat HTTP/1.1\r\nContent-Length: 13\r\n\r\n{\"model\":\"x\"}",
        ),
    );
    assert_eq!(p.take_rejects().len(), 4);
    assert_eq!(p.conns.stats.rejected.get("tls"), Some(&1));
    assert_eq!(p.conns.stats.rejected.get("binary"), Some(&1));
    assert_eq!(p.conns.stats.rejected.get("http_not_mcp"), Some(&2));
}

/// The server dies before answering: the call ends as no_response.
#[test]
fn server_exit_ends_open_calls() {
    let exit = encode_record(
        &EventHeader {
            record: RECORD_EXIT,
            tgid: SERVER,
            tid: SERVER,
            fd: -1,
            ts_enter_ns: 3_000,
            ts_exit_ns: 3_000,
            ..Default::default()
        },
        &[],
    );
    let recs = vec![
        rec(CLIENT, 5, DIR_OUT, REQ_PIPE, 1_000, 1_100, REQ),
        rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, REQ),
        exit,
    ];
    let (out, _) = run(&recs, &mut host());
    let xs = exchanges(&out);
    assert_eq!(xs.len(), 1);
    assert_eq!(xs[0].status, Status::NoResponse);
}

/// After a kernel loss, the partial line is dropped, the hole reported, and the next
/// whole message is used again; no exchange is invented from mismatched halves.
#[test]
fn kernel_loss_resyncs_at_the_next_line() {
    let with_id = |m: &[u8], id: &str| {
        String::from_utf8_lossy(m)
            .replace("\"id\":7", &format!("\"id\":{id}"))
            .into_bytes()
    };
    let mut lost = rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, &REQ[40..]);
    lost[3] = FLAG_LOST_BEFORE;
    let recs = vec![
        // A whole exchange first: the streams are known to carry MCP.
        rec(SERVER, 0, DIR_IN, REQ_PIPE, 100, 200, &with_id(REQ, "6")),
        rec(SERVER, 1, DIR_OUT, RESP_PIPE, 300, 400, &with_id(RESP, "6")),
        rec(SERVER, 0, DIR_IN, REQ_PIPE, 800, 850, &REQ[..20]),
        // The hole: the tail of request 7 arrives after a loss.
        lost,
        rec(
            SERVER,
            0,
            DIR_IN,
            REQ_PIPE,
            1_300,
            1_400,
            &with_id(REQ, "8"),
        ),
        rec(SERVER, 1, DIR_OUT, RESP_PIPE, 5_000, 5_100, RESP),
        rec(
            SERVER,
            1,
            DIR_OUT,
            RESP_PIPE,
            6_000,
            6_100,
            &with_id(RESP, "8"),
        ),
    ];
    let (out, p) = run(&recs, &mut host());
    let xs = exchanges(&out);
    assert_eq!(xs.len(), 2, "{out:#?}");
    assert_eq!((xs[0].id.as_str(), xs[1].id.as_str()), ("6", "8"));
    assert_eq!(p.tracker.stats.orphan_responses, 1);
    assert!(
        out.iter()
            .any(|s| matches!(s, Signal::Event(e) if e.name() == "stream_gap"))
    );
}

pub(super) const LO: [u8; 4] = [127, 0, 0, 1];
pub(super) const HTTP_CLIENT: u32 = 500;
pub(super) const HTTP_SERVER: u32 = 600;

/// Both views of one HTTP connection: the client's fd 5 (inode 51) and the server's fd 7
/// (inode 71), client port `cport`, server 8000.
pub(super) struct Conn {
    cport: u16,
    pub(super) recs: Vec<Vec<u8>>,
    t: u64,
}

impl Conn {
    pub(super) fn new(cport: u16) -> Self {
        let mut c = Conn {
            cport,
            recs: Vec::new(),
            t: 1_000 * cport as u64,
        };
        let (ci, si) = c.inodes();
        c.recs
            .push(sock(HTTP_CLIENT, 5, ci, (LO, cport), (LO, 8000)));
        c.recs
            .push(sock(HTTP_SERVER, 7, si, (LO, 8000), (LO, cport)));
        c
    }
    pub(super) fn inodes(&self) -> (u64, u64) {
        (self.cport as u64 * 10 + 1, self.cport as u64 * 10 + 2)
    }
    /// The client writes, the server reads.
    pub(super) fn request(&mut self, bytes: &[u8]) -> &mut Self {
        let (ci, si) = self.inodes();
        self.t += 100;
        let t = self.t;
        self.recs
            .push(tcp(HTTP_CLIENT, 5, DIR_OUT, ci, t, t + 10, bytes));
        self.recs
            .push(tcp(HTTP_SERVER, 7, DIR_IN, si, t - 50, t + 20, bytes));
        self
    }
    /// The server writes, the client reads.
    pub(super) fn response(&mut self, bytes: &[u8]) -> &mut Self {
        let (ci, si) = self.inodes();
        self.t += 1_000;
        let t = self.t;
        self.recs
            .push(tcp(HTTP_SERVER, 7, DIR_OUT, si, t, t + 10, bytes));
        self.recs
            .push(tcp(HTTP_CLIENT, 5, DIR_IN, ci, t - 500, t + 20, bytes));
        self
    }
}

fn post(session: Option<&str>, body: &str) -> Vec<u8> {
    let sid = session
        .map(|s| format!("Mcp-Session-Id: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nAccept: application/json, text/event-stream\r\nContent-Type: application/json\r\n{sid}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn json_reply(status: &str, session: Option<&str>, body: &str) -> Vec<u8> {
    let sid = session
        .map(|s| format!("mcp-session-id: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{sid}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn sse_reply(session: Option<&str>, events: &[&str]) -> Vec<u8> {
    let sid = session
        .map(|s| format!("mcp-session-id: {s}\r\n"))
        .unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n{sid}transfer-encoding: chunked\r\n\r\n"
    );
    for e in events {
        let ev = format!("event: message\r\ndata: {e}\r\n\r\n");
        out.push_str(&format!("{:x}\r\n{ev}\r\n", ev.len()));
    }
    out.push_str("0\r\n\r\n");
    out.into_bytes()
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
const INIT_OK: &str = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"s","version":"2"}}}"#;
const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{},"_meta":{"progressToken":1}}}"#;
const PROGRESS: &str = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#;
const CALL_OK: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#;

/// Streamable HTTP, both ends watched, the Python client's way: a new connection per POST.
/// The initialize request waits for the response that names the session; an SSE reply with a
/// progress notification then the result; a notification answered 202; a 404 for a request
/// on an unknown session.
#[test]
fn streamable_http_session_across_connections() {
    let mut recs = Vec::new();
    let mut c = Conn::new(40001);
    c.request(&post(None, INIT))
        .response(&sse_reply(Some("S1"), &[INIT_OK]));
    recs.extend(c.recs);
    let mut c = Conn::new(40002);
    c.request(&post(
        Some("S1"),
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    ))
    .response(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
    recs.extend(c.recs);
    let mut c = Conn::new(40003);
    // Head and body in separate writes.
    let req = post(Some("S1"), CALL);
    let split = req.len() - CALL.len();
    c.request(&req[..split])
        .request(&req[split..])
        .response(&sse_reply(Some("S1"), &[PROGRESS, CALL_OK]));
    recs.extend(c.recs);
    let mut c = Conn::new(40004);
    c.request(&post(Some("gone"), r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#))
        .response(&json_reply("404 Not Found", None, r#"{"jsonrpc":"2.0","id":"server-error","error":{"code":-32600,"message":"Session not found"}}"#));
    recs.extend(c.recs);

    let (out, p) = run(&recs, &mut FixedHost::default());
    let xs = exchanges(&out);
    assert_eq!(xs.len(), 3, "{out:#?}");
    let init = xs.iter().find(|x| x.method == "initialize").unwrap();
    // Outputs carry a hash of the session id, never the id.
    let label = crate::mcp::privacy::session_label("S1", false);
    assert_eq!(init.session.as_deref(), Some(label.as_str()));
    assert_eq!(init.transport, crate::signal::Transport::Http);
    assert_eq!(init.http_status, Some(200));
    assert_eq!(init.server.name.as_deref(), Some("s"));
    assert_eq!(init.client.pid, Some(HTTP_CLIENT));
    assert_eq!(init.server.pid, Some(HTTP_SERVER));
    assert_eq!(init.network.server_address.as_deref(), Some("127.0.0.1"));
    assert_eq!(init.network.server_port, Some(8000));
    assert_eq!(init.network.client_port, Some(40001));
    assert!(init.timing.client_duration_ms.is_some() && init.timing.server_duration_ms.is_some());
    let call = xs.iter().find(|x| x.method == "tools/call").unwrap();
    assert_eq!(call.session.as_deref(), Some(label.as_str()));
    assert_eq!(call.status, Status::Ok);
    assert_eq!(call.network.client_port, Some(40003));
    assert_eq!(call.protocol_version.as_deref(), Some("2025-06-18"));
    let gone = xs.iter().find(|x| x.method == "tools/list").unwrap();
    assert_eq!(gone.status, Status::Error);
    assert_eq!(gone.http_status, Some(404));
    let gone_label = crate::mcp::privacy::session_label("gone", false);
    assert_eq!(gone.session.as_deref(), Some(gone_label.as_str()));
    let notes: Vec<_> = out
        .iter()
        .filter_map(|s| match s {
            Signal::Notification(n) => Some(n.method.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        notes,
        vec!["notifications/initialized", "notifications/progress"]
    );
    assert_eq!(p.tracker.stats.late_views, 0);
}

/// Stateless HTTP (no session id): each connection is its own scope, so equal ids on two
/// connections do not collide.
#[test]
fn stateless_http_scopes_by_connection() {
    let mut recs = Vec::new();
    for port in [41001, 41002] {
        let mut c = Conn::new(port);
        c.request(&post(None, CALL))
            .response(&json_reply("200 OK", None, CALL_OK));
        recs.extend(c.recs);
    }
    let (out, _) = run(&recs, &mut FixedHost::default());
    let xs = exchanges(&out);
    assert_eq!(xs.len(), 2, "{out:#?}");
    assert!(
        xs.iter()
            .all(|x| x.session.is_none() && x.status == Status::Ok)
    );
    assert_ne!(xs[0].network.client_port, xs[1].network.client_port);
}

/// Legacy HTTP+SSE: the endpoint event names the session; the POST is answered 202 and its
/// response arrives on the GET stream.
#[test]
fn legacy_sse_correlates_on_the_get_stream() {
    let mut get = Conn::new(42001);
    get.request(b"GET /sse HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n")
        .response(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\nevent: endpoint\r\ndata: /messages/?session_id=abc\r\n\r\n");
    let mut post_conn = Conn::new(42002);
    let body = CALL;
    post_conn
        .request(
            format!(
                "POST /messages/?session_id=abc HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .response(b"HTTP/1.1 202 Accepted\r\ncontent-length: 8\r\n\r\nAccepted");
    get.t = post_conn.t + 1_000;
    get.response(format!("event: message\r\ndata: {CALL_OK}\r\n\r\n").as_bytes());
    let mut recs = get.recs.clone();
    // The POST's records come before the answer on the GET stream.
    let n = recs.len();
    recs.truncate(n - 2);
    recs.extend(post_conn.recs);
    recs.extend(get.recs[n - 2..].iter().cloned());
    let (out, _) = run(&recs, &mut FixedHost::default());
    let xs = exchanges(&out);
    assert_eq!(xs.len(), 1, "{out:#?}");
    assert_eq!(xs[0].transport, crate::signal::Transport::Sse);
    let label = crate::mcp::privacy::session_label("abc", false);
    assert_eq!(xs[0].session.as_deref(), Some(label.as_str()));
    assert_eq!(xs[0].status, Status::Ok);
    assert!(xs[0].timing.client_duration_ms.is_some() && xs[0].timing.server_duration_ms.is_some());
}

// ---- Bad input: each case is counted and reported, never a crash or a made-up exchange. ----

/// One chunk of a syscall that moved `total` bytes, starting at `offset`, by thread `tid` of
/// the server (its stdin).
fn server_chunk(tid: u32, t: u64, total: usize, offset: usize, data: &[u8]) -> Vec<u8> {
    encode_record(
        &EventHeader {
            record: RECORD_DATA,
            dir: DIR_IN,
            fd_kind: FD_PIPE,
            tgid: SERVER,
            tid,
            fd: 0,
            ts_enter_ns: t,
            ts_exit_ns: t + 100,
            inode: REQ_PIPE,
            total: total as u64,
            offset: offset as u64,
            ..Default::default()
        },
        data,
    )
}

/// `REQ`/`RESP` with another id.
fn with_id(m: &[u8], id: &str) -> Vec<u8> {
    String::from_utf8_lossy(m)
        .replace("\"id\":7", &format!("\"id\":{id}"))
        .into_bytes()
}

fn events<'a>(out: &'a [Signal], name: &str) -> Vec<&'a crate::signal::Event> {
    out.iter()
        .filter_map(|s| match s {
            Signal::Event(e) if e.name() == name => Some(e),
            _ => None,
        })
        .collect()
}

/// The server's view of a request line, then the response line, at time `t`.
fn server_round(id: &str, t: u64) -> [Vec<u8>; 2] {
    [
        rec(SERVER, 0, DIR_IN, REQ_PIPE, t, t + 10, &with_id(REQ, id)),
        rec(
            SERVER,
            1,
            DIR_OUT,
            RESP_PIPE,
            t + 50,
            t + 60,
            &with_id(RESP, id),
        ),
    ]
}

/// Malformed JSON, invalid UTF-8 inside a string, and brackets that close nothing, between
/// good messages: each bad line is one parse error and one `stream_corruption`, and the
/// exchanges around them are whole.
#[test]
fn malformed_lines_are_counted_and_skipped() {
    let bad: [&[u8]; 4] = [
        b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"tools/call\",\"params\":{\"name\":\n",
        b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"tools/call\",\"params\":{\"name\":\"\xff\xfe\"}}\n",
        b"}}}}]]]]\n",
        // Invalid UTF-8 in a field mcptap never reads: still not JSON (found by fuzzing).
        b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"ping\",\"x\":\"\xff\"}\n",
    ];
    let mut recs = Vec::new();
    recs.extend(server_round("1", 1_000));
    for (i, b) in bad.iter().enumerate() {
        let t = 2_000 + i as u64 * 100;
        recs.push(rec(SERVER, 0, DIR_IN, REQ_PIPE, t, t + 10, b));
    }
    recs.extend(server_round("2", 5_000));
    let (out, p) = run(&recs, &mut host());
    let ids: Vec<&str> = exchanges(&out).iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, ["1", "2"], "{out:#?}");
    assert_eq!(p.protocols.mcp.stats.parse_errors.get("not_json"), Some(&4));
    assert_eq!(events(&out, "stream_corruption").len(), 4);
}

/// Arguments nested 100,000 deep (valid JSON; a recursive parser would overflow its stack),
/// with payloads on and an advertised schema, so that hashing, schema checking and redaction
/// all meet it: the exchange is reported whole and nothing overflows.
#[test]
fn deeply_nested_arguments_do_not_overflow() {
    let depth = 100_000;
    let req = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"a\":{}1{}}}}}}}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let list = b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/list\"}\n";
    let tools = b"{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":{\"tools\":[{\"name\":\"echo\",\"inputSchema\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"array\"}}}}]}}\n";
    let mut p = Pipeline::new(PipelineConfig {
        tracker: crate::mcp::TrackerConfig {
            payloads: true,
            ..Default::default()
        },
        ..Default::default()
    });
    let mut h = host();
    for r in [
        rec(SERVER, 0, DIR_IN, REQ_PIPE, 1, 2, list),
        rec(SERVER, 1, DIR_OUT, RESP_PIPE, 3, 4, tools),
        rec(SERVER, 0, DIR_IN, REQ_PIPE, 10, 20, req.as_bytes()),
        rec(SERVER, 1, DIR_OUT, RESP_PIPE, 30, 40, &with_id(RESP, "3")),
    ] {
        p.ingest(&mut h, &r);
    }
    p.finish(10_000_000_000, 0);
    let out: Vec<Signal> = p.drain_signals().collect();
    let xs = exchanges(&out);
    let call = xs.iter().find(|x| x.id == "3").expect("the deep call");
    assert_eq!(call.status, Status::Ok);
    assert_eq!(call.tool.as_deref(), Some("echo"));
}

/// A 100 MiB message, arriving as the kernel ships it (64 KiB chunks of one write), with the
/// default 64 MiB limit: reported once as truncated with its size and method, never parsed
/// half, and the next message is whole again. The framer never holds more than the limit.
#[test]
fn a_100_mib_message_is_reported_truncated() {
    let mut p = Pipeline::new(PipelineConfig::default());
    let mut h = host();
    // The stream is known to carry MCP first, as it is after any handshake.
    for r in server_round("1", 100) {
        p.ingest(&mut h, &r);
    }
    let head = b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"blob\":\"";
    let total = 100usize << 20;
    let mut msg = Vec::with_capacity(total);
    msg.extend_from_slice(head);
    msg.resize(total - 5, b'x');
    msg.extend_from_slice(b"\"}}}\n");
    for (i, chunk) in msg.chunks(64 << 10).enumerate() {
        p.ingest(
            &mut h,
            &server_chunk(SERVER, 1_000, total, i * (64 << 10), chunk),
        );
    }
    drop(msg);
    for r in server_round("6", 3_000) {
        p.ingest(&mut h, &r);
    }
    p.finish(10_000_000_000, 0);
    let out: Vec<Signal> = p.drain_signals().collect();
    let truncated = events(&out, "message_truncated");
    assert_eq!(truncated.len(), 1, "{out:#?}");
    let ids: Vec<&str> = exchanges(&out).iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, ["1", "6"], "no exchange from the oversize message");
    assert_eq!(p.protocols.mcp.stats.oversize, 1);
    assert_eq!(
        p.conns.stats.gaps.values().sum::<u64>(),
        0,
        "{:?}",
        p.conns.stats.gaps
    );
}

/// Two threads write one fd, and one thread's large write is cut by the other's: the hole is
/// named `interleaved`, the torn message is dropped rather than glued to the other's bytes,
/// and no exchange is invented.
#[test]
fn interleaved_threads_on_one_fd_are_a_gap() {
    let mut h = host();
    let mut p = Pipeline::new(PipelineConfig::default());
    for r in server_round("1", 100) {
        p.ingest(&mut h, &r);
    }
    let torn = with_id(REQ, "2");
    p.ingest(
        &mut h,
        &server_chunk(SERVER, 1_000, torn.len(), 0, &torn[..30]),
    );
    // Another thread's whole read lands before the first thread's second chunk.
    let other = with_id(REQ, "3");
    p.ingest(
        &mut h,
        &server_chunk(SERVER + 1, 1_050, other.len(), 0, &other),
    );
    p.ingest(
        &mut h,
        &server_chunk(SERVER, 1_000, torn.len(), 30, &torn[30..]),
    );
    for r in server_round("4", 2_000) {
        p.ingest(&mut h, &r);
    }
    p.finish(10_000_000_000, 0);
    let out: Vec<Signal> = p.drain_signals().collect();
    assert_eq!(
        p.conns.stats.gaps.get("interleaved"),
        Some(&1),
        "{:?}",
        p.conns.stats.gaps
    );
    let ids: Vec<&str> = exchanges(&out).iter().map(|x| x.id.as_str()).collect();
    assert!(
        !ids.contains(&"2"),
        "an exchange from a torn message: {ids:?}"
    );
    assert!(ids.contains(&"1") && ids.contains(&"4"), "{ids:?}");
}

/// A response whose request was never seen, and a request id reused while the first is
/// open: both reported as such, and neither becomes a made-up exchange.
#[test]
fn orphan_responses_and_duplicate_ids_are_reported() {
    let recs = vec![
        rec(
            SERVER,
            1,
            DIR_OUT,
            RESP_PIPE,
            100,
            110,
            &with_id(RESP, "42"),
        ),
        rec(SERVER, 0, DIR_IN, REQ_PIPE, 200, 210, &with_id(REQ, "5")),
        rec(SERVER, 0, DIR_IN, REQ_PIPE, 300, 310, &with_id(REQ, "5")),
        rec(SERVER, 1, DIR_OUT, RESP_PIPE, 400, 410, &with_id(RESP, "5")),
    ];
    let (out, p) = run(&recs, &mut host());
    assert_eq!(p.tracker.stats.orphan_responses, 1);
    assert_eq!(events(&out, "orphan_response").len(), 1, "{out:#?}");
    assert_eq!(p.tracker.stats.duplicate_ids, 1);
    assert_eq!(events(&out, "duplicate_id").len(), 1);
    let xs = exchanges(&out);
    assert!(xs.iter().all(|x| x.id != "42"), "{xs:#?}");
    assert_eq!(
        xs.iter()
            .filter(|x| x.id == "5" && x.status == Status::Ok)
            .count(),
        1,
        "{xs:#?}"
    );
}

/// HTTP that lies: a Content-Length longer than the body that follows, and a chunk size that
/// is not hex. Each is counted as an HTTP framing error; nothing after the lie is parsed as a
/// message, and no exchange is made up.
#[test]
fn lying_http_framing_is_counted() {
    let mut recs = Vec::new();
    let mut c = Conn::new(42001);
    let mut lie = post(None, CALL);
    let body_at = lie.len() - CALL.len();
    let claimed = format!("Content-Length: {}", CALL.len() + 500);
    let honest = format!("Content-Length: {}", CALL.len());
    lie = String::from_utf8(lie)
        .unwrap()
        .replace(&honest, &claimed)
        .into_bytes();
    assert!(lie.len() > body_at);
    // The body is short by 500 bytes; the next request's head is swallowed as body.
    c.request(&lie).request(&post(None, CALL));
    recs.extend(c.recs);
    let mut c = Conn::new(42002);
    c.request(&post(None, CALL)).response(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nevent: message\r\n\r\n",
    );
    recs.extend(c.recs);
    let (out, p) = run(&recs, &mut FixedHost::default());
    let xs = exchanges(&out);
    assert!(
        xs.iter().all(|x| x.status != Status::Ok),
        "a completed exchange from lying framing: {xs:#?}"
    );
    assert!(p.protocols.mcp.stats.http_errors >= 1, "{:?}", p.stats);
    assert!(
        p.protocols.mcp.stats.parse_errors.values().sum::<u64>()
            + p.protocols.mcp.stats.http_errors
            >= 2
    );
}

/// Binary garbage on a pipe that already carries MCP: counted as corruption, framing resyncs
/// at the next newline and the next exchange is whole.
#[test]
fn binary_garbage_mid_stream_is_counted() {
    let mut recs = Vec::new();
    recs.extend(server_round("1", 100));
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect();
    recs.push(rec(SERVER, 0, DIR_IN, REQ_PIPE, 1_000, 1_010, &garbage));
    recs.push(rec(SERVER, 0, DIR_IN, REQ_PIPE, 1_100, 1_110, b"\n"));
    recs.extend(server_round("2", 2_000));
    let (out, p) = run(&recs, &mut host());
    let ids: Vec<&str> = exchanges(&out).iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, ["1", "2"], "{out:#?}");
    assert!(
        p.protocols.mcp.stats.parse_errors.values().sum::<u64>() >= 1,
        "{:?}",
        p.stats
    );
    assert!(!events(&out, "stream_corruption").is_empty());
}

/// A flood of connections, each leaving a call unanswered, against small caps: the tables
/// never pass their caps, every eviction is counted, and every call is accounted for, either
/// reported as `no_response` or still open.
#[test]
fn caps_bound_sessions_and_pending_calls() {
    let mut cfg = PipelineConfig::default();
    cfg.tracker.max_sessions = 100;
    cfg.tracker.max_pending = 50;
    cfg.max_streams = 300;
    let mut p = Pipeline::new(cfg);
    let mut h = FixedHost::default();
    let mut out = Vec::new();
    let calls = 1_000u16;
    for i in 0..calls {
        let mut c = Conn::new(20_000 + i);
        c.request(&post(None, CALL));
        for r in &c.recs {
            p.ingest(&mut h, r);
        }
        if i % 10 == 9 {
            p.tick(c.t + 1_000_000_000);
            out.extend(p.drain_signals());
            assert!(
                p.tracker.session_count() <= 100,
                "{}",
                p.tracker.session_count()
            );
            assert!(
                p.tracker.open_exchanges() <= 50,
                "{}",
                p.tracker.open_exchanges()
            );
            assert!(p.stream_count() <= 300, "{}", p.stream_count());
        }
    }
    let open = p.tracker.open_exchanges();
    let ev = p.evictions();
    let given_up = exchanges(&out)
        .iter()
        .filter(|x| x.status == Status::NoResponse)
        .count();
    assert_eq!(given_up + open, calls as usize, "every call accounted for");
    assert_eq!(ev["pending_requests"], given_up as u64);
    assert!(ev["sessions"] > 0 && ev["streams"] > 0, "{ev:?}");
    let ended_evicted = out
        .iter()
        .filter(|s| {
            matches!(s, Signal::Event(e) if e.name() == "session_end"
                && e.detail().get("reason").and_then(|r| r.as_str()) == Some("evicted"))
        })
        .count();
    assert!(ended_evicted as u64 <= ev["sessions"]);
}

/// The client's writes of the request pipe, one record each, `(enter ns, bytes)`, through
/// a pipeline with `cfg`.
fn client_writes(cfg: PipelineConfig, writes: &[(u64, &[u8])]) -> Pipeline {
    let mut p = Pipeline::new(cfg);
    let mut h = host();
    for (t, bytes) in writes {
        p.ingest(
            &mut h,
            &rec(CLIENT, 5, DIR_OUT, REQ_PIPE, *t, t + 100, bytes),
        );
    }
    p
}

/// A stream that goes idle inside a message is finished, not just forgotten: the partial
/// message is reported as `stream_unterminated`.
#[test]
fn idle_streams_are_finished_when_they_expire() {
    let cfg = PipelineConfig {
        stream_idle_ns: 5_000_000_000,
        ..Default::default()
    };
    let partial: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":8,";
    let mut p = client_writes(cfg, &[(1_000, REQ), (2_000, partial)]);
    p.tick(10_000_000_000);
    let out: Vec<Signal> = p.drain_signals().collect();
    let e = events(&out, "stream_unterminated");
    assert_eq!(e.len(), 1, "{out:#?}");
    assert_eq!(e[0].detail()["bytes"], partial.len());
    assert_eq!(p.stream_count(), 0);
}

/// Past `max_buffered_bytes`, the stream that went over drops its partial message: a
/// `buffer_budget` gap, counted, and the stream goes on at its next line.
#[test]
fn the_buffer_budget_drops_the_partial_message_that_passes_it() {
    let cfg = PipelineConfig {
        max_buffered_bytes: 1000,
        ..Default::default()
    };
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":9,\"method\":\"x\",\"params\":\"{}",
        "y".repeat(2000)
    );
    let mut p = client_writes(cfg, &[(1_000, REQ), (2_000, big.as_bytes())]);
    assert_eq!(p.conns.stats.budget_drops, 1);
    assert_eq!(p.conns.stats.gaps.get("buffer_budget"), Some(&1));
    let t = p.tables();
    let b = t.iter().find(|t| t.name == "buffered_bytes").unwrap();
    assert!(b.len <= 1000, "{b:?}");
    // The rest of the dropped line is skipped; the next line is a message again.
    let mut h = host();
    p.ingest(
        &mut h,
        &rec(CLIENT, 5, DIR_OUT, REQ_PIPE, 3_000, 3_100, b"yyy\"}\n"),
    );
    p.ingest(
        &mut h,
        &rec(CLIENT, 5, DIR_OUT, REQ_PIPE, 4_000, 4_100, REQ),
    );
    assert_eq!(p.protocols.mcp.stats.messages, 2);
}

/// Only the server is watched, and /proc does not name the client at first (a scan that
/// missed it): the request is filed before the client is known, the response after. Still one
/// session, named after both processes, one exchange and a completed handshake, whichever of
/// the two pids is the lower (the sides of the session then run against the new key's order).
#[test]
fn a_far_end_named_late_does_not_split_the_session() {
    const INIT: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"2025-06-18\"}}\n";
    const INIT_OK: &[u8] = b"{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"protocolVersion\":\"2025-06-18\",\"serverInfo\":{\"name\":\"s\",\"version\":\"1\"}}}\n";
    const INITIALIZED: &[u8] = b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n";
    for (client, server) in [(100, 200), (300, 200)] {
        let mut h = FixedHost::stdio_pair(client, server, REQ_PIPE, RESP_PIPE);
        let known = std::mem::take(&mut h.holders);
        let mut p = Pipeline::new(PipelineConfig::default());
        p.ingest(&mut h, &rec(server, 0, DIR_IN, REQ_PIPE, 900, 1_000, INIT));
        h.holders = known;
        p.ingest(
            &mut h,
            &rec(server, 1, DIR_OUT, RESP_PIPE, 2_000, 2_100, INIT_OK),
        );
        p.ingest(
            &mut h,
            &rec(server, 0, DIR_IN, REQ_PIPE, 2_900, 3_000, INITIALIZED),
        );
        p.ingest(&mut h, &rec(server, 0, DIR_IN, REQ_PIPE, 3_900, 4_000, REQ));
        p.ingest(
            &mut h,
            &rec(server, 1, DIR_OUT, RESP_PIPE, 5_000, 5_100, RESP),
        );
        p.finish(10_000_000_000, 0);
        let out: Vec<Signal> = p.drain_signals().collect();
        let xs = exchanges(&out);
        let label = format!("stdio:{client}-{server}");
        assert_eq!(xs.len(), 2, "{client}/{server}: {out:#?}");
        for x in &xs {
            assert_eq!(x.status, Status::Ok, "{x:?}");
            assert_eq!(x.session.as_deref(), Some(label.as_str()));
            assert_eq!((x.client.pid, x.server.pid), (Some(client), Some(server)));
            assert!(x.timing.server_duration_ms.is_some() && x.timing.client_duration_ms.is_none());
        }
        let events: Vec<_> = out
            .iter()
            .filter_map(|s| match s {
                Signal::Event(e) => Some(e),
                _ => None,
            })
            .collect();
        let hs: Vec<_> = events.iter().filter(|e| e.name() == "handshake").collect();
        assert_eq!(hs.len(), 1, "{events:#?}");
        assert!(matches!(&hs[0].what, What::Handshake(h) if h.status == "success"));
        assert!(
            events.iter().all(|e| e.name() != "orphan_response"),
            "{events:#?}"
        );
        assert_eq!(p.tracker.stats.orphan_responses, 0);
    }
}
