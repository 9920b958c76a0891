//! virtio-net offloads: partial checksums and TCP segmentation (TSO) between ports.
//!
//! A guest that acked `CSUM` / `HOST_TSO4` / `HOST_TSO6` may transmit frames whose
//! TCP/UDP checksum is only partial ([`FLAG_NEEDS_CSUM`]) and TCP frames of up to
//! 64 KiB that still have to be cut into MSS-sized segments ([`GSO_TCPV4`],
//! [`GSO_TCPV6`]). A destination guest that acked the matching `GUEST_*` bits takes
//! such a frame as it is; every other destination (a guest without them, any
//! uplink) needs the work done in software first. This module is that software.
//!
//! Everything here works on plain `&[u8]` / `&mut [u8]`: the caller gathers an
//! offloaded frame from guest memory into a host scratch buffer (the slow path;
//! frames without offloads never come here). Nothing allocates, nothing is
//! `unsafe`, and hostile input never panics: a header that does not fit its frame
//! is an [`OffloadError`], which the caller counts as [`DropReason::BadOffload`].
//!
//! Frames are Ethernet frames *without* the virtio-net header, possibly carrying
//! one 802.1Q tag. All offsets (`csum_start`, `hdr_len`) count from the first byte
//! of the Ethernet header, as in virtio.
//!
//! # How the forwarder uses it
//!
//! Guest TX (the source guest's frame, header already read with [`VnetHdr::parse`]):
//!
//! 1. `!hdr.has_offload()`: the fast path, unchanged; the destination gets an
//!    all-zero header (plus `num_buffers`).
//! 2. Otherwise: [`caps::check_tx`]`(src_acked, &hdr)?` (the guest may only use
//!    offloads it negotiated), gather the frame into a scratch buffer, and
//!    [`validate`]`(&hdr, frame)?`. Any error: drop as `bad_offload`.
//! 3. Per destination, [`caps::decide`]`(dst_acked, &hdr)` (an uplink passes
//!    [`caps::UPLINK`]):
//!    - [`caps::Action::PassThrough`]: copy the frame; the destination's header is
//!      [`caps::Action::rx_header`] (set `num_buffers` on top).
//!    - [`caps::Action::FinalizeChecksum`]: [`finalize_checksum`]`(frame,
//!      hdr.csum_start, hdr.csum_offset)`, then deliver with `rx_header`. The
//!      frame is changed in place and no longer holds the partial sum a
//!      `NEEDS_CSUM` destination expects: when flooding, serve the pass-through
//!      and segment destinations first (or finalize a copy).
//!    - [`caps::Action::Segment`]: [`segment`]`(frame, &hdr, seg_scratch, |seg|
//!      deliver(seg))`; each segment goes out with `rx_header` (never GSO, never
//!      NEEDS_CSUM). `seg_scratch.len() >= frame.len()` always suffices.
//! 4. If the forwarder adds or removes a VLAN tag on the way, do the offload work on
//!    the frame as received, then tag each output frame, and move the offsets of a
//!    passed-through header with [`VnetHdr::shift_offsets`] (`+4` / `-4`).
//!
//! Uplink RX with `TP_STATUS_CSUMNOTREADY` (the sending host left the checksum
//! partial; large frames are GRO'd TCP): a TCP frame goes through
//! [`gso_from_frame`]`(frame, mss)`, with `mss` derived from the destination's MTU
//! (`mtu - (tcp_payload_offset - l3_offset)`, see [`parse_frame`]), which writes
//! the pseudo-header sum and returns a header (GSO if the payload exceeds `mss`,
//! else plain NEEDS_CSUM). Other frames use [`partial_csum_location`] to build a
//! NEEDS_CSUM header. Either header then goes through step 3 like a guest's.

use crate::api::DropReason;
use crate::features::{
    F_CSUM, F_GUEST_CSUM, F_GUEST_ECN, F_GUEST_TSO4, F_GUEST_TSO6, F_HOST_ECN, F_HOST_TSO4,
    F_HOST_TSO6,
};
use crate::wire::{ETH_HLEN, ETH_P_8021Q, VLAN_TAG_LEN};

/// Length of `virtio_net_hdr_v1` (VERSION_1: always 12 bytes, `num_buffers` included).
pub const VNET_HDR_LEN: usize = 12;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial; see [`finalize_checksum`].
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID` (receive only): the checksum was already verified.
pub const FLAG_DATA_VALID: u8 = 2;

/// `VIRTIO_NET_HDR_GSO_NONE`: not a GSO frame.
pub const GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`: TCP over IPv4, to be cut into `gso_size` segments.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP` (UFO): not supported, rejected by [`validate`].
pub const GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`: TCP over IPv6, to be cut into `gso_size` segments.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN`: flag on a TCP GSO type, the frame has TCP CWR set.
pub const GSO_ECN: u8 = 0x80;

/// Most segments one GSO frame may be cut into (64 KiB at an MSS of 32): bounds
/// the work a hostile `gso_size` can cause.
pub const MAX_GSO_SEGS: usize = 2048;
/// Offset of the checksum in a TCP header.
pub const TCP_CSUM_OFFSET: u16 = 16;
/// Offset of the checksum in a UDP header.
pub const UDP_CSUM_OFFSET: u16 = 6;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_MIN_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;
/// Most IPv6 extension headers walked before the L4 header.
const MAX_IPV6_EXT: usize = 8;

/// Why an offload header was refused. Every variant maps to
/// [`DropReason::BadOffload`] (see the `From` impl).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// Fewer than [`VNET_HDR_LEN`] bytes of virtio-net header.
    #[error("virtio-net header shorter than 12 bytes")]
    ShortHeader,
    /// A GSO type other than TCPv4/TCPv6 (UFO, UDP_L4, unknown).
    #[error("unsupported GSO type {0:#04x}")]
    UnsupportedGso(u8),
    /// `GSO_ECN` without a GSO type.
    #[error("GSO_ECN flag on a frame without GSO")]
    EcnWithoutGso,
    /// A GSO frame with `gso_size` 0.
    #[error("GSO frame with gso_size 0")]
    ZeroGsoSize,
    /// A GSO frame without `NEEDS_CSUM` (virtio 1.x: the driver must set both).
    #[error("GSO frame without NEEDS_CSUM")]
    GsoWithoutCsum,
    /// `csum_start + csum_offset + 2` beyond the frame, or `csum_start` inside the
    /// Ethernet header.
    #[error("checksum location outside the frame")]
    CsumOutOfRange,
    /// A GSO frame whose checksum location is not the TCP checksum field.
    #[error("GSO checksum location is not the TCP checksum")]
    CsumNotTcp,
    /// The frame ends inside a header, or an IP length points past its end.
    #[error("frame shorter than its headers")]
    Truncated,
    /// Neither IPv4 nor IPv6 (after at most one 802.1Q tag).
    #[error("not an IPv4 or IPv6 frame")]
    NotIp,
    /// Wrong IP version nibble, IHL below 5, or a total length below the header.
    #[error("malformed IP header")]
    BadIpHeader,
    /// A TCP data offset below 5.
    #[error("malformed TCP header")]
    BadTcpHeader,
    /// The GSO type does not match the frame (TCPV4 on IPv6, GSO on non-TCP, ...).
    #[error("GSO type does not match the frame's headers")]
    GsoMismatch,
    /// An IP fragment cannot carry an offload.
    #[error("offload on an IP fragment")]
    Fragment,
    /// The frame would be cut into more than [`MAX_GSO_SEGS`] segments.
    #[error("GSO frame with too many segments")]
    TooManySegments,
    /// The source guest used an offload it did not negotiate.
    #[error("offload the port did not negotiate")]
    NotNegotiated,
    /// The caller's scratch buffer cannot hold one output frame (a caller bug:
    /// a scratch buffer as long as the frame always suffices).
    #[error("offload scratch buffer too small")]
    ScratchTooSmall,
}

impl From<OffloadError> for DropReason {
    fn from(_: OffloadError) -> Self {
        DropReason::BadOffload
    }
}

/// `virtio_net_hdr_v1`: the header in front of every frame on a virtio-net queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// [`FLAG_NEEDS_CSUM`], [`FLAG_DATA_VALID`].
    pub flags: u8,
    /// [`GSO_NONE`], [`GSO_TCPV4`], [`GSO_TCPV6`] (others are refused), optionally
    /// with [`GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers before the payload. Only a hint from drivers (Linux
    /// puts its linear length there), so it is never trusted: segmentation parses
    /// the headers itself.
    pub hdr_len: u16,
    /// MSS: payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts (with `NEEDS_CSUM`), from the frame's first byte.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
    /// Receive buffers the frame uses (MRG_RXBUF, receive only).
    pub num_buffers: u16,
}

impl VnetHdr {
    /// Reads the header from the first [`VNET_HDR_LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, OffloadError> {
        let b: &[u8; VNET_HDR_LEN] = bytes
            .get(..VNET_HDR_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(OffloadError::ShortHeader)?;
        Ok(Self::from_bytes(b))
    }

