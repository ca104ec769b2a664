//! Passive HTTP/2 frame and header-block reconstruction (RFC 9113, RFC 7541).
//!
//! A [`Reader`] consumes the plaintext bytes that ONE side of a connection
//! wrote (one direction only), in order, in records of any size, and reports
//! the frames an observer cares about as [`Frame`] values: decoded header
//! blocks (HEADERS + CONTINUATION), DATA payloads, RST_STREAM and GOAWAY.
//! It never produces bytes to send; it only watches. Two readers (one per
//! direction) make up a connection; the caller wires SETTINGS between them
//! with [`Reader::advertised_header_table_size`] and
//! [`Reader::set_max_table_size`].
//!
//! Design notes:
//! * A frame that arrives whole inside one [`Reader::push`] is handed out by
//!   borrowing from the pushed slice; only a frame that straddles pushes is
//!   copied into an internal buffer (bounded by the `max_frame_payload` given
//!   to [`Reader::new`]).
//! * Header blocks are decoded with `loona-hpack` once complete (after the
//!   frame with END_HEADERS). Fragments are only copied when the block spans
//!   several frames or pushes, and only while the reader is synced (or peeks).
//! * A reader of a connection joined mid-way ([`Reader::joined`]) never decodes
//!   a header block: the dynamic table its indices refer to was built before
//!   the agent came. Until the connection shows who writes which direction, it
//!   reads the block's static table indices alone ([`static_sender`]) to tell a
//!   request's block from a response's.
//! * Memory is bounded: a partial frame is at most `9 + max_frame_payload`
//!   bytes, a header block at most [`MAX_HEADER_BLOCK`], the HPACK dynamic
//!   table at most [`MAX_HPACK_TABLE`], a decoded header list at most
//!   [`MAX_HEADER_LIST_BYTES`] / [`MAX_HEADER_FIELDS`].
//! * Nothing here panics on input; malformed input yields `Err` from
//!   [`Reader::push`] (the reader then stays broken).

use std::borrow::Cow;
use std::fmt;

use loona_hpack::Decoder;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest frame payload HTTP/2 can express (2^24 − 1); `max_frame_payload`
/// passed to [`Reader::new`] is clamped to this.
pub const MAX_FRAME_PAYLOAD_LIMIT: usize = (1 << 24) - 1;

/// Largest encoded header block (all fragments of HEADERS / PUSH_PROMISE +
/// CONTINUATION, after padding and priority are removed). A larger block makes
/// [`Reader::push`] return `Err`.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Largest decoded header list, counted as the sum of name and value lengths.
/// A larger list is reported as [`Frame::HeadersLost`] with
/// [`LostReason::TooLarge`]; the HPACK table stays in sync.
pub const MAX_HEADER_LIST_BYTES: usize = 64 * 1024;

/// Largest number of fields in a decoded header list; more is reported like
/// [`MAX_HEADER_LIST_BYTES`].
pub const MAX_HEADER_FIELDS: usize = 256;

/// Upper bound on the HPACK dynamic table size the decoder accepts, whatever
/// the peer advertised. A size update above it fails decoding (the reader
/// then becomes unsynced).
pub const MAX_HPACK_TABLE: u32 = 64 * 1024;

/// Largest number of Huffman-coded strings in one header block handed to the
/// HPACK decoder. `loona-hpack` rebuilds its Huffman tables for every such
/// string (tens of microseconds each), so a block with more is not decoded:
/// it is reported as [`LostReason::TooLarge`] and the reader becomes
/// unsynced. A block over it would exceed [`MAX_HEADER_FIELDS`] anyway (each
/// field carries at most two strings).
pub const MAX_HUFFMAN_STRINGS: usize = 2 * MAX_HEADER_FIELDS;

/// Default SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2).
const DEFAULT_HPACK_TABLE: u32 = 4096;

/// Buffers whose capacity grew above this are released after use.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Frame header length.
const HDR_LEN: usize = 9;

/// Largest frame payload accepted by [`looks_like`] (the default
/// SETTINGS_MAX_FRAME_SIZE).
const LOOKS_MAX_LEN: usize = 16_384;

pub(crate) const T_DATA: u8 = 0;
pub(crate) const T_HEADERS: u8 = 1;
const T_PRIORITY: u8 = 2;
pub(crate) const T_RST_STREAM: u8 = 3;
pub(crate) const T_SETTINGS: u8 = 4;
const T_PUSH_PROMISE: u8 = 5;
pub(crate) const T_PING: u8 = 6;
pub(crate) const T_GOAWAY: u8 = 7;
pub(crate) const T_WINDOW_UPDATE: u8 = 8;
pub(crate) const T_CONTINUATION: u8 = 9;

pub(crate) const F_END_STREAM: u8 = 0x1;
pub(crate) const F_ACK: u8 = 0x1;
pub(crate) const F_END_HEADERS: u8 = 0x4;
const F_PADDED: u8 = 0x8;
const F_PRIORITY: u8 = 0x20;

/// Highest error code defined by RFC 9113 (HTTP_1_1_REQUIRED).
const MAX_KNOWN_ERROR_CODE: u32 = 0xd;

/// Who sent the bytes a Reader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The connection's client (sends the preface, opens odd streams).
    Client,
    /// The connection's server.
    Server,
}

/// One decoded header field. Both parts are owned copies; the name is
/// exactly as on the wire (HTTP/2 requires lower case, not checked here).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Field {
    /// Field name, e.g. `:path` or `content-type`.
    pub name: Vec<u8>,
    /// Field value.
    pub value: Vec<u8>,
}

/// Why a header block was reported as [`Frame::HeadersLost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// The reader is not synced (joined mid-way, or an earlier HPACK error).
    NotSynced,
    /// HPACK decoding of this block failed; the reader is now unsynced.
    Hpack,
    /// The block decoded fine but the list exceeded [`MAX_HEADER_LIST_BYTES`]
    /// or [`MAX_HEADER_FIELDS`]; the reader stays synced. Also used, with the
    /// reader becoming unsynced, for a block with more than
    /// [`MAX_HUFFMAN_STRINGS`] Huffman strings (not decoded at all).
    TooLarge,
}

/// What a Reader found, in wire order.
///
/// `enter_ns` is the `enter_ns` of the push that carried the frame's first
/// byte (for header blocks: the HEADERS frame's first byte); `exit_ns` is the
/// `exit_ns` of the push that completed it (for header blocks: the last
/// CONTINUATION).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete header block (HEADERS + any CONTINUATION), decoded.
    /// Trailers are also this.
    Headers {
        /// Stream id.
        stream: u32,
        /// Decoded fields in wire order (valid until the callback returns).
        fields: &'a [Field],
        /// END_STREAM flag of the HEADERS frame.
        end_stream: bool,
        /// See the enum docs.
        enter_ns: u64,
        /// See the enum docs.
        exit_ns: u64,
    },
    /// A header block that could not be decoded; `reason` says why.
    HeadersLost {
        /// Stream id.
        stream: u32,
        /// END_STREAM flag of the HEADERS frame.
        end_stream: bool,
        /// Why the block was not decoded (field added to the brief's API).
        reason: LostReason,
        /// Who sent the block, as its pseudo-header fields' static table indices say (see
        /// [`static_sender`]): only while the reader peeks ([`Reader::joined`]), and only
        /// when they say it.
        sent_by: Option<Sender>,
        /// See the enum docs.
        enter_ns: u64,
        /// See the enum docs.
        exit_ns: u64,
    },
    /// DATA payload without padding.
    Data {
        /// Stream id.
        stream: u32,
        /// Payload with padding removed (valid until the callback returns).
        data: &'a [u8],
        /// END_STREAM flag.
        end_stream: bool,
        /// See the enum docs.
        enter_ns: u64,
        /// See the enum docs.
        exit_ns: u64,
    },
    /// RST_STREAM.
    Reset {
        /// Stream id.
        stream: u32,
        /// Error code.
        code: u32,
        /// See the enum docs.
        exit_ns: u64,
    },
    /// GOAWAY.
    GoAway {
        /// Last stream id the sender may have processed.
        last_stream: u32,
        /// Error code.
        code: u32,
        /// See the enum docs.
        exit_ns: u64,
    },
}

/// A parsed 9-byte frame header.
#[derive(Debug, Clone, Copy)]
struct Hdr {
    len: usize,
    typ: u8,
    flags: u8,
    /// Stream id with the reserved bit masked off.
    stream: u32,
    /// The reserved bit.
    reserved: bool,
}

