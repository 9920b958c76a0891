//! Forwarding threads: the data plane.
//!
//! Each thread polls the TX rings of the VM ports it owns (and the uplinks, on
//! thread 0), in batches of up to [`BATCH`] frames:
//! 1. under the source's TX vring lock, pop the batch, validate every chain, learn
//!    the source MACs and look up destinations (the frames stay in guest memory);
//! 2. per destination, take its RX vring lock once and copy each frame straight
//!    from the source guest's buffers into the destination guest's buffers: one
//!    copy, no intermediate buffer, no allocation;
//! 3. complete the TX chains, publish both used rings, and interrupt each guest at
//!    most once per batch.
//!
//! A thread spins while there is work and for a short while after, then arms guest
//! notifications and sleeps until a kick (or uplink traffic) wakes it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::EventSet;

use crate::api::DropReason;
use crate::fdb::{Fdb, Learned, PortId};
use crate::features::MAX_GSO_FRAME;
use crate::hold::HeldFrame;
use crate::logging::warn_limited;
use crate::offload::{
    caps, finalize_checksum, partial_csum_location, segment, validate, VnetHdr, FLAG_NEEDS_CSUM,
};
use crate::policy::PortPolicy;
use crate::port::{Attached, Port, PortBackend, Waker};
use crate::ring::{gather, RingError, SegWriter, Segments, Slice, SplitRing, MAX_CHAIN_SEGS};
use crate::wire::MacAddr;
use crate::wire::{vlan_tag_bytes, L2Header, ETH_HLEN, VLAN_TAG_LEN};

/// Most frames taken from one ring per round.
pub const BATCH: usize = 64;
/// virtio-net header length with VERSION_1 (`virtio_net_hdr_v1`).
pub const VNET_HDR_LEN: usize = 12;
/// Most receive buffers one frame may use with MRG_RXBUF.
const MAX_RX_CHAINS: usize = 64; // a 64 KiB GSO frame in 1.5 KiB buffers, with room
/// How long a thread keeps polling after its last frame before it sleeps.
const SPIN_AFTER_WORK: Duration = Duration::from_micros(300);
/// Sleep bound, so shutdown and housekeeping are noticed.
const SLEEP_MS: i32 = 200;

/// The ports, indexed by [`PortId`]. Replaced as a whole when a port is added or
/// removed; forwarding threads load it once per round. Ids are never reused, so a
/// stale FDB entry can never point at a different port.
#[derive(Debug, Default)]
pub struct PortTable {
    /// Changes whenever the set of ports changes.
    pub generation: u64,
    /// Slot `id` holds port `id`, or `None` once it was removed.
    pub slots: Vec<Option<Arc<Port>>>,
}

impl PortTable {
    /// A table of `ports`, which must be numbered 0.. in order.
    pub fn new(ports: Vec<Arc<Port>>) -> Self {
        PortTable {
            generation: 0,
            slots: ports.into_iter().map(Some).collect(),
        }
    }

    /// Port `id`, if it exists.
    pub fn get(&self, id: PortId) -> Option<&Arc<Port>> {
        self.slots.get(usize::from(id)).and_then(Option::as_ref)
    }

    /// Every live port, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Port>> {
        self.slots.iter().flatten()
    }

    /// The port called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Port>> {
        self.iter().find(|p| p.name == name)
    }
}

/// State shared by every forwarding thread.
#[derive(Debug)]
pub struct Shared {
    /// All ports.
    pub ports: ArcSwap<PortTable>,
    /// Every forwarding thread's waker, by thread index.
    pub wakers: Arc<[Arc<Waker>]>,
    /// The learning table.
    pub fdb: Arc<Fdb>,
    /// Largest frame accepted (Ethernet header to end, no virtio header).
    pub max_frame: usize,
    /// Set to stop the threads.
    pub shutdown: AtomicBool,
    /// Time base of FDB timestamps.
    pub epoch: Instant,
}

impl Shared {
    /// Seconds since start, the FDB's clock.
    pub fn now_secs(&self) -> u32 {
        self.secs_at(Instant::now())
    }

