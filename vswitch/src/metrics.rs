//! Prometheus metrics: the switch's counters in the Prometheus text exposition
//! format (version 0.0.4), served over HTTP at [`PATH`] by [`MetricsServer`].
//!
//! # Metrics
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `accelnet_switch_ports` | gauge | |
//! | `accelnet_switch_port_connected` | gauge | `port` |
//! | `accelnet_switch_port_rx_packets_total` | counter | `port`, `kind` |
//! | `accelnet_switch_port_rx_bytes_total` | counter | `port`, `kind` |
//! | `accelnet_switch_port_tx_packets_total` | counter | `port`, `kind` |
//! | `accelnet_switch_port_tx_bytes_total` | counter | `port`, `kind` |
//! | `accelnet_switch_port_drops_total` | counter | `port`, `reason` |
//! | `accelnet_switch_queue_rx_packets_total` | counter | `port`, `queue` |
//! | `accelnet_switch_queue_rx_bytes_total` | counter | `port`, `queue` |
//! | `accelnet_switch_queue_tx_packets_total` | counter | `port`, `queue` |
//! | `accelnet_switch_queue_tx_bytes_total` | counter | `port`, `queue` |
//!
//! Directions are the switch's, as in [`PortStats`]: `rx` is what the switch took
//! from the port (a guest's transmissions), `tx` what it delivered to the port.
//! `kind` is the port kind as the control API spells it (`vhost-user`, `uplink`).
//! Every drop reason of [`PortStats::drops`] is exported, zeros included, so a rate
//! query never sees a series appear from nowhere. `queue` is the queue pair index.
//! A family with no sample (no ports, or no VM port with running queues) is left
//! out, as the Prometheus client libraries do.
//!
//! # Why these crates
//!
//! Rendering uses the `prometheus` crate's [`TextEncoder`] (protobuf feature off)
//! on metric families built from one snapshot per scrape: it writes exactly the
//! 0.0.4 format, `# HELP`/`# TYPE` once per family and the label value escaping
//! (backslash, double quote, newline), with no registry to keep in sync with the
//! set of ports. `prometheus-client` was not used: its text encoder only writes
//! OpenMetrics (counter families named without `_total`, a trailing `# EOF`), and
//! it wants metrics registered up front rather than a snapshot per scrape.
//!
//! Serving does not use an HTTP server crate. The usual small one, `tiny_http`
//! 0.12, reads request header lines without a length limit, sets no socket
//! timeouts and starts a thread per connection, so one hostile client could grow
//! the switch process's memory and thread count without bound; and dropping its
//! server does not wait for the listening socket to close. Requests are instead
//! parsed by `httparse` (hyper's HTTP/1 parser) out of a buffer of at most
//! [`MAX_REQUEST_HEAD`] bytes, and the rest is in this module: one request per
//! connection (`Connection: close`), at most [`MAX_CONNECTIONS`] served at once,
//! each given [`REQUEST_TIMEOUT`] to send its request and as long to take the answer.
//!
//! # Threads
//!
//! One thread accepts on a nonblocking listener, polling the stop flag every
//! [`ACCEPT_POLL`]; each connection gets its own short-lived thread. Nothing here
//! touches the forwarding threads: a scrape only calls the snapshot source (which
//! should read counters, not take data-path locks). [`MetricsServer::shutdown`]
//! returns within about a poll interval, with the listening socket closed.
//!
//! # Exposure
//!
//! The counters name every port and show its traffic. The default address
//! ([`DEFAULT_ADDR`]) is loopback; binding any other address exposes them to
//! whoever can reach it, with no authentication (put a reverse proxy in front for
//! TLS or access control).

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::TextEncoder;

use crate::api::{PortInfo, PortStats, QueueStats, Request, Response};
use crate::logging::warn_limited;

/// Where the metrics are served unless told otherwise: loopback only.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9477));
/// The one path served.
pub const PATH: &str = "/metrics";
/// Content type of the metrics: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Connections served at once; more are answered `503` and closed.
pub const MAX_CONNECTIONS: usize = 4;
/// Longest request head (request line and headers) accepted, in bytes; a longer
/// one is answered `431`.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time a connection gets to send its request (a client too slow is answered
/// `408`), and again to take the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the accept thread checks for shutdown.
pub const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// How often connection threads check for shutdown while waiting on the socket.
const IO_POLL: Duration = Duration::from_millis(100);
/// After answering, how long the client gets to close before the socket is closed
/// anyway (closing with unread input would reset the connection and could destroy
/// the answer before the client reads it).
const LINGER: Duration = Duration::from_secs(1);
/// Input discarded while lingering before giving up on a clean close.
const MAX_LINGER_INPUT: usize = 64 * 1024;
/// Headers accepted in a request.
const MAX_HEADERS: usize = 64;

