//! `accelnet sriov pool` end to end against fake sysfs trees and temp state dirs.
//!
//! The pool resets a VF through rtnetlink on its PF's netdev, before handing it to a
//! VM and when taking it back. On fake trees that netdev does not exist in the
//! running kernel, so every reset fails: an allocation ends with the VF quarantined,
//! and so does a release or a reclaim. These tests check that the CLI reports that
//! honestly; owned VFs for release and reclaim are written into `pool.json` (the
//! documented format) after a `sync`.
#![allow(clippy::tests_outside_test_module)]

mod common;
use common::{accelnet, stderr, stdout};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::{json, Value};
use sriov::test_utils::{FakeSysfs, PfSpec, VfSpec};

const PF0: &str = "0000:3b:00.0";
const PF1: &str = "0000:5e:00.0";
/// PF netdevs that do not exist in the running kernel.
const PF0_NETDEV: &str = "nopf0acc";
const PF1_NETDEV: &str = "nopf1acc";

fn vf0(i: u32) -> String {
    format!("0000:3b:02.{i}")
}

fn vf1(i: u32) -> String {
    format!("0000:5e:02.{i}")
}

/// A temp state directory, removed on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> StateDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "accelnet-pool-cli-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        StateDir(dir)
    }

    fn file(&self) -> PathBuf {
        self.0.join("pool.json")
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake host and a pool state directory.
struct Node {
    fake: FakeSysfs,
    state: StateDir,
}

impl Node {
    /// `accelnet sriov pool --state-dir .. --sysfs-root .. ARGS`.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_accelnet"));
        c.args(["sriov", "pool", "--state-dir"])
            .arg(&self.state.0)
            .arg("--sysfs-root")
            .arg(self.fake.path())
            .args(args)
            .env_remove("RUST_LOG");
        c
    }

    fn pool(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .expect("the accelnet binary runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.pool(args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    /// `accelnet vm ARGS` over this node's tree and pool, with the VM store and
    /// run directory in the state directory.
    fn vm(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_accelnet"))
            .arg("vm")
            .arg("--store")
            .arg(self.state.0.join("vms.redb"))
            .arg("--pool-dir")
            .arg(&self.state.0)
            .arg("--run-dir")
            .arg(self.state.0.join("run"))
            .arg("--sysfs-root")
            .arg(self.fake.path())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("the accelnet binary runs")
    }

    /// `list --json`, as (vf, state kind, owner vm, reason) tuples.
    fn list(&self) -> Vec<(String, String, Option<String>, Option<String>)> {
        let v: Value = serde_json::from_str(&self.ok(&["list", "--json"])).expect("list JSON");
        v.as_array()
            .expect("array")
            .iter()
            .map(|e| {
                (
                    e["vf"].as_str().expect("vf").to_string(),
                    e["state"]["kind"].as_str().expect("kind").to_string(),
                    e["state"]["owner"]["vm"].as_str().map(str::to_string),
                    e["state"]["reason"].as_str().map(str::to_string),
                )
            })
            .collect()
    }

    fn state_of(&self, vf: &str) -> (String, Option<String>, Option<String>) {
        self.list()
            .into_iter()
            .find(|e| e.0 == vf)
            .map(|e| (e.1, e.2, e.3))
            .unwrap_or_else(|| panic!("{vf} not in the pool"))
    }

    /// Rewrites the state of `vf` in pool.json.
    fn set_state(&self, vf: &str, state: Value) {
        let path = self.state.file();
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("pool.json"))
                .expect("pool.json parses");
        let entry = v["vfs"]
            .as_array_mut()
            .expect("vfs")
            .iter_mut()
            .find(|e| e["vf"] == vf)
            .expect("VF recorded");
        entry["state"] = state;
        std::fs::write(&path, serde_json::to_string_pretty(&v).expect("encodes"))
            .expect("pool.json is writable");
    }

    fn allocate_to(&self, vf: &str, vm: &str, pid: Option<u32>, start_time: Option<u64>) {
        self.set_state(
            vf,
            json!({
                "kind": "allocated",
                "since": 1_700_000_000u64,
                "owner": { "vm": vm, "pid": pid, "start_time": start_time }
            }),
        );
    }
}

/// One PF (netdev [`PF0_NETDEV`], NUMA 0) with `n` VFs; VF `i` has `i + 1`
/// queue pairs (MSI-X table of `i + 2`).
fn node(n: u32) -> Node {
    let fake = FakeSysfs::new();
    fake.add_pf(&PfSpec::new(PF0).netdev(PF0_NETDEV).numa_node(0));
    for i in 0..n {
        let msix = u16::try_from(i + 2).expect("few VFs");
        fake.add_vf(PF0, &VfSpec::new(i, &vf0(i)).numa_node(0).msix(msix));
    }
    Node {
        fake,
        state: StateDir::new(),
    }
}

/// [`node`] with 2 VFs plus a second PF (NUMA 1) whose VF 0 has no RDMA device
/// and VF 1 has one.
fn two_pf_node() -> Node {
    let n = node(2);
    n.fake
        .add_pf(
            &PfSpec::new(PF1)
                .ids(0x15b3, 0x1017)
                .driver(Some("mlx5_core"))
                .netdev(PF1_NETDEV)
                .numa_node(1),
        )
        .add_vf(
            PF1,
            &VfSpec::new(0, &vf1(0))
                .driver(Some("mlx5_core"))
                .numa_node(1),
        )
        .add_vf(
            PF1,
            &VfSpec::new(1, &vf1(1))
                .driver(Some("mlx5_core"))
                .numa_node(1)
                .rdma("mlx5_3"),
        );
    n
}

/// The VF an `alloc` picked, from its error (the reset that starts every
/// allocation fails on a fake tree).
fn picked(o: &Output, vm: &str) -> String {
    let err = stderr(o);
    let rest = err
        .split("configuring VF ")
        .nth(1)
        .unwrap_or_else(|| panic!("no VF named in {err}"));
    let vf = rest.split(' ').next().expect("address").to_string();
    assert!(
        rest.starts_with(&format!("{vf} for VM {vm} failed: resetting it first: ")),
        "{err}"
    );
    vf
}

#[test]
fn sync_adds_every_vf_once() {
    let n = node(3);

    let first = n.ok(&["sync"]);
    let second = n.ok(&["sync"]);

    assert_eq!(
        first,
        format!(
            "added {},{},{} removed - missing - returned -\n",
            vf0(0),
            vf0(1),
            vf0(2)
        )
    );
    assert_eq!(second, "added - removed - missing - returned -\n");
    let list = n.ok(&["list"]);
    let rows: Vec<&str> = list.lines().collect();
    assert_eq!(rows.len(), 4, "{list}");
    assert!(rows[0].starts_with("VF"), "{list}");
    for (i, row) in rows[1..].iter().enumerate() {
        let f: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            f,
            [
                vf0(i as u32).as_str(),
                PF0_NETDEV,
                &i.to_string(),
                &(i + 1).to_string(),
                "free",
                "-",
                "-"
            ],
            "{list}"
        );
    }
    assert_eq!(
        n.list(),
        (0..3)
            .map(|i| (vf0(i), "free".to_string(), None, None))
            .collect::<Vec<_>>()
    );
}

