//! Takes an exception on an IST stack, as Solo5's own guests do (they run
//! every trap on IST2 of a TSS in low memory). kvm_pvm refuses such stacks
//! in native mode; skiff must still deliver the exception (it falls back
//! to emulation for the rest of the run, see src/vcpu/pvm.rs), so this
//! guest ends with the runtime's trap line and status 255, not a triple
//! fault.
#![no_std]
#![no_main]

use core::arch::asm;
use core::mem::size_of;
use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main);

/// A 64-bit TSS: only the IST slots matter here.
#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
struct Stack([u8; 8192]);

static mut IST_STACK: Stack = Stack([0; 8192]);
static mut TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: size_of::<Tss>() as u16,
};
/// null, code (0x08), data (0x10), TSS (0x18, two slots).
static mut GDT: [u64; 5] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0, 0];

#[repr(C, packed)]
struct Dtr {
    limit: u16,
    base: u64,
}

fn main(_: &Ctx) -> i32 {
    // SAFETY: single-threaded set-up of our own static tables, then a GDT
    // reload that keeps the runtime's selectors (0x08 code, 0x10 data)
    // meaning the same flat segments; the IDT edit only sets the IST field
    // of the exception gates the runtime installed.
    unsafe {
        let stack_top = core::ptr::addr_of_mut!(IST_STACK) as u64 + 8192;
        let tss = core::ptr::addr_of_mut!(TSS);
        (*tss).ist[0] = stack_top;
        let base = tss as u64;
        let limit = (size_of::<Tss>() - 1) as u64;
        let gdt = core::ptr::addr_of_mut!(GDT);
        // Available 64-bit TSS (type 9), present.
        (*gdt)[3] = (limit & 0xffff)
            | ((base & 0xff_ffff) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xf) << 48)
            | (((base >> 24) & 0xff) << 56);
        (*gdt)[4] = base >> 32;
        let gdtr = Dtr {
            limit: (size_of::<[u64; 5]>() - 1) as u16,
            base: gdt as u64,
        };
        asm!("lgdt [{0}]", "mov ax, 0x18", "ltr ax", in(reg) &gdtr, out("ax") _);
        let mut idtr = Dtr { limit: 0, base: 0 };
        asm!("sidt [{0}]", in(reg) &mut idtr);
        // Every exception gate (byte 4: the IST index) on IST1, as Solo5
        // does, so no fault can fall back to the current stack.
        for vec in 0..32 {
            ((idtr.base + vec * 16 + 4) as *mut u8).write_volatile(1);
        }
        asm!("ud2", options(noreturn));
    }
}
