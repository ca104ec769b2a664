//! Stage 1, capture: kernel records in, typed events out.
//!
//! The kernel programs ship [`mcptap_abi::EventHeader`]-prefixed records through a ring buffer
//! ([`kernel`]); `--record` saves them, with the process metadata needed to name them, and
//! `mcptap replay` reads them back ([`recording`]). Both sources produce the same [`Record`]s, so
//! everything after this stage runs identically live and in replay.

pub mod btf;
pub mod cgroup;
pub mod host;
pub mod kernel;
pub mod recording;
pub mod tls;

use std::fmt;

use mcptap_abi::{
    DIR_OUT, EventHeader, FD_PIPE, FD_TCP, FD_UNIX, FLAG_TLS, HEADER_SIZE, RECORD_CLOSE,
    RECORD_DATA, RECORD_EXEC, RECORD_EXIT, RECORD_SOCKET, RECORD_TLS, SocketInfo,
};

/// What a kernel record says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Payload bytes of a read or write.
    Data,
    /// A tracked fd was closed.
    Close,
    /// A watched process called execve.
    Exec,
    /// A watched process exited.
    Exit,
    /// Where a socket's two ends are (payload: [`mcptap_abi::SocketInfo`]).
    Socket,
    /// A TCP socket carries TLS: its ciphertext is not shipped.
    Tls,
}

/// What the capture layer must hear about processes: the OpenSSL probes follow them (a new
/// program may carry its own OpenSSL; a TLS socket may come from a library loaded late).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessNote {
    /// The process started a new program.
    Exec(u32),
    /// The process exited.
    Exit(u32),
    /// A TLS socket appeared in the process.
    TlsSocket(u32),
}

/// Which way bytes moved, from the point of view of the process that made the syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    /// The process read them.
    In,
    /// The process wrote them.
    Out,
}

/// What the fd is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FdKind {
    /// Anonymous pipe or FIFO.
    Pipe,
    /// AF_UNIX stream socket.
    Unix,
    /// TCP socket (IPv4 or IPv6).
    Tcp,
}

impl fmt::Display for FdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FdKind::Pipe => "pipe",
            FdKind::Unix => "unix",
            FdKind::Tcp => "tcp",
        })
    }
}

/// One kernel record, borrowed from the ring buffer or a replay file.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    /// The header as the kernel wrote it.
    pub hdr: EventHeader,
    /// Payload bytes (empty for records that are not data).
    pub data: &'a [u8],
}

/// A record that does not have the shape of the ABI.
#[derive(Debug, PartialEq, Eq)]
pub enum RecordError {
    /// Shorter than a header.
    Short(usize),
    /// The header's `len` disagrees with the bytes that follow it.
    LengthMismatch {
        /// What the header says.
        header: u32,
        /// What is there.
        actual: usize,
    },
    /// Unknown record, fd kind or direction.
    Unknown(&'static str, u8),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Short(n) => write!(f, "record of {n} bytes is shorter than a header"),
            RecordError::LengthMismatch { header, actual } => {
                write!(
                    f,
                    "record header says {header} payload bytes, {actual} follow"
                )
            }
            RecordError::Unknown(what, v) => write!(f, "unknown {what} {v}"),
        }
    }
}

impl std::error::Error for RecordError {}

impl<'a> Record<'a> {
    /// Check and split raw record bytes.
    pub fn parse(raw: &'a [u8]) -> Result<Self, RecordError> {
        if raw.len() < HEADER_SIZE {
            return Err(RecordError::Short(raw.len()));
        }
        // SAFETY: EventHeader is repr(C) plain integers; any bytes are a valid value, and
        // read_unaligned copes with the ring buffer's 8-byte alignment or a file's none.
        let hdr: EventHeader = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
        let data = &raw[HEADER_SIZE..];
        if hdr.len as usize != data.len() {
            return Err(RecordError::LengthMismatch {
                header: hdr.len,
                actual: data.len(),
            });
        }
        let rec = Record { hdr, data };
        match rec.kind()? {
            RecordKind::Data | RecordKind::Close | RecordKind::Tls => {
                rec.fd_kind()?;
            }
            RecordKind::Socket => {
                rec.fd_kind()?;
                if data.len() != std::mem::size_of::<SocketInfo>() {
                    return Err(RecordError::LengthMismatch {
                        header: std::mem::size_of::<SocketInfo>() as u32,
                        actual: data.len(),
                    });
                }
            }
            RecordKind::Exec | RecordKind::Exit => {}
        }
        Ok(rec)
    }

    /// The kind of record.
    pub fn kind(&self) -> Result<RecordKind, RecordError> {
        Ok(match self.hdr.record {
            RECORD_DATA => RecordKind::Data,
            RECORD_CLOSE => RecordKind::Close,
            RECORD_EXEC => RecordKind::Exec,
            RECORD_EXIT => RecordKind::Exit,
            RECORD_SOCKET => RecordKind::Socket,
            RECORD_TLS => RecordKind::Tls,
            other => return Err(RecordError::Unknown("record kind", other)),
        })
    }