#[test]
fn sync_json_reports_the_added_vfs() {
    let n = node(3);

    let first: Value = serde_json::from_str(&n.ok(&["sync", "--json"])).expect("JSON");
    let second: Value = serde_json::from_str(&n.ok(&["sync", "--json"])).expect("JSON");

    assert_eq!(
        first,
        json!({ "added": [vf0(0), vf0(1), vf0(2)], "removed": [], "missing": [], "returned": [] })
    );
    assert_eq!(
        second,
        json!({ "added": [], "removed": [], "missing": [], "returned": [] })
    );
}

#[test]
fn pool_help_lists_the_subcommands() {
    let o = accelnet(&["sriov", "pool", "--help"]);

    assert!(o.status.success(), "{}", stderr(&o));
    for sub in ["list", "sync", "alloc", "release", "reclaim", "repair"] {
        assert!(stdout(&o).contains(sub), "{}", stdout(&o));
    }
}

#[test]
fn list_of_an_empty_pool_says_so() {
    let n = node(1);

    assert_eq!(
        n.ok(&["list"]),
        "the VF pool is empty (run `accelnet sriov pool sync`)\n"
    );
    assert_eq!(n.ok(&["list", "--json"]), "[]\n");
}

/// The reset every allocation starts with cannot run on a fake tree: the
/// allocation fails naming the interface, the VF is quarantined, and the next
/// allocation picks another VF.
#[test]
fn alloc_on_a_fake_tree_quarantines_the_vf_and_says_why() {
    let n = node(3);
    n.ok(&["sync"]);

    let a = n.pool(&["alloc", "--vm", "a"]);
    let b = n.pool(&["alloc", "--vm", "b"]);

    assert_eq!(a.status.code(), Some(1), "{}", stdout(&a));
    assert_eq!(stdout(&a), "");
    let va = picked(&a, "a");
    let err = stderr(&a);
    assert!(
        err.contains(&format!("no network interface named {PF0_NETDEV}")),
        "{err}"
    );
    assert!(err.contains("; the VF was quarantined: "), "{err}");
    assert_eq!(b.status.code(), Some(1));
    let vb = picked(&b, "b");
    assert_ne!(va, vb, "two allocations never get the same VF");
    for (vf, vm) in [(&va, "a"), (&vb, "b")] {
        let (kind, owner, reason) = n.state_of(vf);
        assert_eq!(kind, "quarantined");
        assert_eq!(owner.as_deref(), Some(vm));
        assert!(
            reason.is_some_and(|r| r.contains(PF0_NETDEV)),
            "the reason names the interface"
        );
    }
    let list = n.ok(&["list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with(&va))
        .expect("row of the VF");
    assert!(row.contains("quarantined"), "{list}");
    assert!(
        row.contains(&format!("no network interface named {PF0_NETDEV}")),
        "{list}"
    );
}

#[test]
fn alloc_of_a_vf_held_by_another_vm_fails_naming_both() {
    let n = node(2);
    n.ok(&["sync"]);
    n.allocate_to(&vf0(0), "a", None, None);
    let before = std::fs::read(n.state.file()).expect("pool.json");

    let o = n.pool(&["alloc", "--vm", "x", "--vf", &vf0(0)]);

    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("VF {} is allocated by VM a", vf0(0))),
        "{err}"
    );
    assert_eq!(
        std::fs::read(n.state.file()).expect("pool.json"),
        before,
        "nothing changed"
    );
}

