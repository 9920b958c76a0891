//! Uplink ports: a host interface (veth, tap or NIC) reached through an AF_PACKET
//! socket with TPACKET_V3 RX and TX rings.
//!
//! A forwarding thread polls [`Uplink::rx_burst`] (or waits for [`Uplink::fd`]
//! to become readable) and writes outgoing frames straight into the kernel's TX
//! ring: [`Uplink::tx_slot`], copy the frame in, [`Uplink::tx_commit`], and one
//! [`Uplink::tx_flush`] per batch.
//!
//! What the rings see on the wire:
//! - The kernel takes the outer 802.1Q tag off every received frame before
//!   AF_PACKET sees it, whatever the driver does; it comes back in
//!   [`RxFrame::vlan`] and `data` starts untagged. Frames with an 802.1ad outer
//!   tag are skipped ([`RingStats::rx_unsupported_tag`]).
//! - Frames the host itself transmits on the interface are not received.
//! - Received frames can exceed the MTU if the interface aggregates (GRO/LRO) or
//!   the sending host hands over unsegmented TCP (veth, tap); the caller checks
//!   lengths. RX blocks are at least 128 KiB, so a 64 KiB super-frame fits;
//!   longer frames are skipped ([`RingStats::rx_truncated`]).
//! - The RX ring is 4 MiB in 64 KiB blocks the kernel hands over when full or
//!   1 ms after their first frame: under light load each block carries about
//!   1 ms of traffic, so the reader may stall up to ~64 ms before frames drop
//!   ([`Uplink::kernel_drops`]).
//! - The kernel drops transmitted frames longer than the interface's MTU plus
//!   its Ethernet header (plus 4 bytes when tagged) without telling us.

use std::io;
use std::os::fd::RawFd;

use crate::config::UplinkConfig;
use crate::sys::packet::PacketSocket;

pub use crate::sys::packet::{RingStats, RxFrame};

