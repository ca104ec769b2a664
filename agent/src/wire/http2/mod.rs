//! HTTP/2 (RFC 9113), cleartext with prior knowledge (h2c) or inside TLS with ALPN `h2`:
//! [`frames`] reads each direction's frames and header blocks (HPACK with its dynamic
//! table); [`Conn`] turns each stream into one transaction and delivers the same events as
//! HTTP/1.1 ([`super::http::ConnEvent`]), so every application protocol above reads both
//! alike.
//!
//! Seen from its start only: a connection first seen mid-way cannot decode its header
//! blocks (the dynamic table is lost), and is refused by the framing list. A header block
//! that cannot be decoded breaks the connection (an `Error` event, counted above).

pub mod frames;

use super::http::{ConnEvent, Head, Headers, HttpWire, Role, Txn, Version, gather_capped};
use super::sse;
use crate::FastMap;
use crate::capture::Dir;
use frames::{Field, Frame, Looks, Reader, Sender};

/// Streams one connection may have open at once; past it the connection is given up as
/// broken (HTTP/2 servers allow 100 to 250 by default).
pub const MAX_STREAMS: usize = 1024;

/// One stream: a request and its response.
#[derive(Debug, Default)]
struct H2Stream {
    txn: Txn,
    req_body: Vec<u8>,
    req_len: u64,
    /// The request's END_STREAM came.
    req_done: bool,
    resp_body: Vec<u8>,
    resp_len: u64,
    sse: Option<sse::Parser>,
}

/// One process's view of one HTTP/2 connection: both directions' frames, streams paired
/// into transactions.
#[derive(Debug)]
pub struct Conn {
    role: Role,
    /// What the client wrote.
    client: Reader,
    /// What the server wrote.
    server: Reader,
    streams: FastMap<u32, H2Stream>,
    max_body: usize,
    broken: bool,
}

/// Largest frame payload accepted (HTTP/2 allows up to 2^24 - 1 once a peer asks).
const MAX_FRAME: usize = frames::MAX_FRAME_PAYLOAD_LIMIT;

impl Conn {
    /// A connection seen from a process whose first bytes in direction `dir` were `first`:
    /// the client's preface, or the server's first SETTINGS frame. `None` otherwise (a
    /// connection joined mid-way included).
    pub fn detect(dir: Dir, first: &[u8], max_body: usize) -> Option<Conn> {
        let role = match (frames::looks_like(first), dir) {
            // Only a whole preface: a prefix of it is too short to tell.
            (Looks::Preface, Dir::Out) if first.len() >= frames::PREFACE.len() => Role::Client,
            (Looks::Preface, Dir::In) if first.len() >= frames::PREFACE.len() => Role::Server,
            (Looks::Settings, Dir::Out) => Role::Server,
            (Looks::Settings, Dir::In) => Role::Client,
            _ => return None,
        };
        Some(Conn {
            role,
            client: Reader::new(Sender::Client, true, MAX_FRAME),
            server: Reader::new(Sender::Server, true, MAX_FRAME),
            streams: FastMap::default(),
            max_body,
            broken: false,
        })
    }

    fn sender(&self, dir: Dir) -> Sender {
        match (self.role, dir) {
            (Role::Client, Dir::Out) | (Role::Server, Dir::In) => Sender::Client,
            _ => Sender::Server,
        }
    }

    fn fail(&mut self, why: &'static str, emit: &mut dyn FnMut(ConnEvent<'_>)) {
        if !self.broken {
            self.broken = true;
            self.streams.clear();
            emit(ConnEvent::Error(why));
        }
    }
}

impl HttpWire for Conn {
    fn version(&self) -> Version {
        Version::Http2
    }

    fn role(&self) -> Role {
        self.role
    }

    fn buffered(&self) -> usize {
        let streams: usize = self
            .streams
            .values()
            .map(|s| {
                s.req_body.len()
                    + s.resp_body.len()
                    + s.sse.as_ref().map_or(0, sse::Parser::buffered)
            })
            .sum();
        self.client.buffered() + self.server.buffered() + streams
    }