impl Hdr {
    fn parse(b: &[u8; HDR_LEN]) -> Hdr {
        let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        let raw = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        Hdr {
            len,
            typ: b[3],
            flags: b[4],
            stream: raw & 0x7fff_ffff,
            reserved: raw >> 31 != 0,
        }
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Times of the push(es) a frame came in.
#[derive(Debug, Clone, Copy)]
struct Times {
    enter: u64,
    exit: u64,
}

/// A header block waiting for its CONTINUATION frames.
#[derive(Debug, Clone, Copy)]
struct Block {
    stream: u32,
    end_stream: bool,
    enter_ns: u64,
    /// Encoded length so far (also counted when fragments are not kept).
    len: usize,
    /// PUSH_PROMISE block: decoded for table sync, never emitted.
    push: bool,
}

fn be32(b: &[u8]) -> u32 {
    b.first_chunk::<4>().map_or(0, |c| u32::from_be_bytes(*c))
}

/// Removes the Pad Length byte and the padding of a PADDED frame.
fn unpad<'p>(h: &Hdr, p: &'p [u8]) -> Result<&'p [u8], &'static str> {
    if !h.has(F_PADDED) {
        return Ok(p);
    }
    let (&pad, rest) = p.split_first().ok_or("padded frame without pad length")?;
    let keep = rest
        .len()
        .checked_sub(usize::from(pad))
        .ok_or("padding longer than frame")?;
    rest.get(..keep).ok_or("padding longer than frame")
}

/// Whether a SETTINGS value is allowed for its id (RFC 9113 §6.5.2);
/// unknown ids are always fine.
fn setting_ok(id: u16, v: u32) -> bool {
    match id {
        2 => v <= 1,
        4 => v <= 0x7fff_ffff,
        5 => (16_384..=MAX_FRAME_PAYLOAD_LIMIT as u32).contains(&v),
        _ => true,
    }
}

/// Iterates `(id, value)` over whole 6-byte SETTINGS entries.
fn settings(p: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    p.chunks_exact(6)
        .map(|c| (u16::from_be_bytes([c[0], c[1]]), be32(&c[2..])))
}

/// Keeps a drained buffer's allocation unless it grew large.
fn recycle(mut v: Vec<u8>) -> Vec<u8> {
    v.clear();
    if v.capacity() > KEEP_CAPACITY {
        Vec::new()
    } else {
        v
    }
}

/// Appends `add` to `buf`, never growing capacity beyond `total` (the final
/// size), but still doubling so that many small appends stay linear.
fn append_bounded(buf: &mut Vec<u8>, add: &[u8], total: usize) {
    if buf.capacity() - buf.len() < add.len() {
        let need = buf.len() + add.len();
        let want = need.max(total.min(buf.capacity().saturating_mul(2)));
        buf.reserve_exact(want - buf.len());
    }
    buf.extend_from_slice(add);
}

/// Reconstructs HTTP/2 frames and header lists from one direction of a
/// connection. See the module docs.
pub struct Reader {
    sender: Sender,
    max_frame: usize,
    /// Bytes of the client preface still expected.
    preface_at: usize,
    /// Partial frame (header + payload so far); empty when at a boundary.
    buf: Vec<u8>,
    /// `enter_ns` of the push that carried `buf`'s first byte.
    buf_enter: u64,
    /// Header block awaiting CONTINUATION.
    block: Option<Block>,
    /// Fragments of `block` (only kept while synced).
    block_buf: Vec<u8>,
    decoder: Decoder<'static>,
    synced: bool,
    /// Header blocks are kept while unsynced, to tell who sent them by their static table
    /// indices ([`Reader::joined`], until [`Reader::stop_peeking`]).
    peek: bool,
    lost: u64,
    advertised_table: Option<u32>,
    /// Scratch list handed out in [`Frame::Headers`].
    fields: Vec<Field>,
    broken: Option<&'static str>,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("sender", &self.sender)
            .field("max_frame", &self.max_frame)
            .field("preface_at", &self.preface_at)
            .field("buffered", &self.buffered())
            .field("block", &self.block)
            .field("synced", &self.synced)
            .field("peek", &self.peek)
            .field("lost", &self.lost)
            .field("advertised_table", &self.advertised_table)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Creates a reader for the bytes `sender` writes.
    ///
    /// `from_start`: true when the reader sees the connection from its first
    /// byte (a client then must start with [`PREFACE`]; a server starts with
    /// frames). false = joined mid-way: the first byte pushed must be a frame
    /// boundary, HPACK is unsynced and every header block is
    /// [`Frame::HeadersLost`]. `max_frame_payload` caps one frame's payload
    /// (clamped to [`MAX_FRAME_PAYLOAD_LIMIT`]); use the larger of the
    /// receiver's SETTINGS_MAX_FRAME_SIZE and 16384, or just the limit.
    pub fn new(sender: Sender, from_start: bool, max_frame_payload: usize) -> Reader {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(DEFAULT_HPACK_TABLE as usize);
        let expect_preface = from_start && sender == Sender::Client;
        Reader {
            sender,
            max_frame: max_frame_payload.min(MAX_FRAME_PAYLOAD_LIMIT),
            preface_at: if expect_preface { 0 } else { PREFACE.len() },
            buf: Vec::new(),
            buf_enter: 0,
            block: None,
            block_buf: Vec::new(),
            decoder,
            synced: from_start,
            peek: false,
            lost: 0,
            advertised_table: None,
            fields: Vec::new(),
            broken: None,
        }
    }

    /// Creates a reader for one direction of a connection joined mid-way, whose writer is not
    /// known yet: the first byte pushed must be a frame boundary, and no header block is
    /// ever decoded (the HPACK dynamic table is unknown, so an indexed field could resolve
    /// to the wrong entry). Each block is reported as [`Frame::HeadersLost`] with who sent
    /// it, when its static table indices tell ([`static_sender`]), until
    /// [`Reader::stop_peeking`]. PUSH_PROMISE is accepted from either side: who the server
    /// is may be learned later in the bytes than the frame is checked, and what becomes of
    /// a frame must not depend on how the bytes were cut.
    pub fn joined(max_frame_payload: usize) -> Reader {
        let mut r = Reader::new(Sender::Server, false, max_frame_payload);
        r.peek = true;
        r
    }

    /// The connection showed who writes which direction: header blocks are no longer kept
    /// to tell who sent them.
    pub fn stop_peeking(&mut self) {
        self.peek = false;
    }

    /// Feeds the next bytes of this direction, in order, and calls `emit` for
    /// every frame of interest completed by them. `enter_ns`/`exit_ns` are
    /// the times of the read/write call that carried `data`.
    ///
    /// Returns `Err(reason)` once the bytes are not valid HTTP/2 (bad
    /// preface, frame over the maximum, CONTINUATION out of sequence, bad
    /// SETTINGS/PING/WINDOW_UPDATE/RST_STREAM/GOAWAY shape, bad padding,
    /// header block over [`MAX_HEADER_BLOCK`], ...). Frames completed before
    /// the offending one have been emitted. After an `Err` the reader is
    /// broken: buffers are freed and every later push emits nothing and
    /// returns the same `Err`.
    pub fn push(
        &mut self,
        data: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut impl FnMut(Frame<'_>),
    ) -> Result<(), &'static str> {
        if let Some(e) = self.broken {
            return Err(e);
        }
        let t = Times {
            enter: enter_ns,
            exit: exit_ns,
        };
        let r = self.push_inner(data, t, emit);
        if let Err(e) = r {
            self.broken = Some(e);
            self.buf = Vec::new();
            self.block = None;
            self.block_buf = Vec::new();
            self.fields = Vec::new();
            self.decoder = Decoder::new();
        }
        r
    }

    /// Bytes currently buffered (partial frame, partial header block).
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.block_buf.len()
    }

    /// SETTINGS_HEADER_TABLE_SIZE the SENDER of these bytes advertised in its
    /// latest non-ACK SETTINGS that carried it (settings persist, so a later
    /// SETTINGS without it keeps the value). This is the limit for the OTHER
    /// direction's encoder, i.e. feed it to the other Reader's
    /// [`Reader::set_max_table_size`]. `None` if not seen.
    pub fn advertised_header_table_size(&self) -> Option<u32> {
        self.advertised_table
    }

    /// Tells this reader's HPACK decoder the largest table size its encoder is
    /// allowed (the other direction's SETTINGS_HEADER_TABLE_SIZE); default
    /// 4096. Values above [`MAX_HPACK_TABLE`] are clamped to it. Only checked
    /// against dynamic table size updates, as HPACK does; it does not resize
    /// the table by itself.
    pub fn set_max_table_size(&mut self, n: u32) {
        let n = n.min(MAX_HPACK_TABLE);
        self.decoder.set_max_allowed_table_size(n as usize);
    }

    /// Whether header blocks are being decoded (false when joined mid-way or
    /// after an HPACK error).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Header blocks that could not be decoded so far (every
    /// [`Frame::HeadersLost`], plus undecodable PUSH_PROMISE blocks).
    pub fn headers_lost(&self) -> u64 {
        self.lost
    }

