//! One graph walker over a small backend trait: every plugin runs the same
//! sequence of ops (im2col + sgemm for the stem, sgemm for 1x1 convs,
//! depthwise conv, bias + ReLU6, residual add, global average pool, FC),
//! on buffers it owns. Weights are uploaded once, when the network is
//! built; activations live in a few buffers reused for every image.

use super::model::{Conv, Model, SIDE};
use crate::accel::plugins::PluginError;

/// The stem's stride (EfficientNet's).
pub const STEM_STRIDE: usize = 2;

/// A convolution's geometry with TF-SAME padding (asymmetric: the extra
/// row/column goes at the bottom/right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad_t: usize,
    pub pad_l: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Geom {
    pub fn same(c: usize, h: usize, w: usize, k: usize, stride: usize) -> Self {
        let pad = |n: usize| {
            let out = n.div_ceil(stride);
            let total = ((out - 1) * stride + k).saturating_sub(n);
            (total / 2, out)
        };
        let (pad_t, oh) = pad(h);
        let (pad_l, ow) = pad(w);
        Geom {
            c,
            h,
            w,
            k,
            stride,
            pad_t,
            pad_l,
            oh,
            ow,
        }
    }
    pub fn out_plane(&self) -> usize {
        self.oh * self.ow
    }
}

/// What a plugin implements to run networks. Buffers hold f32s.
pub trait Backend {
    type Buf;
    fn upload(&mut self, data: &[f32]) -> Result<Self::Buf, PluginError>;
    fn alloc(&mut self, n: usize) -> Result<Self::Buf, PluginError>;
    /// Overwrites the start of `buf` with `data`.
    fn write(&mut self, buf: &mut Self::Buf, data: &[f32]) -> Result<(), PluginError>;
    /// Waits for queued work and copies `out.len()` floats back.
    fn read(&mut self, buf: &Self::Buf, out: &mut [f32]) -> Result<(), PluginError>;
    /// `c[m x n] = a[m x k] * b[k x n]`, row-major, contiguous.
    fn gemm(
        &mut self,
        m: usize,
        n: usize,
        k: usize,
        a: &Self::Buf,
        b: &Self::Buf,
        c: &mut Self::Buf,
    ) -> Result<(), PluginError>;
    /// CHW `x` to the [c*k*k x oh*ow] patch matrix (zeros in the padding).
    fn im2col(&mut self, x: &Self::Buf, g: &Geom, col: &mut Self::Buf) -> Result<(), PluginError>;
    /// Depthwise convolution: one k x k filter per channel.
    fn depthwise(
        &mut self,
        x: &Self::Buf,
        w: &Self::Buf,
        g: &Geom,
        y: &mut Self::Buf,
    ) -> Result<(), PluginError>;
    /// `x[c][p] += bias[c]`, then clamped to [0, 6] if `relu6`.
    fn bias_act(
        &mut self,
        x: &mut Self::Buf,
        bias: &Self::Buf,
        channels: usize,
        plane: usize,
        relu6: bool,
    ) -> Result<(), PluginError>;
    /// `x[i] += y[i]` for the first `n` elements.
    fn add(&mut self, x: &mut Self::Buf, y: &Self::Buf, n: usize) -> Result<(), PluginError>;
    /// `y[c]` = mean of `x[c][..plane]`.
    fn mean(
        &mut self,
        x: &Self::Buf,
        channels: usize,
        plane: usize,
        y: &mut Self::Buf,
    ) -> Result<(), PluginError>;
}

/// A network a plugin built; `logits` runs one preprocessed image.
pub trait Network: std::fmt::Debug {
    /// `input`: 3 x 224 x 224; `out`: one logit per class.
    fn logits(&mut self, input: &[f32], out: &mut [f32]) -> Result<(), PluginError>;
}

struct Layer<B> {
    w: B,
    b: B,
    cout: usize,
    k: usize,
}

struct BlockL<B> {
    expand: Option<Layer<B>>,
    dw: Layer<B>,
    project: Layer<B>,
    stride: usize,
    residual: bool,
}

/// The walker: a backend and the network's weights on it.
pub struct Walker<E: Backend> {
    be: E,
    stem: Layer<E::Buf>,
    blocks: Vec<BlockL<E::Buf>>,
    head: Layer<E::Buf>,
    fc: Layer<E::Buf>,
    cur: E::Buf,
    next: E::Buf,
    wide: E::Buf,
    dw: E::Buf,
    col: E::Buf,
    pooled: E::Buf,
    out: E::Buf,
}

impl<E: Backend> std::fmt::Debug for Walker<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Walker({} blocks)", self.blocks.len())
    }
}

fn layer<E: Backend>(be: &mut E, c: &Conv) -> Result<Layer<E::Buf>, PluginError> {
    Ok(Layer {
        w: be.upload(&c.w)?,
        b: be.upload(&c.b)?,
        cout: c.cout,
        k: c.k,
    })
}