    /// Nanoseconds since start, the rate limiters' clock.
    pub fn now_ns(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    /// The rate limiters' clock at `t`.
    pub fn nanos_at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The FDB clock at `t`.
    pub fn secs_at(&self, t: Instant) -> u32 {
        u32::try_from(t.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Dest {
    Port(PortId),
    Flood,
    #[default]
    Dropped,
}

/// A validated frame of the current batch, still in the source guest's memory.
#[derive(Debug, Clone, Copy)]
struct TxFrame {
    seg_start: usize,
    seg_end: usize,
    len: usize,
    vlan: u16,
    /// The frame's bytes carry an 802.1Q tag after the MAC addresses.
    tagged: bool,
    dest: Dest,
    /// The source's virtio-net header, when it asks for an offload.
    offload: Option<VnetHdr>,
    /// Destination MAC (for receive filters).
    dst: MacAddr,
}

/// The bytes of one frame: in a guest's memory or in a host buffer.
#[derive(Clone, Copy)]
enum FrameBytes<'a, 'm> {
    Guest(&'a [Slice<'m>]),
    Host(&'a [u8]),
}

impl FrameBytes<'_, '_> {
    /// Copies bytes `[from, from + n)` into `w`; returns how many were written.
    fn copy_into(&self, mut from: usize, mut n: usize, w: &mut SegWriter<'_, '_>) -> usize {
        match self {
            FrameBytes::Host(b) => {
                let end = (from + n).min(b.len());
                w.write_bytes(b.get(from..end).unwrap_or(&[]))
            }
            FrameBytes::Guest(segs) => {
                let mut done = 0;
                for s in segs.iter() {
                    if n == 0 {
                        break;
                    }
                    if from >= s.len() {
                        from -= s.len();
                        continue;
                    }
                    let take = (s.len() - from).min(n);
                    let Ok(sub) = s.subslice(from, take) else {
                        break;
                    };
                    let wrote = w.write_slice(sub);
                    done += wrote;
                    if wrote < take {
                        break;
                    }
                    n -= take;
                    from = 0;
                }
                done
            }
        }
    }

    /// Copies bytes `[from, from + buf.len())` into a host buffer.
    fn read_into(&self, from: usize, buf: &mut [u8]) -> usize {
        match self {
            FrameBytes::Host(b) => {
                let end = (from + buf.len()).min(b.len());
                let src = b.get(from..end).unwrap_or(&[]);
                buf[..src.len()].copy_from_slice(src);
                src.len()
            }
            FrameBytes::Guest(segs) => gather(segs, from, buf),
        }
    }
}

/// How a frame leaves a port: untagged, or with a tag for `vlan` inserted.
#[derive(Debug, Clone, Copy)]
struct Egress {
    insert_tag: Option<u16>,
}

/// A frame ready to be copied out: its bytes, whether they carry a tag, its length.
#[derive(Clone, Copy)]
struct OutFrame<'a, 'm> {
    bytes: FrameBytes<'a, 'm>,
    tagged: bool,
    len: usize,
    /// Checksum or segmentation work the frame still needs (see [`crate::offload`]).
    offload: Option<VnetHdr>,
}

impl OutFrame<'_, '_> {
    fn out_len(&self, e: Egress) -> usize {
        let base = if self.tagged {
            self.len - VLAN_TAG_LEN
        } else {
            self.len
        };
        base + if e.insert_tag.is_some() {
            VLAN_TAG_LEN
        } else {
            0
        }
    }

    /// Writes the frame as it leaves through `e`: MACs, optional new tag, payload.
    fn write(&self, e: Egress, w: &mut SegWriter<'_, '_>) -> usize {
        if e.insert_tag.is_none() && !self.tagged {
            return self.bytes.copy_into(0, self.len, w);
        }
        let mut n = self.bytes.copy_into(0, 12, w);
        if let Some(v) = e.insert_tag {
            n += w.write_bytes(&vlan_tag_bytes(v));
        }
        let body = if self.tagged { 12 + VLAN_TAG_LEN } else { 12 };
        n + self.bytes.copy_into(body, self.len - body, w)
    }

    fn write_host(&self, e: Egress, buf: &mut [u8]) -> usize {
        let out = self.out_len(e);
        if buf.len() < out {
            return 0;
        }
        if e.insert_tag.is_none() && !self.tagged {
            return self.bytes.read_into(0, &mut buf[..out]);
        }
        let mut n = self.bytes.read_into(0, &mut buf[..12]);
        if let Some(v) = e.insert_tag {
            buf[n..n + VLAN_TAG_LEN].copy_from_slice(&vlan_tag_bytes(v));
            n += VLAN_TAG_LEN;
        }
        let body = if self.tagged { 12 + VLAN_TAG_LEN } else { 12 };
        n + self.bytes.read_into(body, &mut buf[n..out])
    }
}

/// The last (source, destination) MAC pair of a batch and where it went: the FDB
/// work of one batch of one flow is done once. Valid for one batch only, so a
/// station move is seen by the next batch.
#[derive(Debug, Default, Clone, Copy)]
struct LookupCache {
    valid: bool,
    src: crate::wire::MacAddr,
    dst: crate::wire::MacAddr,
    vlan: u16,
    dest: Dest,
}

/// What [`Forwarder::classify`] decided for a frame.
#[derive(Debug, Clone, Copy)]
struct Classified {
    vlan: u16,
    /// The frame's bytes carry an 802.1Q tag.
    tagged: bool,
    dest: Dest,
    dst: MacAddr,
}

/// Per-destination delivery totals, added to counters once per batch.
#[derive(Debug, Default, Clone, Copy)]
struct Delivered {
    packets: u64,
    bytes: u64,
    /// Draining a hold: the guest had no receive buffer for the last frame taken,
    /// which was neither written nor counted as dropped.
    stalled: bool,
}

/// One forwarding thread.
#[derive(Debug)]
pub struct Forwarder {
    index: usize,
    shared: Arc<Shared>,
    waker: Arc<Waker>,
    /// Port table generation the lists below were built from.
    generation: Option<u64>,
    /// VM ports with at least one queue pair on this thread.
    vm_ports: Vec<Arc<Port>>,
    /// Uplinks this thread polls.
    uplinks: Vec<Arc<Port>>,
    /// Per VM port, bit `n`: guest notifications of TX pair `n` armed (we slept).
    armed: Vec<u32>,
    /// Uplink fds being watched for wakeups.
    watched: Vec<RawFd>,
    /// Host buffers for frames that need checksum or segmentation work.
    scratch: std::cell::RefCell<Scratch>,
    /// A super-frame from an uplink, rewritten as a GSO frame.
    uplink_buf: std::cell::RefCell<Vec<u8>>,
    /// Nanoseconds since [`Shared::epoch`] at the start of the round (rate limits).
    clock_ns: std::cell::Cell<u64>,
}

/// Host buffers of the offload slow path: the frame as it leaves, and one segment.
#[derive(Debug)]
pub struct Scratch {
    frame: Vec<u8>,
    seg: Vec<u8>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            frame: vec![0; MAX_GSO_FRAME + VLAN_TAG_LEN],
            seg: vec![0; MAX_GSO_FRAME + VLAN_TAG_LEN],
        }
    }
}

impl Scratch {
    /// Copies `f` out as it leaves through `e`, then does what a destination that
    /// acknowledged `acked` needs: pass the offload on, fill in the checksum, or cut
    /// the frame into MSS-sized segments. `emit` gets each resulting frame with the
    /// virtio-net header it should carry (`num_buffers` left to the writer).
    fn offload(
        &mut self,
        f: &OutFrame<'_, '_>,
        e: Egress,
        h: VnetHdr,
        acked: u64,
        mut emit: impl FnMut(&[u8], VnetHdr),
    ) -> Result<(), DropReason> {
        let n = f.write_host(e, &mut self.frame);
        if n == 0 {
            return Err(DropReason::OversizeFrame);
        }
        // A tag added or removed on the way moves every offset behind it.
        let delta = i32::try_from(n).unwrap_or(i32::MAX) - i32::try_from(f.len).unwrap_or(0);
        let h = h.shift_offsets(delta)?;
        let buf = &mut self.frame[..n];
        validate(&h, buf)?;
        let action = caps::decide(acked, &h);
        let rx = action.rx_header(acked, &h);
        match action {
            caps::Action::PassThrough => emit(buf, rx),
            caps::Action::FinalizeChecksum => {
                finalize_checksum(buf, h.csum_start, h.csum_offset)?;
                emit(buf, rx);
            }
            caps::Action::Segment => {
                segment(buf, &h, &mut self.seg, |s| emit(s, rx))?;
            }
        }
        Ok(())
    }
}

struct WakeSubscriber {
    fd: RawFd,
}

impl MutEventSubscriber for WakeSubscriber {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Waking up is all we need; the loop drains the rings and the eventfd.
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data_raw(self.fd, 0, EventSet::IN)) {
            log::error!("forwarding thread: cannot watch fd {}: {e:?}", self.fd);
        }
    }
}

type Events_ = EventManager<Box<dyn MutEventSubscriber + Send>>;

impl Forwarder {
    /// Thread `index`: polls the queue pairs [`Port::thread_for`] gives it, and the
    /// uplinks on thread 0.
    pub fn new(index: usize, shared: Arc<Shared>, waker: Arc<Waker>) -> Self {
        let mut f = Forwarder {
            index,
            shared,
            waker,
            generation: None,
            vm_ports: Vec::new(),
            uplinks: Vec::new(),
            armed: Vec::new(),
            watched: Vec::new(),
            scratch: std::cell::RefCell::new(Scratch::default()),
            uplink_buf: std::cell::RefCell::new(vec![0; MAX_GSO_FRAME + VLAN_TAG_LEN]),
            clock_ns: std::cell::Cell::new(0),
        };
        let table = f.shared.ports.load_full();
        f.refresh(&table);
        f
    }

