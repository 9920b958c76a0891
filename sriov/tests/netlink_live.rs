//! rtnetlink against the running kernel, on a throw-away interface without VFs.
//!
//! Needs root (CAP_NET_ADMIN) and `ip` (iproute2): creates `acnl<pid>-<n>` (a
//! `dummy`, or a `veth` pair where the dummy module is missing) in the current
//! network namespace and deletes it when the test ends, also on failure.
//! The real VF path (igb in a QEMU guest) is tested elsewhere.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use sriov::netlink::{Netlink, NetlinkError, VfChange};
use sriov::VfInfoSource;

fn require_root() {
    let out = Command::new("id").arg("-u").output().expect("run id -u");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        uid, "0",
        "the netlink live tests need root (CAP_NET_ADMIN) to create a test interface; \
         run them as root (CI does)"
    );
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A test interface that is deleted on drop.
struct TestLink {
    name: String,
}

impl TestLink {
    fn new() -> TestLink {
        require_root();
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "acnl{}-{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        assert!(name.len() < 15, "{name}");
        let peer = format!("{name}p");
        let dummy = ip(&["link", "add", &name, "type", "dummy"]);
        if let Err(e) = dummy {
            ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer])
                .unwrap_or_else(|e2| panic!("cannot create a test interface: {e}; {e2}"));
        }
        TestLink { name }
    }
}

impl Drop for TestLink {
    fn drop(&mut self) {
        if let Err(e) = ip(&["link", "del", &self.name]) {
            eprintln!("cannot delete test interface {}: {e}", self.name);
        }
    }
}

#[test]
fn test_vf_infos_of_an_interface_without_vfs_is_empty() {
    let link = TestLink::new();
    let nl = Netlink::open().expect("open rtnetlink");

    let infos = nl.vf_infos(&link.name).expect("read VF settings");

    assert!(infos.is_empty(), "{infos:?}");
    // Through the discovery trait too.
    let infos = VfInfoSource::vf_infos(&nl, "0000:00:00.0", std::slice::from_ref(&link.name))
        .expect("read through VfInfoSource");
    assert!(infos.is_empty(), "{infos:?}");
    let infos = VfInfoSource::vf_infos(&nl, "0000:00:00.0", &[]).expect("no netdev");
    assert!(infos.is_empty());
}

#[test]
fn test_vf_infos_of_a_missing_interface_names_it() {
    require_root();
    let nl = Netlink::open().expect("open rtnetlink");

    let err = nl.vf_infos("acnl-no-such").expect_err("no such interface");

    assert_eq!(err.errno(), Some(libc::ENODEV), "{err:?}");
    let s = err.to_string();
    assert!(s.contains("acnl-no-such"), "{s}");
    assert!(s.contains("ENODEV"), "{s}");

    let err = VfInfoSource::vf_infos(&nl, "0000:3b:00.0", &["acnl-no-such".to_string()])
        .expect_err("no such interface");
    let s = err.to_string();
    assert!(
        s.contains("0000:3b:00.0") && s.contains("acnl-no-such"),
        "{s}"
    );
}

#[test]
fn test_set_vf_on_an_interface_without_vfs_is_refused_clearly() {
    let link = TestLink::new();
    let nl = Netlink::open().expect("open rtnetlink");
    let change = VfChange {
        vlan: Some(5),
        ..Default::default()
    };

    let err = nl.set_vf(&link.name, 0, &change).expect_err("no VF ndo");

    let NetlinkError::Kernel {
        ifname, vf, errno, ..
    } = &err
    else {
        panic!("expected a kernel error, got {err:?}");
    };
    assert_eq!(ifname, &link.name);
    assert_eq!(*vf, Some(0));
    assert_eq!(*errno, libc::EOPNOTSUPP, "{err}");
    let s = err.to_string();
    assert!(
        s.contains(&format!("setting VF 0 VLAN 5 on {}", link.name)),
        "{s}"
    );
    assert!(s.contains("EOPNOTSUPP"), "{s}");
}

#[test]
fn test_apply_vf_on_an_interface_without_vfs_finds_no_vf() {
    let link = TestLink::new();
    let nl = Netlink::open().expect("open rtnetlink");

    let err = nl
        .apply_vf(&link.name, 2, &VfChange::reset())
        .expect_err("no VF 2");

    assert!(
        matches!(
            &err,
            NetlinkError::NoSuchVf {
                vf: 2,
                count: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(&link.name), "{err}");
}
