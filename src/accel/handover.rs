//! Handing a guest's accelerator sessions over for live migration (issue
//! 25). The guest holds session and resource ids; they must mean the same
//! on the destination. So the source's runtime writes its registry (ids,
//! hints, resources) into the hand-over bytes, and each remote plugin
//! parks its agent sessions at the agent under a random token (skiff's
//! `skiff.agent.Handover/Park`), which goes in the bytes too:
//!
//! - source: [`Accel::hand_over`] -> bytes carried in the migration stream;
//! - destination: [`Accel::claim`] (same agent): the runtime, its agent
//!   sessions claimed on its own connection ([`Accel::claim_here`] on one
//!   built already);
//! - a failed migration: [`Accel::take_back`] on the source claims them
//!   back. Unclaimed, parked sessions expire at the agent after 60 s.
//!
//! A local plugin's state (a GPU's buffers, the run's memfds) cannot
//! move: with sessions open and a local plugin configured, hand-over is
//! refused with the reason; a vAccel agent (no such service) likewise.
//!
//! The bytes: `SKIFFHO1`, then little-endian fields (see [`Writer`]);
//! reading them checks every length against what is left, so corrupt
//! bytes are an error, never a panic.

use super::config::AccelConfig;
use super::registry::{Ids, Registry, Session, LIMITS};
use super::{Accel, AccelError, Resource, ResourceData};
use std::path::PathBuf;
use thiserror::Error;

const MAGIC: &[u8; 8] = b"SKIFFHO1";

/// Why sessions could not be handed over or claimed.
#[derive(Debug, Error)]
pub enum HandOverError {
    #[error("accelerator sessions are open on plugin {0}, whose state cannot move")]
    Local(&'static str),
    #[error("the agent at {0} cannot hand sessions over (not a skiff agent)")]
    Unsupported(String),
    #[error("agent at {addr}: {err}")]
    Agent { addr: String, err: String },
    #[error("accelerator hand-over state: {0}")]
    Malformed(&'static str),
    #[error("accelerators are off here, but the guest has sessions")]
    Off,
    #[error("{0}")]
    Build(#[from] AccelError),
}

/// Little-endian fields, each byte string with its u64 length first.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn u32(&mut self, v: u32) {
        self.0.extend(v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend(v.to_le_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.0.extend((b.len() as u64).to_le_bytes());
        self.0.extend(b);
    }
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Reads what [`Writer`] wrote; any shortfall is [`HandOverError::Malformed`].
#[derive(Debug)]
pub struct Reader<'a>(&'a [u8]);

const SHORT: HandOverError = HandOverError::Malformed("truncated");

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Reader(b)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], HandOverError> {
        if self.0.len() < n {
            return Err(SHORT);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub fn u32(&mut self) -> Result<u32, HandOverError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| SHORT)?,
        ))
    }
    pub fn i64(&mut self) -> Result<i64, HandOverError> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| SHORT)?,
        ))
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], HandOverError> {
        let n = u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| SHORT)?);
        self.take(usize::try_from(n).map_err(|_| SHORT)?)
    }
    /// A count of items each at least `min` bytes long (so a corrupt count
    /// cannot make a reader allocate more than the input).
    pub fn count(&mut self, min: usize) -> Result<usize, HandOverError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.len() {
            return Err(SHORT);
        }
        Ok(n)
    }
    pub fn end(&self) -> Result<(), HandOverError> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(HandOverError::Malformed("trailing bytes")),
        }
    }
}

const BYTES: u32 = 0;
const FILE: u32 = 1;
const LIB: u32 = 2;

fn write_registry(w: &mut Writer, reg: &Registry<ResourceData>) {
    let Ids::Run(next) = reg.ids() else {
        unreachable!("a run's registry has run ids")
    };
    w.u32(*next);
    w.u32(reg.sessions().len() as u32);
    for s in reg.sessions() {
        w.i64(s.id);
        w.u32(s.hint);
        w.u32(s.resources.len() as u32);
        for &r in &s.resources {
            w.i64(r);
        }
    }
    w.u32(reg.all().len() as u32);
    for r in reg.all() {
        w.i64(r.id);
        w.u32(r.kind);
        use std::os::unix::ffi::OsStrExt;
        let (tag, b): (u32, &[u8]) = match &r.data {
            ResourceData::Bytes(v) => (BYTES, v),
            ResourceData::File(p) => (FILE, p.as_os_str().as_bytes()),
            ResourceData::Lib(n) => (LIB, n.as_bytes()),
        };
        w.u32(tag);
        w.bytes(b);
    }
}

