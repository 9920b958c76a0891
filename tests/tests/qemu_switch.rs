#![allow(clippy::tests_outside_test_module)]
//! End to end: three QEMU TCG guests on the in-process vhost-user switch, with an uplink to
//! a private "wire" netns. Needs root, QEMU >= 10 and the guest from `lab/build-guest.sh`;
//! without them the test FAILS with the reason (it never skips).
//!
//! ```text
//!  A 10.99.0.2 --a.sock (VLAN 1)--+
//!  B 10.99.0.3 --b.sock (VLAN 1)--+-- switch -- uplink (native VLAN 1) == wire br0 10.99.0.1
//!  C 10.99.0.4 --c.sock (VLAN 20)-+
//! ```
//!
//! Logs: `target/lab-logs/qemu_switch/` (`lab.log` and one console log per guest).

use std::collections::BTreeMap;
use std::thread;
use std::time::{Duration, Instant};

use integration_tests::{log, Guest, GuestConfig, Lab, PingStats, Wire, WIRE_IP, WIRE_MAC};
use vswitch::{PortConfig, PortStats, Request, Response, Switch, SwitchConfig, UplinkConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const IP_A: &str = "10.99.0.2";
const IP_B: &str = "10.99.0.3";
const IP_C: &str = "10.99.0.4";
const VLAN_C: u16 = 20;

fn stats(sw: &Switch) -> BTreeMap<String, PortStats> {
    match sw.handle(&Request::Stats {}) {
        Response::Stats { ports } => ports.into_iter().map(|p| (p.name.clone(), p)).collect(),
        other => panic!("switch stats: unexpected answer {other:?}"),
    }
}

fn port<'a>(s: &'a BTreeMap<String, PortStats>, name: &str) -> &'a PortStats {
    s.get(name)
        .unwrap_or_else(|| panic!("switch stats: no port {name:?} in {:?}", s.keys()))
}

fn stats_table(s: &BTreeMap<String, PortStats>) -> String {
    s.values()
        .map(|p| {
            let drops: Vec<String> = p
                .drops
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| format!("{r}={n}"))
                .collect();
            format!(
                "  {:<16} rx {:>5} pkts {:>7} B   tx {:>5} pkts {:>7} B   drops [{}]\n",
                p.name,
                p.rx_packets,
                p.rx_bytes,
                p.tx_packets,
                p.tx_bytes,
                drops.join(" ")
            )
        })
        .collect()
}

/// Panics with `msg`, every guest's last console lines and the switch counters.
fn fail(msg: &str, guests: &[&Guest], sw: &Switch) -> ! {
    let reports: Vec<String> = guests.iter().map(|g| g.report()).collect();
    panic!(
        "{msg}\n{}switch counters:\n{}",
        reports.join(""),
        stats_table(&stats(sw))
    );
}

fn expect_replies(what: &str, p: &PingStats, guests: &[&Guest], sw: &Switch) {
    log(format!("{what}: {} rtts {:?} ms", p.summary(), p.rtts_ms));
    if !p.all_replied() {
        fail(
            &format!("{what}: expected every reply, got {}", p.summary()),
            guests,
            sw,
        );
    }
}

fn expect_no_reply(what: &str, p: &PingStats, guests: &[&Guest], sw: &Switch) {
    log(format!(
        "{what}: {} (isolated as expected: {})",
        p.summary(),
        p.received == 0
    ));
    if p.received != 0 || p.transmitted == 0 {
        fail(
            &format!("{what}: expected 100% loss, got {}", p.summary()),
            guests,
            sw,
        );
    }
}

