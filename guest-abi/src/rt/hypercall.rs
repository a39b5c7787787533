//! The hypercall primitive and one safe wrapper per hvt hypercall.
//!
//! Guest memory is identity-mapped (VA == GPA) and at most 4 GiB, so the
//! address of an argument struct is its guest-physical address and fits the
//! 32-bit `OUT` the ABI uses.

use core::arch::asm;

use crate::hvt::{ret, HcBlock, HcHalt, HcNet, HcPoll, HcPuts, HcWalltime, Hypercall};

/// Traps to the tender with hypercall `nr`, whose argument struct is `arg`.
///
/// # Safety
///
/// `arg` must point to a valid, writable argument struct of the type `nr`
/// expects, and every buffer the struct names must be valid for the access
/// the hypercall makes (read for writes to the host, write for reads).
#[inline(always)]
pub unsafe fn hypercall<T>(nr: Hypercall, arg: *mut T) {
    // SAFETY: the caller vouches for `arg` and its buffers. The OUT exits to
    // the tender, which reads and writes only `*arg` and those buffers; the
    // asm! block is not `nomem`, so the compiler stores the struct before it
    // and reloads the OUT fields after it. Addresses fit in 32 bits because
    // guest memory is at most 4 GiB.
    unsafe {
        asm!(
            "out dx, eax",
            in("dx") nr.port(),
            in("eax") arg as usize as u32,
            options(nostack, preserves_flags),
        );
    }
}

// The OUT fields (`ret`, `ready_set`) start as EUNSPEC/0 rather than all
// zero: a tender that failed to write `ret` then reads as an error, not as
// success.

/// Guest address of a buffer, as the hypercall structs carry it.
pub(crate) fn gpa<T>(p: *const T) -> u64 {
    p as usize as u64
}

/// Writes `buf` to the tender's console (its stdout), unbuffered.
pub fn puts(buf: &[u8]) {
    let mut arg = HcPuts {
        data: gpa(buf.as_ptr()),
        len: buf.len() as u64,
    };
    // SAFETY: `arg` is a PUTS struct naming `buf`, which is readable.
    unsafe { hypercall(Hypercall::Puts, &mut arg) };
}

/// Wall-clock time in nanoseconds since the Unix epoch.
pub fn walltime_ns() -> u64 {
    let mut arg = HcWalltime::default();
    // SAFETY: `arg` is a WALLTIME struct; the tender only writes `nsecs`.
    unsafe { hypercall(Hypercall::Walltime, &mut arg) };
    arg.nsecs
}

/// Waits until a network device has input or `timeout_ns` passes.
///
/// Returns the ready set (bit `1 << handle` per ready device) and the
/// hypercall's result code (`crate::hvt::ret`).
pub fn poll(timeout_ns: u64) -> (u64, i32) {
    let mut arg = HcPoll {
        timeout_nsecs: timeout_ns,
        ready_set: 0,
        ret: ret::EUNSPEC,
        _pad: 0,
    };
    // SAFETY: `arg` is a POLL struct with no buffers.
    unsafe { hypercall(Hypercall::Poll, &mut arg) };
    (arg.ready_set, arg.ret)
}

/// BLOCK_WRITE or BLOCK_READ (`call`) of `len` bytes at guest address
/// `data`; returns the result code.
///
/// # Safety
///
/// `data` must be readable (BLOCK_WRITE) or writable (BLOCK_READ) for `len`
/// bytes; the tender touches at most that many.
unsafe fn block_io(call: Hypercall, handle: u64, offset: u64, data: u64, len: usize) -> i32 {
    let mut arg = HcBlock {
        handle,
        offset,
        data,
        len: len as u64,
        ret: ret::EUNSPEC,
        _pad: 0,
    };
    // SAFETY: `arg` is a BLOCK_* struct; the caller vouches for its buffer.
    unsafe { hypercall(call, &mut arg) };
    arg.ret
}

/// Writes `buf` to block device `handle` at byte `offset`; both must be
/// multiples of the device's block size. Returns the result code.
pub fn block_write(handle: u64, offset: u64, buf: &[u8]) -> i32 {
    // SAFETY: `buf` is readable for its length.
    unsafe {
        block_io(
            Hypercall::BlockWrite,
            handle,
            offset,
            gpa(buf.as_ptr()),
            buf.len(),
        )
    }
}

/// Reads `buf.len()` bytes of block device `handle` at byte `offset` into
/// `buf`; both must be multiples of the block size. Returns the result code.
pub fn block_read(handle: u64, offset: u64, buf: &mut [u8]) -> i32 {
    // SAFETY: `buf` is writable for its length.
    unsafe {
        block_io(
            Hypercall::BlockRead,
            handle,
            offset,
            gpa(buf.as_mut_ptr()),
            buf.len(),
        )
    }
}

/// NET_WRITE or NET_READ (`call`) on a `len`-byte buffer at guest address
/// `data`; returns the result code and the `len` the tender reported back.
///
/// # Safety
///
/// `data` must be readable (NET_WRITE) or writable (NET_READ) for `len`
/// bytes; the tender touches at most that many.
unsafe fn net_io(call: Hypercall, handle: u64, data: u64, len: usize) -> (i32, u64) {
    let mut arg = HcNet {
        handle,
        data,
        len: len as u64,
        ret: ret::EUNSPEC,
        _pad: 0,
    };
    // SAFETY: `arg` is a NET_* struct; the caller vouches for its buffer.
    unsafe { hypercall(call, &mut arg) };
    (arg.ret, arg.len)
}

/// Sends one Ethernet frame on net device `handle`. Returns the result code.
pub fn net_write(handle: u64, frame: &[u8]) -> i32 {
    // SAFETY: `frame` is readable for its length.
    unsafe {
        net_io(
            Hypercall::NetWrite,
            handle,
            gpa(frame.as_ptr()),
            frame.len(),
        )
    }
    .0
}

/// Receives one frame from net device `handle` into `buf`.
///
/// Returns the result code (`AGAIN` when nothing is waiting) and the frame
/// length, which is meaningful only when the code is `OK`.
pub fn net_read(handle: u64, buf: &mut [u8]) -> (i32, usize) {
    // SAFETY: `buf` is writable for its length.
    let (code, len) =
        unsafe { net_io(Hypercall::NetRead, handle, gpa(buf.as_mut_ptr()), buf.len()) };
    // The tender never reports more than the buffer it was given; clamp so a
    // misbehaving host cannot make the caller slice out of bounds.
    (code, (len as usize).min(buf.len()))
}

/// Ends the guest; the tender exits with `status`.
pub fn exit(status: i32) -> ! {
    halt(status, 0)
}

/// Ends the guest with `status`, handing the tender `cookie`: 0, or the
/// address of a Solo5-style register dump (`struct trap_regs`) that a core
/// file uses for the faulting instruction.
pub(crate) fn halt(status: i32, cookie: u64) -> ! {
    let mut arg = HcHalt {
        cookie,
        exit_status: status,
        _pad: 0,
    };
    // SAFETY: `arg` is a HALT struct; its cookie is 0 or names a register
    // dump that stays valid (we never return).
    unsafe { hypercall(Hypercall::Halt, &mut arg) };
    // HALT does not return. If a tender resumed us anyway, stop here: with
    // interrupts off, `hlt` exits to the tender again.
    loop {
        // SAFETY: `hlt` only stops the vCPU; it touches no memory.
        unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
    }
}

/// Ends the guest with status 255, as Solo5's `solo5_abort()` does.
pub fn abort() -> ! {
    exit(255)
}
