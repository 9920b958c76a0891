//! Discovery of SR-IOV physical and virtual functions from sysfs.
//!
//! [`discover`] walks `<root>/sys/bus/pci/devices/*`. A device is a physical function
//! when it has `sriov_totalvfs`; its VFs are the `virtfnN` links. Everything is read
//! relative to a [`SysfsRoot`], so tests point it at a fake tree (see `FakeSysfs`,
//! feature `test-utils`). Links are resolved inside that root because sysfs links
//! are relative (`driver -> ../../../bus/pci/drivers/ixgbe`).
//!
//! Malformed attributes (a non-numeric count, a dangling link) are errors that name
//! the offending path; nothing here panics on odd input.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::host::{Host, NoVfInfo, PhysFunction, VfInfoSource, VirtFunction};
use crate::pciconfig::PciConfig;

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SriovError {
    /// A file, directory or link could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file held something other than what the kernel writes there.
    #[error("malformed {}: expected {expected}, found {found:?}", path.display())]
    Malformed {
        /// The offending file (or link).
        path: PathBuf,
        /// What a valid value looks like.
        expected: &'static str,
        /// What was found, trimmed.
        found: String,
    },
    /// A link whose target does not exist.
    #[error("dangling symlink {} -> {}", path.display(), target.display())]
    DanglingLink {
        /// The link.
        path: PathBuf,
        /// Where it points.
        target: PathBuf,
    },
    /// A [`VfInfoSource`] failed for a PF.
    #[error("cannot read the VF settings of PF {pf}: {message}")]
    VfInfo {
        /// PCI address of the PF.
        pf: String,
        /// What went wrong.
        message: String,
    },
}

/// The directory that holds `sys/` (normally `/`; a temp dir in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsRoot {
    root: PathBuf,
}

impl Default for SysfsRoot {
    fn default() -> Self {
        SysfsRoot::new("/")
    }
}

impl SysfsRoot {
    /// A root at `root`: files are read from `<root>/sys/...`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SysfsRoot { root: root.into() }
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `<root>/sys/bus/pci/devices`, where discovery starts.
    pub fn pci_devices(&self) -> PathBuf {
        self.root.join("sys/bus/pci/devices")
    }

    /// `<root>/sys/bus/pci/devices/<address>`.
    pub fn pci_device(&self, address: &str) -> PathBuf {
        self.pci_devices().join(address)
    }
}

/// Discovers every SR-IOV PF and its VFs under `root`, leaving per-VF settings
/// unknown (see [`NoVfInfo`]).
pub fn discover(root: &SysfsRoot) -> Result<Host, SriovError> {
    discover_with(root, &NoVfInfo)
}

/// Discovers every SR-IOV PF and its VFs under `root`, asking `info` for per-VF
/// settings once per PF.
pub fn discover_with(root: &SysfsRoot, info: &dyn VfInfoSource) -> Result<Host, SriovError> {
    let dir = root.pci_devices();
    let mut pfs = Vec::new();
    for name in dir_names(&dir)? {
        let dev = dir.join(&name);
        if !exists(&dev.join("sriov_totalvfs"))? {
            continue;
        }
        let mut pf = read_pf(&name, &dev, &dir)?;
        let infos = info.vf_infos(&pf.address, &pf.netdevs)?;
        for vf in &mut pf.vfs {
            if let Some(i) = infos.get(&vf.index) {
                vf.info = i.clone();
            }
        }
        pfs.push(pf);
    }
    Ok(Host { pfs })
}

/// The SR-IOV physical function at `address`, `None` when there is no such device or
/// it is not a PF. Per-VF settings are left unknown.
pub fn physical_function(
    root: &SysfsRoot,
    address: &str,
) -> Result<Option<PhysFunction>, SriovError> {
    let dev = root.pci_device(address);
    if !exists(&dev.join("sriov_totalvfs"))? {
        return Ok(None);
    }
    read_pf(address, &dev, &root.pci_devices()).map(Some)
}

