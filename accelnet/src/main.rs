//! `accelnet`: the command line and node agent gluing the accelnet crates together.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cluster_cmd;
mod pool_cmd;
mod sriov_cmd;
mod switch_cmd;
mod table;
mod vm;

/// accelnet: SR-IOV with failover for Linux VMs.
#[derive(Debug, Parser)]
#[command(name = "accelnet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run or query the vhost-user-net software switch.
    Switch(switch_cmd::SwitchArgs),
    /// Inspect and configure the host's SR-IOV physical and virtual functions.
    Sriov(sriov_cmd::SriovArgs),
    /// Cluster-wide checks and settings (prerequisites).
    Cluster(cluster_cmd::ClusterArgs),
    /// Launch, list and stop VMs with the VF + synthetic pair.
    Vm(vm::VmArgs),
    /// This node: its agent (live migrations' destination, host-reserved
    /// failover) and drains.
    Node(vm::NodeArgs),
    /// Run a failover drill on a VM under a probe and report what the guest saw.
    Drill(vm::drill::DrillArgs),
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap), runtime errors 1.
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("accelnet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Switch(args) => switch_cmd::run(args),
        Command::Sriov(args) => sriov_cmd::run(args),
        Command::Cluster(args) => cluster_cmd::run(args),
        Command::Vm(args) => vm::run(args),
        Command::Node(args) => vm::run_node(args),
        Command::Drill(args) => vm::drill::run(args),
    }
}
