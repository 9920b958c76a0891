//! Test helpers: [`MockFrontend`], a vhost-user-net frontend that plays QEMU's part.
//!
//! It connects to a backend's unix socket, negotiates features like QEMU does, shares a
//! memfd-backed guest memory (so a backend in another process, e.g. DPDK, can map it),
//! and drives two split virtqueues written by hand in that memory: RX (queue 0,
//! device → driver) and TX (queue 1, driver → device).
//!
//! Guest memory layout (guest physical addresses, base [`GUEST_MEM_BASE`], deliberately
//! non-zero so address-0 and GPA/offset mix-ups land outside memory):
//!
//! | area | contents |
//! | --- | --- |
//! | rings | RX descriptor table, avail and used ring, then the same for TX |
//! | RX buffers | `rx_buffers` buffers of `rx_buf_len` bytes, buffer *i* behind descriptor *i* |
//! | TX buffers | one buffer of `tx_buf_len` bytes per TX descriptor index |
//! | scratch | the rest, for hand-built chains: see [`MockFrontend::data_addr`] |
//!
//! The frontend's "userspace addresses" (the QEMU virtual addresses sent in
//! SET_MEM_TABLE and SET_VRING_ADDR) are [`FRONTEND_VA_BASE`] + offset: they differ from
//! both the guest physical addresses and from where this process mapped the memory, so a
//! backend that confuses the three fails visibly even when it runs in the same process.
//!
//! TX descriptor indices `0..raw_descs` are reserved for hand-built chains
//! ([`MockFrontend::send_chain`]); [`MockFrontend::send`] uses the others.
//!
//! Backend misbehaviour seen on the RX ring (a used id that was never offered, a length
//! larger than the buffer, a `num_buffers` of 0) panics with a message: this is a test tool.
//!
//! Live migration's dirty log is played like QEMU too: [`MockFrontend::set_log_all`]
//! sends SET_FEATURES with or without `VHOST_F_LOG_ALL`, [`MockFrontend::set_log_base`]
//! shares a memfd log (one bit per 4 KiB guest page) with SET_LOG_BASE, and
//! [`MockFrontend::take_dirty_pages`] reads and clears it atomically as QEMU's log sync
//! does.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{
    Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::VhostUserDirtyLogRegion;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, VolatileMemory};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::sys::memfd::memfd_create;

/// Guest physical address where the mock's guest memory starts (1 GiB).
pub const GUEST_MEM_BASE: u64 = 0x4000_0000;
/// The frontend virtual address that stands for [`GUEST_MEM_BASE`] in vhost-user messages.
pub const FRONTEND_VA_BASE: u64 = 0x7e00_0000_0000;
/// Index of the receive queue (device → driver).
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue (driver → device).
pub const TX_QUEUE: usize = 1;
/// Descriptor flag: the chain continues at `next`.
pub const VRING_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VRING_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table.
pub const VRING_DESC_F_INDIRECT: u16 = 4;
/// virtio feature bit: VIRTIO_NET_F_MRG_RXBUF.
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
/// virtio feature bit: VIRTIO_RING_F_EVENT_IDX.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// virtio feature bit: VHOST_USER_F_PROTOCOL_FEATURES.
pub const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// virtio feature bit: VIRTIO_F_VERSION_1.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// vhost feature bit: VHOST_F_LOG_ALL (log every write to guest memory: migration).
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;
/// Guest memory covered by one bit of the dirty log.
pub const LOG_PAGE_SIZE: u64 = 4096;
/// Length of `virtio_net_hdr_v1` (VERSION_1 or MRG_RXBUF negotiated).
pub const VIRTIO_NET_HDR_LEN: usize = 12;
/// Length of the legacy `virtio_net_hdr` (neither VERSION_1 nor MRG_RXBUF).
pub const VIRTIO_NET_HDR_LEGACY_LEN: usize = 10;

const DESC_SIZE: u64 = 16;
const PAGE: u64 = 4096;
const MIN_SCRATCH: u64 = 64 * 1024;
const POLL_INTERVAL: Duration = Duration::from_micros(50);
/// How long `send` waits for the backend to return TX descriptors when the ring is full.
const TX_FULL_WAIT: Duration = Duration::from_secs(2);
/// How long a vhost-user request waits for its reply (or to be written).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Extra time granted to the rest of a merged frame once its first buffer arrived.
const MERGE_GRACE: Duration = Duration::from_secs(1);

