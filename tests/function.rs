//! Function I/O on real KVM: the request body on stdin, the response on
//! stdout byte for byte, `Http_*` metadata, the guest's body limit, a
//! closed stdout, and skiff driven exactly as the OpenFaaS watchdog does.

mod common;
use common::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

fn run_function(name: &str, args: &[&str], body: &[u8]) -> std::process::Output {
    let mut cmd = Command::new(skiff());
    cmd.arg("run").arg(guest(name)).args(args);
    run_with(cmd, body, Duration::from_secs(60))
}

#[test]
fn echo_returns_bodies_byte_for_byte() {
    // A buffer at a time (REQ_READ_FILL) and piece by piece (`stream`).
    for mode in [&[][..], &["stream"]] {
        for (i, n) in [0usize, 1, 1 << 20, 16 << 20].into_iter().enumerate() {
            let body = random_bytes(n, 0x5eed + i as u64);
            let o = run_function("echo", mode, &body);
            assert_eq!(o.status.code(), Some(0), "{mode:?} {n} B: {}", stderr(&o));
            assert_eq!(o.stdout.len(), n, "{mode:?} {n} B: length");
            assert!(o.stdout == body, "{mode:?} {n} B: bytes differ");
            assert_eq!(stderr(&o), "", "{mode:?} {n} B");
        }
    }
}

#[test]
fn meta_sees_only_http_variables() {
    let mut cmd = Command::new(skiff());
    cmd.arg("run").arg(guest("meta"));
    cmd.env_clear()
        .env("Http_Method", "PUT")
        .env("Http_Path", "/a \"b\"\\c")
        .env("Method", "not-this-one")
        .env("Path", "nor-this");
    let o = run_with(cmd, b"12345", Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "{\"method\":\"PUT\",\"path\":\"/a \\\"b\\\"\\\\c\",\"query\":null,\"body_bytes\":5}\n"
    );
}

#[test]
fn a_body_over_the_guests_limit_is_refused() {
    let o = run_function("echo", &["10"], &[7u8; 10]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(o.stdout, [7u8; 10]);
    assert_refused(
        &run_function("echo", &["10"], &[7u8; 11]),
        "the request body exceeds the function's limit of 10 bytes",
    );
    // meta reads its whole body into 64 KiB.
    let o = run_function("meta", &[], &vec![1u8; 64 << 10]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_refused(
        &run_function("meta", &[], &vec![1u8; (64 << 10) + 1]),
        "exceeds the function's limit of 65536 bytes",
    );
}

#[test]
fn a_closed_stdout_is_one_line_and_exit_1() {
    let mut child = spawn_echo();
    // The reader goes away first, as when a watchdog timeout kills it.
    drop(child.stdout.take());
    let mut sin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = sin.write_all(&vec![0u8; 4 << 20]);
    });
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    let _ = writer.join();
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(
        err.contains("cannot write the guest's output to stdout") && err.contains("Broken pipe"),
        "{err}"
    );
}

/// As the classic watchdog does it: `fprocess` split on single spaces, no
/// shell; the watchdog's environment plus `Http_*`; the body on stdin, then
/// closed; stdout is the response; the exit status decides 200 or 500.
fn watchdog(fprocess: &str, method: &str, path: &str, body: &[u8]) -> (i32, Vec<u8>) {
    let argv: Vec<&str> = fprocess.split(' ').collect();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .env("Http_Method", method)
        .env("Http_Path", path)
        .env("Http_Query", "a=1")
        .env("Http_Content_Type", "application/octet-stream")
        .env("Http_Content_Length", body.len().to_string());
    let o = run_with(cmd, body, Duration::from_secs(60));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    (o.status.code().unwrap_or(-1), o.stdout)
}

