//! What a node's status page shows of the last minutes: request rates and
//! latency percentiles per operation, sampled every few seconds, and the
//! charts drawn from them (inline SVG: the page needs nothing from the
//! network).

use std::collections::VecDeque;
use std::fmt::Write as _;

use kv_coordinator::{Histogram, Metrics, OpMetrics};

/// How often the page's history takes a sample.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Samples kept: ten minutes at one every 5 s.
pub const SAMPLES: usize = 120;

/// The operations the page charts.
pub const OPS: [&str; 3] = ["get", "put", "delete"];

/// The counters of one operation at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct OpCounters {
    requests: u64,
    errors: u64,
    /// Cumulative count per latency bucket (upper bounds 2^i us).
    buckets: Vec<u64>,
}

impl OpCounters {
    fn of(op: &OpMetrics) -> Self {
        let (buckets, _, _) = Histogram::snapshot(&op.latency);
        OpCounters {
            requests: Metrics::get(&op.requests),
            errors: Metrics::get(&op.errors),
            buckets: buckets.into_iter().map(|(_, c)| c).collect(),
        }
    }
}

/// One interval of one operation: requests and errors per second, and the
/// 50th and 99th percentile of latency in microseconds (`None` without
/// requests).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpRates {
    /// Requests per second.
    pub per_sec: f64,
    /// Failed requests per second.
    pub errors_per_sec: f64,
    /// Median latency (the upper bound of its bucket), microseconds.
    pub p50_us: Option<u64>,
    /// 99th percentile latency (the upper bound of its bucket), microseconds.
    pub p99_us: Option<u64>,
}

/// The activity between two samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    /// When it ended (milliseconds since the Unix epoch).
    pub at_ms: u64,
    /// Per operation, in the order of [`OPS`].
    pub ops: [OpRates; 3],
}

/// The upper bound (microseconds) of the bucket where the `q` quantile of
/// the observations between two cumulative snapshots lies.
fn quantile(before: &[u64], after: &[u64], q: f64) -> Option<u64> {
    let delta: Vec<u64> = after
        .iter()
        .zip(before.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let total = *delta.last()?;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    delta.iter().position(|&c| c >= rank).map(|i| 1u64 << i)
}

/// Samples of a node's counters, oldest first, at most [`SAMPLES`].
#[derive(Debug, Default)]
pub struct Activity {
    /// (milliseconds since the Unix epoch, counters).
    samples: VecDeque<(u64, [OpCounters; 3])>,
}

impl Activity {
    /// Takes a sample of `metrics` at `now_ms` (milliseconds since the
    /// Unix epoch).
    pub fn sample(&mut self, metrics: &Metrics, now_ms: u64) {
        let ops = [
            OpCounters::of(&metrics.get),
            OpCounters::of(&metrics.put),
            OpCounters::of(&metrics.delete),
        ];
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now_ms, ops));
    }

    /// The intervals between consecutive samples, oldest first.
    pub fn intervals(&self) -> Vec<Interval> {
        self.samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .filter(|((t0, _), (t1, _))| t1 > t0)
            .map(|((t0, before), (t1, after))| {
                let secs = (t1 - t0) as f64 / 1000.0;
                let rates = |i: usize| {
                    let (b, a) = (&before[i], &after[i]);
                    OpRates {
                        per_sec: a.requests.saturating_sub(b.requests) as f64 / secs,
                        errors_per_sec: a.errors.saturating_sub(b.errors) as f64 / secs,
                        p50_us: quantile(&b.buckets, &a.buckets, 0.5),
                        p99_us: quantile(&b.buckets, &a.buckets, 0.99),
                    }
                };
                Interval {
                    at_ms: *t1,
                    ops: [rates(0), rates(1), rates(2)],
                }
            })
            .collect()
    }
}

const COLORS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

