//! Dirty-page logging for live migration (`VHOST_F_LOG_ALL` with the `LOG_SHMFD`
//! protocol feature).
//!
//! While a VM migrates, the frontend (QEMU) must know every guest page the switch
//! writes. It shares a log with VHOST_USER_SET_LOG_BASE (a memfd): one bit per 4 KiB
//! page, indexed by guest physical address (bit `p % 8` of byte `p / 8` for page `p`).
//!
//! [`FastLogBitmap`] is the bitmap of every guest memory region the switch maps
//! ([`crate::ring::GuestBitmap`]). vm-memory calls its `mark_dirty` after every write
//! through a [`VolatileSlice`](vm_memory::VolatileSlice) or `Bytes` access (one call per
//! copy or store, with the byte range), never for reads; so RX data, virtio-net headers
//! and used-ring updates are logged without the data path knowing. When logging is off
//! a write costs one relaxed load of the region's gate.
//!
//! On SET_LOG_BASE, vhost-user-backend builds a [`RegionLog`] per region
//! ([`MemRegionBitmap::new`]: fails, and so closes the connection, if the log is too
//! small for the region) and installs it ([`BitmapReplace::replace`]), which also opens
//! the gate. vhost-user-backend 0.24 ignores a SET_FEATURES that clears LOG_ALL, so the
//! port must report acknowledged features and memory changes to a per-connection
//! [`LogControl`]:
//!
//! ```text
//! // As port.rs does: NetBackend has a `log: Arc<LogControl>` (one per connection).
//! fn acked_features(&self, features: u64) {
//!     self.log.acked_features(&self.mem, features); // opens/closes the gate (bit 26)
//! }
//! fn update_memory(&self, mem: GuestMemAtomic) -> io::Result<()> {
//!     self.log.memory_updated(&mem); // carries the log over to the new regions
//!     Ok(())
//! }
//! ```
//!
//! A SET_MEM_TABLE (or ADD_MEM_REG) creates regions with fresh, unlogged bitmaps. QEMU
//! does not resend SET_LOG_BASE after a memory change unless the log had to grow, so
//! [`LogControl::memory_updated`] installs the current log on the new regions. Without
//! it (or when the current log does not cover a new region), such regions stay unlogged
//! until the next SET_LOG_BASE.

use std::fmt;
use std::io;
use std::sync::atomic::{fence, AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use vhost_user_backend::bitmap::{BitmapReplace, MemRegionBitmap, MmapLogReg};
use vm_memory::bitmap::{Bitmap, RefSlice, WithBitmapSlice};
use vm_memory::mmap::{MmapRegion, NewBitmap};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend, GuestMemoryRegion};

use crate::features::VHOST_F_LOG_ALL;
use crate::logging::warn_limited;
use crate::ring::{GuestMem, GuestMemAtomic, GuestRegion};

/// Guest memory covered by one bit of the log (`VHOST_LOG_PAGE`).
pub const LOG_PAGE_SIZE: u64 = 1 << LOG_PAGE_SHIFT;
const LOG_PAGE_SHIFT: u32 = 12;
/// Pages covered by one byte of the log.
const PAGES_PER_BYTE_SHIFT: u32 = 3;

/// Bytes of log needed to cover guest physical addresses `0..end`.
pub fn log_size_for(end: u64) -> u64 {
    end.div_ceil(LOG_PAGE_SIZE).div_ceil(8)
}

/// Where the log bits live.
#[derive(Clone)]
enum LogMem {
    /// The frontend's log, mapped by vhost-user-backend on SET_LOG_BASE.
    Shared(Arc<MmapLogReg>),
    /// A log in process memory (unit tests).
    #[cfg(test)]
    Local(Arc<[AtomicU8]>),
}

/// Length of the mapping behind `log`. vhost-user-backend 0.24 keeps it private (its
/// `Index` impl asserts against it); its derived `Debug` output
/// (`MmapLogReg { addr: 0x…, len: N }`) is the only way to read it. `None` if that
/// format ever changes: the log is then refused rather than trusted.
fn mapped_len(log: &MmapLogReg) -> Option<usize> {
    parse_len(&format!("{log:?}"))
}

