//! The OpenCL backend: skiff's own kernels (the plugin's register-tiled
//! sgemm plus five small ones below, which the plugin builds once per
//! process; pocl caches the binaries in `$POCL_CACHE_DIR`), all enqueued
//! on the plugin's in-order queue; only the final read waits.

use super::graph::{Backend, Geom};
use crate::accel::plugins::opencl::Shared;
use crate::accel::plugins::PluginError;
use opencl3::command_queue::CommandQueue;
use opencl3::kernel::{ExecuteKernel, Kernel};
use opencl3::memory::{Buffer, CL_MEM_READ_WRITE};
use opencl3::program::Program;
use opencl3::types::{cl_int, cl_long, CL_BLOCKING};
use std::ptr;
use std::sync::Arc;

/// Simple by design: one work-item per output element, no local memory
/// (pocl builds them in well under a second and vectorises across items).
pub const CLASSIFY_SRC: &str = r#"
__kernel void im2col(__global const float *x, __global float *col, const int H, const int W,
                     const int K, const int S, const int PT, const int PL, const int OH, const int OW)
{
    const int p = get_global_id(0), r = get_global_id(1);
    const int c = r / (K * K), ky = r % (K * K) / K, kx = r % K;
    const int iy = p / OW * S - PT + ky, ix = p % OW * S - PL + kx;
    col[r * OH * OW + p] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[(c * H + iy) * W + ix] : 0.0f;
}

__kernel void depthwise(__global const float *x, __global const float *w, __global float *y,
                        const int H, const int W, const int K, const int S, const int PT,
                        const int PL, const int OH, const int OW)
{
    const int p = get_global_id(0), c = get_global_id(1);
    const int y0 = p / OW * S - PT, x0 = p % OW * S - PL;
    __global const float *xc = x + c * H * W;
    __global const float *f = w + c * K * K;
    float s = 0.0f;
    for (int ky = 0; ky < K; ky++) {
        const int iy = y0 + ky;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < K; kx++) {
            const int ix = x0 + kx;
            if (ix >= 0 && ix < W) s += xc[iy * W + ix] * f[ky * K + kx];
        }
    }
    y[c * OH * OW + p] = s;
}

__kernel void bias_act(__global float *x, __global const float *b, const int plane, const int relu6)
{
    const int p = get_global_id(0), c = get_global_id(1);
    float v = x[c * plane + p] + b[c];
    x[c * plane + p] = relu6 ? clamp(v, 0.0f, 6.0f) : v;
}

__kernel void add(__global float *x, __global const float *y)
{
    const int i = get_global_id(0);
    x[i] += y[i];
}

__kernel void mean(__global const float *x, __global float *y, const int plane)
{
    const int c = get_global_id(0);
    float s = 0.0f;
    for (int p = 0; p < plane; p++) s += x[c * plane + p];
    y[c] = s / plane;
}
"#;

/// The sgemm kernel's work-group edge (each work-item: a 4 x 4 tile).
const WG: usize = 8;

pub struct ClBackend {
    // Kernels before the context they belong to (drop order).
    sgemm: Kernel,
    im2col: Kernel,
    depthwise: Kernel,
    bias_act: Kernel,
    add: Kernel,
    mean: Kernel,
    shared: Arc<Shared>,
}

fn backend(what: &'static str, e: impl std::fmt::Display) -> PluginError {
    PluginError::Backend {
        plugin: "opencl",
        what,
        detail: e.to_string(),
    }
}

fn int(x: usize) -> Result<cl_int, PluginError> {
    cl_int::try_from(x).map_err(|_| PluginError::Invalid)
}

impl ClBackend {
    /// Kernels from the plugin's sgemm program and `classify` (built from
    /// [`CLASSIFY_SRC`] in the shared context).
    pub fn new(shared: Arc<Shared>, classify: &Program) -> Result<Self, PluginError> {
        let kernel = |p, name| Kernel::create(p, name).map_err(|e| backend("kernel", e));
        let k = |name| kernel(classify, name);
        Ok(ClBackend {
            sgemm: kernel(&shared.sgemm, "sgemm")?,
            im2col: k("im2col")?,
            depthwise: k("depthwise")?,
            bias_act: k("bias_act")?,
            add: k("add")?,
            mean: k("mean")?,
            shared,
        })
    }

    /// Geometry arguments in the kernels' order.
    fn geom(g: &Geom) -> Result<[cl_int; 8], PluginError> {
        Ok([
            int(g.h)?,
            int(g.w)?,
            int(g.k)?,
            int(g.stride)?,
            int(g.pad_t)?,
            int(g.pad_l)?,
            int(g.oh)?,
            int(g.ow)?,
        ])
    }
}

fn run(
    exec: &mut ExecuteKernel<'_>,
    queue: &CommandQueue,
    what: &'static str,
) -> Result<(), PluginError> {
    // SAFETY: every caller set the kernel's arguments in order and type,
    // over buffers the walker sized for this geometry.
    unsafe { exec.enqueue_nd_range(queue) }
        .map(drop)
        .map_err(|e| backend(what, e))
}

impl Backend for ClBackend {
    type Buf = Buffer<f32>;

