//! The agent's two ways of running: live (kernel → pipeline → outputs, until SIGINT or
//! SIGTERM) and replay (a `--record` file → the same pipeline and outputs).
//!
//! The live loop never lets capture starve its other duties: it drains the ring buffer for
//! at most `DRAIN_BUDGET` (50 ms) before it ticks the timers, beats the health heartbeat,
//! reads the kernel's counters and looks at the stop flag. When more arrives than the agent
//! can handle, the ring buffer fills and the kernel drops and counts what does not fit;
//! nothing queues up in the agent. A stop ends the loop within one budget; what the ring
//! buffer still holds is then worked through for at most `STOP_DRAIN` (400 ms), and the rest
//! counted as unread.

use std::fs::File;
use std::io::BufReader;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use log::{info, warn};

use crate::bounded::TableStat;
use crate::capture::host::{FixedHost, Host, ProcHost};
use crate::capture::kernel::{Preflight, ProbeSettings, Probes, Scope};
use crate::capture::recording::{self as record, ClockAnchor, Frame, RecordingHost};
use crate::cli::{Listen, LiveArgs, OutputArgs};
use crate::output::metrics::Registry;
use crate::output::metrics::record as telemetry;
use crate::output::{Outputs, endpoints as http};
use crate::pipeline::{Pipeline, PipelineConfig};

/// Records, and bytes, handed to the pipeline per ring buffer read; the loop's clock is
/// looked at and the signals handed on between two. A full 32 KiB record of small messages
/// holds hundreds of them, so bytes are what bound a batch's work.
const DRAIN_BATCH: usize = 1024;
const DRAIN_BYTES: usize = 256 << 10;
/// Longest the loop drains before it turns to its other duties.
const DRAIN_BUDGET: Duration = Duration::from_millis(50);
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(100);
/// How long the agent sleeps between drains when the kernel does not wake it (it does once a
/// quarter of the ring buffer is used): records reach the outputs within this much.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// How often kernel counters are read and the tables measured.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// After a stop, longest the backlog in the ring buffer is worked through...
const STOP_DRAIN: Duration = Duration::from_millis(400);
/// ...and then longest what is left is read and counted, unprocessed.
const STOP_DISCARD: Duration = Duration::from_millis(100);

/// The pipeline's settings from the command line; the known-executables file must be
/// writable.
fn pipeline_config(output: &OutputArgs, clock: ClockAnchor) -> Result<PipelineConfig> {
    let mut cfg = PipelineConfig {
        max_message_bytes: output.max_message_bytes.min(usize::MAX as u64) as usize,
        max_streams: output.max_streams as usize,
        max_buffered_bytes: output.max_buffered_bytes.min(usize::MAX as u64) as usize,
        raw_session_ids: output.raw_session_ids,
        ..Default::default()
    };
    cfg.tracker.full_resource_uris = output.full_resource_uris;
    cfg.tracker.max_sessions = output.max_sessions as usize;
    cfg.tracker.max_pending = output.max_pending as usize;
    cfg.tracker.response_timeout_ns = (output.response_timeout * 1e9) as u64;
    cfg.tracker.payloads = output.payloads;
    cfg.agentic.task_idle_ns = (output.task_idle * 1e9) as u64;
    cfg.health.interval_ns = (output.process_interval * 1e9) as u64;
    cfg.health.forget_ns = (output.server_forget * 1e9) as u64;
    for name in &output.rules_off {
        // Checked when the command line was parsed.
        let _ = cfg.security.rules.turn_off(name);
    }
    if let Some(path) = &output.known_executables {
        crate::security::Security::check_file(path).map_err(anyhow::Error::msg)?;
    }
    cfg.security.known_executables = output.known_executables.clone();
    cfg.clock = clock;
    Ok(cfg)
}

fn lock(registry: &Mutex<Registry>) -> std::sync::MutexGuard<'_, Registry> {
    registry.lock().unwrap_or_else(|p| p.into_inner())
}

