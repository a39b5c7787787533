//! seccomp: once the builder has acquired every host resource (image read,
//! guest memory mapped, KVM fds open, devices attached) and before the
//! first guest instruction, skiff confines itself to the syscalls its run
//! path makes. The policies are `seccomp/*.json`, compiled to BPF by
//! `build.rs`; a syscall outside the policy kills skiff (SIGSYS).
//!
//! Where an outer filter is already in place (urunc installs one before it
//! execs `solo5-hvt`, and its allowlist has neither prctl nor seccomp, so
//! trying would be fatal), skiff keeps that filter and says so on stderr.
//!
//! skiff learns whether a filter is on from /proc/self/status, or, where
//! there is no /proc (urunc's chroot), by asking the kernel directly with
//! prctl(PR_GET_SECCOMP) while SIGSYS is caught: an outer filter that traps
//! prctl (urunc's) raises SIGSYS, which the probe catches and counts as a
//! filter; one that refuses it with an errno counts as a filter too; an
//! answer of 0 means none, and skiff installs its own (docs/urunc.md).

use std::io::{self, Read};
use std::sync::atomic::{AtomicU8, Ordering};
use thiserror::Error;

mod bpf {
    include!(concat!(env!("OUT_DIR"), "/seccomp.rs"));
}

/// Which filter to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// `seccomp/run.json`: the tender's run path, an allowlist; anything
    /// else kills the process.
    Run,
    /// `seccomp/accel.json`: for runs with an accelerator plugin, whose
    /// runtime (e.g. pocl) starts threads and makes a large, version-
    /// dependent set of syscalls: everything is allowed except a denylist
    /// of privileged and escape-prone syscalls (see README, Security).
    Accel,
    /// `seccomp/pool.json` plus run's rules: a pool worker, which also
    /// takes its request from a socket (src/pool/).
    Pool,
    /// `seccomp/serve.json`: `skiff serve`'s HTTP front (src/serve/), which
    /// runs no guest: sockets, pipes, epoll, memory.
    Serve,
    /// `seccomp/live.json` plus run's rules: a controlled run (`skiff run
    /// --control`, src/control/), which also serves its control socket,
    /// writes snapshots and streams migrations, each on command.
    Live,
    /// `seccomp/debug.json` plus run's rules: a run with `--gdb`,
    /// `--dumpcore` or `--trace` (src/debug/).
    Debug,
    /// `seccomp/ctl.json`: `skiff ctl`, once connected: one line out, one
    /// line back.
    Ctl,
    /// `seccomp/agent.json` plus accel's rules: `skiff agent` (src/agent/),
    /// which serves plugins to network clients and never execs.
    Agent,
}

impl Policy {
    /// The compiled BPF program.
    pub fn program(self) -> &'static [seccompiler::sock_filter] {
        match self {
            Policy::Run => &bpf::RUN,
            Policy::Accel => &bpf::ACCEL,
            Policy::Pool => &bpf::POOL,
            Policy::Serve => &bpf::SERVE,
            Policy::Ctl => &bpf::CTL,
            Policy::Debug => &bpf::DEBUG,
            Policy::Live => &bpf::LIVE,
            Policy::Agent => &bpf::AGENT,
        }
    }
}

/// What [`install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Installed {
    /// The policy now applies to every thread of skiff.
    Filter(Policy),
    /// An outer filter was already in place; skiff installed none.
    OuterFilter,
}

impl Installed {
    /// What the user should be told about this, if anything.
    pub fn note(self) -> Option<&'static str> {
        match self {
            Installed::Filter(_) => None,
            Installed::OuterFilter => Some(
                "already under a seccomp filter (Seccomp: 2); keeping it, not installing skiff's own",
            ),
        }
    }
}

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("cannot install the seccomp filter: {0}")]
    Apply(seccompiler::Error),
}

