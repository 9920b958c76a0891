//! Switch configuration: a TOML file and the `accelnet switch run` flags feed the
//! same [`SwitchConfig`], validated once by [`SwitchConfig::validate`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::{PolicyConfig, VlanMode};
use crate::wire::VLAN_MAX;

/// Default L3 MTU of every port.
pub const DEFAULT_MTU: u16 = 1500;
/// Default access VLAN of a VM port and native VLAN of an uplink.
pub const DEFAULT_VLAN: u16 = 1;

/// Errors in a switch configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys are rejected).
    #[error("invalid config file {path}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// A VLAN id outside 1..=4094.
    #[error("port {port}: VLAN {vlan} out of range 1..=4094")]
    Vlan {
        /// Port name.
        port: String,
        /// Offending value.
        vlan: u16,
    },
    /// An MTU outside 68..=9000.
    #[error("MTU {0} out of range 68..=9000")]
    Mtu(u16),
    /// Two ports with one name or one socket path.
    #[error("duplicate port {0}")]
    DuplicatePort(String),
    /// A port name that is empty or not printable.
    #[error("invalid port name {0:?}: use letters, digits, '-', '_' or '.'")]
    PortName(String),
    /// Nothing to switch.
    #[error("no ports: give at least one --vhost-user-server PATH or [[port]] in the config")]
    NoPorts,
    /// FDB settings out of range.
    #[error("fdb_capacity must be 64..=1048576 and fdb_aging_secs 1..=86400")]
    Fdb,
    /// A port's policy is invalid.
    #[error("port {port}: policy: {source}")]
    Policy {
        /// Port name.
        port: String,
        /// What is wrong.
        #[source]
        source: crate::policy::PolicyError,
    },
    /// A rate limit whose burst cannot pass one frame of the MTU.
    #[error(
        "port {port}: {table} burst of {burst} bytes is below the largest frame ({frame} bytes)"
    )]
    BurstBelowFrame {
        /// Port name.
        port: String,
        /// `ingress` or `egress`.
        table: &'static str,
        /// The burst.
        burst: u64,
        /// The largest frame.
        frame: usize,
    },
    /// A queue pair count outside 1..=MAX_QUEUE_PAIRS.
    #[error("port {port}: queues {queues} out of range 1..={max}")]
    Queues {
        /// Port name.
        port: String,
        /// Offending value.
        queues: u16,
        /// Largest allowed value.
        max: usize,
    },
}

/// Everything the switch needs to start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// Switch-wide settings.
    #[serde(default)]
    pub switch: SwitchSettings,
    /// VM ports (vhost-user server sockets).
    #[serde(default, rename = "port")]
    pub ports: Vec<PortConfig>,
    /// Uplinks to host interfaces.
    #[serde(default, rename = "uplink")]
    pub uplinks: Vec<UplinkConfig>,
}

/// Switch-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwitchSettings {
    /// L3 MTU: frames up to `mtu + 18` bytes (Ethernet header and one VLAN tag) are forwarded.
    pub mtu: u16,
    /// CPUs for forwarding threads, one thread each; empty = one unpinned thread.
    pub cpus: Vec<usize>,
    /// Control socket path (mode 0600).
    pub control: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP on this address (`PORT` means loopback).
    /// Anything but loopback exposes the counters to the network.
    pub metrics: Option<String>,
    /// FDB capacity in entries.
    pub fdb_capacity: u32,
    /// Seconds after which an unrefreshed FDB entry expires.
    pub fdb_aging_secs: u32,
}

impl Default for SwitchSettings {
    fn default() -> Self {
        SwitchSettings {
            mtu: DEFAULT_MTU,
            cpus: Vec::new(),
            control: None,
            metrics: None,
            fdb_capacity: 8192,
            fdb_aging_secs: 300,
        }
    }
}

/// Who owns a VM port's socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortMode {
    /// The switch creates the socket and listens; the VMM connects (QEMU
    /// `reconnect-ms=` on the chardev brings it back after a switch restart).
    #[default]
    Server,
    /// The VMM owns the socket (QEMU `server=on`); the switch connects and
    /// reconnects with backoff whenever either side restarts.
    Client,
}

