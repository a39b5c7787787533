//! A function that looks for what an earlier request left behind, then
//! leaves some itself: it answers with the values it finds in a static, in
//! memory past its image, in an SSE register, in two MSRs (KERNEL_GS_BASE,
//! which the snapshot saves, and the first variable-range MTRR, which only
//! a full vCPU rewind restores), in debug registers 0 and 1, in CR8 (the
//! task priority, which KVM takes from `kvm_run` at each entry), EFER, CR4
//! and XCR0, the x87 control word, MXCSR and the upper half of AVX register
//! ymm7 (enabling AVX itself when the CPU has it), and then writes the
//! number in its request body into all of them. It also answers with
//! CPUID leaf 7's EBX, the features it was given (`--cpu-template`). A tender that gives
//! every request a fresh guest makes every answer the same. A body of
//! `hlt` makes it halt the CPU instead (`cli; hlt`), which must end it:
//! if it goes on, it answers `still running` and exits 3.
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use guest_abi::rt::{function, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main, function);

const KERNEL_GS_BASE: u32 = 0xc000_0102;
const EFER: u32 = 0xc000_0080;
const EFER_NXE: u64 = 1 << 11;
const CR4_OSXSAVE: u64 = 1 << 18;
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

/// XCR0 (CR4.OSXSAVE must be on).
fn xgetbv() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads XCR0; no memory.
    unsafe { asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// #UDs at the AVX instructions below that the handler retried.
static mut UD_RETRIES: u64 = 0;
/// The runtime's #UD stub, which ends the guest.
static mut UD_STUB: u64 = 0;
const UD_VECTOR: usize = 6;

// `residue_ymm7_swap(new) -> old`: the upper half of ymm7 (its low 64
// bits), then `new` written there (zero above). `residue_ud`: a #UD at one
// of its two AVX instructions enables AVX again (XCR0 |= 7) and retries,
// up to 8 times; any other #UD goes to the runtime's stub. Needed on the
// standard-KVM lane: QEMU 7.2's TCG does not intercept a nested guest's
// XSETBV for its KVM, so the XCR0 it sets holds only until the next exit,
// after which KVM loads its own (the boot value) again; an exit (a host
// interrupt) between the XSETBV and these instructions made them fault,
// about 2 cold runs in 100. Any other KVM sees XSETBV and never gets here.
global_asm!(
    ".pushsection .text.residue_avx,\"ax\",@progbits",
    ".globl residue_ymm7_swap",
    "residue_ymm7_swap:",
    "vextractf128 xmm0, ymm7, 1",
    "movq rax, xmm0",
    "movq xmm0, rdi",
    "vinsertf128 ymm7, ymm7, xmm0, 1",
    "residue_avx_end:",
    "ret",
    ".globl residue_ud",
    "residue_ud:",
    "push rax",
    "push rcx",
    "push rdx",
    "mov rax, [rsp + 24]", // the faulting rip
    "lea rcx, [rip + residue_ymm7_swap]",
    "cmp rax, rcx",
    "jb 2f",
    "lea rcx, [rip + residue_avx_end]",
    "cmp rax, rcx",
    "jae 2f",
    "cmp qword ptr [rip + {retries}], 8",
    "jae 2f",
    "inc qword ptr [rip + {retries}]",
    "xor ecx, ecx",
    "xgetbv",
    "or eax, 7",
    "xsetbv",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "iretq",
    "2:",
    "pop rdx",
    "pop rcx",
    "pop rax",
    "jmp qword ptr [rip + {stub}]",
    ".popsection",
    retries = sym UD_RETRIES,
    stub = sym UD_STUB,
);

extern "C" {
    fn residue_ymm7_swap(new: u64) -> u64;
    fn residue_ud();
}

/// The upper half of ymm7 (its low 64 bits), then `new` written there.
fn ymm7_hi_swap(new: u64) -> u64 {
    // SAFETY: `residue_ud` keeps every register and either retries one of
    // the swap's two instructions or jumps to the stub with the frame as
    // the CPU left it; UD_STUB is set before any #UD can reach it.
    unsafe {
        if let Some(stub) = guest_abi::rt::set_exception_handler(UD_VECTOR, residue_ud) {
            write_volatile(addr_of_mut!(UD_STUB), stub);
        }
    }
    // SAFETY: AVX is on (XCR0 says so; `residue_ud` turns it on again if an
    // exit undid it); the swap clobbers only rax and xmm0 (caller-saved).
    unsafe { residue_ymm7_swap(new) }
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
    let new = core::str::from_utf8(&body[..n])
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1)
        & 0xff_ffff; // small enough to be a canonical address and an MTRR base
    let xmm: u64;
    let dr0: u64;
    // SAFETY: register moves only.
    unsafe {
        asm!("movq {0}, xmm7", out(reg) xmm, options(nomem, nostack));
        asm!("mov {0}, dr0", out(reg) dr0, options(nomem, nostack));
    }
    let kgs = rdmsr(KERNEL_GS_BASE);
    let efer = rdmsr(EFER);
    let (cr8, cr4, dr1): (u64, u64, u64);
    let mut fcw: u16 = 0;
    let mut mxcsr: u32 = 0;
    // SAFETY: register reads, and stores into the two locals.
    unsafe {
        asm!("mov {0}, cr8", out(reg) cr8, options(nomem, nostack));
        asm!("mov {0}, cr4", out(reg) cr4, options(nomem, nostack));
        asm!("mov {0}, dr1", out(reg) dr1, options(nomem, nostack));
        asm!("fnstcw [{0}]", in(reg) &mut fcw, options(nostack));
        asm!("stmxcsr [{0}]", in(reg) &mut mxcsr, options(nostack));
    }
    // AVX: the boot state leaves CR4.OSXSAVE clear; a request turns it on
    // (and XCR0's AVX bit), which a rewind must turn off again.
    // XSAVE and AVX in CPUID leaf 1, AVX state in leaf 0xd's XCR0 mask.
    let avx_cpu = core::arch::x86_64::__cpuid(1).ecx & (1 << 26 | 1 << 28) == (1 << 26 | 1 << 28)
        && core::arch::x86_64::__cpuid_count(0xd, 0).eax & 4 != 0;
    let (mut xcr0, mut ymm_hi, mut avx) = (0u64, 0u64, false);
    if avx_cpu {
        // SAFETY: the CPU has XSAVE and AVX state (CPUID); enabling them
        // touches registers only.
        unsafe {
            asm!("mov cr4, {0}", in(reg) cr4 | CR4_OSXSAVE, options(nomem, nostack));
            xcr0 = xgetbv();
            asm!("xsetbv", in("ecx") 0, in("eax") (xcr0 | 7) as u32, in("edx") (xcr0 >> 32) as u32,
                 options(nomem, nostack));
        }
        avx = xgetbv() & 7 == 7;
    }
    if avx && &body[..n] != b"hlt" {
        ymm_hi = ymm7_hi_swap(new);
        // SAFETY: single-threaded; the #UD handler has run, if at all.
        let retries = unsafe { read_volatile(addr_of_mut!(UD_RETRIES)) };
        if retries > 0 {
            guest_abi::println!(
                "residue: AVX enabled again {retries} times after a #UD (an exit undid xsetbv)"
            );
        }
    }
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

    // Not residue: what CPU the guest was given (`--cpu-template`).
    let cpuid7b = core::arch::x86_64::__cpuid_count(7, 0).ebx;
    let fields: [(&[u8], u64); 15] = [
        (b"static=", mark),
        (b" memory=", past),
        (b" xmm7=", xmm),
        (b" dr0=", dr0),
        (b" kernel_gs_base=", kgs),
        (b" mtrr_base0=", mtrr),
        (b" dr1=", dr1),
        (b" cr8=", cr8),
        (b" efer=", efer),
        (b" cr4=", cr4),
        (b" xcr0=", xcr0),
        (b" fcw=", u64::from(fcw)),
        (b" mxcsr=", u64::from(mxcsr)),
        (b" ymm7_hi=", ymm_hi),
        (b" cpuid7_ebx=", u64::from(cpuid7b)),
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
        asm!("mov dr1, {0}", in(reg) new << 13, options(nomem, nostack));
        asm!("mov cr8, {0}", in(reg) (new & 0xf) | 1, options(nomem, nostack));
        // Precision control and rounding: valid whatever `new` is.
        let fcw = fcw ^ (((new as u16) & 3) << 8) ^ 0x0c00;
        asm!("fldcw [{0}]", in(reg) &fcw, options(nostack));
        let mxcsr = mxcsr ^ (((new as u32) & 3) << 13) ^ 0x8000;
        asm!("ldmxcsr [{0}]", in(reg) &mxcsr, options(nostack));
    }
    buf[..8].copy_from_slice(&new.to_le_bytes());
    wrmsr(KERNEL_GS_BASE, new << 12);
    wrmsr(MTRR_PHYS_BASE0, (new << 12) | 6);
    wrmsr(EFER, efer | EFER_NXE);
    0
}
