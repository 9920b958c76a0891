//! `accelnet switch ports|fdb|stats`: query a running switch over its control socket.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{ErrorKind, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use vswitch::api::{FdbEntryInfo, PortInfo, PortKind};
use vswitch::{DropReason, PortStats, Request, Response};

use crate::table::{Align, Table};

/// Arguments of the query subcommands.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Control socket of the running switch.
    #[arg(long, value_name = "PATH")]
    control: PathBuf,
    /// Print the answer as pretty JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What to ask the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// The port list.
    Ports,
    /// The forwarding database.
    Fdb,
    /// Per-port counters.
    Stats,
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            What::Ports => "ports",
            What::Fdb => "fdb",
            What::Stats => "stats",
        })
    }
}

/// Sends the request and prints the answer on stdout.
pub fn show(args: &ShowArgs, what: What) -> anyhow::Result<()> {
    let req = match what {
        What::Ports => Request::Ports {},
        What::Fdb => Request::Fdb {},
        What::Stats => Request::Stats {},
    };
    let resp = vswitch::control::request(&args.control, &req)?;
    let out = render(&resp, what, args.json)?;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        // `accelnet switch fdb | head` is not an error.
        Err(e) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

/// The text to print for `resp`, the answer to a `what` request.
fn render(resp: &Response, what: What, json: bool) -> anyhow::Result<String> {
    let table = match (what, resp) {
        (_, Response::Error { message }) => bail!("switch refused the request: {message}"),
        (What::Ports, Response::Ports { ports }) => ports_table(ports),
        (What::Fdb, Response::Fdb { entries }) => fdb_table(entries),
        (What::Stats, Response::Stats { ports }) => stats_table(ports),
        (_, other) => bail!(
            "the switch answered a {what} request with a {} response",
            response_kind(other)
        ),
    };
    if json {
        payload_json(resp)
    } else {
        Ok(table)
    }
}

fn response_kind(resp: &Response) -> &'static str {
    match resp {
        Response::Ports { .. } => "ports",
        Response::Fdb { .. } => "fdb",
        Response::Stats { .. } => "stats",
        Response::PortAdded { .. } => "port_added",
        Response::PortDeleted { .. } => "port_deleted",
        Response::PortUpdated { .. } => "port_updated",
        Response::Announced { .. } => "announced",
        Response::Held { .. } => "held",
        Response::HeldFrames { .. } => "held_frames",
        Response::Injected { .. } => "injected",
        Response::Error { .. } => "error",
    }
}

/// The response without its `"response"` tag, pretty-printed: e.g.
/// `{"ports": [...]}` or `{"entries": [...]}`. Keys are sorted, so the output is stable.
fn payload_json(resp: &Response) -> anyhow::Result<String> {
    let value = serde_json::to_value(resp).context("cannot encode the answer as JSON")?;
    let payload: BTreeMap<String, serde_json::Value> = match value {
        serde_json::Value::Object(map) => {
            map.into_iter().filter(|(k, _)| k != "response").collect()
        }
        other => bail!("unexpected JSON shape of the answer: {other}"),
    };
    let mut out =
        serde_json::to_string_pretty(&payload).context("cannot encode the answer as JSON")?;
    out.push('\n');
    Ok(out)
}

pub(super) fn ports_table(ports: &[PortInfo]) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Right),
        ("NAME", Align::Left),
        ("KIND", Align::Left),
        ("VLAN", Align::Right),
        ("CONNECTED", Align::Left),
        ("PATH", Align::Left),
    ]);
    for p in ports {
        let kind = match p.kind {
            PortKind::VhostUser => "vhost-user",
            PortKind::Uplink => "uplink",
        };
        t.row(vec![
            p.id.to_string(),
            p.name.clone(),
            kind.to_string(),
            p.vlan.to_string(),
            if p.connected { "yes" } else { "no" }.to_string(),
            p.path.clone(),
        ]);
    }
    t.render()
}

fn fdb_table(entries: &[FdbEntryInfo]) -> String {
    let mut t = Table::new(&[
        ("VLAN", Align::Right),
        ("MAC", Align::Left),
        ("PORT", Align::Left),
        ("AGE", Align::Right),
    ]);
    for e in entries {
        t.row(vec![
            e.vlan.to_string(),
            e.mac.to_string(),
            e.port.clone(),
            format!("{}s", e.age_secs),
        ]);
    }
    t.render()
}

