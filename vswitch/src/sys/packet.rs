//! AF_PACKET socket with TPACKET_V3 rings (being written).
