//! Prerequisite checks for accelerated networking on a Linux node.
//!
//! [`check_node`] reads everything relative to a [`SysfsRoot`] (`/` on a real host, a
//! `FakeSysfs` tree in tests) and returns a [`PrereqReport`]: one [`Check`] per
//! node-wide prerequisite and per network adapter. A failing check carries the
//! seed's error ([`SeedError`]: id, message, Linux hint). Nothing here fails as a
//! whole: an unreadable file makes its check fail or warn, with the path in the
//! detail.
//!
//! Node checks and the files they read:
//!
//! - `kernel`: `proc/sys/kernel/osrelease` must be at least [`MIN_KERNEL`], else
//!   `Accel_net_not_supported`.
//! - `iommu`: an entry in `sys/class/iommu/` or in `sys/kernel/iommu_groups/`, else
//!   `Accel_net_not_supported`; the IOMMU options of `proc/cmdline` go in the detail.
//! - `vfio-pci`: `sys/bus/pci/drivers/vfio-pci` (loaded), else the module listed in
//!   `lib/modules/<release>/modules.builtin` or `modules.dep` (pass, "not loaded;
//!   modprobe vfio-pci"), else `Accel_net_not_supported`.
//! - `smt`: `sys/devices/system/cpu/smt/active` and `control`. Always passes; the
//!   state ([`PrereqReport::hyperthreading`]) is compared across nodes by
//!   [`compare_hyperthreading`] (`Hyperthreading_check_failed`).
//!
//! Network adapters are the PCI devices of `sys/bus/pci/devices/*` with a class of
//! 0x02xxxx that have a `net/` directory or a driver, and are not VFs (no `physfn`).
//! The subject of their checks is the first netdev name, else the PCI address.
//!
//! - `sriov`: `sriov_totalvfs` present and non-zero, else `Sriov_support_Unknown`
//!   (and no further checks for that adapter).
//! - `pf-driver`, heuristics in order: `sriov_numvfs` > 0 proves support (pass); no
//!   driver bound: fail; `sriov_numvfs` without write bits (how `FakeSysfs` models a
//!   driver without `sriov_configure`; real kernels keep it 0644): fail; then
//!   `proc/kallsyms` is searched for a symbol containing `sriov_configure` of the
//!   driver's module (the `module` link of `sys/bus/pci/drivers/<driver>`, else the
//!   driver name with `-` as `_`), e.g. `igb_pci_sriov_configure [igb]`: pass; a
//!   built-in driver passes with an unbracketed `<driver>*sriov_configure*` symbol.
//!   The module has symbols but none such: `Sriov_support_MissingPfDriver`. No
//!   symbol of the module at all (built-in, or kallsyms hidden) or kallsyms
//!   unreadable: warn, "cannot verify" (`pci_sriov_configure_simple` exists in
//!   every kernel with SR-IOV, so it proves nothing about one driver).
//! - `acs`: with VFs enabled, each VF's `iommu_group/devices/` must hold only that
//!   VF, else `Sriov_support_MissingAcs` naming the other devices; a VF bound to
//!   `vfio-pci` is reported ready for passthrough. Without VFs, the PF's group may
//!   hold only the PF's own functions (same bus and slot), and every root port or
//!   switch downstream port on the path up (the parent directories of the PF's
//!   resolved device path) must implement ACS SV, RR, CR and UF (read from its
//!   `config`, see [`crate::pciconfig`]); a PCIe-to-PCI bridge on the path fails.
//!   A config space too short to show extended capabilities (non-root readers get
//!   64 bytes) or no IOMMU group: warn.
//! - `bus-numbers`: the routing id of the last VF, PF routing id plus First VF
//!   Offset plus (TotalVFs - 1) times VF Stride (`sriov_offset`, `sriov_stride`,
//!   else the PF's SR-IOV capability), must be on a bus the parent bridge forwards
//!   (`subordinate_bus_number`, else its config byte 0x1a), else
//!   `Sriov_support_NoBusResources`. A PF on a root bus passes when its VFs stay on
//!   that bus and warns otherwise (the host bridge's bus range is not in sysfs).

use std::cell::OnceCell;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::errors::{ErrorId, SeedError, MIN_KERNEL};
use crate::pciconfig::{acs_bits_names, PciConfig, PciePortType};
use crate::sysfs::SysfsRoot;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The prerequisite is met.
    Pass,
    /// Could not be verified, or met with a caveat.
    Warn,
    /// Not met; [`Check::error`] says which seed error.
    Fail,
}

/// One prerequisite check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// `kernel`, `iommu`, `vfio-pci`, `smt`, `adapters`, `sriov`, `pf-driver`, `acs`
    /// or `bus-numbers`.
    pub name: String,
    /// The adapter (netdev name, else PCI address) for per-adapter checks.
    pub subject: Option<String>,
    /// Pass, warn or fail.
    pub status: Status,
    /// What was found, with the Linux specifics (paths, values).
    pub detail: String,
    /// The seed error of a failing check.
    pub error: Option<SeedError>,
}

impl Check {
    fn new(name: &str, subject: Option<&str>, status: Status, detail: String) -> Self {
        Check {
            name: name.to_string(),
            subject: subject.map(str::to_string),
            status,
            detail,
            error: None,
        }
    }

    fn pass(name: &str, subject: Option<&str>, detail: String) -> Self {
        Check::new(name, subject, Status::Pass, detail)
    }

    fn warn(name: &str, subject: Option<&str>, detail: String) -> Self {
        Check::new(name, subject, Status::Warn, detail)
    }

    fn fail(name: &str, subject: Option<&str>, detail: String, error: SeedError) -> Self {
        Check {
            error: Some(error),
            ..Check::new(name, subject, Status::Fail, detail)
        }
    }
}

/// The prerequisite checks of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrereqReport {
    /// Host name (`proc/sys/kernel/hostname`).
    pub node: String,
    /// Kernel release (`proc/sys/kernel/osrelease`), empty when unreadable.
    pub kernel: String,
    /// Whether SMT (hyperthreading) is active; `None` when unknown.
    pub hyperthreading: Option<bool>,
    /// Every check, node checks first, then per adapter.
    pub checks: Vec<Check>,
}

impl PrereqReport {
    /// The failing checks.
    pub fn failed(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Fail)
    }

    /// The checks that warn.
    pub fn warnings(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.status == Status::Warn)
    }

    /// Whether no check failed (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.failed().next().is_none()
    }

    /// The check `name` of `subject` (`None`: a node check), if it was run.
    pub fn check(&self, name: &str, subject: Option<&str>) -> Option<&Check> {
        self.checks
            .iter()
            .find(|c| c.name == name && c.subject.as_deref() == subject)
    }
}

