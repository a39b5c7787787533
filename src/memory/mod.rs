//! Guest memory: one anonymous mapping at guest-physical 0, and the one
//! checked accessor through which every guest address is reached.
//!
//! The mapping is `MAP_NORESERVE` and never pre-touched: the host only
//! pays for the pages the loader or the guest actually use, so start-up
//! does no work proportional to `--mem`.

mod dirty;
mod layout;

pub use dirty::{HostDirty, HostWrites, Reader};

pub use layout::{write_boot_state, BootState, BOOT_CR3, BOOT_GDT_SELECTORS, KERNEL_BASE};

use thiserror::Error;
use vm_memory::{
    bitmap::BitmapSlice, ByteValued, Bytes, MmapRegion, VolatileMemory, VolatileSlice,
};

/// A guest-physical address. It cannot be dereferenced; it only becomes
/// host memory through [`GuestMemory::slice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Gpa(pub u64);

/// A guest range that lies outside guest memory (or overflows).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error(
    "guest range 0x{addr:x}+0x{len:x} lies outside guest memory (0x{size:x} bytes) or is read-only"
)]
pub struct OutOfRange {
    pub addr: u64,
    pub len: u64,
    pub size: u64,
}

/// Why guest memory could not be set up.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// mmap of guest memory failed.
    #[error("cannot map {0} bytes of guest memory: {1}")]
    Map(u64, vm_memory::mmap::MmapRegionError),
}

/// The guest's memory, mapped into skiff.
#[derive(Debug)]
pub struct GuestMemory {
    region: MmapRegion<()>,
    size: u64,
    /// Ranges mapped read-only in the host (the image's text and rodata),
    /// so a guest write there faults instead of succeeding; host-side
    /// writes refuse them rather than crash on them.
    read_only: Vec<(u64, u64)>,
    /// skiff's own writes into guest memory while a migration tracks
    /// them (KVM's dirty log sees only the guest's).
    host_dirty: HostDirty,
}

