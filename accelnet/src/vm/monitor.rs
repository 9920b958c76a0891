//! Host-reserved failover, run by the node agent: it watches the direct path of
//! every running accelerated VM of this node and, when the path fails under the
//! VM (the VF removed, its link or the PF's link down; in the lab: the stand-in's
//! tap deleted, taken down or out of the embedded-switch bridge), moves the VM's
//! traffic to the synthetic path; once the path has been back for the hold-down,
//! it moves the traffic back and checks the guest uses it.
//!
//! The decisions are `migration::failover`'s state machine; this module looks at
//! the host, feeds it, and carries out its actions with the same node operations
//! a migration uses (`super::node`), so a loss is handled like `vm disable` (the
//! switch holds the VM's frames until the guest has let go of its primary) and a
//! move back like `vm enable` (held until the guest sends over the primary, then
//! released onto it).
//!
//! Planned operations own their VM: whoever holds the VM's [`OpLock`] (`vm
//! migrate`, `vm enable|disable`, a drill) suspends the machine; afterwards it
//! starts again from the VM's record. The record says where the failover left the
//! VM (`failover`), so an agent restarted in between carries on.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use migration::failover::{
    Action, FailoverConfig, FailoverMonitor, FailoverState, Loss, Observation, ResumeAt,
};
use migration::live::{GuestUse, PathKind, Route};
use sriov::host::VfLinkState;
use sriov::netlink::Netlink;
use sriov::steer::Steering;

use super::node::{LocalNode, NodeOp};
use super::path::GuestWatch;
use super::store::{
    now as epoch_now, DirectState, FailoverNote, FailoverStage, Listed, Phase, VmRecord, VmStore,
};
use super::{OpLock, Paths};

/// How often the VMs' switch ports are checked (and added again after a switch
/// restart).
const PORT_CHECK: Duration = Duration::from_millis(500);

/// Linux's `IFF_UP` in `/sys/class/net/<dev>/flags`.
const IFF_UP: u64 = 0x1;

/// How the agent's failover is tuned.
#[derive(Debug, Clone, Copy)]
pub(super) struct MonitorConfig {
    /// The state machine's timers and how the primary is taken out of the way.
    pub failover: FailoverConfig,
    /// How often the direct paths are looked at.
    pub interval: Duration,
    /// How long the guest may take to release its primary on a loss.
    pub unplug_timeout: Duration,
}

/// The kernel's notice that a direct path may have changed, from one netlink
/// socket: it wakes the monitor at once instead of at its next look (which
/// stays: not every loss is a message, e.g. a tap leaving the bridge is not).
#[derive(Debug)]
struct KernelEvents {
    socket: tokio::io::unix::AsyncFd<netlink_sys::Socket>,
    /// What this socket tells: for the log.
    what: &'static str,
    /// Whether a message is one to wake for.
    wakes: fn(&[u8]) -> bool,
}

impl KernelEvents {
    /// rtnetlink's link messages of this network namespace: a link going down or
    /// away (the stand-in's tap, a PF losing carrier).
    fn links() -> std::io::Result<KernelEvents> {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(libc::RTNLGRP_LINK)?;
        Self::register(socket, "link messages", |_| true)
    }

