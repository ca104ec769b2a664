//! The agent's two ways of running: live (kernel → pipeline → exporters, until SIGINT or
//! SIGTERM) and replay (a `--record` file → the same pipeline).

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use log::{info, warn};

use crate::capture::kernel::{ProbeSettings, Probes, Scope};
use crate::capture::procinfo::{FixedHost, Host, ProcHost};
use crate::capture::record::{self, ClockAnchor, Frame, RecordingHost};
use crate::cli::{Listen, LiveArgs, OutputArgs};
use crate::export::{Fanout, console::Console, http, jsonl::JsonLines, otlp};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::signals::metrics::Registry;
use crate::signals::{Sink, telemetry};

/// Records handed to the pipeline per ring buffer drain before timers get a turn.
const DRAIN_BATCH: usize = 4096;
/// How often timeouts are checked.
const TICK: Duration = Duration::from_millis(100);
/// How long the agent sleeps between drains when the kernel does not wake it (it does once a
/// quarter of the ring buffer is used): records reach the outputs within this much.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// How often kernel counters are read.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);

fn sinks(output: &OutputArgs) -> Result<Fanout> {
    let mut fan = Fanout::default();
    let jsonl_on_stdout = output.jsonl.as_deref() == Some("-");
    if let Some(path) = &output.jsonl {
        let w: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            let f = File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("--jsonl: cannot open {path} for appending"))?;
            Box::new(BufWriter::new(f))
        };
        fan.push(Box::new(JsonLines::new(w)));
    }
    if !output.quiet {
        // With JSON lines on stdout the console view moves to stderr.
        let w: Box<dyn Write + Send> = if jsonl_on_stdout {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        fan.push(Box::new(Console::new(w)));
    }
    Ok(fan)
}

fn pipeline_config(output: &OutputArgs, clock: ClockAnchor) -> PipelineConfig {
    let mut cfg = PipelineConfig {
        max_message_bytes: output.max_message_bytes.min(usize::MAX as u64) as usize,
        max_streams: output.max_streams as usize,
        ..Default::default()
    };
    cfg.tracker.max_sessions = output.max_sessions as usize;
    cfg.tracker.max_pending = output.max_pending as usize;
    cfg.tracker.response_timeout_ns = (output.response_timeout * 1e9) as u64;
    cfg.tracker.payloads = output.payloads;
    cfg.tracker.clock = clock;
    cfg
}

/// The metrics registry and, when configured, the OTLP exporters. An exporter that cannot be
/// built is a warning: capture goes on without it.
fn telemetry_outputs(
    output: &OutputArgs,
    fan: &mut Fanout,
) -> Result<(Arc<Mutex<Registry>>, Option<otlp::Otlp>)> {
    let registry = Arc::new(Mutex::new(Registry::new(output.label_limit)));
    fan.push(Box::new(telemetry::Recorder(registry.clone())));
    let cfg = otlp::Config::resolve(
        output.otlp_endpoint.as_deref(),
        output.otlp_protocol.as_deref(),
        output.payloads,
    )?;
    let exporter = match cfg {
        None => None,
        Some(cfg) => match otlp::Otlp::start(&cfg, &registry) {
            Ok(o) => {
                info!(
                    "exporting OTLP ({:?}) to {}",
                    cfg.wire,
                    cfg.endpoint
                        .as_deref()
                        .unwrap_or("the OTEL_EXPORTER_OTLP_* endpoint")
                );
                Some(o)
            }
            Err(e) => {
                warn!("OTLP export disabled: {e:#}");
                None
            }
        },
    };
    Ok((registry, exporter))
}

/// Refresh the metrics that are states rather than events.
fn agent_metrics(registry: &Mutex<Registry>, p: &Pipeline, exporter: Option<&otlp::Otlp>) {
    let totals = telemetry::AgentTotals {
        records: p.stats.records,
        bytes: p.stats.bytes,
        truncated: p.stats.oversize,
        parse_errors: Some(&p.stats.parse_errors),
        rejected: Some(&p.stats.rejected),
        gaps: Some(&p.stats.gaps),
        tls_undecrypted: p.stats.tls_undecrypted,
        kernel: Some(p.kernel_totals()),
        in_flight: p.tracker.in_flight(),
        sessions: p.tracker.active_sessions(),
        tracked_sessions: p.tracker.session_count() as u64,
        tracked_streams: p.stream_count() as u64,
        evictions: p.evictions(),
        export: exporter
            .map(|o| o.stats.snapshot().into_iter().collect())
            .unwrap_or_default(),
    };
    let mut r = match registry.lock() {
        Ok(r) => r,
        Err(p) => p.into_inner(),
    };
    telemetry::agent(&mut r, &totals);
}

