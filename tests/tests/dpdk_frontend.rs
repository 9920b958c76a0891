//! DPDK as an independent vhost-user frontend: `dpdk-testpmd` with two
//! `net_virtio_user` ports plays two guests' virtio-net drivers and forwards
//! traffic in a closed loop through accelnet's switch, run in-process.
//!
//! testpmd runs without hugepages (`--no-huge -m 512`), so the test needs no
//! setup beyond the `dpdk` package (scripts/install-deps.sh). A machine without
//! `dpdk-testpmd` fails the test with that reason: it never skips.
//!
//! Traffic: `start tx_first 4` injects 4 bursts of 32 frames per port (src = the
//! port's MAC, dst = the other port's MAC, `--eth-peer`); io forwarding sends
//! whatever port 1 receives back out of port 0 and vice versa, so the same
//! frames circulate p0 -> switch -> p1 -> testpmd -> p0 ... for the whole run.
#![allow(clippy::tests_outside_test_module)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vswitch::{PortConfig, PortStats, Switch, SwitchConfig};

const TESTPMD: &str = "dpdk-testpmd";
const MAC0: &str = "02:00:00:00:00:01";
const MAC1: &str = "02:00:00:00:00:02";
/// Virtqueue size testpmd offers (and its rx/tx descriptor count).
const QUEUE_SIZE: u64 = 256;
/// `start tx_first N`: N bursts of `BURST` frames injected per port.
const TX_FIRST_BURSTS: u64 = 4;
/// testpmd's default burst size.
const BURST: u64 = 32;
/// Frames injected per port: the closed loop's population in each direction.
const INJECTED: u64 = TX_FIRST_BURSTS * BURST;
/// Each port must receive at least this many times the injected count.
const SUSTAINED_FACTOR: u64 = 100;
/// How long the loop runs before the counters are read.
const FORWARD_FOR: Duration = Duration::from_secs(3);
/// Frames that may sit between the two counters being compared: a full ring
/// plus a few bursts being processed.
const IN_FLIGHT_SLACK: u64 = QUEUE_SIZE + 4 * BURST;
/// Budget of one case; past it the watchdog kills testpmd and aborts the test binary.
const CASE_BUDGET: Duration = Duration::from_secs(120);

/// The cases share CPU 0 and 1: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn test_testpmd_virtio_user_forwards_64b_frames_through_switch() {
    run_case(64, 1);
}

#[test]
fn test_testpmd_virtio_user_forwards_1518b_frames_through_switch() {
    run_case(1518, 1);
}

/// Two queue pairs per port (virtio-user `queues=2,cq=1`: its control queue turns
/// the queue-pair count into SET_VRING_ENABLE messages), served by two forwarding
/// threads: every queue pair of both ports carries traffic both ways.
#[test]
fn test_testpmd_virtio_user_two_queue_pairs_spread_over_two_threads() {
    run_case(64, 2);
}

