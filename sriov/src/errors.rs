//! The error catalogue of Windows Server 2025 Accelerated Networking ("Known
//! issues"), as data, in its Linux form.
//!
//! Every [`ErrorId`] keeps the seed's id string exactly ([`ErrorId::as_str`]), so
//! scripts and documentation written for the Windows feature still match. The
//! message ([`ErrorId::message`]) keeps the seed's wording, with its one `{0}`
//! placeholder, except where the wording names a Windows-only thing (the OS
//! version, the BIOS, the licence); those say what Linux needs instead. The
//! seed's own text is quoted in each variant's documentation. What to do about an
//! error on a Linux host is [`ErrorId::linux_hint`].
//!
//! [`SeedError`] carries one error, filled in, to a caller: it is a
//! [`std::error::Error`], prints as `<id>: <message>`, and serializes (for
//! `--json` output) as `{"id": ..., "message": ..., "hint": ...}`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Oldest host kernel accelnet supports: the kernel of its reference platform,
/// Debian 12, which the lab and the test scripts run. Older kernels are untested.
pub const MIN_KERNEL: &str = "6.1";

/// The id of an error of the seed's "Known issues" catalogue.
///
/// Serializes as, and parses from, the exact id string ([`ErrorId::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorId {
    /// `Accel_net_not_supported`. Seed: "Node {0} does not support Accelerated
    /// Networking. Windows Server 2025 24H2 or later is required." `{0}`: node.
    AccelNetNotSupported,
    /// `Hyperthreading_check_failed`. Seed: "Hyperthreading validation: Failed.
    /// There is an inconsistency across the cluster. Either disable or enable
    /// hyperthreading on all nodes." No placeholder.
    HyperthreadingCheckFailed,
    /// `Intent_not_found`. Seed: "Intent validation: Failed. Intent {0} not
    /// found." `{0}`: intent name.
    IntentNotFound,
    /// `Intent_type_check_failed`. Seed: "The selected intent {0} does not have
    /// Compute capabilities." `{0}`: intent name.
    IntentTypeCheckFailed,
    /// `Sriov_support_Unknown`. Seed: "Adapter {0} cannot be enabled for
    /// Accelerated Networking because it is not advertising SR-IOV Support."
    /// `{0}`: adapter (network interface or PCI address).
    SriovSupportUnknown,
    /// `Sriov_support_MissingAcs`. Seed: "Adapter {0} cannot be enabled for
    /// Accelerated Networking because it is in a PCIe slot that does not support
    /// Access Control Services (ACS)." `{0}`: adapter.
    SriovSupportMissingAcs,
    /// `Sriov_support_MissingPfDriver`. Seed: "Adapter {0} cannot be enabled for
    /// Accelerated Networking because the device driver does not support
    /// SR-IOV." `{0}`: adapter.
    SriovSupportMissingPfDriver,
    /// `Sriov_support_NoBusResources`. Seed: "Adapter {0} cannot be enabled for
    /// Accelerated Networking because there are not enough PCI Express bus numbers
    /// available." `{0}`: adapter.
    SriovSupportNoBusResources,
    /// `Get_network_adapter_failed`. Seed: "Failed to get network adapters for VM
    /// {0}." `{0}`: VM.
    GetNetworkAdapterFailed,
    /// `ht_enabled_min_processor_counter`. Seed: "The minimum required processor
    /// count for requested performance with hyperthreading enabled/disabled is
    /// {0}." `{0}`: the minimum vCPU count (see [`crate::tiers`]).
    HtEnabledMinProcessorCounter,
    /// `cannot_provision_performance`. Seed: "Cannot provision {0} on this
    /// system." `{0}`: the performance setting.
    CannotProvisionPerformance,
    /// `enable_accel_net_failed`. Seed: "Failed to enable Accelerated Networking
    /// on the cluster {0}." `{0}`: cluster.
    EnableAccelNetFailed,
    /// `vm_not_enough_vcpus`. Seed: "VM {0} does not have enough vCPUs to enable
    /// Accelerated Networking with the specified performance." `{0}`: VM.
    VmNotEnoughVcpus,
    /// `cluster_not_enough_resources`. Seed: "The cluster does not have enough
    /// SRIOV resources to enable VM {0}." `{0}`: VM.
    ClusterNotEnoughResources,
}

