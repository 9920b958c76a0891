//! `accelnet switch port add|del`: change the VM ports of a running switch.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use vswitch::config::{PortMode, DEFAULT_QUEUES, DEFAULT_VLAN};
use vswitch::policy::{PolicyConfig, RateLimit, VlanMode};
use vswitch::{MacAddr, PortConfig, Request, Response};

/// Arguments of `accelnet switch port`.
#[derive(Debug, Args)]
pub struct PortArgs {
    #[command(subcommand)]
    command: PortCommand,
}

#[derive(Debug, Subcommand)]
enum PortCommand {
    /// Add a VM port: the switch creates the socket, or connects to it with --client.
    Add(AddArgs),
    /// Replace the policy of a port (VM port or uplink); no policy flags = no limits.
    Set(SetArgs),
    /// Remove a VM port: its connections close and its socket is removed.
    Del(DelArgs),
    /// Tell the wire a VM's MAC is now behind this port: a RARP out of every uplink,
    /// and the switch's FDB entry points at the port (after a VF path goes away).
    Announce(AnnounceArgs),
}

#[derive(Debug, Args)]
struct AnnounceArgs {
    /// VM port name.
    name: String,
    /// The VM's MAC.
    #[arg(long, value_name = "MAC")]
    mac: MacAddr,
    /// Send it once the port's receive rings start (a migrated VM resumed), not now.
    #[arg(long)]
    on_attach: bool,
    /// Control socket of the running switch.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
}

#[derive(Debug, Args)]
struct AddArgs {
    /// Port name (letters, digits, '-', '_', '.').
    name: String,
    /// vhost-user socket path.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// The VMM owns the socket (QEMU `server=on`): connect and reconnect to it.
    #[arg(long)]
    client: bool,
    /// Access VLAN, 1..=4094.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_VLAN)]
    vlan: u16,
    /// Queue pairs, 1..=8.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_QUEUES)]
    queues: u16,
    /// Offer no checksum/TSO offloads to the guest.
    #[arg(long)]
    no_offloads: bool,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Control socket of the running switch.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// Print the new port as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct SetArgs {
    /// Port name.
    name: String,
    #[command(flatten)]
    policy: PolicyArgs,
    /// Control socket of the running switch.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
}

/// Port policy flags; each left out means "no restriction".
#[derive(Debug, Args)]
struct PolicyArgs {
    /// Only this source MAC may send from the port (anti-spoofing; repeatable).
    #[arg(long = "allowed-mac", value_name = "MAC")]
    allowed_macs: Vec<MacAddr>,
    /// Trunk: carry these VLANs tagged (comma-separated), instead of one access VLAN.
    #[arg(long, value_name = "VLANS", value_delimiter = ',')]
    trunk: Vec<u16>,
    /// With --trunk: the VLAN carried untagged.
    #[arg(long, value_name = "N", requires = "trunk")]
    native_vlan: Option<u16>,
    /// Ingress limit: packets per second from the port.
    #[arg(long, value_name = "N")]
    ingress_pps: Option<u64>,
    /// Ingress limit: bytes per second from the port.
    #[arg(long, value_name = "N")]
    ingress_bytes_per_sec: Option<u64>,
    /// Egress limit: packets per second to the port.
    #[arg(long, value_name = "N")]
    egress_pps: Option<u64>,
    /// Egress limit: bytes per second to the port.
    #[arg(long, value_name = "N")]
    egress_bytes_per_sec: Option<u64>,
    /// Most MAC addresses the switch learns behind the port.
    #[arg(long, value_name = "N")]
    max_fdb_entries: Option<u32>,
}