/// Refresh the metrics that are states rather than events. `full` also measures every table
/// (a walk of the fd table) and takes the kernel's counters: on the counters' schedule, not
/// after every batch.
fn agent_metrics(outputs: &Outputs, p: &Pipeline, live: Option<(&[TableStat], u64)>, full: bool) {
    let (extra, lag_ns) = live.unwrap_or((&[], 0));
    let mut tables = Vec::new();
    if full {
        tables = p.tables();
        tables.extend_from_slice(extra);
    }
    let totals = telemetry::AgentTotals {
        records: p.stats.records,
        bytes: p.stats.bytes,
        truncated: p.protocols.mcp.stats.oversize,
        parse_errors: Some(&p.protocols.mcp.stats.parse_errors),
        rejected: Some(&p.conns.stats.rejected),
        gaps: Some(&p.conns.stats.gaps),
        http2_midstream: Some(p.protocols.http.http2_midstream),
        tls_undecrypted: Some(&p.conns.stats.tls_undecrypted_by_library),
        tls_probed: Some(p.tls_probed_binaries()),
        tls_probes: Some(p.tls_probe_states()),
        kernel: full.then(|| p.kernel_totals()),
        in_flight: p.in_flight(),
        sessions: p.active_sessions(),
        tracked_sessions: p.tracker.session_count() as u64,
        tracked_streams: full.then(|| p.stream_count() as u64),
        export: outputs
            .failures()
            .into_iter()
            .map(|(name, failed, dropped)| (name, (failed, dropped)))
            .collect(),
        tables,
        lag_seconds: live.is_some().then(|| lag_ns as f64 / 1e9),
        unrequested_tool_calls: p.agentic.stats.unrequested,
    };
    let mut r = lock(&outputs.registry);
    if full {
        let tables = r.tables();
        telemetry::agent(
            &mut r,
            &telemetry::AgentTotals {
                tables,
                ..Default::default()
            },
        );
    }
    telemetry::agent(&mut r, &totals);
}

fn monotonic_ns() -> u64 {
    ClockAnchor::now().monotonic_ns
}

fn probe_settings(args: &LiveArgs) -> ProbeSettings {
    ProbeSettings {
        scope: Scope {
            comms: args.comms.clone(),
            pids: args.pids.clone(),
        },
        ring_bytes: args.ring_buffer_size,
        tls: !args.no_tls,
    }
}

fn bind(listen: Listen) -> Result<Option<TcpListener>> {
    match listen {
        Listen::Off => Ok(None),
        Listen::Addr(addr) => Ok(Some(TcpListener::bind(addr).with_context(|| {
            format!(
                "--listen {addr}: cannot bind (is another mcptap or service on that port? use \
                 --listen ADDR or --listen off)"
            )
        })?)),
    }
}

fn open_recorder(path: Option<&std::path::Path>) -> Result<Option<record::Writer<File>>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let f = crate::output::private_file(path, false)
        .with_context(|| format!("--record: cannot create {}", path.display()))?;
    Ok(Some(
        record::Writer::new(f).context("--record: writing the header")?,
    ))
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    Ok(stop)
}

fn log_start(settings: &ProbeSettings, report: &crate::capture::kernel::StartupReport) {
    match &report.lockdown {
        Some(mode) => info!("kernel lockdown mode: {mode}"),
        None => info!("kernel lockdown mode: unknown (securityfs not mounted)"),
    }
    let scope = &settings.scope;
    let watching = if scope.is_all() {
        "every process".to_string()
    } else {
        format!(
            "comm {:?} pid {:?} (and their children until exec)",
            scope.comms, scope.pids
        )
    };
    info!(
        "attached {} programs; watching {watching}",
        report.attached.len()
    );
}

/// Capture live until SIGINT or SIGTERM.
pub fn live(args: &LiveArgs, output: &OutputArgs) -> Result<()> {
    let settings = probe_settings(args);
    // Everything that can fail on bad input or missing privileges fails before anything
    // changes: no port bound, no file created or truncated, no program loaded.
    let pre = Preflight::check(&settings)?;
    let listener = bind(args.listen.clone())?;
    let mut outputs = Outputs::open(&output.settings())?;
    let mut recorder = open_recorder(args.record.as_deref())?;
    let stop = stop_flag()?;
    let health = Arc::new(http::Health::new(outputs.registry.clone()));
    health.beat();
    if let Some(l) = listener {
        let addr = l.local_addr()?;
        http::spawn(l, health.clone()).context("starting the HTTP endpoints")?;
        info!("serving /health and /ready on http://{addr}");
    }
    let (probes, report) = Probes::load(&settings, pre)?;
    let registry = outputs.registry.clone();
    let pods = crate::enrich::k8s::start(args.k8s, move |reason| {
        Outputs::count_k8s_error(&registry, reason)
    });
    outputs.set_enricher(crate::enrich::Enricher::new(pods));
    log_start(&settings, &report);
    health.ready.store(true, Ordering::Relaxed);

    let clock = ClockAnchor::now();
    if let Some(r) = recorder.as_mut() {
        r.clock(&clock)?;
    }
    let mut host = ProcHost::default();
    host.tls_libraries = probes.tls_libraries();
    let mut live = Live {
        probes,
        pipeline: Pipeline::new(pipeline_config(output, clock)?),
        host,
        recorder,
        outputs,
        health,
        last_tick: Instant::now(),
        last_counters: Instant::now(),
        emitted: false,
        lag_ns: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        live.probes.wait(DRAIN_EVERY)?;
        live.drain(DRAIN_BUDGET, Some(&stop));
        live.duties(false);
    }
    live.stop()
}