fn parse_len(debug: &str) -> Option<usize> {
    let rest = debug.rsplit_once("len: ")?.1;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The part of the log that covers one guest memory region.
///
/// Built by vhost-user-backend on SET_LOG_BASE for every region; every bit it can touch
/// was checked at construction to lie inside the mapped log.
pub struct RegionLog {
    mem: LogMem,
    /// Usable bytes of `mem`.
    mem_len: usize,
    /// Guest physical address of the region.
    start: usize,
    /// Length of the region in bytes (non-zero; `start + len - 1` does not overflow).
    len: usize,
}

impl fmt::Debug for RegionLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionLog")
            .field("start", &format_args!("{:#x}", self.start))
            .field("len", &format_args!("{:#x}", self.len))
            .field("log_bytes", &self.mem_len)
            .finish()
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

impl RegionLog {
    /// The bits of `mem` (`mem_len` usable bytes) for the region at guest physical
    /// address `start` of `len` bytes. Fails if the log does not cover the region.
    fn new_checked(start: u64, len: u64, mem: LogMem, mem_len: usize) -> io::Result<Self> {
        let bad = || {
            invalid(format!(
                "dirty log: bad memory region {start:#x} + {len:#x}"
            ))
        };
        let (Ok(ustart), Ok(ulen)) = (usize::try_from(start), usize::try_from(len)) else {
            return Err(bad());
        };
        if ulen == 0 || ustart.checked_add(ulen).is_none() {
            return Err(bad());
        }
        let end = start + len;
        let need = log_size_for(end);
        if need > mem_len as u64 {
            return Err(invalid(format!(
                "dirty log of {mem_len} bytes covers guest memory up to {:#x}; region {start:#x}..{end:#x} needs {need} bytes",
                (mem_len as u64).saturating_mul(8 * LOG_PAGE_SIZE)
            )));
        }
        Ok(RegionLog {
            mem,
            mem_len,
            start: ustart,
            len: ulen,
        })
    }

    /// The same log for another region (after a memory table change).
    fn for_region(&self, region: &GuestRegion) -> io::Result<Self> {
        RegionLog::new_checked(
            region.start_addr().0,
            region.len(),
            self.mem.clone(),
            self.mem_len,
        )
    }

    #[inline]
    fn byte(&self, index: usize) -> Option<&AtomicU8> {
        if index >= self.mem_len {
            return None;
        }
        match &self.mem {
            // In bounds: `mem_len` is the mapping's length (its Index asserts it anyway).
            LogMem::Shared(m) => Some(&m[index]),
            #[cfg(test)]
            LogMem::Local(m) => m.get(index),
        }
    }

    /// Sets the bits of the pages `[offset, offset + len)` of the region touches (clamped
    /// to the region).
    #[inline]
    fn mark(&self, offset: usize, len: usize) {
        if len == 0 || offset >= self.len {
            return;
        }
        let len = len.min(self.len - offset);
        // No overflow: `start + self.len` was checked at construction.
        let first = (self.start + offset) >> LOG_PAGE_SHIFT;
        let last = (self.start + offset + len - 1) >> LOG_PAGE_SHIFT;
        let (first_byte, last_byte) = (first >> PAGES_PER_BYTE_SHIFT, last >> PAGES_PER_BYTE_SHIFT);
        for b in first_byte..=last_byte {
            let lo = if b == first_byte { first & 7 } else { 0 };
            let hi = if b == last_byte { last & 7 } else { 7 };
            let mask = (((1u16 << (hi - lo + 1)) - 1) << lo) as u8;
            if let Some(byte) = self.byte(b) {
                // Release: the frontend that sees the bit (and clears it atomically before
                // copying the page) also sees the data written before this call.
                byte.fetch_or(mask, Ordering::Release);
            }
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        if offset >= self.len {
            return false;
        }
        let page = (self.start + offset) >> LOG_PAGE_SHIFT;
        self.byte(page >> PAGES_PER_BYTE_SHIFT)
            .is_some_and(|b| b.load(Ordering::Relaxed) & (1 << (page & 7)) != 0)
    }
}

impl MemRegionBitmap for RegionLog {
    fn new<R: GuestMemoryRegion>(region: &R, logmem: Arc<MmapLogReg>) -> io::Result<Self> {
        let mem_len = mapped_len(&logmem)
            .ok_or_else(|| io::Error::other("dirty log: cannot tell the size of the mapped log"))?;
        RegionLog::new_checked(
            region.start_addr().0,
            region.len(),
            LogMem::Shared(logmem),
            mem_len,
        )
    }
}

/// Dirty-page bitmap of one guest memory region: a gate and, once the frontend shared
/// one, the region's part of the log.
///
/// Slices are [`RefSlice`]s (a reference and an offset: nothing is cloned per guest
/// memory access). `mark_dirty` costs one relaxed load while the gate is closed.
#[derive(Default)]
pub struct FastLogBitmap {
    /// Log writes: opened by SET_LOG_BASE and by acknowledging LOG_ALL, closed by a
    /// SET_FEATURES without it (see [`LogControl`]).
    on: AtomicBool,
    log: ArcSwapOption<RegionLog>,
}

impl fmt::Debug for FastLogBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FastLogBitmap")
            .field("on", &self.on.load(Ordering::Relaxed))
            .field("log", &*self.log.load())
            .finish()
    }
}

