//! One SVG per video face track: its expression probabilities and each of the 17 AU probabilities
//! over time (`--plot-dir`), drawn with plotters' SVG backend (text is left to the viewer's fonts,
//! as in aue-report, so no font file is needed).
//!
//! Layout: the class probabilities on top (one line per class, legend on the right, stages 1 and
//! 3), then a 6 x 3 grid with one small panel per AU (stages 2 and 3) on a shared 0..1 axis with
//! the 0.5 decision line dashed. A line breaks where the track was not seen for more than three
//! of its usual frame steps, so a gap is not drawn as a slope.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aue_core::{AU_NAMES, NUM_AUS};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{PredictError, Result};
use crate::output::{Row, Status};

/// FACS names of the 17 AUs, in `AU_NAMES` order.
pub const AU_DESCRIPTIONS: [&str; NUM_AUS] = [
    "inner brow raiser",
    "outer brow raiser",
    "brow lowerer",
    "upper lid raiser",
    "cheek raiser",
    "lid tightener",
    "nose wrinkler",
    "upper lip raiser",
    "lip corner puller",
    "lip corner depressor",
    "lower lip depressor",
    "chin raiser",
    "lip stretcher",
    "lip tightener",
    "lip pressor",
    "lips part",
    "jaw drop",
];

const FONT: &str = "sans-serif";
const WIDTH: u32 = 1500;
const EXPRESSION_H: u32 = 330;
const AU_COLS: u32 = 3;
const AU_ROWS: u32 = 6;
const AU_H: u32 = 190;
const TITLE_H: u32 = 44;

/// One track's values over time (its `ok` rows).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrackSeries {
    /// Timestamps in seconds, increasing.
    pub times: Vec<f64>,
    /// Class probabilities per time (empty vectors when the checkpoint gives none).
    pub probs: Vec<Vec<f32>>,
    /// AU probabilities per time (`None` when the checkpoint gives none).
    pub aus: Vec<Option<[f32; NUM_AUS]>>,
}

/// Collects the tracks of one video from its rows.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    tracks: BTreeMap<usize, TrackSeries>,
}

impl Recorder {
    /// Adds a row (only `ok` video rows with a track id count).
    pub fn add(&mut self, row: &Row) {
        let (Status::Ok, Some(face), Some(t)) = (&row.status, row.face, row.timestamp) else {
            return;
        };
        let s = self.tracks.entry(face).or_default();
        s.times.push(t);
        s.probs.push(row.probs.clone().unwrap_or_default());
        s.aus.push(row.aus);
    }

    /// The tracks by id.
    pub fn tracks(&self) -> &BTreeMap<usize, TrackSeries> {
        &self.tracks
    }

    /// Writes `<dir>/<stem>_face<id>.svg` for every track with at least two points; returns the
    /// files written.
    pub fn write(
        &self,
        dir: &Path,
        stem: &str,
        video: &str,
        labels: &[String],
    ) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for (id, series) in self.tracks.iter().filter(|(_, s)| s.times.len() >= 2) {
            let path = dir.join(format!("{stem}_face{id}.svg"));
            let title = format!("{video}: face {id} ({} frames)", series.times.len());
            let svg = track_svg(&title, series, labels)
                .map_err(|msg| PredictError::Plot { path: path.clone(), msg })?;
            std::fs::write(&path, svg).map_err(aue_core::io_err("cannot write", &path))?;
            written.push(path);
        }
        Ok(written)
    }
}

/// Runs of consecutive indices with no gap longer than three typical steps.
fn segments(times: &[f64]) -> Vec<std::ops::Range<usize>> {
    let mut steps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).filter(|d| *d > 0.0).collect();
    steps.sort_by(f64::total_cmp);
    let typical = steps.get(steps.len() / 2).copied().unwrap_or(f64::INFINITY);
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..times.len() {
        if times[i] - times[i - 1] > 3.0 * typical {
            out.push(start..i);
            start = i;
        }
    }
    if !times.is_empty() {
        out.push(start..times.len());
    }
    out
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn msg<T, E: std::fmt::Debug>(r: std::result::Result<T, E>) -> std::result::Result<T, String> {
    r.map_err(|e| format!("{e:?}"))
}

/// Draws `values` (one per time, `None` skipped) into a chart on `area`.
#[allow(clippy::too_many_arguments)]
fn panel(
    area: &Area,
    caption: &str,
    times: &[f64],
    x_range: (f64, f64),
    lines: &[(RGBColor, Vec<Option<f32>>)],
    x_labels: bool,
    threshold: bool,
) -> std::result::Result<(), String> {
    let mut chart = msg(ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(6)
        .x_label_area_size(if x_labels { 28 } else { 14 })
        .y_label_area_size(36)
        .build_cartesian_2d(x_range.0..x_range.1, 0f64..1f64))?;
    msg(chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(3)
        .x_label_formatter(&|v| if x_labels { format!("{v:.1} s") } else { String::new() })
        .y_label_formatter(&|v| format!("{v:.1}"))
        .max_light_lines(1)
        .label_style((FONT, 12))
        .light_line_style(RGBColor(240, 240, 240))
        .draw())?;
    if threshold {
        let half = vec![(x_range.0, 0.5), (x_range.1, 0.5)];
        msg(chart.draw_series(DashedLineSeries::new(
            half,
            5,
            4,
            RGBColor(160, 160, 160).stroke_width(1),
        )))?;
    }
    let segs = segments(times);
    for (colour, values) in lines {
        for seg in &segs {
            let pts: Vec<(f64, f64)> =
                seg.clone().filter_map(|i| values[i].map(|v| (times[i], f64::from(v)))).collect();
            msg(chart.draw_series(LineSeries::new(pts, colour.stroke_width(2))))?;
        }
    }
    Ok(())
}

