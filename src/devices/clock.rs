//! Time: WALLTIME. (POLL, which waits on net devices and a timeout,
//! lives in `poll.rs` and `net.rs`.)

use super::{write_back, Stop};
use crate::memory::{Gpa, GuestMemory};
use guest_abi::hvt::HcWalltime;

/// Nanoseconds since the epoch (CLOCK_REALTIME, through the vDSO).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

pub fn walltime(mem: &GuestMemory, arg: Gpa) -> Result<(), Stop> {
    Ok(write_back(
        mem,
        "WALLTIME",
        arg,
        HcWalltime { nsecs: now_ns() },
    )?)
}
