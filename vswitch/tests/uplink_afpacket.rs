#![allow(clippy::tests_outside_test_module)]
//! The AF_PACKET uplink against a veth pair `a` <-> `b` in a private network
//! namespace per test: the uplink sits on `a`, a plain AF_PACKET socket on `b`
//! is the independent other end. Needs root; without it every test fails.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vswitch::config::UplinkConfig;
use vswitch::uplink::{RingStats, Uplink, UplinkError};
use vswitch::wire::{vlan_tag_bytes, L2Header, ETH_HLEN, ETH_P_8021Q};

const MAX_FRAME: usize = 1518;
/// IEEE local experimental EtherType: no stack handles it, and it tells the
/// tests' frames from whatever else the kernel sends on a fresh interface.
const ETHERTYPE_TEST: u16 = 0x88b5;
const SRC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const SRC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
/// How long to wait for frames that should arrive.
const WAIT: Duration = Duration::from_secs(3);
/// How long to watch for frames that should not arrive.
const QUIET: Duration = Duration::from_millis(150);

static NEXT_NS: AtomicUsize = AtomicUsize::new(0);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the uplink_afpacket tests need root (network namespaces, veth, AF_PACKET); \
         running as uid {euid}: run them as root"
    );
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A private network namespace with veth pair `a` <-> `b`, both up. Deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        require_root();
        let n = NEXT_NS.fetch_add(1, Ordering::Relaxed);
        let name = format!("accelnet-ut-{}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        // IPv6 sends router solicitations and MLD reports on interfaces coming up.
        // Only noise (the tests filter on ETHERTYPE_TEST), so best effort.
        let _ = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sysctl", "-qw"])
            .args([
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ])
            .output();
        ns.veth("a", "b");
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Adds veth pair `x` <-> `y`, both up.
    fn veth(&self, x: &str, y: &str) {
        // `name` is needed: iproute2 reads a bare `a` as an abbreviation of `address`.
        self.ip(&["link", "add", "name", x, "type", "veth", "peer", "name", y]);
        self.ip(&["link", "set", "dev", x, "up"]);
        self.ip(&["link", "set", "dev", y, "up"]);
    }

    /// Runs `f` on a thread that has entered the namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns with a namespace fd and its type; it moves only this
                // thread, which exists to run `f` and ends with it.
                let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(r, 0, "setns({path}): {}", io::Error::last_os_error());
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn open_uplink(ifname: &str) -> Uplink {
    let cfg = UplinkConfig::new(ifname.to_string(), 1);
    Uplink::open(&cfg, MAX_FRAME).unwrap_or_else(|e| panic!("{}", error_chain(&e)))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A test frame of `len` bytes from `src`, numbered `seq`, with a filler pattern.
fn frame_from(src: [u8; 6], len: usize, seq: u32) -> Vec<u8> {
    assert!(len >= ETH_HLEN + 4);
    let mut f: Vec<u8> = (0..len).map(|i| (i as u32 * 7 + seq) as u8).collect();
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0xff]);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&ETHERTYPE_TEST.to_be_bytes());
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

fn frame(len: usize, seq: u32) -> Vec<u8> {
    frame_from(SRC_B, len, seq)
}

/// `untagged` with an 802.1Q tag for `vlan` inserted after the MAC addresses.
fn tagged(untagged: &[u8], vlan: u16) -> Vec<u8> {
    let mut f = untagged[..12].to_vec();
    f.extend_from_slice(&vlan_tag_bytes(vlan));
    f.extend_from_slice(&untagged[12..]);
    f
}

/// A frame of the tests: ETHERTYPE_TEST, directly or behind one 802.1Q tag.
fn is_test_frame(data: &[u8]) -> bool {
    let ethertype = |at: usize| {
        data.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    ethertype(12) == Some(ETHERTYPE_TEST)
        || (ethertype(12) == Some(ETH_P_8021Q) && ethertype(16) == Some(ETHERTYPE_TEST))
}

fn poll_in(fd: RawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, count 1.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    assert!(r >= 0, "poll: {}", io::Error::last_os_error());
}

/// Test frames the uplink receives before `timeout` ends, stopping at `want`;
/// `rx_burst` is asked for `per_call` frames at a time.
fn uplink_recv(
    up: &mut Uplink,
    want: usize,
    timeout: Duration,
    per_call: usize,
) -> Vec<(Vec<u8>, Option<u16>)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < want {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let visited = up.rx_burst(per_call, |f| {
            assert!(f.data.len() <= MAX_FRAME, "frame of {} bytes", f.data.len());
            if is_test_frame(f.data) {
                got.push((f.data.to_vec(), f.vlan));
            }
        });
        assert!(visited <= per_call);
        if visited == 0 {
            poll_in(up.fd(), (deadline - now).min(Duration::from_millis(10)));
        }
    }
    got
}

