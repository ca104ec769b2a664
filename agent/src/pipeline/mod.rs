//! The pipeline: capture → streams → wire framing → mcp → signals, wired together.
//!
//! [`Pipeline::ingest`] takes one raw kernel record (live from the ring buffer, or from a
//! replay file) and pushes it through every stage; finished signals queue up for the
//! exporters. It never blocks and never needs root: what it asks of the host goes through
//! [`Host`], which replay answers from the recording.
//!
//! State is kept per process fd ([`fds`]): both directions' streams, the socket's ends, the
//! TLS mark and the HTTP connection, in one bounded table; an fd found not to carry MCP
//! leaves only a tombstone. Every byte buffered for a message not complete yet counts against
//! one budget (`--max-buffered-bytes`).
//!
//! Each stream picks its framing from its first bytes: HTTP/1.x (the network transports, in
//! [`http`]) or newline-delimited JSON (stdio, and MCP over plain sockets). Until a stream is
//! known to carry MCP it is probing; a stream found to carry something else is rejected, and
//! the kernel is told to stop shipping its fd.
//!
//! TLS plaintext from the OpenSSL probes arrives as the data of the socket it runs over, so
//! HTTPS is framed and routed exactly as HTTP; the kernel announces TLS sockets, so that those
//! never decrypted (another TLS library) are counted when they end.

mod fds;
mod http;

use std::collections::BTreeMap;

use log::debug;
use xxhash_rust::xxh3::xxh3_64;

use crate::bounded::TableStat;
use crate::capture::host::Host;
use crate::capture::{Dir, FdKind, ProcessNote, Record, RecordKind};
use crate::conn::stream::{Gap, GapReason, Reassembly, StreamKey};
use crate::mcp::message::{self, ParseError, Parsed};
use crate::mcp::session::{Addr, Addrs, Route, SessionKey, View};
use crate::mcp::{Tracker, TrackerConfig};
use crate::signal::{Event, Signal, What};
use crate::wire::ndjson::{self, Framer};
use fds::{Fd, FdKey, FdTable, SocketEnds};
use mcptap_abi::{FLAG_STATE_NEW, counter};

/// Settings of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Longest message accepted; longer ones are dropped and reported as truncated.
    pub max_message_bytes: usize,
    /// Tracker timing.
    pub tracker: TrackerConfig,
    /// Streams with no traffic for this long are forgotten (ns).
    pub stream_idle_ns: u64,
    /// Most process fds held; past it the least recently active are forgotten and counted.
    pub max_streams: usize,
    /// Most bytes held for messages not complete yet, over all streams; past it the stream
    /// that went over drops its partial message (a `buffer_budget` gap).
    pub max_buffered_bytes: usize,
    /// Report HTTP session ids as they are (`--raw-session-ids`), not hashed.
    pub raw_session_ids: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_message_bytes: 64 << 20,
            tracker: TrackerConfig::default(),
            stream_idle_ns: 3_600_000_000_000,
            max_streams: 100_000,
            max_buffered_bytes: 128 << 20,
            raw_session_ids: false,
        }
    }
}

/// A probing stream is rejected when this many bytes arrive without a line that starts like
/// JSON.
const PROBE_LIMIT: usize = 64 * 1024;
/// Idle fds and tombstones are looked for this often (ns): a scan of the table, so not on
/// every tick.
const EXPIRE_EVERY_NS: u64 = 1_000_000_000;

/// What is known about a stream's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Not yet decided; counts non-JSON lines seen.
    Probing { junk: u8 },
    /// Carries JSON-RPC.
    Mcp,
    /// Does not; nothing more is read from it.
    Rejected,
}

/// How a stream's bytes are framed.
#[derive(Debug)]
enum Framing {
    /// No bytes yet.
    Undecided,
    /// Newline-delimited JSON.
    Ndjson(Framer),
    /// HTTP/1.x: the connection state lives in the fd's entry, shared by both directions.
    Http,
}

/// A line that did not parse while the stream was still being classified: reported as
/// corruption if the stream turns out to carry MCP.
struct Junk {
    view: View,
    hash: u64,
    len: u64,
    class: &'static str,
}

/// One direction of one process fd.
struct Stream {
    /// Lines that did not parse before the first message (at most one: a second rejects).
    junk: Vec<Junk>,
    reasm: Reassembly,
    framing: Framing,
    verdict: Verdict,
    /// Its bytes are TLS plaintext.
    tls: bool,
}

impl Stream {
    fn new() -> Self {
        Stream {
            junk: Vec::new(),
            reasm: Reassembly::default(),
            framing: Framing::Undecided,
            verdict: Verdict::Probing { junk: 0 },
            tls: false,
        }
    }

