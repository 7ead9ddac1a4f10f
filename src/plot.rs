//! Pictures: precision–recall and precision@N curves (one chart per direction, one line per method,
//! PNG and SVG), and a grid of top results for a few queries (query → retrieved items).
//!
//! Text is drawn with DejaVu Sans (Debian's `fonts-dejavu-core`, installed by scripts/setup.sh).

use crate::metrics::DirectionMetrics;
use crate::report::Report;
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const FONT_CANDIDATES: &[&str] =
    &["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];

fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path =
            std::env::var("CMH_FONT").ok().map(PathBuf::from).or_else(|| FONT_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()));
        let path =
            path.ok_or_else(|| "no TrueType font found for plots: install fonts-dejavu-core or set CMH_FONT=FILE.ttf".to_string())?;
        let bytes: &'static [u8] = Box::leak(std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a usable TrueType font", path.display()))?;
        Ok(())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Curve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// Line colours: Tableau 10 (distinct on white and for the common colour-vision deficiencies when
/// combined with the marker shapes below); a line labelled `random…` is always grey (the floor).
const COLOURS: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const GREY: RGBColor = RGBColor(127, 127, 127);

/// Colour and marker shape (0 circle, 1 triangle, 2 square, 3 cross) of each curve.
fn curve_styles(curves: &[Curve]) -> Vec<(RGBColor, usize)> {
    let mut next = 0;
    curves
        .iter()
        .map(|c| {
            if c.label.starts_with("random") {
                (GREY, 3)
            } else {
                let s = (COLOURS[next % COLOURS.len()], next % 3);
                next += 1;
                s
            }
        })
        .collect()
}

/// Draws the curves, their markers and the legend on a chart whose x axis is `X` (linear or log).
fn draw_curves<'a, DB: DrawingBackend + 'a, X: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, RangedCoordf64>>,
    curves: &[Curve],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    for (c, (colour, shape)) in curves.iter().zip(curve_styles(curves)) {
        let line = colour.stroke_width(2);
        let fill = colour.filled();
        if c.label.starts_with("random") {
            chart.draw_series(DashedLineSeries::new(c.points.iter().copied(), 6, 4, line)).map_err(|e| anyhow!("{e}"))?;
        } else {
            chart.draw_series(LineSeries::new(c.points.iter().copied(), line)).map_err(|e| anyhow!("{e}"))?;
        }
        let pts = c.points.iter().copied();
        let label = c.label.clone();
        let seg = move |x: i32, y: i32| PathElement::new(vec![(x, y), (x + 24, y)], line);
        let e = |e| anyhow!("{e}");
        match shape {
            0 => {
                chart
                    .draw_series(pts.map(|p| Circle::new(p, 4, fill)))
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| EmptyElement::at((x, y)) + seg(0, 0) + Circle::new((12, 0), 4, fill));
            }
            1 => {
                chart
                    .draw_series(pts.map(|p| TriangleMarker::new(p, 5, fill)))
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| EmptyElement::at((x, y)) + seg(0, 0) + TriangleMarker::new((12, 0), 5, fill));
            }
            2 => {
                chart
                    .draw_series(pts.map(|p| EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], fill)))
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| EmptyElement::at((x, y)) + seg(0, 0) + Rectangle::new([(8, -4), (16, 4)], fill));
            }
            _ => {
                chart
                    .draw_series(pts.map(|p| Cross::new(p, 4, line)))
                    .map_err(e)?
                    .label(label)
                    .legend(move |(x, y)| EmptyElement::at((x, y)) + seg(0, 0) + Cross::new((12, 0), 4, line));
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// X axis of a chart: linear from 0, or logarithmic (for precision@N, whose N spans 1..1000).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum XAxis {
    Linear,
    Log,
}

fn draw_lines<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    xlabel: &str,
    ylabel: &str,
    curves: &[Curve],
    axis: XAxis,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let xs = curves.iter().flat_map(|c| c.points.iter().map(|p| p.0));
    let mut builder = ChartBuilder::on(&root);
    builder.caption(title, ("sans-serif", 22)).margin(14).x_label_area_size(45).y_label_area_size(55);
    match axis {
        XAxis::Linear => {
            let xmax = xs.fold(0.0f64, f64::max).max(1e-9) * 1.02;
            let mut chart = builder.build_cartesian_2d(0.0..xmax, 0.0..1.0f64).map_err(|e| anyhow!("{e}"))?;
            chart.configure_mesh().x_desc(xlabel).y_desc(ylabel).label_style(("sans-serif", 15)).draw().map_err(|e| anyhow!("{e}"))?;
            draw_curves(&mut chart, curves)
        }
        XAxis::Log => {
            let (lo, hi) = xs.filter(|x| *x > 0.0).fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
            if !(lo.is_finite() && hi > 0.0) {
                bail!("a logarithmic axis needs positive x values");
            }
            let mut chart = builder.build_cartesian_2d((lo / 1.15..hi * 1.15).log_scale(), 0.0..1.0f64).map_err(|e| anyhow!("{e}"))?;
            chart
                .configure_mesh()
                .x_desc(xlabel)
                .y_desc(ylabel)
                .label_style(("sans-serif", 15))
                .x_label_formatter(&|v| format!("{}", v.round() as i64))
                .draw()
                .map_err(|e| anyhow!("{e}"))?;
            draw_curves(&mut chart, curves)
        }
    }?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Writes `stem.png` and `stem.svg` with the given curves (y in [0, 1]).