/// Errors of [`MockFrontend`].
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// The socket did not accept a connection before the timeout.
    #[error("cannot connect to {path} within {timeout:?}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// How long we retried.
        timeout: Duration,
        /// Last error seen.
        #[source]
        source: io::Error,
    },
    /// A vhost-user request failed (refused by the backend, or the connection broke).
    #[error("vhost-user {step} failed")]
    Vhost {
        /// The request, e.g. "set_vring_addr(1)".
        step: String,
        /// Cause.
        #[source]
        source: vhost::Error,
    },
    /// The options cannot describe a working device.
    #[error("invalid mock options: {0}")]
    Options(String),
    /// Creating the guest memory failed.
    #[error("cannot create guest memory")]
    MemoryCreate(#[from] vm_memory::mmap::FromRangesError),
    /// An access to the mock's own guest memory failed (address outside it).
    #[error("guest memory access failed")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// A system call (memfd, eventfd, socket) failed.
    #[error("I/O error")]
    Io(#[from] io::Error),
    /// The backend did not return enough TX descriptors in time to queue the frame.
    #[error("TX ring full: the backend returned no descriptors for {0:?}")]
    TxRingFull(Duration),
    /// The frame needs more TX descriptors than the ring has.
    #[error("frame of {len} bytes needs {needed} TX descriptors, the ring has {available}")]
    FrameTooLong {
        /// Frame length without virtio header.
        len: usize,
        /// Descriptors it needs.
        needed: usize,
        /// Descriptors usable by `send`.
        available: usize,
    },
}

/// How the mock sets itself up. `Default` gives a QEMU-like 256-entry device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockOptions {
    /// Guest memory size in bytes (default 8 MiB).
    pub mem_size: u64,
    /// Size of both virtqueues, a power of two (default 256).
    pub queue_size: u16,
    /// RX buffers posted at start and recycled by `recv` (default 256, at most `queue_size`;
    /// 0 posts none).
    pub rx_buffers: u16,
    /// Length of each RX buffer, one writable descriptor each (default 2048).
    pub rx_buf_len: u32,
    /// Length of each TX buffer; a frame longer than one buffer spans several descriptors
    /// (default 2048).
    pub tx_buf_len: u32,
    /// Put the virtio header and the frame in separate TX descriptors (default false: one
    /// descriptor holds both, like Linux with `any_layout`).
    pub tx_split: bool,
    /// Acknowledge VIRTIO_RING_F_EVENT_IDX when offered (default true).
    pub event_idx: bool,
    /// Acknowledge VIRTIO_NET_F_MRG_RXBUF when offered (default true).
    pub mrg_rxbuf: bool,
    /// TX descriptor indices `0..raw_descs` reserved for [`MockFrontend::send_chain`]
    /// (default 32).
    pub raw_descs: u16,
    /// Ring addresses (guest physical) to announce in SET_VRING_ADDR instead of the real
    /// ones, per queue: lets a test point a ring outside guest memory. The mock keeps
    /// using its real rings. Build them from [`MockOptions::ring_addrs`].
    pub ring_override: [Option<RingAddrs>; 2],
    /// How long `connect` retries while the socket does not exist or refuses (default 5 s).
    pub connect_timeout: Duration,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            mem_size: 8 << 20,
            queue_size: 256,
            rx_buffers: 256,
            rx_buf_len: 2048,
            tx_buf_len: 2048,
            tx_split: false,
            event_idx: true,
            mrg_rxbuf: true,
            raw_descs: 32,
            ring_override: [None, None],
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Guest physical addresses of one split virtqueue's three parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Available (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

/// One descriptor of a hand-built TX chain, written verbatim into the descriptor table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawDesc {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `VRING_DESC_F_*` flags.
    pub flags: u16,
    /// Index of the next descriptor (read by the device only with `VRING_DESC_F_NEXT`).
    pub next: u16,
}

/// A frame received on the RX queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxFrame {
    /// The Ethernet frame, virtio header removed, buffers concatenated.
    pub data: Vec<u8>,
    /// The virtio-net header as the device wrote it.
    pub header: Vec<u8>,
    /// Used entries (buffers) the frame spanned: `num_buffers` with MRG_RXBUF, else 1.
    pub num_buffers: u16,
}

#[derive(Debug, Clone, Copy)]
struct Layout {
    rings: [RingAddrs; 2],
    rx_base: u64,
    tx_base: u64,
    scratch_base: u64,
    end: u64,
}

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

impl MockOptions {
    fn validate(&self) -> Result<Layout, MockError> {
        let bad = |m: String| Err(MockError::Options(m));
        let n = self.queue_size;
        if !n.is_power_of_two() || !(2..=32768).contains(&n) {
            return bad(format!(
                "queue_size {n} must be a power of two in 2..=32768"
            ));
        }
        if self.rx_buffers > n {
            return bad(format!("rx_buffers {} > queue_size {n}", self.rx_buffers));
        }
        if self.rx_buf_len == 0 || self.tx_buf_len < VIRTIO_NET_HDR_LEN as u32 {
            return bad("rx_buf_len must be > 0 and tx_buf_len >= 12".into());
        }
        if self.raw_descs >= n - 1 {
            return bad(format!(
                "raw_descs {} leaves no descriptors for send",
                self.raw_descs
            ));
        }
        let n = u64::from(n);
        let mut off = 0u64;
        let mut rings = [RingAddrs {
            desc: 0,
            avail: 0,
            used: 0,
        }; 2];
        for r in rings.iter_mut() {
            let desc = align_up(off, PAGE);
            let avail = desc + DESC_SIZE * n;
            let used = align_up(avail + 6 + 2 * n, 4);
            off = used + 6 + 8 * n;
            *r = RingAddrs {
                desc: GUEST_MEM_BASE + desc,
                avail: GUEST_MEM_BASE + avail,
                used: GUEST_MEM_BASE + used,
            };
        }
        let rx = align_up(off, PAGE);
        let tx = align_up(
            rx + u64::from(self.rx_buffers) * u64::from(self.rx_buf_len),
            PAGE,
        );
        let scratch = align_up(tx + n * u64::from(self.tx_buf_len), PAGE);
        if self.mem_size & (PAGE - 1) != 0 || scratch + MIN_SCRATCH > self.mem_size {
            return bad(format!(
                "mem_size {} too small or not page aligned: rings and buffers need {} bytes plus {} of scratch",
                self.mem_size, scratch, MIN_SCRATCH
            ));
        }
        Ok(Layout {
            rings,
            rx_base: GUEST_MEM_BASE + rx,
            tx_base: GUEST_MEM_BASE + tx,
            scratch_base: GUEST_MEM_BASE + scratch,
            end: GUEST_MEM_BASE + self.mem_size,
        })
    }

    /// Where the mock will place the rings of `queue` (0 = RX, 1 = TX) with these options,
    /// or `None` if the options are invalid or `queue > 1`.
    pub fn ring_addrs(&self, queue: usize) -> Option<RingAddrs> {
        self.validate().ok()?.rings.get(queue).copied()
    }

    /// One past the last guest physical address of the memory these options describe.
    pub fn mem_end(&self) -> u64 {
        GUEST_MEM_BASE + self.mem_size
    }
}