    fn push(
        &mut self,
        dir: Dir,
        data: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut dyn FnMut(ConnEvent<'_>),
    ) {
        if self.broken {
            return;
        }
        let sender = self.sender(dir);
        let Conn {
            client,
            server,
            streams,
            max_body,
            ..
        } = self;
        let (reader, other) = match sender {
            Sender::Client => (client, server),
            Sender::Server => (server, client),
        };
        let mut failed = None;
        let mut on = Streams {
            streams,
            max_body: *max_body,
        };
        let r = reader.push(data, enter_ns, exit_ns, &mut |f| {
            if failed.is_none() {
                failed = on.frame(sender, f, emit).err();
            }
        });
        // What this side asked of the other's header table.
        other.set_max_table_size(reader.advertised_header_table_size().unwrap_or(4096));
        if let Some(why) = failed.or(r.err()) {
            self.fail(why, emit);
        }
    }

    fn finish(&mut self, _exit_ns: u64, _emit: &mut dyn FnMut(ConnEvent<'_>)) -> Vec<Txn> {
        let mut left: Vec<Txn> = self.streams.drain().map(|(_, s)| s.txn).collect();
        left.sort_by_key(|t| t.seq);
        left
    }
}

/// The streams of a connection, while one direction's frames are read.
struct Streams<'a> {
    streams: &'a mut FastMap<u32, H2Stream>,
    max_body: usize,
}

/// A head from a decoded header block: pseudo-headers to the request or status line, the
/// rest to [`Headers`].
fn head_of(fields: &[Field], enter_ns: u64, exit_ns: u64) -> Result<Head, &'static str> {
    let mut head = Head {
        first_enter_ns: enter_ns,
        last_exit_ns: exit_ns,
        ..Head::default()
    };
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    for f in fields {
        match f.name.as_slice() {
            b":method" => head.method = Some(text(&f.value)),
            b":path" => head.target = Some(text(&f.value)),
            b":status" => head.status = text(&f.value).parse().ok(),
            _ => {}
        }
    }
    let regular = fields.iter().filter(|f| !f.name.starts_with(b":"));
    head.headers = Headers::from_pairs(regular.map(|f| (&f.name[..], &f.value[..])))?;
    Ok(head)
}

