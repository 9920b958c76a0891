//! The switch assembled: ports, uplinks, FDB, forwarding threads, control socket.

use crate::api::{PortStats, Request, Response};
use crate::config::{ConfigError, SwitchConfig};

/// Errors starting or running the switch.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// Switch not assembled yet (work in progress in this session).
    #[error("switch datapath not assembled yet")]
    NotReady,
}

/// A running switch. Dropping it (or [`Switch::shutdown`]) stops every thread and
/// removes the sockets it created.
#[derive(Debug)]
pub struct Switch {}

impl Switch {
    /// Validates `config`, creates every socket and starts the threads.
    pub fn start(config: SwitchConfig) -> Result<Switch, SwitchError> {
        config.validate()?;
        Err(SwitchError::NotReady)
    }

    /// Serves one control request (what the control socket does per line).
    pub fn handle(&self, _req: &Request) -> Response {
        Response::Error { message: "not ready".into() }
    }

    /// Counters of the port called `name`.
    pub fn port_stats(&self, _name: &str) -> Option<PortStats> {
        None
    }

    /// Stops forwarding, closes every connection, removes the sockets.
    pub fn shutdown(self) {}
}
