//! Orchestration of live migration with a VF, host-reserved failover and failover
//! drills, as state machines over traits (`VmmOps`, `VfOps`, `SwitchOps`) that the
//! `accelnet` binary implements with the concrete drivers.
//!
//! This crate depends on no other workspace crate.
//!
//! * [`live`]: live migration of a VM with a direct path, its steps and rollback.
//! * [`failover`]: the host-reserved failover state machine of one VM.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod failover;
pub mod live;
pub mod probe;
pub mod report;
