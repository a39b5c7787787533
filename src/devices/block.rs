//! Block devices: `--block:NAME=PATH` and `--block-sector-size:NAME=N`,
//! the backing file, and BLOCK_READ/BLOCK_WRITE.
//!
//! I/O goes straight between the backing file and guest memory (pread and
//! pwrite on the checked slice, no bounce buffer). A write is acknowledged
//! only after pwrite has returned all of it, so the data is in the file
//! (the page cache) before the guest runs on: killing skiff loses nothing
//! the guest was told is written.

use super::{write_back, DeviceError, Stop};
use crate::hypercall::GuestFault;
use crate::memory::{Gpa, GuestMemory};
use guest_abi::hvt::{ret, HcBlock};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use thiserror::Error;

/// The default sector size, as solo5-hvt's.
pub const DEFAULT_SECTOR_SIZE: u16 = 512;

/// A bad `--block-sector-size` value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SectorSizeError {
    #[error("malformed block size '{0}'")]
    Malformed(String),
    #[error("block size {0}: Block size must be a multiple of 2 greater than or equal 512 (a power of two, at most 32768)")]
    Invalid(u64),
}

/// Parses a sector size: a power of two, 512 to 32768 (it is a u16 in the
/// manifest).
pub fn parse_sector_size(s: &str) -> Result<u16, SectorSizeError> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| SectorSizeError::Malformed(s.to_string()))?;
    if !(512..=32768).contains(&n) || !n.is_power_of_two() {
        return Err(SectorSizeError::Invalid(n));
    }
    Ok(n as u16)
}

/// A validated `--block` binding (no file opened yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    pub name: String,
    pub path: PathBuf,
    pub sector_size: u16,
}

/// Why a backing file could not be attached.
#[derive(Debug, Error)]
pub enum BlockAttachError {
    #[error("{name}: cannot open backing storage {path}: {err}")]
    Open {
        name: String,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("{name}: backing storage {path} is not a regular file")]
    NotFile { name: String, path: PathBuf },
    #[error(
        "{name}: Backing storage size must be block aligned ({block} bytes), not {size} bytes"
    )]
    Unaligned { name: String, size: u64, block: u16 },
    #[error("{name}: Backing storage must be at least 1 block ({block} bytes) in size")]
    TooSmall { name: String, block: u16 },
}

/// An attached block device.
#[derive(Debug)]
pub struct Block {
    file: File,
    capacity: u64,
    block_size: u64,
}

impl Block {
    /// Opens the backing file read-write and checks its size.
    pub fn open(spec: &BlockSpec) -> Result<Self, BlockAttachError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&spec.path)
            .map_err(|err| BlockAttachError::Open {
                name: spec.name.clone(),
                path: spec.path.clone(),
                err,
            })?;
        // fstat, not `metadata()`: std uses statx, which urunc's seccomp
        // filter does not allow.
        // SAFETY: an all-zero `stat` is a valid out-buffer for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `file` is open; `st` is a valid, writable stat buffer.
        if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
            return Err(BlockAttachError::Open {
                name: spec.name.clone(),
                path: spec.path.clone(),
                err: std::io::Error::last_os_error(),
            });
        }
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(BlockAttachError::NotFile {
                name: spec.name.clone(),
                path: spec.path.clone(),
            });
        }
        let size = st.st_size as u64;
        let block = spec.sector_size;
        if !size.is_multiple_of(u64::from(block)) {
            return Err(BlockAttachError::Unaligned {
                name: spec.name.clone(),
                size,
                block,
            });
        }
        if size == 0 {
            return Err(BlockAttachError::TooSmall {
                name: spec.name.clone(),
                block,
            });
        }
        Ok(Self {
            file,
            capacity: size,
            block_size: u64::from(block),
        })
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Block size in bytes.
    pub fn block_size(&self) -> u16 {
        self.block_size as u16
    }

    /// Whether `[offset, offset+len)` is whole blocks inside the device.
    fn valid(&self, offset: u64, len: u64) -> bool {
        offset.is_multiple_of(self.block_size)
            && len.is_multiple_of(self.block_size)
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= self.capacity)
    }
}

/// Which way a block request moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

/// The block devices of one guest, indexed by handle.
#[derive(Debug, Default)]
pub struct BlockDevices {
    by_handle: Vec<Option<Block>>,
}