/// The live loop's state.
struct Live {
    probes: Probes,
    pipeline: Pipeline,
    host: ProcHost,
    recorder: Option<record::Writer<File>>,
    outputs: Outputs,
    health: Arc<http::Health>,
    last_tick: Instant,
    last_counters: Instant,
    /// Signals went out since the gauges were last refreshed.
    emitted: bool,
    /// How far behind the clock the last record worked through was, while more waited.
    lag_ns: u64,
}

impl Live {
    /// Work through the ring buffer until it is empty, `budget` is spent, or a stop is asked.
    fn drain(&mut self, budget: Duration, stop: Option<&AtomicBool>) {
        let start = Instant::now();
        loop {
            let more = self.read_batch();
            for r in self.pipeline.take_rejects() {
                self.probes.reject(r.tgid, r.fd, r.inode);
            }
            for note in self.pipeline.take_process_notes() {
                self.probes.process_note(note);
            }
            self.emitted |= self.outputs.emit_all(self.pipeline.drain_signals()) > 0;
            let stopping = stop.is_some_and(|s| s.load(Ordering::Relaxed));
            self.lag_ns = if more {
                monotonic_ns().saturating_sub(self.pipeline.latest_ns())
            } else {
                0
            };
            if !more || start.elapsed() >= budget || stopping {
                return;
            }
        }
    }

    /// Hand up to [`DRAIN_BATCH`] records or [`DRAIN_BYTES`] to the pipeline (and to
    /// `--record`); whether more may be waiting.
    fn read_batch(&mut self) -> bool {
        let Live {
            probes,
            pipeline,
            host,
            recorder,
            ..
        } = self;
        let Some(rec) = recorder.as_mut() else {
            return probes
                .drain(DRAIN_BATCH, DRAIN_BYTES, |raw| pipeline.ingest(host, raw))
                .1;
        };
        let mut failed = None;
        let mut h = RecordingHost {
            inner: host,
            out: rec,
        };
        let (_, more) = probes.drain(DRAIN_BATCH, DRAIN_BYTES, |raw| {
            if let Err(e) = h.out.record(raw) {
                failed.get_or_insert(e);
            }
            pipeline.ingest(&mut h, raw);
        });
        if let Some(e) = failed {
            warn!("--record: write failed: {e}");
        }
        more
    }

    /// Everything but draining: timers, the heartbeat, the kernel's counters, the gauges,
    /// flushing. `force` reads the counters whatever the schedule.
    fn duties(&mut self, force: bool) {
        self.health.beat();
        if self.last_tick.elapsed() >= TICK {
            self.last_tick = Instant::now();
            let now = monotonic_ns();
            self.pipeline.tick(now);
            self.pipeline.sample_processes(&mut self.host, now);
        }
        let full = force || self.last_counters.elapsed() >= COUNTERS_EVERY;
        if full {
            self.last_counters = Instant::now();
            self.probes.reap();
            let totals = self.probes.counters();
            if let Some(r) = self.recorder.as_mut() {
                let _ = r.counters(&totals);
            }
            let owned = totals.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            self.pipeline.kernel_counters(&owned, monotonic_ns());
            self.pipeline.tls_probed(
                self.probes.tls_probed_binaries(),
                self.probes.tls_probe_states(),
            );
        }
        self.emitted |= self.outputs.emit_all(self.pipeline.drain_signals()) > 0;
        if full || self.emitted {
            // Gauges (active sessions, calls in flight) move with the events that change
            // them, so a scrape never sees a session ended but still active.
            let live = ([self.kernel_fds()], self.lag_ns);
            agent_metrics(&self.outputs, &self.pipeline, Some((&live.0, live.1)), full);
            self.emitted = false;
        }
        self.outputs.flush();
    }

    /// The kernel's fd map as a table: its size from the last sweep, its evictions as the
    /// pipeline noticed them.
    fn kernel_fds(&self) -> TableStat {
        let (len, cap) = self.probes.fd_map_size();
        TableStat {
            name: "kernel_fds",
            len,
            cap,
            evicted: self.pipeline.conns.stats.kernel_fd_evictions,
        }
    }

