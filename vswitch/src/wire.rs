//! Ethernet framing: MAC addresses and the few header fields the switch reads.
//!
//! Frames come from guests, so every accessor works on a possibly short buffer and
//! reports what it could not read instead of panicking.

use std::fmt;
use std::str::FromStr;

/// Length of an Ethernet header without VLAN tag.
pub const ETH_HLEN: usize = 14;
/// Length of one 802.1Q tag.
pub const VLAN_TAG_LEN: usize = 4;
/// EtherType of an 802.1Q tagged frame.
pub const ETH_P_8021Q: u16 = 0x8100;
/// Highest usable VLAN id (4095 is reserved).
pub const VLAN_MAX: u16 = 4094;

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group (multicast or broadcast) address: the I/G bit of the first octet.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// All zeroes, never a valid source.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// The address as the low 48 bits of a u64 (network byte order).
    pub fn to_u64(self) -> u64 {
        let b = self.0;
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    /// Inverse of [`MacAddr::to_u64`]; the top 16 bits are ignored.
    pub fn from_u64(v: u64) -> Self {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Error parsing a MAC address from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six hex octets like 52:54:00:12:34:56")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The L2 header fields forwarding needs, read from the first bytes of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Header {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// VLAN id of the 802.1Q tag, if the frame carries one.
    pub vlan_tag: Option<u16>,
}

impl L2Header {
    /// Parses the header from `head`, which holds at least the first
    /// [`ETH_HLEN`] bytes of the frame (18 to see a VLAN tag). Returns `None`
    /// for a frame shorter than an Ethernet header.
    pub fn parse(head: &[u8]) -> Option<Self> {
        if head.len() < ETH_HLEN {
            return None;
        }
        let mut dst = [0u8; 6];
        let mut src = [0u8; 6];
        dst.copy_from_slice(&head[0..6]);
        src.copy_from_slice(&head[6..12]);
        let ethertype = u16::from_be_bytes([head[12], head[13]]);
        let vlan_tag = if ethertype == ETH_P_8021Q && head.len() >= ETH_HLEN + VLAN_TAG_LEN {
            Some(u16::from_be_bytes([head[14], head[15]]) & 0x0fff)
        } else {
            None
        };
        Some(L2Header {
            dst: MacAddr(dst),
            src: MacAddr(src),
            vlan_tag,
        })
    }
}

/// The 802.1Q tag bytes (TPID + TCI with priority 0) for `vlan`.
pub fn vlan_tag_bytes(vlan: u16) -> [u8; VLAN_TAG_LEN] {
    let tci = (vlan & 0x0fff).to_be_bytes();
    [0x81, 0x00, tci[0], tci[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_mac_parse_roundtrip_and_errors() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn test_l2_header_short_frame_is_none() {
        assert_eq!(L2Header::parse(&[0u8; 13]), None);
    }

    #[test]
    fn test_l2_header_reads_vlan_tag() {
        let mut f = [0u8; 18];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 1]);
        f[12..16].copy_from_slice(&vlan_tag_bytes(20));
        let h = L2Header::parse(&f).unwrap();
        assert!(h.dst.is_multicast());
        assert_eq!(h.vlan_tag, Some(20));
        assert_eq!(L2Header::parse(&f[..14]).unwrap().vlan_tag, None);
    }
}
