//! accelnet's synthetic path: a vhost-user-net software switch.
//!
//! VM ports are vhost-user-net backends (the VMM or DPDK virtio-user connects to a
//! socket the switch creates). Uplinks reach host interfaces over AF_PACKET. Frames
//! are forwarded by an L2 learning bridge ([`fdb`]) on dedicated, pinnable threads
//! ([`forward`]) that copy each frame once, straight from the source guest's buffer
//! into the destination's.
//!
//! Layout: [`wire`] (Ethernet), [`fdb`] (learning table), [`ring`] (split virtqueue
//! fast path over guest memory), [`port`] (vhost-user port control plane),
//! [`hold`] (holding a VM port's receive direction during a path change),
//! [`uplink`] (AF_PACKET TPACKET_V3), [`forward`] (data plane threads), [`switch`]
//! (assembly), [`control`] (unix-socket JSON API), [`config`], [`api`].
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod api;
pub mod config;
pub mod control;
pub mod dirty;
pub mod fdb;
pub mod features;
pub mod forward;
pub mod hold;
pub(crate) mod logging;
pub mod metrics;
pub mod offload;
pub mod policy;
pub mod port;
pub mod relay;
pub mod ring;
pub mod switch;
pub(crate) mod sys;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod uplink;
pub mod wire;

pub use api::{DropReason, PortStats, Request, Response};
pub use config::{PortConfig, SwitchConfig, UplinkConfig};
pub use switch::{Switch, SwitchError};
pub use sys::packet::IncomingFrames;
pub use wire::MacAddr;
