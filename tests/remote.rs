//! vAccel's remote protocol on real sockets: `skiff run --accel=remote`
//! against `skiff agent` (tcp and unix) gives what local `--accel=cpu`
//! gives; many guests at once; a killed, stopped or restarted agent;
//! hostile clients; the captured frames byte for byte.

mod common;
use common::*;
use protobuf::Message;
use skiff::accel::remote::frame::{self, Header};
use skiff::accel::remote::proto::{self, *};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running `skiff agent`, killed (and its socket removed) on drop.
struct Agent {
    child: Child,
    addr: String,
    stderr: std::thread::JoinHandle<String>,
}

impl Agent {
    /// `skiff agent -a ADDR FLAGS`; waits until it listens.
    fn start(addr: &str, flags: &[&str]) -> Agent {
        let mut child = Command::new(skiff())
            .args(["agent", "-a", addr])
            .args(flags)
            .env_remove("VACCEL_PLUGINS")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn skiff agent");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        assert!(
            !line.is_empty(),
            "agent did not start: {}",
            stderr.join().unwrap()
        );
        Agent {
            child,
            addr: line.trim().to_string(),
            stderr,
        }
    }

    fn tcp(flags: &[&str]) -> Agent {
        Agent::start("tcp://127.0.0.1:0", flags)
    }

    fn unix(dir: &Path, flags: &[&str]) -> Agent {
        Agent::start(
            &format!("unix://{}", dir.join("agent.sock").display()),
            flags,
        )
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Sends `sig` and waits for the agent to end; its status and stderr.
    fn stop(mut self, sig: i32) -> (std::process::ExitStatus, String) {
        self.signal(sig);
        let st = self.child.wait().unwrap();
        let err = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        // What the agent left behind is the test's to see: not removed.
        self.addr.clear();
        (st, err.join().unwrap())
    }

    /// A raw connection.
    fn connect(&self) -> Conn {
        let a: skiff::accel::remote::addr::Address = self.addr.parse().unwrap();
        let s = a.connect().unwrap();
        s.set_timeouts(Some(Duration::from_secs(20))).unwrap();
        Conn { s, next: 1 }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = self.addr.strip_prefix("unix://") {
            if !p.starts_with('@') {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// A raw protocol client for byte-level and hostile tests.
struct Conn {
    s: skiff::accel::remote::addr::Stream,
    next: u32,
}

impl Conn {
    fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    fn read(&mut self) -> Option<(Header, Vec<u8>)> {
        frame::read_frame(&mut self.s, frame::VACCEL_MAX, None, None).ok()
    }

    /// Calls `method` with `payload`: (status, reply payload).
    fn call(&mut self, method: &str, payload: &impl Message) -> (Status, Vec<u8>) {
        self.call_in(SERVICE, method, payload)
    }

    fn call_in(
        &mut self,
        service: &str,
        method: &str,
        payload: &impl Message,
    ) -> (Status, Vec<u8>) {
        let req = Request {
            service: service.into(),
            method: method.into(),
            payload: payload.write_to_bytes().unwrap(),
            ..Default::default()
        };
        let body = req.write_to_bytes().unwrap();
        let id = self.next;
        self.next += 2;
        let hd = Header {
            len: body.len() as u32,
            stream: id,
            kind: frame::TYPE_REQUEST,
            flags: 0,
        };
        frame::write_frame(&mut self.s, hd, &body).unwrap();
        let (rh, rb) = self.read().expect("a response");
        assert_eq!(
            (rh.stream, rh.kind, rh.flags),
            (id, frame::TYPE_RESPONSE, 0)
        );
        let r = Response::parse_from_bytes(&rb).unwrap();
        (r.status.unwrap_or_default(), r.payload)
    }

    fn session(&mut self) -> i64 {
        let (st, p) = self.call("CreateSession", &CreateSessionRequest::new());
        assert_eq!(st.code, 0, "{}", st.message);
        CreateSessionResponse::parse_from_bytes(&p)
            .unwrap()
            .session_id
    }
}

fn remote_flag(a: &Agent) -> String {
    format!("--accel-remote={}", a.addr)
}

/// `skiff run FLAGS GUEST ARGS` with no vAccel variables.
fn run(flags: &[&str], guest_name: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(skiff());
    cmd.arg("run").args(flags).arg(guest(guest_name)).args(args);
    for v in ["VACCEL_PLUGINS", "VACCEL_RPC_ADDRESS", "VACCEL_RPC_ADDR"] {
        cmd.env_remove(v);
    }
    run_with(cmd, b"", Duration::from_secs(120))
}

fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{} {}", stdout(o), stderr(o));
    stdout(o)
}

#[test]
fn sgemm_over_tcp_and_unix_matches_local() {
    let tmp = TempDir::new("remote-sgemm");
    for agent in [Agent::tcp(&[]), Agent::unix(tmp.path(), &[])] {
        for dims in [
            &[][..],
            &["1", "1", "1"],
            &["17", "65", "3"],
            &["64", "48", "80"],
        ] {
            let local = ok(&run(&["--accel=cpu"], "sgemm", dims));
            let o = run(&["--accel=remote", &remote_flag(&agent)], "sgemm", dims);
            assert_eq!(ok(&o), local, "{} {dims:?}", agent.addr);
            assert_eq!(stderr(&o), "");
        }
    }
}

/// The EXEC test library and an opaque model file.
fn exec_fixture(tmp: &Path) -> (PathBuf, PathBuf) {
    let lib = tmp.join("libskiffexec.so");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/accel/execlib.c");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(src)
        .status()
        .expect("cc");
    assert!(st.success());
    let model = tmp.join("model.bin");
    std::fs::write(&model, b"model bytes").unwrap();
    (lib, model)
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
    assert_eq!(st.code(), Some(0), "{err}");
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

fn model_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/model");
    assert!(
        d.join("golden.json").exists(),
        "{} is missing: run tools/setup-model.sh once",
        d.display()
    );
    d
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
        let reg = RegisterResourceRequest {
            session_id: sid,
            resource_type: ResourceType::MODEL.into(),
            paths: vec!["imagenet".into()],
            ..Default::default()
        };
        let (st, _) = c.call("RegisterResource", &reg);
        assert_eq!(st.code, 0, "{}", st.message);
        let req = ImageClassificationRequest {
            session_id: sid,
            image: body.clone(),
            ..Default::default()
        };
        let (st, p) = c.call("ImageClassification", &req);
        assert_eq!(st.code, 0, "{}", st.message);
        let tags = ImageClassificationResponse::parse_from_bytes(&p)
            .unwrap()
            .tags;
        let top5: String = local.lines().skip(1).map(|l| format!("{l}\n")).collect();
        assert_eq!(String::from_utf8(tags).unwrap(), top5, "{name}");
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
    assert_eq!(st.code(), Some(0), "{err}");
    assert!(err.ends_with("skiff: agent: stopped\n"), "{err}");
    assert!(
        !tmp.path().join("agent.sock").exists(),
        "socket left behind"
    );
}

#[test]
fn the_captured_frames_get_vaccels_exact_replies() {
    let agent = Agent::start(&format!("unix://@skiff-remote-{}", std::process::id()), &[]);
    let mut c = agent.connect();
    c.send_raw(
        b"\x00\x00\x00\x2f\x00\x00\x00\x01\x01\x00\
\x0a\x1evaccel.sync.agent.AgentService\x12\x0dCreateSession",
    );
    let mut got = [0u8; 16];
    c.s.read_exact(&mut got).unwrap();
    assert_eq!(
        &got,
        b"\x00\x00\x00\x06\x00\x00\x00\x01\x02\x00\x0a\x00\x12\x02\x08\x01"
    );
    // The sgemm Genop (stream 3), assembled as vAccel's client sends it:
    // header and body in two writes.
    let (a, b) = ([1f32, 2., 3., 4.], [5f32, 6., 7., 8.]);
    let mut p = vec![0x08, 0x01];
    let arg = |p: &mut Vec<u8>, tag: u8, buf: &[u8], ty: u8| {
        p.extend([tag, (buf.len() + 6) as u8, 0x0a, buf.len() as u8]);
        p.extend_from_slice(buf);
        p.extend([0x10, buf.len() as u8, 0x18, ty]);
    };
    let f = |x: &[f32]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let two = 2i64.to_le_bytes();
    arg(&mut p, 0x12, &[17], 9);
    for _ in 0..3 {
        arg(&mut p, 0x12, &two, 7);
    }
    arg(&mut p, 0x12, &1f32.to_le_bytes(), 0x11);
    arg(&mut p, 0x12, &f(&a), 0x12);
    arg(&mut p, 0x12, &two, 7);
    arg(&mut p, 0x12, &f(&b), 0x12);
    arg(&mut p, 0x12, &two, 7);
    arg(&mut p, 0x12, &0f32.to_le_bytes(), 0x11);
    arg(&mut p, 0x12, &two, 7);
    arg(&mut p, 0x1a, &[0; 16], 0x12);
    let mut body = b"\x0a\x1evaccel.sync.agent.AgentService\x12\x05Genop".to_vec();
    body.push(0x1a);
    body.extend([0x80 | (p.len() & 0x7f) as u8, (p.len() >> 7) as u8]); // a 2-byte varint
    assert!(p.len() >= 128 && p.len() < 1 << 14);
    body.extend(&p);
    let mut hd = (body.len() as u32).to_be_bytes().to_vec();
    hd.extend([0, 0, 0, 3, 1, 0]);
    c.send_raw(&hd);
    std::thread::sleep(Duration::from_millis(20));
    c.send_raw(&body);
    let mut want = vec![
        0, 0, 0, 0x1c, 0, 0, 0, 3, 2, 0, 0x0a, 0x00, 0x12, 0x18, 0x0a, 0x16, 0x0a, 0x10,
    ];
    want.extend(f(&[19., 22., 43., 50.]));
    want.extend([0x10, 0x10, 0x18, 0x12]);
    let mut got = vec![0u8; want.len()];
    c.s.read_exact(&mut got).unwrap();
    assert_eq!(got, want);
}

/// The vAccel error a status carries: (code, message, ffi errno).
fn err_of(st: &Status) -> (i32, String, i32) {
    (st.code, st.message.clone(), proto::errno_of(st))
}

#[test]
fn the_agents_errors_are_vaccels() {
    let agent = Agent::tcp(&[]);
    let mut c = agent.connect();
    let (st, _) = c.call("Frobnicate", &Empty::new());
    assert_eq!(
        (st.code, st.message.as_str()),
        (
            3,
            "/vaccel.sync.agent.AgentService/Frobnicate does not exist"
        )
    );
    let (st, _) = c.call_in(
        "vaccel.asynchronous.agent.AgentService",
        "Genop",
        &Empty::new(),
    );
    assert_eq!(
        (st.code, st.message.as_str()),
        (
            3,
            "/vaccel.asynchronous.agent.AgentService/Genop does not exist"
        )
    );
    let ghost = GenopRequest {
        session_id: 999,
        ..Default::default()
    };
    let (st, _) = c.call("Genop", &ghost);
    assert_eq!((st.code, st.message.as_str()), (5, "Unknown session 999"));
    let sid = c.session();
    let arg = |buf: &[u8], size: u32, ty: u32| Arg {
        buf: buf.to_vec(),
        size,
        arg_type: ty,
        ..Default::default()
    };
    // An op the plugin lacks: EOPNOTSUPP, and the session stays usable.
    let genop = |read: Vec<Arg>| GenopRequest {
        session_id: sid,
        read_args: read,
        ..Default::default()
    };
    let (st, _) = c.call("Genop", &genop(vec![arg(&[4], 1, 9)]));
    assert_eq!(err_of(&st), (13, "FFI error: 95".into(), 95));
    let (st, _) = c.call("Genop", &genop(vec![arg(&[0], 2, 9)]));
    assert_eq!(st.code, 13);
    assert!(
        st.message.starts_with("Conversion failed: "),
        "{}",
        st.message
    );
    let (st, _) = c.call("Genop", &genop(vec![arg(&[0], 1, 9)]));
    assert_eq!(st.code, 0, "NOOP after errors: {}", st.message);
    let (st, _) = c.call(
        "UnregisterResource",
        &UnregisterResourceRequest {
            session_id: sid,
            resource_id: 77,
            ..Default::default()
        },
    );
    assert_eq!((st.code, st.message.as_str()), (5, "Unknown resource 77"));
    let (st, _) = c.call(
        "DestroySession",
        &DestroySessionRequest {
            session_id: sid,
            ..Default::default()
        },
    );
    assert_eq!(st.code, 0);
    let (st, _) = c.call("Genop", &genop(vec![arg(&[0], 1, 9)]));
    assert_eq!(st.message, format!("Unknown session {sid}"));
}

#[test]
fn exec_runs_only_the_operators_libraries_by_path_or_name() {
    let tmp = TempDir::new("remote-exec");
    let (lib, _) = exec_fixture(tmp.path());
    let agent = Agent::tcp(&[&format!("--accel-lib=testlib={}", lib.display())]);
    let mut c = agent.connect();
    let sid = c.session();
    let string = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        Arg {
            size: v.len() as u32,
            buf: v,
            arg_type: 27,
            ..Default::default()
        }
    };
    let nums: Vec<u8> = [1u32, 2, 3, 4, 5]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let exec = |library: &str, symbol: &str| GenopRequest {
        session_id: sid,
        read_args: vec![
            Arg {
                buf: vec![1],
                size: 1,
                arg_type: 9,
                ..Default::default()
            },
            string(library),
            string(symbol),
            Arg {
                size: nums.len() as u32,
                buf: nums.clone(),
                arg_type: 14,
                ..Default::default()
            },
        ],
        write_args: vec![Arg {
            buf: vec![0; 4],
            size: 4,
            arg_type: 13,
            ..Default::default()
        }],
        ..Default::default()
    };
    // A vAccel client names the library by its path on the agent's machine.
    for name in [lib.to_str().unwrap(), "testlib"] {
        let (st, p) = c.call("Genop", &exec(name, "sum_u32"));
        assert_eq!(st.code, 0, "{name}: {}", st.message);
        let r = GenopResponse::parse_from_bytes(&p).unwrap();
        assert_eq!(r.write_args[0].buf, 15u32.to_le_bytes(), "{name}");
    }
    // Any other library is unknown, libc's `system` above all.
    for (l, s) in [
        ("/lib/x86_64-linux-gnu/libc.so.6", "system"),
        ("testlib", "system"),
    ] {
        let (st, _) = c.call("Genop", &exec(l, s));
        assert_eq!(err_of(&st), (13, "FFI error: 2".into(), 2), "{l} {s}");
    }
    // Libraries come only from the operator: never from a client's blob.
    let (st, _) = c.call(
        "RegisterResource",
        &RegisterResourceRequest {
            session_id: sid,
            resource_type: ResourceType::LIB.into(),
            blobs: vec![Blob {
                data: b"\x7fELF".to_vec(),
                size: 4,
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    assert_eq!(err_of(&st).2, 22);
}

#[test]
fn hostile_clients_never_stop_the_agent_serving_others() {
    let agent = Agent::tcp(&["--max-frame-mib=16", "--max-connections=8"]);
    let mut good = agent.connect();
    let sid = good.session();
    let noop = GenopRequest {
        session_id: sid,
        read_args: vec![Arg {
            buf: vec![0],
            size: 1,
            arg_type: 9,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut still_serving = |what: &str| {
        let (st, _) = good.call("Genop", &noop);
        assert_eq!(st.code, 0, "after {what}: {}", st.message);
    };
    // A 1 GiB header: refused with a status before any body is read.
    let mut c = agent.connect();
    c.send_raw(&[0x40, 0, 0, 0, 0, 0, 0, 1, 1, 0]);
    let (hd, body) = c.read().expect("a refusal");
    let st = Response::parse_from_bytes(&body).unwrap().status.unwrap();
    assert_eq!((hd.kind, hd.stream, st.code), (2, 1, 8));
    assert_eq!(
        st.message,
        "frame of 1073741824 bytes is over this agent's limit of 16777216"
    );
    assert!(c.read().is_none(), "the connection must close");
    still_serving("a 1 GiB header");
    // A lying length: 1000 bytes promised, 10 sent, then hang up.
    let mut c = agent.connect();
    c.send_raw(&[0, 0, 0x03, 0xe8, 0, 0, 0, 1, 1, 0]);
    c.send_raw(&[0x0a; 10]);
    drop(c);
    still_serving("a lying length");
    // A truncated header; an unknown frame type; garbage protobuf.
    agent.connect().send_raw(&[0, 0, 0]);
    let mut c = agent.connect();
    c.send_raw(&[0, 0, 0, 0, 0, 0, 0, 1, 9, 0]);
    assert!(c.read().is_none());
    let mut c = agent.connect();
    c.send_raw(&[0, 0, 0, 3, 0, 0, 0, 1, 1, 0, 0xff, 0xff, 0xff]);
    let (_, body) = c.read().expect("an answer to garbage");
    let st = Response::parse_from_bytes(&body).unwrap().status.unwrap();
    assert_eq!(st.code, 3, "{}", st.message);
    still_serving("truncated and garbage frames");
    // A flood of sessions: capped per connection, freed when it closes.
    let mut c = agent.connect();
    let mut refused = 0;
    for _ in 0..100 {
        let (st, _) = c.call("CreateSession", &CreateSessionRequest::new());
        if st.code != 0 {
            assert_eq!(err_of(&st), (13, "FFI error: 12".into(), 12));
            refused += 1;
        }
    }
    assert_eq!(refused, 100 - 64);
    drop(c);
    still_serving("a session flood");
    // A flood of connections: those over the limit are closed at once.
    let flood: Vec<_> = (0..16)
        .filter_map(|_| std::net::TcpStream::connect(agent.addr.trim_start_matches("tcp://")).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    drop(flood);
    std::thread::sleep(Duration::from_millis(200));
    still_serving("a connection flood");
    // And a whole guest still runs.
    let want = ok(&run(&["--accel=cpu"], "sgemm", &[]));
    assert_eq!(
        ok(&run(
            &["--accel=remote", &remote_flag(&agent)],
            "sgemm",
            &[]
        )),
        want
    );
}

#[test]
fn a_connections_sessions_die_with_it() {
    let agent = Agent::tcp(&[]);
    let mut a = agent.connect();
    let sid = a.session();
    drop(a);
    let mut b = agent.connect();
    let (st, _) = b.call(
        "DestroySession",
        &DestroySessionRequest {
            session_id: sid,
            ..Default::default()
        },
    );
    assert_eq!((st.code, st.message), (5, format!("Unknown session {sid}")));
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

#[test]
fn the_agent_listens_on_vsock_where_the_kernel_has_it() {
    // SAFETY: plain socket(2), closed at once.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        eprintln!("note: no vsock on this host; the vsock listener was not exercised");
        return;
    }
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    // Any CID (this host may have no vsock transport to connect through:
    // only binding and a clean stop are checked here).
    let port = 40000 + std::process::id() % 20000;
    let addr = format!("vsock://4294967295:{port}");
    let agent = Agent::start(&addr, &[]);
    assert_eq!(agent.addr, addr);
    let (st, err) = agent.stop(libc::SIGTERM);
    assert_eq!(st.code(), Some(0), "{err}");
}

#[test]
fn the_agent_serves_under_its_seccomp_filter() {
    let agent = Agent::tcp(&[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.child.id())).unwrap();
    let mode = status.lines().find(|l| l.starts_with("Seccomp:")).unwrap();
    assert_eq!(mode.split_whitespace().nth(1), Some("2"), "{mode}");
    // Its threads (executor, connections) serve under it.
    let mut c = agent.connect();
    c.session();
    let (st, err) = agent.stop(libc::SIGTERM);
    assert_eq!(st.code(), Some(0), "{err}");
}
