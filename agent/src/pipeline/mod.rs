//! The pipeline: capture → streams → wire framing → mcp → signals, wired together.
//!
//! [`Pipeline::ingest`] takes one raw kernel record (live from the ring buffer, or from a
//! replay file) and pushes it through every stage; finished signals queue up for the
//! exporters. It never blocks and never needs root: what it asks of the host goes through
//! [`Host`], which replay answers from the recording.
//!
//! Each stream picks its framing from its first bytes: HTTP/1.x (the network transports, in
//! [`http`]) or newline-delimited JSON (stdio, and MCP over plain sockets). Until a stream is
//! known to carry MCP it is probing; a stream found to carry something else is rejected, and
//! the kernel is told to stop shipping its fd.
//!
//! TLS plaintext from the OpenSSL probes arrives as the data of the socket it runs over, so
//! HTTPS is framed and routed exactly as HTTP; the kernel announces TLS sockets, so that those
//! never decrypted (another TLS library) are counted when they end.

mod http;

use std::collections::BTreeMap;

use log::debug;
use xxhash_rust::xxh3::xxh3_64;

use crate::capture::procinfo::Host;
use crate::capture::{Dir, FdKind, ProcessNote, Record, RecordKind};
use crate::mcp::message::{self, ParseError, Parsed};
use crate::mcp::session::{Addr, Addrs, Route, SessionKey, View};
use crate::mcp::{Tracker, TrackerConfig};
use crate::signals::{Event, Signal};
use crate::streams::{Gap, Reassembly, StreamKey};
use crate::wire::ndjson::{self, Framer};
use mcptap_abi::SocketInfo;

/// Settings of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Longest message accepted; longer ones are dropped and reported as truncated.
    pub max_message_bytes: usize,
    /// Tracker timing.
    pub tracker: TrackerConfig,
    /// Streams with no traffic for this long are forgotten (ns).
    pub stream_idle_ns: u64,
    /// Most streams held; past it the least recently active are forgotten and counted.
    pub max_streams: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_message_bytes: 64 << 20,
            tracker: TrackerConfig::default(),
            stream_idle_ns: 3_600_000_000_000,
            max_streams: 100_000,
        }
    }
}

/// A probing stream is rejected when this many bytes arrive without a line that starts like
/// JSON.
const PROBE_LIMIT: usize = 64 * 1024;

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
    /// HTTP/1.x: the connection state lives in `Pipeline::conns`, shared by both directions.
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

struct Stream {
    /// Lines that did not parse before the first message (at most one: a second rejects).
    junk: Vec<Junk>,
    kind: FdKind,
    peer_inode: u64,
    reasm: Reassembly,
    framing: Framing,
    verdict: Verdict,
    last_ns: u64,
    /// Its bytes are TLS plaintext.
    tls: bool,
}

/// A socket the kernel found to carry TLS.
struct TlsSocket {
    /// An SSL object is bound to it, or its plaintext arrived.
    decrypted: bool,
    last_ns: u64,
}

/// One process's fd: the key of everything both directions of a socket share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FdKey {
    tgid: u32,
    fd: i32,
    inode: u64,
}

