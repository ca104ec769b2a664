//! HTTP/2 (RFC 9113), cleartext with prior knowledge (h2c) or inside TLS with ALPN `h2`:
//! [`frames`] reads each direction's frames and header blocks (HPACK with its dynamic
//! table); [`Conn`] turns each stream into one transaction and delivers the same events as
//! HTTP/1.1 ([`super::http::ConnEvent`]), so every application protocol above reads both
//! alike.
//!
//! A connection seen from its start ([`Conn::detect`]) decodes its header blocks; a block
//! that cannot be decoded breaks the connection (an `Error` event, counted above).
//!
//! A connection first seen mid-way ([`Conn::joined`]: the agent started after it did)
//! never decodes a header block: the HPACK dynamic table its indices refer to was built
//! before the agent came, so an indexed field could resolve to the wrong entry. Its frames
//! are read all the same. A stream whose request HEADERS came in view is a transaction
//! whose heads say their fields were not decoded ([`Fields::NotDecoded`]); its response
//! head goes up once the body's first bytes tell what it is ([`BodyKind::sniff`]: JSON, an
//! event stream, or something else). A stream already open when capture began (DATA, or
//! its response, with no request HEADERS seen) is skipped: its bodies are not whole. Which
//! end this process is comes from the first header block whose static table indices tell a
//! request from a response ([`frames::static_sender`]); the streams before it are skipped
//! too. What it could not read is counted ([`Midstream`], handed up by
//! [`HttpWire::take_midstream`]).

pub mod frames;

use super::http::{
    BodyKind, ConnEvent, Fields, Head, Headers, HttpWire, Midstream, Role, SNIFF_LIMIT, Txn,
    Version, Whole, deliver_whole, gather_capped, response_bytes,
};
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
    /// The response head was not decoded and waits for its body's first bytes to tell what
    /// the body is.
    sniffing: bool,
    /// Those bytes, held meanwhile (fewer than [`SNIFF_LIMIT`]).
    held: Vec<u8>,
    /// Entry time of the first of them.
    sniff_enter: u64,
}

/// What a connection joined mid-way keeps besides its streams.
#[derive(Debug, Default)]
struct Joined {
    /// Streams skipped, open when they were first seen, each with the directions whose
    /// END_STREAM came (a bit per [`Dir`]): forgotten once both did, or at a reset.
    skipped: FastMap<u32, u8>,
    /// The highest client stream id a HEADERS or DATA frame named: a stream the client
    /// opens in view has a higher one.
    highest: u32,
    /// The first stream opened in view: the client's streams below it were open before.
    first_opened: Option<u32>,
    /// Counted, not taken yet.
    counts: Midstream,
    /// Header blocks counted so far (both readers').
    blocks: u64,
}

/// One process's view of one HTTP/2 connection: both directions' frames, streams paired
/// into transactions.
#[derive(Debug)]
pub struct Conn {
    /// This process's role; `None` until a connection joined mid-way shows it.
    role: Option<Role>,
    /// What this process wrote.
    wrote: Reader,
    /// What it read.
    read: Reader,
    streams: FastMap<u32, H2Stream>,
    max_body: usize,
    broken: bool,
    /// Set when the connection was joined mid-way.
    joined: Option<Box<Joined>>,
}

/// Largest frame payload accepted (HTTP/2 allows up to 2^24 - 1 once a peer asks).
const MAX_FRAME: usize = frames::MAX_FRAME_PAYLOAD_LIMIT;

/// Who wrote the bytes a process at `role` moved in direction `dir`.
fn sender_of(role: Role, dir: Dir) -> Sender {
    match (role, dir) {
        (Role::Client, Dir::Out) | (Role::Server, Dir::In) => Sender::Client,
        _ => Sender::Server,
    }
}

/// The role of a process that moved in direction `dir` bytes `sender` wrote.
fn role_of(sender: Sender, dir: Dir) -> Role {
    match (sender, dir) {
        (Sender::Client, Dir::Out) | (Sender::Server, Dir::In) => Role::Client,
        _ => Role::Server,
    }
}

impl Conn {
    /// A connection seen from a process whose first bytes in direction `dir` were `first`:
    /// the client's preface, or the server's first SETTINGS frame. `None` otherwise (a
    /// connection joined mid-way included: see [`Conn::joined`]).
    pub fn detect(dir: Dir, first: &[u8], max_body: usize) -> Option<Conn> {
        let role = match (frames::looks_like(first), dir) {
            // Only a whole preface: a prefix of it is too short to tell.
            (Looks::Preface, Dir::Out) if first.len() >= frames::PREFACE.len() => Role::Client,
            (Looks::Preface, Dir::In) if first.len() >= frames::PREFACE.len() => Role::Server,
            (Looks::Settings, Dir::Out) => Role::Server,
            (Looks::Settings, Dir::In) => Role::Client,
            _ => return None,
        };
        let reader = |dir| Reader::new(sender_of(role, dir), true, MAX_FRAME);
        Some(Conn {
            role: Some(role),
            wrote: reader(Dir::Out),
            read: reader(Dir::In),
            streams: FastMap::default(),
            max_body,
            broken: false,
            joined: None,
        })
    }

    /// A connection joined mid-way, whose first bytes seen (in either direction) were
    /// `first`: frames from their first byte ([`frames::looks_mid_way`]), not a preface nor
    /// a first SETTINGS (ask [`Conn::detect`] first). `None` when they do not read as
    /// HTTP/2 frames. Its header blocks are never decoded (see the module docs).
    pub fn joined(first: &[u8], max_body: usize) -> Option<Conn> {
        if !frames::looks_mid_way(first) {
            return None;
        }
        let joined = Joined {
            counts: Midstream {
                connections: 1,
                ..Midstream::default()
            },
            ..Joined::default()
        };
        Some(Conn {
            role: None,
            wrote: Reader::joined(MAX_FRAME),
            read: Reader::joined(MAX_FRAME),
            streams: FastMap::default(),
            max_body,
            broken: false,
            joined: Some(Box::new(joined)),
        })
    }

    fn fail(&mut self, why: &'static str, emit: &mut dyn FnMut(ConnEvent<'_>)) {
        if !self.broken {
            self.broken = true;
            self.streams.clear();
            if let Some(j) = self.joined.as_mut() {
                j.skipped = FastMap::default();
            }
            emit(ConnEvent::Error(why));
        }
    }

    /// After a push of a connection joined mid-way: the readers stop keeping header blocks
    /// to tell who sent them once the role is known, and the blocks they could not decode
    /// are counted.
    fn after_joined_push(&mut self) {
        let Some(j) = self.joined.as_mut() else {
            return;
        };
        let blocks = self.wrote.headers_lost() + self.read.headers_lost();
        j.counts.header_blocks_undecoded += blocks - j.blocks;
        j.blocks = blocks;
        if self.role.is_some() {
            self.wrote.stop_peeking();
            self.read.stop_peeking();
        }
    }
}

impl HttpWire for Conn {
    fn version(&self) -> Version {
        Version::Http2
    }

    fn role(&self) -> Option<Role> {
        self.role
    }

    fn buffered(&self) -> usize {
        let streams: usize = self
            .streams
            .values()
            .map(|s| {
                s.req_body.len()
                    + s.resp_body.len()
                    + s.held.len()
                    + s.sse.as_ref().map_or(0, sse::Parser::buffered)
            })
            .sum();
        self.wrote.buffered() + self.read.buffered() + streams
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
        let Conn {
            role,
            wrote,
            read,
            streams,
            max_body,
            joined,
            ..
        } = self;
        let (reader, other) = match dir {
            Dir::Out => (wrote, read),
            Dir::In => (read, wrote),
        };
        let mut failed = None;
        let mut on = Streams {
            streams,
            max_body: *max_body,
            role,
            joined: joined.as_deref_mut(),
        };
        let r = reader.push(data, enter_ns, exit_ns, &mut |f| {
            if failed.is_none() {
                failed = on.frame(dir, f, emit).err();
            }
        });
        // What this side asked of the other's header table.
        other.set_max_table_size(reader.advertised_header_table_size().unwrap_or(4096));
        self.after_joined_push();
        if let Some(why) = failed.or(r.err()) {
            self.fail(why, emit);
        }
    }