    fn push_inner<E: FnMut(Frame<'_>)>(
        &mut self,
        data: &[u8],
        t: Times,
        emit: &mut E,
    ) -> Result<(), &'static str> {
        let mut data = self.eat_preface(data)?;
        if !self.buf.is_empty() {
            data = self.fill_partial(data, t.exit, emit)?;
        }
        while !data.is_empty() {
            let Some(hb) = data.first_chunk::<HDR_LEN>() else {
                return self.start_partial(data, t.enter);
            };
            let h = Hdr::parse(hb);
            self.check_header(&h)?;
            let Some(payload) = data.get(HDR_LEN..HDR_LEN + h.len) else {
                return self.start_partial(data, t.enter);
            };
            self.on_frame(&h, payload, t, emit)?;
            data = data.get(HDR_LEN + h.len..).unwrap_or_default();
        }
        Ok(())
    }

    /// Checks and consumes (part of) the client preface.
    fn eat_preface<'d>(&mut self, data: &'d [u8]) -> Result<&'d [u8], &'static str> {
        let want = PREFACE.get(self.preface_at..).unwrap_or_default();
        if want.is_empty() {
            return Ok(data);
        }
        let n = want.len().min(data.len());
        if data.get(..n) != want.get(..n) {
            return Err("bad client preface");
        }
        self.preface_at += n;
        Ok(data.get(n..).unwrap_or_default())
    }

    /// Buffers the start of a frame that this push does not complete.
    fn start_partial(&mut self, data: &[u8], enter: u64) -> Result<(), &'static str> {
        let total = match data.first_chunk::<HDR_LEN>() {
            Some(hb) => HDR_LEN + Hdr::parse(hb).len,
            None => HDR_LEN,
        };
        self.buf_enter = enter;
        append_bounded(&mut self.buf, data, total);
        Ok(())
    }

    /// Continues the buffered partial frame; returns the unused input.
    fn fill_partial<'d, E: FnMut(Frame<'_>)>(
        &mut self,
        mut data: &'d [u8],
        exit: u64,
        emit: &mut E,
    ) -> Result<&'d [u8], &'static str> {
        if self.buf.len() < HDR_LEN {
            let take = (HDR_LEN - self.buf.len()).min(data.len());
            let (head, rest) = data.split_at(take);
            self.buf.extend_from_slice(head);
            data = rest;
            let Some(hb) = self.buf.first_chunk::<HDR_LEN>() else {
                return Ok(data);
            };
            let h = Hdr::parse(hb);
            self.check_header(&h)?;
        }
        let Some(hb) = self.buf.first_chunk::<HDR_LEN>() else {
            return Ok(data);
        };
        let h = Hdr::parse(hb);
        let total = HDR_LEN + h.len;
        let take = total.saturating_sub(self.buf.len()).min(data.len());
        let (head, rest) = data.split_at(take);
        append_bounded(&mut self.buf, head, total);
        if self.buf.len() < total {
            return Ok(rest);
        }
        let frame = std::mem::take(&mut self.buf);
        let t = Times {
            enter: self.buf_enter,
            exit,
        };
        let r = self.on_frame(&h, frame.get(HDR_LEN..).unwrap_or_default(), t, emit);
        self.buf = recycle(frame);
        r.map(|()| rest)
    }

    /// Rules that can be checked from the 9-byte header alone.
    fn check_header(&self, h: &Hdr) -> Result<(), &'static str> {
        if h.len > self.max_frame {
            return Err("frame length over maximum");
        }
        match self.block {
            Some(b) if h.typ != T_CONTINUATION || h.stream != b.stream => {
                return Err("expected CONTINUATION");
            }
            None if h.typ == T_CONTINUATION => return Err("CONTINUATION without HEADERS"),
            _ => {}
        }
        let on_stream = matches!(
            h.typ,
            T_DATA | T_HEADERS | T_PRIORITY | T_RST_STREAM | T_PUSH_PROMISE | T_CONTINUATION
        );
        if on_stream && h.stream == 0 {
            return Err("stream frame on stream 0");
        }
        if matches!(h.typ, T_SETTINGS | T_PING | T_GOAWAY) && h.stream != 0 {
            return Err("connection frame on a stream");
        }
        match h.typ {
            T_RST_STREAM | T_WINDOW_UPDATE if h.len != 4 => {
                Err("bad RST_STREAM/WINDOW_UPDATE length")
            }
            T_SETTINGS if !h.len.is_multiple_of(6) => Err("SETTINGS length not a multiple of 6"),
            T_SETTINGS if h.has(F_ACK) && h.len != 0 => Err("SETTINGS ACK with payload"),
            T_PING if h.len != 8 => Err("bad PING length"),
            T_GOAWAY if h.len < 8 => Err("GOAWAY too short"),
            T_PUSH_PROMISE if self.sender == Sender::Client => Err("PUSH_PROMISE from client"),
            _ => Ok(()),
        }
    }

    /// Handles one complete frame whose header passed [`Self::check_header`].
    fn on_frame<E: FnMut(Frame<'_>)>(
        &mut self,
        h: &Hdr,
        payload: &[u8],
        t: Times,
        emit: &mut E,
    ) -> Result<(), &'static str> {
        match h.typ {
            T_DATA => emit(Frame::Data {
                stream: h.stream,
                data: unpad(h, payload)?,
                end_stream: h.has(F_END_STREAM),
                enter_ns: t.enter,
                exit_ns: t.exit,
            }),
            T_HEADERS => self.on_headers(h, payload, t, emit)?,
            T_RST_STREAM => emit(Frame::Reset {
                stream: h.stream,
                code: be32(payload),
                exit_ns: t.exit,
            }),
            T_SETTINGS => self.on_settings(h, payload)?,
            T_PUSH_PROMISE => self.on_push_promise(h, payload, t, emit)?,
            T_GOAWAY => emit(Frame::GoAway {
                last_stream: be32(payload) & 0x7fff_ffff,
                code: be32(payload.get(4..).unwrap_or_default()),
                exit_ns: t.exit,
            }),
            T_WINDOW_UPDATE if be32(payload) & 0x7fff_ffff == 0 && h.stream == 0 => {
                return Err("WINDOW_UPDATE with zero increment");
            }
            T_CONTINUATION => self.on_continuation(h, payload, t, emit)?,
            // PRIORITY, PING, WINDOW_UPDATE and unknown types carry nothing we report.
            _ => {}
        }
        Ok(())
    }

    fn on_settings(&mut self, h: &Hdr, payload: &[u8]) -> Result<(), &'static str> {
        if h.has(F_ACK) {
            return Ok(());
        }
        for (id, v) in settings(payload) {
            if !setting_ok(id, v) {
                return Err("bad SETTINGS value");
            }
            if id == 1 {
                self.advertised_table = Some(v);
            }
        }
        Ok(())
    }

    fn on_headers<E: FnMut(Frame<'_>)>(
        &mut self,
        h: &Hdr,
        payload: &[u8],
        t: Times,
        emit: &mut E,
    ) -> Result<(), &'static str> {
        let mut frag = unpad(h, payload)?;
        if h.has(F_PRIORITY) {
            frag = frag.get(5..).ok_or("HEADERS too short for priority")?;
        }
        let b = Block {
            stream: h.stream,
            end_stream: h.has(F_END_STREAM),
            enter_ns: t.enter,
            len: 0,
            push: false,
        };
        self.begin_block(b, frag, h.has(F_END_HEADERS), t, emit)
    }

    /// PUSH_PROMISE blocks are decoded to keep the HPACK table in sync but are
    /// not emitted.
    fn on_push_promise<E: FnMut(Frame<'_>)>(
        &mut self,
        h: &Hdr,
        payload: &[u8],
        t: Times,
        emit: &mut E,
    ) -> Result<(), &'static str> {
        let p = unpad(h, payload)?;
        let frag = p.get(4..).ok_or("PUSH_PROMISE too short")?;
        let b = Block {
            stream: h.stream,
            end_stream: false,
            enter_ns: t.enter,
            len: 0,
            push: true,
        };
        self.begin_block(b, frag, h.has(F_END_HEADERS), t, emit)
    }

    fn begin_block<E: FnMut(Frame<'_>)>(
        &mut self,
        mut b: Block,
        frag: &[u8],
        end_headers: bool,
        t: Times,
        emit: &mut E,
    ) -> Result<(), &'static str> {
        b.len = frag.len();
        if b.len > MAX_HEADER_BLOCK {
            return Err("header block too large");
        }
        if end_headers {
            self.finish_block(&b, frag, t.exit, emit);
            return Ok(());
        }
        self.block_buf.clear();
        if self.synced || self.peek {
            self.block_buf.extend_from_slice(frag);
        }
        self.block = Some(b);
        Ok(())
    }

    fn on_continuation<E: FnMut(Frame<'_>)>(
        &mut self,
        h: &Hdr,
        frag: &[u8],
        t: Times,
        emit: &mut E,
    ) -> Result<(), &'static str> {
        let Some(mut b) = self.block.take() else {
            return Err("CONTINUATION without HEADERS");
        };
        b.len = b.len.saturating_add(frag.len());
        if b.len > MAX_HEADER_BLOCK {
            return Err("header block too large");
        }
        if self.synced || self.peek {
            self.block_buf.extend_from_slice(frag);
        }
        if !h.has(F_END_HEADERS) {
            self.block = Some(b);
            return Ok(());
        }
        let buf = std::mem::take(&mut self.block_buf);
        self.finish_block(&b, &buf, t.exit, emit);
        self.block_buf = recycle(buf);
        Ok(())
    }

    /// Decodes a complete header block and emits the result.
    fn finish_block<E: FnMut(Frame<'_>)>(
        &mut self,
        b: &Block,
        block: &[u8],
        exit: u64,
        emit: &mut E,
    ) {
        let outcome = if self.synced {
            self.decode(block)
        } else {
            Err(LostReason::NotSynced)
        };
        match outcome {
            Ok(()) if !b.push => emit(Frame::Headers {
                stream: b.stream,
                fields: &self.fields,
                end_stream: b.end_stream,
                enter_ns: b.enter_ns,
                exit_ns: exit,
            }),
            Ok(()) => {}
            Err(_) if b.push => self.lost += 1,
            Err(reason) => {
                self.lost += 1;
                // Only the static table, which no history changes: never the dynamic one.
                let sent_by = if self.peek && !self.synced {
                    static_sender(block)
                } else {
                    None
                };
                emit(Frame::HeadersLost {
                    stream: b.stream,
                    end_stream: b.end_stream,
                    reason,
                    sent_by,
                    enter_ns: b.enter_ns,
                    exit_ns: exit,
                });
            }
        }
        self.fields.clear();
    }

    /// Runs the HPACK decoder over a whole block into `self.fields`. The
    /// whole block is always decoded (to keep the dynamic table right) even
    /// once the list is over the caps; over-cap fields are not copied.
    fn decode(&mut self, block: &[u8]) -> Result<(), LostReason> {
        self.fields.clear();
        if huffman_strings(block) > MAX_HUFFMAN_STRINGS {
            self.unsync();
            return Err(LostReason::TooLarge);
        }
        let fields = &mut self.fields;
        let mut bytes = 0usize;
        let mut over = false;
        let r = self
            .decoder
            .decode_with_cb(block, |name: Cow<'_, [u8]>, value: Cow<'_, [u8]>| {
                if over {
                    return;
                }
                bytes = bytes.saturating_add(name.len() + value.len());
                if bytes > MAX_HEADER_LIST_BYTES || fields.len() >= MAX_HEADER_FIELDS {
                    over = true;
                    return;
                }
                fields.push(Field {
                    name: name.into_owned(),
                    value: value.into_owned(),
                });
            });
        if r.is_err() {
            // The dynamic table may be half-updated: it is lost for good.
            self.unsync();
            return Err(LostReason::Hpack);
        }
        if over {
            self.fields.clear();
            return Err(LostReason::TooLarge);
        }
        Ok(())
    }

    /// Gives up on HPACK for good (frees the dynamic table).
    fn unsync(&mut self) {
        self.synced = false;
        self.decoder = Decoder::new();
        self.fields.clear();
    }
}

