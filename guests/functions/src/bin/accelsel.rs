//! Shows which plugin skiff picks: for each hint on the command line (hex
//! or decimal), opens a session and prints the type flags of the plugins
//! that ran a NOOP and a MINMAX: `hint=H noop=P minmax=Q` (P, Q: flags in
//! hex, or `eN` for errno N).
#![no_std]
#![no_main]

use guest_abi::accel::{arg, op};
use guest_abi::println;
use guest_abi::rt::accel::{self, bits, Session};
use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main);

fn parse(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn show(r: Result<u32, i32>) -> (u32, i32) {
    match r {
        Ok(p) => (p, 0),
        Err(e) => (0, e),
    }
}

fn main(ctx: &Ctx) -> i32 {
    if !accel::available(ctx) {
        println!("accelsel: no accelerator extension");
        return 1;
    }
    let data = [1i64, 2].map(bits::f64_from_int);
    let mut out = [0u64; 2];
    for h in ctx.cmdline().split_ascii_whitespace() {
        let Some(hint) = parse(h) else {
            println!("accelsel: bad hint {h}");
            return 1;
        };
        let s = match Session::new(hint) {
            Ok(s) => s,
            Err(e) => {
                println!("hint={hint:#x} session=e{e}");
                continue;
            }
        };
        let (np, ne) = show(s.noop());
        let mut mm = 0;
        let mut me = 0;
        // MINMAX returns no plugin flags through its wrapper; use genop.
        let nd = data.len() as i32;
        let (lo, hi) = (0i32, 9i32);
        let (mut min, mut max) = ([0u64], [0u64]);
        let read = [
            accel::arg(arg::UINT8, &[op::MINMAX]),
            accel::arg(arg::FLOAT64_ARRAY, &data),
            accel::arg(arg::INT32, core::slice::from_ref(&nd)),
            accel::arg(arg::INT32, core::slice::from_ref(&lo)),
            accel::arg(arg::INT32, core::slice::from_ref(&hi)),
        ];
        let write = [
            accel::arg_mut(arg::FLOAT64_ARRAY, &mut out),
            accel::arg_mut(arg::FLOAT64, &mut min),
            accel::arg_mut(arg::FLOAT64, &mut max),
        ];
        match s.genop(&read, &write) {
            Ok(p) => mm = p,
            Err(e) => me = e,
        }
        if ne != 0 {
            println!("hint={hint:#x} noop=e{ne} minmax=e{me}");
        } else if me != 0 {
            println!("hint={hint:#x} noop={np:#x} minmax=e{me}");
        } else {
            println!("hint={hint:#x} noop={np:#x} minmax={mm:#x}");
        }
        let _ = s.release();
    }
    0
}
