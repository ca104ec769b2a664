//! Newline-delimited JSON framing, as the MCP stdio transport uses it: one JSON-RPC message
//! per line, no embedded newlines.
//!
//! The framer is fed a stream's bytes in whatever pieces the syscalls moved them (a reader may
//! get 65536 + 34560 bytes of one 100 KB line; a writer may send several lines at once) and
//! hands out whole lines, without copying a line that arrived in one piece. Each frame carries
//! the entry time of the syscall that carried its first byte and the exit time of the one that
//! carried its last, which is what send and receive times mean for the two sides.
//!
//! Bounded: a line longer than `max_line` is dropped, reported with its length and first
//! bytes, and framing resumes after its newline. After a hole ([`Framer::gap`]) the bytes up to
//! the next newline may be the tail of a message; they are handed out flagged `after_gap` so
//! that the parser can tell a clean restart from a fragment.

use memchr::memchr;

/// First bytes of an oversized line kept for reporting.
pub const OVERSIZE_PREFIX: usize = 1024;

/// One complete line.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The line, without its `\n` (and without a `\r` before it).
    pub bytes: &'a [u8],
    /// Entry time of the syscall that carried the first byte.
    pub first_enter_ns: u64,
    /// Exit time of the syscall that carried the newline.
    pub last_exit_ns: u64,
    /// The line follows a hole in the stream: it may be a fragment.
    pub after_gap: bool,
}

/// Something the framer has to say.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// A line.
    Frame(Frame<'a>),
    /// A line longer than the limit, dropped.
    Oversize {
        /// Its full length.
        len: u64,
        /// Its first bytes.
        prefix: Vec<u8>,
        /// Entry time of its first byte's syscall.
        first_enter_ns: u64,
        /// Exit time of its newline's syscall.
        last_exit_ns: u64,
    },
}

/// Most room a stream's line buffer keeps once its line is out: lines split across
/// syscalls up to this size reuse it, bigger ones give it back.
const KEPT_BUFFER: usize = 4096;

