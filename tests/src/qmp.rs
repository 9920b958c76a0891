//! A minimal QMP client: enough to drive a live migration from a test.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{LabError, Result};

/// A QMP connection (capabilities negotiated). Events read while waiting for an
/// answer are kept in [`Qmp::events`].
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events seen so far, in order.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects to QEMU's `-qmp unix:PATH,server=on,wait=off` socket, retrying until
    /// `timeout`, and negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(LabError(format!("QMP {}: {e}", path.display())));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| LabError(format!("QMP: {e}")))?;
        let writer = stream
            .try_clone()
            .map_err(|e| LabError(format!("QMP: {e}")))?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(LabError(format!("not a QMP greeting: {greeting}")));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| LabError(format!("QMP read: {e}")))?;
        if n == 0 {
            return Err(LabError("QMP: QEMU closed the connection".into()));
        }
        serde_json::from_str(&line).map_err(|e| LabError(format!("QMP: bad JSON {line:?}: {e}")))
    }

    /// Runs `command` with `arguments`; returns its `return` value or the QMP error.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let msg = json!({ "execute": command, "arguments": arguments });
        self.writer
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| LabError(format!("QMP write: {e}")))?;
        loop {
            let v = self.read()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(LabError(format!("QMP {command}: {e}")));
            }
        }
    }

    /// Polls `query-migrate` until the status is `completed` (returns the final
    /// answer) or `failed`/`cancelled` (error), for at most `timeout`.
    pub fn wait_migration(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.execute("query-migrate", json!({}))?;
            match info.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(info),
                Some(s @ ("failed" | "cancelled")) => {
                    return Err(LabError(format!("migration {s}: {info}")));
                }
                _ if Instant::now() > deadline => {
                    return Err(LabError(format!(
                        "migration not done after {timeout:?}: {info}"
                    )));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}
