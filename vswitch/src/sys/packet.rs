//! AF_PACKET socket with TPACKET_V3 RX and TX rings, bound to one host interface.
//!
//! # Ring layout
//!
//! One shared mapping holds the RX ring followed by the TX ring, as the kernel
//! requires when both rings live on one socket:
//!
//! ```text
//! 0                                rx_blocks * block_size
//! | RX block 0 | ... | RX block n-1 | TX block 0 | ... | TX block m-1 |
//! ```
//!
//! An RX block starts with a `tpacket_block_desc`. The kernel packs variable-size
//! frames into it (each a `tpacket3_hdr`, chained by `tp_next_offset`) and hands
//! the whole block over by setting `TP_STATUS_USER` in `block_status`, once it is
//! full or `retire_blk_tov` after it got its first frame. We give it back with
//! `TP_STATUS_KERNEL` once every frame in it has been visited.
//!
//! A TX block is cut into fixed-size slots (`frame_size` bytes, none straddling a
//! block). A slot is a `tpacket3_hdr` followed, at [`TX_DATA_OFFSET`], by the
//! frame. We own a slot while its `tp_status` is `TP_STATUS_AVAILABLE` and hand
//! it over with `TP_STATUS_SEND_REQUEST`. The kernel transmits straight from the
//! ring (the skb points into the slot) and makes the slot available again only
//! when the driver has released the buffer, which can be after `send()` returned.
//!
//! # Memory ordering
//!
//! The status words are the only fields both sides access while the other one may
//! be looking. We read them with acquire ordering (the kernel wrote the block or
//! slot before publishing its status) and write them with release ordering (our
//! writes to the slot come before the kernel sees the new status). Everything
//! else in a block or slot is plain memory touched only by its current owner.

use std::ffi::CString;
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use libc::{c_int, c_void, socklen_t};

/// Smallest ring block. The kernel hands RX blocks over when full or after
/// [`RETIRE_BLOCK_MS`], so under light load every block carries one timeout's
/// worth of frames and the ring absorbs `rx_blocks * RETIRE_BLOCK_MS` of reader
/// stall whatever its size in bytes: many small blocks beat a few big ones
/// (64 KiB holds 40 full 1518-byte frames). A power of two, as the kernel
/// allocates a block as one page order.
const MIN_BLOCK_SIZE: usize = 128 << 10;
/// A block holds at least this many frames of `max_frame`.
const MIN_FRAMES_PER_BLOCK: usize = 4;
/// Bytes of the RX ring: 64 blocks of 64 KiB for MTUs up to ~16000.
const RX_RING_BYTES: usize = 4 << 20;
/// The RX ring has at least this many blocks.
const RX_BLOCKS_MIN: usize = 8;
/// The TX ring gets enough blocks for this many slots...
const TX_SLOTS_TARGET: usize = 512;
/// ...within this many bytes (but at least one block).
const TX_RING_BYTES_MAX: usize = 2 << 20;
/// How long the kernel keeps a partly filled RX block before handing it over, ms.
const RETIRE_BLOCK_MS: u32 = 1;
/// Smallest `max_frame`: an Ethernet header.
const MIN_FRAME: usize = crate::wire::ETH_HLEN;
/// Largest `max_frame` the rings are sized for.
const MAX_FRAME: usize = 65535;
/// Timestamp bits the kernel may OR into a TX slot's status when it frees it.
const TX_TS_BITS: u32 =
    libc::TP_STATUS_TS_SOFTWARE | libc::TP_STATUS_TS_SYS_HARDWARE | libc::TP_STATUS_TS_RAW_HARDWARE;
/// Offset of the frame in a TX slot: the kernel reads it at
/// `tp_hdrlen - sizeof(sockaddr_ll)`, i.e. right after the aligned `tpacket3_hdr`.
pub const TX_DATA_OFFSET: usize = libc::TPACKET3_HDRLEN - size_of::<libc::sockaddr_ll>();
/// Offset of `block_status` in a `tpacket_block_desc` (`hdr` is a union whose
/// only member, `bh1`, starts at its beginning).
const BLOCK_STATUS_OFFSET: usize =
    offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, block_status);
/// Offset of `tp_status` in a `tpacket3_hdr`.
const FRAME_STATUS_OFFSET: usize = offset_of!(libc::tpacket3_hdr, tp_status);

/// Value of boolean socket options.
const ONE: c_int = 1;

const fn align_up(x: usize, to: usize) -> usize {
    (x + to - 1) & !(to - 1)
}

/// Sizes of both rings for one `max_frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes per block, both rings.
    pub block_size: usize,
    /// Blocks in the RX ring.
    pub rx_blocks: usize,
    /// Blocks in the TX ring.
    pub tx_blocks: usize,
    /// TX slot size; also the RX frame size the kernel checks the request against
    /// (RX frames are packed by their real size).
    pub frame_size: usize,
}

impl Geometry {
    /// The rings for frames of up to `max_frame` bytes (Ethernet header onward).
    pub fn for_max_frame(max_frame: usize) -> io::Result<Geometry> {
        if !(MIN_FRAME..=MAX_FRAME).contains(&max_frame) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("max frame size {max_frame} out of range {MIN_FRAME}..={MAX_FRAME}"),
            ));
        }
        // A TX slot needs room for the header the kernel reads plus the frame; the
        // kernel also insists on at least TPACKET3_HDRLEN, 16-byte aligned.
        let frame_size = align_up(libc::TPACKET3_HDRLEN + max_frame, libc::TPACKET_ALIGNMENT);
        let block_size = (frame_size * MIN_FRAMES_PER_BLOCK)
            .next_power_of_two()
            .max(MIN_BLOCK_SIZE);
        let per_block = block_size / frame_size;
        let tx_blocks_max = (TX_RING_BYTES_MAX / block_size).max(1);
        Ok(Geometry {
            block_size,
            rx_blocks: (RX_RING_BYTES / block_size).max(RX_BLOCKS_MIN),
            tx_blocks: TX_SLOTS_TARGET.div_ceil(per_block).clamp(1, tx_blocks_max),
            frame_size,
        })
    }

    /// TX slots (or RX frame-size units) per block.
    pub fn frames_per_block(&self) -> usize {
        self.block_size / self.frame_size
    }

    /// Bytes of the RX ring, which starts the mapping.
    pub fn rx_bytes(&self) -> usize {
        self.block_size * self.rx_blocks
    }

    /// Bytes of the TX ring, which follows the RX ring.
    pub fn tx_bytes(&self) -> usize {
        self.block_size * self.tx_blocks
    }

    /// Slots in the TX ring.
    pub fn tx_slots(&self) -> usize {
        self.frames_per_block() * self.tx_blocks
    }

    /// Frame bytes a TX slot holds.
    pub fn tx_capacity(&self) -> usize {
        self.frame_size - TX_DATA_OFFSET
    }

    fn req(&self, blocks: usize, retire_ms: u32) -> io::Result<libc::tpacket_req3> {
        let u = |v: usize| {
            u32::try_from(v)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ring too large"))
        };
        Ok(libc::tpacket_req3 {
            tp_block_size: u(self.block_size)?,
            tp_block_nr: u(blocks)?,
            tp_frame_size: u(self.frame_size)?,
            tp_frame_nr: u(self.frames_per_block() * blocks)?,
            tp_retire_blk_tov: retire_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        })
    }
}

