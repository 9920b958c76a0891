#![allow(clippy::tests_outside_test_module)]
//! Switch restarts under traffic, both socket directions, with real QEMU guests.
//!
//! One `accelnet switch run` process serves two guests: S (QEMU connects to the
//! switch's socket, chardev `reconnect-ms=100`) and C (QEMU owns the socket,
//! `server=on,wait=off`; the switch connects with `--vhost-user-client`). A probe in the
//! wire namespace pings each guest at 100/s through the switch's uplink. The switch is
//! SIGKILLed and started again with the same command [`KILLS`] times; every time both
//! guests' traffic must come back without a guest reboot. The gap and the packets lost
//! per kill are logged (`target/lab-logs/qemu_reconnect/lab.log`) and printed.
//!
//! ```text
//!  S 10.99.0.2 --s.sock (switch listens)--+
//!                                         +-- accelnet switch -- uplink == wire br0 10.99.0.1
//!  C 10.99.0.3 --c.sock (QEMU listens)----+          (probe: wire -> S, wire -> C, 100/s)
//! ```

use std::net::Ipv4Addr;
use std::thread;
use std::time::Duration;

use integration_tests::{log, Guest, GuestConfig, Lab, Probe, ProbeReport, SwitchProcess, Wire};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const IP_S: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const IP_C: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);
const RATE: u32 = 100;
const KILLS: usize = 3;
/// Steady traffic before each kill and after each recovery.
const STEADY: Duration = Duration::from_secs(2);
/// Longest wait for traffic to come back after a restart; past it the test fails.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(15);

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn uptime(g: &Guest) -> f64 {
    let out = g
        .run_ok("cat /proc/uptime", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    out.split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no uptime in {out:?}"))
}

#[test]
fn qemu_guests_survive_switch_sigkill_in_server_and_client_mode() {
    let lab = Lab::new("qemu_reconnect").unwrap_or_else(|e| panic!("{e}"));
    let wire = Wire::create().unwrap_or_else(|e| panic!("{e}"));
    let (sock_s, sock_c, ctl) = (lab.socket("s"), lab.socket("c"), lab.socket("ctl"));
    let args: Vec<String> = vec![
        "--vhost-user-server".into(),
        sock_s.display().to_string(),
        "--vhost-user-client".into(),
        sock_c.display().to_string(),
        "--uplink".into(),
        wire.uplink().into(),
        "--control".into(),
        ctl.display().to_string(),
    ];
    let mut sw = SwitchProcess::start(lab.log_dir(), &args).unwrap_or_else(|e| panic!("{e}"));
    sw.wait_path(&sock_s, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));

    let mut cfg_s = GuestConfig::new("S", &format!("{IP_S}/24"), "52:54:00:99:00:02", &sock_s);
    cfg_s.chardev_opts = ",reconnect-ms=100".into();
    let mut cfg_c = GuestConfig::new("C", &format!("{IP_C}/24"), "52:54:00:99:00:03", &sock_c);
    cfg_c.chardev_opts = ",server=on,wait=off".into();
    let gs = Guest::spawn(&lab, &cfg_s).unwrap_or_else(|e| panic!("{e}"));
    let gc = Guest::spawn(&lab, &cfg_c).unwrap_or_else(|e| panic!("{e}"));
    for g in [&gs, &gc] {
        g.wait_ready(BOOT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    }
    let up_before = [uptime(&gs), uptime(&gc)];

    let probes = [
        ("server", Probe::start(wire.netns(), IP_S, RATE)),
        ("client", Probe::start(wire.netns(), IP_C, RATE)),
    ];
    let probes: Vec<(&str, Probe)> = probes
        .into_iter()
        .map(|(m, p)| (m, p.unwrap_or_else(|e| panic!("probe: {e}"))))
        .collect();
    for (mode, p) in &probes {
        p.wait_for_replies(10, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{mode}-mode guest never answered the probe: {e}"));
    }
    thread::sleep(STEADY);

    for k in 0..KILLS {
        for (_, p) in &probes {
            p.mark(&format!("kill{k}"));
        }
        assert!(sock_s.exists());
        sw.kill9().unwrap_or_else(|e| panic!("{e}"));
        // SIGKILL leaves the server socket behind: the new switch must replace it.
        assert!(sock_s.exists(), "the killed switch's socket file is gone");
        sw.restart().unwrap_or_else(|e| panic!("{e}"));
        for (_, p) in &probes {
            p.mark(&format!("restart{k}"));
        }
        for (mode, p) in &probes {
            p.wait_for_replies(5, RECOVERY_TIMEOUT).unwrap_or_else(|e| {
                let _ = sw.check_running();
                panic!(
                    "{mode}-mode guest's traffic did not come back within {RECOVERY_TIMEOUT:?} \
                     after switch restart {k}: {e}\n{}{}switch log: {}",
                    gs.report(),
                    gc.report(),
                    sw.current_log().display()
                )
            });
        }
        sw.check_running().unwrap_or_else(|e| panic!("{e}"));
        thread::sleep(STEADY);
    }

    let reports: Vec<(&str, ProbeReport)> =
        probes.into_iter().map(|(m, p)| (m, p.stop())).collect();
    let up_after = [uptime(&gs), uptime(&gc)];
    for (i, g) in ["S", "C"].iter().enumerate() {
        assert!(
            up_after[i] > up_before[i],
            "guest {g} rebooted (uptime {} -> {})",
            up_before[i],
            up_after[i]
        );
    }
    let mut summary = String::new();
    for (mode, r) in &reports {
        log(format!(
            "{mode} mode probe: {}\n{}",
            r.summary(),
            r.timeline()
        ));
        assert!(
            r.recovered(),
            "{mode} mode: the last probe was not answered\n{r}"
        );
        let mut gaps = Vec::new();
        let mut lost = Vec::new();
        let mut silences = Vec::new();
        for k in 0..KILLS {
            let from = r.mark(&format!("kill{k}")).expect("kill mark");
            let to = r.mark(&format!("kill{}", k + 1)).unwrap_or(r.duration);
            let o = r.window(from.saturating_sub(r.period() * 5), to);
            summary += &format!(
                "{mode} mode, kill {k}: gap {:.3} s, longest reply silence {:.3} s, lost {} at {RATE}/s\n",
                o.gap.as_secs_f64(),
                o.silence.as_secs_f64(),
                o.lost
            );
            gaps.push(o.gap);
            silences.push(o.silence);
            lost.push(o.lost);
        }
        lost.sort_unstable();
        summary += &format!(
            "{mode} mode: median gap {:.3} s, median silence {:.3} s, median lost {} ({KILLS} kills)\n",
            median(gaps).as_secs_f64(),
            median(silences).as_secs_f64(),
            lost[lost.len() / 2]
        );
    }
    log(&summary);
    eprintln!("{summary}");

    // The other direction of client mode: QEMU goes away and comes back (a new QEMU on
    // the same socket path); the switch, retrying with backoff, connects to it.
    drop(gc);
    thread::sleep(Duration::from_secs(1));
    let gc = Guest::spawn(&lab, &cfg_c).unwrap_or_else(|e| panic!("{e}"));
    gc.wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let p = wire
        .ping(&IP_C.to_string(), 3, 3)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        p.received > 0,
        "the switch did not reconnect to the restarted QEMU: {}\n{}switch log: {}",
        p.summary(),
        gc.report(),
        sw.current_log().display()
    );
    sw.check_running().unwrap_or_else(|e| panic!("{e}"));
    log(format!(
        "client mode after a QEMU restart: wire -> C {}",
        p.summary()
    ));
}
