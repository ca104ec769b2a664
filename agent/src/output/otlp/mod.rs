//! OpenTelemetry over OTLP: a span per watched side of every exchange, following the MCP
//! semantic conventions, the agentic layer's task, turn and tool call spans (the `agent` submodule),
//! following the GenAI ones, security findings as events on those spans (`findings`), and
//! every metric of the registry, exported with `opentelemetry-otlp` over gRPC or
//! HTTP/protobuf.
//!
//! Configured as OpenTelemetry SDKs are: `OTEL_EXPORTER_OTLP_ENDPOINT` (and the per-signal
//! `_TRACES_`/`_METRICS_` variants), `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or
//! `http/protobuf`, the default), `OTEL_SERVICE_NAME` (default `mcptap`),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_METRIC_EXPORT_INTERVAL` (ms), and `OTEL_TRACES_EXPORTER` /
//! `OTEL_METRICS_EXPORTER` set to `none` to turn one off; `--otlp-endpoint` and
//! `--otlp-protocol` override them.
//!
//! Export never blocks capture: spans go through a bounded queue to an exporter thread, and
//! what does not fit is dropped and counted; metrics are collected by the SDK's own thread.
//! Failures are counted and logged (the first of each run of failures, and the recovery).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use log::{info, warn};
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use xxhash_rust::xxh3::xxh3_128;

mod agent;
mod findings;

use crate::output::metrics::record as telemetry;
use crate::output::metrics::{Kind, Registry, Value, defs};
use crate::signal::{Endpoint, Exchange, HttpVersion, Signal, Sink, Status as XStatus, Transport};

/// Wire protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

impl Wire {
    /// Parse `grpc` or `http/protobuf`.
    pub fn parse(s: &str) -> Result<Wire> {
        match s {
            "grpc" => Ok(Wire::Grpc),
            "http/protobuf" | "http" => Ok(Wire::HttpProtobuf),
            "http/json" => {
                bail!("OTLP protocol http/json is not supported; use grpc or http/protobuf")
            }
            other => bail!("unknown OTLP protocol {other:?}: use grpc or http/protobuf"),
        }
    }
}

/// What to export where.
#[derive(Clone, Debug)]
pub struct Config {
    /// Endpoint given on the command line (otherwise the OTEL_* variables decide).
    pub endpoint: Option<String>,
    /// Protocol.
    pub wire: Wire,
    /// Export spans.
    pub traces: bool,
    /// Export metrics.
    pub metrics: bool,
    /// Metric export interval.
    pub interval: Duration,
    /// Spans carry argument and result values (`--payloads`).
    pub payloads: bool,
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// The configuration from flags and the standard variables; `None` when OTLP is off
    /// (no endpoint anywhere).
    pub fn resolve(
        endpoint: Option<&str>,
        protocol: Option<&str>,
        payloads: bool,
    ) -> Result<Option<Config>> {
        let any_env = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ]
        .iter()
        .any(|k| env(k).is_some());
        if endpoint.is_none() && !any_env {
            return Ok(None);
        }
        let wire = match protocol
            .map(str::to_string)
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => Wire::parse(&p).context("--otlp-protocol / OTEL_EXPORTER_OTLP_PROTOCOL")?,
            None => Wire::HttpProtobuf,
        };
        let interval = match env("OTEL_METRIC_EXPORT_INTERVAL") {
            Some(ms) => Duration::from_millis(ms.parse().with_context(|| {
                format!("OTEL_METRIC_EXPORT_INTERVAL={ms:?} is not milliseconds")
            })?),
            None => Duration::from_secs(60),
        };
        Ok(Some(Config {
            endpoint: endpoint.map(str::to_string),
            wire,
            traces: env("OTEL_TRACES_EXPORTER").as_deref() != Some("none"),
            metrics: env("OTEL_METRICS_EXPORTER").as_deref() != Some("none"),
            interval,
            payloads,
        }))
    }
}

/// Failures and drops, per exporter, for the agent's own metrics.
#[derive(Default)]
pub struct Stats {
    /// Span batches that failed.
    pub trace_failures: AtomicU64,
    /// Spans dropped because the queue was full.
    pub trace_dropped: AtomicU64,
    /// Metric exports that failed.
    pub metric_failures: AtomicU64,
    trace_down: AtomicBool,
    metric_down: AtomicBool,
}

