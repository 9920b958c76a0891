//! VMM drivers: QEMU (command line and QMP) and cloud-hypervisor (command line and
//! REST API), behind one `Vmm` trait, launching VMs with the VF + virtio-net pair.
//!
//! This crate is a leaf: it knows nothing of SR-IOV or the switch internals. Its
//! implementation arrives with the VMM issue; until then it exports nothing.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