/// A plain AF_PACKET socket bound to one interface, reporting stripped VLAN tags
/// through PACKET_AUXDATA.
struct RawSock {
    fd: OwnedFd,
}

fn setsockopt_int(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) {
    // SAFETY: `value` is a live c_int and the length passed is its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "setsockopt({level}, {name}): {}",
        io::Error::last_os_error()
    );
}

impl RawSock {
    fn open(ifname: &str) -> RawSock {
        let cname = CString::new(ifname).expect("test interface names have no NUL");
        // SAFETY: NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        assert_ne!(
            ifindex,
            0,
            "if_nametoindex({ifname}): {}",
            io::Error::last_os_error()
        );
        // Protocol 0 until bound, so nothing of other interfaces gets queued.
        // SAFETY: plain system call without pointers.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(
            raw >= 0,
            "socket(AF_PACKET): {}",
            io::Error::last_os_error()
        );
        // SAFETY: a descriptor just created, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt_int(&fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, 1);
        setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: `tv` is a live timeval and the length passed is its size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "SO_RCVTIMEO: {}", io::Error::last_os_error());
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: `sll` is an initialized sockaddr_ll of the length passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "bind to {ifname}: {}", io::Error::last_os_error());
        RawSock { fd }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is readable for its length during the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame within the receive timeout (20 ms), with the VLAN id of the
    /// tag the kernel stripped, if any.
    fn recv(&self) -> Option<(Vec<u8>, Option<u16>)> {
        let mut buf = vec![0u8; 65536];
        let mut ctrl = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: all-zero is a valid msghdr.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&ctrl) as _;
        // SAFETY: msg points to `iov` (over `buf`) and `ctrl`, live and of the sizes given.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "recvmsg: {e}");
            return None;
        }
        let mut vlan = None;
        // SAFETY: `msg` was filled in by recvmsg; its control pointer and length are valid.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR return headers inside `ctrl`.
            let (level, ty) = unsafe { ((*c).cmsg_level, (*c).cmsg_type) };
            if level == libc::SOL_PACKET && ty == libc::PACKET_AUXDATA {
                // SAFETY: a PACKET_AUXDATA message carries a tpacket_auxdata.
                let aux = unsafe {
                    libc::CMSG_DATA(c)
                        .cast::<libc::tpacket_auxdata>()
                        .read_unaligned()
                };
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                    vlan = Some(aux.tp_vlan_tci & 0x0fff);
                }
            }
            // SAFETY: `c` is a header inside `msg`'s control buffer.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
        buf.truncate(usize::try_from(n).expect("n >= 0"));
        Some((buf, vlan))
    }

    /// Test frames received before `timeout` ends, stopping at `want`.
    fn recv_test_frames(&self, want: usize, timeout: Duration) -> Vec<(Vec<u8>, Option<u16>)> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < want && Instant::now() < deadline {
            if let Some((data, vlan)) = self.recv() {
                if is_test_frame(&data) {
                    got.push((data, vlan));
                }
            }
        }
        got
    }
}

/// Sends `frames` through the uplink's TX ring with one flush.
fn uplink_send(up: &mut Uplink, frames: &[Vec<u8>]) {
    for f in frames {
        let slot = up.tx_slot().expect("TX ring has room");
        assert!(slot.len() >= MAX_FRAME, "slot of {} bytes", slot.len());
        slot[..f.len()].copy_from_slice(f);
        up.tx_commit(f.len());
    }
    up.tx_flush().expect("tx_flush");
}

fn assert_frames_eq(got: &[(Vec<u8>, Option<u16>)], want: &[Vec<u8>]) {
    assert_eq!(got.len(), want.len(), "frame count");
    for (i, ((data, vlan), w)) in got.iter().zip(want).enumerate() {
        assert_eq!(*vlan, None, "frame {i}: VLAN");
        assert!(
            data == w,
            "frame {i} differs: got {} bytes, want {}",
            data.len(),
            w.len()
        );
    }
}