impl Stats {
    /// (failures, dropped) by exporter name.
    pub fn snapshot(&self) -> [(&'static str, (u64, u64)); 2] {
        [
            (
                "otlp_traces",
                (
                    self.trace_failures.load(Ordering::Relaxed),
                    self.trace_dropped.load(Ordering::Relaxed),
                ),
            ),
            (
                "otlp_metrics",
                (self.metric_failures.load(Ordering::Relaxed), 0),
            ),
        ]
    }
}

/// Spans waiting for the exporter thread at most.
const QUEUE: usize = 4096;
/// Spans per export call.
const BATCH: usize = 512;

fn note_result(
    ok: bool,
    down: &AtomicBool,
    failures: &AtomicU64,
    what: &str,
    err: &dyn std::fmt::Display,
) {
    if ok {
        if down.swap(false, Ordering::Relaxed) {
            info!("OTLP {what} export recovered");
        }
    } else {
        failures.fetch_add(1, Ordering::Relaxed);
        if !down.swap(true, Ordering::Relaxed) {
            warn!(
                "OTLP {what} export failed: {err} (counted in mcptap_export_failures_total; retrying)"
            );
        }
    }
}

/// Runs the SDK's metric exports inside our tokio runtime, whatever thread calls them.
struct InRuntime<E> {
    inner: E,
    handle: tokio::runtime::Handle,
    stats: Arc<Stats>,
}

impl<E: PushMetricExporter> PushMetricExporter for InRuntime<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        let r = self.handle.block_on(self.inner.export(metrics));
        let err = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        note_result(
            r.is_ok(),
            &self.stats.metric_down,
            &self.stats.metric_failures,
            "metrics",
            &err,
        );
        r
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

fn resource() -> Resource {
    let mut b = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        b = b.with_service_name("mcptap");
    }
    b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

fn attrs(keys: &[&'static str], values: &[&str]) -> Vec<KeyValue> {
    keys.iter()
        .zip(values)
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| KeyValue::new(*k, v.to_string()))
        .collect()
}

/// The OTLP exporters.
pub struct Otlp {
    tx: Option<SyncSender<SpanData>>,
    thread: Option<std::thread::JoinHandle<()>>,
    meters: Option<SdkMeterProvider>,
    /// Failures and drops.
    pub stats: Arc<Stats>,
    payloads: bool,
    _runtime_keepalive: Arc<tokio::runtime::Runtime>,
}

impl Otlp {
    /// Start exporting; metrics are read from `registry`.
    pub fn start(cfg: &Config, registry: &Arc<Mutex<Registry>>) -> Result<Otlp> {
        let rt = Arc::new(runtime()?);
        let stats = Arc::new(Stats::default());
        let resource = resource();
        let mut otlp = Otlp {
            tx: None,
            thread: None,
            meters: None,
            stats: stats.clone(),
            payloads: cfg.payloads,
            _runtime_keepalive: rt.clone(),
        };
        if cfg.traces {
            let (tx, thread) = start_spans(cfg, &rt, &resource, &stats)?;
            otlp.tx = Some(tx);
            otlp.thread = Some(thread);
        }
        if cfg.metrics {
            otlp.meters = Some(start_metrics(cfg, &rt, &resource, &stats, registry)?);
        }
        Ok(otlp)
    }

    /// Queue the spans of one exchange; never blocks.
    pub fn spans(&self, x: &Exchange) {
        self.queue(spans_of(x, self.payloads));
    }

