//! The CPU plugin: sgemm on `matrixmultiply` (single-threaded, as skiff
//! is), MINMAX, EXEC of the operator's host libraries, IMAGE_CLASSIFY.

use super::{runs, Classifies, OpContext, Plugin, PluginError, Runs};
use crate::accel::classify::cpu::CpuBackend;
use crate::accel::classify::graph::{Network, Walker};
use crate::accel::classify::model::Model;
use crate::accel::ops::{Exec, MinMax, Sgemm};
use guest_abi::accel::{PLUGIN_CPU, PLUGIN_SOFTWARE};

#[derive(Debug)]
pub struct Cpu;

impl Plugin for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn kind(&self) -> u32 {
        PLUGIN_CPU | PLUGIN_SOFTWARE
    }
    runs!(Noop, Sgemm, MinMax, Exec, Classify);
}

impl Runs<Sgemm<'_>> for Cpu {
    fn run(&mut self, s: &mut Sgemm<'_>, _: &OpContext<'_>) -> Result<(), PluginError> {
        if s.m == 0 || s.n == 0 {
            return Ok(());
        }
        // SAFETY: the decoder sized every slice to span its matrix with
        // its row stride (m-1)*ld + cols, so every element matrixmultiply
        // touches is in bounds; `c` is exclusive. Strides fit isize: the
        // slices lie in at most 4 GiB of guest memory.
        unsafe {
            matrixmultiply::sgemm(
                s.m,
                s.k,
                s.n,
                s.alpha,
                s.a.as_ptr(),
                s.lda as isize,
                1,
                s.b.as_ptr(),
                s.ldb as isize,
                1,
                s.beta,
                s.c.as_mut_ptr(),
                s.ldc as isize,
                1,
            )
        };
        Ok(())
    }
}

/// Also returns the minimum and maximum of the data.
impl Runs<MinMax<'_>> for Cpu {
    fn run(&mut self, m: &mut MinMax<'_>, _: &OpContext<'_>) -> Result<(), PluginError> {
        let (lo, hi) = (f64::from(m.low), f64::from(m.high));
        let mut min = f64::INFINITY;
        let mut max = f64::NEG_INFINITY;
        for (o, &x) in m.out.iter_mut().zip(m.data) {
            min = min.min(x);
            max = max.max(x);
            *o = x.clamp(lo, hi);
        }
        *m.min = min.to_le_bytes();
        *m.max = max.to_le_bytes();
        Ok(())
    }
}

impl Runs<Exec<'_>> for Cpu {
    fn run(&mut self, e: &mut Exec<'_>, cx: &OpContext<'_>) -> Result<(), PluginError> {
        cx.libs.call(e)
    }
}

impl Classifies for Cpu {
    fn network(&mut self, m: &Model) -> Result<Box<dyn Network>, PluginError> {
        Ok(Box::new(Walker::new(CpuBackend, m)?))
    }
}
