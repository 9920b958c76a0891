//! Anonymous shared memory files (`memfd_create`), used to back the guest memory of
//! the test frontend so that a backend in another process can map it too.
#![cfg(any(test, feature = "test-utils"))]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Creates an anonymous memory file called `name` (shown in `/proc/PID/fd`),
/// sized to `size` bytes and filled with zeroes. The file is close-on-exec.
pub fn memfd_create(name: &str, size: u64) -> io::Result<File> {
    let cname = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "memfd name contains NUL"))?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call; the
    // flags are a valid combination. The call has no other memory effects.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create, is open, and is owned by nothing
    // else; the OwnedFd takes sole ownership and closes it on drop.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let file = File::from(owned);
    file.set_len(size)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_memfd_create_sizes_file() {
        let f = memfd_create("accelnet-test", 1 << 20).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    }
}
