//! `skiff run --control PATH`: a unix socket (mode 0600, and only peers
//! of the same uid or root, by SO_PEERCRED) on which an operator pauses,
//! resumes, snapshots and migrates the running guest. One command per
//! line, one reply line: `ok[ detail]` or `error: reason`.
//!
//! The vCPU stays the main thread's. A thread accepts connections and one
//! thread per connection parses its lines; a command is handed to the
//! vCPU thread through a one-slot mailbox, and the vCPU thread is kicked
//! (a signal without SA_RESTART: `KVM_RUN` returns through
//! immediate_exit, and a guest's POLL sleep ends early, which solo5
//! allows). The run loop (`run.rs`) looks at the mailbox between exits,
//! never inside a hypercall, and acts as the owner of the VM. `status`
//! and `cancel` are answered by the connection's thread at once, even
//! while a migration runs.

pub mod run;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;
use thiserror::Error;

/// The signal that kicks the vCPU thread (nothing else in skiff uses it).
const KICK: libc::c_int = libc::SIGUSR2;
/// Longest command line; a longer one is refused and the connection ends.
const MAX_LINE: usize = 4096;
/// Connections served at once (a thread each); more wait in the backlog.
const MAX_CONNS: usize = 16;

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("{path}: {err}")]
    Connect { path: String, err: std::io::Error },
    #[error("control socket: {0}")]
    Io(std::io::Error),
    #[error("control socket: the guest's skiff closed the connection without a reply")]
    NoReply,
    #[error("--control {path}: {err}")]
    Bind { path: String, err: std::io::Error },
    #[error("--control {0}: the path exists and is not a stale skiff socket; remove it or choose another")]
    Exists(String),
}

/// A command of the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    Pause,
    Resume,
    Snapshot(PathBuf),
    Migrate(crate::vaccel::addr::Address),
    Cancel,
}

impl std::str::FromStr for Command {
    type Err = String;
    fn from_str(line: &str) -> Result<Self, String> {
        let mut words = line.split_ascii_whitespace();
        let verb = words.next().ok_or("empty command")?;
        let arg = words.next();
        if words.next().is_some() {
            return Err(format!("'{verb}': too many arguments"));
        }
        let none = |c: Command| match arg {
            None => Ok(c),
            Some(_) => Err(format!("'{verb}' takes no argument")),
        };
        match verb {
            "status" => none(Command::Status),
            "pause" => none(Command::Pause),
            "resume" => none(Command::Resume),
            "cancel" => none(Command::Cancel),
            "snapshot" => Ok(Command::Snapshot(
                arg.ok_or("usage: snapshot FILE")?.into(),
            )),
            "migrate" => {
                let a = arg.ok_or("usage: migrate tcp://IP:PORT|unix:///PATH")?;
                let addr: crate::vaccel::addr::Address = a.parse().map_err(|e| format!("{e}"))?;
                // Resolving a name (resolv.conf, uname, NSS modules) is
                // outside a controlled run's seccomp allowlist.
                match &addr {
                    crate::vaccel::addr::Address::Tcp(hp)
                        if hp.parse::<std::net::SocketAddr>().is_err() =>
                    {
                        Err(format!("address '{a}': give the destination's IP address (tcp://IP:PORT): a controlled run resolves no host names"))
                    }
                    _ => Ok(Command::Migrate(addr)),
                }
            }
            _ => Err(format!(
                "unknown command '{verb}' (status, pause, resume, snapshot FILE, migrate ADDR, cancel)"
            )),
        }
    }
}

/// What the guest is doing, for `status` (answered without the vCPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Running = 0,
    Paused = 1,
}

/// A command for the vCPU thread, with where its reply goes.
#[derive(Debug)]
pub struct Request {
    pub cmd: Command,
    reply: mpsc::Sender<(String, mpsc::Sender<()>)>,
}

impl Request {
    /// Sends the reply line (`ok...` or `error: ...`).
    pub fn reply(self, r: Result<String, String>) {
        self.send(r);
    }

    /// Sends the reply line and waits (a second at most) until it is
    /// written: the process is about to exit (a guest that migrated).
    pub fn reply_last(self, r: Result<String, String>) {
        if let Some(done) = self.send(r) {
            let _ = done.recv_timeout(Duration::from_secs(1));
        }
    }

    fn send(self, r: Result<String, String>) -> Option<mpsc::Receiver<()>> {
        let line = match r {
            Ok(d) if d.is_empty() => "ok".to_string(),
            Ok(d) => format!("ok {d}"),
            Err(e) => format!("error: {e}"),
        };
        let (tx, rx) = mpsc::channel();
        self.reply.send((line, tx)).ok().map(|()| rx)
    }
}

