//! QEMU driver: command line, QMP client, and the [`crate::Vmm`] implementation.
//!
//! A VM runs as one `qemu-system-x86_64` process in its own process group (it outlives
//! the `accelnet` process that launched it), with its QMP socket at
//! `<run_dir>/<name>.qmp` and its stdout/stderr in `<run_dir>/<name>.log`. Device ids
//! are fixed (see [`cmdline`]): the synthetic NIC is `standby0`, the direct path
//! `primary0`.
//!
//! QEMU versions: virtio-net failover needs QEMU ≥ 4.2; re-plugging a primary after
//! `device_del` needs QEMU ≥ 10 (7.2 refuses with `Duplicate ID` / `Cannot attach
//! more than one primary device`), so a VM with a direct path needs QEMU ≥ 10.

pub mod cmdline;
pub mod qmp;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::{
    DirectPath, EventReceiver, MigrationProgress, MigrationSummary, ProgressFn, VmEvent, VmSpec,
    VmState, VmStatus, Vmm, VmmError, VmmKind,
};

pub use cmdline::{qemu_argv, PRIMARY_ID, STANDBY_ID};
pub use qmp::{QmpClient, TimedEvent};

/// Minimum QEMU version for virtio-net failover (`failover=on`).
pub const MIN_VERSION: QemuVersion = QemuVersion::new(4, 2, 0);
/// Minimum QEMU version to run a direct path: re-plugging a failover primary after
/// `device_del` works from QEMU 10 on.
pub const MIN_VERSION_DIRECT: QemuVersion = QemuVersion::new(10, 0, 0);

/// The binary used when `ACCELNET_QEMU` is not set.
pub const DEFAULT_BINARY: &str = "qemu-system-x86_64";

/// Capacity of a VM's event channel.
const EVENT_CAPACITY: usize = 256;
/// `query-migrate` polling period: the caller announces the VM at the
/// destination once this returns, so every period of delay is outage.
const MIGRATE_POLL: Duration = Duration::from_millis(20);
/// How long after `completed` downtime may still be re-read (QEMU may report 0
/// at first); re-read every [`MIGRATE_POLL`], and only while it is missing.
const DOWNTIME_REREAD: Duration = Duration::from_millis(300);

/// A QEMU version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QemuVersion {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Micro.
    pub micro: u32,
}

impl QemuVersion {
    /// `major.minor.micro`.
    pub const fn new(major: u32, minor: u32, micro: u32) -> Self {
        QemuVersion {
            major,
            minor,
            micro,
        }
    }

    /// Parses `qemu-system-x86_64 --version` output (`QEMU emulator version 10.0.2
    /// (Debian ...)`).
    pub fn parse(output: &str) -> Option<QemuVersion> {
        let rest = output.split("version").nth(1)?;
        let word = rest.split_whitespace().next()?;
        let mut nums = word
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u32>());
        let major = nums.next()?.ok()?;
        let minor = nums.next().and_then(Result::ok).unwrap_or(0);
        let micro = nums.next().and_then(Result::ok).unwrap_or(0);
        Some(QemuVersion::new(major, minor, micro))
    }
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

