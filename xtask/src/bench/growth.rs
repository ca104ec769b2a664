//! Section 6: how cost grows, drawn. Agent CPU against message rate (from section 3's
//! ladders), RSS against open sessions and against message size, and the watched round
//! trip's p50 overhead against payload size (measured here), each as a table and as an SVG
//! image beside the report, because a curve is read faster than a table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use plotters::prelude::*;

use super::Scale;
use super::capacity::{CapacityRun, Series, Step, capacity_run};
use super::env::Env;
use super::footprint;
use super::latency;
use super::stats::Ratio;
use crate::step;

/// The measured curves.
#[derive(Default)]
pub struct Growth {
    /// (sessions open, agent RSS in KiB, sessions the agent tracked).
    pub sessions: Vec<(u64, u64, f64)>,
    /// The agent's RSS with no session open, KiB (the same steps, none made).
    pub idle_kb: u64,
    /// (message size in bytes, agent peak RSS in KiB, passed).
    pub sizes: Vec<(usize, u64, bool)>,
    /// (echoed payload in bytes, the rounds' p50 on/off ratios).
    pub payloads: Vec<(usize, Ratio)>,
}

/// Measure RSS against sessions and against message size.
pub fn measure(env: &Env, s: &Scale) -> Result<Growth> {
    let mut g = Growth {
        idle_kb: footprint::measure(env, 0)?.rss_kb,
        ..Growth::default()
    };
    for &count in s.session_curve {
        let f = footprint::measure(env, count)?;
        g.sessions.push((count, f.rss_kb, f.tracked));
    }
    for &size in s.size_curve {
        step(&format!(
            "bench 6/6: peak RSS with {size} B messages at {}/s over a pipe",
            s.size_curve_rate
        ));
        let st = Step {
            tcp: false,
            rate: s.size_curve_rate,
            size,
            secs: s.capacity_secs,
        };
        let run = capacity_run(env, st, None)?;
        g.sizes.push((size, run.hwm_kb, run.ok));
    }
    for &size in s.payload_curve {
        step(&format!(
            "bench 6/6: p50 on/off with a {size} B echo, {} rounds",
            s.rounds
        ));
        let mut w = latency::payload_workload(env, s, size);
        let ratios = latency::on_off_ratios(env, &mut w, s.rounds, s.calls)?;
        g.payloads.push((size, Ratio::of(ratios)));
    }
    Ok(g)
}

/// One line of a chart: its name and points.
struct Line {
    name: String,
    points: Vec<(f64, f64)>,
}

/// A chart's words: file, caption and axis descriptions.
struct Chart<'a> {
    file: &'a Path,
    caption: &'a str,
    x: &'a str,
    y: &'a str,
}

/// Draw `lines` on log-scaled x against linear y from 0, as an SVG file.
fn draw(chart: &Chart<'_>, lines: &[Line]) -> Result<()> {
    let pts = || lines.iter().flat_map(|l| l.points.iter());
    let x_max = pts().map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let x_min = pts().map(|p| p.0).fold(x_max, f64::min).max(1.0) / 1.5;
    let y_max = pts().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(chart.file, (720, 420)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", chart.file.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut c = ChartBuilder::on(&root)
        .caption(chart.caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..y_max)
        .map_err(|e| fail(&e))?;
    c.configure_mesh()
        .x_desc(chart.x)
        .y_desc(chart.y)
        .draw()
        .map_err(|e| fail(&e))?;
    for (i, line) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(line.points.iter().copied(), color))
            .map_err(|e| fail(&e))?
            .label(line.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        c.draw_series(
            line.points
                .iter()
                .map(|&p| Circle::new(p, 3, color.filled())),
        )
        .map_err(|e| fail(&e))?;
    }
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

/// Agent CPU against the rate achieved, one line per capacity series (passing steps only).
fn cpu_lines(capacity: &[(Series, Vec<CapacityRun>)]) -> Vec<Line> {
    capacity
        .iter()
        .map(|(series, runs)| Line {
            name: format!("{} B over {}", series.size, series.transport()),
            points: runs
                .iter()
                .filter(|r| r.ok)
                .map(|r| (r.achieved, r.cpu))
                .collect(),
        })
        .filter(|l| !l.points.is_empty())
        .collect()
}

/// Where the images go: beside BENCHMARKS.md for a full run, under target/ otherwise
/// (`prefix` names them apart).
pub struct Images {
    pub dir: PathBuf,
    pub prefix: &'static str,
}

impl Images {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}{name}", self.prefix))
    }
}

