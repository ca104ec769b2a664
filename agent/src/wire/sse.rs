//! Server-sent events (the `text/event-stream` body MCP's HTTP transports use), parsed as the
//! WHATWG spec says: lines end in CRLF, LF or CR; `data` lines accumulate, joined with `\n`;
//! `event` and `id` name the event; lines starting with `:` are comments (pings); an empty
//! line dispatches the event, unless it has no data.
//!
//! Like the ndjson framer, the parser takes bytes in whatever pieces they arrived and reports,
//! for each event, the entry time of the syscall that carried its first field and the exit time
//! of the one that carried its dispatching blank line.

/// One dispatched event.
#[derive(Debug, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event` field, `message` when absent.
    pub event: &'a str,
    /// The `id` field.
    pub id: Option<&'a str>,
    /// The data lines joined with `\n`.
    pub data: &'a [u8],
    /// Entry time of the syscall that carried the event's first field.
    pub first_enter_ns: u64,
    /// Exit time of the syscall that carried the blank line that ended it.
    pub last_exit_ns: u64,
}

/// What the parser has to say.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// An event.
    Event(Event<'a>),
    /// An event whose data exceeded the limit, dropped.
    Oversize {
        /// Data bytes seen.
        len: u64,
    },
}

/// Incremental SSE parser for one stream.
#[derive(Debug)]
pub struct Parser {
    line: Vec<u8>,
    line_start_ns: Option<u64>,
    after_cr: bool,
    data: Vec<u8>,
    has_data: bool,
    event: String,
    id: Option<String>,
    event_start_ns: Option<u64>,
    oversize: Option<u64>,
    /// Bytes of the current line past [`Parser::line_limit`], dropped.
    line_dropped: u64,
    max: usize,
    /// Comment lines seen (`: ping`).
    pub comments: u64,
}

impl Parser {
    /// A parser that drops events with more than `max` data bytes.
    pub fn new(max: usize) -> Self {
        Parser {
            line: Vec::new(),
            line_start_ns: None,
            after_cr: false,
            data: Vec::new(),
            has_data: false,
            event: String::new(),
            id: None,
            event_start_ns: None,
            oversize: None,
            line_dropped: 0,
            max,
            comments: 0,
        }
    }

    /// Bytes held for a line or an event not complete yet.
    pub fn buffered(&self) -> usize {
        self.line.len() + self.data.len()
    }

    /// The longest line kept: a data line of `max` bytes with its field name. Longer lines
    /// are judged by their length alone, however they were split.
    fn line_limit(&self) -> usize {
        self.max.saturating_add(16)
    }

    /// Keep what fits of `piece` in the current line, counting the rest as dropped.
    fn keep(&mut self, piece: &[u8]) {
        let room = self.line_limit().saturating_sub(self.line.len());
        let n = piece.len().min(room);
        self.line.extend_from_slice(&piece[..n]);
        self.line_dropped += (piece.len() - n) as u64;
    }