fn read_pf(address: &str, dev: &Path, devices: &Path) -> Result<PhysFunction, SriovError> {
    let numvfs_path = dev.join("sriov_numvfs");
    let numvfs_mode = fs::metadata(&numvfs_path)
        .map_err(|source| io_err(&numvfs_path, source))?
        .permissions()
        .mode();
    let autoprobe_path = dev.join("sriov_drivers_autoprobe");
    let drivers_autoprobe = match read_opt(&autoprobe_path)? {
        None => None,
        Some(s) if s == "1" => Some(true),
        Some(s) if s == "0" => Some(false),
        Some(s) => return Err(malformed(&autoprobe_path, "0 or 1", &s)),
    };
    let mut vfs = Vec::new();
    for name in dir_names(dev)? {
        let Some(n) = name.strip_prefix("virtfn") else {
            continue;
        };
        let link = dev.join(&name);
        let index = n
            .parse::<u32>()
            .map_err(|_| malformed(&link, "virtfn<N> with a decimal N", &name))?;
        vfs.push(read_vf(index, &link, devices)?);
    }
    vfs.sort_by_key(|vf| vf.index);
    Ok(PhysFunction {
        address: address.to_string(),
        vendor_id: read_hex_u16(&dev.join("vendor"))?,
        device_id: read_hex_u16(&dev.join("device"))?,
        driver: link_name(&dev.join("driver"))?,
        netdevs: netdevs(dev)?,
        total_vfs: read_u32(&dev.join("sriov_totalvfs"))?,
        num_vfs: read_u32(&numvfs_path)?,
        drivers_autoprobe,
        numa_node: numa_node(dev)?,
        iommu_group: iommu_group(dev)?,
        numvfs_writable: numvfs_mode & 0o222 != 0,
        vfs,
    })
}

/// Reads the VF behind the PF's `virtfn<index>` link.
fn read_vf(index: u32, link: &Path, devices: &Path) -> Result<VirtFunction, SriovError> {
    let target = fs::read_link(link).map_err(|source| io_err(link, source))?;
    if !exists(link)? {
        return Err(SriovError::DanglingLink {
            path: link.to_path_buf(),
            target,
        });
    }
    let address = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| malformed(link, "a link to a PCI device", &target.to_string_lossy()))?
        .to_string();
    // Read the VF under its own name, so errors name its address; fall back to
    // reading through the link (`<pf>/virtfnN/...` is the VF's directory).
    let by_name = devices.join(&address);
    let dev = if exists(&by_name)? {
        by_name.as_path()
    } else {
        link
    };
    let override_path = dev.join("driver_override");
    let driver_override = read_opt(&override_path)?.filter(|s| !s.is_empty() && s != "(null)");
    let ib = dev.join("infiniband");
    let rdma = exists(&ib)? && !dir_names(&ib)?.is_empty();
    let netdev = netdevs(dev)?.into_iter().next();
    Ok(VirtFunction {
        queue_pairs: vf_queue_pairs(dev, netdev.as_deref()),
        address,
        index,
        vendor_id: read_hex_u16(&dev.join("vendor"))?,
        device_id: read_hex_u16(&dev.join("device"))?,
        netdev,
        driver: link_name(&dev.join("driver"))?,
        driver_override,
        iommu_group: iommu_group(dev)?,
        numa_node: numa_node(dev)?,
        rdma,
        info: Default::default(),
    })
}

/// The queue pairs of the VF at `dev` (see [`VirtFunction::queue_pairs`]).
fn vf_queue_pairs(dev: &Path, netdev: Option<&str>) -> Option<u16> {
    if let Some(n) = netdev {
        let names = dir_names(&dev.join("net").join(n).join("queues")).unwrap_or_default();
        let count = |prefix: &str| names.iter().filter(|q| q.starts_with(prefix)).count();
        let pairs = count("rx-").min(count("tx-"));
        if pairs > 0 {
            return Some(u16::try_from(pairs).unwrap_or(u16::MAX));
        }
    }
    let config = fs::read(dev.join("config")).ok()?;
    let msix = PciConfig::parse(&config).ok()?.msix?;
    Some(msix.table_size.saturating_sub(1).max(1))
}

