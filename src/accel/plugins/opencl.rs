//! The OpenCL plugin: `opencl3` (libOpenCL loaded at run time), the first
//! GPU found else the first device of any type (pocl's CPU device here),
//! and skiff's own tiled sgemm kernel, built once when the plugin starts.
//! pocl caches compiled programs in `$POCL_CACHE_DIR`.

use super::{Plugin, PluginError, Unavailable};
use crate::accel::ops::Sgemm;
use guest_abi::accel::{op, PLUGIN_CPU, PLUGIN_FPGA, PLUGIN_GENERIC, PLUGIN_GPU};
use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::device::{Device, CL_DEVICE_TYPE_ACCELERATOR, CL_DEVICE_TYPE_ALL, CL_DEVICE_TYPE_GPU};
use opencl3::kernel::{ExecuteKernel, Kernel};
use opencl3::memory::{Buffer, CL_MEM_READ_ONLY, CL_MEM_READ_WRITE};
use opencl3::program::Program;
use opencl3::types::{cl_long, CL_BLOCKING};
use std::ptr;

/// Work-group tile edge; each work-item computes WPT outputs of a column.
const TS: usize = 16;
const WPT: usize = 4;

/// C = alpha*A*B + beta*C, row-major, any shape. A work-group computes a
/// TS x TS tile of C from TS x TS tiles of A and B staged in local memory;
/// each work-item accumulates WPT rows of one column.
pub const SGEMM_SRC: &str = r#"
#define TS 16
#define WPT 4
#define RTS (TS / WPT)
__kernel __attribute__((reqd_work_group_size(TS, RTS, 1)))
void sgemm(const long M, const long N, const long K, const float alpha,
           __global const float *A, const long lda,
           __global const float *B, const long ldb,
           const float beta, __global float *C, const long ldc)
{
    const int lc = get_local_id(0), lr = get_local_id(1);
    const long col = get_group_id(0) * TS + lc;
    const long row0 = get_group_id(1) * TS + lr;
    __local float As[TS][TS];
    __local float Bs[TS][TS];
    float acc[WPT];
    for (int w = 0; w < WPT; w++) acc[w] = 0.0f;
    for (long t = 0; t < K; t += TS) {
        for (int w = 0; w < WPT; w++) {
            const long r = row0 + w * RTS;
            const int lrw = lr + w * RTS;
            As[lrw][lc] = (r < M && t + lc < K) ? A[r * lda + t + lc] : 0.0f;
            Bs[lrw][lc] = (t + lrw < K && col < N) ? B[(t + lrw) * ldb + col] : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int i = 0; i < TS; i++) {
            const float b = Bs[i][lc];
            for (int w = 0; w < WPT; w++) acc[w] += As[lr + w * RTS][i] * b;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (col >= N) return;
    for (int w = 0; w < WPT; w++) {
        const long r = row0 + w * RTS;
        if (r < M) {
            float v = alpha * acc[w];
            if (beta != 0.0f) v += beta * C[r * ldc + col];
            C[r * ldc + col] = v;
        }
    }
}
"#;

pub struct OpenCl {
    // Kernel and queue before the context they belong to (drop order).
    sgemm: Kernel,
    queue: CommandQueue,
    _program: Program,
    context: Context,
    kind: u32,
    device: String,
}

impl std::fmt::Debug for OpenCl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenCl")
            .field("device", &self.device)
            .finish()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Unavailable {
    Unavailable(format!("{what}: {e}"))
}

/// Builds `src` for the context's devices; the build log on failure.
fn build(context: &Context, src: &str) -> Result<Program, String> {
    Program::create_and_build_from_source(context, src, "")
}

fn backend(what: &'static str, e: impl std::fmt::Display) -> PluginError {
    PluginError::Backend {
        plugin: "opencl",
        what,
        detail: e.to_string(),
    }
}

impl OpenCl {
    pub fn new() -> Result<Self, Unavailable> {
        // ocl-icd's first-call initialisation is not thread-safe: skiff
        // itself is single-threaded, but a test harness is not.
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _once = INIT.lock().unwrap_or_else(|e| e.into_inner());
        // opencl3 loads libOpenCL at the first call and reports (never
        // panics) when it is missing.
        let platforms = opencl3::platform::get_platforms().map_err(|e| {
            if e.0 == opencl3::error_codes::DLOPEN_RUNTIME_LOAD_FAILED {
                Unavailable("no OpenCL runtime (libOpenCL.so.1)".into())
            } else {
                unavailable("no OpenCL platform", e)
            }
        })?;
        let mut devices = Vec::new();
        for p in &platforms {
            devices.extend(p.get_devices(CL_DEVICE_TYPE_ALL).unwrap_or_default());
        }
        let pick = devices
            .iter()
            .map(|&d| Device::new(d))
            .find(|d| d.dev_type().is_ok_and(|t| t & CL_DEVICE_TYPE_GPU != 0))
            .or_else(|| devices.first().map(|&d| Device::new(d)))
            .ok_or_else(|| Unavailable("no OpenCL device".into()))?;
        let ty = pick.dev_type().unwrap_or(0);
        let kind = PLUGIN_GENERIC
            | if ty & CL_DEVICE_TYPE_GPU != 0 {
                PLUGIN_GPU
            } else if ty & CL_DEVICE_TYPE_ACCELERATOR != 0 {
                PLUGIN_FPGA
            } else {
                PLUGIN_CPU
            };
        let device = pick.name().unwrap_or_else(|_| "unknown".into());
        let context = Context::from_device(&pick).map_err(|e| unavailable("context", e))?;
        #[allow(deprecated)] // create_default_with_properties needs OpenCL 2.0; pocl may be 1.2
        let queue = CommandQueue::create_default(&context, 0)
            .map_err(|e| unavailable("command queue", e))?;
        let program = build(&context, SGEMM_SRC).map_err(|e| unavailable("sgemm kernel", e))?;
        let sgemm =
            Kernel::create(&program, "sgemm").map_err(|e| unavailable("sgemm kernel", e))?;
        Ok(Self {
            sgemm,
            queue,
            _program: program,
            context,
            kind,
            device,
        })
    }

    /// Builds another program in this plugin's context (EPROTO and the
    /// build log on failure).
    pub fn build_source(&self, src: &str) -> Result<Program, PluginError> {
        build(&self.context, src).map_err(|e| backend("program build", e))
    }

    /// A device buffer of `n` floats (at least one: OpenCL refuses 0).
    fn buffer(&self, flags: u64, n: usize) -> Result<Buffer<f32>, PluginError> {
        // SAFETY: no host pointer; the size is bounded by guest buffers.
        unsafe { Buffer::<f32>::create(&self.context, flags, n.max(1), ptr::null_mut()) }
            .map_err(|e| backend("buffer", e))
    }

    fn upload(&self, buf: &mut Buffer<f32>, data: &[f32]) -> Result<(), PluginError> {
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: blocking write of `data`, which fits `buf` (sized from it).
        unsafe {
            self.queue
                .enqueue_write_buffer(buf, CL_BLOCKING, 0, data, &[])
        }
        .map_err(|e| backend("write buffer", e))?;
        Ok(())
    }
}

impl Plugin for OpenCl {
    fn name(&self) -> &'static str {
        "opencl"
    }
    fn kind(&self) -> u32 {
        self.kind
    }
    fn implements(&self, o: u8) -> bool {
        matches!(o, op::NOOP | op::BLAS_SGEMM)
    }
    fn describe(&self) -> String {
        format!("opencl ({})", self.device)
    }

    fn sgemm(&mut self, s: &mut Sgemm<'_>) -> Result<(), PluginError> {
        if s.m == 0 || s.n == 0 {
            return Ok(());
        }
        let mut a = self.buffer(CL_MEM_READ_ONLY, s.a.len())?;
        let mut b = self.buffer(CL_MEM_READ_ONLY, s.b.len())?;
        let mut c = self.buffer(CL_MEM_READ_WRITE, s.c.len())?;
        self.upload(&mut a, s.a)?;
        self.upload(&mut b, s.b)?;
        // C's existing contents matter for beta != 0 and for the gaps
        // between rows (ldc > n), which the read-back covers too.
        if s.beta != 0.0 || s.ldc != s.n {
            self.upload(&mut c, s.c)?;
        }
        let round = |x: usize, to: usize| x.div_ceil(to) * to;
        let dims = [s.m, s.n, s.k, s.lda, s.ldb, s.ldc].map(|x| x as cl_long);
        // SAFETY: the arguments match the kernel's signature in order and
        // type; the buffers span the matrices (the decoder checked the
        // guest's, and they were sized from them).
        let ev = unsafe {
            ExecuteKernel::new(&self.sgemm)
                .set_arg(&dims[0])
                .set_arg(&dims[1])
                .set_arg(&dims[2])
                .set_arg(&s.alpha)
                .set_arg(&a)
                .set_arg(&dims[3])
                .set_arg(&b)
                .set_arg(&dims[4])
                .set_arg(&s.beta)
                .set_arg(&c)
                .set_arg(&dims[5])
                .set_global_work_sizes(&[round(s.n, TS), round(s.m, TS) / WPT])
                .set_local_work_sizes(&[TS, TS / WPT])
                .enqueue_nd_range(&self.queue)
        }
        .map_err(|e| backend("sgemm kernel", e))?;
        ev.wait().map_err(|e| backend("sgemm kernel", e))?;
        // SAFETY: blocking read into the guest's C, which `c` was sized from.
        unsafe { self.queue.enqueue_read_buffer(&c, CL_BLOCKING, 0, s.c, &[]) }
            .map_err(|e| backend("read buffer", e))?;
        Ok(())
    }
}
