//! Video decoding through FFmpeg's command-line programs, `ffprobe` and `ffmpeg`, run as
//! subprocesses.
//!
//! Why the programs and not a crate: the Rust bindings (`ffmpeg-next` / `ffmpeg-sys-next`) link
//! FFmpeg's C libraries and need their headers and `pkg-config` at build time, so every build of
//! the workspace would need them, video or not; the pure-Rust decoders each cover one codec or
//! container, and none decodes H.264 / HEVC / VP9 / AV1 in mp4, mov, mkv, webm and avi. The
//! programs are one system package everywhere, needed only at run time and only for video, and
//! their output is a stable interface: packed RGB frames on a pipe, and ffprobe's timestamps.
//!
//! How a video is read:
//! 1. `ffprobe -show_streams` gives the first video stream's size, rotation, time base, frame
//!    rate and frame count ([`probe`]).
//! 2. `ffmpeg` decodes that stream to packed RGB24 on its stdout, every decoded frame exactly once
//!    (`-fps_mode passthrough`: no frame dropped or duplicated to reach a constant rate), scaled to
//!    the probed size (after FFmpeg's automatic rotation) so that every frame has the same size.
//! 3. Meanwhile a second `ffprobe` prints each decoded frame's `best_effort_timestamp` (the
//!    timestamp ffmpeg itself gives a decoded frame) as an integer in the stream's time base. Both
//!    programs run the same libavcodec decoder on the same stream, so the k-th timestamp belongs to
//!    the k-th frame; the counts are compared at the end and a mismatch is logged. A frame without
//!    a timestamp gets the previous one plus one frame period (logged).
//!
//! A reader thread pairs frames with timestamps, applies the sampling (`--start`, `--end`,
//! `--every`) and hands the kept frames over a small bounded channel, so decoding overlaps with
//! inference. Every error names the file and quotes what FFmpeg printed; dropping the reader kills
//! both programs.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use image::RgbImage;

use crate::error::{PredictError, Result};

/// Video file extensions (case-insensitive) read through FFmpeg.
pub const VIDEO_EXTENSIONS: [&str; 5] = ["mp4", "avi", "mov", "mkv", "webm"];

const FFMPEG: &str = "ffmpeg";
const FFPROBE: &str = "ffprobe";

/// How many of FFmpeg's last stderr lines an error quotes.
const STDERR_TAIL: usize = 8;

/// Decoded frames waiting for the model (each is width * height * 3 bytes).
const QUEUE: usize = 4;

/// Whether `path` has one of the [`VIDEO_EXTENSIONS`].
pub fn is_video(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn video_err(path: &Path, msg: impl Into<String>) -> PredictError {
    PredictError::Video { path: path.to_owned(), msg: msg.into() }
}

/// Starts `program`; a missing program is [`PredictError::MissingProgram`].
fn spawn(program: &'static str, cmd: &mut Command, path: &Path) -> Result<Child> {
    cmd.spawn().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => PredictError::MissingProgram { program, source },
        _ => video_err(path, format!("cannot start {program}: {source}")),
    })
}

/// Checks that `ffprobe` and `ffmpeg` run, so that a missing FFmpeg is one clear error before
/// any model is loaded.
pub fn check_programs() -> Result<()> {
    for program in [FFPROBE, FFMPEG] {
        let status = Command::new(program)
            .arg("-version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| PredictError::MissingProgram { program, source })?;
        if !status.success() {
            return Err(PredictError::Config(format!(
                "`{program} -version` failed ({status}): is FFmpeg installed correctly?"
            )));
        }
    }
    Ok(())
}

/// The input argument for FFmpeg: `file:` + path, so that a path starting with `-` or holding a
/// colon is read as a file and never as an option or a protocol.
fn file_arg(path: &Path) -> OsString {
    let mut s = OsString::from("file:");
    s.push(path.as_os_str());
    s
}

/// What `ffprobe` says about a video's first video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    /// Frame width in pixels, after the container's rotation (what ffmpeg outputs).
    pub width: u32,
    /// Frame height in pixels, after the container's rotation.
    pub height: u32,
    /// The stream's time base (numerator, denominator): a timestamp `ts` is `ts * num / den` s.
    pub time_base: (i64, i64),
    /// Average frame rate (frames per second), when the container gives one.
    pub frame_rate: Option<f64>,
    /// Frame count the container declares, else estimated from duration and rate.
    pub frames: Option<u64>,
    /// Whether `frames` is the container's own count (not an estimate).
    pub frames_declared: bool,
    /// Duration in seconds, when known.
    pub duration: Option<f64>,
    /// Codec name (for messages).
    pub codec: String,
}