#[test]
fn driven_as_the_watchdog_drives_it() {
    let skiff = skiff();
    let echo = format!(
        "{} run --mem=64 {}",
        skiff.display(),
        guest("echo").display()
    );
    let body = random_bytes(300_000, 42);
    let (code, out) = watchdog(&echo, "POST", "/function/echo", &body);
    assert_eq!(code, 0);
    assert!(out == body, "echo response differs");

    let meta = format!(
        "{} run --mem=16 {}",
        skiff.display(),
        guest("meta").display()
    );
    let (code, out) = watchdog(&meta, "GET", "/function/meta", b"");
    assert_eq!(code, 0);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "{\"method\":\"GET\",\"path\":\"/function/meta\",\"query\":\"a=1\",\"body_bytes\":0}\n"
    );

    // A failing function: non-zero status, which the watchdog answers 500.
    let limited = format!("{echo} 4");
    let (code, out) = watchdog(&limited, "POST", "/function/echo", b"too long");
    assert_eq!(code, 1);
    assert!(out.is_empty());
}

#[test]
fn plain_solo5_guests_are_unaffected() {
    // hello never uses the extension; its output is unchanged.
    let o = run_function("hello", &[], b"ignored body");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(stdout(&o), "Hello, world!\n");
}

/// `skiff run echo.hvt` with all three stdio piped, not yet fed.
fn spawn_echo() -> ChildGuard {
    ChildGuard::new(
        Command::new(skiff())
            .arg("run")
            .arg(guest("echo"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// SIGTERM to `child`; it must exit 143 with skiff's one line, promptly.
fn assert_sigterm_ends(mut child: ChildGuard, what: &str) {
    wait_catching(child.id(), libc::SIGTERM);
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > scaled(Duration::from_secs(10)) {
            let _ = child.kill();
            panic!("skiff hung after SIGTERM: {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{what}: {err}");
    assert_eq!(err.trim(), "skiff: exiting on signal 15", "{what}");
}

#[test]
fn a_streaming_function_answers_before_the_body_ends() {
    let mut child = ChildGuard::new(
        Command::new(skiff())
            .args(["run", guest("echo").to_str().unwrap(), "stream"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut sin = child.stdin.take().unwrap();
    let mut sout = child.stdout.take().unwrap();
    for piece in [&b"first "[..], b"second"] {
        sin.write_all(piece).unwrap();
        let mut got = vec![0u8; piece.len()];
        sout.read_exact(&mut got).unwrap();
        assert_eq!(got, piece);
    }
    drop(sin);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn sigterm_ends_a_function_blocked_on_its_request() {
    // stdin stays open with part of a body: the guest waits in REQ_READ.
    let mut child = spawn_echo();
    let mut sin = child.stdin.take().unwrap();
    sin.write_all(b"partial").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_sigterm_ends(child, "blocked on stdin");
    drop(sin);
}

#[test]
fn sigterm_ends_a_function_blocked_on_a_stuck_reader() {
    // Nobody reads stdout: skiff blocks in write(2) once the pipe is full.
    let mut child = spawn_echo();
    let mut sin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = sin.write_all(&vec![1u8; 8 << 20]);
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = child.stdout.take();
    assert_sigterm_ends(child, "blocked on stdout");
    drop(out);
    let _ = writer.join();
}

#[test]
fn closed_stdin_is_an_empty_request_and_closed_stdout_an_error() {
    use std::os::unix::process::CommandExt;
    let closed = |fd: i32, body: &[u8]| {
        let mut cmd = Command::new(skiff());
        cmd.arg("run").arg(guest("echo"));
        // SAFETY: close(2) in the child before exec, nothing else.
        unsafe {
            cmd.pre_exec(move || {
                libc::close(fd);
                Ok(())
            });
        }
        run_with(cmd, body, Duration::from_secs(30))
    };
    // skiff's own files (the image, /dev/kvm) must not take fd 0 or 1.
    let o = closed(0, b"");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert_refused(
        &closed(1, b"hi"),
        "cannot write the guest's output to stdout: Bad file descriptor",
    );
}
