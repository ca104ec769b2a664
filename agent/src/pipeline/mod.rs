//! The pipeline's composition: capture → conn → wire → mcp::transport → mcp → signal, wired
//! together for one stream of kernel records (live from the ring buffer, or from a replay
//! file).
//!
//! [`Pipeline::ingest`] takes one raw record and hands it to the stage that owns it: process
//! lifecycle records go to the process table and the tracker; every other record goes to
//! [`crate::conn`], which reassembles each stream and hands its bytes to the
//! [transport bindings](crate::mcp::transport), which frame them (with [`crate::wire`])
//! and deliver MCP messages to the [`Tracker`]; finished signals queue up here for the
//! outputs. Each stage keeps its own tables and counters; this module only owns what spans
//! them (the process table, the clock, the signal queue, the kernel's loss counters) and
//! the clean-ups that need more than one stage (a process no session names any more is
//! forgotten, with what was learned of its links).
//!
//! It never blocks and never needs root: what it asks of the host goes through
//! [`Host`], which replay answers from the recording.

use std::collections::BTreeMap;

use log::debug;

use crate::agentic::{self, Joiner};
use crate::bounded::TableStat;
use crate::capture::host::{Host, NoHost};
use crate::capture::recording::ClockAnchor;
use crate::capture::{ProcessNote, Record, RecordKind};
use crate::conn::{self, Conns};
use crate::detect::{MatchHasher, Scanner};
use crate::health::{self, Health};
use crate::llm;
use crate::mcp::transport;
use crate::mcp::{Tracker, TrackerConfig};
use crate::proto::{self, Protocols, StreamFraming};
use crate::security::{self, Security};
use crate::signal::process::{MAX_PROCESSES, Processes};
use crate::signal::{Ctx, Event, Signal, What};
use mcptap_abi::counter;

pub use crate::conn::Reject;

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
    /// Wall clock at a monotonic instant, for timestamps.
    pub clock: ClockAnchor,
    /// The agentic layer's settings.
    pub agentic: agentic::Config,
    /// The server health stage's settings.
    pub health: health::Config,
    /// The security rules' settings.
    pub security: security::Config,
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
            clock: ClockAnchor::default(),
            agentic: agentic::Config::default(),
            health: health::Config::default(),
            security: security::Config::default(),
        }
    }
}

/// Process table clean-up, in ns between runs.
const PROCESS_GC_NS: u64 = 1_000_000_000;
/// A process in no session and unused this long is forgotten (unwatched peers never exit
/// here).
const PROCESS_IDLE_NS: u64 = 600_000_000_000;

/// What the pipeline itself counted (each stage counts its own).
#[derive(Clone, Debug, Default)]
pub struct PipelineStats {
    /// Records ingested.
    pub records: u64,
    /// Payload bytes ingested.
    pub bytes: u64,
    /// Records that did not have the ABI's shape.
    pub bad_records: u64,
    /// Records still in the ring buffer when the agent stopped, read but not worked through.
    pub unread_at_stop: u64,
}

/// The whole userspace pipeline.
pub struct Pipeline {
    /// Connections and streams.
    pub conns: Conns<StreamFraming, dyn proto::framing::ConnFraming>,
    /// The protocols: MCP's transport bindings and the model APIs.
    pub protocols: Protocols,
    /// Sessions and correlation.
    pub tracker: Tracker,
    /// Processes, for naming the ends of sessions.
    pub procs: Processes,
    /// The agentic layer: model calls joined to the exchanges they caused.
    pub agentic: Joiner,
    /// The processes that serve MCP.
    pub health: Health,
    /// Signals the health stage made, on their way to `out`.
    health_out: Vec<Signal>,
    /// Findings that need more than one message.
    pub security: Security,
    clock: ClockAnchor,
    /// Signals the stages made, before the agentic layer.
    raw: Vec<Signal>,
    out: Vec<Signal>,
    notes: Vec<ProcessNote>,
    /// What the pipeline itself counted.
    pub stats: PipelineStats,
    kernel_totals: BTreeMap<String, u64>,
    /// The binaries whose OpenSSL is probed, by mode (live capture with TLS only).
    tls_probed: BTreeMap<&'static str, u64>,
    tls_probes: BTreeMap<(&'static str, &'static str), u64>,
    loss_log: crate::bounded::LogLimit,
    links_cap: usize,
    last_gc_ns: u64,
}

