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

    /// The device directory of `address`: `<root>/sys/devices/pci0000:00/<address>`.
    pub fn device_dir(&self, address: &str) -> PathBuf {
        self.dir.join(DEVICES).join(address)
    }

    /// Adds an SR-IOV physical function with no VFs yet (`sriov_numvfs` 0).
    pub fn add_pf(&self, pf: &PfSpec) -> &Self {
        let dev = self.add_device(&pf.address, pf.vendor, pf.device, pf.driver.as_deref());
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
        let dev = self.add_device(&vf.address, vf.vendor, vf.device, vf.driver.as_deref());
        let pf = format!("{DEVICES}/{pf_address}");
        self.write(&dev, "numa_node", &vf.numa_node.to_string());
        self.write(
            &dev,
            "driver_override",
            vf.driver_override.as_deref().unwrap_or("(null)"),
        );
        if let Some(n) = &vf.netdev {
            self.mkdir(&format!("{dev}/net/{n}"));
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
        let rel = format!("{DEVICES}/{address}/{name}");
        let path = self.dir.join(&rel);
        let mode = fs::metadata(&path).ok().map(|m| m.permissions().mode());
        if mode.is_some() {
            self.chmod(&rel, 0o644);
        }
        self.write(&format!("{DEVICES}/{address}"), name, content);
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
        let dev = format!("{DEVICES}/{address}");
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
        self.mkdir(&format!("{g}/devices"));
        self.symlink(
            &format!("{g}/devices/{address}"),
            &format!("{DEVICES}/{address}"),
        );
        self.symlink(&format!("{DEVICES}/{address}/iommu_group"), &g);
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