/// Connects to a unix socket, retrying while it does not exist or refuses connections.
fn connect_retry(path: &Path, timeout: Duration) -> Result<UnixStream, MockError> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(MockError::Connect {
                    path: path.to_path_buf(),
                    timeout,
                    source,
                })
            }
        }
    }
}

/// Waits until the peer of `stream` closes it (EOF or reset) or `timeout` passes. Any
/// bytes the peer sends meanwhile are discarded. Returns true if it closed.
pub fn wait_peer_closed(stream: &mut UnixStream, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        if stream.set_read_timeout(Some(left)).is_err() {
            return true;
        }
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// The dirty log shared with SET_LOG_BASE, mapped here to be read back.
struct DirtyLog {
    _file: File,
    map: MmapRegion<()>,
}

/// A vhost-user-net frontend over a real unix socket with memfd guest memory.
///
/// Dropping it closes the connection (both directions, even if the backend holds a
/// duplicate of the socket) and unmaps the memory.
pub struct MockFrontend {
    path: PathBuf,
    frontend: Frontend,
    sock: UnixStream,
    mem: GuestMemoryMmap,
    memfd: File,
    log: Option<DirtyLog>,
    kick: [EventFd; 2],
    call: [EventFd; 2],
    opts: MockOptions,
    layout: Layout,
    offered: u64,
    features: u64,
    protocol_features: u64,
    hdr_len: usize,
    rx_avail: u16,
    rx_last_used: u16,
    tx_avail: u16,
    tx_published: u16,
    tx_last_used: u16,
    tx_free: Vec<u16>,
    tx_inflight: Vec<Option<Vec<u16>>>,
}

impl fmt::Debug for MockFrontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockFrontend")
            .field("path", &self.path)
            .field("features", &format_args!("{:#x}", self.features))
            .field(
                "protocol_features",
                &format_args!("{:#x}", self.protocol_features),
            )
            .field("queue_size", &self.opts.queue_size)
            .field("rx_avail", &self.rx_avail)
            .field("rx_last_used", &self.rx_last_used)
            .field("tx_published", &self.tx_published)
            .field("tx_last_used", &self.tx_last_used)
            .finish_non_exhaustive()
    }
}

/// The one guest memory region, as SET_MEM_TABLE describes it.
fn mem_region(memfd: &File, size: u64) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: GUEST_MEM_BASE,
        memory_size: size,
        userspace_addr: FRONTEND_VA_BASE,
        mmap_offset: 0,
        mmap_handle: memfd.as_raw_fd(),
    }
}

fn vhost_err(step: impl Into<String>) -> impl FnOnce(vhost::Error) -> MockError {
    let step = step.into();
    move |source| MockError::Vhost { step, source }
}

