//! Guest-virtual to guest-physical translation by walking the guest's own
//! 4-level page tables in guest memory: gdb and core files speak in the
//! addresses the guest's symbols have. Every table read goes through the
//! checked accessor, so a hostile CR3 or table can only yield "unmapped".

use crate::memory::{Gpa, GuestMemory};

const PRESENT: u64 = 1 << 0;
const HUGE: u64 = 1 << 7;
/// Bits 12..52 of an entry: the next table's (or the page's) address.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// One mapped stretch: `len` bytes at guest-virtual `gva` are the bytes at
/// guest-physical `gpa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub gva: u64,
    pub gpa: u64,
    pub len: u64,
}

/// The canonical form of a 48-bit virtual address (bit 47 sign-extended).
fn canonical(va: u64) -> u64 {
    (((va << 16) as i64) >> 16) as u64
}

fn entry(mem: &GuestMemory, table: u64, index: u64) -> Option<u64> {
    let e: u64 = mem.read_obj(Gpa((table & ADDR_MASK) + index * 8)).ok()?;
    (e & PRESENT != 0).then_some(e)
}

/// The guest-physical address of `gva` under `cr3`, and how many bytes
/// from there on stay in the same page.
pub fn translate(mem: &GuestMemory, cr3: u64, gva: u64) -> Option<(u64, u64)> {
    if canonical(gva) != gva {
        return None;
    }
    let mut table = cr3;
    // Levels PML4 (shift 39), PDPT (30), PD (21), PT (12).
    for shift in [39u32, 30, 21, 12] {
        let e = entry(mem, table, (gva >> shift) & 511)?;
        if shift == 12 || (shift < 39 && e & HUGE != 0) {
            let size = 1u64 << shift;
            let off = gva & (size - 1);
            let base = e & ADDR_MASK & !(size - 1);
            return Some((base + off, size - off));
        }
        table = e;
    }
    None
}

/// Every present mapping under `cr3` whose physical page lies inside guest
/// memory, in virtual-address order, adjacent pages merged.
pub fn mappings(mem: &GuestMemory, cr3: u64) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    walk(mem, cr3, 39, 0, &mut out);
    out
}

fn walk(mem: &GuestMemory, table: u64, shift: u32, va: u64, out: &mut Vec<Mapping>) {
    for i in 0..512u64 {
        let Some(e) = entry(mem, table, i) else {
            continue;
        };
        let gva = canonical(va | (i << shift));
        if shift == 12 || (shift < 39 && e & HUGE != 0) {
            let len = 1u64 << shift;
            let gpa = e & ADDR_MASK & !(len - 1);
            if mem.check(Gpa(gpa), len).is_err() {
                continue;
            }
            match out.last_mut() {
                Some(m) if m.gva + m.len == gva && m.gpa + m.len == gpa => m.len += len,
                _ => out.push(Mapping { gva, gpa, len }),
            }
        } else {
            walk(mem, e, shift - 9, gva, out);
        }
    }
}

/// Reads guest-virtual memory into `buf`, page by page; `false` if any
/// byte is unmapped.
pub fn read_virt(mem: &GuestMemory, cr3: u64, gva: u64, buf: &mut [u8]) -> bool {
    let mut done = 0usize;
    while done < buf.len() {
        let Some(va) = gva.checked_add(done as u64) else {
            return false;
        };
        let Some((gpa, room)) = translate(mem, cr3, va) else {
            return false;
        };
        let n = (buf.len() - done).min(room as usize);
        if mem.read_bytes(&mut buf[done..done + n], Gpa(gpa)).is_err() {
            return false;
        }
        done += n;
    }
    true
}

