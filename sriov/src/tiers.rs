//! Performance tiers (the seed's `-Performance Low|Medium|High`), their minimum
//! vCPU counts, and the queue pairs a VM gets on both of its paths.
//!
//! # Minimum vCPUs (the seed's table)
//!
//! | Hyperthreading | Low | Medium | High |
//! |----------------|-----|--------|------|
//! | disabled       | 2   | 2      | 4    |
//! | enabled        | 4   | 4      | 4    |
//!
//! # Queue pairs
//!
//! A VM uses the same number of queue pairs on the VF (fast path) and on the
//! virtio-net port (synthetic path), so that failover changes nothing the guest
//! sees about its queues. [`queue_pairs`] picks it:
//!
//! * Low: 1.
//! * Medium: half the vCPUs, at least 2, at most 4.
//! * High: one per vCPU, at least 4, at most 8 ([`MAX_QUEUE_PAIRS`], the
//!   switch's limit).
//!
//! then caps it at the VF's hardware queue count when that is known. The vCPU
//! minimums guarantee the count never exceeds the vCPUs.
//!
//! # Errors, and which applies when
//!
//! The seed has two vCPU errors. `ht_enabled_min_processor_counter` takes the
//! minimum count as `{0}`, says "with hyperthreading enabled/disabled", and is
//! resolved by adding vCPUs: it is the error for a VM below the table's minimum,
//! whatever the hyperthreading state ([`queue_pairs`]; the message names the
//! state). `vm_not_enough_vcpus` takes the VM's name and has "no known way to
//! resolve": adding vCPUs cannot help, so it is the error for a node with fewer
//! logical CPUs than the minimum, where no VM could be given enough
//! ([`check_node_cpus`]).
//!
//! `cannot_provision_performance` ("Cannot provision High performance on this
//! system.") is returned when the hardware's VF queue count is below the tier's
//! minimum queue pairs (1, 2, 4). The vCPU check comes first: it is about the VM,
//! which the user can change.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::errors::{ErrorId, SeedError};

/// Most queue pairs a VM gets: the synthetic path's limit (the switch serves up
/// to 8 queue pairs per port).
pub const MAX_QUEUE_PAIRS: u16 = 8;

/// A VM's performance setting.
///
/// Displays as the seed spells it ("Low"); serializes in lower case ("low");
/// parses and deserializes case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// One queue pair.
    Low,
    /// Two to four queue pairs.
    Medium,
    /// Four to eight queue pairs.
    High,
}

/// A string that is not `low`, `medium` or `high`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownTier(pub String);

impl fmt::Display for UnknownTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown performance setting {:?} (expected low, medium or high)",
            self.0
        )
    }
}

impl std::error::Error for UnknownTier {}

impl Tier {
    /// Every tier, lowest first.
    pub const ALL: [Tier; 3] = [Tier::Low, Tier::Medium, Tier::High];

