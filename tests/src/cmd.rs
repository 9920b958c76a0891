//! Host commands with a deadline.

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{LabError, Result};

/// What a finished command printed and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdOutput {
    /// Exit status (guest shell: `$?`; host: the exit code, or 128 + signal).
    pub status: i32,
    /// Standard output (host: followed by standard error; guest: the console lines).
    pub output: String,
    /// How long the command took.
    pub elapsed: Duration,
}

impl CmdOutput {
    /// True if the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Runs `argv` on the host, killing it (by pid) if it outlives `timeout`.
/// A non-zero exit is not an error; failing to start or a timeout is.
pub fn run_cmd(argv: &[&str], timeout: Duration) -> Result<CmdOutput> {
    let (prog, args) = argv.split_first().ok_or("run_cmd: empty argv")?;
    let start = Instant::now();
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError(format!("cannot run {}: {e}", argv.join(" "))))?;
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|mut r| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            // A read error just truncates what we report.
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    })
    .collect();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() < timeout => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError(format!(
                    "`{}` timed out after {:.1} s",
                    argv.join(" "),
                    timeout.as_secs_f64()
                )));
            }
            Err(e) => return Err(LabError(format!("wait for {}: {e}", argv.join(" ")))),
        }
    };
    let output = readers
        .into_iter()
        .map(|h| h.join().unwrap_or_default())
        .collect::<Vec<_>>()
        .concat();
    let status = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    Ok(CmdOutput {
        status,
        output,
        elapsed: start.elapsed(),
    })
}

/// Runs `argv` and fails unless it exits with status 0.
pub(crate) fn run_ok(argv: &[&str], timeout: Duration) -> Result<String> {
    let out = run_cmd(argv, timeout)?;
    if out.success() {
        Ok(out.output)
    } else {
        Err(LabError(format!(
            "`{}` failed with status {}: {}",
            argv.join(" "),
            out.status,
            out.output.trim()
        )))
    }
}
