//! CPU exception handling: every exception is fatal, unless the guest
//! takes one over ([`set_exception_handler`]).
//!
//! The tender enters the guest with no IDT, so without one a fault becomes a
//! triple fault and the tender sees a bare shutdown. Installing handlers for
//! vectors 0-31 turns a fault into one readable line and a HALT with status
//! 255, as Solo5's own guests do.
//!
//! Delivering an exception reads the GDT to load CS, and the tender's GDT
//! (at 0x1000) is not mapped for the guest, so the runtime first switches to
//! a GDT of its own with the same selectors, as Solo5's bindings do.
//!
//! The handlers run on the faulting stack (ring 0, no IST) and never return,
//! so they need not save registers; this is also why a clobbered red zone
//! cannot hurt.

use core::arch::{asm, global_asm};
use core::mem::size_of;
use core::sync::atomic::{AtomicBool, Ordering};

use super::hypercall::{exit, puts};

/// Our GDT: null, 64-bit code (selector 0x08), data (0x10), the tender's
/// selectors. The accessed bits (type 0xb, 0x3) are preset so the CPU never
/// writes to the table, which lives in read-only memory.
static GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;

/// The operand of `lgdt` and `lidt`.
#[repr(C, packed)]
struct DescriptorTablePointer {
    limit: u16,
    base: u64,
}

/// Exceptions the CPU reports; 32 and up are interrupts, which never
/// arrive (no interrupt controller, IF clear).
const VECTORS: usize = 32;
/// Bytes between stubs in `__skiff_trap_stubs`: each is at most 9 bytes
/// (push imm8, push imm8, jmp rel32) and `.p2align 4` pads it to 16.
const STUB_SIZE: u64 = 16;

/// What the stub and the CPU leave on the stack, lowest address first.
#[repr(C)]
struct TrapFrame {
    vector: u64,
    /// The CPU's error code, or 0 for vectors without one.
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// A 64-bit interrupt gate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_lo: u16,
    selector: u16,
    ist: u8,
    /// Present, DPL 0, type 0xE (64-bit interrupt gate: IF cleared on entry).
    type_attr: u8,
    offset_mid: u16,
    offset_hi: u32,
    reserved: u32,
}

const _: () = assert!(size_of::<Gate>() == 16);

/// The IDT; written once by [`install`] before `lidt`, then read by the CPU.
static mut IDT: [Gate; VECTORS] = [Gate {
    offset_lo: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_hi: 0,
    reserved: 0,
}; VECTORS];

// One 16-byte stub per vector: push a dummy error code where the CPU pushes
// none (so every frame looks alike), push the vector, and join the common
// path, which calls `trap` with the frame and a 16-byte aligned stack.
global_asm!(
    ".pushsection .text.skiff_trap,\"ax\",@progbits",
    ".macro skiff_trap_stub vec, has_ec",
    ".p2align 4",
    ".if \\has_ec == 0",
    "push 0",
    ".endif",
    "push \\vec",
    "jmp 2f",
    ".endm",
    ".p2align 4",
    ".globl __skiff_trap_stubs",
    "__skiff_trap_stubs:",
    "skiff_trap_stub 0, 0",
    "skiff_trap_stub 1, 0",
    "skiff_trap_stub 2, 0",
    "skiff_trap_stub 3, 0",
    "skiff_trap_stub 4, 0",
    "skiff_trap_stub 5, 0",
    "skiff_trap_stub 6, 0",
    "skiff_trap_stub 7, 0",
    "skiff_trap_stub 8, 1",
    "skiff_trap_stub 9, 0",
    "skiff_trap_stub 10, 1",
    "skiff_trap_stub 11, 1",
    "skiff_trap_stub 12, 1",
    "skiff_trap_stub 13, 1",
    "skiff_trap_stub 14, 1",
    "skiff_trap_stub 15, 0",
    "skiff_trap_stub 16, 0",
    "skiff_trap_stub 17, 1",
    "skiff_trap_stub 18, 0",
    "skiff_trap_stub 19, 0",
    "skiff_trap_stub 20, 0",
    "skiff_trap_stub 21, 1",
    "skiff_trap_stub 22, 0",
    "skiff_trap_stub 23, 0",
    "skiff_trap_stub 24, 0",
    "skiff_trap_stub 25, 0",
    "skiff_trap_stub 26, 0",
    "skiff_trap_stub 27, 0",
    "skiff_trap_stub 28, 0",
    "skiff_trap_stub 29, 1",
    "skiff_trap_stub 30, 1",
    "skiff_trap_stub 31, 0",
    ".purgem skiff_trap_stub",
    "2:",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {trap}",
    "ud2",
    ".popsection",
    trap = sym trap,
);

extern "C" {
    /// The first of [`VECTORS`] stubs, [`STUB_SIZE`] bytes apart.
    fn __skiff_trap_stubs();
}

