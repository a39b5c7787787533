//! The guest mistakes that end a run, shared by the decoder, the devices
//! and the accelerator layer (none of which needs the vCPU for them).

use thiserror::Error;

/// Something the guest did that ends it (Solo5 ends the guest for these).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GuestFault {
    #[error("invalid port access: OUT of {size} bytes to port 0x{port:x}")]
    BadOut { port: u16, size: u8 },
    #[error("invalid port access: IN of {size} bytes from port 0x{port:x}")]
    BadIn { port: u16, size: u8 },
    #[error("unknown hypercall {0}")]
    UnknownHypercall(u16),
    #[error("hypercall {call}: {err}")]
    BadArgument {
        call: &'static str,
        err: crate::memory::OutOfRange,
    },
    #[error("memory access outside guest memory at 0x{addr:x} ({})", if *.write { "write" } else { "read" })]
    Mmio { addr: u64, write: bool },
    #[error("write to read-only guest memory at 0x{addr:x} (the image's text or rodata)")]
    ReadOnlyWrite { addr: u64 },
    #[error("write to read-only guest memory (host/guest translation fault)")]
    TranslationFault,
    #[error("the guest halted the CPU (HLT) with no way to wake it")]
    Hlt,
    #[error("triple fault (the guest could not handle an exception)")]
    TripleFault,
    #[error("KVM entry failure, reason 0x{0:x}")]
    FailEntry(u64),
    #[error("KVM internal error, suberror {0} (an instruction KVM could not emulate)")]
    InternalError(u32),
    #[error("unhandled KVM exit reason {0}")]
    Unhandled(u32),
}