    /// The kernel's uevents for PCI and network devices: a real VF is bound to
    /// vfio-pci and has no netdev, so its removal (PCI hot-unplug, VFs taken
    /// away by the PF's driver) is a PCI `remove` uevent, not a link message.
    fn devices() -> std::io::Result<KernelEvents> {
        let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_KOBJECT_UEVENT)?;
        // Multicast group 1: the kernel's own uevents (udev re-sends on group 2).
        socket.bind(&netlink_sys::SocketAddr::new(0, 1))?;
        Self::register(socket, "device uevents", uevent_wakes)
    }

    fn register(
        socket: netlink_sys::Socket,
        what: &'static str,
        wakes: fn(&[u8]) -> bool,
    ) -> std::io::Result<KernelEvents> {
        socket.set_non_blocking(true)?;
        // SAFETY: the socket owns its descriptor, closes it only when dropped (with
        // the AsyncFd) and always returns that same one from as_raw_fd.
        let socket = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(KernelEvents {
            socket,
            what,
            wakes,
        })
    }

    /// Opens `open`'s socket, or says the monitor goes without it.
    fn open_or_warn(open: fn() -> std::io::Result<KernelEvents>, what: &str) -> Option<Self> {
        open()
            .map_err(|e| log::warn!("failover monitor: no {what} ({e}); looking every interval"))
            .ok()
    }

    /// Waits for a message to wake for, then takes every one queued: one
    /// wake-up per burst. An overrun (ENOBUFS) is a change too.
    async fn changed(&self) -> std::io::Result<()> {
        let mut woke = false;
        let mut buf = Vec::with_capacity(16 << 10);
        loop {
            let mut ready = self.socket.readable().await?;
            loop {
                buf.clear();
                match ready.try_io(|s| s.get_ref().recv(&mut buf, 0)) {
                    Ok(Ok(_)) => woke |= (self.wakes)(&buf),
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => woke = true,
                    Ok(Err(e)) => return Err(e),
                    // Drained (readiness cleared by try_io).
                    Err(_) => break,
                }
            }
            if woke {
                return Ok(());
            }
        }
    }
}

/// Whether a kernel uevent (`ACTION@DEVPATH\0KEY=VALUE\0...`) is about a PCI
/// or network device: other subsystems (disks, USB, ...) never change a direct
/// path.
fn uevent_wakes(msg: &[u8]) -> bool {
    msg.split(|&b| b == 0)
        .any(|field| field == b"SUBSYSTEM=pci" || field == b"SUBSYSTEM=net")
}

/// Waits until `events` wakes; without it (never opened, or failed), forever.
/// A failed socket is dropped with a warning, so the next wait is the forever one.
async fn woken(events: &mut Option<KernelEvents>) {
    let Some(e) = events else {
        return std::future::pending().await;
    };
    if let Err(err) = e.changed().await {
        log::warn!(
            "failover monitor: {}: {err}; looking every interval without them",
            e.what
        );
        *events = None;
    }
}

