//! `accelnet vm`: launch and drive VMs with the VF + synthetic pair.
//!
//! A launch writes the VM's record first (phase `launching`), then adds its port to
//! the running switch, takes its direct path (a VF from the pool, or the lab
//! stand-in tap), starts the VMM, and records the VMM's process (phase `running`).
//! Any failure undoes what was done, in reverse, and leaves the record `failed` with
//! the reason; a crash in between is found by the next command (`VmStore::repair`).

pub mod agent;
mod drain;
pub mod drill;
mod migrate;
mod monitor;
mod node;
mod path;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use sriov::mac::MacAddr;
use sriov::netlink::VfChange;
use sriov::pool::{Owner, PoolVf, Select, VfPool};
use sriov::sysfs::SysfsRoot;
use sriov::tiers::{self, Tier};
use vmm_plugin::ch::{ChOptions, ChVm};
use vmm_plugin::qemu::{QemuOptions, QemuVm};
use vmm_plugin::{DirectPath, StandinModel, SyntheticNic, VmSpec, Vmm, VmmKind};
use vswitch::config::PortConfig;
use vswitch::policy::PolicyConfig;
use vswitch::{Request, Response};

use crate::pool_cmd::{configure_vf, NetlinkReset};
use crate::sriov_cmd::{json, print};
use crate::table::{Align, Table};
use store::{DirectState, Listed, Phase, VmRecord, VmStore, RECORD_VERSION};

/// Arguments of `accelnet vm`.
#[derive(Debug, Args)]
pub struct VmArgs {
    #[command(flatten)]
    paths: Paths,
    #[command(subcommand)]
    command: VmCommand,
}

/// Arguments of `accelnet node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    #[command(flatten)]
    paths: Paths,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Run this node's agent: the destination side of live migrations, and
    /// host-reserved failover of this node's VMs.
    Agent(AgentArgs),
    /// Live-migrate every accelerated VM of this node to another node (rolled
    /// back per VM on failure).
    Drain(drain::DrainArgs),
}

/// Arguments of `accelnet node agent`.
#[derive(Debug, Args)]
struct AgentArgs {
    /// The agent's socket (what `accelnet vm migrate --to` names).
    #[arg(long, value_name = "PATH")]
    listen: PathBuf,
    /// Control socket of this node's switch.
    #[arg(long, value_name = "PATH")]
    switch_control: PathBuf,
    /// A VF stand-in of this node (lab: a tap on the embedded-switch bridge) that
    /// incoming VMs may take (repeatable).
    #[arg(long, value_name = "TAP")]
    standin_tap: Vec<String>,
    /// The VMM binary for incoming VMs (default: as `vm launch`).
    #[arg(long, value_name = "PATH")]
    vmm_binary: Option<PathBuf>,
    /// The node's name (default: the host name).
    #[arg(long)]
    node: Option<String>,
    /// Do not run host-reserved failover (by default the agent moves a VM whose
    /// direct path fails to the synthetic path, and back when the path returns).
    #[arg(long)]
    no_failover: bool,
    /// Seconds a failed direct path must be back before the VM moves back to it.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0, value_parser = seconds)]
    failover_hold_down: f64,
    /// Seconds a move back may take until the guest is seen on the direct path;
    /// past it the move is undone (retried up to 3 times).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = seconds)]
    failover_verify: f64,
    /// Milliseconds between two looks at the VMs' direct paths.
    #[arg(long, value_name = "MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    failover_interval_ms: u64,
}

/// A number of seconds from 0 to one day.
pub(super) fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=86_400.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not between 0 and 86400 seconds"))
    }
}

/// Runs `accelnet node ...`.
pub fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        match args.command {
            NodeCommand::Agent(a) => {
                let node = a.node.unwrap_or_else(node_name);
                if !a.no_failover {
                    let config = monitor::MonitorConfig {
                        failover: migration::failover::FailoverConfig {
                            hold_down: Duration::from_secs_f64(a.failover_hold_down),
                            verify_timeout: Duration::from_secs_f64(a.failover_verify),
                            ..migration::failover::FailoverConfig::default()
                        },
                        interval: Duration::from_millis(a.failover_interval_ms),
                        unplug_timeout: Duration::from_secs(10),
                    };
                    tokio::spawn(monitor::Monitor::new(args.paths.clone(), config).run());
                }
                let cfg = agent::AgentConfig {
                    paths: args.paths,
                    switch_control: a.switch_control,
                    standin_taps: a.standin_tap,
                    vmm_binary: a.vmm_binary,
                    node,
                };
                agent::serve(cfg, &a.listen).await
            }
            NodeCommand::Drain(a) => {
                let store = VmStore::open(&args.paths.store)?;
                store.repair(Path::new("/proc"))?;
                drain::run(&store, &args.paths, &a).await
            }
        }
    })
}

