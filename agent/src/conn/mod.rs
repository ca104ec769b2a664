//! Stage 2, connections: kernel records of pipes and sockets in, each stream's ordered bytes
//! out to the layer above, with every hole named and every fd decided MCP or not.
//!
//! State is kept per process fd ([`fd`]): both directions' streams ([`stream`]), the socket's
//! ends, the TLS mark and what the layer above keeps for the connection, in one bounded
//! table; an fd found not to carry MCP ([`verdict`]) leaves only a tombstone, and the kernel is
//! told to stop shipping it. Every byte held for a message not complete yet counts against one
//! budget (`--max-buffered-bytes`). What the bytes mean is the business of the [`Upper`]
//! layer (the transport bindings): conn frames nothing itself.

pub mod fd;
pub mod stream;
pub mod verdict;

use log::debug;

use crate::bounded::{LogLimit, TableStat, held_back};
use crate::capture::host::Host;
use crate::capture::{Dir, FdKind, ProcessNote, Record, RecordKind};
use crate::signal::{Ctx, Signal, What};
use fd::{Fd, FdKey, FdTable, SocketEnds};
use mcptap_abi::FLAG_STATE_NEW;
use stream::{Gap, GapReason, Stream, StreamKey};
use verdict::{Reason, Verdict};

/// One record's bytes, with the times of the syscall (or OpenSSL call) that moved them.
#[derive(Clone, Copy, Debug)]
pub struct Bytes<'a> {
    /// The bytes.
    pub data: &'a [u8],
    /// Entry time.
    pub enter_ns: u64,
    /// Exit time.
    pub exit_ns: u64,
}

/// One stream as the layer above sees it while it takes the stream's bytes.
pub struct Io<'a, S, C: ?Sized> {
    /// The stream.
    pub key: StreamKey,
    /// Pipe, Unix or TCP socket.
    pub kind: FdKind,
    /// The peer socket's inode (AF_UNIX), or 0.
    pub peer_inode: u64,
    /// The socket's ends, when the kernel described them.
    pub socket: Option<&'a SocketEnds>,
    /// The stream's state (its verdict, and the layer above's own).
    pub stream: &'a mut Stream<S>,
    /// The layer above's state for the connection (both directions).
    pub shared: &'a mut Option<Box<C>>,
}

/// What the layer above (the transport bindings) does with the streams conn keeps.
pub trait Upper {
    /// What it keeps per stream (its framing).
    type Stream: Default;
    /// What it keeps per connection, for both directions (an HTTP connection).
    type Shared: ?Sized;
    /// The bytes of one record of `io`'s stream, in order after what came before; returns
    /// the stream's verdict after them.
    fn bytes(
        &mut self,
        io: &mut Io<'_, Self::Stream, Self::Shared>,
        data: Bytes<'_>,
        cx: &mut Ctx<'_>,
    ) -> Verdict;
    /// A hole before the stream's next bytes: what it held is dropped; returns how many
    /// bytes, or `None` when its framing cannot find the next message after a hole.
    fn gap(&mut self, io: &mut Io<'_, Self::Stream, Self::Shared>) -> Option<u64>;
    /// The connection ended: finish what the shared state held (bodies delimited by the
    /// close, requests held for an answer).
    fn close(
        &mut self,
        fk: FdKey,
        fd: &mut Fd<Self::Stream, Self::Shared>,
        ts: u64,
        cx: &mut Ctx<'_>,
    );
    /// A stream of MCP ended: report a message it was in the middle of.
    fn finish(
        &mut self,
        key: StreamKey,
        stream: &mut Stream<Self::Stream>,
        ts: u64,
        cx: &mut Ctx<'_>,
    );
    /// Bytes a stream holds for a message not complete yet.
    fn held(stream: &Self::Stream) -> usize;
    /// Bytes the shared state holds.
    fn held_shared(shared: &Self::Shared) -> usize;
}

/// Settings of the table.
#[derive(Clone, Debug)]
pub struct Config {
    /// Fds with no record for this long are forgotten (ns).
    pub idle_ns: u64,
    /// Most fds held; past it the least recently active are forgotten and counted.
    pub max_fds: usize,
    /// Most bytes held for messages not complete yet, over all streams; past it the stream
    /// that went over drops its partial message (a `buffer_budget` gap).
    pub max_buffered_bytes: usize,
}

/// The kernel should stop shipping this fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    /// Process.
    pub tgid: u32,
    /// fd.
    pub fd: i32,
    /// Inode it had when rejected.
    pub inode: u64,
}

