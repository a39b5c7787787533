//! Checks the clocks: WALLTIME is a plausible date, the TSC clock advances,
//! and POLL with no devices sleeps for its timeout and reports nothing ready.
#![no_std]
#![no_main]

use guest_abi::hvt::ret;
use guest_abi::println;
use guest_abi::rt::{monotonic_ns, poll, walltime_ns, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main);

const NSEC_PER_SEC: u64 = 1_000_000_000;
/// 2020-01-01T00:00:00Z and 2100-01-01T00:00:00Z.
const Y2020: u64 = 1_577_836_800 * NSEC_PER_SEC;
const Y2100: u64 = 4_102_444_800 * NSEC_PER_SEC;
const TIMEOUT_NS: u64 = 100_000_000;

fn main(_: &Ctx) -> i32 {
    let wall = walltime_ns();
    if !(Y2020..Y2100).contains(&wall) {
        println!("time: walltime {wall} ns is not between 2020 and 2100");
        return 1;
    }

    let t0 = monotonic_ns();
    let mut t1 = t0;
    for _ in 0..1_000_000 {
        t1 = monotonic_ns();
        if t1 > t0 {
            break;
        }
    }
    if t1 <= t0 {
        println!("time: monotonic clock does not advance ({t0} ns)");
        return 1;
    }

    let before = monotonic_ns();
    let (ready, rc) = poll(TIMEOUT_NS);
    let slept = monotonic_ns() - before;
    if rc != ret::OK || ready != 0 {
        println!("time: poll returned ready_set={ready:#x} ret={rc}");
        return 1;
    }
    if slept < TIMEOUT_NS * 9 / 10 {
        println!("time: poll({TIMEOUT_NS} ns) returned after {slept} ns");
        return 1;
    }

    println!("time: ok");
    0
}
