//! Measures what things cost inside a guest, for the boot-time analysis:
//! `cost walltime N`, `cost puts N` (empty PUTS), `cost touch N` (first
//! touch of N fresh 4 KiB pages above the kernel), `cost spin N` (a loop
//! of N register-only iterations). Prints `cost WHAT N ns=T per=P`, timed
//! with the TSC. `cost loop-puts` and `cost loop-poll` make one-byte PUTS
//! or zero-timeout POLL hypercalls forever, for in-process benchmarks;
//! `cost loop-walltime` WALLTIME ones.
#![no_std]
#![no_main]

use guest_abi::println;
use guest_abi::rt::{monotonic_ns, poll, puts, walltime_ns, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main);

fn main(ctx: &Ctx) -> i32 {
    let mut words = ctx.cmdline().split(' ');
    let what = words.next().unwrap_or("");
    match what {
        "loop-puts" => loop {
            puts(b".");
        },
        "loop-walltime" => loop {
            core::hint::black_box(walltime_ns());
        },
        "loop-poll" => loop {
            core::hint::black_box(poll(0));
        },
        _ => {}
    }
    let n: u64 = match words.next().and_then(|w| w.parse().ok()) {
        Some(n) if n > 0 => n,
        _ => {
            println!("usage: cost walltime|puts|touch|spin N");
            return 1;
        }
    };
    let t0 = monotonic_ns();
    match what {
        "walltime" => {
            for _ in 0..n {
                core::hint::black_box(walltime_ns());
            }
        }
        "puts" => {
            for _ in 0..n {
                puts(&[]);
            }
        }
        "touch" => {
            // Pages from the next 2 MiB boundary above the kernel.
            let base = (ctx.kernel_end() + (2 << 20)) & !((2 << 20) - 1);
            if base + n * 4096 > ctx.mem_size() - (1 << 20) {
                println!("cost: not enough memory for {n} pages");
                return 1;
            }
            for i in 0..n {
                let p = (base + i * 4096) as *mut u64;
                // SAFETY: the page lies in guest memory above the kernel and
                // below the stack (checked above); nothing else uses it.
                unsafe { p.write_volatile(i) };
            }
        }
        "regs" => {
            // SAFETY: a register-only countdown loop.
            unsafe {
                core::arch::asm!("2: dec {0}", "jnz 2b", inout(reg) n => _, options(nomem, nostack))
            };
        }
        "stack" => {
            let mut v = [0u64; 8];
            for i in 0..n {
                // SAFETY: in-bounds volatile accesses to a local array.
                unsafe { core::ptr::write_volatile(&mut v[(i & 7) as usize], i) };
            }
            core::hint::black_box(&v);
        }
        "spin" => {
            let mut x = 0u64;
            for i in 0..n {
                x = core::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        _ => {
            println!("cost: unknown measurement {what}");
            return 1;
        }
    }
    let ns = monotonic_ns() - t0;
    println!("cost {what} {n} ns={ns} per={}", ns / n);
    0
}