#[test]
fn alloc_of_an_unknown_or_mismatching_vf_fails() {
    let n = two_pf_node();
    n.ok(&["sync"]);

    let unknown = n.pool(&["alloc", "--vm", "x", "--vf", "0000:99:00.0"]);
    let wrong_numa = n.pool(&["alloc", "--vm", "x", "--vf", &vf0(0), "--numa", "1"]);
    let no_rdma = n.pool(&["alloc", "--vm", "x", "--vf", &vf0(1), "--rdma"]);

    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("VF 0000:99:00.0 is not in the pool"),
        "{}",
        stderr(&unknown)
    );
    assert_eq!(wrong_numa.status.code(), Some(1));
    assert!(
        stderr(&wrong_numa).contains(&format!(
            "VF {} does not match the request: it is not on NUMA node 1",
            vf0(0)
        )),
        "{}",
        stderr(&wrong_numa)
    );
    assert_eq!(no_rdma.status.code(), Some(1));
    assert!(
        stderr(&no_rdma).contains("it has no RDMA device"),
        "{}",
        stderr(&no_rdma)
    );
    assert!(
        n.list().iter().all(|e| e.1 == "free"),
        "refused requests change nothing"
    );
}

#[test]
fn alloc_when_no_vf_is_free_is_cluster_not_enough_resources() {
    let n = node(2);
    n.ok(&["sync"]);
    n.allocate_to(&vf0(0), "a", None, None);
    n.allocate_to(&vf0(1), "b", None, None);

    let o = n.pool(&["alloc", "--vm", "x"]);
    let filtered = node(2);
    filtered.ok(&["sync"]);
    let numa = filtered.pool(&["alloc", "--vm", "y", "--numa", "7"]);

    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("cluster_not_enough_resources: "), "{err}");
    assert!(err.contains("VM x"), "{err}");
    assert!(err.contains("(no free VF matching any VF)"), "{err}");
    assert_eq!(numa.status.code(), Some(1));
    let err = stderr(&numa);
    assert!(err.contains("cluster_not_enough_resources"), "{err}");
    assert!(err.contains("no free VF matching numa node 7"), "{err}");
    assert!(filtered.list().iter().all(|e| e.1 == "free"));
}