    /// Queue spans; never blocks (what does not fit is dropped and counted).
    fn queue(&self, spans: Vec<SpanData>) {
        let Some(tx) = &self.tx else {
            return;
        };
        for span in spans {
            match tx.try_send(span) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.stats.trace_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Flush what is queued and the metrics, then stop.
    pub fn shutdown(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(m) = self.meters.take()
            && let Err(e) = m.shutdown()
        {
            warn!("OTLP metrics: final export failed: {e}");
        }
    }
}

impl Sink for Otlp {
    fn emit(&mut self, signal: &Signal) {
        match signal {
            Signal::Exchange(x) => self.spans(x),
            Signal::LlmCall(c) => self.queue(agent::turn_spans(c, self.payloads)),
            Signal::Event(e) => {
                if let crate::signal::What::TaskEnd(t) = &e.what {
                    self.queue(vec![agent::task_span(t)]);
                }
            }
            Signal::Notification(_) | Signal::Http(_) | Signal::Servers(_) => {}
        }
    }

    fn close(&mut self) {
        self.shutdown();
    }

    fn failures(&self) -> Vec<(&'static str, u64, u64)> {
        self.stats
            .snapshot()
            .into_iter()
            .map(|(name, (failed, dropped))| (name, failed, dropped))
            .collect()
    }
}

/// The runtime the exporters' network clients run on: one worker is plenty.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("mcptap-otlp")
        .enable_all()
        .build()
        .context("starting the OTLP runtime")
}

/// The `--otlp-endpoint` for one signal: as given for gRPC; for HTTP with the signal's path
/// (`v1/traces`, `v1/metrics`) appended, since a signal's endpoint set in code is used as is.
fn signal_endpoint(cfg: &Config, path: &str) -> Option<String> {
    let e = cfg.endpoint.as_ref()?;
    Some(match cfg.wire {
        Wire::Grpc => e.clone(),
        Wire::HttpProtobuf => format!("{}/{path}", e.trim_end_matches('/')),
    })
}

/// `b` aimed at `endpoint` when there is one; otherwise it follows the OTEL_* variables.
fn aimed<B: WithExportConfig>(b: B, endpoint: Option<String>) -> B {
    match endpoint {
        Some(e) => b.with_endpoint(e),
        None => b,
    }
}

/// The span exporter for the configured protocol and endpoint.
fn span_exporter(cfg: &Config, rt: &tokio::runtime::Runtime) -> Result<SpanExporter> {
    // Built inside the runtime its client will run on.
    let _guard = rt.enter();
    let endpoint = signal_endpoint(cfg, "v1/traces");
    match cfg.wire {
        Wire::Grpc => aimed(SpanExporter::builder().with_tonic(), endpoint).build(),
        Wire::HttpProtobuf => aimed(
            SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary),
            endpoint,
        )
        .build(),
    }
    .context("building the OTLP span exporter")
}

/// The metric exporter for the configured protocol and endpoint.
fn metric_exporter(cfg: &Config, rt: &tokio::runtime::Runtime) -> Result<MetricExporter> {
    // Built inside the runtime its client will run on.
    let _guard = rt.enter();
    let endpoint = signal_endpoint(cfg, "v1/metrics");
    match cfg.wire {
        Wire::Grpc => aimed(MetricExporter::builder().with_tonic(), endpoint).build(),
        Wire::HttpProtobuf => aimed(
            MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary),
            endpoint,
        )
        .build(),
    }
    .context("building the OTLP metric exporter")
}

/// The span queue and the thread that drains it into the exporter.
fn start_spans(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    resource: &Resource,
    stats: &Arc<Stats>,
) -> Result<(SyncSender<SpanData>, std::thread::JoinHandle<()>)> {
    let mut exporter = span_exporter(cfg, rt)?;
    exporter.set_resource(resource);
    let (tx, rx) = sync_channel::<SpanData>(QUEUE);
    let handle = rt.handle().clone();
    let stats = stats.clone();
    let thread = std::thread::Builder::new()
        .name("mcptap-spans".into())
        .spawn(move || export_spans(rx, exporter, handle, stats))
        .context("starting the span exporter thread")?;
    Ok((tx, thread))
}

/// The meter provider that exports the registry's metrics every `cfg.interval`.
fn start_metrics(
    cfg: &Config,
    rt: &tokio::runtime::Runtime,
    resource: &Resource,
    stats: &Arc<Stats>,
    registry: &Arc<Mutex<Registry>>,
) -> Result<SdkMeterProvider> {
    let exporter = InRuntime {
        inner: metric_exporter(cfg, rt)?,
        handle: rt.handle().clone(),
        stats: stats.clone(),
    };
    let reader = PeriodicReader::builder(exporter)
        .with_interval(cfg.interval)
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource.clone())
        .build();
    register_instruments(&provider, registry);
    Ok(provider)
}

