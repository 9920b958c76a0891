//! The cloud-hypervisor driver against a fake API server ([`FakeChServer`]):
//! cloud-hypervisor needs KVM, which this machine lacks, so these tests drive
//! [`ChVm`] through the [`Vmm`] trait against a fake that follows cloud-hypervisor's
//! OpenAPI description (`vmm/src/api/openapi/cloud-hypervisor.yaml`) instead of a
//! real VMM.
#![cfg(feature = "test-utils")]

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use vmm_plugin::ch::api::{ChApi, SendMigrationData};
use vmm_plugin::ch::fake::{FakeChServer, FakeVmPhase, ReceiveFault};
use vmm_plugin::ch::{ChOptions, ChVm};
use vmm_plugin::{
    DirectPath, EventReceiver, MigrationProgress, StandinModel, SyntheticNic, VmEvent, VmSpec,
    VmState, Vmm, VmmError,
};

const PCI: &str = "0000:3b:02.1";

fn run_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ch-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("run dir");
    dir
}

fn spec(incoming: bool) -> VmSpec {
    VmSpec {
        name: "vm1".into(),
        vcpus: 2,
        memory_mib: 256,
        kernel: Some(PathBuf::from("/boot/vmlinux")),
        initrd: None,
        cmdline: Some("console=ttyS0".into()),
        disks: vec![PathBuf::from("/var/lib/vm1.raw")],
        nic: SyntheticNic {
            mac: "52:54:00:aa:bb:01".into(),
            socket: PathBuf::from("/run/accelnet/vm1.vhost"),
            queue_pairs: 1,
        },
        direct: Some(DirectPath::Vf { pci: PCI.into() }),
        console_log: None,
        incoming,
    }
}

fn opts(dir: &PathBuf) -> ChOptions {
    let mut o = ChOptions::new("/nonexistent/cloud-hypervisor", dir);
    o.spawn = false;
    o.request_timeout = Duration::from_secs(2);
    o.migration_timeout = Duration::from_secs(5);
    o
}

async fn fake_for(o: &ChOptions) -> FakeChServer {
    let fake = FakeChServer::start(o.api_socket("vm1"))
        .await
        .expect("fake API server");
    fake.set_event_file(o.event_file("vm1"));
    fake
}

