//! Passive WebSocket message reassembly (RFC 6455, with RFC 7692 permessage-deflate).
//!
//! An observer sees the plaintext bytes one endpoint writes (or reads) on a connection after
//! the HTTP/1.1 `Upgrade` handshake, one direction at a time, and never sends anything. A
//! [`Reader`] per direction turns those bytes back into messages:
//!
//! * frame headers (2 to 14 bytes) may be split anywhere across pushes; masked payloads are
//!   unmasked with the frame's key, the key offset carried across pushes;
//! * fragmented messages are joined; ping/pong/close frames interleaved between fragments are
//!   reported without disturbing the message being assembled;
//! * compressed messages (RSV1 on the first frame, permessage-deflate negotiated) are inflated
//!   incrementally as their fragments arrive, with one inflater per direction that persists
//!   across messages unless the sender announced `no_context_takeover`;
//! * memory is bounded: payloads are streamed, never buffered as whole frames, so there is no
//!   frame-length cap at all; a message is kept only up to `max_message` bytes (after
//!   inflation). Beyond that it is reported as [`Message::Oversize`] and framing continues.
//!
//! The reader is lenient where strictness buys an observer nothing: it accepts non-minimal
//! length encodings, does not validate UTF-8 in text messages, does not check close codes,
//! accepts a 1-byte close payload (reported with no code), and keeps framing after a close.
//! It stops (returns `Err`) only when the byte stream can no longer be framed.
//!
//! Inflation uses `flate2` with its default pure-Rust backend (miniz_oxide). That backend has
//! no `new_with_window_bits` (it needs a zlib backend) and always inflates with a 32 KiB
//! window, which decodes any stream compressed with a smaller window correctly (the window only
//! bounds back-reference distances), so [`Deflate::window_bits`] is informational here.

use flate2::{Decompress, FlushDecompress, Status};

/// The 4 bytes RFC 7692 has the sender strip from each compressed message; re-appended here.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Approximate heap size of one miniz_oxide inflate state (32 KiB window plus Huffman tables).
const INFLATER_STATE_BYTES: usize = 43 * 1024;
/// Assembly buffer capacity kept between messages; anything larger is freed after a message.
const KEEP_CAPACITY: usize = 64 * 1024;
/// Stack buffer size used for unmasking compressed input and discarding inflated output.
const CHUNK: usize = 8 * 1024;

const ERR_RSV23: &str = "websocket: RSV2/RSV3 set";
const ERR_OPCODE: &str = "websocket: reserved opcode";
const ERR_UNMASKED: &str = "websocket: unmasked frame where masking is required";
const ERR_MASKED: &str = "websocket: masked frame where masking is forbidden";
const ERR_RSV1: &str = "websocket: RSV1 set without permessage-deflate";
const ERR_RSV1_PLACE: &str = "websocket: RSV1 set on a control or continuation frame";
const ERR_CTL_FRAGMENTED: &str = "websocket: fragmented control frame";
const ERR_CTL_LONG: &str = "websocket: control frame longer than 125 bytes";
const ERR_CONTINUATION: &str = "websocket: continuation frame without a started message";
const ERR_OPEN: &str = "websocket: new data frame while a fragmented message is open";
const ERR_LEN64: &str = "websocket: 64-bit payload length with the high bit set";
const ERR_INFLATE: &str = "websocket: permessage-deflate inflate error";

/// permessage-deflate as negotiated for ONE direction.
///
/// `Default` is "off" with `window_bits` 15 (the RFC 7692 default), not 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deflate {
    /// permessage-deflate is in use for this direction.
    pub on: bool,
    /// The sender resets its compressor after each message.
    pub no_context_takeover: bool,
    /// The sender's LZ77 window bits (8..=15), 15 default. Informational: the inflater always
    /// uses a 32 KiB window, which decodes every smaller window too.
    pub window_bits: u8,
}

impl Default for Deflate {
    fn default() -> Self {
        Deflate {
            on: false,
            no_context_takeover: false,
            window_bits: 15,
        }
    }
}

/// permessage-deflate parameters for (client→server, server→client) from the server's 101
/// response `Sec-WebSocket-Extensions` header value (`None`/empty = off).
///
/// Per RFC 7692: `client_no_context_takeover` applies to client→server,
/// `server_no_context_takeover` to server→client, `client_max_window_bits` /
/// `server_max_window_bits` likewise. Unknown extensions and parameters are ignored; only the
/// first permessage-deflate element counts. Values may be quoted; a missing or invalid window
/// value (outside 8..=15) leaves the default 15. Names compare case-insensitively.
pub fn negotiated(extensions: Option<&str>) -> (Deflate, Deflate) {
    let off = (Deflate::default(), Deflate::default());
    let Some(value) = extensions else {
        return off;
    };
    for element in value.split(',') {
        let mut parts = element.split(';');
        let name = parts.next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case("permessage-deflate") {
            continue;
        }
        let on = Deflate {
            on: true,
            ..Deflate::default()
        };
        let (mut c2s, mut s2c) = (on, on);
        for param in parts {
            let (key, val) = match param.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"').trim())),
                None => (param.trim(), None),
            };
            if key.eq_ignore_ascii_case("client_no_context_takeover") {
                c2s.no_context_takeover = true;
            } else if key.eq_ignore_ascii_case("server_no_context_takeover") {
                s2c.no_context_takeover = true;
            } else if key.eq_ignore_ascii_case("client_max_window_bits") {
                c2s.window_bits = window_bits(val);
            } else if key.eq_ignore_ascii_case("server_max_window_bits") {
                s2c.window_bits = window_bits(val);
            }
        }
        return (c2s, s2c);
    }
    off
}

/// A `*_max_window_bits` value: 8..=15, else (absent or invalid) 15.
fn window_bits(value: Option<&str>) -> u8 {
    value
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|b| (8..=15).contains(b))
        .unwrap_or(15)
}

