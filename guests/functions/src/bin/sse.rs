//! Runs SSE arithmetic with exactly known results: checks that the tender
//! enabled SSE (CR4.OSFXSR) and that the vCPU's FPU state works.
//!
//! The SSE code is spelled out in assembly, with bit patterns in and out:
//! the compiler cannot fold it away, and judging the result needs no FPU.
#![no_std]
#![no_main]

use core::arch::asm;
use guest_abi::println;
use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main);

#[repr(C, align(16))]
struct V([u32; 4]);

const TWO: u32 = 0x4000_0000; // 2.0f32
const THREE: u32 = 0x4040_0000; // 3.0
const FIVE: u32 = 0x40a0_0000; // 5.0
const EIGHT: u32 = 0x4100_0000; // 8.0

fn main(_: &Ctx) -> i32 {
    // Packed single: square four lanes, then take the square roots back.
    let mut v = V([TWO, FIVE, THREE, EIGHT]);
    let mut r = V([0; 4]);
    // SAFETY: both pointers are 16-byte aligned and valid for 16 bytes;
    // the asm only touches them and xmm0/xmm1, which it declares.
    unsafe {
        asm!(
            "movaps xmm0, [{v}]",
            "mulps xmm0, xmm0",
            "movaps [{v}], xmm0",
            "sqrtps xmm1, xmm0",
            "movaps [{r}], xmm1",
            v = in(reg) &mut v as *mut V,
            r = in(reg) &mut r as *mut V,
            out("xmm0") _, out("xmm1") _,
            options(nostack),
        )
    };
    let squares = [0x4080_0000, 0x41c8_0000, 0x4110_0000, 0x4280_0000]; // 4, 25, 9, 64
                                                                        // Scalar double: 1.5 + 2.25 = 3.75 exactly.
    let (a, b): (u64, u64) = (0x3ff8_0000_0000_0000, 0x4002_0000_0000_0000);
    let sum: u64;
    // SAFETY: register-only arithmetic on xmm0/xmm1, declared clobbered.
    unsafe {
        asm!(
            "movq xmm0, {a}",
            "movq xmm1, {b}",
            "addsd xmm0, xmm1",
            "movq {s}, xmm0",
            a = in(reg) a, b = in(reg) b, s = out(reg) sum,
            out("xmm0") _, out("xmm1") _,
            options(nomem, nostack),
        )
    };
    let ok = v.0 == squares && r.0 == [TWO, FIVE, THREE, EIGHT] && sum == 0x400e_0000_0000_0000;
    if ok {
        println!("sse: ok");
        0
    } else {
        println!("sse: wrong results {:x?} {:x?} {:x}", v.0, r.0, sum);
        1
    }
}