/// Why an uplink could not be opened. Every variant names the interface.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// There is no such interface in the switch's network namespace.
    #[error("uplink interface {ifname} not found")]
    NotFound {
        /// Interface name.
        ifname: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The switch may not open AF_PACKET sockets.
    #[error("no permission to open uplink {ifname}: the switch needs CAP_NET_RAW")]
    PermissionDenied {
        /// Interface name.
        ifname: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Any other failure setting up the socket or its rings.
    #[error("cannot open uplink {ifname}")]
    Open {
        /// Interface name.
        ifname: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl UplinkError {
    /// The interface the error is about.
    pub fn ifname(&self) -> &str {
        match self {
            UplinkError::NotFound { ifname, .. }
            | UplinkError::PermissionDenied { ifname, .. }
            | UplinkError::Open { ifname, .. } => ifname,
        }
    }
}

/// An open uplink: one host interface in promiscuous mode.
#[derive(Debug)]
pub struct Uplink {
    name: String,
    native_vlan: u16,
    max_frame: usize,
    mtu: u16,
    sock: PacketSocket,
}

impl Uplink {
    /// Opens the interface `cfg.ifname` (in the calling thread's network
    /// namespace) for frames of up to `max_frame` bytes, Ethernet header included
    /// (see [`crate::SwitchConfig::max_frame_len`]).
    pub fn open(cfg: &UplinkConfig, max_frame: usize) -> Result<Uplink, UplinkError> {
        let ifname = cfg.ifname.clone();
        let sock =
            PacketSocket::open(&ifname, max_frame).map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => UplinkError::NotFound {
                    ifname: ifname.clone(),
                    source,
                },
                io::ErrorKind::PermissionDenied => UplinkError::PermissionDenied {
                    ifname: ifname.clone(),
                    source,
                },
                _ => UplinkError::Open {
                    ifname: ifname.clone(),
                    source,
                },
            })?;
        // The interface's own MTU sizes the segments of super-frames it delivers.
        let mtu = std::fs::read_to_string(format!("/sys/class/net/{ifname}/mtu"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(1500);
        Ok(Uplink {
            name: ifname,
            native_vlan: cfg.native_vlan,
            max_frame,
            mtu,
            sock,
        })
    }

    /// Interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// VLAN carried untagged on the wire.
    pub fn native_vlan(&self) -> u16 {
        self.native_vlan
    }

    /// The `max_frame` the uplink was opened with.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The interface's MTU when it was opened.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Descriptor to wait on: readable when received frames are ready, writable
    /// when a TX slot is free, EPOLLERR while an error is pending
    /// ([`Uplink::take_error`] clears it). Owned by the uplink; do not close it.
    pub fn fd(&self) -> RawFd {
        self.sock.fd()
    }

    /// Calls `f` for up to `max` received frames in arrival order and returns how
    /// many it visited. Resumes where the previous call stopped. The kernel
    /// publishes frames a ring block at a time, when the block is full or 1 ms
    /// after its first frame.
    pub fn rx_burst(&mut self, max: usize, f: impl FnMut(RxFrame<'_>)) -> usize {
        self.sock.rx_burst(max, f)
    }

    /// Where to write the next frame to send: a buffer in the kernel's TX ring of
    /// at least `max_frame` bytes, or `None` while the ring is full (wait for
    /// [`Uplink::fd`] to become writable, or flush and retry later). Commit the
    /// frame with [`Uplink::tx_commit`].
    pub fn tx_slot(&mut self) -> Option<&mut [u8]> {
        self.sock.tx_slot()
    }

    /// Queues the first `len` bytes of the slot [`Uplink::tx_slot`] returned.
    /// Nothing is sent before [`Uplink::tx_flush`]. A `len` shorter than an
    /// Ethernet header or longer than the slot frees the slot unsent and counts
    /// in [`RingStats::tx_bad_length`].
    pub fn tx_commit(&mut self, len: usize) {
        self.sock.tx_commit(len);
    }

    /// Sends every committed frame, without blocking. Congestion is not an error
    /// (the frames stay queued for the next flush); an error such as ENETDOWN is
    /// returned and the frames also stay queued.
    pub fn tx_flush(&mut self) -> io::Result<()> {
        self.sock.tx_flush()
    }

    /// Frame bytes a TX slot holds (at least `max_frame`).
    pub fn tx_capacity(&self) -> usize {
        self.sock.tx_capacity()
    }

    /// Frames the kernel dropped because the RX ring was full, since the uplink
    /// was opened. Makes a system call.
    pub fn kernel_drops(&mut self) -> u64 {
        self.sock.kernel_drops()
    }

    /// Frames and slots the rings skipped, since the uplink was opened.
    pub fn ring_stats(&self) -> RingStats {
        self.sock.stats()
    }

    /// Takes the socket's pending error, e.g. ENETDOWN after the interface went
    /// down (receiving resumes by itself when it comes back up).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.sock.take_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_uplink_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Uplink>();
    }

    #[test]
    fn test_uplink_error_missing_interface_names_it_once() {
        let cfg = UplinkConfig::new("accelnet-nope7".to_string(), 1);
        let e = Uplink::open(&cfg, 1518).expect_err("no such interface");
        assert!(matches!(e, UplinkError::NotFound { .. }), "{e:?}");
        assert_eq!(e.ifname(), "accelnet-nope7");
        assert_eq!(e.to_string(), "uplink interface accelnet-nope7 not found");
        let source = std::error::Error::source(&e).expect("has a cause");
        assert!(source.to_string().contains("accelnet-nope7"), "{source}");
    }

    #[test]
    fn test_uplink_error_bad_max_frame_is_open_error() {
        let cfg = UplinkConfig::new("lo".to_string(), 1);
        let e = Uplink::open(&cfg, 1).expect_err("max_frame 1");
        assert!(matches!(e, UplinkError::Open { .. }), "{e:?}");
        assert_eq!(e.to_string(), "cannot open uplink lo");
    }
}