/// What the table counted.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Streams rejected as not MCP, by reason.
    pub rejected: std::collections::BTreeMap<&'static str, u64>,
    /// Holes in accepted streams, by reason.
    pub gaps: std::collections::BTreeMap<&'static str, u64>,
    /// Bytes dropped by resynchronisation after a hole.
    pub resync_dropped_bytes: u64,
    /// TCP sockets the kernel found to carry TLS.
    pub tls_sockets: u64,
    /// TLS streams that ended (closed, process exited, idle, or at stop) never matched to an
    /// OpenSSL SSL object, or whose ciphertext reached the agent: another TLS library, or a
    /// connection older than the probes.
    pub tls_undecrypted: u64,
    /// The same, by the TLS library the process was found to have (`unknown` when none
    /// that mcptap reads was found: rustls, BoringSSL, Java, ...).
    pub tls_undecrypted_by_library: std::collections::BTreeMap<&'static str, u64>,
    /// Records of rejected fds that were already on their way when the kernel was told.
    pub after_reject: u64,
    /// Times the kernel's fd map had forgotten an fd known here (LRU eviction): the stream
    /// resynchronised, or a rejection was sent again.
    pub kernel_fd_evictions: u64,
    /// Partial messages dropped because `max_buffered_bytes` were held.
    pub budget_drops: u64,
}

/// Idle fds and tombstones are looked for this often (ns): a scan of the table, so not on
/// every tick.
const EXPIRE_EVERY_NS: u64 = 1_000_000_000;

/// The table of process fds and what comes out of it.
pub struct Conns<S, C: ?Sized> {
    cfg: Config,
    fds: FdTable<S, C>,
    rejects: Vec<Reject>,
    notes: Vec<ProcessNote>,
    /// Counters.
    pub stats: Stats,
    /// Bytes the fds hold for messages not complete yet.
    buffered: usize,
    last_expiry_ns: u64,
    now: u64,
    budget_log: LogLimit,
}

/// Bytes `fd` holds for messages not complete yet, in both directions.
fn buffered<U: Upper>(fd: &Fd<U::Stream, U::Shared>) -> usize {
    let streams: usize = fd.streams.iter().flatten().map(|s| U::held(&s.upper)).sum();
    streams + fd.shared.as_deref().map_or(0, U::held_shared)
}

impl<S: Default, C: ?Sized> Conns<S, C> {
    /// An empty table.
    pub fn new(cfg: Config) -> Self {
        Conns {
            fds: FdTable::new(cfg.max_fds),
            cfg,
            rejects: Vec::new(),
            notes: Vec::new(),
            stats: Stats::default(),
            buffered: 0,
            last_expiry_ns: 0,
            now: 0,
            budget_log: LogLimit::default(),
        }
    }

    /// Fds found not to carry MCP since the last call.
    pub fn take_rejects(&mut self) -> Vec<Reject> {
        std::mem::take(&mut self.rejects)
    }

    /// TLS sockets that appeared since the last call, by process.
    pub fn take_notes(&mut self) -> Vec<ProcessNote> {
        std::mem::take(&mut self.notes)
    }