/// Where accelnet keeps its state; the same for every `vm` subcommand.
#[derive(Debug, Clone, Args)]
struct Paths {
    /// The VM store (an embedded single-file database).
    #[arg(long, value_name = "FILE", default_value = store::DEFAULT_PATH, global = true)]
    store: PathBuf,
    /// The VF pool's state directory.
    #[arg(long, value_name = "DIR", default_value = sriov::pool::DEFAULT_DIR, global = true)]
    pool_dir: PathBuf,
    /// Where each VM's sockets and logs go (`<run-dir>/<name>/`).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/run/accelnet/vms",
        global = true
    )]
    run_dir: PathBuf,
    /// Directory holding the `sys/` tree (for tests and chroots).
    #[arg(long, value_name = "PATH", default_value = "/", global = true)]
    sysfs_root: PathBuf,
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Start a VM with its synthetic NIC on the switch and, when accelerated, its
    /// direct path (a VF from the pool, or the lab stand-in).
    Launch(Box<LaunchArgs>),
    /// List the VMs accelnet knows, with their state.
    List(ListArgs),
    /// Stop VMs: shut the VMM down, remove the switch port, return the VF (reset).
    Stop(StopArgs),
    /// Forget stopped or failed VMs (their records go).
    Delete(DeleteArgs),
    /// Accelerate running VMs: hot-plug a direct path (a VF from the pool, or the
    /// lab stand-in) and move their traffic onto it (Enable-AccelNetVM).
    Enable(path::EnableArgs),
    /// Change the performance tier of accelerated VMs (Set-AccelNetVM).
    Set(path::SetArgs),
    /// Remove running VMs' direct paths and move their traffic to the synthetic
    /// path; a VF goes back to the pool (Disable-AccelNetVM).
    Disable(path::DisableArgs),
    /// Live-migrate a running VM, with its direct path, to the node whose agent
    /// listens on --to (unplug, migrate, announce, plug; rolled back on failure).
    Migrate(migrate::MigrateArgs),
}

/// Arguments of `accelnet vm delete`.
#[derive(Debug, Args)]
struct DeleteArgs {
    /// VM names.
    #[arg(required = true)]
    names: Vec<String>,
}

/// Which VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VmmArg {
    Qemu,
    CloudHypervisor,
}

impl From<VmmKind> for VmmArg {
    fn from(v: VmmKind) -> VmmArg {
        match v {
            VmmKind::Qemu => VmmArg::Qemu,
            VmmKind::CloudHypervisor => VmmArg::CloudHypervisor,
        }
    }
}

impl From<VmmArg> for VmmKind {
    fn from(v: VmmArg) -> VmmKind {
        match v {
            VmmArg::Qemu => VmmKind::Qemu,
            VmmArg::CloudHypervisor => VmmKind::CloudHypervisor,
        }
    }
}

/// Stand-in NIC models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModelArg {
    E1000e,
    Igb,
}

impl From<StandinModel> for ModelArg {
    fn from(m: StandinModel) -> ModelArg {
        match m {
            StandinModel::E1000e => ModelArg::E1000e,
            StandinModel::Igb => ModelArg::Igb,
        }
    }
}

impl From<ModelArg> for StandinModel {
    fn from(m: ModelArg) -> StandinModel {
        match m {
            ModelArg::E1000e => StandinModel::E1000e,
            ModelArg::Igb => StandinModel::Igb,
        }
    }
}

/// Arguments of `accelnet vm launch`.
#[derive(Debug, Args)]
struct LaunchArgs {
    /// VM name (letters, digits, '-', '_', '.'); also its switch port's name.
    name: String,
    /// The VMM.
    #[arg(long, value_enum, default_value = "qemu")]
    vmm: VmmArg,
    /// vCPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=512))]
    vcpus: u32,
    /// Guest RAM: a number of MiB, or with a unit (512M, 2G).
    #[arg(long, default_value = "512M", value_parser = parse_size_mib)]
    memory: u64,
    /// Kernel image (direct boot).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs (direct boot).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (direct boot).
    #[arg(long)]
    append: Option<String>,
    /// Disk image (repeatable).
    #[arg(long)]
    disk: Vec<PathBuf>,
    /// The VM's MAC, shared by both paths (default: derived from the name).
    #[arg(long)]
    mac: Option<MacAddr>,
    /// Control socket of the running switch.
    #[arg(long, value_name = "PATH")]
    switch_control: PathBuf,
    /// Access VLAN of the VM's switch port.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4094))]
    vlan: u16,
    /// Performance tier (queue pairs on both paths); default low with a direct path.
    #[arg(long, value_enum)]
    performance: Option<TierArg>,
    /// Queue pairs of a VM without a direct path.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=8), conflicts_with = "performance")]
    queues: u16,
    /// Direct path: this VF (PCI address), or `auto` for any free VF of the pool.
    #[arg(long, value_name = "PCI|auto", conflicts_with = "vf_standin")]
    vf: Option<String>,
    /// Direct path, lab stand-in for a VF: an emulated NIC (QEMU only) on this
    /// existing tap, which must be attached to the wire directly.
    #[arg(long, value_name = "TAP")]
    vf_standin: Option<String>,
    /// Model of the stand-in NIC.
    #[arg(long, value_enum, default_value = "e1000e", requires = "vf_standin")]
    standin_model: ModelArg,
    /// The VMM binary (default: `qemu-system-x86_64` / `cloud-hypervisor`, or
    /// ACCELNET_QEMU / ACCELNET_CLOUD_HYPERVISOR).
    #[arg(long, value_name = "PATH")]
    vmm_binary: Option<PathBuf>,
    /// Print the record as JSON.
    #[arg(long)]
    json: bool,
    /// Set by a live migration's destination (the node agent), never by the CLI.
    #[arg(skip)]
    incoming: Option<Incoming>,
}

