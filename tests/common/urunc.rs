//! urunc's seccomp filter, as urunc installs it before it execs
//! `solo5-hvt`: the allowlist below, every other syscall a SIGSYS trap.

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::collections::BTreeMap;

/// urunc's allowlist, complete, from the integrations fact sheet.
pub const URUNC_ALLOWLIST: &[i64] = &[
    libc::SYS_rt_sigaction,
    libc::SYS_ioctl,
    libc::SYS_pread64,
    libc::SYS_mmap,
    libc::SYS_recvmsg,
    libc::SYS_openat,
    libc::SYS_sendto,
    libc::SYS_mprotect,
    libc::SYS_write,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_create1,
    libc::SYS_read,
    libc::SYS_open,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_stat,
    libc::SYS_munmap,
    libc::SYS_brk,
    libc::SYS_access,
    libc::SYS_execve,
    libc::SYS_timerfd_create,
    libc::SYS_arch_prctl,
    libc::SYS_lseek,
    libc::SYS_personality,
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_getsockname,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_nanosleep,
    libc::SYS_futex,
    libc::SYS_epoll_pwait,
    libc::SYS_rt_sigreturn,
    libc::SYS_timerfd_settime,
    libc::SYS_pwrite64,
    libc::SYS_newfstatat,
    libc::SYS_set_tid_address,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_prlimit64,
    libc::SYS_getrandom,
];

pub fn urunc_filter() -> BpfProgram {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        URUNC_ALLOWLIST.iter().map(|&nr| (nr, vec![])).collect();
    SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .unwrap()
    .try_into()
    .unwrap()
}
