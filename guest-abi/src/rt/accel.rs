//! Guest wrappers for skiff's accelerator hypercall (see
//! [`crate::accel`]): sessions, resources and the generic op, plus typed
//! helpers for the ops skiff serves. Every call returns `Err(errno)` on
//! failure. Check [`available`] first: only skiff offers the hypercall.

use super::hypercall::{gpa, hypercall};
use crate::accel::*;
use crate::hvt::Hypercall;
use core::slice::from_ref;

/// Whether the host serves accelerator ops (`host_features`).
pub fn available(ctx: &super::Ctx) -> bool {
    ctx.host_features() & crate::skiff::SKIFF_FEATURE_ACCEL != 0
}

/// One argument descriptor over a guest buffer. The buffer must outlive
/// the request (not a temporary such as `&[x]` of a non-constant `x`).
pub fn arg<T>(ty: u32, buf: &[T]) -> AccelArg {
    AccelArg {
        gpa: gpa(buf.as_ptr()),
        size: core::mem::size_of_val(buf) as u64,
        ty,
        custom: 0,
    }
}

/// One descriptor over a buffer the host writes.
pub fn arg_mut<T>(ty: u32, buf: &mut [T]) -> AccelArg {
    arg(ty, buf)
}

/// Sends a raw request; returns it with its OUT fields filled.
///
/// # Safety
///
/// Every descriptor in the arrays `req` names must describe a buffer valid
/// for the access (read for `read_args`, write for `write_args`).
pub unsafe fn raw(mut req: HcAccel) -> HcAccel {
    req.ret = EPROTO;
    // SAFETY: `req` is an accel struct; the caller vouches for its buffers.
    unsafe { hypercall(Hypercall::AccelOp, &mut req) };
    req
}

fn result(req: &HcAccel) -> Result<(), i32> {
    if req.ret == OK {
        Ok(())
    } else {
        Err(req.ret)
    }
}

/// An accelerator session (vAccel's `vaccel_session`).
#[derive(Debug)]
pub struct Session {
    id: u32,
}

impl Session {
    /// Opens a session with hint `flags` (`PLUGIN_*`, 0 for no preference).
    pub fn new(flags: u32) -> Result<Self, i32> {
        // SAFETY: no argument arrays.
        let r = unsafe {
            raw(HcAccel {
                cmd: CMD_SESSION_INIT,
                flags,
                ..HcAccel::default()
            })
        };
        result(&r).map(|()| Session { id: r.session })
    }

