//! `accelnet sriov`: inspect the host's SR-IOV physical and virtual functions.

use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use sriov::configure::{self, Binding};
use sriov::mac::MacAddr;
use sriov::netlink::{Netlink, VfChange};
use sriov::sysfs::{discover, discover_with, SysfsRoot};
use sriov::{Host, VfInfo, VfLinkState};

use crate::table::{Align, Table};

/// Arguments of `accelnet sriov`.
#[derive(Debug, Args)]
pub struct SriovArgs {
    #[command(subcommand)]
    command: SriovCommand,
}

#[derive(Debug, Subcommand)]
enum SriovCommand {
    /// List SR-IOV physical functions and their virtual functions (sysfs, plus the
    /// per-VF settings from rtnetlink on the real root).
    List(ListArgs),
    /// Set the number of VFs of a PF (through 0 when changing between non-zero
    /// counts, as the kernel requires), then read it back.
    Numvfs(NumvfsArgs),
    /// Set a VF's MAC, VLAN, spoof check, trust, rate or link state through its
    /// PF's rtnetlink link, then read it back.
    Vf(VfArgs),
    /// Bind a VF to vfio-pci (driver_override, unbind, probe) for passthrough.
    BindVfio(BindArgs),
    /// Give a VF back from vfio-pci to its own driver.
    UnbindVfio(UnbindArgs),
    /// The VF pool: which VM holds which VF.
    Pool(crate::pool_cmd::PoolArgs),
}

/// Where sysfs is, for every subcommand.
#[derive(Debug, Args)]
struct RootArg {
    /// Directory holding the `sys/` tree to read (for tests and chroots).
    #[arg(long, value_name = "PATH", default_value = "/")]
    sysfs_root: PathBuf,
}

impl RootArg {
    fn root(&self) -> SysfsRoot {
        SysfsRoot::new(&self.sysfs_root)
    }

    /// rtnetlink describes the running kernel, so it is only asked when sysfs is
    /// the real one.
    fn is_real(&self) -> bool {
        self.sysfs_root == std::path::Path::new("/")
    }
}

/// Arguments of `accelnet sriov list`.
#[derive(Debug, Args)]
struct ListArgs {
    #[command(flatten)]
    root: RootArg,
    /// Print the host as pretty JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// Arguments of `accelnet sriov numvfs`.
#[derive(Debug, Args)]
struct NumvfsArgs {
    #[command(flatten)]
    root: RootArg,
    /// PCI address of the physical function, e.g. 0000:3b:00.0.
    pf: String,
    /// The number of VFs to enable (0 disables SR-IOV).
    count: u32,
}

/// `on` / `off` for boolean VF settings.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl From<OnOff> for bool {
    fn from(v: OnOff) -> bool {
        matches!(v, OnOff::On)
    }
}

/// Link state of a VF, as `ip link set ... vf N state` names it.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LinkStateArg {
    Auto,
    Enable,
    Disable,
}

/// Arguments of `accelnet sriov vf`.
#[derive(Debug, Args)]
struct VfArgs {
    #[command(flatten)]
    root: RootArg,
    /// PCI address of the virtual function.
    vf: String,
    /// Administrative MAC address (aa:bb:cc:dd:ee:ff; 00:00:00:00:00:00 clears it).
    #[arg(long)]
    mac: Option<MacAddr>,
    /// VLAN the PF tags the VF's traffic with (0 = none).
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=4094))]
    vlan: Option<u16>,
    /// 802.1p priority for the VLAN tag.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=7))]
    qos: Option<u32>,
    /// MAC spoof checking.
    #[arg(long, value_enum)]
    spoof_check: Option<OnOff>,
    /// Trusted VF (may change its MAC, enter promiscuous mode).
    #[arg(long, value_enum)]
    trust: Option<OnOff>,
    /// Maximum transmit rate in Mbit/s (0 = unlimited).
    #[arg(long, value_name = "MBIT")]
    max_rate: Option<u32>,
    /// Minimum (guaranteed) transmit rate in Mbit/s (0 = none).
    #[arg(long, value_name = "MBIT")]
    min_rate: Option<u32>,
    /// Administrative link state.
    #[arg(long, value_enum)]
    link_state: Option<LinkStateArg>,
    /// Restore the pool's clean state: MAC zeroed, VLAN 0, spoof check on, trust
    /// off, rates 0, link state auto.
    #[arg(long, conflicts_with_all = ["mac", "vlan", "qos", "spoof_check", "trust", "max_rate", "min_rate", "link_state"])]
    reset: bool,
    /// Print the settings read back as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `accelnet sriov bind-vfio`.
