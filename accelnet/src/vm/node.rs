//! One node's side of a live migration: the operations `migration::live` drives,
//! over this node's VMM, switch, VF pool and embedded switch.
//!
//! The source runs them in process (`accelnet vm migrate`); the destination's node
//! agent runs them for the source over its socket ([`super::agent`]), so both
//! sides go through the same code. [`NodeHost`] implements the orchestrator's
//! traits over either.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use migration::live::{
    CancelToken, CarriedFrame, DirectGrant, GuestUse, HeldPart, IncomingEndpoint,
    MigrationProgress, MigrationStats, OpError, OpErrorKind, PathKind, ProgressFn, Route,
    SwitchOps, VfOps, VmNet, VmmOps,
};
use serde::{Deserialize, Serialize};
use sriov::steer::Route as SteerRoute;
use vmm_plugin::ch::{ChOptions, ChVm};
use vmm_plugin::qemu::{QemuOptions, QemuVm};
use vmm_plugin::{VmState, Vmm, VmmError, VmmKind};

use super::agent::{self, AgentRequest, AgentResponse, IncomingVm};
use super::path::{self, GuestWatch};
use super::store::{DirectState, Phase, VmRecord, VmStore};
use super::{release_vf, remove_switch_port, vmm_for, Paths};

/// The path change a hold covers; the switch ends it 2 s later by itself if
/// nobody releases it (30 s in all).
const HOLD_LIMIT: Duration = Duration::from_secs(28);
/// How long an agent request may take beyond its own timeouts.
const AGENT_SLACK: Duration = Duration::from_secs(30);

/// One operation on a VM of a node (the source's, or the destination's through
/// its agent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeOp {
    /// Hot-unplug the direct path; returns once the guest released it.
    UnplugDirect {
        /// Milliseconds to wait for the guest.
        timeout_ms: u64,
    },
    /// Whether the VMM has the direct path plugged.
    DirectAttached,
    /// Hot-plug the VM's direct path (the one its record names).
    PlugDirect,
    /// The VM runs here (after an incoming migration): the VMM says so.
    ConfirmRunning,
    /// Resume a VM paused by a completed outgoing migration.
    Resume,
    /// Stop the VMM.
    Stop,
    /// Steer the VM's MAC in the embedded switch.
    Route {
        /// Where to.
        route: Route,
    },
    /// Wait for the guest's first frame over the direct path.
    WaitGuest {
        /// Milliseconds to wait.
        settle_ms: u64,
    },
    /// Give the direct path back (a VF to the pool, reset).
    ReleaseDirect,
    /// Hold the VM port's receive side in the switch.
    Hold,
    /// End the hold: to the guest's standby, or to its direct path.
    ReleaseHold {
        /// The path that gets the held frames.
        onto: PathKind,
    },
    /// Announce the VM's MAC on the switch's uplinks.
    Announce,
    /// Remove the VM's switch port and its MAC from the embedded switch.
    RemovePort,
    /// Cancel the VM's outgoing migration.
    CancelMigration,
    /// Set the link of the guest's primary (QEMU `set_link`): down makes
    /// `net_failover` send over the standby without an unplug.
    PrimaryLink {
        /// Up or down.
        up: bool,
    },
    /// Arm the VM port's hold for the switch-over of an outgoing migration.
    HoldOnStop {
        /// Longest the hold may last once started.
        max_ms: u64,
    },
    /// Take a part of the frames the switch holds for the VM.
    TakeHeld,
    /// Deliver frames held on another node to the VM.
    Inject {
        /// The frames.
        frames: Vec<CarriedFrame>,
    },
}

/// What a [`NodeOp`] answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum NodeAnswer {
    /// Done.
    Done,
    /// [`NodeOp::DirectAttached`].
    Attached {
        /// Plugged.
        attached: bool,
    },
    /// [`NodeOp::WaitGuest`].
    GuestSeen {
        /// What the guest sent over which path.
        guest: GuestUse,
    },
    /// [`NodeOp::ReleaseHold`].
    Released {
        /// Frames that had been held.
        frames: u64,
    },
    /// [`NodeOp::TakeHeld`].
    HeldPart {
        /// The frames and whether more are held.
        part: HeldPart,
    },
    /// [`NodeOp::Inject`].
    Injected {
        /// Frames queued for the guest.
        queued: u64,
    },
}

