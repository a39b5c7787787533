//! What a migration needs of guest memory besides KVM's dirty log: the
//! pages skiff writes itself (hypercall results: block and net reads,
//! the clock, console info), which KVM does not log because they are not
//! the guest's writes; and a reader another thread may hold.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

const PAGE: u64 = 4096;

/// A bitmap of pages written through [`super::GuestMemory::slice_mut`]
/// while tracking is on. Off (the only state outside a migration), a
/// write costs one relaxed load.
#[derive(Debug, Default)]
pub struct HostDirty {
    on: AtomicBool,
    bits: OnceLock<HostWrites>,
}

/// The bitmap itself, for the thread that harvests it.
#[derive(Debug, Clone)]
pub struct HostWrites(Arc<[AtomicU64]>);

impl HostWrites {
    /// The pages written since the last call (KVM_GET_DIRTY_LOG's
    /// layout: bit `p % 64` of word `p / 64`), cleared.
    pub fn take(&self) -> Vec<u64> {
        self.0.iter().map(|w| w.swap(0, Ordering::SeqCst)).collect()
    }
}

impl HostDirty {
    fn words(size: u64) -> usize {
        size.div_ceil(PAGE * 64) as usize
    }

    pub(super) fn track(&self, size: u64, on: bool) -> HostWrites {
        let bits = self.bits.get_or_init(|| {
            HostWrites((0..Self::words(size)).map(|_| AtomicU64::new(0)).collect())
        });
        if on {
            bits.take();
        }
        self.on.store(on, Ordering::SeqCst);
        bits.clone()
    }

    /// Marks `[addr, addr+len)` (already checked against memory).
    #[inline(always)]
    pub(super) fn mark(&self, addr: u64, len: u64) {
        if !self.on.load(Ordering::Relaxed) || len == 0 {
            return;
        }
        if let Some(HostWrites(bits)) = self.bits.get() {
            for page in addr / PAGE..=(addr + len - 1) / PAGE {
                if let Some(w) = bits.get((page / 64) as usize) {
                    w.fetch_or(1 << (page % 64), Ordering::SeqCst);
                }
            }
        }
    }
}

/// Reads guest memory from any thread, as the guest may be writing it:
/// a volatile copy, like vm-memory's accessors (bytes may be torn; a
/// migration sends a page again once the dirty log says it changed).
#[derive(Debug, Clone, Copy)]
pub struct Reader {
    base: usize,
    size: u64,
}

impl Reader {
    pub(super) fn new(base: *mut u8, size: u64) -> Self {
        Reader {
            base: base as usize,
            size,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies `buf.len()` bytes from `gpa`; false when out of range.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        match gpa.checked_add(buf.len() as u64) {
            Some(end) if end <= self.size => {}
            _ => return false,
        }
        // SAFETY: the range lies inside the guest mapping (checked above),
        // which outlives this reader (`GuestMemory::reader`'s contract);
        // a volatile view makes no claim about concurrent guest writes.
        let s = unsafe {
            vm_memory::VolatileSlice::new((self.base + gpa as usize) as *mut u8, buf.len())
        };
        s.copy_to(buf);
        true
    }

    /// Which pages the host has backed (mincore): the rest are zero.
    /// `None` when the kernel cannot tell.
    pub fn resident(&self) -> Option<Vec<u8>> {
        let mut v = vec![0u8; (self.size / PAGE) as usize];
        // SAFETY: the range is the guest mapping; `v` has a byte per page.
        let r = unsafe {
            libc::mincore(
                self.base as *mut libc::c_void,
                self.size as usize,
                v.as_mut_ptr(),
            )
        };
        (r == 0).then_some(v)
    }
}