fn export_spans(
    rx: Receiver<SpanData>,
    exporter: SpanExporter,
    handle: tokio::runtime::Handle,
    stats: Arc<Stats>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(s) => Some(s),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                if !batch.is_empty() {
                    let r = handle.block_on(exporter.export(std::mem::take(&mut batch)));
                    let err = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
                    note_result(
                        r.is_ok(),
                        &stats.trace_down,
                        &stats.trace_failures,
                        "traces",
                        &err,
                    );
                }
                return;
            }
        };
        batch.extend(first);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        let r = handle.block_on(exporter.export(std::mem::take(&mut batch)));
        let err = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        note_result(
            r.is_ok(),
            &stats.trace_down,
            &stats.trace_failures,
            "traces",
            &err,
        );
    }
}

/// One OTel instrument per metric of the registry: observable counters and gauges read the
/// registry when the SDK collects; histograms are recorded as the registry observes.
fn register_instruments(provider: &SdkMeterProvider, registry: &Arc<Mutex<Registry>>) {
    let meter = provider.meter_with_scope(
        InstrumentationScope::builder("mcptap")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    );
    let mut histograms: HashMap<&'static str, Histogram<f64>> = HashMap::new();
    for def in defs::ALL {
        let read = {
            let registry = registry.clone();
            move || -> Vec<(f64, Vec<KeyValue>)> {
                // Copied under the lock, turned into attributes outside it.
                let series = match registry.lock() {
                    Ok(r) => r.series_owned(def),
                    Err(p) => p.into_inner().series_owned(def),
                };
                series
                    .into_iter()
                    .filter_map(|(labels, v)| match v {
                        Value::Number(n) => {
                            let labels: Vec<&str> = labels.iter().map(|l| &**l).collect();
                            Some((n, attrs(def.otel_labels, &labels)))
                        }
                        Value::Histogram { .. } => None,
                    })
                    .collect()
            }
        };
        match def.kind {
            Kind::Counter => {
                meter
                    .f64_observable_counter(def.otel_name)
                    .with_unit(def.otel_unit)
                    .with_description(def.help)
                    .with_callback(move |o| {
                        for (v, a) in read() {
                            o.observe(v, &a);
                        }
                    })
                    .build();
            }
            Kind::Gauge => {
                meter
                    .f64_observable_gauge(def.otel_name)
                    .with_unit(def.otel_unit)
                    .with_description(def.help)
                    .with_callback(move |o| {
                        for (v, a) in read() {
                            o.observe(v, &a);
                        }
                    })
                    .build();
            }
            Kind::Histogram(bounds) => {
                let h = meter
                    .f64_histogram(def.otel_name)
                    .with_unit(def.otel_unit)
                    .with_description(def.help)
                    .with_boundaries(bounds.to_vec())
                    .build();
                histograms.insert(def.name, h);
            }
        }
    }
    let mut r = match registry.lock() {
        Ok(r) => r,
        Err(p) => p.into_inner(),
    };
    r.set_observe_hook(Box::new(move |def, labels, v| {
        if let Some(h) = histograms.get(def.name) {
            h.record(v, &attrs(def.otel_labels, labels));
        }
    }));
}

/// The process on one side of a span: its pid, and its container and pod when it runs in
/// one (OpenTelemetry resource conventions for containers and Kubernetes).
pub(crate) fn process_attributes(e: &Endpoint, out: &mut Vec<KeyValue>) {
    if let Some(pid) = e.pid {
        out.push(KeyValue::new("process.pid", pid as i64));
    }
    let Some(k) = e.k8s.as_deref() else {
        return;
    };
    let known = [
        ("container.id", &k.container_id),
        ("container.runtime.name", &k.container_runtime),
        ("k8s.pod.uid", &k.pod_uid),
        ("k8s.pod.name", &k.pod),
        ("k8s.namespace.name", &k.namespace),
        ("k8s.container.name", &k.container),
        ("k8s.node.name", &k.node),
    ];
    push_known(known, out);
}

/// A string attribute for each key whose value is known; none for the others (OpenTelemetry
/// has no null: an unknown value is an absent attribute).
pub(crate) fn push_known<'a>(
    attributes: impl IntoIterator<Item = (&'static str, &'a Option<String>)>,
    out: &mut Vec<KeyValue>,
) {
    for (key, value) in attributes {
        if let Some(v) = value {
            out.push(KeyValue::new(key, v.clone()));
        }
    }
}