/// Per-stream line framer.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    first_enter_ns: u64,
    after_gap: bool,
    /// Set while dropping an oversized line: its length so far and prefix. Boxed: rare,
    /// and every stream holds a framer.
    oversize: Option<Box<(u64, Vec<u8>)>>,
    max_line: usize,
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Hands out a complete line, without a `\r` before its newline; blank lines are skipped.
#[inline]
fn emit_line(
    line: &[u8],
    first_enter_ns: u64,
    last_exit_ns: u64,
    after_gap: bool,
    emit: &mut impl FnMut(Output<'_>),
) {
    let bytes = trim_cr(line);
    if !bytes.is_empty() {
        emit(Output::Frame(Frame {
            bytes,
            first_enter_ns,
            last_exit_ns,
            after_gap,
        }));
    }
}

/// Keeps what still fits of `piece` in the reported first bytes of an oversized line.
fn keep_prefix(prefix: &mut Vec<u8>, piece: &[u8]) {
    let room = OVERSIZE_PREFIX.saturating_sub(prefix.len());
    prefix.extend_from_slice(&piece[..room.min(piece.len())]);
}

impl Framer {
    /// A framer that drops lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Framer {
            buf: Vec::new(),
            first_enter_ns: 0,
            after_gap: false,
            oversize: None,
            max_line,
        }
    }

    /// Bytes held for a line that has not ended yet.
    pub fn pending(&self) -> usize {
        self.buf.len() + self.oversize.as_ref().map_or(0, |o| o.0 as usize)
    }

    /// Bytes held in memory for the current line (its start, or an oversized line's prefix).
    pub fn held(&self) -> usize {
        self.buf.len() + self.oversize.as_ref().map_or(0, |o| o.1.len())
    }

    /// The buffered start of the current line, for stream classification.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Feed bytes one syscall moved; `emit` gets every frame completed by them.
    pub fn push(
        &mut self,
        mut data: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        mut emit: impl FnMut(Output<'_>),
    ) {
        while !data.is_empty() {
            let nl = memchr(b'\n', data);
            let (piece, rest, ends) = match nl {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if self.oversize.is_none() && self.buf.is_empty() {
                self.first_enter_ns = enter_ns;
            }
            if self.drop_oversize_piece(piece, ends, exit_ns, &mut emit) {
                continue;
            }
            if self.buf.len() + piece.len() > self.max_line {
                self.start_oversize(piece, ends, exit_ns, &mut emit);
            } else if !ends {
                self.buf.extend_from_slice(piece);
            } else {
                self.end_line(piece, enter_ns, exit_ns, &mut emit);
            }
        }
    }

    /// While an oversized line is being dropped, counts `piece` of it (keeping the first
    /// bytes) and reports the line when `piece` ends it. Returns false, doing nothing, when no
    /// line is being dropped.
    #[inline]
    fn drop_oversize_piece(
        &mut self,
        piece: &[u8],
        ends: bool,
        exit_ns: u64,
        emit: &mut impl FnMut(Output<'_>),
    ) -> bool {
        let Some(o) = &mut self.oversize else {
            return false;
        };
        let (len, prefix) = &mut **o;
        *len += piece.len() as u64;
        keep_prefix(prefix, piece);
        if ends && let Some(o) = self.oversize.take() {
            let (len, prefix) = *o;
            self.emit_oversize(len, prefix, exit_ns, emit);
        }
        true
    }

    /// The line held so far plus `piece` is past the limit: drop it, keeping its first bytes
    /// to report it, now if `piece` ends it or else at its newline.
    fn start_oversize(
        &mut self,
        piece: &[u8],
        ends: bool,
        exit_ns: u64,
        emit: &mut impl FnMut(Output<'_>),
    ) {
        let mut prefix = std::mem::take(&mut self.buf);
        let len = (prefix.len() + piece.len()) as u64;
        keep_prefix(&mut prefix, piece);
        prefix.truncate(OVERSIZE_PREFIX);
        prefix.shrink_to_fit();
        if ends {
            self.emit_oversize(len, prefix, exit_ns, emit);
        } else {
            self.oversize = Some(Box::new((len, prefix)));
        }
    }

    /// Reports a dropped line. Whatever a hole cut short ended with it, so the next line is
    /// not flagged `after_gap`.
    fn emit_oversize(
        &mut self,
        len: u64,
        prefix: Vec<u8>,
        exit_ns: u64,
        emit: &mut impl FnMut(Output<'_>),
    ) {
        self.after_gap = false;
        emit(Output::Oversize {
            len,
            prefix,
            first_enter_ns: self.first_enter_ns,
            last_exit_ns: exit_ns,
        });
    }

    /// `piece` ends a line within the limit: hand it out, straight from `piece` when the
    /// whole line came in this syscall, else from the buffer.
    #[inline]
    fn end_line(
        &mut self,
        piece: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        emit: &mut impl FnMut(Output<'_>),
    ) {
        let after_gap = std::mem::take(&mut self.after_gap);
        if self.buf.is_empty() {
            emit_line(piece, enter_ns, exit_ns, after_gap, emit);
            return;
        }
        self.buf.extend_from_slice(piece);
        emit_line(&self.buf, self.first_enter_ns, exit_ns, after_gap, emit);
        self.buf.clear();
        if self.buf.capacity() > KEPT_BUFFER {
            // A stream that sent one big message does not keep its room while it idles.
            self.buf = Vec::new();
        }
    }

    /// A hole in the stream: the partial line is unusable. Returns how many buffered bytes
    /// were dropped.
    pub fn gap(&mut self) -> u64 {
        let dropped = self.pending() as u64;
        self.buf.clear();
        self.oversize = None;
        self.after_gap = true;
        dropped
    }

    /// End of stream: returns the length of an unterminated last line, if any.
    pub fn finish(&mut self) -> Option<u64> {
        let n = self.pending() as u64;
        self.buf = Vec::new();
        self.oversize = None;
        (n > 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stream of newline-delimited JSON holds a framer: it stays small.
    #[test]
    fn framer_stays_small() {
        assert!(std::mem::size_of::<Framer>() <= 56);
    }

    #[derive(Debug, PartialEq)]
    enum Got {
        Line(Vec<u8>, u64, u64, bool),
        Big(u64, usize),
    }

    fn feed(f: &mut Framer, pieces: &[&[u8]]) -> Vec<Got> {
        let mut got = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let t = i as u64 * 10;
            f.push(p, t, t + 1, |o| match o {
                Output::Frame(fr) => got.push(Got::Line(
                    fr.bytes.to_vec(),
                    fr.first_enter_ns,
                    fr.last_exit_ns,
                    fr.after_gap,
                )),
                Output::Oversize { len, prefix, .. } => got.push(Got::Big(len, prefix.len())),
            });
        }
        got
    }

    /// Every way of cutting the stream gives the same lines.
    #[test]
    fn split_at_every_boundary() {
        let stream = b"{\"a\":1}\n{\"b\":2}\r\n\n{\"c\":3}\n";
        let want: Vec<Vec<u8>> = vec![
            b"{\"a\":1}".to_vec(),
            b"{\"b\":2}".to_vec(),
            b"{\"c\":3}".to_vec(),
        ];
        let lines = |g: Vec<Got>| -> Vec<Vec<u8>> {
            g.into_iter()
                .map(|g| match g {
                    Got::Line(l, ..) => l,
                    Got::Big(..) => panic!("oversize"),
                })
                .collect()
        };
        for a in 0..=stream.len() {
            for b in a..=stream.len() {
                let mut f = Framer::new(1 << 20);
                let got = feed(&mut f, &[&stream[..a], &stream[a..b], &stream[b..]]);
                assert_eq!(lines(got), want, "cut at {a},{b}");
                assert_eq!(f.finish(), None);
            }
        }
        // One byte at a time.
        let mut f = Framer::new(1 << 20);
        let pieces: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(lines(feed(&mut f, &pieces)), want);
    }

    #[test]
    fn times_come_from_first_and_last_syscall() {
        let mut f = Framer::new(1 << 20);
        let got = feed(&mut f, &[b"{\"a\"", b":1}", b"\n{}\n"]);
        assert_eq!(
            got,
            vec![
                Got::Line(b"{\"a\":1}".to_vec(), 0, 21, false),
                Got::Line(b"{}".to_vec(), 20, 21, false)
            ]
        );
    }

    #[test]
    fn oversize_lines_are_dropped_and_reported() {
        let stream = b"{\"x\":\"0123456789abcdefghij\"}\n{\"ok\":1}\n";
        for cut in 1..stream.len() {
            let mut f = Framer::new(16);
            let got = feed(&mut f, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(got[0], Got::Big(28, 28), "cut {cut}");
            assert!(
                matches!(&got[1], Got::Line(l, ..) if l == b"{\"ok\":1}"),
                "cut {cut}"
            );
            assert_eq!(got.len(), 2);
        }
    }

    #[test]
    fn gap_drops_partial_and_flags_next_line() {
        let mut f = Framer::new(1 << 20);
        assert!(feed(&mut f, &[b"{\"partial\":"]).is_empty());
        assert_eq!(f.gap(), 11);
        let got = feed(&mut f, &[b"1}\n{\"next\":2}\n"]);
        assert_eq!(got[0], Got::Line(b"1}".to_vec(), 0, 1, true));
        assert_eq!(got[1], Got::Line(b"{\"next\":2}".to_vec(), 0, 1, false));
        assert!(feed(&mut f, &[b"tail"]).is_empty());
        assert_eq!(f.finish(), Some(4));
    }
}