/// One received frame, lent out of the RX ring for the length of a visit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxFrame<'a> {
    /// The frame as the interface delivered it, from the Ethernet header on, no
    /// FCS. When `vlan` is set the kernel has taken the 802.1Q tag out of it.
    pub data: &'a [u8],
    /// VLAN id of the 802.1Q tag the kernel stripped (a tag with VLAN id 0, a
    /// priority tag, reads as `None`).
    pub vlan: Option<u16>,
    /// The sender left the L4 checksum to offload (`TP_STATUS_CSUMNOTREADY`): the
    /// checksum field holds only the pseudo-header sum.
    pub csum_not_ready: bool,
}

/// Frames and slots the rings skipped, since the socket was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Received frames the kernel had to cut short (bigger than an RX block,
    /// 64 KiB for MTUs up to ~16000); not delivered.
    pub rx_truncated: u64,
    /// Received frames whose stripped tag was not 802.1Q (e.g. an 802.1ad S-tag); not delivered.
    pub rx_unsupported_tag: u64,
    /// RX blocks whose descriptors did not fit the block; given back unread.
    pub rx_bad_blocks: u64,
    /// Received frames whose checksum the sending host left for offload
    /// (`TP_STATUS_CSUMNOTREADY`): delivered as they are.
    pub rx_csum_not_ready: u64,
    /// TX slots the kernel refused as `TP_STATUS_WRONG_FORMAT`; reset and reused.
    pub tx_wrong_format: u64,
    /// `tx_commit` lengths outside `ETH_HLEN..=tx_capacity`; the slot was not sent.
    pub tx_bad_length: u64,
}

/// What the kernel said about a frame's VLAN tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrippedTag {
    /// No tag was stripped (or a priority tag with VLAN id 0).
    None,
    /// An 802.1Q tag with this VLAN id was stripped.
    Vlan(u16),
    /// A tag with another TPID (802.1ad) was stripped: the frame cannot be
    /// represented as `RxFrame`.
    Unsupported,
}

fn stripped_tag(status: u32, tci: u32, tpid: u16) -> StrippedTag {
    if status & libc::TP_STATUS_VLAN_VALID == 0 {
        return StrippedTag::None;
    }
    if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 && tpid != crate::wire::ETH_P_8021Q {
        return StrippedTag::Unsupported;
    }
    match (tci & 0x0fff) as u16 {
        0 => StrippedTag::None,
        vid => StrippedTag::Vlan(vid),
    }
}

/// The RX half: TPACKET_V3 blocks and a cursor into them.
#[derive(Debug)]
struct RxRing {
    base: NonNull<u8>,
    block_size: usize,
    blocks: usize,
    /// Block being read (or to be read next).
    block: usize,
    /// Frames still to visit in `block`; 0 = `block` not opened yet.
    left: u32,
    /// Offset in `block` of the next frame to visit.
    offset: usize,
}

impl RxRing {
    /// A reader starting at block 0.
    ///
    /// # Safety
    ///
    /// `base` must point to `blocks * block_size` bytes, 8-byte aligned, readable
    /// and writable for the life of the returned ring, laid out as TPACKET_V3 RX
    /// blocks whose `block_status` starts as `TP_STATUS_KERNEL` or `TP_STATUS_USER`.
    /// Nothing else may write to a block while its `block_status` has
    /// `TP_STATUS_USER` set, except that this ring may hand it back.
    /// `block_size` must be a multiple of 8.
    unsafe fn new(base: NonNull<u8>, block_size: usize, blocks: usize) -> RxRing {
        RxRing {
            base,
            block_size,
            blocks,
            block: 0,
            left: 0,
            offset: 0,
        }
    }

    fn block_ptr(&self, block: usize) -> *mut u8 {
        debug_assert!(block < self.blocks);
        // SAFETY: block < blocks, so the offset stays inside the ring (contract of `new`).
        unsafe { self.base.as_ptr().add(block * self.block_size) }
    }

    fn block_status(&self, block: usize) -> &AtomicU32 {
        // SAFETY: the status word lies inside the block, is 4-byte aligned (block
        // start 8-aligned, offset 8) and lives as long as the ring; both sides access
        // it only as a whole, aligned u32 (the kernel with READ_ONCE/WRITE_ONCE).
        unsafe { AtomicU32::from_ptr(self.block_ptr(block).add(BLOCK_STATUS_OFFSET).cast()) }
    }

    /// Hands the current block back to the kernel and moves to the next one.
    fn release_block(&mut self) {
        // Release: every read of the block's frames happened before the kernel may
        // overwrite them.
        self.block_status(self.block)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.left = 0;
        self.offset = 0;
        self.block = (self.block + 1) % self.blocks;
    }

    fn burst(
        &mut self,
        max: usize,
        stats: &mut RingStats,
        f: &mut impl FnMut(RxFrame<'_>),
    ) -> usize {
        let hdr_len = size_of::<libc::tpacket3_hdr>();
        let mut visited = 0;
        while visited < max {
            let block = self.block_ptr(self.block);
            if self.left == 0 {
                // Acquire: the kernel's writes to the block happen before we read it.
                let status = self.block_status(self.block).load(Ordering::Acquire);
                if status & libc::TP_STATUS_USER == 0 {
                    break;
                }
                // SAFETY: the block is ours (TP_STATUS_USER) and starts with a
                // tpacket_block_desc (contract of `new`); read_unaligned needs no alignment.
                let desc = unsafe {
                    block
                        .cast::<libc::tpacket_block_desc>()
                        .read_unaligned()
                        .hdr
                        .bh1
                };
                if desc.num_pkts == 0 {
                    self.release_block();
                    continue;
                }
                self.left = desc.num_pkts;
                self.offset = desc.offset_to_first_pkt as usize;
            }
            let off = self.offset;
            if off
                .checked_add(hdr_len)
                .is_none_or(|end| end > self.block_size)
            {
                stats.rx_bad_blocks += 1;
                self.release_block();
                continue;
            }
            // SAFETY: off + header size <= block_size (checked), the block is ours.
            let hdr = unsafe { block.add(off).cast::<libc::tpacket3_hdr>().read_unaligned() };
            let start = off + usize::from(hdr.tp_mac);
            let len = hdr.tp_snaplen as usize;
            if start
                .checked_add(len)
                .is_none_or(|end| end > self.block_size)
            {
                stats.rx_bad_blocks += 1;
                self.release_block();
                continue;
            }
            self.left -= 1;
            self.offset = off + hdr.tp_next_offset as usize;
            let tag = stripped_tag(hdr.tp_status, hdr.hv1.tp_vlan_tci, hdr.hv1.tp_vlan_tpid);
            if hdr.tp_snaplen < hdr.tp_len {
                stats.rx_truncated += 1;
            } else if tag == StrippedTag::Unsupported {
                stats.rx_unsupported_tag += 1;
            } else {
                let csum_not_ready = hdr.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0;
                if csum_not_ready {
                    stats.rx_csum_not_ready += 1;
                }
                let vlan = match tag {
                    StrippedTag::Vlan(vid) => Some(vid),
                    StrippedTag::None | StrippedTag::Unsupported => None,
                };
                // SAFETY: start..start+len lies inside the block (checked above); the
                // block stays ours and unmodified until release_block, which runs only
                // after `f` returned, and `f` cannot keep the borrow (higher-ranked).
                let data = unsafe { std::slice::from_raw_parts(block.add(start), len) };
                f(RxFrame {
                    data,
                    vlan,
                    csum_not_ready,
                });
                visited += 1;
            }
            if self.left == 0 {
                self.release_block();
            }
        }
        visited
    }
}

/// The TX half: fixed-size slots used in ring order.
#[derive(Debug)]
struct TxRing {
    base: NonNull<u8>,
    block_size: usize,
    frame_size: usize,
    per_block: usize,
    slots: usize,
    capacity: usize,
    /// Next slot to fill.
    head: usize,
    /// `tx_slot` returned `head` and `tx_commit` has not consumed it yet.
    slot_lent: bool,
    /// Slot committed last.
    last: usize,
    /// Committed slots may be waiting for a `send()`.
    pending: bool,
}

impl TxRing {
    /// A writer starting at slot 0.
    ///
    /// # Safety
    ///
    /// `base` must point to `geo.tx_bytes()` bytes, 16-byte aligned, readable and
    /// writable for the life of the returned ring, laid out as a TPACKET_V3 TX
    /// ring of `geo` (slots of `geo.frame_size`, `geo.frames_per_block()` per
    /// block) whose `tp_status` words start as `TP_STATUS_AVAILABLE`. Nothing else
    /// may touch a slot while its status is `TP_STATUS_AVAILABLE` or
    /// `TP_STATUS_WRONG_FORMAT`. `geo.frame_size` must be a multiple of 16, larger
    /// than [`TX_DATA_OFFSET`] and at most `geo.block_size`.
    unsafe fn new(base: NonNull<u8>, geo: &Geometry) -> TxRing {
        TxRing {
            base,
            block_size: geo.block_size,
            frame_size: geo.frame_size,
            per_block: geo.frames_per_block(),
            slots: geo.tx_slots(),
            capacity: geo.tx_capacity(),
            head: 0,
            slot_lent: false,
            last: 0,
            pending: false,
        }
    }

