//! `accelnet vm enable|disable|set`: moving a running VM between its paths.
//!
//! The guest's `net_failover` takes frames from the standby (virtio, the switch)
//! only while no primary (VF) is registered, and from the primary only once it is
//! registered and up. Nobody tells the wire when that changes, so accelnet moves
//! the VM's MAC itself, timed to the guest:
//!
//! * disable: the embedded switch sends the MAC to both paths (where it can),
//!   the VMM unplugs the primary and waits for the guest to release it
//!   (`DEVICE_DELETED`), then the MAC is pinned to the PF (the switch), the switch
//!   announces it on the wire (RARP), and a VF goes back to the pool.
//! * enable: a VF is taken from the pool with the VM's MAC (or the stand-in's tap
//!   is used), the MAC goes to both paths, the VMM plugs the primary, and once the
//!   guest sends over it (the host sees the frames) the MAC is pinned to it.
//!
//! Every failure leaves the VM on the path that works: a primary that cannot be
//! plugged leaves it on the synthetic path with the VF returned; an unplug the
//! guest never acknowledges leaves it on the direct path.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use migration::live::{CarriedFrame, GuestUse, HeldPart};
use serde::Serialize;
use sriov::errors::{ErrorId, SeedError};
use sriov::mac::MacAddr;
use sriov::netlink::Netlink;
use sriov::pool::PoolVf;
use sriov::steer::{Route, SteerError, Steering};
use sriov::sysfs::SysfsRoot;
use sriov::tiers::Tier;
use vmm_plugin::{DirectPath, Vmm, VmmError, VmmKind};
use vswitch::api::{PortKind, WireFrame};
use vswitch::{IncomingFrames, Request, Response};

use super::store::{DirectState, Phase, VmRecord, VmStore};
use super::{
    allocate_vf, direct_label, open_pool, release_vf, switch_request, tier_queue_pairs,
    vf_queue_pairs, vm_error, vmm_for, ModelArg, OpLock, Paths, TierArg,
};
use crate::sriov_cmd::{json, print};

/// `/sys/class/net` of the network namespace accelnet runs in.
pub(super) const CLASS_NET: &str = "/sys/class/net";

/// Arguments of `accelnet vm enable`.
#[derive(Debug, Args)]
pub(super) struct EnableArgs {
    /// VM names.
    #[arg(required = true)]
    names: Vec<String>,
    /// Performance tier (default: the VM's, else low).
    #[arg(long, value_enum)]
    performance: Option<TierArg>,
    /// Direct path: this VF (PCI address), or `auto` for any free VF of the pool
    /// (default: what the VM was launched with).
    #[arg(long, value_name = "PCI|auto", conflicts_with = "vf_standin")]
    vf: Option<String>,
    /// Direct path, lab stand-in for a VF: an emulated NIC on this tap (QEMU only).
    #[arg(long, value_name = "TAP")]
    vf_standin: Option<String>,
    /// Model of the stand-in NIC.
    #[arg(long, value_enum, default_value = "e1000e", requires = "vf_standin")]
    standin_model: ModelArg,
    /// Seconds to wait for the guest to use the new primary. After that, an idle
    /// guest (nothing over either path) gets the MAC pinned to it anyway; one
    /// that sent over the synthetic path only has it unplugged again.
    #[arg(long, default_value_t = 10)]
    settle: u64,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
}

impl EnableArgs {
    /// `vm enable NAME`: the VM's own direct path and tier, the default settle.
    pub(super) fn defaults(name: &str) -> EnableArgs {
        EnableArgs {
            names: vec![name.to_string()],
            performance: None,
            vf: None,
            vf_standin: None,
            standin_model: ModelArg::E1000e,
            settle: 10,
            json: true,
        }
    }
}

