//! Live migration of one VM with a direct path (an SR-IOV VF, or the lab's stand-in)
//! from a source host to a destination host, as a sequence of steps over traits.
//!
//! The crate does no I/O: every action goes through [`VmmOps`], [`VfOps`] and
//! [`SwitchOps`], implemented once per host (the source's by the local drivers, the
//! destination's by a client of the destination's node agent), and time only
//! through a [`Clock`]. [`LiveMigration::run`] drives the steps, reports
//! [`Event`]s as it goes and returns a [`MigrationReport`], or a [`MigrationError`]
//! after rolling back.
//!
//! # Steps
//!
//! 1. **Admit** (destination): reserve a direct path ([`VfOps::reserve`]: a VF
//!    that fits the VM's tier, or the lab's stand-in), create the switch port with
//!    the VM's MAC ([`SwitchOps::prepare_port`]), start the VMM waiting for the
//!    migration ([`VmmOps::start_incoming`]).
//! 2. **Steer** (source): the switch holds the VM port's receive direction
//!    ([`SwitchOps::hold`]; a switch that cannot hold is a warning), and the
//!    embedded switch sends the VM's MAC to the PF, i.e. the switch
//!    ([`VfOps::route`] with [`Route::Synthetic`]: the host side of the VF is made
//!    safe, MAC zeroed / link down). From now on the synthetic path owns the MAC and
//!    no frame is sent into the VF the guest is about to lose.
//! 3. **Unplug** (source): [`VmmOps::unplug_direct`] returns once the guest
//!    released the VF (`DEVICE_DELETED`), or fails after the timeout; then the hold
//!    is released and the held frames reach the guest on the standby.
//! 4. **Migrate**: [`VmmOps::migrate`] on the source towards the destination's
//!    [`IncomingEndpoint`], with progress, cancellable through a [`CancelToken`];
//!    then [`VmmOps::confirm_running`] on the destination. This is the
//!    switch-over: before it the VM can go back to the source, after it not.
//! 5. **Announce** (destination): [`SwitchOps::announce`] (RARP / GUEST_ANNOUNCE on
//!    the destination's uplinks) so the wire learns where the MAC is now.
//! 6. **Plug** (destination): hold, MAC to both paths ([`Route::Both`]), plug the
//!    reserved direct path, wait (up to the settle time) for evidence that the guest
//!    sends over it ([`VfOps::wait_guest_traffic`]), then pin the MAC to it
//!    ([`Route::Direct`]) and release the hold. Where the guest sent over the
//!    synthetic path instead ([`GuestUse::SyntheticOnly`]), the direct path is
//!    unplugged again and released: the VM stays on the synthetic path at the
//!    destination (a warning, not a rollback). An idle guest, nothing over either
//!    path ([`GuestUse::Silent`]), keeps the direct path, unverified (a warning).
//! 7. **Release** (source): stop the source VMM, release the source VF, remove the
//!    source switch port. Failures are warnings.
//!
//! A VM without a direct path at the source skips Steer and Unplug; a plan without a
//! direct path at the destination skips the reservation and Plug.
//!
//! # Rollback
//!
//! Any failure before the switch-over is rolled back so that the VM runs on exactly
//! one host with network; failures after it are warnings (the source VM is gone).
//! The destination is always torn down in the order VMM stopped, direct path
//! released, switch port removed.
//!
//! | step failed | what is undone | where the VM ends up |
//! |---|---|---|
//! | admit (no free VF, switch not running, VMM does not start) | what admit did at the destination | source, path unchanged |
//! | steer | MAC back to the source VF, hold released, destination torn down | source, direct |
//! | unplug (guest never acknowledges, VMM error) | VF still plugged: MAC back to it; VF gone: re-plugged (as in Plug); hold released; destination torn down | source, direct (synthetic if the re-plug fails) |
//! | migrate (fails, cancelled, destination VMM dies) | destination torn down, source direct path re-plugged | source, direct (synthetic if the re-plug fails) |
//! | migrate, destination not running after completion | destination torn down, source VM resumed, direct path re-plugged | source (nowhere if the source cannot resume) |
//! | cancelled before migrate | as for the step that was next | source |
//! | announce | nothing (warning) | destination |
//! | plug (fails, or guest never uses the primary) | destination direct path unplugged and released (warning) | destination, synthetic |
//! | release | nothing (warning) | destination |
//!
//! # Concurrency
//!
//! A VM is migrated by one orchestrator at a time: the caller takes an
//! [`InFlightGuard`] from an [`InFlight`] registry (and may attach its
//! cross-process lock, e.g. a file lock, with [`InFlightGuard::keep`]); `run`
//! refuses a guard for another VM. The host-reserved failover monitor
//! ([`crate::failover`]) is suspended while the guard is held.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------
// Vocabulary
// ---------------------------------------------------------------------------

/// The steps of a live migration, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Destination: direct path reserved, switch port created, VMM started incoming.
    Admit,
    /// Source: the synthetic path owns the MAC, the VF's host side is made safe.
    Steer,
    /// Source: the direct path is unplugged and the guest released it.
    Unplug,
    /// The VM's state moves; ends with the destination VM running.
    Migrate,
    /// Destination: the wire learns the MAC's new place.
    Announce,
    /// Destination: the direct path is plugged and the guest uses it.
    Plug,
    /// Source: VMM stopped, VF and switch port released.
    Release,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 7] = [
        Step::Admit,
        Step::Steer,
        Step::Unplug,
        Step::Migrate,
        Step::Announce,
        Step::Plug,
        Step::Release,
    ];

    /// `admit`, `steer`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            Step::Admit => "admit",
            Step::Steer => "steer",
            Step::Unplug => "unplug",
            Step::Migrate => "migrate",
            Step::Announce => "announce",
            Step::Plug => "plug",
            Step::Release => "release",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of failure an operation reports; the orchestrator only uses it to word
/// its messages, the operation's text is passed through unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpErrorKind {
    /// The operation failed.
    Failed,
    /// A resource is missing: no free VF, switch not running, tier does not fit.
    Unavailable,
    /// Something awaited did not happen in time (e.g. the guest's unplug ack).
    Timeout,
    /// The process or host on the other end is gone (VMM died, agent unreachable).
    Gone,
    /// The operation was cancelled.
    Cancelled,
}

/// Why an operation of [`VmmOps`], [`VfOps`] or [`SwitchOps`] failed: a kind and
/// the full human-readable reason (pass the driver's error chain, e.g. a seed
/// error's text with its id, as the message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    /// The kind.
    pub kind: OpErrorKind,
    /// The reason, as the driver words it.
    pub message: String,
}

