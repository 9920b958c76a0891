//! An async QMP client over a unix socket.
//!
//! A reader task owns the read half: it matches replies to commands by `id`, turns
//! events into [`VmEvent`]s (with their QMP timestamps, see [`TimedEvent`]) for any
//! number of subscribers, and, when the socket closes (QEMU exited), fails every
//! pending command at once with [`VmmError::Exited`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

use crate::{VmEvent, VmmError, VmmKind};

/// Default time a command may take before [`VmmError::Timeout`].
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// The least time given to the greeting once connected.
const MIN_GREETING_TIMEOUT: Duration = Duration::from_secs(1);
/// Capacity of the event channels.
const EVENT_CAPACITY: usize = 256;

/// A QMP event with its name, raw data and QEMU's timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedEvent {
    /// The mapped event.
    pub event: VmEvent,
    /// QMP event name (`DEVICE_DELETED`...).
    pub name: String,
    /// The event's `data` (`null` when absent).
    pub data: Value,
    /// When QEMU emitted it (its `timestamp`), if given.
    pub timestamp: Option<SystemTime>,
}

/// Maps a QMP event to a [`VmEvent`].
pub fn map_event(name: &str, data: &Value) -> VmEvent {
    let s = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
    match name {
        "FAILOVER_NEGOTIATED" => match s("device-id") {
            Some(device) => VmEvent::FailoverNegotiated { device },
            None => other(name, data),
        },
        "DEVICE_DELETED" => match s("device").or_else(|| s("path")) {
            Some(device) => VmEvent::DeviceDeleted { device },
            None => other(name, data),
        },
        "UNPLUG_PRIMARY" => match s("device-id") {
            Some(device) => VmEvent::UnplugPrimary { device },
            None => other(name, data),
        },
        "MIGRATION" => match s("status") {
            Some(status) => VmEvent::Migration { status },
            None => other(name, data),
        },
        "NIC_RX_FILTER_CHANGED" => match s("name").or_else(|| s("path")) {
            Some(device) => VmEvent::NicRxFilterChanged { device },
            None => other(name, data),
        },
        "STOP" => VmEvent::RunState { running: false },
        "RESUME" => VmEvent::RunState { running: true },
        "SHUTDOWN" => VmEvent::Shutdown {
            reason: s("reason").unwrap_or_else(|| "shutdown".into()),
        },
        _ => other(name, data),
    }
}

fn other(name: &str, data: &Value) -> VmEvent {
    VmEvent::Other {
        name: name.to_string(),
        data: data.to_string(),
    }
}

fn timestamp(v: &Value) -> Option<SystemTime> {
    let ts = v.get("timestamp")?;
    let secs = ts.get("seconds")?.as_u64()?;
    let micros = ts.get("microseconds")?.as_u64()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs) + Duration::from_micros(micros))
}

type Reply = Result<Value, (String, String)>;

#[derive(Debug, Default)]
struct Pending {
    waiters: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set when the connection is gone: why.
    closed: Option<String>,
}

#[derive(Debug)]
struct Shared {
    vm: String,
    path: PathBuf,
    pending: Mutex<Pending>,
    garbage: AtomicU64,
    events: broadcast::Sender<VmEvent>,
    timed: broadcast::Sender<TimedEvent>,
}

