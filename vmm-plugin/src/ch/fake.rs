//! A fake cloud-hypervisor API server for tests: cloud-hypervisor needs KVM, which
//! test machines may lack.
//!
//! [`FakeChServer`] serves HTTP/1.1 on a unix socket, like `cloud-hypervisor
//! --api-socket`, following the OpenAPI description
//! (`vmm/src/api/openapi/cloud-hypervisor.yaml`) and the status mapping of
//! `vmm/src/api/http/mod.rs` for `vmm.ping`, `vmm.shutdown`, `vm.create`,
//! `vm.boot`, `vm.shutdown`, `vm.info`, `vm.pause`, `vm.resume`, `vm.add-net`,
//! `vm.add-device`, `vm.remove-device`, `vm.send-migration` and
//! `vm.receive-migration`: unknown routes `404`, wrong method `400`, invalid
//! bodies `400`, VM not created / unknown device `404`, duplicate id or path `409`,
//! other refusals (VM already created, not running) `500`; error bodies are JSON
//! arrays of messages. Like cloud-hypervisor, `vm.info` says `Created` after
//! `vm.shutdown` (the VM object is gone, its config stays), and the VMM exits
//! (the socket goes away) after `vmm.shutdown` and after a successful outgoing
//! migration. Like its single VMM thread, the fake handles one request at a time,
//! each to its end even if the client went away.
//!
//! Migrations go between two fakes (processes, or servers of one test) over the
//! URL's `unix:PATH` or `tcp:HOST:PORT`, as cloud-hypervisor's do, carrying the VM
//! config (no memory: the fake has none). `vm.receive-migration` binds the
//! address (a file in the way is an error; the socket file goes once the source
//! connected; event `migration-receive-ready`) and answers only once the VM came
//! in and runs (`migration-receive-started`, `migration-receive-finished`) or the
//! migration failed (`500`, `migration-receive-failed`); until then every other
//! request waits, as on cloud-hypervisor. `vm.send-migration` connects, sends the
//! config as one JSON line `{"config": ...}`, and answers once the destination
//! answered `ok` (events `migration-started`, `migration-finished`; the VMM
//! exits), or `500` with the reason (`Error connecting to UNIX socket: ...`;
//! event `migration-failed`, the VM keeps running here). Faults:
//! [`FakeChServer::set_migration_fails`] (the source), and
//! [`FakeChServer::set_receive_fault`] (the destination).
//!
//! It records every request (and can journal each one as a JSON line to a writer),
//! can fail or delay the next call of an endpoint, and writes event-monitor records
//! (pretty-printed JSON objects, like cloud-hypervisor's `--event-monitor`) to a
//! file when given one.
//!
//! The `fake-cloud-hypervisor` binary (`src/bin/fake-cloud-hypervisor.rs`) serves
//! it as a process in place of `cloud-hypervisor`, for tests that drive the VMM as
//! a separate process (the `accelnet` CLI).

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecordedRequest {
    /// `GET` or `PUT` (or whatever came).
    pub method: String,
    /// The endpoint without `/api/v1/`, e.g. `vm.create`.
    pub endpoint: String,
    /// The JSON body (`Value::Null` when empty, a JSON string when not JSON).
    pub body: Value,
}

/// How an incoming migration fails once the source connected
/// ([`FakeChServer::set_receive_fault`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveFault {
    /// The destination aborts it, as cloud-hypervisor does when a migration
    /// command fails: the source's `vm.send-migration` fails (its VM keeps
    /// running), `vm.receive-migration` answers 500 "Migration was aborted" (event
    /// `migration-receive-failed`), and the VMM stays up without a VM.
    Refuse,
    /// The destination VMM dies once it read the VM config: the connection drops,
    /// nothing answers, no event, the API socket goes away
    /// ([`FakeChServer::crashed`]; the binary exits 1).
    Crash,
    /// The destination VMM dies right after the migration completed: the source
    /// hears `ok` (its VMM exits), then the destination's API socket goes away
    /// (after event `migration-receive-finished`), `vm.receive-migration`
    /// unanswered.
    CrashAfter,
}

impl std::str::FromStr for ReceiveFault {
    type Err = String;

    /// `refuse`, `crash` or `crash-after`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "refuse" => Ok(ReceiveFault::Refuse),
            "crash" => Ok(ReceiveFault::Crash),
            "crash-after" => Ok(ReceiveFault::CrashAfter),
            other => Err(format!(
                "unknown receive fault {other:?}: want refuse, crash or crash-after"
            )),
        }
    }
}

