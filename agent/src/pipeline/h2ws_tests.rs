//! Pipeline tests of HTTP/2 and WebSocket: MCP over h2c and over WebSocket (with
//! permessage-deflate), both ends watched, as synthetic socket records through every stage.

use super::*;
use crate::capture::host::FixedHost;
use crate::signal::{HttpVersion, Status, Transport};
use flate2::{Compress, Compression};
use loona_hpack::Encoder;

use super::tests::{Conn as Link, HTTP_CLIENT as CLIENT, HTTP_SERVER as SERVER, exchanges};
use crate::wire::http2::frames::testing::{frame, settings_payload};
use crate::wire::websocket::testing::{deflate_msg, frame as ws};

const PORT: u16 = 8000;

fn run(recs: &[Vec<u8>]) -> (Vec<Signal>, Pipeline) {
    super::tests::run(recs, &mut FixedHost::default())
}

fn notifications(s: &[Signal]) -> Vec<&str> {
    s.iter()
        .filter_map(|s| match s {
            Signal::Notification(n) => Some(n.method.as_str()),
            _ => None,
        })
        .collect()
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
const INIT_OK: &str = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"s","version":"2"}}}"#;
const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello hello hello hello"},"_meta":{"progressToken":1}}}"#;
const PROGRESS: &str = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#;
const CALL_OK: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hello hello hello hello"}]}}"#;
const LIST: &str = r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#;
const LIST_OK: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo","inputSchema":{"type":"object"}}]}}"#;

// HTTP/2 frames.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const CONTINUATION: u8 = 9;
const WINDOW_UPDATE: u8 = 8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn settings(list: &[(u16, u32)]) -> Vec<u8> {
    frame(SETTINGS, 0, 0, &settings_payload(list))
}

/// A request's HEADERS (and DATA with END_STREAM): a POST of `body` to /mcp, in the session
/// if one is named. The header block is cut into HEADERS + CONTINUATION when `continued`.
fn h2_post(
    e: &mut Encoder<'_>,
    stream: u32,
    session: Option<&str>,
    body: &str,
    continued: bool,
) -> Vec<u8> {
    let len = body.len().to_string();
    let mut h = vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "127.0.0.1:8000"),
        (":path", "/mcp"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("content-length", len.as_str()),
    ];
    if let Some(s) = session {
        h.push(("mcp-session-id", s));
        h.push(("mcp-protocol-version", "2025-06-18"));
    }
    let block = e.encode(h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let mut out = if continued {
        let (a, b) = block.split_at(block.len() / 2);
        [
            frame(HEADERS, 0, stream, a),
            frame(CONTINUATION, END_HEADERS, stream, b),
        ]
        .concat()
    } else {
        frame(HEADERS, END_HEADERS, stream, &block)
    };
    // The body in two DATA frames.
    let (a, b) = body.as_bytes().split_at(body.len() / 3);
    out.extend(frame(DATA, 0, stream, a));
    out.extend(frame(DATA, END_STREAM, stream, b));
    out
}

