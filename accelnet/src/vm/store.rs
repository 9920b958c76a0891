//! The VM store: one record per VM, in an embedded single-file database
//! (`/var/lib/accelnet/vms.redb`) that survives restarts of `accelnet` and crashes.
//!
//! redb is ACID and crash-safe (copy-on-write B-trees, fsync on commit): a crash
//! leaves the last committed state. Several `accelnet` processes may use the store at
//! once (`ConcurrencyMode::MultiWriter`: write transactions are serialised across
//! processes). Each record is a JSON document; a record that does not decode is
//! reported by name and never dropped.
//!
//! A record also says what was in progress (`phase`): `launching` or `stopping` left
//! by a crashed `accelnet` is put right by [`VmStore::repair`], from whether the VMM
//! process still runs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Builder, ConcurrencyMode, Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sriov::pool::process_start_time;
use sriov::steer::Steering;
use sriov::tiers::Tier;
use vmm_plugin::{VmSpec, VmmKind};

/// Default location of the store.
pub const DEFAULT_PATH: &str = "/var/lib/accelnet/vms.redb";

/// Format version of a record.
pub const RECORD_VERSION: u32 = 1;

const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");

/// Where a VM is in its life cycle, as far as accelnet knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// `accelnet vm launch` is starting it (record written before the VMM starts).
    Launching,
    /// The VMM runs it.
    Running,
    /// Destination of a live migration: the VMM waits for (or takes in) the
    /// migration stream; the source still runs the VM.
    Incoming,
    /// Source of a live migration in progress.
    Migrating,
    /// `accelnet vm stop` is stopping it.
    Stopping,
    /// Stopped (by accelnet, or found dead).
    Stopped,
    /// A launch or an operation failed; `reason` says how.
    Failed {
        /// What went wrong.
        reason: String,
    },
}

impl Phase {
    /// The phase's name (`launching`, `running`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Launching => "launching",
            Phase::Running => "running",
            Phase::Incoming => "incoming",
            Phase::Migrating => "migrating",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed { .. } => "failed",
        }
    }
}

/// Whether the VM's direct path is plugged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectState {
    /// The VM has no direct path (not accelerated).
    None,
    /// Plugged: traffic uses the VF (or stand-in).
    Attached,
    /// Accelerated but unplugged (e.g. `vm disable`): traffic uses the synthetic path.
    Detached,
}

/// Where a failover stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailoverStage {
    /// On the synthetic path, waiting for the direct path.
    Synthetic,
    /// Moving back to the direct path.
    Recovering,
    /// Gave up moving back: stays on the synthetic path.
    GaveUp,
}

impl std::fmt::Display for FailoverStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailoverStage::Synthetic => "synthetic",
            FailoverStage::Recovering => "recovering",
            FailoverStage::GaveUp => "gave-up",
        })
    }
}

/// Where the node agent's host-reserved failover has a VM whose direct path
/// failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverNote {
    /// Where it stands.
    pub state: FailoverStage,
    /// Why the direct path was lost (`VF link down`, ...).
    pub cause: String,
    /// Why the agent gave up moving back, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Since when, seconds since the epoch.
    pub since: u64,
}

/// Everything accelnet keeps about one VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    /// Record format version ([`RECORD_VERSION`]).
    pub version: u32,
    /// Which VMM runs it.
    pub vmm: VmmKind,
    /// What it was launched with (its name is the record's key).
    pub spec: VmSpec,
    /// Performance tier, when accelerated.
    #[serde(default)]
    pub performance: Option<Tier>,
    /// The switch port of its synthetic NIC.
    pub port: String,
    /// The switch's control socket.
    pub switch_control: PathBuf,
    /// Access VLAN of its switch port.
    #[serde(default = "default_vlan")]
    pub vlan: u16,
    /// The VF it holds from the pool, if any.
    #[serde(default)]
    pub vf: Option<String>,
    /// Whether the direct path is plugged.
    pub direct: DirectState,
    /// How the host's embedded switch is told which path carries the VM's MAC.
    #[serde(default)]
    pub steering: Option<Steering>,
    /// What `--vf` asked the pool for (`auto` or a PCI address), for re-enabling.
    #[serde(default)]
    pub vf_select: Option<String>,
    /// Set while the node agent's host-reserved failover has the VM on the
    /// synthetic path because its direct path failed (`None`: no failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverNote>,
    /// The VMM process.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Its start time (`/proc/<pid>/stat` field 22), so a reused pid is not taken for it.
    #[serde(default)]
    pub start_time: Option<u64>,
    /// Directory of the VMM's sockets and logs.
    pub run_dir: PathBuf,
    /// Life-cycle phase.
    #[serde(flatten)]
    pub phase: Phase,
    /// Last change, seconds since the epoch.
    pub updated: u64,
}

