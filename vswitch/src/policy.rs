//! Per-port policy: anti-spoofing, VLAN access/trunk membership, token-bucket rate
//! limits, an FDB entry limit and the guest's receive filter.
//!
//! An operator writes a [`PolicyConfig`] as the `[port.policy]` sub-table of a
//! `[[port]]` in the TOML config, or as the `"policy"` object of a control API
//! request. [`PolicyConfig::validate`] checks it; [`PortPolicy::new`] compiles it
//! into the form the forwarding threads consult for every frame. Every violation is
//! a counted drop under one of the policy [`DropReason`]s.
//!
//! Every key is optional: an empty table (or no table) is "no policy" — any source
//! MAC, the port's own VLAN setting, no rate limit, no FDB limit, every frame
//! delivered. Field names in error messages are relative to the policy table
//! (`ingress.pps`, `vlan_mode.trunk.vlans`, ...).
//!
//! ```toml
//! # A VM port in VLAN 10 that may only send from its own MAC: it may send at
//! # most 100k packets and 125 MB (1 Gbit) a second, and receive 125 MB a second.
//! [[port]]
//! socket = "/run/accelnet/vm1.sock"
//!
//! [port.policy]
//! allowed_macs = ["52:54:00:12:34:56"]
//! vlan_mode = { access = 10 }
//! max_fdb_entries = 4
//!
//! [port.policy.ingress]           # frames the switch receives from the port
//! pps = 100000
//! bytes_per_sec = 125000000
//! burst_packets = 1000            # default: a tenth of a second's worth
//! burst_bytes = 1250000           # default: a tenth of a second's worth, >= 64 KiB
//!
//! [port.policy.egress]            # frames the switch delivers to the port
//! bytes_per_sec = 125000000
//!
//! # The guest's receive filter, as the VMM reads it from QEMU (query-rx-filter).
//! [port.policy.rx_filter]
//! macs = ["52:54:00:12:34:56", "33:33:00:00:00:01"]
//!
//! # A VM port that carries VLANs 10, 20 and 30 tagged and VLAN 10 untagged.
//! [[port]]
//! socket = "/run/accelnet/router.sock"
//!
//! [port.policy.vlan_mode.trunk]
//! vlans = [10, 20, 30]
//! native_vlan = 10                # optional; must be one of `vlans`
//! ```
//!
//! The same policy in a control API request:
//!
//! ```json
//! {"allowed_macs": ["52:54:00:12:34:56"],
//!  "vlan_mode": {"trunk": {"vlans": [10, 20, 30], "native_vlan": 10}},
//!  "ingress": {"pps": 100000, "bytes_per_sec": 125000000},
//!  "max_fdb_entries": 4,
//!  "rx_filter": {"promisc": false, "all_multi": true, "macs": ["52:54:00:12:34:56"]}}
//! ```
//!
//! # Per frame
//!
//! From a port (the switch's ingress): [`PortPolicy::check_source`], then
//! [`PortPolicy::ingress_vlan`], then [`PortPolicy::admit_ingress`], then FDB
//! learning bounded by [`PortPolicy::fdb_limit`]. Towards a port (egress):
//! [`PortPolicy::egress`], [`PortPolicy::rx_filter_accepts`], then
//! [`PortPolicy::admit_egress`].
//!
//! # Run-time changes
//!
//! A policy change builds a new [`PortPolicy`] and swaps the port's
//! `Arc<PortPolicy>` (for example in an `arc_swap::ArcSwap`). Nothing carries over:
//! **a new policy starts with full token buckets**, whatever the old one had left.
//! Threads still holding the old `Arc` finish their batch under the old policy.
//!
//! # Rate limits
//!
//! Each limit is a token bucket of `burst` tokens refilled at `rate` tokens per
//! second (one token per packet, or per byte of Ethernet frame — no virtio-net
//! header). The bucket is kept as one `AtomicU64` in the form of the generic cell
//! rate algorithm: the token count the bucket has handed out, compared with the
//! tokens the clock has earned since the policy was built, `floor(rate * elapsed_ns
//! / 1e9)`. The arithmetic is exact (no drift, whatever the rate) and the update is
//! one compare-and-swap, so any number of threads may share a bucket without a lock.
//! The caller passes the time: nanoseconds of a monotonic clock, the same clock for
//! every call on one policy. Concurrent callers whose clock readings differ slightly
//! may see a little less than the bucket holds, never more: the tokens admitted up
//! to any moment never exceed `burst + floor(rate * elapsed)` (provided no caller's
//! clock reading lags another's by more than [`MAX_CLOCK_LAG_SECS`]).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::api::DropReason;
use crate::wire::{MacAddr, ETH_HLEN, VLAN_MAX, VLAN_TAG_LEN};

/// Largest rate or burst accepted (packets or bytes): 10^11, i.e. 800 Gbit/s.
/// Leave a limit out rather than setting it huge.
pub const MAX_RATE: u64 = 100_000_000_000;
/// Smallest `burst_bytes` accepted: one full 1500-byte-MTU frame with a VLAN tag.
/// A burst smaller than the largest frame the switch forwards drops that frame
/// every time, so keep it at least at the switch's maximum frame length.
pub const MIN_BURST_BYTES: u64 = (ETH_HLEN + 1500 + VLAN_TAG_LEN) as u64;
/// A defaulted burst holds this fraction of a second's worth of the rate (1/10 s).
pub const DEFAULT_BURST_DIVISOR: u64 = 10;
/// Smallest defaulted `burst_bytes`: room for one 64 KiB frame.
pub const DEFAULT_MIN_BURST_BYTES: u64 = 64 * 1024;

const NS_PER_SEC: u64 = 1_000_000_000;
/// Number of VLAN ids (0..=4095), the size of a trunk membership bitmap.
const VLAN_IDS: usize = 4096;

/// A port's policy as configured (`[port.policy]` in TOML, `"policy"` in JSON).
///
/// Every field is optional; the default (an empty table) restricts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Source MACs the port may send from (anti-spoofing); empty = any.
    /// Only unicast, non-zero addresses. On a VM port they are also pinned in the
    /// FDB as static entries on the port's VLAN (`vlan`), so the switch never
    /// learns them elsewhere (e.g. from the guest's own broadcast flooded back in
    /// over an uplink); two VM ports cannot list one MAC on one VLAN.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_macs: Vec<MacAddr>,
    /// Access VLAN or trunk; absent = the port's own VLAN setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan_mode: Option<VlanMode>,
    /// Limit on frames the switch receives from the port (the guest's transmissions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<RateLimit>,
    /// Limit on frames the switch delivers to the port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<RateLimit>,
    /// Most FDB entries (learned source MAC and VLAN pairs) the port may own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_fdb_entries: Option<u32>,
    /// The guest's receive filter; absent = deliver every frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx_filter: Option<RxFilter>,
}

/// How a port takes part in VLANs.
///
/// TOML: `vlan_mode = { access = 10 }`, or
/// `vlan_mode = { trunk = { vlans = [10, 20], native_vlan = 10 } }` (equivalently a
/// `[port.policy.vlan_mode.trunk]` table). JSON: `{"access": 10}` or
/// `{"trunk": {"vlans": [10, 20], "native_vlan": 10}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VlanMode {
    /// One VLAN, carried untagged; tagged frames from the port are dropped.
    Access(u16),
    /// Several VLANs, carried tagged, and optionally one of them untagged.
    Trunk {
        /// VLANs the port carries: non-empty, no duplicates, each 1..=4094.
        vlans: Vec<u16>,
        /// VLAN of untagged frames (one of `vlans`), sent untagged; absent =
        /// untagged frames are dropped and everything leaves tagged.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        native_vlan: Option<u16>,
    },
}

impl VlanMode {
    /// A trunk of every VLAN (1..=4094) with `native_vlan` untagged: what an uplink
    /// without a policy does.
    pub fn trunk_all(native_vlan: u16) -> Self {
        VlanMode::Trunk {
            vlans: (1..=VLAN_MAX).collect(),
            native_vlan: Some(native_vlan),
        }
    }

    /// Checks VLAN ids and the trunk list.
    pub fn validate(&self) -> Result<(), PolicyError> {
        match self {
            VlanMode::Access(v) => check_vlan("vlan_mode.access", *v),
            VlanMode::Trunk { vlans, native_vlan } => {
                if vlans.is_empty() {
                    return Err(PolicyError::EmptyTrunk);
                }
                let mut seen = VlanSet::default();
                for &v in vlans {
                    check_vlan("vlan_mode.trunk.vlans", v)?;
                    if !seen.insert(v) {
                        return Err(PolicyError::DuplicateTrunkVlan(v));
                    }
                }
                if let Some(n) = *native_vlan {
                    check_vlan("vlan_mode.trunk.native_vlan", n)?;
                    if !seen.contains(n) {
                        return Err(PolicyError::NativeNotInTrunk(n));
                    }
                }
                Ok(())
            }
        }
    }
}

