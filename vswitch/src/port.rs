//! Ports and the vhost-user control plane of VM ports.
//!
//! Each VM port has a control thread that listens on its socket (server mode) or
//! connects to the VMM's socket and reconnects with backoff (client mode), and runs
//! one `VhostUserDaemon` per connection (a fresh daemon and exit eventfd each time: a
//! reused exit fd makes the next worker exit at once). A server-mode port serves two
//! connections at once, so a same-host migration's destination can connect while the
//! source still runs; the port follows the connection whose rings started last.
//! The daemon handles the vhost-user protocol; the port only captures the
//! connection's vrings and guest memory in [`Attached`] so that forwarding threads
//! can drive them directly.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringT};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::{DropReason, PortCounters, PortInfo, PortKind};
use crate::config::PortMode;
use crate::fdb::{Fdb, PortId};
use crate::features::MAX_QUEUE_PAIRS;
use crate::logging::warn_limited;
use crate::policy::PortPolicy;
use crate::ring::{GuestBitmap, GuestMemAtomic, Vring};
use crate::uplink::Uplink;

/// RX virtqueue index (device writes, guest receives).
pub const RX_QUEUE: usize = 0;
/// TX virtqueue index (guest transmits).
pub const TX_QUEUE: usize = 1;
pub use crate::features::MAX_QUEUE_SIZE;

/// virtio-net features a port offers by default. STANDBY lets the guest pair this
/// device with a VF under `net_failover`; the switch needs nothing else for it.
pub const OFFERED_FEATURES: u64 =
    crate::features::BASE_FEATURES | crate::features::OFFLOAD_FEATURES;

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

/// One queue pair of a VM port: RX queue `2n` (the switch writes), TX queue `2n+1`.
#[derive(Clone)]
pub struct QueuePair {
    /// Receive queue (switch writes).
    pub rx: Vring,
    /// Transmit queue (switch reads).
    pub tx: Vring,
}

impl std::fmt::Debug for QueuePair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueuePair").finish_non_exhaustive()
    }
}

