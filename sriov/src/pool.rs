//! The VF pool: durable VF ownership, allocation, release with reset, reclaim.
//!
//! The pool hands each virtual function to at most one VM at a time and records the
//! owner durably in a state directory ([`DEFAULT_DIR`] in production):
//!
//! - `pool.json`: the records, one per VF, keyed by the VF's PCI address (format
//!   below). Written atomically: `pool.json.tmp` is written and fsynced, renamed over
//!   `pool.json`, then the directory is fsynced. A crash leaves either the old or the
//!   new file, never a torn one.
//! - `pool.lock`: every operation holds an exclusive `flock` on it
//!   ([`File::lock`]) from reading the state to writing it back, so processes (and
//!   threads: each operation opens its own descriptor) never decide on stale state.
//!   The lock is released when the operation ends, or by the kernel when the process
//!   dies.
//!
//! A VF's life: `free` → [`reserve`](VfPool::reserve) writes `reserved` (owner, and
//! the reserving process) *before* the caller configures the VF → the caller
//! configures it → [`commit`](VfPool::commit) writes `allocated`, or
//! [`abort`](VfPool::abort) resets it. [`release`](VfPool::release),
//! [`abort`](VfPool::abort) and [`reclaim`](VfPool::reclaim) write `releasing`
//! before calling the [`VfReset`], then `free` when the reset succeeded or
//! `quarantined` (out of the pool, with the reason) when it failed.
//!
//! Crash repair ([`repair`](VfPool::repair), run by [`open`](VfPool::open)): a
//! `reserved` record whose reserving process is gone (pid and start time, so a
//! reused pid does not count), a `releasing` record, and a `quarantined` VF that is
//! present on the host are reset and freed (or stay quarantined).
//!
//! A VM process is identified by pid *and* its start time (field 22 of
//! `/proc/<pid>/stat`), see [`Owner::process`]; a zombie counts as dead. An owner
//! without a pid is never reclaimed automatically.
//!
//! A `pool.json` that does not parse is an error naming the file
//! ([`PoolError::Corrupt`]); the pool never replaces it with an empty one, since
//! that would forget owners. The operator moves it aside (the VFs then get
//! re-added as free by the next [`sync`](VfPool::sync)) or repairs it.
//!
//! Format of `pool.json` (version [`FORMAT_VERSION`]):
//!
//! ```json
//! {
//!   "version": 1,
//!   "vfs": [
//!     { "vf": "0000:3b:02.0", "pf": "0000:3b:00.0", "pf_netdev": "enp59s0f0",
//!       "index": 0, "numa": 0, "rdma": false, "missing": false,
//!       "state": { "kind": "allocated", "since": 1700000000,
//!                  "owner": { "vm": "vm1", "pid": 4242, "start_time": 98765 } } }
//!   ]
//! }
//! ```
//!
//! `state.kind` is one of `free`, `reserved` (`owner`, `by`: `{pid, start_time}`,
//! `since`), `allocated` (`owner`, `since`), `releasing` (`owner`, `since`),
//! `quarantined` (`owner` or null, `reason`, `since`). `since` is in seconds since
//! the Unix epoch. `missing` is true when the last [`sync`](VfPool::sync) did not
//! find the VF on the host.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::errors::{ErrorId, SeedError};
use crate::host::Host;
use crate::tiers::Tier;

/// The production state directory.
pub const DEFAULT_DIR: &str = "/var/lib/accelnet/pool";
/// The records, in the state directory.
pub const STATE_FILE: &str = "pool.json";
/// The lock file, in the state directory.
pub const LOCK_FILE: &str = "pool.lock";
/// The version of `pool.json` this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The production proc filesystem, for liveness checks.
pub const DEFAULT_PROC_ROOT: &str = "/proc";

/// A VF of the pool: where it is and what it offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolVf {
    /// PCI address of the VF (the record's key).
    pub vf: String,
    /// PCI address of its PF.
    pub pf: String,
    /// First network interface of the PF, if any (for rtnetlink).
    #[serde(default)]
    pub pf_netdev: Option<String>,
    /// VF index on the PF (the index rtnetlink uses).
    pub index: u32,
    /// NUMA node of the VF, when known.
    #[serde(default)]
    pub numa: Option<u32>,
    /// Whether the VF has an RDMA device.
    #[serde(default)]
    pub rdma: bool,
    /// Queue pairs its hardware offers, when known
    /// ([`crate::host::VirtFunction::queue_pairs`]).
    #[serde(default)]
    pub queue_pairs: Option<u16>,
}

impl PoolVf {
    /// Every VF of `host`, as the pool records it.
    pub fn from_host(host: &Host) -> Vec<PoolVf> {
        host.vfs()
            .map(|(pf, vf)| PoolVf {
                vf: vf.address.clone(),
                pf: pf.address.clone(),
                pf_netdev: pf.netdevs.first().cloned(),
                index: vf.index,
                numa: vf.numa_node.or(pf.numa_node),
                rdma: vf.rdma,
                queue_pairs: vf.queue_pairs,
            })
            .collect()
    }
}

/// Who holds a VF: a VM, and optionally the process that runs it (e.g. QEMU).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The VM's name.
    pub vm: String,
    /// The VM process, if known.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Start time of that process (clock ticks since boot, field 22 of
    /// `/proc/<pid>/stat`), so that a reused pid is not taken for the VM.
    #[serde(default)]
    pub start_time: Option<u64>,
}

impl Owner {
    /// An owner known by VM name only; [`Owner::is_alive`] always says yes, so it
    /// is never reclaimed automatically.
    pub fn vm(vm: impl Into<String>) -> Owner {
        Owner {
            vm: vm.into(),
            pid: None,
            start_time: None,
        }
    }

    /// VM `vm` run by process `pid`, whose start time is read from
    /// `<proc_root>/<pid>/stat` (`/proc` in production).
    pub fn process(vm: impl Into<String>, pid: u32, proc_root: &Path) -> Result<Owner, PoolError> {
        let stat = read_stat(proc_root, pid).map_err(|source| PoolError::Process {
            pid,
            path: stat_path(proc_root, pid),
            source,
        })?;
        Ok(Owner {
            vm: vm.into(),
            pid: Some(pid),
            start_time: Some(stat.start_time),
        })
    }

    /// Whether the owner's process still runs: `<proc_root>/<pid>/stat` exists, is
    /// not a zombie and has the recorded start time. An owner without a pid, or
    /// whose stat cannot be read for another reason than absence, counts as alive.
    pub fn is_alive(&self, proc_root: &Path) -> bool {
        match self.pid {
            None => true,
            Some(pid) => process_alive(proc_root, pid, self.start_time),
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "{} (pid {pid})", self.vm),
            None => f.write_str(&self.vm),
        }
    }
}

/// A process, identified by pid and start time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessId {
    /// Process id.
    pub pid: u32,
    /// Start time (field 22 of `/proc/<pid>/stat`), when it could be read.
    #[serde(default)]
    pub start_time: Option<u64>,
}

/// The state of a VF in the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VfState {
    /// Reset and available.
    Free,
    /// Handed to `owner` by process `by`, which is configuring it; not committed.
    Reserved {
        /// The future owner.
        owner: Owner,
        /// The process that reserved it (repair frees the VF when it is gone).
        by: ProcessId,
        /// When (seconds since the epoch).
        since: u64,
    },
    /// Configured and owned by `owner`.
    Allocated {
        /// The owner.
        owner: Owner,
        /// When (seconds since the epoch).
        since: u64,
    },
    /// Being reset after `owner` let it go.
    Releasing {
        /// The last owner.
        owner: Owner,
        /// When (seconds since the epoch).
        since: u64,
    },
    /// Out of the pool: its reset failed (or it is missing); retried by repair.
    Quarantined {
        /// The last owner, if any.
        owner: Option<Owner>,
        /// Why the reset failed.
        reason: String,
        /// When (seconds since the epoch).
        since: u64,
    },
}

impl VfState {
    /// The owner (or last owner) recorded in the state.
    pub fn owner(&self) -> Option<&Owner> {
        match self {
            VfState::Free => None,
            VfState::Reserved { owner, .. }
            | VfState::Allocated { owner, .. }
            | VfState::Releasing { owner, .. } => Some(owner),
            VfState::Quarantined { owner, .. } => owner.as_ref(),
        }
    }

