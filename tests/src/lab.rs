//! Preconditions, guest assets, per-test directories and the shared clock.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cmd::run_cmd;
use crate::{LabError, Result};

/// Lowest QEMU major version the lab supports (7.2 crashes with vhost-user + MSI-X under TCG).
const QEMU_MIN_MAJOR: u32 = 10;

static EPOCH: OnceLock<Instant> = OnceLock::new();
static LAB_LOG: Mutex<Option<File>> = Mutex::new(None);
static SCRATCH_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Seconds since the harness was first used in this process: every console line and
/// [`log`] message uses this clock, so logs of different guests line up.
pub(crate) fn since_epoch() -> f64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// Prints a timestamped progress message (shown with `--nocapture`) and appends it to the
/// current [`Lab`]'s `lab.log`.
pub fn log(msg: impl AsRef<str>) {
    let line = format!("{:9.3} {}", since_epoch(), msg.as_ref());
    println!("{line}");
    if let Some(f) = LAB_LOG.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
        // Best effort.
        let _ = writeln!(f, "{line}");
    }
}

/// Routes `log` records (e.g. the in-process switch's) into [`log`], so they land in
/// `lab.log` next to the guests' events.
#[derive(Debug)]
struct LabLogger;

impl ::log::Log for LabLogger {
    fn enabled(&self, m: &::log::Metadata<'_>) -> bool {
        m.level() <= ::log::max_level()
    }

    fn log(&self, r: &::log::Record<'_>) {
        if self.enabled(r.metadata()) {
            log(format!("[{} {}] {}", r.level(), r.target(), r.args()));
        }
    }

    fn flush(&self) {}
}

/// Installs [`LabLogger`] once per process; level from `ACCELNET_LAB_LOG` (default `info`).
fn init_logger() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let level = std::env::var("ACCELNET_LAB_LOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(::log::LevelFilter::Info);
        // Fails only if the test installed its own logger first: keep that one.
        static LOGGER: LabLogger = LabLogger;
        if ::log::set_logger(&LOGGER).is_ok() {
            ::log::set_max_level(level);
        }
    });
}

