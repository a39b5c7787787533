//! A monotonic clock from the TSC, with no exits to the tender.
//!
//! The tender reports the TSC frequency in the boot info (it requires a
//! constant TSC to do so), so reading the clock is one `rdtsc`.

use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};

/// TSC frequency in Hz, from the boot info.
static TSC_FREQ: AtomicU64 = AtomicU64::new(0);
/// TSC value at boot; the clock counts from here.
static TSC_BASE: AtomicU64 = AtomicU64::new(0);

/// Starts the clock; called once by the runtime before `main`.
pub(super) fn init(cpu_cycle_freq: u64) {
    TSC_FREQ.store(cpu_cycle_freq, Ordering::Relaxed);
    TSC_BASE.store(rdtsc(), Ordering::Relaxed);
}

/// The raw time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` reads a counter into edx:eax and touches no memory.
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Nanoseconds since the guest started, from the TSC.
pub fn monotonic_ns() -> u64 {
    let ticks = rdtsc().wrapping_sub(TSC_BASE.load(Ordering::Relaxed));
    // A tender always reports a non-zero frequency; max(1) keeps a broken one
    // from turning into a division fault.
    let freq = TSC_FREQ.load(Ordering::Relaxed).max(1);
    // 128-bit intermediate: ticks * 1e9 overflows u64 after ~18 s at 1 GHz.
    (u128::from(ticks) * 1_000_000_000 / u128::from(freq)) as u64
}
