//! The op table: for each supported vAccel op, its genop argument layout
//! and a decoder from checked [`Args`] to a typed request a plugin runs.
//! A new op is one row in [`OPS`], one [`Op`]
//! variant and one default method on [`super::plugins::Plugin`].

use super::args::{Args, In, Out, MAX};
use super::classify::Classify;
use super::Errno;
use guest_abi::accel::{arg, op, EINVAL, ENOTSUP};

/// Longest library or symbol name EXEC accepts.
pub const NAME_MAX: usize = 255;

/// One row of the op table.
pub struct OpSpec {
    pub op: u8,
    pub name: &'static str,
    /// Builds the typed request from `read[1..]` and `write[..]`.
    pub decode: for<'m> fn(&mut Args<'m>) -> Result<Op<'m>, Errno>,
}

/// Every op skiff serves; any other op number is ENOTSUP.
pub static OPS: &[OpSpec] = &[
    OpSpec {
        op: op::NOOP,
        name: "NOOP",
        decode: noop,
    },
    OpSpec {
        op: op::EXEC,
        name: "EXEC",
        decode: exec,
    },
    OpSpec {
        op: op::IMAGE_CLASSIFY,
        name: "IMAGE_CLASSIFY",
        decode: classify,
    },
    OpSpec {
        op: op::BLAS_SGEMM,
        name: "BLAS_SGEMM",
        decode: sgemm,
    },
    OpSpec {
        op: op::MINMAX,
        name: "MINMAX",
        decode: minmax,
    },
];

/// The table row of op number `op`.
pub fn spec(op: u8) -> Option<&'static OpSpec> {
    OPS.iter().find(|s| s.op == op)
}

/// A decoded request: every length and range already checked. It lives
/// on the stack for one hypercall (boxing EXEC's arrays would allocate).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Op<'m> {
    Noop,
    Sgemm(Sgemm<'m>),
    MinMax(MinMax<'m>),
    Exec(Exec<'m>),
    Classify(Classify<'m>),
}

impl Op<'_> {
    pub fn number(&self) -> u8 {
        match self {
            Op::Noop => op::NOOP,
            Op::Sgemm(_) => op::BLAS_SGEMM,
            Op::MinMax(_) => op::MINMAX,
            Op::Exec(_) => op::EXEC,
            Op::Classify(_) => op::IMAGE_CLASSIFY,
        }
    }
}

/// `C = alpha * A * B + beta * C`, row-major; `A` is m x k (row stride
/// `lda`), `B` k x n (`ldb`), `C` m x n (`ldc`). The slices are exactly
/// as long as the matrices need.
#[derive(Debug)]
pub struct Sgemm<'m> {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub a: &'m [f32],
    pub lda: usize,
    pub b: &'m [f32],
    pub ldb: usize,
    pub beta: f32,
    pub c: &'m mut [f32],
    pub ldc: usize,
}

/// MINMAX: `out[i] = clamp(data[i], low, high)`; the plugin returns the
/// minimum and maximum of `data` (skiff's definition: vAccel fixes only
/// the layout).
#[derive(Debug)]
pub struct MinMax<'m> {
    pub data: &'m [f64],
    pub low: i32,
    pub high: i32,
    pub out: &'m mut [f64],
    pub min: &'m mut [u8; 8],
    pub max: &'m mut [u8; 8],
}

/// EXEC: `symbol` of the operator's library `library`, called with the
/// remaining read arguments and all write arguments.
#[derive(Debug)]
pub struct Exec<'m> {
    pub library: &'m [u8],
    pub symbol: &'m [u8],
    inputs: [In<'m>; MAX],
    nr_in: usize,
    outputs: [Out<'m>; MAX],
    nr_out: usize,
}

impl<'m> Exec<'m> {
    pub fn inputs(&self) -> &[In<'m>] {
        &self.inputs[..self.nr_in]
    }
    pub fn outputs(&mut self) -> &mut [Out<'m>] {
        &mut self.outputs[..self.nr_out]
    }
    /// The outputs read-only: (type, custom type, bytes).
    pub fn output_slices(&self) -> impl Iterator<Item = (u32, u32, &[u8])> {
        let o = &self.outputs[..self.nr_out];
        o.iter().map(|o| (o.ty, o.custom, &*o.bytes))
    }
}

fn count(args: &Args<'_>, read: usize, write: usize) -> Result<(), Errno> {
    let (r, w) = (args.read().len(), args.nr_write());
    if r != read + 1 || w != write {
        return Err(EINVAL);
    }
    Ok(())
}

fn noop<'m>(args: &mut Args<'m>) -> Result<Op<'m>, Errno> {
    count(args, 0, 0)?;
    Ok(Op::Noop)
}

/// A non-negative INT64 dimension.
fn dim(a: &In<'_>) -> Result<usize, Errno> {
    usize::try_from(a.scalar::<i64>(arg::INT64)?).map_err(|_| EINVAL)
}

/// Elements a row-major `rows x cols` matrix with row stride `ld` spans;
/// EINVAL if `ld < cols` or on overflow.
fn span(rows: usize, cols: usize, ld: usize) -> Result<usize, Errno> {
    if ld < cols.max(1) {
        return Err(EINVAL);
    }
    if rows == 0 || cols == 0 {
        return Ok(0);
    }
    (rows - 1)
        .checked_mul(ld)
        .and_then(|x| x.checked_add(cols))
        .ok_or(EINVAL)
}

