//! Plugins: one module per backend, all behind [`Plugin`]. A plugin
//! declares its type flags (for the session hint) and the ops it
//! implements; the default methods answer "unsupported", so a new op only
//! adds a default method here.

pub mod cpu;
pub mod cuda;
pub mod opencl;

use super::classify::{graph::Network, image::ImageError, model::Model};
use super::exec::Libraries;
use super::ops::{Exec, MinMax, Op, Sgemm};
use super::Resource;
use guest_abi::accel::{EINVAL, ENOENT, ENOTSUP, EPROTO};
use thiserror::Error;

/// The plugins an operator can name, in `--accel` spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    Cpu,
    OpenCl,
    Cuda,
    /// An agent over vAccel's RPC protocol (src/accel/remote/).
    Remote,
}

impl PluginKind {
    /// The plugins that run here (not [`PluginKind::Remote`]).
    pub const ALL: [PluginKind; 3] = [PluginKind::Cpu, PluginKind::OpenCl, PluginKind::Cuda];

    pub fn name(self) -> &'static str {
        match self {
            PluginKind::Cpu => "cpu",
            PluginKind::OpenCl => "opencl",
            PluginKind::Cuda => "cuda",
            PluginKind::Remote => "remote",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        let mut every = Self::ALL.into_iter().chain([PluginKind::Remote]);
        every.find(|k| k.name() == s)
    }

    /// Initialises the backend (device discovery, program builds); the
    /// reason it cannot run here otherwise.
    pub fn init(self) -> Result<Box<dyn Plugin>, Unavailable> {
        Ok(match self {
            PluginKind::Cpu => Box::new(cpu::Cpu),
            PluginKind::OpenCl => Box::new(opencl::OpenCl::new()?),
            PluginKind::Cuda => Box::new(cuda::Cuda::new()?),
            PluginKind::Remote => Box::new(super::remote::Remote::connect(
                &super::remote::RemoteConfig::default(),
            )?),
        })
    }
}

/// Why a plugin cannot run on this host (the operator sees it once).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Why a plugin failed one op; becomes the guest's errno.
#[derive(Debug, Error)]
pub enum PluginError {
    #[error("operation not implemented")]
    Unsupported,
    #[error("invalid argument")]
    Invalid,
    #[error("no such library or symbol")]
    NotFound,
    /// The guest's image is unusable: EINVAL, and this message on stderr.
    #[error("image: {0}")]
    BadImage(#[from] ImageError),
    /// A backend failure (OpenCL/CUDA error, EXEC function's non-zero
    /// return): EPROTO, and this message on stderr.
    #[error("{plugin}: {what}: {detail}")]
    Backend {
        plugin: &'static str,
        what: &'static str,
        detail: String,
    },
    /// The remote plugin's errno: the agent's vAccel error, EIO for a lost
    /// agent, EPROTO for a malformed reply.
    #[error("remote: errno {0}")]
    Remote(i32),
}

impl PluginError {
    pub fn errno(&self) -> i32 {
        match self {
            PluginError::Unsupported => ENOTSUP,
            PluginError::Invalid | PluginError::BadImage(_) => EINVAL,
            PluginError::NotFound => ENOENT,
            PluginError::Backend { .. } => EPROTO,
            PluginError::Remote(e) => *e,
        }
    }
}

/// One accelerator backend.
pub trait Plugin: std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// vAccel type flags (`PLUGIN_*`) matched against a session's hint.
    fn kind(&self) -> u32;
    /// Whether the plugin implements op number `op`.
    fn implements(&self, op: u8) -> bool;
    /// What runs it, for the operator's start-up note.
    fn describe(&self) -> String {
        self.name().to_string()
    }

    fn noop(&mut self) -> Result<(), PluginError> {
        Ok(())
    }
    fn sgemm(&mut self, _: &mut Sgemm<'_>) -> Result<(), PluginError> {
        Err(PluginError::Unsupported)
    }
    /// Returns (min, max) of the data.
    fn minmax(&mut self, _: &mut MinMax<'_>) -> Result<(f64, f64), PluginError> {
        Err(PluginError::Unsupported)
    }
    fn exec(&mut self, _: &mut Exec<'_>, _: &Libraries) -> Result<(), PluginError> {
        Err(PluginError::Unsupported)
    }
    /// Whether the plugin serves whole requests itself ([`Self::forward`]:
    /// the remote plugin, whose models and sessions live on an agent).
    fn forwards(&self) -> bool {
        false
    }
    /// Serves `op` for guest session `session` with its `resources` (all
    /// of the run's; the plugin picks the session's).
    fn forward(
        &mut self,
        _session: u32,
        _hint: u32,
        _resources: &[Resource],
        _op: &mut Op<'_>,
    ) -> Result<(), PluginError> {
        Err(PluginError::Unsupported)
    }
    /// The guest released `session`.
    fn release(&mut self, _session: u32) {}
    /// Builds `model`'s network on this backend (IMAGE_CLASSIFY), once.
    fn network(&mut self, _model: &Model) -> Result<Box<dyn Network>, PluginError> {
        Err(PluginError::Unsupported)
    }
}