#[test]
fn test_uplink_rx_peer_frames_arrive_byte_exact() {
    let ns = Netns::new();
    ns.run(|| {
        let mut up = open_uplink("a");
        assert_eq!(up.name(), "a");
        let peer = RawSock::open("b");
        let frames = vec![frame(60, 1), frame(1514, 2), frame(18, 3), frame(1000, 4)];
        for f in &frames {
            peer.send(f);
        }
        let got = uplink_recv(&mut up, frames.len(), WAIT, 64);
        assert_frames_eq(&got, &frames);
        assert_eq!(up.kernel_drops(), 0);
        assert_eq!(up.ring_stats(), RingStats::default());
    });
}

#[test]
fn test_uplink_rx_batch_of_100_arrives_in_order() {
    let ns = Netns::new();
    ns.run(|| {
        let mut up = open_uplink("a");
        let peer = RawSock::open("b");
        let frames: Vec<Vec<u8>> = (0..100)
            .map(|i| frame(60 + (i * 97) % 1455, i as u32))
            .collect();
        for f in &frames {
            peer.send(f);
        }
        // 7 at a time: most calls stop in the middle of a ring block and the next
        // one has to resume there.
        let got = uplink_recv(&mut up, frames.len(), WAIT, 7);
        assert_frames_eq(&got, &frames);
        assert_eq!(up.kernel_drops(), 0);
    });
}

#[test]
fn test_uplink_rx_ring_wraps_several_times_without_loss() {
    let ns = Netns::new();
    ns.run(|| {
        let mut up = open_uplink("a");
        let peer = RawSock::open("b");
        // 48 rounds of 100 full-size frames: 7.3 MB through a 4 MiB ring; a round
        // fills 2 blocks (40 frames each) and ends in a third one handed over by
        // timeout, so about 144 blocks go around the 64 of the ring.
        for round in 0..48u32 {
            let frames: Vec<Vec<u8>> = (0..100).map(|i| frame(1514, round * 100 + i)).collect();
            for f in &frames {
                peer.send(f);
            }
            let got = uplink_recv(&mut up, frames.len(), WAIT, 32);
            assert_eq!(got.len(), frames.len(), "round {round}: frame count");
            assert!(
                got.iter().map(|(d, _)| d).eq(frames.iter()),
                "round {round}: frames differ"
            );
        }
        assert_eq!(up.kernel_drops(), 0);
    });
}

#[test]
fn test_uplink_rx_ring_overflow_counts_kernel_drops_and_recovers() {
    let ns = Netns::new();
    ns.run(|| {
        let mut up = open_uplink("a");
        let peer = RawSock::open("b");
        // 4000 full-size frames (6.4 MB) into a 4 MiB ring nobody drains.
        let sent = 4000u32;
        let t0 = Instant::now();
        for i in 0..sent {
            peer.send(&frame(1514, i));
        }
        eprintln!("sending {sent} frames took {:?}", t0.elapsed());
        let drops = up.kernel_drops();
        assert!(drops > 0, "a full ring dropped nothing");
        let got = uplink_recv(&mut up, usize::MAX, Duration::from_millis(300), 256);
        // What was kept is the head of the stream, in order, byte-exact.
        for (i, (data, _)) in got.iter().enumerate() {
            assert!(*data == frame(1514, i as u32), "kept frame {i} differs");
        }
        // Every frame was either kept or counted as dropped (kernel_drops accumulates).
        let total_drops = up.kernel_drops();
        eprintln!("kept {} of {sent}, kernel dropped {total_drops}", got.len());
        assert_eq!(got.len() as u64 + total_drops, u64::from(sent));
        // Drained: new frames get through again.
        let after: Vec<Vec<u8>> = (0..10).map(|i| frame(200, 10_000 + i)).collect();
        for f in &after {
            peer.send(f);
        }
        assert_frames_eq(&uplink_recv(&mut up, after.len(), WAIT, 64), &after);
    });
}

