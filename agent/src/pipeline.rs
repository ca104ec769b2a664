//! The pipeline: capture → streams → wire framing → mcp → signals, wired together.
//!
//! [`Pipeline::ingest`] takes one raw kernel record (live from the ring buffer, or from a
//! replay file) and pushes it through every stage; finished signals queue up for the
//! exporters. It never blocks and never needs root: what it asks of the host goes through
//! [`Host`], which replay answers from the recording.

use std::collections::{BTreeMap, HashMap};

use log::debug;
use xxhash_rust::xxh3::xxh3_64;

use crate::capture::procinfo::Host;
use crate::capture::{Dir, FdKind, Record, RecordKind};
use crate::mcp::message::{self, ParseError, Parsed};
use crate::mcp::session::View;
use crate::mcp::{Tracker, TrackerConfig};
use crate::signals::{Event, Signal};
use crate::streams::{Gap, Reassembly, StreamKey};
use crate::wire::ndjson::{self, Framer};

/// Settings of the pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Longest message accepted; longer ones are dropped and reported as truncated.
    pub max_message_bytes: usize,
    /// Tracker timing.
    pub tracker: TrackerConfig,
    /// Streams with no traffic for this long are forgotten (ns).
    pub stream_idle_ns: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_message_bytes: 64 << 20,
            tracker: TrackerConfig::default(),
            stream_idle_ns: 3_600_000_000_000,
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
    framer: Framer,
    verdict: Verdict,
    last_ns: u64,
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
    /// Frames (lines) produced by framing.
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
}

/// The whole userspace pipeline.
pub struct Pipeline {
    cfg: PipelineConfig,
    streams: HashMap<StreamKey, Stream>,
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
];

fn looks_binary(b: &[u8]) -> bool {
    b.iter()
        .take(64)
        .any(|&c| c < 0x09 || (0x0e..0x20).contains(&c) || c == 0x7f)
}

fn looks_http(b: &[u8]) -> bool {
    const STARTS: &[&[u8]] = &[
        b"GET ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"HEAD ",
        b"OPTIONS ",
        b"PATCH ",
        b"HTTP/1.",
        b"PRI * HTTP/2",
    ];
    STARTS
        .iter()
        .any(|s| b.len() >= s.len() && &b[..s.len()] == *s)
}

