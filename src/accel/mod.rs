//! The accelerator runtime: vAccel's model served through skiff's
//! AccelOp hypercall (wire format in `guest_abi::accel`).
//!
//! - [`config`]: the operator's flags; [`Accel::build`] starts the plugins
//!   in the builder, before the guest runs.
//! - sessions carry vAccel hint flags; resources (guest bytes under a size
//!   cap, or files the operator named) belong to a session.
//! - [`args`] checks the guest's argument arrays, [`ops`] decodes them per
//!   op, [`select`] picks the plugin, [`plugins`] run it.
//!
//! Guest mistakes come back as errno values in `ret`; only an unreadable
//! or unwritable argument struct ends the guest, as for every hypercall.

pub mod args;
pub mod classify;
pub mod config;
pub mod exec;
pub mod handover;
pub mod ops;
pub mod plugins;
pub mod registry;
pub mod remote;

use crate::hypercall::GuestFault;
use crate::memory::{Gpa, GuestMemory};
use args::Args;
use config::AccelConfig;
use exec::{LibError, Libraries};
use guest_abi::accel::*;
use ops::Op;
use plugins::{Plugin, PluginError};
use registry::Registry;
use std::path::PathBuf;
use thiserror::Error;

/// An errno value for the guest's `ret`.
pub type Errno = i32;

pub use registry::{RESOURCES_MAX, RESOURCE_BYTES_MAX, RESOURCE_TOTAL_MAX, SESSIONS_MAX};