/// A launch that takes the VM in from a live migration: the VMM starts paused on
/// `uri` without the direct path, which is reserved and plugged after the switchover.
#[derive(Debug, Clone)]
struct Incoming {
    /// Where the VMM listens for the migration stream (`unix:PATH`).
    pub uri: String,
    /// The source's queue pairs: the device must match it exactly.
    pub queue_pairs: u16,
}

/// Performance tiers, as the seed names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TierArg {
    Low,
    Medium,
    High,
}

impl From<TierArg> for Tier {
    fn from(t: TierArg) -> Tier {
        match t {
            TierArg::Low => Tier::Low,
            TierArg::Medium => Tier::Medium,
            TierArg::High => Tier::High,
        }
    }
}

impl From<Tier> for TierArg {
    fn from(t: Tier) -> TierArg {
        match t {
            Tier::Low => TierArg::Low,
            Tier::Medium => TierArg::Medium,
            Tier::High => TierArg::High,
        }
    }
}

/// Arguments of `accelnet vm list`.
#[derive(Debug, Args)]
struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `accelnet vm stop`.
#[derive(Debug, Args)]
struct StopArgs {
    /// VM names.
    #[arg(required = true)]
    names: Vec<String>,
    /// Seconds to wait for a clean exit before killing the VMM.
    #[arg(long, default_value_t = 10)]
    grace: u64,
}

/// `512`, `512M`, `2G`, `1024k`... as MiB.
fn parse_size_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult_kib) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        None => (t, 1024),
        Some((i, _)) => {
            let unit = t[i..].to_ascii_lowercase();
            let m = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "k" => 1,
                "m" => 1024,
                "g" => 1024 * 1024,
                "t" => 1024 * 1024 * 1024,
                _ => return Err(format!("unknown unit in {s:?}: use M or G (e.g. 512M, 2G)")),
            };
            (&t[..i], m)
        }
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512M, 2G)"))?;
    let mib = n.saturating_mul(mult_kib) / 1024;
    if mib < 64 {
        return Err(format!("{s} is below the 64 MiB minimum"));
    }
    Ok(mib)
}

/// A VM name is also a switch port name and a directory name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.starts_with('.');
    if !ok {
        bail!(
            "invalid VM name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        );
    }
    Ok(())
}

/// A locally administered MAC derived from the name (stable across launches).
fn mac_for(name: &str) -> MacAddr {
    // FNV-1a: small, stable, good enough to spread names.
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let b = h.to_be_bytes();
    MacAddr([0x52, 0x54, 0x00, b[1], b[2], b[3]])
}

/// Whether SMT (hyperthreading) is active on this host.
fn host_ht(root: &Path) -> bool {
    std::fs::read_to_string(root.join("sys/devices/system/cpu/smt/active"))
        .is_ok_and(|s| s.trim() == "1")
}

/// The node and vCPU checks of `tier` for VM `name` with `vcpus`, and the VF's
/// queue pairs `hw` when known; the VM's queue pairs.
fn tier_queue_pairs(
    paths: &Paths,
    name: &str,
    vcpus: u32,
    tier: Tier,
    hw: Option<u16>,
) -> anyhow::Result<u16> {
    let ht = host_ht(&paths.sysfs_root);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    tiers::check_node_cpus(tier, name, cpus, ht).map_err(anyhow::Error::new)?;
    tiers::queue_pairs(tier, vcpus, ht, hw).map_err(|e| {
        let vf = hw.map_or(String::new(), |q| format!(", its VF {q} queue pair(s)"));
        anyhow::anyhow!("{e} (VM {name}: {vcpus} vCPUs{vf})")
    })
}

/// The hardware queue pairs of pool VF `vf`, when the pool knows them.
fn vf_queue_pairs(paths: &Paths, vf: &str) -> Option<u16> {
    let pool = open_pool(paths).ok()?;
    let listed = pool.list().ok()?;
    listed.into_iter().find(|e| e.vf.vf == vf)?.vf.queue_pairs
}

/// A VF for VM `vm` from the pool (synced with the host first): `want` is a PCI
/// address or `auto`, with the queue pairs `performance` needs. It gets the VM's
/// MAC and spoof checking, and is bound to vfio-pci before the pool commits it.
fn allocate_vf(
    paths: &Paths,
    root: &SysfsRoot,
    vm: &str,
    want: &str,
    performance: Option<Tier>,
    mac: MacAddr,
) -> anyhow::Result<PoolVf> {
    let pool = open_pool(paths)?;
    pool.sync(&crate::sriov_cmd::discover_host(
        &crate::sriov_cmd::RootArgRef {
            root,
            real: paths.sysfs_root == Path::new("/"),
        },
    )?)?;
    let select = Select {
        vf: (want != "auto").then(|| want.to_string()),
        performance,
        ..Select::default()
    };
    Ok(pool.allocate(&Owner::vm(vm), &select, |vf| {
        let change = VfChange {
            mac: Some(mac),
            spoof_check: Some(true),
            ..VfChange::default()
        };
        configure_vf(root, vf, &change, true)
    })?)
}

