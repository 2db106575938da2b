//! SVG charts drawn with plotters' SVG backend (text is left to the SVG viewer's fonts, so no
//! system font is needed to draw): confusion matrices, training curves, and the 7 x 17 prior
//! table (docs/METHOD.md section 2) learned beside its initial value.
//!
//! Each function returns the SVG text; the caller writes it.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::ablation::Spread;
use crate::error::{ReportError, Result};
use crate::report::{CurvePoint, PriorReport};
use aue_contract::SplitName;

const FONT: &str = "sans-serif";
const TITLE_SIZE: f64 = 22.0;
const LABEL_SIZE: f64 = 17.0;
const CELL_SIZE: f64 = 19.0;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn plot_err(what: &str) -> impl FnOnce(String) -> ReportError + '_ {
    move |msg| ReportError::Plot { what: what.to_string(), msg }
}

/// Turns a plotters error into a message.
trait Msg<T> {
    fn msg(self) -> std::result::Result<T, String>;
}

impl<T, E: std::fmt::Debug> Msg<T> for std::result::Result<T, E> {
    fn msg(self) -> std::result::Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

fn text_style(size: f64, color: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    TextStyle {
        font: (FONT, size).into_font(),
        color: color.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

/// Linear interpolation between two colours, `t` in [0, 1].
fn mix(a: RGBColor, b: RGBColor, t: f64) -> RGBColor {
    let t = t.clamp(0.0, 1.0);
    let c = |x: u8, y: u8| (f64::from(x) + (f64::from(y) - f64::from(x)) * t).round() as u8;
    RGBColor(c(a.0, b.0), c(a.1, b.1), c(a.2, b.2))
}

/// A sequential scale white -> `dark` over [0, 1].
fn sequential(dark: RGBColor) -> impl Fn(f64) -> RGBColor {
    move |t| mix(RGBColor(255, 255, 255), dark, t)
}

/// A diverging scale blue <- white -> red over [-1, 1].
fn diverging(t: f64) -> RGBColor {
    if t < 0.0 {
        mix(RGBColor(255, 255, 255), RGBColor(33, 102, 172), -t)
    } else {
        mix(RGBColor(255, 255, 255), RGBColor(178, 24, 43), t)
    }
}

/// Black or white, whichever reads better on `bg`.
fn ink_on(bg: RGBColor) -> RGBColor {
    let lum = 0.299 * f64::from(bg.0) + 0.587 * f64::from(bg.1) + 0.114 * f64::from(bg.2);
    if lum < 140.0 { WHITE } else { BLACK }
}

/// A grid of coloured cells with text, row names on the left and column names below.
struct Heatmap<'a> {
    title: &'a str,
    rows: &'a [String],
    cols: &'a [String],
    /// Colour position per cell (already scaled to the colour map's domain); `None`: grey.
    shade: Vec<Vec<Option<f64>>>,
    /// Text lines per cell.
    text: Vec<Vec<Vec<String>>>,
    colour: &'a dyn Fn(f64) -> RGBColor,
    x_title: &'a str,
    y_title: &'a str,
    cell_w: i32,
    cell_h: i32,
    /// Font size of the first text line of a cell (later lines are 4 smaller).
    text_size: f64,
    /// Colour bar: (label, ticks as (position in domain, text)).
    bar: Option<(&'a str, Vec<(f64, String)>)>,
    /// Domain of the colour positions (min, max) for the bar.
    domain: (f64, f64),
}

/// Rough width of `text` at font size `size` in pixels (sans-serif glyphs average about 0.55
/// em; 0.6 leaves room).
fn text_width(text: &str, size: f64) -> i32 {
    (text.chars().count() as f64 * size * 0.6).ceil() as i32
}

impl Heatmap<'_> {
    /// Pixel size the heatmap needs.
    fn size(&self) -> (i32, i32) {
        let (left, top, bottom, right) = self.margins();
        (
            left + self.cell_w * self.cols.len() as i32 + right,
            top + self.cell_h * self.rows.len() as i32 + bottom,
        )
    }

    fn vertical_columns(&self) -> bool {
        self.cols.iter().any(|c| text_width(c, LABEL_SIZE / 1.24) > self.cell_w - 6)
    }

    fn margins(&self) -> (i32, i32, i32, i32) {
        let row_w = self.rows.iter().map(|r| text_width(r, LABEL_SIZE / 1.24)).max().unwrap_or(0);
        let col_h = if self.vertical_columns() {
            self.cols.iter().map(|c| text_width(c, LABEL_SIZE / 1.24)).max().unwrap_or(0) + 12
        } else {
            26
        };
        let right = if self.bar.is_some() { 110 } else { 20 };
        (row_w + 50, 48, col_h + 40, right)
    }

    fn draw(&self, area: &Area) -> std::result::Result<(), String> {
        let (left, top, _, _) = self.margins();
        let (w, _) = self.size();
        let (cw, ch) = (self.cell_w, self.cell_h);
        area.draw_text(
            self.title,
            &text_style(TITLE_SIZE, BLACK, HPos::Center, VPos::Top),
            (w / 2, 10),
        )
        .msg()?;
        let grid_bottom = top + ch * self.rows.len() as i32;
        let grid_right = left + cw * self.cols.len() as i32;
        for (i, row) in self.rows.iter().enumerate() {
            let y = top + ch * i as i32;
            area.draw_text(
                row,
                &text_style(LABEL_SIZE, BLACK, HPos::Right, VPos::Center),
                (left - 8, y + ch / 2),
            )
            .msg()?;
            for (j, _) in self.cols.iter().enumerate() {
                let x = left + cw * j as i32;
                let bg = self.shade[i][j].map_or(RGBColor(225, 225, 225), |t| (self.colour)(t));
                area.draw(&Rectangle::new([(x, y), (x + cw, y + ch)], bg.filled())).msg()?;
                area.draw(&Rectangle::new(
                    [(x, y), (x + cw, y + ch)],
                    RGBColor(255, 255, 255).stroke_width(1),
                ))
                .msg()?;
                let lines = &self.text[i][j];
                let ink = ink_on(bg);
                let n = lines.len() as i32;
                for (k, line) in lines.iter().enumerate() {
                    let size = if k == 0 { self.text_size } else { self.text_size - 4.0 };
                    let dy = (k as i32 * 2 - (n - 1)) * ch / (2 * n + 2);
                    area.draw_text(
                        line,
                        &text_style(size, ink, HPos::Center, VPos::Center),
                        (x + cw / 2, y + ch / 2 + dy),
                    )
                    .msg()?;
                }
            }
        }
        area.draw(&Rectangle::new([(left, top), (grid_right, grid_bottom)], BLACK.stroke_width(1)))
            .msg()?;
        let vertical = self.vertical_columns();
        let mut col_bottom = grid_bottom + 26;
        for (j, col) in self.cols.iter().enumerate() {
            let x = left + cw * j as i32 + cw / 2;
            if vertical {
                let style = text_style(LABEL_SIZE, BLACK, HPos::Right, VPos::Center)
                    .transform(FontTransform::Rotate270);
                area.draw_text(col, &style, (x, grid_bottom + 8)).msg()?;
                col_bottom = col_bottom.max(grid_bottom + 12 + text_width(col, LABEL_SIZE / 1.24));
            } else {
                area.draw_text(
                    col,
                    &text_style(LABEL_SIZE, BLACK, HPos::Center, VPos::Top),
                    (x, grid_bottom + 6),
                )
                .msg()?;
            }
        }
        area.draw_text(
            self.x_title,
            &text_style(LABEL_SIZE + 1.0, BLACK, HPos::Center, VPos::Top),
            ((left + grid_right) / 2, col_bottom + 4),
        )
        .msg()?;
        let y_style = text_style(LABEL_SIZE + 1.0, BLACK, HPos::Center, VPos::Center)
            .transform(FontTransform::Rotate270);
        area.draw_text(self.y_title, &y_style, (14, (top + grid_bottom) / 2)).msg()?;
        if let Some((label, ticks)) = &self.bar {
            let x0 = grid_right + 24;
            let (lo, hi) = self.domain;
            let steps = 50;
            let h = grid_bottom - top;
            for s in 0..steps {
                let t0 = top + h * s / steps;
                let t1 = top + h * (s + 1) / steps;
                let v = hi - (hi - lo) * (f64::from(s) + 0.5) / f64::from(steps);
                area.draw(&Rectangle::new([(x0, t0), (x0 + 16, t1)], (self.colour)(v).filled()))
                    .msg()?;
            }
            area.draw(&Rectangle::new([(x0, top), (x0 + 16, grid_bottom)], BLACK.stroke_width(1)))
                .msg()?;
            for (v, text) in ticks {
                let y = top + ((hi - v) / (hi - lo) * f64::from(h)).round() as i32;
                area.draw(&PathElement::new(vec![(x0 + 16, y), (x0 + 21, y)], BLACK)).msg()?;
                area.draw_text(
                    text,
                    &text_style(LABEL_SIZE - 2.0, BLACK, HPos::Left, VPos::Center),
                    (x0 + 24, y),
                )
                .msg()?;
            }
            let style = text_style(LABEL_SIZE - 1.0, BLACK, HPos::Center, VPos::Center)
                .transform(FontTransform::Rotate90);
            area.draw_text(label, &style, (x0 + 76, (top + grid_bottom) / 2)).msg()?;
        }
        Ok(())
    }
}

/// The SVG of a confusion matrix: colours = row-normalised share, cells = counts (and the row
/// percentage), class names on both axes. `names` and `confusion` are in display order.
pub fn confusion_svg(title: &str, names: &[String], confusion: &[Vec<u64>]) -> Result<String> {
    let k = names.len();
    let shade = confusion
        .iter()
        .map(|row| {
            let total: u64 = row.iter().sum();
            row.iter().map(|&c| (total > 0).then(|| c as f64 / total as f64)).collect()
        })
        .collect();
    let text = confusion
        .iter()
        .map(|row| {
            let total: u64 = row.iter().sum();
            row.iter()
                .map(|&c| {
                    if total > 0 {
                        vec![c.to_string(), format!("{:.0}%", 100.0 * c as f64 / total as f64)]
                    } else {
                        vec![c.to_string()]
                    }
                })
                .collect()
        })
        .collect();
    let rows: Vec<String> = names
        .iter()
        .zip(confusion)
        .map(|(n, row)| {
            let total: u64 = row.iter().sum();
            if total == 0 { format!("{n} (no samples)") } else { format!("{n} ({total})") }
        })
        .collect();
    let colour = sequential(RGBColor(8, 69, 148));
    let cell = if k <= 7 { 86 } else { 66 };
    let map = Heatmap {
        title,
        rows: &rows,
        cols: names,
        shade,
        text,
        colour: &colour,
        x_title: "predicted class",
        y_title: "true class (test samples)",
        cell_w: cell,
        cell_h: 56,
        text_size: CELL_SIZE,
        bar: Some((
            "share of the true class's samples",
            vec![(0.0, "0%".into()), (0.5, "50%".into()), (1.0, "100%".into())],
        )),
        domain: (0.0, 1.0),
    };
    render(title, map.size(), |area| map.draw(area))
}

/// Draws into an SVG string of `size`.
fn render(
    what: &str,
    size: (i32, i32),
    draw: impl FnOnce(&Area) -> std::result::Result<(), String>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (size.0.max(1) as u32, size.1.max(1) as u32))
            .into_drawing_area();
        area.fill(&WHITE).msg().map_err(plot_err(what))?;
        draw(&area).map_err(plot_err(what))?;
        area.present().msg().map_err(plot_err(what))?;
    }
    Ok(svg)
}

