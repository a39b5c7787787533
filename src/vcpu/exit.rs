//! KVM exits as plain data, and the guest faults they can mean. Nothing
//! here touches KVM, so the hypercall layer can be tested and fuzzed with
//! made-up exits.

use thiserror::Error;

/// One vCPU exit, decoded from `kvm_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `OUT`: `size` bytes of `data` (little-endian) to `port`.
    IoOut {
        port: u16,
        size: u8,
        data: [u8; 4],
    },
    IoIn {
        port: u16,
        size: u8,
    },
    Mmio {
        addr: u64,
        write: bool,
    },
    Hlt,
    Shutdown,
    FailEntry(u64),
    InternalError(u32),
    /// `KVM_RUN` returned EFAULT: guest memory the host cannot back.
    TranslationFault,
    /// A signal interrupted `KVM_RUN`.
    Interrupted,
    Other(u32),
}

impl Exit {
    /// An `OUT` exit from KVM's data bytes (string I/O is kept as its size).
    pub fn io_out(port: u16, bytes: &[u8]) -> Self {
        let mut data = [0u8; 4];
        let n = bytes.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        Exit::IoOut {
            port,
            size: bytes.len().min(255) as u8,
            data,
        }
    }
}

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