    /// Rebuilds the port lists after ports were added or removed.
    fn refresh(&mut self, table: &PortTable) {
        if self.generation == Some(table.generation) {
            return;
        }
        self.generation = Some(table.generation);
        let n = self.shared.wakers.len().max(1);
        self.vm_ports = table
            .iter()
            .filter(|p| match p.vhost() {
                Some(v) => (0..v.queue_pairs.min(n)).any(|q| p.thread_for(q) == self.index),
                None => false,
            })
            .cloned()
            .collect();
        self.uplinks = table
            .iter()
            .filter(|p| p.owner == self.index && matches!(p.backend, PortBackend::Uplink(_)))
            .cloned()
            .collect();
        self.armed = vec![0; self.vm_ports.len()];
    }

    /// Runs until [`Shared::shutdown`] is set.
    pub fn run(mut self) {
        let mut events = match Events_::new() {
            Ok(m) => m,
            Err(e) => {
                log::error!("forwarding thread {}: event manager: {e:?}", self.index);
                return;
            }
        };
        events.add_subscriber(Box::new(WakeSubscriber {
            fd: self.waker.fd().as_raw_fd(),
        }));
        self.watch_uplinks(&mut events);
        let mut last_work = Instant::now();
        while !self.shared.shutdown.load(Ordering::Relaxed) {
            let table = self.shared.ports.load_full();
            if self.generation != Some(table.generation) {
                self.refresh(&table);
                self.watch_uplinks(&mut events);
            }
            // One clock read per round serves the FDB and the spin timer.
            let t = Instant::now();
            let now = self.shared.secs_at(t);
            self.clock_ns.set(self.shared.nanos_at(t));
            let mut work = 0;
            for i in 0..self.vm_ports.len() {
                self.announce_when_attached(&table, i, now);
                work += self.drain_hold(&table, i, t);
                work += self.poll_vm_port(&table, i, now);
            }
            for i in 0..self.uplinks.len() {
                work += self.poll_uplink(&table, i, now);
            }
            if work > 0 {
                last_work = t;
            } else if t.saturating_duration_since(last_work) >= SPIN_AFTER_WORK {
                self.sleep(&mut events);
                last_work = Instant::now();
            }
        }
    }

    /// Watches the uplinks' sockets so their traffic wakes the thread.
    fn watch_uplinks(&mut self, events: &mut Events_) {
        let fds: Vec<RawFd> = self
            .uplinks
            .iter()
            .filter_map(|p| match &p.backend {
                PortBackend::Uplink(u) => u.sock.lock().ok().map(|s| s.fd()),
                PortBackend::Vhost(_) => None,
            })
            .collect();
        for fd in fds {
            if !self.watched.contains(&fd) {
                events.add_subscriber(Box::new(WakeSubscriber { fd }));
                self.watched.push(fd);
            }
        }
    }

    /// Queue pairs of VM port number `i` that this thread polls, as a bit mask.
    fn my_pairs(&self, port: &Port, att: &Attached) -> u32 {
        let mut mask = 0u32;
        for q in 0..att.pairs.len().min(32) {
            if port.thread_for(q) == self.index && att.is_started(2 * q + 1) {
                mask |= 1 << q;
            }
        }
        mask
    }

    /// Arms guest notifications, re-checks for work, then waits for a kick.
    fn sleep(&mut self, events: &mut Events_) {
        self.waker.set_sleeping(true);
        let mut pending = false;
        for i in 0..self.vm_ports.len() {
            let port = self.vm_ports[i].clone();
            let Some(att) = port.vhost().and_then(|v| v.attached.load_full()) else {
                continue;
            };
            let mem = att.mem.memory();
            let mut mask = self.my_pairs(&port, &att);
            while mask != 0 {
                let q = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                let guard = att.pairs[q].tx.get_ref();
                if !guard.get_queue().ready() || !guard.is_enabled() {
                    continue;
                }
                if let Ok(mut ring) = SplitRing::new(guard.get_queue(), &mem) {
                    if ring.enable_notifications().is_ok() {
                        self.armed[i] |= 1 << q;
                    }
                    pending |= ring.pending().map(|n| n > 0).unwrap_or(false);
                }
            }
        }
        if !pending {
            let timeout = self.hold_wake_ms().map_or(SLEEP_MS, |ms| ms.min(SLEEP_MS));
            if let Err(e) = events.run_with_timeout(timeout) {
                log::error!("forwarding thread {}: wait failed: {e:?}", self.index);
            }
            self.clear_uplink_errors();
        }
        self.waker.set_sleeping(false);
        self.waker.consume();
    }

    /// Sends the announce a [`crate::api::Request::Announce`] `on_attach` left for VM
    /// port number `i` once its receive rings run (the destination QEMU resumed the
    /// migrated VM and started them), if this thread owns the port. One atomic load
    /// when nothing is pending.
    fn announce_when_attached(&self, table: &PortTable, i: usize, now: u32) {
        let port = &self.vm_ports[i];
        let Some(v) = port.vhost() else { return };
        if port.owner != self.index || !v.announce_pending.load(Ordering::Acquire) {
            return;
        }
        if !v.rx_running() {
            return;
        }
        let mac = {
            let mut pending = v.announce_mac.lock().unwrap_or_else(|e| e.into_inner());
            v.announce_pending.store(false, Ordering::Release);
            pending.take()
        };
        if let Some(mac) = mac {
            crate::switch::announce_out(table, port, mac, &self.shared.fdb, now);
        }
    }

    /// How long (ms) this thread may sleep before a hold it owns needs it: a hold's
    /// deadline, or 1 ms while a drain waits for the guest's receive buffers. Read
    /// after the thread marked itself sleeping, so a later change wakes it.
    fn hold_wake_ms(&self) -> Option<i32> {
        let now = Instant::now();
        self.vm_ports
            .iter()
            .filter(|p| p.owner == self.index)
            .filter_map(|p| p.vhost()?.hold.wake_in(now))
            .map(|d| i32::try_from(d.as_millis() + 1).unwrap_or(i32::MAX))
            .min()
    }

