//! HTTP/1.1 framing for MCP's network transports (Streamable HTTP and the 2024-11-05 HTTP+SSE).
//!
//! [`Parser`] frames one direction of a connection: heads (parsed with `httparse`), then
//! bodies delimited by Content-Length, chunked encoding, or the end of the connection.
//! [`Conn`] pairs the two directions of one process's view of a connection into transactions,
//! in order (keep-alive and pipelining), and delivers what MCP needs: request bodies,
//! JSON response bodies, and the events of `text/event-stream` responses, each with the
//! syscall times of its first and last byte.
//!
//! Bounded: heads over 64 KiB and bodies over the message limit are reported, not buffered;
//! anything that is not HTTP/1.1 stops the parser for that connection.

use std::collections::VecDeque;

use memchr::memmem;

pub use super::http::{ConnEvent, Head, Headers, Role, Txn};
use super::http::{
    HttpWire, Upgrade, Version, Whole, deliver_whole, gather_capped, response_bytes,
};
use super::sse;
use crate::capture::Dir;

fn headers_of(h: &[httparse::Header<'_>]) -> Result<Headers, &'static str> {
    Headers::from_pairs(h.iter().map(|h| (h.name.as_bytes(), h.value)))
}

/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;
/// Headers parsed per head.
const MAX_HEADERS: usize = 96;

/// Which side of HTTP a parser reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Requests.
    Request,
    /// Responses.
    Response,
}

/// What a [`Parser`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A head.
    Head(Box<Head>),
    /// Body bytes, de-chunked.
    Body {
        /// The bytes.
        data: &'a [u8],
        /// Entry time of the syscall that carried them.
        enter_ns: u64,
        /// Its exit time.
        exit_ns: u64,
    },
    /// The message (head and body) is complete.
    End {
        /// Exit time of the syscall that completed it.
        exit_ns: u64,
    },
    /// Not HTTP/1.1, or broken framing: the parser stops.
    Error(&'static str),
}

#[derive(Debug)]
enum Chunk {
    Size(Vec<u8>),
    Data(u64),
    DataEnd(bool),
    Trailer(Vec<u8>),
}

/// What feeding a chunked body left: the bytes not consumed, and whether the body (with its
/// trailers) is complete.
struct ChunkFed<'d> {
    rest: &'d [u8],
    body_ended: bool,
}

impl Chunk {
    /// Feed bytes of a chunked body; `data` is not empty. Fails with why the framing is
    /// broken.
    #[inline]
    fn push<'d>(
        &mut self,
        data: &'d [u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Result<ChunkFed<'d>, &'static str> {
        let mut body_ended = false;
        let rest = match self {
            Chunk::Size(line) | Chunk::Trailer(line) => {
                let (rest, line) = take_line(line, data)?;
                if let Some(line) = line {
                    let text = line.strip_suffix(b"\n").unwrap_or(&line);
                    let text = text.strip_suffix(b"\r").unwrap_or(text);
                    if matches!(self, Chunk::Trailer(_)) {
                        // The blank line after the trailers ends the body.
                        body_ended = text.is_empty();
                    } else {
                        *self = Chunk::after_size_line(text)?;
                    }
                }
                rest
            }
            Chunk::Data(left) => {
                let rest = emit_body(left, data, enter_ns, exit_ns, emit);
                if *left == 0 {
                    *self = Chunk::DataEnd(false);
                }
                rest
            }
            Chunk::DataEnd(seen_cr) => {
                match (data[0], *seen_cr) {
                    (b'\r', false) => *seen_cr = true,
                    (b'\n', _) => *self = Chunk::Size(Vec::new()),
                    _ => return Err("chunk data not followed by CRLF"),
                }
                &data[1..]
            }
        };
        Ok(ChunkFed { rest, body_ended })
    }

    /// The state after a chunk-size line (CRLF stripped): the chunk's data, or the trailers
    /// after the last (zero-size) chunk. Chunk extensions (`;name=value`) are ignored.
    fn after_size_line(text: &[u8]) -> Result<Chunk, &'static str> {
        let hex = text.split(|&b| b == b';').next().unwrap_or(b"");
        let hex = std::str::from_utf8(hex).unwrap_or("").trim();
        match u64::from_str_radix(hex, 16) {
            Ok(0) => Ok(Chunk::Trailer(Vec::new())),
            Ok(n) => Ok(Chunk::Data(n)),
            Err(_) => Err("bad chunk size"),
        }
    }
}