    /// The state's name as written in `pool.json` (`free`, `reserved`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            VfState::Free => "free",
            VfState::Reserved { .. } => "reserved",
            VfState::Allocated { .. } => "allocated",
            VfState::Releasing { .. } => "releasing",
            VfState::Quarantined { .. } => "quarantined",
        }
    }
}

/// One record of the pool, as stored and as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolEntry {
    /// The VF.
    #[serde(flatten)]
    pub vf: PoolVf,
    /// Whether the last [`VfPool::sync`] did not find the VF on the host.
    #[serde(default)]
    pub missing: bool,
    /// Its state.
    pub state: VfState,
}

impl PoolEntry {
    fn is_free(&self) -> bool {
        !self.missing && self.state == VfState::Free
    }
}

/// Which VF [`VfPool::reserve`] may pick. The default picks any free VF.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Select {
    /// Only VFs of this PF (PCI address or PF netdev name).
    pub pf: Option<String>,
    /// Exactly this VF (PCI address); the other criteria must match too.
    pub vf: Option<String>,
    /// Only VFs on this NUMA node.
    pub numa: Option<u32>,
    /// Only VFs with an RDMA device.
    pub rdma: bool,
    /// Only VFs that can carry this tier: at least [`Tier::min_queue_pairs`]
    /// queue pairs (a VF whose count is unknown is taken at its word).
    #[serde(default)]
    pub performance: Option<Tier>,
}

impl Select {
    /// Why `vf` does not match, or `None` when it does.
    fn mismatch(&self, vf: &PoolVf) -> Option<String> {
        if let Some(pf) = &self.pf {
            if *pf != vf.pf && vf.pf_netdev.as_deref() != Some(pf.as_str()) {
                return Some(format!("it is a VF of PF {}, not of {pf}", vf.pf));
            }
        }
        if let Some(numa) = self.numa {
            if vf.numa != Some(numa) {
                return Some(format!("it is not on NUMA node {numa}"));
            }
        }
        if self.rdma && !vf.rdma {
            return Some("it has no RDMA device".to_string());
        }
        self.too_few_queues(vf)
    }

    /// The same request without the tier.
    fn without_tier(&self) -> Select {
        Select {
            performance: None,
            ..self.clone()
        }
    }

    /// Why `vf` cannot carry [`Select::performance`], if it cannot.
    fn too_few_queues(&self, vf: &PoolVf) -> Option<String> {
        let tier = self.performance?;
        let has = vf.queue_pairs?;
        (has < tier.min_queue_pairs()).then(|| {
            format!(
                "it has {has} hardware queue pair(s), {tier} performance needs {}",
                tier.min_queue_pairs()
            )
        })
    }

    /// The catalogue error when the VFs that fit everything else are all too
    /// small for the tier (`cannot_provision_performance`), not too few.
    fn performance_seed(&self) -> Option<SeedError> {
        self.performance.map(|tier| {
            SeedError::new(
                ErrorId::CannotProvisionPerformance,
                format_args!("{tier} performance"),
            )
        })
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(pf) = &self.pf {
            parts.push(format!("pf {pf}"));
        }
        if let Some(vf) = &self.vf {
            parts.push(format!("vf {vf}"));
        }
        if let Some(numa) = self.numa {
            parts.push(format!("numa node {numa}"));
        }
        if self.rdma {
            parts.push("rdma".to_string());
        }
        if let Some(tier) = self.performance {
            parts.push(format!(
                "{} queue pair(s) for {tier} performance",
                tier.min_queue_pairs()
            ));
        }
        if parts.is_empty() {
            f.write_str("any VF")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Resets a VF to its neutral settings before reuse: MAC 00:00:00:00:00:00, VLAN
/// 0, spoof check on, trust off, link state auto. Production uses rtnetlink on the
/// PF ([`PoolVf::pf_netdev`], [`PoolVf::index`]).
pub trait VfReset {
    /// Resets `vf`; the error says why it could not.
    fn reset(&self, vf: &PoolVf) -> Result<(), String>;
}

/// What became of a VF after a reset attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Reset and back in the pool.
    Freed,
    /// The reset failed (or the VF is missing): out of the pool until a repair.
    Quarantined {
        /// Why.
        reason: String,
    },
}

/// A VF taken back from a dead owner by [`VfPool::reclaim`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaimed {
    /// PCI address of the VF.
    pub vf: String,
    /// The owner that is gone.
    pub owner: Owner,
    /// What became of the VF.
    pub outcome: Outcome,
}

/// A VF put right by [`VfPool::repair`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repaired {
    /// PCI address of the VF.
    pub vf: String,
    /// Its state before the repair.
    pub previous: VfState,
    /// What became of it.
    pub outcome: Outcome,
}

/// What [`VfPool::sync`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// VFs found on the host for the first time, added as free.
    pub added: Vec<String>,
    /// Free VFs no longer on the host, whose records were dropped.
    pub removed: Vec<String>,
    /// VFs no longer on the host whose records are kept (they have an owner or
    /// need a reset), flagged `missing`.
    pub missing: Vec<String>,
    /// VFs flagged `missing` before that are back.
    pub returned: Vec<String>,
}

/// Why a pool operation failed. Each names the VF, owner or file concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// A file of the state directory could not be read or written.
    #[error("VF pool: cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// `pool.json` does not parse; it is left as it is.
    #[error(
        "VF pool state file {} is corrupt ({message}); it was left untouched: \
         repair it or move it aside (the VFs are then re-added as free)",
        path.display()
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `pool.json` was written by another format version.
    #[error("VF pool state file {} has format version {found}, expected {FORMAT_VERSION}", path.display())]
    UnsupportedVersion {
        /// The state file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// The process of an owner could not be read.
    #[error("cannot read process {pid} ({}): {source}", path.display())]
    Process {
        /// The pid.
        pid: u32,
        /// Its stat file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The VF is not in the pool (run a sync?).
    #[error("VF {vf} is not in the pool")]
    UnknownVf {
        /// PCI address of the VF.
        vf: String,
    },
    /// The VF belongs to a VM.
    #[error("VF {vf} is {state} by VM {owner}")]
    Owned {
        /// PCI address of the VF.
        vf: String,
        /// `reserved` or `allocated`.
        state: &'static str,
        /// The owner.
        owner: Owner,
    },
    /// The VF is out of the pool for another reason (missing, being released,
    /// quarantined).
    #[error("VF {vf} is not available: {reason}")]
    Unavailable {
        /// PCI address of the VF.
        vf: String,
        /// Why.
        reason: String,
    },
    /// The requested VF does not match the other criteria.
    #[error("VF {vf} does not match the request: {reason}")]
    Mismatch {
        /// PCI address of the VF.
        vf: String,
        /// Why.
        reason: String,
    },
    /// The requested VF has fewer queue pairs than the tier needs.
    #[error("{seed} (VF {vf}: {reason})")]
    TooFewQueues {
        /// PCI address of the VF.
        vf: String,
        /// Why.
        reason: String,
        /// The catalogue error ([`ErrorId::CannotProvisionPerformance`]).
        seed: SeedError,
    },
    /// No free VF matches.
    #[error("{seed} (no free VF matching {want})")]
    NoFreeVf {
        /// The VM that asked.
        vm: String,
        /// What it asked for.
        want: String,
        /// The catalogue error: [`ErrorId::ClusterNotEnoughResources`], or
        /// [`ErrorId::CannotProvisionPerformance`] when free VFs fit everything
        /// but the tier's queue pairs.
        seed: SeedError,
    },
    /// The VF is not held by the VM that the caller named.
    #[error("VF {vf} is not held by VM {expected}: {actual}")]
    NotOwner {
        /// PCI address of the VF.
        vf: String,
        /// The VM the caller named.
        expected: String,
        /// What the record says (`free`, `allocated by VM x`, ...).
        actual: String,
    },
    /// Release of a VF no VM holds (free or quarantined).
    #[error("VF {vf} is not held by any VM, so there is nothing to release: {actual}")]
    NotHeld {
        /// PCI address of the VF.
        vf: String,
        /// What the record says.
        actual: String,
    },
    /// Configuring the reserved VF failed; the reservation was undone.
    #[error("configuring VF {vf} for VM {vm} failed: {message}; the VF was {undo}")]
    Configure {
        /// PCI address of the VF.
        vf: String,
        /// The VM.
        vm: String,
        /// The configuration error.
        message: String,
        /// What became of the VF (`freed`, `quarantined: ...`, or the abort error).
        undo: String,
    },
}

impl PoolError {
    /// The catalogue error for errors that have one ([`PoolError::NoFreeVf`]).
    pub fn seed_error(&self) -> Option<&SeedError> {
        match self {
            PoolError::NoFreeVf { seed, .. } | PoolError::TooFewQueues { seed, .. } => Some(seed),
            _ => None,
        }
    }
}

type Records = BTreeMap<String, PoolEntry>;

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    vfs: Vec<PoolEntry>,
}