/// What a [`Reader`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete text message (all fragments joined, inflated when compressed).
    Text {
        /// The message payload (not UTF-8 validated).
        data: &'a [u8],
        /// `enter_ns` of the push carrying the first byte of the message's first frame.
        first_enter_ns: u64,
        /// `exit_ns` of the push completing the message's last frame.
        last_exit_ns: u64,
    },
    /// A complete binary message (same).
    Binary {
        /// The message payload.
        data: &'a [u8],
        /// `enter_ns` of the push carrying the first byte of the message's first frame.
        first_enter_ns: u64,
        /// `exit_ns` of the push completing the message's last frame.
        last_exit_ns: u64,
    },
    /// A close frame.
    Close {
        /// The status code, if the payload has at least 2 bytes.
        code: Option<u16>,
        /// `exit_ns` of the push completing the frame.
        exit_ns: u64,
    },
    /// A ping (9) or pong (10) frame; its payload is ignored.
    Control {
        /// The frame opcode, 9 or 10.
        opcode: u8,
        /// `exit_ns` of the push completing the frame.
        exit_ns: u64,
    },
    /// A message over the size limit, dropped whole; framing continues after it.
    Oversize {
        /// Bytes counted for the message: the exact payload length when uncompressed, the
        /// exact inflated length when compressed with context takeover; with
        /// `no_context_takeover` the rest of a compressed message is skipped without inflating,
        /// so this is then a lower bound (still > `max_message`).
        len: u64,
        /// `exit_ns` of the push completing the message's last frame.
        exit_ns: u64,
    },
}

/// The frame being read (header complete).
#[derive(Clone, Copy, Debug)]
struct Frame {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    /// Payload bytes not yet seen.
    remaining: u64,
    mask: Option<[u8; 4]>,
    /// Offset into the mask key of the next payload byte (0..4).
    mask_off: usize,
    /// A whole unfragmented, unmasked, uncompressed message that fits: it may be lent straight
    /// from the pushed bytes if its payload arrives in one push.
    borrowable: bool,
}

/// The data message being assembled (its bytes, if kept, are in `Reader::buf`).
#[derive(Clone, Copy, Debug)]
struct Assembly {
    text: bool,
    compressed: bool,
    /// Over `max_message`: bytes are counted, not kept.
    dropped: bool,
    /// Dropped with `no_context_takeover`: the rest need not go through the inflater.
    skip_inflate: bool,
    /// The deflate stream ended (BFINAL block): later bytes of this message are ignored.
    stream_done: bool,
    len: u64,
    first_enter_ns: u64,
}

/// Reassembles the WebSocket messages of one direction of one connection.
#[derive(Debug)]
pub struct Reader {
    masked: bool,
    deflate: Deflate,
    max_message: usize,
    hdr: [u8; 14],
    hdr_len: usize,
    frame_enter_ns: u64,
    frame: Option<Frame>,
    ctl: [u8; 2],
    ctl_len: usize,
    msg: Option<Assembly>,
    buf: Vec<u8>,
    inflater: Option<Decompress>,
    /// The inflater saw a final block: reset it before the next compressed message.
    inflater_ended: bool,
    broken: Option<&'static str>,
}

impl Reader {
    /// A reader for one direction.
    ///
    /// `masked`: whether this direction's frames must be masked (client→server: true;
    /// server→client: false). `deflate`: this direction's permessage-deflate. `max_message`:
    /// largest message kept (bytes, after inflation). The inflater (~43 KiB) is allocated on
    /// the first compressed message only.
    pub fn new(masked: bool, deflate: Deflate, max_message: usize) -> Reader {
        Reader {
            masked,
            deflate,
            max_message,
            hdr: [0; 14],
            hdr_len: 0,
            frame_enter_ns: 0,
            frame: None,
            ctl: [0; 2],
            ctl_len: 0,
            msg: None,
            buf: Vec::new(),
            inflater: None,
            inflater_ended: false,
            broken: None,
        }
    }

    /// Feeds the next bytes of this direction, in order, and emits every message they complete.
    ///
    /// Returns `Err(reason)` once the stream cannot be framed (reserved opcode, control frame
    /// fragmented or longer than 125 bytes, RSV1 without deflate or on a control/continuation
    /// frame, RSV2/RSV3 set, masking not as expected, continuation without a started message,
    /// a new data frame while a fragmented message is open, inflate error, 64-bit length with
    /// the high bit set). Messages completed earlier in the same push are still emitted. After
    /// an `Err` the reader is broken: its buffers are freed, and further pushes emit nothing
    /// and return the same `Err`.
    pub fn push(
        &mut self,
        data: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut impl FnMut(Message<'_>),
    ) -> Result<(), &'static str> {
        if let Some(reason) = self.broken {
            return Err(reason);
        }
        let result = self.push_inner(data, enter_ns, exit_ns, emit);
        if let Err(reason) = result {
            self.broken = Some(reason);
            self.frame = None;
            self.msg = None;
            self.hdr_len = 0;
            self.buf = Vec::new();
            self.inflater = None;
        }
        result
    }

    /// Bytes held: partial frame header, message being assembled, and the inflater state
    /// (about 43 KiB, counted once allocated, whatever the negotiated window).
    pub fn buffered(&self) -> usize {
        let inflater = if self.inflater.is_some() {
            INFLATER_STATE_BYTES
        } else {
            0
        };
        self.hdr_len + self.buf.len() + inflater
    }

    fn push_inner(
        &mut self,
        data: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut impl FnMut(Message<'_>),
    ) -> Result<(), &'static str> {
        let mut pos = 0;
        loop {
            let frame = match self.frame {
                Some(f) => f,
                None => {
                    let rest = data.get(pos..).unwrap_or(&[]);
                    if rest.is_empty() {
                        return Ok(());
                    }
                    pos += self.take_header(rest, enter_ns)?;
                    match self.frame {
                        Some(f) => f,
                        None => return Ok(()),
                    }
                }
            };
            let rest = data.get(pos..).unwrap_or(&[]);
            let n = usize::try_from(frame.remaining).map_or(rest.len(), |r| r.min(rest.len()));
            let chunk = rest.get(..n).unwrap_or(&[]);
            if frame.borrowable && n as u64 == frame.remaining {
                // Whole message in this push: lend it without copying.
                self.frame = None;
                let first_enter_ns = self.msg.take().map_or(enter_ns, |m| m.first_enter_ns);
                emit(data_message(
                    frame.opcode == 1,
                    chunk,
                    first_enter_ns,
                    exit_ns,
                ));
                pos += n;
                continue;
            }
            self.payload(chunk)?;
            pos += n;
            if self.frame.is_some_and(|f| f.remaining > 0) {
                return Ok(());
            }
            self.frame = None;
            self.end_frame(frame, exit_ns, emit)?;
        }
    }

