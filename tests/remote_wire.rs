//! `skiff agent` on the wire: vAccel's captured frames byte for byte,
//! vAccel's errors, the EXEC allowlist, hostile clients, and the agent's
//! listeners, seccomp and sessions.

mod common;
mod remote_agent;
use common::*;
use protobuf::Message;
use remote_agent::*;
use skiff::vaccel::proto::*;
use std::io::Read;
use std::time::Duration;

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

/// Run with `--ignored` where the host has vsock (a test that returned
/// early without it would count as a pass).
#[test]
#[ignore = "needs AF_VSOCK"]
fn the_agent_listens_on_vsock_where_the_kernel_has_it() {
    // SAFETY: plain socket(2), closed at once.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0, "no vsock on this host");
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    // Any CID (this host may have no vsock transport to connect through:
    // only binding and a clean stop are checked here).
    let port = 40000 + std::process::id() % 20000;
    let addr = format!("vsock://4294967295:{port}");
    let agent = Agent::start(&addr, &[]);
    assert_eq!(agent.addr, addr);
    let (st, err) = agent.stop(libc::SIGTERM);
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{err}");
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
    assert_eq!(st.code(), Some(128 + libc::SIGTERM), "{err}");
}

/// An sgemm Genop (m = n = k = 4, alpha 1, beta 0) whose A, B and C are
/// at `offs` of the shared region (`None`: inline, zeroed).
fn shm_sgemm(sid: i64, offs: [Option<u64>; 3], ty: u32) -> GenopRequest {
    let int = |v: i64| Arg {
        buf: v.to_le_bytes().to_vec(),
        size: 8,
        arg_type: 7,
        ..Default::default()
    };
    let f32a = |v: f32| Arg {
        buf: v.to_le_bytes().to_vec(),
        size: 4,
        arg_type: 0x11,
        ..Default::default()
    };
    let mat = |off: Option<u64>| Arg {
        buf: if off.is_some() { vec![] } else { vec![0; 64] },
        size: 64,
        arg_type: ty,
        shm_offset: off,
        ..Default::default()
    };
    let op = Arg {
        buf: vec![17],
        size: 1,
        arg_type: 9,
        ..Default::default()
    };
    GenopRequest {
        session_id: sid,
        read_args: vec![
            op,
            int(4),
            int(4),
            int(4),
            f32a(1.0),
            mat(offs[0]),
            int(4),
            mat(offs[1]),
            int(4),
            f32a(0.0),
            int(4),
        ],
        write_args: vec![mat(offs[2])],
        ..Default::default()
    }
}

#[test]
fn shared_memory_is_skiffs_own_checked_and_only_over_unix() {
    use skiff::vaccel::shm::SERVICE as SHM;
    let agent = Agent::start(
        &format!("unix://@skiff-remote-shm-{}", std::process::id()),
        &["--max-frame-mib=8"],
    );
    let mut c = agent.connect();
    let sid = c.session();
    // More than the agent's frame limit: refused, the connection goes on.
    let (st, region) = c.attach(9 << 20);
    assert_eq!((st.code, errno_of(&st)), (13, libc::ENOMEM));
    assert!(region.is_none());
    let (st, region) = c.attach(1000);
    assert_eq!(st.code, 0, "{}", st.message);
    let region = region.expect("the region's fd");
    assert_eq!(region.len(), 4096, "page-rounded");
    // A = identity, B = 1..16, C = garbage: C must become B.
    let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let ident: Vec<f32> = (0..16)
        .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
        .collect();
    let b: Vec<f32> = (1..=16).map(|i| i as f32).collect();
    region.slice_mut(0, 64).unwrap().copy_from_slice(&f(&ident));
    region.slice_mut(64, 64).unwrap().copy_from_slice(&f(&b));
    region.slice_mut(128, 64).unwrap().fill(0xff);
    let (st, p) = c.call_in(
        SHM,
        "Genop",
        &shm_sgemm(sid, [Some(0), Some(64), Some(128)], 0x12),
    );
    assert_eq!(st.code, 0, "{}", st.message);
    let r = GenopResponse::parse_from_bytes(&p).unwrap();
    let w = &r.write_args[0];
    assert_eq!((w.buf.len(), w.size, w.shm_offset), (0, 64, Some(128)));
    assert_eq!(region.slice(128, 64).unwrap(), &f(&b)[..]);
    // Mixed: C inline comes back inline.
    let (st, p) = c.call_in(
        SHM,
        "Genop",
        &shm_sgemm(sid, [Some(0), Some(64), None], 0x12),
    );
    assert_eq!(st.code, 0, "{}", st.message);
    let r = GenopResponse::parse_from_bytes(&p).unwrap();
    assert_eq!(r.write_args[0].buf, f(&b));
    // Misaligned, outside, overlapping, or not a float array: EINVAL.
    for (offs, ty) in [
        ([Some(4), Some(64), Some(128)], 0x12),
        ([Some(0), Some(64), Some(4096 - 64 + 64)], 0x12),
        ([Some(0), Some(64), Some(u64::MAX - 63)], 0x12),
        ([Some(0), Some(64), Some(64)], 0x12),
        ([Some(0), Some(64), Some(128)], 0x0c),
    ] {
        let (st, _) = c.call_in(SHM, "Genop", &shm_sgemm(sid, offs, ty));
        assert_eq!(
            (st.code, errno_of(&st)),
            (13, libc::EINVAL),
            "{offs:?} {ty}"
        );
    }
    // On vAccel's service the field means nothing: a size mismatch.
    let (st, _) = c.call(
        "Genop",
        &shm_sgemm(sid, [Some(0), Some(64), Some(128)], 0x12),
    );
    assert_eq!(st.code, 13);
    assert!(
        st.message.starts_with("Conversion failed"),
        "{}",
        st.message
    );
    // Still serving; a second Attach replaces the region (a larger one).
    let (st, _) = c.call_in(
        SHM,
        "Genop",
        &shm_sgemm(sid, [Some(0), Some(64), Some(128)], 0x12),
    );
    assert_eq!(st.code, 0, "{}", st.message);
    let (st, bigger) = c.attach(8192);
    assert_eq!(st.code, 0, "{}", st.message);
    let bigger = bigger.expect("the new region's fd");
    assert_eq!(bigger.len(), 8192);
    bigger
        .slice_mut(4096, 64)
        .unwrap()
        .copy_from_slice(&f(&ident));
    bigger.slice_mut(4160, 64).unwrap().copy_from_slice(&f(&b));
    let offs = [Some(4096), Some(4160), Some(4224)];
    let (st, _) = c.call_in(SHM, "Genop", &shm_sgemm(sid, offs, 0x12));
    assert_eq!(st.code, 0, "{}", st.message);
    assert_eq!(bigger.slice(4224, 64).unwrap(), &f(&b)[..]);
    drop((region, bigger));

    // Over tcp, or where the operator turned it off, the service does
    // not exist, as on vAccel's agent.
    let off = format!("unix://@skiff-remote-noshm-{}", std::process::id());
    for agent in [Agent::tcp(&[]), Agent::start(&off, &["--no-shared-memory"])] {
        let mut c = agent.connect();
        let (st, region) = c.attach(1 << 20);
        assert!(region.is_none());
        assert_eq!(
            (st.code, st.message.as_str()),
            (3, "/skiff.agent.SharedMemory/Attach does not exist")
        );
    }
}
