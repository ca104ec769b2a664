//! Stage 8, outputs: signals out to people and machines. Each exporter is a [`Sink`].
//!
//! - [`console`]: one human line per exchange, notification and event.
//! - [`jsonl`]: one JSON object per line, the schema documented in the README.
//! - [`metrics`]: every metric defined once, and the recorder that derives them.
//! - [`endpoints`]: `/health` and `/ready` for orchestrators, `/metrics` for Prometheus.
//! - [`prometheus`]: the text exposition of the metrics.
//! - [`otlp`]: OpenTelemetry traces and metrics over OTLP (gRPC or HTTP/protobuf).

pub mod console;
pub mod endpoints;
pub mod jsonl;
pub mod metrics;
pub mod otlp;
pub mod prometheus;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use log::{info, warn};

use crate::enrich::Enricher;
use crate::output::metrics::Registry;
use crate::output::metrics::record as telemetry;
use crate::signal::{Signal, Sink};

/// Several sinks fed the same signals.
#[derive(Default)]
pub struct Fanout {
    sinks: Vec<Box<dyn Sink + Send>>,
}

impl Fanout {
    /// Add a sink.
    pub fn push(&mut self, sink: Box<dyn Sink + Send>) {
        self.sinks.push(sink);
    }
}

impl Sink for Fanout {
    fn emit(&mut self, signal: &Signal) {
        for s in &mut self.sinks {
            s.emit(signal);
        }
    }
    fn flush(&mut self) {
        for s in &mut self.sinks {
            s.flush();
        }
    }
    fn close(&mut self) {
        for s in &mut self.sinks {
            s.close();
        }
    }
    fn failures(&self) -> Vec<(&'static str, u64, u64)> {
        self.sinks.iter().flat_map(|s| s.failures()).collect()
    }
}

/// Create (mode 0600: it holds what processes said) or append to a file of the agent's.
pub fn private_file(path: &std::path::Path, append: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut o = File::options();
    o.create(true).mode(0o600);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(true);
    }
    o.open(path)
}

/// What the outputs are asked for (the command line's output options).
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// JSON lines to this path (`-`: standard output).
    pub jsonl: Option<String>,
    /// No console view.
    pub quiet: bool,
    /// Distinct values kept per metric label.
    pub label_limit: usize,
    /// Series of the `mcp_*` metrics, all together.
    pub max_series: usize,
    /// OTLP endpoint, when not from the environment.
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol, when not from the environment.
    pub otlp_protocol: Option<String>,
    /// Values in spans (`--payloads`).
    pub payloads: bool,
}

/// Every output of one run, live or replay: the console, JSON lines, the metrics registry
/// (read by `/metrics` and OTLP) and the OTLP exporters, all fed the same signals, after the
/// enrichment stage has named their pods.
pub struct Outputs {
    fan: Fanout,
    enrich: Enricher,
    /// The metrics, shared with `/metrics` and the OTLP metric reader.
    pub registry: Arc<Mutex<Registry>>,
}

impl Outputs {
    /// Open what `output` asks for. A file that cannot be opened is an error; an OTLP
    /// exporter that cannot be built is a warning, and capture goes on without it.
    pub fn open(output: &Settings) -> Result<Outputs> {
        let mut fan = Fanout::default();
        let jsonl_on_stdout = output.jsonl.as_deref() == Some("-");
        if let Some(path) = &output.jsonl {
            let w: Box<dyn Write + Send> = if path == "-" {
                Box::new(std::io::stdout())
            } else {
                let f = private_file(path.as_ref(), true)
                    .with_context(|| format!("--jsonl: cannot open {path} for appending"))?;
                Box::new(BufWriter::new(f))
            };
            fan.push(Box::new(jsonl::JsonLines::new(w)));
        }
        if !output.quiet {
            // With JSON lines on stdout the console view moves to stderr.
            let w: Box<dyn Write + Send> = if jsonl_on_stdout {
                Box::new(std::io::stderr())
            } else {
                Box::new(std::io::stdout())
            };
            fan.push(Box::new(console::Console::new(w)));
        }
        let registry = Arc::new(Mutex::new(Registry::new(
            output.label_limit,
            output.max_series,
        )));
        fan.push(Box::new(telemetry::Recorder(registry.clone())));
        let cfg = otlp::Config::resolve(
            output.otlp_endpoint.as_deref(),
            output.otlp_protocol.as_deref(),
            output.payloads,
        )?;
        if let Some(cfg) = cfg {
            match otlp::Otlp::start(&cfg, &registry) {
                Ok(o) => {
                    let to = cfg.endpoint.as_deref();
                    let to = to.unwrap_or("the OTEL_EXPORTER_OTLP_* endpoint");
                    info!("exporting OTLP ({:?}) to {to}", cfg.wire);
                    fan.push(Box::new(o));
                }
                Err(e) => warn!("OTLP export disabled: {e:#}"),
            }
        }
        Ok(Outputs {
            fan,
            enrich: Enricher::default(),
            registry,
        })
    }

