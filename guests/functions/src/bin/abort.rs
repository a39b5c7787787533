//! Panics: the runtime prints the panic message and halts with 255. A
//! function (its ABI1 note says so), so the message goes to stderr: under
//! a watchdog it never enters the response.
#![no_std]
#![no_main]

guest_abi::manifest!();
guest_abi::entry!(main, function);

fn main(_: &guest_abi::rt::Ctx) -> i32 {
    panic!("deliberate")
}
