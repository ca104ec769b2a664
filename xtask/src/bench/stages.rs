//! Section 4's instructions per message view, by pipeline stage: callgrind counts of
//! `mcptap replay` (quiet, and with `--jsonl -`), less an empty recording's (start-up and
//! stop), split by the inclusive counts of each stage's entry point less the stage it calls
//! (as `xtask/src/bench/profile-round3.md` computes them). Callgrind counts instructions, not
//! time: the same binary on the same file gives the same count, so one run is the figure.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Result;

/// Inclusive instructions by function name (summed over objects), and the program's total.
struct Inclusive {
    by_fn: HashMap<String, f64>,
    total: f64,
}

impl Inclusive {
    /// The sum of the first of each group of names that is there (a stage's entry point may
    /// be named differently in another build: inlined into its caller, or before a rename).
    fn of(&self, names: &[&str]) -> f64 {
        names.iter().filter_map(|n| self.by_fn.get(*n)).sum()
    }

    fn first(&self, names: &[&str]) -> f64 {
        names
            .iter()
            .find_map(|n| self.by_fn.get(*n).copied())
            .unwrap_or(0.0)
    }
}

/// Rows of `callgrind_annotate --inclusive=yes`, by function ("file:function [object]").
fn parse_annotate(text: &str) -> Inclusive {
    let mut by_fn = HashMap::new();
    let mut total = 0.0;
    for l in text.lines() {
        let Some((head, rest)) = l.split_once(')') else {
            continue;
        };
        let Some(Ok(n)) = head
            .split_whitespace()
            .next()
            .map(|n| n.replace(',', "").parse::<f64>())
        else {
            continue;
        };
        let place = rest.trim();
        if place.contains("PROGRAM TOTALS") {
            total = n;
            continue;
        }
        let place = place.rsplit_once(" [").map_or(place, |(p, _)| p);
        let f = place.split_once(':').map_or(place, |(_, f)| f);
        *by_fn.entry(f.to_string()).or_insert(0.0) += n;
    }
    Inclusive { by_fn, total }
}

/// `valgrind --tool=callgrind mcptap replay FILE --quiet [--jsonl -]`, annotated; `None` if
/// callgrind fails.
fn callgrind(mcptap: &Path, file: &Path, jsonl: bool, out: &Path) -> Result<Option<Inclusive>> {
    let mut c = Command::new("valgrind");
    c.args([
        "--tool=callgrind",
        &format!("--callgrind-out-file={}", out.display()),
    ])
    .arg(mcptap)
    .arg("replay")
    .arg(file)
    .arg("--quiet");
    if jsonl {
        c.args(["--jsonl", "-"]);
    }
    if !c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success()
    {
        return Ok(None);
    }
    let text = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(out)
        .output()?
        .stdout;
    Ok(Some(parse_annotate(&String::from_utf8_lossy(&text))))
}

/// The stages, in report order (an indented one is part of the row above it, not added).
pub const STAGES: [&str; 12] = [
    "capture record decoding (Reader::next_frame, Frame drop)",
    "conn (Conns::ingest less the layer above)",
    "proto + wire framing (Stage::bytes less stdio::line)",
    "stdio binding: route, view hash (line less parse/tracker)",
    "JSON parsing (message::parse_with, Message drop)",
    "mcp tracker/correlation (Deliver::message)",
    "  of which emit_ready_for (exchange records)",
    "agentic (Joiner::take)",
    "signal/metrics (Recorder::emit)",
    "JSONL output (JsonLines::emit)",
    "outputs other (Signal drop, enrich)",
    "rest (main loop, allocator frees outside stages)",
];

/// Instructions per view by stage ([`STAGES`]' order) and in all, less the empty recording's.
#[derive(Clone, Debug, Default)]
pub struct PerView {
    pub stages: Vec<f64>,
    pub total: f64,
}