impl VideoInfo {
    /// Seconds of a timestamp in the stream's time base.
    pub fn seconds(&self, ts: i64) -> f64 {
        ts as f64 * self.time_base.0 as f64 / self.time_base.1 as f64
    }
}

/// `"30000/1001"` -> (30000, 1001); `None` for a zero denominator or anything else.
fn ratio(s: &str) -> Option<(i64, i64)> {
    let (n, d) = s.split_once('/')?;
    let (n, d) = (n.trim().parse().ok()?, d.trim().parse::<i64>().ok()?);
    (d != 0).then_some((n, d))
}

/// A JSON value that ffprobe writes as a number or as a string holding a number.
fn number(v: Option<&serde_json::Value>) -> Option<f64> {
    match v? {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses `ffprobe -show_streams -show_format -of json` output.
pub fn parse_probe(path: &Path, json: &str) -> Result<VideoInfo> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| video_err(path, format!("ffprobe printed something that is not JSON: {e}")))?;
    let Some(stream) = v.get("streams").and_then(|s| s.as_array()).and_then(|s| s.first()) else {
        return Err(video_err(path, "it holds no video stream"));
    };
    let dim = |k: &str| number(stream.get(k)).filter(|&x| x >= 1.0).map(|x| x as u32);
    let (Some(mut width), Some(mut height)) = (dim("width"), dim("height")) else {
        return Err(video_err(path, "ffprobe gives no frame size for its video stream"));
    };
    let time_base = stream
        .get("time_base")
        .and_then(|t| t.as_str())
        .and_then(ratio)
        .filter(|&(n, _)| n > 0)
        .ok_or_else(|| video_err(path, "ffprobe gives no time base for its video stream"))?;
    // Rotation: display-matrix side data (FFmpeg 5+) or the older `rotate` tag.
    let side = stream.get("side_data_list").and_then(|s| s.as_array());
    let rotation = side
        .and_then(|s| s.iter().find_map(|d| number(d.get("rotation"))))
        .or_else(|| number(stream.get("tags").and_then(|t| t.get("rotate"))))
        .unwrap_or(0.0);
    if (rotation.round() as i64).rem_euclid(180) == 90 {
        std::mem::swap(&mut width, &mut height);
    }
    let rate = |k: &str| {
        stream
            .get(k)
            .and_then(|r| r.as_str())
            .and_then(ratio)
            .map(|(n, d)| n as f64 / d as f64)
            .filter(|r| r.is_finite() && *r > 0.0)
    };
    let frame_rate = rate("avg_frame_rate").or_else(|| rate("r_frame_rate"));
    let duration = number(stream.get("duration"))
        .or_else(|| number(v.get("format").and_then(|f| f.get("duration"))))
        .filter(|d| d.is_finite() && *d > 0.0);
    let declared = number(stream.get("nb_frames")).filter(|&n| n >= 1.0).map(|n| n as u64);
    let frames = declared.or_else(|| match (duration, frame_rate) {
        (Some(d), Some(r)) => Some((d * r).round().max(1.0) as u64),
        _ => None,
    });
    let codec = stream.get("codec_name").and_then(|c| c.as_str()).unwrap_or("unknown").to_string();
    Ok(VideoInfo {
        width,
        height,
        time_base,
        frame_rate,
        frames,
        frames_declared: declared.is_some(),
        duration,
        codec,
    })
}

