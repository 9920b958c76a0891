#![allow(clippy::tests_outside_test_module)]
//! SR-IOV inside a QEMU TCG guest: QEMU's emulated `igb` (82576) is an SR-IOV PF with 7 VFs.
//! One guest gets, besides the lab's vhost-user virtio NIC (eth0, on a one-port in-process
//! switch), an emulated Intel IOMMU and an igb PF behind a PCIe root port; inside it the test
//! creates 2 VFs (igbvf binds them), checks their IOMMU groups, moves VF 0 to vfio-pci
//! (`/dev/vfio/<group>` appears) and back to igbvf, and removes the VFs again.
//! Groundwork for running `accelnet sriov` in the guest (issue 5).
//! Needs root, QEMU >= 10 and the guest from `lab/build-guest.sh`; without them the test
//! FAILS with the reason (it never skips).
//!
//! QEMU side (under TCG, no `kernel-irqchip=split` needed; that is a KVM requirement):
//! `-device intel-iommu,intremap=on,caching-mode=on -device pcie-root-port,id=rp0,chassis=1,slot=1
//!  -netdev user,id=igb0,restrict=on -device igb,bus=rp0,netdev=igb0`, kernel command line
//! `intel_iommu=on` (explicit only: Debian's 6.1 config, INTEL_IOMMU_DEFAULT_ON_INTGPU_OFF,
//! already turns the built-in intel_iommu on: same results without it, checked by hand;
//! `iommu=pt` is not needed) and `lab.modules=...` (guest-init.sh loads igb and friends only after eth0 is
//! configured, so eth0 stays the virtio NIC). Without the intel-iommu device the VFs get no
//! IOMMU group and vfio-pci does not bind them (the kernel has no VFIO_NOIOMMU);
//! virtio-iommu is no alternative: the kernel has no VIRTIO_IOMMU driver.
//! The PF's netdev stays down here, so igbvf logs "PF still in reset state" and gives each VF a
//! random MAC; traffic through a VF is not tested (the igb backend is a restricted slirp).
//!
//! Logs: `target/lab-logs/qemu_sriov_igb/` (`lab.log` and `sriov.log`, the guest console).

use std::time::{Duration, Instant};

