//! A connection's resources: the operator's files (by NAME or PATH) and
//! what the client sent as bytes (RegisterResource's blobs, kept in
//! memfds: [`super::blob`]).
//!
//! - A MODEL sent as one safetensors blob is parsed here with the checks
//!   an `--accel-model` file gets, then built on the executor as a
//!   classifier the session's classify uses; any other model or data blob
//!   is kept as an opaque resource (as an operator's non-classifier file).
//! - A LIB sent as bytes is refused (EINVAL, with one line saying how to
//!   allow it) unless the operator started the agent with
//!   `--allow-client-libraries`: loading it runs the client's code here.
//! - The sessions and resources are the runtime's registry
//!   ([`crate::accel::registry`]), one per connection: its limits
//!   (sessions, resources, bytes each and together) and its rules (a
//!   resource lives while a session holds it), plus at most
//!   [`MODELS_MAX`] classifiers built from blobs. Everything is freed with
//!   the resource, or with the connection ([`Resources::clear`]).

use super::blob::Stored;
use super::exec::Executor;
use super::AgentConfig;
use crate::accel::classify::model::{self, Model};
use crate::accel::registry::{self, Ids, Registry, RegistryError, Session};
use crate::vaccel::proto::{self, *};
use guest_abi::accel::{RESOURCE_LIB, RESOURCE_MODEL};
use std::path::PathBuf;

/// Classifiers a connection may build from blobs (each holds its weights
/// once more per classifying plugin).
pub const MODELS_MAX: usize = 4;

type Failure = Status;

fn ffi(errno: i32) -> Failure {
    proto::ffi_status(errno)
}

/// vAccel's agent's answers: an unknown session or resource by name,
/// the rest as the errno.
impl From<RegistryError> for Status {
    fn from(e: RegistryError) -> Status {
        match e {
            RegistryError::UnknownSession(_) | RegistryError::UnknownResource(_) => {
                status(CODE_NOT_FOUND, e.to_string())
            }
            _ => ffi(e.errno()),
        }
    }
}

#[derive(Debug)]
enum Data {
    /// An operator's model (or data) file.
    File(PathBuf),
    /// An operator's library, by its NAME.
    Lib(String),
    /// The client's bytes; `loaded`: built on the executor (a classifier
    /// or a library) under [`client_name`].
    Blobs { blobs: Vec<Stored>, loaded: bool },
}

type Resource = registry::Resource<Data>;

/// The executor's name for what resource `id` built: never an operator's
/// NAME (those cannot hold '='), so a client cannot name it in an EXEC.
fn client_name(id: i64) -> String {
    format!("client={id}")
}

/// One connection's sessions and resources.
#[derive(Debug)]
pub struct Resources {
    reg: Registry<Data>,
    models: usize,
    /// The refused-library line is printed once per connection.
    told: bool,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            reg: Registry::new(registry::LIMITS, Ids::Process),
            models: 0,
            told: false,
        }
    }
}

impl Resources {
    /// No session and no resource (the connection may then be closed as
    /// idle).
    pub fn is_empty(&self) -> bool {
        self.reg.is_empty()
    }

    pub fn exists(&self, id: i64) -> bool {
        self.reg.get(id).is_some()
    }

    pub fn open(&mut self, hint: u32) -> Result<i64, Failure> {
        Ok(self.reg.open(hint)?)
    }

    pub fn session(&self, id: i64) -> Result<&Session, Failure> {
        Ok(self.reg.session(id)?)
    }

    pub fn set_hint(&mut self, id: i64, hint: u32) -> Result<(), Failure> {
        Ok(self.reg.set_hint(id, hint)?)
    }

    /// Closes session `id`, dropping what only it held.
    pub fn close(&mut self, id: i64, exec: &Executor) -> Result<(), Failure> {
        let gone = self.reg.close(id)?;
        self.dropped(gone, exec);
        Ok(())
    }

