//! The lab stand-in's MAC steering ([`Steering::Bridge`]) on a real Linux bridge.
//!
//! Needs root (CAP_NET_ADMIN) and iproute2 (`ip`, `bridge`): builds, in a network
//! namespace of its own, a bridge with a "VF" port and a "PF" port (veth pairs) and
//! checks each route against the kernel's FDB and port flags (`bridge fdb show`,
//! `/sys/class/net/<port>/brport/`). The namespace goes when the test ends.

use std::path::Path;
use std::process::Command;

use sriov::mac::MacAddr;
use sriov::netlink::Netlink;
use sriov::steer::{Route, Steering};

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace deleted on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn test_bridge_steering_moves_the_mac_between_vf_and_pf_ports() {
    let uid = sh(&["id", "-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "this test needs root (CAP_NET_ADMIN, netns); run it as root (CI does)"
    );
    let ns = Netns(format!("acsteer{}", std::process::id()));
    sh(&["ip", "netns", "add", &ns.0]);
    let run = |cmd: &str| {
        let mut argv = vec!["ip", "netns", "exec", &ns.0];
        argv.extend(cmd.split(' '));
        sh(&argv)
    };
    for cmd in [
        "ip link add esw0 type bridge stp_state 0 forward_delay 0",
        "ip link add vf0 type veth peer name vf0g",
        "ip link add pf0 type veth peer name pfup0",
        "ip link set vf0 master esw0",
        "ip link set pf0 master esw0",
        "ip link set esw0 up",
        "ip link set vf0 up",
        "ip link set pf0 up",
    ] {
        run(cmd);
    }
    // The test itself enters the namespace: netlink sockets and sysfs must be its.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "in_netns_steer_checks",
            "--ignored",
            "--nocapture",
        ])
        .output()
        .expect("run the checks in the namespace");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "checks in {} failed:\n{text}", ns.0);
    assert!(text.contains("1 passed"), "{text}");
}

/// Run by the test above inside its namespace (ignored when run on its own).
#[test]
#[ignore = "runs inside the namespace test_bridge_steering_moves_the_mac_between_vf_and_pf_ports creates"]
fn in_netns_steer_checks() {
    let class_net = Path::new("/sys/class/net");
    let mac: MacAddr = "52:54:00:77:00:01".parse().unwrap();
    let s = Steering::standin_bridge(class_net, "vf0", &["pfup0".to_string()], mac)
        .expect("discover the stand-in bridge");
    assert_eq!(
        s,
        Steering::Bridge {
            bridge: "esw0".into(),
            vf_port: "vf0".into(),
            pf_port: "pf0".into(),
            uplink: Some("pfup0".into()),
            mac
        }
    );
    let nl = Netlink::open().expect("rtnetlink");
    s.prepare(class_net).expect("prepare");
    let flag = |port: &str, f: &str| {
        std::fs::read_to_string(class_net.join(port).join("brport").join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(flag("vf0", "learning"), "0");
    assert_eq!(flag("vf0", "unicast_flood"), "0");
    assert_eq!(flag("pf0", "learning"), "0");
    let entry = || {
        sh(&["bridge", "fdb", "show", "br", "esw0"])
            .lines()
            .filter(|l| l.starts_with("52:54:00:77:00:01"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };

    s.route(&nl, class_net, Route::Direct).expect("direct");
    let e = entry();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("dev vf0") && e[0].contains("static") && e[0].contains("sticky"),
        "{e:?}"
    );

    s.route(&nl, class_net, Route::Both).expect("both");
    assert!(entry().is_empty(), "{:?}", entry());
    assert_eq!(flag("vf0", "unicast_flood"), "1");
    // Twice is fine (nothing to remove).
    s.route(&nl, class_net, Route::Both).expect("both again");

    s.route(&nl, class_net, Route::Synthetic)
        .expect("synthetic");
    let e = entry();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("dev pf0") && e[0].contains("sticky"), "{e:?}");
    assert_eq!(flag("vf0", "unicast_flood"), "0");

    // Replace moves it back in one request.
    s.route(&nl, class_net, Route::Direct)
        .expect("direct again");
    let e = entry();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("dev vf0"), "{e:?}");

    // A port that is gone: the error names it.
    let gone = Steering::Bridge {
        bridge: "esw0".into(),
        vf_port: "nosuchport".into(),
        pf_port: "pf0".into(),
        uplink: None,
        mac,
    };
    let err = gone
        .route(&nl, class_net, Route::Direct)
        .expect_err("no such port");
    let msg = err.to_string();
    assert!(
        msg.contains("nosuchport") && msg.contains("ENODEV"),
        "{msg}"
    );
}
