//! One QEMU TCG guest with a vhost-user virtio-net NIC, driven through its serial console.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::cmd::CmdOutput;
use crate::console::{Console, Line, WaitError};
use crate::lab::{log, qemu_binary, Lab};
use crate::{LabError, PingStats, Result};

/// Console lines included in error messages.
const TAIL_LINES: usize = 40;
/// Printed by `lab/guest-init.sh` (role `shell`) once the NIC is configured.
const READY: &str = "LAB: ready";

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// Short name: QEMU `-name`, log file `<name>.log`, message prefix.
    pub name: String,
    /// Address with prefix length, e.g. `10.99.0.2/24`.
    pub ip: String,
    /// NIC MAC address.
    pub mac: String,
    /// vhost-user socket of the NIC (the switch must be listening on it already).
    pub socket: PathBuf,
    /// Guest RAM in MiB (shared memfd, as vhost-user requires).
    pub memory_mb: u32,
    /// Extra kernel command line arguments.
    pub append: String,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
    /// Extra options of the vhost-user chardev, e.g. `,reconnect-ms=100` (the switch
    /// listens, QEMU reconnects after a switch restart) or `,server=on,wait=off` (QEMU
    /// owns the socket, the switch connects).
    pub chardev_opts: String,
    /// Extra options of the vhost-user netdev, e.g. `,queues=2`.
    pub netdev_opts: String,
    /// Extra options of the virtio-net-pci device, e.g. `,mq=on,vectors=6`.
    pub device_opts: String,
}

impl GuestConfig {
    /// A 256 MiB guest in role `shell` with one vhost-user NIC.
    pub fn new(name: &str, ip: &str, mac: &str, socket: impl Into<PathBuf>) -> Self {
        GuestConfig {
            name: name.to_string(),
            ip: ip.to_string(),
            mac: mac.to_string(),
            socket: socket.into(),
            memory_mb: 256,
            append: String::new(),
            qemu_args: Vec::new(),
            chardev_opts: String::new(),
            netdev_opts: String::new(),
            device_opts: String::new(),
        }
    }

    /// QEMU's command line.
    pub fn argv(&self, kernel: &Path, initrd: &Path) -> Vec<String> {
        let mem = format!("{}M", self.memory_mb);
        let append = format!(
            "console=ttyS0 loglevel=4 panic=-1 mitigations=off lab.role=shell lab.ip={} lab.mac={} {}",
            self.ip, self.mac, self.append
        );
        let mut v: Vec<String> = [
            "-name",
            &self.name,
            "-machine",
            "q35,memory-backend=mem",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-m",
            &mem,
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-kernel",
            &kernel.to_string_lossy(),
            "-initrd",
            &initrd.to_string_lossy(),
            "-append",
            append.trim_end(),
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-no-reboot",
            "-nodefaults",
            "-chardev",
            &format!(
                "socket,id=c0,path={}{}",
                self.socket.display(),
                self.chardev_opts
            ),
            "-netdev",
            &format!("vhost-user,id=n0,chardev=c0{}", self.netdev_opts),
            "-device",
            &format!(
                "virtio-net-pci,netdev=n0,mac={}{}",
                self.mac, self.device_opts
            ),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(self.qemu_args.iter().cloned());
        v
    }
}

/// A running guest. Commands are typed on QEMU's stdin (the guest's ttyS0) and their output
/// is read back from stdout; every line is timestamped and logged to `<log_dir>/<name>.log`.
/// Dropping it kills QEMU (by pid).
#[derive(Debug)]
pub struct Guest {
    name: String,
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    console: Arc<Console>,
    readers: Vec<JoinHandle<()>>,
    seq: AtomicU64,
    run_lock: Mutex<()>,
    started: Instant,
    log_path: PathBuf,
}

impl Guest {
    /// Starts QEMU. The switch must already listen on `cfg.socket`.
    pub fn spawn(lab: &Lab, cfg: &GuestConfig) -> Result<Guest> {
        let argv = cfg.argv(lab.kernel(), lab.initrd());
        let log_path = lab.log_dir().join(format!("{}.log", cfg.name));
        let mut logf = lab.log_file(&cfg.name)?;
        let qemu = qemu_binary();
        // Best effort: the command line heads the log.
        let _ = writeln!(logf, "$ {qemu} {}", shell_quote(&argv));
        let mut child = Command::new(&qemu)
            .args(&argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError(format!("guest {}: cannot start {qemu}: {e}", cfg.name)))?;
        let console = Arc::new(Console::new(&cfg.name, 2, Some(logf)));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            let c = Arc::clone(&console);
            readers.push(thread::spawn(move || c.pump("", out)));
        }
        if let Some(err) = child.stderr.take() {
            let c = Arc::clone(&console);
            readers.push(thread::spawn(move || c.pump(" qemu-stderr", err)));
        }
        let stdin = child.stdin.take();
        log(format!(
            "guest {}: qemu pid {} ip {} mac {} socket {}",
            cfg.name,
            child.id(),
            cfg.ip,
            cfg.mac,
            cfg.socket.display()
        ));
        Ok(Guest {
            name: cfg.name.clone(),
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            console,
            readers,
            seq: AtomicU64::new(0),
            run_lock: Mutex::new(()),
            started: Instant::now(),
            log_path,
        })
    }