pub(crate) fn line_chart(stem: &Path, title: &str, xlabel: &str, ylabel: &str, curves: &[Curve]) -> Result<()> {
    line_chart_axis(stem, title, xlabel, ylabel, curves, XAxis::Linear)
}

/// [`line_chart`] with a chosen x axis.
pub(crate) fn line_chart_axis(stem: &Path, title: &str, xlabel: &str, ylabel: &str, curves: &[Curve], axis: XAxis) -> Result<()> {
    ensure_font()?;
    if curves.is_empty() {
        bail!("{}: nothing to plot", stem.display());
    }
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    // Draw to temporary names (the extension picks the encoder), rename when complete.
    let tmp_png = stem.with_extension("tmp.png");
    let tmp_svg = stem.with_extension("tmp.svg");
    draw_lines(BitMapBackend::new(&tmp_png, (900, 640)).into_drawing_area(), title, xlabel, ylabel, curves, axis)
        .with_context(|| format!("drawing {}", png.display()))?;
    draw_lines(SVGBackend::new(&tmp_svg, (900, 640)).into_drawing_area(), title, xlabel, ylabel, curves, axis)
        .with_context(|| format!("drawing {}", svg.display()))?;
    std::fs::rename(&tmp_png, &png)?;
    std::fs::rename(&tmp_svg, &svg)?;
    Ok(())
}

/// PR-by-radius and precision@N charts of one retrieval direction (`name` in file names, `pretty`
/// in titles), one line per labelled metrics set. Returns the stems written.
pub fn plot_direction(dir: &Path, name: &str, pretty: &str, lines: &[(String, &DirectionMetrics)]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
    let mut written = Vec::new();
    let pr: Vec<Curve> = lines
        .iter()
        .map(|(l, m)| Curve {
            label: l.clone(),
            points: m.pr_curve.iter().filter(|p| p.recall > 0.0).map(|p| (p.recall, p.precision)).collect(),
        })
        .filter(|c| !c.points.is_empty())
        .collect();
    if !pr.is_empty() {
        let stem = dir.join(format!("pr_{name}"));
        line_chart(&stem, &format!("Precision–recall by Hamming radius, {pretty}"), "recall", "precision", &pr)?;
        written.push(stem);
    }
    let pn: Vec<Curve> = lines
        .iter()
        .map(|(l, m)| Curve { label: l.clone(), points: m.precision_at_n.iter().map(|&(n, p)| (n as f64, p)).collect() })
        .filter(|c| !c.points.is_empty())
        .collect();
    if !pn.is_empty() {
        let stem = dir.join(format!("precision_at_n_{name}"));
        line_chart_axis(&stem, &format!("Precision@N, {pretty}"), "N (top retrieved, log scale)", "precision", &pn, XAxis::Log)?;
        written.push(stem);
    }
    Ok(written)
}

/// Both directions of several runs (one line per method and code length), file names prefixed.
/// The curves use the database encoded by the hash functions (`i2t_encoded` / `t2i_encoded`), the
/// convention every method shares, so lines of methods with and without learned codes compare.
pub(crate) fn plot_reports(dir: &Path, prefix: &str, reports: &[&Report], title_suffix: &str) -> Result<Vec<PathBuf>> {
    let label = |r: &Report| format!("{} {}b", r.method, r.bits);
    let mut out = Vec::new();
    let i2t: Vec<(String, &DirectionMetrics)> = reports.iter().map(|r| (label(r), &r.i2t_encoded)).collect();
    out.extend(plot_direction(dir, &format!("{prefix}i2t"), &format!("image → text{title_suffix}"), &i2t)?);
    let t2i: Vec<(String, &DirectionMetrics)> = reports.iter().map(|r| (label(r), &r.t2i_encoded)).collect();
    out.extend(plot_direction(dir, &format!("{prefix}t2i"), &format!("text → image{title_suffix}"), &t2i)?);
    Ok(out)
}

/// One cell of a result grid.
#[derive(Clone, Debug)]
pub enum Cell {
    /// H×W×3 RGB pixels.
    Image(ndarray::Array3<u8>),
    Text(String),
}

/// A query and its retrieved items (each flagged relevant or not).
#[derive(Clone, Debug)]
pub struct GridRow {
    pub query: Cell,
    pub results: Vec<(Cell, bool)>,
}

const CELL: i32 = 96;