impl OpError {
    /// An error of `kind`.
    pub fn new(kind: OpErrorKind, message: impl Into<String>) -> OpError {
        OpError {
            kind,
            message: message.into(),
        }
    }

    /// [`OpErrorKind::Failed`].
    pub fn failed(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::Failed, message)
    }

    /// [`OpErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::Unavailable, message)
    }

    /// [`OpErrorKind::Timeout`].
    pub fn timeout(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::Timeout, message)
    }

    /// [`OpErrorKind::Gone`].
    pub fn gone(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::Gone, message)
    }

    /// [`OpErrorKind::Cancelled`].
    pub fn cancelled(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::Cancelled, message)
    }

    /// An error of `kind` whose message is `err` and its sources, joined by `: `.
    pub fn from_error(kind: OpErrorKind, err: &(dyn std::error::Error + 'static)) -> OpError {
        let mut message = err.to_string();
        let mut source = err.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        OpError::new(kind, message)
    }
}

/// Where a host's embedded switch (the NIC's, or the lab bridge) sends the VM's MAC;
/// mirrors `sriov::steer::Route`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// To the VF: the direct path carries the VM.
    Direct,
    /// To the PF, i.e. the accelnet switch: the synthetic path carries the VM; the
    /// host side of the VF is safe (MAC zeroed / link down).
    Synthetic,
    /// To both, during a path change, where the embedded switch can.
    Both,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Direct => "direct",
            Route::Synthetic => "synthetic",
            Route::Both => "both",
        })
    }
}

/// What the host saw of the guest while it waited for it on a just-plugged
/// direct path ([`VfOps::wait_guest_traffic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuestUse {
    /// A frame of the guest's own over the direct path: it uses it.
    Direct,
    /// Frames over the synthetic path only: the guest is up but does not use the
    /// primary (`net_failover` sends over the primary whenever its link is up).
    SyntheticOnly,
    /// Nothing over either path: an idle guest, which gives no evidence either
    /// way; it is left on the direct path, as `vm enable` does.
    Silent,
}

/// Which of its two paths carries a VM's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// The VF (or stand-in).
    Direct,
    /// The virtio-net device on the accelnet switch.
    Synthetic,
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathKind::Direct => "direct",
            PathKind::Synthetic => "synthetic",
        })
    }
}

/// Where the VM runs after [`LiveMigration::run`], and on which path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "runs_on", rename_all = "kebab-case")]
pub enum FinalState {
    /// On the source host.
    Source {
        /// The host's name.
        host: String,
        /// The path carrying its traffic.
        path: PathKind,
    },
    /// On the destination host.
    Destination {
        /// The host's name.
        host: String,
        /// The path carrying its traffic.
        path: PathKind,
    },
    /// Neither VM is known to run (the destination died after the switch-over and
    /// the source could not be resumed).
    Unknown {
        /// What was seen.
        detail: String,
    },
}

impl FinalState {
    /// The path, when the VM runs somewhere.
    pub fn path(&self) -> Option<PathKind> {
        match self {
            FinalState::Source { path, .. } | FinalState::Destination { path, .. } => Some(*path),
            FinalState::Unknown { .. } => None,
        }
    }

    /// Whether the VM runs on the destination.
    pub fn on_destination(&self) -> bool {
        matches!(self, FinalState::Destination { .. })
    }
}

impl fmt::Display for FinalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FinalState::Source { host, path } => {
                write!(
                    f,
                    "the VM runs on the source host {host} on the {path} path"
                )
            }
            FinalState::Destination { host, path } => {
                write!(
                    f,
                    "the VM runs on the destination host {host} on the {path} path"
                )
            }
            FinalState::Unknown { detail } => {
                write!(f, "the VM is not known to run anywhere: {detail}")
            }
        }
    }
}

/// The VM's network identity, handed to every operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNet {
    /// VM name (unique in the cluster).
    pub name: String,
    /// The MAC shared by both paths, `xx:xx:xx:xx:xx:xx`.
    pub mac: String,
    /// Queue pairs of the synthetic NIC.
    pub queue_pairs: u16,
    /// The performance tier the destination's direct path must fit (the
    /// integrator's spelling, e.g. `low`), if any.
    pub tier: Option<String>,
}

/// A direct path on one host, as the host's [`VfOps`] describe it to its
/// [`VmmOps`]: opaque to the orchestrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectGrant {
    /// What the host's ops need to find it (e.g. `vf:0000:3b:02.1`,
    /// `standin:tap-b-vm1:e1000e`).
    pub id: String,
    /// For humans (e.g. `VF 0000:3b:02.1 (vfio-pci)`).
    pub label: String,
}

/// Where the destination VMM listens for the migration (e.g. `tcp:10.0.0.2:4444`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingEndpoint {
    /// The URI the source VMM migrates to.
    pub uri: String,
}

/// Migration progress as the source VMM reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// The VMM's status word (QEMU: `setup`, `active`, `device`, `completed`...).
    pub status: String,
    /// RAM bytes transferred so far.
    pub transferred: u64,
    /// RAM bytes still to send.
    pub remaining: u64,
    /// Total guest RAM bytes.
    pub total: u64,
    /// Dirty rate, bytes per second, when known.
    pub dirty_rate: Option<u64>,
    /// Time since the migration started, in milliseconds.
    pub elapsed_ms: u64,
}

/// The end of a migration as the source VMM reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStats {
    /// Total migration time, in milliseconds.
    pub total_ms: u64,
    /// Guest downtime at the switch-over, in milliseconds, when reported.
    pub downtime_ms: Option<u64>,
    /// RAM bytes transferred.
    pub transferred: u64,
}

/// Progress callback of [`VmmOps::migrate`].
pub type ProgressFn<'a> = &'a (dyn Fn(&MigrationProgress) + Send + Sync);

/// Event callback of [`LiveMigration`].
pub type EventFn<'a> = &'a (dyn Fn(&Event) + Send + Sync);

// ---------------------------------------------------------------------------
// The traits
// ---------------------------------------------------------------------------

/// The VMM of one VM on one host (QMP to QEMU, the cloud-hypervisor API, or the
/// destination node agent relaying to them).
#[async_trait::async_trait]
pub trait VmmOps: Send + Sync {
    /// Destination: starts the VMM for `vm` paused, waiting for the migration,
    /// without a direct path, and returns where the source migrates to.
    async fn start_incoming(&self, vm: &VmNet) -> Result<IncomingEndpoint, OpError>;