/// Draw the three curves; returns the file names written.
fn draw_all(
    images: &Images,
    capacity: &[(Series, Vec<CapacityRun>)],
    g: &Growth,
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let mut one = |name: &str, caption: &str, x: &str, y: &str, lines: Vec<Line>| -> Result<()> {
        if lines.iter().all(|l| l.points.is_empty()) {
            return Ok(());
        }
        let file = images.path(name);
        let chart = Chart {
            file: &file,
            caption,
            x,
            y,
        };
        draw(&chart, &lines).with_context(|| format!("writing {}", file.display()))?;
        written.push(format!("{}{name}", images.prefix));
        Ok(())
    };
    one(
        "cpu-vs-rate.svg",
        "Agent CPU against message rate (both ends watched)",
        "messages/s (both directions, log scale)",
        "agent CPU, % of one core",
        cpu_lines(capacity),
    )?;
    let kib = |kb: u64| kb as f64 / 1024.0;
    one(
        "rss-vs-sessions.svg",
        "Agent RSS against open sessions",
        "TCP sessions open (log scale)",
        "agent RSS, MiB",
        vec![Line {
            name: "RSS".into(),
            points: g.sessions.iter().map(|s| (s.0 as f64, kib(s.1))).collect(),
        }],
    )?;
    one(
        "rss-vs-size.svg",
        "Agent peak RSS against message size",
        "message size, bytes (log scale)",
        "agent peak RSS, MiB",
        vec![Line {
            name: "peak RSS".into(),
            points: g.sizes.iter().map(|s| (s.0 as f64, kib(s.1))).collect(),
        }],
    )?;
    one(
        "p50-vs-payload.svg",
        "Watched round trip: p50 on/off against payload size (TypeScript SDK, stdio)",
        "echoed payload, bytes each way (log scale)",
        "p50 with mcptap / p50 without",
        vec![Line {
            name: "p50 on/off (median of rounds)".into(),
            points: g
                .payloads
                .iter()
                .map(|p| (p.0 as f64, p.1.median))
                .collect(),
        }],
    )?;
    Ok(written)
}

/// The report's section 6: the tables, and the images drawn beside the report.
pub fn write_section(
    md: &mut String,
    s: &Scale,
    images: &Images,
    capacity: &[(Series, Vec<CapacityRun>)],
    g: &Growth,
) -> Result<()> {
    let _ = writeln!(md, "\n## 6. How cost grows\n");
    let _ = writeln!(
        md,
        "Agent CPU against the rate achieved is section 3's passing steps. RSS against open sessions is section 5's measurement at each count; RSS against message size is the agent's peak RSS while {} requests/s of each size cross a pipe for {} s (both ends watched). The payload curve is section 2's TypeScript stdio workload echoing a message of each size, off and on, rounds: {}.\n",
        s.size_curve_rate, s.capacity_secs, s.rounds
    );
    let _ = writeln!(
        md,
        "| sessions open | tracked | agent RSS MiB | per session KiB (RSS less idle {:.1} MiB, over the sessions) |\n|---|---|---|---|",
        g.idle_kb as f64 / 1024.0
    );
    for (count, rss, tracked) in &g.sessions {
        let _ = writeln!(
            md,
            "| {count} | {tracked} | {:.1} | {:.2} |",
            *rss as f64 / 1024.0,
            (*rss as f64 - g.idle_kb as f64) / *count as f64
        );
    }
    let _ = writeln!(
        md,
        "\n| message size B | agent peak RSS MiB | step passed |\n|---|---|---|"
    );
    for (size, rss, ok) in &g.sizes {
        let _ = writeln!(
            md,
            "| {size} | {:.1} | {} |",
            *rss as f64 / 1024.0,
            if *ok { "yes" } else { "no" }
        );
    }
    let _ = writeln!(
        md,
        "\n| echoed payload B | p50 on/off [quartiles] |\n|---|---|"
    );
    for (size, r) in &g.payloads {
        let _ = writeln!(md, "| {size} | {} |", r.show());
    }
    let _ = writeln!(md);
    for name in draw_all(images, capacity, g)? {
        let _ = writeln!(md, "![{name}]({name})\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_with_its_caption_and_a_mark_per_point() {
        let dir = std::env::temp_dir().join(format!("mcptap-growth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.svg");
        let chart = Chart {
            file: &file,
            caption: "Agent CPU against message rate",
            x: "messages/s",
            y: "% of one core",
        };
        let points = vec![(10_000.0, 12.0), (50_000.0, 49.0), (75_000.0, 78.0)];
        draw(
            &chart,
            &[Line {
                name: "200 B over pipe".into(),
                points,
            }],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&file).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("Agent CPU against message rate"));
        assert!(svg.contains("200 B over pipe"));
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
