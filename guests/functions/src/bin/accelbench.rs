//! Times skiff's accelerator hypercall from inside the guest (TSC clock):
//! `noop ITERS` prints `noop iters=I min_ns=A mean_ns=B`; `sgemm N ITERS`
//! multiplies N x N matrices (zeros: timing only, no guest-side fill)
//! after one warm-up call and prints `sgemm iters=I min_ns=A mean_ns=B`.
//! A trailing `untimed` skips the guest's clock (the host times the run).
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;
use guest_abi::println;
use guest_abi::rt::accel::{self, Session};
use guest_abi::rt::{monotonic_ns, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main);

const DIM_MAX: usize = 1024;
static mut A: [u32; DIM_MAX * DIM_MAX] = [0; DIM_MAX * DIM_MAX];
static mut B: [u32; DIM_MAX * DIM_MAX] = [0; DIM_MAX * DIM_MAX];
static mut C: [u32; DIM_MAX * DIM_MAX] = [0; DIM_MAX * DIM_MAX];

/// Runs `f` `iters` times; (min, mean) nanoseconds per call. Untimed
/// (`UNTIMED`: no clock reads, which may themselves exit on nested KVM),
/// the host times the whole run instead.
fn time(iters: u64, mut f: impl FnMut() -> bool) -> Option<(u64, u64)> {
    if UNTIMED.load(core::sync::atomic::Ordering::Relaxed) {
        return (0..iters).all(|_| f()).then_some((0, 0));
    }
    let (mut min, mut total) = (u64::MAX, 0);
    for _ in 0..iters {
        let t0 = monotonic_ns();
        if !f() {
            return None;
        }
        let dt = monotonic_ns() - t0;
        min = min.min(dt);
        total += dt;
    }
    Some((min, total / iters.max(1)))
}

static UNTIMED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

fn main(ctx: &Ctx) -> i32 {
    if !accel::available(ctx) {
        println!("accelbench: no accelerator extension");
        return 1;
    }
    let mut it = ctx.cmdline().split_ascii_whitespace();
    let what = it.next().unwrap_or("noop");
    let nums: [u64; 2] =
        core::array::from_fn(|_| it.next().and_then(|s| s.parse().ok()).unwrap_or(0));
    if ctx.cmdline().ends_with(" untimed") {
        UNTIMED.store(true, core::sync::atomic::Ordering::Relaxed);
    }
    let s = Session::new(0).expect("session");
    let r = match what {
        "noop" => {
            let iters = nums[0].max(1);
            time(iters, || s.noop().is_ok()).map(|t| (iters, t))
        }
        "sgemm" if (1..=DIM_MAX as u64).contains(&nums[0]) => {
            let n = nums[0] as usize;
            let iters = nums[1].max(1);
            // SAFETY: single-threaded; the only references to these statics.
            let (a, b, c) = unsafe {
                (
                    &(&*addr_of_mut!(A))[..n * n],
                    &(&*addr_of_mut!(B))[..n * n],
                    &mut (&mut *addr_of_mut!(C))[..n * n],
                )
            };
            let ni = n as i64;
            let mut call = || {
                s.sgemm((ni, ni, ni), 0x3f80_0000, a, ni, b, ni, 0, c, ni)
                    .is_ok()
            };
            if !call() {
                None
            } else {
                time(iters, call).map(|t| (iters, t))
            }
        }
        _ => None,
    };
    match r {
        Some((iters, (min, mean))) => {
            println!("{what} iters={iters} min_ns={min} mean_ns={mean}");
            0
        }
        None => {
            println!("accelbench: failed (usage: noop ITERS | sgemm N ITERS)");
            1
        }
    }
}
