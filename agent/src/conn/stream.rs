//! Streams: kernel chunks in, ordered bytes per stream out, with every hole named.
//!
//! A stream is the bytes one process moved through one fd in one direction: (tgid, fd,
//! direction, inode). The inode keeps a reused fd number from continuing an old stream, and
//! it is also what pairs the writer's and the reader's view of one pipe (see `mcp::transport`).
//!
//! The kernel ships a syscall's bytes as chunks with an offset; [`Reassembly`] checks that the
//! chunks of each syscall arrive complete and in order and turns everything else into a
//! [`Gap`], so that framing can resynchronise instead of gluing unrelated bytes together.

use super::verdict::Verdict;
use crate::capture::{Dir, Record};
use mcptap_abi::{FLAG_LOST_BEFORE, FLAG_TRUNCATED};

/// One direction of one process fd: its reassembly, what is known of its content, and what
/// the layer above keeps for it (its framing).
#[derive(Debug, Default)]
pub struct Stream<S> {
    /// Checks that syscall chunks arrive whole and in order.
    pub reasm: Reassembly,
    /// Whether it carries MCP.
    pub verdict: Verdict,
    /// Its bytes are TLS plaintext (read from a TLS library, not the socket).
    pub tls: bool,
    /// That library.
    pub tls_library: Option<crate::signal::TlsLibrary>,
    /// The layer above's state.
    pub upper: S,
}

/// Identity of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Process id.
    pub tgid: u32,
    /// File descriptor.
    pub fd: i32,
    /// Direction, from the process's point of view.
    pub dir: Dir,
    /// Inode of the pipe or socket.
    pub inode: u64,
}

impl StreamKey {
    /// The stream a data or close record belongs to.
    pub fn of(rec: &Record<'_>) -> Self {
        StreamKey {
            tgid: rec.hdr.tgid,
            fd: rec.hdr.fd,
            dir: rec.dir(),
            inode: rec.hdr.inode,
        }
    }
}

// Why bytes are missing is part of the signal model: the events report it.
pub use crate::signal::GapReason;

/// A hole in a stream, before the bytes that follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gap {
    /// Why.
    pub reason: GapReason,
    /// Bytes known to be missing, when the kernel said how many.
    pub bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct Inflight {
    tid: u32,
    next: u64,
    total: u64,
}

/// Per-stream check that syscall chunks arrive whole and in order.
#[derive(Debug, Default)]
pub struct Reassembly {
    inflight: Option<Inflight>,
    /// A hole to report before the next bytes, noticed outside this stream's records.
    pending: Option<GapReason>,
}

/// What one data record means for its stream.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    /// A hole before this record's bytes, if any.
    pub gap: Option<Gap>,
    /// Whether this record's bytes (possibly empty) continue the stream.
    pub has_bytes: bool,
}

impl Reassembly {
    /// Report a hole of `reason` before this stream's next bytes.
    pub fn mark(&mut self, reason: GapReason) {
        self.pending.get_or_insert(reason);
    }

    /// Account for one data record of this stream.
    pub fn step(&mut self, rec: &Record<'_>) -> Step {
        let h = &rec.hdr;
        let mut gap = self.pending.take().map(|reason| Gap {
            reason,
            bytes: None,
        });
        if h.flags & FLAG_LOST_BEFORE != 0 {
            gap = Some(Gap {
                reason: GapReason::KernelLoss,
                bytes: None,
            });
        }
        match self.inflight {
            Some(inf) if inf.tid == h.tid && inf.next == h.offset && h.offset > 0 => {}
            Some(inf) => {
                // The previous syscall never finished arriving.
                let reason = if inf.tid != h.tid && h.offset == 0 {
                    GapReason::Interleaved
                } else {
                    GapReason::MissingChunk
                };
                // When this record starts a syscall, the hole is exactly the unfinished tail.
                let bytes = (h.offset == 0).then(|| inf.total - inf.next);
                gap = gap.or(Some(Gap { reason, bytes }));
            }
            None if h.offset > 0 => {
                gap = gap.or(Some(Gap {
                    reason: GapReason::MissingChunk,
                    bytes: Some(h.offset),
                }));
            }
            None => {}
        }
        self.inflight = None;
        if h.flags & FLAG_TRUNCATED != 0 {
            // A header-only marker: the syscall's bytes after `offset` were never shipped.
            return Step {
                gap: Some(Gap {
                    reason: GapReason::Truncated,
                    bytes: Some(h.total.saturating_sub(h.offset)),
                }),
                has_bytes: !rec.data.is_empty(),
            };
        }
        let end = h.offset.saturating_add(rec.data.len() as u64);
        if end < h.total {
            self.inflight = Some(Inflight {
                tid: h.tid,
                next: end,
                total: h.total,
            });
        }
        Step {
            gap,
            has_bytes: !rec.data.is_empty(),
        }
    }