#[test]
fn alloc_for_a_tier_needs_its_queue_pairs() {
    // VF 0 has 1 queue pair, VF 1 has 2: Medium needs 2, High needs 4.
    let n = node(2);
    n.ok(&["sync"]);

    let named = n.pool(&[
        "alloc",
        "--vm",
        "x",
        "--vf",
        &vf0(0),
        "--performance",
        "medium",
    ]);
    let high = n.pool(&["alloc", "--vm", "x", "--performance", "high"]);
    let before = n.list();
    let medium = n.pool(&["alloc", "--vm", "x", "--performance", "medium"]);

    assert_eq!(named.status.code(), Some(1));
    let err = stderr(&named);
    assert!(
        err.contains("cannot_provision_performance: ")
            && err.contains("Medium performance")
            && err.contains(&format!(
                "VF {}: it has 1 hardware queue pair(s), Medium performance needs 2",
                vf0(0)
            )),
        "{err}"
    );
    assert_eq!(high.status.code(), Some(1));
    let err = stderr(&high);
    assert!(
        err.contains("cannot_provision_performance")
            && err.contains("no free VF matching 4 queue pair(s) for High performance"),
        "{err}"
    );
    assert!(
        before.iter().all(|e| e.1 == "free"),
        "refusals change nothing"
    );
    // Medium takes the VF with 2 (its allocation then fails on the fake tree's reset).
    assert_eq!(picked(&medium, "x"), vf0(1), "{}", stderr(&medium));
}

#[test]
fn alloc_filters_pick_the_matching_vf() {
    // Each allocation quarantines its VF (no kernel behind the fake tree), so each
    // filter gets a fresh pool; the VF picked is named in the error.
    let vf01 = vf0(1);
    for (args, want) in [
        (vec![], vf0(0)),
        (vec!["--pf", PF1_NETDEV], vf1(0)),
        (vec!["--pf", PF1], vf1(0)),
        (vec!["--numa", "1"], vf1(0)),
        (vec!["--rdma"], vf1(1)),
        (vec!["--pf", PF0, "--numa", "0"], vf0(0)),
        (vec!["--vf", vf01.as_str()], vf0(1)),
    ] {
        let n = two_pf_node();
        n.ok(&["sync"]);
        let mut cmd = vec!["alloc", "--vm", "f"];
        cmd.extend(args);

        let o = n.pool(&cmd);

        assert_eq!(o.status.code(), Some(1), "{cmd:?}");
        assert_eq!(picked(&o, "f"), want, "{cmd:?}: {}", stderr(&o));
        let kinds: Vec<(String, String)> = n.list().into_iter().map(|e| (e.0, e.1)).collect();
        for (vf, kind) in kinds {
            let expect = if vf == want { "quarantined" } else { "free" };
            assert_eq!(kind, expect, "{cmd:?}: {vf}");
        }
    }
}

