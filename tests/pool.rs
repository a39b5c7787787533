//! The warm pool on real KVM: `skiff pool` keeps guests restored from a
//! snapshot ready, `skiff call` serves a request with one. The answers are
//! a cold run's, concurrent calls each get their own guest, a caller that
//! goes away stops its guest, workers are confined before any request,
//! and bad input is refused with one line.

mod common;
use common::pool::{children, Pool};
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MEM: &str = "--mem=64";

/// Waits up to 10 s for `cond`.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    eventually_or(what, &cond, &String::new)
}

/// [`eventually`], with `state()` in the message when it never comes.
fn eventually_or(what: &str, cond: &dyn Fn() -> bool, state: &dyn Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < scaled(Duration::from_secs(10)),
            "never: {what}\n{}",
            state()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pooled_echo_and_meta_answer_as_cold_runs() {
    let dir = TempDir::new("pool-answers");
    let echo = Pool::start(
        dir.path(),
        "echo",
        &make_snapshot(dir.path(), "echo", MEM, &[], &[]),
        2,
        &[MEM],
    );
    for i in 0..100u64 {
        let body = request_body(i);
        let n = body.len();
        let o = echo.call(&body, &[]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(o.stdout == body, "body {i} ({n} bytes)");
    }
    let meta = Pool::start(
        dir.path(),
        "meta",
        &make_snapshot(dir.path(), "meta", MEM, &[], &[]),
        2,
        &[MEM],
    );
    for i in 0..30u64 {
        let path = format!("/fn/{i}");
        let query = format!("n={}", i * i);
        let env = [
            ("Http_Method", ["GET", "POST", "PUT"][i as usize % 3]),
            ("Http_Path", path.as_str()),
            ("Http_Query", query.as_str()),
        ];
        let env = &env[..if i % 4 == 0 { 1 } else { 3 }];
        let body = random_bytes((i * 613) as usize, i + 7);
        let warm = meta.call(&body, env);
        let mut cmd = Command::new(skiff());
        cmd.args(["run", MEM])
            .arg(guest("meta"))
            .envs(env.iter().copied());
        let cold = run_with(cmd, &body, Duration::from_secs(60));
        assert_eq!(warm.status.code(), Some(0), "{}", stderr(&warm));
        assert_eq!(stdout(&warm), stdout(&cold), "request {i}");
    }
}

#[test]
fn concurrent_calls_each_get_their_own_guest() {
    let dir = TempDir::new("pool-concurrent");
    let snap = make_snapshot(dir.path(), "echo", MEM, &[], &[]);
    let pool = std::sync::Arc::new(Pool::start(dir.path(), "echo", &snap, 2, &[MEM]));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    let body = random_bytes(1000 + (t * 5 + i) as usize * 977, t * 100 + i);
                    let o = pool.call(&body, &[]);
                    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
                    assert!(o.stdout == body, "caller {t} request {i}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn workers_are_confined_and_a_caller_that_goes_away_stops_its_guest() {
    for fresh in [false, true] {
        hangup(fresh);
    }
}

/// With `fresh` (`--fresh-process`) the pool starts a replacement as soon
/// as its only worker is busy; a rewinding pool keeps `--workers` guests.
fn hangup(fresh: bool) {
    let dir = TempDir::new("pool-hangup");
    let snap = make_snapshot(dir.path(), "echo", MEM, &[], &[]);
    let flags: &[&str] = if fresh {
        &[MEM, "--fresh-process"]
    } else {
        &[MEM]
    };
    let pool = Pool::start(dir.path(), "echo", &snap, 1, flags);
    let idle = children(pool.pid());
    assert_eq!(idle.len(), 1, "{idle:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", idle[0])).unwrap();
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "an idle worker is not under its filter:\n{status}"
    );

    // A caller whose stdin never ends: its guest waits in REQ_READ.
    let mut caller = ChildGuard::new(
        Command::new(skiff())
            .arg("call")
            .arg(&pool.socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    if fresh {
        // The busy worker and, as none is left waiting, its replacement.
        eventually("a replacement worker", || children(pool.pid()).len() == 2);
    } else {
        // The worker takes the call: the caller's stdin (a pipe) becomes
        // its fd 0, and its guest waits for the body. No worker is added.
        eventually("the worker takes the call", || {
            std::fs::read_link(format!("/proc/{}/fd/0", idle[0]))
                .is_ok_and(|l| l.to_string_lossy().starts_with("pipe:"))
        });
        assert_eq!(children(pool.pid()), idle, "a rewinding pool grew");
    }
    // A rewinding worker would rightly stay if EOF (Child::wait closes
    // stdin) let its guest finish before the hang-up reached it: there,
    // stdin stays open until the worker is gone.
    let stdin = if fresh { None } else { caller.stdin.take() };
    caller.kill().unwrap();
    caller.wait().unwrap();
    let what = format!("the busy worker's exit (fresh process: {fresh})");
    eventually_or(&what, &|| !children(pool.pid()).contains(&idle[0]), &|| {
        children(pool.pid())
            .iter()
            .map(|p| {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                let fd0 = std::fs::read_link(format!("/proc/{p}/fd/0"));
                format!("{p}: {stat} fd 0 {fd0:?}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    drop(stdin);
    assert_eq!(children(pool.pid()).len(), 1);
    let o = pool.call(b"still serving", &[]);
    assert_eq!(o.stdout, b"still serving", "{}", stderr(&o));
}

#[test]
fn a_worker_rewinds_its_guest_and_the_next_call_finds_nothing_of_the_last() {
    // `residue` answers with what it finds in memory (a static, a page
    // past its image), SSE register xmm7, debug register DR0 and two MSRs,
    // then leaves the request's number in all of them.
    let dir = TempDir::new("pool-rewind");
    let snap = make_snapshot(dir.path(), "residue", MEM, &[], &[]);
    let mut cold = Command::new(skiff());
    cold.args(["run", MEM]).arg(guest("residue"));
    let cold = run_with(cold, b"7", Duration::from_secs(60));
    note_avx_retries(&cold);
    assert_eq!(cold.status.code(), Some(0), "{}", stderr(&cold));
    let pristine = stdout(&cold);
    assert!(
        pristine.starts_with("static=0 memory=0 xmm7="),
        "{pristine}"
    );
    for fresh in [false, true] {
        let flags: &[&str] = if fresh {
            &[MEM, "--fresh-process"]
        } else {
            &[MEM]
        };
        let pool = Pool::start(dir.path(), "residue", &snap, 1, flags);
        let mut served_by = Vec::new();
        for i in 1..=6u64 {
            served_by.push(children(pool.pid()));
            let o = pool.call((i * 1000 + 5).to_string().as_bytes(), &[]);
            note_avx_retries(&o);
            assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
            assert_eq!(stdout(&o), pristine, "call {i} (fresh process: {fresh})");
        }
        // A rewound guest's HLT ends it as a fresh one's does (kvm_pvm
        // arms a one-time wake at each registration: see vcpu/pvm.rs).
        let o = pool.call(b"hlt", &[]);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("halted the CPU (HLT)"),
            "{}",
            stderr(&o)
        );
        assert!(o.stdout.is_empty(), "{}", stdout(&o));
        served_by.dedup();
        match fresh {
            // One worker served every call: its guest was rewound each time.
            false => assert_eq!(served_by.len(), 1, "{served_by:?}"),
            // One process per call: the workers change.
            true => assert!(served_by.len() > 1, "{served_by:?}"),
        }
    }
}

#[test]
fn sigterm_ends_the_pool_and_its_workers() {
    let dir = TempDir::new("pool-term");
    let snap = make_snapshot(dir.path(), "echo", MEM, &[], &[]);
    let mut pool = Pool::start(dir.path(), "echo", &snap, 2, &[MEM]);
    let workers = children(pool.pid());
    assert_eq!(workers.len(), 2);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pool.pid(), libc::SIGTERM) };
    let status = pool.child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!pool.socket.exists(), "the socket is left behind");
    for w in workers {
        eventually("a worker's exit", || {
            !Path::new(&format!("/proc/{w}")).exists()
                || std::fs::read_to_string(format!("/proc/{w}/stat"))
                    .is_ok_and(|s| s.contains(") Z "))
        });
    }
    let o = run_with(
        {
            let mut c = Command::new(skiff());
            c.arg("call").arg(&pool.socket);
            c
        },
        b"",
        Duration::from_secs(10),
    );
    assert_refused(&o, "cannot reach the pool");
}

#[test]
fn bad_pool_input_is_refused_with_one_line() {
    let dir = TempDir::new("pool-bad");
    let snap = make_snapshot(dir.path(), "echo", MEM, &[], &[]);
    let sock = dir.path().join("s.sock");
    let pool = |args: &[&str]| {
        let mut c = Command::new(skiff());
        c.arg("pool").args(args);
        run_with(c, b"", Duration::from_secs(30))
    };
    let s = sock.to_str().unwrap();
    let snap_s = snap.to_str().unwrap();
    let echo = guest("echo");
    let echo = echo.to_str().unwrap();
    assert_refused(&pool(&["--socket", s, MEM, echo]), "pool needs --restore");
    assert_refused(
        &pool(&[
            "--socket",
            s,
            "--workers",
            "0",
            MEM,
            "--restore",
            snap_s,
            echo,
        ]),
        "--workers must be 1 to 64",
    );
    assert_refused(
        &pool(&[
            "--socket",
            s,
            "--net",
            "n0=tap0",
            MEM,
            "--restore",
            snap_s,
            echo,
        ]),
        "use --workers 1 with --net",
    );
    // Another image, a corrupt snapshot: the restore's own message.
    assert_refused(
        &pool(&[
            "--socket",
            s,
            MEM,
            "--restore",
            snap_s,
            &guest("meta").to_string_lossy(),
        ]),
        "another image",
    );
    let mut bad = std::fs::read(&snap).unwrap();
    bad[0] = b'X';
    let bad_path = dir.path().join("bad.snap");
    std::fs::write(&bad_path, bad).unwrap();
    let o = pool(&[
        "--socket",
        s,
        MEM,
        "--restore",
        bad_path.to_str().unwrap(),
        echo,
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(!sock.exists());

    // A socket already served by a pool.
    let live = Pool::start(dir.path(), "echo", &snap, 1, &[MEM]);
    assert_refused(
        &pool(&[
            "--socket",
            live.socket.to_str().unwrap(),
            MEM,
            "--restore",
            snap_s,
            echo,
        ]),
        "a pool is already serving there",
    );
    // A caller with nothing to call.
    let mut c = Command::new(skiff());
    c.arg("call").arg(dir.path().join("nothing.sock"));
    assert_refused(
        &run_with(c, b"", Duration::from_secs(10)),
        "cannot reach the pool",
    );
}

/// (derived, fresh) wall times from the `clock` guest's answer.
fn clock_answer(out: &str) -> (i128, i128) {
    let field = |k: &str| -> i128 {
        let v = out.split(&format!("{k}=")).nth(1).expect(out);
        v.split_whitespace().next().unwrap().parse().unwrap()
    };
    (field("derived"), field("fresh"))
}

/// A pool started seconds after its snapshot serves, rewinding worker and
/// one process per request alike, with the guest's clock right: within
/// 1 ms (the lane: SKIFF_TEST_CLOCK_SLACK_MS) where skiff sets the guest's
/// TSC; on kvm_pvm, which keeps the host's, off by no more than the host's
/// own wall-clock adjustments since the snapshot (allowed: 1 % of its age).
#[test]
fn a_pool_serves_seconds_after_its_snapshot_with_the_right_clock() {
    let dir = TempDir::new("pool-later");
    let snap = make_snapshot(dir.path(), "clock", MEM, &[], &[]);
    let made = Instant::now();
    let slack_ms: i128 = std::env::var("SKIFF_TEST_CLOCK_SLACK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    std::thread::sleep(Duration::from_secs(2));
    for flags in [&[MEM][..], &[MEM, "--fresh-process"][..]] {
        let pool = Pool::start(dir.path(), "clock", &snap, 1, flags);
        for i in 0..3 {
            std::thread::sleep(Duration::from_millis(500));
            let o = pool.call(b"x", &[]);
            assert_eq!(
                o.status.code(),
                Some(0),
                "{flags:?} call {i}: {}",
                stderr(&o)
            );
            let (derived, fresh) = clock_answer(&stdout(&o));
            let age_ms = made.elapsed().as_millis() as i128;
            let allowed_ms = match Path::new("/sys/module/kvm_pvm").exists() {
                true => slack_ms + age_ms / 100,
                false => slack_ms,
            };
            println!(
                "{flags:?} call {i}, {age_ms} ms after the snapshot: derived - fresh = {} us",
                (derived - fresh) / 1000
            );
            assert!(
                (derived - fresh).abs() < allowed_ms * 1_000_000,
                "{}",
                stdout(&o)
            );
        }
    }
}