impl Shared {
    fn exited(&self, message: impl Into<String>) -> VmmError {
        VmmError::Exited {
            vm: self.vm.clone(),
            vmm: VmmKind::Qemu,
            message: message.into(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding this lock leaves consistent data (map insert/remove).
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn close(&self, why: String) {
        let waiters = {
            let mut p = self.lock();
            if p.closed.is_none() {
                p.closed = Some(why.clone());
            }
            std::mem::take(&mut p.waiters)
        };
        // Dropping the senders wakes every waiter with "closed".
        drop(waiters);
        let _ = self.events.send(VmEvent::Shutdown {
            reason: why.clone(),
        });
        let _ = self.timed.send(TimedEvent {
            event: VmEvent::Shutdown { reason: why },
            name: "QMP_CLOSED".into(),
            data: Value::Null,
            timestamp: Some(SystemTime::now()),
        });
    }
}

/// A QMP connection with capabilities negotiated.
#[derive(Debug)]
pub struct QmpClient {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    greeting: Value,
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl QmpClient {
    /// Connects to `path`, retrying until `timeout` (the socket may not exist yet),
    /// reads the greeting and negotiates capabilities. Events are sent to `events`
    /// (and to [`QmpClient::timed_events`] subscribers).
    pub async fn connect(
        vm: &str,
        path: &Path,
        timeout: Duration,
        events: broadcast::Sender<VmEvent>,
    ) -> Result<QmpClient, VmmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let greeting = deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_GREETING_TIMEOUT);
            match Self::connect_once(vm, path, greeting, events.clone()).await {
                Ok(c) => return Ok(c),
                Err(ConnectError::NotYet(e)) if Instant::now() < deadline => {
                    log::trace!("QMP {}: {e}; retrying", path.display());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(ConnectError::NotYet(e)) => {
                    return Err(protocol(
                        vm,
                        path,
                        format!("cannot connect within {:.1} s: {e}", timeout.as_secs_f64()),
                    ))
                }
                Err(ConnectError::NoGreeting(after)) => {
                    return Err(protocol(
                        vm,
                        path,
                        format!(
                            "no QMP greeting within {:.1} s (not a QMP socket, or QEMU hangs)",
                            after.as_secs_f64()
                        ),
                    ))
                }
                Err(ConnectError::Fatal(e)) => return Err(e),
            }
        }
    }

    /// One connection attempt. `NotYet` when nothing listens (yet).
    pub(crate) async fn connect_once(
        vm: &str,
        path: &Path,
        greeting_timeout: Duration,
        events: broadcast::Sender<VmEvent>,
    ) -> Result<QmpClient, ConnectError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(ConnectError::NotYet)?;
        let (read, write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let (timed, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Arc::new(Shared {
            vm: vm.to_string(),
            path: path.to_path_buf(),
            pending: Mutex::new(Pending::default()),
            garbage: AtomicU64::new(0),
            events,
            timed,
        });
        let greeting =
            match tokio::time::timeout(greeting_timeout, read_greeting(&mut reader, &shared)).await
            {
                Err(_) => return Err(ConnectError::NoGreeting(greeting_timeout)),
                Ok(Err(GreetingError::Io(e))) => return Err(ConnectError::NotYet(e)),
                Ok(Err(GreetingError::Closed)) => {
                    // QEMU accepted and closed at once: it is exiting or still setting up.
                    return Err(ConnectError::NotYet(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "closed before the QMP greeting",
                    )));
                }
                Ok(Err(GreetingError::NotQmp(line))) => {
                    let shown: String = line.chars().take(80).collect();
                    return Err(ConnectError::Fatal(protocol(
                        vm,
                        path,
                        format!("not a QMP socket (greeting {shown:?})"),
                    )));
                }
                Ok(Ok(g)) => g,
            };
        let task = tokio::spawn(read_loop(reader, shared.clone()));
        let client = QmpClient {
            shared,
            writer: tokio::sync::Mutex::new(write),
            next_id: AtomicU64::new(1),
            reader: task,
            greeting,
        };
        client
            .execute("qmp_capabilities", None)
            .await
            .map_err(ConnectError::Fatal)?;
        Ok(client)
    }

    /// The greeting QEMU sent (`{"QMP": {"version": ...}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Lines that were not valid QMP messages, so far.
    pub fn garbage_lines(&self) -> u64 {
        self.shared.garbage.load(Ordering::Relaxed)
    }

    /// Whether the connection is gone (QEMU exited or closed it).
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// Subscribes to events, with QMP timestamps, from now on.
    pub fn timed_events(&self) -> broadcast::Receiver<TimedEvent> {
        self.shared.timed.subscribe()
    }

    /// Subscribes to events from now on.
    pub fn events(&self) -> broadcast::Receiver<VmEvent> {
        self.shared.events.subscribe()
    }

    /// Runs `command` with optional `arguments` within [`DEFAULT_COMMAND_TIMEOUT`].
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, VmmError> {
        self.execute_timeout(command, arguments, DEFAULT_COMMAND_TIMEOUT)
            .await
    }

    /// Runs `command` and returns its `return` value. A QMP error becomes
    /// [`VmmError::Command`] (with QEMU's `desc`); the connection closing becomes
    /// [`VmmError::Exited`] at once; no answer within `timeout` is
    /// [`VmmError::Timeout`].
    pub async fn execute_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, VmmError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.shared.lock();
            if let Some(why) = &p.closed {
                return Err(self.shared.exited(format!("{command}: {why}")));
            }
            p.waiters.insert(id, tx);
        }
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut text = msg.to_string();
        text.push('\n');
        log::debug!("QMP {} -> {text}", self.shared.vm);
        let write = async {
            let mut w = self.writer.lock().await;
            w.write_all(text.as_bytes()).await?;
            w.flush().await
        };
        if let Err(e) = write.await {
            self.shared.lock().waiters.remove(&id);
            return Err(self
                .shared
                .exited(format!("{command}: writing to QMP failed: {e}")));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((class, desc)))) => Err(VmmError::Command {
                vm: self.shared.vm.clone(),
                vmm: VmmKind::Qemu,
                command: command.to_string(),
                message: if desc.is_empty() { class } else { desc },
            }),
            Ok(Err(_closed)) => {
                let why = self
                    .shared
                    .lock()
                    .closed
                    .clone()
                    .unwrap_or_else(|| "QMP connection closed".into());
                Err(self.shared.exited(format!("{command}: {why}")))
            }
            Err(_) => {
                self.shared.lock().waiters.remove(&id);
                Err(VmmError::Timeout {
                    vm: self.shared.vm.clone(),
                    what: format!("QMP {command}"),
                    after: timeout,
                })
            }
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Nothing (yet) listens: retry.
    NotYet(std::io::Error),
    /// Connected, but no greeting came within this time (QEMU still initializing, e.g.
    /// waiting for its vhost-user backend, or not QMP at all).
    NoGreeting(Duration),
    /// Something answered wrongly: give up.
    Fatal(VmmError),
}

