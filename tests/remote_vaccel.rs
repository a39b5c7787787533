//! `skiff agent` as vAccel's own applications use it: resources sent as
//! bytes (a model, a library), EXEC_WITH_RESOURCE, replies at the
//! caller's sizes, every AgentService method of vAccel 0.8, hostile blobs,
//! and the per-call log line.

mod common;
mod remote_agent;
use common::*;
use protobuf::Message;
use remote_agent::*;
use skiff::vaccel::proto::*;
use std::io::Read;

fn model_bytes() -> Vec<u8> {
    std::fs::read(model_dir().join("efficientnet-lite0.safetensors")).unwrap()
}

/// RegisterResource from blobs, as vAccel's client sends a local file
/// (MAPPED, the file's basename): (status, resource id).
fn register_blobs(c: &mut Conn, sid: i64, kind: ResourceType, blobs: &[&[u8]]) -> (Status, i64) {
    let req = RegisterResourceRequest {
        session_id: sid,
        resource_type: kind.into(),
        blobs: blobs
            .iter()
            .map(|d| Blob {
                type_: BlobType::MAPPED.into(),
                name: "file.bin".into(),
                data: d.to_vec(),
                size: d.len() as u32,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let (st, p) = c.call("RegisterResource", &req);
    let id = RegisterResourceResponse::parse_from_bytes(&p)
        .unwrap()
        .resource_id;
    (st, id)
}

fn unregister(c: &mut Conn, sid: i64, id: i64) -> Status {
    let req = UnregisterResourceRequest {
        session_id: sid,
        resource_id: id,
        ..Default::default()
    };
    c.call("UnregisterResource", &req).0
}

fn arg(ty: u32, buf: Vec<u8>) -> Arg {
    Arg {
        size: buf.len() as u32,
        buf,
        arg_type: ty,
        ..Default::default()
    }
}

fn string(s: &str) -> Arg {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    arg(27, v)
}

/// The text up to the first NUL.
fn text(b: &[u8]) -> String {
    String::from_utf8(b.split(|&x| x == 0).next().unwrap().to_vec()).unwrap()
}

/// A 1x1x1 sgemm through Genop: the agent still computes.
fn sgemm_works(c: &mut Conn, sid: i64) {
    let i64a = |v: i64| arg(7, v.to_le_bytes().to_vec());
    let f32a = |v: f32, ty| arg(ty, v.to_le_bytes().to_vec());
    let req = GenopRequest {
        session_id: sid,
        read_args: vec![
            arg(9, vec![17]),
            i64a(1),
            i64a(1),
            i64a(1),
            f32a(1.0, 17),
            f32a(3.0, 18),
            i64a(1),
            f32a(5.0, 18),
            i64a(1),
            f32a(0.0, 17),
            i64a(1),
        ],
        write_args: vec![f32a(0.0, 18)],
        ..Default::default()
    };
    let (st, p) = c.call("Genop", &req);
    assert_eq!(st.code, 0, "{}", st.message);
    let r = GenopResponse::parse_from_bytes(&p).unwrap();
    assert_eq!(r.write_args[0].buf, 15f32.to_le_bytes());
}

#[test]
fn a_model_sent_as_bytes_classifies_and_goes_with_its_resource() {
    let dir = model_dir();
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
    let name = golden["confident"][0].as_str().unwrap();
    let image = std::fs::read(dir.join("images").join(name)).unwrap();
    let want = golden["images"][name]["top5"][0][0].as_u64().unwrap();
    let model = model_bytes();
    assert!(model.len() > 18_000_000);
    let path = dir.join("efficientnet-lite0.safetensors");
    let tmp = TempDir::new("remote-blob-model");
    // The operator's own copy of the same model, for the reference answer.
    let agent = Agent::unix(
        tmp.path(),
        &[&format!("--accel-model=imagenet={}", path.display())],
    );
    let mut c = agent.connect();
    let by_path = c.session();
    let (st, _) = c.register_path(by_path, ResourceType::MODEL, "imagenet");
    assert_eq!(st.code, 0, "{}", st.message);
    let (st, reference) = c.classify(by_path, &image);
    assert_eq!(st.code, 0, "{}", st.message);

    // The model as vAccel's client sends a local file: whole, as a blob.
    let sid = c.session();
    let (st, id) = register_blobs(&mut c, sid, ResourceType::MODEL, &[&model]);
    assert_eq!(st.code, 0, "{}", st.message);
    let (st, tags) = c.classify(sid, &image);
    assert_eq!(st.code, 0, "{}", st.message);
    // vAccel's agent returns the whole 1,024-byte buffer, NUL-padded.
    assert_eq!(tags.len(), 1024);
    assert_eq!(tags, reference);
    assert!(
        text(&tags).starts_with(&format!("{want} ")),
        "{}",
        text(&tags)
    );

    // Over Genop, every write arg comes back at the caller's size.
    let req = GenopRequest {
        session_id: sid,
        read_args: vec![arg(9, vec![3]), arg(28, image.clone())],
        write_args: vec![arg(26, vec![0; 100]), arg(26, vec![0xff; 512])],
        ..Default::default()
    };
    let (st, p) = c.call("Genop", &req);
    assert_eq!(st.code, 0, "{}", st.message);
    let r = GenopResponse::parse_from_bytes(&p).unwrap();
    let sizes: Vec<usize> = r.write_args.iter().map(|a| a.buf.len()).collect();
    assert_eq!(sizes, [100, 512]);
    assert_eq!(r.write_args[0].size, 100);
    assert!(text(&r.write_args[0].buf).starts_with(&format!("{want} ")));
    assert_eq!(text(&r.write_args[1].buf), text(&tags));
    assert!(r.write_args[1].buf[text(&tags).len()..]
        .iter()
        .all(|&b| b == 0));

    // SyncResource hands the bytes back, as vAccel's agent.
    let (st, p) = c.call(
        "SyncResource",
        &SyncResourceRequest {
            resource_id: id,
            ..Default::default()
        },
    );
    assert_eq!(st.code, 0, "{}", st.message);
    let sync = SyncResourceResponse::parse_from_bytes(&p).unwrap();
    assert_eq!(sync.blobs.len(), 1);
    assert_eq!(sync.blobs[0].size as usize, model.len());
    assert!(sync.blobs[0].data == model);

    // Unregistered, it is gone: the session has no model any more.
    assert_eq!(unregister(&mut c, sid, id).code, 0);
    let (st, _) = c.classify(sid, &image);
    assert_eq!(err_of(&st), (13, "FFI error: 2".into(), 2));
    let (st, _) = c.call(
        "SyncResource",
        &SyncResourceRequest {
            resource_id: id,
            ..Default::default()
        },
    );
    assert_eq!((st.code, st.message), (5, format!("Unknown resource {id}")));

    // At most 4 classifiers from blobs per connection; one unregistered
    // makes room again.
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (st, id) = register_blobs(&mut c, sid, ResourceType::MODEL, &[&model]);
        assert_eq!(st.code, 0, "{}", st.message);
        ids.push(id);
    }
    let (st, _) = register_blobs(&mut c, sid, ResourceType::MODEL, &[&model]);
    assert_eq!(err_of(&st).2, 12);
    assert_eq!(unregister(&mut c, sid, ids[0]).code, 0);
    let (st, _) = register_blobs(&mut c, sid, ResourceType::MODEL, &[&model]);
    assert_eq!(st.code, 0, "{}", st.message);
    let (st, again) = c.classify(sid, &image);
    assert_eq!(st.code, 0, "{}", st.message);
    assert_eq!(again, reference);
    drop(c);
    // The connection's classifiers went with it: a new one has room for 4.
    let mut c = agent.connect();
    let sid = c.session();
    for _ in 0..4 {
        let (st, _) = register_blobs(&mut c, sid, ResourceType::MODEL, &[&model]);
        assert_eq!(st.code, 0, "{}", st.message);
    }
}

#[test]
fn hostile_blobs_are_refused_and_the_agent_serves_on() {
    let tmp = TempDir::new("remote-blob-hostile");
    let agent = Agent::unix(tmp.path(), &[]);
    let mut c = agent.connect();
    let sid = c.session();
    let model = model_bytes();
    // Too large: one blob over 64 MiB.
    let (st, _) = register_blobs(
        &mut c,
        sid,
        ResourceType::MODEL,
        &[&vec![7; (64 << 20) + 1]],
    );
    assert_eq!(err_of(&st), (13, "FFI error: 12".into(), 12));
    // A truncated model, a safetensors header over garbage, a model whose
    // header promises more than it has: each refused by the model checks.
    let mut lying = model[..4096].to_vec();
    lying[..8].copy_from_slice(&(4000u64).to_le_bytes());
    for bad in [
        &model[..model.len() / 2],
        &b"\x07\x00\x00\x00\x00\x00\x00\x00{\"a\":1}"[..],
        &lying,
    ] {
        let (st, _) = register_blobs(&mut c, sid, ResourceType::MODEL, &[bad]);
        assert_eq!(err_of(&st), (13, "FFI error: 22".into(), 22));
    }
    // Not a model at all: an opaque resource, as an operator's file that
    // is not a classifier; classifying with it is ENOENT.
    let (st, _) = register_blobs(
        &mut c,
        sid,
        ResourceType::MODEL,
        &[&random_bytes(1 << 20, 1)],
    );
    assert_eq!(st.code, 0, "{}", st.message);
    let (st, _) = c.classify(sid, b"\x89PNG");
    assert_eq!(err_of(&st).2, 2);
    // A blob whose size is not its length; no paths and no blobs.
    let req = RegisterResourceRequest {
        session_id: sid,
        resource_type: ResourceType::DATA.into(),
        blobs: vec![Blob {
            data: vec![1, 2, 3, 4],
            size: 5,
            ..Default::default()
        }],
        ..Default::default()
    };
    let (st, _) = c.call("RegisterResource", &req);
    assert!(
        st.message.starts_with("Conversion failed: "),
        "{}",
        st.message
    );
    let empty = RegisterResourceRequest {
        session_id: sid,
        resource_type: ResourceType::DATA.into(),
        ..Default::default()
    };
    let (st, _) = c.call("RegisterResource", &empty);
    assert_eq!(
        (st.code, st.message.as_str()),
        (3, "No paths or blobs provided")
    );
    // Many at once: several blobs in one resource, then resources up to
    // the connection's cap.
    let parts: Vec<Vec<u8>> = (0..8).map(|i| random_bytes(4096, i)).collect();
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    let (st, _) = register_blobs(&mut c, sid, ResourceType::MODEL, &refs);
    assert_eq!(st.code, 0, "{}", st.message);
    let mut n = 2;
    let st = loop {
        let (st, _) = register_blobs(&mut c, sid, ResourceType::DATA, &[b"x"]);
        if st.code != 0 {
            break st;
        }
        n += 1;
        assert!(n <= 64, "no cap on resources");
    };
    assert_eq!((n, err_of(&st).2), (64, 12));
    // Many clients at once, each sending the whole model and classifying
    // with it, then leaving (their classifiers go with them).
    let image = std::fs::read(model_dir().join("images/coffee.png")).unwrap();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut c = agent.connect();
                    let sid = c.session();
                    let (st, _) = register_blobs(&mut c, sid, ResourceType::MODEL, &[&model]);
                    assert_eq!(st.code, 0, "{}", st.message);
                    let (st, tags) = c.classify(sid, &image);
                    assert_eq!(st.code, 0, "{}", st.message);
                    text(&tags)
                })
            })
            .collect();
        let answers: Vec<String> = runs.into_iter().map(|r| r.join().unwrap()).collect();
        assert!(!answers[0].is_empty());
        assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    });
    // The agent serves on: this connection, and another.
    sgemm_works(&mut c, sid);
    let mut other = agent.connect();
    let sid2 = other.session();
    sgemm_works(&mut other, sid2);
    drop((c, other));
    let (st, err) = agent.stop(libc::SIGTERM);
    assert_eq!(st.code(), Some(143), "{err}");
    // Quiet by default: no per-call lines.
    assert!(!err.contains("method="), "{err}");
}