    /// Delivers up to [`BATCH`] frames held for VM port number `i` if this thread
    /// owns the port (its queue pair 0) and its hold is being released or reached
    /// its deadline at `now`; returns the frames handled. One atomic load when the
    /// port does not hold.
    ///
    /// Frames go through [`deliver_to_guest`] like any other (one RX queue, so in
    /// order); when the guest has no receive buffer the rest waits for the next
    /// round, for at most [`crate::hold::DRAIN_STALL`], then is dropped as
    /// `no_rx_buffer`, as it is at once when no frontend is connected. An empty
    /// queue ends the drain: delivery is back to normal.
    fn drain_hold(&self, table: &PortTable, i: usize, now: Instant) -> usize {
        let port = &self.vm_ports[i];
        let Some(v) = port.vhost() else { return 0 };
        if port.owner != self.index {
            return 0;
        }
        let Some(mut q) = v.hold.due(now) else {
            return 0;
        };
        if let Some(up) = q.via() {
            let batch = q.take(BATCH);
            // The uplink's lock is taken without the hold's: a thread receiving on
            // that uplink holds its lock while it queues frames here.
            drop(q);
            self.send_held_out(table, port, up, &batch);
            let mut q = v.hold.lock();
            if v.hold.finish_if_empty(&mut q) {
                let c = q.counts();
                log::info!(
                    "port {}: hold released out of an uplink ({} held, {} sent)",
                    port.name,
                    c.held,
                    c.redirected
                );
            }
            return batch.len();
        }
        let Some(att) = v.attached.load_full() else {
            let n = q.discard();
            port.counters.drop(DropReason::NoRxBuffer, n);
            v.hold.finish_if_empty(&mut q);
            return usize::try_from(n).unwrap_or(usize::MAX);
        };
        let taken = std::cell::Cell::new(0usize);
        let d = {
            let frames = q.frames.iter().take(BATCH).map(|h| {
                taken.set(taken.get() + 1);
                let f = OutFrame {
                    bytes: FrameBytes::Host(&h.bytes),
                    tagged: false,
                    len: h.bytes.len(),
                    offload: h.offload,
                };
                (f, Egress { insert_tag: None })
            });
            let mut scratch = self.scratch.borrow_mut();
            deliver_to_guest(port, &att, 0, frames, &mut scratch, true)
        };
        let done = taken.get().saturating_sub(usize::from(d.stalled));
        q.released(done);
        port.counters
            .tx_packets
            .fetch_add(d.packets, Ordering::Relaxed);
        port.counters.tx_bytes.fetch_add(d.bytes, Ordering::Relaxed);
        if done == 0 && !q.frames.is_empty() && q.stalled(now) {
            let n = q.discard();
            port.counters.drop(DropReason::NoRxBuffer, n);
            warn_limited!(
                "port {}: no receive buffer for {} held frames; dropped",
                port.name,
                n
            );
        }
        if v.hold.finish_if_empty(&mut q) {
            let c = q.counts();
            log::info!(
                "port {}: hold released ({} held, {} delivered)",
                port.name,
                c.held,
                c.released
            );
        }
        done
    }

    /// Sends frames held for VM `port` out of uplink `up`, tagged for the port's
    /// VLAN as the uplink needs; what cannot go is counted on the VM port.
    fn send_held_out(&self, table: &PortTable, port: &Port, up: PortId, frames: &[HeldFrame]) {
        let Some(uplink) = table
            .get(up)
            .filter(|p| matches!(p.backend, PortBackend::Uplink(_)))
        else {
            port.counters
                .drop(DropReason::NoRxBuffer, frames.len() as u64);
            return;
        };
        let mut not_carried = 0u64;
        let out = frames.iter().filter_map(|h| {
            // Held as they left the VM port: untagged on its access VLAN, or tagged
            // where the port is a trunk.
            let tag = L2Header::parse(&h.bytes).and_then(|l2| l2.vlan_tag);
            let Some(e) = Self::egress(uplink, tag.unwrap_or(port.vlan)) else {
                not_carried += 1;
                return None;
            };
            let f = OutFrame {
                bytes: FrameBytes::Host(&h.bytes),
                tagged: tag.is_some(),
                len: h.bytes.len(),
                offload: h.offload,
            };
            Some((f, e))
        });
        self.deliver(uplink, 0, out);
        port.counters.drop(DropReason::VlanNotAllowed, not_carried);
    }

    /// Reads pending socket errors of the uplinks (e.g. ENETDOWN when the interface
    /// goes down): left pending, they keep epoll reporting EPOLLERR and the thread
    /// would never sleep.
    fn clear_uplink_errors(&self) {
        for port in &self.uplinks {
            if let PortBackend::Uplink(u) = &port.backend {
                if let Ok(sock) = u.sock.lock() {
                    if let Ok(Some(e)) = sock.take_error() {
                        warn_limited!("uplink {}: {e}", port.name);
                    }
                }
            }
        }
    }

    /// Forwards one batch from every queue pair of VM port number `i` of this
    /// thread that is running, and returns the frames handled. The thread's loop
    /// calls it; benchmarks do too.
    pub fn poll_vm_port(&mut self, table: &PortTable, i: usize, now: u32) -> usize {
        let src = self.vm_ports[i].clone();
        let Some(att) = src.vhost().and_then(|v| v.attached.load_full()) else {
            return 0;
        };
        let mut mask = self.my_pairs(&src, &att);
        let mut n = 0;
        while mask != 0 {
            let q = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            n += self.poll_queue(table, i, &src, &att, q, now);
        }
        n
    }

    /// The ports this thread polls (benchmarks use it to find their port).
    pub fn vm_port_count(&self) -> usize {
        self.vm_ports.len()
    }

