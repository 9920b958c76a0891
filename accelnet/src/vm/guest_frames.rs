//! The guest's own frames over a lab stand-in's tap: how the host sees that the
//! guest uses a freshly plugged primary.
//!
//! The tap's receive counter is not enough: QEMU itself writes to the tap. After
//! an incoming migration it announces every NIC, the just-plugged e1000e too,
//! with RARPs (seen 3-4 of them, 50-350 ms apart, from ~300 ms after the plug)
//! while the guest needs ~800 ms to bring the NIC up; taking the first RARP as
//! the guest pinned its MAC to a NIC still dropping frames. So this counts, on
//! an AF_PACKET socket, only frames that came in from QEMU (not the ones the
//! host sends to the guest) and are not RARP.

use std::ffi::CString;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::{c_int, c_void, socklen_t};

/// Ethertype of RARP, what QEMU's self-announce sends.
const ETH_P_RARP: u32 = 0x8035;
/// Bytes of each frame the filter passes up: only the count matters.
const SNAP: u32 = 64;

/// Counts the guest's frames over one tap from when it was opened.
#[derive(Debug)]
pub(super) struct GuestFrames {
    ifname: String,
    fd: OwnedFd,
    seen: u64,
}

impl GuestFrames {
    /// Opens the watch on `ifname` (in this network namespace).
    pub(super) fn open(ifname: &str) -> io::Result<GuestFrames> {
        let ctx = |step: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("watching {ifname} ({step}): {e}"))
        };
        let name = CString::new(ifname).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("interface {ifname:?}: {e}"),
            )
        })?;
        // SAFETY: if_nametoindex reads the NUL-terminated name only.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(ctx("if_nametoindex", io::Error::last_os_error()));
        }
        let ifindex = c_int::try_from(index).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{ifname}: index {index}"),
            )
        })?;
        // Protocol 0: the socket takes no frame until the bind below, after the
        // filter is in place, so none slips past it.
        // SAFETY: plain socket(2); the fd is owned right below.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(ctx("socket", io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut program = filter();
        let prog = libc::sock_fprog {
            len: u16::try_from(program.len()).expect("a short program"),
            filter: program.as_mut_ptr(),
        };
        let prog_len =
            socklen_t::try_from(size_of::<libc::sock_fprog>()).expect("sock_fprog is small");
        // SAFETY: `prog` points at `program`, alive for the call; the kernel copies it.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&raw const prog).cast::<c_void>(),
                prog_len,
            )
        };
        if r != 0 {
            return Err(ctx("SO_ATTACH_FILTER", io::Error::last_os_error()));
        }
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).expect("AF_PACKET fits");
        sll.sll_protocol = u16::try_from(libc::ETH_P_ALL)
            .expect("ETH_P_ALL fits")
            .to_be();
        sll.sll_ifindex = ifindex;
        let sll_len =
            socklen_t::try_from(size_of::<libc::sockaddr_ll>()).expect("sockaddr_ll is small");
        // SAFETY: `sll` is an initialized sockaddr_ll of the length passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast::<libc::sockaddr>(),
                sll_len,
            )
        };
        if r != 0 {
            return Err(ctx("bind", io::Error::last_os_error()));
        }
        Ok(GuestFrames {
            ifname: ifname.to_string(),
            fd,
            seen: 0,
        })
    }

    /// The guest's frames seen since [`GuestFrames::open`] (reads what is queued).
    pub(super) fn seen(&mut self) -> io::Result<u64> {
        let mut buf = [0u8; SNAP as usize];
        loop {
            // SAFETY: `buf` is writable for its length; the fd is ours.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast::<c_void>(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                self.seen += 1;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(self.seen),
                io::ErrorKind::Interrupted => {}
                _ => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("watching {}: {e}", self.ifname),
                    ))
                }
            }
        }
    }
}

