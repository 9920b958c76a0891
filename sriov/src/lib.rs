//! SR-IOV host model: physical and virtual function discovery and configuration
//! through sysfs and rtnetlink, prerequisite checks, and the VF pool.
//!
//! This crate is a leaf: it knows nothing of VMs or the switch.
//!
//! * Discovery: [`sysfs::discover`] reads the PFs and VFs under a [`sysfs::SysfsRoot`]
//!   into a [`host::Host`]; [`sysfs::discover_with`] adds per-VF settings (MAC, VLAN,
//!   spoof check, trust, rates, link state) from a [`host::VfInfoSource`], normally
//!   [`netlink::Netlink`].
//! * Configuration: [`configure`] sets the VF count and binds VFs to vfio-pci and back
//!   through sysfs; [`netlink::Netlink::apply_vf`] sets VF settings through rtnetlink.
//!   Both read the result back and roll back a change that failed half-way.
//! * [`prereq`]: the node's prerequisite checks, each failure with its seed error id;
//!   [`pciconfig`] parses the PCI config space they need (SR-IOV, ACS capabilities).
//! * [`pool`]: the VF pool, durable ownership with locking and crash repair.
//! * [`errors`]: the seed's error catalogue (ids, messages, Linux hints); [`tiers`]: the
//!   performance tiers, their vCPU minimums and queue pairs; [`mac`]: MAC addresses.
//!
//! Feature `test-utils` adds `test_utils::FakeSysfs`, a fake sysfs (and procfs) tree
//! for tests.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod configure;
mod errno;
pub mod errors;
pub mod host;
pub mod mac;
pub mod netlink;
pub mod pciconfig;
pub mod pool;
pub mod prereq;
pub mod steer;
pub mod sysfs;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod tiers;

pub use host::{Host, PhysFunction, VfInfo, VfInfoSource, VfLinkState, VirtFunction};
pub use sysfs::{discover, SysfsRoot};