/// The SVG text of one track (see the module documentation); `labels` name the classes.
pub fn track_svg(
    title: &str,
    s: &TrackSeries,
    labels: &[String],
) -> std::result::Result<String, String> {
    let has_probs = s.probs.iter().any(|p| !p.is_empty());
    let has_aus = s.aus.iter().any(Option::is_some);
    let height = TITLE_H
        + if has_probs { EXPRESSION_H } else { 0 }
        + if has_aus { AU_ROWS * AU_H } else { 0 };
    let (t0, t1) = match (s.times.first(), s.times.last()) {
        (Some(&a), Some(&b)) if b > a => (a, b),
        (Some(&a), _) => (a - 0.5, a + 0.5),
        _ => (0.0, 1.0),
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        msg(root.fill(&WHITE))?;
        let (head, body) = root.split_vertically(TITLE_H);
        msg(head.titled(title, (FONT, 22)))?;
        let (top, rest) = if has_probs {
            let (a, b) = body.split_vertically(EXPRESSION_H);
            (Some(a), b)
        } else {
            (None, body)
        };
        if let Some(top) = top {
            let n = s.probs.iter().map(Vec::len).max().unwrap_or(0);
            let lines: Vec<(RGBColor, Vec<Option<f32>>)> = (0..n)
                .map(|k| {
                    let c = Palette99::pick(k).to_rgba();
                    let values = s.probs.iter().map(|p| p.get(k).copied()).collect();
                    (RGBColor(c.0, c.1, c.2), values)
                })
                .collect();
            let (plot, legend) = top.split_horizontally(WIDTH - 170);
            panel(&plot, "expression probabilities", &s.times, (t0, t1), &lines, true, false)?;
            for (k, (colour, _)) in lines.iter().enumerate() {
                let name = labels.get(k).cloned().unwrap_or_else(|| format!("class {k}"));
                let y = 40 + 22 * k as i32;
                msg(legend.draw(&PathElement::new(vec![(6, y), (36, y)], colour.stroke_width(3))))?;
                msg(legend.draw_text(&name, &(FONT, 15).into_text_style(&legend), (44, y - 8)))?;
            }
        }
        if has_aus {
            let cells = rest.split_evenly((AU_ROWS as usize, AU_COLS as usize));
            for (a, cell) in cells.iter().enumerate().take(NUM_AUS) {
                let values = s.aus.iter().map(|v| v.map(|v| v[a])).collect();
                let lines = [(RGBColor(31, 119, 180), values)];
                let caption = format!("{} {}", AU_NAMES[a], AU_DESCRIPTIONS[a]);
                let bottom = a + AU_COLS as usize >= NUM_AUS;
                panel(cell, &caption, &s.times, (t0, t1), &lines, bottom, true)?;
            }
        }
        msg(root.present())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_break_lines() {
        let t = [0.0, 0.1, 0.2, 0.3, 1.5, 1.6, 1.7];
        assert_eq!(segments(&t), vec![0..4, 4..7]);
        assert_eq!(segments(&[0.0, 0.1, 0.2]), vec![0..3]);
        assert_eq!(segments(&[]), Vec::<std::ops::Range<usize>>::new());
    }

    #[test]
    fn recorder_keeps_ok_rows_per_track_and_the_svg_names_every_au() {
        let mut rec = Recorder::default();
        for i in 0..5u64 {
            for face in [0usize, 3] {
                let mut r = Row::status("v.mp4", Status::Ok);
                r.frame = Some(i);
                r.timestamp = Some(i as f64 * 0.04);
                r.face = Some(face);
                r.probs = Some(vec![0.3, 0.7]);
                r.aus = Some([0.25; NUM_AUS]);
                rec.add(&r);
            }
            let mut none = Row::status("v.mp4", Status::NoFace);
            none.timestamp = Some(i as f64 * 0.04);
            rec.add(&none);
        }
        assert_eq!(rec.tracks().keys().copied().collect::<Vec<_>>(), [0, 3]);
        assert_eq!(rec.tracks()[&3].times.len(), 5);
        let labels = vec!["calm".to_string(), "glad".to_string()];
        let svg = track_svg("v.mp4: face 3", &rec.tracks()[&3], &labels).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("v.mp4: face 3"));
        for name in AU_NAMES.iter().chain(["glad"].iter()) {
            assert!(svg.contains(name), "{name} missing");
        }
        let dir = tempfile::tempdir().unwrap();
        let files = rec.write(dir.path(), "v", "v.mp4", &labels).unwrap();
        assert_eq!(files, [dir.path().join("v_face0.svg"), dir.path().join("v_face3.svg")]);
    }
}