async fn next_event(rx: &mut EventReceiver, want: impl Fn(&VmEvent) -> bool) -> VmEvent {
    tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let ev = rx.recv().await.expect("event channel");
            if want(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("event")
}

/// The whole life cycle through the `Vmm` trait, against the fake API server.
#[tokio::test]
async fn fake_api_life_cycle_through_the_vmm_trait() {
    let dir = run_dir("life");
    let o = opts(&dir);
    let fake = fake_for(&o).await;
    let mut vm: Box<dyn Vmm> = Box::new(ChVm::new(spec(false), o).unwrap());
    assert_eq!(vm.kind(), vmm_plugin::VmmKind::CloudHypervisor);
    let mut events = vm.events();

    vm.start().await.unwrap();
    assert_eq!(fake.endpoints(), ["vmm.ping", "vm.create", "vm.boot"]);
    assert_eq!(
        fake.bodies("vm.create"),
        [json!({
            "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
            "memory": {"size": 268435456u64, "shared": true},
            "payload": {"kernel": "/boot/vmlinux", "cmdline": "console=ttyS0"},
            "disks": [{"path": "/var/lib/vm1.raw"}],
            "net": [{
                "mac": "52:54:00:aa:bb:01",
                "num_queues": 2,
                "vhost_user": true,
                "vhost_socket": "/run/accelnet/vm1.vhost",
                "vhost_mode": "Client",
                "id": "synth0"
            }],
            "devices": [{"path": "/sys/bus/pci/devices/0000:3b:02.1/", "id": "primary0"}],
            "serial": {"mode": "Null"},
            "console": {"mode": "Off"}
        })]
    );
    assert_eq!(fake.bodies("vm.boot"), [Value::Null]);
    next_event(&mut events, |e| *e == VmEvent::RunState { running: true }).await;

    let st = vm.status().await.unwrap();
    assert_eq!(st.state, VmState::Running);
    assert!(st.direct_attached);

    vm.detach_direct(Duration::from_secs(2)).await.unwrap();
    assert_eq!(fake.bodies("vm.remove-device"), [json!({"id": "primary0"})]);
    assert!(!vm.status().await.unwrap().direct_attached);
    let ev = next_event(&mut events, |e| matches!(e, VmEvent::DeviceDeleted { .. })).await;
    assert_eq!(
        ev,
        VmEvent::DeviceDeleted {
            device: "primary0".into()
        }
    );
    // Without a direct path, detach is a no-op (no second remove-device).
    vm.detach_direct(Duration::from_secs(1)).await.unwrap();
    assert_eq!(fake.bodies("vm.remove-device").len(), 1);

    vm.attach_direct(&DirectPath::Vf { pci: PCI.into() })
        .await
        .unwrap();
    assert_eq!(
        fake.bodies("vm.add-device"),
        [json!({"path": "/sys/bus/pci/devices/0000:3b:02.1/", "id": "primary0"})]
    );
    assert!(vm.status().await.unwrap().direct_attached);

    // The destination: a second fake, an empty VMM receiving on a unix socket.
    let dst_dir = run_dir("life-dst");
    let dst_opts = opts(&dst_dir);
    let dst_fake = fake_for(&dst_opts).await;
    let mut dst = ChVm::new(spec(true), dst_opts).unwrap();
    dst.start().await.unwrap();
    let uri = format!("unix:{}", dst_dir.join("migrate.sock").display());
    dst.receive_migration(&uri).await.unwrap();
    let config = fake.config().expect("the source's VM");

    let seen = Mutex::new(Vec::new());
    let progress = |p: &MigrationProgress| seen.lock().unwrap().push(p.status.clone());
    let summary = vm.migrate_out(&uri, &progress).await.unwrap();
    assert_eq!(
        fake.bodies("vm.send-migration"),
        [json!({"destination_url": uri, "local": true})]
    );
    assert_eq!(*seen.lock().unwrap(), ["active", "completed"]);
    assert_eq!(summary.downtime_ms, None);
    next_event(&mut events, |e| {
        *e == VmEvent::Migration {
            status: "completed".into(),
        }
    })
    .await;
    // The source VMM exits after a migration, as cloud-hypervisor's does.
    assert!(fake.exited());
    assert_eq!(vm.status().await.unwrap().state, VmState::Migrated);
    vm.stop(Duration::from_secs(1)).await.unwrap();
    // The destination runs the VM with the source's config, hot-plugs included.
    wait_state(&dst, VmState::Running).await;
    assert_eq!(dst_fake.config(), Some(config));
    assert!(dst.status().await.unwrap().direct_attached);
    assert!(
        !dst_dir.join("migrate.sock").exists(),
        "removed once connected"
    );
}

/// Polls `vm`'s status until it is `want` (3 s at most).
async fn wait_state(vm: &ChVm, want: VmState) {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let state = vm.status().await.expect("status").state;
        if state == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "VM {state:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A second fake with a booted VM, as a migration source; its API.
async fn source_fake(test: &str) -> (FakeChServer, ChApi, Value) {
    let dir = run_dir(test);
    let fake = FakeChServer::start(dir.join("src.sock"))
        .await
        .expect("fake API server");
    fake.set_event_file(dir.join("src.events"));
    let api = ChApi::new("vm1", dir.join("src.sock"), Duration::from_secs(5));
    let config = json!({
        "payload": {"kernel": "/boot/vmlinux"},
        "memory": {"size": 268_435_456, "shared": true},
        "net": [{"mac": "52:54:00:aa:bb:01", "vhost_user": true,
                 "vhost_socket": "/run/accelnet/vm1.vhost", "id": "synth0"}],
    });
    api.create_json(&config).await.expect("created");
    api.boot().await.expect("booted");
    (fake, api, config)
}

fn send_to(uri: &str) -> SendMigrationData {
    SendMigrationData {
        destination_url: uri.to_owned(),
        local: Some(uri.starts_with("unix:")),
    }
}

/// The `source/event` names in an event-monitor file.
fn event_names(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    serde_json::Deserializer::from_slice(&text)
        .into_iter::<Value>()
        .map(|r| {
            let r = r.expect("event records are JSON");
            format!(
                "{}/{}",
                r["source"].as_str().expect("source"),
                r["event"].as_str().expect("event")
            )
        })
        .collect()
}

/// Destination side and stop, against the fake API server: the VM comes from a
/// second fake over a unix socket.
#[tokio::test]
async fn fake_api_receive_migration_then_stop() {
    let dir = run_dir("recv");
    let o = opts(&dir);
    let fake = fake_for(&o).await;
    let mut vm = ChVm::new(spec(true), o.clone()).unwrap();
    vm.start().await.unwrap();
    // An incoming VM is not created: the migration brings it.
    assert_eq!(fake.endpoints(), ["vmm.ping"]);
    assert_eq!(vm.status().await.unwrap().state, VmState::Incoming);
    let mut events = vm.events();

    // A leftover file where the VMM listens (cloud-hypervisor would not bind
    // over it): the driver removes it.
    let sock = dir.join("migrate.sock");
    std::fs::write(&sock, "stale").unwrap();
    let uri = format!("unix:{}", sock.display());
    vm.receive_migration(&uri).await.unwrap();
    assert_eq!(
        fake.bodies("vm.receive-migration"),
        [json!({"receiver_url": uri})]
    );
    // Until the migration is in, cloud-hypervisor answers nothing; the driver's
    // status does not ask it.
    assert_eq!(vm.status().await.unwrap().state, VmState::Incoming);
    let short = ChApi::new("vm1", o.api_socket("vm1"), Duration::from_millis(300));
    let e = short.ping().await.unwrap_err();
    assert!(matches!(e, VmmError::Timeout { .. }), "{e:?}");
    assert_eq!(fake.phase(), FakeVmPhase::NotCreated);

    let (src, src_api, config) = source_fake("recv-src").await;
    src_api.send_migration(&send_to(&uri)).await.unwrap();

    assert!(src.exited(), "the source VMM exits once the VM migrated");
    assert_eq!(src.config(), None);
    wait_state(&vm, VmState::Running).await;
    assert_eq!(fake.config(), Some(config));
    for status in ["setup", "active", "completed"] {
        next_event(&mut events, |e| {
            *e == VmEvent::Migration {
                status: status.into(),
            }
        })
        .await;
    }
    assert_eq!(
        event_names(&dir.join("vm1.events")),
        [
            "vm/migration-receive-ready",
            "vm/migration-receive-started",
            "vm/migration-receive-finished"
        ]
    );
    // The ping that waited was answered after the migration.
    assert_eq!(
        fake.endpoints()[..4],
        ["vmm.ping", "vm.info", "vm.receive-migration", "vmm.ping"]
    );

    vm.stop(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        fake.endpoints()[fake.endpoints().len() - 2..],
        ["vm.shutdown", "vmm.shutdown"]
    );
    assert!(fake.exited());
    assert_eq!(vm.status().await.unwrap().state, VmState::Stopped);
    // Stopping a stopped VM is not an error.
    vm.stop(Duration::from_millis(200)).await.unwrap();
}

#[tokio::test]
async fn fake_api_add_device_failure_is_a_command_error_with_endpoint_and_body() {
    let dir = run_dir("adderr");
    let o = opts(&dir);
    let fake = fake_for(&o).await;
    let mut s = spec(false);
    s.direct = None;
    let mut vm = ChVm::new(s, o).unwrap();
    vm.start().await.unwrap();
    fake.fail_next(
        "vm.add-device",
        500,
        "Failed to add VFIO device: no IOMMU group",
    );
    let e = vm
        .attach_direct(&DirectPath::Vf { pci: PCI.into() })
        .await
        .unwrap_err();
    match &e {
        VmmError::Command {
            command, message, ..
        } => {
            assert_eq!(command, "vm.add-device");
            assert!(message.contains("500"), "{message}");
            assert!(message.contains("no IOMMU group"), "{message}");
        }
        other => panic!("expected Command, got {other:?}"),
    }
    assert!(e.to_string().contains("vm1"));
    assert!(!vm.status().await.unwrap().direct_attached);
}

#[tokio::test]
async fn fake_api_status_codes_follow_cloud_hypervisor() {
    let dir = run_dir("codes");
    let o = opts(&dir);
    let fake = fake_for(&o).await;
    let api = ChApi::new("vm1", o.api_socket("vm1"), Duration::from_secs(2));
    let code = |r: Result<(), VmmError>| match r {
        Ok(()) => "ok".to_owned(),
        Err(VmmError::Command { message, .. }) => message[5..8].to_owned(),
        Err(e) => panic!("{e}"),
    };
    assert_eq!(code(api.boot().await), "404", "boot before create");
    assert_eq!(api.info().await.unwrap(), None);
    assert_eq!(
        code(
            api.create_json(&json!({"cpus": {"boot_vcpus": 1, "max_vcpus": 1}}))
                .await
        ),
        "400",
        "no payload"
    );
    let bad_net = json!({"payload": {"kernel": "/k"}, "memory": {"size": 1 << 30, "shared": true},
        "net": [{"vhost_user": true, "mac": "52:54:00:00:00:01"}]});
    assert_eq!(
        code(api.create_json(&bad_net).await),
        "400",
        "no vhost_socket"
    );
    let not_shared = json!({"payload": {"kernel": "/k"}, "memory": {"size": 1 << 30},
        "net": [{"vhost_user": true, "vhost_socket": "/s"}]});
    assert_eq!(
        code(api.create_json(&not_shared).await),
        "400",
        "no shared memory"
    );
    let good = json!({"payload": {"kernel": "/k"}, "memory": {"size": 1 << 30, "shared": true},
        "devices": [{"path": "/sys/bus/pci/devices/0000:3b:02.1/", "id": "primary0"}]});
    assert_eq!(code(api.create_json(&good).await), "ok");
    assert_eq!(code(api.create_json(&good).await), "500", "already created");
    assert_eq!(code(api.shutdown().await), "500", "not running");
    assert_eq!(fake.phase(), FakeVmPhase::Created);
    // Cold add (not booted) answers 204.
    let dev = vmm_plugin::ch::api::DeviceConfig {
        path: Some("/sys/bus/pci/devices/0000:3b:02.2/".into()),
        id: Some("extra".into()),
    };
    assert_eq!(api.add_device(&dev).await.unwrap(), None);
    assert_eq!(code(api.boot().await), "ok");
    assert_eq!(code(api.boot().await), "500", "already booted");
    // Hot add answers 200 with PciDeviceInfo; same id → 409; no path → 400.
    let dev2 = vmm_plugin::ch::api::DeviceConfig {
        path: Some("/sys/bus/pci/devices/0000:3b:02.3/".into()),
        id: Some("extra2".into()),
    };
    let info = api.add_device(&dev2).await.unwrap().unwrap();
    assert_eq!(info.id, "extra2");
    let r = api.add_device(&dev2).await.map(drop);
    assert_eq!(code(r), "409");
    let r = api
        .add_device(&vmm_plugin::ch::api::DeviceConfig::default())
        .await
        .map(drop);
    assert_eq!(code(r), "400");
    assert_eq!(code(api.remove_device("nope").await), "404", "unknown id");
    // add-net: vhost-user with a socket hot-plugs.
    let net = vmm_plugin::ch::api::NetConfig {
        vhost_user: true,
        vhost_socket: Some("/run/x.vhost".into()),
        vhost_mode: Some("Client".into()),
        num_queues: Some(2),
        mac: Some("52:54:00:00:00:02".into()),
        id: None,
    };
    let info = api.add_net(&net).await.unwrap().unwrap();
    assert_eq!(info.id, "_net0");
    assert_eq!(code(api.pause().await), "ok");
    assert_eq!(api.info().await.unwrap().unwrap().state, "Paused");
    assert_eq!(code(api.resume().await), "ok");
    assert_eq!(code(api.resume().await), "500", "not paused");
    assert_eq!(api.ping().await.unwrap().version, "v48.0-fake");
    // Unknown route → 404, wrong method → 400.
    let r = api.raw(hyper::Method::GET, "vm.nope", None).await.unwrap();
    assert_eq!(r.status, 404);
    let r = api.raw(hyper::Method::GET, "vm.boot", None).await.unwrap();
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn fake_api_missing_socket_is_a_clear_error() {
    let dir = run_dir("missing");
    let o = opts(&dir);
    let mut vm = ChVm::new(spec(false), o).unwrap();
    let e = vm.start().await.unwrap_err();
    assert!(matches!(e, VmmError::Exited { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("does not exist"), "{msg}");
    assert!(msg.contains("vm1.sock"), "{msg}");
    // status of a VM whose VMM is gone: Stopped.
    assert_eq!(vm.status().await.unwrap().state, VmState::Stopped);
}

#[tokio::test]
async fn fake_api_garbage_socket_is_a_protocol_error() {
    let dir = run_dir("garbage");
    let o = opts(&dir);
    let listener = tokio::net::UnixListener::bind(o.api_socket("vm1")).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = s
                .write_all(b"SSH-2.0-OpenSSH_9.2\r\nnot http at all\r\n\r\n")
                .await;
        }
    });
    let mut vm = ChVm::new(spec(false), o).unwrap();
    let e = vm.start().await.unwrap_err();
    assert!(matches!(e, VmmError::Protocol { .. }), "{e:?}");
    assert!(
        e.to_string().contains("not a cloud-hypervisor API socket"),
        "{e}"
    );
}

#[tokio::test]
async fn fake_api_standin_is_a_spec_error_on_cloud_hypervisor() {
    let dir = run_dir("standin");
    let o = opts(&dir);
    let standin = DirectPath::Standin {
        tap: "tap-vm1".into(),
        model: StandinModel::Igb,
    };
    let mut s = spec(false);
    s.direct = Some(standin.clone());
    let e = ChVm::new(s, o.clone()).unwrap_err();
    assert!(matches!(e, VmmError::Spec { .. }), "{e:?}");
    assert!(e.to_string().contains("QEMU-only"), "{e}");

    let fake = fake_for(&o).await;
    let mut vm = ChVm::new(spec(false), o).unwrap();
    vm.start().await.unwrap();
    let e = vm.attach_direct(&standin).await.unwrap_err();
    assert!(matches!(e, VmmError::Spec { .. }), "{e:?}");
    assert!(fake.bodies("vm.add-device").is_empty());
}

#[tokio::test]
async fn fake_api_request_timeout() {
    let dir = run_dir("timeout");
    let mut o = opts(&dir);
    o.request_timeout = Duration::from_millis(200);
    let fake = fake_for(&o).await;
    let mut vm = ChVm::new(spec(false), o).unwrap();
    vm.start().await.unwrap();
    fake.delay_next("vm.info", Duration::from_secs(2));
    let e = vm.status().await.unwrap_err();
    match &e {
        VmmError::Timeout { what, after, .. } => {
            assert!(what.contains("vm.info"), "{what}");
            assert_eq!(*after, Duration::from_millis(200));
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn fake_api_detach_waits_for_the_guest_and_times_out() {
    let dir = run_dir("detach");
    let o = opts(&dir);
    let fake = fake_for(&o).await;
    let mut vm = ChVm::new(spec(false), o).unwrap();
    vm.start().await.unwrap();
    // The guest releases the VF after 300 ms: detach waits for it.
    fake.set_removal_delay(Some(Duration::from_millis(300)));
    vm.detach_direct(Duration::from_secs(3)).await.unwrap();
    assert!(!vm.status().await.unwrap().direct_attached);
    // A guest that never releases it: Timeout.
    vm.attach_direct(&DirectPath::Vf { pci: PCI.into() })
        .await
        .unwrap();
    fake.set_removal_delay(Some(Duration::from_secs(60)));
    let e = vm
        .detach_direct(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(e, VmmError::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("primary0"), "{e}");
}

#[tokio::test]
async fn fake_api_failed_migration_and_no_cancel_endpoint() {
    let dir = run_dir("migfail");
    let o = opts(&dir);
    let fake = fake_for(&o).await;
    let mut vm = ChVm::new(spec(false), o).unwrap();
    vm.start().await.unwrap();
    fake.set_migration_fails(true);
    let e = vm
        .migrate_out("tcp:10.0.0.2:4444", &|_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, VmmError::Migration { .. }), "{e:?}");
    assert_eq!(
        fake.bodies("vm.send-migration"),
        [json!({"destination_url": "tcp:10.0.0.2:4444", "local": false})]
    );
    assert_eq!(vm.status().await.unwrap().state, VmState::Running);
    // A refused send-migration (500) is a Migration error with the VMM's message.
    fake.fail_next("vm.send-migration", 500, "Error sending migration: boom");
    let e = vm.migrate_out("unix:/y", &|_| {}).await.unwrap_err();
    assert!(e.to_string().contains("boom"), "{e}");

    let e = vm.cancel_migration().await.unwrap_err();
    assert!(matches!(e, VmmError::Command { .. }), "{e:?}");
    assert!(e.to_string().contains("no endpoint to cancel"), "{e}");
}

#[tokio::test]
async fn fake_api_attach_to_a_running_vmm() {
    let dir = run_dir("attach");
    let o = opts(&dir);
    let fake = fake_for(&o).await;
    let mut first = ChVm::new(spec(false), o.clone()).unwrap();
    first.start().await.unwrap();
    drop(first);
    let vm = ChVm::attach(spec(false), o, None).await.unwrap();
    let st = vm.status().await.unwrap();
    assert_eq!(st.state, VmState::Running);
    assert!(st.direct_attached);
    assert_eq!(fake.endpoints().last().map(String::as_str), Some("vm.info"));
}

#[tokio::test]
async fn spawning_a_missing_binary_is_a_binary_error() {
    let dir = run_dir("nobin");
    let mut o = opts(&dir);
    o.spawn = true;
    let mut vm = ChVm::new(spec(false), o).unwrap();
    let e = vm.start().await.unwrap_err();
    assert!(matches!(e, VmmError::Binary { .. }), "{e:?}");
    assert!(
        e.to_string().contains("/nonexistent/cloud-hypervisor"),
        "{e}"
    );
}

fn script(dir: &std::path::Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("cloud-hypervisor");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A stand-in `cloud-hypervisor` script (no KVM here) that exits at once: the
/// start fails naming the exit status and the log file.
#[tokio::test]
async fn spawned_vmm_exiting_early_is_an_exited_error() {
    let dir = run_dir("early");
    let mut o = opts(&dir);
    o.spawn = true;
    o.binary = script(&dir, "echo \"$@\" >&2; exit 3");
    let mut vm = ChVm::new(spec(false), o.clone()).unwrap();
    let e = vm.start().await.unwrap_err();
    assert!(matches!(e, VmmError::Exited { .. }), "{e:?}");
    assert!(e.to_string().contains("vm1.log"), "{e}");
    let log = std::fs::read_to_string(o.log_file("vm1")).unwrap();
    assert!(log.contains("--api-socket path="), "{log}");
}

/// A stand-in `cloud-hypervisor` script that never opens its API socket: the start
/// times out, and stop kills the process group after the grace period.
#[tokio::test]
async fn spawned_vmm_that_never_answers_times_out_and_is_killed() {
    let dir = run_dir("hang");
    let mut o = opts(&dir);
    o.spawn = true;
    o.start_timeout = Duration::from_millis(300);
    o.binary = script(&dir, "sleep 30 & wait");
    let mut vm = ChVm::new(spec(false), o).unwrap();
    let e = vm.start().await.unwrap_err();
    assert!(matches!(e, VmmError::Timeout { .. }), "{e:?}");
    let pid = vm.pid().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let mut events = vm.events();
    vm.stop(Duration::from_millis(200)).await.unwrap();
    assert_eq!(vm.status().await.unwrap().state, VmState::Stopped);
    let ev = next_event(&mut events, |e| matches!(e, VmEvent::Shutdown { .. })).await;
    assert!(matches!(ev, VmEvent::Shutdown { reason } if reason.contains("signal")));
}

/// A destination fake receiving on `uri` (in the background, as cloud-hypervisor's
/// `vm.receive-migration` answers only at the end); its API socket's answer.
async fn receiving_fake(
    test: &str,
    uri: &str,
    fault: Option<ReceiveFault>,
) -> (
    FakeChServer,
    PathBuf,
    tokio::task::JoinHandle<Result<(), VmmError>>,
) {
    let dir = run_dir(test);
    let fake = FakeChServer::start(dir.join("dst.sock"))
        .await
        .expect("fake API server");
    fake.set_event_file(dir.join("dst.events"));
    fake.set_receive_fault(fault);
    let api = ChApi::new("vm1", dir.join("dst.sock"), Duration::from_secs(5));
    let data = vmm_plugin::ch::api::ReceiveMigrationData {
        receiver_url: uri.to_owned(),
    };
    let answer = tokio::spawn(async move { api.receive_migration(&data).await });
    // Listening once the event says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while !event_names(&dir.join("dst.events")).contains(&"vm/migration-receive-ready".into()) {
        assert!(std::time::Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (fake, dir, answer)
}

/// The source's VM keeps running, its VMM stays, when the migration fails.
async fn assert_source_kept(src: &FakeChServer, src_api: &ChApi, config: &Value) {
    assert!(!src.exited());
    assert_eq!(src.phase(), FakeVmPhase::Running);
    assert_eq!(src.config().as_ref(), Some(config));
    assert_eq!(
        src_api.info().await.expect("vm.info").expect("a VM").state,
        "Running"
    );
}

#[tokio::test]
async fn fake_api_send_migration_without_a_receiver_fails_and_the_vm_keeps_running() {
    let (src, src_api, config) = source_fake("send-nobody").await;
    let dir = run_dir("send-nobody-dst");
    let uri = format!("unix:{}", dir.join("nobody.sock").display());

    let e = src_api.send_migration(&send_to(&uri)).await.unwrap_err();

    match &e {
        VmmError::Command {
            command, message, ..
        } => {
            assert_eq!(command, "vm.send-migration");
            assert!(message.starts_with("HTTP 500"), "{message}");
            assert!(
                message.contains("Error sending migration: Error connecting to UNIX socket"),
                "{message}"
            );
        }
        other => panic!("want Command, got {other:?}"),
    }
    assert_source_kept(&src, &src_api, &config).await;
    let events = event_names(&run_dir_of(&src).join("src.events"));
    assert_eq!(
        events[events.len() - 2..],
        ["vm/migration-started", "vm/migration-failed"]
    );
    // A URL cloud-hypervisor cannot use is refused before anything starts.
    let e = src_api.send_migration(&send_to("unix:")).await.unwrap_err();
    assert!(
        e.to_string().contains("Could not extract path from URL"),
        "{e}"
    );
    assert_source_kept(&src, &src_api, &config).await;
}

/// The fake's run dir from its API socket.
fn run_dir_of(fake: &FakeChServer) -> PathBuf {
    fake.socket().parent().expect("a run dir").to_path_buf()
}

#[tokio::test]
async fn fake_api_destination_refusing_the_migration_fails_both_sides() {
    let dst_sock = run_dir("refuse-sock").join("m.sock");
    let uri = format!("unix:{}", dst_sock.display());
    let (dst, dst_dir, answer) =
        receiving_fake("refuse-dst", &uri, Some(ReceiveFault::Refuse)).await;
    let (src, src_api, config) = source_fake("refuse-src").await;

    let e = src_api.send_migration(&send_to(&uri)).await.unwrap_err();

    assert!(
        e.to_string()
            .contains("Error completing migration: the destination answered \"error\""),
        "{e}"
    );
    assert_source_kept(&src, &src_api, &config).await;
    let e = answer.await.unwrap().unwrap_err();
    assert!(
        e.to_string()
            .contains("Error receiving migration: Migration was aborted"),
        "{e}"
    );
    // The destination VMM stays up, without a VM, and can take another one.
    assert!(!dst.exited());
    assert_eq!(dst.config(), None);
    let api = ChApi::new("vm1", dst_dir.join("dst.sock"), Duration::from_secs(2));
    assert_eq!(api.info().await.unwrap(), None);
    assert_eq!(
        event_names(&dst_dir.join("dst.events")),
        [
            "vm/migration-receive-ready",
            "vm/migration-receive-started",
            "vm/migration-receive-failed"
        ]
    );
    assert!(
        !dst_sock.exists(),
        "the socket went once the source connected"
    );
}

#[tokio::test]
async fn fake_api_destination_crashing_during_the_migration() {
    let dst_sock = run_dir("crash-sock").join("m.sock");
    let uri = format!("unix:{}", dst_sock.display());
    let (dst, dst_dir, answer) = receiving_fake("crash-dst", &uri, Some(ReceiveFault::Crash)).await;
    let (src, src_api, config) = source_fake("crash-src").await;

    let e = src_api.send_migration(&send_to(&uri)).await.unwrap_err();

    assert!(
        e.to_string()
            .contains("Error completing migration: the destination closed the connection"),
        "{e}"
    );
    assert_source_kept(&src, &src_api, &config).await;
    assert!(dst.crashed() && dst.exited());
    assert!(!dst_dir.join("dst.sock").exists(), "its API socket is gone");
    assert!(!answer.is_finished(), "a dead VMM answers nothing");
    answer.abort();
    assert_eq!(
        event_names(&dst_dir.join("dst.events")),
        ["vm/migration-receive-ready", "vm/migration-receive-started"]
    );
}

#[tokio::test]
async fn fake_api_migration_over_tcp() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("tcp:127.0.0.1:{port}");
    let (dst, _dst_dir, answer) = receiving_fake("tcp-dst", &uri, None).await;
    let (src, src_api, config) = source_fake("tcp-src").await;
    // --local needs a unix socket.
    let mut local = send_to(&uri);
    local.local = Some(true);
    let e = src_api.send_migration(&local).await.unwrap_err();
    assert!(
        e.to_string().contains("only supported with UNIX sockets"),
        "{e}"
    );

    src_api.send_migration(&send_to(&uri)).await.unwrap();

    answer.await.unwrap().unwrap();
    assert!(src.exited());
    assert_eq!(dst.config(), Some(config));
    assert_eq!(dst.phase(), FakeVmPhase::Running);
    // A VMM with a VM takes no migration in.
    let again = ChApi::new("vm1", dst.socket(), Duration::from_secs(2));
    let e = again
        .receive_migration(&vmm_plugin::ch::api::ReceiveMigrationData {
            receiver_url: uri.clone(),
        })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("a VM is already created"), "{e}");
}

#[tokio::test]
async fn fake_api_destination_crashing_right_after_the_migration() {
    let dst_sock = run_dir("crash-after-sock").join("m.sock");
    let uri = format!("unix:{}", dst_sock.display());
    let (dst, dst_dir, answer) =
        receiving_fake("crash-after-dst", &uri, Some(ReceiveFault::CrashAfter)).await;
    let (src, src_api, config) = source_fake("crash-after-src").await;

    src_api.send_migration(&send_to(&uri)).await.unwrap();

    // The source saw a completed migration and is gone; so is the destination.
    assert!(src.exited() && !src.crashed());
    assert_eq!(dst.config(), Some(config));
    assert!(dst.crashed() && dst.exited());
    assert!(!dst_dir.join("dst.sock").exists());
    assert!(!answer.is_finished(), "a dead VMM answers nothing");
    answer.abort();
    assert_eq!(
        event_names(&dst_dir.join("dst.events")),
        [
            "vm/migration-receive-ready",
            "vm/migration-receive-started",
            "vm/migration-receive-finished"
        ]
    );
}
