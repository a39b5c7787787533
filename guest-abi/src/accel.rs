//! skiff's accelerator extension: vAccel's model as one hypercall.
//!
//! [`crate::hvt::Hypercall::AccelOp`] takes an [`HcAccel`]. Its `cmd` is a
//! session or resource command, or [`CMD_GENOP`]: vAccel's generic
//! operation, two arrays of typed [`AccelArg`]s (read, write) whose
//! `read[0]` is the op type (`UINT8`, size 1). Op and argument type numbers
//! are vAccel's (main branch, 2025-10 numbering); errors are Linux errno
//! values in `ret`, as vAccel returns them. Only a guest that sees
//! [`crate::skiff::SKIFF_FEATURE_EXT`] may make this hypercall.

use core::mem::{offset_of, size_of};

/// The hypercall's argument struct. All fields IN unless marked OUT.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HcAccel {
    /// One of the `CMD_*` values.
    pub cmd: u32,
    /// The session; OUT for [`CMD_SESSION_INIT`].
    pub session: u32,
    /// [`CMD_SESSION_INIT`]: hint flags (`PLUGIN_*`); [`CMD_RESOURCE_REGISTER`]:
    /// resource type (`RESOURCE_*`). Otherwise 0.
    pub flags: u32,
    /// OUT for [`CMD_RESOURCE_REGISTER`]; IN for [`CMD_RESOURCE_UNREGISTER`].
    pub resource: u32,
    /// GPA of `nr_read` [`AccelArg`]s.
    pub read_args: u64,
    /// GPA of `nr_write` [`AccelArg`]s.
    pub write_args: u64,
    pub nr_read: u32,
    pub nr_write: u32,
    /// OUT: 0 or an errno value (`E*` below).
    pub ret: i32,
    /// OUT: for [`CMD_GENOP`], the type flags (`PLUGIN_*`) of the plugin that
    /// ran the op; 0 otherwise.
    pub plugin: u32,
}

/// One typed argument buffer: `size` bytes at guest address `gpa`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AccelArg {
    pub gpa: u64,
    pub size: u64,
    /// An `ARG_*` value.
    pub ty: u32,
    /// vAccel's custom type id (for `ARG_CUSTOM`); passed through to EXEC.
    pub custom: u32,
}

/// Commands (`HcAccel::cmd`).
pub const CMD_GENOP: u32 = 0;
/// IN flags; OUT session.
pub const CMD_SESSION_INIT: u32 = 1;
/// IN session. Releases the session's resources too.
pub const CMD_SESSION_RELEASE: u32 = 2;
/// IN session, flags (resource type), `read[0]`: `ARG_BUFFER` bytes, or
/// `ARG_STRING` naming an operator resource (`--accel-model`,
/// `--accel-lib`); OUT resource.
pub const CMD_RESOURCE_REGISTER: u32 = 3;
/// IN session, resource.
pub const CMD_RESOURCE_UNREGISTER: u32 = 4;

/// Most arguments in each of the read and write arrays.
pub const ARGS_MAX: u32 = 32;

/// Operation types (`enum vaccel_op_type`).
pub mod op {
    pub const NOOP: u8 = 0;
    pub const EXEC: u8 = 1;
    pub const EXEC_WITH_RESOURCE: u8 = 2;
    pub const IMAGE_CLASSIFY: u8 = 3;
    pub const IMAGE_DETECT: u8 = 4;
    pub const IMAGE_SEGMENT: u8 = 5;
    pub const IMAGE_POSE: u8 = 6;
    pub const IMAGE_DEPTH: u8 = 7;
    pub const TF_MODEL_LOAD: u8 = 8;
    pub const TF_MODEL_UNLOAD: u8 = 9;
    pub const TF_MODEL_RUN: u8 = 10;
    pub const TFLITE_MODEL_LOAD: u8 = 11;
    pub const TFLITE_MODEL_UNLOAD: u8 = 12;
    pub const TFLITE_MODEL_RUN: u8 = 13;
    pub const TORCH_MODEL_LOAD: u8 = 14;
    pub const TORCH_MODEL_RUN: u8 = 15;
    pub const TORCH_SGEMM: u8 = 16;
    pub const BLAS_SGEMM: u8 = 17;
    pub const FPGA_ARRAYCOPY: u8 = 18;
    pub const FPGA_MMULT: u8 = 19;
    pub const FPGA_PARALLEL: u8 = 20;
    pub const FPGA_VECTORADD: u8 = 21;
    pub const MINMAX: u8 = 22;
    pub const OPENCV: u8 = 23;
}

/// Argument types (`vaccel_arg_type_t`).
pub mod arg {
    pub const RAW: u32 = 0;
    pub const INT8: u32 = 1;
    pub const INT8_ARRAY: u32 = 2;
    pub const INT16: u32 = 3;
    pub const INT16_ARRAY: u32 = 4;
    pub const INT32: u32 = 5;
    pub const INT32_ARRAY: u32 = 6;
    pub const INT64: u32 = 7;
    pub const INT64_ARRAY: u32 = 8;
    pub const UINT8: u32 = 9;
    pub const UINT8_ARRAY: u32 = 10;
    pub const UINT16: u32 = 11;
    pub const UINT16_ARRAY: u32 = 12;
    pub const UINT32: u32 = 13;
    pub const UINT32_ARRAY: u32 = 14;
    pub const UINT64: u32 = 15;
    pub const UINT64_ARRAY: u32 = 16;
    pub const FLOAT32: u32 = 17;
    pub const FLOAT32_ARRAY: u32 = 18;
    pub const FLOAT64: u32 = 19;
    pub const FLOAT64_ARRAY: u32 = 20;
    pub const BOOL: u32 = 21;
    pub const BOOL_ARRAY: u32 = 22;
    pub const CHAR: u32 = 23;
    pub const CHAR_ARRAY: u32 = 24;
    pub const UCHAR: u32 = 25;
    pub const UCHAR_ARRAY: u32 = 26;
    pub const STRING: u32 = 27;
    pub const BUFFER: u32 = 28;
    pub const CUSTOM: u32 = 29;
    /// The highest defined type.
    pub const MAX: u32 = CUSTOM;
}

