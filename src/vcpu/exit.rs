//! KVM exits as plain data. Nothing here touches KVM, so the hypercall
//! layer can be tested and fuzzed with made-up exits (the faults they can
//! mean are `hypercall::GuestFault`).

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
    /// KVM_EXIT_DEBUG: a #BP or single step that a debugger asked KVM to
    /// report (KVM_SET_GUEST_DEBUG); the run hook decides (see vmm.rs).
    Debug,
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