impl PolicyArgs {
    fn to_config(&self) -> anyhow::Result<PolicyConfig> {
        let limit = |pps: Option<u64>, bytes: Option<u64>| {
            (pps.is_some() || bytes.is_some()).then(|| RateLimit {
                pps,
                bytes_per_sec: bytes,
                ..RateLimit::default()
            })
        };
        let config = PolicyConfig {
            allowed_macs: self.allowed_macs.clone(),
            vlan_mode: (!self.trunk.is_empty()).then(|| VlanMode::Trunk {
                vlans: self.trunk.clone(),
                native_vlan: self.native_vlan,
            }),
            ingress: limit(self.ingress_pps, self.ingress_bytes_per_sec),
            egress: limit(self.egress_pps, self.egress_bytes_per_sec),
            max_fdb_entries: self.max_fdb_entries,
            ..PolicyConfig::default()
        };
        config.validate().context("invalid policy")?;
        Ok(config)
    }
}

#[derive(Debug, Args)]
struct DelArgs {
    /// Port name.
    name: String,
    /// Control socket of the running switch.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
}

/// Runs `accelnet switch port ...`.
pub fn run(args: PortArgs) -> anyhow::Result<()> {
    match args.command {
        PortCommand::Add(a) => {
            let port = PortConfig {
                name: Some(a.name.clone()),
                socket: a.socket,
                mode: if a.client {
                    PortMode::Client
                } else {
                    PortMode::Server
                },
                vlan: a.vlan,
                queues: a.queues,
                offloads: !a.no_offloads,
                policy: a.policy.to_config()?,
            };
            port.validate().context("invalid port")?;
            match vswitch::control::request(&a.control, &Request::PortAdd { port })? {
                Response::PortAdded { port } => {
                    let out = if a.json {
                        serde_json::to_string_pretty(&port)? + "\n"
                    } else {
                        super::show::ports_table(std::slice::from_ref(&*port))
                    };
                    std::io::stdout()
                        .lock()
                        .write_all(out.as_bytes())
                        .context("cannot write to stdout")
                }
                Response::Error { message } => bail!("switch refused to add {}: {message}", a.name),
                other => bail!("unexpected answer from the switch: {other:?}"),
            }
        }
        PortCommand::Set(a) => {
            let req = Request::PortSet {
                name: a.name.clone(),
                policy: a.policy.to_config()?,
            };
            match vswitch::control::request(&a.control, &req)? {
                Response::PortUpdated { name } => {
                    eprintln!("port {name}: policy replaced");
                    Ok(())
                }
                Response::Error { message } => {
                    bail!("switch refused the policy of {}: {message}", a.name)
                }
                other => bail!("unexpected answer from the switch: {other:?}"),
            }
        }
        PortCommand::Announce(a) => {
            let req = Request::Announce {
                port: a.name.clone(),
                mac: a.mac,
                on_attach: a.on_attach,
            };
            match vswitch::control::request(&a.control, &req)? {
                Response::Announced {
                    port, mac, pending, ..
                } if pending => {
                    eprintln!("port {port}: {mac} will be announced once its rings start");
                    Ok(())
                }
                Response::Announced {
                    port, mac, uplinks, ..
                } => {
                    eprintln!(
                        "port {port}: announced {mac} out of {}",
                        if uplinks.is_empty() {
                            "no uplink (the switch has none)".to_string()
                        } else {
                            uplinks.join(", ")
                        }
                    );
                    Ok(())
                }
                Response::Error { message } => {
                    bail!(
                        "switch refused to announce {} on {}: {message}",
                        a.mac,
                        a.name
                    )
                }
                other => bail!("unexpected answer from the switch: {other:?}"),
            }
        }
        PortCommand::Del(a) => {
            let req = Request::PortDel {
                name: a.name.clone(),
            };
            match vswitch::control::request(&a.control, &req)? {
                Response::PortDeleted { name } => {
                    eprintln!("port {name} removed");
                    Ok(())
                }
                Response::Error { message } => {
                    bail!("switch refused to remove {}: {message}", a.name)
                }
                other => bail!("unexpected answer from the switch: {other:?}"),
            }
        }
    }
}
