//! Videos: every kept frame of a video through the same [`Predictor`] as still images (one model
//! load), its faces tied into tracks ([`crate::track`]), optionally smoothed over time
//! ([`crate::smooth`]), handed to the caller frame by frame in order.
//!
//! Frames are decoded by FFmpeg on a background thread ([`crate::decode`]) while the model runs
//! on the previous one. Each row gets the frame's index and timestamp, and `face` is the face's
//! track id. A frame without a face gives one `no_face` row, like an image.

use std::path::Path;
use std::time::{Duration, Instant};

use aue_landmarks::FaceBox;
use image::RgbImage;

use crate::decode::{Sampling, VideoInfo, VideoReader};
use crate::error::PredictError;
use crate::output::{Row, Status};
use crate::smooth::Smoother;
use crate::track::{Tracker, TrackerConfig};
use crate::{Face, Predictor};

/// How a video is run.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VideoOptions {
    /// Which frames to run.
    pub sampling: Sampling,
    /// Window of the centred moving average in seconds (0: no smoothing).
    pub smooth: f64,
    /// Face tracking.
    pub tracker: TrackerConfig,
}

/// One frame's results, handed on in frame order.
pub struct VideoFrame {
    /// 0-based index among the video's decoded frames.
    pub index: u64,
    /// Timestamp in seconds.
    pub timestamp: f64,
    /// One row per face (sorted by track id), or one `no_face` / `error` row.
    pub rows: Vec<Row>,
    /// The decoded picture (for the overlay).
    pub image: RgbImage,
    /// Every detected face's box and landmarks (detector order).
    pub faces: Vec<Face>,
}

/// What running a video came to.
#[derive(Debug, Default)]
pub struct VideoSummary {
    /// The stream header, when the file could be probed.
    pub info: Option<VideoInfo>,
    /// Frames decoded (including skipped ones), when decoding ended normally.
    pub decoded: Option<u64>,
    /// Frames run through the model.
    pub frames: u64,
    /// Rows with status `ok` (faces).
    pub faces: u64,
    /// Face tracks started.
    pub tracks: usize,
    /// Wall time from opening the file to the last frame handed on.
    pub elapsed: Duration,
    /// Why the video could not be read, or stopped being read (frames before it were handed
    /// on).
    pub error: Option<PredictError>,
}

impl VideoSummary {
    /// Frames run per second of wall time.
    pub fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Predictor {
    /// Runs the kept frames of the video at `path`, calling `on_frame` with each frame's results
    /// in order. A video that cannot be read (or breaks off) is reported in
    /// [`VideoSummary::error`]; only an error of `on_frame` stops the run with `Err`.
    pub fn predict_video<E>(
        &self,
        path: &Path,
        opts: &VideoOptions,
        mut on_frame: impl FnMut(&VideoInfo, VideoFrame) -> Result<(), E>,
    ) -> Result<VideoSummary, E> {
        let started = Instant::now();
        let file = path.display().to_string();
        let mut summary = VideoSummary::default();
        let mut reader = match VideoReader::open(path, opts.sampling) {
            Ok(r) => r,
            Err(e) => {
                summary.error = Some(e);
                summary.elapsed = started.elapsed();
                return Ok(summary);
            }
        };
        let info = reader.info().clone();
        tracing::info!(
            video = %file,
            width = info.width,
            height = info.height,
            codec = %info.codec,
            frames = ?info.frames,
            fps = ?info.frame_rate,
            "decoding"
        );
        let mut tracker = Tracker::new(opts.tracker);
        let mut smoother = Smoother::new(opts.smooth, self.info().labels());
        let mut hand_on = |frame: VideoFrame, summary: &mut VideoSummary| {
            summary.frames += 1;
            summary.faces += frame.rows.iter().filter(|r| r.status == Status::Ok).count() as u64;
            on_frame(&info, frame)
        };
        // One frame at a time (the detector's pass uses the threads itself): running several
        // frames through `predict_batch` showed no gain on the 2-core development machine.
        for item in reader.by_ref() {
            let frame = match item {
                Ok(f) => f,
                Err(e) => {
                    summary.error = Some(e);
                    break;
                }
            };
            let (mut rows, faces) = self.predict_rgb(&file, &frame.image).unwrap_or_else(|e| {
                let msg = format!("{file}: frame {}: {e}", frame.index);
                (vec![Row::status(&file, Status::Error(msg))], vec![])
            });
            let boxes: Vec<FaceBox> = rows
                .iter()
                .filter_map(|r| {
                    let [x1, y1, x2, y2] = r.face_box?;
                    Some(FaceBox { x1, y1, x2, y2, score: r.score.unwrap_or(0.0) })
                })
                .collect();
            let mut ids = tracker.assign(&boxes, frame.timestamp).into_iter();
            for row in &mut rows {
                row.frame = Some(frame.index);
                row.timestamp = Some(frame.timestamp);
                if row.face_box.is_some() {
                    row.face = ids.next();
                }
            }
            rows.sort_by_key(|r| r.face);
            let frame = VideoFrame {
                index: frame.index,
                timestamp: frame.timestamp,
                rows,
                image: frame.image,
                faces,
            };
            for f in smoother.push(frame) {
                hand_on(f, &mut summary)?;
            }
        }
        for f in smoother.finish() {
            hand_on(f, &mut summary)?;
        }
        summary.decoded = reader.stats().map(|s| s.decoded);
        drop(reader);
        summary.tracks = tracker.tracks_started();
        summary.info = Some(info);
        summary.elapsed = started.elapsed();
        Ok(summary)
    }
}