/// Reads an HPACK integer (RFC 7541 §5.1) with an `n`-bit prefix at `at`;
/// returns the value and the index after it. At most 5 octets, like the
/// decoder.
fn hpack_int(block: &[u8], at: usize, n: u32) -> Option<(usize, usize)> {
    let mask = (1usize << n) - 1;
    let first = usize::from(*block.get(at)?) & mask;
    if first < mask {
        return Some((first, at + 1));
    }
    let mut v = first;
    for k in 0..4 {
        let b = usize::from(*block.get(at + 1 + k)?);
        v += (b & 0x7f) << (7 * k);
        if b & 0x80 == 0 {
            return Some((v, at + 2 + k));
        }
    }
    None
}

/// Skips one HPACK string literal at `at`; returns whether it is Huffman
/// coded and the index after it.
fn hpack_string(block: &[u8], at: usize) -> Option<(bool, usize)> {
    let huffman = block.get(at)? & 0x80 != 0;
    let (len, start) = hpack_int(block, at, 7)?;
    let end = start.checked_add(len).filter(|&e| e <= block.len())?;
    Some((huffman, end))
}

/// One representation of a header block (RFC 7541 §6), as [`walk_block`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rep {
    /// An indexed field, or a literal whose name is indexed (index 0: a literal name), with
    /// the number of Huffman-coded strings it carries.
    Field {
        /// Its (name) index: 1 to 61 are the static table's, above are the dynamic table's.
        index: usize,
        /// Huffman-coded strings in it.
        huffman: usize,
    },
    /// A dynamic table size update.
    SizeUpdate,
}

/// Walks the representations of a header block without decoding any: no table is looked
/// at, no string decoded. Stops at the first malformed representation (the decoder would
/// reject the block there).
fn walk_block(block: &[u8], mut each: impl FnMut(Rep)) {
    let mut at = 0;
    while let Some(&b) = block.get(at) {
        let (prefix, literal) = match b {
            _ if b & 0x80 != 0 => (7, false),
            _ if b & 0x40 != 0 => (6, true),
            _ if b & 0x20 != 0 => (5, false),
            _ => (4, true),
        };
        let Some((index, mut next)) = hpack_int(block, at, prefix) else {
            return;
        };
        if prefix == 5 {
            each(Rep::SizeUpdate);
            at = next;
            continue;
        }
        let mut huffman = 0;
        if literal {
            let strings = if index == 0 { 2 } else { 1 };
            for _ in 0..strings {
                let Some((coded, after)) = hpack_string(block, next) else {
                    // What it had before the malformed string still counts.
                    each(Rep::Field { index, huffman });
                    return;
                };
                huffman += usize::from(coded);
                next = after;
            }
        }
        each(Rep::Field { index, huffman });
        at = next;
    }
}

/// Counts the Huffman-coded strings of a header block by walking its
/// representations without decoding them. Stops at the first malformed
/// representation (the decoder will reject the block there).
fn huffman_strings(block: &[u8]) -> usize {
    let mut count = 0;
    walk_block(block, |r| {
        if let Rep::Field { huffman, .. } = r {
            count += huffman;
        }
    });
    count
}

/// The HPACK static table's request pseudo-header names (RFC 7541 Appendix A):
/// `:authority`, `:method`, `:path`, `:scheme`.
const STATIC_REQUEST: std::ops::RangeInclusive<usize> = 1..=7;
/// The HPACK static table's `:status` entries.
const STATIC_STATUS: std::ops::RangeInclusive<usize> = 8..=14;

/// Who sent a header block, by the static table alone: a field whose name is a request's
/// pseudo-header there (`:method`, `:scheme`, `:path`, `:authority`) says a client, one
/// whose name is `:status` a server; `None` when no such field is there (every field
/// indexed in the dynamic table, or a literal name) or both are (not HTTP).
///
/// This is not decoding: the static table is fixed, and nothing the connection did before
/// the agent came changes what its indices mean. Dynamic indices are skipped unread.
pub fn static_sender(block: &[u8]) -> Option<Sender> {
    let (mut request, mut response) = (false, false);
    walk_block(block, |r| {
        if let Rep::Field { index, .. } = r {
            request |= STATIC_REQUEST.contains(&index);
            response |= STATIC_STATUS.contains(&index);
        }
    });
    match (request, response) {
        (true, false) => Some(Sender::Client),
        (false, true) => Some(Sender::Server),
        _ => None,
    }
}

/// How the first bytes of one direction look; see [`looks_like`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Looks {
    /// The client preface, or a non-empty prefix of it.
    Preface,
    /// A plausible SETTINGS frame on stream 0 (a server's first frame).
    Settings,
    /// A plausible frame header of another known type: not a connection's start (whether
    /// it is one joined mid-way is [`looks_mid_way`]'s to say, more strictly).
    Frame,
    /// Not HTTP/2 (or too short to tell: fewer than 9 bytes that are not a
    /// preface prefix).
    No,
}

/// Does `b` (the first bytes seen in one direction) start like HTTP/2?
///
/// Besides the first frame header (known type, flags allowed for the type,
/// reserved bit clear, length <= 16384, stream-id and fixed-length rules,
/// payload sanity where present), every further frame header wholly inside
/// `b` must be plausible too (up to 16 frames). Bytes that begin with a
/// non-zero octet (text, JSON, HTTP/1, TLS records) are never a frame.
/// A short prefix such as `b"P"` counts as [`Looks::Preface`]; ask again with
/// more bytes when that matters.
pub fn looks_like(b: &[u8]) -> Looks {
    let n = b.len().min(PREFACE.len());
    if n > 0 && b.get(..n) == PREFACE.get(..n) {
        return Looks::Preface;
    }
    let Some(first) = b.first_chunk::<HDR_LEN>().map(Hdr::parse) else {
        return Looks::No;
    };
    let mut rest = b;
    for _ in 0..16 {
        let Some(hb) = rest.first_chunk::<HDR_LEN>() else {
            break;
        };
        let h = Hdr::parse(hb);
        let end = (HDR_LEN + h.len).min(rest.len());
        if !plausible(&h, rest.get(HDR_LEN..end).unwrap_or_default()) {
            return Looks::No;
        }
        rest = rest.get(HDR_LEN + h.len..).unwrap_or_default();
    }
    if first.typ == T_SETTINGS {
        Looks::Settings
    } else {
        Looks::Frame
    }
}

/// Strict plausibility of one frame header plus whatever part of its payload
/// is available (`avail` may be shorter than `h.len`).
fn plausible(h: &Hdr, avail: &[u8]) -> bool {
    h.len <= LOOKS_MAX_LEN && plausible_shape(h, avail)
}

/// [`plausible`] but for the length cap: the reserved bit, the type's flags, stream id and
/// length rules, and what is there of its payload.
fn plausible_shape(h: &Hdr, avail: &[u8]) -> bool {
    if h.reserved {
        return false;
    }
    let s = h.stream != 0;
    let only = |allowed: u8| h.flags & !allowed == 0;
    let shape = match h.typ {
        T_DATA => s && only(F_END_STREAM | F_PADDED),
        T_HEADERS => s && only(F_END_STREAM | F_END_HEADERS | F_PADDED | F_PRIORITY),
        T_PRIORITY => s && h.flags == 0 && h.len == 5,
        T_RST_STREAM => s && h.flags == 0 && h.len == 4,
        T_SETTINGS => {
            !s && ((h.flags == 0 && h.len.is_multiple_of(6)) || (h.flags == F_ACK && h.len == 0))
        }
        T_PUSH_PROMISE => s && only(F_END_HEADERS | F_PADDED) && h.len >= 4,
        T_PING => !s && only(F_ACK) && h.len == 8,
        T_GOAWAY => !s && h.flags == 0 && h.len >= 8,
        T_WINDOW_UPDATE => h.flags == 0 && h.len == 4,
        T_CONTINUATION => s && only(F_END_HEADERS),
        _ => false,
    };
    shape && plausible_payload(h, avail)
}