/// The QEMU binary: `ACCELNET_QEMU` or `qemu-system-x86_64`.
pub(crate) fn qemu_binary() -> String {
    std::env::var("ACCELNET_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn guest_dir() -> PathBuf {
    std::env::var_os("ACCELNET_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build/guest"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A test's lab context: checked preconditions, the guest kernel and initramfs, a scratch
/// directory for sockets (removed on drop) and a log directory (kept).
#[derive(Debug)]
pub struct Lab {
    name: String,
    kernel: PathBuf,
    initrd: PathBuf,
    run_dir: PathBuf,
    log_dir: PathBuf,
}

impl Lab {
    /// Checks that QEMU guests can run here: root, `qemu-system-x86_64` >= 10, the guest
    /// kernel and initramfs, `ip` and a static busybox. The error lists every problem and
    /// how to fix it. Tests must fail (not skip) when this fails.
    pub fn check() -> std::result::Result<(), String> {
        let mut problems = Vec::new();
        if !is_root() {
            problems.push("must run as root (network namespaces, veth, AF_PACKET)".to_string());
        }
        let qemu = qemu_binary();
        match run_cmd(&[&qemu, "--version"], Duration::from_secs(10)) {
            Ok(out) => match parse_qemu_major(&out.output) {
                Some(v) if v >= QEMU_MIN_MAJOR => {}
                Some(v) => problems.push(format!(
                    "{qemu} is version {v}, need >= {QEMU_MIN_MAJOR} (run scripts/install-deps.sh)"
                )),
                None => problems.push(format!(
                    "cannot parse `{qemu} --version`: {}",
                    out.output.trim()
                )),
            },
            Err(e) => problems.push(format!("{e} (run scripts/install-deps.sh)")),
        }
        let dir = guest_dir();
        for f in ["vmlinuz", "initramfs.cpio.gz"] {
            if !dir.join(f).is_file() {
                problems.push(format!(
                    "missing guest asset {} (run lab/build-guest.sh)",
                    dir.join(f).display()
                ));
            }
        }
        if run_cmd(&["ip", "-V"], Duration::from_secs(10)).is_err() {
            problems.push("missing `ip` (iproute2; run scripts/install-deps.sh)".to_string());
        }
        if !Path::new(crate::wire::BUSYBOX).is_file() {
            problems.push(format!(
                "missing {} (busybox-static, used for host-side ping; run scripts/install-deps.sh)",
                crate::wire::BUSYBOX
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "QEMU lab not usable:\n  - {}",
                problems.join("\n  - ")
            ))
        }
    }

    /// [`Lab::check`]s, then creates the scratch dir (`/tmp/anl-<pid>-<n>`) and the log dir
    /// (`ACCELNET_LAB_LOGS/<name>`, default `<workspace>/target/lab-logs/<name>`, emptied first),
    /// and routes `log` records (the in-process switch's) into `lab.log` (level:
    /// `ACCELNET_LAB_LOG`, default `info`).
    pub fn new(name: &str) -> Result<Lab> {
        Lab::check()?;
        let dir = guest_dir();
        let run_dir = std::env::temp_dir().join(format!(
            "anl-{}-{}",
            std::process::id(),
            SCRATCH_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let log_root = std::env::var_os("ACCELNET_LAB_LOGS")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/lab-logs"));
        let log_dir = log_root.join(name);
        let _ = fs::remove_dir_all(&log_dir);
        for d in [&run_dir, &log_dir] {
            fs::create_dir_all(d).map_err(|e| LabError(format!("create {}: {e}", d.display())))?;
        }
        let lab = Lab {
            name: name.to_string(),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.cpio.gz"),
            run_dir,
            log_dir,
        };
        let f = lab.log_file("lab")?;
        *LAB_LOG.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
        init_logger();
        log(format!(
            "lab {}: logs in {}, sockets in {}",
            lab.name,
            lab.log_dir.display(),
            lab.run_dir.display()
        ));
        Ok(lab)
    }

    /// Guest kernel (bzImage).
    pub fn kernel(&self) -> &Path {
        &self.kernel
    }

    /// Guest initramfs.
    pub fn initrd(&self) -> &Path {
        &self.initrd
    }

    /// Makes this lab's guests boot with `bins` (host executables, e.g. the accelnet
    /// binary) in their initramfs, at the same paths, with every shared library `ldd`
    /// lists; debug info is stripped to keep guest RAM free. The shared guest image is
    /// not touched: the kernel unpacks concatenated archives, so the extra files go into
    /// a second gzip'd newc archive appended to a copy of it in the run dir.
    pub fn add_binaries(&mut self, bins: &[&Path]) -> Result<()> {
        let stage = self.run_dir.join("initrd-extra");
        let _ = fs::remove_dir_all(&stage);
        let mut files: Vec<PathBuf> = Vec::new();
        for bin in bins {
            let out = run_cmd(&["ldd", &bin.to_string_lossy()], Duration::from_secs(10))?;
            if !out.success() && !out.output.contains("not a dynamic executable") {
                return Err(LabError(format!("ldd {}: {}", bin.display(), out.output)));
            }
            for line in out.output.lines() {
                let lib = match line.split_whitespace().collect::<Vec<_>>()[..] {
                    [_, "=>", path, ..] if path.starts_with('/') => path,
                    [path, ..] if path.starts_with('/') => path,
                    _ => continue,
                };
                files.push(PathBuf::from(lib));
            }
            files.push(bin.to_path_buf());
        }
        for f in &files {
            let rel = f.strip_prefix("/").unwrap_or(f);
            let dst = stage.join(rel);
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| LabError(format!("create {}: {e}", parent.display())))?;
            }
            fs::copy(f, &dst)
                .map_err(|e| LabError(format!("copy {} into the initramfs: {e}", f.display())))?;
            if bins.contains(&f.as_path()) {
                let out = run_cmd(
                    &["strip", "--strip-debug", &dst.to_string_lossy()],
                    Duration::from_secs(60),
                )?;
                if !out.success() {
                    return Err(LabError(format!("strip {}: {}", dst.display(), out.output)));
                }
            }
        }
        let extra = self.run_dir.join("extra.cpio.gz");
        // Parents before children (find's order), so each directory entry exists first.
        let script = format!(
            "cd '{}' && find . -mindepth 1 | cpio -o -H newc --quiet -R 0:0 | gzip -1 > '{}'",
            stage.display(),
            extra.display()
        );
        let out = run_cmd(&["sh", "-c", &script], Duration::from_secs(120))?;
        if !out.success() {
            return Err(LabError(format!(
                "build {}: {}",
                extra.display(),
                out.output
            )));
        }
        let combined = self.run_dir.join("initramfs-extra.cpio.gz");
        let mut data = fs::read(&self.initrd)
            .map_err(|e| LabError(format!("read {}: {e}", self.initrd.display())))?;
        data.extend(
            fs::read(&extra).map_err(|e| LabError(format!("read {}: {e}", extra.display())))?,
        );
        fs::write(&combined, data)
            .map_err(|e| LabError(format!("write {}: {e}", combined.display())))?;
        let _ = fs::remove_dir_all(&stage);
        log(format!(
            "lab {}: guests boot {} (+ {})",
            self.name,
            combined.display(),
            bins.iter()
                .map(|b| b.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        self.initrd = combined;
        Ok(())
    }

    /// Scratch directory for sockets; removed when the `Lab` is dropped.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Directory holding `lab.log` and one `<guest>.log` per guest; kept after the test.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// `<run_dir>/<name>.sock`: a vhost-user socket path (its file stem is the port name).
    pub fn socket(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.sock"))
    }

    /// Creates (truncates) `<log_dir>/<name>.log`.
    pub fn log_file(&self, name: &str) -> Result<File> {
        let p = self.log_dir.join(format!("{name}.log"));
        OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&p)
            .map_err(|e| LabError(format!("create {}: {e}", p.display())))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.run_dir);
        log(format!(
            "lab {}: done, logs in {}",
            self.name,
            self.log_dir.display()
        ));
        *LAB_LOG.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// `QEMU emulator version 10.0.2 (...)` -> 10.
fn parse_qemu_major(version: &str) -> Option<u32> {
    let rest = version.split("version ").nth(1)?;
    rest.split('.').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_qemu_major() {
        assert_eq!(
            parse_qemu_major("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)\nCopyright"),
            Some(10)
        );
        assert_eq!(parse_qemu_major("QEMU emulator version 7.2.15"), Some(7));
        assert_eq!(parse_qemu_major("garbage"), None);
    }
}
