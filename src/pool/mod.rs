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
//! No guest ever sees another request's state. By default a worker keeps
//! its VM and, after each request, rewinds the guest to the snapshot
//! (snapshot/rewind.rs: all of guest memory and vCPU state) before it takes
//! the next: a new VM per request costs more than the request. With
//! `fresh_process` (`--fresh-process`), and always for cold guests, with
//! accelerators or with a network device, a worker serves one request and
//! exits; the pool forks a replacement when a worker finishes, or at once
//! when no other worker is left waiting (see `supervise`).

pub mod call;
pub mod proto;
mod warm;
mod worker;

use crate::config::RunConfig;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use thiserror::Error;

/// Most workers a pool keeps.
pub const WORKERS_MAX: usize = 64;
/// Failed worker starts in a row (after the pool was ready) that end it.
const FAILURES_MAX: u32 = 8;

/// Why a pool did not start, or ended.
#[derive(Debug, Error)]
pub enum PoolError {
    #[error("--workers must be 1 to {WORKERS_MAX}")]
    Workers,
    #[error("a TAP device serves one guest: use --workers 1 with --net")]
    NetWorkers,
    /// The trial restore's one-line reason.
    #[error("{0}")]
    Snapshot(String),
    #[error("pool: fork: {0}")]
    Fork(std::io::Error),
    #[error("{path}: {err}")]
    Socket { path: String, err: std::io::Error },
    #[error("pool: cannot start a worker: {0}")]
    Spawn(std::io::Error),
    #[error("pool: a worker could not restore the snapshot (see above)")]
    WorkerFailed,
    #[error("exiting on signal {0}")]
    Signal(i32),
}

impl PoolError {
    /// 128+N for signal N, else 1.
    pub fn exit_status(&self) -> i32 {
        match self {
            PoolError::Signal(s) => 128 + s,
            _ => 1,
        }
    }
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

/// A pool to serve: `workers` guests restored from `snapshot`, built as
/// `cfg` says, waiting on `socket`. `prog` names the workers' messages.
pub struct Pool<'a> {
    pub prog: &'a str,
    pub cfg: &'a RunConfig,
    /// `None`: each guest is built cold up to its first instruction
    /// (`skiff serve` without a snapshot).
    pub snapshot: Option<&'a Path>,
    pub socket: &'a Path,
    pub workers: usize,
    /// One process per request, never rewound (`--fresh-process`).
    pub fresh_process: bool,
}

impl Pool<'_> {
    /// Whether workers rewind their guest and take another request (see
    /// the module's notes): only a restored guest whose whole state is
    /// the VM's. An accelerator runtime's sessions and a TAP's queue live
    /// in the worker, not in the VM.
    fn rewinds(&self) -> bool {
        !self.fresh_process
            && self.snapshot.is_some()
            && self.cfg.accel.plugins.is_none()
            && self.cfg.devices.net.is_empty()
    }
}

impl Pool<'_> {
    /// Checks, binds and serves until a stop signal (or a worker that
    /// cannot restore); the socket is removed either way. `ready` is
    /// called once, when every worker is first ready. Always ends with an
    /// error: [`PoolError::Signal`] is the normal end.
    pub fn serve(&self, ready: &dyn Fn()) -> PoolError {
        if self.workers == 0 || self.workers > WORKERS_MAX {
            return PoolError::Workers;
        }
        if !self.cfg.devices.net.is_empty() && self.workers > 1 {
            return PoolError::NetWorkers;
        }
        if let Err(e) = restores_here(self.cfg, self.snapshot) {
            return e;
        }
        let sock_err = |err| PoolError::Socket {
            path: self.socket.display().to_string(),
            err,
        };
        let listener = match listen(self.socket) {
            Ok(l) => l,
            Err(e) => return sock_err(e),
        };
        // Workers wait in ppoll, then accept without blocking (worker.rs).
        let e = match listener.set_nonblocking(true) {
            Ok(()) => supervise(self, &listener, ready),
            Err(e) => sock_err(e),
        };
        let _ = std::fs::remove_file(self.socket);
        e
    }
}