/// Adds `data` up to its first newline to `line`. Returns the bytes after that newline, and
/// the whole line (newline included, `line` left empty) once it has ended; fails when the
/// line grows past [`MAX_LINE`].
#[inline]
fn take_line<'d>(
    line: &mut Vec<u8>,
    data: &'d [u8],
) -> Result<(&'d [u8], Option<Vec<u8>>), &'static str> {
    let nl = data.iter().position(|&b| b == b'\n');
    let take = nl.map_or(data.len(), |i| i + 1);
    line.extend_from_slice(&data[..take]);
    if line.len() > MAX_LINE {
        return Err("chunk-size or trailer line too long");
    }
    Ok((&data[take..], nl.map(|_| std::mem::take(line))))
}

/// Emits the part of `data` that belongs to a body with `left` bytes to go, and counts it
/// off. Returns the rest of `data`.
#[inline]
fn emit_body<'d>(
    left: &mut u64,
    data: &'d [u8],
    enter_ns: u64,
    exit_ns: u64,
    emit: &mut impl FnMut(Event<'_>),
) -> &'d [u8] {
    let n = (*left).min(data.len() as u64) as usize;
    *left -= n as u64;
    emit(Event::Body {
        data: &data[..n],
        enter_ns,
        exit_ns,
    });
    &data[n..]
}

#[derive(Debug)]
enum State {
    Head,
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    /// Past a head that switches protocols (an `Upgrade` request, a `101` response): the
    /// bytes that follow are held, not framed, for the next protocol.
    Switched,
    Broken,
}

/// Frames one direction of an HTTP/1.1 connection.
#[derive(Debug)]
pub struct Parser {
    kind: Kind,
    state: State,
    buf: Vec<u8>,
    head_start_ns: Option<u64>,
    /// For responses: whether each outstanding request was a HEAD (its response has no body).
    expect_head_method: VecDeque<bool>,
    /// Bytes after a head that switched protocols (at most [`MAX_HEAD`]).
    switched: Vec<u8>,
}

