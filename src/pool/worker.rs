//! One pool worker: a process forked by the pool that restores the
//! snapshot up to the guest's clock (VM, memory slot, vCPU state, devices),
//! confines itself, and only then waits for a request. The request brings
//! the caller's stdin/stdout/stderr and Http_* variables; the worker sets
//! the TSC, runs the guest to its HALT and replies with the exit status.
//! Then it exits, or (a restored guest that halted) rewinds the guest to
//! the snapshot and waits for the next request: no guest state survives
//! into another request either way.

use super::proto::{self, ProtoError, Reply, FDS, REQUEST_HEADER, VARS_MAX};
use crate::config::RunConfig;
use crate::devices::function::Function;
use crate::diag::line as report;
use crate::marks::{self, Mark, COUNT};
use crate::seccomp::Policy;
use crate::snapshot::restore;
use crate::snapshot::rewind::Origin;
use crate::vmm::RunError;
use crate::vmm::Vm;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;
use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// How long a caller may take to send its request once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a worker tells the pool on its pipe.
pub(super) const READY: u8 = b'R';
pub(super) const TAKEN: u8 = b'A';

#[derive(Debug, Error)]
pub(super) enum RequestError {
    #[error("pool request: {0}")]
    Io(#[from] std::io::Error),
    #[error("pool request: {0}")]
    Proto(#[from] ProtoError),
    #[error("pool request: the caller sent {0} file descriptors, not stdin, stdout and stderr")]
    Fds(usize),
    #[error("pool request: the caller hung up before sending it")]
    Short,
}

pub(super) fn tell(pipe: RawFd, what: u8) {
    // SAFETY: one byte from our stack to our own pipe.
    unsafe { libc::write(pipe, (&what as *const u8).cast(), 1) };
}

/// The worker's life; returns its exit status. With `rewinds`, after each
/// request that ended in a HALT the guest is rewound to the snapshot
/// (snapshot/rewind.rs) and the worker takes another.
pub(super) fn serve(
    prog: &str,
    cfg: &RunConfig,
    snap: Option<&Path>,
    listener: &UnixListener,
    pipe: RawFd,
    pool: libc::pid_t,
    rewinds: bool,
) -> i32 {
    // SAFETY: prctl/signal only change this process's dispositions: an idle
    // worker does not outlive its pool, and SIGCHLD is no longer ignored.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != pool {
        return 0; // the pool died before PDEATHSIG was set
    }
    let mut ready = match Ready::new(cfg, snap) {
        Ok(p) => p,
        Err(e) => {
            report(prog, &e);
            return 1;
        }
    };
    // The guest as restored, recorded while KVM_GET_* are still allowed;
    // without it the worker serves one request.
    let origin = match (&ready, rewinds) {
        (Ready::Restored(p), true) => match Origin::capture(p) {
            Ok(o) => Some(o),
            Err(e) => {
                report(prog, &format_args!("pool: one request per worker: {e}"));
                None
            }
        },
        _ => None,
    };
    crate::signals::watch(libc::SIGIO);
    let mut buf = vec![0u8; REQUEST_HEADER + VARS_MAX];
    let policy = match cfg.accel.plugins {
        Some(_) => Policy::Accel,
        None => Policy::Pool,
    };
    // A warm guest's worker (skiff serve --warm) takes more requests from
    // this socket and parks its stdio on its own stderr between them; so
    // does a worker that rewinds.
    let mut park = super::warm::Fds::new(listener);
    match crate::seccomp::install(policy) {
        Ok(i) => i.note().into_iter().for_each(|n| report(prog, &n)),
        Err(e) => {
            report(prog, &e);
            return 1;
        }
    }
    loop {
        let (status, vm, again) =
            match one_request(prog, listener, pipe, &mut buf, ready, &mut park) {
                Served::Done(status) => return status,
                Served::Ran { status, vm, again } => (status, vm, again),
            };
        let (Some(origin), Some(vm), true) = (&origin, vm, again && status.is_some()) else {
            return 0;
        };
        // Only a guest that ended by itself, with nothing pending that was
        // meant for it, is rewound.
        if crate::signals::pending().is_some() || sigio_pending() {
            return 0;
        }
        ready = match origin.rewind(vm) {
            Ok(p) => Ready::Restored(p),
            Err(e) => {
                report(prog, &format_args!("pool: cannot rewind the guest: {e}"));
                return 1;
            }
        };
        set_sigio(libc::SIG_UNBLOCK);
    }
}

/// How a request went: `Done` ends the worker with that status; `Ran`
/// gives the guest's status (`None`: it did not halt by itself), its VM
/// and whether the worker may rewind it for another request.
// The VM is large but there is exactly one, moved once per request.
#[allow(clippy::large_enum_variant)]
enum Served {
    Done(i32),
    Ran {
        status: Option<i32>,
        vm: Option<Vm>,
        again: bool,
    },
}

/// Announces the worker ready, takes one request and runs `ready`'s guest
/// for it.
fn one_request(
    prog: &str,
    listener: &UnixListener,
    pipe: RawFd,
    buf: &mut [u8],
    ready: Ready,
    park: &mut Option<super::warm::Fds>,
) -> Served {
    super::set_stop_signals(libc::SIG_BLOCK);
    tell(pipe, READY);
    let conn = match accept_one(prog, listener) {
        Ok(Some(c)) => c,
        Ok(None) => return Served::Done(0),
        Err(status) => return Served::Done(status),
    };
    // From here SIGINT/SIGTERM stop the guest, as in `skiff run`.
    super::set_stop_signals(libc::SIG_UNBLOCK);
    tell(pipe, TAKEN);
    marks::set_from(Mark::Main, &[0; COUNT], 0);
    marks::mark(Mark::Request);
    let (flags, vars) = match receive(&conn, buf) {
        Ok(r) => r,
        Err(e) => {
            report(prog, &e);
            return Served::Done(1);
        }
    };
    // From here on stdio is the caller's.
    if !watch_hangup(&conn) {
        return Served::Done(0);
    }
    // The VM lives until the reply is sent: tearing it down takes longer
    // than the guest's whole run (it goes when the process exits).
    let mut function = Function::from_vars(vars.into_iter());
    if flags.framed {
        function = function.framed(proto::head_frame);
    }
    let conn = std::rc::Rc::new(std::cell::RefCell::new(conn));
    // A warm guest's hook takes the parking fds: its worker ends with it.
    if let Some(w) = park.take_if(|_| flags.warm) {
        function = function.warm(super::warm::next_request(
            prog.to_string(),
            conn.clone(),
            w,
            pipe,
        ));
    }
    let (status, halted, vm) = match ready.start(function) {
        Ok(mut vm) => {
            let result = vm.run();
            match &result {
                Ok(_) => {}
                // SIGIO: the caller hung up (watch_hangup), not a signal
                // anyone sent.
                Err(RunError::Signal(libc::SIGIO)) => {
                    report(prog, &"pool: the caller hung up; its guest was stopped")
                }
                Err(e) => report(prog, e),
            }
            (crate::vmm::exit_status(&result), result.ok(), Some(vm))
        }
        Err(e) => {
            report(prog, &e);
            (1, None, None)
        }
    };
    // The guest is over: the caller hanging up after the reply must not
    // run the vCPU's SIGIO handler (while the VM is torn down, it would
    // write to the unmapped kvm_run page; before a rewound guest runs, it
    // would stop the next request's guest).
    set_sigio(libc::SIG_BLOCK);
    let conn = conn.borrow();
    // SAFETY: fcntl clears O_ASYNC on our own socket: no SIGIO from it
    // from here on.
    unsafe { libc::fcntl(conn.as_raw_fd(), libc::F_SETFL, 0) };
    // The caller's readers see EOF once it exits, not when we do: its
    // stdio is closed (or replaced by our own stderr, so the next accept
    // cannot land on fds 0-2).
    for fd in 0..3 {
        match park {
            // SAFETY: dup2 replaces the caller's stdio with our stderr.
            Some(p) => unsafe { libc::dup2(p.park_fd(), fd) },
            // SAFETY: closing the caller's stdio, which nothing uses any more.
            None => unsafe { libc::close(fd) },
        };
    }
    let (m, exits) = marks::taken();
    let reply = Reply {
        status,
        marks: m,
        exits,
    };
    // A caller that has gone cannot be answered; nothing else to do.
    let answered = (&*conn).write_all(&reply.encode()).is_ok();
    Served::Ran {
        status: halted,
        vm,
        again: answered && !flags.warm && park.is_some(),
    }
}

/// Blocks or unblocks SIGIO (a caller's hang-up) for this thread.
fn set_sigio(how: libc::c_int) {
    // SAFETY: a valid sigset built in place; changes only our mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGIO);
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Whether a SIGIO came while it was blocked (a hang-up raced the end of
/// the guest): it was meant for the last request, so the worker does not
/// take another.
fn sigio_pending() -> bool {
    // SAFETY: sigpending writes a valid sigset into `set`.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigpending(&mut set) == 0 && libc::sigismember(&set, libc::SIGIO) == 1
    }
}

/// Waits for the next connection on `listener` with SIGINT/SIGTERM
/// unblocked only inside ppoll (so one that came earlier is seen here,
/// and one that comes later interrupts the wait); `None` when one came.
/// The listening socket is non-blocking: the workers that woke for a
/// connection but lost it to another wait again. `Err`: exit status.
pub(super) fn accept_one(prog: &str, listener: &UnixListener) -> Result<Option<UnixStream>, i32> {
    loop {
        if crate::signals::pending().is_some() {
            return Ok(None);
        }
        let mut p = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; the empty set is a valid sigset_t.
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::ppoll(&mut p, 1, std::ptr::null(), &none);
        }
        // SAFETY: accept4 on our listening socket; no address wanted.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: accept4 returned a fresh fd that we now own.
            return Ok(Some(unsafe { UnixStream::from_raw_fd(fd) }));
        }
        let e = std::io::Error::last_os_error();
        if !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
        ) {
            report(prog, &format_args!("pool: accept: {e}"));
            return Err(1);
        }
    }
}

