//! A function that looks for what an earlier request left behind, then
//! leaves some itself: it answers with the values it finds in a static, in
//! memory past its image, in an SSE register, in two MSRs (KERNEL_GS_BASE,
//! which the snapshot saves, and the first variable-range MTRR, which only
//! a full vCPU rewind restores) and in debug register 0, and then writes
//! the number in its request body into all of them. A tender that gives
//! every request a fresh guest makes every answer the same. A body of
//! `hlt` makes it halt the CPU instead (`cli; hlt`), which must end it:
//! if it goes on, it answers `still running` and exits 3.
#![no_std]
#![no_main]

use core::arch::asm;
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use guest_abi::rt::{function, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main, function);

const KERNEL_GS_BASE: u32 = 0xc000_0102;
const MTRR_PHYS_BASE0: u32 = 0x200;

static mut MARK: u64 = 0;

fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads an MSR every x86-64 CPU with MTRRs has; no memory.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn wrmsr(msr: u32, v: u64) {
    // SAFETY: writes a value the MSR accepts (a canonical address, or an
    // MTRR base with type write-back and no reserved bits).
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32,
             options(nomem, nostack))
    };
}

fn decimal(v: u64, out: &mut [u8; 20]) -> &[u8] {
    let (mut d, mut v) = (out.len(), v);
    loop {
        d -= 1;
        out[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &out[d..];
        }
    }
}

fn main(ctx: &Ctx) -> i32 {
    if !function::available(ctx) {
        guest_abi::println!("residue: the tender does not serve function I/O");
        return 1;
    }
    // A restored guest resumes inside this first REQ_READ: what it reads
    // after it is what this request's guest was given.
    let mut body = [0u8; 32];
    let Ok(n) = function::req_read_all(&mut body) else {
        return 1;
    };
    let xmm: u64;
    let dr0: u64;
    // SAFETY: register moves only.
    unsafe {
        asm!("movq {0}, xmm7", out(reg) xmm, options(nomem, nostack));
        asm!("mov {0}, dr0", out(reg) dr0, options(nomem, nostack));
    }
    let kgs = rdmsr(KERNEL_GS_BASE);
    let mtrr = rdmsr(MTRR_PHYS_BASE0);
    // SAFETY: single-threaded; the static is only used here.
    let mark = unsafe { read_volatile(addr_of_mut!(MARK)) };
    // SAFETY: called once; nothing else uses memory past the image.
    let buf = unsafe { function::scratch(ctx, 4096) };
    let mut past = [0u8; 8];
    past.copy_from_slice(&buf[..8]);
    let past = u64::from_le_bytes(past);

    if &body[..n] == b"hlt" {
        // SAFETY: stops this vCPU for good; nothing is borrowed across it.
        unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
        let _ = function::resp_write(b"still running");
        return 3;
    }
    let new = core::str::from_utf8(&body[..n])
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1)
        & 0xff_ffff; // small enough to be a canonical address and an MTRR base

    let fields: [(&[u8], u64); 6] = [
        (b"static=", mark),
        (b" memory=", past),
        (b" xmm7=", xmm),
        (b" dr0=", dr0),
        (b" kernel_gs_base=", kgs),
        (b" mtrr_base0=", mtrr),
    ];
    for (name, v) in fields {
        let mut d = [0u8; 20];
        if function::resp_write(name).is_err() || function::resp_write(decimal(v, &mut d)).is_err()
        {
            return 1;
        }
    }

    // SAFETY: as above; register moves; MSR values as `wrmsr` says.
    unsafe {
        write_volatile(addr_of_mut!(MARK), new);
        asm!("movq xmm7, {0}", in(reg) new, options(nomem, nostack));
        asm!("mov dr0, {0}", in(reg) new << 12, options(nomem, nostack));
    }
    buf[..8].copy_from_slice(&new.to_le_bytes());
    wrmsr(KERNEL_GS_BASE, new << 12);
    wrmsr(MTRR_PHYS_BASE0, (new << 12) | 6);
    0
}