/// A string that is not one of the catalogue's ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownErrorId(pub String);

impl fmt::Display for UnknownErrorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown error id {:?}", self.0)
    }
}

impl std::error::Error for UnknownErrorId {}

impl ErrorId {
    /// Every id, in the seed's order.
    pub const ALL: [ErrorId; 14] = [
        ErrorId::AccelNetNotSupported,
        ErrorId::HyperthreadingCheckFailed,
        ErrorId::IntentNotFound,
        ErrorId::IntentTypeCheckFailed,
        ErrorId::SriovSupportUnknown,
        ErrorId::SriovSupportMissingAcs,
        ErrorId::SriovSupportMissingPfDriver,
        ErrorId::SriovSupportNoBusResources,
        ErrorId::GetNetworkAdapterFailed,
        ErrorId::HtEnabledMinProcessorCounter,
        ErrorId::CannotProvisionPerformance,
        ErrorId::EnableAccelNetFailed,
        ErrorId::VmNotEnoughVcpus,
        ErrorId::ClusterNotEnoughResources,
    ];

    /// The seed's id string, exactly (mixed case as in the seed).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorId::AccelNetNotSupported => "Accel_net_not_supported",
            ErrorId::HyperthreadingCheckFailed => "Hyperthreading_check_failed",
            ErrorId::IntentNotFound => "Intent_not_found",
            ErrorId::IntentTypeCheckFailed => "Intent_type_check_failed",
            ErrorId::SriovSupportUnknown => "Sriov_support_Unknown",
            ErrorId::SriovSupportMissingAcs => "Sriov_support_MissingAcs",
            ErrorId::SriovSupportMissingPfDriver => "Sriov_support_MissingPfDriver",
            ErrorId::SriovSupportNoBusResources => "Sriov_support_NoBusResources",
            ErrorId::GetNetworkAdapterFailed => "Get_network_adapter_failed",
            ErrorId::HtEnabledMinProcessorCounter => "ht_enabled_min_processor_counter",
            ErrorId::CannotProvisionPerformance => "cannot_provision_performance",
            ErrorId::EnableAccelNetFailed => "enable_accel_net_failed",
            ErrorId::VmNotEnoughVcpus => "vm_not_enough_vcpus",
            ErrorId::ClusterNotEnoughResources => "cluster_not_enough_resources",
        }
    }

    /// The message template, with the seed's `{0}` placeholder where the seed has
    /// one ([`ErrorId::HyperthreadingCheckFailed`] has none).
    pub const fn template(self) -> &'static str {
        match self {
            ErrorId::AccelNetNotSupported => concat!(
                "Node {0} does not support Accelerated Networking. Linux 6.1 or later ",
                "with the IOMMU enabled and the vfio-pci driver is required."
            ),
            ErrorId::HyperthreadingCheckFailed => concat!(
                "Hyperthreading validation: Failed. There is an inconsistency across ",
                "the cluster. Either disable or enable hyperthreading (SMT) on all nodes."
            ),
            ErrorId::IntentNotFound => "Intent validation: Failed. Intent {0} not found.",
            ErrorId::IntentTypeCheckFailed => {
                "The selected intent {0} does not have Compute capabilities."
            }
            ErrorId::SriovSupportUnknown => concat!(
                "Adapter {0} cannot be enabled for Accelerated Networking because it ",
                "is not advertising SR-IOV support."
            ),
            ErrorId::SriovSupportMissingAcs => concat!(
                "Adapter {0} cannot be enabled for Accelerated Networking because it ",
                "is in a PCIe slot that does not support Access Control Services (ACS)."
            ),
            ErrorId::SriovSupportMissingPfDriver => concat!(
                "Adapter {0} cannot be enabled for Accelerated Networking because the ",
                "device driver does not support SR-IOV."
            ),
            ErrorId::SriovSupportNoBusResources => concat!(
                "Adapter {0} cannot be enabled for Accelerated Networking because ",
                "there are not enough PCI Express bus numbers available."
            ),
            ErrorId::GetNetworkAdapterFailed => "Failed to get network adapters for VM {0}.",
            ErrorId::HtEnabledMinProcessorCounter => concat!(
                "The minimum required processor count for requested performance with ",
                "hyperthreading enabled/disabled is {0}."
            ),
            ErrorId::CannotProvisionPerformance => "Cannot provision {0} on this system.",
            ErrorId::EnableAccelNetFailed => {
                "Failed to enable Accelerated Networking on the cluster {0}."
            }
            ErrorId::VmNotEnoughVcpus => concat!(
                "VM {0} does not have enough vCPUs to enable Accelerated Networking ",
                "with the specified performance."
            ),
            ErrorId::ClusterNotEnoughResources => {
                "The cluster does not have enough SR-IOV resources to enable VM {0}."
            }
        }
    }

    /// Whether the message has a `{0}` to fill.
    pub fn has_placeholder(self) -> bool {
        self.template().contains("{0}")
    }

    /// The message with `{0}` replaced by `arg` (ignored by an id without a
    /// placeholder).
    pub fn message(self, arg: impl fmt::Display) -> String {
        let template = self.template();
        if self.has_placeholder() {
            template.replacen("{0}", &arg.to_string(), 1)
        } else {
            template.to_owned()
        }
    }

    /// What to do about the error on a Linux host (the seed's "To resolve this
    /// issue", rewritten for Linux/KVM).
    pub const fn linux_hint(self) -> &'static str {
        match self {
            ErrorId::AccelNetNotSupported => concat!(
                "Run Linux 6.1 or later; enable VT-d/AMD-Vi and SR-IOV in the firmware; ",
                "boot with intel_iommu=on (Intel) or amd_iommu=on (AMD), plus iommu=pt; ",
                "check that /sys/kernel/iommu_groups is not empty; load vfio-pci ",
                "(modprobe vfio-pci)."
            ),
            ErrorId::HyperthreadingCheckFailed => concat!(
                "Make SMT the same on every node: compare /sys/devices/system/cpu/smt/active, ",
                "then set /sys/devices/system/cpu/smt/control to on or off (or boot with ",
                "nosmt) so that all nodes agree."
            ),
            ErrorId::IntentNotFound => concat!(
                "Check the intent name in the accelnet configuration (accelnet uses the ",
                "intent to pick the uplink and its PF), then try again."
            ),
            ErrorId::IntentTypeCheckFailed => concat!(
                "Create or update an intent that carries VM (compute) traffic; storage- ",
                "or management-only intents cannot host VFs."
            ),
            ErrorId::SriovSupportUnknown => concat!(
                "The PCI device has no sriov_totalvfs in sysfs (or it reads 0): check that ",
                "the NIC supports SR-IOV, enable SR-IOV and VT-d/AMD-Vi in the firmware ",
                "(and in the NIC's own firmware settings, e.g. mstconfig SRIOV_EN=1), and ",
                "boot with intel_iommu=on or amd_iommu=on."
            ),
            ErrorId::SriovSupportMissingAcs => concat!(
                "The VFs would share an IOMMU group with other devices (see ",
                "/sys/bus/pci/devices/<pf>/iommu_group): move the NIC to a slot behind a ",
                "root port with ACS, or update the platform firmware; do not use the ",
                "out-of-tree pcie_acs_override patch in production."
            ),
            ErrorId::SriovSupportMissingPfDriver => concat!(
                "The PF's driver cannot create VFs (no sriov_numvfs, or writing it fails): ",
                "bind the vendor driver that supports SR-IOV (ixgbe, i40e, ice, mlx5_core, ",
                "bnxt_en, ...) or update it and the NIC firmware; load vfio-pci for the VFs."
            ),
            ErrorId::SriovSupportNoBusResources => concat!(
                "No general fix. Enable SR-IOV support in the firmware so it reserves bus ",
                "numbers, or try booting with pci=realloc or pci=assign-busses; fewer VFs ",
                "(sriov_numvfs) may fit."
            ),
            ErrorId::GetNetworkAdapterFailed => concat!(
                "Give the VM at least one accelnet network adapter (a virtio-net ",
                "vhost-user port of the switch) and try again."
            ),
            ErrorId::HtEnabledMinProcessorCounter => concat!(
                "Add vCPUs to the VM (QEMU -smp, cloud-hypervisor --cpus) to meet the ",
                "minimum, or choose a lower performance setting."
            ),
            ErrorId::CannotProvisionPerformance => concat!(
                "The VFs have fewer queue pairs than the setting needs: choose a lower ",
                "performance setting, or use a NIC (or firmware/driver) whose VFs have ",
                "more queues (ethtool -l on a VF shows them)."
            ),
            ErrorId::EnableAccelNetFailed => concat!(
                "Check the accelnet logs on each node: typically writing sriov_numvfs ",
                "failed, or vfio-pci could not be bound to the VFs."
            ),
            ErrorId::VmNotEnoughVcpus => concat!(
                "No known way on this node: it has fewer logical CPUs than the setting ",
                "needs. Choose a lower performance setting or run the VM on a larger node."
            ),
            ErrorId::ClusterNotEnoughResources => concat!(
                "Lower the node reserve percentage, choose a lower performance setting, ",
                "or create more VFs (sriov_numvfs) or add SR-IOV NICs."
            ),
        }
    }
}

