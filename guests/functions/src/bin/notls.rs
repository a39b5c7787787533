//! Reads a thread-local slot without setting up TLS first (FS base is 0
//! at entry): the load goes to address 0x28, which is unmapped, so the
//! runtime's page-fault handler reports it and the guest aborts with 255,
//! as Solo5's test_notls does.
#![no_std]
#![no_main]

use core::arch::asm;
use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main);

fn main(_: &Ctx) -> i32 {
    let v: u64;
    // SAFETY: deliberately faults: FS base is 0 and page 0 is not mapped.
    unsafe { asm!("mov {}, fs:[0x28]", out(reg) v, options(nostack, readonly)) };
    guest_abi::println!("notls: read {v:#x} without a TLS block");
    1
}
