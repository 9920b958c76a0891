//! rtnetlink access to per-VF settings (read and write, with read-back).
//!
//! [`Netlink`] owns a blocking `NETLINK_ROUTE` socket. [`Netlink::vf_infos`] reads
//! the VF settings a PF driver holds (`RTM_GETLINK` with `IFLA_EXT_MASK =
//! RTEXT_FILTER_VF`, decoding `IFLA_VFINFO_LIST`); [`Netlink::set_vf`] writes some
//! of them in one `RTM_SETLINK`; [`Netlink::apply_vf`] validates, writes field by
//! field, reads back, and restores the previous values when anything fails.
//!
//! Requests are encoded with `netlink-packet-route`'s types. Replies are decoded
//! here, on the raw attributes (with `netlink-packet-core`'s NLA iterator), because
//! the kernel reports spoof check and trust as `-1` when the driver does not
//! implement them, and `netlink-packet-route` turns that into `false`; here it
//! becomes `None` ("unknown").
//!
//! The socket is synchronous and not shared: a [`Netlink`] is `Send` but not `Sync`.
//! Writing needs `CAP_NET_ADMIN`; reading does not.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::io;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLMSG_DONE,
    NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_CREATE,
    NLM_F_MULTIPART, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::link::{
    self as rt, LinkAttribute, LinkExtentMask, LinkMessage, LinkVfInfo,
};
use netlink_packet_route::neighbour::{
    NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::host::{VfInfo, VfInfoSource, VfLinkState};
use crate::mac::MacAddr;
use crate::sysfs::SriovError;

const RTM_NEWLINK: u16 = 16;
const IFLA_VFINFO_LIST: u16 = 22;
const IFLA_VF_INFO: u16 = 1;
const IFLA_VF_MAC: u16 = 1;
const IFLA_VF_VLAN: u16 = 2;
const IFLA_VF_TX_RATE: u16 = 3;
const IFLA_VF_SPOOFCHK: u16 = 4;
const IFLA_VF_LINK_STATE: u16 = 5;
const IFLA_VF_RATE: u16 = 6;
const IFLA_VF_TRUST: u16 = 9;
const IFLA_VF_VLAN_LIST: u16 = 12;
const IFLA_VF_VLAN_INFO: u16 = 1;
const NLMSGERR_ATTR_MSG: u16 = 1;
/// `IFNAMSIZ - 1`: the longest interface name.
const MAX_IFNAME_LEN: usize = 15;
/// Receive buffer asked of the kernel (best effort): a PF with many VFs answers
/// `RTM_GETLINK` with one large message.
const SOCKET_RCVBUF: usize = 1 << 20;
/// Highest VLAN id a VF can be given (4095 is reserved).
pub const MAX_VLAN: u16 = 4094;
/// Highest 802.1p priority (`qos`).
pub const MAX_QOS: u32 = 7;

/// Why an rtnetlink operation failed. Every variant but [`NetlinkError::Open`]
/// names the interface, and the VF index and value where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The `NETLINK_ROUTE` socket could not be created.
    #[error("cannot open an rtnetlink socket: {source}")]
    Open {
        /// The underlying error.
        source: io::Error,
    },
    /// Not a valid Linux interface name (refused before any request).
    #[error("invalid network interface name {ifname:?}: {reason}")]
    InvalidName {
        /// The name given.
        ifname: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The kernel refused the request.
    #[error("{action} on {ifname}: {}", kernel_text(ifname, *errno, message.as_deref()))]
    Kernel {
        /// The interface.
        ifname: String,
        /// The VF index, for a per-VF write.
        vf: Option<u32>,
        /// What was being done, e.g. `setting VF 3 VLAN 5000`.
        action: String,
        /// The positive errno (`libc::EINVAL`, ...).
        errno: i32,
        /// The kernel's extended-ack message, if it sent one.
        message: Option<String>,
    },
    /// Sending or receiving on the socket failed.
    #[error("{action} on {ifname}: netlink socket error: {source}")]
    Io {
        /// The interface.
        ifname: String,
        /// What was being done.
        action: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The kernel's reply could not be decoded.
    #[error("{action} on {ifname}: malformed netlink reply: {message}")]
    Decode {
        /// The interface.
        ifname: String,
        /// What was being done.
        action: String,
        /// What was wrong.
        message: String,
    },
    /// The PF does not report a VF with this index.
    #[error("{ifname} has no VF {vf} (it reports {count} VFs)")]
    NoSuchVf {
        /// The PF's interface.
        ifname: String,
        /// The VF index asked for.
        vf: u32,
        /// How many VFs the PF reports.
        count: usize,
    },
    /// A requested value is out of range (refused before any request).
    #[error("refusing to set VF {vf} {field} {value} on {ifname}: {reason}")]
    InvalidValue {
        /// The PF's interface.
        ifname: String,
        /// The VF index.
        vf: u32,
        /// The setting (`VLAN`, `MAC`, ...).
        field: &'static str,
        /// The requested value.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// A partial change needs a current value the driver does not report (e.g. a
    /// `qos` without a VLAN, when the current VLAN is unknown).
    #[error("cannot set VF {vf} {field} on {ifname}: {reason}")]
    CurrentUnknown {
        /// The PF's interface.
        ifname: String,
        /// The VF index.
        vf: u32,
        /// The setting.
        field: &'static str,
        /// What is missing.
        reason: &'static str,
    },
    /// The kernel accepted a setting but reads back something else.
    #[error(
        "VF {vf} {field} on {ifname} was not applied: wanted {wanted}, the kernel reports {got}"
    )]
    NotApplied {
        /// The PF's interface.
        ifname: String,
        /// The VF index.
        vf: u32,
        /// The setting.
        field: &'static str,
        /// What was set.
        wanted: String,
        /// What the kernel reports now.
        got: String,
    },
}

impl NetlinkError {
    /// The kernel's errno, for [`NetlinkError::Kernel`] (and socket errors that have one).
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            NetlinkError::Open { source } | NetlinkError::Io { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// `EINVAL (Invalid argument)`, with a hint for the errors rtnetlink VF requests
/// commonly get, and the kernel's extended-ack message.
fn kernel_text(ifname: &str, errno: i32, message: Option<&str>) -> String {
    let name = crate::errno::name(errno);
    let desc = io::Error::from_raw_os_error(errno).to_string();
    let desc = desc
        .split(" (os error")
        .next()
        .unwrap_or(desc.as_str())
        .to_string();
    let hint = match errno {
        libc::ENODEV => format!("no network interface named {ifname}"),
        libc::EOPNOTSUPP => format!("the driver of {ifname} does not support this VF setting"),
        libc::EINVAL => "the driver refused the VF index or value".to_string(),
        libc::EPERM | libc::EACCES => "CAP_NET_ADMIN is needed".to_string(),
        _ => String::new(),
    };
    let mut s = format!("{name} ({desc})");
    if !hint.is_empty() {
        s.push_str(": ");
        s.push_str(&hint);
    }
    if let Some(m) = message.filter(|m| !m.is_empty()) {
        s.push_str("; kernel says: ");
        s.push_str(m);
    }
    s
}

/// A change to a VF's settings: every `None` field is left as it is.
/// [`VfChange::default()`] changes nothing; [`VfChange::reset()`] is the pool's
/// reset state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VfChange {
    /// Administrative MAC (`00:00:00:00:00:00` removes it). Multicast is refused.
    pub mac: Option<MacAddr>,
    /// VLAN id, 0-4094 (0 = untagged). Set without `qos`, the priority becomes 0.
    pub vlan: Option<u16>,
    /// 802.1p priority of the VLAN tag, 0-7. Set without `vlan`, the current VLAN
    /// is kept (read from the kernel first).
    pub qos: Option<u32>,
    /// MAC spoof checking.
    pub spoof_check: Option<bool>,
    /// Trusted VF.
    pub trust: Option<bool>,
    /// Maximum transmit rate, Mbit/s (0 = unlimited). Set without `min_tx_rate`,
    /// the kernel keeps the current minimum (`IFLA_VF_TX_RATE`).
    pub max_tx_rate: Option<u32>,
    /// Minimum transmit rate, Mbit/s (0 = none); at most `max_tx_rate` unless that
    /// is 0. Set without `max_tx_rate`, the current maximum is kept (read first).
    pub min_tx_rate: Option<u32>,
    /// Administrative link state.
    pub link_state: Option<VfLinkState>,
}

impl VfChange {
    /// The state the pool returns a VF to: MAC `00:00:00:00:00:00`, VLAN 0 (qos 0),
    /// spoof check on, trust off, no rate limits, link state auto.
    pub fn reset() -> VfChange {
        VfChange {
            mac: Some(MacAddr::ZERO),
            vlan: Some(0),
            qos: Some(0),
            spoof_check: Some(true),
            trust: Some(false),
            max_tx_rate: Some(0),
            min_tx_rate: Some(0),
            link_state: Some(VfLinkState::Auto),
        }
    }

    /// Whether this changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == VfChange::default()
    }

    /// Checks the values that are wrong for any driver: VLAN above 4094, qos above
    /// 7, a multicast MAC, a minimum rate above a non-zero maximum.
    pub fn validate(&self, ifname: &str, vf: u32) -> Result<(), NetlinkError> {
        let invalid = |field: &'static str, value: String, reason: String| {
            Err(NetlinkError::InvalidValue {
                ifname: ifname.to_string(),
                vf,
                field,
                value,
                reason,
            })
        };
        if let Some(vlan) = self.vlan.filter(|v| *v > MAX_VLAN) {
            return invalid(
                "VLAN",
                vlan.to_string(),
                format!("VLAN ids go from 0 (untagged) to {MAX_VLAN}"),
            );
        }
        if let Some(qos) = self.qos.filter(|q| *q > MAX_QOS) {
            return invalid(
                "qos",
                qos.to_string(),
                format!("802.1p priorities go from 0 to {MAX_QOS}"),
            );
        }
        if let Some(mac) = self.mac.filter(MacAddr::is_multicast) {
            return invalid(
                "MAC",
                mac.to_string(),
                "a multicast or broadcast address cannot be a station address".to_string(),
            );
        }
        if let (Some(min), Some(max)) = (self.min_tx_rate, self.max_tx_rate) {
            if max != 0 && min > max {
                return invalid(
                    "min_tx_rate",
                    format!("{min} Mbit/s"),
                    format!("above max_tx_rate {max} Mbit/s"),
                );
            }
        }
        Ok(())
    }
}