impl VmRecord {
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether the recorded VMM process still runs (same pid and start time).
    pub fn process_alive(&self, proc_root: &Path) -> bool {
        match self.pid {
            None => false,
            Some(pid) => match process_start_time(proc_root, pid) {
                Some(t) => self.start_time.is_none_or(|want| want == t),
                None => false,
            },
        }
    }
}

/// Why the store failed. Each names the file or the VM.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or used.
    #[error("VM store {}: {message}", path.display())]
    Db {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        message: String,
    },
    /// A record does not decode (written by a newer accelnet, or damaged).
    #[error("VM store {}: the record of VM {vm} is unreadable: {message}", path.display())]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// The VM.
        vm: String,
        /// Why.
        message: String,
    },
    /// No such VM.
    #[error("no VM named {vm}")]
    NotFound {
        /// The VM.
        vm: String,
    },
    /// A VM with this name exists.
    #[error("a VM named {vm} exists already ({phase})")]
    Exists {
        /// The VM.
        vm: String,
        /// Its phase.
        phase: String,
    },
}

/// One listed record: a decoded record, or the name of one that does not decode.
#[derive(Debug, Clone, PartialEq)]
pub enum Listed {
    /// A record.
    Ok(Box<VmRecord>),
    /// A record that does not decode.
    Corrupt {
        /// The VM's name (the key).
        vm: String,
        /// Why.
        message: String,
    },
}

/// What [`VmStore::repair`] changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Repaired {
    /// The VM.
    pub vm: String,
    /// Its phase before.
    pub was: String,
    /// Its phase now.
    pub now: String,
}

/// The VM store.
#[derive(Debug)]
pub struct VmStore {
    db: Database,
    path: PathBuf,
}

/// How long [`VmStore::open`] retries a database another process is creating.
const OPEN_RETRY: Duration = Duration::from_secs(10);

