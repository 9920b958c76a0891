//! `accelnet drill SCENARIO --vm NAME`: a failover drill on a running VM, measured.
//!
//! While the scenario runs, a probe sends sequence-numbered ICMP echo requests at
//! `--rate` from `--probe-netns` (the wire side) to the guest and back; the
//! switch port's and the direct path's packet counters are sampled for the path
//! timeline. The report (`migration::report::DrillReport`) cuts the probe's record
//! into the scenario's phases: loss, longest gap, duplicates, reordering per phase,
//! and which path carried the traffic over time; `--json` prints it for machines,
//! `--plot FILE` draws the gap timeline as SVG.
//!
//! Scenarios: `unplug-replug` (`vm disable` then `vm enable`), `vf-fault` (the
//! direct path fails under the VM; the node agent's host-reserved failover must
//! move it to the synthetic path and back), `switch-restart` (the switch is
//! killed with SIGKILL and started again with the same command line), `migrate`
//! (`vm migrate --to`), `node-drain` (`node drain --to`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use migration::probe::Probe;
use migration::report::{svg, DrillReport, PathSample, PathSampler};
use serde::Serialize;
use serde_json::Value;
use sriov::host::VfLinkState;
use sriov::netlink::{Netlink, VfChange};
use sriov::steer::Steering;
use vswitch::{Request, Response};

use super::migrate::{migrate_vm, MigrateArgs};
use super::path::{disable_one, enable_one, EnableArgs, CLASS_NET};
use super::store::{DirectState, Phase, VmRecord, VmStore};
use super::{restore_switch_port, Paths, PortFound};
use crate::sriov_cmd::{json, print};

/// The drills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Scenario {
    /// Planned: `vm disable` (VF unplugged), then `vm enable` (re-plugged).
    UnplugReplug,
    /// Unplanned: the direct path fails (stand-in tap down or deleted, VF link
    /// disabled) and comes back; the node agent moves the VM and back.
    VfFault,
    /// The switch is killed (SIGKILL) and started again with its command line.
    SwitchRestart,
    /// Live migration to the node agent at --to.
    Migrate,
    /// Every accelerated VM of this node migrates to the node agent at --to.
    NodeDrain,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::UnplugReplug => "unplug-replug",
            Scenario::VfFault => "vf-fault",
            Scenario::SwitchRestart => "switch-restart",
            Scenario::Migrate => "migrate",
            Scenario::NodeDrain => "node-drain",
        }
    }
}

/// How `vf-fault` breaks the direct path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Fault {
    /// The stand-in's tap down, or the VF's link disabled.
    LinkDown,
    /// The stand-in's tap deleted (and created again on the bridge afterwards).
    Remove,
}

/// Arguments of `accelnet drill`.
#[derive(Debug, Args)]
pub struct DrillArgs {
    #[command(flatten)]
    paths: Paths,
    /// The drill.
    #[arg(value_enum)]
    scenario: Scenario,
    /// The VM.
    #[arg(long)]
    vm: String,
    /// The guest's IPv4 address (the probe's target).
    #[arg(long, value_name = "IP")]
    target: Ipv4Addr,
    /// Network namespace the probe sends from (the wire side; default: this one).
    #[arg(long, value_name = "NETNS", default_value = "")]
    probe_netns: String,
    /// Probe requests per second.
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    rate: u32,
    /// The destination node's agent (`migrate`, `node-drain`).
    #[arg(long, value_name = "SOCKET")]
    to: Option<PathBuf>,
    /// The destination's VF stand-in tap for `migrate` (lab).
    #[arg(long, value_name = "TAP")]
    dest_vf_standin: Option<String>,
    /// How `vf-fault` breaks the direct path.
    #[arg(long, value_enum, default_value = "link-down")]
    fault: Fault,
    /// Seconds the fault lasts once the VM is off its direct path (`vf-fault`), or
    /// the VM stays on the synthetic path (`unplug-replug`).
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0, value_parser = super::seconds)]
    hold: f64,
    /// Seconds of steady traffic before the first and after the last step.
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0, value_parser = super::seconds)]
    settle: f64,
    /// Seconds the node agent may take to move the VM (`vf-fault`).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = super::seconds)]
    react_timeout: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Draw the gap timeline as SVG into this file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

