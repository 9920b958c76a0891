//! The QEMU driver against a real QEMU (TCG, firmware only: no kernel, SeaBIOS finds
//! no boot device and loops). The synthetic NIC's vhost-user backend is an in-process
//! accelnet switch. Needs QEMU >= 10 (`ACCELNET_QEMU` or `qemu-system-x86_64`): the
//! tests fail, not skip, without it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;
use vmm_plugin::qemu::{check_version, QemuVm, MIN_VERSION_DIRECT};
use vmm_plugin::{DirectPath, StandinModel, VmEvent, VmState, Vmm, VmmError};

mod common;
use common::{opts, require_qemu10, spec, switch, KillOnDrop, Scratch, GRACE};

async fn next_event(
    rx: &mut broadcast::Receiver<VmEvent>,
    want: impl Fn(&VmEvent) -> bool,
) -> VmEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = rx.recv().await.unwrap();
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("event not seen within 10 s"))
}

/// Start, status, stop/cont events, a refused command, a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_status_events_errors_stop() {
    require_qemu10().await;
    let dir = Scratch::new("life");
    let sock = dir.0.join("vhu.sock");
    let _sw = switch(&sock);
    let mut vm = QemuVm::new(spec("life", &sock), opts(&dir.0)).unwrap();
    let t = Instant::now();
    vm.start().await.unwrap();
    let _guard = KillOnDrop(vm.pid());
    eprintln!("started in {:?}", t.elapsed());
    let st = vm.status().await.unwrap();
    assert_eq!(st.state, VmState::Running);
    assert_eq!(st.pid, vm.pid());
    assert!(!st.direct_attached);

    let mut ev = vm.events();
    let mut timed = vm.timed_events().unwrap();
    vm.execute("stop", None).await.unwrap();
    next_event(&mut ev, |e| *e == VmEvent::RunState { running: false }).await;
    let te = timed.recv().await.unwrap();
    assert_eq!(te.name, "STOP");
    assert!(te.timestamp.is_some());
    assert_eq!(vm.status().await.unwrap().state, VmState::Paused);
    vm.execute("cont", None).await.unwrap();
    next_event(&mut ev, |e| *e == VmEvent::RunState { running: true }).await;
    assert_eq!(vm.status().await.unwrap().state, VmState::Running);

    match vm.execute("no-such-command", None).await {
        Err(VmmError::Command {
            command, message, ..
        }) => {
            assert_eq!(command, "no-such-command");
            assert!(message.contains("not been found"), "{message}");
        }
        other => panic!("expected a Command error, got {other:?}"),
    }
    // Without a guest OS there is no primary to detach: a no-op.
    vm.detach_direct(Duration::from_secs(1)).await.unwrap();

    let pid = vm.pid().unwrap();
    let t = Instant::now();
    vm.stop(GRACE).await.unwrap();
    eprintln!("stopped in {:?}", t.elapsed());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists() || {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            s.contains(") Z")
        }
    );
    next_event(&mut ev, |e| matches!(e, VmEvent::Shutdown { .. })).await;
    let st = vm.status().await.unwrap();
    assert_eq!(st.state, VmState::Stopped);
    assert_eq!(st.pid, None);
    // Stopping again is fine.
    vm.stop(GRACE).await.unwrap();
}