/// Split one replay's counts into stages, per view.
fn per_view(inc: &Inclusive, empty_total: f64, views: f64) -> PerView {
    let line = inc.first(&[
        "mcptap::mcp::transport::stdio::line",
        "<mcptap::mcp::transport::stdio::Stdio as mcptap::mcp::transport::Binding>::take::{{closure}}",
    ]);
    let parse = inc.of(&[
        "mcptap::mcp::message::parse_with",
        "core::ptr::drop_in_place<mcptap::mcp::message::Message>",
    ]);
    let tracker = inc.of(&["<mcptap::mcp::Tracker as mcptap::mcp::transport::Deliver>::message"]);
    let jsonl = inc.of(&["<mcptap::output::jsonl::JsonLines as mcptap::signal::Sink>::emit"]);
    let metrics =
        inc.of(&["<mcptap::output::metrics::record::Recorder as mcptap::signal::Sink>::emit"]);
    let emit_all = inc.of(&["mcptap::output::Outputs::emit_all"]);
    let conns = inc.of(&["mcptap::conn::Conns<S,C>::ingest"]);
    let stage = inc.first(&[
        "<mcptap::proto::Stage as mcptap::conn::Upper>::bytes",
        "<mcptap::mcp::transport::Stage<D> as mcptap::conn::Upper>::bytes",
    ]);
    let mut stages = vec![
        inc.of(&[
            "mcptap::capture::recording::Reader<R>::next_frame",
            "core::ptr::drop_in_place<mcptap::capture::recording::Frame>",
        ]),
        conns - stage,
        stage - line,
        line - parse - tracker,
        parse,
        tracker,
        inc.of(&["mcptap::mcp::report::<impl mcptap::mcp::Tracker>::emit_ready_for"]),
        inc.of(&["mcptap::agentic::Joiner::take"]),
        metrics,
        jsonl,
        emit_all - metrics - jsonl,
    ];
    let all = inc.total - empty_total;
    let known: f64 = stages
        .iter()
        .zip(STAGES)
        .filter(|(_, name)| !name.starts_with(' '))
        .map(|(n, _)| n)
        .sum();
    stages.push(all - known);
    PerView {
        stages: stages.into_iter().map(|n| n / views).collect(),
        total: all / views,
    }
}

/// One binary's counts, quiet and with JSONL.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub views: u64,
    pub quiet: PerView,
    pub jsonl: PerView,
}

/// Count `mcptap`'s replays of `file` (`views` message views) and of an empty recording,
/// quiet and with JSONL; `None` when callgrind does not run. Files go in `dir`, named `tag`.
pub fn count(
    mcptap: &Path,
    file: &Path,
    views: u64,
    dir: &Path,
    tag: &str,
) -> Result<Option<Counts>> {
    let empty = dir.join("empty.mcptap");
    std::fs::write(&empty, b"MCPTAP\x00\x01")?;
    let mut out = Counts {
        views,
        ..Default::default()
    };
    for jsonl in [false, true] {
        let mode = if jsonl { "jsonl" } else { "quiet" };
        let cg = |f: &Path, what: &str| {
            callgrind(
                mcptap,
                f,
                jsonl,
                &dir.join(format!("cg-{tag}-{what}-{mode}.out")),
            )
        };
        let (Some(e), Some(r)) = (cg(&empty, "empty")?, cg(file, "replay")?) else {
            return Ok(None);
        };
        let pv = per_view(&r, e.total, views as f64);
        if jsonl {
            out.jsonl = pv;
        } else {
            out.quiet = pv;
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    /// Rows as callgrind_annotate prints them.
    #[test]
    fn stages_are_entry_points_less_what_they_call() {
        let text = "\
1,000,000 (100.0%)  PROGRAM TOTALS
  900,000 (90.00%)  ???:mcptap::conn::Conns<S,C>::ingest [/x/mcptap]
  800,000 (80.00%)  ???:<mcptap::proto::Stage as mcptap::conn::Upper>::bytes [/x/mcptap]
  700,000 (70.00%)  ???:mcptap::mcp::transport::stdio::line [/x/mcptap]
  300,000 (30.00%)  ???:mcptap::mcp::message::parse_with [/x/mcptap]
  200,000 (20.00%)  ???:<mcptap::mcp::Tracker as mcptap::mcp::transport::Deliver>::message [/x/mcptap]
";
        let inc = super::parse_annotate(text);
        let pv = super::per_view(&inc, 100_000.0, 100.0);
        assert_eq!(pv.total, 9_000.0);
        assert_eq!(pv.stages[1], 1_000.0);
        assert_eq!(pv.stages[2], 1_000.0);
        assert_eq!(pv.stages[3], 2_000.0);
        assert_eq!(pv.stages[4], 3_000.0);
        // The rest: 900,000 counted, less 900,000 known (conns is all the stages above).
        assert_eq!(pv.stages[11], 0.0);
    }
}