/// A VMM error as the orchestrator's kind.
fn vmm_op_error(e: &VmmError) -> OpError {
    let kind = match e {
        VmmError::Timeout { .. } => OpErrorKind::Timeout,
        VmmError::Exited { .. } => OpErrorKind::Gone,
        VmmError::Migration { status, .. } if status == "cancelled" => OpErrorKind::Cancelled,
        _ => OpErrorKind::Failed,
    };
    OpError::from_error(kind, e)
}

/// Any other error, with its chain.
fn op_error(kind: OpErrorKind, e: &anyhow::Error) -> OpError {
    OpError::new(kind, format!("{e:#}"))
}

/// This node: its paths, and what a path change remembers between two operations.
#[derive(Debug)]
pub struct LocalNode {
    pub(super) paths: Paths,
    /// The watch on the guest's frames over the direct path, opened as it was
    /// plugged, per VM.
    watches: Mutex<HashMap<String, GuestWatch>>,
}

impl LocalNode {
    /// This node with its state in `paths`.
    pub(super) fn new(paths: Paths) -> LocalNode {
        LocalNode {
            paths,
            watches: Mutex::new(HashMap::new()),
        }
    }

    fn record(store: &VmStore, name: &str) -> Result<VmRecord, OpError> {
        store
            .get(name)
            .map_err(|e| OpError::from_error(OpErrorKind::Gone, &e))
    }

    async fn vmm(rec: &VmRecord) -> Result<Box<dyn vmm_plugin::Vmm>, OpError> {
        if !rec.process_alive(Path::new("/proc")) {
            return Err(OpError::gone(format!(
                "VM {}: its {} process is gone",
                rec.name(),
                rec.vmm
            )));
        }
        vmm_for(rec, None, true)
            .await
            .map_err(|e| op_error(OpErrorKind::Gone, &e))
    }

    /// The VM's QEMU, for what only QEMU offers (`what` names it in the refusal).
    async fn qemu(rec: &VmRecord, what: &str) -> Result<QemuVm, OpError> {
        let name = rec.name();
        if rec.vmm != VmmKind::Qemu {
            return Err(OpError::unavailable(format!(
                "VM {name}: {what} is implemented for QEMU only"
            )));
        }
        let pid = rec
            .pid
            .ok_or_else(|| OpError::gone(format!("VM {name}: no VMM process recorded")))?;
        QemuVm::attach(rec.spec.clone(), QemuOptions::new(&rec.run_dir), pid)
            .await
            .map_err(|e| vmm_op_error(&e))
    }

    pub(super) fn set_direct(store: &VmStore, name: &str, d: DirectState) -> Result<(), OpError> {
        store
            .update(name, |r| {
                r.direct = d;
                Ok(())
            })
            .map(|_| ())
            .map_err(|e| OpError::from_error(OpErrorKind::Failed, &e))
    }