const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const PURPLE: RGBColor = RGBColor(148, 103, 189);
const GREY: RGBColor = RGBColor(120, 120, 120);

/// One line of a curve panel.
struct Series {
    label: String,
    colour: RGBColor,
    dashed: bool,
    points: Vec<(i32, f64)>,
}

/// A legend entry: label, colour, dashed.
type LegendEntry = (String, RGBColor, bool);

/// Draws a short line sample (dashed or solid) from `(x, y)`, 28 px long.
fn line_sample(
    area: &Area,
    (x, y): (i32, i32),
    colour: RGBColor,
    dashed: bool,
) -> std::result::Result<(), String> {
    let style = colour.stroke_width(if colour == GREY { 1 } else { 2 });
    if dashed {
        for k in 0..3 {
            area.draw(&PathElement::new(vec![(x + 11 * k, y), (x + 11 * k + 6, y)], style))
                .msg()?;
        }
    } else {
        area.draw(&PathElement::new(vec![(x, y), (x + 28, y)], style)).msg()?;
    }
    Ok(())
}

/// A legend in two columns under a chart (outside the plot, so it never hides a line).
fn legend(area: &Area, entries: &[LegendEntry]) -> std::result::Result<(), String> {
    for (k, (label, colour, dashed)) in entries.iter().enumerate() {
        let x = 84 + 280 * (k % 2) as i32;
        let y = 12 + 24 * (k / 2) as i32;
        line_sample(area, (x, y), *colour, *dashed)?;
        area.draw_text(
            label,
            &text_style(LABEL_SIZE - 2.0, BLACK, HPos::Left, VPos::Center),
            (x + 36, y),
        )
        .msg()?;
    }
    Ok(())
}