/// Runs `accelnet vm ...`.
pub fn run(args: VmArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let store = VmStore::open(&args.paths.store)?;
        for r in store.repair(Path::new("/proc"))? {
            log::warn!("VM {}: was {}, now {} (found at start)", r.vm, r.was, r.now);
        }
        match args.command {
            VmCommand::Launch(a) => launch(&store, &args.paths, &a).await,
            VmCommand::List(a) => list(&store, &a),
            VmCommand::Enable(a) => path::enable(&store, &args.paths, &a).await,
            VmCommand::Disable(a) => path::disable(&store, &args.paths, &a).await,
            VmCommand::Migrate(a) => migrate::migrate(&store, &args.paths, &a).await,
            VmCommand::Set(a) => path::set(&store, &args.paths, &a),
            VmCommand::Delete(a) => {
                for name in &a.names {
                    let rec = store.get(name)?;
                    if !matches!(rec.phase, Phase::Stopped | Phase::Failed { .. }) {
                        bail!("VM {name} is {}: stop it first", rec.phase.name());
                    }
                    store.remove(name)?;
                    let _ = std::fs::remove_dir_all(&rec.run_dir);
                    eprintln!("VM {name} deleted");
                }
                Ok(())
            }
            VmCommand::Stop(a) => {
                let mut failed = Vec::new();
                for name in &a.names {
                    if let Err(e) =
                        stop(&store, &args.paths, name, Duration::from_secs(a.grace)).await
                    {
                        eprintln!("accelnet: {}", vm_error(name, &e));
                        failed.push(name.as_str());
                    }
                }
                if failed.is_empty() {
                    Ok(())
                } else {
                    bail!("could not stop {}", failed.join(", "))
                }
            }
        }
    })
}

fn open_pool(paths: &Paths) -> anyhow::Result<VfPool> {
    VfPool::open(&paths.pool_dir, Arc::new(NetlinkReset))
        .with_context(|| format!("cannot open the VF pool in {}", paths.pool_dir.display()))
}

/// Gives VF `vf` of VM `name` back to the pool (reset); returns why it was
/// quarantined instead, if it was.
fn release_vf(paths: &Paths, vf: &str, name: &str) -> anyhow::Result<Option<String>> {
    Ok(match open_pool(paths)?.release(vf, Some(name))? {
        sriov::pool::Outcome::Quarantined { reason } => Some(reason),
        _ => None,
    })
}

/// Removes VM `rec`'s switch port; a port that is gone already is fine.
fn remove_switch_port(rec: &VmRecord) -> anyhow::Result<()> {
    match vswitch::control::request(
        &rec.switch_control,
        &Request::PortDel {
            name: rec.port.clone(),
        },
    ) {
        Ok(Response::PortDeleted { .. }) => Ok(()),
        Ok(Response::Error { message }) if message.contains("no VM port named") => Ok(()),
        Ok(other) => bail!("removing its switch port: {other:?}"),
        Err(e) => bail!("cannot reach the switch to remove its port: {e}"),
    }
}

/// This node's name: its host name.
fn node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "localhost".into(), |s| s.trim().to_string())
}

/// A direct path for humans (`VF 0000:3b:02.1`, `lab stand-in e1000e on tap t`),
/// with `(vfio-pci)` / `(not a VF)` after it when `with_kind`.
fn direct_label(d: &DirectPath, with_kind: bool) -> String {
    let (label, kind) = match d {
        DirectPath::Vf { pci } => (format!("VF {pci}"), "vfio-pci"),
        DirectPath::Standin { tap, model } => (
            format!("lab stand-in {} on tap {tap}", model.qemu_device()),
            "not a VF",
        ),
    };
    if with_kind {
        format!("{label} ({kind})")
    } else {
        label
    }
}

/// A switch control request that must succeed.
fn switch_request(control: &Path, req: &Request) -> anyhow::Result<Response> {
    let resp = vswitch::control::request(control, req)
        .with_context(|| format!("cannot reach the switch at {}", control.display()))?;
    if let Response::Error { message } = &resp {
        bail!("the switch refused: {message}");
    }
    Ok(resp)
}

/// The VMM driver for a record.
async fn vmm_for(
    rec: &VmRecord,
    binary: Option<&Path>,
    attach: bool,
) -> anyhow::Result<Box<dyn Vmm>> {
    Ok(match rec.vmm {
        VmmKind::Qemu => {
            let mut opts = QemuOptions::new(&rec.run_dir);
            if let Some(b) = binary {
                opts.binary = b.to_path_buf();
            }
            if attach {
                let pid = rec.pid.context("no VMM process recorded")?;
                Box::new(QemuVm::attach(rec.spec.clone(), opts, pid).await?)
            } else {
                Box::new(QemuVm::new(rec.spec.clone(), opts)?)
            }
        }
        VmmKind::CloudHypervisor => {
            let binary = binary.map(Path::to_path_buf).unwrap_or_else(|| {
                std::env::var_os("ACCELNET_CLOUD_HYPERVISOR")
                    .map_or_else(|| PathBuf::from("cloud-hypervisor"), PathBuf::from)
            });
            let opts = ChOptions::new(binary, &rec.run_dir);
            if attach {
                Box::new(ChVm::attach(rec.spec.clone(), opts, rec.pid).await?)
            } else {
                Box::new(ChVm::new(rec.spec.clone(), opts)?)
            }
        }
    })
}

/// What a launch has done so far, to undo on failure (in reverse).
#[derive(Default)]
struct Undo {
    steering: Option<sriov::steer::Steering>,
    port: Option<(PathBuf, String)>,
    vf: Option<String>,
    vmm: Option<Box<dyn Vmm>>,
}

