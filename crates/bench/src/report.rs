//! Statistics of the timed steps and the Markdown table the benchmark prints.

use crate::Mode;

/// Median, min and max of a set of timings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// The median (mean of the two middle values for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Stats {
    /// Statistics of `values`; `None` when there are none or one is not finite.
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { 0.5 * (v[n / 2 - 1] + v[n / 2]) };
        Some(Stats { median, min: v[0], max: v[n - 1] })
    }
}

/// One implementation's result for one (mode, thread count).
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Timed steps, seconds (warm-up steps excluded).
    pub times: Vec<f64>,
    /// Peak resident memory of the worker process, bytes.
    pub peak_bytes: u64,
    /// Resident memory of the worker before it built the model (runtime and libraries), bytes.
    pub baseline_bytes: u64,
    /// The loss of every step, warm-up included (NaN where the worker reported none).
    pub losses: Vec<f64>,
    /// On a GPU: the most device memory the worker held after any step (its context included).
    pub device_peak_bytes: Option<u64>,
}

impl Measurement {
    /// Timing statistics.
    pub fn stats(&self) -> Option<Stats> {
        Stats::of(&self.times)
    }

    /// `first -> last` loss, when the worker reported losses.
    pub fn loss_trend(&self) -> Option<String> {
        let (first, last) = (self.losses.first()?, self.losses.last()?);
        (first.is_finite() || last.is_finite()).then(|| format!("{first:.4} -> {last:.4}"))
    }

    /// Whether every reported loss is finite.
    pub fn losses_finite(&self) -> bool {
        self.losses.iter().all(|l| l.is_finite())
    }

    /// Peak memory above the worker's baseline: what the model, its gradients, optimizer state
    /// and activations took.
    pub fn net_bytes(&self) -> u64 {
        self.peak_bytes.saturating_sub(self.baseline_bytes)
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What was timed.
    pub mode: Mode,
    /// Threads of each worker.
    pub threads: usize,
    /// Batch size (for images per second).
    pub batch: usize,
    /// aue on Candle.
    pub candle: Measurement,
    /// The PyTorch reference, when it ran.
    pub torch: Option<Measurement>,
    /// The authors' released code (`--authors`), when it ran.
    pub authors: Option<Measurement>,
}

impl Row {
    /// Median time ratio aue / PyTorch.
    pub fn time_ratio(&self) -> Option<f64> {
        let c = self.candle.stats()?;
        let t = self.torch.as_ref()?.stats()?;
        (t.median > 0.0).then(|| c.median / t.median)
    }

    /// Peak memory ratio aue / PyTorch (whole processes).
    pub fn memory_ratio(&self) -> Option<f64> {
        let t = self.torch.as_ref()?;
        (t.peak_bytes > 0).then(|| self.candle.peak_bytes as f64 / t.peak_bytes as f64)
    }

