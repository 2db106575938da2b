//! Prediction rows and their files: CSV (default) or JSON Lines, written to a temp file in the
//! output's folder, fsynced and renamed into place.
//!
//! CSV columns: `file, frame, timestamp, face, status, x1, y1, x2, y2, score, expression`, one
//! `p_<label>` per class, `AU01..AU26` (AU probabilities, OpenFace's names) and
//! `att_AU01..att_AU26` (fusion attention). A value the checkpoint's stage does not give, or a
//! `no_face` / `error` row, is empty. `frame` (0-based index of the decoded frame) and
//! `timestamp` (seconds, from the video's time base) are empty for still images; for a video,
//! `face` is the face's track id (stable across frames) instead of its index in the image.
//! JSON Lines objects have the same keys (`box` for the four coordinates, `probs`, `aus` and
//! `attention` as objects keyed by name, `null` for an absent value).

use std::io::{BufWriter, Write};
use std::path::Path;

use aue_core::{AU_NAMES, NUM_AUS};

use crate::error::{Result, io_err};

/// Output file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// What happened to an image or a face.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// A face was found and run.
    Ok,
    /// The image was read but holds no face above the score threshold.
    NoFace,
    /// The image (or this face) could not be processed.
    Error(String),
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Ok => f.write_str("ok"),
            Status::NoFace => f.write_str("no_face"),
            Status::Error(m) => write!(f, "error: {m}"),
        }
    }
}

/// One output row: a face, or an image without a usable face.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The image or video path as given / found.
    pub file: String,
    /// Video frame index (0-based, decoded frames in presentation order); `None` for an image.
    pub frame: Option<u64>,
    /// Video frame timestamp in seconds (from the stream's time base); `None` for an image.
    pub timestamp: Option<f64>,
    /// Face index in the image (detector order, best score first); in a video, the track id.
    pub face: Option<usize>,
    /// Outcome.
    pub status: Status,
    /// Face box `x1, y1, x2, y2` in image pixels.
    pub face_box: Option<[f32; 4]>,
    /// Detector score.
    pub score: Option<f32>,
    /// Most probable expression.
    pub expression: Option<String>,
    /// Class probabilities in label order.
    pub probs: Option<Vec<f32>>,
    /// AU probabilities in `AU_NAMES` order.
    pub aus: Option<[f32; NUM_AUS]>,
    /// Fusion attention weights in `AU_NAMES` order.
    pub attention: Option<[f32; NUM_AUS]>,
}

impl Row {
    /// A row with only a file and a status.
    pub fn status(file: &str, status: Status) -> Row {
        Row {
            file: file.to_string(),
            frame: None,
            timestamp: None,
            face: None,
            status,
            face_box: None,
            score: None,
            expression: None,
            probs: None,
            aus: None,
            attention: None,
        }
    }
}

/// The CSV header for these class names.
pub fn csv_header(labels: &[String]) -> Vec<String> {
    let mut h: Vec<String> =
        ["file", "frame", "timestamp", "face", "status", "x1", "y1", "x2", "y2", "score"]
            .map(String::from)
            .to_vec();
    h.push("expression".into());
    h.extend(labels.iter().map(|l| format!("p_{l}")));
    h.extend(AU_NAMES.iter().map(|a| a.to_string()));
    h.extend(AU_NAMES.iter().map(|a| format!("att_{a}")));
    h
}

/// Quotes a CSV field when it holds a comma, quote or line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// The CSV fields of a row (as many as [`csv_header`]).
pub fn csv_record(row: &Row, labels: &[String]) -> Vec<String> {
    let b = row.face_box;
    let mut r = vec![
        row.file.clone(),
        opt(row.frame),
        opt(row.timestamp),
        opt(row.face),
        row.status.to_string(),
        opt(b.map(|b| b[0])),
        opt(b.map(|b| b[1])),
        opt(b.map(|b| b[2])),
        opt(b.map(|b| b[3])),
        opt(row.score),
        row.expression.clone().unwrap_or_default(),
    ];
    r.extend((0..labels.len()).map(|k| opt(row.probs.as_ref().and_then(|p| p.get(k)))));
    r.extend((0..NUM_AUS).map(|k| opt(row.aus.map(|a| a[k]))));
    r.extend((0..NUM_AUS).map(|k| opt(row.attention.map(|a| a[k]))));
    r
}

