//! The op table: every vAccel op skiff serves, one row each in
//! [`op_table!`] below: its name (also the name of its request type), its
//! number and its name in logs. The request type implements [`OpArgs`]:
//! `decode` (from checked [`Args`], the guest's or an agent client's) and
//! `layout` (its genop arguments in vAccel's order: what the remote plugin
//! sends, and the buffers the reply's write arguments fill). From the rows
//! the macro derives [`Op`], decode by number, [`Op::layout`] and [`OPS`];
//! a plugin lists the ops it runs in `runs!` (plugins/mod.rs), which
//! derives its `implements` answer and its dispatch from the same names.
//!
//! So a new op is a row, a request type with its `OpArgs`, and a
//! `Runs<NewOp>` impl in each plugin that lists it: leaving out any of
//! these is a compile error (docs/architecture.md, "An accelerator op").

use super::args::{Args, In, Out, MAX};
pub use super::classify::Classify;
use super::Errno;
use crate::vaccel::proto::ArgRef;
use guest_abi::accel::{arg, op, EINVAL, ENOTSUP};
use std::borrow::Cow;
use std::marker::PhantomData;
use std::path::PathBuf;

/// Longest library or symbol name EXEC accepts.
pub const NAME_MAX: usize = 255;

/// An op's request type: how it is read and how it travels.
pub trait OpArgs<'m>: Sized {
    /// Builds the request from `read[1..]` and `write[..]` (`read[0]`,
    /// the op number, was read by [`Op::decode`]), checking every type,
    /// length and range.
    fn decode(args: &mut Args<'m>) -> Result<Self, Errno>;
    /// Its arguments after `read[0]`, in vAccel's genop order, borrowing
    /// its checked buffers.
    fn layout<'a>(&'a mut self, l: &mut Layout<'a>);
}

macro_rules! op_table {
    ($( $v:ident = $num:expr, $name:literal; )*) => {
        /// A decoded request: every length and range already checked. It
        /// lives on the stack for one hypercall (boxing EXEC's arrays
        /// would allocate).
        #[derive(Debug)]
        #[allow(clippy::large_enum_variant)]
        pub enum Op<'m> {
            $( $v($v<'m>), )*
        }

        /// Every op skiff serves, (number, name); any other op number is
        /// ENOTSUP.
        pub static OPS: &[(u8, &str)] = &[ $( ($num, $name), )* ];

        $( impl $v<'_> {
            /// This op's number (`runs!` names it so).
            pub const NUMBER: u8 = $num;
        } )*

        impl<'m> Op<'m> {
            pub fn number(&self) -> u8 {
                match self {
                    $( Op::$v(_) => $num, )*
                }
            }

            /// Decodes a genop request: `read[0]` names the op.
            pub fn decode(args: &mut Args<'m>) -> Result<Self, Errno> {
                let first = args.read().first().ok_or(EINVAL)?;
                let nr = first.scalar::<u8>(arg::UINT8)?;
                $( if nr == $num {
                    return <$v<'m> as OpArgs<'m>>::decode(args).map(Op::$v);
                } )*
                Err(ENOTSUP)
            }

            /// Its genop arguments (see [`Layout`]).
            pub fn layout<'a>(&'a mut self, l: &mut Layout<'a>) {
                match self {
                    $( Op::$v(x) => x.layout(l), )*
                }
            }
        }
    };
}

op_table! {
    Noop = op::NOOP, "NOOP";
    Exec = op::EXEC, "EXEC";
    Classify = op::IMAGE_CLASSIFY, "IMAGE_CLASSIFY";
    Sgemm = op::BLAS_SGEMM, "BLAS_SGEMM";
    MinMax = op::MINMAX, "MINMAX";
}

/// The name of op number `op`, if skiff serves it.
pub fn name(op: u8) -> Option<&'static str> {
    OPS.iter().find(|(n, _)| *n == op).map(|(_, name)| *name)
}

/// Decodes a genop request: `read[0]` names the op.
pub fn decode<'m>(args: &mut Args<'m>) -> Result<Op<'m>, Errno> {
    Op::decode(args)
}

/// An op's genop arguments as the wire carries them: `read` to send
/// (`read[0]` the op number), and `write`, the op's output buffers,
/// sent for their types and sizes and filled from the reply.
pub struct Layout<'a> {
    /// The run's `--accel-lib` NAME=PATH: an EXEC sends the PATH (what
    /// vAccel's agent dlopens; skiff's takes either).
    libs: &'a [(String, PathBuf)],
    pub read: Vec<ArgRef<'a>>,
    pub write: Vec<Out<'a>>,
}

impl<'a> Layout<'a> {
    /// `op`'s arguments.
    pub fn of(op: &'a mut Op<'_>, libs: &'a [(String, PathBuf)]) -> Self {
        let mut l = Layout {
            libs,
            read: Vec::with_capacity(MAX),
            write: Vec::new(),
        };
        l.value(arg::UINT8, vec![op.number()]);
        op.layout(&mut l);
        l
    }

    /// A scalar, as its bytes.
    fn value(&mut self, ty: u32, bytes: Vec<u8>) {
        self.read.push(ArgRef {
            ty,
            custom: 0,
            bytes: Cow::Owned(bytes),
            shm: None,
        });
    }

    fn int64(&mut self, v: usize) {
        self.value(arg::INT64, (v as i64).to_le_bytes().to_vec());
    }

