//! `accelnet sriov`: inspect the host's SR-IOV physical and virtual functions.

use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use sriov::sysfs::{discover, SysfsRoot};
use sriov::Host;

use crate::table::{Align, Table};

/// Arguments of `accelnet sriov`.
#[derive(Debug, Args)]
pub struct SriovArgs {
    #[command(subcommand)]
    command: SriovCommand,
}

#[derive(Debug, Subcommand)]
enum SriovCommand {
    /// List SR-IOV physical functions and their virtual functions, read from sysfs.
    List(ListArgs),
}

/// Arguments of `accelnet sriov list`.
#[derive(Debug, Args)]
struct ListArgs {
    /// Directory holding the `sys/` tree to read (for tests and chroots).
    #[arg(long, value_name = "PATH", default_value = "/")]
    sysfs_root: PathBuf,
    /// Print the host as pretty JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// Runs `accelnet sriov ...`.
pub fn run(args: SriovArgs) -> anyhow::Result<()> {
    match args.command {
        SriovCommand::List(a) => list(&a),
    }
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let root = SysfsRoot::new(&args.sysfs_root);
    let host = discover(&root).context("SR-IOV discovery failed")?;
    let out = if args.json {
        let mut s =
            serde_json::to_string_pretty(&host).context("cannot encode the host as JSON")?;
        s.push('\n');
        s
    } else {
        render(&host, &root)
    };
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        // `accelnet sriov list | head` is not an error.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
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
    for (pf, vf) in host.vfs() {
        vfs.row(vec![
            vf.address.clone(),
            pf.address.clone(),
            vf.index.to_string(),
            opt(vf.netdev.as_deref()),
            opt(vf.driver.as_deref()),
            opt(vf.iommu_group),
            opt(vf.numa_node),
            if vf.rdma { "yes" } else { "no" }.to_string(),
        ]);
    }
    out.push_str(&vfs.render());
    out
}
