//! Configuration through sysfs: the VF count of a PF and the driver a VF is bound to,
//! each verified by reading the result back.
//!
//! The kernel's rules this module follows:
//! * `sriov_numvfs` only goes from 0 to N or from N to 0 (a write of another non-zero
//!   count fails with `EBUSY`), so a change from N to M goes through 0.
//! * A VF is handed to `vfio-pci` by writing `vfio-pci` to its `driver_override`,
//!   unbinding it from its driver and asking the bus to probe it again
//!   (`drivers_probe`). Clearing `driver_override` and probing again gives it back to
//!   its own driver (e.g. `igbvf`, `iavf`, `mlx5_core`).
//!
//! On any failure the device is put back the way it was (best effort, logged when
//! that fails too), and the error names the device, the attribute and the value.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::errors::{ErrorId, SeedError};
use crate::host::PhysFunction;
use crate::sysfs::{physical_function, SriovError, SysfsRoot};

/// The driver a VF needs for passthrough.
pub const VFIO_PCI: &str = "vfio-pci";

/// Why a configuration step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No PCI device has this address.
    #[error("no PCI device {address} in {}", devices.display())]
    NoSuchDevice {
        /// The address asked for.
        address: String,
        /// Where it was looked for.
        devices: PathBuf,
    },
    /// The device exists but is not an SR-IOV physical function.
    #[error("{address} is not an SR-IOV physical function (it has no sriov_totalvfs)")]
    NotPf {
        /// The device.
        address: String,
    },
    /// The device exists but is not a virtual function.
    #[error("{address} is not an SR-IOV virtual function (it has no physfn link)")]
    NotVf {
        /// The device.
        address: String,
    },
    /// More VFs asked for than the PF can expose.
    #[error("PF {pf}: cannot enable {wanted} VFs, the device supports at most {total}")]
    TooManyVfs {
        /// The PF.
        pf: String,
        /// The count asked for.
        wanted: u32,
        /// `sriov_totalvfs`.
        total: u32,
    },
    /// The kernel refused a sysfs write.
    #[error("{device}: writing {value:?} to {attribute} failed: {} ({}){}",
        errno_text(source), errno_name(source),
        seed.as_ref().map(|s| format!(" [{}]", s.id)).unwrap_or_default())]
    Write {
        /// The device the attribute belongs to.
        device: String,
        /// The attribute (file) name, or the path for bus-level files.
        attribute: String,
        /// What was written.
        value: String,
        /// The kernel's error.
        source: io::Error,
        /// The seed error this kernel error means, when there is one (e.g.
        /// `ENOENT` on `sriov_numvfs`: the PF driver cannot create VFs).
        seed: Option<Box<SeedError>>,
    },
    /// A write was accepted but reading back shows it did not take effect.
    #[error("{device}: {what} should be {wanted} after the change, but reads {got}")]
    NotApplied {
        /// The device.
        device: String,
        /// What was checked.
        what: String,
        /// The expected value.
        wanted: String,
        /// The value read back.
        got: String,
    },
    /// The `vfio-pci` driver is not registered (module not loaded).
    #[error("the vfio-pci driver is not loaded ({} is missing): run `modprobe vfio-pci`", path.display())]
    NoVfioDriver {
        /// The driver directory looked for.
        path: PathBuf,
    },
    /// Reading sysfs failed.
    #[error(transparent)]
    Read(#[from] SriovError),
}

impl ConfigError {
    /// The seed error behind this failure, if the kernel's answer maps to one.
    pub fn seed(&self) -> Option<&SeedError> {
        match self {
            ConfigError::Write { seed, .. } => seed.as_deref(),
            _ => None,
        }
    }
}