    /// A record about an fd: data, a close, a socket's ends, its TLS.
    pub fn ingest<U>(&mut self, rec: &Record<'_>, up: &mut U, cx: &mut Ctx<'_>)
    where
        U: Upper<Stream = S, Shared = C>,
    {
        self.now = self.now.max(rec.hdr.ts_exit_ns);
        match rec.kind().expect("checked by parse") {
            RecordKind::Data => self.data(rec, up, cx),
            RecordKind::Close => self.close(rec, up, cx),
            RecordKind::Tls => {
                self.tls_record(rec);
                self.hold_cap(up, cx);
            }
            RecordKind::Socket => {
                if let Some(si) = rec.socket_info() {
                    let ends = Box::new(SocketEnds::of(&si));
                    self.entry(rec).socket = Some(ends);
                    self.hold_cap(up, cx);
                }
            }
            RecordKind::Exec | RecordKind::Exit => {}
        }
    }

    /// The entry of a record's fd, made if there is none.
    fn entry(&mut self, rec: &Record<'_>) -> &mut Fd<S, C> {
        let fk = FdKey::of_record(rec);
        if self.fds.get_mut(&fk).is_none() {
            let kind = rec.fd_kind().expect("checked by parse");
            // New is recent, whatever the record's own clock says: the cap must not take it.
            let fd = Fd::new(kind, rec.hdr.peer_inode, rec.hdr.ts_exit_ns.max(self.now));
            self.fds.put(fk, fd, true);
        }
        let fd = self.fds.get_mut(&fk).expect("just made");
        fd.last_ns = fd.last_ns.max(rec.hdr.ts_exit_ns);
        fd
    }

    /// The kernel's word that a socket carries TLS, or that its SSL object is now bound.
    fn tls_record(&mut self, rec: &Record<'_>) {
        if self.fds.buried(&FdKey::of_record(rec), rec.hdr.ts_exit_ns) {
            return;
        }
        let bound = rec.is_tls();
        let fd = self.entry(rec);
        let first = fd.tls.is_none();
        let decrypted = fd.tls.get_or_insert(false);
        *decrypted |= bound;
        // Announced again after the kernel forgot the fd: counted once.
        if !bound && first {
            self.stats.tls_sockets += 1;
            self.notes.push(ProcessNote::TlsSocket(rec.hdr.tgid));
        }
    }

    fn data<U>(&mut self, rec: &Record<'_>, up: &mut U, cx: &mut Ctx<'_>)
    where
        U: Upper<Stream = S, Shared = C>,
    {
        let fk = FdKey::of_record(rec);
        let ts = rec.hdr.ts_exit_ns;
        if self.fds.buried(&fk, ts) {
            self.stats.after_reject += 1;
            if rec.hdr.flags & FLAG_STATE_NEW != 0 {
                // The kernel forgot the rejection (its fd map evicted the entry): again.
                self.stats.kernel_fd_evictions += 1;
                self.push_reject(&fk);
            }
            return;
        }
        let (mut fd, new) = match self.fds.take(&fk) {
            Some(fd) => (fd, false),
            None => {
                let kind = rec.fd_kind().expect("checked by parse");
                (Fd::new(kind, rec.hdr.peer_inode, ts.max(self.now)), true)
            }
        };
        fd.last_ns = fd.last_ns.max(ts);
        if fd.peer_inode == 0 {
            fd.peer_inode = rec.hdr.peer_inode;
        }
        if rec.hdr.flags & FLAG_STATE_NEW != 0 && fd.has_streams() {
            // The kernel made this fd's state afresh although its streams are known here: the
            // entry was evicted, maybe with a mark of lost bytes. Resynchronise to be safe.
            self.stats.kernel_fd_evictions += 1;
            for s in fd.streams.iter_mut().flatten() {
                s.reasm.mark(GapReason::StateEvicted);
            }
        }
        let before = buffered::<U>(&fd);
        self.fd_data(rec, &fk, &mut fd, up, cx);
        self.settle(fk, fd, (before, new), up, cx);
        self.hold_cap(up, cx);
    }

