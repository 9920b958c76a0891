//! Holding a VM port's receive direction during a path change.
//!
//! While a guest's `net_failover` still has its VF registered as the primary, it
//! drops every frame arriving on the standby (this switch's port). The orchestrator
//! asks the switch to hold the frames bound for the port ([`Hold::start`]) while the
//! VF is unplugged, and to release them once the guest let go of it
//! ([`Hold::release`]); a hold also ends by itself at its deadline. A release may
//! name an uplink: the held frames then leave through it instead of going to the
//! guest's standby (the guest moved onto its VF, which the embedded switch feeds).
//!
//! States: `Normal` (frames are delivered), `Holding` (frames are queued), `Draining`
//! (the port's owning forwarding thread delivers the queue, front first; frames
//! arriving meanwhile queue behind, so nothing is reordered). Only the drain, under
//! the lock and with the queue empty, goes back to `Normal`. The state is an atomic
//! read before any lock: a port that is not holding costs one load per batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::DropReason;
use crate::fdb::PortId;
use crate::offload::VnetHdr;

/// Most frames held per port; more are dropped as `hold_overflow`.
pub const HOLD_MAX_FRAMES: usize = 4096;
/// Most bytes held per port; more are dropped as `hold_overflow`.
pub const HOLD_MAX_BYTES: usize = 16 << 20;
/// How long a hold lasts when the request names no `max_ms`.
pub const HOLD_DEFAULT_MS: u64 = 5000;
/// Longest hold a request may ask for (a crashed orchestrator must not leave a VM
/// cut off).
pub const HOLD_MAX_MS: u64 = 60_000;
/// How long a drain may find the guest without receive buffers before it drops
/// the rest of the queue (counted as `no_rx_buffer`).
pub const DRAIN_STALL: Duration = Duration::from_millis(500);

/// The hold's state, as the atomic holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HoldState {
    /// Frames are delivered.
    Normal = 0,
    /// Frames are queued.
    Holding = 1,
    /// The queue is being delivered; new frames queue behind it.
    Draining = 2,
}

impl HoldState {
    fn from_u8(v: u8) -> HoldState {
        match v {
            1 => HoldState::Holding,
            2 => HoldState::Draining,
            _ => HoldState::Normal,
        }
    }
}

/// A frame held for the guest: its bytes as they leave the port (tag inserted or
/// removed already) and the offload it still needs (offsets matching those bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldFrame {
    /// Ethernet frame.
    pub bytes: Vec<u8>,
    /// Checksum or segmentation work still to do.
    pub offload: Option<VnetHdr>,
}

/// What a hold did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldCounts {
    /// Frames held since the hold started.
    pub held: u64,
    /// Held frames delivered so far (to the guest, or out of the release's uplink).
    pub released: u64,
    /// Of those, frames sent out of the release's uplink.
    pub redirected: u64,
}

/// The queue and the counters behind [`Hold`]'s lock.
#[derive(Debug, Default)]
pub struct HoldQueue {
    /// Held frames, oldest first.
    pub frames: VecDeque<HeldFrame>,
    bytes: usize,
    deadline: Option<Instant>,
    counts: HoldCounts,
    stalled_since: Option<Instant>,
    /// The uplink the drain sends the frames out of; `None`: to the guest.
    via: Option<PortId>,
}

impl HoldQueue {
    /// Queues a frame of `len` bytes, built by `make` only if there is room.
    /// A full queue is [`DropReason::HoldOverflow`]; `make`'s error is returned.
    pub fn push(
        &mut self,
        len: usize,
        make: impl FnOnce() -> Result<HeldFrame, DropReason>,
    ) -> Result<(), DropReason> {
        if self.frames.len() >= HOLD_MAX_FRAMES || self.bytes + len > HOLD_MAX_BYTES {
            return Err(DropReason::HoldOverflow);
        }
        let f = make()?;
        self.bytes += f.bytes.len();
        self.frames.push_back(f);
        self.counts.held += 1;
        Ok(())
    }

