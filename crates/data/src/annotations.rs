//! Readers for the annotation text files of docs/METHOD.md section 5: label lists, face boxes,
//! landmark files and ground-truth AU files.
//!
//! The reference reads these with `np.loadtxt` / `pandas.read_csv(delim_whitespace=True)`, so we
//! accept what those accept on well-formed files: whitespace-separated tokens, blank lines and
//! `#` comments ignored. Anything else (a token that is not a number, a wrong column count, a
//! label out of range, a non-finite value) is an error naming the file and the 1-based line,
//! where the reference would crash or, worse, carry on with a wrong sample.

use aue_core::FaceBox;
use std::path::Path;

use crate::error::{DataError, Result};
use crate::landmarks::{Landmarks, Point, from_66, from_68};

/// Reads a whole text file.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, "read", e))?;
    // A byte-order mark would glue itself to the first name ("\u{feff}train_00001.jpg") and
    // silently move that line out of its split.
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

/// The data lines of a text file: (1-based line number, tokens), skipping blank lines and
/// `#` comments as `np.loadtxt` does.
pub(crate) fn data_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(i, line)| {
        let content = line.split('#').next().unwrap_or("");
        let tokens: Vec<&str> = content.split_whitespace().collect();
        (!tokens.is_empty()).then_some((i + 1, tokens))
    })
}

/// Parses one finite number.
fn parse_finite(path: &Path, line: usize, token: &str, what: &str) -> Result<f64> {
    let value: f64 = token
        .parse()
        .map_err(|_| DataError::parse(path, line, format!("{what} `{token}` is not a number")))?;
    if !value.is_finite() {
        return Err(DataError::parse(path, line, format!("{what} `{token}` is not finite")));
    }
    Ok(value)
}

/// What a landmark file holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum LandmarkFile {
    /// 68 points (66-point files already mapped to 68, see [`from_66`]).
    Points(Box<Landmarks>),
    /// Fewer than 2 rows: the reference skips the image (`landmark.ndim < 2`).
    TooFew(usize),
}

/// Reads a landmark file: rows of "x y". 68 rows (iBUG 68) or 66 rows (iBUG 68 without the
/// inner-mouth corners) are accepted; fewer than 2 rows means "no landmarks" (skipped like the
/// reference); any other row count is an error.
pub(crate) fn read_landmarks(path: &Path) -> Result<LandmarkFile> {
    let text = read_text(path)?;
    let mut points: Vec<Point> = Vec::with_capacity(68);
    for (line, tokens) in data_lines(&text) {
        if tokens.len() != 2 {
            return Err(DataError::parse(
                path,
                line,
                format!("expected 2 columns \"x y\", found {}", tokens.len()),
            ));
        }
        let x = parse_finite(path, line, tokens[0], "landmark x")?;
        let y = parse_finite(path, line, tokens[1], "landmark y")?;
        points.push([x, y]);
    }
    match points.len() {
        n if n < 2 => Ok(LandmarkFile::TooFew(n)),
        68 => Ok(LandmarkFile::Points(Box::new(from_68(&points)))),
        66 => Ok(LandmarkFile::Points(Box::new(from_66(&points)))),
        n => Err(DataError::invalid(path, format!("expected 68 or 66 landmark rows, found {n}"))),
    }
}

/// Reads a face box file: one line of four finite numbers with x1 < x2 and y1 < y2.
pub(crate) fn read_box(path: &Path) -> Result<FaceBox<f64>> {
    let text = read_text(path)?;
    let mut lines = data_lines(&text);
    let Some((line, tokens)) = lines.next() else {
        return Err(DataError::invalid(path, "empty face box file (expected \"x1 y1 x2 y2\")"));
    };
    if tokens.len() != 4 {
        return Err(DataError::parse(
            path,
            line,
            format!("expected 4 columns \"x1 y1 x2 y2\", found {}", tokens.len()),
        ));
    }
    if let Some((extra, _)) = lines.next() {
        return Err(DataError::parse(path, extra, "expected a single line \"x1 y1 x2 y2\""));
    }
    let mut v = [0.0; 4];
    for (slot, (token, what)) in v.iter_mut().zip(tokens.iter().zip(["x1", "y1", "x2", "y2"])) {
        *slot = parse_finite(path, line, token, what)?;
    }
    let b = FaceBox::corners(v[0], v[1], v[2], v[3]);
    if b.x2 <= b.x1 || b.y2 <= b.y1 {
        return Err(DataError::parse(
            path,
            line,
            format!(
                "empty face box ({} {} {} {}): need x1 < x2 and y1 < y2",
                b.x1, b.y1, b.x2, b.y2
            ),
        ));
    }
    Ok(b)
}

