//! The CUDA backend: cuBLAS sgemm and five small kernels compiled with
//! NVRTC once per network. No GPU was available where skiff is built and
//! tested: this compiles, and the plugin is skipped cleanly there (no CUDA
//! driver), but it has never run.

use super::graph::{Backend, Geom};
use crate::accel::plugins::PluginError;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

const SRC: &str = r#"
extern "C" __global__ void im2col(const float *x, float *col, int C, int H, int W, int K, int S,
                                  int PT, int PL, int OH, int OW)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int n = OH * OW;
    if (i >= C * K * K * n) return;
    int p = i % n, r = i / n;
    int c = r / (K * K), ky = r % (K * K) / K, kx = r % K;
    int iy = p / OW * S - PT + ky, ix = p % OW * S - PL + kx;
    col[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[(c * H + iy) * W + ix] : 0.0f;
}

extern "C" __global__ void depthwise(const float *x, const float *w, float *y, int C, int H, int W,
                                     int K, int S, int PT, int PL, int OH, int OW)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int n = OH * OW;
    if (i >= C * n) return;
    int p = i % n, c = i / n;
    int y0 = p / OW * S - PT, x0 = p % OW * S - PL;
    const float *xc = x + c * H * W, *f = w + c * K * K;
    float s = 0.0f;
    for (int ky = 0; ky < K; ky++) {
        int iy = y0 + ky;
        if (iy < 0 || iy >= H) continue;
        for (int kx = 0; kx < K; kx++) {
            int ix = x0 + kx;
            if (ix >= 0 && ix < W) s += xc[iy * W + ix] * f[ky * K + kx];
        }
    }
    y[i] = s;
}

extern "C" __global__ void bias_act(float *x, const float *b, int n, int plane, int relu6)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i] + b[i / plane];
    x[i] = relu6 ? fminf(fmaxf(v, 0.0f), 6.0f) : v;
}

extern "C" __global__ void add(float *x, const float *y, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

extern "C" __global__ void mean(const float *x, float *y, int C, int plane)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0.0f;
    for (int p = 0; p < plane; p++) s += x[c * plane + p];
    y[c] = s / plane;
}
"#;

pub struct CudaBackend {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    im2col: CudaFunction,
    depthwise: CudaFunction,
    bias_act: CudaFunction,
    add: CudaFunction,
    mean: CudaFunction,
}

fn backend(what: &'static str, e: impl std::fmt::Debug) -> PluginError {
    PluginError::Backend {
        plugin: "cuda",
        what,
        detail: format!("{e:?}"),
    }
}

fn int(x: usize) -> Result<i32, PluginError> {
    i32::try_from(x).map_err(|_| PluginError::Invalid)
}

/// One thread per element, 256 per block.
fn cfg(n: usize) -> LaunchConfig {
    LaunchConfig::for_num_elems(n as u32)
}

/// Whether NVRTC can be loaded (no panic if not).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

impl CudaBackend {
    pub fn new(stream: Arc<CudaStream>) -> Result<Self, PluginError> {
        let ptx = cudarc::nvrtc::compile_ptx(SRC).map_err(|e| backend("NVRTC", e))?;
        let module = stream
            .context()
            .load_module(ptx)
            .map_err(|e| backend("module", e))?;
        let f = |name| module.load_function(name).map_err(|e| backend("kernel", e));
        Ok(CudaBackend {
            blas: CudaBlas::new(stream.clone()).map_err(|e| backend("cuBLAS", e))?,
            im2col: f("im2col")?,
            depthwise: f("depthwise")?,
            bias_act: f("bias_act")?,
            add: f("add")?,
            mean: f("mean")?,
            stream,
        })
    }

    fn geom(g: &Geom) -> Result<[i32; 9], PluginError> {
        let v = [g.c, g.h, g.w, g.k, g.stride, g.pad_t, g.pad_l, g.oh, g.ow];
        let mut out = [0; 9];
        for (o, &x) in out.iter_mut().zip(&v) {
            *o = int(x)?;
        }
        Ok(out)
    }
}

impl Backend for CudaBackend {
    type Buf = CudaSlice<f32>;