/// Runs `<binary> --version` and parses it.
pub async fn qemu_version(vm: &str, binary: &Path) -> Result<QemuVersion, VmmError> {
    let err = |message: String| VmmError::Binary {
        vm: vm.to_string(),
        message,
    };
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(binary)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| {
        err(format!(
            "{} --version did not answer in 10 s",
            binary.display()
        ))
    })?
    .map_err(|e| err(format!("cannot run QEMU {}: {e}", binary.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    QemuVersion::parse(&text).ok_or_else(|| {
        err(format!(
            "cannot parse `{} --version`: {:?}",
            binary.display(),
            text.trim()
        ))
    })
}

/// Checks that `binary` is at least the version the spec needs: [`MIN_VERSION`], or
/// [`MIN_VERSION_DIRECT`] with a direct path. Returns the version.
pub async fn check_version(vm: &str, binary: &Path, direct: bool) -> Result<QemuVersion, VmmError> {
    let v = qemu_version(vm, binary).await?;
    let (min, why) = if direct {
        (
            MIN_VERSION_DIRECT,
            "a VM with a direct path (VF or stand-in) needs it: older QEMU refuses to \
             re-plug the failover primary after device_del",
        )
    } else {
        (MIN_VERSION, "virtio-net failover (failover=on) needs it")
    };
    if v < min {
        return Err(VmmError::Binary {
            vm: vm.to_string(),
            message: format!(
                "{} is QEMU {v}, need >= {}.{} ({why})",
                binary.display(),
                min.major,
                min.minor
            ),
        });
    }
    Ok(v)
}

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// KVM (`-cpu host`).
    Kvm,
    /// TCG emulation (`-cpu max`).
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// KVM when `/dev/kvm` opens read-write and the CPU has hardware virtualization
    /// (`vmx`/`svm`: a `/dev/kvm` without it aborts QEMU), else TCG.
    pub fn detect() -> Accel {
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        let hw = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|s| {
            s.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
        });
        if dev && hw {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// How to run QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuOptions {
    /// The QEMU binary.
    pub binary: PathBuf,
    /// Where the QMP socket and the log go (created if missing).
    pub run_dir: PathBuf,
    /// Accelerator; `None` detects ([`Accel::detect`]).
    pub accel: Option<Accel>,
    /// `reconnect-ms` of the vhost-user chardev: QEMU reconnects after a switch
    /// restart. `None` leaves it off (QEMU then exits when the switch goes away).
    pub chardev_reconnect_ms: Option<u64>,
    /// How long `start` waits for QMP.
    pub start_timeout: Duration,
    /// Per-command QMP timeout.
    pub command_timeout: Duration,
    /// Extra arguments appended to the command line.
    pub extra_args: Vec<String>,
}

impl QemuOptions {
    /// Defaults with `run_dir`: binary from `ACCELNET_QEMU` or [`DEFAULT_BINARY`],
    /// detected accelerator, reconnect every 1000 ms, 30 s start and command timeouts.
    pub fn new(run_dir: impl Into<PathBuf>) -> Self {
        QemuOptions {
            binary: std::env::var_os("ACCELNET_QEMU")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_BINARY)),
            run_dir: run_dir.into(),
            accel: None,
            chardev_reconnect_ms: Some(1000),
            start_timeout: Duration::from_secs(30),
            command_timeout: qmp::DEFAULT_COMMAND_TIMEOUT,
            extra_args: Vec::new(),
        }
    }
}

/// A VM under QEMU.
#[derive(Debug)]
pub struct QemuVm {
    spec: VmSpec,
    opts: QemuOptions,
    events: broadcast::Sender<VmEvent>,
    qmp: Option<QmpClient>,
    pid: Option<u32>,
    child: Mutex<Option<tokio::process::Child>>,
    version: Mutex<Option<QemuVersion>>,
}

fn pid_alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn kill_pid(pid: u32) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn map_run_state(status: &str) -> VmState {
    match status {
        "running" | "colo" => VmState::Running,
        "prelaunch" | "restore-vm" => VmState::Created,
        "inmigrate" => VmState::Incoming,
        "postmigrate" => VmState::Migrated,
        "shutdown" => VmState::Stopped,
        // paused, suspended, finish-migrate, save-vm, debug, watchdog, io-error,
        // internal-error, guest-panicked
        _ => VmState::Paused,
    }
}

fn u64_at(v: &Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for k in path {
        cur = cur.get(k)?;
    }
    cur.as_u64()
}

impl QemuVm {
    /// A VM for `spec`, not started. Fails on an invalid spec.
    pub fn new(spec: VmSpec, opts: QemuOptions) -> Result<QemuVm, VmmError> {
        cmdline::validate(&spec)?;
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(QemuVm {
            spec,
            opts,
            events,
            qmp: None,
            pid: None,
            child: Mutex::new(None),
            version: Mutex::new(None),
        })
    }

