//! The cloud-hypervisor command line and the `VmConfig` a [`VmSpec`] becomes.
//!
//! Flow: `cloud-hypervisor --api-socket path=<run_dir>/<name>.sock --event-monitor
//! path=<run_dir>/<name>.events` starts an empty VMM; the VM is then described by one
//! `VmConfig` JSON ([`vm_config`]) sent with `PUT /api/v1/vm.create` and started with
//! `vm.boot` (or, on a migration destination, left empty for `vm.receive-migration`).
//! The same JSON is what tests assert on the fake API server.

use std::path::PathBuf;
use std::time::Duration;

use super::api::{
    ConsoleConfig, CpusConfig, DeviceConfig, DiskConfig, MemoryConfig, NetConfig, PayloadConfig,
    VmConfig,
};
use crate::{DirectPath, VmSpec, VmmError};
// Shared by both VMMs; re-exported where callers of this module look for them.
pub use crate::{valid_mac, MAX_QUEUE_PAIRS, MIN_MEMORY_MIB};

/// Device id of the direct path (the VF) in the VM config.
pub const PRIMARY_ID: &str = "primary0";
/// Device id of the synthetic NIC (vhost-user net) in the VM config.
pub const SYNTHETIC_ID: &str = "synth0";

/// How to run cloud-hypervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChOptions {
    /// The `cloud-hypervisor` binary.
    pub binary: PathBuf,
    /// Where the API socket (`<name>.sock`), the event monitor file
    /// (`<name>.events`) and the VMM's output (`<name>.log`) go.
    pub run_dir: PathBuf,
    /// Whether [`start`](crate::Vmm::start) spawns the VMM process. `false`: a VMM
    /// (or a fake API server in tests) already listens on the API socket and `start`
    /// only creates and boots the VM through it.
    pub spawn: bool,
    /// How long to wait for the API socket to answer `vmm.ping` after spawning.
    pub start_timeout: Duration,
    /// Per-request timeout of ordinary API calls.
    pub request_timeout: Duration,
    /// Upper bound of a whole outgoing or incoming migration.
    pub migration_timeout: Duration,
}

impl ChOptions {
    /// Defaults for `binary` and `run_dir`: spawn, 10 s start, 10 s requests,
    /// 1 h migrations.
    pub fn new(binary: impl Into<PathBuf>, run_dir: impl Into<PathBuf>) -> Self {
        ChOptions {
            binary: binary.into(),
            run_dir: run_dir.into(),
            spawn: true,
            start_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            migration_timeout: Duration::from_secs(3600),
        }
    }

    /// The API socket of VM `name`: `<run_dir>/<name>.sock`.
    pub fn api_socket(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.sock"))
    }

    /// The event monitor file of VM `name`: `<run_dir>/<name>.events`.
    pub fn event_file(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.events"))
    }

    /// The VMM's stdout/stderr of VM `name`: `<run_dir>/<name>.log`.
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.log"))
    }
}

/// Normalises a host PCI address to sysfs form `DDDD:BB:DD.F` (a missing domain
/// is `0000`); `None` when it is not one.
pub fn normalize_pci(pci: &str) -> Option<String> {
    let full = if pci.matches(':').count() == 1 {
        format!("0000:{pci}")
    } else {
        pci.to_owned()
    };
    let (domain, rest) = full.split_once(':')?;
    let (bus, rest) = rest.split_once(':')?;
    let (dev, func) = rest.split_once('.')?;
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    (hex(domain, 4)
        && hex(bus, 2)
        && hex(dev, 2)
        && func.len() == 1
        && ('0'..='7').contains(&func.chars().next().unwrap_or('x')))
    .then(|| full.to_ascii_lowercase())
}

/// The VFIO `DeviceConfig` of a direct path: a VF's sysfs directory with id
/// [`PRIMARY_ID`]. The stand-in (emulated e1000e/igb) is a [`VmmError::Spec`]:
/// cloud-hypervisor emulates no such NIC.
pub fn direct_device(spec: &VmSpec, path: &DirectPath) -> Result<DeviceConfig, VmmError> {
    match path {
        DirectPath::Vf { pci } => {
            let bdf = normalize_pci(pci)
                .ok_or_else(|| spec.error(format!("VF PCI address {pci:?} is not DDDD:BB:DD.F")))?;
            Ok(DeviceConfig {
                path: Some(format!("/sys/bus/pci/devices/{bdf}/")),
                id: Some(PRIMARY_ID.to_owned()),
            })
        }
        DirectPath::Standin { tap, model } => Err(spec.error(format!(
            "the direct-path stand-in ({} on tap {tap}) is QEMU-only: cloud-hypervisor \
                 cannot emulate e1000e/igb NICs and needs a real VF (vfio-pci) as direct path",
            model.qemu_device()
        ))),
    }
}

fn path_str(spec: &VmSpec, what: &str, p: &std::path::Path) -> Result<String, VmmError> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| spec.error(format!("{what} path {} is not UTF-8", p.display())))
}

