//! Security findings on spans: one `mcp.security.finding` event per finding, at the time of
//! the message it was found in, on the span of the exchange or model call that carried it.
//! What matched is never in an event: its keyed hash is.

use opentelemetry::KeyValue;
use opentelemetry::trace::Event;
use opentelemetry_sdk::trace::SpanData;

use super::{push_known, time};
use crate::signal::Endpoint;
use crate::signal::security::Finding;

/// The event's name.
pub const EVENT: &str = "mcp.security.finding";

/// Events a span keeps at most, the SDKs' default span limit; the rest are counted in its
/// dropped events.
const MAX_EVENTS: usize = 128;

/// The finding's attributes: what, by which rule, how serious, where and about which tool.
fn attributes(f: &Finding) -> Vec<KeyValue> {
    let mut out = vec![
        KeyValue::new("mcp.security.finding.kind", f.finding.as_str()),
        KeyValue::new("mcp.security.finding.rule", f.rule.id()),
        KeyValue::new("mcp.security.finding.severity", f.severity.as_str()),
    ];
    let known = [
        ("mcp.security.finding.field", &f.field),
        ("mcp.security.finding.match_hash", &f.match_hash),
        ("mcp.security.finding.detail", &f.detail),
        ("gen_ai.tool.name", &f.tool),
    ];
    push_known(known, &mut out);
    out
}

/// Add `f` to `span` as an event.
pub(super) fn add(span: &mut SpanData, f: &Finding) {
    let events = &mut span.events;
    if events.events.len() >= MAX_EVENTS {
        events.dropped_count += 1;
        return;
    }
    let event = Event::new(EVENT, time(f.ts_ns), attributes(f), 0);
    events.events.push(event);
}

/// Put each of `found` on one of an exchange's `spans`, each given with the process it ran
/// in: the span of the process the finding concerns (the message's sender), else the first
/// (the requester's when it was watched). One span only, so a trace counts a finding once.
pub(super) fn place(found: &[Finding], spans: &mut [(SpanData, &Endpoint)]) {
    for f in found {
        let concerned = spans
            .iter()
            .position(|(_, side)| side.pid.is_some() && side.pid == f.process.pid);
        if let Some((span, _)) = spans.get_mut(concerned.unwrap_or(0)) {
            add(span, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::SpanKind;

    use super::*;
    use crate::output::otlp::agent::turn_spans;
    use crate::output::otlp::spans_of;
    use crate::signal::security::Rule;
    use crate::signal::{Exchange, LlmCall, Timing};

    fn process(pid: u32) -> Endpoint {
        Endpoint {
            pid: Some(pid),
            ..Default::default()
        }
    }

    /// A private key in the server's result, every optional field set.
    fn secret_from_server() -> Finding {
        Finding {
            tool: Some("read_secret".into()),
            field: Some("result.content[0].text".into()),
            match_hash: Some("hmac:0123abcd0123abcd".into()),
            detail: Some("PEM block".into()),
            ..Finding::new(Rule::PrivateKey, 2_500, process(20))
        }
    }

    /// An event's attributes as key and text.
    fn attrs(e: &Event) -> Vec<(String, String)> {
        let kv = e.attributes.iter();
        kv.map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
            .collect()
    }

    fn pairs(want: &[(&str, &str)]) -> Vec<(String, String)> {
        want.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn each_finding_is_an_event_on_the_span_of_its_process() {
        let x = Exchange {
            method: "tools/call".into(),
            tool: Some("read_secret".into()),
            id: "1".into(),
            client: process(10),
            server: process(20),
            timing: Timing {
                client_start_ns: Some(1_000),
                client_duration_ms: Some(0.004),
                server_start_ns: Some(2_000),
                server_duration_ms: Some(0.001),
                ..Default::default()
            },
            // One about the server, one about a process on neither side.
            findings: vec![
                secret_from_server(),
                Finding::new(Rule::Email, 1_500, process(99)),
            ],
            ..Default::default()
        };
        let spans = spans_of(&x, false);
        let of = |kind: SpanKind| spans.iter().find(|s| s.span_kind == kind).unwrap();
        let (client, server) = (of(SpanKind::Client), of(SpanKind::Server));
        let [secret] = &server.events.events[..] else {
            panic!("{:?}", server.events)
        };
        assert_eq!(secret.name, EVENT);
        assert_eq!(secret.timestamp, time(2_500));
        assert_eq!(
            attrs(secret),
            pairs(&[
                ("mcp.security.finding.kind", "secret"),
                ("mcp.security.finding.rule", "private-key"),
                ("mcp.security.finding.severity", "critical"),
                ("mcp.security.finding.field", "result.content[0].text"),
                ("mcp.security.finding.match_hash", "hmac:0123abcd0123abcd"),
                ("mcp.security.finding.detail", "PEM block"),
                ("gen_ai.tool.name", "read_secret"),
            ])
        );
        // The other goes on the first span, with only what it has.
        let [email] = &client.events.events[..] else {
            panic!("{:?}", client.events)
        };
        assert_eq!(email.timestamp, time(1_500));
        assert_eq!(
            attrs(email),
            pairs(&[
                ("mcp.security.finding.kind", "pii"),
                ("mcp.security.finding.rule", "email"),
                ("mcp.security.finding.severity", "low"),
            ])
        );
    }

    #[test]
    fn a_model_calls_findings_are_events_on_its_chat_span() {
        let mut c = LlmCall {
            ts_ns: 1_000,
            duration_ms: 1.0,
            turn: Some(1),
            process: process(10),
            findings: vec![Finding::new(Rule::SentToModel, 1_000, process(10))],
            ..Default::default()
        };
        c.facts.trace = Some(7);
        let spans = turn_spans(&c, false);
        let [event] = &spans[0].events.events[..] else {
            panic!("{:?}", spans[0].events)
        };
        assert_eq!(spans[0].span_kind, SpanKind::Client);
        assert_eq!(event.name, EVENT);
        assert_eq!(
            attrs(event)[..2],
            pairs(&[
                ("mcp.security.finding.kind", "leak_to_model"),
                ("mcp.security.finding.rule", "sent-to-model"),
            ])
        );
    }

    #[test]
    fn a_span_keeps_at_most_the_sdk_limit_of_events() {
        let x = Exchange {
            client: process(10),
            timing: Timing {
                client_start_ns: Some(1),
                client_duration_ms: Some(1.0),
                ..Default::default()
            },
            findings: vec![Finding::new(Rule::Email, 1, process(10)); MAX_EVENTS + 3],
            ..Default::default()
        };
        let spans = spans_of(&x, false);
        assert_eq!(spans[0].events.events.len(), MAX_EVENTS);
        assert_eq!(spans[0].events.dropped_count, 3);
    }
}
