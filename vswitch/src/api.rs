//! Control API: the JSON messages spoken on the switch's control socket, and the
//! counters they report. One request per line, one response per line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::wire::MacAddr;

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// List the ports.
    Ports {},
    /// Dump the forwarding database.
    Fdb {},
    /// Per-port counters.
    Stats {},
    /// Add a VM port at run time (same fields as a `[[port]]` table).
    PortAdd {
        /// The port.
        port: crate::config::PortConfig,
    },
    /// Replace a port's policy (VM port or uplink).
    PortSet {
        /// Port name.
        name: String,
        /// The new policy (`{}` removes every restriction).
        policy: crate::policy::PolicyConfig,
    },
    /// Remove a VM port: close its connections, forget its FDB entries, remove its
    /// socket (server mode).
    PortDel {
        /// Port name.
        name: String,
    },
    /// Tell the wire that `mac` now lives behind VM port `port`: send a RARP from
    /// `mac` out of every uplink (as QEMU's self-announce does, tagged with the port's
    /// VLAN where the uplink needs it), and point the FDB entry at the port (one of
    /// the port's allowed MACs is pinned there already; a MAC another port's
    /// `allowed_macs` pins is refused). Used when a VM's traffic moves from its
    /// direct path (VF) to the switch.
    ///
    /// `on_attach: true` defers it to the moment the port's receive rings start:
    /// on a live migration's destination that is when QEMU resumes the VM (vhost
    /// 0.18 has no `VHOST_USER_SEND_RARP`, which QEMU would send then). If they run
    /// already, it is sent at once; the answer says `pending` otherwise.
    Announce {
        /// VM port name.
        port: String,
        /// The VM's MAC.
        mac: MacAddr,
        /// Wait for the port's receive rings to start.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        on_attach: bool,
    },
    /// Hold, or release, the frames the switch would write into VM port `port`'s
    /// receive rings. Used while the guest's `net_failover` still has the VF as its
    /// primary (it drops whatever arrives on the standby until the VF is gone).
    ///
    /// `hold: true` starts holding (up to 4096 frames and 16 MiB; more are dropped
    /// as `hold_overflow`), or renews the deadline of a hold under way. The hold ends
    /// by itself after `max_ms` (default 5000, at most 60000), as if released.
    /// `hold: false` releases: the held frames are delivered in arrival order, and
    /// frames arriving meanwhile queue behind them, then delivery is back to
    /// normal. Releasing a port that does not hold is not an error.
    ///
    /// `hold: false, via: UPLINK` releases out of that uplink instead (tagged for
    /// the port's VLAN where the uplink needs it): used when the guest moves onto
    /// its VF, whose MAC the embedded switch now owns, so what was held for the
    /// standby reaches the guest over the primary (a NIC loops PF→VF frames back).
    ///
    /// `hold: true, on_stop: true` only arms it: the hold starts by itself (for
    /// `max_ms` from then) when a frame for the guest finds its receive rings
    /// stopped, i.e. when the VMM pauses the VM for a live migration's switch-over;
    /// those frames are then taken with [`Request::HoldTake`] and delivered at the
    /// destination with [`Request::Inject`] instead of being dropped. A release or
    /// a plain hold disarms it.
    Hold {
        /// VM port name.
        port: String,
        /// Start (or renew) the hold, or release it.
        hold: bool,
        /// With `hold: true`: milliseconds until the hold ends by itself.
        #[serde(default)]
        max_ms: Option<u64>,
        /// With `hold: false`: the uplink to release the held frames out of.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        via: Option<String>,
        /// With `hold: true`: arm it to start when the guest's receive rings stop.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        on_stop: bool,
    },
    /// Take frames held for VM port `port` out of the switch (oldest first, up to
    /// `max_bytes` of frame data, at least one frame), to be delivered elsewhere.
    /// The hold ends once nothing is left. Answered with [`Response::HeldFrames`].
    HoldTake {
        /// VM port name.
        port: String,
        /// Most frame bytes in the answer (default 256 KiB).
        #[serde(default)]
        max_bytes: Option<usize>,
    },
    /// Deliver frames to VM port `port`'s guest, in order, behind any frames the
    /// port holds: what another switch held for this VM during its migration.
    /// Answered with [`Response::Injected`].
    Inject {
        /// VM port name.
        port: String,
        /// The frames, as [`Response::HeldFrames`] gave them.
        frames: Vec<WireFrame>,
    },
}