    fn slot_ptr(&self, slot: usize) -> *mut u8 {
        debug_assert!(slot < self.slots);
        let off = slot / self.per_block * self.block_size + slot % self.per_block * self.frame_size;
        // SAFETY: slot < slots, so the slot lies inside the ring (contract of `new`).
        unsafe { self.base.as_ptr().add(off) }
    }

    fn status(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: tp_status lies inside the slot, 4-byte aligned (slots 16-aligned,
        // offset 20), lives as long as the ring, and both sides access it only as a
        // whole aligned u32 (the kernel with READ_ONCE/WRITE_ONCE).
        unsafe { AtomicU32::from_ptr(self.slot_ptr(slot).add(FRAME_STATUS_OFFSET).cast()) }
    }

    fn slot(&mut self, stats: &mut RingStats) -> Option<&mut [u8]> {
        // Acquire: the kernel is done with the slot (the driver freed the skb that
        // pointed into it) before we write it.
        let status = self.status(self.head).load(Ordering::Acquire) & !TX_TS_BITS;
        match status {
            libc::TP_STATUS_AVAILABLE => {}
            libc::TP_STATUS_WRONG_FORMAT => {
                stats.tx_wrong_format += 1;
                self.status(self.head)
                    .store(libc::TP_STATUS_AVAILABLE, Ordering::Relaxed);
            }
            _ => return None,
        }
        self.slot_lent = true;
        // SAFETY: the slot is ours (AVAILABLE, acquired above) and frame_size bytes
        // long, so TX_DATA_OFFSET + capacity stays inside it; the returned borrow
        // keeps `self` mutably borrowed, so nothing else touches the slot meanwhile.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.slot_ptr(self.head).add(TX_DATA_OFFSET),
                self.capacity,
            )
        })
    }

    fn commit(&mut self, len: usize, stats: &mut RingStats) {
        if !std::mem::take(&mut self.slot_lent) {
            return;
        }
        if !(MIN_FRAME..=self.capacity).contains(&len) {
            stats.tx_bad_length += 1;
            return;
        }
        let len32 = u32::try_from(len).expect("len <= capacity < 2^32, checked above");
        let hdr = self.slot_ptr(self.head).cast::<libc::tpacket3_hdr>();
        // SAFETY: the slot is ours (tx_slot saw it AVAILABLE and nothing handed it
        // over since), starts with a tpacket3_hdr and is 16-byte aligned.
        unsafe {
            (&raw mut (*hdr).tp_next_offset).write(0);
            (&raw mut (*hdr).tp_len).write(len32);
            (&raw mut (*hdr).tp_snaplen).write(len32);
        }
        // Release: the frame and header writes happen before the kernel sees the request.
        self.status(self.head)
            .store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
        self.last = self.head;
        self.head = (self.head + 1) % self.slots;
        self.pending = true;
    }

    /// After a `send()`: whether committed slots are still waiting for the kernel
    /// (it takes slots in order, so checking the last committed one is enough).
    fn update_pending(&mut self) {
        self.pending = self.status(self.last).load(Ordering::Acquire) & !TX_TS_BITS
            == libc::TP_STATUS_SEND_REQUEST;
    }
}

/// A shared mapping of the socket's rings, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; the rings pointing into
        // the mapping are dropped with it (they are fields of the same PacketSocket
        // or were never built).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// An AF_PACKET socket bound to one interface, with a TPACKET_V3 RX ring and a
/// TPACKET_V3 TX ring, non-blocking, in promiscuous mode, deaf to frames the
/// host itself transmits on the interface.
#[derive(Debug)]
pub struct PacketSocket {
    rx: RxRing,
    tx: TxRing,
    stats: RingStats,
    kernel_drops: u64,
    // Held for its Drop. Declared after the rings (dropped after them, as they
    // point into it) and before the fd: unmap, then close.
    _map: Mapping,
    fd: OwnedFd,
}

// SAFETY: the only non-Send parts are the raw pointers into `map`, a mapping this
// socket owns exclusively and that is tied to no thread; every access to it goes
// through `&mut self` (or `&self` methods that do not touch it), and the kernel
// side synchronizes through the status words, whichever thread we run on.
unsafe impl Send for PacketSocket {}

/// `err` with the step and interface in its message; ENODEV/ENXIO become NotFound.
fn context(ifname: &str, step: &str, err: io::Error) -> io::Error {
    let (kind, hint) = match err.raw_os_error() {
        Some(libc::ENODEV | libc::ENXIO) => (io::ErrorKind::NotFound, ""),
        Some(libc::EPERM | libc::EACCES) => (err.kind(), " (needs CAP_NET_RAW)"),
        _ => (err.kind(), ""),
    };
    io::Error::new(kind, format!("{step} on interface {ifname}: {err}{hint}"))
}