    /// At close or exit: a syscall still arriving is a hole at the end.
    pub fn finish(&mut self) -> Option<Gap> {
        self.inflight.take().map(|inf| Gap {
            reason: GapReason::MissingChunk,
            bytes: Some(inf.total - inf.next),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::encode_record;
    use mcptap_abi::{EventHeader, FD_PIPE, RECORD_DATA};

    fn rec(tid: u32, total: u64, offset: u64, data: &[u8], flags: u8) -> Vec<u8> {
        encode_record(
            &EventHeader {
                record: RECORD_DATA,
                fd_kind: FD_PIPE,
                tid,
                total,
                offset,
                flags,
                ..Default::default()
            },
            data,
        )
    }

    fn step(r: &mut Reassembly, raw: &[u8]) -> Step {
        r.step(&Record::parse(raw).unwrap())
    }

    #[test]
    fn whole_and_chunked_syscalls_have_no_gaps() {
        let mut r = Reassembly::default();
        assert_eq!(step(&mut r, &rec(1, 3, 0, b"abc", 0)).gap, None);
        assert_eq!(step(&mut r, &rec(1, 6, 0, b"ab", 0)).gap, None);
        assert_eq!(step(&mut r, &rec(1, 6, 2, b"cd", 0)).gap, None);
        assert_eq!(step(&mut r, &rec(1, 6, 4, b"ef", 0)).gap, None);
        assert_eq!(r.finish(), None);
    }

    #[test]
    fn holes_are_named() {
        let mut r = Reassembly::default();
        // Middle chunk missing.
        step(&mut r, &rec(1, 6, 0, b"ab", 0));
        let s = step(&mut r, &rec(1, 6, 4, b"ef", 0));
        assert_eq!(s.gap.unwrap().reason, GapReason::MissingChunk);
        // Tail missing, then a new syscall.
        step(&mut r, &rec(1, 6, 0, b"ab", 0));
        let s = step(&mut r, &rec(1, 2, 0, b"zz", 0));
        assert_eq!(
            s.gap,
            Some(Gap {
                reason: GapReason::MissingChunk,
                bytes: Some(4)
            })
        );
        // Another thread's syscall cuts in.
        step(&mut r, &rec(1, 6, 0, b"ab", 0));
        let s = step(&mut r, &rec(2, 2, 0, b"zz", 0));
        assert_eq!(s.gap.unwrap().reason, GapReason::Interleaved);
        // Kernel loss flag and truncation marker.
        let s = step(&mut r, &rec(1, 2, 0, b"zz", FLAG_LOST_BEFORE));
        assert_eq!(s.gap.unwrap().reason, GapReason::KernelLoss);
        step(&mut r, &rec(1, 100, 0, b"ab", 0));
        let s = step(&mut r, &rec(1, 100, 2, b"", FLAG_TRUNCATED));
        assert_eq!(
            s.gap,
            Some(Gap {
                reason: GapReason::Truncated,
                bytes: Some(98)
            })
        );
        assert!(!s.has_bytes);
        // Unfinished at close.
        step(&mut r, &rec(1, 10, 0, b"ab", 0));
        assert_eq!(r.finish().unwrap().bytes, Some(8));
    }
}
