//! Answers ARP and ICMP echo on net device `service0` (Solo5's test_net).
//! Arguments: `[IP] [limit N]`; IP defaults to 10.77.0.2. With `limit N`
//! it exits 0 after answering N pings, else it serves until killed.
#![no_std]
#![no_main]

#[path = "../pingsvc.rs"]
mod pingsvc;

use guest_abi::println;
use guest_abi::rt::Ctx;

guest_abi::manifest!(net "service0");
guest_abi::entry!(main);

fn main(ctx: &Ctx) -> i32 {
    let mut ip = [10, 77, 0, 2];
    let mut limit = None;
    let mut args = ctx.cmdline().split(' ').filter(|a| !a.is_empty());
    while let Some(a) = args.next() {
        if a == "limit" {
            limit = args.next().and_then(|n| n.parse().ok());
            if limit.is_none() {
                println!("ping: limit needs a count");
                return 1;
            }
        } else if let Some(x) = pingsvc::parse_ip(a) {
            ip = x;
        } else {
            println!("ping: bad argument '{a}'");
            return 1;
        }
    }
    let Some(ifc) = pingsvc::iface(ctx, "service0", ip) else {
        println!("ping: service0 is not attached");
        return 1;
    };
    if pingsvc::serve(&[ifc], limit) {
        0
    } else {
        1
    }
}