    /// Work through what the ring buffer still holds (within [`STOP_DRAIN`]), count the rest,
    /// flush every output and detach the programs.
    fn stop(mut self) -> Result<()> {
        info!("stopping: flushing outputs and detaching probes");
        let began = Instant::now();
        self.probes.begin_stop();
        self.drain(STOP_DRAIN, None);
        let start = Instant::now();
        let mut unread = 0;
        while start.elapsed() < STOP_DISCARD {
            let (n, more) = self.probes.drain(DRAIN_BATCH, usize::MAX, |_| {});
            unread += n as u64;
            if !more {
                break;
            }
        }
        if unread > 0 {
            warn!("stopping with {unread} records in the ring buffer not worked through");
        }
        self.pipeline.stats.unread_at_stop = unread;
        log::debug!("stop: ring buffer drained in {:?}", began.elapsed());
        self.duties(true);
        self.pipeline.finish(monotonic_ns(), 2_000_000_000);
        self.outputs.emit_all(self.pipeline.drain_signals());
        let fds = [self.kernel_fds()];
        agent_metrics(&self.outputs, &self.pipeline, Some((&fds, 0)), true);
        self.outputs.close();
        if let Some(mut r) = self.recorder {
            r.flush().context("--record: final flush")?;
        }
        let s = &self.pipeline.stats;
        info!(
            "captured {} records ({} bytes), {} messages, {} exchanges; kernel counters {:?}",
            s.records,
            s.bytes,
            self.pipeline.protocols.mcp.stats.messages,
            self.pipeline.tracker.stats.exchanges,
            self.probes.counters()
        );
        // The process ends now: what the pipeline holds (maybe millions of entries) is left
        // to the kernel to reclaim rather than freed piece by piece, which takes seconds.
        std::mem::forget(self.pipeline);
        log::debug!("stop: outputs closed at {:?}", began.elapsed());
        drop(self.probes);
        info!("stopped in {:?}", began.elapsed());
        Ok(())
    }
}

fn open_replay(path: &std::path::Path) -> Result<record::Reader<BufReader<File>>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    record::Reader::new(BufReader::with_capacity(1 << 16, f))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The host's answers and the clock saved in a record file, read in a first pass: the live
/// pipeline asked its questions after the record that made it ask, so the answers follow it.
fn recorded_host(path: &std::path::Path) -> Result<(FixedHost, ClockAnchor)> {
    let mut host = FixedHost::default();
    let mut clock = ClockAnchor::default();
    let mut reader = open_replay(path)?;
    while let Ok(Some(frame)) = reader.next_frame() {
        match frame {
            Frame::Clock(c) => clock = c,
            Frame::Process(info) => host.recorded(info),
            Frame::Holders(h) => {
                host.holders.entry((h.kind, h.inode)).or_insert(h.holders);
            }
            Frame::Record(raw) => reader.recycle(raw),
            Frame::Counters(_) => {}
        }
    }
    Ok((host, clock))
}

/// Replay a `--record` file through the pipeline.
pub fn replay(path: &std::path::Path, output: &OutputArgs) -> Result<()> {
    let (mut host, clock) = recorded_host(path)?;
    let mut outputs = Outputs::open(&output.settings())?;
    let mut p = Pipeline::new(pipeline_config(output, clock)?);
    let mut reader = open_replay(path)?;
    let mut last_tick = 0u64;
    let mut latest = 0u64;
    let mut failure = None;
    loop {
        let frame = match reader.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                // Replay what was read; a file cut short by a crash is still useful.
                warn!("{}: {e}; replaying what came before", path.display());
                failure = Some(e);
                break;
            }
        };
        match frame {
            Frame::Counters(c) => p.kernel_counters(&c, latest),
            Frame::Record(raw) => {
                if let Ok(r) = crate::capture::Record::parse(&raw) {
                    latest = latest.max(r.hdr.ts_exit_ns);
                }
                ingest_replayed(&mut p, &mut host, &raw);
                reader.recycle(raw);
                if latest.saturating_sub(last_tick) >= TICK.as_nanos() as u64 {
                    last_tick = latest;
                    p.tick(latest);
                }
            }
            Frame::Clock(_) | Frame::Process(_) | Frame::Holders(_) => {}
        }
        outputs.emit_all(p.drain_signals());
    }
    p.finish(latest, 2_000_000_000);
    outputs.emit_all(p.drain_signals());
    agent_metrics(&outputs, &p, None, true);
    outputs.close();
    if let Some(e) = failure {
        bail!("{}: {e}", path.display());
    }
    Ok(())
}

fn ingest_replayed(p: &mut Pipeline, host: &mut dyn Host, raw: &[u8]) {
    p.ingest(host, raw);
    // Replay cannot tell the kernel anything.
    p.take_rejects();
    p.take_process_notes();
}

/// Hold the benchmark floor (empty programs on mcptap's hooks) until SIGINT or SIGTERM.
pub fn floor() -> Result<()> {
    let stop = stop_flag()?;
    let floor = crate::capture::kernel::Floor::attach()?;
    info!("floor programs attached");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(floor);
    Ok(())
}
