//! QEMU's command line for a [`VmSpec`].
//!
//! Stable ids (QMP refers to them):
//!
//! | id | what |
//! |---|---|
//! | [`STANDBY_ID`] `standby0` | the synthetic virtio-net device (`failover=on`) |
//! | [`PRIMARY_ID`] `primary0` | the direct path: VF (`vfio-pci`) or stand-in NIC |
//! | [`SYNTHETIC_NETDEV`] `hs0` | the vhost-user netdev of the standby |
//! | [`DIRECT_NETDEV`] `hs1` | the tap netdev of a stand-in primary |
//! | [`CHARDEV_ID`] `vhu0` | the vhost-user socket chardev |
//! | [`PRIMARY_PORT`] `root0` | the PCIe root port of the primary (free when detached) |
//! | [`STANDBY_PORT`] `root1` | the PCIe root port of the standby |
//! | `mem` | the shared (memfd) guest RAM backend |

use std::path::{Path, PathBuf};

use crate::{DirectPath, VmSpec, VmmError};
// Shared by both VMMs; re-exported where callers of this module look for them.
pub use crate::{valid_mac, MAX_QUEUE_PAIRS, MIN_MEMORY_MIB};

use super::{Accel, QemuOptions};

/// Device id of the synthetic virtio-net NIC (the failover standby).
pub const STANDBY_ID: &str = "standby0";
/// Device id of the direct path (the failover primary).
pub const PRIMARY_ID: &str = "primary0";
/// Netdev id of the vhost-user backend of the standby.
pub const SYNTHETIC_NETDEV: &str = "hs0";
/// Netdev id of the tap behind a stand-in primary.
pub const DIRECT_NETDEV: &str = "hs1";
/// Chardev id of the vhost-user socket.
pub const CHARDEV_ID: &str = "vhu0";
/// PCIe root port that holds the primary.
pub const PRIMARY_PORT: &str = "root0";
/// PCIe root port that holds the standby.
pub const STANDBY_PORT: &str = "root1";

/// The QMP socket of a VM: `<run_dir>/<name>.qmp`.
pub fn qmp_path(spec: &VmSpec, opts: &QemuOptions) -> PathBuf {
    opts.run_dir.join(format!("{}.qmp", spec.name))
}

/// QEMU's log (its stdout and stderr): `<run_dir>/<name>.log`.
pub fn log_path(spec: &VmSpec, opts: &QemuOptions) -> PathBuf {
    opts.run_dir.join(format!("{}.log", spec.name))
}

/// A value inside a QEMU option list: commas are doubled.
fn opt_value(v: &str) -> String {
    v.replace(',', ",,")
}

fn path_value(p: &Path) -> String {
    opt_value(&p.to_string_lossy())
}

/// Checks what QEMU cannot check well itself (or only with an obscure message).
pub fn validate(spec: &VmSpec) -> Result<(), VmmError> {
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || spec.name.starts_with('.')
    {
        return Err(spec.error(
            "the VM name must be non-empty and use only letters, digits, '-', '_' and '.'",
        ));
    }
    spec.check_sizes()?;
    for (what, file) in [("kernel", &spec.kernel), ("initrd", &spec.initrd)] {
        if let Some(f) = file {
            if !f.is_file() {
                return Err(spec.error(format!("{what} {} is not a file", f.display())));
            }
        }
    }
    if spec.kernel.is_none() && (spec.initrd.is_some() || spec.cmdline.is_some()) {
        return Err(spec.error("initrd or cmdline given without a kernel"));
    }
    for d in &spec.disks {
        if !d.exists() {
            return Err(spec.error(format!("disk {} is missing", d.display())));
        }
    }
    match &spec.direct {
        Some(DirectPath::Standin { tap, .. })
            if tap.is_empty() || tap.len() > 15 || tap.contains([',', '/', ' ']) =>
        {
            return Err(spec.error(format!("bad tap name {tap:?}")));
        }
        Some(DirectPath::Vf { pci }) if pci.is_empty() || pci.contains(',') => {
            return Err(spec.error(format!("bad VF PCI address {pci:?}")));
        }
        _ => {}
    }
    Ok(())
}

/// The `-device` value of the primary (without the leading driver for QMP use, see
/// [`primary_qmp_args`]).
fn primary_device(spec: &VmSpec, direct: &DirectPath) -> String {
    match direct {
        DirectPath::Standin { model, .. } => format!(
            "{},id={PRIMARY_ID},netdev={DIRECT_NETDEV},bus={PRIMARY_PORT},mac={},\
             failover_pair_id={STANDBY_ID},romfile=",
            model.qemu_device(),
            spec.nic.mac
        ),
        DirectPath::Vf { pci } => format!(
            "vfio-pci,host={pci},id={PRIMARY_ID},bus={PRIMARY_PORT},failover_pair_id={STANDBY_ID}"
        ),
    }
}