#[test]
fn alloc_for_a_process_that_does_not_exist_fails() {
    let n = node(1);
    n.ok(&["sync"]);

    let o = n.pool(&["alloc", "--vm", "p", "--pid", "4000000000"]);

    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read process 4000000000"),
        "{}",
        stderr(&o)
    );
    assert_eq!(n.state_of(&vf0(0)).0, "free");
}

/// Field 22 of /proc/<pid>/stat.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    rest.split_whitespace()
        .nth(22 - 3)
        .and_then(|s| s.parse().ok())
        .expect("start time")
}

#[test]
fn reclaim_takes_back_the_vf_of_a_dead_vm_process() {
    let n = node(2);
    n.ok(&["sync"]);
    let mut sleep = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .expect("sleep runs");
    let pid = sleep.id();
    n.allocate_to(&vf0(1), "p", Some(pid), Some(start_time(pid)));
    n.allocate_to(&vf0(0), "q", None, None);

    let alive = n.pool(&["reclaim"]);
    sleep.kill().expect("kill sleep");
    sleep.wait().expect("wait for sleep");
    let dead = n.pool(&["reclaim"]);
    let again = n.pool(&["reclaim", "--json"]);

    assert_eq!(alive.status.code(), Some(0), "{}", stderr(&alive));
    assert_eq!(stdout(&alive), "no VF held by a dead VM\n");
    // Taken back, but the reset cannot run on a fake tree: exit 1, saying so.
    assert_eq!(dead.status.code(), Some(1), "{}", stderr(&dead));
    assert!(
        stderr(&dead).contains(&format!(
            "VF {} could not be reset and stays quarantined",
            vf0(1)
        )),
        "{}",
        stderr(&dead)
    );
    let out = stdout(&dead);
    let line = format!(
        "{}: taken back from VM p, reset failed, quarantined: ",
        vf0(1)
    );
    assert!(out.starts_with(&line), "{out}");
    assert!(
        out.contains(PF0_NETDEV),
        "the reset's failure is reported: {out}"
    );
    assert_eq!(out.lines().count(), 1, "only p's VF: {out}");
    let (kind, owner, reason) = n.state_of(&vf0(1));
    assert_eq!(kind, "quarantined", "no longer allocated to p");
    assert_eq!(owner.as_deref(), Some("p"), "the last owner is kept");
    assert!(reason.is_some_and(|r| r.contains(PF0_NETDEV)));
    assert_eq!(n.state_of(&vf0(0)).0, "allocated", "q has no pid: kept");
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(stdout(&again), "[]\n");
}

#[test]
fn release_by_the_wrong_vm_changes_nothing() {
    let n = node(2);
    n.ok(&["sync"]);
    n.allocate_to(&vf0(0), "a", None, None);
    let before = std::fs::read(n.state.file()).expect("pool.json");

    let o = n.pool(&["release", &vf0(0), "--vm", "wrong"]);

    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "VF {} is not held by VM wrong: it is allocated (VM a)",
            vf0(0)
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(n.state.file()).expect("pool.json"), before);
    let list = n.ok(&["list"]);
    let row = list.lines().find(|l| l.starts_with(&vf0(0))).expect("row");
    let f: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(f[4..6], ["allocated", "a"], "{list}");
}

#[test]
fn release_of_a_free_or_unknown_vf_fails() {
    let n = node(1);
    n.ok(&["sync"]);

    let free = n.pool(&["release", &vf0(0)]);
    let unknown = n.pool(&["release", "0000:99:00.0"]);

    assert_eq!(free.status.code(), Some(1));
    assert!(stderr(&free).contains("it is free"), "{}", stderr(&free));
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("VF 0000:99:00.0 is not in the pool"),
        "{}",
        stderr(&unknown)
    );
}