fn run_case(frame_len: u64, queues: u64) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let testpmd = find_in_path(TESTPMD).unwrap_or_else(|| {
        panic!(
            "{TESTPMD} not found in PATH ({}): install DPDK (scripts/install-deps.sh); \
             this test needs it and does not skip",
            std::env::var("PATH").unwrap_or_default()
        )
    });
    let dir = TempDir::new(&format!(
        "acn-dpdk-frontend-{}-{frame_len}",
        std::process::id()
    ));
    let sock0 = dir.path().join("p0.sock");
    let sock1 = dir.path().join("p1.sock");
    let testpmd_pid = Arc::new(AtomicI32::new(0));
    let prefix = format!("acn-test-{}", std::process::id());
    let _watchdog = Watchdog::arm(
        CASE_BUDGET,
        Arc::clone(&testpmd_pid),
        prefix.clone(),
        dir.path().to_path_buf(),
    );

    let mut config = SwitchConfig {
        ports: vec![PortConfig::new(&sock0), PortConfig::new(&sock1)],
        ..Default::default()
    };
    if queues > 1 {
        // One forwarding thread per queue pair.
        config.switch.cpus = (0..queues as usize).map(|c| c % 2).collect();
    }
    let switch = Switch::start(config)
        .unwrap_or_else(|e| panic!("Switch::start failed: {}", error_chain(&e)));
    wait_until(Duration::from_secs(10), || sock0.exists() && sock1.exists())
        .unwrap_or_else(|| panic!("the switch did not create {sock0:?} and {sock1:?}"));

    let mut tp = Testpmd::spawn(
        &testpmd,
        &prefix,
        [&sock0, &sock1],
        frame_len,
        queues,
        &testpmd_pid,
    );
    let run = drive(&mut tp);
    // Switch counters; the ports are named after the socket file stems.
    let sw0 = switch.port_stats("p0");
    let sw1 = switch.port_stats("p1");
    tp.quit();
    switch.shutdown();
    let summary = format!(
        "{run:#?}\nswitch p0: {sw0:?}\nswitch p1: {sw1:?}\n--- testpmd output (tail) ---\n{}",
        tail(&tp.output(), 60)
    );
    drop(tp);
    let sw0 = sw0.unwrap_or_else(|| panic!("the switch has no port p0\n{summary}"));
    let sw1 = sw1.unwrap_or_else(|| panic!("the switch has no port p1\n{summary}"));
    check(frame_len, queues, &run, [&sw0, &sw1], &summary);
    eprintln!("dpdk_frontend {frame_len} B, {queues} queue pairs: ok\n{summary}");
}

/// The assertions of one case; `summary` goes into every failure message.
fn check(frame_len: u64, queues: u64, run: &RunStats, switch: [&PortStats; 2], summary: &str) {
    let slack = IN_FLIGHT_SLACK * queues;
    for (port, sw) in switch.into_iter().enumerate() {
        // Every queue pair the frontend enabled carried traffic both ways.
        assert_eq!(
            sw.queues.len() as u64,
            queues.max(1),
            "switch p{port}: queue pairs reported\n{summary}"
        );
        if queues > 1 {
            for q in &sw.queues {
                assert!(
                    q.rx_packets > INJECTED && q.tx_packets > INJECTED,
                    "switch p{port} queue pair {} carried too little: {q:?}\n{summary}",
                    q.queue
                );
            }
        }
        let (mid, fin, fwd) = (&run.during[port], &run.after_stop[port], &run.forward[port]);
        // Sustained forwarding in both directions, seen while the loop was running.
        assert!(
            mid.rx_packets > SUSTAINED_FACTOR * INJECTED,
            "testpmd port {port} received {} frames in {FORWARD_FOR:?}, want > {} \
             ({SUSTAINED_FACTOR} x the {INJECTED} injected)\n{summary}",
            mid.rx_packets,
            SUSTAINED_FACTOR * INJECTED
        );
        // testpmd's own view is consistent: after `stop` nothing is polled or sent any more,
        // so the port counters equal the forward statistics; whole frames of the right size.
        assert_eq!(
            (fin.rx_packets, fin.tx_packets),
            (fwd.rx_packets, fwd.tx_packets),
            "testpmd port {port}: port stats vs forward stats\n{summary}"
        );
        assert_eq!(
            (fin.rx_bytes, fin.tx_bytes),
            (fin.rx_packets * frame_len, fin.tx_packets * frame_len),
            "testpmd port {port}: bytes vs frames of {frame_len} B\n{summary}"
        );
        assert_eq!(
            (
                fin.rx_errors,
                fin.tx_errors,
                fin.rx_missed,
                fin.rx_nombuf,
                fwd.rx_dropped
            ),
            (0, 0, 0, 0, 0),
            "testpmd port {port}: errors, missed, nombuf, rx dropped\n{summary}"
        );
        // testpmd's port i is the switch's port pi. What testpmd sent on port i the switch
        // received on pi (all of it once the loop stopped, though a full ring may still wait
        // for room on the other side). What the switch delivered to pi testpmd received, but
        // for frames that reached the ring after testpmd stopped polling it. testpmd's
        // TX-dropped (its tx ring was full) never reached the switch.
        assert!(
            sw.rx_packets <= fin.tx_packets && fin.tx_packets - sw.rx_packets <= slack,
            "switch rx on p{port} ({}) vs testpmd TX-packets on port {port} ({}), \
             slack {slack} (testpmd TX-dropped {})\n{summary}",
            sw.rx_packets,
            fin.tx_packets,
            fwd.tx_dropped
        );
        assert!(
            sw.tx_packets >= fin.rx_packets && sw.tx_packets - fin.rx_packets <= slack,
            "switch tx on p{port} ({}) vs testpmd RX-packets on port {port} ({}), \
             slack {slack}\n{summary}",
            sw.tx_packets,
            fin.rx_packets
        );
        assert_eq!(
            (sw.rx_bytes, sw.tx_bytes),
            (sw.rx_packets * frame_len, sw.tx_packets * frame_len),
            "switch p{port}: bytes vs frames of {frame_len} B\n{summary}"
        );
        let bad: Vec<_> = sw
            .drops
            .iter()
            .filter(|(reason, n)| reason.as_str() != "no_rx_buffer" && **n > 0)
            .collect();
        assert!(
            bad.is_empty(),
            "switch p{port} dropped frames: {bad:?}\n{summary}"
        );
    }
}