impl Pipeline {
    /// An empty pipeline.
    pub fn new(mut cfg: PipelineConfig) -> Self {
        // One hasher for every stage that applies the rules: equal matches hash the same.
        let scanner = cfg.security.rules.any().then(|| Scanner {
            rules: cfg.security.rules,
            hasher: MatchHasher::random(),
        });
        cfg.tracker.scanner = scanner.clone();
        let conns = conn::Config {
            idle_ns: cfg.stream_idle_ns,
            max_fds: cfg.max_streams,
            max_buffered_bytes: cfg.max_buffered_bytes,
        };
        let bindings = transport::Config {
            max_message_bytes: cfg.max_message_bytes,
            payloads: cfg.tracker.payloads,
            raw_session_ids: cfg.raw_session_ids,
        };
        Pipeline {
            conns: Conns::new(conns),
            protocols: Protocols::new(
                bindings,
                llm::http::Config {
                    payloads: cfg.tracker.payloads,
                    scanner,
                },
            ),
            links_cap: cfg.tracker.max_sessions.saturating_mul(4).max(1024),
            tracker: Tracker::new(cfg.tracker),
            procs: Processes::default(),
            agentic: Joiner::new(cfg.agentic, cfg.clock),
            health: Health::new(cfg.health, cfg.clock),
            health_out: Vec::new(),
            security: Security::new(cfg.security),
            clock: cfg.clock,
            raw: Vec::new(),
            out: Vec::new(),
            notes: Vec::new(),
            stats: PipelineStats::default(),
            kernel_totals: BTreeMap::new(),
            tls_probed: BTreeMap::new(),
            tls_probes: BTreeMap::new(),
            loss_log: Default::default(),
            last_gc_ns: 0,
        }
    }

