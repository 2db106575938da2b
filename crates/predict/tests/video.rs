//! Runs the real `aue-predict` binary on short clips that the tests draw (the astronaut face
//! sliding across a grey canvas) and encode with the `ffmpeg` program: frame count, timestamps
//! against the known frame rate, one stable track, sampling, smoothing, overlays and plots, and
//! clear errors for damaged files and a missing FFmpeg.
//!
//! These tests need FFmpeg's `ffmpeg` and `ffprobe` programs (`.ci/run` installs them); without
//! them they fail with a message saying so.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aue_model::Stage;
use image::{Rgb, RgbImage};

mod common;

use common::{BIN, FACE, parse_csv, s, tiny_checkpoint};

/// The clip's frame rate: NTSC's 30000/1001, so that timestamps are not round numbers.
const RATE: (u64, u64) = (30000, 1001);
const FRAMES: usize = 12;
/// Frames of the clip that is cut short (long enough that the cut keeps whole frames).
const LONG: usize = 48;
const SHIFT: u32 = 3;

/// `n` frames of 256 x 192: the 160 x 160 face photo moving `SHIFT` px right per frame.
fn clip_frames(n: usize) -> Vec<RgbImage> {
    let face = image::open(FACE).unwrap().to_rgb8();
    (0..n as u32)
        .map(|k| {
            let mut img = RgbImage::from_pixel(256, 192, Rgb([110, 110, 110]));
            image::imageops::replace(&mut img, &face, i64::from(20 + SHIFT * (k % 24)), 16);
            img
        })
        .collect()
}

/// Encodes `frames` with ffmpeg (`codec` arguments) into `out`.
fn encode(frames: &[RgbImage], codec: &[&str], out: &Path) {
    let (w, h) = frames[0].dimensions();
    let mut child = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"])
        .args(["-s", &format!("{w}x{h}"), "-framerate", &format!("{}/{}", RATE.0, RATE.1)])
        .args(["-i", "pipe:0"])
        .args(codec)
        .args(["-pix_fmt", "yuv420p"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "these tests need FFmpeg's `ffmpeg` program on PATH (CI installs it: \
                 apt-get install ffmpeg): {e}"
            )
        });
    let mut stdin = child.stdin.take().unwrap();
    for f in frames {
        stdin.write_all(f.as_raw()).unwrap();
    }
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "ffmpeg: {}", String::from_utf8_lossy(&o.stderr));
}

/// A test clip of `n` frames as MPEG-4 part 2 with B-frames (FFmpeg's built-in encoder;
/// B-frames make the decode order differ from the presentation order) in `name`'s container.
fn make_clip(dir: &Path, name: &str, n: usize) -> PathBuf {
    let path = dir.join(name);
    encode(&clip_frames(n), &["-c:v", "mpeg4", "-q:v", "3", "-bf", "2"], &path);
    path
}

