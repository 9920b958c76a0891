//! `accelnet vm migrate`: live-migrates a VM with its direct path to another node,
//! whose node agent takes it in (`accelnet node agent`).
//!
//! The steps and their rollback are `migration::live`'s; this node runs the
//! source's operations itself and the destination's through the agent (both with
//! [`super::node`]). One migration per VM at a time: a file lock in the VM's run
//! directory, held for the whole run, refuses a second `vm migrate`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use migration::live::{
    CancelToken, DirectGrant, Event, InFlight, LiveMigration, MigrationError, MigrationOptions,
    MigrationPlan, MigrationReport, StepOutcome, VmNet,
};
use serde::Serialize;
use tokio::signal::unix::{signal, SignalKind};
use vmm_plugin::DirectPath;

use super::agent::{DirectWant, IncomingVm};
use super::node::{LocalNode, NodeHost, Transport};
use super::path::tier_name;
use super::store::{DirectState, Phase, VmStore};
use super::{direct_label, node_name, OpLock, Paths};
use crate::sriov_cmd::{json, print};

/// Arguments of `accelnet vm migrate`.
#[derive(Debug, Args)]
pub(super) struct MigrateArgs {
    /// The VM.
    pub(super) name: String,
    /// The destination node's agent socket (`accelnet node agent --listen`).
    #[arg(long, value_name = "SOCKET")]
    pub(super) to: PathBuf,
    /// The destination's VF stand-in tap (lab); default: any free one the agent
    /// offers. Only for a VM whose direct path is a stand-in.
    #[arg(long, value_name = "TAP")]
    pub(super) dest_vf_standin: Option<String>,
    /// The destination's VF: a PCI address or `auto` (default: `auto`). Only for
    /// a VM whose direct path is a VF.
    #[arg(long, value_name = "PCI|auto")]
    pub(super) dest_vf: Option<String>,
    /// Leave the VM on the synthetic path at the destination.
    #[arg(long, conflicts_with_all = ["dest_vf", "dest_vf_standin"])]
    pub(super) no_direct: bool,
    /// Seconds the guest may take to release its direct path at the source.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub(super) unplug_timeout: u64,
    /// Seconds to wait for the guest to use the destination's direct path.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub(super) settle: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub(super) json: bool,
}

impl MigrateArgs {
    /// `vm migrate NAME --to TO --json` with the defaults of the other flags
    /// (the drill and `node drain` run it in process).
    pub(super) fn to(name: &str, to: &std::path::Path) -> MigrateArgs {
        MigrateArgs {
            name: name.to_string(),
            to: to.to_path_buf(),
            dest_vf_standin: None,
            dest_vf: None,
            no_direct: false,
            unplug_timeout: 20,
            settle: 10,
            json: true,
        }
    }
}

/// What `vm migrate --json` prints on success.
#[derive(Debug, Serialize)]
struct Outcome<'a> {
    migrated: bool,
    #[serde(flatten)]
    report: &'a MigrationReport,
}

/// `accelnet vm migrate`.
pub(super) async fn migrate(store: &VmStore, paths: &Paths, a: &MigrateArgs) -> anyhow::Result<()> {
    // Ctrl-C or SIGTERM cancels: the orchestrator stops before the switch-over and
    // rolls back (after it, the migration finishes).
    let cancel = CancelToken::new();
    let on_signal = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("accelnet: interrupted: cancelling the migration");
            cancel.cancel();
        })
    };
    // JSON output stays machine-readable: no progress lines then.
    let res = migrate_vm(store, paths, a, !a.json, Some(&cancel)).await;
    on_signal.abort();
    match res? {
        Ok(report) => {
            if a.json {
                return print(&json(&Outcome {
                    migrated: report.final_state.on_destination(),
                    report: &report,
                })?);
            }
            print(&human(&report))
        }
        Err(e) => {
            if a.json {
                print(&json(&e)?)?;
            }
            Err(anyhow::Error::new(e))
        }
    }
}