/// What [`drive`] read from testpmd.
#[derive(Debug)]
struct RunStats {
    /// `show port stats all` while forwarding, [port 0, port 1].
    during: [NicStats; 2],
    /// `show port stats all` after `stop`, [port 0, port 1].
    after_stop: [NicStats; 2],
    /// Forward statistics printed by `stop`, [port 0, port 1].
    forward: [FwdStats; 2],
}

/// Runs the loop: `start tx_first`, wait, read the counters, `stop`, read them again.
fn drive(tp: &mut Testpmd) -> RunStats {
    let at = tp.send(&format!("start tx_first {TX_FIRST_BURSTS}"));
    tp.wait_for(
        at,
        "packet forwarding - ports=2",
        1,
        Duration::from_secs(10),
    );
    thread::sleep(FORWARD_FOR);
    let during = tp.port_stats();
    let at = tp.send("stop");
    tp.wait_for(
        at,
        "Accumulated forward statistics",
        1,
        Duration::from_secs(10),
    );
    tp.wait_for(at, "Done.", 1, Duration::from_secs(10));
    let forward =
        parse_fwd_stats(&tp.output()[at..]).unwrap_or_else(|e| panic!("{}", tp.failure(&e)));
    // Let the switch drain what testpmd sent last.
    thread::sleep(Duration::from_millis(500));
    let after_stop = tp.port_stats();
    RunStats {
        during,
        after_stop,
        forward,
    }
}

/// Counters of one port from `show port stats all`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct NicStats {
    rx_packets: u64,
    rx_missed: u64,
    rx_bytes: u64,
    rx_errors: u64,
    rx_nombuf: u64,
    tx_packets: u64,
    tx_errors: u64,
    tx_bytes: u64,
}

/// Counters of one port from the forward statistics `stop` prints.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct FwdStats {
    rx_packets: u64,
    rx_dropped: u64,
    tx_packets: u64,
    tx_dropped: u64,
}

/// The value after `key` (e.g. `RX-packets:`) in `text`: the next whitespace-separated number.
fn field(text: &str, key: &str) -> Result<u64, String> {
    let start = text.find(key).ok_or_else(|| format!("no {key:?}"))? + key.len();
    let value = text[start..]
        .split_whitespace()
        .next()
        .ok_or_else(|| format!("nothing after {key:?}"))?;
    value
        .parse()
        .map_err(|_| format!("{key:?} is followed by {value:?}, not a count"))
}

/// The text of the last section that starts with `heading` (up to the next `######`/`----` ruler).
fn last_section<'a>(text: &'a str, heading: &str) -> Result<&'a str, String> {
    let start = text
        .rfind(heading)
        .ok_or_else(|| format!("no {heading:?}"))?
        + heading.len();
    let body = &text[start..];
    // The heading line itself ends with the ruler's tail: skip to the next line first.
    let body = body.split_once('\n').map_or("", |(_, rest)| rest);
    let end = ["####", "----", "++++"]
        .iter()
        .filter_map(|r| body.find(r))
        .min()
        .unwrap_or(body.len());
    Ok(&body[..end])
}