impl FdKey {
    fn of(k: &StreamKey) -> Self {
        FdKey {
            tgid: k.tgid,
            fd: k.fd,
            inode: k.inode,
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
    /// Streams forgotten because `max_streams` were held.
    pub evicted_streams: u64,
    /// TCP sockets the kernel found to carry TLS.
    pub tls_sockets: u64,
    /// TLS streams that ended (closed, process exited, idle, or at stop) never matched to an
    /// OpenSSL SSL object, or whose ciphertext reached the pipeline: another TLS library, or a
    /// connection older than the probes.
    pub tls_undecrypted: u64,
}

/// The whole userspace pipeline.
pub struct Pipeline {
    cfg: PipelineConfig,
    streams: crate::FastMap<StreamKey, Stream>,
    /// HTTP connections, per process fd.
    conns: crate::FastMap<FdKey, http::ConnState>,
    /// Socket addresses, per process fd, from the kernel's socket records.
    sockets: crate::FastMap<FdKey, SocketInfo>,
    /// TLS sockets, per process fd.
    tls: crate::FastMap<FdKey, TlsSocket>,
    notes: Vec<ProcessNote>,
    /// The tracker (sessions and correlation).
    pub tracker: Tracker,
    out: Vec<Signal>,
    rejects: Vec<Reject>,
    /// Counters.
    pub stats: PipelineStats,
    kernel_totals: BTreeMap<String, u64>,
    now: u64,
}

/// Kernel counters whose increase means data was lost.
const LOSS_COUNTERS: &[&str] = &[
    "ringbuf_full_records",
    "ringbuf_full_bytes",
    "truncated_syscalls",
    "truncated_bytes",
    "read_faults",
    "stash_full",
    "exit_missed",
    "tail_call_failed",
    "prog_recursion_misses",
    "tls_unbound_calls",
    "tls_busy",
];

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

/// A named AF_UNIX socket (either end bound to a path) rather than a socketpair.
fn named_unix(si: Option<&SocketInfo>) -> bool {
    si.is_some_and(|s| s.family == 1 && (s.local_path_len > 0 || s.remote_path_len > 0))
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new(cfg: PipelineConfig) -> Self {
        Pipeline {
            tracker: Tracker::new(cfg.tracker.clone()),
            cfg,
            streams: Default::default(),
            conns: Default::default(),
            sockets: Default::default(),
            tls: Default::default(),
            notes: Vec::new(),
            out: Vec::new(),
            rejects: Vec::new(),
            stats: PipelineStats::default(),
            kernel_totals: BTreeMap::new(),
            now: 0,
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

    fn stream_event(&self, event: &'static str, key: &StreamKey, ts: u64) -> Event {
        Event {
            pid: Some(key.tgid),
            comm: self.tracker.procs.get(key.tgid).map(|p| p.comm.clone()),
            fd: Some(key.fd),
            ..Event::new(self.wall(ts), event)
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
                let fk = FdKey::of(&StreamKey::of(&rec));
                let t = self.tls.entry(fk).or_insert(TlsSocket {
                    decrypted: false,
                    last_ns: rec.hdr.ts_exit_ns,
                });
                t.last_ns = rec.hdr.ts_exit_ns;
                if rec.is_tls() {
                    // An SSL object is bound to it: its plaintext is captured.
                    t.decrypted = true;
                } else {
                    self.stats.tls_sockets += 1;
                    self.notes.push(ProcessNote::TlsSocket(rec.hdr.tgid));
                }
            }
            RecordKind::Socket => {
                if let Some(si) = rec.socket_info() {
                    self.sockets.insert(FdKey::of(&StreamKey::of(&rec)), si);
                }
            }
        }
    }

    fn data(&mut self, host: &mut dyn Host, rec: &Record<'_>) {
        let key = StreamKey::of(rec);
        // Taken out of the map while it is worked on, so that frames can borrow its buffer
        // while the rest of the pipeline is mutated.
        let mut stream = self.streams.remove(&key).unwrap_or_else(|| Stream {
            junk: Vec::new(),
            kind: rec.fd_kind().expect("checked by parse"),
            peer_inode: rec.hdr.peer_inode,
            reasm: Reassembly::default(),
            framing: Framing::Undecided,
            verdict: Verdict::Probing { junk: 0 },
            last_ns: 0,
            tls: false,
        });
        stream.last_ns = rec.hdr.ts_exit_ns;
        if rec.is_tls() {
            stream.tls = true;
            if let Some(t) = self.tls.get_mut(&FdKey::of(&key)) {
                t.decrypted = true;
                t.last_ns = rec.hdr.ts_exit_ns;
            }
        }
        if stream.peer_inode == 0 {
            stream.peer_inode = rec.hdr.peer_inode;
        }
        if stream.verdict != Verdict::Rejected {
            self.data_in(host, rec, &key, &mut stream);
        }
        self.streams.insert(key, stream);
    }

    fn data_in(
        &mut self,
        host: &mut dyn Host,
        rec: &Record<'_>,
        key: &StreamKey,
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
                    self.http_lost(host, key, rec.hdr.ts_exit_ns);
                    self.reject(key, stream, Some("http_gap"));
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
            && !self.choose_framing(key, stream, rec.data)
        {
            return;
        }
        match stream.framing {
            Framing::Http => {
                self.http_data(host, key, stream, rec);
            }
            Framing::Ndjson(_) => self.ndjson_data(host, rec, key, stream),
            Framing::Undecided => unreachable!("chosen above"),
        }
    }

    /// Pick how to frame a stream from its first bytes; false when it was rejected instead.
    fn choose_framing(&mut self, key: &StreamKey, stream: &mut Stream, first: &[u8]) -> bool {
        let head = first.trim_ascii_start();
        let fk = FdKey::of(key);
        if self.conns.contains_key(&fk) {
            // The other direction of this fd already found HTTP.
            stream.framing = Framing::Http;
            return true;
        }
        if stream.kind != FdKind::Pipe
            && let Some(conn) =
                crate::wire::http::Conn::detect(key.dir, head, self.cfg.max_message_bytes)
        {
            self.conns.insert(fk, http::ConnState::new(conn));
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
            self.reject(key, stream, Some(reason));
            return false;
        }
        stream.framing = Framing::Ndjson(Framer::new(self.cfg.max_message_bytes));
        true
    }

    /// The route of a newline-delimited view: stdio pipes and socketpairs and named Unix
    /// sockets join the two processes at the link's ends; TCP joins the connection.
    fn ndjson_route(&mut self, host: &mut dyn Host, v: &View) -> Route {
        let fk = FdKey {
            tgid: v.tgid,
            fd: v.fd,
            inode: v.inode,
        };
        let si = self.sockets.get(&fk).copied();
        match v.kind {
            FdKind::Pipe => self.tracker.link_route(host, v, "stdio"),
            FdKind::Unix => {
                let transport = if named_unix(si.as_ref()) {
                    "unix"
                } else {
                    "stdio"
                };
                let mut r = self.tracker.link_route(host, v, transport);
                if transport == "unix" {
                    r.addrs = si.map(|si| {
                        let (local, remote) = socket_addrs(&si);
                        // The bound path is the server's.
                        if si.local_path_len > 0 {
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
            FdKind::Tcp => {
                // No standard transport frames MCP this way; roles come from the messages,
                // sides from the address order so that both ends agree.
                let (local, remote) = si.map(|si| socket_addrs(&si)).unwrap_or((
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
        }
    }

    fn ndjson_data(
        &mut self,
        host: &mut dyn Host,
        rec: &Record<'_>,
        key: &StreamKey,
        stream: &mut Stream,
    ) {
        let base = View {
            tgid: key.tgid,
            fd: key.fd,
            dir: key.dir,
            kind: stream.kind,
            inode: key.inode,
            peer_inode: stream.peer_inode,
            first_enter_ns: 0,
            last_exit_ns: 0,
            tls: stream.tls,
        };
        let Framing::Ndjson(framer) = &mut stream.framing else {
            return;
        };
        let mut framer = std::mem::replace(framer, Framer::new(0));
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
                    self.frame(host, key, &v, &f, stream);
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
                    stream.verdict =
                        self.oversize(host, key, &v, None, len, &prefix, stream.verdict);
                }
            }
        });
        if stream.verdict == Verdict::Rejected {
            self.reject(key, stream, None);
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
            self.reject(key, stream, Some("no_json_lines"));
        }
    }

    /// A message over the size limit. `route` is given by HTTP, which knows it; `None` asks
    /// for the newline-delimited route.
    #[allow(clippy::too_many_arguments)]
    fn oversize(
        &mut self,
        host: &mut dyn Host,
        key: &StreamKey,
        v: &View,
        route: Option<&Route>,
        len: u64,
        prefix: &[u8],
        verdict: Verdict,
    ) -> Verdict {
        self.stats.oversize += 1;
        let looks_rpc = prefix.trim_ascii_start().starts_with(b"{")
            && memchr::memmem::find(prefix, b"\"jsonrpc\"").is_some();
        let verdict = match verdict {
            Verdict::Probing { .. } if looks_rpc => Verdict::Mcp,
            other => other,
        };
        if verdict != Verdict::Mcp {
            return verdict;
        }
        let mut e = self
            .stream_event("message_truncated", key, v.ts())
            .with("bytes", len)
            .with("limit", self.cfg.max_message_bytes as u64);
        if let Some(m) = sniff_method(prefix) {
            e = e.with("method", m);
        }
        let route = match route {
            Some(r) => r.clone(),
            None => self.ndjson_route(host, v),
        };
        if self
            .tracker
            .observe_junk(host, &route, v, xxh3_64(prefix) ^ len)
        {
            e.session = self.tracker.session_label(host, &route, v.ts());
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
    ) {
        let (bytes, after_gap, verdict) = (f.bytes, f.after_gap, stream.verdict);
        let early_junk = &mut stream.junk;
        self.stats.frames += 1;
        stream.verdict = match message::parse_with(bytes, self.parse_opts()) {
            Ok(parsed) => {
                // Lines that did not parse before this first message were on an MCP stream
                // after all: stray output (or the tail of a message the agent started in the
                // middle of). Either way, unparsed bytes on the stream: report them.
                for j in early_junk.drain(..) {
                    self.corruption(host, key, &j, None, true);
                }
                let route = self.ndjson_route(host, v);
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
                        early_junk.push(Junk {
                            view: *v,
                            hash: xxh3_64(bytes),
                            len: bytes.len() as u64,
                            class: err.class(),
                        });
                        Verdict::Probing { junk: junk + 1 }
                    }
                }
                Verdict::Mcp if after_gap => {
                    // The tail of a message cut by a hole: expected, already reported.
                    self.stats.resync_dropped_bytes += bytes.len() as u64 + 1;
                    Verdict::Mcp
                }
                Verdict::Mcp => {
                    let j = Junk {
                        view: *v,
                        hash: xxh3_64(bytes),
                        len: bytes.len() as u64,
                        class: err.class(),
                    };
                    self.corruption(host, key, &j, None, false);
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
                self.tracker
                    .observe(host, route, v, m, hash, size, &mut self.out);
                1
            }
            Parsed::Batch(ms) => {
                let n = ms.len() as u64;
                for (i, m) in ms.iter().enumerate() {
                    self.stats.messages += 1;
                    // Each element needs its own identity for matching the two views.
                    let h = (hash ^ (i as u64 + 1)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    self.tracker
                        .observe(host, route, v, m, h, size / n, &mut self.out);
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
        route: Option<&Route>,
        before_first: bool,
    ) {
        *self.stats.parse_errors.entry(j.class).or_default() += 1;
        let route = match route {
            Some(r) => r.clone(),
            None => self.ndjson_route(host, &j.view),
        };
        if self.tracker.observe_junk(host, &route, &j.view, j.hash) {
            let mut e = self
                .stream_event("stream_corruption", key, j.view.ts())
                .with("bytes", j.len)
                .with("reason", j.class);
            if before_first {
                e = e.with("before_first_message", true);
            }
            e.session = self.tracker.session_label(host, &route, j.view.ts());
            self.out.push(Signal::Event(e));
        }
    }

    fn report_gap(&mut self, key: &StreamKey, gap: Gap, dropped: u64, ts: u64) {
        *self.stats.gaps.entry(gap.reason.as_str()).or_default() += 1;
        self.stats.resync_dropped_bytes += dropped;
        let mut e = self
            .stream_event("stream_gap", key, ts)
            .with("reason", gap.reason.as_str())
            .with("dropped_bytes", dropped);
        if let Some(b) = gap.bytes {
            e = e.with("missing_bytes", b);
        }
        self.out.push(Signal::Event(e));
    }

    /// Stop reading a stream (and the other direction of its fd) and tell the kernel.
    /// `reason` is `None` when the caller already counted it.
    fn reject(&mut self, key: &StreamKey, stream: &mut Stream, reason: Option<&'static str>) {
        if let Some(reason) = reason {
            *self.stats.rejected.entry(reason).or_default() += 1;
        }
        // Ciphertext that reached the pipeline (a connection older than the kernel's TLS
        // check) is a TLS stream not decrypted; a decrypted one is done with.
        let tls = self.tls.remove(&FdKey::of(key));
        if reason == Some("tls") || tls.is_some_and(|t| !t.decrypted) {
            self.stats.tls_undecrypted += 1;
        }
        debug!(
            "stream {key:?} is not MCP ({})",
            reason.unwrap_or("see counters")
        );
        stream.verdict = Verdict::Rejected;
        stream.framing = Framing::Undecided;
        let other = StreamKey {
            dir: match key.dir {
                Dir::In => Dir::Out,
                Dir::Out => Dir::In,
            },
            ..*key
        };
        if let Some(s) = self.streams.get_mut(&other) {
            s.verdict = Verdict::Rejected;
            s.framing = Framing::Undecided;
        }
        self.conns.remove(&FdKey::of(key));
        self.rejects.push(Reject {
            tgid: key.tgid,
            fd: key.fd,
            inode: key.inode,
        });
    }

    fn finish_stream(&mut self, key: StreamKey, mut s: Stream, ts: u64) {
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
            let e = self
                .stream_event("stream_unterminated", &key, ts)
                .with("bytes", n);
            self.out.push(Signal::Event(e));
        }
    }

    fn close(&mut self, host: &mut dyn Host, rec: &Record<'_>) {
        let base = StreamKey::of(rec);
        self.http_close(host, &base, rec.hdr.ts_exit_ns);
        for dir in [Dir::In, Dir::Out] {
            let key = StreamKey { dir, ..base };
            if let Some(s) = self.streams.remove(&key) {
                self.finish_stream(key, s, rec.hdr.ts_exit_ns);
            }
        }
        self.sockets.remove(&FdKey::of(&base));
        self.end_tls(|k| *k == FdKey::of(&base), 0);
    }

    /// Forget the TLS sockets `gone` picks whose last news is older than `before` (0: any),
    /// counting those never decrypted.
    fn end_tls(&mut self, gone: impl Fn(&FdKey) -> bool, before: u64) {
        let mut undecrypted = 0;
        self.tls.retain(|k, t| {
            let keep = !gone(k) || (before > 0 && t.last_ns >= before);
            if !keep && !t.decrypted {
                debug!("TLS socket {k:?} ended without being decrypted");
                undecrypted += 1;
            }
            keep
        });
        self.stats.tls_undecrypted += undecrypted;
    }

    fn exit(&mut self, host: &mut dyn Host, tgid: u32, ts: u64) {
        let conns: Vec<FdKey> = self
            .conns
            .keys()
            .filter(|k| k.tgid == tgid)
            .copied()
            .collect();
        for fk in conns {
            let key = StreamKey {
                tgid: fk.tgid,
                fd: fk.fd,
                dir: Dir::In,
                inode: fk.inode,
            };
            self.http_close(host, &key, ts);
        }
        let keys: Vec<StreamKey> = self
            .streams
            .keys()
            .filter(|k| k.tgid == tgid)
            .copied()
            .collect();
        for key in keys {
            let s = self.streams.remove(&key).expect("listed");
            self.finish_stream(key, s, ts);
        }
        self.sockets.retain(|k, _| k.tgid != tgid);
        self.end_tls(|k| k.tgid == tgid, 0);
        self.tracker.process_exit(tgid, ts, &mut self.out);
    }

    /// Time passes (`now` is CLOCK_MONOTONIC ns): timeouts fire, idle state is dropped.
    pub fn tick(&mut self, now: u64) {
        self.now = self.now.max(now);
        let now = self.now;
        self.tracker.tick(now, &mut self.out);
        let idle = self.cfg.stream_idle_ns;
        self.streams
            .retain(|_, s| now.saturating_sub(s.last_ns) < idle);
        let victims = crate::least_recent(
            self.streams.iter().map(|(k, s)| (s.last_ns, *k)),
            self.cfg.max_streams,
        );
        if !victims.is_empty() {
            log::warn!(
                "{} streams held (cap {}): forgetting the {} least recently active",
                self.streams.len(),
                self.cfg.max_streams,
                victims.len()
            );
            self.stats.evicted_streams += victims.len() as u64;
            for key in victims {
                if let Some(s) = self.streams.remove(&key) {
                    self.finish_stream(key, s, now);
                }
            }
        }
        if now > idle {
            self.end_tls(|_| true, now - idle);
        }
        let streams = &self.streams;
        self.conns.retain(|k, _| {
            streams.contains_key(&StreamKey {
                tgid: k.tgid,
                fd: k.fd,
                dir: Dir::In,
                inode: k.inode,
            }) || streams.contains_key(&StreamKey {
                tgid: k.tgid,
                fd: k.fd,
                dir: Dir::Out,
                inode: k.inode,
            })
        });
    }

    /// New kernel counter totals: report every loss counter that went up.
    pub fn kernel_counters(&mut self, totals: &BTreeMap<String, u64>, now: u64) {
        for name in LOSS_COUNTERS {
            let total = totals.get(*name).copied().unwrap_or(0);
            let prev = self.kernel_totals.get(*name).copied().unwrap_or(0);
            if total > prev {
                log::warn!("kernel: {name} rose by {} (total {total})", total - prev);
                let e = Event::new(self.wall(now), "kernel_loss")
                    .with("counter", *name)
                    .with("delta", total - prev)
                    .with("total", total);
                self.out.push(Signal::Event(e));
            }
        }
        self.kernel_totals = totals.clone();
    }

    /// Entries forgotten to hold memory to the caps, by table.
    pub fn evictions(&self) -> BTreeMap<&'static str, u64> {
        let t = &self.tracker.stats;
        BTreeMap::from([
            ("streams", self.stats.evicted_streams),
            ("sessions", t.evicted_sessions),
            ("pending_requests", t.evicted_pending),
            ("notification_views", t.evicted_views),
        ])
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
        self.end_tls(|_| true, 0);
        let open = self.tracker.open_exchanges();
        if open > 0 {
            let e = Event::new(self.wall(now), "in_flight_at_stop").with("exchanges", open as u64);
            self.out.push(Signal::Event(e));
        }
        let e = Event::new(self.wall(now), "agent_stop").with("stats", self.summary());
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

    /// Streams currently tracked.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
