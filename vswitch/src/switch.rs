//! The switch assembled: ports, uplinks, FDB, forwarding threads, control socket.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::api::{FdbEntryInfo, PortInfo, PortStats, Request, Response, WireFrame};
use crate::config::{check_bursts, ConfigError, PortConfig, PortMode, SwitchConfig};
use crate::control::{ControlError, ControlHandler, ControlServer};
use crate::fdb::{Fdb, PortId};
use crate::features::MAX_GSO_FRAME;
use crate::forward::{Forwarder, PortTable, Shared};
use crate::hold::{HeldFrame, HoldCounts, HOLD_DEFAULT_MS, HOLD_MAX_MS};
use crate::offload::{VnetHdr, VNET_HDR_LEN};
use crate::policy::{PolicyConfig, PortPolicy, VlanMode};
use crate::port::{
    bind_server_socket, serve_vhost_port, Port, PortBackend, PortError, UplinkPort, VhostPort,
    Waker,
};
use crate::uplink::{Uplink, UplinkError};
use crate::wire::MacAddr;

/// Longest a [`Request::Hold`] release waits for the held frames to be delivered.
pub const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Errors starting the switch.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// The configuration is invalid.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// A VM port's socket could not be created.
    #[error("cannot create port")]
    Port(#[from] PortError),
    /// An uplink could not be opened.
    #[error("cannot open uplink")]
    Uplink(#[from] UplinkError),
    /// The control socket could not be created.
    #[error("cannot create control socket")]
    Control(#[from] ControlError),
    /// The metrics endpoint could not be started.
    #[error("cannot serve metrics")]
    Metrics(#[from] crate::metrics::MetricsError),
    /// A VM port's allowed MACs could not be pinned in the FDB.
    #[error("cannot add port")]
    AllowedMacs(#[source] PortChangeError),
    /// A thread or eventfd could not be created.
    #[error("cannot start {what}")]
    Resource {
        /// What failed.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// What the control socket and [`Switch::handle`] answer from.
#[derive(Debug)]
struct State {
    shared: Arc<Shared>,
    /// Serialises port additions and removals; holds each VM port's control thread.
    ports_ctl: Mutex<PortsCtl>,
}

/// Bookkeeping of VM ports' control threads and the sockets the switch created.
#[derive(Debug, Default)]
struct PortsCtl {
    threads: Vec<(PortId, JoinHandle<()>)>,
    sockets: Vec<(PortId, PathBuf)>,
}

/// Why a port could not be added or removed at run time.
#[derive(Debug, thiserror::Error)]
pub enum PortChangeError {
    /// The port's settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Its socket could not be created.
    #[error(transparent)]
    Port(#[from] PortError),
    /// A port with this name or socket exists.
    #[error("a port named {0} or on that socket exists already")]
    Exists(String),
    /// No such port.
    #[error("no VM port named {0}")]
    NotFound(String),
    /// A hold released via a port that is not one of the switch's uplinks.
    #[error("no uplink named {0}")]
    NoUplink(String),
    /// An injected frame that is not one (bad hex, wrong length, bad offload).
    #[error("frame {index}: {why}")]
    BadFrame {
        /// Its place in the request.
        index: usize,
        /// What is wrong with it.
        why: String,
    },
    /// A multicast (or broadcast) address where a station's MAC is needed.
    #[error("{0} is a multicast address, not a VM's MAC")]
    BadMac(MacAddr),
    /// Too many ports were added over the switch's life (ids are not reused).
    #[error("port table full")]
    Full,
    /// A thread could not be started.
    #[error("cannot start the port's thread")]
    Thread(#[source] std::io::Error),
    /// One of the port's allowed MACs is pinned to another VM port on that VLAN.
    #[error("port {port}: allowed MAC {mac} on VLAN {vlan} belongs to port {owner} already")]
    MacInUse {
        /// The port being added or changed.
        port: String,
        /// The MAC.
        mac: MacAddr,
        /// The VLAN.
        vlan: u16,
        /// The port that has it.
        owner: String,
    },
    /// No FDB room to pin one of the port's allowed MACs.
    #[error(
        "port {port}: no FDB room to pin allowed MAC {mac} on VLAN {vlan} \
         (its bucket holds only static entries; raise fdb_capacity)"
    )]
    FdbFull {
        /// The port being added or changed.
        port: String,
        /// The MAC.
        mac: MacAddr,
        /// The VLAN.
        vlan: u16,
    },
}

impl State {
    fn port_name(&self, id: PortId) -> String {
        self.shared
            .ports
            .load()
            .get(id)
            .map_or_else(|| format!("#{id}"), |p| p.name.clone())
    }

    /// Pins each of `macs` on `vlan` to VM port `id` (called `name`) as a static FDB
    /// entry, so that a frame from one of them seen on another port (an uplink
    /// flooding the guest's own broadcast back) cannot move it away. All or nothing:
    /// on error the port holds no static entries. Callers hold `ports_ctl`.
    fn pin_macs(
        &self,
        name: &str,
        id: PortId,
        vlan: u16,
        macs: &[MacAddr],
    ) -> Result<(), PortChangeError> {
        let fdb = &self.shared.fdb;
        for &mac in macs {
            if let Some(owner) = fdb.static_owner(vlan, mac).filter(|&o| o != id) {
                return Err(PortChangeError::MacInUse {
                    port: name.to_string(),
                    mac,
                    vlan,
                    owner: self.port_name(owner),
                });
            }
        }
        for &mac in macs {
            if !fdb.add_static(vlan, mac, id) {
                fdb.remove_port_static(id);
                return Err(PortChangeError::FdbFull {
                    port: name.to_string(),
                    mac,
                    vlan,
                });
            }
        }
        Ok(())
    }

    /// Adds a VM port: socket first, then the table, then its control thread.
    fn add_port(&self, pc: &PortConfig) -> Result<Arc<Port>, PortChangeError> {
        pc.validate()?;
        check_bursts(&pc.port_name(), &pc.policy, self.shared.max_frame)?;
        let mut ctl = self
            .ports_ctl
            .lock()
            .map_err(|_| PortChangeError::Thread(std::io::Error::other("lock poisoned")))?;
        let name = pc.port_name();
        let table = self.shared.ports.load_full();
        let clash = table
            .iter()
            .any(|p| p.name == name || p.vhost().is_some_and(|v| v.socket == pc.socket));
        if clash {
            return Err(PortChangeError::Exists(name));
        }
        let id = PortId::try_from(table.slots.len()).map_err(|_| PortChangeError::Full)?;
        if id == PortId::MAX {
            return Err(PortChangeError::Full);
        }
        let policy = PortPolicy::new(&pc.policy, &pc.default_vlan_mode(), self.shared.now_ns())
            .map_err(|source| ConfigError::Policy {
                port: name.clone(),
                source,
            })?;
        self.pin_macs(&name, id, pc.vlan, &pc.policy.allowed_macs)?;
        let listener = match pc.mode {
            PortMode::Server => match bind_server_socket(&pc.socket) {
                Ok(l) => Some(l),
                Err(e) => {
                    self.shared.fdb.remove_port_static(id);
                    return Err(e.into());
                }
            },
            PortMode::Client => None,
        };
        let port = self.new_vhost_port(id, pc, policy);
        let t = {
            let (port, fdb) = (port.clone(), self.shared.fdb.clone());
            std::thread::Builder::new()
                .name(format!("port-{}", port.name))
                .spawn(move || serve_vhost_port(port, listener, fdb))
        };
        let t = match t {
            Ok(t) => t,
            Err(e) => {
                if pc.mode == PortMode::Server {
                    let _ = std::fs::remove_file(&pc.socket);
                }
                self.shared.fdb.remove_port_static(id);
                return Err(PortChangeError::Thread(e));
            }
        };
        let mut slots = table.slots.clone();
        slots.push(Some(port.clone()));
        self.shared.ports.store(Arc::new(PortTable {
            generation: table.generation + 1,
            slots,
        }));
        ctl.threads.push((id, t));
        if pc.mode == PortMode::Server {
            ctl.sockets.push((id, pc.socket.clone()));
        }
        self.wake_all();
        log::info!("port {name} added ({:?} {})", pc.mode, pc.socket.display());
        Ok(port)
    }

    fn new_vhost_port(&self, id: PortId, pc: &PortConfig, policy: PortPolicy) -> Arc<Port> {
        let nthreads = self.shared.wakers.len().max(1);
        Arc::new(Port::new(
            id,
            pc.port_name(),
            pc.vlan,
            usize::from(id) % nthreads,
            self.shared.wakers.clone(),
            PortBackend::Vhost({
                let vp = VhostPort::new(pc.socket.clone(), pc.mode, usize::from(pc.queues));
                if pc.offloads {
                    vp
                } else {
                    vp.without_offloads()
                }
            }),
            policy,
        ))
    }

    /// Removes a VM port: out of the table, connections closed, FDB entries and
    /// socket gone.
    fn remove_port(&self, name: &str) -> Result<(), PortChangeError> {
        let mut ctl = self
            .ports_ctl
            .lock()
            .map_err(|_| PortChangeError::Thread(std::io::Error::other("lock poisoned")))?;
        let table = self.shared.ports.load_full();
        let port = vm_port(&table, name)?.0.clone();
        let mut slots = table.slots.clone();
        slots[usize::from(port.id)] = None;
        self.shared.ports.store(Arc::new(PortTable {
            generation: table.generation + 1,
            slots,
        }));
        self.wake_all();
        port.close();
        if let Some(i) = ctl.threads.iter().position(|(id, _)| *id == port.id) {
            let (_, t) = ctl.threads.swap_remove(i);
            let _ = t.join();
        }
        if let Some(v) = port.vhost() {
            // Nobody drains a removed port: its held frames go now.
            let n = v.hold.discard();
            if n > 0 {
                log::info!("port {name}: {n} held frames discarded");
            }
        }
        self.shared.fdb.flush_port(port.id);
        self.shared.fdb.remove_port_static(port.id);
        if let Some(i) = ctl.sockets.iter().position(|(id, _)| *id == port.id) {
            let (_, path) = ctl.sockets.swap_remove(i);
            let _ = std::fs::remove_file(path);
        }
        log::info!("port {name} removed");
        Ok(())
    }

    /// Replaces a port's policy. Learned addresses of the port are forgotten, so
    /// a changed VLAN membership or FDB limit applies at once; a VM port's allowed
    /// MACs are pinned anew (the old ones released).
    fn set_policy(&self, name: &str, config: &PolicyConfig) -> Result<(), PortChangeError> {
        let _ctl = self
            .ports_ctl
            .lock()
            .map_err(|_| PortChangeError::Thread(std::io::Error::other("lock poisoned")))?;
        let table = self.shared.ports.load_full();
        let Some(port) = table.by_name(name).cloned() else {
            return Err(PortChangeError::NotFound(name.to_string()));
        };
        let mode = match &port.backend {
            PortBackend::Vhost(_) => VlanMode::Access(port.vlan),
            PortBackend::Uplink(_) => VlanMode::trunk_all(port.vlan),
        };
        let policy = PortPolicy::new(config, &mode, self.shared.now_ns()).map_err(|source| {
            ConfigError::Policy {
                port: name.to_string(),
                source,
            }
        })?;
        check_bursts(name, config, self.shared.max_frame)?;
        if port.vhost().is_some() {
            let fdb = &self.shared.fdb;
            let old = port.policy.load().config().allowed_macs.clone();
            fdb.remove_port_static(port.id);
            if let Err(e) = self.pin_macs(name, port.id, port.vlan, &config.allowed_macs) {
                // Nobody else pins while `ports_ctl` is held: the old slots are free.
                if self.pin_macs(name, port.id, port.vlan, &old).is_err() {
                    log::error!("port {name}: cannot pin its allowed MACs again");
                }
                return Err(e);
            }
        }
        port.policy.store(Arc::new(policy));
        self.shared.fdb.flush_port(port.id);
        log::info!("port {name}: policy replaced");
        Ok(())
    }

    /// [`Request::Announce`]: one RARP from `mac` out of every uplink, then the FDB
    /// entry for `mac` on the port's VLAN points at the port. With `on_attach` and
    /// no receive ring running yet, it is left to the port's forwarding thread
    /// ([`announce_out`] once the rings start); returns `(uplinks, pending)`.
    fn announce(
        &self,
        name: &str,
        mac: MacAddr,
        on_attach: bool,
    ) -> Result<(Vec<String>, bool), PortChangeError> {
        let table = self.shared.ports.load();
        let (port, v) = vm_port(&table, name)?;
        if mac.is_multicast() {
            return Err(PortChangeError::BadMac(mac));
        }
        let fdb = &self.shared.fdb;
        if let Some(owner) = fdb.static_owner(port.vlan, mac).filter(|&o| o != port.id) {
            return Err(PortChangeError::MacInUse {
                port: name.to_string(),
                mac,
                vlan: port.vlan,
                owner: self.port_name(owner),
            });
        }
        if on_attach {
            let mut pending = v.announce_mac.lock().unwrap_or_else(|e| e.into_inner());
            if !v.rx_running() {
                *pending = Some(mac);
                v.announce_pending.store(true, Ordering::SeqCst);
                drop(pending);
                // The owner looks at the flag once per round; wake it to sleep bounded.
                self.wake_all();
                log::info!("port {name}: will announce {mac} once its receive rings start");
                return Ok((Vec::new(), true));
            }
            *pending = None;
            v.announce_pending.store(false, Ordering::SeqCst);
        }
        Ok((
            announce_out(&table, port, mac, fdb, self.shared.now_secs()),
            false,
        ))
    }

    /// [`Request::Hold`]: start, renew or release the hold of VM port `name`.
    /// A release waits (at most [`RELEASE_WAIT`]) for the owning forwarding thread
    /// to deliver the held frames, so the answer tells what reached the guest.
    fn hold(
        &self,
        name: &str,
        hold: bool,
        max_ms: Option<u64>,
        via: Option<&str>,
        on_stop: bool,
    ) -> Result<(bool, HoldCounts), PortChangeError> {
        let table = self.shared.ports.load_full();
        let (_, v) = vm_port(&table, name)?;
        let ms = max_ms.unwrap_or(HOLD_DEFAULT_MS).min(HOLD_MAX_MS);
        if hold && on_stop {
            v.hold.arm(ms);
            log::info!("port {name}: hold armed: it starts when the receive rings stop ({ms} ms)");
            return Ok((v.hold.is_active(), v.hold.counts()));
        }
        if hold {
            let counts = v
                .hold
                .start(Instant::now() + std::time::Duration::from_millis(ms));
            // The owning thread's sleep is bounded by the new deadline.
            self.wake_all();
            log::info!("port {name}: holding its receive direction for up to {ms} ms");
            return Ok((true, counts));
        }
        let via = match via {
            None => None,
            Some(u) => match table.by_name(u) {
                Some(p) if matches!(p.backend, PortBackend::Uplink(_)) => Some(p.id),
                _ => return Err(PortChangeError::NoUplink(u.to_string())),
            },
        };
        if !v.hold.release(via) {
            return Ok((false, HoldCounts::default()));
        }
        self.wake_all();
        let until = Instant::now() + RELEASE_WAIT;
        while v.hold.is_active() && Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok((v.hold.is_active(), v.hold.counts()))
    }

    /// [`Request::HoldTake`]: frames held for VM port `name`, up to `max_bytes`.
    fn hold_take(
        &self,
        name: &str,
        max_bytes: usize,
    ) -> Result<(Vec<WireFrame>, bool, HoldCounts), PortChangeError> {
        let table = self.shared.ports.load();
        let (_, v) = vm_port(&table, name)?;
        let (frames, more, counts) = v.hold.take_out(max_bytes);
        if !frames.is_empty() {
            log::info!(
                "port {name}: {} held frame(s) taken out{}",
                frames.len(),
                if more { ", more held" } else { "; hold ended" }
            );
        }
        let frames = frames
            .into_iter()
            .map(|f| WireFrame {
                frame: hex::encode(&f.bytes),
                vnet: f.offload.map(|h| hex::encode(h.to_bytes())),
            })
            .collect();
        Ok((frames, more, counts))
    }

    /// [`Request::Inject`]: checks every frame, then queues them for VM port
    /// `name`'s guest; returns `(queued, dropped)`.
    fn inject(&self, name: &str, frames: &[WireFrame]) -> Result<(u64, u64), PortChangeError> {
        let table = self.shared.ports.load();
        let (port, v) = vm_port(&table, name)?;
        let held = frames
            .iter()
            .enumerate()
            .map(|(index, w)| {
                decode_frame(w).map_err(|why| PortChangeError::BadFrame { index, why })
            })
            .collect::<Result<Vec<HeldFrame>, _>>()?;
        let total = held.len() as u64;
        let queued = v.hold.inject(held) as u64;
        let dropped = total - queued;
        port.counters
            .drop(crate::api::DropReason::HoldOverflow, dropped);
        self.wake_all();
        log::info!(
            "port {name}: {queued} injected frame(s) queued for the guest, {dropped} dropped"
        );
        Ok((queued, dropped))
    }

    fn wake_all(&self) {
        for w in self.shared.wakers.iter() {
            w.wake();
        }
    }
}

impl ControlHandler for State {
    fn handle(&self, req: &Request) -> Response {
        let table = self.shared.ports.load();
        match req {
            Request::Ports {} => Response::Ports {
                ports: table.iter().map(|p| p.info()).collect(),
            },
            Request::Fdb {} => Response::Fdb {
                entries: self
                    .shared
                    .fdb
                    .entries(self.shared.now_secs())
                    .into_iter()
                    .map(|e| FdbEntryInfo {
                        vlan: e.vlan,
                        mac: e.mac,
                        port: self.port_name(e.port),
                        age_secs: e.age_secs,
                    })
                    .collect(),
            },
            Request::Stats {} => Response::Stats {
                ports: table.iter().map(|p| p.counters.snapshot(&p.name)).collect(),
            },
            Request::PortAdd { port } => match self.add_port(port) {
                Ok(p) => Response::PortAdded {
                    port: Box::new(p.info()),
                },
                Err(e) => Response::Error {
                    message: error_chain(&e),
                },
            },
            Request::PortSet { name, policy } => match self.set_policy(name, policy) {
                Ok(()) => Response::PortUpdated { name: name.clone() },
                Err(e) => Response::Error {
                    message: error_chain(&e),
                },
            },
            Request::PortDel { name } => match self.remove_port(name) {
                Ok(()) => Response::PortDeleted { name: name.clone() },
                Err(e) => Response::Error {
                    message: error_chain(&e),
                },
            },
            Request::HoldTake { port, max_bytes } => {
                match self.hold_take(port, max_bytes.unwrap_or(HOLD_TAKE_DEFAULT_BYTES)) {
                    Ok((frames, more, c)) => Response::HeldFrames {
                        port: port.clone(),
                        frames,
                        more,
                        held: c.held,
                    },
                    Err(e) => Response::Error {
                        message: error_chain(&e),
                    },
                }
            }
            Request::Inject { port, frames } => match self.inject(port, frames) {
                Ok((queued, dropped)) => Response::Injected {
                    port: port.clone(),
                    queued,
                    dropped,
                },
                Err(e) => Response::Error {
                    message: error_chain(&e),
                },
            },
            Request::Hold {
                port,
                hold,
                max_ms,
                via,
                on_stop,
            } => match self.hold(port, *hold, *max_ms, via.as_deref(), *on_stop) {
                Ok((holding, c)) => Response::Held {
                    port: port.clone(),
                    holding,
                    held: c.held,
                    released: c.released,
                    redirected: c.redirected,
                },
                Err(e) => Response::Error {
                    message: error_chain(&e),
                },
            },
            Request::Announce {
                port,
                mac,
                on_attach,
            } => match self.announce(port, *mac, *on_attach) {
                Ok((uplinks, pending)) => Response::Announced {
                    port: port.clone(),
                    mac: *mac,
                    uplinks,
                    pending,
                },
                Err(e) => Response::Error {
                    message: error_chain(&e),
                },
            },
        }
    }
}

/// VM port `name` of `table` and its vhost-user state; any other port is not found.
fn vm_port<'t>(
    table: &'t PortTable,
    name: &str,
) -> Result<(&'t Arc<Port>, &'t VhostPort), PortChangeError> {
    table
        .by_name(name)
        .and_then(|p| Some((p, p.vhost()?)))
        .ok_or_else(|| PortChangeError::NotFound(name.to_string()))
}

/// How much frame data a [`Request::HoldTake`] answer carries unless it says.
pub const HOLD_TAKE_DEFAULT_BYTES: usize = 256 * 1024;

/// A frame of the control protocol, checked: a whole Ethernet frame of at most
/// [`MAX_GSO_FRAME`] bytes, and an offload header that fits it.
fn decode_frame(w: &WireFrame) -> Result<HeldFrame, String> {
    let bytes = hex::decode(&w.frame).map_err(|e| format!("frame bytes: {e}"))?;
    if bytes.len() < crate::wire::ETH_HLEN || bytes.len() > MAX_GSO_FRAME {
        return Err(format!(
            "{} bytes: a frame has {} to {MAX_GSO_FRAME}",
            bytes.len(),
            crate::wire::ETH_HLEN
        ));
    }
    let offload = match &w.vnet {
        None => None,
        Some(h) => {
            let raw = hex::decode(h).map_err(|e| format!("vnet header: {e}"))?;
            let raw: [u8; VNET_HDR_LEN] = raw.try_into().map_err(|r: Vec<u8>| {
                format!("vnet header of {} bytes, not {VNET_HDR_LEN}", r.len())
            })?;
            let hdr = VnetHdr::from_bytes(&raw);
            crate::offload::validate(&hdr, &bytes).map_err(|e| format!("vnet header: {e}"))?;
            hdr.has_offload().then_some(hdr)
        }
    };
    Ok(HeldFrame { bytes, offload })
}

/// One RARP from `mac` out of every uplink (untagged on the uplink's native VLAN,
/// 802.1Q-tagged with the port's otherwise), then the FDB entry for `mac` on the
/// port's VLAN points at `port`. Returns the uplinks it went out of.
pub(crate) fn announce_out(
    table: &PortTable,
    port: &Port,
    mac: MacAddr,
    fdb: &Fdb,
    now_secs: u32,
) -> Vec<String> {
    let name = &port.name;
    let mut sent = Vec::new();
    for p in table.iter() {
        let PortBackend::Uplink(up) = &p.backend else {
            continue;
        };
        let tag = (port.vlan != p.vlan).then_some(port.vlan);
        let frame = rarp_frame(mac, tag);
        let mut sock = up.sock.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = sock.tx_slot() else {
            log::warn!("announce {mac} for {name}: uplink {} TX ring full", p.name);
            continue;
        };
        slot[..frame.len()].copy_from_slice(&frame);
        sock.tx_commit(frame.len());
        if let Err(e) = sock.tx_flush() {
            log::warn!("announce {mac} for {name}: uplink {}: {e}", p.name);
            continue;
        }
        sent.push(p.name.clone());
    }
    // One of the port's allowed MACs has its static entry there already.
    if fdb.static_owner(port.vlan, mac) != Some(port.id) {
        fdb.learn(port.vlan, mac, port.id, now_secs);
    }
    log::info!(
        "port {name}: announced {mac} on VLAN {} out of {:?}",
        port.vlan,
        sent
    );
    sent
}

/// A RARP request announcing `mac` (what QEMU's `qemu_announce_self` sends): to
/// broadcast, from `mac`, EtherType 0x8035, "reverse request" for `mac`, padded to
/// the 60-byte minimum; with an 802.1Q tag when `vlan` is given.
pub fn rarp_frame(mac: MacAddr, vlan: Option<u16>) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac.0);
    if let Some(v) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&(v & 0x0fff).to_be_bytes());
    }
    f.extend_from_slice(&0x8035u16.to_be_bytes());
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f.extend_from_slice(&[6, 4]);
    f.extend_from_slice(&3u16.to_be_bytes()); // reverse request
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&[0; 4]);
    f.resize(f.len().max(60), 0);
    f
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// A running switch. Dropping it (or [`Switch::shutdown`]) stops every thread and
/// removes the sockets it created.
#[derive(Debug)]
pub struct Switch {
    state: Arc<State>,
    threads: Vec<JoinHandle<()>>,
    control: Option<ControlServer>,
    metrics: Option<crate::metrics::MetricsServer>,
    stopped: AtomicBool,
    housekeeping: Mutex<Option<JoinHandle<()>>>,
}

impl Switch {
    /// Validates `config`, creates every socket, opens the uplinks and starts the
    /// threads. Nothing is left behind on error.
    pub fn start(config: SwitchConfig) -> Result<Switch, SwitchError> {
        config.validate()?;
        let nthreads = config.switch.cpus.len().max(1);
        let wakers: Arc<[Arc<Waker>]> = (0..nthreads)
            .map(|_| Waker::new().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| SwitchError::Resource {
                what: "eventfd".into(),
                source,
            })?
            .into();
        let max_frame = config.max_frame_len();

        // Open every uplink before starting any thread; VM ports follow through the
        // same path as run-time additions.
        let mut ports = Vec::new();
        for uc in &config.uplinks {
            let policy =
                PortPolicy::new(&uc.policy, &uc.default_vlan_mode(), 0).map_err(|source| {
                    ConfigError::Policy {
                        port: uc.ifname.clone(),
                        source,
                    }
                })?;
            let uplink = Uplink::open(uc, max_frame)?;
            ports.push(Arc::new(Port::new(
                port_id(ports.len()),
                uc.ifname.clone(),
                uc.native_vlan,
                0,
                wakers.clone(),
                PortBackend::Uplink(Box::new(UplinkPort {
                    sock: Mutex::new(uplink),
                    ifname: uc.ifname.clone(),
                })),
                policy,
            )));
        }

        let shared = Arc::new(Shared {
            ports: ArcSwap::from_pointee(PortTable::new(ports)),
            wakers: wakers.clone(),
            fdb: Arc::new(Fdb::new(
                config.switch.fdb_capacity,
                config.switch.fdb_aging_secs,
            )),
            max_frame,
            shutdown: AtomicBool::new(false),
            epoch: Instant::now(),
        });
        let state = Arc::new(State {
            shared: shared.clone(),
            ports_ctl: Mutex::new(PortsCtl::default()),
        });
        let mut switch = Switch {
            state,
            threads: Vec::new(),
            control: None,
            metrics: None,
            stopped: AtomicBool::new(false),
            housekeeping: Mutex::new(None),
        };
        for pc in &config.ports {
            // On error, dropping `switch` closes the ports already added.
            switch.state.add_port(pc).map_err(|e| match e {
                PortChangeError::Port(p) => SwitchError::Port(p),
                PortChangeError::Config(c) => SwitchError::Config(c),
                e @ (PortChangeError::MacInUse { .. } | PortChangeError::FdbFull { .. }) => {
                    SwitchError::AllowedMacs(e)
                }
                other => SwitchError::Resource {
                    what: format!("port {}", pc.port_name()),
                    source: std::io::Error::other(other.to_string()),
                },
            })?;
        }

        for (i, waker) in wakers.iter().enumerate() {
            let cpu = config.switch.cpus.get(i).copied();
            let fwd = Forwarder::new(i, shared.clone(), waker.clone());
            // The thread pins itself and reports back: a CPU that cannot be used is a
            // start-up error, not a silently unpinned thread.
            let (pinned_tx, pinned_rx) = std::sync::mpsc::channel();
            let t = std::thread::Builder::new()
                .name(format!("fwd{i}"))
                .spawn(move || {
                    let pinned = cpu.map_or(Ok(()), crate::sys::pin_current_thread);
                    let ok = pinned.is_ok();
                    let _ = pinned_tx.send(pinned);
                    if ok {
                        fwd.run();
                    }
                });
            switch.spawned(t, "forwarding thread")?;
            match pinned_rx.recv() {
                Ok(Ok(())) => {
                    if let Some(cpu) = cpu {
                        log::info!("forwarding thread {i} pinned to CPU {cpu}");
                    }
                }
                Ok(Err(source)) => {
                    return Err(SwitchError::Resource {
                        what: format!("forwarding thread {i} on CPU {}", cpu.unwrap_or(0)),
                        source,
                    })
                }
                Err(_) => {
                    return Err(SwitchError::Resource {
                        what: format!("forwarding thread {i}"),
                        source: std::io::Error::other("thread exited before starting"),
                    })
                }
            }
        }
        let aging = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("fdb-aging".into())
                .spawn(move || {
                    // Expired entries are already ignored by lookups; this frees their slots.
                    while !shared.shutdown.load(Ordering::Relaxed) {
                        std::thread::sleep(std::time::Duration::from_millis(200));
                        shared.fdb.age(shared.now_secs());
                    }
                })
        };
        match aging {
            Ok(t) => *switch.housekeeping.lock().map_err(|_| poisoned())? = Some(t),
            Err(source) => {
                return Err(SwitchError::Resource {
                    what: "fdb aging thread".into(),
                    source,
                })
            }
        }
        if let Some(path) = &config.switch.control {
            let handler: Arc<dyn ControlHandler> = switch.state.clone();
            switch.control = Some(ControlServer::start(path, handler)?);
        }
        if let Some(text) = &config.switch.metrics {
            let addr = crate::metrics::parse_addr(text)?;
            let state = switch.state.clone();
            let source: crate::metrics::SnapshotSource =
                Arc::new(move || crate::metrics::snapshot_from(|r| state.handle(r)));
            switch.metrics = Some(crate::metrics::MetricsServer::start(addr, source)?);
        }
        Ok(switch)
    }

    fn spawned(
        &mut self,
        t: std::io::Result<JoinHandle<()>>,
        what: &str,
    ) -> Result<(), SwitchError> {
        match t {
            Ok(t) => {
                self.threads.push(t);
                Ok(())
            }
            Err(source) => Err(SwitchError::Resource {
                what: what.into(),
                source,
            }),
        }
    }

    /// Serves one control request (what the control socket does per line).
    pub fn handle(&self, req: &Request) -> Response {
        self.state.handle(req)
    }

    /// Counters of the port called `name`.
    pub fn port_stats(&self, name: &str) -> Option<PortStats> {
        self.state
            .shared
            .ports
            .load()
            .by_name(name)
            .map(|p| p.counters.snapshot(&p.name))
    }

    /// Where the metrics endpoint listens, if it runs.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(|m| m.local_addr())
    }

    /// Adds a VM port while the switch runs.
    pub fn add_port(&self, port: &PortConfig) -> Result<PortInfo, PortChangeError> {
        self.state.add_port(port).map(|p| p.info())
    }

    /// Replaces the policy of the port called `name` while the switch runs.
    pub fn set_policy(&self, name: &str, policy: &PolicyConfig) -> Result<(), PortChangeError> {
        self.state.set_policy(name, policy)
    }

    /// Removes the VM port called `name` while the switch runs.
    pub fn remove_port(&self, name: &str) -> Result<(), PortChangeError> {
        self.state.remove_port(name)
    }

    /// Stops forwarding, closes every connection, removes the sockets.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(c) = self.control.as_mut() {
            c.shutdown();
        }
        if let Some(m) = self.metrics.as_mut() {
            m.shutdown();
        }
        let shared = &self.state.shared;
        shared.shutdown.store(true, Ordering::SeqCst);
        self.state.wake_all();
        for p in shared.ports.load().iter() {
            p.close();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Ok(mut ctl) = self.state.ports_ctl.lock() {
            for (_, t) in ctl.threads.drain(..) {
                let _ = t.join();
            }
            for (_, s) in ctl.sockets.drain(..) {
                let _ = std::fs::remove_file(s);
            }
        }
        if let Ok(mut h) = self.housekeeping.lock() {
            if let Some(t) = h.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop();
    }
}