/// A frame in the control protocol: its bytes in hex and, if it still needs
/// checksum or segmentation work, the virtio-net header describing it (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireFrame {
    /// The Ethernet frame, hex.
    pub frame: String,
    /// The 12-byte virtio-net header of its pending offload, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnet: Option<String>,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Answer to [`Request::Ports`].
    Ports {
        /// Every port, in id order.
        ports: Vec<PortInfo>,
    },
    /// Answer to [`Request::Fdb`].
    Fdb {
        /// Live entries, sorted by VLAN then MAC.
        entries: Vec<FdbEntryInfo>,
    },
    /// Answer to [`Request::Stats`].
    Stats {
        /// Counters of every port, in id order.
        ports: Vec<PortStats>,
    },
    /// Answer to [`Request::PortAdd`].
    PortAdded {
        /// The new port.
        port: Box<PortInfo>,
    },
    /// Answer to [`Request::PortSet`].
    PortUpdated {
        /// Name of the port.
        name: String,
    },
    /// Answer to [`Request::PortDel`].
    PortDeleted {
        /// Name of the removed port.
        name: String,
    },
    /// Answer to [`Request::Announce`].
    Announced {
        /// VM port name.
        port: String,
        /// The MAC announced.
        mac: MacAddr,
        /// Uplinks the RARP went out of.
        uplinks: Vec<String>,
        /// Deferred (`on_attach`) until the port's receive rings start.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        pending: bool,
    },
    /// Answer to [`Request::Hold`].
    ///
    /// For `hold: false`, sent once the port's forwarding thread delivered the
    /// held frames (or after at most one second, with `holding` still true, if the
    /// drain had not finished by then).
    Held {
        /// VM port name.
        port: String,
        /// Frames are still held or being delivered from the hold.
        holding: bool,
        /// Frames held since the hold started (0 if the port was not holding).
        held: u64,
        /// Held frames delivered so far (0 if the port was not holding).
        released: u64,
        /// Of those, frames sent out of the `via` uplink instead of to the guest.
        #[serde(default)]
        redirected: u64,
    },
    /// Answer to [`Request::HoldTake`].
    HeldFrames {
        /// VM port name.
        port: String,
        /// The frames taken, oldest first.
        frames: Vec<WireFrame>,
        /// More frames are held (take again).
        more: bool,
        /// Frames held since the hold started.
        held: u64,
    },
    /// Answer to [`Request::Inject`].
    Injected {
        /// VM port name.
        port: String,
        /// Frames queued for the guest.
        queued: u64,
        /// Frames that did not fit the port's queue (counted as `hold_overflow`).
        dropped: u64,
    },
    /// The request could not be served.
    Error {
        /// What was wrong with it.
        message: String,
    },
}

/// What kind of port this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortKind {
    /// A VM's virtio-net device, served over a vhost-user socket.
    VhostUser,
    /// A host network interface reached through AF_PACKET.
    Uplink,
}

/// One port as listed by [`Request::Ports`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// Switch-local port number.
    pub id: u16,
    /// Port name (socket file stem or interface name).
    pub name: String,
    /// Port kind.
    pub kind: PortKind,
    /// Socket path (vhost-user) or interface name (uplink).
    pub path: String,
    /// Access VLAN of a VM port, native (untagged) VLAN of an uplink.
    pub vlan: u16,
    /// A frontend is connected and its rings are running (always true for an up uplink).
    pub connected: bool,
    /// virtio feature bits the frontend acknowledged (0 for an uplink).
    pub acked_features: u64,
    /// The port's policy (empty: the defaults).
    #[serde(default)]
    pub policy: crate::policy::PolicyConfig,
}

/// One forwarding database entry as listed by [`Request::Fdb`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntryInfo {
    /// VLAN the address was learned on.
    pub vlan: u16,
    /// Learned source MAC.
    pub mac: MacAddr,
    /// Port name the MAC lives behind.
    pub port: String,
    /// Seconds since the entry was last refreshed.
    pub age_secs: u32,
}