    /// Runs `op` on VM `name` of this node.
    pub(super) async fn exec(
        &self,
        store: &VmStore,
        name: &str,
        op: &NodeOp,
    ) -> Result<NodeAnswer, OpError> {
        // Teardown operations find nothing to do on a VM this node does not have.
        if matches!(
            op,
            NodeOp::Stop | NodeOp::RemovePort | NodeOp::ReleaseDirect
        ) && store.get(name).is_err()
        {
            return Ok(NodeAnswer::Done);
        }
        let rec = Self::record(store, name)?;
        match op {
            NodeOp::UnplugDirect { timeout_ms } => {
                let vmm = Self::vmm(&rec).await?;
                vmm.detach_direct(Duration::from_millis(*timeout_ms))
                    .await
                    .map_err(|e| vmm_op_error(&e))?;
                Self::set_direct(store, name, DirectState::Detached)?;
                Ok(NodeAnswer::Done)
            }
            NodeOp::DirectAttached => {
                let vmm = Self::vmm(&rec).await?;
                let s = vmm.status().await.map_err(|e| vmm_op_error(&e))?;
                Ok(NodeAnswer::Attached {
                    attached: s.direct_attached,
                })
            }
            NodeOp::PlugDirect => {
                let Some(direct) = rec.spec.direct.clone() else {
                    return Err(OpError::unavailable(format!(
                        "VM {name} has no direct path here"
                    )));
                };
                let vmm = Self::vmm(&rec).await?;
                // Opened before the plug: the guest's first frame may come at once.
                let watch = rec
                    .steering
                    .as_ref()
                    .and_then(|s| path::watch_guest(&rec, s));
                {
                    let mut watches = self
                        .watches
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    watches.remove(name);
                    if let Some(w) = watch {
                        watches.insert(name.to_string(), w);
                    }
                }
                vmm.attach_direct(&direct)
                    .await
                    .map_err(|e| vmm_op_error(&e))?;
                Self::set_direct(store, name, DirectState::Attached)?;
                Ok(NodeAnswer::Done)
            }
            NodeOp::ConfirmRunning => {
                let vmm = Self::vmm(&rec).await?;
                let s = vmm.status().await.map_err(|e| vmm_op_error(&e))?;
                if s.state != VmState::Running {
                    return Err(OpError::failed(format!(
                        "VM {name}: the VMM reports it {:?}, not running",
                        s.state
                    )));
                }
                store
                    .update(name, |r| {
                        r.phase = Phase::Running;
                        Ok(())
                    })
                    .map_err(|e| OpError::from_error(OpErrorKind::Failed, &e))?;
                Ok(NodeAnswer::Done)
            }
            NodeOp::Resume => {
                if rec.vmm == VmmKind::CloudHypervisor {
                    return resume_ch(&rec).await;
                }
                Self::qemu(&rec, "resuming after a migration")
                    .await?
                    .execute("cont", None)
                    .await
                    .map_err(|e| vmm_op_error(&e))?;
                Ok(NodeAnswer::Done)
            }
            NodeOp::PrimaryLink { up } => {
                let args = serde_json::json!({"name": vmm_plugin::qemu::PRIMARY_ID, "up": up});
                Self::qemu(&rec, "setting the primary's link")
                    .await?
                    .execute("set_link", Some(args))
                    .await
                    .map_err(|e| vmm_op_error(&e))?;
                Ok(NodeAnswer::Done)
            }
            NodeOp::Stop => {
                if rec.process_alive(Path::new("/proc")) {
                    match Self::vmm(&rec).await {
                        Ok(mut vmm) => vmm
                            .stop(Duration::from_secs(2))
                            .await
                            .map_err(|e| vmm_op_error(&e))?,
                        // A VMM that does not answer (cloud-hypervisor serves no API
                        // while it receives a migration) is killed by its pid.
                        Err(e) => {
                            log::warn!("VM {name}: {e}; killing its VMM");
                            kill_vmm(&rec).await?;
                        }
                    }
                }
                store
                    .update(name, |r| {
                        r.phase = Phase::Stopped;
                        r.pid = None;
                        r.start_time = None;
                        Ok(())
                    })
                    .map_err(|e| OpError::from_error(OpErrorKind::Failed, &e))?;
                Ok(NodeAnswer::Done)
            }
            NodeOp::Route { route } => {
                let to = match route {
                    Route::Direct => SteerRoute::Direct,
                    Route::Synthetic => SteerRoute::Synthetic,
                    Route::Both => SteerRoute::Both,
                };
                path::route(rec.steering.as_ref(), to)
                    .map_err(|e| op_error(OpErrorKind::Failed, &e))?;
                Ok(NodeAnswer::Done)
            }
            NodeOp::WaitGuest { settle_ms } => {
                let Some(s) = rec.steering.as_ref() else {
                    return Err(OpError::unavailable(format!(
                        "VM {name} has no direct path here"
                    )));
                };
                let remembered = self
                    .watches
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(name);
                let Some(mut watch) = remembered.or_else(|| path::watch_guest(&rec, s)) else {
                    // A NIC's VF: its frames never cross the host and its counters
                    // (IFLA_VF_STATS) are not read yet, so the guest's use cannot
                    // be seen; the VMM plugged it and the guest pairs it by MAC.
                    log::warn!(
                        "VM {name}: cannot see the guest's frames over {s}; assuming it uses it"
                    );
                    return Ok(NodeAnswer::GuestSeen {
                        guest: GuestUse::Direct,
                    });
                };
                let settle = Duration::from_millis(*settle_ms);
                let guest = path::wait_guest_on_direct(&mut watch, settle).await;
                Ok(NodeAnswer::GuestSeen { guest })
            }
            NodeOp::ReleaseDirect => {
                if let Some(vf) = &rec.vf {
                    let quarantined = release_vf(&self.paths, vf, name)
                        .map_err(|e| op_error(OpErrorKind::Failed, &e))?;
                    if let Some(reason) = quarantined {
                        log::warn!(
                            "VM {name}: VF {vf} could not be reset and is quarantined: {reason}"
                        );
                    }
                }
                store
                    .update(name, |r| {
                        r.vf = None;
                        r.direct = DirectState::Detached;
                        Ok(())
                    })
                    .map_err(|e| OpError::from_error(OpErrorKind::Failed, &e))?;
                Ok(NodeAnswer::Done)
            }
            NodeOp::Hold => {
                switch_hold(&rec, true, None)?;
                Ok(NodeAnswer::Done)
            }
            NodeOp::ReleaseHold { onto } => {
                let via = match onto {
                    PathKind::Direct => rec.steering.as_ref().and_then(|s| s.switch_uplink()),
                    PathKind::Synthetic => None,
                };
                let frames = switch_hold(&rec, false, via)?;
                Ok(NodeAnswer::Released { frames })
            }
            NodeOp::Announce => {
                path::announce(&rec, false).map_err(|e| op_error(OpErrorKind::Unavailable, &e))?;
                Ok(NodeAnswer::Done)
            }
            NodeOp::HoldOnStop { max_ms } => {
                path::switch_hold_on_stop(&rec, Duration::from_millis(*max_ms))
                    .map_err(|e| op_error(OpErrorKind::Unavailable, &e))?;
                Ok(NodeAnswer::Done)
            }
            NodeOp::TakeHeld => {
                let part =
                    path::switch_take_held(&rec).map_err(|e| op_error(OpErrorKind::Failed, &e))?;
                Ok(NodeAnswer::HeldPart { part })
            }
            NodeOp::Inject { frames } => {
                let queued = path::switch_inject(&rec, frames)
                    .map_err(|e| op_error(OpErrorKind::Failed, &e))?;
                Ok(NodeAnswer::Injected { queued })
            }
            NodeOp::RemovePort => {
                remove_switch_port(&rec).map_err(|e| op_error(OpErrorKind::Unavailable, &e))?;
                path::unsteer(rec.steering.as_ref());
                Ok(NodeAnswer::Done)
            }
            NodeOp::CancelMigration => {
                let vmm = Self::vmm(&rec).await?;
                vmm.cancel_migration().await.map_err(|e| vmm_op_error(&e))?;
                Ok(NodeAnswer::Done)
            }
        }
    }
}