impl Undo {
    async fn run(mut self, paths: &Paths, vm: &str) {
        if let Some(mut v) = self.vmm.take() {
            if let Err(e) = v.stop(Duration::from_secs(5)).await {
                log::warn!("VM {vm}: undo: cannot stop the VMM: {e}");
            }
        }
        if let Some(vf) = self.vf.take() {
            match open_pool(paths).and_then(|p| Ok(p.release(&vf, Some(vm))?)) {
                Ok(_) => {}
                Err(e) => log::warn!("VM {vm}: undo: cannot return VF {vf} to the pool: {e:#}"),
            }
        }
        path::unsteer(self.steering.take().as_ref());
        if let Some((control, port)) = self.port.take() {
            if let Err(e) = switch_request(&control, &Request::PortDel { name: port }) {
                log::warn!("VM {vm}: undo: cannot remove its switch port: {e:#}");
            }
        }
    }
}

async fn launch(store: &VmStore, paths: &Paths, a: &LaunchArgs) -> anyhow::Result<()> {
    let rec = launch_record(store, paths, a).await?;
    if a.json {
        return print(&json(&rec)?);
    }
    let mut out = format!(
        "VM {} running on {} (pid {}), MAC {}, {} queue pair(s)\n  synthetic path: switch port {} ({})\n",
        rec.name(),
        rec.vmm,
        rec.pid.map_or("-".into(), |p| p.to_string()),
        rec.spec.nic.mac,
        rec.spec.nic.queue_pairs,
        rec.port,
        rec.spec.nic.socket.display()
    );
    match &rec.spec.direct {
        Some(d) => out.push_str(&format!("  direct path: {}\n", direct_label(d, true))),
        None => out.push_str("  direct path: none (not accelerated)\n"),
    }
    if rec.vmm == VmmKind::CloudHypervisor && rec.spec.direct.is_some() {
        out.push_str(
            "  note: cloud-hypervisor has no virtio-net STANDBY (failover) support: the guest \
             sees two NICs, and accelnet switches paths itself (removes the VF, makes the \
             synthetic path carry the MAC, re-adds it)\n",
        );
    }
    print(&out)
}

/// Launches the VM of `a` (or, with `a.incoming`, starts its migration
/// destination) and records it; on failure everything it set up is undone and
/// the record says why.
async fn launch_record(store: &VmStore, paths: &Paths, a: &LaunchArgs) -> anyhow::Result<VmRecord> {
    check_name(&a.name)?;
    let root = SysfsRoot::new(&paths.sysfs_root);
    let vmm: VmmKind = a.vmm.into();
    let has_direct = a.vf.is_some() || a.vf_standin.is_some();
    if vmm == VmmKind::CloudHypervisor && a.vf_standin.is_some() {
        bail!(
            "--vf-standin is QEMU-only (an emulated NIC on a tap); cloud-hypervisor needs a real VF (--vf)"
        );
    }
    let tier: Option<Tier> = match (a.performance, has_direct) {
        (Some(t), true) => Some(t.into()),
        (None, true) => Some(Tier::Low),
        (Some(_), false) => bail!(
            "--performance needs a direct path: give --vf PCI|auto (or --vf-standin TAP in the lab)"
        ),
        (None, false) => None,
    };
    let queue_pairs = match tier {
        Some(t) => tier_queue_pairs(paths, &a.name, a.vcpus, t, None)?,
        None => a.queues,
    };
    // A migration's destination device must be the source's.
    let queue_pairs = a.incoming.as_ref().map_or(queue_pairs, |i| i.queue_pairs);
    let mac = a.mac.unwrap_or_else(|| mac_for(&a.name));
    if mac.is_multicast() || mac.is_zero() {
        bail!("--mac {mac}: a VM needs a unicast, non-zero MAC");
    }
    let run_dir = paths.run_dir.join(&a.name);
    let socket = run_dir.join("net.sock");
    let direct = match (&a.vf, &a.vf_standin) {
        (_, Some(tap)) => {
            if !Path::new("/sys/class/net").join(tap).exists() {
                bail!("--vf-standin {tap}: no such interface (create the tap and attach it to the wire first)");
            }
            Some(DirectPath::Standin {
                tap: tap.clone(),
                model: a.standin_model.into(),
            })
        }
        // The VF's address is known after the pool gives it.
        (Some(_), None) => None,
        (None, None) => None,
    };
    let spec = VmSpec {
        name: a.name.clone(),
        vcpus: a.vcpus,
        memory_mib: a.memory,
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        cmdline: a.append.clone(),
        disks: a.disk.clone(),
        nic: SyntheticNic {
            mac: mac.to_string(),
            socket: socket.clone(),
            queue_pairs,
        },
        direct,
        console_log: Some(run_dir.join("console.log")),
        incoming: false,
    };
    let mut rec = VmRecord {
        version: RECORD_VERSION,
        vmm,
        spec,
        performance: tier,
        port: a.name.clone(),
        switch_control: a.switch_control.clone(),
        vlan: a.vlan,
        vf: None,
        direct: if has_direct {
            DirectState::Attached
        } else {
            DirectState::None
        },
        steering: None,
        vf_select: a.vf.clone(),
        failover: None,
        pid: None,
        start_time: None,
        run_dir: run_dir.clone(),
        phase: Phase::Launching,
        updated: store::now(),
    };
    // The record first: a crash from here on is found and repaired.
    store.insert(&rec)?;
    let mut undo = Undo::default();
    let res = launch_steps(store, paths, a, &root, &mut rec, &mut undo).await;
    match res {
        Ok(()) => Ok(rec),
        Err(e) => {
            undo.run(paths, &a.name).await;
            let reason = format!("{e:#}");
            if let Err(e2) = store.update(&a.name, |r| {
                r.phase = Phase::Failed {
                    reason: reason.clone(),
                };
                r.pid = None;
                r.start_time = None;
                r.vf = None;
                Ok(())
            }) {
                log::warn!("VM {}: cannot record the failure: {e2}", a.name);
            }
            Err(e.context(format!(
                "launch of VM {} failed; everything it set up was undone",
                a.name
            )))
        }
    }
}

