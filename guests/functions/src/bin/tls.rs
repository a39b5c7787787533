//! Points FS at a static TLS block with `wrmsr` and reads and writes through
//! `%fs:`, checking that the tender lets the guest own FS_BASE.
#![no_std]
#![no_main]

use core::arch::asm;
use core::ptr::{addr_of_mut, read_volatile};

use guest_abi::println;
use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main);

const MSR_FS_BASE: u32 = 0xc000_0100;

/// A thread-control block as a libc would lay it out: self pointer first.
#[repr(C, align(16))]
struct Tls {
    this: u64,
    a: u64,
    b: u64,
}

static mut TLS: Tls = Tls {
    this: 0,
    a: 0x1122_3344_5566_7788,
    b: 0,
};

fn main(_: &Ctx) -> i32 {
    let tls = addr_of_mut!(TLS);
    let base = tls as u64;
    // SAFETY: single-threaded, and `tls` points at the static.
    unsafe { (*tls).this = base };
    // SAFETY: writing FS_BASE changes only what %fs: addresses, and nothing
    // else in this guest uses FS.
    unsafe {
        asm!("wrmsr", in("ecx") MSR_FS_BASE, in("eax") base as u32, in("edx") (base >> 32) as u32,
             options(nostack, preserves_flags));
    }
    let (lo, hi): (u32, u32);
    // SAFETY: reading an MSR has no side effects.
    unsafe {
        asm!("rdmsr", in("ecx") MSR_FS_BASE, out("eax") lo, out("edx") hi,
             options(nomem, nostack, preserves_flags));
    }
    let (this, a): (u64, u64);
    // SAFETY: FS_BASE is the address of TLS, so %fs:0, %fs:8 and %fs:16 are
    // its fields; the write to `b` is declared by the missing `nomem`.
    unsafe {
        asm!(
            "mov {this}, qword ptr fs:[0]",
            "mov {a}, qword ptr fs:[8]",
            "mov qword ptr fs:[16], {b}",
            this = out(reg) this,
            a = out(reg) a,
            b = in(reg) 0xcafe_f00du64,
            options(nostack, preserves_flags),
        );
    }
    // SAFETY: `tls` points at the static; volatile so the asm's write is read.
    let b = unsafe { read_volatile(&raw const (*tls).b) };
    let fs_base = (u64::from(hi) << 32) | u64::from(lo);
    if fs_base == base && this == base && a == 0x1122_3344_5566_7788 && b == 0xcafe_f00d {
        println!("tls: ok");
        0
    } else {
        println!("tls: mismatch: fs_base={fs_base:#x} this={this:#x} a={a:#x} b={b:#x}");
        1
    }
}
