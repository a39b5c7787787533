//! A model a client sends as bytes (RegisterResource's blobs): parsed by
//! the classifier's model checks directly, then registered through one
//! connection's state as vAccel's client sends it (stored in a memfd,
//! built as a classifier when it passes, freed with the connection).
//! Never a panic; every reply a well-formed Response.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common/agent.rs"]
mod common;
use protobuf::Message;
use skiff::accel::classify::model::{sniff_bytes, Model};
use skiff::vaccel::proto::{self, *};
use skiff::agent::conn::Conn;
use skiff::agent::exec::Executor;
use skiff::agent::AgentConfig;
use std::sync::OnceLock;

fn agent() -> &'static (AgentConfig, Executor) {
    static A: OnceLock<(AgentConfig, Executor)> = OnceLock::new();
    A.get_or_init(|| common::agent("tcp://127.0.0.1:1", false))
}

fn call(conn: &mut Conn<'_>, method: &str, m: &impl Message) -> Response {
    let body = proto::request(method, m).unwrap();
    let r = Response::parse_from_bytes(&conn.handle(&body)).expect("a well-formed Response");
    assert!(r.status.is_some(), "a Response always carries a Status");
    r
}

fuzz_target!(|data: &[u8]| {
    let _ = sniff_bytes(data);
    let _ = Model::parse(data);
    let (cfg, exec) = agent();
    let mut conn = Conn::new(cfg, exec);
    let r = call(&mut conn, "CreateSession", &CreateSessionRequest::new());
    let sid = CreateSessionResponse::parse_from_bytes(&r.payload)
        .unwrap()
        .session_id;
    let reg = RegisterResourceRequest {
        session_id: sid,
        resource_type: ResourceType::MODEL.into(),
        blobs: vec![Blob {
            type_: BlobType::MAPPED.into(),
            data: data.to_vec(),
            size: data.len() as u32,
            ..Default::default()
        }],
        ..Default::default()
    };
    call(&mut conn, "RegisterResource", &reg);
    let img = ImageClassificationRequest {
        session_id: sid,
        image: b"\x89PNG\r\n\x1a\n".to_vec(),
        ..Default::default()
    };
    call(&mut conn, "ImageClassification", &img);
});