/// Height of a two-column legend of `n` entries.
fn legend_height(n: usize) -> i32 {
    24 * n.div_ceil(2) as i32 + 8
}

#[allow(clippy::too_many_arguments)]
fn panel(
    area: &Area,
    caption: &str,
    y_desc: &str,
    y_range: (f64, f64),
    y_format: &dyn Fn(&f64) -> String,
    max_epoch: i32,
    series: &[Series],
    best_epoch: Option<i32>,
    legend_entries: usize,
) -> std::result::Result<(), String> {
    let shown: Vec<&Series> = series.iter().filter(|s| !s.points.is_empty()).collect();
    let mut entries: Vec<LegendEntry> =
        shown.iter().map(|s| (s.label.clone(), s.colour, s.dashed)).collect();
    if let Some(b) = best_epoch {
        entries.push((format!("best epoch {b} (test-set selection)"), GREY, true));
    }
    let (_, h) = area.dim_in_pixel();
    // Both panels reserve the same legend height so that their plots line up.
    let (plot, legend_area) = area.split_vertically(h as i32 - legend_height(legend_entries));
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, (FONT, TITLE_SIZE - 2.0))
        .margin(14)
        .x_label_area_size(52)
        .y_label_area_size(70)
        .build_cartesian_2d(0..max_epoch + 1, y_range.0..y_range.1)
        .msg()?;
    let int_label =
        |v: &i32| if *v >= 1 && *v <= max_epoch { v.to_string() } else { String::new() };
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels((max_epoch + 2).min(12) as usize)
        .x_label_formatter(&int_label)
        .y_label_formatter(y_format)
        .max_light_lines(1)
        .label_style((FONT, LABEL_SIZE - 2.0))
        .axis_desc_style((FONT, LABEL_SIZE))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()
        .msg()?;
    if let Some(b) = best_epoch {
        let span = vec![(b, y_range.0), (b, y_range.1)];
        chart.draw_series(DashedLineSeries::new(span, 6, 5, GREY.stroke_width(1))).msg()?;
    }
    for s in shown {
        let style = s.colour.stroke_width(2);
        if s.dashed {
            chart.draw_series(DashedLineSeries::new(s.points.clone(), 8, 5, style)).msg()?;
        } else {
            chart.draw_series(LineSeries::new(s.points.clone(), style)).msg()?;
        }
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 3, s.colour.filled()))).msg()?;
    }
    legend(&legend_area, &entries)
}

