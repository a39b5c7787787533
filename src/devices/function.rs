//! Function I/O: the request body is skiff's stdin, the response is skiff's
//! stdout, request metadata is the OpenFaaS watchdog's `Http_*` variables.
//!
//! The hot path is one read(2) or write(2) per hypercall, straight between
//! the fd and guest memory (through the checked accessor), with no copy
//! and no thread: the guest's buffer size sets the batch size.

use super::{write_back, Stop};
use crate::memory::{Gpa, GuestMemory};
use crate::vcpu::GuestFault;
use guest_abi::hvt::ret;
use guest_abi::skiff::{self, HcReqMeta, HcReqRead, HcRespWrite, REQ_META_NAME_MAX};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use thiserror::Error;
use vm_memory::{ReadVolatile, VolatileMemoryError, WriteVolatile};

/// The only environment variables a guest can see, with this prefix cut.
const META_PREFIX: &[u8] = b"Http_";

/// Why function I/O ended the run.
#[derive(Debug, Error)]
pub enum FunctionError {
    #[error("the request body exceeds the function's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("cannot read the request from stdin: {0}")]
    Stdin(std::io::Error),
}

/// The request and response of one function run.
#[derive(Debug, Default)]
pub struct Function {
    /// Body bytes read so far.
    read: u64,
    /// The smallest non-zero limit the guest gave (0: none).
    limit: u64,
    /// stdin reported end of file: never read it again (a terminal would
    /// block once more).
    eof: bool,
    /// `Http_*` variables at start-up, prefix removed: (name, value).
    meta: Vec<(Vec<u8>, Vec<u8>)>,
}

fn io_error(e: VolatileMemoryError) -> std::io::Error {
    match e {
        VolatileMemoryError::IOError(io) => io,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Makes sure fds 0, 1 and 2 are open before skiff opens anything, so a
/// file skiff opens (the image, /dev/kvm) never lands on a closed one and
/// gets the guest's request or response. A closed one becomes /dev/null,
/// read-only: a closed stdin is an empty request, and writing to a closed
/// stdout fails (EBADF) rather than vanishing.
pub fn reserve_stdio() {
    for fd in 0..=2 {
        // SAFETY: an all-zero stat is valid for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes only into `st`; a closed fd gives EBADF.
        if unsafe { libc::fstat(fd, &mut st) } == 0 {
            continue;
        }
        // SAFETY: a NUL-terminated path; the lowest free fd is `fd` because
        // every lower one is open by now. It is deliberately never closed.
        unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    }
}

/// Writes all of `buf` to stdout, retrying short writes and interruptions,
/// except that a pending SIGINT/SIGTERM stops it (AGAIN) so a stuck reader
/// cannot keep skiff from exiting.
pub(crate) fn write_all(
    buf: &vm_memory::VolatileSlice<'_, impl vm_memory::bitmap::BitmapSlice>,
) -> std::io::Result<i32> {
    // SAFETY: fd 1 stays open for the life of the process.
    let mut out = unsafe { BorrowedFd::borrow_raw(1) };
    let mut done = 0;
    while done < buf.len() {
        let rest = buf
            .offset(done)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        match out.write_volatile(&rest).map_err(io_error) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                if crate::vcpu::signals::pending().is_some() {
                    return Ok(ret::AGAIN);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(ret::OK)
}

impl Function {
    /// Captures the request metadata (the `Http_*` variables only).
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars_os())
    }

    /// Keeps the `Http_*` variables of `vars`, prefix cut.
    fn from_vars(vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Self {
        let meta = vars
            .filter_map(|(k, v)| {
                let k = k.as_bytes().strip_prefix(META_PREFIX)?.to_vec();
                Some((k, v.as_bytes().to_vec()))
            })
            .collect();
        Self {
            meta,
            ..Self::default()
        }
    }

    /// REQ_READ: one read(2) from stdin into the guest's buffer.
    pub fn req_read(&mut self, mem: &GuestMemory, arg: Gpa) -> Result<(), Stop> {
        let call = "REQ_READ";
        let mut req: HcReqRead = mem
            .read_obj(arg)
            .map_err(|err| GuestFault::BadArgument { call, err })?;
        if req.limit != 0 && (self.limit == 0 || req.limit < self.limit) {
            self.limit = req.limit;
        }
        req.ret = ret::OK;
        if self.eof {
            req.len = 0;
        } else {
            match mem.slice_mut(Gpa(req.data), req.len) {
                Err(_) => req.ret = ret::EINVAL,
                Ok(mut buf) => {
                    // SAFETY: fd 0 stays open for the life of the process.
                    let mut stdin = unsafe { BorrowedFd::borrow_raw(0) };
                    match stdin.read_volatile(&mut buf).map_err(io_error) {
                        Ok(n) => {
                            self.eof = n == 0 && req.len != 0;
                            self.read += n as u64;
                            req.len = n as u64;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                            req.len = 0;
                            req.ret = ret::AGAIN;
                        }
                        Err(e) => return Err(FunctionError::Stdin(e).into()),
                    }
                }
            }
        }
        if self.limit != 0 && self.read > self.limit {
            return Err(FunctionError::TooLarge { limit: self.limit }.into());
        }
        Ok(write_back(mem, call, arg, req)?)
    }

    /// RESP_WRITE: the guest's buffer to stdout, all of it.
    pub fn resp_write(&mut self, mem: &GuestMemory, arg: Gpa) -> Result<(), Stop> {
        let call = "RESP_WRITE";
        let mut req: HcRespWrite = mem
            .read_obj(arg)
            .map_err(|err| GuestFault::BadArgument { call, err })?;
        req.ret = match mem.slice(Gpa(req.data), req.len) {
            Err(_) => ret::EINVAL,
            Ok(buf) => write_all(&buf).map_err(Stop::Stdout)?,
        };
        Ok(write_back(mem, call, arg, req)?)
    }

    /// REQ_META: the value of `Http_<name>` into the guest's buffer.
    pub fn req_meta(&mut self, mem: &GuestMemory, arg: Gpa) -> Result<(), Stop> {
        let call = "REQ_META";
        let mut req: HcReqMeta = mem
            .read_obj(arg)
            .map_err(|err| GuestFault::BadArgument { call, err })?;
        req.ret = self.lookup(mem, &mut req);
        Ok(write_back(mem, call, arg, req)?)
    }

    fn lookup(&self, mem: &GuestMemory, req: &mut HcReqMeta) -> i32 {
        let mut name = [0u8; REQ_META_NAME_MAX as usize];
        if req.name_len == 0 || req.name_len > REQ_META_NAME_MAX {
            return ret::EINVAL;
        }
        let name = &mut name[..req.name_len as usize];
        if mem.read_bytes(name, Gpa(req.name)).is_err()
            || !name.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            return ret::EINVAL;
        }
        let Some((_, value)) = self.meta.iter().find(|(k, _)| k == name) else {
            return skiff::ret::NOT_FOUND;
        };
        let size = value.len() as u64;
        if size > req.len {
            req.len = size;
            return skiff::ret::TOO_SMALL;
        }
        if mem.write_bytes(value, Gpa(req.data)).is_err() {
            return ret::EINVAL;
        }
        req.len = size;
        ret::OK
    }
}

#[cfg(test)]
#[path = "function_tests.rs"]
mod tests;