/// Whether `rec`'s direct path works, as this node sees it.
pub(super) fn direct_health(rec: &VmRecord, sysfs_root: &Path) -> Result<(), Loss> {
    let class_net = sysfs_root.join("sys/class/net");
    match &rec.steering {
        None => Ok(()),
        Some(Steering::Bridge {
            bridge, vf_port, ..
        }) => {
            let dev = class_net.join(vf_port);
            if !dev.exists() {
                return Err(Loss::VfRemoved);
            }
            // A stand-in tap re-created but not (yet) on the embedded switch
            // cannot carry the VM.
            let master = std::fs::read_link(dev.join("master"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
            if master.as_deref() != Some(bridge.as_str()) {
                return Err(Loss::VfRemoved);
            }
            // Only the administrative state: a tap has no carrier until the VMM
            // opens it again on a re-plug.
            if flags(&dev).is_none_or(|f| f & IFF_UP == 0) {
                return Err(Loss::VfLinkDown);
            }
            Ok(())
        }
        Some(Steering::Vf { pf, vf, .. }) => {
            if let Some(pci) = &rec.vf {
                if !sysfs_root.join("sys/bus/pci/devices").join(pci).exists() {
                    return Err(Loss::VfRemoved);
                }
            }
            let carrier = std::fs::read_to_string(class_net.join(pf).join("carrier"));
            if !carrier.map(|c| c.trim() == "1").unwrap_or(false) {
                return Err(Loss::PfLinkDown);
            }
            // The VF's administrative link (`ip link set PF vf N state disable`).
            let link = Netlink::open()
                .and_then(|nl| nl.vf_info(pf, *vf))
                .map(|i| i.link_state);
            if matches!(link, Ok(Some(VfLinkState::Disable))) {
                return Err(Loss::VfLinkDown);
            }
            Ok(())
        }
    }
}

fn flags(dev: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(dev.join("flags")).ok()?;
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// One watched VM.
struct Watched {
    machine: FailoverMonitor,
    /// The availability last fed to the machine.
    health: Result<(), Loss>,
    /// The record's direct state as the monitor last left it: a change it did
    /// not make means someone else moved the VM.
    direct: DirectState,
    /// The watch on the guest over both paths, from the monitor's last re-plug.
    watch: Option<GuestWatch>,
}

/// The failover of every running accelerated VM of this node.
pub(super) struct Monitor {
    paths: Paths,
    config: MonitorConfig,
    node: LocalNode,
    vms: HashMap<String, Watched>,
    last_port_check: Instant,
}

impl Monitor {
    pub(super) fn new(paths: Paths, config: MonitorConfig) -> Monitor {
        Monitor {
            node: LocalNode::new(paths.clone()),
            paths,
            config,
            vms: HashMap::new(),
            last_port_check: Instant::now(),
        }
    }

    /// Watches until the process ends; errors are logged, never fatal.
    pub(super) async fn run(mut self) {
        log::info!(
            "failover monitor: every {} ms, hold-down {:.1} s, verify {:.1} s",
            self.config.interval.as_millis(),
            self.config.failover.hold_down.as_secs_f64(),
            self.config.failover.verify_timeout.as_secs_f64()
        );
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut links = KernelEvents::open_or_warn(KernelEvents::links, "link messages");
        let mut devices = KernelEvents::open_or_warn(KernelEvents::devices, "device uevents");
        let mut store: Option<VmStore> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = woken(&mut links) => {}
                _ = woken(&mut devices) => {}
            }
            if store.is_none() {
                match VmStore::open(&self.paths.store) {
                    Ok(s) => store = Some(s),
                    Err(e) => {
                        log::warn!("failover monitor: {e:#}");
                        continue;
                    }
                }
            }
            if let Some(s) = &store {
                if let Err(e) = self.round(s).await {
                    log::warn!("failover monitor: {e:#}");
                }
            }
        }
    }

    /// One look at every VM.
    async fn round(&mut self, store: &VmStore) -> anyhow::Result<()> {
        let listed = store.list()?;
        let mut names = Vec::new();
        for l in listed {
            let Listed::Ok(rec) = l else { continue };
            if rec.phase == Phase::Running && rec.steering.is_some() {
                names.push(rec.name().to_string());
            }
        }
        self.vms.retain(|name, _| names.contains(name));
        if self.last_port_check.elapsed() >= PORT_CHECK {
            self.last_port_check = Instant::now();
            for name in &names {
                // A restarted switch lost the ports added at launch: add them again,
                // the VMM reconnects. A switch that does not answer is tried later.
                if let Ok(rec) = store.get(name).map_err(|_| ()).and_then(|r| {
                    if r.phase == Phase::Running {
                        Ok(r)
                    } else {
                        Err(())
                    }
                }) {
                    if let Err(e) = super::restore_switch_port(&rec) {
                        log::debug!("VM {name}: switch port check: {e:#}");
                    }
                }
            }
        }
        for name in names {
            if let Err(e) = self.step(store, &name).await {
                log::warn!("failover monitor: VM {name}: {e:#}");
            }
        }
        Ok(())
    }

    /// Looks at VM `name` and does what its machine says.
    async fn step(&mut self, store: &VmStore, name: &str) -> anyhow::Result<()> {
        let rec = store.get(name)?;
        let now = Instant::now();
        let lock = match OpLock::try_take(&rec, "the node agent's failover")? {
            Ok(lock) => lock,
            Err(_) => {
                // A planned operation owns the VM.
                if let Some(w) = self.vms.get_mut(name) {
                    w.machine.suspend();
                }
                return Ok(());
            }
        };
        // Read again under the lock: an operation may just have ended.
        let rec = store.get(name)?;
        if rec.phase != Phase::Running {
            return Ok(());
        }
        let health = direct_health(&rec, &self.paths.sysfs_root);
        let config = self.config.failover;
        let w = self.vms.entry(name.to_string()).or_insert_with(|| {
            let mut machine = FailoverMonitor::new(name, config, false);
            machine.suspend();
            Watched {
                machine,
                health: Ok(()),
                direct: rec.direct,
                watch: None,
            }
        });
        let mut actions = Vec::new();
        if w.machine.is_suspended() || rec.direct != w.direct {
            // Start from where the record says the VM is.
            w.machine.suspend();
            let at = match (rec.direct, &rec.failover) {
                (DirectState::Attached, _) => ResumeAt::Direct,
                (DirectState::Detached, Some(note)) if note.state != FailoverStage::GaveUp => {
                    ResumeAt::Synthetic {
                        direct_available: health.is_ok(),
                    }
                }
                // Not accelerated, disabled by the operator, or given up on.
                _ => ResumeAt::NoDirect,
            };
            actions = w.machine.resume(now, at);
            w.health = if at == ResumeAt::Direct {
                Ok(())
            } else {
                health
            };
            w.direct = rec.direct;
        }
        if health != w.health {
            let obs = match health {
                Err(cause) => {
                    log::warn!("VM {name}: direct path lost: {cause}");
                    Observation::DirectLost { cause }
                }
                Ok(()) => {
                    log::info!("VM {name}: direct path back");
                    Observation::DirectBack
                }
            };
            w.health = health;
            actions.extend(w.machine.observe(now, obs));
        }
        if let FailoverState::Recovering { since, .. } = *w.machine.state() {
            // The last look before the machine's verify timeout: an idle guest
            // (nothing over either path) keeps the primary, as `vm enable` does.
            let waited = now.saturating_duration_since(since);
            let verify = self.config.failover.verify_timeout;
            if waited >= verify / 2 {
                if let Some(watch) = w.watch.as_mut() {
                    watch.halfway();
                }
            }
            let last_look = waited + 2 * self.config.interval >= verify;
            if guest_seen(&rec, w, last_look) {
                actions.extend(w.machine.observe(now, Observation::GuestOnPrimary));
            }
        }
        actions.extend(w.machine.observe(now, Observation::Tick));

        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            log::info!("VM {name}: failover: {action:?}");
            let w = self
                .vms
                .get_mut(name)
                .ok_or_else(|| anyhow::anyhow!("forgotten"))?;
            if let Err(reason) = act(&self.node, &self.config, store, &rec, w, &action).await {
                log::warn!("VM {name}: failover {action:?} failed: {reason}");
                if matches!(w.machine.state(), FailoverState::Recovering { .. }) {
                    queue.extend(
                        w.machine
                            .observe(Instant::now(), Observation::RecoveryFailed { reason }),
                    );
                }
            }
        }
        let w = self
            .vms
            .get_mut(name)
            .ok_or_else(|| anyhow::anyhow!("forgotten"))?;
        let rec = store.get(name)?;
        w.direct = rec.direct;
        let note = note_for(w.machine.state(), rec.failover.as_ref());
        if note != rec.failover {
            store.update(name, |r| {
                r.failover = note.clone();
                Ok(())
            })?;
        }
        drop(lock);
        Ok(())
    }
}

