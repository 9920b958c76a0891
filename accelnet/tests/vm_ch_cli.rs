//! `accelnet vm ... --vmm cloud-hypervisor` end to end, as a user runs it, against
//! a FAKE cloud-hypervisor: cloud-hypervisor needs KVM, which test machines lack, so
//! these tests (all named `fake_ch_...`) run vmm-plugin's sanctioned mock, the
//! `fake-cloud-hypervisor` binary (its fake REST API server in a process of its own,
//! taking the same command line, writing the same event-monitor records). No guest
//! boots: what is tested is what accelnet asks of the VMM and what it records.
//!
//! The switch is a real `accelnet switch run` (unprivileged: vhost-user ports
//! only), and the VF pool and sysfs tree are temporary directories without VFs.
//! Live migrations (`vm migrate`) go between two such "nodes", each with its own
//! switch and `accelnet node agent`; their fakes hand the VM over the migration
//! socket as cloud-hypervisor does (its config only: no guest, no memory).
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

    /// Launches the VM on the fake cloud-hypervisor (it must succeed): its pid, and
    /// the guard that kills it should the test fail.
    fn launch_fake_ch(&self, switch: &RunningSwitch) -> (u32, KillOnDrop) {
        let o = self.launch(switch, &["--vmm-binary", fake_ch().to_str().unwrap()], &[]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let pid = fake_pid(self, &self.row());
        (pid, KillOnDrop(Some(pid)))
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

    /// The API requests the latest fake received, from its output (`<vm>.log`,
    /// where each fake started appends): one JSON line each, `(endpoint, body)`.
    fn requests(&self) -> Vec<(String, Value)> {
        let log =
            std::fs::read_to_string(self.vm_dir().join(format!("{VM}.log"))).unwrap_or_default();
        let latest = log
            .rfind("fake-cloud-hypervisor: pid ")
            .map_or(log.as_str(), |i| &log[i..]);
        latest
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

/// `accelnet node agent` of a host, on `<host>/agent.sock`, starting incoming VMs
/// with the fake cloud-hypervisor; killed on drop. Its log: `<host>/agent.log`.
struct Agent {
    child: std::process::Child,
    sock: PathBuf,
}

impl Agent {
    /// The agent of `host` on `switch` (its control socket, running or not), with
    /// `env` (which the fakes it starts inherit).
    fn start(host: &Host, name: &str, switch: &Path, env: &[(&str, &str)]) -> Agent {
        let sock = host.dir.path("agent.sock");
        let log = std::fs::File::create(host.dir.path("agent.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_accelnet"));
        cmd.args(["node", "agent", "--listen"])
            .arg(&sock)
            .arg("--switch-control")
            .arg(switch)
            .arg("--vmm-binary")
            .arg(fake_ch())
            .args(["--node", name])
            .arg("--store")
            .arg(host.dir.path("vms.redb"))
            .arg("--pool-dir")
            .arg(host.dir.path("pool"))
            .arg("--run-dir")
            .arg(host.run_dir())
            .arg("--sysfs-root")
            .arg(host.dir.path("sysroot"))
            .env("RUST_LOG", "info")
            .env_remove("ACCELNET_CLOUD_HYPERVISOR")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("the accelnet binary runs");
        let mut agent = Agent { child, sock };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent.sock.exists() {
            if let Ok(Some(st)) = agent.child.try_wait() {
                panic!("the node agent exited ({st}):\n{}", agent.log(host));
            }
            assert!(Instant::now() < deadline, "the node agent never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn log(&self, host: &Host) -> String {
        std::fs::read_to_string(host.dir.path("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `accelnet vm migrate ch1 --to <agent> --no-direct --json` from `from`.
fn migrate(from: &Host, to: &Agent) -> Output {
    from.vm(
        &[
            "migrate",
            VM,
            "--to",
            to.sock.to_str().unwrap(),
            "--no-direct",
            "--json",
        ],
        &[],
    )
}

/// `(step, outcome)` of a migration's JSON report.
fn steps(report: &Value) -> Vec<(String, String)> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"].as_str().unwrap().to_owned(),
                s["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// What a migration without a direct path does: no steer, unplug or plug.
const MIGRATED_STEPS: [(&str, &str); 7] = [
    ("admit", "done"),
    ("steer", "skipped"),
    ("unplug", "skipped"),
    ("migrate", "done"),
    ("announce", "done"),
    ("plug", "skipped"),
    ("release", "done"),
];

/// Migrates ch1 from `from` to `to` (through `agent`, `to`'s) and checks both
/// sides: the VM runs on `to` in a new fake with the config it had, `from` has
/// nothing left; returns the new fake's pid.
fn migrate_and_check(
    from: (&Host, &RunningSwitch, u32),
    to: (&Host, &RunningSwitch, &Agent),
) -> u32 {
    let (src, src_switch, src_pid) = from;
    let (dst, dst_switch, agent) = to;
    let config = src.vm_info()["config"].clone();
    let mac = src.row()["mac"].clone();

    let o = migrate(src, agent);

    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\nagent:\n{}",
        stderr(&o),
        agent.log(dst)
    );
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["migrated"], true, "{report}");
    assert_eq!(report["vm"], VM);
    assert_eq!(report["destination"], agent.sock.to_str().unwrap());
    let want: Vec<(String, String)> = MIGRATED_STEPS
        .iter()
        .map(|(s, o)| ((*s).to_owned(), (*o).to_owned()))
        .collect();
    assert_eq!(steps(&report), want, "{report}");
    assert_eq!(report["warnings"], json!([]), "{report}");
    assert_eq!(
        report["final_state"],
        json!({"runs_on": "destination", "host": agent.sock.to_str().unwrap(), "path": "synthetic"})
    );
    // The source: its VMM exited after the migration, its record and port are gone.
    assert!(!alive(src_pid), "the source's fake exited");
    let log = std::fs::read_to_string(src.vm_dir().join(format!("{VM}.log"))).unwrap();
    assert!(
        log.ends_with("fake-cloud-hypervisor: exiting (migrated)\n"),
        "{log}"
    );
    assert!(src.list().is_empty(), "the source forgot the VM");
    assert!(
        src_switch.port(VM).is_none(),
        "the source's port is removed"
    );
    // The destination: a new fake whose VM is the one that left, running.
    let row = dst.row();
    assert_eq!(row["phase"], "running", "{row}");
    assert_eq!(row["vmm"], "cloud-hypervisor");
    assert_eq!(row["mac"], mac);
    assert_eq!(row["direct"], "none");
    let pid = fake_pid(dst, &row);
    assert_ne!(pid, src_pid);
    let info = dst.vm_info();
    assert_eq!(info["state"], "Running");
    // As on cloud-hypervisor, the config comes as it was, the vhost-user socket
    // path included: the source's (the same on real nodes with the same
    // --run-dir; these two test nodes differ).
    assert_eq!(info["config"], config, "the VM came with its config");
    let requests = dst.requests();
    let endpoints: Vec<&str> = requests.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        endpoints[..2],
        ["vmm.ping", "vm.receive-migration"],
        "an empty VMM took the VM in, nothing created: {endpoints:?}"
    );
    assert!(!endpoints.contains(&"vm.create"), "{endpoints:?}");
    assert_eq!(
        requests[1].1,
        json!({"receiver_url": format!("unix:{}", dst.vm_dir().join("migrate.sock").display())})
    );
    let port = dst_switch.port(VM).expect("the destination's switch port");
    assert_eq!(
        port["path"],
        dst.vm_dir().join("net.sock").to_str().unwrap()
    );
    assert_eq!(port["policy"]["allowed_macs"], json!([mac]));
    pid
}

/// `accelnet vm migrate --vmm cloud-hypervisor` between two nodes, each with its
/// own switch and node agent, and back, against the FAKE cloud-hypervisor
/// (cloud-hypervisor needs KVM): two fake processes hand the VM's config over the
/// agent's migration socket, as cloud-hypervisor's `vm.send-migration` and
/// `vm.receive-migration` do.
#[test]
fn fake_ch_vm_migrate_between_two_nodes_and_back() {
    let a = Host::new("mig-a");
    let b = Host::new("mig-b");
    let switch_a = RunningSwitch::start(&a.dir);
    let switch_b = RunningSwitch::start(&b.dir);
    let agent_a = Agent::start(&a, "node-a", &switch_a.control, &[]);
    let agent_b = Agent::start(&b, "node-b", &switch_b.control, &[]);
    let (pid_a, _guard_a) = a.launch_fake_ch(&switch_a);

    let pid_b = migrate_and_check((&a, &switch_a, pid_a), (&b, &switch_b, &agent_b));
    let _guard_b = KillOnDrop(Some(pid_b));
    let pid_back = migrate_and_check((&b, &switch_b, pid_b), (&a, &switch_a, &agent_a));
    let _guard_back = KillOnDrop(Some(pid_back));

    // Home again, a VM like any other: it stops.
    let o = a.vm(&["stop", VM, "--grace", "5"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!alive(pid_back));
    assert!(switch_a.port(VM).is_none());
}

/// A migration whose destination VMM dies while it takes the VM in (the FAKE
/// cloud-hypervisor, as cloud-hypervisor needs KVM; told to crash by
/// FAKE_CLOUD_HYPERVISOR_RECEIVE_FAULT in the agent's environment): `vm migrate`
/// fails naming the step, the VM runs on at the source with its port, and the
/// destination is cleaned up.
#[test]
fn fake_ch_vm_migrate_fails_when_the_destination_vmm_dies_and_the_vm_stays() {
    let a = Host::new("migfail-a");
    let b = Host::new("migfail-b");
    let switch_a = RunningSwitch::start(&a.dir);
    let switch_b = RunningSwitch::start(&b.dir);
    let agent_b = Agent::start(
        &b,
        "node-b",
        &switch_b.control,
        &[("FAKE_CLOUD_HYPERVISOR_RECEIVE_FAULT", "crash")],
    );
    let (pid, _guard) = a.launch_fake_ch(&switch_a);
    let before = a.row();
    let config = a.vm_info()["config"].clone();

    let o = migrate(&a, &agent_b);

    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "accelnet: migration of VM {VM} failed at the migrate step: the migration failed: "
        )),
        "{err}"
    );
    assert!(
        err.contains("the destination closed the connection"),
        "{err}"
    );
    assert!(
        err.contains("the VM runs on the source host") && err.contains("synthetic path"),
        "{err}"
    );
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["step"], "migrate", "{report}");
    assert_eq!(report["final_state"]["runs_on"], "source", "{report}");
    assert_eq!(report["rollback_errors"], json!([]), "{report}");
    let sock_b = agent_b.sock.to_str().unwrap();
    // The source's hold armed for the switch-over is released to its guest.
    let source = report["final_state"]["host"].as_str().unwrap();
    assert_eq!(
        report["rolled_back"],
        json!([
            format!("destination VMM stopped on {sock_b}"),
            format!("destination switch port removed on {sock_b}"),
            format!("source switch hold released on {source}"),
        ])
    );
    // The VM runs on A as before: same fake, same config, its port, its record.
    assert!(alive(pid), "the source's fake runs on");
    let info = a.vm_info();
    assert_eq!(info["state"], "Running");
    assert_eq!(info["config"], config);
    assert_eq!(a.row(), before, "the record is as before the migration");
    assert!(switch_a.port(VM).is_some(), "the source's port stays");
    // Nothing is left on B: its fake died, its port is gone, its record stopped.
    let rows = b.list();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["phase"], "stopped", "{rows:?}");
    assert!(rows[0].get("pid").is_none(), "{rows:?}");
    assert!(
        switch_b.port(VM).is_none(),
        "the destination's port is removed"
    );
    let log = std::fs::read_to_string(b.vm_dir().join(format!("{VM}.log"))).unwrap();
    assert!(
        log.contains("fake-cloud-hypervisor: crashed receiving a migration"),
        "{log}"
    );
    let crashed = log
        .lines()
        .find_map(|l| l.strip_prefix("fake-cloud-hypervisor: pid "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse::<u32>().ok())
        .expect("the destination fake's pid in its output");
    assert!(!alive(crashed), "no fake left on B");

    // A later migration to a healthy B goes through (the stopped record gives way).
    drop(agent_b);
    let agent_b = Agent::start(&b, "node-b", &switch_b.control, &[]);
    let pid_b = migrate_and_check((&a, &switch_a, pid), (&b, &switch_b, &agent_b));
    let _guard_b = KillOnDrop(Some(pid_b));
    let o = b.vm(&["stop", VM, "--grace", "5"], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// The destination's agent runs but its switch does not: the FAKE
/// cloud-hypervisor VM (cloud-hypervisor needs KVM) is not migrated, the admit
/// step says why, and nothing changes on either node.
#[test]
fn fake_ch_vm_migrate_to_a_node_whose_switch_is_down_is_refused_at_admit() {
    let a = Host::new("migdown-a");
    let b = Host::new("migdown-b");
    let switch_a = RunningSwitch::start(&a.dir);
    let down = b.dir.path("ctl.sock");
    let agent_b = Agent::start(&b, "node-b", &down, &[]);
    let (pid, _guard) = a.launch_fake_ch(&switch_a);
    let before = a.row();
    let requests_before = a.endpoints().len();

    let o = migrate(&a, &agent_b);

    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "accelnet: migration of VM {VM} failed at the admit step: the switch at the \
             destination {}: ",
            agent_b.sock.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("the destination node refused: this node's switch does not run"),
        "{err}"
    );
    assert!(err.contains(&down.display().to_string()), "{err}");
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        steps(&report),
        [("admit".to_owned(), "failed".to_owned())],
        "{report}"
    );
    assert_eq!(report["final_state"]["runs_on"], "source", "{report}");
    assert!(alive(pid), "the VM runs on");
    assert_eq!(a.row(), before, "the record is as before");
    assert_eq!(
        a.endpoints().len(),
        requests_before,
        "the source VMM was not asked anything"
    );
    assert!(switch_a.port(VM).is_some());
    assert!(b.list().is_empty(), "nothing recorded on B");
    assert!(!b.vm_dir().exists(), "nothing started on B");
}

/// The destination VMM dies right after the switch-over (the FAKE
/// cloud-hypervisor, as cloud-hypervisor needs KVM; FAKE_CLOUD_HYPERVISOR_RECEIVE_FAULT
/// `crash-after`): the source's cloud-hypervisor exited once the VM had migrated,
/// so there is nothing to resume there; `vm migrate` says the VM runs nowhere.
#[test]
fn fake_ch_vm_migrate_whose_destination_dies_after_the_switchover_runs_nowhere() {
    let a = Host::new("mignowhere-a");
    let b = Host::new("mignowhere-b");
    let switch_a = RunningSwitch::start(&a.dir);
    let switch_b = RunningSwitch::start(&b.dir);
    let agent_b = Agent::start(
        &b,
        "node-b",
        &switch_b.control,
        &[("FAKE_CLOUD_HYPERVISOR_RECEIVE_FAULT", "crash-after")],
    );
    let (pid, _guard) = a.launch_fake_ch(&switch_a);

    let o = migrate(&a, &agent_b);

    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "accelnet: migration of VM {VM} failed at the migrate step: the migration \
             completed but the VM does not run at the destination {}: VM {VM}: its \
             cloud-hypervisor process is gone",
            agent_b.sock.display()
        )),
        "{err}"
    );
    assert!(err.contains("the VM is not known to run anywhere"), "{err}");
    let report: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(report["final_state"]["runs_on"], "unknown", "{report}");
    let sock_b = agent_b.sock.to_str().unwrap();
    assert_eq!(
        report["rolled_back"],
        json!([
            format!("destination VMM stopped on {sock_b}"),
            format!("destination switch port removed on {sock_b}"),
        ])
    );
    let errors = report["rollback_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{report}");
    let resume = errors[0].as_str().unwrap();
    assert!(
        resume.starts_with("source VM resumed on ")
            && resume.ends_with(&format!(
                ": failed: VM {VM}: cloud-hypervisor exits once its VM migrated away: there \
                 is no VM left here to resume"
            )),
        "{resume}"
    );
    assert!(!alive(pid), "the source's fake exited after the migration");
    let row = a.row();
    assert_eq!(row["phase"], "failed", "{row}");
    assert_eq!(row["reason"], "the VMM process is gone", "{row}");
    assert!(
        switch_b.port(VM).is_none(),
        "the destination's port is removed"
    );
    let rows = b.list();
    assert_eq!(rows[0]["phase"], "stopped", "{rows:?}");
}
