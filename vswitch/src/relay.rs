//! A control-plane relay between a vhost-user frontend and the port's daemon.
//!
//! QEMU (7.2 and later) sends `SET_VRING_ENABLE` as soon as GET_FEATURES offered
//! `VHOST_USER_F_PROTOCOL_FEATURES`, before any `SET_FEATURES`; DPDK's backend takes
//! it, but the `vhost` crate's dispatcher refuses it until the bit was acked with
//! SET_FEATURES and closes the connection. The relay passes every message through
//! unchanged (descriptors included) and, when SET_VRING_ENABLE comes first, acks
//! PROTOCOL_FEATURES to the daemon just before it, which is what the frontend
//! already assumes. Kick and call eventfds go straight from the frontend to the
//! daemon, so the data path never crosses the relay.
//!
//! The relay also frames every message, so a peer sending garbage or vanishing in
//! the middle of a message is recognised here and reported as such.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::{FrontendReq, VhostUserHeaderFlag, MAX_MSG_SIZE};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::sys::scm::recv_with_fds;

/// vhost-user message header: request, flags, payload size (all u32, little endian).
const HDR_LEN: usize = 12;
const REQ_SET_FEATURES: u32 = 2;
const REQ_SET_VRING_ENABLE: u32 = 18;
/// Protocol version 1 in the flags' low bits; no reply requested.
const FLAGS_VERSION_1: u32 = 0x1;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// How a relayed connection ended.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The peer sent something that is not a vhost-user message.
    #[error("malformed vhost-user message: {0}")]
    Malformed(String),
    /// The peer closed the connection in the middle of a message.
    #[error("peer disconnected in the middle of a message")]
    Truncated,
    /// Reading or writing a socket failed.
    #[error("relay I/O failed")]
    Io(#[source] io::Error),
}

/// One framed message with the descriptors that came with it.
struct Message {
    hdr: [u8; HDR_LEN],
    payload: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes([self.hdr[0], self.hdr[1], self.hdr[2], self.hdr[3]])
    }

    fn send(&self, to: &UnixStream) -> io::Result<()> {
        let raw: Vec<RawFd> = self.fds.iter().map(AsRawFd::as_raw_fd).collect();
        let sent = to.send_with_fds(&[&self.hdr[..], &self.payload[..]], &raw)?;
        // The descriptors went with the first bytes; finish a short write plainly.
        let mut w = to;
        if sent < HDR_LEN {
            w.write_all(&self.hdr[sent..])?;
        }
        w.write_all(&self.payload[sent.saturating_sub(HDR_LEN)..])
    }
}

/// Reads one message; `Ok(None)` on a clean end of stream between messages.
fn read_message(from: &UnixStream) -> Result<Option<Message>, RelayError> {
    let mut hdr = [0u8; HDR_LEN];
    let (n, fds) = recv_with_fds(from, &mut hdr).map_err(RelayError::Io)?;
    if n == 0 {
        return Ok(None);
    }
    let mut got = n;
    let mut r = from;
    while got < HDR_LEN {
        match r.read(&mut hdr[got..]) {
            Ok(0) => return Err(RelayError::Truncated),
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(RelayError::Io(e)),
        }
    }
    // The daemon's own header check (known request, version 1, size, flags): a bad
    // header is refused before waiting for a body that may never come.
    let req = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    let size = u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) as usize;
    let valid = FrontendReq::try_from(req).is_ok()
        && size <= MAX_MSG_SIZE
        && flags & VhostUserHeaderFlag::VERSION.bits() == 0x1
        && flags & VhostUserHeaderFlag::RESERVED_BITS.bits() == 0;
    if !valid {
        return Err(RelayError::Malformed(format!(
            "request {req}, flags {flags:#x}, {size}-byte payload"
        )));
    }
    let mut payload = vec![0u8; size];
    r.read_exact(&mut payload).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => RelayError::Truncated,
        _ => RelayError::Io(e),
    })?;
    Ok(Some(Message { hdr, payload, fds }))
}

