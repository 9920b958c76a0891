//! PCI configuration space parsing (capabilities: SR-IOV, ACS, PCIe, MSI-X).
//!
//! [`PciConfig::parse`] reads the bytes of a device's sysfs `config` file. The kernel
//! gives root the whole space (4096 bytes for PCI Express devices, 256 for
//! conventional ones) and other readers only the first 64 bytes, so a short buffer is
//! normal: the standard capability list needs 256 bytes, the extended capabilities
//! (SR-IOV, ACS) need more than 256; what cannot be seen is reported as unknown
//! ([`PciConfig::extended`] is `None`), never guessed.
//!
//! Parsing never panics: every pointer is checked against the buffer, masked to
//! dword alignment, and the list walks are bounded (a looping list ends the walk).

use serde::Serialize;

/// Standard capability id of the PCI Express capability.
pub const CAP_ID_PCIE: u8 = 0x10;
/// Standard capability id of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Extended capability id of Access Control Services.
pub const EXT_CAP_ID_ACS: u16 = 0x000d;
/// Extended capability id of Single Root I/O Virtualization.
pub const EXT_CAP_ID_SRIOV: u16 = 0x0010;

/// ACS capability/control bit: Source Validation.
pub const ACS_SV: u16 = 0x0001;
/// ACS capability/control bit: Translation Blocking.
pub const ACS_TB: u16 = 0x0002;
/// ACS capability/control bit: P2P Request Redirect.
pub const ACS_RR: u16 = 0x0004;
/// ACS capability/control bit: P2P Completion Redirect.
pub const ACS_CR: u16 = 0x0008;
/// ACS capability/control bit: Upstream Forwarding.
pub const ACS_UF: u16 = 0x0010;
/// ACS capability/control bit: P2P Egress Control.
pub const ACS_EC: u16 = 0x0020;
/// ACS capability/control bit: Direct Translated P2P.
pub const ACS_DT: u16 = 0x0040;
/// The ACS features Linux requires of a port to isolate the devices below it
/// (the kernel's `REQ_ACS_FLAGS`): SV, RR, CR and UF.
pub const ACS_REQUIRED: u16 = ACS_SV | ACS_RR | ACS_CR | ACS_UF;

/// Size of the standard (conventional PCI) configuration space.
const STD_SIZE: usize = 256;
/// Size of the whole PCI Express configuration space.
const EXT_SIZE: usize = 4096;
/// The minimum a caller must hand over: the common header.
const HEADER_SIZE: usize = 64;

/// Why a configuration space could not be parsed at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Fewer bytes than the 64-byte header.
    #[error("PCI config space too short: {0} bytes, need at least 64")]
    TooShort(usize),
    /// Vendor id 0xffff: the device is absent or its config space unreadable.
    #[error("PCI config space reads all ones (device absent)")]
    Absent,
}

/// The PCI Express device/port type (PCIe capabilities register, bits 7:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PciePortType {
    /// PCI Express endpoint (0).
    Endpoint,
    /// Legacy PCI Express endpoint (1).
    LegacyEndpoint,
    /// Root port of a root complex (4).
    RootPort,
    /// Upstream port of a switch (5).
    UpstreamPort,
    /// Downstream port of a switch (6).
    DownstreamPort,
    /// PCI Express to PCI/PCI-X bridge (7).
    PcieToPciBridge,
    /// PCI/PCI-X to PCI Express bridge (8).
    PciToPcieBridge,
    /// Root complex integrated endpoint (9).
    RcIntegratedEndpoint,
    /// Root complex event collector (10).
    RcEventCollector,
    /// A reserved value.
    Other(u8),
}

