//! The console view: one line per exchange, notification, model call and event, for people.
//!
//! ```text
//! 09:56:45.123456 python3[4120] → node[4133] tools/call echo  ok  1.234 ms
//! 09:56:45.101021 python3[4120] ⇢ anthropic claude-x task 4120-1 turn 1 ok tools [echo] in 812 out 40 311.020 ms
//! ```

use std::io::Write;

use super::rfc3339_micros;
use crate::signal::{Endpoint, LlmCall, Role, Signal, Sink};

fn who(e: &Endpoint) -> String {
    let comm = if e.comm.is_empty() { "?" } else { &e.comm };
    match e.pid {
        Some(p) => format!("{}[{p}]", escape(comm)),
        None => escape(comm),
    }
}

/// Text from the wire (tool names, URIs, methods, process names) made safe for a terminal:
/// control characters, which could move the cursor or recolour the screen, are written as
/// escapes.
pub fn escape(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
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
        if let Err(e) = writeln!(self.out, "{line}") {
            self.failed(e);
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
    use super::*;
    use crate::signal::Exchange;

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
