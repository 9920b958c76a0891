//! `accelnet sriov list` against fake sysfs trees and the real (SR-IOV-less) host.
#![allow(clippy::tests_outside_test_module)]

mod common;
use common::{accelnet, stderr, stdout};

use sriov::test_utils::{FakeSysfs, PfSpec, VfSpec};

fn path_str(fake: &FakeSysfs) -> String {
    fake.path().to_string_lossy().into_owned()
}

/// Two PFs: an ixgbe one with a kernel VF and a vfio-pci VF, an mlx5 one with an
/// RDMA VF; plus a virtio NIC that is not a PF.
fn fake_host() -> FakeSysfs {
    let fake = FakeSysfs::new();
    fake.add_pf(
        &PfSpec::new("0000:3b:00.0")
            .netdev("enp59s0f0")
            .total_vfs(8)
            .numa_node(0)
            .iommu_group(40),
    )
    .add_pf(
        &PfSpec::new("0000:5e:00.0")
            .ids(0x15b3, 0x1017)
            .driver(Some("mlx5_core"))
            .netdev("enp94s0f0")
            .total_vfs(4)
            .numa_node(1)
            .iommu_group(41),
    )
    .add_vf(
        "0000:3b:00.0",
        &VfSpec::new(0, "0000:3b:10.0")
            .netdev("enp59s0f0v0")
            .numa_node(0)
            .iommu_group(50),
    )
    .add_vf(
        "0000:3b:00.0",
        &VfSpec::vfio(1, "0000:3b:10.2").numa_node(0).iommu_group(51),
    )
    .add_vf(
        "0000:5e:00.0",
        &VfSpec::new(0, "0000:5e:00.2")
            .ids(0x15b3, 0x1018)
            .driver(Some("mlx5_core"))
            .netdev("enp94s0f0v0")
            .rdma("mlx5_2")
            .numa_node(1)
            .iommu_group(60),
    )
    .add_plain_nic("0000:00:03.0", "virtio-pci", "eth0");
    fake
}

#[test]
fn sriov_list_prints_pf_and_vf_tables() {
    let fake = fake_host();

    let o = accelnet(&["sriov", "list", "--sysfs-root", &path_str(&fake)]);

    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "PF            ID         DRIVER     NETDEV     VFS  NUMA  IOMMU\n\
         0000:3b:00.0  8086:10fb  ixgbe      enp59s0f0  2/8     0     40\n\
         0000:5e:00.0  15b3:1017  mlx5_core  enp94s0f0  1/4     1     41\n\
         \n\
         VF            PF            INDEX  NETDEV       DRIVER     IOMMU  NUMA  RDMA\n\
         0000:3b:10.0  0000:3b:00.0      0  enp59s0f0v0  ixgbevf       50     0  no\n\
         0000:3b:10.2  0000:3b:00.0      1  -            vfio-pci      51     0  no\n\
         0000:5e:00.2  0000:5e:00.0      0  enp94s0f0v0  mlx5_core     60     1  yes\n"
    );
}

#[test]
fn sriov_list_json_is_the_discovered_host() {
    let fake = fake_host();

    let o = accelnet(&["sriov", "list", "--sysfs-root", &path_str(&fake), "--json"]);

    assert!(o.status.success(), "{}", stderr(&o));
    let host: sriov::Host = serde_json::from_str(&stdout(&o)).expect("valid host JSON");
    assert_eq!(host, sriov::discover(&fake.root()).expect("discovery"));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("valid JSON");
    assert_eq!(v["pfs"][0]["vfs"][1]["driver"], "vfio-pci");
    assert_eq!(v["pfs"][1]["vfs"][0]["rdma"], true);
    assert_eq!(
        v["pfs"][0]["vfs"][0]["info"]["mac"],
        serde_json::Value::Null,
        "no netlink source yet: unknown"
    );
}

#[test]
fn sriov_list_pfs_without_vfs_says_so() {
    let fake = FakeSysfs::new();
    fake.add_pf(&PfSpec::new("0000:3b:00.0").netdev("enp59s0f0"));

    let o = accelnet(&["sriov", "list", "--sysfs-root", &path_str(&fake)]);

    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("0/63"), "{}", stdout(&o));
    assert!(stdout(&o).ends_with("\nno VFs enabled\n"), "{}", stdout(&o));
}

#[test]
fn sriov_list_without_pfs_says_none_found_and_exits_0() {
    let fake = FakeSysfs::new();
    fake.add_plain_nic("0000:00:03.0", "virtio-pci", "eth0");

    let o = accelnet(&["sriov", "list", "--sysfs-root", &path_str(&fake)]);
    let json = accelnet(&["sriov", "list", "--sysfs-root", &path_str(&fake), "--json"]);

    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("no SR-IOV physical functions found in "),
        "{}",
        stdout(&o)
    );
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("valid JSON");
    assert_eq!(v, serde_json::json!({ "pfs": [] }));
}

/// On the real root the command lists exactly what discovery finds: on this lab
/// machine (a VM) no PF, elsewhere every PF by address.
#[test]
fn sriov_list_on_the_real_root_matches_discovery() {
    let real = sriov::discover(&sriov::SysfsRoot::default()).expect("discovery of /sys");

    let o = accelnet(&["sriov", "list"]);

    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    if real.pfs.is_empty() {
        assert_eq!(
            stdout(&o),
            "no SR-IOV physical functions found in /sys/bus/pci/devices\n"
        );
    } else {
        for pf in &real.pfs {
            assert!(
                stdout(&o).contains(&pf.address.to_string()),
                "{}",
                stdout(&o)
            );
        }
    }
}

#[test]
fn sriov_list_malformed_sysfs_fails_naming_the_file() {
    let fake = fake_host();
    fake.set_attr("0000:3b:00.0", "sriov_totalvfs", "many");

    let o = accelnet(&["sriov", "list", "--sysfs-root", &path_str(&fake)]);

    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("SR-IOV discovery failed"), "{err}");
    assert!(err.contains("0000:3b:00.0/sriov_totalvfs"), "{err}");
    assert!(err.contains("\"many\""), "{err}");
}

#[test]
fn sriov_help_lists_list() {
    let o = accelnet(&["sriov", "--help"]);

    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("list"), "{}", stdout(&o));
}
