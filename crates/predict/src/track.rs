//! Face tracks across video frames: greedy IoU matching of each frame's detections to the tracks
//! seen recently, so that a face keeps one id while it stays on screen.
//!
//! Per frame: every (track, detection) pair whose boxes overlap by at least `iou_threshold`
//! (intersection over union) is a candidate; candidates are taken best IoU first, each track and
//! each detection at most once. A detection left over starts a new track (ids count up from 0 in
//! order of appearance). A track not matched for more than `max_gap` seconds is closed; until
//! then it can be resumed (a face hidden for a moment, or missed by the detector for a frame
//! or two, keeps its id when it comes back near where it was). Written by hand: greedy IoU
//! assignment is a few lines, and the tracking crates bring Kalman filters and Hungarian
//! matching that per-frame face boxes at video rates do not need.

use aue_landmarks::FaceBox;

/// Tracker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    /// Minimum IoU between a track's last box and a detection to continue the track.
    pub iou_threshold: f32,
    /// Seconds a track may go unmatched and still be resumed.
    pub max_gap: f64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig { iou_threshold: 0.3, max_gap: 1.0 }
    }
}

#[derive(Debug, Clone)]
struct Track {
    id: usize,
    last: FaceBox,
    last_seen: f64,
}

/// Assigns track ids to the faces of successive frames.
#[derive(Debug, Clone)]
pub struct Tracker {
    cfg: TrackerConfig,
    open: Vec<Track>,
    next_id: usize,
}

impl Tracker {
    /// A tracker with no track yet.
    pub fn new(cfg: TrackerConfig) -> Tracker {
        Tracker { cfg, open: Vec::new(), next_id: 0 }
    }

    /// How many tracks were started.
    pub fn tracks_started(&self) -> usize {
        self.next_id
    }

    /// The track id of each of a frame's detections (same order as `boxes`), for a frame at
    /// `time` seconds (frames must come in time order).
    pub fn assign(&mut self, boxes: &[FaceBox], time: f64) -> Vec<usize> {
        let max_gap = self.cfg.max_gap;
        self.open.retain(|t| time - t.last_seen <= max_gap);
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new(); // (iou, track slot, detection)
        for (ti, t) in self.open.iter().enumerate() {
            for (di, b) in boxes.iter().enumerate() {
                let iou = t.last.iou(b);
                if iou >= self.cfg.iou_threshold {
                    pairs.push((iou, ti, di));
                }
            }
        }
        // Best IoU first; ties to the older track, then to the better-scoring detection.
        pairs.sort_by(|a, b| {
            b.0.total_cmp(&a.0).then(self.open[a.1].id.cmp(&self.open[b.1].id)).then(a.2.cmp(&b.2))
        });
        let mut ids: Vec<Option<usize>> = vec![None; boxes.len()];
        let mut used = vec![false; self.open.len()];
        for (_, ti, di) in pairs {
            if used[ti] || ids[di].is_some() {
                continue;
            }
            used[ti] = true;
            ids[di] = Some(self.open[ti].id);
            self.open[ti].last = boxes[di];
            self.open[ti].last_seen = time;
        }
        ids.iter()
            .zip(boxes)
            .map(|(id, b)| {
                id.unwrap_or_else(|| {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.open.push(Track { id, last: *b, last_seen: time });
                    id
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(x: f32, y: f32, s: f32) -> FaceBox {
        FaceBox { x1: x, y1: y, x2: x + s, y2: y + s, score: 0.9 }
    }

    #[test]
    fn a_moving_face_keeps_its_id_and_a_new_one_gets_the_next() {
        let mut t = Tracker::new(TrackerConfig::default());
        assert_eq!(t.assign(&[bx(10.0, 10.0, 50.0)], 0.0), [0]);
        assert_eq!(t.assign(&[bx(14.0, 11.0, 50.0)], 0.1), [0]);
        // A second face appears, listed first by the detector.
        assert_eq!(t.assign(&[bx(200.0, 10.0, 40.0), bx(18.0, 12.0, 50.0)], 0.2), [1, 0]);
        assert_eq!(t.assign(&[bx(22.0, 12.0, 50.0), bx(202.0, 10.0, 40.0)], 0.3), [0, 1]);
        assert_eq!(t.tracks_started(), 2);
    }

    #[test]
    fn a_face_missing_briefly_is_resumed_and_after_the_gap_is_new() {
        let mut t = Tracker::new(TrackerConfig { iou_threshold: 0.3, max_gap: 0.5 });
        assert_eq!(t.assign(&[bx(10.0, 10.0, 50.0)], 0.0), [0]);
        assert_eq!(t.assign(&[], 0.2), Vec::<usize>::new());
        assert_eq!(t.assign(&[bx(12.0, 10.0, 50.0)], 0.4), [0]);
        assert_eq!(t.assign(&[], 0.6), Vec::<usize>::new());
        assert_eq!(t.assign(&[bx(12.0, 10.0, 50.0)], 1.0), [1], "0.6 s gap > 0.5 s");
    }

    #[test]
    fn a_far_jump_is_a_new_track_and_one_track_takes_one_box() {
        let mut t = Tracker::new(TrackerConfig::default());
        assert_eq!(t.assign(&[bx(0.0, 0.0, 50.0)], 0.0), [0]);
        assert_eq!(t.assign(&[bx(300.0, 0.0, 50.0)], 0.1), [1]);
        // Two boxes overlapping track 1: the better overlap continues it, the other is new.
        assert_eq!(t.assign(&[bx(310.0, 0.0, 50.0), bx(302.0, 0.0, 50.0)], 0.2), [2, 1]);
    }
}
