//! Compares the Candle port with a JSON file written by `tools/landmarks/faceapi_reference.js`
//! on any set of PNG images, and prints a table of the largest differences.
//! Run: `cargo run --release -p aue-landmarks --example faceapi_compare -- REF.json IMAGE_DIR`

use std::path::PathBuf;

use aue_landmarks::{
    DetectorKind, DetectorOptions, FaceBox, LandmarkNetKind, Landmarker, LandmarkerConfig,
    load_image,
};

fn f(v: &serde_json::Value) -> f32 {
    v.as_f64().unwrap_or(f64::NAN) as f32
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(args.len() == 3, "usage: faceapi_compare REF.json IMAGE_DIR");
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&args[1])?)?;
    let dir = PathBuf::from(&args[2]);
    // The reference's `faces` are the tiny detector's.
    let detector = DetectorOptions { kind: DetectorKind::Tiny, ..Default::default() };
    let full = Landmarker::new(&LandmarkerConfig { detector, ..Default::default() })?;
    let tiny = Landmarker::new(&LandmarkerConfig { net: LandmarkNetKind::Tiny, detector })?;
    println!(
        "| image | faces (ours / face-api) | max box diff (px) | max score diff | max point diff full / tiny (px) |"
    );
    println!("|---|---|---|---|---|");
    for res in doc["results"].as_array().into_iter().flatten() {
        let name = res["image"].as_str().unwrap_or_default();
        let img = load_image(&dir.join(name))?;
        let ours = full.detect_faces(&img)?;
        let theirs = res["faces"].as_array().cloned().unwrap_or_default();
        let (mut bd, mut sd) = (0f32, 0f32);
        for (o, t) in ours.iter().zip(&theirs) {
            let b = &t["box"];
            let tb =
                FaceBox::from_corners(f(&b[0]), f(&b[1]), f(&b[0]) + f(&b[2]), f(&b[1]) + f(&b[3]));
            bd = bd
                .max((o.x1 - tb.x1).abs())
                .max((o.y1 - tb.y1).abs())
                .max((o.x2 - tb.x2).abs())
                .max((o.y2 - tb.y2).abs());
            sd = sd.max((o.score - f(&t["score"])).abs());
        }
        let mut pd = [0f32; 2];
        for (k, (key, lm)) in
            [("face_landmark_68", &full), ("face_landmark_68_tiny", &tiny)].into_iter().enumerate()
        {
            for case in res["landmarks"][key].as_array().into_iter().flatten() {
                let b = &case["box"];
                let face = FaceBox::from_corners(
                    f(&b[0]),
                    f(&b[1]),
                    f(&b[0]) + f(&b[2]),
                    f(&b[1]) + f(&b[3]),
                );
                let got = lm.landmarks(&img, &face)?;
                let (cx, cy) = (f(&case["crop"][0]), f(&case["crop"][1]));
                for (i, p) in case["points"].as_array().into_iter().flatten().enumerate() {
                    pd[k] = pd[k]
                        .max((got[i][0] - f(&p[0]) - cx).abs())
                        .max((got[i][1] - f(&p[1]) - cy).abs());
                }
            }
        }
        println!(
            "| {name} | {} / {} | {bd:.2e} | {sd:.2e} | {:.2e} / {:.2e} |",
            ours.len(),
            theirs.len(),
            pd[0],
            pd[1]
        );
    }
    Ok(())
}
