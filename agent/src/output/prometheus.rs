//! The Prometheus text exposition format (version 0.0.4) of the metrics registry, served on
//! `/metrics`.

use std::fmt::Write as _;

use crate::output::metrics::{Kind, Snapshot, Value};

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

fn labels(names: &[&str], values: &[&str], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
        .collect();
    if let Some((n, v)) = extra {
        parts.push(format!("{n}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Render every metric that has series.
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::new();
    for (def, series) in snap.metrics() {
        let kind = match def.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram(_) => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", def.name, escape(def.help));
        let _ = writeln!(out, "# TYPE {} {kind}", def.name);
        for (values, v) in series {
            let values: Vec<&str> = values.iter().map(|v| &**v).collect();
            match (v, &def.kind) {
                (Value::Number(n), _) => {
                    let _ = writeln!(
                        out,
                        "{}{} {}",
                        def.name,
                        labels(def.labels, &values, None),
                        number(*n)
                    );
                }
                (
                    Value::Histogram {
                        buckets,
                        sum,
                        count,
                    },
                    Kind::Histogram(bounds),
                ) => histogram(&mut out, def, &values, (buckets, *sum, *count), bounds),
                _ => {}
            }
        }
    }
    out
}

fn histogram(
    out: &mut String,
    def: &crate::output::metrics::Def,
    values: &[&str],
    (buckets, sum, count): (&[u64], f64, u64),
    bounds: &[f64],
) {
    let mut cumulative = 0;
    for (i, b) in bounds.iter().enumerate() {
        cumulative += buckets[i];
        let le = number(*b);
        let _ = writeln!(
            out,
            "{}_bucket{} {cumulative}",
            def.name,
            labels(def.labels, values, Some(("le", &le)))
        );
    }
    let _ = writeln!(
        out,
        "{}_bucket{} {count}",
        def.name,
        labels(def.labels, values, Some(("le", "+Inf")))
    );
    let _ = writeln!(
        out,
        "{}_sum{} {}",
        def.name,
        labels(def.labels, values, None),
        number(sum)
    );
    let _ = writeln!(
        out,
        "{}_count{} {count}",
        def.name,
        labels(def.labels, values, None)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::metrics::{Registry, defs};

    #[test]
    fn exposition_format() {
        let mut r = Registry::new(10, 1000);
        r.inc(
            &defs::TOOL_CALLS,
            &[
                "ec\"ho",
                "srv",
                "cli",
                "success",
                "",
                "",
                "agents",
                "weather-0",
            ],
            2.0,
        );
        r.observe(&defs::TOOL_DURATION, &["echo", "srv", "", ""], 0.0003);
        r.set(&defs::AGENT_RECORDS, &[], 7.0);
        let text = render(&r.snapshot());
        assert!(text.contains("# TYPE mcp_tool_calls_total counter\n"));
        assert!(text.contains(
            "mcp_tool_calls_total{tool_name=\"ec\\\"ho\",server=\"srv\",client=\"cli\",status=\"success\",error_type=\"\",error_class=\"\",k8s_namespace=\"agents\",k8s_pod=\"weather-0\"} 2\n"
        ));
        assert!(text.contains("mcp_tool_call_duration_seconds_bucket{tool_name=\"echo\",server=\"srv\",k8s_namespace=\"\",k8s_pod=\"\",le=\"0.00025\"} 0\n"));
        assert!(text.contains("mcp_tool_call_duration_seconds_bucket{tool_name=\"echo\",server=\"srv\",k8s_namespace=\"\",k8s_pod=\"\",le=\"0.0005\"} 1\n"));
        assert!(text.contains("mcp_tool_call_duration_seconds_bucket{tool_name=\"echo\",server=\"srv\",k8s_namespace=\"\",k8s_pod=\"\",le=\"+Inf\"} 1\n"));
        assert!(text.contains(
            "mcp_tool_call_duration_seconds_count{tool_name=\"echo\",server=\"srv\",k8s_namespace=\"\",k8s_pod=\"\"} 1\n"
        ));
        assert!(text.contains("mcptap_records_total 7\n"));
        // Families without series are left out.
        assert!(!text.contains("mcp_prompt_gets_total"));
    }
}
