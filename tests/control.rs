//! `skiff run --control PATH` and `skiff ctl` on real KVM: the socket is
//! 0600 and refuses other users, pause stops a spinning guest (no
//! hypercall: only the kick gets it out of KVM_RUN) and resume goes on,
//! malformed commands get one line and change nothing, a snapshot taken
//! anywhere in a guest's life restores, and the socket file goes away
//! with skiff. Migration's own tests are tests/migrate.rs.

mod common;

use common::{guest, scaled, skiff, ChildGuard, TempDir};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `skiff run --control` of `name`, once its socket exists. A stalled
/// destination must meet a `cancel`, not the silence bound, however
/// slowly (under TCG) the test gets to send it.
fn controlled(dir: &Path, name: &str, args: &[&str]) -> (ChildGuard, PathBuf) {
    let silence = scaled(Duration::from_secs(60)).as_secs().min(3600);
    controlled_for(dir, name, silence, args)
}

/// As [`controlled`], giving up on a destination silent for `silence` s.
fn controlled_for(dir: &Path, name: &str, silence: u64, args: &[&str]) -> (ChildGuard, PathBuf) {
    let sock = dir.join("ctl.sock");
    let child = Command::new(skiff())
        .args(["run", "--mem=8", "--control"])
        .arg(&sock)
        .arg(format!("--migrate-timeout={silence}"))
        .arg(guest(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let child = ChildGuard::new(child);
    let t = Instant::now();
    while !sock.exists() {
        assert!(t.elapsed() < scaled(Duration::from_secs(10)), "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, sock)
}

fn ctl(sock: &Path, words: &[&str]) -> Output {
    Command::new(skiff())
        .arg("ctl")
        .arg(sock)
        .args(words)
        .output()
        .unwrap()
}

fn reply(o: &Output) -> String {
    let s = match o.status.code() {
        Some(0) => &o.stdout,
        _ => &o.stderr,
    };
    String::from_utf8_lossy(s).trim_end().to_string()
}

/// The guest's user CPU time so far (utime of /proc/PID/stat), in ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime), counted from the state (field 3).
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Waits (up to 10 s, scaled) until skiff `pid` is under its seccomp
/// filter (its guest is about to run: start-up is over, which under the
/// lane's emulation takes CPU of its own), then returns its CPU ticks.
fn confined_ticks(pid: u32) -> u64 {
    let t = Instant::now();
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if status
            .lines()
            .any(|l| l.starts_with("Seccomp:") && l.ends_with('2'))
        {
            return cpu_ticks(pid);
        }
        assert!(
            t.elapsed() < scaled(Duration::from_secs(10)),
            "never confined"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to 10 s, scaled) until `pid` has used `ticks` more CPU
/// ticks than `from`: a spinning guest does, unless it is not running.
fn runs_on(pid: u32, from: u64, ticks: u64) -> bool {
    let t = Instant::now();
    while t.elapsed() < scaled(Duration::from_secs(10)) {
        if cpu_ticks(pid) >= from + ticks {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn pause_stops_a_spinning_guest_and_resume_goes_on() {
    let tmp = TempDir::new("ctl-pause");
    let (mut child, sock) = controlled(tmp.path(), "spin", &[]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    assert_eq!(reply(&ctl(&sock, &["status"])), "ok running");
    let o = ctl(&sock, &["pause"]);
    assert_eq!(
        (o.status.code(), reply(&o).as_str()),
        (Some(0), "ok paused")
    );
    assert_eq!(reply(&ctl(&sock, &["status"])), "ok paused");
    // Paused: the spinning vCPU burns no more CPU.
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_millis(1000));
    let paused = cpu_ticks(child.id()) - before;
    assert!(paused <= 3, "{paused} ticks of CPU in 1 s while paused");

    let o = ctl(&sock, &["resume"]);
    assert_eq!(reply(&o), "ok running");
    let before = cpu_ticks(child.id());
    assert!(runs_on(child.id(), before, 10), "no CPU used after resume");
    let o = ctl(&sock, &["resume"]);
    assert_eq!(
        (o.status.code(), reply(&o).as_str()),
        (Some(1), "error: not paused")
    );

    // SIGTERM ends it as always, and the socket goes with it.
    // SAFETY: kill(2) of our own child, which is not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!sock.exists(), "the socket outlived skiff");
}

#[test]
fn malformed_commands_get_one_line_and_change_nothing() {
    let tmp = TempDir::new("ctl-bad");
    let (_child, sock) = controlled(tmp.path(), "spin", &[]);
    for words in [
        &["frobnicate"][..],
        &["pause", "now"],
        &["snapshot"],
        &["migrate", "ftp://x"],
        // No listener, no vsock peer: the confined run answers and runs on.
        &["migrate", "tcp://127.0.0.1:1"],
        &["migrate", "vsock://2:1"],
        &["cancel"],
    ] {
        let o = ctl(&sock, words);
        assert_eq!(o.status.code(), Some(1), "{words:?}");
        let err = reply(&o);
        assert!(
            err.starts_with("error: ") && !err.contains('\n'),
            "{words:?}: {err:?}"
        );
    }
    // `skiff ctl` resolves a name itself, before its own filter (the run
    // resolves none): where `localhost` resolves (not in the lane's VM,
    // which has no /etc/hosts) the run is asked for its IP, else ctl
    // says so; one line and exit 1 either way.
    let o = ctl(&sock, &["migrate", "tcp://localhost:1"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = reply(&o);
    assert!(!err.contains('\n'), "{err:?}");
    use std::net::ToSocketAddrs;
    match "localhost:1".to_socket_addrs() {
        Ok(_) => assert!(
            err.starts_with("error: cannot connect to tcp://"),
            "{err:?}"
        ),
        Err(_) => assert!(
            err.starts_with("skiff: cannot resolve 'localhost:1'"),
            "{err:?}"
        ),
    }
    // Raw bytes: a host name (the run resolves none: resolv.conf and NSS
    // are outside its allowlist), a line too long, and not UTF-8.
    use std::io::{BufRead, Write};
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.write_all(b"migrate tcp://localhost:1\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&c).read_line(&mut line).unwrap();
    assert!(
        line.contains("give the destination's IP address"),
        "{line:?}"
    );
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.write_all(&[b'x'; 5000]).unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&c).read_line(&mut line).unwrap();
    assert!(line.starts_with("error: "), "{line:?}");
    let mut c = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    c.write_all(b"\xff\xfe\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&c).read_line(&mut line).unwrap();
    assert!(line.starts_with("error: "), "{line:?}");
    assert_eq!(reply(&ctl(&sock, &["status"])), "ok running");
}

#[test]
fn another_user_is_refused() {
    let tmp = TempDir::new("ctl-uid");
    let (_child, sock) = controlled(tmp.path(), "spin", &[]);
    // Let the other user reach the socket's directory: the socket's own
    // mode and SO_PEERCRED must refuse it.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new(skiff())
        .arg("ctl")
        .arg(&sock)
        .arg("pause")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{o:?}"
    );
    assert_eq!(reply(&ctl(&sock, &["status"])), "ok running");
}

#[test]
fn a_snapshot_taken_mid_run_restores_and_runs_on() {
    let tmp = TempDir::new("ctl-snap");
    let (mut child, sock) = controlled(tmp.path(), "spin", &[]);
    let snap = tmp.path().join("now.snap");
    let o = ctl(&sock, &["snapshot", snap.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", reply(&o));
    assert!(reply(&o).starts_with("ok saved "), "{}", reply(&o));
    assert_eq!(reply(&ctl(&sock, &["status"])), "ok running");
    let _ = child.kill();

    // The restored guest spins on (no REQ_READ to answer): it is still
    // running after a second, and a signal ends it as usual.
    let restored = Command::new(skiff())
        .args(["run", "--mem=8", "--restore"])
        .arg(&snap)
        .arg(guest("spin"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut restored = ChildGuard::new(restored);
    let from = confined_ticks(restored.id());
    assert!(
        runs_on(restored.id(), from, 10),
        "the restored guest does not run"
    );
    assert!(
        restored.try_wait().unwrap().is_none(),
        "the restored guest stopped"
    );
    // SAFETY: kill(2) of our own child, which is not reaped yet.
    unsafe { libc::kill(restored.id() as i32, libc::SIGTERM) };
    let out = restored.into_inner().wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{out:?}");
}

/// `skiff run --incoming unix://DIR/in.sock`, once it listens.
fn incoming(dir: &Path) -> (ChildGuard, String) {
    let path = dir.join("in.sock");
    let addr = format!("unix://{}", path.display());
    let dst = Command::new(skiff())
        .args(["run", "--incoming", &addr])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dst = ChildGuard::new(dst);
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < scaled(Duration::from_secs(10)), "no listener");
        std::thread::sleep(Duration::from_millis(10));
    }
    (dst, addr)
}

/// The smallest migration, on whatever KVM this is (kvm_pvm here, the
/// standard-KVM lane there): a spinning guest (no hypercall at all) moves
/// over a unix socket with at least one pre-copy round, so KVM's dirty
/// log works on this KVM; the source exits 0 with its report line and the
/// destination runs the guest on. tests/migrate.rs has the real ones.
#[test]
fn a_spinning_guest_migrates_with_the_dirty_log() {
    let tmp = TempDir::new("ctl-mig");
    let (src, sock) = controlled(tmp.path(), "spin", &[]);
    let (mut dst, addr) = incoming(tmp.path());
    let o = ctl(&sock, &["migrate", &addr]);
    let r = reply(&o);
    assert_eq!(o.status.code(), Some(0), "{r}");
    let rounds: u32 = r
        .split(", ")
        .find_map(|f| f.strip_suffix(" rounds"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{r}"));
    assert!(rounds >= 1, "no pre-copy round (no dirty log?): {r}");
    let out = src.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!("skiff: migrated to {addr}: downtime "))
            && err.lines().count() == 1,
        "{err:?}"
    );
    let from = confined_ticks(dst.id());
    assert!(runs_on(dst.id(), from, 10), "the moved guest does not run");
    assert!(dst.try_wait().unwrap().is_none(), "the destination stopped");
}

/// `skiff ctl` waits for a migrate under its own seccomp filter
/// (seccomp/ctl.json), and a `cancel` from another connection ends a
/// migration blocked on a stalled destination at once: the source runs
/// on and the destination, once it runs again, exits 1 with one line.
#[test]
fn ctl_is_confined_and_cancel_ends_a_stalled_migration() {
    let tmp = TempDir::new("ctl-cancel");
    let (_src, sock) = controlled(tmp.path(), "spin", &[]);
    let (dst, addr) = incoming(tmp.path());
    // SAFETY: kill(2) of our own child, which is not reaped yet.
    unsafe { libc::kill(dst.id() as i32, libc::SIGSTOP) };
    let migrate = Command::new(skiff())
        .arg("ctl")
        .arg(&sock)
        .args(["migrate", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut migrate = ChildGuard::new(migrate);
    // It waits for the reply, confined.
    confined_ticks(migrate.id());
    // Until the migration runs, cancel is refused (and changes nothing).
    let t = Instant::now();
    loop {
        let r = reply(&ctl(&sock, &["cancel"]));
        if r == "ok cancelling" {
            break;
        }
        assert_eq!(r, "error: no migration is running");
        if migrate.try_wait().unwrap().is_some() {
            let out = migrate.wait_with_output().unwrap();
            panic!("the migration ended before a cancel: {out:?}");
        }
        assert!(
            t.elapsed() < scaled(Duration::from_secs(10)),
            "never migrating"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = migrate.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "error: cancelled\n");
    assert_eq!(reply(&ctl(&sock, &["status"])), "ok running");
    // SAFETY: as above.
    unsafe { libc::kill(dst.id() as i32, libc::SIGCONT) };
    let out = dst.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `--migrate-timeout`: a destination that stops answering (here, stopped
/// before it read the handshake) is given up after that many seconds,
/// the reply says so, and the guest runs on.
#[test]
fn a_silent_destination_is_given_up_after_the_migrate_timeout() {
    let tmp = TempDir::new("ctl-silent");
    let (src, sock) = controlled_for(tmp.path(), "spin", 1, &[]);
    let (dst, addr) = incoming(tmp.path());
    // SAFETY: kill(2) of our own child, which is not reaped yet.
    unsafe { libc::kill(dst.id() as i32, libc::SIGSTOP) };
    let t = Instant::now();
    let o = ctl(&sock, &["migrate", &addr]);
    let waited = t.elapsed();
    let r = reply(&o);
    assert_eq!(o.status.code(), Some(1), "{r}");
    assert!(r.contains("silent for 1 s"), "{r}");
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert_eq!(reply(&ctl(&sock, &["status"])), "ok running");
    let from = confined_ticks(src.id());
    assert!(runs_on(src.id(), from, 10), "the guest does not run on");
    // SAFETY: as above.
    unsafe { libc::kill(dst.id() as i32, libc::SIGCONT) };
    let out = dst.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// PTRACE_SECCOMP_GET_FILTER (linux/ptrace.h; libc has no constant).
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;

/// The thread of `pid` named `comm` (/proc/PID/task/*/comm).
fn thread_named(pid: u32, comm: &str) -> Option<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == comm))
        .and_then(|t| t.file_name().to_str()?.parse().ok())
}

/// The BPF program of thread `tid`'s newest seccomp filter, as the kernel
/// holds it: read with PTRACE_SECCOMP_GET_FILTER while the thread is held
/// in a ptrace stop (root; CONFIG_CHECKPOINT_RESTORE), then let go.
fn seccomp_program(tid: i32) -> Result<Vec<(u16, u8, u8, u32)>, String> {
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: seizing a thread of our own child; it is detached below on
    // every path after this one succeeds.
    if unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, null, null) } != 0 {
        return Err(err("PTRACE_SEIZE"));
    }
    let read = || {
        // SAFETY: stops the seized thread (a ptrace stop, not a signal).
        if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null) } != 0 {
            return Err(err("PTRACE_INTERRUPT"));
        }
        let mut status = 0;
        // SAFETY: waits for the stop of the thread we trace.
        if unsafe { libc::waitpid(tid, &mut status, libc::__WALL) } != tid {
            return Err(err("waitpid"));
        }
        // SAFETY: a null buffer asks only for the length of filter 0.
        let n = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, null, null) };
        if n <= 0 {
            return Err(err("PTRACE_SECCOMP_GET_FILTER"));
        }
        let zero = libc::sock_filter {
            code: 0,
            jt: 0,
            jf: 0,
            k: 0,
        };
        let mut prog = vec![zero; n as usize];
        // SAFETY: the buffer holds the n instructions the kernel copies.
        let got = unsafe { libc::ptrace(PTRACE_SECCOMP_GET_FILTER, tid, null, prog.as_mut_ptr()) };
        if got != n {
            return Err(err("PTRACE_SECCOMP_GET_FILTER"));
        }
        Ok(prog.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
    };
    let prog = read();
    // SAFETY: lets the thread go on as it was.
    unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, null, null) };
    prog
}

/// A controlled run without accelerator plugins is confined by run's
/// allowlist plus seccomp/live.json (Policy::Live), not by accel's
/// denylist: the filter the kernel holds for its control thread is that
/// program, instruction for instruction, and the guest runs on after.
#[test]
fn a_controlled_run_is_under_the_live_allowlist() {
    use skiff::seccomp::Policy;
    let tmp = TempDir::new("ctl-policy");
    let (child, sock) = controlled(tmp.path(), "spin", &[]);
    let pid = child.id();
    let from = confined_ticks(pid);
    let tid = thread_named(pid, "skiff-control").expect("no skiff-control thread");
    let prog = seccomp_program(tid).unwrap();
    let want = |p: Policy| -> Vec<(u16, u8, u8, u32)> {
        p.program()
            .iter()
            .map(|i| (i.code, i.jt, i.jf, i.k))
            .collect()
    };
    assert!(
        prog == want(Policy::Live),
        "not Policy::Live's program ({} instructions)",
        prog.len()
    );
    assert_ne!(want(Policy::Live), want(Policy::Accel));
    assert!(runs_on(pid, from, 10), "the guest does not run on");
    assert_eq!(reply(&ctl(&sock, &["status"])), "ok running");
}
