//! The console view: one line per exchange, notification, model call and event, for people,
//! and after an exchange or model call one line per security finding in it.
//!
//! ```text
//! 09:56:45.123456Z python3[4120] → node[4133] tools/call echo ok 1.234 ms
//! 09:56:45.101021Z python3[4120] ⇢ anthropic claude-x task 4120-1 turn 1 ok tools [echo] in 812 out 40 311.020 ms
//! 09:56:45.124001Z node[4133] → python3[4120] tools/call read_secret ok 0.912 ms
//! 09:56:45.124870Z ! finding critical secret/private-key server=fixture tool=read_secret field=result.content[0].text hash=hmac:0123abcd…
//! ```

use std::io::Write;

use super::rfc3339_micros;
use crate::signal::security::Finding;
use crate::signal::{Endpoint, LlmCall, Role, Signal, Sink};

/// Hex digits of a finding's hash the console shows: enough to tell findings apart by eye
/// and to find the JSON line, whose hash has them all.
const HASH_DIGITS: usize = 8;

fn who(e: &Endpoint) -> String {
    let comm = if e.comm.is_empty() { "?" } else { &e.comm };
    match e.pid {
        Some(p) => format!("{}[{p}]", escape(comm)),
        None => escape(comm),
    }
}

/// Text from the wire (tool names, URIs, methods, process names) made safe for a terminal:
/// control characters, which could move the cursor or recolour the screen, and characters
/// that hide or reorder text (tag characters, bidi controls, zero-width characters), are
/// written as escapes.
pub fn escape(s: &str) -> String {
    // Invisible and reordering characters too: a tool name could hide text, or turn a line
    // around, on the operator's screen.
    let hidden = |c: char| c.is_control() || crate::detect::definition::is_invisible(c);
    if !s.chars().any(hidden) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Render one signal as a console line (without the newline); none for what is only
/// counted (HTTP requests, the health stage's samples).
pub fn render(signal: &Signal) -> Option<String> {
    Some(match signal {
        Signal::Exchange(x) => {
            let time = &rfc3339_micros(x.ts_ns)[11..];
            let target = x
                .tool
                .as_deref()
                .or(x.resource_uri.as_deref())
                .or(x.prompt.as_deref())
                .unwrap_or("");
            let status = match x.error_code {
                Some(c) => format!("{} {c}", x.status.as_str()),
                None => x.status.as_str().to_string(),
            };
            let dur = x
                .timing
                .duration_ms
                .map(|d| format!("{d:.3} ms"))
                .unwrap_or_else(|| "-".into());
            format!(
                "{time} {} → {} {} {} {status} {dur}",
                who(&x.client),
                who(&x.server),
                escape(&x.method),
                escape(target)
            )
        }
        Signal::Notification(n) => {
            let time = &rfc3339_micros(n.ts_ns)[11..];
            let arrow = if n.from == Role::Server { "←" } else { "→" };
            format!(
                "{time} {} {arrow} {} {} (notification)",
                who(&n.client),
                who(&n.server),
                escape(&n.method)
            )
        }
        Signal::LlmCall(c) => llm_line(c),
        Signal::Event(e) => {
            let time = &rfc3339_micros(e.ts_ns)[11..];
            let mut line = format!("{time} ! {}", e.name());
            if let Some(p) = e.pid {
                let comm = escape(e.comm.as_deref().unwrap_or("?"));
                line.push_str(&format!(" {comm}[{p}]"));
            }
            if let Some(fd) = e.fd {
                line.push_str(&format!(" fd={fd}"));
            }
            // JSON text: control characters are already escaped in it.
            for (k, v) in &e.detail() {
                line.push_str(&format!(" {k}={v}"));
            }
            line
        }
        Signal::Http(_) | Signal::Servers(_) => return None,
    })
}

/// A model call: who called which model, in which task and turn, how it ended, what it
/// asked for, its tokens and time.
fn llm_line(c: &LlmCall) -> String {
    let time = &rfc3339_micros(c.ts_ns)[11..];
    let provider = c.provider.map_or("?", |p| p.as_str());
    let model = c.model.as_deref().unwrap_or("?");
    let mut line = format!("{time} {} ⇢ {provider} {}", who(&c.process), escape(model));
    if let (Some(task), Some(turn)) = (&c.task, c.turn) {
        line.push_str(&format!(" task {} turn {turn}", escape(task)));
    }
    match c.error_type {
        Some(e) => line.push_str(&format!(" {} {}", c.status.as_str(), e.as_str())),
        None => line.push_str(&format!(" {}", c.status.as_str())),
    }
    if !c.tool_calls.is_empty() {
        let names: Vec<String> = c.tool_calls.iter().map(|t| escape(&t.name)).collect();
        line.push_str(&format!(" tools [{}]", names.join(", ")));
    }
    if let (Some(i), Some(o)) = (c.usage.input, c.usage.output) {
        line.push_str(&format!(" in {i} out {o}"));
    }
    line.push_str(&format!(" {:.3} ms", c.duration_ms));
    line
}

/// The security findings `signal` carries: an exchange's or a model call's.
fn findings_of(signal: &Signal) -> &[Finding] {
    match signal {
        Signal::Exchange(x) => &x.findings,
        Signal::LlmCall(c) => &c.findings,
        _ => &[],
    }
}

/// A finding as a console line, in the style of the event lines: how serious, what, by which
/// rule, where, and the start of the keyed hash of what matched (never the match itself).
pub fn finding_line(f: &Finding) -> String {
    let time = &rfc3339_micros(f.ts_ns)[11..];
    let mut line = format!(
        "{time} ! finding {} {}/{}",
        f.severity.as_str(),
        f.finding.as_str(),
        f.rule.id()
    );
    for (key, value) in [
        ("server", &f.server),
        ("tool", &f.tool),
        ("field", &f.field),
    ] {
        if let Some(v) = value {
            line.push_str(&format!(" {key}={}", escape(v)));
        }
    }
    if let Some(h) = &f.match_hash {
        let shown = "hmac:".len() + HASH_DIGITS;
        let short: String = h.chars().take(shown).collect();
        let cut = if h.chars().count() > shown { "…" } else { "" };
        line.push_str(&format!(" hash={}{cut}", escape(&short)));
    }
    if let Some(d) = &f.detail {
        // Quoted, as it may hold spaces; `{:?}` escapes control characters too.
        line.push_str(&format!(" detail={d:?}"));
    }
    line
}

/// Writes console lines.
pub struct Console {
    out: Box<dyn Write + Send>,
    /// Lines that could not be written (a closed terminal or pipe).
    pub write_errors: u64,
}

impl Console {
    /// Lines to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Console {
            out,
            write_errors: 0,
        }
    }

    fn failed(&mut self, e: std::io::Error) {
        self.write_errors += 1;
        if self.write_errors == 1 {
            log::error!("console: write failed: {e} (further failures are only counted)");
        }
    }
}

