//! The accelerator flags of `skiff run` and `skiff agent`, parsed here and
//! validated by the library (`accel::config`).

use crate::accel::config::{AccelConfig, AccelConfigError, AccelFlags};
use clap::Args;

/// The flags, as `skiff run` and `skiff agent` take them.
#[derive(Debug, Default, Args)]
pub struct AccelArgs {
    /// Accelerator plugins in priority order (cpu, opencl, cuda, remote), e.g.
    /// --accel=cuda,opencl,cpu; default: $VACCEL_PLUGINS.
    #[arg(long = "accel", value_name = "PLUGINS")]
    pub accel: Option<String>,
    /// A model file the guest may register by NAME (repeatable).
    #[arg(long = "accel-model", value_name = "NAME=PATH")]
    pub models: Vec<String>,
    /// A host library whose functions the guest may EXEC by NAME (repeatable).
    #[arg(long = "accel-lib", value_name = "NAME=PATH")]
    pub libs: Vec<String>,
    /// The agent of --accel=remote: tcp://HOST:PORT, unix://PATH,
    /// unix://@NAME or vsock://CID:PORT; default: $VACCEL_RPC_ADDRESS,
    /// then $VACCEL_RPC_ADDR, then tcp://127.0.0.1:65500.
    #[arg(long = "accel-remote", value_name = "ADDR")]
    pub remote: Option<String>,
    /// Seconds a call to the remote agent may take before the guest gets
    /// EIO (default 60).
    #[arg(long = "accel-remote-timeout", value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub remote_timeout: Option<u64>,
}

impl AccelArgs {
    /// Validates the flags; `env` is `$VACCEL_PLUGINS`, used without `--accel`.
    pub fn into_config(self, env: Option<String>) -> Result<AccelConfig, AccelConfigError> {
        AccelFlags {
            accel: self.accel,
            models: self.models,
            libs: self.libs,
            remote: self.remote,
            remote_timeout: self.remote_timeout,
        }
        .into_config(env)
    }
}