    /// Collects header bytes from `data`; once the header is whole, starts the frame.
    /// Returns the bytes used.
    fn take_header(&mut self, data: &[u8], enter_ns: u64) -> Result<usize, &'static str> {
        if self.hdr_len == 0 {
            self.frame_enter_ns = enter_ns;
        }
        let mut used = 0;
        loop {
            let have = self.hdr_len;
            let need = header_need(&self.hdr, have);
            if have >= need {
                break;
            }
            let take = (need - have).min(data.len().saturating_sub(used));
            if take == 0 {
                return Ok(used);
            }
            let (Some(dst), Some(src)) = (
                self.hdr.get_mut(have..have + take),
                data.get(used..used + take),
            ) else {
                return Ok(used);
            };
            dst.copy_from_slice(src);
            self.hdr_len += take;
            used += take;
            if have < 2 && self.hdr_len >= 2 {
                self.check_start(self.hdr[0], self.hdr[1])?;
            }
        }
        let frame = parse_header(&self.hdr)?;
        self.hdr_len = 0;
        self.start_frame(frame);
        Ok(used)
    }

    /// Validates the first two header bytes against the protocol and the reader's state.
    fn check_start(&self, b0: u8, b1: u8) -> Result<(), &'static str> {
        let fin = b0 & 0x80 != 0;
        let rsv1 = b0 & 0x40 != 0;
        let opcode = b0 & 0x0f;
        if b0 & 0x30 != 0 {
            return Err(ERR_RSV23);
        }
        if !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
            return Err(ERR_OPCODE);
        }
        if (b1 & 0x80 != 0) != self.masked {
            return Err(if self.masked {
                ERR_UNMASKED
            } else {
                ERR_MASKED
            });
        }
        if rsv1 && !self.deflate.on {
            return Err(ERR_RSV1);
        }
        if opcode >= 8 {
            if !fin {
                return Err(ERR_CTL_FRAGMENTED);
            }
            if b1 & 0x7f > 125 {
                return Err(ERR_CTL_LONG);
            }
        } else if opcode == 0 {
            if self.msg.is_none() {
                return Err(ERR_CONTINUATION);
            }
        } else if self.msg.is_some() {
            return Err(ERR_OPEN);
        }
        if rsv1 && opcode != 1 && opcode != 2 {
            return Err(ERR_RSV1_PLACE);
        }
        Ok(())
    }

    /// Sets up state for a frame whose header was just read (already validated).
    fn start_frame(&mut self, mut frame: Frame) {
        let max = self.max_message as u64;
        match frame.opcode {
            8..=10 => self.ctl_len = 0,
            0 => {
                // An uncompressed continuation that cannot fit: drop now, keep nothing of it.
                if let Some(mut msg) = self.msg
                    && !msg.compressed
                    && !msg.dropped
                    && msg.len.saturating_add(frame.remaining) > max
                {
                    self.drop_message(&mut msg);
                    self.msg = Some(msg);
                }
            }
            _ => {
                let mut msg = Assembly {
                    text: frame.opcode == 1,
                    compressed: frame.rsv1,
                    dropped: false,
                    skip_inflate: false,
                    stream_done: false,
                    len: 0,
                    first_enter_ns: self.frame_enter_ns,
                };
                self.buf.clear();
                if msg.compressed {
                    self.prepare_inflater();
                } else if frame.remaining > max {
                    self.drop_message(&mut msg);
                }
                frame.borrowable = frame.fin && !frame.rsv1 && frame.mask.is_none() && !msg.dropped;
                self.msg = Some(msg);
            }
        }
        self.frame = Some(frame);
    }

    /// Readies the inflater for a new compressed message.
    fn prepare_inflater(&mut self) {
        match &mut self.inflater {
            None => self.inflater = Some(Decompress::new(false)),
            Some(z) => {
                if self.deflate.no_context_takeover || self.inflater_ended {
                    z.reset(false);
                }
            }
        }
        self.inflater_ended = false;
    }

    /// Marks the message over the limit and frees its bytes.
    fn drop_message(&mut self, msg: &mut Assembly) {
        msg.dropped = true;
        if msg.compressed && self.deflate.no_context_takeover {
            msg.skip_inflate = true;
        }
        self.buf = Vec::new();
    }

    /// Consumes payload bytes of the current frame (at most its remaining length).
    fn payload(&mut self, chunk: &[u8]) -> Result<(), &'static str> {
        let Some(mut frame) = self.frame else {
            return Ok(());
        };
        let off = frame.mask_off;
        frame.borrowable = false;
        frame.remaining = frame.remaining.saturating_sub(chunk.len() as u64);
        frame.mask_off = (off + chunk.len()) % 4;
        self.frame = Some(frame);
        if frame.opcode >= 8 {
            for (i, b) in chunk.iter().enumerate() {
                let Some(slot) = self.ctl.get_mut(self.ctl_len) else {
                    break;
                };
                *slot = b ^ frame.mask.map_or(0, |k| k[(off + i) % 4]);
                self.ctl_len += 1;
            }
            return Ok(());
        }
        let Some(mut msg) = self.msg else {
            return Ok(());
        };
        let result = if msg.compressed {
            self.payload_compressed(&mut msg, chunk, frame.mask, off)
        } else {
            self.payload_plain(&mut msg, chunk, frame.mask, off);
            Ok(())
        };
        self.msg = Some(msg);
        result
    }

    /// Uncompressed payload: keep (unmasked) while under the limit, else just count.
    fn payload_plain(
        &mut self,
        msg: &mut Assembly,
        chunk: &[u8],
        mask: Option<[u8; 4]>,
        off: usize,
    ) {
        let n = chunk.len() as u64;
        if !msg.dropped && msg.len.saturating_add(n) > self.max_message as u64 {
            self.drop_message(msg);
        }
        msg.len = msg.len.saturating_add(n);
        if msg.dropped {
            return;
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(chunk);
        if let (Some(key), Some(fresh)) = (mask, self.buf.get_mut(start..)) {
            unmask(fresh, key, off);
        }
    }

    /// Compressed payload: unmask (through a stack buffer) and inflate.
    fn payload_compressed(
        &mut self,
        msg: &mut Assembly,
        chunk: &[u8],
        mask: Option<[u8; 4]>,
        mut off: usize,
    ) -> Result<(), &'static str> {
        let Some(key) = mask else {
            return self.inflate(msg, chunk);
        };
        let mut tmp = [0u8; CHUNK];
        for piece in chunk.chunks(CHUNK) {
            if msg.skip_inflate || msg.stream_done {
                break;
            }
            let Some(t) = tmp.get_mut(..piece.len()) else {
                break;
            };
            t.copy_from_slice(piece);
            unmask(t, key, off);
            off += piece.len();
            self.inflate(msg, t)?;
        }
        Ok(())
    }

    /// Feeds compressed bytes through the inflater. Output goes to `buf` while the message is
    /// within the limit; once over, it is discarded (still counted) so that the inflater's
    /// window stays in sync for the next message, unless `no_context_takeover` makes that
    /// pointless (then the rest is skipped). Loops until all input is consumed and the last
    /// call left output space unused (so nothing is pending inside the inflater).
    fn inflate(&mut self, msg: &mut Assembly, mut input: &[u8]) -> Result<(), &'static str> {
        if input.is_empty() {
            return Ok(());
        }
        let limit = self.max_message.saturating_add(1);
        loop {
            if msg.skip_inflate || msg.stream_done {
                return Ok(());
            }
            let Some(z) = self.inflater.as_mut() else {
                return Err(ERR_INFLATE);
            };
            let (in0, out0) = (z.total_in(), z.total_out());
            let (status, room) = if msg.dropped {
                let mut scratch = [0u8; CHUNK];
                let s = z.decompress(input, &mut scratch, FlushDecompress::None);
                (s, CHUNK)
            } else {
                grow(&mut self.buf, limit);
                let room = self.buf.capacity() - self.buf.len();
                let s = z.decompress_vec(input, &mut self.buf, FlushDecompress::None);
                (s, room)
            };
            let status = status.map_err(|_| ERR_INFLATE)?;
            let used = usize::try_from(z.total_in().wrapping_sub(in0)).unwrap_or(usize::MAX);
            let made = z.total_out().wrapping_sub(out0);
            input = input.get(used..).unwrap_or(&[]);
            msg.len = msg.len.saturating_add(made);
            if !msg.dropped && self.buf.len() > self.max_message {
                self.drop_message(msg);
            }
            if status == Status::StreamEnd {
                msg.stream_done = true;
                self.inflater_ended = true;
            }
            if (used == 0 && made == 0) || (input.is_empty() && made < room as u64) {
                return Ok(());
            }
        }
    }

    /// A frame's payload is complete: report control frames, finish messages on FIN.
    fn end_frame(
        &mut self,
        frame: Frame,
        exit_ns: u64,
        emit: &mut impl FnMut(Message<'_>),
    ) -> Result<(), &'static str> {
        match frame.opcode {
            8 => {
                let code = (self.ctl_len >= 2).then(|| u16::from_be_bytes(self.ctl));
                emit(Message::Close { code, exit_ns });
            }
            9 | 10 => emit(Message::Control {
                opcode: frame.opcode,
                exit_ns,
            }),
            _ if frame.fin => self.end_message(exit_ns, emit)?,
            _ => {}
        }
        Ok(())
    }

    /// The last frame of a data message is complete: inflate the tail and emit.
    fn end_message(
        &mut self,
        exit_ns: u64,
        emit: &mut impl FnMut(Message<'_>),
    ) -> Result<(), &'static str> {
        let Some(mut msg) = self.msg.take() else {
            return Ok(());
        };
        if msg.compressed {
            self.inflate(&mut msg, &TAIL)?;
        }
        if msg.dropped {
            emit(Message::Oversize {
                len: msg.len,
                exit_ns,
            });
        } else {
            emit(data_message(
                msg.text,
                &self.buf,
                msg.first_enter_ns,
                exit_ns,
            ));
        }
        self.buf.clear();
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        Ok(())
    }
}

