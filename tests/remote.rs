//! vAccel's remote protocol with real guests on real sockets: `skiff run
//! --accel=remote` against `skiff agent` (tcp and unix) gives what local
//! `--accel=cpu` gives; many guests at once; a killed, stopped or
//! restarted agent. (The wire itself: tests/remote_wire.rs.)

mod common;
mod remote_agent;
use common::*;
use remote_agent::*;
use skiff::vaccel::proto::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn sgemm_over_tcp_and_unix_matches_local() {
    let tmp = TempDir::new("remote-sgemm");
    for agent in [Agent::tcp(&[]), Agent::unix(tmp.path(), &[])] {
        for dims in [
            &[][..],
            &["1", "1", "1"],
            &["17", "65", "3"],
            &["64", "48", "80"],
            // Over unix, large float arrays go through the shared region
            // (all three here; only A in the second).
            &["200", "160", "120"],
            &["300", "8", "300"],
        ] {
            let local = ok(&run(&["--accel=cpu"], "sgemm", dims));
            let o = run(&["--accel=remote", &remote_flag(&agent)], "sgemm", dims);
            assert_eq!(ok(&o), local, "{} {dims:?}", agent.addr);
            assert_eq!(stderr(&o), "");
        }
    }
}

/// Forwards one unix connection at a time to `to` (a tcp agent): a unix
/// socket whose agent does not offer skiff's shared memory, as vAccel's.
fn unix_to_tcp(path: &std::path::Path, to: String) {
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let (Ok(c), Ok(t)) = (c, std::net::TcpStream::connect(&to)) else {
                return;
            };
            let (mut c2, mut t2) = (c.try_clone().unwrap(), t.try_clone().unwrap());
            std::thread::spawn(move || std::io::copy(&mut c2, &mut t2));
            std::thread::spawn(move || {
                let (mut t, mut c) = (t, c);
                let _ = std::io::copy(&mut t, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Both);
            });
        }
    });
}

#[test]
fn a_unix_agent_without_shared_memory_gets_vaccels_protocol() {
    let tmp = TempDir::new("remote-noshm");
    let agent = Agent::tcp(&[]);
    let sock = tmp.path().join("proxy.sock");
    unix_to_tcp(&sock, agent.addr["tcp://".len()..].to_string());
    let flag = format!("--accel-remote=unix://{}", sock.display());
    for dims in [["200", "160", "120"], ["3", "5", "7"]] {
        let local = ok(&run(&["--accel=cpu"], "sgemm", &dims));
        let o = run(&["--accel=remote", &flag], "sgemm", &dims);
        assert_eq!(ok(&o), local, "{dims:?}");
        assert_eq!(stderr(&o), "");
    }
}

/// Whether this kernel can connect vsock to itself (VMADDR_CID_LOCAL,
/// the vsock_loopback transport): a bind to CID 1 says.
fn vsock_loopback(port: u32) -> Result<(), std::io::Error> {
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_vm is plain integers.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = libc::VMADDR_CID_LOCAL;
    a.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: a valid sockaddr_vm of `len` bytes; our own fd, closed once.
    let r = unsafe {
        let r = libc::bind(fd, (&a as *const libc::sockaddr_vm).cast(), len);
        let e = std::io::Error::last_os_error();
        libc::close(fd);
        (r, e)
    };
    match r {
        (0, _) => Ok(()),
        (_, e) => Err(e),
    }
}

/// Run with `--ignored` where the kernel has it: without it, nothing here
/// could run, and a test that returned early would count as a pass.
#[test]
#[ignore = "needs the vsock_loopback transport"]
fn a_call_over_vsock_loopback_matches_local() {
    let port = 20000 + std::process::id() % 40000;
    if let Err(e) = vsock_loopback(port) {
        panic!("no vsock loopback on this kernel (bind to CID 1: {e})");
    }
    let agent = Agent::start(&format!("vsock://1:{port}"), &[]);
    let flag = remote_flag(&agent);
    for dims in [&[][..], &["200", "160", "120"]] {
        let local = ok(&run(&["--accel=cpu"], "sgemm", dims));
        let o = run(&["--accel=remote", &flag], "sgemm", dims);
        assert_eq!(ok(&o), local, "{dims:?}");
        assert_eq!(stderr(&o), "");
    }
}