    fn poll_queue(
        &mut self,
        table: &PortTable,
        i: usize,
        src: &Arc<Port>,
        att: &Attached,
        q: usize,
        now: u32,
    ) -> usize {
        let mem = att.mem.memory();
        let mut tx = att.pairs[q].tx.get_mut();
        if !tx.get_queue().ready() || !tx.is_enabled() {
            att.mark_stopped(2 * q + 1);
            return 0;
        }
        let mut ring = match SplitRing::new(tx.get_queue(), &mem) {
            Ok(r) => r,
            Err(e) => {
                stop_broken_queue(src, tx.get_queue_mut(), e);
                return 0;
            }
        };
        let avail = match ring.pending() {
            Ok(0) => return 0,
            Ok(n) => {
                // Polling: the guest need not kick (each kick wakes a thread on our CPU).
                let was_armed = self.armed[i] & (1 << q) != 0;
                self.armed[i] &= !(1 << q);
                if was_armed || !ring.notifications_disabled() {
                    let _ = ring.disable_notifications();
                }
                usize::from(n).min(BATCH)
            }
            Err(e) => {
                stop_broken_queue(src, tx.get_queue_mut(), e);
                return 0;
            }
        };

        // Phase 1: pop, validate, classify.
        let mut segs = Segments::default();
        let mut frames = [TxFrame {
            seg_start: 0,
            seg_end: 0,
            len: 0,
            vlan: 0,
            tagged: false,
            dest: Dest::Dropped,
            offload: None,
            dst: MacAddr([0; 6]),
        }; BATCH];
        let acked = att.acked();
        let policy = src.policy.load();
        let mut nframes = 0;
        let mut rx_bytes = 0u64;
        let mut rx_packets = 0u64;
        let mut completed = [0u16; BATCH];
        let mut cache = LookupCache::default();
        let mut ncompleted = 0;
        for _ in 0..avail {
            if segs.capacity() - segs.len() < MAX_CHAIN_SEGS {
                break; // the rest waits for the next round
            }
            let Some(head) = ring.pop() else { break };
            let head = match head {
                Ok(h) => h,
                Err(reason) => {
                    // The avail entry itself is out of range: nothing to return.
                    src.counters.drop(reason, 1);
                    warn_limited!("port {}: avail entry out of range", src.name);
                    continue;
                }
            };
            let start = segs.len();
            let mut offload = None;
            let frame = ring.walk(head, false, &mut segs).and_then(|chain_len| {
                let len = chain_len
                    .checked_sub(VNET_HDR_LEN)
                    .filter(|l| *l >= ETH_HLEN)
                    .ok_or(DropReason::RuntFrame)?;
                // Flags and GSO type first: both zero is the common, offload-free case.
                let (flags, _) = segs.head::<2>(start);
                let mut limit = self.shared.max_frame;
                if flags != [0, 0] {
                    let (raw, _) = segs.head::<VNET_HDR_LEN>(start);
                    let h = VnetHdr::from_bytes(&raw);
                    caps::check_tx(acked, &h)?;
                    if h.is_gso() {
                        limit = MAX_GSO_FRAME;
                    }
                    if h.has_offload() {
                        offload = Some(h);
                    }
                }
                if len > limit {
                    return Err(DropReason::OversizeFrame);
                }
                segs.skip_front_from(start, VNET_HDR_LEN);
                Ok(len)
            });
            completed[ncompleted] = head;
            ncompleted += 1;
            let len = match frame {
                Ok(len) => len,
                Err(reason) => {
                    segs.truncate(start);
                    src.counters.drop(reason, 1);
                    warn_limited!("port {}: dropped a TX chain: {}", src.name, reason.as_str());
                    continue;
                }
            };
            let (head_bytes, got) = segs.head::<{ ETH_HLEN + VLAN_TAG_LEN }>(start);
            let c = self.classify(
                src,
                &policy,
                &head_bytes[..got.min(len)],
                len,
                now,
                &mut cache,
            );
            rx_packets += 1;
            rx_bytes += len as u64;
            let (vlan, tagged, dest, dst) = match c {
                Ok(c) => (c.vlan, c.tagged, c.dest, c.dst),
                Err(reason) => {
                    src.counters.drop(reason, 1);
                    (0, false, Dest::Dropped, MacAddr([0; 6]))
                }
            };
            frames[nframes] = TxFrame {
                seg_start: start,
                seg_end: segs.len(),
                len,
                vlan,
                tagged,
                dest,
                offload,
                dst,
            };
            nframes += 1;
        }

        // Phase 2: deliver, one destination at a time.
        let frames = &frames[..nframes];
        self.deliver_batch(table, src, q, frames, &segs);

        // Phase 3: give the TX chains back.
        for head in &completed[..ncompleted] {
            if let Err(e) = ring.add_used(*head, 0) {
                stop_broken_queue(src, tx.get_queue_mut(), e);
                return ncompleted;
            }
        }
        match ring.publish() {
            Ok(notify) => {
                ring.write_back(tx.get_queue_mut());
                if notify {
                    let _ = tx.signal_used_queue();
                }
            }
            Err(e) => stop_broken_queue(src, tx.get_queue_mut(), e),
        }
        src.counters
            .rx_packets
            .fetch_add(rx_packets, Ordering::Relaxed);
        src.counters.rx_bytes.fetch_add(rx_bytes, Ordering::Relaxed);
        if let Some(qc) = src.counters.queues.get(q) {
            qc.rx_packets.fetch_add(rx_packets, Ordering::Relaxed);
            qc.rx_bytes.fetch_add(rx_bytes, Ordering::Relaxed);
        }
        ncompleted
    }

    /// Applies the source port's policy to a frame (VLAN, allowed source, ingress
    /// rate), learns the source and picks the destination.
    fn classify(
        &self,
        src: &Port,
        p: &PortPolicy,
        head: &[u8],
        len: usize,
        now: u32,
        cache: &mut LookupCache,
    ) -> Result<Classified, DropReason> {
        let h = L2Header::parse(head).ok_or(DropReason::RuntFrame)?;
        let vlan = p.ingress_vlan(h.vlan_tag)?;
        let tagged = h.vlan_tag.is_some();
        // A batch is usually one flow: reuse the previous frame's answer.
        let hit = cache.valid && cache.src == h.src && cache.dst == h.dst && cache.vlan == vlan;
        if !hit {
            p.check_source(h.src)?;
        }
        if !p.admit_ingress(len, self.clock_ns.get()) {
            return Err(DropReason::IngressRateLimit);
        }
        if !hit {
            let dest = self.learn_and_lookup(src, p, vlan, &h, now)?;
            *cache = LookupCache {
                valid: true,
                src: h.src,
                dst: h.dst,
                vlan,
                dest,
            };
        }
        Ok(Classified {
            vlan,
            tagged,
            dest: cache.dest,
            dst: h.dst,
        })
    }

    fn learn_and_lookup(
        &self,
        src: &Port,
        p: &PortPolicy,
        vlan: u16,
        h: &L2Header,
        now: u32,
    ) -> Result<Dest, DropReason> {
        if h.src.is_multicast() || h.src.is_zero() {
            return Err(DropReason::InvalidSource);
        }
        let limit = p.fdb_limit().unwrap_or(u32::MAX);
        if self
            .shared
            .fdb
            .learn_within(vlan, h.src, src.id, now, limit)
            == Learned::LimitReached
        {
            return Err(DropReason::FdbLimit);
        }
        if h.dst.is_multicast() {
            return Ok(Dest::Flood);
        }
        Ok(match self.shared.fdb.lookup(vlan, h.dst, now) {
            Some(p) if p == src.id => Dest::Dropped, // hairpin: the MAC lives behind the sender
            Some(p) => Dest::Port(p),
            None => Dest::Flood,
        })
    }

    /// Whether `port` carries `vlan`, and how frames leave it.
    fn egress(port: &Port, vlan: u16) -> Option<Egress> {
        port.policy.load().egress(vlan).map(|t| Egress {
            insert_tag: t.insert_tag(),
        })
    }

