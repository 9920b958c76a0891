//! The forwarding database: which port a (VLAN, MAC) lives behind.
//!
//! Forwarding threads learn and look up on every frame, so the table is a fixed array
//! of 4-slot buckets of atomics: no lock, no allocation, one cache line per bucket.
//! A slot is two words, `key = VALID | vlan << 48 | mac` and
//! `val = STATIC | (port + 1) << 32 | last_seen_secs`; a value of 0 means "being
//! written". Writers replace a slot as `val = 0; key = new; val = new`, and readers
//! read `key, val, key` and only trust a value framed by the same key, so a reader
//! never pairs one key with another key's port.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::wire::MacAddr;

const SLOTS: usize = 4;
const KEY_VALID: u64 = 1 << 63;
const VAL_STATIC: u64 = 1 << 63;
const PORT_SHIFT: u32 = 32;

/// A switch-local port number.
pub type PortId = u16;

#[derive(Debug, Default)]
#[repr(align(64))]
struct Bucket {
    keys: [AtomicU64; SLOTS],
    vals: [AtomicU64; SLOTS],
}

/// What [`Fdb::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The address was already known on this port and recently refreshed.
    Unchanged,
    /// The entry's timestamp was refreshed.
    Refreshed,
    /// A new entry was created.
    New,
    /// The address moved from another port.
    Moved {
        /// Where it was before.
        from: PortId,
    },
    /// A static entry owns this address; nothing was changed.
    Static,
    /// The port already has as many learned entries as its limit allows; nothing
    /// was changed.
    LimitReached,
}

/// One live entry, for reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    /// VLAN id.
    pub vlan: u16,
    /// MAC address.
    pub mac: MacAddr,
    /// Port behind which the address lives.
    pub port: PortId,
    /// Seconds since last seen (0 for static entries).
    pub age_secs: u32,
    /// Configured, never ages or moves.
    pub is_static: bool,
}

/// The learning table. Share it between threads by reference (`Arc<Fdb>`).
#[derive(Debug)]
pub struct Fdb {
    buckets: Box<[Bucket]>,
    shift: u32,
    aging_secs: u32,
    /// Learned entries per port (slots held, expired ones until aged out). Kept
    /// without a lock, so two threads racing on one slot may skew it by one; the
    /// counts are clamped at zero and are exact again once the racing entry ages.
    counts: Box<[AtomicU32]>,
}

fn make_key(vlan: u16, mac: MacAddr) -> u64 {
    KEY_VALID | (u64::from(vlan & 0x0fff) << 48) | mac.to_u64()
}

fn make_val(port: PortId, now: u32) -> u64 {
    ((u64::from(port) + 1) << PORT_SHIFT) | u64::from(now)
}

fn val_port(val: u64) -> PortId {
    // The port field is 16 bits wide by construction (make_val).
    (((val & !VAL_STATIC) >> PORT_SHIFT) as u16).wrapping_sub(1)
}

fn val_time(val: u64) -> u32 {
    // The low 32 bits hold the timestamp.
    (val & 0xffff_ffff) as u32
}

impl Fdb {
    /// A table for at least `capacity` entries that forgets an entry after
    /// `aging_secs` without traffic from it.
    pub fn new(capacity: u32, aging_secs: u32) -> Self {
        let buckets = (capacity as usize)
            .div_ceil(SLOTS)
            .next_power_of_two()
            .max(1);
        Fdb {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            shift: 64 - buckets.trailing_zeros(),
            aging_secs: aging_secs.max(1),
            counts: (0..=usize::from(PortId::MAX))
                .map(|_| AtomicU32::new(0))
                .collect(),
        }
    }

    /// Learned entries held for `port`.
    pub fn count(&self, port: PortId) -> u32 {
        self.counts[usize::from(port)].load(Ordering::Relaxed)
    }

    fn count_add(&self, port: PortId) {
        self.counts[usize::from(port)].fetch_add(1, Ordering::Relaxed);
    }

    fn count_sub(&self, port: PortId) {
        let _ = self.counts[usize::from(port)].fetch_update(
            Ordering::Relaxed,
            Ordering::Relaxed,
            |n| Some(n.saturating_sub(1)),
        );
    }