async fn launch_steps(
    store: &VmStore,
    paths: &Paths,
    a: &LaunchArgs,
    root: &SysfsRoot,
    rec: &mut VmRecord,
    undo: &mut Undo,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&rec.run_dir)
        .with_context(|| format!("cannot create {}", rec.run_dir.display()))?;
    let mac: MacAddr = rec.spec.nic.mac.parse()?;
    // 1. The direct path: a VF from the pool, with the VM's MAC, on vfio-pci. First,
    //    so a VF that is owned or too small is refused before anything else changes.
    let mut allocated = None;
    if let Some(want) = &a.vf {
        let vf = allocate_vf(paths, root, &rec.spec.name, want, rec.performance, mac)?;
        undo.vf = Some(vf.vf.clone());
        rec.vf = Some(vf.vf.clone());
        allocated = Some(vf.clone());
        rec.spec.direct = Some(DirectPath::Vf { pci: vf.vf.clone() });
        // Both paths get the same queue pairs: no more than the VF has (the pool
        // gave one with at least the tier's minimum).
        if let Some(hw) = vf.queue_pairs {
            rec.spec.nic.queue_pairs = rec.spec.nic.queue_pairs.min(hw);
        }
        let (direct, queue_pairs) = (rec.spec.direct.clone(), rec.spec.nic.queue_pairs);
        store.update(rec.name(), |r| {
            r.vf = Some(vf.vf.clone());
            r.spec.direct = direct.clone();
            r.spec.nic.queue_pairs = queue_pairs;
            Ok(())
        })?;
    }
    // 2. The synthetic path: a port on the switch, only the VM's MAC may send.
    switch_request(
        &rec.switch_control,
        &Request::PortAdd {
            port: port_config(rec, mac),
        },
    )?;
    undo.port = Some((rec.switch_control.clone(), rec.port.clone()));
    // 3. The embedded switch sends the VM's MAC to the direct path, which QEMU
    //    plugs from the start; a migration's destination keeps it on the switch
    //    until the direct path is plugged after the switchover.
    let steering = match &rec.spec.direct {
        Some(DirectPath::Standin { tap, .. }) => {
            Some(path::standin_steering(&rec.switch_control, tap, mac)?)
        }
        Some(DirectPath::Vf { .. }) => {
            let vf = allocated.as_ref().context("no VF allocated")?;
            Some(path::vf_steering(vf, mac)?)
        }
        None => None,
    };
    if let Some(s) = &steering {
        undo.steering = Some(s.clone());
        let to = if a.incoming.is_some() {
            sriov::steer::Route::Synthetic
        } else {
            sriov::steer::Route::Direct
        };
        path::route(Some(s), to)?;
        rec.steering = Some(s.clone());
        store.update(rec.name(), |r| {
            r.steering = Some(s.clone());
            Ok(())
        })?;
    }
    // 4. The VMM; a destination starts paused, without the direct path (the
    //    source unplugged its own), listening for the migration stream.
    let vmm_rec = match &a.incoming {
        Some(_) => {
            let mut r = rec.clone();
            r.spec.direct = None;
            r.spec.incoming = true;
            r
        }
        None => rec.clone(),
    };
    let mut vmm = vmm_for(&vmm_rec, a.vmm_binary.as_deref(), false).await?;
    let started = vmm.start().await;
    let started = match (started, &a.incoming) {
        (Ok(()), Some(i)) => vmm.receive_migration(&i.uri).await,
        (other, _) => other,
    };
    let status = match started {
        Ok(()) => vmm.status().await,
        Err(e) => Err(e),
    };
    undo.vmm = Some(vmm);
    let status = status?;
    rec.pid = status.pid;
    rec.start_time = status
        .pid
        .and_then(|p| sriov::pool::process_start_time(Path::new("/proc"), p));
    let (phase, direct) = match (&a.incoming, rec.direct) {
        (Some(_), DirectState::Attached) => (Phase::Incoming, DirectState::Detached),
        (Some(_), d) => (Phase::Incoming, d),
        (None, d) => (Phase::Running, d),
    };
    let (pid, start_time) = (rec.pid, rec.start_time);
    *rec = store.update(rec.name(), |r| {
        r.pid = pid;
        r.start_time = start_time;
        r.phase = phase.clone();
        r.direct = direct;
        Ok(())
    })?;
    // Launched: nothing to undo any more. The VMM handle is dropped without
    // stopping the VM (it runs in its own process group).
    undo.vmm = None;
    undo.vf = None;
    undo.port = None;
    undo.steering = None;
    Ok(())
}