#[test]
fn test_uplink_tx_frames_arrive_byte_exact_on_peer_and_not_back() {
    let ns = Netns::new();
    ns.run(|| {
        let mut up = open_uplink("a");
        let peer = RawSock::open("b");
        let single = vec![frame_from(SRC_A, 60, 1), frame_from(SRC_A, 1514, 2)];
        uplink_send(&mut up, &single);
        assert_frames_eq(&peer.recv_test_frames(single.len(), WAIT), &single);

        let batch: Vec<Vec<u8>> = (0..100)
            .map(|i| frame_from(SRC_A, 60 + (i * 89) % 1455, 100 + i as u32))
            .collect();
        uplink_send(&mut up, &batch);
        assert_frames_eq(&peer.recv_test_frames(batch.len(), WAIT), &batch);

        // The uplink does not receive its own transmissions.
        let echoed = uplink_recv(&mut up, usize::MAX, QUIET, 64);
        assert!(
            echoed.is_empty(),
            "uplink received {} of its own frames",
            echoed.len()
        );
        assert_eq!(up.ring_stats(), RingStats::default());
    });
}

#[test]
fn test_uplink_tx_ring_full_returns_none_then_recovers() {
    let ns = Netns::new();
    ns.run(|| {
        let mut up = open_uplink("a");
        let mut committed = 0usize;
        while let Some(slot) = up.tx_slot() {
            let f = frame_from(SRC_A, 60, committed as u32);
            slot[..f.len()].copy_from_slice(&f);
            up.tx_commit(f.len());
            committed += 1;
            assert!(committed <= 100_000, "TX ring never fills");
        }
        assert!(committed >= 512, "only {committed} TX slots");
        up.tx_flush().expect("tx_flush");
        // veth frees each frame as it forwards it, so the slots come back at once.
        let deadline = Instant::now() + WAIT;
        while up.tx_slot().is_none() {
            assert!(Instant::now() < deadline, "TX slots never came back");
            std::thread::sleep(Duration::from_millis(1));
        }
        // A bad length leaves the slot unsent and is counted.
        up.tx_commit(5);
        assert_eq!(up.ring_stats().tx_bad_length, 1);
        assert!(up.tx_slot().is_some());
    });
}

#[test]
fn test_uplink_rx_vlan_tagged_frame_reports_vlan_id() {
    let ns = Netns::new();
    ns.run(|| {
        let mut up = open_uplink("a");
        let peer = RawSock::open("b");
        let plain = frame(100, 7);
        peer.send(&tagged(&plain, 42));
        let got = uplink_recv(&mut up, 1, WAIT, 64);
        assert_eq!(got.len(), 1, "tagged frame not received");
        let (data, vlan) = &got[0];
        match vlan {
            Some(id) => {
                eprintln!("kernel stripped the 802.1Q tag: vlan = Some({id})");
                assert_eq!(*id, 42);
                assert!(*data == plain, "untagged data differs");
            }
            None => {
                eprintln!("kernel left the 802.1Q tag in the frame");
                assert_eq!(L2Header::parse(data).and_then(|h| h.vlan_tag), Some(42));
                assert!(*data == tagged(&plain, 42), "tagged data differs");
            }
        }
        // A priority tag (VLAN id 0) is no VLAN.
        peer.send(&tagged(&plain, 0));
        let got = uplink_recv(&mut up, 1, WAIT, 64);
        assert_eq!(got.len(), 1, "priority-tagged frame not received");
        let (data, vlan) = &got[0];
        assert_eq!(*vlan, None);
        assert!(
            *data == plain || *data == tagged(&plain, 0),
            "priority-tagged data differs"
        );
    });
}

#[test]
fn test_uplink_tx_vlan_tagged_frame_arrives_tagged_on_peer() {
    let ns = Netns::new();
    ns.run(|| {
        let mut up = open_uplink("a");
        let peer = RawSock::open("b");
        let plain = frame_from(SRC_A, 1514, 9);
        uplink_send(&mut up, &[tagged(&plain, 42)]);
        let got = peer.recv_test_frames(1, WAIT);
        assert_eq!(got.len(), 1, "tagged frame not received on b");
        let (data, vlan) = &got[0];
        match vlan {
            Some(id) => {
                assert_eq!(*id, 42);
                assert!(*data == plain, "untagged data differs");
            }
            None => assert!(*data == tagged(&plain, 42), "tagged data differs"),
        }
    });
}

