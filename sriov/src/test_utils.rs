//! [`FakeSysfs`]: a fake `/sys` tree in a temp directory, laid out like the kernel's,
//! for tests of discovery and of the code built on it (feature `test-utils`).
//!
//! Layout (all links relative, as in real sysfs, so they resolve inside the tree):
//!
//! ```text
//! sys/devices/pci0000:00/<addr>/             the device: vendor, device, numa_node, ...
//!     driver -> ../../../bus/pci/drivers/<name>
//!     iommu_group -> ../../../kernel/iommu_groups/<n>
//!     net/<ifname>/                          netdevs
//!     sriov_totalvfs, sriov_numvfs, sriov_drivers_autoprobe   (PFs)
//!     virtfn<i> -> ../<vf addr>              (PFs)
//!     physfn -> ../<pf addr>                 (VFs)
//!     infiniband/<ibdev>/                    (RDMA-capable VFs)
//! sys/bus/pci/devices/<addr> -> ../../../devices/pci0000:00/<addr>
//! sys/bus/pci/drivers/<name>/<addr> -> ../../../../devices/pci0000:00/<addr>
//! sys/kernel/iommu_groups/<n>/devices/<addr> -> ../../../../devices/pci0000:00/<addr>
//! ```
//!
//! "Driver without `sriov_configure`" ([`PfSpec::without_sriov_configure`]) is modelled
//! as a `sriov_numvfs` with mode 0444. Real kernels keep the file 0644 and fail the
//! write with `ENOENT` instead; the fake tree needs a marker the prerequisite checks
//! can read, and the mode is the one discovery reports
//! ([`PhysFunction::numvfs_writable`](crate::host::PhysFunction::numvfs_writable)).
//!
//! The helpers panic on I/O errors: they are for tests.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pciconfig::{
    PciePortType, ACS_CR, ACS_RR, ACS_SV, ACS_TB, ACS_UF, EXT_CAP_ID_ACS, EXT_CAP_ID_SRIOV,
};
use crate::sysfs::SysfsRoot;

const DEVICES: &str = "sys/devices/pci0000:00";

/// A physical function to create with [`FakeSysfs::add_pf`].
#[derive(Debug, Clone)]
pub struct PfSpec {
    address: String,
    vendor: u16,
    device: u16,
    driver: Option<String>,
    netdevs: Vec<String>,
    total_vfs: u32,
    numa_node: i32,
    iommu_group: Option<u32>,
    autoprobe: Option<bool>,
    sriov_configure: bool,
    parent: Option<String>,
}

impl PfSpec {
    /// An Intel 82599 PF at `address` bound to `ixgbe`, 63 VFs possible, no netdev,
    /// NUMA node -1, no IOMMU group, autoprobe on, driver with `sriov_configure`.
    pub fn new(address: &str) -> Self {
        PfSpec {
            address: address.to_string(),
            vendor: 0x8086,
            device: 0x10fb,
            driver: Some("ixgbe".to_string()),
            netdevs: Vec::new(),
            total_vfs: 63,
            numa_node: -1,
            iommu_group: None,
            autoprobe: Some(true),
            sriov_configure: true,
            parent: None,
        }
    }

    /// PCI vendor and device ids.
    pub fn ids(mut self, vendor: u16, device: u16) -> Self {
        self.vendor = vendor;
        self.device = device;
        self
    }

    /// The bound driver (`None`: unbound).
    pub fn driver(mut self, driver: Option<&str>) -> Self {
        self.driver = driver.map(str::to_string);
        self
    }

    /// Adds a netdev.
    pub fn netdev(mut self, name: &str) -> Self {
        self.netdevs.push(name.to_string());
        self
    }

    /// `sriov_totalvfs`.
    pub fn total_vfs(mut self, n: u32) -> Self {
        self.total_vfs = n;
        self
    }

    /// `numa_node` (-1: none).
    pub fn numa_node(mut self, node: i32) -> Self {
        self.numa_node = node;
        self
    }