impl fmt::Display for ErrorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorId {
    type Err = UnknownErrorId;

    /// Parses the exact id string (case-sensitive, as the ids differ only in case
    /// conventions the seed chose).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorId::ALL
            .into_iter()
            .find(|id| id.as_str() == s)
            .ok_or_else(|| UnknownErrorId(s.to_owned()))
    }
}

impl Serialize for ErrorId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One error of the catalogue, filled in.
///
/// Prints as `<id>: <message>`; serializes as `{"id", "message", "hint"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeedError {
    /// Which error.
    pub id: ErrorId,
    /// The message, its placeholder filled.
    pub message: String,
    /// What to do on Linux ([`ErrorId::linux_hint`]).
    pub hint: &'static str,
}

impl SeedError {
    /// The error `id` with its `{0}` filled by `arg`.
    pub fn new(id: ErrorId, arg: impl fmt::Display) -> Self {
        SeedError {
            id,
            message: id.message(arg),
            hint: id.linux_hint(),
        }
    }

    /// [`ErrorId::HtEnabledMinProcessorCounter`] for a host whose hyperthreading
    /// state is known: the seed's "enabled/disabled" becomes the one that applies.
    pub fn min_processor_count(minimum: u32, hyperthreading: bool) -> Self {
        let id = ErrorId::HtEnabledMinProcessorCounter;
        let state = if hyperthreading {
            "enabled"
        } else {
            "disabled"
        };
        SeedError {
            id,
            message: id.message(minimum).replacen("enabled/disabled", state, 1),
            hint: id.linux_hint(),
        }
    }
}

