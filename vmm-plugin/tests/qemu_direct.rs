//! The direct path on a real QEMU (TCG, firmware only: no guest OS). Needs QEMU >= 10,
//! and root for the stand-in's tap: the tests fail, not skip, without them.
//!
//! Without a guest OS nothing negotiates failover, so QEMU keeps a failover primary
//! *hidden* (not plugged) and nothing answers a hot-unplug request; these tests pin
//! down exactly that behaviour. A full guest failover test lives in `tests/`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use vmm_plugin::qemu::{QemuVm, PRIMARY_ID};
use vmm_plugin::{DirectPath, StandinModel, VmState, Vmm, VmmError};

mod common;
use common::{opts, require_qemu10, spec, switch, KillOnDrop, Scratch, GRACE};

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
    require_qemu10().await;
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
    require_qemu10().await;
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
