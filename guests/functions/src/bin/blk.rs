//! Block device `storage` (Solo5's test_blk, and more):
//! - no argument: prints the first 8 bytes of the device, checks that bad
//!   requests get EINVAL, writes a pattern to every block, reads it back.
//! - `durable N`: writes blocks 0..N one at a time, printing `acked I`
//!   after each acknowledged write, then sleeps until killed.
#![no_std]
#![no_main]

use guest_abi::hvt::ret;
use guest_abi::println;
use guest_abi::rt::{block_read, block_write, poll, Ctx};

guest_abi::manifest!(block "storage");
guest_abi::entry!(main);

const MAX_BLOCK: usize = 32768;

fn fill(buf: &mut [u8], block: u64) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = (block.wrapping_mul(7) as u8).wrapping_add(j as u8) ^ 0x5a;
    }
}

/// Whether `buf` holds block `block`'s pattern. (A byte loop, not `==`:
/// memcmp's string instruction is very slow on nested KVM.)
fn holds(buf: &[u8], block: u64) -> bool {
    let b0 = block.wrapping_mul(7) as u8;
    buf.iter()
        .enumerate()
        .all(|(j, &b)| b == b0.wrapping_add(j as u8) ^ 0x5a)
}

/// The I/O buffer, in .bss: a zeroed stack array would cost a memset.
static mut BUF: [u8; 2 * MAX_BLOCK] = [0; 2 * MAX_BLOCK];

fn main(ctx: &Ctx) -> i32 {
    let Some((h, e)) = ctx.device("storage") else {
        println!("blk: no storage device");
        return 1;
    };
    let cap = e.block_capacity();
    let bs = usize::from(e.block_size());
    println!(
        "blk: capacity {cap} block_size {bs} attached {}",
        e.attached
    );
    if e.attached == 0 || bs < 512 || bs > MAX_BLOCK || cap == 0 || cap % bs as u64 != 0 {
        println!("blk: bad device info");
        return 1;
    }
    // SAFETY: one vCPU, and `main` runs once: this is the only reference.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    let mut args = ctx.cmdline().split(' ').filter(|a| !a.is_empty());
    if let (Some("durable"), Some(n)) = (args.next(), args.next()) {
        let n: u64 = n.parse().unwrap_or(0);
        for i in 0..n.min(cap / bs as u64) {
            fill(&mut buf[..bs], i);
            let rc = block_write(h, i * bs as u64, &buf[..bs]);
            if rc != ret::OK {
                println!("blk: write {i} returned {rc}");
                return 1;
            }
            println!("acked {i}");
        }
        loop {
            poll(10_000_000_000);
        }
    }

    let rc = block_read(h, 0, &mut buf[..bs]);
    if rc != ret::OK {
        println!("blk: read of block 0 returned {rc}");
        return 1;
    }
    let f = &buf[..8];
    println!(
        "blk: first bytes {:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]
    );

    // Requests the device must refuse with EINVAL.
    let b = bs as u64;
    let bad: [(&str, u64, u64, usize); 8] = [
        ("misaligned offset", h, 1, bs),
        ("misaligned length", h, 0, bs + bs / 2),
        ("offset at capacity", h, cap, bs),
        ("range past capacity", h, cap - b, 2 * bs),
        ("overflowing offset", h, u64::MAX - b + 1, bs),
        ("reserved handle", 0, 0, bs),
        ("unknown handle", 63, 0, bs),
        ("huge handle", u64::MAX, 0, bs),
    ];
    for (what, handle, off, len) in bad {
        let r = block_read(handle, off, &mut buf[..len]);
        let w = block_write(handle, off, &buf[..len]);
        if r != ret::EINVAL || w != ret::EINVAL {
            println!("blk: {what}: read returned {r}, write {w}, expected EINVAL");
            return 1;
        }
    }

    // Every block, one at a time, then two at a time back.
    let blocks = cap / b;
    for i in 0..blocks {
        fill(&mut buf[..bs], i);
        let rc = block_write(h, i * b, &buf[..bs]);
        if rc != ret::OK {
            println!("blk: write of block {i} returned {rc}");
            return 1;
        }
    }
    let mut i = 0;
    while i < blocks {
        let n = if i + 1 < blocks { 2 } else { 1 };
        buf[0] ^= 0xff; // so a read that does nothing cannot pass
        let rc = block_read(h, i * b, &mut buf[..n * bs]);
        if rc != ret::OK {
            println!("blk: read of block {i} returned {rc}");
            return 1;
        }
        for k in 0..n {
            if !holds(&buf[k * bs..(k + 1) * bs], i + k as u64) {
                println!("blk: block {} reads back wrong", i + k as u64);
                return 1;
            }
        }
        i += n as u64;
    }
    println!("blk: ok ({blocks} blocks)");
    0
}
