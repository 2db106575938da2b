//! An extra dataset source (cargo feature `parquet`): a FER set stored as parquet, one row per
//! image, read with the `parquet` crate that candle-datasets brings. The samples then go through
//! the same preprocessing and loader as the folder layouts (docs/METHOD.md section 5).
//!
//! candle-datasets has no reader for images with landmarks; what it adds is
//! `candle_datasets::hub::from_hub`, which fetches a Hugging Face dataset's parquet files as
//! `SerializedFileReader`s: pass them to [`Dataset::from_parquet_readers`]. A local file opens
//! with [`Dataset::open_parquet`].
//!
//! # Schema
//!
//! Columns are found by name; other columns are ignored.
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `image` | binary, or a struct with a binary field `bytes` (the Hugging Face `datasets` image feature) | the encoded image file (JPEG or PNG). Required. |
//! | `label` | integer | 0-based class index in the order of docs/METHOD.md section 1 for the dataset kind given (7 basic or 11 compound classes). Required. |
//! | `landmarks` | list of float or double | `x0 y0 x1 y1 ...` of 68 (iBUG) or 66 points in image pixels. Required column; a null value, or fewer than 2 points, skips the row as an image without a landmark file. |
//! | `box` | list of 4 float or double | the face box `x1 y1 x2 y2` in image pixels. Optional; absent or null: the landmarks' extent. The enlargement factor is the kind's (0.15 RAF-DB, 0.20 SFEW). |
//! | `name` | string | the sample name in batches. Optional; default `row<N>`. |
//! | `split` | string | `train` or `test` (`val`/`validation` count as test); rows of the other split are ignored. Optional; absent: every row belongs to the split opened. |
//! | `au_gt` | list of 17 float | ground-truth AU intensities in [0, 1], AU order of section 1. Optional; when the column exists every kept row needs a value. |
//!
//! A malformed row (wrong type, label out of range, a non-finite value, a wrong number of
//! values, an undecodable image, a box outside its image) is an error naming the file and the
//! 1-based row; with `skip_bad` it is skipped and counted. The encoded images stay in memory
//! and are decoded lazily by the loader.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_datasets::hub::FileReader;
use parquet::file::reader::SerializedFileReader;
use parquet::record::{Field, Row};

use crate::dataset::{
    Dataset, DatasetKind, DatasetOptions, Entry, ImageBytes, Opened, SampleInfo, Split, check_box,
};
use crate::error::{DataError, Result};
use crate::landmarks::{Point, from_66, from_68};
use crate::preprocess::{self, AuGrid};
use aue_core::FaceBox;

impl Dataset {
    /// Opens the `split` of a FER set stored in the local parquet file `path` (schema in the
    /// module doc); `kind` gives the class set and the box enlargement.
    pub fn open_parquet(
        kind: DatasetKind,
        path: impl AsRef<Path>,
        split: Split,
        options: &DatasetOptions,
    ) -> Result<Dataset> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| DataError::io(path, "open parquet file", e))?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| DataError::invalid(path, format!("not a readable parquet file: {e}")))?;
        Dataset::from_parquet_readers(kind, path, vec![reader], split, options)
    }

    /// Like [`Dataset::open_parquet`], from parquet readers already open (for example the
    /// files `candle_datasets::hub::from_hub` returns). `source` names them in errors: reader
    /// `k` is `<source>#<k>` when there are several.
    pub fn from_parquet_readers(
        kind: DatasetKind,
        source: impl AsRef<Path>,
        readers: Vec<SerializedFileReader<File>>,
        split: Split,
        options: &DatasetOptions,
    ) -> Result<Dataset> {
        options.check()?;
        let source = source.as_ref().to_path_buf();
        let several = readers.len() > 1;
        let grid = AuGrid::new(options.input_size);
        let mut opened: Opened = (Vec::new(), 0, false);
        for (k, reader) in readers.iter().enumerate() {
            let name = if several {
                PathBuf::from(format!("{}#{k}", source.display()))
            } else {
                source.clone()
            };
            let (results, listed, has_au_gt) = read_file(kind, &name, reader, split, &grid)?;
            if k > 0 && has_au_gt != opened.2 {
                return Err(DataError::invalid(
                    &name,
                    "some parquet files have an `au_gt` column and some do not",
                ));
            }
            opened.0.extend(results);
            opened.1 += listed;
            opened.2 = has_au_gt;
        }
        Dataset::finish(kind, split, source, options, opened)
    }
}

