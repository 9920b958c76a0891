//! The constant-rate, sequence-numbered ICMP echo probe, now part of the product
//! (`migration::probe`, used by `accelnet drill`): re-exported here so the tests keep
//! using `integration_tests::{Probe, ProbeReport, ...}`. Its `info` log lines (start, marks,
//! summary) reach `lab.log` through the harness logger once a [`crate::Lab`] exists.

pub use migration::probe::*;