    /// Decodes the 12 little-endian header bytes.
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Self {
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers: le(10),
        }
    }

    /// Encodes the header as 12 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        b
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `out`.
    pub fn write_to(&self, out: &mut [u8]) -> Result<(), OffloadError> {
        out.get_mut(..VNET_HDR_LEN)
            .ok_or(OffloadError::ShortHeader)?
            .copy_from_slice(&self.to_bytes());
        Ok(())
    }

    /// `NEEDS_CSUM` is set.
    pub fn needs_csum(&self) -> bool {
        self.flags & FLAG_NEEDS_CSUM != 0
    }

    /// A GSO type (anything but [`GSO_NONE`], `GSO_ECN` alone included) is set.
    pub fn is_gso(&self) -> bool {
        self.gso_type != GSO_NONE
    }

    /// The GSO type without the [`GSO_ECN`] flag.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    /// The [`GSO_ECN`] flag is set.
    pub fn has_ecn(&self) -> bool {
        self.gso_type & GSO_ECN != 0
    }

    /// The frame needs offload handling (a partial checksum or GSO). `false`: the
    /// fast path may ignore the header.
    pub fn has_offload(&self) -> bool {
        self.needs_csum() || self.is_gso()
    }

    /// The header with `csum_start` (if `NEEDS_CSUM`) and a nonzero `hdr_len` moved
    /// by `delta` bytes: `+4` after the frame gained a VLAN tag in front of its L3
    /// header, `-4` after it lost one.
    pub fn shift_offsets(&self, delta: i32) -> Result<Self, OffloadError> {
        let shift = |v: u16| {
            i32::from(v)
                .checked_add(delta)
                .and_then(|v| u16::try_from(v).ok())
                .ok_or(OffloadError::CsumOutOfRange)
        };
        let mut h = *self;
        if self.needs_csum() {
            h.csum_start = shift(self.csum_start)?;
        }
        if self.hdr_len != 0 {
            h.hdr_len = shift(self.hdr_len)?;
        }
        Ok(h)
    }
}

/// IP version of a parsed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// Header offsets of an IP frame, from [`parse_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    /// Start of the IP header: 14, or 18 behind an 802.1Q tag.
    pub l3_offset: usize,
    /// IPv4 or IPv6.
    pub ip: IpVersion,
    /// Start of the L4 header (after IPv4 options or IPv6 extension headers).
    pub l4_offset: usize,
    /// L4 protocol (IPv4 protocol, or the IPv6 next header after the hop-by-hop,
    /// destination-options and fragment headers). 6 TCP, 17 UDP.
    pub l4_proto: u8,
    /// End of the IP packet, from its length field; bytes after it are Ethernet
    /// padding.
    pub l3_end: usize,
    /// The packet is a fragment (IPv4 MF or offset, IPv6 fragment header with M or
    /// offset): its L4 header may be missing and its checksum spans other frames.
    pub fragment: bool,
}

/// Reads a big-endian u16 at `at`, if the frame is long enough.
fn be16(b: &[u8], at: usize) -> Option<u16> {
    match b.get(at..at.checked_add(2)?) {
        Some(&[x, y]) => Some(u16::from_be_bytes([x, y])),
        _ => None,
    }
}

/// Parses the Ethernet (one optional 802.1Q tag) and IP headers of `frame`.
///
/// IPv6 routing headers are not walked (the TCP pseudo-header would need the final
/// destination): such a frame reports `l4_proto` 43 and gets no offload.
pub fn parse_frame(frame: &[u8]) -> Result<FrameInfo, OffloadError> {
    let (l3, ethertype) = match be16(frame, 12) {
        Some(ETH_P_8021Q) => (
            ETH_HLEN + VLAN_TAG_LEN,
            be16(frame, 16).ok_or(OffloadError::Truncated)?,
        ),
        Some(t) => (ETH_HLEN, t),
        None => return Err(OffloadError::Truncated),
    };
    match ethertype {
        ETH_P_IP => parse_ipv4(frame, l3),
        ETH_P_IPV6 => parse_ipv6(frame, l3),
        _ => Err(OffloadError::NotIp),
    }
}

fn parse_ipv4(frame: &[u8], l3: usize) -> Result<FrameInfo, OffloadError> {
    let ip = frame
        .get(l3..l3 + IPV4_MIN_HLEN)
        .ok_or(OffloadError::Truncated)?;
    if ip[0] >> 4 != 4 {
        return Err(OffloadError::BadIpHeader);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < IPV4_MIN_HLEN || total < ihl {
        return Err(OffloadError::BadIpHeader);
    }
    let l3_end = l3 + total;
    if l3_end > frame.len() {
        return Err(OffloadError::Truncated);
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    Ok(FrameInfo {
        l3_offset: l3,
        ip: IpVersion::V4,
        l4_offset: l3 + ihl,
        l4_proto: ip[9],
        l3_end,
        // MF or a fragment offset; DF (0x4000) is fine.
        fragment: frag & 0x3fff != 0,
    })
}

fn parse_ipv6(frame: &[u8], l3: usize) -> Result<FrameInfo, OffloadError> {
    let ip = frame
        .get(l3..l3 + IPV6_HLEN)
        .ok_or(OffloadError::Truncated)?;
    if ip[0] >> 4 != 6 {
        return Err(OffloadError::BadIpHeader);
    }
    let l3_end = l3 + IPV6_HLEN + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if l3_end > frame.len() {
        return Err(OffloadError::Truncated);
    }
    let mut next = ip[6];
    let mut off = l3 + IPV6_HLEN;
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, destination options: (next, len in 8-octet units - 1).
            0 | 60 => {
                if off + 2 > l3_end {
                    return Err(OffloadError::Truncated);
                }
                next = frame[off];
                off += (usize::from(frame[off + 1]) + 1) * 8;
            }
            // Fragment: next, reserved, offset (13 bits) | M.
            44 => {
                if off + 8 > l3_end {
                    return Err(OffloadError::Truncated);
                }
                let fo = u16::from_be_bytes([frame[off + 2], frame[off + 3]]);
                fragment |= fo >> 3 != 0 || fo & 1 != 0;
                next = frame[off];
                off += 8;
            }
            _ => break,
        }
    }
    if off > l3_end {
        return Err(OffloadError::Truncated);
    }
    Ok(FrameInfo {
        l3_offset: l3,
        ip: IpVersion::V6,
        l4_offset: off,
        l4_proto: next,
        l3_end,
        fragment,
    })
}

/// A TCP frame fit for segmentation.
#[derive(Debug, Clone, Copy)]
struct TcpFrame {
    info: FrameInfo,
    /// End of the TCP header (options included): start of the payload.
    payload_offset: usize,
}

/// Parses a complete, unfragmented TCP frame, of IP version `want` if given.
fn parse_tcp(frame: &[u8], want: Option<IpVersion>) -> Result<TcpFrame, OffloadError> {
    let info = parse_frame(frame)?;
    if want.is_some_and(|v| v != info.ip) || info.l4_proto != IPPROTO_TCP {
        return Err(OffloadError::GsoMismatch);
    }
    if info.fragment {
        return Err(OffloadError::Fragment);
    }
    let l4 = info.l4_offset;
    if l4 + TCP_MIN_HLEN > info.l3_end {
        return Err(OffloadError::Truncated);
    }
    let doff = usize::from(frame[l4 + 12] >> 4) * 4;
    if doff < TCP_MIN_HLEN {
        return Err(OffloadError::BadTcpHeader);
    }
    if l4 + doff > info.l3_end {
        return Err(OffloadError::Truncated);
    }
    Ok(TcpFrame {
        info,
        payload_offset: l4 + doff,
    })
}

/// Checks `hdr` against `frame`; for a GSO header, returns the parsed TCP frame.
fn check(hdr: &VnetHdr, frame: &[u8]) -> Result<Option<TcpFrame>, OffloadError> {
    let want = if hdr.is_gso() {
        let v = match hdr.gso_kind() {
            GSO_NONE => return Err(OffloadError::EcnWithoutGso),
            GSO_TCPV4 => IpVersion::V4,
            GSO_TCPV6 => IpVersion::V6,
            other => return Err(OffloadError::UnsupportedGso(other)),
        };
        if hdr.gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        if !hdr.needs_csum() {
            return Err(OffloadError::GsoWithoutCsum);
        }
        Some(v)
    } else {
        None
    };
    let Some(v) = want else {
        if hdr.needs_csum() {
            let start = usize::from(hdr.csum_start);
            if start < ETH_HLEN || start + usize::from(hdr.csum_offset) + 2 > frame.len() {
                return Err(OffloadError::CsumOutOfRange);
            }
        }
        return Ok(None);
    };
    // GSO: the checksum must be the TCP one, which lies inside the parsed packet.
    let tcp = parse_tcp(frame, Some(v))?;
    if usize::from(hdr.csum_start) != tcp.info.l4_offset || hdr.csum_offset != TCP_CSUM_OFFSET {
        return Err(OffloadError::CsumNotTcp);
    }
    let payload = tcp.info.l3_end - tcp.payload_offset;
    if payload.div_ceil(usize::from(hdr.gso_size)) > MAX_GSO_SEGS {
        return Err(OffloadError::TooManySegments);
    }
    Ok(Some(tcp))
}

/// Checks a header from a guest's TX queue against its frame (Ethernet frame,
/// header stripped).
///
/// Accepted: no offload at all; `NEEDS_CSUM` with `csum_start >= 14` and
/// `csum_start + csum_offset + 2 <= frame.len()` (any protocol, as Linux allows);
/// GSO TCPv4/TCPv6 (optionally ECN) with `NEEDS_CSUM` pointing at the TCP checksum,
/// a nonzero `gso_size`, an unfragmented IPv4/IPv6 + TCP frame of the matching
/// version whose headers fit, and at most [`MAX_GSO_SEGS`] segments. A GSO frame
/// whose payload fits in one segment is fine (it becomes one segment).
/// `hdr_len` and `num_buffers` are ignored; the `DATA_VALID` flag is ignored (and
/// never forwarded, see [`caps::Action::rx_header`]).
pub fn validate(hdr: &VnetHdr, frame: &[u8]) -> Result<(), OffloadError> {
    check(hdr, frame).map(|_| ())
}

