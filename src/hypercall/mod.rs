//! Hypercalls: a KVM exit in, a typed request out ([`decode`]), then the
//! device that owns it acts on it ([`crate::devices::Devices::handle`]).
//! Neither step touches KVM, so both are unit-tested and fuzzed directly.
//!
//! Where hypercall N goes: the table on [`guest_abi::hvt::Hypercall`]
//! (declared once, in `guest-abi/src/hvt.rs`) names each one's argument
//! struct and owner; [`crate::devices::Devices::handle`] is the dispatch.

mod fault;

pub use fault::GuestFault;

use crate::memory::{Gpa, GuestMemory};
use crate::vcpu::Exit;
use guest_abi::hvt::{
    HcBlock, HcHalt, HcNet, HcPoll, HcPuts, Hypercall, HYPERCALL_MAX, HYPERCALL_PIO_BASE,
};

/// A decoded hypercall: the argument struct copied out of guest memory.
/// Buffers it names are checked by the handler through the same accessor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Walltime {
        arg: Gpa,
    },
    Puts {
        arg: HcPuts,
    },
    Poll {
        arg: Gpa,
        req: HcPoll,
    },
    BlockWrite {
        arg: Gpa,
        req: HcBlock,
    },
    BlockRead {
        arg: Gpa,
        req: HcBlock,
    },
    NetWrite {
        arg: Gpa,
        req: HcNet,
    },
    NetRead {
        arg: Gpa,
        req: HcNet,
    },
    Halt {
        status: i32,
    },
    /// A skiff extension hypercall; its owner reads its own argument.
    Extension {
        nr: Hypercall,
        arg: Gpa,
    },
}

/// What the vCPU loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Halt(i32),
}

fn read<T: vm_memory::ByteValued>(
    mem: &GuestMemory,
    call: Hypercall,
    arg: Gpa,
) -> Result<T, GuestFault> {
    mem.read_obj(arg).map_err(|err| GuestFault::BadArgument {
        call: call.name(),
        err,
    })
}

/// Turns an exit into a hypercall request, or the fault that ends the
/// guest; `None` for an exit that needs nothing (a signal's interruption).
/// Only a 32-bit `OUT` to a hypercall port is a hypercall.
pub fn decode(exit: &Exit, mem: &GuestMemory) -> Result<Option<Request>, GuestFault> {
    let (port, size, data) = match *exit {
        Exit::IoOut { port, size, data } => (port, size, data),
        Exit::Interrupted => return Ok(None),
        Exit::IoIn { port, size } => return Err(GuestFault::BadIn { port, size }),
        // Inside memory, only a write to a host-read-only page exits.
        Exit::Mmio { addr, .. } if mem.check(Gpa(addr), 1).is_ok() => {
            return Err(GuestFault::ReadOnlyWrite { addr })
        }
        Exit::Mmio { addr, write } => return Err(GuestFault::Mmio { addr, write }),
        Exit::Hlt => return Err(GuestFault::Hlt),
        Exit::Shutdown => return Err(GuestFault::TripleFault),
        Exit::FailEntry(r) => return Err(GuestFault::FailEntry(r)),
        Exit::InternalError(s) => return Err(GuestFault::InternalError(s)),
        Exit::TranslationFault => return Err(GuestFault::TranslationFault),
        // Reached only when no debugger asked for it (vmm::RunHook::on_debug).
        Exit::Debug => return Err(GuestFault::Unhandled(kvm_bindings::KVM_EXIT_DEBUG)),
        Exit::Other(r) => return Err(GuestFault::Unhandled(r)),
    };
    if size != 4 || !(HYPERCALL_PIO_BASE..HYPERCALL_PIO_BASE + HYPERCALL_MAX).contains(&port) {
        return Err(GuestFault::BadOut { port, size });
    }
    let nr = port - HYPERCALL_PIO_BASE;
    let call = Hypercall::try_from(nr).map_err(GuestFault::UnknownHypercall)?;
    let arg = Gpa(u64::from(u32::from_le_bytes(data)));
    Ok(Some(match call {
        Hypercall::Walltime => {
            // OUT only: nothing to copy out, but the whole struct must fit.
            mem.check(arg, call.arg_size() as u64)
                .map_err(|err| GuestFault::BadArgument {
                    call: call.name(),
                    err,
                })?;
            Request::Walltime { arg }
        }
        Hypercall::Puts => Request::Puts {
            arg: read(mem, call, arg)?,
        },
        Hypercall::Poll => Request::Poll {
            arg,
            req: read(mem, call, arg)?,
        },
        Hypercall::BlockWrite => Request::BlockWrite {
            arg,
            req: read(mem, call, arg)?,
        },
        Hypercall::BlockRead => Request::BlockRead {
            arg,
            req: read(mem, call, arg)?,
        },
        Hypercall::NetWrite => Request::NetWrite {
            arg,
            req: read(mem, call, arg)?,
        },
        Hypercall::NetRead => Request::NetRead {
            arg,
            req: read(mem, call, arg)?,
        },
        Hypercall::Halt => {
            let h: HcHalt = read(mem, call, arg)?;
            Request::Halt {
                status: h.exit_status,
            }
        }
        // The extensions' owners read their own argument structs.
        nr @ (Hypercall::ReqRead
        | Hypercall::RespWrite
        | Hypercall::ReqMeta
        | Hypercall::RespHead
        | Hypercall::ReqNext
        | Hypercall::AccelOp) => Request::Extension { nr, arg },
    }))
}

#[cfg(test)]
mod tests;