    /// Delivers the batch's frames grouped by destination port. `hint` picks the
    /// destinations' RX queue (the source's queue pair keeps a flow on one queue).
    fn deliver_batch(
        &self,
        table: &PortTable,
        src: &Port,
        hint: usize,
        frames: &[TxFrame],
        segs: &Segments<'_>,
    ) {
        let flood = frames.iter().any(|f| f.dest == Dest::Flood);
        let mut done = [PortId::MAX; BATCH];
        let mut ndone = 0;
        for f in frames {
            let target = match f.dest {
                Dest::Port(p) => p,
                _ => continue,
            };
            if done[..ndone].contains(&target) {
                continue;
            }
            done[ndone] = target;
            ndone += 1;
            if let Some(port) = table.get(target) {
                self.deliver_to(src.id, port, hint, frames, segs);
            }
        }
        if flood {
            for port in table.iter() {
                if port.id != src.id && !done[..ndone].contains(&port.id) {
                    self.deliver_to(src.id, port, hint, frames, segs);
                }
            }
        }
    }

    /// Copies every frame of the batch bound for `target` into it.
    fn deliver_to(
        &self,
        src: PortId,
        port: &Port,
        hint: usize,
        frames: &[TxFrame],
        segs: &Segments<'_>,
    ) {
        let target = port.id;
        let tp = port.policy.load();
        let mut not_carried = 0;
        // A batch is usually one VLAN: its egress is worked out once.
        let mut last: Option<(u16, Option<Egress>)> = None;
        let out = frames.iter().filter_map(|f| {
            let wanted = match f.dest {
                Dest::Port(p) => p == target,
                Dest::Flood => src != target,
                Dest::Dropped => false,
            };
            if !wanted {
                return None;
            }
            let e = match last {
                Some((v, e)) if v == f.vlan => e,
                _ => {
                    let e = tp.egress(f.vlan).map(|t| Egress {
                        insert_tag: t.insert_tag(),
                    });
                    last = Some((f.vlan, e));
                    e
                }
            };
            let Some(e) = e else {
                // Learned in a VLAN the port no longer carries (policy changed).
                not_carried += u64::from(f.dest == Dest::Port(target));
                return None;
            };
            if !tp.rx_filter_accepts(f.dst) {
                return None;
            }
            let bytes = FrameBytes::Guest(segs.range(f.seg_start, f.seg_end));
            Some((
                OutFrame {
                    bytes,
                    tagged: f.tagged,
                    len: f.len,
                    offload: f.offload,
                },
                e,
            ))
        });
        self.deliver(port, hint, out);
        port.counters.drop(DropReason::VlanNotAllowed, not_carried);
    }

    /// Delivers frames to one port (VM or uplink), counting what arrived and what not.
    fn deliver<'a, 'm: 'a>(
        &self,
        port: &Port,
        hint: usize,
        frames: impl Iterator<Item = (OutFrame<'a, 'm>, Egress)>,
    ) {
        let tp = port.policy.load();
        // The common case, no egress limit, keeps the plain iterator.
        if tp.egress_limiter().is_none() {
            return self.deliver_admitted(port, hint, frames);
        }
        let now_ns = self.clock_ns.get();
        let mut limited = 0u64;
        let frames = frames.filter(|(f, e)| {
            let ok = tp.admit_egress(f.out_len(*e), now_ns);
            limited += u64::from(!ok);
            ok
        });
        self.deliver_admitted(port, hint, frames);
        if limited > 0 {
            port.counters.drop(DropReason::EgressRateLimit, limited);
        }
    }

    /// [`Forwarder::deliver`] once the egress limit let the frames pass.
    fn deliver_admitted<'a, 'm: 'a>(
        &self,
        port: &Port,
        hint: usize,
        frames: impl Iterator<Item = (OutFrame<'a, 'm>, Egress)>,
    ) {
        if let PortBackend::Vhost(v) = &port.backend {
            // An armed hold starts when the guest's receive rings stopped: its VMM
            // paused it for a migration's switch-over; the frames go to the
            // destination afterwards instead of being dropped here.
            if v.hold.is_armed() && !v.rx_running() && v.hold.trigger(Instant::now()) {
                log::info!(
                    "port {}: receive rings stopped, holding its frames (armed hold)",
                    port.name
                );
            }
        }
        let d = match &port.backend {
            PortBackend::Vhost(v) if v.hold.is_active() => {
                // Held (or a drain under way): queue behind what is held already.
                let Some(mut q) = v.hold.queue() else {
                    // The drain ended meanwhile: deliver as usual.
                    return self.deliver_held_ended(port, hint, frames);
                };
                for (f, e) in frames {
                    if let Err(reason) = q.push(f.out_len(e), || held_frame(&f, e)) {
                        port.counters.drop(reason, 1);
                    }
                }
                return;
            }
            PortBackend::Vhost(v) => match v.attached.load_full() {
                Some(att) => {
                    let mut scratch = self.scratch.borrow_mut();
                    deliver_to_guest(port, &att, hint, frames, &mut scratch, false)
                }
                None => {
                    let n = frames.count() as u64;
                    port.counters.drop(DropReason::NoRxBuffer, n);
                    Delivered::default()
                }
            },
            PortBackend::Uplink(u) => {
                let Ok(mut sock) = u.sock.lock() else { return };
                let mut d = Delivered::default();
                let mut dropped = 0;
                let mut scratch = self.scratch.borrow_mut();
                for (f, e) in frames {
                    if let Some(h) = f.offload {
                        // The wire takes finished frames: checksums filled in, segmented.
                        let r = scratch.offload(&f, e, h, caps::UPLINK, |frame, _| {
                            match sock.tx_slot() {
                                Some(slot) if slot.len() >= frame.len() => {
                                    slot[..frame.len()].copy_from_slice(frame);
                                    sock.tx_commit(frame.len());
                                    d.packets += 1;
                                    d.bytes += frame.len() as u64;
                                }
                                _ => dropped += 1,
                            }
                        });
                        if let Err(reason) = r {
                            port.counters.drop(reason, 1);
                        }
                        continue;
                    }
                    let Some(slot) = sock.tx_slot() else {
                        dropped += 1;
                        continue;
                    };
                    let n = f.write_host(e, slot);
                    if n == 0 {
                        dropped += 1;
                        continue;
                    }
                    sock.tx_commit(n);
                    d.packets += 1;
                    d.bytes += n as u64;
                }
                if let Err(e) = sock.tx_flush() {
                    warn_limited!("uplink {}: send failed: {e}", port.name);
                    port.counters.drop(DropReason::UplinkTxError, d.packets);
                    d = Delivered::default();
                }
                port.counters.drop(DropReason::NoRxBuffer, dropped);
                d
            }
        };
        port.counters
            .tx_packets
            .fetch_add(d.packets, Ordering::Relaxed);
        port.counters.tx_bytes.fetch_add(d.bytes, Ordering::Relaxed);
    }

    /// [`Forwarder::deliver_admitted`] for a VM port whose hold ended between the
    /// lock-free check and the lock.
    fn deliver_held_ended<'a, 'm: 'a>(
        &self,
        port: &Port,
        hint: usize,
        frames: impl Iterator<Item = (OutFrame<'a, 'm>, Egress)>,
    ) {
        let Some(att) = port.vhost().and_then(|v| v.attached.load_full()) else {
            port.counters
                .drop(DropReason::NoRxBuffer, frames.count() as u64);
            return;
        };
        let d = {
            let mut scratch = self.scratch.borrow_mut();
            deliver_to_guest(port, &att, hint, frames, &mut scratch, false)
        };
        port.counters
            .tx_packets
            .fetch_add(d.packets, Ordering::Relaxed);
        port.counters.tx_bytes.fetch_add(d.bytes, Ordering::Relaxed);
    }

    /// Receives one batch from an uplink and forwards it.
    fn poll_uplink(&self, table: &PortTable, i: usize, now: u32) -> usize {
        let port = self.uplinks[i].clone();
        let id = port.id;
        let PortBackend::Uplink(u) = &port.backend else {
            return 0;
        };
        let Ok(mut sock) = u.sock.lock() else {
            return 0;
        };
        let mut rx = Delivered::default();
        let wire_mtu = sock.mtu();
        let policy = port.policy.load();
        let now_ns = self.clock_ns.get();
        let mut big = self.uplink_buf.borrow_mut();
        let n = sock.rx_burst(BATCH, |f| {
            rx.packets += 1;
            rx.bytes += f.data.len() as u64;
            let Some(h) = L2Header::parse(f.data) else {
                port.counters.drop(DropReason::RuntFrame, 1);
                return;
            };
            // A TCP super-frame (the sending host's TSO over veth/tap, or GRO) becomes
            // a GSO frame: guests with TSO take it whole, others get it segmented.
            let mut offload = None;
            let mut data = f.data;
            if data.len() > self.shared.max_frame {
                match super_frame(data, wire_mtu, &mut big) {
                    Some((len, hdr)) => {
                        offload = Some(hdr);
                        data = &big[..len];
                    }
                    None => {
                        port.counters.drop(DropReason::OversizeFrame, 1);
                        return;
                    }
                }
            }
            // The kernel usually strips the tag into metadata; else it is in the bytes.
            let (tag, tagged) = match (f.vlan, h.vlan_tag) {
                (Some(v), _) => (Some(v), false),
                (None, Some(v)) if f.data.len() >= ETH_HLEN + VLAN_TAG_LEN => (Some(v), true),
                _ => (None, false),
            };
            let admitted = policy
                .ingress_vlan(tag)
                .and_then(|v| policy.check_source(h.src).map(|()| v))
                .and_then(|v| {
                    if policy.admit_ingress(f.data.len(), now_ns) {
                        Ok(v)
                    } else {
                        Err(DropReason::IngressRateLimit)
                    }
                });
            let vlan = match admitted {
                Ok(v) => v,
                Err(reason) => {
                    port.counters.drop(reason, 1);
                    return;
                }
            };
            let dest = match self.learn_and_lookup(&port, &policy, vlan, &h, now) {
                Ok(d) => d,
                Err(reason) => {
                    port.counters.drop(reason, 1);
                    return;
                }
            };
            // A frame the sending host left with a partial checksum (veth, tap).
            if offload.is_none() && f.csum_not_ready {
                offload = partial_csum_location(data).map(|(csum_start, csum_offset)| VnetHdr {
                    flags: FLAG_NEEDS_CSUM,
                    csum_start,
                    csum_offset,
                    ..VnetHdr::default()
                });
            }
            let frame = OutFrame {
                bytes: FrameBytes::Host(data),
                tagged,
                len: data.len(),
                offload,
            };
            let targets: &mut dyn Iterator<Item = &Arc<Port>> = match dest {
                Dest::Port(p) => &mut table.get(p).into_iter(),
                Dest::Flood => &mut table.iter(),
                Dest::Dropped => &mut std::iter::empty(),
            };
            let hint = flow_hash(data);
            for t in targets {
                // Uplink-to-uplink bridging is not done: each uplink is its own wire.
                if t.id == id || t.vhost().is_none() {
                    continue;
                }
                if let Some(e) = Self::egress(t, vlan) {
                    self.deliver(t, hint, std::iter::once((frame, e)));
                }
            }
        });
        port.counters
            .rx_packets
            .fetch_add(rx.packets, Ordering::Relaxed);
        port.counters
            .rx_bytes
            .fetch_add(rx.bytes, Ordering::Relaxed);
        n
    }
}