/// The SVG of a run's training curves: loss (train, test) and accuracies (%) per epoch, with the
/// best epoch marked. Stage 2 adds its AU F1 curves.
pub fn curves_svg(title: &str, curve: &[CurvePoint], best_epoch: Option<usize>) -> Result<String> {
    let max_epoch = curve.iter().map(|p| p.epoch).max().unwrap_or(1).max(1) as i32;
    let pick = |split: SplitName, f: &dyn Fn(&CurvePoint) -> Option<f64>| -> Vec<(i32, f64)> {
        curve
            .iter()
            .filter(|p| p.split == split)
            .filter_map(|p| f(p).filter(|v| v.is_finite()).map(|v| (p.epoch as i32, v)))
            .collect()
    };
    // (label, colour, dashed, split, value) of each line.
    type Spec = (&'static str, RGBColor, bool, SplitName, fn(&CurvePoint) -> Option<f64>);
    let series = |specs: &[Spec]| -> Vec<Series> {
        specs
            .iter()
            .map(|&(label, colour, dashed, split, value)| Series {
                label: label.into(),
                colour,
                dashed,
                points: pick(split, &value),
            })
            .collect()
    };
    fn pct(v: Option<f64>) -> Option<f64> {
        v.map(|v| 100.0 * v)
    }
    use SplitName::{Test, Train};
    let loss = series(&[
        ("train loss", BLUE, false, Train, |p| Some(p.loss)),
        ("test loss", ORANGE, false, Test, |p| Some(p.loss)),
    ]);
    let acc = series(&[
        ("train mean class acc.", BLUE, false, Train, |p| pct(p.mean_class_acc)),
        ("test mean class acc. (Ave.)", ORANGE, false, Test, |p| pct(p.mean_class_acc)),
        ("test overall acc.", ORANGE, true, Test, |p| pct(p.acc)),
        ("test AU F1 vs pseudo-targets", GREEN, false, Test, |p| pct(p.au_f1_pseudo)),
        ("test AU F1 vs true AUs", PURPLE, false, Test, |p| pct(p.au_f1_truth)),
    ]);
    let max_loss = loss.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0f64, f64::max);
    let loss_top = if max_loss > 0.0 { max_loss * 1.1 } else { 1.0 };
    let best = best_epoch.map(|e| e as i32);
    let loss_label = |v: &f64| format!("{v:.2}");
    let pct_label = |v: &f64| format!("{v:.0}");
    let count = |s: &[Series]| {
        s.iter().filter(|s| !s.points.is_empty()).count() + usize::from(best.is_some())
    };
    let entries = count(&loss).max(count(&acc));
    render(title, (1300, 640), |root| {
        let root = root.titled(title, (FONT, TITLE_SIZE)).msg()?;
        let (l, r) = root.split_horizontally(650);
        panel(
            &l,
            "loss per epoch",
            "loss (mean per sample)",
            (0.0, loss_top),
            &loss_label,
            max_epoch,
            &loss,
            best,
            entries,
        )?;
        panel(
            &r,
            "accuracy per epoch",
            "%",
            (0.0, 100.0),
            &pct_label,
            max_epoch,
            &acc,
            best,
            entries,
        )?;
        Ok(())
    })
}

