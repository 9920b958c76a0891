//! The node agent: the destination side of a live migration, served on a unix
//! socket to the source's `accelnet vm migrate`.
//!
//! One JSON request per connection, one JSON response back. Each request runs to
//! its end before the next starts (they change this node's switch, VF pool and VM
//! store). The agent keeps no state of its own: the VM store has it, so an agent
//! restarted between two requests carries on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sriov::tiers::Tier;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use vmm_plugin::{DirectPath, StandinModel, VmmKind};
use vswitch::Request;

use migration::live::OpError;

use super::node::{LocalNode, NodeAnswer, NodeOp};
use super::path::CLASS_NET;
use super::store::{DirectState, Phase, VmRecord, VmStore};
use super::{
    direct_label, launch_record, switch_request, Incoming, LaunchArgs, ModelArg, Paths, VmmArg,
};

/// Longest request line accepted (a VM spec is well under this).
const MAX_REQUEST: u64 = 1 << 20;

/// What the source asks for a VM's direct path at the destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DirectWant {
    /// A VF of the destination's pool (`auto` or a PCI address).
    Vf {
        /// `auto` or a PCI address.
        select: String,
    },
    /// The lab stand-in: an emulated NIC on a tap of the destination (`None`:
    /// any free one of the agent's `--standin-tap`s).
    Standin {
        /// The tap, or any free one.
        tap: Option<String>,
        /// The emulated NIC.
        model: StandinModel,
    },
}

/// The VM a migration brings in: what the destination needs to start its VMM
/// with the same devices.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncomingVm {
    /// VM name.
    pub name: String,
    /// Which VMM.
    pub vmm: VmmKind,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Kernel image (shared storage: the same path on both nodes).
    pub kernel: Option<PathBuf>,
    /// Initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Disk images (shared storage).
    pub disks: Vec<PathBuf>,
    /// The VM's MAC.
    pub mac: String,
    /// Queue pairs of the synthetic NIC (must match the source's device).
    pub queue_pairs: u16,
    /// Access VLAN of the switch port.
    pub vlan: u16,
    /// Performance tier, when accelerated.
    pub performance: Option<Tier>,
    /// The direct path to plug after the switchover.
    pub direct: Option<DirectWant>,
}

/// A request to the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum AgentRequest {
    /// Is the agent there, and its switch; which node.
    Ping,
    /// Could a VM be admitted: is a direct path of the kind it wants free.
    Check {
        /// The VM.
        vm: Box<IncomingVm>,
    },
    /// Admit a VM: take its direct path, add its switch port, start its VMM
    /// waiting for the migration stream.
    Admit {
        /// The VM.
        vm: Box<IncomingVm>,
    },
    /// One operation of the migration on an admitted VM (see [`NodeOp`]).
    Node {
        /// VM name.
        name: String,
        /// The operation.
        op: NodeOp,
    },
}

/// The agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum AgentResponse {
    /// Answer to `ping`.
    Pong {
        /// The node's name.
        node: String,
        /// Its switch's control socket.
        switch_control: PathBuf,
    },
    /// Answer to `check`: the direct path the VM would get.
    Available {
        /// What it is (human-readable).
        direct: String,
    },
    /// The VM is admitted: its VMM waits on `uri`.
    Admitted {
        /// Migration stream address for the source VMM (`unix:PATH`).
        uri: String,
        /// The reserved direct path (human-readable), if any.
        direct: Option<String>,
        /// The destination VMM's pid.
        pid: Option<u32>,
    },
    /// Answer to a [`NodeOp`]: its outcome, with the error's kind.
    Node {
        /// The outcome.
        result: Result<NodeAnswer, OpError>,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Sends `req` to the agent at `socket` and waits up to `timeout` for the answer;
/// an `Error` answer becomes an error.
pub async fn request(
    socket: &Path,
    req: &AgentRequest,
    timeout: Duration,
) -> anyhow::Result<AgentResponse> {
    let talk = async {
        let mut conn = UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot reach the node agent at {}", socket.display()))?;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        conn.write_all(&line).await?;
        let mut reader = BufReader::new(conn);
        let mut answer = String::new();
        reader.read_line(&mut answer).await?;
        if answer.is_empty() {
            bail!("the node agent closed the connection without answering");
        }
        let resp: AgentResponse = serde_json::from_str(&answer)
            .with_context(|| format!("the node agent answered garbage: {answer:.200}"))?;
        Ok(resp)
    };
    let resp = tokio::time::timeout(timeout, talk).await.map_err(|_| {
        anyhow::anyhow!(
            "the node agent at {} did not answer in {timeout:?}",
            socket.display()
        )
    })??;
    if let AgentResponse::Error { message } = resp {
        bail!("the destination node refused: {message}");
    }
    Ok(resp)
}

/// The agent's configuration: this node's paths, switch and stand-in taps.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Store, pool, run dir, sysfs root.
    pub(super) paths: Paths,
    /// This node's switch.
    pub switch_control: PathBuf,
    /// The lab's VF stand-ins on this node (taps on the embedded-switch bridge).
    pub standin_taps: Vec<String>,
    /// The VMM binary, if not the default.
    pub vmm_binary: Option<PathBuf>,
    /// The node's name (for `ping`).
    pub node: String,
}

