//! The `remote` plugin (`--accel=remote`): forwards a guest's sessions,
//! resources and ops to a vAccel agent (`skiff agent` or vAccel's own
//! `vaccel-rpc-agent`) over vAccel's ttrpc protocol, as vAccel's rpc
//! plugin does. The guest's buffers are checked by the same decoders as
//! for local plugins before anything is sent ([`super::ops`]).
//!
//! Remote state is made lazily: a guest session becomes an agent session
//! at its first forwarded op, and its resources are registered (or
//! unregistered) on the agent just before each op. A lost or slow agent
//! is the guest's EIO after at most the timeout, then EIO at once.
//!
//! The wire format (addresses, frames, messages, the shared region) is
//! [`crate::vaccel`], which `skiff agent` shares; [`client`] is one
//! connection, one call at a time.

pub mod client;

use super::ops::{Exec, MinMax, Op, Sgemm};
use super::plugins::{Plugin, PluginError, Unavailable};
use super::{Resource, ResourceData};
use crate::vaccel::addr::{self, Address};
use crate::vaccel::{proto, shm};
use client::{CallError, Client};
use guest_abi::accel::{arg, PLUGIN_REMOTE};
use proto::{ArgRef, GenopRef};
use std::borrow::Cow;
use std::time::Duration;

/// How long one call may take before the guest gets EIO.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the agent is and how long to wait for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    pub addr: Address,
    pub timeout: Duration,
}

impl RemoteConfig {
    /// vAccel's client order: the flag, then `VACCEL_RPC_ADDRESS`, then
    /// `VACCEL_RPC_ADDR`, then [`addr::DEFAULT`].
    pub fn resolve(
        flag: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
        timeout: Duration,
    ) -> Result<Self, addr::AddressError> {
        let text = flag
            .map(String::from)
            .or_else(|| env("VACCEL_RPC_ADDRESS"))
            .or_else(|| env("VACCEL_RPC_ADDR"))
            .unwrap_or_else(|| addr::DEFAULT.into());
        Ok(RemoteConfig {
            addr: text.parse()?,
            timeout,
        })
    }
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self::resolve(None, |k| std::env::var(k).ok(), DEFAULT_TIMEOUT).unwrap_or(RemoteConfig {
            addr: Address::Tcp(addr::DEFAULT["tcp://".len()..].into()),
            timeout: DEFAULT_TIMEOUT,
        })
    }
}

/// One guest session as the agent knows it.
#[derive(Debug)]
struct RemoteSession {
    local: u32,
    id: i64,
    /// (local resource id, agent resource id)
    resources: Vec<(u32, i64)>,
}

#[derive(Debug)]
pub struct Remote {
    client: Client,
    addr: Address,
    sessions: Vec<RemoteSession>,
    reported: bool,
    /// The run's `--accel-lib` NAME=PATH: an EXEC sends PATH, a path on
    /// the agent's host, which vAccel's agent dlopens (skiff's agent
    /// takes either).
    libs: Vec<(String, std::path::PathBuf)>,
}

impl Remote {
    /// Connects to the agent (before the guest runs, and before seccomp).
    pub fn connect(cfg: &RemoteConfig) -> Result<Self, Unavailable> {
        crate::vaccel::keep_buffers();
        let client = Client::connect(&cfg.addr, cfg.timeout)
            .map_err(|e| Unavailable(format!("cannot reach the agent at {}: {e}", cfg.addr)))?;
        Ok(Remote {
            client,
            addr: cfg.addr.clone(),
            sessions: Vec::new(),
            reported: false,
            libs: Vec::new(),
        })
    }

    /// The run's libraries, by NAME (see [`Remote::libs`]).
    pub fn with_libs(mut self, libs: Vec<(String, std::path::PathBuf)>) -> Self {
        self.libs = libs;
        self
    }

    /// The agent session of guest session `local`, created on first use.
    fn session(&mut self, local: u32, hint: u32) -> Result<usize, CallError> {
        if let Some(i) = self.sessions.iter().position(|s| s.local == local) {
            return Ok(i);
        }
        let req = proto::CreateSessionRequest {
            flags: hint,
            ..Default::default()
        };
        let r: proto::CreateSessionResponse = self.client.call("CreateSession", &req)?;
        self.sessions.push(RemoteSession {
            local,
            id: r.session_id,
            resources: Vec::new(),
        });
        Ok(self.sessions.len() - 1)
    }