/// What a worker holds before its request: a guest restored from the
/// snapshot up to its clock, or (no snapshot: `skiff serve` cold) one
/// built from the image up to its first instruction.
// The VM is large but there is exactly one per worker.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Ready {
    Restored(restore::Prepared),
    Cold(Vm),
}

impl Ready {
    /// Everything that does not depend on the request.
    pub(crate) fn new(cfg: &RunConfig, snap: Option<&Path>) -> Result<Self, String> {
        match snap {
            Some(snap) => restore::prepare(snap, cfg)
                .and_then(|mut p| p.check_clock().map(|()| Ready::Restored(p)))
                .map_err(|e| e.to_string()),
            None => crate::builder::build(cfg)
                .map(Ready::Cold)
                .map_err(|e| e.to_string()),
        }
    }

    /// Hands the guest its request: it can run.
    fn start(self, function: Function) -> Result<Vm, String> {
        match self {
            Ready::Restored(p) => p.resume(function).map_err(|e| e.to_string()),
            Ready::Cold(mut vm) => {
                vm.take_request(function);
                Ok(vm)
            }
        }
    }
}

/// Reads the request and puts the caller's stdin, stdout and stderr on
/// fds 0, 1 and 2; returns its flags and variables.
pub(super) fn receive(
    conn: &UnixStream,
    buf: &mut [u8],
) -> Result<(proto::Flags, Vec<(OsString, OsString)>), RequestError> {
    conn.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let mut fds = [-1; FDS + 1];
    let mut iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }];
    // SAFETY: the iovec covers `buf`, which we hold mutably.
    let (mut got, nfds) = unsafe { conn.recv_with_fds(&mut iov, &mut fds) }
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    let owned: Vec<OwnedFd> = fds[..nfds]
        .iter()
        // SAFETY: recvmsg just installed these fds in our table; we own them.
        .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if got == 0 {
        return Err(RequestError::Short);
    }
    if owned.len() != FDS {
        return Err(RequestError::Fds(owned.len()));
    }
    fill(conn, buf, REQUEST_HEADER, &mut got)?;
    let mut header = [0u8; REQUEST_HEADER];
    header.copy_from_slice(&buf[..REQUEST_HEADER]);
    let (flags, len) = proto::decode_request_header(&header)?;
    fill(conn, buf, REQUEST_HEADER + len, &mut got)?;
    let vars = proto::decode_vars(&buf[REQUEST_HEADER..REQUEST_HEADER + len])?;
    for (target, fd) in owned.iter().enumerate() {
        // SAFETY: dup2 onto 0..2 replaces our (the pool's) stdio; `fd` is
        // open. The originals are closed when `owned` drops.
        if unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok((flags, vars))
}

/// Reads from `conn` until `buf` holds `want` bytes (`got` so far).
fn fill(
    conn: &UnixStream,
    buf: &mut [u8],
    want: usize,
    got: &mut usize,
) -> Result<(), RequestError> {
    while *got < want {
        match (&*conn).read(&mut buf[*got..want])? {
            0 => return Err(RequestError::Short),
            n => *got += n,
        }
    }
    Ok(())
}

/// Arranges SIGIO when the caller hangs up (it was killed, or gave up),
/// which stops the guest as SIGTERM would. False if it already has.
pub(super) fn watch_hangup(conn: &UnixStream) -> bool {
    let fd = conn.as_raw_fd();
    let mut byte = 0u8;
    // SAFETY: fcntl on our own socket; recv peeks one byte into `byte`.
    unsafe {
        libc::fcntl(fd, libc::F_SETOWN, libc::getpid());
        libc::fcntl(fd, libc::F_SETFL, libc::O_ASYNC);
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        ) != 0
    }
}
