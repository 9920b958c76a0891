//! The control socket: a unix-socket JSON API served by the switch, and its client.
//!
//! Protocol: one JSON [`Request`] per line, one JSON [`Response`] per line, in order,
//! on a connection that stays open until the client closes it. A line that is not a
//! valid request (bad JSON, unknown field, unknown request) gets a
//! [`Response::Error`] and the connection stays usable. Blank lines are ignored. A
//! line longer than [`MAX_LINE`] bytes gets an error and the connection is closed.
//!
//! # Access
//!
//! The socket is mode 0600: only its owner (and root) may connect. To leave no
//! window in which another user could connect before the mode is set, the server
//! binds in a fresh private (0700) directory next to the final path, sets the
//! socket's mode, then renames it into place (which also replaces a stale socket
//! atomically).
//!
//! # Threads
//!
//! One thread accepts on a nonblocking listener, polling the stop flag every
//! [`ACCEPT_POLL`]. Each connection gets its own thread, so one stuck client cannot
//! delay others; at most [`MAX_CONNECTIONS`] are served at once, and a connection
//! idle for [`IDLE_TIMEOUT`] without completing a request is closed. Connection
//! threads also poll the stop flag, so [`ControlServer::shutdown`] returns after at
//! most one poll interval (plus one bounded response write).

use std::fs::{self, DirBuilder, Permissions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::api::{Request, Response};
use crate::logging::warn_limited;

/// Longest request line the server accepts, in bytes (without the newline).
/// (An `inject` of a migration's held frames carries up to a 64 KiB frame in hex.)
pub const MAX_LINE: usize = 512 * 1024;
/// Longest response line the client accepts, in bytes.
pub const MAX_RESPONSE: usize = 16 * 1024 * 1024;
/// How long [`request`] waits for the switch, in total.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection that completes no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the accept thread checks for shutdown.
pub const ACCEPT_POLL: Duration = Duration::from_millis(20);
/// How often connection threads check for shutdown while waiting for input.
const READ_POLL: Duration = Duration::from_millis(100);
/// Longest the server waits for a client to take a response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves control requests; the switch implements it.
pub trait ControlHandler: Send + Sync + 'static {
    /// Answers one request. Called from connection threads, possibly concurrently.
    fn handle(&self, req: &Request) -> Response;
}