    /// Puts the device in IOMMU group `group`.
    pub fn iommu_group(mut self, group: u32) -> Self {
        self.iommu_group = Some(group);
        self
    }

    /// `sriov_drivers_autoprobe` (`None`: the file is absent, as on old kernels).
    pub fn autoprobe(mut self, on: Option<bool>) -> Self {
        self.autoprobe = on;
        self
    }

    /// Models a PF driver without `sriov_configure`: `sriov_numvfs` gets mode 0444.
    pub fn without_sriov_configure(mut self) -> Self {
        self.sriov_configure = false;
        self
    }

    /// Places the PF below the bridge at `bridge` (added before with
    /// [`FakeSysfs::add_bridge`]), as real sysfs nests devices under their bridges.
    /// Its VFs are placed next to it.
    pub fn parent(mut self, bridge: &str) -> Self {
        self.parent = Some(bridge.to_string());
        self
    }
}

/// A PCI-to-PCI bridge (a root port or a switch port) to create with
/// [`FakeSysfs::add_bridge`].
#[derive(Debug, Clone)]
pub struct BridgeSpec {
    address: String,
    parent: Option<String>,
    port_type: PciePortType,
    secondary: u8,
    subordinate: u8,
    acs: Option<(u16, u16)>,
    config_len: usize,
}

impl BridgeSpec {
    /// A PCIe root port at `address` whose secondary and subordinate bus is the
    /// bus after its own, with full ACS (SV TB RR CR UF, all enabled), a 4096-byte
    /// config space.
    pub fn root_port(address: &str) -> Self {
        let bus = bus_of(address).wrapping_add(1);
        let acs = ACS_SV | ACS_TB | ACS_RR | ACS_CR | ACS_UF;
        BridgeSpec {
            address: address.to_string(),
            parent: None,
            port_type: PciePortType::RootPort,
            secondary: bus,
            subordinate: bus,
            acs: Some((acs, acs)),
            config_len: 4096,
        }
    }

    /// A switch port of type `port_type` (upstream or downstream), otherwise like
    /// [`BridgeSpec::root_port`].
    pub fn switch_port(address: &str, port_type: PciePortType) -> Self {
        BridgeSpec {
            port_type,
            ..BridgeSpec::root_port(address)
        }
    }

    /// Secondary and subordinate bus numbers.
    pub fn buses(mut self, secondary: u8, subordinate: u8) -> Self {
        self.secondary = secondary;
        self.subordinate = subordinate;
        self
    }

    /// The ACS capability and control registers (`None`: no ACS capability).
    pub fn acs(mut self, acs: Option<(u16, u16)>) -> Self {
        self.acs = acs;
        self
    }

    /// Places the bridge below another bridge.
    pub fn parent(mut self, bridge: &str) -> Self {
        self.parent = Some(bridge.to_string());
        self
    }

    /// Truncates the `config` file to `len` bytes (64 or 256: what a non-root
    /// reader gets).
    pub fn config_len(mut self, len: usize) -> Self {
        self.config_len = len;
        self
    }
}

/// The bus number of a `DDDD:BB:DD.F` address (0 when malformed).
fn bus_of(address: &str) -> u8 {
    address
        .split(':')
        .nth(1)
        .and_then(|b| u8::from_str_radix(b, 16).ok())
        .unwrap_or(0)
}

/// Builds PCI configuration space bytes (4096 of them, little-endian registers),
/// so tests need not assemble every byte: standard capabilities go from 0x40 up,
/// extended ones from 0x100 up, each linked to the next.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    bytes: Vec<u8>,
    last_cap: Option<usize>,
    next_cap: usize,
    last_ext: Option<usize>,
    next_ext: usize,
    len: usize,
}

impl ConfigBuilder {
    fn new(vendor: u16, device: u16, class: u32, header_type: u8) -> Self {
        let mut b = ConfigBuilder {
            bytes: vec![0; 4096],
            last_cap: None,
            next_cap: 0x40,
            last_ext: None,
            next_ext: 0x100,
            len: 4096,
        };
        b.put16(0, vendor);
        b.put16(2, device);
        b.put32(8, class << 8);
        b.bytes[0x0e] = header_type;
        b
    }