/// EXEC_WITH_RESOURCE's Genop: op 2, the library resource, the symbol,
/// the inputs 1..5; the sum written to a UINT32.
fn exec_res(sid: i64, res: Arg) -> GenopRequest {
    let nums: Vec<u8> = [1u32, 2, 3, 4, 5]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    GenopRequest {
        session_id: sid,
        read_args: vec![arg(9, vec![2]), res, string("sum_u32"), arg(14, nums)],
        write_args: vec![arg(13, vec![0; 4])],
        ..Default::default()
    }
}

fn id_arg(id: i64) -> Arg {
    arg(7, id.to_le_bytes().to_vec())
}

#[test]
fn client_libraries_are_refused_unless_allowed() {
    let tmp = TempDir::new("remote-blob-lib");
    let (lib, _) = exec_fixture(tmp.path());
    let bytes = std::fs::read(&lib).unwrap();
    let agent = Agent::tcp(&[]);
    let mut c = agent.connect();
    let sid = c.session();
    for _ in 0..2 {
        let (st, _) = register_blobs(&mut c, sid, ResourceType::LIB, &[&bytes]);
        assert_eq!(err_of(&st), (13, "FFI error: 22".into(), 22));
    }
    drop(c);
    let (_, err) = agent.stop(libc::SIGTERM);
    // One line per connection, saying how to allow it.
    let told: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("--allow-client-libraries"))
        .collect();
    assert_eq!(told.len(), 1, "{err}");
    assert!(
        told[0].starts_with("skiff agent: refused a library"),
        "{err}"
    );
}