/// Refuses a snapshot that cannot be restored here with its one-line
/// reason, once, before any worker tries. The trial runs in a child (a
/// restore with accelerators starts plugin threads, and the pool must stay
/// single-threaded to fork its workers), which sends its reason back on a
/// pipe.
fn restores_here(cfg: &RunConfig, snap: Option<&Path>) -> Result<(), PoolError> {
    let (r, w) = pipe().map_err(PoolError::Fork)?;
    // SAFETY: single-threaded here; the child only restores and exits.
    match unsafe { libc::fork() } {
        -1 => Err(PoolError::Fork(std::io::Error::last_os_error())),
        0 => {
            drop(r);
            let r = worker::Ready::new(cfg, snap);
            if let Err(e) = &r {
                let _ = (&std::fs::File::from(w)).write_all(e.to_string().as_bytes());
            }
            // SAFETY: ends the child at once, skipping the parent's atexit
            // work; the kernel tears the trial VM down.
            unsafe { libc::_exit(i32::from(r.is_err())) }
        }
        pid => {
            drop(w);
            let mut why = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut why);
            let mut status = 0;
            // SAFETY: waiting for our own child with a valid out-pointer;
            // EINTR (a stop signal) is retried: the child ends by itself.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
            }
            if let Some(sig) = crate::signals::pending() {
                return Err(PoolError::Signal(sig));
            }
            match libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                true => Ok(()),
                false if why.is_empty() => Err(PoolError::Snapshot(
                    "the trial restore of the snapshot ended without a reason".into(),
                )),
                false => Err(PoolError::Snapshot(why)),
            }
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two fresh fds that we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Binds PATH, replacing a stale socket nobody serves any more. The
/// socket is bound by its absolute path, so that another pool can tell
/// from /proc/net/unix that it is live without connecting to it (a
/// connection would be taken by one of this pool's workers as a request).
fn listen(path: &Path) -> std::io::Result<UnixListener> {
    let abs = absolute(path);
    // sun_path holds 107 bytes and a NUL: a long absolute path falls back
    // to the path as given.
    let bound = match abs.as_os_str().len() < 108 {
        true => abs.as_path(),
        false => path,
    };
    match UnixListener::bind(bound) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let live = match listening(&abs) {
                Some(live) => live,
                None => UnixStream::connect(path).is_ok(), // no /proc
            };
            if live {
                return Err(std::io::Error::other("a pool is already serving there"));
            }
            std::fs::remove_file(path)?;
            UnixListener::bind(bound)
        }
        r => r,
    }
}

/// `path` made absolute (its directory resolved), else as given.
fn absolute(path: &Path) -> std::path::PathBuf {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(dir), path.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => path.to_path_buf(),
    }
}

/// Whether a listening unix socket is bound to `abs` in this network
/// namespace (/proc/net/unix: flags 00010000 is __SO_ACCEPTCON); `None`
/// when /proc cannot be read.
fn listening(abs: &Path) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    let want = abs.to_str()?;
    Some(table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 8 && f[3] == "00010000" && f[7..].join(" ") == want
    }))
}

/// Blocks or unblocks the stop signals (SIGINT, SIGTERM, ...) for this
/// thread.
pub(super) fn set_stop_signals(how: libc::c_int) {
    // SAFETY: a valid sigset built in place; changes only our mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in crate::signals::STOP {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Forks a worker; the child never returns from here.
fn spawn(p: &Pool, listener: &UnixListener) -> std::io::Result<Worker> {
    let (r, w) = pipe()?;
    // SAFETY: getpid has no preconditions.
    let pool = unsafe { libc::getpid() };
    // SAFETY: the pool is single-threaded (no plugin is loaded in it), so
    // the child may go on running Rust code.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => {
            drop(r);
            let status = worker::serve(
                p.prog,
                p.cfg,
                p.snapshot,
                listener,
                w.as_raw_fd(),
                pool,
                p.rewinds(),
            );
            std::process::exit(status)
        }
        pid => Ok(Worker {
            pid,
            pipe: r,
            state: State::Starting,
        }),
    }
}

/// Keeps `n` workers starting or ready until SIGINT/SIGTERM or until a
/// worker fails to start (its message is on stderr).
fn supervise(p: &Pool, listener: &UnixListener, ready: &dyn Fn()) -> PoolError {
    let n = p.workers;
    let rewinds = p.rewinds();
    // Busy workers are not waited for: the kernel reaps them.
    // SAFETY: setting a standard disposition.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    set_stop_signals(libc::SIG_BLOCK);
    let mut workers: Vec<Worker> = Vec::new();
    let mut announced = false;
    let mut failures = 0;
    let p_prog = p.prog;
    let status = 'serve: loop {
        // A replacement starts when a busy worker has finished (its restore
        // would otherwise compete with the running request for the CPU),
        // or at once when no other worker is left waiting, unless workers
        // come back by themselves (they rewind): then there are never more
        // than `n`.
        while workers.len() < n || (!rewinds && workers.iter().all(|w| w.state == State::Busy)) {
            match spawn(p, listener) {
                Ok(w) => workers.push(w),
                Err(e) => break 'serve PoolError::Spawn(e),
            }
        }
        if !announced && workers.iter().filter(|w| w.state == State::Ready).count() == n {
            announced = true;
            ready();
        }
        let mut polls: Vec<libc::pollfd> = workers
            .iter()
            .map(|w| libc::pollfd {
                fd: w.pipe.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if let Some(sig) = crate::signals::pending() {
            break PoolError::Signal(sig);
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
                    crate::diag::line(
                        p_prog,
                        &"pool: a worker could not restore the snapshot (see above); replacing it",
                    );
                    gone.push(i);
                }
                _ if w.state == State::Starting => break 'serve PoolError::WorkerFailed,
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
