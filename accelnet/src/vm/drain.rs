//! `accelnet node drain --to AGENT`: live-migrates every accelerated VM of this
//! node, one after the other, to the node whose agent listens on `--to` (each as
//! `vm migrate` does: a VM whose migration fails stays here, running, and the
//! drain goes on with the next).

use std::path::{Path, PathBuf};

use clap::Args;
use migration::live::MigrationReport;
use serde::Serialize;

use super::migrate::{migrate_vm, MigrateArgs};
use super::store::{DirectState, Listed, Phase, VmStore};
use super::Paths;
use crate::sriov_cmd::{json, print};
use crate::table::{Align, Table};

/// Arguments of `accelnet node drain`.
#[derive(Debug, Args)]
pub(super) struct DrainArgs {
    /// The destination node's agent socket.
    #[arg(long, value_name = "SOCKET")]
    to: PathBuf,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
}

/// One VM of a drain.
#[derive(Debug, Serialize)]
pub(super) struct DrainedVm {
    name: String,
    migrated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<MigrationReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// What a drain did.
#[derive(Debug, Serialize)]
pub(super) struct Drained {
    to: PathBuf,
    vms: Vec<DrainedVm>,
    /// Running VMs without a direct path, left on this node.
    left: Vec<String>,
}

impl Drained {
    /// VMs that could not be migrated.
    pub(super) fn failed(&self) -> usize {
        self.vms.iter().filter(|v| !v.migrated).count()
    }
}

/// Migrates every running accelerated VM of this node to the agent at `to`.
pub(super) async fn drain(
    store: &VmStore,
    paths: &Paths,
    to: &Path,
    progress: bool,
) -> anyhow::Result<Drained> {
    let mut out = Drained {
        to: to.to_path_buf(),
        vms: Vec::new(),
        left: Vec::new(),
    };
    let mut names = Vec::new();
    for l in store.list()? {
        let Listed::Ok(rec) = l else { continue };
        if rec.phase != Phase::Running {
            continue;
        }
        if rec.spec.direct.is_some() {
            names.push((rec.name().to_string(), rec.direct == DirectState::Attached));
        } else {
            out.left.push(rec.name().to_string());
        }
    }
    for (name, on_direct) in names {
        if progress {
            eprintln!("VM {name}:");
        }
        let m = MigrateArgs {
            // A VM taken off its direct path here stays off it there.
            no_direct: !on_direct,
            json: !progress,
            ..MigrateArgs::to(&name, to)
        };
        let vm = match migrate_vm(store, paths, &m, progress, None).await {
            Ok(Ok(report)) => DrainedVm {
                name,
                migrated: report.final_state.on_destination(),
                report: Some(report),
                error: None,
            },
            Ok(Err(e)) => DrainedVm {
                name,
                migrated: false,
                report: None,
                error: Some(e.to_string()),
            },
            Err(e) => DrainedVm {
                name,
                migrated: false,
                report: None,
                error: Some(format!("{e:#}")),
            },
        };
        out.vms.push(vm);
    }
    Ok(out)
}

/// `accelnet node drain`.
pub(super) async fn run(store: &VmStore, paths: &Paths, a: &DrainArgs) -> anyhow::Result<()> {
    let d = drain(store, paths, &a.to, !a.json).await?;
    if a.json {
        print(&json(&d)?)?;
    } else {
        let mut t = Table::new(&[
            ("VM", Align::Left),
            ("RESULT", Align::Left),
            ("DOWNTIME", Align::Right),
            ("TOTAL", Align::Right),
        ]);
        for v in &d.vms {
            let (down, total) = v.report.as_ref().map_or(("-".into(), "-".into()), |r| {
                (
                    r.downtime_ms.map_or("-".into(), |d| format!("{d} ms")),
                    format!("{} ms", r.total_ms),
                )
            });
            let result = match (&v.error, v.migrated) {
                (Some(e), _) => format!("failed: {e}"),
                (None, true) => "migrated".to_string(),
                (None, false) => "stayed (rolled back)".to_string(),
            };
            t.row(vec![v.name.clone(), result, down, total]);
        }
        let mut s = format!("drain to {}:\n{}", d.to.display(), t.render());
        if d.vms.is_empty() {
            s = format!("drain to {}: no accelerated VM runs here\n", d.to.display());
        }
        if !d.left.is_empty() {
            s.push_str(&format!(
                "not accelerated, left here: {}\n",
                d.left.join(", ")
            ));
        }
        print(&s)?;
    }
    let failed = d.failed();
    if failed > 0 {
        anyhow::bail!("{failed} VM(s) could not be migrated off this node");
    }
    Ok(())
}