#[test]
fn minmax_exec_and_every_errno_match_local() {
    let tmp = TempDir::new("remote-bad");
    let (lib, model) = exec_fixture(tmp.path());
    let lib_flag = format!("--accel-lib=testlib={}", lib.display());
    let model_flag = format!("--accel-model=model={}", model.display());
    let local = run(
        &["--mem=128", "--accel=cpu", &lib_flag, &model_flag],
        "accelbad",
        &[],
    );
    let local = ok(&local);
    assert!(local.contains("minmax=0 min=Some(-2) max=Some(7) out=[3, 0, 5, 1]\n"));
    assert!(local.contains("exec_sum=0 value=15\n"));
    let agent = Agent::unix(tmp.path(), &[&lib_flag, &model_flag]);
    // The guest names the library by the agent operator's NAME; the
    // remote client needs no library of its own.
    let o = run(
        &[
            "--mem=128",
            "--accel=remote",
            &remote_flag(&agent),
            &model_flag,
        ],
        "accelbad",
        &[],
    );
    let remote = ok(&o);
    // Everything but the serving plugin's flags is the same, errnos too.
    assert_eq!(
        remote,
        local.replace("noop_after=0 plugin=0x9", "noop_after=0 plugin=0x4000")
    );
    assert_eq!(stderr(&o), "");
    let (st, err) = agent.stop(libc::SIGTERM);
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{err}");
    // The backend failure is the agent operator's to see.
    assert!(
        err.contains("skiff: accel: cpu: EXEC function failed: testlib:always_fails returned 7\n"),
        "{err}"
    );
}

#[test]
fn remote_then_cpu_keeps_vaccels_priority_rule() {
    let agent = Agent::tcp(&[]);
    let o = run(
        &["--accel=remote,cpu", &remote_flag(&agent)],
        "accelsel",
        &["0", "0x1", "0x8", "0x4000"],
    );
    assert_eq!(
        ok(&o),
        "hint=0x0 noop=0x4000 minmax=0x4000\n\
         hint=0x1 noop=0x9 minmax=0x9\n\
         hint=0x8 noop=0x9 minmax=0x9\n\
         hint=0x4000 noop=0x4000 minmax=0x4000\n"
    );
}

#[test]
fn classify_over_tcp_and_unix_matches_local() {
    let dir = model_dir();
    let model = dir.join("efficientnet-lite0.safetensors");
    let flag = format!("--accel-model=imagenet={}", model.display());
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
    let tmp = TempDir::new("remote-classify");
    let agents = [Agent::tcp(&[&flag]), Agent::unix(tmp.path(), &[&flag])];
    for name in golden["confident"].as_array().unwrap().iter().take(3) {
        let name = name.as_str().unwrap();
        let body = std::fs::read(dir.join("images").join(name)).unwrap();
        let classify = |flags: &[&str]| {
            let mut cmd = Command::new(skiff());
            cmd.arg("run").args(flags).arg(guest("classify"));
            ok(&run_with(cmd, &body, Duration::from_secs(120)))
        };
        let local = classify(&["--accel=cpu", &flag]);
        let want = golden["images"][name]["top5"][0][0].as_u64().unwrap();
        assert!(local.starts_with(&format!("{want} ")), "{name}: {local}");
        // The client names the model by its path, or by the agent's NAME
        // (a file only the agent has).
        let by_name = "--accel-model=imagenet=imagenet";
        for (a, model) in agents.iter().zip([flag.as_str(), by_name]) {
            // Top-1 and the top-5 probabilities, to the printed digit: the
            // agent runs the same network on the same bytes.
            let remote = classify(&["--accel=remote", &remote_flag(a), model]);
            assert_eq!(remote, local, "{name} {} {model}", a.addr);
        }
        // vAccel's ImageClassification method: the top-5 text as tags.
        let mut c = agents[0].connect();
        let sid = c.session();
        let (st, _) = c.register_path(sid, ResourceType::MODEL, "imagenet");
        assert_eq!(st.code, 0, "{}", st.message);
        let (st, tags) = c.classify(sid, &body);
        assert_eq!(st.code, 0, "{}", st.message);
        let top5: String = local.lines().skip(1).map(|l| format!("{l}\n")).collect();
        // The whole 1,024-byte buffer, NUL-padded, as vAccel's agent.
        assert_eq!(tags.len(), 1024, "{name}");
        let text = tags.split(|&b| b == 0).next().unwrap();
        assert_eq!(std::str::from_utf8(text).unwrap(), top5, "{name}");
    }
}

