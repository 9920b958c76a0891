//! `accelnet switch run`: the switch, in this process, until SIGINT or SIGTERM.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use vswitch::config::{PortMode, DEFAULT_VLAN};
use vswitch::{PortConfig, Switch, SwitchConfig, UplinkConfig};

/// Arguments of `accelnet switch run`.
///
/// Ports and uplinks from flags are added to those of `--config`; `--cpu`,
/// `--control` and `--mtu` replace the file's values when given.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Create a vhost-user-net server socket at PATH for a VM port (repeatable).
    /// The port is named after the file stem and sits in VLAN 1.
    #[arg(long = "vhost-user-server", value_name = "PATH")]
    vhost_user_server: Vec<PathBuf>,
    /// Connect to a vhost-user-net socket the VMM created at PATH (QEMU
    /// `server=on`) for a VM port, and reconnect whenever either side restarts
    /// (repeatable).
    #[arg(long = "vhost-user-client", value_name = "PATH")]
    vhost_user_client: Vec<PathBuf>,
    /// Queue pairs each VM port from the flags offers, 1..=8 (default 4).
    #[arg(long, value_name = "N")]
    queues: Option<u16>,
    /// VM ports from the flags offer no checksum/TSO offloads.
    #[arg(long)]
    no_offloads: bool,
    /// Attach host interface IFNAME as an uplink, native VLAN 1 (repeatable).
    #[arg(long, value_name = "IFNAME")]
    uplink: Vec<String>,
    /// Run a forwarding thread pinned to CPU N (repeatable; default: one unpinned thread).
    #[arg(long, value_name = "N")]
    cpu: Vec<usize>,
    /// Serve the control API on a unix socket at PATH (mode 0600).
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Read settings, ports and uplinks from a TOML file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// L3 MTU of every port, 68..=9000 (default 1500).
    #[arg(long, value_name = "N")]
    mtu: Option<u16>,
    /// Serve Prometheus metrics on http://ADDR/metrics: PORT (loopback),
    /// IPV4:PORT or [IPV6]:PORT. Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

/// Runs the switch until SIGINT or SIGTERM, then shuts it down.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config = build_config(args)?;
    let origin = match &args.config {
        Some(file) => format!(" (from {} and flags)", file.display()),
        None => String::new(),
    };
    // Switch::start validates too; checking here first names the config's origin.
    config
        .validate()
        .with_context(|| format!("invalid switch configuration{origin}"))?;

    // Registered before the switch starts, so an early signal still shuts it down
    // cleanly instead of killing the process with its sockets left behind.
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).context("cannot install SIGINT/SIGTERM handlers")?;
    let switch = Switch::start(config.clone()).context("cannot start the switch")?;
    announce(&config);
    if let Some(addr) = switch.metrics_addr() {
        eprintln!("metrics on http://{addr}/metrics");
    }

    let signal = signals.forever().next();
    let name = signal
        .and_then(signal_hook::low_level::signal_name)
        .unwrap_or("a signal");
    log::info!("received {name}, shutting down");
    switch.shutdown();
    Ok(())
}

/// The config file (if any) plus the flags.
fn build_config(args: &RunArgs) -> anyhow::Result<SwitchConfig> {
    let mut config = match &args.config {
        Some(file) => SwitchConfig::from_file(file)?,
        None => SwitchConfig::default(),
    };
    let queues = args.queues.unwrap_or(vswitch::config::DEFAULT_QUEUES);
    config.ports.extend(
        args.vhost_user_server
            .iter()
            .map(PortConfig::new)
            .chain(args.vhost_user_client.iter().map(PortConfig::client))
            .map(|p| PortConfig {
                queues,
                offloads: !args.no_offloads,
                ..p
            }),
    );
    config.uplinks.extend(
        args.uplink
            .iter()
            .map(|ifname| UplinkConfig::new(ifname.clone(), DEFAULT_VLAN)),
    );
    if !args.cpu.is_empty() {
        config.switch.cpus.clone_from(&args.cpu);
    }
    if let Some(control) = &args.control {
        config.switch.control = Some(control.clone());
    }
    if let Some(mtu) = args.mtu {
        config.switch.mtu = mtu;
    }
    if let Some(addr) = &args.metrics {
        vswitch::metrics::parse_addr(addr).context("invalid --metrics")?;
        config.switch.metrics = Some(addr.clone());
    }
    Ok(config)
}

/// One line per port on stderr.
fn announce(config: &SwitchConfig) {
    for p in &config.ports {
        let mode = match p.mode {
            PortMode::Server => "server on",
            PortMode::Client => "client of",
        };
        eprintln!(
            "port {}: vhost-user-net {mode} {}, VLAN {}, {} queue pairs",
            p.port_name(),
            p.socket.display(),
            p.vlan,
            p.queues
        );
    }
    for u in &config.uplinks {
        eprintln!("uplink {}: native VLAN {}", u.ifname, u.native_vlan);
    }
    if let Some(control) = &config.switch.control {
        eprintln!("control socket on {}", control.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap()
            .run
    }

    #[test]
    fn test_build_config_flags_only_fill_every_field() {
        let args = parse(&[
            "--vhost-user-server",
            "/tmp/a.sock",
            "--vhost-user-server",
            "/tmp/b.sock",
            "--uplink",
            "veth0",
            "--cpu",
            "1",
            "--cpu",
            "2",
            "--control",
            "/tmp/ctl",
            "--mtu",
            "9000",
        ]);

        let c = build_config(&args).unwrap();

        assert_eq!(
            c.ports,
            vec![
                PortConfig::new("/tmp/a.sock"),
                PortConfig::new("/tmp/b.sock")
            ]
        );
        assert_eq!(c.uplinks, vec![UplinkConfig::new("veth0", 1)]);
        assert_eq!(c.switch.cpus, vec![1, 2]);
        assert_eq!(c.switch.control, Some(PathBuf::from("/tmp/ctl")));
        assert_eq!(c.switch.mtu, 9000);
        c.validate().unwrap();
    }

    #[test]
    fn test_build_config_file_then_flags_appends_ports_and_overrides_mtu() {
        let dir = std::env::temp_dir().join(format!("accelnet-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("switch.toml");
        std::fs::write(
            &file,
            "[switch]\nmtu = 1400\ncpus = [3]\n[[port]]\nname = \"vm-a\"\nsocket = \"/tmp/x.sock\"\nvlan = 20\n",
        )
        .unwrap();
        let args = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--vhost-user-server",
            "/tmp/b.sock",
            "--mtu",
            "1500",
        ]);

        let c = build_config(&args);
        std::fs::remove_dir_all(&dir).unwrap();
        let c = c.unwrap();

        assert_eq!(c.ports.len(), 2);
        assert_eq!(c.ports[0].port_name(), "vm-a");
        assert_eq!(c.ports[0].vlan, 20);
        assert_eq!(c.ports[1].port_name(), "b");
        assert_eq!(c.switch.mtu, 1500);
        assert_eq!(c.switch.cpus, vec![3]);
    }
}
