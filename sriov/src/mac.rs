//! Ethernet MAC addresses in the `aa:bb:cc:dd:ee:ff` form the kernel and `ip` print.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit Ethernet MAC address.
///
/// Parses from exactly six colon-separated pairs of hex digits (either case), prints
/// in lowercase colon form, and serializes as that string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `00:00:00:00:00:00`: for a VF, "no administrative MAC" (the pool's reset value).
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// Whether every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// Whether the group bit (the low bit of the first byte) is set: a multicast or
    /// broadcast address, which no NIC accepts as a station address.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The six bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A string that is not a MAC address in `aa:bb:cc:dd:ee:ff` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?}: expected six colon-separated pairs of hex digits, e.g. 02:00:00:00:00:01")]
pub struct ParseMacError {
    /// The rejected input.
    pub input: String,
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError {
            input: s.to_string(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parse_accepts_either_case_and_prints_lowercase() {
        let m: MacAddr = "02:AB:cd:0E:f0:01".parse().expect("valid");
        assert_eq!(m, MacAddr([0x02, 0xab, 0xcd, 0x0e, 0xf0, 0x01]));
        assert_eq!(m.to_string(), "02:ab:cd:0e:f0:01");
    }

    #[test]
    fn test_parse_rejects_malformed_input_naming_it() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02-00-00-00-00-01",
            "2:00:00:00:00:01",
            "002:00:00:00:00:01",
            "02:00:00:00:00:0g",
            "02:00:00:00:00:01:",
            " 02:00:00:00:00:01",
            "+2:00:00:00:00:01",
            "0200.0000.0001",
        ] {
            let err = bad.parse::<MacAddr>().expect_err(bad);
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn test_zero_and_multicast() {
        assert!(MacAddr::ZERO.is_zero());
        assert!(!MacAddr::ZERO.is_multicast());
        assert_eq!(MacAddr::ZERO.to_string(), "00:00:00:00:00:00");
        let bcast: MacAddr = "ff:ff:ff:ff:ff:ff".parse().expect("valid");
        assert!(bcast.is_multicast());
        let mcast: MacAddr = "01:00:5e:00:00:01".parse().expect("valid");
        assert!(mcast.is_multicast() && !mcast.is_zero());
        let local: MacAddr = "02:00:00:00:00:01".parse().expect("valid");
        assert!(!local.is_multicast() && !local.is_zero());
    }

    #[test]
    fn test_serde_round_trips_as_string() {
        let m = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let json = serde_json::to_string(&m).expect("serialize");
        assert_eq!(json, "\"52:54:00:12:34:56\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).expect("parse"), m);
        let err = serde_json::from_str::<MacAddr>("\"nope\"").expect_err("invalid");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