    fn finish(&mut self, _exit_ns: u64, _emit: &mut dyn FnMut(ConnEvent<'_>)) -> Vec<Txn> {
        let mut left: Vec<Txn> = self.streams.drain().map(|(_, s)| s.txn).collect();
        left.sort_by_key(|t| t.seq);
        left
    }

    fn take_midstream(&mut self) -> Midstream {
        self.joined
            .as_mut()
            .map(|j| std::mem::take(&mut j.counts))
            .unwrap_or_default()
    }
}

/// The streams of a connection, while one direction's frames are read.
struct Streams<'a> {
    streams: &'a mut FastMap<u32, H2Stream>,
    max_body: usize,
    role: &'a mut Option<Role>,
    joined: Option<&'a mut Joined>,
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

/// What a body whose first bytes were `held` and then `data` is, looking at no more than
/// [`SNIFF_LIMIT`] of them (without copying `data` whole).
fn sniff_with(held: &[u8], data: &[u8]) -> Option<BodyKind> {
    if held.is_empty() {
        return BodyKind::sniff(data);
    }
    let more = SNIFF_LIMIT.saturating_sub(held.len()).min(data.len());
    BodyKind::sniff(&[held, &data[..more]].concat())
}

/// A response head not decoded, once its body's first bytes told what the body is (`None`:
/// it has none): the head goes up, an event stream gets its parser, and the bytes held to
/// tell go where every later byte goes.
fn settle_sniffed(
    s: &mut H2Stream,
    kind: Option<BodyKind>,
    exit_ns: u64,
    max: usize,
    emit: &mut dyn FnMut(ConnEvent<'_>),
) {
    s.sniffing = false;
    if let Some(r) = s.txn.response.as_mut() {
        r.fields = Fields::NotDecoded { body: kind };
    }
    emit(ConnEvent::ResponseHead(&s.txn));
    if kind == Some(BodyKind::EventStream) {
        s.sse = Some(sse::Parser::new(max));
    }
    let held = std::mem::take(&mut s.held);
    if !held.is_empty() {
        let body = (&mut s.resp_body, &mut s.resp_len);
        let times = (s.sniff_enter, exit_ns);
        response_bytes(&s.txn, s.sse.as_mut(), body, &held, times, max, emit);
    }
}

impl Streams<'_> {
    /// One frame that went in direction `dir`.
    fn frame(
        &mut self,
        dir: Dir,
        f: Frame<'_>,
        emit: &mut dyn FnMut(ConnEvent<'_>),
    ) -> Result<(), &'static str> {
        if self.joined.is_some() {
            return self.joined_frame(dir, f, emit);
        }
        let Some(role) = *self.role else {
            // Never: a connection seen from its start knows its role.
            return Err("HTTP/2 connection of unknown role");
        };
        let sender = sender_of(role, dir);
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
                self.data(sender, stream, data, end_stream, (enter_ns, exit_ns), emit);
                Ok(())
            }
            // A stream cut short stays open: it is reported with the connection's leftovers.
            Frame::Reset { .. } | Frame::GoAway { .. } => Ok(()),
        }
    }

    /// DATA from `sender` on a stream in view.
    fn data(
        &mut self,
        sender: Sender,
        stream: u32,
        data: &[u8],
        end_stream: bool,
        (enter_ns, exit_ns): (u64, u64),
        emit: &mut dyn FnMut(ConnEvent<'_>),
    ) {
        match sender {
            Sender::Client => self.request_data(stream, data, end_stream, exit_ns, emit),
            Sender::Server => {
                self.response_data(stream, data, enter_ns, exit_ns, emit);
                if end_stream {
                    self.response_end(stream, exit_ns, emit);
                }
            }
        }
    }

    /// One frame of a connection joined mid-way: header blocks were not decoded; a stream
    /// whose request HEADERS came in view is a transaction, any other is skipped.
    fn joined_frame(
        &mut self,
        dir: Dir,
        f: Frame<'_>,
        emit: &mut dyn FnMut(ConnEvent<'_>),
    ) -> Result<(), &'static str> {
        match f {
            Frame::HeadersLost {
                stream,
                end_stream,
                sent_by,
                enter_ns,
                exit_ns,
                ..
            } => {
                if self.role.is_none()
                    && let Some(by) = sent_by
                {
                    let role = role_of(by, dir);
                    *self.role = Some(role);
                    emit(ConnEvent::Role(role));
                }
                let head = Head::not_decoded(enter_ns, exit_ns);
                let r = self.joined_headers(dir, stream, head, end_stream, emit);
                self.saw(stream);
                r
            }
            Frame::Data {
                stream,
                data,
                end_stream,
                enter_ns,
                exit_ns,
            } => {
                let r = match *self.role {
                    Some(role) if self.streams.contains_key(&stream) => {
                        let sender = sender_of(role, dir);
                        self.data(sender, stream, data, end_stream, (enter_ns, exit_ns), emit);
                        Ok(())
                    }
                    _ => self.skip(stream, dir, end_stream),
                };
                self.saw(stream);
                r
            }
            Frame::Reset { stream, .. } => {
                if let Some(j) = self.joined.as_deref_mut() {
                    j.skipped.remove(&stream);
                }
                Ok(())
            }
            Frame::GoAway { .. } => Ok(()),
            // Never: a reader of a connection joined mid-way does not decode.
            Frame::Headers { .. } => Err("a header block decoded on a connection joined mid-way"),
        }
    }

    /// A header block not decoded, on a connection joined mid-way: the request head of a
    /// stream the client opens in view, trailers or a response head of a stream in view, or
    /// a block of a stream skipped.
    fn joined_headers(
        &mut self,
        dir: Dir,
        stream: u32,
        head: Head,
        end_stream: bool,
        emit: &mut dyn FnMut(ConnEvent<'_>),
    ) -> Result<(), &'static str> {
        let known = self.streams.contains_key(&stream);
        match self.role.map(|r| sender_of(r, dir)) {
            Some(Sender::Client) if known || self.opens(stream) => {
                self.request_headers(stream, head, end_stream, emit)
            }
            Some(Sender::Server) if known => {
                let exit_ns = head.last_exit_ns;
                let s = self.streams.get_mut(&stream).expect("known");
                if s.txn.response.is_none() {
                    // Its head goes up with its body's kind (see `response_data`).
                    s.txn.response = Some(head);
                    s.sniffing = true;
                }
                if end_stream {
                    self.response_end(stream, exit_ns, emit);
                }
                Ok(())
            }
            _ => self.skip(stream, dir, end_stream),
        }
    }

    /// Whether a client's header block on `stream`, not in view, opens it: a client stream
    /// id above every one seen (a client opens its streams in increasing order, so one
    /// opened before the agent came has a lower id).
    fn opens(&mut self, stream: u32) -> bool {
        let Some(j) = self.joined.as_deref_mut() else {
            return false;
        };
        let opens = stream % 2 == 1 && stream > j.highest;
        if opens {
            j.first_opened.get_or_insert(stream);
        }
        opens
    }

    /// A HEADERS or DATA frame named `stream`.
    fn saw(&mut self, stream: u32) {
        if let Some(j) = self.joined.as_deref_mut()
            && stream % 2 == 1
        {
            j.highest = j.highest.max(stream);
        }
    }

    /// A frame of a stream not in view, on a connection joined mid-way: a stream of the
    /// client's opened before the agent came (or before the connection showed which end is
    /// which) is skipped, and counted the first time. Anything else (a pushed stream, a late
    /// frame of one already done) is ignored as a connection seen from its start does.
    fn skip(&mut self, stream: u32, dir: Dir, end_stream: bool) -> Result<(), &'static str> {
        let Some(j) = self.joined.as_deref_mut() else {
            return Ok(());
        };
        let end = match (end_stream, dir) {
            (false, _) => 0,
            (true, Dir::Out) => 1,
            (true, Dir::In) => 2,
        };
        if let Some(ended) = j.skipped.get_mut(&stream) {
            *ended |= end;
            if *ended == 3 {
                j.skipped.remove(&stream);
            }
            return Ok(());
        }
        let before = stream % 2 == 1 && j.first_opened.is_none_or(|f| stream < f);
        if !before {
            return Ok(());
        }
        j.counts.streams_skipped += 1;
        // Remembered so that it is counted once; past the cap a stream whose end is never
        // seen (its client's END_STREAM came before the agent) may be counted again.
        if j.skipped.len() < MAX_STREAMS {
            j.skipped.insert(stream, end);
        }
        Ok(())
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
        let whole = Whole {
            body: &body,
            len: s.req_len,
            first_enter_ns: s.txn.request.first_enter_ns,
            last_exit_ns: exit_ns,
        };
        deliver_whole(&s.txn, true, whole, max, emit);
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

    /// Response body bytes: events of an event stream, or the body gathered; for a head not
    /// decoded, first held until they tell what the body is.
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
        if s.sniffing {
            if s.held.is_empty() {
                s.sniff_enter = enter_ns;
            }
            let kind = sniff_with(&s.held, data);
            let Some(kind) = kind else {
                // Short of SNIFF_LIMIT (past it the answer is `Other`): little is held.
                s.held.extend_from_slice(data);
                return;
            };
            settle_sniffed(s, Some(kind), exit_ns, max, emit);
        }
        let body = (&mut s.resp_body, &mut s.resp_len);
        response_bytes(
            &s.txn,
            s.sse.as_mut(),
            body,
            data,
            (enter_ns, exit_ns),
            max,
            emit,
        );
    }

    /// END_STREAM from the server: the response head if it was waiting for its body's kind,
    /// the body (unless an event stream), and the transaction is done.
    fn response_end(&mut self, stream: u32, exit_ns: u64, emit: &mut dyn FnMut(ConnEvent<'_>)) {
        let Some(mut s) = self.streams.remove(&stream) else {
            return;
        };
        if s.sniffing {
            // Too short to tell: something else, unless there was no body at all.
            let kind = BodyKind::sniff(&s.held)
                .or_else(|| (!s.held.is_empty()).then_some(BodyKind::Other));
            settle_sniffed(&mut s, kind, exit_ns, self.max_body, emit);
        }
        let txn = &s.txn;
        if s.sse.is_none() {
            let whole = Whole {
                body: &s.resp_body,
                len: s.resp_len,
                first_enter_ns: txn.response.as_ref().map_or(0, |r| r.first_enter_ns),
                last_exit_ns: exit_ns,
            };
            deliver_whole(txn, false, whole, self.max_body, emit);
        }
        emit(ConnEvent::Done(txn));
    }
}