impl fmt::Display for VfChange {
    /// `MAC 02:00:00:00:00:01, VLAN 5 qos 0, spoof check on`: what a change sets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |b: bool| if b { "on" } else { "off" };
        let mut parts = Vec::new();
        if let Some(m) = self.mac {
            parts.push(format!("MAC {m}"));
        }
        match (self.vlan, self.qos) {
            (Some(v), Some(q)) => parts.push(format!("VLAN {v} qos {q}")),
            (Some(v), None) => parts.push(format!("VLAN {v}")),
            (None, Some(q)) => parts.push(format!("qos {q}")),
            (None, None) => {}
        }
        if let Some(b) = self.spoof_check {
            parts.push(format!("spoof check {}", on(b)));
        }
        if let Some(b) = self.trust {
            parts.push(format!("trust {}", on(b)));
        }
        if let Some(r) = self.max_tx_rate {
            parts.push(format!("max_tx_rate {r} Mbit/s"));
        }
        if let Some(r) = self.min_tx_rate {
            parts.push(format!("min_tx_rate {r} Mbit/s"));
        }
        if let Some(s) = self.link_state {
            parts.push(format!("link state {}", link_state_name(s)));
        }
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

fn link_state_name(s: VfLinkState) -> &'static str {
    match s {
        VfLinkState::Auto => "auto",
        VfLinkState::Enable => "enable",
        VfLinkState::Disable => "disable",
    }
}

/// The fields [`Netlink::apply_vf`] sets one request at a time, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Mac,
    Vlan,
    SpoofCheck,
    Trust,
    Rate,
    LinkState,
}

const FIELDS: [Field; 6] = [
    Field::Mac,
    Field::Vlan,
    Field::SpoofCheck,
    Field::Trust,
    Field::Rate,
    Field::LinkState,
];

impl Field {
    /// The part of `c` this field covers.
    fn part(self, c: &VfChange) -> VfChange {
        let mut p = VfChange::default();
        match self {
            Field::Mac => p.mac = c.mac,
            Field::Vlan => {
                p.vlan = c.vlan;
                p.qos = c.qos;
            }
            Field::SpoofCheck => p.spoof_check = c.spoof_check,
            Field::Trust => p.trust = c.trust,
            Field::Rate => {
                p.max_tx_rate = c.max_tx_rate;
                p.min_tx_rate = c.min_tx_rate;
            }
            Field::LinkState => p.link_state = c.link_state,
        }
        p
    }

