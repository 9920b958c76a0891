//! VMM drivers: QEMU (command line and QMP) and cloud-hypervisor (command line and
//! REST API), behind one [`Vmm`] trait, launching VMs with the VF + virtio-net pair.
//!
//! A VM has two paths behind one MAC: the *synthetic* path, a virtio-net device on a
//! vhost-user port of the accelnet switch, and the *direct* path, an SR-IOV VF passed
//! through with vfio-pci (or, in the lab, an emulated PCIe NIC on a tap: the
//! [`DirectPath::Standin`]). The guest bonds them with `net_failover`.
//!
//! The migration crate drives VMs through [`Vmm`] without knowing which VMM is behind
//! it. This crate is a leaf: it knows nothing of SR-IOV pools or the switch internals;
//! the caller hands it a vhost-user socket path and a VF address.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod ch;
pub mod qemu;

/// Which VMM runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmmKind {
    /// QEMU (q35, QMP). Supports virtio-net failover (STANDBY) itself.
    Qemu,
    /// cloud-hypervisor (REST API). Has no STANDBY support: accelnet switches the
    /// paths itself (remove the VF, the synthetic path carries the MAC, re-add).
    CloudHypervisor,
}

impl VmmKind {
    /// `qemu` or `cloud-hypervisor`.
    pub const fn as_str(self) -> &'static str {
        match self {
            VmmKind::Qemu => "qemu",
            VmmKind::CloudHypervisor => "cloud-hypervisor",
        }
    }

    /// Whether the VMM itself negotiates virtio-net failover with the guest
    /// (`VIRTIO_NET_F_STANDBY`): QEMU does, cloud-hypervisor does not.
    pub const fn has_standby(self) -> bool {
        matches!(self, VmmKind::Qemu)
    }
}

impl fmt::Display for VmmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to boot and how big: everything a VMM needs to start a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    /// VM name (unique on the node).
    pub name: String,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB (always shared memory: vhost-user needs it).
    pub memory_mib: u64,
    /// Kernel image for direct boot.
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    /// Initramfs for direct boot.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line for direct boot.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Disk images (virtio-blk, raw or qcow2 as the VMM detects).
    #[serde(default)]
    pub disks: Vec<PathBuf>,
    /// The synthetic path.
    pub nic: SyntheticNic,
    /// The direct path, when the VM is accelerated.
    #[serde(default)]
    pub direct: Option<DirectPath>,
    /// Where the VM's serial console is written (a file), if anywhere.
    #[serde(default)]
    pub console_log: Option<PathBuf>,
    /// Start paused, waiting for an incoming migration (`-incoming defer` on QEMU,
    /// `vm.receive-migration` on cloud-hypervisor).
    #[serde(default)]
    pub incoming: bool,
}

/// Least guest RAM a VM is started with, in MiB.
pub const MIN_MEMORY_MIB: u64 = 64;

/// Most queue pairs of the synthetic NIC (the switch's limit).
pub const MAX_QUEUE_PAIRS: u16 = 8;

/// Whether `mac` is `xx:xx:xx:xx:xx:xx` (hex) and unicast.
pub fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
        && u8::from_str_radix(parts[0], 16).is_ok_and(|b| b & 1 == 0)
}

impl VmSpec {
    /// A [`VmmError::Spec`] about this VM.
    pub fn error(&self, message: impl Into<String>) -> VmmError {
        VmmError::Spec {
            vm: self.name.clone(),
            message: message.into(),
        }
    }

    /// The checks every VMM needs: at least one vCPU, [`MIN_MEMORY_MIB`] of RAM, a
    /// unicast MAC, 1 to [`MAX_QUEUE_PAIRS`] queue pairs.
    pub fn check_sizes(&self) -> Result<(), VmmError> {
        if self.vcpus == 0 {
            return Err(self.error("vcpus must be at least 1"));
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(self.error(format!(
                "memory {} MiB is below the minimum of {MIN_MEMORY_MIB} MiB",
                self.memory_mib
            )));
        }
        if !valid_mac(&self.nic.mac) {
            return Err(self.error(format!(
                "bad MAC {:?} (want a unicast xx:xx:xx:xx:xx:xx)",
                self.nic.mac
            )));
        }
        if self.nic.queue_pairs == 0 || self.nic.queue_pairs > MAX_QUEUE_PAIRS {
            return Err(self.error(format!(
                "queue pairs {} out of range 1..={MAX_QUEUE_PAIRS}",
                self.nic.queue_pairs
            )));
        }
        Ok(())
    }
}