/// Switches to our GDT and reloads CS, DS, ES and SS from it.
fn load_gdt() {
    let gdtr = DescriptorTablePointer {
        limit: (size_of::<[u64; 3]>() - 1) as u16,
        base: GDT.as_ptr() as u64,
    };
    // SAFETY: GDT is a static with valid flat 64-bit code and data
    // descriptors at the selectors in use, so reloading them changes no
    // address translation. The far return pops the two words it pushes; FS
    // and GS are left alone (their bases are the guest's business).
    unsafe {
        asm!(
            "lgdt [{gdtr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:e}",
            "mov es, {ds:e}",
            "mov ss, {ds:e}",
            gdtr = in(reg) &gdtr,
            cs = const CODE_SELECTOR as u64,
            tmp = out(reg) _,
            ds = in(reg) u32::from(DATA_SELECTOR),
            options(preserves_flags),
        );
    }
}

/// An interrupt gate to `handler` in our code segment.
fn gate(handler: u64) -> Gate {
    Gate {
        offset_lo: handler as u16,
        selector: CODE_SELECTOR,
        ist: 0,
        type_attr: 0x8e,
        offset_mid: (handler >> 16) as u16,
        offset_hi: (handler >> 32) as u32,
        reserved: 0,
    }
}

/// The stub that ends the guest on exception `vector`.
fn stub(vector: usize) -> u64 {
    __skiff_trap_stubs as *const () as usize as u64 + vector as u64 * STUB_SIZE
}

/// Loads our GDT, and an IDT whose every exception vector ends the guest
/// via [`trap`].
pub(super) fn install() {
    load_gdt();
    let idt = core::ptr::addr_of_mut!(IDT);
    for vec in 0..VECTORS {
        // SAFETY: `vec < VECTORS`; the runtime is single-threaded and this
        // runs once, before the IDT is loaded, so nothing else accesses IDT.
        unsafe { (*idt)[vec] = gate(stub(vec)) };
    }
    let idtr = DescriptorTablePointer {
        limit: (size_of::<[Gate; VECTORS]>() - 1) as u16,
        base: idt as u64,
    };
    // SAFETY: `idtr` describes IDT, a static that lives for the whole run and
    // whose gates all point at the stubs above.
    unsafe { asm!("lidt [{0}]", in(reg) &idtr, options(readonly, nostack, preserves_flags)) };
}

/// Sends exception `vector` to the guest's own `handler` instead of the
/// stub that ends the guest, and returns that stub's address, for the
/// handler to jump to with the frame as it found it when the exception is
/// not one it handles. None for a vector past the exceptions.
///
/// # Safety
/// `handler` runs on the faulting stack with the CPU's frame (an error code
/// only for the vectors that have one) and must end in `iretq` or in that
/// jump, with every register it found as it found it.
pub unsafe fn set_exception_handler(vector: usize, handler: unsafe extern "C" fn()) -> Option<u64> {
    if vector >= VECTORS {
        return None;
    }
    let idt = core::ptr::addr_of_mut!(IDT);
    // SAFETY: in bounds; single-threaded, and the CPU reads a gate only
    // when it delivers that exception, which this code does not raise.
    unsafe { (*idt)[vector] = gate(handler as usize as u64) };
    Some(stub(vector))
}

/// Set by the first trap, so a fault while reporting one still ends the guest.
static IN_TRAP: AtomicBool = AtomicBool::new(false);

/// Reports the exception in `frame` and halts with status 255.
extern "C" fn trap(frame: &TrapFrame) -> ! {
    if IN_TRAP.swap(true, Ordering::Relaxed) {
        puts(b"skiff-guest: trap while handling a trap\n");
        exit(255);
    }
    let cr2: u64;
    // SAFETY: reading CR2 (the last page-fault address) has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nomem, nostack, preserves_flags)) };
    let vector = frame.vector as usize;
    crate::println!(
        "skiff-guest: trap: type={} ec={:#x} rip={:#x} addr(cr2)={:#x}",
        NAMES.get(vector).copied().unwrap_or("#??"),
        frame.error_code,
        frame.rip,
        cr2,
    );
    // Solo5's `struct trap_regs`, as the HALT cookie: a tender writing a
    // core file puts the faulting rip/rsp in it, so the backtrace starts
    // where the exception happened rather than here.
    let regs = [
        cr2,
        frame.error_code,
        frame.rip,
        frame.cs,
        frame.rflags,
        frame.rsp,
        frame.ss,
    ];
    super::hypercall::halt(255, regs.as_ptr() as u64)
}

/// Mnemonics of the exception vectors, as the SDM names them.
const NAMES: [&str; VECTORS] = [
    "#DE", "#DB", "#NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO", "#TS", "#NP", "#SS",
    "#GP", "#PF", "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25",
    "#26", "#27", "#HV", "#VC", "#SX", "#31",
];
