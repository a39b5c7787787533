//! Deferred teardown: destroying a VM costs 0.25 ms (2 MiB guest) to over
//! 1 ms (4 GiB) in the kernel, and whoever waits for skiff to exit (the
//! watchdog, a benchmark) would wait for it too. Once the guest has halted,
//! skiff hands the VM to a tiny holder process: a clone sharing its memory
//! (CLONE_VM, so nothing is copied) with a copy of its file table, which
//! keeps the VM's fds open until skiff has exited (it waits for EOF on a
//! pipe whose write end only skiff holds) and then exits itself, so the
//! kernel destroys the VM after skiff's exit status has been delivered.
//!
//! The total work is the same, only moved out of the caller's wait (the
//! throughput benchmark shows it). Not used under an outer seccomp filter
//! (urunc's allowlist has no clone): there the VM is torn down in place.

use std::sync::atomic::{AtomicBool, Ordering};

const STACK: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK]);

static mut HOLDER_STACK: Stack = Stack([0; STACK]);
static STARTED: AtomicBool = AtomicBool::new(false);

/// The holder. Raw syscalls only: it shares skiff's memory and
/// thread-local storage, so it must not touch either.
extern "C" fn holder(fds: *mut libc::c_void) -> libc::c_int {
    let fds = fds as usize;
    let (read_end, write_end) = (
        (fds & 0xffff_ffff) as libc::c_long,
        (fds >> 32) as libc::c_long,
    );
    let mut byte = 0u8;
    // SAFETY: plain syscalls on our own copy of the file table: drop the
    // standard fds (readers of skiff's output must see EOF when skiff
    // exits) and our copy of the write end, then wait for EOF and exit.
    unsafe {
        for fd in 0..3 {
            libc::syscall(libc::SYS_close, fd);
        }
        libc::syscall(libc::SYS_close, write_end);
        while libc::syscall(libc::SYS_read, read_end, &mut byte as *mut u8, 1) != 0 {}
        libc::syscall(libc::SYS_exit, 0);
    }
    0
}

/// Keeps `vm` alive past our exit in a holder process, then forgets it.
/// Falls back to dropping it here if the holder cannot be started.
pub fn defer<T>(vm: T) {
    if STARTED.swap(true, Ordering::SeqCst) {
        drop(vm);
        return;
    }
    let mut p = [-1; 2];
    // SAFETY: `p` is a valid array for pipe2.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        drop(vm);
        return;
    }
    // SAFETY: the holder runs on its own static stack (used once, guarded
    // by STARTED) and only makes raw syscalls; CLONE_VM shares memory so
    // nothing is copied, and the holder gets its own copy of the file
    // table. No SIGCHLD: we never wait for it; it is reparented when we
    // exit. We keep only the write end.
    let pid = unsafe {
        let top = std::ptr::addr_of_mut!(HOLDER_STACK).cast::<u8>().add(STACK);
        let arg = (p[0] as u32 as usize) | ((p[1] as u32 as usize) << 32);
        let pid = libc::clone(holder, top.cast(), libc::CLONE_VM, arg as *mut libc::c_void);
        libc::close(p[0]);
        pid
    };
    if pid <= 0 {
        // SAFETY: closing the write end we created.
        unsafe { libc::close(p[1]) };
        drop(vm);
        return;
    }
    // The write end stays open until our exit closes it: that is the
    // holder's signal to go.
    std::mem::forget(vm);
}
