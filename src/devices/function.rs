//! Function I/O: the request body is skiff's stdin, the response is skiff's
//! stdout, request metadata is the OpenFaaS watchdog's `Http_*` variables.
//!
//! The hot path is one read(2) or write(2) per hypercall, straight between
//! the fd and guest memory (through the checked accessor), with no copy
//! and no thread: the guest's buffer size sets the batch size.

use super::{write_back, Stop};
use crate::hypercall::GuestFault;
use crate::memory::{Gpa, GuestMemory};
use crate::signals;
use guest_abi::hvt::ret;
use guest_abi::skiff::{
    self, HcReqMeta, HcReqNext, HcReqRead, HcRespHead, HcRespWrite, REQ_META_NAME_MAX,
    REQ_READ_FILL, RESP_HEAD_TYPE_MAX,
};
use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use thiserror::Error;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

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
    /// stdout starts with a head frame made by this: `skiff serve` asked
    /// for it, to learn the status and type before the body.
    framed: Option<HeadFrame>,
    /// The head is settled: RESP_HEAD was called, or a body byte written.
    head_done: bool,
    /// How to end this request and take the next (REQ_NEXT); `None`:
    /// guests are not kept warm here.
    next: Option<Box<dyn NextRequest>>,
}

/// Where REQ_NEXT's next request comes from (a warm pool worker:
/// pool/warm.rs). The device only asks; how requests arrive is not its
/// business.
pub trait NextRequest {
    /// Ends the current request (its response is complete) and waits for
    /// the next one, whose stdio it puts on fds 0-2: that request's
    /// variables, or `None` when there will be none (the server is
    /// stopping).
    fn next(&mut self) -> Option<Vars>;
}

/// How a framed response starts: the head frame for a status (0: the
/// default) and a content type (pool/proto.rs writes `skiff serve`'s).
pub type HeadFrame = fn(u16, &[u8]) -> Vec<u8>;

/// Request variables (`Http_*` and the pool's own), as name and value.
pub type Vars = Vec<(OsString, OsString)>;

impl std::fmt::Debug for dyn NextRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NextRequest")
    }
}

