//! PNG plots of a comparison: latency percentiles against offered rate, and throughput over
//! time. Text is drawn with a TrueType font found on the system (DejaVu Sans on Debian).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/lato/Lato-Regular.ttf",
];

/// Register a system font as "sans-serif" once; false when none is installed.
pub fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Colour of the n-th series (one per broker target).
pub fn colour(n: usize) -> RGBColor {
    [
        RGBColor(0, 114, 178),
        RGBColor(213, 94, 0),
        RGBColor(0, 158, 115),
        RGBColor(204, 121, 167),
        RGBColor(86, 180, 233),
    ][n % 5]
}

/// One broker's latency percentiles at each offered rate: (MiB/s, p50, p99, p99.9) in ms.
pub struct RateCurve {
    pub label: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// Three panels (p50, p99, p99.9), log-scale latency against offered MiB/s.
pub fn latency_vs_rate(path: &Path, title: &str, curves: &[RateCurve]) -> Result<()> {
    if !font_available() {
        return Err(anyhow!("no TrueType font found (looked in {FONT_PATHS:?})"));
    }
    let root = BitMapBackend::new(path, (1500, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
    let panels = root.split_evenly((1, 3));
    let all = || curves.iter().flat_map(|c| c.points.iter());
    let x_max = all().map(|p| p.0).fold(0.0, f64::max) * 1.1 + 1e-9;
    let y_min = all()
        .map(|p| p.1)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(1.0)
        * 0.5;
    let y_max = all().map(|p| p.3).fold(0.0, f64::max).max(1.0) * 2.0;
    for (panel, (name, pick)) in panels.iter().zip([
        (
            "p50",
            (|p: &(f64, f64, f64, f64)| p.1) as fn(&(f64, f64, f64, f64)) -> f64,
        ),
        ("p99", |p| p.2),
        ("p99.9", |p| p.3),
    ]) {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("publish latency {name}"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("offered MiB/s")
            .y_desc("ms")
            .draw()
            .map_err(err)?;
        for (i, c) in curves.iter().enumerate() {
            let col = colour(i);
            let pts: Vec<(f64, f64)> = c.points.iter().map(|p| (p.0, pick(p).max(y_min))).collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), col.stroke_width(2)))
                .map_err(err)?
                .label(c.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, col.filled())))
                .map_err(err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// MiB/s per second for each broker, with the end of the warm-up marked.
pub fn throughput_over_time(
    path: &Path,
    title: &str,
    x_desc: &str,
    series: &[(String, Vec<f64>)],
    bucket_s: f64,
    warmup_s: f64,
) -> Result<()> {
    if !font_available() {
        return Err(anyhow!("no TrueType font found (looked in {FONT_PATHS:?})"));
    }
    let root = BitMapBackend::new(path, (1000, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let x_max = series.iter().map(|s| s.1.len()).max().unwrap_or(1).max(1) as f64 * bucket_s;
    let y_max = series
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("MiB/s")
        .draw()
        .map_err(err)?;
    if warmup_s > 0.0 {
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(warmup_s, 0.0), (warmup_s, y_max)],
                BLACK.mix(0.6).stroke_width(2),
            )))
            .map_err(err)?
            .label("end of warm-up")
            .legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.6).stroke_width(2))
            });
    }
    for (i, (label, v)) in series.iter().enumerate() {
        let col = colour(i);
        // Each bucket drawn at its midpoint.
        let pts: Vec<(f64, f64)> = v
            .iter()
            .enumerate()
            .map(|(t, y)| ((t as f64 + 0.5) * bucket_s, *y))
            .collect();
        chart
            .draw_series(LineSeries::new(pts, col.stroke_width(2)))
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