/// A small line chart: one polyline per series (name, points), scaled to
/// the largest value, with its title, the scale and a legend. Empty
/// series draw nothing; with no point at all it says so.
pub fn chart(title: &str, unit: &str, series: &[(&str, Vec<Option<f64>>)]) -> String {
    let (w, h, pad) = (360.0, 110.0, 18.0);
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().flatten())
        .fold(0.0f64, |m, v| m.max(*v));
    let len = series.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
    let mut svg = format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{}\">\
         <text x=\"4\" y=\"12\" class=\"t\">{}</text><text x=\"{}\" y=\"12\" text-anchor=\"end\" class=\"s\">max {} {}</text>\
         <line x1=\"0\" y1=\"{}\" x2=\"{w}\" y2=\"{}\" class=\"axis\"/>",
        super::escape(title),
        super::escape(title),
        w - 4.0,
        human(max),
        super::escape(unit),
        h - pad,
        h - pad,
    );
    if len == 0 || max <= 0.0 {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" class=\"s\">no requests yet</text>",
            w / 2.0,
            h / 2.0
        );
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\" class=\"s\">{}</text>",
            4.0 + 70.0 * i as f64,
            h - 4.0,
            super::escape(name)
        );
        if len == 0 || max <= 0.0 {
            continue;
        }
        let y = |v: f64| 16.0 + (1.0 - v / max) * (h - pad - 16.0);
        let coords: Vec<String> = if len == 1 {
            // One interval: a level line across the chart.
            points
                .first()
                .copied()
                .flatten()
                .map(|v| vec![format!("0.0,{:.1}", y(v)), format!("{w:.1},{:.1}", y(v))])
                .unwrap_or_default()
        } else {
            points
                .iter()
                .enumerate()
                .filter_map(|(x, v)| {
                    v.map(|v| format!("{:.1},{:.1}", x as f64 * w / (len - 1) as f64, y(v)))
                })
                .collect()
        };
        if coords.len() >= 2 {
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>",
                coords.join(" ")
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A number in a few characters (1.2k, 3.4M).
fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The page's charts of `intervals`: requests per second by operation,
/// and p50 and p99 latency (milliseconds) by operation.
pub fn charts(intervals: &[Interval]) -> String {
    let rate = |i: usize| -> Vec<Option<f64>> {
        intervals.iter().map(|x| Some(x.ops[i].per_sec)).collect()
    };
    let ms = |i: usize, p99: bool| -> Vec<Option<f64>> {
        intervals
            .iter()
            .map(|x| {
                let q = if p99 {
                    x.ops[i].p99_us
                } else {
                    x.ops[i].p50_us
                };
                q.map(|us| us as f64 / 1000.0)
            })
            .collect()
    };
    let mut out = chart(
        "requests per second",
        "/s",
        &[(OPS[0], rate(0)), (OPS[1], rate(1)), (OPS[2], rate(2))],
    );
    out.push_str(&chart(
        "p50 latency",
        "ms",
        &[
            (OPS[0], ms(0, false)),
            (OPS[1], ms(1, false)),
            (OPS[2], ms(2, false)),
        ],
    ));
    out.push_str(&chart(
        "p99 latency",
        "ms",
        &[
            (OPS[0], ms(0, true)),
            (OPS[1], ms(1, true)),
            (OPS[2], ms(2, true)),
        ],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_and_percentiles_come_from_the_deltas_between_samples() {
        let metrics = Metrics::default();
        let mut activity = Activity::default();
        activity.sample(&metrics, 100_000);
        // 10 s: 90 gets of 100 us and 10 of 10 ms; 5 failed puts.
        for _ in 0..90 {
            metrics.get.latency.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            metrics.get.latency.record(Duration::from_millis(10));
        }
        metrics
            .get
            .requests
            .fetch_add(100, std::sync::atomic::Ordering::Relaxed);
        metrics
            .put
            .requests
            .fetch_add(5, std::sync::atomic::Ordering::Relaxed);
        metrics
            .put
            .errors
            .fetch_add(5, std::sync::atomic::Ordering::Relaxed);
        activity.sample(&metrics, 110_000);
        // Nothing in the next 5 s.
        activity.sample(&metrics, 115_000);
        let intervals = activity.intervals();
        assert_eq!(intervals.len(), 2);
        let get = intervals[0].ops[0];
        assert_eq!(get.per_sec, 10.0);
        assert_eq!(get.p50_us, Some(128), "100 us lies in the bucket up to 128");
        assert_eq!(
            get.p99_us,
            Some(16_384),
            "10 ms lies in the bucket up to 16,384"
        );
        let put = intervals[0].ops[1];
        assert_eq!(
            (put.per_sec, put.errors_per_sec, put.p50_us),
            (0.5, 0.5, None)
        );
        assert_eq!(intervals[1].ops[0].per_sec, 0.0);
        assert_eq!(
            intervals[1].ops[0].p99_us, None,
            "no requests, no percentile"
        );
    }

    #[test]
    fn the_history_keeps_the_last_samples_only() {
        let metrics = Metrics::default();
        let mut activity = Activity::default();
        for t in 0..(SAMPLES as u64 + 30) {
            activity.sample(&metrics, t * 5_000);
        }
        let intervals = activity.intervals();
        assert_eq!(intervals.len(), SAMPLES - 1);
        assert_eq!(
            intervals.last().map(|i| i.at_ms),
            Some((SAMPLES as u64 + 29) * 5_000)
        );
    }

    #[test]
    fn a_chart_draws_a_line_per_series_or_says_there_is_nothing() {
        let svg = chart(
            "rate",
            "/s",
            &[
                ("get", vec![Some(1.0), Some(3.0), Some(2.0)]),
                ("put", vec![None, None, None]),
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 1, "{svg}");
        assert!(
            svg.contains("max 3.00 /s") && svg.contains(">get<") && svg.contains(">put<"),
            "{svg}"
        );
        // The largest value touches the top, zero the axis.
        assert!(
            svg.contains("points=\"0.0,") && svg.contains(" 180.0,16.0 "),
            "{svg}"
        );
        let one = chart("rate", "/s", &[("get", vec![Some(4.0)])]);
        assert!(one.contains("points=\"0.0,16.0 360.0,16.0\""), "{one}");
        let empty = chart("rate", "/s", &[("get", vec![Some(0.0), Some(0.0)])]);
        assert!(empty.contains("no requests yet") && !empty.contains("<polyline"));
        assert!(chart("a<b", "", &[]).contains("a&lt;b"));
    }
}