/// The columns of one file.
struct Columns {
    au_gt: bool,
}

fn read_file(
    kind: DatasetKind,
    path: &Path,
    reader: &SerializedFileReader<File>,
    split: Split,
    grid: &AuGrid,
) -> Result<Opened> {
    let schema = reader.metadata().file_metadata().schema_descr().root_schema();
    let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
    for required in ["image", "label", "landmarks"] {
        if !names.contains(&required) {
            return Err(DataError::invalid(
                path,
                format!("no `{required}` column (columns: {})", names.join(", ")),
            ));
        }
    }
    let columns = Columns { au_gt: names.contains(&"au_gt") };
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| DataError::invalid(path, format!("cannot read rows: {e}")))?;
    let mut results = Vec::new();
    for (i, row) in rows.enumerate() {
        let row_no = i + 1;
        let row = match row {
            Ok(row) => row,
            Err(e) => return Err(row_error(path, row_no, format!("cannot read: {e}"))),
        };
        match read_row(kind, path, row_no, &row, &columns, split, grid) {
            Ok(None) => {} // the other split
            Ok(Some(entry)) => results.push(Ok(entry)),
            Err(e) => results.push(Err(e)),
        }
    }
    let listed = results.len();
    Ok((results, listed, columns.au_gt))
}

fn row_error(path: &Path, row: usize, message: impl Into<String>) -> DataError {
    DataError::Row { path: path.to_path_buf(), row, message: message.into() }
}