    /// Session `sid` takes the existing resource `id` as well.
    pub fn attach(&mut self, sid: i64, id: i64) -> Result<(), Failure> {
        Ok(self.reg.attach(sid, id)?)
    }

    /// Session `sid` lets resource `id` go (dropped if no session holds it).
    pub fn detach(&mut self, sid: i64, id: i64, exec: &Executor) -> Result<(), Failure> {
        let gone = self.reg.detach(sid, id)?;
        self.dropped(gone, exec);
        Ok(())
    }

    /// Creates a resource for session `sid` from the request's blobs,
    /// else its one path.
    pub fn create(
        &mut self,
        sid: i64,
        r: &mut RegisterResourceRequest,
        cfg: &AgentConfig,
        exec: &Executor,
    ) -> Result<i64, Failure> {
        let kind = r
            .resource_type
            .enum_value()
            .map_err(|_| ffi(libc::EINVAL))?;
        let ty = kind as u32;
        match (r.blobs.is_empty(), r.paths.as_slice()) {
            (false, _) => self.blobs(sid, kind, &mut r.blobs, cfg, exec),
            (true, []) => {
                self.reg.session(sid)?;
                self.reg.room(0)?;
                Err(status(
                    CODE_INVALID_ARGUMENT,
                    "No paths or blobs provided".into(),
                ))
            }
            (true, [path]) => {
                let a = &cfg.accel;
                let named = |list: &[(String, PathBuf)]| {
                    list.iter()
                        .find(|(n, p)| n == path || p.as_os_str() == path.as_str())
                        .cloned()
                };
                self.reg.add(sid, ty, 0, |_| {
                    match kind {
                        ResourceType::LIB => named(&a.libs).map(|(n, _)| Data::Lib(n)),
                        _ => named(&a.models).map(|(_, p)| Data::File(p)),
                    }
                    .ok_or(ffi(libc::ENOENT))
                })
            }
            _ => {
                self.reg.session(sid)?;
                self.reg.room(0)?;
                Err(ffi(libc::EINVAL))
            }
        }
    }

    /// Stores the client's blobs; builds a classifier or loads a library
    /// from them where that applies.
    fn blobs(
        &mut self,
        sid: i64,
        kind: ResourceType,
        blobs: &mut [Blob],
        cfg: &AgentConfig,
        exec: &Executor,
    ) -> Result<i64, Failure> {
        self.reg.session(sid)?;
        self.reg.room(0)?;
        if kind == ResourceType::LIB && !cfg.allow_client_libraries {
            if !self.told {
                self.told = true;
                let msg = "refused a library a client sent as bytes (EINVAL); start the agent with --allow-client-libraries to run trusted clients' code";
                crate::diag::line("skiff agent", &msg);
            }
            return Err(ffi(libc::EINVAL));
        }
        let mut n = 0u64;
        for b in blobs.iter() {
            if b.size as usize != b.data.len() {
                return Err(proto::conversion_status(&format!(
                    "blob size {} for {} bytes",
                    b.size,
                    b.data.len()
                )));
            }
            n += b.data.len() as u64;
        }
        let models = &mut self.models;
        self.reg.add(sid, kind as u32, n, |id| {
            let load = match (kind, &*blobs) {
                (ResourceType::MODEL, [b]) if model::sniff_bytes(&b.data) => {
                    if *models >= MODELS_MAX {
                        return Err(ffi(libc::ENOMEM));
                    }
                    let m = Model::parse(&b.data).map_err(|e| refused(id, "model", &e))?;
                    Some(Load::Model(Box::new(m)))
                }
                (ResourceType::LIB, [_]) => Some(Load::Lib),
                (ResourceType::LIB, _) => return Err(ffi(libc::EINVAL)),
                _ => None,
            };
            let name = client_name(id);
            let mut stored = Vec::with_capacity(blobs.len());
            for b in blobs.iter_mut() {
                stored.push(Stored::new(&b.data).map_err(|_| ffi(libc::ENOMEM))?);
                b.data = Vec::new(); // the request's copy goes now
            }
            let loaded = match load {
                None => false,
                Some(Load::Model(m)) => {
                    let r = exec.with(move |a| a.load_model(&name, *m));
                    r.unwrap_or_else(|| Err("the executor stopped".into()))
                        .map_err(|e| refused(id, "model", &e))?;
                    *models += 1;
                    true
                }
                Some(Load::Lib) => {
                    let path = stored[0].path();
                    let r =
                        exec.with(move |a| a.load_library(&name, &path).map_err(|e| e.to_string()));
                    r.unwrap_or_else(|| Err("the executor stopped".into()))
                        .map_err(|e| refused(id, "library", &e))?;
                    true
                }
            };
            Ok(Data::Blobs {
                blobs: stored,
                loaded,
            })
        })
    }