    /// The guest's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of this guest's console log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Index of the next console line: pass it to [`Guest::wait_for_from`].
    pub fn mark(&self) -> usize {
        self.console.len()
    }

    /// Waits for a console line containing `pattern` (searching from the first line).
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<Line> {
        self.wait_for_from(0, pattern, timeout)
    }

    /// Waits for a console line at index >= `from` containing `pattern`.
    pub fn wait_for_from(&self, from: usize, pattern: &str, timeout: Duration) -> Result<Line> {
        self.wait_until(from, timeout, |l| {
            l.text.contains(pattern).then(|| l.clone())
        })
        .map_err(|e| self.error(&format!("waiting for {pattern:?}: {e}")))
    }

    /// Waits for a console line at index >= `from` for which `f` returns `Some`.
    /// The error is a bare reason (`timeout after ...` or `QEMU exited ...`).
    pub fn wait_until<T>(
        &self,
        from: usize,
        timeout: Duration,
        f: impl FnMut(&Line) -> Option<T>,
    ) -> std::result::Result<T, String> {
        match self.console.wait_match(from, timeout, f) {
            Ok((_, v)) => Ok(v),
            Err(WaitError::Timeout) => Err(format!("timeout after {:.1} s", timeout.as_secs_f64())),
            Err(WaitError::Closed) => Err(self.exit_reason()),
        }
    }

