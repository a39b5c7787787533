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

use super::args::Out;
use super::handover::{HandOverError, Reader, Writer};
use super::ops::{Layout, Op};
use super::plugins::{OpContext, Plugin, PluginError, Unavailable};
use super::{Resource, ResourceData};
use crate::vaccel::addr::{self, Address};
use crate::vaccel::{proto, shm};
use client::{CallError, Client};
use guest_abi::accel::PLUGIN_REMOTE;
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
    resources: Vec<(i64, i64)>,
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
    fn sync(&mut self, i: usize, resources: &[&Resource]) -> Result<(), CallError> {
        let sid = self.sessions[i].id;
        let gone: Vec<(i64, i64)> = self.sessions[i]
            .resources
            .iter()
            .filter(|(l, _)| !resources.iter().any(|r| r.id == *l))
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
        for r in resources {
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
        let mut l = Layout::of(op, &self.libs);
        let (args, region) = self.client.genop(&mut request(sid, &mut l))?;
        write_back(&args, region, &mut l.write)
    }

    /// A vAccel agent does not know skiff's hand-over service.
    fn handover_failed(&self, e: CallError) -> HandOverError {
        let addr = self.addr.to_string();
        match e {
            CallError::Status { ref message, .. } if message.ends_with("does not exist") => {
                HandOverError::Unsupported(addr)
            }
            e => HandOverError::Agent {
                addr,
                err: e.to_string(),
            },
        }
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

/// The Genop request for an op's [`Layout`]: its read arguments (taken
/// out of the layout) and its write ones, borrowing the guest's checked
/// buffers (encoded from there straight to the socket).
pub fn request<'l>(sid: i64, l: &'l mut Layout<'_>) -> GenopRef<'l> {
    let write = l.write.iter().map(|o| ArgRef {
        ty: o.ty,
        custom: o.custom,
        bytes: Cow::Borrowed(&*o.bytes),
        shm: None,
    });
    GenopRef {
        session_id: sid,
        read: std::mem::take(&mut l.read),
        write: write.collect(),
    }
}

/// Copies a Genop reply's write arguments into the op's outputs (from the
/// shared region for those that name it), after checking that every one
/// has exactly its output's size.
pub fn write_back(
    args: &[(proto::Arg, &[u8])],
    region: Option<&shm::Region>,
    outs: &mut [Out<'_>],
) -> Result<(), CallError> {
    if args.len() != outs.len() {
        return Err(CallError::Malformed(format!(
            "{} write arguments for {}",
            args.len(),
            outs.len()
        )));
    }
    // Check every size before writing any guest buffer.
    let mut srcs = Vec::with_capacity(outs.len());
    for ((a, buf), o) in args.iter().zip(outs.iter()) {
        let len = o.bytes.len();
        let src = match a.shm_offset {
            None => Some(*buf),
            Some(off) if buf.is_empty() && a.size as usize == len => {
                region.and_then(|r| r.slice(off, len))
            }
            Some(_) => None,
        };
        match src {
            Some(b) if b.len() == len => srcs.push(b),
            _ => {
                return Err(CallError::Malformed(format!(
                    "a write argument of {} bytes for {len}",
                    a.size
                )))
            }
        }
    }
    for (src, o) in srcs.into_iter().zip(outs) {
        o.bytes.copy_from_slice(src);
    }
    Ok(())
}

impl Plugin for Remote {
    fn name(&self) -> &'static str {
        "remote"
    }
    fn kind(&self) -> u32 {
        PLUGIN_REMOTE
    }
    /// Every op of the table: the agent answers for its own plugins.
    fn implements(&self, o: u8) -> bool {
        super::ops::name(o).is_some()
    }
    /// Never called: [`Plugin::forward`] serves every op.
    fn run(&mut self, _: &mut Op<'_>, _: &OpContext<'_>) -> Result<(), PluginError> {
        Err(PluginError::Unsupported)
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
        resources: &[&Resource],
        op: &mut Op<'_>,
    ) -> Result<(), PluginError> {
        let r = self.session(session, hint).and_then(|i| {
            self.sync(i, resources)?;
            let sid = self.sessions[i].id;
            self.genop(sid, op)
        });
        r.map_err(|e| self.failed(e))
    }

    fn park(&mut self) -> Result<Vec<u8>, HandOverError> {
        let req = proto::ParkRequest::new();
        let r: proto::ParkResponse = self
            .client
            .call_in(crate::vaccel::HANDOVER, "Park", &req)
            .map_err(|e| self.handover_failed(e))?;
        let mut w = Writer::default();
        w.bytes(&r.token);
        w.u32(self.sessions.len() as u32);
        for s in &self.sessions {
            w.u32(s.local);
            w.i64(s.id);
            w.u32(s.resources.len() as u32);
            for &(l, a) in &s.resources {
                w.i64(l);
                w.i64(a);
            }
        }
        Ok(w.into_bytes())
    }

    fn claim(&mut self, state: &[u8]) -> Result<(), HandOverError> {
        let mut rd = Reader::new(state);
        let token = rd.bytes()?.to_vec();
        let mut sessions = Vec::new();
        for _ in 0..rd.count(16)? {
            let (local, id) = (rd.u32()?, rd.i64()?);
            let mut resources = Vec::new();
            for _ in 0..rd.count(16)? {
                resources.push((rd.i64()?, rd.i64()?));
            }
            sessions.push(RemoteSession {
                local,
                id,
                resources,
            });
        }
        rd.end()?;
        let req = proto::ClaimRequest {
            token,
            ..Default::default()
        };
        let _: proto::ClaimResponse = self
            .client
            .call_in(crate::vaccel::HANDOVER, "Claim", &req)
            .map_err(|e| self.handover_failed(e))?;
        self.sessions = sessions;
        Ok(())
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