/// The VF pool over one state directory. Cheap to share between threads; every
/// operation locks the directory for its whole duration.
pub struct VfPool {
    dir: PathBuf,
    proc_root: PathBuf,
    reset: Arc<dyn VfReset + Send + Sync>,
    me: ProcessId,
}

impl fmt::Debug for VfPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfPool")
            .field("dir", &self.dir)
            .field("proc_root", &self.proc_root)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl VfPool {
    /// Opens (creating it if needed) the pool in `dir`, with liveness read from
    /// `/proc`, and runs [`repair`](VfPool::repair) (its findings are logged).
    pub fn open(
        dir: impl Into<PathBuf>,
        reset: Arc<dyn VfReset + Send + Sync>,
    ) -> Result<VfPool, PoolError> {
        VfPool::open_with_proc_root(dir, reset, DEFAULT_PROC_ROOT)
    }

    /// [`open`](VfPool::open) with liveness read from `proc_root` instead of
    /// `/proc` (tests fake processes there). This process's own identity is always
    /// read from `/proc/self`.
    pub fn open_with_proc_root(
        dir: impl Into<PathBuf>,
        reset: Arc<dyn VfReset + Send + Sync>,
        proc_root: impl Into<PathBuf>,
    ) -> Result<VfPool, PoolError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| PoolError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let pid = std::process::id();
        let me = ProcessId {
            pid,
            start_time: read_stat(Path::new(DEFAULT_PROC_ROOT), pid)
                .ok()
                .map(|s| s.start_time),
        };
        let pool = VfPool {
            dir,
            proc_root: proc_root.into(),
            reset,
            me,
        };
        for r in pool.repair()? {
            match &r.outcome {
                Outcome::Freed => log::info!(
                    "VF pool: repaired VF {} (was {}): reset and freed",
                    r.vf,
                    r.previous.kind()
                ),
                Outcome::Quarantined { reason } => log::warn!(
                    "VF pool: VF {} (was {}) stays quarantined: {reason}",
                    r.vf,
                    r.previous.kind()
                ),
            }
        }
        Ok(pool)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of `pool.json`.
    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Every record, sorted by VF address.
    pub fn list(&self) -> Result<Vec<PoolEntry>, PoolError> {
        let _lock = self.lock()?;
        Ok(self.load()?.into_values().collect())
    }

    /// Brings the records in line with `host`: new VFs are added as free, known
    /// ones get their PF, index, NUMA node and RDMA flag updated; free VFs that are
    /// gone are dropped, others that are gone stay, flagged `missing` (their owner
    /// is not forgotten, and reserve never picks them).
    pub fn sync(&self, host: &Host) -> Result<SyncReport, PoolError> {
        self.sync_vfs(&PoolVf::from_host(host))
    }

    /// [`sync`](VfPool::sync) against a list of VFs instead of a discovered host.
    pub fn sync_vfs(&self, vfs: &[PoolVf]) -> Result<SyncReport, PoolError> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let mut report = SyncReport::default();
        let mut seen = std::collections::BTreeSet::new();
        for found in vfs {
            seen.insert(found.vf.clone());
            match records.get_mut(&found.vf) {
                Some(entry) => {
                    if entry.missing {
                        entry.missing = false;
                        report.returned.push(found.vf.clone());
                    }
                    // A VF on vfio-pci may no longer show what its host driver did.
                    let queue_pairs = found.queue_pairs.or(entry.vf.queue_pairs);
                    entry.vf = PoolVf {
                        queue_pairs,
                        ..found.clone()
                    };
                }
                None => {
                    report.added.push(found.vf.clone());
                    records.insert(
                        found.vf.clone(),
                        PoolEntry {
                            vf: found.clone(),
                            missing: false,
                            state: VfState::Free,
                        },
                    );
                }
            }
        }
        records.retain(|addr, entry| {
            if seen.contains(addr) {
                return true;
            }
            if entry.state == VfState::Free {
                report.removed.push(addr.clone());
                return false;
            }
            if !entry.missing {
                log::warn!(
                    "VF pool: VF {addr} ({}{}) is no longer on the host",
                    entry.state.kind(),
                    entry
                        .state
                        .owner()
                        .map(|o| format!(", VM {o}"))
                        .unwrap_or_default()
                );
            }
            entry.missing = true;
            report.missing.push(addr.clone());
            true
        });
        self.save(&records)?;
        Ok(report)
    }

    /// Reserves a free VF matching `want` for `owner` and records it (`reserved`,
    /// with this process as the reserver) before returning it. The caller then
    /// configures the VF and calls [`commit`](VfPool::commit), or
    /// [`abort`](VfPool::abort) on failure. If this process dies in between, the
    /// next [`repair`](VfPool::repair) resets and frees the VF.
    pub fn reserve(&self, owner: &Owner, want: &Select) -> Result<PoolVf, PoolError> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let chosen = match &want.vf {
            Some(addr) => {
                let entry = records
                    .get(addr)
                    .ok_or_else(|| PoolError::UnknownVf { vf: addr.clone() })?;
                check_available(entry)?;
                if let Some(reason) = want.mismatch(&entry.vf) {
                    // It fits all but the tier: the hardware is too small.
                    if let (Some(seed), None) = (
                        want.performance_seed(),
                        want.without_tier().mismatch(&entry.vf),
                    ) {
                        return Err(PoolError::TooFewQueues {
                            vf: addr.clone(),
                            reason,
                            seed,
                        });
                    }
                    return Err(PoolError::Mismatch {
                        vf: addr.clone(),
                        reason,
                    });
                }
                addr.clone()
            }
            None => records
                .values()
                .filter(|e| e.is_free() && want.mismatch(&e.vf).is_none())
                .min_by(|a, b| (&a.vf.pf, a.vf.index).cmp(&(&b.vf.pf, b.vf.index)))
                .map(|e| e.vf.vf.clone())
                .ok_or_else(|| {
                    // Free VFs that fit all but the tier: the hardware is too small.
                    let any_tier = want.without_tier();
                    let seed = match want.performance_seed() {
                        Some(seed)
                            if records
                                .values()
                                .any(|e| e.is_free() && any_tier.mismatch(&e.vf).is_none()) =>
                        {
                            seed
                        }
                        _ => SeedError::new(ErrorId::ClusterNotEnoughResources, &owner.vm),
                    };
                    PoolError::NoFreeVf {
                        vm: owner.vm.clone(),
                        want: want.to_string(),
                        seed,
                    }
                })?,
        };
        let entry = records
            .get_mut(&chosen)
            .ok_or_else(|| PoolError::UnknownVf { vf: chosen.clone() })?;
        entry.state = VfState::Reserved {
            owner: owner.clone(),
            by: self.me.clone(),
            since: now(),
        };
        let vf = entry.vf.clone();
        self.save(&records)?;
        Ok(vf)
    }

    /// Marks `vf`, reserved for VM `owner.vm`, as allocated to `owner`. The owner
    /// recorded is the one given here, so a caller may reserve with the VM name
    /// only and commit with the VM process once it runs.
    pub fn commit(&self, vf: &str, owner: &Owner) -> Result<(), PoolError> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let entry = records
            .get_mut(vf)
            .ok_or_else(|| PoolError::UnknownVf { vf: vf.to_string() })?;
        match &entry.state {
            VfState::Reserved { owner: held, .. } if held.vm == owner.vm => {}
            other => {
                return Err(PoolError::NotOwner {
                    vf: vf.to_string(),
                    expected: owner.vm.clone(),
                    actual: format!("it is {}, not reserved by it", describe(other)),
                })
            }
        }
        entry.state = VfState::Allocated {
            owner: owner.clone(),
            since: now(),
        };
        self.save(&records)
    }

    /// Undoes a reservation of `vf` by VM `owner.vm`: resets the VF and frees it
    /// (or quarantines it when the reset fails).
    pub fn abort(&self, vf: &str, owner: &Owner) -> Result<Outcome, PoolError> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let entry = records
            .get(vf)
            .ok_or_else(|| PoolError::UnknownVf { vf: vf.to_string() })?;
        match &entry.state {
            VfState::Reserved { owner: held, .. } if held.vm == owner.vm => {
                let held = held.clone();
                self.release_locked(&mut records, vf, held)
            }
            other => Err(PoolError::NotOwner {
                vf: vf.to_string(),
                expected: owner.vm.clone(),
                actual: format!("it is {}, not reserved by it", describe(other)),
            }),
        }
    }

    /// Reserves a VF, resets it, runs `configure` on it, then commits, or aborts
    /// (reset and free) when the reset or `configure` fails. The reset first makes
    /// the VM start from the clean state even for a VF that [`VfPool::sync`] found
    /// with settings made before the pool knew it (a VLAN, a MAC, trust).
    pub fn allocate<E: fmt::Display>(
        &self,
        owner: &Owner,
        want: &Select,
        configure: impl FnOnce(&PoolVf) -> Result<(), E>,
    ) -> Result<PoolVf, PoolError> {
        let vf = self.reserve(owner, want)?;
        let configured = self
            .reset
            .reset(&vf)
            .map_err(|e| format!("resetting it first: {e}"))
            .and_then(|()| configure(&vf).map_err(|e| e.to_string()));
        match configured {
            Ok(()) => {
                self.commit(&vf.vf, owner)?;
                Ok(vf)
            }
            Err(e) => {
                let undo = match self.abort(&vf.vf, owner) {
                    Ok(Outcome::Freed) => "freed".to_string(),
                    Ok(Outcome::Quarantined { reason }) => format!("quarantined: {reason}"),
                    Err(e) => format!("left reserved ({e})"),
                };
                Err(PoolError::Configure {
                    vf: vf.vf,
                    vm: owner.vm.clone(),
                    message: e,
                    undo,
                })
            }
        }
    }

    /// Releases `vf` (reserved, allocated, or left releasing): records
    /// `releasing`, resets the VF, then frees it, or quarantines it when the reset
    /// fails. With `owner`, the VF must be held by that VM, otherwise nothing
    /// changes; `None` releases whatever holds it.
    pub fn release(&self, vf: &str, owner: Option<&str>) -> Result<Outcome, PoolError> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let entry = records
            .get(vf)
            .ok_or_else(|| PoolError::UnknownVf { vf: vf.to_string() })?;
        let held = match &entry.state {
            VfState::Reserved { owner, .. }
            | VfState::Allocated { owner, .. }
            | VfState::Releasing { owner, .. } => owner.clone(),
            other => {
                return Err(PoolError::NotHeld {
                    vf: vf.to_string(),
                    actual: format!("it is {}", describe(other)),
                })
            }
        };
        if let Some(want) = owner {
            if held.vm != want {
                return Err(PoolError::NotOwner {
                    vf: vf.to_string(),
                    expected: want.to_string(),
                    actual: format!("it is {}", describe(&entry.state)),
                });
            }
        }
        self.release_locked(&mut records, vf, held)
    }

    /// Releases every allocated VF whose owner `alive` says is gone.
    pub fn reclaim(&self, alive: &dyn Fn(&Owner) -> bool) -> Result<Vec<Reclaimed>, PoolError> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let dead: Vec<(String, Owner)> = records
            .iter()
            .filter_map(|(addr, e)| match &e.state {
                VfState::Allocated { owner, .. } if !alive(owner) => {
                    Some((addr.clone(), owner.clone()))
                }
                _ => None,
            })
            .collect();
        let mut out = Vec::new();
        for (vf, owner) in dead {
            let outcome = self.release_locked(&mut records, &vf, owner.clone())?;
            out.push(Reclaimed { vf, owner, outcome });
        }
        Ok(out)
    }

    /// [`reclaim`](VfPool::reclaim) with [`Owner::is_alive`] on the pool's proc
    /// root: VFs of VM processes that are gone (or whose pid was reused).
    pub fn reclaim_dead(&self) -> Result<Vec<Reclaimed>, PoolError> {
        let root = self.proc_root.clone();
        self.reclaim(&move |o: &Owner| o.is_alive(&root))
    }

    /// Puts right what an interrupted operation left: `reserved` records whose
    /// reserving process is gone, `releasing` records, and quarantined VFs present
    /// on the host are reset and freed (or stay quarantined with the new reason).
    /// Run by [`open`](VfPool::open).
    pub fn repair(&self) -> Result<Vec<Repaired>, PoolError> {
        let _lock = self.lock()?;
        let mut records = self.load()?;
        let todo: Vec<(String, VfState)> = records
            .iter()
            .filter(|(_, e)| match &e.state {
                VfState::Free | VfState::Allocated { .. } => false,
                VfState::Reserved { by, .. } => !self.reserver_alive(by),
                VfState::Releasing { .. } => true,
                VfState::Quarantined { .. } => !e.missing,
            })
            .map(|(addr, e)| (addr.clone(), e.state.clone()))
            .collect();
        let mut out = Vec::new();
        for (vf, previous) in todo {
            let outcome = match &previous {
                VfState::Reserved { owner, .. } | VfState::Releasing { owner, .. } => {
                    self.release_locked(&mut records, &vf, owner.clone())?
                }
                VfState::Quarantined { owner, .. } => {
                    self.reset_locked(&mut records, &vf, owner.clone())?
                }
                VfState::Free | VfState::Allocated { .. } => continue,
            };
            out.push(Repaired {
                vf,
                previous,
                outcome,
            });
        }
        Ok(out)
    }

    fn reserver_alive(&self, by: &ProcessId) -> bool {
        if by.pid == self.me.pid {
            return match (by.start_time, self.me.start_time) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            };
        }
        process_alive(&self.proc_root, by.pid, by.start_time)
    }

    /// Records `releasing` durably, then resets.
    fn release_locked(
        &self,
        records: &mut Records,
        vf: &str,
        owner: Owner,
    ) -> Result<Outcome, PoolError> {
        let entry = records
            .get_mut(vf)
            .ok_or_else(|| PoolError::UnknownVf { vf: vf.to_string() })?;
        entry.state = VfState::Releasing {
            owner: owner.clone(),
            since: now(),
        };
        self.save(records)?;
        self.reset_locked(records, vf, Some(owner))
    }

    /// Resets `vf` (already out of the pool) and records `free` or `quarantined`.
    fn reset_locked(
        &self,
        records: &mut Records,
        vf: &str,
        owner: Option<Owner>,
    ) -> Result<Outcome, PoolError> {
        let entry = records
            .get_mut(vf)
            .ok_or_else(|| PoolError::UnknownVf { vf: vf.to_string() })?;
        let result = if entry.missing {
            Err("the VF is not on the host; it is reset when a sync finds it again".to_string())
        } else {
            self.reset.reset(&entry.vf)
        };
        let outcome = match result {
            Ok(()) => {
                entry.state = VfState::Free;
                Outcome::Freed
            }
            Err(reason) => {
                log::warn!("VF pool: reset of VF {vf} failed, quarantined: {reason}");
                entry.state = VfState::Quarantined {
                    owner,
                    reason: reason.clone(),
                    since: now(),
                };
                Outcome::Quarantined { reason }
            }
        };
        self.save(records)?;
        Ok(outcome)
    }

    fn lock(&self) -> Result<File, PoolError> {
        let path = self.dir.join(LOCK_FILE);
        let io_err = |action, source| PoolError::Io {
            action,
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err("open", e))?;
        file.lock().map_err(|e| io_err("lock", e))?;
        Ok(file)
    }

    fn load(&self) -> Result<Records, PoolError> {
        let path = self.state_path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Records::new()),
            Err(source) => {
                return Err(PoolError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let version: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| PoolError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        match version.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(PoolError::UnsupportedVersion {
                    path,
                    found: u32::try_from(v).unwrap_or(u32::MAX),
                })
            }
            None => {
                return Err(PoolError::Corrupt {
                    path,
                    message: "no numeric \"version\"".to_string(),
                })
            }
        }
        let state: StateFile = serde_json::from_value(version).map_err(|e| PoolError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut records = Records::new();
        for entry in state.vfs {
            let addr = entry.vf.vf.clone();
            if records.insert(addr.clone(), entry).is_some() {
                return Err(PoolError::Corrupt {
                    path,
                    message: format!("VF {addr} is recorded twice"),
                });
            }
        }
        Ok(records)
    }

    fn save(&self, records: &Records) -> Result<(), PoolError> {
        let path = self.state_path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let state = StateFile {
            version: FORMAT_VERSION,
            vfs: records.values().cloned().collect(),
        };
        let mut text = serde_json::to_vec_pretty(&state).map_err(|e| PoolError::Io {
            action: "serialize",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        text.push(b'\n');
        let io_err = |action, path: &Path, source| PoolError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::create(&tmp).map_err(|e| io_err("create", &tmp, e))?;
        file.write_all(&text)
            .map_err(|e| io_err("write", &tmp, e))?;
        file.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(|e| io_err("rename into", &path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_err("fsync", &self.dir, e))
    }
}

/// Fails unless the entry can be reserved.
fn check_available(entry: &PoolEntry) -> Result<(), PoolError> {
    let vf = entry.vf.vf.clone();
    if entry.missing {
        return Err(PoolError::Unavailable {
            vf,
            reason: "it is no longer on the host".to_string(),
        });
    }
    match &entry.state {
        VfState::Free => Ok(()),
        VfState::Reserved { owner, .. } => Err(PoolError::Owned {
            vf,
            state: "reserved",
            owner: owner.clone(),
        }),
        VfState::Allocated { owner, .. } => Err(PoolError::Owned {
            vf,
            state: "allocated",
            owner: owner.clone(),
        }),
        VfState::Releasing { owner, .. } => Err(PoolError::Unavailable {
            vf,
            reason: format!("it is being released by VM {owner}"),
        }),
        VfState::Quarantined { reason, .. } => Err(PoolError::Unavailable {
            vf,
            reason: format!("it is quarantined: {reason}"),
        }),
    }
}

fn describe(state: &VfState) -> String {
    match state.owner() {
        Some(o) => format!("{} (VM {o})", state.kind()),
        None => state.kind().to_string(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Stat {
    state: char,
    start_time: u64,
}

fn stat_path(proc_root: &Path, pid: u32) -> PathBuf {
    proc_root.join(pid.to_string()).join("stat")
}

/// Reads the state (field 3) and start time (field 22) of `<proc_root>/<pid>/stat`.
fn read_stat(proc_root: &Path, pid: u32) -> io::Result<Stat> {
    let text = fs::read_to_string(stat_path(proc_root, pid))?;
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed stat");
    // The command name (field 2) is in parentheses and may hold anything.
    let close = text.rfind(')').ok_or_else(bad)?;
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let state = rest
        .first()
        .and_then(|s| s.chars().next())
        .ok_or_else(bad)?;
    let start_time = rest
        .get(22 - 3)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok(Stat { state, start_time })
}

/// Start time of process `pid` (field 22 of `<proc_root>/<pid>/stat`, clock ticks
/// since boot); `None` when it is gone, a zombie, or its stat is unreadable.
pub fn process_start_time(proc_root: &Path, pid: u32) -> Option<u64> {
    read_stat(proc_root, pid)
        .ok()
        .filter(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
        .map(|s| s.start_time)
}

fn process_alive(proc_root: &Path, pid: u32, start_time: Option<u64>) -> bool {
    match read_stat(proc_root, pid) {
        Ok(stat) => {
            !matches!(stat.state, 'Z' | 'X' | 'x')
                && start_time.is_none_or(|t| t == stat.start_time)
        }
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::process::{Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::sysfs::discover;
    use crate::test_utils::{FakeSysfs, PfSpec, VfSpec};

    /// A unique temp directory, removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(tag: &str) -> TestDir {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "sriov-pool-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("temp dir");
            TestDir(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A [`VfReset`] that records its calls and fails for chosen VFs.
    #[derive(Default)]
    struct RecordingReset {
        calls: Mutex<Vec<String>>,
        failing: Mutex<BTreeSet<String>>,
    }

    impl RecordingReset {
        fn calls(&self) -> Vec<String> {
            self.calls.lock().expect("lock").clone()
        }

        /// Forgets the calls so far (e.g. the reset every allocation starts with).
        fn clear(&self) {
            self.calls.lock().expect("lock").clear();
        }

        fn fail(&self, vf: &str, on: bool) {
            let mut f = self.failing.lock().expect("lock");
            if on {
                f.insert(vf.to_string());
            } else {
                f.remove(vf);
            }
        }
    }

    impl VfReset for RecordingReset {
        fn reset(&self, vf: &PoolVf) -> Result<(), String> {
            self.calls.lock().expect("lock").push(vf.vf.clone());
            if self.failing.lock().expect("lock").contains(&vf.vf) {
                Err(format!("RTM_SETLINK on VF {} failed: EBUSY", vf.vf))
            } else {
                Ok(())
            }
        }
    }

    fn vf_addr(pf: u32, i: u32) -> String {
        format!("0000:{:02x}:{:02x}.{}", 0x3b + pf, 2 + i / 8, i % 8)
    }

    /// A fake host: `vfs_per_pf[p]` VFs on PF `p` (netdev `pfP`, NUMA node `p`);
    /// VF 1 of each PF has RDMA.
    fn fake_host(vfs_per_pf: &[u32]) -> (FakeSysfs, Host) {
        let fake = FakeSysfs::new();
        for (p, &n) in (0u32..).zip(vfs_per_pf) {
            let pf = format!("0000:{:02x}:00.0", 0x3b + p);
            let numa = i32::try_from(p).expect("small");
            fake.add_pf(&PfSpec::new(&pf).netdev(&format!("pf{p}")).numa_node(numa));
            for i in 0..n {
                let mut spec = VfSpec::vfio(i, &vf_addr(p, i)).numa_node(numa);
                if i == 1 {
                    spec = spec.rdma("mlx5_1");
                }
                fake.add_vf(&pf, &spec);
            }
        }
        let host = discover(&fake.root()).expect("discover");
        (fake, host)
    }

    fn open(dir: &TestDir, reset: &Arc<RecordingReset>) -> VfPool {
        let r: Arc<dyn VfReset + Send + Sync> = reset.clone();
        VfPool::open(dir.path(), r).expect("open")
    }

    fn open_fake_proc(dir: &TestDir, reset: &Arc<RecordingReset>, proc_root: &Path) -> VfPool {
        let r: Arc<dyn VfReset + Send + Sync> = reset.clone();
        VfPool::open_with_proc_root(dir.path(), r, proc_root).expect("open")
    }

    /// A pool over a fresh dir, synced with `fake_host(vfs_per_pf)`.
    fn pool_with(vfs_per_pf: &[u32]) -> (TestDir, Arc<RecordingReset>, VfPool) {
        let dir = TestDir::new("unit");
        let reset = Arc::new(RecordingReset::default());
        let pool = open(&dir, &reset);
        let (_fake, host) = fake_host(vfs_per_pf);
        pool.sync(&host).expect("sync");
        (dir, reset, pool)
    }

    fn state_of(pool: &VfPool, vf: &str) -> VfState {
        pool.list()
            .expect("list")
            .into_iter()
            .find(|e| e.vf.vf == vf)
            .map(|e| e.state)
            .expect("VF listed")
    }

    /// Writes `<root>/<pid>/stat` with a command name holding spaces and parens.
    fn fake_stat(root: &Path, pid: u32, state: char, start_time: u64) {
        let dir = root.join(pid.to_string());
        fs::create_dir_all(&dir).expect("proc dir");
        let middle = vec!["0"; 18].join(" ");
        fs::write(
            dir.join("stat"),
            format!("{pid} (qemu (vm) x) {state} {middle} {start_time} 0 0 0\n"),
        )
        .expect("stat");
    }

    fn reserved_entry(vf: &str, owner: Owner, by: u32) -> PoolEntry {
        PoolEntry {
            vf: PoolVf {
                vf: vf.to_string(),
                pf: "0000:3b:00.0".to_string(),
                pf_netdev: Some("pf0".to_string()),
                index: 0,
                numa: Some(0),
                rdma: false,
                queue_pairs: None,
            },
            missing: false,
            state: VfState::Reserved {
                owner,
                by: ProcessId {
                    pid: by,
                    start_time: Some(7),
                },
                since: 1,
            },
        }
    }

    fn write_state(dir: &Path, entries: Vec<PoolEntry>) {
        let text = serde_json::to_string_pretty(&StateFile {
            version: FORMAT_VERSION,
            vfs: entries,
        })
        .expect("serialize");
        fs::write(dir.join(STATE_FILE), text).expect("write state");
    }

    #[test]
    fn test_allocate_twice_gives_different_vfs() {
        let (_dir, reset, pool) = pool_with(&[4]);
        let a = pool
            .allocate(&Owner::vm("vm1"), &Select::default(), |_| {
                Ok::<_, String>(())
            })
            .expect("first");
        let b = pool
            .allocate(&Owner::vm("vm2"), &Select::default(), |_| {
                Ok::<_, String>(())
            })
            .expect("second");
        assert_ne!(a.vf, b.vf);
        assert_eq!(a.vf, vf_addr(0, 0));
        assert_eq!(a.pf_netdev.as_deref(), Some("pf0"));
        assert!(
            matches!(state_of(&pool, &a.vf), VfState::Allocated { owner, .. } if owner.vm == "vm1")
        );
        assert!(
            matches!(state_of(&pool, &b.vf), VfState::Allocated { owner, .. } if owner.vm == "vm2")
        );
        // Each allocation starts from a reset VF.
        assert_eq!(reset.calls(), vec![a.vf.clone(), b.vf.clone()]);
    }

    #[test]
    fn test_exhausted_pool_is_cluster_not_enough_resources() {
        let (_dir, _reset, pool) = pool_with(&[2]);
        for vm in ["vm1", "vm2"] {
            pool.reserve(&Owner::vm(vm), &Select::default())
                .expect("reserve");
        }
        let err = pool
            .reserve(&Owner::vm("vm3"), &Select::default())
            .expect_err("exhausted");
        assert_eq!(
            err.seed_error().map(|s| s.id),
            Some(ErrorId::ClusterNotEnoughResources)
        );
        let text = err.to_string();
        assert!(text.contains("cluster_not_enough_resources"), "{text}");
        assert!(text.contains("VM vm3"), "{text}");
        assert!(text.contains("any VF"), "{text}");
    }

    #[test]
    fn test_performance_needs_the_tiers_queue_pairs() {
        let dir = TestDir::new("unit");
        let reset = Arc::new(RecordingReset::default());
        let pool = open(&dir, &reset);
        let vf = |i: u32, queue_pairs: Option<u16>| PoolVf {
            vf: vf_addr(0, i),
            pf: "0000:3b:00.0".to_string(),
            pf_netdev: Some("pf0".to_string()),
            index: i,
            numa: None,
            rdma: false,
            queue_pairs,
        };
        pool.sync_vfs(&[vf(0, Some(1)), vf(1, Some(4)), vf(2, None)])
            .expect("sync");
        let medium = Select {
            performance: Some(Tier::Medium),
            ..Select::default()
        };
        // Auto skips the one-queue VF.
        let got = pool.reserve(&Owner::vm("vm1"), &medium).expect("medium");
        assert_eq!(got.vf, vf_addr(0, 1));
        // Named, it is refused with the catalogue error and the reason.
        let named = Select {
            vf: Some(vf_addr(0, 0)),
            ..medium.clone()
        };
        let err = pool
            .reserve(&Owner::vm("vm2"), &named)
            .expect_err("too small");
        assert!(matches!(err, PoolError::TooFewQueues { .. }), "{err}");
        assert_eq!(
            err.seed_error().map(|s| s.id),
            Some(ErrorId::CannotProvisionPerformance)
        );
        let text = err.to_string();
        assert!(
            text.contains("cannot_provision_performance")
                && text.contains("1 hardware queue pair(s), Medium performance needs 2"),
            "{text}"
        );
        assert!(matches!(state_of(&pool, &vf_addr(0, 0)), VfState::Free));
        // Too small and on the wrong node: the node is what does not fit.
        let elsewhere = Select {
            numa: Some(1),
            ..named.clone()
        };
        let err = pool
            .reserve(&Owner::vm("vm2"), &elsewhere)
            .expect_err("wrong node");
        assert!(matches!(err, PoolError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("not on NUMA node 1"), "{err}");
        // A count nobody could read is taken at its word.
        let unknown = pool
            .reserve(&Owner::vm("vm3"), &medium)
            .expect("unknown count");
        assert_eq!(unknown.vf, vf_addr(0, 2));
        // Only the small VF is left: the hardware, not the cluster, is short.
        let err = pool
            .reserve(&Owner::vm("vm4"), &medium)
            .expect_err("none fits");
        assert_eq!(
            err.seed_error().map(|s| s.id),
            Some(ErrorId::CannotProvisionPerformance),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("2 queue pair(s) for Medium performance"),
            "{err}"
        );
        // Low fits any VF; with none free it is the cluster that is short.
        let low = Select {
            performance: Some(Tier::Low),
            ..Select::default()
        };
        pool.reserve(&Owner::vm("vm4"), &low).expect("low");
        let err = pool
            .reserve(&Owner::vm("vm5"), &low)
            .expect_err("exhausted");
        assert_eq!(
            err.seed_error().map(|s| s.id),
            Some(ErrorId::ClusterNotEnoughResources)
        );
        // A later sync that cannot read the count (vfio-pci, no root) keeps it.
        pool.sync_vfs(&[vf(0, None), vf(1, Some(4)), vf(2, None)])
            .expect("resync");
        let kept = pool.list().expect("list");
        assert_eq!(kept[0].vf.queue_pairs, Some(1));
    }

    #[test]
    fn test_explicit_owned_vf_names_vf_and_owner() {
        let (_dir, _reset, pool) = pool_with(&[2]);
        let vf = vf_addr(0, 1);
        let want = Select {
            vf: Some(vf.clone()),
            ..Select::default()
        };
        pool.allocate(&Owner::vm("vm1"), &want, |_| Ok::<_, String>(()))
            .expect("allocate");
        let err = pool.reserve(&Owner::vm("vm2"), &want).expect_err("owned");
        assert!(matches!(&err, PoolError::Owned { owner, .. } if owner.vm == "vm1"));
        let text = err.to_string();
        assert!(text.contains(&vf) && text.contains("vm1"), "{text}");
        let unknown = pool
            .reserve(
                &Owner::vm("vm2"),
                &Select {
                    vf: Some("0000:99:00.1".to_string()),
                    ..Select::default()
                },
            )
            .expect_err("unknown");
        assert!(unknown.to_string().contains("0000:99:00.1"));
    }

    #[test]
    fn test_select_filters_by_pf_numa_and_rdma() {
        let (_dir, _reset, pool) = pool_with(&[3, 3]);
        let by_netdev = pool
            .reserve(
                &Owner::vm("a"),
                &Select {
                    pf: Some("pf1".to_string()),
                    ..Select::default()
                },
            )
            .expect("pf1");
        assert_eq!(by_netdev.pf, "0000:3c:00.0");
        let numa = pool
            .reserve(
                &Owner::vm("b"),
                &Select {
                    numa: Some(0),
                    rdma: true,
                    ..Select::default()
                },
            )
            .expect("rdma numa 0");
        assert_eq!(numa.vf, vf_addr(0, 1));
        let err = pool
            .reserve(
                &Owner::vm("c"),
                &Select {
                    numa: Some(0),
                    rdma: true,
                    ..Select::default()
                },
            )
            .expect_err("no second rdma VF on node 0");
        assert!(err.to_string().contains("numa node 0, rdma"), "{err}");
        let mismatch = pool
            .reserve(
                &Owner::vm("c"),
                &Select {
                    vf: Some(vf_addr(0, 2)),
                    rdma: true,
                    ..Select::default()
                },
            )
            .expect_err("explicit VF without RDMA");
        assert!(matches!(mismatch, PoolError::Mismatch { .. }), "{mismatch}");
    }

    #[test]
    fn test_release_resets_then_frees() {
        let (_dir, reset, pool) = pool_with(&[2]);
        let vf = pool
            .allocate(&Owner::vm("vm1"), &Select::default(), |_| {
                Ok::<_, String>(())
            })
            .expect("allocate");
        assert_eq!(reset.calls(), vec![vf.vf.clone()]);
        reset.clear();
        let err = pool.release(&vf.vf, Some("vm2")).expect_err("wrong owner");
        assert!(matches!(err, PoolError::NotOwner { .. }));
        assert!(err.to_string().contains("vm1"), "{err}");
        assert!(matches!(state_of(&pool, &vf.vf), VfState::Allocated { .. }));
        assert!(reset.calls().is_empty());

        assert_eq!(
            pool.release(&vf.vf, Some("vm1")).expect("release"),
            Outcome::Freed
        );
        assert_eq!(reset.calls(), vec![vf.vf.clone()]);
        assert_eq!(state_of(&pool, &vf.vf), VfState::Free);
        let again = pool.release(&vf.vf, None).expect_err("already free");
        assert!(again.to_string().contains("free"), "{again}");
        // Back in the pool: the lowest VF is picked again.
        let next = pool
            .reserve(&Owner::vm("vm3"), &Select::default())
            .expect("reserve");
        assert_eq!(next.vf, vf.vf);
    }

    #[test]
    fn test_reset_failure_quarantines_and_repair_retries() {
        let (_dir, reset, pool) = pool_with(&[1]);
        let vf = pool
            .allocate(&Owner::vm("vm1"), &Select::default(), |_| {
                Ok::<_, String>(())
            })
            .expect("allocate");
        reset.fail(&vf.vf, true);
        let outcome = pool.release(&vf.vf, Some("vm1")).expect("release");
        assert!(matches!(&outcome, Outcome::Quarantined { reason } if reason.contains("EBUSY")));
        assert!(matches!(
            state_of(&pool, &vf.vf),
            VfState::Quarantined { owner: Some(o), .. } if o.vm == "vm1"
        ));
        let err = pool
            .reserve(&Owner::vm("vm2"), &Select::default())
            .expect_err("quarantined VF is out of the pool");
        assert!(err.seed_error().is_some());
        let explicit = pool
            .reserve(
                &Owner::vm("vm2"),
                &Select {
                    vf: Some(vf.vf.clone()),
                    ..Select::default()
                },
            )
            .expect_err("quarantined");
        assert!(explicit.to_string().contains("quarantined"), "{explicit}");

        // Still failing: stays quarantined.
        let repaired = pool.repair().expect("repair");
        assert_eq!(repaired.len(), 1);
        assert!(matches!(repaired[0].outcome, Outcome::Quarantined { .. }));
        reset.fail(&vf.vf, false);
        let repaired = pool.repair().expect("repair");
        assert_eq!(repaired[0].outcome, Outcome::Freed);
        assert_eq!(state_of(&pool, &vf.vf), VfState::Free);
        // Allocation's reset, the release's, two repairs.
        assert_eq!(reset.calls().len(), 4);
    }

    #[test]
    fn test_configure_failure_aborts_the_reservation() {
        let (_dir, reset, pool) = pool_with(&[1]);
        let err = pool
            .allocate(&Owner::vm("vm1"), &Select::default(), |vf| {
                // While configuring, the VF is recorded as reserved.
                assert!(matches!(state_of(&pool, &vf.vf), VfState::Reserved { .. }));
                Err("cannot set MAC")
            })
            .expect_err("configure fails");
        let text = err.to_string();
        assert!(
            text.contains("cannot set MAC") && text.contains("freed"),
            "{text}"
        );
        // The reset before configuring, and the abort's.
        assert_eq!(reset.calls(), vec![vf_addr(0, 0), vf_addr(0, 0)]);
        assert_eq!(state_of(&pool, &vf_addr(0, 0)), VfState::Free);
    }

    #[test]
    fn test_allocation_whose_first_reset_fails_quarantines_it_and_the_next_takes_another() {
        let (_dir, reset, pool) = pool_with(&[2]);
        reset.fail(&vf_addr(0, 0), true);
        let err = pool
            .allocate(&Owner::vm("vm1"), &Select::default(), |_| {
                Ok::<_, String>(())
            })
            .expect_err("reset fails");
        let text = err.to_string();
        assert!(
            text.contains("resetting it first") && text.contains("EBUSY"),
            "{text}"
        );
        assert!(matches!(
            state_of(&pool, &vf_addr(0, 0)),
            VfState::Quarantined { .. }
        ));
        // The next allocation takes the other VF.
        let vf = pool
            .allocate(&Owner::vm("vm1"), &Select::default(), |_| {
                Ok::<_, String>(())
            })
            .expect("second VF");
        assert_eq!(vf.vf, vf_addr(0, 1));
    }

    #[test]
    fn test_commit_checks_the_vm_and_records_the_process() {
        let (_dir, _reset, pool) = pool_with(&[1]);
        let vf = pool
            .reserve(&Owner::vm("vm1"), &Select::default())
            .expect("reserve");
        let err = pool
            .commit(&vf.vf, &Owner::vm("vm2"))
            .expect_err("other VM");
        assert!(err.to_string().contains("vm1"), "{err}");
        let err = pool.abort(&vf.vf, &Owner::vm("vm2")).expect_err("other VM");
        assert!(matches!(err, PoolError::NotOwner { .. }));
        let me = Owner::process("vm1", std::process::id(), Path::new("/proc")).expect("self");
        assert!(me.start_time.is_some());
        pool.commit(&vf.vf, &me).expect("commit");
        assert_eq!(
            state_of(&pool, &vf.vf).owner(),
            Some(&me),
            "the committed owner carries the pid"
        );
        assert!(pool.commit(&vf.vf, &me).is_err(), "not reserved any more");
    }

    #[test]
    fn test_reclaim_of_a_real_dead_process() {
        let (_dir, reset, pool) = pool_with(&[2]);
        let mut child = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let owner = Owner::process("vm1", child.id(), Path::new("/proc")).expect("owner");
        let mut zombie = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let zowner = Owner::process("vm2", zombie.id(), Path::new("/proc")).expect("owner");
        let a = pool
            .allocate(&owner, &Select::default(), |_| Ok::<_, String>(()))
            .expect("allocate");
        let b = pool
            .allocate(&zowner, &Select::default(), |_| Ok::<_, String>(()))
            .expect("allocate");
        let by_name = pool.reserve(&Owner::vm("no-pid"), &Select::default()).err();
        assert!(by_name.is_some(), "pool of 2 is full");
        assert!(pool.reclaim_dead().expect("reclaim").is_empty());

        child.kill().expect("kill");
        child.wait().expect("wait");
        // Killed but not reaped: a zombie is dead too.
        zombie.kill().expect("kill");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while zowner.is_alive(Path::new("/proc")) {
            assert!(std::time::Instant::now() < deadline, "zombie never showed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!owner.is_alive(Path::new("/proc")));
        let got = pool.reclaim_dead().expect("reclaim");
        zombie.wait().expect("wait");
        let vfs: BTreeSet<String> = got.iter().map(|r| r.vf.clone()).collect();
        assert_eq!(vfs, BTreeSet::from([a.vf.clone(), b.vf.clone()]));
        assert!(got.iter().all(|r| r.outcome == Outcome::Freed));
        assert_eq!(
            got.iter().find(|r| r.vf == a.vf).map(|r| &r.owner),
            Some(&owner)
        );
        let calls: BTreeSet<String> = reset.calls().into_iter().collect();
        assert_eq!(calls, vfs);
        assert_eq!(state_of(&pool, &a.vf), VfState::Free);
    }

    #[test]
    fn test_reclaim_with_a_fake_proc_root_and_pid_reuse() {
        let proc_dir = TestDir::new("proc");
        let proc_root = proc_dir.path();
        fake_stat(proc_root, 100, 'S', 5000);
        fake_stat(proc_root, 200, 'S', 6000);
        fake_stat(proc_root, 300, 'R', 7000);
        let dir = TestDir::new("unit");
        let reset = Arc::new(RecordingReset::default());
        let pool = open_fake_proc(&dir, &reset, proc_root);
        let (_fake, host) = fake_host(&[4]);
        pool.sync(&host).expect("sync");
        let alive = Owner::process("alive", 100, proc_root).expect("owner");
        assert_eq!(alive.start_time, Some(5000));
        let reused = Owner::process("reused", 200, proc_root).expect("owner");
        let gone = Owner::process("gone", 300, proc_root).expect("owner");
        let none = Owner::vm("no-pid");
        let mut vfs = BTreeMap::new();
        for o in [&alive, &reused, &gone, &none] {
            let vf = pool
                .allocate(o, &Select::default(), |_| Ok::<_, String>(()))
                .expect("allocate");
            vfs.insert(o.vm.clone(), vf.vf);
        }
        reset.clear();
        assert!(pool.reclaim_dead().expect("reclaim").is_empty());
        // Pid 200 now runs something else (another start time); pid 300 is gone.
        fake_stat(proc_root, 200, 'S', 6001);
        fs::remove_dir_all(proc_root.join("300")).expect("rm");
        assert!(!reused.is_alive(proc_root));
        assert!(!gone.is_alive(proc_root));
        assert!(alive.is_alive(proc_root));
        assert!(none.is_alive(proc_root), "no pid: never reclaimed");
        let got = pool.reclaim_dead().expect("reclaim");
        let names: BTreeSet<&str> = got.iter().map(|r| r.owner.vm.as_str()).collect();
        assert_eq!(names, BTreeSet::from(["reused", "gone"]));
        assert_eq!(reset.calls().len(), 2);
        assert_eq!(state_of(&pool, &vfs["reused"]), VfState::Free);
        assert!(matches!(
            state_of(&pool, &vfs["alive"]),
            VfState::Allocated { .. }
        ));
        assert!(matches!(
            state_of(&pool, &vfs["no-pid"]),
            VfState::Allocated { .. }
        ));
        // A custom liveness test.
        let got = pool
            .reclaim(&|o: &Owner| o.vm != "no-pid")
            .expect("reclaim");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].vf, vfs["no-pid"]);
    }

    #[test]
    fn test_crash_mid_allocation_is_repaired_on_open() {
        let proc_dir = TestDir::new("proc");
        let proc_root = proc_dir.path();
        fake_stat(proc_root, 4242, 'S', 7);
        let dir = TestDir::new("unit");
        let dead = vf_addr(0, 0);
        let live = vf_addr(0, 1);
        write_state(
            dir.path(),
            vec![
                reserved_entry(&dead, Owner::vm("crashed"), 4_000_001),
                reserved_entry(&live, Owner::vm("busy"), 4242),
            ],
        );
        let reset = Arc::new(RecordingReset::default());
        let pool = open_fake_proc(&dir, &reset, proc_root);
        assert_eq!(reset.calls(), vec![dead.clone()]);
        assert_eq!(state_of(&pool, &dead), VfState::Free);
        assert!(
            matches!(state_of(&pool, &live), VfState::Reserved { .. }),
            "a reservation by a live process is left alone"
        );
        // A crash during a release leaves "releasing": repaired too.
        let mut entries = pool.list().expect("list");
        entries[1].state = VfState::Releasing {
            owner: Owner::vm("busy"),
            since: 1,
        };
        write_state(dir.path(), entries);
        drop(pool);
        let pool = open_fake_proc(&dir, &reset, proc_root);
        assert_eq!(reset.calls(), vec![dead, live.clone()]);
        assert_eq!(state_of(&pool, &live), VfState::Free);
    }

    #[test]
    fn test_own_reservations_survive_a_repair() {
        let (_dir, reset, pool) = pool_with(&[1]);
        let vf = pool
            .reserve(&Owner::vm("vm1"), &Select::default())
            .expect("reserve");
        assert!(pool.repair().expect("repair").is_empty());
        assert!(matches!(state_of(&pool, &vf.vf), VfState::Reserved { .. }));
        assert!(reset.calls().is_empty());
    }

    #[test]
    fn test_corrupt_state_file_is_a_clear_error_and_left_untouched() {
        let dir = TestDir::new("unit");
        let path = dir.path().join(STATE_FILE);
        let garbage = b"{\"version\": 1, \"vfs\": [ {\"vf\": tru";
        fs::write(&path, garbage).expect("write");
        let reset: Arc<dyn VfReset + Send + Sync> = Arc::new(RecordingReset::default());
        let err = VfPool::open(dir.path(), reset.clone()).expect_err("corrupt");
        assert!(matches!(err, PoolError::Corrupt { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(fs::read(&path).expect("read"), garbage);

        fs::write(&path, "{\"version\": 9, \"vfs\": []}").expect("write");
        let err = VfPool::open(dir.path(), reset.clone()).expect_err("version");
        assert!(
            matches!(err, PoolError::UnsupportedVersion { found: 9, .. }),
            "{err}"
        );

        let entry = reserved_entry(&vf_addr(0, 0), Owner::vm("a"), 1);
        write_state(dir.path(), vec![entry.clone(), entry]);
        let err = VfPool::open(dir.path(), reset).expect_err("duplicate");
        assert!(err.to_string().contains("recorded twice"), "{err}");
    }

    #[test]
    fn test_sync_with_vanished_vfs_keeps_owners() {
        let (_dir, reset, pool) = pool_with(&[3]);
        let owned = pool
            .allocate(
                &Owner::vm("vm1"),
                &Select {
                    vf: Some(vf_addr(0, 2)),
                    ..Select::default()
                },
                |_| Ok::<_, String>(()),
            )
            .expect("allocate");
        reset.clear();
        // The PF now has one VF: VF 1 (free) and VF 2 (owned) vanished.
        let (_fake, smaller) = fake_host(&[1]);
        let report = pool.sync(&smaller).expect("sync");
        assert!(report.added.is_empty());
        assert_eq!(report.removed, vec![vf_addr(0, 1)]);
        assert_eq!(report.missing, vec![owned.vf.clone()]);
        let entries = pool.list().expect("list");
        assert_eq!(entries.len(), 2);
        let kept = entries.iter().find(|e| e.vf.vf == owned.vf).expect("kept");
        assert!(kept.missing);
        assert_eq!(kept.state.owner().map(|o| o.vm.as_str()), Some("vm1"));
        let err = pool
            .reserve(
                &Owner::vm("vm2"),
                &Select {
                    vf: Some(owned.vf.clone()),
                    ..Select::default()
                },
            )
            .expect_err("missing");
        assert!(err.to_string().contains("no longer on the host"), "{err}");
        // Released while missing: cannot be reset, so quarantined, not freed.
        let outcome = pool.release(&owned.vf, Some("vm1")).expect("release");
        assert!(matches!(outcome, Outcome::Quarantined { .. }));
        assert!(reset.calls().is_empty());
        assert!(
            pool.repair().expect("repair").is_empty(),
            "missing: not retried"
        );

        let (_fake, full) = fake_host(&[3]);
        let report = pool.sync(&full).expect("sync");
        assert_eq!(report.added, vec![vf_addr(0, 1)]);
        assert_eq!(report.returned, vec![owned.vf.clone()]);
        let repaired = pool.repair().expect("repair");
        assert_eq!(repaired.len(), 1);
        assert_eq!(repaired[0].outcome, Outcome::Freed);
        assert_eq!(reset.calls(), vec![owned.vf.clone()]);
        assert_eq!(pool.list().expect("list").len(), 3);
    }

    #[test]
    fn test_state_file_format() {
        let (dir, _reset, pool) = pool_with(&[2]);
        let me = Owner::process("vm1", std::process::id(), Path::new("/proc")).expect("self");
        pool.allocate(&me, &Select::default(), |_| Ok::<_, String>(()))
            .expect("allocate");
        let text = fs::read_to_string(dir.path().join(STATE_FILE)).expect("read");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["version"], 1);
        let first = &v["vfs"][0];
        assert_eq!(first["vf"], vf_addr(0, 0).as_str());
        assert_eq!(first["pf"], "0000:3b:00.0");
        assert_eq!(first["pf_netdev"], "pf0");
        assert_eq!(first["index"], 0);
        assert_eq!(first["missing"], false);
        assert_eq!(first["state"]["kind"], "allocated");
        assert_eq!(first["state"]["owner"]["vm"], "vm1");
        assert_eq!(first["state"]["owner"]["pid"], std::process::id());
        assert_eq!(v["vfs"][1]["state"]["kind"], "free");
        assert!(!dir.path().join("pool.json.tmp").exists());
        assert!(dir.path().join(LOCK_FILE).exists());
        // list() serializes the same records for --json.
        let listed = serde_json::to_value(pool.list().expect("list")).expect("json");
        assert_eq!(listed, v["vfs"]);
    }

    #[test]
    fn test_threads_sharing_a_pool_never_share_a_vf() {
        let (_dir, _reset, pool) = pool_with(&[8, 8]);
        let pool = Arc::new(pool);
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let pool = Arc::clone(&pool);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let owner = Owner::vm(format!("vm-{t}-{}", got.len()));
                        match pool.allocate(&owner, &Select::default(), |_| Ok::<_, String>(())) {
                            Ok(vf) => got.push(vf.vf),
                            Err(e) => {
                                assert!(e.seed_error().is_some(), "{e}");
                                return got;
                            }
                        }
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("thread"));
        }
        let distinct: BTreeSet<&String> = all.iter().collect();
        assert_eq!(all.len(), 16);
        assert_eq!(distinct.len(), 16);
    }
}