    /// Makes the agent session's resources match the guest session's.
    fn sync(&mut self, i: usize, resources: &[Resource]) -> Result<(), CallError> {
        let local = self.sessions[i].local;
        let sid = self.sessions[i].id;
        let gone: Vec<(u32, i64)> = self.sessions[i]
            .resources
            .iter()
            .filter(|(l, _)| !resources.iter().any(|r| r.id == *l && r.session == local))
            .copied()
            .collect();
        for (l, rid) in gone {
            let req = proto::UnregisterResourceRequest {
                resource_id: rid,
                session_id: sid,
                ..Default::default()
            };
            self.sessions[i].resources.retain(|(x, _)| *x != l);
            let _: proto::Empty = self.client.call("UnregisterResource", &req)?;
        }
        for r in resources.iter().filter(|r| r.session == local) {
            if self.sessions[i].resources.iter().any(|(l, _)| *l == r.id) {
                continue;
            }
            let mut req = proto::RegisterResourceRequest {
                resource_type: protobuf::EnumOrUnknown::from_i32(r.kind as i32),
                session_id: sid,
                ..Default::default()
            };
            match &r.data {
                // The agent's operator allows model paths (or names).
                ResourceData::File(p) => req.paths.push(p.to_string_lossy().into_owned()),
                ResourceData::Bytes(b) => req.blobs.push(proto::Blob {
                    type_: proto::BlobType::BUFFER.into(),
                    name: format!("resource-{}", r.id),
                    data: b.clone(),
                    size: b.len() as u32,
                    ..Default::default()
                }),
                // EXEC names its library itself.
                ResourceData::Lib(_) => continue,
            }
            let resp: proto::RegisterResourceResponse =
                self.client.call("RegisterResource", &req)?;
            self.sessions[i].resources.push((r.id, resp.resource_id));
        }
        Ok(())
    }

    fn genop(&mut self, sid: i64, op: &mut Op<'_>) -> Result<(), CallError> {
        let (args, region) = self.client.genop(&mut genop_request(sid, op, &self.libs))?;
        write_back(&args, region, op)
    }

    fn failed(&mut self, e: CallError) -> PluginError {
        if let CallError::Transport(_) | CallError::Malformed(_) = e {
            if !self.reported {
                self.reported = true;
                crate::diag::line("skiff: accel", &format_args!("remote {}: {e}", self.addr));
            }
        }
        PluginError::Remote(e.errno())
    }
}

/// The Genop request for a decoded op: `read[0]` the op number, then the
/// op's arguments in vAccel's genop order, borrowing the guest's checked
/// buffers (encoded from there straight to the socket). An EXEC's library
/// NAME becomes its PATH in `libs`.
pub fn genop_request<'a>(
    sid: i64,
    op: &'a Op<'_>,
    libs: &'a [(String, std::path::PathBuf)],
) -> GenopRef<'a> {
    let mut req = GenopRef {
        session_id: sid,
        read: vec![owned(arg::UINT8, vec![op.number()])],
        write: Vec::new(),
    };
    let r = &mut req.read;
    let i64a = |v: usize| owned(arg::INT64, (v as i64).to_le_bytes().to_vec());
    match op {
        Op::Noop => {}
        Op::Sgemm(Sgemm {
            m,
            n,
            k,
            alpha,
            a,
            lda,
            b,
            ldb,
            beta,
            c,
            ldc,
        }) => {
            r.extend([i64a(*m), i64a(*n), i64a(*k)]);
            r.push(owned(arg::FLOAT32, alpha.to_le_bytes().to_vec()));
            r.push(borrowed(arg::FLOAT32_ARRAY, 0, as_bytes(a)));
            r.push(i64a(*lda));
            r.push(borrowed(arg::FLOAT32_ARRAY, 0, as_bytes(b)));
            r.push(i64a(*ldb));
            r.push(owned(arg::FLOAT32, beta.to_le_bytes().to_vec()));
            r.push(i64a(*ldc));
            req.write.push(borrowed(arg::FLOAT32_ARRAY, 0, as_bytes(c)));
        }
        Op::MinMax(MinMax {
            data,
            low,
            high,
            out,
            min,
            max,
        }) => {
            let i32a = |v: i32| owned(arg::INT32, v.to_le_bytes().to_vec());
            r.push(borrowed(arg::FLOAT64_ARRAY, 0, as_bytes(data)));
            r.extend([i32a(data.len() as i32), i32a(*low), i32a(*high)]);
            let w = &mut req.write;
            w.push(borrowed(arg::FLOAT64_ARRAY, 0, as_bytes(out)));
            w.push(borrowed(arg::FLOAT64, 0, &min[..]));
            w.push(borrowed(arg::FLOAT64, 0, &max[..]));
        }
        Op::Exec(e) => exec_args(e, libs, &mut req),
        Op::Classify(c) => {
            r.push(borrowed(arg::BUFFER, 0, c.image));
            let w = &mut req.write;
            w.push(borrowed(arg::UCHAR_ARRAY, 0, c.imgname));
            w.push(borrowed(arg::UCHAR_ARRAY, 0, c.text));
        }
    }
    req
}

