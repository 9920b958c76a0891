//! cloud-hypervisor driver: command line, REST API client over its unix socket, and the
//! [`crate::Vmm`] implementation.