/// The virtio-net device on a vhost-user port of the accelnet switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntheticNic {
    /// The VM's MAC (shared by both paths).
    pub mac: String,
    /// The switch port's vhost-user socket (the switch listens on it).
    pub socket: PathBuf,
    /// Queue pairs (1 = no multiqueue).
    pub queue_pairs: u16,
}

/// The direct path of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DirectPath {
    /// An SR-IOV VF, bound to vfio-pci on the host, passed through.
    Vf {
        /// Host PCI address of the VF.
        pci: String,
    },
    /// Lab stand-in for a VF: an emulated PCIe NIC on a host tap that is attached to
    /// the wire directly (not through the switch), the topology of a VF on the PF's
    /// embedded switch. For test machines without VFIO.
    Standin {
        /// The host tap (created by the VMM if missing, on QEMU).
        tap: String,
        /// The emulated NIC model.
        model: StandinModel,
    },
}

/// Emulated NIC models usable as a VF stand-in (net_failover takes them as primary;
/// it does not take a virtio-net primary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StandinModel {
    /// Intel 82574 (`e1000e`).
    E1000e,
    /// Intel 82576 (`igb`).
    Igb,
}

impl StandinModel {
    /// The QEMU device name.
    pub const fn qemu_device(self) -> &'static str {
        match self {
            StandinModel::E1000e => "e1000e",
            StandinModel::Igb => "igb",
        }
    }
}

/// Coarse state of a VM as its VMM reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// The VMM process runs but the guest has not started (e.g. `-S`, preconfig).
    Created,
    /// Running.
    Running,
    /// Paused (by the operator, or by a migration's switch-over).
    Paused,
    /// Waiting for an incoming migration.
    Incoming,
    /// Migrated away: the source side after a completed migration.
    Migrated,
    /// Shut down, or the VMM process is gone.
    Stopped,
}

/// What [`Vmm::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// The state.
    pub state: VmState,
    /// The VMM process id, when it runs.
    pub pid: Option<u32>,
    /// Whether the direct-path device is plugged (as the VMM sees it).
    pub direct_attached: bool,
}

/// Migration progress as the source VMM reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationProgress {
    /// VMM's status word (QEMU: `setup`, `wait-unplug`, `active`, `device`,
    /// `completed`, `failed`, `cancelled`...).
    pub status: String,
    /// RAM bytes transferred so far.
    pub transferred: u64,
    /// RAM bytes still to send.
    pub remaining: u64,
    /// Total guest RAM bytes.
    pub total: u64,
    /// Time since the start, in milliseconds.
    pub elapsed_ms: u64,
}

/// The end of a migration, from the source's point of view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationSummary {
    /// Total time, in milliseconds.
    pub total_ms: u64,
    /// Guest downtime at switch-over, in milliseconds, when reported.
    pub downtime_ms: Option<u64>,
    /// RAM bytes transferred.
    pub transferred: u64,
}

/// Something the VMM reported asynchronously.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum VmEvent {
    /// The guest acknowledged STANDBY for the failover pair of `device` (QEMU
    /// `FAILOVER_NEGOTIATED`); QEMU now plugs the primary.
    FailoverNegotiated {
        /// The standby device id.
        device: String,
    },
    /// A device is gone (the guest released it after an unplug request).
    DeviceDeleted {
        /// Its id.
        device: String,
    },
    /// A migration is unplugging the failover primary `device` (QEMU
    /// `UNPLUG_PRIMARY`).
    UnplugPrimary {
        /// The primary's id.
        device: String,
    },
    /// Migration status changed.
    Migration {
        /// The new status word.
        status: String,
    },
    /// The guest changed a NIC's receive filter (MAC, rx mode).
    NicRxFilterChanged {
        /// The NIC's id.
        device: String,
    },
    /// The guest stopped (paused), or resumed.
    RunState {
        /// Running now.
        running: bool,
    },
    /// The VMM process exited or shut the guest down.
    Shutdown {
        /// What the VMM said, or the exit status.
        reason: String,
    },
    /// Any other event, by name, with its data.
    Other {
        /// Event name.
        name: String,
        /// Its data, as JSON text.
        data: String,
    },
}