/// `"method":"..."` from the start of a message too long to parse whole.
fn sniff_method(prefix: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(prefix);
    let at = text.find("\"method\"")?;
    let rest = text[at + 8..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new(cfg: PipelineConfig) -> Self {
        Pipeline {
            tracker: Tracker::new(cfg.tracker.clone()),
            cfg,
            streams: HashMap::new(),
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
            RecordKind::Close => self.close(&rec),
            RecordKind::Exec => {
                let comm = rec.comm();
                self.tracker.procs.exec(host, rec.hdr.tgid, &comm);
            }
            RecordKind::Exit => self.exit(rec.hdr.tgid, rec.hdr.ts_exit_ns),
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
            framer: Framer::new(self.cfg.max_message_bytes),
            verdict: Verdict::Probing { junk: 0 },
            last_ns: 0,
        });
        stream.last_ns = rec.hdr.ts_exit_ns;
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
            let dropped = stream.framer.gap();
            if stream.verdict == Verdict::Mcp {
                self.report_gap(key, gap, dropped, rec.hdr.ts_exit_ns);
            }
        }
        if !step.has_bytes {
            return;
        }
        self.tracker.procs.note(host, key.tgid, &rec.comm());
        if matches!(stream.verdict, Verdict::Probing { .. }) && stream.framer.pending() == 0 {
            let head = rec.data.trim_ascii_start();
            let reason = if looks_http(head) {
                // Streamable HTTP and HTTP+SSE are parsed by the network transports.
                Some("http")
            } else if looks_binary(rec.data) {
                Some("binary")
            } else {
                None
            };
            if let Some(reason) = reason {
                self.reject(key, stream, Some(reason));
                return;
            }
        }
        let base = View {
            tgid: key.tgid,
            fd: key.fd,
            dir: key.dir,
            kind: stream.kind,
            inode: key.inode,
            peer_inode: stream.peer_inode,
            first_enter_ns: 0,
            last_exit_ns: 0,
        };
        let mut framer = std::mem::replace(&mut stream.framer, Framer::new(0));
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
                    stream.verdict = self.oversize(host, key, &v, len, &prefix, stream.verdict);
                }
            }
        });
        stream.framer = framer;
        if stream.verdict == Verdict::Rejected {
            self.reject(key, stream, None);
            return;
        }
        let stuck = matches!(stream.verdict, Verdict::Probing { .. })
            && stream.framer.pending() > PROBE_LIMIT
            && !matches!(
                stream.framer.pending_bytes().trim_ascii_start().first(),
                Some(b'{') | Some(b'[')
            );
        if stuck {
            self.reject(key, stream, Some("no_json_lines"));
        }
    }

    fn oversize(
        &mut self,
        host: &mut dyn Host,
        key: &StreamKey,
        v: &View,
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
        if self.tracker.observe_junk(host, v, xxh3_64(prefix) ^ len) {
            e.session = Some(self.tracker.session_label(host, v));
            self.out.push(Signal::Event(e));
        }
        verdict
    }

    /// One line of a stream; updates the stream's verdict.
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
        stream.verdict = match message::parse(bytes) {
            Ok(parsed) => {
                // Lines that did not parse before this first message were on an MCP stream
                // after all: stray output (or the tail of a message the agent started in the
                // middle of). Either way, unparsed bytes on the stream: report them.
                for j in early_junk.drain(..) {
                    self.corruption(host, key, &j, true);
                }
                let hash = xxh3_64(bytes);
                let size = bytes.len() as u64 + 1;
                match parsed {
                    Parsed::One(m) => {
                        self.stats.messages += 1;
                        self.tracker.observe(host, v, &m, hash, size, &mut self.out);
                    }
                    Parsed::Batch(ms) => {
                        let n = ms.len() as u64;
                        for (i, m) in ms.iter().enumerate() {
                            self.stats.messages += 1;
                            // Each element needs its own identity for matching the two views.
                            let h = (hash ^ (i as u64 + 1)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                            self.tracker.observe(host, v, m, h, size / n, &mut self.out);
                        }
                    }
                }
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
                    self.corruption(host, key, &j, false);
                    Verdict::Mcp
                }
                Verdict::Rejected => Verdict::Rejected,
            },
        }
    }

    /// A line on an MCP stream that is not a JSON-RPC message; reported once even when both
    /// ends saw it.
    fn corruption(&mut self, host: &mut dyn Host, key: &StreamKey, j: &Junk, before_first: bool) {
        *self.stats.parse_errors.entry(j.class).or_default() += 1;
        if self.tracker.observe_junk(host, &j.view, j.hash) {
            let mut e = self
                .stream_event("stream_corruption", key, j.view.ts())
                .with("bytes", j.len)
                .with("reason", j.class);
            if before_first {
                e = e.with("before_first_message", true);
            }
            e.session = Some(self.tracker.session_label(host, &j.view));
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
        debug!(
            "stream {key:?} is not MCP ({})",
            reason.unwrap_or("see counters")
        );
        stream.verdict = Verdict::Rejected;
        stream.framer = Framer::new(0);
        let other = StreamKey {
            dir: match key.dir {
                Dir::In => Dir::Out,
                Dir::Out => Dir::In,
            },
            ..*key
        };
        if let Some(s) = self.streams.get_mut(&other) {
            s.verdict = Verdict::Rejected;
            s.framer = Framer::new(0);
        }
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
        if let Some(n) = s.framer.finish() {
            self.stats.unterminated += 1;
            let e = self
                .stream_event("stream_unterminated", &key, ts)
                .with("bytes", n);
            self.out.push(Signal::Event(e));
        }
    }

    fn close(&mut self, rec: &Record<'_>) {
        for dir in [Dir::In, Dir::Out] {
            let key = StreamKey {
                dir,
                ..StreamKey::of(rec)
            };
            if let Some(s) = self.streams.remove(&key) {
                self.finish_stream(key, s, rec.hdr.ts_exit_ns);
            }
        }
    }

    fn exit(&mut self, tgid: u32, ts: u64) {
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

    /// End of input (shutdown or end of a replay): report what is still open.
    pub fn finish(&mut self, now: u64) {
        self.tick(now);
        let open = self.tracker.open_exchanges();
        if open > 0 {
            let e =
                Event::new(self.wall(self.now), "in_flight_at_stop").with("exchanges", open as u64);
            self.out.push(Signal::Event(e));
        }
        let e = Event::new(self.wall(self.now), "agent_stop").with("stats", self.summary());
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
            "kernel": self.kernel_totals,
        })
    }

    /// Streams currently tracked.
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::encode_record;
    use crate::capture::procinfo::{FixedHost, Holder, HolderKind, ProcInfo};
    use crate::signals::Status;
    use mcptap_abi::{
        DIR_IN, DIR_OUT, EventHeader, FD_PIPE, FLAG_LOST_BEFORE, RECORD_DATA, RECORD_EXIT,
    };

    const CLIENT: u32 = 100;
    const SERVER: u32 = 200;
    const REQ_PIPE: u64 = 1;
    const RESP_PIPE: u64 = 2;
    const REQ: &[u8] =
        b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"hi\"}}}\n";
    const RESP: &[u8] =
        b"{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}}\n";

    fn host() -> FixedHost {
        let mut h = FixedHost::default();
        h.processes.insert(
            CLIENT,
            ProcInfo {
                pid: CLIENT,
                comm: "client".into(),
                ..Default::default()
            },
        );
        h.processes.insert(
            SERVER,
            ProcInfo {
                pid: SERVER,
                ppid: CLIENT,
                comm: "server".into(),
                ..Default::default()
            },
        );
        let hold = |pid, writes| Holder { pid, writes };
        h.holders.insert(
            (HolderKind::Pipe, REQ_PIPE),
            vec![hold(CLIENT, true), hold(SERVER, false)],
        );
        h.holders.insert(
            (HolderKind::Pipe, RESP_PIPE),
            vec![hold(SERVER, true), hold(CLIENT, false)],
        );
        h
    }

    /// One syscall's record: `(tgid, fd, dir, pipe, enter, exit, bytes)`.
    fn rec(tgid: u32, fd: i32, dir: u8, inode: u64, enter: u64, exit: u64, data: &[u8]) -> Vec<u8> {
        encode_record(
            &EventHeader {
                record: RECORD_DATA,
                dir,
                fd_kind: FD_PIPE,
                tgid,
                tid: tgid,
                fd,
                ts_enter_ns: enter,
                ts_exit_ns: exit,
                inode,
                total: data.len() as u64,
                ..Default::default()
            },
            data,
        )
    }

    fn run(records: &[Vec<u8>], host: &mut FixedHost) -> (Vec<Signal>, Pipeline) {
        let mut p = Pipeline::new(PipelineConfig::default());
        for r in records {
            p.ingest(host, r);
        }
        p.finish(10_000_000_000);
        let out = p.drain_signals().collect();
        (out, p)
    }

    fn exchanges(s: &[Signal]) -> Vec<&crate::signals::Exchange> {
        s.iter()
            .filter_map(|s| match s {
                Signal::Exchange(x) => Some(x),
                _ => None,
            })
            .collect()
    }

    /// The server reads the request in two pieces split at every possible byte: always one
    /// exchange, with both sides' durations from the right syscalls.
    #[test]
    fn both_views_split_at_every_boundary_make_one_exchange() {
        for cut in 1..REQ.len() {
            let recs = vec![
                rec(CLIENT, 5, DIR_OUT, REQ_PIPE, 1_000, 1_100, REQ),
                rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, &REQ[..cut]),
                rec(SERVER, 0, DIR_IN, REQ_PIPE, 1_250, 1_300, &REQ[cut..]),
                rec(SERVER, 1, DIR_OUT, RESP_PIPE, 5_000, 5_100, RESP),
                rec(CLIENT, 6, DIR_IN, RESP_PIPE, 4_000, 5_200, RESP),
            ];
            let (out, p) = run(&recs, &mut host());
            let xs = exchanges(&out);
            assert_eq!(xs.len(), 1, "cut {cut}: {out:#?}");
            let x = xs[0];
            assert_eq!(x.method, "tools/call");
            assert_eq!(x.tool.as_deref(), Some("echo"));
            assert_eq!(x.status, Status::Ok);
            assert_eq!(x.id, "7");
            // Client: write entry 1000 → read exit 5200. Server: last read exit 1300 → write
            // entry 5000.
            assert_eq!(x.client_duration_ms, Some(0.0042));
            assert_eq!(x.server_duration_ms, Some(0.0037));
            assert_eq!(x.client.pid, Some(CLIENT));
            assert_eq!(x.server.pid, Some(SERVER));
            assert_eq!(x.client.comm, "client");
            assert_eq!(x.request_bytes, REQ.len() as u64);
            assert_eq!(x.session, format!("stdio:{CLIENT}-{SERVER}"));
            assert_eq!(p.tracker.stats.late_views, 0);
        }
    }

    /// Records from the two processes interleave in any order the ring buffer may produce:
    /// still one exchange.
    #[test]
    fn view_order_does_not_matter() {
        let base = [
            rec(CLIENT, 5, DIR_OUT, REQ_PIPE, 1_000, 1_100, REQ),
            rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, REQ),
            rec(SERVER, 1, DIR_OUT, RESP_PIPE, 5_000, 5_100, RESP),
            rec(CLIENT, 6, DIR_IN, RESP_PIPE, 4_000, 5_200, RESP),
        ];
        // Every permutation that keeps each process's own records in order.
        let orders: [[usize; 4]; 6] = [
            [0, 1, 2, 3],
            [1, 0, 2, 3],
            [1, 2, 0, 3],
            [1, 2, 3, 0],
            [0, 1, 3, 2],
            [1, 0, 3, 2],
        ];
        for order in orders {
            let recs: Vec<Vec<u8>> = order.iter().map(|&i| base[i].clone()).collect();
            let (out, _) = run(&recs, &mut host());
            let xs = exchanges(&out);
            assert_eq!(xs.len(), 1, "order {order:?}: {out:#?}");
            assert_eq!(xs[0].client_duration_ms, Some(0.0042), "order {order:?}");
            assert_eq!(xs[0].server_duration_ms, Some(0.0038), "order {order:?}");
        }
    }

    /// Only the server is watched: one exchange with the server's view; the client is named
    /// from the pipe's holders.
    #[test]
    fn one_side_watched() {
        let recs = vec![
            rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, REQ),
            rec(SERVER, 1, DIR_OUT, RESP_PIPE, 5_000, 5_100, RESP),
        ];
        let (out, _) = run(&recs, &mut host());
        let xs = exchanges(&out);
        assert_eq!(xs.len(), 1);
        assert_eq!(xs[0].client_duration_ms, None);
        assert_eq!(xs[0].server_duration_ms, Some(0.0038));
        assert_eq!(xs[0].duration_ms, Some(0.0038));
        assert_eq!(xs[0].client.pid, Some(CLIENT));
        assert_eq!(xs[0].client.comm, "client");
    }

    /// Stray output on the server's stdout: reported once as corruption, framing resyncs and
    /// the next response still correlates.
    #[test]
    fn stray_stdout_is_corruption_and_framing_resyncs() {
        let recs = vec![
            rec(CLIENT, 5, DIR_OUT, REQ_PIPE, 1_000, 1_100, REQ),
            rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, REQ),
            rec(
                SERVER,
                1,
                DIR_OUT,
                RESP_PIPE,
                2_000,
                2_100,
                b"debug: got a call\n",
            ),
            rec(
                CLIENT,
                6,
                DIR_IN,
                RESP_PIPE,
                1_500,
                2_200,
                b"debug: got a call\n",
            ),
            rec(SERVER, 1, DIR_OUT, RESP_PIPE, 5_000, 5_100, RESP),
            rec(CLIENT, 6, DIR_IN, RESP_PIPE, 4_000, 5_200, RESP),
        ];
        let (out, p) = run(&recs, &mut host());
        assert_eq!(exchanges(&out).len(), 1);
        let corrupt: Vec<&Signal> = out
            .iter()
            .filter(|s| matches!(s, Signal::Event(e) if e.event == "stream_corruption"))
            .collect();
        assert_eq!(corrupt.len(), 1, "{out:#?}");
        assert_eq!(p.stats.parse_errors.get("not_json"), Some(&2));
    }

    /// JSON that is not JSON-RPC on a pipe: the stream is rejected, the kernel is told, and
    /// nothing is reported.
    #[test]
    fn json_logs_are_rejected() {
        let lines = b"{\"level\":\"info\",\"msg\":\"a\"}\n{\"level\":\"info\",\"msg\":\"b\"}\n";
        let mut p = Pipeline::new(PipelineConfig::default());
        let mut h = host();
        p.ingest(&mut h, &rec(300, 1, DIR_OUT, 9, 1, 2, lines));
        p.ingest(&mut h, &rec(300, 1, DIR_OUT, 9, 3, 4, lines));
        p.finish(10);
        let reported: Vec<Signal> = p
            .drain_signals()
            .filter(|s| !matches!(s, Signal::Event(e) if e.event == "agent_stop"))
            .collect();
        assert!(reported.is_empty(), "{reported:#?}");
        assert_eq!(
            p.take_rejects(),
            vec![Reject {
                tgid: 300,
                fd: 1,
                inode: 9
            }]
        );
        assert_eq!(p.stats.rejected.get("json_not_jsonrpc"), Some(&1));
        // Binary and HTTP are rejected from their first bytes.
        p.ingest(
            &mut h,
            &rec(301, 1, DIR_OUT, 10, 1, 2, b"\x16\x03\x01\x02\x00"),
        );
        p.ingest(
            &mut h,
            &rec(302, 1, DIR_OUT, 11, 1, 2, b"GET / HTTP/1.1\r\n"),
        );
        assert_eq!(p.take_rejects().len(), 2);
    }

    /// The server dies before answering: the call ends as no_response.
    #[test]
    fn server_exit_ends_open_calls() {
        let exit = encode_record(
            &EventHeader {
                record: RECORD_EXIT,
                tgid: SERVER,
                tid: SERVER,
                fd: -1,
                ts_enter_ns: 3_000,
                ts_exit_ns: 3_000,
                ..Default::default()
            },
            &[],
        );
        let recs = vec![
            rec(CLIENT, 5, DIR_OUT, REQ_PIPE, 1_000, 1_100, REQ),
            rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, REQ),
            exit,
        ];
        let (out, _) = run(&recs, &mut host());
        let xs = exchanges(&out);
        assert_eq!(xs.len(), 1);
        assert_eq!(xs[0].status, Status::NoResponse);
    }

    /// After a kernel loss, the partial line is dropped, the hole reported, and the next
    /// whole message is used again; no exchange is invented from mismatched halves.
    #[test]
    fn kernel_loss_resyncs_at_the_next_line() {
        let with_id = |m: &[u8], id: &str| {
            String::from_utf8_lossy(m)
                .replace("\"id\":7", &format!("\"id\":{id}"))
                .into_bytes()
        };
        let mut lost = rec(SERVER, 0, DIR_IN, REQ_PIPE, 900, 1_200, &REQ[40..]);
        lost[3] = FLAG_LOST_BEFORE;
        let recs = vec![
            // A whole exchange first: the streams are known to carry MCP.
            rec(SERVER, 0, DIR_IN, REQ_PIPE, 100, 200, &with_id(REQ, "6")),
            rec(SERVER, 1, DIR_OUT, RESP_PIPE, 300, 400, &with_id(RESP, "6")),
            rec(SERVER, 0, DIR_IN, REQ_PIPE, 800, 850, &REQ[..20]),
            // The hole: the tail of request 7 arrives after a loss.
            lost,
            rec(
                SERVER,
                0,
                DIR_IN,
                REQ_PIPE,
                1_300,
                1_400,
                &with_id(REQ, "8"),
            ),
            rec(SERVER, 1, DIR_OUT, RESP_PIPE, 5_000, 5_100, RESP),
            rec(
                SERVER,
                1,
                DIR_OUT,
                RESP_PIPE,
                6_000,
                6_100,
                &with_id(RESP, "8"),
            ),
        ];
        let (out, p) = run(&recs, &mut host());
        let xs = exchanges(&out);
        assert_eq!(xs.len(), 2, "{out:#?}");
        assert_eq!((xs[0].id.as_str(), xs[1].id.as_str()), ("6", "8"));
        assert_eq!(p.tracker.stats.orphan_responses, 1);
        assert!(
            out.iter()
                .any(|s| matches!(s, Signal::Event(e) if e.event == "stream_gap"))
        );
    }
}