/// Copies a TCP frame longer than the MTU into `buf` and describes it as GSO with
/// MSS-sized segments for a `wire_mtu` wire; `None` if it is not TCP over IP.
fn super_frame(data: &[u8], wire_mtu: u16, buf: &mut [u8]) -> Option<(usize, VnetHdr)> {
    let frame = buf.get_mut(..data.len())?;
    frame.copy_from_slice(data);
    let info = crate::offload::parse_frame(frame).ok()?;
    // IP + TCP headers: the TCP data offset (high nibble of byte 12 of the header).
    let tcp_hlen = usize::from(frame.get(info.l4_offset + 12)? >> 4) * 4;
    let headers = info.l4_offset - info.l3_offset + tcp_hlen;
    let mss = u16::try_from(usize::from(wire_mtu).checked_sub(headers)?).ok()?;
    let hdr = crate::offload::gso_from_frame(frame, mss).ok()?;
    Some((data.len(), hdr))
}

/// A copy of `f` as it leaves through `e`, to be held for the guest: the offload's
/// offsets moved by the tag added or removed.
fn held_frame(f: &OutFrame<'_, '_>, e: Egress) -> Result<HeldFrame, DropReason> {
    let mut bytes = vec![0; f.out_len(e)];
    let n = f.write_host(e, &mut bytes);
    if n == 0 {
        return Err(DropReason::OversizeFrame);
    }
    bytes.truncate(n);
    let offload = match f.offload {
        Some(h) if n != f.len => {
            let delta = i32::try_from(n).unwrap_or(i32::MAX) - i32::try_from(f.len).unwrap_or(0);
            Some(h.shift_offsets(delta)?)
        }
        other => other,
    };
    Ok(HeldFrame { bytes, offload })
}

/// Stops a queue whose rings are unusable, so the thread does not spin on it.
fn stop_broken_queue(port: &Port, q: &mut virtio_queue::Queue, e: RingError) {
    q.set_ready(false);
    port.counters.drop(DropReason::RingError, 1);
    warn_limited!("port {}: queue stopped: {e}", port.name);
}