/// Classic BPF: pass (the first [`SNAP`] bytes of) a frame unless the host sent
/// it (`PACKET_OUTGOING`: the tap's transmit, towards the guest) or it is a RARP.
fn filter() -> Vec<libc::sock_filter> {
    let op = |code: u32| u16::try_from(code).expect("BPF opcodes are 16-bit");
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: op(code),
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K),
        jt,
        jf,
        k,
    };
    // The ancillary load of the packet type: SKF_AD_OFF + SKF_AD_PKTTYPE, as the
    // unsigned k the kernel reads.
    let pkttype = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE).cast_unsigned();
    vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, pkttype),
        jeq(u32::from(libc::PACKET_OUTGOING), 3, 0),
        stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 12),
        jeq(ETH_P_RARP, 1, 0),
        stmt(libc::BPF_RET | libc::BPF_K, SNAP),
        stmt(libc::BPF_RET | libc::BPF_K, 0),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Runs `sh -c script` (in the calling thread's network namespace); panics
    /// unless it succeeds.
    fn sh(script: &str) {
        let out = Command::new("sh")
            .args(["-c", script])
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Sends `frame` out of `ifname` on a raw packet socket.
    fn send(ifname: &str, frame: &[u8]) {
        let name = CString::new(ifname).expect("name");
        // SAFETY: if_nametoindex reads the NUL-terminated name only.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no {ifname}");
        // SAFETY: plain socket(2); the fd is owned right below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0, "{}", io::Error::last_os_error());
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).expect("fits");
        sll.sll_ifindex = c_int::try_from(index).expect("index");
        sll.sll_halen = 6;
        let len = socklen_t::try_from(size_of::<libc::sockaddr_ll>()).expect("small");
        // SAFETY: `frame` and `sll` are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast::<c_void>(),
                frame.len(),
                0,
                (&raw const sll).cast::<libc::sockaddr>(),
                len,
            )
        };
        assert_eq!(
            n,
            isize::try_from(frame.len()).expect("len"),
            "{}",
            io::Error::last_os_error()
        );
    }

    fn frame(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x52, 0x54, 0x00, 0x77, 0x00, 0x01]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.resize(60, 0);
        f
    }

    /// Waits until `w` has seen `want` frames (up to 5 s) and returns its count
    /// after another 200 ms, so that one too many would show.
    fn settled(w: &mut GuestFrames, want: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.seen().expect("seen") < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        w.seen().expect("seen")
    }

    /// On a veth pair in a network namespace of this test's thread: frames that
    /// come in on the watched end count, RARPs and frames sent out of it do not.
    /// Needs root (CI is root); fails without it.
    #[test]
    fn counts_incoming_frames_but_not_rarp_or_outgoing() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(root, "needs root: a network namespace and packet sockets");
        // SAFETY: unshare(2) moves only this thread (the test's own) to a new
        // network namespace; nothing else runs on it.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare: {}", io::Error::last_os_error());
        // No IPv6 autoconfiguration frames of the kernel's own in the counts.
        sh(
            "sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1 \
            && ip link add tapw type veth peer name guestw \
            && ip link set tapw up && ip link set guestw up",
        );
        let mut w = GuestFrames::open("tapw").expect("open");
        assert_eq!(w.seen().expect("seen"), 0);
        // The guest's side sends: IPv4, ARP count; a RARP does not.
        send("guestw", &frame(0x0800));
        send("guestw", &frame(0x8035));
        send("guestw", &frame(0x0806));
        assert_eq!(settled(&mut w, 2), 2);
        // What the host sends towards the guest does not count (it would be in
        // before the guest's next frame).
        send("tapw", &frame(0x0800));
        send("tapw", &frame(0x0806));
        send("guestw", &frame(0x86dd));
        assert_eq!(settled(&mut w, 3), 3);
        let e = GuestFrames::open("nosuchtap").expect_err("no such interface");
        assert!(
            e.to_string()
                .contains("watching nosuchtap (if_nametoindex)"),
            "{e}"
        );
    }

    /// The jumps land where meant: both drops on the last instruction, the
    /// accept right before it.
    #[test]
    fn filter_jumps_to_its_returns() {
        let f = filter();
        let ret = u16::try_from(libc::BPF_RET | libc::BPF_K).expect("16-bit");
        assert_eq!(f.len(), 6);
        for (i, ins) in f.iter().enumerate() {
            if ins.jt != 0 {
                let to = i + 1 + usize::from(ins.jt);
                assert_eq!(f[to].code, ret, "jump at {i}");
                assert_eq!(f[to].k, 0, "jump at {i} drops");
            }
        }
        assert_eq!(f[4].code, ret);
        assert_eq!(f[4].k, SNAP);
    }
}
