//! Plots of a run, as one self-contained SVG: throughput over time, and
//! the latency percentile distribution of each kind of operation (the
//! x axis in "nines", as HdrHistogram's plots draw it, so the tail shows).

use std::fmt::Write as _;

use kv_server::page::escape;

use crate::run::RunReport;
use crate::workload::Op;

const W: f64 = 720.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 36.0;
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

/// A round step for about `ticks` ticks up to `max`.
fn step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// How a panel's y axis maps values.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    /// Decades from 0.1 up (values below 0.1 drawn at 0.1).
    Log,
}

/// The lowest value a log axis shows.
const LOG_FLOOR: f64 = 0.1;

/// One panel at vertical offset `y0`: axes, `x_ticks` (position in 0..=1,
/// label), y ticks up to the largest value, and one line per series of
/// (x in 0..=1, y) points.
fn panel(
    out: &mut String,
    y0: f64,
    title: &str,
    y_label: &str,
    x_ticks: &[(f64, String)],
    series: &[(&str, Vec<(f64, f64)>)],
) {
    panel_scaled(out, y0, (title, y_label), x_ticks, series, Scale::Linear);
}

fn panel_scaled(
    out: &mut String,
    y0: f64,
    (title, y_label): (&str, &str),
    x_ticks: &[(f64, String)],
    series: &[(&str, Vec<(f64, f64)>)],
    scale: Scale,
) {
    let (x0, x1, top, bottom) = (LEFT, W - RIGHT, y0 + TOP, y0 + H - BOTTOM);
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max);
    let (unit, y_max) = match scale {
        Scale::Linear => {
            let unit = step(max.max(1e-9), 5.0);
            (unit, (max / unit).ceil().max(1.0) * unit)
        }
        // Ticks at each decade, up to the one above the largest value.
        Scale::Log => (10.0, 10f64.powf(max.max(1.0).log10().ceil())),
    };
    let sx = |x: f64| x0 + x.clamp(0.0, 1.0) * (x1 - x0);
    let sy = |y: f64| match scale {
        Scale::Linear => bottom - (y / y_max) * (bottom - top),
        Scale::Log => {
            let span = (y_max / LOG_FLOOR).log10();
            bottom - ((y.max(LOG_FLOOR) / LOG_FLOOR).log10() / span) * (bottom - top)
        }
    };
    let _ = write!(
        out,
        "<text x=\"{x0}\" y=\"{}\" class=\"title\">{}</text>",
        y0 + 18.0,
        escape(title)
    );
    let mut tick = if scale == Scale::Log { LOG_FLOOR } else { 0.0 };
    while tick <= y_max * 1.0001 {
        let y = sy(tick);
        let _ = write!(
            out,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{x1}\" y2=\"{y:.1}\" class=\"grid\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" class=\"tick\">{}</text>",
            x0 - 6.0,
            y + 4.0,
            trim(tick)
        );
        match scale {
            Scale::Linear => tick += unit,
            Scale::Log => tick *= unit,
        }
    }
    for (x, label) in x_ticks {
        let anchor = if *x >= 1.0 { "end" } else { "middle" };
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\" class=\"tick\">{}</text>",
            sx(*x),
            bottom + 16.0,
            escape(label)
        );
    }
    let _ = write!(
        out,
        "<text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\" class=\"tick\">{}</text>\
         <line x1=\"{x0}\" y1=\"{bottom}\" x2=\"{x1}\" y2=\"{bottom}\" class=\"axis\"/>",
        (top + bottom) / 2.0,
        (top + bottom) / 2.0,
        escape(y_label)
    );
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\" class=\"tick\">{}</text>",
            x1 - 90.0 * (series.len() - i) as f64,
            y0 + 18.0,
            escape(name)
        );
        if points.len() >= 2 {
            let coords: Vec<String> = points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
                .collect();
            let _ = write!(
                out,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                coords.join(" ")
            );
        }
    }
}

fn trim(v: f64) -> String {
    if v >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// The largest "nines" drawn: 99.999%.
const NINES: f64 = 5.0;

/// Where percentile `q` (0..1) lies on the nines axis, 0..=1.
fn nines(q: f64) -> f64 {
    (-(1.0 - q).max(10f64.powf(-NINES)).log10() / NINES).clamp(0.0, 1.0)
}

/// The opening of a two-panel SVG: its size, styles and white ground.
fn svg_open() -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{}\" viewBox=\"0 0 {W} {}\">\
         <style>.title{{font:bold 13px sans-serif}}.tick{{font:11px sans-serif;fill:#444}}\
         .grid{{stroke:#eee}}.axis{{stroke:#888}}</style><rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
        2.0 * H,
        2.0 * H
    )
}

