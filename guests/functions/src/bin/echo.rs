//! A function whose response is its request, byte for byte, through a
//! large buffer. Arguments: a number, the most body bytes it accepts (the
//! tender refuses a longer body); `stream`, answer each piece as soon as it
//! arrives rather than a buffer at a time.
#![no_std]
#![no_main]

use guest_abi::rt::{function, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main, function);

/// Up to 1 MiB per hypercall: few exits and few first-touch page faults
/// (a larger buffer measured no faster).
const BUF_MAX: usize = 1 << 20;

fn main(ctx: &Ctx) -> i32 {
    if !function::available(ctx) {
        guest_abi::println!("echo: the tender does not serve function I/O");
        return 1;
    }
    let mut limit = 0;
    let mut stream = false;
    for word in ctx.cmdline().split(' ') {
        match word.parse::<u64>() {
            Ok(n) => limit = n,
            Err(_) => stream |= word == "stream",
        }
    }
    let read = match stream {
        true => function::req_read,
        false => function::req_read_fill,
    };
    // SAFETY: called once; nothing else uses memory past the image.
    let buf = unsafe { function::scratch(ctx, BUF_MAX) };
    loop {
        match read(buf, limit) {
            Ok(0) => return 0,
            Ok(n) => {
                if function::resp_write(&buf[..n]).is_err() {
                    return 1;
                }
            }
            Err(_) => return 1,
        }
    }
}
