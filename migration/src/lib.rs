//! Orchestration of live migration with a VF, host-reserved failover and failover
//! drills, as state machines over traits (`VmmOps`, `VfOps`, `SwitchOps`) that the
//! `accelnet` binary implements with the concrete drivers.
//!
//! This crate depends on no other workspace crate. Its implementation arrives with
//! the migration issue; until then it exports nothing.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod probe;
pub mod report;
