//! Every subcommand ends promptly on a stop signal wherever it waits
//! (issue 20): exit status 128+N, one line saying so, its children ended
//! and its files removed, within 1 s of the signal. Ctrl-C at a terminal
//! is tested through a pty, as a user would press it.

mod common;
use common::*;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed and reaped on drop (a failing test leaves
/// nothing running).
struct Guard(Option<Child>);

impl Guard {
    fn pid(&self) -> i32 {
        self.0.as_ref().unwrap().id() as i32
    }

    /// Waits for the exit (at most 5 s); returns its status code and how
    /// long after `since` it came.
    fn wait_from(&mut self, since: Instant) -> (Option<i32>, Duration) {
        let child = self.0.as_mut().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                let code = s.code().or(s.signal().map(|n| 1000 + n));
                return (code, since.elapsed());
            }
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "still running after 5 s"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.0.as_mut().unwrap().stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[&str]) -> Guard {
    Guard(Some(
        Command::new(skiff())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

fn kill(pid: i32, sig: i32) -> Instant {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, sig) };
    Instant::now()
}

/// A marker no other test's guest carries, passed as a guest argument so
/// that leftover processes can be found in /proc.
fn marker(tag: &str) -> String {
    format!("skiff-signals-{tag}-{}", std::process::id())
}

/// Processes whose command line contains `marker`.
fn running_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(marker) && !stat.contains(") Z ") {
            found.push(name);
        }
    }
    found
}

/// Asserts that no process carrying `marker` is left (after a grace
/// period for the kernel to finish the reaping it was asked for).
fn assert_none_left(marker: &str) {
    let t = Instant::now();
    while !running_with(marker).is_empty() && t.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(running_with(marker), Vec::<String>::new(), "left running");
}

fn assert_stopped(code: Option<i32>, took: Duration, sig: i32, err: &str) {
    assert_eq!(code, Some(128 + sig), "stderr: {err}");
    assert!(took < Duration::from_secs(1), "took {took:?} to stop");
    assert!(
        err.ends_with(&format!("skiff: exiting on signal {sig}\n")),
        "stderr: {err:?}"
    );
}

#[test]
fn bench_on_a_guest_that_never_halts_stops_at_once() {
    let spin = guest("spin");
    for (sig, extra) in [
        (libc::SIGINT, &["--runs", "2"][..]),
        (libc::SIGTERM, &["--runs", "5"][..]),
        (libc::SIGTERM, &["--throughput", "30"][..]),
    ] {
        let m = marker(&format!("bench{sig}{}", extra[0]));
        let mut args = vec!["bench"];
        args.extend_from_slice(extra);
        args.extend(["--", spin.to_str().unwrap(), &m]);
        let mut g = spawn(&args);
        std::thread::sleep(Duration::from_millis(400));
        assert!(!running_with(&m).is_empty(), "no run started");
        let t = kill(g.pid(), sig);
        let (code, took) = g.wait_from(t);
        let mut out = String::new();
        g.0.as_mut()
            .unwrap()
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_stopped(code, took, sig, &g.stderr());
        assert_eq!(out, "", "a report was printed");
        assert_none_left(&m);
    }
}