/// What a scrape reads: every port (for `kind` and `connected`) and every port's
/// counters, as the control API's [`Request::Ports`] and [`Request::Stats`] answer.
/// Called on a metrics connection thread, possibly concurrently, once per scrape.
pub type SnapshotSource = Arc<dyn Fn() -> (Vec<PortInfo>, Vec<PortStats>) + Send + Sync>;

/// Errors of the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address text is not an address.
    #[error("invalid metrics address {text:?}: expected PORT, IPV4:PORT or [IPV6]:PORT")]
    Address {
        /// The text given.
        text: String,
    },
    /// Something else listens on the address.
    #[error("metrics address {addr} is already in use (is another switch or exporter running?)")]
    InUse {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The address could not be bound (not an address of this host, a privileged
    /// port, ...).
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Starting the server thread failed.
    #[error("cannot start the metrics server thread")]
    Spawn {
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Parses a metrics address: `PORT` (on loopback), `IPV4:PORT` or `[IPV6]:PORT`.
/// Host names are not resolved.
pub fn parse_addr(text: &str) -> Result<SocketAddr, MetricsError> {
    let t = text.trim();
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(addr);
    }
    match t.parse::<u16>() {
        Ok(port) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
        Err(_) => Err(MetricsError::Address {
            text: text.to_string(),
        }),
    }
}

/// Takes a snapshot through a control API handler such as `Switch::handle`: a
/// [`Request::Ports`] and a [`Request::Stats`]. An unexpected answer gives an empty
/// list.
pub fn snapshot_from(handle: impl Fn(&Request) -> Response) -> (Vec<PortInfo>, Vec<PortStats>) {
    let ports = match handle(&Request::Ports {}) {
        Response::Ports { ports } => ports,
        _ => Vec::new(),
    };
    let stats = match handle(&Request::Stats {}) {
        Response::Stats { ports } => ports,
        _ => Vec::new(),
    };
    (ports, stats)
}

// ---------------------------------------------------------------------------
// Rendering

/// Renders a snapshot in the Prometheus text format (version 0.0.4).
///
/// `ports` gives each port's kind and connection state, `stats` its counters; they
/// are matched by name. A port in `stats` but missing from `ports` (the two lists
/// were taken at slightly different times) is left out of the families labelled
/// with `kind` for this scrape rather than exported under a made-up kind.
pub fn render(ports: &[PortInfo], stats: &[PortStats]) -> String {
    let families = families(ports, stats);
    let mut out = String::with_capacity(256 + stats.len() * 2048);
    if let Err(e) = TextEncoder::new().encode_utf8(&families, &mut out) {
        // Only empty or nameless families fail, and `families` makes neither.
        log::error!("metrics: cannot encode: {e}");
    }
    out
}

/// A counter family: name, help, and the value it takes from a `T`.
type Field<T> = (&'static str, &'static str, fn(&T) -> u64);

/// The metric families of one snapshot, in a fixed order, empty ones left out.
fn families(ports: &[PortInfo], stats: &[PortStats]) -> Vec<MetricFamily> {
    let kinds: HashMap<&str, String> = ports
        .iter()
        .map(|p| (p.name.as_str(), kind_label(p)))
        .collect();
    let mut out = Vec::new();
    let mut push = |name: &str, help: &str, ty: MetricType, metrics: Vec<Metric>| {
        if !metrics.is_empty() {
            let mut f = MetricFamily::default();
            f.set_name(name.to_string());
            f.set_help(help.to_string());
            f.set_field_type(ty);
            f.set_metric(metrics);
            out.push(f);
        }
    };

    push(
        "accelnet_switch_ports",
        "Ports on the switch (VM ports and uplinks).",
        MetricType::GAUGE,
        vec![gauge(
            &[],
            as_f64(u64::try_from(ports.len()).unwrap_or(u64::MAX)),
        )],
    );
    push(
        "accelnet_switch_port_connected",
        "1 if the port's frontend is connected and its rings run (an up uplink is always 1), else 0.",
        MetricType::GAUGE,
        ports
            .iter()
            .map(|p| gauge(&[("port", &p.name)], if p.connected { 1.0 } else { 0.0 }))
            .collect(),
    );

    let port_counters: [Field<PortStats>; 4] = [
        (
            "accelnet_switch_port_rx_packets_total",
            "Frames the switch received from the port (the guest's transmissions).",
            |s| s.rx_packets,
        ),
        (
            "accelnet_switch_port_rx_bytes_total",
            "Bytes the switch received from the port (Ethernet frames, no virtio header).",
            |s| s.rx_bytes,
        ),
        (
            "accelnet_switch_port_tx_packets_total",
            "Frames the switch delivered to the port.",
            |s| s.tx_packets,
        ),
        (
            "accelnet_switch_port_tx_bytes_total",
            "Bytes the switch delivered to the port (Ethernet frames, no virtio header).",
            |s| s.tx_bytes,
        ),
    ];
    for (name, help, value) in port_counters {
        let metrics = stats
            .iter()
            .filter_map(|s| {
                let kind = kinds.get(s.name.as_str())?;
                Some(counter(&[("port", &s.name), ("kind", kind)], value(s)))
            })
            .collect();
        push(name, help, MetricType::COUNTER, metrics);
    }

    push(
        "accelnet_switch_port_drops_total",
        "Frames dropped and guest requests rejected on the port, by reason.",
        MetricType::COUNTER,
        stats
            .iter()
            .flat_map(|s| {
                s.drops
                    .iter()
                    .map(|(reason, n)| counter(&[("port", &s.name), ("reason", reason)], *n))
            })
            .collect(),
    );

    let queue_counters: [Field<QueueStats>; 4] = [
        (
            "accelnet_switch_queue_rx_packets_total",
            "Frames the switch took from the queue pair's TX queue.",
            |q| q.rx_packets,
        ),
        (
            "accelnet_switch_queue_rx_bytes_total",
            "Bytes the switch took from the queue pair's TX queue.",
            |q| q.rx_bytes,
        ),
        (
            "accelnet_switch_queue_tx_packets_total",
            "Frames the switch wrote into the queue pair's RX queue.",
            |q| q.tx_packets,
        ),
        (
            "accelnet_switch_queue_tx_bytes_total",
            "Bytes the switch wrote into the queue pair's RX queue.",
            |q| q.tx_bytes,
        ),
    ];
    for (name, help, value) in queue_counters {
        let metrics = stats
            .iter()
            .flat_map(|s| {
                s.queues.iter().map(|q| {
                    let queue = q.queue.to_string();
                    counter(&[("port", &s.name), ("queue", &queue)], value(q))
                })
            })
            .collect();
        push(name, help, MetricType::COUNTER, metrics);
    }
    out
}

/// The port kind as the control API spells it (`vhost-user`, `uplink`).
fn kind_label(p: &PortInfo) -> String {
    serde_json::to_value(p.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut l = LabelPair::default();
            l.set_name((*name).to_string());
            l.set_value((*value).to_string());
            l
        })
        .collect()
}

/// Prometheus samples are doubles: counters past 2^53 lose their last digits.
fn as_f64(v: u64) -> f64 {
    v as f64
}

fn counter(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(as_f64(value));
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    m
}

// ---------------------------------------------------------------------------
// Serving

/// A running metrics HTTP server. Dropping it is the same as
/// [`MetricsServer::shutdown`].
///
/// Serves `GET` (and `HEAD`) [`PATH`] with `200` and [`CONTENT_TYPE`]; any other
/// path gets `404`, any other method on [`PATH`] `405`.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Bounds of one server; the constants, except in tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    request_timeout: Duration,
}