#[test]
fn test_uplink_ignores_frames_the_host_sends_on_its_interface() {
    let ns = Netns::new();
    ns.run(|| {
        let mut up = open_uplink("a");
        let host = RawSock::open("a");
        let observer = RawSock::open("a");
        let peer = RawSock::open("b");
        let frames: Vec<Vec<u8>> = (0..10).map(|i| frame_from(SRC_A, 300, i)).collect();
        for f in &frames {
            host.send(f);
        }
        // They went out (b got them), and an ordinary socket on `a` saw them
        // leave, so only PACKET_IGNORE_OUTGOING keeps them from the uplink.
        assert_frames_eq(&peer.recv_test_frames(frames.len(), WAIT), &frames);
        assert_frames_eq(&observer.recv_test_frames(frames.len(), WAIT), &frames);
        let seen = uplink_recv(&mut up, usize::MAX, QUIET, 64);
        assert!(
            seen.is_empty(),
            "uplink received {} outgoing frames",
            seen.len()
        );
    });
}

#[test]
fn test_uplink_open_never_queues_frames_of_other_interfaces() {
    let ns = Netns::new();
    ns.veth("c", "d");
    ns.run(|| {
        let blaster = RawSock::open("d");
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // Frames keep arriving on `c` while uplinks are opened on `a`: if a
            // socket listened before its bind, some would land in its ring.
            s.spawn(|| {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    blaster.send(&frame_from([0x02, 0, 0, 0, 0, 0x0d], 60, i));
                    i = i.wrapping_add(1);
                }
            });
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for attempt in 0..20 {
                    let mut up = open_uplink("a");
                    let stray = uplink_recv(&mut up, usize::MAX, Duration::from_millis(10), 256);
                    assert!(
                        stray.is_empty(),
                        "attempt {attempt}: uplink on a got {} frames of c",
                        stray.len()
                    );
                }
            }));
            stop.store(true, Ordering::Relaxed);
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        });
    });
}

#[test]
fn test_uplink_open_errors_name_the_interface() {
    let ns = Netns::new();
    ns.run(|| {
        let cfg = |name: &str| UplinkConfig::new(name.to_string(), 1);
        let e = Uplink::open(&cfg("nope0"), MAX_FRAME).expect_err("nope0 does not exist");
        assert!(matches!(e, UplinkError::NotFound { .. }), "{e:?}");
        assert_eq!(e.ifname(), "nope0");
        assert!(e.to_string().contains("nope0"), "{e}");
        eprintln!("missing interface: {}", error_chain(&e));

        // lo exists in every namespace but is no Ethernet device.
        let e = Uplink::open(&cfg("lo"), MAX_FRAME).expect_err("lo is not Ethernet");
        assert!(matches!(e, UplinkError::Open { .. }), "{e:?}");
        assert!(
            error_chain(&e).contains("not an Ethernet device"),
            "{}",
            error_chain(&e)
        );

        let e = Uplink::open(&cfg("a"), 5).expect_err("max_frame 5 is too small");
        assert!(matches!(e, UplinkError::Open { .. }), "{e:?}");
        assert!(e.to_string().contains('a'), "{e}");
        eprintln!("bad max_frame: {}", error_chain(&e));
    });
}

