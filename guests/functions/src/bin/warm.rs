//! A function that keeps its guest across requests where the server
//! allows it (`skiff serve --warm`, REQ_NEXT): answers `request N of this
//! guest` and its body, then asks for the next request; elsewhere it
//! serves one and halts.
#![no_std]
#![no_main]

use guest_abi::rt::{function, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main, function);

const BUF_MAX: usize = 64 << 10;

fn main(ctx: &Ctx) -> i32 {
    if !function::available(ctx) {
        guest_abi::println!("warm: the tender does not serve function I/O");
        return 1;
    }
    // SAFETY: called once; nothing else uses memory past the image.
    let buf = unsafe { function::scratch(ctx, BUF_MAX) };
    let mut served: u64 = 0;
    loop {
        let Ok(n) = function::req_read_all(buf) else {
            return 1;
        };
        served += 1;
        let mut line = [0u8; 32];
        let head = b"request ";
        line[..head.len()].copy_from_slice(head);
        let mut len = head.len();
        let mut digits = [0u8; 20];
        let (mut d, mut v) = (digits.len(), served);
        loop {
            d -= 1;
            digits[d] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        let num = &digits[d..];
        line[len..len + num.len()].copy_from_slice(num);
        len += num.len();
        let ok = function::resp_write(&line[..len]).is_ok()
            && function::resp_write(b" of this guest\n").is_ok()
            && function::resp_write(&buf[..n]).is_ok();
        if !ok {
            return 1;
        }
        if !function::req_next(ctx) {
            return 0;
        }
    }
}