/// Reads a ground-truth AU file: one line of 17 intensities in [0, 1], AU order of
/// docs/METHOD.md section 1.
pub(crate) fn read_au_gt(path: &Path) -> Result<[f32; aue_core::NUM_AUS]> {
    let text = read_text(path)?;
    let mut lines = data_lines(&text);
    let Some((line, tokens)) = lines.next() else {
        return Err(DataError::invalid(path, "empty AU file (expected 17 intensities)"));
    };
    if tokens.len() != aue_core::NUM_AUS {
        return Err(DataError::parse(
            path,
            line,
            format!("expected {} AU intensities, found {}", aue_core::NUM_AUS, tokens.len()),
        ));
    }
    if let Some((extra, _)) = lines.next() {
        return Err(DataError::parse(path, extra, "expected a single line of AU intensities"));
    }
    let mut out = [0.0f32; aue_core::NUM_AUS];
    for (i, (slot, token)) in out.iter_mut().zip(&tokens).enumerate() {
        let v = parse_finite(path, line, token, aue_core::AU_NAMES[i])?;
        if !(0.0..=1.0).contains(&v) {
            return Err(DataError::parse(
                path,
                line,
                format!("{} intensity {v} is outside [0, 1]", aue_core::AU_NAMES[i]),
            ));
        }
        *slot = v as f32;
    }
    Ok(out)
}

/// One entry of a RAF-DB label list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LabelEntry {
    /// Image file name, e.g. `train_00001.jpg`.
    pub name: String,
    /// 0-based class index (file label - 1).
    pub label: usize,
}

/// Reads the entries of one split from a RAF-DB `list_patition_label.txt`.
///
/// Lines whose name does not start with `prefix` belong to the other split and are ignored
/// whatever else they hold (the reference filters on `name[:5] == "train"` / `name[:4] ==
/// "test"`). The result keeps one `Result` per line so that `skip_bad` can drop a bad line and
/// keep the rest. Labels are 1-based in the file and must lie in `1..=num_classes`.
pub(crate) fn read_label_list(
    path: &Path,
    prefix: &str,
    num_classes: usize,
) -> Result<Vec<Result<LabelEntry>>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (line, tokens) in data_lines(&text) {
        if !tokens[0].starts_with(prefix) {
            continue;
        }
        out.push(parse_label_line(path, line, &tokens, num_classes));
    }
    Ok(out)
}

fn parse_label_line(
    path: &Path,
    line: usize,
    tokens: &[&str],
    num_classes: usize,
) -> Result<LabelEntry> {
    if tokens.len() != 2 {
        return Err(DataError::parse(
            path,
            line,
            format!("expected 2 columns \"<image name> <label>\", found {}", tokens.len()),
        ));
    }
    let name = tokens[0];
    if name.contains('/') || name.contains('\\') || stem(name).is_empty() {
        return Err(DataError::parse(path, line, format!("bad image name `{name}`")));
    }
    let label: i64 = tokens[1].parse().map_err(|_| {
        DataError::parse(path, line, format!("label `{}` is not an integer", tokens[1]))
    })?;
    if label < 1 || label > num_classes as i64 {
        return Err(DataError::parse(
            path,
            line,
            format!("label {label} is out of range 1..={num_classes}"),
        ));
    }
    Ok(LabelEntry { name: name.to_string(), label: (label - 1) as usize })
}

/// The file name without its last extension (`train_00001.jpg` -> `train_00001`).
pub(crate) fn stem(name: &str) -> &str {
    match name.rsplit_once('.') {
        Some((s, _)) => s,
        None => name,
    }
}

/// One entry of an SFEW id list: `<Class>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SfewEntry {
    /// `<Class>/<id>`, as in the list.
    pub name: String,
    /// The class folder.
    pub class: String,
    /// The id within the class folder (file stem).
    pub id: String,
    /// 0-based label (docs/METHOD.md section 1's folder map).
    pub label: usize,
}

/// Parses an SFEW `<Class>/<id>` name.
pub(crate) fn parse_sfew_name(path: &Path, line: usize, name: &str) -> Result<SfewEntry> {
    let Some((class, id)) = name.split_once('/') else {
        return Err(DataError::parse(
            path,
            line,
            format!("expected `<Class>/<id>`, found `{name}`"),
        ));
    };
    if id.is_empty() || id.contains('/') {
        return Err(DataError::parse(path, line, format!("bad image id in `{name}`")));
    }
    let Some(&(_, label)) = aue_core::SFEW_FOLDERS.iter().find(|(folder, _)| *folder == class)
    else {
        let known: Vec<&str> = aue_core::SFEW_FOLDERS.iter().map(|(f, _)| *f).collect();
        return Err(DataError::parse(
            path,
            line,
            format!("unknown SFEW class `{class}` (known: {})", known.join(", ")),
        ));
    };
    Ok(SfewEntry { name: name.to_string(), class: class.to_string(), id: id.to_string(), label })
}