    /// Pass every signal through `enrich` before the outputs see it.
    pub fn set_enricher(&mut self, enrich: Enricher) {
        self.enrich = enrich;
    }

    /// Count a failed call to the Kubernetes API server, by reason.
    pub fn count_k8s_error(registry: &Mutex<Registry>, reason: &'static str) {
        let mut r = registry.lock().unwrap_or_else(|p| p.into_inner());
        r.inc(&metrics::defs::K8S_API_ERRORS, &[reason], 1.0);
    }

    /// Hand signals to every output; returns how many there were.
    pub fn emit_all(&mut self, signals: impl Iterator<Item = Signal>) -> usize {
        let mut n = 0;
        for mut s in signals {
            n += 1;
            // Pod and container names, known once the API server's watch has caught up.
            self.enrich.enrich(&mut s);
            self.fan.emit(&s);
        }
        n
    }

    /// What the outputs failed to deliver, by exporter.
    pub fn failures(&self) -> Vec<(&'static str, u64, u64)> {
        self.fan.failures()
    }

    /// Write out what is buffered.
    pub fn flush(&mut self) {
        self.fan.flush();
    }

    /// Write out everything and stop the exporters.
    pub fn close(&mut self) {
        self.fan.close();
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-21T09:53:25.123456Z`.
pub fn rfc3339_micros(unix_ns: u64) -> String {
    rfc3339_micros_in(unix_ns, &mut [0; RFC3339_MICROS_LEN]).to_string()
}

/// Length of a [`rfc3339_micros`] timestamp.
pub const RFC3339_MICROS_LEN: usize = 27;

/// [`rfc3339_micros`] written into `buf`, digit by digit: JSON lines put one on every line,
/// and `format!` cost more than the rest of an event's line.
pub fn rfc3339_micros_in(unix_ns: u64, buf: &mut [u8; RFC3339_MICROS_LEN]) -> &str {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    *buf = *b"0000-00-00T00:00:00.000000Z";
    // Nanoseconds since 1970 in a u64 end in 2554: the year always has four digits.
    digits(&mut buf[0..4], y as u64);
    digits(&mut buf[5..7], u64::from(m));
    digits(&mut buf[8..10], u64::from(d));
    digits(&mut buf[11..13], rem / 3600);
    digits(&mut buf[14..16], (rem % 3600) / 60);
    digits(&mut buf[17..19], rem % 60);
    digits(&mut buf[20..26], micros);
    std::str::from_utf8(buf).expect("ASCII")
}

/// `v` in decimal, right-aligned in `out` and cut to its width.
fn digits(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        // date -u -d @1795255005 → Sat Nov 21 09:56:45 UTC 2026
        assert_eq!(
            rfc3339_micros(1_795_255_005_123_456_789),
            "2026-11-21T09:56:45.123456Z"
        );
        // Leap day.
        assert_eq!(
            rfc3339_micros(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(rfc3339_micros(u64::MAX), "2554-07-21T23:34:33.709551Z");
        // The digits written one by one say what `format!` says.
        for ns in (0..2000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 2) {
            let secs = ns / 1_000_000_000;
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let rem = secs % 86_400;
            let want = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
                rem / 3600,
                (rem % 3600) / 60,
                rem % 60,
                (ns % 1_000_000_000) / 1_000
            );
            assert_eq!(rfc3339_micros(ns), want);
        }
    }
}
