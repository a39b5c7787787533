//! Sessions and resources: one type, with one set of limits and rules,
//! for a local run ([`super::Accel`]: the guest's) and for each of
//! `skiff agent`'s connections (`agent/resource.rs`: a client's).
//!
//! - A session carries vAccel hint flags (only `PLUGIN_*` bits).
//! - A resource is registered to a session; a session may also take one
//!   registered before (vAccel's agent allows it), so a resource is held
//!   by one or more sessions, and is dropped when none holds it any more
//!   (the caller gets what was dropped, to free what it built from it).
//! - Bounded: [`Limits`] sessions, resources, bytes per resource and in
//!   all ([`LIMITS`] by default, the same for both).
//!
//! What a resource holds (`R`) is each side's own: guest bytes or an
//! operator's file here, memfds and built classifiers on the agent.

use guest_abi::accel::{EINVAL, ENOENT, ENOMEM, PLUGIN_ALL};
use std::sync::atomic::{AtomicI64, Ordering};
use thiserror::Error;

/// What one registry may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub sessions: usize,
    pub resources: usize,
    /// Bytes one resource may hold.
    pub resource_bytes: u64,
    /// Bytes all resources may hold together.
    pub total_bytes: u64,
}

/// Most open sessions.
pub const SESSIONS_MAX: usize = 64;
/// Most registered resources (all sessions).
pub const RESOURCES_MAX: usize = 64;
/// Largest resource a guest or client may pass as bytes.
pub const RESOURCE_BYTES_MAX: u64 = 64 << 20;
/// Most bytes all resources may hold together.
pub const RESOURCE_TOTAL_MAX: u64 = 256 << 20;

/// The limits of a local run and of each agent connection.
pub const LIMITS: Limits = Limits {
    sessions: SESSIONS_MAX,
    resources: RESOURCES_MAX,
    resource_bytes: RESOURCE_BYTES_MAX,
    total_bytes: RESOURCE_TOTAL_MAX,
};

/// Where ids come from.
#[derive(Debug)]
pub enum Ids {
    /// One counter for sessions and resources, from 1 and within u32
    /// (the guest's ABI), per registry: a local run.
    Run(u32),
    /// Per process, sessions and resources apart, from 1 (as vAccel's
    /// agent numbers them): `skiff agent`.
    Process,
}

static NEXT_SESSION: AtomicI64 = AtomicI64::new(1);
static NEXT_RESOURCE: AtomicI64 = AtomicI64::new(1);

