//! Exits with the integer on its command line (`exitcode 42` → 42), so tests
//! can check that the guest's HALT status becomes the tender's exit status.
//! A missing or malformed number is a failure (1) with a message.
#![no_std]
#![no_main]

use guest_abi::println;
use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main);

fn main(ctx: &Ctx) -> i32 {
    match ctx.cmdline().trim().parse::<i32>() {
        Ok(status) => status,
        Err(_) => {
            println!("exitcode: expected an integer, got {:?}", ctx.cmdline());
            1
        }
    }
}
