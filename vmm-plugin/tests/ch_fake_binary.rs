//! The `fake-cloud-hypervisor` binary as a VMM process: cloud-hypervisor needs KVM,
//! which this machine lacks, so [`ChVm`] spawns this sanctioned fake (the fake API
//! server of `vmm_plugin::ch::fake` in its own process) in place of the real VMM,
//! with the command line `ch_argv` builds.
#![cfg(feature = "test-utils")]
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmm_plugin::ch::api::ChApi;
use vmm_plugin::ch::{ChOptions, ChVm, PRIMARY_ID, SYNTHETIC_ID};
use vmm_plugin::{DirectPath, SyntheticNic, VmSpec, VmState, Vmm, VmmError};

const FAKE: &str = env!("CARGO_BIN_EXE_fake-cloud-hypervisor");
const PCI: &str = "0000:3b:02.1";

/// A fresh directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("fake-ch-bin-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills a fake left behind by a failing test.
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

fn spec(dir: &Path) -> VmSpec {
    VmSpec {
        name: "vm1".into(),
        vcpus: 2,
        memory_mib: 256,
        kernel: Some(PathBuf::from("/boot/vmlinux")),
        initrd: None,
        cmdline: None,
        disks: Vec::new(),
        nic: SyntheticNic {
            mac: "52:54:00:aa:bb:01".into(),
            socket: dir.join("net.sock"),
            queue_pairs: 2,
        },
        direct: None,
        console_log: None,
        incoming: false,
    }
}

/// The event-monitor records in `path`, as `source/event`.
fn events(path: &Path) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    serde_json::Deserializer::from_slice(&text)
        .into_iter::<Value>()
        .map(|r| {
            let r = r.expect("event records are JSON objects");
            format!(
                "{}/{}",
                r["source"].as_str().unwrap(),
                r["event"].as_str().unwrap()
            )
        })
        .collect()
}

/// The requests journaled on the fake's output: `(endpoint, body)`.
fn journal(log: &Path) -> Vec<(String, Value)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("journal lines are JSON");
            (
                v["endpoint"].as_str().unwrap().to_owned(),
                v["body"].clone(),
            )
        })
        .collect()
}

