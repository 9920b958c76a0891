//! `accelnet switch run` as a separate process, so a test can SIGKILL it and start it
//! again the way an operator's supervisor would.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{log, workspace_root};
use crate::{LabError, Result};

/// The `accelnet` binary of this workspace build (`target/<profile>/accelnet`, next to
/// the test executable's `deps/`). `cargo test --workspace` builds it with the
/// `accelnet` package's tests.
pub fn accelnet_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| LabError(format!("current_exe: {e}")))?;
    let candidates = [
        exe.parent()
            .and_then(Path::parent)
            .map(|d| d.join("accelnet")),
        Some(workspace_root().join("target/debug/accelnet")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            LabError(format!(
                "the accelnet binary is not built next to {}: run `cargo build -p accelnet` \
                 (scripts/test.sh builds it with the workspace tests)",
                exe.display()
            ))
        })
}

/// A running `accelnet switch run ARGS...`; SIGTERMed and reaped on drop.
#[derive(Debug)]
pub struct SwitchProcess {
    bin: PathBuf,
    args: Vec<String>,
    netns: Option<String>,
    log_path: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl SwitchProcess {
    /// Starts the switch; its stderr goes to `<log_dir>/switch-<n>.log`.
    pub fn start(log_dir: &Path, args: &[String]) -> Result<SwitchProcess> {
        Self::start_in(None, log_dir, args)
    }

    /// Starts the switch inside network namespace `netns` (if given); its stderr goes
    /// to `<log_dir>/switch[-<netns>]-<n>.log`.
    pub fn start_in(netns: Option<&str>, log_dir: &Path, args: &[String]) -> Result<SwitchProcess> {
        let mut p = SwitchProcess {
            bin: accelnet_binary()?,
            args: args.to_vec(),
            netns: netns.map(str::to_string),
            log_path: log_dir.to_path_buf(),
            child: None,
            starts: 0,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let path = self.current_log();
        let logf = File::create(&path).map_err(|e| LabError(format!("{}: {e}", path.display())))?;
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the command: the child's pid is the switch's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        let child = cmd
            .args(["switch", "run"])
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(|e| LabError(format!("cannot run {}: {e}", self.bin.display())))?;
        log(format!(
            "switch process {} started (pid {}): accelnet switch run {}",
            self.starts,
            child.id(),
            self.args.join(" ")
        ));
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILLs the switch and waits until it is gone (its sockets stay behind).
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill()
                .map_err(|e| LabError(format!("kill switch: {e}")))?;
            let _ = c.wait();
        }
        Ok(())
    }

    /// Starts the same command again (after [`SwitchProcess::kill9`]).
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// Fails if the process exited (with its log tail).
    pub fn check_running(&mut self) -> Result<()> {
        let Some(c) = self.child.as_mut() else {
            return Err(LabError("switch process not running".into()));
        };
        match c.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(LabError(format!(
                "switch process exited ({st}); log {}:\n{}",
                self.current_log().display(),
                std::fs::read_to_string(self.current_log()).unwrap_or_default()
            ))),
            Err(e) => Err(LabError(format!("switch process: {e}"))),
        }
    }

    /// Log file of the current (latest) process.
    pub fn current_log(&self) -> PathBuf {
        match &self.netns {
            Some(ns) => self
                .log_path
                .join(format!("switch-{ns}-{}.log", self.starts)),
            None => self.log_path.join(format!("switch-{}.log", self.starts)),
        }
    }

    /// Waits until `path` exists (e.g. the control socket of a fresh start).
    pub fn wait_path(&mut self, path: &Path, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !path.exists() {
            self.check_running()?;
            if Instant::now() > deadline {
                return Err(LabError(format!("{} did not appear", path.display())));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for SwitchProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