impl MockFrontend {
    /// Connects to the backend socket at `path` (retrying up to `opts.connect_timeout`
    /// while it does not exist yet) and brings the device up like QEMU:
    ///
    /// 1. SET_OWNER, GET_FEATURES, SET_FEATURES with the offered subset of VERSION_1,
    ///    MRG_RXBUF, EVENT_IDX and PROTOCOL_FEATURES (minus those `opts` turns off);
    /// 2. GET/SET_PROTOCOL_FEATURES with the offered subset of REPLY_ACK, MQ,
    ///    CONFIGURE_MEM_SLOTS and LOG_SHMFD; with REPLY_ACK every later request asks for an ack, so a
    ///    request the backend refuses fails `connect`; with MQ, GET_QUEUE_NUM;
    /// 3. SET_MEM_TABLE with one memfd region at [`GUEST_MEM_BASE`];
    /// 4. per queue SET_VRING_NUM, SET_VRING_BASE 0, SET_VRING_ADDR, SET_VRING_KICK,
    ///    SET_VRING_CALL, then SET_VRING_ENABLE on both (with PROTOCOL_FEATURES);
    /// 5. the RX ring already holds `opts.rx_buffers` buffers; it is kicked.
    pub fn connect(path: &Path, opts: MockOptions) -> Result<MockFrontend, MockError> {
        let layout = opts.validate()?;
        let stream = connect_retry(path, opts.connect_timeout)?;
        // A backend that never answers must fail the test, not hang it.
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let sock = stream.try_clone()?;
        let mut frontend = Frontend::from_stream(stream, 2);

        let memfd = memfd_create("accelnet-mock-guest", opts.mem_size)?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(GUEST_MEM_BASE),
            opts.mem_size as usize,
            Some(FileOffset::new(memfd.try_clone()?, 0)),
        )])?;
        let kick = [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?];
        let call = [EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?];

        frontend.set_owner().map_err(vhost_err("set_owner"))?;
        let offered = frontend.get_features().map_err(vhost_err("get_features"))?;
        let mut wanted = VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES;
        if opts.mrg_rxbuf {
            wanted |= VIRTIO_NET_F_MRG_RXBUF;
        }
        if opts.event_idx {
            wanted |= VIRTIO_RING_F_EVENT_IDX;
        }
        let features = offered & wanted;
        frontend
            .set_features(features)
            .map_err(vhost_err("set_features"))?;

        let mut protocol_features = 0;
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let pf = frontend
                .get_protocol_features()
                .map_err(vhost_err("get_protocol_features"))?;
            let ack = pf
                & (VhostUserProtocolFeatures::REPLY_ACK
                    | VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
                    | VhostUserProtocolFeatures::LOG_SHMFD);
            frontend
                .set_protocol_features(ack)
                .map_err(vhost_err("set_protocol_features"))?;
            protocol_features = ack.bits();
            if ack.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if ack.contains(VhostUserProtocolFeatures::MQ) {
                let n = frontend
                    .get_queue_num()
                    .map_err(vhost_err("get_queue_num"))?;
                if n < 2 {
                    return Err(MockError::Options(format!(
                        "backend supports {n} queues, the mock needs 2"
                    )));
                }
            }
        }

        frontend
            .set_mem_table(&[mem_region(&memfd, opts.mem_size)])
            .map_err(vhost_err("set_mem_table"))?;

        let hdr_len = if features & (VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF) != 0 {
            VIRTIO_NET_HDR_LEN
        } else {
            VIRTIO_NET_HDR_LEGACY_LEN
        };
        let n = opts.queue_size;
        let mut mock = MockFrontend {
            path: path.to_path_buf(),
            frontend,
            sock,
            mem,
            memfd,
            log: None,
            kick,
            call,
            layout,
            offered,
            features,
            protocol_features,
            hdr_len,
            rx_avail: 0,
            rx_last_used: 0,
            tx_avail: 0,
            tx_published: 0,
            tx_last_used: 0,
            tx_free: (opts.raw_descs..n).rev().collect(),
            tx_inflight: vec![None; usize::from(n)],
            opts,
        };

        // RX buffers: descriptor i -> buffer i, posted before the device starts (as a
        // guest driver does before DRIVER_OK).
        for i in 0..mock.opts.rx_buffers {
            let addr = mock.rx_buf_addr(i);
            let d = RawDesc {
                addr,
                len: mock.opts.rx_buf_len,
                flags: VRING_DESC_F_WRITE,
                next: 0,
            };
            mock.write_desc(RX_QUEUE, i, &d)?;
            mock.post_rx(i)?;
        }
        mock.publish(RX_QUEUE, mock.rx_avail)?;

        let fe = &mut mock.frontend;
        for q in [RX_QUEUE, TX_QUEUE] {
            let real = mock.layout.rings[q];
            let rings = mock.opts.ring_override[q].unwrap_or(real);
            let va = |gpa: u64| FRONTEND_VA_BASE.wrapping_add(gpa.wrapping_sub(GUEST_MEM_BASE));
            fe.set_vring_num(q, n)
                .map_err(vhost_err(format!("set_vring_num({q})")))?;
            fe.set_vring_base(q, 0)
                .map_err(vhost_err(format!("set_vring_base({q})")))?;
            let config = VringConfigData {
                queue_max_size: n,
                queue_size: n,
                flags: 0,
                desc_table_addr: va(rings.desc),
                used_ring_addr: va(rings.used),
                avail_ring_addr: va(rings.avail),
                log_addr: None,
            };
            fe.set_vring_addr(q, &config)
                .map_err(vhost_err(format!("set_vring_addr({q})")))?;
            fe.set_vring_kick(q, &mock.kick[q])
                .map_err(vhost_err(format!("set_vring_kick({q})")))?;
            fe.set_vring_call(q, &mock.call[q])
                .map_err(vhost_err(format!("set_vring_call({q})")))?;
        }
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            for q in [RX_QUEUE, TX_QUEUE] {
                fe.set_vring_enable(q, true)
                    .map_err(vhost_err(format!("set_vring_enable({q})")))?;
            }
        }
        mock.kick(RX_QUEUE)?;
        Ok(mock)
    }

    /// A plain stream connected to the socket at `path` (retrying up to 5 s while it does
    /// not exist), for writing raw garbage or half messages.
    pub fn raw(path: &Path) -> Result<UnixStream, MockError> {
        connect_retry(path, Duration::from_secs(5))
    }

    /// Socket path this frontend connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// virtio feature bits acknowledged with SET_FEATURES.
    pub fn acked_features(&self) -> u64 {
        self.features
    }

    /// vhost-user protocol feature bits acknowledged with SET_PROTOCOL_FEATURES.
    pub fn acked_protocol_features(&self) -> u64 {
        self.protocol_features
    }

    /// Length of the virtio-net header in use (12, or 10 for a legacy device).
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// The options the mock runs with.
    pub fn options(&self) -> &MockOptions {
        &self.opts
    }

    /// The real ring addresses of `queue` (0 = RX, 1 = TX).
    ///
    /// # Panics
    /// If `queue > 1`.
    pub fn ring_addrs(&self, queue: usize) -> RingAddrs {
        self.layout.rings[queue]
    }

    /// One past the last guest physical address of guest memory.
    pub fn mem_end(&self) -> u64 {
        self.layout.end
    }

    /// Guest physical address `offset` bytes into the scratch area, where hand-built
    /// chains put their payloads. The scratch area is at least 64 KiB; the address is
    /// computed even when it lies beyond guest memory.
    pub fn data_addr(&self, offset: u64) -> u64 {
        self.layout.scratch_base.wrapping_add(offset)
    }

    /// Writes `bytes` at `offset` in the scratch area and returns their guest address.
    pub fn write_data(&self, offset: u64, bytes: &[u8]) -> Result<u64, MockError> {
        let addr = self.data_addr(offset);
        self.mem.write_slice(bytes, GuestAddress(addr))?;
        Ok(addr)
    }

    /// Reads `len` bytes of guest memory at guest physical address `addr`.
    pub fn read_mem(&self, addr: u64, len: usize) -> Result<Vec<u8>, MockError> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr))?;
        Ok(v)
    }

    /// Guest physical address of RX buffer `i` (behind RX descriptor `i`).
    pub fn rx_buf_addr(&self, i: u16) -> u64 {
        self.layout.rx_base + u64::from(i) * u64::from(self.opts.rx_buf_len)
    }

    /// Guest physical address of the TX buffer of descriptor `d` (`d` up to the queue
    /// size: `tx_buf_addr(queue_size)` is the end of the TX buffers).
    pub fn tx_buf_addr(&self, d: u16) -> u64 {
        self.layout.tx_base + u64::from(d) * u64::from(self.opts.tx_buf_len)
    }

    /// The used entry at position `used_idx` (mod the queue size) of `queue`:
    /// (descriptor id, bytes written).
    pub fn used_entry(&self, queue: usize, used_idx: u16) -> Result<(u32, u32), MockError> {
        if queue > TX_QUEUE {
            return Err(MockError::Options(format!("no queue {queue}")));
        }
        self.used_elem(queue, used_idx)
    }

    fn qsize(&self) -> u16 {
        self.opts.queue_size
    }

    fn write_desc(&self, queue: usize, index: u16, d: &RawDesc) -> Result<(), MockError> {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&d.next.to_le_bytes());
        let addr = self.layout.rings[queue].desc + u64::from(index) * DESC_SIZE;
        self.mem.write_slice(&b, GuestAddress(addr))?;
        Ok(())
    }

    /// Writes `head` into the next avail slot of `queue` (not yet published).
    fn push_avail(&self, queue: usize, avail_idx: u16, head: u16) -> Result<(), MockError> {
        let slot = u64::from(avail_idx % self.qsize());
        let addr = self.layout.rings[queue].avail + 4 + 2 * slot;
        self.mem
            .write_slice(&head.to_le_bytes(), GuestAddress(addr))?;
        Ok(())
    }

    fn post_rx(&mut self, id: u16) -> Result<(), MockError> {
        self.push_avail(RX_QUEUE, self.rx_avail, id)?;
        self.rx_avail = self.rx_avail.wrapping_add(1);
        Ok(())
    }

    /// Makes avail entries up to `idx` visible to the device (release store of avail.idx).
    fn publish(&self, queue: usize, idx: u16) -> Result<(), MockError> {
        std::sync::atomic::fence(Ordering::SeqCst);
        let addr = GuestAddress(self.layout.rings[queue].avail + 2);
        self.mem.store(idx.to_le(), addr, Ordering::Release)?;
        std::sync::atomic::fence(Ordering::SeqCst);
        Ok(())
    }

    fn used_idx(&self, queue: usize) -> u16 {
        let addr = GuestAddress(self.layout.rings[queue].used + 2);
        // The used ring lies inside our own memory (checked by `validate`), so the load
        // cannot fail; 0 would only hide progress, never invent it.
        self.mem
            .load::<u16>(addr, Ordering::Acquire)
            .map(u16::from_le)
            .unwrap_or(0)
    }

    fn used_elem(&self, queue: usize, used_idx: u16) -> Result<(u32, u32), MockError> {
        let slot = u64::from(used_idx % self.qsize());
        let addr = self.layout.rings[queue].used + 4 + 8 * slot;
        let mut b = [0u8; 8];
        self.mem.read_slice(&mut b, GuestAddress(addr))?;
        let id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        Ok((id, len))
    }

    /// Notifies the device that `queue` has new buffers (writes its kick eventfd).
    pub fn kick(&self, queue: usize) -> Result<(), MockError> {
        self.kick[queue].write(1)?;
        Ok(())
    }

    /// Returns and clears the count of interrupts (call eventfd writes) the device raised
    /// on `queue` since the last call.
    pub fn take_calls(&self, queue: usize) -> u64 {
        self.call[queue].read().unwrap_or(0)
    }

    // ---- TX ----

    /// Returns TX chains the device has used to the free list.
    fn reclaim_tx(&mut self) -> Result<(), MockError> {
        let used = self.used_idx(TX_QUEUE);
        while self.tx_last_used != used {
            let (id, _len) = self.used_elem(TX_QUEUE, self.tx_last_used)?;
            if let Some(descs) = usize::try_from(id)
                .ok()
                .and_then(|i| self.tx_inflight.get_mut(i))
                .and_then(Option::take)
            {
                self.tx_free.extend(descs);
            }
            self.tx_last_used = self.tx_last_used.wrapping_add(1);
        }
        Ok(())
    }

    /// Writes one frame into free TX descriptors and an avail slot, without publishing.
    /// Waits (publishing what is pending) up to [`TX_FULL_WAIT`] for free descriptors.
    fn enqueue_tx(&mut self, frame: &[u8]) -> Result<(), MockError> {
        let buf = self.opts.tx_buf_len as usize;
        let hdr = vec![0u8; self.hdr_len];
        let mut segments: Vec<Vec<u8>> = Vec::new();
        if self.opts.tx_split {
            segments.push(hdr);
            segments.extend(frame.chunks(buf).map(<[u8]>::to_vec));
        } else {
            let mut all = hdr;
            all.extend_from_slice(frame);
            segments.extend(all.chunks(buf).map(<[u8]>::to_vec));
        }
        let usable = usize::from(self.qsize() - self.opts.raw_descs);
        if segments.len() > usable {
            return Err(MockError::FrameTooLong {
                len: frame.len(),
                needed: segments.len(),
                available: usable,
            });
        }
        self.reclaim_tx()?;
        if self.tx_free.len() < segments.len() {
            self.publish_tx()?;
            let deadline = Instant::now() + TX_FULL_WAIT;
            while self.tx_free.len() < segments.len() {
                if Instant::now() > deadline {
                    return Err(MockError::TxRingFull(TX_FULL_WAIT));
                }
                std::thread::sleep(POLL_INTERVAL);
                self.reclaim_tx()?;
            }
        }
        let ids: Vec<u16> = (0..segments.len())
            .filter_map(|_| self.tx_free.pop())
            .collect();
        for (i, seg) in segments.iter().enumerate() {
            let d = ids[i];
            let addr = self.tx_buf_addr(d);
            self.mem.write_slice(seg, GuestAddress(addr))?;
            let last = i + 1 == segments.len();
            let desc = RawDesc {
                addr,
                len: seg.len() as u32,
                flags: if last { 0 } else { VRING_DESC_F_NEXT },
                next: if last { 0 } else { ids[i + 1] },
            };
            self.write_desc(TX_QUEUE, d, &desc)?;
        }
        let head = ids[0];
        self.push_avail(TX_QUEUE, self.tx_avail, head)?;
        self.tx_avail = self.tx_avail.wrapping_add(1);
        self.tx_inflight[usize::from(head)] = Some(ids);
        Ok(())
    }

    fn publish_tx(&mut self) -> Result<(), MockError> {
        if self.tx_published != self.tx_avail {
            self.publish(TX_QUEUE, self.tx_avail)?;
            self.tx_published = self.tx_avail;
            self.kick(TX_QUEUE)?;
        }
        Ok(())
    }

    /// Transmits one frame: an all-zero virtio-net header followed by `frame` in TX
    /// buffers (header and frame in separate descriptors with `opts.tx_split`; a frame
    /// longer than a TX buffer spans several), publishes it and kicks. Waits up to 2 s for
    /// the device to return descriptors when the ring is full.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), MockError> {
        self.enqueue_tx(frame)?;
        self.publish_tx()
    }

    /// Transmits several frames, publishing them with one avail.idx update and one kick
    /// (more when the ring fills up on the way).
    pub fn send_burst<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> Result<(), MockError> {
        for f in frames {
            self.enqueue_tx(f.as_ref())?;
        }
        self.publish_tx()
    }

    /// Publishes a hand-built TX chain: `descs[i]` is written verbatim at descriptor index
    /// `i`, and head 0 is made available and kicked. `next` fields are not translated, so
    /// a test can build loops (`next` back to an earlier index), out-of-range `next`
    /// values, write-only descriptors, zero lengths or addresses outside guest memory.
    ///
    /// Uses the reserved indices `0..opts.raw_descs`: wait for the previous hand-built
    /// chain to complete ([`MockFrontend::wait_tx_completed`]) before sending the next.
    pub fn send_chain(&mut self, descs: &[RawDesc]) -> Result<u16, MockError> {
        let indexed: Vec<(u16, RawDesc)> = descs
            .iter()
            .enumerate()
            .map(|(i, d)| (i as u16, *d))
            .collect();
        self.send_chain_at(0, &indexed)
    }

    /// Like [`MockFrontend::send_chain`] with explicit placement: each `(index, desc)` is
    /// written at `index` (must be below `opts.raw_descs`), then `head` is published
    /// verbatim in the avail ring, even if it is out of range. Returns `head`.
    pub fn send_chain_at(&mut self, head: u16, descs: &[(u16, RawDesc)]) -> Result<u16, MockError> {
        if let Some((i, _)) = descs.iter().find(|(i, _)| *i >= self.opts.raw_descs) {
            return Err(MockError::Options(format!(
                "descriptor index {i} outside the reserved range 0..{}",
                self.opts.raw_descs
            )));
        }
        for (i, d) in descs {
            self.write_desc(TX_QUEUE, *i, d)?;
        }
        self.push_avail(TX_QUEUE, self.tx_avail, head)?;
        self.tx_avail = self.tx_avail.wrapping_add(1);
        self.publish_tx()?;
        Ok(head)
    }

    /// TX chains the driver has made available so far (the avail.idx it published).
    pub fn tx_published(&self) -> u16 {
        self.tx_published
    }

    /// TX chains the device has returned so far (the TX used.idx).
    pub fn tx_completed(&self) -> u16 {
        self.used_idx(TX_QUEUE)
    }

    /// Waits until the device has returned at least `n` TX chains in total (wrapping
    /// arithmetic on the 16-bit index) or `timeout` passes. Returns true if it did.
    pub fn wait_tx_completed(&self, n: u16, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if (self.tx_completed().wrapping_sub(n) as i16) >= 0 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until every TX chain published so far has been returned.
    pub fn wait_tx_all_completed(&self, timeout: Duration) -> bool {
        self.wait_tx_completed(self.tx_published, timeout)
    }

    // ---- RX ----

    fn wait_rx_used(&self, deadline: Instant) -> bool {
        loop {
            if self.used_idx(RX_QUEUE) != self.rx_last_used {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Reads the next used RX entry: (buffer id, bytes written).
    fn next_rx_used(&mut self) -> Result<(u16, usize), MockError> {
        let (id, len) = self.used_elem(RX_QUEUE, self.rx_last_used)?;
        assert!(
            id < u32::from(self.opts.rx_buffers),
            "{}: device returned RX used id {id}, only 0..{} were offered",
            self.path.display(),
            self.opts.rx_buffers
        );
        assert!(
            len <= self.opts.rx_buf_len,
            "{}: device wrote {len} bytes into a {}-byte RX buffer",
            self.path.display(),
            self.opts.rx_buf_len
        );
        self.rx_last_used = self.rx_last_used.wrapping_add(1);
        Ok((id as u16, len as usize))
    }

    /// Waits up to `timeout` for the next received frame, with its header and buffer count.
    /// Honours `num_buffers` (MRG_RXBUF): a frame may span several used entries. Recycles
    /// the buffers into the avail ring and kicks.
    pub fn recv_frame(&mut self, timeout: Duration) -> Option<RxFrame> {
        let deadline = Instant::now() + timeout;
        if !self.wait_rx_used(deadline) {
            return None;
        }
        let (id, len) = self.next_rx_used().ok()?;
        let buf = self.read_mem(self.rx_buf_addr(id), len).ok()?;
        assert!(
            len >= self.hdr_len,
            "{}: RX used entry of {len} bytes, shorter than the {}-byte virtio header",
            self.path.display(),
            self.hdr_len
        );
        let header = buf[..self.hdr_len].to_vec();
        let num_buffers = if self.features & VIRTIO_NET_F_MRG_RXBUF != 0 {
            u16::from_le_bytes([header[10], header[11]])
        } else {
            1
        };
        assert!(
            (1..=self.opts.rx_buffers).contains(&num_buffers),
            "{}: invalid num_buffers {num_buffers} ({} RX buffers)",
            self.path.display(),
            self.opts.rx_buffers
        );
        let mut data = buf[self.hdr_len..].to_vec();
        let mut ids = vec![id];
        let grace = deadline.max(Instant::now() + MERGE_GRACE);
        for k in 1..num_buffers {
            assert!(
                self.wait_rx_used(grace),
                "{}: frame announced num_buffers={num_buffers} but only {k} used entries arrived",
                self.path.display()
            );
            let (id, len) = self.next_rx_used().ok()?;
            data.extend(self.read_mem(self.rx_buf_addr(id), len).ok()?);
            ids.push(id);
        }
        for id in ids {
            self.post_rx(id).ok()?;
        }
        self.publish(RX_QUEUE, self.rx_avail).ok()?;
        self.kick(RX_QUEUE).ok()?;
        Some(RxFrame {
            data,
            header,
            num_buffers,
        })
    }

    /// Waits up to `timeout` for the next received frame and returns it without header.
    pub fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        self.recv_frame(timeout).map(|f| f.data)
    }

    /// Collects received frames until none arrives for `quiet`.
    pub fn recv_all(&mut self, quiet: Duration) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.recv(quiet)).collect()
    }

    /// The RX used index: buffers the device has filled so far (a merged frame counts
    /// once per buffer).
    pub fn rx_used(&self) -> u16 {
        self.used_idx(RX_QUEUE)
    }

    // ---- control plane ----

    /// Sends GET_VRING_BASE for `queue` (which stops that ring in the backend) and
    /// returns the next avail index the device would have processed.
    pub fn get_vring_base(&mut self, queue: usize) -> Result<u32, MockError> {
        self.frontend
            .get_vring_base(queue)
            .map_err(vhost_err(format!("get_vring_base({queue})")))
    }

    /// Writes `bytes` verbatim on the live vhost-user connection.
    pub fn send_raw_message(&mut self, bytes: &[u8]) -> Result<(), MockError> {
        self.sock.write_all(bytes)?;
        Ok(())
    }

    /// Waits until the backend closes this connection or `timeout` passes (true if it
    /// closed). Reads and discards anything on the socket, so use it only when no request
    /// is awaiting its reply.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let closed = wait_peer_closed(&mut self.sock, timeout);
        let _ = self.sock.set_read_timeout(Some(REPLY_TIMEOUT));
        closed
    }

    // ---- migration: dirty log ----

    /// virtio feature bits the backend offered (GET_FEATURES).
    pub fn offered_features(&self) -> u64 {
        self.offered
    }

    /// Sends SET_FEATURES with `features` (bits the backend did not offer are refused by
    /// it). Keeps the header length chosen at connect.
    pub fn set_features(&mut self, features: u64) -> Result<(), MockError> {
        self.frontend
            .set_features(features)
            .map_err(vhost_err(format!("set_features({features:#x})")))?;
        self.features = features;
        Ok(())
    }

    /// Sends SET_FEATURES with the acknowledged features plus (`on`) or minus
    /// `VHOST_F_LOG_ALL`, as QEMU does when migration starts or ends.
    pub fn set_log_all(&mut self, on: bool) -> Result<(), MockError> {
        if on && self.offered & VHOST_F_LOG_ALL == 0 {
            return Err(MockError::Options(
                "the backend does not offer VHOST_F_LOG_ALL".into(),
            ));
        }
        let f = if on {
            self.features | VHOST_F_LOG_ALL
        } else {
            self.features & !VHOST_F_LOG_ALL
        };
        self.set_features(f)
    }

    /// Sends SET_MEM_TABLE again with the same memory, as QEMU does on any change of
    /// the guest's memory map (the backend maps it anew; rings keep running).
    pub fn resend_mem_table(&mut self) -> Result<(), MockError> {
        self.frontend
            .set_mem_table(&[mem_region(&self.memfd, self.opts.mem_size)])
            .map_err(vhost_err("set_mem_table"))?;
        Ok(())
    }

    /// Size of a dirty log covering all of guest memory (from address 0), rounded up to
    /// 64-bit words like QEMU's.
    pub fn log_size_needed(&self) -> u64 {
        self.layout.end.div_ceil(LOG_PAGE_SIZE).div_ceil(64) * 8
    }

    /// Shares a fresh, zeroed `size`-byte dirty log (a memfd) with SET_LOG_BASE and waits
    /// for the backend's reply. Needs LOG_SHMFD (acknowledged at connect when offered).
    /// A backend that refuses the log closes the connection: the error says so.
    pub fn set_log_base(&mut self, size: u64) -> Result<(), MockError> {
        if self.protocol_features & VhostUserProtocolFeatures::LOG_SHMFD.bits() == 0 {
            return Err(MockError::Options("LOG_SHMFD was not negotiated".into()));
        }
        let len = usize::try_from(size)
            .ok()
            .filter(|l| *l > 0)
            .ok_or_else(|| MockError::Options(format!("bad log size {size}")))?;
        let file = memfd_create("accelnet-mock-dirty-log", size)?;
        let map = MmapRegion::<()>::from_file(FileOffset::new(file.try_clone()?, 0), len)
            .map_err(|e| MockError::Io(io::Error::other(e)))?;
        let region = VhostUserDirtyLogRegion {
            mmap_size: size,
            mmap_offset: 0,
            mmap_handle: file.as_raw_fd(),
        };
        self.frontend
            .set_log_base(0, Some(region))
            .map_err(vhost_err("set_log_base"))?;
        self.log = Some(DirtyLog { _file: file, map });
        Ok(())
    }

    fn log_bytes(&self) -> Result<(&DirtyLog, usize), MockError> {
        let log = self
            .log
            .as_ref()
            .ok_or_else(|| MockError::Options("no dirty log: call set_log_base".into()))?;
        Ok((log, log.map.len()))
    }

    fn collect_dirty(&self, take: bool) -> Result<Vec<u64>, MockError> {
        let (log, len) = self.log_bytes()?;
        let slice = log.map.as_volatile_slice();
        let mut pages = Vec::new();
        for i in 0..len {
            let byte = slice
                .get_atomic_ref::<AtomicU8>(i)
                .map_err(|e| MockError::Io(io::Error::other(e)))?;
            let bits = if take {
                byte.swap(0, Ordering::SeqCst)
            } else {
                byte.load(Ordering::SeqCst)
            };
            for bit in 0..8 {
                if bits & (1 << bit) != 0 {
                    pages.push((i as u64 * 8 + bit) * LOG_PAGE_SIZE);
                }
            }
        }
        Ok(pages)
    }

    /// Guest physical addresses of the pages marked dirty in the log, ascending.
    pub fn dirty_pages(&self) -> Result<Vec<u64>, MockError> {
        self.collect_dirty(false)
    }

    /// Like [`MockFrontend::dirty_pages`], clearing each byte of the log atomically as it
    /// is read (QEMU's log sync): a bit the backend sets meanwhile is never lost.
    pub fn take_dirty_pages(&self) -> Result<Vec<u64>, MockError> {
        self.collect_dirty(true)
    }

    /// Drops the connection abruptly: no GET_VRING_BASE, no reset, the socket is shut down.
    pub fn disconnect(self) {
        drop(self);
    }
}

