//! Writes its block device `storage` continuously, for live migration's
//! tests: `passes=N` (default 4) passes over the first `blocks=N` blocks
//! (default all), each writing every block with a pattern of (pass, block)
//! and reading it straight back into its own slot of a mirror in guest
//! memory past the image. Only the tender writes the mirror (the reads'
//! results), so a migration that misses the tender's writes into guest
//! memory during pre-copy leaves stale slots: at the end of each pass the
//! whole mirror is checked against the pass's pattern.
//!
//! Prints `blkwriter: pass P` as each pass starts, then
//! `blkwriter: ok P passes of B blocks` and status 0, or
//! `blkwriter: pass P block I read back wrong` and status 3. `delay=US`
//! sleeps that long after each block, to stretch a run. The device's final
//! contents are the last pass's pattern, moved or not.
#![no_std]
#![no_main]

use guest_abi::hvt::ret;
use guest_abi::println;
use guest_abi::rt::{block_read, block_write, poll, Ctx};

guest_abi::manifest!(block "storage");
guest_abi::entry!(main);

const MAX_BLOCK: usize = 32768;
const PAGE: u64 = 4096;
/// Left free below the top of memory, where the stack lives.
const STACK_RESERVE: u64 = 1 << 20;

fn byte(pass: u64, block: u64, j: usize) -> u8 {
    (block.wrapping_mul(7) as u8)
        .wrapping_add(j as u8)
        .wrapping_add((block >> 8) as u8)
        ^ (pass.wrapping_mul(0x3b) as u8)
}

/// A byte loop, not `==` against a filled buffer: memcmp's string
/// instruction is very slow on nested KVM.
fn holds(buf: &[u8], pass: u64, block: u64) -> bool {
    buf.iter()
        .enumerate()
        .all(|(j, &b)| b == byte(pass, block, j))
}

/// The write buffer, in .bss: a zeroed stack array would cost a memset.
static mut BUF: [u8; MAX_BLOCK] = [0; MAX_BLOCK];

fn arg(cmdline: &str, key: &str) -> Result<Option<u64>, ()> {
    for word in cmdline.split(' ').filter(|w| !w.is_empty()) {
        match word.split_once('=') {
            Some((k, v)) if k == key => return v.parse().map(Some).map_err(|_| ()),
            Some(("passes" | "blocks" | "delay", _)) => {}
            _ => return Err(()),
        }
    }
    Ok(None)
}

fn main(ctx: &Ctx) -> i32 {
    let Some((h, e)) = ctx.device("storage") else {
        println!("blkwriter: no storage device");
        return 1;
    };
    let bs = usize::from(e.block_size());
    let cap = e.block_capacity();
    if e.attached == 0 || bs < 512 || bs > MAX_BLOCK || cap < bs as u64 {
        println!("blkwriter: bad device info");
        return 1;
    }
    let cmd = ctx.cmdline();
    let (Ok(passes), Ok(blocks), Ok(delay)) =
        (arg(cmd, "passes"), arg(cmd, "blocks"), arg(cmd, "delay"))
    else {
        println!("blkwriter: bad arguments {cmd:?} (passes=N blocks=N delay=US)");
        return 2;
    };
    let passes = passes.unwrap_or(4);
    let blocks = blocks.unwrap_or(u64::MAX).min(cap / bs as u64);
    let delay = delay.unwrap_or(0);
    let mirror = (ctx.kernel_end() + PAGE - 1) & !(PAGE - 1);
    if mirror + blocks * bs as u64 > ctx.mem_size().saturating_sub(STACK_RESERVE) {
        println!("blkwriter: {blocks} blocks do not fit in guest memory");
        return 2;
    }
    // SAFETY: one vCPU, and `main` runs once: this is the only reference.
    let buf = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    let slot = |i: u64| {
        // SAFETY: slot `i < blocks` lies between the image and the stack
        // reserve (checked above); nothing else in this guest uses it.
        unsafe { core::slice::from_raw_parts_mut((mirror + i * bs as u64) as *mut u8, bs) }
    };
    for pass in 1..=passes {
        println!("blkwriter: pass {pass}");
        for i in 0..blocks {
            for (j, b) in buf[..bs].iter_mut().enumerate() {
                *b = byte(pass, i, j);
            }
            let off = i * bs as u64;
            let rc = block_write(h, off, &buf[..bs]);
            if rc != ret::OK {
                println!("blkwriter: write of block {i} returned {rc}");
                return 1;
            }
            let rc = block_read(h, off, slot(i));
            if rc != ret::OK {
                println!("blkwriter: read of block {i} returned {rc}");
                return 1;
            }
            if delay > 0 {
                poll(delay * 1000);
            }
        }
        for i in 0..blocks {
            if !holds(slot(i), pass, i) {
                println!("blkwriter: pass {pass} block {i} read back wrong");
                return 3;
            }
        }
    }
    println!("blkwriter: ok {passes} passes of {blocks} blocks");
    0
}
