#![allow(clippy::tests_outside_test_module)]
//! Live migration of a QEMU guest whose NIC is a vhost-user port of accelnet's switch,
//! with a probe running from the wire at 100/s:
//!
//! 1. same host: the destination QEMU connects to the *same* switch port while the
//!    source is still connected (the port serves both, and follows the destination
//!    once its rings start);
//! 2. across hosts: two switch processes, each in its own netns ("host A", "host B")
//!    with its own uplink onto one shared wire bridge; the guest moves from A to B
//!    and the wire finds it there through the guest's announce.
//!
//! ```text
//!             host A netns                          host B netns
//!  G/D1 --a.sock-- accelnet switch --uplink0--+  +--uplink0-- accelnet switch --b.sock-- D2
//!                                             br0 (wire netns, 10.99.0.1, probe)
//! ```
//! Downtime (QEMU's), total time, lost probes and the longest gap are logged
//! (`target/lab-logs/qemu_migration/lab.log`) and printed. The switch must never make a
//! migration hang: every wait has a deadline.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use integration_tests::{
    log, Guest, GuestConfig, Lab, Probe, ProbeReport, Qmp, SwitchProcess, Wire,
};
use serde_json::{json, Value};
use vswitch::{PortStats, Request, Response};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const MAC: &str = "52:54:00:99:00:02";
const RATE: u32 = 100;
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

fn guest_config(name: &str, sock: &Path, qmp: &Path, incoming: bool) -> GuestConfig {
    let mut c = GuestConfig::new(name, &format!("{IP}/24"), MAC, sock);
    c.qemu_args = vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ];
    if incoming {
        c.qemu_args.extend(["-incoming".into(), "defer".into()]);
    }
    c
}

fn port_stats(ctl: &Path, name: &str) -> PortStats {
    match vswitch::control::request(ctl, &Request::Stats {}) {
        Ok(Response::Stats { ports }) => ports
            .into_iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no port {name} on {}", ctl.display())),
        other => panic!("stats from {}: {other:?}", ctl.display()),
    }
}

/// What one migration cost, from QEMU and from the probe.
#[derive(Debug)]
struct Outcome {
    total_ms: u64,
    downtime_ms: u64,
    lost: u64,
    gap: Duration,
}