/// Life cycle of the fake VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeVmPhase {
    /// No `vm.create` yet (or migrated away).
    NotCreated,
    /// Created (also after `vm.shutdown`, as `vm.info` reports it).
    Created,
    /// Booted.
    Running,
    /// Paused.
    Paused,
    /// Shut down with `vm.shutdown` (`vm.info` says `Created`).
    Shutdown,
}

#[derive(Debug)]
struct State {
    phase: FakeVmPhase,
    config: Option<Value>,
    requests: Vec<RecordedRequest>,
    failures: HashMap<String, VecDeque<(u16, String)>>,
    delays: HashMap<String, VecDeque<Duration>>,
    event_file: Option<PathBuf>,
    started: Instant,
    next_bdf: u8,
    /// `None`: removed devices go at once; `Some(d)`: after `d`; a very long `d`
    /// is a guest that never releases the device.
    removal_delay: Option<Duration>,
    migration_fails: bool,
    receive_fault: Option<ReceiveFault>,
    exited: bool,
    crashed: bool,
    journal: Option<Journal>,
}

/// Where every request goes as one JSON line ([`FakeChServer::set_request_journal`]).
struct Journal(Box<dyn Write + Send>);

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Journal")
    }
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    socket: PathBuf,
    /// `true` once the fake VMM exited.
    exit: watch::Sender<bool>,
    /// cloud-hypervisor's VMM thread: one request at a time, each to its end (a
    /// migration included), whether or not its client still waits.
    vmm: Arc<tokio::sync::Mutex<()>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The fake API server; stops serving when dropped.
#[derive(Debug)]
pub struct FakeChServer {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for FakeChServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.shared.socket);
    }
}

type Reply = (StatusCode, Option<Value>);

fn err(status: StatusCode, message: impl Into<String>) -> Reply {
    (status, Some(json!([message.into()])))
}

fn ok() -> Reply {
    (StatusCode::NO_CONTENT, None)
}

impl FakeChServer {
    /// Listens on `socket` (replacing a stale file) and serves until dropped.
    pub async fn start(socket: impl AsRef<Path>) -> std::io::Result<FakeChServer> {
        Self::start_as_vmm(socket, None, None).await
    }

