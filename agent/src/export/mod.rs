//! Stage 6, export: signals out to people and machines. Each exporter is a [`Sink`].
//!
//! - [`console`]: one human line per exchange, notification and event.
//! - [`jsonl`]: one JSON object per line, the schema documented in the README.
//! - [`http`]: `/health` and `/ready` for orchestrators, `/metrics` for Prometheus.
//! - [`prometheus`]: the text exposition of the metrics.
//! - [`otlp`]: OpenTelemetry traces and metrics over OTLP (gRPC or HTTP/protobuf).

pub mod console;
pub mod http;
pub mod jsonl;
pub mod otlp;
pub mod prometheus;

use crate::signals::{Signal, Sink};

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
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-21T09:53:25.123456Z`.
pub fn rfc3339_micros(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
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
    }
}