/// Counters of one port as reported by [`Request::Stats`].
///
/// Directions are the switch's: `rx` = frames the switch received from the port
/// (a guest's transmissions), `tx` = frames the switch delivered to the port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    /// Port name.
    pub name: String,
    /// Frames received from the port.
    pub rx_packets: u64,
    /// Bytes received from the port (Ethernet frame, no virtio header).
    pub rx_bytes: u64,
    /// Frames delivered to the port.
    pub tx_packets: u64,
    /// Bytes delivered to the port.
    pub tx_bytes: u64,
    /// Dropped frames and rejected inputs by reason (every reason listed, zero or not).
    pub drops: BTreeMap<String, u64>,
    /// Per queue pair counters (VM ports; empty for uplinks), in queue order.
    #[serde(default)]
    pub queues: Vec<QueueStats>,
}

/// Counters of one queue pair of a VM port (same directions as [`PortStats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Queue pair index (pair `n` is RX queue `2n`, TX queue `2n+1`).
    pub queue: u16,
    /// Frames taken from the TX queue.
    pub rx_packets: u64,
    /// Bytes taken from the TX queue.
    pub rx_bytes: u64,
    /// Frames written into the RX queue.
    pub tx_packets: u64,
    /// Bytes written into the RX queue.
    pub tx_bytes: u64,
}

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal: $doc:literal),+ $(,)?) => {
        /// Why a frame (or a guest request) was dropped. Every drop is counted under one of these.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum DropReason { $(#[doc = $doc] $variant),+ }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant),+];
            /// The reason's name in the API and logs.
            pub fn as_str(self) -> &'static str {
                match self { $(DropReason::$variant => $name),+ }
            }
        }
    };
}

drop_reasons! {
    BadDescriptor => "bad_descriptor": "A descriptor chain that breaks the virtio rules (wrong direction, index out of range, too many segments, zero length).",
    BadAddress => "bad_address": "A descriptor pointing outside guest memory.",
    DescriptorLoop => "descriptor_loop": "A descriptor chain longer than the queue: a loop.",
    RuntFrame => "runt_frame": "A frame shorter than an Ethernet header.",
    OversizeFrame => "oversize_frame": "A frame longer than the MTU allows.",
    NoRxBuffer => "no_rx_buffer": "The destination had no receive buffer (ring full or not running).",
    RxBufferTooSmall => "rx_buffer_too_small": "The destination's receive buffers could not hold the frame.",
    VlanMismatch => "vlan_mismatch": "A tagged frame on an access port, or a VLAN the port does not carry.",
    InvalidSource => "invalid_source": "A multicast or all-zero source MAC.",
    UplinkTxError => "uplink_tx_error": "The uplink interface refused the frame.",
    RingError => "ring_error": "A ring whose addresses lie outside guest memory; the queue was stopped.",
    ProtocolError => "protocol_error": "A vhost-user message the switch rejected; the connection was closed.",
    SpoofedSource => "spoofed_source": "A source MAC the port's policy does not allow (anti-spoofing).",
    VlanNotAllowed => "vlan_not_allowed": "A VLAN outside the port's access VLAN or trunk list.",
    IngressRateLimit => "ingress_rate_limit": "Over the port's ingress rate limit (packets or bytes per second).",
    EgressRateLimit => "egress_rate_limit": "Over the port's egress rate limit (packets or bytes per second).",
    FdbLimit => "fdb_limit": "A new source MAC beyond the port's FDB entry limit.",
    BadOffload => "bad_offload": "A virtio-net header whose checksum or segmentation fields do not fit the frame.",
    HoldOverflow => "hold_overflow": "A frame for a VM port whose receive direction is held, beyond the hold's frame or byte limit.",
}

/// Number of drop reasons.
pub const DROP_REASONS: usize = DropReason::ALL.len();

/// Live counters of one port, updated by forwarding threads once per batch.
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames received from the port.
    pub rx_packets: AtomicU64,
    /// Bytes received from the port.
    pub rx_bytes: AtomicU64,
    /// Frames delivered to the port.
    pub tx_packets: AtomicU64,
    /// Bytes delivered to the port.
    pub tx_bytes: AtomicU64,
    /// Drops, indexed by `DropReason as usize`.
    pub drops: [AtomicU64; DROP_REASONS],
    /// Per queue pair counters.
    pub queues: [QueueCounters; crate::features::MAX_QUEUE_PAIRS],
    /// Queue pairs in use (reported), set when a frontend's rings start.
    pub queue_pairs: std::sync::atomic::AtomicUsize,
}

