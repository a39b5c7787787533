//! Warm pool: `skiff pool --restore FILE --socket PATH [run flags] KERNEL`
//! keeps `--workers` processes each holding a guest restored from the
//! snapshot and confined, waiting on PATH; `skiff call PATH` hands one of
//! them its stdin, stdout, stderr and Http_* variables and exits with the
//! guest's status. What a fresh process must pay before a guest can run
//! (KVM_CREATE_VM, the memory slot, the vCPU, the seccomp filter) is paid
//! before the request arrives; the request pays the TSC and KVM_RUN.
//!
//! - `proto.rs`: the request and reply on the socket
//! - `worker.rs`: one worker's life (restore, confine, accept, run, reply)
//! - `call.rs`: `skiff call`
//!
//! Each worker serves one request and exits, so no guest ever sees another
//! request's state. The pool forks a replacement when a worker finishes,
//! or at once when no other worker is left waiting (see `supervise`).

pub mod call;
pub mod proto;
mod warm;
mod worker;

use crate::cli::{report, RunArgs};
use crate::config::RunConfig;
use clap::Args;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Most workers a pool keeps.
const WORKERS_MAX: usize = 64;
/// Failed worker starts in a row (after the pool was ready) that end it.
const FAILURES_MAX: u32 = 8;

/// `skiff pool [--workers N] --socket PATH --restore FILE [run flags] KERNEL`
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// The unix socket to serve calls on (`skiff call PATH`).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// How many restored guests to keep ready.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub workers: usize,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Busy,
}

struct Worker {
    pid: libc::pid_t,
    pipe: OwnedFd,
    state: State,
}

pub fn main(prog: &str, a: PoolArgs) -> i32 {
    let Some(snap) = a.run.restore.clone() else {
        report(
            prog,
            &"pool needs --restore FILE (a snapshot made by skiff snapshot)",
        );
        return 1;
    };
    if a.workers == 0 || a.workers > WORKERS_MAX {
        report(prog, &format_args!("--workers must be 1 to {WORKERS_MAX}"));
        return 1;
    }
    let Some(cfg) = a.run.config_or_report(prog) else {
        return 1;
    };
    if !cfg.devices.net.is_empty() && a.workers > 1 {
        report(
            prog,
            &"a TAP device serves one guest: use --workers 1 with --net",
        );
        return 1;
    }
    if !restores_here(prog, &cfg, Some(&snap)) {
        return 1;
    }
    let listener = match listen(&a.socket) {
        Ok(l) => l,
        Err(e) => {
            report(prog, &format_args!("{}: {e}", a.socket.display()));
            return 1;
        }
    };
    let status = supervise(prog, &cfg, Some(&snap), &listener, a.workers, &a.socket);
    let _ = std::fs::remove_file(&a.socket);
    status
}

/// Refuses a snapshot that cannot be restored here with its one-line
/// reason, once, before any worker tries. The trial runs in a child: a
/// restore with accelerators starts plugin threads, and the pool must stay
/// single-threaded to fork its workers.
pub(crate) fn restores_here(prog: &str, cfg: &RunConfig, snap: Option<&Path>) -> bool {
    // SAFETY: single-threaded here; the child only restores and exits.
    match unsafe { libc::fork() } {
        -1 => {
            report(
                prog,
                &format_args!("pool: fork: {}", std::io::Error::last_os_error()),
            );
            false
        }
        0 => {
            let r = worker::Ready::new(cfg, snap);
            if let Err(e) = &r {
                report(prog, e);
            }
            // SAFETY: ends the child at once, skipping the parent's atexit
            // work; the kernel tears the trial VM down.
            unsafe { libc::_exit(i32::from(r.is_err())) }
        }
        pid => {
            let mut status = 0;
            // SAFETY: waiting for our own child with a valid out-pointer.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
        }
    }
}

/// Binds PATH, replacing a stale socket nobody serves any more.
fn listen(path: &Path) -> std::io::Result<UnixListener> {
    match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::other("a pool is already serving there"));
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        r => r,
    }
}

