//! seccomp: once the builder has acquired every host resource (image read,
//! guest memory mapped, KVM fds open, devices attached) and before the
//! first guest instruction, skiff confines itself to the syscalls its run
//! path makes. The policies are `seccomp/*.json`, compiled to BPF by
//! `build.rs`; a syscall outside the policy kills skiff (SIGSYS).
//!
//! Where an outer filter is already in place (urunc installs one before it
//! execs `solo5-hvt`, and its allowlist has neither prctl nor seccomp, so
//! trying would be fatal), skiff keeps that filter and says so on stderr.

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
}

impl Policy {
    /// The compiled BPF program.
    pub fn program(self) -> &'static [seccompiler::sock_filter] {
        match self {
            Policy::Run => &bpf::RUN,
            Policy::Accel => &bpf::ACCEL,
            Policy::Pool => &bpf::POOL,
            Policy::Serve => &bpf::SERVE,
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

/// [`install`] for the binary: the outer-filter note or the error goes to
/// stderr as one line; `None` means the run must end with exit status 1.
pub fn confine(prog: &str, policy: Policy) -> Option<Installed> {
    match install(policy) {
        Ok(i @ Installed::Filter(_)) => Some(i),
        Ok(Installed::OuterFilter) => {
            crate::cli::report(
                prog,
                &"already under a seccomp filter (Seccomp: 2); keeping it, not installing skiff's own",
            );
            Some(Installed::OuterFilter)
        }
        Err(e) => {
            crate::cli::report(prog, &e);
            None
        }
    }
}