/// What [`check_node_with`] looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrereqOptions {
    /// Only these adapters (netdev names or PCI addresses); `None`: every network
    /// adapter of the node.
    pub adapters: Option<Vec<String>>,
}

/// Runs every check on the node under `root`, for every network adapter.
pub fn check_node(root: &SysfsRoot) -> PrereqReport {
    check_node_with(root, &PrereqOptions::default())
}

/// Runs every check on the node under `root`, for the adapters `options` selects.
pub fn check_node_with(root: &SysfsRoot, options: &PrereqOptions) -> PrereqReport {
    let ctx = Ctx {
        root,
        kallsyms: OnceCell::new(),
    };
    let node = hostname(root);
    let kernel = read_trim(&root.path().join("proc/sys/kernel/osrelease")).unwrap_or_default();
    let mut checks = vec![
        check_kernel(root, &node, &kernel),
        check_iommu(root, &node),
        check_vfio(root, &node, &kernel),
    ];
    let (hyperthreading, smt) = check_smt(root);
    checks.push(smt);
    let adapters: Vec<Adapter> = adapters(root)
        .into_iter()
        .filter(|a| match &options.adapters {
            None => true,
            Some(want) => want
                .iter()
                .any(|w| *w == a.address || a.netdevs.contains(w)),
        })
        .collect();
    if adapters.is_empty() {
        checks.push(Check::warn(
            "adapters",
            None,
            format!(
                "no PCI network adapter found in {}{}",
                root.pci_devices().display(),
                if options.adapters.is_some() {
                    " matching the selection"
                } else {
                    ""
                }
            ),
        ));
    }
    for a in &adapters {
        check_adapter(&ctx, a, &mut checks);
    }
    PrereqReport {
        node,
        kernel,
        hyperthreading,
        checks,
    }
}

/// The cross-node hyperthreading check: `Hyperthreading_check_failed` when some
/// reports say SMT is active and others that it is not (unknown states are
/// ignored).
pub fn compare_hyperthreading(reports: &[PrereqReport]) -> Option<SeedError> {
    let on = reports.iter().any(|r| r.hyperthreading == Some(true));
    let off = reports.iter().any(|r| r.hyperthreading == Some(false));
    (on && off).then(|| SeedError::new(ErrorId::HyperthreadingCheckFailed, ""))
}

/// [`compare_hyperthreading`] as a [`Check`] named `hyperthreading`, whose detail
/// names the nodes in each state.
pub fn hyperthreading_check(reports: &[PrereqReport]) -> Check {
    let names = |state: Option<bool>| {
        reports
            .iter()
            .filter(|r| r.hyperthreading == state)
            .map(|r| r.node.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let detail = format!(
        "SMT on: [{}]; off: [{}]; unknown: [{}]",
        names(Some(true)),
        names(Some(false)),
        names(None)
    );
    match compare_hyperthreading(reports) {
        Some(e) => Check::fail("hyperthreading", None, detail, e),
        None => Check::pass("hyperthreading", None, detail),
    }
}

struct Ctx<'a> {
    root: &'a SysfsRoot,
    kallsyms: OnceCell<Option<String>>,
}

impl Ctx<'_> {
    fn kallsyms(&self) -> Option<&str> {
        self.kallsyms
            .get_or_init(|| fs::read_to_string(self.root.path().join("proc/kallsyms")).ok())
            .as_deref()
    }
}

/// A network adapter that is not a VF.
struct Adapter {
    address: String,
    /// `sys/bus/pci/devices/<address>`.
    dev: PathBuf,
    netdevs: Vec<String>,
    driver: Option<String>,
    subject: String,
}

impl Adapter {
    /// `<netdev> (<address>)`, or the address alone.
    fn label(&self) -> String {
        if self.subject == self.address {
            self.address.clone()
        } else {
            format!("{} ({})", self.subject, self.address)
        }
    }
}

fn adapters(root: &SysfsRoot) -> Vec<Adapter> {
    let dir = root.pci_devices();
    let mut out = Vec::new();
    for address in dir_names(&dir) {
        let dev = dir.join(&address);
        let class = read_trim(&dev.join("class"))
            .and_then(|c| u32::from_str_radix(c.trim_start_matches("0x"), 16).ok());
        if class.map(|c| c >> 16) != Some(0x02) || is_link(&dev.join("physfn")) {
            continue;
        }
        let netdevs = dir_names(&dev.join("net"));
        let driver = link_name(&dev.join("driver"));
        if netdevs.is_empty() && driver.is_none() {
            continue;
        }
        let subject = netdevs.first().cloned().unwrap_or_else(|| address.clone());
        out.push(Adapter {
            address,
            dev,
            netdevs,
            driver,
            subject,
        });
    }
    out
}

fn check_kernel(root: &SysfsRoot, node: &str, release: &str) -> Check {
    let err = || SeedError::new(ErrorId::AccelNetNotSupported, node);
    if release.is_empty() {
        let path = root.path().join("proc/sys/kernel/osrelease");
        return Check::fail(
            "kernel",
            None,
            format!("cannot read the kernel release from {}", path.display()),
            err(),
        );
    }
    match (kernel_version(release), kernel_version(MIN_KERNEL)) {
        (Some(have), Some(need)) if have >= need => Check::pass(
            "kernel",
            None,
            format!("kernel {release} (minimum {MIN_KERNEL})"),
        ),
        (Some(_), _) => Check::fail(
            "kernel",
            None,
            format!("kernel {release} is older than {MIN_KERNEL}"),
            err(),
        ),
        (None, _) => Check::fail(
            "kernel",
            None,
            format!("cannot parse kernel release {release:?}"),
            err(),
        ),
    }
}

/// `(major, minor)` of a release like `6.1.0-18-amd64`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let num = |s: Option<&str>| -> Option<u32> {
        let s = s?;
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        s[..end].parse().ok()
    };
    let major = num(parts.next())?;
    let minor = num(parts.next()).unwrap_or(0);
    Some((major, minor))
}