#[derive(Serialize)]
struct ListRow<'a> {
    name: &'a str,
    vmm: VmmKind,
    phase: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    vcpus: u32,
    memory_mib: u64,
    mac: &'a str,
    port: &'a str,
    direct: DirectState,
    /// Set while the node agent's failover has the VM off its failed direct path.
    #[serde(skip_serializing_if = "Option::is_none")]
    failover: Option<&'a store::FailoverNote>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vf: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    performance: Option<Tier>,
    queue_pairs: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
}

fn list(store: &VmStore, a: &ListArgs) -> anyhow::Result<()> {
    let listed = store.list()?;
    let mut rows = Vec::new();
    let mut corrupt = Vec::new();
    for l in &listed {
        match l {
            Listed::Ok(r) => rows.push(ListRow {
                name: r.name(),
                vmm: r.vmm,
                phase: r.phase.name(),
                reason: match &r.phase {
                    Phase::Failed { reason } => Some(reason),
                    _ => None,
                },
                vcpus: r.spec.vcpus,
                memory_mib: r.spec.memory_mib,
                mac: &r.spec.nic.mac,
                port: &r.port,
                direct: r.direct,
                failover: r.failover.as_ref(),
                vf: match &r.spec.direct {
                    Some(DirectPath::Vf { pci }) => Some(pci),
                    Some(DirectPath::Standin { tap, .. }) => Some(tap),
                    None => None,
                },
                performance: r.performance,
                queue_pairs: r.spec.nic.queue_pairs,
                pid: r.pid,
            }),
            Listed::Corrupt { vm, message } => corrupt.push((vm, message)),
        }
    }
    for (vm, message) in &corrupt {
        eprintln!("accelnet: VM {vm}: {message}");
    }
    if a.json {
        print(&json(&rows)?)?;
    } else if rows.is_empty() && corrupt.is_empty() {
        print("no VMs\n")?;
    } else {
        let mut t = Table::new(&[
            ("NAME", Align::Left),
            ("VMM", Align::Left),
            ("STATE", Align::Left),
            ("VCPUS", Align::Right),
            ("MEMORY", Align::Right),
            ("MAC", Align::Left),
            ("DIRECT", Align::Left),
            ("VF", Align::Left),
            ("TIER", Align::Left),
            ("QP", Align::Right),
            ("PID", Align::Right),
        ]);
        for r in &rows {
            t.row(vec![
                r.name.to_string(),
                r.vmm.to_string(),
                r.phase.to_string(),
                r.vcpus.to_string(),
                format!("{}M", r.memory_mib),
                r.mac.to_string(),
                match (r.direct, r.failover) {
                    (_, Some(f)) => format!("detached, failover {} ({})", f.state, f.cause),
                    (DirectState::None, None) => "-".to_string(),
                    (DirectState::Attached, None) => "attached".to_string(),
                    (DirectState::Detached, None) => "detached".to_string(),
                },
                r.vf.unwrap_or("-").to_string(),
                r.performance
                    .map_or("-".to_string(), |t| format!("{t:?}").to_lowercase()),
                r.queue_pairs.to_string(),
                r.pid.map_or("-".to_string(), |p| p.to_string()),
            ]);
        }
        let mut out = t.render();
        for r in &rows {
            if let Some(reason) = r.reason {
                out.push_str(&format!("{}: failed: {reason}\n", r.name));
            }
        }
        print(&out)?;
    }
    if corrupt.is_empty() {
        Ok(())
    } else {
        bail!("{} VM record(s) are unreadable (see above)", corrupt.len())
    }
}

async fn stop(store: &VmStore, paths: &Paths, name: &str, grace: Duration) -> anyhow::Result<()> {
    let rec = store.get(name)?;
    if matches!(rec.phase, Phase::Stopped) {
        bail!("already stopped");
    }
    store.update(name, |r| {
        r.phase = Phase::Stopping;
        Ok(())
    })?;
    if rec.process_alive(Path::new("/proc")) {
        let mut vmm = vmm_for(&rec, None, true).await?;
        vmm.stop(grace).await?;
    }
    if let Err(e) = remove_switch_port(&rec) {
        log::warn!("VM {name}: {e:#}");
    }
    path::unsteer(rec.steering.as_ref());
    if let Some(vf) = &rec.vf {
        if let Some(reason) = release_vf(paths, vf, name)? {
            log::warn!("VM {name}: VF {vf} could not be reset and is quarantined: {reason}");
        }
    }
    store.update(name, |r| {
        r.phase = Phase::Stopped;
        r.pid = None;
        r.start_time = None;
        r.vf = None;
        if r.direct == DirectState::Attached {
            r.direct = DirectState::Detached;
        }
        Ok(())
    })?;
    eprintln!("VM {name} stopped");
    Ok(())
}

/// One operation at a time per VM, across processes: `vm migrate`, `vm enable`,
/// `vm disable`, `drill` and the node agent's failover hold
/// `<run_dir>/<name>/op.lock` (an advisory file lock) for as long as they change
/// the VM. The holder writes what it does into the file, for the refusal.
#[derive(Debug)]
pub(super) struct OpLock {
    _file: std::fs::File,
}

impl OpLock {
    fn path(rec: &VmRecord) -> PathBuf {
        rec.run_dir.join("op.lock")
    }

