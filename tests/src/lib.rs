//! The accelnet QEMU lab harness: boots tiny TCG guests on vhost-user NICs and gives
//! tests a private "wire" network to reach them from the host side.
//!
//! * [`Lab`]: preconditions ([`Lab::check`]), guest assets, a per-test scratch dir for
//!   sockets (removed on drop) and a log dir (kept, for debugging).
//! * [`Wire`]: a private netns with bridge `br0` = 10.99.0.1/24 and a veth whose other
//!   end stays in the root namespace as the switch uplink.
//! * [`Guest`]: one QEMU TCG guest (kernel + initramfs from `lab/build-guest.sh`, role
//!   `shell`); the harness types commands on its serial console ([`Guest::run`]).
//! * [`PingStats`]: parses busybox/iputils `ping` summaries.
//! * [`SwitchProcess`]: `accelnet switch run` as a child process a test can SIGKILL and
//!   restart.
//! * [`Probe`]: a constant-rate ICMP echo probe from a netns, reporting losses, the longest
//!   gap and lost ranges against the test's [`Probe::mark`]s ([`ProbeReport`]); it lives in
//!   the product crate (`migration::probe`) and is re-exported here.
//!
//! Every process and network object is owned by a value and removed on drop, so a
//! failing test cleans up after itself. Errors are [`LabError`]s whose `Debug` is the
//! plain message (with the guest's last console lines), so `.expect()` prints readably.

mod cmd;
mod console;
mod guest;
mod lab;
mod ping;
pub mod probe;
pub mod qmp;
mod switch_proc;
mod wire;

pub use cmd::{run_cmd, CmdOutput};
pub use console::Line;
pub use guest::{BgJob, Guest, GuestConfig};
pub use lab::{log, Lab};
pub use ping::PingStats;
pub use probe::{Probe, ProbeError, ProbeReport, Window};
pub use qmp::Qmp;
pub use switch_proc::{accelnet_binary, SwitchProcess};
pub use wire::{Host, Wire, WIRE_IP, WIRE_MAC};

use std::fmt;

/// A harness error: a human-readable message, printed as is by both `Display` and `Debug`.
pub struct LabError(pub String);

impl fmt::Debug for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabError {}

impl From<String> for LabError {
    fn from(s: String) -> Self {
        LabError(s)
    }
}

impl From<ProbeError> for LabError {
    fn from(e: ProbeError) -> Self {
        LabError(e.to_string())
    }
}

impl From<&str> for LabError {
    fn from(s: &str) -> Self {
        LabError(s.to_string())
    }
}

/// Result of harness operations.
pub type Result<T> = std::result::Result<T, LabError>;