fn stats_table(ports: &[PortStats]) -> String {
    let mut t = Table::new(&[
        ("PORT", Align::Left),
        ("RX-PKTS", Align::Right),
        ("RX-BYTES", Align::Right),
        ("TX-PKTS", Align::Right),
        ("TX-BYTES", Align::Right),
        ("DROPS", Align::Left),
    ]);
    for p in ports {
        t.row(vec![
            p.name.clone(),
            p.rx_packets.to_string(),
            p.rx_bytes.to_string(),
            p.tx_packets.to_string(),
            p.tx_bytes.to_string(),
            drops_summary(&p.drops),
        ]);
    }
    t.render()
}

/// Non-zero drop counters as `reason=n,...` in the switch's reason order (names the
/// CLI does not know come last, sorted), or `-` when there are none.
fn drops_summary(drops: &BTreeMap<String, u64>) -> String {
    let known = DropReason::ALL.iter().map(|r| r.as_str());
    let unknown = drops
        .keys()
        .map(String::as_str)
        .filter(|k| DropReason::ALL.iter().all(|r| r.as_str() != *k));
    let parts: Vec<String> = known
        .chain(unknown)
        .filter_map(|k| match drops.get(k) {
            Some(&n) if n > 0 => Some(format!("{k}={n}")),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(name: &str, drops: &[(&str, u64)]) -> PortStats {
        PortStats {
            name: name.into(),
            rx_packets: 10,
            rx_bytes: 1000,
            tx_packets: 2,
            tx_bytes: 120,
            drops: drops.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
            queues: Vec::new(),
        }
    }

    #[test]
    fn test_drops_summary_lists_nonzero_in_reason_order() {
        let s = stats(
            "a",
            &[
                ("no_rx_buffer", 1),
                ("runt_frame", 3),
                ("bad_address", 0),
                ("zz_new", 2),
            ],
        );
        assert_eq!(
            drops_summary(&s.drops),
            "runt_frame=3,no_rx_buffer=1,zz_new=2"
        );
    }

    #[test]
    fn test_drops_summary_all_zero_is_dash() {
        let s = stats("a", &[("runt_frame", 0)]);
        assert_eq!(drops_summary(&s.drops), "-");
    }

    #[test]
    fn test_render_error_response_is_refusal() {
        let resp = Response::Error {
            message: "nope".into(),
        };
        let e = render(&resp, What::Ports, false).unwrap_err();
        assert_eq!(e.to_string(), "switch refused the request: nope");
    }

    #[test]
    fn test_render_mismatched_response_is_error() {
        let resp = Response::Fdb { entries: vec![] };
        let e = render(&resp, What::Stats, true).unwrap_err();
        assert!(
            e.to_string().contains("stats request with a fdb response"),
            "{e}"
        );
    }

    #[test]
    fn test_render_ports_table() {
        let resp = Response::Ports {
            ports: vec![
                PortInfo {
                    id: 0,
                    name: "vm-a".into(),
                    kind: PortKind::VhostUser,
                    path: "/run/vm-a.sock".into(),
                    vlan: 10,
                    connected: true,
                    acked_features: 0,
                    policy: Default::default(),
                },
                PortInfo {
                    id: 1,
                    name: "veth0".into(),
                    kind: PortKind::Uplink,
                    path: "veth0".into(),
                    vlan: 1,
                    connected: false,
                    acked_features: 0,
                    policy: Default::default(),
                },
            ],
        };

        let out = render(&resp, What::Ports, false).unwrap();

        assert_eq!(
            out,
            "ID  NAME   KIND        VLAN  CONNECTED  PATH\n\
             \x200  vm-a   vhost-user    10  yes        /run/vm-a.sock\n\
             \x201  veth0  uplink         1  no         veth0\n"
        );
    }

    #[test]
    fn test_render_fdb_table_and_json() {
        let resp = Response::Fdb {
            entries: vec![FdbEntryInfo {
                vlan: 20,
                mac: "52:54:00:00:00:01".parse().unwrap(),
                port: "vm-a".into(),
                age_secs: 7,
            }],
        };

        let table = render(&resp, What::Fdb, false).unwrap();
        let json = render(&resp, What::Fdb, true).unwrap();

        assert_eq!(
            table,
            "VLAN  MAC                PORT  AGE\n  20  52:54:00:00:00:01  vm-a   7s\n"
        );
        assert_eq!(
            json,
            "{\n  \"entries\": [\n    {\n      \"age_secs\": 7,\n      \"mac\": \"52:54:00:00:00:01\",\n      \"port\": \"vm-a\",\n      \"vlan\": 20\n    }\n  ]\n}\n"
        );
    }
}