fn setsockopt<T: Copy>(fd: &OwnedFd, level: c_int, name: c_int, value: &T) -> io::Result<()> {
    let len = socklen_t::try_from(size_of::<T>()).expect("socket option values are small");
    // SAFETY: `value` points to an initialized T of `len` bytes that outlives the
    // call; the kernel only reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<c_void>(),
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Index of `ifname` in the calling thread's network namespace.
fn ifindex(ifname: &str) -> io::Result<c_int> {
    if ifname.is_empty() || ifname.len() >= libc::IF_NAMESIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "invalid interface name {ifname:?}: 1 to {} bytes",
                libc::IF_NAMESIZE - 1
            ),
        ));
    }
    let name = CString::new(ifname).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {ifname:?}"),
        )
    })?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENODEV) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface named {ifname} in this network namespace (ENODEV)"),
            ));
        }
        return Err(context(ifname, "if_nametoindex", err));
    }
    c_int::try_from(index).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("interface {ifname}: index {index}"),
        )
    })
}

/// A non-blocking AF_PACKET socket with protocol 0: it receives nothing until
/// [`bind_all`], so options (rings, a filter) are in place before any frame.
fn packet_socket(ifname: &str) -> io::Result<OwnedFd> {
    // SAFETY: plain system call without pointers.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(context(
            ifname,
            "socket(AF_PACKET)",
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `raw` is a descriptor we just created and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Binds packet socket `fd` to `ifindex` for every protocol (`ETH_P_ALL`);
/// returns the address it was bound with.
fn bind_all(fd: &OwnedFd, ifname: &str, ifindex: c_int) -> io::Result<libc::sockaddr_ll> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = ifindex;
    let sll_len =
        socklen_t::try_from(size_of::<libc::sockaddr_ll>()).expect("sockaddr_ll is 20 bytes");
    // SAFETY: `sll` is an initialized sockaddr_ll of the length passed.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast::<libc::sockaddr>(),
            sll_len,
        )
    };
    if r != 0 {
        return Err(context(ifname, "bind", io::Error::last_os_error()));
    }
    Ok(sll)
}

/// Bytes of each frame [`IncomingFrames`]' filter passes up: only the count matters.
const COUNT_SNAP: u32 = 64;

/// Counts the frames an interface receives (not those it sends), except those of
/// some ethertypes, from when it was opened: a classic BPF filter on an AF_PACKET
/// socket, so nothing else is even queued. On a tap, "receives" is what the
/// process behind it (QEMU) wrote.
#[derive(Debug)]
pub struct IncomingFrames {
    ifname: String,
    fd: OwnedFd,
    seen: u64,
}

impl IncomingFrames {
    /// Opens the count on `ifname` (in the calling thread's network namespace),
    /// leaving out frames whose ethertype is in `skip`.
    pub fn open(ifname: &str, skip: &[u16]) -> io::Result<IncomingFrames> {
        let ifindex = ifindex(ifname)?;
        let fd = packet_socket(ifname)?;
        let mut program = incoming_filter(skip);
        let prog = libc::sock_fprog {
            len: u16::try_from(program.len()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "too many ethertypes to skip")
            })?,
            filter: program.as_mut_ptr(),
        };
        // The kernel copies the program during the call; `program` outlives it.
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)
            .map_err(|e| context(ifname, "setsockopt(SO_ATTACH_FILTER)", e))?;
        bind_all(&fd, ifname, ifindex)?;
        Ok(IncomingFrames {
            ifname: ifname.to_string(),
            fd,
            seen: 0,
        })
    }

    /// The frames counted since [`IncomingFrames::open`] (takes what is queued).
    pub fn seen(&mut self) -> io::Result<u64> {
        let mut buf = [0u8; COUNT_SNAP as usize];
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
                _ => return Err(context(&self.ifname, "recv", e)),
            }
        }
    }
}

/// Classic BPF: pass (the first [`COUNT_SNAP`] bytes of) a frame unless it is
/// outgoing (`PACKET_OUTGOING`) or its ethertype is in `skip`.
fn incoming_filter(skip: &[u16]) -> Vec<libc::sock_filter> {
    let op = |code: u32| u16::try_from(code).expect("BPF opcodes are 16-bit");
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: op(code),
        jt: 0,
        jf: 0,
        k,
    };
    // Jumps to the final drop from the instruction at `at` of `len` in all.
    let jeq_drop = |k: u32, at: usize, len: usize| libc::sock_filter {
        code: op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K),
        jt: u8::try_from(len - 2 - at).expect("a short program"),
        jf: 0,
        k,
    };
    // load pkttype, jeq, load ethertype, one jeq per skip, accept, drop.
    let len = 5 + skip.len();
    // The ancillary load of the packet type: SKF_AD_OFF + SKF_AD_PKTTYPE, as the
    // unsigned k the kernel reads.
    let pkttype = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE).cast_unsigned();
    let mut f = vec![
        stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, pkttype),
        jeq_drop(u32::from(libc::PACKET_OUTGOING), 1, len),
        stmt(libc::BPF_LD | libc::BPF_H | libc::BPF_ABS, 12),
    ];
    for &ethertype in skip {
        f.push(jeq_drop(u32::from(ethertype), f.len(), len));
    }
    f.push(stmt(libc::BPF_RET | libc::BPF_K, COUNT_SNAP));
    f.push(stmt(libc::BPF_RET | libc::BPF_K, 0));
    f
}