    /// The seed's spelling: "Low", "Medium", "High".
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Low => "Low",
            Tier::Medium => "Medium",
            Tier::High => "High",
        }
    }

    /// Fewest vCPUs a VM needs for this tier (the seed's table).
    pub const fn min_vcpus(self, hyperthreading: bool) -> u32 {
        match (hyperthreading, self) {
            (false, Tier::Low | Tier::Medium) => 2,
            (false, Tier::High) => 4,
            (true, _) => 4,
        }
    }

    /// Fewest queue pairs the tier is given; hardware with fewer cannot provision
    /// it.
    pub const fn min_queue_pairs(self) -> u16 {
        match self {
            Tier::Low => 1,
            Tier::Medium => 2,
            Tier::High => 4,
        }
    }

    /// Most queue pairs the tier is given.
    pub const fn max_queue_pairs(self) -> u16 {
        match self {
            Tier::Low => 1,
            Tier::Medium => 4,
            Tier::High => MAX_QUEUE_PAIRS,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownTier(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for Tier {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Fewest vCPUs a VM needs for `tier` on a host with or without hyperthreading
/// (the seed's table); same as [`Tier::min_vcpus`].
pub const fn min_vcpus(tier: Tier, host_ht: bool) -> u32 {
    tier.min_vcpus(host_ht)
}

/// The queue pairs a VM with `vm_vcpus` vCPUs gets for `tier`, on both paths.
///
/// `max_queue_pairs_hw` is the VF's queue-pair count when known (`None`: not
/// known, only the tier's rule applies). See the [module documentation](self)
/// for the rule.
///
/// # Errors
///
/// * `ht_enabled_min_processor_counter`, `{0}` the minimum: `vm_vcpus` below
///   [`Tier::min_vcpus`] for `host_ht`.
/// * `cannot_provision_performance`, `{0}` `"<Tier> performance"`: the hardware
///   has fewer queue pairs than [`Tier::min_queue_pairs`].
pub fn queue_pairs(
    tier: Tier,
    vm_vcpus: u32,
    host_ht: bool,
    max_queue_pairs_hw: Option<u16>,
) -> Result<u16, SeedError> {
    let minimum = tier.min_vcpus(host_ht);
    if vm_vcpus < minimum {
        return Err(SeedError::min_processor_count(minimum, host_ht));
    }
    // Saturate: more than u16::MAX vCPUs only ever reaches the cap below.
    let vcpus = u16::try_from(vm_vcpus).unwrap_or(u16::MAX);
    let wanted = match tier {
        Tier::Low => 1,
        Tier::Medium => vcpus / 2,
        Tier::High => vcpus,
    }
    .clamp(tier.min_queue_pairs(), tier.max_queue_pairs());
    match max_queue_pairs_hw {
        Some(hw) if hw < tier.min_queue_pairs() => Err(SeedError::new(
            ErrorId::CannotProvisionPerformance,
            format_args!("{tier} performance"),
        )),
        Some(hw) => Ok(wanted.min(hw)),
        None => Ok(wanted),
    }
}

/// Checks that a node with `node_cpus` logical CPUs can run VM `vm` at `tier` at
/// all.
///
/// # Errors
///
/// `vm_not_enough_vcpus`, `{0}` the VM: the node has fewer logical CPUs than
/// [`Tier::min_vcpus`], so no number of vCPUs given to the VM would be enough
/// without overcommitting them (the seed: "no known way to resolve").
pub fn check_node_cpus(
    tier: Tier,
    vm: &str,
    node_cpus: u32,
    host_ht: bool,
) -> Result<(), SeedError> {
    if node_cpus < tier.min_vcpus(host_ht) {
        Err(SeedError::new(ErrorId::VmNotEnoughVcpus, vm))
    } else {
        Ok(())
    }
}

/// The admission weight of one VF at `tier`: Low 1, Medium 2, High 4.
///
/// It is the tier's guaranteed queue pairs ([`Tier::min_queue_pairs`]): a VF
/// costs the PF in queues and interrupt vectors roughly in proportion to its
/// queue pairs, so admission counts a node's SR-IOV capacity in Low-VF units and
/// refuses a VM (`cluster_not_enough_resources`) when the sum of weights would
/// pass it.
pub const fn vf_weight(tier: Tier) -> u32 {
    tier.min_queue_pairs() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's table, verbatim: (hyperthreading, tier, minimum vCPUs).
    const SEED_TABLE: [(bool, Tier, u32); 6] = [
        (false, Tier::Low, 2),
        (false, Tier::Medium, 2),
        (false, Tier::High, 4),
        (true, Tier::Low, 4),
        (true, Tier::Medium, 4),
        (true, Tier::High, 4),
    ];

    /// The rule of the module documentation, written out independently.
    fn expected(tier: Tier, vcpus: u32, hw: Option<u16>) -> u16 {
        let v = vcpus as u16;
        let rule = match tier {
            Tier::Low => 1,
            Tier::Medium => (v / 2).clamp(2, 4),
            Tier::High => v.clamp(4, 8),
        };
        hw.map_or(rule, |hw| rule.min(hw))
    }

    #[test]
    fn test_min_vcpus_is_the_seed_table() {
        for (ht, tier, min) in SEED_TABLE {
            assert_eq!(tier.min_vcpus(ht), min, "{tier} ht={ht}");
            assert_eq!(min_vcpus(tier, ht), min);
        }
    }

    #[test]
    fn test_queue_pairs_over_the_whole_table() {
        let caps = [
            None,
            Some(0),
            Some(1),
            Some(2),
            Some(3),
            Some(4),
            Some(8),
            Some(16),
        ];
        for tier in Tier::ALL {
            for ht in [false, true] {
                for vcpus in 1..=8 {
                    for hw in caps {
                        let got = queue_pairs(tier, vcpus, ht, hw);
                        let min = tier.min_vcpus(ht);
                        let what = format!("{tier} ht={ht} vcpus={vcpus} hw={hw:?}");
                        if vcpus < min {
                            let e = got.expect_err(&what);
                            assert_eq!(e.id, ErrorId::HtEnabledMinProcessorCounter, "{what}");
                            let state = if ht { "enabled" } else { "disabled" };
                            assert!(
                                e.message.ends_with(&format!("{state} is {min}.")),
                                "{what}: {}",
                                e.message
                            );
                        } else if hw.is_some_and(|hw| hw < tier.min_queue_pairs()) {
                            let e = got.expect_err(&what);
                            assert_eq!(e.id, ErrorId::CannotProvisionPerformance, "{what}");
                            assert_eq!(
                                e.message,
                                format!("Cannot provision {tier} performance on this system."),
                            );
                        } else {
                            let qp = got.expect(&what);
                            assert_eq!(qp, expected(tier, vcpus, hw), "{what}");
                            assert!(qp >= tier.min_queue_pairs(), "{what}");
                            assert!(qp <= tier.max_queue_pairs(), "{what}");
                            assert!(u32::from(qp) <= vcpus, "{what}");
                            assert!(hw.is_none_or(|hw| qp <= hw), "{what}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn test_queue_pairs_spot_values() {
        assert_eq!(queue_pairs(Tier::Low, 2, false, None), Ok(1));
        assert_eq!(queue_pairs(Tier::Medium, 2, false, None), Ok(2));
        assert_eq!(queue_pairs(Tier::Medium, 6, false, None), Ok(3));
        assert_eq!(queue_pairs(Tier::Medium, 64, true, None), Ok(4));
        assert_eq!(queue_pairs(Tier::High, 4, true, None), Ok(4));
        assert_eq!(queue_pairs(Tier::High, 6, false, Some(16)), Ok(6));
        assert_eq!(queue_pairs(Tier::High, 64, false, None), Ok(8));
        assert_eq!(queue_pairs(Tier::High, u32::MAX, false, None), Ok(8));
        assert_eq!(queue_pairs(Tier::High, 8, false, Some(5)), Ok(5));
    }

    #[test]
    fn test_vcpu_check_comes_before_the_hardware_check() {
        let e = queue_pairs(Tier::High, 2, false, Some(1)).expect_err("both fail");
        assert_eq!(e.id, ErrorId::HtEnabledMinProcessorCounter);
    }

    #[test]
    fn test_check_node_cpus() {
        for (ht, tier, min) in SEED_TABLE {
            assert_eq!(check_node_cpus(tier, "vm1", min, ht), Ok(()));
            assert_eq!(check_node_cpus(tier, "vm1", min + 1, ht), Ok(()));
            let e = check_node_cpus(tier, "vm1", min - 1, ht).expect_err("too few");
            assert_eq!(e.id, ErrorId::VmNotEnoughVcpus);
            assert!(e.message.starts_with("VM vm1 does not have enough vCPUs"));
        }
    }

    #[test]
    fn test_vf_weights() {
        assert_eq!(Tier::ALL.map(vf_weight), [1, 2, 4]);
        for tier in Tier::ALL {
            assert_eq!(vf_weight(tier), u32::from(tier.min_queue_pairs()));
        }
    }

    #[test]
    fn test_tier_parses_case_insensitively_and_displays() {
        for (s, tier) in [
            ("low", Tier::Low),
            ("LOW", Tier::Low),
            ("Medium", Tier::Medium),
            ("mEdIuM", Tier::Medium),
            ("high", Tier::High),
            ("High", Tier::High),
        ] {
            assert_eq!(s.parse::<Tier>(), Ok(tier));
        }
        for bad in ["", "hi", "ultra", " low", "low "] {
            assert_eq!(bad.parse::<Tier>(), Err(UnknownTier(bad.to_owned())));
        }
        assert_eq!(Tier::ALL.map(|t| t.to_string()), ["Low", "Medium", "High"]);
        for tier in Tier::ALL {
            assert_eq!(tier.to_string().parse::<Tier>(), Ok(tier));
        }
    }

    #[test]
    fn test_tier_serde() {
        assert_eq!(
            serde_json::to_string(&Tier::ALL).expect("serializes"),
            r#"["low","medium","high"]"#
        );
        let back: Vec<Tier> =
            serde_json::from_str(r#"["low","Medium","HIGH"]"#).expect("deserializes");
        assert_eq!(back, Tier::ALL);
        assert!(serde_json::from_str::<Tier>(r#""ultra""#).is_err());
    }
}