    /// Waits until `/init` printed `LAB: ready` and the shell answers; returns the time
    /// since [`Guest::spawn`].
    pub fn wait_ready(&self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        self.wait_for(READY, timeout)?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.run("true", left.min(Duration::from_secs(5))) {
                Ok(_) => break,
                Err(e) if left.is_zero() || self.console.closed() => return Err(e),
                Err(_) => continue,
            }
        }
        let t = self.started.elapsed();
        log(format!(
            "guest {}: ready after {:.2} s",
            self.name,
            t.as_secs_f64()
        ));
        Ok(t)
    }

    /// Runs `cmd` in the guest shell (stdin is /dev/null) and returns its console output
    /// and exit status. A non-zero status is not an error; a timeout is (the command then
    /// gets a ^C).
    pub fn run(&self, cmd: &str, timeout: Duration) -> Result<CmdOutput> {
        let _serial = self.run_lock.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let marker = format!("__END_{n}_");
        let from = self.console.len();
        let start = Instant::now();
        self.console.note(" $", cmd);
        // A brace group keeps multi-command input together; the marker carries `$?`.
        self.type_text(&format!("{{ {cmd}\n}} </dev/null; echo {marker}$?\n"))?;
        let found = self.console.wait_match(from, timeout, |l| {
            let pos = l.text.find(&marker)?;
            let status = &l.text[pos + marker.len()..];
            let status: i32 = status.parse().ok()?;
            Some((l.text[..pos].to_string(), status))
        });
        match found {
            Ok((idx, (prefix, status))) => {
                let mut lines: Vec<String> = self
                    .console
                    .lines(from, idx)
                    .into_iter()
                    .map(|l| l.text)
                    .collect();
                if !prefix.is_empty() {
                    lines.push(prefix);
                }
                Ok(CmdOutput {
                    status,
                    output: lines.join("\n"),
                    elapsed: start.elapsed(),
                })
            }
            Err(WaitError::Timeout) => {
                // Interrupt it, and swallow what the interrupted shell prints, so that the
                // next command's output starts clean.
                let _ = self.type_text("\x03");
                self.resync(Duration::from_secs(3));
                Err(self.error(&format!(
                    "`{cmd}` timed out after {:.1} s",
                    timeout.as_secs_f64()
                )))
            }
            Err(WaitError::Closed) => Err(self.error(&format!("`{cmd}`: {}", self.exit_reason()))),
        }
    }

    /// [`Guest::run`], failing unless the status is 0; returns the output.
    pub fn run_ok(&self, cmd: &str, timeout: Duration) -> Result<String> {
        let out = self.run(cmd, timeout)?;
        if out.success() {
            Ok(out.output)
        } else {
            Err(self.error(&format!(
                "`{cmd}` exited with {}:\n{}",
                out.status, out.output
            )))
        }
    }

    /// Starts `cmd` in the background (its own subshell, stdin /dev/null, stdout and stderr
    /// to a file in the guest's /tmp, not the console) and returns at once; e.g. an
    /// `iperf3 -s` or an `iperf3 -c` running on several guests at the same time. The shell
    /// does not track it as a job, so no job messages mix into later outputs.
    pub fn run_bg(&self, cmd: &str) -> Result<BgJob> {
        let log = format!("/tmp/bg-{}.log", self.seq.fetch_add(1, Ordering::Relaxed));
        let out = self.run_ok(
            &format!("( ( {cmd}\n) >{log} 2>&1 </dev/null & echo $! )"),
            Duration::from_secs(10),
        )?;
        let pid = out
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .next_back()
            .ok_or_else(|| self.error(&format!("`{cmd}` &: no pid in {out:?}")))?;
        Ok(BgJob { pid, log })
    }

    /// Waits up to `timeout` for a [`Guest::run_bg`] job to exit; returns its output.
    pub fn wait_bg(&self, job: &BgJob, timeout: Duration) -> Result<String> {
        let pid = job.pid;
        let ticks = timeout.as_secs().max(1) * 10;
        let out = self.run(
            &format!(
                "i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done; \
                 ! kill -0 {pid} 2>/dev/null"
            ),
            timeout + Duration::from_secs(10),
        )?;
        if !out.success() {
            return Err(self.error(&format!(
                "background job {pid} still runs after {:.1} s; output so far:\n{}",
                timeout.as_secs_f64(),
                self.run_ok(&format!("cat {}", job.log), Duration::from_secs(10))?
            )));
        }
        self.run_ok(&format!("cat {}", job.log), Duration::from_secs(10))
    }

    /// Stops a [`Guest::run_bg`] job (SIGTERM, then SIGKILL after 2 s); returns its output.
    pub fn stop_bg(&self, job: &BgJob) -> Result<String> {
        let pid = job.pid;
        self.run(
            &format!(
                "kill {pid} 2>/dev/null; i=0; while kill -0 {pid} 2>/dev/null && [ $i -lt 20 ]; do \
                 sleep 0.1; i=$((i+1)); done; kill -9 {pid} 2>/dev/null; true"
            ),
            Duration::from_secs(15),
        )?;
        self.run_ok(&format!("cat {}", job.log), Duration::from_secs(10))
    }

    /// `ethtool -k <ifname>`: every feature (offload) and whether it is on.
    pub fn ethtool_features(&self, ifname: &str) -> Result<BTreeMap<String, bool>> {
        let out = self.run_ok(&format!("ethtool -k {ifname}"), Duration::from_secs(20))?;
        Ok(parse_ethtool_features(&out))
    }

    /// Pings `ip` from the guest: `count` requests 0.2 s apart, then waits up to `wait_s`
    /// seconds for outstanding replies. Losses are not an error.
    pub fn ping(&self, ip: &str, count: u32, wait_s: u32) -> Result<PingStats> {
        let cmd = format!("ping -c {count} -i 0.2 -W {wait_s} {ip}");
        let timeout = Duration::from_secs(u64::from(count) + u64::from(wait_s) + 15);
        let out = self.run(&cmd, timeout)?;
        PingStats::parse(&out.output)
            .ok_or_else(|| self.error(&format!("`{cmd}`: no ping summary in:\n{}", out.output)))
    }

    /// The last `n` console lines.
    pub fn tail(&self, n: usize) -> String {
        self.console.tail(n)
    }

    /// A [`LabError`] for this guest: `msg` plus its last console lines and log path.
    pub fn error(&self, msg: &str) -> LabError {
        LabError(format!("guest {}: {msg}\n{}", self.name, self.report()))
    }

    /// The last 40 console lines under a header naming the log file.
    pub fn report(&self) -> String {
        format!(
            "--- last {TAIL_LINES} console lines of {} (full log: {}) ---\n{}",
            self.name,
            self.log_path.display(),
            self.console.tail(TAIL_LINES)
        )
    }

    /// Types a unique `echo` and waits (best effort) until it comes back.
    fn resync(&self, timeout: Duration) {
        let marker = format!("__SYNC_{}", self.seq.fetch_add(1, Ordering::Relaxed));
        let from = self.console.len();
        if self.type_text(&format!("echo {marker}\n")).is_ok() {
            let _ = self
                .console
                .wait_match(from, timeout, |l| l.text.ends_with(&marker).then_some(()));
        }
    }

    fn type_text(&self, text: &str) -> Result<()> {
        let mut g = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let stdin = g
            .as_mut()
            .ok_or_else(|| LabError(format!("guest {}: stdin closed", self.name)))?;
        stdin
            .write_all(text.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| {
                self.error(&format!(
                    "write to QEMU stdin: {e} ({})",
                    self.exit_reason()
                ))
            })
    }

    fn exit_reason(&self) -> String {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        // The output closes a moment before the process is reaped.
        for _ in 0..20 {
            if let Ok(Some(st)) = child.try_wait() {
                return format!("QEMU exited ({st})");
            }
            thread::sleep(Duration::from_millis(50));
        }
        "QEMU closed its output".to_string()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Ok(None) = child.try_wait() {
            // Polite first (QEMU closes its vhost-user connection and exits at once), then SIGKILL.
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: `pid` is our own child and not reaped yet (try_wait said it runs), so it
                // cannot name another process; kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let status = child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        self.stdin
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.console
            .note("", &format!("harness: QEMU stopped ({status})"));
        log(format!("guest {}: stopped ({status})", self.name));
    }
}

