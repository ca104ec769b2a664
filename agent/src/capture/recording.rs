//! The `--record` file: raw kernel records plus what the host said about the processes and
//! pipes behind them, so that `mcptap replay` reruns the exact pipeline without root.
//!
//! Format: the 8-byte magic `MCPTAP\0\x01`, then frames of `tag: u8`, `len: u32 LE` and `len`
//! bytes. Tags: 1 kernel record (the ring buffer bytes), 2 process (JSON [`ProcInfo`]),
//! 3 clock anchor (JSON [`ClockAnchor`]), 4 kernel counters (JSON object of totals),
//! 5 holders of a pipe or socket (JSON [`Holders`]). Unknown tags are skipped, so newer files replay in
//! older agents as far as they can.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Read, Write};

use serde::{Deserialize, Serialize};

use super::host::{Holder, HolderKind, Host, ProcInfo};

/// First bytes of a record file.
pub const MAGIC: &[u8; 8] = b"MCPTAP\x00\x01";
/// Largest frame accepted when reading (a kernel record is at most 32 KiB).
pub const MAX_FRAME: usize = 1 << 20;

const TAG_RECORD: u8 = 1;
const TAG_PROCESS: u8 = 2;
const TAG_CLOCK: u8 = 3;
const TAG_COUNTERS: u8 = 4;
const TAG_HOLDERS: u8 = 5;

/// Wall-clock time at a monotonic instant, to turn kernel timestamps into UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockAnchor {
    /// Nanoseconds since the Unix epoch.
    pub realtime_ns: u64,
    /// CLOCK_MONOTONIC nanoseconds at the same instant.
    pub monotonic_ns: u64,
}

impl ClockAnchor {
    /// Read both clocks now.
    pub fn now() -> Self {
        let read = |clock| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid timespec out-pointer.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        let mono = read(libc::CLOCK_MONOTONIC);
        let real = read(libc::CLOCK_REALTIME);
        ClockAnchor {
            realtime_ns: real,
            monotonic_ns: mono,
        }
    }

    /// Wall-clock nanoseconds for a monotonic timestamp.
    pub fn wall_ns(&self, monotonic_ns: u64) -> u64 {
        (self.realtime_ns as i128 + monotonic_ns as i128 - self.monotonic_ns as i128).max(0) as u64
    }
}

/// Holders of one pipe or socket, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holders {
    /// Pipe or socket.
    pub kind: HolderKind,
    /// Inode.
    pub inode: u64,
    /// Its holders.
    pub holders: Vec<Holder>,
}

/// One frame read back.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// Raw kernel record bytes.
    Record(Vec<u8>),
    /// Process metadata.
    Process(ProcInfo),
    /// Clock anchor.
    Clock(ClockAnchor),
    /// Kernel counter totals at that point.
    Counters(BTreeMap<String, u64>),
    /// Holders of a pipe or socket.
    Holders(Holders),
}

/// Writes a record file.
pub struct Writer<W: Write> {
    out: BufWriter<W>,
}

impl<W: Write> Writer<W> {
    /// Start a file: writes the magic.
    pub fn new(inner: W) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(1 << 16, inner);
        out.write_all(MAGIC)?;
        Ok(Writer { out })
    }

    fn frame(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        self.out.write_all(&[tag])?;
        self.out.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.out.write_all(payload)
    }

    /// Append raw kernel record bytes.
    pub fn record(&mut self, raw: &[u8]) -> io::Result<()> {
        self.frame(TAG_RECORD, raw)
    }

    /// Append process metadata.
    pub fn process(&mut self, p: &ProcInfo) -> io::Result<()> {
        self.frame(TAG_PROCESS, &serde_json::to_vec(p)?)
    }

    /// Append a clock anchor.
    pub fn clock(&mut self, c: &ClockAnchor) -> io::Result<()> {
        self.frame(TAG_CLOCK, &serde_json::to_vec(c)?)
    }

    /// Append kernel counter totals.
    pub fn counters(&mut self, c: &BTreeMap<&str, u64>) -> io::Result<()> {
        self.frame(TAG_COUNTERS, &serde_json::to_vec(c)?)
    }

    /// Append the holders of a pipe or socket.
    pub fn holders(&mut self, h: &Holders) -> io::Result<()> {
        self.frame(TAG_HOLDERS, &serde_json::to_vec(h)?)
    }

    /// Flush buffered frames to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Why a record file could not be read further.
#[derive(Debug)]
pub enum ReadError {
    /// Not a record file.
    BadMagic,
    /// A frame claims more than [`MAX_FRAME`] bytes.
    FrameTooLarge(usize),
    /// The file ends inside a frame (a crashed or still-running recorder).
    Truncated,
    /// A metadata frame does not parse.
    BadFrame(u8, String),
    /// I/O.
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::BadMagic => write!(f, "not an mcptap record file (bad magic)"),
            ReadError::FrameTooLarge(n) => write!(f, "frame of {n} bytes exceeds the 1 MiB limit"),
            ReadError::Truncated => write!(f, "file ends in the middle of a frame"),
            ReadError::BadFrame(tag, e) => write!(f, "frame with tag {tag} does not parse: {e}"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReadError {}

/// Reads frames from a record file.
pub struct Reader<R: Read> {
    inp: R,
    /// A buffer given back by [`Reader::recycle`], for the next frame.
    spare: Vec<u8>,
}

impl<R: Read> Reader<R> {
    /// Check the magic.
    pub fn new(mut inp: R) -> Result<Self, ReadError> {
        let mut magic = [0u8; 8];
        inp.read_exact(&mut magic).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ReadError::BadMagic,
            _ => ReadError::Io(e),
        })?;
        if &magic != MAGIC {
            return Err(ReadError::BadMagic);
        }
        Ok(Reader {
            inp,
            spare: Vec::new(),
        })
    }

