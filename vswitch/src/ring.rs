//! Split virtqueue fast path over guest memory.
//!
//! `virtio_queue::Queue` (owned by the vhost-user daemon) stays the source of truth for
//! the ring state; a forwarding thread holding the vring lock builds a [`SplitRing`]
//! view for one batch, pops and completes descriptors in bulk (one avail-index read,
//! one used-index store and at most one interrupt per batch), and writes the indices
//! back with [`SplitRing::write_back`]. Every address and length comes from the
//! guest and is checked: a bad chain becomes a [`DropReason`], never a panic.
//!
//! Guest memory carries a [`FastLogBitmap`] per region: every write below (RX data and
//! virtio-net headers through [`SegWriter`], used elements, used index, flags and
//! `avail_event` in [`SplitRing`]) goes through a `VolatileSlice` whose bitmap slice
//! marks the written range dirty while the frontend migrates the VM (see [`crate::dirty`]).
//! Reads (TX data, avail ring, descriptors) never mark.

use std::cell::Cell;
use std::sync::atomic::{fence, Ordering};

use vhost_user_backend::VringRwLock;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::bitmap::BS;
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress, VolatileMemory, VolatileSlice,
};

use crate::api::DropReason;
use crate::dirty::FastLogBitmap;

/// Dirty-page bitmap of guest memory: logs writes during live migration.
pub type GuestBitmap = FastLogBitmap;
/// Guest memory as mapped by the switch.
pub type GuestMem = GuestMemoryMmap<GuestBitmap>;
/// Guest memory that the vhost-user daemon swaps on SET_MEM_TABLE.
pub type GuestMemAtomic = GuestMemoryAtomic<GuestMem>;
/// One vring as the vhost-user daemon shares it.
pub type Vring = VringRwLock<GuestMemAtomic>;
/// One mapped region of guest memory.
pub type GuestRegion = GuestRegionMmap<GuestBitmap>;
/// A checked window into guest memory (writes through it are logged when migrating).
pub type Slice<'m> = VolatileSlice<'m, BS<'m, GuestBitmap>>;

const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
const VRING_USED_F_NO_NOTIFY: u16 = 1;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Most segments one chain may have. Longer chains are dropped as `bad_descriptor`.
pub const MAX_CHAIN_SEGS: usize = 64;
/// Segments a [`Segments`] list holds: room for a batch of typical frames, and always
/// for at least one chain of [`MAX_CHAIN_SEGS`].
pub const SEG_CAPACITY: usize = 192;

/// A ring laid out outside guest memory, or a corrupted index: the queue cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Descriptor table, avail or used ring not inside one guest memory region.
    #[error("ring addresses outside guest memory")]
    Layout,
    /// The guest published more entries than the ring holds.
    #[error("avail index ran {0} entries ahead of the device (queue size {1})")]
    AvailIndex(u16, u16),
}

/// A list of guest memory segments with a fixed capacity: allocated once when
/// created, never grown.
#[derive(Debug)]
pub struct Segments<'m> {
    segs: Vec<Slice<'m>>,
}

impl Default for Segments<'_> {
    fn default() -> Self {
        // A Vec rather than an array: a `VolatileSlice` with a bitmap has no safe
        // "empty" value to fill unused array slots with.
        Segments {
            segs: Vec::with_capacity(SEG_CAPACITY),
        }
    }
}

impl<'m> Segments<'m> {
    /// Forgets every segment.
    pub fn clear(&mut self) {
        self.segs.clear();
    }

    fn push(&mut self, s: Slice<'m>) -> Result<(), DropReason> {
        if self.segs.len() >= SEG_CAPACITY {
            return Err(DropReason::BadDescriptor);
        }
        self.segs.push(s);
        Ok(())
    }

    /// Number of segments.
    pub fn len(&self) -> usize {
        self.segs.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.segs.is_empty()
    }

    /// Room left, in segments.
    pub fn capacity(&self) -> usize {
        SEG_CAPACITY
    }

