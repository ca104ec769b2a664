//! Sessions: which two processes a message travels between, and who is client and server.
//!
//! A stdio session is the pair of one-way links between one client process and one server
//! process: two pipes, or two AF_UNIX socketpairs when a Node parent spawned the server. Each
//! observed message belongs to a *link* (a pipe inode, or a socket and its peer). The process
//! at the other end of the link is learned from the other side's own records when it is
//! watched, or from `/proc/*/fd` otherwise; the session is then keyed by the two processes, so
//! that the request pipe and the response pipe meet.

use std::sync::Arc;

use crate::capture::host::{HolderKind, Host, ProcInfo};
use crate::capture::{Dir, FdKind};
use crate::signal::{Endpoint, Role};

use super::message::PeerInfo;

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

/// Where one end of a network connection is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Addr {
    /// IP address and port.
    Ip(std::net::IpAddr, u16),
    /// Unix socket path ("" when unbound; `@name` for abstract names).
    Unix(String),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Ip(std::net::IpAddr::V6(a), p) => write!(f, "[{a}]:{p}"),
            Addr::Ip(a, p) => write!(f, "{a}:{p}"),
            Addr::Unix(p) => f.write_str(p),
        }
    }
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
    pub transport: &'static str,
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

/// A process as the table knows it.
struct Known {
    info: Arc<ProcInfo>,
    /// When it was last asked about (the table's clock).
    used_ns: u64,
    /// Its exit was seen: forgotten once no session names it.
    exited: bool,
}

/// Processes seen, by pid, from the host and, failing that, from the kernel's comm.
///
/// Bounded: a process is forgotten once it exited (or has gone unused for a while) and no
/// session names it; past [`super::MAX_PROCESSES`] the least recently used go, counted.
#[derive(Default)]
pub struct ProcTable {
    procs: crate::FastMap<u32, Known>,
    /// Monotonic ns, moved on by the tracker.
    now: u64,
    /// Forgotten because the cap was reached.
    pub evicted: u64,
}

impl ProcTable {
    /// Make sure `pid` is known; `comm` is the kernel's word for it if /proc has none.
    pub fn note(&mut self, host: &mut dyn Host, pid: u32, comm: &str) {
        if let Some(p) = self.procs.get_mut(&pid)
            && !p.exited
        {
            p.used_ns = self.now;
            if p.info.comm.is_empty() && !comm.is_empty() {
                Arc::make_mut(&mut p.info).comm = comm.to_string();
            }
            return;
        }
        let info = host.process(pid).unwrap_or_else(|| ProcInfo {
            pid,
            comm: comm.to_string(),
            ..Default::default()
        });
        self.insert(info);
    }

    fn insert(&mut self, info: ProcInfo) {
        let known = Known {
            info: Arc::new(info),
            used_ns: self.now,
            exited: false,
        };
        self.procs.insert(known.info.pid, known);
    }

    /// The process called exec: forget what we knew.
    pub fn exec(&mut self, host: &mut dyn Host, pid: u32, comm: &str) {
        self.procs.remove(&pid);
        self.note(host, pid, comm);
    }

    /// The process exited: what is known stays until no session names it.
    pub fn exited(&mut self, pid: u32) {
        if let Some(p) = self.procs.get_mut(&pid) {
            p.exited = true;
        }
    }

    /// `pid` is about to name a new session: if the process now behind it started at
    /// another time than the one known, the pid was reused, and it is described afresh.
    pub fn revalidate(&mut self, host: &mut dyn Host, pid: u32) {
        let Some(known) = self.procs.get(&pid) else {
            return;
        };
        let was = known.info.start_time;
        if let Some(now) = host.process(pid)
            && now.start_time != was
            && now.start_time != 0
        {
            self.insert(now);
        }
    }

    /// The process is gone.
    pub fn forget(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }

    /// Move the table's clock on.
    pub fn set_now(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    /// Forget the processes no session names (`named`) that exited or went unused for
    /// `idle_ns`; past `cap`, the least recently used of the others too (counted).
    pub fn collect(&mut self, named: impl Fn(u32) -> bool, idle_ns: u64, cap: usize) {
        let now = self.now;
        self.procs
            .retain(|pid, p| named(*pid) || (!p.exited && now.saturating_sub(p.used_ns) < idle_ns));
        if self.procs.len() <= cap {
            return;
        }
        let unnamed: Vec<(u64, u32)> = self
            .procs
            .iter()
            .filter(|(pid, _)| !named(**pid))
            .map(|(pid, p)| (p.used_ns, *pid))
            .collect();
        let room = cap.saturating_sub(self.procs.len() - unnamed.len());
        let victims = crate::bounded::least_recent(unnamed.into_iter(), room);
        if !victims.is_empty() {
            log::warn!(
                "{} processes known (cap {cap}): forgetting the {} least recently used",
                self.procs.len(),
                victims.len()
            );
        }
        self.evicted += victims.len() as u64;
        for pid in victims {
            self.procs.remove(&pid);
        }
    }

    /// What we know of `pid`.
    pub fn get(&self, pid: u32) -> Option<&Arc<ProcInfo>> {
        self.procs.get(&pid).map(|p| &p.info)
    }

    /// Number of processes known.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// True when no process is known.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }
}

/// One end of a session.
#[derive(Clone, Debug, Default)]
pub struct End {
    /// Its process, when known.
    pub pid: Option<u32>,
    /// Its MCP role, once known.
    pub role: Option<Role>,
    /// `clientInfo` or `serverInfo`.
    pub info: Option<PeerInfo>,
    /// Whether any of this end's own records were seen (it is watched).
    pub observed: bool,
    /// Monotonic time it exited, if it did.
    pub exited_ns: Option<u64>,
}

/// A session: the conversation between two ends.
#[derive(Debug)]
pub struct Session {
    /// Key.
    pub key: SessionKey,
    /// Sides are fixed roles (0 client, 1 server).
    pub roles_fixed: bool,
    /// Ends, by side.
    pub ends: [End; 2],
    /// Transport name.
    pub transport: &'static str,
    /// Negotiated protocol version.
    pub protocol_version: Option<String>,
    /// Its messages travelled inside TLS.
    pub tls: bool,
    /// Label used in outputs, fixed once first used.
    label: Option<String>,
    /// Monotonic time of the first message.
    pub started_ns: u64,
    /// Monotonic time of the latest message.
    pub last_ns: u64,
}

impl Session {
    /// A session for `route`.
    pub fn new(route: &Route, now: u64) -> Self {
        let mut ends: [End; 2] = Default::default();
        if let SessionKey::Procs { lo, hi } = route.key {
            ends[0].pid = (lo != 0).then_some(lo);
            ends[1].pid = (hi != 0).then_some(hi);
        }
        if route.roles_fixed {
            ends[0].role = Some(Role::Client);
            ends[1].role = Some(Role::Server);
        }
        Session {
            key: route.key.clone(),
            roles_fixed: route.roles_fixed,
            ends,
            transport: route.transport,
            protocol_version: None,
            tls: false,
            label: route.label.clone(),
            started_ns: now,
            last_ns: now,
        }
    }

    /// Whether `pid` is one of this session's processes.
    pub fn involves(&self, pid: u32) -> bool {
        self.ends.iter().any(|e| e.pid == Some(pid))
    }

    /// The side of `pid`, filling an unknown end if needed.
    pub fn side_of(&mut self, pid: u32) -> Side {
        if self.ends[0].pid == Some(pid) {
            return 0;
        }
        if self.ends[1].pid == Some(pid) {
            return 1;
        }
        let side = if self.ends[0].pid.is_none() { 0 } else { 1 };
        self.ends[side].pid = Some(pid);
        side
    }

    /// Record that `side` has the MCP role `role` (first evidence wins).
    pub fn set_role(&mut self, side: Side, role: Role) {
        if self.ends[side].role.is_none() && self.ends[other(side)].role != Some(role) {
            self.ends[side].role = Some(role);
            let opposite = match role {
                Role::Client => Role::Server,
                Role::Server => Role::Client,
                Role::Unknown => return,
            };
            if self.ends[other(side)].role.is_none() {
                self.ends[other(side)].role = Some(opposite);
            }
        }
    }

    /// The side playing `role`, deciding it if nothing has yet: stdio servers are the
    /// children of their clients, so a parent is the client.
    pub fn side_with_role(&mut self, role: Role, procs: &ProcTable, requester: Side) -> Side {
        if self.ends[0].role.is_none() && self.ends[1].role.is_none() {
            let parent_of = |a: Side, b: Side| -> bool {
                match (self.ends[a].pid, self.ends[b].pid) {
                    (Some(pa), Some(pb)) => procs.get(pb).is_some_and(|p| p.ppid == pa),
                    _ => false,
                }
            };
            let client = if parent_of(0, 1) {
                0
            } else if parent_of(1, 0) {
                1
            } else {
                requester
            };
            self.set_role(client, Role::Client);
        }
        if self.ends[0].role == Some(role) {
            0
        } else {
            1
        }
    }

