//! The `accelnet` binary as a user runs it: exit codes, messages and output formats.
#![allow(clippy::tests_outside_test_module)]

mod common;
use common::{accelnet, stderr, stdout, TempDir};

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use vswitch::api::{PortInfo, PortKind};
use vswitch::control::{ControlHandler, ControlServer};
use vswitch::{PortStats, Request, Response};

#[test]
fn cli_help_lists_switch_commands() {
    let top = accelnet(&["--help"]);
    let switch = accelnet(&["switch", "--help"]);

    assert!(top.status.success(), "{}", stderr(&top));
    assert!(stdout(&top).contains("switch"));
    for cmd in ["run", "ports", "fdb", "stats"] {
        assert!(
            stdout(&switch).contains(cmd),
            "{cmd} missing:\n{}",
            stdout(&switch)
        );
    }
}

#[test]
fn cli_wrong_flag_exits_2_with_usage() {
    let o = accelnet(&["switch", "ports", "--bogus"]);

    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unexpected argument '--bogus'"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("Usage:"), "{}", stderr(&o));
}

#[test]
fn cli_ports_without_switch_exits_1_with_clear_message() {
    let o = accelnet(&["switch", "ports", "--control", "/nonexistent/ctl.sock"]);

    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "accelnet: is the switch running? no control socket at /nonexistent/ctl.sock\n"
    );
}

#[test]
fn cli_run_config_unknown_key_exits_1_naming_file() {
    let dir = TempDir::new("unknown-key");
    let file = dir.path("switch.toml");
    std::fs::write(&file, "[[port]]\nsocket = \"/tmp/a.sock\"\nvlna = 3\n").unwrap();

    let o = accelnet(&["switch", "run", "--config", file.to_str().unwrap()]);

    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.starts_with("accelnet: invalid config file "), "{err}");
    assert!(err.contains(file.to_str().unwrap()), "{err}");
    assert!(err.contains("vlna"), "{err}");
}

#[test]
fn cli_run_vlan_out_of_range_exits_1_naming_port() {
    let dir = TempDir::new("vlan");
    let file = dir.path("switch.toml");
    let sock = dir.path("vm-a.sock");
    std::fs::write(
        &file,
        format!(
            "[[port]]\nsocket = {:?}\nvlan = 5000\n",
            sock.to_str().unwrap()
        ),
    )
    .unwrap();

    let o = accelnet(&["switch", "run", "--config", file.to_str().unwrap()]);

    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("port vm-a: VLAN 5000 out of range"), "{err}");
    assert!(err.contains(file.to_str().unwrap()), "{err}");
    assert!(
        !sock.exists(),
        "no socket should be created for an invalid config"
    );
}

#[test]
fn cli_run_without_ports_exits_1() {
    let o = accelnet(&["switch", "run"]);

    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no ports"), "{}", stderr(&o));
}

#[test]
fn cli_run_unusable_cpu_exits_1_and_leaves_no_socket() {
    let dir = TempDir::new("cpu");
    let sock = dir.path("p.sock");

    let o = accelnet(&[
        "switch",
        "run",
        "--vhost-user-server",
        sock.to_str().unwrap(),
        "--cpu",
        "4095",
    ]);

    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("CPU 4095"), "{}", stderr(&o));
    assert!(!sock.exists(), "socket left behind after a failed start");
}

/// Answers with canned data, or with an error for the FDB.
struct FakeSwitch;

fn drops(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    vswitch::DropReason::ALL
        .iter()
        .map(|r| {
            let n = pairs
                .iter()
                .find(|(k, _)| *k == r.as_str())
                .map_or(0, |p| p.1);
            (r.as_str().to_string(), n)
        })
        .collect()
}

fn canned_stats() -> Vec<PortStats> {
    vec![
        PortStats {
            name: "vm-a".into(),
            rx_packets: 1200,
            rx_bytes: 1_800_000,
            tx_packets: 3,
            tx_bytes: 180,
            drops: drops(&[("no_rx_buffer", 1), ("runt_frame", 3)]),
            queues: Vec::new(),
        },
        PortStats {
            name: "veth0".into(),
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            drops: drops(&[]),
            queues: Vec::new(),
        },
    ]
}

impl ControlHandler for FakeSwitch {
    fn handle(&self, req: &Request) -> Response {
        match req {
            Request::Ports {} => Response::Ports {
                ports: vec![PortInfo {
                    id: 0,
                    name: "vm-a".into(),
                    kind: PortKind::VhostUser,
                    path: "/run/vm-a.sock".into(),
                    vlan: 1,
                    connected: true,
                    acked_features: 0,
                    policy: Default::default(),
                }],
            },
            Request::Fdb {}
            | Request::PortAdd { .. }
            | Request::PortSet { .. }
            | Request::PortDel { .. }
            | Request::Announce { .. }
            | Request::Hold { .. }
            | Request::HoldTake { .. }
            | Request::Inject { .. } => Response::Error {
                message: "fdb is busy".into(),
            },
            Request::Stats {} => Response::Stats {
                ports: canned_stats(),
            },
        }
    }
}