/// A row as a JSON object: `probs`, `aus` and `attention` are objects keyed by name, absent
/// values are `null`.
pub fn json_record(row: &Row, labels: &[String]) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let named = |names: &mut dyn Iterator<Item = String>, vals: &[f32]| -> Value {
        Value::Object(names.zip(vals.iter()).map(|(n, &v)| (n, json!(v))).collect::<Map<_, _>>())
    };
    json!({
        "file": row.file,
        "frame": row.frame,
        "timestamp": row.timestamp,
        "face": row.face,
        "status": row.status.to_string(),
        "box": row.face_box,
        "score": row.score,
        "expression": row.expression,
        "probs": row.probs.as_ref().map(|p| named(&mut labels.iter().cloned(), p)),
        "aus": row.aus.map(|a| named(&mut AU_NAMES.iter().map(|s| s.to_string()), &a)),
        "attention": row.attention.map(|a| named(&mut AU_NAMES.iter().map(|s| s.to_string()), &a)),
    })
}

/// Writes rows to `path` atomically (temp file in the same folder, fsync, rename).
pub struct RowWriter {
    tmp: BufWriter<tempfile::NamedTempFile>,
    path: std::path::PathBuf,
    format: Format,
    labels: Vec<String>,
}

impl RowWriter {
    /// Opens the temp file beside `path` and writes the CSV header.
    pub fn create(path: &Path, format: Format, labels: &[String]) -> Result<RowWriter> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".aue-predict-")
            .tempfile_in(dir)
            .map_err(io_err("cannot create a temp file in", dir))?;
        let mut w = RowWriter {
            tmp: BufWriter::new(tmp),
            path: path.to_owned(),
            format,
            labels: labels.to_vec(),
        };
        if format == Format::Csv {
            let header = csv_header(labels);
            w.line(&header.iter().map(|h| csv_field(h)).collect::<Vec<_>>().join(","))?;
        }
        Ok(w)
    }

    fn line(&mut self, s: &str) -> Result<()> {
        Ok(writeln!(self.tmp, "{s}").map_err(io_err("cannot write", &self.path))?)
    }

    /// Appends one row.
    pub fn write(&mut self, row: &Row) -> Result<()> {
        let text = match self.format {
            Format::Csv => csv_record(row, &self.labels)
                .iter()
                .map(|f| csv_field(f))
                .collect::<Vec<_>>()
                .join(","),
            Format::Jsonl => json_record(row, &self.labels).to_string(),
        };
        self.line(&text)
    }

    /// Flushes, fsyncs and renames the temp file to the output path.
    pub fn finish(self) -> Result<()> {
        let path = self.path;
        let tmp = self
            .tmp
            .into_inner()
            .map_err(|e| e.into_error())
            .map_err(io_err("cannot write", &path))?;
        tmp.as_file().sync_all().map_err(io_err("cannot sync", &path))?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .map_err(io_err("cannot rename the temp file to", &path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(csv_field("a.jpg"), "a.jpg");
        assert_eq!(csv_field("error: x, \"y\""), "\"error: x, \"\"y\"\"\"");
    }

    #[test]
    fn record_has_as_many_fields_as_the_header() {
        let labels: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let mut row = Row::status("f.png", Status::Ok);
        row.probs = Some(vec![0.25, 0.75]);
        row.aus = Some([0.5; NUM_AUS]);
        assert_eq!(csv_record(&row, &labels).len(), csv_header(&labels).len());
        assert_eq!(csv_header(&labels).len(), 11 + 2 + 34);
    }
}
