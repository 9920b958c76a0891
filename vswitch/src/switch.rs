//! The switch assembled: ports, uplinks, FDB, forwarding threads, control socket.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::api::{FdbEntryInfo, PortCounters, PortStats, Request, Response};
use crate::config::{ConfigError, SwitchConfig};
use crate::control::{ControlError, ControlHandler, ControlServer};
use crate::fdb::{Fdb, PortId};
use crate::forward::{Forwarder, Shared};
use crate::port::{
    bind_server_socket, serve_vhost_port, Port, PortBackend, PortError, UplinkPort, VhostPort,
    Waker,
};
use crate::uplink::{Uplink, UplinkError};

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
}

impl State {
    fn port_name(&self, id: PortId) -> String {
        self.shared
            .ports
            .get(usize::from(id))
            .map_or_else(|| format!("#{id}"), |p| p.name.clone())
    }
}

impl ControlHandler for State {
    fn handle(&self, req: &Request) -> Response {
        match req {
            Request::Ports {} => Response::Ports {
                ports: self.shared.ports.iter().map(|p| p.info()).collect(),
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
                ports: self
                    .shared
                    .ports
                    .iter()
                    .map(|p| p.counters.snapshot(&p.name))
                    .collect(),
            },
        }
    }
}

/// A running switch. Dropping it (or [`Switch::shutdown`]) stops every thread and
/// removes the sockets it created.
#[derive(Debug)]
pub struct Switch {
    state: Arc<State>,
    threads: Vec<JoinHandle<()>>,
    sockets: Vec<PathBuf>,
    control: Option<ControlServer>,
    stopped: AtomicBool,
    housekeeping: Mutex<Option<JoinHandle<()>>>,
}

impl Switch {
    /// Validates `config`, creates every socket, opens the uplinks and starts the
    /// threads. Nothing is left behind on error.
    pub fn start(config: SwitchConfig) -> Result<Switch, SwitchError> {
        config.validate()?;
        let nthreads = config.switch.cpus.len().max(1);
        let wakers = (0..nthreads)
            .map(|_| Waker::new().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| SwitchError::Resource {
                what: "eventfd".into(),
                source,
            })?;
        let max_frame = config.max_frame_len();

        // Create every socket and open every uplink before starting any thread.
        let mut listeners = Vec::new();
        let mut sockets = Vec::new();
        let mut ports = Vec::new();
        let cleanup = |sockets: &[PathBuf]| {
            for s in sockets {
                let _ = std::fs::remove_file(s);
            }
        };
        for (i, pc) in config.ports.iter().enumerate() {
            let listener = match bind_server_socket(&pc.socket) {
                Ok(l) => l,
                Err(e) => {
                    cleanup(&sockets);
                    return Err(e.into());
                }
            };
            sockets.push(pc.socket.clone());
            listeners.push(listener);
            let owner = i % nthreads;
            ports.push(Arc::new(Port {
                id: port_id(ports.len()),
                name: pc.port_name(),
                vlan: pc.vlan,
                counters: PortCounters::default(),
                owner,
                waker: wakers[owner].clone(),
                backend: PortBackend::Vhost(VhostPort::new(pc.socket.clone())),
            }));
        }
        for uc in &config.uplinks {
            let uplink = match Uplink::open(uc, max_frame) {
                Ok(u) => u,
                Err(e) => {
                    cleanup(&sockets);
                    return Err(e.into());
                }
            };
            ports.push(Arc::new(Port {
                id: port_id(ports.len()),
                name: uc.ifname.clone(),
                vlan: uc.native_vlan,
                counters: PortCounters::default(),
                owner: 0,
                waker: wakers[0].clone(),
                backend: PortBackend::Uplink(Box::new(UplinkPort {
                    sock: Mutex::new(uplink),
                    ifname: uc.ifname.clone(),
                })),
            }));
        }

        let shared = Arc::new(Shared {
            ports,
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
        });
        let mut switch = Switch {
            state,
            threads: Vec::new(),
            sockets,
            control: None,
            stopped: AtomicBool::new(false),
            housekeeping: Mutex::new(None),
        };

        for (i, waker) in wakers.into_iter().enumerate() {
            let cpu = config.switch.cpus.get(i).copied();
            let fwd = Forwarder::new(i, shared.clone(), waker);
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
        for (port, listener) in shared
            .ports
            .iter()
            .filter(|p| p.vhost().is_some())
            .zip(listeners)
        {
            let (port, fdb) = (port.clone(), shared.fdb.clone());
            let t = std::thread::Builder::new()
                .name(format!("port-{}", port.name))
                .spawn(move || serve_vhost_port(port, listener, fdb));
            switch.spawned(t, "port thread")?;
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
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.counters.snapshot(&p.name))
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
        let shared = &self.state.shared;
        shared.shutdown.store(true, Ordering::SeqCst);
        for p in &shared.ports {
            p.waker.wake();
            if let Some(v) = p.vhost() {
                v.request_shutdown();
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Ok(mut h) = self.housekeeping.lock() {
            if let Some(t) = h.take() {
                let _ = t.join();
            }
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
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