    /// Removes the `n` oldest frames after the drain delivered them.
    pub fn released(&mut self, n: usize) {
        let n = n.min(self.frames.len());
        for f in self.frames.drain(..n) {
            self.bytes -= f.bytes.len();
        }
        self.count_released(n);
    }

    fn count_released(&mut self, n: usize) {
        self.counts.released += n as u64;
        if self.via.is_some() {
            self.counts.redirected += n as u64;
        }
        if n > 0 {
            self.stalled_since = None;
        }
    }

    /// Takes the `n` oldest frames out to send them elsewhere (a drain out of an
    /// uplink sends them after dropping the lock); counted as released.
    pub fn take(&mut self, n: usize) -> Vec<HeldFrame> {
        let n = n.min(self.frames.len());
        let out: Vec<HeldFrame> = self.frames.drain(..n).collect();
        self.bytes -= out.iter().map(|f| f.bytes.len()).sum::<usize>();
        self.count_released(n);
        out
    }

    /// Where the drain sends the frames: `Some(uplink)` or the guest (`None`).
    pub fn via(&self) -> Option<PortId> {
        self.via
    }

    /// Drops every queued frame; returns how many there were.
    pub fn discard(&mut self) -> u64 {
        let n = self.frames.len() as u64;
        self.frames = VecDeque::new();
        self.bytes = 0;
        n
    }

    /// Notes that the drain could not deliver anything at `now` (no receive
    /// buffer); returns true once that has lasted [`DRAIN_STALL`].
    pub fn stalled(&mut self, now: Instant) -> bool {
        let since = *self.stalled_since.get_or_insert(now);
        now.saturating_duration_since(since) >= DRAIN_STALL
    }