/// QEMU SIGKILLed: commands fail promptly with Exited; status says Stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_qemu_is_exited_promptly() {
    require_qemu10().await;
    let dir = Scratch::new("kill");
    let sock = dir.0.join("vhu.sock");
    let _sw = switch(&sock);
    let mut vm = QemuVm::new(spec("kill", &sock), opts(&dir.0)).unwrap();
    vm.start().await.unwrap();
    let pid = vm.pid().unwrap();
    let _guard = KillOnDrop(Some(pid));
    let mut ev = vm.events();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let t = Instant::now();
    match vm.execute("query-status", None).await {
        Err(VmmError::Exited { message, .. }) => eprintln!("exited: {message}"),
        Ok(v) => {
            // The kill may not have landed before the command: the next one fails.
            eprintln!("answered before dying: {v}");
            match vm.execute("query-status", None).await {
                Err(VmmError::Exited { .. }) => {}
                other => panic!("expected Exited, got {other:?}"),
            }
        }
        Err(e) => panic!("expected Exited, got {e:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    next_event(&mut ev, |e| matches!(e, VmEvent::Shutdown { .. })).await;
    match vm
        .attach_direct(&DirectPath::Standin {
            tap: "tq0".into(),
            model: StandinModel::E1000e,
        })
        .await
    {
        Err(VmmError::Exited { .. }) => {}
        other => panic!("expected Exited, got {other:?}"),
    }
    assert_eq!(vm.status().await.unwrap().state, VmState::Stopped);
    vm.stop(GRACE).await.unwrap();
}

/// A socket that is not QMP is refused with a Protocol error.
#[tokio::test]
async fn not_a_qmp_socket() {
    let dir = Scratch::new("notqmp");
    let sock = dir.0.join("vhu.sock");
    let qmp = dir.0.join("notqmp.qmp");
    let listener = tokio::net::UnixListener::bind(&qmp).unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"hello\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    match QemuVm::attach(spec("notqmp", &sock), opts(&dir.0), std::process::id()).await {
        Err(VmmError::Protocol { message, path, .. }) => {
            assert!(message.contains("not a QMP socket"), "{message}");
            assert_eq!(path, qmp);
        }
        other => panic!("expected a Protocol error, got {other:?}"),
    }
    server.await.unwrap();
}

/// A QEMU older than 10 is refused for a VM with a direct path, and the message
/// says why.
#[tokio::test]
async fn old_qemu_is_refused_for_a_direct_path() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("old");
    let fake = dir.0.join("qemu-7.2");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'QEMU emulator version 7.2.0 (Debian 1:7.2+dfsg-7)'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut s = spec("old", &dir.0.join("vhu.sock"));
    s.direct = Some(DirectPath::Standin {
        tap: "tq0".into(),
        model: StandinModel::E1000e,
    });
    let mut o = opts(&dir.0);
    o.binary = fake.clone();
    let mut vm = QemuVm::new(s, o).unwrap();
    match vm.start().await {
        Err(VmmError::Binary { message, .. }) => {
            assert!(message.contains("7.2.0"), "{message}");
            assert!(message.contains(">= 10"), "{message}");
            assert!(message.contains("re-plug"), "{message}");
        }
        other => panic!("expected a Binary error, got {other:?}"),
    }
    // Without a direct path 7.2 is enough (failover needs 4.2).
    let v = check_version("old", &fake, false).await.unwrap();
    assert!(v < MIN_VERSION_DIRECT);
    match check_version("old", &dir.0.join("missing"), false).await {
        Err(VmmError::Binary { message, .. }) => assert!(message.contains("cannot run")),
        other => panic!("expected a Binary error, got {other:?}"),
    }
}

