//! SR-IOV host model: physical and virtual function discovery and configuration
//! through sysfs and rtnetlink, prerequisite checks, and the VF pool.
//!
//! This crate is a leaf: it knows nothing of VMs or the switch.
//!
//! Discovery: [`sysfs::discover`] reads the PFs and VFs under a [`sysfs::SysfsRoot`]
//! into a [`host::Host`]. Per-VF settings (MAC, VLAN, spoof check, trust, link state)
//! come from a [`host::VfInfoSource`]; the rtnetlink source is not written yet, so
//! they are unknown (`None`) for now. Feature `test-utils` adds `test_utils::FakeSysfs`,
//! a fake sysfs tree for tests.
//!
//! [`errors`] is the seed's error catalogue (ids, messages, Linux hints);
//! [`tiers`] the performance tiers, their vCPU minimums and queue pairs.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod configure;
pub mod errors;
pub mod host;
pub mod mac;
pub mod netlink;
pub mod pciconfig;
pub mod pool;
pub mod prereq;
pub mod sysfs;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod tiers;

pub use host::{Host, PhysFunction, VfInfo, VfInfoSource, VfLinkState, VirtFunction};
pub use sysfs::{discover, SysfsRoot};
