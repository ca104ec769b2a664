//! Where a message belongs: its [`Route`] (which session, which side sent it, which side is
//! looking) and its [`View`] (which process saw it, through which fd, when). Every route is
//! built here: for a link between two processes (stdio pipes and socketpairs, named Unix
//! sockets), for newline-delimited JSON over TCP, and for HTTP.

use crate::capture::{Dir, FdKind};
use crate::conn::fd::{Addr, SocketEnds};
use crate::signal::Transport;

/// Which of a session's two ends: 0 is the lower process id.
pub type Side = usize;

/// The other side.
pub fn other(side: Side) -> Side {
    1 - side
}

/// Identity of a session.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SessionKey {
    /// stdio and other newline-delimited links: the two processes, lower pid first; 0 stands
    /// for a peer that could not be named.
    Procs {
        /// Lower pid (or 0).
        lo: u32,
        /// Higher pid.
        hi: u32,
    },
    /// An HTTP session: the server's address and the `Mcp-Session-Id` (or, for the legacy
    /// HTTP+SSE transport, the session named in the endpoint URI).
    Http {
        /// Server address (`ip:port` or a Unix socket path).
        server: String,
        /// Session id.
        id: String,
    },
    /// One connection without a session id (stateless HTTP, newline-delimited JSON over TCP).
    Conn {
        /// Client address.
        client: String,
        /// Server address.
        server: String,
    },
}

/// Both ends of a network connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Addrs {
    /// The client's end.
    pub client: Addr,
    /// The server's end.
    pub server: Addr,
}

/// Where a message belongs: which session, which side sent it, which side is looking.
#[derive(Clone, Debug)]
pub struct Route {
    /// The session.
    pub key: SessionKey,
    /// Transport name for outputs.
    pub transport: Transport,
    /// Side that sent the message.
    pub sender: Side,
    /// Side whose view this is.
    pub viewer: Side,
    /// The viewing process.
    pub viewer_pid: u32,
    /// The process at the other side, when known.
    pub peer_pid: Option<u32>,
    /// Side 0 is the client and side 1 the server (HTTP); stdio learns roles from messages.
    pub roles_fixed: bool,
    /// Session label for outputs (stdio computes its own).
    pub label: Option<String>,
    /// HTTP status of the response that carried this message.
    pub http_status: Option<u16>,
    /// Connection addresses (network transports).
    pub addrs: Option<Addrs>,
    /// Protocol version named by the transport (the `MCP-Protocol-Version` header), which
    /// tells it even when the initialize handshake was not seen.
    pub protocol_version: Option<String>,
}

impl Route {
    /// The same route with its sides swapped (for a session whose sides are the other way
    /// round from its key's order).
    pub fn flipped(&self) -> Route {
        Route {
            sender: other(self.sender),
            viewer: other(self.viewer),
            ..self.clone()
        }
    }
}

/// One end of a link: a pipe's read or write end, or a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkEnd {
    /// Read end of a pipe.
    PipeRead(u64),
    /// Write end of a pipe.
    PipeWrite(u64),
    /// A socket, by inode.
    Socket(u64),
}

/// Where a record's bytes came from: the view of one process on one link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Process.
    pub tgid: u32,
    /// File descriptor.
    pub fd: i32,
    /// Whether the process wrote or read the bytes.
    pub dir: Dir,
    /// Pipe or socket.
    pub kind: FdKind,
    /// Inode of the pipe or of the process's socket.
    pub inode: u64,
    /// Peer socket inode (AF_UNIX), or 0.
    pub peer_inode: u64,
    /// Entry time of the syscall that carried the first byte.
    pub first_enter_ns: u64,
    /// Exit time of the syscall that carried the last byte.
    pub last_exit_ns: u64,
    /// The bytes are TLS plaintext from OpenSSL (times are those of `SSL_read`/`SSL_write`).
    pub tls: bool,
    /// The HTTP version that carried them (HTTP and WebSocket, which starts as HTTP/1.1).
    pub http: Option<crate::signal::HttpVersion>,
    /// The TLS library they were read from.
    pub tls_library: Option<crate::signal::TlsLibrary>,
}