/// [`NodeOp::Resume`] on cloud-hypervisor, whose VMM exits once its VM migrated
/// away (nothing is left to resume then); a VMM still there has the VM running
/// (a failed migration resumes it) or paused (`vm.resume`).
async fn resume_ch(rec: &VmRecord) -> Result<NodeAnswer, OpError> {
    let name = rec.name();
    if !rec.process_alive(Path::new("/proc")) {
        return Err(OpError::gone(format!(
            "VM {name}: cloud-hypervisor exits once its VM migrated away: there is no VM \
             left here to resume"
        )));
    }
    let opts = ChOptions::new("cloud-hypervisor", &rec.run_dir);
    let ch = ChVm::attach(rec.spec.clone(), opts, rec.pid)
        .await
        .map_err(|e| vmm_op_error(&e))?;
    match ch.status().await.map_err(|e| vmm_op_error(&e))?.state {
        VmState::Running => Ok(NodeAnswer::Done),
        VmState::Paused => {
            ch.api().resume().await.map_err(|e| vmm_op_error(&e))?;
            Ok(NodeAnswer::Done)
        }
        other => Err(OpError::failed(format!(
            "VM {name}: cloud-hypervisor reports it {other:?}: there is nothing to resume"
        ))),
    }
}

/// SIGKILLs the recorded VMM process (checked against its start time) and waits
/// up to 5 s for it to go.
async fn kill_vmm(rec: &VmRecord) -> Result<(), OpError> {
    let name = rec.name();
    let proc_root = Path::new("/proc");
    let Some(pid) = rec.pid.filter(|_| rec.process_alive(proc_root)) else {
        return Ok(());
    };
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| OpError::failed(format!("VM {name}: pid {pid} out of range")))?;
    // SAFETY: kill(2) on the VM's own VMM pid, checked against its start time above.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(OpError::failed(format!(
                "VM {name}: cannot kill its VMM (pid {pid}): {err}"
            )));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while rec.process_alive(proc_root) && !super::drill::is_zombie(&proc_root.join(pid.to_string()))
    {
        if tokio::time::Instant::now() >= deadline {
            return Err(OpError::failed(format!(
                "VM {name}: its VMM (pid {pid}) is still there 5 s after SIGKILL"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Starts the hold, or releases it (out of uplink `via`); returns the frames held.
fn switch_hold(rec: &VmRecord, on: bool, via: Option<&str>) -> Result<u64, OpError> {
    path::switch_hold(rec, on, HOLD_LIMIT, via)
        .map(|(held, _)| held)
        .map_err(|e| op_error(OpErrorKind::Unavailable, &e))
}

/// Where a [`NodeHost`]'s operations run.
#[derive(Debug)]
pub enum Transport<'a> {
    /// In this process, on this node's store.
    Local {
        /// The node.
        node: &'a LocalNode,
        /// Its store, open.
        store: &'a VmStore,
    },
    /// On another node, through its agent.
    Agent {
        /// The agent's socket.
        socket: PathBuf,
        /// The VM as the destination starts it.
        incoming: Box<IncomingVm>,
    },
}

/// One host of a migration, as `migration::live` drives it.
#[derive(Debug)]
pub struct NodeHost<'a> {
    /// Where the operations run.
    pub transport: Transport<'a>,
    /// A cancel of the outgoing migration, for [`NodeHost::migrate`] to carry out
    /// over its own control connection (QEMU serves one QMP client at a time).
    cancel: CancelToken,
}

impl<'a> NodeHost<'a> {
    /// The node reached through `transport`.
    pub fn new(transport: Transport<'a>) -> Self {
        NodeHost {
            transport,
            cancel: CancelToken::new(),
        }
    }
}

impl NodeHost<'_> {
    async fn call(&self, vm: &VmNet, op: NodeOp, wait: Duration) -> Result<NodeAnswer, OpError> {
        match &self.transport {
            Transport::Local { node, store } => node.exec(store, &vm.name, &op).await,
            Transport::Agent { socket, .. } => {
                let req = AgentRequest::Node {
                    name: vm.name.clone(),
                    op,
                };
                match agent::request(socket, &req, wait + AGENT_SLACK).await {
                    Ok(AgentResponse::Node { result }) => result,
                    Ok(other) => Err(OpError::failed(format!(
                        "the node agent answered {other:?}"
                    ))),
                    Err(e) => Err(op_error(OpErrorKind::Gone, &e)),
                }
            }
        }
    }

    async fn done(&self, vm: &VmNet, op: NodeOp) -> Result<(), OpError> {
        self.call(vm, op, Duration::ZERO).await.map(|_| ())
    }
}

#[async_trait::async_trait]
impl VmmOps for NodeHost<'_> {
    async fn start_incoming(&self, vm: &VmNet) -> Result<IncomingEndpoint, OpError> {
        let Transport::Agent { socket, incoming } = &self.transport else {
            return Err(OpError::failed(format!(
                "VM {}: this node is the source, not a destination",
                vm.name
            )));
        };
        match agent::request(
            socket,
            &AgentRequest::Admit {
                vm: incoming.clone(),
            },
            Duration::from_secs(60),
        )
        .await
        {
            Ok(AgentResponse::Admitted { uri, .. }) => Ok(IncomingEndpoint { uri }),
            Ok(other) => Err(OpError::failed(format!(
                "the node agent answered {other:?}"
            ))),
            Err(e) => Err(op_error(OpErrorKind::Unavailable, &e)),
        }
    }

    async fn unplug_direct(&self, vm: &VmNet, timeout: Duration) -> Result<(), OpError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.call(vm, NodeOp::UnplugDirect { timeout_ms }, timeout)
            .await
            .map(|_| ())
    }

    async fn direct_attached(&self, vm: &VmNet) -> Result<bool, OpError> {
        match self
            .call(vm, NodeOp::DirectAttached, Duration::ZERO)
            .await?
        {
            NodeAnswer::Attached { attached } => Ok(attached),
            other => Err(OpError::failed(format!("unexpected answer {other:?}"))),
        }
    }

    async fn plug_direct(&self, vm: &VmNet, _direct: &DirectGrant) -> Result<(), OpError> {
        // The node plugs the direct path its record names (the one it reserved).
        self.done(vm, NodeOp::PlugDirect).await
    }

    async fn migrate(
        &self,
        vm: &VmNet,
        to: &IncomingEndpoint,
        progress: ProgressFn<'_>,
    ) -> Result<MigrationStats, OpError> {
        let Transport::Local { store, .. } = &self.transport else {
            return Err(OpError::failed(
                "a migration starts on the source node, not through an agent",
            ));
        };
        let rec = LocalNode::record(store, &vm.name)?;
        let vmm = LocalNode::vmm(&rec).await?;
        if self.cancel.is_cancelled() {
            return Err(OpError::cancelled(
                "cancelled before the VMM started migrating",
            ));
        }
        let report = |p: &vmm_plugin::MigrationProgress| {
            progress(&MigrationProgress {
                status: p.status.clone(),
                transferred: p.transferred,
                remaining: p.remaining,
                total: p.total,
                dirty_rate: None,
                elapsed_ms: p.elapsed_ms,
            });
        };
        let res = {
            let out = vmm.migrate_out(&to.uri, &report);
            tokio::pin!(out);
            let mut sent = false;
            loop {
                tokio::select! {
                    r = &mut out => break r,
                    () = self.cancel.cancelled(), if !sent => {
                        sent = true;
                        // Same connection as the migration's polling.
                        if let Err(e) = vmm.cancel_migration().await {
                            log::warn!("VM {}: the VMM refused the cancel: {e}", vm.name);
                        }
                    }
                }
            }
        };
        let s = res.map_err(|e| vmm_op_error(&e))?;
        Ok(MigrationStats {
            total_ms: s.total_ms,
            downtime_ms: s.downtime_ms,
            transferred: s.transferred,
        })
    }

    async fn cancel_migration(&self, vm: &VmNet) -> Result<(), OpError> {
        match &self.transport {
            // The source: its migrate call cancels over its own connection.
            Transport::Local { .. } => {
                self.cancel.cancel();
                Ok(())
            }
            Transport::Agent { .. } => self.done(vm, NodeOp::CancelMigration).await,
        }
    }

    async fn confirm_running(&self, vm: &VmNet) -> Result<(), OpError> {
        self.done(vm, NodeOp::ConfirmRunning).await
    }

    async fn resume(&self, vm: &VmNet) -> Result<(), OpError> {
        self.done(vm, NodeOp::Resume).await
    }

    async fn stop(&self, vm: &VmNet) -> Result<(), OpError> {
        self.call(vm, NodeOp::Stop, Duration::from_secs(10))
            .await
            .map(|_| ())
    }
}

