//! `accelnet sriov pool`: the VF pool, which hands each VF to at most one VM.
//!
//! The pool's state lives in a directory (default `/var/lib/accelnet/pool`), so every
//! `accelnet` process on the node shares it; see `sriov::pool` for the file format and
//! the locking. Resets go through rtnetlink (the PF's netdev).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use sriov::configure;
use sriov::mac::MacAddr;
use sriov::netlink::{Netlink, VfChange};
use sriov::pool::{
    Outcome, Owner, PoolEntry, PoolVf, Select, VfPool, VfReset, VfState, DEFAULT_PROC_ROOT,
};
use sriov::sysfs::SysfsRoot;

use crate::sriov_cmd::{discover_host, json, print, RootArgRef};
use crate::table::{Align, Table};

/// Arguments of `accelnet sriov pool`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// Directory holding the pool's state (pool.json, pool.lock).
    #[arg(long, value_name = "DIR", default_value = sriov::pool::DEFAULT_DIR, global = true)]
    state_dir: PathBuf,
    /// Directory holding the `sys/` tree to read (for tests and chroots).
    #[arg(long, value_name = "PATH", default_value = "/", global = true)]
    sysfs_root: PathBuf,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: PoolCommand,
}

#[derive(Debug, Subcommand)]
enum PoolCommand {
    /// Show every VF of the pool, its state and owner.
    List,
    /// Add the host's VFs to the pool (new ones free) and flag vanished ones.
    Sync,
    /// Give a free VF to a VM: reserve it, configure it, then record the owner.
    Alloc(AllocArgs),
    /// Take a VF back from its VM: reset it (MAC zeroed, VLAN 0, spoof check on,
    /// trust off, link auto) and free it.
    Release(ReleaseArgs),
    /// Take back the VFs of VMs whose process is gone, resetting them.
    Reclaim,
    /// Finish what a crash interrupted (reservations of dead processes, resets
    /// half-done) and retry quarantined VFs. Every pool command does this first.
    Repair,
}

/// Arguments of `accelnet sriov pool alloc`.
#[derive(Debug, Args)]
struct AllocArgs {
    /// The VM that gets the VF.
    #[arg(long)]
    vm: String,
    /// The VM's process (e.g. QEMU); when it is gone, `reclaim` takes the VF back.
    #[arg(long)]
    pid: Option<u32>,
    /// Only a VF of this PF (PCI address or netdev).
    #[arg(long)]
    pf: Option<String>,
    /// Exactly this VF (PCI address).
    #[arg(long)]
    vf: Option<String>,
    /// Only a VF on this NUMA node.
    #[arg(long)]
    numa: Option<u32>,
    /// Only a VF with an RDMA device.
    #[arg(long)]
    rdma: bool,
    /// Give the VF this MAC (the VM's) before it is handed over.
    #[arg(long)]
    mac: Option<MacAddr>,
    /// Bind the VF to vfio-pci before it is handed over.
    #[arg(long)]
    vfio: bool,
    /// Only a VF with the queue pairs this tier needs (low|medium|high).
    #[arg(long)]
    performance: Option<sriov::tiers::Tier>,
}

/// Arguments of `accelnet sriov pool release`.
#[derive(Debug, Args)]
struct ReleaseArgs {
    /// PCI address of the VF.
    vf: String,
    /// Refuse unless this VM owns the VF.
    #[arg(long)]
    vm: Option<String>,
}

/// Resets a VF through its PF's rtnetlink link.
#[derive(Debug)]
pub(crate) struct NetlinkReset;

impl VfReset for NetlinkReset {
    fn reset(&self, vf: &PoolVf) -> Result<(), String> {
        let netdev = vf.pf_netdev.as_deref().ok_or_else(|| {
            format!(
                "PF {} of VF {} has no network interface to reset it through",
                vf.pf, vf.vf
            )
        })?;
        let nl = Netlink::open().map_err(|e| e.to_string())?;
        nl.apply_vf(netdev, vf.index, &VfChange::reset())
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Runs `accelnet sriov pool ...`.
pub fn run(args: PoolArgs) -> anyhow::Result<()> {
    let pool = VfPool::open(&args.state_dir, Arc::new(NetlinkReset))
        .with_context(|| format!("cannot open the VF pool in {}", args.state_dir.display()))?;
    let root = SysfsRoot::new(&args.sysfs_root);
    let real = args.sysfs_root == std::path::Path::new("/");
    match &args.command {
        PoolCommand::List => {
            let entries = pool.list()?;
            if args.json {
                return print(&json(&entries)?);
            }
            print(&render(&entries))
        }
        PoolCommand::Sync => {
            let host = discover_host(&RootArgRef { root: &root, real })?;
            let report = pool.sync(&host)?;
            if args.json {
                return print(&json(&report)?);
            }
            print(&format!(
                "added {} removed {} missing {} returned {}\n",
                list(&report.added),
                list(&report.removed),
                list(&report.missing),
                list(&report.returned)
            ))
        }
        PoolCommand::Alloc(a) => alloc(&pool, &root, a, args.json),
        PoolCommand::Release(a) => {
            let outcome = pool.release(&a.vf, a.vm.as_deref())?;
            if args.json {
                print(&json(&outcome)?)?;
            } else if outcome == Outcome::Freed {
                print(&format!("{}: reset and free\n", a.vf))?;
            }
            if let Outcome::Quarantined { reason } = outcome {
                anyhow::bail!(
                    "{}: released, but its reset failed, so it is quarantined: {reason}",
                    a.vf
                );
            }
            Ok(())
        }
        PoolCommand::Reclaim => {
            let done = pool.reclaim_dead()?;
            if args.json {
                print(&json(&done)?)?;
            } else {
                let mut out = String::new();
                for r in &done {
                    out.push_str(&format!(
                        "{}: taken back from VM {}, {}\n",
                        r.vf,
                        r.owner.vm,
                        describe(&r.outcome)
                    ));
                }
                if done.is_empty() {
                    out.push_str("no VF held by a dead VM\n");
                }
                print(&out)?;
            }
            fail_on_quarantine(done.iter().map(|r| (&r.vf, &r.outcome)))
        }
        PoolCommand::Repair => {
            let done = pool.repair()?;
            if args.json {
                print(&json(&done)?)?;
            } else {
                let mut out = String::new();
                for r in &done {
                    out.push_str(&format!(
                        "{}: was {}, {}\n",
                        r.vf,
                        r.previous.kind(),
                        describe(&r.outcome)
                    ));
                }
                if done.is_empty() {
                    out.push_str("nothing to repair\n");
                }
                print(&out)?;
            }
            fail_on_quarantine(done.iter().map(|r| (&r.vf, &r.outcome)))
        }
    }
}

fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Freed => "reset and free".to_string(),
        Outcome::Quarantined { reason } => format!("reset failed, quarantined: {reason}"),
    }
}

