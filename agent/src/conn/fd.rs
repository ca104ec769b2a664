//! The table of process fds: one entry per (process, fd, inode) holding what both directions
//! share (the socket's ends, the TLS mark, what the layer above keeps for the connection) and
//! each direction's stream; and the tombstones of fds found not to carry MCP, which absorb the
//! records already on their way when the kernel was told to stop.
//!
//! Bounded three ways: a cap (`--max-streams`, the least recently active go first), idle
//! expiry, and tombstones that linger only [`TOMB_LINGER_NS`] after their last record. A
//! process's entries are found through a per-process index, so an exit costs what the process
//! held, not a scan of the table.

use super::stream::{Stream, StreamKey};
use crate::FastMap;
use crate::bounded::{TableStat, least_recent};
use crate::capture::{Dir, FdKind, Record};
use mcptap_abi::SocketInfo;

/// Where one end of a socket is.
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

impl Addr {
    /// The address and the port (none for a Unix socket), as outputs write them.
    pub fn split(&self) -> (String, Option<u16>) {
        match self {
            Addr::Ip(std::net::IpAddr::V4(ip), port) => (ipv4_text(ip), Some(*port)),
            Addr::Ip(ip, port) => (ip.to_string(), Some(*port)),
            Addr::Unix(path) => (path.clone(), None),
        }
    }
}

/// An IPv4 address in dotted decimal, as `Display` writes it, without the formatting
/// machinery: every exchange over TCP names its addresses, and `to_string` cost ~1,400
/// instructions an address.
fn ipv4_text(ip: &std::net::Ipv4Addr) -> String {
    let mut out = String::with_capacity(15);
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

/// One process's fd: the key of everything both directions of a socket share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FdKey {
    /// Process.
    pub tgid: u32,
    /// File descriptor.
    pub fd: i32,
    /// Inode of the pipe or socket (a reused fd number is another key).
    pub inode: u64,
}

impl FdKey {
    /// The fd of a stream.
    pub fn of(k: &StreamKey) -> Self {
        FdKey {
            tgid: k.tgid,
            fd: k.fd,
            inode: k.inode,
        }
    }

    /// The fd a record is about.
    pub fn of_record(rec: &Record<'_>) -> Self {
        FdKey {
            tgid: rec.hdr.tgid,
            fd: rec.hdr.fd,
            inode: rec.hdr.inode,
        }
    }

    /// One direction of this fd.
    pub fn stream(&self, dir: Dir) -> StreamKey {
        StreamKey {
            tgid: self.tgid,
            fd: self.fd,
            dir,
            inode: self.inode,
        }
    }
}

/// Where a socket's two ends are, as the kernel's socket record said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketEnds {
    /// This process's end.
    pub local: Addr,
    /// The far end.
    pub remote: Addr,
    /// AF_UNIX.
    pub unix: bool,
    /// This end is bound to a path (a Unix server's listening path).
    pub local_bound: bool,
    /// The far end is bound to a path.
    pub remote_bound: bool,
    /// `local` and `remote` as text, formatted once per socket and only when asked (see
    /// [`SocketEnds::text`]).
    text: std::cell::OnceCell<(String, String)>,
}

impl SocketEnds {
    /// The ends a socket record names.
    pub fn of(si: &SocketInfo) -> Self {
        let (local, remote) = socket_addrs(si);
        SocketEnds {
            text: std::cell::OnceCell::new(),
            local,
            remote,
            unix: si.family == 1,
            local_bound: si.family == 1 && si.local_path_len > 0,
            remote_bound: si.family == 1 && si.remote_path_len > 0,
        }
    }

    /// `local` and `remote` as text. Formatted on first use and kept: a connection's session
    /// is named by them on every message, and formatting two addresses cost more than the
    /// rest of the message's pipeline.
    pub fn text(&self) -> (&str, &str) {
        let (l, r) = self
            .text
            .get_or_init(|| (self.local.to_string(), self.remote.to_string()));
        (l, r)
    }