/// W3C traceparent `00-<trace>-<span>-<flags>`.
fn parse_traceparent(tp: &str) -> Option<(TraceId, SpanId)> {
    let mut parts = tp.trim().split('-');
    let (_v, t, s) = (parts.next()?, parts.next()?, parts.next()?);
    let trace = TraceId::from_hex(t)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span = SpanId::from_hex(s).ok().filter(|s| *s != SpanId::INVALID)?;
    Some((trace, span))
}

pub(crate) fn time(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

/// The spans of an exchange: CLIENT for the side that sent the request, SERVER for the side
/// that received it, one per watched side, its security findings as events on them. Ids are
/// derived from the exchange, so a replay produces the same trace.
pub fn spans_of(x: &Exchange, payloads: bool) -> Vec<SpanData> {
    let ids = Ids::of(x);
    let shared = Shared::of(x, ids.trace, payloads);
    let (requester, responder) = sides(x);
    // Each span with the process it ran in, for the findings to find theirs.
    let mut out = Vec::new();
    if let Some((start, ms)) = requester.window {
        let span = shared.span(Placed {
            kind: SpanKind::Client,
            span: ids.client,
            parent: ids.caller,
            start,
            ms,
            side: requester.endpoint,
        });
        out.push((span, requester.endpoint));
    }
    if let Some((start, ms)) = responder.window {
        // Child of our CLIENT span when the requester was watched, else of the caller's.
        let parent = match requester.window {
            Some(_) => Parent {
                id: ids.client,
                remote: false,
            },
            None => ids.caller,
        };
        let span = shared.span(Placed {
            kind: SpanKind::Server,
            span: ids.server,
            parent,
            start,
            ms,
            side: responder.endpoint,
        });
        out.push((span, responder.endpoint));
    }
    findings::place(&x.findings, &mut out);
    out.into_iter().map(|(span, _)| span).collect()
}

/// A span's parent, and whether it lives in another process.
#[derive(Clone, Copy)]
struct Parent {
    /// Its span id ([`SpanId::INVALID`] for a root span).
    id: SpanId,
    /// It came in a `traceparent`.
    remote: bool,
}

/// The ids of an exchange's spans.
struct Ids {
    /// The caller's trace when a `traceparent` came with the request, else our own.
    trace: TraceId,
    /// The CLIENT span.
    client: SpanId,
    /// The SERVER span.
    server: SpanId,
    /// The span the request came from, per its `traceparent` (none without one).
    caller: Parent,
}

impl Ids {
    /// The ids of `x`, hashed from what identifies it.
    fn of(x: &Exchange) -> Ids {
        let ident = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            x.session.as_deref().unwrap_or(""),
            x.id,
            x.ts_ns,
            x.method
        );
        let h = xxh3_128(ident.as_bytes());
        // The agentic layer's execute_tool span (same process) comes before a caller's.
        let local = x.trace.agent_parent.as_deref().and_then(parse_traceparent);
        let remote = local.or_else(|| x.trace.traceparent.as_deref().and_then(parse_traceparent));
        let caller = match remote {
            Some((_, s)) => Parent {
                id: s,
                remote: local.is_none(),
            },
            None => Parent {
                id: SpanId::INVALID,
                remote: false,
            },
        };
        Ids {
            trace: remote
                .map(|(t, _)| t)
                .unwrap_or_else(|| TraceId::from_bytes(h.to_be_bytes())),
            // Odd, hence never the invalid all-zero id.
            client: SpanId::from_bytes(((h as u64) | 1).to_be_bytes()),
            server: SpanId::from_bytes((((h >> 64) as u64) | 1).to_be_bytes()),
            caller,
        }
    }
}

/// One side of an exchange as its span needs it.
struct Watched<'a> {
    /// When it started (ns) and how long it took (ms), if this side was watched.
    window: Option<(u64, f64)>,
    /// Its process.
    endpoint: &'a Endpoint,
}

/// The requester's side (the MCP client, or the server for the requests it sends) and the
/// responder's.
fn sides(x: &Exchange) -> (Watched<'_>, Watched<'_>) {
    let client = Watched {
        window: x.timing.client_start_ns.zip(x.timing.client_duration_ms),
        endpoint: &x.client,
    };
    let server = Watched {
        window: x.timing.server_start_ns.zip(x.timing.server_duration_ms),
        endpoint: &x.server,
    };
    match x.requester {
        crate::signal::Role::Server => (server, client),
        _ => (client, server),
    }
}