impl Sink for Console {
    fn emit(&mut self, signal: &Signal) {
        let Some(line) = render(signal) else {
            return;
        };
        let findings = findings_of(signal).iter().map(finding_line);
        for line in std::iter::once(line).chain(findings) {
            if let Err(e) = writeln!(self.out, "{line}") {
                // One failure a signal: its other lines would fail the same way.
                self.failed(e);
                return;
            }
        }
    }
    fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            self.failed(e);
        }
    }
    fn failures(&self) -> Vec<(&'static str, u64, u64)> {
        vec![("console", self.write_errors, 0)]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::signal::Exchange;
    use crate::signal::security::Rule;

    /// A writer whose bytes the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_finding_is_a_line_after_its_exchange() {
        let secret = Finding {
            server: Some("fixture".into()),
            tool: Some("read_secret".into()),
            field: Some("result.content[0].text".into()),
            match_hash: Some("hmac:0123abcd4567ef89".into()),
            ..Finding::new(
                Rule::PrivateKey,
                1_795_255_005_124_870_000,
                Endpoint::default(),
            )
        };
        let shadowed = Finding {
            detail: Some("also on \u{1b}[2Jother".into()),
            ..Finding::new(
                Rule::ShadowedTool,
                1_795_255_005_124_871_000,
                Endpoint::default(),
            )
        };
        let x = Exchange {
            ts_ns: 1_795_255_005_124_001_000,
            method: "tools/call".into(),
            tool: Some("read_secret".into()),
            findings: vec![secret, shadowed],
            ..Default::default()
        };
        let out = Shared::default();
        let mut console = Console::new(Box::new(out.clone()));
        console.emit(&Signal::Exchange(x));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("09:56:45.124001Z ?"), "{}", lines[0]);
        assert_eq!(
            lines[1],
            "09:56:45.124870Z ! finding critical secret/private-key server=fixture \
             tool=read_secret field=result.content[0].text hash=hmac:0123abcd…"
        );
        assert_eq!(
            lines[2],
            "09:56:45.124871Z ! finding medium shadowing/shadowed-tool \
             detail=\"also on \\u{1b}[2Jother\""
        );
    }

    #[test]
    fn control_characters_from_the_wire_are_escaped() {
        let x = Exchange {
            method: "tools/call".into(),
            tool: Some("evil\u{1b}[2J\u{7}\u{9b}31m".into()),
            ..Default::default()
        };
        let line = render(&Signal::Exchange(x)).unwrap();
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.contains("evil\\u{1b}[2J"), "{line}");
        assert_eq!(escape("plain/tool-name"), "plain/tool-name");
    }
}