/// The strerror text of an I/O error without Rust's " (os error N)" suffix.
fn errno_text(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The symbolic name of an I/O error's errno (`EBUSY`), or its kind.
fn errno_name(e: &io::Error) -> String {
    e.raw_os_error()
        .map_or_else(|| format!("{:?}", e.kind()), crate::errno::name)
}

/// Writes `value` to `path` in one `write(2)`, as sysfs wants. `O_TRUNC`, as the
/// shell's `>` uses: sysfs ignores it, fake trees need it.
fn write_attr(path: &Path, device: &str, attribute: &str, value: &str) -> Result<(), ConfigError> {
    let res = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    res.map_err(|source| ConfigError::Write {
        device: device.to_string(),
        attribute: attribute.to_string(),
        value: value.trim_end().to_string(),
        source,
        seed: None,
    })
}

/// The PF at `address`, or a clear error when there is no such device or it is not a PF.
pub fn pf_at(root: &SysfsRoot, address: &str) -> Result<PhysFunction, ConfigError> {
    match physical_function(root, address)? {
        Some(pf) => Ok(pf),
        None if root.pci_device(address).exists() => Err(ConfigError::NotPf {
            address: address.to_string(),
        }),
        None => Err(ConfigError::NoSuchDevice {
            address: address.to_string(),
            devices: root.pci_devices(),
        }),
    }
}

/// Sets the number of enabled VFs of the PF at `pf_address` to `count` and checks
/// that the PF then has exactly `count` VFs. A change between two non-zero counts
/// goes through 0, as the kernel requires; if the new count cannot be set, the old
/// one is restored. Returns the PF as read back.
pub fn set_num_vfs(
    root: &SysfsRoot,
    pf_address: &str,
    count: u32,
) -> Result<PhysFunction, ConfigError> {
    let pf = pf_at(root, pf_address)?;
    if count > pf.total_vfs {
        return Err(ConfigError::TooManyVfs {
            pf: pf.address,
            wanted: count,
            total: pf.total_vfs,
        });
    }
    if pf.num_vfs == count {
        return Ok(pf);
    }
    let path = root.pci_device(pf_address).join("sriov_numvfs");
    let write = |n: u32| {
        write_attr(&path, pf_address, "sriov_numvfs", &n.to_string()).map_err(|e| match e {
            ConfigError::Write {
                device,
                attribute,
                value,
                source,
                ..
            } => {
                let seed = match source.raw_os_error() {
                    // sriov_numvfs_store: no driver, or a driver without sriov_configure.
                    Some(libc::ENOENT) => Some(Box::new(SeedError::new(
                        ErrorId::SriovSupportMissingPfDriver,
                        pf_address,
                    ))),
                    // sriov_enable: the last VF's bus number is beyond the bridge's range.
                    Some(libc::ENOMEM) => Some(Box::new(SeedError::new(
                        ErrorId::SriovSupportNoBusResources,
                        pf_address,
                    ))),
                    _ => None,
                };
                ConfigError::Write {
                    device,
                    attribute,
                    value,
                    source,
                    seed,
                }
            }
            other => other,
        })
    };
    if pf.num_vfs != 0 && count != 0 {
        write(0)?;
    }
    if let Err(e) = write(count) {
        restore_num_vfs(root, pf_address, pf.num_vfs);
        return Err(e);
    }
    let after = pf_at(root, pf_address)?;
    let links = after.vfs.len() as u32;
    if after.num_vfs != count || links != count {
        restore_num_vfs(root, pf_address, pf.num_vfs);
        return Err(ConfigError::NotApplied {
            device: pf_address.to_string(),
            what: "the number of VFs (sriov_numvfs / virtfn links)".to_string(),
            wanted: count.to_string(),
            got: format!("{} / {links}", after.num_vfs),
        });
    }
    Ok(after)
}

/// Best-effort return to `count` VFs after a failed change.
fn restore_num_vfs(root: &SysfsRoot, pf_address: &str, count: u32) {
    let path = root.pci_device(pf_address).join("sriov_numvfs");
    let current = fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    if current == Some(count) {
        return;
    }
    let mut res = Ok(());
    if current != Some(0) && count != 0 {
        res = write_attr(&path, pf_address, "sriov_numvfs", "0");
    }
    if res.is_ok() {
        res = write_attr(&path, pf_address, "sriov_numvfs", &count.to_string());
    }
    if let Err(e) = res {
        log::warn!("PF {pf_address}: could not restore {count} VFs: {e}");
    }
}

/// A VF's binding as read from sysfs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Binding {
    /// The VF's PCI address.
    pub address: String,
    /// The bound driver, `None` when unbound.
    pub driver: Option<String>,
    /// `driver_override`, `None` when cleared.
    pub driver_override: Option<String>,
    /// The VF's IOMMU group.
    pub iommu_group: Option<u32>,
    /// The VFIO group device (`/dev/vfio/<group>`), when bound to vfio-pci and
    /// present under the root.
    pub vfio_device: Option<PathBuf>,
}

