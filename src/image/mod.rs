//! The unikernel image: an untrusted ELF file, checked as Solo5 does
//! (and a little stricter), then placed into guest memory.
//!
//! Parsing ([`Image::parse`]) needs no KVM and no guest memory, so it is
//! what `skiff hook` validates and what the fuzzers drive.

mod elf;
mod manifest;
mod notes;

pub use elf::{Segment, PAGE_SIZE};
pub use manifest::{Device, DeviceKind, Manifest, ManifestError};

use crate::memory::{Gpa, GuestMemory};
use std::path::Path;
use thiserror::Error;

/// Why an image was refused. Each message names the problem.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("cannot open: {0}")]
    Open(std::io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error("not an ELF file (bad magic)")]
    NotElf,
    #[error("truncated ELF: the file ends inside {0}")]
    Truncated(&'static str),
    #[error("unsupported ELF: {0}")]
    Unsupported(&'static str),
    #[error("invalid executable: {0}")]
    Invalid(String),
    #[error("no Solo5 ABI1 note found: not a Solo5 unikernel")]
    NoAbiNote,
    #[error("the image is for the Solo5 {0} target, not hvt")]
    WrongTarget(&'static str),
    #[error("the image requests unsupported ABI version {0} (skiff serves version 2)")]
    WrongAbiVersion(u32),
    #[error("no Solo5 manifest (MFT1 note) found")]
    NoManifest,
    #[error("invalid Solo5 manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("the image does not fit in guest memory: {0}")]
    TooBig(String),
}

/// A parsed, validated image: what the loader needs, borrowed from the file.
#[derive(Debug)]
pub struct Image<'a> {
    pub entry: u64,
    /// Loadable segments, ascending and non-overlapping.
    pub segments: Vec<Segment<'a>>,
    /// End of the highest segment, aligned up to its `p_align`.
    pub kernel_end: u64,
    pub manifest: Manifest,
    /// The ABI1 note marks the guest a function (`ABI_FLAG_FUNCTION`): its
    /// console is a log, never part of its response.
    pub function: bool,
}

/// The most an image may ask skiff to read: the largest guest memory
/// (`--mem` is at most 4 GiB), since every loaded byte must fit in it.
pub const MAX_IMAGE_BYTES: u64 = 4 << 30;

/// Reads an image file for a guest of up to 4 GiB ([`read_file_for`]).
pub fn read_file(path: &Path) -> Result<Vec<u8>, ImageError> {
    read_file_for(path, MAX_IMAGE_BYTES)
}

/// Reads what an image file's headers name, for a guest of `mem_size`
/// bytes: see [`read_open_for`]. The file is opened non-blocking, so a
/// FIFO or a device is refused at once instead of waiting for a writer.
pub fn read_file_for(path: &Path, mem_size: u64) -> Result<Vec<u8>, ImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(ImageError::Open)?;
    read_open_for(f, mem_size)
}

/// [`read_file`] for a file already open (`skiff hook` opens it inside the
/// container's rootfs).
pub fn read_open(f: std::fs::File) -> Result<Vec<u8>, ImageError> {
    read_open_for(f, MAX_IMAGE_BYTES)
}

/// Reads an image from its header onwards, never the whole file first:
/// anything but a regular file is refused, then the ELF magic is checked
/// on the first bytes, then only the ranges the program headers name are
/// read (the ELF header, the program header table, each segment's and
/// note's bytes) into a buffer whose other pages are never touched, so
/// debug sections and trailing bytes cost neither time nor memory. The
/// loadable bytes must fit in `mem_size`. Uses fstat and pread only:
/// `File::metadata` calls statx, which urunc's outer seccomp filter
/// forbids.
pub fn read_open_for(f: std::fs::File, mem_size: u64) -> Result<Vec<u8>, ImageError> {
    use std::os::fd::AsRawFd;
    // SAFETY: fstat on our open fd into a zeroed, properly sized struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` is a valid out-pointer.
    if unsafe { libc::fstat(f.as_raw_fd(), &mut st) } != 0 {
        return Err(ImageError::Open(std::io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(ImageError::NotAFile);
    }
    let size = st.st_size as u64;
    let mut head = [0u8; elf::EHDR_SIZE];
    let got = pread(&f, &mut head, 0)?;
    if got < 4 || head[..4] != *b"\x7fELF" {
        return Err(ImageError::NotElf);
    }
    let ranges = elf::ranges(&head[..got], |buf, off| pread(&f, buf, off))?;
    let loadable: u64 = ranges
        .iter()
        .filter(|r| r.load)
        .fold(0u64, |sum, r| sum.saturating_add(r.len));
    if loadable > mem_size.min(MAX_IMAGE_BYTES) {
        return Err(ImageError::TooBig(format!(
            "its segments hold {loadable} bytes, more than guest memory ({} bytes)",
            mem_size.min(MAX_IMAGE_BYTES)
        )));
    }
    // The buffer spans what the ranges reach, cut at the end of the file
    // (the parser then reports what is truncated). Zeroed allocations this
    // large come straight from mmap: unread pages stay unbacked.
    let reach = ranges
        .iter()
        .map(|r| r.off.saturating_add(r.len))
        .fold(got as u64, u64::max)
        .min(size);
    if reach > MAX_IMAGE_BYTES {
        return Err(ImageError::TooBig(format!(
            "its headers name bytes up to offset {reach}, past the {MAX_IMAGE_BYTES} bytes skiff reads of an image"
        )));
    }
    let mut buf = vec![0u8; reach as usize];
    for r in &ranges {
        let end = r.off.saturating_add(r.len).min(reach);
        if r.off < end {
            pread(&f, &mut buf[r.off as usize..end as usize], r.off)?;
        }
    }
    Ok(buf)
}

/// Fills `buf` from `off` (short only at the end of the file).
fn pread(f: &std::fs::File, buf: &mut [u8], off: u64) -> Result<usize, ImageError> {
    use std::os::unix::fs::FileExt;
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ImageError::Open(e)),
        }
    }
    Ok(got)
}

impl<'a> Image<'a> {
    /// Validates the ELF header, notes, manifest and segments of `bytes`
    /// for a guest of `mem_size` bytes.
    pub fn parse(bytes: &'a [u8], mem_size: u64) -> Result<Self, ImageError> {
        let elf = elf::Elf::parse(bytes)?;
        let flags = notes::check_abi(&elf)?;
        let manifest = Manifest::parse(notes::manifest_desc(&elf)?)?;
        let (segments, kernel_end) = elf.segments(mem_size)?;
        if elf.entry < crate::memory::KERNEL_BASE || elf.entry >= mem_size {
            return Err(ImageError::Invalid(format!(
                "entry point 0x{:x} is outside guest memory [0x100000, 0x{mem_size:x})",
                elf.entry
            )));
        }
        Ok(Self {
            entry: elf.entry,
            segments,
            kernel_end,
            manifest,
            function: flags & guest_abi::elf::ABI_FLAG_FUNCTION != 0,
        })
    }

    /// Copies the segments' file bytes into guest memory. Memory is fresh
    /// and zeroed, so `.bss` costs nothing: its pages are never touched.
    pub fn load(&self, mem: &GuestMemory) -> Result<(), ImageError> {
        for s in &self.segments {
            mem.write_bytes(s.data, Gpa(s.addr))
                .map_err(|e| ImageError::TooBig(e.to_string()))?;
        }
        Ok(())
    }
}