fn check_iommu(root: &SysfsRoot, node: &str) -> Check {
    let units = dir_names(&root.path().join("sys/class/iommu"));
    let groups = dir_names(&root.path().join("sys/kernel/iommu_groups"));
    let cmdline = read_trim(&root.path().join("proc/cmdline")).unwrap_or_default();
    let flags: Vec<&str> = cmdline
        .split_whitespace()
        .filter(|t| {
            ["intel_iommu=", "amd_iommu=", "iommu=", "iommu.passthrough="]
                .iter()
                .any(|p| t.starts_with(p))
        })
        .collect();
    let flags = if flags.is_empty() {
        "no IOMMU option on the kernel command line".to_string()
    } else {
        format!("kernel command line: {}", flags.join(" "))
    };
    if !units.is_empty() || !groups.is_empty() {
        Check::pass(
            "iommu",
            None,
            format!(
                "IOMMU on: units [{}], {} IOMMU groups; {flags}",
                units.join(", "),
                groups.len()
            ),
        )
    } else {
        Check::fail(
            "iommu",
            None,
            format!(
                "IOMMU off: no IOMMU unit in sys/class/iommu and no IOMMU group in \
                 sys/kernel/iommu_groups; {flags}; enable VT-d/AMD-Vi in the firmware \
                 and boot with intel_iommu=on (Intel) or amd_iommu=on (AMD)"
            ),
            SeedError::new(ErrorId::AccelNetNotSupported, node),
        )
    }
}

fn check_vfio(root: &SysfsRoot, node: &str, release: &str) -> Check {
    let drivers = root.path().join("sys/bus/pci/drivers/vfio-pci");
    if drivers.exists() {
        return Check::pass("vfio-pci", None, "vfio-pci driver loaded".to_string());
    }
    let modules = root.path().join("lib/modules").join(release);
    let listed = |file: &str| -> bool {
        let Some(text) = (!release.is_empty())
            .then(|| fs::read_to_string(modules.join(file)).ok())
            .flatten()
        else {
            return false;
        };
        text.lines().any(|line| {
            let path = line.split(':').next().unwrap_or("").trim();
            let base = path.rsplit('/').next().unwrap_or("");
            let name = base.split(".ko").next().unwrap_or("");
            base.contains(".ko") && (name == "vfio-pci" || name == "vfio_pci")
        })
    };
    if listed("modules.builtin") {
        Check::pass(
            "vfio-pci",
            None,
            "vfio-pci built into the kernel".to_string(),
        )
    } else if listed("modules.dep") {
        Check::pass(
            "vfio-pci",
            None,
            "vfio-pci available but not loaded; modprobe vfio-pci".to_string(),
        )
    } else {
        Check::fail(
            "vfio-pci",
            None,
            format!(
                "no vfio-pci driver: not loaded ({} missing) and not in {}/modules.dep \
                 or modules.builtin; install a kernel with CONFIG_VFIO_PCI",
                drivers.display(),
                modules.display()
            ),
            SeedError::new(ErrorId::AccelNetNotSupported, node),
        )
    }
}

fn check_smt(root: &SysfsRoot) -> (Option<bool>, Check) {
    let dir = root.path().join("sys/devices/system/cpu/smt");
    let active = read_trim(&dir.join("active"));
    let control = read_trim(&dir.join("control"));
    let state = match (active.as_deref(), control.as_deref()) {
        (Some("1"), _) => Some(true),
        (Some("0"), _) => Some(false),
        (_, Some("on")) => Some(true),
        (_, Some("off" | "forceoff" | "notsupported" | "notimplemented")) => Some(false),
        _ => None,
    };
    let control = control.unwrap_or_else(|| "unknown".to_string());
    let detail = match state {
        Some(true) => format!("SMT (hyperthreading) active (control: {control})"),
        Some(false) => format!("SMT (hyperthreading) inactive (control: {control})"),
        None => format!("SMT state unknown: {} unreadable", dir.display()),
    };
    (state, Check::pass("smt", None, detail))
}

fn check_adapter(ctx: &Ctx<'_>, a: &Adapter, checks: &mut Vec<Check>) {
    let subject = Some(a.subject.as_str());
    let name = &a.subject;
    let total = read_trim(&a.dev.join("sriov_totalvfs")).and_then(|s| s.parse::<u32>().ok());
    let config = read_config(&a.dev);
    let total = match total {
        Some(n) if n > 0 => n,
        other => {
            let why = if other.is_some() {
                "sriov_totalvfs is 0: SR-IOV is disabled (firmware/BIOS setting or the \
                 device's NVM)"
                    .to_string()
            } else {
                "no sriov_totalvfs: the device does not advertise SR-IOV".to_string()
            };
            let cap = match config.as_ref().and_then(|c| c.sriov) {
                Some(s) => format!(
                    "; its config space has an SR-IOV capability (TotalVFs {}) that \
                     the kernel did not set up: check the BIOS SR-IOV setting and dmesg",
                    s.total_vfs
                ),
                None => String::new(),
            };
            checks.push(Check::fail(
                "sriov",
                subject,
                format!("{}: {why}{cap}", a.label()),
                SeedError::new(ErrorId::SriovSupportUnknown, name),
            ));
            return;
        }
    };
    let num = read_trim(&a.dev.join("sriov_numvfs"))
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(0);
    checks.push(Check::pass(
        "sriov",
        subject,
        format!("{}: TotalVFs {total}, NumVFs {num}", a.label()),
    ));
    checks.push(check_pf_driver(ctx, a, num));
    checks.push(check_acs(ctx, a));
    checks.push(check_bus_numbers(a, total, config.as_ref()));
}

