//! Solo5 hvt hypercalls, boot info and result codes.
//!
//! A hypercall is a 32-bit `OUT` to port `HYPERCALL_PIO_BASE + nr` whose
//! value is the guest-physical address of the argument struct. Fields marked
//! IN are written by the guest, OUT by the tender.

use crate::accel::HcAccel;
use crate::skiff::{HcReqMeta, HcReqNext, HcReqRead, HcRespHead, HcRespWrite};
use core::mem::{offset_of, size_of};

/// The first hypercall port; hypercall `nr` is at `HYPERCALL_PIO_BASE + nr`.
pub const HYPERCALL_PIO_BASE: u16 = 0x500;
/// Number of hypercall ports the tender decodes (`0x500..0x500+MAX`).
pub const HYPERCALL_MAX: u16 = 32;
/// Port a ring-I/O guest kicks (HVT_FEATURE_RING_IO).
pub const RING_IO_KICK_PORT: u16 = 0x600;

/// Guest-physical address of the boot info (and the value of `rdi` at entry).
pub const BOOT_INFO_BASE: u64 = 0x10000;
/// The lowest address a PT_LOAD segment may use.
pub const KERNEL_BASE: u64 = 0x100000;
/// Size of the command-line buffer, including the terminating NUL.
pub const CMDLINE_SIZE: usize = 8192;
/// Largest size of the register dump a HALT cookie may point at.
pub const HALT_COOKIE_MAX: u64 = 512;

/// Host feature: shared-ring network I/O.
pub const HVT_FEATURE_RING_IO: u32 = 1 << 0;

/// Declares the hypercalls once: the [`Hypercall`] enum, its `TryFrom<u16>`,
/// [`Hypercall::ALL`], each one's name, argument struct size, C enumerator
/// and doc-table row, and a compile-time check that every number has a port.
macro_rules! hypercalls {
    ($( $(#[doc = $doc:literal])* $variant:ident = $nr:literal, $name:literal, $arg:ident,
        $c:literal, $owner:literal; )*) => {
        /// Hypercall numbers. Solo5's are 1..=8; skiff's extensions start at
        /// 16 and are only used by guests that see
        /// [`crate::skiff::SKIFF_FEATURE_EXT`]. One table declares them all
        /// (`hypercalls!` in `guest-abi/src/hvt.rs`):
        ///
        /// | nr | name | argument | C enumerator (`skiff_hvt.h`) | host owner (skiff `src/`) |
        /// |----|------|----------|------------------------------|---------------------------|
        $(#[doc = concat!("| ", stringify!($nr), " | ", $name, " | [`", stringify!($arg),
            "`] | `", $c, "` | ", $owner, " |")])*
        #[repr(u16)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Hypercall {
            $( $(#[doc = $doc])* $variant = $nr, )*
        }

        impl Hypercall {
            /// Every hypercall, in number order.
            pub const ALL: &'static [Hypercall] = &[$(Hypercall::$variant),*];

            /// Its name in messages and in Solo5's documentation.
            pub const fn name(self) -> &'static str {
                match self { $(Hypercall::$variant => $name,)* }
            }

            /// The size of its argument struct in guest memory.
            pub const fn arg_size(self) -> usize {
                match self { $(Hypercall::$variant => size_of::<$arg>(),)* }
            }

            /// Its enumerator in the C header `skiff_hvt.h`.
            pub const fn c_name(self) -> &'static str {
                match self { $(Hypercall::$variant => $c,)* }
            }
        }

        impl TryFrom<u16> for Hypercall {
            type Error = u16;
            fn try_from(nr: u16) -> Result<Self, u16> {
                match nr {
                    $($nr => Ok(Self::$variant),)*
                    other => Err(other),
                }
            }
        }

        // Every number has a port the tender decodes.
        $(const _: () = assert!($nr < HYPERCALL_MAX);)*
    };
}