    /// The change that puts this field back to `old` (`None`: `old` does not say).
    fn restore(self, old: &VfInfo) -> Option<VfChange> {
        let mut p = VfChange::default();
        match self {
            Field::Mac => p.mac = Some(old.mac.as_deref()?.parse().ok()?),
            Field::Vlan => {
                p.vlan = Some(old.vlan?);
                p.qos = Some(old.qos.unwrap_or(0));
            }
            Field::SpoofCheck => p.spoof_check = Some(old.spoof_check?),
            Field::Trust => p.trust = Some(old.trust?),
            Field::Rate => {
                p.max_tx_rate = Some(old.max_tx_rate?);
                p.min_tx_rate = old.min_tx_rate;
            }
            Field::LinkState => p.link_state = Some(old.link_state?),
        }
        Some(p)
    }
}

/// Compares what `change` set with what the kernel reports (`got`). A value the
/// kernel does not report cannot be verified and is accepted (the write itself
/// succeeded). Returns the first mismatch as `(field, wanted, got)`.
/// Whether `got` already reports every value `change` sets (strictly: an unreported
/// value is not satisfied). Such a part is not sent, so a reset to values a VF already
/// has works on drivers that lack the setting (igb has no forced link state, so
/// "link state auto" must not be sent to it).
fn satisfied(change: &VfChange, got: &VfInfo) -> bool {
    fn same<T: PartialEq>(wanted: Option<T>, got: Option<T>) -> bool {
        wanted.is_none() || (got.is_some() && wanted == got)
    }
    let got_mac = got.mac.as_deref().and_then(|m| m.parse::<MacAddr>().ok());
    let qos = change.qos.or(change.vlan.map(|_| 0));
    same(change.mac, got_mac)
        && same(change.vlan, got.vlan)
        && same(qos, got.qos)
        && same(change.spoof_check, got.spoof_check)
        && same(change.trust, got.trust)
        && same(change.max_tx_rate, got.max_tx_rate)
        && same(change.min_tx_rate, got.min_tx_rate)
        && same(change.link_state, got.link_state)
}

fn mismatch(change: &VfChange, got: &VfInfo) -> Option<(&'static str, String, String)> {
    fn cmp<T: PartialEq + fmt::Display>(
        field: &'static str,
        wanted: Option<T>,
        got: Option<T>,
    ) -> Option<(&'static str, String, String)> {
        match (wanted, got) {
            (Some(w), Some(g)) if w != g => Some((field, w.to_string(), g.to_string())),
            _ => None,
        }
    }
    let on = |b: bool| if b { "on" } else { "off" };
    let got_mac = got.mac.as_deref().and_then(|m| m.parse::<MacAddr>().ok());
    // A VLAN set without qos sets priority 0.
    let qos = change.qos.or(change.vlan.map(|_| 0));
    cmp("MAC", change.mac, got_mac)
        .or_else(|| cmp("VLAN", change.vlan, got.vlan))
        .or_else(|| cmp("qos", qos, got.qos))
        .or_else(|| {
            cmp(
                "spoof check",
                change.spoof_check.map(on),
                got.spoof_check.map(on),
            )
        })
        .or_else(|| cmp("trust", change.trust.map(on), got.trust.map(on)))
        .or_else(|| cmp("max_tx_rate", change.max_tx_rate, got.max_tx_rate))
        .or_else(|| cmp("min_tx_rate", change.min_tx_rate, got.min_tx_rate))
        .or_else(|| {
            cmp(
                "link state",
                change.link_state.map(link_state_name),
                got.link_state.map(link_state_name),
            )
        })
}

/// An rtnetlink (`NETLINK_ROUTE`) connection for reading and writing VF settings.
pub struct Netlink {
    socket: Socket,
    seq: Cell<u32>,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink")
            .field("seq", &self.seq.get())
            .finish_non_exhaustive()
    }
}

impl Netlink {
    /// Opens a blocking `NETLINK_ROUTE` socket (no privilege needed).
    pub fn open() -> Result<Netlink, NetlinkError> {
        let mut socket =
            Socket::new(NETLINK_ROUTE).map_err(|source| NetlinkError::Open { source })?;
        socket
            .bind_auto()
            .map_err(|source| NetlinkError::Open { source })?;
        // Best effort: a larger queue for big replies, extended ack messages, and
        // errors that carry only the request's header.
        if let Err(e) = socket.set_rx_buf_sz(SOCKET_RCVBUF) {
            log::debug!("netlink: cannot set SO_RCVBUF: {e}");
        }
        if let Err(e) = socket.set_ext_ack(true) {
            log::debug!("netlink: cannot enable NETLINK_EXT_ACK: {e}");
        }
        if let Err(e) = socket.set_cap_ack(true) {
            log::debug!("netlink: cannot enable NETLINK_CAP_ACK: {e}");
        }
        Ok(Netlink {
            socket,
            seq: Cell::new(1),
        })
    }

