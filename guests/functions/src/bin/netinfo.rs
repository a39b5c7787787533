//! Reports what the tender told it about net device `service0`: its MTU
//! and MAC (Solo5's test_net_mtu prints "MTU is N").
#![no_std]
#![no_main]

use guest_abi::println;
use guest_abi::rt::Ctx;

guest_abi::manifest!(net "service0");
guest_abi::entry!(main);

fn main(ctx: &Ctx) -> i32 {
    let Some((h, e)) = ctx.device("service0") else {
        println!("netinfo: no service0");
        return 1;
    };
    if e.attached == 0 {
        println!("netinfo: service0 not attached");
        return 1;
    }
    let m = e.net_mac();
    println!("handle {h}");
    println!("MTU is {}", e.net_mtu());
    println!(
        "MAC is {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
    0
}