    /// Takes the lock for `what` (e.g. `a migration`), or says what holds it.
    pub(super) fn try_take(rec: &VmRecord, what: &str) -> anyhow::Result<Result<OpLock, String>> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(&rec.run_dir)
            .with_context(|| format!("cannot create {}", rec.run_dir.display()))?;
        let path = Self::path(rec);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            // Best effort: the holder may be writing it right now.
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Ok(Err(if holder.is_empty() {
                "another operation".to_string()
            } else {
                holder.to_string()
            }));
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{what} (pid {})", std::process::id())?;
        Ok(Ok(OpLock { _file: file }))
    }

    /// Takes the lock for `what`, or fails saying the VM is busy and with what.
    /// A holder that lets go within a second (the node agent's failover looks at
    /// the VM under the lock every few milliseconds) is waited for.
    pub(super) fn take(rec: &VmRecord, what: &str) -> anyhow::Result<OpLock> {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            match Self::try_take(rec, what)? {
                Ok(lock) => return Ok(lock),
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(holder) => bail!(
                    "VM {} is busy: {holder} is in progress (lock {} held)",
                    rec.name(),
                    Self::path(rec).display()
                ),
            }
        }
    }
}

/// The switch port of `rec`'s synthetic NIC: its vhost-user socket, VLAN and
/// queues, and only the VM's MAC may send.
fn port_config(rec: &VmRecord, mac: MacAddr) -> PortConfig {
    let mut port = PortConfig::new(&rec.spec.nic.socket);
    port.name = Some(rec.port.clone());
    port.vlan = rec.vlan;
    port.queues = rec.spec.nic.queue_pairs;
    port.policy = PolicyConfig {
        allowed_macs: vec![vswitch::MacAddr(mac.0)],
        ..PolicyConfig::default()
    };
    port
}

/// `rec`'s switch port as [`restore_switch_port`] found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PortFound {
    /// There, with its VMM connected or not (yet).
    Present {
        /// The VMM is connected.
        connected: bool,
    },
    /// Missing: added again.
    Restored,
}

/// Adds `rec`'s port again to a switch that lost it (restarted: ports added at
/// run time are not in its command line); the VMM reconnects to the socket.
pub(super) fn restore_switch_port(rec: &VmRecord) -> anyhow::Result<PortFound> {
    if let Some(found) = present_port(rec)? {
        return Ok(found);
    }
    let mac: MacAddr = rec.spec.nic.mac.parse()?;
    let added = switch_request(
        &rec.switch_control,
        &Request::PortAdd {
            port: port_config(rec, mac),
        },
    );
    if let Err(e) = added {
        // The node agent and a drill both restore ports: the other may have been
        // first.
        return match present_port(rec)? {
            Some(found) => Ok(found),
            None => Err(e),
        };
    }
    log::info!(
        "VM {}: port {} added again to the switch at {}",
        rec.name(),
        rec.port,
        rec.switch_control.display()
    );
    Ok(PortFound::Restored)
}

/// The VM's port if the switch has it.
fn present_port(rec: &VmRecord) -> anyhow::Result<Option<PortFound>> {
    let ports = match switch_request(&rec.switch_control, &Request::Ports {})? {
        Response::Ports { ports } => ports,
        other => bail!("the switch answered {other:?} to a port list"),
    };
    Ok(ports
        .iter()
        .find(|p| p.name == rec.port)
        .map(|p| PortFound::Present {
            connected: p.connected,
        }))
}

/// `e` as a line about VM `name`: prefixed with its name unless it names it
/// already ("VM vm1 is busy: ...").
pub(super) fn vm_error(name: &str, e: &anyhow::Error) -> String {
    let e = format!("{e:#}");
    if e.starts_with(&format!("VM {name} ")) || e.starts_with(&format!("VM {name}:")) {
        e
    } else {
        format!("VM {name}: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_vm_error_names_the_vm_once() {
        let busy = anyhow::anyhow!("VM vm1 is busy: a migration (pid 1) is in progress");
        assert_eq!(vm_error("vm1", &busy), busy.to_string());
        let other = anyhow::anyhow!("VM vm10 is busy: x");
        assert_eq!(vm_error("vm1", &other), "VM vm1: VM vm10 is busy: x");
        let plain = anyhow::anyhow!("no such VM").context("cannot stop");
        assert_eq!(vm_error("vm1", &plain), "VM vm1: cannot stop: no such VM");
    }

    #[test]
    fn test_sizes() {
        assert_eq!(parse_size_mib("512M"), Ok(512));
        assert_eq!(parse_size_mib("2G"), Ok(2048));
        assert_eq!(parse_size_mib("2GiB"), Ok(2048));
        assert_eq!(parse_size_mib("1024"), Ok(1024));
        assert_eq!(parse_size_mib("131072k"), Ok(128));
        assert!(parse_size_mib("32M").unwrap_err().contains("64 MiB"));
        assert!(parse_size_mib("12X").unwrap_err().contains("unknown unit"));
        assert!(parse_size_mib("M").unwrap_err().contains("not a size"));
    }

    #[test]
    fn test_names_and_macs() {
        assert!(check_name("web-1.prod_a").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let m = mac_for("web1");
        assert_eq!(m, mac_for("web1"));
        assert_ne!(m, mac_for("web2"));
        assert_eq!(&m.0[..3], &[0x52, 0x54, 0x00]);
    }
}