/// Hand every pending signal to the outputs; returns how many there were.
fn emit_all(p: &mut Pipeline, fan: &mut Fanout, exporter: Option<&otlp::Otlp>) -> usize {
    let mut n = 0;
    for mut s in p.drain_signals() {
        n += 1;
        // Pod and container names, known once the API server's watch has caught up.
        crate::k8s::enrich(&mut s);
        fan.emit(&s);
        if let (Some(o), crate::signals::Signal::Exchange(x)) = (exporter, &s) {
            o.spans(x);
        }
    }
    n
}

fn monotonic_ns() -> u64 {
    ClockAnchor::now().monotonic_ns
}

/// Capture live until SIGINT or SIGTERM.
pub fn live(args: &LiveArgs, output: &OutputArgs) -> Result<()> {
    // Everything that can fail on bad input fails before the kernel is touched.
    let listener = match args.listen {
        Listen::Off => None,
        Listen::Addr(addr) => Some(TcpListener::bind(addr).with_context(|| {
            format!("--listen {addr}: cannot bind (is another mcptap or service on that port? use --listen ADDR or --listen off)")
        })?),
    };
    let mut fan = sinks(output)?;
    let (registry, exporter) = telemetry_outputs(output, &mut fan)?;
    crate::k8s::start(args.k8s, registry.clone());
    let mut recorder = match &args.record {
        Some(path) => {
            let f = File::create(path)
                .with_context(|| format!("--record: cannot create {}", path.display()))?;
            Some(record::Writer::new(f).context("--record: writing the header")?)
        }
        None => None,
    };

    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let health = Arc::new(http::Health::new(registry.clone()));
    health.beat();
    if let Some(l) = listener {
        let addr = l.local_addr()?;
        http::spawn(l, health.clone()).context("starting the HTTP endpoints")?;
        info!("serving /health and /ready on http://{addr}");
    }

    let settings = ProbeSettings {
        scope: Scope {
            comms: args.comms.clone(),
            pids: args.pids.clone(),
        },
        ring_bytes: args.ring_buffer_size,
        tls: !args.no_tls,
    };
    let (mut probes, report) = Probes::load(&settings)?;
    match &report.lockdown {
        Some(mode) => info!("kernel lockdown mode: {mode}"),
        None => info!("kernel lockdown mode: unknown (securityfs not mounted)"),
    }
    info!(
        "attached {} programs; watching {}",
        report.attached.len(),
        if settings.scope.is_all() {
            "every process".to_string()
        } else {
            format!(
                "comm {:?} pid {:?} (and their children until exec)",
                settings.scope.comms, settings.scope.pids
            )
        }
    );
    health.ready.store(true, Ordering::Relaxed);

    let clock = ClockAnchor::now();
    if let Some(r) = recorder.as_mut() {
        r.clock(&clock)?;
    }
    let mut pipeline = Pipeline::new(pipeline_config(output, clock));
    let mut host = ProcHost::default();
    let mut last_tick = Instant::now();
    let mut last_counters = Instant::now();

    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping {
            probes.wait(DRAIN_EVERY)?;
        }
        loop {
            let n = match recorder.as_mut() {
                Some(rec) => {
                    let mut h = RecordingHost {
                        inner: &mut host,
                        out: rec,
                    };
                    let mut failed = None;
                    let n = probes.drain(DRAIN_BATCH, |raw| {
                        if let Err(e) = h.out.record(raw) {
                            failed.get_or_insert(e);
                        }
                        pipeline.ingest(&mut h, raw);
                    });
                    if let Some(e) = failed {
                        warn!("--record: write failed: {e}");
                    }
                    n
                }
                None => probes.drain(DRAIN_BATCH, |raw| pipeline.ingest(&mut host, raw)),
            };
            for r in pipeline.take_rejects() {
                probes.reject(r.tgid, r.fd, r.inode);
            }
            for note in pipeline.take_process_notes() {
                probes.process_note(note);
            }
            if emit_all(&mut pipeline, &mut fan, exporter.as_ref()) > 0 {
                // Gauges (active sessions, calls in flight) move with the events that change
                // them, so a scrape never sees a session ended but still active.
                agent_metrics(&registry, &pipeline, exporter.as_ref());
            }
            if n < DRAIN_BATCH {
                break;
            }
        }
        if last_tick.elapsed() >= TICK {
            last_tick = Instant::now();
            pipeline.tick(monotonic_ns());
            health.beat();
        }
        if last_counters.elapsed() >= COUNTERS_EVERY || stopping {
            last_counters = Instant::now();
            probes.reap();
            let totals = probes.counters();
            if let Some(r) = recorder.as_mut() {
                let _ = r.counters(&totals);
            }
            let owned = totals.iter().map(|(k, v)| (k.to_string(), *v)).collect();
            pipeline.kernel_counters(&owned, monotonic_ns());
            agent_metrics(&registry, &pipeline, exporter.as_ref());
        }
        if emit_all(&mut pipeline, &mut fan, exporter.as_ref()) > 0 {
            agent_metrics(&registry, &pipeline, exporter.as_ref());
        }
        fan.flush();
        if stopping {
            break;
        }
    }

    info!("stopping: flushing outputs and detaching probes");
    pipeline.finish(monotonic_ns(), 2_000_000_000);
    emit_all(&mut pipeline, &mut fan, exporter.as_ref());
    agent_metrics(&registry, &pipeline, exporter.as_ref());
    fan.flush();
    if let Some(o) = exporter {
        o.shutdown();
    }
    if let Some(mut r) = recorder {
        r.flush().context("--record: final flush")?;
    }
    let s = &pipeline.stats;
    info!(
        "captured {} records ({} bytes), {} messages, {} exchanges; kernel counters {:?}",
        s.records,
        s.bytes,
        s.messages,
        pipeline.tracker.stats.exchanges,
        probes.counters()
    );
    drop(probes);
    Ok(())
}

