//! `aue-bench`: time per training step of each stage (docs/METHOD.md section 4) and of eval-mode
//! inference (aue's fused `InferenceModel`, and its unfused training model beside it), for aue
//! (Candle) and the PyTorch reference (`tools/aue_reference.py`) on the same weights and inputs,
//! with each one's peak memory, and how each scales with its thread count.
//!
//! Each implementation runs in a worker process of its own (so that its peak resident memory is
//! its own), one pair per (mode, thread count), plus aue's unfused inference beside the `eval`
//! pair. The driver tells the workers to take a step in turn, each step in another order (A B C,
//! B C A, ...), so that a slow minute of the machine hits all alike, and reports medians with min
//! and max. A step kind runs at every thread count before the next kind starts, and the report
//! ends with the hypervisor's steal time during each block ([`CpuTimes`]). The workers speak a
//! line protocol on stdin / stdout:
//!
//! ```text
//! worker -> "ready <resident bytes before the model> <free text>"
//! "step" -> "t <seconds>"
//! "quit" -> "peak <bytes>"
//! ```

pub mod candle_worker;
pub mod inputs;
pub mod report;
pub mod worker;

use std::fmt;
use std::str::FromStr;

pub use report::{Measurement, Row, Stats};

/// What one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// A stage-1 training step (forward, CE, backward, SGD).
    Stage1,
    /// A stage-2 training step.
    Stage2,
    /// A stage-3 training step.
    Stage3,
    /// Eval-mode inference: every output, no gradient; aue runs its fused `InferenceModel`.
    Eval,
    /// The same inference through the training model's eval forward (no folding, no fused
    /// layers). With `eval` in the modes it runs as a third worker interleaved with that pair.
    EvalUnfused,
}

impl Mode {
    /// All modes, in table order.
    pub const ALL: [Mode; 5] =
        [Mode::Stage1, Mode::Stage2, Mode::Stage3, Mode::Eval, Mode::EvalUnfused];

    /// The command-line name (`stage1`, ..., `eval`, `eval-unfused`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Stage1 => "stage1",
            Mode::Stage2 => "stage2",
            Mode::Stage3 => "stage3",
            Mode::Eval => "eval",
            Mode::EvalUnfused => "eval-unfused",
        }
    }

    /// The PyTorch worker's `--mode` (it has one inference).
    pub fn torch_name(self) -> &'static str {
        match self {
            Mode::EvalUnfused => Mode::Eval.name(),
            other => other.name(),
        }
    }

    /// The training stage, `None` for inference.
    pub fn stage(self) -> Option<aue_model::Stage> {
        match self {
            Mode::Stage1 => Some(aue_model::Stage::Em),
            Mode::Stage2 => Some(aue_model::Stage::Au),
            Mode::Stage3 => Some(aue_model::Stage::Fuse),
            Mode::Eval | Mode::EvalUnfused => None,
        }
    }

    /// How the table names it.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Stage1 => "stage 1 (EM) train step",
            Mode::Stage2 => "stage 2 (AU) train step",
            Mode::Stage3 => "stage 3 (Fuse) train step",
            Mode::Eval => "inference (eval, all outputs)",
            Mode::EvalUnfused => "inference, unfused (aue's training model)",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == lower || (m.stage().is_some() && lower == m.name()[5..]))
            .ok_or_else(|| {
                format!("unknown mode `{s}` (stage1, stage2, stage3, eval or eval-unfused)")
            })
    }
}

/// Resident memory of this process now, from `/proc/self/statm` (0 where there is none).
pub fn resident_bytes() -> u64 {
    let page = page_size();
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * page)
}

