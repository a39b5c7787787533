//! Devices: one module per device, each owning its hypercalls. `handle`
//! is the dispatch table from a decoded request to its owner.

pub mod clock;
pub mod console;
pub mod function;

use crate::hypercall::{Control, Request};
use crate::memory::GuestMemory;
use crate::vcpu::GuestFault;
use guest_abi::hvt::{ret, Hypercall};
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
}

/// The running devices of one guest.
#[derive(Debug, Default)]
pub struct Devices {
    pub console: console::Console,
    pub function: function::Function,
    /// The accelerator runtime, when the operator enabled it.
    pub accel: Option<crate::accel::Accel>,
}

impl Devices {
    /// Acts on one decoded hypercall.
    pub fn handle(&mut self, req: Request, mem: &GuestMemory) -> Result<Control, Stop> {
        match req {
            Request::Walltime { arg } => clock::walltime(mem, arg)?,
            Request::Puts { arg } => self.console.puts(mem, arg)?,
            Request::Poll { arg, req } => clock::poll(mem, arg, req)?,
            // No block or net device is attached yet: every handle is
            // invalid, which the guest learns as EINVAL.
            Request::BlockWrite { arg, mut req } | Request::BlockRead { arg, mut req } => {
                req.ret = ret::EINVAL;
                write_back(mem, "BLOCK", arg, req)?;
            }
            Request::NetWrite { arg, mut req } | Request::NetRead { arg, mut req } => {
                req.ret = ret::EINVAL;
                write_back(mem, "NET", arg, req)?;
            }
            Request::Halt { status } => return Ok(Control::Halt(status)),
            Request::Extension {
                nr: Hypercall::ReqRead,
                arg,
            } => self.function.req_read(mem, arg)?,
            Request::Extension {
                nr: Hypercall::RespWrite,
                arg,
            } => self.function.resp_write(mem, arg)?,
            Request::Extension {
                nr: Hypercall::ReqMeta,
                arg,
            } => self.function.req_meta(mem, arg)?,
            Request::Extension {
                nr: Hypercall::AccelOp,
                arg,
            } => crate::accel::hypercall(self.accel.as_mut(), mem, arg)?,
            Request::Extension { nr, .. } => {
                return Err(GuestFault::UnknownHypercall(nr as u16).into())
            }
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
