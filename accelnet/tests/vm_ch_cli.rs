//! `accelnet vm ... --vmm cloud-hypervisor` end to end, as a user runs it, against
//! a FAKE cloud-hypervisor: cloud-hypervisor needs KVM, which test machines lack, so
//! these tests (all named `fake_ch_...`) run vmm-plugin's sanctioned mock, the
//! `fake-cloud-hypervisor` binary (its fake REST API server in a process of its own,
//! taking the same command line, writing the same event-monitor records). No guest
//! boots: what is tested is what accelnet asks of the VMM and what it records.
//!
//! The switch is a real `accelnet switch run` (unprivileged: vhost-user ports
//! only), and the VF pool and sysfs tree are temporary directories without VFs.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

mod common;
use common::{accelnet, stderr, stdout, TempDir};

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};
use vmm_plugin::ch::api::ChApi;

const VM: &str = "ch1";

/// The `fake-cloud-hypervisor` binary of vmm-plugin (feature `test-utils`), next
/// to the accelnet binary in the target directory. `cargo test --workspace
/// --all-features` builds it; when it is missing or older than vmm-plugin's
/// sources (e.g. `cargo test -p accelnet`), it is built here with cargo.
fn fake_ch() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let accelnet = Path::new(env!("CARGO_BIN_EXE_accelnet"));
        let bin = accelnet.with_file_name("fake-cloud-hypervisor");
        let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vmm-plugin");
        let sources = newest(&crate_dir.join("src")).max(modified(&crate_dir.join("Cargo.toml")));
        let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
        if built.is_none_or(|t| sources > t) {
            build_fake_ch(accelnet, &bin);
        }
        bin
    })
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> SystemTime {
    let mut t = SystemTime::UNIX_EPOCH;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        t = t.max(if path.is_dir() {
            newest(&path)
        } else {
            modified(&path)
        });
    }
    t
}