#[async_trait::async_trait]
impl VfOps for NodeHost<'_> {
    async fn reserve(&self, vm: &VmNet) -> Result<DirectGrant, OpError> {
        let Transport::Agent {
            socket, incoming, ..
        } = &self.transport
        else {
            return Err(OpError::failed(format!(
                "VM {}: this node is the source, not a destination",
                vm.name
            )));
        };
        // The agent takes the direct path when it admits the VM (with its port
        // and VMM, in one request); here it checks that one is free.
        match agent::request(
            socket,
            &AgentRequest::Check {
                vm: incoming.clone(),
            },
            Duration::from_secs(20),
        )
        .await
        {
            Ok(AgentResponse::Available { direct }) => Ok(DirectGrant {
                id: direct.clone(),
                label: direct,
            }),
            Ok(other) => Err(OpError::failed(format!(
                "the node agent answered {other:?}"
            ))),
            Err(e) => Err(op_error(OpErrorKind::Unavailable, &e)),
        }
    }

    async fn route(&self, vm: &VmNet, route: Route) -> Result<(), OpError> {
        self.done(vm, NodeOp::Route { route }).await
    }

    async fn wait_guest_traffic(&self, vm: &VmNet, settle: Duration) -> Result<GuestUse, OpError> {
        let settle_ms = u64::try_from(settle.as_millis()).unwrap_or(u64::MAX);
        match self
            .call(vm, NodeOp::WaitGuest { settle_ms }, settle)
            .await?
        {
            NodeAnswer::GuestSeen { guest } => Ok(guest),
            other => Err(OpError::failed(format!("unexpected answer {other:?}"))),
        }
    }

    async fn release(&self, vm: &VmNet) -> Result<(), OpError> {
        self.done(vm, NodeOp::ReleaseDirect).await
    }
}