/// Runs the binary (optionally with PATH replaced), failing the test if it runs over a minute.
fn run_bounded(args: &[&str], path_env: Option<&Path>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    let mut child = cmd.spawn().unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("aue-predict {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err
}

fn num(r: &BTreeMap<String, String>, k: &str) -> f64 {
    r[k].parse().unwrap_or_else(|_| panic!("{k} = {:?}", r[k]))
}

fn timestamp(k: u64) -> f64 {
    (k * RATE.1) as f64 / RATE.0 as f64
}

#[test]
fn video_rows_have_frames_timestamps_and_one_stable_track() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path(), Stage::Fuse, true);
    let clip = make_clip(tmp.path(), "clip.mp4", FRAMES);
    let (out, overlays, plots) =
        (tmp.path().join("p.csv"), tmp.path().join("ov"), tmp.path().join("plots"));
    let o = run_bounded(
        &[
            "--checkpoint",
            s(&ckpt),
            s(&clip),
            FACE,
            "--out",
            s(&out),
            "--overlay-dir",
            s(&overlays),
            "--plot-dir",
            s(&plots),
            "--device",
            "cpu",
        ],
        None,
    );
    let err = ok(&o);
    assert!(err.contains("frames/s"), "throughput line missing: {err}");
    let (header, rows) = parse_csv(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(&header[..5], ["file", "frame", "timestamp", "face", "status"]);
    let video: Vec<_> = rows.iter().filter(|r| r["file"].ends_with("clip.mp4")).collect();
    assert_eq!(video.len(), FRAMES, "one row per frame (one face each): {video:?}");
    for (k, r) in video.iter().enumerate() {
        assert_eq!(r["status"], "ok", "frame {k}: {r:?}");
        assert_eq!(r["frame"], k.to_string());
        let t = num(r, "timestamp");
        assert!((t - timestamp(k as u64)).abs() < 1e-9, "frame {k}: {t} s");
        assert_eq!(r["face"], "0", "one face, one track id");
        let aus: Vec<f64> = aue_core::AU_NAMES.iter().map(|a| num(r, a)).collect();
        assert!(aus.iter().all(|p| (0.0..=1.0).contains(p)));
    }
    // The box follows the face to the right.
    let moved = num(video[FRAMES - 1], "x1") - num(video[0], "x1");
    let want = f64::from(SHIFT) * (FRAMES - 1) as f64;
    assert!((moved - want).abs() < 0.3 * want, "box moved {moved} px, face {want}");
    // The photo in the same run keeps the image columns.
    let photo: Vec<_> = rows.iter().filter(|r| r["file"].ends_with("astronaut_face.png")).collect();
    assert_eq!(photo.len(), 1);
    assert!(photo[0]["frame"].is_empty() && photo[0]["timestamp"].is_empty());
    // One overlay per frame run, and one plot for the one track.
    for k in 0..FRAMES {
        let png = overlays.join(format!("clip/frame_{k:06}.png"));
        assert_eq!(image::open(&png).unwrap().width(), 256, "{}", png.display());
    }
    assert!(overlays.join("astronaut_face.png").is_file());
    let svgs: Vec<_> = std::fs::read_dir(&plots).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(svgs, ["clip_face0.svg"]);
    let svg = std::fs::read_to_string(plots.join("clip_face0.svg")).unwrap();
    assert!(svg.contains("AU12") && svg.contains("Happiness"), "the plot names AUs and classes");
}

#[test]
fn start_end_every_sample_and_smoothing_is_a_centred_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path(), Stage::Fuse, true);
    let clip = make_clip(tmp.path(), "clip.mkv", FRAMES);
    let out = tmp.path().join("p.csv");
    let jsonl = tmp.path().join("p.jsonl");
    // Matroska keeps milliseconds: frame k is at round(k * 1001 / 30) ms. Timestamps in
    // [0.09, 0.29] are frames 3..=8 (0.100 .. 0.267 s); every 2nd: 3, 5, 7.
    let run = |out: &Path, extra: &[&str]| {
        let mut a = vec!["--checkpoint", s(&ckpt), s(&clip), "--out", s(out)];
        a.extend_from_slice(extra);
        ok(&run_bounded(&a, None));
        std::fs::read_to_string(out).unwrap()
    };
    let go = |extra: &[&str]| parse_csv(&run(&out, extra)).1;
    let text =
        run(&jsonl, &["--start", "0.09", "--end", "0.29", "--every", "2", "--format", "jsonl"]);
    let rows: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let frames: Vec<u64> = rows.iter().map(|r| r["frame"].as_u64().unwrap()).collect();
    assert_eq!(frames, [3, 5, 7]);
    for r in &rows {
        let k = r["frame"].as_u64().unwrap();
        let t = r["timestamp"].as_f64().unwrap();
        assert!((t - (timestamp(k) * 1000.0).round() / 1000.0).abs() < 1e-9, "{r}");
        assert_eq!((r["face"].as_u64(), r["status"].as_str()), (Some(0), Some("ok")));
        assert_eq!(r["aus"].as_object().unwrap().len(), 17);
    }
    // Smoothing over 0.2 s: each value is the mean of the raw values within 0.1 s of it.
    let raw = go(&[]);
    let smooth = go(&["--smooth", "0.2"]);
    assert_eq!((raw.len(), smooth.len()), (FRAMES, FRAMES));
    let mut changed = 0;
    for (r, sm) in raw.iter().zip(&smooth) {
        let t = num(r, "timestamp");
        let near: Vec<_> =
            raw.iter().filter(|q| (num(q, "timestamp") - t).abs() <= 0.1 + 1e-9).collect();
        assert!(near.len() >= 3, "{t}: {} frames in the window", near.len());
        for col in aue_core::AU_NAMES
            .iter()
            .map(|a| a.to_string())
            .chain(aue_core::EXPRESSIONS_BASIC.iter().map(|e| format!("p_{e}")))
        {
            let mean = near.iter().map(|q| num(q, &col)).sum::<f64>() / near.len() as f64;
            let got = num(sm, &col);
            assert!((got - mean).abs() < 1e-6, "{col} at {t}: {got} vs mean {mean}");
            if (got - num(r, &col)).abs() > 1e-6 {
                changed += 1;
            }
        }
        // Attention and boxes are not smoothed.
        assert_eq!((&r["att_AU12"], &r["x1"]), (&sm["att_AU12"], &sm["x1"]));
    }
    assert!(changed > 0, "smoothing changed nothing");
}