/// The last lines of a program's stderr, joined for an error message.
fn tail_text(lines: &VecDeque<String>) -> String {
    if lines.is_empty() {
        "it printed nothing".to_string()
    } else {
        lines.iter().map(String::as_str).collect::<Vec<_>>().join(" | ")
    }
}

/// Reads the first video stream's header with `ffprobe`.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    let out = spawn(
        FFPROBE,
        Command::new(FFPROBE)
            .args(["-v", "error", "-select_streams", "v:0", "-show_streams", "-show_format"])
            .args(["-of", "json"])
            .arg(file_arg(path))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        path,
    )?
    .wait_with_output()
    .map_err(|e| video_err(path, format!("cannot read ffprobe's output: {e}")))?;
    if !out.status.success() {
        let err: VecDeque<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        return Err(video_err(
            path,
            format!("ffprobe cannot read it ({}): {}", out.status, tail_text(&err)),
        ));
    }
    parse_probe(path, &String::from_utf8_lossy(&out.stdout))
}

/// Which decoded frames to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Keep every N-th frame (>= 1), counted from the first frame kept by `start`.
    pub every: u64,
    /// First timestamp kept, in seconds (frames before it are decoded and skipped); `None`
    /// keeps from the first frame, also one with a negative timestamp (some files have them).
    pub start: Option<f64>,
    /// Last timestamp kept, in seconds; decoding stops after it.
    pub end: Option<f64>,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling { every: 1, start: None, end: None }
    }
}

/// A decoded frame.
pub struct Frame {
    /// 0-based index among the video's decoded frames (presentation order).
    pub index: u64,
    /// Presentation timestamp in seconds, from the stream's time base.
    pub timestamp: f64,
    /// The picture.
    pub image: RgbImage,
}

/// What decoding a video came to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodeStats {
    /// Frames decoded (kept or not).
    pub decoded: u64,
    /// Frames handed out.
    pub kept: u64,
    /// Whether decoding stopped at `--end` (or because the reader was dropped).
    pub stopped_early: bool,
    /// Frames whose timestamp had to be estimated.
    pub estimated_timestamps: u64,
}

enum Msg {
    Frame(Frame),
    Done(DecodeStats),
    Failed(PredictError),
}

/// The frames of one video, decoded on a background thread (see the module documentation).
pub struct VideoReader {
    path: PathBuf,
    info: VideoInfo,
    rx: Option<mpsc::Receiver<Msg>>,
    thread: Option<JoinHandle<()>>,
    stats: Option<DecodeStats>,
}

impl VideoReader {
    /// Probes `path` and starts decoding it.
    pub fn open(path: &Path, sampling: Sampling) -> Result<VideoReader> {
        let info = probe(path)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let job = Job { path: path.to_owned(), info: info.clone(), sampling };
        let thread = std::thread::Builder::new()
            .name("aue-video-decode".into())
            .spawn(move || {
                let msg = match job.run(&tx) {
                    Ok(stats) => Msg::Done(stats),
                    Err(e) => Msg::Failed(e),
                };
                let _ = tx.send(msg); // The reader may be gone; then nobody needs it.
            })
            .map_err(|e| video_err(path, format!("cannot start the decoding thread: {e}")))?;
        Ok(VideoReader {
            path: path.to_owned(),
            info,
            rx: Some(rx),
            thread: Some(thread),
            stats: None,
        })
    }

    /// The probed stream header.
    pub fn info(&self) -> &VideoInfo {
        &self.info
    }

    /// Decoding statistics, once the iterator has ended without an error.
    pub fn stats(&self) -> Option<&DecodeStats> {
        self.stats.as_ref()
    }
}

impl Iterator for VideoReader {
    type Item = Result<Frame>;

    fn next(&mut self) -> Option<Result<Frame>> {
        let rx = self.rx.as_ref()?;
        let msg = rx.recv().ok();
        match msg {
            Some(Msg::Frame(f)) => Some(Ok(f)),
            Some(Msg::Done(stats)) => {
                self.stats = Some(stats);
                self.rx = None;
                None
            }
            Some(Msg::Failed(e)) => {
                self.rx = None;
                Some(Err(e))
            }
            // The thread ended without a word: it panicked.
            None => {
                self.rx = None;
                Some(Err(video_err(&self.path, "the decoding thread stopped unexpectedly")))
            }
        }
    }
}

