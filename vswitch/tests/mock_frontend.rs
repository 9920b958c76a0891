#![allow(clippy::tests_outside_test_module)]
//! MockFrontend, first validated against two independent vhost-user-net backends
//! (DPDK's vhost PMD under `dpdk-testpmd`, and a rust-vmm vhost-user-backend 0.24
//! hairpin daemon), then used against accelnet's own switch.
//!
//! Run: `cargo test -p vswitch --features test-utils --test mock_frontend`.
#![cfg(feature = "test-utils")]

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vhost::vhost_user::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use vswitch::config::SwitchSettings;
use vswitch::policy::{PolicyConfig, RateLimit, VlanMode};
use vswitch::test_utils::{
    wait_peer_closed, MockError, MockFrontend, MockOptions, RawDesc, TestSwitch, TX_QUEUE,
    VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_LEN,
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vswitch::{PortConfig, PortStats, Request, Response, SwitchConfig};

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

/// EtherType of every test frame (IEEE local experimental); receivers ignore other frames
/// so anything the switch originates itself does not disturb the checks.
const TEST_ETHERTYPE: u16 = 0x88b5;
const BROADCAST: [u8; 6] = [0xff; 6];
const QUIET: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_secs(5);

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x00, 0x00, n]
}

/// A test frame of exactly `len` bytes (>= 18) with a payload derived from `seed`.
fn frame(dst: [u8; 6], src: [u8; 6], len: usize, seed: u32) -> Vec<u8> {
    assert!(
        len >= 18,
        "test frames carry a 4-byte seed after the header"
    );
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&seed.to_be_bytes());
    while f.len() < len {
        f.push(
            (f.len() as u32)
                .wrapping_mul(7)
                .wrapping_add(seed.wrapping_mul(131)) as u8,
        );
    }
    f
}

fn is_test_frame(f: &[u8]) -> bool {
    f.len() >= 14 && f[12..14] == TEST_ETHERTYPE.to_be_bytes()
}

/// Receives test frames until `n` arrived or `timeout` passed.
fn recv_n(m: &mut MockFrontend, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match m.recv(left) {
            Some(f) if is_test_frame(&f) => got.push(f),
            Some(_) => {}
            None => break,
        }
    }
    got
}

/// Test frames received until the port is quiet for [`QUIET`].
fn recv_quiet(m: &mut MockFrontend) -> Vec<Vec<u8>> {
    m.recv_all(QUIET)
        .into_iter()
        .filter(|f| is_test_frame(f))
        .collect()
}

/// Asserts that `got` equals `want`, reporting the first difference readably.
fn assert_frames_eq(got: &[Vec<u8>], want: &[Vec<u8>], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let at = g.iter().zip(w.iter()).position(|(a, b)| a != b);
            panic!(
                "{what}: frame {i} differs: got {} bytes, want {} bytes, first difference at {at:?}",
                g.len(),
                w.len()
            );
        }
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: got {} frames, want {}",
        got.len(),
        want.len()
    );
}

// ---------------------------------------------------------------------------------------
// DPDK testpmd as an independent reference backend
// ---------------------------------------------------------------------------------------

static DPDK_LOCK: Mutex<()> = Mutex::new(());
static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh, short directory for sockets (unix socket paths are limited to 107 bytes).
fn fresh_dir(tag: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("an-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// `dpdk-testpmd` forwarding port 0 <-> port 1 (io mode: frames untouched) between two
/// vhost-user server sockets. Killed (by pid) and cleaned up on drop; its log is printed
/// if the test is failing.
struct TestPmd {
    child: Child,
    dir: PathBuf,
    prefix: String,
    log: PathBuf,
}

impl TestPmd {
    fn start() -> TestPmd {
        let bin = find_in_path("dpdk-testpmd").unwrap_or_else(|| {
            panic!(
                "dpdk-testpmd not found in PATH: install the Debian package `dpdk` \
                 (apt-get install dpdk). This test validates MockFrontend against an \
                 independent vhost-user backend and must not be skipped."
            )
        });
        let dir = fresh_dir("pmd");
        let prefix = format!(
            "anmock{}-{}",
            std::process::id(),
            NEXT_DIR.load(Ordering::Relaxed)
        );
        let log = dir.join("testpmd.log");
        let out = File::create(&log).expect("create testpmd log");
        let err = out.try_clone().expect("dup testpmd log fd");
        let child = Command::new(bin)
            .args([
                "--no-pci",
                "--no-huge",
                "-m",
                "512",
                "-l",
                "0,1",
                "--file-prefix",
                &prefix,
            ])
            .arg("--vdev")
            .arg(format!("net_vhost0,iface={}", dir.join("a.sock").display()))
            .arg("--vdev")
            .arg(format!("net_vhost1,iface={}", dir.join("b.sock").display()))
            .args([
                "--",
                "--forward-mode=io",
                "--auto-start",
                "--total-num-mbufs=16384",
            ])
            // testpmd without -i waits for a line on stdin and exits on EOF: keep it open.
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dpdk-testpmd: {e}"));
        TestPmd {
            child,
            dir,
            prefix,
            log,
        }
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    fn log_text(&self) -> String {
        let mut s = String::new();
        let _ = File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }
}

impl Drop for TestPmd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("---- dpdk-testpmd log ----\n{}", self.log_text());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(Path::new("/var/run/dpdk").join(&self.prefix));
    }
}

fn dpdk_opts() -> MockOptions {
    // testpmd takes a second or two to initialise EAL before the sockets exist.
    MockOptions {
        connect_timeout: Duration::from_secs(30),
        ..MockOptions::default()
    }
}

/// Sends probes from `from` until one reaches `to`: the vhost PMD drops frames until both
/// devices are up. Drains both afterwards.
fn warm_up(from: &mut MockFrontend, to: &mut MockFrontend) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let probe = frame(BROADCAST, mac(0xee), 60, 0xeeee);
    loop {
        from.send(&probe).expect("send probe");
        if recv_n(to, 1, Duration::from_millis(200)).contains(&probe) {
            break;
        }
        assert!(Instant::now() < deadline, "testpmd never forwarded a probe");
    }
    recv_quiet(to);
    recv_quiet(from);
}

/// Frames of 60 and 1514 bytes, then a burst of 200 of varied sizes, `from` -> `to`,
/// checked byte-exact and in order.
fn exchange_byte_exact(from: &mut MockFrontend, to: &mut MockFrontend, src: u8, dst: u8) {
    let small = frame(mac(dst), mac(src), 60, 1);
    from.send(&small).expect("send 60-byte frame");
    assert_frames_eq(
        &recv_n(to, 1, WAIT),
        std::slice::from_ref(&small),
        "60-byte frame",
    );
    let big = frame(mac(dst), mac(src), 1514, 2);
    from.send(&big).expect("send 1514-byte frame");
    assert_frames_eq(
        &recv_n(to, 1, WAIT),
        std::slice::from_ref(&big),
        "1514-byte frame",
    );
    let burst: Vec<Vec<u8>> = (0..200u32)
        .map(|i| frame(mac(dst), mac(src), 60 + (i as usize * 97) % 1455, 100 + i))
        .collect();
    from.send_burst(&burst).expect("send burst");
    assert_frames_eq(&recv_n(to, burst.len(), WAIT), &burst, "burst of 200");
    assert!(from.wait_tx_all_completed(WAIT), "TX chains not returned");
    assert!(recv_quiet(to).is_empty(), "extra frames after the burst");
}

#[test]
fn mock_frontend_against_dpdk_vhost_forwards_byte_exact() {
    let _serial = DPDK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let pmd = TestPmd::start();
    let mut a = MockFrontend::connect(&pmd.sock("a"), dpdk_opts()).unwrap();
    let mut b = MockFrontend::connect(
        &pmd.sock("b"),
        MockOptions {
            tx_split: true,
            ..dpdk_opts()
        },
    )
    .unwrap();
    for m in [&a, &b] {
        let f = m.acked_features();
        assert_ne!(
            f & VIRTIO_F_VERSION_1,
            0,
            "VERSION_1 not negotiated: {f:#x}"
        );
        assert_ne!(
            f & VIRTIO_NET_F_MRG_RXBUF,
            0,
            "MRG_RXBUF not negotiated: {f:#x}"
        );
        assert_ne!(
            f & VHOST_USER_F_PROTOCOL_FEATURES,
            0,
            "no PROTOCOL_FEATURES: {f:#x}"
        );
        assert_eq!(m.hdr_len(), VIRTIO_NET_HDR_LEN);
    }
    warm_up(&mut a, &mut b);
    warm_up(&mut b, &mut a);
    exchange_byte_exact(&mut a, &mut b, 0xa, 0xb);
    exchange_byte_exact(&mut b, &mut a, 0xb, 0xa);
    // GET_VRING_BASE reports how far the device consumed the TX avail ring.
    let published = u32::from(a.tx_published());
    assert_eq!(a.get_vring_base(TX_QUEUE).unwrap(), published);
}

