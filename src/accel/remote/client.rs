//! One connection to an agent, as vAccel's rpc client uses it: calls one at
//! a time, stream ids 1, 3, 5, ..., every read and write bounded by the
//! timeout. After a transport failure the connection is dropped and every
//! later call fails at once (EIO): a lost agent never hangs the caller.

use super::addr::{Address, Stream};
use super::frame::{self, FrameError};
use super::proto::{self, Encode};
use protobuf::Message;
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CallError {
    #[error("agent connection lost: {0}")]
    Transport(String),
    #[error("agent answered code {code}: {message}")]
    Status {
        code: i32,
        message: String,
        errno: i32,
    },
    #[error("malformed reply from the agent: {0}")]
    Malformed(String),
}

impl CallError {
    /// The caller's errno, as vAccel's client maps it.
    pub fn errno(&self) -> i32 {
        match self {
            CallError::Transport(_) => libc::EIO,
            CallError::Status { errno, .. } => *errno,
            CallError::Malformed(_) => libc::EPROTO,
        }
    }
}

#[derive(Debug)]
pub struct Client {
    stream: Option<Stream>,
    next: u32,
    timeout: Duration,
    /// Reply frames, reused: large replies cost no fresh pages per call.
    buf: Vec<u8>,
}

impl Client {
    /// Connects (a tcp connect within `timeout`); every call is bounded by
    /// `timeout` too.
    pub fn connect(addr: &Address, timeout: Duration) -> std::io::Result<Self> {
        let s = addr.connect_within(Some(timeout))?;
        s.set_timeouts(Some(timeout))?;
        Ok(Client {
            stream: Some(s),
            next: 1,
            timeout,
            buf: Vec::new(),
        })
    }

    fn lost(&mut self, why: impl std::fmt::Display) -> CallError {
        if let Some(s) = self.stream.take() {
            s.shutdown();
        }
        CallError::Transport(why.to_string())
    }

    /// One call: `method` with `req`, the reply decoded as `R`.
    pub fn call<R: Message>(&mut self, method: &str, req: &impl Encode) -> Result<R, CallError> {
        let payload = self.exchange(method, req)?;
        R::parse_from_bytes(payload).map_err(|e| CallError::Malformed(e.to_string()))
    }

    /// Sends `method` with `req` and waits for the reply: its payload (a
    /// slice of the connection's reused receive buffer) on success.
    fn exchange(&mut self, method: &str, req: &impl Encode) -> Result<&[u8], CallError> {
        let env = proto::request_envelope(method, req);
        if env.size() > u64::from(frame::VACCEL_MAX) {
            return Err(CallError::Malformed(format!(
                "request of {} bytes",
                env.size()
            )));
        }
        let id = self.next;
        let Some(s) = self.stream.as_mut() else {
            return Err(CallError::Transport(
                "closed after an earlier failure".into(),
            ));
        };
        let deadline = Instant::now() + self.timeout;
        let r = frame::write_envelope(s, id, frame::TYPE_REQUEST, &env)
            .map_err(FrameError::from)
            .and_then(|_| {
                let max = frame::VACCEL_MAX;
                frame::read_frame_into(s, max, Some(deadline), None, &mut self.buf)
            });
        let rh = match r {
            Ok(x) => x,
            Err(e) => return Err(self.lost(e)),
        };
        self.next = self.next.wrapping_add(2);
        if rh.stream != id || rh.kind != frame::TYPE_RESPONSE {
            return Err(self.lost(format!(
                "reply for stream {} type {} to stream {id}",
                rh.stream, rh.kind
            )));
        }
        let (status, payload) =
            match proto::split::<proto::Response>(&self.buf[..rh.len as usize], 2) {
                Ok((resp, p)) => (resp.status.into_option().unwrap_or_default(), p),
                Err(e) => return Err(self.lost(format!("bad Response: {e}"))),
            };
        if status.code != proto::CODE_OK {
            return Err(CallError::Status {
                code: status.code,
                errno: proto::errno_of(&status),
                message: status.message,
            });
        }
        Ok(&self.buf[payload])
    }
}
