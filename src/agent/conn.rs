//! One client connection: frames in, one request at a time, responses out.
//! Its sessions and resources live here and die with it.
//!
//! Memory per connection is bounded: one frame body (at most the agent's
//! frame limit, grown only as bytes arrive), its decoded message and the
//! aligned copies of its arguments, plus its sessions and resources
//! (bounded in [`super::resource`]).
//!
//! Every AgentService method of vAccel 0.8 is answered as vAccel's agent
//! answers it: the TensorFlow, TFLite and Torch ones as for a plugin
//! without those ops (skiff has none). With `-v` (or `SKIFF_LOG=info`)
//! each call is one log line: method, session, op, status, duration.

use super::exec::{Buf, Done, Executor, Job};
use super::resource::Resources;
use super::AgentConfig;
use crate::vaccel::addr::{Address, Stream};
use crate::vaccel::frame::{self, FrameError, Header};
use crate::vaccel::proto::{self, *};
use crate::vaccel::shm::{self, Region};
use guest_abi::accel::{arg, op};
use protobuf::Message;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A frame must be whole within this of its first byte (the default of
/// `--frame-timeout`).
pub const FRAME_TIME: Duration = Duration::from_secs(30);

/// The reply buffers of the ImageClassification method: vAccel's agent
/// classifies into 1,024-byte buffers and returns the whole tag buffer
/// (its client copies the caller's length out of it).
const CLASSIFY_BUFFER: usize = 1024;

/// Why a request failed: the Status the client gets.
pub type Failure = Status;

fn ffi(errno: i32) -> Failure {
    proto::ffi_status(errno)
}

/// A connection's state.
pub struct Conn<'a> {
    cfg: &'a AgentConfig,
    exec: &'a Executor,
    /// Its sessions and resources.
    resources: Resources,
    /// skiff's co-located fast path ([`super::shm`]), once attached.
    region: Option<Arc<Region>>,
    /// The current call's session and op, for its log line.
    seen: (Option<i64>, Option<u8>),
}

impl Drop for Conn<'_> {
    /// A connection's resources go with it (classifiers and libraries
    /// built from its blobs too).
    fn drop(&mut self) {
        self.resources.clear(self.exec);
    }
}

/// A connection keeps its frame buffer between requests up to this size
/// (a steady stream of large frames then costs no fresh pages); a larger
/// one is freed after its request.
pub const KEEP_BUFFER: usize = 16 << 20;

/// Serves `s` until the client leaves, breaks the protocol, is idle too
/// long holding nothing, or the agent shuts the socket down.
pub fn serve(mut s: Stream, cfg: &AgentConfig, exec: &Executor, idle: &super::Idle) {
    let mut c = Conn::new(cfg, exec);
    let mut buf = Vec::new();
    loop {
        // Idle holding nothing: closed after --idle-timeout, or earlier to
        // make room (mod.rs). Holding a session, it waits: the session
        // would die with it.
        let empty = c.holds_nothing();
        if empty {
            idle.set();
        }
        let limit = empty.then_some(cfg.idle_timeout);
        let woke = super::readable(&s, limit);
        idle.clear();
        if !woke {
            break;
        }
        // From its first byte, the whole frame within --frame-timeout.
        let deadline = std::time::Instant::now() + cfg.frame_timeout;
        let r = frame::read_frame_into(&mut s, cfg.max_frame, Some(deadline), None, &mut buf);
        let hd = match r {
            Ok(x) => x,
            Err(FrameError::TooBig { len, max, stream }) => {
                // Say why before hanging up: the body is never read.
                let st = status(
                    CODE_RESOURCE_EXHAUSTED,
                    format!("frame of {len} bytes is over this agent's limit of {max}"),
                );
                let _ = respond(&mut s, stream, &error_response(st));
                break;
            }
            Err(_) => break,
        };
        if hd.kind != frame::TYPE_REQUEST {
            break;
        }
        let reply = c.reply(&buf[..hd.len as usize]);
        if buf.len() > KEEP_BUFFER {
            buf = Vec::new();
        }
        if reply.write(&mut s, hd.stream).is_err() {
            break;
        }
    }
    s.shutdown();
}