    /// Forgets the segments from index `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.segs.truncate(len);
    }

    /// The segments `start..end`.
    pub fn range(&self, start: usize, end: usize) -> &[Slice<'m>] {
        self.segs
            .get(start..end.min(self.segs.len()))
            .unwrap_or(&[])
    }

    /// Drops the first `n` bytes of the segments from index `start` to the end (the
    /// virtio-net header of the chain walked last).
    pub fn skip_front_from(&mut self, start: usize, mut n: usize) {
        let mut first = start;
        while n > 0 && first < self.segs.len() {
            let s = self.segs[first];
            if s.len() <= n {
                n -= s.len();
                first += 1;
            } else {
                match s.offset(n) {
                    Ok(rest) => self.segs[first] = rest,
                    Err(_) => first += 1,
                }
                n = 0;
            }
        }
        if first > start {
            self.segs.drain(start..first);
        }
    }

    /// Copies bytes from `offset` of segments `start..end` into `buf`; returns how many.
    pub fn read_range(&self, start: usize, end: usize, offset: usize, buf: &mut [u8]) -> usize {
        gather(self.range(start, end), offset, buf)
    }

    /// The first `N` bytes of segments `start..`, read at once when the first segment
    /// holds them all (the usual case), else gathered across segments.
    pub fn head<const N: usize>(&self, start: usize) -> ([u8; N], usize)
    where
        [u8; N]: vm_memory::ByteValued,
    {
        if let Some(s) = self.segs.get(start) {
            if let Ok(r) = s.get_ref::<[u8; N]>(0) {
                return (r.load(), N);
            }
        }
        let mut buf = [0u8; N];
        let n = self.read_range(start, self.segs.len(), 0, &mut buf);
        (buf, n)
    }
}

/// Copies bytes from `offset` of the concatenation of `segs` into `buf`; returns how many.
pub fn gather(segs: &[Slice<'_>], mut offset: usize, buf: &mut [u8]) -> usize {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        if offset >= s.len() {
            offset -= s.len();
            continue;
        }
        let n = (s.len() - offset).min(buf.len() - done);
        if let Ok(sub) = s.subslice(offset, n) {
            done += sub.copy_to(&mut buf[done..done + n]);
        }
        offset = 0;
    }
    done
}

/// A writer filling guest buffers in order, across segment boundaries.
#[derive(Debug)]
pub struct SegWriter<'a, 'm> {
    segs: &'a Segments<'m>,
    idx: usize,
    off: usize,
    written: usize,
}

impl<'a, 'm> SegWriter<'a, 'm> {
    /// Starts at the beginning of `segs`.
    pub fn new(segs: &'a Segments<'m>) -> Self {
        SegWriter {
            segs,
            idx: 0,
            off: 0,
            written: 0,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> usize {
        self.written
    }

    fn current(&mut self) -> Option<Slice<'m>> {
        while let Some(&s) = self.segs.segs.get(self.idx) {
            if self.off < s.len() {
                return s.offset(self.off).ok();
            }
            self.idx += 1;
            self.off = 0;
        }
        None
    }

    /// Writes the virtio-net header at the start: one volatile store when the first
    /// buffer holds it, else spread like any bytes.
    pub fn write_header<const N: usize>(&mut self, hdr: [u8; N]) -> usize
    where
        [u8; N]: vm_memory::ByteValued,
    {
        if self.written == 0 {
            if let Some(s) = self.segs.segs.first() {
                if let Ok(r) = s.get_ref::<[u8; N]>(0) {
                    r.store(hdr);
                    self.off = N;
                    self.written = N;
                    return N;
                }
            }
        }
        self.write_bytes(&hdr)
    }

    /// Copies host bytes; returns how many fitted.
    pub fn write_bytes(&mut self, mut buf: &[u8]) -> usize {
        let start = self.written;
        while !buf.is_empty() {
            let Some(dst) = self.current() else { break };
            let n = dst.len().min(buf.len());
            if let Ok(d) = dst.subslice(0, n) {
                d.copy_from(&buf[..n]);
            }
            self.off += n;
            self.written += n;
            buf = &buf[n..];
        }
        self.written - start
    }

    /// Copies guest bytes from `src` (one copy, guest to guest); returns how many fitted.
    pub fn write_slice(&mut self, mut src: Slice<'_>) -> usize {
        let start = self.written;
        while !src.is_empty() {
            let Some(dst) = self.current() else { break };
            let n = dst.len().min(src.len());
            let (Ok(s), Ok(d)) = (src.subslice(0, n), dst.subslice(0, n)) else {
                break;
            };
            s.copy_to_volatile_slice(d);
            self.off += n;
            self.written += n;
            src = match src.offset(n) {
                Ok(rest) => rest,
                Err(_) => break,
            };
        }
        self.written - start
    }
}

/// One batch's view of a split virtqueue. Build it under the vring lock.
#[derive(Debug)]
pub struct SplitRing<'m> {
    mem: &'m GuestMem,
    /// The region the last buffer was in: consecutive buffers nearly always share one.
    region: Cell<Option<&'m GuestRegion>>,
    desc: Slice<'m>,
    avail: Slice<'m>,
    used: Slice<'m>,
    size: u16,
    next_avail: u16,
    next_used: u16,
    published_used: u16,
    avail_idx: u16,
    event_idx: bool,
}

