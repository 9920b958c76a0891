//! `accelnet switch port add|del`: change the VM ports of a running switch.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use vswitch::config::{PortMode, DEFAULT_QUEUES, DEFAULT_VLAN};
use vswitch::{PortConfig, Request, Response};

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
    /// Remove a VM port: its connections close and its socket is removed.
    Del(DelArgs),
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
    /// Control socket of the running switch.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// Print the new port as JSON.
    #[arg(long)]
    json: bool,
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
            };
            port.validate().context("invalid port")?;
            match vswitch::control::request(&a.control, &Request::PortAdd { port })? {
                Response::PortAdded { port } => {
                    let out = if a.json {
                        serde_json::to_string_pretty(&port)? + "\n"
                    } else {
                        super::show::ports_table(std::slice::from_ref(&port))
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