impl Drop for MockFrontend {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// How long [`TestSwitch`] waits for a port's state or counters to change.
pub const TEST_SWITCH_WAIT: Duration = Duration::from_secs(5);

/// A running [`crate::Switch`] with its VM ports' sockets in a fresh directory
/// (`<dir>/<name>.sock`), and the waits tests need around it. Shut down and its
/// directory removed on drop. Test support: it panics on failure.
#[derive(Debug)]
pub struct TestSwitch {
    sw: Option<crate::Switch>,
    dir: PathBuf,
}

impl TestSwitch {
    /// Creates a fresh directory (`<tmp>/an-<tag>-<pid>-<n>`, short for socket paths)
    /// and starts the switch `config(dir)` describes.
    pub fn start(tag: &str, config: impl FnOnce(&Path) -> crate::SwitchConfig) -> TestSwitch {
        use std::sync::atomic::AtomicUsize;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("an-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        match crate::Switch::start(config(&dir)) {
            Ok(sw) => TestSwitch { sw: Some(sw), dir },
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("switch start failed: {e:?}");
            }
        }
    }

    /// The switch.
    pub fn switch(&self) -> &crate::Switch {
        self.sw.as_ref().expect("switch running")
    }

    /// The sockets' directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Socket path of port `name`.
    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// [`TestSwitch::connect_with`] default options.
    pub fn connect(&self, name: &str) -> MockFrontend {
        self.connect_with(name, MockOptions::default())
    }