    /// Takes over a VM launched earlier (by another process) whose QEMU runs as `pid`:
    /// connects to its QMP socket.
    pub async fn attach(spec: VmSpec, opts: QemuOptions, pid: u32) -> Result<QemuVm, VmmError> {
        let mut vm = QemuVm::new(spec, opts)?;
        if !pid_alive(pid) {
            return Err(vm.exited(format!("pid {pid} does not run")));
        }
        let path = vm.qmp_path();
        let qmp = QmpClient::connect(
            &vm.spec.name,
            &path,
            Duration::from_secs(5),
            vm.events.clone(),
        )
        .await?;
        vm.qmp = Some(qmp);
        vm.pid = Some(pid);
        Ok(vm)
    }

    /// The QMP socket path.
    pub fn qmp_path(&self) -> PathBuf {
        cmdline::qmp_path(&self.spec, &self.opts)
    }

    /// QEMU's log (stdout and stderr).
    pub fn log_path(&self) -> PathBuf {
        cmdline::log_path(&self.spec, &self.opts)
    }

    /// The QEMU process id, once started or attached.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The options.
    pub fn options(&self) -> &QemuOptions {
        &self.opts
    }

    /// The QMP connection, when started or attached.
    pub fn qmp(&self) -> Option<&QmpClient> {
        self.qmp.as_ref()
    }

    /// Subscribes to events with their QMP timestamps (None before start).
    pub fn timed_events(&self) -> Option<broadcast::Receiver<TimedEvent>> {
        self.qmp.as_ref().map(QmpClient::timed_events)
    }

    /// Runs a QMP command with the configured timeout.
    pub async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, VmmError> {
        let q = self.connected()?;
        q.execute_timeout(command, args, self.opts.command_timeout)
            .await
    }

    fn exited(&self, message: impl Into<String>) -> VmmError {
        VmmError::Exited {
            vm: self.spec.name.clone(),
            vmm: VmmKind::Qemu,
            message: message.into(),
        }
    }

    fn start_err(&self, message: impl Into<String>) -> VmmError {
        VmmError::Start {
            vm: self.spec.name.clone(),
            vmm: VmmKind::Qemu,
            message: message.into(),
        }
    }

    fn connected(&self) -> Result<&QmpClient, VmmError> {
        self.qmp
            .as_ref()
            .ok_or_else(|| self.exited("not started (no QMP connection)"))
    }

    /// Whether the QEMU process still runs (reaps our own child).
    fn alive(&self) -> bool {
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = child.as_mut() {
            return matches!(c.try_wait(), Ok(None));
        }
        self.pid.is_some_and(pid_alive)
    }

    /// The child's exit status, if it is ours and has exited.
    fn exit_status(&self) -> Option<std::process::ExitStatus> {
        let mut child = self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    async fn require_direct_version(&self) -> Result<(), VmmError> {
        let known = *self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let v = match known {
            Some(v) => v,
            None => qemu_version(&self.spec.name, &self.opts.binary).await?,
        };
        if v < MIN_VERSION_DIRECT {
            return Err(VmmError::Binary {
                vm: self.spec.name.clone(),
                message: format!(
                    "QEMU {v} cannot hot-plug a failover primary again after device_del; \
                     need >= 10.0"
                ),
            });
        }
        Ok(())
    }

    /// Waits up to `within` for the process to exit.
    async fn wait_exit(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if !self.alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether `primary0` exists in QEMU (plugged, not hidden by failover).
    async fn primary_present(&self) -> Result<bool, VmmError> {
        self.device_present(PRIMARY_ID).await
    }

    /// Whether the device `id` exists in QEMU.
    async fn device_present(&self, id: &str) -> Result<bool, VmmError> {
        let list = self
            .execute("qom-list", Some(json!({"path": "/machine/peripheral"})))
            .await?;
        Ok(list
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["name"] == id)))
    }
}

