//! Prints `Hello, world!` and, if it has one, its command line.
#![no_std]
#![no_main]

use guest_abi::println;
use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main);

fn main(ctx: &Ctx) -> i32 {
    println!("Hello, world!");
    if !ctx.cmdline_bytes().is_empty() {
        println!("cmdline: {}", ctx.cmdline());
    }
    0
}