/// The owner releases its VF; the reset cannot run on a fake tree, which the
/// command reports (exit 1) and `list` shows.
#[test]
fn release_whose_reset_fails_reports_the_quarantine() {
    let n = node(2);
    n.ok(&["sync"]);
    n.allocate_to(&vf0(0), "a", None, None);
    n.allocate_to(&vf0(1), "b", None, None);

    let o = n.pool(&["release", &vf0(0), "--vm", "a"]);
    let j = n.pool(&["release", &vf0(1), "--json"]);

    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{}: released, but its reset failed, so it is quarantined: ",
            vf0(0)
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("no network interface named {PF0_NETDEV}")),
        "{err}"
    );
    let (kind, owner, reason) = n.state_of(&vf0(0));
    assert_eq!(kind, "quarantined");
    assert_eq!(owner.as_deref(), Some("a"));
    assert!(reason.is_some_and(|r| r.contains(PF0_NETDEV)));
    let list = n.ok(&["list"]);
    let row = list.lines().find(|l| l.starts_with(&vf0(0))).expect("row");
    assert!(row.contains("quarantined"), "{list}");
    assert!(row.contains(PF0_NETDEV), "{list}");

    // --json prints the outcome and, like the text form, exits 1.
    assert_eq!(j.status.code(), Some(1), "{}", stderr(&j));
    let v: Value = serde_json::from_str(&stdout(&j)).expect("outcome JSON");
    assert_eq!(v["outcome"], "quarantined");
    assert!(
        v["reason"].as_str().is_some_and(|r| r.contains(PF0_NETDEV)),
        "{v}"
    );
    assert_eq!(n.state_of(&vf0(1)).0, "quarantined");

    // A quarantined VF cannot be allocated, and repair retries it (and fails again).
    let x = n.pool(&["alloc", "--vm", "x", "--vf", &vf0(0)]);
    assert_eq!(x.status.code(), Some(1));
    assert!(
        stderr(&x).contains(&format!(
            "VF {} is not available: it is quarantined",
            vf0(0)
        )),
        "{}",
        stderr(&x)
    );
    let repair = n.pool(&["repair"]);
    assert_eq!(repair.status.code(), Some(1), "still cannot reset");
    let repair = stdout(&repair);
    assert!(
        repair.starts_with(&format!(
            "{}: was quarantined, reset failed, quarantined: ",
            vf0(0)
        )),
        "{repair}"
    );
    assert_eq!(n.state_of(&vf0(0)).0, "quarantined");
}

fn is_corrupt_error(o: &Output, file: &Path) -> bool {
    let err = stderr(o);
    o.status.code() == Some(1)
        && err.contains(&file.display().to_string())
        && err.contains("is corrupt")
        && err.contains("left untouched")
}

#[test]
fn corrupt_state_file_fails_every_command_and_is_kept() {
    let n = node(2);
    n.ok(&["sync"]);
    let garbage = b"{ this is not the pool \x00\xff";
    std::fs::write(n.state.file(), garbage).expect("write garbage");

    for args in [
        vec!["list"],
        vec!["list", "--json"],
        vec!["sync"],
        vec!["alloc", "--vm", "a"],
        vec!["alloc", "--vm", "a", "--vf", "0000:3b:02.0"],
        vec!["release", "0000:3b:02.0"],
        vec!["reclaim"],
        vec!["repair"],
        vec!["repair", "--json"],
    ] {
        let o = n.pool(&args);
        assert!(
            is_corrupt_error(&o, &n.state.file()),
            "{args:?}: {}",
            stderr(&o)
        );
        assert_eq!(stdout(&o), "", "{args:?}");
        assert_eq!(
            std::fs::read(n.state.file()).expect("pool.json"),
            garbage,
            "{args:?} left the file as it was"
        );
    }
    assert!(!n.state.0.join("pool.json.tmp").exists());

    // Valid JSON that is not the pool's format is refused too.
    std::fs::write(n.state.file(), "[1, 2, 3]").expect("write");
    let o = n.pool(&["list"]);
    assert!(is_corrupt_error(&o, &n.state.file()), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(n.state.file()).expect("pool.json"),
        "[1, 2, 3]"
    );
}