    /// Like a `cloud-hypervisor` process starting: with `event_file`, writes the
    /// record `vmm/starting` to it and every event after; with `journal`, writes
    /// every request to it ([`set_request_journal`](Self::set_request_journal));
    /// both from before the first request is served.
    pub async fn start_as_vmm(
        socket: impl AsRef<Path>,
        event_file: Option<PathBuf>,
        journal: Option<Box<dyn Write + Send>>,
    ) -> std::io::Result<FakeChServer> {
        let socket = socket.as_ref().to_path_buf();
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                phase: FakeVmPhase::NotCreated,
                config: None,
                requests: Vec::new(),
                failures: HashMap::new(),
                delays: HashMap::new(),
                event_file,
                started: Instant::now(),
                next_bdf: 4,
                removal_delay: None,
                migration_fails: false,
                receive_fault: None,
                exited: false,
                crashed: false,
                journal: journal.map(Journal),
            }),
            socket,
            exit: watch::channel(false).0,
            vmm: Arc::new(tokio::sync::Mutex::new(())),
        });
        emit(&shared.lock(), "vmm", "starting", None);
        let accept_shared = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if accept_shared.lock().exited {
                    return;
                }
                let conn_shared = Arc::clone(&accept_shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = Arc::clone(&conn_shared);
                        async move { Ok::<_, std::convert::Infallible>(handle(s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FakeChServer { shared, task })
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// Writes event-monitor records to `path` from now on (appending).
    pub fn set_event_file(&self, path: impl Into<PathBuf>) {
        self.shared.lock().event_file = Some(path.into());
    }

    /// The next call of `endpoint` (e.g. `vm.add-device`) answers `status` with
    /// cloud-hypervisor's error body `[message]`.
    pub fn fail_next(&self, endpoint: &str, status: u16, message: &str) {
        self.shared
            .lock()
            .failures
            .entry(endpoint.to_owned())
            .or_default()
            .push_back((status, message.to_owned()));
    }

    /// The next call of `endpoint` waits `delay` before it is handled.
    pub fn delay_next(&self, endpoint: &str, delay: Duration) {
        self.shared
            .lock()
            .delays
            .entry(endpoint.to_owned())
            .or_default()
            .push_back(delay);
    }

    /// Devices asked out with `vm.remove-device` leave the config only after
    /// `delay` (the guest's eject); `None` (the default) at once.
    pub fn set_removal_delay(&self, delay: Option<Duration>) {
        self.shared.lock().removal_delay = delay;
    }

    /// Whether outgoing migrations fail (event `migration-failed`, the VM keeps
    /// running) instead of completing.
    pub fn set_migration_fails(&self, fails: bool) {
        self.shared.lock().migration_fails = fails;
    }

    /// How the next incoming migrations fail once the source connected; `None`
    /// (the default): they complete.
    pub fn set_receive_fault(&self, fault: Option<ReceiveFault>) {
        self.shared.lock().receive_fault = fault;
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// The endpoints called so far, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.endpoint).collect()
    }

    /// The bodies of the calls of `endpoint`, in order.
    pub fn bodies(&self, endpoint: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.endpoint == endpoint)
            .map(|r| r.body)
            .collect()
    }

    /// The VM's phase.
    pub fn phase(&self) -> FakeVmPhase {
        self.shared.lock().phase
    }

    /// The VM's config (after `vm.create`, with hot-plugs and removals).
    pub fn config(&self) -> Option<Value> {
        self.shared.lock().config.clone()
    }

    /// Whether the fake "VMM" exited (`vmm.shutdown`, migrated away).
    pub fn exited(&self) -> bool {
        self.shared.lock().exited
    }

    /// Whether the fake "VMM" crashed ([`ReceiveFault`]).
    pub fn crashed(&self) -> bool {
        self.shared.lock().crashed
    }

    /// Returns once the fake "VMM" exited ([`exited`](Self::exited)).
    pub async fn wait_exit(&self) {
        let mut rx = self.shared.exit.subscribe();
        // The sender lives in `self.shared`: `wait_for` cannot see it dropped.
        let _ = rx.wait_for(|exited| *exited).await;
    }

    /// Writes every request from now on to `sink`, as one JSON line
    /// ([`RecordedRequest`]) per request, in the order they arrive.
    pub fn set_request_journal(&self, sink: Box<dyn Write + Send>) {
        self.shared.lock().journal = Some(Journal(sink));
    }

    /// The VMM process is told to go (SIGTERM, SIGINT): a booted VM shuts down
    /// (event `vm/shutdown`), then the VMM (event `vmm/shutdown`), and it exits
    /// (the API socket goes away). Nothing happens if it already exited.
    pub fn terminate(&self) {
        let mut st = self.shared.lock();
        if st.exited {
            return;
        }
        if matches!(st.phase, FakeVmPhase::Running | FakeVmPhase::Paused) {
            st.phase = FakeVmPhase::Shutdown;
            emit(&st, "vm", "shutdown", None);
        }
        emit(&st, "vmm", "shutdown", None);
        exit_vmm(&self.shared, &mut st);
    }
}

fn emit(state: &State, source: &str, event: &str, properties: Option<Value>) {
    let Some(path) = &state.event_file else {
        return;
    };
    let elapsed = state.started.elapsed();
    let record = json!({
        "timestamp": {"secs": elapsed.as_secs(), "nanos": elapsed.subsec_nanos()},
        "source": source,
        "event": event,
        "properties": properties,
    });
    let text = serde_json::to_string_pretty(&record).unwrap_or_default();
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{text}");
    }
}

fn exit_vmm(shared: &Shared, state: &mut State) {
    state.exited = true;
    let _ = std::fs::remove_file(&shared.socket);
    shared.exit.send_replace(true);
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body_value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    let endpoint = path
        .strip_prefix(super::api::API_ROOT)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or(&path)
        .to_owned();
    let delay = {
        let mut st = shared.lock();
        let request = RecordedRequest {
            method: method.to_string(),
            endpoint: endpoint.clone(),
            body: body_value.clone(),
        };
        if let Some(Journal(sink)) = st.journal.as_mut() {
            if let Ok(line) = serde_json::to_string(&request) {
                let _ = writeln!(sink, "{line}");
                let _ = sink.flush();
            }
        }
        st.requests.push(request);
        st.delays.get_mut(&endpoint).and_then(VecDeque::pop_front)
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    // The request runs to its end in a task of its own, holding the "VMM
    // thread", even if its client goes away (a migration is not abandoned).
    let work = tokio::spawn(async move {
        let _vmm = Arc::clone(&shared.vmm).lock_owned().await;
        let step = {
            let mut st = shared.lock();
            let injected = st.failures.get_mut(&endpoint).and_then(VecDeque::pop_front);
            match injected {
                Some((code, message)) => Step::Reply(err(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    message,
                )),
                None => route(&shared, &mut st, &method, &endpoint, &body, &body_value),
            }
        };
        match step {
            Step::Reply(reply) => reply,
            Step::Send { to, config } => send_migration(&shared, &to, &config).await,
            Step::Receive { from } => receive_migration(&shared, &from).await,
        }
    });
    let (status, reply) = work.await.unwrap_or_else(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the fake's request task failed: {e}"),
        )
    });
    let bytes = reply
        .map(|v| Bytes::from(v.to_string()))
        .unwrap_or_default();
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        hyper::header::SERVER,
        hyper::header::HeaderValue::from_static("Cloud Hypervisor API"),
    );
    response
}