/// The `Seccomp:` mode of this process from /proc/self/status (0 none,
/// 1 strict, 2 filter), or `None` if it cannot be read. Plain open/read/
/// close only: `std::fs::read_to_string` would call statx, which urunc's
/// outer filter does not allow.
pub fn mode() -> Option<u8> {
    // Read once (the builder asks before skiff installs its own filter);
    // `install` records its own filter.
    match MODE.load(Ordering::Relaxed) {
        UNKNOWN => {
            let m = read_mode();
            MODE.store(m.unwrap_or(UNREADABLE), Ordering::Relaxed);
            m
        }
        UNREADABLE => None,
        m => Some(m),
    }
}

/// Whether a filter not installed by skiff is in place (skiff keeps such a
/// filter and must stay within what it may allow).
pub fn outer_filter() -> bool {
    mode() == Some(2) && !OWN.load(Ordering::Relaxed)
}

static OWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
const UNKNOWN: u8 = u8::MAX;
const UNREADABLE: u8 = u8::MAX - 1;
static MODE: AtomicU8 = AtomicU8::new(UNKNOWN);

fn read_mode() -> Option<u8> {
    read_proc_status().or_else(probe_mode)
}

/// Set by [`on_probe_sigsys`]: the probe's prctl was trapped.
static TRAPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// SIGSYS during the probe: a filter trapped the prctl. The syscall did
/// not run; it returns -ENOSYS (the kernel leaves rax to the handler).
extern "C" fn on_probe_sigsys(
    _sig: libc::c_int,
    _info: *mut libc::siginfo_t,
    ctx: *mut libc::c_void,
) {
    TRAPPED.store(true, Ordering::SeqCst);
    // SAFETY: an SA_SIGINFO handler's third argument is the interrupted
    // context, a valid ucontext_t for the duration of the handler.
    unsafe {
        let uc = ctx as *mut libc::ucontext_t;
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::ENOSYS);
    }
}

/// The seccomp mode by prctl(PR_GET_SECCOMP), with SIGSYS caught so a
/// filter that traps prctl cannot kill skiff here (see the module doc).
/// rt_sigaction, prctl's own trap and rt_sigreturn are all it needs.
fn probe_mode() -> Option<u8> {
    // SAFETY: an all-zero sigaction is valid (sigaction overwrites it).
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a zeroed sigaction with an SA_SIGINFO handler that only
    // stores to an atomic and to the trapped context's rax; the previous
    // action is saved and put back below.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_probe_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        if libc::sigaction(libc::SIGSYS, &sa, &mut old) != 0 {
            return None;
        }
    }
    TRAPPED.store(false, Ordering::SeqCst);
    // SAFETY: PR_GET_SECCOMP only reports this thread's mode.
    let r = unsafe { libc::syscall(libc::SYS_prctl, libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    let trapped = TRAPPED.load(Ordering::SeqCst);
    // SAFETY: restores the action saved above.
    unsafe { libc::sigaction(libc::SIGSYS, &old, std::ptr::null_mut()) };
    match r {
        _ if trapped => Some(2),
        // A filter's errno action (EPERM, ENOSYS...): a filter is on.
        -1 => Some(2),
        m => u8::try_from(m).ok(),
    }
}

fn read_proc_status() -> Option<u8> {
    let mut f = std::fs::File::open("/proc/self/status").ok()?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    let text = std::str::from_utf8(&buf[..len]).ok()?;
    let line = text.lines().find(|l| l.starts_with("Seccomp:"))?;
    line["Seccomp:".len()..].trim().parse().ok()
}

/// Installs `policy` on every thread (TSYNC), unless an outer filter is
/// already in place. If /proc cannot be read, it installs anyway: failing
/// closed is the safer guess.
pub fn install(policy: Policy) -> Result<Installed, SeccompError> {
    if mode() == Some(2) {
        return Ok(Installed::OuterFilter);
    }
    seccompiler::apply_filter_all_threads(policy.program()).map_err(SeccompError::Apply)?;
    MODE.store(2, Ordering::Relaxed);
    OWN.store(true, Ordering::Relaxed);
    Ok(Installed::Filter(policy))
}