impl Parser {
    /// Bytes held for a head or chunk line not complete yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
            + match &self.state {
                State::Chunked(Chunk::Size(l) | Chunk::Trailer(l)) => l.len(),
                _ => 0,
            }
    }

    /// A parser for requests or responses.
    pub fn new(kind: Kind) -> Self {
        Parser {
            kind,
            state: State::Head,
            buf: Vec::new(),
            head_start_ns: None,
            expect_head_method: VecDeque::new(),
            switched: Vec::new(),
        }
    }

    /// A request was sent on this connection (responses to HEAD have no body).
    pub fn expect_response(&mut self, method_is_head: bool) {
        self.expect_head_method.push_back(method_is_head);
    }

    /// The parser gave up on this connection.
    pub fn is_broken(&self) -> bool {
        matches!(self.state, State::Broken)
    }

    /// Feed bytes one syscall moved.
    pub fn push(
        &mut self,
        mut data: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut impl FnMut(Event<'_>),
    ) {
        while !data.is_empty() {
            data = match &mut self.state {
                State::Broken => return,
                State::Switched => {
                    self.switched.extend_from_slice(data);
                    if self.switched.len() > MAX_HEAD {
                        self.fail("more than 64 KiB after a protocol switch", emit);
                    }
                    return;
                }
                State::Head => match self.push_head(data, enter_ns, exit_ns, emit) {
                    Some(rest) => rest,
                    None => return,
                },
                State::Length(left) => {
                    let rest = emit_body(left, data, enter_ns, exit_ns, emit);
                    if *left == 0 {
                        self.state = State::Head;
                        emit(Event::End { exit_ns });
                    }
                    rest
                }
                State::UntilClose => {
                    emit(Event::Body {
                        data,
                        enter_ns,
                        exit_ns,
                    });
                    return;
                }
                State::Chunked(chunk) => match chunk.push(data, enter_ns, exit_ns, emit) {
                    Ok(fed) => {
                        if fed.body_ended {
                            self.state = State::Head;
                            emit(Event::End { exit_ns });
                        }
                        fed.rest
                    }
                    Err(why) => {
                        self.fail(why, emit);
                        return;
                    }
                },
            };
        }
    }

    /// Collects head bytes until the blank line that ends the head, then parses it. Returns
    /// what followed the head in `data`, or `None` when nothing more can be read from it (the
    /// head is not complete yet, or the parser failed).
    #[inline]
    fn push_head<'d>(
        &mut self,
        data: &'d [u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Option<&'d [u8]> {
        if self.head_start_ns.is_none() {
            // Tolerate the blank lines some clients send between messages.
            let skip = data
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if self.buf.is_empty() && skip > 0 {
                return Some(&data[skip..]);
            }
            self.head_start_ns = Some(enter_ns);
        }
        // The terminator may straddle syscalls: look back over the last 3 bytes held.
        let from = self.buf.len().saturating_sub(3);
        self.buf.extend_from_slice(data);
        let Some(end) = memmem::find(&self.buf[from..], b"\r\n\r\n").map(|i| from + i + 4) else {
            if self.buf.len() > MAX_HEAD {
                self.fail("head larger than 64 KiB", emit);
            }
            return None;
        };
        // What followed the head in this syscall.
        let consumed_here = data.len() - (self.buf.len() - end);
        let head = std::mem::take(&mut self.buf);
        let first = self.head_start_ns.take().unwrap_or(enter_ns);
        if let Err(e) = self.head(&head[..end], first, exit_ns, emit) {
            self.fail(e, emit);
            return None;
        }
        Some(&data[consumed_here..])
    }

    fn head(
        &mut self,
        raw: &[u8],
        first_enter_ns: u64,
        exit_ns: u64,
        emit: &mut impl FnMut(Event<'_>),
    ) -> Result<(), &'static str> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = Head {
            first_enter_ns,
            last_exit_ns: exit_ns,
            ..Head::default()
        };
        let body_len: Option<u64>;
        match self.kind {
            Kind::Request => {
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(raw) {
                    Ok(httparse::Status::Complete(_)) => {}
                    _ => return Err("not an HTTP/1.x request"),
                }
                head.method = req.method.map(str::to_string);
                head.target = req.path.map(str::to_string);
                head.headers = headers_of(req.headers)?;
                let bodiless = !head.headers.chunked && head.headers.content_length.is_none();
                if head.headers.switches() && bodiless {
                    // What follows depends on the answer: held until it comes.
                    emit(Event::Head(Box::new(head)));
                    emit(Event::End { exit_ns });
                    self.state = State::Switched;
                    return Ok(());
                }
                body_len = if head.headers.chunked {
                    None
                } else {
                    Some(head.headers.content_length.unwrap_or(0))
                };
            }
            Kind::Response => {
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(raw) {
                    Ok(httparse::Status::Complete(_)) => {}
                    _ => return Err("not an HTTP/1.x response"),
                }
                let code = resp.code.unwrap_or(0);
                head.status = Some(code);
                head.headers = headers_of(resp.headers)?;
                if code == 101 {
                    self.expect_head_method.pop_front();
                    emit(Event::Head(Box::new(head)));
                    emit(Event::End { exit_ns });
                    self.state = State::Switched;
                    return Ok(());
                }
                if (100..200).contains(&code) {
                    // Interim (100 Continue): the real response follows.
                    return Ok(());
                }
                let to_head = self.expect_head_method.pop_front().unwrap_or(false);
                body_len = if to_head || code == 204 || code == 304 {
                    Some(0)
                } else if head.headers.chunked {
                    None
                } else {
                    head.headers.content_length
                };
                if body_len.is_none() && !head.headers.chunked {
                    emit(Event::Head(Box::new(head)));
                    self.state = State::UntilClose;
                    return Ok(());
                }
            }
        }
        emit(Event::Head(Box::new(head)));
        match body_len {
            Some(0) => {
                self.state = State::Head;
                emit(Event::End { exit_ns });
            }
            Some(n) => self.state = State::Length(n),
            None => self.state = State::Chunked(Chunk::Size(Vec::new())),
        }
        Ok(())
    }

    /// Whether it is past a head that switched protocols.
    pub fn is_switched(&self) -> bool {
        matches!(self.state, State::Switched)
    }

    /// The bytes held past a protocol switch; the parser stays switched.
    pub fn take_switched(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.switched)
    }

    /// An `Upgrade` request was refused: frame the bytes held since as HTTP again.
    fn resume(&mut self, exit_ns: u64, emit: &mut impl FnMut(Event<'_>)) {
        if self.is_switched() {
            self.state = State::Head;
            let held = std::mem::take(&mut self.switched);
            self.push(&held, exit_ns, exit_ns, emit);
        }
    }

    fn fail(&mut self, why: &'static str, emit: &mut impl FnMut(Event<'_>)) {
        self.state = State::Broken;
        self.buf = Vec::new();
        emit(Event::Error(why));
    }

    /// The connection ended: a body delimited by the close ends now; anything else in
    /// progress is cut short. Returns false when a message was cut short.
    pub fn finish(&mut self, exit_ns: u64, emit: &mut impl FnMut(Event<'_>)) -> bool {
        let clean = match self.state {
            State::UntilClose => {
                emit(Event::End { exit_ns });
                true
            }
            State::Head => self.buf.is_empty(),
            State::Broken => true,
            _ => false,
        };
        self.state = State::Broken;
        clean
    }
}

