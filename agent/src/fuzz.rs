//! Fuzz entry points. Each takes arbitrary bytes, drives one stage of the pipeline, and panics
//! only when an invariant breaks: a crash, a frame or event that depends on how the bytes were
//! split into syscalls, a buffer past its bound, or an exchange made up from halves that never
//! were one.
//!
//! `agent/fuzz` (cargo fuzz) calls these, and `agent/tests/fuzz_regressions.rs` replays every
//! input that ever broke one, so a fixed crash stays fixed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use mcptap_abi::{
    DIR_IN, DIR_OUT, EventHeader, FD_PIPE, FLAG_LOST_BEFORE, RECORD_DATA, RECORD_EXIT,
};

use crate::capture::host::FixedHost;
use crate::capture::{Dir, encode_record, recording as record};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::signal::{Signal, Status};
use crate::wire::http::Role;
use crate::wire::{http1 as http, http2, ndjson, sse, websocket};

/// Chunk sizes from a seed: a small generator, so the same input always splits the same way.
struct Chunks(u32);

impl Chunks {
    fn next(&mut self, max: usize) -> usize {
        self.0 = self.0.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        1 + (self.0 >> 16) as usize % max.max(1)
    }

    /// `data` in pieces of 1..=`max` bytes.
    fn split<'a>(&mut self, data: &'a [u8], max: usize) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.next(max).min(rest.len());
            out.push(&rest[..n]);
            rest = &rest[n..];
        }
        out
    }
}

/// What the ndjson framer must hand out for `input`, worked out from the whole text at once.
fn ndjson_model(input: &[u8], max_line: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    // The last piece has no newline yet: it is pending, not a frame.
    lines.pop();
    for line in lines {
        if line.len() > max_line {
            let prefix = &line[..line.len().min(ndjson::OVERSIZE_PREFIX)];
            out.push(format!("oversize {} {:?}", line.len(), prefix));
        } else {
            let t = line.strip_suffix(b"\r").unwrap_or(line);
            if !t.is_empty() {
                out.push(format!("frame {t:?}"));
            }
        }
    }
    out
}

/// Newline framing: the same frames however the bytes are split, never a buffer past the
/// limit, and times in order.
pub fn ndjson(data: &[u8]) {
    let [a, b, input @ ..] = data else {
        return;
    };
    let max_line = 1 + (*a as usize) * 4;
    let want = ndjson_model(input, max_line);
    for (seed, max_chunk) in [(0, input.len()), (*b as u32, 1 + *b as usize % 64)] {
        let mut framer = ndjson::Framer::new(max_line);
        let mut got = Vec::new();
        for (i, piece) in Chunks(seed).split(input, max_chunk).into_iter().enumerate() {
            let (enter, exit) = (i as u64 * 10, i as u64 * 10 + 5);
            framer.push(piece, enter, exit, |o| match o {
                ndjson::Output::Frame(f) => {
                    assert!(f.first_enter_ns <= f.last_exit_ns);
                    assert!(!f.bytes.contains(&b'\n'));
                    got.push(format!("frame {:?}", f.bytes));
                }
                ndjson::Output::Oversize { len, prefix, .. } => {
                    got.push(format!("oversize {len} {prefix:?}"));
                }
            });
            assert!(
                framer.pending_bytes().len() <= max_line,
                "buffer past the limit"
            );
        }
        assert_eq!(got, want, "frames depend on how the bytes were split");
        // A hole then more bytes: never a panic, and the partial line is dropped.
        framer.gap();
        framer.push(input, 0, 1, |_| {});
        framer.finish();
    }
}

fn sse_events(p: &mut sse::Parser, pieces: &[&[u8]]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let (enter, exit) = (i as u64 * 10, i as u64 * 10 + 5);
        p.push(piece, enter, exit, |o| match o {
            sse::Output::Event(e) => {
                assert!(e.first_enter_ns <= e.last_exit_ns);
                out.push(format!("event {:?} {:?} {:?}", e.event, e.id, e.data));
            }
            sse::Output::Oversize { .. } => out.push("oversize".into()),
        });
    }
    out
}