fn protocol(vm: &str, path: &Path, message: String) -> VmmError {
    VmmError::Protocol {
        vm: vm.to_string(),
        vmm: VmmKind::Qemu,
        path: path.to_path_buf(),
        message,
    }
}

/// Why no greeting came.
enum GreetingError {
    Io(std::io::Error),
    Closed,
    NotQmp(String),
}

/// Reads up to QEMU's greeting. Events before it are handled as any event:
/// QEMU 10 has been seen to write one (FAILOVER_NEGOTIATED, as an incoming
/// migration completed) to a fresh connection ahead of its greeting.
async fn read_greeting(
    reader: &mut BufReader<OwnedReadHalf>,
    shared: &Shared,
) -> Result<Value, GreetingError> {
    let mut line = String::new();
    loop {
        line.clear();
        if reader
            .read_line(&mut line)
            .await
            .map_err(GreetingError::Io)?
            == 0
        {
            return Err(GreetingError::Closed);
        }
        match serde_json::from_str::<Value>(line.trim()) {
            Ok(v) if v.get("QMP").is_some() => return Ok(v),
            Ok(v) if v.get("event").is_some_and(Value::is_string) => {
                log::debug!("QMP {}: an event before the greeting", shared.vm);
                handle_line(shared, line.trim());
            }
            _ => return Err(GreetingError::NotQmp(line.trim().to_string())),
        }
    }
}

async fn read_loop(mut reader: BufReader<OwnedReadHalf>, shared: Arc<Shared>) {
    let mut line = String::new();
    let why = loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) => break "QEMU closed the QMP connection (it exited)".to_string(),
            Ok(_) => handle_line(&shared, line.trim()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                // Not UTF-8: skip the line.
                shared.garbage.fetch_add(1, Ordering::Relaxed);
                log::warn!("QMP {}: non-UTF-8 line skipped", shared.vm);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                break "QEMU reset the QMP connection (it died)".to_string()
            }
            Err(e) => break format!("QMP read failed: {e}"),
        }
    };
    log::debug!("QMP {}: {why}", shared.vm);
    shared.close(why);
}

