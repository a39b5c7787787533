//! Where the agent keeps what clients send as bytes (RegisterResource's
//! blobs): one anonymous memfd per blob, sealed once written.
//!
//! A memfd rather than a private temporary directory: it has no name any
//! other process can open, nothing is left on disk when the agent is
//! killed (a directory would need a cleaner), and it is freed with its
//! last fd (the resource's, or the connection's end). A plugin that needs
//! a path (dlopen for a client's library) opens `/proc/self/fd/N`.

use crate::vaccel::shm;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// One blob, written and sealed against any change.
#[derive(Debug)]
pub struct Stored {
    file: File,
    len: usize,
}

impl Stored {
    /// Copies `data` into a fresh memfd and seals it.
    pub fn new(data: &[u8]) -> io::Result<Self> {
        let mut file = File::from(shm::memfd(c"skiff-agent-blob")?);
        file.write_all(data)?;
        let seals =
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on our own memfd.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Stored {
            file,
            len: data.len(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A path to it, valid in this process while it lives.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Its bytes, copied out.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        v.try_reserve_exact(self.len)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        v.resize(self.len, 0);
        self.file.read_exact_at(&mut v, 0)?;
        Ok(v)
    }
}