fn fake_switch(dir: &TempDir) -> (ControlServer, String) {
    let path = dir.path("ctl.sock");
    let server =
        ControlServer::start(&path, Arc::new(FakeSwitch)).expect("fresh socket path in a temp dir");
    let path = path.to_str().expect("temp paths are UTF-8").to_string();
    (server, path)
}

#[test]
fn cli_stats_prints_table() {
    let dir = TempDir::new("stats-table");
    let (_server, ctl) = fake_switch(&dir);

    let o = accelnet(&["switch", "stats", "--control", &ctl]);

    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "PORT   RX-PKTS  RX-BYTES  TX-PKTS  TX-BYTES  DROPS\n\
         vm-a      1200   1800000        3       180  runt_frame=3,no_rx_buffer=1\n\
         veth0        0         0        0         0  -\n"
    );
}

#[test]
fn cli_stats_json_is_the_payload() {
    let dir = TempDir::new("stats-json");
    let (_server, ctl) = fake_switch(&dir);

    let o = accelnet(&["switch", "stats", "--control", &ctl, "--json"]);

    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    let expected = serde_json::json!({ "ports": canned_stats() });
    assert_eq!(value, expected);
    assert!(out.starts_with("{\n  \"ports\": [\n"), "not pretty: {out}");
    assert_eq!(value["ports"][0]["drops"]["runt_frame"], 3);
}

#[test]
fn cli_ports_prints_table() {
    let dir = TempDir::new("ports-table");
    let (_server, ctl) = fake_switch(&dir);

    let o = accelnet(&["switch", "ports", "--control", &ctl]);

    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "ID  NAME  KIND        VLAN  CONNECTED  PATH\n\
         \x200  vm-a  vhost-user     1  yes        /run/vm-a.sock\n"
    );
}

#[test]
fn cli_error_response_exits_1_as_refusal() {
    let dir = TempDir::new("refused");
    let (_server, ctl) = fake_switch(&dir);

    let o = accelnet(&["switch", "fdb", "--control", &ctl]);

    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "accelnet: switch refused the request: fdb is busy\n"
    );
    assert_eq!(stdout(&o), "");
}

#[test]
fn cli_ports_on_stale_socket_exits_1() {
    let dir = TempDir::new("stale");
    let path = dir.path("ctl.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());

    let o = accelnet(&["switch", "ports", "--control", path.to_str().unwrap()]);

    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("is the switch running?"),
        "{}",
        stderr(&o)
    );
}

/// `accelnet switch run` in the background; SIGTERM and reaped on drop.
struct RunningSwitch {
    child: std::process::Child,
    stderr: Arc<std::sync::Mutex<String>>,
}

