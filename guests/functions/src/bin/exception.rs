//! Executes `ud2`: the runtime's trap handler reports #UD and halts with 255.
#![no_std]
#![no_main]

use core::arch::asm;

guest_abi::manifest!();
guest_abi::entry!(main);

fn main(_: &guest_abi::rt::Ctx) -> i32 {
    // SAFETY: `ud2` raises #UD, which the runtime's handler turns into a
    // HALT; nothing after it runs.
    unsafe { asm!("ud2", options(nomem, nostack, noreturn)) }
}
