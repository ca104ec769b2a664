//! What every HTTP version delivers the same way: heads, transactions and their events, so
//! that the application protocols above read HTTP/1.1 ([`super::http1`]) and HTTP/2
//! ([`super::http2`]) alike through [`HttpWire`].

use super::sse;
use crate::capture::Dir;

pub use crate::signal::HttpVersion as Version;

/// One process's view of one HTTP connection of any version: both directions, paired into
/// transactions.
pub trait HttpWire: std::fmt::Debug {
    /// The version it frames.
    fn version(&self) -> Version;
    /// This process's role; `None` while it is not known yet (an HTTP/2 connection first seen
    /// mid-way, until a header block shows which end sent it). No transaction's event comes
    /// before it is known: a [`ConnEvent::Role`] says when it becomes known during a push.
    fn role(&self) -> Option<Role>;
    /// Bytes held for messages not complete yet.
    fn buffered(&self) -> usize;
    /// Feed bytes this process moved in direction `dir`.
    fn push(
        &mut self,
        dir: Dir,
        data: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut dyn FnMut(ConnEvent<'_>),
    );
    /// The connection closed. Returns the transactions that never got (all of) a response.
    fn finish(&mut self, exit_ns: u64, emit: &mut dyn FnMut(ConnEvent<'_>)) -> Vec<Txn>;
    /// A transaction switched the connection to another protocol (HTTP/1.1's `101 Switching
    /// Protocols`): it, and the bytes each direction carried after it, taken once.
    fn upgraded(&mut self) -> Option<Upgrade> {
        None
    }
    /// What a connection first seen mid-way could not read since the last call (nothing for
    /// one seen from its start), for the caller to count.
    fn take_midstream(&mut self) -> Midstream {
        Midstream::default()
    }
}

/// What connections first seen mid-way (an HTTP/2 connection older than the agent) could not
/// read: their header blocks are never decoded, and the streams already open when capture
/// began are skipped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Midstream {
    /// Connections first seen mid-way (each watched end of one counts once).
    pub connections: u64,
    /// Streams skipped: already open when capture began (or opened before the connection
    /// showed which end is which), so their bodies are not whole.
    pub streams_skipped: u64,
    /// Header blocks (HEADERS, PUSH_PROMISE, with their CONTINUATIONs) not decoded.
    pub header_blocks_undecoded: u64,
}

impl Midstream {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: Midstream) {
        self.connections += other.connections;
        self.streams_skipped += other.streams_skipped;
        self.header_blocks_undecoded += other.header_blocks_undecoded;
    }

    /// Nothing counted.
    pub fn is_empty(&self) -> bool {
        *self == Midstream::default()
    }
}

/// A connection that left HTTP for another protocol.
#[derive(Debug)]
pub struct Upgrade {
    /// The transaction that switched it (its response is the `101`).
    pub txn: Txn,
    /// Bytes read past the `101` head, in the response direction (the new protocol's).
    pub response_rest: Vec<u8>,
    /// Bytes past the request, in the request direction.
    pub request_rest: Vec<u8>,
}

/// The headers MCP cares about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    /// `Content-Type`, lower-cased, without parameters.
    pub content_type: Option<String>,
    /// `Content-Length`.
    pub content_length: Option<u64>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Mcp-Session-Id`.
    pub session_id: Option<String>,
    /// `MCP-Protocol-Version`.
    pub protocol_version: Option<String>,
    /// `Accept` includes `text/event-stream`.
    pub accept_sse: bool,
    /// `Mcp-Method` (protocol 2026-07-28).
    pub mcp_method: Option<String>,
    /// `Mcp-Name` (protocol 2026-07-28).
    pub mcp_name: Option<String>,
    /// `Connection: close`.
    pub close: bool,
    /// `Retry-After` in seconds (an HTTP date is not read).
    pub retry_after: Option<u32>,
    /// A protocol switch's headers (`Upgrade` and WebSocket's), rare enough to be boxed.
    pub upgrade: Option<Box<Switch>>,
}

/// The headers of a protocol switch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Switch {
    /// `Upgrade`, lower-cased (`websocket`).
    pub protocol: String,
    /// `Sec-WebSocket-Protocol` (`mcp`).
    pub ws_protocol: Option<String>,
    /// `Sec-WebSocket-Extensions` (permessage-deflate and its parameters).
    pub ws_extensions: Option<String>,
}

impl Headers {
    /// The headers of interest among `(name, value)` pairs (names in any case).
    pub fn from_pairs<'h>(
        headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
    ) -> Result<Self, &'static str> {
        let mut h = Headers::default();
        for (name, raw) in headers {
            h.take(name, raw)?;
        }
        Ok(h)
    }

    /// One header.
    fn take(&mut self, name: &[u8], raw: &[u8]) -> Result<(), &'static str> {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        let value = || String::from_utf8_lossy(raw).trim().to_string();
        let h = self;
        if is("content-type") {
            let v = value().to_ascii_lowercase();
            h.content_type = Some(v.split(';').next().unwrap_or("").trim().to_string());
        } else if is("content-length") {
            let n = value().parse::<u64>().map_err(|_| "bad Content-Length")?;
            if h.content_length.is_some_and(|old| old != n) {
                return Err("conflicting Content-Length headers");
            }
            h.content_length = Some(n);
        } else if is("transfer-encoding") {
            h.chunked |= value().to_ascii_lowercase().contains("chunked");
        } else if is("mcp-session-id") {
            h.session_id = Some(value());
        } else if is("mcp-protocol-version") {
            h.protocol_version = Some(value());
        } else if is("accept") {
            h.accept_sse |= value().to_ascii_lowercase().contains("text/event-stream");
        } else if is("mcp-method") {
            h.mcp_method = Some(value());
        } else if is("mcp-name") {
            h.mcp_name = Some(value());
        } else if is("connection") {
            h.close |= value().to_ascii_lowercase().contains("close");
        } else if is("retry-after") {
            h.retry_after = value().parse().ok();
        } else if is("upgrade") {
            h.upgrade.get_or_insert_default().protocol = value().to_ascii_lowercase();
        } else if is("sec-websocket-protocol") {
            h.upgrade.get_or_insert_default().ws_protocol = Some(value());
        } else if is("sec-websocket-extensions") {
            // Several headers of it join as one list.
            let v = value();
            let sw = h.upgrade.get_or_insert_default();
            sw.ws_extensions = Some(match sw.ws_extensions.take() {
                Some(old) => format!("{old}, {v}"),
                None => v,
            });
        }
        Ok(())
    }

    /// It asks for (or agrees to) a protocol switch: it names an `Upgrade`.
    pub fn switches(&self) -> bool {
        self.upgrade
            .as_ref()
            .is_some_and(|u| !u.protocol.is_empty())
    }

    /// The body is an event stream.
    pub fn is_sse(&self) -> bool {
        self.content_type.as_deref() == Some("text/event-stream")
    }
}

/// What a body's first bytes say it is, for a head whose headers were not decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// JSON: `{` or `[` after whitespace.
    Json,
    /// An event stream: a `data:`, `event:`, `id:` or `retry:` field or a `:` comment at the
    /// start of a line (after blank lines).
    EventStream,
    /// Anything else.
    Other,
}

/// Bytes of a body looked at before its kind is settled as [`BodyKind::Other`]: past them
/// it is not waiting for more (only whitespace or blank lines can make it wait that long).
pub const SNIFF_LIMIT: usize = 1024;

/// The fields an event stream's lines start with.
const SSE_FIELDS: [&[u8]; 4] = [b"data:", b"event:", b"id:", b"retry:"];

impl BodyKind {
    /// What a body that starts with `b` is; `None` while `b` is too short to tell (empty,
    /// whitespace, or a prefix of an event stream's field name) and under [`SNIFF_LIMIT`].
    ///
    /// Only the first [`SNIFF_LIMIT`] bytes are looked at, so that the answer for a body does
    /// not depend on how much of it came at once: a longer prefix of the same body never
    /// changes an answer given.
    pub fn sniff(b: &[u8]) -> Option<BodyKind> {
        let b = b.get(..SNIFF_LIMIT).unwrap_or(b);
        let undecided = || (b.len() >= SNIFF_LIMIT).then_some(BodyKind::Other);
        match b.trim_ascii_start().first() {
            None => return undecided(),
            Some(b'{' | b'[') => return Some(BodyKind::Json),
            Some(_) => {}
        }
        // An event stream may start with blank lines, never with other whitespace.
        let line = after_blank_lines(b);
        if line.starts_with(b":") {
            return Some(BodyKind::EventStream);
        }
        for field in SSE_FIELDS {
            if line.starts_with(field) {
                return Some(BodyKind::EventStream);
            }
            if field.starts_with(line) {
                return undecided();
            }
        }
        Some(BodyKind::Other)
    }
}

/// The bytes after any leading CR and LF (the blank lines an event stream may start with).
fn after_blank_lines(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| c == b'\r' || c == b'\n').count();
    &b[n..]
}

/// What is known of a head's fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fields {
    /// Read from the wire: method, target, status and headers are what was sent.
    #[default]
    Decoded,
    /// Not decoded: the head's header block came on an HTTP/2 connection first seen mid-way,
    /// whose HPACK dynamic table is unknown (an indexed field could resolve to the wrong
    /// entry). Method, target, status and headers are absent, not empty.
    NotDecoded {
        /// What the body's first bytes say it is (a response's, once they came; `None` for a
        /// request, or a response with no body).
        body: Option<BodyKind>,
    },
}

/// A request line or status line with its headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// Whether the fields below were decoded; when they were not, they are all absent.
    pub fields: Fields,
    /// Request method.
    pub method: Option<String>,
    /// Request target (path and query).
    pub target: Option<String>,
    /// Response status.
    pub status: Option<u16>,
    /// Headers of interest.
    pub headers: Headers,
    /// Entry time of the syscall that carried the head's first byte.
    pub first_enter_ns: u64,
    /// Exit time of the syscall that completed the head.
    pub last_exit_ns: u64,
    /// Bytes of the message's body (de-chunked), counted as it arrives: the whole body once
    /// the message ended, what came so far before that.
    pub body_bytes: u64,
}

impl Head {
    /// A head whose header block was not decoded (see [`Fields::NotDecoded`]), read by
    /// syscalls from `first_enter_ns` to `last_exit_ns`.
    pub fn not_decoded(first_enter_ns: u64, last_exit_ns: u64) -> Head {
        Head {
            fields: Fields::NotDecoded { body: None },
            first_enter_ns,
            last_exit_ns,
            ..Head::default()
        }
    }

    /// Its fields were decoded.
    pub fn decoded(&self) -> bool {
        self.fields == Fields::Decoded
    }

    /// Its body is an event stream: by its `Content-Type`, or, when its fields were not
    /// decoded, by the body's first bytes.
    pub fn is_sse(&self) -> bool {
        match self.fields {
            Fields::Decoded => self.headers.is_sse(),
            Fields::NotDecoded { body } => body == Some(BodyKind::EventStream),
        }
    }
}

/// Which end of the connection this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Sends requests.
    Client,
    /// Answers them.
    Server,
}

/// One request and its response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// Position on the connection, from 0 (HTTP/1.1); the stream id (HTTP/2).
    pub seq: u64,
    /// The request head.
    pub request: Head,
    /// The response head, once seen.
    pub response: Option<Head>,
}

/// What a connection ([`HttpWire`]) delivers.
#[derive(Debug)]
pub enum ConnEvent<'a> {
    /// Which end of the connection this process is became known (an HTTP/2 connection first
    /// seen mid-way, at the first header block that shows who sent it): it comes once, before
    /// any transaction's event, and is about the connection, not a transaction.
    Role(Role),
    /// A request head was parsed.
    RequestHead(&'a Txn),
    /// A complete request body (not delivered when empty).
    RequestBody {
        /// The transaction.
        txn: &'a Txn,
        /// The body.
        body: &'a [u8],
        /// Entry time of the request's first byte (its head).
        first_enter_ns: u64,
        /// Exit time of the body's last byte.
        last_exit_ns: u64,
    },
    /// A response head was parsed.
    ResponseHead(&'a Txn),
    /// A complete response body that is not an event stream (not delivered when empty).
    ResponseBody {
        /// The transaction.
        txn: &'a Txn,
        /// The body.
        body: &'a [u8],
        /// Entry time of the response's first byte (its head).
        first_enter_ns: u64,
        /// Exit time of the body's last byte.
        last_exit_ns: u64,
    },
    /// An event of a `text/event-stream` response.
    Sse {
        /// The transaction.
        txn: &'a Txn,
        /// The event.
        event: sse::Event<'a>,
    },
    /// A response is complete.
    Done(&'a Txn),
    /// A body or event over the size limit, dropped.
    Oversize {
        /// The transaction.
        txn: &'a Txn,
        /// Its size so far.
        len: u64,
    },
    /// The connection's HTTP could not be parsed; nothing more is delivered.
    Error(&'static str),
}

impl<'a> ConnEvent<'a> {
    /// The transaction the event is about; `None` for what is about the connection (an
    /// error, the role).
    pub fn txn(&self) -> Option<&'a Txn> {
        match self {
            ConnEvent::RequestHead(t) | ConnEvent::ResponseHead(t) | ConnEvent::Done(t) => Some(t),
            ConnEvent::RequestBody { txn, .. }
            | ConnEvent::ResponseBody { txn, .. }
            | ConnEvent::Sse { txn, .. }
            | ConnEvent::Oversize { txn, .. } => Some(txn),
            ConnEvent::Error(_) | ConnEvent::Role(_) => None,
        }
    }
}

/// Adds `data` to a body being gathered and to its length `len`. Past `max` bytes the body is
/// dropped (and its memory freed) and only the length is counted, so that the size of an
/// oversized body can still be reported.
#[inline]
pub(crate) fn gather_capped(body: &mut Vec<u8>, len: &mut u64, data: &[u8], max: usize) {
    *len += data.len() as u64;
    if *len > max as u64 {
        *body = Vec::new();
    } else {
        body.extend_from_slice(data);
    }
}

/// A complete body as gathered (up to the size limit) and its whole length.
pub(crate) struct Whole<'a> {
    /// Its bytes (empty past the limit).
    pub body: &'a [u8],
    /// Its length.
    pub len: u64,
    /// Entry time of its message's first byte (its head).
    pub first_enter_ns: u64,
    /// Exit time of its last byte.
    pub last_exit_ns: u64,
}

/// Deliver a complete request (`request`) or response body: `Oversize` past `max`, the body
/// when it has bytes.
pub(crate) fn deliver_whole(
    txn: &Txn,
    request: bool,
    w: Whole<'_>,
    max: usize,
    emit: &mut dyn FnMut(ConnEvent<'_>),
) {
    let (first_enter_ns, last_exit_ns, body) = (w.first_enter_ns, w.last_exit_ns, w.body);
    if w.len > max as u64 {
        emit(ConnEvent::Oversize { txn, len: w.len });
    } else if body.is_empty() {
    } else if request {
        emit(ConnEvent::RequestBody {
            txn,
            body,
            first_enter_ns,
            last_exit_ns,
        });
    } else {
        emit(ConnEvent::ResponseBody {
            txn,
            body,
            first_enter_ns,
            last_exit_ns,
        });
    }
}

/// Response body bytes: the events of an event stream (`sse`), or the body gathered into
/// `body` (its length in `len`) up to `max`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn response_bytes(
    txn: &Txn,
    sse: Option<&mut sse::Parser>,
    (body, len): (&mut Vec<u8>, &mut u64),
    data: &[u8],
    (enter_ns, exit_ns): (u64, u64),
    max: usize,
    emit: &mut dyn FnMut(ConnEvent<'_>),
) {
    match sse {
        Some(p) => p.push(data, enter_ns, exit_ns, |o| match o {
            sse::Output::Event(event) => emit(ConnEvent::Sse { txn, event }),
            sse::Output::Oversize { len } => emit(ConnEvent::Oversize { txn, len }),
        }),
        None => gather_capped(body, len, data, max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_kinds_from_first_bytes() {
        use BodyKind::{EventStream, Json, Other};
        let cases: [(&[u8], Option<BodyKind>); 18] = [
            (b"{\"jsonrpc\"", Some(Json)),
            (b" \r\n\t[{", Some(Json)),
            (b"data: {}\n\n", Some(EventStream)),
            (b"\r\n\nevent: message\n", Some(EventStream)),
            (b"id:7", Some(EventStream)),
            (b"retry: 10\n", Some(EventStream)),
            (b": ping\n\n", Some(EventStream)),
            (b"<html>", Some(Other)),
            (b"datum", Some(Other)),
            (b" data: x", Some(Other)),
            (b"HTTP/1.1 200 OK", Some(Other)),
            (b"\x00\x01", Some(Other)),
            // Too short to tell.
            (b"", None),
            (b" \r\n", None),
            (b"d", None),
            (b"\ndat", None),
            (b"retry", None),
            (b":", Some(EventStream)),
        ];
        for (b, want) in cases {
            assert_eq!(BodyKind::sniff(b), want, "{:?}", String::from_utf8_lossy(b));
        }
        // Past the limit, whatever comes after is not looked at.
        let mut blank = vec![b' '; SNIFF_LIMIT - 1];
        assert_eq!(BodyKind::sniff(&blank), None);
        blank.push(b'{');
        assert_eq!(BodyKind::sniff(&blank), Some(Json));
        blank.insert(0, b'\n');
        assert_eq!(BodyKind::sniff(&blank), Some(Other));
        // Every prefix of a body answers as the body does, or waits.
        let body = b"\r\n\r\nevent: message\ndata: {}\n\n";
        for i in 0..body.len() {
            let got = BodyKind::sniff(&body[..i]);
            assert!(got.is_none() || got == Some(EventStream), "{i}: {got:?}");
        }
    }

    #[test]
    fn heads_not_decoded() {
        let h = Head::not_decoded(3, 4);
        assert!(!h.decoded());
        assert!(!h.is_sse());
        assert_eq!(
            (h.method, h.status, h.first_enter_ns, h.last_exit_ns),
            (None, None, 3, 4)
        );
        let sse = Head {
            fields: Fields::NotDecoded {
                body: Some(BodyKind::EventStream),
            },
            ..Head::default()
        };
        assert!(sse.is_sse());
        let decoded = Head {
            headers: Headers {
                content_type: Some("text/event-stream".into()),
                ..Headers::default()
            },
            ..Head::default()
        };
        assert!(decoded.decoded() && decoded.is_sse());
        let mut m = Midstream {
            connections: 1,
            ..Midstream::default()
        };
        assert!(!m.is_empty());
        m.add(Midstream {
            connections: 0,
            streams_skipped: 2,
            header_blocks_undecoded: 3,
        });
        assert_eq!(
            (m.connections, m.streams_skipped, m.header_blocks_undecoded),
            (1, 2, 3)
        );
        assert!(Midstream::default().is_empty());
    }
}