    /// Counters of the current (or last) hold.
    pub fn counts(&self) -> HoldCounts {
        self.counts
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The hold state of one VM port.
#[derive(Debug, Default)]
pub struct Hold {
    state: AtomicU8,
    queue: Mutex<HoldQueue>,
    /// Armed to start by itself, for this many ms, the moment the guest's receive
    /// rings stop ([`Hold::arm`]); 0: not armed.
    armed_ms: AtomicU64,
}

impl Hold {
    /// The state (acquire load, no lock).
    pub fn state(&self) -> HoldState {
        HoldState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Whether frames are held or drained: the fast path's one load.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.state.load(Ordering::Acquire) != HoldState::Normal as u8
    }

    fn set(&self, s: HoldState) {
        // SeqCst pairs with the waker's `sleeping` flag: a thread going to sleep
        // either sees the new state or gets woken.
        self.state.store(s as u8, Ordering::SeqCst);
    }

    /// The queue, locked (a poisoned lock is taken over: the queue stays consistent).
    pub fn lock(&self) -> MutexGuard<'_, HoldQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms the hold: it starts by itself, lasting `ms`, when a frame for the guest
    /// finds its receive rings stopped (the VMM paused the VM for a migration's
    /// switch-over), instead of that frame being dropped.
    pub fn arm(&self, ms: u64) {
        self.armed_ms.store(ms.max(1), Ordering::SeqCst);
    }

    /// Whether the hold is armed and not started yet: the fast path's one load.
    #[inline]
    pub fn is_armed(&self) -> bool {
        self.armed_ms.load(Ordering::Acquire) != 0
    }

    /// Starts an armed hold at `now` (for the ms it was armed with); returns whether
    /// frames are to be queued now (held or drained).
    pub fn trigger(&self, now: Instant) -> bool {
        let ms = self.armed_ms.swap(0, Ordering::SeqCst);
        if ms != 0 {
            self.start(now + Duration::from_millis(ms));
        }
        self.is_active()
    }

    /// Starts holding until `deadline`, or renews the deadline of a running hold.
    /// A new hold (from `Normal`) resets the counters; one that interrupts a drain
    /// keeps the queue and the counters. Returns the counters.
    pub fn start(&self, deadline: Instant) -> HoldCounts {
        self.armed_ms.store(0, Ordering::SeqCst);
        let mut q = self.lock();
        if self.state() == HoldState::Normal {
            q.counts = HoldCounts::default();
        }
        // The next release says where the frames go.
        q.via = None;
        q.deadline = Some(deadline);
        q.stalled_since = None;
        self.set(HoldState::Holding);
        q.counts
    }

    /// Ends the hold: the queue is to be drained, to the guest or out of uplink
    /// `via`. Returns false (and changes nothing) if the port was not holding; a
    /// drain under way goes on where it was going.
    pub fn release(&self, via: Option<PortId>) -> bool {
        self.armed_ms.store(0, Ordering::SeqCst);
        let mut q = self.lock();
        match self.state() {
            HoldState::Normal => false,
            HoldState::Holding => {
                q.via = via;
                self.set(HoldState::Draining);
                drop(q);
                true
            }
            HoldState::Draining => true,
        }
    }

    /// The queue, locked, if frames are to be queued (held or drained); `None` if
    /// the hold ended meanwhile (deliver normally). Frames pushed while the guard
    /// is kept land in order behind those queued already.
    pub fn queue(&self) -> Option<MutexGuard<'_, HoldQueue>> {
        let q = self.lock();
        (self.state() != HoldState::Normal).then_some(q)
    }

    /// For the owning thread: whether the queue should be drained now. A hold past
    /// its deadline at `now` turns into a drain. Takes the lock only when active.
    pub fn due(&self, now: Instant) -> Option<MutexGuard<'_, HoldQueue>> {
        if !self.is_active() {
            return None;
        }
        let q = self.lock();
        match self.state() {
            HoldState::Normal => None,
            HoldState::Holding => match q.deadline {
                Some(d) if now >= d => {
                    self.set(HoldState::Draining);
                    Some(q)
                }
                _ => None,
            },
            HoldState::Draining => Some(q),
        }
    }

    /// For the drain, under the lock: back to `Normal` if the queue is empty.
    /// Returns whether it did.
    pub fn finish_if_empty(&self, q: &mut HoldQueue) -> bool {
        if !q.frames.is_empty() || self.state() != HoldState::Draining {
            return false;
        }
        self.back_to_normal(q);
        true
    }

    /// Ends the hold with its queue empty: back to `Normal`, the memory given back.
    fn back_to_normal(&self, q: &mut HoldQueue) {
        q.deadline = None;
        q.stalled_since = None;
        q.via = None;
        q.frames = VecDeque::new();
        self.set(HoldState::Normal);
    }

    /// Takes up to `max_bytes` of the held frames out (at least one frame if any)
    /// to be delivered elsewhere: a migration's source hands what it held since the
    /// switch-over to the destination. Once the queue is empty the hold ends (back
    /// to `Normal`). Returns the frames, whether more are held, and the counters.
    pub fn take_out(&self, max_bytes: usize) -> (Vec<HeldFrame>, bool, HoldCounts) {
        self.armed_ms.store(0, Ordering::SeqCst);
        let mut q = self.lock();
        if self.state() == HoldState::Normal {
            return (Vec::new(), false, q.counts);
        }
        let mut n = 0;
        let mut bytes = 0;
        for f in &q.frames {
            if n > 0 && bytes + f.bytes.len() > max_bytes {
                break;
            }
            bytes += f.bytes.len();
            n += 1;
        }
        let out = q.take(n);
        let more = !q.frames.is_empty();
        if !more {
            self.back_to_normal(&mut q);
        }
        (out, more, q.counts)
    }