/// Unfolded one's-complement sum of `data` as big-endian 16-bit words (an odd
/// last byte is padded with zero). `data` must start at an even offset of the
/// checksummed range.
fn sum_words(data: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut quads = data.chunks_exact(8);
    for c in &mut quads {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // 2^32 = 1 (mod 0xffff): 32-bit halves fold like 16-bit words.
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut pairs = quads.remainder().chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [b] = pairs.remainder() {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds an unfolded sum to 16 bits (end-around carry), not complemented.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The Internet checksum (RFC 1071) of `data`: the complement of its folded
/// one's-complement sum. Over a range that already holds a correct checksum it
/// is 0.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !fold(sum_words(data))
}

/// Unfolded sum of the TCP/UDP pseudo-header: addresses, protocol, `l4_len`.
fn pseudo_sum(frame: &[u8], info: &FrameInfo, proto: u8, l4_len: usize) -> u64 {
    let l3 = info.l3_offset;
    let addrs = match info.ip {
        IpVersion::V4 => &frame[l3 + 12..l3 + 20],
        IpVersion::V6 => &frame[l3 + 8..l3 + 40],
    };
    sum_words(addrs) + u64::from(proto) + l4_len as u64
}

/// Completes a partial checksum (Linux `CHECKSUM_PARTIAL`, virtio `NEEDS_CSUM`):
/// the field at `csum_start + csum_offset` holds the folded pseudo-header sum; the
/// one's-complement sum over `frame[csum_start..]` (that field included) is
/// complemented and stored there, big-endian. A result of 0 is stored as `0xffff`
/// (as Linux does, so a UDP checksum never reads "none"). The sum runs to the end
/// of `frame`, as Linux sums to the end of the buffer: pass the frame without
/// trailing garbage.
pub fn finalize_checksum(
    frame: &mut [u8],
    csum_start: u16,
    csum_offset: u16,
) -> Result<(), OffloadError> {
    let start = usize::from(csum_start);
    let at = start + usize::from(csum_offset);
    if at + 2 > frame.len() {
        return Err(OffloadError::CsumOutOfRange);
    }
    let c = match !fold(sum_words(&frame[start..])) {
        0 => 0xffff,
        c => c,
    };
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// Software TSO: cuts a GSO frame into frames of at most `hdr.gso_size` payload
/// bytes and calls `emit` with each, in order. Returns the number of frames.
///
/// Every output frame carries a copy of the original Ethernet (VLAN tag kept), IP
/// (options / extension headers kept) and TCP (options kept) headers, with:
/// IPv4 total length, IPv4 id (+1 per segment, wrapping) and header checksum
/// recomputed; IPv6 payload length; TCP sequence number advanced by the payload
/// before it; FIN and PSH only on the last segment, CWR only on the first (as
/// Linux, whatever `GSO_ECN` says); and a full TCP checksum computed from scratch
/// (the partial value in the frame is not used). Ethernet padding after the IP
/// packet is dropped. A payload no longer than `gso_size` gives one frame.
///
/// A header without GSO is handled too: the frame is copied, its checksum
/// finalized if `NEEDS_CSUM`, and emitted once.
///
/// `hdr` is validated first ([`validate`]); on any error nothing is emitted.
/// `out` is the scratch each frame is built in: it must hold the headers plus one
/// segment; `out.len() >= frame.len()` always suffices.
pub fn segment<F: FnMut(&[u8])>(
    frame: &[u8],
    hdr: &VnetHdr,
    out: &mut [u8],
    mut emit: F,
) -> Result<usize, OffloadError> {
    let Some(tcp) = check(hdr, frame)? else {
        let out = out
            .get_mut(..frame.len())
            .ok_or(OffloadError::ScratchTooSmall)?;
        out.copy_from_slice(frame);
        if hdr.needs_csum() {
            finalize_checksum(out, hdr.csum_start, hdr.csum_offset)?;
        }
        emit(out);
        return Ok(1);
    };
    let info = tcp.info;
    let (l3, l4, hl) = (info.l3_offset, info.l4_offset, tcp.payload_offset);
    let mss = usize::from(hdr.gso_size);
    let payload = &frame[hl..info.l3_end];
    let segs = payload.len().div_ceil(mss).max(1);
    if out.len() < hl + payload.len().min(mss) {
        return Err(OffloadError::ScratchTooSmall);
    }
    out[..hl].copy_from_slice(&frame[..hl]);
    let id0 = u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]]);
    let seq0 = u32::from_be_bytes([frame[l4 + 4], frame[l4 + 5], frame[l4 + 6], frame[l4 + 7]]);
    let flags0 = frame[l4 + 13];
    let pseudo = pseudo_sum(frame, &info, IPPROTO_TCP, 0);
    for i in 0..segs {
        let start = i * mss;
        let end = (start + mss).min(payload.len());
        let len = hl + (end - start);
        out[hl..len].copy_from_slice(&payload[start..end]);
        match info.ip {
            IpVersion::V4 => {
                // Never above the original total length, so it fits in 16 bits.
                out[l3 + 2..l3 + 4].copy_from_slice(&((len - l3) as u16).to_be_bytes());
                // segs <= MAX_GSO_SEGS: the id wraps like Linux's.
                out[l3 + 4..l3 + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
                out[l3 + 10..l3 + 12].fill(0);
                let c = internet_checksum(&out[l3..l4]);
                out[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
            }
            IpVersion::V6 => {
                let plen = (len - l3 - IPV6_HLEN) as u16;
                out[l3 + 4..l3 + 6].copy_from_slice(&plen.to_be_bytes());
            }
        }
        let seq = seq0.wrapping_add(start as u32);
        out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < segs {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        out[l4 + 13] = flags;
        out[l4 + 16..l4 + 18].fill(0);
        let c = !fold(pseudo + (len - l4) as u64 + sum_words(&out[l4..len]));
        out[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        emit(&out[..len]);
    }
    Ok(segs)
}

/// Where the checksum of a frame with a partial checksum lives (AF_PACKET
/// `TP_STATUS_CSUMNOTREADY`): `(csum_start, csum_offset)` of its TCP (offset 16) or
/// UDP (offset 6) header, for a `NEEDS_CSUM` header or [`finalize_checksum`].
/// `None` for other protocols, fragments, and frames too short for the L4 header.
pub fn partial_csum_location(frame: &[u8]) -> Option<(u16, u16)> {
    let info = parse_frame(frame).ok()?;
    if info.fragment {
        return None;
    }
    let (hlen, offset) = match info.l4_proto {
        IPPROTO_TCP => (TCP_MIN_HLEN, TCP_CSUM_OFFSET),
        IPPROTO_UDP => (UDP_HLEN, UDP_CSUM_OFFSET),
        _ => return None,
    };
    if info.l4_offset + hlen > info.l3_end {
        return None;
    }
    Some((u16::try_from(info.l4_offset).ok()?, offset))
}

/// Builds the header for a TCP frame (e.g. GRO'd by the uplink's kernel) to hand a
/// guest that acked `GUEST_CSUM` (and `GUEST_TSO4/6` for a GSO frame; check with
/// [`caps::decide`]).
///
/// Writes the folded pseudo-header sum (for the whole TCP length, as Linux) into
/// the TCP checksum field, so the frame's checksum becomes partial whatever it was
/// before, and returns `NEEDS_CSUM` at the TCP checksum, `hdr_len` = exact header
/// length and, if the payload is longer than `mss`, `GSO_TCPV4`/`GSO_TCPV6` (plus
/// `GSO_ECN` if the frame has CWR) with `gso_size = mss`; otherwise `GSO_NONE`.
/// The result passes [`validate`]. The frame should end with its IP packet
/// (AF_PACKET frames with a partial checksum carry no Ethernet padding).
pub fn gso_from_frame(frame: &mut [u8], mss: u16) -> Result<VnetHdr, OffloadError> {
    if mss == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    let tcp = parse_tcp(frame, None)?;
    let info = tcp.info;
    let l4 = info.l4_offset;
    let csum_start = u16::try_from(l4).map_err(|_| OffloadError::BadIpHeader)?;
    let hdr_len = u16::try_from(tcp.payload_offset).map_err(|_| OffloadError::BadIpHeader)?;
    let payload = info.l3_end - tcp.payload_offset;
    let gso = payload > usize::from(mss);
    if gso && payload.div_ceil(usize::from(mss)) > MAX_GSO_SEGS {
        return Err(OffloadError::TooManySegments);
    }
    let partial = fold(pseudo_sum(frame, &info, IPPROTO_TCP, info.l3_end - l4));
    frame[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let gso_type = match (gso, info.ip) {
        (false, _) => GSO_NONE,
        (true, IpVersion::V4) => GSO_TCPV4,
        (true, IpVersion::V6) => GSO_TCPV6,
    };
    let ecn = if gso && frame[l4 + 13] & TCP_CWR != 0 {
        GSO_ECN
    } else {
        0
    };
    Ok(VnetHdr {
        flags: FLAG_NEEDS_CSUM,
        gso_type: gso_type | ecn,
        hdr_len,
        gso_size: if gso { mss } else { 0 },
        csum_start,
        csum_offset: TCP_CSUM_OFFSET,
        num_buffers: 0,
    })
}

/// What a destination can take: feature-bit rules for offloaded frames.
///
/// Rules of [`decide`], for a header that passed [`validate`](super::validate):
/// - no offload → `PassThrough` (flags cleared, see [`Action::rx_header`]);
/// - `NEEDS_CSUM` without GSO → `PassThrough` if the destination acked
///   `GUEST_CSUM`, else `FinalizeChecksum`;
/// - GSO TCPv4 → `PassThrough` if it acked `GUEST_TSO4` *and* `GUEST_CSUM` (a GSO
///   frame always carries a partial checksum) *and*, with `GSO_ECN`, `GUEST_ECN`;
///   else `Segment`. TCPv6 likewise with `GUEST_TSO6`;
/// - any other GSO type → `Segment` (which refuses it: validate first);
/// - an uplink ([`UPLINK`], no bits) → `Segment` for GSO, `FinalizeChecksum` for
///   `NEEDS_CSUM`: AF_PACKET sockets without a vnet header cannot carry offloads.
pub mod caps {
    use super::{
        OffloadError, VnetHdr, FLAG_DATA_VALID, FLAG_NEEDS_CSUM, F_CSUM, F_GUEST_CSUM, F_GUEST_ECN,
        F_GUEST_TSO4, F_GUEST_TSO6, F_HOST_ECN, F_HOST_TSO4, F_HOST_TSO6, GSO_TCPV4, GSO_TCPV6,
    };

    /// Feature bits of an uplink destination: no offload at all.
    pub const UPLINK: u64 = 0;

    /// What to do with an offloaded frame for one destination.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Action {
        /// Deliver the frame unchanged, with the offload header.
        PassThrough,
        /// Complete the partial checksum ([`super::finalize_checksum`]) first.
        FinalizeChecksum,
        /// Cut the frame into plain, fully checksummed frames ([`super::segment`]).
        Segment,
    }

    /// The action for a frame with header `hdr` going to a destination that acked
    /// the feature bits `acked` ([`UPLINK`] for an uplink). See the module rules.
    pub fn decide(acked: u64, hdr: &VnetHdr) -> Action {
        if hdr.is_gso() {
            let tso = match hdr.gso_kind() {
                GSO_TCPV4 => F_GUEST_TSO4,
                GSO_TCPV6 => F_GUEST_TSO6,
                _ => return Action::Segment,
            };
            let ecn = if hdr.has_ecn() { F_GUEST_ECN } else { 0 };
            let need = tso | F_GUEST_CSUM | ecn;
            if acked & need == need {
                Action::PassThrough
            } else {
                Action::Segment
            }
        } else if hdr.needs_csum() && acked & F_GUEST_CSUM == 0 {
            Action::FinalizeChecksum
        } else {
            Action::PassThrough
        }
    }

    /// Checks that the source guest negotiated every offload its TX header uses:
    /// `NEEDS_CSUM` needs `CSUM`, TCPv4/TCPv6 GSO need `HOST_TSO4`/`HOST_TSO6`,
    /// `GSO_ECN` needs `HOST_ECN`. Other GSO types are left to
    /// [`validate`](super::validate).
    pub fn check_tx(acked: u64, hdr: &VnetHdr) -> Result<(), OffloadError> {
        let mut need = 0;
        if hdr.needs_csum() {
            need |= F_CSUM;
        }
        match hdr.gso_kind() {
            GSO_TCPV4 => need |= F_HOST_TSO4,
            GSO_TCPV6 => need |= F_HOST_TSO6,
            _ => {}
        }
        if hdr.has_ecn() {
            need |= F_HOST_ECN;
        }
        if acked & need == need {
            Ok(())
        } else {
            Err(OffloadError::NotNegotiated)
        }
    }

    impl Action {
        /// The virtio-net header to put in front of this action's output frame(s)
        /// for a guest that acked `acked` (`num_buffers` 0: the caller sets it).
        /// Uplinks take no header.
        ///
        /// - `PassThrough`: `NEEDS_CSUM` with `csum_start`/`csum_offset` (only if
        ///   the guest acked `GUEST_CSUM`) and the GSO fields; every other flag
        ///   of the source (`DATA_VALID`) is dropped.
        /// - `FinalizeChecksum`: all zero (the guest verifies the checksum).
        /// - `Segment`: no offload; `DATA_VALID` if the guest acked `GUEST_CSUM`,
        ///   since every TCP and IP checksum was just computed here.
        pub fn rx_header(self, acked: u64, hdr: &VnetHdr) -> VnetHdr {
            let csum = acked & F_GUEST_CSUM != 0;
            match self {
                Action::PassThrough => {
                    let mut h = VnetHdr::default();
                    if hdr.needs_csum() && csum {
                        h.flags = FLAG_NEEDS_CSUM;
                        h.csum_start = hdr.csum_start;
                        h.csum_offset = hdr.csum_offset;
                    }
                    if hdr.is_gso() {
                        h.gso_type = hdr.gso_type;
                        h.gso_size = hdr.gso_size;
                        h.hdr_len = hdr.hdr_len;
                    }
                    h
                }
                Action::FinalizeChecksum => VnetHdr::default(),
                Action::Segment => VnetHdr {
                    flags: if csum { FLAG_DATA_VALID } else { 0 },
                    ..VnetHdr::default()
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::caps::{check_tx, decide, Action, UPLINK};
    use super::*;
    use crate::wire::vlan_tag_bytes;

    // ---- Independent reference implementation (straightforward, no shortcuts) ----

    /// Folded one's-complement sum, 16 bits at a time.
    fn naive_sum(data: &[u8]) -> u32 {
        let mut s: u32 = 0;
        let mut i = 0;
        while i + 1 < data.len() {
            s += u32::from(data[i]) << 8 | u32::from(data[i + 1]);
            s = (s & 0xffff) + (s >> 16);
            i += 2;
        }
        if i < data.len() {
            s += u32::from(data[i]) << 8;
            s = (s & 0xffff) + (s >> 16);
        }
        s
    }

    fn naive_csum(data: &[u8]) -> u16 {
        !(naive_sum(data) as u16)
    }

    /// L2 length by hand.
    fn l2len(f: &[u8]) -> usize {
        if f[12..14] == [0x81, 0x00] {
            18
        } else {
            14
        }
    }

    /// Builds the pseudo-header bytes of a frame by hand (no extension headers
    /// other than those counted in `l4`).
    fn pseudo_bytes(f: &[u8], l4: usize, l4_len: usize, proto: u8) -> Vec<u8> {
        let l3 = l2len(f);
        let mut p = Vec::new();
        if f[l3] >> 4 == 4 {
            p.extend_from_slice(&f[l3 + 12..l3 + 20]);
            p.push(0);
            p.push(proto);
            p.extend_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            p.extend_from_slice(&f[l3 + 8..l3 + 40]);
            p.extend_from_slice(&(l4_len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        let _ = l4;
        p
    }

    /// The L4 checksum of `f` (its field included) verifies.
    fn l4_ok(f: &[u8], l4: usize, end: usize, proto: u8) -> bool {
        let mut all = pseudo_bytes(f, l4, end - l4, proto);
        all.extend_from_slice(&f[l4..end]);
        naive_sum(&all) == 0xffff
    }

    fn ipv4_hdr_ok(f: &[u8]) -> bool {
        let l3 = l2len(f);
        let ihl = usize::from(f[l3] & 0xf) * 4;
        naive_sum(&f[l3..l3 + ihl]) == 0xffff
    }

    #[derive(Clone)]
    struct Pkt {
        v6: bool,
        vlan: Option<u16>,
        ip_opts: usize,
        v6_ext: bool,
        tcp_opts: usize,
        udp: bool,
        payload: usize,
        flags: u8,
        seq: u32,
        id: u16,
        pad: usize,
    }

    impl Default for Pkt {
        fn default() -> Self {
            Pkt {
                v6: false,
                vlan: None,
                ip_opts: 0,
                v6_ext: false,
                tcp_opts: 0,
                udp: false,
                payload: 100,
                flags: 0x10, // ACK
                seq: 1000,
                id: 0x1234,
                pad: 0,
            }
        }
    }

    struct Built {
        frame: Vec<u8>,
        l4: usize,
        hl: usize,
        end: usize,
    }

    /// A valid frame with full checksums, computed by the naive implementation.
    fn build(p: &Pkt) -> Built {
        let mut f = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1];
        if let Some(v) = p.vlan {
            f.extend_from_slice(&vlan_tag_bytes(v));
        }
        let l4hlen = if p.udp { 8 } else { 20 + p.tcp_opts };
        let l4_len = l4hlen + p.payload;
        let proto = if p.udp { 17 } else { 6 };
        let l3 = f.len() + 2;
        if !p.v6 {
            f.extend_from_slice(&[0x08, 0x00]);
            let ihl = 20 + p.ip_opts;
            f.push(0x40 | (ihl / 4) as u8);
            f.push(0);
            f.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
            f.extend_from_slice(&p.id.to_be_bytes());
            f.extend_from_slice(&[0x40, 0x00, 64, proto, 0, 0]);
            f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
            f.extend(std::iter::repeat_n(1u8, p.ip_opts)); // NOP options
            let c = naive_csum(&f[l3..l3 + ihl]);
            f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        } else {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            let ext = if p.v6_ext { 8 } else { 0 };
            f.extend_from_slice(&((ext + l4_len) as u16).to_be_bytes());
            f.push(if p.v6_ext { 0 } else { proto });
            f.push(64);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 2]);
            if p.v6_ext {
                // Hop-by-hop with one PadN option filling it to 8 bytes.
                f.extend_from_slice(&[proto, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
        let l4 = f.len();
        if p.udp {
            f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        } else {
            f.extend_from_slice(&[0x04, 0xd2, 0x00, 0x50]);
            f.extend_from_slice(&p.seq.to_be_bytes());
            f.extend_from_slice(&[1, 2, 3, 4]);
            f.push((((20 + p.tcp_opts) / 4) as u8) << 4);
            f.push(p.flags);
            f.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
            f.extend(std::iter::repeat_n(1u8, p.tcp_opts));
        }
        let hl = f.len();
        f.extend((0..p.payload).map(|i| (i * 7 + 3) as u8));
        let end = f.len();
        let mut all = pseudo_bytes(&f, l4, end - l4, proto);
        all.extend_from_slice(&f[l4..end]);
        let c = naive_csum(&all);
        let off = if p.udp { 6 } else { 16 };
        f[l4 + off..l4 + off + 2].copy_from_slice(&c.to_be_bytes());
        f.extend(std::iter::repeat_n(0xeeu8, p.pad));
        Built {
            frame: f,
            l4,
            hl,
            end,
        }
    }

    /// Replaces the L4 checksum with the folded pseudo-header sum (Linux partial).
    fn make_partial(b: &mut Built, udp: bool) {
        let proto = if udp { 17 } else { 6 };
        let p = pseudo_bytes(&b.frame, b.l4, b.end - b.l4, proto);
        let s = naive_sum(&p) as u16;
        let off = if udp { 6 } else { 16 };
        b.frame[b.l4 + off..b.l4 + off + 2].copy_from_slice(&s.to_be_bytes());
    }

    fn gso_hdr(b: &Built, v6: bool, mss: u16) -> VnetHdr {
        VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
            hdr_len: b.hl as u16,
            gso_size: mss,
            csum_start: b.l4 as u16,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    fn collect(frame: &[u8], hdr: &VnetHdr) -> Result<Vec<Vec<u8>>, OffloadError> {
        let mut out = vec![0u8; frame.len()];
        let mut segs = Vec::new();
        let n = segment(frame, hdr, &mut out, |s| segs.push(s.to_vec()))?;
        assert_eq!(n, segs.len());
        Ok(segs)
    }

    /// Checks segments of `b` (built from `p`) cut at `mss`.
    fn check_segments(p: &Pkt, b: &Built, segs: &[Vec<u8>], mss: usize) {
        let expect = p.payload.div_ceil(mss).max(1);
        assert_eq!(segs.len(), expect);
        let l3 = l2len(&b.frame);
        let mut payload = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let last = i + 1 == segs.len();
            let n = if last { p.payload - mss * i } else { mss };
            assert_eq!(s.len(), b.hl + n, "segment {i} length");
            // Headers before the changed fields are the original's.
            assert_eq!(s[..l3], b.frame[..l3], "L2 header kept (VLAN tag too)");
            if p.v6 {
                let plen = u16::from_be_bytes([s[l3 + 4], s[l3 + 5]]) as usize;
                assert_eq!(plen, s.len() - l3 - 40);
            } else {
                let tot = u16::from_be_bytes([s[l3 + 2], s[l3 + 3]]) as usize;
                assert_eq!(tot, s.len() - l3);
                let id = u16::from_be_bytes([s[l3 + 4], s[l3 + 5]]);
                assert_eq!(id, p.id.wrapping_add(i as u16));
                assert!(ipv4_hdr_ok(s), "segment {i} IPv4 checksum");
            }
            let l4 = b.l4;
            let seq = u32::from_be_bytes([s[l4 + 4], s[l4 + 5], s[l4 + 6], s[l4 + 7]]);
            assert_eq!(seq, p.seq.wrapping_add((i * mss) as u32));
            let f = s[l4 + 13];
            let mut want = p.flags;
            if !last {
                want &= !(TCP_FIN | TCP_PSH);
            }
            if i > 0 {
                want &= !TCP_CWR;
            }
            assert_eq!(f, want, "segment {i} flags");
            assert!(l4_ok(s, l4, s.len(), 6), "segment {i} TCP checksum");
            // TCP options and the rest of the header are unchanged.
            assert_eq!(s[l4 + 18..b.hl], b.frame[l4 + 18..b.hl]);
            payload.extend_from_slice(&s[b.hl..]);
        }
        assert_eq!(payload, b.frame[b.hl..b.end]);
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn fill(&mut self, b: &mut [u8]) {
            for x in b {
                *x = self.next() as u8;
            }
        }
    }

    // ---- VnetHdr ----

    #[test]
    fn test_vnet_hdr_layout_and_roundtrip() {
        let bytes = [1, 0x81, 0x36, 0, 0xb4, 0x05, 0x22, 0, 0x10, 0, 3, 0];
        let h = VnetHdr::parse(&bytes).unwrap();
        assert_eq!(
            h,
            VnetHdr {
                flags: FLAG_NEEDS_CSUM,
                gso_type: GSO_TCPV4 | GSO_ECN,
                hdr_len: 54,
                gso_size: 1460,
                csum_start: 34,
                csum_offset: 16,
                num_buffers: 3,
            }
        );
        assert!(h.needs_csum() && h.is_gso() && h.has_ecn() && h.has_offload());
        assert_eq!(h.gso_kind(), GSO_TCPV4);
        assert_eq!(h.to_bytes(), bytes);
        let mut out = [0u8; 20];
        h.write_to(&mut out).unwrap();
        assert_eq!(out[..12], bytes);
        assert_eq!(
            VnetHdr::parse(&out).unwrap(),
            h,
            "longer input: first 12 bytes"
        );
        assert_eq!(VnetHdr::parse(&bytes[..11]), Err(OffloadError::ShortHeader));
        assert_eq!(h.write_to(&mut out[..11]), Err(OffloadError::ShortHeader));
        assert!(!VnetHdr::default().has_offload());
        let dv = VnetHdr {
            flags: FLAG_DATA_VALID,
            ..VnetHdr::default()
        };
        assert!(!dv.has_offload());
    }

    #[test]
    fn test_shift_offsets() {
        let h = VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            hdr_len: 54,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let up = h.shift_offsets(4).unwrap();
        assert_eq!((up.csum_start, up.hdr_len, up.csum_offset), (38, 58, 16));
        assert_eq!(up.shift_offsets(-4).unwrap(), h);
        assert_eq!(h.shift_offsets(-40), Err(OffloadError::CsumOutOfRange));
        let plain = VnetHdr::default();
        assert_eq!(plain.shift_offsets(4).unwrap(), plain, "nothing to move");
        let big = VnetHdr {
            csum_start: 65534,
            ..h
        };
        assert_eq!(big.shift_offsets(4), Err(OffloadError::CsumOutOfRange));
        assert_eq!(h.shift_offsets(i32::MAX), Err(OffloadError::CsumOutOfRange));
    }

    #[test]
    fn test_drop_reason() {
        assert_eq!(
            DropReason::from(OffloadError::CsumOutOfRange),
            DropReason::BadOffload
        );
        assert_eq!(DropReason::BadOffload.as_str(), "bad_offload");
    }

    // ---- Checksums ----

    #[test]
    fn test_checksum_known_vectors() {
        // RFC 1071 section 3 example: sum ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(&d)), 0xddf2);
        assert_eq!(internet_checksum(&d), !0xddf2);
        // Well-known IPv4 headers with their checksums (b861, b1e6).
        let mut ip = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&ip), 0xb861);
        ip[10..12].copy_from_slice(&[0xb8, 0x61]);
        assert_eq!(internet_checksum(&ip), 0);
        let ip2 = [
            0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0x00, 0x00, 0xac, 0x10,
            0x0a, 0x63, 0xac, 0x10, 0x0a, 0x0c,
        ];
        assert_eq!(internet_checksum(&ip2), 0xb1e6);
        // Odd length: the last byte is the high half of a zero-padded word.
        assert_eq!(fold(sum_words(&[0x12, 0x34, 0x56])), 0x6834);
        assert_eq!(internet_checksum(&[]), 0xffff);
    }

    #[test]
    fn test_known_good_tcp_packet() {
        // IPv4/TCP SYN 192.168.1.2:40000 -> 192.168.1.1:80, seq 0x11223344,
        // window 64240, MSS option 1460; checksums computed independently (Python).
        let mut f: Vec<u8> = vec![
            0x52, 0x54, 0x00, 0x00, 0x00, 0x01, 0x52, 0x54, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00,
            // IPv4
            0x45, 0x00, 0x00, 0x2c, 0xab, 0xcd, 0x40, 0x00, 0x40, 0x06, 0x0b, 0xab, 0xc0, 0xa8,
            0x01, 0x02, 0xc0, 0xa8, 0x01, 0x01, // TCP
            0x9c, 0x40, 0x00, 0x50, 0x11, 0x22, 0x33, 0x44, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02,
            0xfa, 0xf0, 0x38, 0xeb, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
        ];
        assert_eq!(
            internet_checksum(&f[14..34]),
            0,
            "IPv4 header checksum 0bab"
        );
        assert!(
            l4_ok(&f, 34, f.len(), 6),
            "reference agrees with the known packet"
        );
        // As a partial-checksum frame, finalized here, it gets the known checksum.
        assert_eq!(partial_csum_location(&f), Some((34, 16)));
        let h = gso_from_frame(&mut f, 1460).unwrap();
        assert_eq!((h.gso_type, h.csum_start, h.hdr_len), (GSO_NONE, 34, 58));
        finalize_checksum(&mut f, h.csum_start, h.csum_offset).unwrap();
        assert_eq!([f[50], f[51]], [0x38, 0xeb]);
    }

    #[test]
    fn test_checksum_matches_naive_on_random_data() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut buf = vec![0u8; 3000];
        for _ in 0..500 {
            rng.fill(&mut buf);
            let len = rng.below(buf.len());
            let start = rng.below(len + 1) & !1; // even start within the slice
            let d = &buf[start..len.max(start)];
            assert_eq!(internet_checksum(d), naive_csum(d), "len {}", d.len());
        }
        // Worst case for carries: all ones, all lengths up to a few quads.
        let ones = [0xffu8; 64];
        for n in 0..ones.len() {
            assert_eq!(internet_checksum(&ones[..n]), naive_csum(&ones[..n]));
        }
    }

    // ---- finalize_checksum ----

    #[test]
    fn test_finalize_checksum_tcp_udp_v4_v6() {
        for (v6, udp, vlan) in [
            (false, false, None),
            (true, false, None),
            (false, true, None),
            (true, true, Some(7)),
            (false, false, Some(100)),
        ] {
            for payload in [0, 1, 2, 3, 57, 1000, 1401] {
                let p = Pkt {
                    v6,
                    udp,
                    vlan,
                    payload,
                    ..Pkt::default()
                };
                let mut b = build(&p);
                let good = b.frame.clone();
                make_partial(&mut b, udp);
                let (start, off) = partial_csum_location(&b.frame).unwrap();
                assert_eq!(usize::from(start), b.l4);
                assert_eq!(off, if udp { 6 } else { 16 });
                let hdr = VnetHdr {
                    flags: FLAG_NEEDS_CSUM,
                    csum_start: start,
                    csum_offset: off,
                    ..VnetHdr::default()
                };
                validate(&hdr, &b.frame).unwrap();
                finalize_checksum(&mut b.frame, start, off).unwrap();
                assert!(l4_ok(&b.frame, b.l4, b.end, if udp { 17 } else { 6 }));
                // Equal to the full checksum, up to 0 == 0xffff.
                assert!(b.frame == good || naive_csum(&good[b.l4..b.end]) == 0);
            }
        }
    }

    #[test]
    fn test_finalize_checksum_zero_is_stored_as_ffff() {
        // Data summing to 0xffff with the field zero: checksum 0, stored 0xffff.
        let mut f = [0u8; 20];
        f[14..16].copy_from_slice(&[0xff, 0x00]);
        f[16..18].copy_from_slice(&[0x00, 0xff]);
        finalize_checksum(&mut f, 14, 4).unwrap();
        assert_eq!(f[18..20], [0xff, 0xff]);
        assert_eq!(naive_sum(&f[14..]), 0xffff, "0xffff verifies like 0");
    }

    #[test]
    fn test_finalize_checksum_out_of_range() {
        let mut f = [0u8; 40];
        assert_eq!(
            finalize_checksum(&mut f, 38, 1),
            Err(OffloadError::CsumOutOfRange)
        );
        assert_eq!(
            finalize_checksum(&mut f, 65535, 65535),
            Err(OffloadError::CsumOutOfRange)
        );
        finalize_checksum(&mut f, 38, 0).unwrap();
        assert_eq!(f[..38], [0u8; 38], "nothing outside the field changed");
    }

    // ---- segment ----

    #[test]
    fn test_segment_ipv4() {
        let p = Pkt {
            payload: 3500,
            flags: 0x10 | TCP_FIN | TCP_PSH | TCP_CWR,
            ..Pkt::default()
        };
        let mut b = build(&p);
        make_partial(&mut b, false);
        let segs = collect(&b.frame, &gso_hdr(&b, false, 1000)).unwrap();
        assert_eq!(segs.len(), 4);
        assert_eq!(segs[3].len(), 54 + 500, "last segment shorter");
        check_segments(&p, &b, &segs, 1000);
    }

    #[test]
    fn test_segment_ipv6() {
        for ext in [false, true] {
            let p = Pkt {
                v6: true,
                v6_ext: ext,
                payload: 4000,
                flags: 0x10 | TCP_PSH | TCP_CWR,
                ..Pkt::default()
            };
            let mut b = build(&p);
            make_partial(&mut b, false);
            let mut h = gso_hdr(&b, true, 1440);
            h.gso_type |= GSO_ECN;
            let segs = collect(&b.frame, &h).unwrap();
            check_segments(&p, &b, &segs, 1440);
        }
    }

    #[test]
    fn test_segment_vlan_tagged() {
        for v6 in [false, true] {
            let p = Pkt {
                v6,
                vlan: Some(42),
                payload: 2921,
                flags: 0x18,
                ..Pkt::default()
            };
            let mut b = build(&p);
            make_partial(&mut b, false);
            let segs = collect(&b.frame, &gso_hdr(&b, v6, 1460)).unwrap();
            assert_eq!(segs.len(), 3);
            for s in &segs {
                assert_eq!(s[12..16], vlan_tag_bytes(42));
            }
            check_segments(&p, &b, &segs, 1460);
        }
    }

    #[test]
    fn test_segment_exact_multiple_and_single() {
        for (payload, mss, n) in [
            (3000, 1000, 3),
            (999, 1000, 1),
            (1000, 1000, 1),
            (0, 1000, 1),
        ] {
            let p = Pkt {
                payload,
                flags: 0x10 | TCP_FIN | TCP_PSH | TCP_CWR,
                ..Pkt::default()
            };
            let mut b = build(&p);
            make_partial(&mut b, false);
            let segs = collect(&b.frame, &gso_hdr(&b, false, mss)).unwrap();
            assert_eq!(segs.len(), n);
            check_segments(&p, &b, &segs, mss as usize);
        }
        // One segment keeps every flag and gets a full checksum.
        let p = Pkt {
            payload: 10,
            flags: 0xff,
            ..Pkt::default()
        };
        let mut b = build(&p);
        let good = b.frame.clone();
        make_partial(&mut b, false);
        let segs = collect(&b.frame, &gso_hdr(&b, false, 65535)).unwrap();
        assert_eq!(segs, vec![good]);
    }

    #[test]
    fn test_segment_with_ip_and_tcp_options_and_padding() {
        let p = Pkt {
            ip_opts: 8,
            tcp_opts: 12,
            payload: 2500,
            flags: 0x10 | TCP_FIN,
            pad: 6,
            ..Pkt::default()
        };
        let mut b = build(&p);
        make_partial(&mut b, false);
        assert_eq!(b.frame.len(), b.end + 6);
        let segs = collect(&b.frame, &gso_hdr(&b, false, 1000)).unwrap();
        check_segments(&p, &b, &segs, 1000);
        assert!(segs.iter().all(|s| !s.ends_with(&[0xee; 6])), "no padding");
    }

    #[test]
    fn test_segment_seq_and_id_wrap() {
        let p = Pkt {
            payload: 5000,
            seq: u32::MAX - 1500,
            id: 0xfffe,
            ..Pkt::default()
        };
        let mut b = build(&p);
        make_partial(&mut b, false);
        let segs = collect(&b.frame, &gso_hdr(&b, false, 1000)).unwrap();
        check_segments(&p, &b, &segs, 1000);
    }

    #[test]
    fn test_segment_without_gso_finalizes_or_copies() {
        let p = Pkt::default();
        let mut b = build(&p);
        let good = b.frame.clone();
        make_partial(&mut b, false);
        let h = VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: b.l4 as u16,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        assert_eq!(collect(&b.frame, &h).unwrap(), vec![good.clone()]);
        assert_eq!(
            collect(&good, &VnetHdr::default()).unwrap(),
            vec![good.clone()]
        );
    }

    #[test]
    fn test_segment_scratch_too_small_emits_nothing() {
        let p = Pkt {
            payload: 3000,
            ..Pkt::default()
        };
        let mut b = build(&p);
        make_partial(&mut b, false);
        let h = gso_hdr(&b, false, 1000);
        let mut out = vec![0u8; b.hl + 999];
        let mut n = 0;
        assert_eq!(
            segment(&b.frame, &h, &mut out, |_| n += 1),
            Err(OffloadError::ScratchTooSmall)
        );
        assert_eq!(n, 0);
        let mut out = vec![0u8; b.hl + 1000];
        assert_eq!(segment(&b.frame, &h, &mut out, |_| n += 1), Ok(3));
        assert_eq!(n, 3);
        let mut tiny = [0u8; 10];
        assert_eq!(
            segment(&b.frame, &VnetHdr::default(), &mut tiny, |_| ()),
            Err(OffloadError::ScratchTooSmall)
        );
    }

    // ---- validate ----

    #[test]
    fn test_validate_accepts_good_headers() {
        for v6 in [false, true] {
            let p = Pkt {
                v6,
                payload: 3000,
                ..Pkt::default()
            };
            let mut b = build(&p);
            make_partial(&mut b, false);
            let h = gso_hdr(&b, v6, 1000);
            validate(&h, &b.frame).unwrap();
            let ecn = VnetHdr {
                gso_type: h.gso_type | GSO_ECN,
                ..h
            };
            validate(&ecn, &b.frame).unwrap();
            // hdr_len is a hint only.
            validate(&VnetHdr { hdr_len: 9999, ..h }, &b.frame).unwrap();
            validate(&VnetHdr::default(), &b.frame).unwrap();
            // No offload: anything goes, even garbage.
            validate(&VnetHdr::default(), &[1, 2, 3]).unwrap();
        }
    }

    #[test]
    fn test_validate_rejects_malformed() {
        let p = Pkt {
            payload: 3000,
            ..Pkt::default()
        };
        let mut b = build(&p);
        make_partial(&mut b, false);
        let good = gso_hdr(&b, false, 1000);
        let f = &b.frame;
        let csum_only = VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::default()
        };
        let e = |h: VnetHdr, frame: &[u8]| validate(&h, frame).unwrap_err();

        // Header fields.
        assert_eq!(
            e(
                VnetHdr {
                    gso_size: 0,
                    ..good
                },
                f
            ),
            OffloadError::ZeroGsoSize
        );
        assert_eq!(
            e(VnetHdr { flags: 0, ..good }, f),
            OffloadError::GsoWithoutCsum
        );
        assert_eq!(
            e(
                VnetHdr {
                    gso_type: GSO_UDP,
                    ..good
                },
                f
            ),
            OffloadError::UnsupportedGso(GSO_UDP)
        );
        assert_eq!(
            e(
                VnetHdr {
                    gso_type: 5,
                    ..good
                },
                f
            ),
            OffloadError::UnsupportedGso(5)
        );
        assert_eq!(
            e(
                VnetHdr {
                    gso_type: 0x42,
                    ..good
                },
                f
            ),
            OffloadError::UnsupportedGso(0x42)
        );
        assert_eq!(
            e(
                VnetHdr {
                    gso_type: GSO_ECN,
                    ..csum_only
                },
                f
            ),
            OffloadError::EcnWithoutGso
        );
        assert_eq!(
            e(
                VnetHdr {
                    gso_type: GSO_TCPV6,
                    ..good
                },
                f
            ),
            OffloadError::GsoMismatch,
            "TCPV6 on an IPv4 frame"
        );
        assert_eq!(
            e(
                VnetHdr {
                    csum_offset: 6,
                    ..good
                },
                f
            ),
            OffloadError::CsumNotTcp
        );
        assert_eq!(
            e(
                VnetHdr {
                    csum_start: 36,
                    ..good
                },
                f
            ),
            OffloadError::CsumNotTcp
        );
        assert_eq!(
            e(
                VnetHdr {
                    gso_size: 1,
                    ..good
                },
                f
            ),
            OffloadError::TooManySegments
        );
        // csum_start beyond the frame, inside the Ethernet header, offset too far.
        for (start, off) in [
            (f.len() as u16, 0),
            (f.len() as u16 - 1, 0),
            (10, 0),
            (34, 65535),
            (65535, 65535),
        ] {
            let h = VnetHdr {
                csum_start: start,
                csum_offset: off,
                ..csum_only
            };
            assert_eq!(e(h, f), OffloadError::CsumOutOfRange, "{start}+{off}");
            assert_eq!(
                e(
                    VnetHdr {
                        csum_start: start,
                        csum_offset: off,
                        ..good
                    },
                    f
                ),
                OffloadError::CsumNotTcp,
                "GSO: the checksum must be TCP's"
            );
        }
        validate(
            &VnetHdr {
                csum_start: f.len() as u16 - 2,
                csum_offset: 0,
                ..csum_only
            },
            f,
        )
        .unwrap();

        // Frame contents.
        let bad = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut g = f.clone();
            edit(&mut g);
            validate(&good, &g).unwrap_err()
        };
        assert_eq!(
            bad(&|g| g.truncate(30)),
            OffloadError::Truncated,
            "IP header cut"
        );
        assert_eq!(
            bad(&|g| g.truncate(40)),
            OffloadError::Truncated,
            "IP length past the end"
        );
        assert_eq!(
            bad(&|g| g.truncate(12)),
            OffloadError::Truncated,
            "no ethertype"
        );
        assert_eq!(bad(&|g| g[14] = 0x44), OffloadError::BadIpHeader, "IHL 4");
        assert_eq!(bad(&|g| g[14] = 0x40), OffloadError::BadIpHeader, "IHL 0");
        assert_eq!(
            bad(&|g| g[14] = 0x65),
            OffloadError::BadIpHeader,
            "version 6 in IPv4"
        );
        assert_eq!(
            bad(&|g| g[16..18].copy_from_slice(&[0, 19])),
            OffloadError::BadIpHeader
        );
        assert_eq!(
            bad(&|g| g[14] = 0x4f),
            OffloadError::CsumNotTcp,
            "IHL 15: L4 moved"
        );
        assert_eq!(
            bad(&|g| g[23] = 17),
            OffloadError::GsoMismatch,
            "GSO on UDP"
        );
        assert_eq!(
            bad(&|g| g[23] = 1),
            OffloadError::GsoMismatch,
            "GSO on ICMP"
        );
        assert_eq!(
            bad(&|g| g[12..14].copy_from_slice(&[0x08, 0x06])),
            OffloadError::NotIp
        );
        assert_eq!(bad(&|g| g[20] = 0x20), OffloadError::Fragment, "MF");
        assert_eq!(bad(&|g| g[21] = 0x01), OffloadError::Fragment, "offset");
        assert_eq!(
            bad(&|g| g[46] = 0x40),
            OffloadError::BadTcpHeader,
            "data offset 4"
        );
        // TCP header longer than the packet: cut the IP length to 20 + 30.
        assert_eq!(
            bad(&|g| {
                g[46] = 0xf0;
                g[16..18].copy_from_slice(&50u16.to_be_bytes());
            }),
            OffloadError::Truncated
        );
        // TCP header missing altogether.
        assert_eq!(
            bad(&|g| g[16..18].copy_from_slice(&30u16.to_be_bytes())),
            OffloadError::Truncated
        );

        // A TCPV4 header on a UDP frame built as such.
        let u = build(&Pkt {
            udp: true,
            payload: 3000,
            ..Pkt::default()
        });
        assert_eq!(e(good, &u.frame), OffloadError::GsoMismatch);

        // IPv6: truncated fixed header, bad version, TCPV4 on IPv6, fragment header.
        let mut b6 = build(&Pkt {
            v6: true,
            payload: 3000,
            ..Pkt::default()
        });
        make_partial(&mut b6, false);
        let g6 = gso_hdr(&b6, true, 1000);
        validate(&g6, &b6.frame).unwrap();
        assert_eq!(e(g6, &b6.frame[..50]), OffloadError::Truncated);
        assert_eq!(
            e(
                VnetHdr {
                    gso_type: GSO_TCPV4,
                    ..g6
                },
                &b6.frame
            ),
            OffloadError::GsoMismatch
        );
        let mut v = b6.frame.clone();
        v[14] = 0x40;
        assert_eq!(e(g6, &v), OffloadError::BadIpHeader);
        let mut v = b6.frame.clone();
        v[18..20].copy_from_slice(&[0xff, 0xff]);
        assert_eq!(
            e(g6, &v),
            OffloadError::Truncated,
            "payload length past the end"
        );
        // Routing header: not walked, so not TCP.
        let mut v = b6.frame.clone();
        v[20] = 43;
        assert_eq!(e(g6, &v), OffloadError::GsoMismatch);
        // Fragment header in front of TCP (non-first fragment).
        let mut b6f = build(&Pkt {
            v6: true,
            v6_ext: true,
            payload: 3000,
            ..Pkt::default()
        });
        make_partial(&mut b6f, false);
        let g6f = gso_hdr(&b6f, true, 1000);
        validate(&g6f, &b6f.frame).unwrap();
        let mut v = b6f.frame.clone();
        v[54..62].copy_from_slice(&[6, 0, 0x00, 0x09, 0, 0, 0, 1]); // offset 1, M=1
        v[20] = 44;
        assert_eq!(e(g6f, &v), OffloadError::Fragment);
        // Extension header running past the packet.
        let mut v = b6f.frame.clone();
        v[18..20].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(e(g6f, &v), OffloadError::Truncated);
        // A long extension header moves the L4 header: not where csum_start says.
        let mut v = b6f.frame.clone();
        v[55] = 200;
        assert_eq!(e(g6f, &v), OffloadError::CsumNotTcp);
    }

    // ---- partial_csum_location ----

    #[test]
    fn test_partial_csum_location() {
        let tcp = build(&Pkt::default());
        assert_eq!(partial_csum_location(&tcp.frame), Some((34, 16)));
        let udp6 = build(&Pkt {
            v6: true,
            udp: true,
            vlan: Some(3),
            ..Pkt::default()
        });
        assert_eq!(partial_csum_location(&udp6.frame), Some((58, 6)));
        let ext = build(&Pkt {
            v6: true,
            v6_ext: true,
            ..Pkt::default()
        });
        assert_eq!(partial_csum_location(&ext.frame), Some((62, 16)));
        let opts = build(&Pkt {
            ip_opts: 12,
            ..Pkt::default()
        });
        assert_eq!(partial_csum_location(&opts.frame), Some((46, 16)));
        // ICMP, fragment, short, non-IP.
        let mut f = tcp.frame.clone();
        f[23] = 1;
        assert_eq!(partial_csum_location(&f), None);
        let mut f = tcp.frame.clone();
        f[20] = 0x20;
        assert_eq!(partial_csum_location(&f), None);
        let mut f = tcp.frame.clone();
        f[16..18].copy_from_slice(&37u16.to_be_bytes()); // 17 bytes of TCP
        assert_eq!(partial_csum_location(&f[..51]), None);
        assert_eq!(partial_csum_location(&tcp.frame[..40]), None);
        assert_eq!(partial_csum_location(&[0u8; 60]), None);
        assert_eq!(partial_csum_location(&[]), None);
    }

    // ---- gso_from_frame ----

    #[test]
    fn test_gso_from_frame_roundtrip() {
        for (v6, vlan, cwr) in [
            (false, None, false),
            (true, None, true),
            (false, Some(9), true),
            (true, Some(9), false),
        ] {
            let p = Pkt {
                v6,
                vlan,
                payload: 9000,
                tcp_opts: 12,
                flags: 0x10 | TCP_PSH | if cwr { TCP_CWR } else { 0 },
                ..Pkt::default()
            };
            let b = build(&p); // full checksum, as if verified by the NIC
            let mut f = b.frame.clone();
            let h = gso_from_frame(&mut f, 1448).unwrap();
            let kind = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
            assert_eq!(h.gso_type, kind | if cwr { GSO_ECN } else { 0 });
            assert_eq!(h.flags, FLAG_NEEDS_CSUM);
            assert_eq!((h.gso_size, h.csum_offset), (1448, 16));
            assert_eq!(usize::from(h.csum_start), b.l4);
            assert_eq!(usize::from(h.hdr_len), b.hl);
            validate(&h, &f).unwrap();
            // The checksum field now holds the pseudo-header sum...
            let mut partial = b.frame.clone();
            let mut bp = Built {
                frame: std::mem::take(&mut partial),
                ..b
            };
            make_partial(&mut bp, false);
            assert_eq!(f, bp.frame);
            // ...so the guest (or we) can finalize it, or segment it.
            let mut fin = f.clone();
            finalize_checksum(&mut fin, h.csum_start, h.csum_offset).unwrap();
            assert!(l4_ok(&fin, bp.l4, bp.end, 6));
            let segs = collect(&f, &h).unwrap();
            check_segments(&p, &bp, &segs, 1448);
        }
    }

    #[test]
    fn test_gso_from_frame_small_and_errors() {
        let b = build(&Pkt {
            payload: 1448,
            ..Pkt::default()
        });
        let mut f = b.frame.clone();
        let h = gso_from_frame(&mut f, 1448).unwrap();
        assert_eq!(
            (h.gso_type, h.gso_size, h.flags),
            (GSO_NONE, 0, FLAG_NEEDS_CSUM)
        );
        validate(&h, &f).unwrap();
        assert_eq!(caps::decide(F_GUEST_CSUM, &h), Action::PassThrough);
        let mut f = b.frame.clone();
        assert_eq!(gso_from_frame(&mut f, 0), Err(OffloadError::ZeroGsoSize));
        assert_eq!(f, b.frame, "untouched on error");
        let big = build(&Pkt {
            payload: 30000,
            ..Pkt::default()
        });
        let mut f = big.frame.clone();
        assert_eq!(
            gso_from_frame(&mut f, 8),
            Err(OffloadError::TooManySegments)
        );
        assert_eq!(f, big.frame);
        let mut u = build(&Pkt {
            udp: true,
            ..Pkt::default()
        })
        .frame;
        assert_eq!(gso_from_frame(&mut u, 1000), Err(OffloadError::GsoMismatch));
        assert_eq!(
            gso_from_frame(&mut [0u8; 10], 1000),
            Err(OffloadError::Truncated)
        );
    }

    // ---- caps ----

    #[test]
    fn test_caps_decide() {
        let tso4 = VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            hdr_len: 54,
            ..VnetHdr::default()
        };
        let tso6 = VnetHdr {
            gso_type: GSO_TCPV6,
            csum_start: 54,
            ..tso4
        };
        let ecn4 = VnetHdr {
            gso_type: GSO_TCPV4 | GSO_ECN,
            ..tso4
        };
        let csum = VnetHdr {
            gso_type: GSO_NONE,
            gso_size: 0,
            ..tso4
        };
        let plain = VnetHdr::default();
        let all = F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN;
        use Action::*;
        let cases = [
            (all, tso4, PassThrough),
            (all, tso6, PassThrough),
            (all, ecn4, PassThrough),
            (all, csum, PassThrough),
            (all, plain, PassThrough),
            (F_GUEST_CSUM | F_GUEST_TSO4, tso4, PassThrough),
            (F_GUEST_CSUM | F_GUEST_TSO4, tso6, Segment),
            (F_GUEST_CSUM | F_GUEST_TSO4, ecn4, Segment),
            (F_GUEST_CSUM | F_GUEST_TSO6, tso4, Segment),
            (F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN, tso4, Segment), // TSO needs CSUM
            (F_GUEST_CSUM, tso4, Segment),
            (F_GUEST_CSUM, csum, PassThrough),
            (F_GUEST_TSO4, csum, FinalizeChecksum),
            (0, csum, FinalizeChecksum),
            (UPLINK, tso4, Segment),
            (UPLINK, tso6, Segment),
            (UPLINK, csum, FinalizeChecksum),
            (UPLINK, plain, PassThrough),
            (
                all,
                VnetHdr {
                    gso_type: GSO_UDP,
                    ..tso4
                },
                Segment,
            ),
        ];
        for (acked, h, want) in cases {
            assert_eq!(decide(acked, &h), want, "acked {acked:#x} hdr {h:?}");
        }
    }

    #[test]
    fn test_caps_rx_header() {
        let tso4 = VnetHdr {
            flags: FLAG_NEEDS_CSUM | FLAG_DATA_VALID,
            gso_type: GSO_TCPV4 | GSO_ECN,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            hdr_len: 54,
            num_buffers: 7,
        };
        let all = F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_ECN;
        let pass = Action::PassThrough.rx_header(all, &tso4);
        assert_eq!(
            pass,
            VnetHdr {
                flags: FLAG_NEEDS_CSUM,
                num_buffers: 0,
                ..tso4
            },
            "DATA_VALID and num_buffers dropped"
        );
        assert_eq!(
            Action::Segment.rx_header(all, &tso4),
            VnetHdr {
                flags: FLAG_DATA_VALID,
                ..VnetHdr::default()
            }
        );
        assert_eq!(Action::Segment.rx_header(0, &tso4), VnetHdr::default());
        assert_eq!(
            Action::FinalizeChecksum.rx_header(0, &tso4),
            VnetHdr::default()
        );
        let dv = VnetHdr {
            flags: FLAG_DATA_VALID,
            ..VnetHdr::default()
        };
        assert_eq!(Action::PassThrough.rx_header(all, &dv), VnetHdr::default());
    }

    #[test]
    fn test_caps_check_tx() {
        let h = VnetHdr {
            flags: FLAG_NEEDS_CSUM,
            gso_type: GSO_TCPV6 | GSO_ECN,
            gso_size: 1000,
            ..VnetHdr::default()
        };
        check_tx(F_CSUM | F_HOST_TSO6 | F_HOST_ECN, &h).unwrap();
        assert_eq!(
            check_tx(F_CSUM | F_HOST_TSO6, &h),
            Err(OffloadError::NotNegotiated)
        );
        assert_eq!(
            check_tx(F_CSUM | F_HOST_TSO4 | F_HOST_ECN, &h),
            Err(OffloadError::NotNegotiated)
        );
        assert_eq!(
            check_tx(F_HOST_TSO6 | F_HOST_ECN, &h),
            Err(OffloadError::NotNegotiated)
        );
        let v4 = VnetHdr {
            gso_type: GSO_TCPV4,
            ..h
        };
        check_tx(F_CSUM | F_HOST_TSO4, &v4).unwrap();
        check_tx(0, &VnetHdr::default()).unwrap();
        check_tx(
            F_CSUM,
            &VnetHdr {
                flags: FLAG_NEEDS_CSUM,
                ..VnetHdr::default()
            },
        )
        .unwrap();
    }

    // ---- hostile input ----

    /// Runs every entry point on (hdr, frame); nothing may panic, and what
    /// validates must segment and finalize.
    fn exercise(hdr: &VnetHdr, frame: &[u8], out: &mut [u8]) {
        let ok = validate(hdr, frame).is_ok();
        let mut total = 0usize;
        let r = segment(frame, hdr, out, |s| {
            assert!(s.len() <= frame.len());
            total += 1;
        });
        assert_eq!(r.is_ok(), ok, "segment agrees with validate: {hdr:?} {r:?}");
        if let Ok(n) = r {
            assert_eq!(n, total);
            assert!((1..=MAX_GSO_SEGS).contains(&n));
        }
        let mut g = frame.to_vec();
        let fin = finalize_checksum(&mut g, hdr.csum_start, hdr.csum_offset);
        if ok && hdr.needs_csum() {
            assert!(fin.is_ok());
        }
        if let Some((s, o)) = partial_csum_location(frame) {
            assert!(usize::from(s) + usize::from(o) + 2 <= frame.len());
            let mut g = frame.to_vec();
            finalize_checksum(&mut g, s, o).unwrap();
        }
        let mut g = frame.to_vec();
        if let Ok(h) = gso_from_frame(&mut g, hdr.gso_size) {
            validate(&h, &g).unwrap();
        }
        let _ = caps::decide(u64::from(hdr.flags) << 7, hdr);
        let _ = hdr.shift_offsets(i32::from(hdr.hdr_len as i16));
    }

    #[test]
    fn test_random_bytes_never_panic() {
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        let mut out = vec![0u8; 70_000];
        let mut frame = vec![0u8; 2000];
        for _ in 0..20_000 {
            let len = rng.below(frame.len());
            rng.fill(&mut frame[..len]);
            // Make IP-looking frames likely.
            if len > 14 && rng.below(2) == 0 {
                frame[12..14].copy_from_slice(if rng.below(2) == 0 {
                    &[0x08, 0]
                } else {
                    &[0x86, 0xdd]
                });
                frame[14] = if frame[13] == 0 { 0x45 } else { 0x60 };
            }
            let mut hb = [0u8; 12];
            rng.fill(&mut hb);
            let mut hdr = VnetHdr::from_bytes(&hb);
            if rng.below(2) == 0 {
                hdr.gso_type &= 0x85;
                hdr.csum_start %= 80;
                hdr.csum_offset %= 20;
            }
            exercise(&hdr, &frame[..len], &mut out);
        }
    }

    #[test]
    fn test_mutated_valid_frames_never_panic() {
        let mut rng = Rng(0x0123_4567_89ab_cdef);
        let mut out = vec![0u8; 70_000];
        let mut seeds = Vec::new();
        for (v6, vlan, ext, payload) in [
            (false, None, false, 3000),
            (true, Some(5), true, 2000),
            (false, Some(1), false, 60),
            (true, None, false, 5000),
        ] {
            let mut b = build(&Pkt {
                v6,
                vlan,
                v6_ext: ext,
                payload,
                tcp_opts: 4,
                ..Pkt::default()
            });
            make_partial(&mut b, false);
            let h = gso_hdr(&b, v6, 700);
            validate(&h, &b.frame).unwrap();
            seeds.push((h, b.frame));
        }
        let mut valid = 0;
        for i in 0..20_000 {
            let (h, f) = &seeds[i % seeds.len()];
            let mut f = f.clone();
            let mut h = *h;
            for _ in 0..1 + rng.below(3) {
                match rng.below(6) {
                    0 => {
                        if !f.is_empty() {
                            let at = rng.below(f.len().min(80));
                            f[at] = rng.next() as u8;
                        }
                    }
                    1 => f.truncate(rng.below(f.len() + 1)),
                    2 => h.gso_size = rng.next() as u16 % 2000,
                    3 => {
                        h.csum_start = h
                            .csum_start
                            .wrapping_add(rng.below(9) as u16)
                            .wrapping_sub(4)
                    }
                    4 => h.gso_type ^= 1 << rng.below(8),
                    _ => h.flags ^= 1 << rng.below(2),
                }
            }
            if validate(&h, &f).is_ok() && h.is_gso() {
                valid += 1;
                // Whatever survived validation must segment into valid frames.
                let mut n = 0;
                segment(&f, &h, &mut out, |s| {
                    let l3 = l2len(s);
                    if s[l3] >> 4 == 4 {
                        assert!(ipv4_hdr_ok(s));
                    }
                    assert!(l4_ok(s, usize::from(h.csum_start), s.len(), 6));
                    n += 1;
                })
                .unwrap();
                assert!(n >= 1);
            }
            exercise(&h, &f, &mut out);
        }
        assert!(
            valid > 1000,
            "the mutations keep enough valid frames ({valid})"
        );
    }
}