    /// Number of entries the table can hold.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * SLOTS
    }

    fn bucket(&self, key: u64) -> &Bucket {
        let h = key.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // shift == 64 only for a single bucket, where checked_shr yields None -> 0.
        let idx = h.checked_shr(self.shift).unwrap_or(0) as usize;
        &self.buckets[idx & (self.buckets.len() - 1)]
    }

    fn expired(&self, val: u64, now: u32) -> bool {
        val & VAL_STATIC == 0 && now.wrapping_sub(val_time(val)) >= self.aging_secs
    }

    /// Reads slot `i`, returning its value only if it still holds `key`.
    fn read_slot(b: &Bucket, i: usize, key: u64) -> Option<u64> {
        if b.keys[i].load(Ordering::Acquire) != key {
            return None;
        }
        let val = b.vals[i].load(Ordering::Acquire);
        (val != 0 && b.keys[i].load(Ordering::Acquire) == key).then_some(val)
    }

    fn write_slot(b: &Bucket, i: usize, key: u64, val: u64) {
        b.vals[i].store(0, Ordering::Release);
        b.keys[i].store(key, Ordering::Release);
        b.vals[i].store(val, Ordering::Release);
    }

    /// The port `mac` lives behind in `vlan`, if known and not expired.
    #[inline]
    pub fn lookup(&self, vlan: u16, mac: MacAddr, now: u32) -> Option<PortId> {
        let key = make_key(vlan, mac);
        let b = self.bucket(key);
        (0..SLOTS).find_map(|i| {
            Self::read_slot(b, i, key)
                .filter(|v| !self.expired(*v, now))
                .map(val_port)
        })
    }

    /// Records that `mac` was seen as a source on `port` in `vlan` at `now` (seconds).
    /// Cheap when nothing changed: the slot is only written when the port changes or
    /// the timestamp is at least a second old.
    #[inline]
    pub fn learn(&self, vlan: u16, mac: MacAddr, port: PortId, now: u32) -> Learned {
        self.learn_within(vlan, mac, port, now, u32::MAX)
    }

    /// [`Fdb::learn`], refusing to give `port` more than `limit` learned entries: an
    /// address new to the port beyond that is not learned ([`Learned::LimitReached`]).
    #[inline]
    pub fn learn_within(
        &self,
        vlan: u16,
        mac: MacAddr,
        port: PortId,
        now: u32,
        limit: u32,
    ) -> Learned {
        let key = make_key(vlan, mac);
        let b = self.bucket(key);
        for i in 0..SLOTS {
            if let Some(val) = Self::read_slot(b, i, key) {
                if val & VAL_STATIC != 0 {
                    return Learned::Static;
                }
                let old = val_port(val);
                let fresh = !self.expired(val, now);
                if old == port && val_time(val) == now {
                    return Learned::Unchanged;
                }
                if old != port {
                    if self.count(port) >= limit {
                        return Learned::LimitReached;
                    }
                    self.count_sub(old);
                    self.count_add(port);
                }
                b.vals[i].store(make_val(port, now), Ordering::Release);
                return match (old == port, fresh) {
                    (true, _) => Learned::Refreshed,
                    (false, true) => Learned::Moved { from: old },
                    (false, false) => Learned::New,
                };
            }
        }
        if self.count(port) >= limit {
            return Learned::LimitReached;
        }
        self.insert(b, key, make_val(port, now), now);
        Learned::New
    }

    /// Puts `key` into a free, expired or else the oldest non-static slot.
    fn insert(&self, b: &Bucket, key: u64, val: u64, now: u32) {
        let mut victim = None;
        let mut oldest_age = 0u32;
        for i in 0..SLOTS {
            let k = b.keys[i].load(Ordering::Acquire);
            let v = b.vals[i].load(Ordering::Acquire);
            if k == 0 || (v != 0 && self.expired(v, now)) {
                victim = Some(i);
                break;
            }
            if v & VAL_STATIC == 0 {
                let age = now.wrapping_sub(val_time(v));
                if victim.is_none() || age > oldest_age {
                    victim = Some(i);
                    oldest_age = age;
                }
            }
        }
        if let Some(i) = victim {
            let (k, v) = (
                b.keys[i].load(Ordering::Acquire),
                b.vals[i].load(Ordering::Acquire),
            );
            if k != 0 && v != 0 && v & VAL_STATIC == 0 {
                self.count_sub(val_port(v));
            }
            Self::write_slot(b, i, key, val);
            self.count_add(val_port(val));
        }
    }

    /// Adds a static entry: it never ages and learning never moves it. Returns false
    /// if the bucket is full of static entries.
    pub fn add_static(&self, vlan: u16, mac: MacAddr, port: PortId) -> bool {
        let key = make_key(vlan, mac);
        let b = self.bucket(key);
        let val = make_val(port, 0) | VAL_STATIC;
        let slot = (0..SLOTS)
            .find(|&i| b.keys[i].load(Ordering::Acquire) == key)
            .or_else(|| {
                // Free (a removed static entry leaves its value behind) or not static.
                (0..SLOTS).find(|&i| {
                    b.keys[i].load(Ordering::Acquire) == 0
                        || b.vals[i].load(Ordering::Acquire) & VAL_STATIC == 0
                })
            });
        match slot {
            Some(i) => {
                let (k, v) = (
                    b.keys[i].load(Ordering::Acquire),
                    b.vals[i].load(Ordering::Acquire),
                );
                if k != 0 && v != 0 && v & VAL_STATIC == 0 {
                    self.count_sub(val_port(v));
                }
                Self::write_slot(b, i, key, val);
                // A twin of the key (two threads learning it at once) in an earlier
                // slot would answer lookups instead of the static entry: drop it.
                for j in (0..SLOTS).filter(|&j| j != i) {
                    let v = b.vals[j].load(Ordering::Acquire);
                    if v & VAL_STATIC == 0
                        && b.keys[j]
                            .compare_exchange(key, 0, Ordering::AcqRel, Ordering::Relaxed)
                            .is_ok()
                        && v != 0
                    {
                        self.count_sub(val_port(v));
                    }
                }
                true
            }
            None => false,
        }
    }

    /// The port a static entry pins `mac` to in `vlan`, if there is one.
    pub fn static_owner(&self, vlan: u16, mac: MacAddr) -> Option<PortId> {
        let key = make_key(vlan, mac);
        let b = self.bucket(key);
        (0..SLOTS).find_map(|i| {
            Self::read_slot(b, i, key)
                .filter(|v| v & VAL_STATIC != 0)
                .map(val_port)
        })
    }

    /// Removes every learned entry pointing at `port` (it went away). Static entries stay.
    pub fn flush_port(&self, port: PortId) -> usize {
        self.remove_where(|v| v & VAL_STATIC == 0 && val_port(v) == port)
    }

    /// Removes every static entry pointing at `port` (the port went away or its
    /// allowed MACs changed); learned entries stay. Returns how many.
    pub fn remove_port_static(&self, port: PortId) -> usize {
        self.remove_where(|v| v & VAL_STATIC != 0 && val_port(v) == port)
    }

    /// Removes expired entries; returns how many.
    pub fn age(&self, now: u32) -> usize {
        self.remove_where(|v| self.expired(v, now))
    }

    fn remove_where(&self, pred: impl Fn(u64) -> bool) -> usize {
        let mut n = 0;
        for b in self.buckets.iter() {
            for i in 0..SLOTS {
                let k = b.keys[i].load(Ordering::Acquire);
                let v = b.vals[i].load(Ordering::Acquire);
                if k != 0 && v != 0 && pred(v) {
                    // Only clear if nobody rewrote the slot meanwhile.
                    if b.keys[i]
                        .compare_exchange(k, 0, Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                    {
                        if v & VAL_STATIC == 0 {
                            self.count_sub(val_port(v));
                        }
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Every live entry, sorted by VLAN then MAC.
    pub fn entries(&self, now: u32) -> Vec<FdbEntry> {
        let mut out = Vec::new();
        for b in self.buckets.iter() {
            for i in 0..SLOTS {
                let k = b.keys[i].load(Ordering::Acquire);
                if k == 0 {
                    continue;
                }
                let Some(v) = Self::read_slot(b, i, k) else {
                    continue;
                };
                if self.expired(v, now) {
                    continue;
                }
                let is_static = v & VAL_STATIC != 0;
                out.push(FdbEntry {
                    vlan: ((k >> 48) & 0x0fff) as u16,
                    mac: MacAddr::from_u64(k),
                    port: val_port(v),
                    age_secs: if is_static {
                        0
                    } else {
                        now.wrapping_sub(val_time(v))
                    },
                    is_static,
                });
            }
        }
        // Two threads learning one new address at once may both insert it; the
        // lookup answers from the first slot, the twin ages out. Report it once.
        out.sort_by_key(|e| (e.vlan, e.mac, e.age_secs));
        out.dedup_by_key(|e| (e.vlan, e.mac));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    #[test]
    fn test_fdb_limit_counts_learned_entries_per_port() {
        let fdb = Fdb::new(256, 10);
        for n in 0..3 {
            assert_eq!(fdb.learn_within(1, mac(n), 7, 0, 3), Learned::New);
        }
        assert_eq!(fdb.count(7), 3);
        assert_eq!(fdb.learn_within(1, mac(9), 7, 0, 3), Learned::LimitReached);
        assert_eq!(fdb.lookup(1, mac(9), 0), None, "not learned past the limit");
        // Known addresses still refresh at the limit.
        assert_eq!(fdb.learn_within(1, mac(0), 7, 1, 3), Learned::Refreshed);
        // A move frees a slot on the old port and takes one on the new.
        assert!(matches!(
            fdb.learn(1, mac(1), 8, 1),
            Learned::Moved { from: 7 }
        ));
        assert_eq!((fdb.count(7), fdb.count(8)), (2, 1));
        assert_eq!(fdb.learn_within(1, mac(9), 7, 1, 3), Learned::New);
        // Ageing and flushing give the slots back.
        assert_eq!(fdb.flush_port(8), 1);
        assert_eq!(fdb.count(8), 0);
        fdb.age(100);
        assert_eq!(fdb.count(7), 0);
        // Static entries do not count.
        assert!(fdb.add_static(1, mac(20), 7));
        assert_eq!(fdb.count(7), 0);
    }

    #[test]
    fn test_fdb_learn_then_lookup_finds_port() {
        let fdb = Fdb::new(64, 300);
        assert_eq!(fdb.lookup(1, mac(1), 0), None);
        assert_eq!(fdb.learn(1, mac(1), 3, 0), Learned::New);
        assert_eq!(fdb.lookup(1, mac(1), 0), Some(3));
        assert_eq!(fdb.learn(1, mac(1), 3, 0), Learned::Unchanged);
        assert_eq!(fdb.learn(1, mac(1), 3, 5), Learned::Refreshed);
    }

    #[test]
    fn test_fdb_vlans_are_separate_tables() {
        let fdb = Fdb::new(64, 300);
        fdb.learn(1, mac(1), 1, 0);
        fdb.learn(20, mac(1), 2, 0);
        assert_eq!(fdb.lookup(1, mac(1), 0), Some(1));
        assert_eq!(fdb.lookup(20, mac(1), 0), Some(2));
        assert_eq!(fdb.lookup(30, mac(1), 0), None);
    }

    #[test]
    fn test_fdb_station_move_updates_port() {
        let fdb = Fdb::new(64, 300);
        fdb.learn(1, mac(1), 1, 0);
        assert_eq!(fdb.learn(1, mac(1), 2, 1), Learned::Moved { from: 1 });
        assert_eq!(fdb.lookup(1, mac(1), 1), Some(2));
    }

    #[test]
    fn test_fdb_entry_expires_after_aging() {
        let fdb = Fdb::new(64, 10);
        fdb.learn(1, mac(1), 1, 100);
        assert_eq!(fdb.lookup(1, mac(1), 109), Some(1));
        assert_eq!(fdb.lookup(1, mac(1), 110), None);
        assert_eq!(fdb.entries(110).len(), 0);
        assert_eq!(fdb.age(110), 1);
        // Learning an expired address again counts as new.
        assert_eq!(fdb.learn(1, mac(1), 2, 111), Learned::New);
    }

    #[test]
    fn test_fdb_static_entry_never_moves_or_ages() {
        let fdb = Fdb::new(64, 10);
        assert!(fdb.add_static(1, mac(9), 4));
        assert_eq!(fdb.learn(1, mac(9), 2, 1000), Learned::Static);
        assert_eq!(fdb.lookup(1, mac(9), 100_000), Some(4));
        assert_eq!(fdb.flush_port(4), 0);
        assert!(fdb.entries(5).iter().any(|e| e.is_static && e.port == 4));
    }

    #[test]
    fn test_fdb_remove_port_static_removes_only_that_ports_static_entries() {
        let fdb = Fdb::new(64, 300);
        assert!(fdb.add_static(1, mac(1), 4));
        assert!(fdb.add_static(20, mac(2), 4));
        assert!(fdb.add_static(1, mac(3), 5));
        assert_eq!(fdb.learn(1, mac(4), 4, 0), Learned::New);
        assert_eq!(fdb.static_owner(1, mac(1)), Some(4));
        assert_eq!(fdb.static_owner(1, mac(4)), None, "learned, not static");
        assert_eq!(fdb.remove_port_static(4), 2);
        assert_eq!(fdb.lookup(1, mac(1), 0), None);
        assert_eq!(fdb.lookup(20, mac(2), 0), None);
        assert_eq!(fdb.static_owner(1, mac(1)), None);
        assert_eq!(
            fdb.lookup(1, mac(3), 0),
            Some(5),
            "other ports' static entries stay"
        );
        assert_eq!(fdb.lookup(1, mac(4), 0), Some(4), "learned entries stay");
        assert_eq!(fdb.count(4), 1);
        assert_eq!(fdb.remove_port_static(4), 0);
        // The address can be learned again once its static entry is gone.
        assert!(matches!(fdb.learn(1, mac(1), 2, 0), Learned::New));
    }

    #[test]
    fn test_fdb_add_static_takes_over_a_learned_entry_and_fails_on_a_static_bucket() {
        // A single bucket: every key collides.
        let fdb = Fdb::new(4, 300);
        assert_eq!(fdb.learn(1, mac(1), 0, 0), Learned::New);
        assert!(
            fdb.add_static(1, mac(1), 3),
            "learned on port 0, pinned to 3"
        );
        assert_eq!(fdb.count(0), 0, "the learned entry gave its slot back");
        assert_eq!(fdb.lookup(1, mac(1), 0), Some(3));
        assert_eq!(fdb.learn(1, mac(1), 0, 1), Learned::Static);
        for i in 2..5 {
            assert!(fdb.add_static(1, mac(i), 3));
        }
        assert!(
            !fdb.add_static(1, mac(9), 3),
            "bucket full of static entries"
        );
        assert_eq!(fdb.remove_port_static(3), 4);
        assert!(fdb.add_static(1, mac(9), 3));
    }

    #[test]
    fn test_fdb_flush_port_removes_only_that_port() {
        let fdb = Fdb::new(64, 300);
        fdb.learn(1, mac(1), 1, 0);
        fdb.learn(1, mac(2), 2, 0);
        assert_eq!(fdb.flush_port(1), 1);
        assert_eq!(fdb.lookup(1, mac(1), 0), None);
        assert_eq!(fdb.lookup(1, mac(2), 0), Some(2));
    }

    #[test]
    fn test_fdb_full_bucket_evicts_oldest() {
        // A single bucket: every key collides.
        let fdb = Fdb::new(4, 1000);
        assert_eq!(fdb.capacity(), 4);
        for i in 0..4u8 {
            fdb.learn(1, mac(i), PortId::from(i), u32::from(i));
        }
        fdb.learn(1, mac(200), 7, 10);
        assert_eq!(fdb.lookup(1, mac(0), 10), None, "oldest entry evicted");
        assert_eq!(fdb.lookup(1, mac(200), 10), Some(7));
        assert_eq!(fdb.entries(10).len(), 4);
    }

    #[test]
    fn test_fdb_entries_sorted_with_age() {
        let fdb = Fdb::new(64, 300);
        fdb.learn(20, mac(1), 1, 0);
        fdb.learn(1, mac(2), 2, 0);
        let e = fdb.entries(7);
        assert_eq!(e.len(), 2);
        assert_eq!((e[0].vlan, e[0].port, e[0].age_secs), (1, 2, 7));
        assert_eq!(e[1].vlan, 20);
    }

    #[test]
    fn test_fdb_concurrent_learning_keeps_consistent_answers() {
        let fdb = std::sync::Arc::new(Fdb::new(1024, 300));
        let threads: Vec<_> = (0..4u16)
            .map(|t| {
                let fdb = fdb.clone();
                std::thread::spawn(move || {
                    for round in 0..2000u32 {
                        for i in 0..32u8 {
                            fdb.learn(1, mac(i), t, round / 100);
                            if let Some(p) = fdb.lookup(1, mac(i), round / 100) {
                                assert!(p < 4, "torn read returned port {p}");
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(fdb.entries(20).len(), 32);
    }
}
