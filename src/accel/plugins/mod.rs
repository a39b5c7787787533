//! Plugins: one module per backend, all behind [`Plugin`]. A plugin
//! declares its type flags (for the session hint) and lists the ops it
//! runs in [`runs!`], which writes its `implements`, `run` and `network`
//! from that one list: each listed op needs the plugin's [`Runs`] impl
//! for it (a compile error otherwise), and an op it does not list is
//! "unsupported".

pub mod cpu;
pub mod cuda;
pub mod opencl;

use super::classify::{graph::Network, image::ImageError, model::Model};
use super::exec::Libraries;
use super::handover::HandOverError;
use super::ops::{Classify, Noop, Op};
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

/// What an op may need of the runtime besides its arguments.
#[derive(Debug, Clone, Copy)]
pub struct OpContext<'a> {
    /// The operator's (and an agent's clients') libraries, for EXEC.
    pub libs: &'a Libraries,
}

/// A plugin runs op request type `O` (see [`runs!`]).
pub trait Runs<O> {
    fn run(&mut self, op: &mut O, cx: &OpContext<'_>) -> Result<(), PluginError>;
    /// IMAGE_CLASSIFY only: the network for `model` ([`Classifies`]).
    fn network(&mut self, _model: &Model) -> Result<Box<dyn Network>, PluginError> {
        Err(PluginError::Unsupported)
    }
}

/// NOOP does nothing, on every plugin that lists it.
impl<P: ?Sized> Runs<Noop<'_>> for P {
    fn run(&mut self, _: &mut Noop<'_>, _: &OpContext<'_>) -> Result<(), PluginError> {
        Ok(())
    }
}

/// A plugin that classifies builds each model's network once; the
/// runtime runs the networks ([`super::classify::Classifiers`]).
pub trait Classifies {
    fn network(&mut self, model: &Model) -> Result<Box<dyn Network>, PluginError>;
}

impl<P: Classifies> Runs<Classify<'_>> for P {
    /// Never called: the runtime classifies on the networks it built.
    fn run(&mut self, _: &mut Classify<'_>, _: &OpContext<'_>) -> Result<(), PluginError> {
        Err(PluginError::Unsupported)
    }
    fn network(&mut self, model: &Model) -> Result<Box<dyn Network>, PluginError> {
        Classifies::network(self, model)
    }
}

/// Inside `impl Plugin for P`: the ops P runs, by their row names in the
/// op table (`runs!(Noop, Sgemm)`). Writes `implements` (a listed op
/// that [`Plugin::offers`]), `run` (the op's [`Runs`] impl) and `network`
/// (from [`Classifies`] when `Classify` is listed).
macro_rules! runs {
    ($($v:ident),* $(,)?) => {
        fn implements(&self, o: u8) -> bool {
            (false $(|| o == $crate::accel::ops::$v::NUMBER)*) && self.offers(o)
        }

        fn run(
            &mut self,
            op: &mut $crate::accel::ops::Op<'_>,
            cx: &$crate::accel::plugins::OpContext<'_>,
        ) -> Result<(), $crate::accel::plugins::PluginError> {
            use $crate::accel::plugins::Runs;
            #[allow(unreachable_patterns)]
            match op {
                $( $crate::accel::ops::Op::$v(x) => Runs::run(self, x, cx), )*
                _ => Err($crate::accel::plugins::PluginError::Unsupported),
            }
        }

        fn network(
            &mut self,
            m: &$crate::accel::classify::model::Model,
        ) -> Result<
            Box<dyn $crate::accel::classify::graph::Network>,
            $crate::accel::plugins::PluginError,
        > {
            $( if $crate::accel::ops::$v::NUMBER == guest_abi::accel::op::IMAGE_CLASSIFY {
                return <Self as $crate::accel::plugins::Runs<$crate::accel::ops::$v<'_>>>::network(self, m);
            } )*
            let _ = m;
            Err($crate::accel::plugins::PluginError::Unsupported)
        }
    };
}
pub(crate) use runs;

/// One accelerator backend.
pub trait Plugin: std::fmt::Debug {
    fn name(&self) -> &'static str;
    /// vAccel type flags (`PLUGIN_*`) matched against a session's hint.
    fn kind(&self) -> u32;
    /// Whether the plugin implements op number `op` ([`runs!`] writes it).
    fn implements(&self, op: u8) -> bool;
    /// Runs a decoded op here ([`runs!`] writes it).
    fn run(&mut self, op: &mut Op<'_>, cx: &OpContext<'_>) -> Result<(), PluginError>;
    /// Of the ops it lists, whether this instance offers `op` (a GPU
    /// without a run-time compiler cannot classify).
    fn offers(&self, _op: u8) -> bool {
        true
    }
    /// What runs it, for the operator's start-up note.
    fn describe(&self) -> String {
        self.name().to_string()
    }
    /// Whether the plugin serves whole requests itself ([`Self::forward`]:
    /// the remote plugin, whose models and sessions live on an agent).
    fn forwards(&self) -> bool {
        false
    }
    /// Serves `op` for guest session `session`, which holds `resources`.
    fn forward(
        &mut self,
        _session: u32,
        _hint: u32,
        _resources: &[&Resource],
        _op: &mut Op<'_>,
    ) -> Result<(), PluginError> {
        Err(PluginError::Unsupported)
    }
    /// The guest released `session`.
    fn release(&mut self, _session: u32) {}
    /// Live migration: moves this plugin's sessions out of this process
    /// (the remote plugin parks them at its agent); the bytes that claim
    /// them ([`super::handover`]).
    fn park(&mut self) -> Result<Vec<u8>, HandOverError> {
        Err(HandOverError::Local(self.name()))
    }
    /// Takes the sessions [`Plugin::park`] moved (in this process or in
    /// another).
    fn claim(&mut self, _state: &[u8]) -> Result<(), HandOverError> {
        Err(HandOverError::Local(self.name()))
    }
    /// Builds `model`'s network on this backend (IMAGE_CLASSIFY), once
    /// ([`runs!`] writes it when the plugin lists `Classify`).
    fn network(&mut self, _model: &Model) -> Result<Box<dyn Network>, PluginError> {
        Err(PluginError::Unsupported)
    }
}
