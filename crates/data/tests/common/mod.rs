//! Tiny dataset layouts (docs/METHOD.md section 5) written into temp folders for the tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Writes `text` to `path`, creating folders.
pub fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A small RGB image with some structure, saved as JPEG or PNG by extension.
pub fn write_image(path: &Path, w: u32, h: u32, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let v = x.wrapping_mul(7).wrapping_add(y.wrapping_mul(13)).wrapping_add(seed * 31);
        image::Rgb([(v % 251) as u8, ((x * 255) / w.max(1)) as u8, ((y * 255) / h.max(1)) as u8])
    });
    img.save(path).unwrap();
}

/// 68 landmark rows spread over a `w x h` box, offset by `(ox, oy)`.
pub fn landmarks(w: f64, h: f64, ox: f64, oy: f64) -> Vec<[f64; 2]> {
    (0..68)
        .map(|i| {
            let (col, row) = ((i % 17) as f64, (i / 17) as f64);
            [ox + 0.1 * w + col / 16.0 * 0.8 * w, oy + 0.1 * h + row / 3.0 * 0.8 * h]
        })
        .collect()
}

/// "x y" lines.
pub fn points_text(points: &[[f64; 2]]) -> String {
    points.iter().map(|p| format!("{} {}\n", p[0], p[1])).collect()
}

/// A RAF-DB layout under `root/<sub>` (`basic` or `compound`): one image per entry, each
/// `60 + 4 i` x `56` pixels with the box `6 5 50 49` and 68 landmarks inside it.
pub fn make_raf(root: &Path, sub: &str, entries: &[(&str, usize)]) -> PathBuf {
    let base = root.join(sub);
    let mut list = String::new();
    for (i, (name, label)) in entries.iter().enumerate() {
        list.push_str(&format!("{name} {label}\n"));
        let stem = name.rsplit_once('.').unwrap().0;
        write_image(&base.join("Image/original").join(name), 60 + 4 * i as u32, 56, i as u32);
        write(&base.join(format!("Annotation/boundingbox/{stem}.txt")), "6 5 50 49\n");
        write(
            &base.join(format!("Annotation/Landmarks_68_FAN_bbox/{stem}.txt")),
            &points_text(&landmarks(44.0, 44.0, 0.0, 0.0)),
        );
    }
    write(&base.join("EmoLabel/list_patition_label.txt"), &list);
    base
}

/// Adds `Annotation/AU_gt/<stem>.txt` for every entry of a RAF layout (AU `j` of entry `i`:
/// `((i + j) % 5) / 4`).
pub fn add_au_gt(base: &Path, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let stem = name.rsplit_once('.').unwrap().0;
        let values: Vec<String> =
            (0..17).map(|j| format!("{}", ((i + j) % 5) as f64 / 4.0)).collect();
        write(&base.join(format!("Annotation/AU_gt/{stem}.txt")), &values.join(" "));
    }
}

/// An SFEW 2.0 split folder (`Train` or `Val`) with one image per `(class, id)`; landmarks in
/// image pixels. Writes the id list under `list_experiment/` when `list` names it.
pub fn make_sfew(root: &Path, folder: &str, entries: &[(&str, &str)], list: Option<&str>) {
    let mut text = String::new();
    for (i, (class, id)) in entries.iter().enumerate() {
        text.push_str(&format!("{class}/{id}\n"));
        let ext = if i % 2 == 0 { "jpg" } else { "png" };
        write_image(&root.join(format!("{folder}/imgs/{class}/{id}.{ext}")), 72, 64, i as u32);
        write(
            &root.join(format!("{folder}/Annotations/Landmarks_68_FAN/{class}/{id}.txt")),
            &points_text(&landmarks(40.0, 40.0, 12.0, 10.0)),
        );
    }
    if let Some(list) = list {
        write(&root.join("list_experiment").join(list), &text);
    }
}
