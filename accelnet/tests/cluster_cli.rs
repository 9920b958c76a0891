//! `accelnet cluster prereq` end to end against fake node trees (sys/ and proc/).
#![allow(clippy::tests_outside_test_module)]

mod common;
use common::{accelnet, stderr, stdout};

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use sriov::test_utils::{BridgeSpec, FakeSysfs, PfSpec};

const RP: &str = "0000:00:03.0";
const PF: &str = "0000:3b:00.0";
const NIC: &str = "enp59s0f0";

fn path_str(fake: &FakeSysfs) -> String {
    fake.path().to_string_lossy().into_owned()
}

/// A temp file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(content: &str) -> TempFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "accelnet-cluster-cli-{}-{}.json",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, content).expect("temp file is writable");
        TempFile(path)
    }

    fn arg(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Node-wide prerequisites met (kernel 6.1, IOMMU, vfio-pci, SMT on), no adapter.
fn base(hostname: &str) -> FakeSysfs {
    let fake = FakeSysfs::new();
    fake.set_kernel_release("6.1.0-18-amd64")
        .set_hostname(hostname)
        .set_cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 intel_iommu=on iommu=pt")
        .add_iommu("dmar0")
        .add_vfio_driver()
        .set_smt(true, "on")
        .set_kallsyms(&[
            ("ixgbe_probe", Some("ixgbe")),
            ("ixgbe_pci_sriov_configure", Some("ixgbe")),
            ("e1000e_probe", Some("e1000e")),
            ("pci_sriov_configure_simple", None),
        ]);
    fake
}

/// [`base`] plus an ixgbe PF below a root port with ACS, in its own IOMMU group,
/// with bus numbers to spare, and an AHCI controller (no adapter).
fn healthy(hostname: &str) -> FakeSysfs {
    let fake = base(hostname);
    fake.add_bridge(&BridgeSpec::root_port(RP).buses(0x3b, 0x3b))
        .add_pf(
            &PfSpec::new(PF)
                .netdev(NIC)
                .total_vfs(8)
                .iommu_group(40)
                .parent(RP),
        )
        .add_pci_device("0000:00:1f.2", 0x010601, Some("ahci"));
    fake
}

/// Kernel 5.10, a virtio NIC without SR-IOV, and a PF whose driver has no
/// `sriov_configure`.
fn failing() -> FakeSysfs {
    let fake = base("node9");
    fake.set_kernel_release("5.10.0-28-amd64")
        .add_plain_nic("0000:00:04.0", "virtio-pci", "eth0")
        .add_pf(
            &PfSpec::new(PF)
                .netdev(NIC)
                .iommu_group(40)
                .without_sriov_configure(),
        );
    fake
}

fn json_of(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

/// The rows of the check table: (check, adapter, status).
fn rows(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .skip_while(|l| !l.starts_with("CHECK"))
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

#[test]
fn prereq_healthy_node_passes_every_check() {
    let fake = healthy("node1");

    let o = accelnet(&["cluster", "prereq", "--sysfs-root", &path_str(&fake)]);

    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("node node1 (Linux 6.1.0-18-amd64, hyperthreading on)\n"),
        "{out}"
    );
    let want: Vec<(String, String, String)> = [
        ("kernel", "-"),
        ("iommu", "-"),
        ("vfio-pci", "-"),
        ("smt", "-"),
        ("sriov", NIC),
        ("pf-driver", NIC),
        ("acs", NIC),
        ("bus-numbers", NIC),
    ]
    .iter()
    .map(|(c, a)| (c.to_string(), a.to_string(), "pass".to_string()))
    .collect();
    assert_eq!(rows(&out), want, "{out}");
    assert!(!out.contains("hint:"), "{out}");
    assert_eq!(out.lines().last(), Some("ready for accelerated networking"));
    assert_eq!(stderr(&o), "");
}

#[test]
fn prereq_healthy_node_json() {
    let fake = healthy("node1");

    let o = accelnet(&[
        "cluster",
        "prereq",
        "--sysfs-root",
        &path_str(&fake),
        "--json",
    ]);

    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json_of(&o);
    assert_eq!(v["ready"], true);
    assert_eq!(v["cluster"], serde_json::json!([]));
    assert_eq!(v["node"], "node1");
    assert_eq!(v["kernel"], "6.1.0-18-amd64");
    assert_eq!(v["hyperthreading"], true);
    let checks = v["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 8, "{v:#}");
    for c in checks {
        assert_eq!(c["status"], "pass", "{c:#}");
        assert_eq!(c["error"], serde_json::Value::Null, "{c:#}");
    }
}

#[test]
fn prereq_failing_node_lists_each_seed_error_with_a_hint() {
    let fake = failing();

    let o = accelnet(&["cluster", "prereq", "--sysfs-root", &path_str(&fake)]);

    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    for (id, subject, message) in [
        (
            "Accel_net_not_supported",
            None,
            "Node node9 does not support Accelerated Networking",
        ),
        (
            "Sriov_support_Unknown",
            Some("eth0"),
            "Adapter eth0 cannot be enabled for Accelerated Networking",
        ),
        (
            "Sriov_support_MissingPfDriver",
            Some(NIC),
            "Adapter enp59s0f0 cannot be enabled for Accelerated Networking",
        ),
    ] {
        let head = match subject {
            Some(s) => format!("{id} ({s}): "),
            None => format!("{id}: "),
        };
        let at = lines
            .iter()
            .position(|l| l.starts_with(&head))
            .unwrap_or_else(|| panic!("no {head:?} in\n{out}"));
        assert!(lines[at].contains(message), "{}", lines[at]);
        assert!(
            lines
                .get(at + 2)
                .is_some_and(|l| l.starts_with("  hint: ") && l.len() > 10),
            "no hint after {id}:\n{out}"
        );
    }
    let table = rows(&out);
    for (check, adapter) in [("kernel", "-"), ("sriov", "eth0"), ("pf-driver", NIC)] {
        assert!(
            table
                .iter()
                .any(|r| r.0 == check && r.1 == adapter && r.2 == "FAIL"),
            "{check} {adapter} not FAIL in\n{out}"
        );
    }
    assert_eq!(
        out.lines().last(),
        Some("NOT ready for accelerated networking")
    );
    let err = stderr(&o);
    assert_eq!(
        err,
        "accelnet: node node9 is not ready for accelerated networking: \
         Accel_net_not_supported, Sriov_support_Unknown, Sriov_support_MissingPfDriver\n"
    );
}

#[test]
fn prereq_failing_node_json_has_the_errors_and_is_not_ready() {
    let fake = failing();

    let o = accelnet(&[
        "cluster",
        "prereq",
        "--sysfs-root",
        &path_str(&fake),
        "--json",
    ]);

    assert_eq!(o.status.code(), Some(1));
    let v = json_of(&o);
    assert_eq!(v["ready"], false);
    let ids: Vec<&str> = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["error"]["id"].as_str().expect("failing check has an id"))
        .collect();
    assert_eq!(
        ids,
        [
            "Accel_net_not_supported",
            "Sriov_support_Unknown",
            "Sriov_support_MissingPfDriver"
        ]
    );
    assert!(stderr(&o).contains("is not ready for accelerated networking"));
}

/// The same seed error for two adapters that are not next to each other in the
/// report must still be named once on stderr.
#[test]
fn prereq_stderr_names_each_id_once_even_when_not_adjacent() {
    let fake = failing();
    fake.add_plain_nic("0000:5e:00.0", "virtio-pci", "eth1");

    let o = accelnet(&["cluster", "prereq", "--sysfs-root", &path_str(&fake)]);

    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(
        err.matches("Sriov_support_Unknown").count(),
        1,
        "each id once: {err}"
    );
}

#[test]
fn prereq_adapter_restricts_the_checks() {
    let fake = healthy("node1");
    fake.add_plain_nic("0000:00:04.0", "virtio-pci", "eth0");

    let all = accelnet(&["cluster", "prereq", "--sysfs-root", &path_str(&fake)]);
    let nic = accelnet(&[
        "cluster",
        "prereq",
        "--sysfs-root",
        &path_str(&fake),
        "--adapter",
        NIC,
    ]);
    let by_addr = accelnet(&[
        "cluster",
        "prereq",
        "--sysfs-root",
        &path_str(&fake),
        "--adapter",
        PF,
        "--json",
    ]);
    let eth0 = accelnet(&[
        "cluster",
        "prereq",
        "--sysfs-root",
        &path_str(&fake),
        "--adapter",
        "eth0",
    ]);

    assert_eq!(all.status.code(), Some(1), "the plain NIC fails");
    assert_eq!(nic.status.code(), Some(0), "{}", stderr(&nic));
    let table = rows(&stdout(&nic));
    assert!(table.iter().all(|r| r.1 == "-" || r.1 == NIC), "{table:?}");
    assert!(table.iter().any(|r| r.0 == "pf-driver"), "{table:?}");
    assert_eq!(by_addr.status.code(), Some(0), "{}", stderr(&by_addr));
    let v = json_of(&by_addr);
    assert!(v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .all(|c| c["subject"].is_null() || c["subject"] == NIC));
    assert_eq!(eth0.status.code(), Some(1));
    let table = rows(&stdout(&eth0));
    assert!(
        table.iter().all(|r| r.1 == "-" || r.1 == "eth0"),
        "{table:?}"
    );
    assert!(
        stderr(&eth0).ends_with("ready for accelerated networking: Sriov_support_Unknown\n"),
        "{}",
        stderr(&eth0)
    );
}

#[test]
fn prereq_unknown_adapter_fails() {
    let fake = healthy("node1");

    let o = accelnet(&[
        "cluster",
        "prereq",
        "--sysfs-root",
        &path_str(&fake),
        "--adapter",
        "nosuch",
    ]);

    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no PCI network adapter nosuch"),
        "{}",
        stderr(&o)
    );
    assert_eq!(stdout(&o), "");
}

/// `--json` of a healthy node named `name` with SMT `smt`, as another node would
/// produce it.
fn peer_report(name: &str, smt: bool) -> TempFile {
    let fake = healthy(name);
    fake.set_smt(smt, if smt { "on" } else { "off" });
    let o = accelnet(&[
        "cluster",
        "prereq",
        "--sysfs-root",
        &path_str(&fake),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    TempFile::new(&stdout(&o))
}

#[test]
fn prereq_compare_smt_mismatch_fails() {
    let peer = peer_report("node2", true);
    let fake = healthy("node1");
    fake.set_smt(false, "off");

    let text = accelnet(&[
        "cluster",
        "prereq",
        "--sysfs-root",
        &path_str(&fake),
        "--compare",
        &peer.arg(),
    ]);
    let json = accelnet(&[
        "cluster",
        "prereq",
        "--sysfs-root",
        &path_str(&fake),
        "--compare",
        &peer.arg(),
        "--json",
    ]);

    assert_eq!(text.status.code(), Some(1));
    let out = stdout(&text);
    assert!(
        rows(&out)
            .iter()
            .any(|r| r.0 == "hyperthreading" && r.2 == "FAIL"),
        "{out}"
    );
    assert!(out.contains("\nHyperthreading_check_failed: "), "{out}");
    assert!(out.contains("on: [node2]; off: [node1]"), "{out}");
    assert!(
        stderr(&text).ends_with(
            "node node1 is not ready for accelerated networking: Hyperthreading_check_failed\n"
        ),
        "{}",
        stderr(&text)
    );
    assert_eq!(json.status.code(), Some(1));
    let v = json_of(&json);
    assert_eq!(v["ready"], false);
    assert_eq!(v["hyperthreading"], false);
    assert_eq!(v["cluster"][0]["name"], "hyperthreading");
    assert_eq!(v["cluster"][0]["status"], "fail");
    assert_eq!(
        v["cluster"][0]["error"]["id"],
        "Hyperthreading_check_failed"
    );
    assert!(
        v["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["status"] == "pass"),
        "the node itself is fine"
    );
}

#[test]
fn prereq_compare_same_smt_passes() {
    let peer = peer_report("node2", false);
    let peer3 = peer_report("node3", false);
    let fake = healthy("node1");
    fake.set_smt(false, "off");

    let o = accelnet(&[
        "cluster",
        "prereq",
        "--sysfs-root",
        &path_str(&fake),
        "--compare",
        &peer.arg(),
        "--compare",
        &peer3.arg(),
        "--json",
    ]);

    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json_of(&o);
    assert_eq!(v["ready"], true);
    assert_eq!(v["cluster"].as_array().map(Vec::len), Some(1));
    assert_eq!(v["cluster"][0]["name"], "hyperthreading");
    assert_eq!(v["cluster"][0]["status"], "pass");
    let detail = v["cluster"][0]["detail"].as_str().expect("detail");
    assert!(detail.contains("off: [node1, node2, node3]"), "{detail}");

    let text = accelnet(&[
        "cluster",
        "prereq",
        "--sysfs-root",
        &path_str(&fake),
        "--compare",
        &peer.arg(),
    ]);
    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    assert!(
        rows(&stdout(&text))
            .iter()
            .any(|r| r.0 == "hyperthreading" && r.2 == "pass"),
        "{}",
        stdout(&text)
    );
    assert_eq!(
        stdout(&text).lines().last(),
        Some("ready for accelerated networking")
    );
}

#[test]
fn prereq_compare_rejects_bad_reports_naming_the_file() {
    let fake = healthy("node1");
    let garbage = TempFile::new("this is not JSON {");
    let nameless = TempFile::new(r#"{"kernel": "6.1.0", "hyperthreading": true}"#);
    let bad_smt = TempFile::new(r#"{"node": "n", "hyperthreading": "yes"}"#);
    let missing = std::env::temp_dir().join(format!(
        "accelnet-cluster-cli-{}-missing.json",
        std::process::id()
    ));

    for (file, what) in [
        (garbage.arg(), "is not a JSON prereq report"),
        (nameless.arg(), "no \"node\" name"),
        (bad_smt.arg(), "\"hyperthreading\" must be"),
        (
            missing.to_string_lossy().into_owned(),
            "cannot read the node report",
        ),
    ] {
        let o = accelnet(&[
            "cluster",
            "prereq",
            "--sysfs-root",
            &path_str(&fake),
            "--compare",
            &file,
        ]);
        assert_eq!(o.status.code(), Some(1), "{file}");
        let err = stderr(&o);
        assert!(err.contains(&file), "{err}");
        assert!(err.contains(what), "{err}");
        assert_eq!(stdout(&o), "", "nothing printed before the error");
    }
}
