//! Panics: the runtime prints the panic message and halts with 255.
#![no_std]
#![no_main]

guest_abi::manifest!();
guest_abi::entry!(main);

fn main(_: &guest_abi::rt::Ctx) -> i32 {
    panic!("deliberate")
}