/// Serves requests on `listen` until the process is stopped.
pub(super) async fn serve(cfg: AgentConfig, listen: &Path) -> anyhow::Result<()> {
    if listen.exists() {
        // A socket nobody answers on is a leftover of a killed agent.
        if UnixStream::connect(listen).await.is_ok() {
            bail!("another agent listens on {}", listen.display());
        }
        std::fs::remove_file(listen)
            .with_context(|| format!("cannot remove the stale {}", listen.display()))?;
    }
    if let Some(dir) = listen.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let listener = UnixListener::bind(listen)
        .with_context(|| format!("cannot listen on {}", listen.display()))?;
    log::info!(
        "node agent {} listening on {} (switch {})",
        cfg.node,
        listen.display(),
        cfg.switch_control.display()
    );
    let node = LocalNode::new(cfg.paths.clone());
    loop {
        let (conn, _) = listener.accept().await.context("accept")?;
        // One request at a time: they change this node's shared state.
        if let Err(e) = handle(&cfg, &node, conn).await {
            log::warn!("node agent: {e:#}");
        }
    }
}

async fn handle(cfg: &AgentConfig, node: &LocalNode, conn: UnixStream) -> anyhow::Result<()> {
    let (rd, mut wr) = conn.into_split();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(rd, MAX_REQUEST));
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .await
        .context("reading a request")?;
    let resp = match serde_json::from_str::<AgentRequest>(&line) {
        Ok(req) => {
            log::info!("node agent: {}", describe(&req));
            match run(cfg, node, &req).await {
                Ok(r) => r,
                Err(e) => {
                    log::warn!("node agent: {} failed: {e:#}", describe(&req));
                    AgentResponse::Error {
                        message: format!("{e:#}"),
                    }
                }
            }
        }
        Err(e) => AgentResponse::Error {
            message: format!("not an agent request: {e}"),
        },
    };
    let mut out = serde_json::to_vec(&resp)?;
    out.push(b'\n');
    wr.write_all(&out).await.context("answering")?;
    Ok(())
}

fn describe(req: &AgentRequest) -> String {
    match req {
        AgentRequest::Ping => "ping".into(),
        AgentRequest::Check { vm } => format!("check VM {}", vm.name),
        AgentRequest::Admit { vm } => format!("admit VM {}", vm.name),
        // Frames are data, not worth a log line each.
        AgentRequest::Node {
            name,
            op: NodeOp::Inject { frames },
        } => format!("VM {name}: Inject {{ {} frame(s) }}", frames.len()),
        AgentRequest::Node { name, op } => format!("VM {name}: {op:?}"),
    }
}

async fn run(
    cfg: &AgentConfig,
    node: &LocalNode,
    req: &AgentRequest,
) -> anyhow::Result<AgentResponse> {
    let store = VmStore::open(&cfg.paths.store)?;
    match req {
        AgentRequest::Ping => {
            // The switch must answer: a migration needs a port on it.
            switch_request(&cfg.switch_control, &Request::Ports {})
                .context("this node's switch does not run")?;
            Ok(AgentResponse::Pong {
                node: cfg.node.clone(),
                switch_control: cfg.switch_control.clone(),
            })
        }
        AgentRequest::Check { vm } => {
            let direct = match &vm.direct {
                None => "none".to_string(),
                Some(DirectWant::Standin { tap, model }) => {
                    let tap = match tap {
                        Some(t) if Path::new(CLASS_NET).join(t).exists() => t.clone(),
                        Some(t) => bail!("no VF stand-in {t} on this node"),
                        None => free_standin(cfg, &store)?,
                    };
                    direct_label(&DirectPath::Standin { tap, model: *model }, false)
                }
                // The pool's own checks (tier, queue pairs, free) run at admission.
                Some(DirectWant::Vf { select }) => format!("VF {select} of this node's pool"),
            };
            Ok(AgentResponse::Available { direct })
        }
        AgentRequest::Admit { vm } => admit(cfg, &store, vm).await,
        AgentRequest::Node { name, op } => Ok(AgentResponse::Node {
            result: node.exec(&store, name, op).await,
        }),
    }
}

