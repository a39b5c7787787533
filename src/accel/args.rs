//! The guest's argument arrays, checked: every descriptor's type, size and
//! guest range (overflow-safe), then borrowed as host slices for the length
//! of one hypercall. No KVM here, and no allocation: the arrays live on the
//! stack, capped at [`ARGS_MAX`].
//!
//! Borrowing guest memory as `&[u8]`/`&mut [u8]` is sound because the one
//! vCPU is stopped in this exit while the borrow lives and nothing else in
//! skiff writes guest memory; [`Args::decode`] refuses a write buffer that
//! overlaps any other argument, so a `&mut` never aliases.

use super::Errno;
use crate::memory::{Gpa, GuestMemory};
use guest_abi::accel::{arg, AccelArg, HcAccel, ARGS_MAX, EINVAL};

pub const MAX: usize = ARGS_MAX as usize;

/// A checked read argument.
#[derive(Debug, Clone, Copy)]
pub struct In<'m> {
    pub ty: u32,
    pub custom: u32,
    pub bytes: &'m [u8],
}

/// A checked write argument.
#[derive(Debug)]
pub struct Out<'m> {
    pub ty: u32,
    pub custom: u32,
    pub bytes: &'m mut [u8],
}

/// Both argument arrays of one request.
#[derive(Debug)]
pub struct Args<'m> {
    read: [In<'m>; MAX],
    nr_read: usize,
    write: [Out<'m>; MAX],
    nr_write: usize,
}

/// Copies `n` descriptors at `gpa` out of guest memory.
fn descriptors(mem: &GuestMemory, gpa: u64, n: u32) -> Result<([AccelArg; MAX], usize), Errno> {
    let mut out = [AccelArg::default(); MAX];
    if n > ARGS_MAX {
        return Err(EINVAL);
    }
    let size = std::mem::size_of::<AccelArg>() as u64;
    for (i, d) in out.iter_mut().enumerate().take(n as usize) {
        let at = gpa.checked_add(i as u64 * size).ok_or(EINVAL)?;
        *d = mem.read_obj(Gpa(at)).map_err(|_| EINVAL)?;
    }
    Ok((out, n as usize))
}

/// The host address of a checked guest range (`len` may be 0).
fn host_range(mem: &GuestMemory, d: &AccelArg, write: bool) -> Result<*mut u8, Errno> {
    if d.ty > arg::MAX {
        return Err(EINVAL);
    }
    if write {
        let s = mem.slice_mut(Gpa(d.gpa), d.size).map_err(|_| EINVAL)?;
        Ok(s.ptr_guard_mut().as_ptr())
    } else {
        let s = mem.slice(Gpa(d.gpa), d.size).map_err(|_| EINVAL)?;
        Ok(s.ptr_guard_mut().as_ptr())
    }
}

fn overlaps(a: &AccelArg, b: &AccelArg) -> bool {
    // Both ranges are inside guest memory (checked), so no overflow.
    a.size > 0 && b.size > 0 && a.gpa < b.gpa + b.size && b.gpa < a.gpa + a.size
}

impl<'m> Args<'m> {
    /// Reads and checks both arrays. EINVAL for a count over the cap, an
    /// array or buffer outside guest memory, an unknown type, a write
    /// buffer in read-only memory or overlapping another argument.
    pub fn decode(mem: &'m GuestMemory, req: &HcAccel) -> Result<Self, Errno> {
        let (rd, nr) = descriptors(mem, req.read_args, req.nr_read)?;
        let (wd, nw) = descriptors(mem, req.write_args, req.nr_write)?;
        // Ranges first: the overlap check's arithmetic relies on them.
        let mut rp = [std::ptr::null_mut(); MAX];
        let mut wp = [std::ptr::null_mut(); MAX];
        for (p, d) in rp.iter_mut().zip(&rd[..nr]) {
            *p = host_range(mem, d, false)?;
        }
        for (p, d) in wp.iter_mut().zip(&wd[..nw]) {
            *p = host_range(mem, d, true)?;
        }
        for (i, w) in wd[..nw].iter().enumerate() {
            let mut others = rd[..nr].iter().chain(wd[..nw].iter().skip(i + 1));
            if others.any(|o| overlaps(w, o)) {
                return Err(EINVAL);
            }
        }
        let mut args = Args {
            read: [In::EMPTY; MAX],
            nr_read: nr,
            write: std::array::from_fn(|_| Out::empty()),
            nr_write: nw,
        };
        for ((slot, d), &p) in args.read.iter_mut().zip(&rd[..nr]).zip(&rp) {
            // SAFETY: `p..p+size` is inside guest memory (checked above),
            // which outlives 'm; nothing writes it while the borrow lives
            // (see the module comment).
            let bytes = unsafe { std::slice::from_raw_parts(p, d.size as usize) };
            *slot = In {
                ty: d.ty,
                custom: d.custom,
                bytes,
            };
        }
        for ((slot, d), &p) in args.write.iter_mut().zip(&wd[..nw]).zip(&wp) {
            // SAFETY: as above, and the range overlaps no other argument
            // (checked above), so this is the only reference to it.
            let bytes = unsafe { std::slice::from_raw_parts_mut(p, d.size as usize) };
            *slot = Out {
                ty: d.ty,
                custom: d.custom,
                bytes,
            };
        }
        Ok(args)
    }

    /// Arguments already in host memory (skiff agent: a network client's
    /// buffers, which the caller owns and aligns); EINVAL over the cap.
    pub fn from_host(
        read: &[In<'m>],
        write: impl IntoIterator<Item = Out<'m>>,
    ) -> Result<Self, Errno> {
        if read.len() > MAX {
            return Err(EINVAL);
        }
        let mut args = Args {
            read: [In::EMPTY; MAX],
            nr_read: read.len(),
            write: std::array::from_fn(|_| Out::empty()),
            nr_write: 0,
        };
        args.read[..read.len()].copy_from_slice(read);
        for o in write {
            let slot = args.write.get_mut(args.nr_write).ok_or(EINVAL)?;
            *slot = o;
            args.nr_write += 1;
        }
        Ok(args)
    }

    pub fn read(&self) -> &[In<'m>] {
        &self.read[..self.nr_read]
    }

    pub fn nr_write(&self) -> usize {
        self.nr_write
    }

    /// Takes the write arguments out (each slot left empty).
    pub fn take_write(&mut self) -> impl Iterator<Item = Out<'m>> + '_ {
        self.write[..self.nr_write].iter_mut().map(|o| Out {
            ty: o.ty,
            custom: o.custom,
            bytes: std::mem::take(&mut o.bytes),
        })
    }
}

/// Plain numbers an argument may hold.
pub trait Scalar: Copy {
    fn from_le(b: &[u8]) -> Self;
}
macro_rules! scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            fn from_le(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
        }
    )*};
}
scalar!(u8, i32, i64, f32);

