//! Time: WALLTIME, and POLL's timeout (net devices add their readiness).

use super::{write_back, Stop};
use crate::memory::{Gpa, GuestMemory};
use guest_abi::hvt::{HcPoll, HcWalltime};

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

/// Sleeps for the timeout (no net device can become ready). A signal cuts
/// the sleep short; the guest simply polls again, or the run ends.
pub fn poll(mem: &GuestMemory, arg: Gpa, mut req: HcPoll) -> Result<(), Stop> {
    let ns = req.timeout_nsecs;
    if ns > 0 {
        let ts = libc::timespec {
            tv_sec: (ns / 1_000_000_000).min(i64::MAX as u64) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        };
        // The nanosleep syscall itself: glibc's nanosleep() is
        // clock_nanosleep, which urunc's outer seccomp filter forbids.
        // SAFETY: valid timespec; a null remainder pointer is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &ts as *const libc::timespec,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
    }
    req.ready_set = 0;
    req.ret = 0;
    Ok(write_back(mem, "POLL", arg, req)?)
}