/// `announce`: one RARP from the VM's MAC out of the uplink (untagged on the native
/// VLAN, tagged otherwise), and the FDB entry moves to the VM port; bad requests are
/// refused with a reason.
#[test]
fn test_switch_announce_sends_rarp_out_the_uplink_and_pins_the_fdb() {
    use vswitch::api::{Request, Response};
    use vswitch::{MacAddr, PortConfig, Switch, SwitchConfig};
    let ns = Netns::new();
    let dir = std::env::temp_dir().join(format!("accelnet-announce-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let dir2 = dir.clone();
    ns.run(move || {
        let mut vm1 = PortConfig::new(dir2.join("vm1.sock"));
        vm1.vlan = 1;
        let mut vm2 = PortConfig::new(dir2.join("vm2.sock"));
        vm2.vlan = 20;
        let sw = Switch::start(SwitchConfig {
            ports: vec![vm1, vm2],
            uplinks: vec![UplinkConfig::new("a".to_string(), 1)],
            ..SwitchConfig::default()
        })
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let peer = RawSock::open("b");
        let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let rarps = |want: usize, wait: Duration| {
            let deadline = Instant::now() + wait;
            let mut got = Vec::new();
            while got.len() < want && Instant::now() < deadline {
                if let Some((f, vlan)) = peer.recv() {
                    if f.len() >= 14 && f[12..14] == [0x80, 0x35] {
                        got.push((f, vlan));
                    }
                }
            }
            got
        };
        for (port, vlan) in [("vm1", None), ("vm2", Some(20))] {
            let r = sw.handle(&Request::Announce {
                port: port.to_string(),
                mac,
                on_attach: false,
            });
            assert_eq!(
                r,
                Response::Announced {
                    port: port.to_string(),
                    mac,
                    uplinks: vec!["a".to_string()],
                    pending: false,
                }
            );
            let got = rarps(1, WAIT);
            assert_eq!(got.len(), 1, "one RARP for {port}");
            let (f, got_vlan) = &got[0];
            assert_eq!(*got_vlan, vlan, "{port}");
            assert_eq!(&f[..6], &[0xff; 6]);
            assert_eq!(&f[6..12], &mac.0);
            // htype 1, ptype IPv4, hlen 6, plen 4, op 3 (reverse request), sha = tha = mac.
            assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 3]);
            assert_eq!(&f[22..28], &mac.0);
            assert_eq!(&f[32..38], &mac.0);
            let Response::Fdb { entries } = sw.handle(&Request::Fdb {}) else {
                panic!("fdb");
            };
            assert!(
                entries
                    .iter()
                    .any(|e| e.mac == mac && e.port == port && e.vlan == vlan.unwrap_or(1)),
                "{entries:?}"
            );
        }
        for (req, says) in [
            (
                Request::Announce {
                    port: "nosuch".into(),
                    mac,
                    on_attach: false,
                },
                "no VM port named nosuch",
            ),
            (
                Request::Announce {
                    port: "a".into(),
                    mac,
                    on_attach: true,
                },
                "no VM port named a",
            ),
            (
                Request::Announce {
                    port: "vm1".into(),
                    mac: MacAddr([0x01, 0, 0x5e, 0, 0, 1]),
                    on_attach: true,
                },
                "multicast",
            ),
        ] {
            match sw.handle(&req) {
                Response::Error { message } => assert!(message.contains(says), "{message}"),
                other => panic!("{req:?}: {other:?}"),
            }
        }
        assert!(rarps(1, QUIET).is_empty(), "refused requests send nothing");
        drop(sw);
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A VM port's allowed MAC is pinned to the port in the FDB: the guest's own
/// broadcast coming back in over the uplink (as a NIC's embedded switch floods what
/// the guest sent over its VF) does not move it, so unicast from the wire still
/// reaches the guest; `port_del` releases it; a second port cannot claim it.
#[cfg(feature = "test-utils")]
#[test]
fn test_switch_vm_allowed_mac_stays_on_its_port_when_seen_on_the_uplink() {
    use vswitch::api::{FdbEntryInfo, Request, Response};
    use vswitch::config::SwitchSettings;
    use vswitch::test_utils::TestSwitch;
    use vswitch::{MacAddr, PortConfig, SwitchConfig};
    const VM_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    let ns = Netns::new();
    ns.run(|| {
        let vm_port = |dir: &std::path::Path, name: &str| {
            let mut pc = PortConfig::new(dir.join(format!("{name}.sock")));
            pc.policy.allowed_macs = vec![MacAddr(VM_MAC)];
            pc
        };
        let ts = TestSwitch::start("pin", |dir| SwitchConfig {
            // Learned entries age out within the test; static ones never do.
            switch: SwitchSettings {
                fdb_aging_secs: 1,
                ..SwitchSettings::default()
            },
            ports: vec![vm_port(dir, "vm1")],
            uplinks: vec![UplinkConfig::new("a".to_string(), 1)],
        });
        let sw = ts.switch();
        let fdb = || match sw.handle(&Request::Fdb {}) {
            Response::Fdb { entries } => entries,
            other => panic!("fdb: {other:?}"),
        };
        let vm_entry = |entries: &[FdbEntryInfo]| {
            entries
                .iter()
                .find(|e| e.vlan == 1 && e.mac == MacAddr(VM_MAC))
                .map(|e| (e.port.clone(), e.age_secs))
        };
        assert_eq!(vm_entry(&fdb()), Some(("vm1".into(), 0)), "pinned at start");
        let mut vm = ts.connect("vm1");
        let peer = RawSock::open("b");

        // The guest's broadcast, back from the wire: flooded (to the guest too), not learned.
        let mut echo = frame_from(VM_MAC, 64, 1);
        echo[..6].copy_from_slice(&[0xff; 6]);
        peer.send(&echo);
        let got = vm.recv(WAIT).expect("the flooded broadcast");
        assert_eq!(got, echo);
        assert_eq!(vm_entry(&fdb()), Some(("vm1".into(), 0)), "not moved to a");

        // Unicast from the wire to the guest is delivered, not dropped as a hairpin.
        let mut unicast = frame_from(SRC_B, 64, 2);
        unicast[..6].copy_from_slice(&VM_MAC);
        peer.send(&unicast);
        assert_eq!(vm.recv(WAIT), Some(unicast));

        // Static: outlives the aging time (the wire station's learned entry does not).
        std::thread::sleep(Duration::from_millis(2100));
        let entries = fdb();
        assert_eq!(vm_entry(&entries), Some(("vm1".into(), 0)), "{entries:?}");
        assert!(
            !entries.iter().any(|e| e.mac == MacAddr(SRC_B)),
            "{entries:?}"
        );

        // Removing the port releases the MAC.
        drop(vm);
        let r = sw.handle(&Request::PortDel { name: "vm1".into() });
        assert_eq!(r, Response::PortDeleted { name: "vm1".into() });
        assert_eq!(vm_entry(&fdb()), None);

        // One owner per MAC and VLAN.
        match sw.handle(&Request::PortAdd {
            port: vm_port(ts.dir(), "vm2"),
        }) {
            Response::PortAdded { port } => assert_eq!(port.name, "vm2"),
            other => panic!("vm2: {other:?}"),
        }
        assert_eq!(vm_entry(&fdb()), Some(("vm2".into(), 0)));
        match sw.handle(&Request::PortAdd {
            port: vm_port(ts.dir(), "vm3"),
        }) {
            Response::Error { message } => assert_eq!(
                message,
                "port vm3: allowed MAC 52:54:00:12:34:56 on VLAN 1 belongs to port vm2 already"
            ),
            other => panic!("vm3: {other:?}"),
        }
        let Response::Ports { ports } = sw.handle(&Request::Ports {}) else {
            panic!("ports");
        };
        let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "vm2"]);
        assert!(!ts.sock("vm3").exists(), "no socket left behind");
        assert_eq!(vm_entry(&fdb()), Some(("vm2".into(), 0)));
    });
}

/// `announce` with `on_attach`: nothing goes out while the VM port has no running
/// receive ring (a migration's destination before its QEMU resumes the VM); the
/// RARP leaves the moment a frontend starts the rings, and the FDB points at the
/// port. Once they run, an `on_attach` announce goes out at once.
#[cfg(feature = "test-utils")]
#[test]
fn test_switch_announce_on_attach_waits_for_the_rings_to_start() {
    use vswitch::test_utils::TestSwitch;
    use vswitch::{MacAddr, PortConfig, Request, Response, SwitchConfig};

    let ns = Netns::new();
    ns.run(|| {
        let peer = RawSock::open("b");
        let ts = TestSwitch::start("annattach", |dir| SwitchConfig {
            ports: vec![PortConfig::new(dir.join("vm.sock"))],
            uplinks: vec![UplinkConfig::new("a", 1)],
            ..SwitchConfig::default()
        });
        let mac = MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        let rarps = |want: usize, wait: Duration| {
            let deadline = Instant::now() + wait;
            let mut got = 0;
            while got < want && Instant::now() < deadline {
                if let Some((f, _)) = peer.recv() {
                    if f.len() >= 14 && f[12..14] == [0x80, 0x35] && f[6..12] == mac.0 {
                        got += 1;
                    }
                }
            }
            got
        };
        let announce = || {
            ts.switch().handle(&Request::Announce {
                port: "vm".into(),
                mac,
                on_attach: true,
            })
        };
        assert_eq!(
            announce(),
            Response::Announced {
                port: "vm".into(),
                mac,
                uplinks: vec![],
                pending: true,
            }
        );
        assert_eq!(rarps(1, QUIET), 0, "no RARP before the rings start");
        let fdb_port = || {
            let Response::Fdb { entries } = ts.switch().handle(&Request::Fdb {}) else {
                panic!("fdb");
            };
            entries
                .iter()
                .find(|e| e.mac == mac)
                .map(|e| e.port.clone())
        };
        assert_eq!(fdb_port(), None);

        let _vm = ts.connect("vm");
        assert_eq!(rarps(1, WAIT), 1, "one RARP once the rings started");
        assert_eq!(fdb_port().as_deref(), Some("vm"));
        assert_eq!(rarps(1, QUIET), 0, "and only one");

        assert_eq!(
            announce(),
            Response::Announced {
                port: "vm".into(),
                mac,
                uplinks: vec!["a".into()],
                pending: false,
            }
        );
        assert_eq!(rarps(1, WAIT), 1, "at once while the rings run");
    });
}

/// A hold released via the uplink: what the switch held for VM port `vm` (on
/// VLAN 5) leaves through the uplink, in arrival order and tagged for VLAN 5, as
/// the guest's VF gets it from the embedded switch once the VF owns the MAC; the
/// answer counts it as redirected and the VM gets none of it.
#[cfg(feature = "test-utils")]
#[test]
fn test_switch_hold_released_via_the_uplink_sends_the_held_frames_out_of_it() {
    use vswitch::test_utils::TestSwitch;
    use vswitch::{PortConfig, Request, Response, SwitchConfig};

    let ns = Netns::new();
    ns.run(|| {
        let peer = RawSock::open("b");
        let ts = TestSwitch::start("holdup", |dir| SwitchConfig {
            ports: vec![PortConfig {
                vlan: 5,
                ..PortConfig::new(dir.join("vm.sock"))
            }],
            uplinks: vec![UplinkConfig::new("a", 1)],
            ..SwitchConfig::default()
        });
        let mut vm = ts.connect("vm");
        let hold = |hold: bool, via: Option<&str>| {
            ts.switch().handle(&Request::Hold {
                port: "vm".into(),
                hold,
                max_ms: Some(60_000),
                via: via.map(Into::into),
                on_stop: false,
            })
        };
        assert!(matches!(
            hold(true, None),
            Response::Held { holding: true, .. }
        ));
        let sent: Vec<Vec<u8>> = (0..20u32)
            .map(|i| tagged(&frame(60 + i as usize * 50, 100 + i), 5))
            .collect();
        for f in &sent {
            peer.send(f);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match hold(true, None) {
                Response::Held { held: 20, .. } => break,
                Response::Held { held, .. } if Instant::now() > deadline => {
                    panic!("{held} of 20 frames held")
                }
                Response::Held { .. } => std::thread::sleep(Duration::from_millis(5)),
                other => panic!("hold: {other:?}"),
            }
        }
        // b's own copies of what it sent (AF_PACKET sees outgoing frames too).
        let _ = peer.recv_test_frames(usize::MAX, QUIET);

        let r = hold(false, Some("vm"));
        assert!(
            matches!(&r, Response::Error { message } if message.contains("no uplink named vm")),
            "{r:?}"
        );
        match hold(false, Some("a")) {
            Response::Held {
                holding: false,
                held: 20,
                released: 20,
                redirected: 20,
                ..
            } => {}
            other => panic!("release via a: {other:?}"),
        }
        let got = peer.recv_test_frames(20, WAIT);
        assert_eq!(got.len(), 20, "frames back out of the uplink");
        for (i, ((data, vlan), want)) in got.iter().zip(&sent).enumerate() {
            assert_eq!(*vlan, Some(5), "frame {i}: VLAN");
            // The kernel hands the tag over as metadata.
            let untagged: Vec<u8> = want[..12].iter().chain(&want[16..]).copied().collect();
            assert_eq!(data, &untagged, "frame {i}: bytes or order");
        }
        let to_vm: Vec<Vec<u8>> = vm
            .recv_all(QUIET)
            .into_iter()
            .filter(|f| is_test_frame(f))
            .collect();
        assert!(
            to_vm.is_empty(),
            "the VM got {} released frames",
            to_vm.len()
        );
        assert_eq!(ts.stats("vm").drops.values().sum::<u64>(), 0);
    });
}