impl PacketSocket {
    /// Opens `ifname` (in the calling thread's network namespace) for frames of
    /// up to `max_frame` bytes from the Ethernet header on.
    ///
    /// The socket is created with protocol 0, so it receives nothing until it is
    /// bound to the interface with `ETH_P_ALL`: no frame of another interface can
    /// sit in the ring from before the bind. Malformed TX slots are skipped by the
    /// kernel (`PACKET_LOSS`) instead of stalling the ring.
    pub fn open(ifname: &str, max_frame: usize) -> io::Result<PacketSocket> {
        let geo = Geometry::for_max_frame(max_frame)
            .map_err(|e| io::Error::new(e.kind(), format!("interface {ifname}: {e}")))?;
        let ifindex = ifindex(ifname)?;
        let ctx = |step: &'static str| move |e: io::Error| context(ifname, step, e);

        let fd = packet_socket(ifname)?;

        let v3 = libc::tpacket_versions::TPACKET_V3 as c_int;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_VERSION, &v3)
            .map_err(ctx("setsockopt(PACKET_VERSION, TPACKET_V3)"))?;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_LOSS, &ONE)
            .map_err(ctx("setsockopt(PACKET_LOSS)"))?;
        let rx_req = geo
            .req(geo.rx_blocks, RETIRE_BLOCK_MS)
            .map_err(ctx("RX ring"))?;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &rx_req)
            .map_err(ctx("setsockopt(PACKET_RX_RING)"))?;
        // A TX ring takes no block timeout, private area or feature bits (EINVAL otherwise).
        let tx_req = geo.req(geo.tx_blocks, 0).map_err(ctx("TX ring"))?;
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_TX_RING, &tx_req)
            .map_err(ctx("setsockopt(PACKET_TX_RING), needs kernel >= 4.11"))?;

        let len = geo.rx_bytes() + geo.tx_bytes();
        // SAFETY: a new shared mapping at an address the kernel picks; the kernel
        // checks that `len` is exactly the size of both rings.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(context(
                ifname,
                "mmap of the rings",
                io::Error::last_os_error(),
            ));
        }
        let map = Mapping {
            ptr: NonNull::new(ptr.cast()).ok_or_else(|| {
                io::Error::other(format!("interface {ifname}: rings mapped at address 0"))
            })?,
            len,
        };
        // SAFETY: the mapping starts with the RX ring set up above (rx_blocks
        // blocks of block_size, page aligned, kernel-initialized to
        // TP_STATUS_KERNEL) and lives as long as the PacketSocket that owns both
        // (`map` is a field dropped after the rings). The kernel writes a block
        // only while it is TP_STATUS_KERNEL.
        let rx = unsafe { RxRing::new(map.ptr, geo.block_size, geo.rx_blocks) };
        // SAFETY: the TX ring follows the RX ring in the mapping (kernel layout);
        // rx_bytes() is a multiple of the block size so the pointer stays page
        // aligned and inside the mapping, which is len = rx_bytes + tx_bytes long.
        let tx_base = unsafe { map.ptr.add(geo.rx_bytes()) };
        // SAFETY: tx_base holds the TX ring of `geo` set up above, zeroed
        // (TP_STATUS_AVAILABLE) by the kernel, living as long as `map`; the kernel
        // reads a slot only once it is TP_STATUS_SEND_REQUEST.
        let tx = unsafe { TxRing::new(tx_base, &geo) };

        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &ONE).map_err(ctx(
            "setsockopt(PACKET_IGNORE_OUTGOING), needs kernel >= 4.20",
        ))?;
        // Frames in flight hold socket send buffer until the driver frees them; let
        // the whole TX ring be in flight. Best effort: SO_SNDBUFFORCE needs
        // CAP_NET_ADMIN and SO_SNDBUF is capped by net.core.wmem_max.
        let sndbuf = c_int::try_from(geo.tx_bytes()).unwrap_or(c_int::MAX);
        if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, &sndbuf).is_err() {
            let _ = setsockopt(&fd, libc::SOL_SOCKET, libc::SO_SNDBUF, &sndbuf);
        }

        let mut sll = bind_all(&fd, ifname, ifindex)?;
        let mut bound_len =
            socklen_t::try_from(size_of::<libc::sockaddr_ll>()).expect("sockaddr_ll is 20 bytes");
        // SAFETY: `sll` is writable for `bound_len` bytes, which the kernel updates.
        let r = unsafe {
            libc::getsockname(
                fd.as_raw_fd(),
                (&raw mut sll).cast::<libc::sockaddr>(),
                &mut bound_len,
            )
        };
        if r != 0 {
            return Err(context(ifname, "getsockname", io::Error::last_os_error()));
        }
        if sll.sll_hatype != libc::ARPHRD_ETHER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "interface {ifname} is not an Ethernet device (ARPHRD type {})",
                    sll.sll_hatype
                ),
            ));
        }

        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
            .map_err(ctx("setsockopt(PACKET_ADD_MEMBERSHIP, PACKET_MR_PROMISC)"))?;

        let sock = PacketSocket {
            rx,
            tx,
            stats: RingStats::default(),
            kernel_drops: 0,
            _map: map,
            fd,
        };
        // Binding a down interface leaves ENETDOWN pending (EPOLLERR) although the
        // socket starts receiving once the interface comes up: clear it.
        let _ = sock.take_error();
        Ok(sock)
    }

    /// The descriptor, for epoll: readable when an RX block is ready, writable when
    /// the next TX slot is free. Owned by the socket.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Visits up to `max` received frames in arrival order, resuming where the
    /// previous call stopped, and returns how many were visited. Blocks are handed
    /// back to the kernel as soon as all their frames have been visited.
    ///
    /// The kernel publishes a block when it is full or `RETIRE_BLOCK_MS` (1 ms)
    /// after its first frame, so a frame can take that long to show up.
    pub fn rx_burst(&mut self, max: usize, mut f: impl FnMut(RxFrame<'_>)) -> usize {
        self.rx.burst(max, &mut self.stats, &mut f)
    }

    /// The data area of the next free TX slot, [`PacketSocket::tx_capacity`] bytes
    /// long, or `None` while the ring is full. Write a frame into it, then
    /// [`PacketSocket::tx_commit`] it. Asking again without committing returns
    /// the same slot.
    pub fn tx_slot(&mut self) -> Option<&mut [u8]> {
        self.tx.slot(&mut self.stats)
    }

    /// Queues the first `len` bytes of the slot [`PacketSocket::tx_slot`] returned
    /// for sending by the next [`PacketSocket::tx_flush`]. Does nothing if no slot
    /// was taken; a `len` below an Ethernet header or above the capacity leaves
    /// the slot free and is counted in [`RingStats::tx_bad_length`].
    pub fn tx_commit(&mut self, len: usize) {
        self.tx.commit(len, &mut self.stats);
    }

    /// Asks the kernel to send the committed slots, if any, without blocking.
    /// Congestion (EAGAIN, ENOBUFS) is not an error: the slots stay queued and the
    /// next call retries them. Other errors (e.g. ENETDOWN) are returned.
    pub fn tx_flush(&mut self) -> io::Result<()> {
        if !self.tx.pending {
            return Ok(());
        }
        // SAFETY: a NULL, zero-length buffer is what TX ring sends take: the kernel
        // reads the frames from the ring.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT) };
        let result = if r < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR) => Ok(()),
                _ => Err(err),
            }
        } else {
            Ok(())
        };
        self.tx.update_pending();
        result
    }

    /// Frame bytes a TX slot holds (at least the `max_frame` given to `open`).
    pub fn tx_capacity(&self) -> usize {
        self.tx.capacity
    }

    /// Frames the kernel dropped since the socket was opened because the RX ring
    /// was full (PACKET_STATISTICS, which resets on read, accumulated here).
    pub fn kernel_drops(&mut self) -> u64 {
        let mut st = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = socklen_t::try_from(size_of::<libc::tpacket_stats_v3>())
            .expect("tpacket_stats_v3 is 12 bytes");
        // SAFETY: `st` is writable for `len` bytes, which the kernel updates.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut st).cast::<c_void>(),
                &mut len,
            )
        };
        if r == 0 {
            self.kernel_drops += u64::from(st.tp_drops);
        }
        self.kernel_drops
    }

    /// Frames and slots the rings skipped since the socket was opened.
    pub fn stats(&self) -> RingStats {
        self.stats
    }

    /// Takes the socket's pending error (SO_ERROR), e.g. ENETDOWN after the
    /// interface went down, which otherwise keeps the descriptor in EPOLLERR.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        let mut err: c_int = 0;
        let mut len = socklen_t::try_from(size_of::<c_int>()).expect("int is 4 bytes");
        // SAFETY: `err` is writable for `len` bytes, which the kernel updates.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast::<c_void>(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((err != 0).then(|| io::Error::from_raw_os_error(err)))
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{alloc_zeroed, dealloc, Layout};
    use std::time::{Duration, Instant};

    use super::*;

    /// Every jump of the count's filter lands on the final drop, the accept is
    /// right before it, for any number of skipped ethertypes.
    #[test]
    fn incoming_filter_jumps_to_its_drop() {
        let ret = u16::try_from(libc::BPF_RET | libc::BPF_K).expect("16-bit");
        for skip in [&[][..], &[0x8035], &[0x8035, 0x88cc, 0x0806]] {
            let f = incoming_filter(skip);
            assert_eq!(f.len(), 5 + skip.len());
            let jumps: Vec<usize> = (0..f.len()).filter(|&i| f[i].jt != 0).collect();
            assert_eq!(jumps.len(), 1 + skip.len(), "{skip:?}");
            for i in jumps {
                let to = i + 1 + usize::from(f[i].jt);
                assert_eq!(to, f.len() - 1, "jump at {i}, {skip:?}");
            }
            assert_eq!((f[f.len() - 2].code, f[f.len() - 2].k), (ret, COUNT_SNAP));
            assert_eq!((f[f.len() - 1].code, f[f.len() - 1].k), (ret, 0));
        }
    }

    /// Runs `sh -c script` (in the calling thread's network namespace); panics
    /// unless it succeeds.
    fn sh(script: &str) {
        let out = std::process::Command::new("sh")
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
        let fd = packet_socket(ifname).expect("socket");
        let sll = bind_all(&fd, ifname, ifindex(ifname).expect("ifindex")).expect("bind");
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

    /// Waits until `w` has counted `want` frames (up to 5 s) and returns its count
    /// after another 200 ms, so that one too many would show.
    fn settled(w: &mut IncomingFrames, want: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.seen().expect("seen") < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(200));
        w.seen().expect("seen")
    }

    /// On a veth pair in a network namespace of this test's thread: frames that
    /// come in on the watched end count, a skipped ethertype (RARP) and frames
    /// sent out of it do not. Needs root (CI is root); fails without it.
    #[test]
    fn incoming_frames_count_all_but_skipped_and_outgoing() {
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
        let mut w = IncomingFrames::open("tapw", &[0x8035]).expect("open");
        assert_eq!(w.seen().expect("seen"), 0);
        // The other end sends: IPv4, ARP count; a RARP does not.
        send("guestw", &frame(0x0800));
        send("guestw", &frame(0x8035));
        send("guestw", &frame(0x0806));
        assert_eq!(settled(&mut w, 2), 2);
        // What goes out of the watched end does not count (it would be in
        // before the other end's next frame).
        send("tapw", &frame(0x0800));
        send("tapw", &frame(0x0806));
        send("guestw", &frame(0x86dd));
        assert_eq!(settled(&mut w, 3), 3);
        let e = IncomingFrames::open("nosuchtap", &[]).expect_err("no such interface");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(
            e.to_string().contains("no interface named nosuchtap"),
            "{e}"
        );
    }

    /// Zeroed, page-aligned memory standing in for the kernel's mapping; the
    /// tests play the kernel through `put`/`get`.
    struct FakeMem {
        ptr: NonNull<u8>,
        layout: Layout,
    }

    impl FakeMem {
        fn new(len: usize) -> FakeMem {
            let layout = Layout::from_size_align(len, 4096).expect("valid layout");
            // SAFETY: the layout has a non-zero size.
            let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("allocation");
            FakeMem { ptr, layout }
        }

        fn put(&self, off: usize, bytes: &[u8]) {
            assert!(off + bytes.len() <= self.layout.size());
            // SAFETY: in bounds (asserted); the rings only read this memory
            // between calls, never while the test writes it.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.ptr.as_ptr().add(off),
                    bytes.len(),
                )
            };
        }

        fn get(&self, off: usize, len: usize) -> Vec<u8> {
            assert!(off + len <= self.layout.size());
            // SAFETY: in bounds (asserted), initialized (zeroed at allocation).
            unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(off), len) }.to_vec()
        }

        fn put_u32(&self, off: usize, v: u32) {
            self.put(off, &v.to_ne_bytes());
        }

        fn get_u32(&self, off: usize) -> u32 {
            u32::from_ne_bytes(self.get(off, 4).try_into().expect("4 bytes"))
        }
    }

    impl Drop for FakeMem {
        fn drop(&mut self) {
            // SAFETY: allocated in `new` with this layout.
            unsafe { dealloc(self.ptr.as_ptr(), self.layout) };
        }
    }

    const BLOCK: usize = 4096;
    const BLOCKS: usize = 3;

    /// A received frame as the fake kernel writes it.
    #[derive(Clone)]
    struct Rx {
        data: Vec<u8>,
        status: u32,
        tci: u32,
        tpid: u16,
        wire_len: Option<u32>,
    }

    fn rx(data: &[u8]) -> Rx {
        Rx {
            data: data.to_vec(),
            status: libc::TP_STATUS_USER,
            tci: 0,
            tpid: 0,
            wire_len: None,
        }
    }

    fn block_status_of(mem: &FakeMem, block: usize) -> u32 {
        mem.get_u32(block * BLOCK + BLOCK_STATUS_OFFSET)
    }

    /// Fills `block` the way the kernel does and hands it to user space.
    fn kernel_fill(mem: &FakeMem, block: usize, frames: &[Rx]) {
        let base = block * BLOCK;
        let bh1 = base + offset_of!(libc::tpacket_block_desc, hdr);
        let first = align_up(size_of::<libc::tpacket_block_desc>(), 8);
        // Where the kernel puts the MAC header for SOCK_RAW on Ethernet.
        let mac = align_up(libc::TPACKET3_HDRLEN + 16, 16) - 14;
        let mut off = first;
        for (i, f) in frames.iter().enumerate() {
            let h = base + off;
            let next = align_up(mac + f.data.len(), 16);
            let last = i + 1 == frames.len();
            let len = u32::try_from(f.data.len()).expect("small");
            let u16_at = |field: usize, v: u16| mem.put(h + field, &v.to_ne_bytes());
            let u32_at = |field: usize, v: u32| mem.put_u32(h + field, v);
            u32_at(
                offset_of!(libc::tpacket3_hdr, tp_next_offset),
                if last { 0 } else { next as u32 },
            );
            u32_at(offset_of!(libc::tpacket3_hdr, tp_snaplen), len);
            u32_at(
                offset_of!(libc::tpacket3_hdr, tp_len),
                f.wire_len.unwrap_or(len),
            );
            u32_at(offset_of!(libc::tpacket3_hdr, tp_status), f.status);
            u16_at(offset_of!(libc::tpacket3_hdr, tp_mac), mac as u16);
            let hv1 = offset_of!(libc::tpacket3_hdr, hv1);
            u32_at(
                hv1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tci),
                f.tci,
            );
            u16_at(
                hv1 + offset_of!(libc::tpacket_hdr_variant1, tp_vlan_tpid),
                f.tpid,
            );
            mem.put(h + mac, &f.data);
            off += next;
        }
        assert!(off <= BLOCK, "test frames overflow the block");
        let field = |name_off: usize, v: u32| mem.put_u32(bh1 + name_off, v);
        field(
            offset_of!(libc::tpacket_hdr_v1, num_pkts),
            frames.len() as u32,
        );
        field(
            offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt),
            first as u32,
        );
        field(offset_of!(libc::tpacket_hdr_v1, blk_len), off as u32);
        field(
            offset_of!(libc::tpacket_hdr_v1, block_status),
            libc::TP_STATUS_USER,
        );
    }

    fn rx_ring(mem: &FakeMem) -> RxRing {
        // SAFETY: `mem` is BLOCKS * BLOCK zeroed (TP_STATUS_KERNEL) bytes, page
        // aligned, outliving the ring in every test; the fake kernel writes a
        // block only while the ring does not own it.
        unsafe { RxRing::new(mem.ptr, BLOCK, BLOCKS) }
    }

    fn collect(
        ring: &mut RxRing,
        stats: &mut RingStats,
        max: usize,
    ) -> Vec<(Vec<u8>, Option<u16>)> {
        let mut out = Vec::new();
        let n = ring.burst(max, stats, &mut |f: RxFrame<'_>| {
            out.push((f.data.to_vec(), f.vlan))
        });
        assert_eq!(n, out.len());
        out
    }

    fn payload(seq: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| seq.wrapping_mul(31).wrapping_add(i as u8))
            .collect()
    }

    #[test]
    fn test_rx_ring_ready_blocks_visited_in_order_and_given_back() {
        let mem = FakeMem::new(BLOCK * BLOCKS);
        let mut ring = rx_ring(&mem);
        let mut stats = RingStats::default();
        assert!(collect(&mut ring, &mut stats, 64).is_empty());
        let frames: Vec<Vec<u8>> = (0..5)
            .map(|i| payload(i, 60 + usize::from(i) * 100))
            .collect();
        kernel_fill(
            &mem,
            0,
            &frames[..3].iter().map(|d| rx(d)).collect::<Vec<_>>(),
        );
        kernel_fill(
            &mem,
            1,
            &frames[3..].iter().map(|d| rx(d)).collect::<Vec<_>>(),
        );
        let got = collect(&mut ring, &mut stats, 64);
        assert_eq!(
            got,
            frames.iter().map(|d| (d.clone(), None)).collect::<Vec<_>>()
        );
        assert_eq!(block_status_of(&mem, 0), libc::TP_STATUS_KERNEL);
        assert_eq!(block_status_of(&mem, 1), libc::TP_STATUS_KERNEL);
        assert!(collect(&mut ring, &mut stats, 64).is_empty());
        assert_eq!(stats, RingStats::default());
    }

    #[test]
    fn test_rx_ring_burst_limit_resumes_mid_block() {
        let mem = FakeMem::new(BLOCK * BLOCKS);
        let mut ring = rx_ring(&mem);
        let mut stats = RingStats::default();
        let frames: Vec<Vec<u8>> = (0..5).map(|i| payload(i, 64)).collect();
        kernel_fill(&mem, 0, &frames.iter().map(|d| rx(d)).collect::<Vec<_>>());
        let mut got = Vec::new();
        for _ in 0..2 {
            got.extend(collect(&mut ring, &mut stats, 2));
            assert_eq!(
                block_status_of(&mem, 0),
                libc::TP_STATUS_USER,
                "block given back early"
            );
        }
        got.extend(collect(&mut ring, &mut stats, 2));
        assert_eq!(got.len(), 5);
        assert!(got.iter().map(|(d, _)| d).eq(frames.iter()));
        assert_eq!(block_status_of(&mem, 0), libc::TP_STATUS_KERNEL);
        assert_eq!(collect(&mut ring, &mut stats, 0).len(), 0);
    }

    #[test]
    fn test_rx_ring_last_block_wraps_to_first() {
        let mem = FakeMem::new(BLOCK * BLOCKS);
        let mut ring = rx_ring(&mem);
        let mut stats = RingStats::default();
        for round in 0..(2 * BLOCKS + 1) {
            let d = payload(round as u8, 100);
            kernel_fill(&mem, round % BLOCKS, &[rx(&d)]);
            assert_eq!(
                collect(&mut ring, &mut stats, 8),
                vec![(d, None)],
                "round {round}"
            );
        }
    }

    #[test]
    fn test_rx_ring_tags_and_truncation_sorted_out() {
        let mem = FakeMem::new(BLOCK * BLOCKS);
        let mut ring = rx_ring(&mem);
        let mut stats = RingStats::default();
        let d = payload(1, 80);
        let user = libc::TP_STATUS_USER;
        let frames = [
            // 802.1Q tag, priority 1, VLAN 5.
            Rx {
                status: user | libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID,
                tci: 0x2005,
                tpid: 0x8100,
                ..rx(&d)
            },
            // Kernels without TPID reporting: 802.1Q assumed.
            Rx {
                status: user | libc::TP_STATUS_VLAN_VALID,
                tci: 7,
                ..rx(&d)
            },
            // 802.1ad S-tag: skipped.
            Rx {
                status: user | libc::TP_STATUS_VLAN_VALID | libc::TP_STATUS_VLAN_TPID_VALID,
                tci: 9,
                tpid: 0x88a8,
                ..rx(&d)
            },
            // Cut short: skipped.
            Rx {
                wire_len: Some(70_000),
                ..rx(&d)
            },
            // Checksum left to offload: delivered, counted.
            Rx {
                status: user | libc::TP_STATUS_CSUMNOTREADY,
                ..rx(&d)
            },
            // Priority tag only: no VLAN.
            Rx {
                status: user | libc::TP_STATUS_VLAN_VALID,
                tci: 0x6000,
                ..rx(&d)
            },
        ];
        kernel_fill(&mem, 0, &frames);
        let got: Vec<Option<u16>> = collect(&mut ring, &mut stats, 64)
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(got, vec![Some(5), Some(7), None, None]);
        assert_eq!(
            stats,
            RingStats {
                rx_truncated: 1,
                rx_unsupported_tag: 1,
                rx_csum_not_ready: 1,
                ..RingStats::default()
            }
        );
        assert_eq!(block_status_of(&mem, 0), libc::TP_STATUS_KERNEL);
    }

    #[test]
    fn test_rx_ring_corrupt_block_given_back_unread() {
        let mem = FakeMem::new(BLOCK * BLOCKS);
        let mut ring = rx_ring(&mem);
        let mut stats = RingStats::default();
        kernel_fill(&mem, 0, &[rx(&payload(1, 60))]);
        let bh1 = offset_of!(libc::tpacket_block_desc, hdr);
        mem.put_u32(
            bh1 + offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt),
            BLOCK as u32 - 8,
        );
        let good = payload(2, 60);
        kernel_fill(&mem, 1, &[rx(&good)]);
        assert_eq!(collect(&mut ring, &mut stats, 64), vec![(good, None)]);
        assert_eq!(stats.rx_bad_blocks, 1);
        assert_eq!(block_status_of(&mem, 0), libc::TP_STATUS_KERNEL);
    }

    /// 2 blocks of 2 slots (1600 bytes each, 896 bytes unused per block).
    fn tx_geometry() -> Geometry {
        Geometry {
            block_size: BLOCK,
            rx_blocks: 0,
            tx_blocks: 2,
            frame_size: 1600,
        }
    }

    fn tx_ring(mem: &FakeMem) -> TxRing {
        // SAFETY: `mem` holds tx_geometry().tx_bytes() zeroed (TP_STATUS_AVAILABLE)
        // bytes, page aligned, outliving the ring; frame_size 1600 is a multiple of
        // 16 above TX_DATA_OFFSET and below the block size.
        unsafe { TxRing::new(mem.ptr, &tx_geometry()) }
    }

    fn slot_off(slot: usize) -> usize {
        slot / 2 * BLOCK + slot % 2 * 1600
    }

    fn tx_status_of(mem: &FakeMem, slot: usize) -> u32 {
        mem.get_u32(slot_off(slot) + FRAME_STATUS_OFFSET)
    }

    #[test]
    fn test_tx_ring_commit_hands_slot_to_kernel_with_length() {
        let mem = FakeMem::new(tx_geometry().tx_bytes());
        let mut ring = tx_ring(&mem);
        let mut stats = RingStats::default();
        for slot in 0..4 {
            let buf = ring.slot(&mut stats).expect("free slot");
            assert_eq!(buf.len(), 1600 - TX_DATA_OFFSET);
            let frame = payload(slot as u8, 60 + slot);
            buf[..frame.len()].copy_from_slice(&frame);
            ring.commit(frame.len(), &mut stats);
            assert!(ring.pending);
            let off = slot_off(slot);
            assert_eq!(tx_status_of(&mem, slot), libc::TP_STATUS_SEND_REQUEST);
            assert_eq!(
                mem.get_u32(off + offset_of!(libc::tpacket3_hdr, tp_len)),
                frame.len() as u32
            );
            assert_eq!(
                mem.get_u32(off + offset_of!(libc::tpacket3_hdr, tp_next_offset)),
                0
            );
            assert_eq!(mem.get(off + TX_DATA_OFFSET, frame.len()), frame);
        }
        // Slot 2 starts the second block: slots never straddle blocks.
        assert_eq!(slot_off(2), BLOCK);
        assert!(ring.slot(&mut stats).is_none(), "ring of 4 is full");
        // The kernel sent everything.
        for slot in 0..4 {
            mem.put_u32(
                slot_off(slot) + FRAME_STATUS_OFFSET,
                libc::TP_STATUS_SENDING,
            );
        }
        ring.update_pending();
        assert!(!ring.pending);
        assert!(ring.slot(&mut stats).is_none(), "slot still in flight");
        // The driver freed slot 0, with a software timestamp bit.
        mem.put_u32(
            FRAME_STATUS_OFFSET,
            libc::TP_STATUS_AVAILABLE | libc::TP_STATUS_TS_SOFTWARE,
        );
        assert!(
            ring.slot(&mut stats).is_some(),
            "timestamp bits must not keep a slot busy"
        );
        assert_eq!(stats, RingStats::default());
    }

    #[test]
    fn test_tx_ring_wrong_format_slot_counted_and_reused() {
        let mem = FakeMem::new(tx_geometry().tx_bytes());
        let mut ring = tx_ring(&mem);
        let mut stats = RingStats::default();
        mem.put_u32(FRAME_STATUS_OFFSET, libc::TP_STATUS_WRONG_FORMAT);
        assert!(ring.slot(&mut stats).is_some());
        assert_eq!(stats.tx_wrong_format, 1);
        assert_eq!(tx_status_of(&mem, 0), libc::TP_STATUS_AVAILABLE);
    }

    #[test]
    fn test_tx_ring_bad_commit_leaves_slot_free() {
        let mem = FakeMem::new(tx_geometry().tx_bytes());
        let mut ring = tx_ring(&mem);
        let mut stats = RingStats::default();
        // No slot taken: nothing happens.
        ring.commit(60, &mut stats);
        assert!(!ring.pending);
        for bad in [0, MIN_FRAME - 1, 1600 - TX_DATA_OFFSET + 1] {
            assert!(ring.slot(&mut stats).is_some());
            ring.commit(bad, &mut stats);
            assert_eq!(
                tx_status_of(&mem, 0),
                libc::TP_STATUS_AVAILABLE,
                "len {bad}"
            );
        }
        assert_eq!(stats.tx_bad_length, 3);
        assert!(!ring.pending);
        assert!(ring.slot(&mut stats).is_some());
        ring.commit(1600 - TX_DATA_OFFSET, &mut stats);
        assert_eq!(tx_status_of(&mem, 0), libc::TP_STATUS_SEND_REQUEST);
    }

    #[test]
    fn test_geometry_standard_mtu_128k_blocks() {
        let g = Geometry::for_max_frame(1518).expect("valid");
        assert_eq!(
            g,
            Geometry {
                block_size: 128 << 10,
                rx_blocks: 32,
                tx_blocks: 7,
                frame_size: 1600
            }
        );
        // A 64 KiB TCP super-frame (veth TSO, GRO) and its header fit in one block.
        assert!(g.block_size > 65_535 + 14 + libc::TPACKET3_HDRLEN);
        assert_eq!(g.rx_bytes(), 4 << 20);
        assert_eq!(g.tx_slots(), 567);
        assert_eq!(g.tx_capacity(), 1552);
    }

    #[test]
    fn test_geometry_any_max_frame_meets_kernel_rules() {
        for max_frame in [MIN_FRAME, 64, 1518, 9018, 16_018, 32_000, MAX_FRAME] {
            let g = Geometry::for_max_frame(max_frame).expect("valid");
            let ctx = format!("max_frame {max_frame}: {g:?}");
            assert!(
                g.block_size.is_power_of_two() && g.block_size.is_multiple_of(4096),
                "{ctx}"
            );
            assert_eq!(g.frame_size % libc::TPACKET_ALIGNMENT, 0, "{ctx}");
            assert!(g.frame_size >= libc::TPACKET3_HDRLEN + max_frame, "{ctx}");
            assert!(g.tx_capacity() >= max_frame, "{ctx}");
            assert!(g.frames_per_block() >= MIN_FRAMES_PER_BLOCK, "{ctx}");
            assert!(
                g.rx_blocks >= RX_BLOCKS_MIN && g.rx_bytes() >= RX_RING_BYTES,
                "{ctx}"
            );
            assert!(
                g.tx_blocks >= 1
                    && (g.tx_slots() >= TX_SLOTS_TARGET || g.tx_bytes() >= TX_RING_BYTES_MAX),
                "{ctx}"
            );
            let rx = g.req(g.rx_blocks, RETIRE_BLOCK_MS).expect("fits u32");
            assert_eq!(
                rx.tp_frame_nr,
                rx.tp_block_nr * (rx.tp_block_size / rx.tp_frame_size),
                "{ctx}"
            );
        }
    }

    #[test]
    fn test_geometry_max_frame_out_of_range_rejected() {
        for bad in [0, MIN_FRAME - 1, MAX_FRAME + 1] {
            let e = Geometry::for_max_frame(bad).expect_err("out of range");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn test_stripped_tag_decoding() {
        let v = libc::TP_STATUS_VLAN_VALID;
        let t = libc::TP_STATUS_VLAN_TPID_VALID;
        assert_eq!(stripped_tag(0, 42, 0x8100), StrippedTag::None);
        assert_eq!(stripped_tag(v | t, 0xe02a, 0x8100), StrippedTag::Vlan(42));
        assert_eq!(stripped_tag(v, 4094, 0), StrippedTag::Vlan(4094));
        assert_eq!(stripped_tag(v | t, 42, 0x88a8), StrippedTag::Unsupported);
        assert_eq!(stripped_tag(v | t, 0x2000, 0x8100), StrippedTag::None);
    }

    #[test]
    fn test_packet_socket_missing_interface_not_found() {
        let e = PacketSocket::open("accelnet-nope9", 1518).expect_err("no such interface");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("accelnet-nope9"), "{e}");
        let e = PacketSocket::open("a\0b", 1518).expect_err("NUL in name");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        let e = PacketSocket::open("this-name-is-too-long", 1518).expect_err("name too long");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    }
}