    /// A named AF_UNIX socket (either end bound to a path) rather than a socketpair.
    pub fn named_unix(&self) -> bool {
        self.unix && (self.local_bound || self.remote_bound)
    }
}

/// The two ends of a socket as the kernel saw them: (local, remote).
fn socket_addrs(si: &SocketInfo) -> (Addr, Addr) {
    fn ip(family: u16, raw: &[u8; 16]) -> std::net::IpAddr {
        if family == 2 {
            std::net::IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
        } else {
            let v6 = std::net::Ipv6Addr::from(*raw);
            // Dual-stack sockets show IPv4 peers as ::ffff:a.b.c.d.
            v6.to_ipv4_mapped()
                .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4)
        }
    }
    fn path(raw: &[u8], len: u16) -> String {
        let raw = &raw[..(len as usize).min(raw.len())];
        match raw.first() {
            Some(0) => format!(
                "@{}",
                String::from_utf8_lossy(&raw[1..]).trim_end_matches('\0')
            ),
            _ => String::from_utf8_lossy(raw)
                .trim_end_matches('\0')
                .to_string(),
        }
    }
    if si.family == 1 {
        (
            Addr::Unix(path(&si.local_path, si.local_path_len)),
            Addr::Unix(path(&si.remote_path, si.remote_path_len)),
        )
    } else {
        (
            Addr::Ip(ip(si.family, &si.local_addr), si.local_port),
            Addr::Ip(ip(si.family, &si.remote_addr), si.remote_port),
        )
    }
}

/// Everything known about one process's fd. `S` is what the layer above keeps per stream,
/// `C` what it keeps per connection (both directions).
pub struct Fd<S, C: ?Sized> {
    /// Pipe, Unix or TCP socket.
    pub kind: FdKind,
    /// The peer socket's inode (AF_UNIX), or 0.
    pub peer_inode: u64,
    /// Its ends, when it is a socket the kernel described.
    pub socket: Option<Box<SocketEnds>>,
    /// `Some(decrypted)` once the kernel found the socket to carry TLS.
    pub tls: Option<bool>,
    /// The streams, by direction ([`Dir::In`] first).
    pub streams: [Option<Box<Stream<S>>>; 2],
    /// The layer above's state for the connection, once it has some.
    pub shared: Option<Box<C>>,
    /// Time of its latest record.
    pub last_ns: u64,
    /// Found not to carry MCP while its record was worked on: it becomes a tombstone.
    pub rejected: bool,
}

fn slot(dir: Dir) -> usize {
    match dir {
        Dir::In => 0,
        Dir::Out => 1,
    }
}

impl<S, C: ?Sized> Fd<S, C> {
    /// An fd first seen at `ts`.
    pub fn new(kind: FdKind, peer_inode: u64, ts: u64) -> Self {
        Fd {
            kind,
            peer_inode,
            socket: None,
            tls: None,
            streams: [None, None],
            shared: None,
            last_ns: ts,
            rejected: false,
        }
    }

    /// The stream of one direction.
    pub fn stream(&mut self, dir: Dir) -> &mut Option<Box<Stream<S>>> {
        &mut self.streams[slot(dir)]
    }

    /// Whether any direction carried bytes already.
    pub fn has_streams(&self) -> bool {
        self.streams.iter().any(Option::is_some)
    }
}

/// How long a tombstone outlives the last record it absorbed: records already in the ring
/// buffer when the kernel was told to stop arrive within this.
pub const TOMB_LINGER_NS: u64 = 30_000_000_000;

/// The table.
pub struct FdTable<S, C: ?Sized> {
    live: FastMap<FdKey, Fd<S, C>>,
    /// The fds of each process, for exits.
    by_tgid: FastMap<u32, Vec<FdKey>>,
    /// Rejected fds, by the time of their last record.
    tombs: FastMap<FdKey, u64>,
    cap: usize,
    /// Entries forgotten because `cap` were held.
    pub evicted: u64,
    /// Tombstones forgotten because `cap` were held.
    pub tombs_evicted: u64,
    log: crate::bounded::LogLimit,
}