#[test]
fn damaged_videos_are_clear_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path(), Stage::Fuse, true);
    let out = tmp.path().join("p.csv");
    let good = make_clip(tmp.path(), "good.mp4", FRAMES);
    let bytes = std::fs::read(&good).unwrap();
    // Not a video at all; an mp4 cut in half (its index, written last, is lost).
    let garbage = tmp.path().join("garbage.mp4");
    std::fs::write(&garbage, b"this is not a video file, only some text".repeat(50)).unwrap();
    let cut = tmp.path().join("cut.mp4");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    for bad in [&garbage, &cut] {
        let o = run_bounded(&["--checkpoint", s(&ckpt), s(bad), "--out", s(&out)], None);
        let err = String::from_utf8_lossy(&o.stderr);
        let name = bad.file_name().unwrap().to_str().unwrap();
        assert!(!o.status.success(), "{name}: {err}");
        assert!(err.contains(name) && err.contains("ffprobe cannot read it"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        let (_, rows) = parse_csv(&std::fs::read_to_string(&out).unwrap());
        assert_eq!(rows.len(), 1);
        assert!(rows[0]["status"].starts_with("error: ") && rows[0]["status"].contains(name));
    }
    // A Matroska file cut short decodes up to the cut (it has no index at its end): rows for
    // those frames, a warning naming the file, and the run goes on to the next input.
    let mkv = make_clip(tmp.path(), "long.mkv", LONG);
    let bytes = std::fs::read(&mkv).unwrap();
    let short = tmp.path().join("short.mkv");
    std::fs::write(&short, &bytes[..bytes.len() * 6 / 10]).unwrap();
    let every = 8;
    let o = run_bounded(
        &["--checkpoint", s(&ckpt), s(&short), s(&good), "--out", s(&out), "--every", "8"],
        None,
    );
    let err = ok(&o);
    let (_, rows) = parse_csv(&std::fs::read_to_string(&out).unwrap());
    let n_short = rows.iter().filter(|r| r["file"].ends_with("short.mkv")).count();
    assert!((1..LONG / every).contains(&n_short), "{n_short} rows from the cut file: {err}");
    assert!(err.contains("short.mkv") && err.contains("truncated"), "{err}");
    let n_good = rows.iter().filter(|r| r["file"].ends_with("good.mp4")).count();
    assert_eq!(n_good, FRAMES.div_ceil(every));
}

#[test]
fn missing_ffmpeg_is_one_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = tiny_checkpoint(tmp.path(), Stage::Fuse, true);
    let clip = tmp.path().join("any.webm");
    std::fs::write(&clip, b"x").unwrap();
    let empty = tmp.path().join("no-programs-here");
    std::fs::create_dir(&empty).unwrap();
    let out = tmp.path().join("p.csv");
    let o = run_bounded(&["--checkpoint", s(&ckpt), s(&clip), "--out", s(&out)], Some(&empty));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("was not found on PATH") && err.contains("install FFmpeg"), "{err}");
    assert!(!out.exists(), "no output before the run could start");
}