#[test]
fn eight_guests_at_once_against_one_agent() {
    let agent = Agent::tcp(&[]);
    let want = ok(&run(&["--accel=cpu"], "sgemm", &["64", "48", "80"]));
    let flag = remote_flag(&agent);
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..8)
            .map(|_| s.spawn(|| run(&["--accel=remote", &flag], "sgemm", &["64", "48", "80"])))
            .collect();
        for r in runs {
            assert_eq!(ok(&r.join().unwrap()), want);
        }
    });
}

#[test]
fn an_agent_killed_mid_call_is_eio_and_a_clean_exit() {
    let tmp = TempDir::new("remote-kill");
    let agent = Agent::unix(tmp.path(), &[]);
    // Stopped, the agent's socket still accepts (the backlog): the guest's
    // first call is in flight when the agent dies.
    agent.signal(libc::SIGSTOP);
    let mut cmd = Command::new(skiff());
    cmd.args(["run", "--accel=remote", &remote_flag(&agent)])
        .arg(guest("sgemm"));
    let started = Instant::now();
    let guest = std::thread::spawn(move || run_with(cmd, b"", Duration::from_secs(60)));
    std::thread::sleep(Duration::from_millis(500));
    agent.signal(libc::SIGKILL);
    let o = guest.join().unwrap();
    assert_eq!(o.status.code(), Some(1), "{} {}", stdout(&o), stderr(&o));
    assert_eq!(stdout(&o), "sgemm: BLAS_SGEMM failed: errno 5\n");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("skiff: accel: remote unix://"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(agent);
}

#[test]
fn an_agent_killed_inside_a_plugin_call_is_eio_and_the_guest_goes_on() {
    let tmp = TempDir::new("remote-slow");
    let (_, model) = exec_fixture(tmp.path());
    let lib = tmp.path().join("libslow.so");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/remote_agent/slowlib.c");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(src)
        .status()
        .unwrap();
    assert!(st.success());
    let mark = tmp.path().join("in-call");
    let model_flag = format!("--accel-model=model={}", model.display());
    let lib_flag = format!("--accel-lib=testlib={}", lib.display());
    let addr = format!("unix://{}", tmp.path().join("agent.sock").display());
    let env = [("SKIFF_SLOW_MARK", mark.as_os_str())];
    let agent = Agent::start_env(&addr, &[&lib_flag, &model_flag], &env);
    let flags = [
        "--mem=128",
        "--accel=remote",
        &remote_flag(&agent),
        &model_flag,
    ]
    .map(String::from);
    let guest = std::thread::spawn(move || {
        let f: Vec<&str> = flags.iter().map(String::as_str).collect();
        run(&f, "accelbad", &[])
    });
    // The guest's EXEC is inside the library on the agent: kill it there.
    let t = Instant::now();
    while !mark.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the EXEC call never arrived"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    agent.signal(libc::SIGKILL);
    let o = guest.join().unwrap();
    let out = ok(&o);
    // That call and every later forwarded one are EIO; the guest's local
    // session bookkeeping still works, and skiff exits normally.
    assert!(
        out.contains("\nexec_sum=5 value=0\nexec_fails=5\n"),
        "{out}"
    );
    assert!(out.contains("\nrelease=0\n"), "{out}");
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("agent connection lost"), "{err}");
}