/// A snapshot: the copy has the same gate and log but is independent afterwards.
/// (vm-memory never clones a region's bitmap; vhost-user-backend only requires `Clone`.)
impl Clone for FastLogBitmap {
    fn clone(&self) -> Self {
        FastLogBitmap {
            on: AtomicBool::new(self.on.load(Ordering::Relaxed)),
            log: ArcSwapOption::new(self.log.load_full()),
        }
    }
}

impl FastLogBitmap {
    /// Opens or closes the gate. Writes are logged while it is open and a log is set.
    pub fn set_logging(&self, on: bool) {
        self.on.store(on, Ordering::Release);
    }

    /// Whether the gate is open and a log is set.
    pub fn is_logging(&self) -> bool {
        self.on.load(Ordering::Acquire) && self.log.load().is_some()
    }

    /// Whether the frontend shared a log covering this region.
    pub fn has_log(&self) -> bool {
        self.log.load().is_some()
    }

    #[inline(never)]
    fn mark_logged(&self, offset: usize, len: usize) {
        // Pairs with the release store that opened the gate after installing the log.
        fence(Ordering::Acquire);
        if let Some(log) = &*self.log.load() {
            log.mark(offset, len);
        }
    }
}

impl<'a> WithBitmapSlice<'a> for FastLogBitmap {
    type S = RefSlice<'a, FastLogBitmap>;
}

impl Bitmap for FastLogBitmap {
    #[inline]
    fn mark_dirty(&self, offset: usize, len: usize) {
        if self.on.load(Ordering::Relaxed) {
            self.mark_logged(offset, len);
        }
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.log.load().as_ref().is_some_and(|l| l.dirty_at(offset))
    }

    fn slice_at(&self, offset: usize) -> RefSlice<'_, FastLogBitmap> {
        RefSlice::new(self, offset)
    }
}

impl NewBitmap for FastLogBitmap {
    fn with_len(_len: usize) -> Self {
        FastLogBitmap::default()
    }
}

impl BitmapReplace for FastLogBitmap {
    type InnerBitmap = RegionLog;

    /// SET_LOG_BASE: log into `log` from now on (opens the gate).
    fn replace(&self, log: RegionLog) {
        self.log.store(Some(Arc::new(log)));
        self.on.store(true, Ordering::Release);
    }
}

/// The bitmap of a region (vm-memory's `GuestMemoryRegion::bitmap` returns a slice).
fn region_bitmap(r: &GuestRegion) -> &FastLogBitmap {
    MmapRegion::bitmap(r)
}

/// Opens (`on`) or closes the gate of every region of `mem`. Writes to a region are
/// logged while its gate is open and the frontend shared a log (SET_LOG_BASE).
/// [`LogControl`] calls this; use it directly only without one.
pub fn set_logging(mem: &GuestMem, on: bool) {
    for r in mem.iter() {
        region_bitmap(r).set_logging(on);
    }
}

/// Whether writes to some region of `mem` are being logged.
pub fn is_logging(mem: &GuestMem) -> bool {
    mem.iter().any(|r| region_bitmap(r).is_logging())
}

#[derive(Debug, Default)]
struct ControlState {
    /// LOG_ALL was in the last acknowledged feature set.
    log_all: bool,
    /// The memory last seen, to carry its log over to the next one.
    mem: Option<Arc<GuestMem>>,
}