/// Two `alloc` processes started at once on a 2-VF pool reserve different VFs
/// (both then fail their reset on the fake tree and quarantine their own VF).
#[test]
fn concurrent_allocations_never_share_a_vf() {
    for round in 0..10 {
        let n = node(2);
        n.ok(&["sync"]);

        let mut x = n.command(&["alloc", "--vm", "x"]);
        let mut y = n.command(&["alloc", "--vm", "y"]);
        let cx = x
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn x");
        let cy = y
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn y");
        let ox = cx.wait_with_output().expect("wait x");
        let oy = cy.wait_with_output().expect("wait y");

        assert_eq!(ox.status.code(), Some(1), "round {round}: {}", stderr(&ox));
        assert_eq!(oy.status.code(), Some(1), "round {round}: {}", stderr(&oy));
        let vx = picked(&ox, "x");
        let vy = picked(&oy, "y");
        assert_ne!(vx, vy, "round {round}: both got {vx}");
        let list = n.list();
        assert_eq!(list.len(), 2);
        for (vf, vm) in [(&vx, "x"), (&vy, "y")] {
            let e = list.iter().find(|e| &e.0 == vf).expect("recorded");
            assert_eq!(e.1, "quarantined", "round {round}");
            assert_eq!(e.2.as_deref(), Some(vm), "round {round}");
        }
    }
}

/// `accelnet vm launch NAME --vf PCI ...` whose VF the pool refuses: it fails
/// before anything else is touched (the switch control socket does not even
/// exist), records the VM failed with the reason, and leaves the pool as it was.
fn launch_refused(n: &Node, vm: &str, extra: &[&str]) -> String {
    let before = n.list();
    let ctl = n.state.0.join("no-switch.ctl");
    let mut args = vec![
        "launch",
        vm,
        "--vcpus",
        "2",
        "--memory",
        "256M",
        "--switch-control",
        ctl.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);

    let o = n.vm(&args);

    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "launch of VM {vm} failed; everything it set up was undone"
        )),
        "{err}"
    );
    assert!(!err.contains("cannot reach the switch"), "{err}");
    assert_eq!(n.list(), before, "the pool is unchanged");
    let list = n.vm(&["list", "--json"]);
    assert_eq!(list.status.code(), Some(0), "{}", stderr(&list));
    let v: Value = serde_json::from_str(&stdout(&list)).expect("vm list JSON");
    let rec = v
        .as_array()
        .and_then(|a| a.iter().find(|r| r["name"] == vm))
        .unwrap_or_else(|| panic!("{vm} not listed: {v}"));
    assert_eq!(rec["phase"], "failed", "{rec}");
    assert!(rec.get("vf").is_none(), "no VF recorded: {rec}");
    err
}

#[test]
fn vm_launch_with_a_vf_another_vm_owns_is_refused() {
    let n = node(2);
    n.ok(&["sync"]);
    n.allocate_to(&vf0(0), "a", None, None);

    let err = launch_refused(&n, "x", &["--vf", &vf0(0)]);

    assert!(
        err.contains(&format!("VF {} is allocated by VM a", vf0(0))),
        "{err}"
    );
    assert_eq!(
        n.state_of(&vf0(0)),
        ("allocated".into(), Some("a".into()), None)
    );
}

#[test]
fn vm_launch_at_a_tier_its_vf_cannot_carry_is_cannot_provision_performance() {
    // VF 0 has 1 hardware queue pair; Medium needs 2 (and 2 vCPUs, which the VM has).
    let n = node(2);
    n.ok(&["sync"]);

    let err = launch_refused(&n, "m", &["--vf", &vf0(0), "--performance", "medium"]);

    assert!(
        err.contains("cannot_provision_performance: ")
            && err.contains(&format!(
                "VF {}: it has 1 hardware queue pair(s), Medium performance needs 2",
                vf0(0)
            )),
        "{err}"
    );
}