/// Where one span sits: its kind, id, parent, time, and the process it ran in.
struct Placed<'a> {
    /// CLIENT or SERVER.
    kind: SpanKind,
    /// Its id.
    span: SpanId,
    /// Its parent.
    parent: Parent,
    /// Start, ns since the epoch.
    start: u64,
    /// Duration, ms.
    ms: f64,
    /// The process.
    side: &'a Endpoint,
}

/// What both spans of an exchange have in common.
struct Shared {
    /// Trace id.
    trace: TraceId,
    /// The caller's `tracestate`, passed on.
    trace_state: TraceState,
    /// `method` or `method target`.
    name: Cow<'static, str>,
    /// Attributes of the exchange (each span adds its process's).
    attributes: Vec<KeyValue>,
    /// Unset, or the error type.
    status: Status,
    /// mcptap and its version.
    scope: InstrumentationScope,
}

impl Shared {
    /// What the spans of `x` share, in trace `trace`.
    fn of(x: &Exchange, trace: TraceId, payloads: bool) -> Shared {
        let target = x
            .tool
            .as_deref()
            .or(x.prompt.as_deref())
            .or(x.resource_uri.as_deref());
        let name: Cow<'static, str> = match target {
            Some(t) => Cow::Owned(format!("{} {t}", x.method)),
            None => Cow::Owned(x.method.clone()),
        };
        let (_, error_type) = telemetry::outcome(x);
        let mut attributes = Vec::new();
        call_attributes(x, &error_type, &mut attributes);
        network_attributes(x, &mut attributes);
        if payloads {
            payload_attributes(x, &mut attributes);
        }
        Shared {
            trace,
            trace_state: trace_state(x),
            name,
            attributes,
            status: match x.status {
                XStatus::Ok => Status::Unset,
                _ => Status::error(error_type),
            },
            scope: InstrumentationScope::builder("mcptap")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }
    }

    /// The span of one side.
    fn span(&self, p: Placed<'_>) -> SpanData {
        let mut attributes = self.attributes.clone();
        process_attributes(p.side, &mut attributes);
        SpanData {
            span_context: SpanContext::new(
                self.trace,
                p.span,
                TraceFlags::SAMPLED,
                false,
                self.trace_state.clone(),
            ),
            parent_span_id: p.parent.id,
            parent_span_is_remote: p.parent.remote,
            span_kind: p.kind,
            name: self.name.clone(),
            start_time: time(p.start),
            end_time: time(p.start + (p.ms * 1e6) as u64),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: self.status.clone(),
            instrumentation_scope: self.scope.clone(),
        }
    }
}

/// The caller's W3C `tracestate`, empty when absent or malformed.
fn trace_state(x: &Exchange) -> TraceState {
    x.trace
        .tracestate
        .as_deref()
        .and_then(|s| {
            TraceState::from_key_value(s.split(',').filter_map(|kv| kv.trim().split_once('='))).ok()
        })
        .unwrap_or_default()
}

/// The MCP and JSON-RPC attributes: method, target, request id, outcome, version, session.
fn call_attributes(x: &Exchange, error_type: &str, out: &mut Vec<KeyValue>) {
    out.push(KeyValue::new("mcp.method.name", x.method.clone()));
    if let Some(t) = &x.tool {
        out.push(KeyValue::new("gen_ai.tool.name", t.clone()));
        out.push(KeyValue::new("gen_ai.operation.name", "execute_tool"));
    }
    if let Some(p) = &x.prompt {
        out.push(KeyValue::new("gen_ai.prompt.name", p.clone()));
    }
    if let Some(u) = &x.resource_uri {
        out.push(KeyValue::new("mcp.resource.uri", u.clone()));
    }
    out.push(KeyValue::new("jsonrpc.request.id", request_id(&x.id)));
    if let Some(c) = x.error_code {
        out.push(KeyValue::new("rpc.response.status_code", c));
    }
    if !error_type.is_empty() {
        out.push(KeyValue::new("error.type", error_type.to_string()));
    }
    if let Some(v) = &x.protocol_version {
        out.push(KeyValue::new("mcp.protocol.version", v.clone()));
    }
    // A session id is the HTTP transports' (a stdio session is named after its processes).
    if let (Some(s), true) = (&x.session, x.transport != Transport::Stdio) {
        out.push(KeyValue::new("mcp.session.id", s.clone()));
    }
}

