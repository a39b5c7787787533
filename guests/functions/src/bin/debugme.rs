//! A guest for the debugger tests (tests/gdb.rs): prints a global that gdb
//! may change before it is read, from a function gdb can break in.
#![no_std]
#![no_main]

use core::ptr::{addr_of, read_volatile};

use guest_abi::println;
use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main);

/// The value the guest prints (.data, so gdb finds it in guest memory).
static mut ANSWER: u64 = 41;

/// Prints `n`; never inlined, so it has a frame of its own in `bt`.
#[inline(never)]
fn report(n: u64) {
    println!("debugme: answer={n}");
}

fn main(_: &Ctx) -> i32 {
    // SAFETY: single-threaded; a volatile read so a debugger's write to
    // ANSWER is what gets printed.
    let n = unsafe { read_volatile(addr_of!(ANSWER)) };
    report(n);
    0
}