/// Whether the guest uses its direct path since the monitor's re-plug: a frame
/// of its own on the stand-in's tap or, at the `last_look`, nothing from it over
/// either path (an idle guest). A NIC's VF cannot be watched, so its re-plug is
/// taken as used.
fn guest_seen(rec: &VmRecord, w: &mut Watched, last_look: bool) -> bool {
    let Some(s) = &rec.steering else {
        return false;
    };
    if s.standin_tap().is_none() {
        return true;
    }
    let Some(watch) = w.watch.as_mut() else {
        return false;
    };
    match watch.on_direct() {
        Ok(true) => true,
        Ok(false) if last_look && watch.without_direct() == GuestUse::Silent => {
            log::info!(
                "VM {}: the guest sent nothing over either path since the re-plug (idle); it keeps the primary",
                rec.name()
            );
            true
        }
        Ok(false) => false,
        Err(e) => {
            log::warn!("VM {}: {e}", rec.name());
            w.watch = None;
            false
        }
    }
}

/// A watch on the guest over both paths, opened as the monitor moves it back.
fn watch_guest(rec: &VmRecord) -> Option<GuestWatch> {
    rec.steering
        .as_ref()
        .and_then(|s| super::path::watch_guest(rec, s))
}

/// The record's note for the machine's state; keeps `old`'s start and cause while
/// the state is the same.
fn note_for(state: &FailoverState, old: Option<&FailoverNote>) -> Option<FailoverNote> {
    let (name, cause, reason) = match state {
        FailoverState::Direct | FailoverState::NoDirect => return None,
        FailoverState::Synthetic { cause, .. } => (FailoverStage::Synthetic, *cause, None),
        FailoverState::Recovering { cause, .. } => (FailoverStage::Recovering, *cause, None),
        FailoverState::GaveUp { reason } => (FailoverStage::GaveUp, None, Some(reason.clone())),
    };
    let cause = cause
        .map(|c| c.to_string())
        .or_else(|| old.map(|o| o.cause.clone()))
        .unwrap_or_else(|| "direct path lost".to_string());
    match old {
        Some(o) if o.state == name && o.cause == cause && o.reason == reason => Some(o.clone()),
        _ => Some(FailoverNote {
            state: name,
            cause,
            reason,
            since: epoch_now(),
        }),
    }
}