/// A token-bucket rate limit in packets per second, bytes per second or both.
///
/// A frame passes only if both buckets (when set) hold enough tokens. Bytes count
/// the Ethernet frame (headers and any VLAN tag), not the virtio-net header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Packets per second, 1..=10^11.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pps: Option<u64>,
    /// Bytes per second, 1..=10^11 (8 bits per byte: 1 Gbit/s is 125000000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_sec: Option<u64>,
    /// Packet bucket size; default `pps / 10`, at least 1. Needs `pps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_packets: Option<u64>,
    /// Byte bucket size, at least [`MIN_BURST_BYTES`]; default `bytes_per_sec / 10`,
    /// at least [`DEFAULT_MIN_BURST_BYTES`]. Needs `bytes_per_sec`. A frame longer
    /// than this never passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_bytes: Option<u64>,
}

impl RateLimit {
    /// The packet bucket size in effect (`None` without `pps`).
    pub fn effective_burst_packets(&self) -> Option<u64> {
        self.pps.map(|r| {
            self.burst_packets
                .unwrap_or((r / DEFAULT_BURST_DIVISOR).max(1))
        })
    }

    /// The byte bucket size in effect (`None` without `bytes_per_sec`).
    pub fn effective_burst_bytes(&self) -> Option<u64> {
        self.bytes_per_sec.map(|r| {
            self.burst_bytes
                .unwrap_or((r / DEFAULT_BURST_DIVISOR).max(DEFAULT_MIN_BURST_BYTES))
        })
    }

    /// Checks the limit; `table` names it in errors (`"ingress"` or `"egress"`).
    pub fn validate(&self, table: &str) -> Result<(), PolicyError> {
        let field = |name: &str| format!("{table}.{name}");
        if self.pps.is_none() && self.bytes_per_sec.is_none() {
            return Err(PolicyError::EmptyRateLimit {
                field: table.into(),
            });
        }
        for (name, rate) in [("pps", self.pps), ("bytes_per_sec", self.bytes_per_sec)] {
            match rate {
                Some(0) => return Err(PolicyError::ZeroRate { field: field(name) }),
                Some(value) if value > MAX_RATE => {
                    return Err(PolicyError::TooLarge {
                        field: field(name),
                        value,
                    })
                }
                _ => {}
            }
        }
        let bursts = [
            ("burst_packets", self.burst_packets, "pps", self.pps, 1),
            (
                "burst_bytes",
                self.burst_bytes,
                "bytes_per_sec",
                self.bytes_per_sec,
                MIN_BURST_BYTES,
            ),
        ];
        for (name, burst, rate_name, rate, min) in bursts {
            let Some(value) = burst else { continue };
            if rate.is_none() {
                return Err(PolicyError::BurstWithoutRate {
                    field: field(name),
                    rate_field: field(rate_name),
                });
            }
            if value == 0 {
                return Err(PolicyError::ZeroBurst { field: field(name) });
            }
            if value < min {
                return Err(PolicyError::BurstTooSmall {
                    field: field(name),
                    value,
                    min,
                });
            }
            if value > MAX_RATE {
                return Err(PolicyError::TooLarge {
                    field: field(name),
                    value,
                });
            }
        }
        Ok(())
    }
}

/// The guest's receive filter, as virtio-net's control queue sets it
/// (`VIRTIO_NET_CTRL_RX` modes and `VIRTIO_NET_CTRL_MAC_TABLE_SET`).
///
/// A frame is delivered if `promisc` is set, or it is broadcast (unless
/// `no_broadcast`), or its destination is multicast and `all_multi` is set or it is
/// listed, or its destination is unicast and `all_uni` is set or it is listed.
/// An empty table delivers broadcast only.
///
/// From QEMU's `query-rx-filter` (or after `NIC_RX_FILTER_CHANGED`): `promiscuous`
/// → `promisc`; `multicast: "all"` or `multicast-overflow` → `all_multi`;
/// `unicast: "all"` or `unicast-overflow` → `all_uni`; `broadcast-allowed: false` →
/// `no_broadcast`; `macs` = `main-mac` plus `unicast-table` plus `multicast-table`
/// (leave out the unicast addresses for `unicast: "none"`, the multicast ones for
/// `multicast: "none"`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RxFilter {
    /// Deliver every frame.
    pub promisc: bool,
    /// Deliver every multicast frame.
    pub all_multi: bool,
    /// Deliver every unicast frame.
    pub all_uni: bool,
    /// Do not deliver broadcast frames.
    pub no_broadcast: bool,
    /// Destination MACs (unicast and multicast) to deliver; include the guest's own.
    pub macs: Vec<MacAddr>,
}

/// What is wrong with a [`PolicyConfig`]. Field names are relative to the policy table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A VLAN id outside 1..=4094.
    #[error("{field}: VLAN {vlan} out of range 1..=4094")]
    VlanRange {
        /// Offending field.
        field: String,
        /// Offending value.
        vlan: u16,
    },
    /// A trunk without VLANs.
    #[error(
        "vlan_mode.trunk.vlans: the trunk list is empty; list at least one VLAN or use access mode"
    )]
    EmptyTrunk,
    /// A VLAN listed twice in a trunk.
    #[error("vlan_mode.trunk.vlans: VLAN {0} is listed twice")]
    DuplicateTrunkVlan(u16),
    /// A native VLAN missing from the trunk list.
    #[error("vlan_mode.trunk.native_vlan: VLAN {0} is not in vlans; list it there too")]
    NativeNotInTrunk(u16),
    /// A rate limit without any rate.
    #[error(
        "{field}: no limit given; set pps and/or bytes_per_sec, or leave {field} out for no limit"
    )]
    EmptyRateLimit {
        /// The rate limit table (`ingress` or `egress`).
        field: String,
    },
    /// A rate of zero.
    #[error("{field}: a rate of zero would drop every frame; leave it out for no limit")]
    ZeroRate {
        /// Offending field.
        field: String,
    },
    /// A burst of zero.
    #[error("{field}: a burst of zero would drop every frame; leave it out for the default")]
    ZeroBurst {
        /// Offending field.
        field: String,
    },
    /// A burst too small for a full-size frame.
    #[error("{field}: {value} is below {min}: a full-size frame could never pass")]
    BurstTooSmall {
        /// Offending field.
        field: String,
        /// Offending value.
        value: u64,
        /// Smallest accepted value.
        min: u64,
    },
    /// A rate or burst above [`MAX_RATE`].
    #[error(
        "{field}: {value} is above the maximum 100000000000; leave the limit out for no limit"
    )]
    TooLarge {
        /// Offending field.
        field: String,
        /// Offending value.
        value: u64,
    },
    /// A burst without the rate it belongs to.
    #[error("{field} is set but {rate_field} is not: a burst needs a rate")]
    BurstWithoutRate {
        /// The burst field.
        field: String,
        /// The missing rate field.
        rate_field: String,
    },
    /// An FDB limit of zero.
    #[error(
        "max_fdb_entries: a limit of zero would drop every frame; give at least 1 or leave it out"
    )]
    ZeroFdbLimit,
    /// A MAC address that cannot appear where it was given.
    #[error("{field}: {mac} is {what}")]
    BadMac {
        /// Offending field.
        field: String,
        /// Offending address.
        mac: MacAddr,
        /// What is wrong with it.
        what: &'static str,
    },
}

fn check_vlan(field: &str, vlan: u16) -> Result<(), PolicyError> {
    if (1..=VLAN_MAX).contains(&vlan) {
        Ok(())
    } else {
        Err(PolicyError::VlanRange {
            field: field.into(),
            vlan,
        })
    }
}

impl PolicyConfig {
    /// True for the default (empty) policy, which restricts nothing.
    pub fn is_empty(&self) -> bool {
        *self == PolicyConfig::default()
    }

    /// Checks every value; the error names the offending field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for &mac in &self.allowed_macs {
            let what = if mac.is_zero() {
                Some("all-zero, never a valid source")
            } else if mac.is_multicast() {
                Some("a multicast address, never a valid source")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(PolicyError::BadMac {
                    field: "allowed_macs".into(),
                    mac,
                    what,
                });
            }
        }
        if let Some(mode) = &self.vlan_mode {
            mode.validate()?;
        }
        if let Some(limit) = &self.ingress {
            limit.validate("ingress")?;
        }
        if let Some(limit) = &self.egress {
            limit.validate("egress")?;
        }
        if self.max_fdb_entries == Some(0) {
            return Err(PolicyError::ZeroFdbLimit);
        }
        if let Some(filter) = &self.rx_filter {
            if let Some(&mac) = filter.macs.iter().find(|m| m.is_zero()) {
                return Err(PolicyError::BadMac {
                    field: "rx_filter.macs".into(),
                    mac,
                    what: "all-zero, never a destination",
                });
            }
        }
        Ok(())
    }
}