impl VmStore {
    /// Opens (creating if needed) the store at `path`; the directory is created too.
    pub fn open(path: &Path) -> Result<VmStore, StoreError> {
        let db_err = |message: String| StoreError::Db {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| db_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let deadline = Instant::now() + OPEN_RETRY;
        let db = loop {
            let mut builder = Builder::new();
            builder.set_concurrency_mode(ConcurrencyMode::MultiWriter);
            builder.set_check_integrity_on_open(true);
            match builder.create(path) {
                Ok(db) => break db,
                // Another process opening in an incompatible way (or mid-create): retry.
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(db_err(e.to_string())),
            }
        };
        let store = VmStore {
            db,
            path: path.to_path_buf(),
        };
        // Make sure the table exists, so readers never see "no such table".
        store.write(|_| Ok(()))?;
        Ok(store)
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    fn decode(&self, vm: &str, bytes: &[u8]) -> Result<VmRecord, StoreError> {
        let rec: VmRecord = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            vm: vm.to_string(),
            message: e.to_string(),
        })?;
        if rec.version != RECORD_VERSION {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                vm: vm.to_string(),
                message: format!(
                    "record version {} (this accelnet reads {RECORD_VERSION})",
                    rec.version
                ),
            });
        }
        Ok(rec)
    }

    /// Runs `f` in one write transaction on the table; commits when it returns `Ok`.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &str, &[u8]>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.err(e))?;
        let out = {
            let mut table = txn.open_table(VMS).map_err(|e| self.err(e))?;
            f(&mut table)?
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    /// The record of `vm`.
    pub fn get(&self, vm: &str) -> Result<VmRecord, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(VMS).map_err(|e| self.err(e))?;
        let value = table.get(vm).map_err(|e| self.err(e))?;
        match value {
            Some(v) => self.decode(vm, v.value()),
            None => Err(StoreError::NotFound { vm: vm.to_string() }),
        }
    }

    /// Every record, sorted by name; undecodable ones are listed as such.
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(VMS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let vm = k.value().to_string();
            out.push(match self.decode(&vm, v.value()) {
                Ok(r) => Listed::Ok(Box::new(r)),
                Err(e) => Listed::Corrupt {
                    vm,
                    message: e.to_string(),
                },
            });
        }
        Ok(out)
    }

    /// Adds a record. A name whose VM is stopped or failed is taken over (a stopped
    /// VM can be launched again); one that is launching, running or stopping, or
    /// whose record is unreadable, is refused.
    pub fn insert(&self, rec: &VmRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|e| self.err(e))?;
        self.write(|t| {
            if let Some(old) = t.get(rec.name()).map_err(|e| self.err(e))? {
                let phase = match self.decode(rec.name(), old.value()) {
                    Ok(r) if matches!(r.phase, Phase::Stopped | Phase::Failed { .. }) => None,
                    Ok(r) => Some(r.phase.name().to_string()),
                    Err(_) => Some("unreadable record".to_string()),
                };
                if let Some(phase) = phase {
                    return Err(StoreError::Exists {
                        vm: rec.name().to_string(),
                        phase,
                    });
                }
            }
            t.insert(rec.name(), bytes.as_slice())
                .map_err(|e| self.err(e))?;
            Ok(())
        })
    }

    /// Changes the record of `vm` with `f` in one transaction (read, modify, write),
    /// stamping `updated`; returns the new record.
    pub fn update(
        &self,
        vm: &str,
        f: impl FnOnce(&mut VmRecord) -> Result<(), StoreError>,
    ) -> Result<VmRecord, StoreError> {
        self.write(|t| {
            let mut rec = match t.get(vm).map_err(|e| self.err(e))? {
                Some(v) => self.decode(vm, v.value())?,
                None => return Err(StoreError::NotFound { vm: vm.to_string() }),
            };
            f(&mut rec)?;
            rec.updated = now();
            let bytes = serde_json::to_vec(&rec).map_err(|e| self.err(e))?;
            t.insert(vm, bytes.as_slice()).map_err(|e| self.err(e))?;
            Ok(rec)
        })
    }

    /// Removes the record of `vm` (it must exist).
    pub fn remove(&self, vm: &str) -> Result<(), StoreError> {
        self.write(|t| match t.remove(vm).map_err(|e| self.err(e))? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound { vm: vm.to_string() }),
        })
    }

    /// Puts right what a crash left: a `launching` or `running` VM whose process is
    /// gone becomes `failed` (it never came up, or died), a `stopping` one becomes
    /// `stopped`. Returns what changed. Corrupt records are left alone (reported by
    /// [`VmStore::list`]).
    pub fn repair(&self, proc_root: &Path) -> Result<Vec<Repaired>, StoreError> {
        let mut changed = Vec::new();
        for item in self.list()? {
            let Listed::Ok(rec) = item else { continue };
            if rec.process_alive(proc_root) {
                continue;
            }
            let now = match &rec.phase {
                Phase::Launching => Phase::Failed {
                    reason: "the launch did not finish (accelnet or the VMM stopped)".into(),
                },
                Phase::Running | Phase::Migrating => Phase::Failed {
                    reason: "the VMM process is gone".into(),
                },
                Phase::Incoming => Phase::Failed {
                    reason: "the incoming migration did not finish (its VMM is gone)".into(),
                },
                Phase::Stopping => Phase::Stopped,
                Phase::Stopped | Phase::Failed { .. } => continue,
            };
            let was = rec.phase.name().to_string();
            let updated = self.update(rec.name(), |r| {
                r.phase = now.clone();
                r.pid = None;
                r.start_time = None;
                Ok(())
            })?;
            changed.push(Repaired {
                vm: rec.name().to_string(),
                was,
                now: updated.phase.name().to_string(),
            });
        }
        Ok(changed)
    }
}