/// One row of [`delta_svg`]: a label and groups of values (one group per colour).
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaRow {
    /// Row label.
    pub label: String,
    /// Values per group (blue, red, ...), one per seed.
    pub groups: Vec<Vec<f64>>,
}

/// A horizontal chart of differences: per row and group a bar at the mean with a whisker of
/// ± one standard deviation (n - 1) and a dot per value, around a line at zero.
pub fn delta_svg(title: &str, x_desc: &str, rows: &[DeltaRow]) -> Result<String> {
    const COLOURS: [RGBColor; 3] = [BLUE, RED, GREEN];
    let all = rows.iter().flat_map(|r| r.groups.iter().flatten().copied());
    let (lo, hi) = all.fold((-1.0f64, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = (lo.floor() - 0.5, hi.ceil() + 0.5);
    let n = rows.len().max(1);
    let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
    render(title, (900, 120 + 40 * n as i32), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, TITLE_SIZE))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(280)
            .build_cartesian_2d(lo..hi, -0.5f64..(n as f64 - 0.5))
            .msg()?;
        // Row i is drawn at y = n - 1 - i, so that the first row is on top.
        let row_label = |y: &f64| {
            let r = y.round();
            let on_row = (y - r).abs() < 1e-6 && (0.0..n as f64).contains(&r);
            if on_row {
                labels.get(n - 1 - r as usize).map_or(String::new(), |s| s.to_string())
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&row_label)
            .x_desc(x_desc)
            .label_style((FONT, LABEL_SIZE - 3.0))
            .draw()
            .msg()?;
        let zero =
            PathElement::new(vec![(0.0, -0.5), (0.0, n as f64 - 0.5)], BLACK.stroke_width(1));
        chart.draw_series([zero]).msg()?;
        for (i, row) in rows.iter().enumerate() {
            let k = row.groups.len().max(1) as f64;
            for (g, values) in row.groups.iter().enumerate() {
                let colour = COLOURS[g % COLOURS.len()];
                // Groups spread over +-0.3 around the row, the first on top.
                let y = (n - 1 - i) as f64 - 0.6 * ((g as f64 + 0.5) / k - 0.5);
                let Some(Spread { mean, sd, .. }) = Spread::of(values.iter().map(|&v| Some(v)))
                else {
                    continue;
                };
                let bar =
                    Rectangle::new([(0.0, y - 0.1), (mean, y + 0.1)], colour.mix(0.35).filled());
                let whisker =
                    PathElement::new(vec![(mean - sd, y), (mean + sd, y)], colour.stroke_width(2));
                chart.draw_series([bar]).msg()?;
                chart.draw_series([whisker]).msg()?;
                chart
                    .draw_series(values.iter().map(|&v| Circle::new((v, y), 3, colour.filled())))
                    .msg()?;
            }
        }
        Ok(())
    })
}