    /// Ratio of the peaks above each process's baseline.
    pub fn net_memory_ratio(&self) -> Option<f64> {
        let t = self.torch.as_ref()?;
        (t.net_bytes() > 0).then(|| self.candle.net_bytes() as f64 / t.net_bytes() as f64)
    }
}

fn ms(s: &Stats) -> String {
    format!("{:.0} ({:.0}-{:.0})", 1e3 * s.median, 1e3 * s.min, 1e3 * s.max)
}

fn mib(bytes: u64) -> String {
    format!("{:.0}", bytes as f64 / (1024.0 * 1024.0))
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
}

/// The Markdown table: rows grouped by thread count (one thread first), in mode order.
pub fn markdown_table(rows: &[Row]) -> String {
    let mut rows: Vec<&Row> = rows.iter().collect();
    rows.sort_by_key(|r| (r.threads, r.mode));
    let mut out = String::new();
    if rows.iter().any(|r| r.candle.device_peak_bytes.is_some()) {
        return gpu_table(&rows);
    }
    out.push_str(
        "| step | threads | aue ms, median (min-max) | PyTorch ms, median (min-max) | time aue/PyTorch \
         | aue peak MiB | PyTorch peak MiB | peak aue/PyTorch | above baseline: aue / PyTorch MiB | ratio |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let c = r.candle.stats().map_or_else(|| "-".into(), |s| ms(&s));
        let (t, t_peak, t_net) = match &r.torch {
            Some(m) => (
                m.stats().map_or_else(|| "-".into(), |s| ms(&s)),
                mib(m.peak_bytes),
                mib(m.net_bytes()),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |\n",
            r.mode.label(),
            r.threads,
            c,
            t,
            ratio(r.time_ratio()),
            mib(r.candle.peak_bytes),
            t_peak,
            ratio(r.memory_ratio()),
            mib(r.candle.net_bytes()),
            t_net,
            ratio(r.net_memory_ratio()),
        ));
    }
    out
}

/// Picks one implementation's measurement out of a row.
type MeasurementOf = dyn Fn(&Row) -> Option<&Measurement>;

/// How each implementation's median time scales with its thread count: per step kind, the
/// median at each thread count and the speed-up of the most threads over the fewest. Empty with
/// fewer than two thread counts. (The unfused inference rows share the `eval` pair's PyTorch
/// worker, so they list aue only.)
pub fn scaling_table(rows: &[Row]) -> String {
    let mut threads: Vec<usize> = rows.iter().map(|r| r.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let (Some(&lo), Some(&hi)) = (threads.first(), threads.last()) else {
        return String::new();
    };
    if threads.len() < 2 {
        return String::new();
    }
    let mut modes: Vec<Mode> = rows.iter().map(|r| r.mode).collect();
    modes.sort_unstable();
    modes.dedup();
    let mut out = format!(
        "\n### Thread scaling (median ms; speed-up = time at {lo} / time at {hi} threads)\n\n"
    );
    out.push_str("| step | implementation |");
    for t in &threads {
        out.push_str(&format!(" {t} thread(s) |"));
    }
    out.push_str(" speed-up |\n|---|---|");
    out.push_str(&"---:|".repeat(threads.len() + 1));
    out.push('\n');
    let median = |m: Option<&Measurement>| m.and_then(Measurement::stats).map(|s| s.median);
    for mode in modes {
        let at = |t: usize| rows.iter().find(|r| r.mode == mode && r.threads == t);
        let impls: [(&str, &MeasurementOf); 3] = [
            ("aue", &|r| Some(&r.candle)),
            ("PyTorch", &|r| r.torch.as_ref()),
            ("authors' code", &|r| r.authors.as_ref()),
        ];
        for (name, get) in impls {
            if name != "aue" && mode == Mode::EvalUnfused {
                continue;
            }
            let med: Vec<Option<f64>> =
                threads.iter().map(|&t| median(at(t).and_then(get))).collect();
            if med.iter().all(Option::is_none) {
                continue;
            }
            out.push_str(&format!("| {} | {name} |", mode.label()));
            for m in &med {
                out.push_str(&m.map_or_else(|| " - |".into(), |v| format!(" {:.0} |", 1e3 * v)));
            }
            let speedup = match (med.first(), med.last()) {
                (Some(Some(a)), Some(Some(b))) if *b > 0.0 => Some(a / b),
                _ => None,
            };
            out.push_str(&format!(" {} |\n", ratio(speedup)));
        }
    }
    out
}

/// The machine's steal time during each block of timed steps (the share of its CPU time the
/// hypervisor gave to other guests, `CpuTimes`), so that a reader can tell a slow
/// two-thread step from a busy host; empty when none was measured.
pub fn steal_table(blocks: &[(Mode, usize, f64)]) -> String {
    if blocks.is_empty() {
        return String::new();
    }
    let mut blocks = blocks.to_vec();
    blocks.sort_by_key(|&(mode, threads, _)| (threads, mode));
    let mut out = String::from(
        "\n### CPU steal during the timed steps (% of the machine's CPU time taken by the \
         hypervisor; a few percent or more slows the multi-thread steps most)\n\n| step | threads \
         | steal % |\n|---|---:|---:|\n",
    );
    for (mode, threads, p) in blocks {
        out.push_str(&format!("| {} | {threads} | {p:.1} |\n", mode.label()));
    }
    out
}

/// aue against the authors' released code (`aue-bench --authors`): median ms and their ratio, per
/// step and thread count; empty when it did not run.
pub fn authors_table(rows: &[Row]) -> String {
    let mut rows: Vec<&Row> = rows.iter().filter(|r| r.authors.is_some()).collect();
    if rows.is_empty() {
        return String::new();
    }
    rows.sort_by_key(|r| (r.threads, r.mode));
    let mut out = String::from(
        "\n### Against the authors' released code\n\n| step | threads | aue ms, median (min-max) \
         | authors' code ms, median (min-max) | time aue/authors |\n|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let c = r.candle.stats();
        let a = r.authors.as_ref().and_then(Measurement::stats);
        let q = match (c, a) {
            (Some(c), Some(a)) if a.median > 0.0 => Some(c.median / a.median),
            _ => None,
        };
        let show = |s: Option<Stats>| s.map_or_else(|| "-".into(), |s| ms(&s));
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.mode.label(),
            r.threads,
            show(c),
            show(a),
            ratio(q)
        ));
    }
    out
}