    /// A session by id, for requests about sessions that may not exist.
    pub fn from_id(id: u32) -> Self {
        Session { id }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// Releases the session and its resources.
    pub fn release(self) -> Result<(), i32> {
        // SAFETY: no argument arrays.
        let r = unsafe {
            raw(HcAccel {
                cmd: CMD_SESSION_RELEASE,
                session: self.id,
                ..HcAccel::default()
            })
        };
        result(&r)
    }

    /// The generic op. Returns the type flags of the plugin that ran it.
    pub fn genop(&self, read: &[AccelArg], write: &[AccelArg]) -> Result<u32, i32> {
        // SAFETY: built by `arg`/`arg_mut` over live buffers (the caller
        // makes sure each write descriptor names a buffer it lent mutably).
        let r = unsafe { self.request(CMD_GENOP, 0, 0, read, write) };
        result(&r).map(|()| r.plugin)
    }

    /// # Safety
    ///
    /// As [`raw`].
    pub unsafe fn request(
        &self,
        cmd: u32,
        flags: u32,
        resource: u32,
        read: &[AccelArg],
        write: &[AccelArg],
    ) -> HcAccel {
        // SAFETY: the caller's.
        unsafe {
            raw(HcAccel {
                cmd,
                session: self.id,
                flags,
                resource,
                read_args: gpa(read.as_ptr()),
                write_args: gpa(write.as_ptr()),
                nr_read: read.len() as u32,
                nr_write: write.len() as u32,
                ..HcAccel::default()
            })
        }
    }

    /// Registers `bytes` as a resource of `kind` (`RESOURCE_*`).
    pub fn register_bytes(&self, kind: u32, bytes: &[u8]) -> Result<u32, i32> {
        let read = [arg(arg::BUFFER, bytes)];
        // SAFETY: `read` names `bytes`, readable.
        let r = unsafe { self.request(CMD_RESOURCE_REGISTER, kind, 0, &read, &[]) };
        result(&r).map(|()| r.resource)
    }

    /// Registers the operator's resource `name` (`--accel-model=NAME=...`).
    pub fn register_named(&self, kind: u32, name: &str) -> Result<u32, i32> {
        let read = [arg(arg::STRING, name.as_bytes())];
        // SAFETY: `read` names `name`, readable.
        let r = unsafe { self.request(CMD_RESOURCE_REGISTER, kind, 0, &read, &[]) };
        result(&r).map(|()| r.resource)
    }

    pub fn unregister(&self, resource: u32) -> Result<(), i32> {
        // SAFETY: no argument arrays.
        let r = unsafe { self.request(CMD_RESOURCE_UNREGISTER, 0, resource, &[], &[]) };
        result(&r)
    }

    /// NOOP.
    pub fn noop(&self) -> Result<u32, i32> {
        self.genop(&[arg(arg::UINT8, &[op::NOOP])], &[])
    }

    /// BLAS_SGEMM: `c = alpha*a*b + beta*c`, row-major, `a` m x k, `b`
    /// k x n, `c` m x n. Matrices are `u32` f32 bit patterns, so soft-float
    /// guests never touch them as floats. Returns the plugin's type flags.
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm(
        &self,
        (m, n, k): (i64, i64, i64),
        alpha: u32,
        a: &[u32],
        lda: i64,
        b: &[u32],
        ldb: i64,
        beta: u32,
        c: &mut [u32],
        ldc: i64,
    ) -> Result<u32, i32> {
        // Scalars by reference to these locals: a temporary `&[x]` would
        // be gone before the hypercall reads it.
        let read = [
            arg(arg::UINT8, &[op::BLAS_SGEMM]),
            arg(arg::INT64, from_ref(&m)),
            arg(arg::INT64, from_ref(&n)),
            arg(arg::INT64, from_ref(&k)),
            arg(arg::FLOAT32, from_ref(&alpha)),
            arg(arg::FLOAT32_ARRAY, a),
            arg(arg::INT64, from_ref(&lda)),
            arg(arg::FLOAT32_ARRAY, b),
            arg(arg::INT64, from_ref(&ldb)),
            arg(arg::FLOAT32, from_ref(&beta)),
            arg(arg::INT64, from_ref(&ldc)),
        ];
        self.genop(&read, &[arg_mut(arg::FLOAT32_ARRAY, c)])
    }

    /// MINMAX over f64 bit patterns: `out[i] = clamp(data[i], low, high)`;
    /// returns (min, max) of `data` as bit patterns.
    pub fn minmax(
        &self,
        data: &[u64],
        low: i32,
        high: i32,
        out: &mut [u64],
    ) -> Result<(u64, u64), i32> {
        let (mut min, mut max) = ([0u64], [0u64]);
        let nd = data.len() as i32;
        let read = [
            arg(arg::UINT8, &[op::MINMAX]),
            arg(arg::FLOAT64_ARRAY, data),
            arg(arg::INT32, from_ref(&nd)),
            arg(arg::INT32, from_ref(&low)),
            arg(arg::INT32, from_ref(&high)),
        ];
        let write = [
            arg_mut(arg::FLOAT64_ARRAY, out),
            arg_mut(arg::FLOAT64, &mut min),
            arg_mut(arg::FLOAT64, &mut max),
        ];
        self.genop(&read, &write).map(|_| (min[0], max[0]))
    }

    /// EXEC `symbol` of the operator's library `library` with `inputs`
    /// (descriptors from [`arg`]) and `outputs` (from [`arg_mut`]).
    pub fn exec(
        &self,
        library: &str,
        symbol: &str,
        inputs: &[AccelArg],
        outputs: &[AccelArg],
    ) -> Result<u32, i32> {
        let mut read = [AccelArg::default(); ARGS_MAX as usize];
        let n = inputs.len() + 3;
        if n > read.len() {
            return Err(EINVAL);
        }
        read[0] = arg(arg::UINT8, &[op::EXEC]);
        read[1] = arg(arg::STRING, library.as_bytes());
        read[2] = arg(arg::STRING, symbol.as_bytes());
        read[3..n].copy_from_slice(inputs);
        self.genop(&read[..n], outputs)
    }
}

pub use crate::accel::bits;
