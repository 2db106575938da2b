//! The parquet dataset source (feature `parquet`) on fixtures written by
//! `python3 tools/make_data_fixtures.py --parquet`: the parity samples as rows, which must load
//! exactly as the same samples do from the RAF-DB folder layout.
#![cfg(feature = "parquet")]

use std::path::{Path, PathBuf};

use aue_data::{Augment, Dataset, DatasetKind, DatasetOptions, Loader, LoaderOptions, Split};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn opts() -> DatasetOptions {
    DatasetOptions { input_size: 64, ..DatasetOptions::default() }
}

#[test]
fn rows_load_like_the_folder_layout() {
    let path = fixtures().join("parquet/fer.parquet");
    let table = Dataset::open_parquet(DatasetKind::Rafdb, &path, Split::Test, &opts()).unwrap();
    let folder =
        Dataset::open(DatasetKind::Rafdb, fixtures().join("parity/raf"), Split::Test, &opts())
            .unwrap();
    assert_eq!(table.len(), 4);
    assert_eq!(table.report().listed, 5);
    assert_eq!(table.report().no_landmarks, vec!["no_landmarks.jpg"]);
    assert!(table.has_au_gt());
    assert_eq!(table.class_counts(), folder.class_counts());
    for (i, (t, f)) in table.samples().iter().zip(folder.samples()).enumerate() {
        assert_eq!((&t.name, t.label, t.width, t.height), (&f.name, f.label, f.width, f.height));
        assert_eq!(t.landmarks, f.landmarks);
        assert_eq!(t.face_box, f.face_box);
        assert_eq!(t.au_gt.unwrap()[0], (i % 5) as f32 / 4.0);
        for augment in [Augment::NONE, Augment { dx: 2, dy: -1, flip: true }] {
            // The folder layout has no AU ground truth; everything else must be identical.
            let mut want = folder.prepare(i, &augment).unwrap();
            want.au_gt = t.au_gt;
            assert_eq!(table.prepare(i, &augment).unwrap(), want, "{} {augment:?}", t.name);
        }
    }
    // The loader takes in-memory images like files.
    let loader = Loader::new(&table, LoaderOptions::eval(3)).unwrap();
    let batches: Vec<_> = loader.epoch(0).map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![3, 1]);
    assert_eq!(batches[0].au_gt.as_ref().unwrap().dims(), &[3, 17]);

    // The train row: no box column value, so the box is the landmarks' extent.
    let train = Dataset::open_parquet(DatasetKind::Rafdb, &path, Split::Train, &opts()).unwrap();
    assert_eq!(train.len(), 1);
    let s = &train.samples()[0];
    assert_eq!(s.name, "train_row.jpg");
    let xs = s.landmarks.iter().map(|p| p[0]);
    assert_eq!(s.face_box.x1, xs.clone().fold(f64::INFINITY, f64::min));
    assert_eq!(s.face_box.x2, xs.fold(f64::NEG_INFINITY, f64::max));
}

#[test]
fn bad_rows_name_the_file_and_row() {
    let path = fixtures().join("parquet/bad.parquet");
    let err = Dataset::open_parquet(DatasetKind::Rafdb, &path, Split::Train, &opts()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("bad.parquet: row 2: label 9 is out of range"), "{text}");
    // Compound has 11 classes: label 9 is fine there, and the next bad row is reported.
    let err = Dataset::open_parquet(DatasetKind::RafdbCompound, &path, Split::Train, &opts())
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("bad.parquet: row 3: `landmarks` element 0 is not finite"), "{text}");
    // skip_bad keeps the good row and counts the two bad ones.
    let options = DatasetOptions { skip_bad: true, ..opts() };
    let ds = Dataset::open_parquet(DatasetKind::Rafdb, &path, Split::Train, &options).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.report().bad.len(), 2);
    // A file that is not parquet.
    let not = fixtures().join("parity/raf/basic/EmoLabel/list_patition_label.txt");
    let err = Dataset::open_parquet(DatasetKind::Rafdb, &not, Split::Train, &opts()).unwrap_err();
    assert!(err.to_string().contains("list_patition_label.txt: not a readable parquet file"));
}