/// Migrates `src` (QMP) into `dst` (started with `-incoming defer`) over a unix socket.
fn migrate(
    what: &str,
    src: &mut Qmp,
    dst: &mut Qmp,
    uri_path: &Path,
    probe: &Probe,
) -> (Value, Duration, Duration) {
    dst.execute(
        "migrate-incoming",
        json!({ "uri": format!("unix:{}", uri_path.display()) }),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    src.execute(
        "migrate-set-capabilities",
        json!({ "capabilities": [{ "capability": "events", "state": true }] }),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let start = probe.mark(&format!("{what} start"));
    src.execute(
        "migrate",
        json!({ "uri": format!("unix:{}", uri_path.display()) }),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    let t0 = Instant::now();
    let info = src
        .wait_migration(MIGRATION_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let done = probe.mark(&format!("{what} done"));
    log(format!(
        "{what}: completed in {:.2} s: {info}",
        t0.elapsed().as_secs_f64()
    ));
    // QEMU fills in the downtime a moment after `completed`.
    std::thread::sleep(Duration::from_millis(300));
    let info = src
        .execute("query-migrate", json!({}))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    (info, start, done)
}

fn outcome(r: &ProbeReport, info: &Value, from: Duration, to: Duration) -> Outcome {
    let ms = |k: &str| info.get(k).and_then(Value::as_u64).unwrap_or(0);
    let w = r.window(from, to);
    Outcome {
        total_ms: ms("total-time"),
        downtime_ms: ms("downtime"),
        lost: w.lost,
        gap: w.gap,
    }
}

fn quit(q: &mut Qmp) {
    let _ = q.execute("quit", json!({}));
}

#[test]
fn qemu_guest_migrates_on_one_switch_and_between_two_switches() {
    let lab = Lab::new("qemu_migration").unwrap_or_else(|e| panic!("{e}"));
    let wire = Wire::create().unwrap_or_else(|e| panic!("{e}"));
    let host_a = wire.add_host().unwrap_or_else(|e| panic!("{e}"));
    let host_b = wire.add_host().unwrap_or_else(|e| panic!("{e}"));
    let run = lab.run_dir().to_path_buf();
    let p = |n: &str| -> PathBuf { run.join(n) };
    let (sock_a, sock_b, ctl_a, ctl_b) =
        (p("a.sock"), p("b.sock"), p("ctl-a.sock"), p("ctl-b.sock"));
    let switch = |host: &integration_tests::Host, sock: &Path, ctl: &Path| {
        let args = vec![
            "--vhost-user-server".into(),
            sock.display().to_string(),
            "--uplink".into(),
            host.uplink().into(),
            "--control".into(),
            ctl.display().to_string(),
        ];
        let mut sw = SwitchProcess::start_in(Some(host.netns()), lab.log_dir(), &args)
            .unwrap_or_else(|e| panic!("{e}"));
        sw.wait_path(ctl, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        sw
    };
    let mut sw_a = switch(&host_a, &sock_a, &ctl_a);
    let mut sw_b = switch(&host_b, &sock_b, &ctl_b);

    let g = Guest::spawn(&lab, &guest_config("G", &sock_a, &p("qmp-g.sock"), false))
        .unwrap_or_else(|e| panic!("{e}"));
    g.wait_ready(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let mut qmp_g =
        Qmp::connect(&p("qmp-g.sock"), Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    let probe = Probe::start(wire.netns(), IP, RATE).unwrap_or_else(|e| panic!("probe: {e}"));
    probe
        .wait_for_replies(20, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("the guest never answered the probe: {e}"));

    // 1. Same host: D1 connects to a.sock next to G.
    let d1 = Guest::spawn(&lab, &guest_config("D1", &sock_a, &p("qmp-d1.sock"), true))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut qmp_d1 =
        Qmp::connect(&p("qmp-d1.sock"), Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let (info1, s1, e1) = migrate(
        "same-host migration",
        &mut qmp_g,
        &mut qmp_d1,
        &p("mig1.sock"),
        &probe,
    );
    quit(&mut qmp_g);
    drop(g);
    d1.run_ok("echo migrated-once", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("D1 does not run the migrated guest: {e}"));
    probe
        .wait_for_replies(20, Duration::from_secs(20))
        .unwrap_or_else(|e| {
            panic!(
                "no replies after the same-host migration: {e}\n{}",
                d1.report()
            )
        });
    sw_a.check_running().unwrap_or_else(|e| panic!("{e}"));
    let b_before = port_stats(&ctl_b, "b");

    // 2. Across hosts: D2 on switch B.
    let d2 = Guest::spawn(&lab, &guest_config("D2", &sock_b, &p("qmp-d2.sock"), true))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut qmp_d2 =
        Qmp::connect(&p("qmp-d2.sock"), Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let (info2, s2, e2) = migrate(
        "migration host A -> host B",
        &mut qmp_d1,
        &mut qmp_d2,
        &p("mig2.sock"),
        &probe,
    );
    quit(&mut qmp_d1);
    drop(d1);
    d2.run_ok("echo migrated-twice", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("D2 does not run the migrated guest: {e}"));
    probe
        .wait_for_replies(20, Duration::from_secs(20))
        .unwrap_or_else(|e| {
            panic!(
                "no replies through host B after the migration: {e}\n{}wire fdb:\n{}",
                d2.report(),
                wire.fdb()
            )
        });
    let b_after = port_stats(&ctl_b, "b");
    // The destination found the guest through its own announce (GUEST_ANNOUNCE).
    let acked = match vswitch::control::request(&ctl_b, &Request::Ports {}) {
        Ok(Response::Ports { ports }) => ports
            .iter()
            .find(|p| p.name == "b")
            .map(|p| p.acked_features),
        other => panic!("ports of switch B: {other:?}"),
    };
    assert_ne!(
        acked.unwrap_or(0) & vswitch::features::F_GUEST_ANNOUNCE,
        0,
        "GUEST_ANNOUNCE not negotiated on host B: {acked:?}"
    );
    assert!(
        b_after.tx_packets > b_before.tx_packets && b_after.rx_packets > b_before.rx_packets,
        "host B's switch did not carry the guest's traffic: {b_before:?} -> {b_after:?}"
    );
    sw_a.check_running().unwrap_or_else(|e| panic!("{e}"));
    sw_b.check_running().unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(1));
    let report = probe.stop();
    log(format!(
        "probe: {}\n{}",
        report.summary(),
        report.timeline()
    ));
    let _ = e1;
    let o1 = outcome(&report, &info1, s1, s2);
    let o2 = outcome(&report, &info2, s2, e2 + Duration::from_secs(3));
    let summary = format!(
        "same-host migration: total {} ms, downtime {} ms, lost {} at {RATE}/s, longest gap {:.3} s\n\
         host A -> host B: total {} ms, downtime {} ms, lost {} at {RATE}/s, longest gap {:.3} s",
        o1.total_ms,
        o1.downtime_ms,
        o1.lost,
        o1.gap.as_secs_f64(),
        o2.total_ms,
        o2.downtime_ms,
        o2.lost,
        o2.gap.as_secs_f64()
    );
    log(&summary);
    eprintln!("{summary}");
    assert!(
        report.recovered(),
        "the last probe was not answered\n{report}"
    );
}