impl RunningSwitch {
    fn start(args: &[&str]) -> RunningSwitch {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_accelnet"))
            .args(["switch", "run"])
            .args(args)
            .env_remove("RUST_LOG")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the accelnet binary runs");
        let text = Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&text);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut t = sink.lock().unwrap_or_else(|e| e.into_inner());
                t.push_str(&line);
                t.push('\n');
            }
        });
        RunningSwitch {
            child,
            stderr: text,
        }
    }

    /// Waits until stderr has a line containing `needle`; returns that line.
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = self
                .stderr
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("accelnet switch run exited ({st}) before printing {needle:?}:\n{text}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} on stderr:\n{text}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for RunningSwitch {
    fn drop(&mut self) {
        // SIGTERM, so the switch shuts down as a user would stop it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .expect("send request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read answer");
    assert!(out.starts_with("HTTP/1."), "{out}");
    out
}

#[test]
fn cli_port_add_del_and_metrics_on_a_running_switch() {
    let dir = TempDir::new("hotplug");
    let ctl = dir.path("ctl.sock");
    let a = dir.path("a.sock");
    let b = dir.path("b.sock");
    let (ctl_s, a_s, b_s) = (
        ctl.to_str().unwrap(),
        a.to_str().unwrap(),
        b.to_str().unwrap(),
    );
    let mut sw = RunningSwitch::start(&[
        "--vhost-user-server",
        a_s,
        "--control",
        ctl_s,
        "--metrics",
        "127.0.0.1:0",
    ]);
    let line = sw.wait_line("metrics on http://");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    sw.wait_line("control socket on");

    let o = accelnet(&[
        "switch",
        "port",
        "add",
        "b",
        "--socket",
        b_s,
        "--vlan",
        "20",
        "--queues",
        "2",
        "--control",
        ctl_s,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("b.sock"), "{}", stdout(&o));
    assert!(b.exists(), "port b's socket was created");
    let o = accelnet(&["switch", "ports", "--control", ctl_s]);
    assert!(stdout(&o).contains(" b "), "{}", stdout(&o));
    let m = scrape(&addr);
    assert!(
        m.contains("accelnet_switch_port_connected{port=\"b\"} 0"),
        "{m}"
    );
    assert!(m.contains("accelnet_switch_ports 2"), "{m}");

    // Refusals: each a clear message and exit 1; the switch keeps running.
    let o = accelnet(&[
        "switch",
        "port",
        "add",
        "b",
        "--socket",
        b_s,
        "--control",
        ctl_s,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
    let o = accelnet(&[
        "switch",
        "port",
        "add",
        "c",
        "--socket",
        "/x/c.sock",
        "--vlan",
        "4095",
        "--control",
        ctl_s,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("VLAN 4095"), "{}", stderr(&o));
    let o = accelnet(&["switch", "port", "del", "zz", "--control", ctl_s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no VM port named zz"), "{}", stderr(&o));
    let o = accelnet(&["switch", "port", "add", "c", "--socket", "--control", ctl_s]);
    assert_eq!(o.status.code(), Some(2), "a missing value is a usage error");

    // Policy at run time: applied and shown, bad values refused by name.
    let o = accelnet(&[
        "switch",
        "port",
        "set",
        "b",
        "--allowed-mac",
        "52:54:00:00:00:0b",
        "--trunk",
        "20,30",
        "--native-vlan",
        "20",
        "--ingress-pps",
        "1000",
        "--max-fdb-entries",
        "4",
        "--control",
        ctl_s,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = accelnet(&["switch", "ports", "--json", "--control", ctl_s]);
    let out = stdout(&o);
    assert!(
        out.contains("52:54:00:00:00:0b") && out.contains("\"max_fdb_entries\": 4"),
        "{out}"
    );
    for (flags, needle) in [
        (&["--ingress-pps", "0"][..], "pps"),
        (&["--trunk", "10,5000"][..], "5000"),
        (
            &["--allowed-mac", "ff:ff:ff:ff:ff:ff"][..],
            "ff:ff:ff:ff:ff:ff",
        ),
    ] {
        let mut args = vec!["switch", "port", "set", "b"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--control", ctl_s]);
        let o = accelnet(&args);
        assert_eq!(o.status.code(), Some(1), "{flags:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{flags:?}: {}", stderr(&o));
    }
    let o = accelnet(&[
        "switch",
        "port",
        "set",
        "b",
        "--native-vlan",
        "3",
        "--control",
        ctl_s,
    ]);
    assert_eq!(o.status.code(), Some(2), "--native-vlan needs --trunk");

    // Announce: no uplink here, so nothing goes out, but the FDB points at b.
    let o = accelnet(&[
        "switch",
        "port",
        "announce",
        "b",
        "--mac",
        "52:54:00:00:00:0b",
        "--control",
        ctl_s,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "port b: announced 52:54:00:00:00:0b out of no uplink (the switch has none)\n"
    );
    let o = accelnet(&["switch", "fdb", "--control", ctl_s, "--json"]);
    assert!(
        stdout(&o).contains("52:54:00:00:00:0b") && stdout(&o).contains("\"b\""),
        "{}",
        stdout(&o)
    );
    for (port, mac, says) in [
        ("zz", "52:54:00:00:00:0b", "no VM port named zz"),
        ("b", "ff:ff:ff:ff:ff:ff", "multicast"),
    ] {
        let o = accelnet(&[
            "switch",
            "port",
            "announce",
            port,
            "--mac",
            mac,
            "--control",
            ctl_s,
        ]);
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    }

    let o = accelnet(&["switch", "port", "del", "b", "--control", ctl_s]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!b.exists(), "port b's socket was removed");
    let m = scrape(&addr);
    assert!(!m.contains("port=\"b\""), "{m}");
    assert!(m.contains("accelnet_switch_ports 1"), "{m}");
}

#[test]
fn cli_run_bad_metrics_address_exits_1() {
    let dir = TempDir::new("metrics");
    let sock = dir.path("p.sock");
    let o = accelnet(&[
        "switch",
        "run",
        "--vhost-user-server",
        sock.to_str().unwrap(),
        "--metrics",
        "not-an-address",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not-an-address"), "{}", stderr(&o));
    assert!(!sock.exists());
}