const GET_ENDPOINTS: &[&str] = &["vmm.ping", "vm.info"];
const PUT_ENDPOINTS: &[&str] = &[
    "vmm.shutdown",
    "vm.create",
    "vm.boot",
    "vm.shutdown",
    "vm.pause",
    "vm.resume",
    "vm.add-net",
    "vm.add-device",
    "vm.remove-device",
    "vm.send-migration",
    "vm.receive-migration",
];

/// What a request leads to: an answer now, or a migration to run first.
enum Step {
    Reply(Reply),
    /// `vm.send-migration`: send `config` to `to`.
    Send {
        to: Endpoint,
        config: Value,
    },
    /// `vm.receive-migration`: take the VM in on `from`.
    Receive {
        from: Endpoint,
    },
}

fn route(
    shared: &Arc<Shared>,
    st: &mut State,
    method: &Method,
    endpoint: &str,
    raw: &Bytes,
    body: &Value,
) -> Step {
    let is_get = GET_ENDPOINTS.contains(&endpoint);
    let is_put = PUT_ENDPOINTS.contains(&endpoint);
    if !is_get && !is_put {
        return Step::Reply(err(StatusCode::NOT_FOUND, "Not Found"));
    }
    if (is_get && method != Method::GET) || (is_put && method != Method::PUT) {
        return Step::Reply((StatusCode::BAD_REQUEST, None));
    }
    // Endpoints with a required request body: missing → 400, not JSON → 400.
    let needs_body = matches!(
        endpoint,
        "vm.create"
            | "vm.add-net"
            | "vm.add-device"
            | "vm.remove-device"
            | "vm.send-migration"
            | "vm.receive-migration"
    );
    if needs_body {
        if raw.is_empty() {
            return Step::Reply(err(StatusCode::BAD_REQUEST, "Bad Request"));
        }
        if !body.is_object() {
            return Step::Reply(err(
                StatusCode::BAD_REQUEST,
                "Error deserializing JSON: expected an object",
            ));
        }
    }
    match endpoint {
        "vm.send-migration" => send_step(st, body),
        "vm.receive-migration" => receive_step(st, body),
        _ => Step::Reply(vm_route(shared, st, endpoint, body)),
    }
}