fn handle_line(shared: &Shared, line: &str) {
    if line.is_empty() {
        return;
    }
    log::trace!("QMP {} <- {line}", shared.vm);
    let v: Value = match serde_json::from_str(line) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            shared.garbage.fetch_add(1, Ordering::Relaxed);
            let shown: String = line.chars().take(120).collect();
            log::warn!(
                "QMP {}: ignoring a line that is not QMP: {shown:?}",
                shared.vm
            );
            return;
        }
    };
    if let Some(name) = v.get("event").and_then(Value::as_str) {
        let data = v.get("data").cloned().unwrap_or(Value::Null);
        let event = map_event(name, &data);
        log::debug!("QMP {} event {name} {data}", shared.vm);
        let _ = shared.events.send(event.clone());
        let _ = shared.timed.send(TimedEvent {
            event,
            name: name.to_string(),
            data,
            timestamp: timestamp(&v),
        });
        return;
    }
    let reply: Reply = if let Some(r) = v.get("return") {
        Ok(r.clone())
    } else if let Some(e) = v.get("error") {
        let s = |k: &str| {
            e.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Err((s("class"), s("desc")))
    } else {
        shared.garbage.fetch_add(1, Ordering::Relaxed);
        log::warn!("QMP {}: ignoring an unknown message: {line}", shared.vm);
        return;
    };
    let Some(id) = v.get("id").and_then(Value::as_u64) else {
        shared.garbage.fetch_add(1, Ordering::Relaxed);
        log::warn!("QMP {}: reply without our id: {line}", shared.vm);
        return;
    };
    let waiter = shared.lock().waiters.remove(&id);
    match waiter {
        Some(tx) => {
            let _ = tx.send(reply);
        }
        None => log::debug!("QMP {}: late reply to command {id} dropped", shared.vm),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    #[test]
    fn event_mapping() {
        assert_eq!(
            map_event("FAILOVER_NEGOTIATED", &json!({"device-id": "standby0"})),
            VmEvent::FailoverNegotiated {
                device: "standby0".into()
            }
        );
        assert_eq!(
            map_event(
                "DEVICE_DELETED",
                &json!({"device": "primary0", "path": "/machine/peripheral/primary0"})
            ),
            VmEvent::DeviceDeleted {
                device: "primary0".into()
            }
        );
        assert_eq!(
            map_event("DEVICE_DELETED", &json!({"path": "/machine/x"})),
            VmEvent::DeviceDeleted {
                device: "/machine/x".into()
            }
        );
        assert_eq!(
            map_event("UNPLUG_PRIMARY", &json!({"device-id": "primary0"})),
            VmEvent::UnplugPrimary {
                device: "primary0".into()
            }
        );
        assert_eq!(
            map_event("MIGRATION", &json!({"status": "wait-unplug"})),
            VmEvent::Migration {
                status: "wait-unplug".into()
            }
        );
        assert_eq!(
            map_event("NIC_RX_FILTER_CHANGED", &json!({"name": "standby0"})),
            VmEvent::NicRxFilterChanged {
                device: "standby0".into()
            }
        );
        assert_eq!(
            map_event("STOP", &Value::Null),
            VmEvent::RunState { running: false }
        );
        assert_eq!(
            map_event("RESUME", &Value::Null),
            VmEvent::RunState { running: true }
        );
        assert_eq!(
            map_event(
                "SHUTDOWN",
                &json!({"guest": false, "reason": "host-qmp-quit"})
            ),
            VmEvent::Shutdown {
                reason: "host-qmp-quit".into()
            }
        );
        assert_eq!(
            map_event("POWERDOWN", &Value::Null),
            VmEvent::Other {
                name: "POWERDOWN".into(),
                data: "null".into()
            }
        );
    }

    /// A fake QMP server: greets, answers every command with `{"return": {}}` (or an
    /// error for `bad`), sends an event and garbage, and closes on `die`.
    async fn fake_server(listener: UnixListener) {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap() == 0 {
                return;
            }
            let v: Value = serde_json::from_str(&line).unwrap();
            let id = v["id"].clone();
            match v["execute"].as_str().unwrap() {
                "bad" => {
                    let msg =
                        json!({"error": {"class": "GenericError", "desc": "no good"}, "id": id});
                    w.write_all(format!("{msg}\n").as_bytes()).await.unwrap();
                }
                "die" => return,
                "hang" => {}
                _ => {
                    w.write_all(b"garbage {\n\"just a string\"\n")
                        .await
                        .unwrap();
                    w.write_all(b"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 5}}\n")
                        .await
                        .unwrap();
                    let msg = json!({"return": {}, "id": id});
                    w.write_all(format!("{msg}\n").as_bytes()).await.unwrap();
                }
            }
        }
    }

    fn sock(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("vmm-qmp-{}-{name}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[tokio::test]
    async fn fake_server_round_trip() {
        let path = sock("fake");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_server(listener));
        let (tx, _) = broadcast::channel(16);
        let q = QmpClient::connect("vm", &path, Duration::from_secs(5), tx)
            .await
            .unwrap();
        let mut timed = q.timed_events();
        assert_eq!(
            q.execute("x", Some(json!({"a": 1}))).await.unwrap(),
            json!({})
        );
        let ev = timed.recv().await.unwrap();
        assert_eq!(ev.event, VmEvent::RunState { running: false });
        assert_eq!(
            ev.timestamp,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_micros(5))
        );
        // Two garbage lines per successful command (capabilities and x).
        assert_eq!(q.garbage_lines(), 4);
        match q.execute("bad", None).await {
            Err(VmmError::Command {
                command, message, ..
            }) => {
                assert_eq!(command, "bad");
                assert_eq!(message, "no good");
            }
            other => panic!("{other:?}"),
        }
        match q
            .execute_timeout("hang", None, Duration::from_millis(100))
            .await
        {
            Err(VmmError::Timeout { .. }) => {}
            other => panic!("{other:?}"),
        }
        let t = Instant::now();
        match q.execute("die", None).await {
            Err(VmmError::Exited { message, .. }) => assert!(message.contains("die"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(q.is_closed());
        assert!(matches!(
            q.execute("x", None).await,
            Err(VmmError::Exited { .. })
        ));
        server.await.unwrap();
        let _ = std::fs::remove_file(&path);
    }

    /// An event ahead of the greeting (seen from QEMU 10 after an incoming
    /// migration) is delivered as an event; the connection goes on.
    #[tokio::test]
    async fn event_before_the_greeting_is_an_event() {
        let path = sock("early-event");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(
                b"{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"FAILOVER_NEGOTIATED\", \"data\": {\"device-id\": \"standby0\"}}\n\
                  {\"QMP\": {\"version\": {}, \"capabilities\": []}}\n",
            )
            .await
            .unwrap();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            while r.read_line(&mut line).await.unwrap() > 0 {
                let v: Value = serde_json::from_str(&line).unwrap();
                let reply = json!({"return": {}, "id": v["id"]});
                w.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
                line.clear();
            }
        });
        let (tx, mut rx) = broadcast::channel(16);
        let q = QmpClient::connect("vm", &path, Duration::from_secs(5), tx)
            .await
            .unwrap();
        assert!(q.greeting().get("QMP").is_some(), "{}", q.greeting());
        assert_eq!(
            rx.try_recv().unwrap(),
            VmEvent::FailoverNegotiated {
                device: "standby0".into()
            }
        );
        assert_eq!(q.garbage_lines(), 0);
        q.execute("query-status", None).await.unwrap();
        drop(q);
        server.await.unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn not_qmp_is_a_protocol_error() {
        let path = sock("hello");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"hello\n").await.unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf).await;
        });
        let (tx, _) = broadcast::channel(16);
        match QmpClient::connect("vm", &path, Duration::from_secs(5), tx).await {
            Err(VmmError::Protocol {
                message, path: p, ..
            }) => {
                assert!(message.contains("not a QMP socket"), "{message}");
                assert_eq!(p, path);
            }
            other => panic!("{other:?}"),
        }
        server.await.unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