#[async_trait::async_trait]
impl SwitchOps for NodeHost<'_> {
    async fn prepare_port(&self, vm: &VmNet) -> Result<(), OpError> {
        // The agent adds the port when it admits the VM; here: is its switch up.
        let Transport::Agent { socket, .. } = &self.transport else {
            return Ok(());
        };
        match agent::request(socket, &AgentRequest::Ping, Duration::from_secs(10)).await {
            Ok(AgentResponse::Pong { .. }) => Ok(()),
            Ok(other) => Err(OpError::failed(format!(
                "the node agent answered {other:?}"
            ))),
            Err(e) => Err(op_error(OpErrorKind::Unavailable, &e)),
        }
        .map_err(|e| OpError::new(e.kind, format!("VM {}: {}", vm.name, e.message)))
    }

    async fn hold(&self, vm: &VmNet) -> Result<(), OpError> {
        self.done(vm, NodeOp::Hold).await
    }

    async fn release_hold(&self, vm: &VmNet, onto: PathKind) -> Result<u64, OpError> {
        match self
            .call(vm, NodeOp::ReleaseHold { onto }, Duration::ZERO)
            .await?
        {
            NodeAnswer::Released { frames } => Ok(frames),
            other => Err(OpError::failed(format!("unexpected answer {other:?}"))),
        }
    }

    async fn announce(&self, vm: &VmNet) -> Result<(), OpError> {
        self.done(vm, NodeOp::Announce).await
    }

    async fn remove_port(&self, vm: &VmNet) -> Result<(), OpError> {
        self.done(vm, NodeOp::RemovePort).await
    }

    async fn hold_on_stop(&self, vm: &VmNet, max: Duration) -> Result<(), OpError> {
        let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        self.done(vm, NodeOp::HoldOnStop { max_ms }).await
    }

    async fn take_held(&self, vm: &VmNet) -> Result<HeldPart, OpError> {
        match self.call(vm, NodeOp::TakeHeld, Duration::ZERO).await? {
            NodeAnswer::HeldPart { part } => Ok(part),
            other => Err(OpError::failed(format!("unexpected answer {other:?}"))),
        }
    }

    async fn inject(&self, vm: &VmNet, frames: &[CarriedFrame]) -> Result<u64, OpError> {
        let op = NodeOp::Inject {
            frames: frames.to_vec(),
        };
        match self.call(vm, op, Duration::ZERO).await? {
            NodeAnswer::Injected { queued } => Ok(queued),
            other => Err(OpError::failed(format!("unexpected answer {other:?}"))),
        }
    }
}