/// Reads the binding of the VF at `address` (which must be a VF).
pub fn binding(root: &SysfsRoot, address: &str) -> Result<Binding, ConfigError> {
    let dev = root.pci_device(address);
    if !dev.exists() {
        return Err(ConfigError::NoSuchDevice {
            address: address.to_string(),
            devices: root.pci_devices(),
        });
    }
    if fs::symlink_metadata(dev.join("physfn")).is_err() {
        return Err(ConfigError::NotVf {
            address: address.to_string(),
        });
    }
    let last = |p: PathBuf| -> Option<String> {
        fs::read_link(p)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
    };
    let driver = last(dev.join("driver"));
    let iommu_group: Option<u32> = last(dev.join("iommu_group")).and_then(|g| g.parse().ok());
    let driver_override = fs::read_to_string(dev.join("driver_override"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s != "(null)");
    let vfio_device = match (&driver, iommu_group) {
        (Some(d), Some(g)) if d == VFIO_PCI => {
            let p = root.path().join("dev/vfio").join(g.to_string());
            p.exists().then_some(p)
        }
        _ => None,
    };
    Ok(Binding {
        address: address.to_string(),
        driver,
        driver_override,
        iommu_group,
        vfio_device,
    })
}

/// Unbinds the device from `driver` (if bound) and sets `driver_override` to
/// `override_to` (empty clears it), then asks the bus to probe it.
fn rebind(
    root: &SysfsRoot,
    address: &str,
    driver: Option<&str>,
    override_to: &str,
) -> Result<(), ConfigError> {
    let dev = root.pci_device(address);
    // The override first, so nothing else grabs the device between unbind and probe.
    write_attr(
        &dev.join("driver_override"),
        address,
        "driver_override",
        &format!("{override_to}\n"),
    )?;
    if let Some(d) = driver {
        write_attr(
            &root
                .path()
                .join("sys/bus/pci/drivers")
                .join(d)
                .join("unbind"),
            address,
            &format!("/sys/bus/pci/drivers/{d}/unbind"),
            address,
        )?;
    }
    write_attr(
        &root.path().join("sys/bus/pci/drivers_probe"),
        address,
        "/sys/bus/pci/drivers_probe",
        address,
    )
}

/// Binds the VF at `address` to `vfio-pci` and checks that it took: the VF's driver
/// is `vfio-pci` and its VFIO group device exists. On failure the VF goes back to
/// the driver it had. Returns the binding read back.
pub fn bind_vfio(root: &SysfsRoot, address: &str) -> Result<Binding, ConfigError> {
    let before = binding(root, address)?;
    if before.driver.as_deref() == Some(VFIO_PCI) {
        return Ok(before);
    }
    let drv = root.path().join("sys/bus/pci/drivers").join(VFIO_PCI);
    if !drv.exists() {
        return Err(ConfigError::NoVfioDriver { path: drv });
    }
    let res = rebind(root, address, before.driver.as_deref(), VFIO_PCI).and_then(|()| {
        let after = binding(root, address)?;
        if after.driver.as_deref() != Some(VFIO_PCI) {
            return Err(not_applied(address, "its driver", VFIO_PCI, &after.driver));
        }
        if after.vfio_device.is_none() {
            let want = after.iommu_group.map_or_else(
                || "an IOMMU group".to_string(),
                |g| format!("/dev/vfio/{g}"),
            );
            return Err(ConfigError::NotApplied {
                device: address.to_string(),
                what: "its VFIO group device".to_string(),
                wanted: want,
                got: "nothing (is the IOMMU on?)".to_string(),
            });
        }
        Ok(after)
    });
    if res.is_err() {
        restore_binding(root, &before);
    }
    res
}

/// Gives the VF at `address` back from `vfio-pci` to its own driver: clears
/// `driver_override`, unbinds and probes again. Checks that the VF is then bound to
/// a driver other than `vfio-pci` (to `expect_driver` when given). A VF not bound to
/// `vfio-pci` with no override is left alone.
pub fn unbind_vfio(
    root: &SysfsRoot,
    address: &str,
    expect_driver: Option<&str>,
) -> Result<Binding, ConfigError> {
    let before = binding(root, address)?;
    if before.driver.as_deref() != Some(VFIO_PCI) && before.driver_override.is_none() {
        return Ok(before);
    }
    let res = rebind(root, address, before.driver.as_deref(), "").and_then(|()| {
        let after = binding(root, address)?;
        let ok = match (expect_driver, after.driver.as_deref()) {
            (_, None) | (_, Some(VFIO_PCI)) => false,
            (Some(want), Some(got)) => want == got,
            (None, Some(_)) => true,
        };
        if !ok || after.driver_override.is_some() {
            return Err(not_applied(
                address,
                "its driver",
                expect_driver.unwrap_or("its own VF driver"),
                &after.driver,
            ));
        }
        Ok(after)
    });
    if res.is_err() {
        restore_binding(root, &before);
    }
    res
}

fn not_applied(address: &str, what: &str, wanted: &str, got: &Option<String>) -> ConfigError {
    ConfigError::NotApplied {
        device: address.to_string(),
        what: what.to_string(),
        wanted: wanted.to_string(),
        got: got.clone().unwrap_or_else(|| "no driver".to_string()),
    }
}

/// Best effort: put the VF back on the driver and override it had.
fn restore_binding(root: &SysfsRoot, before: &Binding) {
    let now = match binding(root, &before.address) {
        Ok(b) => b,
        Err(e) => {
            log::warn!(
                "{}: cannot read its binding to restore it: {e}",
                before.address
            );
            return;
        }
    };
    if now.driver == before.driver && now.driver_override == before.driver_override {
        return;
    }
    let over = before.driver_override.clone().unwrap_or_default();
    if now.driver == before.driver {
        // Only the override changed: put it back, no need to unbind.
        let path = root.pci_device(&before.address).join("driver_override");
        if let Err(e) = write_attr(
            &path,
            &before.address,
            "driver_override",
            &format!("{over}\n"),
        ) {
            log::warn!("{}: could not restore driver_override: {e}", before.address);
        }
        return;
    }
    if let Err(e) = rebind(root, &before.address, now.driver.as_deref(), &over) {
        log::warn!(
            "{}: could not give it back to {}: {e}",
            before.address,
            before.driver.as_deref().unwrap_or("no driver")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{FakeSysfs, PfSpec, VfSpec};

    fn host() -> FakeSysfs {
        let fake = FakeSysfs::new();
        fake.add_pf(&PfSpec::new("0000:01:00.0").netdev("eth1").total_vfs(4));
        fake.add_vf(
            "0000:01:00.0",
            &VfSpec::new(0, "0000:01:10.0").netdev("eth2").iommu_group(7),
        );
        fake.add_plain_nic("0000:00:03.0", "virtio-pci", "eth0");
        fake
    }

    #[test]
    fn unknown_address_is_named() {
        let fake = host();
        let e = set_num_vfs(&fake.root(), "0000:09:00.0", 1).expect_err("no such device");
        assert!(matches!(e, ConfigError::NoSuchDevice { .. }), "{e}");
        assert!(e.to_string().contains("0000:09:00.0"), "{e}");
        let e = bind_vfio(&fake.root(), "0000:09:00.0").expect_err("no such device");
        assert!(e.to_string().contains("no PCI device 0000:09:00.0"), "{e}");
    }

    #[test]
    fn a_plain_nic_is_not_a_pf_nor_a_vf() {
        let fake = host();
        let e = set_num_vfs(&fake.root(), "0000:00:03.0", 1).expect_err("not a PF");
        assert!(matches!(e, ConfigError::NotPf { .. }), "{e}");
        let e = bind_vfio(&fake.root(), "0000:00:03.0").expect_err("not a VF");
        assert!(matches!(e, ConfigError::NotVf { .. }), "{e}");
        // A PF is not a VF either.
        let e = bind_vfio(&fake.root(), "0000:01:00.0").expect_err("not a VF");
        assert!(e
            .to_string()
            .contains("0000:01:00.0 is not an SR-IOV virtual function"));
    }

    #[test]
    fn a_count_above_total_is_refused_before_any_write() {
        let fake = host();
        let e = set_num_vfs(&fake.root(), "0000:01:00.0", 5).expect_err("too many");
        assert_eq!(
            e.to_string(),
            "PF 0000:01:00.0: cannot enable 5 VFs, the device supports at most 4"
        );
        let numvfs = fs::read_to_string(fake.device_dir("0000:01:00.0").join("sriov_numvfs"))
            .expect("readable");
        assert_eq!(numvfs.trim(), "1");
    }

    #[test]
    fn same_count_is_a_no_op() {
        let fake = host();
        let pf = set_num_vfs(&fake.root(), "0000:01:00.0", 1).expect("no change needed");
        assert_eq!(pf.num_vfs, 1);
    }

    /// A fake tree has no kernel behind it: the write lands in a file but no VF
    /// appears, which is exactly "accepted but not applied". The old count is restored.
    #[test]
    fn a_write_without_effect_is_not_applied_and_rolled_back() {
        let fake = host();
        let e = set_num_vfs(&fake.root(), "0000:01:00.0", 3).expect_err("no kernel");
        let msg = e.to_string();
        assert!(matches!(e, ConfigError::NotApplied { .. }), "{msg}");
        assert!(
            msg.contains("0000:01:00.0") && msg.contains("should be 3"),
            "{msg}"
        );
        // It went through 0 (1 -> 0 -> 3) and was restored to 1.
        let numvfs = fs::read_to_string(fake.device_dir("0000:01:00.0").join("sriov_numvfs"))
            .expect("readable");
        assert_eq!(numvfs.trim(), "1");
    }

    /// A write the kernel refuses: here a bus file that is a directory (`EISDIR`),
    /// standing in for EBUSY/EINVAL/EPERM. The error names device, file, value and
    /// errno, and the override written before it is taken back.
    #[test]
    fn a_refused_write_names_device_value_and_errno_and_is_rolled_back() {
        let fake = host();
        fs::create_dir_all(fake.path().join("sys/bus/pci/drivers/vfio-pci")).expect("mkdir");
        fs::create_dir_all(fake.path().join("sys/bus/pci/drivers/ixgbevf/unbind")).expect("mkdir");
        fs::write(fake.path().join("sys/bus/pci/drivers_probe"), "").expect("w");
        let e = bind_vfio(&fake.root(), "0000:01:10.0").expect_err("refused");
        let msg = e.to_string();
        assert!(
            msg.starts_with(
                "0000:01:10.0: writing \"0000:01:10.0\" to /sys/bus/pci/drivers/ixgbevf/unbind failed: "
            ),
            "{msg}"
        );
        assert!(msg.contains("EISDIR"), "{msg}");
        assert!(e.seed().is_none());
        let b = binding(&fake.root(), "0000:01:10.0").expect("binding");
        assert_eq!(b.driver_override, None, "override taken back");
    }

    #[test]
    fn errno_maps_to_seed_ids() {
        let e = io::Error::from_raw_os_error(libc::EBUSY);
        assert_eq!(errno_name(&e), "EBUSY");
        assert_eq!(errno_text(&e), "Device or resource busy");
        // What sriov_numvfs_store / sriov_enable return for the seed's cases.
        let enoent = ConfigError::Write {
            device: "0000:01:00.0".into(),
            attribute: "sriov_numvfs".into(),
            value: "4".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
            seed: Some(Box::new(SeedError::new(
                ErrorId::SriovSupportMissingPfDriver,
                "0000:01:00.0",
            ))),
        };
        let msg = enoent.to_string();
        assert!(
            msg.ends_with("(ENOENT) [Sriov_support_MissingPfDriver]"),
            "{msg}"
        );
    }

    #[test]
    fn bind_without_vfio_driver_is_a_clear_error_and_changes_nothing() {
        let fake = host();
        let e = bind_vfio(&fake.root(), "0000:01:10.0").expect_err("no vfio-pci");
        assert!(e.to_string().contains("modprobe vfio-pci"), "{e}");
        let b = binding(&fake.root(), "0000:01:10.0").expect("binding");
        assert_eq!(b.driver.as_deref(), Some("ixgbevf"));
        assert_eq!(b.driver_override, None);
    }

    /// With vfio-pci registered but no kernel to act on the writes, the driver link
    /// does not change: not applied, and the override is cleared again.
    #[test]
    fn bind_that_does_not_take_is_rolled_back() {
        let fake = host();
        fs::create_dir_all(fake.path().join("sys/bus/pci/drivers/vfio-pci")).expect("mkdir");
        fs::write(fake.path().join("sys/bus/pci/drivers/ixgbevf/unbind"), "").expect("w");
        fs::write(fake.path().join("sys/bus/pci/drivers_probe"), "").expect("w");
        let e = bind_vfio(&fake.root(), "0000:01:10.0").expect_err("no kernel");
        let msg = e.to_string();
        assert!(
            msg.contains("0000:01:10.0: its driver should be vfio-pci after the change"),
            "{msg}"
        );
        let b = binding(&fake.root(), "0000:01:10.0").expect("binding");
        assert_eq!(b.driver_override, None, "override restored");
    }

    #[test]
    fn a_vf_already_on_vfio_is_reported_with_its_group_device() {
        let fake = host();
        fake.add_vf(
            "0000:01:00.0",
            &VfSpec::vfio(1, "0000:01:10.2").iommu_group(8),
        );
        fs::create_dir_all(fake.path().join("dev/vfio")).expect("mkdir");
        fs::write(fake.path().join("dev/vfio/8"), "").expect("w");
        let b = bind_vfio(&fake.root(), "0000:01:10.2").expect("already bound");
        assert_eq!(b.driver.as_deref(), Some(VFIO_PCI));
        assert_eq!(b.vfio_device, Some(fake.path().join("dev/vfio/8")));
    }
}