#[test]
fn exec_with_resource_runs_a_registered_library() {
    let tmp = TempDir::new("remote-exec-res");
    let (lib, _) = exec_fixture(tmp.path());
    let bytes = std::fs::read(&lib).unwrap();
    let lib_flag = format!("--accel-lib=testlib={}", lib.display());
    let agent = Agent::tcp(&["--allow-client-libraries", &lib_flag]);
    let mut c = agent.connect();
    let sid = c.session();
    let sum = |c: &mut Conn, req: &GenopRequest| {
        let (st, p) = c.call("Genop", req);
        assert_eq!(st.code, 0, "{}", st.message);
        GenopResponse::parse_from_bytes(&p).unwrap().write_args[0]
            .buf
            .clone()
    };
    // The client's own library, sent as bytes.
    let (st, mine) = register_blobs(&mut c, sid, ResourceType::LIB, &[&bytes]);
    assert_eq!(st.code, 0, "{}", st.message);
    assert_eq!(
        sum(&mut c, &exec_res(sid, id_arg(mine))),
        15u32.to_le_bytes()
    );
    // The operator's, registered by path (or NAME).
    let (st, theirs) = c.register_path(sid, ResourceType::LIB, lib.to_str().unwrap());
    assert_eq!(st.code, 0, "{}", st.message);
    assert_eq!(
        sum(&mut c, &exec_res(sid, id_arg(theirs))),
        15u32.to_le_bytes()
    );
    // vAccel's errnos: not a library EINVAL, unknown ENOENT, another
    // session's EPERM, a malformed id EINVAL.
    let (st, data) = register_blobs(&mut c, sid, ResourceType::DATA, &[b"data"]);
    assert_eq!(st.code, 0);
    let other = c.session();
    for (req, errno) in [
        (exec_res(sid, id_arg(data)), 22),
        (exec_res(sid, id_arg(987_654)), 2),
        (exec_res(other, id_arg(mine)), 1),
        (exec_res(sid, arg(9, vec![1])), 22),
    ] {
        let (st, _) = c.call("Genop", &req);
        assert_eq!(err_of(&st).2, errno, "{}", st.message);
    }
    // A plain EXEC cannot name the client's library by the agent's own
    // name for it.
    let mut exec = exec_res(sid, string(&format!("client={mine}")));
    exec.read_args[0] = arg(9, vec![1]);
    let (st, _) = c.call("Genop", &exec);
    assert_eq!(err_of(&st).2, 2);
    // Unregistered, it is gone.
    assert_eq!(unregister(&mut c, sid, mine).code, 0);
    let (st, _) = c.call("Genop", &exec_res(sid, id_arg(mine)));
    assert_eq!(err_of(&st).2, 2);
}

