//! `skiff serve`: an HTTP/1.1 function server where every request gets a
//! fresh guest, restored from a snapshot (or booted cold) in a confined
//! worker process: rewound to the snapshot after each request, or (with
//! `--fresh-process`) a process per request (src/pool/).
//!
//! Two kinds of process (see docs/serve.md for why):
//! - the front (this process): hyper on one tokio thread; parses requests,
//!   enforces the limits, streams bodies through pipes, answers; confined
//!   by `seccomp/serve.json` once its sockets and runtime exist;
//! - the pool (src/pool/), forked before the front starts any thread: it
//!   keeps `--workers` processes each holding a guest ready and confined
//!   (`seccomp/pool.json`), waiting on a private unix socket. A request is
//!   handed to one of them with its pipes and `Http_*` variables
//!   (`guest.rs`); the worker runs the guest to its HALT, then rewinds
//!   it for the next request or exits.
//!
//! - `conns.rs`: open connections, their caps and idle/header deadlines
//! - `handler.rs`: one request, from head to log line
//! - `guest.rs`: one request's worker
//! - `vars.rs`: the watchdog's `Http_*` variables
//! - `metrics.rs`: Prometheus text

mod body;
mod conns;
mod guest;
mod handler;
mod metrics;
pub mod vars;

use crate::config::RunConfig;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// The server's settings (the guest's are a [`RunConfig`]).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub workers: usize,
    pub max_body: u64,
    pub timeout: Duration,
    /// Requests that may wait for a worker before the next gets 503.
    pub queue: usize,
    /// How long SIGTERM waits for requests in flight.
    pub drain: Duration,
    /// Restore each guest from this snapshot; `None`: boot each cold.
    pub restore: Option<PathBuf>,
    /// A guest that asks for the next request (REQ_NEXT) keeps serving
    /// this function's requests (`--warm`; see docs/serve.md).
    pub warm: bool,
    /// One worker process per request, never rewound (`--fresh-process`).
    pub fresh_process: bool,
    /// Connections open at once, and from one peer address.
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    /// Requests from one peer address that may wait for a worker.
    pub queue_per_peer: usize,
    /// A whole request head must arrive within this (from its first byte,
    /// or from the connection's opening).
    pub header_timeout: Duration,
    /// A keep-alive connection may wait this long for its next request.
    pub idle_timeout: Duration,
    /// A client must take response bytes at least this often.
    pub send_timeout: Duration,
    /// A request body (its buffered part, then the rest) must be in within this.
    pub body_timeout: Duration,
    /// A body up to this many bytes is read whole before the request takes
    /// a worker; a larger one takes it after this many bytes.
    pub body_buffer: usize,
}

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot make the pool's socket in {0}: {1}")]
    PoolSocket(String, std::io::Error),
    #[error("cannot start the pool: {0}")]
    Fork(std::io::Error),
    #[error("cannot start the HTTP runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the function cannot start here (see above)")]
    Function,
    #[error("{0}")]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// What every request's handler shares.