/// Server-sent events: the same events however the bytes are split.
pub fn sse(data: &[u8]) {
    let [a, b, input @ ..] = data else {
        return;
    };
    let max = 1 + (*a as usize) * 8;
    let whole = sse_events(&mut sse::Parser::new(max), &[input]);
    let pieces = Chunks(*b as u32).split(input, 1 + *b as usize % 32);
    let split = sse_events(&mut sse::Parser::new(max), &pieces);
    assert_eq!(whole, split, "events depend on how the bytes were split");
}

/// What an HTTP event says, without the times (which depend on the split).
fn describe(e: &http::ConnEvent<'_>) -> String {
    fn head(h: &http::Head) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {:?}",
            h.fields, h.method, h.target, h.status, h.headers
        )
    }
    match e {
        http::ConnEvent::RequestHead(t) => format!("req {} {}", t.seq, head(&t.request)),
        http::ConnEvent::RequestBody { txn, body, .. } => format!("reqbody {} {body:?}", txn.seq),
        http::ConnEvent::ResponseHead(t) => {
            format!(
                "resp {} {}",
                t.seq,
                t.response.as_ref().map(head).unwrap_or_default()
            )
        }
        http::ConnEvent::ResponseBody { txn, body, .. } => {
            format!("respbody {} {body:?}", txn.seq)
        }
        http::ConnEvent::Sse { txn, event } => format!(
            "sse {} {:?} {:?} {:?}",
            txn.seq, event.event, event.id, event.data
        ),
        http::ConnEvent::Done(t) => format!("done {}", t.seq),
        http::ConnEvent::Oversize { txn, len } => format!("oversize {} {len}", txn.seq),
        http::ConnEvent::Error(e) => format!("error {e}"),
        http::ConnEvent::Role(r) => format!("role {r:?}"),
    }
}

fn http_events(
    requests: &[&[u8]],
    responses: &[&[u8]],
    first: &[u8],
    max_body: usize,
) -> Option<Vec<String>> {
    let mut conn = http::Conn::detect(Dir::Out, first, max_body)?;
    let mut out = Vec::new();
    let mut t = 0;
    for (dir, pieces) in [(Dir::Out, requests), (Dir::In, responses)] {
        for piece in pieces {
            t += 10;
            conn.push(dir, piece, t, t + 5, &mut |e| {
                if let http::ConnEvent::RequestBody { body, .. }
                | http::ConnEvent::ResponseBody { body, .. } = &e
                {
                    assert!(body.len() <= max_body, "body past the limit");
                }
                out.push(describe(&e));
            });
        }
    }
    conn.finish(t + 10, &mut |e| out.push(describe(&e)));
    Some(out)
}

/// HTTP/1.1 (heads, Content-Length and chunked bodies, event streams) as a client sees it: the
/// same transactions however the bytes are split, and bodies within the limit.
pub fn http(data: &[u8]) {
    let [a, b, l0, l1, rest @ ..] = data else {
        return;
    };
    let split_at = (u16::from_le_bytes([*l0, *l1]) as usize).min(rest.len());
    let (requests, responses) = rest.split_at(split_at);
    let max_body = 16 + (*a as usize) * 64;
    let whole = http_events(&[requests], &[responses], requests, max_body);
    let mut chunks = Chunks(*b as u32);
    let max_chunk = 1 + *b as usize % 48;
    let req = chunks.split(requests, max_chunk);
    let resp = chunks.split(responses, max_chunk);
    let split = http_events(&req, &resp, requests, max_body);
    assert_eq!(
        whole, split,
        "transactions depend on how the bytes were split"
    );
}

/// What one run of an HTTP/2 connection said, and the transactions left to `finish`.
type H2Run = (Vec<String>, Vec<u64>);

/// How a fuzzed HTTP/2 connection is seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// From its start: the client's preface first.
    Start,
    /// Joined mid-way: each direction from a frame boundary, no header block decoded.
    Joined,
}

/// What must hold of the events of one HTTP/2 run, whatever the bytes: one `Error` at most
/// and nothing after it; a transaction's events between its `RequestHead` and its `Done`, a
/// response's parts after its head; bodies within the limit. Joined mid-way, the role comes
/// once, before any transaction (which side it takes for the client goes in the events, so
/// that both ends must agree); no head is decoded.
struct H2Check {
    seen: Seen,
    role: Role,
    max_body: usize,
    /// Each open transaction, and whether its response head came.
    open: BTreeMap<u64, bool>,
    broken: bool,
    role_told: bool,
    out: Vec<String>,
}