/// The endpoints answered at once.
fn vm_route(shared: &Arc<Shared>, st: &mut State, endpoint: &str, body: &Value) -> Reply {
    let created = st.config.is_some();
    match endpoint {
        "vmm.ping" => (
            StatusCode::OK,
            Some(json!({
                "build_version": "fake",
                "version": "v48.0-fake",
                "pid": std::process::id(),
                "features": ["kvm"],
            })),
        ),
        "vmm.shutdown" => {
            emit(st, "vmm", "shutdown", None);
            exit_vmm(shared, st);
            ok()
        }
        "vm.info" => match &st.config {
            None => err(
                StatusCode::NOT_FOUND,
                "Error getting VM info: VM is not created",
            ),
            Some(config) => {
                let state = match st.phase {
                    FakeVmPhase::Running => "Running",
                    FakeVmPhase::Paused => "Paused",
                    _ => "Created",
                };
                let size = config.pointer("/memory/size").cloned().unwrap_or(json!(0));
                (
                    StatusCode::OK,
                    Some(json!({
                        "config": config,
                        "state": state,
                        "memory_actual_size": size,
                        "device_tree": {},
                    })),
                )
            }
        },
        "vm.create" => {
            if created {
                return err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Failed to create the VM: The VM is already created",
                );
            }
            if let Err(message) = validate_config(body) {
                return err(StatusCode::BAD_REQUEST, message);
            }
            st.config = Some(body.clone());
            st.phase = FakeVmPhase::Created;
            ok()
        }
        "vm.boot" => match st.phase {
            FakeVmPhase::NotCreated => err(
                StatusCode::NOT_FOUND,
                "Error booting the VM: Cannot boot a VM without its config",
            ),
            FakeVmPhase::Running | FakeVmPhase::Paused => err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error booting the VM: The VM is already created",
            ),
            FakeVmPhase::Created | FakeVmPhase::Shutdown => {
                emit(st, "vm", "booting", None);
                st.phase = FakeVmPhase::Running;
                emit(st, "vm", "booted", None);
                ok()
            }
        },
        "vm.shutdown" => match st.phase {
            FakeVmPhase::Running | FakeVmPhase::Paused => {
                st.phase = FakeVmPhase::Shutdown;
                emit(st, "vm", "shutdown", None);
                ok()
            }
            _ => err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error shutting down the VM: The VM is not running",
            ),
        },
        "vm.pause" | "vm.resume" => {
            let (from, to, ing, ed) = if endpoint == "vm.pause" {
                (
                    FakeVmPhase::Running,
                    FakeVmPhase::Paused,
                    "pausing",
                    "paused",
                )
            } else {
                (
                    FakeVmPhase::Paused,
                    FakeVmPhase::Running,
                    "resuming",
                    "resumed",
                )
            };
            if !created {
                return err(StatusCode::NOT_FOUND, "The VM is not created");
            }
            if st.phase != from {
                return err(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("Error {ing} the VM: invalid state transition"),
                );
            }
            emit(st, "vm", ing, None);
            st.phase = to;
            emit(st, "vm", ed, None);
            ok()
        }
        "vm.add-net" | "vm.add-device" => {
            if !created {
                return err(StatusCode::NOT_FOUND, "The VM is not created");
            }
            let (list, prefix) = if endpoint == "vm.add-net" {
                ("net", "_net")
            } else {
                ("devices", "_vfio")
            };
            let shared_mem = st
                .config
                .as_ref()
                .and_then(|c| c.pointer("/memory/shared"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let check = if endpoint == "vm.add-net" {
                validate_net(body, shared_mem)
            } else {
                validate_device(body)
            };
            if let Err(message) = check {
                return err(StatusCode::BAD_REQUEST, message);
            }
            let mut device = body.clone();
            let id = match device.get("id").and_then(Value::as_str) {
                Some(id) => id.to_owned(),
                None => {
                    let n = st
                        .config
                        .as_ref()
                        .and_then(|c| c.get(list))
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    let id = format!("{prefix}{n}");
                    device["id"] = json!(id);
                    id
                }
            };
            if let Some(message) = duplicate(st.config.as_ref(), &device) {
                return err(StatusCode::CONFLICT, message);
            }
            if let Some(config) = st.config.as_mut() {
                match config.get_mut(list).and_then(Value::as_array_mut) {
                    Some(items) => items.push(device),
                    None => config[list] = json!([device]),
                }
            }
            if matches!(st.phase, FakeVmPhase::Running | FakeVmPhase::Paused) {
                let bdf = format!("0000:00:{:02x}.0", st.next_bdf);
                st.next_bdf = st.next_bdf.wrapping_add(1);
                (StatusCode::OK, Some(json!({"id": id, "bdf": bdf})))
            } else {
                ok()
            }
        }
        "vm.remove-device" => {
            if !created {
                return err(StatusCode::NOT_FOUND, "The VM is not created");
            }
            let Some(id) = body.get("id").and_then(Value::as_str) else {
                return err(StatusCode::BAD_REQUEST, "Bad Request: missing id");
            };
            if !all_ids(st.config.as_ref()).iter().any(|i| i == id) {
                return err(
                    StatusCode::NOT_FOUND,
                    format!("Error removing device from the VM: Unknown device id: {id}"),
                );
            }
            let booted = matches!(st.phase, FakeVmPhase::Running | FakeVmPhase::Paused);
            match st.removal_delay {
                Some(delay) if booted => schedule_removal(shared, id.to_owned(), delay),
                _ => {
                    remove_id(st, id);
                    if booted {
                        emit(
                            st,
                            "vm",
                            "device-removed",
                            Some(json!({"id": id, "bdf": "0000:00:04.0"})),
                        );
                    }
                }
            }
            ok()
        }
        _ => err(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// Where a migration goes or comes from: cloud-hypervisor's `unix:PATH` or
/// `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint, String> {
        if let Some(address) = url.strip_prefix("tcp:") {
            return Ok(Endpoint::Tcp(address.to_owned()));
        }
        match url.strip_prefix("unix:") {
            Some(path) if !path.is_empty() => Ok(Endpoint::Unix(PathBuf::from(path))),
            _ => Err(format!("Could not extract path from URL: {url}")),
        }
    }
}

/// A migration connection, either kind.
trait Wire: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Wire for T {}

/// The most a migrated config may take (one JSON line).
const MAX_MIGRATED: u64 = 16 << 20;

/// What the source sends: one JSON line `{"config": <VmConfig>}`; the destination
/// answers one line, `ok` once the VM runs there, `error` when it aborts.
fn migration_line(config: &Value) -> Vec<u8> {
    let mut line = json!({ "config": config }).to_string().into_bytes();
    line.push(b'\n');
    line
}

fn send_step(st: &mut State, body: &Value) -> Step {
    let Some(url) = body.get("destination_url").and_then(Value::as_str) else {
        return Step::Reply(err(
            StatusCode::BAD_REQUEST,
            "Bad Request: missing destination_url",
        ));
    };
    let Some(config) = st.config.clone() else {
        return Step::Reply(err(StatusCode::NOT_FOUND, "The VM is not created"));
    };
    if st.phase != FakeVmPhase::Running {
        return Step::Reply(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error sending migration: VM is not running",
        ));
    }
    let local = body.get("local").and_then(Value::as_bool).unwrap_or(false);
    if local && !url.starts_with("unix:") {
        return Step::Reply(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error sending migration: --local option is only supported with UNIX sockets",
        ));
    }
    let to = match Endpoint::parse(url) {
        Ok(to) => to,
        Err(e) => {
            return Step::Reply(err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Error sending migration: {e}"),
            ))
        }
    };
    emit(st, "vm", "migration-started", None);
    if st.migration_fails {
        emit(st, "vm", "migration-failed", None);
        return Step::Reply(ok());
    }
    Step::Send { to, config }
}

