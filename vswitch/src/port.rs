//! Ports and the vhost-user control plane of VM ports.
//!
//! Each VM port has a control thread that owns its listening socket and runs one
//! `VhostUserDaemon` per connection (a fresh daemon and exit eventfd each time, see
//! docs: a reused exit fd makes the next worker exit at once). The daemon handles the
//! vhost-user protocol; the port only captures the connection's two vrings and guest
//! memory in [`Attached`] so that forwarding threads can drive them directly.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringT};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::{DropReason, PortCounters, PortInfo, PortKind};
use crate::fdb::PortId;
use crate::logging::warn_limited;
use crate::ring::{GuestBitmap, GuestMemAtomic, Vring};
use crate::uplink::Uplink;

/// RX virtqueue index (device writes, guest receives).
pub const RX_QUEUE: usize = 0;
/// TX virtqueue index (guest transmits).
pub const TX_QUEUE: usize = 1;
pub use crate::features::MAX_QUEUE_SIZE;

/// virtio-net features the switch offers. STANDBY lets the guest pair this device
/// with a VF under `net_failover`; the switch needs nothing else for it.
pub const OFFERED_FEATURES: u64 = crate::features::BASE_FEATURES;

/// Errors creating a port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// Something is listening on the socket path already.
    #[error("socket {0} is in use by another process")]
    InUse(PathBuf),
    /// The path exists and is not a socket: refuse to delete it.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Binding the socket failed.
    #[error("cannot create socket {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Thread or fd creation failed.
    #[error("cannot start port {port}")]
    Setup {
        /// Port name.
        port: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Wakes a sleeping forwarding thread. Cheap when the thread is busy: only a flag read.
#[derive(Debug)]
pub struct Waker {
    fd: EventFd,
    sleeping: AtomicBool,
}

impl Waker {
    /// A waker with its own eventfd.
    pub fn new() -> io::Result<Self> {
        Ok(Waker {
            fd: EventFd::new(EFD_NONBLOCK)?,
            sleeping: AtomicBool::new(false),
        })
    }

    /// Wakes the thread if it sleeps (or is about to).
    pub fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            let _ = self.fd.write(1);
        }
    }

    /// Marks the thread as going to sleep; it must re-check for work afterwards.
    pub fn set_sleeping(&self, sleeping: bool) {
        self.sleeping.store(sleeping, Ordering::SeqCst);
    }

    /// Clears a pending wakeup.
    pub fn consume(&self) {
        let _ = self.fd.read();
    }

    /// The eventfd, for epoll.
    pub fn fd(&self) -> &EventFd {
        &self.fd
    }
}

