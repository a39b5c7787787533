//! One client connection: frames in, one request at a time, responses out.
//! Its sessions and resources live here and die with it.
//!
//! Memory per connection is bounded: one frame body (at most the agent's
//! frame limit, grown only as bytes arrive), its decoded message and the
//! aligned copies of its arguments, plus resource blobs capped at
//! [`RESOURCE_TOTAL_MAX`] and [`RESOURCES_MAX`] resources, [`SESSIONS_MAX`]
//! sessions.

use super::exec::{Buf, Done, Executor, Job};
use super::AgentConfig;
use crate::accel::remote::addr::{Address, Stream};
use crate::accel::remote::frame::{self, FrameError, Header};
use crate::accel::remote::proto::{self, *};
use crate::accel::remote::shm::{self, Region};
use crate::accel::{RESOURCES_MAX, RESOURCE_BYTES_MAX, RESOURCE_TOTAL_MAX, SESSIONS_MAX};
use guest_abi::accel::{arg, op, PLUGIN_ALL};
use protobuf::Message;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// A frame must be whole within this of its first byte (the default of
/// `--frame-timeout`).
pub const FRAME_TIME: Duration = Duration::from_secs(30);

/// Session and resource ids: from 1, per agent process, as vAccel's.
static NEXT_SESSION: AtomicI64 = AtomicI64::new(1);
static NEXT_RESOURCE: AtomicI64 = AtomicI64::new(1);

#[derive(Debug)]
enum Data {
    /// An operator's model (or data) file.
    File(PathBuf),
    Bytes(Vec<u8>),
    /// An operator's library (EXEC names it again per call).
    Lib,
}

#[derive(Debug)]
struct Resource {
    id: i64,
    kind: ResourceType,
    data: Data,
}

#[derive(Debug)]
struct Session {
    id: i64,
    hint: u32,
    resources: Vec<i64>,
}

/// Why a request failed: the Status the client gets.
pub type Failure = Status;

fn ffi(errno: i32) -> Failure {
    proto::ffi_status(errno)
}

