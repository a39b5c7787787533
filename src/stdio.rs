//! The process's stdio, set up once per process (the CLI's start) or per
//! request (the last step of every path to a runnable guest,
//! `vmm::Vm::take_request`): the function device reads and writes fds 0
//! and 1 as it finds them.

/// Makes sure fds 0, 1 and 2 are open before skiff opens anything, so a
/// file skiff opens (the image, /dev/kvm) never lands on a closed one and
/// gets the guest's request or response. A closed one becomes /dev/null,
/// read-only: a closed stdin is an empty request, and writing to a closed
/// stdout fails (EBADF) rather than vanishing.
pub fn reserve_stdio() {
    for fd in 0..=2 {
        // SAFETY: an all-zero stat is valid for fstat to overwrite.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes only into `st`; a closed fd gives EBADF.
        if unsafe { libc::fstat(fd, &mut st) } == 0 {
            continue;
        }
        // SAFETY: a NUL-terminated path; the lowest free fd is `fd` because
        // every lower one is open by now. It is deliberately never closed.
        unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
    }
}

/// Pipe capacity skiff asks for on a piped stdin/stdout: with the default
/// 64 KiB every request or response of more moves in 64 KiB pieces, a
/// context switch (and a guest exit) each.
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Widens stdin and stdout when they are pipes (the watchdog's case).
/// Not under an outer seccomp filter: urunc's allowlist has no fcntl. A
/// refusal (an unprivileged user over /proc/sys/fs/pipe-max-size) leaves
/// the pipe as it was.
pub fn widen_pipes() {
    if crate::seccomp::outer_filter() {
        return;
    }
    for fd in [0, 1] {
        // SAFETY: an all-zero stat is valid for fstat to overwrite; fcntl
        // F_SETPIPE_SZ only changes the pipe's capacity.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFIFO {
                libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE);
            }
        }
    }
}