/// Arguments of `accelnet vm disable`.
#[derive(Debug, Args)]
pub(super) struct DisableArgs {
    /// VM names.
    #[arg(required = true)]
    names: Vec<String>,
    /// Seconds to wait for the guest to release the primary.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `accelnet vm set`.
#[derive(Debug, Args)]
pub(super) struct SetArgs {
    /// VM names.
    #[arg(required = true)]
    names: Vec<String>,
    /// The new performance tier.
    #[arg(long, value_enum)]
    performance: TierArg,
}

/// One path change as the host did it: when each step happened, in milliseconds
/// from the start of the change.
#[derive(Debug, Serialize)]
pub(super) struct PathChange {
    vm: String,
    action: &'static str,
    /// Whether anything was done (false: the VM was there already).
    changed: bool,
    /// The direct path now.
    direct: DirectState,
    #[serde(skip_serializing_if = "Option::is_none")]
    vf: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    steering: Option<String>,
    /// The embedded switch started sending the MAC to both paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    both_ms: Option<u64>,
    /// The VMM plugged the primary, or the guest released it (`DEVICE_DELETED`).
    #[serde(skip_serializing_if = "Option::is_none")]
    vmm_ms: Option<u64>,
    /// The host saw the guest's first frame over the new primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_on_direct_ms: Option<u64>,
    /// The MAC was pinned to the new path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned_ms: Option<u64>,
    /// Frames the switch held for the guest during the change and then delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<u64>,
    /// Of those, frames sent to the new primary through the embedded switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    redirected: Option<u64>,
    /// Uplinks the switch announced the MAC on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    announced: Vec<String>,
    total_ms: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

impl PathChange {
    fn new(vm: &str, action: &'static str, direct: DirectState) -> PathChange {
        PathChange {
            vm: vm.to_string(),
            action,
            changed: false,
            direct,
            vf: None,
            steering: None,
            both_ms: None,
            vmm_ms: None,
            guest_on_direct_ms: None,
            pinned_ms: None,
            held: None,
            redirected: None,
            announced: Vec::new(),
            total_ms: 0,
            notes: Vec::new(),
        }
    }