    /// An endpoint (type 0 header) of class 0x020000 (Ethernet).
    pub fn endpoint(vendor: u16, device: u16) -> Self {
        ConfigBuilder::new(vendor, device, 0x020000, 0)
    }

    /// A PCI-to-PCI bridge (type 1 header, class 0x060400) with its bus numbers.
    pub fn bridge(vendor: u16, device: u16, secondary: u8, subordinate: u8) -> Self {
        let mut b = ConfigBuilder::new(vendor, device, 0x060400, 1);
        b.bytes[0x18] = secondary.saturating_sub(1);
        b.bytes[0x19] = secondary;
        b.bytes[0x1a] = subordinate;
        b
    }

    /// Adds a standard capability `id` with `body` after its 2-byte header.
    pub fn cap(mut self, id: u8, body: &[u8]) -> Self {
        let at = self.next_cap;
        self.bytes[0x06] |= 0x10;
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = at as u8,
            None => self.bytes[0x34] = at as u8,
        }
        self.bytes[at] = id;
        self.bytes[at + 2..at + 2 + body.len()].copy_from_slice(body);
        self.last_cap = Some(at);
        self.next_cap = (at + 2 + body.len() + 3) & !3;
        self
    }

    /// Adds the PCI Express capability (version 2) of type `port_type`.
    pub fn pcie(self, port_type: PciePortType) -> Self {
        let bits: u8 = match port_type {
            PciePortType::Endpoint => 0,
            PciePortType::LegacyEndpoint => 1,
            PciePortType::RootPort => 4,
            PciePortType::UpstreamPort => 5,
            PciePortType::DownstreamPort => 6,
            PciePortType::PcieToPciBridge => 7,
            PciePortType::PciToPcieBridge => 8,
            PciePortType::RcIntegratedEndpoint => 9,
            PciePortType::RcEventCollector => 10,
            PciePortType::Other(n) => n & 0xf,
        };
        let mut body = [0u8; 58];
        body[0] = 0x02 | (bits << 4);
        self.cap(0x10, &body)
    }

    /// Adds the MSI-X capability with `table_size` vectors (1..=2048).
    pub fn msix(self, table_size: u16) -> Self {
        let control = table_size.clamp(1, 2048) - 1;
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&control.to_le_bytes());
        self.cap(0x11, &body)
    }

    /// Adds extended capability `id` (version 1) with `body` after its header.
    pub fn ext_cap(mut self, id: u16, body: &[u8]) -> Self {
        let at = self.next_ext;
        if let Some(prev) = self.last_ext {
            let h = self.get32(prev) | ((at as u32) << 20);
            self.put32(prev, h);
        }
        self.put32(at, u32::from(id) | 1 << 16);
        self.bytes[at + 4..at + 4 + body.len()].copy_from_slice(body);
        self.last_ext = Some(at);
        self.next_ext = (at + 4 + body.len() + 3) & !3;
        self
    }

    /// Adds the SR-IOV capability: TotalVFs (also InitialVFs), First VF Offset,
    /// VF Stride and VF Device ID; NumVFs 0.
    pub fn sriov(
        self,
        total_vfs: u16,
        first_vf_offset: u16,
        vf_stride: u16,
        vf_device: u16,
    ) -> Self {
        let mut body = [0u8; 0x3c];
        // Offsets in the body are the capability's minus 4.
        body[0x08..0x0a].copy_from_slice(&total_vfs.to_le_bytes());
        body[0x0a..0x0c].copy_from_slice(&total_vfs.to_le_bytes());
        body[0x10..0x12].copy_from_slice(&first_vf_offset.to_le_bytes());
        body[0x12..0x14].copy_from_slice(&vf_stride.to_le_bytes());
        body[0x16..0x18].copy_from_slice(&vf_device.to_le_bytes());
        self.ext_cap(EXT_CAP_ID_SRIOV, &body)
    }

    /// Adds the ACS capability with its capability and control registers.
    pub fn acs(self, capability: u16, control: u16) -> Self {
        let mut body = [0u8; 4];
        body[0..2].copy_from_slice(&capability.to_le_bytes());
        body[2..4].copy_from_slice(&control.to_le_bytes());
        self.ext_cap(EXT_CAP_ID_ACS, &body)
    }

    /// Keeps only the first `len` bytes (64 or 256: what non-root readers get).
    pub fn truncate(mut self, len: usize) -> Self {
        self.len = len.min(4096);
        self
    }

    /// The bytes.
    pub fn build(&self) -> Vec<u8> {
        self.bytes[..self.len].to_vec()
    }

    fn put16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn get32(&self, at: usize) -> u32 {
        let s = &self.bytes[at..at + 4];
        u32::from_le_bytes([s[0], s[1], s[2], s[3]])
    }
}

