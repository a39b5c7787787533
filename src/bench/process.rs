//! One timed run of a program, a fresh process: spawned with the phase
//! marks' pipe (`SKIFF_BENCH_FD`) and its stderr kept in memory, waited
//! for so that a stop signal ends it, and checked against the expected
//! exit status (its last stderr line says why when it is not).

use super::harness::BenchError;
use crate::marks;
use std::ffi::OsString;
use std::io::{Read, Seek};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One process run, times in nanoseconds from just before spawn.
#[derive(Debug, Clone, Default)]
pub(super) struct Sample {
    /// Cumulative phase times (skiff only), as in `marks::NAMES`.
    pub phases: Option<[u64; marks::COUNT]>,
    pub exits: u64,
    pub total: u64,
    pub max_rss_kib: u64,
}

pub(super) fn run_once(
    program: &PathBuf,
    args: &[OsString],
    want_marks: bool,
    expect: i32,
    stdin: Option<&PathBuf>,
) -> Result<Sample, BenchError> {
    let name = program.display().to_string();
    if let Some(sig) = crate::signals::pending() {
        return Err(BenchError::Signal(sig));
    }
    let mut fds = [-1; 2];
    if want_marks {
        // SAFETY: `fds` is a valid array of two ints for pipe2.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(BenchError::Pipe(std::io::Error::last_os_error()));
        }
    }
    let input = match stdin {
        Some(p) => Stdio::from(open_stdin(p)?),
        None => Stdio::null(),
    };
    // The run's stderr, kept in memory: its last line says why it failed.
    let mut errfile = memfd().map_err(BenchError::Pipe)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(input)
        .stdout(Stdio::null())
        .stderr(errfile.try_clone().map_err(BenchError::Pipe)?);
    if want_marks {
        let w = fds[1];
        cmd.env("SKIFF_BENCH_FD", w.to_string());
        // SAFETY: only async-signal-safe fcntl between fork and exec: keep
        // the write end open across exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::fcntl(w, libc::F_SETFD, 0);
                Ok(())
            })
        };
    }
    let t0 = marks::now_ns();
    let child = cmd
        .spawn()
        .map_err(|e| BenchError::Spawn(name.clone(), e))?;
    let waited = wait(child.id() as libc::pid_t, &name);
    let total = marks::now_ns() - t0;
    if want_marks {
        // SAFETY: closing our copy of the write end, which we own.
        unsafe { libc::close(fds[1]) };
    }
    // SAFETY: the read end is ours, and closed once, by the OwnedFd.
    let marks_fd = want_marks.then(|| unsafe { OwnedFd::from_raw_fd(fds[0]) });
    let (status, ru) = waited?;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    if code != expect {
        return Err(BenchError::Status {
            program: name,
            status: code,
            expected: expect,
            last_line: last_line(&mut errfile),
        });
    }
    let mut sample = Sample {
        total,
        max_rss_kib: ru.ru_maxrss as u64,
        ..Default::default()
    };
    if let Some(fd) = marks_fd {
        let mut buf = [0u8; 512];
        // SAFETY: reading the line the child wrote into a buffer we own.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let line = String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned();
        let (m, exits) = marks::parse(&line).ok_or(BenchError::NoMarks(name))?;
        sample.phases = Some(m.map(|t| t.saturating_sub(t0)));
        sample.exits = exits;
    }
    Ok(sample)
}

/// Opens the request body file each run reads.
/// Non-blocking (no effect on a regular file), so a FIFO is refused at
/// once: every run must read the same body from its start.
pub(super) fn open_stdin(p: &Path) -> Result<std::fs::File, BenchError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e| BenchError::Stdin(p.display().to_string(), e);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(p)
        .map_err(err)?;
    match f.metadata().map_err(err)?.is_file() {
        true => Ok(f),
        false => Err(err(std::io::Error::other(
            "not a regular file (every run reads it from its start)",
        ))),
    }
}

/// An anonymous in-memory file.
fn memfd() -> std::io::Result<std::fs::File> {
    // SAFETY: a constant NUL-terminated name; checked below.
    let fd = unsafe { libc::memfd_create(c"skiff-bench-stderr".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The last non-empty line of what a run wrote on stderr (its last 4 KiB).
fn last_line(f: &mut std::fs::File) -> Option<String> {
    let len = f.seek(std::io::SeekFrom::End(0)).ok()?;
    f.seek(std::io::SeekFrom::Start(len.saturating_sub(4096)))
        .ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

/// Waits for child `pid`, returning its wait status and rusage. A stop
/// signal (SIGINT, SIGTERM, ...) ends the wait: the child is killed and
/// reaped, and the harness stops with [`BenchError::Signal`]. The wait is
/// a poll on a pidfd with a short timeout, so a signal caught by another
/// thread (`--throughput`) is seen too, while an exit is seen at once.
fn wait(pid: libc::pid_t, name: &str) -> Result<(i32, libc::rusage), BenchError> {
    // SAFETY: pidfd_open on our own, not yet reaped, child.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // SAFETY: a fresh fd that nothing else owns (if pidfd_open worked).
    let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw) });
    loop {
        if let Some(sig) = crate::signals::pending() {
            // SAFETY: killing and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(BenchError::Signal(sig));
        }
        if let Some(fd) = &pidfd {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
                continue; // a timeout or EINTR: look at the signals again
            }
        }
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waiting for our own child, with valid out-pointers.
        match unsafe { libc::wait4(pid, &mut status, 0, &mut ru) } {
            r if r == pid => return Ok((status, ru)),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(BenchError::Wait(name.to_string(), e));
                }
            }
        }
    }
}

/// Sleeps for `d`, ending early (with the signal) on a stop signal.
pub(super) fn pause(d: Duration) -> Result<(), BenchError> {
    let end = Instant::now() + d;
    loop {
        if let Some(sig) = crate::signals::pending() {
            return Err(BenchError::Signal(sig));
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        let step = left.min(Duration::from_millis(50));
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: step.as_nanos() as libc::c_long,
        };
        // SAFETY: a valid timespec; EINTR just ends this slice early.
        unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
    }
}