/// Network interface names under `<dev>/net`, sorted; empty when there is no `net`.
fn netdevs(dev: &Path) -> Result<Vec<String>, SriovError> {
    let net = dev.join("net");
    if !exists(&net)? {
        return Ok(Vec::new());
    }
    dir_names(&net)
}

fn numa_node(dev: &Path) -> Result<Option<u32>, SriovError> {
    let path = dev.join("numa_node");
    let Some(s) = read_opt(&path)? else {
        return Ok(None);
    };
    let n: i64 = s
        .parse()
        .map_err(|_| malformed(&path, "a decimal NUMA node or -1", &s))?;
    match n {
        -1 => Ok(None),
        n => u32::try_from(n)
            .map(Some)
            .map_err(|_| malformed(&path, "a decimal NUMA node or -1", &s)),
    }
}

fn iommu_group(dev: &Path) -> Result<Option<u32>, SriovError> {
    let path = dev.join("iommu_group");
    let Some(name) = link_name(&path)? else {
        return Ok(None);
    };
    name.parse()
        .map(Some)
        .map_err(|_| malformed(&path, "a link to an IOMMU group number", &name))
}

/// The last component of the link's target, `None` when there is no link.
/// A link whose target does not exist is an error.
fn link_name(link: &Path) -> Result<Option<String>, SriovError> {
    let target = match fs::read_link(link) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_err(link, source)),
    };
    if !exists(link)? {
        return Err(SriovError::DanglingLink {
            path: link.to_path_buf(),
            target,
        });
    }
    target
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| Some(n.to_string()))
        .ok_or_else(|| {
            malformed(
                link,
                "a link to a named directory",
                &target.to_string_lossy(),
            )
        })
}

/// Sorted entry names of a directory.
fn dir_names(dir: &Path) -> Result<Vec<String>, SriovError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|source| io_err(dir, source))? {
        let entry = entry.map_err(|source| io_err(dir, source))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Whether `path` exists, following links (a dangling link does not exist).
fn exists(path: &Path) -> Result<bool, SriovError> {
    path.try_exists().map_err(|source| io_err(path, source))
}

/// The trimmed content of a file, `None` when it does not exist.
fn read_opt(path: &Path) -> Result<Option<String>, SriovError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_err(path, source)),
    }
}

fn read(path: &Path) -> Result<String, SriovError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| io_err(path, source))
}

fn read_u32(path: &Path) -> Result<u32, SriovError> {
    let s = read(path)?;
    s.parse()
        .map_err(|_| malformed(path, "a decimal count", &s))
}

fn read_hex_u16(path: &Path) -> Result<u16, SriovError> {
    let s = read(path)?;
    s.strip_prefix("0x")
        .and_then(|h| u16::from_str_radix(h, 16).ok())
        .ok_or_else(|| malformed(path, "a 16-bit hex id like 0x8086", &s))
}

