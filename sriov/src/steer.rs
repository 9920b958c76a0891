//! Steering a VM's MAC in the host's embedded switch: which of the VM's two paths
//! (the VF, or the PF and behind it accelnet's switch) gets the wire's frames for it.
//!
//! Inside the guest, `net_failover` delivers what arrives on the standby (virtio)
//! only while no primary (VF) is registered, and what arrives on the primary only
//! while it is registered and its link is up. The host therefore moves the MAC on
//! every path change, timed to the guest: [`Route::Direct`] while the VF carries
//! the VM, [`Route::Synthetic`] once the guest let go of it, and [`Route::Both`]
//! during a change, where the embedded switch can deliver to both paths (the guest
//! takes exactly one copy: the other path's is dropped by `net_failover`).
//!
//! Two embedded switches:
//! * [`Steering::Vf`], a real SR-IOV NIC: frames for the VF's administrative MAC go
//!   to the VF, everything else to the PF. Direct = the VF has the VM's MAC;
//!   synthetic = the VF's MAC is zeroed, so the PF (the switch's uplink) gets the
//!   frames. A NIC cannot deliver one MAC to two functions, so `Both` is `Direct`:
//!   the guest pairs its VF by that MAC, which must stay set until it lets go.
//! * [`Steering::Bridge`], the lab stand-in: a Linux bridge whose ports are the VF
//!   stand-in's tap and the PF (a veth into the switch's uplink). The VF port
//!   neither learns nor floods unknown unicast (a VF only gets its own MAC, and
//!   broadcast), the PF port does not learn (it is the default destination, as
//!   on a NIC), and the VM's MAC is a static, sticky FDB entry. `Both` removes the
//!   entry and lets the VF port flood, so the bridge sends the VM's frames to both.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;
use crate::netlink::{Netlink, NetlinkError, VfChange};

/// Where the embedded switch sends a VM's MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// To the VF (the direct path).
    Direct,
    /// To the PF, i.e. accelnet's switch (the synthetic path).
    Synthetic,
    /// To both, while the guest changes paths (where the embedded switch can).
    Both,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Direct => "direct",
            Route::Synthetic => "synthetic",
            Route::Both => "both",
        })
    }
}

/// A VM's MAC in one host's embedded switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Steering {
    /// A real VF: its administrative MAC, set over the PF's rtnetlink.
    Vf {
        /// The PF's netdev.
        pf: String,
        /// The VF's index on the PF.
        vf: u32,
        /// The VM's MAC.
        mac: MacAddr,
    },
    /// The lab stand-in: a Linux bridge plays the embedded switch.
    Bridge {
        /// The bridge.
        bridge: String,
        /// The VF stand-in's port (the tap of the emulated NIC).
        vf_port: String,
        /// The port towards the PF, i.e. accelnet's switch uplink.
        pf_port: String,
        /// The switch's uplink behind `pf_port` (`pf_port` itself or its veth
        /// peer); unknown in records written before it was kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uplink: Option<String>,
        /// The VM's MAC.
        mac: MacAddr,
    },
}

/// Why steering failed.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// An rtnetlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// A sysfs file could not be read or written.
    #[error("{path}: {source}")]
    Sysfs {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The host is not laid out as steering needs.
    #[error("{0}")]
    Topology(String),
}

fn read_trim(path: &Path) -> Result<String, SteerError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| SteerError::Sysfs {
            path: path.to_path_buf(),
            source,
        })
}

fn write_flag(path: &Path, on: bool) -> Result<(), SteerError> {
    std::fs::write(path, if on { "1" } else { "0" }).map_err(|source| SteerError::Sysfs {
        path: path.to_path_buf(),
        source,
    })
}

