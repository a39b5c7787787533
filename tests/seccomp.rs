//! seccomp on the running tender: the filter is in place while a guest
//! runs, a syscall outside the policy kills the process with SIGSYS, and
//! under an outer filter like urunc's skiff keeps it and says so.

mod common;
use common::urunc::urunc_filter;
use common::*;
use skiff::seccomp::{self, Installed, Policy};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `Seccomp:` field of /proc/PID/status.
fn seccomp_mode(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Seccomp:"))?;
    Some(line["Seccomp:".len()..].trim().to_string())
}

#[test]
fn a_running_skiff_is_under_its_filter() {
    let mut child = ChildGuard::new(
        Command::new(skiff())
            .args(["run", guest("spin").to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.id();
    // The filter goes on after the build, just before the guest starts.
    let t = Instant::now();
    let mut mode = seccomp_mode(pid);
    while mode.as_deref() != Some("2") && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
        mode = seccomp_mode(pid);
    }
    assert!(child.try_wait().unwrap().is_none(), "spin exited by itself");
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        mode.as_deref(),
        Some("2"),
        "Seccomp: field of a running skiff"
    );
    // The signal path (handler, rt_sigreturn, message, exit) is allowed.
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert_eq!(stderr(&o), "skiff: exiting on signal 15\n");
}

/// Runs `f` in a forked child and returns its raw wait status. The child
/// only makes plain syscalls (no allocation: the parent has threads).
fn in_child(f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child runs `f` (async-signal-safe work only) and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let code = f();
        // SAFETY: ends the child without running the parent's atexit state.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid out-pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

fn killed_by_sigsys(status: i32) -> bool {
    libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS
}

#[test]
fn a_syscall_outside_the_run_policy_kills_with_sigsys() {
    // Control: listed syscalls (a zero-byte write, a clock read) and
    // exit_group pass.
    let status = in_child(|| {
        if seccomp::install(Policy::Run).is_err() {
            return 100;
        }
        // SAFETY: a zero-byte write and a clock read, both in the policy.
        unsafe {
            libc::write(2, [].as_ptr(), 0);
            let mut ts: libc::timespec = std::mem::zeroed();
            libc::syscall(libc::SYS_clock_gettime, libc::CLOCK_MONOTONIC, &mut ts);
        }
        7
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
        "{status:#x}"
    );

    // getpid is not in the policy, nor is openat.
    for nr in [libc::SYS_getpid, libc::SYS_openat] {
        let status = in_child(|| {
            if seccomp::install(Policy::Run).is_err() {
                return 100;
            }
            // SAFETY: the syscall never runs: the filter kills the process.
            unsafe { libc::syscall(nr, libc::AT_FDCWD, c"/etc/hostname".as_ptr(), 0) };
            0
        });
        assert!(killed_by_sigsys(status), "syscall {nr}: status {status:#x}");
    }

    // mmap is allowed only without PROT_EXEC: no new code at run time.
    for (prot, allowed) in [
        (libc::PROT_READ | libc::PROT_WRITE, true),
        (libc::PROT_READ | libc::PROT_EXEC, false),
    ] {
        let status = in_child(|| {
            if seccomp::install(Policy::Run).is_err() {
                return 100;
            }
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            // SAFETY: a fresh anonymous mapping, never used.
            let p = unsafe { libc::mmap(std::ptr::null_mut(), 4096, prot, flags, -1, 0) };
            if p == libc::MAP_FAILED {
                101
            } else {
                7
            }
        });
        if allowed {
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
                "{status:#x}"
            );
        } else {
            assert!(
                killed_by_sigsys(status),
                "mmap PROT_EXEC: status {status:#x}"
            );
        }
    }

    // An ioctl other than the listed KVM requests is refused too.
    let status = in_child(|| {
        if seccomp::install(Policy::Run).is_err() {
            return 100;
        }
        // SAFETY: never runs (TIOCGWINSZ is not in the policy).
        unsafe { libc::syscall(libc::SYS_ioctl, 0, libc::TIOCGWINSZ, 0) };
        0
    });
    assert!(killed_by_sigsys(status), "ioctl: status {status:#x}");
}

#[test]
fn the_accelerator_policy_allows_ordinary_calls_and_kills_privileged_ones() {
    let status = in_child(|| {
        if seccomp::install(Policy::Accel).is_err() {
            return 100;
        }
        // SAFETY: getpid and sched_yield are ordinary (allowed) syscalls.
        let (pid, yielded) = unsafe {
            (
                libc::syscall(libc::SYS_getpid),
                libc::syscall(libc::SYS_sched_yield),
            )
        };
        if pid > 0 && yielded == 0 {
            7
        } else {
            101
        }
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
        "{status:#x}"
    );
    let status = in_child(|| {
        if seccomp::install(Policy::Accel).is_err() {
            return 100;
        }
        // SAFETY: never runs: ptrace is on the denylist.
        unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0, 0) };
        0
    });
    assert!(killed_by_sigsys(status), "ptrace: status {status:#x}");
}

#[test]
fn the_agent_policy_kills_exec_and_keeps_the_accelerator_denylist() {
    // `skiff agent` (src/agent/): accel.json's rules plus no execve.
    for (name, nr) in [("execve", libc::SYS_execve), ("ptrace", libc::SYS_ptrace)] {
        let status = in_child(|| {
            if seccomp::install(Policy::Agent).is_err() {
                return 100;
            }
            // SAFETY: never runs: both are on the agent's denylist (null
            // arguments: execve would fail with EFAULT if it did run).
            unsafe { libc::syscall(nr, 0, 0, 0, 0) };
            0
        });
        assert!(killed_by_sigsys(status), "{name}: status {status:#x}");
    }
}

#[test]
fn under_an_outer_filter_like_urunc_skiff_keeps_it_and_says_so() {
    // hello: console and command line; time: WALLTIME and POLL's sleep.
    for (g, arg, out) in [
        ("hello", "x", "Hello, world!\ncmdline: x\n"),
        ("time", "", "time: ok\n"),
    ] {
        let filter = urunc_filter();
        let mut cmd = Command::new(skiff());
        cmd.args(["run", "--mem=16", guest(g).to_str().unwrap(), arg]);
        // SAFETY: the pre_exec closure only makes the prctl and seccomp
        // syscalls (no allocation), on a program compiled before the fork.
        unsafe {
            cmd.pre_exec(move || {
                seccompiler::apply_filter(&filter).map_err(|e| std::io::Error::other(e.to_string()))
            });
        }
        let o = run_with(cmd, b"", Duration::from_secs(30));
        assert_eq!(
            o.status.code(),
            Some(0),
            "{g}: {:?} {}",
            o.status,
            stderr(&o)
        );
        assert!(stdout(&o).ends_with(out), "{g}: {}", stdout(&o));
        assert_eq!(
            stderr(&o),
            "skiff: already under a seccomp filter (Seccomp: 2); keeping it, not installing skiff's own\n"
        );
    }
}

#[test]
fn install_reports_what_it_did() {
    // In a child: the test process itself must stay unfiltered.
    let status = in_child(|| {
        let first = seccomp::install(Policy::Accel);
        let second = seccomp::install(Policy::Run);
        match (first, second) {
            (Ok(Installed::Filter(Policy::Accel)), Ok(Installed::OuterFilter)) => 7,
            _ => 1,
        }
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
        "{status:#x}"
    );
}

/// `skiff run --control` (Policy::Live): the control path's calls pass,
/// and it stays an allowlist: exec, a netlink socket and a write to the
/// vCPU's registers (a pool's rewind, not a controlled run's) kill.
#[test]
fn the_live_policy_allows_the_control_paths_calls_and_kills_the_rest() {
    let status = in_child(|| {
        if seccomp::install(Policy::Live).is_err() {
            return 100;
        }
        // SAFETY: socket(2) and getuid(2), both in live.json; the fd is
        // left to _exit.
        let (fd, uid) = unsafe {
            (
                libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0),
                libc::syscall(libc::SYS_getuid),
            )
        };
        if fd >= 0 && uid >= 0 {
            7
        } else {
            101
        }
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 7,
        "{status:#x}"
    );
    let kvm_set_regs = 0x4090_ae82; // _IOW(0xAE, 0x82, struct kvm_regs)
    for (name, nr, a0, a1) in [
        ("execve", libc::SYS_execve, 0, 0),
        (
            "socket(AF_NETLINK)",
            libc::SYS_socket,
            libc::AF_NETLINK as i64,
            libc::SOCK_RAW as i64,
        ),
        ("ioctl(KVM_SET_REGS)", libc::SYS_ioctl, -1, kvm_set_regs),
    ] {
        let status = in_child(|| {
            if seccomp::install(Policy::Live).is_err() {
                return 100;
            }
            // SAFETY: never runs: none is in live.json or run.json (exec
            // with null arguments and an ioctl on fd -1 would fail anyway).
            unsafe { libc::syscall(nr, a0, a1, 0, 0) };
            0
        });
        assert!(killed_by_sigsys(status), "{name}: status {status:#x}");
    }
}

/// Every policy file is compiled and used: named in build.rs's POLICIES
/// (whose constant `bpf::NAME` the `Policy` enum must then return). A
/// JSON file that build.rs does not list would never be enforced, and
/// nothing else would notice (docs/architecture.md, "A subcommand").
#[test]
fn every_policy_file_is_compiled_and_has_a_policy() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let build = std::fs::read_to_string(root.join("build.rs")).unwrap();
    let lib = std::fs::read_to_string(root.join("src/seccomp.rs")).unwrap();
    let mut files = 0;
    for e in std::fs::read_dir(root.join("seccomp")).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        files += 1;
        let row = format!(
            "(\"seccomp/{name}\", \"{stem}\", \"{}\"",
            stem.to_uppercase()
        );
        let squashed: String = build.split_whitespace().collect::<Vec<_>>().join(" ");
        let squashed = squashed.replace("( ", "(");
        assert!(
            squashed.contains(&row),
            "seccomp/{name} has no row {row}...) in build.rs's POLICIES"
        );
        let constant = format!("bpf::{}", stem.to_uppercase());
        assert!(
            lib.contains(&constant),
            "no Policy returns {constant} (src/seccomp.rs)"
        );
    }
    assert!(files >= 6, "only {files} policy files");
}
