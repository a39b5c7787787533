//! Time: WALLTIME. (POLL, which waits on net devices and a timeout,
//! lives in `poll.rs` and `net.rs`.)

use super::{write_back, Stop};
use crate::memory::{Gpa, GuestMemory};
use guest_abi::hvt::HcWalltime;

/// Nanoseconds since the epoch (CLOCK_REALTIME, through the vDSO), as
/// skiff tells guests and as snapshots record it.
pub fn now_ns() -> u64 {
    let real = clock_ns(libc::CLOCK_REALTIME);
    match skew() {
        Some(s) => s.apply(real),
        None => real,
    }
}

/// Nanoseconds of `clock` (a `CLOCK_*` id).
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// A wall clock that disagrees with the TSC, as a host's does while NTP
/// steps or slews it: `SKIFF_TEST_WALLCLOCK=STEP_NS[,PPM,ANCHOR_NS]` makes
/// [`now_ns`] read `real + STEP + (real - ANCHOR) * PPM / 1e6`. A testing
/// aid (tests/snapshot.rs): no one else sets it, and it moves only what
/// this process believes the wall time to be.
#[derive(Debug, Clone, Copy)]
struct Skew {
    step_ns: i64,
    ppm: i64,
    anchor_ns: u64,
}

impl Skew {
    fn parse(v: &str) -> Option<Self> {
        let mut it = v.split(',').map(str::trim);
        let step_ns = it.next()?.parse().ok()?;
        let ppm = it.next().map_or(Some(0), |p| p.parse().ok())?;
        let anchor_ns = it.next().map_or(Some(0), |a| a.parse().ok())?;
        Some(Skew {
            step_ns,
            ppm,
            anchor_ns,
        })
    }

    fn apply(self, real: u64) -> u64 {
        let since = i128::from(real) - i128::from(self.anchor_ns);
        let drift = since * i128::from(self.ppm) / 1_000_000;
        (i128::from(real) + i128::from(self.step_ns) + drift) as u64
    }
}

fn skew() -> Option<Skew> {
    static SKEW: std::sync::OnceLock<Option<Skew>> = std::sync::OnceLock::new();
    *SKEW.get_or_init(|| {
        std::env::var("SKIFF_TEST_WALLCLOCK")
            .ok()
            .and_then(|v| Skew::parse(&v))
    })
}

pub fn walltime(mem: &GuestMemory, arg: Gpa) -> Result<(), Stop> {
    Ok(write_back(
        mem,
        "WALLTIME",
        arg,
        HcWalltime { nsecs: now_ns() },
    )?)
}