    /// Direction of a data record.
    pub fn dir(&self) -> Dir {
        if self.hdr.dir == DIR_OUT {
            Dir::Out
        } else {
            Dir::In
        }
    }

    /// Whether a data record carries TLS plaintext (from a TLS library, not a syscall).
    pub fn is_tls(&self) -> bool {
        self.hdr.flags & FLAG_TLS != 0
    }

    /// The TLS library a plaintext record came from.
    pub fn tls_library(&self) -> Option<crate::signal::TlsLibrary> {
        crate::signal::TlsLibrary::from_abi(self.hdr.tls_lib)
    }

    /// Kind of fd of a data or close record.
    pub fn fd_kind(&self) -> Result<FdKind, RecordError> {
        Ok(match self.hdr.fd_kind {
            FD_PIPE => FdKind::Pipe,
            FD_UNIX => FdKind::Unix,
            FD_TCP => FdKind::Tcp,
            other => return Err(RecordError::Unknown("fd kind", other)),
        })
    }

    /// The addresses carried by a [`RecordKind::Socket`] record.
    pub fn socket_info(&self) -> Option<SocketInfo> {
        if self.hdr.record != RECORD_SOCKET || self.data.len() != std::mem::size_of::<SocketInfo>()
        {
            return None;
        }
        // SAFETY: SocketInfo is repr(C) plain integers and arrays; length checked above.
        Some(unsafe { std::ptr::read_unaligned(self.data.as_ptr().cast()) })
    }

    /// The thread's comm as text, borrowed from the record (it is noted for every record
    /// that carries bytes: copying it each time was an allocation per record).
    pub fn comm(&self) -> std::borrow::Cow<'_, str> {
        comm_text(&self.hdr.comm)
    }

    /// Serialise back to the bytes the kernel wrote (for `--record` and tests).
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_record(&self.hdr, self.data)
    }
}

/// Raw record bytes for a header and payload; `hdr.len` is set from the payload.
pub fn encode_record(hdr: &EventHeader, data: &[u8]) -> Vec<u8> {
    let mut hdr = *hdr;
    hdr.len = data.len() as u32;
    let mut out = Vec::with_capacity(HEADER_SIZE + data.len());
    // SAFETY: EventHeader is repr(C) plain integers with explicit padding.
    let bytes: &[u8] =
        unsafe { std::slice::from_raw_parts((&hdr as *const EventHeader).cast(), HEADER_SIZE) };
    out.extend_from_slice(bytes);
    out.extend_from_slice(data);
    out
}

/// A NUL-padded kernel comm as a string.
pub fn comm_str(comm: &[u8; 16]) -> String {
    comm_text(comm).into_owned()
}

/// A NUL-padded comm as text, borrowed unless it is not UTF-8.
fn comm_text(comm: &[u8; 16]) -> std::borrow::Cow<'_, str> {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end])
}

/// A comm name as the kernel stores it: at most 15 bytes, NUL-padded.
pub fn comm_key(name: &str) -> [u8; 16] {
    let mut key = [0u8; 16];
    let n = name.len().min(15);
    key[..n].copy_from_slice(&name.as_bytes()[..n]);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_validation() {
        let hdr = EventHeader {
            record: RECORD_DATA,
            dir: DIR_OUT,
            fd_kind: FD_PIPE,
            tgid: 7,
            comm: comm_key("python3"),
            ..Default::default()
        };
        let raw = encode_record(&hdr, b"{}\n");
        let rec = Record::parse(&raw).unwrap();
        assert_eq!(rec.data, b"{}\n");
        assert_eq!(rec.hdr.len, 3);
        assert_eq!(rec.comm(), "python3");
        assert_eq!(rec.dir(), Dir::Out);
        assert_eq!(rec.fd_kind().unwrap(), FdKind::Pipe);
        assert_eq!(rec.to_bytes(), raw);

        assert_eq!(
            Record::parse(&raw[..10]).err(),
            Some(RecordError::Short(10))
        );
        assert!(matches!(
            Record::parse(&raw[..raw.len() - 1]),
            Err(RecordError::LengthMismatch {
                header: 3,
                actual: 2
            })
        ));
        let mut bad = raw.clone();
        bad[0] = 99;
        assert!(matches!(
            Record::parse(&bad),
            Err(RecordError::Unknown(_, 99))
        ));
    }

    #[test]
    fn comm_keys_truncate_like_the_kernel() {
        assert_eq!(
            comm_str(&comm_key("a-very-long-process-name")),
            "a-very-long-pro"
        );
        assert_eq!(comm_key("node")[4..], [0u8; 12]);
    }
}