#[test]
fn every_method_of_vaccel_0_8_answers_as_vaccels_agent() {
    let agent = Agent::tcp(&["-v"]);
    let mut c = agent.connect();
    // GetProfiler with profiling off: an empty reply, byte for byte.
    let mut body =
        b"\x0a\x1evaccel.sync.agent.AgentService\x12\x0bGetProfiler\x1a\x02\x08\x01".to_vec();
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend([0, 0, 0, 1, 1, 0]);
    frame.append(&mut body);
    c.send_raw(&frame);
    let mut got = [0u8; 12];
    c.s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"\x00\x00\x00\x02\x00\x00\x00\x01\x02\x00\x0a\x00");
    let mut c = agent.connect();
    let sid = c.session();
    let (st, _) = c.call(
        "SyncResource",
        &SyncResourceRequest {
            resource_id: 4242,
            ..Default::default()
        },
    );
    assert_eq!((st.code, st.message.as_str()), (5, "Unknown resource 4242"));
    let (st, model) = register_blobs(&mut c, sid, ResourceType::MODEL, &[b"a tensorflow model"]);
    assert_eq!(st.code, 0, "{}", st.message);
    for (method, what) in [
        ("TensorflowModelLoad", "TensorFlow model"),
        ("TensorflowModelUnload", "TensorFlow model"),
        ("TensorflowModelRun", "TensorFlow model"),
        ("TensorflowLiteModelLoad", "TensorFlow Lite model"),
        ("TensorflowLiteModelUnload", "TensorFlow Lite model"),
        ("TensorflowLiteModelRun", "TensorFlow Lite model"),
        ("TorchModelLoad", "PyTorch model"),
        ("TorchModelRun", "Py model"),
    ] {
        let req = |session_id, model_id| ModelRequest {
            session_id,
            model_id,
            ..Default::default()
        };
        let (st, _) = c.call(method, &req(sid, 999));
        assert_eq!((st.code, st.message), (5, format!("Unknown {what} 999")));
        let (st, _) = c.call(method, &req(777, model));
        assert_eq!((st.code, st.message.as_str()), (5, "Unknown session 777"));
        // No plugin of skiff's has these ops: EOPNOTSUPP, session usable.
        let (st, _) = c.call(method, &req(sid, model));
        assert_eq!(err_of(&st), (13, "FFI error: 95".into(), 95), "{method}");
    }
    sgemm_works(&mut c, sid);
    let (st, _) = c.call("Frobnicate", &Empty::new());
    assert_eq!(st.code, 3);
    drop(c);
    // With -v, one line per call: method, session, op, status, duration.
    let (_, err) = agent.stop(libc::SIGTERM);
    let line = |needle: &str| err.lines().find(|l| l.contains(needle)).map(str::to_owned);
    let sgemm = line("method=\"Genop\"").unwrap_or_else(|| panic!("{err}"));
    for part in [&format!("session={sid}"), "op=17", "status=0", "took_us="] {
        assert!(sgemm.contains(part), "{sgemm}");
    }
    let torch = line(&format!("method=\"TorchModelRun\" session={sid}"));
    let torch = torch.unwrap_or_else(|| panic!("{err}"));
    assert!(
        torch.contains("status=13") && torch.contains("errno=95"),
        "{torch}"
    );
    assert!(line("method=\"GetProfiler\"").is_some(), "{err}");
}