    /// The settings of every VF of the PF `ifname`, keyed by VF index. A device
    /// without VFs (or whose driver does not report them) gives an empty map.
    /// Values the driver does not report are `None`. Asks the kernel to leave out
    /// the per-VF counters (`RTEXT_FILTER_SKIP_STATS`), which keeps the reply small.
    pub fn vf_infos(&self, ifname: &str) -> Result<BTreeMap<u32, VfInfo>, NetlinkError> {
        check_ifname(ifname)?;
        let action = "reading the VF settings".to_string();
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(ifname.to_string()));
        msg.attributes.push(LinkAttribute::ExtMask(vec![
            LinkExtentMask::Vf,
            LinkExtentMask::SkipStats,
        ]));
        let replies = self.transact(ifname, None, &action, RouteNetlinkMessage::GetLink(msg), 0)?;
        let mut out = BTreeMap::new();
        for payload in &replies {
            let infos = decode_vf_list(payload).map_err(|message| NetlinkError::Decode {
                ifname: ifname.to_string(),
                action: action.clone(),
                message,
            })?;
            out.extend(infos);
        }
        Ok(out)
    }

    /// Writes the fields of `change` for VF `vf` of the PF `ifname`, in one
    /// `RTM_SETLINK` request. Values are checked first ([`VfChange::validate`]).
    ///
    /// Not atomic: the kernel applies the attributes in its own order (MAC, VLAN,
    /// rate, spoof check, link state, trust) and stops at the first the driver
    /// refuses, leaving the earlier ones set. Use [`Netlink::apply_vf`] for
    /// all-or-nothing with read-back.
    pub fn set_vf(&self, ifname: &str, vf: u32, change: &VfChange) -> Result<(), NetlinkError> {
        check_ifname(ifname)?;
        change.validate(ifname, vf)?;
        if change.is_empty() {
            return Ok(());
        }
        // Partial VLAN/rate changes need the current value: read it when needed.
        let current = || self.vf_info(ifname, vf);
        let unknown = |field, reason| NetlinkError::CurrentUnknown {
            ifname: ifname.to_string(),
            vf,
            field,
            reason,
        };

        let mut attrs = Vec::new();
        if let Some(mac) = change.mac {
            attrs.push(rt::VfInfo::Mac(rt::VfInfoMac::new(vf, &mac.0)));
        }
        if change.vlan.is_some() || change.qos.is_some() {
            let vlan = match change.vlan {
                Some(v) => v,
                None => current()?.vlan.ok_or_else(|| {
                    unknown(
                        "qos",
                        "the driver does not report the current VLAN; give the VLAN too",
                    )
                })?,
            };
            let qos = change.qos.unwrap_or(0);
            attrs.push(rt::VfInfo::Vlan(rt::VfInfoVlan::new(
                vf,
                u32::from(vlan),
                qos,
            )));
        }
        match (change.max_tx_rate, change.min_tx_rate) {
            (Some(max), None) => attrs.push(rt::VfInfo::TxRate(rt::VfInfoTxRate::new(vf, max))),
            (max, Some(min)) => {
                let max = match max {
                    Some(m) => m,
                    None => current()?.max_tx_rate.ok_or_else(|| {
                        unknown(
                            "min_tx_rate",
                            "the driver does not report the current max_tx_rate; give it too",
                        )
                    })?,
                };
                if max != 0 && min > max {
                    return Err(NetlinkError::InvalidValue {
                        ifname: ifname.to_string(),
                        vf,
                        field: "min_tx_rate",
                        value: format!("{min} Mbit/s"),
                        reason: format!("above the current max_tx_rate {max} Mbit/s"),
                    });
                }
                attrs.push(rt::VfInfo::Rate(rt::VfInfoRate::new(vf, min, max)));
            }
            (None, None) => {}
        }
        if let Some(b) = change.spoof_check {
            attrs.push(rt::VfInfo::SpoofCheck(rt::VfInfoSpoofCheck::new(vf, b)));
        }
        if let Some(b) = change.trust {
            attrs.push(rt::VfInfo::Trust(rt::VfInfoTrust::new(vf, b)));
        }
        if let Some(s) = change.link_state {
            let s = match s {
                VfLinkState::Auto => rt::VfLinkState::Auto,
                VfLinkState::Enable => rt::VfLinkState::Enable,
                VfLinkState::Disable => rt::VfLinkState::Disable,
            };
            attrs.push(rt::VfInfo::LinkState(rt::VfInfoLinkState::new(vf, s)));
        }

        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(ifname.to_string()));
        msg.attributes
            .push(LinkAttribute::VfInfoList(vec![LinkVfInfo(attrs)]));
        let action = format!("setting VF {vf} {change}");
        self.transact(
            ifname,
            Some(vf),
            &action,
            RouteNetlinkMessage::SetLink(msg),
            NLM_F_ACK,
        )?;
        Ok(())
    }

    /// Applies `change` to VF `vf` of the PF `ifname`, all or nothing, and returns
    /// the settings the kernel reports afterwards.
    ///
    /// Validates first ([`VfChange::validate`], and that the VF exists), reads the
    /// current settings, sets each field with its own request (MAC, VLAN and qos,
    /// spoof check, trust, rates, link state), then reads back and compares. When
    /// the kernel refuses a field, or reads back something else than was set
    /// ([`NetlinkError::NotApplied`]), the fields already set are restored to their
    /// previous values (best effort: a failed restore is logged as a warning) and
    /// the error is returned.
    ///
    /// A value the kernel does not report in the read-back (`None`, e.g. trust on
    /// a driver that does not implement it but accepted the write) cannot be
    /// verified and counts as applied: the write itself succeeded.
    pub fn apply_vf(
        &self,
        ifname: &str,
        vf: u32,
        change: &VfChange,
    ) -> Result<VfInfo, NetlinkError> {
        check_ifname(ifname)?;
        change.validate(ifname, vf)?;
        let before = self.vf_info(ifname, vf)?;
        if change.is_empty() {
            return Ok(before);
        }
        let mut done: Vec<Field> = Vec::new();
        for field in FIELDS {
            let part = field.part(change);
            if part.is_empty() || satisfied(&part, &before) {
                continue;
            }
            if let Err(e) = self.set_vf(ifname, vf, &part) {
                self.restore(ifname, vf, &before, &done);
                return Err(e);
            }
            done.push(field);
        }
        let after = match self.vf_info(ifname, vf) {
            Ok(a) => a,
            Err(e) => {
                self.restore(ifname, vf, &before, &done);
                return Err(e);
            }
        };
        if let Some((field, wanted, got)) = mismatch(change, &after) {
            self.restore(ifname, vf, &before, &done);
            return Err(NetlinkError::NotApplied {
                ifname: ifname.to_string(),
                vf,
                field,
                wanted,
                got,
            });
        }
        Ok(after)
    }

    /// The settings of one VF; [`NetlinkError::NoSuchVf`] when the PF does not
    /// report it.
    pub fn vf_info(&self, ifname: &str, vf: u32) -> Result<VfInfo, NetlinkError> {
        let infos = self.vf_infos(ifname)?;
        infos.get(&vf).cloned().ok_or(NetlinkError::NoSuchVf {
            ifname: ifname.to_string(),
            vf,
            count: infos.len(),
        })
    }

    /// The interface index of `ifname` in this network namespace (`RTM_GETLINK`).
    pub fn if_index(&self, ifname: &str) -> Result<u32, NetlinkError> {
        check_ifname(ifname)?;
        let action = "looking up the interface".to_string();
        let mut msg = LinkMessage::default();
        msg.attributes
            .push(LinkAttribute::IfName(ifname.to_string()));
        msg.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let replies = self.transact(ifname, None, &action, RouteNetlinkMessage::GetLink(msg), 0)?;
        // struct ifinfomsg: family (1), pad (1), type (2), then the index (u32 #1).
        replies
            .first()
            .and_then(|p| u32_at(p, 1))
            .ok_or_else(|| NetlinkError::Decode {
                ifname: ifname.to_string(),
                action,
                message: "no RTM_NEWLINK in the reply".to_string(),
            })
    }

    /// Points `mac` at bridge port `port` with a static, sticky FDB entry of the
    /// bridge `port` belongs to (`bridge fdb replace MAC dev PORT master static
    /// sticky`): it never ages, and the bridge's learning never moves it.
    pub fn bridge_fdb_pin(&self, port: &str, mac: MacAddr) -> Result<(), NetlinkError> {
        let msg = fdb_message(mac, self.if_index(port)?);
        let action = format!("pinning {mac} to bridge port {port}");
        self.transact(
            port,
            None,
            &action,
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )?;
        Ok(())
    }

    /// Removes the FDB entry for `mac` on bridge port `port`; `false` when there
    /// was none.
    pub fn bridge_fdb_remove(&self, port: &str, mac: MacAddr) -> Result<bool, NetlinkError> {
        let msg = fdb_message(mac, self.if_index(port)?);
        let action = format!("removing {mac} from bridge port {port}");
        match self.transact(
            port,
            None,
            &action,
            RouteNetlinkMessage::DelNeighbour(msg),
            NLM_F_ACK,
        ) {
            Ok(_) => Ok(true),
            Err(NetlinkError::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Puts the `fields` of VF `vf` back to `before`, last first; logs failures.
    fn restore(&self, ifname: &str, vf: u32, before: &VfInfo, fields: &[Field]) {
        for field in fields.iter().rev() {
            match field.restore(before) {
                Some(change) => {
                    if let Err(e) = self.set_vf(ifname, vf, &change) {
                        log::warn!("cannot restore VF {vf} of {ifname} ({change}): {e}");
                    }
                }
                None => log::warn!(
                    "cannot restore VF {vf} {field:?} on {ifname}: its previous value was not reported"
                ),
            }
        }
    }

    fn next_seq(&self) -> u32 {
        let s = self.seq.get();
        self.seq.set(s.wrapping_add(1).max(1));
        s
    }

    /// Sends `message` and collects the payloads of the `RTM_NEWLINK` replies
    /// until the request is answered (a non-multipart reply, `NLMSG_DONE`, or an
    /// ack/error).
    fn transact(
        &self,
        ifname: &str,
        vf: Option<u32>,
        action: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<Vec<u8>>, NetlinkError> {
        let io_err = |source| NetlinkError::Io {
            ifname: ifname.to_string(),
            action: action.to_string(),
            source,
        };
        let decode_err = |message: String| NetlinkError::Decode {
            ifname: ifname.to_string(),
            action: action.to_string(),
            message,
        };
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket
            .send_to(&buf, &SocketAddr::new(0, 0), 0)
            .map_err(io_err)?;

        let mut out = Vec::new();
        loop {
            let data = self.recv_datagram().map_err(io_err)?;
            match parse_datagram(&data, seq, &mut out).map_err(decode_err)? {
                Reply::More => continue,
                Reply::Done => return Ok(out),
                Reply::Error { errno, message } => {
                    return Err(NetlinkError::Kernel {
                        ifname: ifname.to_string(),
                        vf,
                        action: action.to_string(),
                        errno,
                        message,
                    })
                }
            }
        }
    }

    /// One whole datagram, however large: peeks at its size first.
    fn recv_datagram(&self) -> io::Result<Vec<u8>> {
        loop {
            let mut probe: Vec<u8> = Vec::with_capacity(64);
            let size = match self
                .socket
                .recv_from(&mut probe, libc::MSG_PEEK | libc::MSG_TRUNC)
            {
                Ok((n, _)) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut buf: Vec<u8> = Vec::with_capacity(size.max(64));
            match self.socket.recv_from(&mut buf, 0) {
                Ok(_) => return Ok(buf),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl VfInfoSource for Netlink {
    /// Reads the VFs through the PF's first netdev; a PF without a netdev (e.g.
    /// bound to `vfio-pci`) gives an empty map.
    fn vf_infos(
        &self,
        pf_address: &str,
        pf_netdevs: &[String],
    ) -> Result<BTreeMap<u32, VfInfo>, SriovError> {
        let Some(ifname) = pf_netdevs.first() else {
            return Ok(BTreeMap::new());
        };
        Netlink::vf_infos(self, ifname).map_err(|e| SriovError::VfInfo {
            pf: pf_address.to_string(),
            message: e.to_string(),
        })
    }
}

/// An `AF_BRIDGE` neighbour message for `mac` on port `index`: static
/// (`NUD_NOARP`), in the bridge's own table (`NTF_MASTER`), sticky.
fn fdb_message(mac: MacAddr, index: u32) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Noarp;
    msg.header.flags = NeighbourFlags::Controller | NeighbourFlags::Sticky;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
    msg
}

fn check_ifname(ifname: &str) -> Result<(), NetlinkError> {
    let reason = if ifname.is_empty() {
        Some("empty")
    } else if ifname.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if ifname == "." || ifname == ".." {
        Some("not a name")
    } else if ifname
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains '/', ':', NUL or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetlinkError::InvalidName {
            ifname: ifname.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

/// How far one datagram got a request.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// Not answered yet: read another datagram.
    More,
    /// Answered (ack, `NLMSG_DONE`, or the single reply).
    Done,
    /// Refused with this (positive) errno and extended-ack message.
    Error { errno: i32, message: Option<String> },
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn u32_at(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i * 4..i * 4 + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// Walks the netlink messages of one datagram, keeping those of sequence `seq`:
/// the payloads of `RTM_NEWLINK` go to `out`.
fn parse_datagram(data: &[u8], seq: u32, out: &mut Vec<Vec<u8>>) -> Result<Reply, String> {
    let mut off = 0;
    while off < data.len() {
        let msg = NetlinkBuffer::new_checked(&data[off..]).map_err(|e| e.to_string())?;
        let len = msg.length() as usize;
        off += align4(len);
        if msg.sequence_number() != seq {
            continue;
        }
        let payload = msg.payload();
        match msg.message_type() {
            NLMSG_NOOP => {}
            NLMSG_ERROR => {
                let code =
                    u32_at(payload, 0).ok_or("NLMSG_ERROR shorter than its error code")? as i32;
                if code == 0 {
                    return Ok(Reply::Done);
                }
                return Ok(Reply::Error {
                    errno: code.saturating_abs(),
                    message: ext_ack_message(msg.flags(), &payload[4..]),
                });
            }
            NLMSG_DONE => {
                if let Some(code) = u32_at(payload, 0).map(|c| c as i32).filter(|c| *c < 0) {
                    return Ok(Reply::Error {
                        errno: code.saturating_abs(),
                        message: None,
                    });
                }
                return Ok(Reply::Done);
            }
            NLMSG_OVERRUN => return Err("NLMSG_OVERRUN: the kernel dropped data".into()),
            RTM_NEWLINK => {
                out.push(payload.to_vec());
                if msg.flags() & NLM_F_MULTIPART == 0 {
                    return Ok(Reply::Done);
                }
            }
            other => log::debug!("netlink: ignoring message type {other}"),
        }
    }
    Ok(Reply::More)
}

/// The `NLMSGERR_ATTR_MSG` of an error message (after its errno), if any.
fn ext_ack_message(flags: u16, rest: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // The request's header (just the header when capped, else the whole request).
    let skip = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        align4(u32_at(rest, 0)? as usize)
    };
    let tlvs = rest.get(skip..)?;
    for nla in NlasIterator::new(tlvs) {
        let nla = nla.ok()?;
        if nla.kind() == NLMSGERR_ATTR_MSG {
            let v = nla.value();
            let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
            return Some(String::from_utf8_lossy(&v[..end]).into_owned());
        }
    }
    None
}

/// Decodes the `IFLA_VFINFO_LIST` of an `RTM_NEWLINK` payload (link header and
/// attributes). No list: an empty map.
fn decode_vf_list(link: &[u8]) -> Result<BTreeMap<u32, VfInfo>, String> {
    const LINK_HEADER_LEN: usize = 16;
    let attrs = link
        .get(LINK_HEADER_LEN..)
        .ok_or("RTM_NEWLINK shorter than its link header")?;
    let mut out = BTreeMap::new();
    for nla in NlasIterator::new(attrs) {
        let nla = nla.map_err(|e| format!("link attribute: {e}"))?;
        if nla.kind() != IFLA_VFINFO_LIST {
            continue;
        }
        for (position, vf) in NlasIterator::new(nla.value()).enumerate() {
            let vf = vf.map_err(|e| format!("IFLA_VFINFO_LIST: {e}"))?;
            if vf.kind() != IFLA_VF_INFO {
                continue;
            }
            let (index, info) = decode_vf(vf.value())?;
            let index = match index {
                Some(i) => i,
                None => u32::try_from(position).map_err(|e| e.to_string())?,
            };
            out.insert(index, info);
        }
    }
    Ok(out)
}

/// Decodes one `IFLA_VF_INFO`: the VF index (from its attributes) and settings.
fn decode_vf(attrs: &[u8]) -> Result<(Option<u32>, VfInfo), String> {
    let mut info = VfInfo::default();
    let mut index = None;
    let mut tx_rate = None;
    let mut list_vlan = None;
    let flag = |v: u32| (v != u32::MAX).then_some(v != 0);
    for nla in NlasIterator::new(attrs) {
        let nla = nla.map_err(|e| format!("IFLA_VF_INFO: {e}"))?;
        let v = nla.value();
        let short = |name: &str| format!("{name} too short ({} bytes)", v.len());
        let kind = nla.kind();
        let field = |i: usize, name: &str| u32_at(v, i).ok_or_else(|| short(name));
        match kind {
            IFLA_VF_MAC => {
                let mac: [u8; 6] = v
                    .get(4..10)
                    .and_then(|m| m.try_into().ok())
                    .ok_or_else(|| short("IFLA_VF_MAC"))?;
                info.mac = Some(MacAddr(mac).to_string());
            }
            IFLA_VF_VLAN => {
                info.vlan = u16::try_from(field(1, "IFLA_VF_VLAN")?).ok();
                info.qos = Some(field(2, "IFLA_VF_VLAN")?);
            }
            IFLA_VF_VLAN_LIST => {
                for item in NlasIterator::new(v) {
                    let item = item.map_err(|e| format!("IFLA_VF_VLAN_LIST: {e}"))?;
                    let iv = item.value();
                    if item.kind() == IFLA_VF_VLAN_INFO && list_vlan.is_none() {
                        let vlan = u32_at(iv, 1).ok_or("IFLA_VF_VLAN_INFO too short")?;
                        let qos = u32_at(iv, 2).ok_or("IFLA_VF_VLAN_INFO too short")?;
                        list_vlan = Some((vlan, qos));
                    }
                }
            }
            IFLA_VF_TX_RATE => tx_rate = Some(field(1, "IFLA_VF_TX_RATE")?),
            IFLA_VF_RATE => {
                info.min_tx_rate = Some(field(1, "IFLA_VF_RATE")?);
                info.max_tx_rate = Some(field(2, "IFLA_VF_RATE")?);
            }
            IFLA_VF_SPOOFCHK => info.spoof_check = flag(field(1, "IFLA_VF_SPOOFCHK")?),
            IFLA_VF_TRUST => info.trust = flag(field(1, "IFLA_VF_TRUST")?),
            IFLA_VF_LINK_STATE => {
                info.link_state = match field(1, "IFLA_VF_LINK_STATE")? {
                    0 => Some(VfLinkState::Auto),
                    1 => Some(VfLinkState::Enable),
                    2 => Some(VfLinkState::Disable),
                    _ => None,
                }
            }
            _ => continue,
        }
        // Every per-VF attribute starts with the VF index.
        if index.is_none() {
            index = u32_at(v, 0);
        }
    }
    if info.vlan.is_none() {
        if let Some((vlan, qos)) = list_vlan {
            info.vlan = u16::try_from(vlan).ok();
            info.qos = Some(qos);
        }
    }
    if info.max_tx_rate.is_none() {
        info.max_tx_rate = tx_rate;
    }
    Ok((index, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::DefaultNla;

    fn mac(s: &str) -> MacAddr {
        s.parse().expect("valid MAC")
    }

    /// An `RTM_NEWLINK` for `eth9` with two VFs, encoded by netlink-packet-route.
    fn newlink_with_two_vfs(seq: u32, flags: u16) -> Vec<u8> {
        let vf0 = LinkVfInfo(vec![
            rt::VfInfo::Mac(rt::VfInfoMac::new(0, &mac("02:AA:00:00:00:01").0)),
            rt::VfInfo::Vlan(rt::VfInfoVlan::new(0, 100, 3)),
            rt::VfInfo::TxRate(rt::VfInfoTxRate::new(0, 1000)),
            rt::VfInfo::Rate(rt::VfInfoRate::new(0, 10, 1000)),
            rt::VfInfo::SpoofCheck(rt::VfInfoSpoofCheck::new(0, true)),
            rt::VfInfo::LinkState(rt::VfInfoLinkState::new(0, rt::VfLinkState::Disable)),
            rt::VfInfo::Trust(rt::VfInfoTrust::new(0, true)),
        ]);
        let mut unknown_trust = 1u32.to_ne_bytes().to_vec();
        unknown_trust.extend(u32::MAX.to_ne_bytes());
        let vf1 = LinkVfInfo(vec![
            rt::VfInfo::Mac(rt::VfInfoMac::new(1, &[0; 6])),
            rt::VfInfo::Vlan(rt::VfInfoVlan::new(1, 0, 0)),
            rt::VfInfo::TxRate(rt::VfInfoTxRate::new(1, 0)),
            rt::VfInfo::SpoofCheck(rt::VfInfoSpoofCheck::new(1, false)),
            rt::VfInfo::LinkState(rt::VfInfoLinkState::new(1, rt::VfLinkState::Auto)),
            // The kernel's "driver does not report it" (-1).
            rt::VfInfo::Other(DefaultNla::new(IFLA_VF_TRUST, unknown_trust)),
        ]);
        let mut msg = LinkMessage::default();
        msg.header.index = 7;
        msg.attributes.push(LinkAttribute::IfName("eth9".into()));
        msg.attributes.push(LinkAttribute::NumVf(2));
        msg.attributes
            .push(LinkAttribute::VfInfoList(vec![vf0, vf1]));
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.flags = flags;
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(msg)),
        );
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        buf
    }

    fn expected_two_vfs() -> BTreeMap<u32, VfInfo> {
        BTreeMap::from([
            (
                0,
                VfInfo {
                    mac: Some("02:aa:00:00:00:01".into()),
                    vlan: Some(100),
                    qos: Some(3),
                    spoof_check: Some(true),
                    trust: Some(true),
                    max_tx_rate: Some(1000),
                    min_tx_rate: Some(10),
                    link_state: Some(VfLinkState::Disable),
                },
            ),
            (
                1,
                VfInfo {
                    mac: Some("00:00:00:00:00:00".into()),
                    vlan: Some(0),
                    qos: Some(0),
                    spoof_check: Some(false),
                    trust: None,
                    max_tx_rate: Some(0),
                    min_tx_rate: None,
                    link_state: Some(VfLinkState::Auto),
                },
            ),
        ])
    }

    #[test]
    fn test_decode_newlink_with_two_vfs() {
        let bytes = newlink_with_two_vfs(42, 0);
        let mut out = Vec::new();

        let reply = parse_datagram(&bytes, 42, &mut out).expect("parses");

        assert_eq!(reply, Reply::Done);
        assert_eq!(out.len(), 1);
        assert_eq!(
            decode_vf_list(&out[0]).expect("decodes"),
            expected_two_vfs()
        );
    }

    #[test]
    fn test_decode_skips_other_sequence_numbers_and_follows_multipart() {
        let mut bytes = newlink_with_two_vfs(41, 0);
        bytes.extend(newlink_with_two_vfs(42, NLM_F_MULTIPART));
        let mut out = Vec::new();

        assert_eq!(parse_datagram(&bytes, 42, &mut out), Ok(Reply::More));
        assert_eq!(out.len(), 1);

        // NLMSG_DONE: header + a zero error code.
        let mut done = Vec::new();
        done.extend(20u32.to_ne_bytes());
        done.extend(NLMSG_DONE.to_ne_bytes());
        done.extend(NLM_F_MULTIPART.to_ne_bytes());
        done.extend(42u32.to_ne_bytes());
        done.extend(0u32.to_ne_bytes());
        done.extend(0i32.to_ne_bytes());
        assert_eq!(parse_datagram(&done, 42, &mut out), Ok(Reply::Done));
    }

    #[test]
    fn test_decode_link_without_vf_list_is_empty() {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName("lo".into()));
        let mut buf = vec![0u8; netlink_packet_core::Emitable::buffer_len(&msg)];
        netlink_packet_core::Emitable::emit(&msg, &mut buf);

        assert_eq!(decode_vf_list(&buf).expect("decodes"), BTreeMap::new());
        assert!(decode_vf_list(&buf[..8]).is_err());
    }

    #[test]
    fn test_parse_error_with_extended_ack_message() {
        // nlmsghdr(NLMSG_ERROR, capped + TLVs) + errno + request header + MSG TLV.
        let text = b"VF out of range\0";
        let tlv_len = 4 + text.len();
        let mut payload = Vec::new();
        payload.extend((-libc::EINVAL).to_ne_bytes());
        payload.extend([0u8; 16]);
        payload.extend((tlv_len as u16).to_ne_bytes());
        payload.extend(NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend(text);
        while payload.len() % 4 != 0 {
            payload.push(0);
        }
        let mut bytes = Vec::new();
        bytes.extend(((16 + payload.len()) as u32).to_ne_bytes());
        bytes.extend(NLMSG_ERROR.to_ne_bytes());
        bytes.extend((NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        bytes.extend(5u32.to_ne_bytes());
        bytes.extend(0u32.to_ne_bytes());
        bytes.extend(payload);
        let mut out = Vec::new();

        let reply = parse_datagram(&bytes, 5, &mut out).expect("parses");

        assert_eq!(
            reply,
            Reply::Error {
                errno: libc::EINVAL,
                message: Some("VF out of range".into())
            }
        );
    }

    #[test]
    fn test_kernel_error_reads_clearly() {
        let e = NetlinkError::Kernel {
            ifname: "eth1".into(),
            vf: Some(3),
            action: "setting VF 3 VLAN 5".into(),
            errno: libc::EOPNOTSUPP,
            message: None,
        };
        let s = e.to_string();
        assert!(
            s.starts_with("setting VF 3 VLAN 5 on eth1: EOPNOTSUPP"),
            "{s}"
        );
        assert!(s.contains("does not support"), "{s}");
        assert_eq!(e.errno(), Some(libc::EOPNOTSUPP));

        let e = NetlinkError::Kernel {
            ifname: "nope0".into(),
            vf: None,
            action: "reading the VF settings".into(),
            errno: libc::ENODEV,
            message: None,
        };
        assert!(
            e.to_string().contains("no network interface named nope0"),
            "{e}"
        );
        assert_eq!(crate::errno::name(libc::EPERM), "EPERM");
        assert_eq!(crate::errno::name(4242), "errno 4242");
    }

    #[test]
    fn test_validate_refuses_out_of_range_values() {
        let cases = [
            (
                VfChange {
                    vlan: Some(5000),
                    ..Default::default()
                },
                "VF 3 VLAN 5000 on eth1",
            ),
            (
                VfChange {
                    qos: Some(8),
                    ..Default::default()
                },
                "VF 3 qos 8 on eth1",
            ),
            (
                VfChange {
                    mac: Some(mac("01:00:5e:00:00:01")),
                    ..Default::default()
                },
                "VF 3 MAC 01:00:5e:00:00:01 on eth1",
            ),
            (
                VfChange {
                    max_tx_rate: Some(100),
                    min_tx_rate: Some(200),
                    ..Default::default()
                },
                "VF 3 min_tx_rate 200 Mbit/s on eth1",
            ),
        ];
        for (change, text) in cases {
            let err = change.validate("eth1", 3).expect_err(text);
            assert!(
                matches!(err, NetlinkError::InvalidValue { vf: 3, .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains(text), "{err}");
        }
        let ok = VfChange {
            max_tx_rate: Some(0),
            min_tx_rate: Some(200),
            vlan: Some(MAX_VLAN),
            qos: Some(MAX_QOS),
            ..Default::default()
        };
        ok.validate("eth1", 3).expect("valid");
        VfChange::reset().validate("eth1", 3).expect("valid");
    }

    #[test]
    fn test_apply_vf_validates_before_any_request() {
        let nl = Netlink::open().expect("open a NETLINK_ROUTE socket");
        let vlan = VfChange {
            vlan: Some(4095),
            ..Default::default()
        };
        // No such interface, but validation comes first.
        let err = nl.apply_vf("acnl-none0", 0, &vlan).expect_err("invalid");
        assert!(
            matches!(err, NetlinkError::InvalidValue { field: "VLAN", .. }),
            "{err:?}"
        );
        let err = nl.set_vf("acnl-none0", 0, &vlan).expect_err("invalid");
        assert!(
            matches!(err, NetlinkError::InvalidValue { field: "VLAN", .. }),
            "{err:?}"
        );

        for bad in ["", "much-too-long-name0", "a/b", "a b", ".."] {
            let err = nl.vf_infos(bad).expect_err(bad);
            assert!(matches!(err, NetlinkError::InvalidName { .. }), "{err:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
            let err = nl.apply_vf(bad, 0, &VfChange::reset()).expect_err(bad);
            assert!(matches!(err, NetlinkError::InvalidName { .. }), "{err:?}");
        }
    }

    #[test]
    fn test_reset_and_display() {
        let r = VfChange::reset();
        assert_eq!(r.mac, Some(MacAddr::ZERO));
        assert_eq!(r.spoof_check, Some(true));
        assert_eq!(r.trust, Some(false));
        assert!(!r.is_empty() && VfChange::default().is_empty());
        assert_eq!(
            r.to_string(),
            "MAC 00:00:00:00:00:00, VLAN 0 qos 0, spoof check on, trust off, \
             max_tx_rate 0 Mbit/s, min_tx_rate 0 Mbit/s, link state auto"
        );
        assert_eq!(VfChange::default().to_string(), "nothing");
    }

    #[test]
    fn test_mismatch_ignores_unreported_values() {
        let change = VfChange {
            vlan: Some(5),
            trust: Some(true),
            ..Default::default()
        };
        let got = VfInfo {
            vlan: Some(5),
            qos: Some(0),
            trust: None,
            ..Default::default()
        };
        assert_eq!(mismatch(&change, &got), None);
        let got = VfInfo {
            vlan: Some(0),
            ..got
        };
        assert_eq!(
            mismatch(&change, &got),
            Some(("VLAN", "5".to_string(), "0".to_string()))
        );
        let change = VfChange {
            mac: Some(mac("02:00:00:00:00:01")),
            ..Default::default()
        };
        let got = VfInfo {
            mac: Some("00:00:00:00:00:00".into()),
            ..Default::default()
        };
        assert_eq!(
            mismatch(&change, &got).map(|m| m.0),
            Some("MAC"),
            "a MAC that did not stick"
        );
    }

    #[test]
    fn test_satisfied_needs_every_value_reported_and_equal() {
        let info = VfInfo {
            mac: Some("00:00:00:00:00:00".into()),
            vlan: Some(0),
            qos: Some(0),
            spoof_check: Some(true),
            trust: Some(false),
            max_tx_rate: Some(0),
            min_tx_rate: Some(0),
            link_state: Some(VfLinkState::Auto),
        };
        assert!(satisfied(&VfChange::reset(), &info));
        let link = VfChange {
            link_state: Some(VfLinkState::Auto),
            ..VfChange::default()
        };
        assert!(satisfied(&link, &info));
        let enable = VfChange {
            link_state: Some(VfLinkState::Enable),
            ..VfChange::default()
        };
        assert!(!satisfied(&enable, &info));
        // Unreported: must be sent.
        let unknown = VfInfo {
            trust: None,
            ..info.clone()
        };
        assert!(!satisfied(&VfChange::reset(), &unknown));
        // A VLAN without qos means qos 0.
        let vlan = VfChange {
            vlan: Some(0),
            ..VfChange::default()
        };
        assert!(!satisfied(
            &vlan,
            &VfInfo {
                qos: Some(3),
                ..info
            }
        ));
    }

    #[test]
    fn test_restore_uses_previous_values() {
        let before = expected_two_vfs()[&0].clone();
        assert_eq!(
            Field::Vlan.restore(&before),
            Some(VfChange {
                vlan: Some(100),
                qos: Some(3),
                ..Default::default()
            })
        );
        assert_eq!(
            Field::Rate.restore(&before),
            Some(VfChange {
                max_tx_rate: Some(1000),
                min_tx_rate: Some(10),
                ..Default::default()
            })
        );
        assert_eq!(Field::Trust.restore(&expected_two_vfs()[&1]), None);
    }
}