/// Errors of the control socket server and client.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another process serves this socket.
    #[error("control socket {path} is already in use (is another switch running?)")]
    InUse {
        /// Socket path.
        path: PathBuf,
    },
    /// Something that is not a socket is in the way.
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// Path given as the control socket.
        path: PathBuf,
    },
    /// Checking for an existing socket failed.
    #[error("cannot check existing control socket {path}")]
    Probe {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Creating the socket failed.
    #[error("cannot create control socket {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Starting the accept thread failed.
    #[error("cannot start the thread serving control socket {path}")]
    Spawn {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// No socket file at the path.
    #[error("is the switch running? no control socket at {path}")]
    NoSocket {
        /// Socket path.
        path: PathBuf,
    },
    /// The socket file exists but nobody listens.
    #[error("is the switch running? nothing listens on control socket {path}")]
    Refused {
        /// Socket path.
        path: PathBuf,
    },
    /// Connecting failed for another reason (permissions, ...).
    #[error("cannot connect to control socket {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Sending the request or reading the answer failed.
    #[error("lost the connection to control socket {path}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// No complete answer within [`CLIENT_TIMEOUT`].
    #[error("no answer on control socket {path} within {} s", CLIENT_TIMEOUT.as_secs())]
    Timeout {
        /// Socket path.
        path: PathBuf,
    },
    /// The peer closed the connection before answering.
    #[error("control socket {path} closed the connection without answering")]
    Closed {
        /// Socket path.
        path: PathBuf,
    },
    /// The answer was longer than [`MAX_RESPONSE`].
    #[error("control socket {path} sent an answer longer than {MAX_RESPONSE} bytes")]
    ResponseTooLong {
        /// Socket path.
        path: PathBuf,
    },
    /// The answer was not a valid [`Response`].
    #[error("control socket {path} sent an invalid answer (not an accelnet switch, or another version?)")]
    BadResponse {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// A running control socket server. Dropping it is the same as
/// [`ControlServer::shutdown`].
#[derive(Debug)]
pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of the socket file we created, so shutdown removes only ours.
    file_id: Option<(u64, u64)>,
    stop: Arc<AtomicBool>,
    rejected: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

/// State shared by the accept thread and the connection threads.
struct Shared {
    handler: Arc<dyn ControlHandler>,
    stop: Arc<AtomicBool>,
    rejected: Arc<AtomicU64>,
    active: AtomicUsize,
}

impl ControlServer {
    /// Creates the socket at `path` (mode 0600) and serves `handler` on it from a
    /// background thread.
    ///
    /// Fails if a server already listens at `path`, or if `path` is something other
    /// than a socket. A stale socket (nobody listening) is replaced.
    pub fn start(
        path: &Path,
        handler: Arc<dyn ControlHandler>,
    ) -> Result<ControlServer, ControlError> {
        check_existing(path)?;
        let listener = bind_private(path)?;
        let file_id = fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
        let mut server = ControlServer {
            path: path.to_path_buf(),
            file_id,
            stop: Arc::new(AtomicBool::new(false)),
            rejected: Arc::new(AtomicU64::new(0)),
            thread: None,
        };
        // From here on, an error drops `server`, which removes the socket file.
        let bind_err = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        listener.set_nonblocking(true).map_err(bind_err)?;
        let shared = Arc::new(Shared {
            handler,
            stop: Arc::clone(&server.stop),
            rejected: Arc::clone(&server.rejected),
            active: AtomicUsize::new(0),
        });
        let thread = thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &shared))
            .map_err(|source| ControlError::Spawn {
                path: path.to_path_buf(),
                source,
            })?;
        server.thread = Some(thread);
        log::info!("control socket listening on {}", path.display());
        Ok(server)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Requests rejected so far: malformed or oversized lines, and connections
    /// refused because too many were open.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Stops serving, waits for the threads and removes the socket file (if it is
    /// still the one this server created). Idempotent.
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(thread) = self.thread.take() else {
            return;
        };
        if thread.join().is_err() {
            log::error!(
                "control socket {}: accept thread panicked",
                self.path.display()
            );
        }
        self.remove_file();
    }

    fn remove_file(&mut self) {
        let Some(id) = self.file_id.take() else {
            return;
        };
        let ours = fs::symlink_metadata(&self.path)
            .map(|m| m.file_type().is_socket() && (m.dev(), m.ino()) == id)
            .unwrap_or(false);
        if ours {
            if let Err(e) = fs::remove_file(&self.path) {
                log::warn!("cannot remove control socket {}: {e}", self.path.display());
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
        // Covers a start() that failed after creating the file.
        self.remove_file();
    }
}

/// Errors out unless `path` is absent or a stale socket.
fn check_existing(path: &Path) -> Result<(), ControlError> {
    let probe_err = |source| ControlError::Probe {
        path: path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(probe_err(e)),
        Ok(m) if !m.file_type().is_socket() => Err(ControlError::NotASocket {
            path: path.to_path_buf(),
        }),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(ControlError::InUse {
                path: path.to_path_buf(),
            }),
            // Stale: bind_private renames the new socket over it.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                log::info!("replacing stale control socket {}", path.display());
                Ok(())
            }
            Err(e) => Err(probe_err(e)),
        },
    }
}

/// Binds a listener in a private directory, makes it 0600 and renames it to `path`,
/// so nobody but root can connect before the mode is set.
fn bind_private(path: &Path) -> Result<UnixListener, ControlError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Short name: the socket path inside must still fit in sun_path (108 bytes).
    let dir = parent.join(format!(
        ".c{:x}.{:x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(bind_err)?;
    let tmp = dir.join("s");
    let result = UnixListener::bind(&tmp).and_then(|listener| {
        fs::set_permissions(&tmp, Permissions::from_mode(0o600))?;
        fs::rename(&tmp, path)?;
        Ok(listener)
    });
    // Both fail harmlessly once the socket has been renamed away.
    let _ = fs::remove_file(&tmp);
    let _ = fs::remove_dir(&dir);
    result.map_err(bind_err)
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
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
                warn_limited!("control socket: accept failed: {e}");
                thread::sleep(ACCEPT_POLL);
            }
        }
    }
    for c in connections {
        // A panicking handler has already been reported by the panic hook.
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

fn spawn_connection(stream: UnixStream, shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    if shared.active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
        shared.active.fetch_sub(1, Ordering::Relaxed);
        shared.rejected.fetch_add(1, Ordering::Relaxed);
        warn_limited!("control socket: more than {MAX_CONNECTIONS} connections, refusing one");
        let _ = stream.set_nonblocking(true);
        let _ = write_response(
            &stream,
            &Response::Error {
                message: format!("too many control connections (at most {MAX_CONNECTIONS})"),
            },
        );
        return None;
    }
    let guard = ActiveGuard(Arc::clone(shared));
    let spawned = thread::Builder::new()
        .name("control-conn".into())
        .spawn(move || {
            let shared = Arc::clone(&guard.0);
            if let Err(e) = serve_connection(&stream, &shared) {
                log::debug!("control connection ended: {e}");
            }
            drop(guard);
        });
    match spawned {
        Ok(handle) => Some(handle),
        Err(e) => {
            // The closure (and the guard in it) was dropped: the count is back.
            warn_limited!("control socket: cannot start a connection thread: {e}");
            None
        }
    }
}