/// A set of VLAN ids 0..=4095 as a bitmap.
#[derive(Clone, PartialEq, Eq)]
struct VlanSet(Box<[u64; VLAN_IDS / 64]>);

impl Default for VlanSet {
    fn default() -> Self {
        VlanSet(Box::new([0; VLAN_IDS / 64]))
    }
}

impl VlanSet {
    /// Adds `vlan`; false if it was there already (or is above 4095).
    fn insert(&mut self, vlan: u16) -> bool {
        let i = usize::from(vlan);
        match self.0.get_mut(i / 64) {
            Some(word) => {
                let had = *word & (1 << (i % 64)) != 0;
                *word |= 1 << (i % 64);
                !had
            }
            None => false,
        }
    }

    fn contains(&self, vlan: u16) -> bool {
        let i = usize::from(vlan);
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

impl std::fmt::Debug for VlanSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids = (0..=4095u16).filter(|&v| self.contains(v));
        f.debug_set().entries(ids).finish()
    }
}

/// How a frame leaves a port that carries its VLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EgressTag {
    /// Without a VLAN tag (an access port, or a trunk's native VLAN).
    Untagged,
    /// With an 802.1Q tag for this VLAN.
    Tagged(u16),
}

impl EgressTag {
    /// The VLAN whose tag the frame must carry on the way out, if any.
    pub fn insert_tag(self) -> Option<u16> {
        match self {
            EgressTag::Untagged => None,
            EgressTag::Tagged(v) => Some(v),
        }
    }
}

/// Compiled VLAN membership.
#[derive(Debug)]
enum Membership {
    Access(u16),
    Trunk { vlans: VlanSet, native: Option<u16> },
}

/// Compiled receive filter.
#[derive(Debug)]
struct CompiledRxFilter {
    promisc: bool,
    all_multi: bool,
    all_uni: bool,
    broadcast: bool,
    /// Sorted, deduplicated MACs as [`MacAddr::to_u64`].
    macs: Vec<u64>,
}