impl fmt::Display for SeedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.id, self.message)
    }
}

impl std::error::Error for SeedError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed's ids, as the seed spells them.
    const SEED_IDS: [&str; 14] = [
        "Accel_net_not_supported",
        "Hyperthreading_check_failed",
        "Intent_not_found",
        "Intent_type_check_failed",
        "Sriov_support_Unknown",
        "Sriov_support_MissingAcs",
        "Sriov_support_MissingPfDriver",
        "Sriov_support_NoBusResources",
        "Get_network_adapter_failed",
        "ht_enabled_min_processor_counter",
        "cannot_provision_performance",
        "enable_accel_net_failed",
        "vm_not_enough_vcpus",
        "cluster_not_enough_resources",
    ];

    #[test]
    fn test_every_id_round_trips_through_its_string() {
        for (id, seed) in ErrorId::ALL.into_iter().zip(SEED_IDS) {
            assert_eq!(id.as_str(), seed);
            assert_eq!(id.to_string(), seed);
            assert_eq!(seed.parse::<ErrorId>(), Ok(id));
        }
    }

    #[test]
    fn test_ids_are_distinct() {
        let mut all = ErrorId::ALL.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), ErrorId::ALL.len());
    }

    #[test]
    fn test_unknown_and_miscased_ids_are_rejected() {
        for bad in [
            "",
            "accel_net_not_supported",
            "VM_NOT_ENOUGH_VCPUS",
            "Sriov_support_",
        ] {
            assert_eq!(bad.parse::<ErrorId>(), Err(UnknownErrorId(bad.to_owned())));
        }
    }

    #[test]
    fn test_every_message_has_its_placeholder_filled() {
        let expected = [
            "Node node-7 does not support Accelerated Networking. Linux 6.1 or later \
             with the IOMMU enabled and the vfio-pci driver is required.",
            "Hyperthreading validation: Failed. There is an inconsistency across the \
             cluster. Either disable or enable hyperthreading (SMT) on all nodes.",
            "Intent validation: Failed. Intent node-7 not found.",
            "The selected intent node-7 does not have Compute capabilities.",
            "Adapter node-7 cannot be enabled for Accelerated Networking because it is \
             not advertising SR-IOV support.",
            "Adapter node-7 cannot be enabled for Accelerated Networking because it is in \
             a PCIe slot that does not support Access Control Services (ACS).",
            "Adapter node-7 cannot be enabled for Accelerated Networking because the \
             device driver does not support SR-IOV.",
            "Adapter node-7 cannot be enabled for Accelerated Networking because there \
             are not enough PCI Express bus numbers available.",
            "Failed to get network adapters for VM node-7.",
            "The minimum required processor count for requested performance with \
             hyperthreading enabled/disabled is node-7.",
            "Cannot provision node-7 on this system.",
            "Failed to enable Accelerated Networking on the cluster node-7.",
            "VM node-7 does not have enough vCPUs to enable Accelerated Networking with \
             the specified performance.",
            "The cluster does not have enough SR-IOV resources to enable VM node-7.",
        ];
        for (id, want) in ErrorId::ALL.into_iter().zip(expected) {
            let got = id.message("node-7");
            assert_eq!(got, want, "{id}");
            assert!(!got.contains("{0}"), "{id}");
            assert_eq!(
                id.has_placeholder(),
                id != ErrorId::HyperthreadingCheckFailed
            );
            assert!(!id.linux_hint().is_empty(), "{id}");
        }
    }

    #[test]
    fn test_messages_name_no_windows_only_requirement() {
        for id in ErrorId::ALL {
            let text = format!("{} {}", id.template(), id.linux_hint());
            for windows in ["Windows", "PowerShell", "PayGo", "24H2"] {
                assert!(!text.contains(windows), "{id}: {windows}");
            }
        }
    }

    #[test]
    fn test_min_kernel_matches_the_texts() {
        let needle = format!("Linux {MIN_KERNEL} or later");
        assert!(ErrorId::AccelNetNotSupported.template().contains(&needle));
        assert!(ErrorId::AccelNetNotSupported.linux_hint().contains(&needle));
    }

    #[test]
    fn test_seed_error_displays_id_and_message() {
        let e = SeedError::new(ErrorId::VmNotEnoughVcpus, "vm1");
        assert_eq!(
            e.to_string(),
            "vm_not_enough_vcpus: VM vm1 does not have enough vCPUs to enable \
             Accelerated Networking with the specified performance."
        );
        assert_eq!(e.hint, ErrorId::VmNotEnoughVcpus.linux_hint());
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.source().is_none());
    }

    #[test]
    fn test_min_processor_count_names_the_hyperthreading_state() {
        assert_eq!(
            SeedError::min_processor_count(4, true).message,
            "The minimum required processor count for requested performance with \
             hyperthreading enabled is 4."
        );
        assert_eq!(
            SeedError::min_processor_count(2, false).to_string(),
            "ht_enabled_min_processor_counter: The minimum required processor count \
             for requested performance with hyperthreading disabled is 2."
        );
    }

    #[test]
    fn test_seed_error_serializes_for_json_output() {
        let e = SeedError::new(ErrorId::SriovSupportMissingAcs, "0000:3b:00.0");
        let v = serde_json::to_value(&e).expect("serializes");
        assert_eq!(v["id"], "Sriov_support_MissingAcs");
        assert_eq!(v["message"], e.message.as_str());
        assert_eq!(v["hint"], e.hint);
        assert_eq!(v.as_object().map(|o| o.len()), Some(3));
    }

    #[test]
    fn test_error_id_serde_round_trip() {
        for id in ErrorId::ALL {
            let json = serde_json::to_string(&id).expect("serializes");
            assert_eq!(json, format!("\"{}\"", id.as_str()));
            let back: ErrorId = serde_json::from_str(&json).expect("deserializes");
            assert_eq!(back, id);
        }
        assert!(serde_json::from_str::<ErrorId>("\"nope\"").is_err());
    }
}