/// Sends the VM to `to`; the VMM exits once the destination runs it, the VM keeps
/// running here when the migration fails.
async fn send_migration(shared: &Arc<Shared>, to: &Endpoint, config: &Value) -> Reply {
    let sent = transfer_out(to, config).await;
    let mut st = shared.lock();
    match sent {
        Ok(()) => {
            emit(&st, "vm", "migration-finished", None);
            st.config = None;
            st.phase = FakeVmPhase::NotCreated;
            exit_vmm(shared, &mut st);
            ok()
        }
        Err(e) => {
            emit(&st, "vm", "migration-failed", None);
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Error sending migration: {e}"),
            )
        }
    }
}

async fn transfer_out(to: &Endpoint, config: &Value) -> Result<(), String> {
    let mut wire: Box<dyn Wire> = match to {
        Endpoint::Unix(path) => Box::new(
            UnixStream::connect(path)
                .await
                .map_err(|e| format!("Error connecting to UNIX socket: {e}"))?,
        ),
        Endpoint::Tcp(address) => Box::new(
            TcpStream::connect(address.as_str())
                .await
                .map_err(|e| format!("Error connecting to TCP socket: {e}"))?,
        ),
    };
    wire.write_all(&migration_line(config))
        .await
        .map_err(|e| format!("Error sending the VM config: {e}"))?;
    let mut answer = String::new();
    BufReader::new(wire.take(64))
        .read_line(&mut answer)
        .await
        .map_err(|e| format!("Error completing migration: {e}"))?;
    match answer.trim() {
        "ok" => Ok(()),
        "" => Err("Error completing migration: the destination closed the connection".into()),
        other => Err(format!(
            "Error completing migration: the destination answered {other:?}"
        )),
    }
}

fn receive_step(st: &mut State, body: &Value) -> Step {
    let Some(url) = body.get("receiver_url").and_then(Value::as_str) else {
        return Step::Reply(err(
            StatusCode::BAD_REQUEST,
            "Bad Request: missing receiver_url",
        ));
    };
    if st.config.is_some() {
        return Step::Reply(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error receiving migration: Can't receive a migration when a VM is already created",
        ));
    }
    match Endpoint::parse(url) {
        Ok(from) => Step::Receive { from },
        Err(e) => Step::Reply(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Error starting migration receiver: {e}"),
        )),
    }
}