/// Plugin type flags: session hints (vAccel's `VACCEL_PLUGIN_*`).
pub const PLUGIN_CPU: u32 = 0x1;
pub const PLUGIN_GPU: u32 = 0x2;
pub const PLUGIN_FPGA: u32 = 0x4;
pub const PLUGIN_SOFTWARE: u32 = 0x8;
pub const PLUGIN_GENERIC: u32 = 0x80;
pub const PLUGIN_DEBUG: u32 = 0x100;
pub const PLUGIN_REMOTE: u32 = 0x4000;
pub const PLUGIN_ALL: u32 = 0xffff;

/// Resource types (`vaccel_resource_type_t`).
pub const RESOURCE_LIB: u32 = 0;
pub const RESOURCE_DATA: u32 = 1;
pub const RESOURCE_MODEL: u32 = 2;

/// Linux errno values, as vAccel returns them.
pub const OK: i32 = 0;
pub const ENOENT: i32 = 2;
pub const ENOMEM: i32 = 12;
pub const EINVAL: i32 = 22;
pub const EPROTO: i32 = 71;
pub const ENOTSUP: i32 = 95;

/// Integers <-> IEEE bit patterns with integer code only, for soft-float
/// guests that hand exact small integers to a float op.
pub mod bits {
    /// `v` as f32 bits; exact for |v| < 2^24.
    pub fn f32_from_int(v: i64) -> u32 {
        from_int(v, 23, 127) as u32
    }

    /// The integer f32 `bits` holds, if it holds one below 2^24 exactly.
    pub fn f32_to_int(bits: u32) -> Option<i64> {
        to_int(u64::from(bits), 23, 8)
    }

    /// `v` as f64 bits; exact for |v| < 2^53.
    pub fn f64_from_int(v: i64) -> u64 {
        from_int(v, 52, 1023)
    }

    /// The integer f64 `bits` holds, if it holds one below 2^53 exactly.
    pub fn f64_to_int(bits: u64) -> Option<i64> {
        to_int(bits, 52, 11)
    }

    fn from_int(v: i64, mant_bits: u32, bias: u64) -> u64 {
        if v == 0 {
            return 0;
        }
        let sign = u64::from(v < 0) << (mant_bits + if mant_bits == 23 { 8 } else { 11 });
        let mag = v.unsigned_abs();
        let e = 63 - mag.leading_zeros(); // floor(log2 mag), <= mant_bits
        let mant = (mag << (mant_bits - e)) & ((1u64 << mant_bits) - 1);
        sign | ((bias + u64::from(e)) << mant_bits) | mant
    }

    fn to_int(bits: u64, mant_bits: u32, exp_bits: u32) -> Option<i64> {
        let bias = (1i64 << (exp_bits - 1)) - 1;
        let sign = (bits >> (mant_bits + exp_bits)) & 1;
        let exp = ((bits >> mant_bits) & ((1 << exp_bits) - 1)) as i64;
        let mant = bits & ((1u64 << mant_bits) - 1);
        if exp == 0 && mant == 0 {
            return Some(0);
        }
        let e = exp - bias; // value = 1.mant * 2^e
        if e < 0 || e > i64::from(mant_bits) {
            return None;
        }
        let shift = mant_bits - e as u32;
        let full = mant | (1u64 << mant_bits);
        if full & ((1u64 << shift) - 1) != 0 {
            return None;
        }
        let mag = (full >> shift) as i64;
        Some(if sign == 1 { -mag } else { mag })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips_match_the_hardware() {
            for v in [
                -16_777_215i64,
                -20483,
                -5,
                -1,
                0,
                1,
                2,
                7,
                12800,
                16_777_215,
            ] {
                assert_eq!(f32_from_int(v), (v as f32).to_bits(), "{v}");
                assert_eq!(f32_to_int((v as f32).to_bits()), Some(v));
                assert_eq!(f64_from_int(v), (v as f64).to_bits(), "{v}");
                assert_eq!(f64_to_int((v as f64).to_bits()), Some(v));
            }
            assert_eq!(f32_to_int(0.5f32.to_bits()), None);
            assert_eq!(f32_to_int(2.5f32.to_bits()), None);
            assert_eq!(f32_to_int(f32::NAN.to_bits()), None);
            assert_eq!(f32_to_int((-0.0f32).to_bits()), Some(0));
            assert_eq!(f64_to_int(1e300f64.to_bits()), None);
        }
    }
}

crate::hvt::layout!(HcAccel, 48, cmd @ 0, session @ 4, flags @ 8, resource @ 12, read_args @ 16,
    write_args @ 24, nr_read @ 32, nr_write @ 36, ret @ 40, plugin @ 44);
crate::hvt::layout!(AccelArg, 24, gpa @ 0, size @ 8, ty @ 16, custom @ 20);
