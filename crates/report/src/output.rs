//! Writes the report's files into the output folder: `report.md`, `report.json` and the SVG
//! charts, each atomically (temp file in the same folder, fsync, rename: aue-train's
//! `write_atomic`).

use std::path::{Path, PathBuf};

use aue_contract::fsio::write_atomic;

use crate::document::to_markdown;
use crate::error::{Result, io_err};
use crate::plots::{confusion_svg, curves_svg, prior_svg};
use crate::report::{EpochResult, Images, Report, RunImages, RunReport};

/// The Markdown report's file name.
pub const MARKDOWN_FILE: &str = "report.md";
/// The JSON report's file name.
pub const JSON_FILE: &str = "report.json";
/// The prior-table chart's file name.
pub const PRIOR_SVG: &str = "prior-table.svg";

/// `confusion` rows and columns reordered to `order` (label indices).
pub fn reorder(confusion: &[Vec<u64>], order: &[usize]) -> Vec<Vec<u64>> {
    order
        .iter()
        .map(|&i| {
            order
                .iter()
                .map(|&j| confusion.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0))
                .collect()
        })
        .collect()
}

fn write(path: &Path, text: &str, written: &mut Vec<PathBuf>) -> Result<()> {
    write_atomic(path, text.as_bytes())?;
    tracing::debug!(file = %path.display(), "written");
    written.push(path.to_owned());
    Ok(())
}

/// The file-name prefix of run `i`: `stage<N>`, or `run<i>-stage<N>` when two runs share a stage.
fn prefix(report: &Report, i: usize) -> String {
    let r = &report.runs[i];
    let shared = report.runs.iter().filter(|o| o.stage == r.stage).count() > 1;
    if shared { format!("run{}-stage{}", i + 1, r.stage) } else { format!("stage{}", r.stage) }
}

/// Which epoch a confusion matrix shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Best,
    Last,
    Evaluated,
}

fn confusion_title(r: &RunReport, e: &EpochResult, which: Which) -> String {
    let pred = if r.stage == 3 { "pred2" } else { "pred1" };
    let what = match which {
        Which::Best => format!("best epoch {} (test-set selection)", e.epoch),
        Which::Last => format!("last epoch {}", e.epoch),
        Which::Evaluated => format!("checkpoint of epoch {}, evaluated now", e.epoch),
    };
    format!("{} {pred}: test confusion, {what}", r.title)
}

/// Writes every file of `report` into `out` (created if needed); returns the paths written.
pub fn write_report(report: &Report, out: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).map_err(io_err("cannot create output folder", out))?;
    let mut written = Vec::new();
    let mut images = Images::default();
    for (i, r) in report.runs.iter().enumerate() {
        let p = prefix(report, i);
        let mut files = RunImages::default();
        // An evaluated checkpoint has one epoch: one matrix, no curves.
        let epochs: Vec<(&EpochResult, Which, &str)> = if r.evaluated {
            vec![(&r.best, Which::Evaluated, "evaluated")]
        } else {
            vec![(&r.best, Which::Best, "best"), (&r.last, Which::Last, "last")]
        };
        for (e, which, tag) in epochs {
            let name = format!("{p}-confusion-{tag}.svg");
            let confusion = reorder(&e.scores.confusion, &report.column_labels);
            let title = confusion_title(r, e, which);
            let svg = confusion_svg(&title, &report.columns, &confusion)?;
            write(&out.join(&name), &svg, &mut written)?;
            files.files.push((title, name));
        }
        if !r.evaluated {
            let name = format!("{p}-curves.svg");
            let title = format!("{}: training curves ({})", r.title, r.dir.display());
            let svg = curves_svg(&title, &r.curve, Some(r.best.epoch))?;
            write(&out.join(&name), &svg, &mut written)?;
            files.files.push((title, name));
        }
        images.runs.push(files);
    }
    if let Some(p) = &report.prior_table {
        write(&out.join(PRIOR_SVG), &prior_svg(p)?, &mut written)?;
        images.prior = Some(PRIOR_SVG.to_string());
    }
    let markdown = to_markdown(&report.document(&images));
    write(&out.join(MARKDOWN_FILE), &markdown, &mut written)?;
    let json =
        serde_json::to_string_pretty(report).map_err(|e| crate::error::ReportError::Json {
            what: "report",
            path: out.join(JSON_FILE),
            msg: e.to_string(),
        })?;
    write(&out.join(JSON_FILE), &(json + "\n"), &mut written)?;
    Ok(written)
}