/// The rings and memory of a connected frontend, as forwarding threads use them.
pub struct Attached {
    /// The connection these rings belong to (a port may have two during a
    /// same-host migration; it follows the one whose rings started last).
    pub conn: u64,
    /// Queue pairs, in queue order.
    pub pairs: Vec<QueuePair>,
    /// The connection's guest memory.
    pub mem: GuestMemAtomic,
    /// Features the frontend acknowledged (updated on SET_FEATURES).
    pub features: Arc<AtomicU64>,
    /// Bit `i`: vring `i` was started and enabled when last seen. A hint that
    /// spares idle queues a lock per round; the vring lock has the final word.
    pub started: AtomicU32,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("conn", &self.conn)
            .field("pairs", &self.pairs.len())
            .field("features", &self.features.load(Ordering::Relaxed))
            .field("started", &self.started.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Attached {
    /// Rings of `pairs` for connection `conn`, every queue marked started (for
    /// benchmarks and tests that drive rings directly).
    pub fn new(conn: u64, pairs: Vec<QueuePair>, mem: GuestMemAtomic, features: u64) -> Self {
        let started = if pairs.len() >= 16 {
            u32::MAX
        } else {
            (1u32 << (2 * pairs.len())) - 1
        };
        Attached {
            conn,
            pairs,
            mem,
            features: Arc::new(AtomicU64::new(features)),
            started: AtomicU32::new(started),
        }
    }

    /// Features the frontend acknowledged.
    pub fn acked(&self) -> u64 {
        self.features.load(Ordering::Relaxed)
    }

    /// Whether the guest accepts frames spread over several receive buffers.
    pub fn mrg_rxbuf(&self) -> bool {
        self.acked() & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    /// Whether vring `index` looked started.
    pub fn is_started(&self, index: usize) -> bool {
        index < 32 && self.started.load(Ordering::Relaxed) & (1 << index) != 0
    }

    /// Whether a receive ring runs (started, ready and enabled): frames can go in.
    pub fn rx_running(&self) -> bool {
        self.pairs.iter().enumerate().any(|(q, p)| {
            self.is_started(2 * q) && {
                let rx = p.rx.get_ref();
                rx.get_queue().ready() && rx.is_enabled()
            }
        })
    }

    /// Records that vring `index` runs (a kick or an enable was seen).
    pub fn mark_started(&self, index: usize) {
        if index < 32 && !self.is_started(index) {
            self.started.fetch_or(1 << index, Ordering::Relaxed);
        }
    }

    /// Records that vring `index` was found stopped or disabled.
    pub fn mark_stopped(&self, index: usize) {
        if index < 32 {
            self.started.fetch_and(!(1 << index), Ordering::Relaxed);
        }
    }

    /// Stops every ring: after this returns no forwarding thread touches them or
    /// the guest memory behind them (they check readiness under the vring lock).
    fn stop(&self) {
        for p in &self.pairs {
            p.rx.set_queue_ready(false);
            p.tx.set_queue_ready(false);
        }
    }
}

/// State of a VM port.
pub struct VhostPort {
    /// Socket path.
    pub socket: PathBuf,
    /// Who owns the socket.
    pub mode: PortMode,
    /// Most queue pairs a frontend may use.
    pub queue_pairs: usize,
    /// virtio features offered to the frontend.
    pub features: u64,
    /// Rings of the connection the port follows, if its rings are running.
    pub attached: ArcSwapOption<Attached>,
    /// Connections accepted (or made) so far.
    pub connections: AtomicU64,
    /// Connections open now.
    pub live: AtomicUsize,
    /// Frames held for the guest during a path change ([`crate::api::Request::Hold`]).
    pub hold: crate::hold::Hold,
    /// A MAC to announce once the receive rings start ([`crate::api::Request::Announce`]
    /// `on_attach`); the flag is the forwarding thread's one load.
    pub announce_pending: AtomicBool,
    /// The MAC behind `announce_pending`.
    pub announce_mac: Mutex<Option<crate::wire::MacAddr>>,
    shutdown: AtomicBool,
    handles: Mutex<Vec<(u64, vhost_user_backend::ShutdownHandle)>>,
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
// A port lives in an `Arc` and is never moved: the size difference costs nothing,
// while boxing the VM port would add a pointer hop to every batch.
#[allow(clippy::large_enum_variant)]
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
    /// Forwarding thread of queue pair 0; pair `n` goes to `owner + n` (mod threads).
    pub owner: usize,
    /// Every forwarding thread's waker, by thread index.
    pub wakers: Arc<[Arc<Waker>]>,
    /// Kind-specific state.
    pub backend: PortBackend,
    /// Anti-spoofing, VLAN membership, rate limits, FDB limit, receive filter;
    /// replaced as a whole at run time.
    pub policy: ArcSwap<PortPolicy>,
}

impl Port {
    /// A port served by thread `owner` (pair 0) out of `wakers.len()` threads.
    pub fn new(
        id: PortId,
        name: String,
        vlan: u16,
        owner: usize,
        wakers: Arc<[Arc<Waker>]>,
        backend: PortBackend,
        policy: PortPolicy,
    ) -> Self {
        Port {
            id,
            name,
            vlan,
            counters: PortCounters::default(),
            owner,
            wakers,
            backend,
            policy: ArcSwap::from_pointee(policy),
        }
    }

    /// The VM-port state, if this is one.
    pub fn vhost(&self) -> Option<&VhostPort> {
        match &self.backend {
            PortBackend::Vhost(v) => Some(v),
            PortBackend::Uplink(_) => None,
        }
    }

    /// Forwarding thread that polls queue pair `pair`.
    pub fn thread_for(&self, pair: usize) -> usize {
        (self.owner + pair) % self.wakers.len().max(1)
    }

    /// Wakes the thread that polls queue pair `pair`.
    pub fn wake(&self, pair: usize) {
        if let Some(w) = self.wakers.get(self.thread_for(pair)) {
            w.wake();
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
                    acked_features: att.as_ref().map_or(0, |a| a.acked()),
                    policy: self.policy.load().config().clone(),
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
                policy: self.policy.load().config().clone(),
            },
        }
    }

    /// Stops the port's control plane (VM port: closes its connections and stops
    /// listening or reconnecting). Forwarding stops with the rings.
    pub fn close(&self) {
        if let Some(v) = self.vhost() {
            v.request_shutdown();
        }
    }
}

impl std::fmt::Debug for VhostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostPort")
            .field("socket", &self.socket)
            .field("mode", &self.mode)
            .field("attached", &self.attached.load().is_some())
            .field("connections", &self.connections.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl VhostPort {
    /// Whether the rings the port follows take frames now ([`Attached::rx_running`]).
    pub fn rx_running(&self) -> bool {
        self.attached
            .load()
            .as_ref()
            .is_some_and(|a| a.rx_running())
    }

    /// Offer no offloads: every frame crosses finished and MTU-sized.
    pub fn without_offloads(mut self) -> Self {
        self.features &= !crate::features::OFFLOAD_FEATURES;
        self
    }

    /// Port state for `socket` (not yet listening or connecting).
    pub fn new(socket: PathBuf, mode: PortMode, queue_pairs: usize) -> Self {
        VhostPort {
            socket,
            mode,
            queue_pairs: queue_pairs.clamp(1, MAX_QUEUE_PAIRS),
            features: OFFERED_FEATURES,
            attached: ArcSwapOption::empty(),
            connections: AtomicU64::new(0),
            live: AtomicUsize::new(0),
            hold: crate::hold::Hold::default(),
            announce_pending: AtomicBool::new(false),
            announce_mac: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            handles: Mutex::new(Vec::new()),
        }
    }

    /// Forgets the rings of connection `conn` if the port follows it; returns
    /// whether it did.
    fn detach(&self, conn: u64) -> bool {
        let prev = self.attached.rcu(|cur| match cur {
            Some(a) if a.conn == conn => None,
            other => other.clone(),
        });
        match prev {
            Some(a) if a.conn == conn => {
                a.stop();
                true
            }
            _ => false,
        }
    }

    /// Whether the port is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Asks the control thread to close every connection and stop.
    pub fn request_shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        if let Ok(handles) = self.handles.lock() {
            for (_, h) in handles.iter() {
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
    conn: u64,
    mem: GuestMemAtomic,
    features: Arc<AtomicU64>,
    captured: Arc<AtomicBool>,
    exit: Arc<(EventConsumer, EventNotifier)>,
    /// Dirty-page logging of this connection (on while LOG_ALL is acked).
    log: Arc<crate::dirty::LogControl>,
}

impl NetBackend {
    fn vhost(&self) -> &VhostPort {
        self.port
            .vhost()
            .expect("NetBackend is only created for vhost ports")
    }

    /// The port's rings if they are this connection's.
    fn mine(&self) -> Option<Arc<Attached>> {
        self.vhost()
            .attached
            .load_full()
            .filter(|a| a.conn == self.conn)
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = GuestBitmap;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2 * self.vhost().queue_pairs
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        self.vhost().features
    }

    fn acked_features(&self, features: u64) {
        self.features.store(features, Ordering::Relaxed);
        // vhost-user-backend ignores LOG_ALL being cleared: follow bit 26 ourselves.
        self.log.acked_features(&self.mem, features);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        crate::features::protocol_features()
    }

    fn reset_device(&self) {
        self.vhost().detach(self.conn);
        self.captured.store(false, Ordering::SeqCst);
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // The daemon marked the queue not ready under its lock, which waited for any
        // batch in flight: no forwarding thread touches the ring after this. The next
        // start (or a migration's destination) re-publishes rings.
        if let Some(att) = self.mine() {
            att.mark_stopped(queue_index as usize);
        }
        self.captured.store(false, Ordering::SeqCst);
        Ok(())
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The queue keeps the flag; SplitRing reads it per batch.
    }

    fn update_memory(&self, mem: GuestMemAtomic) -> io::Result<()> {
        // New regions come with fresh bitmaps: carry the log over (QEMU re-sends the
        // memory table during a migration without a new SET_LOG_BASE).
        self.log.memory_updated(&mem);
        // Same GuestMemoryAtomic as self.mem: forwarding threads load it per batch.
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Called on every kick and (vhost-user-backend 0.24) when a vring starts. The
        // first call after the rings (re)started publishes them: the port follows the
        // connection whose rings started last (same-host migration hands over here).
        if !self.captured.swap(true, Ordering::SeqCst) {
            let pairs: Vec<QueuePair> = vrings
                .chunks_exact(2)
                .map(|p| QueuePair {
                    rx: p[0].clone(),
                    tx: p[1].clone(),
                })
                .collect();
            // Every ring already running counts as started (the daemon reports the
            // others' starts in no particular order).
            let started = vrings
                .iter()
                .take(32)
                .enumerate()
                .filter(|(_, v)| {
                    let g = v.get_ref();
                    g.get_queue().ready() && g.is_enabled()
                })
                .fold(0u32, |m, (i, _)| m | (1 << i));
            let prev = self.vhost().attached.swap(Some(Arc::new(Attached {
                conn: self.conn,
                pairs,
                mem: self.mem.clone(),
                features: self.features.clone(),
                started: AtomicU32::new(started),
            })));
            self.port.counters.queue_pairs.store(0, Ordering::Relaxed);
            match prev {
                Some(p) if p.conn != self.conn => log::info!(
                    "port {}: connection {} took over from connection {}",
                    self.port.name,
                    self.conn,
                    p.conn
                ),
                _ => log::info!("port {}: rings attached", self.port.name),
            }
        }
        let index = usize::from(device_event);
        if let Some(att) = self.mine() {
            att.mark_started(index);
            // Pairs in use, as reported: up to the highest one the frontend started.
            self.port
                .counters
                .queue_pairs
                .fetch_max(index / 2 + 1, Ordering::Relaxed);
        }
        self.port.wake(index / 2);
        Ok(())
    }
}

/// Most connections a server-mode port serves at once: the VM's own, plus a
/// migration destination connecting before the source leaves.
pub const MAX_CONNECTIONS: usize = 2;
/// First and longest wait between a client-mode port's connection attempts.
const CLIENT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(10), Duration::from_millis(250));

/// Runs the control plane of a VM port until it is closed: server mode accepts
/// connections (several at once), client mode connects and reconnects.
pub fn serve_vhost_port(port: Arc<Port>, listener: Option<UnixListener>, fdb: Arc<Fdb>) {
    let Some(vp) = port.vhost() else { return };
    let mut inner = match InnerSocket::new(&port) {
        Ok(i) => i,
        Err(e) => {
            log::error!("port {}: cannot create the daemon's socket: {e}", port.name);
            return;
        }
    };
    match (vp.mode, listener) {
        (PortMode::Server, Some(l)) => serve_server(&port, vp, &l, &mut inner, &fdb),
        (PortMode::Client, _) => serve_client(&port, vp, &mut inner, &fdb),
        (PortMode::Server, None) => {
            log::error!("port {}: server mode without a socket", port.name);
        }
    }
}

fn serve_server(
    port: &Arc<Port>,
    vp: &VhostPort,
    listener: &UnixListener,
    inner: &mut InnerSocket,
    fdb: &Arc<Fdb>,
) {
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
    let mut running: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let mut events = [EpollEvent::default(); 1];
    while !vp.is_shutting_down() {
        running.retain(|t| !t.is_finished());
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
        if vp.live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            port.counters.drop(DropReason::ProtocolError, 1);
            warn_limited!(
                "port {}: refused a connection: {MAX_CONNECTIONS} already open",
                port.name
            );
            continue;
        }
        match Connection::start(port, frontend, inner) {
            Ok(c) => {
                let (port, fdb) = (port.clone(), fdb.clone());
                let t = std::thread::Builder::new()
                    .name(format!("conn-{}", port.name))
                    .spawn(move || c.run(&port, &fdb));
                match t {
                    Ok(t) => running.push(t),
                    Err(e) => log::error!("connection thread: {e}"),
                }
            }
            Err(e) => {
                port.counters.drop(DropReason::ProtocolError, 1);
                warn_limited!("port {}: connection failed: {e}", port.name);
            }
        }
    }
    vp.request_shutdown();
    for t in running {
        let _ = t.join();
    }
}

fn serve_client(port: &Arc<Port>, vp: &VhostPort, inner: &mut InnerSocket, fdb: &Arc<Fdb>) {
    let mut backoff = CLIENT_BACKOFF.0;
    let mut reported = false;
    while !vp.is_shutting_down() {
        match UnixStream::connect(&vp.socket) {
            Ok(frontend) => {
                reported = false;
                backoff = CLIENT_BACKOFF.0;
                match Connection::start(port, frontend, inner) {
                    Ok(c) => c.run(port, fdb),
                    Err(e) => {
                        port.counters.drop(DropReason::ProtocolError, 1);
                        warn_limited!("port {}: connection failed: {e}", port.name);
                        sleep_unless_shutdown(vp, backoff);
                    }
                }
            }
            Err(e) => {
                if !reported {
                    log::info!(
                        "port {}: cannot connect to {} ({e}); retrying",
                        port.name,
                        vp.socket.display()
                    );
                    reported = true;
                }
                sleep_unless_shutdown(vp, backoff);
                backoff = (backoff * 2).min(CLIENT_BACKOFF.1);
            }
        }
    }
}

fn sleep_unless_shutdown(vp: &VhostPort, d: Duration) {
    let until = std::time::Instant::now() + d;
    while !vp.is_shutting_down() {
        let now = std::time::Instant::now();
        if now >= until {
            break;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(20)));
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
        static REAP: std::sync::Once = std::sync::Once::new();
        REAP.call_once(reap_stale_inner_dirs);
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

/// Removes the private socket directories of switch processes that no longer exist
/// (a SIGKILLed switch cannot clean up after itself).
fn reap_stale_inner_dirs() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // accelnet-<pid>-<n>-<port>, with <pid> and <n> numeric.
        let mut parts = name.splitn(4, '-');
        let (Some("accelnet"), Some(pid), Some(n), Some(_)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let numeric = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if numeric(pid)
            && numeric(n)
            && !Path::new("/proc").join(pid).exists()
            && e.path().join("daemon.sock").exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for InnerSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One frontend connection: its daemon and the two relay threads.
struct Connection {
    conn: u64,
    daemon: VhostUserDaemon<NetBackend>,
    exit: Arc<(EventConsumer, EventNotifier)>,
    frontend: UnixStream,
    daemon_side: UnixStream,
    up: std::thread::JoinHandle<Result<(), crate::relay::RelayError>>,
    down: std::thread::JoinHandle<()>,
}

impl Connection {
    /// Creates a daemon for `frontend` and starts relaying to it.
    fn start(
        port: &Arc<Port>,
        frontend: UnixStream,
        inner: &mut InnerSocket,
    ) -> Result<Connection, String> {
        let vp = port.vhost().ok_or("not a VM port")?;
        frontend
            .set_nonblocking(false)
            .map_err(|e| format!("socket setup: {e}"))?;
        let (exit_c, exit_n) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(|e| e.to_string())?;
        let exit = Arc::new((exit_c, exit_n));
        let conn = vp.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let backend = NetBackend {
            port: port.clone(),
            conn,
            mem: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            features: Arc::new(AtomicU64::new(0)),
            captured: Arc::new(AtomicBool::new(false)),
            exit: exit.clone(),
            log: Arc::new(crate::dirty::LogControl::new()),
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
        let clone = |s: &UnixStream| s.try_clone().map_err(|e| format!("relay: {e}"));
        let (fe_up, ds_up, fe_down, ds_down) = (
            clone(&frontend)?,
            clone(&daemon_side)?,
            clone(&frontend)?,
            clone(&daemon_side)?,
        );
        let up = std::thread::Builder::new()
            .name(format!("relay-{}", port.name))
            .spawn(move || crate::relay::frontend_to_daemon(&fe_up, &ds_up))
            .map_err(|e| format!("relay thread: {e}"))?;
        let down = std::thread::Builder::new()
            .name(format!("relay-{}-r", port.name))
            .spawn(move || crate::relay::daemon_to_frontend(&ds_down, &fe_down))
            .map_err(|e| format!("relay thread: {e}"))?;
        if let Ok(mut handles) = vp.handles.lock() {
            if let Some(h) = daemon.shutdown_handle() {
                handles.push((conn, h));
            }
        }
        vp.live.fetch_add(1, Ordering::SeqCst);
        log::info!("port {}: frontend connected (connection {conn})", port.name);
        Ok(Connection {
            conn,
            daemon,
            exit,
            frontend,
            daemon_side,
            up,
            down,
        })
    }

    /// Serves the connection until it ends, then cleans up after it.
    fn run(mut self, port: &Arc<Port>, fdb: &Fdb) {
        let Some(vp) = port.vhost() else { return };
        if vp.is_shutting_down() {
            self.daemon.request_shutdown();
        }
        let result = self.daemon.wait();
        if let Ok(mut handles) = vp.handles.lock() {
            handles.retain(|(c, _)| *c != self.conn);
        }
        if vp.detach(self.conn) {
            // Frames for MACs behind the old connection must flood until relearned.
            fdb.flush_port(port.id);
        }
        let _ = self.exit.1.notify();
        // Unblock the relay threads whichever side ended first.
        let _ = self.frontend.shutdown(std::net::Shutdown::Both);
        let _ = self.daemon_side.shutdown(std::net::Shutdown::Both);
        let relayed = self.up.join().unwrap_or(Ok(()));
        let _ = self.down.join();
        vp.live.fetch_sub(1, Ordering::SeqCst);
        log::info!(
            "port {}: frontend disconnected (connection {})",
            port.name,
            self.conn
        );
        let outcome = match (relayed, result) {
            (Err(e), _) => Err(e.to_string()),
            // A frontend closing its socket between messages is the normal way to leave.
            (Ok(()), Ok(()))
            | (
                Ok(()),
                Err(vhost_user_backend::Error::HandleRequest(
                    vhost::vhost_user::Error::Disconnected,
                )),
            ) => Ok(()),
            (Ok(()), Err(e)) => Err(e.to_string()),
        };
        if let Err(e) = outcome {
            port.counters.drop(DropReason::ProtocolError, 1);
            warn_limited!("port {}: connection closed: {e}", port.name);
        }
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
