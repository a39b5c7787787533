//! The console: PUTS writes guest bytes to skiff's stdout, unchanged and
//! unbuffered (Solo5 guests print their own "Solo5:" lines this way).
//!
//! A guest whose ABI1 note marks it a function (`ABI_FLAG_FUNCTION`,
//! `guest_abi::entry!(main, function)`) has its response on stdout, so its
//! console goes to stderr: a panic message never enters a response, under
//! `skiff run` (the classic watchdog), `skiff call` and `skiff serve`.
//! Solo5 guests carry 0 there and keep solo5-hvt's behaviour.

use super::Stop;
use crate::hypercall::GuestFault;
use crate::memory::{Gpa, GuestMemory};
use guest_abi::hvt::HcPuts;
use std::os::fd::RawFd;

/// Where the guest's console goes: skiff's stdout unless told otherwise.
#[derive(Debug)]
pub struct Console {
    fd: RawFd,
}

impl Default for Console {
    fn default() -> Self {
        Self { fd: 1 }
    }
}

impl Console {
    /// Where an image's console goes: stderr for a function (see the
    /// module docs), stdout otherwise.
    pub fn for_image(function: bool) -> Self {
        Self {
            fd: if function { 2 } else { 1 },
        }
    }

    /// A console writing to `fd`, which must stay open as long as it.
    pub fn to_fd(fd: RawFd) -> Self {
        Self { fd }
    }

    pub fn puts(&mut self, mem: &GuestMemory, arg: HcPuts) -> Result<(), Stop> {
        let buf = mem
            .slice(Gpa(arg.data), arg.len)
            .map_err(|err| GuestFault::BadArgument { call: "PUTS", err })?;
        // A terminating signal cuts a write to a stuck reader short (the
        // vCPU loop then ends the run), so the result code is not needed.
        super::function::write_all(self.fd, &buf)
            .map(|_| ())
            .map_err(Stop::Stdout)
    }
}