fn check_pf_driver(ctx: &Ctx<'_>, a: &Adapter, num_vfs: u32) -> Check {
    let subject = Some(a.subject.as_str());
    let fail = |detail: String| {
        Check::fail(
            "pf-driver",
            subject,
            detail,
            SeedError::new(ErrorId::SriovSupportMissingPfDriver, &a.subject),
        )
    };
    let Some(driver) = &a.driver else {
        return fail(format!(
            "no driver bound to {}: bind the vendor's PF driver",
            a.address
        ));
    };
    if num_vfs > 0 {
        return Check::pass(
            "pf-driver",
            subject,
            format!("driver {driver} has enabled {num_vfs} VFs"),
        );
    }
    let numvfs = a.dev.join("sriov_numvfs");
    if let Ok(meta) = fs::metadata(&numvfs) {
        if meta.permissions().mode() & 0o222 == 0 {
            return fail(format!(
                "{} is read-only: driver {driver} has no sriov_configure",
                numvfs.display()
            ));
        }
    }
    let drivers = ctx.root.path().join("sys/bus/pci/drivers").join(driver);
    let module = link_name(&drivers.join("module")).unwrap_or_else(|| driver.replace('-', "_"));
    let Some(kallsyms) = ctx.kallsyms() else {
        return Check::warn(
            "pf-driver",
            subject,
            format!(
                "cannot read {}: cannot verify that driver {driver} implements \
                 sriov_configure",
                ctx.root.path().join("proc/kallsyms").display()
            ),
        );
    };
    let tag = format!("[{module}]");
    let prefix = module.split('_').next().unwrap_or(&module);
    let mut module_seen = false;
    for line in kallsyms.lines() {
        let mut f = line.split_whitespace().skip(2);
        let (Some(sym), owner) = (f.next(), f.next()) else {
            continue;
        };
        let ours = owner == Some(tag.as_str());
        module_seen |= ours;
        let builtin_match = owner.is_none()
            && (sym.starts_with(driver.as_str()) || sym.starts_with(prefix))
            && !sym.starts_with("pci_");
        if sym.contains("sriov_configure") && (ours || builtin_match) {
            return Check::pass(
                "pf-driver",
                subject,
                format!("driver {driver} (module {module}) implements sriov_configure ({sym})"),
            );
        }
    }
    if module_seen {
        fail(format!(
            "module {module} of driver {driver} has no sriov_configure symbol in \
             kallsyms: the driver cannot create VFs"
        ))
    } else {
        Check::warn(
            "pf-driver",
            subject,
            format!(
                "no symbol of module {module} in kallsyms (built-in driver or hidden \
                 symbols): cannot verify that driver {driver} implements sriov_configure"
            ),
        )
    }
}

fn check_acs(ctx: &Ctx<'_>, a: &Adapter) -> Check {
    let subject = Some(a.subject.as_str());
    let fail = |detail: String| {
        Check::fail(
            "acs",
            subject,
            detail,
            SeedError::new(ErrorId::SriovSupportMissingAcs, &a.subject),
        )
    };
    let groups = ctx.root.path().join("sys/kernel/iommu_groups");
    let members = |group: &str| dir_names(&groups.join(group).join("devices"));
    let vfs: Vec<String> = dir_names(&a.dev)
        .into_iter()
        .filter(|n| n.starts_with("virtfn"))
        .filter_map(|n| link_name(&a.dev.join(n)))
        .collect();
    if !vfs.is_empty() {
        let (mut shared, mut unknown, mut ok) = (Vec::new(), Vec::new(), Vec::new());
        for vf in &vfs {
            let dev = ctx.root.pci_device(vf);
            let Some(group) = link_name(&dev.join("iommu_group")) else {
                unknown.push(format!("VF {vf} has no IOMMU group"));
                continue;
            };
            let others: Vec<String> = members(&group).into_iter().filter(|m| m != vf).collect();
            if !others.is_empty() {
                shared.push(format!(
                    "VF {vf} shares IOMMU group {group} with {}",
                    others.join(", ")
                ));
                continue;
            }
            let driver = link_name(&dev.join("driver"));
            ok.push(match driver.as_deref() {
                Some("vfio-pci") => {
                    format!("VF {vf} alone in group {group} (vfio-pci: ready for passthrough)")
                }
                Some(d) => format!("VF {vf} alone in group {group} ({d})"),
                None => format!("VF {vf} alone in group {group} (unbound)"),
            });
        }
        return if !shared.is_empty() {
            fail(format!(
                "{}: no ACS isolation between the VFs and other devices",
                shared.join("; ")
            ))
        } else if !unknown.is_empty() {
            Check::warn(
                "acs",
                subject,
                format!("{} (IOMMU off?)", unknown.join("; ")),
            )
        } else {
            Check::pass("acs", subject, ok.join("; "))
        };
    }

    // No VFs yet: the PF's group and the ports above it.
    let Some(group) = link_name(&a.dev.join("iommu_group")) else {
        return Check::warn(
            "acs",
            subject,
            format!(
                "PF {} has no IOMMU group (IOMMU off?): cannot judge ACS",
                a.address
            ),
        );
    };
    let slot = slot_of(&a.address);
    let foreign: Vec<String> = members(&group)
        .into_iter()
        .filter(|m| slot_of(m) != slot)
        .collect();
    if !foreign.is_empty() {
        return fail(format!(
            "PF {} shares IOMMU group {group} with {}: its VFs would too",
            a.address,
            foreign.join(", ")
        ));
    }
    let (mut bad, mut unknown, mut good) = (Vec::new(), Vec::new(), Vec::new());
    for bridge in ancestors(&a.dev) {
        let bname = bridge
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(cfg) = read_config(&bridge) else {
            unknown.push(format!("bridge {bname}: config unreadable"));
            continue;
        };
        let Some(pcie) = cfg.pcie else {
            if cfg.capabilities.is_none() {
                unknown.push(format!(
                    "bridge {bname}: config space too short ({} bytes; run as root)",
                    cfg.len
                ));
            } else {
                bad.push(format!("bridge {bname} is a conventional PCI bridge"));
            }
            continue;
        };
        match pcie.port_type {
            PciePortType::PcieToPciBridge => {
                bad.push(format!("bridge {bname} is a PCIe-to-PCI bridge"));
            }
            t if t.is_downstream() => match cfg.acs {
                None if !cfg.extended_known() => unknown.push(format!(
                    "port {bname}: config space too short to show ACS ({} bytes; run as \
                     root)",
                    cfg.len
                )),
                None => bad.push(format!("port {bname} has no ACS capability")),
                Some(acs) if acs.missing_required() != 0 => bad.push(format!(
                    "port {bname} lacks ACS {}",
                    acs_bits_names(acs.missing_required())
                )),
                Some(acs) if acs.disabled_required() != 0 => good.push(format!(
                    "port {bname} has ACS (not yet enabled: {})",
                    acs_bits_names(acs.disabled_required())
                )),
                Some(_) => good.push(format!("port {bname} has ACS")),
            },
            _ => {}
        }
    }
    let base = format!(
        "PF {} in IOMMU group {group} with no other device",
        a.address
    );
    if !bad.is_empty() {
        fail(format!("{base}, but {}", bad.join("; ")))
    } else if !unknown.is_empty() {
        Check::warn(
            "acs",
            subject,
            format!("{base}; cannot verify ACS: {}", unknown.join("; ")),
        )
    } else if good.is_empty() {
        Check::pass(
            "acs",
            subject,
            format!("{base}; on a root bus (no upstream port)"),
        )
    } else {
        Check::pass("acs", subject, format!("{base}; {}", good.join("; ")))
    }
}

