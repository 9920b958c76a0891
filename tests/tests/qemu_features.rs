#![allow(clippy::tests_outside_test_module)]
//! virtio-net features through the switch with real QEMU guests: two queue pairs per
//! guest, checksum/TSO offloads (passed between guests, finished in software for a
//! guest or a wire that cannot take them), jumbo frames, and TCP to the wire.
//!
//! ```text
//!  A 10.99.0.2 --a.sock (2 queue pairs, offloads, host_mtu 9000)--+
//!  B 10.99.0.3 --b.sock (2 queue pairs, offloads, host_mtu 9000)--+-- switch (MTU 9000, 2 threads)
//!  C 10.99.0.4 --c.sock (no offloads offered)---------------------+       |
//!                                                             uplink == wire br0 10.99.0.1
//! ```
//! iperf3 throughputs are logged (`target/lab-logs/qemu_features/lab.log`) and printed;
//! they are measurements, not assertions.

use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

use integration_tests::{log, Guest, GuestConfig, Lab, Wire, WIRE_IP};
use vswitch::config::SwitchSettings;
use vswitch::{PortConfig, PortStats, Request, Response, Switch, SwitchConfig, UplinkConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const IP_A: &str = "10.99.0.2";
const IP_B: &str = "10.99.0.3";
const IP_C: &str = "10.99.0.4";
const IPERF_SECS: u32 = 4;
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

fn stats(sw: &Switch) -> BTreeMap<String, PortStats> {
    match sw.handle(&Request::Stats {}) {
        Response::Stats { ports } => ports.into_iter().map(|p| (p.name.clone(), p)).collect(),
        other => panic!("switch stats: unexpected answer {other:?}"),
    }
}

/// Drops other than `no_rx_buffer` (a busy receiver), by reason.
fn bad_drops(p: &PortStats) -> Vec<(String, u64)> {
    p.drops
        .iter()
        .filter(|(r, n)| **n > 0 && r.as_str() != "no_rx_buffer")
        .map(|(r, n)| (r.clone(), *n))
        .collect()
}

/// The receiver's throughput in Mbit/s from `iperf3 -f m` output.
fn iperf_mbits(out: &str) -> Option<f64> {
    let line = out.lines().rev().find(|l| l.contains("receiver"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "Mbits/sec")?;
    words.get(i.checked_sub(1)?)?.parse().ok()
}

/// Runs `iperf3 -c` in `g` against `server` and returns Mbit/s.
fn iperf(g: &Guest, server: &str, extra: &str, what: &str) -> f64 {
    let out = g
        .run_ok(
            &format!("iperf3 -c {server} -t {IPERF_SECS} -f m {extra} 2>&1 | tail -4"),
            CMD_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mbits = iperf_mbits(&out).unwrap_or_else(|| panic!("{what}: no receiver line in:\n{out}"));
    log(format!("{what}: {mbits:.1} Mbit/s"));
    assert!(mbits > 0.0, "{what}: no data moved:\n{out}");
    mbits
}

fn queue_rx(p: &PortStats) -> Vec<u64> {
    p.queues.iter().map(|q| q.rx_packets).collect()
}

#[test]
fn qemu_multiqueue_offloads_jumbo_and_tcp_to_wire() {
    let lab = Lab::new("qemu_features").unwrap_or_else(|e| panic!("{e}"));
    let wire = Wire::create().unwrap_or_else(|e| panic!("{e}"));
    let (sock_a, sock_b, sock_c) = (lab.socket("a"), lab.socket("b"), lab.socket("c"));
    let sw = Switch::start(SwitchConfig {
        switch: SwitchSettings {
            mtu: 9000,
            cpus: vec![0, 1],
            ..SwitchSettings::default()
        },
        ports: vec![
            PortConfig {
                queues: 2,
                ..PortConfig::new(&sock_a)
            },
            PortConfig {
                queues: 2,
                ..PortConfig::new(&sock_b)
            },
            PortConfig {
                offloads: false,
                ..PortConfig::new(&sock_c)
            },
        ],
        uplinks: vec![UplinkConfig::new(wire.uplink().to_string(), 1)],
    })
    .unwrap_or_else(|e| panic!("switch start: {e} ({e:?})"));

    let mq = |name: &str, ip: &str, mac: &str, sock| {
        let mut c = GuestConfig::new(name, &format!("{ip}/24"), mac, sock);
        c.netdev_opts = ",queues=2".into();
        c.device_opts = ",mq=on,vectors=6,host_mtu=9000".into();
        c
    };
    let a = Guest::spawn(&lab, &mq("A", IP_A, "52:54:00:99:00:02", &sock_a))
        .unwrap_or_else(|e| panic!("{e}"));
    let b = Guest::spawn(&lab, &mq("B", IP_B, "52:54:00:99:00:03", &sock_b))
        .unwrap_or_else(|e| panic!("{e}"));
    let c = Guest::spawn(
        &lab,
        &GuestConfig::new("C", &format!("{IP_C}/24"), "52:54:00:99:00:04", &sock_c),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    thread::scope(|s| {
        for g in [&a, &b, &c] {
            s.spawn(move || g.wait_ready(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}")));
        }
    });

    // What each guest negotiated, as its driver reports it.
    for g in [&a, &b] {
        g.run_ok("ethtool -L eth0 combined 2", CMD_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let l = g
            .run_ok("ethtool -l eth0", CMD_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let combined: Vec<&str> = l.lines().filter(|x| x.contains("Combined")).collect();
        assert_eq!(
            combined.last().map(|x| x.split_whitespace().last()),
            Some(Some("2")),
            "2 queue pairs in use:\n{l}"
        );
        let f = g.ethtool_features("eth0").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            f.get("tcp-segmentation-offload") == Some(&true)
                && f.get("tx-checksumming") == Some(&true),
            "offloads negotiated by {}: {f:?}",
            if std::ptr::eq(g, &a) { "A" } else { "B" }
        );
    }
    let fc = c.ethtool_features("eth0").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        fc.get("tcp-segmentation-offload"),
        Some(&false),
        "C's port offers no offloads: {fc:?}"
    );

    for g in [&b, &c] {
        g.run_bg("iperf3 -s").unwrap_or_else(|e| panic!("{e}"));
    }
    // Warm up ARP and the FDB.
    for (g, ip) in [(&a, IP_B), (&a, IP_C), (&c, IP_B), (&a, WIRE_IP)] {
        let _ = g.ping(ip, 1, 2);
    }

    let before = stats(&sw);
    // 16 streams: the guest hashes flows onto its 2 TX queues, and with 4 streams all
    // of them land on one queue 1 time in 8.
    let on = iperf(
        &a,
        IP_B,
        "-P 16",
        "A -> B, offloads on both sides, 16 streams",
    );
    let mid = stats(&sw);
    let seg = iperf(&a, IP_C, "", "A -> C, TSO from A segmented by the switch");
    let off = iperf(&c, IP_B, "", "C -> B, no offloads");

    // Both of A's queue pairs carried A's streams.
    let (qa0, qa1) = (queue_rx(&before["a"]), queue_rx(&mid["a"]));
    assert_eq!(qa1.len(), 2, "port a queue pairs: {:?}", mid["a"].queues);
    for (q, now) in qa1.iter().enumerate() {
        assert!(
            *now > qa0.get(q).copied().unwrap_or(0),
            "A's queue pair {q} sent nothing during 16 streams: {:?}",
            mid["a"].queues
        );
    }
    // A's TSO frames were passed to B whole: far fewer frames than MTU-sized segments.
    let bytes = mid["a"].rx_bytes - before["a"].rx_bytes;
    let frames = mid["a"].rx_packets - before["a"].rx_packets;
    log(format!(
        "A -> B: {frames} frames, {bytes} bytes, {:.0} bytes per frame",
        bytes as f64 / frames.max(1) as f64
    ));
    assert!(
        bytes / frames.max(1) > 3000,
        "A's frames average {} bytes: TSO was not used end to end",
        bytes / frames.max(1)
    );

    // TCP to and from the wire: checksums finished for the uplink, and taken from it.
    for dir in ["", "-R"] {
        wire.exec(&["iperf3", "-s", "-1", "-D"])
            .unwrap_or_else(|e| panic!("{e}"));
        thread::sleep(Duration::from_millis(300));
        iperf(
            &a,
            WIRE_IP,
            dir,
            if dir.is_empty() {
                "A -> wire"
            } else {
                "wire -> A"
            },
        );
    }

    // Jumbo frames between A and B (host_mtu 9000, switch MTU 9000).
    for g in [&a, &b] {
        g.run_ok("ip link set eth0 mtu 9000", CMD_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let j0 = stats(&sw);
    let p = a
        .run("ping -c 3 -s 8972 -W 2 10.99.0.3", CMD_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let j1 = stats(&sw);
    assert!(p.success(), "9000-byte pings A -> B failed:\n{}", p.output);
    let big = j1["a"].rx_bytes - j0["a"].rx_bytes;
    assert!(
        big >= 3 * 9014,
        "A sent {big} bytes for 3 jumbo pings: fragmented, not jumbo"
    );

    let end = stats(&sw);
    for (name, p) in &end {
        assert!(
            bad_drops(p).is_empty(),
            "port {name} dropped: {:?}",
            bad_drops(p)
        );
    }
    let summary = format!(
        "iperf3 guest to guest ({IPERF_SECS} s, TCG): offloads on (TSO passed through) {on:.0} Mbit/s; \
         TSO segmented by the switch {seg:.0} Mbit/s; offloads off {off:.0} Mbit/s"
    );
    log(&summary);
    eprintln!("{summary}");
}