impl View {
    /// When this side sent (entry of the first write) or received (exit of the last read).
    pub fn ts(&self) -> u64 {
        match self.dir {
            Dir::Out => self.first_enter_ns,
            Dir::In => self.last_exit_ns,
        }
    }

    /// The end of the link this view's process is on.
    pub fn own_end(&self) -> LinkEnd {
        match (self.kind, self.dir) {
            (FdKind::Pipe, Dir::Out) => LinkEnd::PipeWrite(self.inode),
            (FdKind::Pipe, Dir::In) => LinkEnd::PipeRead(self.inode),
            _ => LinkEnd::Socket(self.inode),
        }
    }

    /// The opposite end, if it can be named.
    pub fn far_end(&self) -> Option<LinkEnd> {
        match (self.kind, self.dir) {
            (FdKind::Pipe, Dir::Out) => Some(LinkEnd::PipeRead(self.inode)),
            (FdKind::Pipe, Dir::In) => Some(LinkEnd::PipeWrite(self.inode)),
            _ => (self.peer_inode != 0).then_some(LinkEnd::Socket(self.peer_inode)),
        }
    }

    /// The link, independent of which end is looking at it.
    pub fn link(&self) -> (FdKind, u64, u64) {
        match self.kind {
            FdKind::Pipe => (FdKind::Pipe, self.inode, 0),
            k => (
                k,
                self.inode.min(self.peer_inode),
                self.inode.max(self.peer_inode),
            ),
        }
    }
}

/// The side of process `pid` in a session of two processes: sides follow pid order, and an
/// unknown peer (0) takes the free side.
pub fn side_in(key: &SessionKey, pid: u32) -> Side {
    let SessionKey::Procs { lo, hi } = *key else {
        unreachable!("links resolve to process pairs")
    };
    if hi == pid || lo != pid || lo == 0 {
        1
    } else {
        0
    }
}

/// Which way a link's view points relative to the two processes of a session, and the
/// process at the other end when it is known.
fn link_sides(key: &SessionKey, v: &View) -> (Side, Option<u32>) {
    let SessionKey::Procs { lo, hi } = *key else {
        unreachable!("links resolve to process pairs")
    };
    let viewer = side_in(key, v.tgid);
    let peer = if viewer == 0 { hi } else { lo };
    (viewer, (peer != 0).then_some(peer))
}

fn sender_of(v: &View, viewer: Side) -> Side {
    match v.dir {
        Dir::Out => viewer,
        Dir::In => other(viewer),
    }
}

/// The route of a view of a link (stdio pipes and socketpairs, named Unix sockets): the
/// session is the pair of processes at the link's two ends.
pub fn link_route(key: SessionKey, v: &View, transport: Transport) -> Route {
    let (viewer, peer_pid) = link_sides(&key, v);
    Route {
        key,
        transport,
        sender: sender_of(v, viewer),
        viewer,
        viewer_pid: v.tgid,
        peer_pid,
        roles_fixed: false,
        label: None,
        http_status: None,
        addrs: None,
        protocol_version: None,
    }
}

/// A named Unix socket's ends: the bound path is the server's.
pub fn unix_addrs(s: &SocketEnds) -> Addrs {
    let (local, remote) = (s.local.clone(), s.remote.clone());
    if s.local_bound {
        Addrs {
            client: remote,
            server: local,
        }
    } else {
        Addrs {
            client: local,
            server: remote,
        }
    }
}

/// The route of newline-delimited JSON over TCP. No standard transport frames MCP this way;
/// roles come from the messages, sides from the address order so that both ends agree.
pub fn tcp_route(v: &View, socket: Option<&SocketEnds>) -> Route {
    let ((local, remote), (l, r)) = match socket {
        Some(s) => (
            (s.local.clone(), s.remote.clone()),
            (s.text().0.to_string(), s.text().1.to_string()),
        ),
        None => {
            let ends = (
                Addr::Unix(format!("inode:{}", v.inode)),
                Addr::Unix("?".into()),
            );
            let text = (ends.0.to_string(), ends.1.to_string());
            (ends, text)
        }
    };
    let viewer = if l <= r { 0 } else { 1 };
    let (a, b) = if l <= r { (l, r) } else { (r, l) };
    Route {
        key: SessionKey::Conn {
            client: a,
            server: b,
        },
        transport: Transport::Tcp,
        sender: sender_of(v, viewer),
        viewer,
        viewer_pid: v.tgid,
        peer_pid: None,
        roles_fixed: false,
        label: None,
        http_status: None,
        addrs: Some(Addrs {
            client: local,
            server: remote,
        }),
        protocol_version: None,
    }
}