    /// Connects a frontend to port `name` and waits until the switch reports the port
    /// connected (rings attached to the data plane; until then frames to it may drop).
    pub fn connect_with(&self, name: &str, opts: MockOptions) -> MockFrontend {
        let m = MockFrontend::connect(&self.sock(name), opts)
            .unwrap_or_else(|e| panic!("connect to port {name}: {e:?}"));
        self.wait_connected(name, true);
        m
    }

    /// Whether the switch reports port `name` connected.
    pub fn is_connected(&self, name: &str) -> bool {
        match self.switch().handle(&crate::Request::Ports {}) {
            crate::Response::Ports { ports } => {
                ports
                    .iter()
                    .find(|p| p.name == name)
                    .unwrap_or_else(|| panic!("no port {name} in {ports:?}"))
                    .connected
            }
            other => panic!("ports request failed: {other:?}"),
        }
    }

    /// Waits until port `name` reports `connected == want`.
    pub fn wait_connected(&self, name: &str, want: bool) {
        let deadline = Instant::now() + TEST_SWITCH_WAIT;
        while self.is_connected(name) != want {
            assert!(
                Instant::now() < deadline,
                "port {name} never became connected={want}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Counters of port `name`.
    pub fn stats(&self, name: &str) -> crate::PortStats {
        self.switch()
            .port_stats(name)
            .unwrap_or_else(|| panic!("no stats for port {name}"))
    }

    /// Polls the port's counters until `pred` holds or [`TEST_SWITCH_WAIT`] passes;
    /// returns the last.
    pub fn wait_stats(
        &self,
        name: &str,
        pred: impl Fn(&crate::PortStats) -> bool,
    ) -> crate::PortStats {
        let deadline = Instant::now() + TEST_SWITCH_WAIT;
        loop {
            let s = self.stats(name);
            if pred(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Drop counter `reason` of port `name`.
    pub fn drops(&self, name: &str, reason: &str) -> u64 {
        self.stats(name).drops.get(reason).copied().unwrap_or(0)
    }

    /// Waits until drop counter `reason` of port `name` reaches `n`; returns its value.
    pub fn wait_drops(&self, name: &str, reason: &str, n: u64) -> u64 {
        self.wait_stats(name, |s| s.drops.get(reason).copied().unwrap_or(0) >= n);
        // Give a miscounting switch the chance to overshoot before the caller compares.
        std::thread::sleep(Duration::from_millis(50));
        self.drops(name, reason)
    }
}

impl Drop for TestSwitch {
    fn drop(&mut self) {
        if let Some(sw) = self.sw.take() {
            sw.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