/// Serves requests on one connection until EOF, an I/O error, an oversized line,
/// idleness or shutdown.
fn serve_connection(stream: &UnixStream, shared: &Shared) -> io::Result<()> {
    // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure anyway.
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_POLL))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut deadline = Instant::now() + IDLE_TIMEOUT;
    loop {
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            if pos > MAX_LINE {
                return reject_oversized(stream, shared);
            }
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if let Some(resp) = answer(&line[..pos], shared) {
                write_response(stream, &resp)?;
            }
            deadline = Instant::now() + IDLE_TIMEOUT;
        }
        if buf.len() > MAX_LINE {
            return reject_oversized(stream, shared);
        }
        if shared.stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
            return Ok(());
        }
        match (&*stream).read(&mut chunk) {
            Ok(0) => {
                // A last request without its newline is still served.
                if let Some(resp) = answer(&buf, shared) {
                    write_response(stream, &resp)?;
                }
                return Ok(());
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

fn reject_oversized(stream: &UnixStream, shared: &Shared) -> io::Result<()> {
    shared.rejected.fetch_add(1, Ordering::Relaxed);
    warn_limited!("control socket: request line over {MAX_LINE} bytes, closing the connection");
    write_response(
        stream,
        &Response::Error {
            message: format!("request line longer than {MAX_LINE} bytes; closing the connection"),
        },
    )
}

/// The response to one line, or `None` for a blank line.
fn answer(line: &[u8], shared: &Shared) -> Option<Response> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    match serde_json::from_slice::<Request>(line) {
        Ok(req) => Some(shared.handler.handle(&req)),
        Err(e) => {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            log::debug!("control socket: invalid request: {e}");
            Some(Response::Error {
                message: format!(
                    "invalid request: {e} (expected one JSON object per line, \
                     like {{\"request\":\"ports\"}})"
                ),
            })
        }
    }
}

fn write_response(mut stream: &UnixStream, resp: &Response) -> io::Result<()> {
    let mut out = serde_json::to_vec(resp).unwrap_or_else(|e| {
        // Unreachable in practice (string keys only); answer something valid anyway.
        let fallback = Response::Error {
            message: format!("cannot encode the response: {e}"),
        };
        serde_json::to_vec(&fallback).unwrap_or_default()
    });
    out.push(b'\n');
    stream.write_all(&out)
}

/// Sends `req` to the switch at `path` and returns its answer, waiting at most
/// [`CLIENT_TIMEOUT`] in total.
///
/// A [`Response::Error`] from the switch is returned as `Ok`; the caller decides
/// how to report it.
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let p = || path.to_path_buf();
    let io_err = |source: io::Error| {
        if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            ControlError::Timeout { path: p() }
        } else {
            ControlError::Io { path: p(), source }
        }
    };
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut stream = UnixStream::connect(path).map_err(|source| match source.kind() {
        ErrorKind::NotFound => ControlError::NoSocket { path: p() },
        ErrorKind::ConnectionRefused => ControlError::Refused { path: p() },
        _ => ControlError::Connect { path: p(), source },
    })?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .map_err(io_err)?;
    // Serializing a Request cannot fail: a tagged enum of empty variants.
    let mut line = serde_json::to_vec(req)
        .map_err(|source| ControlError::BadResponse { path: p(), source })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;

    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            break pos;
        }
        if buf.len() > MAX_RESPONSE {
            return Err(ControlError::ResponseTooLong { path: p() });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ControlError::Timeout { path: p() });
        }
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Err(ControlError::Closed { path: p() }),
            Ok(0) => break buf.len(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    };
    serde_json::from_slice(&buf[..end])
        .map_err(|source| ControlError::BadResponse { path: p(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PortInfo, PortKind};
    use std::io::{BufRead, BufReader};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            static N: AtomicU64 = AtomicU64::new(0);
            let dir = std::env::temp_dir().join(format!(
                "vswitch-control-{}-{name}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn sock(&self) -> PathBuf {
            self.0.join("ctl.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    struct FakeHandler;

    fn fake_port() -> PortInfo {
        PortInfo {
            id: 0,
            name: "vm-a".into(),
            kind: PortKind::VhostUser,
            path: "/tmp/vm-a.sock".into(),
            vlan: 10,
            connected: true,
            acked_features: 1 << 32,
            policy: Default::default(),
        }
    }

    impl ControlHandler for FakeHandler {
        fn handle(&self, req: &Request) -> Response {
            match req {
                Request::Ports {} => Response::Ports {
                    ports: vec![fake_port()],
                },
                Request::Fdb {} => Response::Fdb { entries: vec![] },
                Request::Stats {}
                | Request::PortAdd { .. }
                | Request::PortSet { .. }
                | Request::PortDel { .. }
                | Request::Announce { .. }
                | Request::Hold { .. }
                | Request::HoldTake { .. }
                | Request::Inject { .. } => Response::Error {
                    message: "no stats here".into(),
                },
            }
        }
    }

    fn start(path: &Path) -> ControlServer {
        ControlServer::start(path, Arc::new(FakeHandler)).unwrap()
    }

    /// Sends raw `line` (newline added) and reads one response line.
    fn exchange(reader: &mut BufReader<UnixStream>, line: &str) -> Response {
        let mut stream = reader.get_ref();
        stream.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut out = String::new();
        reader.read_line(&mut out).unwrap();
        serde_json::from_str(&out).unwrap()
    }

    #[test]
    fn test_control_request_round_trip_returns_handler_answer() {
        let dir = TempDir::new("roundtrip");
        let _server = start(&dir.sock());

        let ports = request(&dir.sock(), &Request::Ports {}).unwrap();
        let stats = request(&dir.sock(), &Request::Stats {}).unwrap();

        assert_eq!(
            ports,
            Response::Ports {
                ports: vec![fake_port()]
            }
        );
        assert_eq!(
            stats,
            Response::Error {
                message: "no stats here".into()
            }
        );
    }

    #[test]
    fn test_control_malformed_line_gets_error_and_connection_stays_usable() {
        let dir = TempDir::new("malformed");
        let server = start(&dir.sock());
        let mut conn = BufReader::new(UnixStream::connect(dir.sock()).unwrap());

        let bad = [
            "not json",
            r#"{"request":"reboot"}"#,
            r#"{"request":"ports","extra":1}"#,
        ];
        let answers: Vec<Response> = bad.iter().map(|l| exchange(&mut conn, l)).collect();
        let good = exchange(&mut conn, r#"{"request":"fdb"}"#);

        for (line, resp) in bad.iter().zip(&answers) {
            match resp {
                Response::Error { message } => {
                    assert!(
                        message.starts_with("invalid request: "),
                        "{line}: {message}"
                    )
                }
                other => panic!("{line}: got {other:?}"),
            }
        }
        assert_eq!(good, Response::Fdb { entries: vec![] });
        assert_eq!(server.rejected(), 3);
    }

    #[test]
    fn test_control_oversized_line_is_rejected_and_connection_closed() {
        let dir = TempDir::new("oversize");
        let server = start(&dir.sock());
        let mut conn = BufReader::new(UnixStream::connect(dir.sock()).unwrap());

        let long = "x".repeat(MAX_LINE + 10);
        let resp = exchange(&mut conn, &long);
        let mut rest = String::new();
        let n = conn.read_line(&mut rest).unwrap();

        assert!(matches!(resp, Response::Error { message } if message.contains("longer than")));
        assert_eq!(n, 0, "connection should be closed");
        assert_eq!(server.rejected(), 1);
    }

    #[test]
    fn test_control_stale_socket_is_replaced() {
        let dir = TempDir::new("stale");
        drop(UnixListener::bind(dir.sock()).unwrap());
        assert!(dir.sock().exists());

        let _server = start(&dir.sock());

        assert!(matches!(
            request(&dir.sock(), &Request::Fdb {}),
            Ok(Response::Fdb { .. })
        ));
    }

    #[test]
    fn test_control_live_socket_refuses_second_server() {
        let dir = TempDir::new("live");
        let _first = start(&dir.sock());

        let second = ControlServer::start(&dir.sock(), Arc::new(FakeHandler));

        assert!(matches!(second, Err(ControlError::InUse { .. })));
        assert!(request(&dir.sock(), &Request::Fdb {}).is_ok());
    }

    #[test]
    fn test_control_regular_file_is_not_replaced() {
        let dir = TempDir::new("file");
        fs::write(dir.sock(), "keep me").unwrap();

        let res = ControlServer::start(&dir.sock(), Arc::new(FakeHandler));

        assert!(matches!(res, Err(ControlError::NotASocket { .. })));
        assert_eq!(fs::read_to_string(dir.sock()).unwrap(), "keep me");
    }

    #[test]
    fn test_control_socket_mode_is_0600_and_no_temp_left() {
        let dir = TempDir::new("mode");
        let _server = start(&dir.sock());

        let mode = fs::metadata(dir.sock()).unwrap().permissions().mode();
        let entries: Vec<_> = fs::read_dir(&dir.0).unwrap().collect();

        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(entries.len(), 1, "only the socket should remain");
    }

    #[test]
    fn test_control_shutdown_removes_socket_and_client_reports_missing() {
        let dir = TempDir::new("shutdown");
        let mut server = start(&dir.sock());
        let idle = UnixStream::connect(dir.sock()).unwrap();

        let t = Instant::now();
        server.shutdown();
        let err = request(&dir.sock(), &Request::Ports {}).unwrap_err();

        assert!(
            t.elapsed() < Duration::from_secs(2),
            "shutdown waited for the idle client"
        );
        assert!(!dir.sock().exists());
        assert!(matches!(err, ControlError::NoSocket { .. }));
        assert!(err.to_string().contains("is the switch running?"));
        drop(idle);
    }

    #[test]
    fn test_control_client_rejects_garbage_answer() {
        let dir = TempDir::new("garbage");
        let listener = UnixListener::bind(dir.sock()).unwrap();
        let peer = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            s.write_all(b"hello there\n").unwrap();
        });

        let err = request(&dir.sock(), &Request::Ports {}).unwrap_err();

        peer.join().unwrap();
        assert!(matches!(err, ControlError::BadResponse { .. }), "{err:?}");
    }

    #[test]
    fn test_control_stuck_client_does_not_block_others() {
        let dir = TempDir::new("stuck");
        let _server = start(&dir.sock());
        let mut stuck = UnixStream::connect(dir.sock()).unwrap();
        stuck.write_all(br#"{"request":"#).unwrap();

        let resp = request(&dir.sock(), &Request::Fdb {});

        assert!(matches!(resp, Ok(Response::Fdb { .. })));
    }
}