impl<'m> In<'m> {
    pub const EMPTY: Self = In {
        ty: 0,
        custom: 0,
        bytes: &[],
    };

    /// The value of a scalar argument of type `ty` and exactly its size.
    pub fn scalar<T: Scalar>(&self, ty: u32) -> Result<T, Errno> {
        if self.ty != ty || self.bytes.len() != std::mem::size_of::<T>() {
            return Err(EINVAL);
        }
        Ok(T::from_le(self.bytes))
    }

    /// An `ARRAY` argument of `ty` as `T`s: whole elements, aligned.
    pub fn array<T: bytemuck_lite::Pod>(&self, ty: u32) -> Result<&'m [T], Errno> {
        if self.ty != ty {
            return Err(EINVAL);
        }
        bytemuck_lite::cast(self.bytes).ok_or(EINVAL)
    }

    /// A `STRING` argument: UTF-8 free, without one trailing NUL, no
    /// interior NUL, at most `max` bytes.
    pub fn string(&self, max: usize) -> Result<&'m [u8], Errno> {
        if self.ty != arg::STRING {
            return Err(EINVAL);
        }
        let s = self.bytes.strip_suffix(b"\0").unwrap_or(self.bytes);
        if s.is_empty() || s.len() > max || s.contains(&0) {
            return Err(EINVAL);
        }
        Ok(s)
    }
}

impl<'m> Out<'m> {
    pub fn empty() -> Self {
        Out {
            ty: 0,
            custom: 0,
            bytes: &mut [],
        }
    }

    /// An `ARRAY` write argument of `ty` as `T`s: whole elements, aligned.
    pub fn array<T: bytemuck_lite::Pod>(self, ty: u32) -> Result<&'m mut [T], Errno> {
        if self.ty != ty {
            return Err(EINVAL);
        }
        bytemuck_lite::cast_mut(self.bytes).ok_or(EINVAL)
    }

    /// A scalar write argument of `ty`, exactly `N` bytes.
    pub fn scalar<const N: usize>(self, ty: u32) -> Result<&'m mut [u8; N], Errno> {
        if self.ty != ty {
            return Err(EINVAL);
        }
        self.bytes.try_into().map_err(|_| EINVAL)
    }
}

/// Reinterpreting checked byte slices as number slices.
pub mod bytemuck_lite {
    /// Numbers for which every bit pattern is a value.
    ///
    /// # Safety
    ///
    /// Implement only for plain integer and float types.
    pub unsafe trait Pod: Copy {}
    // SAFETY: plain numbers, no padding, every bit pattern valid.
    unsafe impl Pod for f32 {}
    // SAFETY: as above.
    unsafe impl Pod for f64 {}

    /// Whether `b` is aligned for `T` and a whole number of them.
    fn fits<T: Pod>(b: &[u8]) -> bool {
        b.len().is_multiple_of(std::mem::size_of::<T>())
            && (b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    }

    /// `b` as `T`s, if it is aligned for `T` and a whole number of them.
    pub fn cast<T: Pod>(b: &[u8]) -> Option<&[T]> {
        let sz = std::mem::size_of::<T>();
        if !fits::<T>(b) {
            return None;
        }
        // SAFETY: aligned, in bounds, and T is Pod.
        Some(unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), b.len() / sz) })
    }

    /// As [`cast`], mutable.
    pub fn cast_mut<T: Pod>(b: &mut [u8]) -> Option<&mut [T]> {
        let sz = std::mem::size_of::<T>();
        if !fits::<T>(b) {
            return None;
        }
        // SAFETY: aligned, in bounds, T is Pod, and `b` is borrowed
        // mutably for the result's lifetime.
        Some(unsafe { std::slice::from_raw_parts_mut(b.as_mut_ptr().cast(), b.len() / sz) })
    }
}