#[test]
fn qemu_guests_talk_through_switch_and_vlan_isolates() {
    let t0 = Instant::now();
    let lab = Lab::new("qemu_switch").unwrap_or_else(|e| panic!("{e}"));
    let wire = Wire::create().unwrap_or_else(|e| panic!("{e}"));
    let (sock_a, sock_b, sock_c) = (lab.socket("a"), lab.socket("b"), lab.socket("c"));
    let config = SwitchConfig {
        ports: vec![
            PortConfig::new(&sock_a),
            PortConfig::new(&sock_b),
            PortConfig {
                vlan: VLAN_C,
                ..PortConfig::new(&sock_c)
            },
        ],
        uplinks: vec![UplinkConfig::new(wire.uplink().to_string(), 1)],
        ..SwitchConfig::default()
    };
    let sw = Switch::start(config).unwrap_or_else(|e| panic!("switch start: {e} ({e:?})"));
    log(format!(
        "switch: ports a, b (VLAN 1), c (VLAN {VLAN_C}), uplink {}",
        wire.uplink()
    ));

    // Declared after the switch: dropped (QEMU killed) before it.
    let spawn = |name: &str, ip: &str, mac: &str, sock: &std::path::PathBuf| {
        Guest::spawn(
            &lab,
            &GuestConfig::new(name, &format!("{ip}/24"), mac, sock),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    let a = spawn("A", IP_A, "52:54:00:99:00:02", &sock_a);
    let b = spawn("B", IP_B, "52:54:00:99:00:03", &sock_b);
    let c = spawn("C", IP_C, "52:54:00:99:00:04", &sock_c);
    let all = [&a, &b, &c];
    thread::scope(|s| {
        let waits: Vec<_> = all
            .iter()
            .map(|g| s.spawn(move || g.wait_ready(BOOT_TIMEOUT)))
            .collect();
        for w in waits {
            match w.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("boot failed: {e}"),
                Err(_) => panic!("boot wait thread panicked"),
            }
        }
    });
    log(format!(
        "all guests ready {:.1} s after the start",
        t0.elapsed().as_secs_f64()
    ));

    // Permanent ARP entries between A, B and the wire: Linux re-checks a stale entry with
    // a unicast ARP 5 s after using it, and such a frame between A and B during C's
    // window below would look like a leak.
    for (g, peers) in [
        (&a, [(IP_B, "52:54:00:99:00:03"), (WIRE_IP, WIRE_MAC)]),
        (&b, [(IP_A, "52:54:00:99:00:02"), (WIRE_IP, WIRE_MAC)]),
    ] {
        for (ip, mac) in peers {
            g.run_ok(&format!("arp -s {ip} {mac}"), Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }

    // Guest to guest in VLAN 1. The first exchange also resolves ARP and teaches the FDB;
    // it is not judged, only the one after it.
    let warm = a.ping(IP_B, 1, 3).unwrap_or_else(|e| panic!("{e}"));
    log(format!("A -> B warm-up: {}", warm.summary()));
    let p = a.ping(IP_B, 3, 2).unwrap_or_else(|e| panic!("{e}"));
    expect_replies("A -> B", &p, &all, &sw);

    // Guest to wire and wire to guest, through the uplink (native VLAN 1, untagged).
    let p = a.ping(WIRE_IP, 3, 2).unwrap_or_else(|e| panic!("{e}"));
    expect_replies("A -> wire", &p, &all, &sw);
    let p = wire.ping(IP_B, 3, 2).unwrap_or_else(|e| panic!("{e}"));
    if !p.all_replied() {
        log(format!("wire fdb:\n{}", wire.fdb()));
    }
    expect_replies("wire -> B", &p, &all, &sw);

    // C (VLAN 20) reaches nobody, and none of its frames reaches a or b.
    let before = stats(&sw);
    for (what, ip) in [("C -> A", IP_A), ("C -> B", IP_B), ("C -> wire", WIRE_IP)] {
        let p = c.ping(ip, 2, 1).unwrap_or_else(|e| panic!("{e}"));
        expect_no_reply(what, &p, &all, &sw);
    }
    let after = stats(&sw);
    log(format!(
        "switch counters before C's attempts:\n{}after:\n{}",
        stats_table(&before),
        stats_table(&after)
    ));
    let up = wire.uplink();
    let c_sent = port(&after, "c").rx_packets - port(&before, "c").rx_packets;
    if c_sent == 0 {
        fail(
            "C's frames never reached the switch (port c rx unchanged)",
            &all,
            &sw,
        );
    }
    for name in ["a", "b"] {
        let leaked = port(&after, name).tx_packets - port(&before, name).tx_packets;
        if leaked != 0 {
            fail(
                &format!("{leaked} frame(s) reached port {name} while only C (VLAN {VLAN_C}) sent {c_sent}"),
                &all,
                &sw,
            );
        }
    }
    // And the other way: the wire cannot reach C.
    let p = wire.ping(IP_C, 2, 1).unwrap_or_else(|e| panic!("{e}"));
    expect_no_reply("wire -> C", &p, &all, &sw);

    // Every VLAN 1 port moved traffic both ways.
    let end = stats(&sw);
    for name in ["a", "b", up] {
        let p = port(&end, name);
        if p.rx_packets == 0 || p.tx_packets == 0 {
            fail(
                &format!("port {name}: expected rx and tx traffic"),
                &all,
                &sw,
            );
        }
    }
    log(format!("final switch counters:\n{}", stats_table(&end)));
    log(format!(
        "test body done in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
}