    /// One record's bytes through its stream: reassembly, then the layer above.
    fn fd_data<U>(
        &mut self,
        rec: &Record<'_>,
        fk: &FdKey,
        fd: &mut Fd<S, C>,
        up: &mut U,
        cx: &mut Ctx<'_>,
    ) where
        U: Upper<Stream = S, Shared = C>,
    {
        let dir = rec.dir();
        let key = fk.stream(dir);
        let mut stream = fd.stream(dir).take().unwrap_or_default();
        if rec.is_tls() {
            stream.tls = true;
            stream.tls_library = rec.tls_library().or(stream.tls_library);
            if let Some(t) = fd.tls.as_mut() {
                *t = true;
            }
        }
        let step = stream.reasm.step(rec);
        let mut io = Io {
            key,
            kind: fd.kind,
            peer_inode: fd.peer_inode,
            socket: fd.socket.as_deref(),
            stream: &mut stream,
            shared: &mut fd.shared,
        };
        let mut verdict = io.stream.verdict;
        if let Some(gap) = step.gap {
            verdict = self.gap(&mut io, gap, rec.hdr.ts_exit_ns, up, cx);
        }
        if step.has_bytes && verdict.rejected().is_none() {
            cx.procs.note_with(cx.host, key.tgid, || rec.comm());
            let bytes = Bytes {
                data: rec.data,
                enter_ns: rec.hdr.ts_enter_ns,
                exit_ns: rec.hdr.ts_exit_ns,
            };
            verdict = up.bytes(&mut io, bytes, cx);
        }
        stream.verdict = verdict;
        match verdict.rejected() {
            Some(reason) => {
                if fd.shared.is_some() && reason == Reason::HttpGap {
                    up.close(*fk, fd, rec.hdr.ts_exit_ns, cx);
                }
                self.reject(fk, fd, reason, Some(&mut *cx.host));
            }
            None => *fd.stream(dir) = Some(stream),
        }
    }

    /// A hole before a stream's next bytes: the layer above drops what it held; reported
    /// when the stream carries MCP. Returns the stream's verdict after it.
    fn gap<U>(
        &mut self,
        io: &mut Io<'_, S, C>,
        gap: Gap,
        ts: u64,
        up: &mut U,
        cx: &mut Ctx<'_>,
    ) -> Verdict
    where
        U: Upper<Stream = S, Shared = C>,
    {
        let verdict = io.stream.verdict;
        match up.gap(io) {
            Some(dropped) => {
                if verdict.kept() {
                    self.report_gap(&io.key, gap, dropped, ts, cx);
                }
                verdict
            }
            None => {
                // HTTP framing cannot find its next boundary after a hole.
                if verdict.kept() {
                    self.report_gap(&io.key, gap, 0, ts, cx);
                }
                Verdict::Rejected(Reason::HttpGap)
            }
        }
    }

    /// Account for what a record changed in an fd's buffers, hold the budget, and put the
    /// entry back (or bury it when it was rejected).
    fn settle<U>(
        &mut self,
        fk: FdKey,
        mut fd: Fd<S, C>,
        (before, new): (usize, bool),
        up: &mut U,
        cx: &mut Ctx<'_>,
    ) where
        U: Upper<Stream = S, Shared = C>,
    {
        let ts = fd.last_ns;
        let mut after = buffered::<U>(&fd);
        self.buffered = (self.buffered + after).saturating_sub(before);
        if !fd.rejected && after > 0 && self.buffered > self.cfg.max_buffered_bytes {
            self.shed(&fk, &mut fd, ts, up, cx);
            let shed = buffered::<U>(&fd);
            self.buffered = (self.buffered + shed).saturating_sub(after);
            after = shed;
        }
        if fd.rejected {
            self.buffered = self.buffered.saturating_sub(after);
            if new {
                self.fds.put(fk, fd, true);
            }
            self.fds.bury(fk, ts);
        } else {
            self.fds.put(fk, fd, new);
        }
    }

