//! The console view: one line per exchange, notification and event, for people.
//!
//! ```text
//! 09:56:45.123456 python3[4120] → node[4133] tools/call echo  ok  1.234 ms
//! ```

use std::io::Write;

use super::rfc3339_micros;
use crate::signals::{Endpoint, Role, Signal, Sink};

fn who(e: &Endpoint) -> String {
    let comm = if e.comm.is_empty() { "?" } else { &e.comm };
    match e.pid {
        Some(p) => format!("{comm}[{p}]"),
        None => comm.to_string(),
    }
}

/// Render one signal as a console line (without the newline).
pub fn render(signal: &Signal) -> String {
    match signal {
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
                .duration_ms
                .map(|d| format!("{d:.3} ms"))
                .unwrap_or_else(|| "-".into());
            format!(
                "{time} {} → {} {} {} {status} {dur}",
                who(&x.client),
                who(&x.server),
                x.method,
                target
            )
        }
        Signal::Notification(n) => {
            let time = &rfc3339_micros(n.ts_ns)[11..];
            let arrow = if n.from == Role::Server { "←" } else { "→" };
            format!(
                "{time} {} {arrow} {} {} (notification)",
                who(&n.client),
                who(&n.server),
                n.method
            )
        }
        Signal::Event(e) => {
            let time = &rfc3339_micros(e.ts_ns)[11..];
            let mut line = format!("{time} ! {}", e.event);
            if let Some(p) = e.pid {
                line.push_str(&format!(" {}[{p}]", e.comm.as_deref().unwrap_or("?")));
            }
            if let Some(fd) = e.fd {
                line.push_str(&format!(" fd={fd}"));
            }
            for (k, v) in &e.detail {
                line.push_str(&format!(" {k}={v}"));
            }
            line
        }
    }
}

/// Writes console lines.
pub struct Console {
    out: Box<dyn Write + Send>,
}

impl Console {
    /// Lines to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Console { out }
    }
}

impl Sink for Console {
    fn emit(&mut self, signal: &Signal) {
        let _ = writeln!(self.out, "{}", render(signal));
    }
    fn flush(&mut self) {
        let _ = self.out.flush();
    }
}