fn sorted_macs(macs: &[MacAddr]) -> Vec<u64> {
    let mut v: Vec<u64> = macs.iter().map(|m| m.to_u64()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// A port's policy compiled for the forwarding path.
///
/// Immutable except for the token buckets, which are atomics: share it as
/// `Arc<PortPolicy>` between every thread that polls the port's queues. Change a
/// policy by swapping in a new one (see the module documentation).
#[derive(Debug)]
pub struct PortPolicy {
    config: PolicyConfig,
    /// Sorted allowed source MACs as [`MacAddr::to_u64`]; empty = any.
    allowed_src: Vec<u64>,
    membership: Membership,
    ingress: Option<RateLimiter>,
    egress: Option<RateLimiter>,
    fdb_limit: Option<u32>,
    rx_filter: Option<CompiledRxFilter>,
}

impl PortPolicy {
    /// Validates `config` and compiles it. `default_vlan` is the VLAN mode used when
    /// the policy has none: `VlanMode::Access(port.vlan)` for a VM port,
    /// [`VlanMode::trunk_all`]`(native_vlan)` for an uplink. `now_ns` is the current
    /// time on the clock later passed to the `admit` methods; buckets start full.
    pub fn new(
        config: &PolicyConfig,
        default_vlan: &VlanMode,
        now_ns: u64,
    ) -> Result<Self, PolicyError> {
        config.validate()?;
        let mode = match &config.vlan_mode {
            Some(m) => m,
            None => {
                default_vlan.validate()?;
                default_vlan
            }
        };
        let membership = match mode {
            VlanMode::Access(v) => Membership::Access(*v),
            VlanMode::Trunk { vlans, native_vlan } => {
                let mut set = VlanSet::default();
                for &v in vlans {
                    set.insert(v);
                }
                Membership::Trunk {
                    vlans: set,
                    native: *native_vlan,
                }
            }
        };
        Ok(PortPolicy {
            allowed_src: sorted_macs(&config.allowed_macs),
            membership,
            ingress: config.ingress.as_ref().map(|l| RateLimiter::new(l, now_ns)),
            egress: config.egress.as_ref().map(|l| RateLimiter::new(l, now_ns)),
            fdb_limit: config.max_fdb_entries,
            rx_filter: config.rx_filter.as_ref().map(|f| CompiledRxFilter {
                promisc: f.promisc,
                all_multi: f.all_multi,
                all_uni: f.all_uni,
                broadcast: !f.no_broadcast,
                macs: sorted_macs(&f.macs),
            }),
            config: config.clone(),
        })
    }

    /// The configuration this policy was built from.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Anti-spoofing: whether the port may send from `src`.
    pub fn check_source(&self, src: MacAddr) -> Result<(), DropReason> {
        if self.allowed_src.is_empty() || self.allowed_src.binary_search(&src.to_u64()).is_ok() {
            Ok(())
        } else {
            Err(DropReason::SpoofedSource)
        }
    }

    /// The VLAN a frame from the port belongs to, given its 802.1Q tag
    /// ([`crate::wire::L2Header::vlan_tag`]).
    ///
    /// Access port: untagged → the access VLAN, any tag → `VlanMismatch`. Trunk: a
    /// listed tag → that VLAN, untagged → the native VLAN (`VlanNotAllowed` without
    /// one), anything else (including priority tags, VLAN 0) → `VlanNotAllowed`.
    pub fn ingress_vlan(&self, frame_tag: Option<u16>) -> Result<u16, DropReason> {
        match (&self.membership, frame_tag) {
            (Membership::Access(v), None) => Ok(*v),
            (Membership::Access(_), Some(_)) => Err(DropReason::VlanMismatch),
            (Membership::Trunk { native, .. }, None) => native.ok_or(DropReason::VlanNotAllowed),
            (Membership::Trunk { vlans, .. }, Some(t)) => {
                if vlans.contains(t) {
                    Ok(t)
                } else {
                    Err(DropReason::VlanNotAllowed)
                }
            }
        }
    }

    /// Whether the port carries `vlan`, and if so how the frame leaves: untagged
    /// on an access port or for a trunk's native VLAN, tagged otherwise.
    pub fn egress(&self, vlan: u16) -> Option<EgressTag> {
        match &self.membership {
            Membership::Access(v) => (*v == vlan).then_some(EgressTag::Untagged),
            Membership::Trunk { vlans, native } => {
                if !vlans.contains(vlan) {
                    None
                } else if *native == Some(vlan) {
                    Some(EgressTag::Untagged)
                } else {
                    Some(EgressTag::Tagged(vlan))
                }
            }
        }
    }

    /// Whether the guest's receive filter takes a frame for `dst`.
    pub fn rx_filter_accepts(&self, dst: MacAddr) -> bool {
        let Some(f) = &self.rx_filter else {
            return true;
        };
        if f.promisc {
            return true;
        }
        if dst == MacAddr::BROADCAST {
            return f.broadcast;
        }
        let any = if dst.is_multicast() {
            f.all_multi
        } else {
            f.all_uni
        };
        any || f.macs.binary_search(&dst.to_u64()).is_ok()
    }

    /// Most FDB entries the port may own; a new source beyond it is an `FdbLimit` drop.
    pub fn fdb_limit(&self) -> Option<u32> {
        self.fdb_limit
    }

    /// Whether a frame of `bytes` from the port passes the ingress limit, taking
    /// its tokens if so (always true without a limit). `false` = `IngressRateLimit`.
    pub fn admit_ingress(&self, bytes: usize, now_ns: u64) -> bool {
        self.ingress.as_ref().is_none_or(|l| l.admit(bytes, now_ns))
    }

    /// Whether a frame of `bytes` to the port passes the egress limit, taking its
    /// tokens if so (always true without a limit). `false` = `EgressRateLimit`.
    pub fn admit_egress(&self, bytes: usize, now_ns: u64) -> bool {
        self.egress.as_ref().is_none_or(|l| l.admit(bytes, now_ns))
    }

    /// How many leading frames of a batch (lengths in bytes) pass the ingress
    /// limit; see [`RateLimiter::admit_batch`].
    pub fn admit_ingress_batch<I>(&self, frame_lens: I, now_ns: u64) -> usize
    where
        I: IntoIterator<Item = usize>,
        I::IntoIter: Clone,
    {
        admit_batch_or_all(self.ingress.as_ref(), frame_lens, now_ns)
    }

    /// How many leading frames of a batch (lengths in bytes) pass the egress
    /// limit; see [`RateLimiter::admit_batch`].
    pub fn admit_egress_batch<I>(&self, frame_lens: I, now_ns: u64) -> usize
    where
        I: IntoIterator<Item = usize>,
        I::IntoIter: Clone,
    {
        admit_batch_or_all(self.egress.as_ref(), frame_lens, now_ns)
    }

    /// The ingress limiter, if the policy has one.
    pub fn ingress_limiter(&self) -> Option<&RateLimiter> {
        self.ingress.as_ref()
    }

    /// The egress limiter, if the policy has one.
    pub fn egress_limiter(&self) -> Option<&RateLimiter> {
        self.egress.as_ref()
    }
}

fn admit_batch_or_all<I>(limiter: Option<&RateLimiter>, frame_lens: I, now_ns: u64) -> usize
where
    I: IntoIterator<Item = usize>,
    I::IntoIter: Clone,
{
    match limiter {
        Some(l) => l.admit_batch(frame_lens, now_ns),
        None => frame_lens.into_iter().count(),
    }
}

/// Tokens left in a [`RateLimiter`]'s buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    /// Packets the packet bucket holds (`None` without a pps limit).
    pub packets: Option<u64>,
    /// Bytes the byte bucket holds (`None` without a bytes limit).
    pub bytes: Option<u64>,
}

/// A packet bucket and a byte bucket, either optional; lock-free, shareable.
///
/// Aligned to a cache line so that a port's ingress and egress limiters (and
/// other ports' limiters) do not share one.
#[derive(Debug)]
#[repr(align(64))]
pub struct RateLimiter {
    packets: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl RateLimiter {
    /// Builds full buckets for `limit` (assumed validated), with time starting at `now_ns`.
    pub fn new(limit: &RateLimit, now_ns: u64) -> Self {
        let bucket = |rate: Option<u64>, burst: Option<u64>| {
            rate.zip(burst)
                .map(|(rate, burst)| Bucket::new(rate, burst, now_ns))
        };
        RateLimiter {
            packets: bucket(limit.pps, limit.effective_burst_packets()),
            bytes: bucket(limit.bytes_per_sec, limit.effective_burst_bytes()),
        }
    }

    /// Whether one frame of `bytes` passes both buckets; takes its tokens if so.
    pub fn admit(&self, bytes: usize, now_ns: u64) -> bool {
        self.admit_batch(std::iter::once(bytes), now_ns) == 1
    }

    /// Admits the longest prefix of a batch of frames (lengths in bytes) both
    /// buckets can pay for, takes its tokens and returns its length. Frames after
    /// the first one refused are refused too.
    ///
    /// The packet bucket is charged first, then the byte bucket; packets the byte
    /// bucket refuses are given back unless another thread touched the packet
    /// bucket in between (then they are lost: a little under-admission, never more).
    pub fn admit_batch<I>(&self, frame_lens: I, now_ns: u64) -> usize
    where
        I: IntoIterator<Item = usize>,
        I::IntoIter: Clone,
    {
        let lens = frame_lens
            .into_iter()
            .map(|l| u64::try_from(l).unwrap_or(u64::MAX));
        let count = u64::try_from(lens.clone().count()).unwrap_or(u64::MAX);
        if count == 0 {
            return 0;
        }
        // Refuse without writing anything when the first frame cannot pay its bytes:
        // the common case under a saturated byte limit.
        if let (Some(b), Some(first)) = (&self.bytes, lens.clone().next()) {
            if b.available(now_ns) < first {
                return 0;
            }
        }
        let (npk, reservation) = match &self.packets {
            Some(p) => {
                let (r, n) = p.take(now_ns, |avail| {
                    let n = avail.min(count);
                    (n, n)
                });
                (n, Some(r))
            }
            None => (count, None),
        };
        if npk == 0 {
            return 0;
        }
        let admitted = match &self.bytes {
            Some(b) => {
                let (_, n) = b.take(now_ns, |avail| {
                    let mut sum = 0u64;
                    let mut n = 0u64;
                    for len in lens
                        .clone()
                        .take(usize::try_from(npk).unwrap_or(usize::MAX))
                    {
                        match sum.checked_add(len) {
                            Some(s) if s <= avail => {
                                sum = s;
                                n += 1;
                            }
                            _ => break,
                        }
                    }
                    (sum, n)
                });
                n
            }
            None => npk,
        };
        if let (Some(p), Some(r)) = (&self.packets, reservation) {
            p.shrink(r, admitted);
        }
        usize::try_from(admitted).unwrap_or(usize::MAX)
    }

    /// Tokens the buckets hold at `now_ns`.
    pub fn available(&self, now_ns: u64) -> Tokens {
        Tokens {
            packets: self.packets.as_ref().map(|b| b.available(now_ns)),
            bytes: self.bytes.as_ref().map(|b| b.available(now_ns)),
        }
    }
}

/// One token bucket in GCRA form.
///
/// `pos` counts the tokens handed out, as a position on the same (wrapping, 64-bit)
/// scale as `earned(now)`, the tokens the clock has produced since `epoch_ns`.
/// The bucket's debt is `pos - earned(now)` when positive, and it holds
/// `burst - debt` tokens; a `pos` behind `earned(now)` means a full bucket.
/// Taking `c` tokens moves `pos` to `max(pos, earned) + c`, allowed while that
/// stays within `earned + burst`.
///
/// Wrapping: the scale wraps after 2^64 tokens (5.8 years at 10^11 a second, 46
/// years at 100 Gbit/s in bytes); positions are compared by their wrapping
/// difference. A debt can only be up to `burst` plus what the clock earns during
/// the lag between two callers' clock readings, so a difference of at least
/// `burst + rate * MAX_CLOCK_LAG_SECS` is read as a position left behind: a full
/// bucket. Two rare and harmless misreadings follow. A bucket left untouched for
/// a whole multiple of the wrap period (to within that margin) reads as indebted
/// and refills within `burst / rate + MAX_CLOCK_LAG_SECS`. A caller whose clock
/// reading lags another's by more than the margin sees a full bucket and can let
/// one extra burst through.
#[derive(Debug)]
struct Bucket {
    pos: AtomicU64,
    burst: u64,
    rate: u64,
    /// `rate / 1e9` and `rate % 1e9`, for an exact `floor(rate * ns / 1e9)` in u64.
    rate_hi: u64,
    rate_lo: u64,
    epoch_ns: u64,
    /// A wrapping difference `pos - earned` of at least this is a stale position.
    stale_debt: u64,
}

/// A successful take, for [`Bucket::shrink`].
#[derive(Debug, Clone, Copy)]
struct Reservation {
    base: u64,
    new: u64,
    cost: u64,
}

/// Largest lag between two callers' clock readings for which the rate-limit bound
/// holds exactly (see the module documentation); a caller lagging more may see a
/// full bucket, letting one extra burst through.
pub const MAX_CLOCK_LAG_SECS: u64 = 60;

impl Bucket {
    fn new(rate: u64, burst: u64, now_ns: u64) -> Self {
        Bucket {
            pos: AtomicU64::new(0),
            burst,
            rate,
            rate_hi: rate / NS_PER_SEC,
            rate_lo: rate % NS_PER_SEC,
            epoch_ns: now_ns,
            stale_debt: burst.saturating_add(rate.saturating_mul(MAX_CLOCK_LAG_SECS)),
        }
    }

    /// Tokens earned since the epoch, `floor(rate * elapsed / 1e9)` modulo 2^64.
    fn earned(&self, now_ns: u64) -> u64 {
        let elapsed = now_ns.saturating_sub(self.epoch_ns);
        let (secs, rem) = (elapsed / NS_PER_SEC, elapsed % NS_PER_SEC);
        // rate * elapsed / 1e9 = secs * rate + rem * rate_hi + rem * rate_lo / 1e9,
        // with rem * rate_lo < 1e18: no overflow except the intended wrap.
        secs.wrapping_mul(self.rate)
            .wrapping_add(rem.wrapping_mul(self.rate_hi))
            .wrapping_add(rem * self.rate_lo / NS_PER_SEC)
    }

    /// The position a take starts from and the debt at `earned`.
    fn base_and_debt(&self, pos: u64, earned: u64) -> (u64, u64) {
        let debt = pos.wrapping_sub(earned);
        if debt < self.stale_debt {
            (pos, debt)
        } else {
            (earned, 0)
        }
    }

    fn available(&self, now_ns: u64) -> u64 {
        let (_, debt) = self.base_and_debt(self.pos.load(Ordering::Relaxed), self.earned(now_ns));
        self.burst.saturating_sub(debt)
    }

    /// Takes the tokens `plan(available)` asks for (at most `available`) in one
    /// compare-and-swap, retried if another thread got in between.
    ///
    /// Relaxed ordering is enough: the position is the only shared datum, and
    /// the read-modify-write chain on it is totally ordered.
    fn take<T>(&self, now_ns: u64, plan: impl Fn(u64) -> (u64, T)) -> (Reservation, T) {
        let earned = self.earned(now_ns);
        let mut pos = self.pos.load(Ordering::Relaxed);
        loop {
            let (base, debt) = self.base_and_debt(pos, earned);
            let avail = self.burst.saturating_sub(debt);
            let (cost, out) = plan(avail);
            let cost = cost.min(avail);
            if cost == 0 {
                let r = Reservation {
                    base: pos,
                    new: pos,
                    cost: 0,
                };
                return (r, out);
            }
            let new = base.wrapping_add(cost);
            match self
                .pos
                .compare_exchange_weak(pos, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return (Reservation { base, new, cost }, out),
                Err(current) => pos = current,
            }
        }
    }

    /// Gives back what a take got beyond `keep` tokens, if nobody has moved the
    /// position since (else the surplus is lost, which only under-admits).
    fn shrink(&self, r: Reservation, keep: u64) {
        if keep < r.cost {
            let _ = self.pos.compare_exchange(
                r.new,
                r.base.wrapping_add(keep),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn policy(toml_text: &str) -> PortPolicy {
        let cfg: PolicyConfig = toml::from_str(toml_text).unwrap();
        PortPolicy::new(&cfg, &VlanMode::Access(1), 0).unwrap()
    }

    fn limiter(limit: RateLimit) -> RateLimiter {
        limit.validate("ingress").unwrap();
        RateLimiter::new(&limit, 0)
    }

    fn pps(rate: u64, burst: u64) -> RateLimit {
        RateLimit {
            pps: Some(rate),
            burst_packets: Some(burst),
            ..RateLimit::default()
        }
    }

    fn bps(rate: u64, burst: u64) -> RateLimit {
        RateLimit {
            bytes_per_sec: Some(rate),
            burst_bytes: Some(burst),
            ..RateLimit::default()
        }
    }

    /// Frames of `len` admitted one by one at `now` until the first refusal.
    fn drain(l: &RateLimiter, len: usize, now: u64) -> u64 {
        let mut n = 0;
        while l.admit(len, now) {
            n += 1;
            assert!(n < 10_000_000, "bucket never runs dry");
        }
        n
    }

    #[test]
    fn test_empty_policy_restricts_nothing() {
        let p = policy("");
        assert!(p.config().is_empty());
        assert_eq!(p.check_source(mac("52:54:00:00:00:01")), Ok(()));
        assert_eq!(p.ingress_vlan(None), Ok(1));
        assert_eq!(p.egress(1), Some(EgressTag::Untagged));
        assert!(p.admit_ingress(9000, 0) && p.admit_egress(9000, 0));
        assert_eq!(p.admit_ingress_batch([1, 2, 3], 0), 3);
        assert_eq!(p.admit_egress_batch([1, 2], 0), 2);
        assert!(p.rx_filter_accepts(mac("52:54:00:00:00:99")));
        assert_eq!(p.fdb_limit(), None);
        assert!(p.ingress_limiter().is_none() && p.egress_limiter().is_none());
    }

    #[test]
    fn test_anti_spoofing() {
        let p = policy(r#"allowed_macs = ["52:54:00:00:00:02", "52:54:00:00:00:01"]"#);
        assert_eq!(p.check_source(mac("52:54:00:00:00:01")), Ok(()));
        assert_eq!(p.check_source(mac("52:54:00:00:00:02")), Ok(()));
        for bad in [
            "52:54:00:00:00:03",
            "02:00:00:00:00:01",
            "00:00:00:00:00:00",
        ] {
            assert_eq!(
                p.check_source(mac(bad)),
                Err(DropReason::SpoofedSource),
                "{bad}"
            );
        }
    }

    #[test]
    fn test_access_vlan() {
        let p = policy("vlan_mode = { access = 10 }");
        assert_eq!(p.ingress_vlan(None), Ok(10));
        for tag in [0, 1, 10, 20, 4095] {
            assert_eq!(p.ingress_vlan(Some(tag)), Err(DropReason::VlanMismatch));
        }
        assert_eq!(p.egress(10), Some(EgressTag::Untagged));
        assert_eq!(p.egress(10).and_then(|e| e.insert_tag()), None);
        for v in [1, 11, 20, 4094] {
            assert_eq!(p.egress(v), None);
        }
    }

    #[test]
    fn test_trunk_with_native_vlan() {
        let p = policy("vlan_mode = { trunk = { vlans = [10, 20, 4094], native_vlan = 20 } }");
        assert_eq!(p.ingress_vlan(None), Ok(20));
        assert_eq!(p.ingress_vlan(Some(10)), Ok(10));
        assert_eq!(p.ingress_vlan(Some(20)), Ok(20));
        assert_eq!(p.ingress_vlan(Some(4094)), Ok(4094));
        for tag in [0, 1, 11, 4095, 0xffff] {
            assert_eq!(
                p.ingress_vlan(Some(tag)),
                Err(DropReason::VlanNotAllowed),
                "{tag}"
            );
        }
        assert_eq!(p.egress(10), Some(EgressTag::Tagged(10)));
        assert_eq!(p.egress(10).and_then(|e| e.insert_tag()), Some(10));
        assert_eq!(p.egress(4094), Some(EgressTag::Tagged(4094)));
        assert_eq!(p.egress(20), Some(EgressTag::Untagged));
        for v in [0, 1, 30, 4095, 0xffff] {
            assert_eq!(p.egress(v), None, "{v}");
        }
    }

    #[test]
    fn test_trunk_without_native_vlan() {
        let p = policy("vlan_mode = { trunk = { vlans = [30, 10] } }");
        assert_eq!(p.ingress_vlan(None), Err(DropReason::VlanNotAllowed));
        assert_eq!(p.ingress_vlan(Some(30)), Ok(30));
        assert_eq!(p.ingress_vlan(Some(20)), Err(DropReason::VlanNotAllowed));
        assert_eq!(p.egress(10), Some(EgressTag::Tagged(10)));
        assert_eq!(p.egress(30), Some(EgressTag::Tagged(30)));
        assert_eq!(p.egress(20), None);
    }

    #[test]
    fn test_default_vlan_mode_applies_without_policy_mode() {
        let cfg = PolicyConfig::default();
        let p = PortPolicy::new(&cfg, &VlanMode::Access(7), 0).unwrap();
        assert_eq!(p.ingress_vlan(None), Ok(7));
        assert_eq!(p.egress(7), Some(EgressTag::Untagged));

        let uplink = PortPolicy::new(&cfg, &VlanMode::trunk_all(5), 0).unwrap();
        assert_eq!(uplink.ingress_vlan(None), Ok(5));
        assert_eq!(uplink.ingress_vlan(Some(1)), Ok(1));
        assert_eq!(uplink.ingress_vlan(Some(4094)), Ok(4094));
        assert_eq!(
            uplink.ingress_vlan(Some(0)),
            Err(DropReason::VlanNotAllowed)
        );
        assert_eq!(uplink.egress(5), Some(EgressTag::Untagged));
        assert_eq!(uplink.egress(6), Some(EgressTag::Tagged(6)));

        // The policy's own mode wins over the default.
        let cfg: PolicyConfig = toml::from_str("vlan_mode = { access = 9 }").unwrap();
        let p = PortPolicy::new(&cfg, &VlanMode::Access(7), 0).unwrap();
        assert_eq!(p.ingress_vlan(None), Ok(9));

        // A bad default is reported too.
        assert_eq!(
            PortPolicy::new(&PolicyConfig::default(), &VlanMode::Access(0), 0).unwrap_err(),
            PolicyError::VlanRange {
                field: "vlan_mode.access".into(),
                vlan: 0
            }
        );
    }

    #[test]
    fn test_packet_bucket_burst_and_refill() {
        let l = limiter(pps(1000, 5)); // one packet per millisecond
        assert_eq!(l.available(0).packets, Some(5));
        assert_eq!(drain(&l, 64, 0), 5);
        assert_eq!(l.available(0).packets, Some(0));
        assert!(!l.admit(64, MS - 1));
        assert!(l.admit(64, MS));
        assert!(!l.admit(64, MS));
        // 3.5 ms later: 3 packets earned (the half packet is kept for later).
        assert_eq!(drain(&l, 64, 4 * MS + MS / 2), 3);
        assert!(l.admit(64, 5 * MS));
        // A long pause refills to the burst, no further.
        assert_eq!(l.available(10 * S).packets, Some(5));
        assert_eq!(drain(&l, 64, 10 * S), 5);
        assert_eq!(l.available(10 * S).bytes, None);
    }

    #[test]
    fn test_byte_bucket_burst_and_refill() {
        let l = limiter(bps(1_000_000, 3000)); // one byte per microsecond
        assert!(l.admit(1500, 0));
        assert!(l.admit(1000, 0));
        assert!(!l.admit(1000, 0)); // 500 left
        assert!(l.admit(500, 0));
        assert_eq!(l.available(0).bytes, Some(0));
        assert!(!l.admit(100, 99_999));
        assert!(l.admit(100, 100_000));
        assert_eq!(l.available(100_000).bytes, Some(0));
        assert_eq!(l.available(S).bytes, Some(3000));
        assert!(!l.admit(3001, S)); // larger than the bucket: never
        assert!(l.admit(3000, S));
    }

    #[test]
    fn test_both_limits_together() {
        let l = limiter(RateLimit {
            pps: Some(1000),
            bytes_per_sec: Some(1_000_000),
            burst_packets: Some(4),
            burst_bytes: Some(4000),
        });
        // Small frames: the packet limit binds.
        assert_eq!(drain(&l, 100, 0), 4);
        assert_eq!(
            l.available(0),
            Tokens {
                packets: Some(0),
                bytes: Some(3600)
            }
        );
        // Large frames: the byte limit binds, and refused frames cost no packet.
        let l = limiter(RateLimit {
            pps: Some(1000),
            bytes_per_sec: Some(1_000_000),
            burst_packets: Some(4),
            burst_bytes: Some(4000),
        });
        assert_eq!(drain(&l, 1500, 0), 2);
        assert_eq!(l.available(0).packets, Some(2));
        assert_eq!(l.available(0).bytes, Some(1000));
        // After 1 ms: 2 + 1 packets, 1000 + 1000 bytes.
        assert_eq!(
            l.available(MS),
            Tokens {
                packets: Some(3),
                bytes: Some(2000)
            }
        );
        assert_eq!(drain(&l, 1000, MS), 2);
        assert_eq!(l.available(MS).packets, Some(1));
    }

    #[test]
    fn test_byte_refusal_gives_packets_back() {
        let l = limiter(RateLimit {
            pps: Some(1000),
            bytes_per_sec: Some(1_000_000),
            burst_packets: Some(10),
            burst_bytes: Some(2000),
        });
        // A batch of 5 frames: the packet bucket could take 5, the bytes only 2.
        assert_eq!(l.admit_batch([800, 800, 800, 800, 800], 0), 2);
        assert_eq!(
            l.available(0),
            Tokens {
                packets: Some(8),
                bytes: Some(400)
            }
        );
        // The prefix stops at the first refusal, even if a later frame would fit.
        assert_eq!(l.admit_batch([300, 500, 50], 0), 1);
        assert_eq!(l.available(0).packets, Some(7));
        assert_eq!(l.admit_batch(Vec::<usize>::new(), 0), 0);
    }

    #[test]
    fn test_batch_admit_packet_limit() {
        let l = limiter(pps(1000, 3));
        assert_eq!(l.admit_batch([64; 5], 0), 3);
        assert_eq!(l.admit_batch([64; 5], 0), 0);
        assert_eq!(l.admit_batch([64; 5], 2 * MS), 2);
    }

    #[test]
    fn test_fractional_rate_is_exact_over_time() {
        // 3 packets a second: 333333333.33 ns per packet, burst 1.
        let l = limiter(pps(3, 1));
        assert!(l.admit(64, 0));
        assert!(!l.admit(64, 333_333_333));
        assert!(l.admit(64, 333_333_334));
        assert!(!l.admit(64, 666_666_666));
        assert!(l.admit(64, 666_666_667));
        // No drift: after 1000 s exactly 3000 packets have been earned in total.
        let mut admitted = 3;
        let mut t = 666_666_667;
        while t <= 1000 * S {
            t += 1_000_000; // poll every millisecond
            if l.admit(64, t.min(1000 * S)) {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 1 + 3000);
        // Bytes at a rate above 1e9 per second (rate_hi > 0): 12.5 GB/s.
        let l = limiter(bps(12_500_000_000, 100_000));
        assert_eq!(drain(&l, 10_000, 0), 10);
        assert_eq!(l.available(1).bytes, Some(12)); // floor(12.5)
        assert_eq!(l.available(2).bytes, Some(25));
        assert_eq!(l.available(7).bytes, Some(87)); // floor(87.5)
        assert_eq!(l.available(S + 7).bytes, Some(100_000));
    }

    #[test]
    fn test_new_policy_starts_full_and_clock_before_epoch() {
        let l = RateLimiter::new(&pps(1000, 2), 5 * S);
        // A reading taken before the policy existed counts as its epoch.
        assert_eq!(l.available(S).packets, Some(2));
        assert_eq!(drain(&l, 64, S), 2);
        assert!(!l.admit(64, 5 * S));
        assert!(l.admit(64, 5 * S + MS));
    }

    #[test]
    fn test_wrapping_token_scale() {
        // At 1e11 bytes/s the earned count wraps 2^64 after ~184467440.7 s.
        let rate = MAX_RATE;
        let l = limiter(bps(rate, 1_000_000));
        let bucket = l.bytes.as_ref().unwrap();
        let wrap_ns = u64::MAX / rate * S; // just before the wrap (within a second)
        let t0 = wrap_ns - 5 * S;
        assert!(bucket.earned(t0) > u64::MAX - 6 * rate);
        // A bucket idle since the epoch for (nearly) a whole wrap period is the
        // documented misreading: it looks indebted...
        assert_eq!(l.available(t0).bytes, Some(0));
        // ...until the clock has earned the margin (burst + 60 s) past the wrap.
        let margin_ns = (1_000_000 + rate * MAX_CLOCK_LAG_SECS) / (rate / S) + 1;
        assert_eq!(l.available(t0 + margin_ns).bytes, Some(1_000_000));
        // A bucket in use across the wrap: as if it had just been emptied at t0.
        bucket
            .pos
            .store(bucket.earned(t0) + 1_000_000, Ordering::Relaxed);
        assert_eq!(l.available(t0).bytes, Some(0));
        assert!(!l.admit(1, t0));
        // 10 us earns exactly 1e6 bytes each time, through the wrap.
        let mut t = t0;
        while t < wrap_ns + 10 * S {
            t += 10_000;
            assert!(l.admit(1_000_000, t), "at {t}");
            assert!(!l.admit(1, t), "at {t}");
        }
        assert!(bucket.earned(t) < 20 * rate, "no wrap happened");
        // 100 bytes a nanosecond.
        assert!(!l.admit(101, t + 1));
        assert!(l.admit(100, t + 1));
        assert!(!l.admit(1, t + 1));
        // A pause after the wrap refills to the burst, no further.
        assert_eq!(l.available(t + 3600 * S).bytes, Some(1_000_000));
    }

    #[test]
    fn test_lagging_clock_reading() {
        let l = limiter(pps(1000, 10));
        assert_eq!(drain(&l, 64, 100 * S), 10);
        // A reading a little older than the latest sees the debt, and more of it.
        assert_eq!(l.available(100 * S - MS).packets, Some(0));
        assert!(!l.admit(64, 100 * S - 5 * MS));
        // A reading lagging by more than MAX_CLOCK_LAG_SECS sees a full bucket.
        let old = 100 * S - (MAX_CLOCK_LAG_SECS + 1) * S;
        assert_eq!(l.available(old).packets, Some(10));
    }

    #[test]
    fn test_swap_starts_with_full_buckets() {
        let cfg: PolicyConfig =
            toml::from_str("ingress = { pps = 10, burst_packets = 2 }").unwrap();
        let live = arc_swap::ArcSwap::from_pointee(
            PortPolicy::new(&cfg, &VlanMode::Access(1), 0).unwrap(),
        );
        assert!(live.load().admit_ingress(64, 0));
        assert!(live.load().admit_ingress(64, 0));
        assert!(!live.load().admit_ingress(64, 0));
        live.store(Arc::new(
            PortPolicy::new(&cfg, &VlanMode::Access(1), 1).unwrap(),
        ));
        assert!(live.load().admit_ingress(64, 1));
        assert!(live.load().admit_ingress(64, 1));
        assert!(!live.load().admit_ingress(64, 1));
    }

    #[test]
    fn test_port_policy_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PortPolicy>();
        check::<Arc<PortPolicy>>();
    }

    /// Runs two threads admitting frames for `rounds` calls each, reading the
    /// time from `clock`; returns (frames admitted, latest time read).
    fn hammer(l: &RateLimiter, clock: &(dyn Fn() -> u64 + Sync), rounds: usize) -> (u64, u64) {
        let latest = AtomicU64::new(0);
        let total: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let mut n = 0u64;
                        for i in 0..rounds {
                            let now = clock();
                            latest.fetch_max(now, Ordering::Relaxed);
                            // Alternate single frames and small batches.
                            n += if i % 2 == 0 {
                                u64::from(l.admit(100, now))
                            } else {
                                l.admit_batch([100, 60, 100], now) as u64
                            };
                        }
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        (total, latest.load(Ordering::Relaxed))
    }

    #[test]
    fn test_concurrent_admits_never_exceed_burst_plus_rate() {
        let packets = || RateLimit {
            pps: Some(200_000),
            burst_packets: Some(500),
            ..RateLimit::default()
        };
        // A deterministic shared clock: every call advances it by 3 ns.
        let l = RateLimiter::new(&packets(), 0);
        let fake = AtomicU64::new(0);
        let (n, t) = hammer(&l, &|| fake.fetch_add(3, Ordering::Relaxed), 200_000);
        let bound = 500 + 200_000 * t / S;
        assert!(n <= bound, "admitted {n} > {bound}");
        assert!(n >= 500, "admitted {n}: not even the burst");

        // The real clock, both limits: neither bound may be exceeded.
        let l = RateLimiter::new(
            &RateLimit {
                pps: Some(100_000),
                bytes_per_sec: Some(8_000_000),
                burst_packets: Some(200),
                burst_bytes: Some(16_000),
            },
            0,
        );
        let start = std::time::Instant::now();
        let clock = || u64::try_from(start.elapsed().as_nanos()).unwrap();
        let (n, t) = hammer(&l, &clock, 300_000);
        let packet_bound = 200 + 100_000 * t / S;
        let byte_bound = 16_000 + 8_000_000 * t / S;
        assert!(n <= packet_bound, "admitted {n} > {packet_bound}");
        // Every admitted frame is at least 60 bytes.
        assert!(
            n * 60 <= byte_bound,
            "admitted {n} frames > {byte_bound} bytes"
        );
    }

    #[test]
    fn test_concurrent_bytes_exact_accounting() {
        // All frames 100 bytes: the byte bound is exact.
        let l = RateLimiter::new(&bps(10_000_000, 5_000), 0);
        let fake = AtomicU64::new(0);
        let latest = AtomicU64::new(0);
        let n: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        (0..200_000)
                            .map(|_| {
                                let now = fake.fetch_add(5, Ordering::Relaxed);
                                latest.fetch_max(now, Ordering::Relaxed);
                                u64::from(l.admit(100, now))
                            })
                            .sum::<u64>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let t = latest.load(Ordering::Relaxed);
        let bound = 5_000 + 10_000_000 * t / S;
        assert!(n * 100 <= bound, "admitted {} bytes > {bound}", n * 100);
        assert!(n * 100 >= 5_000);
    }

    #[test]
    fn test_rx_filter() {
        let p = policy(r#"rx_filter = { macs = ["52:54:00:00:00:01", "01:00:5e:00:00:fb"] }"#);
        assert!(p.rx_filter_accepts(mac("52:54:00:00:00:01")));
        assert!(!p.rx_filter_accepts(mac("52:54:00:00:00:02")));
        assert!(p.rx_filter_accepts(MacAddr::BROADCAST));
        assert!(p.rx_filter_accepts(mac("01:00:5e:00:00:fb")));
        assert!(!p.rx_filter_accepts(mac("01:00:5e:00:00:01")));
        assert!(!p.rx_filter_accepts(mac("33:33:00:00:00:01")));

        let p = policy(r#"rx_filter = { all_multi = true, macs = ["52:54:00:00:00:01"] }"#);
        assert!(p.rx_filter_accepts(mac("33:33:00:00:00:01")));
        assert!(p.rx_filter_accepts(mac("01:00:5e:00:00:01")));
        assert!(!p.rx_filter_accepts(mac("52:54:00:00:00:02")));

        let p = policy("rx_filter = { all_uni = true }");
        assert!(p.rx_filter_accepts(mac("52:54:00:00:00:02")));
        assert!(!p.rx_filter_accepts(mac("33:33:00:00:00:01")));
        assert!(p.rx_filter_accepts(MacAddr::BROADCAST));

        let p = policy(r#"rx_filter = { no_broadcast = true, macs = ["ff:ff:ff:ff:ff:ff"] }"#);
        assert!(!p.rx_filter_accepts(MacAddr::BROADCAST));

        let p = policy("rx_filter = { promisc = true, no_broadcast = true }");
        for m in [
            "52:54:00:00:00:02",
            "33:33:00:00:00:01",
            "ff:ff:ff:ff:ff:ff",
        ] {
            assert!(p.rx_filter_accepts(mac(m)), "{m}");
        }

        let p = policy("rx_filter = {}");
        assert!(p.rx_filter_accepts(MacAddr::BROADCAST));
        assert!(!p.rx_filter_accepts(mac("52:54:00:00:00:01")));
        assert!(!p.rx_filter_accepts(mac("33:33:00:00:00:01")));
    }

    #[test]
    fn test_fdb_limit() {
        assert_eq!(policy("max_fdb_entries = 3").fdb_limit(), Some(3));
    }

    #[test]
    fn test_validate_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (
                "vlan_mode = { access = 0 }",
                "vlan_mode.access: VLAN 0 out of range",
            ),
            (
                "vlan_mode = { access = 4095 }",
                "vlan_mode.access: VLAN 4095",
            ),
            (
                "vlan_mode = { trunk = { vlans = [] } }",
                "vlan_mode.trunk.vlans: the trunk list is empty",
            ),
            (
                "vlan_mode = { trunk = { vlans = [10, 4095] } }",
                "vlan_mode.trunk.vlans: VLAN 4095 out of range",
            ),
            (
                "vlan_mode = { trunk = { vlans = [0] } }",
                "vlan_mode.trunk.vlans: VLAN 0 out of range",
            ),
            (
                "vlan_mode = { trunk = { vlans = [10, 20, 10] } }",
                "vlan_mode.trunk.vlans: VLAN 10 is listed twice",
            ),
            (
                "vlan_mode = { trunk = { vlans = [10], native_vlan = 0 } }",
                "vlan_mode.trunk.native_vlan: VLAN 0 out of range",
            ),
            (
                "vlan_mode = { trunk = { vlans = [10], native_vlan = 20 } }",
                "vlan_mode.trunk.native_vlan: VLAN 20 is not in vlans",
            ),
            ("ingress = { pps = 0 }", "ingress.pps: a rate of zero"),
            ("egress = { pps = 0 }", "egress.pps: a rate of zero"),
            (
                "ingress = { bytes_per_sec = 0 }",
                "ingress.bytes_per_sec: a rate of zero",
            ),
            (
                "egress = { pps = 5, bytes_per_sec = 0 }",
                "egress.bytes_per_sec: a rate of zero",
            ),
            (
                "ingress = { pps = 100000000001 }",
                "ingress.pps: 100000000001 is above the maximum",
            ),
            (
                "egress = { bytes_per_sec = 100000000001 }",
                "egress.bytes_per_sec: 100000000001 is above",
            ),
            ("ingress = {}", "ingress: no limit given"),
            ("egress = { burst_packets = 4 }", "egress: no limit given"),
            (
                "ingress = { pps = 10, burst_packets = 0 }",
                "ingress.burst_packets: a burst of zero",
            ),
            (
                "ingress = { bytes_per_sec = 10, burst_bytes = 0 }",
                "ingress.burst_bytes: a burst of zero",
            ),
            (
                "egress = { bytes_per_sec = 10, burst_bytes = 1517 }",
                "egress.burst_bytes: 1517 is below 1518",
            ),
            (
                "ingress = { pps = 10, burst_packets = 100000000001 }",
                "ingress.burst_packets: 100000000001 is above",
            ),
            (
                "ingress = { pps = 10, burst_bytes = 2000 }",
                "ingress.burst_bytes is set but ingress.bytes_per_sec is not",
            ),
            (
                "egress = { bytes_per_sec = 10, burst_packets = 2 }",
                "egress.burst_packets is set but egress.pps is not",
            ),
            ("max_fdb_entries = 0", "max_fdb_entries: a limit of zero"),
            (
                r#"allowed_macs = ["00:00:00:00:00:00"]"#,
                "allowed_macs: 00:00:00:00:00:00 is all-zero",
            ),
            (
                r#"allowed_macs = ["52:54:00:00:00:01", "01:00:5e:00:00:01"]"#,
                "allowed_macs: 01:00:5e:00:00:01 is a multicast address",
            ),
            (
                r#"allowed_macs = ["ff:ff:ff:ff:ff:ff"]"#,
                "allowed_macs: ff:ff:ff:ff:ff:ff is a multicast",
            ),
            (
                r#"rx_filter = { macs = ["00:00:00:00:00:00"] }"#,
                "rx_filter.macs: 00:00:00:00:00:00 is all-zero",
            ),
        ];
        for (text, want) in cases {
            let cfg: PolicyConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let err = cfg.validate().expect_err(text).to_string();
            assert!(err.starts_with(want), "{text}: got {err:?}, want {want:?}");
            let err = PortPolicy::new(&cfg, &VlanMode::Access(1), 0).expect_err(text);
            assert!(err.to_string().starts_with(want));
        }
    }

    #[test]
    fn test_validate_accepts_edges() {
        for text in [
            "vlan_mode = { access = 1 }",
            "vlan_mode = { access = 4094 }",
            "vlan_mode = { trunk = { vlans = [1, 4094], native_vlan = 4094 } }",
            "ingress = { pps = 1 }",
            "ingress = { pps = 100000000000, burst_packets = 100000000000 }",
            "egress = { bytes_per_sec = 1, burst_bytes = 1518 }",
            "max_fdb_entries = 1",
            r#"allowed_macs = ["02:00:00:00:00:01"]"#,
            r#"rx_filter = { macs = ["ff:ff:ff:ff:ff:ff", "33:33:00:00:00:01"] }"#,
        ] {
            let cfg: PolicyConfig = toml::from_str(text).unwrap();
            assert_eq!(cfg.validate(), Ok(()), "{text}");
        }
        VlanMode::trunk_all(1).validate().unwrap();
    }

    #[test]
    fn test_burst_defaults() {
        let l = RateLimit {
            pps: Some(1000),
            bytes_per_sec: Some(125_000_000),
            ..RateLimit::default()
        };
        assert_eq!(l.effective_burst_packets(), Some(100));
        assert_eq!(l.effective_burst_bytes(), Some(12_500_000));
        let small = RateLimit {
            pps: Some(5),
            bytes_per_sec: Some(1000),
            ..RateLimit::default()
        };
        assert_eq!(small.effective_burst_packets(), Some(1));
        assert_eq!(small.effective_burst_bytes(), Some(DEFAULT_MIN_BURST_BYTES));
        assert_eq!(RateLimit::default().effective_burst_packets(), None);
        assert_eq!(RateLimit::default().effective_burst_bytes(), None);
        let r = RateLimiter::new(&l, 0);
        assert_eq!(
            r.available(0),
            Tokens {
                packets: Some(100),
                bytes: Some(12_500_000)
            }
        );
    }

    fn full_config() -> PolicyConfig {
        PolicyConfig {
            allowed_macs: vec![mac("52:54:00:12:34:56"), mac("52:54:00:12:34:57")],
            vlan_mode: Some(VlanMode::Trunk {
                vlans: vec![10, 20, 30],
                native_vlan: Some(10),
            }),
            ingress: Some(RateLimit {
                pps: Some(100_000),
                bytes_per_sec: Some(125_000_000),
                burst_packets: Some(1000),
                burst_bytes: Some(1_250_000),
            }),
            egress: Some(RateLimit {
                bytes_per_sec: Some(125_000_000),
                ..RateLimit::default()
            }),
            max_fdb_entries: Some(4),
            rx_filter: Some(RxFilter {
                promisc: false,
                all_multi: true,
                all_uni: false,
                no_broadcast: true,
                macs: vec![mac("52:54:00:12:34:56"), mac("33:33:00:00:00:01")],
            }),
        }
    }

    #[test]
    fn test_serde_round_trip() {
        for cfg in [
            full_config(),
            PolicyConfig::default(),
            PolicyConfig {
                vlan_mode: Some(VlanMode::Access(42)),
                ..PolicyConfig::default()
            },
        ] {
            let json = serde_json::to_string(&cfg).unwrap();
            assert_eq!(
                serde_json::from_str::<PolicyConfig>(&json).unwrap(),
                cfg,
                "{json}"
            );
            let text = toml::to_string(&cfg).unwrap();
            assert_eq!(
                toml::from_str::<PolicyConfig>(&text).unwrap(),
                cfg,
                "{text}"
            );
        }
        assert_eq!(
            serde_json::to_string(&PolicyConfig::default()).unwrap(),
            "{}"
        );
        assert_eq!(
            serde_json::to_value(VlanMode::Access(10)).unwrap(),
            serde_json::json!({"access": 10})
        );
        assert_eq!(
            serde_json::to_value(VlanMode::Trunk {
                vlans: vec![10, 20],
                native_vlan: None
            })
            .unwrap(),
            serde_json::json!({"trunk": {"vlans": [10, 20]}})
        );
    }

    #[test]
    fn test_empty_table_is_no_policy() {
        assert!(toml::from_str::<PolicyConfig>("").unwrap().is_empty());
        assert!(serde_json::from_str::<PolicyConfig>("{}")
            .unwrap()
            .is_empty());
        assert!(!full_config().is_empty());
    }

    #[test]
    fn test_unknown_fields_rejected() {
        for text in [
            "allowed_mac = []",
            "ingress = { pps = 1, bps = 2 }",
            "egress = { pps = 1, burst = 2 }",
            "rx_filter = { promiscuous = true }",
            "vlan_mode = { access = 1, trunk = { vlans = [2] } }",
            "vlan_mode = { trunk = { vlans = [2], native = 2 } }",
            "vlan_mode = { hybrid = 3 }",
            "vlan_mode = { trunk = [10, 20] }",
        ] {
            assert!(
                toml::from_str::<PolicyConfig>(text).is_err(),
                "{text} accepted"
            );
        }
        assert!(serde_json::from_str::<PolicyConfig>(r#"{"max_fdb":1}"#).is_err());
        assert!(serde_json::from_str::<PolicyConfig>(r#"{"ingress":{"pps":1,"x":1}}"#).is_err());
        assert!(serde_json::from_str::<PolicyConfig>(r#"{"allowed_macs":["nope"]}"#).is_err());
    }

    /// The fenced block of language `lang` in this module's doc comment.
    fn doc_block(lang: &str) -> String {
        let src = include_str!("policy.rs");
        let fence = format!("//! ```{lang}");
        let mut lines = src.lines().skip_while(|l| l.trim_end() != fence).skip(1);
        let block: Vec<&str> = lines
            .by_ref()
            .take_while(|l| l.trim_end() != "//! ```")
            .map(|l| l.strip_prefix("//! ").or(l.strip_prefix("//!")).unwrap())
            .collect();
        assert!(!block.is_empty(), "no {lang} block in the module docs");
        block.join("\n")
    }

    #[test]
    fn test_doc_toml_example_parses() {
        #[derive(Deserialize)]
        struct Port {
            #[serde(default)]
            policy: PolicyConfig,
        }
        #[derive(Deserialize)]
        struct File {
            port: Vec<Port>,
        }
        let file: File = toml::from_str(&doc_block("toml")).unwrap();
        assert_eq!(file.port.len(), 2);
        let vm = &file.port[0].policy;
        vm.validate().unwrap();
        assert_eq!(vm.vlan_mode, Some(VlanMode::Access(10)));
        assert_eq!(vm.max_fdb_entries, Some(4));
        assert_eq!(
            vm.ingress.as_ref().and_then(|l| l.burst_packets),
            Some(1000)
        );
        assert_eq!(vm.egress.as_ref().and_then(|l| l.pps), None);
        assert_eq!(vm.rx_filter.as_ref().map(|f| f.macs.len()), Some(2));
        let router = &file.port[1].policy;
        router.validate().unwrap();
        assert_eq!(
            router.vlan_mode,
            Some(VlanMode::Trunk {
                vlans: vec![10, 20, 30],
                native_vlan: Some(10)
            })
        );
        let p = PortPolicy::new(vm, &VlanMode::Access(1), 0).unwrap();
        assert_eq!(p.check_source(mac("52:54:00:12:34:56")), Ok(()));
    }

    #[test]
    fn test_doc_json_example_parses() {
        let cfg: PolicyConfig = serde_json::from_str(&doc_block("json")).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.max_fdb_entries, Some(4));
        assert!(cfg.rx_filter.as_ref().is_some_and(|f| f.all_multi));
        assert_eq!(
            cfg.vlan_mode,
            Some(VlanMode::Trunk {
                vlans: vec![10, 20, 30],
                native_vlan: Some(10)
            })
        );
    }
}