    /// Hot-unplugs the direct path and returns once the guest released it (QEMU
    /// `DEVICE_DELETED`); an [`OpErrorKind::Timeout`] error after `timeout`.
    async fn unplug_direct(&self, vm: &VmNet, timeout: Duration) -> Result<(), OpError>;

    /// Whether the direct path is plugged, as the VMM sees it (used after a failed
    /// unplug to decide between re-steering and re-plugging).
    async fn direct_attached(&self, vm: &VmNet) -> Result<bool, OpError>;

    /// Hot-plugs `direct` as the failover primary of the VM's synthetic NIC.
    async fn plug_direct(&self, vm: &VmNet, direct: &DirectGrant) -> Result<(), OpError>;

    /// Source: migrates the VM to `to` with dirty logging, calling `progress` as it
    /// advances; returns once the migration completed (the source VM is paused),
    /// an error when it failed or was cancelled ([`OpErrorKind::Cancelled`]).
    async fn migrate(
        &self,
        vm: &VmNet,
        to: &IncomingEndpoint,
        progress: ProgressFn<'_>,
    ) -> Result<MigrationStats, OpError>;

    /// Source: cancels the running outgoing migration; `migrate` then returns.
    async fn cancel_migration(&self, vm: &VmNet) -> Result<(), OpError>;

    /// Destination, after `migrate` returned: the VM runs here (an error when the
    /// VMM died or did not resume).
    async fn confirm_running(&self, vm: &VmNet) -> Result<(), OpError>;

    /// Source: resumes the VM after a completed migration whose destination does
    /// not run (QEMU `cont` from `postmigrate`).
    async fn resume(&self, vm: &VmNet) -> Result<(), OpError>;

    /// Stops the VMM (the migrated-away source, or a destination being torn
    /// down). Stopping a stopped or dead VMM is not an error.
    async fn stop(&self, vm: &VmNet) -> Result<(), OpError>;
}

/// One host's direct paths: the VF pool (or the lab's stand-ins) and the embedded
/// switch steering the VM's MAC.
#[async_trait::async_trait]
pub trait VfOps: Send + Sync {
    /// Destination: takes a direct path for `vm` that fits its tier, its host side
    /// safe (not routed the VM's MAC yet). Pass the pool's reason through
    /// ([`OpErrorKind::Unavailable`] for "no free VF").
    async fn reserve(&self, vm: &VmNet) -> Result<DirectGrant, OpError>;

    /// Steers the VM's MAC in the embedded switch. [`Route::Synthetic`] also makes
    /// the host side of the VF safe (MAC zeroed / link down).
    async fn route(&self, vm: &VmNet, route: Route) -> Result<(), OpError>;

    /// Waits up to `settle` for evidence that the guest sends over the direct path
    /// (a frame of its own on it); without it, says whether the guest sent over
    /// the synthetic path meanwhile.
    async fn wait_guest_traffic(&self, vm: &VmNet, settle: Duration) -> Result<GuestUse, OpError>;

    /// Gives the VM's direct path back to the pool (reset, MAC cleared).
    async fn release(&self, vm: &VmNet) -> Result<(), OpError>;
}

/// One host's accelnet switch (its control socket, or the node agent relaying).
#[async_trait::async_trait]
pub trait SwitchOps: Send + Sync {
    /// Destination: creates the VM's port with its MAC (an
    /// [`OpErrorKind::Unavailable`] error when the switch does not run).
    async fn prepare_port(&self, vm: &VmNet) -> Result<(), OpError>;

    /// Holds the receive direction of the VM's port during a path change (frames
    /// for the VM are kept, not handed to a standby the guest ignores).
    async fn hold(&self, vm: &VmNet) -> Result<(), OpError>;

    /// Ends the hold, delivering the held frames in order onto the path that now
    /// carries the VM (the direct path: out of the uplink, so the embedded switch
    /// hands them to the VF); returns how many.
    async fn release_hold(&self, vm: &VmNet, onto: PathKind) -> Result<u64, OpError>;

    /// Announces the VM's MAC on the uplinks (RARP / GUEST_ANNOUNCE).
    async fn announce(&self, vm: &VmNet) -> Result<(), OpError>;

    /// Removes the VM's port.
    async fn remove_port(&self, vm: &VmNet) -> Result<(), OpError>;

    /// Source: arms the VM's port to hold the frames for it from the moment its
    /// VMM stops it at the switch-over (they would be dropped there), for at most
    /// `max`. Ended by [`SwitchOps::take_held`] or [`SwitchOps::release_hold`].
    async fn hold_on_stop(&self, vm: &VmNet, max: Duration) -> Result<(), OpError>;

    /// Source: takes a part of the frames held for the VM out, oldest first; the
    /// hold ends once nothing is left.
    async fn take_held(&self, vm: &VmNet) -> Result<HeldPart, OpError>;

    /// Destination: delivers frames the source held for the VM to it, in order;
    /// returns how many were queued.
    async fn inject(&self, vm: &VmNet, frames: &[CarriedFrame]) -> Result<u64, OpError>;
}

/// A frame a switch held for the VM, carried to the destination's switch. The
/// orchestrator does not look inside: the switches' own encoding (hex bytes, and
/// the virtio-net header of an offload still to do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedFrame {
    /// The frame.
    pub frame: String,
    /// Its pending offload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnet: Option<String>,
}

/// A part of the frames a switch held, as [`SwitchOps::take_held`] takes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPart {
    /// The frames, oldest first.
    pub frames: Vec<CarriedFrame>,
    /// More are held.
    pub more: bool,
}

/// Most parts [`SwitchOps::take_held`] is asked for in one migration (a switch
/// holds at most 16 MiB; a part is up to 256 KiB).
const MAX_HELD_PARTS: usize = 128;
/// How long the source's armed hold may last once the switch-over started it.
const SWITCHOVER_HOLD: Duration = Duration::from_secs(30);

/// One host as the orchestrator sees it.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    /// Its name, for messages and the report.
    pub name: &'a str,
    /// The VM's VMM there.
    pub vmm: &'a dyn VmmOps,
    /// Its direct paths.
    pub vf: &'a dyn VfOps,
    /// Its switch.
    pub switch: &'a dyn SwitchOps,
}

impl fmt::Debug for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host").field("name", &self.name).finish()
    }
}

/// Monotonic time, so tests can make time deterministic.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Instant;
}

