//! SR-IOV host model: physical and virtual function discovery and configuration
//! through sysfs and rtnetlink, prerequisite checks, and the VF pool.
//!
//! This crate is a leaf: it knows nothing of VMs or the switch. Its implementation
//! arrives with the SR-IOV issue; until then it exports nothing.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