/// The bridge `port` is enslaved to, if any (`<class_net>/<port>/master`).
fn master_of(class_net: &Path, port: &str) -> Option<String> {
    std::fs::read_link(class_net.join(port).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

impl Steering {
    /// The lab stand-in's steering for a VF stand-in on `tap`: the bridge is the
    /// tap's master, and its PF port is the port that is one of the switch's
    /// `uplinks` or the veth peer of one. `class_net` is `/sys/class/net`.
    pub fn standin_bridge(
        class_net: &Path,
        tap: &str,
        uplinks: &[String],
        mac: MacAddr,
    ) -> Result<Steering, SteerError> {
        let bridge = master_of(class_net, tap).ok_or_else(|| {
            SteerError::Topology(format!(
                "the VF stand-in {tap} is not a bridge port: attach it to the bridge that plays \
                 the host's embedded switch (ip link set {tap} master BRIDGE)"
            ))
        })?;
        if !class_net.join(&bridge).join("bridge").is_dir() {
            return Err(SteerError::Topology(format!(
                "{tap}'s master {bridge} is not a Linux bridge"
            )));
        }
        // (bridge port, the uplink it leads to)
        let mut found = Vec::new();
        for up in uplinks {
            if master_of(class_net, up).as_deref() == Some(bridge.as_str()) {
                found.push((up.clone(), up.clone()));
                continue;
            }
            // A veth's iflink is its peer's ifindex.
            let Ok(peer) = read_trim(&class_net.join(up).join("iflink")) else {
                continue;
            };
            let Ok(entries) = std::fs::read_dir(class_net) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name == *up {
                    continue;
                }
                let same =
                    read_trim(&class_net.join(&name).join("ifindex")).is_ok_and(|i| i == peer);
                if same && master_of(class_net, &name).as_deref() == Some(bridge.as_str()) {
                    found.push((name, up.clone()));
                }
            }
        }
        found.sort();
        found.dedup();
        match found.as_slice() {
            [(pf_port, uplink)] => Ok(Steering::Bridge {
                bridge,
                vf_port: tap.to_string(),
                pf_port: pf_port.clone(),
                uplink: Some(uplink.clone()),
                mac,
            }),
            [] => Err(SteerError::Topology(format!(
                "bridge {bridge} (the VF stand-in {tap}'s embedded switch) has no port leading to \
                 the switch's uplink ({}): the PF must be a port of the same bridge",
                if uplinks.is_empty() {
                    "the switch has no uplink".to_string()
                } else {
                    uplinks.join(", ")
                }
            ))),
            many => Err(SteerError::Topology(format!(
                "bridge {bridge} has several ports leading to the switch's uplinks: {}",
                many.iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// The switch uplink that frames for the VF go out of, to reach it through the
    /// embedded switch: the PF on a NIC (a VEB loops PF→VF frames back), the
    /// uplink behind the bridge's PF port in the lab; `None` if unknown.
    pub fn switch_uplink(&self) -> Option<&str> {
        match self {
            Steering::Vf { pf, .. } => Some(pf),
            Steering::Bridge { uplink, .. } => uplink.as_deref(),
        }
    }

    /// The VM's MAC.
    pub fn mac(&self) -> MacAddr {
        match self {
            Steering::Vf { mac, .. } | Steering::Bridge { mac, .. } => *mac,
        }
    }

    /// Sets up the embedded switch's ports for steering (idempotent): for the lab
    /// bridge, the VF port neither learns nor floods unknown unicast and the PF port
    /// does not learn. Nothing to do on a NIC.
    pub fn prepare(&self, class_net: &Path) -> Result<(), SteerError> {
        match self {
            Steering::Vf { .. } => Ok(()),
            Steering::Bridge {
                vf_port, pf_port, ..
            } => {
                let brport = |p: &str, f: &str| class_net.join(p).join("brport").join(f);
                write_flag(&brport(vf_port, "learning"), false)?;
                write_flag(&brport(vf_port, "unicast_flood"), false)?;
                write_flag(&brport(pf_port, "learning"), false)
            }
        }
    }

    /// Sends the VM's MAC where `route` says.
    pub fn route(&self, nl: &Netlink, class_net: &Path, route: Route) -> Result<(), SteerError> {
        match self {
            Steering::Vf { pf, vf, mac } => {
                let mac = match route {
                    Route::Direct | Route::Both => *mac,
                    Route::Synthetic => MacAddr::ZERO,
                };
                let change = VfChange {
                    mac: Some(mac),
                    ..VfChange::default()
                };
                nl.apply_vf(pf, *vf, &change)?;
                Ok(())
            }
            Steering::Bridge {
                vf_port,
                pf_port,
                mac,
                ..
            } => {
                let flood = class_net.join(vf_port).join("brport/unicast_flood");
                match route {
                    Route::Direct | Route::Synthetic => {
                        let port = if route == Route::Direct {
                            vf_port
                        } else {
                            pf_port
                        };
                        // Replace moves the entry in one step: no window without it.
                        nl.bridge_fdb_pin(port, *mac)?;
                        // A stand-in port that is gone floods nothing (the route
                        // away from a deleted stand-in).
                        if route == Route::Synthetic && !class_net.join(vf_port).exists() {
                            return Ok(());
                        }
                        write_flag(&flood, false)
                    }
                    Route::Both => {
                        write_flag(&flood, true)?;
                        self.clear(nl)
                    }
                }
            }
        }
    }

    /// Takes the VM's MAC out of the lab bridge's FDB (the entry is on one of the
    /// two ports, or none); nothing on a NIC, whose VF the pool resets. Both ports
    /// are tried; the first error is returned.
    pub fn clear(&self, nl: &Netlink) -> Result<(), SteerError> {
        let mut first = None;
        if let Steering::Bridge {
            vf_port,
            pf_port,
            mac,
            ..
        } = self
        {
            for port in [vf_port, pf_port] {
                if let Err(e) = nl.bridge_fdb_remove(port, *mac) {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), |e| Err(e.into()))
    }

    /// The lab stand-in's tap, where the host can watch the guest's frames over
    /// the direct path; `None` on a NIC.
    pub fn standin_tap(&self) -> Option<&str> {
        match self {
            Steering::Vf { .. } => None,
            Steering::Bridge { vf_port, .. } => Some(vf_port),
        }
    }
}

impl fmt::Display for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Steering::Vf { pf, vf, mac } => write!(f, "VF {vf} of {pf} (MAC {mac})"),
            Steering::Bridge {
                bridge,
                vf_port,
                pf_port,
                mac,
                ..
            } => write!(
                f,
                "lab bridge {bridge}: VF stand-in port {vf_port}, PF port {pf_port} (MAC {mac})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys/class/net: name -> (ifindex, iflink, master).
    fn class_net(links: &[(&str, u32, u32, Option<&str>)]) -> tempfile_dir::Dir {
        let d = tempfile_dir::Dir::new();
        for (name, index, iflink, master) in links {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.join("brport")).unwrap();
            std::fs::write(p.join("ifindex"), format!("{index}\n")).unwrap();
            std::fs::write(p.join("iflink"), format!("{iflink}\n")).unwrap();
            if let Some(m) = master {
                std::os::unix::fs::symlink(format!("../{m}"), p.join("master")).unwrap();
            }
        }
        d
    }

    /// A scratch directory removed on drop (no tempfile dependency in this crate).
    mod tempfile_dir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "sriov-steer-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x77, 0, 1]);

    #[test]
    fn test_standin_bridge_finds_the_veth_peer_of_the_uplink() {
        let d = class_net(&[
            ("esw0", 2, 2, None),
            ("uplink0", 3, 3, Some("esw0")),
            ("pf0", 4, 5, Some("esw0")),
            ("pfup0", 5, 4, None),
            ("vf0tap", 6, 6, Some("esw0")),
        ]);
        std::fs::create_dir_all(d.path().join("esw0/bridge")).unwrap();
        let s = Steering::standin_bridge(d.path(), "vf0tap", &["pfup0".into()], MAC).unwrap();
        assert_eq!(
            s,
            Steering::Bridge {
                bridge: "esw0".into(),
                vf_port: "vf0tap".into(),
                pf_port: "pf0".into(),
                uplink: Some("pfup0".into()),
                mac: MAC
            }
        );
        assert_eq!(s.mac(), MAC);
        assert_eq!(s.switch_uplink(), Some("pfup0"));
        // The uplink itself on the bridge works too.
        let s = Steering::standin_bridge(d.path(), "vf0tap", &["uplink0".into()], MAC).unwrap();
        assert!(matches!(&s, Steering::Bridge { pf_port, .. } if pf_port == "uplink0"));
        assert_eq!(s.switch_uplink(), Some("uplink0"));
    }

    #[test]
    fn test_standin_bridge_refuses_other_layouts() {
        let d = class_net(&[
            ("esw0", 2, 2, None),
            ("br9", 7, 7, None),
            ("pf0", 4, 5, Some("br9")),
            ("pfup0", 5, 4, None),
            ("vf0tap", 6, 6, Some("esw0")),
            ("lonetap", 8, 8, None),
        ]);
        std::fs::create_dir_all(d.path().join("esw0/bridge")).unwrap();
        let e = Steering::standin_bridge(d.path(), "lonetap", &["pfup0".into()], MAC).unwrap_err();
        assert!(e.to_string().contains("not a bridge port"), "{e}");
        let e = Steering::standin_bridge(d.path(), "vf0tap", &["pfup0".into()], MAC).unwrap_err();
        assert!(e.to_string().contains("no port leading to"), "{e}");
        let e = Steering::standin_bridge(d.path(), "vf0tap", &[], MAC).unwrap_err();
        assert!(e.to_string().contains("the switch has no uplink"), "{e}");
        // A master that is not a bridge (no bridge/ directory).
        let e = Steering::standin_bridge(d.path(), "pf0", &["pfup0".into()], MAC).unwrap_err();
        assert!(e.to_string().contains("not a Linux bridge"), "{e}");
    }

    #[test]
    fn test_prepare_sets_the_port_flags_and_counts_frames() {
        let d = class_net(&[("vf0tap", 6, 6, None), ("pf0", 4, 5, None)]);
        let s = Steering::Bridge {
            bridge: "esw0".into(),
            vf_port: "vf0tap".into(),
            pf_port: "pf0".into(),
            uplink: None,
            mac: MAC,
        };
        s.prepare(d.path()).unwrap();
        let flag = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(flag("vf0tap/brport/learning"), "0");
        assert_eq!(flag("vf0tap/brport/unicast_flood"), "0");
        assert_eq!(flag("pf0/brport/learning"), "0");
        assert_eq!(s.standin_tap(), Some("vf0tap"));
        // A port that is not on a bridge: the error names the file.
        let bad = Steering::Bridge {
            bridge: "esw0".into(),
            vf_port: "nosuch".into(),
            pf_port: "pf0".into(),
            uplink: None,
            mac: MAC,
        };
        let e = bad.prepare(d.path()).unwrap_err();
        assert!(e.to_string().contains("nosuch/brport/learning"), "{e}");
    }

    #[test]
    fn test_steering_round_trips_through_json() {
        let s = Steering::Vf {
            pf: "eth1".into(),
            vf: 3,
            mac: MAC,
        };
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"kind\":\"vf\""), "{j}");
        assert_eq!(serde_json::from_str::<Steering>(&j).unwrap(), s);
        assert_eq!(s.to_string(), "VF 3 of eth1 (MAC 52:54:00:77:00:01)");
        assert_eq!(s.switch_uplink(), Some("eth1"));
        assert_eq!(s.standin_tap(), None);
        assert_eq!(Route::Both.to_string(), "both");
        // A lab record written before the uplink was kept still reads.
        let old = r#"{"kind":"bridge","bridge":"esw0","vf_port":"t","pf_port":"p","mac":"52:54:00:77:00:01"}"#;
        let s: Steering = serde_json::from_str(old).unwrap();
        assert_eq!(s.switch_uplink(), None);
    }
}