/// Carries out one action of the machine; `Err` says why it failed.
async fn act(
    node: &LocalNode,
    config: &MonitorConfig,
    store: &VmStore,
    rec: &VmRecord,
    w: &mut Watched,
    action: &Action,
) -> Result<(), String> {
    let name = rec.name();
    let exec = |op: NodeOp| async move {
        node.exec(store, name, &op)
            .await
            .map_err(|e| format!("{op:?}: {e}"))
    };
    // Best effort: the switch's hold only protects the switch-over window.
    let hold = || async {
        if let Err(e) = exec(NodeOp::Hold).await {
            log::warn!("VM {name}: failover: no switch hold: {e}");
        }
    };
    match action {
        Action::Route {
            route: Route::Synthetic,
        } => {
            // Until the guest lets go of its primary it drops what reaches the
            // standby: the switch keeps it meanwhile.
            hold().await;
            exec(NodeOp::Route {
                route: Route::Synthetic,
            })
            .await?;
        }
        Action::UnplugPrimary => {
            // The primary's link down first: the guest sends over the standby at
            // once instead of into the failed path until the unplug completes.
            if let Err(e) = exec(NodeOp::PrimaryLink { up: false }).await {
                log::debug!("VM {name}: failover: primary link down: {e}");
            }
            let timeout_ms = u64::try_from(config.unplug_timeout.as_millis()).unwrap_or(u64::MAX);
            let unplugged = exec(NodeOp::UnplugDirect { timeout_ms }).await;
            // Whatever the unplug did, the held frames go to the standby.
            let released = exec(NodeOp::ReleaseHold {
                onto: PathKind::Synthetic,
            })
            .await;
            if unplugged.is_err() {
                // A VMM that already dropped the device (e.g. a VF removed under
                // vfio) is where the unplug would have left it.
                if let Ok(super::node::NodeAnswer::Attached { attached: false }) =
                    node.exec(store, name, &NodeOp::DirectAttached).await
                {
                    LocalNode::set_direct(store, name, DirectState::Detached)
                        .map_err(|e| e.to_string())?;
                    return Ok(());
                }
            }
            unplugged?;
            released?;
        }
        Action::Announce => {
            exec(NodeOp::Announce).await?;
        }
        Action::Route { route: Route::Both } => {
            // A re-created stand-in tap is a new bridge port: steer it as at launch.
            if let Some(s) = &rec.steering {
                s.prepare(Path::new(super::path::CLASS_NET))
                    .map_err(|e| format!("cannot prepare {s}: {e}"))?;
            }
            hold().await;
            exec(NodeOp::Route { route: Route::Both }).await?;
        }
        Action::ReplugPrimary => {
            w.watch = watch_guest(rec);
            exec(NodeOp::PlugDirect).await?;
        }
        Action::Route {
            route: Route::Direct,
        } => {
            exec(NodeOp::Route {
                route: Route::Direct,
            })
            .await?;
            exec(NodeOp::ReleaseHold {
                onto: PathKind::Direct,
            })
            .await?;
        }
        Action::PrimaryLink { up } => {
            if *up {
                // A move back by the primary's link: watched as a re-plug.
                w.watch = watch_guest(rec);
            }
            exec(NodeOp::PrimaryLink { up: *up }).await?;
        }
        Action::GiveUp { reason } => {
            log::warn!("{reason}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::store::tests::{record, TempDir};
    use sriov::mac::MacAddr;

    /// Moves this test's thread to a network namespace of its own (needs root: CI
    /// is root; fails without it) and returns a runner of `ip` commands in it.
    fn own_netns() -> impl Fn(&str) {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(root, "needs root: a network namespace");
        // SAFETY: unshare(2) moves only this thread (the test's own) to a new
        // network namespace; the test's runtime runs on it.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
        |args: &str| {
            let st = std::process::Command::new("sh")
                .args(["-c", &format!("ip {args}")])
                .status()
                .expect("ip");
            assert!(st.success(), "ip {args}");
        }
    }

    fn current_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A link appearing, coming up and going down each wake the monitor; a
    /// quiet namespace does not. In a network namespace of this test's thread.
    #[test]
    fn link_events_wake_on_link_changes() {
        let ip = own_netns();
        current_thread_runtime().block_on(async {
            let events = KernelEvents::links().expect("open");
            let quiet = Duration::from_millis(300);
            let woke = |d| tokio::time::timeout(d, events.changed());
            assert!(woke(quiet).await.is_err(), "woke without a change");
            ip("link add lev0 type veth peer name lev1");
            woke(Duration::from_secs(5))
                .await
                .expect("no wake-up for a new link")
                .expect("link events");
            ip("link set lev0 up && ip link set lev1 up");
            woke(Duration::from_secs(5))
                .await
                .expect("no wake-up for a link up")
                .expect("link events");
            ip("link set lev0 down");
            woke(Duration::from_secs(5))
                .await
                .expect("no wake-up for a link down")
                .expect("link events");
        });
    }

    /// A network device added or removed is a kernel uevent (as a VF's PCI
    /// removal is, which a test cannot cause here): each wakes the monitor, a
    /// quiet namespace does not. The uevents of a namespace's own net devices
    /// reach only that namespace, so this runs in one of the test's thread.
    #[test]
    fn device_uevents_wake_on_devices_coming_and_going() {
        let ip = own_netns();
        current_thread_runtime().block_on(async {
            let events = KernelEvents::devices().expect("open");
            let woke = |d| tokio::time::timeout(d, events.changed());
            assert!(
                woke(Duration::from_millis(300)).await.is_err(),
                "woke without a change"
            );
            ip("link add uev0 type veth peer name uev1");
            woke(Duration::from_secs(5))
                .await
                .expect("no wake-up for a new device")
                .expect("device uevents");
            ip("link del uev0");
            woke(Duration::from_secs(5))
                .await
                .expect("no wake-up for a removed device")
                .expect("device uevents");
        });
    }

    /// Only PCI and network devices' uevents wake the monitor.
    #[test]
    fn test_uevent_wakes_for_pci_and_net_only() {
        let pci = b"remove@/devices/pci0000:00/0000:00:03.0/0000:03:10.1\0ACTION=remove\0\
DEVPATH=/devices/pci0000:00/0000:00:03.0/0000:03:10.1\0SUBSYSTEM=pci\0PCI_SLOT_NAME=0000:03:10.1\0SEQNUM=4242\0";
        assert!(uevent_wakes(pci));
        let net = b"add@/devices/virtual/net/vf0tap\0ACTION=add\0SUBSYSTEM=net\0INTERFACE=vf0tap\0";
        assert!(uevent_wakes(net));
        let disk = b"change@/devices/virtual/block/loop0\0ACTION=change\0SUBSYSTEM=block\0";
        assert!(!uevent_wakes(disk));
        // A value that only starts like one does not count.
        assert!(!uevent_wakes(b"add@/x\0SUBSYSTEM=pci_bus\0"));
        assert!(!uevent_wakes(b""));
    }

    fn standin(root: &Path, flags: Option<&str>, on_bridge: bool) -> VmRecord {
        let dev = root.join("sys/class/net/vf0tap");
        if let Some(f) = flags {
            std::fs::create_dir_all(&dev).expect("mkdir");
            std::fs::write(dev.join("flags"), f).expect("flags");
            if on_bridge {
                std::os::unix::fs::symlink("../esw0", dev.join("master")).expect("master");
            }
        }
        let mut rec = record("vm1", None, Phase::Running);
        rec.steering = Some(Steering::Bridge {
            bridge: "esw0".into(),
            vf_port: "vf0tap".into(),
            pf_port: "pf0".into(),
            uplink: Some("pfup0".into()),
            mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]),
        });
        rec
    }

    #[test]
    fn test_standin_health_follows_the_tap() {
        let d = TempDir::new();
        let rec = standin(&d.0, Some("0x1003\n"), true);
        assert_eq!(direct_health(&rec, &d.0), Ok(()));
        let d = TempDir::new();
        let rec = standin(&d.0, Some("0x1002\n"), true);
        assert_eq!(direct_health(&rec, &d.0), Err(Loss::VfLinkDown));
        // Up, but not on the embedded switch: it carries nothing.
        let d = TempDir::new();
        let rec = standin(&d.0, Some("0x1003\n"), false);
        assert_eq!(direct_health(&rec, &d.0), Err(Loss::VfRemoved));
        let d = TempDir::new();
        let rec = standin(&d.0, None, false);
        assert_eq!(direct_health(&rec, &d.0), Err(Loss::VfRemoved));
    }

    #[test]
    fn test_vf_health_follows_the_device_and_the_pf_link() {
        let d = TempDir::new();
        let mut rec = record("vm1", None, Phase::Running);
        rec.vf = Some("0000:03:00.1".into());
        rec.steering = Some(Steering::Vf {
            pf: "nosuchpf0".into(),
            vf: 0,
            mac: MacAddr([0x52, 0x54, 0, 0, 0, 1]),
        });
        assert_eq!(direct_health(&rec, &d.0), Err(Loss::VfRemoved));
        std::fs::create_dir_all(d.0.join("sys/bus/pci/devices/0000:03:00.1")).expect("vf");
        let pf = d.0.join("sys/class/net/nosuchpf0");
        std::fs::create_dir_all(&pf).expect("pf");
        std::fs::write(pf.join("carrier"), "0\n").expect("carrier");
        assert_eq!(direct_health(&rec, &d.0), Err(Loss::PfLinkDown));
        // Link up; the VF's link state cannot be read for a PF the kernel does
        // not have, which is not taken for a fault.
        std::fs::write(pf.join("carrier"), "1\n").expect("carrier");
        assert_eq!(direct_health(&rec, &d.0), Ok(()));
    }

    #[test]
    fn test_note_follows_the_machine_and_keeps_its_start() {
        let now = Instant::now();
        assert_eq!(note_for(&FailoverState::Direct, None), None);
        let synthetic = FailoverState::Synthetic {
            since: now,
            cause: Some(Loss::VfLinkDown),
            back_since: None,
            attempts: 0,
        };
        let n = note_for(&synthetic, None).expect("a note");
        assert_eq!(
            (n.state, n.cause.as_str()),
            (FailoverStage::Synthetic, "VF link down")
        );
        let old = FailoverNote { since: 7, ..n };
        assert_eq!(note_for(&synthetic, Some(&old)).map(|n| n.since), Some(7));
        // Moving back: the cause is kept from the note when the machine lost it.
        let recovering = FailoverState::Recovering {
            since: now,
            attempt: 1,
            cause: None,
        };
        let r = note_for(&recovering, Some(&old)).expect("a note");
        assert_eq!(
            (r.state, r.cause.as_str()),
            (FailoverStage::Recovering, "VF link down")
        );
        let gave_up = FailoverState::GaveUp {
            reason: "no luck".into(),
        };
        let g = note_for(&gave_up, Some(&r)).expect("a note");
        assert_eq!(g.state, FailoverStage::GaveUp);
        assert_eq!(g.reason.as_deref(), Some("no luck"));
        assert_eq!(note_for(&FailoverState::NoDirect, Some(&g)), None);
    }
}
