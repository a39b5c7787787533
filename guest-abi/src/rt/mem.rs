//! `memcpy` and friends, which compiled Rust code calls but no libc provides.
//!
//! The bodies are single string instructions in inline assembly, so the
//! optimiser cannot recognise them as a copy loop and turn them back into a
//! call to `memcpy` (which would recurse). [`crate::entry!`] exports them under
//! their C names; they live here as plain functions so that this library
//! never defines C symbols that would clash with a host libc.

use core::arch::asm;

/// Copies `n` bytes from `src` to `dst` (the regions must not overlap).
///
/// # Safety
///
/// As C's `memcpy`: `src` readable and `dst` writable for `n` bytes.
#[inline(always)]
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; `rep movsb` with DF clear
    // (the ABI state at every call) copies exactly `n` bytes upwards.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
    dst
}

/// Copies `n` bytes from `src` to `dst`; the regions may overlap.
///
/// # Safety
///
/// As C's `memmove`.
#[inline(always)]
pub unsafe fn copy_overlapping(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // dst is below src, or past the end of src: an upward copy never
        // reads a byte it has already overwritten.
        // SAFETY: forwarded caller guarantees.
        return unsafe { copy(dst, src, n) };
    }
    // dst overlaps the tail of src: copy downwards, from the last byte.
    // SAFETY: the caller guarantees both ranges; with DF set, `rep movsb`
    // walks down from the last byte of each. DF is cleared again before the
    // block ends, as the ABI requires.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dst.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack),
        );
    }
    dst
}

/// Fills `n` bytes at `dst` with `c as u8`.
///
/// # Safety
///
/// As C's `memset`.
#[inline(always)]
pub unsafe fn fill(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `dst` is writable for `n` bytes.
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            in("al") c as u8,
            options(nostack, preserves_flags),
        );
    }
    dst
}

/// Compares `n` bytes; negative, zero or positive as C's `memcmp`.
///
/// # Safety
///
/// As C's `memcmp`.
#[inline(always)]
pub unsafe fn compare(a: *const u8, b: *const u8, n: usize) -> i32 {
    if n == 0 {
        return 0;
    }
    let (a_end, b_end): (*const u8, *const u8);
    // SAFETY: the caller guarantees both ranges are readable. `repe cmpsb`
    // stops after the first differing pair or after `n` pairs, leaving rsi
    // and rdi one past the last pair compared.
    unsafe {
        asm!(
            "repe cmpsb",
            inout("rcx") n => _,
            inout("rsi") a => a_end,
            inout("rdi") b => b_end,
            options(nostack, readonly),
        );
    }
    // The last pair compared is the first difference, or equal if there is
    // none; either way it decides the result.
    // SAFETY: n > 0, so the last pair lies inside both ranges.
    let (x, y) = unsafe { (*a_end.sub(1), *b_end.sub(1)) };
    i32::from(x) - i32::from(y)
}
