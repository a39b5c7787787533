//! Checks that the tender loads .data and zeroes .bss, including a .bss
//! array that spans several 2 MiB pages, and that both are writable.
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use guest_abi::println;
use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main);

/// Initialised data (.data).
static mut DATA: [u32; 4] = [1, 2, 3, 0xdead_beef];
/// Zeroed data (.bss), 3 MiB: it crosses at least one 2 MiB boundary.
static mut BIG: [u64; BIG_LEN] = [0; BIG_LEN];
const BIG_LEN: usize = 3 << 17;
/// A small zeroed scalar (.bss).
static mut COUNTER: u64 = 0;

fn main(_: &Ctx) -> i32 {
    // Volatile accesses through raw pointers, so the compiler cannot fold the
    // initial values into constants and the checks read guest memory.
    // SAFETY: single-threaded; the pointers come from the statics and every
    // index is in bounds.
    let ok = unsafe {
        let data = addr_of_mut!(DATA).cast::<u32>();
        let big = addr_of_mut!(BIG).cast::<u64>();
        let counter = addr_of_mut!(COUNTER);
        let initial = [1, 2, 3, 0xdead_beef];
        let mut ok = (0..4).all(|i| read_volatile(data.add(i)) == initial[i]);
        ok &= (0..BIG_LEN).all(|i| read_volatile(big.add(i)) == 0);
        ok &= read_volatile(counter) == 0;
        for i in 0..4 {
            write_volatile(data.add(i), read_volatile(data.add(i)) * 10);
        }
        for i in (0..BIG_LEN).step_by(509) {
            write_volatile(big.add(i), i as u64 ^ 0x5a5a);
            write_volatile(counter, read_volatile(counter) + 1);
        }
        ok &= (0..4).all(|i| read_volatile(data.add(i)) == initial[i] * 10);
        ok &= (0..BIG_LEN)
            .step_by(509)
            .all(|i| read_volatile(big.add(i)) == i as u64 ^ 0x5a5a);
        ok &= read_volatile(counter) == BIG_LEN.div_ceil(509) as u64;
        ok &= read_volatile(addr_of!(BIG).cast::<u64>().add(BIG_LEN - 1)) == 0;
        ok
    };
    if ok {
        println!("globals: ok");
        0
    } else {
        println!("globals: mismatch");
        1
    }
}
