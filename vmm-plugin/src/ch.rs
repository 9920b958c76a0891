//! cloud-hypervisor driver: command line, REST API client over its unix socket, and the
//! [`crate::Vmm`] implementation.
//!
//! [`ChVm::start`] spawns an empty `cloud-hypervisor --api-socket ... --event-monitor
//! ...` in its own process group (see [`cmdline::ch_argv`]), waits for `vmm.ping`,
//! then `vm.create`s the VM from [`cmdline::vm_config`] and `vm.boot`s it. With
//! `spec.incoming` it stops after the ping: the VM comes from
//! [`Vmm::receive_migration`] (`vm.receive-migration` on an empty VMM, no create).
//! cloud-hypervisor answers that request only once the VM came in, and no other
//! request before: the receiving handle's [`Vmm::status`] says
//! [`VmState::Incoming`] without asking it. On the source, a completed
//! [`Vmm::migrate_out`] returns once the VMM exited, as it does by itself then.
//!
//! cloud-hypervisor has no virtio-net failover (STANDBY): the VF is a plain VFIO
//! device (id [`cmdline::PRIMARY_ID`]) that accelnet removes and re-adds itself.
//!
//! Events come from the event monitor file (`<run_dir>/<name>.events`), a stream of
//! pretty-printed JSON objects `{timestamp, source, event, properties}` that a
//! background task tails (see [`map_event`]).

use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::process::{Child, Command};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::{
    DirectPath, EventReceiver, MigrationProgress, MigrationSummary, ProgressFn, VmEvent, VmSpec,
    VmState, VmStatus, Vmm, VmmError, VmmKind,
};

pub mod api;
pub mod cmdline;
#[cfg(any(test, feature = "test-utils"))]
pub mod fake;

pub use api::ChApi;
pub use cmdline::{ch_argv, vm_config, vm_config_json, ChOptions, PRIMARY_ID, SYNTHETIC_ID};

const VMM: VmmKind = VmmKind::CloudHypervisor;
const POLL: Duration = Duration::from_millis(50);
/// How long the source VMM may take to exit after a completed migration.
const EXIT_AFTER_MIGRATION: Duration = Duration::from_secs(5);

/// One VM under cloud-hypervisor.
#[derive(Debug)]
pub struct ChVm {
    spec: VmSpec,
    opts: ChOptions,
    api: ChApi,
    child: Mutex<Option<Child>>,
    pid: Option<u32>,
    events: broadcast::Sender<VmEvent>,
    tail: Option<JoinHandle<()>>,
    migrated: AtomicBool,
    receiving: Mutex<Option<JoinHandle<Result<(), VmmError>>>>,
}

impl Drop for ChVm {
    fn drop(&mut self) {
        if let Some(t) = self.tail.take() {
            t.abort();
        }
    }
}

impl ChVm {
    /// A VM to be [`start`](Vmm::start)ed with `opts`. Validates the spec.
    pub fn new(spec: VmSpec, opts: ChOptions) -> Result<Self, VmmError> {
        cmdline::validate(&spec)?;
        let api = ChApi::new(
            spec.name.clone(),
            opts.api_socket(&spec.name),
            opts.request_timeout,
        );
        let (events, _) = broadcast::channel(256);
        Ok(ChVm {
            spec,
            opts,
            api,
            child: Mutex::new(None),
            pid: None,
            events,
            tail: None,
            migrated: AtomicBool::new(false),
            receiving: Mutex::new(None),
        })
    }

    /// Attaches to a cloud-hypervisor that already runs the VM (process `pid`, if
    /// known) on `opts`' API socket: checks it answers `vmm.ping` and tails its
    /// event monitor file from its current end.
    pub async fn attach(spec: VmSpec, opts: ChOptions, pid: Option<u32>) -> Result<Self, VmmError> {
        let mut vm = ChVm::new(spec, opts)?;
        vm.pid = pid;
        vm.api.ping().await?;
        vm.start_tail(false).await;
        Ok(vm)
    }