#[derive(Debug, Args)]
struct BindArgs {
    #[command(flatten)]
    root: RootArg,
    /// PCI address of the virtual function.
    vf: String,
    /// Print the binding read back as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `accelnet sriov unbind-vfio`.
#[derive(Debug, Args)]
struct UnbindArgs {
    #[command(flatten)]
    root: RootArg,
    /// PCI address of the virtual function.
    vf: String,
    /// The driver the VF must end up on (default: any driver but vfio-pci).
    #[arg(long)]
    driver: Option<String>,
    /// Print the binding read back as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `accelnet sriov ...`.
pub fn run(args: SriovArgs) -> anyhow::Result<()> {
    match args.command {
        SriovCommand::List(a) => list(&a),
        SriovCommand::Numvfs(a) => numvfs(&a),
        SriovCommand::Vf(a) => vf_set(&a),
        SriovCommand::BindVfio(a) => {
            let b = configure::bind_vfio(&a.root.root(), &a.vf)?;
            print_binding(&b, a.json)
        }
        SriovCommand::UnbindVfio(a) => {
            let b = configure::unbind_vfio(&a.root.root(), &a.vf, a.driver.as_deref())?;
            print_binding(&b, a.json)
        }
        SriovCommand::Pool(a) => crate::pool_cmd::run(a),
    }
}

/// Discovers the host, with rtnetlink's per-VF settings on the real root.
pub fn discover_host(root: &RootArgRef<'_>) -> anyhow::Result<Host> {
    let host = if root.real {
        let nl = Netlink::open().context("cannot open an rtnetlink socket")?;
        discover_with(root.root, &nl)
    } else {
        discover(root.root)
    };
    host.context("SR-IOV discovery failed")
}

/// A sysfs root and whether it is the running kernel's.
#[derive(Debug, Clone, Copy)]
pub struct RootArgRef<'a> {
    /// The root.
    pub root: &'a SysfsRoot,
    /// Whether it is `/` (then rtnetlink is asked too).
    pub real: bool,
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let root = args.root.root();
    let host = discover_host(&RootArgRef {
        root: &root,
        real: args.root.is_real(),
    })?;
    let out = if args.json {
        json(&host)?
    } else {
        render(&host, &root)
    };
    print(&out)
}

/// `v` as pretty JSON with a final newline: what every `--json` prints.
pub fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<String> {
    let mut s = serde_json::to_string_pretty(v).context("cannot encode JSON")?;
    s.push('\n');
    Ok(s)
}

/// Writes to stdout; `accelnet ... | head` is not an error.
pub fn print(out: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

fn numvfs(args: &NumvfsArgs) -> anyhow::Result<()> {
    let pf = configure::set_num_vfs(&args.root.root(), &args.pf, args.count)?;
    let mut out = format!(
        "{}: {} of {} VFs enabled\n",
        pf.address, pf.num_vfs, pf.total_vfs
    );
    for vf in &pf.vfs {
        out.push_str(&format!(
            "  vf {} {} driver {}\n",
            vf.index,
            vf.address,
            opt(vf.driver.as_deref())
        ));
    }
    print(&out)
}

/// The PF netdev and VF index behind the VF at `address`.
fn vf_location(root: &SysfsRoot, address: &str) -> anyhow::Result<(String, u32)> {
    // binding() gives a clear error for an unknown device or a non-VF.
    configure::binding(root, address)?;
    let host = discover(root).context("SR-IOV discovery failed")?;
    let (pf, vf) = host
        .vfs()
        .find(|(_, vf)| vf.address == address)
        .with_context(|| format!("VF {address} is not listed by any PF's virtfn links"))?;
    let netdev = pf.netdevs.first().with_context(|| {
        format!(
            "PF {} of VF {address} has no network interface: its driver must expose one \
             to configure VFs through rtnetlink",
            pf.address
        )
    })?;
    Ok((netdev.clone(), vf.index))
}

fn vf_set(args: &VfArgs) -> anyhow::Result<()> {
    let change = if args.reset {
        VfChange::reset()
    } else {
        VfChange {
            mac: args.mac,
            vlan: args.vlan,
            qos: args.qos,
            spoof_check: args.spoof_check.map(bool::from),
            trust: args.trust.map(bool::from),
            max_tx_rate: args.max_rate,
            min_tx_rate: args.min_rate,
            link_state: args.link_state.map(|l| match l {
                LinkStateArg::Auto => VfLinkState::Auto,
                LinkStateArg::Enable => VfLinkState::Enable,
                LinkStateArg::Disable => VfLinkState::Disable,
            }),
        }
    };
    if change == VfChange::default() {
        anyhow::bail!(
            "nothing to change for VF {}: give --mac, --vlan, --qos, --spoof-check, --trust, \
             --max-rate, --min-rate, --link-state or --reset",
            args.vf
        );
    }
    let (pf_netdev, index) = vf_location(&args.root.root(), &args.vf)?;
    let nl = Netlink::open().context("cannot open an rtnetlink socket")?;
    let info = nl
        .apply_vf(&pf_netdev, index, &change)
        .with_context(|| format!("VF {} (vf {index} of {pf_netdev})", args.vf))?;
    if args.json {
        return print(&json(&info)?);
    }
    print(&format!(
        "{} (vf {index} of {pf_netdev}): mac {} vlan {} spoof-check {} trust {} rate {}/{} link-state {}\n",
        args.vf,
        opt(info.mac.as_deref()),
        opt(info.vlan),
        on_off(info.spoof_check),
        on_off(info.trust),
        opt(info.min_tx_rate),
        opt(info.max_tx_rate),
        link_state(info.link_state),
    ))
}

fn on_off(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "-",
    }
}

fn link_state(v: Option<VfLinkState>) -> &'static str {
    match v {
        Some(VfLinkState::Auto) => "auto",
        Some(VfLinkState::Enable) => "enable",
        Some(VfLinkState::Disable) => "disable",
        None => "-",
    }
}