    /// Frees what the dropped resources built on the executor.
    fn dropped(&mut self, gone: Vec<Resource>, exec: &Executor) {
        for r in gone {
            if let Data::Blobs { loaded, .. } = &r.data {
                if *loaded {
                    if r.kind == RESOURCE_MODEL {
                        self.models -= 1;
                    }
                    let name = client_name(r.id);
                    exec.with(move |a| {
                        a.unload_model(&name);
                        a.unload_library(&name);
                    });
                }
            }
        }
    }

    /// Drops every session and resource (the connection ends).
    pub fn clear(&mut self, exec: &Executor) {
        let gone = self.reg.clear();
        self.dropped(gone, exec);
    }

    /// The classifier of the first MODEL session `sid` holds that is one
    /// (an operator's by NAME, or one built from a client's blob).
    pub fn classifier(&self, sid: i64, cfg: &AgentConfig) -> Option<String> {
        let models = &cfg.accel.models;
        self.reg.held(sid).find_map(|r| match (&r.data, r.kind) {
            (Data::File(p), RESOURCE_MODEL) => Some(models.iter().find(|(_, f)| f == p)?.0.clone()),
            (Data::Blobs { loaded: true, .. }, RESOURCE_MODEL) => Some(client_name(r.id)),
            _ => None,
        })
    }

    /// EXEC_WITH_RESOURCE's library `id` for a session holding `held`:
    /// the runtime's name for it, or vAccel's errno (ENOENT unknown,
    /// EINVAL not a library, EPERM not registered to the session).
    pub fn library(&self, id: i64, held: &[i64]) -> Result<String, i32> {
        let r = self.reg.get(id).ok_or(libc::ENOENT)?;
        if r.kind != RESOURCE_LIB {
            return Err(libc::EINVAL);
        }
        if !held.contains(&id) {
            return Err(libc::EPERM);
        }
        match &r.data {
            Data::Lib(name) => Ok(name.clone()),
            Data::Blobs { loaded: true, .. } => Ok(client_name(id)),
            _ => Err(libc::EINVAL),
        }
    }

    /// SyncResource: the client's blobs of resource `id`, as vAccel's
    /// agent returns them (data and size). An operator's file is not sent
    /// back: it stays the operator's.
    pub fn sync(&self, id: i64) -> Result<SyncResourceResponse, Failure> {
        let r = self.reg.get(id);
        let r = r.ok_or(RegistryError::UnknownResource(id))?;
        let mut out = SyncResourceResponse::new();
        if let Data::Blobs { blobs, .. } = &r.data {
            for b in blobs {
                out.blobs.push(Blob {
                    data: b.read().map_err(|_| ffi(libc::ENOMEM))?,
                    size: b.len() as u32,
                    ..Default::default()
                });
            }
        }
        Ok(out)
    }
}

/// What a blob resource builds on the executor.
enum Load {
    Model(Box<Model>),
    Lib,
}

/// A client's model or library that cannot be used: EINVAL, and why in
/// the agent's log (`-v`).
fn refused(id: i64, what: &str, why: &dyn std::fmt::Display) -> Failure {
    tracing::info!(resource = id, "refused the client's {what}: {why}");
    ffi(libc::EINVAL)
}