const LIMITS: Limits = Limits {
    max_connections: MAX_CONNECTIONS,
    request_timeout: REQUEST_TIMEOUT,
};

/// State shared by the accept thread and the connection threads.
struct Shared {
    source: SnapshotSource,
    stop: Arc<AtomicBool>,
    active: AtomicUsize,
    limits: Limits,
}

impl MetricsServer {
    /// Listens on `addr` and serves the metrics of `source` from a background
    /// thread.
    ///
    /// Use a loopback address ([`DEFAULT_ADDR`]) unless the metrics are meant to be
    /// read from other hosts: binding a non-loopback address (or `0.0.0.0`/`[::]`)
    /// exposes every port's name and counters to the network, unauthenticated.
    /// Port 0 picks a free port; [`MetricsServer::local_addr`] tells which.
    pub fn start(addr: SocketAddr, source: SnapshotSource) -> Result<MetricsServer, MetricsError> {
        Self::start_with(addr, source, LIMITS)
    }

    fn start_with(
        addr: SocketAddr,
        source: SnapshotSource,
        limits: Limits,
    ) -> Result<MetricsServer, MetricsError> {
        let bind_err = |source: io::Error| {
            if source.kind() == ErrorKind::AddrInUse {
                MetricsError::InUse { addr }
            } else {
                MetricsError::Bind { addr, source }
            }
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            source,
            stop: Arc::clone(&stop),
            active: AtomicUsize::new(0),
            limits,
        });
        let thread = thread::Builder::new()
            .name("metrics".into())
            .spawn(move || accept_loop(listener, &shared))
            .map_err(|source| MetricsError::Spawn { source })?;
        if addr.ip().is_loopback() {
            log::info!("serving metrics on http://{local_addr}{PATH}");
        } else {
            log::warn!(
                "serving metrics on http://{local_addr}{PATH}, not a loopback address: \
                 port names and counters are readable from the network"
            );
        }
        Ok(MetricsServer {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address served (with the actual port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and waits for the server's threads; the listening socket is
    /// closed when this returns. Takes about one poll interval ([`ACCEPT_POLL`] or
    /// 100 ms). Idempotent.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(thread) = self.thread.take() else {
            return;
        };
        if thread.join().is_err() {
            log::error!("metrics server {}: accept thread panicked", self.local_addr);
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, shared: &Arc<Shared>) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                connections.retain(|c| !c.is_finished());
                if let Some(c) = spawn_connection(stream, shared) {
                    connections.push(c);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                warn_limited!("metrics: accept failed: {e}");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
    // Free the port first; connection threads notice the stop flag within IO_POLL.
    drop(listener);
    for c in connections {
        // A panic has already been reported by the panic hook.
        let _ = c.join();
    }
}

/// Decrements the active connection count when a connection thread ends.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn spawn_connection(stream: TcpStream, shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    let max = shared.limits.max_connections;
    if shared.active.fetch_add(1, Ordering::Relaxed) >= max {
        shared.active.fetch_sub(1, Ordering::Relaxed);
        warn_limited!("metrics: more than {max} connections, refusing one");
        // Best effort, without waiting: the accept thread must not block. Take in
        // what already arrived of the request, so that closing does not reset the
        // connection under the answer.
        let _ = stream.set_nonblocking(true);
        let _ = (&stream).read(&mut [0u8; 2048]);
        let reply = Reply::text(503, format!("too many connections (at most {max})\n"));
        let _ = (&stream).write(&reply.to_bytes());
        let _ = stream.shutdown(Shutdown::Write);
        return None;
    }
    let guard = ActiveGuard(Arc::clone(shared));
    let spawned = thread::Builder::new()
        .name("metrics-conn".into())
        .spawn(move || {
            if let Err(e) = serve_connection(&stream, &guard.0) {
                log::debug!("metrics connection ended: {e}");
            }
            drop(guard);
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            // The closure (and the guard in it) was dropped: the count is back.
            warn_limited!("metrics: cannot start a connection thread: {e}");
            None
        }
    }
}

/// Serves the one request of a connection.
fn serve_connection(stream: &TcpStream, shared: &Shared) -> io::Result<()> {
    // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure anyway.
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_POLL))?;
    stream.set_write_timeout(Some(IO_POLL))?;
    let _ = stream.set_nodelay(true);
    let timeout = shared.limits.request_timeout;
    let Some(reply) = read_request(stream, shared, Instant::now() + timeout)? else {
        return Ok(());
    };
    write_bounded(stream, &reply.to_bytes(), shared, Instant::now() + timeout)?;
    linger(stream, shared);
    Ok(())
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Reads the request head and answers it; `None` if the client left or the
/// server is stopping.
fn read_request(
    stream: &TcpStream,
    shared: &Shared,
    deadline: Instant,
) -> io::Result<Option<Reply>> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or_default();
                let path = req.path.unwrap_or_default();
                return Ok(Some(answer(method, path, shared)));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Ok(Some(Reply::text(431, "too many headers\n".into())));
            }
            Err(e) => return Ok(Some(Reply::text(400, format!("bad request: {e}\n")))),
        }
        if buf.len() >= MAX_REQUEST_HEAD {
            return Ok(Some(Reply::text(
                431,
                format!("request head longer than {MAX_REQUEST_HEAD} bytes\n"),
            )));
        }
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if Instant::now() >= deadline {
            return Ok(Some(Reply::text(408, "request timeout\n".into())));
        }
        let room = chunk.len().min(MAX_REQUEST_HEAD - buf.len());
        match (&*stream).read(&mut chunk[..room]) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