/// Parses the last `show port stats all` output for ports 0 and 1:
/// ```text
///   ######################## NIC statistics for port 0  ########################
///   RX-packets: 1234       RX-missed: 0          RX-bytes:  78976
///   RX-errors: 0
///   RX-nombuf:  0
///   TX-packets: 1234       TX-errors: 0          TX-bytes:  78976
///
///   Throughput (since last show)
///   Rx-pps:          411          Rx-bps:       210688
///   Tx-pps:          411          Tx-bps:       210688
///   ############################################################################
/// ```
fn parse_port_stats(text: &str) -> Result<[NicStats; 2], String> {
    let port = |p: u16| -> Result<NicStats, String> {
        let s = last_section(text, &format!("NIC statistics for port {p} "))?;
        let f = |key: &str| field(s, key).map_err(|e| format!("port {p}: {e}"));
        Ok(NicStats {
            rx_packets: f("RX-packets:")?,
            rx_missed: f("RX-missed:")?,
            rx_bytes: f("RX-bytes:")?,
            rx_errors: f("RX-errors:")?,
            rx_nombuf: f("RX-nombuf:")?,
            tx_packets: f("TX-packets:")?,
            tx_errors: f("TX-errors:")?,
            tx_bytes: f("TX-bytes:")?,
        })
    };
    Ok([port(0)?, port(1)?])
}

/// Parses the per-port forward statistics `stop` prints:
/// ```text
///   ---------------------- Forward statistics for port 0  ----------------------
///   RX-packets: 1234           RX-dropped: 0             RX-total: 1234
///   TX-packets: 1234           TX-dropped: 0             TX-total: 1234
///   ----------------------------------------------------------------------------
/// ```
fn parse_fwd_stats(text: &str) -> Result<[FwdStats; 2], String> {
    let port = |p: u16| -> Result<FwdStats, String> {
        let s = last_section(text, &format!("Forward statistics for port {p} "))?;
        let f = |key: &str| field(s, key).map_err(|e| format!("forward stats port {p}: {e}"));
        Ok(FwdStats {
            rx_packets: f("RX-packets:")?,
            rx_dropped: f("RX-dropped:")?,
            tx_packets: f("TX-packets:")?,
            tx_dropped: f("TX-dropped:")?,
        })
    };
    Ok([port(0)?, port(1)?])
}

/// A `dpdk-testpmd -i` driven over stdin. Its stdout (prompts, command output) and
/// stderr (EAL and driver logs) are kept apart: read by two threads into one buffer,
/// a log line could land in the middle of the prompt or of a statistics block.
/// Dropping it kills the process (by pid) and removes its DPDK runtime directory.
struct Testpmd {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    prefix: String,
    pid: Arc<AtomicI32>,
}

impl Testpmd {
    fn spawn(
        bin: &Path,
        prefix: &str,
        [sock0, sock1]: [&Path; 2],
        frame_len: u64,
        queues: u64,
        pid: &Arc<AtomicI32>,
    ) -> Testpmd {
        // More than one queue pair needs virtio-user's emulated control queue.
        let cq = if queues > 1 { ",cq=1" } else { "" };
        let vdev = |n: u8, path: &Path, mac: &str| {
            format!(
                "net_virtio_user{n},path={},queues={queues}{cq},queue_size={QUEUE_SIZE},mac={mac}",
                path.display()
            )
        };
        // stdbuf: testpmd prints with stdio, block-buffered into a pipe otherwise.
        let mut cmd = Command::new("stdbuf");
        cmd.args(["-oL", "-eL"]).arg(bin);
        cmd.args([
            "-l",
            "0,1",
            "--main-lcore",
            "1",
            "--no-huge",
            "-m",
            "512",
            "--no-pci",
            "--file-prefix",
            prefix,
        ]);
        cmd.arg("--vdev").arg(vdev(0, sock0, MAC0));
        cmd.arg("--vdev").arg(vdev(1, sock1, MAC1));
        cmd.args([
            "--",
            "-i",
            "--nb-cores=1",
            "--forward-mode=io",
            "--total-num-mbufs=16384",
        ]);
        cmd.arg(format!("--rxq={queues}"))
            .arg(format!("--txq={queues}"));
        cmd.arg(format!("--rxd={QUEUE_SIZE}"))
            .arg(format!("--txd={QUEUE_SIZE}"));
        cmd.arg(format!("--eth-peer=0,{MAC1}"))
            .arg(format!("--eth-peer=1,{MAC0}"));
        cmd.arg(format!("--txpkts={frame_len}"));
        Testpmd::start(cmd, prefix, pid)
    }