fn default_vlan() -> u16 {
    1
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use vmm_plugin::SyntheticNic;

    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "accelnet-store-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).expect("mkdir");
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn record(name: &str, pid: Option<u32>, phase: Phase) -> VmRecord {
        VmRecord {
            version: RECORD_VERSION,
            vmm: VmmKind::Qemu,
            spec: VmSpec {
                name: name.to_string(),
                vcpus: 2,
                memory_mib: 256,
                kernel: None,
                initrd: None,
                cmdline: None,
                disks: Vec::new(),
                nic: SyntheticNic {
                    mac: "52:54:00:00:00:01".into(),
                    socket: "/run/accelnet/vm1.sock".into(),
                    queue_pairs: 1,
                },
                direct: None,
                console_log: None,
                incoming: false,
            },
            performance: Some(Tier::Low),
            port: name.to_string(),
            switch_control: "/run/accelnet/switch.ctl".into(),
            vlan: 1,
            vf: None,
            direct: DirectState::None,
            steering: None,
            vf_select: None,
            failover: None,
            pid,
            start_time: pid.and_then(|p| process_start_time(Path::new("/proc"), p)),
            run_dir: "/run/accelnet/vm".into(),
            phase,
            updated: now(),
        }
    }

    #[test]
    fn test_records_survive_reopen() {
        let dir = TempDir::new();
        let path = dir.0.join("vms.redb");
        {
            let s = VmStore::open(&path).expect("open");
            s.insert(&record("a", None, Phase::Running))
                .expect("insert");
            s.insert(&record("b", None, Phase::Stopped))
                .expect("insert");
            let e = s
                .insert(&record("a", None, Phase::Launching))
                .expect_err("exists");
            assert_eq!(e.to_string(), "a VM named a exists already (running)");
            // A stopped VM's name can be launched again.
            s.insert(&record("b", None, Phase::Launching))
                .expect("relaunch");
            assert_eq!(s.get("b").expect("b").phase, Phase::Launching);
            s.update("b", |r| {
                r.direct = DirectState::Detached;
                Ok(())
            })
            .expect("update");
        }
        let s = VmStore::open(&path).expect("reopen");
        let names: Vec<String> = s
            .list()
            .expect("list")
            .into_iter()
            .map(|l| match l {
                Listed::Ok(r) => r.name().to_string(),
                Listed::Corrupt { vm, .. } => panic!("corrupt {vm}"),
            })
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(s.get("b").expect("b").direct, DirectState::Detached);
        s.remove("a").expect("remove");
        assert!(matches!(s.get("a"), Err(StoreError::NotFound { .. })));
        assert!(matches!(s.remove("a"), Err(StoreError::NotFound { .. })));
    }

    #[test]
    fn test_repair_after_a_crash() {
        let dir = TempDir::new();
        let s = VmStore::open(&dir.0.join("vms.redb")).expect("open");
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep");
        let live = child.id();
        let mut dead = std::process::Command::new("true").spawn().expect("true");
        let dead_pid = dead.id();
        dead.wait().expect("wait");
        s.insert(&record("alive", Some(live), Phase::Running))
            .expect("i");
        s.insert(&record("crashed-launch", Some(dead_pid), Phase::Launching))
            .expect("i");
        s.insert(&record("died", Some(dead_pid), Phase::Running))
            .expect("i");
        s.insert(&record("half-stopped", None, Phase::Stopping))
            .expect("i");
        s.insert(&record("done", None, Phase::Stopped)).expect("i");
        // A migration's two ends whose VMMs died with the orchestrator.
        s.insert(&record("in-dead", Some(dead_pid), Phase::Incoming))
            .expect("i");
        s.insert(&record("out-dead", Some(dead_pid), Phase::Migrating))
            .expect("i");
        let mut got = s.repair(Path::new("/proc")).expect("repair");
        got.sort_by(|a, b| a.vm.cmp(&b.vm));
        let got: Vec<(String, String, String)> =
            got.into_iter().map(|r| (r.vm, r.was, r.now)).collect();
        assert_eq!(
            got,
            [
                ("crashed-launch".into(), "launching".into(), "failed".into()),
                ("died".into(), "running".into(), "failed".into()),
                ("half-stopped".into(), "stopping".into(), "stopped".into()),
                ("in-dead".into(), "incoming".into(), "failed".into()),
                ("out-dead".into(), "migrating".into(), "failed".into()),
            ]
        );
        assert_eq!(s.get("alive").expect("alive").phase, Phase::Running);
        assert!(s.repair(Path::new("/proc")).expect("again").is_empty());
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    #[test]
    fn test_pid_reuse_is_not_alive() {
        let mut r = record("x", Some(std::process::id()), Phase::Running);
        assert!(r.process_alive(Path::new("/proc")));
        r.start_time = r.start_time.map(|t| t + 1);
        assert!(!r.process_alive(Path::new("/proc")));
    }

    #[test]
    fn test_an_unreadable_record_is_reported_not_dropped() {
        let dir = TempDir::new();
        let path = dir.0.join("vms.redb");
        let s = VmStore::open(&path).expect("open");
        s.insert(&record("good", None, Phase::Running)).expect("i");
        // A record from a future accelnet, and one that is not JSON.
        s.write(|t| {
            let mut future =
                serde_json::to_value(record("future", None, Phase::Running)).expect("json");
            future["version"] = 99.into();
            let bytes = serde_json::to_vec(&future).expect("bytes");
            t.insert("future", bytes.as_slice()).expect("insert");
            t.insert("garbage", b"\x00not json".as_slice())
                .expect("insert");
            Ok(())
        })
        .expect("write");
        let listed = s.list().expect("list");
        assert_eq!(listed.len(), 3);
        let corrupt: Vec<String> = listed
            .iter()
            .filter_map(|l| match l {
                Listed::Corrupt { vm, message } => Some(format!("{vm}: {message}")),
                Listed::Ok(_) => None,
            })
            .collect();
        assert_eq!(corrupt.len(), 2, "{corrupt:?}");
        assert!(corrupt[0].contains("record version 99"), "{corrupt:?}");
        let e = s.get("garbage").expect_err("corrupt");
        assert!(
            e.to_string()
                .contains("the record of VM garbage is unreadable"),
            "{e}"
        );
        // Still there after a repair and a reopen.
        s.repair(Path::new("/proc")).expect("repair");
        drop(s);
        let s = VmStore::open(&path).expect("reopen");
        assert_eq!(s.list().expect("list").len(), 3);
    }

    #[test]
    fn test_a_file_that_is_not_a_store_is_a_clear_error() {
        let dir = TempDir::new();
        let path = dir.0.join("vms.redb");
        std::fs::write(
            &path,
            b"this is not a redb file, it is text that someone put here",
        )
        .expect("write");
        let e = VmStore::open(&path).expect_err("not redb");
        assert!(
            e.to_string()
                .starts_with(&format!("VM store {}: ", path.display())),
            "{e}"
        );
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"this is not a redb file, it is text that someone put here",
            "left untouched"
        );
    }

    /// Two processes' worth of handles: redb's MultiWriter mode lets both write.
    #[test]
    fn test_two_handles_write_concurrently() {
        let dir = TempDir::new();
        let path = dir.0.join("vms.redb");
        let a = VmStore::open(&path).expect("a");
        let b = VmStore::open(&path).expect("b");
        a.insert(&record("from-a", None, Phase::Running))
            .expect("a");
        b.insert(&record("from-b", None, Phase::Running))
            .expect("b");
        assert!(a.get("from-b").is_ok());
        assert!(b.get("from-a").is_ok());
    }
}