/// A JSON-RPC id as the attribute shows it: a string id without its quotes.
fn request_id(id: &str) -> String {
    serde_json::from_str::<serde_json::Value>(id)
        .ok()
        .map(|v| match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        })
        .unwrap_or_else(|| id.to_string())
}

/// The transport attributes: pipe, socket or HTTP, TLS, and the addresses of both ends.
fn network_attributes(x: &Exchange, out: &mut Vec<KeyValue>) {
    out.push(KeyValue::new("network.transport", x.transport.network()));
    if x.transport == Transport::WebSocket {
        out.push(KeyValue::new("network.protocol.name", "websocket"));
    } else if x.transport.is_http() || x.http_status.is_some() {
        let version = x.network.http_version.unwrap_or(HttpVersion::Http11);
        out.push(KeyValue::new("network.protocol.name", "http"));
        out.push(KeyValue::new("network.protocol.version", version.as_str()));
    }
    if x.network.tls {
        // HTTPS: inside TLS that mcptap saw established (the semantic conventions' tls.*
        // attributes; the TLS version is not known).
        out.push(KeyValue::new("tls.protocol.name", "tls"));
        out.push(KeyValue::new("tls.established", true));
        // Which library each end's plaintext was read from (no convention names this).
        for (key, lib) in [
            ("mcptap.tls.client_library", x.network.client_tls_library),
            ("mcptap.tls.server_library", x.network.server_tls_library),
        ] {
            if let Some(lib) = lib {
                out.push(KeyValue::new(key, lib.as_str()));
            }
        }
    }
    if let Some(h) = x.http_status {
        out.push(KeyValue::new("http.response.status_code", h as i64));
    }
    if let Some(a) = &x.network.server_address {
        out.push(KeyValue::new("server.address", a.clone()));
    }
    if let Some(p) = x.network.server_port {
        out.push(KeyValue::new("server.port", p as i64));
    }
    if let Some(a) = &x.network.client_address {
        out.push(KeyValue::new("client.address", a.clone()));
    }
    if let Some(p) = x.network.client_port {
        out.push(KeyValue::new("client.port", p as i64));
    }
}

