//! cloud-hypervisor command line and `VmConfig` JSON of a VM spec.

use std::path::PathBuf;

use serde_json::json;
use vmm_plugin::ch::{ch_argv, vm_config_json, ChOptions};
use vmm_plugin::{DirectPath, StandinModel, SyntheticNic, VmSpec, VmmError};

fn spec() -> VmSpec {
    VmSpec {
        name: "vm1".into(),
        vcpus: 2,
        memory_mib: 512,
        kernel: Some(PathBuf::from("/boot/vmlinux")),
        initrd: Some(PathBuf::from("/boot/initrd")),
        cmdline: Some("console=ttyS0".into()),
        disks: vec![PathBuf::from("/var/lib/vm1.raw")],
        nic: SyntheticNic {
            mac: "52:54:00:12:34:56".into(),
            socket: PathBuf::from("/run/accelnet/vm1.vhost"),
            queue_pairs: 2,
        },
        direct: Some(DirectPath::Vf {
            pci: "0000:3b:02.1".into(),
        }),
        console_log: Some(PathBuf::from("/var/log/vm1.console")),
        incoming: false,
    }
}

#[test]
fn ch_argv_starts_an_empty_vmm_with_api_socket_and_event_monitor() {
    let opts = ChOptions::new("/usr/bin/cloud-hypervisor", "/run/accelnet/vms");
    let argv = ch_argv(&spec(), &opts).unwrap();
    assert_eq!(
        argv,
        [
            "/usr/bin/cloud-hypervisor",
            "--api-socket",
            "path=/run/accelnet/vms/vm1.sock",
            "--event-monitor",
            "path=/run/accelnet/vms/vm1.events",
        ]
    );
}

#[test]
fn vm_config_follows_the_openapi_schema() {
    let config = vm_config_json(&spec()).unwrap();
    assert_eq!(
        config,
        json!({
            "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
            "memory": {"size": 536870912u64, "shared": true},
            "payload": {"kernel": "/boot/vmlinux", "cmdline": "console=ttyS0", "initramfs": "/boot/initrd"},
            "disks": [{"path": "/var/lib/vm1.raw"}],
            "net": [{
                "mac": "52:54:00:12:34:56",
                "num_queues": 4,
                "vhost_user": true,
                "vhost_socket": "/run/accelnet/vm1.vhost",
                "vhost_mode": "Client",
                "id": "synth0"
            }],
            "devices": [{"path": "/sys/bus/pci/devices/0000:3b:02.1/", "id": "primary0"}],
            "serial": {"mode": "File", "file": "/var/log/vm1.console"},
            "console": {"mode": "Off"}
        })
    );
}

#[test]
fn vm_config_without_direct_path_or_console() {
    let mut s = spec();
    s.direct = None;
    s.console_log = None;
    s.disks.clear();
    let config = vm_config_json(&s).unwrap();
    assert!(config.get("devices").is_none());
    assert!(config.get("disks").is_none());
    assert_eq!(config["serial"], json!({"mode": "Null"}));
}

#[test]
fn short_pci_address_gets_the_domain() {
    let mut s = spec();
    s.direct = Some(DirectPath::Vf {
        pci: "3B:02.1".into(),
    });
    let config = vm_config_json(&s).unwrap();
    assert_eq!(
        config["devices"][0]["path"],
        "/sys/bus/pci/devices/0000:3b:02.1/"
    );
}

fn spec_error(s: &VmSpec) -> String {
    match vm_config_json(s) {
        Err(e @ VmmError::Spec { .. }) => e.to_string(),
        other => panic!("expected a Spec error, got {other:?}"),
    }
}

type Edit = Box<dyn Fn(&mut VmSpec)>;

#[test]
fn invalid_specs_are_spec_errors() {
    let cases: Vec<(Edit, &str)> = vec![
        (Box::new(|s| s.vcpus = 0), "vcpus"),
        (Box::new(|s| s.memory_mib = 32), "memory 32 MiB"),
        (Box::new(|s| s.nic.mac = "52:54:00:12:34".into()), "MAC"),
        (Box::new(|s| s.nic.mac = "01:00:5e:00:00:01".into()), "MAC"),
        (Box::new(|s| s.nic.queue_pairs = 0), "queue pairs 0"),
        (Box::new(|s| s.nic.queue_pairs = 9), "queue pairs 9"),
        (Box::new(|s| s.kernel = None), "kernel"),
        (
            Box::new(|s| {
                s.direct = Some(DirectPath::Vf {
                    pci: "garbage".into(),
                })
            }),
            "garbage",
        ),
    ];
    for (edit, want) in cases {
        let mut s = spec();
        edit(&mut s);
        let msg = spec_error(&s);
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        assert!(msg.contains("vm1"), "{msg:?}");
        let opts = ChOptions::new("/usr/bin/cloud-hypervisor", "/run");
        assert!(matches!(ch_argv(&s, &opts), Err(VmmError::Spec { .. })));
    }
}

#[test]
fn standin_direct_path_is_qemu_only() {
    let mut s = spec();
    s.direct = Some(DirectPath::Standin {
        tap: "tap-vm1".into(),
        model: StandinModel::E1000e,
    });
    let msg = spec_error(&s);
    assert!(msg.contains("QEMU-only"), "{msg}");
    assert!(msg.contains("real VF"), "{msg}");
}