/// One row as an entry; `None` when it belongs to the other split.
fn read_row(
    kind: DatasetKind,
    path: &Path,
    row_no: usize,
    row: &Row,
    columns: &Columns,
    split: Split,
    grid: &AuGrid,
) -> Result<Option<Entry>> {
    let err = |m: String| row_error(path, row_no, m);
    let field =
        |name: &str| row.get_column_iter().find(|(n, _)| n.as_str() == name).map(|(_, f)| f);

    if let Some(value) = field("split") {
        let Field::Str(s) = value else {
            return Err(err(format!("`split` must be a string, found {value}")));
        };
        let row_split = match s.as_str() {
            "train" => Split::Train,
            "test" | "val" | "validation" => Split::Test,
            other => return Err(err(format!("unknown split `{other}` (train, test or val)"))),
        };
        if row_split != split {
            return Ok(None);
        }
    }
    let name = match field("name") {
        Some(Field::Str(s)) => s.clone(),
        Some(Field::Null) | None => format!("row{row_no}"),
        Some(other) => return Err(err(format!("`name` must be a string, found {other}"))),
    };
    let label = field("label")
        .and_then(integer)
        .ok_or_else(|| err("`label` must be an integer".to_string()))?;
    if label < 0 || label >= kind.num_classes() as i64 {
        return Err(err(format!(
            "label {label} is out of range 0..{} for {kind}",
            kind.num_classes()
        )));
    }
    let Some(values) = numbers(field("landmarks"), "landmarks").map_err(&err)? else {
        return Ok(Some(Entry::NoLandmarks(name)));
    };
    if values.len() % 2 != 0 {
        return Err(err(format!("`landmarks` holds {} values, not x y pairs", values.len())));
    }
    let points: Vec<Point> = values.chunks_exact(2).map(|p| [p[0], p[1]]).collect();
    let landmarks = match points.len() {
        n if n < 2 => return Ok(Some(Entry::NoLandmarks(name))),
        68 => from_68(&points),
        66 => from_66(&points),
        n => return Err(err(format!("expected 68 or 66 landmarks, found {n}"))),
    };
    let face_box = match numbers(field("box"), "box").map_err(&err)? {
        Some(b) if b.len() == 4 => {
            let fb = FaceBox::corners(b[0], b[1], b[2], b[3]);
            if fb.x2 <= fb.x1 || fb.y2 <= fb.y1 {
                return Err(err(format!("empty face box ({} {} {} {})", b[0], b[1], b[2], b[3])));
            }
            fb
        }
        Some(b) => return Err(err(format!("`box` holds {} values, expected 4", b.len()))),
        None => {
            let fb = FaceBox::extent(&landmarks);
            if fb.x2 <= fb.x1 || fb.y2 <= fb.y1 {
                return Err(err("landmarks span an empty box".to_string()));
            }
            fb
        }
    };
    let au_gt = if columns.au_gt {
        let Some(v) = numbers(field("au_gt"), "au_gt").map_err(&err)? else {
            return Err(err("`au_gt` is null".to_string()));
        };
        if v.len() != aue_core::NUM_AUS {
            return Err(err(format!("`au_gt` holds {} values, expected 17", v.len())));
        }
        let mut out = [0.0f32; aue_core::NUM_AUS];
        for (o, (x, au)) in out.iter_mut().zip(v.iter().zip(aue_core::AU_NAMES)) {
            if !(0.0..=1.0).contains(x) {
                return Err(err(format!("{au} intensity {x} is outside [0, 1]")));
            }
            *o = *x as f32;
        }
        Some(out)
    } else {
        None
    };
    let bytes = match field("image") {
        Some(Field::Bytes(b)) => b.data(),
        Some(Field::Group(g)) => match g.get_column_iter().find(|(n, _)| n.as_str() == "bytes") {
            Some((_, Field::Bytes(b))) => b.data(),
            _ => return Err(err("`image` struct has no binary `bytes` field".to_string())),
        },
        Some(other) => return Err(err(format!("`image` must be binary, found {other}"))),
        None => return Err(err("no `image` value".to_string())),
    };
    // Errors about the image name the file, the row and the sample.
    let image = PathBuf::from(format!("{}#row{row_no}:{name}", path.display()));
    let dims = preprocess::image_dimensions_bytes(bytes, &image)?;
    check_box(&image, dims, &face_box, &landmarks, kind, grid)?;
    Ok(Some(Entry::Sample(Box::new(SampleInfo {
        name,
        image,
        label: label as usize,
        face_box,
        landmarks,
        au_gt,
        width: dims.0,
        height: dims.1,
        bytes: Some(ImageBytes(Arc::from(bytes))),
    }))))
}

/// An integer field's value.
fn integer(field: &Field) -> Option<i64> {
    Some(match *field {
        Field::Byte(v) => i64::from(v),
        Field::Short(v) => i64::from(v),
        Field::Int(v) => i64::from(v),
        Field::Long(v) => v,
        Field::UByte(v) => i64::from(v),
        Field::UShort(v) => i64::from(v),
        Field::UInt(v) => i64::from(v),
        Field::ULong(v) => i64::try_from(v).ok()?,
        _ => return None,
    })
}

/// A numeric field's value as `f64`.
fn number(field: &Field) -> Option<f64> {
    Some(match *field {
        Field::Float(v) => f64::from(v),
        Field::Double(v) => v,
        Field::Float16(v) => f64::from(v),
        _ => integer(field)? as f64,
    })
}

/// A list of finite numbers; `None` for a null or absent value.
fn numbers(field: Option<&Field>, what: &str) -> Result<Option<Vec<f64>>, String> {
    let list = match field {
        None | Some(Field::Null) => return Ok(None),
        Some(Field::ListInternal(list)) => list,
        Some(other) => return Err(format!("`{what}` must be a list of numbers, found {other}")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, element) in list.elements().iter().enumerate() {
        let v = number(element)
            .ok_or_else(|| format!("`{what}` element {i} is not a number ({element})"))?;
        if !v.is_finite() {
            return Err(format!("`{what}` element {i} is not finite ({v})"));
        }
        out.push(v);
    }
    Ok(Some(out))
}
