//! Spins forever without a hypercall: only a signal to skiff ends it.
#![no_std]
#![no_main]

use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main);

fn main(_: &Ctx) -> i32 {
    loop {
        core::hint::spin_loop();
    }
}