fn port_id(index: usize) -> PortId {
    PortId::try_from(index).expect("port count is bounded by the config (far below 65535)")
}

fn poisoned() -> SwitchError {
    SwitchError::Resource {
        what: "housekeeping".into(),
        source: std::io::Error::other("lock poisoned"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fdb::FdbEntry;

    const M1: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const M2: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

    /// A fresh directory for the tests' sockets, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            use std::sync::atomic::AtomicUsize;
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("an-sw-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("mkdir");
            Dir(dir)
        }

        fn port(&self, name: &str, vlan: u16, macs: &[MacAddr]) -> PortConfig {
            let mut pc = PortConfig::new(self.0.join(format!("{name}.sock")));
            pc.vlan = vlan;
            pc.policy.allowed_macs = macs.to_vec();
            pc
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn start(ports: Vec<PortConfig>) -> Switch {
        Switch::start(SwitchConfig {
            ports,
            ..SwitchConfig::default()
        })
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
    }

    /// Static entries as (VLAN, MAC, port name).
    fn statics(sw: &Switch) -> Vec<(u16, MacAddr, String)> {
        let s = &sw.state;
        s.shared
            .fdb
            .entries(s.shared.now_secs())
            .into_iter()
            .filter(|e: &FdbEntry| e.is_static)
            .map(|e| (e.vlan, e.mac, s.port_name(e.port)))
            .collect()
    }

    fn port_names(sw: &Switch) -> Vec<String> {
        sw.state
            .shared
            .ports
            .load()
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    #[test]
    fn test_switch_pins_allowed_macs_of_vm_ports_and_releases_them() {
        let dir = Dir::new("pin");
        let sw = start(vec![dir.port("vm1", 1, &[M1])]);
        assert_eq!(statics(&sw), vec![(1, M1, "vm1".to_string())]);
        // A frame from M1 on another port does not move it.
        let fdb = &sw.state.shared.fdb;
        assert_eq!(fdb.learn(1, M1, 7, 0), crate::fdb::Learned::Static);
        // The same MAC on another VLAN is another entry.
        sw.add_port(&dir.port("vm2", 20, &[M1, M2]))
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        assert_eq!(
            statics(&sw),
            vec![
                (1, M1, "vm1".to_string()),
                (20, M1, "vm2".to_string()),
                (20, M2, "vm2".to_string())
            ]
        );
        // A new allowed list replaces the old entries.
        let policy = PolicyConfig {
            allowed_macs: vec![M2],
            ..PolicyConfig::default()
        };
        sw.set_policy("vm2", &policy)
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        assert_eq!(
            statics(&sw),
            vec![(1, M1, "vm1".to_string()), (20, M2, "vm2".to_string())]
        );
        sw.set_policy("vm2", &PolicyConfig::default())
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        assert_eq!(statics(&sw), vec![(1, M1, "vm1".to_string())]);
        // Announcing an allowed MAC keeps its static entry.
        sw.handle(&Request::Announce {
            port: "vm1".into(),
            mac: M1,
            on_attach: false,
        });
        assert_eq!(statics(&sw), vec![(1, M1, "vm1".to_string())]);
        sw.remove_port("vm1")
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        assert_eq!(statics(&sw), vec![]);
        assert_eq!(fdb.lookup(1, M1, 0), None);
    }

    #[test]
    fn test_switch_refuses_a_second_port_pinning_one_mac_on_one_vlan() {
        let dir = Dir::new("clash");
        let sw = start(vec![dir.port("vm1", 1, &[M1])]);
        let e = sw.add_port(&dir.port("vm2", 1, &[M2, M1])).unwrap_err();
        assert!(
            matches!(&e, PortChangeError::MacInUse { owner, vlan: 1, .. } if owner == "vm1"),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "port vm2: allowed MAC 52:54:00:00:00:01 on VLAN 1 belongs to port vm1 already"
        );
        assert_eq!(port_names(&sw), vec!["vm1"], "vm2 not added");
        assert!(!dir.0.join("vm2.sock").exists(), "no socket left behind");
        assert_eq!(statics(&sw), vec![(1, M1, "vm1".to_string())]);
        // A policy change claiming it is refused too, and the old entries stay.
        sw.add_port(&dir.port("vm3", 1, &[M2]))
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let policy = PolicyConfig {
            allowed_macs: vec![M1],
            ..PolicyConfig::default()
        };
        let e = sw.set_policy("vm3", &policy).unwrap_err();
        assert!(matches!(e, PortChangeError::MacInUse { .. }), "{e:?}");
        let Response::Ports { ports } = sw.handle(&Request::Ports {}) else {
            panic!("ports");
        };
        assert_eq!(ports[1].policy.allowed_macs, vec![M2], "policy unchanged");
        assert_eq!(
            statics(&sw),
            vec![(1, M1, "vm1".to_string()), (1, M2, "vm3".to_string())]
        );
        // So is an announce of another port's MAC.
        let r = sw.handle(&Request::Announce {
            port: "vm3".into(),
            mac: M1,
            on_attach: true,
        });
        assert!(
            matches!(&r, Response::Error { message } if message.contains("belongs to port vm1")),
            "{r:?}"
        );
        // Once the owner is gone, the MAC is free.
        sw.remove_port("vm1")
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        sw.set_policy("vm3", &policy)
            .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        assert_eq!(statics(&sw), vec![(1, M1, "vm3".to_string())]);
    }

    #[test]
    fn test_switch_start_refuses_config_ports_sharing_an_allowed_mac() {
        let dir = Dir::new("start");
        let e = Switch::start(SwitchConfig {
            ports: vec![dir.port("vm1", 5, &[M1]), dir.port("vm2", 5, &[M1])],
            ..SwitchConfig::default()
        })
        .unwrap_err();
        assert!(
            matches!(
                &e,
                SwitchError::AllowedMacs(PortChangeError::MacInUse { .. })
            ),
            "{e:?}"
        );
        assert!(error_chain(&e).contains("belongs to port vm1"), "{e:?}");
        assert!(!dir.0.join("vm1.sock").exists(), "nothing left behind");
    }

    #[test]
    fn test_switch_fdb_without_room_for_the_allowed_macs_leaves_nothing_pinned() {
        let dir = Dir::new("full");
        let mut config = SwitchConfig {
            ports: vec![dir.port("vm1", 1, &[M1])],
            ..SwitchConfig::default()
        };
        config.switch.fdb_capacity = 64;
        let sw = Switch::start(config).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
        let capacity = sw.state.shared.fdb.capacity();
        // More addresses than slots: some bucket overflows.
        let many: Vec<MacAddr> = (0..=capacity as u64)
            .map(|n| MacAddr::from_u64(0x0254_0000_0000 | n))
            .collect();
        let e = sw.add_port(&dir.port("vm2", 1, &many)).unwrap_err();
        assert!(matches!(e, PortChangeError::FdbFull { .. }), "{e:?}");
        assert_eq!(port_names(&sw), vec!["vm1"]);
        assert_eq!(statics(&sw), vec![(1, M1, "vm1".to_string())]);
        let policy = PolicyConfig {
            allowed_macs: many,
            ..PolicyConfig::default()
        };
        let e = sw.set_policy("vm1", &policy).unwrap_err();
        assert!(matches!(e, PortChangeError::FdbFull { .. }), "{e:?}");
        assert_eq!(
            statics(&sw),
            vec![(1, M1, "vm1".to_string())],
            "old entries back"
        );
    }
}