/// One process's view of one HTTP/1.1 connection: both directions, paired.
#[derive(Debug)]
pub struct Conn {
    role: Role,
    requests: Parser,
    responses: Parser,
    seq: u64,
    /// The request being received, its body so far, and the body's length so far (past
    /// `max_body`, only counted).
    req: Option<(Txn, Vec<u8>, u64)>,
    /// Requests awaiting (or receiving) their response, oldest first; at most
    /// [`MAX_PIPELINED`].
    open: VecDeque<Txn>,
    resp_body: Vec<u8>,
    /// Bytes of the current response body so far (past `max_body`, only counted).
    resp_len: u64,
    resp_first_enter_ns: u64,
    sse: Option<sse::Parser>,
    max_body: usize,
    /// The transaction whose `101` switched the connection to another protocol.
    switched: Option<Txn>,
}

/// Requests one connection may have awaiting a response (HTTP/1.1 pipelining); past it the
/// connection is given up as broken, so that a client that never reads cannot grow the queue.
pub const MAX_PIPELINED: usize = 256;

/// Does this look like the start of an HTTP/1.x request?
pub fn starts_request(b: &[u8]) -> bool {
    const METHODS: &[&[u8]] = &[
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
    ];
    METHODS.iter().any(|m| b.starts_with(m))
}

/// Does this look like the start of an HTTP/1.x response?
pub fn starts_response(b: &[u8]) -> bool {
    b.starts_with(b"HTTP/1.")
}

impl Conn {
    /// A connection seen from a process whose first bytes in direction `dir` were `first`;
    /// `None` when they are not the start of an HTTP/1.x message.
    pub fn detect(dir: Dir, first: &[u8], max_body: usize) -> Option<Conn> {
        let role = match (dir, starts_request(first), starts_response(first)) {
            (Dir::Out, true, _) | (Dir::In, _, true) => Role::Client,
            (Dir::In, true, _) | (Dir::Out, _, true) => Role::Server,
            _ => return None,
        };
        Some(Conn {
            role,
            requests: Parser::new(Kind::Request),
            responses: Parser::new(Kind::Response),
            seq: 0,
            req: None,
            open: VecDeque::new(),
            resp_body: Vec::new(),
            resp_len: 0,
            resp_first_enter_ns: 0,
            sse: None,
            max_body,
            switched: None,
        })
    }

    /// This process's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Bytes held for messages not complete yet (heads, bodies, events).
    pub fn buffered(&self) -> usize {
        self.requests.buffered()
            + self.responses.buffered()
            + self.req.as_ref().map_or(0, |(_, b, _)| b.len())
            + self.resp_body.len()
            + self.sse.as_ref().map_or(0, sse::Parser::buffered)
    }

    /// The direction (from this process's view) that carries requests.
    pub fn request_dir(&self) -> Dir {
        match self.role {
            Role::Client => Dir::Out,
            Role::Server => Dir::In,
        }
    }

