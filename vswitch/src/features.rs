//! virtio-net and vhost-user feature bits the switch offers, and device limits.
//!
//! One place for every bit, so the port code, the data path and the offload code
//! agree on what a frontend may have acknowledged.

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STANDBY,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// `VHOST_USER_F_PROTOCOL_FEATURES` (bit 30), absent from virtio-bindings.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VHOST_F_LOG_ALL` (bit 26): the frontend asks for dirty-page logging (migration).
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// Checksum offload from the guest (`CSUM`): TX frames may carry a partial checksum.
pub const F_CSUM: u64 = 1 << VIRTIO_NET_F_CSUM;
/// The guest accepts frames with a partial checksum (`GUEST_CSUM`).
pub const F_GUEST_CSUM: u64 = 1 << VIRTIO_NET_F_GUEST_CSUM;
/// The guest accepts TCPv4 GSO frames.
pub const F_GUEST_TSO4: u64 = 1 << VIRTIO_NET_F_GUEST_TSO4;
/// The guest accepts TCPv6 GSO frames.
pub const F_GUEST_TSO6: u64 = 1 << VIRTIO_NET_F_GUEST_TSO6;
/// The guest accepts GSO frames with ECN set.
pub const F_GUEST_ECN: u64 = 1 << VIRTIO_NET_F_GUEST_ECN;
/// The guest may send TCPv4 GSO frames.
pub const F_HOST_TSO4: u64 = 1 << VIRTIO_NET_F_HOST_TSO4;
/// The guest may send TCPv6 GSO frames.
pub const F_HOST_TSO6: u64 = 1 << VIRTIO_NET_F_HOST_TSO6;
/// The guest may send GSO frames with ECN set.
pub const F_HOST_ECN: u64 = 1 << VIRTIO_NET_F_HOST_ECN;
/// Merged receive buffers.
pub const F_MRG_RXBUF: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
/// The MTU config field (QEMU fills it from `host_mtu`).
pub const F_MTU: u64 = 1 << VIRTIO_NET_F_MTU;
/// The guest announces itself on request (after migration).
pub const F_GUEST_ANNOUNCE: u64 = 1 << VIRTIO_NET_F_GUEST_ANNOUNCE;
/// More than one queue pair.
pub const F_MQ: u64 = 1 << VIRTIO_NET_F_MQ;
/// Failover standby: the guest pairs this device with a VF.
pub const F_STANDBY: u64 = 1 << VIRTIO_NET_F_STANDBY;
/// Event index notification suppression.
pub const F_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
/// virtio 1.0.
pub const F_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;

/// Offload bits a guest-to-guest frame may rely on.
pub const OFFLOAD_FEATURES: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_ECN;

/// virtio-net features every VM port offers (offloads are added per port unless
/// disabled). Never RARP/NET_MTU/STATUS protocol features: vhost 0.18 has no
/// handlers for them and would drop the connection.
pub const BASE_FEATURES: u64 = F_VERSION_1
    | F_MRG_RXBUF
    | F_EVENT_IDX
    | F_STANDBY
    | F_MTU
    | F_MQ
    | F_GUEST_ANNOUNCE
    | VHOST_F_LOG_ALL
    | VHOST_USER_F_PROTOCOL_FEATURES;

/// vhost-user protocol features every VM port offers.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::LOG_SHMFD
}

/// Most queue pairs a port serves.
pub const MAX_QUEUE_PAIRS: usize = 8;
/// Largest queue size a frontend may configure.
pub const MAX_QUEUE_SIZE: usize = 1024;
/// Largest frame with GSO (64 KiB of payload plus headers), Ethernet header included.
pub const MAX_GSO_FRAME: usize = 65_535 + 14 + 4;
