//! `skiff agent`: serves vAccel's remote protocol (`vaccel.sync.agent.
//! AgentService` over ttrpc framing) so functions on other machines use
//! this machine's accelerators, through skiff's own plugins and
//! selection rule. Wire-compatible with vAccel's rpc client.
//!
//! A thread per connection, not an event loop: clients are few (one per
//! running function) and hold their connection for the function's life;
//! requests are strictly one at a time per connection (sync ttrpc), and
//! ops are long CPU/GPU calls that an event loop would hand to threads
//! anyway. Blocking reads keep frame handling simple and bounded. The
//! plugins live on one executor thread ([`exec`]).
//!
//! Limits (stated in docs/remote-accelerators.md): frames up to
//! `--max-frame-mib` (default 256 MiB, at most vAccel's 1 GiB; a larger
//! header gets RESOURCE_EXHAUSTED and the connection closes),
//! `--max-connections` clients (default 64; more are closed at accept),
//! per connection 64 sessions, 64 resources and 256 MiB of blobs (at most
//! 4 classifiers built from them: [`resource`]).

pub mod blob;
pub mod conn;
pub mod exec;
pub mod resource;
pub mod shm;

use crate::accel::config::AccelConfig;
use crate::accel::remote::addr::{Address, Listener, Stream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use thiserror::Error;

/// What the agent serves, and how.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub address: Address,
    pub accel: AccelConfig,
    /// Largest frame body accepted, bytes.
    pub max_frame: u32,
    pub max_connections: usize,
    /// Offer skiff's shared-memory fast path on unix sockets ([`shm`]).
    pub shared_memory: bool,
    /// Load libraries clients send as bytes (their code runs here).
    pub allow_client_libraries: bool,
}

#[derive(Debug, Error)]
pub enum AgentError {
    #[error("cannot listen on {addr}: {err}")]
    Listen { addr: Address, err: std::io::Error },
    #[error("{0}")]
    Plugins(String),
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
    #[error("{0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// The open connections, to shut them down on SIGTERM.
type Open = Arc<Mutex<Vec<(u64, Stream)>>>;

/// The stop signals (SIGTERM, SIGINT, SIGHUP, SIGQUIT: as every skiff
/// subcommand) as a readable fd (blocked for every thread, which inherit
/// the mask from here).
fn signal_fd() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; these calls only edit it and this
    // thread's mask.
    let fd = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGQUIT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::signalfd(-1, &set, libc::SFD_CLOEXEC)
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Binds, starts the plugins, confines itself, then serves until a stop
/// signal, which it returns. `ready` gets the bound address (tcp: the real
/// port) and the plugins, once clients can connect.
pub fn serve(cfg: AgentConfig, ready: impl FnOnce(&Address, &str)) -> Result<i32, AgentError> {
    let sig = signal_fd().map_err(AgentError::Signals)?;
    crate::accel::remote::keep_buffers();
    let listener = listen(&cfg.address).map_err(|err| AgentError::Listen {
        addr: cfg.address.clone(),
        err,
    })?;
    let bound = listener.local(&cfg.address);
    let _unlink = Unlink(match &cfg.address {
        Address::Unix(p) => Some(p.clone()),
        _ => None,
    });
    let (exec, plugins) = exec::Executor::start(cfg.accel.clone()).map_err(AgentError::Plugins)?;
    crate::seccomp::install(crate::seccomp::Policy::Agent)?;
    ready(&bound, &plugins);
    let cfg = Arc::new(cfg);
    let open: Open = Arc::default();
    let live = Arc::new(AtomicUsize::new(0));
    let mut next = 0u64;
    let stopped_by = loop {
        if let Some(signal) = wait(&listener, &sig) {
            break signal;
        }
        let Ok(s) = listener.accept() else { continue };
        if live.load(Ordering::Relaxed) >= cfg.max_connections {
            s.shutdown(); // over the limit: refused at once
            continue;
        }
        next += 1;
        let id = next;
        if let Ok(c) = s.try_clone() {
            lock(&open).push((id, c));
        }
        live.fetch_add(1, Ordering::Relaxed);
        let (cfg, exec, open2, live2) = (cfg.clone(), exec.clone(), open.clone(), live.clone());
        let spawned = std::thread::Builder::new()
            .name("skiff-agent-conn".into())
            .spawn(move || {
                conn::serve(s, &cfg, &exec);
                lock(&open2).retain(|(i, _)| *i != id);
                live2.fetch_sub(1, Ordering::Relaxed);
            });
        if spawned.is_err() {
            live.fetch_sub(1, Ordering::Relaxed);
            lock(&open).retain(|(i, _)| *i != id);
        }
    };
    // Clean shutdown: every client sees its connection end (their calls
    // fail with EIO); sessions die with the process.
    for (_, s) in lock(&open).iter() {
        s.shutdown();
    }
    Ok(stopped_by)
}

/// Listens on `a`; a unix socket file left by an agent that died (nobody
/// accepts on it) is replaced, so a restarted agent serves again.
fn listen(a: &Address) -> std::io::Result<Listener> {
    match (a.listen(), a) {
        (Err(e), Address::Unix(p)) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let stale = std::os::unix::net::UnixStream::connect(p)
                .is_err_and(|c| c.kind() == std::io::ErrorKind::ConnectionRefused);
            if !stale {
                return Err(e);
            }
            std::fs::remove_file(p)?;
            a.listen()
        }
        (r, _) => r,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits for a connection (true) or a stop signal (false).
fn wait(l: &Listener, sig: &OwnedFd) -> Option<i32> {
    let mut fds = [
        libc::pollfd {
            fd: l.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: sig.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: two valid pollfd entries.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Some(libc::SIGTERM);
        }
        if fds[1].revents != 0 {
            return Some(read_signal(sig));
        }
        if fds[0].revents != 0 {
            return None;
        }
    }
}

/// The signal waiting on the signalfd (SIGTERM if it cannot be read).
fn read_signal(sig: &OwnedFd) -> i32 {
    // SAFETY: signalfd_siginfo is plain data; all zeros is a valid value.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let len = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is a writable buffer of `len` bytes.
    let n = unsafe {
        libc::read(
            sig.as_raw_fd(),
            (&mut info as *mut libc::signalfd_siginfo).cast(),
            len,
        )
    };
    if n == len as isize {
        info.ssi_signo as i32
    } else {
        libc::SIGTERM
    }
}

/// Removes the unix socket file when the agent ends.
struct Unlink(Option<std::path::PathBuf>);

impl Drop for Unlink {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