/// Live counters of one queue pair.
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// Frames taken from the TX queue.
    pub rx_packets: AtomicU64,
    /// Bytes taken from the TX queue.
    pub rx_bytes: AtomicU64,
    /// Frames written into the RX queue.
    pub tx_packets: AtomicU64,
    /// Bytes written into the RX queue.
    pub tx_bytes: AtomicU64,
}

impl PortCounters {
    /// Counts `n` drops for `reason`.
    pub fn drop(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Current drop count for `reason`.
    pub fn drops_for(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self, name: &str) -> PortStats {
        PortStats {
            name: name.to_string(),
            rx_packets: self.rx_packets.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            tx_packets: self.tx_packets.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), self.drops_for(*r)))
                .collect(),
            queues: self
                .queues
                .iter()
                .take(self.queue_pairs.load(Ordering::Relaxed))
                .enumerate()
                .map(|(i, q)| QueueStats {
                    queue: u16::try_from(i).unwrap_or(u16::MAX),
                    rx_packets: q.rx_packets.load(Ordering::Relaxed),
                    rx_bytes: q.rx_bytes.load(Ordering::Relaxed),
                    tx_packets: q.tx_packets.load(Ordering::Relaxed),
                    tx_bytes: q.tx_bytes.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_request_unknown_fields_rejected() {
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"request":"ports"}"#).unwrap(),
            Request::Ports {}
        );
        assert!(serde_json::from_str::<Request>(r#"{"request":"ports","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"request":"reboot"}"#).is_err());
    }

    #[test]
    fn test_hold_request_and_answer_json() {
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"request":"hold","port":"vm1","hold":true}"#)
                .unwrap(),
            Request::Hold {
                port: "vm1".into(),
                hold: true,
                max_ms: None,
                via: None,
                on_stop: false,
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(
                r#"{"request":"hold","port":"vm1","hold":true,"max_ms":200}"#
            )
            .unwrap(),
            Request::Hold {
                port: "vm1".into(),
                hold: true,
                max_ms: Some(200),
                via: None,
                on_stop: false,
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(
                r#"{"request":"hold","port":"vm1","hold":true,"max_ms":9000,"on_stop":true}"#
            )
            .unwrap(),
            Request::Hold {
                port: "vm1".into(),
                hold: true,
                max_ms: Some(9000),
                via: None,
                on_stop: true,
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"request":"hold_take","port":"vm1"}"#).unwrap(),
            Request::HoldTake {
                port: "vm1".into(),
                max_bytes: None,
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(
                r#"{"request":"inject","port":"vm1","frames":[{"frame":"00ff","vnet":"01"}]}"#
            )
            .unwrap(),
            Request::Inject {
                port: "vm1".into(),
                frames: vec![WireFrame {
                    frame: "00ff".into(),
                    vnet: Some("01".into()),
                }],
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(
                r#"{"request":"hold","port":"vm1","hold":false,"via":"pf0"}"#
            )
            .unwrap(),
            Request::Hold {
                port: "vm1".into(),
                hold: false,
                max_ms: None,
                via: Some("pf0".into()),
                on_stop: false,
            }
        );
        let r = Response::Held {
            port: "vm1".into(),
            holding: false,
            held: 3,
            released: 3,
            redirected: 2,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"response":"held","port":"vm1","holding":false,"held":3,"released":3,"redirected":2}"#
        );
        // An older switch's answer has no `redirected`.
        assert!(matches!(
            serde_json::from_str::<Response>(
                r#"{"response":"held","port":"vm1","holding":false,"held":1,"released":1}"#
            ),
            Ok(Response::Held { redirected: 0, .. })
        ));
        assert_eq!(DropReason::HoldOverflow.as_str(), "hold_overflow");
    }

    #[test]
    fn test_counters_snapshot_lists_every_reason() {
        let c = PortCounters::default();
        c.drop(DropReason::RuntFrame, 2);
        let s = c.snapshot("p");
        assert_eq!(s.drops.len(), DROP_REASONS);
        assert_eq!(s.drops["runt_frame"], 2);
    }
}
