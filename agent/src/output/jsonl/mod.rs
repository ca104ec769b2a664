//! JSON lines: one object per signal. The schema is documented in the README; every record
//! has `kind` (`exchange`, `notification`, `llm_call`, `event`, `http_request` or
//! `server_process`) and `ts` (RFC 3339 UTC, microseconds). A round of the server health
//! stage is one `server_process` line per process it sampled (none when it sampled none).

use std::io::Write;

mod exchange;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{RFC3339_MICROS_LEN, rfc3339_micros_in};
use crate::signal::{Signal, Sink};

#[derive(Serialize)]
struct Line<'a, T: Serialize> {
    kind: &'static str,
    ts: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Box<RawValue>>,
    #[serde(flatten)]
    body: &'a T,
}

/// Encode one signal as a JSON line (without the newline).
pub fn encode(signal: &Signal) -> String {
    let mut out = Vec::new();
    encode_into(signal, &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Append one signal's JSON line (without the newline) to `out`: the writer reuses one
/// buffer for every line.
pub fn encode_into(signal: &Signal, out: &mut Vec<u8>) {
    let start = out.len();
    let mut ts = [0; RFC3339_MICROS_LEN];
    let r = match signal {
        Signal::Exchange(x) => {
            exchange::write(x, rfc3339_micros_in(x.ts_ns, &mut ts), out);
            Ok(())
        }
        Signal::Notification(n) => serde_json::to_writer(
            &mut *out,
            &Line {
                kind: "notification",
                ts: rfc3339_micros_in(n.ts_ns, &mut ts),
                id: None,
                body: n,
            },
        ),
        Signal::LlmCall(c) => serde_json::to_writer(
            &mut *out,
            &Line {
                kind: "llm_call",
                ts: rfc3339_micros_in(c.ts_ns, &mut ts),
                id: None,
                body: &**c,
            },
        ),
        Signal::Event(e) => serde_json::to_writer(
            &mut *out,
            &Line {
                kind: "event",
                ts: rfc3339_micros_in(e.ts_ns, &mut ts),
                id: None,
                body: e,
            },
        ),
        Signal::Http(h) => serde_json::to_writer(
            &mut *out,
            &Line {
                kind: "http_request",
                ts: rfc3339_micros_in(h.ts_ns, &mut ts),
                id: None,
                body: &**h,
            },
        ),
        Signal::Servers(r) => {
            let ts = rfc3339_micros_in(r.ts_ns, &mut ts);
            r.samples.iter().enumerate().try_for_each(|(n, sample)| {
                if n > 0 {
                    out.push(b'\n');
                }
                let line = Line {
                    kind: "server_process",
                    ts,
                    id: None,
                    body: sample,
                };
                serde_json::to_writer(&mut *out, &line)
            })
        }
    };
    if let Err(e) = r {
        // What was written before the failure is dropped with it.
        out.truncate(start);
        let line = format!(
            r#"{{"kind":"event","event":"encode_error","error":{:?}}}"#,
            e.to_string()
        );
        out.extend_from_slice(line.as_bytes());
    }
}

/// Writes JSON lines to a file or stdout.
pub struct JsonLines {
    out: Box<dyn Write + Send>,
    /// The line being written, kept between lines for its allocation.
    line: Vec<u8>,
    /// Lines that could not be written.
    pub write_errors: u64,
}

impl JsonLines {
    /// Lines to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        JsonLines {
            out,
            line: Vec::new(),
            write_errors: 0,
        }
    }
}

impl Sink for JsonLines {
    fn emit(&mut self, signal: &Signal) {
        self.line.clear();
        encode_into(signal, &mut self.line);
        if self.line.is_empty() {
            // A health round that sampled nothing.
            return;
        }
        self.line.push(b'\n');
        if let Err(e) = self.out.write_all(&self.line) {
            self.write_errors += 1;
            if self.write_errors == 1 {
                log::error!("--jsonl: write failed: {e} (further failures are only counted)");
            }
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            self.write_errors += 1;
            if self.write_errors == 1 {
                log::error!("--jsonl: flush failed: {e} (further failures are only counted)");
            }
        }
    }

    fn failures(&self) -> Vec<(&'static str, u64, u64)> {
        vec![("jsonl", self.write_errors, 0)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{Endpoint, Exchange, Role, Status};

    #[test]
    fn exchange_line_has_the_documented_fields() {
        let x = Exchange {
            ts_ns: 1_795_255_005_123_456_789,
            transport: crate::signal::Transport::Stdio,
            session: Some("stdio:1-2".into()),
            method: "tools/call".into(),
            id: "\"a-1\"".into(),
            tool: Some("echo".into()),
            resource_uri: None,
            prompt: None,
            status: Status::ToolError,
            error_code: None,
            requester: Role::Client,
            timing: crate::signal::Timing {
                duration_ms: Some(1.5),
                client_duration_ms: Some(1.5),
                server_duration_ms: Some(1.0),
                ..Default::default()
            },
            client: Endpoint {
                pid: Some(1),
                comm: "node".into(),
                ..Default::default()
            },
            server: Endpoint {
                pid: Some(2),
                comm: "python3".into(),
                name: Some("demo".into()),
                version: Some("1.0".into()),
                ..Default::default()
            },
            protocol_version: Some("2025-06-18".into()),
            request_bytes: 80,
            response_bytes: Some(40),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&encode(&Signal::Exchange(x))).unwrap();
        assert_eq!(v["kind"], "exchange");
        assert_eq!(v["ts"], "2026-11-21T09:56:45.123456Z");
        assert_eq!(v["id"], "a-1");
        assert_eq!(v["status"], "tool_error");
        assert_eq!(v["tool"], "echo");
        assert_eq!(v["server"]["name"], "demo");
        assert_eq!(v["client"]["pid"], 1);
        assert!(v.get("resource_uri").is_none());
        assert!(v.get("error_code").is_none());
    }
}
