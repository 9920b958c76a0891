//! What the real-QEMU tests share: a scratch dir, a guard that kills a QEMU left by a
//! failing test, the options and the spec of a firmware-only TCG guest, and the
//! in-process switch serving its vhost-user NIC.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_plugin::qemu::{check_version, Accel, QemuOptions};
use vmm_plugin::{SyntheticNic, VmSpec};
use vswitch::{PortConfig, Switch, SwitchConfig};

/// How long a test lets QEMU stop cleanly.
pub const GRACE: Duration = Duration::from_secs(5);

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("vmm-qemu-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills a QEMU left behind by a failing test (by its pid).
pub struct KillOnDrop(pub Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self
            .0
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

/// TCG (never KVM, even where it exists), 20 s per QMP command, run dir `dir`.
pub fn opts(dir: &Path) -> QemuOptions {
    let mut o = QemuOptions::new(dir);
    o.accel = Some(Accel::Tcg);
    o.command_timeout = Duration::from_secs(20);
    o
}

/// Fails the test (never skips it) without QEMU 10.
pub async fn require_qemu10() {
    let binary = QemuOptions::new(".").binary;
    if let Err(e) = check_version("test", &binary, true).await {
        panic!("these tests need QEMU >= 10 (set ACCELNET_QEMU or install it, see LAB.md): {e}");
    }
}

/// A 1-vCPU, 128 MiB VM without kernel (SeaBIOS finds nothing to boot and loops),
/// its NIC on `socket`.
pub fn spec(name: &str, socket: &Path) -> VmSpec {
    VmSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 128,
        kernel: None,
        initrd: None,
        cmdline: None,
        disks: vec![],
        nic: SyntheticNic {
            mac: "52:54:00:12:34:56".into(),
            socket: socket.to_path_buf(),
            queue_pairs: 1,
        },
        direct: None,
        console_log: None,
        incoming: false,
    }
}

/// A one-port in-process switch listening on `sock`.
pub fn switch(sock: &Path) -> Switch {
    Switch::start(SwitchConfig {
        ports: vec![PortConfig::new(sock)],
        ..SwitchConfig::default()
    })
    .unwrap_or_else(|e| panic!("switch start: {e} ({e:?})"))
}