/// A command started with [`Guest::run_bg`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgJob {
    /// Its pid in the guest.
    pub pid: u32,
    /// The guest file holding its stdout and stderr.
    pub log: String,
}

/// Parses `ethtool -k` output (`tx-checksumming: on`, `\ttx-checksum-ipv4: off [fixed]`).
fn parse_ethtool_features(out: &str) -> BTreeMap<String, bool> {
    out.lines()
        .filter_map(|l| {
            let (name, value) = l.trim().split_once(": ")?;
            let on = match value.split_whitespace().next()? {
                "on" => true,
                "off" => false,
                _ => return None,
            };
            Some((name.to_string(), on))
        })
        .collect()
}

fn shell_quote(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=,./:+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_ethtool_features() {
        let out = "Features for eth0:\n\
                   rx-checksumming: on [fixed]\n\
                   tx-checksumming: on\n\
                   \ttx-checksum-ipv4: off [fixed]\n\
                   tcp-segmentation-offload: off\n\
                   \ttx-tcp-segmentation: off [requested on]\n";
        let f = parse_ethtool_features(out);
        assert_eq!(f.len(), 5);
        assert!(f["rx-checksumming"]);
        assert!(!f["tx-checksum-ipv4"]);
        assert!(!f["tx-tcp-segmentation"]);
        assert!(!f.contains_key("Features for eth0"));
    }
}
