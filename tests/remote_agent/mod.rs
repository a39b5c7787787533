//! Shared by tests/remote.rs and tests/remote_wire.rs: a `skiff agent`
//! child (killed on drop), a raw protocol client, and skiff runs.
#![allow(dead_code)]

use super::common::*;
use protobuf::Message;
use skiff::vaccel::frame::{self, Header};
use skiff::vaccel::proto::{self, *};
use skiff::vaccel::shm;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

#[path = "../support/agent.rs"]
mod agent;
pub use agent::Agent;

impl Agent {
    /// `skiff agent -a ADDR FLAGS`; waits until it listens.
    pub fn start(addr: &str, flags: &[&str]) -> Agent {
        Agent::start_env(addr, flags, &[])
    }

    /// [`Agent::start`] with extra environment variables.
    pub fn start_env(addr: &str, flags: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Agent {
        let mut cmd = Command::new(skiff());
        cmd.args(["agent", "-a", addr])
            .args(flags)
            .envs(env.iter().copied())
            .env_remove("VACCEL_PLUGINS");
        Agent::spawn(cmd)
    }

    pub fn tcp(flags: &[&str]) -> Agent {
        Agent::start("tcp://127.0.0.1:0", flags)
    }

    pub fn unix(dir: &Path, flags: &[&str]) -> Agent {
        Agent::start(
            &format!("unix://{}", dir.join("agent.sock").display()),
            flags,
        )
    }

    /// A raw connection.
    pub fn connect(&self) -> Conn {
        let a: skiff::vaccel::addr::Address = self.addr.parse().unwrap();
        let s = a.connect().unwrap();
        s.set_timeouts(Some(Duration::from_secs(20))).unwrap();
        Conn { s, next: 1 }
    }
}

/// A raw protocol client for byte-level and hostile tests.
pub struct Conn {
    pub s: skiff::vaccel::addr::Stream,
    next: u32,
}

impl Conn {
    pub fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    pub fn read(&mut self) -> Option<(Header, Vec<u8>)> {
        frame::read_frame(&mut self.s, frame::VACCEL_MAX, None, None).ok()
    }

    /// Calls `method` with `payload`: (status, reply payload).
    pub fn call(&mut self, method: &str, payload: &impl Message) -> (Status, Vec<u8>) {
        self.call_in(SERVICE, method, payload)
    }

    pub fn call_in(
        &mut self,
        service: &str,
        method: &str,
        payload: &impl Message,
    ) -> (Status, Vec<u8>) {
        let id = self.send(service, method, payload);
        let (rh, rb) = self.read().expect("a response");
        assert_eq!(
            (rh.stream, rh.kind, rh.flags),
            (id, frame::TYPE_RESPONSE, 0)
        );
        let r = Response::parse_from_bytes(&rb).unwrap();
        (r.status.unwrap_or_default(), r.payload)
    }

    /// Sends a request; its stream id.
    fn send(&mut self, service: &str, method: &str, payload: &impl Message) -> u32 {
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
        id
    }

    /// skiff's SharedMemory/Attach: the status and, on success, the
    /// region the agent passed (SCM_RIGHTS), mapped.
    pub fn attach(&mut self, size: u64) -> (Status, Option<shm::Region>) {
        let req = ShmAttachRequest {
            size,
            ..Default::default()
        };
        self.send(shm::SERVICE, "Attach", &req);
        let mut one = [0u8; 1];
        let (_, fd) = shm::recv_with_fd(self.s.raw_fd(), &mut one, libc::MSG_PEEK).unwrap();
        let (_, rb) = self.read().expect("a response");
        let r = Response::parse_from_bytes(&rb).unwrap();
        let st = r.status.unwrap_or_default();
        let region = fd.map(|fd| {
            let n = ShmAttachResponse::parse_from_bytes(&r.payload)
                .unwrap()
                .size;
            shm::Region::map(&fd, n as usize, false).unwrap()
        });
        (st, region)
    }

    /// RegisterResource by path (or the operator's NAME): (status, id).
    pub fn register_path(&mut self, sid: i64, kind: ResourceType, path: &str) -> (Status, i64) {
        let req = RegisterResourceRequest {
            session_id: sid,
            resource_type: kind.into(),
            paths: vec![path.into()],
            ..Default::default()
        };
        let (st, p) = self.call("RegisterResource", &req);
        let id = RegisterResourceResponse::parse_from_bytes(&p).unwrap();
        (st, id.resource_id)
    }

    /// ImageClassification: (status, tags).
    pub fn classify(&mut self, sid: i64, image: &[u8]) -> (Status, Vec<u8>) {
        let req = ImageClassificationRequest {
            session_id: sid,
            image: image.to_vec(),
            ..Default::default()
        };
        let (st, p) = self.call("ImageClassification", &req);
        let r = ImageClassificationResponse::parse_from_bytes(&p).unwrap();
        (st, r.tags)
    }

    pub fn session(&mut self) -> i64 {
        let (st, p) = self.call("CreateSession", &CreateSessionRequest::new());
        assert_eq!(st.code, 0, "{}", st.message);
        CreateSessionResponse::parse_from_bytes(&p)
            .unwrap()
            .session_id
    }
}

/// The classifier's model, images and golden answers (target/model).
pub fn model_dir() -> std::path::PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/model");
    assert!(
        d.join("golden.json").exists(),
        "{} is missing: run tools/setup-model.sh once",
        d.display()
    );
    d
}

pub fn remote_flag(a: &Agent) -> String {
    format!("--accel-remote={}", a.addr)
}

/// `skiff run FLAGS GUEST ARGS` with no vAccel variables.
pub fn run(flags: &[&str], guest_name: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(skiff());
    cmd.arg("run").args(flags).arg(guest(guest_name)).args(args);
    for v in ["VACCEL_PLUGINS", "VACCEL_RPC_ADDRESS", "VACCEL_RPC_ADDR"] {
        cmd.env_remove(v);
    }
    run_with(cmd, b"", Duration::from_secs(120))
}

pub fn ok(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(0), "{} {}", stdout(o), stderr(o));
    stdout(o)
}

/// The vAccel error a status carries: (code, message, ffi errno).
pub fn err_of(st: &Status) -> (i32, String, i32) {
    (st.code, st.message.clone(), proto::errno_of(st))
}
