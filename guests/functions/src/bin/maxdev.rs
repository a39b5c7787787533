//! 63 block devices, the most a manifest holds (Solo5's
//! test_mft_maxdevices): each must be attached; writes and reads back one
//! block on each.
#![no_std]
#![no_main]

use guest_abi::hvt::ret;
use guest_abi::println;
use guest_abi::rt::{block_read, block_write, Ctx};

guest_abi::manifest!(block "storage0", block "storage1", block "storage2", block "storage3", block "storage4", block "storage5", block "storage6", block "storage7", block "storage8", block "storage9", block "storage10", block "storage11", block "storage12", block "storage13", block "storage14", block "storage15", block "storage16", block "storage17", block "storage18", block "storage19", block "storage20", block "storage21", block "storage22", block "storage23", block "storage24", block "storage25", block "storage26", block "storage27", block "storage28", block "storage29", block "storage30", block "storage31", block "storage32", block "storage33", block "storage34", block "storage35", block "storage36", block "storage37", block "storage38", block "storage39", block "storage40", block "storage41", block "storage42", block "storage43", block "storage44", block "storage45", block "storage46", block "storage47", block "storage48", block "storage49", block "storage50", block "storage51", block "storage52", block "storage53", block "storage54", block "storage55", block "storage56", block "storage57", block "storage58", block "storage59", block "storage60", block "storage61", block "storage62");
guest_abi::entry!(main);

fn main(ctx: &Ctx) -> i32 {
    let devs = ctx.devices();
    if devs.len() != 64 {
        println!("maxdev: {} manifest entries", devs.len());
        return 1;
    }
    // Statics: a zeroed stack array would cost a (slow) memset.
    static mut BUF: [[u8; 512]; 2] = [[0; 512]; 2];
    // SAFETY: one vCPU; `main` runs once, so this is the only reference.
    let [buf, back] = unsafe { &mut *core::ptr::addr_of_mut!(BUF) };
    for (h, e) in devs.iter().enumerate().skip(1) {
        if e.attached == 0 || e.block_size() != 512 || e.block_capacity() < 512 {
            println!("maxdev: device {h} not attached as expected");
            return 1;
        }
        for b in buf.iter_mut() {
            *b = h as u8;
        }
        let w = block_write(h as u64, 0, &buf[..]);
        let r = block_read(h as u64, 0, &mut back[..]);
        if w != ret::OK || r != ret::OK || back.iter().any(|&b| b != h as u8) {
            println!("maxdev: device {h}: write {w} read {r}");
            return 1;
        }
    }
    println!("maxdev: ok ({} devices)", devs.len() - 1);
    0
}