/// The answer to a complete request.
fn answer(method: &str, target: &str, shared: &Shared) -> Reply {
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != PATH {
        return Reply::text(404, format!("not found: the metrics are at {PATH}\n"));
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            let mut reply = Reply::text(405, format!("method not allowed: use GET {PATH}\n"));
            reply.allow = true;
            return reply;
        }
    };
    let rendered = panic::catch_unwind(AssertUnwindSafe(|| {
        let (ports, stats) = (shared.source)();
        render(&ports, &stats)
    }));
    match rendered {
        Ok(body) => Reply {
            status: 200,
            content_type: CONTENT_TYPE,
            body,
            head_only,
            allow: false,
        },
        Err(_) => {
            warn_limited!("metrics: the snapshot source panicked");
            Reply::text(500, "cannot take a snapshot of the counters\n".into())
        }
    }
}

/// Writes all of `data` unless the deadline passes or the server stops.
fn write_bounded(
    stream: &TcpStream,
    data: &[u8],
    shared: &Shared,
    deadline: Instant,
) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        if shared.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("server stopping"));
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                ErrorKind::TimedOut,
                "client did not take the answer in time",
            ));
        }
        match (&*stream).write(&data[off..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if is_transient(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Half-closes, then waits (briefly) for the client to close, discarding its
/// input, so that closing does not reset the connection under the answer.
fn linger(stream: &TcpStream, shared: &Shared) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut chunk = [0u8; 1024];
    let mut discarded = 0;
    while discarded < MAX_LINGER_INPUT
        && Instant::now() < until
        && !shared.stop.load(Ordering::Relaxed)
    {
        match (&*stream).read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => discarded += n,
            Err(e) if is_transient(&e) => {}
            Err(_) => return,
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    /// Answer to `HEAD`: headers only (with the body's length).
    head_only: bool,
    /// Add `Allow: GET, HEAD` (to a `405`).
    allow: bool,
}

impl Reply {
    fn text(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
            head_only: false,
            allow: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::api::{DropReason, PortKind};

    const WEIRD: &str = "we\"ird\\na\nme";

    fn info(name: &str, kind: PortKind, connected: bool) -> PortInfo {
        PortInfo {
            id: 0,
            name: name.to_string(),
            kind,
            path: format!("/run/{name}.sock"),
            vlan: 1,
            connected,
            acked_features: 0,
            policy: Default::default(),
        }
    }

    fn stats(name: &str, base: u64, queues: u16) -> PortStats {
        PortStats {
            name: name.to_string(),
            rx_packets: base + 1,
            rx_bytes: base + 2,
            tx_packets: base + 3,
            tx_bytes: base + 4,
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.as_str().to_string(), 0))
                .chain([("runt_frame".to_string(), base + 5)])
                .collect(),
            queues: (0..queues)
                .map(|q| QueueStats {
                    queue: q,
                    rx_packets: base + 10 * u64::from(q) + 6,
                    rx_bytes: base + 10 * u64::from(q) + 7,
                    tx_packets: base + 10 * u64::from(q) + 8,
                    tx_bytes: base + 10 * u64::from(q) + 9,
                })
                .collect(),
        }
    }

    fn snapshot(base: u64) -> (Vec<PortInfo>, Vec<PortStats>) {
        (
            vec![
                info("vm0", PortKind::VhostUser, true),
                info("eth0", PortKind::Uplink, true),
                info(WEIRD, PortKind::VhostUser, false),
            ],
            vec![
                stats("vm0", base, 2),
                stats("eth0", base + 1000, 0),
                stats(WEIRD, base + 2000, 1),
            ],
        )
    }

    /// Sample lines as `name{labels}` → value; panics on a malformed line.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let v: f64 = value.parse().expect("sample value");
            assert!(out.insert(series.to_string(), v).is_none(), "dup {series}");
        }
        out
    }

    #[test]
    fn test_render_golden_one_port() {
        let mut s = stats("p", 0, 1);
        s.drops = [("a".to_string(), 0), ("b".to_string(), 3)].into();
        let text = render(&[info("p", PortKind::Uplink, true)], &[s]);
        let expected = "\
# HELP accelnet_switch_ports Ports on the switch (VM ports and uplinks).
# TYPE accelnet_switch_ports gauge
accelnet_switch_ports 1
# HELP accelnet_switch_port_connected 1 if the port's frontend is connected and its rings run (an up uplink is always 1), else 0.
# TYPE accelnet_switch_port_connected gauge
accelnet_switch_port_connected{port=\"p\"} 1
# HELP accelnet_switch_port_rx_packets_total Frames the switch received from the port (the guest's transmissions).
# TYPE accelnet_switch_port_rx_packets_total counter
accelnet_switch_port_rx_packets_total{port=\"p\",kind=\"uplink\"} 1
# HELP accelnet_switch_port_rx_bytes_total Bytes the switch received from the port (Ethernet frames, no virtio header).
# TYPE accelnet_switch_port_rx_bytes_total counter
accelnet_switch_port_rx_bytes_total{port=\"p\",kind=\"uplink\"} 2
# HELP accelnet_switch_port_tx_packets_total Frames the switch delivered to the port.
# TYPE accelnet_switch_port_tx_packets_total counter
accelnet_switch_port_tx_packets_total{port=\"p\",kind=\"uplink\"} 3
# HELP accelnet_switch_port_tx_bytes_total Bytes the switch delivered to the port (Ethernet frames, no virtio header).
# TYPE accelnet_switch_port_tx_bytes_total counter
accelnet_switch_port_tx_bytes_total{port=\"p\",kind=\"uplink\"} 4
# HELP accelnet_switch_port_drops_total Frames dropped and guest requests rejected on the port, by reason.
# TYPE accelnet_switch_port_drops_total counter
accelnet_switch_port_drops_total{port=\"p\",reason=\"a\"} 0
accelnet_switch_port_drops_total{port=\"p\",reason=\"b\"} 3
# HELP accelnet_switch_queue_rx_packets_total Frames the switch took from the queue pair's TX queue.
# TYPE accelnet_switch_queue_rx_packets_total counter
accelnet_switch_queue_rx_packets_total{port=\"p\",queue=\"0\"} 6
# HELP accelnet_switch_queue_rx_bytes_total Bytes the switch took from the queue pair's TX queue.
# TYPE accelnet_switch_queue_rx_bytes_total counter
accelnet_switch_queue_rx_bytes_total{port=\"p\",queue=\"0\"} 7
# HELP accelnet_switch_queue_tx_packets_total Frames the switch wrote into the queue pair's RX queue.
# TYPE accelnet_switch_queue_tx_packets_total counter
accelnet_switch_queue_tx_packets_total{port=\"p\",queue=\"0\"} 8
# HELP accelnet_switch_queue_tx_bytes_total Bytes the switch wrote into the queue pair's RX queue.
# TYPE accelnet_switch_queue_tx_bytes_total counter
accelnet_switch_queue_tx_bytes_total{port=\"p\",queue=\"0\"} 9
";
        assert_eq!(text, expected);
    }

    #[test]
    fn test_render_help_and_type_once_per_family() {
        let (ports, st) = snapshot(100);
        let text = render(&ports, &st);
        let mut families: Vec<(&str, &str)> = Vec::new();
        let mut current: Option<&str> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    !families.iter().any(|(n, _)| *n == name),
                    "HELP twice: {name}"
                );
                current = Some(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').unwrap();
                assert_eq!(Some(name), current, "TYPE without its HELP just before");
                assert!(
                    !families.iter().any(|(n, _)| *n == name),
                    "TYPE twice: {name}"
                );
                assert_eq!(ty == "counter", name.ends_with("_total"), "{line}");
                assert!(ty == "counter" || ty == "gauge", "{line}");
                families.push((name, ty));
            } else {
                assert!(!line.starts_with('#'), "{line}");
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(Some(name), current, "sample outside its family: {line}");
            }
        }
        let names: Vec<&str> = families.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "accelnet_switch_ports",
                "accelnet_switch_port_connected",
                "accelnet_switch_port_rx_packets_total",
                "accelnet_switch_port_rx_bytes_total",
                "accelnet_switch_port_tx_packets_total",
                "accelnet_switch_port_tx_bytes_total",
                "accelnet_switch_port_drops_total",
                "accelnet_switch_queue_rx_packets_total",
                "accelnet_switch_queue_rx_bytes_total",
                "accelnet_switch_queue_tx_packets_total",
                "accelnet_switch_queue_tx_bytes_total",
            ]
        );
    }

    #[test]
    fn test_render_escapes_label_values() {
        let (ports, st) = snapshot(100);
        let text = render(&ports, &st);
        // Backslash doubled, quote and newline escaped: the value stays on one line.
        let escaped = r#"port="we\"ird\\na\nme""#;
        assert!(text.contains(&format!(
            "accelnet_switch_port_rx_packets_total{{{escaped},kind=\"vhost-user\"}} 2101\n"
        )));
        assert!(text.contains(&format!("accelnet_switch_port_connected{{{escaped}}} 0\n")));
        assert!(text.contains(&format!(
            "accelnet_switch_queue_tx_bytes_total{{{escaped},queue=\"0\"}} 2109\n"
        )));
        assert!(!text.contains(WEIRD));
        // Every line is a comment or a sample: no raw newline leaked.
        let s = samples(&text);
        assert_eq!(
            s.len(),
            text.lines().filter(|l| !l.starts_with('#')).count()
        );
    }

    #[test]
    fn test_render_every_drop_reason_and_queue() {
        let (ports, st) = snapshot(100);
        let s = samples(&render(&ports, &st));
        for port in ["vm0", "eth0"] {
            for r in DropReason::ALL {
                let key = format!(
                    "accelnet_switch_port_drops_total{{port=\"{port}\",reason=\"{}\"}}",
                    r.as_str()
                );
                let want = if *r == DropReason::RuntFrame {
                    if port == "vm0" {
                        105.0
                    } else {
                        1105.0
                    }
                } else {
                    0.0
                };
                assert_eq!(s.get(&key), Some(&want), "{key}");
            }
        }
        assert_eq!(s["accelnet_switch_ports"], 3.0);
        assert_eq!(s["accelnet_switch_port_connected{port=\"vm0\"}"], 1.0);
        assert_eq!(
            s["accelnet_switch_port_tx_bytes_total{port=\"eth0\",kind=\"uplink\"}"],
            1104.0
        );
        // vm0 has queue pairs 0 and 1, the uplink none.
        assert_eq!(
            s["accelnet_switch_queue_rx_packets_total{port=\"vm0\",queue=\"0\"}"],
            106.0
        );
        assert_eq!(
            s["accelnet_switch_queue_rx_bytes_total{port=\"vm0\",queue=\"1\"}"],
            117.0
        );
        assert_eq!(
            s["accelnet_switch_queue_tx_packets_total{port=\"vm0\",queue=\"1\"}"],
            118.0
        );
        assert!(!s.keys().any(|k| k.contains("queue") && k.contains("eth0")));
    }

    #[test]
    fn test_render_large_counter_and_empty_switch() {
        let mut st = stats("p", 0, 0);
        st.rx_bytes = 1 << 50;
        let s = samples(&render(&[info("p", PortKind::VhostUser, true)], &[st]));
        assert_eq!(
            s["accelnet_switch_port_rx_bytes_total{port=\"p\",kind=\"vhost-user\"}"],
            (1u64 << 50) as f64
        );
        assert_eq!(
            render(&[], &[]),
            "# HELP accelnet_switch_ports Ports on the switch (VM ports and uplinks).\n\
             # TYPE accelnet_switch_ports gauge\naccelnet_switch_ports 0\n"
        );
    }

    #[test]
    fn test_render_stats_without_info_skip_kind_families() {
        let st = vec![stats("late", 0, 0)];
        let s = samples(&render(&[], &st));
        assert!(!s.keys().any(|k| k.contains("rx_packets")));
        assert_eq!(
            s["accelnet_switch_port_drops_total{port=\"late\",reason=\"runt_frame\"}"],
            5.0
        );
    }

    #[test]
    fn test_parse_addr() {
        assert_eq!(
            parse_addr("9100").unwrap(),
            "127.0.0.1:9100".parse().unwrap()
        );
        assert_eq!(
            parse_addr("0.0.0.0:9100").unwrap(),
            "0.0.0.0:9100".parse().unwrap()
        );
        assert_eq!(parse_addr("[::1]:80").unwrap(), "[::1]:80".parse().unwrap());
        for bad in ["", "localhost:80", "1.2.3.4", "99999", "::1:80"] {
            assert!(
                matches!(parse_addr(bad), Err(MetricsError::Address { .. })),
                "{bad}"
            );
        }
        assert!(DEFAULT_ADDR.ip().is_loopback());
    }

    #[test]
    fn test_snapshot_from_handler() {
        let (ports, st) = snapshot_from(|req| match req {
            Request::Ports {} => Response::Ports {
                ports: vec![info("a", PortKind::Uplink, true)],
            },
            Request::Stats {} => Response::Stats {
                ports: vec![stats("a", 0, 0)],
            },
            _ => Response::Error {
                message: "unexpected".into(),
            },
        });
        assert_eq!((ports.len(), st.len()), (1, 1));
    }

    // --- live server -------------------------------------------------------

    struct HttpReply {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl HttpReply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends `request` as is and reads the answer until the server closes.
    fn http(addr: SocketAddr, request: &[u8]) -> HttpReply {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(request).unwrap();
        // Until the server closes; a reset after the answer (a refused connection
        // closed with the request unread) still leaves the answer readable.
        let mut raw = Vec::new();
        if let Err(e) = stream.read_to_end(&mut raw) {
            assert!(!raw.is_empty(), "no answer: {e}");
        }
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("header end");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let mut parts = status_line.splitn(3, ' ');
        assert!(parts.next().unwrap().starts_with("HTTP/1."));
        let status = parts.next().unwrap().parse().unwrap();
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        HttpReply {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn get(addr: SocketAddr, path: &str) -> HttpReply {
        http(addr, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    fn live_source(base: Arc<AtomicU64>) -> SnapshotSource {
        Arc::new(move || snapshot(base.load(Ordering::Relaxed)))
    }

    #[test]
    fn test_live_metrics_404_405_and_shutdown_frees_port() {
        let base = Arc::new(AtomicU64::new(100));
        let mut server = MetricsServer::start(loopback(), live_source(Arc::clone(&base))).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let r = get(addr, "/metrics");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some(CONTENT_TYPE));
        assert!(CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));
        assert_eq!(r.header("Content-Length"), Some(&*r.body.len().to_string()));
        assert_eq!(r.body, render(&snapshot(100).0, &snapshot(100).1));
        let s = samples(&r.body);
        assert_eq!(s["accelnet_switch_ports"], 3.0);
        assert_eq!(
            s["accelnet_switch_port_rx_packets_total{port=\"vm0\",kind=\"vhost-user\"}"],
            101.0
        );
        assert_eq!(
            s["accelnet_switch_port_drops_total{port=\"eth0\",reason=\"runt_frame\"}"],
            1105.0
        );

        // Each scrape takes a fresh snapshot; HTTP/1.1 and a query string work too.
        base.store(500, Ordering::Relaxed);
        let r = http(
            addr,
            b"GET /metrics?x=1 HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            samples(&r.body)["accelnet_switch_queue_tx_packets_total{port=\"vm0\",queue=\"1\"}"],
            518.0
        );

        let r = http(addr, b"HEAD /metrics HTTP/1.0\r\n\r\n");
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        assert_ne!(r.header("Content-Length"), Some("0"));

        assert_eq!(get(addr, "/").status, 404);
        assert_eq!(get(addr, "/metricsx").status, 404);
        let r = http(addr, b"POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status, 405);
        assert_eq!(r.header("Allow"), Some("GET, HEAD"));
        assert_eq!(http(addr, b"\x16\x03\x01 garbage\r\n\r\n").status, 400);
        let huge = format!(
            "GET /metrics HTTP/1.0\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_HEAD)
        );
        assert_eq!(http(addr, huge.as_bytes()).status, 431);

        let t = Instant::now();
        server.shutdown();
        assert!(t.elapsed() < Duration::from_secs(2));
        // The port is free as soon as shutdown returns.
        let again = TcpListener::bind(addr).expect("port released");
        drop(again);
        server.shutdown();

        // Drop stops it too.
        let server = MetricsServer::start(addr, live_source(base)).unwrap();
        assert_eq!(get(addr, "/metrics").status, 200);
        drop(server);
        drop(TcpListener::bind(addr).expect("port released on drop"));
    }

    #[test]
    fn test_bind_errors() {
        let taken = TcpListener::bind(loopback()).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = MetricsServer::start(addr, live_source(Arc::default())).unwrap_err();
        assert!(
            matches!(err, MetricsError::InUse { addr: a } if a == addr),
            "{err:?}"
        );
        assert!(err.to_string().contains("already in use"));
        // Not an address of this host (TEST-NET-1): binding fails, nothing is sent.
        let err = MetricsServer::start("192.0.2.1:0".parse().unwrap(), live_source(Arc::default()))
            .unwrap_err();
        assert!(matches!(err, MetricsError::Bind { .. }), "{err:?}");
    }

    #[test]
    fn test_slow_clients_are_bounded() {
        let limits = Limits {
            max_connections: 2,
            request_timeout: Duration::from_millis(400),
        };
        let mut server =
            MetricsServer::start_with(loopback(), live_source(Arc::default()), limits).unwrap();
        let addr = server.local_addr();

        // Two clients that connect and send half a request hold both slots...
        let mut idle: Vec<TcpStream> = (0..2)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /metr").unwrap();
                s
            })
            .collect();
        thread::sleep(Duration::from_millis(100));
        // ...so a third is turned away at once rather than queued,
        assert_eq!(get(addr, "/metrics").status, 503);
        // and the slow ones are timed out, which frees the slots.
        for s in &mut idle {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut raw = String::new();
            s.read_to_string(&mut raw).unwrap();
            assert!(raw.starts_with("HTTP/1.1 408 "), "{raw}");
        }
        drop(idle);
        thread::sleep(Duration::from_millis(100));
        assert_eq!(get(addr, "/metrics").status, 200);

        // A client in the middle of a request does not hold up shutdown.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n").unwrap();
        thread::sleep(Duration::from_millis(50));
        let t = Instant::now();
        server.shutdown();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        drop(TcpListener::bind(addr).expect("port released"));
    }

    #[test]
    fn test_client_not_reading_does_not_hold_up_shutdown() {
        // Several MB of answer: more than the socket buffers take.
        let source: SnapshotSource = Arc::new(|| {
            let names: Vec<String> = (0..3000).map(|i| format!("vm{i}")).collect();
            (
                names
                    .iter()
                    .map(|n| info(n, PortKind::VhostUser, true))
                    .collect(),
                names.iter().map(|n| stats(n, 0, 4)).collect(),
            )
        });
        let mut server = MetricsServer::start(loopback(), source).unwrap();
        let addr = server.local_addr();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        // Wait for the answer to start, then stop reading and let the buffers fill.
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut start = [0u8; 17];
        s.read_exact(&mut start).unwrap();
        assert_eq!(&start, b"HTTP/1.1 200 OK\r\n");
        thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        server.shutdown();
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        drop(TcpListener::bind(addr).expect("port released"));
        // The client gets a truncated answer, then the end of the connection.
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        let body_len: usize = String::from_utf8_lossy(&rest)
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: ")?.parse().ok())
            .unwrap();
        assert!(rest.len() < body_len, "{} of {body_len}", rest.len());
    }

    #[test]
    fn test_panicking_source_answers_500() {
        let source: SnapshotSource = Arc::new(|| panic!("snapshot failed"));
        let server = MetricsServer::start(loopback(), source).unwrap();
        assert_eq!(get(server.local_addr(), "/metrics").status, 500);
        // The server survives it.
        assert_eq!(get(server.local_addr(), "/nope").status, 404);
    }
}