/// Listens on `from` (event `migration-receive-ready`) and answers only once a
/// migration came in and the VM runs, or it failed.
async fn receive_migration(shared: &Arc<Shared>, from: &Endpoint) -> Reply {
    let failed = |message: String| err(StatusCode::INTERNAL_SERVER_ERROR, message);
    let accepted: std::io::Result<Box<dyn Wire>> = match from {
        Endpoint::Unix(path) => {
            // Like cloud-hypervisor: a file in the way is an error, the socket
            // goes once the source connected.
            let listener = match UnixListener::bind(path) {
                Ok(l) => l,
                Err(e) => {
                    return failed(format!(
                        "Error starting migration receiver: Error binding to UNIX socket: {e}"
                    ))
                }
            };
            emit(&shared.lock(), "vm", "migration-receive-ready", None);
            let conn = listener.accept().await;
            let _ = std::fs::remove_file(path);
            conn.map(|(s, _)| Box::new(s) as Box<dyn Wire>)
        }
        Endpoint::Tcp(address) => {
            let listener = match TcpListener::bind(address.as_str()).await {
                Ok(l) => l,
                Err(e) => {
                    return failed(format!(
                        "Error starting migration receiver: Error binding to TCP socket: {e}"
                    ))
                }
            };
            emit(&shared.lock(), "vm", "migration-receive-ready", None);
            listener
                .accept()
                .await
                .map(|(s, _)| Box::new(s) as Box<dyn Wire>)
        }
    };
    let wire = match accepted {
        Ok(w) => w,
        Err(e) => return failed(format!("Error receiving migration: accept: {e}")),
    };
    let fault = {
        let st = shared.lock();
        emit(&st, "vm", "migration-receive-started", None);
        st.receive_fault
    };
    let mut reader = BufReader::new(wire);
    let mut line = String::new();
    let read = (&mut reader).take(MAX_MIGRATED).read_line(&mut line).await;
    let config = match read {
        Ok(0) => Err("the source closed the connection".to_owned()),
        Ok(_) => serde_json::from_str::<Value>(&line)
            .map_err(|e| format!("not a migration: {e}"))
            .and_then(|v| {
                v.get("config")
                    .cloned()
                    .ok_or_else(|| "no config".to_owned())
            })
            .and_then(|c| validate_config(&c).map(|()| c)),
        Err(e) => Err(e.to_string()),
    };
    let config = match (config, fault) {
        (_, Some(ReceiveFault::Crash)) => {
            // Dies with the config read, the source waiting for the answer.
            drop(reader);
            crash(shared);
            // A dead VMM answers nothing.
            return std::future::pending().await;
        }
        (Ok(_), Some(ReceiveFault::Refuse)) => Err("refused (fault injected)".to_owned()),
        (c, _) => c,
    };
    match config {
        Ok(config) => {
            {
                let mut st = shared.lock();
                st.config = Some(config);
                st.phase = FakeVmPhase::Running;
            }
            // The source hears `ok` once the VM runs here.
            let _ = reader.write_all(b"ok\n").await;
            emit(&shared.lock(), "vm", "migration-receive-finished", None);
            if fault == Some(ReceiveFault::CrashAfter) {
                drop(reader);
                crash(shared);
                return std::future::pending().await;
            }
            ok()
        }
        Err(why) => {
            let _ = reader.write_all(b"error\n").await;
            emit(&shared.lock(), "vm", "migration-receive-failed", None);
            failed(format!(
                "Error receiving migration: Migration was aborted: {why}"
            ))
        }
    }
}

/// The VMM dies: it exits without a word ([`ReceiveFault::Crash`]).
fn crash(shared: &Shared) {
    let mut st = shared.lock();
    st.crashed = true;
    exit_vmm(shared, &mut st);
}

fn schedule_removal(shared: &Arc<Shared>, id: String, delay: Duration) {
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut st = shared.lock();
        remove_id(&mut st, &id);
        emit(
            &st,
            "vm",
            "device-removed",
            Some(json!({"id": id, "bdf": "0000:00:04.0"})),
        );
    });
}

fn remove_id(st: &mut State, id: &str) {
    if let Some(config) = st.config.as_mut() {
        for list in ["devices", "net", "disks"] {
            if let Some(items) = config.get_mut(list).and_then(Value::as_array_mut) {
                items.retain(|d| d.get("id").and_then(Value::as_str) != Some(id));
            }
        }
    }
}

