//! Times the detector and the landmark nets on the CPU and prints a table (images/s per stage and
//! batch size). Run: `cargo run --release -p aue-landmarks --example landmarks_bench [IMAGE]`
//! (default image: the parity fixture).

use std::path::PathBuf;
use std::time::Instant;

use aue_landmarks::preprocess::{DETECTOR_MEAN_RGB, Padding, PixelRect, square_input};
use aue_landmarks::{
    DetectorKind, DetectorOptions, FaceBox, LandmarkNetKind, Landmarker, LandmarkerConfig,
    load_image,
};

fn time<F: FnMut()>(mut f: F, reps: usize) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    start.elapsed().as_secs_f64() / reps as f64
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/astronaut_face.png"))
    });
    let img = load_image(&path)?;
    println!(
        "image {} ({}x{}), rayon threads {}",
        path.display(),
        img.width(),
        img.height(),
        rayon::current_num_threads()
    );
    println!("| stage | batch | ms / batch | images/s |");
    println!("|---|---|---|---|");
    let rect = PixelRect { x: 0, y: 0, width: img.width(), height: img.height() };
    let t = time(|| drop(square_input(&img, rect, 416, Padding::After, DETECTOR_MEAN_RGB)), 10);
    println!("| tiny detector preprocessing (416) | 1 | {:.1} | {:.1} |", t * 1e3, 1.0 / t);
    for net in [LandmarkNetKind::Full, LandmarkNetKind::Tiny] {
        let lm = Landmarker::new(&LandmarkerConfig { net, ..Default::default() })?;
        let face = lm.detect_faces(&img)?.first().copied().unwrap_or(FaceBox::from_corners(
            0.0,
            0.0,
            img.width() as f32,
            img.height() as f32,
        ));
        for batch in [1, 16] {
            let imgs: Vec<_> = (0..batch).map(|_| &img).collect();
            if net == LandmarkNetKind::Full {
                for kind in [DetectorKind::Ssd, DetectorKind::Tiny] {
                    let cfg = LandmarkerConfig {
                        detector: DetectorOptions { kind, ..Default::default() },
                        ..Default::default()
                    };
                    let det = Landmarker::new(&cfg)?;
                    let t = time(|| drop(det.detect_faces_batch(&imgs).unwrap()), 3);
                    println!(
                        "| detector {} | {batch} | {:.1} | {:.1} |",
                        kind.name(),
                        t * 1e3,
                        batch as f64 / t
                    );
                }
            }
            let faces: Vec<_> = (0..batch).map(|_| (&img, face)).collect();
            let t = time(|| drop(lm.landmarks_batch(&faces).unwrap()), 5);
            println!("| landmarks {net:?} | {batch} | {:.1} | {:.1} |", t * 1e3, batch as f64 / t);
        }
    }
    Ok(())
}