    /// Runs `cmd` (a testpmd in interactive mode) until its command line is up.
    fn start(mut cmd: Command, prefix: &str, pid: &Arc<AtomicI32>) -> Testpmd {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        pid.store(i32::try_from(child.id()).unwrap_or(0), Ordering::SeqCst);
        let out = Arc::new(Mutex::new(format!("$ {cmd:?}\n")));
        let err = Arc::new(Mutex::new(String::new()));
        if let Some(stream) = child.stdout.take() {
            let out = Arc::clone(&out);
            thread::spawn(move || pump(stream, &out));
        }
        if let Some(stream) = child.stderr.take() {
            let err = Arc::clone(&err);
            thread::spawn(move || pump(stream, &err));
        }
        let stdin = child.stdin.take();
        let mut tp = Testpmd {
            child,
            stdin,
            out,
            err,
            prefix: prefix.to_string(),
            pid: Arc::clone(pid),
        };
        // Ports are configured and the command line is up.
        tp.wait_for(0, "Checking link statuses", 1, Duration::from_secs(30));
        tp.wait_for(0, "testpmd> ", 1, Duration::from_secs(10));
        tp
    }

    /// Everything testpmd printed on stdout so far.
    fn output(&self) -> String {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A panic message with the tails of testpmd's stdout and stderr.
    fn failure(&self, what: &str) -> String {
        let err = self.err.lock().unwrap_or_else(|e| e.into_inner()).clone();
        format!(
            "{what}\n--- testpmd stdout (tail) ---\n{}\n--- testpmd stderr (tail) ---\n{}",
            tail(&self.output(), 60),
            tail(&err, 30)
        )
    }

    /// Sends one command line; returns the output offset before it, for [`Testpmd::wait_for`].
    fn send(&mut self, line: &str) -> usize {
        let at = self.output().len();
        let stdin = self.stdin.as_mut().expect("testpmd stdin is open");
        if let Err(e) = stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
        {
            panic!(
                "{}",
                self.failure(&format!("writing {line:?} to testpmd: {e}"))
            );
        }
        at
    }

    /// Waits until `needle` occurs `count` times in the output after offset `from`.
    fn wait_for(&mut self, from: usize, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .output()
                .get(from..)
                .is_some_and(|s| s.matches(needle).count() >= count)
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The readers may still be copying the last lines.
                thread::sleep(Duration::from_millis(200));
                panic!(
                    "{}",
                    self.failure(&format!(
                        "testpmd exited ({status}) while waiting for {needle:?}"
                    ))
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}",
                    self.failure(&format!("no {needle:?} from testpmd within {timeout:?}"))
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `show port stats all`, parsed.
    fn port_stats(&mut self) -> [NicStats; 2] {
        let at = self.send("show port stats all");
        // Each port's block ends with its Tx-pps line and a ruler.
        self.wait_for(at, "Tx-pps:", 2, Duration::from_secs(10));
        thread::sleep(Duration::from_millis(100));
        parse_port_stats(&self.output()[at..])
            .unwrap_or_else(|e| panic!("{}", self.failure(&format!("parsing port stats: {e}"))))
    }

    /// `quit`, and wait up to 15 s for testpmd to exit (Drop kills it otherwise).
    fn quit(&mut self) {
        if self.stdin.is_some() {
            let _ = self.send("quit");
            self.stdin = None;
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            kill_pid(self.child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = self.child.try_wait() {
                kill_pid(self.child.id(), libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
        self.pid.store(0, Ordering::SeqCst);
        remove_runtime_dir(&self.prefix);
    }
}

/// Copies `stream` into `out` until EOF.
fn pump(mut stream: impl Read, out: &Mutex<String>) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

fn kill_pid(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid > 0 {
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child, not yet reaped.
        unsafe { libc::kill(pid, signal) };
    }
}

/// DPDK's runtime directory of `prefix` (the EAL leaves it behind).
fn remove_runtime_dir(prefix: &str) {
    let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(prefix));
}

/// Kills testpmd and aborts the test binary if a case runs past its budget
/// (e.g. a hung `Switch::start` or `shutdown`, which nothing else bounds).
struct Watchdog {
    _disarm: mpsc::Sender<()>,
}

impl Watchdog {
    fn arm(budget: Duration, pid: Arc<AtomicI32>, prefix: String, dir: PathBuf) -> Watchdog {
        let (tx, rx) = mpsc::channel::<()>();
        thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(budget) {
                eprintln!(
                    "dpdk_frontend: a case ran past {budget:?}: killing testpmd and aborting"
                );
                let p = pid.load(Ordering::SeqCst);
                if let Ok(p) = u32::try_from(p) {
                    kill_pid(p, libc::SIGKILL);
                }
                remove_runtime_dir(&prefix);
                let _ = std::fs::remove_dir_all(&dir);
                std::process::exit(101);
            }
        });
        Watchdog { _disarm: tx }
    }
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {path:?}: {e}"));
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Option<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return Some(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond().then_some(())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn test_parse_testpmd_stats_output() {
    let text = "testpmd> show port stats all\n\n  \
        ######################## NIC statistics for port 0  ########################\n  \
        RX-packets: 1234       RX-missed: 0          RX-bytes:  78976\n  RX-errors: 0\n  RX-nombuf:  0         \n  \
        TX-packets: 1300       TX-errors: 0          TX-bytes:  83200\n\n  Throughput (since last show)\n  \
        Rx-pps:          411          Rx-bps:       210688\n  Tx-pps:          411          Tx-bps:       210688\n  \
        ############################################################################\n\n  \
        ######################## NIC statistics for port 1  ########################\n  \
        RX-packets: 1300       RX-missed: 2          RX-bytes:  83200\n  RX-errors: 0\n  RX-nombuf:  5         \n  \
        TX-packets: 1234       TX-errors: 0          TX-bytes:  78976\n\n  Throughput (since last show)\n  \
        Rx-pps:          411          Rx-bps:       210688\n  Tx-pps:          411          Tx-bps:       210688\n  \
        ############################################################################\n\n  \
        ---------------------- Forward statistics for port 0  ----------------------\n  \
        RX-packets: 1234           RX-dropped: 0             RX-total: 1234\n  \
        TX-packets: 1300           TX-dropped: 7             TX-total: 1307\n  \
        ----------------------------------------------------------------------------\n\n  \
        ---------------------- Forward statistics for port 1  ----------------------\n  \
        RX-packets: 1300           RX-dropped: 0             RX-total: 1300\n  \
        TX-packets: 1234           TX-dropped: 0             TX-total: 1234\n  \
        ----------------------------------------------------------------------------\n";
    let [p0, p1] = parse_port_stats(text).unwrap();
    assert_eq!(
        (p0.rx_packets, p0.rx_bytes, p0.tx_packets, p0.tx_bytes),
        (1234, 78976, 1300, 83200)
    );
    assert_eq!(
        (p1.rx_packets, p1.rx_missed, p1.rx_nombuf, p1.tx_packets),
        (1300, 2, 5, 1234)
    );
    let [f0, f1] = parse_fwd_stats(text).unwrap();
    assert_eq!(
        (f0.rx_packets, f0.tx_packets, f0.tx_dropped),
        (1234, 1300, 7)
    );
    assert_eq!(
        (f1.rx_packets, f1.rx_dropped, f1.tx_packets),
        (1300, 0, 1234)
    );
    assert!(parse_port_stats("RX-packets: 1").is_err());
}
