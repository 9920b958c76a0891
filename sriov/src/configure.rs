//! Configuration through sysfs: VF count and driver binding, each verified by read-back.