    /// Feed bytes one syscall moved.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        enter_ns: u64,
        exit_ns: u64,
        mut emit: impl FnMut(Output<'_>),
    ) {
        while !bytes.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if bytes[0] == b'\n' {
                    bytes = &bytes[1..];
                    continue;
                }
            }
            if self.line_start_ns.is_none() {
                self.line_start_ns = Some(enter_ns);
            }
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(i) => {
                    let piece = &bytes[..i];
                    self.after_cr = bytes[i] == b'\r';
                    bytes = &bytes[i + 1..];
                    if self.line.is_empty() && piece.len() <= self.line_limit() {
                        self.line_done(piece, exit_ns, &mut emit);
                    } else {
                        self.keep(piece);
                        let mut line = std::mem::take(&mut self.line);
                        self.line_done(&line, exit_ns, &mut emit);
                        line.clear();
                        self.line = line;
                    }
                    self.line_start_ns = None;
                }
                None => {
                    // Keep at most what a field line can usefully hold.
                    self.keep(bytes);
                    bytes = &[];
                }
            }
        }
    }

    fn line_done(&mut self, line: &[u8], exit_ns: u64, emit: &mut impl FnMut(Output<'_>)) {
        let start = self.line_start_ns.unwrap_or(exit_ns);
        let total = line.len() as u64 + std::mem::take(&mut self.line_dropped);
        if total > self.line_limit() as u64 {
            // Too long to hold: a data line makes the event oversize; any other field (event
            // name, id) that long is not one a server means, and is ignored.
            if line.starts_with(b"data:") {
                if self.event_start_ns.is_none() {
                    self.event_start_ns = Some(start);
                }
                self.oversize = Some(self.oversize.unwrap_or(0) + self.data.len() as u64 + total);
                self.data.clear();
                self.has_data = true;
            }
            return;
        }
        if line.is_empty() {
            self.dispatch(exit_ns, emit);
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        if self.event_start_ns.is_none() {
            self.event_start_ns = Some(start);
        }
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max {
                    self.oversize =
                        Some(self.oversize.unwrap_or(0) + (self.data.len() + value.len()) as u64);
                    self.data.clear();
                } else if self.oversize.is_none() {
                    self.data.extend_from_slice(value);
                    self.data.push(b'\n');
                }
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, exit_ns: u64, emit: &mut impl FnMut(Output<'_>)) {
        if let Some(len) = self.oversize.take() {
            emit(Output::Oversize { len });
        } else if self.has_data {
            let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
            let event = if self.event.is_empty() {
                "message"
            } else {
                &self.event
            };
            emit(Output::Event(Event {
                event,
                id: self.id.as_deref(),
                data,
                first_enter_ns: self.event_start_ns.unwrap_or(exit_ns),
                last_exit_ns: exit_ns,
            }));
        }
        self.data.clear();
        if self.data.capacity() > 1 << 20 {
            self.data = Vec::new();
        }
        self.has_data = false;
        self.event.clear();
        self.event_start_ns = None;
        // The last event id persists across events, as the spec says; only the data resets.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Got {
        event: String,
        id: Option<String>,
        data: String,
    }

    fn feed(p: &mut Parser, pieces: &[&[u8]]) -> Vec<Got> {
        let mut got = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            p.push(piece, i as u64 * 10, i as u64 * 10 + 1, |o| {
                if let Output::Event(e) = o {
                    got.push(Got {
                        event: e.event.to_string(),
                        id: e.id.map(str::to_string),
                        data: String::from_utf8(e.data.to_vec()).unwrap(),
                    })
                }
            });
        }
        got
    }

    const STREAM: &[u8] = b": ping\r\n\r\nevent: message\r\nid: 1\r\ndata: {\"a\":1}\r\n\r\n\
data: {\"b\":\r\ndata: 2}\n\nevent: endpoint\rdata: /messages?session_id=x\r\r: ping - 2026\n\n";

    fn want() -> Vec<Got> {
        vec![
            Got {
                event: "message".into(),
                id: Some("1".into()),
                data: "{\"a\":1}".into(),
            },
            Got {
                event: "message".into(),
                id: Some("1".into()),
                data: "{\"b\":\n2}".into(),
            },
            Got {
                event: "endpoint".into(),
                id: Some("1".into()),
                data: "/messages?session_id=x".into(),
            },
        ]
    }

    #[test]
    fn every_split_gives_the_same_events() {
        for a in 0..=STREAM.len() {
            for b in a..=STREAM.len() {
                let mut p = Parser::new(1 << 20);
                let got = feed(&mut p, &[&STREAM[..a], &STREAM[a..b], &STREAM[b..]]);
                assert_eq!(got, want(), "cut at {a},{b}");
            }
        }
        let mut p = Parser::new(1 << 20);
        let pieces: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(feed(&mut p, &pieces), want());
        assert_eq!(p.comments, 2);
    }

    #[test]
    fn event_times_span_first_field_to_blank_line() {
        let mut p = Parser::new(1 << 20);
        let mut times = Vec::new();
        for (i, piece) in [&b": ping\n\nevent: message\n"[..], b"data: {}\n", b"\n"]
            .iter()
            .enumerate()
        {
            p.push(piece, i as u64 * 10, i as u64 * 10 + 1, |o| {
                if let Output::Event(e) = o {
                    times.push((e.first_enter_ns, e.last_exit_ns));
                }
            });
        }
        assert_eq!(times, vec![(0, 21)]);
    }

    #[test]
    fn oversize_events_are_dropped_and_reported() {
        let mut p = Parser::new(8);
        let mut out = Vec::new();
        p.push(b"data: 0123456789abcdef\n\ndata: ok\n\n", 0, 1, |o| {
            out.push(match o {
                Output::Event(e) => format!("event {}", String::from_utf8_lossy(e.data)),
                Output::Oversize { len } => format!("oversize {len}"),
            })
        });
        assert_eq!(out, vec!["oversize 16".to_string(), "event ok".to_string()]);
    }
}
