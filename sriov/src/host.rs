//! The discovered SR-IOV host: physical functions, their virtual functions, and the
//! per-VF settings that only rtnetlink knows ([`VfInfo`], via [`VfInfoSource`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sysfs::SriovError;

/// Every SR-IOV physical function found on the host, sorted by PCI address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// The physical functions (PCI devices with an `sriov_totalvfs` attribute).
    pub pfs: Vec<PhysFunction>,
}

impl Host {
    /// The physical function at this PCI address, if any.
    pub fn pf(&self, address: &str) -> Option<&PhysFunction> {
        self.pfs.iter().find(|pf| pf.address == address)
    }

    /// Every virtual function of every PF, with its PF.
    pub fn vfs(&self) -> impl Iterator<Item = (&PhysFunction, &VirtFunction)> {
        self.pfs
            .iter()
            .flat_map(|pf| pf.vfs.iter().map(move |vf| (pf, vf)))
    }
}

/// An SR-IOV capable PCI device (a physical function).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhysFunction {
    /// PCI address in `DDDD:BB:DD.F` form, e.g. `0000:3b:00.0`.
    pub address: String,
    /// PCI vendor id (`vendor`).
    pub vendor_id: u16,
    /// PCI device id (`device`).
    pub device_id: u16,
    /// Name of the bound driver (the `driver` link), `None` when unbound.
    pub driver: Option<String>,
    /// Network interfaces of the PF (`net/*`), sorted; empty when it has none.
    pub netdevs: Vec<String>,
    /// `sriov_totalvfs`: how many VFs the device can expose.
    pub total_vfs: u32,
    /// `sriov_numvfs`: how many VFs are enabled now.
    pub num_vfs: u32,
    /// `sriov_drivers_autoprobe`: whether new VFs get bound to a driver
    /// automatically; `None` when the kernel does not expose it.
    pub drivers_autoprobe: Option<bool>,
    /// NUMA node (`numa_node`); `None` when absent or `-1`.
    pub numa_node: Option<u32>,
    /// IOMMU group number (the `iommu_group` link); `None` without an IOMMU.
    pub iommu_group: Option<u32>,
    /// Whether `sriov_numvfs` has any write permission bit set.
    ///
    /// Caution: current kernels create `sriov_numvfs` with mode 0644 for every PF and
    /// make a write fail with `ENOENT` when the driver lacks `sriov_configure`, so a
    /// `true` here does not prove the driver can create VFs; the prerequisite checks
    /// must also look at the driver. `FakeSysfs` (feature `test-utils`) models "driver without `sriov_configure`" as a 0444 `sriov_numvfs`, which is
    /// what makes this `false`.
    pub numvfs_writable: bool,
    /// The enabled virtual functions (`virtfnN` links), sorted by VF index.
    pub vfs: Vec<VirtFunction>,
}

/// A virtual function of a [`PhysFunction`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtFunction {
    /// PCI address of the VF.
    pub address: String,
    /// VF index on its PF (the `N` of `virtfnN`; the index rtnetlink uses).
    pub index: u32,
    /// PCI vendor id.
    pub vendor_id: u16,
    /// PCI device id.
    pub device_id: u16,
    /// Network interface of the VF; `None` when it has none (e.g. bound to `vfio-pci`).
    pub netdev: Option<String>,
    /// Name of the bound driver, `None` when unbound.
    pub driver: Option<String>,
    /// `driver_override`; `None` when absent, empty or `(null)`.
    pub driver_override: Option<String>,
    /// IOMMU group number; `None` without an IOMMU.
    pub iommu_group: Option<u32>,
    /// NUMA node; `None` when absent or `-1`.
    pub numa_node: Option<u32>,
    /// Whether the VF has an RDMA device (a non-empty `infiniband/` directory).
    pub rdma: bool,
    /// How many queue pairs the VF's hardware offers, when known: the VF netdev's
    /// `queues/rx-*`/`tx-*` (fewer of the two) while a host driver holds it,
    /// otherwise its MSI-X table size less the one vector VF drivers keep for the
    /// PF mailbox (an upper bound: one vector per queue pair). `None` when
    /// neither can be read (e.g. config space read without root).
    #[serde(default)]
    pub queue_pairs: Option<u16>,
    /// Settings the PF driver holds for this VF; every field `None` when unknown.
    pub info: VfInfo,
}

/// Per-VF settings kept by the PF driver. On Linux they are read from the PF's
/// rtnetlink link message (`IFLA_VFINFO_LIST`, see [`crate::netlink::Netlink`]);
/// sysfs has no portable equivalent.
/// Every field is `None` when no [`VfInfoSource`] provided it, or when the driver
/// does not report it (e.g. spoof check or trust on drivers without them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfInfo {
    /// Administrative MAC address, lowercase and colon-separated
    /// (`00:00:00:00:00:00` = none set; see [`crate::mac::MacAddr`]).
    pub mac: Option<String>,
    /// VLAN id the PF tags the VF's traffic with (0 = none).
    pub vlan: Option<u16>,
    /// 802.1p priority of that VLAN tag (`qos` of `IFLA_VF_VLAN`, 0-7).
    pub qos: Option<u32>,
    /// Whether MAC spoof checking is on.
    pub spoof_check: Option<bool>,
    /// Whether the VF is trusted.
    pub trust: Option<bool>,
    /// Maximum transmit rate in Mbit/s (`IFLA_VF_RATE`; 0 = unlimited).
    pub max_tx_rate: Option<u32>,
    /// Guaranteed minimum transmit rate in Mbit/s (`IFLA_VF_RATE`; 0 = none).
    pub min_tx_rate: Option<u32>,
    /// Administrative link state.
    pub link_state: Option<VfLinkState>,
}

/// Administrative link state of a VF (`IFLA_VF_LINK_STATE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VfLinkState {
    /// Follows the PF's link.
    Auto,
    /// Forced up.
    Enable,
    /// Forced down.
    Disable,
}

/// Where per-VF settings ([`VfInfo`]) come from.
///
/// Discovery calls [`vf_infos`](VfInfoSource::vf_infos) once per PF. The real source is
/// rtnetlink, [`crate::netlink::Netlink`] (an `RTM_GETLINK` on the PF's first netdev
/// with `IFLA_EXT_MASK = RTEXT_FILTER_VF`, decoding `IFLA_VFINFO_LIST`); a PF without
/// a netdev gets an empty map. [`NoVfInfo`] leaves every field unknown (sysfs only).
pub trait VfInfoSource {
    /// Settings of the VFs of the PF at `pf_address` whose netdevs are `pf_netdevs`
    /// (possibly empty), keyed by VF index. VFs missing from the map stay unknown.
    fn vf_infos(
        &self,
        pf_address: &str,
        pf_netdevs: &[String],
    ) -> Result<BTreeMap<u32, VfInfo>, SriovError>;
}

/// A [`VfInfoSource`] that knows nothing: sysfs does not expose per-VF MAC, VLAN,
/// spoof check, trust or link state in a driver-independent way, so discovery from
/// sysfs alone leaves them `None`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoVfInfo;

impl VfInfoSource for NoVfInfo {
    fn vf_infos(
        &self,
        _pf_address: &str,
        _pf_netdevs: &[String],
    ) -> Result<BTreeMap<u32, VfInfo>, SriovError> {
        Ok(BTreeMap::new())
    }
}