impl<E: Backend> Walker<E> {
    /// Uploads `m`'s weights and sizes the activation buffers.
    pub fn new(mut be: E, m: &Model) -> Result<Self, PluginError> {
        let g = Geom::same(3, SIDE, SIDE, m.stem.k, STEM_STRIDE);
        let (mut act, mut wide) = (m.stem.cout * g.out_plane(), 3 * SIDE * SIDE);
        let (mut c, mut h, mut w) = (m.stem.cout, g.oh, g.ow);
        let mut blocks = Vec::with_capacity(m.blocks.len());
        for b in &m.blocks {
            let ce = b.expand.as_ref().map_or(c, |e| e.cout);
            let g = Geom::same(ce, h, w, b.dw.k, b.stride);
            wide = wide.max(ce * h * w).max(ce * g.out_plane());
            (c, h, w) = (b.project.cout, g.oh, g.ow);
            act = act.max(c * h * w);
            blocks.push(BlockL {
                expand: b.expand.as_ref().map(|e| layer(&mut be, e)).transpose()?,
                dw: layer(&mut be, &b.dw)?,
                project: layer(&mut be, &b.project)?,
                stride: b.stride,
                residual: b.residual,
            });
        }
        wide = wide.max(m.head.cout * h * w);
        Ok(Walker {
            stem: layer(&mut be, &m.stem)?,
            head: layer(&mut be, &m.head)?,
            fc: layer(&mut be, &m.fc)?,
            cur: be.alloc(act)?,
            next: be.alloc(act)?,
            dw: be.alloc(wide)?,
            col: be.alloc(3 * m.stem.k * m.stem.k * g.out_plane())?,
            wide: be.alloc(wide)?,
            pooled: be.alloc(m.head.cout)?,
            out: be.alloc(m.fc.cout)?,
            blocks,
            be,
        })
    }
}

impl<E: Backend> Network for Walker<E> {
    fn logits(&mut self, input: &[f32], out: &mut [f32]) -> Result<(), PluginError> {
        let Walker {
            be,
            stem,
            blocks,
            head,
            fc,
            cur,
            next,
            wide,
            dw,
            col,
            pooled,
            out: logits,
        } = self;
        if input.len() != 3 * SIDE * SIDE || out.len() != fc.cout {
            return Err(PluginError::Invalid);
        }
        be.write(wide, input)?;
        let g = Geom::same(3, SIDE, SIDE, stem.k, STEM_STRIDE);
        be.im2col(wide, &g, col)?;
        be.gemm(
            stem.cout,
            g.out_plane(),
            3 * stem.k * stem.k,
            &stem.w,
            col,
            cur,
        )?;
        be.bias_act(cur, &stem.b, stem.cout, g.out_plane(), true)?;
        let (mut c, mut h, mut w) = (stem.cout, g.oh, g.ow);
        for b in blocks.iter() {
            let plane = h * w;
            let (src, ce) = match &b.expand {
                Some(e) => {
                    be.gemm(e.cout, plane, c, &e.w, cur, wide)?;
                    be.bias_act(wide, &e.b, e.cout, plane, true)?;
                    (&*wide, e.cout)
                }
                None => (&*cur, c),
            };
            let g = Geom::same(ce, h, w, b.dw.k, b.stride);
            be.depthwise(src, &b.dw.w, &g, dw)?;
            be.bias_act(dw, &b.dw.b, ce, g.out_plane(), true)?;
            let p = &b.project;
            be.gemm(p.cout, g.out_plane(), ce, &p.w, dw, next)?;
            be.bias_act(next, &p.b, p.cout, g.out_plane(), false)?;
            if b.residual {
                be.add(next, cur, p.cout * g.out_plane())?;
            }
            std::mem::swap(cur, next);
            (c, h, w) = (p.cout, g.oh, g.ow);
        }
        be.gemm(head.cout, h * w, c, &head.w, cur, wide)?;
        be.bias_act(wide, &head.b, head.cout, h * w, true)?;
        be.mean(wide, head.cout, h * w, pooled)?;
        be.gemm(fc.cout, 1, head.cout, &fc.w, pooled, logits)?;
        be.bias_act(logits, &fc.b, fc.cout, 1, false)?;
        be.read(logits, out)
    }
}

#[cfg(test)]
mod tests {
    use super::Geom;

    #[test]
    fn tf_same_padding_is_asymmetric_at_stride_two() {
        let g = Geom::same(3, 224, 224, 3, 2);
        assert_eq!((g.pad_t, g.pad_l, g.oh, g.ow), (0, 0, 112, 112));
        let g = Geom::same(8, 56, 56, 5, 2);
        assert_eq!((g.pad_t, g.oh), (1, 28)); // total 3: 1 top, 2 bottom
        let g = Geom::same(8, 14, 14, 5, 1);
        assert_eq!((g.pad_t, g.oh), (2, 14));
    }
}