    /// Feed bytes this process moved in direction `dir`.
    pub fn push(
        &mut self,
        dir: Dir,
        data: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut impl FnMut(ConnEvent<'_>),
    ) {
        if dir == self.request_dir() {
            let mut events = Vec::new();
            self.requests
                .push(data, enter_ns, exit_ns, &mut |e| events.push(own(e)));
            for e in events {
                self.on_request(e, emit);
            }
        } else {
            let mut events = Vec::new();
            self.responses
                .push(data, enter_ns, exit_ns, &mut |e| events.push(own(e)));
            for e in events {
                self.on_response(e, emit);
            }
        }
    }

    fn on_request(&mut self, e: OwnedEvent, emit: &mut impl FnMut(ConnEvent<'_>)) {
        match e {
            OwnedEvent::Head(head) => {
                if self.open.len() >= MAX_PIPELINED {
                    // A client that never reads its responses, or a stream mcptap misframed.
                    self.requests.state = State::Broken;
                    emit(ConnEvent::Error("too many requests awaiting a response"));
                    return;
                }
                let is_head = head.method.as_deref() == Some("HEAD");
                self.responses.expect_response(is_head);
                let txn = Txn {
                    seq: self.seq,
                    request: *head,
                    response: None,
                };
                self.seq += 1;
                emit(ConnEvent::RequestHead(&txn));
                self.req = Some((txn, Vec::new(), 0));
            }
            OwnedEvent::Body {
                data,
                enter_ns: _,
                exit_ns: _,
            } => {
                if let Some((_, body, len)) = &mut self.req {
                    gather_capped(body, len, &data, self.max_body);
                }
            }
            OwnedEvent::End { exit_ns } => {
                if let Some((mut txn, body, len)) = self.req.take() {
                    txn.request.body_bytes = len;
                    let whole = Whole {
                        body: &body,
                        len,
                        first_enter_ns: txn.request.first_enter_ns,
                        last_exit_ns: exit_ns,
                    };
                    deliver_whole(&txn, true, whole, self.max_body, emit);
                    self.open.push_back(txn);
                }
            }
            OwnedEvent::Error(why) => emit(ConnEvent::Error(why)),
        }
    }

    fn on_response(&mut self, e: OwnedEvent, emit: &mut impl FnMut(ConnEvent<'_>)) {
        match e {
            OwnedEvent::Head(head) => self.response_head(*head, emit),
            OwnedEvent::Body {
                data,
                enter_ns,
                exit_ns,
            } => self.response_body(&data, enter_ns, exit_ns, emit),
            OwnedEvent::End { exit_ns } => self.response_end(exit_ns, emit),
            OwnedEvent::Error(why) => emit(ConnEvent::Error(why)),
        }
    }

    /// Pairs a response head with the oldest open request and resets the body state.
    fn response_head(&mut self, head: Head, emit: &mut impl FnMut(ConnEvent<'_>)) {
        if head.status != Some(101) && self.requests.is_switched() {
            let mut events = Vec::new();
            self.requests
                .resume(head.last_exit_ns, &mut |e| events.push(own(e)));
            for e in events {
                self.on_request(e, emit);
            }
        }
        // A response may come before its request finished arriving (an early error);
        // attach it to the oldest request either way.
        if self.open.is_empty()
            && let Some((txn, ..)) = self.req.take()
        {
            self.open.push_back(txn);
        }
        self.resp_body.clear();
        self.resp_len = 0;
        self.resp_first_enter_ns = head.first_enter_ns;
        self.sse = head
            .headers
            .is_sse()
            .then(|| sse::Parser::new(self.max_body));
        let txn = match self.open.front_mut() {
            Some(t) => t,
            None => {
                // A response nobody asked for (we joined mid-connection): keep it
                // as its own transaction.
                self.open.push_back(Txn {
                    seq: self.seq,
                    request: Head::default(),
                    response: None,
                });
                self.seq += 1;
                self.open.front_mut().expect("just pushed")
            }
        };
        txn.response = Some(head);
        emit(ConnEvent::ResponseHead(txn));
    }

    /// Response body bytes: events of an event stream, or the body gathered (up to the limit).
    fn response_body(
        &mut self,
        data: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut impl FnMut(ConnEvent<'_>),
    ) {
        let Some(txn) = self.open.front_mut() else {
            return;
        };
        if let Some(r) = txn.response.as_mut() {
            r.body_bytes += data.len() as u64;
        }
        let body = (&mut self.resp_body, &mut self.resp_len);
        let times = (enter_ns, exit_ns);
        response_bytes(
            txn,
            self.sse.as_mut(),
            body,
            data,
            times,
            self.max_body,
            emit,
        );
    }

    /// The response is complete: deliver its body (unless it was an event stream) and close
    /// its transaction.
    fn response_end(&mut self, exit_ns: u64, emit: &mut impl FnMut(ConnEvent<'_>)) {
        let Some(txn) = self.open.pop_front() else {
            return;
        };
        if self.sse.take().is_none() {
            let whole = Whole {
                body: &self.resp_body,
                len: self.resp_len,
                first_enter_ns: self.resp_first_enter_ns,
                last_exit_ns: exit_ns,
            };
            deliver_whole(&txn, false, whole, self.max_body, emit);
        }
        self.resp_body.clear();
        emit(ConnEvent::Done(&txn));
        if txn.response.as_ref().and_then(|r| r.status) == Some(101) {
            self.switched = Some(txn);
        }
    }

    /// The connection closed. Returns the transactions that never got (all of) a response.
    pub fn finish(&mut self, exit_ns: u64, emit: &mut impl FnMut(ConnEvent<'_>)) -> Vec<Txn> {
        let mut events = Vec::new();
        self.responses.finish(exit_ns, &mut |e| events.push(own(e)));
        for e in events {
            self.on_response(e, emit);
        }
        self.requests.finish(exit_ns, &mut |_| {});
        let mut left: Vec<Txn> = self.open.drain(..).collect();
        if let Some((txn, ..)) = self.req.take() {
            left.push(txn);
        }
        left
    }

    /// The HTTP parsers gave up on this connection.
    pub fn is_broken(&self) -> bool {
        self.requests.is_broken() || self.responses.is_broken()
    }
}

impl HttpWire for Conn {
    fn version(&self) -> Version {
        Version::Http11
    }

    fn role(&self) -> Option<Role> {
        Some(self.role)
    }

    fn buffered(&self) -> usize {
        Conn::buffered(self) + self.requests.switched.len() + self.responses.switched.len()
    }

    fn push(
        &mut self,
        dir: Dir,
        data: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut dyn FnMut(ConnEvent<'_>),
    ) {
        Conn::push(self, dir, data, enter_ns, exit_ns, &mut |e| emit(e));
    }

    fn finish(&mut self, exit_ns: u64, emit: &mut dyn FnMut(ConnEvent<'_>)) -> Vec<Txn> {
        Conn::finish(self, exit_ns, &mut |e| emit(e))
    }

    fn upgraded(&mut self) -> Option<Upgrade> {
        if !self.responses.is_switched() {
            return None;
        }
        let txn = self.switched.take()?;
        Some(Upgrade {
            txn,
            response_rest: self.responses.take_switched(),
            request_rest: self.requests.take_switched(),
        })
    }
}

/// A parser event with its bytes copied out, so the parser can be borrowed again.
enum OwnedEvent {
    Head(Box<Head>),
    Body {
        data: Vec<u8>,
        enter_ns: u64,
        exit_ns: u64,
    },
    End {
        exit_ns: u64,
    },
    Error(&'static str),
}

fn own(e: Event<'_>) -> OwnedEvent {
    match e {
        Event::Head(h) => OwnedEvent::Head(h),
        Event::Body {
            data,
            enter_ns,
            exit_ns,
        } => OwnedEvent::Body {
            data: data.to_vec(),
            enter_ns,
            exit_ns,
        },
        Event::End { exit_ns } => OwnedEvent::End { exit_ns },
        Event::Error(e) => OwnedEvent::Error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Clone)]
    enum Got {
        ReqHead(String, String),
        ReqBody(String),
        RespHead(u16),
        RespBody(String),
        Sse(String, String),
        Done(u64),
        Oversize,
        Error(&'static str),
    }

    fn collect(e: ConnEvent<'_>, out: &mut Vec<Got>) {
        out.push(match e {
            ConnEvent::RequestHead(t) => Got::ReqHead(
                t.request.method.clone().unwrap_or_default(),
                t.request.target.clone().unwrap_or_default(),
            ),
            ConnEvent::RequestBody { body, .. } => {
                Got::ReqBody(String::from_utf8_lossy(body).into())
            }
            ConnEvent::ResponseHead(t) => {
                Got::RespHead(t.response.as_ref().unwrap().status.unwrap())
            }
            ConnEvent::ResponseBody { body, .. } => {
                Got::RespBody(String::from_utf8_lossy(body).into())
            }
            ConnEvent::Sse { event, .. } => Got::Sse(
                event.event.to_string(),
                String::from_utf8_lossy(event.data).into(),
            ),
            ConnEvent::Done(t) => Got::Done(t.seq),
            ConnEvent::Oversize { .. } => Got::Oversize,
            ConnEvent::Error(e) => Got::Error(e),
            ConnEvent::Role(r) => panic!("HTTP/1.1 knows its role from the start: {r:?}"),
        });
    }

    /// Client side of a keep-alive connection: a JSON POST, an SSE POST with two events in
    /// chunks, a notification answered 202, a 404, pipelined.
    const REQUESTS: &[u8] = b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\
POST /mcp HTTP/1.1\r\nHost: x\r\nMcp-Session-Id: abc\r\nAccept: application/json, text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n{\"a\":1\r\n1\r\n}\r\n0\r\n\r\n\
POST /mcp HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}\
DELETE /mcp HTTP/1.1\r\nMcp-Session-Id: abc\r\n\r\n";
    const RESPONSES: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}\
HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nmcp-session-id: abc\r\ntransfer-encoding: chunked\r\n\r\n21\r\nevent: message\r\ndata: {\"p\":1}\r\n\r\n\r\n16\r\nevent: message\ndata: {\r\n6\r\n\"r\":2}\r\n2\r\n\n\n\r\n0\r\n\r\n\
HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n\
HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found";

    fn want() -> Vec<Got> {
        vec![
            Got::ReqHead("POST".into(), "/mcp".into()),
            Got::ReqBody("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}".into()),
            Got::ReqHead("POST".into(), "/mcp".into()),
            Got::ReqBody("{\"a\":1}".into()),
            Got::ReqHead("POST".into(), "/mcp".into()),
            Got::ReqBody("{}".into()),
            Got::ReqHead("DELETE".into(), "/mcp".into()),
            Got::RespHead(200),
            Got::RespBody("{\"ok\":true}".into()),
            Got::Done(0),
            Got::RespHead(200),
            Got::Sse("message".into(), "{\"p\":1}".into()),
            Got::Sse("message".into(), "{\"r\":2}".into()),
            Got::Done(1),
            Got::RespHead(202),
            Got::Done(2),
            Got::RespHead(404),
            Got::RespBody("not found".into()),
            Got::Done(3),
        ]
    }

    #[test]
    fn both_directions_split_at_every_boundary() {
        // Requests all arrive first, then responses: pipelining.
        let cuts = (0..=REQUESTS.len())
            .map(|a| (a, a % (RESPONSES.len() + 1)))
            .chain((0..=RESPONSES.len()).map(|b| (b % (REQUESTS.len() + 1), b)));
        for (a, b) in cuts {
            let mut c = Conn::detect(Dir::Out, REQUESTS, 1 << 20).unwrap();
            assert_eq!(c.role(), Role::Client);
            let mut got = Vec::new();
            for (dir, stream, cut) in [(Dir::Out, REQUESTS, a), (Dir::In, RESPONSES, b)] {
                c.push(dir, &stream[..cut], 1, 2, &mut |e| collect(e, &mut got));
                c.push(dir, &stream[cut..], 3, 4, &mut |e| collect(e, &mut got));
            }
            assert_eq!(got, want(), "cuts {a} {b}");
            assert!(c.finish(5, &mut |_| {}).is_empty());
        }
        // And the responses one byte at a time, from the server's point of view.
        let mut c = Conn::detect(Dir::In, REQUESTS, 1 << 20).unwrap();
        assert_eq!(c.role(), Role::Server);
        let mut got = Vec::new();
        c.push(Dir::In, REQUESTS, 1, 2, &mut |e| collect(e, &mut got));
        for byte in RESPONSES.chunks(1) {
            c.push(Dir::Out, byte, 3, 4, &mut |e| collect(e, &mut got));
        }
        assert_eq!(got, want());
    }

    #[test]
    fn client_hanging_up_before_the_last_chunk() {
        let mut c = Conn::detect(Dir::Out, REQUESTS, 1 << 20).unwrap();
        let mut got = Vec::new();
        c.push(
            Dir::Out,
            b"POST /mcp HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            1,
            2,
            &mut |e| collect(e, &mut got),
        );
        c.push(
            Dir::In,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n10\r\ndata: {\"x\":1}\n\n\r\n",
            3,
            4,
            &mut |e| collect(e, &mut got),
        );
        assert_eq!(
            got.last(),
            Some(&Got::Sse("message".into(), "{\"x\":1}".into()))
        );
        // The final `0` chunk never comes: the event was already delivered; the transaction
        // is reported unfinished.
        let left = c.finish(5, &mut |e| collect(e, &mut got));
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn head_and_body_in_separate_writes_and_early_response() {
        let mut c = Conn::detect(Dir::In, b"POST ", 1 << 20).unwrap();
        let mut got = Vec::new();
        c.push(
            Dir::In,
            b"POST /mcp HTTP/1.1\r\nContent-Length: 2\r\n\r\n",
            1,
            2,
            &mut |e| collect(e, &mut got),
        );
        c.push(Dir::In, b"{}", 3, 4, &mut |e| collect(e, &mut got));
        assert_eq!(got[1], Got::ReqBody("{}".into()));
    }

    #[test]
    fn oversized_bodies_report_their_whole_size_and_pipelining_is_bounded() {
        let mut c = Conn::detect(Dir::Out, b"POST ", 16).unwrap();
        let mut sizes = Vec::new();
        let body = "x".repeat(40);
        let req = format!("POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n{body}");
        // Split so that the body passes the limit part-way.
        for piece in [&req[..30], &req[30..50], &req[50..]] {
            c.push(Dir::Out, piece.as_bytes(), 1, 2, &mut |e| {
                if let ConnEvent::Oversize { len, .. } = e {
                    sizes.push(len);
                }
            });
        }
        assert_eq!(sizes, [40]);
        assert_eq!(c.buffered(), 0);
        // A client that never reads its answers: past the bound, the connection is broken.
        let mut c = Conn::detect(Dir::Out, b"GET ", 1 << 20).unwrap();
        let mut errors = 0;
        for _ in 0..=MAX_PIPELINED {
            c.push(Dir::Out, b"GET / HTTP/1.1\r\n\r\n", 1, 2, &mut |e| {
                errors += matches!(e, ConnEvent::Error(_)) as u32;
            });
        }
        assert_eq!(errors, 1);
        assert!(c.is_broken());
    }

    #[test]
    fn broken_http_is_reported_once() {
        let mut c = Conn::detect(Dir::Out, b"POST ", 1 << 20).unwrap();
        let mut got = Vec::new();
        c.push(
            Dir::Out,
            b"POST /mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            1,
            2,
            &mut |e| collect(e, &mut got),
        );
        c.push(Dir::Out, b"more garbage\r\n\r\n", 1, 2, &mut |e| {
            collect(e, &mut got)
        });
        assert_eq!(got.iter().filter(|g| matches!(g, Got::Error(_))).count(), 1);
        assert!(c.is_broken());
        // Lying Content-Length headers.
        let mut c = Conn::detect(Dir::Out, b"POST ", 1 << 20).unwrap();
        let mut got = Vec::new();
        c.push(
            Dir::Out,
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            1,
            2,
            &mut |e| collect(e, &mut got),
        );
        assert_eq!(got, vec![Got::Error("conflicting Content-Length headers")]);
        assert!(Conn::detect(Dir::Out, b"\x16\x03\x01", 1 << 20).is_none());
    }

    #[test]
    fn oversize_bodies_are_reported_not_buffered() {
        let mut c = Conn::detect(Dir::Out, b"POST ", 16).unwrap();
        let mut got = Vec::new();
        c.push(Dir::Out, b"POST / HTTP/1.1\r\nContent-Length: 40\r\n\r\n0123456789012345678901234567890123456789", 1, 2, &mut |e| collect(e, &mut got));
        assert_eq!(
            got,
            vec![Got::ReqHead("POST".into(), "/".into()), Got::Oversize]
        );
    }

    #[test]
    fn response_until_close() {
        let mut c = Conn::detect(Dir::Out, b"GET ", 1 << 20).unwrap();
        let mut got = Vec::new();
        c.push(
            Dir::Out,
            b"GET /sse HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n",
            1,
            2,
            &mut |e| collect(e, &mut got),
        );
        c.push(Dir::In, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nevent: endpoint\ndata: /messages?session_id=1\n\n", 3, 4, &mut |e| collect(e, &mut got));
        assert_eq!(
            got.last(),
            Some(&Got::Sse(
                "endpoint".into(),
                "/messages?session_id=1".into()
            ))
        );
        assert!(c.finish(5, &mut |e| collect(e, &mut got)).is_empty());
        assert_eq!(got.last(), Some(&Got::Done(0)));
    }
}