impl<'m> SplitRing<'m> {
    /// Maps the rings of a ready queue. Fails if they do not lie inside guest memory.
    pub fn new(q: &Queue, mem: &'m GuestMem) -> Result<Self, RingError> {
        let size = q.size();
        let n = usize::from(size);
        let get = |addr: u64, len: usize| {
            mem.get_slice(GuestAddress(addr), len)
                .map_err(|_| RingError::Layout)
        };
        let desc = get(q.desc_table(), 16 * n)?;
        let avail = get(q.avail_ring(), 6 + 2 * n)?;
        let used = get(q.used_ring(), 6 + 8 * n)?;
        // Atomic accesses need natural alignment (the spec demands it anyway).
        if !q.avail_ring().is_multiple_of(2)
            || !q.used_ring().is_multiple_of(4)
            || !q.desc_table().is_multiple_of(16)
        {
            return Err(RingError::Layout);
        }
        if size == 0 || !size.is_power_of_two() {
            return Err(RingError::Layout);
        }
        Ok(SplitRing {
            mem,
            region: Cell::new(None),
            desc,
            avail,
            used,
            size,
            next_avail: q.next_avail(),
            next_used: q.next_used(),
            published_used: q.next_used(),
            avail_idx: q.next_avail(),
            event_idx: q.event_idx_enabled(),
        })
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Reads the guest's avail index and returns how many chains wait.
    pub fn pending(&mut self) -> Result<u16, RingError> {
        let idx: u16 = self
            .avail
            .load(2, Ordering::Acquire)
            .map_err(|_| RingError::Layout)?;
        let n = idx.wrapping_sub(self.next_avail);
        if n > self.size {
            return Err(RingError::AvailIndex(n, self.size));
        }
        self.avail_idx = idx;
        Ok(n)
    }

    /// Takes the next available head, if [`SplitRing::pending`] saw one.
    pub fn pop(&mut self) -> Option<Result<u16, DropReason>> {
        if self.next_avail == self.avail_idx {
            return None;
        }
        let slot = usize::from(self.next_avail % self.size);
        self.next_avail = self.next_avail.wrapping_add(1);
        let head = self.avail.load::<u16>(4 + 2 * slot, Ordering::Relaxed);
        Some(match head {
            Ok(h) if h < self.size => Ok(h),
            _ => Err(DropReason::BadDescriptor),
        })
    }

    /// Gives back the last `n` popped heads (they stay available for the next batch).
    pub fn unpop(&mut self, n: u16) {
        self.next_avail = self.next_avail.wrapping_sub(n);
    }

    /// Walks the chain at `head`, appending its buffers to `segs`. `writable` is the
    /// direction the device needs (true for RX). Returns the chain's byte length.
    pub fn walk(
        &self,
        head: u16,
        writable: bool,
        segs: &mut Segments<'m>,
    ) -> Result<usize, DropReason> {
        let mut idx = head;
        let mut total = 0usize;
        let first = segs.len();
        // Past MAX_CHAIN_SEGS the chain is dropped, but walking on (without recording)
        // tells a loop (more descriptors than the queue has) from a long chain.
        let mut too_long = false;
        for _ in 0..self.size {
            // One volatile 16-byte read (the table is 16-aligned, checked in new()).
            let d: Descriptor = self
                .desc
                .get_ref::<Descriptor>(usize::from(idx) * 16)
                .map_err(|_| DropReason::BadDescriptor)?
                .load();
            let flags = d.flags();
            if flags & VIRTQ_DESC_F_INDIRECT != 0 || (flags & VIRTQ_DESC_F_WRITE != 0) != writable {
                return Err(DropReason::BadDescriptor);
            }
            let len = d.len() as usize;
            if len == 0 {
                return Err(DropReason::BadDescriptor);
            }
            too_long |= segs.len() - first >= MAX_CHAIN_SEGS;
            if !too_long {
                self.push_buffer(d.addr(), len, first, segs)?;
            }
            total += len;
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                return if too_long {
                    Err(DropReason::BadDescriptor)
                } else {
                    Ok(total)
                };
            }
            idx = d.next();
            if idx >= self.size {
                return Err(DropReason::BadDescriptor);
            }
        }
        Err(DropReason::DescriptorLoop)
    }