fn gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn fake_ch_binary_spawned_by_chvm_runs_create_boot_hotplug_and_stop() {
    let dir = Scratch::new("life");
    let mut opts = ChOptions::new(FAKE, &dir.0);
    opts.request_timeout = Duration::from_secs(5);
    let mut vm = ChVm::new(spec(&dir.0), opts.clone()).unwrap();

    vm.start().await.expect("spawn, create, boot");
    let _guard = KillOnDrop(vm.pid());
    let status = vm.status().await.unwrap();

    assert_eq!(status.state, VmState::Running);
    let pid = status.pid.expect("the fake's pid");
    assert_eq!(vm.api().ping().await.unwrap().pid, Some(i64::from(pid)));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(argv, vmm_plugin::ch::ch_argv(&spec(&dir.0), &opts).unwrap());
    let log = opts.log_file("vm1");
    let requests = journal(&log);
    let endpoints: Vec<&str> = requests.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        endpoints,
        ["vmm.ping", "vm.create", "vm.boot", "vm.info", "vmm.ping"]
    );
    let create = &requests.iter().find(|r| r.0 == "vm.create").unwrap().1;
    assert_eq!(
        create["net"],
        json!([{
            "mac": "52:54:00:aa:bb:01",
            "num_queues": 4,
            "vhost_user": true,
            "vhost_socket": dir.0.join("net.sock").to_str().unwrap(),
            "vhost_mode": "Client",
            "id": SYNTHETIC_ID,
        }])
    );
    let event_file = opts.event_file("vm1");
    assert_eq!(
        events(&event_file),
        ["vmm/starting", "vm/booting", "vm/booted"]
    );

    // The VF in and out, then without the synthetic NIC: NoNic, nothing added.
    let vf = DirectPath::Vf { pci: PCI.into() };
    vm.attach_direct(&vf).await.expect("VF plugged");
    assert!(vm.status().await.unwrap().direct_attached);
    vm.detach_direct(Duration::from_secs(2))
        .await
        .expect("VF out");
    vm.api().remove_device(SYNTHETIC_ID).await.unwrap();
    let adds_before = journal(&log)
        .iter()
        .filter(|r| r.0 == "vm.add-device")
        .count();
    match vm.attach_direct(&vf).await {
        Err(VmmError::NoNic { vm, device }) => {
            assert_eq!((vm.as_str(), device.as_str()), ("vm1", SYNTHETIC_ID));
        }
        other => panic!("want NoNic, got {other:?}"),
    }
    let adds: Vec<Value> = journal(&log)
        .into_iter()
        .filter(|r| r.0 == "vm.add-device")
        .map(|r| r.1)
        .collect();
    assert_eq!(adds.len(), adds_before, "no VF added without the NIC");
    assert_eq!(
        adds,
        [json!({"path": format!("/sys/bus/pci/devices/{PCI}/"), "id": PRIMARY_ID})]
    );

    vm.stop(Duration::from_secs(5)).await.expect("stopped");

    assert_eq!(vm.status().await.unwrap().state, VmState::Stopped);
    assert!(gone(pid), "the fake process exited");
    assert!(!opts.api_socket("vm1").exists(), "API socket removed");
    let ev = events(&event_file);
    assert_eq!(
        &ev[ev.len() - 2..],
        ["vm/shutdown", "vmm/shutdown"],
        "{ev:?}"
    );
    let output = std::fs::read_to_string(&log).unwrap();
    assert!(
        output.ends_with("fake-cloud-hypervisor: exiting (vmm.shutdown)\n"),
        "{output}"
    );
}

