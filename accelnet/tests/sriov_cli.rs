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

// --- sriov numvfs, vf, bind-vfio on fake trees -------------------------------

fn sriov(fake: &FakeSysfs, args: &[&str]) -> std::process::Output {
    let root = path_str(fake);
    let mut all = vec!["sriov", args[0], "--sysfs-root", root.as_str()];
    all.extend_from_slice(&args[1..]);
    accelnet(&all)
}

fn numvfs_file(fake: &FakeSysfs, pf: &str) -> String {
    std::fs::read_to_string(fake.device_dir(pf).join("sriov_numvfs"))
        .expect("sriov_numvfs is readable")
        .trim()
        .to_string()
}

#[test]
fn sriov_numvfs_above_total_is_refused() {
    let fake = fake_host();

    let o = sriov(&fake, &["numvfs", "0000:3b:00.0", "99"]);

    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("PF 0000:3b:00.0: cannot enable 99 VFs, the device supports at most 8"),
        "{}",
        stderr(&o)
    );
    assert_eq!(numvfs_file(&fake, "0000:3b:00.0"), "2");
}

#[test]
fn sriov_numvfs_on_a_non_pf_or_unknown_address_fails() {
    let fake = fake_host();

    let plain = sriov(&fake, &["numvfs", "0000:00:03.0", "1"]);
    let unknown = sriov(&fake, &["numvfs", "0000:99:00.0", "1"]);
    let vf = sriov(&fake, &["numvfs", "0000:3b:10.0", "1"]);

    assert_eq!(plain.status.code(), Some(1));
    assert!(
        stderr(&plain).contains("0000:00:03.0 is not an SR-IOV physical function"),
        "{}",
        stderr(&plain)
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no PCI device 0000:99:00.0 in "),
        "{}",
        stderr(&unknown)
    );
    assert_eq!(vf.status.code(), Some(1));
    assert!(
        stderr(&vf).contains("0000:3b:10.0 is not an SR-IOV physical function"),
        "{}",
        stderr(&vf)
    );
}

/// No kernel behind a fake tree: the write lands in the file, no VF appears, the
/// command says so and puts the old count back.
#[test]
fn sriov_numvfs_without_effect_is_reported_and_rolled_back() {
    let fake = fake_host();

    let o = sriov(&fake, &["numvfs", "0000:3b:00.0", "3"]);

    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("0000:3b:00.0"), "{err}");
    assert!(err.contains("should be 3 after the change"), "{err}");
    assert_eq!(numvfs_file(&fake, "0000:3b:00.0"), "2", "restored");
    assert_eq!(stdout(&o), "");
}

#[test]
fn sriov_numvfs_to_the_current_count_prints_the_pf() {
    let fake = fake_host();

    let o = sriov(&fake, &["numvfs", "0000:3b:00.0", "2"]);

    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "0000:3b:00.0: 2 of 8 VFs enabled\n  \
         vf 0 0000:3b:10.0 driver ixgbevf\n  \
         vf 1 0000:3b:10.2 driver vfio-pci\n"
    );
}

#[test]
fn sriov_vf_vlan_out_of_range_is_a_usage_error() {
    let fake = fake_host();

    let o = sriov(&fake, &["vf", "0000:3b:10.0", "--vlan", "4095"]);

    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("--vlan"), "{err}");
    assert!(err.contains("0..=4094"), "{err}");
}

/// A multicast MAC is refused before any netlink request; the fake PF's netdev
/// does not exist, so any request would fail with ENODEV instead.
#[test]
fn sriov_vf_multicast_mac_is_refused() {
    let fake = fake_host();

    let o = sriov(&fake, &["vf", "0000:3b:10.0", "--mac", "01:00:5e:00:00:01"]);

    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains("a multicast or broadcast address cannot be a station address"),
        "{err}"
    );
    assert!(err.contains("01:00:5e:00:00:01"), "{err}");
    assert!(!err.contains("ENODEV"), "{err}");
}

#[test]
fn sriov_vf_without_a_setting_has_nothing_to_change() {
    let fake = fake_host();

    let o = sriov(&fake, &["vf", "0000:3b:10.0"]);

    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("nothing to change for VF 0000:3b:10.0"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn sriov_vf_on_a_pf_or_unknown_address_fails() {
    let fake = fake_host();

    let pf = sriov(&fake, &["vf", "0000:3b:00.0", "--vlan", "5"]);
    let unknown = sriov(&fake, &["vf", "0000:99:00.0", "--vlan", "5"]);

    assert_eq!(pf.status.code(), Some(1));
    assert!(
        stderr(&pf).contains("0000:3b:00.0 is not an SR-IOV virtual function"),
        "{}",
        stderr(&pf)
    );
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no PCI device 0000:99:00.0"),
        "{}",
        stderr(&unknown)
    );
}

/// A valid setting on a fake tree reaches rtnetlink, where the PF's netdev does
/// not exist: the error names the VF, its index and the interface.
#[test]
fn sriov_vf_on_a_fake_tree_fails_naming_the_interface() {
    let fake = fake_host();

    let o = sriov(&fake, &["vf", "0000:3b:10.2", "--vlan", "5"]);

    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("VF 0000:3b:10.2 (vf 1 of enp59s0f0)"), "{err}");
    assert!(err.contains("enp59s0f0"), "{err}");
}

#[test]
fn sriov_bind_vfio_without_the_driver_says_modprobe() {
    let fake = FakeSysfs::new();
    fake.add_pf(&PfSpec::new("0000:3b:00.0").netdev("enp59s0f0"))
        .add_vf(
            "0000:3b:00.0",
            &VfSpec::new(0, "0000:3b:10.0").iommu_group(50),
        );

    let o = sriov(&fake, &["bind-vfio", "0000:3b:10.0"]);

    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("modprobe vfio-pci"), "{err}");
    assert!(err.contains("vfio-pci"), "{err}");
    let driver =
        std::fs::read_link(fake.device_dir("0000:3b:10.0").join("driver")).expect("still bound");
    assert!(driver.ends_with("ixgbevf"), "{driver:?}");
}

#[test]
fn sriov_bind_vfio_of_a_bound_vf_reports_the_vfio_device() {
    let fake = fake_host();
    let dev = fake.path().join("dev/vfio");
    std::fs::create_dir_all(&dev).expect("mkdir dev/vfio");
    std::fs::write(dev.join("51"), "").expect("group device");

    let text = sriov(&fake, &["bind-vfio", "0000:3b:10.2"]);
    let json = sriov(&fake, &["bind-vfio", "0000:3b:10.2", "--json"]);
    let pf = sriov(&fake, &["bind-vfio", "0000:3b:00.0"]);

    assert_eq!(text.status.code(), Some(0), "{}", stderr(&text));
    assert_eq!(
        stdout(&text),
        format!(
            "0000:3b:10.2: driver vfio-pci override vfio-pci iommu group 51 vfio {}\n",
            dev.join("51").display()
        )
    );
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let v: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("binding JSON");
    assert_eq!(v["address"], "0000:3b:10.2");
    assert_eq!(v["driver"], "vfio-pci");
    assert_eq!(v["driver_override"], "vfio-pci");
    assert_eq!(v["iommu_group"], 51);
    assert_eq!(
        v["vfio_device"],
        dev.join("51").to_string_lossy().into_owned()
    );
    assert_eq!(pf.status.code(), Some(1));
    assert!(
        stderr(&pf).contains("0000:3b:00.0 is not an SR-IOV virtual function"),
        "{}",
        stderr(&pf)
    );
}