/// Copies frames into a guest's RX ring (taking its lock once) and interrupts it once.
///
/// `drain` (delivering a hold): a frame that finds no receive buffer (or no running
/// RX queue) is not dropped; the delivery stops there with
/// [`Delivered::stalled`] set, leaving the rest of `frames` untaken.
fn deliver_to_guest<'a, 'm: 'a>(
    port: &Port,
    att: &Attached,
    hint: usize,
    frames: impl Iterator<Item = (OutFrame<'a, 'm>, Egress)>,
    scratch: &mut Scratch,
    drain: bool,
) -> Delivered {
    let mut d = Delivered::default();
    let mem = att.mem.memory();
    let mut no_buffer = 0u64;
    // The hinted queue pair if it runs, else the next one that does.
    let npairs = att.pairs.len().max(1);
    let mut chosen = None;
    for k in 0..npairs {
        let q = (hint + k) % npairs;
        if !att.is_started(2 * q) {
            continue;
        }
        let rx = att.pairs[q].rx.get_mut();
        if rx.get_queue().ready() && rx.is_enabled() {
            chosen = Some((q, rx));
            break;
        }
        att.mark_stopped(2 * q);
    }
    let Some((q, mut rx)) = chosen else {
        if drain {
            d.stalled = true;
            return d;
        }
        port.counters
            .drop(DropReason::NoRxBuffer, frames.count() as u64);
        return d;
    };
    let mut ring = match SplitRing::new(rx.get_queue(), &mem) {
        Ok(r) => r,
        Err(e) => {
            stop_broken_queue(port, rx.get_queue_mut(), e);
            return d;
        }
    };
    // RX kicks are never needed: buffers are looked for when a frame arrives.
    if !ring.notifications_disabled() {
        let _ = ring.disable_notifications();
    }
    if let Err(e) = ring.pending() {
        stop_broken_queue(port, rx.get_queue_mut(), e);
        return d;
    }
    let mrg = att.mrg_rxbuf();
    let acked = att.acked();
    let mut segs = Segments::default();
    // Receive chains of the frame being written (set up once per batch, not per frame).
    let mut chains = [(0u16, 0u32); MAX_RX_CHAINS];
    let mut outcome = |r: Result<usize, DropReason>, d: &mut Delivered| match r {
        Ok(n) => {
            d.packets += 1;
            d.bytes += n as u64;
        }
        Err(DropReason::NoRxBuffer) => no_buffer += 1,
        Err(reason) => {
            port.counters.drop(reason, 1);
            warn_limited!("port {}: RX frame dropped: {}", port.name, reason.as_str());
        }
    };
    for (f, e) in frames {
        let Some(h) = f.offload else {
            let r = write_one(
                &mut ring,
                &mut segs,
                &mut chains,
                &f,
                e,
                mrg,
                VnetHdr::default(),
            );
            if drain && r == Err(DropReason::NoRxBuffer) {
                d.stalled = true;
                break;
            }
            outcome(r, &mut d);
            continue;
        };
        let action = caps::decide(acked, &h);
        if action == caps::Action::PassThrough && f.out_len(e) == f.len {
            // The guest takes the offload as is: one copy, straight from the source.
            let r = write_one(
                &mut ring,
                &mut segs,
                &mut chains,
                &f,
                e,
                mrg,
                action.rx_header(acked, &h),
            );
            if drain && r == Err(DropReason::NoRxBuffer) {
                d.stalled = true;
                break;
            }
            outcome(r, &mut d);
            continue;
        }
        let r = scratch.offload(&f, e, h, acked, |frame, hdr| {
            let out = OutFrame {
                bytes: FrameBytes::Host(frame),
                tagged: false,
                len: frame.len(),
                offload: None,
            };
            let r = write_one(
                &mut ring,
                &mut segs,
                &mut chains,
                &out,
                Egress { insert_tag: None },
                mrg,
                hdr,
            );
            outcome(r, &mut d);
        });
        if let Err(reason) = r {
            outcome(Err(reason), &mut d);
        }
    }
    if no_buffer > 0 {
        port.counters.drop(DropReason::NoRxBuffer, no_buffer);
    }
    match ring.publish() {
        Ok(notify) => {
            ring.write_back(rx.get_queue_mut());
            if notify {
                let _ = rx.signal_used_queue();
            }
        }
        Err(e) => stop_broken_queue(port, rx.get_queue_mut(), e),
    }
    if let Some(qc) = port.counters.queues.get(q) {
        qc.tx_packets.fetch_add(d.packets, Ordering::Relaxed);
        qc.tx_bytes.fetch_add(d.bytes, Ordering::Relaxed);
    }
    d
}

/// A cheap hash of a frame's addresses (MACs, and IPv4 addresses when present), so
/// the frames of one flow from an uplink land on one RX queue.
fn flow_hash(frame: &[u8]) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    let mut mix = |b: &[u8]| {
        for x in b {
            h = (h ^ u32::from(*x)).wrapping_mul(0x0100_0193);
        }
    };
    mix(frame.get(..12).unwrap_or(&[]));
    if frame.get(12..14) == Some(&[0x08, 0x00]) {
        mix(frame.get(26..34).unwrap_or(&[]));
    }
    h as usize
}

/// Writes one frame (virtio-net header + bytes) into as many RX chains as it needs.
fn write_one<'m>(
    ring: &mut SplitRing<'m>,
    segs: &mut Segments<'m>,
    chains: &mut [(u16, u32); MAX_RX_CHAINS],
    f: &OutFrame<'_, '_>,
    e: Egress,
    mrg: bool,
    vnet: VnetHdr,
) -> Result<usize, DropReason> {
    let out_len = f.out_len(e);
    let need = VNET_HDR_LEN + out_len;
    let mut nchains = 0;
    let mut room = 0usize;
    segs.clear();
    while room < need {
        let head = match ring.pop() {
            Some(Ok(h)) => h,
            Some(Err(reason)) => return Err(reason),
            None => {
                // Ring looked empty: the guest may have added buffers since.
                if ring.pending().map(|n| n == 0).unwrap_or(true) {
                    ring.unpop(nchains as u16);
                    return Err(DropReason::NoRxBuffer);
                }
                continue;
            }
        };
        match ring.walk(head, true, segs) {
            Ok(cap) => {
                chains[nchains] = (head, u32::try_from(cap).unwrap_or(u32::MAX));
                nchains += 1;
                room += cap;
            }
            Err(reason) => {
                // Hand every chain taken for this frame back empty.
                let _ = ring.add_used(head, 0);
                for (h, _) in &chains[..nchains] {
                    let _ = ring.add_used(*h, 0);
                }
                return Err(reason);
            }
        }
        if room < need && (!mrg || nchains == MAX_RX_CHAINS) {
            ring.unpop(nchains as u16);
            return Err(DropReason::RxBufferTooSmall);
        }
    }
    let num_buffers = if mrg { nchains as u16 } else { 1 };
    let hdr = VnetHdr {
        num_buffers,
        ..vnet
    }
    .to_bytes();
    let mut w = SegWriter::new(segs);
    w.write_header(hdr);
    f.write(e, &mut w);
    let mut left = w.written();
    for (head, cap) in &chains[..nchains] {
        let used = left.min(*cap as usize);
        ring.add_used(*head, used as u32)
            .map_err(|_| DropReason::RingError)?;
        left -= used;
    }
    Ok(out_len)
}
