//! Temporal smoothing of a video's per-face probabilities (`--smooth SECONDS`).
//!
//! A centred moving average over time, per track: a face's expression probabilities and AU
//! probabilities at time t become the plain mean of that track's `ok` rows with timestamps in
//! [t - w/2, t + w/2] (w the window in seconds), and its expression the most probable class of the
//! mean. A centred window adds no lag (an exponential average would shift every onset later);
//! averaging probabilities keeps them in [0, 1] and the class probabilities summing to 1. The
//! fusion attention weights, box and score stay as the model gave them. A window of 0 leaves the
//! rows as they are.
//!
//! Frames stream through: a frame is handed on once every frame up to w/2 after it has arrived,
//! so only about one window of frames (with their pictures, for the overlay) is held.

use std::collections::VecDeque;

use aue_core::NUM_AUS;

use crate::output::{Row, Status};
use crate::video::VideoFrame;

/// Slack for comparing timestamps that come from one time base.
const EPS: f64 = 1e-9;

struct Entry {
    timestamp: f64,
    /// The rows as the model gave them (kept while they are in a later frame's window).
    raw: Vec<Row>,
    /// The frame itself, until it is handed on.
    frame: Option<VideoFrame>,
}

/// A streaming centred moving average (see the module documentation).
pub struct Smoother {
    half: f64,
    labels: Vec<String>,
    entries: VecDeque<Entry>,
    /// Index in `entries` of the first frame not yet handed on.
    next: usize,
}

impl Smoother {
    /// A smoother over a window of `window` seconds (0: off); `labels` name the classes.
    pub fn new(window: f64, labels: &[String]) -> Smoother {
        Smoother {
            half: window.max(0.0) / 2.0,
            labels: labels.to_vec(),
            entries: VecDeque::new(),
            next: 0,
        }
    }

    /// Adds the next frame (frames must come in time order) and returns the frames whose
    /// window is now complete, smoothed, in order.
    pub fn push(&mut self, frame: VideoFrame) -> Vec<VideoFrame> {
        let now = frame.timestamp;
        self.entries.push_back(Entry {
            timestamp: now,
            raw: frame.rows.clone(),
            frame: Some(frame),
        });
        let mut out = Vec::new();
        while self.next < self.entries.len()
            && self.entries[self.next].timestamp + self.half <= now + EPS
        {
            out.push(self.hand_on());
        }
        out
    }

    /// Hands on every frame still held (the end of the video).
    pub fn finish(&mut self) -> Vec<VideoFrame> {
        let mut out = Vec::new();
        while self.next < self.entries.len() {
            out.push(self.hand_on());
        }
        out
    }

    /// Smooths and returns the frame at `next`, then forgets frames no later window reaches.
    fn hand_on(&mut self) -> VideoFrame {
        let h = self.next;
        let t = self.entries[h].timestamp;
        let mut frame = match self.entries[h].frame.take() {
            Some(f) => f,
            None => unreachable!("a frame is handed on once: `next` only moves forward"),
        };
        if self.half > 0.0 {
            for row in &mut frame.rows {
                self.smooth_row(row, t);
            }
        }
        self.next += 1;
        // Later frames have timestamps >= t, so frames before t - half are out of every window.
        while self.next > 0
            && self.entries.front().is_some_and(|e| e.timestamp < t - self.half - EPS)
        {
            self.entries.pop_front();
            self.next -= 1;
        }
        frame
    }