fn check_bus_numbers(a: &Adapter, total: u32, config: Option<&PciConfig>) -> Check {
    let subject = Some(a.subject.as_str());
    let sriov = config.and_then(|c| c.sriov);
    let attr = |n: &str| read_trim(&a.dev.join(n)).and_then(|s| s.parse::<u32>().ok());
    let offset = attr("sriov_offset").or(sriov.map(|s| u32::from(s.first_vf_offset)));
    let stride = attr("sriov_stride").or(sriov.map(|s| u32::from(s.vf_stride)));
    let (Some(offset), Some(stride), Some(rid)) = (offset, stride, routing_id(&a.address)) else {
        return Check::warn(
            "bus-numbers",
            subject,
            format!(
                "cannot read First VF Offset and VF Stride of {} (sriov_offset, \
                 sriov_stride, config)",
                a.address
            ),
        );
    };
    let last = u64::from(rid) + u64::from(offset) + u64::from(stride) * u64::from(total - 1);
    let pf_bus = rid >> 8;
    let last_bus = last >> 8;
    let what = format!(
        "VF {} needs bus {last_bus:#04x} (PF bus {pf_bus:#04x}, offset {offset}, stride \
         {stride})",
        total - 1
    );
    let fail = |detail: String| {
        Check::fail(
            "bus-numbers",
            subject,
            detail,
            SeedError::new(ErrorId::SriovSupportNoBusResources, &a.subject),
        )
    };
    if last > 0xffff {
        return fail(format!("{what}: beyond bus 0xff"));
    }
    let Some(bridge) = ancestors(&a.dev).into_iter().next() else {
        return if last_bus == u64::from(pf_bus) {
            Check::pass("bus-numbers", subject, format!("{what}: the root bus"))
        } else {
            Check::warn(
                "bus-numbers",
                subject,
                format!("{what}: PF on a root bus whose range sysfs does not show"),
            )
        };
    };
    let bname = bridge
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sub = read_trim(&bridge.join("subordinate_bus_number"))
        .and_then(|s| s.parse::<u8>().ok())
        .or_else(|| {
            read_config(&bridge)
                .and_then(|c| c.bridge_buses)
                .map(|b| b.1)
        });
    match sub {
        None => Check::warn(
            "bus-numbers",
            subject,
            format!("{what}: cannot read the subordinate bus of bridge {bname}"),
        ),
        Some(sub) if last_bus <= u64::from(sub) => Check::pass(
            "bus-numbers",
            subject,
            format!("{what}: bridge {bname} forwards up to bus {sub:#04x}"),
        ),
        Some(sub) => fail(format!(
            "{what}, but bridge {bname} forwards only up to bus {sub:#04x}; enable SR-IOV \
             in the firmware or boot with pci=assign-busses"
        )),
    }
}

/// The PCI-to-PCI bridges above a device: the parent directories of its resolved
/// sysfs path whose names are PCI addresses, nearest first.
fn ancestors(dev: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(real) = fs::canonicalize(dev) else {
        return out;
    };
    let mut cur = real.parent();
    while let Some(p) = cur {
        if out.len() >= 32 {
            break;
        }
        match p.file_name().and_then(|n| n.to_str()) {
            Some(n) if routing_id(n).is_some() => out.push(p.to_path_buf()),
            _ => break,
        }
        cur = p.parent();
    }
    out
}

/// The routing id (bus << 8 | device << 3 | function) of `DDDD:BB:DD.F`.
fn routing_id(address: &str) -> Option<u16> {
    let mut parts = address.split(':');
    let (dom, bus, devfn) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || dom.len() < 4 || bus.len() != 2 {
        return None;
    }
    u32::from_str_radix(dom, 16).ok()?;
    let (dev, func) = devfn.split_once('.')?;
    if dev.len() != 2 || func.len() != 1 {
        return None;
    }
    let bus = u16::from_str_radix(bus, 16).ok()?;
    let dev = u16::from_str_radix(dev, 16).ok()?;
    let func = u16::from_str_radix(func, 16).ok()?;
    (dev < 32 && func < 8).then_some(bus << 8 | dev << 3 | func)
}

/// `DDDD:BB:DD` of an address: the functions of one device share it.
fn slot_of(address: &str) -> &str {
    address.rsplit_once('.').map_or(address, |(s, _)| s)
}

fn read_config(dev: &Path) -> Option<PciConfig> {
    fs::read(dev.join("config"))
        .ok()
        .and_then(|b| PciConfig::parse(&b).ok())
}