/// Why a VMM operation failed. Every variant names the VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmmError {
    /// The VMM binary is missing, or too old for what is asked.
    #[error("VM {vm}: {message}")]
    Binary {
        /// The VM.
        vm: String,
        /// What is wrong with the binary (path, version, minimum).
        message: String,
    },
    /// The VM spec cannot be run by this VMM.
    #[error("VM {vm}: invalid spec: {message}")]
    Spec {
        /// The VM.
        vm: String,
        /// What is wrong.
        message: String,
    },
    /// Starting the VMM process failed.
    #[error("VM {vm}: cannot start {vmm}: {message}")]
    Start {
        /// The VM.
        vm: String,
        /// The VMM.
        vmm: VmmKind,
        /// Why.
        message: String,
    },
    /// The VMM process exited (or was never there) while talking to it.
    #[error("VM {vm}: the {vmm} process is gone: {message}")]
    Exited {
        /// The VM.
        vm: String,
        /// The VMM.
        vmm: VmmKind,
        /// Exit status or what was seen.
        message: String,
    },
    /// The control channel (QMP, REST API) failed or spoke something else.
    #[error("VM {vm}: {vmm} control channel {}: {message}", path.display())]
    Protocol {
        /// The VM.
        vm: String,
        /// The VMM.
        vmm: VmmKind,
        /// The socket.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The VMM refused a command.
    #[error("VM {vm}: {vmm} refused {command}: {message}")]
    Command {
        /// The VM.
        vm: String,
        /// The VMM.
        vmm: VmmKind,
        /// The command (QMP command, API endpoint).
        command: String,
        /// The VMM's error (QMP `desc`, API body).
        message: String,
    },
    /// Waiting for something timed out.
    #[error("VM {vm}: timed out after {:.1} s waiting for {what}", after.as_secs_f64())]
    Timeout {
        /// The VM.
        vm: String,
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The migration failed or was cancelled.
    #[error("VM {vm}: migration {status}: {message}")]
    Migration {
        /// The VM.
        vm: String,
        /// The final status (`failed`, `cancelled`).
        status: String,
        /// The VMM's error description.
        message: String,
    },
    /// The VM has no synthetic NIC to pair a direct path with (a VM launched
    /// outside accelnet, or its NIC was removed).
    #[error("VM {vm}: no synthetic network adapter ({device}) to pair the direct path with")]
    NoNic {
        /// The VM.
        vm: String,
        /// The device id looked for.
        device: String,
    },
}

/// Receives [`VmEvent`]s from a [`Vmm`]; lagging receivers lose the oldest events
/// (and are told how many).
pub type EventReceiver = tokio::sync::broadcast::Receiver<VmEvent>;

/// Progress callback of [`Vmm::migrate_out`].
pub type ProgressFn<'a> = &'a (dyn Fn(&MigrationProgress) + Send + Sync);

/// One VM under one VMM: what the migration crate and `accelnet vm` drive.
///
/// A `Vmm` value is made for a [`VmSpec`] (e.g. `qemu::QemuVm::new`) and then either
/// [`start`](Vmm::start)s the VMM process or is attached to one that runs already (a
/// VM launched by an earlier `accelnet` process), by the driver's own constructor.
#[async_trait::async_trait]
pub trait Vmm: Send + Sync + fmt::Debug {
    /// Which VMM this is.
    fn kind(&self) -> VmmKind;

    /// The VM's spec.
    fn spec(&self) -> &VmSpec;

    /// Starts the VMM process with the VM (paused, waiting for a migration, when the
    /// spec says `incoming`), and connects to its control channel. The direct path in
    /// the spec is part of the start: QEMU plugs it once the guest negotiates
    /// failover; cloud-hypervisor boots with it.
    async fn start(&mut self) -> Result<(), VmmError>;

    /// Stops the VM: a clean shutdown request, then the process is killed after
    /// `grace`. Stopping a stopped VM is not an error.
    async fn stop(&mut self, grace: Duration) -> Result<(), VmmError>;

    /// The VM's state as the VMM reports it.
    async fn status(&self) -> Result<VmStatus, VmmError>;

    /// Hot-plugs the direct path (VF or stand-in). On QEMU it becomes the failover
    /// primary of the synthetic NIC.
    async fn attach_direct(&self, path: &DirectPath) -> Result<(), VmmError>;

    /// Hot-unplugs the direct path and waits (up to `timeout`) until the guest has
    /// released it. Without a direct path this is a no-op.
    async fn detach_direct(&self, timeout: Duration) -> Result<(), VmmError>;

    /// Migrates the VM to `uri` (e.g. `tcp:10.0.0.2:4444`, `unix:/run/x.sock`),
    /// calling `progress` as the migration advances, and returns when it completed.
    async fn migrate_out(
        &self,
        uri: &str,
        progress: ProgressFn<'_>,
    ) -> Result<MigrationSummary, VmmError>;

    /// On a VM started with `incoming`, starts listening for the migration on `uri`.
    async fn receive_migration(&self, uri: &str) -> Result<(), VmmError>;

    /// Cancels a running outgoing migration; the VM keeps running on this host.
    async fn cancel_migration(&self) -> Result<(), VmmError>;

    /// A new receiver of the VM's events, from now on.
    fn events(&self) -> EventReceiver;
}