impl H2Check {
    fn event(&mut self, e: &crate::wire::http::ConnEvent<'_>) {
        use crate::wire::http::ConnEvent;
        assert!(!self.broken, "an event after the connection broke: {e:?}");
        if let ConnEvent::Role(r) = e {
            assert_eq!(self.seen, Seen::Joined, "a role told that was known");
            assert!(!self.role_told, "the role told twice");
            assert!(self.open.is_empty(), "the role told after a transaction");
            self.role_told = true;
            // Arbitrary bytes may say the side written as the server's is the client: what
            // must hold is that whichever end watches, the same side is taken for the client.
            let side = if *r == self.role { "client" } else { "server" };
            self.out.push(format!("the {side}'s side is the client"));
            return;
        }
        if let Some(txn) = e.txn() {
            assert!(
                self.seen == Seen::Start || self.role_told,
                "a transaction before the role"
            );
            let heads = [Some(&txn.request), txn.response.as_ref()];
            let decoded = heads.into_iter().flatten().any(|h| h.decoded());
            assert!(
                self.seen == Seen::Start || !decoded,
                "a head decoded mid-way"
            );
        }
        self.order(e);
        self.sizes(e);
        self.out.push(describe(e));
    }

    fn order(&mut self, e: &crate::wire::http::ConnEvent<'_>) {
        use crate::wire::http::ConnEvent;
        let open = &mut self.open;
        match e {
            ConnEvent::RequestHead(txn) => {
                assert!(open.insert(txn.seq, false).is_none(), "stream reopened");
            }
            ConnEvent::Error(_) => {
                self.broken = true;
                open.clear();
            }
            ConnEvent::ResponseHead(txn) => {
                let head = open
                    .get_mut(&txn.seq)
                    .expect("a response to an open stream");
                assert!(!*head, "two response heads");
                *head = true;
            }
            ConnEvent::Done(txn) => {
                assert!(open.remove(&txn.seq).is_some(), "done twice");
            }
            ConnEvent::RequestBody { txn, .. } | ConnEvent::Oversize { txn, .. } => {
                assert!(open.contains_key(&txn.seq), "an event of no open stream");
            }
            ConnEvent::ResponseBody { txn, .. } | ConnEvent::Sse { txn, .. } => {
                assert_eq!(open.get(&txn.seq), Some(&true), "a body before its head");
            }
            ConnEvent::Role(_) => {}
        }
    }

    fn sizes(&self, e: &crate::wire::http::ConnEvent<'_>) {
        use crate::wire::http::ConnEvent;
        match e {
            ConnEvent::RequestBody {
                body,
                first_enter_ns,
                last_exit_ns,
                ..
            }
            | ConnEvent::ResponseBody {
                body,
                first_enter_ns,
                last_exit_ns,
                ..
            } => {
                assert!(body.len() <= self.max_body, "body past the limit");
                assert!(first_enter_ns <= last_exit_ns);
            }
            ConnEvent::Sse { event, .. } => {
                assert!(event.data.len() <= self.max_body, "event past the limit");
                assert!(event.first_enter_ns <= event.last_exit_ns);
            }
            ConnEvent::Oversize { len, .. } => assert!(*len >= self.max_body as u64),
            _ => {}
        }
    }
}