fn plausible_payload(h: &Hdr, p: &[u8]) -> bool {
    let prio = if h.typ == T_HEADERS && h.has(F_PRIORITY) {
        5
    } else {
        0
    };
    if h.has(F_PADDED)
        && matches!(h.typ, T_DATA | T_HEADERS | T_PUSH_PROMISE)
        && let Some(&pad) = p.first()
        && usize::from(pad) + 1 + prio > h.len
    {
        return false;
    }
    let word = |at: usize| p.get(at..at + 4).map(be32);
    match h.typ {
        T_SETTINGS => settings(p).all(|(id, v)| setting_ok(id, v)),
        T_WINDOW_UPDATE => word(0).is_none_or(|v| v != 0 && v >> 31 == 0),
        T_RST_STREAM => word(0).is_none_or(|c| c <= MAX_KNOWN_ERROR_CODE),
        T_GOAWAY => {
            word(0).is_none_or(|v| v >> 31 == 0)
                && word(4).is_none_or(|c| c <= MAX_KNOWN_ERROR_CODE)
        }
        _ => true,
    }
}

/// Does `b`, the first bytes seen of a connection that did not start in view, read as
/// HTTP/2 frames from its first byte (a connection the agent joined mid-way)?
///
/// Stricter than [`looks_like`] in what it asks of the whole: every frame header wholly
/// inside `b` must be plausible, however many there are; the first of a type RFC 9113
/// defines, with the flags, stream id (SETTINGS, PING and GOAWAY on stream 0; DATA,
/// HEADERS and the other stream frames on another) and length rules of its type; later
/// ones of a defined type by the same rules, or of an extension's type with the reserved
/// bit clear. A frame longer than the default SETTINGS_MAX_FRAME_SIZE (16384; a peer may
/// have raised it before the agent came, up to [`MAX_FRAME_PAYLOAD_LIMIT`]) is taken only
/// when `b` holds it whole: the header of a TLS record, or of most binary protocols, reads
/// as one such frame running past the bytes. At least one whole frame header is needed.
pub fn looks_mid_way(b: &[u8]) -> bool {
    let mut rest = b;
    let mut frames = 0usize;
    while let Some(hb) = rest.first_chunk::<HDR_LEN>() {
        let h = Hdr::parse(hb);
        let end = HDR_LEN.saturating_add(h.len);
        let avail = rest.get(HDR_LEN..end.min(rest.len())).unwrap_or_default();
        let length = h.len <= LOOKS_MAX_LEN || end <= rest.len();
        let shape = if h.typ <= T_CONTINUATION {
            plausible_shape(&h, avail)
        } else {
            frames > 0 && !h.reserved
        };
        if !(length && shape) {
            return false;
        }
        frames += 1;
        rest = rest.get(end..).unwrap_or_default();
    }
    frames > 0
}