impl Ids {
    fn next(&mut self, process: &AtomicI64) -> i64 {
        match self {
            Ids::Run(next) => {
                let id = *next;
                *next = next.checked_add(1).unwrap_or(1);
                i64::from(id)
            }
            Ids::Process => process.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// Why a registry refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RegistryError {
    #[error("Unknown session {0}")]
    UnknownSession(i64),
    #[error("Unknown resource {0}")]
    UnknownResource(i64),
    #[error("hint flags outside vAccel's")]
    BadHint,
    #[error("over the limit of sessions, resources or bytes")]
    Full,
}

impl RegistryError {
    /// The errno a guest (or vAccel's client) gets.
    pub fn errno(self) -> i32 {
        match self {
            RegistryError::UnknownSession(_) | RegistryError::UnknownResource(_) => ENOENT,
            RegistryError::BadHint => EINVAL,
            RegistryError::Full => ENOMEM,
        }
    }
}

/// A guest's errno (`?` in the runtime's handlers).
impl From<RegistryError> for i32 {
    fn from(e: RegistryError) -> i32 {
        e.errno()
    }
}

#[derive(Debug)]
pub struct Session {
    pub id: i64,
    pub hint: u32,
    /// The resources it holds, in the order it took them.
    pub resources: Vec<i64>,
}

#[derive(Debug)]
pub struct Resource<R> {
    pub id: i64,
    /// vAccel's resource type (`RESOURCE_*`: LIB, DATA, MODEL).
    pub kind: u32,
    /// Bytes it holds against the limits.
    pub bytes: u64,
    pub data: R,
}

/// The sessions and resources of one guest or one agent connection.
#[derive(Debug)]
pub struct Registry<R> {
    limits: Limits,
    ids: Ids,
    sessions: Vec<Session>,
    resources: Vec<Resource<R>>,
    bytes: u64,
}

impl<R> Registry<R> {
    pub fn new(limits: Limits, ids: Ids) -> Self {
        Registry {
            limits,
            ids,
            sessions: Vec::new(),
            resources: Vec::new(),
            bytes: 0,
        }
    }

    /// A registry of these sessions and resources (a hand-over's); `None`
    /// if they disagree: a session holding an unknown resource, a resource
    /// no session holds, an id twice, or over the limits.
    pub fn from_parts(
        limits: Limits,
        ids: Ids,
        sessions: Vec<Session>,
        resources: Vec<Resource<R>>,
    ) -> Option<Self> {
        let known = |id: &i64| resources.iter().filter(|r| r.id == *id).count() == 1;
        let held = |id: i64| sessions.iter().any(|s| s.resources.contains(&id));
        let ids_once = sessions
            .iter()
            .all(|s| sessions.iter().filter(|t| t.id == s.id).count() == 1);
        let bytes: u64 = resources.iter().map(|r| r.bytes).sum();
        let fits = sessions.len() <= limits.sessions
            && resources.len() <= limits.resources
            && bytes <= limits.total_bytes
            && resources.iter().all(|r| r.bytes <= limits.resource_bytes);
        let agree = sessions.iter().all(|s| s.resources.iter().all(known))
            && resources.iter().all(|r| held(r.id));
        (ids_once && fits && agree).then_some(Registry {
            limits,
            ids,
            sessions,
            resources,
            bytes,
        })
    }

    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    pub fn sessions(&self) -> &[Session] {
        &self.sessions
    }

    /// Every resource, in registration order.
    pub fn all(&self) -> &[Resource<R>] {
        &self.resources
    }

    /// No session and no resource.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.resources.is_empty()
    }

    /// Bytes the resources hold together.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Opens a session with hint flags `hint`.
    pub fn open(&mut self, hint: u32) -> Result<i64, RegistryError> {
        if hint & !PLUGIN_ALL != 0 {
            return Err(RegistryError::BadHint);
        }
        if self.sessions.len() >= self.limits.sessions {
            return Err(RegistryError::Full);
        }
        let id = self.ids.next(&NEXT_SESSION);
        self.sessions.push(Session {
            id,
            hint,
            resources: Vec::new(),
        });
        Ok(id)
    }

    pub fn session(&self, id: i64) -> Result<&Session, RegistryError> {
        let s = self.sessions.iter().find(|s| s.id == id);
        s.ok_or(RegistryError::UnknownSession(id))
    }

    fn session_mut(&mut self, id: i64) -> Result<&mut Session, RegistryError> {
        let s = self.sessions.iter_mut().find(|s| s.id == id);
        s.ok_or(RegistryError::UnknownSession(id))
    }

    /// Changes a session's hint flags.
    pub fn set_hint(&mut self, id: i64, hint: u32) -> Result<(), RegistryError> {
        let s = self.session_mut(id)?;
        if hint & !PLUGIN_ALL != 0 {
            return Err(RegistryError::BadHint);
        }
        s.hint = hint;
        Ok(())
    }

    /// Closes a session; returns the resources no session holds now.
    pub fn close(&mut self, id: i64) -> Result<Vec<Resource<R>>, RegistryError> {
        self.session(id)?;
        self.sessions.retain(|s| s.id != id);
        Ok(self.collect())
    }

    /// Whether one more resource of `bytes` fits.
    pub fn room(&self, bytes: u64) -> Result<(), RegistryError> {
        let l = &self.limits;
        if self.resources.len() >= l.resources
            || bytes > l.resource_bytes
            || self.bytes + bytes > l.total_bytes
        {
            return Err(RegistryError::Full);
        }
        Ok(())
    }

    /// Registers a new resource of `kind` holding `bytes` to `session`:
    /// checks the session and the room, then builds its data with its id.
    pub fn add<E: From<RegistryError>>(
        &mut self,
        session: i64,
        kind: u32,
        bytes: u64,
        data: impl FnOnce(i64) -> Result<R, E>,
    ) -> Result<i64, E> {
        self.session(session)?;
        self.room(bytes)?;
        let id = self.ids.next(&NEXT_RESOURCE);
        let data = data(id)?;
        self.resources.push(Resource {
            id,
            kind,
            bytes,
            data,
        });
        self.bytes += bytes;
        self.session_mut(session)?.resources.push(id);
        Ok(id)
    }

    /// `session` takes resource `id` as well (once).
    pub fn attach(&mut self, session: i64, id: i64) -> Result<(), RegistryError> {
        self.session(session)?;
        self.get(id).ok_or(RegistryError::UnknownResource(id))?;
        let s = self.session_mut(session)?;
        if !s.resources.contains(&id) {
            s.resources.push(id);
        }
        Ok(())
    }

    /// `session` lets resource `id` go; returns the resources no session
    /// holds now.
    pub fn detach(&mut self, session: i64, id: i64) -> Result<Vec<Resource<R>>, RegistryError> {
        let s = self.session_mut(session)?;
        let i = s.resources.iter().position(|&x| x == id);
        s.resources
            .swap_remove(i.ok_or(RegistryError::UnknownResource(id))?);
        Ok(self.collect())
    }

    pub fn get(&self, id: i64) -> Option<&Resource<R>> {
        self.resources.iter().find(|r| r.id == id)
    }

    /// The resources `session` holds, in registration order.
    pub fn held(&self, session: i64) -> impl Iterator<Item = &Resource<R>> {
        let held = self.session(session).map(|s| &s.resources[..]);
        let held = held.unwrap_or_default();
        self.resources.iter().filter(|r| held.contains(&r.id))
    }

    /// Closes every session; returns every resource.
    pub fn clear(&mut self) -> Vec<Resource<R>> {
        self.sessions.clear();
        self.collect()
    }

    /// Drops the resources no session holds.
    fn collect(&mut self) -> Vec<Resource<R>> {
        let sessions = &self.sessions;
        let held = |id: i64| sessions.iter().any(|s| s.resources.contains(&id));
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.resources)
            .into_iter()
            .partition(|r| held(r.id));
        self.resources = keep;
        self.bytes -= gone.iter().map(|r| r.bytes).sum::<u64>();
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Registry<()> {
        let limits = Limits {
            sessions: 2,
            resources: 2,
            resource_bytes: 10,
            total_bytes: 15,
        };
        Registry::new(limits, Ids::Run(1))
    }

    fn add(r: &mut Registry<()>, s: i64, n: u64) -> Result<i64, RegistryError> {
        r.add(s, 1, n, |_| Ok::<_, RegistryError>(()))
    }

    #[test]
    fn limits_and_ids() {
        let mut r = small();
        assert_eq!(r.open(PLUGIN_ALL + 1), Err(RegistryError::BadHint));
        let (a, b) = (r.open(0).unwrap(), r.open(0).unwrap());
        assert_eq!((a, b), (1, 2));
        assert_eq!(r.open(0), Err(RegistryError::Full));
        assert_eq!(add(&mut r, a, 11), Err(RegistryError::Full));
        assert_eq!(add(&mut r, a, 10), Ok(3));
        assert_eq!(add(&mut r, a, 6), Err(RegistryError::Full), "total");
        assert_eq!(add(&mut r, 9, 1), Err(RegistryError::UnknownSession(9)));
        assert_eq!(add(&mut r, b, 5), Ok(4));
        assert_eq!(add(&mut r, b, 0), Err(RegistryError::Full), "count");
        assert_eq!(r.bytes(), 15);
    }

    #[test]
    fn a_resource_lives_while_a_session_holds_it() {
        let mut r = small();
        let (a, b) = (r.open(0).unwrap(), r.open(0).unwrap());
        let x = add(&mut r, a, 4).unwrap();
        r.attach(b, x).unwrap();
        r.attach(b, x).unwrap(); // once
        assert_eq!(r.session(b).unwrap().resources, [x]);
        assert_eq!(r.attach(b, 99), Err(RegistryError::UnknownResource(99)));
        assert!(r.close(a).unwrap().is_empty(), "b still holds it");
        assert_eq!(r.held(b).count(), 1);
        assert_eq!(
            r.detach(b, 99).unwrap_err(),
            RegistryError::UnknownResource(99)
        );
        let gone = r.detach(b, x).unwrap();
        assert_eq!((gone.len(), gone[0].id, r.bytes()), (1, x, 0));
        r.close(b).unwrap();
        assert!(r.is_empty());
        assert_eq!(r.close(b).unwrap_err(), RegistryError::UnknownSession(b));
    }

    #[test]
    fn run_ids_stay_within_u32() {
        let mut r: Registry<()> = Registry::new(LIMITS, Ids::Run(u32::MAX));
        assert_eq!(r.open(0), Ok(i64::from(u32::MAX)));
        assert_eq!(r.open(0), Ok(1));
    }
}
