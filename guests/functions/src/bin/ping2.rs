//! Answers ping on two interfaces (Solo5's test_net_2if): `service0` as
//! 10.77.0.2 and `service1` as 10.78.0.2. Argument: `[limit N]` (in all).
#![no_std]
#![no_main]

#[path = "../pingsvc.rs"]
mod pingsvc;

use guest_abi::println;
use guest_abi::rt::Ctx;

guest_abi::manifest!(net "service0", net "service1");
guest_abi::entry!(main);

fn main(ctx: &Ctx) -> i32 {
    let mut args = ctx.cmdline().split(' ').filter(|a| !a.is_empty());
    let limit = match (args.next(), args.next()) {
        (Some("limit"), Some(n)) => n.parse().ok(),
        _ => None,
    };
    let (Some(a), Some(b)) = (
        pingsvc::iface(ctx, "service0", [10, 77, 0, 2]),
        pingsvc::iface(ctx, "service1", [10, 78, 0, 2]),
    ) else {
        println!("ping2: an interface is not attached");
        return 1;
    };
    if pingsvc::serve(&[a, b], limit) {
        0
    } else {
        1
    }
}