/// A VM port: a vhost-user socket the switch listens on or connects to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Port name; defaults to the socket's file stem.
    #[serde(default)]
    pub name: Option<String>,
    /// Socket path: created by the switch (server) or by the VMM (client).
    pub socket: PathBuf,
    /// Server (default) or client.
    #[serde(default)]
    pub mode: PortMode,
    /// Access VLAN: frames enter and leave untagged.
    #[serde(default = "default_vlan")]
    pub vlan: u16,
    /// Most queue pairs a frontend may use (virtio-net MQ).
    #[serde(default = "default_queues")]
    pub queues: u16,
    /// Offer checksum and TSO offloads (CSUM, GUEST_CSUM, HOST_/GUEST_TSO4/6, ECN);
    /// off, every frame crosses the switch finished and at most MTU-sized.
    #[serde(default = "default_true")]
    pub offloads: bool,
    /// Anti-spoofing, VLAN access/trunk, rate limits, FDB limit, receive filter
    /// (`[port.policy]`); `vlan` is the access VLAN unless the policy sets a mode.
    #[serde(default)]
    pub policy: PolicyConfig,
}

fn default_true() -> bool {
    true
}

/// An uplink: a host interface (veth, tap or PF) attached over AF_PACKET.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Interface name.
    pub ifname: String,
    /// VLAN carried untagged on the wire; other VLANs are tagged.
    #[serde(default = "default_vlan")]
    pub native_vlan: u16,
    /// Policy (`[uplink.policy]`); without a VLAN mode the uplink carries every VLAN.
    #[serde(default)]
    pub policy: PolicyConfig,
}

fn default_vlan() -> u16 {
    DEFAULT_VLAN
}

/// Default queue pairs a VM port offers: enough for a 4-vCPU guest; queues a
/// frontend does not start cost nothing.
pub const DEFAULT_QUEUES: u16 = 4;

fn default_queues() -> u16 {
    DEFAULT_QUEUES
}

/// Checks a port or uplink name: letters, digits, '-', '_', '.', at most 64.
pub fn check_port_name(name: &str) -> Result<(), ConfigError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::PortName(name.to_string()))
    }
}

impl PortConfig {
    /// A port on `socket` in the default VLAN.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        PortConfig {
            name: None,
            socket: socket.into(),
            mode: PortMode::Server,
            vlan: DEFAULT_VLAN,
            queues: DEFAULT_QUEUES,
            offloads: true,
            policy: PolicyConfig::default(),
        }
    }

    /// A client-mode port on a VMM-owned `socket`.
    pub fn client(socket: impl Into<PathBuf>) -> Self {
        PortConfig {
            mode: PortMode::Client,
            ..PortConfig::new(socket)
        }
    }

    /// Checks this port on its own (name, VLAN, queues).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = self.port_name();
        check_port_name(&name)?;
        if !(1..=VLAN_MAX).contains(&self.vlan) {
            return Err(ConfigError::Vlan {
                port: name,
                vlan: self.vlan,
            });
        }
        let max = crate::features::MAX_QUEUE_PAIRS;
        if self.queues == 0 || usize::from(self.queues) > max {
            return Err(ConfigError::Queues {
                port: name,
                queues: self.queues,
                max,
            });
        }
        self.policy
            .validate()
            .map_err(|source| ConfigError::Policy { port: name, source })
    }

    /// The configured name, or the socket's file stem.
    pub fn port_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            self.socket
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
    }

    /// The port's default VLAN mode: access in `vlan`.
    pub fn default_vlan_mode(&self) -> VlanMode {
        VlanMode::Access(self.vlan)
    }
}

impl UplinkConfig {
    /// An uplink on `ifname` carrying every VLAN, `native_vlan` untagged.
    pub fn new(ifname: impl Into<String>, native_vlan: u16) -> Self {
        UplinkConfig {
            ifname: ifname.into(),
            native_vlan,
            policy: PolicyConfig::default(),
        }
    }

    /// The uplink's default VLAN mode: every VLAN, the native one untagged.
    pub fn default_vlan_mode(&self) -> VlanMode {
        VlanMode::trunk_all(self.native_vlan)
    }
}

/// Checks that a policy's rate-limit bursts let a frame of `max_frame` through.
pub(crate) fn check_bursts(
    port: &str,
    p: &PolicyConfig,
    max_frame: usize,
) -> Result<(), ConfigError> {
    for (table, limit) in [("ingress", &p.ingress), ("egress", &p.egress)] {
        if let Some(burst) = limit.as_ref().and_then(|l| l.effective_burst_bytes()) {
            if burst < max_frame as u64 {
                return Err(ConfigError::BurstBelowFrame {
                    port: port.to_string(),
                    table,
                    burst,
                    frame: max_frame,
                });
            }
        }
    }
    Ok(())
}