/// Relays frontend -> daemon until either side closes; applies the SET_VRING_ENABLE
/// fix. Returns how the frontend's side ended.
pub fn frontend_to_daemon(frontend: &UnixStream, daemon: &UnixStream) -> Result<(), RelayError> {
    let mut features_set = false;
    let result = loop {
        let msg = match read_message(frontend) {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match msg.request() {
            REQ_SET_FEATURES => features_set = true,
            REQ_SET_VRING_ENABLE if !features_set => {
                let mut hdr = [0u8; HDR_LEN];
                hdr[0..4].copy_from_slice(&REQ_SET_FEATURES.to_le_bytes());
                hdr[4..8].copy_from_slice(&FLAGS_VERSION_1.to_le_bytes());
                hdr[8..12].copy_from_slice(&8u32.to_le_bytes());
                let ack = Message {
                    hdr,
                    payload: VHOST_USER_F_PROTOCOL_FEATURES.to_le_bytes().to_vec(),
                    fds: Vec::new(),
                };
                if let Err(e) = ack.send(daemon) {
                    break Err(RelayError::Io(e));
                }
                features_set = true;
            }
            _ => {}
        }
        if let Err(e) = msg.send(daemon) {
            // The daemon closed (it rejected a request): not the frontend's framing.
            break if e.kind() == io::ErrorKind::BrokenPipe {
                Ok(())
            } else {
                Err(RelayError::Io(e))
            };
        }
    };
    let _ = daemon.shutdown(Shutdown::Both);
    let _ = frontend.shutdown(Shutdown::Both);
    result
}

/// Relays daemon -> frontend (replies) until either side closes.
pub fn daemon_to_frontend(daemon: &UnixStream, frontend: &UnixStream) {
    while let Ok(Some(msg)) = read_message(daemon) {
        if msg.send(frontend).is_err() {
            break;
        }
    }
    let _ = frontend.shutdown(Shutdown::Both);
    let _ = daemon.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(req: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&req.to_le_bytes());
        v.extend_from_slice(&FLAGS_VERSION_1.to_le_bytes());
        v.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn run(input: &[u8]) -> (Result<(), RelayError>, Vec<u8>) {
        let (mut fe_peer, fe) = UnixStream::pair().unwrap();
        let (da, mut da_peer) = UnixStream::pair().unwrap();
        fe_peer.write_all(input).unwrap();
        fe_peer.shutdown(Shutdown::Write).unwrap();
        let r = frontend_to_daemon(&fe, &da);
        let mut out = Vec::new();
        da_peer.read_to_end(&mut out).unwrap();
        (r, out)
    }

    #[test]
    fn test_relay_injects_features_before_early_vring_enable() {
        let enable = msg(REQ_SET_VRING_ENABLE, &[0, 0, 0, 0, 0, 0, 0, 0]);
        let (r, out) = run(&enable);
        r.unwrap();
        let mut want = msg(
            REQ_SET_FEATURES,
            &VHOST_USER_F_PROTOCOL_FEATURES.to_le_bytes(),
        );
        want.extend_from_slice(&enable);
        assert_eq!(out, want);
    }

    #[test]
    fn test_relay_passes_ordered_session_unchanged() {
        let mut input = msg(REQ_SET_FEATURES, &(1u64 << 30 | 1 << 32).to_le_bytes());
        input.extend(msg(REQ_SET_VRING_ENABLE, &[1, 0, 0, 0, 1, 0, 0, 0]));
        input.extend(msg(1, &[]));
        let (r, out) = run(&input);
        r.unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn test_relay_rejects_oversized_and_truncated_messages() {
        let mut bad = msg(1, &[]);
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(run(&bad).0, Err(RelayError::Malformed(_))));
        let half = &msg(REQ_SET_FEATURES, &[0; 8])[..6];
        assert!(matches!(run(half).0, Err(RelayError::Truncated)));
        let short_payload = &msg(REQ_SET_FEATURES, &[0; 8])[..15];
        assert!(matches!(run(short_payload).0, Err(RelayError::Truncated)));
    }

    #[test]
    fn test_relay_forwards_descriptors() {
        let (fe_peer, fe) = UnixStream::pair().unwrap();
        let (da, da_peer) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        fe_peer
            .send_with_fds(&[&msg(5, &[0; 8])[..]], &[file.as_raw_fd()])
            .unwrap();
        fe_peer.shutdown(Shutdown::Write).unwrap();
        frontend_to_daemon(&fe, &da).unwrap();
        let mut buf = [0u8; HDR_LEN + 8];
        let (n, fds) = recv_with_fds(&da_peer, &mut buf).unwrap();
        assert!(n > 0);
        assert_eq!(fds.len(), 1, "the descriptor travelled with the message");
    }
}