    /// Signals produced since the last call.
    pub fn drain_signals(&mut self) -> std::vec::Drain<'_, Signal> {
        self.out.drain(..)
    }

    /// Streams found not to carry MCP since the last call.
    pub fn take_rejects(&mut self) -> Vec<Reject> {
        self.conns.take_rejects()
    }

    /// What processes did since the last call that the capture layer follows.
    pub fn take_process_notes(&mut self) -> Vec<ProcessNote> {
        std::mem::take(&mut self.notes)
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
        let mut cx = Ctx {
            host,
            procs: &mut self.procs,
            clock: self.clock,
            out: &mut self.raw,
        };
        let mut stage = self.protocols.stage(&mut self.tracker);
        let (tgid, ts) = (rec.hdr.tgid, rec.hdr.ts_exit_ns);
        match rec.kind().expect("checked by parse") {
            RecordKind::Exec => {
                cx.procs.exec(cx.host, tgid, &rec.comm());
                self.notes.push(ProcessNote::Exec(tgid));
            }
            RecordKind::Exit => {
                self.conns.exit(tgid, ts, &mut stage, &mut cx);
                self.tracker.process_exit(tgid, ts, &mut cx);
                self.agentic.process_exit(tgid, ts);
                self.notes.push(ProcessNote::Exit(tgid));
                // After the tracker: the sessions it ends name the server one last time.
                self.join();
                self.health.exited(tgid, ts, &mut self.health_out);
                self.out.append(&mut self.health_out);
            }
            _ => {
                self.conns.ingest(&rec, &mut stage, &mut cx);
                self.notes.extend(self.conns.take_notes());
            }
        }
        self.join();
        self.release_links();
    }

    /// What the stages made goes through the agentic layer to the outputs' queue.
    fn join(&mut self) {
        if !self.raw.is_empty() {
            let from = self.out.len();
            self.agentic.take(&mut self.raw, &mut self.out, &self.procs);
            self.security.observe(&mut self.out[from..]);
            let new = &self.out[from..];
            self.health.observe(new, &self.procs, &mut self.health_out);
            self.out.append(&mut self.health_out);
        }
    }

    /// Processes that left their last session: what was learned of their links goes.
    fn release_links(&mut self) {
        for pid in self.tracker.take_released() {
            self.protocols.mcp.links.forget_process(pid);
        }
    }

    /// Time passes (`now` is CLOCK_MONOTONIC ns): timeouts fire, idle state is dropped.
    pub fn tick(&mut self, now: u64) {
        let now = now.max(self.conns.latest_ns());
        let mut cx = Ctx {
            host: &mut NoHost,
            procs: &mut self.procs,
            clock: self.clock,
            out: &mut self.raw,
        };
        self.tracker.tick(now, &mut cx);
        let mut stage = self.protocols.stage(&mut self.tracker);
        self.conns.tick(now, &mut stage, &mut cx);
        self.join();
        // Model calls the agentic layer held for their links go out now.
        let from = self.out.len();
        self.agentic.tick(now, &mut self.out);
        self.security.observe(&mut self.out[from..]);
        self.health.tick(now, None, &mut self.out);
        self.release_links();
        self.procs.set_now(now);
        if now.saturating_sub(self.last_gc_ns) >= PROCESS_GC_NS {
            self.last_gc_ns = now;
            // Processes and links no session needs any more go, within their caps.
            let tracker = &self.tracker;
            let named = |pid: u32| tracker.names(pid);
            self.procs.collect(named, PROCESS_IDLE_NS, MAX_PROCESSES);
            self.protocols.mcp.links.collect(named, self.links_cap);
        }
    }

    /// Sample the processes that serve MCP from `host`, when the interval says so (monotonic
    /// `now`).
    pub fn sample_processes(&mut self, host: &mut dyn Host, now: u64) {
        self.health.tick(now, Some(host), &mut self.out);
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
                let e = Event::new(self.clock.wall_ns(now), what);
                self.out.push(Signal::Event(e));
            }
        }
        self.kernel_totals = totals.clone();
    }

    /// How many binaries have their OpenSSL probed, by mode: for the metrics and
    /// `agent_stop`.
    pub fn tls_probed(
        &mut self,
        binaries: BTreeMap<&'static str, u64>,
        states: BTreeMap<(&'static str, &'static str), u64>,
    ) {
        self.tls_probed = binaries;
        self.tls_probes = states;
    }

    /// The binaries whose TLS library was recognised, by (library, state), as last told.
    pub fn tls_probe_states(&self) -> &BTreeMap<(&'static str, &'static str), u64> {
        &self.tls_probes
    }

    /// The binaries whose OpenSSL is probed, by mode, as last told.
    pub fn tls_probed_binaries(&self) -> &BTreeMap<&'static str, u64> {
        &self.tls_probed
    }

    /// Entries forgotten to hold memory to the caps, by table.
    pub fn evictions(&self) -> BTreeMap<&'static str, u64> {
        self.tables().iter().map(|t| (t.name, t.evicted)).collect()
    }

    /// Every bounded table of every stage: size, cap, evictions.
    pub fn tables(&self) -> Vec<TableStat> {
        let mut v = self.conns.tables();
        v.extend(self.tracker.tables());
        v.extend(self.agentic.tables());
        v.extend(self.health.tables());
        v.extend(self.security.tables());
        let links = &self.protocols.mcp.links;
        v.push(TableStat::new(
            "processes",
            self.procs.len(),
            MAX_PROCESSES,
            self.procs.evicted,
        ));
        v.push(TableStat::new(
            "links",
            links.len(),
            self.links_cap,
            links.evicted,
        ));
        v
    }

    /// The kernel counters last reported.
    pub fn kernel_totals(&self) -> &BTreeMap<String, u64> {
        &self.kernel_totals
    }

    /// Open tools/call requests by (tool, server), for the in-flight gauge.
    pub fn in_flight(&self) -> BTreeMap<(String, String), u64> {
        self.tracker.in_flight(&self.procs)
    }

    /// Reported sessions still active, by (transport, server).
    pub fn active_sessions(&self) -> BTreeMap<(&'static str, String), u64> {
        self.tracker.active_sessions(&self.procs)
    }

    /// End of input (shutdown or end of a replay) at `now`: give in-flight views `grace` to
    /// settle, then report what is still open.
    pub fn finish(&mut self, now: u64, grace: u64) {
        self.tick(now + grace);
        self.conns.finish();
        let from = self.out.len();
        self.agentic.finish(&mut self.out);
        self.security.observe(&mut self.out[from..]);
        let open = self.tracker.open_exchanges();
        if open > 0 {
            let what = What::InFlightAtStop {
                exchanges: open as u64,
            };
            let e = Event::new(self.clock.wall_ns(now), what);
            self.out.push(Signal::Event(e));
        }
        let stats = self.summary();
        let e = Event::new(self.clock.wall_ns(now), What::AgentStop { stats });
        self.out.push(Signal::Event(e));
    }

    /// Everything counted so far, userspace and kernel, as one JSON object.
    pub fn summary(&self) -> serde_json::Value {
        let s = &self.stats;
        let c = &self.conns.stats;
        let b = &self.protocols.mcp.stats;
        let l = &self.protocols.llm.stats;
        let a = &self.agentic.stats;
        let t = &self.tracker.stats;
        let m = &self.protocols.http.http2_midstream;
        serde_json::json!({
            "records": s.records,
            "bytes": s.bytes,
            "bad_records": s.bad_records,
            "frames": b.frames,
            "messages": b.messages,
            "exchanges": t.exchanges,
            "notifications": t.notifications,
            "late_views": t.late_views,
            "orphan_responses": t.orphan_responses,
            "duplicate_ids": t.duplicate_ids,
            "missing_twins": t.missing_twins,
            "parse_errors": b.parse_errors,
            "streams_rejected": c.rejected,
            "records_after_reject": c.after_reject,
            "unread_at_stop": s.unread_at_stop,
            "kernel_fd_evictions": c.kernel_fd_evictions,
            "gaps": c.gaps,
            "resync_dropped_bytes": c.resync_dropped_bytes + b.resync_dropped_bytes,
            "messages_truncated": b.oversize,
            "streams_unterminated": b.unterminated,
            "http_errors": b.http_errors,
            "http2_midstream": {
                "connections": m.connections,
                "streams_skipped": m.streams_skipped,
                "header_blocks_undecoded": m.header_blocks_undecoded,
            },
            "llm": {
                "calls": l.calls,
                "cut_off": l.cut_off,
                "not_this_api": l.not_this_api,
                "oversize": l.oversize,
            },
            "servers": {
                "samples": self.health.stats.samples,
                "vanished": self.health.stats.vanished,
            },
            "security": {
                "message_findings": self.tracker.findings(),
                "leaks_to_model": self.security.stats.leaks,
                "model_repeats": self.security.stats.repeats,
                "known_executables_write_errors": self.security.stats.write_errors,
            },
            "agentic": {
                "tasks": a.tasks,
                "links": a.links,
                "unrequested_tool_calls": a.unrequested,
            },
            "evictions": self.evictions(),
            "tls": {
                "sockets": c.tls_sockets,
                "undecrypted": c.tls_undecrypted,
                "undecrypted_by_library": c.tls_undecrypted_by_library,
                "probed_binaries": self.tls_probed,
                "probes": self
                    .tls_probes
                    .iter()
                    .map(|((lib, state), n)| format!("{lib}:{state}={n}"))
                    .collect::<Vec<_>>(),
            },
            "kernel": self.kernel_totals,
        })
    }

    /// The latest record time seen (CLOCK_MONOTONIC ns).
    pub fn latest_ns(&self) -> u64 {
        self.conns.latest_ns()
    }

    /// Streams currently tracked.
    pub fn stream_count(&self) -> usize {
        self.conns.stream_count()
    }
}

#[cfg(test)]
mod agentic_tests;
#[cfg(test)]
mod h2ws_tests;
#[cfg(test)]
mod security_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
