//! Devices: one module per device, each owning its hypercalls. `handle`
//! is the dispatch table from a decoded request to its owner.

pub mod attach;
pub mod block;
pub mod clock;
pub mod console;
pub mod function;
pub mod net;
pub mod poll;

use crate::hypercall::GuestFault;
use crate::hypercall::{Control, Request};
use crate::memory::GuestMemory;
use guest_abi::hvt::Hypercall;
use thiserror::Error;

/// Why a hypercall ended the run.
#[derive(Debug, Error)]
pub enum Stop {
    #[error("{0}")]
    Fault(#[from] GuestFault),
    #[error("cannot write the guest's output to stdout: {0}")]
    Stdout(std::io::Error),
    #[error("{0}")]
    Function(#[from] function::FunctionError),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// A host-side device failure that ends the run (never a guest mistake).
#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("{call}: backing storage I/O failed: {err}")]
    BlockIo {
        call: &'static str,
        err: std::io::Error,
    },
    #[error("{call}: backing storage ended after {done} of {len} bytes")]
    BlockShort {
        call: &'static str,
        done: u64,
        len: u64,
    },
    #[error("{call}: network I/O failed: {err}")]
    NetIo {
        call: &'static str,
        err: std::io::Error,
    },
    #[error("POLL: waiting failed: {0}")]
    Poll(std::io::Error),
}

/// The running devices of one guest.
#[derive(Debug, Default)]
pub struct Devices {
    pub console: console::Console,
    pub function: function::Function,
    /// The accelerator runtime, when the operator enabled it.
    pub accel: Option<crate::accel::Accel>,
    pub block: block::BlockDevices,
    pub net: net::NetDevices,
}

impl Devices {
    /// Acts on one decoded hypercall.
    pub fn handle(&mut self, req: Request, mem: &GuestMemory) -> Result<Control, Stop> {
        match req {
            Request::Walltime { arg } => clock::walltime(mem, arg)?,
            Request::Puts { arg } => self.console.puts(mem, arg)?,
            Request::Poll { arg, req } => self.net.poll(mem, arg, req)?,
            Request::BlockWrite { arg, req } => self.block.io(mem, block::Dir::Write, arg, req)?,
            Request::BlockRead { arg, req } => self.block.io(mem, block::Dir::Read, arg, req)?,
            Request::NetWrite { arg, req } => self.net.write(mem, arg, req)?,
            Request::NetRead { arg, req } => self.net.read(mem, arg, req)?,
            Request::Halt { status } => return Ok(Control::Halt(status)),
            // Exhaustive on purpose: a new hypercall does not compile
            // until it is routed to its owner.
            Request::Extension { nr, arg } => match nr {
                Hypercall::ReqRead => self.function.req_read(mem, arg)?,
                Hypercall::RespWrite => self.function.resp_write(mem, arg)?,
                Hypercall::ReqMeta => self.function.req_meta(mem, arg)?,
                Hypercall::RespHead => self.function.resp_head(mem, arg)?,
                Hypercall::ReqNext => self.function.req_next(mem, arg)?,
                Hypercall::AccelOp => crate::accel::hypercall(self.accel.as_mut(), mem, arg)?,
                Hypercall::Walltime
                | Hypercall::Puts
                | Hypercall::Poll
                | Hypercall::BlockWrite
                | Hypercall::BlockRead
                | Hypercall::NetWrite
                | Hypercall::NetRead
                | Hypercall::Halt => return Err(GuestFault::UnknownHypercall(nr as u16).into()),
            },
        }
        Ok(Control::Continue)
    }
}

/// Writes a hypercall's argument struct back (its OUT fields).
pub(crate) fn write_back<T: vm_memory::ByteValued>(
    mem: &GuestMemory,
    call: &'static str,
    arg: crate::memory::Gpa,
    val: T,
) -> Result<(), GuestFault> {
    mem.write_obj(val, arg)
        .map_err(|err| GuestFault::BadArgument { call, err })
}
