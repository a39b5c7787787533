//! Counts and timestamps continuously, for live migration's tests and
//! benchmark: one line per tick, `tick SEQ MONO_NS WALL_NS`, every
//! `period=US` microseconds (default 1000) until `count=N` ticks (default
//! 1000), then `ticker: done N` and status 0. A moved guest's output must
//! go on with no gap and no repeat in SEQ, and the largest gap between
//! consecutive WALL_NS is the downtime the guest saw.
//!
//! `mem=SIZE` (K/M/G suffixes) writes every page of a working set that
//! big above the image at the start (so it is resident and non-zero, as a
//! real function's heap), and `rate=SIZE` dirties pages of it at that many
//! bytes per second while ticking (one word per page, round robin).
#![no_std]
#![no_main]

use guest_abi::println;
use guest_abi::rt::{monotonic_ns, poll, walltime_ns, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main);

const PAGE: u64 = 4096;
/// Left free below the top of memory, where the stack lives.
const STACK_RESERVE: u64 = 1 << 20;

/// `123`, `64K`, `16M`, `1G`.
fn size(v: &str) -> Option<u64> {
    let (digits, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

struct Args {
    count: u64,
    period_us: u64,
    mem: u64,
    rate: u64,
}

fn args(cmdline: &str) -> Result<Args, &str> {
    let mut a = Args {
        count: 1000,
        period_us: 1000,
        mem: 0,
        rate: 0,
    };
    for word in cmdline.split(' ').filter(|w| !w.is_empty()) {
        let (k, v) = word.split_once('=').ok_or(word)?;
        let slot = match k {
            "count" => &mut a.count,
            "period" => &mut a.period_us,
            "mem" => &mut a.mem,
            "rate" => &mut a.rate,
            _ => return Err(word),
        };
        *slot = size(v).ok_or(word)?;
    }
    Ok(a)
}

fn main(ctx: &Ctx) -> i32 {
    let a = match args(ctx.cmdline()) {
        Ok(a) => a,
        Err(w) => {
            println!("ticker: bad argument {w:?} (count=N period=US mem=SIZE rate=SIZE)");
            return 2;
        }
    };
    let base = (ctx.kernel_end() + PAGE - 1) & !(PAGE - 1);
    let pages = a.mem / PAGE;
    if base + pages * PAGE > ctx.mem_size().saturating_sub(STACK_RESERVE) {
        println!(
            "ticker: mem={} does not fit in {} bytes of guest memory",
            a.mem,
            ctx.mem_size()
        );
        return 2;
    }
    let touch = |page: u64, v: u64| {
        let p = (base + page * PAGE) as *mut u64;
        // SAFETY: the page lies between the image and the stack reserve
        // (checked above), memory nothing else in this guest uses.
        unsafe { p.write_volatile(v | 1) };
    };
    for i in 0..pages {
        touch(i, i);
    }
    println!(
        "ticker: start count={} period={}us mem={} rate={}",
        a.count, a.period_us, a.mem, a.rate
    );

    let period = a.period_us * 1000;
    let start = monotonic_ns();
    let mut deadline = start;
    let mut dirtied = 0u64;
    for seq in 0..a.count {
        let mono = monotonic_ns();
        println!("tick {seq} {mono} {}", walltime_ns());
        if pages > 0 && a.rate > 0 {
            // Pages owed at `rate` since the start (u128: rate * ns overflows).
            let owed =
                (u128::from(a.rate) * u128::from(mono - start) / 1_000_000_000) as u64 / PAGE;
            while dirtied < owed {
                touch(dirtied % pages, seq);
                dirtied += 1;
            }
        }
        deadline += period;
        let now = monotonic_ns();
        if deadline > now {
            poll(deadline - now);
        } else {
            // Late (the guest was stopped, or the host is loaded): tick on
            // from now rather than in a burst.
            deadline = now;
        }
    }
    println!("ticker: done {}", a.count);
    0
}