fn all_ids(config: Option<&Value>) -> Vec<String> {
    let mut ids = Vec::new();
    if let Some(config) = config {
        for list in ["devices", "net", "disks"] {
            if let Some(items) = config.get(list).and_then(Value::as_array) {
                ids.extend(
                    items
                        .iter()
                        .filter_map(|d| d.get("id").and_then(Value::as_str).map(str::to_owned)),
                );
            }
        }
    }
    ids
}

fn duplicate(config: Option<&Value>, device: &Value) -> Option<String> {
    let id = device.get("id").and_then(Value::as_str)?;
    if all_ids(config).iter().any(|i| i == id) {
        return Some(format!(
            "Error adding device to the VM: Identifier {id} is not unique"
        ));
    }
    let path = device.get("path").and_then(Value::as_str)?;
    let taken = config
        .and_then(|c| c.get("devices"))
        .and_then(Value::as_array)
        .is_some_and(|d| {
            d.iter()
                .any(|d| d.get("path").and_then(Value::as_str) == Some(path))
        });
    taken.then(|| format!("Error adding device to the VM: Duplicate device path: {path}"))
}

fn validate_net(net: &Value, shared_memory: bool) -> Result<(), String> {
    if net
        .get("vhost_user")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        if net.get("vhost_socket").and_then(Value::as_str).is_none() {
            return Err("Invalid network config: vhost-user requires a socket path".into());
        }
        if !shared_memory {
            return Err(
                "Invalid VM config: Using vhost-user requires using shared memory or huge pages"
                    .into(),
            );
        }
        match net.get("vhost_mode") {
            None => {}
            Some(Value::String(m)) if m == "Client" || m == "Server" => {}
            Some(other) => {
                return Err(format!(
                "Error deserializing JSON: unknown variant {other}, expected `Client` or `Server`"
            ))
            }
        }
    }
    if let Some(q) = net.get("num_queues") {
        let n = q.as_u64().ok_or("Error deserializing JSON: num_queues")?;
        if n < 2 || n % 2 != 0 {
            return Err(format!(
                "Invalid network config: number of queues {n} must be a positive even number"
            ));
        }
    }
    if let Some(mac) = net.get("mac") {
        let ok = mac.as_str().is_some_and(super::cmdline::valid_mac);
        if !ok {
            return Err(format!("Error deserializing JSON: invalid MAC {mac}"));
        }
    }
    Ok(())
}

fn validate_device(device: &Value) -> Result<(), String> {
    match device.get("path").and_then(Value::as_str) {
        Some(p) if !p.is_empty() => Ok(()),
        _ => Err("Invalid device config: a VFIO device needs a path".into()),
    }
}

fn validate_config(config: &Value) -> Result<(), String> {
    let Some(payload) = config.get("payload").filter(|p| p.is_object()) else {
        return Err("Error deserializing JSON: missing field `payload`".into());
    };
    if payload.get("kernel").is_none()
        && payload.get("firmware").is_none()
        && payload.get("igvm").is_none()
    {
        return Err("Invalid VM config: No kernel or firmware specified".into());
    }
    if let Some(cpus) = config.get("cpus") {
        let boot = cpus.get("boot_vcpus").and_then(Value::as_u64);
        let max = cpus.get("max_vcpus").and_then(Value::as_u64);
        match (boot, max) {
            (Some(b), Some(m)) if b >= 1 && b <= m => {}
            (Some(_), Some(_)) => {
                return Err("Invalid VM config: max CPUs lower than boot CPUs".into())
            }
            _ => {
                return Err(
                    "Error deserializing JSON: missing field `boot_vcpus` or `max_vcpus`".into(),
                )
            }
        }
    }
    let shared = match config.get("memory") {
        Some(m) => {
            if m.get("size").and_then(Value::as_u64).is_none() {
                return Err("Error deserializing JSON: missing field `size`".into());
            }
            m.get("shared").and_then(Value::as_bool).unwrap_or(false)
        }
        None => false,
    };
    let mut ids: Vec<&str> = Vec::new();
    for net in config
        .get("net")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        validate_net(net, shared)?;
        ids.extend(net.get("id").and_then(Value::as_str));
    }
    for dev in config
        .get("devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        validate_device(dev)?;
        ids.extend(dev.get("id").and_then(Value::as_str));
    }
    for disk in config
        .get("disks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if disk.get("path").is_none() && disk.get("vhost_socket").is_none() {
            return Err("Invalid disk config: a disk needs a path or a vhost-user socket".into());
        }
        ids.extend(disk.get("id").and_then(Value::as_str));
    }
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!(
            "Invalid VM config: Identifier {} is not unique",
            w[0]
        ));
    }
    Ok(())
}
