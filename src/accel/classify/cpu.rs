//! The CPU backend: host vectors, sgemm on `matrixmultiply`, plain loops
//! for the rest (single-threaded, as skiff is).

use super::graph::{Backend, Geom};
use crate::accel::plugins::PluginError;

#[derive(Debug, Default)]
pub struct CpuBackend;

fn fits(buf: &[f32], n: usize) -> Result<(), PluginError> {
    (buf.len() >= n).then_some(()).ok_or(PluginError::Invalid)
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;

    fn upload(&mut self, data: &[f32]) -> Result<Vec<f32>, PluginError> {
        Ok(data.to_vec())
    }
    fn alloc(&mut self, n: usize) -> Result<Vec<f32>, PluginError> {
        Ok(vec![0.0; n])
    }
    fn write(&mut self, buf: &mut Vec<f32>, data: &[f32]) -> Result<(), PluginError> {
        fits(buf, data.len())?;
        buf[..data.len()].copy_from_slice(data);
        Ok(())
    }
    fn read(&mut self, buf: &Vec<f32>, out: &mut [f32]) -> Result<(), PluginError> {
        fits(buf, out.len())?;
        out.copy_from_slice(&buf[..out.len()]);
        Ok(())
    }

    fn gemm(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        a: &Vec<f32>,
        b: &Vec<f32>,
        c: &mut Vec<f32>,
    ) -> Result<(), PluginError> {
        fits(a, m * k)?;
        fits(b, k * n)?;
        fits(c, m * n)?;
        // SAFETY: each matrix is contiguous row-major and its vector holds
        // at least its elements (checked above); `c` is exclusive.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                k as isize,
                1,
                b.as_ptr(),
                n as isize,
                1,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        };
        Ok(())
    }

    fn im2col(&mut self, x: &Vec<f32>, g: &Geom, col: &mut Vec<f32>) -> Result<(), PluginError> {
        let kk = g.k * g.k;
        fits(x, g.c * g.h * g.w)?;
        fits(col, g.c * kk * g.out_plane())?;
        let rows = col.chunks_exact_mut(g.out_plane());
        for (r, row) in rows.take(g.c * kk).enumerate() {
            let (c, ky, kx) = (r / kk, r % kk / g.k, r % g.k);
            let plane = &x[c * g.h * g.w..][..g.h * g.w];
            for oy in 0..g.oh {
                let iy = (oy * g.stride + ky).wrapping_sub(g.pad_t);
                let out = &mut row[oy * g.ow..][..g.ow];
                for (ox, o) in out.iter_mut().enumerate() {
                    let ix = (ox * g.stride + kx).wrapping_sub(g.pad_l);
                    *o = if iy < g.h && ix < g.w {
                        plane[iy * g.w + ix]
                    } else {
                        0.0
                    };
                }
            }
        }
        Ok(())
    }

    fn depthwise(
        &mut self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        g: &Geom,
        y: &mut Vec<f32>,
    ) -> Result<(), PluginError> {
        let (k, plane) = (g.k, g.h * g.w);
        fits(x, g.c * plane)?;
        fits(w, g.c * k * k)?;
        fits(y, g.c * g.out_plane())?;
        for c in 0..g.c {
            let xin = &x[c * plane..][..plane];
            let f = &w[c * k * k..][..k * k];
            let out = &mut y[c * g.out_plane()..][..g.out_plane()];
            for oy in 0..g.oh {
                // The filter rows inside the image for this output row.
                let y0 = (oy * g.stride) as isize - g.pad_t as isize;
                let ky0 = (-y0).max(0) as usize;
                let ky1 = (g.h as isize - y0).clamp(0, k as isize) as usize;
                for ox in 0..g.ow {
                    let x0 = (ox * g.stride) as isize - g.pad_l as isize;
                    let kx0 = (-x0).max(0) as usize;
                    let kx1 = (g.w as isize - x0).clamp(0, k as isize) as usize;
                    let mut s = 0.0f32;
                    for ky in ky0..ky1 {
                        let row = (y0 + ky as isize) as usize * g.w;
                        for kx in kx0..kx1 {
                            s += xin[row + (x0 + kx as isize) as usize] * f[ky * k + kx];
                        }
                    }
                    out[oy * g.ow + ox] = s;
                }
            }
        }
        Ok(())
    }

    fn bias_act(
        &mut self,
        x: &mut Vec<f32>,
        bias: &Vec<f32>,
        channels: usize,
        plane: usize,
        relu6: bool,
    ) -> Result<(), PluginError> {
        fits(x, channels * plane)?;
        fits(bias, channels)?;
        for (row, &b) in x.chunks_exact_mut(plane).zip(&bias[..channels]) {
            for v in row {
                *v += b;
                if relu6 {
                    *v = v.clamp(0.0, 6.0);
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, x: &mut Vec<f32>, y: &Vec<f32>, n: usize) -> Result<(), PluginError> {
        fits(x, n)?;
        fits(y, n)?;
        x[..n].iter_mut().zip(&y[..n]).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn mean(
        &mut self,
        x: &Vec<f32>,
        channels: usize,
        plane: usize,
        y: &mut Vec<f32>,
    ) -> Result<(), PluginError> {
        fits(x, channels * plane)?;
        fits(y, channels)?;
        for (o, row) in y.iter_mut().zip(x.chunks_exact(plane)) {
            *o = row.iter().sum::<f32>() / plane as f32;
        }
        Ok(())
    }
}