#[test]
fn mock_frontend_against_dpdk_vhost_merges_rx_buffers() {
    let _serial = DPDK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let pmd = TestPmd::start();
    let mut a = MockFrontend::connect(&pmd.sock("a"), dpdk_opts()).unwrap();
    let mut b = MockFrontend::connect(
        &pmd.sock("b"),
        MockOptions {
            rx_buf_len: 512,
            event_idx: false,
            ..dpdk_opts()
        },
    )
    .unwrap();
    assert_eq!(b.acked_features() & VIRTIO_RING_F_EVENT_IDX, 0);
    warm_up(&mut a, &mut b);
    for (i, len) in [60usize, 500, 501, 1012, 1013, 1514]
        .into_iter()
        .enumerate()
    {
        let bufs = u16::try_from((len + VIRTIO_NET_HDR_LEN).div_ceil(512)).unwrap();
        assert_merged_delivery(&mut a, &mut b, len, i as u32, bufs);
    }
}

/// Sends a `len`-byte frame from A to B and checks that B received it byte-exact,
/// spread over `bufs` receive buffers (MRG_RXBUF `num_buffers`).
fn assert_merged_delivery(
    a: &mut MockFrontend,
    b: &mut MockFrontend,
    len: usize,
    seq: u32,
    bufs: u16,
) {
    let f = frame(mac(0xb), mac(0xa), len, seq);
    a.send(&f).expect("send through the switch");
    let got = b
        .recv_frame(WAIT)
        .unwrap_or_else(|| panic!("{len}-byte frame lost"));
    assert_eq!(got.data, f, "{len}-byte frame differs");
    assert_eq!(got.num_buffers, bufs, "num_buffers for a {len}-byte frame");
}

// ---------------------------------------------------------------------------------------
// A rust-vmm vhost-user-backend 0.24 daemon as second reference: a hairpin that sends
// every TX frame back on the same device's RX queue.
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Hairpin {
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
}

impl Hairpin {
    /// Moves TX chains to RX chains while both have some. Returns Ok on an empty ring.
    fn pump(&self, vrings: &[VringRwLock]) -> io::Result<()> {
        let Some(atomic) = &self.mem else {
            return Ok(());
        };
        let mem = atomic.memory();
        let (rx, tx) = (&vrings[0], &vrings[1]);
        loop {
            let Some(chain) = tx
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.clone())
            else {
                break;
            };
            let head = chain.head_index();
            let mut pkt = Vec::new();
            let mut bad = false;
            for d in chain {
                let mut b = vec![0u8; d.len() as usize];
                bad |= d.is_write_only() || mem.read_slice(&mut b, d.addr()).is_err();
                pkt.extend(b);
            }
            if bad || pkt.len() < VIRTIO_NET_HDR_LEN {
                tx.add_used(head, 0).map_err(io::Error::other)?;
                continue;
            }
            // Gather RX chains until the header and frame fit.
            let mut rx_chains = Vec::new();
            let mut room = 0usize;
            while room < pkt.len() {
                let Some(c) = rx
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(mem.clone())
                else {
                    break;
                };
                room += c.clone().map(|d| d.len() as usize).sum::<usize>();
                rx_chains.push(c);
            }
            if room < pkt.len() {
                // Not enough RX buffers: put everything back and wait for a kick.
                for _ in 0..rx_chains.len() {
                    rx.get_mut().get_queue_mut().go_to_previous_position();
                }
                tx.get_mut().get_queue_mut().go_to_previous_position();
                break;
            }
            let nbufs = rx_chains.len() as u16;
            pkt[10..12].copy_from_slice(&nbufs.to_le_bytes());
            let mut off = 0;
            for c in rx_chains {
                let rx_head = c.head_index();
                let mut written = 0u32;
                for d in c {
                    let n = (d.len() as usize).min(pkt.len() - off);
                    mem.write_slice(&pkt[off..off + n], d.addr())
                        .map_err(io::Error::other)?;
                    off += n;
                    written += n as u32;
                }
                rx.add_used(rx_head, written).map_err(io::Error::other)?;
            }
            tx.add_used(head, 0).map_err(io::Error::other)?;
        }
        rx.signal_used_queue()?;
        tx.signal_used_queue()?;
        Ok(())
    }
}

impl VhostUserBackendMut for Hairpin {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_RING_F_EVENT_IDX
            | VHOST_USER_F_PROTOCOL_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
    }

    fn set_event_idx(&mut self, _enabled: bool) {}

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without one the worker thread never exits and dropping the daemon hangs.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if usize::from(device_event) < vrings.len() {
            self.pump(vrings)?;
        }
        Ok(())
    }
}