    fn upload(&mut self, data: &[f32]) -> Result<Buffer<f32>, PluginError> {
        let mut b = self.alloc(data.len())?;
        self.write(&mut b, data)?;
        Ok(b)
    }
    fn alloc(&mut self, n: usize) -> Result<Buffer<f32>, PluginError> {
        // SAFETY: no host pointer; at least one element (OpenCL refuses 0).
        unsafe {
            Buffer::<f32>::create(
                &self.shared.context,
                CL_MEM_READ_WRITE,
                n.max(1),
                ptr::null_mut(),
            )
        }
        .map_err(|e| backend("buffer", e))
    }
    fn write(&mut self, buf: &mut Buffer<f32>, data: &[f32]) -> Result<(), PluginError> {
        // SAFETY: blocking write of `data` into a buffer at least as long
        // (the walker sized it).
        unsafe {
            self.shared
                .queue
                .enqueue_write_buffer(buf, CL_BLOCKING, 0, data, &[])
        }
        .map(drop)
        .map_err(|e| backend("write buffer", e))
    }
    fn read(&mut self, buf: &Buffer<f32>, out: &mut [f32]) -> Result<(), PluginError> {
        // SAFETY: blocking read of `out.len()` floats from a buffer that
        // long; the in-order queue finishes every kernel first.
        unsafe {
            self.shared
                .queue
                .enqueue_read_buffer(buf, CL_BLOCKING, 0, out, &[])
        }
        .map(drop)
        .map_err(|e| backend("read buffer", e))
    }

    fn gemm(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        a: &Buffer<f32>,
        b: &Buffer<f32>,
        c: &mut Buffer<f32>,
    ) -> Result<(), PluginError> {
        let d = [m, n, k, k, n, n].map(|x| x as cl_long);
        let (one, zero) = (1.0f32, 0.0f32);
        let round = |x: usize| x.div_ceil(4).div_ceil(WG) * WG;
        let mut e = ExecuteKernel::new(&self.sgemm);
        // SAFETY: the sgemm kernel's signature, in order and type.
        unsafe {
            e.set_arg(&d[0])
                .set_arg(&d[1])
                .set_arg(&d[2])
                .set_arg(&one)
                .set_arg(a)
                .set_arg(&d[3])
                .set_arg(b)
                .set_arg(&d[4])
                .set_arg(&zero)
                .set_arg(c)
                .set_arg(&d[5]);
        }
        e.set_global_work_sizes(&[round(n), round(m)])
            .set_local_work_sizes(&[WG, WG]);
        run(&mut e, &self.shared.queue, "sgemm")
    }

    fn im2col(
        &mut self,
        x: &Buffer<f32>,
        g: &Geom,
        col: &mut Buffer<f32>,
    ) -> Result<(), PluginError> {
        let a = Self::geom(g)?;
        let mut e = ExecuteKernel::new(&self.im2col);
        // SAFETY: the im2col kernel's signature, in order and type.
        unsafe {
            e.set_arg(x).set_arg(col);
            for v in &a {
                e.set_arg(v);
            }
        }
        e.set_global_work_sizes(&[g.out_plane(), g.c * g.k * g.k]);
        run(&mut e, &self.shared.queue, "im2col")
    }

    fn depthwise(
        &mut self,
        x: &Buffer<f32>,
        w: &Buffer<f32>,
        g: &Geom,
        y: &mut Buffer<f32>,
    ) -> Result<(), PluginError> {
        let a = Self::geom(g)?;
        let mut e = ExecuteKernel::new(&self.depthwise);
        // SAFETY: the depthwise kernel's signature, in order and type.
        unsafe {
            e.set_arg(x).set_arg(w).set_arg(y);
            for v in &a {
                e.set_arg(v);
            }
        }
        e.set_global_work_sizes(&[g.out_plane(), g.c]);
        run(&mut e, &self.shared.queue, "depthwise")
    }

    fn bias_act(
        &mut self,
        x: &mut Buffer<f32>,
        bias: &Buffer<f32>,
        channels: usize,
        plane: usize,
        relu6: bool,
    ) -> Result<(), PluginError> {
        let (p, r) = (int(plane)?, cl_int::from(relu6));
        let mut e = ExecuteKernel::new(&self.bias_act);
        // SAFETY: the bias_act kernel's signature, in order and type.
        unsafe {
            e.set_arg(x).set_arg(bias).set_arg(&p).set_arg(&r);
        }
        e.set_global_work_sizes(&[plane, channels]);
        run(&mut e, &self.shared.queue, "bias_act")
    }

    fn add(&mut self, x: &mut Buffer<f32>, y: &Buffer<f32>, n: usize) -> Result<(), PluginError> {
        let mut e = ExecuteKernel::new(&self.add);
        // SAFETY: the add kernel's signature, in order and type.
        unsafe {
            e.set_arg(x).set_arg(y);
        }
        e.set_global_work_sizes(&[n]);
        run(&mut e, &self.shared.queue, "add")
    }

    fn mean(
        &mut self,
        x: &Buffer<f32>,
        channels: usize,
        plane: usize,
        y: &mut Buffer<f32>,
    ) -> Result<(), PluginError> {
        let p = int(plane)?;
        let mut e = ExecuteKernel::new(&self.mean);
        // SAFETY: the mean kernel's signature, in order and type.
        unsafe {
            e.set_arg(x).set_arg(y).set_arg(&p);
        }
        e.set_global_work_sizes(&[channels]);
        run(&mut e, &self.shared.queue, "mean")
    }
}
