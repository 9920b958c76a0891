//! QEMU driver: command line, QMP client, and the [`crate::Vmm`] implementation.
