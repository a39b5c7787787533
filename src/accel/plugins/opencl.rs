//! The OpenCL plugin: `opencl3` (libOpenCL loaded at run time), the first
//! GPU found else the first device of any type (pocl's CPU device here),
//! and skiff's own register-tiled sgemm kernel, built once when the plugin
//! starts.
//! pocl caches compiled programs in `$POCL_CACHE_DIR`.

use super::{runs, Classifies, OpContext, Plugin, PluginError, Runs, Unavailable};
use crate::accel::classify::graph::{Network, Walker};
use crate::accel::classify::model::Model;
use crate::accel::classify::opencl::{ClBackend, CLASSIFY_SRC};
use crate::accel::ops::Sgemm;
use guest_abi::accel::{PLUGIN_CPU, PLUGIN_FPGA, PLUGIN_GENERIC, PLUGIN_GPU};
use opencl3::command_queue::CommandQueue;
use opencl3::context::Context;
use opencl3::device::{Device, CL_DEVICE_TYPE_ACCELERATOR, CL_DEVICE_TYPE_ALL, CL_DEVICE_TYPE_GPU};
use opencl3::kernel::{ExecuteKernel, Kernel};
use opencl3::memory::{Buffer, CL_MEM_READ_ONLY, CL_MEM_READ_WRITE};
use opencl3::program::Program;
use opencl3::types::{cl_long, CL_BLOCKING};
use std::ptr;
use std::sync::Arc;

/// Work-group edge in work-items; each work-item computes a 4 x 4 tile.
const WG: usize = 8;

/// C = alpha*A*B + beta*C, row-major, any shape, register-tiled: each
/// work-item accumulates a 4 x 4 tile of C in four float4 registers (a
/// work-group covers 32 x 32), reading B rows as float4. pocl's CPU device
/// vectorises across the work-items of a group; a local-memory tiled
/// kernel measured 5x slower there. Edge tiles take a scalar path.
pub const SGEMM_SRC: &str = r#"
__kernel void sgemm(const long M, const long N, const long K, const float alpha,
                    __global const float *A, const long lda,
                    __global const float *B, const long ldb,
                    const float beta, __global float *C, const long ldc)
{
    const long c0 = get_global_id(0) * 4;
    const long r0 = get_global_id(1) * 4;
    if (c0 >= N || r0 >= M) return;
    float4 acc0 = 0.0f, acc1 = 0.0f, acc2 = 0.0f, acc3 = 0.0f;
    if (c0 + 4 <= N && r0 + 4 <= M) {
        __global const float *a0 = A + r0 * lda;
        for (long p = 0; p < K; p++) {
            const float4 b = vload4(0, B + p * ldb + c0);
            acc0 += a0[p] * b;
            acc1 += a0[lda + p] * b;
            acc2 += a0[2 * lda + p] * b;
            acc3 += a0[3 * lda + p] * b;
        }
        float4 acc[4] = {acc0, acc1, acc2, acc3};
        for (int i = 0; i < 4; i++) {
            __global float *c = C + (r0 + i) * ldc + c0;
            float4 v = alpha * acc[i];
            if (beta != 0.0f) v += beta * vload4(0, c);
            vstore4(v, 0, c);
        }
        return;
    }
    for (long r = r0; r < M && r < r0 + 4; r++) {
        for (long c = c0; c < N && c < c0 + 4; c++) {
            float s = 0.0f;
            for (long p = 0; p < K; p++) s += A[r * lda + p] * B[p * ldb + c];
            float v = alpha * s;
            if (beta != 0.0f) v += beta * C[r * ldc + c];
            C[r * ldc + c] = v;
        }
    }
}
"#;

/// What the plugin and the networks it builds share: one context, one
/// in-order queue, the sgemm program.
pub struct Shared {
    // The queue and program before the context they belong to (drop order).
    pub queue: CommandQueue,
    pub sgemm: Program,
    pub context: Context,
}

pub struct OpenCl {
    // Kernels and programs before the shared context (drop order).
    sgemm: Kernel,
    /// The classifier's kernels, built at the first network (once per
    /// process).
    classify: Option<Program>,
    shared: Arc<Shared>,
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
            classify: None,
            shared: Arc::new(Shared {
                queue,
                sgemm: program,
                context,
            }),
            kind,
            device,
        })
    }

    /// Builds another program in this plugin's context (EPROTO and the
    /// build log on failure).
    pub fn build_source(&self, src: &str) -> Result<Program, PluginError> {
        build(&self.shared.context, src).map_err(|e| backend("program build", e))
    }

    /// A device buffer of `n` floats (at least one: OpenCL refuses 0).
    fn buffer(&self, flags: u64, n: usize) -> Result<Buffer<f32>, PluginError> {
        // SAFETY: no host pointer; the size is bounded by guest buffers.
        unsafe { Buffer::<f32>::create(&self.shared.context, flags, n.max(1), ptr::null_mut()) }
            .map_err(|e| backend("buffer", e))
    }

    fn upload(&self, buf: &mut Buffer<f32>, data: &[f32]) -> Result<(), PluginError> {
        if data.is_empty() {
            return Ok(());
        }
        // SAFETY: blocking write of `data`, which fits `buf` (sized from it).
        unsafe {
            self.shared
                .queue
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
    runs!(Noop, Sgemm, Classify);
    fn describe(&self) -> String {
        format!("opencl ({})", self.device)
    }
}

impl Runs<Sgemm<'_>> for OpenCl {
    fn run(&mut self, s: &mut Sgemm<'_>, _: &OpContext<'_>) -> Result<(), PluginError> {
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
                .set_global_work_sizes(&[round(s.n.div_ceil(4), WG), round(s.m.div_ceil(4), WG)])
                .set_local_work_sizes(&[WG, WG])
                .enqueue_nd_range(&self.shared.queue)
        }
        .map_err(|e| backend("sgemm kernel", e))?;
        ev.wait().map_err(|e| backend("sgemm kernel", e))?;
        // SAFETY: blocking read into the guest's C, which `c` was sized from.
        unsafe {
            self.shared
                .queue
                .enqueue_read_buffer(&c, CL_BLOCKING, 0, s.c, &[])
        }
        .map_err(|e| backend("read buffer", e))?;
        Ok(())
    }
}

impl Classifies for OpenCl {
    fn network(&mut self, m: &Model) -> Result<Box<dyn Network>, PluginError> {
        let program = match self.classify.take() {
            Some(p) => p,
            None => build(&self.shared.context, CLASSIFY_SRC)
                .map_err(|e| backend("classifier kernels", e))?,
        };
        let be = ClBackend::new(self.shared.clone(), &program);
        self.classify = Some(program);
        Ok(Box::new(Walker::new(be?, m)?))
    }
}
