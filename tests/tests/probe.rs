#![allow(clippy::tests_outside_test_module)]
//! The ICMP probe itself, across a veth pair between two private network namespaces:
//! no loss on a healthy link (two probes at once, 200/s and 1000/s), and a link taken down
//! for ~0.5 s shows up as one gap of about that size. Needs root (it FAILS without).

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use integration_tests::{log, run_cmd, Probe, ProbeReport};

const IP_TIMEOUT: Duration = Duration::from_secs(20);
static SEQ: AtomicUsize = AtomicUsize::new(0);

fn ip(args: &[&str]) {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    let out = run_cmd(&argv, IP_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.success(),
        "`{}` failed ({}): {}",
        argv.join(" "),
        out.status,
        out.output.trim()
    );
}

/// Two namespaces `anp-<pid>-<n>-a`/`-b` joined by veth `pa` (10.97.0.1/24) <-> `pb`
/// (10.97.0.2/24), with fixed MACs and permanent neighbour entries: no ARP, so a link taken
/// down drops packets at once instead of queueing them behind a neighbour resolution (and
/// delivering them a second later). Both namespaces (and so the veth) are deleted on drop,
/// even when the test panics half-way through the setup.
struct VethPair {
    a: String,
    b: String,
}

impl VethPair {
    const IP_B: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 2);

    fn create() -> VethPair {
        reap_stale();
        let (pid, n) = (std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let pair = VethPair {
            a: format!("anp-{pid}-{n}-a"),
            b: format!("anp-{pid}-{n}-b"),
        };
        let (a, b) = (pair.a.as_str(), pair.b.as_str());
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        let (mac_a, mac_b) = ("02:00:00:97:00:01", "02:00:00:97:00:02");
        ip(&[
            "-n", a, "link", "add", "pa", "address", mac_a, "type", "veth", "peer", "name", "pb",
            "address", mac_b, "netns", b,
        ]);
        ip(&["-n", a, "addr", "add", "10.97.0.1/24", "dev", "pa"]);
        ip(&["-n", b, "addr", "add", "10.97.0.2/24", "dev", "pb"]);
        for (ns, peer, mac, dev) in [(a, "10.97.0.2", mac_b, "pa"), (b, "10.97.0.1", mac_a, "pb")] {
            ip(&[
                "-n",
                ns,
                "neigh",
                "replace",
                peer,
                "lladdr",
                mac,
                "dev",
                dev,
                "nud",
                "permanent",
            ]);
        }
        for (ns, dev) in [(a, "lo"), (a, "pa"), (b, "lo"), (b, "pb")] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        log(format!("veth pair: {a} pa 10.97.0.1 <-> {b} pb 10.97.0.2"));
        pair
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = run_cmd(&["ip", "netns", "del", ns], IP_TIMEOUT);
        }
    }
}

/// Deletes `anp-<pid>-*` namespaces of test processes that died before their Drop ran.
fn reap_stale() {
    let Ok(out) = run_cmd(&["ip", "netns", "list"], IP_TIMEOUT) else {
        return;
    };
    for ns in out
        .output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
    {
        if let Some(pid) = ns.strip_prefix("anp-").and_then(|r| r.split('-').next()) {
            if !Path::new("/proc").join(pid).exists() {
                let _ = run_cmd(&["ip", "netns", "del", ns], IP_TIMEOUT);
            }
        }
    }
}

fn start(netns: &str, rate: u32) -> Probe {
    Probe::start(netns, VethPair::IP_B, rate).unwrap_or_else(|e| panic!("{e}"))
}

/// The schedule holds: `sent` is what `duration` at `rate` calls for (no drift, no skips).
fn assert_on_schedule(r: &ProbeReport) {
    let expected = (r.duration.as_secs_f64() * f64::from(r.rate)).round() as u64 + 1;
    assert!(
        r.sent.abs_diff(expected) <= 1,
        "sent {} in {:?}, expected {expected}:\n{r}",
        r.sent,
        r.duration
    );
}

#[test]
fn probe_counts_every_reply_on_a_healthy_link() {
    let pair = VethPair::create();
    // Two probes at once in one namespace: each must see only its own replies.
    let slow = start(&pair.a, 200);
    let fast = start(&pair.a, 1000);
    assert_ne!(slow.ident(), fast.ident());
    thread::sleep(Duration::from_secs(2));
    let (slow, fast) = (slow.stop(), fast.stop());
    for r in [&slow, &fast] {
        log(format!("{r}"));
        assert!(r.sent > 0, "{r}");
        assert_eq!(r.lost, 0, "{r}");
        assert_eq!(r.received, r.sent, "{r}");
        assert_eq!((r.duplicates, r.corrupt, r.send_errors), (0, 0, 0), "{r}");
        assert!(r.lost_ranges.is_empty() && r.recovered(), "{r}");
        assert_on_schedule(r);
        assert!(r.gap() < Duration::from_millis(300), "{r}");
    }
    assert!(
        slow.duration >= Duration::from_millis(1900),
        "probe stopped early:\n{slow}"
    );
}

#[test]
fn probe_reports_the_gap_of_a_link_outage() {
    const RATE: u32 = 200;
    let pair = VethPair::create();
    let probe = start(&pair.a, RATE);
    probe
        .wait_for_replies(20, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e}"));
    thread::sleep(Duration::from_millis(300));
    let down = probe.mark("down");
    ip(&["-n", &pair.b, "link", "set", "pb", "down"]);
    thread::sleep(Duration::from_millis(500));
    ip(&["-n", &pair.b, "link", "set", "pb", "up"]);
    let up = probe.mark("up");
    let back = probe
        .wait_for_replies(20, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no replies after the link came back: {e}"));
    log(format!(
        "replies again {:.3} s after `up`",
        back.as_secs_f64()
    ));
    thread::sleep(Duration::from_millis(300));
    let r = probe.stop();
    log(format!("{r}"));

    let outage = up - down;
    let gap = r.longest_gap.unwrap_or_else(|| panic!("no gap:\n{r}"));
    // Correctness, not timing: wide bounds.
    assert!(
        gap.len() >= outage / 2 && gap.len() <= outage * 2,
        "longest gap {:?} vs outage {outage:?}:\n{r}",
        gap.len()
    );
    let expected = outage.as_secs_f64() * f64::from(RATE);
    assert!(
        (r.lost as f64) >= expected * 0.5 && (r.lost as f64) <= expected * 2.0,
        "lost {} vs ~{expected:.0} expected:\n{r}",
        r.lost
    );
    // The gap is the outage: it lies around the marks, and holds (almost) all the losses.
    let slack = Duration::from_millis(200);
    assert!(
        gap.from + slack >= down && gap.to <= up + back + slack,
        "gap {:?}..{:?} outside the marks {down:?}..{up:?}:\n{r}",
        gap.from,
        gap.to
    );
    assert!(gap.lost() * 10 >= r.lost * 9, "{r}");
    // Dropped, not delayed: nothing came back during the outage either.
    assert!(
        r.silence() >= gap.len() / 2 && r.silence() <= gap.len() * 2,
        "silence {:?} vs gap {:?}:\n{r}",
        r.silence(),
        gap.len()
    );
    assert_eq!(r.first_loss, Some(r.lost_ranges[0].from), "{r}");
    assert_eq!((r.duplicates, r.corrupt), (0, 0), "{r}");
    assert!(r.recovered(), "{r}");
    assert_eq!(r.mark("down"), Some(down));
    assert!(r.timeline().contains("mark \"up\""), "{r}");
}
