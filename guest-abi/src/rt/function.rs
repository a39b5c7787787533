//! Function I/O for guests: read the request body, write the response,
//! look up request metadata. Only when [`available`] says the tender
//! serves them (skiff sets [`SKIFF_FEATURE_FUNCTION`]).

use super::hypercall::{gpa, hypercall};
use super::Ctx;
use crate::hvt::{ret, Hypercall};
use crate::skiff::{
    self, HcReqMeta, HcReqNext, HcReqRead, HcRespHead, HcRespWrite, REQ_READ_FILL,
    SKIFF_FEATURE_FUNCTION, SKIFF_FEATURE_REQ_NEXT, SKIFF_FEATURE_RESP_HEAD,
};

/// Does the tender serve the function I/O hypercalls?
pub fn available(ctx: &Ctx) -> bool {
    ctx.host_features() & SKIFF_FEATURE_FUNCTION != 0
}

/// Reads the next bytes of the request body into `buf`, as soon as some
/// are there: the count read, 0 at the end of the body, or the result
/// code. `limit` is the most body bytes this function accepts in all (0: no
/// limit); a longer body ends the run with the tender's error, so a caller
/// never sees a truncated request.
pub fn req_read(buf: &mut [u8], limit: u64) -> Result<usize, i32> {
    read_with(buf, limit, 0)
}

/// Like [`req_read`], but waits until `buf` is full or the body ends: one
/// exit per buffer rather than per pipe's worth.
pub fn req_read_fill(buf: &mut [u8], limit: u64) -> Result<usize, i32> {
    read_with(buf, limit, REQ_READ_FILL)
}

fn read_with(buf: &mut [u8], limit: u64, flags: u32) -> Result<usize, i32> {
    loop {
        let mut arg = HcReqRead {
            data: gpa(buf.as_mut_ptr()),
            len: buf.len() as u64,
            limit,
            ret: ret::EUNSPEC,
            flags,
        };
        // SAFETY: `arg` is a REQ_READ struct naming `buf`, writable for `len`.
        unsafe { hypercall(Hypercall::ReqRead, &mut arg) };
        match arg.ret {
            ret::OK => return Ok((arg.len as usize).min(buf.len())),
            ret::AGAIN => continue,
            code => return Err(code),
        }
    }
}

/// Reads the whole body into `buf` (a body longer than `buf` ends the run
/// with the tender's error); returns its length.
pub fn req_read_all(buf: &mut [u8]) -> Result<usize, i32> {
    let limit = buf.len() as u64;
    let mut n = 0;
    loop {
        // A full buffer still reads once more: the tender must see the end
        // of the body (or more bytes, which it refuses).
        let mut probe = [0u8; 1];
        let dst = if n < buf.len() {
            &mut buf[n..]
        } else {
            &mut probe[..]
        };
        match req_read_fill(dst, limit)? {
            0 => return Ok(n),
            k => n += k,
        }
    }
}

/// Appends `buf` to the response (the tender's stdout), all of it.
pub fn resp_write(buf: &[u8]) -> Result<(), i32> {
    let mut arg = HcRespWrite {
        data: gpa(buf.as_ptr()),
        len: buf.len() as u64,
        ret: ret::EUNSPEC,
        _pad: 0,
    };
    // SAFETY: `arg` is a RESP_WRITE struct naming `buf`, which is readable.
    unsafe { hypercall(Hypercall::RespWrite, &mut arg) };
    match arg.ret {
        ret::OK => Ok(()),
        code => Err(code),
    }
}

/// Sets the response's HTTP status and (if not empty) content type, before
/// the first [`resp_write`]. A tender without RESP_HEAD (an older skiff)
/// is left alone: the function still answers, with the default head.
pub fn resp_head(ctx: &Ctx, status: u16, content_type: &str) -> Result<(), i32> {
    if ctx.host_features() & SKIFF_FEATURE_RESP_HEAD == 0 {
        return Ok(());
    }
    let mut arg = HcRespHead {
        content_type: content_type.as_ptr() as usize as u64,
        type_len: content_type.len() as u64,
        status: u32::from(status),
        ret: ret::EUNSPEC,
    };
    // SAFETY: `arg` is a RESP_HEAD struct naming `content_type` (readable).
    unsafe { hypercall(Hypercall::RespHead, &mut arg) };
    match arg.ret {
        ret::OK => Ok(()),
        code => Err(code),
    }
}

/// Ends this request's response and waits for the next request: `true`
/// when one is now current (only under `skiff serve --warm`), `false`
/// when the tender keeps no warm guests: return from main then.
pub fn req_next(ctx: &Ctx) -> bool {
    if ctx.host_features() & SKIFF_FEATURE_REQ_NEXT == 0 {
        return false;
    }
    let mut arg = HcReqNext {
        ret: ret::EUNSPEC,
        _pad: 0,
    };
    // SAFETY: `arg` is a REQ_NEXT struct.
    unsafe { hypercall(Hypercall::ReqNext, &mut arg) };
    arg.ret == ret::OK
}

/// Why [`req_meta`] found no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaError {
    /// The request has no such item.
    NotFound,
    /// `buf` is too small; the value needs this many bytes.
    TooSmall(usize),
    /// Another result code (a bad name, for example).
    Code(i32),
}

/// Copies request metadata item `name` (`Method`, `Path`, `Query`,
/// `Content_Type`, ...: the watchdog's `Http_<name>`) into `buf` and
/// returns the value.
pub fn req_meta<'a>(name: &str, buf: &'a mut [u8]) -> Result<&'a [u8], MetaError> {
    let mut arg = HcReqMeta {
        name: gpa(name.as_ptr()),
        name_len: name.len() as u64,
        data: gpa(buf.as_mut_ptr()),
        len: buf.len() as u64,
        ret: ret::EUNSPEC,
        _pad: 0,
    };
    // SAFETY: `arg` is a REQ_META struct naming `name` (readable) and `buf`
    // (writable for `len` bytes).
    unsafe { hypercall(Hypercall::ReqMeta, &mut arg) };
    match arg.ret {
        ret::OK => Ok(&buf[..(arg.len as usize).min(buf.len())]),
        skiff::ret::NOT_FOUND => Err(MetaError::NotFound),
        skiff::ret::TOO_SMALL => Err(MetaError::TooSmall(arg.len as usize)),
        code => Err(MetaError::Code(code)),
    }
}

/// Free guest memory after the image, up to `max` bytes, leaving 1 MiB
/// below the top of memory to the stack: a large I/O buffer that costs
/// nothing until touched.
///
/// # Safety
///
/// Call at most once: the slice aliases nothing else only if no other
/// code uses the memory after the image.
pub unsafe fn scratch(ctx: &Ctx, max: usize) -> &'static mut [u8] {
    const STACK: u64 = 1 << 20;
    let start = (ctx.kernel_end() + 4095) & !4095;
    let end = ctx.mem_size().saturating_sub(STACK);
    let len = end.saturating_sub(start).min(max as u64) as usize;
    // SAFETY: [start, start+len) is mapped guest memory above the image and
    // below the stack, which nothing else uses (the caller's promise).
    unsafe { core::slice::from_raw_parts_mut(start as usize as *mut u8, len) }
}