/// Writes `bytes` at guest-virtual `gva`, read-only pages included (see
/// [`GuestMemory::poke`]); `false` if any byte is unmapped.
pub fn write_virt(mem: &GuestMemory, cr3: u64, gva: u64, bytes: &[u8]) -> bool {
    let mut done = 0usize;
    while done < bytes.len() {
        let Some(va) = gva.checked_add(done as u64) else {
            return false;
        };
        let Some((gpa, room)) = translate(mem, cr3, va) else {
            return false;
        };
        let n = (bytes.len() - done).min(room as usize);
        if mem.poke(&bytes[done..done + n], Gpa(gpa)).is_err() {
            return false;
        }
        done += n;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// skiff's own boot tables: identity map, 4 KiB pages in the first
    /// 2 MiB (none below the boot info), 2 MiB pages above.
    fn booted(size: u64) -> (GuestMemory, u64) {
        let mem = GuestMemory::new(size).unwrap();
        let b = crate::memory::write_boot_state(&mem, 0x100000, 0x200000, 1, 0, &[], b"").unwrap();
        (mem, b.cr3)
    }

    #[test]
    fn boot_tables_map_identity() {
        let (mem, cr3) = booted(8 * MIB);
        assert_eq!(translate(&mem, cr3, 0x100123), Some((0x100123, 0xedd)));
        assert_eq!(
            translate(&mem, cr3, 0x400010),
            Some((0x400010, 2 * MIB - 0x10))
        );
        // Below the boot info nothing is mapped; above memory neither.
        assert_eq!(translate(&mem, cr3, 0x1000), None);
        assert_eq!(translate(&mem, cr3, 8 * MIB), None);
        // Non-canonical addresses never translate.
        assert_eq!(translate(&mem, cr3, 1 << 47), None);
    }

    #[test]
    fn mappings_merge_and_stay_inside_memory() {
        let (mem, cr3) = booted(8 * MIB);
        let maps = mappings(&mem, cr3);
        assert_eq!(maps.len(), 1, "{maps:x?}");
        let m = maps[0];
        assert_eq!(m.gva, m.gpa);
        assert_eq!(m.gva + m.len, 8 * MIB);
        assert!(m.gva >= 0x1000 && m.gva < 0x100000);
    }

    #[test]
    fn a_hostile_table_cannot_reach_outside_memory() {
        let (mem, _) = booted(4 * MIB);
        // CR3 pointing past memory, and a PML4 entry pointing past it.
        assert_eq!(translate(&mem, 1 << 40, 0x100000), None);
        let pml4 = 0x300000u64;
        mem.write_obj((1u64 << 40) | PRESENT, Gpa(pml4)).unwrap();
        assert_eq!(translate(&mem, pml4, 0), None);
        assert!(mappings(&mem, pml4).is_empty());
        // A huge page whose frame lies beyond memory is left out.
        let pdpt = 0x301000u64;
        mem.write_obj(pdpt | PRESENT, Gpa(pml4)).unwrap();
        mem.write_obj((64 << 30) | PRESENT | HUGE, Gpa(pdpt))
            .unwrap();
        assert!(mappings(&mem, pml4).is_empty());
    }

    #[test]
    fn virtual_reads_and_writes_cross_pages() {
        let (mem, cr3) = booted(8 * MIB);
        let data: Vec<u8> = (0..64u8).collect();
        assert!(write_virt(&mem, cr3, 0x1fffe0, &data));
        let mut back = [0u8; 64];
        assert!(read_virt(&mem, cr3, 0x1fffe0, &mut back));
        assert_eq!(&back[..], &data[..]);
        assert!(!read_virt(&mem, cr3, 8 * MIB - 8, &mut back));
    }

    #[test]
    fn poke_writes_through_read_only_pages() {
        let (mut mem, cr3) = booted(8 * MIB);
        mem.protect(0x100000, 0x102000).unwrap();
        assert!(mem.write_bytes(&[0xcc], Gpa(0x101000)).is_err());
        assert!(write_virt(&mem, cr3, 0x100fff, &[0xcc, 0xcc]));
        let mut b = [0u8; 2];
        assert!(read_virt(&mem, cr3, 0x100fff, &mut b));
        assert_eq!(b, [0xcc, 0xcc]);
        // Still read-only for everything else.
        assert!(mem.write_bytes(&[0], Gpa(0x101000)).is_err());
    }
}