/// Copies a Genop reply's write arguments into the op's outputs (from the
/// shared region for those that name it), after checking that every one
/// has exactly its output's size.
pub fn write_back(
    args: &[(proto::Arg, &[u8])],
    region: Option<&shm::Region>,
    op: &mut Op<'_>,
) -> Result<(), CallError> {
    let mut outs: Vec<&mut [u8]> = Vec::new();
    match op {
        Op::Noop => {}
        Op::Sgemm(s) => outs.push(as_bytes_mut(s.c)),
        Op::MinMax(m) => {
            outs.push(as_bytes_mut(m.out));
            outs.push(&mut m.min[..]);
            outs.push(&mut m.max[..]);
        }
        Op::Exec(e) => outs.extend(e.outputs().iter_mut().map(|o| &mut *o.bytes)),
        Op::Classify(c) => {
            outs.push(c.imgname);
            outs.push(c.text);
        }
    }
    if args.len() != outs.len() {
        return Err(CallError::Malformed(format!(
            "{} write arguments for {}",
            args.len(),
            outs.len()
        )));
    }
    // Check every size before writing any guest buffer.
    let mut srcs = Vec::with_capacity(outs.len());
    for ((a, buf), o) in args.iter().zip(&outs) {
        let src = match a.shm_offset {
            None => Some(*buf),
            Some(off) if buf.is_empty() && a.size as usize == o.len() => {
                region.and_then(|r| r.slice(off, o.len()))
            }
            Some(_) => None,
        };
        match src {
            Some(b) if b.len() == o.len() => srcs.push(b),
            _ => {
                return Err(CallError::Malformed(format!(
                    "a write argument of {} bytes for {}",
                    a.size,
                    o.len()
                )))
            }
        }
    }
    for (src, o) in srcs.into_iter().zip(outs) {
        o.copy_from_slice(src);
    }
    Ok(())
}

fn exec_args<'a>(e: &'a Exec<'_>, libs: &[(String, std::path::PathBuf)], req: &mut GenopRef<'a>) {
    use std::os::unix::ffi::OsStrExt;
    let string = |s: &[u8]| {
        let mut v = s.to_vec();
        v.push(0);
        owned(arg::STRING, v)
    };
    let path = libs.iter().find(|(n, _)| n.as_bytes() == e.library);
    req.read.push(string(
        path.map_or(e.library, |(_, p)| p.as_os_str().as_bytes()),
    ));
    req.read.push(string(e.symbol));
    for i in e.inputs() {
        req.read.push(borrowed(i.ty, i.custom, i.bytes));
    }
    for o in e.output_slices() {
        req.write.push(borrowed(o.0, o.1, o.2));
    }
}

fn borrowed(ty: u32, custom: u32, b: &[u8]) -> ArgRef<'_> {
    ArgRef {
        ty,
        custom,
        bytes: Cow::Borrowed(b),
        shm: None,
    }
}

fn owned(ty: u32, b: Vec<u8>) -> ArgRef<'static> {
    ArgRef {
        ty,
        custom: 0,
        bytes: Cow::Owned(b),
        shm: None,
    }
}

fn as_bytes<T: super::args::bytemuck_lite::Pod>(v: &[T]) -> &[u8] {
    // SAFETY: plain numbers viewed as their bytes, same extent.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

fn as_bytes_mut<T: super::args::bytemuck_lite::Pod>(v: &mut [T]) -> &mut [u8] {
    // SAFETY: as above; every byte pattern is a valid T (Pod), and `v` is
    // borrowed mutably for the result's lifetime.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), std::mem::size_of_val(v)) }
}

impl Plugin for Remote {
    fn name(&self) -> &'static str {
        "remote"
    }
    fn kind(&self) -> u32 {
        PLUGIN_REMOTE
    }
    fn implements(&self, o: u8) -> bool {
        super::ops::spec(o).is_some()
    }
    fn describe(&self) -> String {
        format!("remote agent at {}", self.addr)
    }
    fn forwards(&self) -> bool {
        true
    }

    fn forward(
        &mut self,
        session: u32,
        hint: u32,
        resources: &[Resource],
        op: &mut Op<'_>,
    ) -> Result<(), PluginError> {
        let r = self.session(session, hint).and_then(|i| {
            self.sync(i, resources)?;
            let sid = self.sessions[i].id;
            self.genop(sid, op)
        });
        r.map_err(|e| self.failed(e))
    }

    fn release(&mut self, session: u32) {
        let Some(i) = self.sessions.iter().position(|s| s.local == session) else {
            return;
        };
        let s = self.sessions.swap_remove(i);
        let req = proto::DestroySessionRequest {
            session_id: s.id,
            ..Default::default()
        };
        let _ = self.client.call::<proto::Empty>("DestroySession", &req);
    }
}

#[cfg(test)]
mod tests;
