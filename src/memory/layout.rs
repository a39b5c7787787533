//! The hvt boot layout in low guest memory: GDT, page tables, boot info,
//! manifest copy and command line, as Solo5's tender lays them out.
//!
//! Only what the guest needs is written: a handful of pages whatever the
//! memory size. Entries are user-accessible (U=1): harmless for a CPL0
//! guest without SMEP/SMAP, and required where kvm_pvm runs the guest
//! natively in hardware ring 3 (see vcpu/pvm.rs). Entries carry pre-set accessed/dirty bits so the guest's
//! first walks do not write them back (each such write is an exit under
//! shadow paging).

use super::{Gpa, GuestMemory, OutOfRange};
use guest_abi::hvt::{BootInfo, BOOT_INFO_BASE, CMDLINE_SIZE};
use guest_abi::manifest::{MftEntry, MftHeader};

pub const GDT_BASE: u64 = 0x1000;
pub const PML4_BASE: u64 = 0x2000;
pub const PDPT_BASE: u64 = 0x3000;
pub const PD_BASE: u64 = 0x4000;
pub const PT_BASE: u64 = 0x8000;
/// The guest's CR3 until it loads page tables of its own.
pub const BOOT_CR3: u64 = PML4_BASE;
/// Lowest address the guest may load at; below it is the tender's.
pub const KERNEL_BASE: u64 = guest_abi::hvt::KERNEL_BASE;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const HUGE: u64 = 1 << 7;
const TABLE: u64 = PRESENT | WRITABLE | USER | ACCESSED;
const MIB2: u64 = 2 << 20;

/// GDT selectors: null, code, data.
pub const BOOT_GDT_SELECTORS: (u16, u16) = (0x08, 0x10);
/// code: type 9 (execute, accessed), S, P, L, G; data: type 3, S, P, DB, G.
const GDT: [u64; 3] = [0, 0x00af_9900_0000_ffff, 0x00cf_9300_0000_ffff];

/// Where the loader put things, for the vCPU's initial state.
#[derive(Debug, Clone, Copy)]
pub struct BootState {
    pub entry: u64,
    pub stack: u64,
    pub boot_info: u64,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub cr3: u64,
}

/// Writes GDT, page tables, boot info, manifest copy and command line.
pub fn write_boot_state(
    mem: &GuestMemory,
    entry: u64,
    kernel_end: u64,
    tsc_hz: u64,
    host_features: u32,
    manifest: &[MftEntry],
    cmdline: &[u8],
) -> Result<BootState, OutOfRange> {
    let size = mem.size();
    for (i, d) in GDT.iter().enumerate() {
        mem.write_obj(*d, Gpa(GDT_BASE + 8 * i as u64))?;
    }

    // PML4[0] -> PDPT; PDPT[0..4] -> the four page directories.
    mem.write_obj(PDPT_BASE | TABLE, Gpa(PML4_BASE))?;
    for i in 0..4u64 {
        mem.write_obj((PD_BASE + i * 0x1000) | TABLE, Gpa(PDPT_BASE + 8 * i))?;
    }
    // The first 2 MiB through 4 KiB pages: nothing below the boot info,
    // the boot area read-only, the kernel area writable.
    mem.write_obj(PT_BASE | TABLE, Gpa(PD_BASE))?;
    let mut pt = [0u64; 512];
    for (i, e) in pt.iter_mut().enumerate() {
        let addr = i as u64 * 0x1000;
        if addr >= KERNEL_BASE {
            *e = addr | PRESENT | WRITABLE | USER | ACCESSED | DIRTY;
        } else if addr >= BOOT_INFO_BASE {
            *e = addr | PRESENT | USER | ACCESSED;
        }
    }
    mem.slice_mut(Gpa(PT_BASE), 4096)?.copy_from(&pt);
    // The rest in 2 MiB pages, only as far as memory goes.
    let pages = size / MIB2;
    let mut pd = [0u64; 2048];
    for (i, e) in pd.iter_mut().enumerate().take(pages as usize).skip(1) {
        *e = (i as u64 * MIB2) | PRESENT | WRITABLE | USER | ACCESSED | DIRTY | HUGE;
    }
    if pages > 1 {
        let bytes = pages * 8 - 8;
        mem.slice_mut(Gpa(PD_BASE + 8), bytes)?
            .copy_from(&pd[1..pages as usize]);
    }

    // Boot info, then the manifest copy, then the command line.
    let mft_gpa = BOOT_INFO_BASE + std::mem::size_of::<BootInfo>() as u64;
    let header = MftHeader {
        version: guest_abi::manifest::MFT_VERSION,
        entries: manifest.len() as u32,
    };
    mem.write_obj(header, Gpa(mft_gpa))?;
    let entries_gpa = mft_gpa + std::mem::size_of::<MftHeader>() as u64;
    mem.slice_mut(Gpa(entries_gpa), std::mem::size_of_val(manifest) as u64)?
        .copy_from(manifest);
    let cmdline_gpa = entries_gpa + std::mem::size_of_val(manifest) as u64;
    let n = cmdline.len().min(CMDLINE_SIZE - 1);
    mem.write_bytes(&cmdline[..n], Gpa(cmdline_gpa))?;
    mem.write_obj(0u8, Gpa(cmdline_gpa + n as u64))?;

    let bi = BootInfo {
        mem_size: size,
        kernel_end,
        cpu_cycle_freq: tsc_hz,
        cmdline: cmdline_gpa,
        mft: mft_gpa,
        host_features,
        guest_features: 0,
        net_ring: 0,
    };
    mem.write_obj(bi, Gpa(BOOT_INFO_BASE))?;
    Ok(BootState {
        entry,
        stack: size - 8,
        boot_info: BOOT_INFO_BASE,
        gdt_base: GDT_BASE,
        gdt_limit: (GDT.len() * 8 - 1) as u16,
        cr3: BOOT_CR3,
    })
}
