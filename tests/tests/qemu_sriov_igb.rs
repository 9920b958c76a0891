#![allow(clippy::tests_outside_test_module)]
//! `accelnet sriov` and `accelnet cluster prereq` on real SR-IOV hardware: QEMU's emulated
//! `igb` (82576) is an SR-IOV PF with 7 VFs. One TCG guest gets, besides the lab's vhost-user
//! virtio NIC (eth0, on a one-port in-process switch), an emulated Intel IOMMU and an igb PF
//! behind a PCIe root port. The accelnet binary (and iproute2's `ip`, to see what the kernel
//! reports) go into the guest's initramfs; the test runs accelnet there and compares every
//! answer with what the guest kernel shows in sysfs, `/dev/vfio` and `ip link`:
//! discovery, prerequisite checks, VF counts (including N -> M through 0), VF MAC/VLAN/
//! spoof check/trust/link state through rtnetlink, vfio-pci binding and back, the VF pool
//! (allocate with MAC + vfio, exhaustion, owner checks, release with reset, reclaim), and
//! bad input (unknown device, not a PF, count above total, a value the driver refuses).
//! Needs root, QEMU >= 10 and the guest from `lab/build-guest.sh`; without them the test
//! FAILS with the reason (it never skips).
//!
//! QEMU side (under TCG, no `kernel-irqchip=split` needed; that is a KVM requirement):
//! `-device intel-iommu,intremap=on,caching-mode=on -device pcie-root-port,id=rp0,chassis=1,slot=1
//!  -netdev user,id=igb0,restrict=on -device igb,bus=rp0,netdev=igb0`, kernel command line
//! `intel_iommu=on` and `lab.modules=...` (guest-init.sh loads igb and friends only after eth0
//! is configured, so eth0 stays the virtio NIC). Without the intel-iommu device the VFs get no
//! IOMMU group and vfio-pci does not bind them (the kernel has no VFIO_NOIOMMU);
//! virtio-iommu is no alternative: the kernel has no VIRTIO_IOMMU driver.
//! Traffic through a VF is not tested here (the igb backend is a restricted slirp).
//!
//! Logs: `target/lab-logs/qemu_sriov_igb/` (`lab.log` and `sriov.log`, the guest console).

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::{accelnet_binary, log, Guest, GuestConfig, Lab};
use serde_json::Value;
use vswitch::{PortConfig, Switch, SwitchConfig};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// PCI ids of QEMU's igb: 82576 PF and its VF.
const PF_DEVICE: u64 = 0x10c9;
const VF_ID: &str = "0x8086:0x10ca";
/// iproute2's `ip` (busybox's cannot show VF settings), copied into the guest.
const IPROUTE2: &str = "/usr/bin/ip";

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

/// The guest, with the accelnet binary's path in it.
struct Vm<'a> {
    g: &'a Guest,
    bin: String,
}