/// A response's HEADERS, with END_STREAM when it has no body.
fn h2_head(e: &mut Encoder<'_>, stream: u32, status: &str, ctype: Option<&str>) -> Vec<u8> {
    let mut h = vec![(":status", status), ("mcp-session-id", "S1")];
    if let Some(c) = ctype {
        h.push(("content-type", c));
    }
    let block = e.encode(h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let flags = if ctype.is_some() {
        END_HEADERS
    } else {
        END_HEADERS | END_STREAM
    };
    frame(HEADERS, flags, stream, &block)
}

/// MCP over h2c, both ends watched: initialize answered in JSON (naming the session), the
/// initialized notification answered 202 (HEADERS with END_STREAM), a tool call answered by
/// an event stream (progress, then the result, cut across DATA frames) while a tools/list on
/// another stream is answered in between.
#[test]
fn mcp_over_h2c_both_views() {
    let mut ce = Encoder::new();
    let mut se = Encoder::new();
    let mut link = Link::new(40_101);
    let mut first = PREFACE.to_vec();
    first.extend(settings(&[(3, 100), (4, 65_535)]));
    first.extend(h2_post(&mut ce, 1, None, INIT, false));
    link.request(&first);
    let mut answer = settings(&[(3, 128)]);
    answer.extend(frame(WINDOW_UPDATE, 0, 0, &1_000_000u32.to_be_bytes()));
    answer.extend(frame(SETTINGS, ACK, 0, &[]));
    answer.extend(h2_head(&mut se, 1, "200", Some("application/json")));
    answer.extend(frame(DATA, END_STREAM, 1, INIT_OK.as_bytes()));
    link.response(&answer);
    let mut next = frame(SETTINGS, ACK, 0, &[]);
    next.extend(h2_post(&mut ce, 3, Some("S1"), INITIALIZED, true));
    link.request(&next);
    link.response(&h2_head(&mut se, 3, "202", None));
    // Two requests in flight; the client's write is read by the server in two pieces.
    let mut both = h2_post(&mut ce, 5, Some("S1"), CALL, true);
    both.extend(h2_post(&mut ce, 7, Some("S1"), LIST, false));
    let cut = both.len() / 2 + 3;
    link.request(&both[..cut]).request(&both[cut..]);
    let events = format!("event: message\ndata: {PROGRESS}\n\nevent: message\ndata: {CALL_OK}\n\n");
    let (e1, e2) = events.as_bytes().split_at(40);
    let mut reply = h2_head(&mut se, 5, "200", Some("text/event-stream"));
    reply.extend(frame(DATA, 0, 5, e1));
    reply.extend(h2_head(&mut se, 7, "200", Some("application/json")));
    reply.extend(frame(DATA, END_STREAM, 7, LIST_OK.as_bytes()));
    link.response(&reply);
    link.response(&frame(DATA, END_STREAM, 5, e2));

    let (out, p) = run(&link.recs);
    let xs = exchanges(&out);
    let methods: Vec<&str> = xs.iter().map(|x| x.method.as_str()).collect();
    assert_eq!(methods.len(), 3, "{out:#?}");
    let label = crate::mcp::privacy::session_label("S1", false);
    for x in &xs {
        assert_eq!(x.transport, Transport::Http, "{x:#?}");
        assert_eq!(x.network.http_version, Some(HttpVersion::Http2), "{x:#?}");
        assert_eq!(x.status, Status::Ok, "{x:#?}");
        assert_eq!(x.http_status, Some(200), "{x:#?}");
        assert_eq!(x.session.as_deref(), Some(label.as_str()), "{x:#?}");
        // Both views.
        assert_eq!(x.client.pid, Some(CLIENT));
        assert_eq!(x.server.pid, Some(SERVER));
        assert!(x.timing.client_duration_ms.is_some(), "{x:#?}");
        assert!(x.timing.server_duration_ms.is_some(), "{x:#?}");
        assert_eq!(x.network.server_port, Some(PORT));
        assert_eq!(x.network.client_port, Some(40_101));
    }
    let find = |m: &str| xs.iter().find(|x| x.method == m).expect(m);
    let init = find("initialize");
    assert_eq!(init.server.name.as_deref(), Some("s"));
    let call = find("tools/call");
    assert_eq!(call.tool.as_deref(), Some("echo"));
    assert_eq!(call.protocol_version.as_deref(), Some("2025-06-18"));
    assert_eq!(call.response_bytes, Some(CALL_OK.len() as u64));
    assert_eq!(
        find("tools/list").response_bytes,
        Some(LIST_OK.len() as u64)
    );
    assert_eq!(
        notifications(&out),
        ["notifications/initialized", "notifications/progress"]
    );
    assert!(p.conns.stats.rejected.is_empty(), "{:?}", p.conns.stats);
    assert_eq!(p.protocols.mcp.stats.http_errors, 0);
    assert_eq!(p.tracker.stats.late_views, 0);
    // The JSON lines say HTTP/2.
    let line = crate::output::jsonl::encode(&Signal::Exchange((*call).clone()));
    assert!(line.contains(r#""http_version":"2""#), "{line}");
}

// WebSocket frames.
const TEXT: u8 = 1;
const CONT: u8 = 0;
const PING: u8 = 9;
const PONG: u8 = 10;

/// One message compressed as RFC 7692 says (the compressor carries on across messages:
/// context takeover).
fn deflate(c: &mut Compress, msg: &str) -> Vec<u8> {
    deflate_msg(c, msg.as_bytes())
}

/// The client's masked, compressed message in one frame.
fn client_msg(c: &mut Compress, msg: &str, key: [u8; 4]) -> Vec<u8> {
    ws(true, true, TEXT, &deflate(c, msg), Some(key))
}

/// The server's compressed message in one frame.
fn server_msg(c: &mut Compress, msg: &str) -> Vec<u8> {
    ws(true, true, TEXT, &deflate(c, msg), None)
}

fn upgrade(extensions: Option<&str>) -> Vec<u8> {
    let ext = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mcp\r\n{ext}\r\n"
    )
    .into_bytes()
}

fn switched(extensions: Option<&str>) -> Vec<u8> {
    let ext = extensions
        .map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: mcp\r\n{ext}\r\n"
    )
    .into_bytes()
}

const SRV_PING: &str = r#"{"jsonrpc":"2.0","id":"srv-1","method":"ping"}"#;
const SRV_PONG: &str = r#"{"jsonrpc":"2.0","id":"srv-1","result":{}}"#;

/// MCP over WebSocket with permessage-deflate (context takeover both ways), both ends
/// watched: the 101 and the server's first frames (a compressed ping request and a ping
/// control frame) in one record; the client's frames masked and compressed, its tool call in
/// three fragments with a ping control frame between the first two. A second connection
/// whose messages are JSON but not JSON-RPC is rejected and reports nothing.
#[test]
fn mcp_over_websocket_with_deflate() {
    let mut cz = Compress::new(Compression::default(), false);
    let mut sz = Compress::new(Compression::default(), false);
    let mut link = Link::new(40_201);
    link.request(&upgrade(Some("permessage-deflate; client_max_window_bits")));
    let mut head = switched(Some("permessage-deflate"));
    head.extend(server_msg(&mut sz, SRV_PING));
    head.extend(ws(true, false, PING, b"hb", None));
    link.response(&head);
    let mut w = client_msg(&mut cz, SRV_PONG, [1, 2, 3, 4]);
    w.extend(ws(true, false, PONG, b"hb", Some([9, 9, 9, 9])));
    w.extend(client_msg(&mut cz, INIT, [0x37, 0xfa, 0x21, 0x3d]));
    link.request(&w);
    link.response(&server_msg(&mut sz, INIT_OK));
    link.request(&client_msg(&mut cz, INITIALIZED, [5, 6, 7, 8]));
    // The call: one compressed message in three fragments, a ping between the first two.
    let z = deflate(&mut cz, CALL);
    let (a, rest) = z.split_at(z.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    link.request(&ws(false, true, TEXT, a, Some([0xa1, 0xb2, 0xc3, 0xd4])));
    let mut w = ws(true, false, PING, b"are you there", Some([4, 3, 2, 1]));
    w.extend(ws(false, false, CONT, b, Some([0x11, 0x22, 0x33, 0x44])));
    link.request(&w);
    link.request(&ws(true, false, CONT, c, Some([0xde, 0xad, 0xbe, 0xef])));
    let mut w = ws(true, false, PONG, b"are you there", None);
    w.extend(server_msg(&mut sz, PROGRESS));
    w.extend(server_msg(&mut sz, CALL_OK));
    link.response(&w);
    let mut recs = link.recs;

    // Not MCP: JSON that is not JSON-RPC, uncompressed (no extension agreed); a JSON-RPC
    // request and response after it are not reported either.
    let mut other = Link::new(40_202);
    other.request(&upgrade(None));
    let mut head = switched(None);
    head.extend(ws(true, false, TEXT, br#"{"type":"welcome"}"#, None));
    other.response(&head);
    other.request(&ws(
        true,
        false,
        TEXT,
        br#"{"type":"chat","text":"hi"}"#,
        Some([1, 1, 1, 1]),
    ));
    other.request(&ws(true, false, TEXT, LIST.as_bytes(), Some([2, 2, 2, 2])));
    other.response(&ws(true, false, TEXT, LIST_OK.as_bytes(), None));
    let (ci, si) = other.inodes();
    recs.extend(other.recs);

    let (out, mut p) = run(&recs);
    let xs = exchanges(&out);
    let mut methods: Vec<&str> = xs.iter().map(|x| x.method.as_str()).collect();
    methods.sort_unstable();
    assert_eq!(methods, ["initialize", "ping", "tools/call"], "{out:#?}");
    for x in &xs {
        assert_eq!(x.transport, Transport::WebSocket, "{x:#?}");
        assert_eq!(x.status, Status::Ok, "{x:#?}");
        assert_eq!(x.network.http_version, Some(HttpVersion::Http11), "{x:#?}");
        assert_eq!(x.network.client_port, Some(40_201), "{x:#?}");
        assert_eq!(x.client.pid, Some(CLIENT));
        assert_eq!(x.server.pid, Some(SERVER));
        assert!(x.timing.client_duration_ms.is_some(), "{x:#?}");
        assert!(x.timing.server_duration_ms.is_some(), "{x:#?}");
    }
    let find = |m: &str| xs.iter().find(|x| x.method == m).expect(m);
    let ping = find("ping");
    assert_eq!(ping.requester, crate::signal::Role::Server);
    assert_eq!(ping.id, r#""srv-1""#);
    let init = find("initialize");
    assert_eq!(init.server.name.as_deref(), Some("s"));
    assert_eq!(init.requester, crate::signal::Role::Client);
    let call = find("tools/call");
    assert_eq!(call.tool.as_deref(), Some("echo"));
    // Sizes are the inflated messages'.
    assert_eq!(call.request_bytes, CALL.len() as u64);
    assert_eq!(call.response_bytes, Some(CALL_OK.len() as u64));
    assert_eq!(
        notifications(&out),
        ["notifications/initialized", "notifications/progress"]
    );
    let line = crate::output::jsonl::encode(&Signal::Exchange((*call).clone()));
    assert!(line.contains(r#""transport":"websocket""#), "{line}");
    // Both views of the second connection were rejected, for what their messages were.
    assert_eq!(
        p.conns.stats.rejected.get("json_not_jsonrpc"),
        Some(&2),
        "{:?}",
        p.conns.stats
    );
    assert_eq!(p.conns.stats.rejected.len(), 1, "{:?}", p.conns.stats);
    let mut rejects: Vec<(u32, i32, u64)> = p
        .take_rejects()
        .into_iter()
        .map(|r| (r.tgid, r.fd, r.inode))
        .collect();
    rejects.sort_unstable();
    assert_eq!(rejects, [(CLIENT, 5, ci), (SERVER, 7, si)]);
    assert_eq!(p.protocols.mcp.stats.http_errors, 0);
}

/// A header block for `list` from an encoder that encoded it once already, in bytes the
/// agent never saw: it names dynamic table entries the agent does not have.
fn warm_block(e: &mut Encoder<'_>, list: &[(&str, &str)]) -> Vec<u8> {
    let block = e.encode(list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    assert!(loona_hpack::Decoder::new().decode(&block).is_err());
    block
}

/// The bytes of an h2c connection older than the agent, from the agent's first record on:
/// (the client's first write, the server's answer on the old and the new stream, the
/// client's tool call, the server's event stream). Stream 7 was open before: the client
/// still sends its body, the server answers it. Stream 9 is a tools/list answered in JSON,
/// stream 11 a tools/call answered by an event stream (a progress notification, then the
/// result). Every header block names dynamic table entries the agent never saw.
fn h2_midway() -> [Vec<u8>; 4] {
    let mut ce = Encoder::new();
    let mut se = Encoder::new();
    let req = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "127.0.0.1:8000"),
        (":path", "/mcp"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-session-id", "S1"),
        ("mcp-protocol-version", "2025-06-18"),
    ];
    let json = [
        (":status", "200"),
        ("content-type", "application/json"),
        ("mcp-session-id", "S1"),
    ];
    let sse = [
        (":status", "200"),
        ("content-type", "text/event-stream"),
        ("mcp-session-id", "S1"),
    ];
    // What went by before the agent came.
    ce.encode(req.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    se.encode(json.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    se.encode(sse.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let mut first = frame(WINDOW_UPDATE, 0, 0, &65_535u32.to_be_bytes());
    first.extend(frame(
        DATA,
        0,
        7,
        br#"{"jsonrpc":"2.0","id":70,"method":"tools/call","#,
    ));
    first.extend(frame(HEADERS, END_HEADERS, 9, &warm_block(&mut ce, &req)));
    first.extend(frame(DATA, END_STREAM, 9, LIST.as_bytes()));
    let mut answer = frame(HEADERS, END_HEADERS, 7, &warm_block(&mut se, &json));
    answer.extend(frame(
        DATA,
        END_STREAM,
        7,
        br#"{"jsonrpc":"2.0","id":70,"result":{}}"#,
    ));
    answer.extend(frame(HEADERS, END_HEADERS, 9, &warm_block(&mut se, &json)));
    answer.extend(frame(DATA, END_STREAM, 9, LIST_OK.as_bytes()));
    let mut call = frame(HEADERS, END_HEADERS, 11, &warm_block(&mut ce, &req));
    let (a, b) = CALL.as_bytes().split_at(30);
    call.extend(frame(DATA, 0, 11, a));
    call.extend(frame(DATA, END_STREAM, 11, b));
    let mut events = frame(HEADERS, END_HEADERS, 11, &warm_block(&mut se, &sse));
    let text = format!("event: message\ndata: {PROGRESS}\n\nevent: message\ndata: {CALL_OK}\n\n");
    let (a, b) = text.as_bytes().split_at(50);
    events.extend(frame(DATA, 0, 11, a));
    events.extend(frame(DATA, END_STREAM, 11, b));
    [first, answer, call, events]
}

/// What a run of the connection joined mid-way must give: the tools/list and tools/call
/// exchanges, both views, over HTTP/2 with no HTTP status and no session id (the
/// connection is the session); the progress notification; the old stream skipped on each
/// end, counted with the connections and header blocks; nothing rejected.
fn check_midway(out: &[Signal], p: &Pipeline, what: &str) {
    let xs = exchanges(out);
    let mut methods: Vec<&str> = xs.iter().map(|x| x.method.as_str()).collect();
    methods.sort_unstable();
    assert_eq!(methods, ["tools/call", "tools/list"], "{what}: {out:#?}");
    for x in &xs {
        assert_eq!(x.transport, Transport::Http, "{what}: {x:#?}");
        assert_eq!(x.network.http_version, Some(HttpVersion::Http2), "{what}");
        assert_eq!(x.status, Status::Ok, "{what}: {x:#?}");
        assert_eq!(x.http_status, None, "{what}");
        assert_eq!(x.session, None, "{what}");
        assert_eq!(x.client.pid, Some(CLIENT), "{what}");
        assert_eq!(x.server.pid, Some(SERVER), "{what}");
        assert!(x.timing.client_duration_ms.is_some(), "{what}: {x:#?}");
        assert!(x.timing.server_duration_ms.is_some(), "{what}: {x:#?}");
    }
    let call = xs.iter().find(|x| x.method == "tools/call").expect("call");
    assert_eq!(call.tool.as_deref(), Some("echo"), "{what}");
    assert_eq!(call.response_bytes, Some(CALL_OK.len() as u64), "{what}");
    assert_eq!(notifications(out), ["notifications/progress"], "{what}");
    let m = p.protocols.http.http2_midstream;
    assert_eq!(
        (m.connections, m.streams_skipped, m.header_blocks_undecoded),
        (2, 2, 10),
        "{what}"
    );
    assert!(
        p.conns.stats.rejected.is_empty(),
        "{what}: {:?}",
        p.conns.stats
    );
    assert_eq!(p.protocols.mcp.stats.http_errors, 0, "{what}");
    assert_eq!(p.tracker.stats.orphan_responses, 0, "{what}");
}

/// MCP over an h2c connection older than the agent, both ends watched: framed without its
/// headers, one correlated exchange per request (a JSON and an event-stream answer), the
/// stream already open skipped and counted; the first records cut at every boundary past
/// one frame header (a shorter first record cannot be told from other binary bytes), the
/// tool call and the event stream at every boundary.
#[test]
fn mcp_over_h2c_joined_mid_way() {
    let [first, answer, call, events] = h2_midway();
    let run_with = |pieces: [&[&[u8]]; 4]| {
        let mut link = Link::new(40_111);
        for (i, piece) in pieces.iter().enumerate() {
            for b in *piece {
                if i % 2 == 0 {
                    link.request(b);
                } else {
                    link.response(b);
                }
            }
        }
        run(&link.recs)
    };
    let (out, p) = run_with([&[&first], &[&answer], &[&call], &[&events]]);
    check_midway(&out, &p, "whole");
    let stop = p.summary();
    assert_eq!(stop["http2_midstream"]["streams_skipped"], 2, "{stop}");
    let call_x = exchanges(&out)
        .into_iter()
        .find(|x| x.method == "tools/call")
        .expect("call");
    let line = crate::output::jsonl::encode(&Signal::Exchange(call_x.clone()));
    assert!(line.contains(r#""http_version":"2""#), "{line}");
    assert!(line.contains(r#""transport":"http""#), "{line}");
    for cut in 9..first.len() {
        let (a, b) = first.split_at(cut);
        let (out, p) = run_with([&[a, b], &[&answer], &[&call], &[&events]]);
        check_midway(&out, &p, &format!("first cut at {cut}"));
    }
    for cut in 1..call.len() {
        let (a, b) = call.split_at(cut);
        let (out, p) = run_with([&[&first], &[&answer], &[a, b], &[&events]]);
        check_midway(&out, &p, &format!("call cut at {cut}"));
    }
    for cut in 1..events.len() {
        let (a, b) = events.split_at(cut);
        let (out, p) = run_with([&[&first], &[&answer], &[&call], &[a, b]]);
        check_midway(&out, &p, &format!("events cut at {cut}"));
    }
}

/// Bytes that start like HTTP/2 frames but do not go on like them are not taken for a
/// connection joined mid-way: each end is refused as binary, nothing is counted as
/// HTTP/2, nothing reported.
#[test]
fn almost_frames_are_not_http2() {
    let mut recs = Vec::new();
    let mut almost = [
        // A DATA frame, then a header no frame has (a length past the bytes).
        [
            frame(DATA, 0, 1, b"{}"),
            b"HTTP/1.1 200 OK\r\n\r\n".to_vec(),
        ]
        .concat(),
        // A PING on a stream.
        frame(6, 0, 1, &[0; 8]),
        // A frame of a type HTTP/2 does not define first.
        frame(0x2a, 0, 1, LIST.as_bytes()),
        // A long frame cut short, as a TLS record's header reads.
        frame(DATA, 0, 1, &[b'x'; 20_000])[..100].to_vec(),
    ];
    almost[0].extend_from_slice(LIST.as_bytes());
    for (i, bytes) in almost.iter().enumerate() {
        let mut link = Link::new(40_120 + i as u16);
        link.request(bytes);
        link.response(&frame(DATA, END_STREAM, 1, LIST_OK.as_bytes()));
        recs.extend(link.recs);
    }
    let (out, p) = run(&recs);
    assert!(exchanges(&out).is_empty(), "{out:#?}");
    assert!(p.protocols.http.http2_midstream.is_empty());
    assert_eq!(
        p.conns.stats.rejected.get("binary"),
        Some(&(2 * almost.len() as u64)),
        "{:?}",
        p.conns.stats
    );
}