/// What `drill --json` prints.
#[derive(Debug, Serialize)]
struct DrillOutput<'a> {
    #[serde(flatten)]
    report: &'a DrillReport,
    /// What each step did (the path changes, the migration's report, ...).
    steps: &'a [Value],
    /// The step that failed, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The drill's clock and progress display: phase marks on the probe's clock.
struct Run<'a> {
    probe: &'a Probe,
    quiet: bool,
    steps: Vec<Value>,
}

impl Run<'_> {
    fn phase(&self, name: &str) {
        let at = self.probe.mark(name);
        if !self.quiet {
            eprintln!(
                "  +{:6.2} s  {name:<14} sent {:>6}  answered {:>6}",
                at.as_secs_f64(),
                self.probe.sent(),
                self.probe.received()
            );
        }
    }

    fn step(&mut self, what: &str, v: impl Serialize) {
        let v = match serde_json::to_value(v).unwrap_or(Value::Null) {
            Value::Object(mut m) => {
                m.insert("step".into(), Value::String(what.into()));
                Value::Object(m)
            }
            other => serde_json::json!({"step": what, "done": other}),
        };
        self.steps.push(v);
    }
}

/// `accelnet drill`.
pub fn run(a: DrillArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(drill(&a))
}

async fn drill(a: &DrillArgs) -> anyhow::Result<()> {
    let store = VmStore::open(&a.paths.store)?;
    let rec = store.get(&a.vm)?;
    if rec.phase != Phase::Running {
        bail!("VM {} is {}, not running", a.vm, rec.phase.name());
    }
    match a.scenario {
        Scenario::UnplugReplug | Scenario::VfFault if rec.direct != DirectState::Attached => {
            bail!(
                "VM {} is not on a direct path ({:?}): `{}` needs one",
                a.vm,
                rec.direct,
                a.scenario.name()
            )
        }
        Scenario::Migrate | Scenario::NodeDrain if a.to.is_none() => {
            bail!(
                "`{}` needs the destination node's agent: --to SOCKET",
                a.scenario.name()
            )
        }
        _ => {}
    }
    let probe = Probe::start(&a.probe_netns, a.target, a.rate)
        .with_context(|| format!("cannot start the probe towards {}", a.target))?;
    if let Err(e) = probe.wait_for_replies(3, Duration::from_secs(5)) {
        let _ = probe.stop();
        bail!(
            "the guest {} does not answer the probe from {}: {e}",
            a.target,
            if a.probe_netns.is_empty() {
                "this namespace"
            } else {
                &a.probe_netns
            }
        );
    }
    if !a.json {
        eprintln!(
            "drill {} on VM {}: probe {} at {}/s",
            a.scenario.name(),
            a.vm,
            a.target,
            a.rate
        );
    }
    let sampler = Sampler::start(&rec, &probe);
    let mut run = Run {
        probe: &probe,
        quiet: a.json,
        steps: Vec::new(),
    };
    let settle = Duration::from_secs_f64(a.settle);
    // Steady traffic first: the report's implicit first phase, `before`.
    tokio::time::sleep(settle).await;
    let outcome = scenario(a, &store, &rec, &mut run).await;
    if outcome.is_ok() {
        run.phase("after");
        tokio::time::sleep(settle).await;
    }
    let timeline = sampler.stop();
    let steps = std::mem::take(&mut run.steps);
    drop(run);
    let probed = probe.stop_with_linger(Duration::from_secs(1));
    let report = DrillReport::from_probe_marks(a.scenario.name(), &a.vm, &probed, timeline);
    if let Some(file) = &a.plot {
        std::fs::write(file, svg(&report))
            .with_context(|| format!("cannot write the chart to {}", file.display()))?;
    }
    let error = outcome.as_ref().err().map(|e| format!("{e:#}"));
    if a.json {
        print(&json(&DrillOutput {
            report: &report,
            steps: &steps,
            error,
        })?)?;
    } else {
        print(&report.to_string())?;
        if let Some(file) = &a.plot {
            println!("chart: {}", file.display());
        }
    }
    outcome.with_context(|| format!("drill {} failed", a.scenario.name()))
}