/// The `netdev_add` arguments of a stand-in's tap (None for a VF).
pub fn direct_netdev_qmp_args(direct: &DirectPath) -> Option<serde_json::Value> {
    match direct {
        DirectPath::Standin { tap, .. } => Some(serde_json::json!({
            "type": "tap",
            "id": DIRECT_NETDEV,
            "ifname": tap,
            "script": "no",
            "downscript": "no",
        })),
        DirectPath::Vf { .. } => None,
    }
}

/// The `device_add` arguments of the primary.
pub fn primary_qmp_args(spec: &VmSpec, direct: &DirectPath) -> serde_json::Value {
    match direct {
        DirectPath::Standin { model, .. } => serde_json::json!({
            "driver": model.qemu_device(),
            "id": PRIMARY_ID,
            "netdev": DIRECT_NETDEV,
            "bus": PRIMARY_PORT,
            "mac": spec.nic.mac,
            "failover_pair_id": STANDBY_ID,
            "romfile": "",
        }),
        DirectPath::Vf { pci } => serde_json::json!({
            "driver": "vfio-pci",
            "host": pci,
            "id": PRIMARY_ID,
            "bus": PRIMARY_PORT,
            "failover_pair_id": STANDBY_ID,
        }),
    }
}

/// Builds QEMU's argv (without the binary) for `spec`, after [`validate`].
pub fn qemu_argv(spec: &VmSpec, opts: &QemuOptions) -> Result<Vec<String>, VmmError> {
    validate(spec)?;
    let accel = opts.accel.unwrap_or_else(Accel::detect);
    let mut a: Vec<String> = Vec::new();
    let mut push = |k: &str, v: String| {
        a.push(k.to_string());
        a.push(v);
    };
    push("-name", spec.name.clone());
    push("-machine", "q35,memory-backend=mem".into());
    push("-accel", accel.as_str().into());
    push(
        "-cpu",
        match accel {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
        .into(),
    );
    push("-smp", spec.vcpus.to_string());
    push("-m", format!("{}M", spec.memory_mib));
    push(
        "-object",
        format!(
            "memory-backend-memfd,id=mem,size={}M,share=on",
            spec.memory_mib
        ),
    );
    if let Some(k) = &spec.kernel {
        push("-kernel", k.to_string_lossy().into_owned());
    }
    if let Some(i) = &spec.initrd {
        push("-initrd", i.to_string_lossy().into_owned());
    }
    if let Some(c) = &spec.cmdline {
        push("-append", c.clone());
    }
    for (i, d) in spec.disks.iter().enumerate() {
        push(
            "-drive",
            format!(
                "file={},if=none,id=disk{i},cache=none,aio=threads",
                path_value(d)
            ),
        );
        push("-device", format!("virtio-blk-pci,drive=disk{i},id=blk{i}"));
    }
    // Two root ports: the primary's (root0, free while detached) and the standby's.
    push(
        "-device",
        format!("pcie-root-port,id={PRIMARY_PORT},bus=pcie.0,chassis=1,slot=1,addr=0x3"),
    );
    push(
        "-device",
        format!("pcie-root-port,id={STANDBY_PORT},bus=pcie.0,chassis=2,slot=2,addr=0x4"),
    );
    let mut chardev = format!(
        "socket,id={CHARDEV_ID},path={}",
        path_value(&spec.nic.socket)
    );
    if let Some(ms) = opts.chardev_reconnect_ms {
        chardev.push_str(&format!(",reconnect-ms={ms}"));
    }
    push("-chardev", chardev);
    let q = spec.nic.queue_pairs;
    let mut netdev = format!("vhost-user,id={SYNTHETIC_NETDEV},chardev={CHARDEV_ID}");
    if q > 1 {
        netdev.push_str(&format!(",queues={q}"));
    }
    push("-netdev", netdev);
    let mut standby = format!(
        "virtio-net-pci,netdev={SYNTHETIC_NETDEV},id={STANDBY_ID},mac={},failover=on,bus={STANDBY_PORT}",
        spec.nic.mac
    );
    if q > 1 {
        // One vector per queue, plus config and control.
        standby.push_str(&format!(",mq=on,vectors={}", 2 * u32::from(q) + 2));
    }
    push("-device", standby);
    match &spec.direct {
        Some(d @ DirectPath::Standin { tap, .. }) => {
            push(
                "-netdev",
                format!("tap,id={DIRECT_NETDEV},ifname={tap},script=no,downscript=no"),
            );
            push("-device", primary_device(spec, d));
        }
        Some(d @ DirectPath::Vf { .. }) => push("-device", primary_device(spec, d)),
        None => {}
    }
    push(
        "-qmp",
        format!(
            "unix:{},server=on,wait=off",
            path_value(&qmp_path(spec, opts))
        ),
    );
    push(
        "-serial",
        match &spec.console_log {
            Some(p) => format!("file:{}", p.to_string_lossy()),
            None => "null".into(),
        },
    );
    push("-display", "none".into());
    push("-monitor", "none".into());
    if spec.incoming {
        push("-incoming", "defer".into());
    }
    a.push("-nodefaults".into());
    a.extend(opts.extra_args.iter().cloned());
    Ok(a)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{StandinModel, SyntheticNic};

    fn spec() -> VmSpec {
        VmSpec {
            name: "vm1".into(),
            vcpus: 1,
            memory_mib: 256,
            kernel: None,
            initrd: None,
            cmdline: None,
            disks: vec![],
            nic: SyntheticNic {
                mac: "52:54:00:00:00:0a".into(),
                socket: "/run/sw/p1.sock".into(),
                queue_pairs: 1,
            },
            direct: None,
            console_log: None,
            incoming: false,
        }
    }

    fn opts() -> QemuOptions {
        let mut o = QemuOptions::new("/run/vms");
        o.accel = Some(Accel::Tcg);
        o.chardev_reconnect_ms = Some(500);
        o
    }

    /// The value after option `key`, the n-th time it appears.
    fn values(argv: &[String], key: &str) -> Vec<String> {
        argv.windows(2)
            .filter(|w| w[0] == key)
            .map(|w| w[1].clone())
            .collect()
    }

    #[test]
    fn base_command_line() {
        let a = qemu_argv(&spec(), &opts()).unwrap();
        assert_eq!(values(&a, "-machine"), ["q35,memory-backend=mem"]);
        assert_eq!(values(&a, "-accel"), ["tcg"]);
        assert_eq!(values(&a, "-cpu"), ["max"]);
        assert_eq!(values(&a, "-smp"), ["1"]);
        assert_eq!(values(&a, "-m"), ["256M"]);
        assert_eq!(
            values(&a, "-object"),
            ["memory-backend-memfd,id=mem,size=256M,share=on"]
        );
        assert_eq!(
            values(&a, "-chardev"),
            ["socket,id=vhu0,path=/run/sw/p1.sock,reconnect-ms=500"]
        );
        assert_eq!(values(&a, "-netdev"), ["vhost-user,id=hs0,chardev=vhu0"]);
        let dev = values(&a, "-device");
        assert!(dev
            .iter()
            .any(|d| d.starts_with("pcie-root-port,id=root0,")));
        assert!(dev
            .iter()
            .any(|d| d.starts_with("pcie-root-port,id=root1,")));
        assert!(dev.contains(
            &"virtio-net-pci,netdev=hs0,id=standby0,mac=52:54:00:00:00:0a,failover=on,bus=root1"
                .to_string()
        ));
        assert!(!dev.iter().any(|d| d.contains("primary0")));
        assert_eq!(
            values(&a, "-qmp"),
            ["unix:/run/vms/vm1.qmp,server=on,wait=off"]
        );
        assert_eq!(values(&a, "-serial"), ["null"]);
        assert_eq!(values(&a, "-display"), ["none"]);
        assert_eq!(values(&a, "-monitor"), ["none"]);
        assert!(a.contains(&"-nodefaults".to_string()));
        assert!(!a.contains(&"-incoming".to_string()));
        assert!(!a.contains(&"-kernel".to_string()));
    }

    #[test]
    fn standin_primary_has_failover_pair_and_empty_romfile() {
        let mut s = spec();
        s.direct = Some(DirectPath::Standin {
            tap: "tprim0".into(),
            model: StandinModel::E1000e,
        });
        s.incoming = true;
        s.console_log = Some("/var/log/vm1.console".into());
        let a = qemu_argv(&s, &opts()).unwrap();
        assert_eq!(
            values(&a, "-netdev"),
            [
                "vhost-user,id=hs0,chardev=vhu0",
                "tap,id=hs1,ifname=tprim0,script=no,downscript=no"
            ]
        );
        let dev = values(&a, "-device");
        assert!(dev.contains(
            &"e1000e,id=primary0,netdev=hs1,bus=root0,mac=52:54:00:00:00:0a,\
              failover_pair_id=standby0,romfile="
                .to_string()
        ));
        assert_eq!(values(&a, "-incoming"), ["defer"]);
        assert_eq!(values(&a, "-serial"), ["file:/var/log/vm1.console"]);

        s.direct = Some(DirectPath::Standin {
            tap: "tprim0".into(),
            model: StandinModel::Igb,
        });
        let a = qemu_argv(&s, &opts()).unwrap();
        assert!(values(&a, "-device")
            .iter()
            .any(|d| d.starts_with("igb,id=primary0,") && d.ends_with(",romfile=")));
    }

    #[test]
    fn vf_primary_is_vfio_pci() {
        let mut s = spec();
        s.direct = Some(DirectPath::Vf {
            pci: "0000:3b:02.1".into(),
        });
        let a = qemu_argv(&s, &opts()).unwrap();
        let dev = values(&a, "-device");
        assert!(dev.contains(
            &"vfio-pci,host=0000:3b:02.1,id=primary0,bus=root0,failover_pair_id=standby0"
                .to_string()
        ));
        // No tap netdev for a VF.
        assert_eq!(values(&a, "-netdev").len(), 1);
        let qmp = primary_qmp_args(&s, s.direct.as_ref().unwrap());
        assert_eq!(qmp["driver"], "vfio-pci");
        assert_eq!(qmp["failover_pair_id"], "standby0");
        assert!(direct_netdev_qmp_args(s.direct.as_ref().unwrap()).is_none());
    }

    #[test]
    fn multiqueue_kernel_disks_kvm() {
        let dir = std::env::temp_dir().join(format!("vmm-plugin-cmdline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("vmlinuz");
        std::fs::write(&kernel, b"k").unwrap();
        let disk = dir.join("disk,1.img");
        std::fs::write(&disk, b"d").unwrap();
        let mut s = spec();
        s.nic.queue_pairs = 4;
        s.vcpus = 4;
        s.kernel = Some(kernel.clone());
        s.cmdline = Some("console=ttyS0 a=b,c".into());
        s.disks = vec![disk.clone()];
        let mut o = opts();
        o.accel = Some(Accel::Kvm);
        o.chardev_reconnect_ms = None;
        let a = qemu_argv(&s, &o).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(values(&a, "-accel"), ["kvm"]);
        assert_eq!(values(&a, "-cpu"), ["host"]);
        assert_eq!(values(&a, "-smp"), ["4"]);
        assert_eq!(values(&a, "-kernel"), [kernel.to_string_lossy()]);
        assert_eq!(values(&a, "-append"), ["console=ttyS0 a=b,c"]);
        assert_eq!(
            values(&a, "-netdev"),
            ["vhost-user,id=hs0,chardev=vhu0,queues=4"]
        );
        assert!(!values(&a, "-chardev")[0].contains("reconnect"));
        let dev = values(&a, "-device");
        assert!(dev
            .iter()
            .any(|d| d.starts_with("virtio-net-pci,") && d.ends_with(",mq=on,vectors=10")));
        assert!(dev.contains(&"virtio-blk-pci,drive=disk0,id=blk0".to_string()));
        // The comma in the disk path is escaped.
        assert!(values(&a, "-drive")[0].contains("disk,,1.img"));
    }

    #[test]
    fn invalid_specs_are_refused() {
        type Mutate = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(Mutate, &str)> = vec![
            (Box::new(|s| s.vcpus = 0), "vcpus"),
            (Box::new(|s| s.memory_mib = 32), "memory"),
            (Box::new(|s| s.nic.mac = "52:54:00:00:00".into()), "MAC"),
            (Box::new(|s| s.nic.mac = "01:54:00:00:00:0a".into()), "MAC"),
            (Box::new(|s| s.nic.mac = "52:54:00:00:00:zz".into()), "MAC"),
            (
                Box::new(|s| s.kernel = Some("/nonexistent/vmlinuz".into())),
                "kernel",
            ),
            (Box::new(|s| s.nic.queue_pairs = 0), "queue pairs"),
            (Box::new(|s| s.nic.queue_pairs = 9), "queue pairs"),
            (Box::new(|s| s.name = "a b".into()), "name"),
        ];
        for (mutate, word) in cases {
            let mut s = spec();
            mutate(&mut s);
            match qemu_argv(&s, &opts()) {
                Err(VmmError::Spec { vm, message }) => {
                    assert_eq!(vm, s.name);
                    assert!(message.contains(word), "{message:?} lacks {word:?}");
                }
                other => panic!("expected a Spec error about {word}, got {other:?}"),
            }
        }
    }

    #[test]
    fn mac_validation() {
        assert!(valid_mac("52:54:00:AB:cd:0a"));
        assert!(!valid_mac("ff:ff:ff:ff:ff:ff"));
        assert!(!valid_mac("52-54-00-00-00-0a"));
        assert!(!valid_mac("52:54:00:00:00:0a:00"));
    }
}
