//! A minimal runtime for `#![no_std]` Rust guests of the hvt ABI.
//!
//! A guest is a `#![no_main]` binary built for `x86_64-unknown-linux-gnu`
//! with the project's linker script (see `guests/`). It names its main
//! function and its devices, and the runtime does the rest:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! guest_abi::manifest!(block "storage");
//! guest_abi::entry!(main);
//!
//! fn main(ctx: &guest_abi::rt::Ctx) -> i32 {
//!     guest_abi::println!("args: {}", ctx.cmdline());
//!     0
//! }
//! ```
//!
//! This library defines no C symbols, lang items or entry point of its own:
//! [`entry!`](crate::entry!) emits them into the guest binary. So the crate
//! still builds and links into an ordinary `std` program (the host, `cargo
//! clippy --all-features`) with the `rt` feature on.

pub mod accel;
mod console;
pub mod function;
mod hypercall;
pub mod mem;
mod notes;
mod time;
mod trap;
pub use trap::set_exception_handler;

use core::panic::PanicInfo;
use core::sync::atomic::{AtomicBool, Ordering};

pub use console::{_print, Console};
pub use hypercall::{
    abort, block_read, block_write, exit, hypercall, net_read, net_write, poll, puts, walltime_ns,
};
pub use notes::{MftNote, NoteBytes, MFT_NOTE_PAD};
pub use time::{monotonic_ns, rdtsc};

use crate::hvt::{BootInfo, CMDLINE_SIZE};
use crate::manifest::{MftEntry, MftHeader, MFT_MAX_ENTRIES};

/// What the guest's main function learns about its world.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    boot: &'static BootInfo,
    cmdline: &'static [u8],
    devices: &'static [MftEntry],
}

impl Ctx {
    /// # Safety
    ///
    /// `boot` must be the boot info the tender placed, with its command line
    /// and manifest, all of which stay unchanged for the rest of the run.
    unsafe fn from_boot_info(boot: *const BootInfo) -> Self {
        // SAFETY: the caller guarantees `boot`; the tender maps it read-only
        // and never changes it after entry.
        let boot: &'static BootInfo = unsafe { &*boot };
        let cmdline = if boot.cmdline == 0 {
            &[][..]
        } else {
            let p = boot.cmdline as usize as *const u8;
            let mut len = 0;
            // SAFETY: the command line is a NUL-terminated string in a
            // CMDLINE_SIZE buffer; the bound stops at the buffer's end even
            // if the NUL were missing.
            while len < CMDLINE_SIZE - 1 && unsafe { *p.add(len) } != 0 {
                len += 1;
            }
            // SAFETY: the `len` bytes just scanned are readable and constant.
            unsafe { core::slice::from_raw_parts(p, len) }
        };
        let devices = if boot.mft == 0 {
            &[][..]
        } else {
            let hdr = boot.mft as usize as *const MftHeader;
            // SAFETY: the tender's manifest copy is a header followed by
            // `entries` 8-aligned entries; the count is clamped to the ABI
            // maximum so a bad value cannot reach past the copy's region.
            unsafe {
                let n = (*hdr).entries.min(MFT_MAX_ENTRIES) as usize;
                core::slice::from_raw_parts(hdr.add(1).cast::<MftEntry>(), n)
            }
        };
        Self {
            boot,
            cmdline,
            devices,
        }
    }

    /// The command line (the tender's arguments after the image, joined by
    /// spaces), up to its first byte that is not valid UTF-8.
    pub fn cmdline(&self) -> &'static str {
        match core::str::from_utf8(self.cmdline) {
            Ok(s) => s,
            // The prefix before the first invalid byte is valid UTF-8.
            Err(e) => core::str::from_utf8(&self.cmdline[..e.valid_up_to()]).unwrap_or(""),
        }
    }

    /// The command line as raw bytes, without the NUL.
    pub fn cmdline_bytes(&self) -> &'static [u8] {
        self.cmdline
    }

    /// Guest memory size in bytes.
    pub fn mem_size(&self) -> u64 {
        self.boot.mem_size
    }

    /// End of the loaded image; memory from here to the stack is free.
    pub fn kernel_end(&self) -> u64 {
        self.boot.kernel_end
    }

    /// TSC frequency in Hz.
    pub fn tsc_freq(&self) -> u64 {
        self.boot.cpu_cycle_freq
    }

    /// Features the host offers (`HVT_FEATURE_*`, `SKIFF_FEATURE_*`).
    pub fn host_features(&self) -> u32 {
        self.boot.host_features
    }

    /// The boot info itself.
    pub fn boot_info(&self) -> &'static BootInfo {
        self.boot
    }

    /// The manifest as the tender filled it in; index = handle, entry 0 is
    /// the reserved one.
    pub fn devices(&self) -> &'static [MftEntry] {
        self.devices
    }

    /// The handle and entry of the device named `name`.
    pub fn device(&self, name: &str) -> Option<(u64, &'static MftEntry)> {
        let i = self
            .devices
            .iter()
            .position(|e| e.name_bytes() == Some(name.as_bytes()))?;
        Some((i as u64, &self.devices[i]))
    }
}