/// A connection's state.
pub struct Conn<'a> {
    cfg: &'a AgentConfig,
    exec: &'a Executor,
    sessions: Vec<Session>,
    resources: Vec<Resource>,
    bytes: u64,
    /// skiff's co-located fast path ([`super::shm`]), once attached.
    region: Option<Arc<Region>>,
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
        self.sessions.is_empty() && self.resources.is_empty() && self.region.is_none()
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
                crate::accel::remote::shm::send_with_fd(s.raw_fd(), &f, fd)
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
            sessions: Vec::new(),
            resources: Vec::new(),
            bytes: 0,
            region: None,
        }
    }

    /// One request body to one response body.
    pub fn handle(&mut self, body: &[u8]) -> Vec<u8> {
        self.reply(body).into_body()
    }

    /// One request body to its response.
    pub fn reply(&mut self, body: &[u8]) -> Reply {
        // The payload is decoded from the frame itself: not copied first.
        let r = match proto::split::<Request>(body, 3) {
            Ok((req, p)) => self.dispatch(req, &body[p]),
            Err(e) => Err(status(
                CODE_INVALID_ARGUMENT,
                format!("cannot decode the request envelope: {e}"),
            )),
        };
        r.unwrap_or_else(|st| Reply::Body(error_response(st)))
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
        if req.service != SERVICE {
            return Err(unknown(&req));
        }
        let body = match req.method.as_str() {
            "CreateSession" => self.create(parse(p)?),
            "UpdateSession" => self.update(parse(p)?),
            "DestroySession" => self.destroy(parse(p)?),
            "RegisterResource" => self.register(parse(p)?),
            "UnregisterResource" => self.unregister(parse(p)?),
            "Genop" => return self.genop(parse(p)?, false).map(Reply::Genop),
            "ImageClassification" => self.classify(parse(p)?),
            _ => Err(unknown(&req)),
        };
        body.map(Reply::Body)
    }

    fn session(&mut self, id: i64) -> Result<&mut Session, Failure> {
        self.sessions
            .iter_mut()
            .find(|s| s.id == id)
            .ok_or_else(|| status(CODE_NOT_FOUND, format!("Unknown session {id}")))
    }

    fn create(&mut self, r: CreateSessionRequest) -> Result<Vec<u8>, Failure> {
        if r.flags & !PLUGIN_ALL != 0 {
            return Err(ffi(libc::EINVAL));
        }
        if self.sessions.len() >= SESSIONS_MAX {
            return Err(ffi(libc::ENOMEM));
        }
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        self.sessions.push(Session {
            id,
            hint: r.flags,
            resources: Vec::new(),
        });
        reply(&CreateSessionResponse {
            session_id: id,
            ..Default::default()
        })
    }

    fn update(&mut self, r: UpdateSessionRequest) -> Result<Vec<u8>, Failure> {
        let s = self.session(r.session_id)?;
        if r.flags & !PLUGIN_ALL != 0 {
            return Err(ffi(libc::EINVAL));
        }
        s.hint = r.flags;
        reply(&Empty::new())
    }

    fn destroy(&mut self, r: DestroySessionRequest) -> Result<Vec<u8>, Failure> {
        self.session(r.session_id)?;
        self.sessions.retain(|s| s.id != r.session_id);
        self.collect();
        reply(&Empty::new())
    }

    /// Drops resources no session holds any more.
    fn collect(&mut self) {
        let sessions = &self.sessions;
        let held = |id: i64| sessions.iter().any(|s| s.resources.contains(&id));
        let mut freed = 0;
        self.resources.retain(|r| {
            let keep = held(r.id);
            if !keep {
                if let Data::Bytes(b) = &r.data {
                    freed += b.len() as u64;
                }
            }
            keep
        });
        self.bytes -= freed;
    }

    /// An operator-allowed file for `path` (its NAME or its PATH).
    fn allowed(list: &[(String, PathBuf)], path: &str) -> Option<PathBuf> {
        list.iter()
            .find(|(n, p)| n == path || p.as_os_str() == path)
            .map(|(_, p)| p.clone())
    }

    fn register(&mut self, mut r: RegisterResourceRequest) -> Result<Vec<u8>, Failure> {
        let sid = r.session_id;
        self.session(sid)?;
        let id = if r.resource_id > 0 {
            let id = r.resource_id;
            if !self.resources.iter().any(|x| x.id == id) {
                return Err(status(CODE_NOT_FOUND, format!("Unknown resource {id}")));
            }
            id
        } else {
            let kind = r
                .resource_type
                .enum_value()
                .map_err(|_| ffi(libc::EINVAL))?;
            if self.resources.len() >= RESOURCES_MAX {
                return Err(ffi(libc::ENOMEM));
            }
            let data = self.resource_data(kind, &mut r)?;
            let id = NEXT_RESOURCE.fetch_add(1, Ordering::Relaxed);
            if let Data::Bytes(b) = &data {
                self.bytes += b.len() as u64;
            }
            self.resources.push(Resource { id, kind, data });
            id
        };
        let s = self.session(sid)?;
        if !s.resources.contains(&id) {
            s.resources.push(id);
        }
        reply(&RegisterResourceResponse {
            resource_id: id,
            ..Default::default()
        })
    }

    fn resource_data(
        &self,
        kind: ResourceType,
        r: &mut RegisterResourceRequest,
    ) -> Result<Data, Failure> {
        match (r.blobs.is_empty(), r.paths.as_slice()) {
            (false, _) if kind == ResourceType::LIB => Err(ffi(libc::EINVAL)), // no client code runs here
            (false, _) => {
                let n: u64 = r.blobs.iter().map(|b| b.data.len() as u64).sum();
                if n > RESOURCE_BYTES_MAX || self.bytes + n > RESOURCE_TOTAL_MAX {
                    return Err(ffi(libc::ENOMEM));
                }
                let mut v = Vec::new();
                v.try_reserve_exact(n as usize)
                    .map_err(|_| ffi(libc::ENOMEM))?;
                for b in &mut r.blobs {
                    v.append(&mut b.data);
                }
                Ok(Data::Bytes(v))
            }
            (true, [path]) => {
                let cfg = self.cfg;
                match kind {
                    ResourceType::LIB => Self::allowed(&cfg.accel.libs, path).map(|_| Data::Lib),
                    _ => Self::allowed(&cfg.accel.models, path).map(Data::File),
                }
                .ok_or(ffi(libc::ENOENT))
            }
            _ => Err(ffi(libc::EINVAL)),
        }
    }

    fn unregister(&mut self, r: UnregisterResourceRequest) -> Result<Vec<u8>, Failure> {
        let s = self.session(r.session_id)?;
        let id = r.resource_id;
        let Some(i) = s.resources.iter().position(|&x| x == id) else {
            return Err(status(CODE_NOT_FOUND, format!("Unknown resource {id}")));
        };
        s.resources.swap_remove(i);
        self.collect();
        reply(&Empty::new())
    }

    /// The session's hint and its first model file.
    fn session_state(&mut self, sid: i64) -> Result<(u32, Option<PathBuf>), Failure> {
        let s = self.session(sid)?;
        let (hint, held) = (s.hint, s.resources.clone());
        let model = self.resources.iter().find_map(|r| match &r.data {
            Data::File(p) if r.kind == ResourceType::MODEL && held.contains(&r.id) => {
                Some(p.clone())
            }
            _ => None,
        });
        Ok((hint, model))
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
        let (hint, model) = self.session_state(r.session_id)?;
        let region = self.region.clone().filter(|_| shared);
        let mut read = self.bufs(&mut r.read_args, region.as_ref())?;
        let write = self.bufs(&mut r.write_args, region.as_ref())?;
        drop(r);
        super::shm::disjoint(&read.iter().chain(&write).collect::<Vec<_>>())?;
        self.exec_library(&mut read)?;
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
    /// for the runtime. Any other stays unknown (ENOENT).
    fn exec_library(&self, read: &mut [Buf]) -> Result<(), Failure> {
        let is_exec = read.first().map(|b| b.bytes()) == Some(&[op::EXEC][..]);
        let Some(lib) = read.get_mut(1).filter(|_| is_exec) else {
            return Ok(());
        };
        let text = lib.bytes().strip_suffix(b"\0").unwrap_or(lib.bytes());
        let text = String::from_utf8_lossy(text).into_owned();
        let libs = &self.cfg.accel.libs;
        if let Some((name, _)) = libs
            .iter()
            .find(|(n, p)| *n == text || p.as_os_str() == text.as_str())
        {
            let mut v = name.as_bytes().to_vec();
            v.push(0);
            *lib = Buf::new(lib.ty, lib.custom, v).map_err(ffi)?;
        }
        Ok(())
    }

    fn run(
        &self,
        hint: u32,
        model: Option<PathBuf>,
        read: Vec<Buf>,
        write: Vec<Buf>,
    ) -> Result<Done, Failure> {
        let (tx, rx) = mpsc::channel();
        let job = Job {
            hint,
            model,
            read,
            write,
            reply: tx,
        };
        let gone = || status(CODE_INTERNAL, "the executor stopped".into());
        self.exec.submit(job).ok_or_else(gone)?;
        let done = rx.recv().map_err(|_| gone())?;
        done.result.map_err(ffi)?;
        Ok(done)
    }

    fn classify(&mut self, r: ImageClassificationRequest) -> Result<Vec<u8>, Failure> {
        let (hint, model) = self.session_state(r.session_id)?;
        let read = vec![
            Buf::new(arg::UINT8, 0, vec![op::IMAGE_CLASSIFY]).map_err(ffi)?,
            Buf::new(arg::BUFFER, 0, r.image).map_err(ffi)?,
        ];
        let write = vec![
            Buf::new(arg::UCHAR_ARRAY, 0, vec![0; 256]).map_err(ffi)?,
            Buf::new(arg::UCHAR_ARRAY, 0, vec![0; 4096]).map_err(ffi)?,
        ];
        let done = self.run(hint, model, read, write)?;
        let text = done.write[1].bytes();
        let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
        reply(&ImageClassificationResponse {
            tags: text[..end].to_vec(),
            ..Default::default()
        })
    }
}

/// vAccel's answer to an unknown service or method.
fn unknown(req: &Request) -> Failure {
    status(
        CODE_INVALID_ARGUMENT,
        format!("/{}/{} does not exist", req.service, req.method),
    )
}