/// Argument and result values (`--payloads` only).
fn payload_attributes(x: &Exchange, out: &mut Vec<KeyValue>) {
    if let Some(a) = &x.payload.arguments {
        out.push(KeyValue::new("gen_ai.tool.call.arguments", a.to_string()));
    }
    if let Some(r) = &x.payload.result {
        out.push(KeyValue::new("gen_ai.tool.call.result", r.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};

    use super::*;
    use crate::capture::cgroup::Identity;
    use crate::output::metrics::security::FINDINGS;
    use crate::signal::security::{Finding, Rule};

    /// A point of a sum as an export carried it: the metric's name, whether the sum is
    /// monotonic, the point's attributes (sorted) and value.
    type SumPoint = (String, bool, Vec<(String, String)>, f64);

    /// A metric exporter that keeps the sums it is handed.
    #[derive(Clone, Default)]
    struct Sums(Arc<Mutex<Vec<SumPoint>>>);

    impl PushMetricExporter for Sums {
        async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
            let mut kept = self.0.lock().unwrap();
            let all = metrics.scope_metrics().flat_map(|s| s.metrics());
            for m in all {
                let AggregatedMetrics::F64(MetricData::Sum(sum)) = m.data() else {
                    continue;
                };
                for p in sum.data_points() {
                    let kv = p.attributes();
                    let mut attrs: Vec<_> = kv
                        .map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
                        .collect();
                    attrs.sort();
                    kept.push((m.name().into(), sum.is_monotonic(), attrs, p.value()));
                }
            }
            Ok(())
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
        fn temporality(&self) -> Temporality {
            Temporality::Cumulative
        }
    }

    /// The findings counter goes out as the monotonic sum `mcp.security.findings`, its
    /// attributes the semantic names, the server's absent when the finding names none.
    #[test]
    fn findings_are_a_monotonic_sum_over_otlp() {
        let registry = Arc::new(Mutex::new(Registry::new(100, 1000)));
        let sums = Sums::default();
        let reader = PeriodicReader::builder(sums.clone())
            .with_interval(Duration::from_secs(3600))
            .build();
        let provider = SdkMeterProvider::builder().with_reader(reader).build();
        register_instruments(&provider, &registry);
        let named = Finding {
            server: Some("fixture".into()),
            ..Finding::new(Rule::PrivateKey, 1, Endpoint::default())
        };
        let unnamed = Finding::new(Rule::NewExecutable, 1, Endpoint::default());
        let x = Exchange {
            findings: vec![named.clone(), named, unnamed],
            ..Default::default()
        };
        telemetry::record(&mut registry.lock().unwrap(), &Signal::Exchange(x));
        provider.force_flush().unwrap();
        let mut got: Vec<SumPoint> = sums.0.lock().unwrap().clone();
        got.retain(|(name, ..)| name == FINDINGS.otel_name);
        got.sort_by(|a, b| a.2.cmp(&b.2));
        let point = |kind: &str, severity: &str, server: Option<&str>, n: f64| {
            let mut attrs = vec![
                ("mcp.security.finding.kind".to_string(), kind.to_string()),
                ("mcp.security.finding.severity".into(), severity.into()),
            ];
            attrs.extend(server.map(|s| ("server".to_string(), s.to_string())));
            attrs.sort();
            (FINDINGS.otel_name.to_string(), true, attrs, n)
        };
        assert_eq!(
            got,
            vec![
                point("access", "low", None, 1.0),
                point("secret", "critical", Some("fixture"), 2.0),
            ]
        );
        provider.shutdown().unwrap();
    }

    fn attr(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
    }

    #[test]
    fn each_span_carries_the_container_and_pod_of_its_own_side() {
        let pod = Identity {
            container_id: Some("ab".repeat(32)),
            container_runtime: Some("containerd".into()),
            pod_uid: Some("950cff9d-7e83-4951-83dd-180d4842c861".into()),
            pod: Some("mcp-weather-0".into()),
            namespace: Some("agents".into()),
            container: Some("server".into()),
            node: Some("node-1".into()),
        };
        let x = Exchange {
            ts_ns: 1,
            transport: crate::signal::Transport::Stdio,
            method: "tools/call".into(),
            tool: Some("echo".into()),
            id: "1".into(),
            client: Endpoint {
                pid: Some(10),
                ..Default::default()
            },
            server: Endpoint {
                pid: Some(20),
                k8s: Some(std::sync::Arc::new(pod)),
                ..Default::default()
            },
            timing: crate::signal::Timing {
                client_start_ns: Some(1_000),
                client_duration_ms: Some(2.0),
                server_start_ns: Some(2_000),
                server_duration_ms: Some(1.0),
                ..Default::default()
            },
            ..Default::default()
        };
        let spans = spans_of(&x, false);
        let client = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Client)
            .unwrap();
        let server = spans
            .iter()
            .find(|s| s.span_kind == SpanKind::Server)
            .unwrap();
        assert_eq!(attr(server, "process.pid").as_deref(), Some("20"));
        assert_eq!(
            attr(server, "k8s.pod.name").as_deref(),
            Some("mcp-weather-0")
        );
        assert_eq!(
            attr(server, "k8s.namespace.name").as_deref(),
            Some("agents")
        );
        assert_eq!(
            attr(server, "k8s.container.name").as_deref(),
            Some("server")
        );
        assert_eq!(attr(server, "k8s.node.name").as_deref(), Some("node-1"));
        assert_eq!(
            attr(server, "k8s.pod.uid").as_deref(),
            Some("950cff9d-7e83-4951-83dd-180d4842c861")
        );
        assert_eq!(attr(server, "container.id"), Some("ab".repeat(32)));
        assert_eq!(
            attr(server, "container.runtime.name").as_deref(),
            Some("containerd")
        );
        // The client runs on the host: its span says nothing about pods.
        assert_eq!(attr(client, "process.pid").as_deref(), Some("10"));
        assert!(
            client
                .attributes
                .iter()
                .all(|kv| !kv.key.as_str().starts_with("k8s.")
                    && !kv.key.as_str().starts_with("container.")),
            "{:?}",
            client.attributes
        );
    }
}
