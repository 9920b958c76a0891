//! `accelnet switch`: run the software switch in-process, or query a running one.

use clap::{Args, Subcommand};

mod port;
mod run;
mod show;

/// Arguments of `accelnet switch`.
#[derive(Debug, Args)]
pub struct SwitchArgs {
    #[command(subcommand)]
    command: SwitchCommand,
}

#[derive(Debug, Subcommand)]
enum SwitchCommand {
    /// Run the switch until SIGINT or SIGTERM.
    Run(run::RunArgs),
    /// List the ports of a running switch.
    Ports(show::ShowArgs),
    /// Dump the forwarding database of a running switch.
    Fdb(show::ShowArgs),
    /// Show per-port counters of a running switch.
    Stats(show::ShowArgs),
    /// Add or remove a VM port of a running switch.
    Port(port::PortArgs),
}

/// Runs `accelnet switch ...`.
pub fn run(args: SwitchArgs) -> anyhow::Result<()> {
    match args.command {
        SwitchCommand::Run(a) => run::run(&a),
        SwitchCommand::Ports(a) => show::show(&a, show::What::Ports),
        SwitchCommand::Fdb(a) => show::show(&a, show::What::Fdb),
        SwitchCommand::Stats(a) => show::show(&a, show::What::Stats),
        SwitchCommand::Port(a) => port::run(a),
    }
}