    fn smooth_row(&self, row: &mut Row, t: f64) {
        let (Status::Ok, Some(face)) = (&row.status, row.face) else { return };
        let mut probs: Option<Vec<f64>> = None;
        let mut aus: Option<[f64; NUM_AUS]> = None;
        let mut n = 0usize;
        let same_track = |r: &&Row| r.face == Some(face) && r.status == Status::Ok;
        for e in self.entries.iter().filter(|e| (e.timestamp - t).abs() <= self.half + EPS) {
            for r in e.raw.iter().filter(same_track) {
                n += 1;
                if let Some(p) = &r.probs {
                    let acc = probs.get_or_insert_with(|| vec![0.0; p.len()]);
                    for (a, v) in acc.iter_mut().zip(p) {
                        *a += f64::from(*v);
                    }
                }
                if let Some(a) = &r.aus {
                    let acc = aus.get_or_insert([0.0; NUM_AUS]);
                    for (s, v) in acc.iter_mut().zip(a) {
                        *s += f64::from(*v);
                    }
                }
            }
        }
        if n == 0 {
            return; // Not reached: the row is in its own window.
        }
        let mean = |s: f64| (s / n as f64) as f32;
        if let (Some(p), Some(_)) = (probs, &row.probs) {
            let p: Vec<f32> = p.into_iter().map(mean).collect();
            let best = p.iter().enumerate().fold(0, |m, (i, &v)| if v > p[m] { i } else { m });
            row.expression = self.labels.get(best).cloned();
            row.probs = Some(p);
        }
        if let (Some(a), Some(_)) = (aus, &row.aus) {
            row.aus = Some(a.map(mean));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(i: u64, t: f64, faces: &[(usize, f32)]) -> VideoFrame {
        let rows = faces
            .iter()
            .map(|&(id, v)| {
                let mut r = Row::status("v.mp4", Status::Ok);
                r.frame = Some(i);
                r.timestamp = Some(t);
                r.face = Some(id);
                r.probs = Some(vec![v, 1.0 - v]);
                r.aus = Some([v; NUM_AUS]);
                r
            })
            .collect();
        VideoFrame {
            index: i,
            timestamp: t,
            rows,
            image: image::RgbImage::new(1, 1),
            faces: vec![],
        }
    }

    fn labels() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    /// Runs frames at 10 fps through a smoother; face 0 is a step 0 -> 1 at frame 5, face 1 is
    /// constant 0.2 and absent from frame 3.
    fn run(window: f64) -> Vec<VideoFrame> {
        let mut s = Smoother::new(window, &labels());
        let mut out = Vec::new();
        for i in 0..10u64 {
            let v = if i < 5 { 0.0 } else { 1.0 };
            let faces: Vec<(usize, f32)> =
                if i == 3 { vec![(0, v)] } else { vec![(0, v), (1, 0.2)] };
            out.extend(s.push(frame(i, i as f64 / 10.0, &faces)));
        }
        out.extend(s.finish());
        out
    }

    #[test]
    fn no_window_changes_nothing_and_keeps_order() {
        let out = run(0.0);
        assert_eq!(out.iter().map(|f| f.index).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        assert_eq!(out[5].rows[0].probs, Some(vec![1.0, 0.0]));
        assert_eq!(out[4].rows[0].aus, Some([0.0; NUM_AUS]));
    }

    #[test]
    fn centred_average_over_the_window_per_track() {
        // Window 0.4 s: frames t-0.2 .. t+0.2, five frames inside the video.
        let out = run(0.4);
        assert_eq!(out.len(), 10);
        assert_eq!(out.iter().map(|f| f.index).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
        let p0 = |i: usize| out[i].rows[0].probs.as_ref().unwrap()[0];
        // Frame 4 sees frames 2..=6: values 0,0,0,1,1 -> 0.4; frame 5 sees 3..=7 -> 0.6.
        assert!((p0(4) - 0.4).abs() < 1e-6 && (p0(5) - 0.6).abs() < 1e-6, "{} {}", p0(4), p0(5));
        // At the ends the window is cut: frame 0 sees 0..=2 -> 0; frame 9 sees 7..=9 -> 1.
        assert_eq!((p0(0), p0(9)), (0.0, 1.0));
        assert_eq!(out[9].rows[0].aus.unwrap()[16], 1.0);
        // Class probabilities still sum to 1 and the expression follows the mean.
        let p = out[5].rows[0].probs.as_ref().unwrap();
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6);
        assert_eq!(out[5].rows[0].expression.as_deref(), Some("a"));
        assert_eq!(out[4].rows[0].expression.as_deref(), Some("b"));
        // The other track is averaged only with itself (0.2 everywhere, also around its gap).
        assert!((out[2].rows[1].probs.as_ref().unwrap()[0] - 0.2).abs() < 1e-6);
        assert_eq!(out[3].rows.len(), 1);
    }
}