/// Which end of an HTTP connection a process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpEnd {
    /// It sends requests.
    Client,
    /// It answers them.
    Server,
}

/// What names an HTTP message's session, as the HTTP binding found it.
pub struct HttpNaming<'a> {
    /// The process, fd and socket inode the message was seen through.
    pub tgid: u32,
    /// The socket's inode.
    pub inode: u64,
    /// The peer socket's inode (AF_UNIX), or 0.
    pub peer_inode: u64,
    /// The socket's ends, if the kernel described them.
    pub socket: Option<&'a SocketEnds>,
    /// Whether the fd is an AF_UNIX socket.
    pub unix: bool,
    /// This process's end of the connection.
    pub end: HttpEnd,
    /// The `Mcp-Session-Id` (Streamable HTTP).
    pub session_id: Option<&'a str>,
    /// The session named in the legacy endpoint URI (HTTP+SSE).
    pub legacy: Option<&'a str>,
    /// The message came from the client.
    pub from_client: bool,
    /// Status of the HTTP response that carried it.
    pub http_status: Option<u16>,
    /// `MCP-Protocol-Version`.
    pub protocol_version: Option<&'a str>,
    /// Export session ids as they are (`--raw-session-ids`).
    pub raw_ids: bool,
}

/// The route of a message of an HTTP connection: its session is the server's address and the
/// session id (Streamable HTTP), or the session the legacy endpoint named, or else the
/// connection alone (stateless servers).
pub fn http_route(n: &HttpNaming<'_>) -> Route {
    let (local, remote) = n
        .socket
        .map(|s| (s.local.clone(), s.remote.clone()))
        .unwrap_or_else(|| {
            (
                Addr::Unix(format!("socket:{}", n.inode)),
                Addr::Unix("?".into()),
            )
        });
    let addrs = match n.end {
        HttpEnd::Client => Addrs {
            client: local,
            server: remote,
        },
        HttpEnd::Server => Addrs {
            client: remote,
            server: local,
        },
    };
    // The socket's ends as text were formatted once, when the socket was first described.
    let text = |a: &Addr, local: bool| match n.socket {
        Some(s) if local => s.text().0.to_string(),
        Some(s) => s.text().1.to_string(),
        None => a.to_string(),
    };
    let server_is_local = n.end == HttpEnd::Server;
    let server = text(&addrs.server, server_is_local);
    let label = |id: &str| Some(crate::mcp::privacy::session_label(id, n.raw_ids));
    let (key, label, mut transport) = if let Some(id) = n.session_id {
        let key = SessionKey::Http {
            server,
            id: id.to_string(),
        };
        (key, label(id), Transport::Http)
    } else if let Some(id) = n.legacy {
        let key = SessionKey::Http {
            server,
            id: id.to_string(),
        };
        (key, label(id), Transport::Sse)
    } else {
        // Unix clients are unbound: the client socket's inode tells connections apart.
        let client = if n.unix {
            let client_inode = match n.end {
                HttpEnd::Client => n.inode,
                HttpEnd::Server => n.peer_inode,
            };
            format!("socket:{client_inode}")
        } else {
            text(&addrs.client, !server_is_local)
        };
        (SessionKey::Conn { client, server }, None, Transport::Http)
    };
    if n.unix {
        transport = Transport::Unix;
    }
    Route {
        key,
        transport,
        sender: if n.from_client { 0 } else { 1 },
        viewer: match n.end {
            HttpEnd::Client => 0,
            HttpEnd::Server => 1,
        },
        viewer_pid: n.tgid,
        peer_pid: None,
        roles_fixed: true,
        label,
        http_status: if n.from_client { None } else { n.http_status },
        addrs: Some(addrs),
        protocol_version: n.protocol_version.map(str::to_string),
    }
}