#[derive(Debug)]
struct Shared {
    /// A request is in the slot (the run loop's one load per exit).
    pending: AtomicBool,
    slot: Mutex<Option<Request>>,
    wake: Condvar,
    state: AtomicU8,
    /// A migration runs; `cancel` asks it to stop.
    migrating: AtomicBool,
    cancel: AtomicBool,
    /// The running migration's socket: `cancel` shuts it down, so a
    /// migration blocked on a stalled peer ends at once.
    stream_fd: Mutex<Option<libc::c_int>>,
    /// The vCPU thread's tid (0 until it runs).
    vcpu_tid: AtomicI32,
    conns: AtomicUsize,
}

/// The control socket of a running guest; removes its file when dropped.
#[derive(Debug)]
pub struct Control {
    shared: Arc<Shared>,
    path: PathBuf,
}

extern "C" fn on_kick(_: libc::c_int) {
    crate::signals::interrupt_run();
}

impl Control {
    /// Creates the socket at `path` (mode 0600) and starts serving it.
    pub fn bind(path: &Path) -> Result<Control, ControlError> {
        let err = |err| ControlError::Bind {
            path: path.display().to_string(),
            err,
        };
        remove_stale(path)?;
        // 0600 from the start: bind under a umask that leaves the group
        // and others nothing (no window where another user could connect).
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above, restoring the mask.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(err)?;
        // SAFETY: a zeroed sigaction with a valid handler and empty mask;
        // no SA_RESTART, so the vCPU thread's blocking calls return.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigaction(KICK, &sa, std::ptr::null_mut());
        }
        let shared = Arc::new(Shared {
            pending: AtomicBool::new(false),
            slot: Mutex::new(None),
            wake: Condvar::new(),
            state: AtomicU8::new(State::Running as u8),
            migrating: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
            stream_fd: Mutex::new(None),
            vcpu_tid: AtomicI32::new(0),
            conns: AtomicUsize::new(0),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("skiff-control".into())
            .spawn(move || accept_loop(listener, s))
            .map_err(err)?;
        Ok(Control {
            shared,
            path: path.to_path_buf(),
        })
    }

    /// Whether a command waits for the vCPU thread.
    #[inline(always)]
    pub fn requested(&self) -> bool {
        self.shared.pending.load(Ordering::Relaxed)
    }

    /// The caller is the vCPU thread: kicks go to it.
    pub fn on_vcpu_thread(&self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.shared.vcpu_tid.store(tid, Ordering::SeqCst);
    }

    /// The waiting command, if any; with `wait`, blocks up to 100 ms for
    /// one (a paused guest: a signal must still end skiff promptly).
    pub fn take(&self, wait: bool) -> Option<Request> {
        let mut slot = self.shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        if wait && slot.is_none() {
            slot = self
                .shared
                .wake
                .wait_timeout(slot, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let req = slot.take();
        self.shared.pending.store(false, Ordering::SeqCst);
        req
    }

    pub fn set_state(&self, s: State) {
        self.shared.state.store(s as u8, Ordering::SeqCst);
    }

    /// Marks a migration as running (or over); clears an old cancel.
    pub fn set_migrating(&self, on: bool) {
        self.shared.cancel.store(false, Ordering::SeqCst);
        self.shared.migrating.store(on, Ordering::SeqCst);
    }

    /// Makes the vCPU thread leave `KVM_RUN` (and a guest's POLL sleep).
    pub fn kick(&self) {
        kick(&self.shared);
    }

    /// Names (or, with `None`, forgets: before it is closed) the socket
    /// of the running migration, which `cancel` shuts down.
    pub fn set_stream(&self, fd: Option<libc::c_int>) {
        *self
            .shared
            .stream_fd
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = fd;
    }

    /// The flag `cancel` sets while a migration runs.
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.shared.cancel
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A connection to a control socket (`skiff ctl`).
#[derive(Debug)]
pub struct Client {
    conn: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ControlError> {
        UnixStream::connect(path)
            .map(|conn| Client { conn })
            .map_err(|err| ControlError::Connect {
                path: path.display().to_string(),
                err,
            })
    }

    /// Sends one command line and returns the reply line (no newline);
    /// waits as long as the command takes (a migrate: seconds).
    pub fn send(&mut self, line: &str) -> Result<String, ControlError> {
        self.conn
            .write_all(format!("{}\n", line.trim()).as_bytes())
            .map_err(ControlError::Io)?;
        let mut reply = Vec::new();
        BufReader::new(&self.conn)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut reply)
            .map_err(ControlError::Io)?;
        if reply.pop() != Some(b'\n') {
            return Err(ControlError::NoReply);
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }
}

/// A socket file left by a skiff that died: nobody accepts on it, so it
/// can go. Anything else at `path` is refused.
fn remove_stale(path: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let refused = || ControlError::Exists(path.display().to_string());
    if !meta.file_type().is_socket() {
        return Err(refused());
    }
    match UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|err| ControlError::Bind {
                path: path.display().to_string(),
                err,
            }),
        _ => Err(refused()),
    }
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        if !peer_allowed(&conn) {
            let _ = (&conn).write_all(b"error: permission denied (another user)\n");
            continue;
        }
        if shared.conns.fetch_add(1, Ordering::SeqCst) >= MAX_CONNS {
            shared.conns.fetch_sub(1, Ordering::SeqCst);
            let _ = (&conn).write_all(b"error: too many control connections\n");
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("skiff-control-conn".into())
            .spawn(move || {
                serve_conn(conn, &s);
                s.conns.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.conns.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The peer runs as our uid, or as root.
fn peer_allowed(conn: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a ucred of at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc::getuid() };
    r == 0 && (cred.uid == me || cred.uid == 0)
}

fn serve_conn(conn: UnixStream, shared: &Shared) {
    let Ok(out) = conn.try_clone() else { return };
    let mut out = out;
    let mut input = BufReader::new(conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            let _ = out.write_all(b"error: command line too long or unterminated\n");
            return;
        }
        let (reply, written) = match std::str::from_utf8(&line) {
            Ok(text) => answer(text.trim(), shared),
            Err(_) => ("error: the command is not UTF-8".into(), None),
        };
        let ok = out.write_all(format!("{reply}\n").as_bytes()).is_ok();
        if let Some(w) = written {
            let _ = w.send(());
        }
        if !ok {
            return;
        }
    }
}

/// One command's reply line, and whom to tell once it is written.
fn answer(text: &str, shared: &Shared) -> (String, Option<mpsc::Sender<()>>) {
    let cmd: Command = match text.parse() {
        Ok(c) => c,
        Err(e) => return (format!("error: {e}"), None),
    };
    let migrating = shared.migrating.load(Ordering::SeqCst);
    let line = match cmd {
        Command::Status => match shared.state.load(Ordering::SeqCst) {
            s if s == State::Paused as u8 => "ok paused".into(),
            _ => "ok running".into(),
        },
        Command::Cancel if migrating => {
            shared.cancel.store(true, Ordering::SeqCst);
            let fd = shared.stream_fd.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(fd) = *fd {
                // SAFETY: the migration's open socket: it is forgotten
                // under this lock before it is closed.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            "ok cancelling".into()
        }
        Command::Cancel => "error: no migration is running".into(),
        _ if migrating => "error: busy: a migration is running (cancel stops it)".into(),
        cmd => return submit(cmd, shared),
    };
    (line, None)
}

fn kick(shared: &Shared) {
    let tid = shared.vcpu_tid.load(Ordering::SeqCst);
    if tid != 0 {
        // SAFETY: tgkill to a thread of our own process; the handler only
        // sets immediate_exit.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, KICK) };
    }
}

/// Hands `cmd` to the vCPU thread and waits for its reply.
fn submit(cmd: Command, shared: &Shared) -> (String, Option<mpsc::Sender<()>>) {
    let (tx, rx) = mpsc::channel();
    {
        let mut slot = shared.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return ("error: busy: another command is being served".into(), None);
        }
        *slot = Some(Request { cmd, reply: tx });
        shared.pending.store(true, Ordering::SeqCst);
    }
    shared.wake.notify_all();
    kick(shared);
    match rx.recv() {
        Ok((line, written)) => (line, Some(written)),
        Err(_) => ("error: the guest is gone".into(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_malformed_ones_are_refused() {
        assert_eq!("status".parse(), Ok(Command::Status));
        assert_eq!(" pause ".trim().parse(), Ok(Command::Pause));
        assert_eq!(
            "snapshot /tmp/a.snap".parse(),
            Ok(Command::Snapshot("/tmp/a.snap".into()))
        );
        assert!(matches!(
            "migrate unix:///tmp/m.sock".parse::<Command>(),
            Ok(Command::Migrate(_))
        ));
        for bad in [
            "",
            "pause now",
            "snapshot",
            "snapshot a b",
            "migrate",
            "migrate ftp://x",
            "migrate tcp://localhost:7000",
            "frobnicate",
        ] {
            assert!(bad.parse::<Command>().is_err(), "{bad:?}");
        }
    }
}