    fn human(&self) -> String {
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        let mut s = match (self.changed, self.action) {
            (true, "disable") => {
                format!(
                    "VM {}: direct path removed; traffic on the synthetic path\n",
                    self.vm
                )
            }
            (true, _) => format!("VM {}: direct path attached; traffic on it\n", self.vm),
            (false, "disable") => format!(
                "VM {}: already on the synthetic path (nothing to do)\n",
                self.vm
            ),
            (false, _) => format!("VM {}: already accelerated (nothing to do)\n", self.vm),
        };
        if let Some(v) = &self.vf {
            s.push_str(&format!("  direct path: {v}\n"));
        }
        if let Some(st) = &self.steering {
            s.push_str(&format!("  embedded switch: {st}\n"));
        }
        if self.total_ms > 0 {
            let vmm = if self.action == "disable" {
                "guest released the primary"
            } else {
                "primary plugged"
            };
            s.push_str(&format!(
                "  MAC to both paths {}, {vmm} {}, guest sending on the primary {}, MAC pinned {}, total {} ms\n",
                ms(self.both_ms),
                ms(self.vmm_ms),
                ms(self.guest_on_direct_ms),
                ms(self.pinned_ms),
                self.total_ms
            ));
        }
        match (self.held, self.redirected) {
            (Some(h), Some(r)) => s.push_str(&format!(
                "  the switch held {h} frame(s) while the guest took up the primary, and sent {r} to it through the embedded switch\n"
            )),
            (Some(h), None) if self.action == "disable" => s.push_str(&format!(
                "  the switch held {h} frame(s) for the guest while it let go of the primary\n"
            )),
            (Some(h), None) => s.push_str(&format!(
                "  the switch held {h} frame(s) while the guest took up the primary, and delivered them on the synthetic path\n"
            )),
            (None, _) => {}
        }
        if !self.announced.is_empty() {
            s.push_str(&format!(
                "  announced on the wire via {}\n",
                self.announced.join(", ")
            ));
        }
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        s
    }
}

fn ms_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Starts (`on`, ending by itself after `within` plus 2 s) or releases the
/// switch's hold on the VM port's receive side, releasing to the guest or, with
/// `via`, out of that uplink (to the VF through the embedded switch); returns the
/// frames held and, of those, sent via the uplink.
pub(super) fn switch_hold(
    rec: &VmRecord,
    on: bool,
    within: Duration,
    via: Option<&str>,
) -> anyhow::Result<(u64, u64)> {
    let req = Request::Hold {
        port: rec.port.clone(),
        hold: on,
        // The switch ends the hold by itself if accelnet dies in between.
        max_ms: on.then(|| u64::try_from(within.as_millis()).unwrap_or(u64::MAX) + 2000),
        via: via.map(str::to_string),
        on_stop: false,
    };
    match switch_request(&rec.switch_control, &req)? {
        Response::Held {
            held, redirected, ..
        } => Ok((held, redirected)),
        other => bail!("the switch answered {other:?} to a hold"),
    }
}

/// Arms the VM port's hold for a live migration's switch-over: it starts when the
/// VMM stops the VM and lasts at most `max` (the switch ends it by itself).
pub(super) fn switch_hold_on_stop(rec: &VmRecord, max: Duration) -> anyhow::Result<()> {
    let req = Request::Hold {
        port: rec.port.clone(),
        hold: true,
        max_ms: Some(u64::try_from(max.as_millis()).unwrap_or(u64::MAX)),
        via: None,
        on_stop: true,
    };
    match switch_request(&rec.switch_control, &req)? {
        Response::Held { .. } => Ok(()),
        other => bail!("the switch answered {other:?} to arming a hold"),
    }
}

/// Takes a part of the frames the switch holds for the VM (the hold ends with the
/// last).
pub(super) fn switch_take_held(rec: &VmRecord) -> anyhow::Result<HeldPart> {
    let req = Request::HoldTake {
        port: rec.port.clone(),
        max_bytes: None,
    };
    match switch_request(&rec.switch_control, &req)? {
        Response::HeldFrames { frames, more, .. } => Ok(HeldPart {
            frames: frames
                .into_iter()
                .map(|f| CarriedFrame {
                    frame: f.frame,
                    vnet: f.vnet,
                })
                .collect(),
            more,
        }),
        other => bail!("the switch answered {other:?} to taking held frames"),
    }
}

/// Most hex characters of frames in one `inject` request (the switch reads
/// request lines of up to 512 KiB).
const INJECT_CHUNK: usize = 192 * 1024;

/// Has the switch deliver `frames` to the VM, in order, in requests that fit its
/// control line; returns how many it queued.
pub(super) fn switch_inject(rec: &VmRecord, frames: &[CarriedFrame]) -> anyhow::Result<u64> {
    let mut queued = 0;
    let mut rest = frames;
    while !rest.is_empty() {
        let mut n = 0;
        let mut len = 0;
        for f in rest {
            let l = f.frame.len() + f.vnet.as_ref().map_or(0, String::len);
            if n > 0 && len + l > INJECT_CHUNK {
                break;
            }
            len += l;
            n += 1;
        }
        let (part, next) = rest.split_at(n);
        let req = Request::Inject {
            port: rec.port.clone(),
            frames: part
                .iter()
                .map(|f| WireFrame {
                    frame: f.frame.clone(),
                    vnet: f.vnet.clone(),
                })
                .collect(),
        };
        match switch_request(&rec.switch_control, &req)? {
            Response::Injected {
                queued: q, dropped, ..
            } => {
                queued += q;
                if dropped > 0 {
                    log::warn!(
                        "VM {}: {dropped} injected frame(s) did not fit the port's queue",
                        rec.name()
                    );
                }
            }
            other => bail!("the switch answered {other:?} to injecting frames"),
        }
        rest = next;
    }
    Ok(queued)
}

/// [`switch_hold`] for a path change that works without it: a switch that cannot
/// hold is logged, not fatal (the guest's switch-over window is unprotected).
fn hold(rec: &VmRecord, on: bool, within: Duration, via: Option<&str>) -> Option<(u64, u64)> {
    switch_hold(rec, on, within, via)
        .map_err(|e| {
            log::warn!(
                "VM {}: switch hold {}: {e:#}",
                rec.name(),
                if on { "on" } else { "off" }
            );
        })
        .ok()
}

/// Has the switch announce the VM's MAC out of its uplinks; returns them. With
/// `on_attach`, once the port's receive rings start (a migrated VM resumed); the
/// list is empty while that is pending.
pub(super) fn announce(rec: &VmRecord, on_attach: bool) -> anyhow::Result<Vec<String>> {
    let mac: MacAddr = rec.spec.nic.mac.parse()?;
    match switch_request(
        &rec.switch_control,
        &Request::Announce {
            port: rec.port.clone(),
            mac: vswitch::MacAddr(mac.0),
            on_attach,
        },
    )? {
        Response::Announced { uplinks, .. } => Ok(uplinks),
        other => bail!("the switch answered the announce with {other:?}"),
    }
}

/// Ethertype of RARP, what QEMU's self-announce writes to every NIC's tap.
const ETH_P_RARP: u16 = 0x8035;

/// What the host watches while a just-plugged primary waits for the guest: its
/// own frames over the direct path, and its switch port's receive counter (its
/// frames over the synthetic path), which tells an idle guest from one that does
/// not use the primary. The synthetic path is looked at over the second half of
/// the wait only: until the primary's link is up the guest rightly sends over
/// the standby (replies, a migrated guest's announcements), and after that
/// `net_failover` sends over the primary whenever it can.
///
/// The guest's own frames, not the stand-in tap's receive counter: QEMU writes
/// to the tap too. After an incoming migration it announces every NIC, the
/// just-plugged e1000e too, with RARPs (3-4 of them, 50-350 ms apart, from ~300
/// ms after the plug) while the guest needs ~800 ms to bring the NIC up; taking
/// the first RARP for the guest pinned its MAC to a NIC still dropping frames.
/// So the count is of what came in from QEMU except RARPs.
#[derive(Debug)]
pub(super) struct GuestWatch {
    direct: IncomingFrames,
    control: PathBuf,
    port: String,
    synthetic_before: Option<u64>,
    halfway: bool,
}

impl GuestWatch {
    /// Whether a frame of the guest's own came over the direct path.
    pub(super) fn on_direct(&mut self) -> std::io::Result<bool> {
        Ok(self.direct.seen()? > 0)
    }

