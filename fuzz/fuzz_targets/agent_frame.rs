//! `skiff agent`'s input on arbitrary bytes: frames (10-byte headers and
//! bodies, any lengths) read off a stream, each body decoded and served
//! by one connection's state with the real CPU plugin behind it, as any
//! network client can make it. Every reply must be a well-formed Response.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "common/agent.rs"]
mod common;
use protobuf::Message;
use skiff::vaccel::frame::{self, Timed};
use skiff::vaccel::proto::Response;
use skiff::agent::conn::Conn;
use skiff::agent::exec::Executor;
use skiff::agent::AgentConfig;
use std::io::{self, Cursor, Read, Write};
use std::sync::OnceLock;

struct Input<'a>(Cursor<&'a [u8]>);

impl Read for Input<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.read(b)
    }
}
impl Write for Input<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Timed for Input<'_> {
    fn set_read_timeout(&self, _: Option<std::time::Duration>) -> io::Result<()> {
        Ok(())
    }
}

fn agent() -> &'static (AgentConfig, Executor) {
    static A: OnceLock<(AgentConfig, Executor)> = OnceLock::new();
    A.get_or_init(|| common::agent("unix:///nonexistent/skiff-fuzz.sock", true))
}

fuzz_target!(|data: &[u8]| {
    let (cfg, exec) = agent();
    let mut conn = Conn::new(cfg, exec);
    let mut input = Input(Cursor::new(data));
    while let Ok((hd, body)) = frame::read_frame(&mut input, cfg.max_frame, None, None) {
        assert!(hd.len <= cfg.max_frame && body.len() == hd.len as usize);
        let reply = conn.handle(&body);
        let r = Response::parse_from_bytes(&reply).expect("a well-formed Response");
        assert!(r.status.is_some(), "a Response always carries a Status");
    }
});