fn io_error(e: VolatileMemoryError) -> std::io::Error {
    match e {
        VolatileMemoryError::IOError(io) => io,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Writes all of `buf` to `fd` (stdout for responses and the console),
/// retrying short writes and interruptions, except that a pending
/// SIGINT/SIGTERM stops it (AGAIN) so a stuck reader cannot keep skiff from
/// exiting.
pub(crate) fn write_all(
    fd: std::os::fd::RawFd,
    buf: &VolatileSlice<'_, impl BitmapSlice>,
) -> std::io::Result<i32> {
    // SAFETY: the caller's fd (stdout or the console's) stays open for the
    // life of the device.
    let mut out = unsafe { BorrowedFd::borrow_raw(fd) };
    let mut done = 0;
    while done < buf.len() {
        let rest = buf
            .offset(done)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        match out.write_volatile(&rest).map_err(io_error) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            // A signal cuts a blocked write short (EINTR, or a partial count
            // if some bytes went): stop if it is a terminating one.
            Ok(n) => {
                done += n;
                if done < buf.len() && signals::pending().is_some() {
                    return Ok(ret::AGAIN);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                if signals::pending().is_some() {
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
    pub fn from_vars(vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Self {
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

    /// Keeps the guest warm: REQ_NEXT ends the request through `next`.
    pub fn warm(mut self, next: Box<dyn NextRequest>) -> Self {
        self.next = Some(next);
        self
    }

    /// REQ_NEXT: this response is complete; the next request becomes the
    /// current one (fresh body, metadata and head; same framing and hook).
    pub fn req_next(&mut self, mem: &GuestMemory, arg: Gpa) -> Result<(), Stop> {
        let call = "REQ_NEXT";
        let mut req: HcReqNext = mem
            .read_obj(arg)
            .map_err(|err| GuestFault::BadArgument { call, err })?;
        let next = self.next.as_mut().and_then(|n| n.next());
        req.ret = match next {
            Some(vars) => {
                let fresh = Function::from_vars(vars.into_iter());
                self.meta = fresh.meta;
                (self.read, self.limit, self.eof, self.head_done) = (0, 0, false, false);
                ret::OK
            }
            None => ret::EUNSPEC,
        };
        Ok(write_back(mem, call, arg, req)?)
    }

    /// Starts stdout with a head frame made by `frame`.
    pub fn framed(mut self, frame: HeadFrame) -> Self {
        self.framed = Some(frame);
        self
    }

    /// Settles the head: in framed mode, writes its frame to stdout.
    fn send_head(&mut self, status: u16, content_type: &[u8]) -> Result<(), Stop> {
        self.head_done = true;
        let Some(head_frame) = self.framed else {
            return Ok(());
        };
        let frame = head_frame(status, content_type);
        // SAFETY: `frame` is a live, initialised buffer of its length.
        let buf = unsafe { VolatileSlice::new(frame.as_ptr() as *mut u8, frame.len()) };
        write_all(1, &buf).map(|_| ()).map_err(Stop::Stdout)
    }

    /// RESP_HEAD: the response's status and content type, once, before
    /// its first body byte.
    pub fn resp_head(&mut self, mem: &GuestMemory, arg: Gpa) -> Result<(), Stop> {
        let call = "RESP_HEAD";
        let mut req: HcRespHead = mem
            .read_obj(arg)
            .map_err(|err| GuestFault::BadArgument { call, err })?;
        let mut ctype = [0u8; RESP_HEAD_TYPE_MAX as usize];
        let ok = !self.head_done
            && (100..=599).contains(&req.status)
            && req.type_len <= RESP_HEAD_TYPE_MAX;
        let ctype = &mut ctype[..if ok { req.type_len as usize } else { 0 }];
        req.ret = if !ok
            || mem.read_bytes(ctype, Gpa(req.content_type)).is_err()
            || !ctype.iter().all(|c| (b' '..=b'~').contains(c))
        {
            ret::EINVAL
        } else {
            self.send_head(req.status as u16, ctype)?;
            ret::OK
        };
        Ok(write_back(mem, call, arg, req)?)
    }

    /// REQ_READ: read(2) from stdin straight into the guest's buffer, once
    /// or (REQ_READ_FILL) until it is full or the body ends.
    pub fn req_read(&mut self, mem: &GuestMemory, arg: Gpa) -> Result<(), Stop> {
        let call = "REQ_READ";
        let mut req: HcReqRead = mem
            .read_obj(arg)
            .map_err(|err| GuestFault::BadArgument { call, err })?;
        if req.limit != 0 && (self.limit == 0 || req.limit < self.limit) {
            self.limit = req.limit;
        }
        (req.ret, req.len) = match mem.slice_mut(Gpa(req.data), req.len) {
            Ok(_) if req.flags & !REQ_READ_FILL != 0 => (ret::EINVAL, 0),
            Ok(buf) => self.read_into(&buf, req.flags & REQ_READ_FILL != 0)?,
            Err(_) => (ret::EINVAL, 0),
        };
        Ok(write_back(mem, call, arg, req)?)
    }

    /// Reads into `buf`: one read(2), or until it is full with `fill`.
    /// Returns the result code and the count read.
    fn read_into(
        &mut self,
        buf: &VolatileSlice<'_, impl BitmapSlice>,
        fill: bool,
    ) -> Result<(i32, u64), FunctionError> {
        // SAFETY: fd 0 stays open for the life of the process (see
        // `reserve_stdio`).
        let mut stdin = unsafe { BorrowedFd::borrow_raw(0) };
        let mut done = 0;
        // After end of file, never read again (a terminal would block).
        while !self.eof && done < buf.len() {
            let mut rest = buf
                .offset(done)
                .map_err(|e| FunctionError::Stdin(io_error(e)))?;
            match stdin.read_volatile(&mut rest).map_err(io_error) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    done += n;
                    self.read += n as u64;
                    if self.limit != 0 && self.read > self.limit {
                        return Err(FunctionError::TooLarge { limit: self.limit });
                    }
                    // A signal may have cut this read short: stop filling.
                    if !fill || signals::pending().is_some() {
                        break;
                    }
                }
                // A signal: hand back what there is; the vCPU loop sees it.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                    return Ok(match done {
                        0 => (ret::AGAIN, 0),
                        _ => (ret::OK, done as u64),
                    })
                }
                Err(e) => return Err(FunctionError::Stdin(e)),
            }
        }
        Ok((ret::OK, done as u64))
    }

    /// RESP_WRITE: the guest's buffer to stdout, all of it.
    pub fn resp_write(&mut self, mem: &GuestMemory, arg: Gpa) -> Result<(), Stop> {
        let call = "RESP_WRITE";
        let mut req: HcRespWrite = mem
            .read_obj(arg)
            .map_err(|err| GuestFault::BadArgument { call, err })?;
        req.ret = match mem.slice(Gpa(req.data), req.len) {
            Err(_) => ret::EINVAL,
            Ok(buf) => {
                if !self.head_done {
                    self.send_head(0, b"")?;
                }
                write_all(1, &buf).map_err(Stop::Stdout)?
            }
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
mod tests;