    /// The budget for buffered bytes is spent, and this fd just added to it: its partial
    /// messages go (a gap, reported and counted); an HTTP connection cannot resynchronise
    /// after that and is given up.
    fn shed<U>(&mut self, fk: &FdKey, fd: &mut Fd<S, C>, ts: u64, up: &mut U, cx: &mut Ctx<'_>)
    where
        U: Upper<Stream = S, Shared = C>,
    {
        self.stats.budget_drops += 1;
        if let Some(held) = self.budget_log.allow() {
            log::warn!(
                "{} bytes buffered for partial messages (cap {}, --max-buffered-bytes): dropping \
                 the partial message of pid {} fd {}{}",
                self.buffered,
                self.cfg.max_buffered_bytes,
                fk.tgid,
                fk.fd,
                held_back(held)
            );
        }
        let gap = |bytes| Gap {
            reason: GapReason::BufferBudget,
            bytes: Some(bytes),
        };
        let held_shared = fd.shared.as_deref().map_or(0, U::held_shared) as u64;
        let mut give_up = false;
        for dir in [Dir::In, Dir::Out] {
            let Some(mut stream) = fd.stream(dir).take() else {
                continue;
            };
            let mut io = Io {
                key: fk.stream(dir),
                kind: fd.kind,
                peer_inode: fd.peer_inode,
                socket: fd.socket.as_deref(),
                stream: &mut stream,
                shared: &mut fd.shared,
            };
            match up.gap(&mut io) {
                Some(dropped) if dropped > 0 && stream.verdict.kept() => {
                    self.report_gap(&fk.stream(dir), gap(dropped), dropped, ts, cx);
                }
                Some(_) => {}
                None => give_up = true,
            }
            *fd.stream(dir) = Some(stream);
        }
        if give_up && fd.shared.is_some() {
            let mcp = fd.streams.iter().flatten().any(|s| s.verdict.kept());
            if mcp {
                self.report_gap(&fk.stream(Dir::In), gap(held_shared), held_shared, ts, cx);
            }
            up.close(*fk, fd, ts, cx);
            self.reject(fk, fd, Reason::BufferBudget, Some(&mut *cx.host));
        }
    }

    fn report_gap(&mut self, key: &StreamKey, gap: Gap, dropped: u64, ts: u64, cx: &mut Ctx<'_>) {
        *self.stats.gaps.entry(gap.reason.as_str()).or_default() += 1;
        self.stats.resync_dropped_bytes += dropped;
        let what = What::StreamGap {
            reason: gap.reason,
            dropped_bytes: dropped,
            missing_bytes: gap.bytes,
        };
        let e = cx.stream_event(what, key.tgid, key.fd, ts);
        cx.out.push(Signal::Event(e));
    }

    fn push_reject(&mut self, fk: &FdKey) {
        self.rejects.push(Reject {
            tgid: fk.tgid,
            fd: fk.fd,
            inode: fk.inode,
        });
    }

    /// Stop reading an fd (both directions) and tell the kernel; it becomes a tombstone once
    /// its record is done.
    fn reject(
        &mut self,
        fk: &FdKey,
        fd: &mut Fd<S, C>,
        reason: Reason,
        host: Option<&mut dyn Host>,
    ) {
        *self.stats.rejected.entry(reason.as_str()).or_default() += 1;
        // Ciphertext that reached the agent (a connection older than the kernel's TLS check)
        // is a TLS stream not decrypted; a decrypted one is done with.
        if reason == Reason::Tls || fd.tls == Some(false) {
            self.undecrypted(fk.tgid, host);
        }
        fd.tls = None;
        debug!("fd {fk:?} is not MCP ({})", reason.as_str());
        fd.rejected = true;
        fd.streams = [None, None];
        fd.shared = None;
        self.push_reject(fk);
    }

    /// A TLS connection of process `tgid` ended without its plaintext: counted, by the
    /// library the host found in the process.
    fn undecrypted(&mut self, tgid: u32, host: Option<&mut dyn Host>) {
        self.stats.tls_undecrypted += 1;
        let lib = host.and_then(|h| h.tls_library(tgid));
        let label = lib.map_or("unknown", crate::signal::TlsLibrary::as_str);
        *self
            .stats
            .tls_undecrypted_by_library
            .entry(label)
            .or_default() += 1;
    }

    /// An fd is gone (closed, its process exited, idle, or evicted): finish what it held.
    fn end_fd<U>(&mut self, fk: FdKey, mut fd: Fd<S, C>, ts: u64, up: &mut U, cx: &mut Ctx<'_>)
    where
        U: Upper<Stream = S, Shared = C>,
    {
        self.buffered = self.buffered.saturating_sub(buffered::<U>(&fd));
        if fd.shared.is_some() {
            up.close(fk, &mut fd, ts, cx);
        }
        for dir in [Dir::In, Dir::Out] {
            let Some(mut s) = fd.stream(dir).take() else {
                continue;
            };
            if !s.verdict.kept() {
                continue;
            }
            let key = fk.stream(dir);
            if let Some(gap) = s.reasm.finish() {
                self.report_gap(&key, gap, 0, ts, cx);
            }
            up.finish(key, &mut s, ts, cx);
        }
        if fd.tls == Some(false) {
            debug!("TLS socket {fk:?} ended without being decrypted");
            self.undecrypted(fk.tgid, Some(&mut *cx.host));
        }
    }

    fn close<U>(&mut self, rec: &Record<'_>, up: &mut U, cx: &mut Ctx<'_>)
    where
        U: Upper<Stream = S, Shared = C>,
    {
        let fk = FdKey::of_record(rec);
        self.fds.unbury(&fk);
        if let Some(fd) = self.fds.remove(&fk) {
            self.end_fd(fk, fd, rec.hdr.ts_exit_ns, up, cx);
        }
    }

    /// A process exited: its fds end.
    pub fn exit<U>(&mut self, tgid: u32, ts: u64, up: &mut U, cx: &mut Ctx<'_>)
    where
        U: Upper<Stream = S, Shared = C>,
    {
        for fk in self.fds.of_process(tgid) {
            if let Some(fd) = self.fds.remove(&fk) {
                self.end_fd(fk, fd, ts, up, cx);
            }
        }
    }

    /// The table is held to its cap as entries come, not only on the tick: a process
    /// opening connections fast grows it between two ticks.
    fn hold_cap<U>(&mut self, up: &mut U, cx: &mut Ctx<'_>)
    where
        U: Upper<Stream = S, Shared = C>,
    {
        if self.fds.over() {
            let now = self.now;
            for (fk, fd) in self.fds.over_cap() {
                self.end_fd(fk, fd, now, up, cx);
            }
        }
    }

    /// Time passes (CLOCK_MONOTONIC ns): idle fds are finished and forgotten.
    pub fn tick<U>(&mut self, now: u64, up: &mut U, cx: &mut Ctx<'_>)
    where
        U: Upper<Stream = S, Shared = C>,
    {
        self.now = self.now.max(now);
        let now = self.now;
        if now.saturating_sub(self.last_expiry_ns) >= EXPIRE_EVERY_NS {
            self.last_expiry_ns = now;
            for (fk, fd) in self.fds.expire(now, self.cfg.idle_ns) {
                self.end_fd(fk, fd, now, up, cx);
            }
        }
        self.hold_cap(up, cx);
    }

    /// End of input: every fd is dropped; a TLS connection still open and never decrypted
    /// was seen and not decrypted.
    pub fn finish(&mut self) {
        for (fk, fd) in self.fds.drain() {
            if fd.tls == Some(false) {
                debug!("TLS socket {fk:?} open at stop, never decrypted");
                self.undecrypted(fk.tgid, None);
            }
        }
        self.buffered = 0;
    }

    /// The table's bounded parts: fds, tombstones, buffered bytes.
    pub fn tables(&self) -> Vec<TableStat> {
        let mut v = self.fds.stats().to_vec();
        v.push(TableStat::new(
            "buffered_bytes",
            self.buffered,
            self.cfg.max_buffered_bytes,
            self.stats.budget_drops,
        ));
        v
    }

    /// The latest record time seen (CLOCK_MONOTONIC ns).
    pub fn latest_ns(&self) -> u64 {
        self.now
    }

    /// Streams held.
    pub fn stream_count(&self) -> usize {
        self.fds.stream_count()
    }
}