#[test]
fn run_ends_on_sighup_and_sigquit_too() {
    for sig in [libc::SIGHUP, libc::SIGQUIT] {
        let mut g = spawn(&["run", guest("spin").to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(300));
        let t = kill(g.pid(), sig);
        let (code, took) = g.wait_from(t);
        assert_stopped(code, took, sig, &g.stderr());
    }
}

/// A FIFO with no writer as the image or the snapshot: refused at once
/// (it used to block in open(), deaf to SIGINT and SIGTERM).
#[test]
fn a_fifo_is_refused_not_waited_on() {
    let dir = TempDir::new("signals-fifo");
    let fifo = dir.path().join("k.hvt");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let f = fifo.to_str().unwrap();
    let echo = guest("echo");
    for (args, needle) in [
        (vec!["run", f], "k.hvt: not a regular file"),
        (
            vec!["run", "--restore", f, echo.to_str().unwrap()],
            "--restore",
        ),
        (
            vec!["snapshot", "--out", "/dev/null", f],
            "not a regular file",
        ),
    ] {
        let t = Instant::now();
        let o = skiff_run(&args);
        assert_refused(&o, needle);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "{args:?}: {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn snapshot_interrupted_leaves_no_file() {
    let dir = TempDir::new("signals-snap");
    let out = dir.path().join("spin.snap");
    let mut g = spawn(&[
        "snapshot",
        "--out",
        out.to_str().unwrap(),
        guest("spin").to_str().unwrap(),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let t = kill(g.pid(), libc::SIGINT);
    let (code, took) = g.wait_from(t);
    assert_stopped(code, took, libc::SIGINT, &g.stderr());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn pool_stops_with_its_workers_and_removes_its_socket() {
    let dir = TempDir::new("signals-pool");
    let snap = make_snapshot(dir.path(), "echo", "--mem=64", &[], &[]);
    for sig in [libc::SIGINT, libc::SIGHUP] {
        let mut pool = common::pool::Pool::start(dir.path(), "echo", &snap, 2, &["--mem=64"]);
        let workers = children(pool.pid());
        assert_eq!(workers.len(), 2);
        let t = kill(pool.pid(), sig);
        let status = pool.child.wait().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(status.code(), Some(128 + sig));
        assert!(!pool.socket.exists(), "the socket is left behind");
        for w in workers {
            let t = Instant::now();
            while Path::new(&format!("/proc/{w}/cmdline")).exists()
                && !std::fs::read_to_string(format!("/proc/{w}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
            {
                assert!(
                    t.elapsed() < Duration::from_secs(1),
                    "worker {w} still running"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// The pids of `pid`'s children.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A process on its own pty, as at a terminal: its own session with the
/// pty as controlling terminal, stdio on it.
struct OnPty {
    child: Guard,
    master: OwnedFd,
    seen: std::cell::RefCell<String>,
}

fn on_pty(args: &[&str]) -> OnPty {
    let (mut m, mut s) = (-1, -1);
    // SAFETY: valid out-pointers; null name, termios and winsize.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty returned two fresh fds that we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    let fd = |f: &OwnedFd| Stdio::from(f.try_clone().unwrap());
    let mut cmd = Command::new(skiff());
    cmd.args(args)
        .stdin(fd(&slave))
        .stdout(fd(&slave))
        .stderr(fd(&slave));
    // SAFETY: only async-signal-safe calls between fork and exec: a new
    // session, then stdin (the pty) as its controlling terminal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let child = Guard(Some(cmd.spawn().unwrap()));
    drop(slave);
    OnPty {
        child,
        master,
        seen: Default::default(),
    }
}

impl OnPty {
    /// Presses Ctrl-C: the terminal sends SIGINT to the foreground group.
    fn ctrl_c(&self) -> Instant {
        let n = unsafe {
            // SAFETY: one byte from our stack to our own pty master.
            libc::write(self.master.as_raw_fd(), b"\x03".as_ptr().cast(), 1)
        };
        assert_eq!(n, 1);
        Instant::now()
    }

    /// What the process wrote to the terminal so far: reads until none
    /// has come for 200 ms (a pty hands output over asynchronously, so it
    /// may arrive after the writer has exited).
    fn output(&self) -> String {
        let mut seen = self.seen.borrow_mut();
        let mut buf = [0u8; 4096];
        loop {
            let mut p = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, 200) } <= 0 {
                break;
            }
            // SAFETY: reading into our own buffer from our own fd.
            let n = unsafe { libc::read(p.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break; // EIO: the last writer has gone
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n as usize]).replace("\r\n", "\n"));
        }
        seen.clone()
    }
}

#[test]
fn hook_at_a_terminal_ends_on_ctrl_c() {
    let mut p = on_pty(&["hook"]);
    std::thread::sleep(Duration::from_millis(300));
    // Some input, no end: the hook is waiting in read().
    let _ = std::fs::File::from(p.master.try_clone().unwrap()).write_all(b"{\"ociVersion\"");
    let t = p.ctrl_c();
    let (code, took) = p.child.wait_from(t);
    assert_eq!(code, Some(130), "{}", p.output());
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(
        p.output().contains("skiff: exiting on signal 2"),
        "{}",
        p.output()
    );
}

#[test]
fn bench_at_a_terminal_ends_on_ctrl_c() {
    let m = marker("bench-pty");
    let spin = guest("spin");
    let mut p = on_pty(&["bench", "--runs", "5", "--", spin.to_str().unwrap(), &m]);
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !running_with(&m).is_empty(),
        "no run started: {}",
        p.output()
    );
    let t = p.ctrl_c();
    let (code, took) = p.child.wait_from(t);
    let out = p.output();
    assert_eq!(code, Some(130), "{out}");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(out.contains("skiff: exiting on signal 2"), "{out}");
    assert!(!out.contains("phase"), "a report was printed: {out}");
    assert_none_left(&m);
}

#[test]
fn run_at_a_terminal_ends_on_ctrl_c() {
    let mut p = on_pty(&["run", guest("spin").to_str().unwrap()]);
    std::thread::sleep(Duration::from_millis(300));
    let t = p.ctrl_c();
    let (code, took) = p.child.wait_from(t);
    assert_eq!(code, Some(130), "{}", p.output());
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn call_ends_on_sigterm_while_its_guest_waits_for_the_request() {
    let dir = TempDir::new("signals-call");
    let snap = make_snapshot(dir.path(), "echo", "--mem=64", &[], &[]);
    let pool = common::pool::Pool::start(dir.path(), "echo", &snap, 1, &["--mem=64"]);
    // stdin stays open and empty: the guest waits in its REQ_READ.
    let mut g = Guard(Some(
        Command::new(skiff())
            .arg("call")
            .arg(&pool.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    std::thread::sleep(Duration::from_millis(300));
    let t = kill(g.pid(), libc::SIGTERM);
    let (code, took) = g.wait_from(t);
    assert_eq!(code, Some(128 + libc::SIGTERM));
    assert!(took < Duration::from_secs(1), "took {took:?} to stop");
    // The caller's line and (on the caller's stderr, which it shares) the
    // worker's, once it has seen the hang-up: in either order.
    let err = g.stderr();
    assert!(
        err.lines().any(|l| l == "skiff: exiting on signal 15"),
        "stderr: {err:?}"
    );
    assert!(
        err.contains("skiff: pool: the caller hung up; its guest was stopped"),
        "stderr: {err:?}"
    );
}