/// The bytes of an HTTP/2 connection (`client`, `server`), pushed in `pushes` (`true`: the
/// client's bytes), into a connection seen by a process at `role`, from its start (the
/// client's bytes then begin with the preface) or joined mid-way. Checks [`H2Check`], never
/// more held than was given, and that `finish` returns the transactions still open; what
/// was counted as unread ends the events.
fn http2_events(
    (client, server): (&[u8], &[u8]),
    pushes: &[(bool, usize)],
    role: Role,
    max_body: usize,
    seen: Seen,
) -> H2Run {
    use crate::wire::http::HttpWire;
    let (client_dir, server_dir) = match role {
        Role::Client => (Dir::Out, Dir::In),
        Role::Server => (Dir::In, Dir::Out),
    };
    let mut conn = match seen {
        Seen::Start => {
            let c = http2::Conn::detect(client_dir, client, max_body).expect("a preface");
            assert_eq!(c.role(), Some(role));
            c
        }
        Seen::Joined => {
            let first = if pushes.first().is_some_and(|p| p.0) {
                client
            } else {
                server
            };
            http2::Conn::joined(first, max_body).expect("frames, as the caller checked")
        }
    };
    let mut check = H2Check {
        seen,
        role,
        max_body,
        open: BTreeMap::new(),
        broken: false,
        role_told: false,
        out: Vec::new(),
    };
    let (mut at, mut pushed, mut t) = ([0usize; 2], 0usize, 0u64);
    for &(from_client, n) in pushes {
        let (side, dir, bytes) = if from_client {
            (0, client_dir, client)
        } else {
            (1, server_dir, server)
        };
        let piece = &bytes[at[side]..at[side] + n];
        at[side] += n;
        pushed += n;
        t += 10;
        conn.push(dir, piece, t, t + 5, &mut |e| check.event(&e));
        assert!(
            conn.buffered() <= pushed,
            "held {} of {pushed} bytes given",
            conn.buffered()
        );
    }
    let left: Vec<u64> = conn
        .finish(t + 10, &mut |e| panic!("finish said {e:?}"))
        .iter()
        .map(|txn| txn.seq)
        .collect();
    let still: Vec<u64> = check.open.keys().copied().collect();
    assert_eq!(left, still, "finish returns the streams still open");
    let unread = conn.take_midstream();
    assert_eq!(unread.connections, u64::from(seen == Seen::Joined));
    check.out.push(format!("{unread:?}"));
    (check.out, left)
}

/// `(from client, length)` pushes: pieces of 1..=`max` bytes, the client's and the server's
/// in turn, the rest of one side once the other ran out.
fn alternate(chunks: &mut Chunks, client: usize, server: usize, max: usize) -> Vec<(bool, usize)> {
    let mut out = Vec::new();
    let mut left = [client, server];
    let mut side = 0;
    while left != [0, 0] {
        if left[side] > 0 {
            let n = chunks.next(max).min(left[side]);
            left[side] -= n;
            out.push((side == 0, n));
        }
        side ^= 1;
    }
    out
}

/// Where the `n`th frame of `b` starts, reading frame headers from its first byte (its end,
/// when it has fewer).
fn frame_at(b: &[u8], n: usize) -> usize {
    let mut at = 0;
    for _ in 0..n {
        let Some(h) = b.get(at..at + 9) else {
            break;
        };
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        at = (at + 9 + len).min(b.len());
    }
    at
}

/// One connection's bytes pushed as the pieces `a` picks, and again each piece cut finer:
/// the same events, and the same transactions left over, whichever end watches and however
/// the pushes are cut.
fn http2_both_ends(sides: (&[u8], &[u8]), a: u8, max_body: usize, seen: Seen) {
    let pushes = alternate(
        &mut Chunks(u32::from(a)),
        sides.0.len(),
        sides.1.len(),
        1 + (a as usize) * 16,
    );
    let mut finer = Vec::new();
    let mut chunks = Chunks(u32::from(a) ^ 0x5a5a);
    for &(side, n) in &pushes {
        let mut left = n;
        while left > 0 {
            let k = chunks.next(1 + a as usize % 7).min(left);
            finer.push((side, k));
            left -= k;
        }
    }
    let want = http2_events(sides, &pushes, Role::Client, max_body, seen);
    for (cut, role) in [
        (&pushes, Role::Server),
        (&finer, Role::Client),
        (&finer, Role::Server),
    ] {
        let got = http2_events(sides, cut, role, max_body, seen);
        assert_eq!(
            got, want,
            "events depend on the watching end or on how the bytes were split"
        );
    }
}