/// A virtual function to create with [`FakeSysfs::add_vf`].
#[derive(Debug, Clone)]
pub struct VfSpec {
    index: u32,
    address: String,
    vendor: u16,
    device: u16,
    driver: Option<String>,
    driver_override: Option<String>,
    netdev: Option<String>,
    queues: Option<u16>,
    msix: Option<u16>,
    numa_node: i32,
    iommu_group: Option<u32>,
    rdma: Option<String>,
}

impl VfSpec {
    /// An Intel 82599 VF, index `index`, at `address`, bound to `ixgbevf`, without
    /// netdev, NUMA node -1, no IOMMU group, no RDMA, `driver_override` `(null)`.
    pub fn new(index: u32, address: &str) -> Self {
        VfSpec {
            index,
            address: address.to_string(),
            vendor: 0x8086,
            device: 0x10ed,
            driver: Some("ixgbevf".to_string()),
            driver_override: None,
            netdev: None,
            queues: None,
            msix: None,
            numa_node: -1,
            iommu_group: None,
            rdma: None,
        }
    }

    /// A VF handed to a VM: bound to `vfio-pci` through `driver_override`, no netdev.
    pub fn vfio(index: u32, address: &str) -> Self {
        VfSpec::new(index, address)
            .driver(Some("vfio-pci"))
            .driver_override(Some("vfio-pci"))
    }

    /// PCI vendor and device ids.
    pub fn ids(mut self, vendor: u16, device: u16) -> Self {
        self.vendor = vendor;
        self.device = device;
        self
    }

    /// The bound driver (`None`: unbound).
    pub fn driver(mut self, driver: Option<&str>) -> Self {
        self.driver = driver.map(str::to_string);
        self
    }

    /// `driver_override` (`None`: the kernel's `(null)`).
    pub fn driver_override(mut self, driver: Option<&str>) -> Self {
        self.driver_override = driver.map(str::to_string);
        self
    }

    /// The VF's netdev.
    pub fn netdev(mut self, name: &str) -> Self {
        self.netdev = Some(name.to_string());
        self
    }

    /// `numa_node` (-1: none).
    pub fn numa_node(mut self, node: i32) -> Self {
        self.numa_node = node;
        self
    }

    /// Gives the VF's netdev `pairs` queue pairs (`queues/rx-N`, `queues/tx-N`).
    pub fn queues(mut self, pairs: u16) -> Self {
        self.queues = Some(pairs);
        self
    }

    /// Writes the VF's config space with an MSI-X capability of `table_size`
    /// vectors.
    pub fn msix(mut self, table_size: u16) -> Self {
        self.msix = Some(table_size);
        self
    }

    /// Puts the device in IOMMU group `group` (several devices may share one).
    pub fn iommu_group(mut self, group: u32) -> Self {
        self.iommu_group = Some(group);
        self
    }