impl BlockDevices {
    /// Adds `dev` as handle `handle`.
    pub fn insert(&mut self, handle: u64, dev: Block) {
        let i = handle as usize;
        if self.by_handle.len() <= i {
            self.by_handle.resize_with(i + 1, || None);
        }
        self.by_handle[i] = Some(dev);
    }

    /// fsync of every backing file: a guest stopped here for good (a
    /// snapshot, a migration) has its writes on storage.
    pub fn flush(&self) -> std::io::Result<()> {
        for b in self.by_handle.iter().flatten() {
            b.file.sync_all()?;
        }
        Ok(())
    }

    /// BLOCK_READ or BLOCK_WRITE.
    pub fn io(&self, mem: &GuestMemory, dir: Dir, arg: Gpa, mut req: HcBlock) -> Result<(), Stop> {
        let call = match dir {
            Dir::Read => "BLOCK_READ",
            Dir::Write => "BLOCK_WRITE",
        };
        req.ret = match self
            .by_handle
            .get(req.handle as usize)
            .and_then(Option::as_ref)
        {
            Some(dev) if dev.valid(req.offset, req.len) => {
                transfer(dev, mem, dir, call, &req)?;
                ret::OK
            }
            _ => ret::EINVAL,
        };
        Ok(write_back(mem, call, arg, req)?)
    }
}

/// Moves `req.len` bytes between the file at `req.offset` and guest
/// memory at `req.data`, looping over short transfers.
fn transfer(
    dev: &Block,
    mem: &GuestMemory,
    dir: Dir,
    call: &'static str,
    req: &HcBlock,
) -> Result<(), Stop> {
    let data = Gpa(req.data);
    let bad = |err| GuestFault::BadArgument { call, err };
    if dir == Dir::Read {
        // Reads land in guest memory: it must be writable there.
        mem.slice_mut(data, req.len).map_err(bad)?;
    }
    let slice = mem.slice(data, req.len).map_err(bad)?;
    let guard = slice.ptr_guard_mut();
    let base = guard.as_ptr();
    let fd = dev.file.as_raw_fd();
    let mut done = 0usize;
    let len = req.len as usize;
    while done < len {
        let off = (req.offset + done as u64) as libc::off_t;
        // SAFETY: `base..base+len` is the checked guest slice (writable for
        // reads), mapped for the life of `mem`; the kernel copies into or
        // out of it and the vCPU is stopped meanwhile.
        let n = unsafe {
            match dir {
                Dir::Read => libc::pread(fd, base.add(done).cast(), len - done, off),
                Dir::Write => libc::pwrite(fd, base.add(done).cast(), len - done, off),
            }
        };
        match n {
            n if n > 0 => done += n as usize,
            0 => {
                return Err(DeviceError::BlockShort {
                    call,
                    done: done as u64,
                    len: req.len,
                }
                .into())
            }
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(DeviceError::BlockIo { call, err }.into());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sector_sizes() {
        assert_eq!(parse_sector_size("512"), Ok(512));
        assert_eq!(parse_sector_size("4096"), Ok(4096));
        assert_eq!(parse_sector_size("32768"), Ok(32768));
        assert_eq!(parse_sector_size("256"), Err(SectorSizeError::Invalid(256)));
        assert_eq!(parse_sector_size("521"), Err(SectorSizeError::Invalid(521)));
        assert_eq!(
            parse_sector_size("65536"),
            Err(SectorSizeError::Invalid(65536))
        );
        assert!(matches!(
            parse_sector_size("x"),
            Err(SectorSizeError::Malformed(_))
        ));
    }

    #[test]
    fn ranges() {
        let dir = std::env::temp_dir().join(format!("skiff-blk-unit-{}", std::process::id()));
        std::fs::write(&dir, vec![0u8; 8192]).unwrap();
        let b = Block::open(&BlockSpec {
            name: "s".into(),
            path: dir.clone(),
            sector_size: 4096,
        })
        .unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert!(b.valid(0, 8192));
        assert!(b.valid(4096, 4096));
        assert!(b.valid(8192, 0));
        assert!(!b.valid(512, 4096));
        assert!(!b.valid(0, 512));
        assert!(!b.valid(4096, 8192));
        assert!(!b.valid(u64::MAX - 4095, 4096));
    }
}