/// HTTP/2 (frames, HPACK, streams as transactions) as both ends see it. The first byte seeds
/// how the bytes are cut and sets the body limit; the next two say where the client's bytes
/// (after the preface, which is prepended) end and the server's begin. The two directions
/// are pushed in turn; the same events, and the same transactions left over, whichever end
/// watches and however each push is cut further. Then the same connection joined mid-way:
/// each direction from a frame boundary past its first few frames (as many as the first
/// byte's top bits say), when those bytes read as frames.
pub fn http2(data: &[u8]) {
    let [a, l0, l1, rest @ ..] = data else {
        return;
    };
    let split_at = (u16::from_le_bytes([*l0, *l1]) as usize).min(rest.len());
    let (c, server) = rest.split_at(split_at);
    let client = [http2::frames::PREFACE.as_slice(), c].concat();
    let max_body = 32 + (*a as usize % 16) * 128;
    http2_both_ends((&client, server), *a, max_body, Seen::Start);
    let skip = usize::from(*a >> 5);
    let (c, s) = (&c[frame_at(c, skip)..], &server[frame_at(server, skip)..]);
    let first = if c.is_empty() { s } else { c };
    if http2::Conn::joined(first, max_body).is_some() {
        http2_both_ends((c, s), *a, max_body, Seen::Joined);
    }
}

/// What a WebSocket reader made of `pieces`, and how it ended. A message within the limit,
/// an oversize one past it, never more held than a message and a frame header (and the
/// inflater's state), times in order; a broken reader stays broken and says nothing more.
fn websocket_messages(
    masked: bool,
    deflate: websocket::Deflate,
    max: usize,
    pieces: &[&[u8]],
) -> (Vec<String>, Result<(), &'static str>) {
    let mut r = websocket::Reader::new(masked, deflate, max);
    let mut out = Vec::new();
    let mut res = Ok(());
    for (i, piece) in pieces.iter().enumerate() {
        let (enter, exit) = (i as u64 * 10, i as u64 * 10 + 5);
        res = r.push(piece, enter, exit, &mut |m| {
            out.push(match m {
                websocket::Message::Text {
                    data,
                    first_enter_ns,
                    last_exit_ns,
                }
                | websocket::Message::Binary {
                    data,
                    first_enter_ns,
                    last_exit_ns,
                } => {
                    assert!(data.len() <= max, "message past the limit");
                    assert!(first_enter_ns <= last_exit_ns);
                    let text = matches!(m, websocket::Message::Text { .. });
                    format!("{} {data:?}", if text { "text" } else { "binary" })
                }
                websocket::Message::Oversize { len, .. } => {
                    assert!(len > max as u64, "an oversize message within the limit");
                    if deflate.on && deflate.no_context_takeover {
                        // The rest of it is skipped: its length is a lower bound, counted
                        // as far as the inflater got, which depends on the split.
                        "oversize".into()
                    } else {
                        format!("oversize {len}")
                    }
                }
                websocket::Message::Close { code, .. } => format!("close {code:?}"),
                websocket::Message::Control { opcode, .. } => format!("control {opcode}"),
            })
        });
        assert!(
            r.buffered() <= max + 15 + 64 * 1024,
            "held {} bytes",
            r.buffered()
        );
        if res.is_err() {
            let again = r.push(piece, exit, exit, &mut |m| {
                panic!("a broken reader said {m:?}")
            });
            assert_eq!(again, res);
            break;
        }
    }
    (out, res)
}

/// WebSocket frames of one direction. The first byte chooses permessage-deflate (bit 0),
/// without context takeover (bit 1), masking (bit 2) and the message limit (the rest); the
/// second seeds the split. The same messages, and the same end, however the bytes are split
/// (but for corrupt compressed bytes in a message skipped past the limit, see below).
pub fn websocket(data: &[u8]) {
    let [a, b, input @ ..] = data else {
        return;
    };
    let deflate = websocket::Deflate {
        on: a & 1 != 0,
        no_context_takeover: a & 2 != 0,
        window_bits: 15,
    };
    let masked = a & 4 != 0;
    let max = 16 + (*a as usize >> 3) * 512;
    let whole = websocket_messages(masked, deflate, max, &[input]);
    let pieces = Chunks(u32::from(*b)).split(input, 1 + *b as usize % 32);
    let split = websocket_messages(masked, deflate, max, &pieces);
    if whole == split {
        return;
    }
    // Without context takeover, the rest of a compressed message past the limit is skipped,
    // not inflated: corrupt bytes there are found only if the inflater already ran over them
    // (it decodes ahead of the output it is given room for, as far as its input goes, so the
    // more bytes a push brought, the further). The run that found them ends there; up to
    // the message it was in, both runs said the same, and the other dropped that message
    // (after any control frames sent between its fragments).
    let inflate_error =
        |r: &(Vec<String>, Result<(), &str>)| r.1.is_err_and(|e| e.contains("inflate"));
    let (short, long) = match (inflate_error(&whole), inflate_error(&split)) {
        (true, false) => (&whole, &split),
        (false, true) => (&split, &whole),
        _ if split.0.len() < whole.0.len() => (&split, &whole),
        _ => (&whole, &split),
    };
    assert!(
        deflate.on
            && deflate.no_context_takeover
            && inflate_error(short)
            && long.0.starts_with(&short.0)
            && long.0[short.0.len()..]
                .iter()
                .find(|m| !m.starts_with("control") && !m.starts_with("close"))
                .is_none_or(|m| m == "oversize"),
        "messages depend on how the bytes were split:\n{whole:?}\n{split:?}"
    );
}