impl Vm<'_> {
    fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.g.report())
    }

    /// Runs a shell command; panics unless it exits with 0.
    fn sh(&self, what: &str, cmd: &str) -> String {
        self.g
            .run_ok(cmd, CMD_TIMEOUT)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Runs `accelnet ARGS`; returns (exit status, stdout+stderr).
    fn accelnet(&self, args: &str) -> (i32, String) {
        let out = self
            .g
            .run(
                &format!("RUST_LOG=warn {} {args} 2>&1", self.bin),
                CMD_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("accelnet {args}: {e}"));
        (out.status, out.output)
    }

    /// Runs `accelnet ARGS`, which must succeed; returns its output.
    fn ok(&self, args: &str) -> String {
        let (st, out) = self.accelnet(args);
        if st != 0 {
            self.fail(&format!("`accelnet {args}` exited with {st}:\n{out}"));
        }
        log(format!("accelnet {args}:\n{}", out.trim_end()));
        out
    }

    /// Runs `accelnet ARGS`, which must fail with 1 and say every one of `says`.
    fn refused(&self, args: &str, says: &[&str]) -> String {
        let (st, out) = self.accelnet(args);
        if st == 0 || says.iter().any(|s| !out.contains(s)) {
            self.fail(&format!(
                "`accelnet {args}` should fail saying {says:?}; exit {st}:\n{out}"
            ));
        }
        log(format!(
            "accelnet {args} (refused, exit {st}): {}",
            out.trim()
        ));
        out
    }

    /// Runs `accelnet ARGS --json` and parses its output (one line, so console noise
    /// cannot split it).
    fn json(&self, args: &str) -> Value {
        let out = self
            .g
            .run(
                &format!(
                    "(RUST_LOG=warn {} {args} --json >/tmp/o.json 2>/tmp/e.txt; rc=$?; \
                     echo \"JSON:$(tr -d '\\n' </tmp/o.json)\"; cat /tmp/e.txt; exit $rc)",
                    self.bin
                ),
                CMD_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("accelnet {args} --json: {e}"));
        if !out.success() {
            self.fail(&format!(
                "`accelnet {args} --json` exited with {}:\n{}",
                out.status, out.output
            ));
        }
        let line = out
            .output
            .lines()
            .find_map(|l| l.trim().strip_prefix("JSON:"))
            .unwrap_or_else(|| {
                self.fail(&format!("no JSON from accelnet {args}:\n{}", out.output))
            });
        serde_json::from_str(line)
            .unwrap_or_else(|e| self.fail(&format!("accelnet {args} --json: {e}:\n{line}")))
    }

    /// Polls (up to 10 s in the guest) until the shell condition `cond` holds.
    fn wait(&self, what: &str, cond: &str) {
        let out = self
            .g
            .run(
                &format!(
                    "(i=0; until {cond}; do [ $i -ge 100 ] && exit 1; sleep 0.1; i=$((i+1)); done)"
                ),
                CMD_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        if !out.success() {
            let state = self.sh(
                "state",
                "ls -l /sys/bus/pci/devices/ /dev/vfio; ip -d link show",
            );
            self.fail(&format!(
                "{what}: not after 10 s (`{cond}`); state:\n{state}"
            ));
        }
    }

    /// The driver of the PCI device `bdf`, as the guest kernel reports it.
    fn driver(&self, bdf: &str) -> String {
        self.sh(
            "driver",
            &format!(
                "basename \"$(readlink /sys/bus/pci/devices/{bdf}/driver)\" 2>/dev/null || true"
            ),
        )
        .trim()
        .to_string()
    }

    /// The kernel's line for VF `index` of `pf_netdev` from iproute2 (`vf 0 link/ether ...`).
    fn ip_vf(&self, pf_netdev: &str, index: u64) -> String {
        let out = self.sh(
            "ip link",
            &format!("{IPROUTE2} link show dev {pf_netdev} | grep -E '^ +vf {index} '"),
        );
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("vf {index} ")))
            .unwrap_or_else(|| self.fail(&format!("no vf {index} line for {pf_netdev}:\n{out}")))
            .trim()
            .to_string()
    }
}

