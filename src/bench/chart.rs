//! The `--chart` SVG: two panels against PgWeir's pool size (log scale), TPS on top and p99
//! latency below, one line per (pool mode, client count); other targets (direct, `--target`)
//! are dashed horizontal lines for comparison, and the p99 panel marks `--p99-max`. Renders to
//! a string; the caller writes the file.

use plotters::prelude::*;

use super::stats::{PoolMode, StepResult};

const SIZE: (u32, u32) = (1000, 900);
/// The x axis is log2(pool size) in thousandths (integer coordinates take custom ticks).
const X_UNITS: f64 = 1000.0;

fn x_of(pool_size: u32) -> i32 {
    (f64::from(pool_size.max(1)).log2() * X_UNITS).round() as i32
}

/// A chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("the chart needs PgWeir results (pool sizes on its x axis)")]
    NoPoolSizes,
    #[error("drawing the chart: {0}")]
    Draw(String),
}

fn draw_err<E: std::fmt::Display>(e: E) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// One line of a panel.
struct Line {
    label: String,
    /// `(x_of(pool size), value)`; a reference line has one point and is drawn across.
    points: Vec<(i32, f64)>,
    reference: bool,
}

/// What a panel plots from a result.
#[derive(Clone, Copy)]
enum Metric {
    Tps,
    P99,
}

impl Metric {
    fn of(self, r: &StepResult) -> f64 {
        match self {
            Metric::Tps => r.tps,
            Metric::P99 => r.latency_ms.p99,
        }
    }
}

fn lines(results: &[StepResult], metric: Metric) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    let mut keys: Vec<(Option<PoolMode>, String, u32)> = Vec::new();
    for r in results {
        let key = (r.pool_mode, r.target.clone(), r.clients);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    for (mode, target, clients) in keys {
        let mut rows: Vec<&StepResult> =
            results.iter().filter(|r| r.pool_mode == mode && r.target == target && r.clients == clients).collect();
        rows.sort_by_key(|r| r.pool_size);
        let (label, reference) = match mode {
            Some(m) => (format!("{target} {m}, {clients} clients"), false),
            None => (format!("{target}, {clients} clients"), true),
        };
        let points = rows.iter().map(|r| (r.pool_size.map_or(0, x_of), metric.of(r))).collect();
        out.push(Line { label, points, reference });
    }
    out
}

/// Renders the SVG. `title` names the workload and mode.
pub fn render(results: &[StepResult], p99_max_ms: f64, title: &str) -> Result<String, ChartError> {
    let mut sizes: Vec<u32> = results.iter().filter_map(|r| r.pool_size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let (Some(&lo), Some(&hi)) = (sizes.first(), sizes.last()) else {
        return Err(ChartError::NoPoolSizes);
    };
    let (lo, hi) = (x_of(lo), x_of(hi));
    let pad = if hi > lo { (hi - lo) / 16 } else { X_UNITS as i32 / 2 };
    let x_range = (lo - pad)..(hi + pad);
    let ticks: Vec<i32> = sizes.iter().map(|n| x_of(*n)).collect();

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(draw_err)?;
        let (top, bottom) = root.split_vertically(SIZE.1 / 2 - 20);
        let panels = [
            (&top, Metric::Tps, "TPS", "TPS by pool size", None, 0),
            (&bottom, Metric::P99, "p99 latency (ms)", "p99 latency by pool size", Some(p99_max_ms), 1),
        ];
        for (area, metric, y_desc, caption, limit, decimals) in panels {
            let lines = lines(results, metric);
            let top_value = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).chain(limit).fold(0.0, f64::max);
            let y_max = if top_value > 0.0 { top_value * 1.15 } else { 1.0 };
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                .build_cartesian_2d(x_range.clone().with_key_points(ticks.clone()), 0.0..y_max)
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc("pool size")
                .y_desc(y_desc)
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 16))
                .y_label_formatter(&|y| format!("{y:.decimals$}"))
                .x_label_formatter(&|x| format!("{:.0}", (f64::from(*x) / X_UNITS).exp2()))
                .draw()
                .map_err(draw_err)?;
            for (i, line) in lines.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let style = color.stroke_width(2);
                let series = if line.reference {
                    let y = line.points.first().map_or(0.0, |p| p.1);
                    let ends = [(x_range.start, y), (x_range.end, y)];
                    chart.draw_series(DashedLineSeries::new(ends, 8, 6, style)).map_err(draw_err)?
                } else {
                    chart.draw_series(LineSeries::new(line.points.clone(), style).point_size(4)).map_err(draw_err)?
                };
                series
                    .label(line.label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            }
            if let Some(limit) = limit {
                let style = BLACK.mix(0.6).stroke_width(1);
                chart
                    .draw_series(DashedLineSeries::new([(x_range.start, limit), (x_range.end, limit)], 4, 4, style))
                    .map_err(draw_err)?
                    .label(format!("--p99-max {limit} ms"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font(("sans-serif", 15))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::LatencyMs;

    fn step(target: &str, mode: Option<PoolMode>, pool: Option<u32>, tps: f64, p99: f64) -> StepResult {
        StepResult {
            target: target.into(),
            pool_mode: mode,
            pool_size: pool,
            clients: 4,
            clients_connected: 4,
            transactions: 1,
            duration_s: 1.0,
            tps,
            latency_ms: LatencyMs { p50: 1.0, p95: 1.0, p99, max: p99 },
            errors: 0,
            first_error: None,
            server_connections: None,
        }
    }

    #[test]
    fn renders_lines_and_reference_lines() {
        let t = Some(PoolMode::Transaction);
        let rs = vec![
            step("direct", None, None, 900.0, 3.0),
            step("pgweir", t, Some(2), 500.0, 9.0),
            step("pgweir", t, Some(4), 800.0, 4.0),
        ];
        let svg = render(&rs, 50.0, "select-only, simple").unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{}", &svg[..100.min(svg.len())]);
        for text in [
            "TPS by pool size",
            "pgweir transaction, 4 clients",
            "direct, 4 clients",
            "--p99-max 50 ms",
            ">\n2\n</text>",
            ">\n4\n</text>",
        ] {
            assert!(svg.contains(text), "no {text:?} in the SVG");
        }
        let tps = lines(&rs, Metric::Tps);
        assert_eq!(tps.len(), 2);
        assert!(tps[0].reference && !tps[1].reference);
        assert_eq!(tps[1].points, vec![(1000, 500.0), (2000, 800.0)]);
    }

    #[test]
    fn needs_pool_sizes() {
        let rs = vec![step("direct", None, None, 900.0, 3.0)];
        assert!(matches!(render(&rs, 50.0, "x"), Err(ChartError::NoPoolSizes)));
    }
}