const CLIENT: u32 = 100;
const SERVER: u32 = 200;
const REQ_PIPE: u64 = 1;
const RESP_PIPE: u64 = 2;

/// The JSON-RPC ids of the requests and the responses that whole lines of the streams carry:
/// what the pipeline may report. Each view of a pipe is its own stream, as in the pipeline; a
/// line may span syscalls, and a loss drops the line in progress.
#[derive(Default)]
struct IdModel {
    /// The unfinished line of each view: client out, server in, server out, client in.
    pending: [Vec<u8>; 4],
    requests: BTreeSet<String>,
    responses: BTreeSet<String>,
}

impl IdModel {
    fn push(&mut self, view: usize, bytes: &[u8], lost_before: bool) {
        if lost_before {
            self.pending[view].clear();
        }
        self.pending[view].extend_from_slice(bytes);
        let buf = std::mem::take(&mut self.pending[view]);
        let mut lines: Vec<&[u8]> = buf.split(|b| *b == b'\n').collect();
        let rest = lines.pop().unwrap_or_default().to_vec();
        for line in lines {
            self.line(line);
        }
        self.pending[view] = rest;
    }

    fn line(&mut self, line: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return;
        };
        for m in v
            .as_array()
            .map_or_else(|| vec![&v], |a| a.iter().collect())
        {
            let Some(id) = m.get("id") else { continue };
            let id = serde_json::to_string(id).unwrap_or_default();
            if m.get("method").is_some() {
                self.requests.insert(id);
            } else {
                self.responses.insert(id);
            }
        }
    }
}

/// One op of the [`mcp`] script.
enum McpOp<'a> {
    /// A process moved bytes through its end of a pipe.
    Move(PipeMove<'a>),
    /// The server exits.
    ServerExit,
    /// Time passes.
    Wait,
    /// A kind no op has: only the clock moves.
    Other,
}

/// Who moved an op's bytes, through which of its file descriptors and which pipe.
struct PipeMove<'a> {
    tgid: u32,
    fd: i32,
    dir: u8,
    inode: u64,
    /// Which view of a pipe the bytes belong to, as [`IdModel::pending`] numbers them.
    view: usize,
    /// Bytes were lost before these.
    lost_before: bool,
    bytes: &'a [u8],
}

impl<'a> McpOp<'a> {
    /// An op from its bytes (kind first); `None` for an empty op, which is skipped.
    fn decode(op: &'a [u8]) -> Option<Self> {
        let (&kind, bytes) = op.split_first()?;
        let (tgid, fd, dir, inode, view) = match kind {
            b'0' | b'4' => (CLIENT, 10, DIR_OUT, REQ_PIPE, 0),
            b'1' => (SERVER, 0, DIR_IN, REQ_PIPE, 1),
            b'2' => (SERVER, 1, DIR_OUT, RESP_PIPE, 2),
            b'3' => (CLIENT, 11, DIR_IN, RESP_PIPE, 3),
            b'5' => return Some(McpOp::ServerExit),
            b'6' => return Some(McpOp::Wait),
            _ => return Some(McpOp::Other),
        };
        Some(McpOp::Move(PipeMove {
            tgid,
            fd,
            dir,
            inode,
            view,
            lost_before: kind == b'4',
            bytes,
        }))
    }
}