/// Migrates VM `a.name` as `vm migrate` does (progress on stderr with `progress`);
/// the outer error is one found before the migration started.
pub(super) async fn migrate_vm(
    store: &VmStore,
    paths: &Paths,
    a: &MigrateArgs,
    progress: bool,
    cancel: Option<&CancelToken>,
) -> anyhow::Result<Result<MigrationReport, MigrationError>> {
    let rec = store.get(&a.name)?;
    if rec.phase != Phase::Running {
        bail!(
            "VM {} is {}: only a running VM can be migrated",
            a.name,
            rec.phase.name()
        );
    }
    if !rec.process_alive(std::path::Path::new("/proc")) {
        bail!("VM {}: its {} process is gone", a.name, rec.vmm);
    }
    // One operation per VM, across processes: the lock lives as long as the run.
    let lock = OpLock::take(&rec, "a migration")?;
    let inflight = InFlight::new();
    let mut guard = inflight.begin(&a.name, "migration")?;
    guard.keep(lock);

    let had_direct = rec.direct == DirectState::Attached;
    let direct = match (&rec.spec.direct, a.no_direct) {
        (_, true) | (None, _) => None,
        (Some(DirectPath::Standin { model, .. }), false) => {
            if a.dest_vf.is_some() {
                bail!(
                    "VM {} has a lab stand-in, not a VF: use --dest-vf-standin",
                    a.name
                );
            }
            Some(DirectWant::Standin {
                tap: a.dest_vf_standin.clone(),
                model: *model,
            })
        }
        (Some(DirectPath::Vf { .. }), false) => {
            if a.dest_vf_standin.is_some() {
                bail!("VM {} has a VF, not a lab stand-in: use --dest-vf", a.name);
            }
            Some(DirectWant::Vf {
                select: a.dest_vf.clone().unwrap_or_else(|| "auto".into()),
            })
        }
    };
    let spec = &rec.spec;
    let incoming = IncomingVm {
        name: a.name.clone(),
        vmm: rec.vmm,
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        cmdline: spec.cmdline.clone(),
        disks: spec.disks.clone(),
        mac: spec.nic.mac.clone(),
        queue_pairs: spec.nic.queue_pairs,
        vlan: rec.vlan,
        performance: rec.performance,
        direct: direct.clone(),
    };
    let vm = VmNet {
        name: a.name.clone(),
        mac: spec.nic.mac.clone(),
        queue_pairs: spec.nic.queue_pairs,
        tier: rec.performance.map(tier_name),
    };
    let source_direct = match (&spec.direct, had_direct) {
        (Some(d), true) => Some(DirectGrant {
            id: format!("{d:?}"),
            label: direct_label(d, false),
        }),
        _ => None,
    };
    let plan = MigrationPlan {
        vm,
        source_direct,
        destination_direct: direct.is_some(),
    };

    let node = LocalNode::new(paths.clone());
    let source = NodeHost::new(Transport::Local { node: &node, store });
    let destination = NodeHost::new(Transport::Agent {
        socket: a.to.clone(),
        incoming: Box::new(incoming),
    });
    let src_name = node_name();
    let dst_name = a.to.display().to_string();
    let mut m = LiveMigration::new(
        &plan,
        migration::live::Host {
            name: &src_name,
            vmm: &source,
            vf: &source,
            switch: &source,
        },
        migration::live::Host {
            name: &dst_name,
            vmm: &destination,
            vf: &destination,
            switch: &destination,
        },
    );
    m.options = MigrationOptions {
        unplug_timeout: Duration::from_secs(a.unplug_timeout),
        settle: Duration::from_secs(a.settle),
    };
    let show = move |e: &Event| {
        if progress {
            show_event(e);
        }
    };
    m.events = &show;
    if let Some(c) = cancel {
        m.cancel = c.clone();
    }
    store.update(&a.name, |r| {
        r.phase = Phase::Migrating;
        Ok(())
    })?;
    let res = m.run(&guard).await;
    match &res {
        Ok(report) => {
            if report.final_state.on_destination() {
                // The source's VMM, VF and port are released; the VM lives there now.
                store.remove(&a.name)?;
            } else {
                back_to_running(store, &a.name);
            }
        }
        Err(e) => {
            if matches!(e.final_state, migration::live::FinalState::Source { .. }) {
                back_to_running(store, &a.name);
            }
        }
    }
    Ok(res)
}

fn back_to_running(store: &VmStore, name: &str) {
    if let Err(e) = store.update(name, |r| {
        r.phase = Phase::Running;
        Ok(())
    }) {
        log::warn!("VM {name}: cannot record it running again: {e}");
    }
}

/// The progress display: one line per step and per progress report, on stderr.
fn show_event(e: &Event) {
    match e {
        Event::StepStarted { step } => eprintln!("  {step} ..."),
        Event::StepFinished {
            step,
            outcome,
            duration,
        } => {
            let how = match outcome {
                StepOutcome::Done => "done",
                StepOutcome::Skipped => "skipped",
                StepOutcome::Warning => "done with a warning",
                StepOutcome::Failed => "FAILED",
            };
            eprintln!("  {step}: {how} ({} ms)", duration.as_millis());
        }
        Event::Progress(p) => {
            let pct = (p.total > 0).then(|| 100 * p.transferred.min(p.total) / p.total);
            eprintln!(
                "    {}: {} MiB sent, {} MiB left{}",
                p.status,
                p.transferred >> 20,
                p.remaining >> 20,
                pct.map_or(String::new(), |v| format!(" ({v}%)"))
            );
        }
        Event::Warning(w) => eprintln!("  warning: {w}"),
        Event::CancelRequested => eprintln!("  cancelling ..."),
        Event::RollingBack { step } => eprintln!("  {step} failed: rolling back"),
    }
}

fn human(r: &MigrationReport) -> String {
    let mut s = format!(
        "VM {} migrated from {} to {}: {}\n",
        r.vm, r.source, r.destination, r.final_state
    );
    s.push_str(&format!(
        "  total {} ms, migration {} ms, downtime {}, {} MiB transferred\n",
        r.total_ms,
        r.migration_ms,
        r.downtime_ms
            .map_or("not reported".into(), |d| format!("{d} ms")),
        r.transferred_bytes >> 20
    ));
    if r.forwarded_frames > 0 {
        s.push_str(&format!(
            "  {} frame(s) held at the source from the switch-over, delivered at the destination\n",
            r.forwarded_frames
        ));
    }
    for st in &r.steps {
        s.push_str(&format!(
            "  {:<9} {:>6} ms  (+{} ms)  {:?}\n",
            st.step.as_str(),
            st.duration_ms,
            st.start_ms,
            st.outcome
        ));
    }
    for w in &r.warnings {
        s.push_str(&format!("  warning: {w}\n"));
    }
    s
}