    /// Queues `frames` for the guest and has them delivered (a drain): frames
    /// another switch held for this VM during its migration. A running hold keeps
    /// them behind what it holds until its release; a drain under way delivers them
    /// after its queue. Returns how many were queued (the rest did not fit:
    /// [`DropReason::HoldOverflow`], counted by the caller).
    pub fn inject(&self, frames: Vec<HeldFrame>) -> usize {
        let mut q = self.lock();
        if self.state() == HoldState::Normal {
            q.counts = HoldCounts::default();
            q.via = None;
            q.deadline = None;
            q.stalled_since = None;
        }
        let mut queued = 0;
        for f in frames {
            let len = f.bytes.len();
            if q.push(len, || Ok(f)).is_ok() {
                queued += 1;
            }
        }
        if self.state() == HoldState::Normal {
            self.set(HoldState::Draining);
        }
        queued
    }

    /// Drops everything held (the port is going away); back to `Normal`.
    pub fn discard(&self) -> u64 {
        self.armed_ms.store(0, Ordering::SeqCst);
        let mut q = self.lock();
        let n = q.discard();
        q.deadline = None;
        q.via = None;
        self.set(HoldState::Normal);
        n
    }

    /// How long the owning thread may sleep before the hold needs it: `None` when
    /// not holding, zero while draining, else the time to the deadline.
    pub fn wake_in(&self, now: Instant) -> Option<Duration> {
        match self.state() {
            HoldState::Normal => None,
            HoldState::Draining => Some(Duration::ZERO),
            HoldState::Holding => {
                let q = self.lock();
                q.deadline.map(|d| d.saturating_duration_since(now))
            }
        }
    }

    /// Counters of the current (or last) hold.
    pub fn counts(&self) -> HoldCounts {
        self.lock().counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8, len: usize) -> Result<HeldFrame, DropReason> {
        Ok(HeldFrame {
            bytes: vec![n; len],
            offload: None,
        })
    }

    fn push(h: &Hold, n: u8, len: usize) -> Result<(), DropReason> {
        match h.queue() {
            Some(mut q) => q.push(len, || frame(n, len)),
            None => Err(DropReason::NoRxBuffer), // stands for "not holding"
        }
    }

    #[test]
    fn test_hold_state_machine_holds_drains_in_order_and_returns_to_normal() {
        let h = Hold::default();
        let now = Instant::now();
        assert!(!h.is_active());
        assert!(h.queue().is_none(), "not holding: deliver normally");
        assert!(
            !h.release(None),
            "releasing a port that does not hold is fine"
        );
        assert!(h.due(now).is_none());

        h.start(now + Duration::from_secs(5));
        assert_eq!(h.state(), HoldState::Holding);
        for n in 0..3 {
            push(&h, n, 60).unwrap();
        }
        assert_eq!(
            h.counts(),
            HoldCounts {
                held: 3,
                released: 0,
                redirected: 0,
            }
        );
        assert!(h.due(now).is_none(), "holding, deadline not reached");
        assert!(h.release(None));
        assert_eq!(h.state(), HoldState::Draining);
        // Frames arriving during the drain queue behind.
        push(&h, 3, 60).unwrap();
        {
            let mut q = h.due(now).expect("draining");
            assert_eq!(q.frames.front().unwrap().bytes[0], 0);
            q.released(2);
            assert!(!h.finish_if_empty(&mut q));
            assert_eq!(
                q.frames.iter().map(|f| f.bytes[0]).collect::<Vec<_>>(),
                vec![2, 3]
            );
            q.released(2);
            assert_eq!(q.bytes(), 0);
            assert!(h.finish_if_empty(&mut q));
        }
        assert_eq!(h.state(), HoldState::Normal);
        assert_eq!(
            h.counts(),
            HoldCounts {
                held: 4,
                released: 4,
                redirected: 0,
            }
        );
        // A new hold starts from zero.
        assert_eq!(h.start(now + Duration::from_secs(1)), HoldCounts::default());
    }