/// The run's plots: throughput per second of the measured phase, and for
/// each kind of operation that ran, latency (ms) by percentile.
pub fn plot(report: &RunReport, title: &str) -> String {
    let mut out = svg_open();
    let seconds = report.timeline.len();
    // The last second is usually cut short by the end of the run: its
    // count is over the part that ran.
    let last_part =
        (report.elapsed.as_secs_f64() - seconds.saturating_sub(1) as f64).clamp(0.05, 1.0);
    // Less than half a second is the drain after the end: not drawn.
    let drawn = if last_part < 0.5 {
        seconds.saturating_sub(1)
    } else {
        seconds
    };
    let throughput: Vec<(f64, f64)> = report
        .timeline
        .iter()
        .take(drawn)
        .enumerate()
        .map(|(i, second)| {
            let part = if i + 1 == seconds { last_part } else { 1.0 };
            (
                i as f64 / (drawn.max(2) - 1) as f64,
                second.ops() as f64 / part,
            )
        })
        .collect();
    let seconds = drawn;
    let time_ticks: Vec<(f64, String)> = (0..=4)
        .map(|i| {
            (
                f64::from(i) / 4.0,
                format!(
                    "{:.0} s",
                    f64::from(i) / 4.0 * seconds.saturating_sub(1) as f64
                ),
            )
        })
        .collect();
    panel(
        &mut out,
        0.0,
        &format!("{title}: operations per second"),
        "ops/s",
        &time_ticks,
        &[("all operations", throughput)],
    );
    let quantiles: Vec<f64> = (0..=50)
        .map(|i| 1.0 - 10f64.powf(-NINES * f64::from(i) / 50.0))
        .collect();
    let mut series = Vec::new();
    for op in Op::ALL {
        let h = &report.per_op[op.index()].latency;
        if h.is_empty() {
            continue;
        }
        let points = quantiles
            .iter()
            .map(|q| (nines(*q), h.value_at_quantile(*q) as f64 / 1000.0))
            .collect();
        series.push((op.name(), points));
    }
    let nine_ticks: Vec<(f64, String)> = [0.0, 0.9, 0.99, 0.999, 0.9999, 0.99999]
        .iter()
        .map(|q| (nines(*q), format!("{}%", trim(q * 100.0))))
        .collect();
    panel(
        &mut out,
        H,
        &format!("{title}: latency by percentile"),
        "ms",
        &nine_ticks,
        &series,
    );
    out.push_str("</svg>\n");
    out
}

/// One step of a sweep: the rate offered and what the run measured.
#[derive(Debug)]
pub struct SweepPoint {
    /// Operations per second offered (open loop).
    pub offered: f64,
    /// The step's run.
    pub report: RunReport,
}

impl SweepPoint {
    /// Operations per second completed.
    pub fn achieved(&self) -> f64 {
        self.report.ops() as f64 / self.report.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A sweep's plots: latency (p50, p99, p99.9 of every operation) against
/// the offered load, and the throughput achieved against it (with the
/// offered load as a line: where they part, the cluster is saturated).
pub fn sweep(points: &[SweepPoint], title: &str) -> String {
    let mut out = svg_open();
    let max = points.iter().map(|p| p.offered).fold(0.0f64, f64::max);
    let unit = step(max.max(1.0), 5.0);
    let x_max = (max / unit).ceil().max(1.0) * unit;
    let x = |rate: f64| rate / x_max;
    let mut ticks = Vec::new();
    let mut tick = 0.0;
    while tick <= x_max * 1.0001 {
        ticks.push((x(tick), format!("{} ops/s", trim(tick))));
        tick += unit;
    }
    let latency = |q: f64| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter(|p| p.report.ops() > p.report.errors())
            .map(|p| {
                (
                    x(p.offered),
                    p.report.overall().value_at_quantile(q) as f64 / 1000.0,
                )
            })
            .collect()
    };
    // Log scale: past saturation latency grows by orders of magnitude,
    // and the milliseconds below it must still show.
    panel_scaled(
        &mut out,
        0.0,
        (
            &format!("{title}: latency against offered load"),
            "ms (log)",
        ),
        &ticks,
        &[
            ("p50", latency(0.5)),
            ("p99", latency(0.99)),
            ("p99.9", latency(0.999)),
        ],
        Scale::Log,
    );
    let offered: Vec<(f64, f64)> = points.iter().map(|p| (x(p.offered), p.offered)).collect();
    let achieved: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (x(p.offered), p.achieved()))
        .collect();
    panel(
        &mut out,
        H,
        &format!("{title}: throughput against offered load"),
        "ops/s",
        &ticks,
        &[("offered", offered), ("achieved", achieved)],
    );
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{OpStats, Second};