    /// Give back a record's buffer once done with it: the next frame is read into it. A
    /// replay reads a record per syscall, and allocating each (zeroed) cost more than
    /// copying its bytes. Frames are at most [`MAX_FRAME`] bytes, so the buffer kept is too.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.spare = buf;
    }

    /// The next frame, `None` at a clean end of file.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            let mut head = [0u8; 5];
            let mut got = 0;
            while got < head.len() {
                match self.inp.read(&mut head[got..]) {
                    Ok(0) if got == 0 => return Ok(None),
                    Ok(0) => return Err(ReadError::Truncated),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(ReadError::Io(e)),
                }
            }
            let tag = head[0];
            let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
            if len > MAX_FRAME {
                return Err(ReadError::FrameTooLarge(len));
            }
            let mut payload = std::mem::take(&mut self.spare);
            payload.clear();
            payload.resize(len, 0);
            self.inp
                .read_exact(&mut payload)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => ReadError::Truncated,
                    _ => ReadError::Io(e),
                })?;
            let bad = |e: serde_json::Error| ReadError::BadFrame(tag, e.to_string());
            return Ok(Some(match tag {
                TAG_RECORD => Frame::Record(payload),
                TAG_PROCESS => Frame::Process(serde_json::from_slice(&payload).map_err(bad)?),
                TAG_CLOCK => Frame::Clock(serde_json::from_slice(&payload).map_err(bad)?),
                TAG_COUNTERS => Frame::Counters(serde_json::from_slice(&payload).map_err(bad)?),
                TAG_HOLDERS => Frame::Holders(serde_json::from_slice(&payload).map_err(bad)?),
                _ => continue,
            }));
        }
    }
}

/// A [`Host`] that saves every answer of the live host into the record file, so replay gets
/// the same answers.
pub struct RecordingHost<'a, H: Host, W: Write> {
    /// The live host.
    pub inner: &'a mut H,
    /// The record file.
    pub out: &'a mut Writer<W>,
}

impl<H: Host, W: Write> Host for RecordingHost<'_, H, W> {
    fn process(&mut self, pid: u32) -> Option<ProcInfo> {
        let p = self.inner.process(pid)?;
        if let Err(e) = self.out.process(&p) {
            log::warn!("--record: writing process metadata failed: {e}");
        }
        Some(p)
    }

    fn tls_library(&mut self, pid: u32) -> Option<crate::signal::TlsLibrary> {
        self.inner.tls_library(pid)
    }

    fn usage(&mut self, pid: u32, start_time: u64) -> Option<crate::capture::host::ProcessUsage> {
        self.inner.usage(pid, start_time)
    }

    fn holders(&mut self, kind: HolderKind, inode: u64) -> Vec<Holder> {
        let holders = self.inner.holders(kind, inode);
        if let Err(e) = self.out.holders(&Holders {
            kind,
            inode,
            holders: holders.clone(),
        }) {
            log::warn!("--record: writing holders failed: {e}");
        }
        holders
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_roundtrip_and_damage_is_reported() {
        let mut buf = Vec::new();
        {
            let mut w = Writer::new(&mut buf).unwrap();
            w.clock(&ClockAnchor {
                realtime_ns: 10,
                monotonic_ns: 3,
            })
            .unwrap();
            w.record(b"abc").unwrap();
            w.process(&ProcInfo {
                pid: 5,
                comm: "node".into(),
                ..Default::default()
            })
            .unwrap();
            w.flush().unwrap();
        }
        let mut r = Reader::new(&buf[..]).unwrap();
        assert!(matches!(r.next_frame().unwrap(), Some(Frame::Clock(c)) if c.wall_ns(5) == 12));
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::Record(b"abc".to_vec()))
        );
        assert!(matches!(r.next_frame().unwrap(), Some(Frame::Process(p)) if p.pid == 5));
        assert_eq!(r.next_frame().unwrap(), None);

        // Cut anywhere inside the last frame: truncated, never a panic or a bogus frame.
        for cut in buf.len() - 20..buf.len() {
            let mut r = Reader::new(&buf[..cut]).unwrap();
            let mut last = Ok(Some(Frame::Record(vec![])));
            while let Ok(Some(_)) = last {
                last = r.next_frame();
            }
            assert!(
                matches!(last, Err(ReadError::Truncated)),
                "cut at {cut}: {last:?}"
            );
        }
        assert!(matches!(
            Reader::new(&b"nope"[..]),
            Err(ReadError::BadMagic)
        ));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&[1, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            Reader::new(&huge[..]).unwrap().next_frame(),
            Err(ReadError::FrameTooLarge(_))
        ));
        // Unknown tags are skipped.
        let mut future = MAGIC.to_vec();
        future.extend_from_slice(&[99, 1, 0, 0, 0, b'x', 1, 1, 0, 0, 0, b'y']);
        let mut r = Reader::new(&future[..]).unwrap();
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Record(b"y".to_vec())));
    }
}