impl PciePortType {
    /// The type from its 4-bit encoding.
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0xf {
            0 => PciePortType::Endpoint,
            1 => PciePortType::LegacyEndpoint,
            4 => PciePortType::RootPort,
            5 => PciePortType::UpstreamPort,
            6 => PciePortType::DownstreamPort,
            7 => PciePortType::PcieToPciBridge,
            8 => PciePortType::PciToPcieBridge,
            9 => PciePortType::RcIntegratedEndpoint,
            10 => PciePortType::RcEventCollector,
            n => PciePortType::Other(n),
        }
    }

    /// Whether this is a root port or a switch downstream port: the ports whose
    /// ACS decides whether the devices below them are isolated from each other.
    pub fn is_downstream(self) -> bool {
        matches!(self, PciePortType::RootPort | PciePortType::DownstreamPort)
    }
}

/// One entry of a capability list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CapEntry {
    /// Capability id (8 bits for standard, 16 for extended capabilities).
    pub id: u16,
    /// Capability version (extended capabilities; 0 for standard ones).
    pub version: u8,
    /// Offset of the capability in the configuration space.
    pub offset: u16,
}

/// The PCI Express capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PcieCap {
    /// Offset of the capability.
    pub offset: u16,
    /// Capability version (bits 3:0).
    pub version: u8,
    /// Device/port type (bits 7:4).
    pub port_type: PciePortType,
}

/// The MSI-X capability: how many interrupt vectors the function can have.
///
/// A VF's queue pairs each need a vector, so the table size bounds them whatever
/// driver the VF is bound to (`vfio-pci` included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MsixCap {
    /// Offset of the capability.
    pub offset: u16,
    /// Number of MSI-X table entries (Message Control bits 10:0, plus one).
    pub table_size: u16,
}

/// The SR-IOV extended capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SriovCap {
    /// Offset of the capability.
    pub offset: u16,
    /// SR-IOV control register (bit 0: VF Enable).
    pub control: u16,
    /// InitialVFs.
    pub initial_vfs: u16,
    /// TotalVFs.
    pub total_vfs: u16,
    /// NumVFs.
    pub num_vfs: u16,
    /// First VF Offset (routing id offset of VF 1 from the PF).
    pub first_vf_offset: u16,
    /// VF Stride (routing id distance between consecutive VFs).
    pub vf_stride: u16,
    /// VF Device ID.
    pub vf_device_id: u16,
}

impl SriovCap {
    /// Whether VF Enable is set.
    pub fn vf_enabled(&self) -> bool {
        self.control & 1 != 0
    }
}

/// The ACS extended capability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AcsCap {
    /// Offset of the capability.
    pub offset: u16,
    /// ACS capability register (which features the port implements; `ACS_*`).
    pub capability: u16,
    /// ACS control register (which features are enabled; `ACS_*`).
    pub control: u16,
}

impl AcsCap {
    /// Source Validation implemented.
    pub fn source_validation(&self) -> bool {
        self.capability & ACS_SV != 0
    }
    /// Translation Blocking implemented.
    pub fn translation_blocking(&self) -> bool {
        self.capability & ACS_TB != 0
    }
    /// P2P Request Redirect implemented.
    pub fn p2p_request_redirect(&self) -> bool {
        self.capability & ACS_RR != 0
    }
    /// P2P Completion Redirect implemented.
    pub fn p2p_completion_redirect(&self) -> bool {
        self.capability & ACS_CR != 0
    }
    /// Upstream Forwarding implemented.
    pub fn upstream_forwarding(&self) -> bool {
        self.capability & ACS_UF != 0
    }
    /// Which of [`ACS_REQUIRED`] the port does not implement (0: none missing).
    pub fn missing_required(&self) -> u16 {
        ACS_REQUIRED & !self.capability
    }
    /// Which of [`ACS_REQUIRED`] the port implements but has not enabled.
    pub fn disabled_required(&self) -> u16 {
        ACS_REQUIRED & self.capability & !self.control
    }
}