impl Conn<'_> {
    /// Nothing that closing the connection would lose.
    fn holds_nothing(&self) -> bool {
        self.resources.is_empty() && self.region.is_none()
    }
}

/// gRPC's RESOURCE_EXHAUSTED, for a frame over the limit.
const CODE_RESOURCE_EXHAUSTED: i32 = 8;

fn response_header(stream: u32, body: &[u8]) -> Header {
    Header {
        len: body.len() as u32,
        stream,
        kind: frame::TYPE_RESPONSE,
        flags: 0,
    }
}

fn respond(s: &mut Stream, stream: u32, body: &[u8]) -> std::io::Result<()> {
    frame::write_frame(s, response_header(stream, body), body)
}

/// A response: a body, or a Genop reply encoded straight to the socket
/// from its buffers (a large sgemm's result is not copied once more).
pub enum Reply {
    Body(Vec<u8>),
    Genop(GenopResponse),
    /// A body sent with an fd (the shared region: SCM_RIGHTS).
    WithFd(Vec<u8>, OwnedFd),
}

impl Reply {
    fn write(&self, s: &mut Stream, stream: u32) -> std::io::Result<()> {
        match self {
            Reply::Body(b) => respond(s, stream, b),
            Reply::Genop(g) => {
                frame::write_envelope(s, stream, frame::TYPE_RESPONSE, &ok_envelope(g))
            }
            Reply::WithFd(b, fd) => {
                let mut f = Vec::with_capacity(frame::HEADER_LEN + b.len());
                frame::write_frame(&mut f, response_header(stream, b), b)?;
                crate::vaccel::shm::send_with_fd(s.raw_fd(), &f, fd)
            }
        }
    }

    pub fn into_body(self) -> Vec<u8> {
        match self {
            Reply::Body(b) => b,
            Reply::Genop(g) => reply(&g).unwrap_or_else(error_response),
            Reply::WithFd(b, _) => b,
        }
    }
}

fn parse<M: Message>(payload: &[u8]) -> Result<M, Failure> {
    M::parse_from_bytes(payload).map_err(|e| {
        status(
            CODE_INVALID_ARGUMENT,
            format!("cannot decode the request: {e}"),
        )
    })
}

fn reply(m: &impl Message) -> Result<Vec<u8>, Failure> {
    ok_response(m).map_err(|e| status(CODE_INTERNAL, format!("cannot encode the reply: {e}")))
}

impl<'a> Conn<'a> {
    /// A fresh connection's state (also for decoding tests and the
    /// fuzzer, which feed [`Conn::handle`] without a socket).
    pub fn new(cfg: &'a AgentConfig, exec: &'a Executor) -> Self {
        Conn {
            cfg,
            exec,
            resources: Resources::default(),
            region: None,
            seen: (None, None),
        }
    }

    /// One request body to one response body.
    pub fn handle(&mut self, body: &[u8]) -> Vec<u8> {
        self.reply(body).into_body()
    }

    /// One request body to its response.
    pub fn reply(&mut self, body: &[u8]) -> Reply {
        let start = Instant::now();
        self.seen = (None, None);
        // The payload is decoded from the frame itself: not copied first.
        let (method, r) = match proto::split::<Request>(body, 3) {
            Ok((req, p)) => (req.method.clone(), self.dispatch(req, &body[p])),
            Err(e) => (
                String::new(),
                Err(status(
                    CODE_INVALID_ARGUMENT,
                    format!("cannot decode the request envelope: {e}"),
                )),
            ),
        };
        self.log(&method, r.as_ref().err(), start);
        r.unwrap_or_else(|st| Reply::Body(error_response(st)))
    }

    /// The call's log line (a no-op unless tracing is on: `-v`).
    fn log(&self, method: &str, err: Option<&Status>, start: Instant) {
        if !tracing::enabled!(tracing::Level::INFO) {
            return;
        }
        let (code, errno) = match err {
            None => (CODE_OK, None),
            Some(st) if st.code == CODE_INTERNAL => (st.code, Some(proto::errno_of(st))),
            Some(st) => (st.code, None),
        };
        let took_us = start.elapsed().as_micros() as u64;
        tracing::info!(
            method,
            session = self.seen.0,
            op = self.seen.1,
            status = code,
            errno,
            took_us,
            "call"
        );
    }