impl PipeMove<'_> {
    /// The data record the kernel side would send for this move at `now`.
    fn header(&self, now: u64) -> EventHeader {
        EventHeader {
            record: RECORD_DATA,
            dir: self.dir,
            fd_kind: FD_PIPE,
            flags: if self.lost_before {
                FLAG_LOST_BEFORE
            } else {
                0
            },
            tgid: self.tgid,
            tid: self.tgid,
            fd: self.fd,
            ts_enter_ns: now,
            ts_exit_ns: now + 1_000,
            inode: self.inode,
            total: self.bytes.len() as u64,
            ..EventHeader::default()
        }
    }
}

/// The record of the server's exit at `now`.
fn server_exit(now: u64) -> EventHeader {
    EventHeader {
        record: RECORD_EXIT,
        tgid: SERVER,
        tid: SERVER,
        fd: -1,
        ts_enter_ns: now,
        ts_exit_ns: now,
        ..EventHeader::default()
    }
}

/// MCP over stdio, end to end through the pipeline: a script of syscalls between a client and
/// its server. Ops are separated by 0x1e; an op's first byte says who moved its bytes:
/// `0` client writes a request, `1` server reads it, `2` server writes a response, `3` client
/// reads it, `4` the same as `0` with bytes lost before it, `5` the server exits, `6` time
/// passes. Never a panic, and never an exchange for an id no request carried, or a completed
/// one for an id no response carried.
pub fn mcp(data: &[u8]) {
    let mut p = Pipeline::new(PipelineConfig {
        max_message_bytes: 4096,
        ..Default::default()
    });
    let mut host = FixedHost::stdio_pair(CLIENT, SERVER, REQ_PIPE, RESP_PIPE);
    let mut model = IdModel::default();
    let mut now = 1_000_000u64;
    let mut signals = Vec::new();
    for op in data.split(|b| *b == 0x1e) {
        let Some(op) = McpOp::decode(op) else {
            continue;
        };
        now += 10_000;
        match op {
            McpOp::Move(m) => {
                model.push(m.view, m.bytes, m.lost_before);
                p.ingest(&mut host, &encode_record(&m.header(now), m.bytes));
                p.take_rejects();
                signals.extend(p.drain_signals());
            }
            McpOp::ServerExit => {
                // The server's streams end with it: their unfinished lines are gone.
                model.pending[1].clear();
                model.pending[2].clear();
                p.ingest(&mut host, &encode_record(&server_exit(now), &[]));
            }
            McpOp::Wait => {
                now += 1_000_000_000;
                p.tick(now);
                signals.extend(p.drain_signals());
            }
            McpOp::Other => {}
        }
    }
    p.finish(now + 10_000_000_000, 1_000_000_000);
    signals.extend(p.drain_signals());
    check_exchanges(&signals, &model);
}

/// Every exchange is for an id some request carried, and every completed one for an id some
/// response carried.
fn check_exchanges(signals: &[Signal], model: &IdModel) {
    for s in signals {
        if let Signal::Exchange(x) = s {
            assert!(
                model.requests.contains(&x.id),
                "exchange for id {} that no request carried: {x:#?}",
                x.id
            );
            if matches!(x.status, Status::Ok | Status::Error | Status::ToolError) {
                assert!(
                    model.responses.contains(&x.id),
                    "completed exchange for id {} that no response carried: {x:#?}",
                    x.id
                );
            }
        }
    }
}

/// One frame read as a JSON-RPC message: whatever the one-scan reading accepts, serde_json
/// reads into the same message, payloads kept or not (`mcp::message`'s fast path may never
/// change a verdict or a value, only its cost).
pub fn message(data: &[u8]) {
    let _answered = crate::mcp::message::check_scan(data);
}