/// Names of the set `ACS_*` bits, e.g. `"SV RR"`.
pub fn acs_bits_names(bits: u16) -> String {
    let names = [
        (ACS_SV, "SV"),
        (ACS_TB, "TB"),
        (ACS_RR, "RR"),
        (ACS_CR, "CR"),
        (ACS_UF, "UF"),
        (ACS_EC, "EC"),
        (ACS_DT, "DT"),
    ];
    names
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A parsed configuration space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciConfig {
    /// How many bytes were parsed.
    pub len: usize,
    /// Vendor id (0x00).
    pub vendor_id: u16,
    /// Device id (0x02).
    pub device_id: u16,
    /// Class code (0x09..0x0b), e.g. 0x020000 for an Ethernet controller.
    pub class: u32,
    /// Header layout (0x0e, bits 6:0): 0 endpoint, 1 PCI-to-PCI bridge, 2 CardBus.
    pub header_type: u8,
    /// Multi-function device (0x0e, bit 7).
    pub multi_function: bool,
    /// Secondary and subordinate bus numbers (0x19, 0x1a) of a type 1 header.
    pub bridge_buses: Option<(u8, u8)>,
    /// Standard capabilities; `None` when the buffer is too short (under 256
    /// bytes) to walk the list.
    pub capabilities: Option<Vec<CapEntry>>,
    /// The PCI Express capability, if found.
    pub pcie: Option<PcieCap>,
    /// The MSI-X capability, if found.
    pub msix: Option<MsixCap>,
    /// Extended capabilities; `None` when unknown (a buffer of 256 bytes or less,
    /// e.g. read by a non-root user).
    pub extended: Option<Vec<CapEntry>>,
    /// The SR-IOV capability, if found.
    pub sriov: Option<SriovCap>,
    /// The ACS capability, if found.
    pub acs: Option<AcsCap>,
}

fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl PciConfig {
    /// Parses the bytes of a `config` file (at most 4096 are looked at).
    pub fn parse(bytes: &[u8]) -> Result<PciConfig, ConfigError> {
        if bytes.len() < HEADER_SIZE {
            return Err(ConfigError::TooShort(bytes.len()));
        }
        let b = &bytes[..bytes.len().min(EXT_SIZE)];
        let vendor_id = u16_at(b, 0).unwrap_or(0xffff);
        if vendor_id == 0xffff {
            return Err(ConfigError::Absent);
        }
        let device_id = u16_at(b, 2).unwrap_or(0);
        let class = u32_at(b, 8).unwrap_or(0) >> 8;
        let ht = u8_at(b, 0x0e).unwrap_or(0);
        let header_type = ht & 0x7f;
        let bridge_buses = if header_type == 1 {
            Some((u8_at(b, 0x19).unwrap_or(0), u8_at(b, 0x1a).unwrap_or(0)))
        } else {
            None
        };
        let mut cfg = PciConfig {
            len: b.len(),
            vendor_id,
            device_id,
            class,
            header_type,
            multi_function: ht & 0x80 != 0,
            bridge_buses,
            capabilities: None,
            pcie: None,
            msix: None,
            extended: None,
            sriov: None,
            acs: None,
        };
        if b.len() >= STD_SIZE {
            let caps = standard_caps(b);
            cfg.pcie = caps
                .iter()
                .find(|c| c.id == u16::from(CAP_ID_PCIE))
                .map(|c| {
                    let reg = u16_at(b, usize::from(c.offset) + 2).unwrap_or(0);
                    PcieCap {
                        offset: c.offset,
                        version: (reg & 0xf) as u8,
                        port_type: PciePortType::from_bits(((reg >> 4) & 0xf) as u8),
                    }
                });
            cfg.msix = caps
                .iter()
                .find(|c| c.id == u16::from(CAP_ID_MSIX))
                .and_then(|c| {
                    let control = u16_at(b, usize::from(c.offset) + 2)?;
                    Some(MsixCap {
                        offset: c.offset,
                        table_size: (control & 0x7ff) + 1,
                    })
                });
            cfg.capabilities = Some(caps);
        }
        if b.len() > STD_SIZE {
            let ext = extended_caps(b);
            cfg.sriov = ext
                .iter()
                .find(|c| c.id == EXT_CAP_ID_SRIOV)
                .and_then(|c| sriov_at(b, c.offset));
            cfg.acs = ext
                .iter()
                .find(|c| c.id == EXT_CAP_ID_ACS)
                .and_then(|c| acs_at(b, c.offset));
            cfg.extended = Some(ext);
        }
        Ok(cfg)
    }

    /// Whether the extended capabilities could be read (the buffer covered them).
    pub fn extended_known(&self) -> bool {
        self.extended.is_some()
    }

    /// Whether this is a PCI-to-PCI bridge (type 1 header).
    pub fn is_bridge(&self) -> bool {
        self.header_type == 1
    }
}

/// Walks the standard capability list from 0x34 (only if the status register says
/// there is one). At most 48 entries: 192 bytes of dwords past the header.
fn standard_caps(b: &[u8]) -> Vec<CapEntry> {
    let mut caps = Vec::new();
    let status = u16_at(b, 0x06).unwrap_or(0);
    if status & 0x10 == 0 {
        return caps;
    }
    let mut ptr = usize::from(u8_at(b, 0x34).unwrap_or(0) & 0xfc);
    let mut seen = [false; STD_SIZE / 4];
    for _ in 0..48 {
        if !(HEADER_SIZE..STD_SIZE).contains(&ptr) || seen[ptr / 4] {
            break;
        }
        seen[ptr / 4] = true;
        let (Some(id), Some(next)) = (u8_at(b, ptr), u8_at(b, ptr + 1)) else {
            break;
        };
        if id == 0xff {
            break;
        }
        caps.push(CapEntry {
            id: u16::from(id),
            version: 0,
            offset: ptr as u16,
        });
        ptr = usize::from(next & 0xfc);
    }
    caps
}

/// Walks the extended capability list from 0x100. At most 960 entries (the dwords
/// of 0x100..0x1000); a header of 0 or all ones means no (more) capabilities.
fn extended_caps(b: &[u8]) -> Vec<CapEntry> {
    let mut caps = Vec::new();
    let mut ptr = STD_SIZE;
    let mut seen = vec![false; EXT_SIZE / 4];
    for _ in 0..(EXT_SIZE - STD_SIZE) / 4 {
        if !(STD_SIZE..EXT_SIZE).contains(&ptr) || seen[ptr / 4] {
            break;
        }
        seen[ptr / 4] = true;
        let Some(header) = u32_at(b, ptr) else {
            break;
        };
        if header == 0 || header == 0xffff_ffff {
            break;
        }
        caps.push(CapEntry {
            id: (header & 0xffff) as u16,
            version: ((header >> 16) & 0xf) as u8,
            offset: ptr as u16,
        });
        ptr = ((header >> 20) & 0xffc) as usize;
    }
    caps
}

fn sriov_at(b: &[u8], offset: u16) -> Option<SriovCap> {
    let o = usize::from(offset);
    Some(SriovCap {
        offset,
        control: u16_at(b, o + 0x08)?,
        initial_vfs: u16_at(b, o + 0x0c)?,
        total_vfs: u16_at(b, o + 0x0e)?,
        num_vfs: u16_at(b, o + 0x10)?,
        first_vf_offset: u16_at(b, o + 0x14)?,
        vf_stride: u16_at(b, o + 0x16)?,
        vf_device_id: u16_at(b, o + 0x1a)?,
    })
}

fn acs_at(b: &[u8], offset: u16) -> Option<AcsCap> {
    let o = usize::from(offset);
    Some(AcsCap {
        offset,
        capability: u16_at(b, o + 0x04)?,
        control: u16_at(b, o + 0x06)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::ConfigBuilder;

    /// A hand-assembled endpoint: PCIe cap at 0x40 (endpoint), SR-IOV at 0x100,
    /// ACS at 0x140.
    fn hand_built() -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..2].copy_from_slice(&0x8086u16.to_le_bytes());
        b[2..4].copy_from_slice(&0x10c9u16.to_le_bytes());
        b[6] = 0x10; // status: capability list
        b[0x09..0x0c].copy_from_slice(&[0x00, 0x00, 0x02]); // class 0x020000
        b[0x0e] = 0x80; // type 0, multi-function
        b[0x34] = 0x40;
        b[0x40] = 0x10; // PCIe
        b[0x41] = 0x00;
        b[0x42] = 0x02; // version 2, endpoint
                        // SR-IOV: id 0x10, version 1, next 0x140
        b[0x100..0x104].copy_from_slice(&(0x0010u32 | 1 << 16 | 0x140 << 20).to_le_bytes());
        b[0x10e..0x110].copy_from_slice(&8u16.to_le_bytes()); // TotalVFs
        b[0x110..0x112].copy_from_slice(&2u16.to_le_bytes()); // NumVFs
        b[0x114..0x116].copy_from_slice(&0x180u16.to_le_bytes()); // offset
        b[0x116..0x118].copy_from_slice(&2u16.to_le_bytes()); // stride
        b[0x11a..0x11c].copy_from_slice(&0x10cau16.to_le_bytes()); // VF device
                                                                   // ACS: id 0xd, version 1, end of list
        b[0x140..0x144].copy_from_slice(&(0x000du32 | 1 << 16).to_le_bytes());
        b[0x144..0x146].copy_from_slice(&0x001fu16.to_le_bytes());
        b[0x146..0x148].copy_from_slice(&0x001du16.to_le_bytes());
        b
    }

    #[test]
    fn test_parse_hand_built_endpoint() {
        let cfg = PciConfig::parse(&hand_built()).expect("parses");
        assert_eq!((cfg.vendor_id, cfg.device_id), (0x8086, 0x10c9));
        assert_eq!(cfg.class, 0x020000);
        assert_eq!(cfg.header_type, 0);
        assert!(cfg.multi_function);
        assert_eq!(cfg.bridge_buses, None);
        let pcie = cfg.pcie.expect("PCIe cap");
        assert_eq!(pcie.offset, 0x40);
        assert_eq!(pcie.port_type, PciePortType::Endpoint);
        let ext: Vec<u16> = cfg
            .extended
            .as_ref()
            .expect("known")
            .iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(ext, [EXT_CAP_ID_SRIOV, EXT_CAP_ID_ACS]);
        let sriov = cfg.sriov.expect("SR-IOV");
        assert_eq!(
            (
                sriov.total_vfs,
                sriov.num_vfs,
                sriov.first_vf_offset,
                sriov.vf_stride,
                sriov.vf_device_id
            ),
            (8, 2, 0x180, 2, 0x10ca)
        );
        let acs = cfg.acs.expect("ACS");
        assert!(acs.source_validation());
        assert!(acs.translation_blocking());
        assert!(acs.p2p_request_redirect());
        assert!(acs.p2p_completion_redirect());
        assert!(acs.upstream_forwarding());
        assert_eq!(acs.missing_required(), 0);
        assert_eq!(acs.disabled_required(), 0);
    }

    #[test]
    fn test_parse_bridge_with_builder() {
        let bytes = ConfigBuilder::bridge(0x8086, 0x2f08, 0x3b, 0x3c)
            .pcie(PciePortType::RootPort)
            .acs(ACS_SV | ACS_RR | ACS_CR, ACS_SV)
            .build();
        let cfg = PciConfig::parse(&bytes).expect("parses");
        assert!(cfg.is_bridge());
        assert_eq!(cfg.bridge_buses, Some((0x3b, 0x3c)));
        assert_eq!(cfg.pcie.map(|p| p.port_type), Some(PciePortType::RootPort));
        let acs = cfg.acs.expect("ACS");
        assert_eq!(acs.missing_required(), ACS_UF);
        assert_eq!(acs.disabled_required(), ACS_RR | ACS_CR);
        assert_eq!(acs_bits_names(acs.missing_required()), "UF");
        assert_eq!(cfg.sriov, None);
    }

    #[test]
    fn test_msix_table_size_after_pcie_cap() {
        let bytes = ConfigBuilder::endpoint(0x8086, 0x1889)
            .pcie(PciePortType::Endpoint)
            .msix(5)
            .build();
        let cfg = PciConfig::parse(&bytes).expect("parses");
        let msix = cfg.msix.expect("MSI-X cap");
        assert_eq!(msix.table_size, 5);
        assert!(msix.offset > 0x40, "after the PCIe cap: {:#x}", msix.offset);
        // The largest table the 11-bit field can say.
        let big = ConfigBuilder::endpoint(0x15b3, 0x101e).msix(2048).build();
        assert_eq!(
            PciConfig::parse(&big)
                .expect("parses")
                .msix
                .map(|m| m.table_size),
            Some(2048)
        );
        // Without the capability, or with only the 64-byte header readable: unknown.
        let none = ConfigBuilder::endpoint(0x8086, 0x1889)
            .pcie(PciePortType::Endpoint)
            .build();
        assert_eq!(PciConfig::parse(&none).expect("parses").msix, None);
        assert_eq!(PciConfig::parse(&bytes[..64]).expect("parses").msix, None);
    }

    #[test]
    fn test_truncated_config_has_unknown_extended_caps() {
        let full = hand_built();
        for len in [64, 100, 256] {
            let cfg = PciConfig::parse(&full[..len]).expect("parses");
            assert!(!cfg.extended_known(), "{len} bytes");
            assert_eq!(cfg.sriov, None);
            assert_eq!(cfg.acs, None);
        }
        let cfg = PciConfig::parse(&full[..64]).expect("parses");
        assert_eq!(
            cfg.capabilities, None,
            "64 bytes: standard caps unknown too"
        );
        let cfg = PciConfig::parse(&full[..256]).expect("parses");
        assert!(cfg.pcie.is_some());
        // An ext cap cut in the middle is dropped, not misread.
        let cfg = PciConfig::parse(&full[..0x108]).expect("parses");
        assert!(cfg.extended_known());
        assert_eq!(cfg.sriov, None);
    }

    #[test]
    fn test_too_short_and_absent() {
        assert_eq!(PciConfig::parse(&[0; 10]), Err(ConfigError::TooShort(10)));
        assert_eq!(PciConfig::parse(&[0xff; 256]), Err(ConfigError::Absent));
    }

    #[test]
    fn test_looping_lists_terminate() {
        let mut b = hand_built();
        b[0x41] = 0x40; // standard cap points at itself
        b[0x140..0x144].copy_from_slice(&(0x000du32 | 0x100 << 20).to_le_bytes()); // back to SR-IOV
        let cfg = PciConfig::parse(&b).expect("parses");
        assert_eq!(cfg.capabilities.map(|c| c.len()), Some(1));
        assert_eq!(cfg.extended.map(|c| c.len()), Some(2));
    }

    #[test]
    fn test_no_capability_list_bit() {
        let mut b = hand_built();
        b[6] = 0;
        let cfg = PciConfig::parse(&b).expect("parses");
        assert_eq!(cfg.capabilities, Some(Vec::new()));
        assert_eq!(cfg.pcie, None);
    }

    #[test]
    fn test_garbage_config_never_panics() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let len = [0, 63, 64, 65, 255, 256, 257, 300, 4095, 4096, 5000][round % 11];
            let mut b = vec![0u8; len];
            for x in &mut b {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *x = (state >> 24) as u8;
            }
            if len > 6 && round % 2 == 0 {
                b[6] |= 0x10;
            }
            if let Ok(cfg) = PciConfig::parse(&b) {
                assert!(cfg.capabilities.as_ref().map_or(0, Vec::len) <= 48);
                assert!(cfg.extended.as_ref().map_or(0, Vec::len) <= 960);
            }
        }
    }
}