fn s(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

#[test]
fn qemu_igb_accelnet_sriov_end_to_end() {
    let t0 = Instant::now();
    let mut lab = Lab::new("qemu_sriov_igb").unwrap_or_else(|e| panic!("{e}"));
    let bin = accelnet_binary().unwrap_or_else(|e| panic!("{e}"));
    lab.add_binaries(&[&bin, Path::new(IPROUTE2)])
        .unwrap_or_else(|e| panic!("{e}"));
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
    // The accelnet binary lives in the initramfs (RAM).
    cfg.memory_mb = 512;
    // Declared after the switch: dropped (QEMU killed) before it.
    let g = Guest::spawn(&lab, &cfg).unwrap_or_else(|e| panic!("{e}"));
    let boot = g
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("boot failed: {e}"));
    let vm = Vm {
        g: &g,
        bin: bin.to_string_lossy().into_owned(),
    };
    // Kernel messages on the console would interleave with command output.
    vm.sh("quiet console", "dmesg -n 1");
    let drv = vm.sh(
        "lab NIC",
        "basename $(readlink /sys/class/net/eth0/device/driver)",
    );
    if drv.trim() != "virtio_net" {
        vm.fail(&format!("eth0 is not the virtio NIC: {drv}"));
    }
    let virtio_bdf = vm
        .sh(
            "virtio NIC",
            "basename $(readlink -f /sys/class/net/eth0/device/..)",
        )
        .trim()
        .to_string();

    // 1. Discovery: the one PF, as the kernel shows it.
    let host = vm.json("sriov list");
    let pfs = host["pfs"].as_array().cloned().unwrap_or_default();
    if pfs.len() != 1 {
        vm.fail(&format!("expected exactly one PF (the igb):\n{host:#}"));
    }
    let pf = &pfs[0];
    let pf_bdf = s(&pf["address"]);
    let pf_net = s(&pf["netdevs"][0]);
    let kernel = vm.sh(
        "PF in sysfs",
        &format!(
            "d=/sys/bus/pci/devices/{pf_bdf}; echo $(cat $d/sriov_totalvfs) $(cat $d/sriov_numvfs) \
             $(basename $(readlink $d/driver)) $(basename $(readlink $d/iommu_group)) $(ls $d/net)"
        ),
    );
    let want = format!(
        "{} {} {} {} {}",
        pf["total_vfs"],
        pf["num_vfs"],
        s(&pf["driver"]),
        pf["iommu_group"],
        pf_net
    );
    if kernel.trim() != want || pf["device_id"].as_u64() != Some(PF_DEVICE) || pf["total_vfs"] != 7
    {
        vm.fail(&format!(
            "accelnet's PF ({want}, device {}) differs from the kernel's ({}) or is not the 7-VF igb",
            pf["device_id"],
            kernel.trim()
        ));
    }
    log(format!(
        "PF {pf_bdf} ({pf_net}): igb, 7 VFs possible, IOMMU group {}",
        pf["iommu_group"]
    ));
    // The PF's link up, so igbvf does not wait for a PF reset.
    vm.sh("PF up", &format!("{IPROUTE2} link set {pf_net} up"));

    // 2. Prerequisites: this node is ready for the igb; the virtio NIC has no SR-IOV.
    let report = vm.json(&format!("cluster prereq --adapter {pf_net}"));
    let checks = report["checks"].as_array().cloned().unwrap_or_default();
    let failed: Vec<&Value> = checks.iter().filter(|c| c["status"] == "fail").collect();
    if !failed.is_empty() || report["ready"] != true {
        vm.fail(&format!("prereq on the igb node should pass:\n{report:#}"));
    }
    for name in ["kernel", "iommu", "vfio-pci", "sriov", "pf-driver"] {
        if !checks
            .iter()
            .any(|c| c["name"] == name && c["status"] == "pass")
        {
            vm.fail(&format!("prereq: no passing `{name}` check:\n{report:#}"));
        }
    }
    let smt = vm.sh(
        "SMT",
        "cat /sys/devices/system/cpu/smt/active 2>/dev/null || echo none",
    );
    let ht = match smt.trim() {
        "1" => Value::Bool(true),
        "0" => Value::Bool(false),
        _ => Value::Null,
    };
    if report["hyperthreading"] != ht {
        vm.fail(&format!(
            "prereq hyperthreading {} but the kernel says smt/active={}",
            report["hyperthreading"],
            smt.trim()
        ));
    }
    let (st, out) = vm.accelnet(&format!("cluster prereq --adapter {virtio_bdf}"));
    if st == 0 || !out.contains("Sriov_support_Unknown") {
        vm.fail(&format!(
            "prereq of the virtio NIC should fail with Sriov_support_Unknown, exit {st}:\n{out}"
        ));
    }
    vm.refused(
        "cluster prereq --adapter eth9",
        &["no PCI network adapter eth9"],
    );
    log(format!(
        "prereq: igb node ready; virtio NIC {virtio_bdf}: Sriov_support_Unknown"
    ));

    // 3. VF counts, and bad counts/devices refused with nothing changed.
    vm.ok(&format!("sriov numvfs {pf_bdf} 2"));
    vm.ok(&format!("sriov numvfs {pf_bdf} 3"));
    let n = vm.sh("numvfs", &format!("cat /sys/bus/pci/devices/{pf_bdf}/sriov_numvfs; ls -d /sys/bus/pci/devices/{pf_bdf}/virtfn* | wc -l"));
    if n.split_whitespace().collect::<Vec<_>>() != ["3", "3"] {
        vm.fail(&format!("2 -> 3 VFs (through 0): kernel shows {n}"));
    }
    vm.ok(&format!("sriov numvfs {pf_bdf} 2"));
    vm.refused(
        &format!("sriov numvfs {pf_bdf} 8"),
        &[&pf_bdf, "8 VFs", "at most 7"],
    );
    vm.refused(
        &format!("sriov numvfs {virtio_bdf} 1"),
        &[&virtio_bdf, "not an SR-IOV physical function"],
    );
    vm.refused(
        "sriov numvfs 0000:0f:1f.7 1",
        &["no PCI device 0000:0f:1f.7"],
    );
    vm.refused(
        &format!("sriov vf {pf_bdf} --vlan 5000"),
        &["5000 is not in 0..=4094"],
    );
    vm.refused(
        &format!("sriov vf {pf_bdf} --mac 02:00:00:00:00"),
        &["invalid MAC address"],
    );
    let n = vm.sh(
        "numvfs",
        &format!("cat /sys/bus/pci/devices/{pf_bdf}/sriov_numvfs"),
    );
    if n.trim() != "2" {
        vm.fail(&format!("bad input changed the VF count: {n}"));
    }
    vm.wait(
        "VFs on igbvf with a netdev",
        &format!(
            "[ -d {d}/virtfn0/net ] && [ -d {d}/virtfn1/net ] && \
             [ \"$(basename $(readlink {d}/virtfn0/driver))\" = igbvf ] && \
             [ \"$(basename $(readlink {d}/virtfn1/driver))\" = igbvf ]",
            d = format!("/sys/bus/pci/devices/{pf_bdf}")
        ),
    );
    let host = vm.json("sriov list");
    let vfs = host["pfs"][0]["vfs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if vfs.len() != 2 {
        vm.fail(&format!(
            "accelnet lists {} VFs, want 2:\n{host:#}",
            vfs.len()
        ));
    }
    let mut groups = Vec::new();
    for vf in &vfs {
        let bdf = s(&vf["address"]);
        let k = vm.sh(
            "VF in sysfs",
            &format!(
                "d=/sys/bus/pci/devices/{bdf}; echo $(cat $d/vendor):$(cat $d/device) \
                 $(basename $(readlink $d/driver)) $(basename $(readlink $d/iommu_group)) $(ls $d/net) \
                 $(ls /sys/kernel/iommu_groups/$(basename $(readlink $d/iommu_group))/devices | wc -l)"
            ),
        );
        let want = format!(
            "{VF_ID} {} {} {} 1",
            s(&vf["driver"]),
            vf["iommu_group"],
            s(&vf["netdev"])
        );
        if k.trim() != want {
            vm.fail(&format!(
                "VF {bdf}: accelnet says {want}, the kernel {}",
                k.trim()
            ));
        }
        groups.push(vf["iommu_group"].clone());
        // Queue pairs: igbvf's netdev queues, as the kernel lists them.
        let q = vm.sh(
            "VF queues",
            &format!("ls /sys/bus/pci/devices/{bdf}/net/*/queues | grep -c '^rx-'"),
        );
        if vf["queue_pairs"].as_u64() != q.trim().parse::<u64>().ok() {
            vm.fail(&format!(
                "VF {bdf}: accelnet says {} queue pair(s), the kernel lists {} rx queue(s)",
                vf["queue_pairs"],
                q.trim()
            ));
        }
        // rtnetlink's view, as iproute2 prints it.
        let line = vm.ip_vf(&pf_net, vf["index"].as_u64().unwrap_or(99));
        let mac = s(&vf["info"]["mac"]);
        if !line.contains(&format!("link/ether {mac}")) {
            vm.fail(&format!("VF {bdf}: accelnet MAC {mac}, ip link: {line}"));
        }
    }
    if groups[0] == groups[1] {
        vm.fail(&format!("both VFs share IOMMU group {}", groups[0]));
    }
    let vf0 = s(&vfs[0]["address"]);
    let vf1 = s(&vfs[1]["address"]);
    log(format!(
        "VFs {vf0} {vf1}: igbvf, own IOMMU groups {groups:?}"
    ));

    // 4. VF settings through rtnetlink, read back by accelnet and by iproute2.
    let info = vm.json(&format!(
        "sriov vf {vf0} --mac 02:11:22:33:44:55 --vlan 100 --qos 3 --spoof-check off \
         --trust on --max-rate 100"
    ));
    let line = vm.ip_vf(&pf_net, 0);
    for (got, want) in [
        (s(&info["mac"]), "02:11:22:33:44:55"),
        (info["vlan"].to_string(), "100"),
        (info["qos"].to_string(), "3"),
        (info["spoof_check"].to_string(), "false"),
        (info["trust"].to_string(), "true"),
        (info["max_tx_rate"].to_string(), "100"),
        (s(&info["link_state"]), "auto"),
    ] {
        if got != want {
            vm.fail(&format!("VF 0 read back {got}, want {want}: {info}"));
        }
    }
    for want in [
        "link/ether 02:11:22:33:44:55",
        "vlan 100, qos 3",
        "spoof checking off",
        "max_tx_rate 100Mbps",
        "link-state auto",
        "trust on",
    ] {
        if !line.contains(want) {
            vm.fail(&format!("ip link does not show `{want}` for VF 0: {line}"));
        }
    }
    log(format!("VF 0 configured; kernel: {line}"));
    // Values the driver refuses (igb: no forced link state, no minimum rate): an error
    // naming the VF and the value, and the MAC set earlier in the same call is rolled back.
    for (bad, says) in [
        ("--link-state enable", "EOPNOTSUPP"),
        ("--max-rate 100 --min-rate 10", "EINVAL"),
    ] {
        let out = vm.refused(
            &format!("sriov vf {vf0} --mac 02:11:22:33:44:66 {bad}"),
            &[&pf_net, "VF 0", says],
        );
        let line = vm.ip_vf(&pf_net, 0);
        if !line.contains("link/ether 02:11:22:33:44:55") || !line.contains("link-state auto") {
            vm.fail(&format!(
                "refused change left VF 0 half-configured:\n{out}\nip link: {line}"
            ));
        }
    }

    // 5. vfio-pci and back, as the kernel sees it.
    let b = vm.json(&format!("sriov bind-vfio {vf1}"));
    let grp = b["iommu_group"].clone();
    if b["driver"] != "vfio-pci" || vm.driver(&vf1) != "vfio-pci" {
        vm.fail(&format!(
            "bind-vfio {vf1}: {b}, kernel driver {}",
            vm.driver(&vf1)
        ));
    }
    vm.sh(
        "vfio group device",
        &format!("[ -c /dev/vfio/{grp} ] && [ ! -d /sys/bus/pci/devices/{vf1}/net ]"),
    );
    log(format!("{vf1} on vfio-pci: /dev/vfio/{grp}"));
    let b = vm.json(&format!("sriov unbind-vfio {vf1} --driver igbvf"));
    if b["driver"] != "igbvf" || b["driver_override"] != Value::Null || vm.driver(&vf1) != "igbvf" {
        vm.fail(&format!(
            "unbind-vfio {vf1}: {b}, kernel driver {}",
            vm.driver(&vf1)
        ));
    }
    vm.wait(
        "VF 1 netdev back, /dev/vfio group gone",
        &format!("[ -d /sys/bus/pci/devices/{vf1}/net ] && [ ! -e /dev/vfio/{grp} ]"),
    );
    log(format!("{vf1} back on igbvf"));

    // 6. The pool: owners, exhaustion, release with reset, reclaim of a dead VM.
    let pool = "sriov pool --state-dir /tmp/pool";
    let sync = vm.json(&format!("{pool} sync"));
    if sync["added"].as_array().map(Vec::len) != Some(2) {
        vm.fail(&format!("pool sync should add both VFs: {sync}"));
    }
    let a = vm.json(&format!(
        "{pool} alloc --vm vm1 --mac 02:aa:00:00:00:01 --vfio"
    ));
    let a_vf = s(&a["vf"]);
    let a_idx = a["index"].as_u64().unwrap_or(99);
    // VF 0 still carried step 4's VLAN, QoS, rate and trust: the pool resets a VF
    // before it configures it for a VM.
    let line = vm.ip_vf(&pf_net, a_idx);
    if vm.driver(&a_vf) != "vfio-pci"
        || !line.contains("link/ether 02:aa:00:00:00:01")
        || line.contains("vlan ")
        || !line.contains("trust off")
        || !line.contains("spoof checking on")
    {
        vm.fail(&format!(
            "alloc for vm1 did not reset and configure {a_vf}: driver {}, {line}",
            vm.driver(&a_vf),
        ));
    }
    let sleeper = vm.sh("a VM process", "sleep 600 >/dev/null 2>&1 & echo $!");
    let b = vm.json(&format!("{pool} alloc --vm vm2 --pid {}", sleeper.trim()));
    let b_vf = s(&b["vf"]);
    if b_vf == a_vf {
        vm.fail(&format!("the pool gave {a_vf} to vm1 and vm2"));
    }
    vm.refused(
        &format!("{pool} alloc --vm vm3"),
        &["cluster_not_enough_resources", "vm3"],
    );
    vm.refused(
        &format!("{pool} alloc --vm vm3 --vf {a_vf}"),
        &[&a_vf, "vm1"],
    );
    vm.refused(&format!("{pool} release {a_vf} --vm vm2"), &[&a_vf, "vm1"]);
    vm.ok(&format!("{pool} release {a_vf} --vm vm1"));
    let line = vm.ip_vf(&pf_net, a_idx);
    for want in [
        "link/ether 00:00:00:00:00:00",
        "spoof checking on",
        "link-state auto",
        "trust off",
    ] {
        if !line.contains(want) {
            vm.fail(&format!("released {a_vf} not reset (`{want}`): {line}"));
        }
    }
    if line.contains("vlan ") {
        vm.fail(&format!("released {a_vf} still has a VLAN: {line}"));
    }
    vm.sh("vm2 dies", &format!("kill {}; sleep 0.2", sleeper.trim()));
    let r = vm.json(&format!("{pool} reclaim"));
    let reclaimed: Vec<String> = r
        .as_array()
        .map(|v| v.iter().map(|x| s(&x["vf"])).collect())
        .unwrap_or_default();
    if reclaimed != [b_vf.clone()] {
        vm.fail(&format!(
            "reclaim after vm2's process died should take {b_vf}: {r}"
        ));
    }
    let list = vm.json(&format!("{pool} list"));
    let states: Vec<String> = list
        .as_array()
        .map(|v| v.iter().map(|e| s(&e["state"]["kind"])).collect())
        .unwrap_or_default();
    if states != ["free", "free"] {
        vm.fail(&format!(
            "after release and reclaim both VFs should be free: {list}"
        ));
    }
    log(format!(
        "pool: {a_vf} vm1 -> released and reset; {b_vf} vm2 -> reclaimed after its process died"
    ));

    // 7. VFs off: the kernel removes them, accelnet lists none.
    vm.ok(&format!("sriov numvfs {pf_bdf} 0"));
    vm.wait(
        "VFs removed",
        &format!("[ ! -e /sys/bus/pci/devices/{vf0} ] && [ ! -e /sys/bus/pci/devices/{vf1} ]"),
    );
    let host = vm.json("sriov list");
    if host["pfs"][0]["num_vfs"] != 0 || host["pfs"][0]["vfs"].as_array().map(Vec::len) != Some(0) {
        vm.fail(&format!("VFs should be gone: {host:#}"));
    }
    log(format!(
        "done in {:.1} s (boot {:.1} s)",
        t0.elapsed().as_secs_f64(),
        boot.as_secs_f64()
    ));
    drop(g);
    drop(sw);
}