/// Runs the guest: installs the trap handlers, starts the clock, calls
/// `main` and halts with its return value. Called by the `_start` that
/// [`entry!`](crate::entry!) emits.
///
/// # Safety
///
/// Call once, at entry, with the boot info pointer the tender passed in rdi.
#[doc(hidden)]
pub unsafe fn start(boot: *const BootInfo, main: fn(&Ctx) -> i32) -> ! {
    trap::install();
    // SAFETY: the caller passes the tender's boot info pointer.
    let ctx = unsafe { Ctx::from_boot_info(boot) };
    time::init(ctx.tsc_freq());
    exit(main(&ctx))
}

/// Set by the first panic, so a panic while printing one still ends the guest.
static PANICKING: AtomicBool = AtomicBool::new(false);

/// Prints the panic message and aborts (status 255). The guest's
/// `#[panic_handler]`, emitted by [`entry!`](crate::entry!), calls this.
#[doc(hidden)]
pub fn panic(info: &PanicInfo<'_>) -> ! {
    if PANICKING.swap(true, Ordering::Relaxed) {
        puts(b"skiff-guest: panic while panicking\n");
        abort();
    }
    match info.location() {
        Some(l) => crate::println!(
            "skiff-guest: panic at {}:{}:{}: {}",
            l.file(),
            l.line(),
            l.column(),
            info.message()
        ),
        None => crate::println!("skiff-guest: panic: {}", info.message()),
    }
    abort()
}

/// Makes `$main` (`fn(&Ctx) -> i32`) the guest's main function.
///
/// Emits, into the guest binary, everything that must exist exactly once:
/// the `_start` entry point (it aligns the stack and calls [`start`]), the
/// ABI1 note, the `#[panic_handler]` and the C memory functions (`memcpy`,
/// `memmove`, `memset`, `memcmp`, `bcmp`) that compiled code calls. Pair it
/// with one [`manifest!`](crate::manifest!).
///
/// `entry!(main, function)` marks the guest a function in its ABI1 note
/// ([`crate::elf::ABI_FLAG_FUNCTION`]): its response is what it writes
/// with RESP_WRITE, and skiff sends its console (panic messages included)
/// to stderr, never into the response.
#[macro_export]
macro_rules! entry {
    ($main:path, function) => {
        $crate::entry!(@with $main, $crate::elf::AbiNote::hvt_function());
    };
    ($main:path) => {
        $crate::entry!(@with $main, $crate::elf::AbiNote::hvt());
    };
    (@with $main:path, $note:expr) => {
        // At module level, not in a `const _` block: global_asm! must be.
        #[no_mangle]
        #[used]
        #[link_section = ".note.solo5.abi"]
        static __SKIFF_ABI1_NOTE: $crate::elf::AbiNote = $note;

        // The tender enters here with rdi = boot info and rsp =
        // mem_size - 8. Clear rbp to end backtraces, give the callee
        // the 16-byte alignment the SysV ABI expects, never return.
        ::core::arch::global_asm!(
            ".pushsection .text._start,\"ax\",@progbits",
            ".globl _start",
            ".type _start, @function",
            "_start:",
            "xor ebp, ebp",
            "and rsp, -16",
            "call {start}",
            "ud2",
            ".size _start, . - _start",
            ".popsection",
            start = sym __skiff_start,
        );

        extern "C" fn __skiff_start(boot: *const $crate::hvt::BootInfo) -> ! {
            let main: fn(&$crate::rt::Ctx) -> i32 = $main;
            // SAFETY: `_start` passes the tender's rdi, once.
            unsafe { $crate::rt::start(boot, main) }
        }

        #[panic_handler]
        fn __skiff_panic(info: &::core::panic::PanicInfo<'_>) -> ! {
            $crate::rt::panic(info)
        }

        #[no_mangle]
        unsafe extern "C" fn memcpy(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
            // SAFETY: the C contract of memcpy is the caller's.
            unsafe { $crate::rt::mem::copy(d, s, n) }
        }
        #[no_mangle]
        unsafe extern "C" fn memmove(d: *mut u8, s: *const u8, n: usize) -> *mut u8 {
            // SAFETY: the C contract of memmove is the caller's.
            unsafe { $crate::rt::mem::copy_overlapping(d, s, n) }
        }
        #[no_mangle]
        unsafe extern "C" fn memset(d: *mut u8, c: i32, n: usize) -> *mut u8 {
            // SAFETY: the C contract of memset is the caller's.
            unsafe { $crate::rt::mem::fill(d, c, n) }
        }
        #[no_mangle]
        unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            // SAFETY: the C contract of memcmp is the caller's.
            unsafe { $crate::rt::mem::compare(a, b, n) }
        }
        #[no_mangle]
        unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
            // SAFETY: the C contract of bcmp is the caller's.
            unsafe { $crate::rt::mem::compare(a, b, n) }
        }
    };
}