/// [`Instant::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Cancels a running [`LiveMigration`] from elsewhere (Ctrl-C, `accelnet vm
/// migrate --cancel` through the node agent). Cheap to clone; all clones share one
/// flag. Honoured before the switch-over only.
#[derive(Debug, Clone)]
pub struct CancelToken {
    tx: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for CancelToken {
    fn default() -> Self {
        CancelToken::new()
    }
}

impl CancelToken {
    /// A token not cancelled.
    pub fn new() -> CancelToken {
        CancelToken {
            tx: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Requests cancellation.
    pub fn cancel(&self) {
        self.tx.send_replace(true);
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        *self.tx.borrow()
    }

    /// Returns once cancellation is requested.
    pub async fn cancelled(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|c| *c).await;
    }
}

// ---------------------------------------------------------------------------
// In-flight registry
// ---------------------------------------------------------------------------

/// Which VMs have a planned operation (migration, drill, drain) running in this
/// process. Clones share the registry.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    vms: Arc<Mutex<HashMap<String, String>>>,
}

/// [`InFlight::begin`] refused: the VM is busy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("VM {vm} is busy: a {operation} is in progress; wait for it to finish or cancel it")]
pub struct AlreadyInFlight {
    /// The VM.
    pub vm: String,
    /// What runs (`migration`, `drill`...).
    pub operation: String,
}

impl InFlight {
    /// An empty registry.
    pub fn new() -> InFlight {
        InFlight::default()
    }

    /// Marks `vm` busy with `operation` until the guard is dropped, or says what
    /// runs already.
    pub fn begin(&self, vm: &str, operation: &str) -> Result<InFlightGuard, AlreadyInFlight> {
        let mut vms = self.vms.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = vms.get(vm) {
            return Err(AlreadyInFlight {
                vm: vm.to_string(),
                operation: running.clone(),
            });
        }
        vms.insert(vm.to_string(), operation.to_string());
        Ok(InFlightGuard {
            registry: self.clone(),
            vm: vm.to_string(),
            operation: operation.to_string(),
            kept: Vec::new(),
        })
    }

    /// What runs on `vm`, if anything.
    pub fn current(&self, vm: &str) -> Option<String> {
        self.vms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(vm)
            .cloned()
    }

    /// The busy VMs and their operations, sorted by VM.
    pub fn list(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .vms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        v.sort();
        v
    }
}

/// Proof that this caller owns a VM for a planned operation; dropping it frees the
/// VM (and drops what was [`keep`](InFlightGuard::keep)-ed, e.g. a file lock).
pub struct InFlightGuard {
    registry: InFlight,
    vm: String,
    operation: String,
    kept: Vec<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for InFlightGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InFlightGuard")
            .field("vm", &self.vm)
            .field("operation", &self.operation)
            .field("kept", &self.kept.len())
            .finish()
    }
}

impl InFlightGuard {
    /// The VM owned.
    pub fn vm(&self) -> &str {
        &self.vm
    }

    /// The operation.
    pub fn operation(&self) -> &str {
        &self.operation
    }

    /// Keeps `lock` (e.g. the cross-process file lock of the VM) alive as long as
    /// the guard.
    pub fn keep<T: Send + Sync + 'static>(&mut self, lock: T) {
        self.kept.push(Box::new(lock));
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.registry
            .vms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.vm);
    }
}

// ---------------------------------------------------------------------------
// Plan, options, events, report, error
// ---------------------------------------------------------------------------

/// What to migrate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationPlan {
    /// The VM.
    pub vm: VmNet,
    /// The VM's direct path at the source, when it has one plugged (re-plugged on
    /// a rollback). `None`: the VM runs on the synthetic path; Steer and Unplug are
    /// skipped.
    pub source_direct: Option<DirectGrant>,
    /// Whether to reserve and plug a direct path at the destination.
    pub destination_direct: bool,
}

/// Timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationOptions {
    /// How long the guest may take to release an unplugged direct path.
    pub unplug_timeout: Duration,
    /// How long to wait for the guest to send over a plugged direct path.
    pub settle: Duration,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        MigrationOptions {
            unplug_timeout: Duration::from_secs(20),
            settle: Duration::from_secs(10),
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepOutcome {
    /// Done.
    Done,
    /// Not needed (no direct path on that side).
    Skipped,
    /// Done with a warning (see the report's warnings).
    Warning,
    /// Failed: rolled back.
    Failed,
}

/// What [`LiveMigration`] reports as it goes, for a progress display.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A step started.
    StepStarted {
        /// The step.
        step: Step,
    },
    /// A step ended.
    StepFinished {
        /// The step.
        step: Step,
        /// How.
        outcome: StepOutcome,
        /// How long it took.
        duration: Duration,
    },
    /// The source VMM reported migration progress.
    Progress(MigrationProgress),
    /// Something went wrong that does not stop the migration.
    Warning(String),
    /// Cancellation was requested during the migrate step.
    CancelRequested,
    /// A step failed; rolling back.
    RollingBack {
        /// The step that failed.
        step: Step,
    },
}

/// One step in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step.
    pub step: Step,
    /// How it ended.
    pub outcome: StepOutcome,
    /// Start, in milliseconds from the start of the migration.
    pub start_ms: u64,
    /// Duration, in milliseconds.
    pub duration_ms: u64,
}

/// A completed migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// The VM.
    pub vm: String,
    /// The source host.
    pub source: String,
    /// The destination host.
    pub destination: String,
    /// The steps, in order.
    pub steps: Vec<StepRecord>,
    /// Guest downtime at the switch-over, as the VMM reports it.
    pub downtime_ms: Option<u64>,
    /// Duration of the VMM's migration, as it reports it.
    pub migration_ms: u64,
    /// RAM bytes transferred, as the VMM reports it.
    pub transferred_bytes: u64,
    /// The last progress reported.
    pub last_progress: Option<MigrationProgress>,
    /// Duration of the whole operation, in milliseconds.
    pub total_ms: u64,
    /// Frames the source's switch held for the VM from the switch-over until the
    /// destination announced it, delivered at the destination.
    #[serde(default)]
    pub forwarded_frames: u64,
    /// What went wrong without stopping the migration.
    pub warnings: Vec<String>,
    /// Where the VM runs now.
    pub final_state: FinalState,
}

/// A migration that failed and was rolled back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationError {
    /// The VM.
    pub vm: String,
    /// The step that failed.
    pub step: Step,
    /// Why.
    pub cause: OpError,
    /// What the rollback undid, in order.
    pub rolled_back: Vec<String>,
    /// Undo actions that failed themselves.
    pub rollback_errors: Vec<String>,
    /// Warnings before the failure.
    pub warnings: Vec<String>,
    /// The steps run, the failed one last.
    pub steps: Vec<StepRecord>,
    /// Where the VM runs now.
    pub final_state: FinalState,
}