/// The `--record` file format: any bytes are read without a panic, and whatever frames they
/// hold replay through the pipeline.
pub fn record(data: &[u8]) {
    let Ok(mut reader) = record::Reader::new(Cursor::new(data)) else {
        return;
    };
    let mut host = FixedHost::default();
    let mut raws = Vec::new();
    while let Ok(Some(frame)) = reader.next_frame() {
        match frame {
            record::Frame::Record(raw) => raws.push(raw),
            record::Frame::Process(info) => {
                host.processes.entry(info.pid).or_insert(info);
            }
            record::Frame::Holders(h) => {
                host.holders.entry((h.kind, h.inode)).or_insert(h.holders);
            }
            record::Frame::Clock(_) | record::Frame::Counters(_) => {}
        }
    }
    let mut p = Pipeline::new(PipelineConfig::default());
    for raw in &raws {
        p.ingest(&mut host, raw);
        p.take_rejects();
        p.drain_signals();
    }
    p.finish(u64::MAX / 2, 1_000_000_000);
    p.drain_signals();
}

/// The facts a model API reader reports stay within their bounds: stop reasons and error
/// codes cut to 64 bytes, payload text only with `--payloads` and cut.
fn check_llm_response(r: &crate::llm::Response, payloads: bool) {
    use crate::llm::MAX_PAYLOAD_TEXT;
    assert!(r.finish_reason.as_ref().is_none_or(|f| f.len() <= 64));
    assert!(
        r.error
            .as_ref()
            .and_then(|e| e.code.as_ref())
            .is_none_or(|c| c.len() <= 64)
    );
    assert!(
        r.completion
            .as_ref()
            .is_none_or(|c| payloads && c.len() <= MAX_PAYLOAD_TEXT)
    );
    assert!(
        r.tool_calls
            .iter()
            .all(|c| payloads || c.arguments.is_none())
    );
}

/// A streamed reply whose body arrives in `pieces`, through the SSE parser as the HTTP binding
/// feeds it; the accumulator never holds more than it was given.
fn llm_stream(
    api: &dyn crate::llm::api::ModelApi,
    opts: crate::llm::api::Options,
    pieces: &[&[u8]],
) -> crate::llm::Response {
    let mut parser = sse::Parser::new(64 * 1024);
    let mut acc = api.stream(opts);
    let mut fed = 0;
    for (i, piece) in pieces.iter().enumerate() {
        let (enter, exit) = (i as u64 * 10, i as u64 * 10 + 5);
        parser.push(piece, enter, exit, |o| {
            if let sse::Output::Event(e) = o {
                fed += e.data.len();
                acc.event(e.event, e.data);
                assert!(acc.held() <= fed, "held more than it was given");
            }
        });
    }
    let r = acc.finish();
    check_llm_response(&r, opts.payloads);
    r
}

/// The model API readers. The first byte picks the API, `--payloads` (bit 2) and the reply's
/// status (bits 3..); the second seeds the split; the rest is a request body, a whole reply
/// body and an event stream, separated by 0x1e. Never a panic, facts within their bounds, and
/// the same streamed reply however its bytes are split.
pub fn llm(data: &[u8]) {
    use crate::llm::api::{ModelApi, Options, anthropic, gemini, openai_chat, openai_responses};
    let [pick, seed, rest @ ..] = data else {
        return;
    };
    let apis: [(&dyn ModelApi, &str); 4] = [
        (&anthropic::API, "/v1/messages"),
        (&openai_chat::API, "/v1/chat/completions"),
        (&openai_responses::API, "/v1/responses"),
        (
            &gemini::API,
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        ),
    ];
    let (api, path) = apis[*pick as usize % 4];
    let opts = Options {
        payloads: pick & 4 != 0,
    };
    let status = [200, 400, 429, 500, 529][(*pick as usize >> 3) % 5];
    let mut parts = rest.splitn(3, |b| *b == 0x1e);
    let (request, reply, stream) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if let Ok(r) = api.request(path, request, opts) {
        assert!(r.results.iter().all(|c| c.message < r.messages.len()));
        assert!(
            r.prompt
                .as_ref()
                .is_none_or(|p| opts.payloads && p.len() <= crate::llm::MAX_PAYLOAD_TEXT)
        );
    }
    let whole = api.response(status, reply, opts);
    check_llm_response(&whole, opts.payloads);
    assert!(
        status == 200 || whole.error.is_some(),
        "an error status is an error"
    );
    let once = llm_stream(api, opts, &[stream]);
    let pieces = Chunks(*seed as u32).split(stream, 1 + *seed as usize % 64);
    let split = llm_stream(api, opts, &pieces);
    assert_eq!(once, split, "the reply depends on how the bytes were split");
}