fn print_binding(b: &Binding, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return print(&json(b)?);
    }
    print(&format!(
        "{}: driver {} override {} iommu group {} vfio {}\n",
        b.address,
        opt(b.driver.as_deref()),
        opt(b.driver_override.as_deref()),
        opt(b.iommu_group),
        opt(b.vfio_device.as_ref().map(|p| p.display().to_string())),
    ))
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The PF table, then the VF table (or a note when no VF is enabled).
fn render(host: &Host, root: &SysfsRoot) -> String {
    if host.pfs.is_empty() {
        return format!(
            "no SR-IOV physical functions found in {}\n",
            root.pci_devices().display()
        );
    }
    let mut pfs = Table::new(&[
        ("PF", Align::Left),
        ("ID", Align::Left),
        ("DRIVER", Align::Left),
        ("NETDEV", Align::Left),
        ("VFS", Align::Right),
        ("NUMA", Align::Right),
        ("IOMMU", Align::Right),
    ]);
    for pf in &host.pfs {
        pfs.row(vec![
            pf.address.clone(),
            format!("{:04x}:{:04x}", pf.vendor_id, pf.device_id),
            opt(pf.driver.as_deref()),
            if pf.netdevs.is_empty() {
                "-".to_string()
            } else {
                pf.netdevs.join(",")
            },
            format!("{}/{}", pf.num_vfs, pf.total_vfs),
            opt(pf.numa_node),
            opt(pf.iommu_group),
        ]);
    }
    let mut out = pfs.render();
    out.push('\n');
    if host.vfs().next().is_none() {
        out.push_str("no VFs enabled\n");
        return out;
    }
    let mut vfs = Table::new(&[
        ("VF", Align::Left),
        ("PF", Align::Left),
        ("INDEX", Align::Right),
        ("NETDEV", Align::Left),
        ("DRIVER", Align::Left),
        ("IOMMU", Align::Right),
        ("NUMA", Align::Right),
        ("RDMA", Align::Left),
    ]);
    // rtnetlink's settings only when some VF has them (not on fake trees).
    let with_info = host.vfs().any(|(_, vf)| vf.info != VfInfo::default());
    if with_info {
        for h in [
            ("MAC", Align::Left),
            ("VLAN", Align::Right),
            ("SPOOFCHK", Align::Left),
            ("TRUST", Align::Left),
            ("LINK", Align::Left),
        ] {
            vfs.column(h.0, h.1);
        }
    }
    for (pf, vf) in host.vfs() {
        let mut cells = vec![
            vf.address.clone(),
            pf.address.clone(),
            vf.index.to_string(),
            opt(vf.netdev.as_deref()),
            opt(vf.driver.as_deref()),
            opt(vf.iommu_group),
            opt(vf.numa_node),
            if vf.rdma { "yes" } else { "no" }.to_string(),
        ];
        if with_info {
            cells.extend([
                opt(vf.info.mac.as_deref()),
                opt(vf.info.vlan),
                on_off(vf.info.spoof_check).to_string(),
                on_off(vf.info.trust).to_string(),
                link_state(vf.info.link_state).to_string(),
            ]);
        }
        vfs.row(cells);
    }
    out.push_str(&vfs.render());
    out
}