    /// Bytes held for a message not complete yet.
    fn buffered(&self) -> usize {
        match &self.framing {
            Framing::Ndjson(f) => f.held(),
            _ => 0,
        }
    }
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

/// Counters of the userspace pipeline.
#[derive(Clone, Debug, Default)]
pub struct PipelineStats {
    /// Records ingested.
    pub records: u64,
    /// Payload bytes ingested.
    pub bytes: u64,
    /// Records that did not have the ABI's shape.
    pub bad_records: u64,
    /// Frames produced by framing (lines, HTTP bodies, SSE events).
    pub frames: u64,
    /// Messages parsed (batch elements count one each).
    pub messages: u64,
    /// Frames of accepted streams that did not parse, by class.
    pub parse_errors: BTreeMap<&'static str, u64>,
    /// Streams rejected as not MCP, by reason.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Holes in accepted streams, by reason.
    pub gaps: BTreeMap<&'static str, u64>,
    /// Bytes dropped by resynchronisation after a hole.
    pub resync_dropped_bytes: u64,
    /// Messages longer than the limit, dropped and reported.
    pub oversize: u64,
    /// Streams that ended inside a message.
    pub unterminated: u64,
    /// HTTP connections whose framing could not be parsed.
    pub http_errors: u64,
    /// TCP sockets the kernel found to carry TLS.
    pub tls_sockets: u64,
    /// TLS streams that ended (closed, process exited, idle, or at stop) never matched to an
    /// OpenSSL SSL object, or whose ciphertext reached the pipeline: another TLS library, or a
    /// connection older than the probes.
    pub tls_undecrypted: u64,
    /// Records of rejected fds that were already on their way when the kernel was told.
    pub after_reject: u64,
    /// Times the kernel's fd map had forgotten an fd userspace knew (LRU eviction): the
    /// stream resynchronised, or a rejection was sent again.
    pub kernel_fd_evictions: u64,
    /// Partial messages dropped because `max_buffered_bytes` were held.
    pub budget_drops: u64,
    /// Records still in the ring buffer when the agent stopped, read but not worked through.
    pub unread_at_stop: u64,
}

/// The whole userspace pipeline.
pub struct Pipeline {
    cfg: PipelineConfig,
    fds: FdTable,
    notes: Vec<ProcessNote>,
    /// The tracker (sessions and correlation).
    pub tracker: Tracker,
    out: Vec<Signal>,
    rejects: Vec<Reject>,
    /// Counters.
    pub stats: PipelineStats,
    kernel_totals: BTreeMap<String, u64>,
    /// Bytes the fds hold for messages not complete yet.
    buffered: usize,
    last_expiry_ns: u64,
    now: u64,
    loss_log: crate::bounded::LogLimit,
}

fn looks_binary(b: &[u8]) -> bool {
    b.iter()
        .take(64)
        .any(|&c| c < 0x09 || (0x0e..0x20).contains(&c) || c == 0x7f)
}

fn looks_tls(b: &[u8]) -> bool {
    b.len() >= 3 && mcptap_abi::looks_tls(b[0], b[1], b[2])
}

/// `"method":"..."` from the start of a message too long to parse whole.
fn sniff_method(prefix: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(prefix);
    let at = text.find("\"method\"")?;
    let rest = text[at + 8..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

/// The view template of one direction of an fd: times are filled in per message.
fn base_view(key: &StreamKey, fd: &Fd, stream: &Stream) -> View {
    View {
        tgid: key.tgid,
        fd: key.fd,
        dir: key.dir,
        kind: fd.kind,
        inode: key.inode,
        peer_inode: fd.peer_inode,
        first_enter_ns: 0,
        last_exit_ns: 0,
        tls: stream.tls,
    }
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new(cfg: PipelineConfig) -> Self {
        Pipeline {
            tracker: Tracker::new(cfg.tracker.clone()),
            fds: FdTable::new(cfg.max_streams),
            cfg,
            notes: Vec::new(),
            out: Vec::new(),
            rejects: Vec::new(),
            stats: PipelineStats::default(),
            kernel_totals: BTreeMap::new(),
            buffered: 0,
            last_expiry_ns: 0,
            now: 0,
            loss_log: Default::default(),
        }
    }

    /// Signals produced since the last call.
    pub fn drain_signals(&mut self) -> std::vec::Drain<'_, Signal> {
        self.out.drain(..)
    }

    /// Streams found not to carry MCP since the last call.
    pub fn take_rejects(&mut self) -> Vec<Reject> {
        std::mem::take(&mut self.rejects)
    }

    /// What processes did since the last call that the capture layer follows.
    pub fn take_process_notes(&mut self) -> Vec<ProcessNote> {
        std::mem::take(&mut self.notes)
    }

    fn parse_opts(&self) -> message::Options {
        message::Options {
            payloads: self.cfg.tracker.payloads,
        }
    }

    fn wall(&self, mono: u64) -> u64 {
        self.cfg.tracker.clock.wall_ns(mono)
    }

    fn stream_event(&self, what: What, key: &StreamKey, ts: u64) -> Event {
        Event {
            pid: Some(key.tgid),
            comm: self.tracker.procs.get(key.tgid).map(|p| p.comm.clone()),
            fd: Some(key.fd),
            ..Event::new(self.wall(ts), what)
        }
    }

    /// Push one raw kernel record through the pipeline.
    pub fn ingest(&mut self, host: &mut dyn Host, raw: &[u8]) {
        let rec = match Record::parse(raw) {
            Ok(r) => r,
            Err(e) => {
                self.stats.bad_records += 1;
                debug!("bad record: {e}");
                return;
            }
        };
        self.stats.records += 1;
        self.stats.bytes += rec.data.len() as u64;
        self.now = self.now.max(rec.hdr.ts_exit_ns);
        let kind = rec.kind().expect("checked by parse");
        match kind {
            RecordKind::Data => self.data(host, &rec),
            RecordKind::Close => self.close(host, &rec),
            RecordKind::Exec => {
                let comm = rec.comm();
                self.tracker.procs.exec(host, rec.hdr.tgid, &comm);
                self.notes.push(ProcessNote::Exec(rec.hdr.tgid));
            }
            RecordKind::Exit => {
                self.exit(host, rec.hdr.tgid, rec.hdr.ts_exit_ns);
                self.notes.push(ProcessNote::Exit(rec.hdr.tgid));
            }
            RecordKind::Tls => {
                self.tls_record(&rec);
                self.hold_fd_cap(host);
            }
            RecordKind::Socket => {
                if let Some(si) = rec.socket_info() {
                    let ends = Box::new(SocketEnds::of(&si));
                    self.fd_entry(&rec).socket = Some(ends);
                    self.hold_fd_cap(host);
                }
            }
        }
    }

    /// The entry of a record's fd, made if there is none.
    fn fd_entry(&mut self, rec: &Record<'_>) -> &mut Fd {
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
        let fd = self.fd_entry(rec);
        let first = fd.tls.is_none();
        let decrypted = fd.tls.get_or_insert(false);
        *decrypted |= bound;
        // Announced again after the kernel forgot the fd: counted once.
        if !bound && first {
            self.stats.tls_sockets += 1;
            self.notes.push(ProcessNote::TlsSocket(rec.hdr.tgid));
        }
    }

    fn data(&mut self, host: &mut dyn Host, rec: &Record<'_>) {
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
        let before = fd.buffered();
        self.fd_data(host, rec, &fk, &mut fd);
        self.settle(host, fk, fd, (before, new), ts);
        self.hold_fd_cap(host);
    }

    /// The fd table is held to its cap as entries come, not only on the tick: a process
    /// opening connections fast grows it between two ticks.
    fn hold_fd_cap(&mut self, host: &mut dyn Host) {
        if self.fds.over() {
            let now = self.now;
            for (fk, fd) in self.fds.over_cap() {
                self.end_fd(host, fk, fd, now);
            }
        }
    }

    /// Account for what a record changed in an fd's buffers, hold the budget, and put the
    /// entry back (or bury it when it was rejected).
    fn settle(
        &mut self,
        host: &mut dyn Host,
        fk: FdKey,
        mut fd: Fd,
        (before, new): (usize, bool),
        ts: u64,
    ) {
        let mut after = fd.buffered();
        self.buffered = (self.buffered + after).saturating_sub(before);
        if !fd.rejected && after > 0 && self.buffered > self.cfg.max_buffered_bytes {
            self.shed(host, &fk, &mut fd, ts);
            let shed = fd.buffered();
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
    fn shed(&mut self, host: &mut dyn Host, fk: &FdKey, fd: &mut Fd, ts: u64) {
        self.stats.budget_drops += 1;
        if self.stats.budget_drops.is_power_of_two() {
            log::warn!(
                "{} bytes buffered for partial messages (cap {}, --max-buffered-bytes): dropping \
                 the partial message of pid {} fd {} ({} dropped so far)",
                self.buffered,
                self.cfg.max_buffered_bytes,
                fk.tgid,
                fk.fd,
                self.stats.budget_drops
            );
        }
        let gap = |bytes| Gap {
            reason: GapReason::BufferBudget,
            bytes: Some(bytes),
        };
        for dir in [Dir::In, Dir::Out] {
            let Some(s) = fd.stream(dir).as_mut() else {
                continue;
            };
            let mcp = s.verdict == Verdict::Mcp;
            let dropped = match &mut s.framing {
                Framing::Ndjson(f) => f.gap(),
                _ => 0,
            };
            if mcp && dropped > 0 {
                self.report_gap(&fk.stream(dir), gap(dropped), dropped, ts);
            }
        }
        if let Some(cs) = fd.http.take() {
            let held = cs.buffered() as u64;
            let mcp = fd
                .streams
                .iter()
                .flatten()
                .any(|s| s.verdict == Verdict::Mcp);
            if mcp {
                self.report_gap(&fk.stream(Dir::In), gap(held), held, ts);
            }
            self.http_close(host, fk, fd, cs, ts);
            self.reject(fk, fd, Some("buffer_budget"));
        }
    }

    fn fd_data(&mut self, host: &mut dyn Host, rec: &Record<'_>, fk: &FdKey, fd: &mut Fd) {
        let dir = rec.dir();
        let mut stream = fd
            .stream(dir)
            .take()
            .unwrap_or_else(|| Box::new(Stream::new()));
        if rec.is_tls() {
            stream.tls = true;
            if let Some(t) = fd.tls.as_mut() {
                *t = true;
            }
        }
        if stream.verdict != Verdict::Rejected {
            self.data_in(host, rec, &fk.stream(dir), fd, &mut stream);
        }
        if !fd.rejected {
            *fd.stream(dir) = Some(stream);
        }
    }

    fn data_in(
        &mut self,
        host: &mut dyn Host,
        rec: &Record<'_>,
        key: &StreamKey,
        fd: &mut Fd,
        stream: &mut Stream,
    ) {
        let step = stream.reasm.step(rec);
        if let Some(gap) = step.gap {
            let dropped = match &mut stream.framing {
                Framing::Ndjson(f) => f.gap(),
                // HTTP framing cannot find its next boundary after a hole.
                Framing::Http => {
                    if stream.verdict == Verdict::Mcp {
                        self.report_gap(key, gap, 0, rec.hdr.ts_exit_ns);
                    }
                    let fk = FdKey::of(key);
                    if let Some(cs) = fd.http.take() {
                        self.http_close(host, &fk, fd, cs, rec.hdr.ts_exit_ns);
                    }
                    self.reject(&fk, fd, Some("http_gap"));
                    return;
                }
                Framing::Undecided => 0,
            };
            if stream.verdict == Verdict::Mcp {
                self.report_gap(key, gap, dropped, rec.hdr.ts_exit_ns);
            }
        }
        if !step.has_bytes {
            return;
        }
        self.tracker.procs.note(host, key.tgid, &rec.comm());
        if matches!(stream.framing, Framing::Undecided)
            && !self.choose_framing(key, fd, stream, rec.data)
        {
            return;
        }
        match stream.framing {
            Framing::Http => self.http_data(host, key, fd, stream, rec),
            Framing::Ndjson(_) => self.ndjson_data(host, rec, key, fd, stream),
            Framing::Undecided => unreachable!("chosen above"),
        }
    }

    /// Pick how to frame a stream from its first bytes; false when it was rejected instead.
    fn choose_framing(
        &mut self,
        key: &StreamKey,
        fd: &mut Fd,
        stream: &mut Stream,
        first: &[u8],
    ) -> bool {
        let head = first.trim_ascii_start();
        if fd.http.is_some() {
            // The other direction of this fd already found HTTP.
            stream.framing = Framing::Http;
            return true;
        }
        if fd.kind != FdKind::Pipe
            && let Some(conn) =
                crate::wire::http1::Conn::detect(key.dir, head, self.cfg.max_message_bytes)
        {
            fd.http = Some(Box::new(http::ConnState::new(conn)));
            stream.framing = Framing::Http;
            return true;
        }
        let reason = if head.starts_with(b"PRI * HTTP/2") {
            Some("http2")
        } else if looks_tls(head) {
            Some("tls")
        } else if looks_binary(first) {
            Some("binary")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.reject(&FdKey::of(key), fd, Some(reason));
            return false;
        }
        stream.framing = Framing::Ndjson(Framer::new(self.cfg.max_message_bytes));
        true
    }

    /// The route of a newline-delimited view: stdio pipes and socketpairs and named Unix
    /// sockets join the two processes at the link's ends; TCP joins the connection.
    fn ndjson_route(
        &mut self,
        host: &mut dyn Host,
        v: &View,
        socket: Option<&SocketEnds>,
    ) -> Route {
        match v.kind {
            FdKind::Pipe => self.tracker.link_route(host, v, "stdio"),
            FdKind::Unix => {
                let named = socket.is_some_and(SocketEnds::named_unix);
                let transport = if named { "unix" } else { "stdio" };
                let mut r = self.tracker.link_route(host, v, transport);
                if named {
                    r.addrs = socket.map(|s| {
                        let (local, remote) = (s.local.clone(), s.remote.clone());
                        // The bound path is the server's.
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
                    });
                }
                r
            }
            FdKind::Tcp => tcp_route(v, socket),
        }
    }

    fn ndjson_data(
        &mut self,
        host: &mut dyn Host,
        rec: &Record<'_>,
        key: &StreamKey,
        fd: &mut Fd,
        stream: &mut Stream,
    ) {
        let base = base_view(key, fd, stream);
        let Framing::Ndjson(framer) = &mut stream.framing else {
            return;
        };
        let mut framer = std::mem::replace(framer, Framer::new(0));
        let socket = fd.socket.as_deref();
        framer.push(rec.data, rec.hdr.ts_enter_ns, rec.hdr.ts_exit_ns, |o| {
            if stream.verdict == Verdict::Rejected {
                return;
            }
            match o {
                ndjson::Output::Frame(f) => {
                    let v = View {
                        first_enter_ns: f.first_enter_ns,
                        last_exit_ns: f.last_exit_ns,
                        ..base
                    };
                    self.frame(host, key, &v, &f, stream, socket);
                }
                ndjson::Output::Oversize {
                    len,
                    prefix,
                    first_enter_ns,
                    last_exit_ns,
                } => {
                    let v = View {
                        first_enter_ns,
                        last_exit_ns,
                        ..base
                    };
                    let route = self.ndjson_route(host, &v, socket);
                    let big = Oversize {
                        key,
                        view: &v,
                        route: &route,
                        len,
                        prefix: &prefix,
                    };
                    stream.verdict = self.oversize(host, &big, stream.verdict);
                }
            }
        });
        if stream.verdict == Verdict::Rejected {
            self.reject(&FdKey::of(key), fd, None);
            return;
        }
        let stuck = matches!(stream.verdict, Verdict::Probing { .. })
            && framer.pending() > PROBE_LIMIT
            && !matches!(
                framer.pending_bytes().trim_ascii_start().first(),
                Some(b'{') | Some(b'[')
            );
        stream.framing = Framing::Ndjson(framer);
        if stuck {
            self.reject(&FdKey::of(key), fd, Some("no_json_lines"));
        }
    }

    /// A message over the size limit, on a stream whose verdict so far is `verdict`; returns
    /// the verdict after it.
    fn oversize(&mut self, host: &mut dyn Host, big: &Oversize<'_>, verdict: Verdict) -> Verdict {
        self.stats.oversize += 1;
        let looks_rpc = big.prefix.trim_ascii_start().starts_with(b"{")
            && memchr::memmem::find(big.prefix, b"\"jsonrpc\"").is_some();
        let verdict = match verdict {
            Verdict::Probing { .. } if looks_rpc => Verdict::Mcp,
            other => other,
        };
        if verdict != Verdict::Mcp {
            return verdict;
        }
        let what = What::MessageTruncated {
            bytes: big.len,
            limit: self.cfg.max_message_bytes as u64,
            method: sniff_method(big.prefix),
        };
        let mut e = self.stream_event(what, big.key, big.view.ts());
        let hash = xxh3_64(big.prefix) ^ big.len;
        if self.tracker.observe_junk(host, big.route, big.view, hash) {
            e.session = self.tracker.session_label(host, big.route, big.view.ts());
            self.out.push(Signal::Event(e));
        }
        verdict
    }

    /// One line of a newline-delimited stream; updates the stream's verdict.
    fn frame(
        &mut self,
        host: &mut dyn Host,
        key: &StreamKey,
        v: &View,
        f: &ndjson::Frame<'_>,
        stream: &mut Stream,
        socket: Option<&SocketEnds>,
    ) {
        let (bytes, after_gap, verdict) = (f.bytes, f.after_gap, stream.verdict);
        let junk_of = |err: ParseError| Junk {
            view: *v,
            hash: xxh3_64(bytes),
            len: bytes.len() as u64,
            class: err.class(),
        };
        self.stats.frames += 1;
        stream.verdict = match message::parse_with(bytes, self.parse_opts()) {
            Ok(parsed) => {
                // Lines that did not parse before this first message were on an MCP stream
                // after all: stray output (or the tail of a message the agent started in the
                // middle of). Either way, unparsed bytes on the stream: report them.
                for j in std::mem::take(&mut stream.junk) {
                    let route = self.ndjson_route(host, &j.view, socket);
                    self.corruption(host, key, &j, &route, true);
                }
                let route = self.ndjson_route(host, v, socket);
                // The newline counts: it is part of what the sender wrote.
                self.deliver(host, &route, v, &parsed, bytes, bytes.len() as u64 + 1);
                Verdict::Mcp
            }
            Err(err) => match verdict {
                Verdict::Probing { junk } => {
                    // A first line that fails may be the tail of a message the agent started
                    // in the middle of; a second one, or valid JSON that is not JSON-RPC, is
                    // enough to say the stream is something else.
                    if err == ParseError::NotJsonRpc || junk >= 1 {
                        let reason = if err == ParseError::NotJsonRpc {
                            "json_not_jsonrpc"
                        } else {
                            "not_json"
                        };
                        *self.stats.rejected.entry(reason).or_default() += 1;
                        Verdict::Rejected
                    } else {
                        stream.junk.push(junk_of(err));
                        Verdict::Probing { junk: junk + 1 }
                    }
                }
                Verdict::Mcp if after_gap => {
                    // The tail of a message cut by a hole: expected, already reported.
                    self.stats.resync_dropped_bytes += bytes.len() as u64 + 1;
                    Verdict::Mcp
                }
                Verdict::Mcp => {
                    let route = self.ndjson_route(host, v, socket);
                    self.corruption(host, key, &junk_of(err), &route, false);
                    Verdict::Mcp
                }
                Verdict::Rejected => Verdict::Rejected,
            },
        }
    }

    /// Hand parsed messages to the tracker, `size` being the bytes they took on the wire;
    /// returns how many there were.
    fn deliver(
        &mut self,
        host: &mut dyn Host,
        route: &Route,
        v: &View,
        parsed: &Parsed,
        bytes: &[u8],
        size: u64,
    ) -> usize {
        let hash = xxh3_64(bytes);
        match parsed {
            Parsed::One(m) => {
                self.stats.messages += 1;
                let seen = crate::mcp::Seen { hash, bytes: size };
                self.tracker.observe(host, route, v, m, seen, &mut self.out);
                1
            }
            Parsed::Batch(ms) => {
                let n = ms.len() as u64;
                for (i, m) in ms.iter().enumerate() {
                    self.stats.messages += 1;
                    // Each element needs its own identity for matching the two views.
                    let h = (hash ^ (i as u64 + 1)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    let seen = crate::mcp::Seen {
                        hash: h,
                        bytes: size / n,
                    };
                    self.tracker.observe(host, route, v, m, seen, &mut self.out);
                }
                ms.len()
            }
        }
    }

    /// Something on an MCP stream that is not a JSON-RPC message; reported once even when
    /// both ends saw it.
    fn corruption(
        &mut self,
        host: &mut dyn Host,
        key: &StreamKey,
        j: &Junk,
        route: &Route,
        before_first: bool,
    ) {
        *self.stats.parse_errors.entry(j.class).or_default() += 1;
        if self.tracker.observe_junk(host, route, &j.view, j.hash) {
            let what = What::StreamCorruption {
                reason: j.class,
                bytes: Some(j.len),
                before_first_message: before_first,
                detail: None,
            };
            let mut e = self.stream_event(what, key, j.view.ts());
            e.session = self.tracker.session_label(host, route, j.view.ts());
            self.out.push(Signal::Event(e));
        }
    }

    fn report_gap(&mut self, key: &StreamKey, gap: Gap, dropped: u64, ts: u64) {
        *self.stats.gaps.entry(gap.reason.as_str()).or_default() += 1;
        self.stats.resync_dropped_bytes += dropped;
        let what = What::StreamGap {
            reason: gap.reason.as_str(),
            dropped_bytes: dropped,
            missing_bytes: gap.bytes,
        };
        let e = self.stream_event(what, key, ts);
        self.out.push(Signal::Event(e));
    }

    fn push_reject(&mut self, fk: &FdKey) {
        self.rejects.push(Reject {
            tgid: fk.tgid,
            fd: fk.fd,
            inode: fk.inode,
        });
    }

    /// Stop reading an fd (both directions) and tell the kernel; it becomes a tombstone once
    /// its record is done. `reason` is `None` when the caller already counted it.
    fn reject(&mut self, fk: &FdKey, fd: &mut Fd, reason: Option<&'static str>) {
        if let Some(reason) = reason {
            *self.stats.rejected.entry(reason).or_default() += 1;
        }
        // Ciphertext that reached the pipeline (a connection older than the kernel's TLS
        // check) is a TLS stream not decrypted; a decrypted one is done with.
        if reason == Some("tls") || fd.tls == Some(false) {
            self.stats.tls_undecrypted += 1;
        }
        fd.tls = None;
        debug!(
            "fd {fk:?} is not MCP ({})",
            reason.unwrap_or("see counters")
        );
        fd.rejected = true;
        fd.streams = [None, None];
        fd.http = None;
        self.push_reject(fk);
    }

    fn finish_stream(&mut self, key: StreamKey, s: &mut Stream, ts: u64) {
        if s.verdict != Verdict::Mcp {
            return;
        }
        if let Some(gap) = s.reasm.finish() {
            self.report_gap(&key, gap, 0, ts);
        }
        if let Framing::Ndjson(f) = &mut s.framing
            && let Some(n) = f.finish()
        {
            self.stats.unterminated += 1;
            let e = self.stream_event(What::StreamUnterminated { bytes: n }, &key, ts);
            self.out.push(Signal::Event(e));
        }
    }

    /// An fd is gone (closed, its process exited, idle, or evicted): finish what it held.
    fn end_fd(&mut self, host: &mut dyn Host, fk: FdKey, mut fd: Fd, ts: u64) {
        self.buffered = self.buffered.saturating_sub(fd.buffered());
        if let Some(cs) = fd.http.take() {
            self.http_close(host, &fk, &fd, cs, ts);
        }
        for dir in [Dir::In, Dir::Out] {
            if let Some(mut s) = fd.stream(dir).take() {
                self.finish_stream(fk.stream(dir), &mut s, ts);
            }
        }
        if fd.tls == Some(false) {
            debug!("TLS socket {fk:?} ended without being decrypted");
            self.stats.tls_undecrypted += 1;
        }
    }

    fn close(&mut self, host: &mut dyn Host, rec: &Record<'_>) {
        let fk = FdKey::of_record(rec);
        self.fds.unbury(&fk);
        if let Some(fd) = self.fds.remove(&fk) {
            self.end_fd(host, fk, fd, rec.hdr.ts_exit_ns);
        }
    }

    fn exit(&mut self, host: &mut dyn Host, tgid: u32, ts: u64) {
        for fk in self.fds.of_process(tgid) {
            if let Some(fd) = self.fds.remove(&fk) {
                self.end_fd(host, fk, fd, ts);
            }
        }
        self.tracker.process_exit(tgid, ts, &mut self.out);
    }

    /// Time passes (`now` is CLOCK_MONOTONIC ns): timeouts fire, idle state is dropped.
    pub fn tick(&mut self, now: u64) {
        self.tick_with(&mut crate::capture::host::NoHost, now);
    }

    fn tick_with(&mut self, host: &mut dyn Host, now: u64) {
        self.now = self.now.max(now);
        let now = self.now;
        self.tracker.tick(now, &mut self.out);
        if now.saturating_sub(self.last_expiry_ns) >= EXPIRE_EVERY_NS {
            self.last_expiry_ns = now;
            for (fk, fd) in self.fds.expire(now, self.cfg.stream_idle_ns) {
                self.end_fd(host, fk, fd, now);
            }
        }
        for (fk, fd) in self.fds.over_cap() {
            self.end_fd(host, fk, fd, now);
        }
    }

    /// New kernel counter totals: report every loss counter that went up.
    pub fn kernel_counters(&mut self, totals: &BTreeMap<String, u64>, now: u64) {
        let names = counter::LOSSES
            .iter()
            .map(|i| counter::NAMES[*i as usize])
            .chain([crate::capture::kernel::RECURSION_MISSES]);
        for name in names {
            let total = totals.get(name).copied().unwrap_or(0);
            let prev = self.kernel_totals.get(name).copied().unwrap_or(0);
            if total > prev {
                if let Some(held) = self.loss_log.allow() {
                    let more = crate::bounded::held_back(held);
                    log::warn!(
                        "kernel: {name} rose by {} (total {total}){more}",
                        total - prev
                    );
                }
                let what = What::KernelLoss {
                    counter: name,
                    delta: total - prev,
                    total,
                };
                let e = Event::new(self.wall(now), what);
                self.out.push(Signal::Event(e));
            }
        }
        self.kernel_totals = totals.clone();
    }

    /// Entries forgotten to hold memory to the caps, by table.
    pub fn evictions(&self) -> BTreeMap<&'static str, u64> {
        self.tables().iter().map(|t| (t.name, t.evicted)).collect()
    }

    /// Every bounded table of the pipeline and the tracker: size, cap, evictions.
    pub fn tables(&self) -> Vec<TableStat> {
        let mut v: Vec<TableStat> = self.fds.stats().to_vec();
        v.push(TableStat::new(
            "buffered_bytes",
            self.buffered,
            self.cfg.max_buffered_bytes,
            self.stats.budget_drops,
        ));
        v.extend(self.tracker.tables());
        v
    }

    /// The kernel counters last reported.
    pub fn kernel_totals(&self) -> &BTreeMap<String, u64> {
        &self.kernel_totals
    }

    /// End of input (shutdown or end of a replay) at `now`: give in-flight views `grace` to
    /// settle, then report what is still open.
    pub fn finish(&mut self, now: u64, grace: u64) {
        self.tick(now + grace);
        // A TLS connection still open and never decrypted was seen and not decrypted.
        for (fk, fd) in self.fds.drain() {
            if fd.tls == Some(false) {
                debug!("TLS socket {fk:?} open at stop, never decrypted");
                self.stats.tls_undecrypted += 1;
            }
        }
        self.buffered = 0;
        let open = self.tracker.open_exchanges();
        if open > 0 {
            let what = What::InFlightAtStop {
                exchanges: open as u64,
            };
            let e = Event::new(self.wall(now), what);
            self.out.push(Signal::Event(e));
        }
        let stats = self.summary();
        let e = Event::new(self.wall(now), What::AgentStop { stats });
        self.out.push(Signal::Event(e));
    }

    /// Everything counted so far, userspace and kernel, as one JSON object.
    pub fn summary(&self) -> serde_json::Value {
        let s = &self.stats;
        let t = &self.tracker.stats;
        serde_json::json!({
            "records": s.records,
            "bytes": s.bytes,
            "bad_records": s.bad_records,
            "frames": s.frames,
            "messages": s.messages,
            "exchanges": t.exchanges,
            "notifications": t.notifications,
            "late_views": t.late_views,
            "orphan_responses": t.orphan_responses,
            "duplicate_ids": t.duplicate_ids,
            "missing_twins": t.missing_twins,
            "parse_errors": s.parse_errors,
            "streams_rejected": s.rejected,
            "records_after_reject": s.after_reject,
            "unread_at_stop": s.unread_at_stop,
            "kernel_fd_evictions": s.kernel_fd_evictions,
            "gaps": s.gaps,
            "resync_dropped_bytes": s.resync_dropped_bytes,
            "messages_truncated": s.oversize,
            "streams_unterminated": s.unterminated,
            "http_errors": s.http_errors,
            "evictions": self.evictions(),
            "tls": {"sockets": s.tls_sockets, "undecrypted": s.tls_undecrypted},
            "kernel": self.kernel_totals,
        })
    }

    /// The latest record time seen (CLOCK_MONOTONIC ns).
    pub fn latest_ns(&self) -> u64 {
        self.now
    }

    /// Streams currently tracked.
    pub fn stream_count(&self) -> usize {
        self.fds.stream_count()
    }
}

/// A message over the size limit, as [`Pipeline::oversize`] reports it.
struct Oversize<'a> {
    key: &'a StreamKey,
    view: &'a View,
    route: &'a Route,
    len: u64,
    prefix: &'a [u8],
}

/// The route of newline-delimited JSON over TCP. No standard transport frames MCP this way;
/// roles come from the messages, sides from the address order so that both ends agree.
fn tcp_route(v: &View, socket: Option<&SocketEnds>) -> Route {
    let (local, remote) = socket
        .map(|s| (s.local.clone(), s.remote.clone()))
        .unwrap_or((
            Addr::Unix(format!("inode:{}", v.inode)),
            Addr::Unix("?".into()),
        ));
    let (l, r) = (local.to_string(), remote.to_string());
    let viewer = if l <= r { 0 } else { 1 };
    let sender = match v.dir {
        Dir::Out => viewer,
        Dir::In => 1 - viewer,
    };
    let (a, b) = if l <= r { (l, r) } else { (r, l) };
    Route {
        key: SessionKey::Conn {
            client: a,
            server: b,
        },
        transport: "tcp",
        sender,
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

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
