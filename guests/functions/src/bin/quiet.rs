//! Prints nothing and exits 0: the cheapest possible guest, for start-up
//! timing and for checking that a silent guest leaves stdout empty.
#![no_std]
#![no_main]

guest_abi::manifest!();
guest_abi::entry!(main);

fn main(_: &guest_abi::rt::Ctx) -> i32 {
    0
}