fn hostname(root: &SysfsRoot) -> String {
    read_trim(&root.path().join("proc/sys/kernel/hostname"))
        .or_else(|| read_trim(&root.path().join("etc/hostname")))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn read_trim(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Sorted entry names of a directory; empty when it cannot be read.
fn dir_names(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn is_link(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// The last component of a link's target; `None` when it is not a link.
fn link_name(link: &Path) -> Option<String> {
    match fs::read_link(link) {
        Ok(t) => t.file_name().map(|n| n.to_string_lossy().into_owned()),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{BridgeSpec, FakeSysfs, PfSpec, VfSpec};

    const RP: &str = "0000:00:03.0";
    const PF: &str = "0000:3b:00.0";
    const NIC: &str = "enp59s0f0";

    /// A node with everything node-wide in place and no adapter.
    fn base(iommu: bool) -> FakeSysfs {
        let fake = FakeSysfs::new();
        fake.set_kernel_release("6.1.0-18-amd64")
            .set_hostname("node1")
            .set_cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 intel_iommu=on iommu=pt")
            .add_vfio_driver()
            .set_smt(true, "on")
            .set_kallsyms(&[
                ("ixgbe_probe", Some("ixgbe")),
                ("ixgbe_pci_sriov_configure", Some("ixgbe")),
                ("e1000e_probe", Some("e1000e")),
                ("pci_sriov_configure_simple", None),
            ]);
        if iommu {
            fake.add_iommu("dmar0");
        }
        fake
    }

    /// [`base`] plus an ixgbe PF below a root port with ACS, in its own group.
    fn healthy() -> FakeSysfs {
        let fake = base(true);
        fake.add_bridge(&BridgeSpec::root_port(RP).buses(0x3b, 0x3b))
            .add_pf(
                &PfSpec::new(PF)
                    .netdev(NIC)
                    .total_vfs(8)
                    .iommu_group(40)
                    .parent(RP),
            )
            .add_pci_device("0000:00:1f.2", 0x010601, Some("ahci"));
        fake
    }

    fn status(r: &PrereqReport, name: &str, subject: Option<&str>) -> Status {
        r.check(name, subject)
            .unwrap_or_else(|| panic!("no check {name} {subject:?} in {r:#?}"))
            .status
    }

    fn error_id(r: &PrereqReport, name: &str, subject: Option<&str>) -> Option<ErrorId> {
        r.check(name, subject)
            .and_then(|c| c.error.as_ref())
            .map(|e| e.id)
    }

    #[test]
    fn test_healthy_node_passes_every_check() {
        let fake = healthy();
        let r = check_node(&fake.root());
        assert!(r.is_ok(), "{r:#?}");
        assert_eq!(r.warnings().count(), 0, "{r:#?}");
        assert_eq!(r.node, "node1");
        assert_eq!(r.kernel, "6.1.0-18-amd64");
        assert_eq!(r.hyperthreading, Some(true));
        let names: Vec<(&str, Option<&str>)> = r
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.subject.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("kernel", None),
                ("iommu", None),
                ("vfio-pci", None),
                ("smt", None),
                ("sriov", Some(NIC)),
                ("pf-driver", Some(NIC)),
                ("acs", Some(NIC)),
                ("bus-numbers", Some(NIC)),
            ],
            "the bridge and the AHCI controller are no adapters"
        );
        let pf = r.check("pf-driver", Some(NIC)).expect("pf-driver");
        assert!(pf.detail.contains("ixgbe_pci_sriov_configure"), "{pf:?}");
        let acs = r.check("acs", Some(NIC)).expect("acs");
        assert!(acs.detail.contains("port 0000:00:03.0 has ACS"), "{acs:?}");
        let iommu = r.check("iommu", None).expect("iommu");
        assert!(
            iommu.detail.contains("intel_iommu=on iommu=pt"),
            "{iommu:?}"
        );
    }

    #[test]
    fn test_old_kernel_is_not_supported() {
        let fake = healthy();
        fake.set_kernel_release("5.15.0-91-generic");
        let r = check_node(&fake.root());
        assert_eq!(status(&r, "kernel", None), Status::Fail);
        assert_eq!(
            error_id(&r, "kernel", None),
            Some(ErrorId::AccelNetNotSupported)
        );
        let e = r
            .failed()
            .next()
            .and_then(|c| c.error.clone())
            .expect("error");
        assert!(e.message.contains("node1"), "{e:?}");
        assert!(!e.hint.is_empty());
        fake.set_kernel_release("6.12.9+bpo-amd64");
        assert!(check_node(&fake.root()).is_ok());
    }

    #[test]
    fn test_kernel_version_parsing() {
        assert_eq!(kernel_version("6.1.0-18-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(kernel_version("5.4"), Some((5, 4)));
        assert_eq!(kernel_version("7"), Some((7, 0)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn test_iommu_off_fails() {
        let fake = base(false);
        fake.set_cmdline("BOOT_IMAGE=/vmlinuz quiet")
            .add_pf(&PfSpec::new(PF).netdev(NIC).total_vfs(8));
        let r = check_node(&fake.root());
        let c = r.check("iommu", None).expect("iommu");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("IOMMU off"), "{c:?}");
        assert!(c.detail.contains("no IOMMU option"), "{c:?}");
        assert_eq!(
            c.error.as_ref().map(|e| e.id),
            Some(ErrorId::AccelNetNotSupported)
        );
        assert_eq!(
            status(&r, "acs", Some(NIC)),
            Status::Warn,
            "no group: ACS unknown"
        );
    }

    #[test]
    fn test_no_vfio_pci_fails_and_unloaded_module_passes() {
        let fake = healthy();
        fs::remove_dir_all(fake.path().join("sys/bus/pci/drivers/vfio-pci")).expect("rm");
        let r = check_node(&fake.root());
        assert_eq!(status(&r, "vfio-pci", None), Status::Fail);
        assert_eq!(
            error_id(&r, "vfio-pci", None),
            Some(ErrorId::AccelNetNotSupported)
        );

        fake.set_modules_file(
            "6.1.0-18-amd64",
            "modules.dep",
            "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko",
        );
        let r = check_node(&fake.root());
        let c = r.check("vfio-pci", None).expect("vfio-pci");
        assert_eq!(c.status, Status::Pass);
        assert!(c.detail.contains("modprobe vfio-pci"), "{c:?}");

        let fake = healthy();
        fs::remove_dir_all(fake.path().join("sys/bus/pci/drivers/vfio-pci")).expect("rm");
        fake.set_modules_file(
            "6.1.0-18-amd64",
            "modules.builtin",
            "kernel/drivers/vfio/pci/vfio-pci.ko",
        );
        assert_eq!(
            status(&check_node(&fake.root()), "vfio-pci", None),
            Status::Pass
        );
    }

    #[test]
    fn test_pf_without_sriov_plain_nic_fails_sriov_only() {
        let fake = base(true);
        fake.add_plain_nic("0000:00:03.0", "virtio-pci", "eth0");
        let r = check_node(&fake.root());
        assert_eq!(status(&r, "sriov", Some("eth0")), Status::Fail);
        assert_eq!(
            error_id(&r, "sriov", Some("eth0")),
            Some(ErrorId::SriovSupportUnknown)
        );
        let e = r
            .check("sriov", Some("eth0"))
            .and_then(|c| c.error.clone())
            .expect("e");
        assert!(e.message.contains("Adapter eth0"), "{e:?}");
        assert!(r.check("pf-driver", Some("eth0")).is_none());
        assert_eq!(r.failed().count(), 1);
    }

    #[test]
    fn test_pf_with_zero_total_vfs_fails_sriov() {
        let fake = healthy();
        fake.set_attr(PF, "sriov_totalvfs", "0");
        let r = check_node(&fake.root());
        let c = r.check("sriov", Some(NIC)).expect("sriov");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("sriov_totalvfs is 0"), "{c:?}");
        assert_eq!(
            c.error.as_ref().map(|e| e.id),
            Some(ErrorId::SriovSupportUnknown)
        );
    }

    #[test]
    fn test_adapter_selection() {
        let fake = healthy();
        fake.add_plain_nic("0000:00:04.0", "virtio-pci", "eth0");
        assert!(!check_node(&fake.root()).is_ok());
        let only = |a: &str| PrereqOptions {
            adapters: Some(vec![a.to_string()]),
        };
        assert!(check_node_with(&fake.root(), &only(NIC)).is_ok());
        assert!(check_node_with(&fake.root(), &only(PF)).is_ok());
        let r = check_node_with(&fake.root(), &only("nope"));
        assert_eq!(status(&r, "adapters", None), Status::Warn);
    }

    #[test]
    fn test_driver_without_sriov_configure_fails() {
        // The FakeSysfs marker: a read-only sriov_numvfs.
        let fake = base(true);
        fake.add_pf(
            &PfSpec::new(PF)
                .netdev(NIC)
                .iommu_group(40)
                .without_sriov_configure(),
        );
        let r = check_node(&fake.root());
        assert_eq!(status(&r, "pf-driver", Some(NIC)), Status::Fail);
        assert_eq!(
            error_id(&r, "pf-driver", Some(NIC)),
            Some(ErrorId::SriovSupportMissingPfDriver)
        );

        // What a real kernel shows: a module in kallsyms without the symbol.
        let fake = base(true);
        fake.add_pf(
            &PfSpec::new(PF)
                .driver(Some("e1000e"))
                .netdev(NIC)
                .iommu_group(40),
        );
        let r = check_node(&fake.root());
        let c = r.check("pf-driver", Some(NIC)).expect("pf-driver");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("module e1000e"), "{c:?}");

        // Unbound PF.
        let fake = base(true);
        fake.add_pf(&PfSpec::new(PF).driver(None).netdev(NIC).iommu_group(40));
        assert_eq!(
            status(&check_node(&fake.root()), "pf-driver", Some(NIC)),
            Status::Fail
        );
    }

    #[test]
    fn test_pf_driver_unverifiable_warns() {
        let fake = base(true);
        fake.add_pf(
            &PfSpec::new(PF)
                .driver(Some("mlx5_core"))
                .netdev(NIC)
                .iommu_group(40),
        );
        let r = check_node(&fake.root());
        assert_eq!(
            status(&r, "pf-driver", Some(NIC)),
            Status::Warn,
            "no mlx5 symbols"
        );
        fs::remove_file(fake.path().join("proc/kallsyms")).expect("rm");
        let r = check_node(&fake.root());
        let c = r.check("pf-driver", Some(NIC)).expect("pf-driver");
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("cannot"), "{c:?}");
        fake.set_kallsyms(&[("mlx5_core_sriov_configure", Some("mlx5_core"))]);
        assert_eq!(
            status(&check_node(&fake.root()), "pf-driver", Some(NIC)),
            Status::Pass
        );
    }

    #[test]
    fn test_enabled_vfs_prove_driver_support() {
        let fake = base(true);
        fake.set_kallsyms(&[]);
        fake.add_pf(&PfSpec::new(PF).netdev(NIC).iommu_group(40))
            .add_vf(PF, &VfSpec::new(0, "0000:3b:10.0").iommu_group(50));
        let r = check_node(&fake.root());
        assert_eq!(status(&r, "pf-driver", Some(NIC)), Status::Pass);
    }

    #[test]
    fn test_vf_in_shared_iommu_group_fails() {
        let fake = healthy();
        fake.add_vf(PF, &VfSpec::new(0, "0000:3b:10.0").iommu_group(50))
            .add_vf(PF, &VfSpec::new(1, "0000:3b:10.2").iommu_group(50));
        let r = check_node(&fake.root());
        let c = r.check("acs", Some(NIC)).expect("acs");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert_eq!(
            c.error.as_ref().map(|e| e.id),
            Some(ErrorId::SriovSupportMissingAcs)
        );
        assert!(
            c.detail
                .contains("VF 0000:3b:10.0 shares IOMMU group 50 with 0000:3b:10.2"),
            "{c:?}"
        );
    }

    #[test]
    fn test_pf_group_shared_with_other_device_fails() {
        let fake = healthy();
        fake.add_pci_device("0000:3b:01.0", 0x010802, Some("nvme"))
            .add_to_iommu_group("0000:3b:01.0", 40);
        let r = check_node(&fake.root());
        let c = r.check("acs", Some(NIC)).expect("acs");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("0000:3b:01.0"), "{c:?}");
    }

    #[test]
    fn test_vf_bound_to_vfio_pci_passes() {
        let fake = healthy();
        fake.add_vf(PF, &VfSpec::vfio(0, "0000:3b:10.0").iommu_group(50))
            .add_vf(PF, &VfSpec::new(1, "0000:3b:10.2").iommu_group(51));
        let r = check_node(&fake.root());
        assert!(r.is_ok(), "{r:#?}");
        let c = r.check("acs", Some(NIC)).expect("acs");
        assert_eq!(c.status, Status::Pass);
        assert!(
            c.detail
                .contains("VF 0000:3b:10.0 alone in group 50 (vfio-pci: ready for passthrough)"),
            "{c:?}"
        );
        assert!(c.detail.contains("(ixgbevf)"), "{c:?}");
        assert!(
            r.check("sriov", Some(NIC))
                .expect("sriov")
                .detail
                .contains("NumVFs 2"),
            "VFs are no adapters of their own"
        );
        assert!(r.check("sriov", Some("0000:3b:10.0")).is_none());
    }

    #[test]
    fn test_bridge_without_acs_fails() {
        let fake = base(true);
        fake.add_bridge(&BridgeSpec::root_port(RP).buses(0x3b, 0x3b).acs(None))
            .add_pf(
                &PfSpec::new(PF)
                    .netdev(NIC)
                    .total_vfs(8)
                    .iommu_group(40)
                    .parent(RP),
            );
        let r = check_node(&fake.root());
        let c = r.check("acs", Some(NIC)).expect("acs");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(
            c.detail.contains("port 0000:00:03.0 has no ACS capability"),
            "{c:?}"
        );
        assert_eq!(
            c.error.as_ref().map(|e| e.id),
            Some(ErrorId::SriovSupportMissingAcs)
        );
    }

    #[test]
    fn test_switch_port_with_partial_acs_fails() {
        let fake = base(true);
        let usp = "0000:3a:00.0";
        let dsp = "0000:3b:00.0";
        let pf = "0000:3c:00.0";
        fake.add_bridge(&BridgeSpec::root_port(RP).buses(0x3a, 0x3c))
            .add_bridge(
                &BridgeSpec::switch_port(usp, PciePortType::UpstreamPort)
                    .buses(0x3b, 0x3c)
                    .acs(None)
                    .parent(RP),
            )
            .add_bridge(
                &BridgeSpec::switch_port(dsp, PciePortType::DownstreamPort)
                    .buses(0x3c, 0x3c)
                    .acs(Some((0x000d, 0x000d)))
                    .parent(usp),
            )
            .add_pf(&PfSpec::new(pf).netdev(NIC).iommu_group(40).parent(dsp));
        assert!(fake.device_dir(pf).starts_with(fake.device_dir(dsp)));
        let r = check_node(&fake.root());
        let c = r.check("acs", Some(NIC)).expect("acs");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("port 0000:3b:00.0 lacks ACS UF"), "{c:?}");
        assert!(
            !c.detail.contains("0000:3a:00.0"),
            "upstream ports need no ACS: {c:?}"
        );
        assert_eq!(status(&r, "bus-numbers", Some(NIC)), Status::Pass);
    }

    #[test]
    fn test_short_bridge_config_warns() {
        let fake = base(true);
        fake.add_bridge(&BridgeSpec::root_port(RP).buses(0x3b, 0x3b).config_len(64))
            .add_pf(
                &PfSpec::new(PF)
                    .netdev(NIC)
                    .total_vfs(8)
                    .iommu_group(40)
                    .parent(RP),
            );
        let r = check_node(&fake.root());
        let c = r.check("acs", Some(NIC)).expect("acs");
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.detail.contains("run as root"), "{c:?}");
        assert!(r.is_ok());
    }

    #[test]
    fn test_not_enough_bus_numbers_fails() {
        let fake = base(true);
        fake.add_bridge(&BridgeSpec::root_port(RP).buses(0x3b, 0x3b))
            .add_pf(
                &PfSpec::new(PF)
                    .netdev(NIC)
                    .total_vfs(64)
                    .iommu_group(40)
                    .parent(RP),
            )
            .set_attr(PF, "sriov_offset", "384");
        // Last VF: 0x3b00 + 384 + 63 * 2 = 0x3cfe, bus 0x3c.
        let r = check_node(&fake.root());
        let c = r.check("bus-numbers", Some(NIC)).expect("bus-numbers");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert_eq!(
            c.error.as_ref().map(|e| e.id),
            Some(ErrorId::SriovSupportNoBusResources)
        );
        assert!(c.detail.contains("needs bus 0x3c"), "{c:?}");

        // The bridge config is the fallback when the attribute is missing.
        let fake = base(true);
        fake.add_bridge(&BridgeSpec::root_port(RP).buses(0x3b, 0x3c))
            .add_pf(
                &PfSpec::new(PF)
                    .netdev(NIC)
                    .total_vfs(64)
                    .iommu_group(40)
                    .parent(RP),
            )
            .set_attr(PF, "sriov_offset", "384");
        fs::remove_file(fake.device_dir(RP).join("subordinate_bus_number")).expect("rm");
        assert_eq!(
            status(&check_node(&fake.root()), "bus-numbers", Some(NIC)),
            Status::Pass
        );
    }

    #[test]
    fn test_bus_numbers_from_pf_config_when_attributes_missing() {
        let fake = base(true);
        fake.add_bridge(&BridgeSpec::root_port(RP).buses(0x3b, 0x3b))
            .add_pf(
                &PfSpec::new(PF)
                    .netdev(NIC)
                    .total_vfs(64)
                    .iommu_group(40)
                    .parent(RP),
            )
            .remove_attr(PF, "sriov_offset")
            .remove_attr(PF, "sriov_stride");
        let r = check_node(&fake.root());
        assert_eq!(status(&r, "bus-numbers", Some(NIC)), Status::Warn);
        let cfg = crate::test_utils::ConfigBuilder::endpoint(0x8086, 0x10fb)
            .pcie(PciePortType::Endpoint)
            .sriov(64, 0x180, 2, 0x10ed)
            .build();
        fake.set_config(PF, &cfg);
        let r = check_node(&fake.root());
        assert_eq!(status(&r, "bus-numbers", Some(NIC)), Status::Fail);
    }

    #[test]
    fn test_smt_mismatch_across_nodes() {
        let a = healthy();
        let b = healthy();
        b.set_hostname("node2").set_smt(false, "off");
        let ra = check_node(&a.root());
        let rb = check_node(&b.root());
        assert_eq!(rb.hyperthreading, Some(false));
        assert_eq!(
            status(&rb, "smt", None),
            Status::Pass,
            "node level: always pass"
        );
        let e = compare_hyperthreading(&[ra.clone(), rb.clone()]).expect("mismatch");
        assert_eq!(e.id, ErrorId::HyperthreadingCheckFailed);
        let c = hyperthreading_check(&[ra.clone(), rb]);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("on: [node1]; off: [node2]"), "{c:?}");
        assert_eq!(compare_hyperthreading(&[ra.clone(), ra.clone()]), None);
        let unknown = PrereqReport {
            hyperthreading: None,
            ..ra.clone()
        };
        assert_eq!(compare_hyperthreading(&[ra, unknown]), None);
    }

    #[test]
    fn test_garbage_bridge_config_does_not_panic() {
        let fake = healthy();
        let mut state: u32 = 12345;
        for len in [0usize, 10, 64, 255, 256, 300, 4096] {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (state >> 16) as u8
                })
                .collect();
            fake.set_config(RP, &bytes).set_config(PF, &bytes);
            let r = check_node(&fake.root());
            assert!(r.check("acs", Some(NIC)).is_some());
        }
    }

    #[test]
    fn test_report_serializes_with_seed_error() {
        let fake = healthy();
        fake.set_kernel_release("5.10.0-28-amd64");
        let v = serde_json::to_value(check_node(&fake.root())).expect("encodes");
        assert_eq!(v["node"], "node1");
        assert_eq!(v["hyperthreading"], true);
        assert_eq!(v["checks"][0]["name"], "kernel");
        assert_eq!(v["checks"][0]["status"], "fail");
        assert_eq!(v["checks"][0]["error"]["id"], "Accel_net_not_supported");
        assert!(v["checks"][0]["error"]["hint"].is_string());
        assert_eq!(v["checks"][1]["error"], serde_json::Value::Null);
        assert_eq!(v["checks"][4]["subject"], NIC);
    }

    #[test]
    fn test_routing_id() {
        assert_eq!(routing_id("0000:3b:00.1"), Some(0x3b01));
        assert_eq!(routing_id("0000:00:1f.7"), Some(0xff));
        assert_eq!(routing_id("pci0000:00"), None);
        assert_eq!(routing_id("0000:3b:00.8"), None);
    }

    /// Runs on this machine's real `/`: must not fail as a whole.
    #[test]
    fn test_real_root_sanity() {
        let r = check_node(&SysfsRoot::default());
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        assert!(!r.kernel.is_empty());
        assert!(!r.node.is_empty());
        assert_eq!(status(&r, "kernel", None), Status::Pass);
        assert_eq!(status(&r, "smt", None), Status::Pass);
    }
}
