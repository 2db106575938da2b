//! The paper's published results (docs/METHOD.md section 7) and the column order of its tables.
//!
//! The tables list the classes alphabetically (Angry, Disgust, Fear, Happy, Neutral, Sad,
//! Surprised), which is not the label index order of section 1 (Surprise, Fear, Disgust,
//! Happiness, Sadness, Anger, Neutral): [`PAPER_COLUMN_LABELS`] maps one to the other.

use serde::Serialize;

/// The class columns of the paper's tables, in the paper's order (the "Ave." column follows).
pub const PAPER_COLUMNS: [&str; 7] =
    ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprised"];

/// For each paper column, the label index (docs/METHOD.md section 1) of its class.
pub const PAPER_COLUMN_LABELS: [usize; 7] = [5, 2, 1, 3, 6, 4, 0];

/// The header of the average column.
pub const AVE_COLUMN: &str = "Ave.";

/// A benchmark the paper reports results on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Benchmark {
    /// RAF-DB basic (7 classes).
    RafDb,
    /// SFEW 2.0 (7 classes, evaluated on Val).
    Sfew,
}

impl Benchmark {
    /// The benchmark's name as the paper writes it.
    pub fn title(self) -> &'static str {
        match self {
            Benchmark::RafDb => "RAF-DB",
            Benchmark::Sfew => "SFEW 2.0",
        }
    }

    /// The published rows of this benchmark's table, in the paper's row order.
    pub fn published(self) -> &'static [PublishedRow] {
        match self {
            Benchmark::RafDb => &RAFDB,
            Benchmark::Sfew => &SFEW,
        }
    }
}

/// One published row: per-class accuracy (%) in [`PAPER_COLUMNS`] order, then the mean class
/// accuracy "Ave." (%). `None` is a cell the paper leaves empty ("-").
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PublishedRow {
    /// Method name as in the paper.
    pub method: &'static str,
    /// Per-class accuracy (%), paper column order.
    pub classes: [Option<f64>; 7],
    /// "Ave." (%): mean class accuracy.
    pub ave: f64,
}

impl PublishedRow {
    /// The row's cells as the paper prints them (one decimal, "-" where empty), Ave. last.
    pub fn cells(&self) -> Vec<String> {
        self.classes
            .iter()
            .map(|c| c.map_or_else(|| "-".to_string(), |v| format!("{v:.1}")))
            .chain(std::iter::once(format!("{:.1}", self.ave)))
            .collect()
    }
}

const fn row(method: &'static str, c: [f64; 7], ave: f64) -> PublishedRow {
    PublishedRow {
        method,
        classes: [
            Some(c[0]),
            Some(c[1]),
            Some(c[2]),
            Some(c[3]),
            Some(c[4]),
            Some(c[5]),
            Some(c[6]),
        ],
        ave,
    }
}

/// RAF-DB (docs/METHOD.md section 7).
pub const RAFDB: [PublishedRow; 8] = [
    row("DCNN-DA", [78.4, 64.4, 62.2, 91.1, 80.6, 81.2, 84.5], 77.5),
    row("WSLGRN", [75.3, 56.9, 63.5, 93.8, 85.4, 83.5, 85.4], 77.7),
    row("CP", [80.0, 61.0, 61.0, 93.0, 89.0, 86.0, 86.0], 79.4),
    row("CompactDLM", [74.5, 67.6, 46.9, 82.3, 59.1, 58.0, 84.6], 67.6),
    row("FSN", [72.8, 46.9, 56.8, 90.5, 76.9, 81.6, 81.8], 72.5),
    row("DLP-CNN", [71.6, 52.2, 62.2, 92.8, 80.3, 80.1, 81.2], 74.2),
    row("MRE-CNN", [84.0, 57.5, 60.8, 88.8, 80.2, 79.9, 86.0], 76.7),
    row("AUE-CRL (paper)", [80.5, 67.6, 68.9, 94.1, 85.8, 83.6, 86.4], 81.0),
];

/// SFEW 2.0 (docs/METHOD.md section 7).
pub const SFEW: [PublishedRow; 5] = [
    row("CP", [66.0, 0.0, 14.0, 90.0, 86.0, 66.0, 29.0], 50.1),
    PublishedRow { method: "DLP-CNN", classes: [None; 7], ave: 51.1 },
    row("IA-CNN", [70.7, 0.0, 8.9, 70.4, 60.3, 58.8, 28.9], 42.6),
    row("IL", [61.0, 0.0, 6.4, 89.0, 66.2, 48.0, 33.3], 43.4),
    row("AUE-CRL (paper)", [75.3, 17.4, 25.5, 86.3, 72.1, 50.7, 42.1], 52.8),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// The paper's column names against the label names of section 1, column by column.
    #[test]
    fn paper_columns_map_to_the_right_labels() {
        let expected = ["Anger", "Disgust", "Fear", "Happiness", "Neutral", "Sadness", "Surprise"];
        for (col, &label) in PAPER_COLUMN_LABELS.iter().enumerate() {
            assert_eq!(aue_core::EXPRESSIONS_BASIC[label], expected[col], "column {col}");
        }
        let mut sorted = PAPER_COLUMN_LABELS;
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3, 4, 5, 6]);
    }
}
