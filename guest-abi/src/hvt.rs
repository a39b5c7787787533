//! Solo5 hvt hypercalls, boot info and result codes.
//!
//! A hypercall is a 32-bit `OUT` to port `HYPERCALL_PIO_BASE + nr` whose
//! value is the guest-physical address of the argument struct. Fields marked
//! IN are written by the guest, OUT by the tender.

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

/// Hypercall numbers. Solo5's are 1..=8; skiff's extensions start at 16 and
/// are only used by guests that see [`crate::skiff::SKIFF_FEATURE_EXT`].
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypercall {
    Walltime = 1,
    Puts = 2,
    Poll = 3,
    BlockWrite = 4,
    BlockRead = 5,
    NetWrite = 6,
    NetRead = 7,
    Halt = 8,
    /// skiff: read the function's request body (see [`crate::skiff`]).
    ReqRead = 16,
    /// skiff: write to the function's response (skiff's stdout).
    RespWrite = 17,
    /// skiff: read request metadata (`Http_*` variables).
    ReqMeta = 18,
    /// skiff: accelerator generic operation.
    AccelOp = 19,
    /// skiff: set the response's HTTP status and content type.
    RespHead = 20,
    /// skiff: end this request's response and wait for the next request.
    ReqNext = 21,
}

impl Hypercall {
    /// The port a guest writes to for this hypercall.
    pub const fn port(self) -> u16 {
        HYPERCALL_PIO_BASE + self as u16
    }
}

impl TryFrom<u16> for Hypercall {
    type Error = u16;
    fn try_from(nr: u16) -> Result<Self, u16> {
        Ok(match nr {
            1 => Self::Walltime,
            2 => Self::Puts,
            3 => Self::Poll,
            4 => Self::BlockWrite,
            5 => Self::BlockRead,
            6 => Self::NetWrite,
            7 => Self::NetRead,
            8 => Self::Halt,
            16 => Self::ReqRead,
            17 => Self::RespWrite,
            18 => Self::ReqMeta,
            19 => Self::AccelOp,
            20 => Self::RespHead,
            21 => Self::ReqNext,
            other => return Err(other),
        })
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