    fn upload(&mut self, data: &[f32]) -> Result<CudaSlice<f32>, PluginError> {
        self.stream.clone_htod(data).map_err(|e| backend("copy", e))
    }
    fn alloc(&mut self, n: usize) -> Result<CudaSlice<f32>, PluginError> {
        self.stream
            .alloc_zeros(n.max(1))
            .map_err(|e| backend("alloc", e))
    }
    fn write(&mut self, buf: &mut CudaSlice<f32>, data: &[f32]) -> Result<(), PluginError> {
        let mut view = buf.slice_mut(..data.len());
        self.stream
            .memcpy_htod(data, &mut view)
            .map_err(|e| backend("copy", e))
    }
    fn read(&mut self, buf: &CudaSlice<f32>, out: &mut [f32]) -> Result<(), PluginError> {
        let view = buf.slice(..out.len());
        self.stream
            .memcpy_dtoh(&view, out)
            .map_err(|e| backend("copy back", e))?;
        self.stream
            .synchronize()
            .map_err(|e| backend("synchronize", e))
    }

    fn gemm(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
    ) -> Result<(), PluginError> {
        // Row-major C = A*B is column-major C^T = B^T * A^T.
        let cfg = GemmConfig {
            transa: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
            transb: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
            m: int(n)?,
            n: int(m)?,
            k: int(k)?,
            alpha: 1.0f32,
            lda: int(n)?,
            ldb: int(k)?,
            beta: 0.0,
            ldc: int(n)?,
        };
        // SAFETY: the walker sized every buffer for these dimensions.
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(|e| backend("cublasSgemm", e))
    }

    fn im2col(
        &mut self,
        x: &CudaSlice<f32>,
        g: &Geom,
        col: &mut CudaSlice<f32>,
    ) -> Result<(), PluginError> {
        let a = Self::geom(g)?;
        let mut l = self.stream.launch_builder(&self.im2col);
        l.arg(x).arg(col);
        for v in &a {
            l.arg(v);
        }
        // SAFETY: the kernel's signature, over buffers sized for `g`.
        unsafe { l.launch(cfg(g.c * g.k * g.k * g.out_plane())) }
            .map(drop)
            .map_err(|e| backend("im2col", e))
    }

    fn depthwise(
        &mut self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        g: &Geom,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), PluginError> {
        let a = Self::geom(g)?;
        let mut l = self.stream.launch_builder(&self.depthwise);
        l.arg(x).arg(w).arg(y);
        for v in &a {
            l.arg(v);
        }
        // SAFETY: as above.
        unsafe { l.launch(cfg(g.c * g.out_plane())) }
            .map(drop)
            .map_err(|e| backend("depthwise", e))
    }

    fn bias_act(
        &mut self,
        x: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        channels: usize,
        plane: usize,
        relu6: bool,
    ) -> Result<(), PluginError> {
        let (n, p, r) = (int(channels * plane)?, int(plane)?, i32::from(relu6));
        let mut l = self.stream.launch_builder(&self.bias_act);
        l.arg(x).arg(bias).arg(&n).arg(&p).arg(&r);
        // SAFETY: as above.
        unsafe { l.launch(cfg(channels * plane)) }
            .map(drop)
            .map_err(|e| backend("bias_act", e))
    }

    fn add(
        &mut self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        n: usize,
    ) -> Result<(), PluginError> {
        let ni = int(n)?;
        let mut l = self.stream.launch_builder(&self.add);
        l.arg(x).arg(y).arg(&ni);
        // SAFETY: as above.
        unsafe { l.launch(cfg(n)) }
            .map(drop)
            .map_err(|e| backend("add", e))
    }

    fn mean(
        &mut self,
        x: &CudaSlice<f32>,
        channels: usize,
        plane: usize,
        y: &mut CudaSlice<f32>,
    ) -> Result<(), PluginError> {
        let (c, p) = (int(channels)?, int(plane)?);
        let mut l = self.stream.launch_builder(&self.mean);
        l.arg(x).arg(y).arg(&c).arg(&p);
        // SAFETY: as above.
        unsafe { l.launch(cfg(channels)) }
            .map(drop)
            .map_err(|e| backend("mean", e))
    }
}
