//! The security findings' metric: each finding an exchange or a model call carries, counted
//! by kind, severity and server. The same series go out over OTLP as the monotonic sum
//! `mcp.security.findings`, its server attribute named `server` as on every other metric.

use super::{Def, Kind, Registry};
use crate::signal::security::Finding;

def!(
    FINDINGS,
    "mcp_security_findings_total",
    Kind::Counter,
    ["kind", "severity", "server"],
    "mcp.security.findings",
    "{finding}",
    [
        "mcp.security.finding.kind",
        "mcp.security.finding.severity",
        "server"
    ],
    "Security findings in exchanges and model calls, by kind (definition, shadowing, rug_pull, secret, pii, leak_to_model, access), severity (low, medium, high, critical) and server (the MCP server's name; empty when the finding names none)."
);

/// Count each of `found` (the findings of one exchange or model call).
pub fn findings(r: &mut Registry, found: &[Finding]) {
    for f in found {
        let server = f.server.as_deref().unwrap_or("");
        let labels = [f.finding.as_str(), f.severity.as_str(), server];
        r.inc(&FINDINGS, &labels, 1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::metrics::record::record;
    use crate::output::prometheus::render;
    use crate::signal::security::Rule;
    use crate::signal::{Endpoint, Exchange, LlmCall, Signal};

    fn found(rule: Rule, server: Option<&str>) -> Finding {
        Finding {
            server: server.map(str::to_string),
            ..Finding::new(rule, 1, Endpoint::default())
        }
    }

    #[test]
    fn every_finding_of_exchanges_and_model_calls_is_counted() {
        let mut r = Registry::new(100, 1000);
        let x = Exchange {
            method: "tools/call".into(),
            findings: vec![
                found(Rule::PrivateKey, Some("fixture")),
                found(Rule::PrivateKey, Some("fixture")),
                found(Rule::Email, Some("fixture")),
            ],
            ..Default::default()
        };
        record(&mut r, &Signal::Exchange(x));
        let c = LlmCall {
            findings: vec![found(Rule::SentToModel, None)],
            ..Default::default()
        };
        record(&mut r, &Signal::LlmCall(Box::new(c)));
        let count = |labels: &[&str]| r.value(&FINDINGS, labels);
        assert_eq!(count(&["secret", "critical", "fixture"]), Some(2.0));
        assert_eq!(count(&["pii", "low", "fixture"]), Some(1.0));
        assert_eq!(count(&["leak_to_model", "critical", ""]), Some(1.0));
        assert_eq!(r.series(&FINDINGS).len(), 3);
        let text = render(&r.snapshot());
        assert!(text.contains("# HELP mcp_security_findings_total Security findings"));
        assert!(text.contains("# TYPE mcp_security_findings_total counter"));
        assert!(text.contains(
            "mcp_security_findings_total{kind=\"secret\",severity=\"critical\",server=\"fixture\"} 2\n"
        ));
    }
}