impl Streams<'_> {
    /// One frame from `sender`.
    fn frame(
        &mut self,
        sender: Sender,
        f: Frame<'_>,
        emit: &mut dyn FnMut(ConnEvent<'_>),
    ) -> Result<(), &'static str> {
        match f {
            Frame::Headers {
                stream,
                fields,
                end_stream,
                enter_ns,
                exit_ns,
            } => {
                let head = head_of(fields, enter_ns, exit_ns)?;
                match sender {
                    Sender::Client => self.request_headers(stream, head, end_stream, emit),
                    Sender::Server => self.response_headers(stream, head, end_stream, emit),
                }
            }
            Frame::HeadersLost { .. } => Err("an HTTP/2 header block could not be decoded"),
            Frame::Data {
                stream,
                data,
                end_stream,
                enter_ns,
                exit_ns,
            } => {
                match sender {
                    Sender::Client => self.request_data(stream, data, end_stream, exit_ns, emit),
                    Sender::Server => {
                        self.response_data(stream, data, enter_ns, exit_ns, emit);
                        if end_stream {
                            self.response_end(stream, exit_ns, emit);
                        }
                    }
                }
                Ok(())
            }
            // A stream cut short stays open: it is reported with the connection's leftovers.
            Frame::Reset { .. } | Frame::GoAway { .. } => Ok(()),
        }
    }

    /// A client's header block: a request head, or its trailers.
    fn request_headers(
        &mut self,
        stream: u32,
        head: Head,
        end_stream: bool,
        emit: &mut dyn FnMut(ConnEvent<'_>),
    ) -> Result<(), &'static str> {
        let exit_ns = head.last_exit_ns;
        if !self.streams.contains_key(&stream) {
            if self.streams.len() >= MAX_STREAMS {
                return Err("too many concurrent HTTP/2 streams");
            }
            let s = H2Stream {
                txn: Txn {
                    seq: u64::from(stream),
                    request: head,
                    response: None,
                },
                ..H2Stream::default()
            };
            emit(ConnEvent::RequestHead(&s.txn));
            self.streams.insert(stream, s);
        }
        if end_stream {
            self.request_data(stream, &[], true, exit_ns, emit);
        }
        Ok(())
    }

    /// Request body bytes; at END_STREAM the body is delivered.
    fn request_data(
        &mut self,
        stream: u32,
        data: &[u8],
        end_stream: bool,
        exit_ns: u64,
        emit: &mut dyn FnMut(ConnEvent<'_>),
    ) {
        let max = self.max_body;
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        gather_capped(&mut s.req_body, &mut s.req_len, data, max);
        if !end_stream || s.req_done {
            return;
        }
        s.req_done = true;
        s.txn.request.body_bytes = s.req_len;
        let body = std::mem::take(&mut s.req_body);
        if s.req_len > max as u64 {
            emit(ConnEvent::Oversize {
                txn: &s.txn,
                len: s.req_len,
            });
        } else if !body.is_empty() {
            emit(ConnEvent::RequestBody {
                txn: &s.txn,
                body: &body,
                first_enter_ns: s.txn.request.first_enter_ns,
                last_exit_ns: exit_ns,
            });
        }
    }

    /// A server's header block: an interim head (ignored), the response head, or trailers.
    fn response_headers(
        &mut self,
        stream: u32,
        head: Head,
        end_stream: bool,
        emit: &mut dyn FnMut(ConnEvent<'_>),
    ) -> Result<(), &'static str> {
        let exit_ns = head.last_exit_ns;
        let max = self.max_body;
        let Some(s) = self.streams.get_mut(&stream) else {
            // A stream whose request was not seen: nothing to pair it with.
            return Ok(());
        };
        let interim = head.status.is_some_and(|c| (100..200).contains(&c));
        if s.txn.response.is_none() && !interim {
            s.sse = head.headers.is_sse().then(|| sse::Parser::new(max));
            s.txn.response = Some(head);
            emit(ConnEvent::ResponseHead(&s.txn));
        }
        if end_stream {
            self.response_end(stream, exit_ns, emit);
        }
        Ok(())
    }

    /// Response body bytes: events of an event stream, or the body gathered.
    fn response_data(
        &mut self,
        stream: u32,
        data: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut dyn FnMut(ConnEvent<'_>),
    ) {
        let max = self.max_body;
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let Some(r) = s.txn.response.as_mut() else {
            return;
        };
        r.body_bytes += data.len() as u64;
        let txn = &s.txn;
        match &mut s.sse {
            Some(p) => p.push(data, enter_ns, exit_ns, |o| match o {
                sse::Output::Event(event) => emit(ConnEvent::Sse { txn, event }),
                sse::Output::Oversize { len } => emit(ConnEvent::Oversize { txn, len }),
            }),
            None => gather_capped(&mut s.resp_body, &mut s.resp_len, data, max),
        }
    }

    /// END_STREAM from the server: the body (unless an event stream), and the transaction
    /// is done.
    fn response_end(&mut self, stream: u32, exit_ns: u64, emit: &mut dyn FnMut(ConnEvent<'_>)) {
        let Some(s) = self.streams.remove(&stream) else {
            return;
        };
        let txn = &s.txn;
        if s.sse.is_none() {
            let first = txn.response.as_ref().map_or(0, |r| r.first_enter_ns);
            if s.resp_len > self.max_body as u64 {
                emit(ConnEvent::Oversize {
                    txn,
                    len: s.resp_len,
                });
            } else if !s.resp_body.is_empty() {
                emit(ConnEvent::ResponseBody {
                    txn,
                    body: &s.resp_body,
                    first_enter_ns: first,
                    last_exit_ns: exit_ns,
                });
            }
        }
        emit(ConnEvent::Done(txn));
    }
}
