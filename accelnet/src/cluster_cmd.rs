//! `accelnet cluster`: cluster-wide settings and checks (Get-AccelNetManagementPreReq).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use sriov::prereq::{
    check_node_with, hyperthreading_check, Check, PrereqOptions, PrereqReport, Status,
};
use sriov::sysfs::SysfsRoot;

use crate::sriov_cmd::{json, print};
use crate::table::{Align, Table};

/// Arguments of `accelnet cluster`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Check this node's prerequisites for accelerated networking (kernel, IOMMU,
    /// vfio-pci, SR-IOV support of each adapter, PF driver, ACS, bus numbers, SMT);
    /// with --compare, also check hyperthreading against other nodes' reports.
    /// Exits 1 when a check fails.
    Prereq(PrereqArgs),
}

/// Arguments of `accelnet cluster prereq`.
#[derive(Debug, Args)]
struct PrereqArgs {
    /// Directory holding the `sys/` and `proc/` trees to read (for tests and chroots).
    #[arg(long, value_name = "PATH", default_value = "/")]
    sysfs_root: PathBuf,
    /// Check only this adapter (netdev name or PCI address); repeatable. Default:
    /// every PCI network adapter.
    #[arg(long, value_name = "ADAPTER")]
    adapter: Vec<String>,
    /// Another node's report (`accelnet cluster prereq --json` run there), for the
    /// cross-node hyperthreading check; repeatable.
    #[arg(long, value_name = "FILE")]
    compare: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// What `--json` prints: this node's report, the cluster checks, and the verdict.
#[derive(Debug, Serialize)]
struct Output<'a> {
    #[serde(flatten)]
    report: &'a PrereqReport,
    /// Checks across nodes (only with `--compare`).
    cluster: Vec<Check>,
    /// No check failed.
    ready: bool,
}

/// Runs `accelnet cluster ...`.
pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Prereq(a) => prereq(&a),
    }
}

/// The node name and SMT state of another node's `--json` report.
fn read_peer(path: &PathBuf) -> anyhow::Result<PrereqReport> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the node report {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON prereq report", path.display()))?;
    let node = v["node"]
        .as_str()
        .with_context(|| format!("{}: no \"node\" name in the report", path.display()))?;
    let hyperthreading = match &v["hyperthreading"] {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::Null => None,
        other => anyhow::bail!(
            "{}: \"hyperthreading\" must be true, false or null, not {other}",
            path.display()
        ),
    };
    Ok(PrereqReport {
        node: node.to_string(),
        kernel: v["kernel"].as_str().unwrap_or_default().to_string(),
        hyperthreading,
        checks: Vec::new(),
    })
}

fn prereq(args: &PrereqArgs) -> anyhow::Result<()> {
    let root = SysfsRoot::new(&args.sysfs_root);
    let options = PrereqOptions {
        adapters: (!args.adapter.is_empty()).then(|| args.adapter.clone()),
    };
    let report = check_node_with(&root, &options);
    if options.adapters.is_some() && report.check("adapters", None).is_some() {
        anyhow::bail!(
            "no PCI network adapter {} in {} (give a netdev name or a PCI address)",
            args.adapter.join(", "),
            root.pci_devices().display()
        );
    }
    let mut cluster = Vec::new();
    if !args.compare.is_empty() {
        let mut all = vec![report.clone()];
        for p in &args.compare {
            all.push(read_peer(p)?);
        }
        cluster.push(hyperthreading_check(&all));
    }
    let ready = report.is_ok() && cluster.iter().all(|c| c.status != Status::Fail);
    let out = if args.json {
        json(&Output {
            report: &report,
            cluster: cluster.clone(),
            ready,
        })?
    } else {
        render(&report, &cluster, ready)
    };
    print(&out)?;
    if !ready {
        // Each id once, in the order of the report.
        let mut ids: Vec<String> = Vec::new();
        for c in report
            .failed()
            .chain(cluster.iter().filter(|c| c.status == Status::Fail))
        {
            if let Some(id) = c.error.as_ref().map(|e| e.id.to_string()) {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        anyhow::bail!(
            "node {} is not ready for accelerated networking: {}",
            report.node,
            ids.join(", ")
        );
    }
    Ok(())
}

fn render(report: &PrereqReport, cluster: &[Check], ready: bool) -> String {
    let mut t = Table::new(&[
        ("CHECK", Align::Left),
        ("ADAPTER", Align::Left),
        ("STATUS", Align::Left),
        ("DETAIL", Align::Left),
    ]);
    for c in report.checks.iter().chain(cluster) {
        let status = match c.status {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        t.row(vec![
            c.name.clone(),
            c.subject.clone().unwrap_or_else(|| "-".to_string()),
            status.to_string(),
            c.detail.clone(),
        ]);
    }
    let mut out = format!(
        "node {} (Linux {}, hyperthreading {})\n",
        report.node,
        if report.kernel.is_empty() {
            "?"
        } else {
            &report.kernel
        },
        match report.hyperthreading {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        }
    );
    out.push_str(&t.render());
    for c in report.checks.iter().chain(cluster) {
        if let Some(e) = &c.error {
            out.push_str(&format!(
                "\n{}{}: {}\n  {}\n  hint: {}\n",
                e.id,
                c.subject
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default(),
                e.message,
                c.detail,
                e.hint
            ));
        }
    }
    out.push_str(if ready {
        "\nready for accelerated networking\n"
    } else {
        "\nNOT ready for accelerated networking\n"
    });
    out
}
