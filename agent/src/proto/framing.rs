//! How a connection's bytes are framed: the framings mcptap reads, in a list, each behind
//! [`ConnFraming`], chosen by a stream's first bytes.
//!
//! A stream's first bytes are shown to each entry of [`FRAMINGS`] in order; the first that
//! knows them decides: a connection framing (HTTP/1.1, HTTP/2 from its start or first seen
//! mid-way) that keeps both directions of the fd, newline-delimited JSON (kept per
//! direction, see [`super::StreamFraming`]), or a refusal with its reason (TLS records the
//! kernel did not see start, binary bytes). A connection
//! framing may hand over to another ([`ConnFraming::next`]): HTTP/1.1's `Upgrade` to
//! WebSocket.

use super::AppCx;
use crate::capture::{Dir, FdKind};
use crate::conn::Bytes;
use crate::conn::verdict::{Reason, Verdict};
use crate::mcp::transport::Deliver;

/// What a framing works with for one record: every protocol's state, and the tracker MCP
/// messages go to.
pub struct Parts<'a> {
    /// The protocols.
    pub protocols: &'a mut super::Protocols,
    /// Where MCP messages go.
    pub tracker: &'a mut dyn Deliver,
}

/// A stream's first bytes, and what they came through.
#[derive(Clone, Copy, Debug)]
pub struct First<'a> {
    /// Pipe or socket.
    pub kind: FdKind,
    /// Which way they went.
    pub dir: Dir,
    /// The first record's bytes.
    pub bytes: &'a [u8],
    /// The longest message kept.
    pub max_message: usize,
}

/// What a framing made of a stream's first bytes.
pub enum Detected {
    /// A framing of the whole connection (both directions) starts here.
    Conn(Box<dyn ConnFraming>),
    /// Newline-delimited JSON, per direction.
    Lines,
    /// Nothing mcptap reads: the stream is rejected.
    Refuse(Reason),
    /// Not this framing.
    No,
}

/// A framing that keeps both directions of a connection.
pub trait ConnFraming {
    /// Its name, for logs.
    fn name(&self) -> &'static str;
    /// One record's bytes in direction `cx.key.dir`; returns the connection's verdict.
    fn push(&mut self, parts: &mut Parts<'_>, cx: &mut AppCx<'_, '_>, data: Bytes<'_>) -> Verdict;
    /// The framing that takes over from this one after the last push (HTTP/1.1's
    /// `101 Switching Protocols`), having read what followed the switch; taken once.
    fn next(
        &mut self,
        _parts: &mut Parts<'_>,
        _cx: &mut AppCx<'_, '_>,
    ) -> Option<Box<dyn ConnFraming>> {
        None
    }
    /// The connection ended at `ts`.
    fn close(self: Box<Self>, parts: &mut Parts<'_>, cx: &mut AppCx<'_, '_>, ts: u64);
    /// Bytes held for messages not complete yet.
    fn held(&self) -> usize;
}

/// One entry of the list.
pub struct Framing {
    /// Its name, for logs and the README.
    pub name: &'static str,
    /// What it makes of a stream's first bytes.
    pub detect: fn(&First<'_>) -> Detected,
}

// PROTOCOL_LIST: every framing, in the order a stream's first bytes are shown to them. A new
// framing is a module behind `ConnFraming` and its line here.
/// The framings mcptap reads, in order.
pub const FRAMINGS: &[Framing] = &[
    Framing {
        name: "http/1.1",
        detect: super::http::detect_http1,
    },
    Framing {
        name: "http/2",
        detect: super::http::detect_http2,
    },
    // Before HTTP/2 mid-way: a TLS record's header could pass for a long frame's.
    Framing {
        name: "tls",
        detect: refuse_tls,
    },
    // Before binary: frames are binary bytes.
    Framing {
        name: "http/2 mid-way",
        detect: super::http::detect_http2_midstream,
    },
    Framing {
        name: "binary",
        detect: refuse_binary,
    },
    Framing {
        name: "lines",
        detect: |_| Detected::Lines,
    },
];

/// The framing of a stream whose first bytes are `first`.
pub fn choose(first: &First<'_>) -> Detected {
    for f in FRAMINGS {
        match (f.detect)(first) {
            Detected::No => continue,
            d => return d,
        }
    }
    Detected::Refuse(Reason::Binary)
}

/// TLS records: ciphertext of a connection whose plaintext no probe reads.
fn refuse_tls(first: &First<'_>) -> Detected {
    let b = first.bytes.trim_ascii_start();
    if b.len() >= 3 && mcptap_abi::looks_tls(b[0], b[1], b[2]) {
        Detected::Refuse(Reason::Tls)
    } else {
        Detected::No
    }
}

/// Control bytes in the first 64: no text protocol mcptap reads.
fn refuse_binary(first: &First<'_>) -> Detected {
    let binary = first
        .bytes
        .iter()
        .take(64)
        .any(|&c| c < 0x09 || (0x0e..0x20).contains(&c) || c == 0x7f);
    if binary {
        Detected::Refuse(Reason::Binary)
    } else {
        Detected::No
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(kind: FdKind, dir: Dir, bytes: &[u8]) -> Detected {
        choose(&First {
            kind,
            dir,
            bytes,
            max_message: 1 << 20,
        })
    }

    fn name(d: &Detected) -> String {
        match d {
            Detected::Conn(c) => c.name().to_string(),
            Detected::Lines => "lines".into(),
            Detected::Refuse(r) => format!("refuse {}", r.as_str()),
            Detected::No => "no".into(),
        }
    }

    #[test]
    fn the_list_decides_by_first_bytes() {
        let tcp = |dir, b: &[u8]| name(&first(FdKind::Tcp, dir, b));
        assert_eq!(tcp(Dir::Out, b"POST /mcp HTTP/1.1\r\n"), "http/1.1");
        assert_eq!(tcp(Dir::In, b"HTTP/1.1 200 OK\r\n"), "http/1.1");
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
        assert_eq!(tcp(Dir::Out, preface), "http/2");
        // A server's first SETTINGS frame (empty).
        assert_eq!(tcp(Dir::Out, b"\0\0\0\x04\0\0\0\0\0"), "http/2");
        // A DATA frame on stream 1 with 4 bytes: a connection older than the agent, framed.
        let data = b"\0\0\x04\0\x01\0\0\0\x01{}\r\n";
        assert_eq!(tcp(Dir::In, data), "http/2");
        // Bytes that start like a frame but do not go on like frames are binary.
        assert_eq!(
            tcp(Dir::In, b"\0\0\x04\0\x01\0\0\0\x01{}\r\nxyzwxyzwxyzw"),
            "refuse binary"
        );
        assert_eq!(tcp(Dir::Out, b"\x16\x03\x01\x02\0"), "refuse tls");
        assert_eq!(tcp(Dir::Out, b"\x01\x02\x03binary"), "refuse binary");
        assert_eq!(tcp(Dir::Out, b"{\"jsonrpc\":\"2.0\"}\n"), "lines");
        // Over pipes only lines (and refusals): no HTTP.
        let pipe = |b: &[u8]| name(&first(FdKind::Pipe, Dir::Out, b));
        assert_eq!(pipe(b"POST /mcp HTTP/1.1\r\n"), "lines");
        assert_eq!(pipe(preface), "refuse binary");
    }
}