/// A Text or Binary message.
fn data_message(text: bool, data: &[u8], first_enter_ns: u64, last_exit_ns: u64) -> Message<'_> {
    if text {
        Message::Text {
            data,
            first_enter_ns,
            last_exit_ns,
        }
    } else {
        Message::Binary {
            data,
            first_enter_ns,
            last_exit_ns,
        }
    }
}

/// Total header length implied by the first `have` bytes (2 until those are known).
fn header_need(hdr: &[u8; 14], have: usize) -> usize {
    if have < 2 {
        return 2;
    }
    let ext = match hdr[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if hdr[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// Decodes a complete header.
fn parse_header(hdr: &[u8; 14]) -> Result<Frame, &'static str> {
    let (b0, b1) = (hdr[0], hdr[1]);
    let (len, at) = match b1 & 0x7f {
        126 => (u64::from(u16::from_be_bytes([hdr[2], hdr[3]])), 4),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&hdr[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(ERR_LEN64);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = (b1 & 0x80 != 0).then(|| [hdr[at], hdr[at + 1], hdr[at + 2], hdr[at + 3]]);
    Ok(Frame {
        fin: b0 & 0x80 != 0,
        rsv1: b0 & 0x40 != 0,
        opcode: b0 & 0x0f,
        remaining: len,
        mask,
        mask_off: 0,
        borrowable: false,
    })
}

/// XORs `buf` with `key`, starting at key offset `off`.
fn unmask(buf: &mut [u8], key: [u8; 4], off: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(off + i) % 4];
    }
}

/// Makes room in `buf` for more inflated output (doubling), never past `limit` bytes in all.
fn grow(buf: &mut Vec<u8>, limit: usize) {
    let len = buf.len();
    if buf.capacity() > len {
        return;
    }
    let want = len.max(CHUNK).min(limit.saturating_sub(len)).max(1);
    buf.reserve_exact(want);
}

/// Frame builders for the tests of this module and of the stages above.
#[cfg(test)]
pub(crate) mod testing {
    use super::TAIL;
    use flate2::{Compress, FlushCompress};

    /// Writes one frame (minimal length encoding), masking with `key` if given.
    pub fn frame(
        fin: bool,
        rsv1: bool,
        opcode: u8,
        payload: &[u8],
        key: Option<[u8; 4]>,
    ) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
        let m = if key.is_some() { 0x80 } else { 0 };
        let n = payload.len();
        if n <= 125 {
            out.push(m | n as u8);
        } else if n <= 0xffff {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
        match key {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    /// Compresses one message per RFC 7692: sync flush, trailing 00 00 ff ff stripped.
    pub fn deflate_msg(c: &mut Compress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + data.len() / 2 + 1024);
        let in0 = c.total_in();
        loop {
            let done = (c.total_in() - in0) as usize;
            c.compress_vec(&data[done..], &mut out, FlushCompress::Sync)
                .expect("compress");
            if (c.total_in() - in0) as usize == data.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
        assert!(out.ends_with(&TAIL), "sync flush ends with 00 00 ff ff");
        out.truncate(out.len() - 4);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{deflate_msg, frame};
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// Owned copy of a `Message`, for comparisons.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Got {
        Text(Vec<u8>, u64, u64),
        Binary(Vec<u8>, u64, u64),
        Close(Option<u16>, u64),
        Control(u8, u64),
        Oversize(u64, u64),
    }

    fn own(m: Message<'_>) -> Got {
        match m {
            Message::Text {
                data,
                first_enter_ns,
                last_exit_ns,
            } => Got::Text(data.to_vec(), first_enter_ns, last_exit_ns),
            Message::Binary {
                data,
                first_enter_ns,
                last_exit_ns,
            } => Got::Binary(data.to_vec(), first_enter_ns, last_exit_ns),
            Message::Close { code, exit_ns } => Got::Close(code, exit_ns),
            Message::Control { opcode, exit_ns } => Got::Control(opcode, exit_ns),
            Message::Oversize { len, exit_ns } => Got::Oversize(len, exit_ns),
        }
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// Feeds `chunks` as consecutive pushes; push i has enter 1000+10i, exit 1000+10i+5.
    fn feed(r: &mut Reader, chunks: &[&[u8]]) -> (Vec<Got>, Result<(), &'static str>) {
        let mut got = Vec::new();
        let mut res = Ok(());
        for (i, c) in chunks.iter().enumerate() {
            let t = 1000 + 10 * i as u64;
            res = r.push(c, t, t + 5, &mut |m| got.push(own(m)));
            if res.is_err() {
                break;
            }
        }
        (got, res)
    }

    fn t(i: usize) -> (u64, u64) {
        (1000 + 10 * i as u64, 1000 + 10 * i as u64 + 5)
    }

    fn json(id: u32) -> Vec<u8> {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"read_file","arguments":{{"path":"/etc/hostname","note":"hello world"}}}}}}"#
        )
        .into_bytes()
    }

    fn big_json(n: usize, seed: u64) -> Vec<u8> {
        let mut rng = XorShift(seed);
        let mut s = String::from(r#"{"jsonrpc":"2.0","id":7,"result":{"content":["#);
        while s.len() < n {
            s.push_str(&format!(
                r#"{{"type":"text","text":"line {} value {:x}"}},"#,
                rng.below(1000),
                rng.next()
            ));
        }
        s.push_str(r#"{}]}}"#);
        s.into_bytes()
    }

    const KEY: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);
    const DEFL: Deflate = Deflate {
        on: true,
        no_context_takeover: false,
        window_bits: 15,
    };
    const DEFL_NCT: Deflate = Deflate {
        on: true,
        no_context_takeover: true,
        window_bits: 15,
    };

    /// Every split into two pushes and byte-by-byte give `expect` (message payloads), with
    /// timestamps: first push carrying a byte, last push carrying a byte.
    fn check_splits(make: &dyn Fn() -> Reader, wire: &[u8], expect: &[Vec<u8>]) {
        let payloads = |got: &[Got]| -> Vec<Vec<u8>> {
            got.iter()
                .filter_map(|g| match g {
                    Got::Text(d, ..) | Got::Binary(d, ..) => Some(d.clone()),
                    _ => None,
                })
                .collect()
        };
        for k in 0..=wire.len() {
            let mut r = make();
            let (got, res) = feed(&mut r, &[&wire[..k], &wire[k..]]);
            assert_eq!(res, Ok(()), "split at {k}");
            assert_eq!(payloads(&got), expect, "split at {k}");
            assert_eq!(
                r.buffered() % INFLATER_STATE_BYTES,
                0,
                "nothing left at {k}"
            );
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let mut r = make();
        let (got, res) = feed(&mut r, &bytes);
        assert_eq!(res, Ok(()));
        assert_eq!(payloads(&got), expect);
    }

    #[test]
    fn masked_text_whole_split_and_bytewise() {
        let msg = json(1);
        let wire = frame(true, false, 1, &msg, KEY);
        let mut r = Reader::new(true, Deflate::default(), 1 << 20);
        let (got, res) = feed(&mut r, &[&wire]);
        assert_eq!(res, Ok(()));
        assert_eq!(got, vec![Got::Text(msg.clone(), 1000, 1005)]);
        for k in 0..=wire.len() {
            let mut r = Reader::new(true, Deflate::default(), 1 << 20);
            let (got, res) = feed(&mut r, &[&wire[..k], &wire[k..]]);
            assert_eq!(res, Ok(()));
            let first = if k == 0 { t(1).0 } else { t(0).0 };
            let last = if k == wire.len() { t(0).1 } else { t(1).1 };
            assert_eq!(got, vec![Got::Text(msg.clone(), first, last)], "split {k}");
            assert_eq!(r.buffered(), 0);
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        let mut r = Reader::new(true, Deflate::default(), 1 << 20);
        let (got, res) = feed(&mut r, &bytes);
        assert_eq!(res, Ok(()));
        assert_eq!(got, vec![Got::Text(msg, t(0).0, t(wire.len() - 1).1)]);
    }

    #[test]
    fn unmasked_whole_message_is_borrowed() {
        let msg = json(2);
        let mut wire = frame(true, false, 1, &msg, None);
        wire.extend(frame(true, false, 2, b"\x00\x01", None));
        let mut r = Reader::new(false, Deflate::default(), 1 << 20);
        let range = wire.as_ptr_range();
        let mut n = 0;
        r.push(&wire, 1, 2, &mut |m| {
            let (Message::Text { data, .. } | Message::Binary { data, .. }) = m else {
                panic!("unexpected {m:?}");
            };
            assert!(range.contains(&data.as_ptr()), "borrowed from the push");
            n += 1;
        })
        .expect("ok");
        assert_eq!(n, 2);
        // Header in one push, payload in the next: still borrowed, timed from the header.
        let (head, body) = wire.split_at(2);
        let mut r = Reader::new(false, Deflate::default(), 1 << 20);
        let (got, _) = feed(&mut r, &[head, body]);
        assert_eq!(got[0], Got::Text(msg, t(0).0, t(1).1));
    }

    #[test]
    fn fragmented_with_interleaved_ping() {
        let msg = big_json(600, 1);
        let (a, rest) = msg.split_at(100);
        let (b, c) = rest.split_at(300);
        for key in [KEY, None] {
            let mut wire = frame(false, false, 1, a, key);
            wire.extend(frame(true, false, 9, b"ping!", key));
            wire.extend(frame(false, false, 0, b, key));
            wire.extend(frame(true, false, 10, b"", key));
            wire.extend(frame(true, false, 0, c, key));
            wire.extend(frame(true, false, 8, &1000u16.to_be_bytes(), key));
            let masked = key.is_some();
            let mut r = Reader::new(masked, Deflate::default(), 1 << 20);
            let (got, res) = feed(&mut r, &[&wire]);
            assert_eq!(res, Ok(()));
            assert_eq!(
                got,
                vec![
                    Got::Control(9, 1005),
                    Got::Control(10, 1005),
                    Got::Text(msg.clone(), 1000, 1005),
                    Got::Close(Some(1000), 1005),
                ]
            );
            let make = || Reader::new(masked, Deflate::default(), 1 << 20);
            check_splits(&make, &wire, std::slice::from_ref(&msg));
        }
    }

    #[test]
    fn compressed_fragmented_across_pushes() {
        let msg = big_json(3000, 2);
        let mut c = Compress::new(Compression::default(), false);
        let z = deflate_msg(&mut c, &msg);
        assert!(z.len() > 30);
        let (p1, rest) = z.split_at(z.len() / 3);
        let (p2, p3) = rest.split_at(rest.len() / 2);
        for key in [KEY, None] {
            let mut wire = frame(false, true, 1, p1, key);
            wire.extend(frame(true, false, 9, b"", key));
            wire.extend(frame(false, false, 0, p2, key));
            wire.extend(frame(true, false, 0, p3, key));
            let masked = key.is_some();
            let mut r = Reader::new(masked, DEFL, 1 << 20);
            let (got, res) = feed(&mut r, &[&wire]);
            assert_eq!(res, Ok(()));
            assert_eq!(got[1], Got::Text(msg.clone(), 1000, 1005));
            let make = || Reader::new(masked, DEFL, 1 << 20);
            check_splits(&make, &wire, std::slice::from_ref(&msg));
        }
    }

    #[test]
    fn context_takeover_needs_persistent_inflater() {
        let msg = big_json(2000, 3);
        let mut c = Compress::new(Compression::default(), false);
        let zs: Vec<Vec<u8>> = (0..3).map(|_| deflate_msg(&mut c, &msg)).collect();
        assert!(
            zs[1].len() * 4 < zs[0].len(),
            "2nd message references the 1st"
        );
        let mut wire = Vec::new();
        for z in &zs {
            wire.extend(frame(true, true, 1, z, KEY));
        }
        let make = || Reader::new(true, DEFL, 1 << 20);
        check_splits(&make, &wire, &[msg.clone(), msg.clone(), msg.clone()]);
        // An inflater reset per message cannot decode the 2nd one.
        let mut r = Reader::new(true, DEFL_NCT, 1 << 20);
        let (got, res) = feed(&mut r, &[&wire]);
        let ok = got
            .iter()
            .filter(|g| **g == Got::Text(msg.clone(), 1000, 1005))
            .count();
        assert!(
            res.is_err() || ok < 3,
            "reset inflater must not decode all: {ok}"
        );
    }

    #[test]
    fn no_context_takeover_resets() {
        let msgs: Vec<Vec<u8>> = (0..3).map(|i| big_json(1500, 10 + i)).collect();
        let mut c = Compress::new(Compression::default(), false);
        let mut wire = Vec::new();
        for m in &msgs {
            c.reset();
            wire.extend(frame(true, true, 2, &deflate_msg(&mut c, m), None));
        }
        // An uncompressed message in between is fine.
        wire.extend(frame(true, false, 1, b"plain", None));
        let mut expect = msgs.clone();
        expect.push(b"plain".to_vec());
        let make = || Reader::new(false, DEFL_NCT, 1 << 20);
        check_splits(&make, &wire, &expect);
        // A persistent inflater also decodes a stream whose sender resets.
        let make = || Reader::new(false, DEFL, 1 << 20);
        check_splits(&make, &wire, &expect);
    }

    #[test]
    fn long_lengths_and_oversize_uncompressed() {
        let m16 = big_json(300, 4);
        let m64 = big_json(70_000, 5);
        for key in [KEY, None] {
            let mut wire = frame(true, false, 1, &m16, key);
            assert_eq!(wire[1] & 0x7f, 126);
            wire.extend(frame(true, false, 2, &m64, key));
            assert_eq!(frame(true, false, 2, &m64, key)[1] & 0x7f, 127);
            let masked = key.is_some();
            let mut r = Reader::new(masked, Deflate::default(), 1 << 20);
            let (got, res) = feed(&mut r, &[&wire]);
            assert_eq!(res, Ok(()));
            assert_eq!(
                got,
                vec![
                    Got::Text(m16.clone(), 1000, 1005),
                    Got::Binary(m64.clone(), 1000, 1005)
                ]
            );
            // Oversize: single frame and fragmented, framing continues.
            let mut wire = frame(true, false, 2, &m64, key);
            wire.extend(frame(false, false, 1, &m64[..30_000], key));
            wire.extend(frame(true, false, 9, b"", key));
            wire.extend(frame(true, false, 0, &m64[30_000..], key));
            wire.extend(frame(true, false, 1, &m16, key));
            let pieces: Vec<&[u8]> = wire.chunks(777).collect();
            let mut r = Reader::new(masked, Deflate::default(), 1000);
            let (got, res) = feed(&mut r, &pieces);
            assert_eq!(res, Ok(()));
            let n = pieces.len() - 1;
            let kinds: Vec<Got> = got
                .into_iter()
                .map(|g| match g {
                    Got::Oversize(len, _) => Got::Oversize(len, 0),
                    Got::Control(o, _) => Got::Control(o, 0),
                    other => other,
                })
                .collect();
            assert_eq!(
                kinds,
                vec![
                    Got::Oversize(m64.len() as u64, 0),
                    Got::Control(9, 0),
                    Got::Oversize(m64.len() as u64, 0),
                    Got::Text(m16.clone(), kinds_first(&wire, &m16, key), t(n).1),
                ]
            );
        }
    }

    /// enter_ns of the 777-byte piece holding the first byte of the final frame.
    fn kinds_first(wire: &[u8], last: &[u8], key: Option<[u8; 4]>) -> u64 {
        let start = wire.len() - frame(true, false, 1, last, key).len();
        t(start / 777).0
    }

    #[test]
    fn oversize_compressed_keeps_inflater_in_sync() {
        let big = big_json(5000, 6);
        let small = big_json(400, 6); // shares a prefix with `big`
        for (defl, exact) in [(DEFL, true), (DEFL_NCT, false)] {
            let mut c = Compress::new(Compression::default(), false);
            let mut wire = Vec::new();
            for m in [&big, &small, &big] {
                if defl.no_context_takeover {
                    c.reset();
                }
                let z = deflate_msg(&mut c, m);
                let (a, b) = z.split_at(z.len() / 2);
                wire.extend(frame(false, true, 1, a, KEY));
                wire.extend(frame(true, false, 0, b, KEY));
            }
            let make = || Reader::new(true, defl, 1000);
            for k in (0..=wire.len()).step_by(7) {
                let mut r = make();
                let (got, res) = feed(&mut r, &[&wire[..k], &wire[k..]]);
                assert_eq!(res, Ok(()));
                assert_eq!(got.len(), 3);
                for i in [0, 2] {
                    let Got::Oversize(len, _) = got[i] else {
                        panic!("{:?}", got[i]);
                    };
                    assert!(len > 1000);
                    assert!(!exact || len == big.len() as u64, "exact with takeover");
                }
                assert!(matches!(&got[1], Got::Text(d, ..) if *d == small));
            }
        }
    }

    #[test]
    fn decompression_bomb_is_bounded() {
        let bomb = vec![b' '; 4 << 20];
        let max = 64 * 1024;
        for defl in [DEFL, DEFL_NCT] {
            let mut c = Compress::new(Compression::fast(), false);
            let z = deflate_msg(&mut c, &bomb);
            assert!(z.len() < 64 * 1024, "small: {}", z.len());
            if defl.no_context_takeover {
                c.reset();
            }
            let next = json(3);
            let mut wire = frame(true, true, 1, &z, None);
            wire.extend(frame(true, true, 1, &deflate_msg(&mut c, &next), None));
            let mut r = Reader::new(false, defl, max);
            let mut got = Vec::new();
            for (i, piece) in wire.chunks(1000).enumerate() {
                r.push(piece, i as u64, i as u64, &mut |m| got.push(own(m)))
                    .expect("ok");
                assert!(r.buffered() <= max + INFLATER_STATE_BYTES + 14);
                assert!(r.buf.capacity() <= 2 * (max + 1));
            }
            let Got::Oversize(len, _) = got[0] else {
                panic!("{:?}", got[0]);
            };
            if defl.no_context_takeover {
                assert!(len > max as u64);
            } else {
                assert_eq!(len, bomb.len() as u64);
            }
            assert!(matches!(&got[1], Got::Text(d, ..) if *d == next));
        }
    }

    #[test]
    fn negotiation() {
        let off = (Deflate::default(), Deflate::default());
        assert_eq!(negotiated(None), off);
        assert_eq!(negotiated(Some("")), off);
        assert_eq!(negotiated(Some("x-webkit-deflate-frame")), off);
        let on = Deflate {
            on: true,
            no_context_takeover: false,
            window_bits: 15,
        };
        assert_eq!(negotiated(Some("permessage-deflate")), (on, on));
        assert_eq!(
            negotiated(Some("permessage-deflate; client_max_window_bits")),
            (on, on)
        );
        let nct = Deflate {
            no_context_takeover: true,
            ..on
        };
        assert_eq!(
            negotiated(Some(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            )),
            (nct, nct)
        );
        assert_eq!(
            negotiated(Some("permessage-deflate;server_no_context_takeover")),
            (on, nct)
        );
        let w10 = Deflate {
            window_bits: 10,
            ..on
        };
        assert_eq!(
            negotiated(Some("permessage-deflate; server_max_window_bits=10")),
            (on, w10)
        );
        assert_eq!(
            negotiated(Some("permessage-deflate; client_max_window_bits=\"10\"")),
            (w10, on)
        );
        assert_eq!(
            negotiated(Some("permessage-deflate; client_max_window_bits=99")),
            (on, on)
        );
        assert_eq!(
            negotiated(Some(
                "foo; bar=1, Permessage-Deflate; client_no_context_takeover, \
                 permessage-deflate; server_no_context_takeover"
            )),
            (nct, on)
        );
    }

    #[test]
    fn errors_break_the_reader() {
        let text = |masked: bool| frame(true, false, 1, b"hi", masked.then_some([1, 2, 3, 4]));
        let cases: Vec<(bool, Deflate, Vec<u8>, &str)> = vec![
            (
                true,
                Deflate::default(),
                frame(true, true, 1, b"x", KEY),
                ERR_RSV1,
            ),
            (true, DEFL, frame(true, true, 9, b"x", KEY), ERR_RSV1_PLACE),
            (
                true,
                Deflate::default(),
                vec![0xa1, 0x80, 0, 0, 0, 0],
                ERR_RSV23,
            ),
            (false, Deflate::default(), vec![0x91, 0x00], ERR_RSV23),
            (true, Deflate::default(), text(false), ERR_UNMASKED),
            (false, Deflate::default(), text(true), ERR_MASKED),
            (
                false,
                Deflate::default(),
                frame(false, false, 9, b"", None),
                ERR_CTL_FRAGMENTED,
            ),
            (
                false,
                Deflate::default(),
                frame(true, false, 8, &[0; 126], None),
                ERR_CTL_LONG,
            ),
            (
                false,
                Deflate::default(),
                frame(true, false, 0, b"x", None),
                ERR_CONTINUATION,
            ),
            (
                false,
                Deflate::default(),
                frame(true, false, 3, b"x", None),
                ERR_OPCODE,
            ),
            (
                false,
                Deflate::default(),
                frame(true, false, 0xb, b"", None),
                ERR_OPCODE,
            ),
            (
                false,
                Deflate::default(),
                [0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0].to_vec(),
                ERR_LEN64,
            ),
            (
                false,
                DEFL,
                frame(true, true, 1, &[0xff; 20], None),
                ERR_INFLATE,
            ),
            (
                false,
                Deflate::default(),
                [
                    frame(false, false, 1, b"a", None),
                    frame(true, false, 1, b"b", None),
                ]
                .concat(),
                ERR_OPEN,
            ),
            (
                false,
                DEFL,
                [
                    frame(false, true, 1, &[0x02], None),
                    frame(true, true, 0, &[0x00], None),
                ]
                .concat(),
                ERR_RSV1_PLACE,
            ),
        ];
        for (masked, defl, bad, reason) in cases {
            // A good message first, then the bad bytes, split byte by byte.
            let mut wire = text(masked);
            wire.extend_from_slice(&bad);
            let mut r = Reader::new(masked, defl, 1 << 20);
            let bytes: Vec<&[u8]> = wire.chunks(1).collect();
            let (got, res) = feed(&mut r, &bytes);
            assert_eq!(res, Err(reason), "{bad:02x?}");
            assert_eq!(got.len(), 1, "{reason}");
            let mut n = 0;
            assert_eq!(r.push(&text(masked), 0, 0, &mut |_| n += 1), Err(reason));
            assert_eq!(n, 0);
            assert_eq!(r.buffered(), 0);
        }
    }

    #[test]
    fn close_codes_and_empty_frames() {
        let mut wire = frame(true, false, 8, b"", None);
        wire.extend(frame(true, false, 8, &[0x03], None));
        wire.extend(frame(true, false, 8, b"\x0f\xa1bye", None));
        wire.extend(frame(true, false, 1, b"", None));
        wire.extend(frame(false, false, 2, b"", None));
        wire.extend(frame(true, false, 0, b"", None));
        let mut r = Reader::new(false, DEFL, 10);
        let (got, res) = feed(&mut r, &[&wire]);
        assert_eq!(res, Ok(()));
        assert_eq!(
            got,
            vec![
                Got::Close(None, 1005),
                Got::Close(None, 1005),
                Got::Close(Some(4001), 1005),
                Got::Text(vec![], 1000, 1005),
                Got::Binary(vec![], 1000, 1005),
            ]
        );
        // Partial header is counted in buffered().
        let mut r = Reader::new(false, Deflate::default(), 10);
        r.push(&[0x82, 126, 0x01], 0, 0, &mut |_| {}).expect("ok");
        assert_eq!(r.buffered(), 3);
    }

    #[test]
    fn bfinal_block_then_next_message() {
        // A sender that ends each message with a BFINAL block (RFC 7692 7.2.3.4).
        let a = json(5);
        let b = json(6);
        let mut wire = Vec::new();
        for m in [&a, &b] {
            let mut c = Compress::new(Compression::default(), false);
            let mut z = Vec::with_capacity(1024);
            c.compress_vec(m, &mut z, FlushCompress::Finish)
                .expect("compress");
            wire.extend(frame(true, true, 1, &z, None));
        }
        let make = || Reader::new(false, DEFL, 1 << 20);
        check_splits(&make, &wire, &[a, b]);
    }

    #[test]
    fn random_inputs_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut c = Compress::new(Compression::default(), false);
        let good_c = deflate_msg(&mut c, &big_json(800, 9));
        for round in 0..3000 {
            let masked = rng.below(2) == 0;
            let key = masked.then_some([rng.next() as u8, 1, 2, rng.next() as u8]);
            let defl = match rng.below(3) {
                0 => Deflate::default(),
                1 => DEFL,
                _ => DEFL_NCT,
            };
            let max = [0, 10, 100, 5000][rng.below(4)];
            let mut wire = Vec::new();
            for _ in 0..rng.below(4) {
                match rng.below(4) {
                    0 => wire.extend(frame(true, false, 1, &json(round), key)),
                    1 => wire.extend(frame(true, defl.on, 2, &good_c, key)),
                    2 => wire.extend(frame(false, false, 1, b"frag", key)),
                    _ => wire.extend(frame(true, false, 9, b"p", key)),
                }
            }
            let junk = rng.below(300);
            wire.extend((0..junk).map(|_| rng.next() as u8));
            if !wire.is_empty() && rng.below(2) == 0 {
                let i = rng.below(wire.len());
                wire[i] ^= 1 << rng.below(8);
            }
            let mut r = Reader::new(masked, defl, max);
            let mut pos = 0;
            let mut failed = None;
            while pos < wire.len() {
                let n = 1 + rng.below(64);
                let end = (pos + n).min(wire.len());
                let res = r.push(&wire[pos..end], pos as u64, end as u64, &mut |m| {
                    if let Message::Text { data, .. } | Message::Binary { data, .. } = m {
                        assert!(data.len() <= max);
                    }
                });
                if let Some(f) = failed {
                    assert_eq!(res, Err(f));
                }
                failed = res.err().or(failed);
                assert!(r.buffered() <= max.max(KEEP_CAPACITY) + INFLATER_STATE_BYTES + 14);
                pos = end;
            }
        }
    }

    /// Random valid streams (compressed or not, fragmented, control frames interleaved) give
    /// the same messages whatever the push boundaries.
    #[test]
    fn random_valid_streams_split_anywhere() {
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        for _ in 0..150 {
            let masked = rng.below(2) == 0;
            let defl = [Deflate::default(), DEFL, DEFL_NCT][rng.below(3)];
            let max = [50, 3000, 1 << 20][rng.below(3)];
            let mut c = Compress::new(Compression::new(rng.below(10) as u32), false);
            let mut wire = Vec::new();
            for _ in 0..1 + rng.below(5) {
                let key = masked.then_some([rng.next() as u8, 9, rng.next() as u8, 7]);
                let msg = big_json(rng.below(4000), rng.next());
                let compress = defl.on && rng.below(3) != 0;
                let body = if compress {
                    if defl.no_context_takeover {
                        c.reset();
                    }
                    deflate_msg(&mut c, &msg)
                } else {
                    msg
                };
                let parts = 1 + rng.below(4);
                let mut cuts: Vec<usize> = (1..parts).map(|_| rng.below(body.len() + 1)).collect();
                cuts.sort_unstable();
                cuts.insert(0, 0);
                cuts.push(body.len());
                for i in 0..parts {
                    let (fin, op) = (i + 1 == parts, if i == 0 { 1 } else { 0 });
                    let rsv1 = compress && i == 0;
                    wire.extend(frame(fin, rsv1, op, &body[cuts[i]..cuts[i + 1]], key));
                    if rng.below(3) == 0 {
                        wire.extend(frame(true, false, 9 + rng.below(2) as u8, b"x", key));
                    }
                }
            }
            let strip = |got: Vec<Got>| -> Vec<Got> {
                got.into_iter()
                    .map(|g| match g {
                        Got::Text(d, ..) => Got::Text(d, 0, 0),
                        Got::Oversize(n, _) => Got::Oversize(n, 0),
                        Got::Control(o, _) => Got::Control(o, 0),
                        other => other,
                    })
                    .collect()
            };
            let (whole, res) = feed(&mut Reader::new(masked, defl, max), &[&wire]);
            assert_eq!(res, Ok(()));
            let mut pieces = Vec::new();
            let mut pos = 0;
            while pos < wire.len() {
                let end = (pos + 1 + rng.below(200)).min(wire.len());
                pieces.push(&wire[pos..end]);
                pos = end;
            }
            let (split, res) = feed(&mut Reader::new(masked, defl, max), &pieces);
            assert_eq!(res, Ok(()));
            assert_eq!(strip(whole), strip(split));
        }
    }
}