    fn dispatch(&mut self, req: Request, p: &[u8]) -> Result<Reply, Failure> {
        let local = matches!(self.cfg.address, Address::Unix(_) | Address::Abstract(_));
        if req.service == shm::SERVICE && local && self.cfg.shared_memory {
            return match req.method.as_str() {
                "Attach" => self.attach(parse(p)?),
                "Genop" => self.genop(parse(p)?, true).map(Reply::Genop),
                _ => Err(unknown(&req)),
            };
        }
        if req.service == super::handover::SERVICE {
            let exec = self.exec;
            return match req.method.as_str() {
                "Park" => {
                    let _: ParkRequest = parse(p)?;
                    reply(&super::handover::park(&mut self.resources, exec)?).map(Reply::Body)
                }
                "Claim" => {
                    let r: ClaimRequest = parse(p)?;
                    super::handover::claim(&mut self.resources, &r, exec)?;
                    reply(&ClaimResponse::new()).map(Reply::Body)
                }
                _ => Err(unknown(&req)),
            };
        }
        if req.service != SERVICE {
            return Err(unknown(&req));
        }
        let body = match req.method.as_str() {
            "CreateSession" => self.create(parse(p)?),
            "UpdateSession" => self.update(parse(p)?),
            "DestroySession" => self.destroy(parse(p)?),
            "RegisterResource" => self.register(parse(p)?),
            "UnregisterResource" => self.unregister(parse(p)?),
            "SyncResource" => self.sync(parse(p)?),
            "Genop" => return self.genop(parse(p)?, false).map(Reply::Genop),
            "ImageClassification" => self.classify(parse(p)?),
            // vAccel's agent with profiling off: no profiler, any session.
            "GetProfiler" => reply(&ProfilerResponse::new()),
            m => match lacked_model_method(m) {
                Some(what) => self.lacked(what, parse(p)?),
                None => Err(unknown(&req)),
            },
        };
        body.map(Reply::Body)
    }

    fn create(&mut self, r: CreateSessionRequest) -> Result<Vec<u8>, Failure> {
        let id = self.resources.open(r.flags)?;
        self.seen.0 = Some(id);
        reply(&CreateSessionResponse {
            session_id: id,
            ..Default::default()
        })
    }

    fn update(&mut self, r: UpdateSessionRequest) -> Result<Vec<u8>, Failure> {
        self.seen.0 = Some(r.session_id);
        self.resources.set_hint(r.session_id, r.flags)?;
        reply(&Empty::new())
    }

    fn destroy(&mut self, r: DestroySessionRequest) -> Result<Vec<u8>, Failure> {
        self.seen.0 = Some(r.session_id);
        self.resources.close(r.session_id, self.exec)?;
        reply(&Empty::new())
    }

    fn register(&mut self, mut r: RegisterResourceRequest) -> Result<Vec<u8>, Failure> {
        let sid = r.session_id;
        self.seen.0 = Some(sid);
        let id = if r.resource_id > 0 {
            self.resources.attach(sid, r.resource_id)?;
            r.resource_id
        } else {
            self.resources.create(sid, &mut r, self.cfg, self.exec)?
        };
        reply(&RegisterResourceResponse {
            resource_id: id,
            ..Default::default()
        })
    }

    fn unregister(&mut self, r: UnregisterResourceRequest) -> Result<Vec<u8>, Failure> {
        self.seen.0 = Some(r.session_id);
        let exec = self.exec;
        self.resources.detach(r.session_id, r.resource_id, exec)?;
        reply(&Empty::new())
    }

    fn sync(&mut self, r: SyncResourceRequest) -> Result<Vec<u8>, Failure> {
        reply(&self.resources.sync(r.resource_id)?)
    }

    /// A TensorFlow, TFLite or Torch method: vAccel's agent looks the
    /// model up, then the session, then fails in the plugin, which here
    /// never has the op (EOPNOTSUPP).
    fn lacked(&mut self, what: &str, r: ModelRequest) -> Result<Vec<u8>, Failure> {
        if !self.resources.exists(r.model_id) {
            let msg = format!("Unknown {what} {}", r.model_id);
            return Err(status(CODE_NOT_FOUND, msg));
        }
        self.seen.0 = Some(r.session_id);
        self.resources.session(r.session_id)?;
        Err(ffi(libc::EOPNOTSUPP))
    }