impl<S, C: ?Sized> FdTable<S, C> {
    /// A table holding at most `cap` fds and `cap` tombstones.
    pub fn new(cap: usize) -> Self {
        FdTable {
            live: FastMap::default(),
            by_tgid: FastMap::default(),
            tombs: FastMap::default(),
            cap: cap.max(1),
            evicted: 0,
            tombs_evicted: 0,
            log: Default::default(),
        }
    }

    /// Take an entry out to work on it; [`FdTable::put`] brings it back.
    pub fn take(&mut self, k: &FdKey) -> Option<Fd<S, C>> {
        self.live.remove(k)
    }

    /// Bring back an entry taken out, or add a new one (`new`).
    pub fn put(&mut self, k: FdKey, fd: Fd<S, C>, new: bool) {
        if new {
            self.by_tgid.entry(k.tgid).or_default().push(k);
        }
        self.live.insert(k, fd);
    }

    /// The live entry of `k`.
    pub fn get_mut(&mut self, k: &FdKey) -> Option<&mut Fd<S, C>> {
        self.live.get_mut(k)
    }

    fn unindex(&mut self, k: &FdKey) {
        if let Some(v) = self.by_tgid.get_mut(&k.tgid) {
            v.retain(|x| x != k);
            if v.is_empty() {
                self.by_tgid.remove(&k.tgid);
            }
        }
    }

    /// Forget an entry (in the table or taken out) for good.
    pub fn remove(&mut self, k: &FdKey) -> Option<Fd<S, C>> {
        self.unindex(k);
        self.live.remove(k)
    }

    /// The fd (taken out, or in the table) carries no MCP: forget it, and absorb its
    /// records still on their way.
    pub fn bury(&mut self, k: FdKey, ts: u64) {
        self.unindex(&k);
        self.live.remove(&k);
        self.tombs.insert(k, ts);
    }

    /// Whether `k` was rejected; a record for it refreshes the tombstone.
    pub fn buried(&mut self, k: &FdKey, ts: u64) -> bool {
        match self.tombs.get_mut(k) {
            Some(t) => {
                *t = (*t).max(ts);
                true
            }
            None => false,
        }
    }

    /// Drop a tombstone (the fd was closed).
    pub fn unbury(&mut self, k: &FdKey) {
        self.tombs.remove(k);
    }

    /// Every fd of process `tgid`.
    pub fn of_process(&self, tgid: u32) -> Vec<FdKey> {
        self.by_tgid.get(&tgid).cloned().unwrap_or_default()
    }

    /// Entries with no record for `idle` ns, removed; tombstones past their linger go too.
    pub fn expire(&mut self, now: u64, idle: u64) -> Vec<(FdKey, Fd<S, C>)> {
        self.tombs
            .retain(|_, last| now.saturating_sub(*last) < TOMB_LINGER_NS);
        let old: Vec<FdKey> = self
            .live
            .iter()
            .filter(|(_, f)| now.saturating_sub(f.last_ns) >= idle)
            .map(|(k, _)| *k)
            .collect();
        self.take_all(old)
    }

    /// Whether an entry or a tombstone too many is held: [`FdTable::over_cap`] is due.
    pub fn over(&self) -> bool {
        self.live.len() > self.cap || self.tombs.len() > self.cap
    }

    /// Past the cap, the least recently active entries, removed (counted); tombstones past
    /// it are dropped (counted).
    pub fn over_cap(&mut self) -> Vec<(FdKey, Fd<S, C>)> {
        let tombs = least_recent(self.tombs.iter().map(|(k, t)| (*t, *k)), self.cap);
        self.tombs_evicted += tombs.len() as u64;
        for k in tombs {
            self.tombs.remove(&k);
        }
        let victims = least_recent(self.live.iter().map(|(k, f)| (f.last_ns, *k)), self.cap);
        if !victims.is_empty()
            && let Some(held) = self.log.allow()
        {
            log::warn!(
                "{} fds held (cap {}, --max-streams): forgetting the {} least recently active{}",
                self.live.len(),
                self.cap,
                victims.len(),
                crate::bounded::held_back(held)
            );
        }
        self.evicted += victims.len() as u64;
        self.take_all(victims)
    }