pub struct State {
    prog: String,
    cfg: ServeConfig,
    pool: PathBuf,
    pool_pid: libc::pid_t,
    slots: Arc<tokio::sync::Semaphore>,
    metrics: metrics::Metrics,
    conns: conns::Conns,
    /// Requests waiting for a worker, by peer address.
    queued: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl State {
    /// Whether the pool process still runs (health).
    fn pool_alive(&self) -> bool {
        let mut st = 0;
        // SAFETY: polling our own child without blocking; `st` is valid.
        unsafe { libc::waitpid(self.pool_pid, &mut st, libc::WNOHANG) == 0 }
    }
}

/// A private directory (mode 0700) for the pool's socket, removed on drop.
struct PoolDir(PathBuf);

impl PoolDir {
    fn new() -> Result<Self, ServeError> {
        use std::os::unix::fs::DirBuilderExt;
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let dir = std::env::temp_dir().join(format!("skiff-serve-{pid}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| ServeError::PoolSocket(dir.display().to_string(), e))?;
        Ok(PoolDir(dir))
    }
}

impl Drop for PoolDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the server until SIGTERM/SIGINT and the drain; `Ok` on a clean end.
pub fn run(prog: &str, cfg: ServeConfig, run: RunConfig) -> Result<(), ServeError> {
    let http =
        std::net::TcpListener::bind(cfg.listen).map_err(|e| ServeError::Listen(cfg.listen, e))?;
    let metrics = cfg
        .metrics
        .map(|a| std::net::TcpListener::bind(a).map_err(|e| ServeError::Listen(a, e)))
        .transpose()?;
    let dir = PoolDir::new()?;
    let sock = dir.0.join("pool.sock");
    let pool_pid = fork_pool(prog, &cfg, &run, &sock, &[Some(&http), metrics.as_ref()])?;
    let state = Arc::new(State {
        prog: prog.to_string(),
        pool: sock,
        pool_pid,
        slots: Arc::new(tokio::sync::Semaphore::new(cfg.workers)),
        metrics: metrics::Metrics::new(cfg.workers),
        conns: conns::Conns::new(conns::Limits {
            max: cfg.max_connections,
            per_peer: cfg.max_connections_per_peer,
            header: cfg.header_timeout,
            idle: cfg.idle_timeout,
            send: cfg.send_timeout,
        }),
        queued: Default::default(),
        cfg,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let r = rt.block_on(serve(state.clone(), http, metrics));
    stop_pool(pool_pid);
    drop(dir);
    r
}

/// Forks the pool and waits until its workers are first ready (or it has
/// failed, its reason on stderr). Single-threaded here (no runtime yet),
/// so the child may run Rust code. It gets its own process group, so a
/// signal to the front's group (Ctrl-C) does not kill guests the drain is
/// waiting for, and it ends with the front (PDEATHSIG).
fn fork_pool(
    prog: &str,
    cfg: &ServeConfig,
    run: &RunConfig,
    sock: &Path,
    close: &[Option<&std::net::TcpListener>],
) -> Result<libc::pid_t, ServeError> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(ServeError::Fork(std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 returned two fresh fds that we now own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: getpid has no preconditions.
    let front = unsafe { libc::getpid() };
    // SAFETY: single-threaded: the child continues with a consistent copy.
    match unsafe { libc::fork() } {
        -1 => Err(ServeError::Fork(std::io::Error::last_os_error())),
        0 => {
            drop(r);
            // SAFETY: process-attribute calls on ourselves; closing the
            // HTTP listeners we inherited (the front owns them).
            unsafe {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != front {
                    libc::_exit(0);
                }
                for l in close.iter().flatten() {
                    libc::close(l.as_raw_fd());
                }
            }
            let pool = crate::pool::Pool {
                prog,
                cfg: run,
                snapshot: cfg.restore.as_deref(),
                socket: sock,
                workers: cfg.workers,
                fresh_process: cfg.fresh_process,
            };
            let ready = || {
                // SAFETY: one byte from our stack to our own pipe.
                unsafe { libc::write(w.as_raw_fd(), b"R".as_ptr().cast(), 1) };
            };
            let e = pool.serve(&ready);
            if !matches!(e, crate::pool::PoolError::Signal(_)) {
                crate::diag::line(prog, &e);
            }
            std::process::exit(e.exit_status())
        }
        pid => {
            drop(w);
            let mut byte = [0u8; 1];
            match std::fs::File::from(r).read(&mut byte) {
                Ok(1) => Ok(pid),
                _ => {
                    // SAFETY: reaping our own child, which has ended.
                    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                    Err(ServeError::Function)
                }
            }
        }
    }
}

/// Ends the pool (idle workers go; none is busy after the drain) and
/// waits for it, at most a second.
fn stop_pool(pid: libc::pid_t) {
    // SAFETY: signalling and polling our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        for _ in 0..100 {
            let mut st = 0;
            if libc::waitpid(pid, &mut st, libc::WNOHANG) != 0 {
                return;
            }
            libc::usleep(10_000);
        }
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

async fn serve(
    state: Arc<State>,
    http: std::net::TcpListener,
    metrics: Option<std::net::TcpListener>,
) -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let map = |e| ServeError::Listen(state.cfg.listen, e);
    http.set_nonblocking(true).map_err(map)?;
    let http = tokio::net::TcpListener::from_std(http).map_err(map)?;
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Runtime)?;
    if let Some(m) = metrics {
        m.set_nonblocking(true).map_err(map)?;
        let m = tokio::net::TcpListener::from_std(m).map_err(map)?;
        tokio::spawn(serve_metrics(state.clone(), m));
    }
    // Every syscall the front needs from here on is in seccomp/serve.json.
    crate::seccomp::install(crate::seccomp::Policy::Serve)?;
    let addr = http.local_addr().map_err(map)?;
    crate::diag::line(
        &state.prog,
        &format_args!(
            "serving http://{addr} with {} workers ({})",
            state.cfg.workers,
            state
                .cfg
                .restore
                .as_ref()
                .map_or("each guest booted cold".into(), |p| format!(
                    "each guest restored from {}",
                    p.display()
                ))
        ),
    );
    if state.cfg.warm {
        crate::diag::line(

            &state.prog,

            &format_args!("--warm: a guest that asks for the next request serves more than one (they share its memory)"),
);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(sweep(state.clone()));
    loop {
        let (stream, peer) = tokio::select! {
            a = http.accept() => match a {
                Ok(a) => a,
                // Out of fds (or a connection reset before accept): wait a
                // little rather than spin on a listener that stays ready.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let conn = match state.conns.admit(peer.ip()) {
            Ok((c, evicted)) => {
                state.metrics.closed(conns::Closed::Evicted, evicted.into());
                c
            }
            Err(why) => {
                refuse(&state, stream, peer, why);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let mut stop = stop_rx.clone();
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            let _alive = alive;
            connection(state, stream, conn, &mut stop).await;
        });
    }
    // SIGTERM: no new connections; idle keep-alive ones close, requests in
    // flight finish (bounded by --drain).
    drop(http);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let drained = tokio::time::timeout(state.cfg.drain, alive_rx.recv())
        .await
        .is_ok();
    crate::diag::line(
        &state.prog,
        &format_args!(
            "{}",
            if drained {
                "drained, exiting"
            } else {
                "drain timed out; ending the requests still in flight"
            }
        ),
    );
    Ok(())
}

/// Answers a connection over a cap 503 (a fixed text: nothing was read
/// from it) and closes it.
fn refuse(state: &State, stream: tokio::net::TcpStream, peer: SocketAddr, why: conns::Refused) {
    let _ = stream.try_write(conns::REFUSED_503);
    state.metrics.refused(why);
    let cap = match why {
        conns::Refused::Full => "--max-connections",
        conns::Refused::Peer => "--max-connections-per-peer",
    };
    crate::diag::line(
        &state.prog,
        &format_args!("{peer} connection refused 503 ({cap} reached, none idle)"),
    );
}

/// Closes idle connections past their deadlines, every [`conns::SWEEP`].
async fn sweep(state: Arc<State>) {
    let mut tick = tokio::time::interval(conns::SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state.conns.sweep();
    }
}

/// Serves one connection with hyper until it ends, the front closes it
/// (a cap, a deadline) or SIGTERM drains it.
async fn connection(
    state: Arc<State>,
    stream: tokio::net::TcpStream,
    conn: Arc<conns::Conn>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) {
    struct Gone<'a>(&'a State, &'a conns::Conn);
    impl Drop for Gone<'_> {
        fn drop(&mut self) {
            self.0.conns.remove(self.1);
        }
    }
    let _gone = Gone(&state, &conn);
    let peer = conn.peer;
    let fd = stream.as_raw_fd();
    let svc = {
        let (state, conn) = (state.clone(), conn.clone());
        service_fn(move |req| handler::handle(state.clone(), conn.clone(), req))
    };
    let io = conns::Watched {
        io: stream,
        conn: conn.clone(),
    };
    let http = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .pipeline_flush(true)
        .timer(hyper_util::rt::TokioTimer::new())
        // A backstop: the sweep enforces each of these on its own.
        .header_read_timeout(state.cfg.header_timeout + state.cfg.idle_timeout)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(http);
    tokio::select! {
        // First: a connection chosen for closing while idle must not start
        // a request in the same poll.
        biased;
        _ = conn.close.notified() => {}
        r = http.as_mut() => {
            if r.as_ref().is_err_and(|e| e.is_timeout()) {
                head_timeout(&state, peer);
            }
            return;
        }
        _ = stop.changed() => {
            http.as_mut().graceful_shutdown();
            let _ = http.await;
            return;
        }
    }
    // Closed by the front: idle (no request in progress), or not reading.
    match conn.closed() {
        conns::Closed::HeadTimeout => {
            let t = conns::TIMEOUT_408;
            // SAFETY: `fd` is the connection's socket, still open (`http`
            // owns it until this function returns); one non-blocking send
            // from a static buffer, nothing else done with the fd.
            unsafe {
                libc::send(
                    fd,
                    t.as_ptr().cast(),
                    t.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            head_timeout(&state, peer);
        }
        conns::Closed::SendTimeout => {
            state.metrics.closed(conns::Closed::SendTimeout, 1);
            crate::diag::line(
                &state.prog,
                &format_args!(
                    "{peer} connection closed (no response byte taken within --send-timeout)"
                ),
            );
        }
        why => state.metrics.closed(why, 1),
    }
}

/// A request head that did not arrive in time: logged and counted as a 408.
fn head_timeout(state: &State, peer: std::net::IpAddr) {
    state.metrics.closed(conns::Closed::HeadTimeout, 1);
    state.metrics.request(408, 0);
    crate::diag::line(
        &state.prog,
        &format_args!("{peer} - 408 (no whole request head within --header-timeout)"),
    );
}

async fn serve_metrics(state: Arc<State>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |_req| {
                let text = state.metrics.render(state.conns.open());
                async move {
                    let mut r = hyper::Response::new(body::RespBody::full(text.into()));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