async fn admit(
    cfg: &AgentConfig,
    store: &VmStore,
    vm: &IncomingVm,
) -> anyhow::Result<AgentResponse> {
    // A stopped or failed record of the same name (an earlier visit) gives way.
    if let Ok(old) = store.get(&vm.name) {
        if matches!(old.phase, Phase::Stopped | Phase::Failed { .. }) {
            store.remove(&vm.name)?;
        } else {
            bail!(
                "VM {} already exists on this node ({})",
                vm.name,
                old.phase.name()
            );
        }
    }
    let (vf, vf_standin, standin_model) = match &vm.direct {
        None => (None, None, ModelArg::E1000e),
        Some(DirectWant::Vf { select }) => (Some(select.clone()), None, ModelArg::E1000e),
        Some(DirectWant::Standin { tap, model }) => {
            let tap = match tap {
                Some(t) => t.clone(),
                None => free_standin(cfg, store)?,
            };
            (None, Some(tap), ModelArg::from(*model))
        }
    };
    let run_dir = cfg.paths.run_dir.join(&vm.name);
    let uri = format!("unix:{}", run_dir.join("migrate.sock").display());
    let args = LaunchArgs {
        name: vm.name.clone(),
        vmm: VmmArg::from(vm.vmm),
        vcpus: vm.vcpus,
        memory: vm.memory_mib,
        kernel: vm.kernel.clone(),
        initrd: vm.initrd.clone(),
        append: vm.cmdline.clone(),
        disk: vm.disks.clone(),
        mac: Some(vm.mac.parse()?),
        switch_control: cfg.switch_control.clone(),
        vlan: vm.vlan,
        performance: vm.performance.map(Into::into),
        queues: vm.queue_pairs,
        vf,
        vf_standin,
        standin_model,
        vmm_binary: cfg.vmm_binary.clone(),
        json: false,
        incoming: Some(Incoming {
            uri: uri.clone(),
            queue_pairs: vm.queue_pairs,
        }),
    };
    let rec = launch_record(store, &cfg.paths, &args).await?;
    // The wire should learn the VM's new place the moment its VMM resumes it here
    // (its receive rings start then), not once the source reports completion: the
    // frames in between go to the paused source. The orchestrator's own announce
    // after completion stays as the fallback.
    match super::path::announce(&rec, true) {
        Ok(_) => log::info!("VM {}: announce armed for its resume here", vm.name),
        Err(e) => log::warn!("VM {}: cannot arm the announce on resume: {e:#}", vm.name),
    }
    Ok(AgentResponse::Admitted {
        uri,
        direct: describe_direct(&rec),
        pid: rec.pid,
    })
}

fn describe_direct(rec: &VmRecord) -> Option<String> {
    match (&rec.spec.direct, rec.direct) {
        (_, DirectState::None) | (None, _) => None,
        (Some(d), _) => Some(direct_label(d, false)),
    }
}

/// A stand-in tap of this node that exists and no VM here uses.
fn free_standin(cfg: &AgentConfig, store: &VmStore) -> anyhow::Result<String> {
    let used: Vec<String> = store
        .list()?
        .into_iter()
        .filter_map(|l| match l {
            super::store::Listed::Ok(r)
                if !matches!(r.phase, Phase::Stopped | Phase::Failed { .. }) =>
            {
                match r.spec.direct {
                    Some(DirectPath::Standin { tap, .. }) => Some(tap),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    cfg.standin_taps
        .iter()
        .find(|t| !used.contains(t) && Path::new(CLASS_NET).join(t).exists())
        .cloned()
        .with_context(|| {
            format!(
                "no free VF stand-in on this node (taps {:?}, in use {used:?})",
                cfg.standin_taps
            )
        })
}