    /// Gives the VF an RDMA device `infiniband/<ibdev>`.
    pub fn rdma(mut self, ibdev: &str) -> Self {
        self.rdma = Some(ibdev.to_string());
        self
    }
}

/// A fake sysfs tree in a fresh temp directory, removed on drop.
#[derive(Debug)]
pub struct FakeSysfs {
    dir: PathBuf,
}

impl Default for FakeSysfs {
    fn default() -> Self {
        FakeSysfs::new()
    }
}

impl FakeSysfs {
    /// An empty tree with `sys/bus/pci/devices`, `sys/bus/pci/drivers` and
    /// `sys/kernel/iommu_groups`.
    pub fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sriov-fake-sysfs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        let fake = FakeSysfs { dir };
        for d in [
            "sys/bus/pci/devices",
            "sys/bus/pci/drivers",
            "sys/kernel/iommu_groups",
            DEVICES,
        ] {
            fake.mkdir(d);
        }
        fake
    }

    /// The root to hand to discovery.
    pub fn root(&self) -> SysfsRoot {
        SysfsRoot::new(&self.dir)
    }

    /// The temp directory (the root of the tree; it holds `sys/`).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The device directory of `address`: `<root>/sys/devices/pci0000:00/<address>`,
    /// or below its bridge's directory when placed under one.
    pub fn device_dir(&self, address: &str) -> PathBuf {
        self.dir.join(self.device_rel(address))
    }

    /// The device directory of `address` relative to the root: where its
    /// `sys/bus/pci/devices` link points, else `sys/devices/pci0000:00/<address>`.
    fn device_rel(&self, address: &str) -> String {
        let link = self.dir.join("sys/bus/pci/devices").join(address);
        if let (Ok(real), Ok(base)) = (fs::canonicalize(&link), fs::canonicalize(&self.dir)) {
            if let Ok(rel) = real.strip_prefix(&base) {
                return rel.to_string_lossy().into_owned();
            }
        }
        format!("{DEVICES}/{address}")
    }

    /// Adds a PCI-to-PCI bridge (class 0x060400, driver `pcieport`) with
    /// `secondary_bus_number`, `subordinate_bus_number` and a `config` blob from
    /// [`ConfigBuilder`] (PCIe capability of the spec's port type, ACS if any).
    pub fn add_bridge(&self, bridge: &BridgeSpec) -> &Self {
        let parent = match &bridge.parent {
            Some(p) => self.device_rel(p),
            None => DEVICES.to_string(),
        };
        let dev = self.add_device_in(&parent, &bridge.address, 0x8086, 0x2f08, Some("pcieport"));
        self.write(&dev, "class", "0x060400");
        self.write(&dev, "secondary_bus_number", &bridge.secondary.to_string());
        self.write(
            &dev,
            "subordinate_bus_number",
            &bridge.subordinate.to_string(),
        );
        let mut cfg = ConfigBuilder::bridge(0x8086, 0x2f08, bridge.secondary, bridge.subordinate)
            .pcie(bridge.port_type);
        if let Some((cap, ctrl)) = bridge.acs {
            cfg = cfg.acs(cap, ctrl);
        }
        self.set_config(&bridge.address, &cfg.truncate(bridge.config_len).build());
        self
    }

    /// Writes the device's `config` file (PCI configuration space bytes).
    pub fn set_config(&self, address: &str, bytes: &[u8]) -> &Self {
        fs::write(self.device_dir(address).join("config"), bytes).expect("fake config is writable");
        self
    }

    /// Writes the device's `class` (e.g. `0x060400` for a bridge).
    pub fn set_class(&self, address: &str, class: u32) -> &Self {
        self.set_attr(address, "class", &format!("0x{class:06x}"))
    }

    /// Adds an SR-IOV-less PCI device of class `class` with an optional driver
    /// (e.g. a storage controller, which the prerequisite checks ignore).
    pub fn add_pci_device(&self, address: &str, class: u32, driver: Option<&str>) -> &Self {
        let dev = self.add_device(address, 0x8086, 0x1234, driver);
        self.write(&dev, "class", &format!("0x{class:06x}"));
        self
    }

    /// Puts an existing device into IOMMU group `group` (a group may hold several
    /// devices: that is how a shared group is modelled).
    pub fn add_to_iommu_group(&self, address: &str, group: u32) -> &Self {
        self.join_iommu_group(address, group);
        self
    }

    /// Adds an IOMMU unit `<root>/sys/class/iommu/<name>` (e.g. `dmar0`), which
    /// is what an enabled IOMMU looks like.
    pub fn add_iommu(&self, name: &str) -> &Self {
        self.mkdir(&format!("sys/devices/virtual/iommu/{name}"));
        self.symlink(
            &format!("sys/class/iommu/{name}"),
            &format!("sys/devices/virtual/iommu/{name}"),
        );
        self
    }

    /// Adds a PCI driver directory `<root>/sys/bus/pci/drivers/<name>` (e.g.
    /// `vfio-pci`: loaded) with a `module` link to `sys/module/<name with _>`.
    pub fn add_driver(&self, name: &str) -> &Self {
        let drv = format!("sys/bus/pci/drivers/{name}");
        self.mkdir(&drv);
        let module = format!("sys/module/{}", name.replace('-', "_"));
        self.mkdir(&module);
        self.symlink(&format!("{drv}/module"), &module);
        self
    }

    /// [`FakeSysfs::add_driver`] of `vfio-pci`.
    pub fn add_vfio_driver(&self) -> &Self {
        self.add_driver("vfio-pci")
    }

    /// Writes `<root>/proc/sys/kernel/osrelease`.
    pub fn set_kernel_release(&self, release: &str) -> &Self {
        self.mkdir("proc/sys/kernel");
        self.write("proc/sys/kernel", "osrelease", release);
        self
    }

    /// Writes `<root>/proc/sys/kernel/hostname`.
    pub fn set_hostname(&self, name: &str) -> &Self {
        self.mkdir("proc/sys/kernel");
        self.write("proc/sys/kernel", "hostname", name);
        self
    }

    /// Writes `<root>/proc/cmdline`.
    pub fn set_cmdline(&self, cmdline: &str) -> &Self {
        self.mkdir("proc");
        self.write("proc", "cmdline", cmdline);
        self
    }

    /// Writes `<root>/proc/kallsyms`, one line per `(symbol, module)`, module
    /// `None` for built-in symbols, e.g. `("igb_pci_sriov_configure", Some("igb"))`.
    pub fn set_kallsyms(&self, symbols: &[(&str, Option<&str>)]) -> &Self {
        let text: Vec<String> = symbols
            .iter()
            .map(|(sym, module)| match module {
                Some(m) => format!("0000000000000000 t {sym}\t[{m}]"),
                None => format!("0000000000000000 T {sym}"),
            })
            .collect();
        self.mkdir("proc");
        self.write("proc", "kallsyms", &text.join("\n"));
        self
    }

    /// Writes `<root>/lib/modules/<release>/<file>` (`modules.dep` or
    /// `modules.builtin`) with `content`.
    pub fn set_modules_file(&self, release: &str, file: &str, content: &str) -> &Self {
        let dir = format!("lib/modules/{release}");
        self.mkdir(&dir);
        self.write(&dir, file, content);
        self
    }

    /// Writes `<root>/sys/devices/system/cpu/smt/active` (`1`/`0`) and `control`
    /// (`on`, `off`, `forceoff`, `notsupported`, `notimplemented`).
    pub fn set_smt(&self, active: bool, control: &str) -> &Self {
        let dir = "sys/devices/system/cpu/smt";
        self.mkdir(dir);
        self.write(dir, "active", if active { "1" } else { "0" });
        self.write(dir, "control", control);
        self
    }

    /// Adds an SR-IOV physical function with no VFs yet (`sriov_numvfs` 0).
    pub fn add_pf(&self, pf: &PfSpec) -> &Self {
        let parent = match &pf.parent {
            Some(p) => self.device_rel(p),
            None => DEVICES.to_string(),
        };
        let dev = self.add_device_in(
            &parent,
            &pf.address,
            pf.vendor,
            pf.device,
            pf.driver.as_deref(),
        );
        self.write(&dev, "numa_node", &pf.numa_node.to_string());
        for n in &pf.netdevs {
            self.mkdir(&format!("{dev}/net/{n}"));
        }
        if let Some(g) = pf.iommu_group {
            self.join_iommu_group(&pf.address, g);
        }
        self.write(&dev, "sriov_totalvfs", &pf.total_vfs.to_string());
        self.write(&dev, "sriov_numvfs", "0");
        if let Some(on) = pf.autoprobe {
            self.write(&dev, "sriov_drivers_autoprobe", if on { "1" } else { "0" });
        }
        self.write(&dev, "sriov_offset", "128");
        self.write(&dev, "sriov_stride", "2");
        if !pf.sriov_configure {
            self.chmod(&format!("{dev}/sriov_numvfs"), 0o444);
        }
        self
    }

    /// Adds a PCI network device without SR-IOV (no `sriov_totalvfs`), e.g. a
    /// virtio-net NIC; discovery must skip it.
    pub fn add_plain_nic(&self, address: &str, driver: &str, netdev: &str) -> &Self {
        let dev = self.add_device(address, 0x1af4, 0x1041, Some(driver));
        self.write(&dev, "numa_node", "-1");
        self.mkdir(&format!("{dev}/net/{netdev}"));
        self
    }

    /// Adds a VF of the PF at `pf_address` (added before): the VF device, the PF's
    /// `virtfn<i>` and the VF's `physfn` links, and the PF's `sriov_numvfs` becomes
    /// its number of `virtfn` links.
    pub fn add_vf(&self, pf_address: &str, vf: &VfSpec) -> &Self {
        let pf = self.device_rel(pf_address);
        let parent = Path::new(&pf)
            .parent()
            .map_or_else(|| DEVICES.to_string(), |p| p.to_string_lossy().into_owned());
        let dev = self.add_device_in(
            &parent,
            &vf.address,
            vf.vendor,
            vf.device,
            vf.driver.as_deref(),
        );
        self.write(&dev, "numa_node", &vf.numa_node.to_string());
        self.write(
            &dev,
            "driver_override",
            vf.driver_override.as_deref().unwrap_or("(null)"),
        );
        if let Some(n) = &vf.netdev {
            self.mkdir(&format!("{dev}/net/{n}"));
            for q in 0..vf.queues.unwrap_or(0) {
                self.mkdir(&format!("{dev}/net/{n}/queues/rx-{q}"));
                self.mkdir(&format!("{dev}/net/{n}/queues/tx-{q}"));
            }
        }
        if let Some(size) = vf.msix {
            let config = ConfigBuilder::endpoint(vf.vendor, vf.device)
                .pcie(PciePortType::Endpoint)
                .msix(size)
                .build();
            fs::write(self.dir.join(&dev).join("config"), config).expect("fake config is writable");
        }
        if let Some(g) = vf.iommu_group {
            self.join_iommu_group(&vf.address, g);
        }
        if let Some(ib) = &vf.rdma {
            self.mkdir(&format!("{dev}/infiniband/{ib}"));
        }
        self.symlink(&format!("{pf}/virtfn{}", vf.index), &dev);
        self.symlink(&format!("{dev}/physfn"), &pf);
        let count = fs::read_dir(self.dir.join(&pf))
            .expect("PF dir is readable")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("virtfn"))
            .count();
        self.set_attr(pf_address, "sriov_numvfs", &count.to_string());
        self
    }

    /// Writes attribute `name` of the device at `address` (keeping the file's mode),
    /// e.g. to make it malformed.
    pub fn set_attr(&self, address: &str, name: &str, content: &str) -> &Self {
        let dev = self.device_rel(address);
        let rel = format!("{dev}/{name}");
        let path = self.dir.join(&rel);
        let mode = fs::metadata(&path).ok().map(|m| m.permissions().mode());
        if mode.is_some() {
            self.chmod(&rel, 0o644);
        }
        self.write(&dev, name, content);
        if let Some(m) = mode {
            self.chmod(&rel, m);
        }
        self
    }

    /// Removes attribute (file, directory or link) `name` of the device at `address`.
    pub fn remove_attr(&self, address: &str, name: &str) -> &Self {
        let path = self.device_dir(address).join(name);
        let meta = fs::symlink_metadata(&path).expect("attribute exists");
        if meta.is_dir() {
            fs::remove_dir_all(&path).expect("attribute dir is removable");
        } else {
            fs::remove_file(&path).expect("attribute is removable");
        }
        self
    }

    /// Makes attribute `name` of the device at `address` a link to `target`, which
    /// need not exist (for dangling-link tests).
    pub fn link_attr(&self, address: &str, name: &str, target: &str) -> &Self {
        let link = self.device_dir(address).join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).expect("link is creatable");
        self
    }

    /// Creates the device directory, its `sys/bus/pci/devices` link and its driver
    /// binding; returns the device's path relative to the root.
    fn add_device(&self, address: &str, vendor: u16, device: u16, driver: Option<&str>) -> String {
        self.add_device_in(DEVICES, address, vendor, device, driver)
    }

    /// [`FakeSysfs::add_device`] in directory `parent` (relative to the root).
    fn add_device_in(
        &self,
        parent: &str,
        address: &str,
        vendor: u16,
        device: u16,
        driver: Option<&str>,
    ) -> String {
        let dev = format!("{parent}/{address}");
        self.mkdir(&dev);
        self.write(&dev, "vendor", &format!("0x{vendor:04x}"));
        self.write(&dev, "device", &format!("0x{device:04x}"));
        self.write(&dev, "class", "0x020000");
        self.symlink(&format!("sys/bus/pci/devices/{address}"), &dev);
        if let Some(d) = driver {
            let drv = format!("sys/bus/pci/drivers/{d}");
            self.mkdir(&drv);
            self.symlink(&format!("{drv}/{address}"), &dev);
            self.symlink(&format!("{dev}/driver"), &drv);
        }
        dev
    }

    fn join_iommu_group(&self, address: &str, group: u32) {
        let g = format!("sys/kernel/iommu_groups/{group}");
        let dev = self.device_rel(address);
        self.mkdir(&format!("{g}/devices"));
        self.symlink(&format!("{g}/devices/{address}"), &dev);
        self.symlink(&format!("{dev}/iommu_group"), &g);
    }

    fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.dir.join(rel)).expect("fake sysfs dir is creatable");
    }

    fn write(&self, dir: &str, name: &str, content: &str) {
        fs::write(self.dir.join(dir).join(name), format!("{content}\n"))
            .expect("fake sysfs file is writable");
    }

    fn chmod(&self, rel: &str, mode: u32) {
        fs::set_permissions(self.dir.join(rel), fs::Permissions::from_mode(mode))
            .expect("fake sysfs file mode is settable");
    }

    /// Creates `link` (relative to the root) pointing at `target` (relative to the
    /// root) with a relative link text, as sysfs does.
    fn symlink(&self, link: &str, target: &str) {
        let link_path = Path::new(link);
        let parent = link_path.parent().unwrap_or(Path::new(""));
        self.mkdir(&parent.to_string_lossy());
        let from: Vec<Component<'_>> = parent.components().collect();
        let to: Vec<Component<'_>> = Path::new(target).components().collect();
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        let mut text = PathBuf::new();
        for _ in common..from.len() {
            text.push("..");
        }
        for c in &to[common..] {
            text.push(c);
        }
        let abs = self.dir.join(link);
        let _ = fs::remove_file(&abs);
        std::os::unix::fs::symlink(&text, &abs).expect("fake sysfs link is creatable");
    }
}

impl Drop for FakeSysfs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
