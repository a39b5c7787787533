//! skiff as urunc's `solo5-hvt`: exec'd under urunc's seccomp allowlist
//! (default action SIGSYS trap, no_new_privs), hello and echo still work.

mod common;
use common::urunc::urunc_filter;
use common::*;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::time::Duration;

/// Makes `cmd` exec as urunc execs: no_new_privs, then the filter, then
/// execve (which the allowlist permits).
fn seccomp_like_urunc(cmd: &mut Command) {
    let prog = urunc_filter();
    // SAFETY: the closure runs in the forked child before exec; it only
    // makes two system calls on memory prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            seccompiler::apply_filter(&prog).map_err(std::io::Error::other)
        });
    }
}

/// `solo5-hvt ARGS` under urunc's filter.
fn under_urunc(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let dir = TempDir::new("urunc");
    let mut cmd = Command::new(solo5_hvt(dir.path()));
    cmd.args(args);
    seccomp_like_urunc(&mut cmd);
    run_with(cmd, stdin, Duration::from_secs(30))
}

fn assert_no_sigsys(o: &std::process::Output) {
    assert_ne!(
        o.status.signal(),
        Some(libc::SIGSYS),
        "killed by SIGSYS: a system call outside urunc's allowlist"
    );
}

#[test]
fn hello_runs_under_urunc_seccomp() {
    let hello = guest("hello");
    let o = under_urunc(&["--mem=64", "--", hello.to_str().unwrap(), "a", "b"], b"");
    assert_no_sigsys(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Hello, world!\ncmdline: a b\n");
}

#[test]
fn clock_and_sleep_work_under_urunc_seccomp() {
    // WALLTIME (clock_gettime through the vDSO) and POLL (nanosleep).
    let time = guest("time");
    let o = under_urunc(&["--mem=64", "--", time.to_str().unwrap()], b"");
    assert_no_sigsys(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("time: ok"), "{}", stdout(&o));
}

#[test]
fn echo_runs_under_urunc_seccomp() {
    let echo = guest("echo");
    let body: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i * 7 + (i >> 9)) as u8)
        .collect();
    let o = under_urunc(&["--mem=64", "--", echo.to_str().unwrap()], &body);
    assert_no_sigsys(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout == body, "echo response differs");
}

#[test]
fn every_bundled_guest_behaves_the_same_under_urunc_seccomp() {
    // Traps, aborts, exit codes, triple faults, KVM's emulation failures:
    // every path out of the vCPU loop, with and without the filter.
    for name in [
        "quiet",
        "globals",
        "tls",
        "exitcode",
        "abort",
        "exception",
        "zeropage",
        "triplefault",
        "sse",
        "meta",
    ] {
        let g = guest(name);
        let args = ["--mem=64", "--", g.to_str().unwrap(), "7"];
        let filtered = under_urunc(&args, b"body");
        assert_no_sigsys(&filtered);
        let dir = TempDir::new("urunc-ref");
        let mut cmd = Command::new(solo5_hvt(dir.path()));
        cmd.args(args);
        let plain = run_with(cmd, b"body", Duration::from_secs(30));
        assert_eq!(filtered.status.code(), plain.status.code(), "{name}");
        assert_eq!(filtered.stdout, plain.stdout, "{name}");
    }
}

#[test]
fn errors_are_reported_under_urunc_seccomp() {
    // A refused image and a guest-set body limit: the one-line error path
    // (formatting, stderr) stays inside the allowlist too.
    let dir = TempDir::new("urunc-bad");
    let bad = dir.path().join("bad.hvt");
    std::fs::write(&bad, b"not an elf").unwrap();
    let o = under_urunc(&["--", bad.to_str().unwrap()], b"");
    assert_no_sigsys(&o);
    assert_refused(&o, "not an ELF file");
    let echo = guest("echo");
    let o = under_urunc(&["--", echo.to_str().unwrap(), "3"], b"four");
    assert_no_sigsys(&o);
    // Once the guest runs, skiff has also noted the outer filter it keeps.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "solo5-hvt: already under a seccomp filter (Seccomp: 2); keeping it, not installing skiff's own\n\
         solo5-hvt: the request body exceeds the function's limit of 3 bytes\n"
    );
}

#[test]
fn the_filter_does_kill_a_disallowed_call() {
    // The harness itself is checked: a program making a call outside the
    // list (coreutils' `true` is fine, `sh -c` with a pipe is not: it uses
    // clone or pipe2) dies of SIGSYS.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "echo x | cat"]);
    seccomp_like_urunc(&mut cmd);
    let o = run_with(cmd, b"", Duration::from_secs(30));
    assert_eq!(o.status.signal(), Some(libc::SIGSYS), "{o:?}");
}

/// The guests urunc's tests use, each run in urunc's monitor filesystem
/// (no /proc) with urunc's argv, with and without its filter, against the
/// same run outside: same status, same stdout, no SIGSYS.
#[test]
fn in_urunc_chroot_without_proc_guests_behave_as_outside_it() {
    let disk: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let root = common::urunc::Chroot::new(&["hello", "time", "blk", "exception"], &disk);
    for (g, devices) in [
        ("hello", &[][..]),
        ("time", &[][..]),
        ("exception", &[][..]),
        ("blk", &["--block:storage=/disk.img"][..]),
    ] {
        let kernel = format!("/unikernel/{g}.hvt");
        // urunc's argv: memory, devices, kernel, then mirage's two empty
        // network arguments before the command line; no `--`.
        let mut args = vec!["--mem=256"];
        args.extend_from_slice(devices);
        args.extend_from_slice(&[&kernel, "", "", "Hello_Solo5"]);
        let outside_disk = TempDir::new("urunc-outside");
        let host_disk = outside_disk.path().join("disk.img");
        std::fs::write(&host_disk, &disk).unwrap();
        let host_kernel = guest(g);
        let block = format!("--block:storage={}", host_disk.display());
        let mut host_args = vec!["--mem=256"];
        if !devices.is_empty() {
            host_args.push(&block);
        }
        host_args.extend_from_slice(&[host_kernel.to_str().unwrap(), "", "", "Hello_Solo5"]);
        let dir = TempDir::new("urunc-plain");
        let mut cmd = Command::new(solo5_hvt(dir.path()));
        cmd.args(&host_args);
        let outside = run_with(cmd, b"", Duration::from_secs(30));
        assert!(outside.status.code().is_some(), "{g}: {:?}", outside.status);
        for filter in [false, true] {
            root.set_disk(&disk);
            let o = root.run(&args, filter, b"");
            assert_no_sigsys(&o);
            assert_eq!(
                o.status.code(),
                outside.status.code(),
                "{g} filter={filter}: {}",
                stderr(&o)
            );
            assert_eq!(stdout(&o), stdout(&outside), "{g} filter={filter}");
            if g == "blk" {
                assert_eq!(
                    root.disk(),
                    std::fs::read(&host_disk).unwrap(),
                    "{g} filter={filter}"
                );
            }
            let note = "solo5-hvt: already under a seccomp filter (Seccomp: 2); keeping it, not installing skiff's own\n";
            if filter {
                assert!(stderr(&o).starts_with(note), "{g}: {}", stderr(&o));
            } else {
                assert!(!stderr(&o).contains("seccomp"), "{g}: {}", stderr(&o));
            }
        }
    }
}