    /// The API client.
    pub fn api(&self) -> &ChApi {
        &self.api
    }

    /// The VMM process id (spawned or attached).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    fn err_start(&self, message: String) -> VmmError {
        VmmError::Start {
            vm: self.spec.name.clone(),
            vmm: VMM,
            message,
        }
    }

    async fn start_tail(&mut self, from_start: bool) {
        if self.tail.is_some() {
            return;
        }
        let path = self.opts.event_file(&self.spec.name);
        let offset = if from_start {
            0
        } else {
            tokio::fs::metadata(&path)
                .await
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let tx = self.events.clone();
        self.tail = Some(tokio::spawn(tail_events(path, offset, tx)));
    }

    /// The exit status of the spawned VMM, if it exited.
    fn child_exited(&self) -> Option<String> {
        let mut guard = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let child = guard.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    fn process_alive(&self) -> bool {
        let spawned = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if spawned {
            return self.child_exited().is_none();
        }
        match self.pid {
            Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
            None => true,
        }
    }

    async fn spawn(&mut self) -> Result<(), VmmError> {
        let argv = ch_argv(&self.spec, &self.opts)?;
        tokio::fs::create_dir_all(&self.opts.run_dir)
            .await
            .map_err(|e| self.err_start(format!("run dir {}: {e}", self.opts.run_dir.display())))?;
        for stale in [
            self.opts.api_socket(&self.spec.name),
            self.opts.event_file(&self.spec.name),
        ] {
            match tokio::fs::remove_file(&stale).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.err_start(format!("{}: {e}", stale.display()))),
            }
        }
        let log_path = self.opts.log_file(&self.spec.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| self.err_start(format!("log {}: {e}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(|e| self.err_start(format!("log {}: {e}", log_path.display())))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                VmmError::Binary {
                    vm: self.spec.name.clone(),
                    message: format!("cloud-hypervisor binary {} not found", argv[0]),
                }
            } else {
                self.err_start(format!("spawning {}: {e}", argv[0]))
            }
        })?;
        self.pid = child.id();
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        self.start_tail(true).await;
        let deadline = Instant::now() + self.opts.start_timeout;
        loop {
            match self.api.ping().await {
                Ok(_) => return Ok(()),
                Err(VmmError::Exited { .. }) => {}
                Err(e) => return Err(e),
            }
            if let Some(status) = self.child_exited() {
                return Err(VmmError::Exited {
                    vm: self.spec.name.clone(),
                    vmm: VMM,
                    message: format!(
                        "exited ({status}) before its API socket answered; see {}",
                        log_path.display()
                    ),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Timeout {
                    vm: self.spec.name.clone(),
                    what: format!(
                        "cloud-hypervisor API socket {}",
                        self.api.socket().display()
                    ),
                    after: self.opts.start_timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn knows_process(&self) -> bool {
        self.pid.is_some()
            || self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }

    /// Whether the VMM is gone: its process exited or, when no process is known
    /// (`spawn: false` without a pid), its API socket no longer answers.
    async fn vmm_gone(&self) -> bool {
        if self.knows_process() {
            !self.process_alive()
        } else {
            matches!(self.api.with_timeout(POLL * 4).ping().await, Err(e) if is_gone(&e))
        }
    }

    async fn wait_exit(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        loop {
            if self.vmm_gone().await {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn kill(&self) {
        let spawned = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if let Some(pid) = self.pid {
            // The spawned VMM leads its own process group: kill the group.
            let target = if spawned {
                format!("-{pid}")
            } else {
                pid.to_string()
            };
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &target])
                .status();
        }
        if let Some(child) = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            let _ = child.start_kill();
        }
    }

    async fn has_primary(&self) -> Result<bool, VmmError> {
        Ok(self
            .api
            .info()
            .await?
            .is_some_and(|i| i.device_ids().iter().any(|d| d == PRIMARY_ID)))
    }

    /// Whether the VM's config has the synthetic NIC (net device [`SYNTHETIC_ID`]).
    async fn has_synthetic(&self) -> Result<bool, VmmError> {
        Ok(self
            .api
            .info()
            .await?
            .is_some_and(|i| i.net_ids().iter().any(|d| d == SYNTHETIC_ID)))
    }

    fn send_event(&self, event: VmEvent) {
        let _ = self.events.send(event);
    }
}

/// Whether an error means the VMM (or its API socket) is gone.
fn is_gone(e: &VmmError) -> bool {
    matches!(e, VmmError::Exited { .. })
}

#[async_trait::async_trait]
impl Vmm for ChVm {
    fn kind(&self) -> VmmKind {
        VMM
    }

    fn spec(&self) -> &VmSpec {
        &self.spec
    }

    async fn start(&mut self) -> Result<(), VmmError> {
        let config = vm_config(&self.spec)?;
        if self.opts.spawn {
            self.spawn().await?;
        } else {
            self.api.ping().await?;
            self.start_tail(false).await;
        }
        if self.spec.incoming {
            return Ok(());
        }
        self.api.create(&config).await?;
        self.api.boot().await?;
        Ok(())
    }

    async fn stop(&mut self, grace: Duration) -> Result<(), VmmError> {
        let deadline = Instant::now() + grace;
        let short = self
            .api
            .with_timeout(grace.min(self.opts.request_timeout).max(POLL));
        // A VM not created or not running answers 404/500: nothing to shut down.
        match short.shutdown().await {
            Ok(()) | Err(VmmError::Command { .. }) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => log::warn!("VM {}: vm.shutdown: {e}", self.spec.name),
        }
        match short.vmm_shutdown().await {
            Ok(()) | Err(VmmError::Command { .. }) => {}
            Err(e) if is_gone(&e) => {}
            // The VMM may exit before it finishes the answer.
            Err(VmmError::Protocol { .. }) => {}
            Err(e) => log::warn!("VM {}: vmm.shutdown: {e}", self.spec.name),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let clean = self.wait_exit(left).await;
        if !clean {
            log::warn!(
                "VM {}: cloud-hypervisor still runs after {:.1} s, killing it",
                self.spec.name,
                grace.as_secs_f64()
            );
            self.kill();
            self.wait_exit(Duration::from_secs(5)).await;
        }
        let status = self.child_exited();
        if let Some(status) = &status {
            self.send_event(VmEvent::Shutdown {
                reason: format!("cloud-hypervisor exited ({status})"),
            });
        }
        Ok(())
    }

    async fn status(&self) -> Result<VmStatus, VmmError> {
        let alive = self.process_alive();
        let pid = if alive { self.pid } else { None };
        let stopped = VmStatus {
            state: if self.migrated.load(Ordering::SeqCst) {
                VmState::Migrated
            } else {
                VmState::Stopped
            },
            pid: None,
            direct_attached: false,
        };
        if !alive {
            return Ok(stopped);
        }
        if self.receiving() {
            // cloud-hypervisor answers no request before the migration is in.
            return Ok(VmStatus {
                state: VmState::Incoming,
                pid,
                direct_attached: false,
            });
        }
        let info = match self.api.info().await {
            Ok(info) => info,
            Err(e) if is_gone(&e) => return Ok(stopped),
            Err(e) => return Err(e),
        };
        let Some(info) = info else {
            let state = if self.migrated.load(Ordering::SeqCst) {
                VmState::Migrated
            } else if self.spec.incoming {
                VmState::Incoming
            } else {
                VmState::Created
            };
            return Ok(VmStatus {
                state,
                pid,
                direct_attached: false,
            });
        };
        let state = match info.state.as_str() {
            "Running" => VmState::Running,
            "Paused" | "BreakPoint" => VmState::Paused,
            "Shutdown" => VmState::Stopped,
            _ => VmState::Created,
        };
        Ok(VmStatus {
            state,
            pid,
            direct_attached: info.device_ids().iter().any(|d| d == PRIMARY_ID),
        })
    }

    /// Checks the VM has its synthetic NIC (`vm.info`'s `config.net` has
    /// [`SYNTHETIC_ID`]; a VM not created has none: [`VmmError::NoNic`]), then
    /// hot-plugs the VF with `vm.add-device`.
    async fn attach_direct(&self, path: &DirectPath) -> Result<(), VmmError> {
        let device = cmdline::direct_device(&self.spec, path)?;
        if !self.has_synthetic().await? {
            return Err(VmmError::NoNic {
                vm: self.spec.name.clone(),
                device: SYNTHETIC_ID.to_string(),
            });
        }
        self.api.add_device(&device).await.map(drop)
    }

    async fn detach_direct(&self, timeout: Duration) -> Result<(), VmmError> {
        if !self.has_primary().await? {
            return Ok(());
        }
        self.api.remove_device(PRIMARY_ID).await?;
        let deadline = Instant::now() + timeout;
        loop {
            if !self.has_primary().await? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Timeout {
                    vm: self.spec.name.clone(),
                    what: format!("the guest to release {PRIMARY_ID} (vm.remove-device)"),
                    after: timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn migrate_out(
        &self,
        uri: &str,
        progress: ProgressFn<'_>,
    ) -> Result<MigrationSummary, VmmError> {
        let started = Instant::now();
        let total = self.spec.memory_mib.saturating_mul(1024 * 1024);
        let report = |status: &str, remaining: u64| {
            progress(&MigrationProgress {
                status: status.to_owned(),
                transferred: 0,
                remaining,
                total,
                elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            })
        };
        let failed = |message: String| VmmError::Migration {
            vm: self.spec.name.clone(),
            status: "failed".into(),
            message,
        };
        let mut events = self.events.subscribe();
        report("active", total);
        let data = api::SendMigrationData {
            destination_url: uri.to_owned(),
            local: Some(uri.starts_with("unix:")),
        };
        let api = self.api.with_timeout(self.opts.migration_timeout);
        match api.send_migration(&data).await {
            Ok(()) => {}
            Err(VmmError::Command { message, .. }) => return Err(failed(message)),
            Err(e) => return Err(e),
        }
        // Recent cloud-hypervisor answers at once and migrates in a worker thread;
        // older ones answer when done. Either way the end is the event
        // `migration-finished` / `migration-failed`, or the source VMM exiting.
        let deadline = started + self.opts.migration_timeout;
        loop {
            while let Ok(ev) = events.try_recv() {
                if let VmEvent::Migration { status } = ev {
                    match status.as_str() {
                        "completed" => return Ok(self.migrated(started, &report).await),
                        "failed" => {
                            report("failed", 0);
                            return Err(failed(
                                "cloud-hypervisor reported migration-failed; the VM keeps \
                                 running on the source"
                                    .into(),
                            ));
                        }
                        _ => {}
                    }
                }
            }
            if !self.process_alive() {
                return Ok(self.migrated(started, &report).await);
            }
            match self.api.info().await {
                Err(e) if is_gone(&e) => return Ok(self.migrated(started, &report).await),
                Ok(None) => return Ok(self.migrated(started, &report).await),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(VmmError::Timeout {
                    vm: self.spec.name.clone(),
                    what: format!("the migration to {uri} to complete"),
                    after: self.opts.migration_timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn receive_migration(&self, uri: &str) -> Result<(), VmmError> {
        let data = api::ReceiveMigrationData {
            receiver_url: uri.to_owned(),
        };
        let mut events = self.events.subscribe();
        let unix_path = uri.strip_prefix("unix:").map(PathBuf::from);
        if let Some(path) = &unix_path {
            // cloud-hypervisor does not bind over a file; a leftover (of a VMM
            // killed while it waited) would also pass for its socket below.
            match tokio::fs::remove_file(path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.err_start(format!("{}: {e}", path.display()))),
            }
        }
        // vm.receive-migration answers only when the migration is received: run it
        // in the background and return once it listens (event
        // `migration-receive-ready`, the unix socket exists) or it ended.
        let api = self.api.with_timeout(self.opts.migration_timeout);
        let mut task = tokio::spawn(async move { api.receive_migration(&data).await });
        let deadline = Instant::now() + self.opts.request_timeout;
        loop {
            if task.is_finished() {
                return match (&mut task).await {
                    Ok(r) => r.map_err(|e| match e {
                        VmmError::Command { message, .. } => VmmError::Migration {
                            vm: self.spec.name.clone(),
                            status: "failed".into(),
                            message,
                        },
                        e => e,
                    }),
                    Err(e) => Err(self.err_start(format!("receive task: {e}"))),
                };
            }
            let mut ready = unix_path.as_deref().is_some_and(Path::exists);
            while let Ok(ev) = events.try_recv() {
                if matches!(&ev, VmEvent::Migration { status } if status == "setup" || status == "active")
                {
                    ready = true;
                }
            }
            if ready {
                *self.receiving.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
                return Ok(());
            }
            if Instant::now() >= deadline {
                *self.receiving.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
                return Err(VmmError::Timeout {
                    vm: self.spec.name.clone(),
                    what: format!("cloud-hypervisor to listen for the migration on {uri}"),
                    after: self.opts.request_timeout,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn cancel_migration(&self) -> Result<(), VmmError> {
        Err(VmmError::Command {
            vm: self.spec.name.clone(),
            vmm: VMM,
            command: "cancel-migration".into(),
            message: "cloud-hypervisor's API (vmm/src/api/openapi/cloud-hypervisor.yaml) has no \
                      endpoint to cancel a migration; only vm.send-migration's timeout_s with \
                      timeout_strategy Cancel aborts one"
                .into(),
        })
    }

    fn events(&self) -> EventReceiver {
        self.events.subscribe()
    }
}

impl ChVm {
    /// Whether this handle's `vm.receive-migration` still waits for the migration.
    fn receiving(&self) -> bool {
        self.receiving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|t| !t.is_finished())
    }

    /// The summary of a completed outgoing migration, once the VMM exited (it
    /// does by itself then; at most [`EXIT_AFTER_MIGRATION`]), so that whoever
    /// looks next finds it gone rather than on its way out.
    async fn migrated(
        &self,
        started: Instant,
        report: &(dyn Fn(&str, u64) + Sync),
    ) -> MigrationSummary {
        self.migrated.store(true, Ordering::SeqCst);
        let total_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if !self.wait_exit(EXIT_AFTER_MIGRATION).await {
            log::warn!(
                "VM {}: cloud-hypervisor still runs {:.0} s after its VM migrated away",
                self.spec.name,
                EXIT_AFTER_MIGRATION.as_secs_f64()
            );
        }
        report("completed", 0);
        MigrationSummary {
            total_ms,
            downtime_ms: None,
            transferred: 0,
        }
    }
}

/// Maps one event monitor record (`{timestamp, source, event, properties}`) to a
/// [`VmEvent`]: `vm/device-removed` → [`VmEvent::DeviceDeleted`] (property `id`);
/// `vm/shutdown`, `vmm/shutdown` → [`VmEvent::Shutdown`]; `vm/booted`,
/// `vm/resumed` → running, `vm/paused` → paused ([`VmEvent::RunState`]);
/// `vm/migration-started` → `active`, `migration-finished` → `completed`,
/// `migration-failed` → `failed`, `migration-receive-ready` → `setup`,
/// `migration-receive-started` → `active`, `migration-receive-finished` →
/// `completed`, `migration-receive-failed` → `failed` ([`VmEvent::Migration`]);
/// anything else → [`VmEvent::Other`] named `<source>/<event>`.
pub fn map_event(record: &Value) -> Option<VmEvent> {
    let source = record.get("source")?.as_str()?;
    let event = record.get("event")?.as_str()?;
    let props = record.get("properties").cloned().unwrap_or(Value::Null);
    let prop = |k: &str| props.get(k).and_then(Value::as_str).map(str::to_owned);
    let migration = |s: &str| {
        Some(VmEvent::Migration {
            status: s.to_owned(),
        })
    };
    match (source, event) {
        ("vm", "device-removed") => Some(VmEvent::DeviceDeleted {
            device: prop("id").unwrap_or_default(),
        }),
        ("vm", "shutdown") => Some(VmEvent::Shutdown {
            reason: "the VM shut down (vm shutdown)".into(),
        }),
        ("vmm", "shutdown") => Some(VmEvent::Shutdown {
            reason: "the VMM shut down (vmm shutdown)".into(),
        }),
        ("vm", "booted" | "resumed") => Some(VmEvent::RunState { running: true }),
        ("vm", "paused") => Some(VmEvent::RunState { running: false }),
        ("vm", "migration-started" | "migration-receive-started") => migration("active"),
        ("vm", "migration-finished" | "migration-receive-finished") => migration("completed"),
        ("vm", "migration-failed" | "migration-receive-failed") => migration("failed"),
        ("vm", "migration-receive-ready") => migration("setup"),
        _ => Some(VmEvent::Other {
            name: format!("{source}/{event}"),
            data: props.to_string(),
        }),
    }
}

/// Tails the event monitor file from `offset`, forever (the task is aborted with
/// its [`ChVm`]).
async fn tail_events(path: PathBuf, mut offset: u64, tx: broadcast::Sender<VmEvent>) {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        tokio::time::sleep(POLL).await;
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            continue;
        };
        let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        if len < offset {
            // Truncated or recreated (a new VMM): start over.
            offset = 0;
            pending.clear();
        }
        if len == offset || file.seek(SeekFrom::Start(offset)).await.is_err() {
            continue;
        }
        let mut buf = Vec::new();
        match file.read_to_end(&mut buf).await {
            Ok(n) => offset += n as u64,
            Err(_) => continue,
        }
        pending.extend_from_slice(&buf);
        let mut stream = serde_json::Deserializer::from_slice(&pending).into_iter::<Value>();
        let mut consumed = 0;
        loop {
            match stream.next() {
                Some(Ok(record)) => {
                    consumed = stream.byte_offset();
                    if let Some(ev) = map_event(&record) {
                        let _ = tx.send(ev);
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    // Garbage: drop what was read so far.
                    consumed = pending.len();
                    break;
                }
                None => {
                    consumed = pending.len();
                    break;
                }
            }
        }
        pending.drain(..consumed);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use serde_json::json;

    use super::fake::FakeChServer;
    use super::*;
    use crate::SyntheticNic;

    const PCI: &str = "0000:3b:02.1";

    /// A fresh run dir per test (removed on drop).
    struct RunDir(PathBuf);

    impl RunDir {
        fn new(test: &str) -> RunDir {
            let dir = std::env::temp_dir().join(format!("ch-unit-{}-{test}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("run dir");
            RunDir(dir)
        }
    }

    impl Drop for RunDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn spec() -> VmSpec {
        VmSpec {
            name: "vm1".into(),
            vcpus: 2,
            memory_mib: 256,
            kernel: Some(PathBuf::from("/boot/vmlinux")),
            initrd: None,
            cmdline: None,
            disks: Vec::new(),
            nic: SyntheticNic {
                mac: "52:54:00:aa:bb:01".into(),
                socket: PathBuf::from("/run/accelnet/vm1.vhost"),
                queue_pairs: 1,
            },
            direct: None,
            console_log: None,
            incoming: false,
        }
    }

    /// A `ChVm` driving the fake API server on its run dir's API socket.
    async fn vm_and_fake(dir: &RunDir) -> (ChVm, FakeChServer) {
        let mut opts = ChOptions::new("/nonexistent/cloud-hypervisor", &dir.0);
        opts.spawn = false;
        opts.request_timeout = Duration::from_secs(2);
        let fake = FakeChServer::start(opts.api_socket("vm1"))
            .await
            .expect("fake API server");
        (ChVm::new(spec(), opts).expect("valid spec"), fake)
    }

    fn vf() -> DirectPath {
        DirectPath::Vf { pci: PCI.into() }
    }

    fn assert_no_nic(r: Result<(), VmmError>) {
        match r {
            Err(VmmError::NoNic { vm, device }) => {
                assert_eq!(vm, "vm1");
                assert_eq!(device, SYNTHETIC_ID);
            }
            other => panic!("want NoNic, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn attach_direct_checks_the_synthetic_nic_then_adds_the_vf() {
        let dir = RunDir::new("attach-ok");
        let (mut vm, fake) = vm_and_fake(&dir).await;
        vm.start().await.expect("create and boot");

        vm.attach_direct(&vf()).await.expect("VF plugged");

        let endpoints = fake.endpoints();
        let tail = &endpoints[endpoints.len() - 2..];
        assert_eq!(tail, ["vm.info", "vm.add-device"], "{endpoints:?}");
        assert_eq!(
            fake.bodies("vm.add-device"),
            vec![json!({"path": format!("/sys/bus/pci/devices/{PCI}/"), "id": PRIMARY_ID})]
        );
        assert!(vm.status().await.expect("status").direct_attached);
    }

    #[tokio::test]
    async fn attach_direct_after_the_synthetic_nic_was_removed_is_no_nic() {
        let dir = RunDir::new("attach-removed");
        let (mut vm, fake) = vm_and_fake(&dir).await;
        vm.start().await.expect("create and boot");
        vm.api()
            .remove_device(SYNTHETIC_ID)
            .await
            .expect("NIC removed");

        assert_no_nic(vm.attach_direct(&vf()).await);

        assert!(fake.bodies("vm.add-device").is_empty(), "no VF was added");
        let config = fake.config().expect("the VM stays created");
        assert!(config["devices"].as_array().is_none_or(Vec::is_empty));
    }

    #[tokio::test]
    async fn attach_direct_on_a_vm_created_without_net_is_no_nic() {
        let dir = RunDir::new("attach-no-net");
        let (vm, fake) = vm_and_fake(&dir).await;
        // A VM created outside accelnet: no net device at all, or another id.
        vm.api()
            .create_json(&json!({
                "payload": {"kernel": "/boot/vmlinux"},
                "memory": {"size": 268_435_456, "shared": true},
                "net": [{"mac": "52:54:00:aa:bb:01", "id": "_net0"}],
            }))
            .await
            .expect("created");
        vm.api().boot().await.expect("booted");

        assert_no_nic(vm.attach_direct(&vf()).await);
        assert!(fake.bodies("vm.add-device").is_empty(), "no VF was added");
    }

    #[tokio::test]
    async fn attach_direct_on_a_vm_not_created_is_no_nic() {
        let dir = RunDir::new("attach-not-created");
        let (vm, fake) = vm_and_fake(&dir).await;

        assert_no_nic(vm.attach_direct(&vf()).await);
        assert_eq!(fake.endpoints(), ["vm.info"]);
    }

    #[tokio::test]
    async fn attach_direct_when_the_vmm_is_gone_is_exited() {
        let dir = RunDir::new("attach-gone");
        let (vm, fake) = vm_and_fake(&dir).await;
        drop(fake);

        match vm.attach_direct(&vf()).await {
            Err(VmmError::Exited { vm, .. }) => assert_eq!(vm, "vm1"),
            other => panic!("want Exited, got {other:?}"),
        }
    }
}