/// Why the accelerator runtime could not start (operator errors: exit 1).
#[derive(Debug, Error)]
pub enum AccelError {
    #[error("--accel-model {name}={}: {err}", path.display())]
    Model {
        name: String,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error("{0}")]
    Lib(#[from] LibError),
    #[error("{0}")]
    Classifier(#[from] classify::ClassifierError),
}

/// What a resource holds.
#[derive(Debug)]
pub enum ResourceData {
    /// Bytes the guest passed (copied, capped).
    Bytes(Vec<u8>),
    /// The operator's `--accel-model` file.
    File(PathBuf),
    /// The operator's `--accel-lib` library, by name.
    Lib(String),
}

/// A guest's resource (its id is within u32: [`registry::Ids::Run`]).
pub type Resource = registry::Resource<ResourceData>;

/// The running accelerator runtime of one guest.
#[derive(Debug)]
pub struct Accel {
    plugins: Vec<Box<dyn Plugin>>,
    reg: Registry<ResourceData>,
    models: Vec<(String, PathBuf)>,
    lib_names: Vec<String>,
    libs: Libraries,
    classifiers: classify::Classifiers,
}

/// vAccel's rule: among the plugins implementing `op`, in the operator's
/// order, the first whose type matches the session's hint, else the first.
pub fn select(plugins: &[Box<dyn Plugin>], hint: u32, op: u8) -> Option<usize> {
    let mut serving = plugins.iter().enumerate().filter(|(_, p)| p.implements(op));
    let first = serving.clone().next()?.0;
    Some(
        serving
            .find(|(_, p)| p.kind() & hint != 0)
            .map_or(first, |(i, _)| i),
    )
}

impl Accel {
    /// Starts the configured plugins (an unavailable one is skipped with a
    /// note on stderr) and opens the operator's files; `None` when the
    /// operator did not enable accelerators.
    pub fn build(cfg: &AccelConfig) -> Result<Option<Self>, AccelError> {
        let Some(kinds) = &cfg.plugins else {
            return Ok(None);
        };
        for (name, path) in &cfg.models {
            // With an agent, a model may be a file only it has.
            if cfg.remote.is_some() && !path.exists() {
                continue;
            }
            let err = |err| AccelError::Model {
                name: name.clone(),
                path: path.clone(),
                err,
            };
            use std::os::unix::fs::OpenOptionsExt;
            // Non-blocking: a FIFO is refused below, not waited on.
            let meta = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .and_then(|f| f.metadata())
                .map_err(err)?;
            if !meta.is_file() {
                return Err(err(std::io::Error::other("not a regular file")));
            }
        }
        // With an agent, a library may be a file only it has (its PATH is
        // what an EXEC sends there).
        let local: Vec<_> = cfg
            .libs
            .iter()
            .filter(|(_, p)| cfg.remote.is_none() || p.exists())
            .cloned()
            .collect();
        let libs = Libraries::open(&local)?;
        let mut plugins = Vec::new();
        for k in kinds {
            let p = match (k, &cfg.remote) {
                (plugins::PluginKind::Remote, Some(r)) => remote::Remote::connect(r)
                    .map(|p| Box::new(p.with_libs(cfg.libs.clone())) as Box<dyn Plugin>),
                _ => k.init(),
            };
            match p {
                Ok(p) => plugins.push(p),
                Err(why) => {
                    let msg = format!("plugin {} unavailable: {why}; skipped", k.name());
                    crate::diag::line("skiff: accel", &msg);
                }
            }
        }
        let classifiers = classify::Classifiers::build(&cfg.models, &mut plugins)?;
        let mut a = Self::with_plugins(plugins);
        a.classifiers = classifiers;
        a.models = cfg.models.clone();
        a.lib_names = cfg.libs.iter().map(|(n, _)| n.clone()).collect();
        a.libs = libs;
        Ok(Some(a))
    }

    /// Whether the guest has a session or a resource open (state that
    /// lives here, outside guest memory: a snapshot cannot carry it).
    pub fn in_use(&self) -> bool {
        !self.reg.is_empty()
    }

    /// A runtime over these plugins, in priority order (tests, benches).
    pub fn with_plugins(plugins: Vec<Box<dyn Plugin>>) -> Self {
        Self {
            plugins,
            reg: Registry::new(registry::LIMITS, registry::Ids::Run(1)),
            models: Vec::new(),
            lib_names: Vec::new(),
            libs: Libraries::default(),
            classifiers: classify::Classifiers::default(),
        }
    }

    /// The plugins that started, in priority order.
    pub fn plugins(&self) -> &[Box<dyn Plugin>] {
        &self.plugins
    }

    /// The resources registered to `session`.
    pub fn resources(&self, session: u32) -> impl Iterator<Item = &Resource> {
        self.reg.held(session.into())
    }

    fn hint(&self, session: u32) -> Result<u32, Errno> {
        Ok(self.reg.session(session.into())?.hint)
    }

    /// Serves one request: fills its OUT fields.
    pub fn handle(&mut self, mem: &GuestMemory, req: &mut HcAccel) {
        req.plugin = 0;
        let r = match req.cmd {
            CMD_GENOP => self.genop(mem, req).map(|kind| req.plugin = kind),
            CMD_SESSION_INIT => self.session_init(req.flags).map(|id| req.session = id),
            CMD_SESSION_RELEASE => self.session_release(req.session),
            CMD_RESOURCE_REGISTER => self.register(mem, req).map(|id| req.resource = id),
            CMD_RESOURCE_UNREGISTER => self.unregister(req.session, req.resource),
            _ => Err(ENOTSUP),
        };
        req.ret = r.err().unwrap_or(OK);
    }

    fn session_init(&mut self, hint: u32) -> Result<u32, Errno> {
        // Run ids are within u32.
        Ok(self.reg.open(hint)? as u32)
    }

    fn session_release(&mut self, session: u32) -> Result<(), Errno> {
        self.hint(session)?;
        for p in &mut self.plugins {
            p.release(session);
        }
        self.reg.close(session.into())?;
        Ok(())
    }

    fn register(&mut self, mem: &GuestMemory, req: &HcAccel) -> Result<u32, Errno> {
        self.hint(req.session)?;
        if ![RESOURCE_LIB, RESOURCE_DATA, RESOURCE_MODEL].contains(&req.flags) {
            return Err(EINVAL);
        }
        let args = Args::decode(mem, req)?;
        let [src] = args.read() else {
            return Err(EINVAL);
        };
        if args.nr_write() != 0 {
            return Err(EINVAL);
        }
        let (session, kind) = (i64::from(req.session), req.flags);
        let id = match (src.ty, kind) {
            (arg::BUFFER, RESOURCE_LIB) => return Err(EINVAL), // never guest code on the host
            (arg::BUFFER, _) => {
                let n = src.bytes.len() as u64;
                self.reg.add(session, kind, n, |_| {
                    let mut v = Vec::new();
                    v.try_reserve_exact(src.bytes.len()).map_err(|_| ENOMEM)?;
                    v.extend_from_slice(src.bytes);
                    Ok::<_, Errno>(ResourceData::Bytes(v))
                })?
            }
            (arg::STRING, _) => {
                let name = src.string(ops::NAME_MAX)?;
                let (models, libs) = (&self.models, &self.lib_names);
                self.reg.add(session, kind, 0, |_| match kind {
                    RESOURCE_MODEL => {
                        let m = models.iter().find(|(n, _)| n.as_bytes() == name);
                        Ok(ResourceData::File(m.ok_or(ENOENT)?.1.clone()))
                    }
                    RESOURCE_LIB => {
                        let l = libs.iter().find(|n| n.as_bytes() == name);
                        Ok(ResourceData::Lib(l.ok_or(ENOENT)?.clone()))
                    }
                    _ => Err(ENOENT),
                })?
            }
            _ => return Err(EINVAL),
        };
        Ok(id as u32)
    }

    fn unregister(&mut self, session: u32, id: u32) -> Result<(), Errno> {
        self.reg.detach(session.into(), id.into())?;
        Ok(())
    }

    /// Returns the serving plugin's type flags.
    fn genop(&mut self, mem: &GuestMemory, req: &HcAccel) -> Result<u32, Errno> {
        let hint = self.hint(req.session)?;
        let mut args = Args::decode(mem, req)?;
        let mut op = ops::decode(&mut args)?;
        let i = select(&self.plugins, hint, op.number()).ok_or(ENOTSUP)?;
        if self.plugins[i].forwards() {
            let held: Vec<&Resource> = self.reg.held(req.session.into()).collect();
            let p = &mut self.plugins[i];
            p.forward(req.session, hint, &held, &mut op)
                .map_err(|e| e.errno())?;
            return Ok(p.kind());
        }
        let model = self.session_model(req.session);
        self.run_op(hint, model.as_deref(), &mut op)
    }

    /// Runs a decoded op on the plugin `hint` selects, here; `model` names
    /// the classifier a classify uses (an operator's model NAME, or one
    /// [`Accel::load_model`] added: skiff agent calls this for its
    /// clients). Returns the serving plugin's type flags.
    pub fn run_op(
        &mut self,
        hint: u32,
        model: Option<&str>,
        op: &mut Op<'_>,
    ) -> Result<u32, Errno> {
        let i = select(&self.plugins, hint, op.number()).ok_or(ENOTSUP)?;
        let r = match op {
            Op::Classify(c) => {
                let m = model.and_then(|n| self.classifiers.by_name(n));
                self.classifiers.run(m.ok_or(ENOENT)?, i, c)
            }
            _ => self.plugins[i].run(op, &plugins::OpContext { libs: &self.libs }),
        };
        r.map_err(|e| {
            if let PluginError::Backend { .. } | PluginError::BadImage(_) = e {
                crate::diag::line("skiff: accel", &e);
            }
            e.errno()
        })?;
        Ok(self.plugins[i].kind())
    }

    /// The classifier of the session's first classifier MODEL resource.
    fn session_model(&self, session: u32) -> Option<String> {
        self.resources(session).find_map(|r| match &r.data {
            ResourceData::File(p) if r.kind == RESOURCE_MODEL => {
                let name = &self.models.iter().find(|(_, f)| f == p)?.0;
                self.classifiers.by_name(name).map(|_| name.clone())
            }
            _ => None,
        })
    }

    /// Builds `m` as classifier `name` on this runtime's plugins (a model
    /// an agent's client sent as bytes, already parsed and checked).
    pub fn load_model(&mut self, name: &str, m: classify::model::Model) -> Result<(), String> {
        self.classifiers
            .add(name, m, &mut self.plugins)
            .map_err(|e| e.to_string())
    }

    /// Drops classifier `name` (its networks' memory).
    pub fn unload_model(&mut self, name: &str) {
        self.classifiers.remove(name);
    }

    /// Opens library `path` for EXEC as `name` (a client's library on an
    /// agent that allows them).
    pub fn load_library(&mut self, name: &str, path: &std::path::Path) -> Result<(), LibError> {
        self.libs.add(name, path)
    }

    /// Closes library `name`.
    pub fn unload_library(&mut self, name: &str) {
        self.libs.remove(name);
    }

    /// The operator's model files and libraries, by name (skiff agent).
    pub fn operator_files(&self) -> (&[(String, PathBuf)], &[String]) {
        (&self.models, &self.lib_names)
    }
}

/// The AccelOp hypercall: reads the request, serves it (ENOTSUP for
/// everything when accelerators are off), writes its OUT fields back.
pub fn hypercall(accel: Option<&mut Accel>, mem: &GuestMemory, arg: Gpa) -> Result<(), GuestFault> {
    let bad = |err| GuestFault::BadArgument {
        call: "ACCEL_OP",
        err,
    };
    let mut req: HcAccel = mem.read_obj(arg).map_err(bad)?;
    match accel {
        Some(a) => a.handle(mem, &mut req),
        None => {
            req.plugin = 0;
            req.ret = ENOTSUP;
        }
    }
    mem.write_obj(req, arg).map_err(bad)
}

#[cfg(test)]
mod tests;