    /// Every entry, removed (end of input).
    pub fn drain(&mut self) -> Vec<(FdKey, Fd<S, C>)> {
        let all: Vec<FdKey> = self.live.keys().copied().collect();
        self.take_all(all)
    }

    fn take_all(&mut self, keys: Vec<FdKey>) -> Vec<(FdKey, Fd<S, C>)> {
        keys.into_iter()
            .filter_map(|k| self.remove(&k).map(|f| (k, f)))
            .collect()
    }

    /// Streams (directions with bytes) held.
    pub fn stream_count(&self) -> usize {
        self.live
            .values()
            .map(|f| f.streams.iter().flatten().count())
            .sum()
    }

    /// The table's numbers, and its tombstones'.
    pub fn stats(&self) -> [TableStat; 2] {
        [
            TableStat::new("streams", self.live.len(), self.cap, self.evicted),
            TableStat::new(
                "rejected_fds",
                self.tombs.len(),
                self.cap,
                self.tombs_evicted,
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_writes_what_display_writes() {
        for raw in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [10, 9, 100, 255],
            [192, 168, 20, 99],
        ] {
            let ip = std::net::Ipv4Addr::from(raw);
            assert_eq!(ipv4_text(&ip), ip.to_string());
        }
    }

    /// Every fd and stream held costs these (plus the layers' own per-stream state): they
    /// stay small, the rare parts boxed.
    #[test]
    fn entries_stay_small() {
        assert!(std::mem::size_of::<(FdKey, Fd<(), ()>)>() <= 80);
        assert!(std::mem::size_of::<super::super::stream::Stream<()>>() <= 48);
    }

    fn key(tgid: u32, fd: i32) -> FdKey {
        FdKey {
            tgid,
            fd,
            inode: fd as u64,
        }
    }

    #[test]
    fn processes_find_their_fds_and_tombstones_linger() {
        let mut t: FdTable<(), ()> = FdTable::new(4);
        for (tgid, fd) in [(1, 3), (1, 4), (2, 3)] {
            t.put(key(tgid, fd), Fd::new(FdKind::Pipe, 0, 10), true);
        }
        let mut mine = t.of_process(1);
        mine.sort_by_key(|k| k.fd);
        assert_eq!(mine, vec![key(1, 3), key(1, 4)]);
        // Taken out and put back: still indexed once.
        let f = t.take(&key(1, 3)).unwrap();
        t.put(key(1, 3), f, false);
        assert_eq!(t.of_process(1).len(), 2);
        t.bury(key(1, 4), 20);
        assert_eq!(t.of_process(1), vec![key(1, 3)]);
        assert!(t.buried(&key(1, 4), 25));
        assert!(!t.buried(&key(1, 3), 25));
        // Idle entries expire; the tombstone lingers past its last record, then goes.
        let gone = t.expire(10 + 1_000, 1_000);
        assert_eq!(gone.len(), 2);
        assert_eq!(t.live.len(), 0);
        assert!(t.buried(&key(1, 4), 30));
        t.expire(30 + TOMB_LINGER_NS, u64::MAX);
        assert!(!t.buried(&key(1, 4), 40));
        assert!(t.by_tgid.is_empty());
    }

    #[test]
    fn past_the_cap_the_least_recent_go_and_are_counted() {
        let mut t: FdTable<(), ()> = FdTable::new(10);
        for fd in 0..20 {
            t.put(key(1, fd), Fd::new(FdKind::Pipe, 0, fd as u64), true);
            t.bury(key(2, fd), fd as u64);
        }
        let gone = t.over_cap();
        assert_eq!(gone.len(), 11);
        assert!(gone.iter().all(|(k, _)| k.fd < 11));
        assert_eq!(t.evicted, 11);
        assert_eq!(t.tombs_evicted, 11);
        assert_eq!(t.stats()[0].len, 9);
        assert_eq!(t.of_process(1).len(), 9);
    }
}