#[async_trait::async_trait]
impl Vmm for QemuVm {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    async fn start(&mut self) -> Result<(), VmmError> {
        if self.qmp.is_some() && self.alive() {
            return Err(self.start_err("already running"));
        }
        let version = check_version(
            &self.spec.name,
            &self.opts.binary,
            self.spec.direct.is_some(),
        )
        .await?;
        *self
            .version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(version);
        let argv = qemu_argv(&self.spec, &self.opts)?;
        std::fs::create_dir_all(&self.opts.run_dir).map_err(|e| {
            self.start_err(format!(
                "cannot create run dir {}: {e}",
                self.opts.run_dir.display()
            ))
        })?;
        let qmp_path = self.qmp_path();
        if qmp_path.exists() {
            if std::os::unix::net::UnixStream::connect(&qmp_path).is_ok() {
                return Err(self.start_err(format!(
                    "{} is in use: a QEMU for this VM seems to run already",
                    qmp_path.display()
                )));
            }
            let _ = std::fs::remove_file(&qmp_path);
        }
        let log_path = self.log_path();
        let log = std::fs::File::create(&log_path)
            .map_err(|e| self.start_err(format!("cannot create {}: {e}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| self.start_err(format!("{}: {e}", log_path.display())))?;
        log::info!(
            "VM {}: starting {} {}",
            self.spec.name,
            self.opts.binary.display(),
            argv.join(" ")
        );
        let mut cmd = tokio::process::Command::new(&self.opts.binary);
        cmd.args(&argv)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Own process group: QEMU outlives the CLI that launched it and its signals.
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn().map_err(|e| {
            self.start_err(format!("cannot run {}: {e}", self.opts.binary.display()))
        })?;
        let pid = child.id();
        self.pid = pid;
        *self
            .child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(child);
        let deadline = Instant::now() + self.opts.start_timeout;
        let qmp = loop {
            if let Some(status) = self.exit_status() {
                self.pid = None;
                return Err(self.start_err(format!(
                    "QEMU exited at start ({status}); {}:\n{}",
                    log_path.display(),
                    tail(&log_path, 20)
                )));
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100));
            match QmpClient::connect_once(&self.spec.name, &qmp_path, left, self.events.clone())
                .await
            {
                Ok(q) => break q,
                Err(qmp::ConnectError::NoGreeting(after)) => {
                    let status = self.exit_status();
                    self.kill_now().await;
                    return Err(self.start_err(format!(
                        "no QMP greeting on {} within {:.1} s (exit status {status:?}; QEMU \
                         blocks at start until its vhost-user backend {} accepts); {}:\n{}",
                        qmp_path.display(),
                        after.as_secs_f64(),
                        self.spec.nic.socket.display(),
                        log_path.display(),
                        tail(&log_path, 20)
                    )));
                }
                Err(qmp::ConnectError::Fatal(e)) => {
                    self.kill_now().await;
                    return Err(e);
                }
                Err(qmp::ConnectError::NotYet(e)) => {
                    if Instant::now() >= deadline {
                        self.kill_now().await;
                        return Err(self.start_err(format!(
                            "no QMP on {} within {:.0} s ({e}); {}:\n{}",
                            qmp_path.display(),
                            self.opts.start_timeout.as_secs_f64(),
                            log_path.display(),
                            tail(&log_path, 20)
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.qmp = Some(qmp);
        // QMP answered: make sure the process did not die right after.
        if let Err(e) = self.execute("query-status", None).await {
            let status = self.exit_status();
            self.kill_now().await;
            return Err(self.start_err(format!(
                "QEMU failed right after start ({e}; exit {status:?}); {}:\n{}",
                log_path.display(),
                tail(&log_path, 20)
            )));
        }
        log::info!(
            "VM {}: QEMU {version} runs as pid {:?}",
            self.spec.name,
            self.pid
        );
        Ok(())
    }

    async fn stop(&mut self, grace: Duration) -> Result<(), VmmError> {
        if self.pid.is_none() || !self.alive() {
            self.qmp = None;
            self.pid = None;
            return Ok(());
        }
        if let Some(q) = &self.qmp {
            match q.execute_timeout("quit", None, grace).await {
                Ok(_) | Err(VmmError::Exited { .. }) | Err(VmmError::Timeout { .. }) => {}
                Err(e) => log::warn!("VM {}: quit: {e}", self.spec.name),
            }
        }
        if !self.wait_exit(grace).await {
            log::warn!(
                "VM {}: QEMU still runs {:.1} s after quit; killing it",
                self.spec.name,
                grace.as_secs_f64()
            );
            self.kill_now().await;
        }
        if self.alive() {
            return Err(self.exited(format!("pid {:?} survives SIGKILL", self.pid)));
        }
        self.qmp = None;
        self.pid = None;
        let _ = std::fs::remove_file(self.qmp_path());
        Ok(())
    }

    async fn status(&self) -> Result<VmStatus, VmmError> {
        let stopped = VmStatus {
            state: VmState::Stopped,
            pid: None,
            direct_attached: false,
        };
        let Some(q) = &self.qmp else {
            return Ok(stopped);
        };
        if !self.alive() {
            return Ok(stopped);
        }
        let st = match q
            .execute_timeout("query-status", None, self.opts.command_timeout)
            .await
        {
            Ok(v) => v,
            Err(VmmError::Exited { .. }) if !self.wait_exit(Duration::from_secs(2)).await => {
                return Err(VmmError::Protocol {
                    vm: self.spec.name.clone(),
                    vmm: VmmKind::Qemu,
                    path: self.qmp_path(),
                    message: format!(
                        "QMP connection lost while QEMU (pid {:?}) still runs",
                        self.pid
                    ),
                });
            }
            Err(VmmError::Exited { .. }) => return Ok(stopped),
            Err(e) => return Err(e),
        };
        let state = map_run_state(st["status"].as_str().unwrap_or_default());
        let direct_attached = match self.primary_present().await {
            Ok(b) => b,
            Err(VmmError::Exited { .. }) => return Ok(stopped),
            Err(e) => return Err(e),
        };
        Ok(VmStatus {
            state,
            pid: self.pid,
            direct_attached,
        })
    }

    async fn attach_direct(&self, path: &DirectPath) -> Result<(), VmmError> {
        self.connected()?;
        self.require_direct_version().await?;
        if !self.device_present(STANDBY_ID).await? {
            return Err(VmmError::NoNic {
                vm: self.spec.name.clone(),
                device: STANDBY_ID.to_string(),
            });
        }
        let added_netdev = match cmdline::direct_netdev_qmp_args(path) {
            Some(args) => {
                self.execute("netdev_add", Some(args)).await?;
                true
            }
            None => false,
        };
        let dev = cmdline::primary_qmp_args(&self.spec, path);
        if let Err(e) = self.execute("device_add", Some(dev)).await {
            if added_netdev {
                let _ = self
                    .execute("netdev_del", Some(json!({"id": cmdline::DIRECT_NETDEV})))
                    .await;
            }
            return Err(e);
        }
        Ok(())
    }

    async fn detach_direct(&self, timeout: Duration) -> Result<(), VmmError> {
        let q = self.connected()?;
        let mut events = q.events();
        match self
            .execute("device_del", Some(json!({"id": PRIMARY_ID})))
            .await
        {
            Ok(_) => {
                let wait = async {
                    loop {
                        match events.recv().await {
                            Ok(VmEvent::DeviceDeleted { device }) if device == PRIMARY_ID => {
                                return Ok(())
                            }
                            Ok(VmEvent::Shutdown { reason }) if q.is_closed() => {
                                return Err(self.exited(reason))
                            }
                            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                            Err(broadcast::error::RecvError::Closed) => {
                                return Err(self.exited("event channel closed"))
                            }
                        }
                    }
                };
                match tokio::time::timeout(timeout, wait).await {
                    Ok(r) => r?,
                    Err(_) => {
                        // The event may have been missed by a lagging receiver.
                        if !self.primary_present().await? {
                            log::debug!("VM {}: primary0 is gone (event missed)", self.spec.name);
                        } else {
                            return Err(VmmError::Timeout {
                                vm: self.spec.name.clone(),
                                what: format!(
                                    "the guest to release {PRIMARY_ID} (DEVICE_DELETED); \
                                     the guest OS must handle the ACPI/PCIe unplug"
                                ),
                                after: timeout,
                            });
                        }
                    }
                }
            }
            Err(VmmError::Command { message, .. })
                if message.contains("not found") || message.contains("No such") =>
            {
                log::debug!("VM {}: no {PRIMARY_ID} to detach", self.spec.name);
            }
            Err(e) => return Err(e),
        }
        match self
            .execute("netdev_del", Some(json!({"id": cmdline::DIRECT_NETDEV})))
            .await
        {
            Ok(_) | Err(VmmError::Command { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn migrate_out(
        &self,
        uri: &str,
        progress: ProgressFn<'_>,
    ) -> Result<MigrationSummary, VmmError> {
        self.connected()?;
        self.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
        )
        .await?;
        let started = Instant::now();
        self.execute("migrate", Some(json!({"uri": uri}))).await?;
        loop {
            let info = self.execute("query-migrate", None).await?;
            let status = info["status"].as_str().unwrap_or("none").to_string();
            let elapsed_ms = u64_at(&info, &["total-time"]).unwrap_or_else(|| {
                u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
            });
            progress(&MigrationProgress {
                status: status.clone(),
                transferred: u64_at(&info, &["ram", "transferred"]).unwrap_or(0),
                remaining: u64_at(&info, &["ram", "remaining"]).unwrap_or(0),
                total: u64_at(&info, &["ram", "total"]).unwrap_or(0),
                elapsed_ms,
            });
            match status.as_str() {
                "completed" => {
                    let mut again = info;
                    let until = Instant::now() + DOWNTIME_REREAD;
                    while u64_at(&again, &["downtime"]).unwrap_or(0) == 0 && Instant::now() < until
                    {
                        tokio::time::sleep(MIGRATE_POLL).await;
                        match self.execute("query-migrate", None).await {
                            Ok(v) => again = v,
                            Err(_) => break,
                        }
                    }
                    return Ok(MigrationSummary {
                        total_ms: u64_at(&again, &["total-time"]).unwrap_or(elapsed_ms),
                        downtime_ms: u64_at(&again, &["downtime"]),
                        transferred: u64_at(&again, &["ram", "transferred"]).unwrap_or(0),
                    });
                }
                "failed" | "cancelled" => {
                    return Err(VmmError::Migration {
                        vm: self.spec.name.clone(),
                        message: info["error-desc"]
                            .as_str()
                            .unwrap_or(if status == "cancelled" {
                                "cancelled"
                            } else {
                                "no error description"
                            })
                            .to_string(),
                        status,
                    });
                }
                _ => tokio::time::sleep(MIGRATE_POLL).await,
            }
        }
    }

    async fn receive_migration(&self, uri: &str) -> Result<(), VmmError> {
        self.connected()?;
        self.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
        )
        .await?;
        self.execute("migrate-incoming", Some(json!({"uri": uri})))
            .await?;
        Ok(())
    }

    async fn cancel_migration(&self) -> Result<(), VmmError> {
        self.execute("migrate_cancel", None).await?;
        Ok(())
    }

    fn events(&self) -> EventReceiver {
        self.events.subscribe()
    }
}

impl QemuVm {
    /// SIGKILLs the process and waits (up to 5 s) until it is gone.
    async fn kill_now(&self) {
        if let Some(pid) = self.pid {
            if self.alive() {
                kill_pid(pid);
            }
            let _ = self.wait_exit(Duration::from_secs(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn version_parsing() {
        assert_eq!(
            QemuVersion::parse(
                "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright"
            ),
            Some(QemuVersion::new(10, 0, 2))
        );
        assert_eq!(
            QemuVersion::parse("QEMU emulator version 7.2.0\n"),
            Some(QemuVersion::new(7, 2, 0))
        );
        assert_eq!(
            QemuVersion::parse("QEMU emulator version 4.2"),
            Some(QemuVersion::new(4, 2, 0))
        );
        assert_eq!(QemuVersion::parse("bash: command not found"), None);
        assert!(QemuVersion::new(7, 2, 0) < MIN_VERSION_DIRECT);
        assert!(QemuVersion::new(4, 2, 0) >= MIN_VERSION);
    }

    #[test]
    fn run_states() {
        assert_eq!(map_run_state("running"), VmState::Running);
        assert_eq!(map_run_state("paused"), VmState::Paused);
        assert_eq!(map_run_state("inmigrate"), VmState::Incoming);
        assert_eq!(map_run_state("postmigrate"), VmState::Migrated);
        assert_eq!(map_run_state("prelaunch"), VmState::Created);
        assert_eq!(map_run_state("shutdown"), VmState::Stopped);
    }
}