/// Checks what cloud-hypervisor would refuse: 0 vCPUs, less than 64 MiB RAM, a bad
/// MAC, 0 or more than 8 queue pairs, no kernel, a stand-in direct path.
pub fn validate(spec: &VmSpec) -> Result<(), VmmError> {
    vm_config(spec).map(drop)
}

/// The `VmConfig` of `spec` for `PUT /api/v1/vm.create`: `cpus` {boot, max} =
/// vcpus; `memory` {size in bytes, `shared: true`} (vhost-user needs shared memory);
/// `payload` {kernel, initramfs, cmdline}; `disks` [{path}]; `net` [the synthetic
/// NIC: `vhost_user: true`, `vhost_socket` = the switch port, `vhost_mode: "Client"`
/// (the switch listens), the VM's MAC, `num_queues` = 2 × queue pairs, id
/// [`SYNTHETIC_ID`]]; `devices` [the VF: `/sys/bus/pci/devices/<bdf>/`, id
/// [`PRIMARY_ID`]]; `serial` to the console log file (or `Null`), `console` `Off`.
pub fn vm_config(spec: &VmSpec) -> Result<VmConfig, VmmError> {
    if spec.name.is_empty() || spec.name.contains(['/', '\0']) {
        return Err(spec.error("VM name must be non-empty without '/'"));
    }
    spec.check_sizes()?;
    let Some(kernel) = &spec.kernel else {
        return Err(spec.error(
            "cloud-hypervisor needs a kernel to boot (payload.kernel); no firmware is configured",
        ));
    };
    let memory_bytes = spec
        .memory_mib
        .checked_mul(1024 * 1024)
        .ok_or_else(|| spec.error("memory size overflows"))?;
    let devices = match &spec.direct {
        Some(path) => vec![direct_device(spec, path)?],
        None => Vec::new(),
    };
    let disks = spec
        .disks
        .iter()
        .map(|d| {
            Ok(DiskConfig {
                path: Some(path_str(spec, "disk", d)?),
                id: None,
            })
        })
        .collect::<Result<Vec<_>, VmmError>>()?;
    let serial = match &spec.console_log {
        Some(log) => ConsoleConfig {
            mode: "File".into(),
            file: Some(path_str(spec, "console log", log)?),
        },
        None => ConsoleConfig {
            mode: "Null".into(),
            file: None,
        },
    };
    Ok(VmConfig {
        cpus: Some(CpusConfig {
            boot_vcpus: spec.vcpus,
            max_vcpus: spec.vcpus,
        }),
        memory: Some(MemoryConfig {
            size: memory_bytes,
            shared: true,
        }),
        payload: PayloadConfig {
            firmware: None,
            kernel: Some(path_str(spec, "kernel", kernel)?),
            cmdline: spec.cmdline.clone(),
            initramfs: spec
                .initrd
                .as_deref()
                .map(|p| path_str(spec, "initrd", p))
                .transpose()?,
        },
        disks,
        net: vec![NetConfig {
            mac: Some(spec.nic.mac.to_ascii_lowercase()),
            num_queues: Some(2 * u32::from(spec.nic.queue_pairs)),
            vhost_user: true,
            vhost_socket: Some(path_str(spec, "vhost-user socket", &spec.nic.socket)?),
            vhost_mode: Some("Client".into()),
            id: Some(SYNTHETIC_ID.into()),
        }],
        devices,
        serial: Some(serial),
        console: Some(ConsoleConfig {
            mode: "Off".into(),
            file: None,
        }),
    })
}

/// The VM config as JSON (what `vm.create` carries).
pub fn vm_config_json(spec: &VmSpec) -> Result<serde_json::Value, VmmError> {
    let config = vm_config(spec)?;
    serde_json::to_value(config).map_err(|e| spec.error(format!("cannot encode VmConfig: {e}")))
}

/// The argv (binary first) launching an empty cloud-hypervisor for `spec`:
/// `cloud-hypervisor --api-socket path=<run_dir>/<name>.sock --event-monitor
/// path=<run_dir>/<name>.events`. The VM itself is created over the API
/// ([`vm_config`]). Validates the spec first.
pub fn ch_argv(spec: &VmSpec, opts: &ChOptions) -> Result<Vec<String>, VmmError> {
    validate(spec)?;
    let sock = opts.api_socket(&spec.name);
    let events = opts.event_file(&spec.name);
    let binary = path_str(spec, "cloud-hypervisor binary", &opts.binary)?;
    for p in [&sock, &events] {
        let s = path_str(spec, "run dir", p)?;
        if s.contains(',') {
            return Err(spec.error(format!(
                "run dir path {s} contains ',' (cloud-hypervisor option separator)"
            )));
        }
    }
    Ok(vec![
        binary,
        "--api-socket".into(),
        format!("path={}", sock.display()),
        "--event-monitor".into(),
        format!("path={}", events.display()),
    ])
}