/// `v` with a sign and 3 decimals; values that round to zero print as `0.000`.
fn signed3(v: f32) -> String {
    let s = format!("{v:+.3}");
    if s == "+0.000" || s == "-0.000" { "0.000".into() } else { s }
}

/// The SVG of the prior table: initial value, learned value and their difference, each a
/// 7 x 17 heatmap (rows = expressions, columns = AUs) with the values in the cells.
pub fn prior_svg(p: &PriorReport) -> Result<String> {
    let values = |t: &[Vec<f32>]| -> Vec<Vec<Vec<String>>> {
        t.iter().map(|r| r.iter().map(|v| vec![format!("{v:.2}")]).collect()).collect()
    };
    let changes = |t: &[Vec<f32>]| -> Vec<Vec<Vec<String>>> {
        t.iter().map(|r| r.iter().map(|&v| vec![signed3(v)]).collect()).collect()
    };
    let shade = |t: &[Vec<f32>], scale: f64| -> Vec<Vec<Option<f64>>> {
        t.iter().map(|r| r.iter().map(|&v| Some(f64::from(v) / scale)).collect()).collect()
    };
    let seq = sequential(RGBColor(166, 54, 3));
    let ticks01 = vec![(0.0, "0".to_string()), (0.5, "0.5".to_string()), (1.0, "1".to_string())];
    let initial_title = "Initial table (docs/METHOD.md section 2)".to_string();
    let learned_title = format!("Learned table (stage {}, epoch {})", p.stage, p.epoch);
    let diff: Vec<Vec<f32>> = p
        .learned
        .iter()
        .zip(&p.initial)
        .map(|(l, i)| l.iter().zip(i).map(|(a, b)| a - b).collect())
        .collect();
    // The change's colour range is symmetric and at least +-0.05 so that noise stays pale.
    let span = f64::from(p.max_abs_change).max(0.05);
    let diff_title = format!("Change: learned \u{2212} initial (colour range \u{b1}{span:.2})");
    // The three maps differ in title, values, colours and bar; the layout is shared.
    let titles = [initial_title, learned_title, diff_title];
    let table_map = |i: usize, t: &[Vec<f32>], bar: Vec<(f64, String)>| Heatmap {
        title: &titles[i],
        rows: &p.expressions,
        cols: &p.aus,
        shade: shade(t, 1.0),
        text: values(t),
        colour: &seq,
        x_title: "action unit",
        y_title: "expression",
        cell_w: 62,
        cell_h: 38,
        text_size: CELL_SIZE - 3.0,
        bar: Some(("table value", bar)),
        domain: (0.0, 1.0),
    };
    let change_bar =
        vec![(-1.0, format!("\u{2212}{span:.2}")), (0.0, "0".into()), (1.0, format!("+{span:.2}"))];
    let maps = [
        table_map(0, &p.initial, ticks01.clone()),
        table_map(1, &p.learned, ticks01),
        Heatmap {
            shade: shade(&diff, span),
            text: changes(&diff),
            colour: &diverging,
            bar: Some(("change", change_bar)),
            domain: (-1.0, 1.0),
            ..table_map(2, &diff, Vec::new())
        },
    ];
    let (w, h) = maps[0].size();
    render("prior table", (w, 3 * h), |root| {
        let parts = root.split_evenly((3, 1));
        for (map, area) in maps.iter().zip(&parts) {
            map.draw(area)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_svg_has_names_counts_and_title() {
        let names: Vec<String> =
            ["Angry", "Disgust", "Fear"].iter().map(|s| s.to_string()).collect();
        let svg =
            confusion_svg("test title", &names, &[vec![5, 1, 0], vec![0, 0, 0], vec![2, 3, 7]])
                .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for needle in [
            "test title",
            "Disgust (no samples)",
            "Fear (12)",
            "\n7\n</text>",
            "58%",
            "predicted class",
        ] {
            assert!(svg.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn signed_changes() {
        assert_eq!(signed3(0.0123), "+0.012");
        assert_eq!(signed3(-0.0004), "0.000");
        assert_eq!(signed3(-0.25), "-0.250");
    }

    #[test]
    fn colours() {
        assert_eq!(mix(RGBColor(0, 0, 0), RGBColor(200, 100, 50), 0.5), RGBColor(100, 50, 25));
        assert_eq!(ink_on(RGBColor(255, 255, 255)), BLACK);
        assert_eq!(ink_on(RGBColor(8, 69, 148)), WHITE);
        assert_eq!(diverging(0.0), RGBColor(255, 255, 255));
    }
}
