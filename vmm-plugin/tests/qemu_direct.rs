//! The direct path on a real QEMU (TCG, firmware only: no guest OS). Needs QEMU >= 10,
//! and root for the stand-in's tap: the tests fail, not skip, without them.
//!
//! Without a guest OS nothing negotiates failover, so QEMU keeps a failover primary
//! *hidden* (not plugged) and nothing answers a hot-unplug request; these tests pin
//! down exactly that behaviour. A full guest failover test lives in `tests/`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_plugin::qemu::{check_version, Accel, QemuOptions, QemuVm, PRIMARY_ID};
use vmm_plugin::{DirectPath, StandinModel, SyntheticNic, VmSpec, VmState, Vmm, VmmError};
use vswitch::{PortConfig, Switch, SwitchConfig};

const GRACE: Duration = Duration::from_secs(5);

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
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
struct KillOnDrop(Option<u32>);

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

fn opts(dir: &Path) -> QemuOptions {
    let mut o = QemuOptions::new(dir);
    o.accel = Some(Accel::Tcg);
    o
}

async fn require_qemu10(o: &QemuOptions) {
    if let Err(e) = check_version("test", &o.binary, true).await {
        panic!("these tests need QEMU >= 10 (set ACCELNET_QEMU or install it, see LAB.md): {e}");
    }
}

fn spec(name: &str, socket: &Path) -> VmSpec {
    VmSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 128,
        kernel: None,
        initrd: None,
        cmdline: None,
        disks: vec![],
        nic: SyntheticNic {
            mac: "52:54:00:12:34:57".into(),
            socket: socket.to_path_buf(),
            queue_pairs: 1,
        },
        direct: None,
        console_log: None,
        incoming: false,
    }
}

fn switch(sock: &Path) -> Switch {
    Switch::start(SwitchConfig {
        ports: vec![PortConfig::new(sock)],
        ..SwitchConfig::default()
    })
    .unwrap_or_else(|e| panic!("switch start: {e} ({e:?})"))
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// A stand-in on a tap: QEMU creates the tap and accepts the primary, but holds it
/// back until the guest negotiates failover; detaching it then is a prompt no-op
/// that also drops the tap netdev (the tap disappears).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standin_is_held_back_until_failover_is_negotiated() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: QEMU creates the stand-in's tap"
    );
    let dir = Scratch::new("standin");
    let o = opts(&dir.0);
    require_qemu10(&o).await;
    let sock = dir.0.join("vhu.sock");
    let _sw = switch(&sock);
    let tap = format!("tqs{}", std::process::id() % 100_000);
    let mut vm = QemuVm::new(spec("standin", &sock), o).unwrap();
    vm.start().await.unwrap();
    let _guard = KillOnDrop(vm.pid());
    let path = DirectPath::Standin {
        tap: tap.clone(),
        model: StandinModel::E1000e,
    };
    vm.attach_direct(&path).await.unwrap();
    assert!(link_exists(&tap), "QEMU did not create tap {tap}");
    let st = vm.status().await.unwrap();
    assert_eq!(st.state, VmState::Running);
    assert!(
        !st.direct_attached,
        "the primary must stay hidden until FAILOVER_NEGOTIATED"
    );
    let t = Instant::now();
    vm.detach_direct(Duration::from_secs(3)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!link_exists(&tap), "tap {tap} still exists after detach");
    vm.stop(GRACE).await.unwrap();
}

/// A plugged primary that the guest does not release: detach times out with a
/// Timeout error naming the device (without a guest OS nothing answers the ACPI/PCIe
/// unplug request). No tap needed: the primary here has no netdev.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_times_out_without_a_guest() {
    let dir = Scratch::new("detach");
    let mut o = opts(&dir.0);
    require_qemu10(&o).await;
    // A plain (non-failover) primary0, plugged from the start.
    o.extra_args = vec![
        "-device".into(),
        format!("e1000e,id={PRIMARY_ID},bus=root0,romfile="),
    ];
    let sock = dir.0.join("vhu.sock");
    let _sw = switch(&sock);
    let mut vm = QemuVm::new(spec("detach", &sock), o).unwrap();
    vm.start().await.unwrap();
    let _guard = KillOnDrop(vm.pid());
    assert!(vm.status().await.unwrap().direct_attached);
    let t = Instant::now();
    match vm.detach_direct(Duration::from_millis(1500)).await {
        Err(VmmError::Timeout { what, after, .. }) => {
            assert!(what.contains(PRIMARY_ID), "{what}");
            assert!(what.contains("DEVICE_DELETED"), "{what}");
            assert_eq!(after, Duration::from_millis(1500));
        }
        other => panic!("expected a Timeout, got {other:?}"),
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // Still plugged.
    assert!(vm.status().await.unwrap().direct_attached);
    vm.stop(GRACE).await.unwrap();
}