    fn int32(&mut self, v: i32) {
        self.value(arg::INT32, v.to_le_bytes().to_vec());
    }

    fn float32(&mut self, v: f32) {
        self.value(arg::FLOAT32, v.to_le_bytes().to_vec());
    }

    /// A NUL-terminated string, as vAccel sends them.
    fn string(&mut self, s: &[u8]) {
        let mut v = s.to_vec();
        v.push(0);
        self.value(arg::STRING, v);
    }

    /// A read buffer, borrowed.
    fn read(&mut self, ty: u32, custom: u32, bytes: &'a [u8]) {
        self.read.push(ArgRef {
            ty,
            custom,
            bytes: Cow::Borrowed(bytes),
            shm: None,
        });
    }

    /// An output buffer.
    fn write(&mut self, ty: u32, custom: u32, bytes: &'a mut [u8]) {
        self.write.push(Out { ty, custom, bytes });
    }
}

/// NOOP: no arguments. (The lifetime only makes every request type
/// alike for the table.)
#[derive(Debug)]
pub struct Noop<'m>(PhantomData<&'m ()>);

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

impl<'m> OpArgs<'m> for Noop<'m> {
    fn decode(args: &mut Args<'m>) -> Result<Self, Errno> {
        count(args, 0, 0)?;
        Ok(Noop(PhantomData))
    }
    fn layout<'a>(&'a mut self, _: &mut Layout<'a>) {}
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
impl<'m> OpArgs<'m> for Sgemm<'m> {
    fn decode(args: &mut Args<'m>) -> Result<Self, Errno> {
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
        Ok(Sgemm {
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
        })
    }

    fn layout<'a>(&'a mut self, l: &mut Layout<'a>) {
        let (m, n, k) = (self.m, self.n, self.k);
        l.int64(m);
        l.int64(n);
        l.int64(k);
        l.float32(self.alpha);
        l.read(arg::FLOAT32_ARRAY, 0, as_bytes(self.a));
        l.int64(self.lda);
        l.read(arg::FLOAT32_ARRAY, 0, as_bytes(self.b));
        l.int64(self.ldb);
        l.float32(self.beta);
        l.int64(self.ldc);
        l.write(arg::FLOAT32_ARRAY, 0, as_bytes_mut(self.c));
    }
}

/// read [op, FLOAT64_ARRAY data, INT32 ndata, INT32 low, INT32 high];
/// write [FLOAT64_ARRAY out, FLOAT64 min, FLOAT64 max].
impl<'m> OpArgs<'m> for MinMax<'m> {
    fn decode(args: &mut Args<'m>) -> Result<Self, Errno> {
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
        Ok(MinMax {
            data: &data[..nd],
            low,
            high,
            out: &mut out[..nd],
            min,
            max,
        })
    }

    fn layout<'a>(&'a mut self, l: &mut Layout<'a>) {
        l.read(arg::FLOAT64_ARRAY, 0, as_bytes(self.data));
        l.int32(self.data.len() as i32);
        l.int32(self.low);
        l.int32(self.high);
        l.write(arg::FLOAT64_ARRAY, 0, as_bytes_mut(self.out));
        l.write(arg::FLOAT64, 0, &mut self.min[..]);
        l.write(arg::FLOAT64, 0, &mut self.max[..]);
    }
}

/// read [op, BUFFER image]; write [UCHAR_ARRAY imgname, UCHAR_ARRAY text].
impl<'m> OpArgs<'m> for Classify<'m> {
    fn decode(args: &mut Args<'m>) -> Result<Self, Errno> {
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
        Ok(Classify {
            image: image.bytes,
            imgname,
            text,
        })
    }

    fn layout<'a>(&'a mut self, l: &mut Layout<'a>) {
        l.read(arg::BUFFER, 0, self.image);
        l.write(arg::UCHAR_ARRAY, 0, self.imgname);
        l.write(arg::UCHAR_ARRAY, 0, self.text);
    }
}

/// read [op, STRING library, STRING symbol, inputs...]; write [outputs...].
impl<'m> OpArgs<'m> for Exec<'m> {
    fn decode(args: &mut Args<'m>) -> Result<Self, Errno> {
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
        Ok(Exec {
            library,
            symbol,
            inputs,
            nr_in,
            outputs,
            nr_out,
        })
    }

    /// The library goes by the PATH the run gives its NAME, if any.
    fn layout<'a>(&'a mut self, l: &mut Layout<'a>) {
        use std::os::unix::ffi::OsStrExt;
        let path = l.libs.iter().find(|(n, _)| n.as_bytes() == self.library);
        l.string(path.map_or(self.library, |(_, p)| p.as_os_str().as_bytes()));
        l.string(self.symbol);
        for i in &self.inputs[..self.nr_in] {
            l.read(i.ty, i.custom, i.bytes);
        }
        for o in &mut self.outputs[..self.nr_out] {
            l.write(o.ty, o.custom, o.bytes);
        }
    }
}

fn as_bytes<T: super::args::bytemuck_lite::Pod>(v: &[T]) -> &[u8] {
    // SAFETY: plain numbers viewed as their bytes, same extent.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn as_bytes_mut<T: super::args::bytemuck_lite::Pod>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as above; every byte pattern is a valid T (Pod), and `v` is
    // borrowed mutably for the result's lifetime.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}
