//! REST client for cloud-hypervisor's API socket (`--api-socket path=...`), and the
//! request/response types of the endpoints accelnet uses.
//!
//! Types and routes follow cloud-hypervisor's published OpenAPI description,
//! `vmm/src/api/openapi/cloud-hypervisor.yaml`, and its HTTP server,
//! `vmm/src/api/http/mod.rs` (routes under `/api/v1`, `200` with a JSON body or `204`
//! on success; errors `400` (bad body, invalid config), `404` (VM not created, unknown
//! device id, unknown route), `409` (duplicate id or path), `500` (anything else, e.g.
//! the VM is not running), with a JSON array of error messages as body).
//!
//! One connection per request (HTTP/1.1 over a `tokio` [`UnixStream`]); every request
//! is bounded by the client's timeout.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::UnixStream;

use crate::{VmmError, VmmKind};

/// The API's URL prefix.
pub const API_ROOT: &str = "/api/v1";

const VMM: VmmKind = VmmKind::CloudHypervisor;

/// `VmConfig` (the subset accelnet sets; absent fields take cloud-hypervisor's
/// defaults).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct VmConfig {
    /// `cpus`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<CpusConfig>,
    /// `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryConfig>,
    /// `payload` (required by the schema).
    pub payload: PayloadConfig,
    /// `disks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DiskConfig>,
    /// `net`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net: Vec<NetConfig>,
    /// `devices` (VFIO passthrough).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceConfig>,
    /// `serial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<ConsoleConfig>,
    /// `console` (the virtio console).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleConfig>,
}

/// `CpusConfig` (`boot_vcpus` and `max_vcpus` are required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfig {
    /// vCPUs at boot.
    pub boot_vcpus: u32,
    /// Maximum vCPUs (hotplug).
    pub max_vcpus: u32,
}

/// `MemoryConfig` (`size` is required, in bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Guest RAM in bytes.
    pub size: u64,
    /// Shared (`MAP_SHARED`) guest memory: needed by vhost-user devices.
    #[serde(default)]
    pub shared: bool,
}

/// `PayloadConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PayloadConfig {
    /// Firmware image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Kernel image (direct boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<String>,
}

/// `DiskConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DiskConfig {
    /// Image path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `NetConfig`, as a vhost-user net device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetConfig {
    /// Guest MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Number of queues (2 per queue pair).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_queues: Option<u32>,
    /// The device is a vhost-user frontend.
    #[serde(default)]
    pub vhost_user: bool,
    /// The vhost-user socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_socket: Option<String>,
    /// `Client` (cloud-hypervisor connects to a listening backend, the default) or
    /// `Server`. The values are the variant names of cloud-hypervisor's `VhostMode`
    /// enum (`vmm/src/vm_config.rs`), capitalised as the schema's default `"Client"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vhost_mode: Option<String>,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `DeviceConfig`: a VFIO device by sysfs path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DeviceConfig {
    /// Sysfs path, `/sys/bus/pci/devices/<bdf>/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `ConsoleConfig` / `SerialConfig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    /// `Off`, `Pty`, `Tty`, `File`, `Socket` or `Null`.
    pub mode: String,
    /// The file, for `File`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// `PciDeviceInfo`: what a hot-plug returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    /// Device id.
    pub id: String,
    /// Guest PCI address.
    pub bdf: String,
}

/// `VmRemoveDevice`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRemoveDevice {
    /// Device id.
    pub id: String,
}

/// `SendMigrationData` (`destination_url` is required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMigrationData {
    /// `unix:<path>` or `tcp:<host>:<port>`.
    pub destination_url: String,
    /// Local (same host) migration: memory is handed over, not copied. Needs shared
    /// memory and a `unix:` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<bool>,
}

/// `ReceiveMigrationData` (`receiver_url` is required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiveMigrationData {
    /// `unix:<path>` or `tcp:<host>:<port>`.
    pub receiver_url: String,
}

/// `VmmPingResponse` (`version` is required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    /// Version.
    pub version: String,
    /// Build version.
    #[serde(default)]
    pub build_version: Option<String>,
    /// VMM process id.
    #[serde(default)]
    pub pid: Option<i64>,
    /// Compiled-in features.
    #[serde(default)]
    pub features: Vec<String>,
}

/// `VmInfo` (`config` and `state` are required). The config stays JSON: a real
/// cloud-hypervisor returns many more fields than [`VmConfig`] models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    /// `VmState`: `Created`, `Running`, `Shutdown`, `Paused` or `BreakPoint`.
    pub state: String,
    /// The VM's current `VmConfig`.
    pub config: Value,
    /// Guest RAM in use.
    #[serde(default)]
    pub memory_actual_size: Option<i64>,
    /// Device tree (id → `DeviceNode`).
    #[serde(default)]
    pub device_tree: Option<Value>,
}

