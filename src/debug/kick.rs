//! Ctrl-C from gdb while the guest runs: the kernel signals skiff's
//! vCPU thread when bytes arrive on the gdb socket (O_ASYNC, F_SETSIG,
//! F_SETOWN_EX to this thread), and the handler sets `immediate_exit`, so
//! KVM_RUN returns (EINTR) even if the byte lands just before entry. The
//! stub then finds the byte waiting on the socket.

use std::os::fd::AsRawFd;

/// The signal the socket raises; nothing else in skiff uses it.
const KICK: libc::c_int = libc::SIGUSR1;

// Linux's fcntl(2) values, which the libc crate has only for musl.
const F_SETSIG: libc::c_int = 10;
const F_SETOWN_EX: libc::c_int = 15;
const F_OWNER_TID: libc::c_int = 0;

/// `struct f_owner_ex` of fcntl(2).
#[repr(C)]
struct OwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}

extern "C" fn on_kick(_: libc::c_int) {
    // The vCPU's own pointer, which it clears before its kvm_run goes.
    crate::signals::interrupt_run();
}

/// Arms `sock` to kick the calling thread's KVM_RUN on incoming bytes (the
/// vCPU's signals must be armed: `Vcpu::arm_signals`).
pub fn arm(sock: &impl AsRawFd) -> std::io::Result<()> {
    let fd = sock.as_raw_fd();
    let check = |r: libc::c_int| {
        if r < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    // SAFETY: a zeroed sigaction with a valid handler and empty mask (no
    // SA_RESTART: KVM_RUN must return EINTR); the fcntls only change
    // flags of our own socket.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        check(libc::sigaction(KICK, &sa, std::ptr::null_mut()))?;
        let owner = OwnerEx {
            kind: F_OWNER_TID,
            pid: libc::gettid(),
        };
        check(libc::fcntl(fd, F_SETOWN_EX, &owner))?;
        check(libc::fcntl(fd, F_SETSIG, KICK))?;
        let flags = check(libc::fcntl(fd, libc::F_GETFL))?;
        check(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC))?;
    }
    Ok(())
}
