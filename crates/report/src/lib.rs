//! `aue-report`: reads AUE-CRL run folders (the files aue-train writes: `config.json`,
//! `metrics.jsonl`, checkpoint metadata) and reports them: the paper's table for the dataset
//! with our rows beside the published ones (docs/METHOD.md section 7), best (test-set selection)
//! and last epochs with overall and mean class accuracy and per-class precision / recall / F1
//! (section 6), the stage 1 / stage 3 ablation, stage 2's AU detection, and the learned prior
//! table (section 2). It never loads a model: the only tensor it reads is the 7 x 17 prior table.
//!
//! - [`runs`]: run folders and `metrics.jsonl`; [`checkpoint`]: metadata and the prior table;
//! - [`scores`]: scores from confusion matrices and the number formats;
//! - [`published`]: the paper's numbers; [`report`]: the [`Report`] and its document;
//! - [`document`]: text / Markdown rendering; [`plots`]: SVG charts; [`output`]: the files;
//! - [`grid`]: the ablation grid `aue-ablation` runs; [`ablation`]: its report.

pub mod ablation;
pub mod checkpoint;
pub mod document;
pub mod error;
pub mod eval;
pub mod grid;
pub mod output;
pub mod plots;
pub mod published;
pub mod report;
pub mod runs;
pub mod scores;

pub use error::{ReportError, Result};
pub use report::{Compare, Report, ReportOptions};
pub use runs::{StageRun, expand_run_dirs};

use std::path::{Path, PathBuf};

/// Reads the run folders `paths` (stage folders, or parents of stage folders) and builds the
/// report.
pub fn build_report(paths: &[PathBuf], opts: &ReportOptions) -> Result<(Vec<StageRun>, Report)> {
    let dirs = expand_run_dirs(paths)?;
    let runs = dirs.iter().map(|d| StageRun::load(d)).collect::<Result<Vec<_>>>()?;
    let report = Report::build(&runs, opts)?;
    Ok((runs, report))
}

/// The default output folder: `<first run's parent>/report` (for `checkpoints/x/stage1`, `checkpoints/x/report`).
pub fn default_out_dir(first_run: &Path) -> PathBuf {
    first_run
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("report")
}