/// read [op, INT64 m, INT64 n, INT64 k, FLOAT32 alpha, FLOAT32_ARRAY a,
/// INT64 lda, FLOAT32_ARRAY b, INT64 ldb, FLOAT32 beta, INT64 ldc];
/// write [FLOAT32_ARRAY c].
fn sgemm<'m>(args: &mut Args<'m>) -> Result<Op<'m>, Errno> {
    count(args, 10, 1)?;
    let r = args.read();
    let (m, n, k) = (dim(&r[1])?, dim(&r[2])?, dim(&r[3])?);
    let alpha = r[4].scalar::<f32>(arg::FLOAT32)?;
    let a = r[5].array::<f32>(arg::FLOAT32_ARRAY)?;
    let lda = dim(&r[6])?;
    let b = r[7].array::<f32>(arg::FLOAT32_ARRAY)?;
    let ldb = dim(&r[8])?;
    let beta = r[9].scalar::<f32>(arg::FLOAT32)?;
    let ldc = dim(&r[10])?;
    let (na, nb, nc) = (span(m, k, lda)?, span(k, n, ldb)?, span(m, n, ldc)?);
    let c = args
        .take_write()
        .next()
        .ok_or(EINVAL)?
        .array::<f32>(arg::FLOAT32_ARRAY)?;
    if a.len() < na || b.len() < nb || c.len() < nc {
        return Err(EINVAL);
    }
    Ok(Op::Sgemm(Sgemm {
        m,
        n,
        k,
        alpha,
        a: &a[..na],
        lda,
        b: &b[..nb],
        ldb,
        beta,
        c: &mut c[..nc],
        ldc,
    }))
}

/// read [op, FLOAT64_ARRAY data, INT32 ndata, INT32 low, INT32 high];
/// write [FLOAT64_ARRAY out, FLOAT64 min, FLOAT64 max].
fn minmax<'m>(args: &mut Args<'m>) -> Result<Op<'m>, Errno> {
    count(args, 4, 3)?;
    let r = args.read();
    let data = r[1].array::<f64>(arg::FLOAT64_ARRAY)?;
    let nd = usize::try_from(r[2].scalar::<i32>(arg::INT32)?).map_err(|_| EINVAL)?;
    let (low, high) = (r[3].scalar::<i32>(arg::INT32)?, r[4].scalar(arg::INT32)?);
    let mut w = args.take_write();
    let out = w.next().ok_or(EINVAL)?.array::<f64>(arg::FLOAT64_ARRAY)?;
    let min = w.next().ok_or(EINVAL)?.scalar::<8>(arg::FLOAT64)?;
    let max = w.next().ok_or(EINVAL)?.scalar::<8>(arg::FLOAT64)?;
    if nd == 0 || data.len() < nd || out.len() < nd || low > high {
        return Err(EINVAL);
    }
    Ok(Op::MinMax(MinMax {
        data: &data[..nd],
        low,
        high,
        out: &mut out[..nd],
        min,
        max,
    }))
}

/// read [op, BUFFER image]; write [UCHAR_ARRAY imgname, UCHAR_ARRAY text].
fn classify<'m>(args: &mut Args<'m>) -> Result<Op<'m>, Errno> {
    count(args, 1, 2)?;
    let image = args.read()[1];
    if image.ty != arg::BUFFER || image.bytes.is_empty() {
        return Err(EINVAL);
    }
    let mut w = args.take_write();
    let mut out = || {
        let o = w.next().ok_or(EINVAL)?;
        match o.ty {
            arg::UCHAR_ARRAY => Ok(o.bytes),
            _ => Err(EINVAL),
        }
    };
    let (imgname, text) = (out()?, out()?);
    Ok(Op::Classify(Classify {
        image: image.bytes,
        imgname,
        text,
    }))
}

/// read [op, STRING library, STRING symbol, inputs...]; write [outputs...].
fn exec<'m>(args: &mut Args<'m>) -> Result<Op<'m>, Errno> {
    if args.read().len() < 3 {
        return Err(EINVAL);
    }
    let r = args.read();
    let (library, symbol) = (r[1].string(NAME_MAX)?, r[2].string(NAME_MAX)?);
    let mut inputs = [In::EMPTY; MAX];
    let nr_in = r.len() - 3;
    inputs[..nr_in].copy_from_slice(&r[3..]);
    let mut outputs = std::array::from_fn(|_| Out::empty());
    let mut nr_out = 0;
    for (slot, o) in outputs.iter_mut().zip(args.take_write()) {
        *slot = o;
        nr_out += 1;
    }
    Ok(Op::Exec(Exec {
        library,
        symbol,
        inputs,
        nr_in,
        outputs,
        nr_out,
    }))
}

/// Decodes a genop request: `read[0]` names the op.
pub fn decode<'m>(args: &mut Args<'m>) -> Result<Op<'m>, Errno> {
    let first = args.read().first().ok_or(EINVAL)?;
    let nr = first.scalar::<u8>(arg::UINT8)?;
    let spec = spec(nr).ok_or(ENOTSUP)?;
    (spec.decode)(args)
}
