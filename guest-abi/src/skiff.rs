//! skiff's extensions to the hvt ABI.
//!
//! A guest may use these hypercalls only when the boot info's
//! `host_features` has [`SKIFF_FEATURE_EXT`]; unmodified Solo5 guests never
//! look at that bit, so for them skiff is exactly solo5-hvt.

use core::mem::{offset_of, size_of};

/// Host feature: skiff's extension hypercalls are served.
pub const SKIFF_FEATURE_EXT: u32 = 1 << 16;

/// Host feature: the function I/O hypercalls ([`HcReqRead`],
/// [`HcRespWrite`], [`HcReqMeta`]) are served: the request body is skiff's
/// stdin, the response is skiff's stdout.
pub const SKIFF_FEATURE_FUNCTION: u32 = 1 << 17;

/// Host feature: the accelerator hypercall ([`crate::accel::HcAccel`]) is
/// served: the operator started skiff with `--accel`.
pub const SKIFF_FEATURE_ACCEL: u32 = 1 << 18;

/// Host feature: RESP_HEAD ([`HcRespHead`]) is served: a function may set
/// its response's HTTP status and content type (`skiff serve` uses them;
/// `skiff run` and `skiff call` accept and ignore them).
pub const SKIFF_FEATURE_RESP_HEAD: u32 = 1 << 19;

/// Host feature: REQ_NEXT ([`HcReqNext`]) is known (it still answers
/// EUNSPEC unless the server keeps warm guests: `skiff serve --warm`).
pub const SKIFF_FEATURE_REQ_NEXT: u32 = 1 << 20;

/// skiff-specific result codes, after Solo5's (`crate::hvt::ret`).
pub mod ret {
    /// REQ_META: no such metadata item.
    pub const NOT_FOUND: i32 = 16;
    /// REQ_META: the buffer is too small; `len` holds the size needed.
    pub const TOO_SMALL: i32 = 17;
}

/// REQ_READ (nr 16): reads the next bytes of the request body straight
/// into `data`. IN `data`; `len` IN (buffer size) and OUT (bytes read;
/// 0 = end of body); IN `limit`: the most body bytes the function accepts
/// in all (0 = no limit; the smallest non-zero limit given holds): a larger
/// body ends the run with an error, so the caller never sees a truncated
/// request. IN `flags`: [`REQ_READ_FILL`] or 0. OUT `ret`: OK, AGAIN
/// (interrupted: call again) or EINVAL (bad buffer or flags).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcReqRead {
    pub data: u64,
    pub len: u64,
    pub limit: u64,
    pub ret: i32,
    pub flags: u32,
}

/// REQ_READ flag: wait until the buffer is full or the body ends, instead
/// of returning what one read(2) gives (at most a pipe's 64 KiB): far
/// fewer exits for a function that wants the whole body anyway.
pub const REQ_READ_FILL: u32 = 1 << 0;

/// RESP_WRITE (nr 17): appends `len` bytes at `data` to the response, all
/// of them (a response that cannot be written ends the run). OUT `ret`:
/// OK, EINVAL (bad buffer) or AGAIN (a terminating signal cut it short:
/// the run is ending).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcRespWrite {
    pub data: u64,
    pub len: u64,
    pub ret: i32,
    pub _pad: u32,
}

/// REQ_META (nr 18): copies the value of request metadata item `name` (the
/// OpenFaaS watchdog's `Http_<name>` variable, e.g. `Method`, `Path`,
/// `Query`, `Content_Type`) into `data`. IN `name`/`name_len` (ASCII
/// letters, digits, `_`), `data`; `len` IN (buffer size) and OUT (value
/// size). OUT `ret`: OK, NOT_FOUND, TOO_SMALL (nothing copied, `len` is the
/// size needed) or EINVAL.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcReqMeta {
    pub name: u64,
    pub name_len: u64,
    pub data: u64,
    pub len: u64,
    pub ret: i32,
    pub _pad: u32,
}

/// RESP_HEAD (nr 20): sets the response's HTTP status (100 to 599) and,
/// with `type_len` > 0, its content type (visible ASCII and spaces, at most
/// [`RESP_HEAD_TYPE_MAX`] bytes). Only before the first RESP_WRITE: the
/// head goes out ahead of the body. IN `status`, `content_type`,
/// `type_len`. OUT `ret`: OK or EINVAL (bad status or type, or a body
/// byte already written).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcRespHead {
    pub content_type: u64,
    pub type_len: u64,
    pub status: u32,
    pub ret: i32,
}

/// REQ_NEXT (nr 21): this request's response is complete (as if the guest
/// had halted with 0); wait for the next request and make it the current
/// one for REQ_READ, REQ_META, RESP_HEAD and RESP_WRITE. Served only by
/// `skiff serve --warm`, which keeps such a guest (and its memory) across
/// requests of its function; anywhere else it returns EUNSPEC and the
/// guest should halt. OUT `ret`: OK (a new request is current) or EUNSPEC.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcReqNext {
    pub ret: i32,
    pub _pad: u32,
}

/// The longest content type RESP_HEAD accepts.
pub const RESP_HEAD_TYPE_MAX: u64 = 256;

/// The longest metadata name REQ_META accepts.
pub const REQ_META_NAME_MAX: u64 = 256;

crate::hvt::layout!(HcReqRead, 32, data @ 0, len @ 8, limit @ 16, ret @ 24, flags @ 28);
crate::hvt::layout!(HcRespWrite, 24, data @ 0, len @ 8, ret @ 16);
crate::hvt::layout!(HcReqNext, 8, ret @ 0);
crate::hvt::layout!(HcRespHead, 24, content_type @ 0, type_len @ 8, status @ 16, ret @ 20);
crate::hvt::layout!(HcReqMeta, 40, name @ 0, name_len @ 8, data @ 16, len @ 24, ret @ 32);