fn io_err(path: &Path, source: io::Error) -> SriovError {
    SriovError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn malformed(path: &Path, expected: &'static str, found: &str) -> SriovError {
    SriovError::Malformed {
        path: path.to_path_buf(),
        expected,
        found: found.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::{VfInfo, VfLinkState};
    use crate::test_utils::{FakeSysfs, PfSpec, VfSpec};
    use std::collections::BTreeMap;

    const PF0: &str = "0000:3b:00.0";
    const PF1: &str = "0000:3b:00.1";

    /// Two PFs with two VFs each, and a virtio NIC without SR-IOV.
    fn two_pfs() -> FakeSysfs {
        let fake = FakeSysfs::new();
        fake.add_pf(
            &PfSpec::new(PF0)
                .netdev("enp59s0f0")
                .total_vfs(8)
                .numa_node(1)
                .iommu_group(40),
        )
        .add_pf(
            &PfSpec::new(PF1)
                .ids(0x15b3, 0x1017)
                .driver(Some("mlx5_core"))
                .netdev("enp59s0f1")
                .total_vfs(4)
                .iommu_group(41)
                .autoprobe(None),
        )
        .add_vf(
            PF0,
            &VfSpec::new(0, "0000:3b:10.0")
                .netdev("enp59s0f0v0")
                .numa_node(1)
                .iommu_group(50),
        )
        .add_vf(PF0, &VfSpec::vfio(1, "0000:3b:10.2").iommu_group(51))
        .add_vf(
            PF1,
            &VfSpec::new(0, "0000:3b:10.1")
                .ids(0x15b3, 0x1018)
                .driver(Some("mlx5_core"))
                .netdev("enp59s0f1v0")
                .rdma("mlx5_2")
                .iommu_group(52),
        )
        .add_vf(
            PF1,
            &VfSpec::new(1, "0000:3b:10.3")
                .ids(0x15b3, 0x1018)
                .driver(None)
                .iommu_group(52),
        )
        .add_plain_nic("0000:00:03.0", "virtio-pci", "eth0");
        fake
    }

    #[test]
    fn test_discover_two_pfs_with_their_vfs() {
        let fake = two_pfs();

        let host = discover(&fake.root()).expect("discovery succeeds");

        let addrs: Vec<&str> = host.pfs.iter().map(|p| p.address.as_str()).collect();
        assert_eq!(addrs, [PF0, PF1], "the virtio NIC is not a PF");
        let pf0 = host.pf(PF0).expect("PF0");
        assert_eq!((pf0.vendor_id, pf0.device_id), (0x8086, 0x10fb));
        assert_eq!(pf0.driver.as_deref(), Some("ixgbe"));
        assert_eq!(pf0.netdevs, ["enp59s0f0"]);
        assert_eq!((pf0.num_vfs, pf0.total_vfs), (2, 8));
        assert_eq!(pf0.drivers_autoprobe, Some(true));
        assert_eq!(pf0.numa_node, Some(1));
        assert_eq!(pf0.iommu_group, Some(40));
        assert!(pf0.numvfs_writable);
        let vf0 = &pf0.vfs[0];
        assert_eq!(vf0.address, "0000:3b:10.0");
        assert_eq!(vf0.index, 0);
        assert_eq!(vf0.netdev.as_deref(), Some("enp59s0f0v0"));
        assert_eq!(vf0.driver.as_deref(), Some("ixgbevf"));
        assert_eq!(vf0.driver_override, None, "(null) means no override");
        assert_eq!(vf0.numa_node, Some(1));
        assert_eq!(vf0.iommu_group, Some(50));
        assert!(!vf0.rdma);
        assert_eq!(
            vf0.info,
            VfInfo::default(),
            "no VF info source: all unknown"
        );

        let pf1 = host.pf(PF1).expect("PF1");
        assert_eq!(pf1.driver.as_deref(), Some("mlx5_core"));
        assert_eq!(pf1.drivers_autoprobe, None);
        assert_eq!(pf1.numa_node, None, "-1 is no NUMA node");
        let idx: Vec<u32> = pf1.vfs.iter().map(|v| v.index).collect();
        assert_eq!(idx, [0, 1]);
        assert_eq!(host.vfs().count(), 4);
    }

    #[test]
    fn test_discover_vf_queue_pairs_from_netdev_queues_or_msix() {
        let fake = FakeSysfs::new();
        fake.add_pf(&PfSpec::new(PF0).netdev("enp59s0f0").total_vfs(8))
            // Bound to its host driver: the netdev's queues count, not MSI-X.
            .add_vf(
                PF0,
                &VfSpec::new(0, "0000:3b:10.0")
                    .netdev("enp59s0f0v0")
                    .queues(4)
                    .msix(17),
            )
            // On vfio-pci: MSI-X vectors less the mailbox's.
            .add_vf(PF0, &VfSpec::vfio(1, "0000:3b:10.2").msix(3))
            .add_vf(PF0, &VfSpec::vfio(2, "0000:3b:10.4").msix(1))
            // Nothing to read: unknown.
            .add_vf(PF0, &VfSpec::vfio(3, "0000:3b:10.6"))
            .add_vf(PF0, &VfSpec::new(4, "0000:3b:11.0").netdev("enp59s0f0v4"));

        let host = discover(&fake.root()).expect("discovery succeeds");

        let qp: Vec<(&str, Option<u16>)> = host
            .vfs()
            .map(|(_, vf)| (vf.address.as_str(), vf.queue_pairs))
            .collect();
        assert_eq!(
            qp,
            [
                ("0000:3b:10.0", Some(4)),
                ("0000:3b:10.2", Some(2)),
                ("0000:3b:10.4", Some(1)),
                ("0000:3b:10.6", None),
                ("0000:3b:11.0", None),
            ]
        );
    }

    #[test]
    fn test_discover_rdma_flag_from_infiniband_dir() {
        let fake = two_pfs();

        let host = discover(&fake.root()).expect("discovery succeeds");

        let rdma: Vec<(&str, bool)> = host
            .vfs()
            .map(|(_, vf)| (vf.address.as_str(), vf.rdma))
            .collect();
        assert_eq!(
            rdma,
            [
                ("0000:3b:10.0", false),
                ("0000:3b:10.2", false),
                ("0000:3b:10.1", true),
                ("0000:3b:10.3", false),
            ]
        );
    }

    #[test]
    fn test_discover_shared_iommu_group_and_unbound_vf() {
        let fake = two_pfs();

        let host = discover(&fake.root()).expect("discovery succeeds");

        let pf1 = host.pf(PF1).expect("PF1");
        assert_eq!(pf1.vfs[0].iommu_group, Some(52));
        assert_eq!(pf1.vfs[1].iommu_group, Some(52));
        assert_eq!(pf1.vfs[1].driver, None);
        assert_eq!(pf1.vfs[1].netdev, None);
        let members = fs::read_dir(fake.path().join("sys/kernel/iommu_groups/52/devices"))
            .expect("group dir")
            .count();
        assert_eq!(members, 2);
    }

    #[test]
    fn test_discover_vf_bound_to_vfio_pci() {
        let fake = two_pfs();

        let host = discover(&fake.root()).expect("discovery succeeds");

        let vf = &host.pf(PF0).expect("PF0").vfs[1];
        assert_eq!(vf.address, "0000:3b:10.2");
        assert_eq!(vf.driver.as_deref(), Some("vfio-pci"));
        assert_eq!(vf.driver_override.as_deref(), Some("vfio-pci"));
        assert_eq!(vf.netdev, None);
    }

    #[test]
    fn test_discover_driver_without_sriov_configure_reads_numvfs_read_only() {
        let fake = FakeSysfs::new();
        fake.add_pf(&PfSpec::new(PF0).without_sriov_configure())
            .add_vf(PF0, &VfSpec::new(0, "0000:3b:10.0"));

        let host = discover(&fake.root()).expect("discovery succeeds");

        let pf = host.pf(PF0).expect("PF0");
        assert!(!pf.numvfs_writable);
        assert_eq!(pf.num_vfs, 1);
    }

    #[test]
    fn test_discover_empty_tree_and_non_sriov_devices_give_no_pfs() {
        let fake = FakeSysfs::new();
        fake.add_plain_nic("0000:00:03.0", "virtio-pci", "eth0");

        let host = discover(&fake.root()).expect("discovery succeeds");

        assert!(host.pfs.is_empty());
    }

    #[test]
    fn test_discover_missing_pci_dir_names_it() {
        let dir = FakeSysfs::new();
        let root = SysfsRoot::new(dir.path().join("nowhere"));

        let err = discover(&root).expect_err("no sys/bus/pci/devices");

        assert!(
            err.to_string().contains("nowhere/sys/bus/pci/devices"),
            "{err}"
        );
    }

    #[test]
    fn test_discover_missing_numvfs_is_an_error_naming_the_file() {
        let fake = two_pfs();
        fake.remove_attr(PF1, "sriov_numvfs");

        let err = discover(&fake.root()).expect_err("sriov_numvfs is required");

        assert!(matches!(err, SriovError::Io { .. }), "{err:?}");
        assert!(
            err.to_string().contains("0000:3b:00.1/sriov_numvfs"),
            "{err}"
        );
    }

    #[test]
    fn test_discover_missing_optional_files_leave_fields_unknown() {
        let fake = two_pfs();
        fake.remove_attr(PF0, "numa_node")
            .remove_attr(PF0, "iommu_group")
            .remove_attr(PF0, "driver")
            .remove_attr(PF0, "net")
            .remove_attr("0000:3b:10.0", "driver_override");

        let host = discover(&fake.root()).expect("discovery succeeds");

        let pf = host.pf(PF0).expect("PF0");
        assert_eq!(pf.numa_node, None);
        assert_eq!(pf.iommu_group, None);
        assert_eq!(pf.driver, None);
        assert!(pf.netdevs.is_empty());
        assert_eq!(pf.vfs[0].driver_override, None);
    }

    #[test]
    fn test_discover_malformed_numbers_are_errors_naming_the_file() {
        let cases = [
            (PF0, "sriov_totalvfs", "lots", "a decimal count"),
            (PF0, "sriov_numvfs", "-1", "a decimal count"),
            (PF0, "sriov_drivers_autoprobe", "yes", "0 or 1"),
            (PF0, "numa_node", "zero", "NUMA node"),
            (PF0, "vendor", "8086", "hex id"),
            ("0000:3b:10.0", "device", "0xzzzz", "hex id"),
            ("0000:3b:10.0", "numa_node", "-7", "NUMA node"),
        ];
        for (dev, attr, bad, expected) in cases {
            let fake = two_pfs();
            fake.set_attr(dev, attr, bad);

            let err = discover(&fake.root()).expect_err(attr);

            let msg = err.to_string();
            assert!(matches!(err, SriovError::Malformed { .. }), "{err:?}");
            assert!(msg.contains(&format!("/{attr}")), "{msg}");
            assert!(msg.contains(expected) && msg.contains(bad), "{msg}");
        }
    }

    #[test]
    fn test_discover_dangling_links_are_errors_naming_the_link() {
        for (dev, attr) in [
            (PF0, "virtfn1"),
            (PF0, "driver"),
            ("0000:3b:10.0", "iommu_group"),
        ] {
            let fake = two_pfs();
            fake.link_attr(dev, attr, "../gone");

            let err = discover(&fake.root()).expect_err(attr);

            assert!(matches!(err, SriovError::DanglingLink { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{dev}/{attr} -> ../gone")), "{msg}");
        }
    }

    #[test]
    fn test_discover_iommu_group_link_to_non_number_is_malformed() {
        let fake = two_pfs();
        fs::create_dir_all(fake.path().join("sys/kernel/iommu_groups/abc")).expect("mkdir");
        fake.link_attr(PF0, "iommu_group", "../../../kernel/iommu_groups/abc");

        let err = discover(&fake.root()).expect_err("not a number");

        assert!(err.to_string().contains("iommu_group"), "{err}");
        assert!(matches!(err, SriovError::Malformed { .. }), "{err:?}");
    }

    #[test]
    fn test_discover_with_source_fills_vf_info_by_index() {
        struct Fixed;
        impl VfInfoSource for Fixed {
            fn vf_infos(
                &self,
                pf_address: &str,
                pf_netdevs: &[String],
            ) -> Result<BTreeMap<u32, VfInfo>, SriovError> {
                let mut m = BTreeMap::new();
                if pf_address == PF0 {
                    assert_eq!(pf_netdevs, ["enp59s0f0"]);
                    m.insert(
                        1,
                        VfInfo {
                            mac: Some("02:00:00:00:00:01".into()),
                            vlan: Some(100),
                            spoof_check: Some(true),
                            trust: Some(false),
                            link_state: Some(VfLinkState::Auto),
                            ..Default::default()
                        },
                    );
                }
                Ok(m)
            }
        }
        let fake = two_pfs();

        let host = discover_with(&fake.root(), &Fixed).expect("discovery succeeds");

        let pf0 = host.pf(PF0).expect("PF0");
        assert_eq!(pf0.vfs[0].info, VfInfo::default());
        assert_eq!(pf0.vfs[1].info.vlan, Some(100));
        assert_eq!(pf0.vfs[1].info.link_state, Some(VfLinkState::Auto));
    }

    #[test]
    fn test_host_round_trips_through_json() {
        let fake = two_pfs();
        let host = discover(&fake.root()).expect("discovery succeeds");

        let json = serde_json::to_string(&host).expect("encodes");
        let back: Host = serde_json::from_str(&json).expect("decodes");

        assert_eq!(back, host);
    }
}