/// Reads an SFEW id list (one `<Class>/<id>` per line), one `Result` per line.
pub(crate) fn read_sfew_list(path: &Path) -> Result<Vec<Result<SfewEntry>>> {
    let text = read_text(path)?;
    Ok(data_lines(&text)
        .map(|(line, tokens)| {
            if tokens.len() != 1 {
                return Err(DataError::parse(
                    path,
                    line,
                    format!("expected one `<Class>/<id>` per line, found {} tokens", tokens.len()),
                ));
            }
            parse_sfew_name(path, line, tokens[0])
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(content.as_bytes()).unwrap();
        f
    }

    fn points_text(n: usize) -> String {
        (0..n).map(|i| format!("{} {}\n", i as f64 + 0.5, 2.0 * i as f64)).collect()
    }

    #[test]
    fn landmarks_68_and_66_rows() {
        let f = file(&points_text(68));
        let LandmarkFile::Points(p) = read_landmarks(f.path()).unwrap() else { panic!() };
        assert_eq!(p[67], [67.5, 134.0]);
        let f = file(&points_text(66));
        let LandmarkFile::Points(p) = read_landmarks(f.path()).unwrap() else { panic!() };
        // 66-point index 60 is iBUG 61; iBUG 60 is copied from 48.
        assert_eq!(p[61], [60.5, 120.0]);
        assert_eq!(p[60], p[48]);
        assert_eq!(p[64], p[54]);
    }

    #[test]
    fn landmarks_too_few_rows_are_not_an_error() {
        assert_eq!(read_landmarks(file("").path()).unwrap(), LandmarkFile::TooFew(0));
        assert_eq!(read_landmarks(file("1 2\n").path()).unwrap(), LandmarkFile::TooFew(1));
    }

    #[test]
    fn landmark_errors_name_the_line() {
        let mut text = points_text(68);
        text = text.replacen("3.5 6\n", "3.5 abc\n", 1);
        let err = read_landmarks(file(&text).path()).unwrap_err();
        assert_eq!(err.line(), Some(4), "{err}");
        assert!(err.to_string().contains("`abc` is not a number"), "{err}");

        let text = points_text(68).replacen("5.5 10\n", "5.5 NaN\n", 1);
        let err = read_landmarks(file(&text).path()).unwrap_err();
        assert_eq!(err.line(), Some(6), "{err}");
        assert!(err.to_string().contains("not finite"), "{err}");

        let text = points_text(68).replacen("1.5 2\n", "1.5 2 3\n", 1);
        let err = read_landmarks(file(&text).path()).unwrap_err();
        assert_eq!(err.line(), Some(2), "{err}");

        let err = read_landmarks(file(&points_text(40)).path()).unwrap_err();
        assert!(err.to_string().contains("found 40"), "{err}");
    }

    #[test]
    fn boxes() {
        let b = read_box(file("# comment\n 1.5 2 30 40.25 \n\n").path()).unwrap();
        assert_eq!(b, FaceBox::corners(1.5, 2.0, 30.0, 40.25));
        assert!(read_box(file("1 2 3\n").path()).is_err());
        assert!(read_box(file("1 2 3 4\n5 6 7 8\n").path()).is_err());
        assert!(read_box(file("10 2 3 4\n").path()).is_err());
        assert!(read_box(file("1 2 inf 4\n").path()).is_err());
        assert!(read_box(file("").path()).is_err());
    }

    #[test]
    fn byte_order_mark_is_ignored() {
        let f = file("\u{feff}train_00001.jpg 5\r\ntrain_00002.jpg 1\r\n");
        let entries = read_label_list(f.path(), "train", 7).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].as_ref().unwrap().name, "train_00001.jpg");
        assert_eq!(entries[1].as_ref().unwrap().label, 0);
    }

    #[test]
    fn label_lists() {
        let f = file("train_00001.jpg 5\ntest_0001.jpg 9\ntrain_00002.jpg 9\ntrain_3.jpg x\n");
        let entries = read_label_list(f.path(), "train", 7).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0].as_ref().unwrap(),
            &LabelEntry { name: "train_00001.jpg".into(), label: 4 }
        );
        let e1 = entries[1].as_ref().unwrap_err();
        assert_eq!(e1.line(), Some(3));
        assert!(e1.to_string().contains("label 9 is out of range 1..=7"), "{e1}");
        assert_eq!(entries[2].as_ref().unwrap_err().line(), Some(4));
        // The test line with label 9 is another split's business... unless the set has 11
        // classes, where 9 is fine.
        let entries = read_label_list(f.path(), "test", 11).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].as_ref().unwrap().label, 8);
    }

    #[test]
    fn au_files() {
        let ok = vec!["0.5"; 17].join(" ");
        assert_eq!(read_au_gt(file(&ok).path()).unwrap(), [0.5; 17]);
        let bad = vec!["1.5"; 17].join(" ");
        assert!(read_au_gt(file(&bad).path()).is_err());
        assert!(read_au_gt(file("0 0 0").path()).is_err());
    }

    #[test]
    fn sfew_names() {
        let p = Path::new("list.txt");
        let e = parse_sfew_name(p, 1, "Happy/abc_001").unwrap();
        assert_eq!((e.class.as_str(), e.id.as_str(), e.label), ("Happy", "abc_001", 3));
        assert!(parse_sfew_name(p, 1, "Joy/abc").is_err());
        assert!(parse_sfew_name(p, 1, "abc").is_err());
    }
}
