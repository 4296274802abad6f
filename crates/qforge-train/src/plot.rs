//! PNG training curves (plotters). Labels need a TrueType font: DejaVu Sans from the system
//! when present; without it the curves are drawn unlabeled rather than failing the run.

use std::path::Path;

/// A chart that could not be drawn or written; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot plot: {message}", path.display())]
pub struct PlotError {
    pub path: std::path::PathBuf,
    pub message: String,
}

type Result<T> = std::result::Result<T, PlotError>;

/// Maps a drawing error (or a message) to one naming the chart's file.
fn failed<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
use plotters::prelude::*;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
];

fn register_font() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
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

/// One named series of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// The y axis for finite values `ys`: their range padded by 5%, but never below zero when no
/// value is (a loss curve must not seem to dip under zero).
fn y_axis(ys: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = ys.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let pad = ((high - low) * 0.05).max(1e-6);
    let bottom = if low >= 0.0 {
        (low - pad).max(0.0)
    } else {
        low - pad
    };
    (bottom, high + pad)
}

/// Writes a line chart of `series` to `path` (800x480 PNG).
pub fn line_chart(path: &Path, title: &str, x_label: &str, series: &[Series]) -> Result<()> {
    let points: Vec<&(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(_, y)| y.is_finite())
        .collect();
    if points.is_empty() {
        return Err(failed(path)("nothing to plot"));
    }
    let (x0, x1) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| {
        (a.min(*x), b.max(*x))
    });
    let (y_low, y_high) = y_axis(points.iter().map(|(_, y)| *y));
    let labels = register_font();
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(failed(path))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(20)
        .x_label_area_size(if labels { 40 } else { 10 })
        .y_label_area_size(if labels { 60 } else { 10 });
    if labels {
        builder.caption(title, ("sans-serif", 24));
    }
    let mut chart = builder
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), y_low..y_high)
        .map_err(failed(path))?;
    let mut mesh = chart.configure_mesh();
    if labels {
        mesh.x_desc(x_label);
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(failed(path))?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN];
    for (i, s) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let drawn = chart
            .draw_series(LineSeries::new(
                s.points.iter().copied().filter(|(_, y)| y.is_finite()),
                color.stroke_width(2),
            ))
            .map_err(failed(path))?;
        if labels {
            drawn.label(s.name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
        if s.points.len() < 30 {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(failed(path))?;
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(failed(path))?;
    }
    root.present().map_err(failed(path))?;
    Ok(())
}

/// Writes a bar chart of named values to `path` (800x480 PNG); bars are labelled when a font
/// is available.
pub fn bar_chart(path: &Path, title: &str, bars: &[(String, f64)]) -> Result<()> {
    if bars.is_empty() {
        return Err(failed(path)("nothing to plot"));
    }
    let top = bars
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let labels = register_font();
    let root = BitMapBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(failed(path))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(20)
        .x_label_area_size(if labels { 60 } else { 10 })
        .y_label_area_size(if labels { 60 } else { 10 });
    if labels {
        builder.caption(title, ("sans-serif", 24));
    }
    let n = bars.len();
    let mut chart = builder
        .build_cartesian_2d(0f64..n as f64, 0f64..top)
        .map_err(failed(path))?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh();
    if labels {
        let names: Vec<String> = bars.iter().map(|(name, _)| name.clone()).collect();
        let formatter = move |x: &f64| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 1e-6 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        mesh.x_labels(2 * n + 1)
            .x_label_formatter(&formatter)
            .draw()
    } else {
        mesh.x_labels(0).y_labels(0).draw()
    }
    .map_err(failed(path))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            let x = i as f64;
            Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, v.max(0.0))],
                BLUE.mix(0.7).filled(),
            )
        }))
        .map_err(failed(path))?;
    root.present().map_err(failed(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_curves_get_no_negative_axis() {
        // An SFT loss falling from 6 to nearly 0: the padded axis used to start at -0.3.
        assert_eq!(y_axis([6.0, 2.0, 0.001].into_iter()).0, 0.0);
        let (low, high) = y_axis([-1.0, 1.0].into_iter());
        assert!(low < -1.0 && high > 1.0);
        let (low, high) = y_axis([2.0, 3.0].into_iter());
        assert!((low - 1.95).abs() < 1e-9 && (high - 3.05).abs() < 1e-9);
    }
}
