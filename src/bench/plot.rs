//! The benchmark suite's PNG plots (plotters): pod start latency as a distribution, and
//! request throughput over time under a rolling update.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, bail};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Where Debian (fonts-dejavu-core) and other distributions keep DejaVu Sans.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
];

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 560);

/// Registers the plot font once; plotters' ab_glyph backend needs it for any text.
fn font() -> anyhow::Result<()> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let path = std::env::var("SKIFF_PLOT_FONT")
                .ok()
                .into_iter()
                .chain(FONT_PATHS.iter().map(|p| p.to_string()))
                .find(|p| Path::new(p).exists())
                .ok_or_else(|| {
                    "no TrueType font for the plots: install fonts-dejavu-core, or set \
                     SKIFF_PLOT_FONT to a .ttf file"
                        .to_string()
                })?;
            let bytes = std::fs::read(&path).map_err(|e| format!("reading {path}: {e}"))?;
            // plotters keeps registered fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| format!("{path} is not a usable TrueType font"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A titled chart on `root` with its axes and grid drawn: each axis is its range and
/// its description.
fn axes<'a, 'b: 'a>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    title: &str,
    x: (std::ops::Range<f64>, &str),
    y: (std::ops::Range<f64>, &str),
) -> anyhow::Result<Chart<'a, 'b>> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x.0, y.0)?;
    chart
        .configure_mesh()
        .x_desc(x.1)
        .y_desc(y.1)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 16))
        .axis_desc_style((FONT, 18))
        .draw()?;
    Ok(chart)
}

/// Draws the legend and writes the file.
fn finish<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    root: &DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    path: &Path,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 16))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn colour(i: usize) -> RGBColor {
    [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
    ][i % 4]
}

/// One latency distribution: (fraction of pods started, milliseconds) points.
pub struct Distribution {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Pod start latency as a CDF: milliseconds across, the share of pods started up.
pub fn latency_cdf(path: &Path, title: &str, series: &[Distribution]) -> anyhow::Result<()> {
    font()?;
    let max_ms = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0_f64, f64::max);
    if max_ms <= 0.0 {
        bail!("no latencies to plot");
    }
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = axes(
        &root,
        title,
        (
            0.0..max_ms * 1.05,
            "create to Running, seen through a watch (ms)",
        ),
        (0.0..100.0, "pods started (%)"),
    )?;
    for (i, s) in series.iter().enumerate() {
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(
                s.points.iter().map(|(q, ms)| (*ms, q * 100.0)),
                c.stroke_width(3),
            ))?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    finish(&mut chart, &root, path)
}

/// One bucket of the throughput plot.
pub struct Bucket {
    /// Seconds since the load started.
    pub at: f64,
    pub ok_per_sec: f64,
    pub failed_per_sec: f64,
}

/// Requests per second over time, with the rolling updates marked: a span from each
/// update's start to its end, labelled.
pub fn throughput(
    path: &Path,
    title: &str,
    buckets: &[Bucket],
    updates: &[(f64, f64, String)],
) -> anyhow::Result<()> {
    font()?;
    let end = buckets.last().map(|b| b.at).unwrap_or(1.0).max(1.0);
    let top = buckets
        .iter()
        .map(|b| b.ok_per_sec.max(b.failed_per_sec))
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.15;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = axes(
        &root,
        title,
        (0.0..end, "seconds"),
        (0.0..top, "requests/s"),
    )?;
    for (from, to, label) in updates {
        chart.draw_series(std::iter::once(Rectangle::new(
            [(*from, 0.0), (to.max(from + end / 500.0), top)],
            RGBColor(255, 200, 80).mix(0.35).filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            label.clone(),
            (*from, top * 0.97),
            (FONT, 15),
        )))?;
    }
    let ok = colour(0);
    chart
        .draw_series(LineSeries::new(
            buckets.iter().map(|b| (b.at, b.ok_per_sec)),
            ok.stroke_width(2),
        ))?
        .label("answered 2xx")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ok.stroke_width(3)));
    let failed = colour(1);
    chart
        .draw_series(LineSeries::new(
            buckets.iter().map(|b| (b.at, b.failed_per_sec)),
            failed.stroke_width(2),
        ))?
        .label("failed")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], failed.stroke_width(3)));
    finish(&mut chart, &root, path)
}