/// Blocks or unblocks SIGINT and SIGTERM for this thread.
pub(super) fn set_stop_signals(how: libc::c_int) {
    // SAFETY: a valid sigset built in place; changes only our mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Forks a worker; the child never returns from here.
fn spawn(
    prog: &str,
    cfg: &RunConfig,
    snap: Option<&Path>,
    listener: &UnixListener,
) -> std::io::Result<Worker> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh fds that we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: getpid has no preconditions.
    let pool = unsafe { libc::getpid() };
    // SAFETY: the pool is single-threaded (no plugin is loaded in it), so
    // the child may go on running Rust code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(r);
            let status = worker::serve(prog, cfg, snap, listener, w.as_raw_fd(), pool);
            std::process::exit(status)
        }
        pid => Ok(Worker {
            pid,
            pipe: r,
            state: State::Starting,
        }),
    }
}

/// Keeps `n` workers (restored from `snap`, or built cold without one)
/// starting or ready until SIGINT/SIGTERM (status 0) or until a worker
/// fails to start (1: its message is on stderr). `skiff serve` runs its
/// guests through this too; the caller has checked the configuration
/// (see [`restores_here`]).
pub(crate) fn supervise(
    prog: &str,
    cfg: &RunConfig,
    snap: Option<&Path>,
    listener: &UnixListener,
    n: usize,
    path: &Path,
) -> i32 {
    // Workers wait in ppoll, then accept without blocking (worker.rs).
    if let Err(e) = listener.set_nonblocking(true) {
        report(prog, &format_args!("{}: {e}", path.display()));
        return 1;
    }
    // Busy workers are not waited for: the kernel reaps them.
    // SAFETY: setting a standard disposition.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    set_stop_signals(libc::SIG_BLOCK);
    let mut workers: Vec<Worker> = Vec::new();
    let mut announced = false;
    let mut failures = 0;
    let status = 'serve: loop {
        // A replacement starts when a busy worker has finished (its restore
        // would otherwise compete with the running request for the CPU),
        // or at once when no other worker is left waiting.
        while workers.len() < n || workers.iter().all(|w| w.state == State::Busy) {
            match spawn(prog, cfg, snap, listener) {
                Ok(w) => workers.push(w),
                Err(e) => {
                    report(prog, &format_args!("pool: cannot start a worker: {e}"));
                    break 'serve 1;
                }
            }
        }
        if !announced && workers.iter().filter(|w| w.state == State::Ready).count() == n {
            announced = true;
            report(
                prog,
                &format_args!("pool: {n} workers ready on {}", path.display()),
            );
        }
        let mut polls: Vec<libc::pollfd> = workers
            .iter()
            .map(|w| libc::pollfd {
                fd: w.pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if crate::vcpu::signals::pending().is_some() {
            break 0;
        }
        // SIGINT/SIGTERM are blocked except inside ppoll, so one cannot
        // slip in between the check above and the wait.
        // SAFETY: `polls` is a valid array of pollfd of the given length;
        // the empty set is a valid sigset_t.
        let ready = unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::ppoll(
                polls.as_mut_ptr(),
                polls.len() as libc::nfds_t,
                std::ptr::null(),
                &none,
            )
        };
        if ready < 0 {
            continue;
        }
        let mut gone = Vec::new();
        for (i, p) in polls.iter().enumerate().filter(|(_, p)| p.revents != 0) {
            let mut byte = 0u8;
            // SAFETY: one byte into our stack from our own pipe.
            let got = unsafe { libc::read(p.fd, (&mut byte as *mut u8).cast(), 1) };
            let w = &mut workers[i];
            match (got, byte) {
                (1, worker::READY) => {
                    w.state = State::Ready;
                    failures = 0;
                }
                (1, worker::TAKEN) => w.state = State::Busy,
                // Once the pool has been ready, a failed restore (e.g. the
                // clock check losing a race with a loaded host) costs one
                // worker, which is replaced; only a run of them ends it.
                _ if w.state == State::Starting && announced && failures < FAILURES_MAX => {
                    failures += 1;
                    report(
                        prog,
                        &"pool: a worker could not restore the snapshot (see above); replacing it",
                    );
                    gone.push(i);
                }
                _ if w.state == State::Starting => {
                    report(
                        prog,
                        &"pool: a worker could not restore the snapshot (see above)",
                    );
                    break 'serve 1;
                }
                _ => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            workers.swap_remove(i);
        }
    };
    // Idle workers end; busy ones end their guest as on SIGTERM.
    for w in &workers {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(w.pid, libc::SIGTERM) };
    }
    status
}