fn open_record(path: &std::path::Path) -> Result<record::Reader<BufReader<File>>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    record::Reader::new(BufReader::with_capacity(1 << 16, f))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Replay a `--record` file through the pipeline.
///
/// Two passes: the host's answers are written when the live pipeline asked for them, which is
/// after the record that made it ask, so they are collected first.
pub fn replay(path: &std::path::Path, output: &OutputArgs) -> Result<()> {
    let mut host = FixedHost::default();
    let mut clock = ClockAnchor::default();
    let mut reader = open_record(path)?;
    while let Ok(Some(frame)) = reader.next_frame() {
        match frame {
            Frame::Clock(c) => clock = c,
            Frame::Process(info) => host.recorded(info),
            Frame::Holders(h) => {
                host.holders.entry((h.kind, h.inode)).or_insert(h.holders);
            }
            Frame::Record(_) | Frame::Counters(_) => {}
        }
    }

    let mut fan = sinks(output)?;
    let (registry, exporter) = telemetry_outputs(output, &mut fan)?;
    let mut p = Pipeline::new(pipeline_config(output, clock));
    let mut reader = open_record(path)?;
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
                if latest.saturating_sub(last_tick) >= TICK.as_nanos() as u64 {
                    last_tick = latest;
                    p.tick(latest);
                }
            }
            Frame::Clock(_) | Frame::Process(_) | Frame::Holders(_) => {}
        }
        emit_all(&mut p, &mut fan, exporter.as_ref());
    }
    p.finish(latest, 2_000_000_000);
    emit_all(&mut p, &mut fan, exporter.as_ref());
    agent_metrics(&registry, &p, exporter.as_ref());
    fan.flush();
    if let Some(o) = exporter {
        o.shutdown();
    }
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
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let floor = crate::capture::kernel::Floor::attach()?;
    info!("floor programs attached");
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(floor);
    Ok(())
}