    /// The session's hint, resources and classifier.
    fn session_state(&mut self, sid: i64) -> Result<(u32, Vec<i64>, Option<String>), Failure> {
        self.seen.0 = Some(sid);
        let s = self.resources.session(sid)?;
        let (hint, held) = (s.hint, s.resources.clone());
        let model = self.resources.classifier(sid, self.cfg);
        Ok((hint, held, model))
    }

    /// skiff's SharedMemory/Attach: a fresh region for this connection
    /// (replacing any earlier one), its fd sent with the reply.
    fn attach(&mut self, r: ShmAttachRequest) -> Result<Reply, Failure> {
        let (region, fd) = super::shm::attach(&r, self.cfg.max_frame)?;
        let size = region.len() as u64;
        self.region = Some(Arc::new(region));
        let body = reply(&ShmAttachResponse {
            size,
            ..Default::default()
        })?;
        Ok(Reply::WithFd(body, fd))
    }

    /// vAccel's Genop; `shared`: skiff's, whose float arrays may be spans
    /// of the connection's region.
    fn genop(&mut self, mut r: GenopRequest, shared: bool) -> Result<GenopResponse, Failure> {
        let (hint, held, model) = self.session_state(r.session_id)?;
        let region = self.region.clone().filter(|_| shared);
        let mut read = self.bufs(&mut r.read_args, region.as_ref())?;
        let write = self.bufs(&mut r.write_args, region.as_ref())?;
        drop(r);
        super::shm::disjoint(&read.iter().chain(&write).collect::<Vec<_>>())?;
        self.seen.1 = read.first().and_then(|b| b.bytes().first().copied());
        self.exec_library(&mut read)?;
        self.exec_with_resource(&mut read, &held)?;
        let done = self.run(hint, model, read, write)?;
        Ok(GenopResponse {
            write_args: done
                .write
                .into_iter()
                .map(|b| Arg {
                    size: b.bytes().len() as u32,
                    arg_type: b.ty,
                    custom_type_id: b.custom,
                    shm_offset: b.shm_offset(),
                    // a shared output is already in the region
                    buf: match b.shm_offset() {
                        Some(_) => Vec::new(),
                        None => b.into_vec(),
                    },
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    /// Moves the client's arguments into aligned buffers, checking each
    /// size against its buffer as vAccel's agent does.
    fn bufs(&self, args: &mut [Arg], region: Option<&Arc<Region>>) -> Result<Vec<Buf>, Failure> {
        if args.len() > guest_abi::accel::ARGS_MAX as usize {
            return Err(ffi(libc::EINVAL));
        }
        let mut out = Vec::with_capacity(args.len());
        for a in args {
            if let (Some(off), Some(_)) = (a.shm_offset, region) {
                out.push(super::shm::span(a, off, region)?);
                continue;
            }
            if a.size as usize != a.buf.len() {
                return Err(proto::conversion_status(&format!(
                    "argument size {} for a buffer of {} bytes",
                    a.size,
                    a.buf.len()
                )));
            }
            if a.arg_type > arg::MAX {
                return Err(ffi(libc::EINVAL));
            }
            let b = std::mem::take(&mut a.buf);
            out.push(Buf::new(a.arg_type, a.custom_type_id, b).map_err(ffi)?);
        }
        Ok(out)
    }

    /// EXEC names its library by a path on this machine (or the
    /// operator's NAME): only the operator's `--accel-lib` ones, by NAME
    /// for the runtime. Any other is unknown (ENOENT): the runtime gets
    /// "=", no library's name (operators' cannot hold '=', clients' are
    /// `client=ID`), so no client names another's library.
    fn exec_library(&self, read: &mut [Buf]) -> Result<(), Failure> {
        let is_exec = read.first().map(|b| b.bytes()) == Some(&[op::EXEC][..]);
        let Some(lib) = read.get_mut(1).filter(|_| is_exec) else {
            return Ok(());
        };
        let text = lib.bytes().strip_suffix(b"\0").unwrap_or(lib.bytes());
        let text = String::from_utf8_lossy(text).into_owned();
        let libs = &self.cfg.accel.libs;
        let name = libs
            .iter()
            .find(|(n, p)| *n == text || p.as_os_str() == text.as_str())
            .map_or("=", |(n, _)| n.as_str());
        *lib = string_buf(lib.ty, name)?;
        Ok(())
    }

    /// EXEC_WITH_RESOURCE (read: op, INT64 library resource id, symbol,
    /// the function's inputs): the EXEC of the library the session
    /// registered, which is an operator's or (when allowed) the client's.
    fn exec_with_resource(&self, read: &mut [Buf], held: &[i64]) -> Result<(), Failure> {
        if read.first().map(|b| b.bytes()) != Some(&[op::EXEC_WITH_RESOURCE][..]) {
            return Ok(());
        }
        let id = match read.get(1) {
            Some(b) if b.ty == arg::INT64 => b.bytes().try_into().map(i64::from_le_bytes),
            _ => return Err(ffi(libc::EINVAL)),
        };
        let id = id.map_err(|_| ffi(libc::EINVAL))?;
        let name = self.resources.library(id, held).map_err(ffi)?;
        read[0] = Buf::new(arg::UINT8, 0, vec![op::EXEC]).map_err(ffi)?;
        read[1] = string_buf(arg::STRING, &name)?;
        Ok(())
    }

    fn run(
        &self,
        hint: u32,
        model: Option<String>,
        read: Vec<Buf>,
        write: Vec<Buf>,
    ) -> Result<Done, Failure> {
        let job = Job {
            hint,
            model,
            read,
            write,
        };
        let gone = || status(CODE_INTERNAL, "the executor stopped".into());
        let done = self.exec.submit(job).ok_or_else(gone)?;
        done.result.map_err(ffi)?;
        Ok(done)
    }

    fn classify(&mut self, r: ImageClassificationRequest) -> Result<Vec<u8>, Failure> {
        let (hint, _, model) = self.session_state(r.session_id)?;
        self.seen.1 = Some(op::IMAGE_CLASSIFY);
        let read = vec![
            Buf::new(arg::UINT8, 0, vec![op::IMAGE_CLASSIFY]).map_err(ffi)?,
            Buf::new(arg::BUFFER, 0, r.image).map_err(ffi)?,
        ];
        let write = vec![
            Buf::new(arg::UCHAR_ARRAY, 0, vec![0; CLASSIFY_BUFFER]).map_err(ffi)?,
            Buf::new(arg::UCHAR_ARRAY, 0, vec![0; CLASSIFY_BUFFER]).map_err(ffi)?,
        ];
        let mut done = self.run(hint, model, read, write)?;
        // The whole buffer, NUL-padded: never shorter than a caller's.
        let tags = done.write.pop().map(Buf::into_vec).unwrap_or_default();
        reply(&ImageClassificationResponse {
            tags,
            ..Default::default()
        })
    }
}

/// A string argument (NUL-terminated, as vAccel's).
fn string_buf(ty: u32, s: &str) -> Result<Buf, Failure> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    Buf::new(ty, 0, v).map_err(ffi)
}

/// The model methods of vAccel 0.8 skiff has no op for, with the words
/// vAccel's agent names their model by when it is unknown.
fn lacked_model_method(method: &str) -> Option<&'static str> {
    Some(match method {
        "TensorflowModelLoad" | "TensorflowModelUnload" | "TensorflowModelRun" => {
            "TensorFlow model"
        }
        "TensorflowLiteModelLoad" | "TensorflowLiteModelUnload" | "TensorflowLiteModelRun" => {
            "TensorFlow Lite model"
        }
        "TorchModelLoad" => "PyTorch model",
        "TorchModelRun" => "Py model", // sic: vAccel's agent says so
        _ => return None,
    })
}

/// vAccel's answer to an unknown service or method.
fn unknown(req: &Request) -> Failure {
    status(
        CODE_INVALID_ARGUMENT,
        format!("/{}/{} does not exist", req.service, req.method),
    )
}