/// Restarts the peak-memory count of this process at its current resident size (Linux: writing
/// 5 to `/proc/self/clear_refs` resets `VmHWM`), so that a later [`peak_resident_bytes`] measures
/// the steps and not the loading before them. Returns whether that was possible.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident memory of this process: `VmHWM` where there is `/proc` (it honours
/// [`reset_peak`]), else `getrusage` (`ru_maxrss`, KiB on Linux, bytes on macOS).
pub fn peak_resident_bytes() -> u64 {
    let hwm = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    if let Some(kib) = hwm {
        return kib * 1024;
    }
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return 0;
    }
    let kib = u64::try_from(usage.ru_maxrss).unwrap_or(0);
    if cfg!(target_os = "macos") { kib } else { kib * 1024 }
}

/// The whole machine's CPU time so far, from the first line of `/proc/stat`, in clock ticks:
/// all of it, and the part the hypervisor gave to other guests while this one wanted to run
/// ("steal"). On a shared VM steal slows a two-thread step more than a one-thread one, so the
/// benchmark reports it beside its timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every field of the line added up.
    pub total: u64,
    /// The eighth field.
    pub steal: u64,
}

impl CpuTimes {
    /// Now, where there is a `/proc/stat`.
    pub fn now() -> Option<Self> {
        Self::parse(std::fs::read_to_string("/proc/stat").ok()?.lines().next()?)
    }

    /// The aggregate `cpu  user nice system idle iowait irq softirq steal ...` line; `None`
    /// for any other line or fewer than eight numbers.
    pub fn parse(line: &str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        if fields.next()? != "cpu" {
            return None;
        }
        let values: Vec<u64> = fields.map(str::parse).collect::<Result<_, _>>().ok()?;
        // guest and guest_nice (fields 9 and 10) are already counted in user and nice.
        let total = values.iter().take(8).sum();
        Some(Self { total, steal: *values.get(7)? })
    }

    /// The share of the CPU time from `self` to `later` that was stolen, in percent; `None`
    /// when no time passed.
    pub fn steal_percent(&self, later: &Self) -> Option<f64> {
        let total = later.total.checked_sub(self.total).filter(|&t| t > 0)?;
        let steal = later.steal.saturating_sub(self.steal);
        Some(100.0 * steal as f64 / total as f64)
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_name_and_number() {
        assert_eq!("stage2".parse::<Mode>(), Ok(Mode::Stage2));
        assert_eq!("2".parse::<Mode>(), Ok(Mode::Stage2));
        assert_eq!("EVAL".parse::<Mode>(), Ok(Mode::Eval));
        assert_eq!("eval-unfused".parse::<Mode>(), Ok(Mode::EvalUnfused));
        assert_eq!(Mode::EvalUnfused.torch_name(), "eval");
        assert!("stage4".parse::<Mode>().is_err());
        assert!("".parse::<Mode>().is_err());
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>(), Ok(m));
        }
    }

    #[test]
    fn cpu_times_read_the_aggregate_line() {
        let line = "cpu  100 5 50 800 10 1 2 32 7 0";
        let t = CpuTimes::parse(line).unwrap();
        assert_eq!(t, CpuTimes { total: 1000, steal: 32 });
        let later = CpuTimes { total: 1200, steal: 82 };
        assert_eq!(t.steal_percent(&later), Some(25.0));
        assert_eq!(t.steal_percent(&t), None);
        // A core's line, too few fields, or text: nothing.
        assert_eq!(CpuTimes::parse("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 3 4 5 6 7"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4 5 6 7 8"), None);
        if cfg!(target_os = "linux") {
            assert!(CpuTimes::now().is_some());
        }
    }

    #[test]
    fn memory_readings_are_plausible() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let now = resident_bytes();
        assert!(now > 1 << 20, "resident {now}");
        // Touch 64 MiB, free it, reset: the peak falls back to about the resident size.
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let with = peak_resident_bytes();
        assert!(with >= now + (60 << 20), "peak {with} vs resident {now}");
        drop(big);
        if reset_peak() {
            let after = peak_resident_bytes();
            assert!(after < with - (32 << 20), "peak after reset {after}, before {with}");
        }
    }
}
