//! One connection to an agent, as vAccel's rpc client uses it: calls one at
//! a time, stream ids 1, 3, 5, ..., every read and write bounded by the
//! timeout. After a transport failure the connection is dropped and every
//! later call fails at once (EIO): a lost agent never hangs the caller.

use crate::vaccel::addr::{Address, Stream};
use crate::vaccel::frame::{self, FrameError};
use crate::vaccel::proto::{self, Arg, ArgRef, Encode, GenopRef};
use crate::vaccel::shm::{self, Region};
use guest_abi::accel::arg;
use protobuf::Message;
use std::ops::Range;
use std::os::fd::OwnedFd;

/// A Genop reply: its write arguments with their bytes (borrowed from the
/// reply frame), and the shared region when the call went through it.
pub type GenopReply<'a> = (Vec<(Arg, &'a [u8])>, Option<&'a Region>);
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
    shm: Shm,
}

/// The co-located fast path's state ([`shm`]).
#[derive(Debug)]
enum Shm {
    /// A unix socket: ask the agent at the first large Genop.
    Untried,
    /// Not a unix socket, or the agent does not offer it (vAccel's).
    Off,
    On(Region),
}

impl Client {
    /// Connects (a tcp connect within `timeout`); every call is bounded by
    /// `timeout` too.
    pub fn connect(addr: &Address, timeout: Duration) -> std::io::Result<Self> {
        let s = addr.connect_within(Some(timeout))?;
        s.set_timeouts(Some(timeout))?;
        let shm = match addr {
            Address::Unix(_) | Address::Abstract(_) => Shm::Untried,
            _ => Shm::Off,
        };
        Ok(Client {
            stream: Some(s),
            next: 1,
            timeout,
            buf: Vec::new(),
            shm,
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
        self.call_in(proto::SERVICE, method, req)
    }

    /// One call of another service than vAccel's (skiff's extensions).
    pub fn call_in<R: Message>(
        &mut self,
        service: &str,
        method: &str,
        req: &impl Encode,
    ) -> Result<R, CallError> {
        let (payload, _) = self.exchange(service, method, req, false)?;
        R::parse_from_bytes(&self.buf[payload]).map_err(|e| CallError::Malformed(e.to_string()))
    }

    /// A Genop; over a unix socket to a skiff agent, its large float
    /// arrays go through the shared region. Returns the reply's write
    /// arguments (their buffers borrowed from the reply frame) and the
    /// region its shared ones are in.
    pub fn genop(&mut self, req: &mut GenopRef<'_>) -> Result<GenopReply<'_>, CallError> {
        let big = |a: &ArgRef<'_>| {
            a.bytes.len() >= shm::MIN_ARG && matches!(a.ty, arg::FLOAT32_ARRAY | arg::FLOAT64_ARRAY)
        };
        let lens = req.read.iter().chain(&req.write).filter(|a| big(a));
        let (offs, need) = shm::layout(lens.map(|a| a.bytes.len()));
        let shared = !offs.is_empty() && self.region(need)?;
        let service = match &self.shm {
            Shm::On(region) if shared => {
                let args = req.read.iter_mut().chain(req.write.iter_mut());
                for (a, off) in args.filter(|a| big(a)).zip(offs) {
                    let dst = region.slice_mut(off, a.bytes.len());
                    dst.ok_or_else(|| CallError::Malformed("shared region too small".into()))?
                        .copy_from_slice(&a.bytes);
                    a.shm = Some(off);
                }
                shm::SERVICE
            }
            _ => proto::SERVICE,
        };
        let (payload, _) = self.exchange(service, "Genop", req, false)?;
        let args = proto::reply_args(&self.buf[payload]);
        let args = args.map_err(|e| CallError::Malformed(e.to_string()))?;
        let region = match &self.shm {
            Shm::On(r) if shared => Some(r),
            _ => None,
        };
        Ok((args, region))
    }

    /// Makes sure the shared region has `need` bytes: false if the fast
    /// path is off (then the caller uses vAccel's protocol).
    fn region(&mut self, need: u64) -> Result<bool, CallError> {
        let have = match &self.shm {
            Shm::Off => return Ok(false),
            Shm::On(r) if r.len() as u64 >= need => return Ok(true),
            Shm::On(r) => r.len() as u64,
            Shm::Untried => 0,
        };
        let size = need.max(2 * have).next_multiple_of(1 << 20);
        let req = proto::ShmAttachRequest {
            size,
            ..Default::default()
        };
        let r = self.exchange(shm::SERVICE, "Attach", &req, true);
        let (payload, fd) = match r {
            Ok(x) => x,
            // A vAccel agent: "does not exist"; or the agent refused the
            // size (over its frame limit): the wire protocol serves this
            // call, and a region it already gave keeps serving smaller ones.
            Err(CallError::Status { .. }) => {
                if have == 0 {
                    self.shm = Shm::Off;
                }
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let got = proto::ShmAttachResponse::parse_from_bytes(&self.buf[payload]).map(|r| r.size);
        let region = match (got, fd) {
            (Ok(n), Some(fd)) if n >= need => Region::map(&fd, n as usize, true).ok(),
            _ => None,
        };
        self.shm = region.map_or(Shm::Off, Shm::On);
        Ok(matches!(self.shm, Shm::On(_)))
    }

    /// Sends `method` of `service` with `req` and waits for the reply: the
    /// place of its payload in `self.buf` (the connection's reused receive
    /// buffer) on success, and the fd that came with it when `want_fd`.
    fn exchange(
        &mut self,
        service: &str,
        method: &str,
        req: &impl Encode,
        want_fd: bool,
    ) -> Result<(Range<usize>, Option<OwnedFd>), CallError> {
        let env = proto::service_envelope(service, method, req);
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
        let mut fd = None;
        let r = frame::write_envelope(s, id, frame::TYPE_REQUEST, &env)
            .map_err(FrameError::from)
            .and_then(|_| {
                if want_fd {
                    fd = peek_fd(s, self.timeout)?;
                }
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
        Ok((payload, fd))
    }
}

/// Waits (at most `t`) for the reply's first byte and takes the fd sent
/// with it (SCM_RIGHTS), leaving the bytes to be read as usual.
fn peek_fd(s: &Stream, t: Duration) -> Result<Option<OwnedFd>, FrameError> {
    s.set_timeouts(Some(t))?;
    let mut one = [0u8; 1];
    match shm::recv_with_fd(s.raw_fd(), &mut one, libc::MSG_PEEK) {
        Ok((0, _)) => Err(FrameError::Closed),
        Ok((_, fd)) => Ok(fd),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => Err(FrameError::TimedOut),
        Err(e) => Err(e.into()),
    }
}