#[cfg(test)]
mod tests {
    //! `Conn` fed real HTTP/2 byte streams (loona-hpack's encoder on both ends): the events
    //! and their times are worked out from where each frame lies in its direction's bytes,
    //! so that any way of cutting and interleaving the pushes can be checked against them.

    use super::frames::testing::{frame, settings_payload};
    use super::*;
    use loona_hpack::Encoder;
    use loona_hpack::encoder::encode_integer_into;
    use std::ops::Range;

    use super::frames::{
        F_ACK, F_END_HEADERS, F_END_STREAM, T_CONTINUATION, T_DATA, T_GOAWAY, T_HEADERS, T_PING,
        T_RST_STREAM, T_SETTINGS, T_WINDOW_UPDATE,
    };

    const MAX: usize = 64 * 1024;

    fn settings(list: &[(u16, u32)]) -> Vec<u8> {
        frame(T_SETTINGS, 0, 0, &settings_payload(list))
    }

    fn enc(e: &mut Encoder<'_>, list: &[(&str, &str)]) -> Vec<u8> {
        e.encode(list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    /// An HPACK dynamic table size update (RFC 7541 §6.3).
    fn size_update(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        encode_integer_into(n, 5, 0x20, &mut v).expect("vec write");
        v
    }

    /// Who wrote the bytes.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Side {
        C,
        S,
    }

    /// What a `ConnEvent` said, owned, with its times.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Got {
        ReqHead {
            seq: u64,
            method: String,
            path: String,
            session: Option<String>,
            t: (u64, u64),
        },
        ReqBody {
            seq: u64,
            body: String,
            t: (u64, u64),
        },
        RespHead {
            seq: u64,
            status: u16,
            sse: bool,
            session: Option<String>,
            t: (u64, u64),
        },
        RespBody {
            seq: u64,
            body: String,
            t: (u64, u64),
        },
        Sse {
            seq: u64,
            event: String,
            data: String,
            t: (u64, u64),
        },
        Done(u64),
        Oversize {
            seq: u64,
            len: u64,
        },
        Error(&'static str),
        Role(Role),
        /// A head not decoded: a request's (`body` `None`), or a response's with what its
        /// fields say of its body.
        Undecoded {
            seq: u64,
            body: Option<Fields>,
            t: (u64, u64),
        },
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    fn own(e: ConnEvent<'_>) -> Got {
        match e {
            ConnEvent::RequestHead(t) if !t.request.decoded() => Got::Undecoded {
                seq: t.seq,
                body: None,
                t: (t.request.first_enter_ns, t.request.last_exit_ns),
            },
            ConnEvent::ResponseHead(Txn {
                seq,
                response: Some(r),
                ..
            }) if !r.decoded() => Got::Undecoded {
                seq: *seq,
                body: Some(r.fields),
                t: (r.first_enter_ns, r.last_exit_ns),
            },
            ConnEvent::RequestHead(t) => Got::ReqHead {
                seq: t.seq,
                method: t.request.method.clone().unwrap_or_default(),
                path: t.request.target.clone().unwrap_or_default(),
                session: t.request.headers.session_id.clone(),
                t: (t.request.first_enter_ns, t.request.last_exit_ns),
            },
            ConnEvent::RequestBody {
                txn,
                body,
                first_enter_ns,
                last_exit_ns,
            } => Got::ReqBody {
                seq: txn.seq,
                body: text(body),
                t: (first_enter_ns, last_exit_ns),
            },
            ConnEvent::ResponseHead(t) => {
                let r = t.response.as_ref().expect("a response head");
                Got::RespHead {
                    seq: t.seq,
                    status: r.status.unwrap_or(0),
                    sse: r.is_sse(),
                    session: r.headers.session_id.clone(),
                    t: (r.first_enter_ns, r.last_exit_ns),
                }
            }
            ConnEvent::ResponseBody {
                txn,
                body,
                first_enter_ns,
                last_exit_ns,
            } => Got::RespBody {
                seq: txn.seq,
                body: text(body),
                t: (first_enter_ns, last_exit_ns),
            },
            ConnEvent::Sse { txn, event } => Got::Sse {
                seq: txn.seq,
                event: event.event.to_string(),
                data: text(event.data),
                t: (event.first_enter_ns, event.last_exit_ns),
            },
            ConnEvent::Done(t) => Got::Done(t.seq),
            ConnEvent::Oversize { txn, len } => Got::Oversize { seq: txn.seq, len },
            ConnEvent::Error(why) => Got::Error(why),
            ConnEvent::Role(r) => Got::Role(r),
        }
    }

    /// An expected event: it fires with the push that carries byte `end - 1` of `side`, and its
    /// times are those of the pushes carrying bytes `start` (enter) and `end - 1` (exit).
    /// `make` builds it from those times; `sub` orders the events one frame fires.
    struct Want {
        side: Side,
        start: usize,
        end: usize,
        /// Where it fires, when not at `end` (a head that waits for its body's first bytes).
        fires: Option<usize>,
        sub: u8,
        make: Box<dyn Fn((u64, u64)) -> Got>,
    }

    /// Both directions' bytes, cut into phases: within a phase the client's and the server's
    /// bytes do not depend on each other (they may interleave any way); each phase depends on
    /// the ones before (a response follows its request).
    #[derive(Default)]
    struct Script {
        c: Vec<u8>,
        s: Vec<u8>,
        /// End offsets of (client, server) at the end of each phase.
        phases: Vec<(usize, usize)>,
        want: Vec<Want>,
    }

    impl Script {
        fn bytes(&mut self, side: Side) -> &mut Vec<u8> {
            match side {
                Side::C => &mut self.c,
                Side::S => &mut self.s,
            }
        }

        /// Appends raw bytes; returns their span.
        fn raw(&mut self, side: Side, b: &[u8]) -> (usize, usize) {
            let v = self.bytes(side);
            let start = v.len();
            v.extend_from_slice(b);
            (start, v.len())
        }

        fn frame(
            &mut self,
            side: Side,
            typ: u8,
            flags: u8,
            stream: u32,
            p: &[u8],
        ) -> (usize, usize) {
            self.raw(side, &frame(typ, flags, stream, p))
        }

        fn phase(&mut self) {
            self.phases.push((self.c.len(), self.s.len()));
        }

        fn want(
            &mut self,
            side: Side,
            (start, end): (usize, usize),
            sub: u8,
            make: impl Fn((u64, u64)) -> Got + 'static,
        ) {
            self.want.push(Want {
                side,
                start,
                end,
                fires: None,
                sub,
                make: Box::new(make),
            });
        }

        /// Like [`Script::want`], for an event timed by `span` that fires with the byte
        /// before `fires`.
        fn want_at(
            &mut self,
            side: Side,
            span: (usize, usize),
            fires: usize,
            make: impl Fn((u64, u64)) -> Got + 'static,
        ) {
            self.want(side, span, 0, make);
            self.want.last_mut().expect("just pushed").fires = Some(fires);
        }

        fn side(&self, side: Side) -> &[u8] {
            match side {
                Side::C => &self.c,
                Side::S => &self.s,
            }
        }

        /// The phases in order, the client's part of each first (or the server's).
        fn by_phase(&self, server_first: bool) -> Vec<(Side, Range<usize>)> {
            let mut out = Vec::new();
            let mut at = (0, 0);
            let mut ends = self.phases.clone();
            ends.push((self.c.len(), self.s.len()));
            for (c, s) in ends {
                let parts = [(Side::C, at.0..c), (Side::S, at.1..s)];
                let order = if server_first { [1, 0] } else { [0, 1] };
                for i in order {
                    let (side, r) = parts[i].clone();
                    if !r.is_empty() {
                        out.push((side, r));
                    }
                }
                at = (c, s);
            }
            out
        }

        /// Within each phase, `k` bytes of the client's part, then `k` of the server's, and
        /// so on.
        fn zipped(&self, k: usize) -> Vec<(Side, Range<usize>)> {
            let mut out = Vec::new();
            let mut at = (0, 0);
            let mut ends = self.phases.clone();
            ends.push((self.c.len(), self.s.len()));
            for (c, s) in ends {
                while at.0 < c || at.1 < s {
                    if at.0 < c {
                        let n = (at.0 + k).min(c);
                        out.push((Side::C, at.0..n));
                        at.0 = n;
                    }
                    if at.1 < s {
                        let n = (at.1 + k).min(s);
                        out.push((Side::S, at.1..n));
                        at.1 = n;
                    }
                }
                at = (c, s);
            }
            out
        }

        /// The events `pushes` must produce, in order.
        fn expected(&self, pushes: &[(Side, Range<usize>)]) -> Vec<Got> {
            let index = |side: Side| {
                let mut v = vec![usize::MAX; self.side(side).len()];
                for (j, (s, r)) in pushes.iter().enumerate() {
                    if *s == side {
                        for i in r.clone() {
                            v[i] = j;
                        }
                    }
                }
                assert!(v.iter().all(|&j| j != usize::MAX), "every byte pushed");
                v
            };
            let (ci, si) = (index(Side::C), index(Side::S));
            let push_of = |side: Side, off: usize| match side {
                Side::C => ci[off],
                Side::S => si[off],
            };
            let mut keyed: Vec<((usize, usize, u8), Got)> = self
                .want
                .iter()
                .map(|w| {
                    let last = push_of(w.side, w.end - 1);
                    let t = (enter_t(push_of(w.side, w.start)), exit_t(last));
                    let fires = w.fires.unwrap_or(w.end);
                    ((push_of(w.side, fires - 1), fires, w.sub), (w.make)(t))
                })
                .collect();
            keyed.sort_by_key(|(k, _)| *k);
            keyed.into_iter().map(|(_, g)| g).collect()
        }
    }

    fn enter_t(j: usize) -> u64 {
        1_000 * (j as u64 + 1)
    }

    fn exit_t(j: usize) -> u64 {
        1_000 * (j as u64 + 1) + 7
    }

    /// The direction a side's bytes have for a process at `role`.
    fn dir_of(role: Role, side: Side) -> Dir {
        match (role, side) {
            (Role::Client, Side::C) | (Role::Server, Side::S) => Dir::Out,
            _ => Dir::In,
        }
    }

    /// A connection seen by a process at `role`, detected from the client's preface.
    fn conn(role: Role, max_body: usize) -> Conn {
        let c = Conn::detect(dir_of(role, Side::C), frames::PREFACE, max_body).expect("h2");
        assert_eq!(c.role(), Some(role));
        assert_eq!(c.version(), Version::Http2);
        c
    }

    fn feed(sc: &Script, c: &mut Conn, pushes: &[(Side, Range<usize>)]) -> Vec<Got> {
        let mut got = Vec::new();
        for (j, (side, r)) in pushes.iter().enumerate() {
            let data = &sc.side(*side)[r.clone()];
            let dir = dir_of(c.role().expect("seen from its start"), *side);
            c.push(dir, data, enter_t(j), exit_t(j), &mut |e| got.push(own(e)));
        }
        got
    }

    /// Both roles see exactly the expected events, nothing is left over, nothing held.
    fn check(sc: &Script, pushes: &[(Side, Range<usize>)], what: &str) {
        let want = sc.expected(pushes);
        for role in [Role::Client, Role::Server] {
            let mut c = conn(role, MAX);
            let got = feed(sc, &mut c, pushes);
            assert_eq!(got, want, "{what} ({role:?})");
            assert_eq!(c.buffered(), 0, "{what} ({role:?})");
            let mut late = Vec::new();
            assert!(c.finish(9, &mut |e| late.push(own(e))).is_empty(), "{what}");
            assert!(late.is_empty(), "{what}");
        }
    }

    /// `pushes` with every push cut at the global byte offsets `cuts` (counted over all the
    /// pushes' bytes in order).
    fn cut(pushes: &[(Side, Range<usize>)], cuts: &[usize]) -> Vec<(Side, Range<usize>)> {
        let mut out = Vec::new();
        let mut base = 0;
        for (side, r) in pushes {
            let mut start = r.start;
            for &c in cuts {
                let at = r.start + c.saturating_sub(base);
                if c > base && at > start && at < r.end {
                    out.push((*side, start..at));
                    start = at;
                }
            }
            out.push((*side, start..r.end));
            base += r.len();
        }
        out
    }

    /// One byte per push, in the order of `pushes`.
    fn bytewise(pushes: &[(Side, Range<usize>)]) -> Vec<(Side, Range<usize>)> {
        pushes
            .iter()
            .flat_map(|(s, r)| r.clone().map(move |i| (*s, i..i + 1)))
            .collect()
    }

    const BODY1: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    const BODY3: &str = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#;
    const BODY5: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    const RESP1: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"s","version":"2"}}}"#;
    const EV1: &str = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":3,"progress":1}}"#;
    const EV2: &str =
        r#"{"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text","text":"hi"}]}}"#;

    fn request(path: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "POST".into()),
            (":scheme", "http".into()),
            (":authority", "127.0.0.1:8000".into()),
            (":path", path.into()),
            ("content-type", "application/json".into()),
            ("accept", "application/json, text/event-stream".into()),
            ("mcp-session-id", "S1".into()),
        ]
    }

    fn pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
        v.iter().map(|(n, x)| (*n, x.as_str())).collect()
    }

    fn req_head(seq: u64) -> impl Fn((u64, u64)) -> Got {
        move |t| Got::ReqHead {
            seq,
            method: "POST".into(),
            path: "/mcp".into(),
            session: Some("S1".into()),
            t,
        }
    }

    fn req_body(seq: u64, body: &'static str) -> impl Fn((u64, u64)) -> Got {
        move |t| Got::ReqBody {
            seq,
            body: body.into(),
            t,
        }
    }

    fn resp_head(seq: u64, status: u16, sse: bool) -> impl Fn((u64, u64)) -> Got {
        move |t| Got::RespHead {
            seq,
            status,
            sse,
            session: (status == 200).then(|| "S1".into()),
            t,
        }
    }

    fn done(seq: u64) -> impl Fn((u64, u64)) -> Got {
        move |_| Got::Done(seq)
    }

    /// Offset of the size update in the client's bytes, with the end of the HEADERS frame
    /// it starts in (it ends in the CONTINUATION after).
    struct Marks {
        update: usize,
        headers_end: usize,
    }

    /// An MCP session over h2c: the client's preface and SETTINGS, requests on streams 1, 3
    /// and 5 (stream 3's frames between stream 1's; stream 3's header block begins with a
    /// dynamic table size update cut by the HEADERS/CONTINUATION boundary); the server's
    /// SETTINGS, a JSON response on 1, an event stream on 3 with two events cut across DATA
    /// frames, and a 202 on 5 whose HEADERS carry END_STREAM.
    fn session() -> (Script, Marks) {
        use Side::{C, S};
        let mut ce = Encoder::new();
        let mut se = Encoder::new();
        let mut sc = Script::default();
        // Phase 1.
        sc.raw(C, frames::PREFACE);
        sc.raw(C, &settings(&[(1, 4096), (3, 100), (4, 65_535)]));
        let h1 = sc.frame(
            C,
            T_HEADERS,
            F_END_HEADERS,
            1,
            &enc(&mut ce, &pairs(&request("/mcp"))),
        );
        sc.want(C, h1, 0, req_head(1));
        let (b1a, b1b) = BODY1.as_bytes().split_at(40);
        sc.frame(C, T_DATA, 0, 1, b1a);
        // Stream 3: the size update's three bytes cut after the second.
        ce.set_max_table_size(1024);
        let mut block = size_update(1024);
        assert_eq!(block, [0x3f, 0xe1, 0x07]);
        let mut req3 = request("/mcp");
        req3.push(("mcp-protocol-version", "2025-06-18".into()));
        block.extend(enc(&mut ce, &pairs(&req3)));
        // It names entries stream 1's block put in the dynamic table.
        assert!(loona_hpack::Decoder::new().decode(&block[3..]).is_err());
        let h3 = sc.frame(C, T_HEADERS, 0, 3, &block[..2]);
        let marks = Marks {
            update: h3.0 + 9,
            headers_end: h3.1,
        };
        let c3 = sc.frame(C, T_CONTINUATION, F_END_HEADERS, 3, &block[2..]);
        sc.want(C, (h3.0, c3.1), 0, req_head(3));
        let d3 = sc.frame(C, T_DATA, F_END_STREAM, 3, BODY3.as_bytes());
        sc.want(C, (h3.0, d3.1), 0, req_body(3, BODY3));
        let d1 = sc.frame(C, T_DATA, F_END_STREAM, 1, b1b);
        sc.want(C, (h1.0, d1.1), 0, req_body(1, BODY1));
        sc.raw(S, &settings(&[(3, 128), (4, 65_535), (5, 16_384)]));
        sc.frame(S, T_WINDOW_UPDATE, 0, 0, &(1u32 << 20).to_be_bytes());
        sc.phase();
        // Phase 2.
        sc.frame(C, T_SETTINGS, F_ACK, 0, &[]);
        let block5 = enc(&mut ce, &pairs(&request("/mcp")));
        let h5 = sc.frame(C, T_HEADERS, F_END_HEADERS, 5, &block5);
        sc.want(C, h5, 0, req_head(5));
        let d5 = sc.frame(C, T_DATA, F_END_STREAM, 5, BODY5.as_bytes());
        sc.want(C, (h5.0, d5.1), 0, req_body(5, BODY5));
        sc.frame(S, T_SETTINGS, F_ACK, 0, &[]);
        let json = [
            (":status", "200"),
            ("content-type", "application/json"),
            ("mcp-session-id", "S1"),
        ];
        let r1 = sc.frame(S, T_HEADERS, F_END_HEADERS, 1, &enc(&mut se, &json));
        sc.want(S, r1, 0, resp_head(1, 200, false));
        let (r1a, r1b) = RESP1.as_bytes().split_at(50);
        sc.frame(S, T_DATA, 0, 1, r1a);
        let stream = [
            (":status", "200"),
            ("content-type", "text/event-stream"),
            ("mcp-session-id", "S1"),
        ];
        let block = enc(&mut se, &stream);
        // It names entries the first response put in the table.
        assert!(loona_hpack::Decoder::new().decode(&block).is_err());
        let r3 = sc.frame(S, T_HEADERS, F_END_HEADERS, 3, &block);
        sc.want(S, r3, 0, resp_head(3, 200, true));
        let events =
            format!("event: message\ndata: {EV1}\n\nevent: message\r\ndata: {EV2}\r\n\r\n");
        let (e1, rest) = events.as_bytes().split_at(30);
        let (e2, e3) = rest.split_at(EV1.len());
        let x1 = sc.frame(S, T_DATA, 0, 3, e1);
        let x3 = sc.frame(S, T_DATA, F_END_STREAM, 1, r1b);
        sc.want(S, (r1.0, x3.1), 0, |t| Got::RespBody {
            seq: 1,
            body: RESP1.into(),
            t,
        });
        sc.want(S, x3, 1, done(1));
        let x2 = sc.frame(S, T_DATA, 0, 3, e2);
        sc.want(S, (x1.0, x2.1), 0, |t| Got::Sse {
            seq: 3,
            event: "message".into(),
            data: EV1.into(),
            t,
        });
        sc.phase();
        // Phase 3.
        sc.frame(C, T_WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes());
        sc.frame(C, T_WINDOW_UPDATE, 0, 3, &100u32.to_be_bytes());
        let x4 = sc.frame(S, T_DATA, F_END_STREAM, 3, e3);
        sc.want(S, (x2.0, x4.1), 0, |t| Got::Sse {
            seq: 3,
            event: "message".into(),
            data: EV2.into(),
            t,
        });
        sc.want(S, x4, 1, done(3));
        let r5 = sc.frame(
            S,
            T_HEADERS,
            F_END_HEADERS | F_END_STREAM,
            5,
            &enc(&mut se, &[(":status", "202")]),
        );
        sc.want(S, r5, 0, resp_head(5, 202, false));
        sc.want(S, r5, 1, done(5));
        sc.frame(S, T_PING, 0, 0, &[1; 8]);
        (sc, marks)
    }

    /// The events in order, as a reader of the code would list them.
    #[test]
    fn session_events_in_order() {
        let (sc, _) = session();
        let whole = [(Side::C, 0..sc.c.len()), (Side::S, 0..sc.s.len())];
        let got = sc.expected(&whole);
        let names: Vec<String> = got
            .iter()
            .map(|g| match g {
                Got::ReqHead { seq, t, .. } => format!("req {seq} {t:?}"),
                Got::ReqBody { seq, t, .. } => format!("reqbody {seq} {t:?}"),
                Got::RespHead { seq, status, t, .. } => format!("resp {seq} {status} {t:?}"),
                Got::RespBody { seq, t, .. } => format!("respbody {seq} {t:?}"),
                Got::Sse { seq, t, .. } => format!("sse {seq} {t:?}"),
                Got::Done(seq) => format!("done {seq}"),
                other => format!("{other:?}"),
            })
            .collect();
        let (c, s) = ((1000, 1007), (2000, 2007));
        assert_eq!(
            names,
            [
                format!("req 1 {c:?}"),
                format!("req 3 {c:?}"),
                format!("reqbody 3 {c:?}"),
                format!("reqbody 1 {c:?}"),
                format!("req 5 {c:?}"),
                format!("reqbody 5 {c:?}"),
                format!("resp 1 200 {s:?}"),
                format!("resp 3 200 {s:?}"),
                format!("respbody 1 {s:?}"),
                "done 1".into(),
                format!("sse 3 {s:?}"),
                format!("sse 3 {s:?}"),
                "done 3".into(),
                format!("resp 5 202 {s:?}"),
                "done 5".into(),
            ]
        );
        check(&sc, &whole, "each direction whole");
    }

    /// Bytes fed to a connection, in order: which end wrote them, and where they are in its
    /// script.
    type Pushes = Vec<(Side, Range<usize>)>;

    /// Every arrangement of a script's bytes the tests feed: each direction whole, cut at
    /// every boundary and byte by byte; the directions by phase (either first), whole, cut
    /// and byte by byte; and zipped in pieces of several sizes. With what each is.
    fn every_split(sc: &Script) -> Vec<(Pushes, String)> {
        let whole = vec![(Side::C, 0..sc.c.len()), (Side::S, 0..sc.s.len())];
        let mut out = Vec::new();
        for (pushes, name) in [
            (whole, "each direction"),
            (sc.by_phase(false), "by phase, client first"),
            (sc.by_phase(true), "by phase, server first"),
        ] {
            for i in 0..=sc.c.len() + sc.s.len() {
                out.push((cut(&pushes, &[i]), format!("{name}, cut at {i}")));
            }
            out.push((bytewise(&pushes), format!("{name}, byte by byte")));
            out.push((pushes, format!("{name}, whole")));
        }
        for k in [1, 2, 3, 5, 8, 13, 64, 1000] {
            out.push((sc.zipped(k), format!("zipped by {k}")));
        }
        out
    }

    #[test]
    fn split_every_way() {
        let (sc, _) = session();
        for (pushes, what) in every_split(&sc) {
            check(&sc, &pushes, &what);
        }
    }

    /// The size update's bytes in three pushes, one of them also cut at the frame boundary.
    #[test]
    fn size_update_across_continuation_and_pushes() {
        let (sc, m) = session();
        let whole = [(Side::C, 0..sc.c.len()), (Side::S, 0..sc.s.len())];
        for cuts in [
            vec![m.update + 1, m.update + 2],
            vec![m.update + 1, m.headers_end],
            vec![
                m.update + 2,
                m.headers_end + 4,
                m.headers_end + 9,
                m.headers_end + 10,
            ],
        ] {
            check(&sc, &cut(&whole, &cuts), &format!("cuts {cuts:?}"));
        }
    }

    /// A size update above what the other side's SETTINGS allowed breaks the connection; the
    /// same bytes decode once those SETTINGS were seen.
    #[test]
    fn size_update_follows_the_peers_settings() {
        let mut ce = Encoder::new();
        let mut client = frames::PREFACE.to_vec();
        client.extend(settings(&[]));
        ce.set_max_table_size(8192);
        let mut block = size_update(8192);
        block.extend(enc(&mut ce, &pairs(&request("/mcp"))));
        client.extend(frame(T_HEADERS, F_END_HEADERS | F_END_STREAM, 1, &block));
        let server = settings(&[(1, 8192)]);
        let run = |order: &[(Dir, &[u8])]| {
            let mut c = Conn::detect(Dir::Out, &client, MAX).expect("h2");
            let mut got = Vec::new();
            for (dir, b) in order {
                c.push(*dir, b, 1, 2, &mut |e| got.push(own(e)));
            }
            got
        };
        let got = run(&[(Dir::In, &server), (Dir::Out, &client)]);
        assert!(matches!(&got[..], [Got::ReqHead { seq: 1, .. }]), "{got:?}");
        let got = run(&[(Dir::Out, &client), (Dir::In, &server)]);
        assert_eq!(
            got,
            [Got::Error("an HTTP/2 header block could not be decoded")]
        );
    }

    /// Bodies over `max_body` are reported by their length: a request, a response, an event.
    #[test]
    fn oversize_bodies() {
        let mut ce = Encoder::new();
        let mut se = Encoder::new();
        let mut client = frames::PREFACE.to_vec();
        client.extend(settings(&[]));
        client.extend(frame(
            T_HEADERS,
            F_END_HEADERS,
            1,
            &enc(&mut ce, &pairs(&request("/mcp"))),
        ));
        client.extend(frame(T_DATA, 0, 1, &[b'a'; 60]));
        client.extend(frame(T_DATA, F_END_STREAM, 1, &[b'b'; 40]));
        client.extend(frame(
            T_HEADERS,
            F_END_HEADERS,
            3,
            &enc(&mut ce, &pairs(&request("/mcp"))),
        ));
        client.extend(frame(T_DATA, F_END_STREAM, 3, b"{}"));
        let mut server = settings(&[]);
        let json = [(":status", "200"), ("content-type", "application/json")];
        server.extend(frame(T_HEADERS, F_END_HEADERS, 1, &enc(&mut se, &json)));
        for _ in 0..10 {
            server.extend(frame(T_DATA, 0, 1, &[b'x'; 50]));
        }
        let events = [(":status", "200"), ("content-type", "text/event-stream")];
        server.extend(frame(T_HEADERS, F_END_HEADERS, 3, &enc(&mut se, &events)));
        let big = format!("data: {}\n\n", "y".repeat(100));
        server.extend(frame(T_DATA, 0, 3, big.as_bytes()));
        server.extend(frame(T_DATA, F_END_STREAM, 3, b"data: {}\n\n"));
        server.extend(frame(T_DATA, F_END_STREAM, 1, b"z"));
        for pieces in [1, 7] {
            let mut c = Conn::detect(Dir::Out, &client, 64).expect("h2");
            let mut got = Vec::new();
            for ch in client.chunks(client.len().div_ceil(pieces)) {
                c.push(Dir::Out, ch, 1, 2, &mut |e| got.push(own(e)));
            }
            for ch in server.chunks(server.len().div_ceil(pieces)) {
                c.push(Dir::In, ch, 3, 4, &mut |e| got.push(own(e)));
                // A body past the limit is counted, not held.
                assert!(c.buffered() < 2 * 64 + 9 + 200, "{}", c.buffered());
            }
            let got: Vec<Got> = got
                .into_iter()
                .filter(|g| !matches!(g, Got::ReqHead { .. } | Got::RespHead { .. }))
                .collect();
            assert_eq!(
                got,
                [
                    Got::Oversize { seq: 1, len: 100 },
                    Got::ReqBody {
                        seq: 3,
                        body: "{}".into(),
                        t: (1, 2)
                    },
                    Got::Oversize { seq: 3, len: 106 },
                    Got::Sse {
                        seq: 3,
                        event: "message".into(),
                        data: "{}".into(),
                        t: (3, 4)
                    },
                    Got::Done(3),
                    Got::Oversize { seq: 1, len: 501 },
                    Got::Done(1),
                ],
                "{pieces} pieces"
            );
        }
    }

    /// RST_STREAM and GOAWAY leave their streams open: `finish` returns them, in stream
    /// order, with what was seen of their responses.
    #[test]
    fn reset_streams_are_left_to_finish() {
        let mut ce = Encoder::new();
        let mut se = Encoder::new();
        let mut client = frames::PREFACE.to_vec();
        client.extend(settings(&[]));
        for s in [1, 3, 5] {
            client.extend(frame(
                T_HEADERS,
                F_END_HEADERS,
                s,
                &enc(&mut ce, &pairs(&request("/mcp"))),
            ));
        }
        client.extend(frame(T_DATA, F_END_STREAM, 3, b"{}"));
        client.extend(frame(T_DATA, F_END_STREAM, 1, b"{}"));
        client.extend(frame(T_DATA, 0, 5, b"{\"half\""));
        let mut server = settings(&[]);
        let json = [(":status", "200"), ("content-type", "application/json")];
        server.extend(frame(T_HEADERS, F_END_HEADERS, 1, &enc(&mut se, &json)));
        server.extend(frame(T_DATA, F_END_STREAM, 1, b"{\"ok\":1}"));
        server.extend(frame(T_RST_STREAM, 0, 5, &8u32.to_be_bytes()));
        server.extend(frame(T_HEADERS, F_END_HEADERS, 3, &enc(&mut se, &json)));
        server.extend(frame(T_DATA, 0, 3, b"{\"partial\""));
        server.extend(frame(T_RST_STREAM, 0, 3, &2u32.to_be_bytes()));
        let mut away = 3u32.to_be_bytes().to_vec();
        away.extend_from_slice(&0u32.to_be_bytes());
        server.extend(frame(T_GOAWAY, 0, 0, &away));
        let mut c = Conn::detect(Dir::In, &client, MAX).expect("h2");
        assert_eq!(c.role(), Some(Role::Server));
        let mut got = Vec::new();
        c.push(Dir::In, &client, 10, 20, &mut |e| got.push(own(e)));
        c.push(Dir::Out, &server, 30, 40, &mut |e| got.push(own(e)));
        let kinds: Vec<String> = got
            .iter()
            .map(|g| match g {
                Got::ReqHead { seq, .. } => format!("req {seq}"),
                Got::ReqBody { seq, .. } => format!("reqbody {seq}"),
                Got::RespHead { seq, .. } => format!("resp {seq}"),
                Got::RespBody { seq, .. } => format!("respbody {seq}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "req 1",
                "req 3",
                "req 5",
                "reqbody 3",
                "reqbody 1",
                "resp 1",
                "respbody 1",
                "Done(1)",
                "resp 3"
            ]
        );
        // The partial bodies are held until the end.
        assert_eq!(c.buffered(), 7 + 10);
        let mut late = Vec::new();
        let left = c.finish(50, &mut |e| late.push(own(e)));
        assert!(late.is_empty());
        let seqs: Vec<(u64, Option<u16>)> = left
            .iter()
            .map(|t| (t.seq, t.response.as_ref().and_then(|r| r.status)))
            .collect();
        assert_eq!(seqs, [(3, Some(200)), (5, None)]);
        assert_eq!(left[0].response.as_ref().map(|r| r.body_bytes), Some(10));
        assert_eq!(left[1].request.first_enter_ns, 10);
        assert_eq!(c.buffered(), 0);
    }

    /// A connection that cannot be read on gives exactly one `Error`, however its bytes are
    /// cut, and nothing after it (nor anything left to `finish`).
    #[test]
    fn broken_header_block_is_one_error() {
        let mut ce = Encoder::new();
        let mut client = frames::PREFACE.to_vec();
        client.extend(settings(&[]));
        client.extend(frame(
            T_HEADERS,
            F_END_HEADERS,
            1,
            &enc(&mut ce, &pairs(&request("/mcp"))),
        ));
        client.extend(frame(T_DATA, 0, 1, b"{\"jsonrpc\""));
        let mut after = frame(
            T_HEADERS,
            F_END_HEADERS,
            5,
            &enc(&mut ce, &[(":path", "/")]),
        );
        after.extend(frame(T_DATA, F_END_STREAM, 1, b"}"));
        let mut se = Encoder::new();
        let mut server = settings(&[]);
        server.extend(frame(
            T_HEADERS,
            F_END_HEADERS | F_END_STREAM,
            1,
            &enc(&mut se, &[(":status", "200")]),
        ));
        let broken: [(&[u8], &str); 4] = [
            // An index past the tables.
            (
                &frame(T_HEADERS, F_END_HEADERS, 3, &[0xbf]),
                "an HTTP/2 header block could not be decoded",
            ),
            // A literal whose length runs past the block, in a CONTINUATION.
            (
                &[
                    frame(T_HEADERS, 0, 3, &[0x82]),
                    frame(T_CONTINUATION, F_END_HEADERS, 3, &[0x40, 0x7f]),
                ]
                .concat(),
                "an HTTP/2 header block could not be decoded",
            ),
            // A block that decodes to a head HTTP does not accept.
            (
                &frame(
                    T_HEADERS,
                    F_END_HEADERS,
                    3,
                    &enc(
                        &mut Encoder::new(),
                        &[(":method", "POST"), ("content-length", "x")],
                    ),
                ),
                "bad Content-Length",
            ),
            // Frames out of order.
            (
                &frame(T_CONTINUATION, F_END_HEADERS, 3, &[0x82]),
                "CONTINUATION without HEADERS",
            ),
        ];
        for (bad, why) in broken {
            let mut bytes = client.clone();
            bytes.extend_from_slice(bad);
            bytes.extend_from_slice(&after);
            for i in 0..=bytes.len() {
                let mut c = Conn::detect(Dir::Out, &client, MAX).expect("h2");
                let mut got = Vec::new();
                c.push(Dir::Out, &bytes[..i], 1, 2, &mut |e| got.push(own(e)));
                c.push(Dir::Out, &bytes[i..], 3, 4, &mut |e| got.push(own(e)));
                c.push(Dir::In, &server, 5, 6, &mut |e| got.push(own(e)));
                assert!(
                    matches!(&got[0], Got::ReqHead { seq: 1, .. }),
                    "{why} {i}: {got:?}"
                );
                assert_eq!(got[1..], [Got::Error(why)], "{why} cut at {i}");
                assert!(c.finish(7, &mut |_| panic!("an event")).is_empty());
                // A block that fails above the frame reader (lost, or a head HTTP refuses)
                // leaves the reader whole: it keeps the partial frame the breaking push
                // ended in (never more than that push's bytes), until the connection goes.
                assert!(c.buffered() <= after.len(), "{why} cut at {i}");
            }
        }
        // The server's bytes break it too, once.
        let mut c = Conn::detect(Dir::Out, &client, MAX).expect("h2");
        let mut got = Vec::new();
        c.push(Dir::Out, &client, 1, 2, &mut |e| got.push(own(e)));
        let ping_on_stream = frame(T_PING, 0, 1, &[0; 8]);
        for _ in 0..3 {
            c.push(Dir::In, &ping_on_stream, 3, 4, &mut |e| got.push(own(e)));
            c.push(Dir::Out, &after, 3, 4, &mut |e| got.push(own(e)));
        }
        assert_eq!(got[1..], [Got::Error("connection frame on a stream")]);
    }

    #[test]
    fn detect() {
        let preface = [frames::PREFACE.as_slice(), &settings(&[(3, 100)])].concat();
        let server_settings = [
            settings(&[(3, 128), (4, 65_535), (5, 16_384)]),
            frame(T_WINDOW_UPDATE, 0, 0, &65_535u32.to_be_bytes()),
        ]
        .concat();
        let role = |dir, b: &[u8]| Conn::detect(dir, b, MAX).and_then(|c| c.role());
        assert_eq!(role(Dir::Out, frames::PREFACE), Some(Role::Client));
        assert_eq!(role(Dir::Out, &preface), Some(Role::Client));
        assert_eq!(role(Dir::In, &preface), Some(Role::Server));
        assert_eq!(role(Dir::Out, &server_settings), Some(Role::Server));
        assert_eq!(role(Dir::In, &server_settings), Some(Role::Client));
        assert_eq!(
            role(Dir::In, &frame(T_SETTINGS, F_ACK, 0, &[])),
            Some(Role::Client)
        );
        let no: [&[u8]; 8] = [
            b"",
            // Too short to tell.
            &frames::PREFACE[..16],
            b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"PRI * HTTP/1.1\r\n\r\n\r\n\r\n\r\n\r\n",
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"}\n{"jsonrpc":"2.0","id":2}"#,
            // A connection joined mid-way: its header blocks cannot be read.
            &frame(T_HEADERS, F_END_HEADERS, 7, &[0x82, 0x86]),
        ];
        for b in no {
            for dir in [Dir::In, Dir::Out] {
                assert_eq!(role(dir, b), None, "{dir:?} {:?}", text(b));
            }
        }
    }

    /// A server whose first record is its own SETTINGS (written before it read the preface)
    /// reads the client's preface and request after it.
    #[test]
    fn server_settings_first() {
        let mut ce = Encoder::new();
        let mut se = Encoder::new();
        let server = settings(&[(3, 100)]);
        let mut c = Conn::detect(Dir::Out, &server, MAX).expect("h2");
        assert_eq!(c.role(), Some(Role::Server));
        let mut got = Vec::new();
        c.push(Dir::Out, &server, 1, 2, &mut |e| got.push(own(e)));
        let mut client = frames::PREFACE.to_vec();
        client.extend(settings(&[]));
        client.extend(frame(
            T_HEADERS,
            F_END_HEADERS,
            1,
            &enc(&mut ce, &pairs(&request("/mcp"))),
        ));
        client.extend(frame(T_DATA, F_END_STREAM, 1, b"{}"));
        c.push(Dir::In, &client, 3, 4, &mut |e| got.push(own(e)));
        let resp = frame(
            T_HEADERS,
            F_END_HEADERS | F_END_STREAM,
            1,
            &enc(&mut se, &[(":status", "202")]),
        );
        c.push(Dir::Out, &resp, 5, 6, &mut |e| got.push(own(e)));
        assert_eq!(
            got,
            [
                req_head(1)((3, 4)),
                req_body(1, "{}")((3, 4)),
                Got::RespHead {
                    seq: 1,
                    status: 202,
                    sse: false,
                    session: None,
                    t: (5, 6)
                },
                Got::Done(1),
            ]
        );
    }

    // A connection joined mid-way.

    /// A header block for `list` from an encoder that already encoded it once, for
    /// bytes the reader never saw: it names entries of a dynamic table the agent does not
    /// have (and cannot be decoded from scratch).
    fn warm_block(e: &mut Encoder<'_>, list: &[(&str, &str)]) -> Vec<u8> {
        let block = enc(e, list);
        assert!(loona_hpack::Decoder::new().decode(&block).is_err());
        block
    }

    const OK_JSON: [(&str, &str); 3] = [
        (":status", "200"),
        ("content-type", "application/json"),
        ("mcp-session-id", "S1"),
    ];
    const OK_SSE: [(&str, &str); 3] = [
        (":status", "200"),
        ("content-type", "text/event-stream"),
        ("mcp-session-id", "S1"),
    ];

    fn undecoded(seq: u64, body: Option<Fields>) -> impl Fn((u64, u64)) -> Got {
        move |t| Got::Undecoded { seq, body, t }
    }

    fn sniffed(kind: Option<BodyKind>) -> Option<Fields> {
        Some(Fields::NotDecoded { body: kind })
    }

    /// An MCP session over h2c the agent joined mid-way. Already open: stream 7 (the client
    /// still sending its body, the server answering) and stream 5 (the server's last DATA
    /// only). Opened in view: stream 9, a POST whose JSON answer's first DATA frame is only
    /// whitespace (its kind waits for the next one), and stream 11, whose event stream's
    /// first DATA frame is `da` (a prefix of `data:`). Every header block names dynamic
    /// table entries the agent never saw; the server's first one has no static `:status`
    /// (nothing in it tells who sent it).
    fn joined_session() -> Script {
        use Side::{C, S};
        let mut ce = Encoder::new();
        let mut se = Encoder::new();
        let req = request("/mcp");
        enc(&mut ce, &pairs(&req));
        let (ok, sse) = (OK_JSON, OK_SSE);
        enc(&mut se, &ok);
        enc(&mut se, &sse);
        let mut sc = Script::default();
        // Phase 1: what was in flight, and the request on 9.
        sc.frame(C, T_WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes());
        sc.frame(C, T_DATA, 0, 7, b"{\"jsonrpc\":\"2.0\",");
        let h9 = sc.frame(
            C,
            T_HEADERS,
            F_END_HEADERS,
            9,
            &warm_block(&mut ce, &pairs(&req)),
        );
        sc.want(C, h9, 0, undecoded(9, None));
        let (b3a, b3b) = BODY3.as_bytes().split_at(20);
        sc.frame(C, T_DATA, 0, 9, b3a);
        let d9 = sc.frame(C, T_DATA, F_END_STREAM, 9, b3b);
        sc.want(C, (h9.0, d9.1), 0, req_body(9, BODY3));
        sc.frame(C, T_DATA, F_END_STREAM, 7, b"\"id\":7}");
        sc.frame(S, T_PING, F_ACK, 0, &[2; 8]);
        // Only dynamic entries: who sent it is not known from it.
        let old = warm_block(&mut se, &[("mcp-session-id", "S1")]);
        assert_eq!(frames::static_sender(&old), None);
        sc.frame(S, T_HEADERS, F_END_HEADERS, 7, &old);
        sc.frame(
            S,
            T_DATA,
            F_END_STREAM,
            7,
            b"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}",
        );
        sc.phase();
        // Phase 2: the answer on 9, an old stream's end, the request on 11.
        let r9 = sc.frame(S, T_HEADERS, F_END_HEADERS, 9, &warm_block(&mut se, &ok));
        sc.frame(S, T_DATA, 0, 9, b" \r\n");
        let x9 = sc.frame(S, T_DATA, 0, 9, &RESP1.as_bytes()[..30]);
        sc.want_at(S, r9, x9.1, undecoded(9, sniffed(Some(BodyKind::Json))));
        let y9 = sc.frame(S, T_DATA, F_END_STREAM, 9, &RESP1.as_bytes()[30..]);
        sc.want(S, (r9.0, y9.1), 0, |t| Got::RespBody {
            seq: 9,
            body: format!(" \r\n{RESP1}"),
            t,
        });
        sc.want(S, y9, 1, done(9));
        sc.frame(S, T_DATA, F_END_STREAM, 5, b"}}");
        let h11 = sc.frame(C, T_HEADERS, F_END_HEADERS, 11, &enc(&mut ce, &pairs(&req)));
        sc.want(C, h11, 0, undecoded(11, None));
        let d11 = sc.frame(C, T_DATA, F_END_STREAM, 11, BODY5.as_bytes());
        sc.want(C, (h11.0, d11.1), 0, req_body(11, BODY5));
        sc.phase();
        // Phase 3: the event stream on 11.
        let r11 = sc.frame(S, T_HEADERS, F_END_HEADERS, 11, &warm_block(&mut se, &sse));
        let x11 = sc.frame(S, T_DATA, 0, 11, b"da");
        let rest = format!("ta: {EV1}\n\n: ping\n\nevent: message\ndata: {EV2}\n\n");
        let y11 = sc.frame(S, T_DATA, 0, 11, rest.as_bytes());
        sc.want_at(
            S,
            r11,
            y11.1,
            undecoded(11, sniffed(Some(BodyKind::EventStream))),
        );
        sc.want(S, (x11.0, y11.1), 1, sse_event(11, "message", EV1));
        sc.want(S, y11, 2, sse_event(11, "message", EV2));
        let z11 = sc.frame(S, T_DATA, F_END_STREAM, 11, b"");
        sc.want(S, z11, 0, done(11));
        sc
    }

    fn sse_event(seq: u64, event: &'static str, data: &'static str) -> impl Fn((u64, u64)) -> Got {
        move |t| Got::Sse {
            seq,
            event: event.into(),
            data: data.into(),
            t,
        }
    }

    /// Joined mid-way and seen by a process at either role, `pushes` give exactly the
    /// expected events, after one `Role` telling that role; the old streams are counted,
    /// every header block too; nothing is left over or held.
    fn check_joined(sc: &Script, pushes: &[(Side, Range<usize>)], what: &str) {
        let want = sc.expected(pushes);
        for role in [Role::Client, Role::Server] {
            let first = sc.side(pushes[0].0);
            let mut c = Conn::joined(first, MAX).expect("frames");
            assert_eq!(c.role(), None);
            let mut got = Vec::new();
            for (j, (side, r)) in pushes.iter().enumerate() {
                let data = &sc.side(*side)[r.clone()];
                let dir = dir_of(role, *side);
                c.push(dir, data, enter_t(j), exit_t(j), &mut |e| got.push(own(e)));
            }
            let told = got.iter().position(|g| matches!(g, Got::Role(_)));
            let told = told.unwrap_or_else(|| panic!("{what} ({role:?}): no role in {got:?}"));
            assert_eq!(got.remove(told), Got::Role(role), "{what}");
            assert_eq!(told, 0, "{what} ({role:?}): the role first");
            assert_eq!(got, want, "{what} ({role:?})");
            assert_eq!(c.role(), Some(role));
            assert_eq!(c.buffered(), 0, "{what} ({role:?})");
            assert!(c.finish(9, &mut |e| panic!("{e:?}")).is_empty(), "{what}");
            let counts = Midstream {
                connections: 1,
                streams_skipped: 2,
                header_blocks_undecoded: 5,
            };
            assert_eq!(c.take_midstream(), counts, "{what} ({role:?})");
            assert_eq!(c.take_midstream(), Midstream::default());
        }
    }

    #[test]
    fn joined_mid_way_split_every_way() {
        let sc = joined_session();
        for (pushes, what) in every_split(&sc) {
            check_joined(&sc, &pushes, &what);
        }
    }

    /// Streams seen before a header block tells which end is which are skipped, even one
    /// opened in view; the first block with a static request pseudo-header settles it.
    #[test]
    fn joined_before_the_role_is_known() {
        let mut se = Encoder::new();
        let mut ce = Encoder::new();
        let ok = [("mcp-session-id", "S1")];
        enc(&mut se, &ok);
        // A response whose block names only dynamic entries, with its body; then a request.
        let mut server = frame(T_HEADERS, F_END_HEADERS, 3, &warm_block(&mut se, &ok));
        server.extend(frame(T_DATA, F_END_STREAM, 3, b"{}"));
        let req = request("/mcp");
        let mut client = frame(T_HEADERS, F_END_HEADERS, 5, &enc(&mut ce, &pairs(&req)));
        client.extend(frame(T_DATA, F_END_STREAM, 5, BODY5.as_bytes()));
        let mut c = Conn::joined(&server, MAX).expect("frames");
        let mut got = Vec::new();
        c.push(Dir::In, &server, 1, 2, &mut |e| got.push(own(e)));
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(c.role(), None);
        c.push(Dir::Out, &client, 3, 4, &mut |e| got.push(own(e)));
        assert_eq!(
            got,
            [
                Got::Role(Role::Client),
                Got::Undecoded {
                    seq: 5,
                    body: None,
                    t: (3, 4)
                },
                Got::ReqBody {
                    seq: 5,
                    body: BODY5.into(),
                    t: (3, 4)
                },
            ]
        );
        let m = c.take_midstream();
        assert_eq!((m.streams_skipped, m.header_blocks_undecoded), (1, 2));
        // A response with no body: its head goes up without a kind.
        let mut end = Vec::new();
        let block = enc(&mut se, &[(":status", "202")]);
        let head = frame(T_HEADERS, F_END_HEADERS | F_END_STREAM, 5, &block);
        c.push(Dir::In, &head, 5, 6, &mut |e| end.push(own(e)));
        let want = [
            Got::Undecoded {
                seq: 5,
                body: sniffed(None),
                t: (5, 6),
            },
            Got::Done(5),
        ];
        assert_eq!(end, want);
    }

    /// What a response body not decoded is told by, and where it goes then: JSON and
    /// anything else gathered as a body, an event stream to its parser; a body too short to
    /// tell is `Other`, one with no bytes has no kind, and one that went past the body limit
    /// before it could be told is `Other` (reported oversize).
    #[test]
    fn joined_bodies_of_every_kind() {
        let run = |body: &[&[u8]], max: usize| {
            let mut ce = Encoder::new();
            let req = request("/mcp");
            let mut client = frame(T_HEADERS, F_END_HEADERS, 1, &enc(&mut ce, &pairs(&req)));
            client.extend(frame(T_DATA, F_END_STREAM, 1, b"{}"));
            let mut server = frame(T_HEADERS, F_END_HEADERS, 1, &[0x88]);
            for (i, b) in body.iter().enumerate() {
                let flags = if i + 1 == body.len() { F_END_STREAM } else { 0 };
                server.extend(frame(T_DATA, flags, 1, b));
            }
            let mut c = Conn::joined(&client, max).expect("frames");
            c.push(Dir::Out, &client, 1, 2, &mut |_| {});
            let mut got = Vec::new();
            c.push(Dir::In, &server, 3, 4, &mut |e| got.push(own(e)));
            got.into_iter()
                .map(|g| match g {
                    Got::Undecoded { body, .. } => format!("{body:?}"),
                    Got::RespBody { body, .. } => format!("body {body:?}"),
                    Got::Sse { data, .. } => format!("event {data:?}"),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        let kind = |k: Option<BodyKind>, then: &[&str]| {
            let mut v = vec![format!("{:?}", sniffed(k))];
            v.extend(then.iter().map(|s| s.to_string()));
            v.push("Done(1)".into());
            v
        };
        use BodyKind::{EventStream, Json, Other};
        assert_eq!(run(&[b"[1]"], MAX), kind(Some(Json), &[r#"body "[1]""#]));
        let sse = kind(Some(EventStream), &[r#"event "x""#]);
        assert_eq!(run(&[b"\n\n", b"id: 1\ndata: x\n\n"], MAX), sse);
        assert_eq!(run(&[b": hi\n\ndata: x\n\n"], MAX), sse);
        assert_eq!(run(&[b"ret", b"ry: 5\ndata: x\n\n"], MAX), sse);
        let other = |b: &str| kind(Some(Other), &[&format!("body {b:?}")]);
        assert_eq!(run(&[b"<html>"], MAX), other("<html>"));
        assert_eq!(run(&[b"  data: x\n"], MAX), other("  data: x\n"));
        assert_eq!(run(&[b"dat"], MAX), other("dat"));
        assert_eq!(run(&[b"  ", b""], MAX), other("  "));
        assert_eq!(run(&[b""], MAX), kind(None, &[]));
        let blank = vec![b'\n'; 2000];
        let over = kind(Some(Other), &["Oversize { seq: 1, len: 2002 }"]);
        assert_eq!(run(&[&blank, b"{}"], 64), over);
    }
}