    /// Appends the guest buffer `[addr, addr + len)` to `segs`, split at region ends.
    fn push_buffer(
        &self,
        addr: GuestAddress,
        len: usize,
        first: usize,
        segs: &mut Segments<'m>,
    ) -> Result<(), DropReason> {
        // Fast path: the buffer lies in one region (nearly always).
        if let Some(s) = self.slice_in_one_region(addr, len) {
            return segs.push(s);
        }
        let mut left = len;
        for s in self.mem.get_slices(addr, len) {
            let s = s.map_err(|_| DropReason::BadAddress)?;
            if segs.len() - first >= MAX_CHAIN_SEGS {
                return Err(DropReason::BadDescriptor);
            }
            left -= s.len();
            segs.push(s)?;
        }
        if left != 0 {
            return Err(DropReason::BadAddress);
        }
        Ok(())
    }

    /// `len` bytes at `addr` if they lie in a single guest memory region.
    #[inline]
    fn slice_in_one_region(&self, addr: GuestAddress, len: usize) -> Option<Slice<'m>> {
        let cached = self
            .region
            .get()
            .filter(|r| addr >= r.start_addr() && addr.0 - r.start_addr().0 < r.len());
        let r = match cached {
            Some(r) => r,
            None => {
                let r = self.mem.find_region(addr)?;
                self.region.set(Some(r));
                r
            }
        };
        r.get_slice(MemoryRegionAddress(addr.0 - r.start_addr().0), len)
            .ok()
    }

    /// Records `head` as used with `len` bytes written (not yet visible to the guest).
    pub fn add_used(&mut self, head: u16, len: u32) -> Result<(), RingError> {
        let slot = usize::from(self.next_used % self.size);
        let elem = [u32::from(head).to_le(), len.to_le()];
        self.used
            .get_ref::<[u32; 2]>(4 + 8 * slot)
            .map_err(|_| RingError::Layout)?
            .store(elem);
        self.next_used = self.next_used.wrapping_add(1);
        Ok(())
    }

    /// Makes the used entries added since the last call visible and returns whether
    /// the guest asked to be interrupted for them.
    pub fn publish(&mut self) -> Result<bool, RingError> {
        if self.next_used == self.published_used {
            return Ok(false);
        }
        let old = self.published_used;
        let new = self.next_used;
        self.used
            .store(new, 2, Ordering::Release)
            .map_err(|_| RingError::Layout)?;
        self.published_used = new;
        // Order the used-index store before reading the guest's interrupt suppression.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let used_event: u16 = self
                .avail
                .load(4 + 2 * usize::from(self.size), Ordering::Relaxed)
                .map_err(|_| RingError::Layout)?;
            // vring_need_event(): did `new` pass `used_event` since `old`?
            Ok(new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags: u16 = self
                .avail
                .load(0, Ordering::Relaxed)
                .map_err(|_| RingError::Layout)?;
            Ok(flags & VRING_AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Asks the guest to kick for new buffers (before the device goes to sleep).
    /// The caller must check [`SplitRing::pending`] afterwards: a kick may have been
    /// skipped just before.
    pub fn enable_notifications(&self) -> Result<(), RingError> {
        let r = if self.event_idx {
            self.used.store(
                self.next_avail,
                4 + 8 * usize::from(self.size),
                Ordering::Relaxed,
            )
        } else {
            self.used.store(0u16, 0, Ordering::Relaxed)
        };
        fence(Ordering::SeqCst);
        r.map_err(|_| RingError::Layout)
    }

    /// Whether the guest is currently told not to kick (always true with EVENT_IDX
    /// while the device does not move `avail_event`).
    pub fn notifications_disabled(&self) -> bool {
        self.event_idx
            || self
                .used
                .load::<u16>(0, Ordering::Relaxed)
                .is_ok_and(|f| f & VRING_USED_F_NO_NOTIFY != 0)
    }

    /// Tells the guest not to kick while the device polls.
    pub fn disable_notifications(&self) -> Result<(), RingError> {
        if self.event_idx {
            // With EVENT_IDX the guest kicks only when passing avail_event, which
            // stays behind while we poll: nothing to write.
            return Ok(());
        }
        self.used
            .store(VRING_USED_F_NO_NOTIFY, 0, Ordering::Relaxed)
            .map_err(|_| RingError::Layout)
    }

    /// Stores the ring position back into the daemon's queue (call before unlocking).
    pub fn write_back(&self, q: &mut Queue) {
        q.set_next_avail(self.next_avail);
        q.set_next_used(self.published_used);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryBackend;

    const BASE: u64 = 0x10_0000;
    const DESC: u64 = BASE;
    const AVAIL: u64 = BASE + 0x1000;
    const USED: u64 = BASE + 0x2000;
    const DATA: u64 = BASE + 0x4000;
    const QSIZE: u16 = 8;

    fn setup() -> (GuestMem, Queue) {
        let mem = GuestMem::from_ranges(&[(GuestAddress(BASE), 0x10_0000)]).unwrap();
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_ready(true);
        (mem, q)
    }

    fn put_desc(mem: &GuestMem, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        mem.write_obj(
            Descriptor::new(addr, len, flags, next),
            GuestAddress(DESC + 16 * u64::from(i)),
        )
        .unwrap();
    }

    fn publish_avail(mem: &GuestMem, heads: &[u16]) {
        for (i, h) in heads.iter().enumerate() {
            mem.write_obj(*h, GuestAddress(AVAIL + 4 + 2 * i as u64))
                .unwrap();
        }
        mem.write_obj(heads.len() as u16, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    #[test]
    fn test_ring_pop_walk_and_complete_chain() {
        let (mem, mut q) = setup();
        put_desc(&mem, 0, DATA, 12, VIRTQ_DESC_F_NEXT, 1);
        put_desc(&mem, 1, DATA + 0x100, 60, 0, 0);
        publish_avail(&mem, &[0]);
        let mut r = SplitRing::new(&q, &mem).unwrap();
        assert_eq!(r.pending().unwrap(), 1);
        let head = r.pop().unwrap().unwrap();
        let mut segs = Segments::default();
        assert_eq!(r.walk(head, false, &mut segs).unwrap(), 72);
        assert_eq!(segs.len(), 2);
        segs.skip_front_from(0, 12);
        assert_eq!(segs.len(), 1);
        r.add_used(head, 0).unwrap();
        assert!(
            r.publish().unwrap(),
            "no EVENT_IDX and no NO_INTERRUPT flag: interrupt"
        );
        r.write_back(&mut q);
        assert_eq!((q.next_avail(), q.next_used()), (1, 1));
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 1);
    }

    #[test]
    fn test_ring_walk_rejects_loop_and_bad_next_and_direction() {
        let (mem, q) = setup();
        let r = SplitRing::new(&q, &mem).unwrap();
        let mut segs = Segments::default();
        put_desc(&mem, 0, DATA, 16, VIRTQ_DESC_F_NEXT, 0);
        assert_eq!(r.walk(0, false, &mut segs), Err(DropReason::DescriptorLoop));
        segs.clear();
        put_desc(&mem, 1, DATA, 16, VIRTQ_DESC_F_NEXT, 200);
        assert_eq!(r.walk(1, false, &mut segs), Err(DropReason::BadDescriptor));
        segs.clear();
        put_desc(&mem, 2, DATA, 16, VIRTQ_DESC_F_WRITE, 0);
        assert_eq!(r.walk(2, false, &mut segs), Err(DropReason::BadDescriptor));
        segs.clear();
        put_desc(&mem, 3, 0xdead_0000_0000, 16, 0, 0);
        assert_eq!(r.walk(3, false, &mut segs), Err(DropReason::BadAddress));
        segs.clear();
        put_desc(&mem, 4, BASE + 0x10_0000 - 8, 16, 0, 0);
        assert_eq!(
            r.walk(4, false, &mut segs),
            Err(DropReason::BadAddress),
            "runs past memory end"
        );
    }

    #[test]
    fn test_ring_rejects_rings_outside_memory() {
        let (mem, mut q) = setup();
        q.set_used_ring_address(Some(0x1000), Some(0));
        assert_eq!(SplitRing::new(&q, &mem).unwrap_err(), RingError::Layout);
    }

    #[test]
    fn test_ring_avail_index_far_ahead_is_error() {
        let (mem, q) = setup();
        mem.write_obj(100u16, GuestAddress(AVAIL + 2)).unwrap();
        let mut r = SplitRing::new(&q, &mem).unwrap();
        assert_eq!(r.pending(), Err(RingError::AvailIndex(100, QSIZE)));
    }

    #[test]
    fn test_ring_event_idx_interrupt_only_when_crossing_used_event() {
        let (mem, mut q) = setup();
        q.set_event_idx(true);
        put_desc(&mem, 0, DATA, 64, VIRTQ_DESC_F_WRITE, 0);
        put_desc(&mem, 1, DATA + 64, 64, VIRTQ_DESC_F_WRITE, 0);
        publish_avail(&mem, &[0, 1]);
        // used_event = 1: the guest wants an interrupt once entry 1 is used.
        mem.write_obj(1u16, GuestAddress(AVAIL + 4 + 2 * u64::from(QSIZE)))
            .unwrap();
        let mut r = SplitRing::new(&q, &mem).unwrap();
        r.pending().unwrap();
        let h = r.pop().unwrap().unwrap();
        r.add_used(h, 64).unwrap();
        assert!(!r.publish().unwrap());
        let h = r.pop().unwrap().unwrap();
        r.add_used(h, 64).unwrap();
        assert!(r.publish().unwrap());
    }

    /// Guest page numbers of the test layout.
    fn page(gpa: u64) -> u64 {
        gpa >> 12
    }

    #[test]
    fn test_ring_logs_used_ring_and_rx_writes_not_reads() {
        use crate::dirty::tests::{clear, dirty_pages, install_local_log};
        let (mem, mut q) = setup();
        q.set_event_idx(true);
        let log = install_local_log(&mem, crate::dirty::log_size_for(BASE + 0x10_0000) as usize);
        // RX chain: 5 bytes on one page, 0x2000 bytes over two pages further on.
        put_desc(&mem, 0, DATA, 5, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
        put_desc(&mem, 1, DATA + 0x3000, 0x2000, VIRTQ_DESC_F_WRITE, 0);
        // TX chain in the next pages.
        put_desc(&mem, 2, DATA + 0x8000, 64, 0, 0);
        publish_avail(&mem, &[0, 2]);
        let src = mem.get_slice(GuestAddress(DATA + 0x8000), 64).unwrap();
        // (The test's own descriptor and avail writes went through the logged memory.)
        clear(&log);

        // Popping and walking reads descriptors, the avail ring and (for TX) data.
        let mut r = SplitRing::new(&q, &mem).unwrap();
        r.pending().unwrap();
        let rx = r.pop().unwrap().unwrap();
        let tx = r.pop().unwrap().unwrap();
        let mut rx_segs = Segments::default();
        let mut tx_segs = Segments::default();
        r.walk(rx, true, &mut rx_segs).unwrap();
        r.walk(tx, false, &mut tx_segs).unwrap();
        let mut buf = [0u8; 64];
        tx_segs.read_range(0, tx_segs.len(), 0, &mut buf);
        assert!(r.notifications_disabled());
        assert!(
            dirty_pages(&log).is_empty(),
            "reads logged: {:x?}",
            dirty_pages(&log)
        );

        // Header + data: the first buffer's page and only the written part of the second.
        let mut w = SegWriter::new(&rx_segs);
        w.write_header([1u8; 5]);
        w.write_bytes(&[2u8; 3]);
        assert_eq!(w.write_slice(src), 64);
        assert_eq!(dirty_pages(&log), [page(DATA), page(DATA + 0x3000)]);
        clear(&log);
        w.write_bytes(&[3u8; 0x1000]);
        assert_eq!(
            dirty_pages(&log),
            [page(DATA + 0x3000), page(DATA + 0x4000)]
        );
        clear(&log);

        // Used elements, used index and avail_event: the used ring's page only.
        r.add_used(rx, 0x1000).unwrap();
        r.add_used(tx, 0).unwrap();
        assert_eq!(dirty_pages(&log), [page(USED)]);
        clear(&log);
        r.publish().unwrap();
        assert_eq!(dirty_pages(&log), [page(USED)]);
        clear(&log);
        r.enable_notifications().unwrap();
        assert_eq!(dirty_pages(&log), [page(USED)]);
        clear(&log);

        // Logging off: the same writes leave no trace.
        crate::dirty::set_logging(&mem, false);
        let mut w = SegWriter::new(&rx_segs);
        w.write_bytes(&[4u8; 0x100]);
        r.add_used(rx, 0x100).unwrap();
        r.publish().unwrap();
        assert!(dirty_pages(&log).is_empty());
    }

    #[test]
    fn test_seg_writer_spans_segments_and_reads_back() {
        let (mem, q) = setup();
        put_desc(&mem, 0, DATA, 5, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 1);
        put_desc(&mem, 1, DATA + 100, 20, VIRTQ_DESC_F_WRITE, 0);
        let r = SplitRing::new(&q, &mem).unwrap();
        let mut segs = Segments::default();
        assert_eq!(r.walk(0, true, &mut segs).unwrap(), 25);
        let mut w = SegWriter::new(&segs);
        assert_eq!(w.write_bytes(b"hello, world"), 12);
        let src = mem.get_slice(GuestAddress(DATA + 500), 20).unwrap();
        src.copy_from(&[7u8; 20]);
        assert_eq!(w.write_slice(src), 13, "only 13 bytes of room left");
        let mut back = [0u8; 25];
        assert_eq!(segs.read_range(0, segs.len(), 0, &mut back), 25);
        assert_eq!(&back[..12], b"hello, world");
        assert_eq!(&back[12..], &[7u8; 13]);
    }
}
