//! Receiving file descriptors passed with SCM_RIGHTS (vhost-user sends memory and
//! eventfds this way).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Most descriptors one vhost-user message carries (memory regions of SET_MEM_TABLE).
pub const MAX_FDS: usize = 32;

/// Reads up to `buf.len()` bytes and the descriptors attached to them. The returned
/// descriptors are owned: they are closed when dropped.
pub fn recv_with_fds(sock: &UnixStream, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec points at `buf`, which is exclusively borrowed for the call
    // and valid for writes of its whole length.
    let (n, nfds) = unsafe { sock.recv_with_fds(&mut iov, &mut raw) }?;
    let fds = raw[..nfds]
        .iter()
        // SAFETY: recvmsg just created these descriptors in this process; nothing
        // else owns them, so wrapping each in an OwnedFd exactly once is sound.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
        .collect();
    Ok((n, fds))
}
