//! A Solo5-style clock check for snapshots: reads WALLTIME once at boot,
//! waits for its request body, then prints the wall time it derives from
//! that and the TSC clock next to a fresh WALLTIME:
//! `derived=NS fresh=NS`. Restored from a snapshot, the two must agree.
#![no_std]
#![no_main]

use guest_abi::rt::{function, monotonic_ns, walltime_ns, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main);

fn main(ctx: &Ctx) -> i32 {
    if !function::available(ctx) {
        guest_abi::println!("clock: the tender does not serve function I/O");
        return 1;
    }
    let wall0 = walltime_ns();
    let mono0 = monotonic_ns();
    let mut body = [0u8; 64];
    if function::req_read_all(&mut body).is_err() {
        return 1;
    }
    let derived = wall0 + (monotonic_ns() - mono0);
    let fresh = walltime_ns();
    guest_abi::println!("derived={derived} fresh={fresh}");
    0
}