#[test]
fn a_stopped_agent_is_eio_after_the_timeout() {
    let agent = Agent::tcp(&[]);
    agent.signal(libc::SIGSTOP);
    let started = Instant::now();
    let o = run(
        &[
            "--accel=remote",
            &remote_flag(&agent),
            "--accel-remote-timeout=1",
        ],
        "sgemm",
        &[],
    );
    let took = started.elapsed();
    agent.signal(libc::SIGCONT);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(stdout(&o), "sgemm: BLAS_SGEMM failed: errno 5\n");
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(20),
        "{took:?}"
    );
}

#[test]
fn a_restarted_agent_serves_new_runs() {
    let tmp = TempDir::new("remote-restart");
    let want = ok(&run(&["--accel=cpu"], "sgemm", &[]));
    let agent = Agent::unix(tmp.path(), &[]);
    let flag = remote_flag(&agent);
    assert_eq!(ok(&run(&["--accel=remote", &flag], "sgemm", &[])), want);
    // Killed outright: its socket file stays behind, and is replaced.
    let (st, _) = agent.stop(libc::SIGKILL);
    assert_eq!(st.code(), None);
    assert!(tmp.path().join("agent.sock").exists());
    // No agent: the plugin is skipped with a note, the op is ENOTSUP.
    let o = run(&["--accel=remote", &flag], "sgemm", &[]);
    assert_eq!(stdout(&o), "sgemm: BLAS_SGEMM failed: errno 95\n");
    assert!(
        stderr(&o).contains("plugin remote unavailable: cannot reach the agent"),
        "{}",
        stderr(&o)
    );
    let again = Agent::unix(tmp.path(), &[]);
    assert_eq!(ok(&run(&["--accel=remote", &flag], "sgemm", &[])), want);
    let (st, err) = again.stop(libc::SIGTERM);
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{err}");
    assert!(
        err.ends_with("skiff: agent: stopped on signal 15\n"),
        "{err}"
    );
    assert!(
        !tmp.path().join("agent.sock").exists(),
        "socket left behind"
    );
}

#[test]
fn bad_agent_flags_are_one_line_and_exit_1() {
    // Values clap itself refuses are usage errors: clap's whole message
    // (the flag, the problem, the --help tip) and exit 2 (docs/cli.md).
    for (args, needle) in [
        (
            &["agent", "-a", "udp://x:1"][..],
            "expected tcp://HOST:PORT",
        ),
        (&["agent", "--max-frame-mib=2048"], "--max-frame-mib"),
    ] {
        let o = run_with(
            {
                let mut c = Command::new(skiff());
                c.args(args).env_remove("VACCEL_PLUGINS");
                c
            },
            b"",
            Duration::from_secs(20),
        );
        let err = common::stderr(&o);
        assert_eq!(o.status.code(), Some(2), "stderr: {err}");
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        assert!(err.contains("try '--help'"), "{err}");
    }
    for (args, needle) in [
        (
            &["agent", "--accel=gpu"][..],
            "unknown accelerator plugin 'gpu'",
        ),
        (
            &["agent", "--accel-lib=l=/nonexistent.so"],
            "--accel-lib l=/nonexistent.so",
        ),
    ] {
        let o = run_with(
            {
                let mut c = Command::new(skiff());
                c.args(args).env_remove("VACCEL_PLUGINS");
                c
            },
            b"",
            Duration::from_secs(20),
        );
        assert_refused(&o, needle);
    }
    let o = run(&["--accel-remote=unix:///x"], "sgemm", &[]);
    assert_refused(&o, "--accel-remote needs the remote plugin in --accel");
    let o = run(&["--accel=remote", "--accel-remote=bogus"], "sgemm", &[]);
    assert_refused(&o, "--accel-remote: address 'bogus'");
}
