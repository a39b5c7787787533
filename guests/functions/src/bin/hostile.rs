//! A hostile guest: its first argument picks one thing a guest should not
//! be able to get away with, and tests/hostile.rs asserts skiff's answer.
//!
//! Raw `OUT`/`IN` instructions rather than the runtime's wrappers, so the
//! guest can say exactly what a hostile one would.
#![no_std]
#![no_main]

use core::arch::asm;
use guest_abi::hvt::{
    HcBlock, HcHalt, HcPuts, HcWalltime, Hypercall, BOOT_INFO_BASE, HYPERCALL_PIO_BASE, KERNEL_BASE,
};
use guest_abi::println;
use guest_abi::rt::{self, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main);

/// A 32-bit `OUT` of `value` to `port`: a hypercall if the port is one.
fn out32(port: u16, value: u32) {
    // SAFETY: an OUT exits to the tender; it touches no guest memory.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack)) };
}

fn hypercall<T>(nr: Hypercall, arg: *const T) {
    out32(nr.port(), arg as usize as u32);
}

/// Builds page tables of its own, as unikernels other than Solo5's do,
/// and loads them: the first GiB identity-mapped (2 MiB pages above the
/// first 2 MiB, which keep the tender's 4 KiB layout, the boot area
/// writable if `boot_writable`), plus the 2 MiB page holding `far`, which
/// may lie past the end of guest memory.
fn own_tables(far: u64, boot_writable: bool) {
    #[repr(C, align(4096))]
    struct Table([u64; 512]);
    static mut PML4: Table = Table([0; 512]);
    static mut PDPT: Table = Table([0; 512]);
    static mut PD: Table = Table([0; 512]);
    static mut FAR_PD: Table = Table([0; 512]);
    static mut PT: Table = Table([0; 512]);
    const P: u64 = 1;
    const W: u64 = 2;
    const PS: u64 = 1 << 7;
    // Supervisor-only, as a kernel's tables are (the tender's are
    // user-accessible for kvm_pvm's native mode, see src/vcpu/pvm.rs).
    const U: u64 = 0;
    const MIB2: u64 = 2 << 20;
    // SAFETY: single-threaded guest; the tables are ours, identity-mapped
    // (VA == GPA), and the new mapping keeps every page the guest uses
    // (text, data, stack) where it was. The first 2 MiB keep the
    // tender's 4 KiB layout, so the boot area stays where it was.
    unsafe {
        let pml4 = &raw mut PML4;
        let pdpt = &raw mut PDPT;
        let pd = &raw mut PD;
        let pt = &raw mut PT;
        // As the tender's first 2 MiB: nothing below the boot info, the
        // boot area read-only, the kernel area writable.
        for i in 0..512u64 {
            let a = i << 12;
            (*pt).0[i as usize] = match a {
                _ if a >= KERNEL_BASE => a | P | W | U,
                _ if a >= BOOT_INFO_BASE && boot_writable => a | P | W | U,
                _ if a >= BOOT_INFO_BASE => a | P | U,
                _ => 0,
            };
        }
        (*pd).0[0] = pt as u64 | P | W | U;
        for i in 1..512u64 {
            (*pd).0[i as usize] = (i * MIB2) | P | W | U | PS;
        }
        (*pdpt).0[0] = pd as u64 | P | W | U;
        let gib = (far >> 30) as usize;
        if gib != 0 {
            let far_pd = &raw mut FAR_PD;
            (*far_pd).0[((far >> 21) & 511) as usize] = (far & !(MIB2 - 1)) | P | W | U | PS;
            (*pdpt).0[gib] = far_pd as u64 | P | W | U;
        }
        (*pml4).0[0] = pdpt as u64 | P | W | U;
        asm!("mov cr3, {0}", in(reg) pml4 as u64, options(nostack));
    }
}

/// Where the far accesses go: 16 MiB, past the 8 MiB the test gives.
const FAR: u64 = 16 << 20;