hypercalls! {
    Walltime = 1, "WALLTIME", HcWalltime, "SKIFF_HVT_HC_WALLTIME", "devices/clock.rs";
    Puts = 2, "PUTS", HcPuts, "SKIFF_HVT_HC_PUTS", "devices/console.rs";
    Poll = 3, "POLL", HcPoll, "SKIFF_HVT_HC_POLL", "devices/net.rs, devices/poll.rs";
    BlockWrite = 4, "BLOCK_WRITE", HcBlock, "SKIFF_HVT_HC_BLOCK_WRITE", "devices/block.rs";
    BlockRead = 5, "BLOCK_READ", HcBlock, "SKIFF_HVT_HC_BLOCK_READ", "devices/block.rs";
    NetWrite = 6, "NET_WRITE", HcNet, "SKIFF_HVT_HC_NET_WRITE", "devices/net.rs";
    NetRead = 7, "NET_READ", HcNet, "SKIFF_HVT_HC_NET_READ", "devices/net.rs";
    Halt = 8, "HALT", HcHalt, "SKIFF_HVT_HC_HALT", "devices/mod.rs (ends the run)";
    /// skiff: read the function's request body (see [`crate::skiff`]).
    ReqRead = 16, "REQ_READ", HcReqRead, "SKIFF_HC_REQ_READ", "devices/function.rs";
    /// skiff: write to the function's response (skiff's stdout).
    RespWrite = 17, "RESP_WRITE", HcRespWrite, "SKIFF_HC_RESP_WRITE", "devices/function.rs";
    /// skiff: read request metadata (`Http_*` variables).
    ReqMeta = 18, "REQ_META", HcReqMeta, "SKIFF_HC_REQ_META", "devices/function.rs";
    /// skiff: accelerator generic operation.
    AccelOp = 19, "ACCEL_OP", HcAccel, "SKIFF_HC_ACCEL_OP", "accel/mod.rs";
    /// skiff: set the response's HTTP status and content type.
    RespHead = 20, "RESP_HEAD", HcRespHead, "SKIFF_HC_RESP_HEAD", "devices/function.rs";
    /// skiff: end this request's response and wait for the next request.
    ReqNext = 21, "REQ_NEXT", HcReqNext, "SKIFF_HC_REQ_NEXT", "devices/function.rs";
}

impl Hypercall {
    /// The port a guest writes to for this hypercall.
    pub const fn port(self) -> u16 {
        HYPERCALL_PIO_BASE + self as u16
    }
}

/// Result codes returned in `ret` fields (`solo5_result_t`).
pub mod ret {
    pub const OK: i32 = 0;
    pub const AGAIN: i32 = 1;
    pub const EINVAL: i32 = 2;
    pub const EUNSPEC: i32 = 3;
}

/// Boot information at [`BOOT_INFO_BASE`]; `rdi` points at it on entry.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootInfo {
    /// Guest memory size in bytes.
    pub mem_size: u64,
    /// End of the highest loaded segment, aligned to its `p_align`.
    pub kernel_end: u64,
    /// TSC frequency in Hz.
    pub cpu_cycle_freq: u64,
    /// GPA of the NUL-terminated command line.
    pub cmdline: u64,
    /// GPA of the manifest copy the tender filled in.
    pub mft: u64,
    /// Features the host offers (`HVT_FEATURE_*`, `SKIFF_FEATURE_*`).
    pub host_features: u32,
    /// Features the guest accepts (written by the guest).
    pub guest_features: u32,
    /// GPA of the network ring, or 0.
    pub net_ring: u64,
}

/// WALLTIME: OUT nsecs since the epoch.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcWalltime {
    pub nsecs: u64,
}

/// PUTS: IN a console buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcPuts {
    pub data: u64,
    pub len: u64,
}

/// POLL: IN timeout; OUT ready set (bit per net handle) and result.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcPoll {
    pub timeout_nsecs: u64,
    pub ready_set: u64,
    pub ret: i32,
    pub _pad: u32,
}

/// BLOCK_WRITE and BLOCK_READ: IN handle, offset, buffer; `len` IN (and OUT
/// for reads); OUT result.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcBlock {
    pub handle: u64,
    pub offset: u64,
    pub data: u64,
    pub len: u64,
    pub ret: i32,
    pub _pad: u32,
}

/// NET_WRITE and NET_READ: IN handle and buffer; `len` IN (buffer size) and
/// OUT (frame size) for reads; OUT result.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcNet {
    pub handle: u64,
    pub data: u64,
    pub len: u64,
    pub ret: i32,
    pub _pad: u32,
}

/// HALT: IN cookie (0 or GPA of a register dump) and exit status.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcHalt {
    pub cookie: u64,
    pub exit_status: i32,
    pub _pad: u32,
}

macro_rules! layout {
    ($t:ty, $size:expr $(, $field:ident @ $off:expr)*) => {
        const _: () = assert!(size_of::<$t>() == $size);
        $(const _: () = assert!(offset_of!($t, $field) == $off);)*
    };
}
pub(crate) use layout;
layout!(BootInfo, 56, mem_size @ 0, kernel_end @ 8, cpu_cycle_freq @ 16, cmdline @ 24,
        mft @ 32, host_features @ 40, guest_features @ 44, net_ring @ 48);
layout!(HcWalltime, 8, nsecs @ 0);
layout!(HcPuts, 16, data @ 0, len @ 8);
layout!(HcPoll, 24, timeout_nsecs @ 0, ready_set @ 8, ret @ 16);
layout!(HcBlock, 40, handle @ 0, offset @ 8, data @ 16, len @ 24, ret @ 32);
layout!(HcNet, 32, handle @ 0, data @ 8, len @ 16, ret @ 24);
layout!(HcHalt, 16, cookie @ 0, exit_status @ 8);