impl fmt::Display for MigrationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "migration of VM {} failed at the {} step: {}",
            self.vm, self.step, self.cause
        )?;
        if self.rolled_back.is_empty() {
            f.write_str("; nothing to roll back")?;
        } else {
            write!(f, "; rolled back: {}", self.rolled_back.join(", "))?;
        }
        if !self.rollback_errors.is_empty() {
            write!(f, "; rollback errors: {}", self.rollback_errors.join("; "))?;
        }
        write!(f, "; {}", self.final_state)
    }
}

impl std::error::Error for MigrationError {}

// ---------------------------------------------------------------------------
// The orchestrator
// ---------------------------------------------------------------------------

/// One live migration, ready to [`run`](LiveMigration::run).
pub struct LiveMigration<'a> {
    /// What to migrate.
    pub plan: &'a MigrationPlan,
    /// Timeouts.
    pub options: MigrationOptions,
    /// The source host.
    pub source: Host<'a>,
    /// The destination host.
    pub destination: Host<'a>,
    /// Time.
    pub clock: &'a dyn Clock,
    /// Receives [`Event`]s.
    pub events: EventFn<'a>,
    /// Cancels the migration (before the switch-over).
    pub cancel: CancelToken,
}

impl fmt::Debug for LiveMigration<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiveMigration")
            .field("plan", &self.plan)
            .field("options", &self.options)
            .field("source", &self.source)
            .field("destination", &self.destination)
            .field("cancel", &self.cancel)
            .finish_non_exhaustive()
    }
}

/// How a plug attempt ended.
enum Plugged {
    /// The guest uses the direct path.
    Direct,
    /// The direct path is plugged but the guest was not seen using it; the MAC
    /// follows it anyway (an idle guest, or it could not be unplugged again).
    DirectUnverified(String),
    /// The VM is on the synthetic path (the direct path is not plugged).
    Synthetic(String),
}

/// What has been done, for the rollback.
#[derive(Default)]
struct Done {
    dest_vf: Option<DirectGrant>,
    dest_port: bool,
    dest_vmm: bool,
    endpoint: Option<IncomingEndpoint>,
    src_held: bool,
    steered: bool,
    /// `Some(true)`: the guest released the source direct path; `None`: unknown
    /// (the unplug failed).
    src_unplugged: Option<bool>,
    src_needs_resume: bool,
    forwarded: u64,
    stats: Option<MigrationStats>,
    last_progress: Option<MigrationProgress>,
}

struct Run<'m, 'a> {
    m: &'m LiveMigration<'a>,
    t0: Instant,
    steps: Vec<StepRecord>,
    warnings: Vec<String>,
    done: Done,
}

impl<'a> LiveMigration<'a> {
    /// A migration with default options, the system clock, no event receiver and a
    /// fresh cancel token.
    pub fn new(
        plan: &'a MigrationPlan,
        source: Host<'a>,
        destination: Host<'a>,
    ) -> LiveMigration<'a> {
        LiveMigration {
            plan,
            options: MigrationOptions::default(),
            source,
            destination,
            clock: &SystemClock,
            events: &|_| {},
            cancel: CancelToken::new(),
        }
    }

    /// Runs the migration. `guard` proves the caller owns the VM (it must be for
    /// the plan's VM).
    pub async fn run(&self, guard: &InFlightGuard) -> Result<MigrationReport, MigrationError> {
        let mut run = Run {
            m: self,
            t0: self.clock.now(),
            steps: Vec::new(),
            warnings: Vec::new(),
            done: Done::default(),
        };
        if guard.vm() != self.plan.vm.name {
            let cause = OpError::failed(format!(
                "the in-flight guard held is for VM {}, not {}",
                guard.vm(),
                self.plan.vm.name
            ));
            return Err(run.error(Step::Admit, cause, Vec::new(), Vec::new()));
        }
        match run.forward().await {
            Ok(final_state) => Ok(run.report(final_state)),
            Err((step, cause)) => Err(run.rollback(step, cause).await),
        }
    }
}

impl<'m, 'a> Run<'m, 'a> {
    fn ms(&self, d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    fn emit(&self, e: Event) {
        (self.m.events)(&e);
    }

    fn warn(&mut self, w: String) {
        self.emit(Event::Warning(w.clone()));
        self.warnings.push(w);
    }

    fn begin(&self, step: Step) -> Instant {
        self.emit(Event::StepStarted { step });
        self.m.clock.now()
    }

    fn end(&mut self, step: Step, started: Instant, outcome: StepOutcome) {
        let now = self.m.clock.now();
        let duration = now.saturating_duration_since(started);
        self.steps.push(StepRecord {
            step,
            outcome,
            start_ms: self.ms(started.saturating_duration_since(self.t0)),
            duration_ms: self.ms(duration),
        });
        self.emit(Event::StepFinished {
            step,
            outcome,
            duration,
        });
    }

    fn vm(&self) -> &'m VmNet {
        &self.m.plan.vm
    }