fn main(ctx: &Ctx) -> i32 {
    let mut args = ctx.cmdline().split_ascii_whitespace();
    let mode = args.next().unwrap_or("");
    let mem = ctx.mem_size();
    match mode {
        // The argument struct lies outside guest memory.
        "arg-outside" => out32(Hypercall::Puts.port(), 0xffff_fff0),
        // ... or straddles its end.
        "arg-straddle" => out32(Hypercall::Puts.port(), (mem - 8) as u32),
        // The struct is fine, the buffer it names is not.
        "buf-outside" => {
            let arg = HcPuts { data: mem, len: 1 };
            hypercall(Hypercall::Puts, &arg);
        }
        // addr + len overflows 64 bits (addr itself is the guest's text).
        "len-overflow" => {
            let arg = HcPuts {
                data: 0x10_0000,
                len: u64::MAX - 0xf_ffff,
            };
            hypercall(Hypercall::Puts, &arg);
        }
        // WALLTIME told to write its answer over the guest's own text.
        "walltime-readonly" => out32(Hypercall::Walltime.port(), main as usize as u32),
        "halt-outside" => out32(Hypercall::Halt.port(), 0xffff_fff0),
        // A hypercall port with no hypercall, a port with no device.
        "unknown-hypercall" => out32(HYPERCALL_PIO_BASE + 31, 0),
        "unknown-port" => out32(0x1234, 0),
        // IN from a hypercall port; 8- and 16-bit OUTs to one.
        "in" => {
            let v: u32;
            // SAFETY: an IN exits to the tender; no memory is touched.
            unsafe {
                asm!("in eax, dx", in("dx") Hypercall::Puts.port(), out("eax") v, options(nostack))
            };
            println!("in: read {v:#x}");
        }
        "out8" => {
            let arg = HcHalt::default();
            // SAFETY: as `out32`, with an 8-bit operand.
            unsafe {
                asm!("out dx, al", in("dx") Hypercall::Halt.port(), in("al") &arg as *const _ as usize as u8, options(nostack))
            };
        }
        "out16" => {
            let arg = HcHalt::default();
            // SAFETY: as `out32`, with a 16-bit operand.
            unsafe {
                asm!("out dx, ax", in("dx") Hypercall::Halt.port(), in("ax") &arg as *const _ as usize as u16, options(nostack))
            };
        }
        // Loads and stores past the end of guest memory (MMIO exits).
        // An optional address (hex) below 512 GiB: the local APIC's
        // 0xfee00000, 4 GiB, a PCI hole's 0xd0000000...
        "mmio-read" | "mmio-write" => {
            let far = args
                .next()
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
                .unwrap_or(FAR);
            own_tables(far, false);
            let p = far as *mut u64;
            // SAFETY: deliberately touches guest-physical memory that does
            // not exist; the tender ends the guest on the access.
            unsafe {
                if mode == "mmio-read" {
                    println!("mmio: read {:#x}", p.read_volatile());
                } else {
                    p.write_volatile(0x5a5a);
                }
            }
        }
        // Page tables of its own, then ordinary work: console, clock.
        "own-tables" => {
            own_tables(FAR, false);
            let t = rt::walltime_ns();
            println!("own-tables: ok, clock {}", t > 0);
            return 0;
        }
        // Rewrites its manifest copy through tables of its own (claiming a
        // block device skiff never attached), then writes to that device:
        // skiff's own record decides, as on any KVM (EINVAL).
        "forge-manifest" => {
            own_tables(FAR, true);
            let mft = ctx.boot_info().mft as *mut u8;
            // SAFETY: the manifest copy lies in the boot area, mapped
            // writable by `own_tables`: its header says one entry, and that
            // entry becomes an attached block device. Field by field, with
            // volatile stores: a struct copy would use SSE, which kvm_pvm's
            // emulator (where skiff may run such a guest) cannot execute.
            unsafe {
                use guest_abi::manifest::{MftEntry, MftHeader, MFT_DEV_BLOCK_BASIC};
                let hdr = mft as *mut MftHeader;
                (&raw mut (*hdr).entries).write_volatile(1);
                let e = mft.add(core::mem::size_of::<MftHeader>()) as *mut MftEntry;
                for (i, &c) in b"storage\0".iter().enumerate() {
                    (&raw mut (*e).name[i]).write_volatile(c);
                }
                (&raw mut (*e).kind).write_volatile(MFT_DEV_BLOCK_BASIC);
                (&raw mut (*e).u[0]).write_volatile(1 << 20);
                (&raw mut (*e).u[1]).write_volatile(512);
                (&raw mut (*e).attached).write_volatile(1);
            }
            // The BLOCK_WRITE by hand, with volatile stores, for the same
            // reason (the runtime's wrapper zeroes its struct with SSE).
            static BLOCK: [u8; 512] = [0; 512];
            static mut ARG: HcBlock = HcBlock {
                handle: 0,
                offset: 0,
                data: 0,
                len: 0,
                ret: -1,
                _pad: 0,
            };
            // SAFETY: single-threaded; `ARG` names `BLOCK`, which is ours.
            let b = unsafe {
                let arg = &raw mut ARG;
                (&raw mut (*arg).data).write_volatile(BLOCK.as_ptr() as u64);
                (&raw mut (*arg).len).write_volatile(BLOCK.len() as u64);
                hypercall(Hypercall::BlockWrite, arg);
                (&raw const (*arg).ret).read_volatile()
            };
            println!("forge-manifest: block_write={b}");
            return 0;
        }
        // HLT with interrupts off: the CPU would never wake.
        "hlt" => {
            // SAFETY: stops the vCPU; touches no memory.
            unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
        }
        // The usual "halt forever" idiom of a kernel's panic path.
        "hlt-loop" => {
            // SAFETY: stops the vCPU for good; touches no memory.
            unsafe { asm!("2:", "cli", "hlt", "jmp 2b", options(nomem, nostack)) };
        }
        // A HLT after a hypercall, or after 1.2 s of compute (past the
        // first kick of skiff's watchdog on kvm_pvm, see src/vcpu/pvm.rs).
        "hlt-after" => {
            match args.next() {
                Some("puts") => println!("before"),
                Some("compute") => {
                    let hz = ctx.boot_info().cpu_cycle_freq;
                    // SAFETY: RDTSC only reads the time-stamp counter.
                    let t0 = unsafe { core::arch::x86_64::_rdtsc() };
                    // SAFETY: as above.
                    while unsafe { core::arch::x86_64::_rdtsc() } - t0 < hz / 10 * 12 {}
                }
                _ => return 2,
            }
            // SAFETY: stops the vCPU; touches no memory.
            unsafe { asm!("cli", "hlt", options(nomem, nostack)) };
        }
        // The boot area (boot info, command line) is read-only in the page
        // tables: a #PF, which the runtime's handler reports (255).
        "write-boot" => {
            // SAFETY: deliberately faults.
            unsafe { (0x10000 as *mut u64).write_volatile(0) };
        }
        // The guest's own text is writable in its page tables but mapped
        // read-only in skiff: the host refuses the write.
        "write-text" => {
            // SAFETY: deliberately writes over our own code.
            unsafe { (main as usize as *mut u8).write_volatile(0xcc) };
        }
        // Block and net hypercalls with no device attached: error codes.
        "no-devices" => {
            let mut buf = [0u8; 512];
            let b = rt::block_write(0, 0, &buf);
            let r = rt::block_read(7, 0, &mut buf);
            let n = rt::net_write(1, &buf[..64]).max(rt::net_read(0, &mut buf).0);
            println!("no-devices: block_write={b} block_read={r} net={n}");
            return 0;
        }
        // POLL with the longest timeout there is: only a signal ends it.
        "poll-forever" => {
            rt::poll(u64::MAX);
        }
        // A flood of cheap hypercalls: PUTS of nothing, WALLTIME.
        "flood" => {
            let n: u64 = args
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1_000_000);
            let mut t = HcWalltime::default();
            for _ in 0..n {
                rt::puts(&[]);
                hypercall(Hypercall::Walltime, &mut t);
            }
            println!("flood: {n} hypercalls of each kind");
            return 0;
        }
        _ => {
            println!("hostile: unknown mode {mode:?}");
            return 2;
        }
    }
    // Every mode above should have ended the guest before this.
    println!("hostile: {mode}: still running");
    3
}