/// The GPU variant: images per second, device memory and the loss of the first and last step.
fn gpu_table(rows: &[&Row]) -> String {
    let mut out = String::from(
        "| step | aue ms, median (min-max) | PyTorch ms, median (min-max) | aue img/s | PyTorch img/s \
         | img/s aue/PyTorch | aue GPU MiB | PyTorch GPU MiB | GPU mem aue/PyTorch | loss, first -> last step: aue | PyTorch |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n");
    let fmt_ms = |m: &Measurement| m.stats().map_or_else(|| "-".into(), |s| ms(&s));
    let rate = |m: &Measurement, batch: usize| {
        m.stats().filter(|s| s.median > 0.0).map(|s| batch as f64 / s.median)
    };
    for r in rows {
        let b = r.batch;
        let (c_rate, t_rate) = (rate(&r.candle, b), r.torch.as_ref().and_then(|t| rate(t, b)));
        let gpu = |m: Option<&Measurement>| {
            m.and_then(|m| m.device_peak_bytes).map_or_else(|| "-".into(), mib)
        };
        let gpu_ratio = match (
            r.candle.device_peak_bytes,
            r.torch.as_ref().and_then(|t| t.device_peak_bytes),
        ) {
            (Some(a), Some(b)) if b > 0 => Some(a as f64 / b as f64),
            _ => None,
        };
        let trend = |m: Option<&Measurement>| {
            m.and_then(|m| {
                let t = m.loss_trend()?;
                Some(if m.losses_finite() { t } else { format!("{t} (not finite!)") })
            })
            .unwrap_or_else(|| "-".into())
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.mode.label(),
            fmt_ms(&r.candle),
            r.torch.as_ref().map_or_else(|| "-".into(), fmt_ms),
            c_rate.map_or_else(|| "-".into(), |v| format!("{v:.0}")),
            t_rate.map_or_else(|| "-".into(), |v| format!("{v:.0}")),
            ratio(c_rate.zip(t_rate).map(|(c, t)| c / t)),
            gpu(Some(&r.candle)),
            gpu(r.torch.as_ref()),
            ratio(gpu_ratio),
            trend(Some(&r.candle)),
            trend(r.torch.as_ref()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_table_lists_blocks_by_threads() {
        assert_eq!(steal_table(&[]), "");
        let t =
            steal_table(&[(Mode::Eval, 2, 12.34), (Mode::Stage1, 2, 0.5), (Mode::Eval, 1, 3.0)]);
        let rows: Vec<&str> =
            t.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| step")).collect();
        assert_eq!(
            rows,
            [
                "| inference (eval, all outputs) | 1 | 3.0 |",
                "| stage 1 (EM) train step | 2 | 0.5 |",
                "| inference (eval, all outputs) | 2 | 12.3 |",
            ]
        );
    }

    #[test]
    fn median_min_max() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stats::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(Stats::of(&[]), None);
        assert_eq!(Stats::of(&[1.0, f64::NAN]), None);
    }

    fn m(times: &[f64], peak: u64, base: u64) -> Measurement {
        Measurement {
            times: times.to_vec(),
            peak_bytes: peak,
            baseline_bytes: base,
            losses: vec![2.0, 1.5],
            device_peak_bytes: None,
        }
    }

    #[test]
    fn ratios_and_table() {
        let mib = 1024 * 1024;
        let row = Row {
            mode: Mode::Stage2,
            threads: 1,
            batch: 8,
            candle: m(&[0.9, 1.0, 1.1], 300 * mib, 100 * mib),
            torch: Some(m(&[2.0, 2.0, 2.2], 400 * mib, 200 * mib)),
            authors: None,
        };
        assert!((row.time_ratio().unwrap() - 0.5).abs() < 1e-12);
        assert!((row.memory_ratio().unwrap() - 0.75).abs() < 1e-12);
        assert!((row.net_memory_ratio().unwrap() - 1.0).abs() < 1e-12);
        let alone = Row { torch: None, threads: 2, mode: Mode::Stage1, ..row.clone() };
        assert_eq!(alone.time_ratio(), None);
        let table = markdown_table(&[alone, row]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        // One thread sorts first.
        assert!(lines[2].starts_with(
            "| stage 2 (AU) train step | 1 | 1000 (900-1100) | 2000 (2000-2200) | 0.50 |"
        ));
        assert!(lines[2].ends_with("| 300 | 400 | 0.75 | 200 / 200 | 1.00 |"), "{}", lines[2]);
        assert!(lines[3].contains("| 2 | 1000 (900-1100) | - | - |"), "{}", lines[3]);
    }

    #[test]
    fn scaling_table_gives_each_implementation_per_thread_count() {
        let mib = 1024 * 1024;
        let row = |mode, threads, c: f64, t: Option<f64>| Row {
            mode,
            threads,
            batch: 8,
            candle: m(&[c], mib, 0),
            torch: t.map(|t| m(&[t], mib, 0)),
            authors: None,
        };
        let rows = [
            row(Mode::Eval, 1, 0.6, Some(0.7)),
            row(Mode::Eval, 2, 0.4, Some(0.35)),
            row(Mode::EvalUnfused, 1, 0.8, Some(0.7)),
            row(Mode::EvalUnfused, 2, 0.5, Some(0.35)),
        ];
        let table = scaling_table(&rows);
        let lines: Vec<&str> = table.lines().filter(|l| l.starts_with("| inf")).collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert_eq!(lines[0], "| inference (eval, all outputs) | aue | 600 | 400 | 1.50 |");
        assert_eq!(lines[1], "| inference (eval, all outputs) | PyTorch | 700 | 350 | 2.00 |");
        assert!(lines[2].starts_with("| inference, unfused"), "{}", lines[2]);
        assert_eq!(scaling_table(&rows[..1]), "");
    }

    #[test]
    fn gpu_table_has_rates_memory_and_losses() {
        let mib = 1024 * 1024;
        let mut candle = m(&[0.5, 0.5, 0.5], 0, 0);
        candle.device_peak_bytes = Some(1200 * mib);
        let mut torch = m(&[1.0, 1.0, 1.0], 0, 0);
        torch.device_peak_bytes = Some(1000 * mib);
        torch.losses = vec![2.0, f64::NAN];
        let row = Row {
            mode: Mode::Stage1,
            threads: 1,
            batch: 64,
            candle,
            torch: Some(torch),
            authors: None,
        };
        let table = markdown_table(&[row]);
        let line = table.lines().nth(2).unwrap();
        assert!(
            line.contains("| 128 | 64 | 2.00 | 1200 | 1000 | 1.20 | 2.0000 -> 1.5000 |"),
            "{line}"
        );
        assert!(line.contains("(not finite!)"), "{line}");
    }

    #[test]
    fn authors_table_lists_the_rows_where_their_code_ran() {
        let mib = 1024 * 1024;
        let row = |mode, a: Option<f64>| Row {
            mode,
            threads: 1,
            batch: 4,
            candle: m(&[3.0, 3.2, 3.4], mib, 0),
            torch: None,
            authors: a.map(|a| m(&[a], mib, 0)),
        };
        assert_eq!(authors_table(&[row(Mode::Stage1, None)]), "");
        let table = authors_table(&[row(Mode::Stage2, Some(4.0)), row(Mode::Stage1, None)]);
        let lines: Vec<&str> = table.lines().filter(|l| l.starts_with("| stage")).collect();
        assert_eq!(
            lines,
            ["| stage 2 (AU) train step | 1 | 3200 (3000-3400) | 4000 (4000-4000) | 0.80 |"],
            "{table}"
        );
    }
}
