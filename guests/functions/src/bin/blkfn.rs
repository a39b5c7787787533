//! A function with a block device `storage`, for snapshots: learns the
//! device at boot, waits for its request, then answers with the body's
//! length and the first 8 bytes of block 0, read after the request came.
#![no_std]
#![no_main]

use guest_abi::hvt::ret;
use guest_abi::rt::{block_read, function, Ctx};

guest_abi::manifest!(block "storage");
guest_abi::entry!(main);

static mut BUF: [u8; 4096] = [0; 4096];

fn main(ctx: &Ctx) -> i32 {
    let Some((h, e)) = ctx.device("storage") else {
        return 1;
    };
    let bs = usize::from(e.block_size()).min(4096);
    let mut body = [0u8; 256];
    let Ok(n) = function::req_read_all(&mut body) else {
        return 1;
    };
    // SAFETY: one vCPU, and `main` runs once: this is the only reference.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    if block_read(h, 0, &mut buf[..bs]) != ret::OK {
        return 1;
    }
    let b = &buf[..8];
    guest_abi::println!(
        "body {n} block0 {:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x} capacity {}",
        b[0],
        b[1],
        b[2],
        b[3],
        b[4],
        b[5],
        b[6],
        b[7],
        e.block_capacity()
    );
    0
}