impl SwitchConfig {
    /// Reads and parses a TOML file (not yet validated).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Checks ranges and uniqueness.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.switch;
        if !(68..=9000).contains(&s.mtu) {
            return Err(ConfigError::Mtu(s.mtu));
        }
        if !(64..=1 << 20).contains(&s.fdb_capacity) || !(1..=86400).contains(&s.fdb_aging_secs) {
            return Err(ConfigError::Fdb);
        }
        if self.ports.is_empty() && self.uplinks.is_empty() {
            return Err(ConfigError::NoPorts);
        }
        let mut names = std::collections::HashSet::new();
        let mut sockets = std::collections::HashSet::new();
        for p in &self.ports {
            p.validate()?;
            check_bursts(&p.port_name(), &p.policy, self.max_frame_len())?;
        }
        for u in &self.uplinks {
            u.policy.validate().map_err(|source| ConfigError::Policy {
                port: u.ifname.clone(),
                source,
            })?;
            check_bursts(&u.ifname, &u.policy, self.max_frame_len())?;
        }
        let entries = self.ports.iter().map(|p| (p.port_name(), p.vlan)).chain(
            self.uplinks
                .iter()
                .map(|u| (u.ifname.clone(), u.native_vlan)),
        );
        for (name, vlan) in entries {
            check_port_name(&name)?;
            if !(1..=VLAN_MAX).contains(&vlan) {
                return Err(ConfigError::Vlan { port: name, vlan });
            }
            if !names.insert(name.clone()) {
                return Err(ConfigError::DuplicatePort(name));
            }
        }
        for p in &self.ports {
            if !sockets.insert(p.socket.clone()) {
                return Err(ConfigError::DuplicatePort(p.socket.display().to_string()));
            }
        }
        Ok(())
    }

    /// Largest Ethernet frame (without virtio header) a port accepts.
    pub fn max_frame_len(&self) -> usize {
        usize::from(self.switch.mtu) + crate::wire::ETH_HLEN + crate::wire::VLAN_TAG_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_parses_ports_and_uplink() {
        let c: SwitchConfig = toml::from_str(
            r#"
            [switch]
            mtu = 1500
            cpus = [1]
            [[port]]
            socket = "/tmp/a.sock"
            [[port]]
            name = "vm-b"
            socket = "/tmp/b.sock"
            vlan = 20
            [[uplink]]
            ifname = "veth0"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.ports[0].port_name(), "a");
        assert_eq!(c.ports[1].vlan, 20);
        assert_eq!(c.uplinks[0].native_vlan, DEFAULT_VLAN);
    }

    #[test]
    fn test_readme_config_example_is_valid() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml\n").expect("a toml block in README.md") + 8;
        let len = readme[start..].find("```").expect("end of the toml block");
        let c: SwitchConfig = toml::from_str(&readme[start..start + len]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0].mode, PortMode::Server);
        assert_eq!(c.ports[0].policy.max_fdb_entries, Some(4));
        assert!(matches!(
            c.ports[1].policy.vlan_mode,
            Some(VlanMode::Trunk {
                native_vlan: Some(10),
                ..
            })
        ));
    }

    #[test]
    fn test_config_client_port_and_policy_errors() {
        let c: SwitchConfig =
            toml::from_str("[[port]]\nsocket = \"/a\"\nmode = \"client\"\nqueues = 9\n").unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Queues { queues: 9, .. })
        ));
        assert!(
            toml::from_str::<SwitchConfig>("[[port]]\nsocket = \"/a\"\nmode = \"both\"\n").is_err()
        );
        let c: SwitchConfig =
            toml::from_str("[[port]]\nsocket = \"/a\"\n[port.policy.ingress]\npps = 0\n").unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("policy"), "{e}");
        let c: SwitchConfig = toml::from_str(
            "[switch]\nmtu = 9000\n[[port]]\nsocket = \"/a\"\n[port.policy.ingress]\nbytes_per_sec = 100000\nburst_bytes = 1518\n",
        )
        .unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::BurstBelowFrame { .. })
        ));
    }

    #[test]
    fn test_config_unknown_key_rejected() {
        let e = toml::from_str::<SwitchConfig>("[[port]]\nsocket = \"/a\"\nvlna = 3\n");
        assert!(e.is_err());
    }

    #[test]
    fn test_config_vlan_out_of_range_rejected() {
        let mut c = SwitchConfig::default();
        c.ports.push(PortConfig {
            vlan: 4095,
            ..PortConfig::new("/tmp/x.sock")
        });
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Vlan { vlan: 4095, .. })
        ));
    }

    #[test]
    fn test_config_duplicate_name_rejected() {
        let mut c = SwitchConfig::default();
        c.ports.push(PortConfig::new("/tmp/x.sock"));
        c.ports.push(PortConfig::new("/var/x.sock"));
        assert!(matches!(c.validate(), Err(ConfigError::DuplicatePort(_))));
    }
}