impl GuestMemory {
    /// Reserves `size` bytes of zeroed, lazily allocated memory.
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        let len = usize::try_from(size).expect("64-bit host");
        let region = vm_memory::mmap::MmapRegionBuilder::new(len)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryError::Map(size, e))?;
        Ok(Self {
            region,
            size,
            read_only: Vec::new(),
            host_dirty: HostDirty::default(),
        })
    }

    /// Guest memory size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host address of guest-physical 0, for KVM_SET_USER_MEMORY_REGION.
    pub fn host_base(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// Checks `[addr, addr+len)` against guest memory with overflow-safe
    /// arithmetic; the one place where a guest range is validated.
    pub fn check(&self, addr: Gpa, len: u64) -> Result<(), OutOfRange> {
        match addr.0.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(OutOfRange {
                addr: addr.0,
                len,
                size: self.size,
            }),
        }
    }

    /// Makes `[start, end)` (page-aligned, inside memory) read-only for the
    /// guest and for skiff's own writes.
    pub fn protect(&mut self, start: u64, end: u64) -> std::io::Result<()> {
        if !start.is_multiple_of(4096)
            || !end.is_multiple_of(4096)
            || start >= end
            || end > self.size
        {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        // SAFETY: the range lies inside our own mapping (checked above);
        // nothing in skiff holds a reference into it.
        let r = unsafe {
            libc::mprotect(
                self.host_base().add(start as usize).cast(),
                (end - start) as usize,
                libc::PROT_READ,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.read_only.push((start, end));
        Ok(())
    }

    /// Writes `bytes` at `addr` even where the range is read-only (text,
    /// rodata): for a debugger's breakpoints and memory edits only. Such
    /// pages are made writable for the copy and read-only again after it.
    pub fn poke(&self, bytes: &[u8], addr: Gpa) -> Result<(), OutOfRange> {
        let len = bytes.len() as u64;
        let s = self.slice(addr, len)?;
        let end = addr.0 + len;
        let ro: Vec<(u64, u64)> = self
            .read_only
            .iter()
            .filter(|&&(a, b)| addr.0 < b && a < end)
            .map(|&(a, b)| (a.max(addr.0 & !4095), b.min(end.next_multiple_of(4096))))
            .collect();
        let prot = |prot| {
            for &(a, b) in &ro {
                // SAFETY: [a, b) is page-aligned and inside our own mapping
                // (a sub-range of a protected range); no reference into it
                // is held across the call.
                let r = unsafe {
                    libc::mprotect(
                        self.host_base().add(a as usize).cast(),
                        (b - a) as usize,
                        prot,
                    )
                };
                if r != 0 {
                    return false;
                }
            }
            true
        };
        let refused = OutOfRange {
            addr: addr.0,
            len,
            size: self.size,
        };
        if !prot(libc::PROT_READ | libc::PROT_WRITE) {
            return Err(refused);
        }
        s.copy_from(bytes);
        if !prot(libc::PROT_READ) {
            return Err(refused);
        }
        Ok(())
    }

    /// Drops every page of guest memory, as if it had just been reserved:
    /// one MAP_FIXED anonymous mapping over the whole reservation, so the
    /// pages a guest wrote (and the file mappings of a restore) are gone at
    /// once and the next access sees zeroes. KVM's memory slot keeps the
    /// same host address; its MMU notifier drops the old translations. For
    /// a worker putting a snapshot's guest back (snapshot/rewind.rs).
    pub fn discard(&mut self) -> std::io::Result<()> {
        // SAFETY: replaces our own reservation, same address and length,
        // with a fresh one; nothing in skiff holds a reference into guest
        // memory between runs.
        let p = unsafe {
            libc::mmap(
                self.host_base().cast(),
                self.size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        self.read_only.clear();
        Ok(())
    }

    /// Starts (`on`, from a clean bitmap) or stops recording which pages
    /// skiff itself writes (a migration's pre-copy); see [`HostDirty`].
    pub fn track_host_writes(&self, on: bool) -> HostWrites {
        self.host_dirty.track(self.size, on)
    }

    /// A reader of guest memory another thread can hold while the vCPU
    /// runs (a migration's pre-copy).
    ///
    /// # Safety
    /// The reader must not be used after this memory is dropped or
    /// discarded: the caller joins every thread holding it before then.
    pub unsafe fn reader(&self) -> Reader {
        Reader::new(self.host_base(), self.size)
    }

    /// The read-only ranges (for snapshots).
    pub fn read_only(&self) -> &[(u64, u64)] {
        &self.read_only
    }

    /// Like [`GuestMemory::slice`], for writing: refuses read-only ranges.
    pub fn slice_mut(
        &self,
        addr: Gpa,
        len: u64,
    ) -> Result<VolatileSlice<'_, impl BitmapSlice>, OutOfRange> {
        let s = self.slice(addr, len)?;
        let end = addr.0 + len;
        if self.read_only.iter().any(|&(a, b)| addr.0 < b && a < end) {
            return Err(OutOfRange {
                addr: addr.0,
                len,
                size: self.size,
            });
        }
        self.host_dirty.mark(addr.0, len);
        Ok(s)
    }

    /// The checked accessor: a volatile view of `[addr, addr+len)`.
    pub fn slice(
        &self,
        addr: Gpa,
        len: u64,
    ) -> Result<VolatileSlice<'_, impl BitmapSlice>, OutOfRange> {
        self.check(addr, len)?;
        // Both fit in usize: they are bounded by `size`, which is mapped.
        self.region
            .get_slice(addr.0 as usize, len as usize)
            .map_err(|_| OutOfRange {
                addr: addr.0,
                len,
                size: self.size,
            })
    }

    /// Copies a plain-data struct out of guest memory.
    pub fn read_obj<T: ByteValued>(&self, addr: Gpa) -> Result<T, OutOfRange> {
        let len = std::mem::size_of::<T>() as u64;
        self.slice(addr, len)?.read_obj(0).map_err(|_| OutOfRange {
            addr: addr.0,
            len,
            size: self.size,
        })
    }

    /// Copies a plain-data struct into guest memory.
    pub fn write_obj<T: ByteValued>(&self, val: T, addr: Gpa) -> Result<(), OutOfRange> {
        let len = std::mem::size_of::<T>() as u64;
        self.slice_mut(addr, len)?
            .write_obj(val, 0)
            .map_err(|_| OutOfRange {
                addr: addr.0,
                len,
                size: self.size,
            })
    }

    /// Copies host bytes into guest memory.
    pub fn write_bytes(&self, bytes: &[u8], addr: Gpa) -> Result<(), OutOfRange> {
        let s = self.slice_mut(addr, bytes.len() as u64)?;
        s.copy_from(bytes);
        Ok(())
    }

    /// Copies guest bytes into a host buffer.
    pub fn read_bytes(&self, buf: &mut [u8], addr: Gpa) -> Result<(), OutOfRange> {
        let s = self.slice(addr, buf.len() as u64)?;
        s.copy_to(buf);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_checked_without_overflow() {
        let m = GuestMemory::new(2 << 20).unwrap();
        assert!(m.check(Gpa(0), 2 << 20).is_ok());
        assert!(m.check(Gpa(1), 2 << 20).is_err());
        assert!(m.check(Gpa(u64::MAX), 2).is_err());
        assert!(m.check(Gpa(16), u64::MAX).is_err());
        assert!(m.slice(Gpa((2 << 20) - 8), 8).is_ok());
        assert!(m.read_obj::<u64>(Gpa((2 << 20) - 4)).is_err());
        m.write_obj(0x1122_3344_5566_7788u64, Gpa(0x1000)).unwrap();
        assert_eq!(
            m.read_obj::<u64>(Gpa(0x1000)).unwrap(),
            0x1122_3344_5566_7788
        );
    }
}