    fn src(&self) -> Host<'a> {
        self.m.source
    }

    fn dst(&self) -> Host<'a> {
        self.m.destination
    }

    fn check_cancel(&self, step: Step) -> Result<(), OpError> {
        if self.m.cancel.is_cancelled() {
            Err(OpError::cancelled(format!(
                "cancelled before the {step} step"
            )))
        } else {
            Ok(())
        }
    }

    /// Records the end of a step.
    fn finish(
        &mut self,
        step: Step,
        started: Instant,
        res: Result<StepOutcome, OpError>,
    ) -> Result<(), (Step, OpError)> {
        match res {
            Ok(outcome) => {
                self.end(step, started, outcome);
                Ok(())
            }
            Err(e) => {
                self.end(step, started, StepOutcome::Failed);
                Err((step, e))
            }
        }
    }

    async fn forward(&mut self) -> Result<FinalState, (Step, OpError)> {
        macro_rules! run_step {
            ($step:expr, $f:ident) => {{
                let started = self.begin($step);
                let res = self.$f().await;
                self.finish($step, started, res)?;
            }};
        }
        run_step!(Step::Admit, admit);
        run_step!(Step::Steer, steer);
        run_step!(Step::Unplug, unplug);
        run_step!(Step::Migrate, migrate);
        // Past the switch-over: nothing below fails the migration.
        let started = self.begin(Step::Announce);
        let outcome = match self.dst().switch.announce(self.vm()).await {
            Ok(()) => StepOutcome::Done,
            Err(e) => {
                self.warn(format!(
                    "could not announce the VM's MAC at the destination {}: {e}; the wire learns it from the guest's next frame",
                    self.dst().name
                ));
                StepOutcome::Warning
            }
        };
        let forwarded = self.forward_held().await;
        let outcome = if forwarded == StepOutcome::Warning {
            forwarded
        } else {
            outcome
        };
        self.end(Step::Announce, started, outcome);

        let started = self.begin(Step::Plug);
        let (outcome, path) = self.plug_destination().await;
        self.end(Step::Plug, started, outcome);

        let started = self.begin(Step::Release);
        let outcome = self.release_source().await;
        self.end(Step::Release, started, outcome);

        Ok(FinalState::Destination {
            host: self.dst().name.to_string(),
            path,
        })
    }

    async fn admit(&mut self) -> Result<StepOutcome, OpError> {
        self.check_cancel(Step::Admit)?;
        let (d, vm) = (self.dst(), self.vm());
        if self.m.plan.destination_direct {
            let grant = d.vf.reserve(vm).await.map_err(|e| {
                OpError::new(
                    e.kind,
                    format!("no direct path at the destination {}: {e}", d.name),
                )
            })?;
            self.done.dest_vf = Some(grant);
        }
        d.switch.prepare_port(vm).await.map_err(|e| {
            OpError::new(
                e.kind,
                format!("the switch at the destination {}: {e}", d.name),
            )
        })?;
        self.done.dest_port = true;
        // A VMM that fails to start may have left a process behind: stop it too.
        self.done.dest_vmm = true;
        let ep = d.vmm.start_incoming(vm).await.map_err(|e| {
            OpError::new(
                e.kind,
                format!(
                    "the VMM at the destination {} did not start for the migration: {e}",
                    d.name
                ),
            )
        })?;
        self.done.endpoint = Some(ep);
        Ok(StepOutcome::Done)
    }

    async fn steer(&mut self) -> Result<StepOutcome, OpError> {
        if self.m.plan.source_direct.is_none() {
            return Ok(StepOutcome::Skipped);
        }
        self.check_cancel(Step::Steer)?;
        let (s, vm) = (self.src(), self.vm());
        let mut outcome = StepOutcome::Done;
        match s.switch.hold(vm).await {
            Ok(()) => self.done.src_held = true,
            Err(e) => {
                self.warn(format!(
                    "the switch at the source {} cannot hold the VM's frames during the unplug: {e}",
                    s.name
                ));
                outcome = StepOutcome::Warning;
            }
        }
        // A route that failed half-way is undone like a complete one.
        self.done.steered = true;
        s.vf.route(vm, Route::Synthetic).await.map_err(|e| {
            OpError::new(
                e.kind,
                format!(
                    "cannot steer the VM's MAC to the synthetic path at the source {}: {e}",
                    s.name
                ),
            )
        })?;
        Ok(outcome)
    }

    async fn unplug(&mut self) -> Result<StepOutcome, OpError> {
        if self.m.plan.source_direct.is_none() {
            return Ok(StepOutcome::Skipped);
        }
        self.check_cancel(Step::Unplug)?;
        let (s, vm) = (self.src(), self.vm());
        if let Err(e) = s.vmm.unplug_direct(vm, self.m.options.unplug_timeout).await {
            self.done.src_unplugged = None;
            return Err(OpError::new(
                e.kind,
                format!(
                    "the guest did not release its direct path at the source {}: {e}",
                    s.name
                ),
            ));
        }
        self.done.src_unplugged = Some(true);
        let mut outcome = StepOutcome::Done;
        if self.done.src_held {
            self.done.src_held = false;
            if let Err(e) = s.switch.release_hold(vm, PathKind::Synthetic).await {
                self.warn(format!(
                    "the switch at the source {} did not release its hold: {e}",
                    s.name
                ));
                outcome = StepOutcome::Warning;
            }
        }
        Ok(outcome)
    }

    async fn migrate(&mut self) -> Result<StepOutcome, OpError> {
        self.check_cancel(Step::Migrate)?;
        let (s, d, vm) = (self.src(), self.dst(), self.vm());
        let Some(ep) = self.done.endpoint.clone() else {
            return Err(OpError::failed(
                "no incoming endpoint at the destination (admit did not finish)",
            ));
        };
        let last: Mutex<Option<MigrationProgress>> = Mutex::new(None);
        let events = self.m.events;
        let progress = |p: &MigrationProgress| {
            *last.lock().unwrap_or_else(PoisonError::into_inner) = Some(p.clone());
            events(&Event::Progress(p.clone()));
        };
        let mut cancel_note = None;
        // Frames reaching the source between its VMM stopping the VM and the
        // destination's announce are kept and delivered at the destination.
        match s.switch.hold_on_stop(vm, SWITCHOVER_HOLD).await {
            Ok(()) => self.done.src_held = true,
            Err(e) => self.warn(format!(
                "could not arm the source switch's hold for the switch-over on {}: {e}; frames reaching it meanwhile are lost",
                s.name
            )),
        }
        let res = {
            let fut = s.vmm.migrate(vm, &ep, &progress);
            tokio::pin!(fut);
            tokio::select! {
                biased;
                r = &mut fut => r,
                () = self.m.cancel.cancelled() => {
                    events(&Event::CancelRequested);
                    if let Err(e) = s.vmm.cancel_migration(vm).await {
                        cancel_note = Some(format!("the source VMM refused the cancel: {e}"));
                    }
                    fut.await
                }
            }
        };
        self.done.last_progress = last.into_inner().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = cancel_note {
            self.warn(n);
        }
        let stats = res.map_err(|e| {
            let what = if e.kind == OpErrorKind::Cancelled {
                "the migration was cancelled"
            } else {
                "the migration failed"
            };
            OpError::new(e.kind, format!("{what}: {e}"))
        })?;
        let mut outcome = StepOutcome::Done;
        if self.m.cancel.is_cancelled() {
            self.warn("the cancel came too late: the migration had completed".to_string());
            outcome = StepOutcome::Warning;
        }
        if let Err(e) = d.vmm.confirm_running(vm).await {
            self.done.src_needs_resume = true;
            self.done.stats = Some(stats);
            return Err(OpError::new(
                e.kind,
                format!(
                    "the migration completed but the VM does not run at the destination {}: {e}",
                    d.name
                ),
            ));
        }
        self.done.stats = Some(stats);
        Ok(outcome)
    }

    /// Plugs `grant` on `host`: hold, MAC to both, plug, wait for the guest, MAC to
    /// the direct path, release the hold. Never fails: says where the VM is.
    async fn plug(&mut self, host: Host<'a>, grant: &DirectGrant) -> Plugged {
        let vm = self.vm();
        let held = match host.switch.hold(vm).await {
            Ok(()) => true,
            Err(e) => {
                self.warn(format!(
                    "the switch at {} cannot hold the VM's frames during the plug: {e}",
                    host.name
                ));
                false
            }
        };
        let res = self.plug_inner(host, grant).await;
        if held {
            let onto = match res {
                Plugged::Direct | Plugged::DirectUnverified(_) => PathKind::Direct,
                Plugged::Synthetic(_) => PathKind::Synthetic,
            };
            if let Err(e) = host.switch.release_hold(vm, onto).await {
                self.warn(format!(
                    "the switch at {} did not release its hold: {e}",
                    host.name
                ));
            }
        }
        res
    }

    async fn plug_inner(&mut self, host: Host<'a>, grant: &DirectGrant) -> Plugged {
        let vm = self.vm();
        if let Err(e) = host.vf.route(vm, Route::Both).await {
            return self
                .back_to_synthetic(
                    host,
                    format!("cannot steer the VM's MAC to both paths: {e}"),
                )
                .await;
        }
        if let Err(e) = host.vmm.plug_direct(vm, grant).await {
            return self
                .back_to_synthetic(host, format!("plugging {} failed: {e}", grant.label))
                .await;
        }
        let settle = self.m.options.settle.as_secs_f64();
        let why = match host.vf.wait_guest_traffic(vm, self.m.options.settle).await {
            Ok(seen @ (GuestUse::Direct | GuestUse::Silent)) => {
                if let Err(e) = host.vf.route(vm, Route::Direct).await {
                    self.warn(format!(
                        "the guest uses {} but the MAC could not be pinned to it: {e}",
                        grant.label
                    ));
                }
                if seen == GuestUse::Silent {
                    return Plugged::DirectUnverified(format!(
                        "the guest sent nothing over either path within {settle:.1} s (idle); the MAC follows {}",
                        grant.label
                    ));
                }
                return Plugged::Direct;
            }
            Ok(GuestUse::SyntheticOnly) => format!(
                "the guest sent over the synthetic path only, nothing over {} within {settle:.1} s",
                grant.label
            ),
            Err(e) => format!("cannot tell whether the guest uses {}: {e}", grant.label),
        };
        // Unverified: leave the guest on the synthetic path, which needs the primary
        // gone (net_failover ignores the standby while a primary is registered).
        match host
            .vmm
            .unplug_direct(vm, self.m.options.unplug_timeout)
            .await
        {
            Ok(()) => self.back_to_synthetic(host, why).await,
            Err(e) => {
                if let Err(e2) = host.vf.route(vm, Route::Direct).await {
                    self.warn(format!("cannot pin the VM's MAC to {}: {e2}", grant.label));
                }
                Plugged::DirectUnverified(format!(
                    "{why}, and it could not be unplugged again ({e}); the MAC follows it"
                ))
            }
        }
    }

    /// Steers the MAC back to the synthetic path after a plug that did not work.
    async fn back_to_synthetic(&mut self, host: Host<'a>, why: String) -> Plugged {
        if let Err(e) = host.vf.route(self.vm(), Route::Synthetic).await {
            self.warn(format!(
                "cannot steer the VM's MAC back to the synthetic path at {}: {e}",
                host.name
            ));
        }
        Plugged::Synthetic(why)
    }

    async fn plug_destination(&mut self) -> (StepOutcome, PathKind) {
        let d = self.dst();
        let Some(grant) = self.done.dest_vf.clone() else {
            return (StepOutcome::Skipped, PathKind::Synthetic);
        };
        match self.plug(d, &grant).await {
            Plugged::Direct => (StepOutcome::Done, PathKind::Direct),
            Plugged::DirectUnverified(why) => {
                self.warn(format!(
                    "the direct path at the destination {} is not verified: {why}",
                    d.name
                ));
                (StepOutcome::Warning, PathKind::Direct)
            }
            Plugged::Synthetic(why) => {
                self.warn(format!(
                    "the VM stays on the synthetic path at the destination {}: {why}",
                    d.name
                ));
                self.done.dest_vf = None;
                if let Err(e) = d.vf.release(self.vm()).await {
                    self.warn(format!(
                        "could not release {} at the destination {}: {e}",
                        grant.label, d.name
                    ));
                }
                (StepOutcome::Warning, PathKind::Synthetic)
            }
        }
    }

    /// Moves what the source's switch held since the switch-over to the
    /// destination's (part of the announce step: the wire sends there now).
    async fn forward_held(&mut self) -> StepOutcome {
        if !self.done.src_held {
            return StepOutcome::Done;
        }
        self.done.src_held = false;
        let (s, d, vm) = (self.src(), self.dst(), self.vm());
        for _ in 0..MAX_HELD_PARTS {
            let part = match s.switch.take_held(vm).await {
                Ok(p) => p,
                Err(e) => {
                    self.warn(format!(
                        "could not take the frames held at the source {} since the switch-over: {e}",
                        s.name
                    ));
                    return StepOutcome::Warning;
                }
            };
            if !part.frames.is_empty() {
                match d.switch.inject(vm, &part.frames).await {
                    Ok(n) => self.done.forwarded += n,
                    Err(e) => {
                        self.warn(format!(
                            "could not deliver {} frame(s) held at the source {} to the destination {}: {e}",
                            part.frames.len(),
                            s.name,
                            d.name
                        ));
                        return StepOutcome::Warning;
                    }
                }
            }
            if !part.more {
                return StepOutcome::Done;
            }
        }
        self.warn(format!(
            "the source {} still held frames after {MAX_HELD_PARTS} parts; the rest is dropped with its port",
            s.name
        ));
        StepOutcome::Warning
    }

    async fn release_source(&mut self) -> StepOutcome {
        let (s, vm) = (self.src(), self.vm());
        let mut outcome = StepOutcome::Done;
        if let Err(e) = s.vmm.stop(vm).await {
            self.warn(format!(
                "could not stop the migrated-away VMM at the source {}: {e}",
                s.name
            ));
            outcome = StepOutcome::Warning;
        }
        if self.m.plan.source_direct.is_some() {
            if let Err(e) = s.vf.release(vm).await {
                self.warn(format!(
                    "could not release the VF at the source {}: {e}",
                    s.name
                ));
                outcome = StepOutcome::Warning;
            }
        }
        if let Err(e) = s.switch.remove_port(vm).await {
            self.warn(format!(
                "could not remove the switch port at the source {}: {e}",
                s.name
            ));
            outcome = StepOutcome::Warning;
        }
        outcome
    }

    fn report(&self, final_state: FinalState) -> MigrationReport {
        let stats = self.done.stats.clone();
        MigrationReport {
            vm: self.vm().name.clone(),
            source: self.src().name.to_string(),
            destination: self.dst().name.to_string(),
            steps: self.steps.clone(),
            downtime_ms: stats.as_ref().and_then(|s| s.downtime_ms),
            migration_ms: stats.as_ref().map_or(0, |s| s.total_ms),
            transferred_bytes: stats.as_ref().map_or(0, |s| s.transferred),
            last_progress: self.done.last_progress.clone(),
            total_ms: self.ms(self.m.clock.now().saturating_duration_since(self.t0)),
            forwarded_frames: self.done.forwarded,
            warnings: self.warnings.clone(),
            final_state,
        }
    }

    fn error(
        &self,
        step: Step,
        cause: OpError,
        rolled_back: Vec<String>,
        rollback_errors: Vec<String>,
    ) -> MigrationError {
        let path = if self.m.plan.source_direct.is_some() {
            PathKind::Direct
        } else {
            PathKind::Synthetic
        };
        MigrationError {
            vm: self.vm().name.clone(),
            step,
            cause,
            rolled_back,
            rollback_errors,
            warnings: self.warnings.clone(),
            steps: self.steps.clone(),
            final_state: FinalState::Source {
                host: self.src().name.to_string(),
                path,
            },
        }
    }

    /// Undoes what was done before the switch-over; the VM ends on the source.
    async fn rollback(&mut self, step: Step, cause: OpError) -> MigrationError {
        self.emit(Event::RollingBack { step });
        let (s, d, vm) = (self.src(), self.dst(), self.vm());
        let mut undone: Vec<String> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        fn note(
            undone: &mut Vec<String>,
            errors: &mut Vec<String>,
            what: String,
            r: Result<(), OpError>,
        ) {
            match r {
                Ok(()) => undone.push(what),
                Err(e) => errors.push(format!("{what}: failed: {e}")),
            }
        }
        // 1. The destination goes away first: never two running VMs.
        if self.done.dest_vmm {
            let r = d.vmm.stop(vm).await;
            note(
                &mut undone,
                &mut errors,
                format!("destination VMM stopped on {}", d.name),
                r,
            );
        }
        if let Some(g) = self.done.dest_vf.take() {
            let r = d.vf.release(vm).await;
            note(
                &mut undone,
                &mut errors,
                format!("{} released on {}", g.label, d.name),
                r,
            );
        }
        if self.done.dest_port {
            let r = d.switch.remove_port(vm).await;
            note(
                &mut undone,
                &mut errors,
                format!("destination switch port removed on {}", d.name),
                r,
            );
        }
        // 2. A source paused by a completed migration runs again.
        if self.done.src_needs_resume {
            if let Err(e) = s.vmm.resume(vm).await {
                errors.push(format!("source VM resumed on {}: failed: {e}", s.name));
                let mut err = self.error(step, cause, undone, errors);
                err.final_state = FinalState::Unknown {
                    detail: format!(
                        "the destination {} does not run the VM and the source {} could not resume it",
                        d.name, s.name
                    ),
                };
                return err;
            }
            undone.push(format!("source VM resumed on {}", s.name));
        }
        // 3. The source's direct path.
        let mut path = if self.m.plan.source_direct.is_some() {
            PathKind::Direct
        } else {
            PathKind::Synthetic
        };
        if let (Some(grant), true) = (self.m.plan.source_direct.clone(), self.done.steered) {
            // Still plugged (unplug never acknowledged)? Then the MAC goes back to
            // it; gone? Then plug it again.
            let attached = match self.done.src_unplugged {
                Some(true) => Ok(false),
                _ => s.vmm.direct_attached(vm).await,
            };
            match attached {
                Ok(true) => {
                    let r = s.vf.route(vm, Route::Direct).await;
                    if r.is_err() {
                        path = PathKind::Synthetic;
                    }
                    note(
                        &mut undone,
                        &mut errors,
                        format!("MAC steered back to the source direct path on {}", s.name),
                        r,
                    );
                    if self.done.src_held {
                        self.done.src_held = false;
                        let r = s.switch.release_hold(vm, path).await.map(|_| ());
                        note(
                            &mut undone,
                            &mut errors,
                            format!("source switch hold released on {}", s.name),
                            r,
                        );
                    }
                }
                Ok(false) => {
                    if self.done.src_held {
                        self.done.src_held = false;
                        let r = s
                            .switch
                            .release_hold(vm, PathKind::Synthetic)
                            .await
                            .map(|_| ());
                        note(
                            &mut undone,
                            &mut errors,
                            format!("source switch hold released on {}", s.name),
                            r,
                        );
                    }
                    match self.plug(s, &grant).await {
                        Plugged::Direct => undone.push(format!(
                            "source direct path re-plugged on {} ({})",
                            s.name, grant.label
                        )),
                        Plugged::DirectUnverified(why) => {
                            undone.push(format!(
                                "source direct path re-plugged on {} ({}), unverified",
                                s.name, grant.label
                            ));
                            self.warnings.push(why);
                        }
                        Plugged::Synthetic(why) => {
                            path = PathKind::Synthetic;
                            errors.push(format!(
                                "source direct path re-plugged on {}: failed: {why}",
                                s.name
                            ));
                        }
                    }
                }
                Err(e) => {
                    // The VMM does not answer: keep the MAC where the VM can still
                    // get it without its primary.
                    path = PathKind::Synthetic;
                    errors.push(format!(
                        "source direct path state on {}: unknown: {e}",
                        s.name
                    ));
                    if self.done.src_held {
                        self.done.src_held = false;
                        let r = s
                            .switch
                            .release_hold(vm, PathKind::Synthetic)
                            .await
                            .map(|_| ());
                        note(
                            &mut undone,
                            &mut errors,
                            format!("source switch hold released on {}", s.name),
                            r,
                        );
                    }
                }
            }
        } else if self.done.src_held {
            self.done.src_held = false;
            let r = s
                .switch
                .release_hold(vm, PathKind::Synthetic)
                .await
                .map(|_| ());
            note(
                &mut undone,
                &mut errors,
                format!("source switch hold released on {}", s.name),
                r,
            );
        }
        let mut err = self.error(step, cause, undone, errors);
        err.final_state = FinalState::Source {
            host: s.name.to_string(),
            path,
        };
        err
    }
}

#[cfg(test)]
mod tests;