    #[test]
    fn test_hold_expires_at_its_deadline_and_renewal_extends_it() {
        let h = Hold::default();
        let now = Instant::now();
        h.start(now + Duration::from_millis(100));
        h.start(now + Duration::from_millis(300));
        assert!(h.due(now + Duration::from_millis(200)).is_none());
        assert_eq!(
            h.wake_in(now + Duration::from_millis(200)),
            Some(Duration::from_millis(100))
        );
        let mut q = h.due(now + Duration::from_millis(300)).expect("expired");
        assert_eq!(h.state(), HoldState::Draining);
        assert!(h.finish_if_empty(&mut q));
        drop(q);
        assert_eq!(h.wake_in(now), None);
    }

    #[test]
    fn test_hold_is_bounded_in_frames_and_bytes() {
        let h = Hold::default();
        h.start(Instant::now() + Duration::from_secs(5));
        for _ in 0..HOLD_MAX_FRAMES {
            push(&h, 1, 60).unwrap();
        }
        assert_eq!(push(&h, 1, 60), Err(DropReason::HoldOverflow));
        h.discard();
        assert!(!h.is_active());
        h.start(Instant::now() + Duration::from_secs(5));
        let big = 64 * 1024;
        for _ in 0..HOLD_MAX_BYTES / big {
            push(&h, 1, big).unwrap();
        }
        assert_eq!(push(&h, 1, 60), Err(DropReason::HoldOverflow));
        assert_eq!(h.lock().bytes(), HOLD_MAX_BYTES);
    }

    #[test]
    fn test_hold_restarted_during_a_drain_keeps_queue_and_counters() {
        let h = Hold::default();
        let now = Instant::now();
        h.start(now + Duration::from_secs(5));
        push(&h, 1, 60).unwrap();
        h.release(None);
        let c = h.start(now + Duration::from_secs(5));
        assert_eq!(
            c,
            HoldCounts {
                held: 1,
                released: 0,
                redirected: 0,
            }
        );
        assert_eq!(h.state(), HoldState::Holding);
        assert_eq!(h.lock().frames.len(), 1);
    }

    #[test]
    fn test_release_via_an_uplink_counts_redirected_and_a_new_hold_forgets_it() {
        let h = Hold::default();
        let now = Instant::now();
        h.start(now + Duration::from_secs(5));
        push(&h, 1, 60).unwrap();
        push(&h, 2, 60).unwrap();
        assert!(h.release(Some(7)));
        // A second release while draining does not change the destination.
        assert!(h.release(None));
        {
            let mut q = h.due(now).expect("draining");
            assert_eq!(q.via(), Some(7));
            q.released(2);
            assert!(h.finish_if_empty(&mut q));
            assert_eq!(q.via(), None);
        }
        assert_eq!(
            h.counts(),
            HoldCounts {
                held: 2,
                released: 2,
                redirected: 2,
            }
        );
        // Interrupted drain: the new hold's release decides again.
        h.start(now + Duration::from_secs(5));
        push(&h, 3, 60).unwrap();
        h.release(Some(7));
        h.start(now + Duration::from_secs(5));
        assert_eq!(h.lock().via(), None);
        // A hold that reaches its deadline goes to the guest.
        let mut q = h.due(now + Duration::from_secs(6)).expect("expired");
        assert_eq!(q.via(), None);
        q.released(1);
        assert_eq!(q.counts().redirected, 0);
    }

    #[test]
    fn test_drain_stall_is_bounded() {
        let h = Hold::default();
        let mut q = h.lock();
        let t = Instant::now();
        assert!(!q.stalled(t));
        assert!(!q.stalled(t + DRAIN_STALL / 2));
        assert!(q.stalled(t + DRAIN_STALL));
        drop(q);
        h.start(t);
        push(&h, 1, 60).unwrap();
        let mut q = h.lock();
        q.released(1); // progress resets it
        assert!(!q.stalled(t + DRAIN_STALL * 2));
    }
}