/// Same-host live migration of a firmware-only guest, both QEMUs on one switch port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_between_two_qemus() {
    require_qemu10().await;
    let dir = Scratch::new("mig");
    let sock = dir.0.join("vhu.sock");
    let _sw = switch(&sock);
    let mut src = QemuVm::new(spec("mig-src", &sock), opts(&dir.0)).unwrap();
    let mut dst_spec = spec("mig-dst", &sock);
    dst_spec.incoming = true;
    let mut dst = QemuVm::new(dst_spec, opts(&dir.0)).unwrap();
    src.start().await.unwrap();
    let _g1 = KillOnDrop(src.pid());
    dst.start().await.unwrap();
    let _g2 = KillOnDrop(dst.pid());
    assert_eq!(dst.status().await.unwrap().state, VmState::Incoming);
    let uri = format!("unix:{}", dir.0.join("mig.sock").display());
    dst.receive_migration(&uri).await.unwrap();
    let mut ev = src.events();
    let calls = AtomicUsize::new(0);
    let progress = |p: &vmm_plugin::MigrationProgress| {
        calls.fetch_add(1, Ordering::Relaxed);
        eprintln!(
            "{} {} ms {}/{}",
            p.status, p.elapsed_ms, p.transferred, p.total
        );
    };
    let t = Instant::now();
    let summary = tokio::time::timeout(Duration::from_secs(120), src.migrate_out(&uri, &progress))
        .await
        .expect("migration within 120 s")
        .unwrap();
    eprintln!("migrated in {:?}: {summary:?}", t.elapsed());
    assert!(calls.load(Ordering::Relaxed) >= 1);
    assert!(summary.total_ms > 0);
    assert!(summary.transferred > 0);
    next_event(&mut ev, |e| {
        *e == VmEvent::Migration {
            status: "completed".into(),
        }
    })
    .await;
    assert_eq!(src.status().await.unwrap().state, VmState::Migrated);
    // The destination resumes by itself (autostart).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = dst.status().await.unwrap().state;
        if st == VmState::Running {
            break;
        }
        assert!(Instant::now() < deadline, "destination is {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    src.stop(GRACE).await.unwrap();
    dst.stop(GRACE).await.unwrap();
}

/// QEMU that exits at start (no vhost-user backend, no reconnect) is a Start error
/// carrying QEMU's own message from its log; with reconnect it waits for the switch
/// and start times out, again with the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failures_carry_the_log_tail() {
    require_qemu10().await;
    let dir = Scratch::new("nostart");
    let sock = dir.0.join("nobody.sock");
    let mut o = opts(&dir.0);
    o.chardev_reconnect_ms = None;
    let mut vm = QemuVm::new(spec("nostart", &sock), o).unwrap();
    match vm.start().await {
        Err(VmmError::Start { message, .. }) => {
            eprintln!("{message}");
            assert!(message.contains("exited at start"), "{message}");
            assert!(message.contains("nobody.sock"), "{message}");
        }
        other => panic!("expected a Start error, got {other:?}"),
    }
    assert_eq!(vm.pid(), None);

    let mut o = opts(&dir.0);
    o.chardev_reconnect_ms = Some(200);
    o.start_timeout = Duration::from_secs(2);
    let mut vm = QemuVm::new(spec("waits", &sock), o).unwrap();
    let t = Instant::now();
    match vm.start().await {
        Err(VmmError::Start { message, .. }) => {
            eprintln!("{message}");
            assert!(message.contains("no QMP"), "{message}");
            assert!(message.contains("nobody.sock"), "{message}");
        }
        other => panic!("expected a Start error, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // The QEMU that waited was killed.
    vm.stop(GRACE).await.unwrap();
    assert_eq!(vm.status().await.unwrap().state, VmState::Stopped);
}

/// A migration to nowhere fails with QEMU's error description; the VM keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_migration_reports_the_error() {
    require_qemu10().await;
    let dir = Scratch::new("migfail");
    let sock = dir.0.join("vhu.sock");
    let _sw = switch(&sock);
    let mut vm = QemuVm::new(spec("migfail", &sock), opts(&dir.0)).unwrap();
    vm.start().await.unwrap();
    let _guard = KillOnDrop(vm.pid());
    let uri = format!("unix:{}", dir.0.join("nobody-listens.sock").display());
    let r = tokio::time::timeout(Duration::from_secs(30), vm.migrate_out(&uri, &|_| {}))
        .await
        .expect("migration result within 30 s");
    match r {
        Err(VmmError::Migration {
            status, message, ..
        }) => {
            assert_eq!(status, "failed");
            assert!(message.contains("nobody-listens.sock"), "{message}");
        }
        // QEMU may refuse at once, too.
        Err(VmmError::Command { message, .. }) => {
            assert!(message.contains("nobody-listens.sock"), "{message}")
        }
        other => panic!("expected a Migration error, got {other:?}"),
    }
    assert_eq!(vm.status().await.unwrap().state, VmState::Running);
    vm.stop(GRACE).await.unwrap();
}