/// The scenario's steps, each a phase.
async fn scenario(
    a: &DrillArgs,
    store: &VmStore,
    rec: &VmRecord,
    run: &mut Run<'_>,
) -> anyhow::Result<()> {
    let name = rec.name();
    let hold = Duration::from_secs_f64(a.hold);
    match a.scenario {
        Scenario::UnplugReplug => {
            run.phase("unplug");
            let c = disable_one(store, &a.paths, name, Duration::from_secs(20)).await?;
            run.step("unplug", &c);
            run.phase("synthetic");
            tokio::time::sleep(hold).await;
            run.phase("replug");
            let c = enable_one(store, &a.paths, name, &EnableArgs::defaults(name)).await?;
            run.step("replug", &c);
        }
        Scenario::VfFault => {
            let react = Duration::from_secs_f64(a.react_timeout);
            let steering = rec
                .steering
                .clone()
                .context("the VM's direct path has no steering record")?;
            run.phase("fault");
            let fault = inject(&steering, a.fault)?;
            run.step("fault", &fault);
            let t0 = Instant::now();
            let moved = wait_record(store, name, react, |r| {
                r.direct == DirectState::Detached && r.failover.is_some()
            })
            .await;
            let moved = match moved {
                Ok(r) => r,
                Err(e) => {
                    // Leave the host as it was, whatever the agent did.
                    let _ = clear(&steering, a.fault);
                    return Err(e.context(
                        "the VM was not moved off its failed direct path: is `accelnet \
                         node agent` running on this node (without --no-failover)?",
                    ));
                }
            };
            run.step(
                "moved",
                serde_json::json!({"after_ms": t0.elapsed().as_millis(), "failover": moved.failover}),
            );
            run.phase("synthetic");
            tokio::time::sleep(hold).await;
            run.phase("recover");
            let restored = clear(&steering, a.fault)?;
            run.step("restored", &restored);
            let t0 = Instant::now();
            wait_record(store, name, react + Duration::from_secs(30), |r| {
                r.direct == DirectState::Attached && r.failover.is_none()
            })
            .await
            .context("the VM did not move back to its direct path")?;
            run.step(
                "moved-back",
                serde_json::json!({"after_ms": t0.elapsed().as_millis()}),
            );
        }
        Scenario::SwitchRestart => {
            run.phase("restart");
            let r = restart_switch(&rec.switch_control, &a.paths.run_dir)?;
            run.step("restart", &r);
            let t0 = Instant::now();
            // The ports the VMs got at launch, and the VMM's reconnection.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let found = restore_switch_port(&store.get(name)?)?;
                if found == (PortFound::Present { connected: true }) {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("VM {name}'s VMM did not reconnect to the restarted switch within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            run.step(
                "reconnected",
                serde_json::json!({"after_ms": t0.elapsed().as_millis()}),
            );
        }
        Scenario::Migrate => {
            run.phase("migrate");
            let m = MigrateArgs {
                dest_vf_standin: a.dest_vf_standin.clone(),
                ..MigrateArgs::to(name, a.to.as_deref().context("--to")?)
            };
            match migrate_vm(store, &a.paths, &m, false, None).await? {
                Ok(report) => run.step("migrate", &report),
                Err(e) => {
                    run.step("migrate", &e);
                    return Err(e.into());
                }
            }
        }
        Scenario::NodeDrain => {
            run.phase("drain");
            let to = a.to.clone().context("--to")?;
            let drained = super::drain::drain(store, &a.paths, &to, false).await?;
            let failed = drained.failed();
            run.step("drain", &drained);
            if failed > 0 {
                bail!("{failed} VM(s) could not be migrated off this node");
            }
        }
    }
    Ok(())
}

/// Polls VM `name`'s record until `ok` holds; returns it.
async fn wait_record(
    store: &VmStore,
    name: &str,
    timeout: Duration,
    ok: impl Fn(&VmRecord) -> bool,
) -> anyhow::Result<VmRecord> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = store.get(name)?;
        if ok(&r) {
            return Ok(r);
        }
        if Instant::now() >= deadline {
            bail!(
                "VM {name}: still {:?} (failover {:?}) after {:.0} s",
                r.direct,
                r.failover,
                timeout.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Breaks the direct path; returns what was done.
fn inject(s: &Steering, fault: Fault) -> anyhow::Result<String> {
    match (s, fault) {
        (Steering::Bridge { vf_port, .. }, Fault::LinkDown) => {
            ip(&["link", "set", "dev", vf_port, "down"])?;
            Ok(format!("stand-in tap {vf_port} set down"))
        }
        (Steering::Bridge { vf_port, .. }, Fault::Remove) => {
            ip(&["link", "del", "dev", vf_port])?;
            Ok(format!("stand-in tap {vf_port} deleted"))
        }
        (Steering::Vf { pf, vf, .. }, Fault::LinkDown) => {
            vf_link(pf, *vf, VfLinkState::Disable)?;
            Ok(format!("VF {vf} of {pf}: link disabled"))
        }
        (Steering::Vf { .. }, Fault::Remove) => bail!(
            "--fault remove is for the lab stand-in; a VF's removal takes all VFs of the PF \
             (sriov_numvfs): use --fault link-down"
        ),
    }
}

/// Repairs what [`inject`] broke.
fn clear(s: &Steering, fault: Fault) -> anyhow::Result<String> {
    match (s, fault) {
        (Steering::Bridge { vf_port, .. }, Fault::LinkDown) => {
            ip(&["link", "set", "dev", vf_port, "up"])?;
            Ok(format!("stand-in tap {vf_port} set up"))
        }
        (
            Steering::Bridge {
                bridge, vf_port, ..
            },
            Fault::Remove,
        ) => {
            if !Path::new(CLASS_NET).join(vf_port).exists() {
                ip(&["tuntap", "add", "dev", vf_port, "mode", "tap"])?;
            }
            ip(&["link", "set", "dev", vf_port, "master", bridge])?;
            ip(&["link", "set", "dev", vf_port, "up"])?;
            Ok(format!("stand-in tap {vf_port} created again on {bridge}"))
        }
        (Steering::Vf { pf, vf, .. }, _) => {
            vf_link(pf, *vf, VfLinkState::Auto)?;
            Ok(format!("VF {vf} of {pf}: link auto"))
        }
    }
}

fn vf_link(pf: &str, vf: u32, state: VfLinkState) -> anyhow::Result<()> {
    let change = VfChange {
        link_state: Some(state),
        ..VfChange::default()
    };
    Netlink::open()?.apply_vf(pf, vf, &change)?;
    Ok(())
}

/// What a switch restart did.
#[derive(Debug, Serialize)]
struct Restarted {
    old_pid: u32,
    new_pid: u32,
    /// From the SIGKILL until the new switch answers on its control socket.
    down_ms: u64,
    log: PathBuf,
}

/// Kills the switch serving `control` with SIGKILL and starts it again with the
/// same command line, working directory and environment, detached (its output
/// appended to `<run_dir>/switch-restart.log`); returns once it answers.
fn restart_switch(control: &Path, run_dir: &Path) -> anyhow::Result<Restarted> {
    let pid = peer_pid(control)?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let argv: Vec<String> = std::fs::read(proc_dir.join("cmdline"))
        .with_context(|| format!("cannot read the switch's command line (pid {pid})"))?
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cwd = std::fs::read_link(proc_dir.join("cwd")).unwrap_or_else(|_| PathBuf::from("/"));
    let env: Vec<(String, String)> = std::fs::read(proc_dir.join("environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let same_netns = std::fs::read_link(proc_dir.join("ns/net")).ok()
        == std::fs::read_link("/proc/self/ns/net").ok();
    if !same_netns {
        bail!("the switch (pid {pid}) runs in another network namespace: run the drill there");
    }
    let Some((exe, args)) = argv.split_first() else {
        bail!("the switch (pid {pid}) has no command line");
    };
    std::fs::create_dir_all(run_dir)?;
    let log = run_dir.join("switch-restart.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    // SAFETY: kill(2) with a pid read from the switch's own socket credentials.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    if rc != 0 {
        bail!(
            "cannot kill the switch (pid {pid}): {}",
            std::io::Error::last_os_error()
        );
    }
    let killed = Instant::now();
    // Gone (or a zombie its parent has not reaped yet) before it is started again.
    let deadline = killed + Duration::from_secs(5);
    while proc_dir.exists() && !is_zombie(&proc_dir) {
        if Instant::now() >= deadline {
            bail!("the switch (pid {pid}) is still there 5 s after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut cmd = Command::new(exe);
    cmd.args(args)
        .current_dir(&cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start the switch again ({exe})"))?;
    let new_pid = child.id();
    // Detached: it outlives the drill.
    drop(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if matches!(
            vswitch::control::request(control, &Request::Ports {}),
            Ok(Response::Ports { .. })
        ) {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "the restarted switch (pid {new_pid}) does not answer on {} (log: {})",
                control.display(),
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Restarted {
        old_pid: pid,
        new_pid,
        down_ms: u64::try_from(killed.elapsed().as_millis()).unwrap_or(u64::MAX),
        log,
    })
}

/// A killed process its parent has not reaped yet (or one gone) counts as gone.
pub(super) fn is_zombie(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The pid of the process listening on the unix socket `control` (`SO_PEERCRED`).
fn peer_pid(control: &Path) -> anyhow::Result<u32> {
    use std::os::fd::AsRawFd;
    let conn = std::os::unix::net::UnixStream::connect(control)
        .with_context(|| format!("cannot reach the switch at {}", control.display()))?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of a `ucred`, the size the
    // kernel is told; the fd is a connected unix socket owned by `conn`.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if rc != 0 || cred.pid <= 0 {
        bail!(
            "cannot tell which process serves {}: {}",
            control.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(cred.pid.unsigned_abs())
}

/// Samples the VM's switch port and direct path counters every 50 ms, on the
/// probe's clock, into the report's path timeline.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<PathSample>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(rec: &VmRecord, probe: &Probe) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (control, port, steering) = (
            rec.switch_control.clone(),
            rec.port.clone(),
            rec.steering.clone(),
        );
        // The probe's clock: its elapsed time now, plus ours from here.
        let base = probe.elapsed();
        let t0 = Instant::now();
        let thread = {
            let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
            std::thread::spawn(move || {
                let mut sampler = PathSampler::new();
                while !stop.load(Ordering::Relaxed) {
                    let synthetic = port_packets(&control, &port);
                    let direct = steering.as_ref().map_or(0, direct_packets);
                    if let Some(s) = sampler.sample(base + t0.elapsed(), synthetic, direct) {
                        samples
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(s);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Sampler {
            stop,
            samples,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<PathSample> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(
            &mut *self
                .samples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Frames through the VM's switch port (both ways); 0 while the switch is away.
fn port_packets(control: &Path, port: &str) -> u64 {
    match vswitch::control::request(control, &Request::Stats {}) {
        Ok(Response::Stats { ports }) => ports
            .iter()
            .find(|p| p.name == port)
            .map_or(0, |p| p.rx_packets + p.tx_packets),
        _ => 0,
    }
}

/// Frames through the direct path where the host can count them (the stand-in
/// tap, both ways); 0 on a NIC's VF (no per-VF counters read yet).
fn direct_packets(s: &Steering) -> u64 {
    let Steering::Bridge { vf_port, .. } = s else {
        return 0;
    };
    let stat = |f: &str| {
        std::fs::read_to_string(
            Path::new(CLASS_NET)
                .join(vf_port)
                .join("statistics")
                .join(f),
        )
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
    };
    stat("rx_packets") + stat("tx_packets")
}