    /// Halfway through the wait: the synthetic path counts from now (once).
    pub(super) fn halfway(&mut self) {
        if !self.halfway {
            self.halfway = true;
            self.synthetic_before = port_rx(&self.control, &self.port);
        }
    }

    /// Nothing from the guest over the direct path, then: did it send over the
    /// synthetic path since [`GuestWatch::halfway`]? Unknown (the switch did not
    /// answer) counts as yes, which keeps the guest where it was seen working.
    pub(super) fn without_direct(&self) -> GuestUse {
        match (self.synthetic_before, port_rx(&self.control, &self.port)) {
            (Some(before), Some(now)) if now == before => GuestUse::Silent,
            _ => GuestUse::SyntheticOnly,
        }
    }
}

/// Frames the switch received from `port` (the guest's over the synthetic path).
fn port_rx(control: &Path, port: &str) -> Option<u64> {
    match switch_request(control, &Request::Stats {}) {
        Ok(Response::Stats { ports }) => {
            ports.iter().find(|p| p.name == port).map(|p| p.rx_packets)
        }
        _ => None,
    }
}

/// Starts watching for the guest over `steering`'s direct path (before plugging
/// it); `None` where the host cannot see its frames there (a NIC's VF, or the
/// watch failed: logged).
pub(super) fn watch_guest(rec: &VmRecord, steering: &Steering) -> Option<GuestWatch> {
    let tap = steering.standin_tap()?;
    let direct = IncomingFrames::open(tap, &[ETH_P_RARP])
        .map_err(|e| {
            log::warn!(
                "VM {}: cannot see the guest's frames over {tap}: {e}",
                rec.name()
            );
        })
        .ok()?;
    Some(GuestWatch {
        direct,
        synthetic_before: port_rx(&rec.switch_control, &rec.port),
        control: rec.switch_control.clone(),
        port: rec.port.clone(),
        halfway: false,
    })
}

/// Waits up to `settle` for the guest's first own frame over the direct path
/// (`watch`, opened before the plug); without one, whether it sent over the
/// synthetic path in the second half of the wait.
pub(super) async fn wait_guest_on_direct(watch: &mut GuestWatch, settle: Duration) -> GuestUse {
    let halfway = Instant::now() + settle / 2;
    let deadline = Instant::now() + settle;
    loop {
        if Instant::now() >= halfway {
            watch.halfway();
        }
        match watch.on_direct() {
            Ok(true) => return GuestUse::Direct,
            Ok(false) => {}
            Err(e) => {
                log::warn!("{e}");
                return GuestUse::SyntheticOnly;
            }
        }
        if Instant::now() >= deadline {
            return watch.without_direct();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The interfaces of the switch's uplinks.
pub(super) fn switch_uplinks(control: &Path) -> anyhow::Result<Vec<String>> {
    match switch_request(control, &Request::Ports {})? {
        Response::Ports { ports } => Ok(ports
            .into_iter()
            .filter(|p| p.kind == PortKind::Uplink)
            .map(|p| p.path)
            .collect()),
        other => bail!("the switch answered {other:?} to a port listing"),
    }
}

/// The lab stand-in's steering for `tap`, set up for use.
pub(super) fn standin_steering(
    control: &Path,
    tap: &str,
    mac: MacAddr,
) -> anyhow::Result<Steering> {
    let class_net = Path::new(CLASS_NET);
    let uplinks = switch_uplinks(control)?;
    let s = Steering::standin_bridge(class_net, tap, &uplinks, mac)?;
    s.prepare(class_net)
        .with_context(|| format!("cannot set up {s}"))?;
    Ok(s)
}

/// A real VF's steering.
pub(super) fn vf_steering(vf: &PoolVf, mac: MacAddr) -> anyhow::Result<Steering> {
    let pf = vf
        .pf_netdev
        .clone()
        .with_context(|| format!("PF {} of VF {} has no network interface", vf.pf, vf.vf))?;
    Ok(Steering::Vf {
        pf,
        vf: vf.index,
        mac,
    })
}

/// Moves the MAC; `None` steering (nothing to steer) is fine.
pub(super) fn route(steering: Option<&Steering>, to: Route) -> anyhow::Result<()> {
    if let Some(s) = steering {
        let nl = Netlink::open()?;
        s.route(&nl, Path::new(CLASS_NET), to)
            .with_context(|| format!("cannot steer {} to the {to} path", s.mac()))?;
    }
    Ok(())
}

/// Takes the lab bridge's entry for the VM away (a stopped VM's MAC must not stay
/// pinned); nothing on a NIC, whose VF the pool resets.
pub(super) fn unsteer(steering: Option<&Steering>) {
    if let Some(s) = steering {
        if let Err(e) = Netlink::open()
            .map_err(SteerError::from)
            .and_then(|nl| s.clear(&nl))
        {
            log::warn!("cannot take {} out of the embedded switch: {e}", s.mac());
        }
    }
}

/// A running VM's record and its VMM.
async fn running(store: &VmStore, name: &str) -> anyhow::Result<(VmRecord, Box<dyn Vmm>)> {
    let rec = store.get(name)?;
    if rec.phase != Phase::Running {
        bail!("VM {name} is {}, not running", rec.phase.name());
    }
    if !rec.process_alive(Path::new("/proc")) {
        bail!("VM {name}: its VMM process is gone (the next command marks it failed)");
    }
    let vmm = vmm_for(&rec, None, true).await?;
    Ok((rec, vmm))
}

/// Maps a VMM error to the seed's id where there is one.
fn seed(e: VmmError) -> anyhow::Error {
    let id = match &e {
        VmmError::NoNic { vm, .. } => Some(SeedError::new(ErrorId::GetNetworkAdapterFailed, vm)),
        _ => None,
    };
    match id {
        Some(id) => anyhow::Error::new(e).context(id.to_string()),
        None => anyhow::Error::new(e),
    }
}

/// The path changes of one `vm enable|disable` over several VMs: each printed as
/// it ends (or all as one JSON array at the end), failures named, exit 1 if any.
struct Outcomes {
    verb: &'static str,
    json: bool,
    done: Vec<PathChange>,
    failed: Vec<String>,
}

impl Outcomes {
    fn new(verb: &'static str, json: bool) -> Outcomes {
        Outcomes {
            verb,
            json,
            done: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn add(&mut self, name: &str, res: anyhow::Result<PathChange>) -> anyhow::Result<()> {
        match res {
            Ok(c) => {
                if !self.json {
                    print(&c.human())?;
                }
                self.done.push(c);
            }
            Err(e) => {
                eprintln!("accelnet: {}", vm_error(name, &e));
                self.failed.push(name.to_string());
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        if self.json {
            print(&json(&self.done)?)?;
        }
        if self.failed.is_empty() {
            Ok(())
        } else {
            bail!("could not {} {}", self.verb, self.failed.join(", "))
        }
    }
}

/// How long `vm enable` waits for the guest to let go of a primary it does not
/// use, when it unplugs it again.
const UNPLUG_TIMEOUT_S: u64 = 20;

/// `accelnet vm disable`.
pub(super) async fn disable(store: &VmStore, paths: &Paths, a: &DisableArgs) -> anyhow::Result<()> {
    let mut out = Outcomes::new("disable", a.json);
    for name in &a.names {
        let res = disable_one(store, paths, name, Duration::from_secs(a.timeout)).await;
        out.add(name, res)?;
    }
    out.finish()
}

pub(super) async fn disable_one(
    store: &VmStore,
    paths: &Paths,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<PathChange> {
    let (rec, vmm) = running(store, name).await?;
    let _lock = OpLock::take(&rec, "vm disable")?;
    let rec = store.get(name)?;
    match rec.direct {
        DirectState::None => bail!("VM {name} is not accelerated (it has no direct path)"),
        DirectState::Detached => {
            let mut change = PathChange::new(name, "disable", rec.direct);
            if let Some(note) = &rec.failover {
                // The node agent's failover had it on the synthetic path, to move it
                // back later: the operator's disable ends that, and the VF goes back.
                change.changed = true;
                change.notes.push(format!(
                    "the node agent's failover ({}: {}) no longer moves it back",
                    note.state, note.cause
                ));
                give_back_direct(store, paths, &rec, &mut change)?;
            }
            return Ok(change);
        }
        DirectState::Attached => {}
    }
    let steering = rec.steering.as_ref();
    let mut change = PathChange::new(name, "disable", DirectState::Detached);
    change.changed = true;
    change.steering = steering.map(ToString::to_string);
    let t0 = Instant::now();
    // 1. The switch holds what it would hand the standby: between the primary's
    //    driver stopping and net_failover unregistering it, the guest drops frames
    //    on the standby. Released after DEVICE_DELETED, they are taken.
    hold(&rec, true, timeout, None);
    // 2. Frames for the MAC to both paths: the guest takes them from the primary
    //    until it stops it, from the switch's hold after.
    if let Err(e) = route(steering, Route::Both) {
        hold(&rec, false, timeout, None);
        return Err(e);
    }
    change.both_ms = Some(ms_since(t0));
    // 3. Unplug; the guest acknowledges with DEVICE_DELETED.
    if let Err(e) = vmm.detach_direct(timeout).await {
        let still = vmm.status().await.map(|s| s.direct_attached);
        return match still {
            Ok(true) => {
                // The guest still has its primary: keep the MAC there, and the
                // standby gets its frames again.
                hold(&rec, false, timeout, None);
                route(steering, Route::Direct)?;
                Err(anyhow::Error::new(e).context(format!(
                    "the direct path could not be removed; VM {name} stays on it"
                )))
            }
            Ok(false) => {
                finish_disable(store, paths, &rec, &mut change, t0).await?;
                change
                    .notes
                    .push(format!("the VMM reported an error after the unplug: {e}"));
                Ok(change)
            }
            Err(e2) => {
                // The VMM is gone or unreachable: nothing carries the VM any more.
                hold(&rec, false, timeout, None);
                route(steering, Route::Synthetic).ok();
                Err(anyhow::Error::new(e).context(format!(
                    "unplugging failed and the VMM does not answer ({e2})"
                )))
            }
        };
    }
    change.vmm_ms = Some(ms_since(t0));
    finish_disable(store, paths, &rec, &mut change, t0).await?;
    Ok(change)
}

/// After the guest let go of the primary: MAC to the switch, announce, VF back.
async fn finish_disable(
    store: &VmStore,
    paths: &Paths,
    rec: &VmRecord,
    change: &mut PathChange,
    t0: Instant,
) -> anyhow::Result<()> {
    let pinned = route(rec.steering.as_ref(), Route::Synthetic);
    change.held = hold(rec, false, Duration::ZERO, None).map(|(held, _)| held);
    pinned?;
    change.pinned_ms = Some(ms_since(t0));
    match announce(rec, false) {
        Ok(uplinks) => change.announced = uplinks,
        Err(e) => change
            .notes
            .push(format!("could not announce the MAC on the wire: {e:#}")),
    }
    change.total_ms = ms_since(t0);
    give_back_direct(store, paths, rec, change)
}

/// The end of a disable, once the guest is off its direct path: a VF goes back
/// to the pool (reset), the record says detached, and no failover moves it back.
fn give_back_direct(
    store: &VmStore,
    paths: &Paths,
    rec: &VmRecord,
    change: &mut PathChange,
) -> anyhow::Result<()> {
    let name = rec.name();
    if let Some(vf) = &rec.vf {
        change.notes.push(match release_vf(paths, vf, name)? {
            Some(reason) => format!("VF {vf} could not be reset and is quarantined: {reason}"),
            None => format!("VF {vf} returned to the pool"),
        });
    }
    let real_vf = rec.vf.is_some();
    store.update(name, |r| {
        r.direct = DirectState::Detached;
        r.failover = None;
        if real_vf {
            r.vf = None;
            r.steering = None;
        }
        Ok(())
    })?;
    Ok(())
}

/// `accelnet vm enable`.
pub(super) async fn enable(store: &VmStore, paths: &Paths, a: &EnableArgs) -> anyhow::Result<()> {
    let mut out = Outcomes::new("enable", a.json);
    for name in &a.names {
        let res = enable_one(store, paths, name, a).await;
        out.add(name, res)?;
    }
    out.finish()
}

pub(super) async fn enable_one(
    store: &VmStore,
    paths: &Paths,
    name: &str,
    a: &EnableArgs,
) -> anyhow::Result<PathChange> {
    let (rec, vmm) = running(store, name).await?;
    let _lock = OpLock::take(&rec, "vm enable")?;
    let rec = store.get(name)?;
    let tier: Tier = a
        .performance
        .map(Tier::from)
        .or(rec.performance)
        .unwrap_or(Tier::Low);
    if rec.direct == DirectState::Attached {
        if a.performance.is_some() && rec.performance != Some(tier) {
            bail!(
                "VM {name} is enabled at another tier: use `accelnet vm set {name} --performance`"
            );
        }
        return Ok(PathChange::new(name, "enable", rec.direct));
    }
    let queue_pairs = tier_queue_pairs(paths, name, rec.spec.vcpus, tier, None)?;
    let mac: MacAddr = rec.spec.nic.mac.parse()?;
    // Which direct path: the arguments', else the one the VM had.
    let standin = match (&a.vf_standin, &a.vf) {
        (Some(tap), _) => Some((tap.clone(), a.standin_model.into())),
        (None, Some(_)) => None,
        (None, None) => match &rec.spec.direct {
            Some(DirectPath::Standin { tap, model }) => Some((tap.clone(), *model)),
            _ => None,
        },
    };
    let vf_select = a.vf.clone().or_else(|| rec.vf_select.clone());
    if standin.is_none() && vf_select.is_none() {
        bail!(
            "VM {name} has no direct path to enable: give --vf PCI|auto (or --vf-standin TAP in the lab)"
        );
    }
    if standin.is_some() && rec.vmm != VmmKind::Qemu {
        bail!("--vf-standin is QEMU-only; cloud-hypervisor needs a real VF (--vf)");
    }
    let mut change = PathChange::new(name, "enable", DirectState::Attached);
    change.changed = true;
    // 1. The direct path: the stand-in's tap, or a VF from the pool with the MAC.
    let mut taken_vf: Option<String> = None;
    let (path, steering) = match (&standin, &vf_select) {
        (Some((tap, model)), _) => {
            if !Path::new(CLASS_NET).join(tap).exists() {
                bail!("--vf-standin {tap}: no such interface");
            }
            let s = standin_steering(&rec.switch_control, tap, mac)?;
            (
                DirectPath::Standin {
                    tap: tap.clone(),
                    model: *model,
                },
                s,
            )
        }
        (None, Some(want)) => {
            // A VF the VM already holds (reserved by a migration's admission) is
            // used as it is; otherwise one is taken from the pool.
            let vf = match held_vf(paths, &rec)? {
                Some(vf) => vf,
                None => {
                    let root = SysfsRoot::new(&paths.sysfs_root);
                    let vf = allocate_vf(paths, &root, name, want, Some(tier), mac)?;
                    taken_vf = Some(vf.vf.clone());
                    vf
                }
            };
            let s = vf_steering(&vf, mac)?;
            (DirectPath::Vf { pci: vf.vf.clone() }, s)
        }
        (None, None) => unreachable!("checked above"),
    };
    change.vf = Some(direct_label(&path, true));
    change.steering = Some(steering.to_string());
    let give_back = |paths: &Paths| {
        if let Some(vf) = &taken_vf {
            if let Err(e) = open_pool(paths).and_then(|p| Ok(p.release(vf, Some(name))?)) {
                log::warn!("VM {name}: cannot return VF {vf} to the pool: {e:#}");
            }
        }
    };
    let settle = Duration::from_secs(a.settle);
    let t0 = Instant::now();
    let mut watch = watch_guest(&rec, &steering);
    // 2. Where the host sees the guest's first frame over the primary, the switch
    //    holds what it would hand the standby from now on: once net_failover has
    //    registered the primary it drops the standby's frames, and the primary
    //    takes none until its driver is up. Released after the switch-over, out of
    //    the uplink, so the embedded switch hands them to the primary.
    let uplink = steering
        .switch_uplink()
        .filter(|_| watch.is_some())
        .map(str::to_string);
    let holding = uplink.is_some() && hold(&rec, true, settle, None).is_some();
    let unhold = || {
        if holding {
            hold(&rec, false, Duration::ZERO, None);
        }
    };
    // 3. The MAC to both paths (a NIC keeps it on the VF: the guest pairs by it).
    if let Err(e) = route(Some(&steering), Route::Both) {
        unhold();
        give_back(paths);
        return Err(e);
    }
    change.both_ms = Some(ms_since(t0));
    // 4. Plug the primary.
    if let Err(e) = vmm.attach_direct(&path).await {
        let e = seed(e);
        if let Err(e2) = route(Some(&steering), Route::Synthetic) {
            log::warn!("VM {name}: cannot steer back to the synthetic path: {e2:#}");
        }
        unhold();
        give_back(paths);
        return Err(e.context(format!(
            "the direct path could not be plugged; VM {name} stays on the synthetic path"
        )));
    }
    change.vmm_ms = Some(ms_since(t0));
    // 5. Wait until the guest sends over the primary: then its link is up and
    //    net_failover uses it; pin the MAC there.
    if let Some(watch) = watch.as_mut() {
        match wait_guest_on_direct(watch, settle).await {
            GuestUse::Direct => change.guest_on_direct_ms = Some(ms_since(t0)),
            GuestUse::Silent => change.notes.push(format!(
                "the guest sent nothing over either path within {} s (idle); the MAC is pinned to the primary",
                a.settle
            )),
            GuestUse::SyntheticOnly => {
                // It works over the standby but not the primary (no driver for it
                // in the guest?): pinning would cut it off. Unplug it again.
                let why = format!(
                    "the guest sent over the synthetic path only, nothing over the primary within {} s",
                    a.settle
                );
                match vmm.detach_direct(Duration::from_secs(UNPLUG_TIMEOUT_S)).await {
                    Ok(()) => {
                        if let Err(e) = route(Some(&steering), Route::Synthetic) {
                            log::warn!("VM {name}: cannot steer back to the synthetic path: {e:#}");
                        }
                        unhold();
                        give_back(paths);
                        bail!("{why}; it was unplugged again, VM {name} stays on the synthetic path");
                    }
                    Err(e) => change.notes.push(format!(
                        "{why}, and it could not be unplugged again ({}); the MAC is pinned to it",
                        seed(e)
                    )),
                }
            }
        }
    }
    let pinned = route(Some(&steering), Route::Direct);
    if holding {
        // Pinned: out of the uplink they reach the primary. Not pinned: the
        // standby still has the MAC, so they go to the guest.
        let via = uplink.as_deref().filter(|_| pinned.is_ok());
        if let Some((held, redirected)) = hold(&rec, false, Duration::ZERO, via) {
            change.held = Some(held);
            change.redirected = via.map(|_| redirected);
        }
    }
    pinned?;
    change.pinned_ms = Some(ms_since(t0));
    change.total_ms = ms_since(t0);
    if queue_pairs != rec.spec.nic.queue_pairs {
        change.notes.push(format!(
            "the {} tier gives {queue_pairs} queue pair(s); the synthetic path keeps its {} until the VM is launched again",
            tier_name(tier),
            rec.spec.nic.queue_pairs
        ));
    }
    let vf = taken_vf.clone();
    let sel = vf_select.clone();
    store.update(name, |r| {
        r.direct = DirectState::Attached;
        r.failover = None;
        r.spec.direct = Some(path.clone());
        r.vf = vf.clone();
        r.vf_select = sel.clone();
        r.steering = Some(steering.clone());
        r.performance = Some(tier);
        Ok(())
    })?;
    Ok(change)
}

/// The pool's record of the VF `rec` holds, if it holds one.
fn held_vf(paths: &Paths, rec: &VmRecord) -> anyhow::Result<Option<PoolVf>> {
    let Some(vf) = &rec.vf else {
        return Ok(None);
    };
    let entry = open_pool(paths)?
        .list()?
        .into_iter()
        .find(|e| e.vf.vf == *vf)
        .with_context(|| format!("VF {vf} of VM {} is not in the pool", rec.name()))?;
    match entry.state.owner() {
        Some(o) if o.vm == rec.name() => Ok(Some(entry.vf)),
        _ => bail!(
            "VF {vf} is recorded for VM {} but the pool says it is {}",
            rec.name(),
            entry.state.kind()
        ),
    }
}

/// `accelnet vm set`.
pub(super) fn set(store: &VmStore, paths: &Paths, a: &SetArgs) -> anyhow::Result<()> {
    let tier: Tier = a.performance.into();
    let mut failed = Vec::new();
    for name in &a.names {
        let res = (|| -> anyhow::Result<String> {
            let rec = store.get(name)?;
            if rec.direct == DirectState::None {
                bail!(
                    "VM {name} is not accelerated: enable it first (accelnet vm enable {name} --performance ...)"
                );
            }
            let hw = rec.vf.as_deref().and_then(|vf| vf_queue_pairs(paths, vf));
            let qp = tier_queue_pairs(paths, name, rec.spec.vcpus, tier, hw)?;
            store.update(name, |r| {
                r.performance = Some(tier);
                Ok(())
            })?;
            let mut s = format!(
                "VM {name}: performance {}, {qp} queue pair(s)\n",
                tier_name(tier)
            );
            if qp != rec.spec.nic.queue_pairs {
                s.push_str(&format!(
                    "  note: the synthetic path keeps its {} queue pair(s) until the VM is launched again; \
                     the guest sets the VF's with ethtool -L\n",
                    rec.spec.nic.queue_pairs
                ));
            }
            Ok(s)
        })();
        match res {
            Ok(s) => print(&s)?,
            Err(e) => {
                eprintln!("accelnet: {}", vm_error(name, &e));
                failed.push(name.as_str());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("could not set {}", failed.join(", "))
    }
}

/// `low`, `medium`, `high`: as the CLI spells tiers.
pub(super) fn tier_name(t: Tier) -> String {
    format!("{t:?}").to_lowercase()
}
