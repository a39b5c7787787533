//! The CUDA plugin: `cudarc` with libcuda and libcublas loaded at run
//! time, cuBLAS sgemm. cudarc panics when it first touches a missing
//! library, so `new` probes both before anything else: on a host without
//! CUDA (skiff's build and CI machines have no GPU) the plugin is
//! "unavailable: no CUDA driver" and never runs.

use super::{runs, Classifies, OpContext, Plugin, PluginError, Runs, Unavailable};
use crate::accel::classify::cuda::{nvrtc_present, CudaBackend};
use crate::accel::classify::graph::{Network, Walker};
use crate::accel::classify::model::Model;
use crate::accel::ops::Sgemm;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaContext, CudaStream};
use guest_abi::accel::{op, PLUGIN_GPU};
use std::sync::Arc;

pub struct Cuda {
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    device: String,
    /// NVRTC loads: the classifier's kernels can be built.
    nvrtc: bool,
}

impl std::fmt::Debug for Cuda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cuda")
            .field("device", &self.device)
            .finish()
    }
}

fn backend(what: &'static str, e: impl std::fmt::Debug) -> PluginError {
    PluginError::Backend {
        plugin: "cuda",
        what,
        detail: format!("{e:?}"),
    }
}

/// Whether libcuda and libcublas can be loaded (no panic if not).
pub fn probe() -> Result<(), Unavailable> {
    // SAFETY: these only try to dlopen the candidate library names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Unavailable("no CUDA driver".into()));
    }
    // SAFETY: as above.
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(Unavailable("no cuBLAS library".into()));
    }
    Ok(())
}

impl Cuda {
    pub fn new() -> Result<Self, Unavailable> {
        probe()?;
        let ctx = CudaContext::new(0).map_err(|e| Unavailable(format!("CUDA device 0: {e:?}")))?;
        let device = ctx.name().unwrap_or_else(|_| "CUDA device 0".into());
        let stream = ctx.default_stream();
        let blas =
            CudaBlas::new(stream.clone()).map_err(|e| Unavailable(format!("cuBLAS: {e:?}")))?;
        Ok(Self {
            blas,
            stream,
            device,
            nvrtc: nvrtc_present(),
        })
    }
}

/// cuBLAS takes C ints.
fn int(x: usize) -> Result<i32, PluginError> {
    i32::try_from(x).map_err(|_| PluginError::Invalid)
}

impl Plugin for Cuda {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn kind(&self) -> u32 {
        PLUGIN_GPU
    }
    runs!(Noop, Sgemm, Classify);
    /// Classifying needs NVRTC (the kernels are compiled at run time).
    fn offers(&self, o: u8) -> bool {
        o != op::IMAGE_CLASSIFY || self.nvrtc
    }

    fn describe(&self) -> String {
        format!("cuda ({})", self.device)
    }
}

impl Runs<Sgemm<'_>> for Cuda {
    fn run(&mut self, s: &mut Sgemm<'_>, _: &OpContext<'_>) -> Result<(), PluginError> {
        if s.m == 0 || s.n == 0 {
            return Ok(());
        }
        let st = &self.stream;
        let a = st.clone_htod(s.a).map_err(|e| backend("copy A", e))?;
        let b = st.clone_htod(s.b).map_err(|e| backend("copy B", e))?;
        let mut c = st.clone_htod(s.c).map_err(|e| backend("copy C", e))?;
        // Row-major C = A*B is column-major C^T = B^T * A^T: swap the
        // operands and the m/n roles; no transposes needed.
        let cfg = GemmConfig {
            transa: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
            transb: cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
            m: int(s.n)?,
            n: int(s.m)?,
            k: int(s.k)?,
            alpha: s.alpha,
            lda: int(s.ldb)?,
            ldb: int(s.lda)?,
            beta: s.beta,
            ldc: int(s.ldc)?,
        };
        // SAFETY: the device buffers hold exactly the spans the decoder
        // checked for these dimensions and strides.
        unsafe { self.blas.gemm(cfg, &b, &a, &mut c) }.map_err(|e| backend("cublasSgemm", e))?;
        st.memcpy_dtoh(&c, s.c)
            .map_err(|e| backend("copy C back", e))?;
        st.synchronize().map_err(|e| backend("synchronize", e))?;
        Ok(())
    }
}

impl Classifies for Cuda {
    fn network(&mut self, m: &Model) -> Result<Box<dyn Network>, PluginError> {
        Ok(Box::new(Walker::new(
            CudaBackend::new(self.stream.clone())?,
            m,
        )?))
    }
}