#[tokio::test]
async fn fake_ch_binary_exits_on_sigterm_shutting_the_vm_down() {
    let dir = Scratch::new("sigterm");
    let sock = dir.0.join("api.sock");
    let events_path = dir.0.join("vm.events");
    let mut child = Command::new(FAKE)
        .arg("--api-socket")
        .arg(format!("path={}", sock.display()))
        .arg("--event-monitor")
        .arg(format!("path={}", events_path.display()))
        .args(["--kernel", "/boot/vmlinux"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(Some(child.id()));
    let api = ChApi::new("vm1", &sock, Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.ping().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the fake never answered vmm.ping"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api.create_json(&json!({"payload": {"kernel": "/boot/vmlinux"}}))
        .await
        .unwrap();
    api.boot().await.unwrap();

    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the fake ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    assert!(status.success(), "{status}");
    assert!(!sock.exists(), "API socket removed");
    assert_eq!(
        events(&events_path),
        [
            "vmm/starting",
            "vm/booting",
            "vm/booted",
            "vm/shutdown",
            "vmm/shutdown"
        ]
    );
    let out = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("ignoring --kernel /boot/vmlinux"),
        "the ignored option is named: {out}"
    );
    assert!(out.ends_with("exiting (SIGTERM)\n"), "{out}");
}

/// Waits for `child` to exit (5 s at most).
async fn exit_of(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the fake did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn fake_ch_binary_migrates_a_vm_to_another_fake_process() {
    let src_dir = Scratch::new("mig-src");
    let dst_dir = Scratch::new("mig-dst");
    let mut src_opts = ChOptions::new(FAKE, &src_dir.0);
    src_opts.request_timeout = Duration::from_secs(5);
    let mut src = ChVm::new(spec(&src_dir.0), src_opts.clone()).unwrap();
    src.start().await.expect("spawn, create, boot");
    let _src_guard = KillOnDrop(src.pid());
    let mut dst_opts = ChOptions::new(FAKE, &dst_dir.0);
    dst_opts.request_timeout = Duration::from_secs(5);
    let mut incoming = spec(&src_dir.0);
    incoming.incoming = true;
    let mut dst = ChVm::new(incoming, dst_opts.clone()).unwrap();
    dst.start().await.expect("spawn, empty");
    let _dst_guard = KillOnDrop(dst.pid());
    let uri = format!("unix:{}", dst_dir.0.join("migrate.sock").display());
    dst.receive_migration(&uri).await.expect("listening");
    let src_pid = src.pid().unwrap();
    let config = src.api().info().await.unwrap().unwrap().config;

    src.migrate_out(&uri, &|_| {}).await.expect("migrated");

    assert_eq!(src.status().await.unwrap().state, VmState::Migrated);
    // Stopping the migrated-away VMM only waits for (and reaps) its exit.
    src.stop(Duration::from_secs(5)).await.unwrap();
    assert!(gone(src_pid), "the source fake exited by itself");
    let output = std::fs::read_to_string(src_opts.log_file("vm1")).unwrap();
    assert!(
        output.ends_with("fake-cloud-hypervisor: exiting (migrated)\n"),
        "{output}"
    );
    let info = dst.api().info().await.unwrap().expect("the VM came in");
    assert_eq!(info.state, "Running");
    assert_eq!(info.config, config);
    assert_eq!(
        events(&dst_opts.event_file("vm1")),
        [
            "vmm/starting",
            "vm/migration-receive-ready",
            "vm/migration-receive-started",
            "vm/migration-receive-finished"
        ]
    );
    dst.stop(Duration::from_secs(5)).await.expect("stopped");
}

#[tokio::test]
async fn fake_ch_binary_crashes_receiving_a_migration_when_told_to() {
    let dir = Scratch::new("mig-crash");
    let sock = dir.0.join("dst.sock");
    let mut child = Command::new(FAKE)
        .arg("--api-socket")
        .arg(format!("path={}", sock.display()))
        .env("FAKE_CLOUD_HYPERVISOR_RECEIVE_FAULT", "crash")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop(Some(child.id()));
    let api = ChApi::new("vm1", &sock, Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the fake never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let migrate_sock = dir.0.join("migrate.sock");
    let uri = format!("unix:{}", migrate_sock.display());
    let data = vmm_plugin::ch::api::ReceiveMigrationData {
        receiver_url: uri.clone(),
    };
    let answer = tokio::spawn(async move { api.receive_migration(&data).await });
    while !migrate_sock.exists() {
        assert!(Instant::now() < deadline, "the fake never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let src_dir = Scratch::new("mig-crash-src");
    let mut opts = ChOptions::new(FAKE, &src_dir.0);
    opts.request_timeout = Duration::from_secs(5);
    let mut src = ChVm::new(spec(&src_dir.0), opts).unwrap();
    src.start().await.unwrap();
    let _src_guard = KillOnDrop(src.pid());

    let e = src.migrate_out(&uri, &|_| {}).await.unwrap_err();

    assert!(matches!(e, VmmError::Migration { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("the destination closed the connection"),
        "{e}"
    );
    assert_eq!(src.status().await.unwrap().state, VmState::Running);
    let status = exit_of(&mut child).await;
    assert_eq!(status.code(), Some(1));
    let e = answer.await.unwrap().unwrap_err();
    assert!(
        matches!(e, VmmError::Exited { .. } | VmmError::Protocol { .. }),
        "{e:?}"
    );
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("crashed receiving a migration (FAKE_CLOUD_HYPERVISOR_RECEIVE_FAULT)"),
        "{err}"
    );
    src.stop(Duration::from_secs(5)).await.unwrap();
}

#[test]
fn fake_ch_binary_refuses_a_command_line_without_api_socket() {
    let o = Command::new(FAKE)
        .args(["--event-monitor", "path=/tmp/x.events"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--api-socket path=<FILE> is required"),
        "{err}"
    );

    let o = Command::new(FAKE).arg("--version").output().unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "cloud-hypervisor v48.0-fake\n"
    );
}
