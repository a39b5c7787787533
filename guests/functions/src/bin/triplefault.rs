//! Loads an empty IDT and traps: the CPU cannot deliver the exception, so
//! it shuts down (a triple fault), which the tender must report cleanly.
#![no_std]
#![no_main]

use core::arch::asm;
use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main);

#[repr(C, packed)]
struct Idtr {
    limit: u16,
    base: u64,
}

fn main(_: &Ctx) -> i32 {
    let idtr = Idtr { limit: 0, base: 0 };
    // SAFETY: deliberately leaves the CPU without exception handlers; the
    // `ud2` that follows never returns.
    unsafe { asm!("lidt [{0}]", "ud2", in(reg) &idtr, options(noreturn)) }
}
