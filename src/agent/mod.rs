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
//! `--max-connections` clients (default 64) and `--max-connections-per-peer`
//! from one tcp address (default 32): over a cap the longest-idle
//! connection holding nothing (no session, resource or shared region) is
//! closed to make room, else the new one is closed at accept; such an idle
//! connection is also closed after `--idle-timeout`; a frame must be whole
//! within `--frame-timeout` of its first byte; per connection 64 sessions,
//! 64 resources and 256 MiB of blobs (at most 4 classifiers built from
//! them: [`resource`]).

pub mod blob;
pub mod conn;
pub mod exec;
pub mod handover;
pub mod resource;
pub mod shm;

use crate::accel::config::AccelConfig;
use crate::vaccel::addr::{Address, Listener, Stream};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use thiserror::Error;

/// What the agent serves, and how.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub address: Address,
    pub accel: AccelConfig,
    /// Largest frame body accepted, bytes.
    pub max_frame: u32,
    pub max_connections: usize,
    /// Connections from one tcp peer address (unix and vsock peers are
    /// local, trusted by the socket's permissions: not counted apart).
    pub max_connections_per_peer: usize,
    /// A connection holding nothing closes after this long without a frame.
    pub idle_timeout: Duration,
    /// A frame must be whole within this of its first byte.
    pub frame_timeout: Duration,
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

/// Whether a connection is idle and holds nothing (so closing it loses
/// its client nothing but the socket), and since when.
#[derive(Debug)]
pub struct Idle {
    /// ms on `clock` (+1) since it became idle; 0: busy or holding state.
    since: AtomicU64,
    clock: Instant,
}

impl Idle {
    /// Waiting for a frame, holding nothing: it may be closed for room.
    pub fn set(&self) {
        let ms = self.clock.elapsed().as_millis() as u64 + 1;
        self.since.store(ms, Relaxed);
    }

    /// Busy, or holding a session: never closed for room.
    pub fn clear(&self) {
        self.since.store(0, Relaxed);
    }
}

/// One open connection, as the accept loop sees it.
struct Open {
    id: u64,
    /// A clone of its socket: shutting it down ends the connection.
    stream: Stream,
    peer: Option<IpAddr>,
    idle: Arc<Idle>,
}

/// The open connections: the caps, and shutting them down on SIGTERM.
type Opens = Arc<Mutex<Vec<Open>>>;

/// Over a cap: closes the longest-idle connection holding nothing (of
/// `peer` when given); whether there was one.
fn evict(open: &mut Vec<Open>, peer: Option<IpAddr>) -> bool {
    let oldest = open
        .iter()
        .enumerate()
        .filter(|(_, o)| peer.is_none() || o.peer == peer)
        .map(|(i, o)| (i, o.idle.since.load(Relaxed)))
        .filter(|&(_, since)| since != 0)
        .min_by_key(|&(_, since)| since)
        .map(|(i, _)| i);
    match oldest {
        Some(i) => {
            open.swap_remove(i).stream.shutdown();
            true
        }
        None => false,
    }
}

/// Makes room for a connection from `peer` (the per-peer cap, then the
/// total one); false: refuse it.
fn admit(open: &mut Vec<Open>, peer: Option<IpAddr>, cfg: &AgentConfig) -> bool {
    if peer.is_some()
        && open.iter().filter(|o| o.peer == peer).count() >= cfg.max_connections_per_peer
        && !evict(open, peer)
    {
        return false;
    }
    open.len() < cfg.max_connections || evict(open, None)
}

/// Waits until `s` has bytes (or is closed) — true — or `limit` passes.
pub fn readable(s: &Stream, limit: Option<Duration>) -> bool {
    let ms = limit.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as i32);
    let mut p = libc::pollfd {
        fd: s.raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd for our own socket.
        match unsafe { libc::poll(&mut p, 1, ms) } {
            n if n > 0 => return true,
            0 => return false,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return true, // the read that follows reports it
        }
    }
}

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
    crate::vaccel::keep_buffers();
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
    let open: Opens = Arc::default();
    let clock = Instant::now();
    let mut next = 0u64;
    let stopped_by = loop {
        // Parked hand-overs expire on time, not only at the next call.
        handover::expire(&exec);
        match wait(&listener, &sig) {
            Woke::Signal(signal) => break signal,
            Woke::Tick => continue,
            Woke::Accept => {}
        }
        let Ok(s) = listener.accept() else { continue };
        let peer = match &s {
            Stream::Tcp(t) => t.peer_addr().ok().map(|a| a.ip()),
            Stream::Unix(_) => None,
        };
        let Ok(c) = s.try_clone() else {
            s.shutdown();
            continue;
        };
        // Idle and empty from the start (before its thread runs), so a
        // flood's own newest connections can make room for each other.
        let idle = Arc::new(Idle {
            since: AtomicU64::new(0),
            clock,
        });
        idle.set();
        {
            let mut open = lock(&open);
            if !admit(&mut open, peer, &cfg) {
                s.shutdown(); // over a cap, none idle: refused at once
                continue;
            }
            next += 1;
            open.push(Open {
                id: next,
                stream: c,
                peer,
                idle: idle.clone(),
            });
        }
        let id = next;
        let (cfg, exec, open2) = (cfg.clone(), exec.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("skiff-agent-conn".into())
            .spawn(move || {
                conn::serve(s, &cfg, &exec, &idle);
                lock(&open2).retain(|o| o.id != id);
            });
        if spawned.is_err() {
            lock(&open).retain(|o| o.id != id);
        }
    };
    // Clean shutdown: every client sees its connection end (their calls
    // fail with EIO); sessions die with the process.
    for o in lock(&open).iter() {
        o.stream.shutdown();
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
/// What woke the accept loop.
enum Woke {
    Signal(i32),
    Accept,
    /// A second passed (time to expire parked hand-overs).
    Tick,
}

fn wait(l: &Listener, sig: &OwnedFd) -> Woke {
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
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if r < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Woke::Signal(libc::SIGTERM);
        }
        if fds[1].revents != 0 {
            return Woke::Signal(read_signal(sig));
        }
        if fds[0].revents != 0 {
            return Woke::Accept;
        }
        return Woke::Tick;
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
