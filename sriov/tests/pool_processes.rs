//! The VF pool across real processes: concurrent allocations from several
//! processes never hand out the same VF, and a process killed between reserve and
//! commit leaves a reservation that the next `open` resets and frees.
//!
//! Re-exec pattern: a parent test runs this test binary again
//! (`--exact pool_worker`) with `POOL_WORKER_*` variables set; `pool_worker`
//! returns at once when they are absent, so it is a no-op in normal runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sriov::pool::{Owner, PoolVf, Select, VfPool, VfReset, VfState, STATE_FILE};

const ENV_ROLE: &str = "POOL_WORKER_ROLE";
const ENV_DIR: &str = "POOL_WORKER_DIR";
const ENV_ID: &str = "POOL_WORKER_ID";
const ENV_COUNT: &str = "POOL_WORKER_COUNT";

/// A unique temp directory, removed on drop.
struct TestDir(PathBuf);

impl TestDir {
    fn new(tag: &str) -> TestDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sriov-pool-proc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Resets by appending the VF's address to `<dir>/resets.log`, so every process's
/// resets can be checked by the parent.
struct LogReset(PathBuf);

impl VfReset for LogReset {
    fn reset(&self, vf: &PoolVf) -> Result<(), String> {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .map_err(|e| e.to_string())?;
        writeln!(f, "{}", vf.vf).map_err(|e| e.to_string())
    }
}

fn pool_dir(base: &Path) -> PathBuf {
    base.join("pool")
}

fn open(base: &Path) -> VfPool {
    let reset: Arc<dyn VfReset + Send + Sync> = Arc::new(LogReset(base.join("resets.log")));
    VfPool::open(pool_dir(base), reset).expect("open pool")
}

fn resets(base: &Path) -> Vec<String> {
    fs::read_to_string(base.join("resets.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `pfs` PFs with `per_pf` VFs each.
fn vfs(pfs: u32, per_pf: u32) -> Vec<PoolVf> {
    (0..pfs)
        .flat_map(|p| {
            (0..per_pf).map(move |i| PoolVf {
                vf: format!("0000:{:02x}:{:02x}.{}", 0x3b + p, 2 + i / 8, i % 8),
                pf: format!("0000:{:02x}:00.0", 0x3b + p),
                pf_netdev: Some(format!("pf{p}")),
                index: i,
                numa: Some(p),
                rdma: false,
                queue_pairs: None,
            })
        })
        .collect()
}

fn spawn_worker(base: &Path, role: &str, id: u32, count: u32) -> std::process::Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args(["--exact", "pool_worker", "--nocapture", "--test-threads=1"])
        .env(ENV_ROLE, role)
        .env(ENV_DIR, base)
        .env(ENV_ID, id.to_string())
        .env(ENV_COUNT, count.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn worker")
}

fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The worker side; a no-op unless started by a parent test below.
#[test]
fn pool_worker() {
    let Ok(role) = std::env::var(ENV_ROLE) else {
        return;
    };
    let base = PathBuf::from(std::env::var(ENV_DIR).expect("dir"));
    let id: u32 = std::env::var(ENV_ID).expect("id").parse().expect("id");
    let count: u32 = std::env::var(ENV_COUNT)
        .expect("count")
        .parse()
        .expect("count");
    let pool = open(&base);
    match role.as_str() {
        "allocate" => {
            fs::write(base.join(format!("ready-{id}")), "").expect("ready");
            wait_for(&base.join("start"), "the start file");
            let mut lines = Vec::new();
            for k in 0..count {
                let owner = Owner::process(
                    format!("vm-{id}-{k}"),
                    std::process::id(),
                    Path::new("/proc"),
                )
                .expect("owner");
                let got = pool.allocate(&owner, &Select::default(), |_| {
                    // Widen the window between reserve and commit.
                    std::thread::sleep(Duration::from_millis(2));
                    Ok::<_, String>(())
                });
                match got {
                    Ok(vf) => lines.push(format!("{} {}", owner.vm, vf.vf)),
                    Err(e) => {
                        assert!(e.seed_error().is_some(), "unexpected error: {e}");
                        lines.push(format!("{} -", owner.vm));
                    }
                }
            }
            fs::write(base.join(format!("result-{id}")), lines.join("\n")).expect("result");
        }
        "crash" => {
            let vf = pool
                .reserve(&Owner::vm("doomed"), &Select::default())
                .expect("reserve");
            fs::write(base.join("reserved"), &vf.vf).expect("write");
            // Die between reserve and commit, as a crash would: SIGKILL (no core
            // dump, no unwinding); abort() only if `kill` could not be run.
            let _ = Command::new("kill")
                .args(["-KILL", &std::process::id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(5));
            std::process::abort();
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn test_concurrent_processes_never_share_a_vf() {
    const WORKERS: u32 = 4;
    const EACH: u32 = 6;
    const POOL: usize = 16; // fewer than WORKERS * EACH: some must find none
    let dir = TestDir::new("concurrent");
    let base = dir.0.as_path();
    let pool = open(base);
    let report = pool.sync_vfs(&vfs(2, 8)).expect("sync");
    assert_eq!(report.added.len(), POOL);
    drop(pool);

    let children: Vec<_> = (0..WORKERS)
        .map(|id| spawn_worker(base, "allocate", id, EACH))
        .collect();
    for id in 0..WORKERS {
        wait_for(&base.join(format!("ready-{id}")), "the workers");
    }
    fs::write(base.join("start"), "").expect("start");
    for child in children {
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let mut owners: BTreeMap<String, String> = BTreeMap::new();
    let mut failures = 0;
    for id in 0..WORKERS {
        let text = fs::read_to_string(base.join(format!("result-{id}"))).expect("result");
        for line in text.lines() {
            let (vm, vf) = line.split_once(' ').expect("line");
            if vf == "-" {
                failures += 1;
            } else if let Some(before) = owners.insert(vf.to_string(), vm.to_string()) {
                panic!("VF {vf} handed to both {before} and {vm}");
            }
        }
    }
    assert_eq!(owners.len(), POOL, "every VF allocated once");
    assert_eq!(failures, (WORKERS * EACH) as usize - POOL);

    // pool.json records exactly those owners.
    let pool = open(base);
    let recorded: BTreeMap<String, String> = pool
        .list()
        .expect("list")
        .into_iter()
        .map(|e| match e.state {
            VfState::Allocated { owner, .. } => (e.vf.vf, owner.vm),
            other => panic!("VF {} is {other:?}", e.vf.vf),
        })
        .collect();
    assert_eq!(recorded, owners);
    // Every allocation reset its VF first, once.
    let mut at_alloc = resets(base);
    at_alloc.sort();
    assert_eq!(at_alloc, owners.keys().cloned().collect::<Vec<_>>());

    // The workers have exited: their VFs are reclaimed and reset.
    let reclaimed = pool.reclaim_dead().expect("reclaim");
    assert_eq!(reclaimed.len(), POOL);
    let all = resets(base);
    let reset: BTreeSet<String> = all[at_alloc.len()..].iter().cloned().collect();
    assert_eq!(all.len(), 2 * POOL);
    assert_eq!(reset, owners.keys().cloned().collect::<BTreeSet<_>>());
    assert!(pool
        .list()
        .expect("list")
        .iter()
        .all(|e| e.state == VfState::Free));
}

#[test]
fn test_crash_between_reserve_and_commit_is_repaired_on_open() {
    let dir = TestDir::new("crash");
    let base = dir.0.as_path();
    let pool = open(base);
    pool.sync_vfs(&vfs(1, 2)).expect("sync");
    drop(pool);

    let out = spawn_worker(base, "crash", 0, 1)
        .wait_with_output()
        .expect("wait");
    assert!(!out.status.success(), "the worker must die");
    let vf = fs::read_to_string(base.join("reserved")).expect("reserved VF");

    // The dead worker's reservation is still on disk...
    let text = fs::read_to_string(pool_dir(base).join(STATE_FILE)).expect("state");
    assert!(
        text.contains("\"reserved\"") && text.contains("doomed"),
        "{text}"
    );
    assert!(resets(base).is_empty());

    // ...and the next open resets and frees it.
    let pool = open(base);
    assert_eq!(resets(base), vec![vf.clone()]);
    let entry = pool
        .list()
        .expect("list")
        .into_iter()
        .find(|e| e.vf.vf == vf)
        .expect("listed");
    assert_eq!(entry.state, VfState::Free);
    let again = pool
        .reserve(&Owner::vm("next"), &Select::default())
        .expect("reserve");
    assert_eq!(again.vf, vf, "the repaired VF is back in the pool");
}
