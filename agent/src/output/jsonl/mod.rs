//! JSON lines: one object per signal. The schema is documented in the README; every record
//! has `kind` (`exchange`, `notification`, `llm_call`, `event`, `http_request`,
//! `server_process` or `finding`) and `ts` (RFC 3339 UTC, microseconds). A round of the
//! server health stage is one `server_process` line per process it sampled (none when it
//! sampled none); the findings of an exchange or model call follow its line, one `finding`
//! line each.

use std::io::Write;

mod exchange;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{RFC3339_MICROS_LEN, rfc3339_micros_in};
use crate::signal::security::Finding;
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

/// Encode one signal as JSON lines (without the last newline; see [`encode_into`]).
pub fn encode(signal: &Signal) -> String {
    let mut out = Vec::new();
    encode_into(signal, &mut out);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Append one signal's JSON lines (without the last newline) to `out`: the writer reuses one
/// buffer for every line. A signal is one line, with these exceptions: an exchange or model
/// call is followed by a `finding` line for each of its findings, and a health round is one
/// `server_process` line per sample (none when it sampled none).
pub fn encode_into(signal: &Signal, out: &mut Vec<u8>) {
    let start = out.len();
    let mut ts = [0; RFC3339_MICROS_LEN];
    let r = match signal {
        Signal::Exchange(x) => {
            exchange::write(x, rfc3339_micros_in(x.ts_ns, &mut ts), out);
            findings(out, start, &x.findings)
        }
        Signal::Notification(n) => {
            let ts = rfc3339_micros_in(n.ts_ns, &mut ts);
            push_line(out, start, "notification", ts, n)
        }
        Signal::LlmCall(c) => {
            let ts = rfc3339_micros_in(c.ts_ns, &mut ts);
            push_line(out, start, "llm_call", ts, &**c)
                .and_then(|()| findings(out, start, &c.findings))
        }
        Signal::Event(e) => push_line(out, start, "event", rfc3339_micros_in(e.ts_ns, &mut ts), e),
        Signal::Http(h) => {
            let ts = rfc3339_micros_in(h.ts_ns, &mut ts);
            push_line(out, start, "http_request", ts, &**h)
        }
        Signal::Servers(r) => {
            let ts = rfc3339_micros_in(r.ts_ns, &mut ts);
            let mut each = r.samples.iter();
            each.try_for_each(|sample| push_line(out, start, "server_process", ts, sample))
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

/// Append `body` as a `kind` line stamped `ts`, after a newline when the signal whose lines
/// begin at `start` has written one already.
fn push_line<T: Serialize>(
    out: &mut Vec<u8>,
    start: usize,
    kind: &'static str,
    ts: &str,
    body: &T,
) -> serde_json::Result<()> {
    if out.len() > start {
        out.push(b'\n');
    }
    let line = Line {
        kind,
        ts,
        id: None,
        body,
    };
    serde_json::to_writer(&mut *out, &line)
}

/// Append a `finding` line for each of `found`, each stamped with its own message's time.
fn findings(out: &mut Vec<u8>, start: usize, found: &[Finding]) -> serde_json::Result<()> {
    let mut ts = [0; RFC3339_MICROS_LEN];
    found.iter().try_for_each(|f| {
        let ts = rfc3339_micros_in(f.ts_ns, &mut ts);
        push_line(out, start, "finding", ts, f)
    })
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
    use crate::capture::cgroup::Identity;
    use crate::signal::security::Rule;
    use crate::signal::{Endpoint, Exchange, LlmCall, Role, Status};

    /// A secret in a tool's result, every optional field set, its server in a pod.
    fn secret_in_result() -> Finding {
        let pod = Identity {
            pod: Some("fixture-0".into()),
            namespace: Some("agents".into()),
            ..Default::default()
        };
        let server = Endpoint {
            pid: Some(2),
            comm: "python3".into(),
            k8s: Some(pod.into()),
            ..Default::default()
        };
        Finding {
            session: Some("stdio:1-2".into()),
            server: Some("fixture".into()),
            tool: Some("read_secret".into()),
            method: Some("tools/call".into()),
            field: Some("result.content[0].text".into()),
            match_hash: Some("hmac:0123abcd0123abcd".into()),
            detail: Some("PEM block".into()),
            ..Finding::new(Rule::PrivateKey, 1_795_255_005_123_456_789, server)
        }
    }

    /// A finding with only what every finding has.
    fn bare(rule: Rule, ts_ns: u64) -> Finding {
        let process = Endpoint {
            pid: Some(1),
            comm: "node".into(),
            ..Default::default()
        };
        Finding::new(rule, ts_ns, process)
    }

    #[test]
    fn findings_follow_their_exchange_one_line_each() {
        let x = Exchange {
            ts_ns: 1_795_255_005_000_000_000,
            method: "tools/call".into(),
            id: "7".into(),
            findings: vec![
                secret_in_result(),
                bare(Rule::Email, 1_795_255_005_000_001_000),
            ],
            ..Default::default()
        };
        let text = encode(&Signal::Exchange(x));
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0]
                .starts_with(r#"{"kind":"exchange","ts":"2026-11-21T09:56:45.000000Z","id":7,"#)
        );
        assert_eq!(
            lines[1],
            concat!(
                r#"{"kind":"finding","ts":"2026-11-21T09:56:45.123456Z","finding":"secret","#,
                r#""rule":"private-key","severity":"critical","session":"stdio:1-2","#,
                r#""server":"fixture","tool":"read_secret","method":"tools/call","#,
                r#""field":"result.content[0].text","match_hash":"hmac:0123abcd0123abcd","#,
                r#""detail":"PEM block","process":{"pid":2,"comm":"python3","#,
                r#""k8s_pod":"fixture-0","k8s_namespace":"agents"}}"#
            )
        );
        assert_eq!(
            lines[2],
            concat!(
                r#"{"kind":"finding","ts":"2026-11-21T09:56:45.000001Z","finding":"pii","#,
                r#""rule":"email","severity":"low","process":{"pid":1,"comm":"node"}}"#
            )
        );
    }

    #[test]
    fn findings_follow_their_model_call() {
        let c = LlmCall {
            ts_ns: 1,
            findings: vec![bare(Rule::SentToModel, 2)],
            ..Default::default()
        };
        let text = encode(&Signal::LlmCall(Box::new(c)));
        let lines: Vec<serde_json::Value> = text
            .split('\n')
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["kind"], "llm_call");
        assert_eq!(lines[1]["kind"], "finding");
        assert_eq!(lines[1]["finding"], "leak_to_model");
        assert_eq!(lines[1]["rule"], "sent-to-model");
        assert_eq!(lines[1]["ts"], "1970-01-01T00:00:00.000000Z");
    }

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