/// Frame builders for the tests of this module and of the stages above.
#[cfg(test)]
pub(crate) mod testing {
    /// One frame: its 9-byte header, then `payload`.
    pub fn frame(typ: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut v = len.to_be_bytes()[1..].to_vec();
        v.push(typ);
        v.push(flags);
        v.extend_from_slice(&stream.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    /// A SETTINGS payload.
    pub fn settings_payload(list: &[(u16, u32)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (id, val) in list {
            v.extend_from_slice(&id.to_be_bytes());
            v.extend_from_slice(&val.to_be_bytes());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{frame, settings_payload};
    use super::*;
    use loona_hpack::Encoder;
    use loona_hpack::encoder::encode_integer_into;

    /// Owned copy of a [`Frame`] without times.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum K {
        H(u32, Vec<(String, String)>, bool),
        Lost(u32, bool, LostReason),
        /// Not decoded, sent by this side (as its static table indices said).
        By(u32, bool, Sender),
        D(u32, Vec<u8>, bool),
        R(u32, u32),
        G(u32, u32),
    }

    /// (frame, enter_ns, exit_ns); enter_ns is 0 for Reset/GoAway.
    type Ev = (K, u64, u64);

    fn s(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    fn own(f: Frame<'_>) -> Ev {
        match f {
            Frame::Headers {
                stream,
                fields,
                end_stream,
                enter_ns,
                exit_ns,
            } => {
                let list = fields.iter().map(|f| (s(&f.name), s(&f.value))).collect();
                (K::H(stream, list, end_stream), enter_ns, exit_ns)
            }
            Frame::HeadersLost {
                stream,
                end_stream,
                reason,
                sent_by: None,
                enter_ns,
                exit_ns,
            } => (K::Lost(stream, end_stream, reason), enter_ns, exit_ns),
            Frame::HeadersLost {
                stream,
                end_stream,
                sent_by: Some(by),
                enter_ns,
                exit_ns,
                ..
            } => (K::By(stream, end_stream, by), enter_ns, exit_ns),
            Frame::Data {
                stream,
                data,
                end_stream,
                enter_ns,
                exit_ns,
            } => (K::D(stream, data.to_vec(), end_stream), enter_ns, exit_ns),
            Frame::Reset {
                stream,
                code,
                exit_ns,
            } => (K::R(stream, code), 0, exit_ns),
            Frame::GoAway {
                last_stream,
                code,
                exit_ns,
            } => (K::G(last_stream, code), 0, exit_ns),
        }
    }

    fn hv(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn enc(e: &mut Encoder<'_>, list: &[(&str, &str)]) -> Vec<u8> {
        e.encode(list.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn size_update(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        encode_integer_into(n, 5, 0x20, &mut v).expect("vec write");
        v
    }

    fn enter_t(j: usize) -> u64 {
        1000 * (j as u64 + 1)
    }

    fn exit_t(j: usize) -> u64 {
        1000 * (j as u64 + 1) + 1
    }

    /// Index of the push that carries byte `off` when cut at `cuts`.
    fn push_of(off: usize, cuts: &[usize]) -> usize {
        cuts.iter().filter(|&&c| c <= off).count()
    }

    /// A byte stream plus the frames expected from it, with byte spans.
    #[derive(Default)]
    struct Wire {
        bytes: Vec<u8>,
        exp: Vec<(K, usize, usize)>,
    }

    impl Wire {
        fn raw(&mut self, b: &[u8]) -> usize {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(b);
            start
        }

        fn frame(&mut self, typ: u8, flags: u8, stream: u32, payload: &[u8]) -> (usize, usize) {
            let start = self.raw(&frame(typ, flags, stream, payload));
            (start, self.bytes.len())
        }

        fn expect(&mut self, k: K, span: (usize, usize)) {
            self.exp.push((k, span.0, span.1));
        }

        fn expected(&self, cuts: &[usize]) -> Vec<Ev> {
            let ev = |(k, a, b): &(K, usize, usize)| {
                let exit = exit_t(push_of(b - 1, cuts));
                match k {
                    K::R(..) | K::G(..) => (k.clone(), 0, exit),
                    _ => (k.clone(), enter_t(push_of(*a, cuts)), exit),
                }
            };
            self.exp.iter().map(ev).collect()
        }
    }

    fn feed(r: &mut Reader, bytes: &[u8], cuts: &[usize]) -> (Vec<Ev>, Result<(), &'static str>) {
        let mut out = Vec::new();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(bytes.len());
        for (j, w) in bounds.windows(2).enumerate() {
            let res = r.push(&bytes[w[0]..w[1]], enter_t(j), exit_t(j), &mut |f| {
                out.push(own(f))
            });
            if res.is_err() {
                return (out, res);
            }
        }
        (out, Ok(()))
    }

    fn check(w: &Wire, sender: Sender, from_start: bool, cuts: &[usize]) -> Reader {
        let mut r = Reader::new(sender, from_start, 16_384);
        let (got, res) = feed(&mut r, &w.bytes, cuts);
        assert_eq!(res, Ok(()), "cuts {cuts:?}");
        assert_eq!(got, w.expected(cuts), "cuts {cuts:?}");
        assert_eq!(r.buffered(), 0, "cuts {cuts:?}");
        r
    }

    /// Whole, every single cut, and byte by byte.
    fn check_splits(w: &Wire, sender: Sender, from_start: bool) -> Reader {
        let r = check(w, sender, from_start, &[]);
        for i in 0..=w.bytes.len() {
            check(w, sender, from_start, &[i]);
        }
        let all: Vec<usize> = (1..w.bytes.len()).collect();
        check(w, sender, from_start, &all);
        r
    }

    const REQ1: &[(&str, &str)] = &[
        (":method", "POST"),
        (":path", "/mcp"),
        ("content-type", "application/json"),
        ("mcp-session-id", "abc"),
    ];
    const BODY1: &[u8] = br#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#;

    /// Preface + SETTINGS + HEADERS + DATA of the first request.
    fn request_one(e: &mut Encoder<'_>) -> Wire {
        let mut w = Wire::default();
        w.raw(PREFACE);
        w.frame(
            T_SETTINGS,
            0,
            0,
            &settings_payload(&[(1, 4096), (3, 100), (4, 65_535)]),
        );
        let span = w.frame(T_HEADERS, F_END_HEADERS, 1, &enc(e, REQ1));
        w.expect(K::H(1, hv(REQ1), false), span);
        let span = w.frame(T_DATA, F_END_STREAM, 1, BODY1);
        w.expect(K::D(1, BODY1.to_vec(), true), span);
        w
    }

    #[test]
    fn client_request_all_splits() {
        let w = request_one(&mut Encoder::new());
        let r = check_splits(&w, Sender::Client, true);
        assert!(r.synced());
        assert_eq!(r.headers_lost(), 0);
        assert_eq!(r.advertised_header_table_size(), Some(4096));
    }

    const REQ2: &[(&str, &str)] = &[
        (":method", "POST"),
        (":path", "/mcp"),
        ("mcp-session-id", "abc"),
        ("accept", "application/json, text/event-stream"),
    ];

    /// Second request: size update + dynamic reference, HEADERS + CONTINUATION.
    fn request_two(e: &mut Encoder<'_>, w: &mut Wire, update: usize) -> Vec<u8> {
        e.set_max_table_size(update);
        let mut block = size_update(update);
        block.extend_from_slice(&enc(e, REQ2));
        let mid = block.len() / 2;
        let (start, _) = w.frame(T_HEADERS, 0, 3, &block[..mid]);
        let (_, end) = w.frame(T_CONTINUATION, F_END_HEADERS, 3, &block[mid..]);
        w.expect(K::H(3, hv(REQ2), false), (start, end));
        w.frame(T_WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes());
        let span = w.frame(T_DATA, F_END_STREAM, 3, b"{}");
        w.expect(K::D(3, b"{}".to_vec(), true), span);
        block
    }

    #[test]
    fn dynamic_table_size_update_and_continuation() {
        let mut e = Encoder::new();
        let mut w = request_one(&mut e);
        w.frame(T_PING, 0, 0, &[7; 8]);
        let block = request_two(&mut e, &mut w, 2048);
        // The block references the entry the first request inserted (index 62)...
        assert!(block.contains(&0xbe));
        // ...so it cannot be decoded without the first block.
        assert!(loona_hpack::Decoder::new().decode(&block).is_err());
        check_splits(&w, Sender::Client, true);
        // Every pair of cut points (covers a cut right at the HEADERS/CONTINUATION
        // boundary combined with a cut inside either frame).
        for i in 0..=w.bytes.len() {
            for j in i..=w.bytes.len() {
                check(&w, Sender::Client, true, &[i, j]);
            }
        }
    }

    #[test]
    fn size_update_above_allowed_max() {
        let mut e = Encoder::new();
        let mut w = request_one(&mut e);
        request_two(&mut e, &mut w, 8192);
        // Default allowed max is 4096: the update is an HPACK error.
        let mut r = Reader::new(Sender::Client, true, 16_384);
        let (got, res) = feed(&mut r, &w.bytes, &[]);
        assert_eq!(res, Ok(()));
        assert_eq!(got[2].0, K::Lost(3, false, LostReason::Hpack));
        assert_eq!(got[3].0, K::D(3, b"{}".to_vec(), true));
        assert!(!r.synced());
        assert_eq!(r.headers_lost(), 1);
        // After the peer's SETTINGS allow it, the same bytes decode.
        let mut r = Reader::new(Sender::Client, true, 16_384);
        r.set_max_table_size(8192);
        let (got, res) = feed(&mut r, &w.bytes, &[]);
        assert_eq!(res, Ok(()));
        assert_eq!(got, w.expected(&[]));
    }

    #[test]
    fn padded_data_and_padded_priority_headers() {
        let mut e = Encoder::new();
        let mut w = Wire::default();
        w.raw(PREFACE);
        let mut p = vec![3];
        p.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive on stream 0, weight 15
        p.extend_from_slice(&enc(&mut e, REQ1));
        p.extend_from_slice(&[0; 3]);
        let span = w.frame(T_HEADERS, F_PADDED | F_PRIORITY | F_END_HEADERS, 1, &p);
        w.expect(K::H(1, hv(REQ1), false), span);
        let mut d = vec![4];
        d.extend_from_slice(BODY1);
        d.extend_from_slice(&[0; 4]);
        let span = w.frame(T_DATA, F_PADDED, 1, &d);
        w.expect(K::D(1, BODY1.to_vec(), false), span);
        // Padding only, empty data, END_STREAM.
        let span = w.frame(T_DATA, F_PADDED | F_END_STREAM, 1, &[2, 0, 0]);
        w.expect(K::D(1, Vec::new(), true), span);
        w.frame(T_PRIORITY, 0, 1, &[0, 0, 0, 0, 9]);
        w.frame(0x42, 0xff, 0, b"unknown frame type is ignored");
        check_splits(&w, Sender::Client, true);
        // Padding longer than the frame is an error.
        let mut r = Reader::new(Sender::Client, false, 16_384);
        let (_, res) = feed(&mut r, &frame(T_DATA, F_PADDED, 1, &[3, 0, 0]), &[]);
        assert!(res.is_err());
    }

    const RESP: &[(&str, &str)] = &[(":status", "200"), ("content-type", "text/event-stream")];
    const TRAILERS: &[(&str, &str)] = &[("x-trailer", "done")];

    #[test]
    fn server_stream_with_trailers() {
        let mut e = Encoder::new();
        let mut w = Wire::default();
        w.frame(
            T_SETTINGS,
            0,
            0,
            &settings_payload(&[(3, 128), (1, 8192), (5, 32_768)]),
        );
        w.frame(T_SETTINGS, F_ACK, 0, &[]);
        let span = w.frame(T_HEADERS, F_END_HEADERS, 1, &enc(&mut e, RESP));
        w.expect(K::H(1, hv(RESP), false), span);
        for ev in [&b"data: a\n\n"[..], b"data: bb\n\n", b"data: ccc\n\n"] {
            let span = w.frame(T_DATA, 0, 1, ev);
            w.expect(K::D(1, ev.to_vec(), false), span);
        }
        let span = w.frame(
            T_HEADERS,
            F_END_HEADERS | F_END_STREAM,
            1,
            &enc(&mut e, TRAILERS),
        );
        w.expect(K::H(1, hv(TRAILERS), true), span);
        let span = w.frame(T_RST_STREAM, 0, 3, &8u32.to_be_bytes());
        w.expect(K::R(3, 8), span);
        let mut g = 3u32.to_be_bytes().to_vec();
        g.extend_from_slice(&0u32.to_be_bytes());
        g.extend_from_slice(b"bye");
        let span = w.frame(T_GOAWAY, 0, 0, &g);
        w.expect(K::G(3, 0), span);
        let r = check_splits(&w, Sender::Server, true);
        assert_eq!(r.advertised_header_table_size(), Some(8192));
    }

    #[test]
    fn push_promise_keeps_table_in_sync() {
        let mut e = Encoder::new();
        let mut w = Wire::default();
        let pushed = [
            (":method", "GET"),
            (":path", "/style.css"),
            ("x-pushed", "yes"),
        ];
        let mut p = 2u32.to_be_bytes().to_vec();
        p.extend_from_slice(&enc(&mut e, &pushed));
        w.frame(T_PUSH_PROMISE, F_END_HEADERS, 1, &p);
        let resp = [(":status", "200"), ("x-pushed", "yes")];
        let block = enc(&mut e, &resp);
        assert!(block.contains(&0xbe));
        let span = w.frame(T_HEADERS, F_END_HEADERS, 2, &block);
        w.expect(K::H(2, hv(&resp), false), span);
        check_splits(&w, Sender::Server, true);
        // A client may not send PUSH_PROMISE.
        let mut r = Reader::new(Sender::Client, false, 16_384);
        assert!(feed(&mut r, &w.bytes, &[]).1.is_err());
    }

    #[test]
    fn joined_mid_way() {
        let mut w = Wire::default();
        // Indexes a dynamic entry the reader never saw.
        let span = w.frame(T_HEADERS, F_END_HEADERS | F_END_STREAM, 5, &[0xc5, 0x82]);
        w.expect(K::Lost(5, true, LostReason::NotSynced), span);
        let (start, _) = w.frame(T_HEADERS, F_PADDED, 7, &[1, 0xc0, 0]);
        w.frame(T_CONTINUATION, 0, 7, &[0xc1]);
        let (_, end) = w.frame(T_CONTINUATION, F_END_HEADERS, 7, &[0xc2, 0xc3]);
        w.expect(K::Lost(7, false, LostReason::NotSynced), (start, end));
        let span = w.frame(T_DATA, 0, 7, b"payload");
        w.expect(K::D(7, b"payload".to_vec(), false), span);
        let r = check_splits(&w, Sender::Client, false);
        assert!(!r.synced());
        assert_eq!(r.headers_lost(), 2);
    }

    #[test]
    fn hpack_error_unsyncs_for_good() {
        let mut e = Encoder::new();
        let mut w = Wire::default();
        let span = w.frame(T_HEADERS, F_END_HEADERS, 1, &[0xbf]); // index 64: out of range
        w.expect(K::Lost(1, false, LostReason::Hpack), span);
        let span = w.frame(T_HEADERS, F_END_HEADERS, 3, &enc(&mut e, RESP));
        w.expect(K::Lost(3, false, LostReason::NotSynced), span);
        let span = w.frame(T_DATA, F_END_STREAM, 3, b"x");
        w.expect(K::D(3, b"x".to_vec(), true), span);
        let r = check_splits(&w, Sender::Server, true);
        assert!(!r.synced());
        assert_eq!(r.headers_lost(), 2);
    }

    #[test]
    fn huffman_block_from_rfc7541() {
        // RFC 7541 C.4.1.
        let block = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let mut w = Wire::default();
        let span = w.frame(T_HEADERS, F_END_HEADERS, 1, &block);
        let want = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        w.expect(K::H(1, hv(&want), false), span);
        check_splits(&w, Sender::Server, true);
    }

    #[test]
    fn header_list_caps_report_lost_but_stay_synced() {
        let mut e = Encoder::new();
        let names: Vec<String> = (0..300).map(|i| format!("x-h{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
        let big = "v".repeat(MAX_HEADER_LIST_BYTES);
        let huge = [("x-big", big.as_str())];
        let mut r = Reader::new(Sender::Server, true, MAX_FRAME_PAYLOAD_LIMIT);
        let mut bytes = frame(T_HEADERS, F_END_HEADERS, 1, &enc(&mut e, &many));
        bytes.extend(frame(T_HEADERS, F_END_HEADERS, 3, &enc(&mut e, &huge)));
        let last = [("x-h299", "v")];
        let block = enc(&mut e, &last);
        bytes.extend(frame(T_HEADERS, F_END_HEADERS, 5, &block));
        let (got, res) = feed(&mut r, &bytes, &[]);
        assert_eq!(res, Ok(()));
        let kinds: Vec<K> = got.into_iter().map(|e| e.0).collect();
        assert_eq!(
            kinds,
            [
                K::Lost(1, false, LostReason::TooLarge),
                K::Lost(3, false, LostReason::TooLarge),
                K::H(5, hv(&last), false),
            ]
        );
        assert!(r.synced());
        assert_eq!(r.headers_lost(), 2);
    }

    #[test]
    fn too_many_huffman_strings_are_not_decoded() {
        // Literal without indexing, new name; name and value are Huffman "a".
        let field = [0x00, 0x81, 0x1f, 0x81, 0x1f];
        let block = field.repeat(MAX_HUFFMAN_STRINGS / 2 + 1);
        assert_eq!(huffman_strings(&block), MAX_HUFFMAN_STRINGS + 2);
        let mut w = Wire::default();
        let span = w.frame(T_HEADERS, F_END_HEADERS, 1, &block);
        w.expect(K::Lost(1, false, LostReason::TooLarge), span);
        let span = w.frame(T_HEADERS, F_END_HEADERS, 3, &field);
        w.expect(K::Lost(3, false, LostReason::NotSynced), span);
        let mut r = Reader::new(Sender::Server, true, 16_384);
        let (got, res) = feed(&mut r, &w.bytes, &[]);
        assert_eq!(res, Ok(()));
        assert_eq!(got, w.expected(&[]));
        assert!(!r.synced());
        // Just under the limit still decodes.
        let ok = field.repeat(MAX_HUFFMAN_STRINGS / 2);
        assert_eq!(huffman_strings(&ok), MAX_HUFFMAN_STRINGS);
        let mut r = Reader::new(Sender::Server, true, 16_384);
        let (got, _) = feed(&mut r, &frame(T_HEADERS, F_END_HEADERS, 1, &ok), &[]);
        assert!(matches!(&got[0].0, K::H(1, f, false) if f.len() == MAX_HUFFMAN_STRINGS / 2));
        // The walker: encoder output has no Huffman strings, RFC 7541 C.4.1 has one.
        assert_eq!(huffman_strings(&enc(&mut Encoder::new(), REQ1)), 0);
        assert_eq!(huffman_strings(&[0x82, 0x41, 0x83, 0xf1, 0xe3, 0xc2]), 1);
        assert_eq!(hpack_int(&[31, 154, 10], 0, 5), Some((1337, 3)));
        assert_eq!(hpack_int(&[0xff; 9], 0, 7), None);
    }

    /// Pushes `bytes` whole, expects `err`, then checks the reader stays broken.
    fn expect_err(mut r: Reader, bytes: &[u8], err: &str) {
        let (_, res) = feed(&mut r, bytes, &[]);
        assert_eq!(res, Err(err));
        assert_eq!(r.buffered(), 0);
        let mut n = 0;
        let good = frame(T_DATA, 0, 1, b"ok");
        assert_eq!(r.push(&good, 1, 2, &mut |_| n += 1), Err(err));
        assert_eq!(n, 0);
    }

    #[test]
    fn errors() {
        let client = || Reader::new(Sender::Client, true, 16_384);
        let server = || Reader::new(Sender::Server, true, 16_384);
        expect_err(
            client(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            "bad client preface",
        );
        let mut r = client();
        assert_eq!(feed(&mut r, &PREFACE[..10], &[]).1, Ok(()));
        expect_err(r, b"HTTP/2.0\r\n", "bad client preface");
        expect_err(
            server(),
            &frame(T_CONTINUATION, F_END_HEADERS, 1, &[0x82]),
            "CONTINUATION without HEADERS",
        );
        let mut open = frame(T_HEADERS, 0, 1, &[0x82]);
        open.extend(frame(T_DATA, 0, 1, b"x"));
        expect_err(server(), &open, "expected CONTINUATION");
        let mut open = frame(T_HEADERS, 0, 1, &[0x82]);
        open.extend(frame(T_CONTINUATION, F_END_HEADERS, 3, &[0x82]));
        expect_err(server(), &open, "expected CONTINUATION");
        // Only the 9-byte header is needed to reject an oversized frame.
        expect_err(
            server(),
            &frame(T_DATA, 0, 1, &[0; 16_385])[..9],
            "frame length over maximum",
        );
        expect_err(
            server(),
            &frame(T_SETTINGS, 0, 0, &[0; 7]),
            "SETTINGS length not a multiple of 6",
        );
        expect_err(
            server(),
            &frame(T_SETTINGS, 0, 0, &settings_payload(&[(2, 5)])),
            "bad SETTINGS value",
        );
        expect_err(
            server(),
            &frame(T_DATA, 0, 0, b"x"),
            "stream frame on stream 0",
        );
        expect_err(
            server(),
            &frame(T_PING, 0, 1, &[0; 8]),
            "connection frame on a stream",
        );
        expect_err(
            server(),
            b"HTTP/1.1 200 OK\r\n\r\n",
            "frame length over maximum",
        );
        expect_err(
            server(),
            &[0x16, 3, 1, 0, 0xa5, 1, 0, 0, 0xa1, 3, 3],
            "frame length over maximum",
        );
        expect_err(
            client(),
            &[PREFACE.as_slice(), b"{\"jsonrpc\"".as_slice()].concat(),
            "frame length over maximum",
        );
    }

    #[test]
    fn large_frames_and_block_cap() {
        // Frames above 16384 are fine when the maximum allows them.
        let body = vec![7u8; 20_000];
        let mut r = Reader::new(Sender::Server, true, MAX_FRAME_PAYLOAD_LIMIT);
        let (got, res) = feed(&mut r, &frame(T_DATA, 0, 1, &body), &[5, 9000]);
        assert_eq!(res, Ok(()));
        assert_eq!(got, [(K::D(1, body, false), enter_t(0), exit_t(2))]);
        // A header block over the cap is an error, even split in CONTINUATIONs.
        let r = Reader::new(Sender::Server, true, MAX_FRAME_PAYLOAD_LIMIT);
        let mut bytes = frame(T_HEADERS, 0, 1, &vec![0x82; 200 * 1024]);
        bytes.extend(frame(
            T_CONTINUATION,
            F_END_HEADERS,
            1,
            &vec![0x82; 100 * 1024],
        ));
        expect_err(r, &bytes, "header block too large");
        // A huge announced frame does not allocate before its bytes arrive.
        let mut r = Reader::new(Sender::Server, true, MAX_FRAME_PAYLOAD_LIMIT);
        let hdr = &frame(T_DATA, 0, 1, &[])[..];
        let mut big = hdr.to_vec();
        big[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        big.extend_from_slice(&[1; 10]);
        assert_eq!(feed(&mut r, &big, &[4]).1, Ok(()));
        assert_eq!(r.buffered(), 19);
        assert!(r.buf.capacity() < 1024);
    }

    #[test]
    fn looks_like_cases() {
        assert_eq!(looks_like(PREFACE), Looks::Preface);
        assert_eq!(looks_like(b"PRI * HT"), Looks::Preface);
        let mut pre = PREFACE.to_vec();
        pre.extend(frame(T_SETTINGS, 0, 0, &[]));
        assert_eq!(looks_like(&pre), Looks::Preface);
        let mut srv = frame(
            T_SETTINGS,
            0,
            0,
            &settings_payload(&[(3, 100), (4, 65_535), (5, 16_384)]),
        );
        srv.extend(frame(T_WINDOW_UPDATE, 0, 0, &65_535u32.to_be_bytes()));
        assert_eq!(looks_like(&srv), Looks::Settings);
        assert_eq!(looks_like(&srv[..9]), Looks::Settings);
        assert_eq!(
            looks_like(&frame(T_SETTINGS, F_ACK, 0, &[])),
            Looks::Settings
        );
        let h = frame(T_HEADERS, F_END_HEADERS, 1, &[0x82; 50]);
        assert_eq!(looks_like(&h[..9]), Looks::Frame);
        assert_eq!(looks_like(&h), Looks::Frame);
        assert_eq!(
            looks_like(&frame(T_DATA, F_END_STREAM, 3, b"{}")),
            Looks::Frame
        );
        let no: [&[u8]; 10] = [
            b"",
            b"\0\0\0",
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
            br#"{"jsonrpc":"2.0","id":1}"#,
            &[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
            &[0; 9],
            &frame(T_SETTINGS, 0, 0, &[0; 7]),
            &frame(T_SETTINGS, 0, 0, &settings_payload(&[(2, 2)])),
            &frame(T_DATA, 0x40, 1, b"x"),
            &[h.as_slice(), b"HTTP/1.1 200 OK\r\n"].concat(),
        ];
        for b in no {
            assert_eq!(looks_like(b), Looks::No, "{b:?}");
        }
    }

    #[test]
    fn reader_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Reader>();
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn looks_like_random_bytes() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut hits = [0usize; 2];
        for _ in 0..10_000 {
            let n = 9 + rng.below(64);
            let mut b = rng.bytes(n);
            if matches!(looks_like(&b), Looks::Frame | Looks::Settings) {
                hits[0] += 1;
            }
            b[0] = 0; // the hardest case: a plausible length byte
            if matches!(looks_like(&b), Looks::Frame | Looks::Settings) {
                hits[1] += 1;
            }
        }
        assert!(hits[0] < 100 && hits[1] < 100, "{hits:?}");
    }

    /// Random input, valid prefixes with random tails, and mutated valid
    /// streams, pushed in random pieces: nothing panics, memory stays bounded.
    #[test]
    fn no_panic_on_random_input() {
        let mut e = Encoder::new();
        let mut w = request_one(&mut e);
        request_two(&mut e, &mut w, 2048);
        let valid = w.bytes;
        let mut rng = XorShift(42);
        let maxes = [0, 100, 16_384, MAX_FRAME_PAYLOAD_LIMIT];
        for round in 0..4000 {
            let mut input = match round % 3 {
                0 => {
                    let n = rng.below(300);
                    rng.bytes(n)
                }
                1 => {
                    let mut v = valid[..rng.below(valid.len())].to_vec();
                    let n = rng.below(100);
                    v.extend(rng.bytes(n));
                    v
                }
                _ => valid.clone(),
            };
            for _ in 0..rng.below(4) {
                if !input.is_empty() {
                    let i = rng.below(input.len());
                    input[i] = rng.next() as u8;
                }
            }
            let _ = looks_like(&input);
            let sender = if rng.below(2) == 0 {
                Sender::Client
            } else {
                Sender::Server
            };
            let max = maxes[rng.below(maxes.len())];
            let mut r = Reader::new(sender, rng.below(2) == 0, max);
            r.set_max_table_size(rng.next() as u32);
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (a, b) = rest.split_at(1 + rng.below(rest.len()));
                rest = b;
                let mut seen = 0usize;
                let _ = r.push(a, 1, 2, &mut |f| {
                    if let Frame::Headers { fields, .. } = f {
                        seen += fields.len();
                    }
                });
                assert!(seen <= MAX_HEADER_FIELDS);
                assert!(r.buffered() <= HDR_LEN + max + MAX_HEADER_BLOCK);
            }
        }
    }

    /// A reader of a connection joined mid-way tells who sent each block by its static table
    /// indices alone, across CONTINUATIONs and pushes, until told who writes; it decodes
    /// nothing, whatever the block.
    #[test]
    fn joined_reader_tells_senders() {
        let mut e = Encoder::new();
        enc(&mut e, REQ1);
        let mut w = Wire::default();
        // A request whose fields but `:method` are dynamic entries the reader never saw.
        let block = enc(&mut e, REQ1);
        assert_eq!(block[0], 0x83, "POST, static");
        let (start, _) = w.frame(T_HEADERS, 0, 1, &block[..2]);
        let (_, end) = w.frame(T_CONTINUATION, F_END_HEADERS, 1, &block[2..]);
        w.expect(K::By(1, false, Sender::Client), (start, end));
        let span = w.frame(T_HEADERS, F_END_HEADERS | F_END_STREAM, 1, &[0x88, 0xc0]);
        w.expect(K::By(1, true, Sender::Server), span);
        // Only dynamic entries: no one can tell.
        let span = w.frame(T_HEADERS, F_END_HEADERS, 3, &[0xbe, 0xbf]);
        w.expect(K::Lost(3, false, LostReason::NotSynced), span);
        // A PUSH_PROMISE is taken (the writer may be the server), never reported.
        let mut p = 2u32.to_be_bytes().to_vec();
        p.extend_from_slice(&[0x82, 0x84]);
        w.frame(T_PUSH_PROMISE, F_END_HEADERS, 1, &p);
        let span = w.frame(T_DATA, F_END_STREAM, 3, b"{}");
        w.expect(K::D(3, b"{}".to_vec(), true), span);
        for cuts in [vec![], vec![5], vec![9, 12], (1..w.bytes.len()).collect()] {
            let mut r = Reader::joined(16_384);
            let (got, res) = feed(&mut r, &w.bytes, &cuts);
            assert_eq!(res, Ok(()));
            assert_eq!(got, w.expected(&cuts), "cuts {cuts:?}");
            assert!(!r.synced());
            assert_eq!(r.headers_lost(), 4);
            assert_eq!(r.buffered(), 0);
        }
        // Told to stop, it no longer tells; PUSH_PROMISE is still taken.
        let mut r = Reader::joined(16_384);
        r.stop_peeking();
        let mut bytes = frame(T_HEADERS, F_END_HEADERS, 5, &[0x83]);
        bytes.extend(frame(T_PUSH_PROMISE, F_END_HEADERS, 5, &p));
        let (got, res) = feed(&mut r, &bytes, &[]);
        assert_eq!(res, Ok(()));
        assert_eq!(
            got,
            [(
                K::Lost(5, false, LostReason::NotSynced),
                enter_t(0),
                exit_t(0)
            )]
        );
    }

    #[test]
    fn static_senders() {
        let req = enc(&mut Encoder::new(), REQ1);
        assert_eq!(static_sender(&req), Some(Sender::Client));
        let resp = enc(&mut Encoder::new(), &[(":status", "202")]);
        assert_eq!(static_sender(&resp), Some(Sender::Server));
        // `:path` as an indexed name with a literal value, after a size update; its name is
        // read even when the value runs past the block.
        assert_eq!(
            static_sender(&[0x20, 0x44, 4, b'/', b'm', b'c', b'p']),
            Some(Sender::Client)
        );
        assert_eq!(static_sender(&[0x04, 9, b'/']), Some(Sender::Client));
        // `:status` as an indexed name, never indexed, Huffman value.
        assert_eq!(
            static_sender(&[0x18, 0x82, 0x64, 0x02]),
            Some(Sender::Server)
        );
        // Dynamic entries, literal names, regular static fields, nothing: no one.
        for none in [
            &[0xbe, 0xc5][..],
            &[0x40, 1, b':', 1, b'x'],
            &[0x9f],
            &[],
            &[0x82, 0x88],
        ] {
            assert_eq!(static_sender(none), None, "{none:?}");
        }
    }

    #[test]
    fn looks_mid_way_cases() {
        let mut run = frame(T_WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes());
        run.extend(frame(
            T_DATA,
            F_END_STREAM | F_PADDED,
            7,
            &[2, b'{', b'}', 0, 0],
        ));
        run.extend(frame(T_HEADERS, F_END_HEADERS, 9, &[0x83, 0xbe]));
        run.extend(frame(T_PING, F_ACK, 0, &[0; 8]));
        run.extend(frame(T_RST_STREAM, 0, 5, &8u32.to_be_bytes()));
        assert!(looks_mid_way(&run));
        // Cut anywhere past the first header, it still reads as frames.
        for i in 9..run.len() {
            assert!(looks_mid_way(&run[..i]), "cut at {i}");
        }
        // An extension's frame after the first; a long frame held whole.
        let ext = [run.clone(), frame(0x0b, 0xff, 3, b"origin")].concat();
        assert!(looks_mid_way(&ext));
        let long = frame(T_DATA, 0, 1, &[b'x'; 20_000]);
        assert!(looks_mid_way(&long));
        let tls = [
            0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0x17, 0x03, 0x03, 0x00, 0x45, 0xaa, 0xbb,
        ];
        let no: [&[u8]; 14] = [
            b"",
            &run[..8],
            // A long frame cut short: a TLS record's header reads as one.
            &long[..16_000],
            &tls,
            &[
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
            b"POST /mcp HTTP/1.1\r\nHost: x\r\n\r\n",
            br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            // An extension's frame first.
            &frame(0x0b, 0, 3, b"origin"),
            // Frames that break a rule: a connection frame on a stream, a stream frame on
            // stream 0, the reserved bit, a SETTINGS length, a flag DATA has not.
            &frame(T_PING, 0, 1, &[0; 8]),
            &frame(T_DATA, 0, 0, b"{}"),
            &frame(T_HEADERS, F_END_HEADERS, 0x8000_0001, &[0x82]),
            &frame(T_SETTINGS, 0, 0, &[0; 7]),
            &frame(T_DATA, 0x40, 1, b"x"),
            // Good frames, then bytes that do not go on as frames.
            &[run.as_slice(), b"\x00\x00\x08\x06\x00\x00\x00\x00\x01rest"].concat(),
        ];
        for b in no {
            assert!(!looks_mid_way(b), "{b:?}");
        }
    }

    #[test]
    fn looks_mid_way_random_bytes() {
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        let mut hits = 0;
        for _ in 0..10_000 {
            let n = 9 + rng.below(64);
            let mut b = rng.bytes(n);
            b[0] = 0; // a plausible length byte, the hardest case
            hits += usize::from(looks_mid_way(&b));
        }
        assert!(hits < 100, "{hits}");
    }
}