impl Drop for VideoReader {
    fn drop(&mut self) {
        // Closing the channel makes the thread's next send fail; it then kills both programs.
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Collects a program's stderr on its own thread (so that a chatty program never blocks on a
/// full pipe) and keeps the last lines.
fn drain(stderr: Option<ChildStderr>) -> JoinHandle<VecDeque<String>> {
    std::thread::spawn(move || {
        let mut tail = VecDeque::new();
        let Some(stderr) = stderr else { return tail };
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
        tail
    })
}

/// Kills a child we no longer need and reaps it.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads until `buf` is full or the stream ends; the number of bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Parses one line of `ffprobe -show_entries frame=pts,best_effort_timestamp -of compact`:
/// `frame|pts=512|best_effort_timestamp=512` -> `Some(Some(512))`; `N/A` -> `Some(None)`;
/// a line of another section -> `None`.
pub fn parse_timestamp_line(line: &str) -> Option<Option<i64>> {
    let rest = line.trim().strip_prefix("frame|")?;
    let field = |key: &str| {
        rest.split('|')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse::<i64>().ok())
    };
    Some(field("best_effort_timestamp").or_else(|| field("pts")))
}

struct Job {
    path: PathBuf,
    info: VideoInfo,
    sampling: Sampling,
}

/// How one ffmpeg run ended.
enum Ended {
    /// All output read.
    Eof { partial: usize },
    /// We stopped it (`--end`, or the reader was dropped).
    Stopped,
}

impl Job {
    fn run(&self, tx: &mpsc::SyncSender<Msg>) -> Result<DecodeStats> {
        let path = &self.path;
        let mut probe = spawn(
            FFPROBE,
            Command::new(FFPROBE)
                .args(["-v", "error", "-select_streams", "v:0"])
                .args(["-show_entries", "frame=pts,best_effort_timestamp"])
                .args(["-of", "compact=p=1:nk=0"])
                .arg(file_arg(path))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            path,
        )?;
        let probe_err = drain(probe.stderr.take());
        let (ts_tx, ts_rx) = mpsc::channel::<Option<i64>>();
        let probe_out = probe.stdout.take().map(|out| {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Some(ts) = parse_timestamp_line(&line)
                        && ts_tx.send(ts).is_err()
                    {
                        break;
                    }
                }
            })
        });
        let result = self.decode(tx, &ts_rx);
        // Stop ffprobe if we stopped early; else let it finish to compare the counts.
        let stopped = result.as_ref().map_or(true, |s| s.stopped_early);
        if stopped {
            stop(&mut probe);
        }
        let probe_status = probe.wait();
        if let Some(h) = probe_out {
            let _ = h.join();
        }
        // Timestamps left over are frames that ffprobe decoded and ffmpeg did not.
        let extra = ts_rx.try_iter().count();
        let probe_tail = probe_err.join().unwrap_or_default();
        let stats = result?;
        if !stats.stopped_early {
            if let Ok(status) = probe_status
                && !status.success()
            {
                tracing::warn!(
                    video = %path.display(),
                    "ffprobe stopped early ({status}): {}",
                    tail_text(&probe_tail)
                );
            }
            // A file cut short often decodes without an error: compare with the header.
            if let Some(n) = self.info.frames {
                let short =
                    if self.info.frames_declared { n } else { n.saturating_sub(2 + n / 50) };
                if stats.decoded < short {
                    tracing::warn!(
                        video = %path.display(),
                        "decoded {} frames, but the header {} {n}: the file may be truncated or damaged",
                        stats.decoded,
                        if self.info.frames_declared { "declares" } else { "implies about" }
                    );
                }
            }
            if extra > 0 {
                tracing::warn!(
                    video = %path.display(),
                    "ffprobe decoded {extra} frames more than ffmpeg's {}: timestamps may be off",
                    stats.decoded
                );
            }
        }
        if stats.estimated_timestamps > 0 {
            tracing::warn!(
                video = %path.display(),
                frames = stats.estimated_timestamps,
                "ffprobe gave no timestamp for some frames: estimated from the previous one and the frame rate"
            );
        }
        Ok(stats)
    }

    /// Runs ffmpeg (again with the older `-vsync` spelling when an FFmpeg older than 5.1 does not
    /// know `-fps_mode`) and hands out the kept frames.
    fn decode(
        &self,
        tx: &mpsc::SyncSender<Msg>,
        ts_rx: &mpsc::Receiver<Option<i64>>,
    ) -> Result<DecodeStats> {
        let mut stats = DecodeStats::default();
        for legacy in [false, true] {
            let mut ffmpeg = self.spawn_ffmpeg(legacy)?;
            let err = drain(ffmpeg.stderr.take());
            let ended = self.read_frames(&mut ffmpeg, tx, ts_rx, &mut stats);
            let status: Option<ExitStatus> = match &ended {
                Ok(Ended::Eof { .. }) => ffmpeg.wait().ok(),
                _ => {
                    stop(&mut ffmpeg);
                    None
                }
            };
            let tail = err.join().unwrap_or_default();
            let partial = match ended? {
                Ended::Stopped => {
                    stats.stopped_early = true;
                    return Ok(stats);
                }
                Ended::Eof { partial } => partial,
            };
            let failed = status.is_none_or(|s| !s.success());
            if failed
                && !legacy
                && stats.decoded == 0
                && tail.iter().any(|l| l.contains("fps_mode"))
            {
                tracing::debug!("this ffmpeg predates -fps_mode; retrying with -vsync");
                continue;
            }
            let said = tail_text(&tail);
            let status = status.map_or("unknown status".to_string(), |s| s.to_string());
            if failed {
                return Err(self.err(format!(
                    "ffmpeg failed ({status}) after {} decoded frames: {said}",
                    stats.decoded
                )));
            }
            if partial > 0 {
                return Err(self.err(format!(
                    "ffmpeg's output ended inside frame {} ({partial} of {} bytes): {said}",
                    stats.decoded,
                    self.frame_bytes()
                )));
            }
            if stats.decoded == 0 {
                return Err(self.err(format!("ffmpeg decoded no frame: {said}")));
            }
            if !tail.is_empty() {
                tracing::warn!(
                    video = %self.path.display(),
                    "ffmpeg reported decoding errors (some frames may be damaged): {said}"
                );
            }
            return Ok(stats);
        }
        Err(self.err("ffmpeg refused both -fps_mode and -vsync"))
    }

    fn err(&self, msg: impl Into<String>) -> PredictError {
        video_err(&self.path, msg)
    }

    fn frame_bytes(&self) -> usize {
        self.info.width as usize * self.info.height as usize * 3
    }

    fn spawn_ffmpeg(&self, legacy: bool) -> Result<Child> {
        let (w, h) = (self.info.width, self.info.height);
        let sync = if legacy { "-vsync" } else { "-fps_mode" };
        spawn(
            FFMPEG,
            Command::new(FFMPEG)
                .args(["-nostdin", "-hide_banner", "-v", "error", "-i"])
                .arg(file_arg(&self.path))
                .args(["-map", "0:v:0", "-an", "-sn", "-dn", sync, "passthrough"])
                .args(["-vf", &format!("scale={w}:{h}"), "-pix_fmt", "rgb24"])
                .args(["-f", "rawvideo", "pipe:1"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
            &self.path,
        )
    }

    fn read_frames(
        &self,
        ffmpeg: &mut Child,
        tx: &mpsc::SyncSender<Msg>,
        ts_rx: &mpsc::Receiver<Option<i64>>,
        stats: &mut DecodeStats,
    ) -> Result<Ended> {
        let Some(mut out) = ffmpeg.stdout.take() else {
            return Err(self.err("ffmpeg has no stdout"));
        };
        let Sampling { every, start, end } = self.sampling;
        let period = self.info.frame_rate.map_or(0.04, |r| 1.0 / r);
        let mut buf = vec![0u8; self.frame_bytes()];
        let mut last: Option<f64> = None;
        let mut in_range = 0u64;
        loop {
            let n = read_full(&mut out, &mut buf)
                .map_err(|e| self.err(format!("cannot read ffmpeg's output: {e}")))?;
            if n < buf.len() {
                return Ok(Ended::Eof { partial: n });
            }
            let index = stats.decoded;
            stats.decoded += 1;
            let t = match ts_rx.recv() {
                Ok(Some(ts)) => self.info.seconds(ts),
                _ => {
                    stats.estimated_timestamps += 1;
                    last.map_or(index as f64 * period, |l| l + period)
                }
            };
            last = Some(t);
            if start.is_some_and(|s| t < s) {
                continue;
            }
            if end.is_some_and(|e| t > e) {
                return Ok(Ended::Stopped);
            }
            in_range += 1;
            if !(in_range - 1).is_multiple_of(every) {
                continue;
            }
            let Some(image) = RgbImage::from_raw(self.info.width, self.info.height, buf.clone())
            else {
                return Err(self.err("frame buffer of the wrong size"));
            };
            if tx.send(Msg::Frame(Frame { index, timestamp: t, image })).is_err() {
                return Ok(Ended::Stopped);
            }
            stats.kept += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn video_extensions_are_case_insensitive() {
        assert!(is_video(Path::new("a/b.MP4")) && is_video(Path::new("c.webm")));
        assert!(!is_video(Path::new("c.png")) && !is_video(Path::new("mp4")));
    }

    #[test]
    fn timestamp_lines() {
        assert_eq!(
            parse_timestamp_line("frame|pts=512|best_effort_timestamp=1024"),
            Some(Some(1024))
        );
        assert_eq!(
            parse_timestamp_line("frame|pts=512|best_effort_timestamp=N/A"),
            Some(Some(512))
        );
        assert_eq!(parse_timestamp_line("frame|pts=N/A|best_effort_timestamp=N/A|"), Some(None));
        assert_eq!(parse_timestamp_line("side_data|side_data_type=x"), None);
        assert_eq!(parse_timestamp_line(""), None);
    }

    #[test]
    fn probe_json_with_rotation_and_missing_counts() {
        let p = Path::new("v.mov");
        let json = r#"{"streams": [{"codec_name": "h264", "width": 640, "height": 480,
            "time_base": "1/600", "avg_frame_rate": "30000/1001", "r_frame_rate": "30/1",
            "side_data_list": [{"side_data_type": "Display Matrix", "rotation": -90}]}],
            "format": {"duration": "2.002000"}}"#;
        let info = parse_probe(p, json).unwrap();
        assert_eq!((info.width, info.height), (480, 640));
        assert_eq!(info.time_base, (1, 600));
        assert!((info.frame_rate.unwrap() - 29.97).abs() < 1e-2);
        assert_eq!((info.frames, info.frames_declared), (Some(60), false));
        assert!((info.seconds(1201) - 2.001_666).abs() < 1e-5);
        // The older rotate tag, and a declared frame count.
        let json = r#"{"streams": [{"width": 100, "height": 50, "time_base": "1/25",
            "avg_frame_rate": "0/0", "nb_frames": "7", "tags": {"rotate": "270"}}]}"#;
        let info = parse_probe(p, json).unwrap();
        assert_eq!(
            (info.width, info.height, info.frames, info.frame_rate),
            (50, 100, Some(7), None)
        );
        assert!(info.frames_declared);
    }

    #[test]
    fn probe_json_without_a_video_stream_names_the_file() {
        let e = parse_probe(Path::new("song.mkv"), r#"{"streams": []}"#).unwrap_err();
        assert!(e.to_string().contains("song.mkv") && e.to_string().contains("no video"), "{e}");
        let e = parse_probe(Path::new("x.mp4"), r#"{"streams": [{"width": 4}]}"#).unwrap_err();
        assert!(e.to_string().contains("frame size"), "{e}");
    }
}