impl VmInfo {
    /// The ids of `config.devices` (VFIO devices).
    pub fn device_ids(&self) -> Vec<String> {
        self.ids("devices")
    }

    /// The ids of `config.net` (network devices).
    pub fn net_ids(&self) -> Vec<String> {
        self.ids("net")
    }

    fn ids(&self, list: &str) -> Vec<String> {
        self.config
            .get(list)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|d| d.get("id").and_then(Value::as_str).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A response to a request that went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Body (empty for `204`).
    pub body: Bytes,
}

/// Client of one cloud-hypervisor API socket.
#[derive(Debug, Clone)]
pub struct ChApi {
    vm: String,
    socket: PathBuf,
    timeout: Duration,
}

impl ChApi {
    /// A client of the API socket `socket` of VM `vm` (the name goes into errors);
    /// every request gives up after `timeout`.
    pub fn new(vm: impl Into<String>, socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        ChApi {
            vm: vm.into(),
            socket: socket.into(),
            timeout,
        }
    }

    /// The API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The same client with another per-request timeout.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        ChApi {
            timeout,
            ..self.clone()
        }
    }

    fn protocol(&self, message: String) -> VmmError {
        VmmError::Protocol {
            vm: self.vm.clone(),
            vmm: VMM,
            path: self.socket.clone(),
            message,
        }
    }

    /// Sends one request to `/api/v1/<endpoint>` and returns whatever status came
    /// back. Transport failures are errors: a missing socket or nobody listening is
    /// [`VmmError::Exited`], a peer that does not speak HTTP is
    /// [`VmmError::Protocol`], no answer within the timeout is
    /// [`VmmError::Timeout`].
    pub async fn raw(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, VmmError> {
        match tokio::time::timeout(self.timeout, self.raw_inner(method, endpoint, body)).await {
            Ok(r) => r,
            Err(_) => Err(VmmError::Timeout {
                vm: self.vm.clone(),
                what: format!(
                    "cloud-hypervisor to answer {endpoint} on {}",
                    self.socket.display()
                ),
                after: self.timeout,
            }),
        }
    }

    async fn raw_inner(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, VmmError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            let what = match e.kind() {
                io::ErrorKind::NotFound => "the API socket does not exist",
                io::ErrorKind::ConnectionRefused => "nothing listens on the API socket",
                _ => return self.protocol(format!("cannot connect: {e}")),
            };
            VmmError::Exited {
                vm: self.vm.clone(),
                vmm: VMM,
                message: format!("{what} {} ({e})", self.socket.display()),
            }
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(format!("HTTP handshake failed: {e}")))?;
        let conn = tokio::spawn(conn);
        let bytes = match body {
            Some(v) => Bytes::from(v.to_string()),
            None => Bytes::new(),
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("{API_ROOT}/{endpoint}"))
            .header(hyper::header::HOST, "localhost")
            .header(hyper::header::ACCEPT, "application/json");
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(bytes))
            .map_err(|e| self.protocol(format!("cannot build the {endpoint} request: {e}")))?;
        let response = sender.send_request(request).await.map_err(|e| {
            if e.is_parse() || e.is_incomplete_message() {
                self.protocol(format!(
                    "not a cloud-hypervisor API socket: {endpoint} got no HTTP answer ({e})"
                ))
            } else {
                self.protocol(format!("{endpoint}: {e}"))
            }
        })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(format!("{endpoint}: reading the answer: {e}")))?
            .to_bytes();
        conn.abort();
        Ok(ApiResponse { status, body })
    }

    /// Sends a request and turns a non-2xx status into [`VmmError::Command`] naming
    /// the endpoint, the status and cloud-hypervisor's error messages.
    pub async fn call(
        &self,
        method: Method,
        endpoint: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse, VmmError> {
        let response = self.raw(method, endpoint, body).await?;
        if response.status.is_success() {
            Ok(response)
        } else {
            Err(VmmError::Command {
                vm: self.vm.clone(),
                vmm: VMM,
                command: endpoint.to_owned(),
                message: format!("HTTP {}: {}", response.status, error_text(&response.body)),
            })
        }
    }

    async fn put<T: Serialize>(
        &self,
        endpoint: &str,
        body: Option<&T>,
    ) -> Result<ApiResponse, VmmError> {
        let value =
            match body {
                Some(b) => Some(serde_json::to_value(b).map_err(|e| {
                    self.protocol(format!("cannot encode the {endpoint} body: {e}"))
                })?),
                None => None,
            };
        self.call(Method::PUT, endpoint, value.as_ref()).await
    }

    fn decode<T: for<'de> Deserialize<'de>>(
        &self,
        endpoint: &str,
        body: &Bytes,
    ) -> Result<T, VmmError> {
        serde_json::from_slice(body).map_err(|e| {
            self.protocol(format!(
                "{endpoint}: unexpected answer {:?}: {e}",
                String::from_utf8_lossy(body)
            ))
        })
    }

    fn device_info(
        &self,
        endpoint: &str,
        response: &ApiResponse,
    ) -> Result<Option<PciDeviceInfo>, VmmError> {
        if response.status == StatusCode::NO_CONTENT || response.body.is_empty() {
            Ok(None)
        } else {
            self.decode(endpoint, &response.body).map(Some)
        }
    }

    /// `GET /vmm.ping`.
    pub async fn ping(&self) -> Result<VmmPingResponse, VmmError> {
        let r = self.call(Method::GET, "vmm.ping", None).await?;
        self.decode("vmm.ping", &r.body)
    }

    /// `PUT /vmm.shutdown`: the VMM process exits.
    pub async fn vmm_shutdown(&self) -> Result<(), VmmError> {
        self.put::<()>("vmm.shutdown", None).await.map(drop)
    }

    /// `PUT /vm.create`.
    pub async fn create(&self, config: &VmConfig) -> Result<(), VmmError> {
        self.put("vm.create", Some(config)).await.map(drop)
    }

    /// `PUT /vm.create` with a raw JSON `VmConfig`.
    pub async fn create_json(&self, config: &Value) -> Result<(), VmmError> {
        self.put("vm.create", Some(config)).await.map(drop)
    }

    /// `PUT /vm.boot`.
    pub async fn boot(&self) -> Result<(), VmmError> {
        self.put::<()>("vm.boot", None).await.map(drop)
    }

    /// `PUT /vm.shutdown`.
    pub async fn shutdown(&self) -> Result<(), VmmError> {
        self.put::<()>("vm.shutdown", None).await.map(drop)
    }

    /// `PUT /vm.pause`.
    pub async fn pause(&self) -> Result<(), VmmError> {
        self.put::<()>("vm.pause", None).await.map(drop)
    }

    /// `PUT /vm.resume`.
    pub async fn resume(&self) -> Result<(), VmmError> {
        self.put::<()>("vm.resume", None).await.map(drop)
    }

    /// `GET /vm.info`; `Ok(None)` when the VM is not created (`404`).
    pub async fn info(&self) -> Result<Option<VmInfo>, VmmError> {
        let r = self.raw(Method::GET, "vm.info", None).await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status.is_success() {
            return Err(VmmError::Command {
                vm: self.vm.clone(),
                vmm: VMM,
                command: "vm.info".into(),
                message: format!("HTTP {}: {}", r.status, error_text(&r.body)),
            });
        }
        self.decode("vm.info", &r.body).map(Some)
    }

    /// `PUT /vm.add-net`: `Some` when hot-plugged (`200`), `None` when cold-added
    /// (`204`).
    pub async fn add_net(&self, net: &NetConfig) -> Result<Option<PciDeviceInfo>, VmmError> {
        let r = self.put("vm.add-net", Some(net)).await?;
        self.device_info("vm.add-net", &r)
    }

    /// `PUT /vm.add-device`: `Some` when hot-plugged (`200`), `None` when cold-added
    /// (`204`).
    pub async fn add_device(
        &self,
        device: &DeviceConfig,
    ) -> Result<Option<PciDeviceInfo>, VmmError> {
        let r = self.put("vm.add-device", Some(device)).await?;
        self.device_info("vm.add-device", &r)
    }

    /// `PUT /vm.remove-device`: asks the guest to eject the device; the device
    /// leaves `vm.info`'s config once the guest has released it.
    pub async fn remove_device(&self, id: &str) -> Result<(), VmmError> {
        let body = VmRemoveDevice { id: id.to_owned() };
        self.put("vm.remove-device", Some(&body)).await.map(drop)
    }

    /// `PUT /vm.send-migration`.
    pub async fn send_migration(&self, data: &SendMigrationData) -> Result<(), VmmError> {
        self.put("vm.send-migration", Some(data)).await.map(drop)
    }

    /// `PUT /vm.receive-migration` (returns once the migration is received).
    pub async fn receive_migration(&self, data: &ReceiveMigrationData) -> Result<(), VmmError> {
        self.put("vm.receive-migration", Some(data)).await.map(drop)
    }
}

/// cloud-hypervisor's error body is a JSON array of messages (the error chain):
/// joined with `: `; anything else verbatim.
pub fn error_text(body: &[u8]) -> String {
    match serde_json::from_slice::<Vec<String>>(body) {
        Ok(messages) if !messages.is_empty() => messages.join(": "),
        _ => String::from_utf8_lossy(body).trim().to_owned(),
    }
}