fn draw_cell<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, x: i32, y: i32, cell: &Cell, frame: Option<RGBColor>) -> Result<()>
where
    DB::ErrorType: 'static,
{
    if let Some(c) = frame {
        area.draw(&Rectangle::new([(x - 3, y - 3), (x + CELL + 3, y + CELL + 3)], c.filled())).map_err(|e| anyhow!("{e}"))?;
        area.draw(&Rectangle::new([(x, y), (x + CELL, y + CELL)], WHITE.filled())).map_err(|e| anyhow!("{e}"))?;
    }
    match cell {
        Cell::Image(im) => {
            let (h, w, _) = im.dim();
            let scale = (CELL as f64 / h.max(w) as f64).min(1.5);
            let (ox, oy) = (x + (CELL - (w as f64 * scale) as i32) / 2, y + (CELL - (h as f64 * scale) as i32) / 2);
            let s = scale.ceil() as i32;
            for r in 0..h {
                for c in 0..w {
                    let col = RGBColor(im[[r, c, 0]], im[[r, c, 1]], im[[r, c, 2]]);
                    let (px, py) = (ox + (c as f64 * scale) as i32, oy + (r as f64 * scale) as i32);
                    area.draw(&Rectangle::new([(px, py), (px + s, py + s)], col.filled())).map_err(|e| anyhow!("{e}"))?;
                }
            }
        }
        Cell::Text(t) => {
            // Wrap words into lines of ~14 characters, at most 6 lines.
            let mut lines: Vec<String> = vec![String::new()];
            for w in t.split_whitespace() {
                let last = lines.last_mut().unwrap();
                if !last.is_empty() && last.len() + 1 + w.len() > 14 {
                    lines.push(w.to_string());
                } else {
                    if !last.is_empty() {
                        last.push(' ');
                    }
                    last.push_str(w);
                }
            }
            for (i, l) in lines.iter().take(6).enumerate() {
                area.draw(&Text::new(l.clone(), (x + 4, y + 6 + 15 * i as i32), ("sans-serif", 13).into_font().color(&BLACK)))
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
    }
    Ok(())
}

fn draw_grid<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, title: &str, rows: &[GridRow]) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    root.draw(&Text::new(title.to_string(), (10, 8), ("sans-serif", 18).into_font())).map_err(|e| anyhow!("{e}"))?;
    root.draw(&Text::new("query".to_string(), (10 + CELL / 3, 36), ("sans-serif", 14).into_font())).map_err(|e| anyhow!("{e}"))?;
    root.draw(&Text::new(
        "top results (green frame = relevant, red = not)".to_string(),
        (30 + CELL * 2, 36),
        ("sans-serif", 14).into_font(),
    ))
    .map_err(|e| anyhow!("{e}"))?;
    for (r, row) in rows.iter().enumerate() {
        let y = 60 + r as i32 * (CELL + 14);
        draw_cell(&root, 10, y, &row.query, Some(RGBColor(90, 90, 90)))?;
        for (k, (cell, rel)) in row.results.iter().enumerate() {
            let color = if *rel { RGBColor(30, 160, 60) } else { RGBColor(210, 40, 40) };
            draw_cell(&root, 30 + (CELL + 10) * (k as i32 + 1), y, cell, Some(color))?;
        }
    }
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Writes `stem.png` and `stem.svg`: one row per query, its top results beside it.
pub(crate) fn result_grid(stem: &Path, title: &str, rows: &[GridRow]) -> Result<()> {
    ensure_font()?;
    if rows.is_empty() {
        bail!("{}: no queries to draw", stem.display());
    }
    let cols = rows.iter().map(|r| r.results.len()).max().unwrap_or(0) as u32 + 1;
    let size = (40 + (CELL as u32 + 10) * cols, 70 + (CELL as u32 + 14) * rows.len() as u32);
    let tmp_png = stem.with_extension("tmp.png");
    let tmp_svg = stem.with_extension("tmp.svg");
    draw_grid(BitMapBackend::new(&tmp_png, size).into_drawing_area(), title, rows)?;
    draw_grid(SVGBackend::new(&tmp_svg, size).into_drawing_area(), title, rows)?;
    std::fs::rename(&tmp_png, stem.with_extension("png"))?;
    std::fs::rename(&tmp_svg, stem.with_extension("svg"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_and_grids_are_written() {
        let d = tempfile::tempdir().unwrap();
        let c = vec![
            Curve { label: "a".into(), points: vec![(0.1, 0.9), (0.5, 0.6), (1.0, 0.2)] },
            Curve { label: "b".into(), points: vec![(0.2, 0.7), (1.0, 0.1)] },
        ];
        line_chart(&d.path().join("pr"), "PR", "recall", "precision", &c).unwrap();
        assert!(std::fs::metadata(d.path().join("pr.png")).unwrap().len() > 1000);
        let svg = std::fs::read_to_string(d.path().join("pr.svg")).unwrap();
        assert!(svg.contains("<svg") && svg.contains("recall"));
        let img = ndarray::Array3::from_shape_fn((8, 8, 3), |(r, c, k)| ((r * 30 + c * 10 + k * 5) % 255) as u8);
        let rows = vec![GridRow {
            query: Cell::Image(img.clone()),
            results: vec![(Cell::Text("grinning face with big eyes".into()), true), (Cell::Image(img), false)],
        }];
        result_grid(&d.path().join("grid"), "top results", &rows).unwrap();
        assert!(d.path().join("grid.png").is_file() && d.path().join("grid.svg").is_file());
        assert!(line_chart(&d.path().join("empty"), "t", "x", "y", &[]).is_err());
    }
}