fn read_registry(rd: &mut Reader<'_>) -> Result<Registry<ResourceData>, HandOverError> {
    let next = rd.u32()?;
    let mut sessions = Vec::new();
    for _ in 0..rd.count(16)? {
        let (id, hint) = (rd.i64()?, rd.u32()?);
        let mut resources = Vec::new();
        for _ in 0..rd.count(8)? {
            resources.push(rd.i64()?);
        }
        sessions.push(Session {
            id,
            hint,
            resources,
        });
    }
    let mut resources = Vec::new();
    for _ in 0..rd.count(24)? {
        let (id, kind, tag) = (rd.i64()?, rd.u32()?, rd.u32()?);
        let b = rd.bytes()?;
        let text = || String::from_utf8(b.to_vec()).map_err(|_| HandOverError::Malformed("name"));
        let data = match tag {
            BYTES => ResourceData::Bytes(b.to_vec()),
            FILE => {
                use std::os::unix::ffi::OsStrExt;
                ResourceData::File(PathBuf::from(std::ffi::OsStr::from_bytes(b)))
            }
            LIB => ResourceData::Lib(text()?),
            _ => return Err(HandOverError::Malformed("resource type")),
        };
        let bytes = match &data {
            ResourceData::Bytes(v) => v.len() as u64,
            _ => 0,
        };
        resources.push(Resource {
            id,
            kind,
            bytes,
            data,
        });
    }
    Registry::from_parts(LIMITS, Ids::Run(next), sessions, resources)
        .ok_or(HandOverError::Malformed("sessions and resources disagree"))
}

impl Accel {
    /// Source side: parks the guest's remote sessions at their agent and
    /// returns the bytes [`Accel::claim`] (or [`Accel::take_back`]) needs.
    /// The guest must not run between this and either of those.
    pub fn hand_over(&mut self) -> Result<Vec<u8>, HandOverError> {
        let mut w = Writer::default();
        w.0.extend(MAGIC);
        write_registry(&mut w, &self.reg);
        self.movable()?;
        let busy = !self.reg.is_empty();
        let mut parked = Vec::new();
        for p in self.plugins.iter_mut().filter(|p| busy && p.forwards()) {
            match p.park() {
                Ok(state) => parked.push(state),
                Err(e) => {
                    self.reclaim(&parked);
                    return Err(e);
                }
            }
        }
        w.u32(parked.len() as u32);
        for s in &parked {
            w.bytes(s);
        }
        Ok(w.into_bytes())
    }

    /// Whether [`Accel::hand_over`] could move the sessions open now: not
    /// with a local plugin configured (a migration checks before it starts).
    pub fn movable(&self) -> Result<(), HandOverError> {
        let busy = !self.reg.is_empty();
        match self.plugins.iter().find(|p| busy && !p.forwards()) {
            Some(p) => Err(HandOverError::Local(p.name())),
            None => Ok(()),
        }
    }

    /// Source side, the migration failed: claims the parked sessions back
    /// on this runtime's own connections (its registry never changed).
    pub fn take_back(&mut self, token: &[u8]) -> Result<(), HandOverError> {
        let (_, states) = parse(token)?;
        self.claim_states(&states)
    }

    /// Destination side: the runtime `cfg` describes (the same agent),
    /// holding the guest's sessions and resources from `token`.
    pub fn claim(cfg: &AccelConfig, token: &[u8]) -> Result<Option<Accel>, HandOverError> {
        let (reg, states) = parse(token)?;
        let Some(mut a) = Accel::build(cfg)? else {
            return match reg.is_empty() {
                true => Ok(None),
                false => Err(HandOverError::Off),
            };
        };
        a.adopt(reg, &states)?;
        Ok(Some(a))
    }

    /// Destination side, on a runtime [`Accel::build`] made before the
    /// guest stopped (no session of its own): [`Accel::claim`] without
    /// the build, so connecting to the agent and loading models stay out
    /// of a migration's downtime.
    pub fn claim_here(&mut self, token: &[u8]) -> Result<(), HandOverError> {
        let (reg, states) = parse(token)?;
        if self.in_use() {
            return Err(HandOverError::Malformed(
                "this runtime has sessions of its own",
            ));
        }
        self.adopt(reg, &states)
    }

    fn adopt(
        &mut self,
        reg: Registry<ResourceData>,
        states: &[&[u8]],
    ) -> Result<(), HandOverError> {
        self.claim_states(states)?;
        self.reg = reg;
        Ok(())
    }

    /// The parked states, one per remote plugin in order.
    fn claim_states(&mut self, states: &[&[u8]]) -> Result<(), HandOverError> {
        let mut remotes = self.plugins.iter_mut().filter(|p| p.forwards());
        for s in states {
            let p = remotes.next().ok_or(HandOverError::Malformed(
                "more remote plugins than this runtime has",
            ))?;
            p.claim(s)?;
        }
        Ok(())
    }

    /// Best effort after a partial hand-over: claims back what was parked.
    fn reclaim(&mut self, parked: &[Vec<u8>]) {
        let states: Vec<&[u8]> = parked.iter().map(|s| &s[..]).collect();
        let _ = self.claim_states(&states);
    }
}

/// The registry and the parked states in `token`.
fn parse(token: &[u8]) -> Result<(Registry<ResourceData>, Vec<&[u8]>), HandOverError> {
    let mut rd = Reader::new(token);
    if rd.take(MAGIC.len())? != MAGIC {
        return Err(HandOverError::Malformed("not skiff's hand-over bytes"));
    }
    let reg = read_registry(&mut rd)?;
    Ok((reg, read_states(&mut rd)?))
}

fn read_states<'a>(rd: &mut Reader<'a>) -> Result<Vec<&'a [u8]>, HandOverError> {
    let mut states = Vec::new();
    for _ in 0..rd.count(8)? {
        states.push(rd.bytes()?);
    }
    rd.end()?;
    Ok(states)
}
