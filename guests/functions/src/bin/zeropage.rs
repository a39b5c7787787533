//! Reads address 0, which the tender leaves unmapped: the page fault is
//! reported (#PF, cr2 = 0) and the guest halts with 255.
#![no_std]
#![no_main]

use core::arch::asm;

guest_abi::manifest!();
guest_abi::entry!(main);

fn main(_: &guest_abi::rt::Ctx) -> i32 {
    let value: u64;
    // SAFETY: the load faults, and the runtime's #PF handler halts the guest;
    // it is done in asm because a null read in Rust would be undefined
    // behaviour, not a fault.
    unsafe { asm!("mov {0}, qword ptr [{1}]", out(reg) value, in(reg) 0usize, options(nostack)) };
    guest_abi::println!("zeropage: read {value:#x} from address 0");
    1
}