/// Dirty logging state of one vhost-user connection: follows LOG_ALL in the
/// acknowledged features and keeps logging across memory table changes.
///
/// Call [`LogControl::acked_features`] from `VhostUserBackend::acked_features` and
/// [`LogControl::memory_updated`] from `VhostUserBackend::update_memory`.
#[derive(Debug, Default)]
pub struct LogControl {
    state: Mutex<ControlState>,
}

impl LogControl {
    /// A connection's control: logging off, no log.
    pub fn new() -> Self {
        LogControl::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// SET_FEATURES: logging follows `VHOST_F_LOG_ALL` (bit 26) of `features` from now
    /// on. Acknowledging it opens the gate (writes are logged once a log is shared);
    /// clearing it (migration finished or cancelled) closes it. The log itself stays
    /// mapped until the next SET_LOG_BASE or the end of the connection.
    pub fn acked_features(&self, mem: &GuestMemAtomic, features: u64) {
        let on = features & VHOST_F_LOG_ALL != 0;
        let mut st = self.state();
        st.log_all = on;
        let cur = mem.memory().into_inner();
        set_logging(&cur, on);
        st.mem = Some(cur);
    }

    /// SET_MEM_TABLE / ADD_MEM_REG / REM_MEM_REG: the new regions get the log the
    /// previous memory had (if it covers them) and the same gate.
    pub fn memory_updated(&self, mem: &GuestMemAtomic) {
        let new = mem.memory().into_inner();
        let mut st = self.state();
        let old = st.mem.replace(Arc::clone(&new));
        let (on, log) = match &old {
            Some(old) if !Arc::ptr_eq(old, &new) => (
                st.log_all
                    || old
                        .iter()
                        .any(|r| region_bitmap(r).on.load(Ordering::Acquire)),
                old.iter().find_map(|r| region_bitmap(r).log.load_full()),
            ),
            Some(_) => return,
            None => (st.log_all, None),
        };
        for r in new.iter() {
            let b = region_bitmap(r);
            if let (Some(log), false) = (&log, b.has_log()) {
                match log.for_region(r) {
                    Ok(l) => b.log.store(Some(Arc::new(l))),
                    Err(e) => warn_limited!(
                        "dirty log: region at {:#x} stays unlogged until the next SET_LOG_BASE: {e}",
                        r.start_addr().0
                    ),
                }
            }
            b.set_logging(on);
        }
    }

    /// Whether writes are being logged now.
    pub fn is_logging(&self) -> bool {
        self.state().mem.as_deref().is_some_and(is_logging)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, VolatileMemory};

    /// A zeroed in-process log of `bytes` bytes installed on every region of `mem` (as
    /// SET_LOG_BASE does). Returns the log to read back.
    pub(crate) fn install_local_log(mem: &GuestMem, bytes: usize) -> Arc<[AtomicU8]> {
        let log: Arc<[AtomicU8]> = (0..bytes).map(|_| AtomicU8::new(0)).collect();
        for r in mem.iter() {
            let rl = RegionLog::new_checked(
                r.start_addr().0,
                r.len(),
                LogMem::Local(Arc::clone(&log)),
                bytes,
            )
            .unwrap();
            region_bitmap(r).replace(rl);
        }
        log
    }

    /// Pages whose bit is set.
    pub(crate) fn dirty_pages(log: &[AtomicU8]) -> Vec<u64> {
        let mut v = Vec::new();
        for (i, b) in log.iter().enumerate() {
            let b = b.load(Ordering::Relaxed);
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    v.push(i as u64 * 8 + bit);
                }
            }
        }
        v
    }

    pub(crate) fn clear(log: &[AtomicU8]) {
        for b in log {
            b.store(0, Ordering::Relaxed);
        }
    }

    fn region_log(start: u64, len: u64, bytes: usize) -> (RegionLog, Arc<[AtomicU8]>) {
        let log: Arc<[AtomicU8]> = (0..bytes).map(|_| AtomicU8::new(0)).collect();
        let rl =
            RegionLog::new_checked(start, len, LogMem::Local(Arc::clone(&log)), bytes).unwrap();
        (rl, log)
    }

    #[test]
    fn test_region_log_bit_index_is_guest_physical_page() {
        // Region at page 5: its offset 0 is page 5 (byte 0, bit 5).
        let (rl, log) = region_log(0x5000, 0x10_0000, 64);
        rl.mark(0, 1);
        assert_eq!(dirty_pages(&log), [5]);
        clear(&log);
        // Offset 0x3000 is page 8: byte 1, bit 0.
        rl.mark(0x3000, 4096);
        assert_eq!(dirty_pages(&log), [8]);
        assert_eq!(log[1].load(Ordering::Relaxed), 1);
        assert!(rl.dirty_at(0x3000) && rl.dirty_at(0x3fff) && !rl.dirty_at(0x4000));
    }

    #[test]
    fn test_region_log_ranges_crossing_pages_and_bytes() {
        let (rl, log) = region_log(0x5000, 0x10_0000, 64);
        // Two bytes spanning a page boundary: pages 6 and 7.
        rl.mark(0x1fff, 2);
        assert_eq!(dirty_pages(&log), [6, 7]);
        clear(&log);
        // Pages 6..=9 cross a log byte boundary (byte 0 bits 6-7, byte 1 bits 0-1).
        rl.mark(0x1000, 0x4000);
        assert_eq!(dirty_pages(&log), [6, 7, 8, 9]);
        assert_eq!(log[0].load(Ordering::Relaxed), 0b1100_0000);
        assert_eq!(log[1].load(Ordering::Relaxed), 0b0000_0011);
        clear(&log);
        // 20 whole pages from page 8: full byte in the middle.
        rl.mark(0x3000, 20 * 4096);
        assert_eq!(dirty_pages(&log), (8..28).collect::<Vec<_>>());
        assert_eq!(log[2].load(Ordering::Relaxed), 0xff);
        clear(&log);
        // Unaligned start inside a page, ending exactly at a page end.
        rl.mark(0x3800, 0x800);
        assert_eq!(dirty_pages(&log), [8]);
    }

    #[test]
    fn test_region_log_clamps_to_region() {
        // 3 pages at page 16; a log covering them exactly (byte 2, bits 0..=2).
        let (rl, log) = region_log(0x10000, 0x3000, 3);
        rl.mark(0x2fff, usize::MAX);
        rl.mark(0x3000, 1);
        rl.mark(usize::MAX, usize::MAX);
        rl.mark(0, 0);
        assert_eq!(dirty_pages(&log), [18]);
        rl.mark(0, usize::MAX);
        assert_eq!(dirty_pages(&log), [16, 17, 18]);
        assert!(!rl.dirty_at(0x3000));
    }

    #[test]
    fn test_region_log_refuses_log_too_small() {
        let log: Arc<[AtomicU8]> = (0..2).map(|_| AtomicU8::new(0)).collect();
        // Pages up to 16 need 3 bytes.
        let e = RegionLog::new_checked(0x10000, 0x1000, LogMem::Local(log.clone()), 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("needs 3 bytes"), "{e}");
        assert!(RegionLog::new_checked(0xf000, 0x1000, LogMem::Local(log.clone()), 2).is_ok());
        assert!(RegionLog::new_checked(0, 0, LogMem::Local(log.clone()), 2).is_err());
        assert!(RegionLog::new_checked(u64::MAX, 2, LogMem::Local(log), 2).is_err());
        assert_eq!(log_size_for(0x10000), 2);
        assert_eq!(log_size_for(0x10001), 3);
    }

    #[test]
    fn test_mapped_len_reads_the_debug_output() {
        assert_eq!(
            parse_len("MmapLogReg { addr: 0x7f1e2c3b4000, len: 33024 }"),
            Some(33024)
        );
        assert_eq!(parse_len("MmapLogReg { addr: 0x7f1e2c3b4000 }"), None);
        assert_eq!(parse_len("len: x"), None);
    }

    fn mem() -> GuestMem {
        GuestMem::from_ranges(&[
            (GuestAddress(0x10_0000), 0x4_0000),
            (GuestAddress(0x20_0000), 0x4_0000),
        ])
        .unwrap()
    }

    #[test]
    fn test_bitmap_logs_writes_not_reads_through_vm_memory() {
        let m = mem();
        // Nothing happens before a log is shared.
        m.write_slice(&[1; 8], GuestAddress(0x10_0000)).unwrap();
        assert!(!is_logging(&m));
        let log = install_local_log(&m, log_size_for(0x24_0000) as usize);
        assert!(is_logging(&m));
        assert!(dirty_pages(&log).is_empty());

        let mut buf = [0u8; 64];
        m.read_slice(&mut buf, GuestAddress(0x10_1000)).unwrap();
        let s = m.get_slice(GuestAddress(0x20_3000), 0x100).unwrap();
        s.copy_to(&mut buf[..]);
        let _: u32 = s.get_ref::<u32>(0).unwrap().load();
        assert!(dirty_pages(&log).is_empty(), "reads must not log");

        // Write through a slice taken at an offset: page of the second region.
        s.offset(0x10).unwrap().copy_from(&[7u8; 4]);
        assert_eq!(dirty_pages(&log), [0x203]);
        // The last bytes of the first region via Bytes.
        m.write_slice(&[1; 0x10], GuestAddress(0x13_fff0)).unwrap();
        assert_eq!(dirty_pages(&log), [0x13f, 0x203]);
        m.store(5u16, GuestAddress(0x10_0002), Ordering::Release)
            .unwrap();
        assert_eq!(dirty_pages(&log), [0x100, 0x13f, 0x203]);
    }

    #[test]
    fn test_gate_off_logs_nothing_and_reopens() {
        let m = mem();
        let log = install_local_log(&m, log_size_for(0x24_0000) as usize);
        set_logging(&m, false);
        assert!(!is_logging(&m));
        m.write_slice(&[1; 0x3000], GuestAddress(0x10_0000))
            .unwrap();
        assert!(dirty_pages(&log).is_empty());
        set_logging(&m, true);
        m.write_slice(&[1; 1], GuestAddress(0x10_0000)).unwrap();
        assert_eq!(dirty_pages(&log), [0x100]);
    }

    #[test]
    fn test_control_follows_log_all_and_carries_log_to_new_memory() {
        let atomic = GuestMemAtomic::new(mem());
        let ctl = LogControl::new();
        ctl.memory_updated(&atomic);
        ctl.acked_features(&atomic, 0);
        let log = install_local_log(&atomic.memory(), log_size_for(0x40_0000) as usize);
        ctl.acked_features(&atomic, VHOST_F_LOG_ALL);
        assert!(ctl.is_logging());

        // SET_MEM_TABLE: fresh regions (one new) get the log and the open gate.
        let m2 = GuestMem::from_ranges(&[
            (GuestAddress(0x10_0000), 0x4_0000),
            (GuestAddress(0x30_0000), 0x1000),
        ])
        .unwrap();
        atomic.lock().unwrap().replace(m2);
        ctl.memory_updated(&atomic);
        assert!(ctl.is_logging());
        let cur = atomic.memory();
        cur.write_slice(&[1; 4], GuestAddress(0x30_0000)).unwrap();
        assert_eq!(dirty_pages(&log), [0x300]);

        // LOG_ALL cleared: no more bits, even after another memory change.
        ctl.acked_features(&atomic, 0);
        assert!(!ctl.is_logging());
        cur.write_slice(&[1; 4], GuestAddress(0x10_0000)).unwrap();
        let m3 = GuestMem::from_ranges(&[(GuestAddress(0x10_0000), 0x4_0000)]).unwrap();
        atomic.lock().unwrap().replace(m3);
        ctl.memory_updated(&atomic);
        atomic
            .memory()
            .write_slice(&[1; 4], GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(dirty_pages(&log), [0x300]);
        assert!(region_bitmap(atomic.memory().iter().next().unwrap()).has_log());
    }

    #[test]
    fn test_control_leaves_region_beyond_log_unlogged() {
        let atomic = GuestMemAtomic::new(mem());
        let ctl = LogControl::new();
        ctl.memory_updated(&atomic);
        let log = install_local_log(&atomic.memory(), log_size_for(0x24_0000) as usize);
        ctl.acked_features(&atomic, VHOST_F_LOG_ALL);
        let m2 = GuestMem::from_ranges(&[
            (GuestAddress(0x10_0000), 0x4_0000),
            (GuestAddress(0x80_0000), 0x1000),
        ])
        .unwrap();
        atomic.lock().unwrap().replace(m2);
        ctl.memory_updated(&atomic);
        let cur = atomic.memory();
        cur.write_slice(&[1; 4], GuestAddress(0x80_0000)).unwrap();
        cur.write_slice(&[1; 4], GuestAddress(0x10_0000)).unwrap();
        assert_eq!(dirty_pages(&log), [0x100]);
    }
}
