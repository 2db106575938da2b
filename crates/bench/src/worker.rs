//! The driver's side of a worker process: start it, wait for `ready`, ask for steps, collect the
//! peak memory. Every reply is checked; a worker that dies or answers nonsense is an error that
//! says which worker and what it printed.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{Context, bail};

/// One step's reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Wall time of the step, seconds.
    pub seconds: f64,
    /// The loss it computed (for inference: the sum of an output), NaN when not reported.
    pub loss: f64,
}

/// A running worker.
pub struct Worker {
    name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// Resident bytes before the model, from its `ready` line.
    pub baseline_bytes: u64,
    /// The rest of the `ready` line (versions).
    pub info: String,
}

impl Worker {
    /// Starts `command` (stdin and stdout piped, stderr inherited) and waits for its `ready` line.
    pub fn start(name: &str, mut command: Command) -> anyhow::Result<Worker> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting the {name} worker ({command:?})"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the {name} worker has no stdin/stdout pipe");
        };
        let mut w = Worker {
            name: name.to_string(),
            child,
            stdin,
            stdout: BufReader::new(stdout),
            baseline_bytes: 0,
            info: String::new(),
        };
        let line = w.read_line()?;
        let rest = parse_reply(&line, "ready").with_context(|| w.context())?;
        let (bytes, info) = rest.split_once(' ').unwrap_or((rest, ""));
        w.baseline_bytes =
            bytes.parse().with_context(|| format!("{}: bad `ready` line {line:?}", w.context()))?;
        w.info = info.to_string();
        Ok(w)
    }

    fn context(&self) -> String {
        format!("the {} worker", self.name)
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).with_context(|| self.context())?;
        if n == 0 {
            let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
            bail!("{} exited ({status}) without answering; see its messages above", self.context());
        }
        Ok(line.trim_end().to_string())
    }

    fn ask(&mut self, command: &str, tag: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("writing to {}", self.context()))?;
        let line = self.read_line()?;
        Ok(parse_reply(&line, tag).with_context(|| self.context())?.to_string())
    }

    /// One timed step: its wall time in seconds, as the worker measured it, and the step's loss
    /// (the value the worker printed after the time; NaN when it printed none).
    pub fn step(&mut self) -> anyhow::Result<Step> {
        let v = self.ask("step", "t")?;
        let mut parts = v.split_whitespace();
        let bad = || anyhow::anyhow!("{}: bad step reply {v:?}", self.context());
        let seconds: f64 = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        if !(seconds.is_finite() && seconds >= 0.0) {
            return Err(bad());
        }
        let loss = match parts.next() {
            Some(l) => l.parse::<f64>().map_err(|_| bad())?,
            None => f64::NAN,
        };
        Ok(Step { seconds, loss })
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Ends the worker; its peak resident memory in bytes.
    pub fn quit(mut self) -> anyhow::Result<u64> {
        let v = self.ask("quit", "peak")?;
        let peak = v.parse().with_context(|| format!("{}: bad peak {v:?}", self.context()))?;
        let _ = self.child.wait();
        Ok(peak)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A worker left behind by an error must not keep its memory: kill it (a no-op after quit).
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The text after `tag ` in a reply, or an error quoting the line (an `error ...` reply included).
pub fn parse_reply<'a>(line: &'a str, tag: &str) -> anyhow::Result<&'a str> {
    if let Some(rest) = line.strip_prefix("error ") {
        bail!("reported an error: {rest}");
    }
    match line.split_once(' ') {
        Some((t, rest)) if t == tag => Ok(rest.trim()),
        _ => bail!("expected `{tag} ...`, got {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply("t 0.25", "t").unwrap(), "0.25");
        assert_eq!(parse_reply("ready 123 torch=2.4", "ready").unwrap(), "123 torch=2.4");
        assert!(parse_reply("peak 1", "t").is_err());
        assert!(parse_reply("t", "t").is_err());
        let e = parse_reply("error out of memory", "t").unwrap_err();
        assert!(e.to_string().contains("out of memory"));
    }

    #[test]
    fn a_worker_that_dies_is_an_error_not_a_hang() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo ready 5 fake; read x; exit 3"]);
        let mut w = Worker::start("fake", cmd).unwrap();
        assert_eq!((w.baseline_bytes, w.info.as_str()), (5, "fake"));
        let e = w.step().unwrap_err().to_string();
        assert!(e.contains("fake worker exited"), "{e}");
    }

    #[test]
    fn a_scripted_worker_round_trip() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo ready 7; read a; echo t 0.5 2.25; read c; echo t 0.25; read b; echo peak 99",
        ]);
        let mut w = Worker::start("script", cmd).unwrap();
        assert_eq!(w.step().unwrap(), Step { seconds: 0.5, loss: 2.25 });
        let second = w.step().unwrap();
        assert!(second.seconds == 0.25 && second.loss.is_nan());
        assert_eq!(w.quit().unwrap(), 99);
    }
}