    fn seconds(ops: &[u64]) -> Vec<Second> {
        ops.iter()
            .map(|&ops| {
                let mut second = Second::new();
                for _ in 0..ops {
                    let _ = second.latency.record(1_000);
                }
                second
            })
            .collect()
    }

    #[test]
    fn a_plot_draws_throughput_and_a_percentile_line_per_operation_that_ran() {
        let mut per_op: Vec<OpStats> = Op::ALL.iter().map(|_| OpStats::default()).collect();
        for v in 1..=1000u64 {
            let _ = per_op[Op::Read.index()].latency.record(v * 10);
        }
        let _ = per_op[Op::Update.index()].latency.record(5_000);
        let _ = per_op[Op::Update.index()].latency.record(7_000);
        let report = RunReport {
            // The third second ran for half of it (a shorter tail would
            // be the drain, not drawn).
            elapsed: std::time::Duration::from_millis(2_500),
            per_op,
            final_keys: 0,
            converged_in: None,
            timeline: seconds(&[100, 300, 100]),
            started_unix_ms: 0,
        };
        let svg = plot(&report, "a<b");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        // Throughput, reads and updates: three lines; deletes did not run.
        assert_eq!(svg.matches("<polyline").count(), 3, "{svg}");
        assert!(svg.contains(">read<") && svg.contains(">update<") && !svg.contains(">delete<"));
        assert!(svg.contains(">99.9%<") && svg.contains(">0%<"), "{svg}");
        assert!(svg.contains("a&lt;b: operations per second"));
        // The 300 ops/s seconds (the last one half long) top a 300 scale.
        assert!(svg.contains(">300<") && !svg.contains(">400<"), "{svg}");
        assert!(svg.contains(">99.999%<"), "{svg}");
    }

    #[test]
    fn a_sweep_draws_latency_and_throughput_against_offered_load() {
        let step_at = |offered: f64, done: u64, latency_us: u64| {
            let mut per_op: Vec<OpStats> = Op::ALL.iter().map(|_| OpStats::default()).collect();
            for _ in 0..done {
                let _ = per_op[Op::Read.index()].latency.record(latency_us);
            }
            SweepPoint {
                offered,
                report: RunReport {
                    elapsed: std::time::Duration::from_secs(1),
                    per_op,
                    final_keys: 0,
                    converged_in: None,
                    timeline: seconds(&[done]),
                    started_unix_ms: 0,
                },
            }
        };
        // Saturated at the third step: 1,500 done of 3,000 offered.
        let points = [
            step_at(1_000.0, 1_000, 1_000),
            step_at(2_000.0, 2_000, 2_000),
            step_at(3_000.0, 1_500, 40_000),
        ];
        assert_eq!(points[2].achieved(), 1_500.0);
        let svg = sweep(&points, "sweep");
        // p50, p99, p99.9, offered and achieved.
        assert_eq!(svg.matches("<polyline").count(), 5, "{svg}");
        assert!(
            svg.contains(">3000 ops/s<") && svg.contains(">0 ops/s<"),
            "{svg}"
        );
        // The log latency scale: decades from 0.1 ms to 100 ms (above
        // the saturated step's 40 ms).
        let latency = svg.split("throughput against").next().unwrap_or_default();
        for decade in [">0.1<", ">1<", ">10<", ">100<"] {
            assert!(latency.contains(decade), "{decade}: {svg}");
        }
        assert!(!latency.contains(">1000<"), "{svg}");
        assert!(svg.contains("sweep: throughput against offered load"));
    }

    #[test]
    fn the_nines_axis_spreads_the_tail() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.9) - 0.2).abs() < 1e-9);
        assert!((nines(0.999) - 0.6).abs() < 1e-9);
        assert_eq!(nines(1.0), 1.0);
        assert_eq!(step(300.0, 5.0), 100.0);
        assert_eq!(step(7.0, 5.0), 2.0);
    }
}