/// Exit 1 when a VF could not be reset: it is out of the pool until repaired.
fn fail_on_quarantine<'a>(
    outcomes: impl Iterator<Item = (&'a String, &'a Outcome)>,
) -> anyhow::Result<()> {
    let stuck: Vec<&str> = outcomes
        .filter(|(_, o)| matches!(o, Outcome::Quarantined { .. }))
        .map(|(vf, _)| vf.as_str())
        .collect();
    if stuck.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "VF {} could not be reset and stays quarantined (see `accelnet sriov pool list`; \
             `accelnet sriov pool repair` retries)",
            stuck.join(", ")
        )
    }
}

/// Prepares a reserved VF for its VM: `change` through the PF's rtnetlink link
/// (nothing when empty), then vfio-pci when `vfio`.
pub(crate) fn configure_vf(
    root: &SysfsRoot,
    vf: &PoolVf,
    change: &VfChange,
    vfio: bool,
) -> anyhow::Result<()> {
    if !change.is_empty() {
        let netdev = vf
            .pf_netdev
            .as_deref()
            .with_context(|| format!("PF {} has no network interface", vf.pf))?;
        Netlink::open()?.apply_vf(netdev, vf.index, change)?;
    }
    if vfio {
        configure::bind_vfio(root, &vf.vf)?;
    }
    Ok(())
}

fn alloc(pool: &VfPool, root: &SysfsRoot, a: &AllocArgs, as_json: bool) -> anyhow::Result<()> {
    let owner = match a.pid {
        Some(pid) => Owner::process(&a.vm, pid, std::path::Path::new(DEFAULT_PROC_ROOT))?,
        None => Owner::vm(&a.vm),
    };
    let want = Select {
        pf: a.pf.clone(),
        vf: a.vf.clone(),
        numa: a.numa,
        rdma: a.rdma,
        performance: a.performance,
    };
    // Configure between reserve and commit: a failure (or a crash) gives the VF back.
    let change = VfChange {
        mac: a.mac,
        ..VfChange::default()
    };
    let vf = pool.allocate(&owner, &want, |vf| configure_vf(root, vf, &change, a.vfio))?;
    if as_json {
        return print(&json(&vf)?);
    }
    print(&format!(
        "{} (vf {} of {}) allocated to VM {}\n",
        vf.vf,
        vf.index,
        vf.pf_netdev.as_deref().unwrap_or(&vf.pf),
        a.vm
    ))
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".to_string()
    } else {
        v.join(",")
    }
}

fn render(entries: &[PoolEntry]) -> String {
    if entries.is_empty() {
        return "the VF pool is empty (run `accelnet sriov pool sync`)\n".to_string();
    }
    let mut t = Table::new(&[
        ("VF", Align::Left),
        ("PF", Align::Left),
        ("INDEX", Align::Right),
        ("QP", Align::Right),
        ("STATE", Align::Left),
        ("VM", Align::Left),
        ("PID", Align::Right),
        ("NOTE", Align::Left),
    ]);
    for e in entries {
        let owner = e.state.owner();
        let note = match &e.state {
            VfState::Quarantined { reason, .. } => reason.clone(),
            _ if e.missing => "missing from the host".to_string(),
            _ => String::new(),
        };
        t.row(vec![
            e.vf.vf.clone(),
            e.vf.pf_netdev.clone().unwrap_or_else(|| e.vf.pf.clone()),
            e.vf.index.to_string(),
            e.vf.queue_pairs
                .map_or_else(|| "-".to_string(), |q| q.to_string()),
            e.state.kind().to_string(),
            owner.map_or_else(|| "-".to_string(), |o| o.vm.clone()),
            owner
                .and_then(|o| o.pid)
                .map_or_else(|| "-".to_string(), |p| p.to_string()),
            note,
        ]);
    }
    t.render()
}