use integration_tests::{log, Guest, GuestConfig, Lab};
use vswitch::{PortConfig, Switch, SwitchConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const CMD_TIMEOUT: Duration = Duration::from_secs(30);
const NUM_VFS: usize = 2;
/// PCI ids of QEMU's igb: 82576 PF and its VF.
const PF_ID: &str = "0x8086:0x10c9";
const VF_ID: &str = "0x8086:0x10ca";

/// QEMU arguments adding the IOMMU and the igb PF.
fn sriov_qemu_args() -> Vec<String> {
    [
        "-device",
        "intel-iommu,intremap=on,caching-mode=on",
        "-device",
        "pcie-root-port,id=rp0,chassis=1,slot=1",
        "-netdev",
        "user,id=igb0,restrict=on",
        "-device",
        "igb,bus=rp0,netdev=igb0,mac=52:54:00:88:00:01",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs `cmd` in the guest; panics with `what`, the output and the console tail unless it
/// exits with 0.
fn step(g: &Guest, what: &str, cmd: &str) -> String {
    g.run_ok(cmd, CMD_TIMEOUT)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// The value of the first `key=value` line of `out`.
fn value(out: &str, key: &str) -> Option<String> {
    out.lines().find_map(|l| {
        l.trim()
            .strip_prefix(key)?
            .strip_prefix('=')
            .map(|v| v.trim().to_string())
    })
}

fn fail(g: &Guest, msg: &str) -> ! {
    panic!("{msg}\n{}", g.report())
}

/// Polls (up to 10 s in the guest) until the shell condition `cond` holds; panics with `what`.
fn wait_cond(g: &Guest, what: &str, cond: &str, diag: &str) {
    let out = g
        .run(
            &format!("i=0; until {cond}; do [ $i -ge 100 ] && exit 1; sleep 0.1; i=$((i+1)); done"),
            CMD_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    if !out.success() {
        let d = g
            .run(diag, CMD_TIMEOUT)
            .map(|o| o.output)
            .unwrap_or_default();
        fail(
            g,
            &format!("{what}: not after 10 s (`{cond}`); state:\n{d}"),
        );
    }
}

#[test]
fn qemu_igb_creates_vfs_and_vfio_binds_them() {
    let t0 = Instant::now();
    let lab = Lab::new("qemu_sriov_igb").unwrap_or_else(|e| panic!("{e}"));
    // The lab's virtio NIC needs a vhost-user backend: a one-port switch, no uplink.
    let sock = lab.socket("sriov");
    let sw = Switch::start(SwitchConfig {
        ports: vec![PortConfig::new(&sock)],
        ..SwitchConfig::default()
    })
    .unwrap_or_else(|e| panic!("switch start: {e} ({e:?})"));
    let mut cfg = GuestConfig::new("sriov", "10.99.0.2/24", "52:54:00:88:00:0a", &sock);
    cfg.append = "intel_iommu=on lab.modules=igb,igbvf,vfio-pci,vfio_iommu_type1".to_string();
    cfg.qemu_args = sriov_qemu_args();
    // Declared after the switch: dropped (QEMU killed) before it.
    let g = Guest::spawn(&lab, &cfg).unwrap_or_else(|e| panic!("{e}"));
    let boot = g
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("boot failed: {e}"));

    // eth0 stays the virtio NIC (igb is loaded after it is configured).
    let out = step(
        &g,
        "lab NIC",
        "echo drv=$(basename $(readlink /sys/class/net/eth0/device/driver)); \
         echo modules=$(cut -d' ' -f1 /proc/modules | tr '\\n' ,)",
    );
    if value(&out, "drv").as_deref() != Some("virtio_net") {
        fail(&g, &format!("eth0 is not the virtio NIC:\n{out}"));
    }
    let modules = value(&out, "modules").unwrap_or_default();
    for m in ["igb", "igbvf", "vfio_pci", "vfio_iommu_type1"] {
        if !modules.split(',').any(|x| x == m) {
            fail(
                &g,
                &format!("module {m} not loaded (lab.modules): {modules}"),
            );
        }
    }

    // 1. The PF: the one device with sriov_totalvfs, QEMU's 82576, bound to igb.
    let out = step(
        &g,
        "find the PF",
        "for d in /sys/bus/pci/devices/*; do [ -f $d/sriov_totalvfs ] || continue; \
         echo pf=$d; echo id=$(cat $d/vendor):$(cat $d/device); \
         echo drv=$(basename $(readlink $d/driver)); echo total=$(cat $d/sriov_totalvfs); \
         echo num=$(cat $d/sriov_numvfs); echo grp=$(basename $(readlink $d/iommu_group)); \
         echo net=$(ls $d/net); done",
    );
    let pf = value(&out, "pf")
        .unwrap_or_else(|| fail(&g, &format!("no SR-IOV capable PCI device:\n{out}")));
    let total: usize = value(&out, "total")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if value(&out, "id").as_deref() != Some(PF_ID)
        || value(&out, "drv").as_deref() != Some("igb")
        || !(7..=8).contains(&total)
        || value(&out, "num").as_deref() != Some("0")
        || value(&out, "grp").is_none_or(|v| v.is_empty())
    {
        fail(
            &g,
            &format!(
                "PF: expected {PF_ID} on igb, 7-8 total VFs, 0 enabled, an IOMMU group:\n{out}"
            ),
        );
    }
    log(format!("PF {pf}: sriov_totalvfs={total}"));

    // 2. Two VFs: virtfn0/1 links, igbvf bound, one netdev each, one IOMMU group each.
    step(
        &g,
        "enable VFs",
        &format!("echo {NUM_VFS} > {pf}/sriov_numvfs"),
    );
    let vf_state = format!(
        "for v in {pf}/virtfn*; do echo \"$v -> $(readlink $v) id=$(cat $v/vendor):$(cat $v/device) \
         drv=$(basename $(readlink $v/driver 2>/dev/null) 2>/dev/null) \
         grp=$(basename $(readlink $v/iommu_group 2>/dev/null) 2>/dev/null) net=$(ls $v/net 2>/dev/null)\"; \
         done; ls /sys/class/net; ls /dev/vfio"
    );
    let all_igbvf = (0..NUM_VFS)
        .map(|i| format!("[ -d {pf}/virtfn{i}/net ] && [ \"$(basename $(readlink {pf}/virtfn{i}/driver))\" = igbvf ]"))
        .collect::<Vec<_>>()
        .join(" && ");
    wait_cond(
        &g,
        "VFs bound to igbvf with a netdev",
        &all_igbvf,
        &vf_state,
    );
    let mut vfs = Vec::new();
    for i in 0..NUM_VFS {
        let out = step(
            &g,
            &format!("VF {i}"),
            &format!(
                "v={pf}/virtfn{i}; echo bdf=$(basename $(readlink $v)); \
                 echo id=$(cat $v/vendor):$(cat $v/device); \
                 echo grp=$(basename $(readlink $v/iommu_group)); echo net=$(ls $v/net)"
            ),
        );
        let (bdf, grp, net) = (
            value(&out, "bdf").unwrap_or_default(),
            value(&out, "grp").unwrap_or_default(),
            value(&out, "net").unwrap_or_default(),
        );
        if value(&out, "id").as_deref() != Some(VF_ID) || bdf.is_empty() || grp.is_empty() {
            fail(
                &g,
                &format!("VF {i}: expected {VF_ID} with an IOMMU group:\n{out}"),
            );
        }
        step(
            &g,
            &format!("VF {i} in its IOMMU group"),
            &format!("ls /sys/kernel/iommu_groups/{grp}/devices | grep -qx {bdf}"),
        );
        log(format!(
            "VF {i}: {bdf} igbvf netdev {net} IOMMU group {grp}"
        ));
        vfs.push((bdf, grp));
    }
    let extra = step(
        &g,
        "no more VFs",
        &format!("ls -d {pf}/virtfn* | wc -l; cat {pf}/sriov_numvfs"),
    );
    if extra.split_whitespace().collect::<Vec<_>>() != [NUM_VFS.to_string(), NUM_VFS.to_string()] {
        fail(
            &g,
            &format!("expected {NUM_VFS} virtfn links and sriov_numvfs={NUM_VFS}:\n{extra}"),
        );
    }
    if vfs[0].1 == vfs[1].1 {
        fail(&g, &format!("both VFs share IOMMU group {}", vfs[0].1));
    }

    // 3. VF 0 from igbvf to vfio-pci (driver_override + drivers_probe), then back.
    let (bdf, grp) = vfs[0].clone();
    let dev = format!("/sys/bus/pci/devices/{bdf}");
    step(
        &g,
        "VF 0 to vfio-pci",
        &format!(
            "echo {bdf} > {dev}/driver/unbind && echo vfio-pci > {dev}/driver_override && \
             echo {bdf} > /sys/bus/pci/drivers_probe"
        ),
    );
    wait_cond(
        &g,
        "VF 0 on vfio-pci with /dev/vfio/<group>",
        &format!(
            "[ \"$(basename $(readlink {dev}/driver))\" = vfio-pci ] && [ -c /dev/vfio/{grp} ] && [ ! -d {dev}/net ]"
        ),
        &vf_state,
    );
    log(format!("VF 0 ({bdf}) bound to vfio-pci: /dev/vfio/{grp}"));
    step(
        &g,
        "VF 0 back to igbvf",
        &format!(
            "echo > {dev}/driver_override && echo {bdf} > {dev}/driver/unbind && \
             echo {bdf} > /sys/bus/pci/drivers_probe"
        ),
    );
    wait_cond(
        &g,
        "VF 0 back on igbvf, /dev/vfio/<group> gone",
        &format!(
            "[ \"$(basename $(readlink {dev}/driver))\" = igbvf ] && [ -d {dev}/net ] && [ ! -e /dev/vfio/{grp} ]"
        ),
        &vf_state,
    );
    log(format!("VF 0 ({bdf}) back on igbvf"));

    // 4. Remove the VFs: no virtfn links, no VF devices, the PF's netdev only.
    step(&g, "disable VFs", &format!("echo 0 > {pf}/sriov_numvfs"));
    let gone = vfs
        .iter()
        .map(|(b, _)| format!("[ ! -e /sys/bus/pci/devices/{b} ]"))
        .collect::<Vec<_>>()
        .join(" && ");
    wait_cond(
        &g,
        "VFs removed",
        &format!(
            "! ls -d {pf}/virtfn* >/dev/null 2>&1 && [ $(cat {pf}/sriov_numvfs) = 0 ] && {gone}"
        ),
        &vf_state,
    );
    let nets = step(&g, "netdevs", "ls /sys/class/net | tr '\\n' ' '");
    log(format!(
        "VFs removed; netdevs: {}; total {:.1} s (boot {:.1} s)",
        nets.trim(),
        t0.elapsed().as_secs_f64(),
        boot.as_secs_f64()
    ));
    drop(g);
    drop(sw);
}