/// The rings and memory of a connected frontend, as forwarding threads use them.
pub struct Attached {
    /// Receive queue (switch writes).
    pub rx: Vring,
    /// Transmit queue (switch reads).
    pub tx: Vring,
    /// The connection's guest memory.
    pub mem: GuestMemAtomic,
    /// Features the frontend acknowledged (updated on SET_FEATURES).
    pub features: Arc<AtomicU64>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("features", &self.features.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Attached {
    /// Whether the guest accepts frames spread over several receive buffers.
    pub fn mrg_rxbuf(&self) -> bool {
        self.features.load(Ordering::Relaxed) & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    /// Stops both rings: after this returns no forwarding thread touches them or
    /// the guest memory behind them (they check readiness under the vring lock).
    fn stop(&self) {
        self.rx.set_queue_ready(false);
        self.tx.set_queue_ready(false);
    }
}

/// State of a VM (vhost-user) port.
pub struct VhostPort {
    /// Socket path.
    pub socket: PathBuf,
    /// Rings of the current connection, if its rings are running.
    pub attached: ArcSwapOption<Attached>,
    /// Connections accepted so far.
    pub connections: AtomicU64,
    shutdown: AtomicBool,
    current: Mutex<Option<vhost_user_backend::ShutdownHandle>>,
}

/// State of an uplink port.
#[derive(Debug)]
pub struct UplinkPort {
    /// The AF_PACKET socket; locked per batch by the thread that sends or receives.
    pub sock: Mutex<Uplink>,
    /// Interface name.
    pub ifname: String,
}

/// What kind of port, with its kind-specific state.
#[derive(Debug)]
pub enum PortBackend {
    /// VM port.
    Vhost(VhostPort),
    /// Host interface.
    Uplink(Box<UplinkPort>),
}

/// A switch port.
#[derive(Debug)]
pub struct Port {
    /// Switch-local number (index in the port table).
    pub id: PortId,
    /// Name.
    pub name: String,
    /// Access VLAN (VM port) or native VLAN (uplink).
    pub vlan: u16,
    /// Counters.
    pub counters: PortCounters,
    /// Forwarding thread that polls this port.
    pub owner: usize,
    /// Wakes the owner when the guest kicks.
    pub waker: Arc<Waker>,
    /// Kind-specific state.
    pub backend: PortBackend,
}

impl Port {
    /// The VM-port state, if this is one.
    pub fn vhost(&self) -> Option<&VhostPort> {
        match &self.backend {
            PortBackend::Vhost(v) => Some(v),
            PortBackend::Uplink(_) => None,
        }
    }

    /// Description for the control API.
    pub fn info(&self) -> PortInfo {
        match &self.backend {
            PortBackend::Vhost(v) => {
                let att = v.attached.load();
                PortInfo {
                    id: self.id,
                    name: self.name.clone(),
                    kind: PortKind::VhostUser,
                    path: v.socket.display().to_string(),
                    vlan: self.vlan,
                    connected: att.is_some(),
                    acked_features: att
                        .as_ref()
                        .map_or(0, |a| a.features.load(Ordering::Relaxed)),
                }
            }
            PortBackend::Uplink(u) => PortInfo {
                id: self.id,
                name: self.name.clone(),
                kind: PortKind::Uplink,
                path: u.ifname.clone(),
                vlan: self.vlan,
                connected: true,
                acked_features: 0,
            },
        }
    }
}

impl std::fmt::Debug for VhostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostPort")
            .field("socket", &self.socket)
            .field("attached", &self.attached.load().is_some())
            .field("connections", &self.connections.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl VhostPort {
    /// Port state for `socket` (not yet listening).
    pub fn new(socket: PathBuf) -> Self {
        VhostPort {
            socket,
            attached: ArcSwapOption::empty(),
            connections: AtomicU64::new(0),
            shutdown: AtomicBool::new(false),
            current: Mutex::new(None),
        }
    }

    /// Drops the current connection's rings: stops them and forgets them.
    fn detach(&self) {
        if let Some(att) = self.attached.swap(None) {
            att.stop();
        }
    }

    /// Asks the control thread to close the connection and stop listening.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Ok(cur) = self.current.lock() {
            if let Some(h) = cur.as_ref() {
                h.shutdown();
            }
        }
    }
}

/// Creates the listening socket at `path`. A socket file nobody listens on (left by
/// a crash) is replaced; a live one or a non-socket file is an error.
pub fn bind_server_socket(path: &Path) -> Result<UnixListener, PortError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(PortError::NotASocket(path.to_path_buf()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(PortError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| PortError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// The vhost-user backend of one connection.
#[derive(Clone)]
struct NetBackend {
    port: Arc<Port>,
    mem: GuestMemAtomic,
    features: Arc<AtomicU64>,
    captured: Arc<AtomicBool>,
    exit: Arc<(EventConsumer, EventNotifier)>,
}

impl NetBackend {
    fn vhost(&self) -> &VhostPort {
        self.port
            .vhost()
            .expect("NetBackend is only created for vhost ports")
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = GuestBitmap;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn acked_features(&self, features: u64) {
        self.features.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        crate::features::protocol_features()
    }

    fn reset_device(&self) {
        self.vhost().detach();
        self.captured.store(false, Ordering::SeqCst);
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The queue keeps the flag; SplitRing reads it per batch.
    }

    fn update_memory(&self, _mem: GuestMemAtomic) -> io::Result<()> {
        // Same GuestMemoryAtomic as self.mem: forwarding threads load it per batch.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        _device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Called on every kick, and (vhost-user-backend 0.24) when a vring is enabled:
        // the first call of a connection publishes its rings to the data plane.
        if !self.captured.swap(true, Ordering::SeqCst) {
            if let [rx, tx] = vrings {
                self.vhost().attached.store(Some(Arc::new(Attached {
                    rx: rx.clone(),
                    tx: tx.clone(),
                    mem: self.mem.clone(),
                    features: self.features.clone(),
                })));
                log::info!("port {}: rings attached", self.port.name);
            }
        }
        self.port.waker.wake();
        Ok(())
    }
}

/// Runs the control plane of a VM port until shutdown: accept, serve, detach, repeat.
pub fn serve_vhost_port(port: Arc<Port>, listener: UnixListener, fdb: Arc<crate::fdb::Fdb>) {
    let Some(vp) = port.vhost() else { return };
    let inner = match InnerSocket::new(&port) {
        Ok(i) => i,
        Err(e) => {
            log::error!("port {}: cannot create the daemon's socket: {e}", port.name);
            return;
        }
    };
    let epoll = match listener
        .set_nonblocking(true)
        .and_then(|_| Epoll::new())
        .and_then(|ep| {
            ep.ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .map(|_| ep)
        }) {
        Ok(ep) => ep,
        Err(e) => {
            log::error!("port {}: listener setup failed: {e}", port.name);
            return;
        }
    };
    let mut inner = inner;
    let mut events = [EpollEvent::default(); 1];
    while !vp.shutdown.load(Ordering::SeqCst) {
        match epoll.wait(200, &mut events) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("port {}: epoll failed: {e}", port.name);
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let frontend = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                warn_limited!("port {}: accept failed: {e}", port.name);
                continue;
            }
        };
        if let Err(e) = serve_connection(&port, vp, frontend, &mut inner) {
            port.counters.drop(DropReason::ProtocolError, 1);
            warn_limited!("port {}: connection closed: {e}", port.name);
        }
        // Frames for MACs behind the old connection must flood until relearned.
        fdb.flush_port(port.id);
    }
}

/// The daemon's end of the relay: a socket in a private (0700) directory that only
/// the port's own thread connects to.
struct InnerSocket {
    dir: PathBuf,
    path: PathBuf,
    listener: Listener,
}

impl InnerSocket {
    fn new(port: &Port) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        // Unique per process and port instance: several switches may share a process.
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "accelnet-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            port.name
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let path = dir.join("daemon.sock");
        let listener = Listener::from(UnixListener::bind(&path)?);
        Ok(InnerSocket {
            dir,
            path,
            listener,
        })
    }
}

impl Drop for InnerSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serve_connection(
    port: &Arc<Port>,
    vp: &VhostPort,
    frontend: UnixStream,
    inner: &mut InnerSocket,
) -> Result<(), String> {
    frontend
        .set_nonblocking(false)
        .map_err(|e| format!("socket setup: {e}"))?;
    let (exit_c, exit_n) =
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(|e| e.to_string())?;
    let exit = Arc::new((exit_c, exit_n));
    let backend = NetBackend {
        port: port.clone(),
        mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        features: Arc::new(AtomicU64::new(0)),
        captured: Arc::new(AtomicBool::new(false)),
        exit: exit.clone(),
    };
    let mut daemon = VhostUserDaemon::new(
        format!("vhu-{}", port.name),
        backend.clone(),
        backend.mem.clone(),
    )
    .map_err(|e| format!("cannot create daemon: {e}"))?;
    let daemon_side = UnixStream::connect(&inner.path).map_err(|e| format!("relay: {e}"))?;
    daemon
        .start(&mut inner.listener)
        .map_err(|e| format!("daemon accept failed: {e}"))?;
    vp.connections.fetch_add(1, Ordering::Relaxed);
    log::info!("port {}: frontend connected", port.name);
    let clones = frontend
        .try_clone()
        .and_then(|f| Ok((f, daemon_side.try_clone()?)));
    let (fe2, ds2) = clones.map_err(|e| format!("relay: {e}"))?;
    let up = std::thread::Builder::new()
        .name(format!("relay-{}", port.name))
        .spawn(move || crate::relay::frontend_to_daemon(&frontend, &daemon_side));
    let down = std::thread::Builder::new()
        .name(format!("relay-{}-r", port.name))
        .spawn({
            let (fe, ds) = (
                fe2.try_clone().map_err(|e| format!("relay: {e}"))?,
                ds2.try_clone().map_err(|e| format!("relay: {e}"))?,
            );
            move || crate::relay::daemon_to_frontend(&ds, &fe)
        });
    if let Ok(mut cur) = vp.current.lock() {
        *cur = daemon.shutdown_handle();
    }
    if vp.shutdown.load(Ordering::SeqCst) {
        daemon.request_shutdown();
    }
    let result = daemon.wait();
    if let Ok(mut cur) = vp.current.lock() {
        *cur = None;
    }
    vp.detach();
    let _ = exit.1.notify();
    // Unblock the relay threads whichever side ended first.
    let _ = fe2.shutdown(std::net::Shutdown::Both);
    let _ = ds2.shutdown(std::net::Shutdown::Both);
    let relayed = match up {
        Ok(t) => t.join().unwrap_or(Ok(())),
        Err(e) => return Err(format!("relay thread: {e}")),
    };
    if let Ok(t) = down {
        let _ = t.join();
    }
    log::info!("port {}: frontend disconnected", port.name);
    relayed.map_err(|e| e.to_string())?;
    match result {
        // A frontend closing its socket between messages is the normal way to leave.
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(vhost::vhost_user::Error::Disconnected)) => {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_bind_replaces_stale_socket() {
        let dir = std::env::temp_dir().join(format!("acn-port-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stale.sock");
        drop(UnixListener::bind(&path).unwrap()); // leaves the file, nobody listens
        assert!(path.exists());
        let l = bind_server_socket(&path).unwrap();
        assert!(matches!(
            bind_server_socket(&path),
            Err(PortError::InUse(_))
        ));
        drop(l);
        std::fs::write(dir.join("file"), b"x").unwrap();
        assert!(matches!(
            bind_server_socket(&dir.join("file")),
            Err(PortError::NotASocket(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_offered_features_include_standby_and_mrg_rxbuf() {
        assert_ne!(OFFERED_FEATURES & crate::features::F_STANDBY, 0);
        assert_ne!(OFFERED_FEATURES & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
        assert_ne!(
            OFFERED_FEATURES
                & vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
    }
}