    /// The label used in outputs: `stdio:CLIENTPID-SERVERPID` for process pairs, the session
    /// id for HTTP sessions, none for single connections.
    pub fn label(&mut self, procs: &ProcTable) -> Option<String> {
        if self.label.is_some() || !matches!(self.key, SessionKey::Procs { .. }) {
            return self.label.clone();
        }
        let c = self.side_with_role(Role::Client, procs, 0);
        let pid = |s: Side| {
            self.ends[s]
                .pid
                .map_or_else(|| "?".to_string(), |p| p.to_string())
        };
        let l = format!("{}:{}-{}", self.transport, pid(c), pid(other(c)));
        self.label = Some(l.clone());
        Some(l)
    }

    /// The reported identity of one side.
    pub fn endpoint(&self, side: Side, procs: &ProcTable) -> Endpoint {
        let end = &self.ends[side];
        let proc = end.pid.and_then(|p| procs.get(p));
        Endpoint {
            pid: end.pid,
            comm: proc.map(|p| p.comm.clone()).unwrap_or_default(),
            exe: proc.map(|p| p.exe.clone()).unwrap_or_default(),
            name: end.info.as_ref().map(|i| i.name.clone()),
            version: end.info.as_ref().map(|i| i.version.clone()),
            k8s: proc.and_then(|p| p.k8s.clone()),
        }
    }
}

/// Learns which process is at each end of each link, and which session each link is in.
#[derive(Default)]
pub struct Links {
    ends: crate::FastMap<LinkEnd, u32>,
    sessions: crate::FastMap<(FdKind, u64, u64), SessionKey>,
    scanned: crate::FastMap<LinkEnd, u32>,
    /// Entries forgotten because the cap was reached.
    pub evicted: u64,
}

impl Links {
    /// The session a view belongs to, and the side its process is on.
    pub fn resolve(&mut self, host: &mut dyn Host, v: &View) -> SessionKey {
        self.ends.insert(v.own_end(), v.tgid);
        let link = v.link();
        if let Some(key) = self.sessions.get(&link) {
            return key.clone();
        }
        let peer = v
            .far_end()
            .and_then(|far| self.process_at(host, far, v.tgid));
        let p = peer.unwrap_or(0);
        let key = SessionKey::Procs {
            lo: v.tgid.min(p),
            hi: v.tgid.max(p),
        };
        // Pin the link to the session only once its peer is known; until then a later
        // message may still find it.
        if peer.is_some() {
            self.sessions.insert(link, key.clone());
        }
        key
    }

    fn process_at(&mut self, host: &mut dyn Host, end: LinkEnd, not: u32) -> Option<u32> {
        if let Some(&p) = self.ends.get(&end)
            && p != not
        {
            return Some(p);
        }
        if let Some(&p) = self.scanned.get(&end) {
            return Some(p);
        }
        let (kind, inode, writes) = match end {
            LinkEnd::PipeRead(i) => (HolderKind::Pipe, i, Some(false)),
            LinkEnd::PipeWrite(i) => (HolderKind::Pipe, i, Some(true)),
            LinkEnd::Socket(i) => (HolderKind::Socket, i, None),
        };
        let found = host
            .holders(kind, inode)
            .into_iter()
            .filter(|h| h.pid != not && writes.is_none_or(|w| h.writes == w))
            .map(|h| h.pid)
            .min();
        if let Some(p) = found {
            self.scanned.insert(end, p);
        }
        found
    }

    /// Forget what involves `pid`.
    pub fn forget_process(&mut self, pid: u32) {
        self.ends.retain(|_, p| *p != pid);
        self.scanned.retain(|_, p| *p != pid);
        self.sessions
            .retain(|_, k| !matches!(k, SessionKey::Procs { lo, hi } if *lo == pid || *hi == pid));
    }

    /// Keep only what involves processes `named` says are in a session (counted).
    pub fn retain_processes(&mut self, named: impl Fn(u32) -> bool) {
        let before = self.len();
        self.ends.retain(|_, p| named(*p));
        self.scanned.retain(|_, p| named(*p));
        self.sessions.retain(
            |_, k| !matches!(k, SessionKey::Procs { lo, hi } if !named(*lo) && !named(*hi)),
        );
        self.evicted += (before - self.len()) as u64;
    }

    /// Forget everything (counted): links are learned again from the next views.
    pub fn clear(&mut self) {
        self.evicted += self.len() as u64;
        self.ends.clear();
        self.sessions.clear();
        self.scanned.clear();
    }

    /// Entries held (for memory accounting).
    pub fn len(&self) -> usize {
        self.ends.len() + self.sessions.len() + self.scanned.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
