//! Uplink ports over AF_PACKET TPACKET_V3 (being written).
