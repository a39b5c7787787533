//! The console: PUTS writes guest bytes to skiff's stdout, unchanged and
//! unbuffered (Solo5 guests print their own "Solo5:" lines this way).

use super::Stop;
use crate::memory::{Gpa, GuestMemory};
use crate::vcpu::GuestFault;
use guest_abi::hvt::HcPuts;
use std::os::fd::BorrowedFd;
use vm_memory::WriteVolatile;

#[derive(Debug, Default)]
pub struct Console;

impl Console {
    pub fn puts(&mut self, mem: &GuestMemory, arg: HcPuts) -> Result<(), Stop> {
        let buf = mem
            .slice(Gpa(arg.data), arg.len)
            .map_err(|err| GuestFault::BadArgument { call: "PUTS", err })?;
        // SAFETY: fd 1 stays open for the life of the process.
        let mut out = unsafe { BorrowedFd::borrow_raw(1) };
        out.write_all_volatile(&buf).map_err(|e| match e {
            vm_memory::VolatileMemoryError::IOError(io) => Stop::Stdout(io),
            other => Stop::Stdout(std::io::Error::other(other.to_string())),
        })
    }
}