fn build_fake_ch(accelnet: &Path, bin: &Path) {
    let profile_dir = accelnet.parent().expect("the accelnet binary is in a dir");
    let target_dir = profile_dir.parent().expect("a profile dir in a target dir");
    let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cmd.args([
        "build",
        "-p",
        "vmm-plugin",
        "--features",
        "test-utils",
        "--bin",
        "fake-cloud-hypervisor",
        "--target-dir",
    ])
    .arg(target_dir);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    let how = "build it with `cargo build -p vmm-plugin --features test-utils --bin \
               fake-cloud-hypervisor` (or run `cargo test --workspace --all-features`)";
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {}: {e}; {how}", bin.display()));
    assert!(
        o.status.success() && bin.exists(),
        "the fake cloud-hypervisor {} could not be built ({}); {how}:\n{}",
        bin.display(),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `accelnet switch run` in the background; SIGTERM and reaped on drop.
struct RunningSwitch {
    child: std::process::Child,
    control: PathBuf,
}

impl RunningSwitch {
    fn start(dir: &TempDir) -> RunningSwitch {
        let control = dir.path("ctl.sock");
        let mut child = Command::new(env!("CARGO_BIN_EXE_accelnet"))
            .args(["switch", "run", "--vhost-user-server"])
            .arg(dir.path("other-vm.sock"))
            .arg("--control")
            .arg(&control)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the accelnet binary runs");
        let text = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&text);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut t = sink.lock().unwrap_or_else(|e| e.into_inner());
                t.push_str(&line);
                t.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let t = text.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if t.contains("control socket on") {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("accelnet switch run exited ({st}):\n{t}");
            }
            assert!(Instant::now() < deadline, "the switch never started:\n{t}");
            std::thread::sleep(Duration::from_millis(20));
        }
        RunningSwitch { child, control }
    }

    /// The switch's VM ports, by `accelnet switch ports --json`.
    fn ports(&self) -> Vec<Value> {
        let o = accelnet(&[
            "switch",
            "ports",
            "--json",
            "--control",
            self.control.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["ports"].as_array().cloned().unwrap_or_default()
    }

    fn port(&self, name: &str) -> Option<Value> {
        self.ports().into_iter().find(|p| p["name"] == name)
    }
}

impl Drop for RunningSwitch {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Kills a fake cloud-hypervisor a failing test left running.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            if alive(pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// accelnet's state for one test: the VM store, VF pool, run dir and an empty
/// sysfs tree (no SR-IOV devices), all in a temp dir.
struct Host {
    dir: TempDir,
}

impl Host {
    fn new(name: &str) -> Host {
        let dir = TempDir::new(name);
        std::fs::create_dir_all(dir.path("sysroot/sys/bus/pci/devices")).unwrap();
        std::fs::write(dir.path("vmlinux"), b"not a kernel: the fake boots nothing").unwrap();
        Host { dir }
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.path("run")
    }

    /// The VM's directory: its vhost-user socket, the fake's API socket, event
    /// file and output.
    fn vm_dir(&self) -> PathBuf {
        self.run_dir().join(VM)
    }

    /// `accelnet vm ARGS... --store .. --pool-dir .. --run-dir .. --sysfs-root ..`
    /// with `env` set.
    fn vm(&self, args: &[&str], env: &[(&str, &Path)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_accelnet"));
        cmd.arg("vm")
            .args(args)
            .arg("--store")
            .arg(self.dir.path("vms.redb"))
            .arg("--pool-dir")
            .arg(self.dir.path("pool"))
            .arg("--run-dir")
            .arg(self.run_dir())
            .arg("--sysfs-root")
            .arg(self.dir.path("sysroot"))
            .env_remove("RUST_LOG")
            .env_remove("ACCELNET_CLOUD_HYPERVISOR");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("the accelnet binary runs")
    }

    /// `accelnet vm launch ch1 --vmm cloud-hypervisor` with a kernel, on `switch`.
    fn launch(&self, switch: &RunningSwitch, extra: &[&str], env: &[(&str, &Path)]) -> Output {
        let kernel = self.dir.path("vmlinux");
        let mut args = vec![
            "launch",
            VM,
            "--vmm",
            "cloud-hypervisor",
            "--kernel",
            kernel.to_str().unwrap(),
            "--switch-control",
            switch.control.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.vm(&args, env)
    }

    /// `accelnet vm list --json`.
    fn list(&self) -> Vec<Value> {
        let o = self.vm(&["list", "--json"], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<Value>(&stdout(&o))
            .unwrap()
            .as_array()
            .cloned()
            .unwrap()
    }

    /// The VM's row in `vm list --json`.
    fn row(&self) -> Value {
        let rows = self.list();
        assert_eq!(rows.len(), 1, "{rows:?}");
        rows[0].clone()
    }

    /// The API requests the fake received, from its output (`<vm>.log`): one JSON
    /// line each, `(endpoint, body)`.
    fn requests(&self) -> Vec<(String, Value)> {
        std::fs::read_to_string(self.vm_dir().join(format!("{VM}.log")))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["endpoint"].as_str().unwrap().to_owned(),
                    v["body"].clone(),
                )
            })
            .collect()
    }

    fn endpoints(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.0).collect()
    }

    /// `GET vm.info` on the fake's API socket, as the VMM reports the VM.
    fn vm_info(&self) -> Value {
        let api = ChApi::new(
            VM,
            self.vm_dir().join(format!("{VM}.sock")),
            Duration::from_secs(5),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let info = rt
            .block_on(api.info())
            .expect("the fake answers vm.info")
            .expect("the VM is created");
        serde_json::to_value(info).unwrap()
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The argv of process `pid`.
fn argv(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The pid in the VM's `vm list` row, checked to be the fake cloud-hypervisor
/// started on the VM's API socket and event file.
fn fake_pid(host: &Host, row: &Value) -> u32 {
    let pid = u32::try_from(row["pid"].as_u64().expect("a running VM has a pid")).unwrap();
    let vm_dir = host.vm_dir();
    assert_eq!(
        argv(pid),
        [
            fake_ch().to_str().unwrap().to_owned(),
            "--api-socket".into(),
            format!("path={}", vm_dir.join(format!("{VM}.sock")).display()),
            "--event-monitor".into(),
            format!("path={}", vm_dir.join(format!("{VM}.events")).display()),
        ],
        "pid {pid} is the fake cloud-hypervisor"
    );
    pid
}

#[test]
fn fake_ch_vm_launch_list_and_stop() {
    let host = Host::new("life");
    let switch = RunningSwitch::start(&host.dir);

    let o = host.launch(&switch, &["--vmm-binary", fake_ch().to_str().unwrap()], &[]);

    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let row = host.row();
    let pid = fake_pid(&host, &row);
    let _guard = KillOnDrop(Some(pid));
    let mac = row["mac"].as_str().unwrap().to_owned();
    let socket = host.vm_dir().join("net.sock");
    assert_eq!(
        stdout(&o),
        format!(
            "VM {VM} running on cloud-hypervisor (pid {pid}), MAC {mac}, 1 queue pair(s)\n  \
             synthetic path: switch port {VM} ({})\n  direct path: none (not accelerated)\n",
            socket.display()
        ),
        "no cloud-hypervisor failover note without a direct path"
    );
    assert_eq!(row["name"], VM);
    assert_eq!(row["vmm"], "cloud-hypervisor");
    assert_eq!(row["phase"], "running");
    assert_eq!(row["direct"], "none");
    assert_eq!(row["queue_pairs"], 1);

    // What cloud-hypervisor was asked: an empty VMM, then the VM with its
    // vhost-user NIC on the switch port and the VM's MAC, booted.
    let requests = host.requests();
    let endpoints: Vec<&str> = requests.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(endpoints, ["vmm.ping", "vm.create", "vm.boot", "vm.info"]);
    let create = &requests[1].1;
    assert_eq!(
        create["net"],
        json!([{
            "mac": mac,
            "num_queues": 2,
            "vhost_user": true,
            "vhost_socket": socket.to_str().unwrap(),
            "vhost_mode": "Client",
            "id": "synth0",
        }])
    );
    assert_eq!(create["memory"], json!({"size": 512 << 20, "shared": true}));
    assert_eq!(
        create["payload"]["kernel"],
        host.dir.path("vmlinux").to_str().unwrap()
    );
    assert_eq!(create["cpus"], json!({"boot_vcpus": 2, "max_vcpus": 2}));
    assert!(create.get("devices").is_none(), "no VF: {create}");
    let info = host.vm_info();
    assert_eq!(info["state"], "Running");
    assert_eq!(info["config"]["net"], create["net"]);
    // The switch serves the NIC: a port named after the VM on its socket, which
    // only the VM's MAC may send from.
    let port = switch.port(VM).expect("the VM's switch port");
    assert_eq!(port["path"], socket.to_str().unwrap());
    assert_eq!(port["policy"]["allowed_macs"], json!([mac]));
    assert!(socket.exists(), "the switch listens on the VM's socket");

    let o = host.vm(&["stop", VM, "--grace", "5"], &[]);

    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), format!("VM {VM} stopped\n"));
    assert!(!alive(pid), "the fake cloud-hypervisor process is gone");
    let endpoints = host.endpoints();
    assert_eq!(
        &endpoints[endpoints.len() - 3..],
        ["vmm.ping", "vm.shutdown", "vmm.shutdown"],
        "{endpoints:?}"
    );
    let log = std::fs::read_to_string(host.vm_dir().join(format!("{VM}.log"))).unwrap();
    assert!(
        log.ends_with("fake-cloud-hypervisor: exiting (vmm.shutdown)\n"),
        "{log}"
    );
    assert!(!host.vm_dir().join(format!("{VM}.sock")).exists());
    let row = host.row();
    assert_eq!(row["phase"], "stopped");
    assert!(row.get("pid").is_none(), "{row}");
    assert!(switch.port(VM).is_none(), "the switch port is removed");
}

#[test]
fn fake_ch_vm_launch_with_vf_standin_is_refused() {
    let host = Host::new("standin");
    let kernel = host.dir.path("vmlinux");
    let ctl = host.dir.path("ctl.sock");

    let o = host.vm(
        &[
            "launch",
            VM,
            "--vmm",
            "cloud-hypervisor",
            "--kernel",
            kernel.to_str().unwrap(),
            "--switch-control",
            ctl.to_str().unwrap(),
            "--vf-standin",
            "tap0",
        ],
        &[("ACCELNET_CLOUD_HYPERVISOR", fake_ch())],
    );

    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "accelnet: --vf-standin is QEMU-only (an emulated NIC on a tap); cloud-hypervisor \
         needs a real VF (--vf)\n"
    );
    assert_eq!(stdout(&o), "");
    assert!(host.list().is_empty(), "nothing recorded");
    assert!(!host.vm_dir().exists(), "nothing started");
}

#[test]
fn fake_ch_vm_launch_with_vf_on_a_host_without_vfs_fails_and_undoes() {
    let host = Host::new("launch-novf");
    let switch = RunningSwitch::start(&host.dir);

    let o = host.launch(
        &switch,
        &["--vf", "auto"],
        &[("ACCELNET_CLOUD_HYPERVISOR", fake_ch())],
    );

    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "accelnet: launch of VM {VM} failed; everything it set up was undone: "
        )),
        "{err}"
    );
    assert!(
        err.contains("cluster_not_enough_resources") && err.contains("no free VF"),
        "{err}"
    );
    let row = host.row();
    assert_eq!(row["phase"], "failed");
    let reason = row["reason"].as_str().unwrap();
    assert!(err.contains(reason), "the reason is recorded: {reason}");
    assert!(row.get("pid").is_none(), "{row}");
    assert!(
        host.endpoints().is_empty(),
        "no cloud-hypervisor was started"
    );
    assert!(switch.port(VM).is_none(), "the switch port was removed");
}

#[test]
fn fake_ch_vm_enable_without_vfs_fails_and_leaves_the_vm_on_the_synthetic_path() {
    let host = Host::new("enable-novf");
    let switch = RunningSwitch::start(&host.dir);
    let o = host.launch(&switch, &[], &[("ACCELNET_CLOUD_HYPERVISOR", fake_ch())]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let before = host.row();
    let pid = fake_pid(&host, &before);
    let _guard = KillOnDrop(Some(pid));
    let requests_before = host.endpoints().len();

    let o = host.vm(&["enable", VM, "--vf", "auto"], &[]);

    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "accelnet: VM {VM}: cluster_not_enough_resources: "
        )) && err.contains("no free VF"),
        "{err}"
    );
    assert!(
        err.ends_with(&format!("accelnet: could not enable {VM}\n")),
        "{err}"
    );
    assert_eq!(stdout(&o), "");
    // The VM runs on as before: same process, synthetic path only.
    assert!(alive(pid), "the VM keeps running");
    let after = host.row();
    assert_eq!(after, before, "the record is unchanged");
    assert_eq!(after["phase"], "running");
    assert_eq!(after["direct"], "none");
    let endpoints = host.endpoints();
    assert_eq!(
        &endpoints[requests_before..],
        ["vmm.ping"],
        "accelnet only checked the VMM answers; nothing was plugged"
    );
    let info = host.vm_info();
    assert_eq!(info["state"], "Running");
    assert!(info["config"].get("devices").is_none(), "{info}");
    assert_eq!(info["config"]["net"][0]["id"], "synth0");
    assert!(switch.port(VM).is_some(), "the switch port stays");

    // Nothing to disable either: the VM has no direct path.
    let o = host.vm(&["disable", VM], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!(
            "VM {VM} is not accelerated (it has no direct path)"
        )),
        "{}",
        stderr(&o)
    );

    let o = host.vm(&["stop", VM, "--grace", "5"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!alive(pid));
}