/// Runs a hairpin daemon on a fresh socket; returns the socket and the serving thread.
fn start_hairpin() -> (PathBuf, PathBuf, thread::JoinHandle<()>) {
    let dir = fresh_dir("hp");
    let sock = dir.join("hp.sock");
    let backend = Arc::new(Mutex::new(Hairpin::default()));
    let mut daemon = VhostUserDaemon::new(
        "hairpin".into(),
        backend,
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .expect("create hairpin daemon");
    let path = sock.clone();
    let h = thread::spawn(move || {
        if let Err(e) = daemon.serve(&path) {
            eprintln!("hairpin daemon: {e}");
        }
    });
    (dir, sock, h)
}

#[test]
fn mock_frontend_against_rust_vmm_backend_hairpins_byte_exact() {
    for opts in [
        MockOptions::default(),
        MockOptions {
            tx_split: true,
            rx_buf_len: 512,
            ..MockOptions::default()
        },
        MockOptions {
            queue_size: 64,
            rx_buffers: 64,
            event_idx: false,
            ..MockOptions::default()
        },
    ] {
        let (dir, sock, daemon) = start_hairpin();
        let mut m = MockFrontend::connect(&sock, opts.clone()).unwrap();
        assert_ne!(
            m.acked_protocol_features() & VhostUserProtocolFeatures::REPLY_ACK.bits(),
            0
        );
        let rx_buf_len = opts.rx_buf_len as usize;
        for (i, len) in [60usize, 1514, 9000].into_iter().enumerate() {
            let f = frame(mac(1), mac(2), len, i as u32);
            m.send(&f).unwrap();
            let got = m
                .recv_frame(WAIT)
                .unwrap_or_else(|| panic!("{len}-byte frame lost"));
            assert_eq!(got.data, f, "{len}-byte frame differs ({opts:?})");
            assert_eq!(
                usize::from(got.num_buffers),
                (len + 12).div_ceil(rx_buf_len)
            );
        }
        // More frames than either ring holds: exercises wrap-around and recycling.
        for round in 0..3u32 {
            let burst: Vec<Vec<u8>> = (0..200u32)
                .map(|i| {
                    frame(
                        mac(1),
                        mac(2),
                        60 + (i as usize * 13) % 1400,
                        round * 1000 + i,
                    )
                })
                .collect();
            for chunk in burst.chunks(usize::from(opts.queue_size) / 4) {
                m.send_burst(chunk).unwrap();
                assert_frames_eq(&recv_n(&mut m, chunk.len(), WAIT), chunk, "hairpin burst");
            }
        }
        // A hand-built chain: header and frame in scratch memory, two descriptors.
        let f = frame(mac(1), mac(2), 100, 7);
        let hdr = m.write_data(0, &[0u8; 12]).unwrap();
        let body = m.write_data(64, &f).unwrap();
        let before = m.tx_completed();
        m.send_chain(&[
            RawDesc {
                addr: hdr,
                len: 12,
                flags: VRING_DESC_F_NEXT,
                next: 1,
            },
            RawDesc {
                addr: body,
                len: f.len() as u32,
                flags: 0,
                next: 0,
            },
        ])
        .unwrap();
        assert!(m.wait_tx_completed(before.wrapping_add(1), WAIT));
        assert_frames_eq(
            &recv_n(&mut m, 1, WAIT),
            std::slice::from_ref(&f),
            "raw chain",
        );
        let published = u32::from(m.tx_published());
        assert_eq!(m.get_vring_base(TX_QUEUE).unwrap(), published);
        m.disconnect();
        daemon.join().unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn mock_frontend_connect_times_out_without_socket() {
    let dir = fresh_dir("none");
    let opts = MockOptions {
        connect_timeout: Duration::from_millis(200),
        ..MockOptions::default()
    };
    let t = Instant::now();
    let e = MockFrontend::connect(&dir.join("missing.sock"), opts).unwrap_err();
    assert!(matches!(e, MockError::Connect { .. }), "{e:?}");
    assert!(t.elapsed() >= Duration::from_millis(200));
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------
// accelnet's switch
// ---------------------------------------------------------------------------------------

/// Starts a switch (MTU 1500) with one port per `(name, policy)`, all in VLAN 1;
/// port `x` listens on `<dir>/x.sock`.
fn start_with_policies(ports: &[(&str, PolicyConfig)]) -> TestSwitch {
    TestSwitch::start("swp", |dir| SwitchConfig {
        ports: ports
            .iter()
            .map(|(name, policy)| PortConfig {
                policy: policy.clone(),
                ..PortConfig::new(dir.join(format!("{name}.sock")))
            })
            .collect(),
        ..SwitchConfig::default()
    })
}

/// Starts a switch (MTU 1500) with one vhost-user port per `(name, vlan)`; port `x`
/// listens on `<dir>/x.sock`.
fn start_switch(ports: &[(&str, u16)]) -> TestSwitch {
    TestSwitch::start("sw", |dir| SwitchConfig {
        switch: SwitchSettings {
            mtu: 1500,
            ..SwitchSettings::default()
        },
        ports: ports
            .iter()
            .map(|(name, vlan)| PortConfig {
                vlan: *vlan,
                ..PortConfig::new(dir.join(format!("{name}.sock")))
            })
            .collect(),
        uplinks: Vec::new(),
    })
}

fn drop_count(s: &PortStats, reason: &str) -> u64 {
    *s.drops
        .get(reason)
        .unwrap_or_else(|| panic!("drop reason {reason} missing from {:?}", s.drops))
}

fn total_drops(s: &PortStats) -> u64 {
    s.drops.values().sum()
}

fn nonzero_drops(s: &PortStats) -> BTreeMap<&str, u64> {
    s.drops
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| (k.as_str(), *v))
        .collect()
}

/// `from` sends a unicast test frame to `to_mac`; `to` must receive exactly it.
fn assert_forwards(from: &mut MockFrontend, to: &mut MockFrontend, src: u8, dst: u8, seed: u32) {
    let f = frame(mac(dst), mac(src), 100, seed);
    from.send(&f).expect("send frame");
    let got = recv_n(to, 1, WAIT);
    assert_frames_eq(&got, std::slice::from_ref(&f), "forwarding check");
    assert!(recv_quiet(to).is_empty(), "unexpected extra frames");
}

#[test]
fn switch_forwards_unicast_byte_exact() {
    let sw = start_switch(&[("a", 1), ("b", 1), ("c", 1)]);
    let (mut a, mut b, mut c) = (sw.connect("a"), sw.connect("b"), sw.connect("c"));

    // B speaks first so the switch learns where B's MAC lives.
    let hello = frame(BROADCAST, mac(0xb), 60, 0);
    b.send(&hello).unwrap();
    assert_frames_eq(
        &recv_n(&mut a, 1, WAIT),
        std::slice::from_ref(&hello),
        "hello at A",
    );
    assert_frames_eq(
        &recv_n(&mut c, 1, WAIT),
        std::slice::from_ref(&hello),
        "hello at C",
    );

    let mut sent = vec![
        frame(mac(0xb), mac(0xa), 60, 1),
        frame(mac(0xb), mac(0xa), 1514, 2),
    ];
    a.send(&sent[0]).unwrap();
    a.send(&sent[1]).unwrap();
    let burst: Vec<Vec<u8>> = (0..64u32)
        .map(|i| frame(mac(0xb), mac(0xa), 60 + (i as usize * 23) % 1455, 100 + i))
        .collect();
    a.send_burst(&burst).unwrap();
    sent.extend(burst);

    assert_frames_eq(&recv_n(&mut b, sent.len(), WAIT), &sent, "unicast A->B");
    assert!(recv_quiet(&mut b).is_empty(), "B got extra frames");
    assert!(
        recv_quiet(&mut c).is_empty(),
        "C got unicast frames meant for B"
    );
    assert!(recv_quiet(&mut a).is_empty(), "A got its own frames back");
    assert!(a.wait_tx_all_completed(WAIT), "A's TX chains not returned");

    let n = sent.len() as u64;
    let bytes: u64 = sent.iter().map(|f| f.len() as u64).sum();
    let sa = sw.wait_stats("a", |s| s.rx_packets >= n);
    let sb = sw.wait_stats("b", |s| s.tx_packets >= n);
    let sc = sw.stats("c");
    assert_eq!((sa.rx_packets, sa.rx_bytes), (n, bytes), "a rx counters");
    assert_eq!(
        (sa.tx_packets, sa.tx_bytes),
        (1, 60),
        "a tx counters (B's hello)"
    );
    assert_eq!(
        (sb.rx_packets, sb.rx_bytes),
        (1, 60),
        "b rx counters (hello)"
    );
    assert_eq!((sb.tx_packets, sb.tx_bytes), (n, bytes), "b tx counters");
    assert_eq!(
        (sc.rx_packets, sc.tx_packets, sc.tx_bytes),
        (0, 1, 60),
        "c counters"
    );
    for s in [&sa, &sb, &sc] {
        assert_eq!(
            total_drops(s),
            0,
            "{} drops: {:?}",
            s.name,
            nonzero_drops(s)
        );
    }
}

#[test]
fn switch_floods_broadcast_and_unknown_unicast() {
    let sw = start_switch(&[("a", 1), ("b", 1), ("c", 1)]);
    let (mut a, mut b, mut c) = (sw.connect("a"), sw.connect("b"), sw.connect("c"));
    let sent = vec![
        frame(BROADCAST, mac(0xa), 60, 1),
        frame(mac(0x99), mac(0xa), 200, 2),
    ];
    a.send_burst(&sent).unwrap();
    assert_frames_eq(&recv_n(&mut b, 2, WAIT), &sent, "flood at B");
    assert_frames_eq(&recv_n(&mut c, 2, WAIT), &sent, "flood at C");
    assert!(
        recv_quiet(&mut a).is_empty(),
        "flood came back to the sender"
    );
    assert!(recv_quiet(&mut b).is_empty() && recv_quiet(&mut c).is_empty());
}

#[test]
fn switch_vlan_isolates_ports() {
    let sw = start_switch(&[("a", 1), ("b", 1), ("c", 20), ("d", 20)]);
    let (mut a, mut b) = (sw.connect("a"), sw.connect("b"));
    let (mut c, mut d) = (sw.connect("c"), sw.connect("d"));

    let from_a = frame(BROADCAST, mac(0xa), 60, 1);
    a.send(&from_a).unwrap();
    assert_frames_eq(
        &recv_n(&mut b, 1, WAIT),
        std::slice::from_ref(&from_a),
        "A's broadcast at B",
    );
    assert!(
        recv_quiet(&mut c).is_empty(),
        "VLAN 20 port C got VLAN 1 broadcast"
    );
    assert!(
        recv_quiet(&mut d).is_empty(),
        "VLAN 20 port D got VLAN 1 broadcast"
    );

    let from_c = vec![
        frame(BROADCAST, mac(0xc), 60, 2),
        frame(mac(0x99), mac(0xc), 80, 3),
    ];
    c.send_burst(&from_c).unwrap();
    assert_frames_eq(&recv_n(&mut d, 2, WAIT), &from_c, "C's flood at D");
    assert!(
        recv_quiet(&mut a).is_empty(),
        "VLAN 1 port A got VLAN 20 frames"
    );
    assert!(
        recv_quiet(&mut b).is_empty(),
        "VLAN 1 port B got VLAN 20 frames"
    );
    // Frames leave access ports untagged: D got them byte-exact above.
}

/// Ports a (offender) and b (neighbour). Checks a working pair, lets `bad` misbehave on
/// a, then requires: every chain returned, exactly `count` drops on a and all of them
/// under `reason`, nothing delivered to b, and both directions still forwarding.
fn check_malformed_tx(
    reason: &str,
    count: u64,
    opts: MockOptions,
    bad: impl FnOnce(&mut MockFrontend),
) {
    let sw = start_switch(&[("a", 1), ("b", 1)]);
    let mut a = sw.connect_with("a", opts);
    let mut b = sw.connect("b");
    assert_forwards(&mut a, &mut b, 0xa, 0xb, 1);
    assert_forwards(&mut b, &mut a, 0xb, 0xa, 2);

    bad(&mut a);
    assert!(
        a.wait_tx_all_completed(WAIT),
        "{reason}: bad chain not returned: TX used idx {} of {} published",
        a.tx_completed(),
        a.tx_published()
    );
    assert_eq!(sw.wait_drops("a", reason, count), count, "{reason} on a");
    let sa = sw.stats("a");
    assert_eq!(
        total_drops(&sa),
        count,
        "drops on a: {:?}",
        nonzero_drops(&sa)
    );
    assert!(
        recv_quiet(&mut b).is_empty(),
        "{reason}: a malformed frame reached b"
    );

    assert_forwards(&mut a, &mut b, 0xa, 0xb, 3);
    assert_forwards(&mut b, &mut a, 0xb, 0xa, 4);
    let sb = sw.stats("b");
    assert_eq!(total_drops(&sb), 0, "drops on b: {:?}", nonzero_drops(&sb));
}

/// Descriptor holding an all-zero virtio header in scratch memory.
fn hdr_desc(m: &MockFrontend, flags: u16, next: u16) -> RawDesc {
    let addr = m
        .write_data(0, &[0u8; VIRTIO_NET_HDR_LEN])
        .expect("write header to scratch");
    RawDesc {
        addr,
        len: VIRTIO_NET_HDR_LEN as u32,
        flags,
        next,
    }
}

/// Descriptor holding a valid 60-byte test frame in scratch memory.
fn body_desc(m: &MockFrontend, flags: u16, next: u16) -> RawDesc {
    let f = frame(mac(0xb), mac(0xa), 60, 0xbad);
    let addr = m.write_data(64, &f).expect("write frame to scratch");
    RawDesc {
        addr,
        len: f.len() as u32,
        flags,
        next,
    }
}

/// Sends a hand-built chain and waits for it to come back (so the next may reuse slots).
fn send_chain_and_wait(m: &mut MockFrontend, descs: &[RawDesc]) {
    m.send_chain(descs).expect("send hand-built chain");
    assert!(
        m.wait_tx_all_completed(WAIT),
        "chain {descs:?} not returned"
    );
}

#[test]
fn switch_drops_runt_frames() {
    check_malformed_tx("runt_frame", 2, MockOptions::default(), |a| {
        let f = frame(mac(0xb), mac(0xa), 60, 9);
        a.send(&f[..13]).unwrap(); // one byte short of an Ethernet header
        a.send(&[]).unwrap(); // virtio header only
    });
}

#[test]
fn switch_drops_oversize_frames() {
    // MTU 1500: up to 1518 bytes (header + one VLAN tag) pass, longer ones are dropped.
    check_malformed_tx("oversize_frame", 2, MockOptions::default(), |a| {
        a.send(&frame(mac(0xb), mac(0xa), 1519, 9)).unwrap();
        a.send(&frame(mac(0xb), mac(0xa), 1600, 10)).unwrap();
    });
}

#[test]
fn switch_forwards_frame_of_mtu_plus_18() {
    let sw = start_switch(&[("a", 1), ("b", 1)]);
    let (mut a, mut b) = (sw.connect("a"), sw.connect("b"));
    let f = frame(mac(0xb), mac(0xa), 1518, 1);
    a.send(&f).unwrap();
    assert_frames_eq(
        &recv_n(&mut b, 1, WAIT),
        std::slice::from_ref(&f),
        "1518-byte frame",
    );
}

#[test]
fn switch_drops_descriptors_outside_guest_memory() {
    check_malformed_tx("bad_address", 4, MockOptions::default(), |a| {
        let end = a.mem_end();
        for addr in [0, end, end - 30] {
            // valid header, frame at: guest address 0 (below memory), just past the end,
            // straddling the end
            let body = RawDesc {
                addr,
                len: 60,
                flags: 0,
                next: 0,
            };
            send_chain_and_wait(a, &[hdr_desc(a, VRING_DESC_F_NEXT, 1), body]);
        }
        // one descriptor whose address + length overflows u64
        send_chain_and_wait(
            a,
            &[RawDesc {
                addr: u64::MAX - 8,
                len: 72,
                flags: 0,
                next: 0,
            }],
        );
    });
}

#[test]
fn switch_drops_descriptor_loops() {
    check_malformed_tx("descriptor_loop", 2, MockOptions::default(), |a| {
        // 0 -> 1 -> 0 -> ...
        send_chain_and_wait(
            a,
            &[
                hdr_desc(a, VRING_DESC_F_NEXT, 1),
                body_desc(a, VRING_DESC_F_NEXT, 0),
            ],
        );
        // 0 -> 0 -> ...
        send_chain_and_wait(a, &[hdr_desc(a, VRING_DESC_F_NEXT, 0)]);
    });
}

#[test]
fn switch_drops_next_index_out_of_range() {
    check_malformed_tx("bad_descriptor", 2, MockOptions::default(), |a| {
        let n = a.options().queue_size;
        send_chain_and_wait(a, &[hdr_desc(a, VRING_DESC_F_NEXT, n)]);
        send_chain_and_wait(
            a,
            &[
                hdr_desc(a, VRING_DESC_F_NEXT, 1),
                body_desc(a, VRING_DESC_F_NEXT, u16::MAX),
            ],
        );
    });
}

#[test]
fn switch_drops_write_only_descriptor_on_tx() {
    check_malformed_tx("bad_descriptor", 2, MockOptions::default(), |a| {
        send_chain_and_wait(
            a,
            &[
                hdr_desc(a, VRING_DESC_F_NEXT, 1),
                body_desc(a, VRING_DESC_F_WRITE, 0),
            ],
        );
        send_chain_and_wait(
            a,
            &[
                hdr_desc(a, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
                body_desc(a, 0, 0),
            ],
        );
    });
}

/// Ports a, b, c; `a` announces a TX descriptor table at `desc_gpa`. The switch must stop
/// a's queue and count `reasons` (any of them) on a, while b and c keep forwarding.
fn check_bad_ring(desc_gpa: impl Fn(&MockOptions) -> u64, reasons: &[&str]) {
    let sw = start_switch(&[("a", 1), ("b", 1), ("c", 1)]);
    let mut b = sw.connect("b");
    let mut c = sw.connect("c");
    let mut opts = MockOptions::default();
    let mut tx = opts.ring_addrs(TX_QUEUE).expect("default TX ring layout");
    tx.desc = desc_gpa(&opts);
    opts.ring_override[TX_QUEUE] = Some(tx);
    // The switch may refuse the ring at SET_VRING_ADDR (connect fails) or later.
    let a = MockFrontend::connect(&sw.sock("a"), opts);
    let mut a = match a {
        Ok(a) => Some(a),
        Err(e) => {
            eprintln!("connect with a bad ring failed as allowed: {e:?}");
            None
        }
    };
    if let Some(a) = a.as_mut() {
        // Kick TX so a lazy switch looks at the ring. The frame is in the mock's real
        // ring, which the switch was not told about: it must never be forwarded.
        let _ = a.send(&frame(BROADCAST, mac(0xa), 60, 1));
    }
    let deadline = Instant::now() + WAIT;
    let counted = loop {
        let s = sw.stats("a");
        if reasons.iter().any(|r| drop_count(&s, r) > 0) || Instant::now() > deadline {
            break s;
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert!(
        reasons.iter().any(|r| drop_count(&counted, r) > 0),
        "none of {reasons:?} counted on a: {:?}",
        nonzero_drops(&counted)
    );
    assert_forwards(&mut b, &mut c, 0xb, 0xc, 2);
    assert_forwards(&mut c, &mut b, 0xc, 0xb, 3);
    assert!(recv_quiet(&mut b).is_empty() && recv_quiet(&mut c).is_empty());
    drop(a);
}

#[test]
fn switch_stops_port_whose_ring_straddles_memory_end() {
    // The table starts inside guest memory (translatable) but only 8 of its 256
    // descriptors fit: the switch must validate the whole ring, stop the queue and count
    // ring_error.
    check_bad_ring(|o| o.mem_end() - 8 * 16, &["ring_error"]);
}

#[test]
fn switch_survives_ring_address_outside_memory() {
    // Not translatable at all: the switch may reject SET_VRING_ADDR (protocol_error,
    // connection closed) or accept and stop the queue (ring_error).
    check_bad_ring(
        |o| o.mem_end() + (1 << 30),
        &["ring_error", "protocol_error"],
    );
}

#[test]
fn switch_closes_connection_on_garbage_and_accepts_a_new_one() {
    let sw = start_switch(&[("a", 1), ("b", 1)]);
    let mut b = sw.connect("b");

    let mut raw = MockFrontend::raw(&sw.sock("a")).unwrap();
    io::Write::write_all(&mut raw, &[0xa5; 64]).unwrap();
    assert!(
        wait_peer_closed(&mut raw, WAIT),
        "switch kept a connection that sent garbage"
    );
    drop(raw);
    assert!(
        sw.wait_drops("a", "protocol_error", 1) >= 1,
        "garbage not counted as protocol_error"
    );

    // Half a message header (SET_OWNER, version 1), then hang up.
    let mut raw = MockFrontend::raw(&sw.sock("a")).unwrap();
    io::Write::write_all(&mut raw, &[3, 0, 0, 0, 1, 0]).unwrap();
    drop(raw);
    thread::sleep(Duration::from_millis(100));
    sw.wait_connected("a", false);

    let mut a = sw.connect("a");
    assert_forwards(&mut a, &mut b, 0xa, 0xb, 1);
    assert_forwards(&mut b, &mut a, 0xb, 0xa, 2);
}

#[test]
fn switch_closes_live_connection_on_garbage_and_accepts_reconnect() {
    let sw = start_switch(&[("a", 1), ("b", 1)]);
    let mut b = sw.connect("b");
    let mut a = sw.connect("a");
    assert_forwards(&mut a, &mut b, 0xa, 0xb, 1);

    // A header with an unknown request code, then junk.
    let mut garbage = vec![0xff, 0xff, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0];
    garbage.extend_from_slice(&[0x5a; 8]);
    a.send_raw_message(&garbage).unwrap();
    assert!(
        a.wait_closed(WAIT),
        "switch kept a connection that sent garbage"
    );
    a.disconnect();
    assert!(
        sw.wait_drops("a", "protocol_error", 1) >= 1,
        "garbage not counted as protocol_error"
    );
    sw.wait_connected("a", false);

    // The port accepts a new frontend on the same socket, with fresh memory and rings.
    let mut a = sw.connect("a");
    assert_forwards(&mut a, &mut b, 0xa, 0xb, 2);
    assert_forwards(&mut b, &mut a, 0xb, 0xa, 3);
}

#[test]
fn switch_rx_no_buffer_counts_drop() {
    let sw = start_switch(&[("a", 1), ("b", 1), ("c", 1)]);
    let mut a = sw.connect("a");
    let mut b = sw.connect_with(
        "b",
        MockOptions {
            rx_buffers: 0,
            ..MockOptions::default()
        },
    );
    let mut c = sw.connect("c");
    let sent: Vec<Vec<u8>> = (0..3).map(|i| frame(BROADCAST, mac(0xa), 60, i)).collect();
    a.send_burst(&sent).unwrap();
    // The sender and the other destination are unaffected.
    assert_frames_eq(&recv_n(&mut c, 3, WAIT), &sent, "broadcasts at C");
    assert!(a.wait_tx_all_completed(WAIT), "A's TX chains not returned");
    assert_eq!(
        sw.wait_drops("b", "no_rx_buffer", 3),
        3,
        "no_rx_buffer on b"
    );
    assert!(b.recv(QUIET).is_none());
    let (sa, sb) = (sw.stats("a"), sw.stats("b"));
    assert_eq!(sa.rx_packets, 3);
    assert_eq!(total_drops(&sa), 0, "drops on a: {:?}", nonzero_drops(&sa));
    assert_eq!(total_drops(&sb), 3, "drops on b: {:?}", nonzero_drops(&sb));
    assert_eq!(sb.tx_packets, 0);
}

#[test]
fn switch_merges_rx_buffers_for_large_frames() {
    let sw = start_switch(&[("a", 1), ("b", 1)]);
    let mut a = sw.connect("a");
    let mut b = sw.connect_with(
        "b",
        MockOptions {
            rx_buf_len: 512,
            ..MockOptions::default()
        },
    );
    assert_ne!(
        b.acked_features() & VIRTIO_NET_F_MRG_RXBUF,
        0,
        "switch must offer MRG_RXBUF"
    );
    // 12-byte header + frame, filled greedily into 512-byte buffers.
    for (i, (len, bufs)) in [
        (60usize, 1u16),
        (500, 1),
        (501, 2),
        (1012, 2),
        (1013, 3),
        (1514, 3),
    ]
    .into_iter()
    .enumerate()
    {
        assert_merged_delivery(&mut a, &mut b, len, i as u32, bufs);
    }
    let sb = sw.stats("b");
    assert_eq!(total_drops(&sb), 0, "drops on b: {:?}", nonzero_drops(&sb));
}

// ---------------------------------------------------------------------------------------
// Port lifecycle: run-time add/remove, a second concurrent connection (migration)
// ---------------------------------------------------------------------------------------

#[test]
fn switch_adds_and_removes_ports_at_run_time() {
    use vswitch::switch::PortChangeError;
    let ts = start_switch(&[("a", 1)]);
    let sw = ts.switch();
    let b_sock = ts.sock("b");
    let info = sw
        .add_port(&PortConfig {
            name: Some("b".into()),
            ..PortConfig::new(&b_sock)
        })
        .expect("add port b");
    assert_eq!(info.name, "b");
    assert!(b_sock.exists(), "the new port's socket exists");
    let mut a = ts.connect("a");
    let mut b = ts.connect("b");
    assert_forwards(&mut a, &mut b, 1, 2, 1);
    assert_forwards(&mut b, &mut a, 2, 1, 2);

    // Bad additions: each a clear error, nothing else disturbed.
    let dup = sw.add_port(&PortConfig {
        name: Some("b".into()),
        ..PortConfig::new(ts.sock("b2"))
    });
    assert!(matches!(dup, Err(PortChangeError::Exists(_))), "{dup:?}");
    let same_socket = sw.add_port(&PortConfig {
        name: Some("c".into()),
        ..PortConfig::new(&b_sock)
    });
    assert!(
        matches!(same_socket, Err(PortChangeError::Exists(_))),
        "{same_socket:?}"
    );
    let bad_vlan = sw.add_port(&PortConfig {
        vlan: 4095,
        ..PortConfig::new(ts.sock("c"))
    });
    assert!(
        matches!(bad_vlan, Err(PortChangeError::Config(_))),
        "{bad_vlan:?}"
    );
    let bad_queues = sw.add_port(&PortConfig {
        queues: 0,
        ..PortConfig::new(ts.sock("c"))
    });
    assert!(
        matches!(bad_queues, Err(PortChangeError::Config(_))),
        "{bad_queues:?}"
    );
    let no_dir = sw.add_port(&PortConfig::new(ts.dir().join("missing/c.sock")));
    assert!(
        matches!(no_dir, Err(PortChangeError::Port(_))),
        "{no_dir:?}"
    );
    let not_socket = ts.dir().join("plain-file");
    std::fs::write(&not_socket, b"x").expect("write file");
    let r = sw.add_port(&PortConfig::new(&not_socket));
    assert!(matches!(r, Err(PortChangeError::Port(_))), "{r:?}");
    assert!(not_socket.exists(), "a non-socket file is never deleted");
    assert!(matches!(
        sw.remove_port("nope"),
        Err(PortChangeError::NotFound(_))
    ));
    assert_forwards(&mut a, &mut b, 1, 2, 3);

    // Removal closes the connection and the socket; the other port keeps working.
    sw.remove_port("b").expect("remove b");
    assert!(b.wait_closed(WAIT), "b's connection was closed");
    assert!(!b_sock.exists(), "b's socket was removed");
    match sw.handle(&Request::Ports {}) {
        Response::Ports { ports } => assert!(ports.iter().all(|p| p.name != "b"), "{ports:?}"),
        other => panic!("{other:?}"),
    }
    a.send(&frame(mac(2), mac(1), 60, 4))
        .expect("send to the removed port's MAC");
    assert!(a.wait_tx_all_completed(WAIT), "a's frame was consumed");
    // The name is free again; the port comes back under a new id.
    let again = sw
        .add_port(&PortConfig {
            name: Some("b".into()),
            ..PortConfig::new(&b_sock)
        })
        .expect("re-add b");
    assert_ne!(again.id, info.id, "port ids are not reused");
    let mut b = ts.connect("b");
    assert_forwards(&mut a, &mut b, 1, 2, 5);
}

#[test]
fn switch_follows_the_connection_whose_rings_started_last() {
    let ts = start_switch(&[("a", 1), ("b", 1)]);
    let mut src = ts.connect("a");
    let mut b = ts.connect("b");
    assert_forwards(&mut b, &mut src, 2, 1, 1);

    // A migration: the source stops its rings, the destination connects to the same
    // port and starts its own while the source is still connected.
    for q in 0..2 {
        src.get_vring_base(q).expect("stop source ring");
    }
    let mut dst = MockFrontend::connect(&ts.sock("a"), MockOptions::default())
        .expect("second connection to port a");
    let f = frame(mac(1), mac(2), 100, 7);
    let deadline = Instant::now() + WAIT;
    let got = loop {
        b.send(&f).expect("send");
        let got = recv_n(&mut dst, 1, Duration::from_millis(200));
        if !got.is_empty() || Instant::now() > deadline {
            break got;
        }
    };
    assert_frames_eq(&got[..1.min(got.len())], &[f], "b -> destination");
    assert!(
        recv_quiet(&mut src).is_empty(),
        "the stopped source gets nothing"
    );

    // A third connection while two are open is refused and counted.
    let before = drop_count(&ts.stats("a"), "protocol_error");
    let third = MockFrontend::connect(&ts.sock("a"), MockOptions::default());
    assert!(
        third.is_err(),
        "third concurrent connection must be refused"
    );
    assert!(ts.wait_drops("a", "protocol_error", before + 1) > before);

    // The source leaves: only its own connection closes, the port stays on dst.
    src.disconnect();
    thread::sleep(QUIET);
    assert!(ts.is_connected("a"));
    assert_forwards(&mut b, &mut dst, 2, 1, 8);
    assert_forwards(&mut dst, &mut b, 1, 2, 9);
}

// ---------------------------------------------------------------------------------------
// Port policy
// ---------------------------------------------------------------------------------------

fn allow_only(m: u8) -> PolicyConfig {
    PolicyConfig {
        allowed_macs: vec![vswitch::MacAddr(mac(m))],
        ..PolicyConfig::default()
    }
}

/// A frame tagged with `vid` (802.1Q), test EtherType inside.
fn tagged_frame(dst: [u8; 6], src: [u8; 6], vid: u16, seed: u32) -> Vec<u8> {
    let inner = frame(dst, src, 64, seed);
    let mut f = inner[..12].to_vec();
    f.extend_from_slice(&0x8100u16.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&inner[12..]);
    f
}

/// Frames received until quiet, tagged ones included.
fn recv_any(m: &mut MockFrontend) -> Vec<Vec<u8>> {
    m.recv_all(QUIET)
        .into_iter()
        .filter(|f| {
            is_test_frame(f)
                || (f.len() > 18
                    && f[12..14] == [0x81, 0x00]
                    && f[16..18] == TEST_ETHERTYPE.to_be_bytes())
        })
        .collect()
}

#[test]
fn switch_stops_a_spoofing_guest_and_spares_its_neighbours() {
    let ts = start_with_policies(&[
        ("a", allow_only(1)),
        ("b", PolicyConfig::default()),
        ("c", PolicyConfig::default()),
    ]);
    let mut a = ts.connect("a");
    let mut b = ts.connect("b");
    let mut c = ts.connect("c");
    assert_forwards(&mut a, &mut c, 1, 3, 1);
    let _ = recv_quiet(&mut b); // the first frame was flooded to b too
                                // a pretends to be mac(9), or c (mac(3)) to steal its traffic: nothing gets out.
    let spoofed: Vec<Vec<u8>> = (0..20)
        .map(|i| {
            let src = if i % 2 == 0 { mac(9) } else { mac(3) };
            frame(BROADCAST, src, 60, 100 + i)
        })
        .collect();
    a.send_burst(&spoofed).expect("send spoofed frames");
    assert!(a.wait_tx_all_completed(WAIT));
    assert_eq!(ts.wait_drops("a", "spoofed_source", 20), 20);
    assert!(recv_quiet(&mut b).is_empty(), "b got a spoofed frame");
    assert!(recv_quiet(&mut c).is_empty(), "c got a spoofed frame");
    let fdb = match ts.switch().handle(&Request::Fdb {}) {
        Response::Fdb { entries } => entries,
        other => panic!("{other:?}"),
    };
    assert!(
        fdb.iter().all(|e| e.mac != vswitch::MacAddr(mac(9))),
        "the spoofed address was learned: {fdb:?}"
    );
    assert!(
        fdb.iter()
            .all(|e| e.mac != vswitch::MacAddr(mac(3)) || e.port == "c"),
        "c's address moved to the spoofer: {fdb:?}"
    );
    // The neighbours are not affected.
    assert_forwards(&mut b, &mut c, 2, 3, 2);
    assert_forwards(&mut c, &mut b, 3, 2, 3);
    assert_forwards(&mut a, &mut b, 1, 2, 4);
    for p in ["b", "c"] {
        assert_eq!(
            total_drops(&ts.stats(p)),
            0,
            "{p}: {:?}",
            nonzero_drops(&ts.stats(p))
        );
    }
}

#[test]
fn switch_rate_limits_ingress_and_egress_with_token_buckets() {
    // 1 frame per second: the bucket hardly refills while a burst is forwarded, even on
    // a loaded machine, so the counts below are exact to one frame.
    let limited = |burst: u64| {
        Some(RateLimit {
            pps: Some(1),
            burst_packets: Some(burst),
            ..RateLimit::default()
        })
    };
    let ts = start_with_policies(&[
        (
            "a",
            PolicyConfig {
                ingress: limited(5),
                ..PolicyConfig::default()
            },
        ),
        ("b", PolicyConfig::default()),
        (
            "c",
            PolicyConfig {
                egress: limited(3),
                ..PolicyConfig::default()
            },
        ),
    ]);
    let mut a = ts.connect("a");
    let mut b = ts.connect("b");
    let mut c = ts.connect("c");
    // Teach the FDB where b and c live without spending a's or c's tokens.
    b.send(&frame(BROADCAST, mac(2), 60, 0)).expect("send");
    let _ = recv_quiet(&mut a);
    let _ = recv_quiet(&mut c);

    // 30 frames at once from a (ingress 1/s, burst 5): 5 pass, 6 if a second went by.
    let burst: Vec<Vec<u8>> = (0..30).map(|i| frame(mac(2), mac(1), 60, 10 + i)).collect();
    a.send_burst(&burst).expect("send");
    assert!(a.wait_tx_all_completed(WAIT));
    let got = recv_quiet(&mut b).len() as u64;
    let limited_in = drop_count(&ts.stats("a"), "ingress_rate_limit");
    assert!(
        (5..=6).contains(&got),
        "{got} of 30 passed a 5-frame ingress burst"
    );
    assert_eq!(got + limited_in, 30, "every frame passed or was counted");

    // 30 frames from b to c (egress 1/s, burst 3, one token spent on b's first
    // broadcast): 2 arrive, 3 if a second went by; the rest are counted on c.
    let burst: Vec<Vec<u8>> = (0..30).map(|i| frame(mac(3), mac(2), 60, 50 + i)).collect();
    b.send_burst(&burst).expect("send");
    assert!(b.wait_tx_all_completed(WAIT));
    let got = recv_quiet(&mut c).len() as u64;
    let limited_out = drop_count(&ts.stats("c"), "egress_rate_limit");
    assert!(
        (2..=3).contains(&got),
        "{got} of 30 passed a 3-frame egress burst"
    );
    assert_eq!(got + limited_out, 30, "every frame passed or was counted");
    assert_eq!(drop_count(&ts.stats("b"), "ingress_rate_limit"), 0);
}

#[test]
fn switch_trunk_port_carries_its_vlans_tagged() {
    let trunk = PolicyConfig {
        vlan_mode: Some(VlanMode::Trunk {
            vlans: vec![10, 20],
            native_vlan: None,
        }),
        ..PolicyConfig::default()
    };
    let ts = TestSwitch::start("trunk", |dir| {
        let port = |name: &str, vlan: u16, policy: PolicyConfig| PortConfig {
            vlan,
            policy,
            ..PortConfig::new(dir.join(format!("{name}.sock")))
        };
        SwitchConfig {
            ports: vec![
                port("t", 1, trunk),
                port("a", 10, PolicyConfig::default()),
                port("b", 20, PolicyConfig::default()),
                port("d", 30, PolicyConfig::default()),
            ],
            ..SwitchConfig::default()
        }
    });
    let (mut t, mut a, mut b, mut d) = (
        ts.connect("t"),
        ts.connect("a"),
        ts.connect("b"),
        ts.connect("d"),
    );
    // Tagged 10 from the trunk reaches the VLAN 10 access port untagged, nobody else.
    t.send(&tagged_frame(BROADCAST, mac(0x10), 10, 1))
        .expect("send");
    let got = recv_any(&mut a);
    assert_eq!(
        got,
        vec![frame(BROADCAST, mac(0x10), 64, 1)],
        "a gets the frame untagged"
    );
    assert!(recv_any(&mut b).is_empty() && recv_any(&mut d).is_empty());
    // From the VLAN 20 access port, the trunk gets it tagged 20.
    b.send(&frame(BROADCAST, mac(0x20), 64, 2)).expect("send");
    let got = recv_any(&mut t);
    assert_eq!(
        got,
        vec![tagged_frame(BROADCAST, mac(0x20), 20, 2)],
        "tagged 20 on the trunk"
    );
    assert!(recv_any(&mut a).is_empty());
    // VLAN 30 is not on the trunk; untagged frames neither (no native VLAN).
    d.send(&frame(BROADCAST, mac(0x30), 64, 3)).expect("send");
    assert!(recv_any(&mut t).is_empty(), "VLAN 30 leaked onto the trunk");
    t.send(&tagged_frame(BROADCAST, mac(0x10), 30, 4))
        .expect("send");
    t.send(&frame(BROADCAST, mac(0x10), 64, 5)).expect("send");
    assert_eq!(ts.wait_drops("t", "vlan_not_allowed", 2), 2);
    assert!(recv_any(&mut a).is_empty() && recv_any(&mut d).is_empty());
    // An access port does not take tagged frames.
    a.send(&tagged_frame(BROADCAST, mac(0x11), 10, 6))
        .expect("send");
    assert_eq!(ts.wait_drops("a", "vlan_mismatch", 1), 1);
}

#[test]
fn switch_limits_learned_addresses_per_port() {
    let ts = start_with_policies(&[
        (
            "a",
            PolicyConfig {
                max_fdb_entries: Some(2),
                ..PolicyConfig::default()
            },
        ),
        ("b", PolicyConfig::default()),
    ]);
    let mut a = ts.connect("a");
    let mut b = ts.connect("b");
    for src in [1, 2] {
        assert_forwards(&mut a, &mut b, src, 9, u32::from(src));
    }
    a.send(&frame(mac(9), mac(3), 100, 3)).expect("send");
    assert_eq!(ts.wait_drops("a", "fdb_limit", 1), 1);
    assert!(recv_quiet(&mut b).is_empty(), "a third address got through");
    // Known addresses keep working at the limit.
    assert_forwards(&mut a, &mut b, 1, 9, 4);
}

#[test]
fn switch_changes_policy_at_run_time_and_refuses_bad_values() {
    let ts = start_switch(&[("a", 1), ("b", 1)]);
    let sw = ts.switch();
    let mut a = ts.connect("a");
    let mut b = ts.connect("b");
    assert_forwards(&mut a, &mut b, 9, 2, 1);
    sw.set_policy("a", &allow_only(1)).expect("set policy");
    a.send(&frame(mac(2), mac(9), 60, 2)).expect("send");
    assert_eq!(ts.wait_drops("a", "spoofed_source", 1), 1);
    assert!(recv_quiet(&mut b).is_empty());
    assert_forwards(&mut a, &mut b, 1, 2, 3);

    // Bad values: clear errors, the policy in force stays.
    let zero = PolicyConfig {
        ingress: Some(RateLimit {
            pps: Some(0),
            ..RateLimit::default()
        }),
        ..PolicyConfig::default()
    };
    let e = sw.set_policy("a", &zero).expect_err("a rate of zero");
    assert!(format!("{e}").contains("pps"), "{e}");
    let bad_vlan = PolicyConfig {
        vlan_mode: Some(VlanMode::Trunk {
            vlans: vec![10, 5000],
            native_vlan: None,
        }),
        ..PolicyConfig::default()
    };
    let e = sw.set_policy("a", &bad_vlan).expect_err("VLAN 5000");
    assert!(format!("{e}").contains("5000"), "{e}");
    assert!(sw.set_policy("nope", &PolicyConfig::default()).is_err());
    // The same through the JSON API, with an unknown field.
    let req: Result<Request, _> = serde_json::from_str(
        r#"{"request":"port_set","name":"a","policy":{"allowed_macs":[],"rate":5}}"#,
    );
    assert!(req.is_err(), "unknown policy field accepted");
    a.send(&frame(mac(2), mac(9), 60, 4)).expect("send");
    assert_eq!(
        ts.wait_drops("a", "spoofed_source", 2),
        2,
        "old policy still in force"
    );

    // An empty policy lifts every restriction.
    sw.set_policy("a", &PolicyConfig::default()).expect("clear");
    assert_forwards(&mut a, &mut b, 9, 2, 5);
}

#[test]
fn switch_refuses_features_it_did_not_offer_and_keeps_other_ports() {
    let ts = start_switch(&[("a", 1), ("b", 1), ("c", 1)]);
    let mut b = ts.connect("b");
    let mut c = ts.connect("c");
    let mut a = ts.connect("a");
    let offered = a.offered_features();
    // Bit 41 (VIRTIO_F_NOTIF_CONFIG_DATA) is never offered.
    let unoffered = 1u64 << 41;
    assert_eq!(offered & unoffered, 0);
    let acked = a.acked_features();
    let r = a.set_features(acked | unoffered);
    // The daemon refuses the message and closes the connection.
    let closed = r.is_err() || a.wait_closed(WAIT);
    assert!(
        closed,
        "a frontend acking an unoffered feature stayed connected"
    );
    assert!(ts.wait_drops("a", "protocol_error", 1) >= 1);
    assert_forwards(&mut b, &mut c, 2, 3, 1);
    assert_forwards(&mut c, &mut b, 3, 2, 2);
}

#[test]
fn switch_applies_a_guests_receive_filter() {
    use vswitch::policy::RxFilter;
    let filter = PolicyConfig {
        rx_filter: Some(RxFilter {
            macs: vec![vswitch::MacAddr(mac(2))],
            ..RxFilter::default()
        }),
        ..PolicyConfig::default()
    };
    let ts = start_with_policies(&[("a", PolicyConfig::default()), ("b", filter)]);
    let mut a = ts.connect("a");
    let mut b = ts.connect("b");
    // Unknown unicast floods, but b's filter only takes its own address and broadcast.
    a.send(&frame(mac(7), mac(1), 60, 1)).expect("send");
    assert!(
        recv_quiet(&mut b).is_empty(),
        "b's filter let a foreign unicast in"
    );
    a.send(&frame([0x01, 0, 0x5e, 0, 0, 1], mac(1), 60, 2))
        .expect("send");
    assert!(recv_quiet(&mut b).is_empty(), "b's filter let multicast in");
    assert_forwards(&mut a, &mut b, 1, 2, 3);
    let bc = frame(BROADCAST, mac(1), 60, 4);
    a.send(&bc).expect("send");
    assert_frames_eq(&recv_quiet(&mut b), &[bc], "broadcast passes the filter");
}

// ---------------------------------------------------------------------------------------
// Holding a VM port's receive direction (path change to the switch)
// ---------------------------------------------------------------------------------------

/// Sends a hold request for `port`; returns `(holding, held, released)`.
fn hold_req(ts: &TestSwitch, port: &str, hold: bool, max_ms: Option<u64>) -> (bool, u64, u64) {
    match ts.switch().handle(&Request::Hold {
        port: port.into(),
        hold,
        max_ms,
        via: None,
        on_stop: false,
    }) {
        Response::Held {
            port: p,
            holding,
            held,
            released,
            redirected,
        } => {
            assert_eq!(redirected, 0, "released to the guest");
            assert_eq!(p, port);
            (holding, held, released)
        }
        other => panic!("hold {port} {hold}: {other:?}"),
    }
}

/// Renews the hold of `port` until `held` reaches `n` (or [`WAIT`] passes); returns it.
fn wait_held(ts: &TestSwitch, port: &str, n: u64) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let (holding, held, _) = hold_req(ts, port, true, Some(60_000));
        assert!(holding);
        if held >= n || Instant::now() > deadline {
            return held;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Starts switch ports a and b, connects both and lets the switch learn both MACs.
fn held_pair() -> (TestSwitch, MockFrontend, MockFrontend) {
    let ts = start_switch(&[("a", 1), ("b", 1)]);
    let (mut a, mut b) = (ts.connect("a"), ts.connect("b"));
    assert_forwards(&mut b, &mut a, 0xb, 0xa, 1);
    assert_forwards(&mut a, &mut b, 0xa, 0xb, 2);
    (ts, a, b)
}

#[test]
fn switch_holds_a_vm_ports_receive_direction_and_releases_in_order() {
    let (ts, mut a, mut b) = held_pair();
    let before = ts.stats("b");
    assert_eq!(hold_req(&ts, "b", true, None), (true, 0, 0));
    let sent: Vec<Vec<u8>> = (0..100u32)
        .map(|i| frame(mac(0xb), mac(0xa), 60 + (i as usize * 37) % 1455, 1000 + i))
        .collect();
    a.send_burst(&sent).unwrap();
    assert!(a.wait_tx_all_completed(WAIT), "A's TX chains not returned");
    assert_eq!(wait_held(&ts, "b", 100), 100, "held");
    assert!(recv_quiet(&mut b).is_empty(), "b received while held");
    assert_eq!(
        ts.stats("b").tx_packets,
        before.tx_packets,
        "nothing delivered"
    );

    // Release while more frames arrive: they queue behind the held ones.
    let more: Vec<Vec<u8>> = (0..50u32)
        .map(|i| frame(mac(0xb), mac(0xa), 100, 2000 + i))
        .collect();
    let released = thread::scope(|s| {
        let r = s.spawn(|| hold_req(&ts, "b", false, None));
        a.send_burst(&more).unwrap();
        r.join().expect("release thread")
    });
    assert!(!released.0, "still holding after the release: {released:?}");
    assert!(released.1 >= 100, "{released:?}");
    assert_eq!(
        released.1, released.2,
        "every held frame delivered: {released:?}"
    );
    let mut want = sent.clone();
    want.extend(more.iter().cloned());
    assert_frames_eq(
        &recv_n(&mut b, want.len(), WAIT),
        &want,
        "released in order",
    );
    assert!(recv_quiet(&mut b).is_empty(), "b got extra frames");

    let sb = ts.wait_stats("b", |s| s.tx_packets >= before.tx_packets + 150);
    assert_eq!(sb.tx_packets, before.tx_packets + 150, "b tx counters");
    assert_eq!(total_drops(&sb), 0, "drops on b: {:?}", nonzero_drops(&sb));

    // Normal delivery again; releasing a port that does not hold is fine.
    assert_forwards(&mut a, &mut b, 0xa, 0xb, 3);
    assert_eq!(hold_req(&ts, "b", false, None), (false, 0, 0));
}

#[test]
fn switch_hold_ends_by_itself_at_its_deadline() {
    let (ts, mut a, mut b) = held_pair();
    let t0 = Instant::now();
    assert_eq!(hold_req(&ts, "b", true, Some(200)), (true, 0, 0));
    let sent: Vec<Vec<u8>> = (0..10u32)
        .map(|i| frame(mac(0xb), mac(0xa), 100, 3000 + i))
        .collect();
    a.send_burst(&sent).unwrap();
    // Nobody releases: the frames arrive once the 200 ms are over.
    let got = recv_n(&mut b, sent.len(), WAIT);
    assert!(
        t0.elapsed() >= Duration::from_millis(200),
        "delivered before the deadline"
    );
    assert_frames_eq(&got, &sent, "self-released in order");
    assert_eq!(hold_req(&ts, "b", false, None), (false, 0, 0));
    assert_forwards(&mut a, &mut b, 0xa, 0xb, 4);
    let sb = ts.stats("b");
    assert_eq!(total_drops(&sb), 0, "drops on b: {:?}", nonzero_drops(&sb));
}

#[test]
fn switch_hold_overflow_is_counted_and_the_rest_delivered() {
    use vswitch::hold::HOLD_MAX_FRAMES;
    let (ts, mut a, mut b) = held_pair();
    let before = ts.stats("b");
    hold_req(&ts, "b", true, Some(60_000));
    let extra = 50;
    let sent: Vec<Vec<u8>> = (0..(HOLD_MAX_FRAMES + extra) as u32)
        .map(|i| frame(mac(0xb), mac(0xa), 60, 10_000 + i))
        .collect();
    a.send_burst(&sent).unwrap();
    assert!(a.wait_tx_all_completed(WAIT), "A's TX chains not returned");
    assert_eq!(
        ts.wait_drops("b", "hold_overflow", extra as u64),
        extra as u64,
        "hold_overflow on b"
    );
    assert_eq!(
        wait_held(&ts, "b", HOLD_MAX_FRAMES as u64),
        HOLD_MAX_FRAMES as u64
    );
    // More frames than b has receive buffers: the drain waits for b to recycle them.
    let got = thread::scope(|s| {
        let r = s.spawn(|| hold_req(&ts, "b", false, None));
        let got = recv_n(&mut b, HOLD_MAX_FRAMES, WAIT * 2);
        r.join().expect("release thread");
        got
    });
    assert_frames_eq(&got, &sent[..HOLD_MAX_FRAMES], "released in order");
    let sb = ts.wait_stats("b", |s| {
        s.tx_packets >= before.tx_packets + HOLD_MAX_FRAMES as u64
    });
    assert_eq!(sb.tx_packets, before.tx_packets + HOLD_MAX_FRAMES as u64);
    assert_eq!(
        nonzero_drops(&sb),
        BTreeMap::from([("hold_overflow", extra as u64)])
    );
    assert_forwards(&mut a, &mut b, 0xa, 0xb, 5);
}

#[test]
fn switch_hold_refuses_unknown_ports_and_discards_on_removal() {
    let (ts, mut a, _b) = held_pair();
    let r = ts.switch().handle(&Request::Hold {
        port: "nope".into(),
        hold: true,
        max_ms: None,
        via: None,
        on_stop: false,
    });
    assert!(
        matches!(&r, Response::Error { message } if message.contains("no VM port named nope")),
        "{r:?}"
    );
    hold_req(&ts, "b", true, None);
    a.send(&frame(mac(0xb), mac(0xa), 100, 1)).unwrap();
    assert_eq!(wait_held(&ts, "b", 1), 1);
    // A release via a port that is not an uplink is refused; the hold stays.
    let r = ts.switch().handle(&Request::Hold {
        port: "b".into(),
        hold: false,
        max_ms: None,
        via: Some("a".into()),
        on_stop: false,
    });
    assert!(
        matches!(&r, Response::Error { message } if message.contains("no uplink named a")),
        "{r:?}"
    );
    assert_eq!(wait_held(&ts, "b", 1), 1, "still held");
    ts.switch().remove_port("b").expect("remove b");
    let r = ts.switch().handle(&Request::Hold {
        port: "b".into(),
        hold: false,
        max_ms: None,
        via: None,
        on_stop: false,
    });
    assert!(matches!(r, Response::Error { .. }), "{r:?}");
}

#[test]
fn switch_hold_released_without_a_frontend_counts_no_rx_buffer() {
    let (ts, mut a, b) = held_pair();
    hold_req(&ts, "b", true, None);
    let sent: Vec<Vec<u8>> = (0..3u32)
        .map(|i| frame(mac(0xb), mac(0xa), 100, 4000 + i))
        .collect();
    a.send_burst(&sent).unwrap();
    assert_eq!(wait_held(&ts, "b", 3), 3);
    drop(b);
    ts.wait_connected("b", false);
    assert_eq!(hold_req(&ts, "b", false, None), (false, 3, 0));
    assert_eq!(ts.wait_drops("b", "no_rx_buffer", 3), 3);
}

/// A hold armed `on_stop` (a live migration's source): frames are delivered while
/// the guest's rings run; once the VMM stops them (its switch-over), frames for the
/// guest are held instead of dropped; `hold_take` hands them out in order, in
/// parts, and ends the hold; `inject` on another switch delivers them to the VM
/// there, in order. Malformed injected frames are refused whole.
#[test]
fn switch_armed_hold_starts_when_the_rings_stop_and_its_frames_move_to_another_switch() {
    use vswitch::api::WireFrame;
    let (ts, mut a, mut b) = held_pair();
    match ts.switch().handle(&Request::Hold {
        port: "b".into(),
        hold: true,
        max_ms: Some(60_000),
        via: None,
        on_stop: true,
    }) {
        Response::Held { holding: false, .. } => {}
        other => panic!("arm: {other:?}"),
    }
    assert_forwards(&mut a, &mut b, 0xa, 0xb, 5);
    // The VMM pauses the guest for the switch-over: its receive ring stops.
    b.get_vring_base(0).expect("GET_VRING_BASE of the RX ring");
    let sent: Vec<Vec<u8>> = (0..30u32)
        .map(|i| frame(mac(0xb), mac(0xa), 60 + i as usize * 40, 4000 + i))
        .collect();
    a.send_burst(&sent).unwrap();
    assert!(a.wait_tx_all_completed(WAIT), "A's TX chains not returned");
    assert_eq!(wait_held(&ts, "b", 30), 30, "held since the rings stopped");
    let sb = ts.stats("b");
    assert_eq!(total_drops(&sb), 0, "drops on b: {:?}", nonzero_drops(&sb));

    let take = |max: usize| match ts.switch().handle(&Request::HoldTake {
        port: "b".into(),
        max_bytes: Some(max),
    }) {
        Response::HeldFrames {
            frames, more, held, ..
        } => (frames, more, held),
        other => panic!("hold_take: {other:?}"),
    };
    let (mut taken, more, _) = take(1000);
    assert!(more, "1000 bytes do not take 30 frames");
    assert!(!taken.is_empty() && taken.len() < 30, "{}", taken.len());
    let (rest, more, held) = take(1 << 20);
    assert!(!more);
    assert_eq!(held, 30);
    taken.extend(rest);
    let bytes: Vec<Vec<u8>> = taken
        .iter()
        .map(|w| {
            assert_eq!(w.vnet, None, "no offload pending");
            hex::decode(&w.frame).unwrap()
        })
        .collect();
    assert_frames_eq(&bytes, &sent, "taken out in order");
    // The hold ended with the last frame: nothing more to take.
    assert_eq!(take(1 << 20).0.len(), 0);

    // The destination's switch delivers them to the VM that resumed there.
    let ts2 = start_switch(&[("b", 1)]);
    let mut b2 = ts2.connect("b");
    match ts2.switch().handle(&Request::Inject {
        port: "b".into(),
        frames: taken.clone(),
    }) {
        Response::Injected {
            queued: 30,
            dropped: 0,
            ..
        } => {}
        other => panic!("inject: {other:?}"),
    }
    assert_frames_eq(&recv_n(&mut b2, 30, WAIT), &sent, "delivered in order");

    let good = taken[0].clone();
    for (bad, says) in [
        (
            WireFrame {
                frame: "zz".into(),
                vnet: None,
            },
            "frame 1: frame bytes",
        ),
        (
            WireFrame {
                frame: "00".repeat(10),
                vnet: None,
            },
            "frame 1: 10 bytes",
        ),
        (
            WireFrame {
                frame: good.frame.clone(),
                vnet: Some("00".into()),
            },
            "frame 1: vnet header of 1 bytes",
        ),
    ] {
        match ts2.switch().handle(&Request::Inject {
            port: "b".into(),
            frames: vec![good.clone(), bad],
        }) {
            Response::Error { message } => assert!(message.contains(says), "{message}"),
            other => panic!("bad inject: {other:?}"),
        }
    }
    match ts2.switch().handle(&Request::Inject {
        port: "nosuch".into(),
        frames: vec![good],
    }) {
        Response::Error { message } => assert!(message.contains("no VM port named nosuch")),
        other => panic!("inject to nosuch: {other:?}"),
    }
    assert!(
        recv_quiet(&mut b2).is_empty(),
        "refused frames went nowhere"
    );
}
