//! `skiff agent`: its flags and entry (the server is src/agent/).

use super::accel::AccelArgs;
use crate::agent::AgentConfig;
use crate::vaccel::addr::{self, Address};
use clap::Args;
use std::io::Write;

/// `skiff agent --address ADDR [--accel=PLUGINS] [--accel-model=NAME=PATH]
/// [--accel-lib=NAME=PATH]`
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where to listen: tcp://HOST:PORT, unix://PATH, unix://@NAME or
    /// vsock://CID:PORT.
    #[arg(short = 'a', long, value_name = "ADDR", default_value = addr::DEFAULT)]
    pub address: Address,
    /// Largest request frame accepted, in MiB (vAccel allows up to 1024).
    #[arg(long, value_name = "MIB", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_frame_mib: u32,
    /// Most clients connected at once; over it the longest-idle client
    /// holding no session is closed, else the new one.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_connections: u32,
    /// Most clients from one tcp address (as above, among its own).
    #[arg(long, value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_connections_per_peer: u32,
    /// A client holding no session is closed after this many seconds
    /// without a request.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout: u64,
    /// A request frame must be whole within this many seconds of its first
    /// byte (else the connection closes).
    #[arg(long, value_name = "SECS", default_value_t = crate::agent::conn::FRAME_TIME.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub frame_timeout: u64,
    /// Do not offer skiff clients on unix sockets the shared-memory fast
    /// path (they then use vAccel's protocol, as with any agent).
    #[arg(long)]
    pub no_shared_memory: bool,
    /// Load libraries that clients send as bytes, for EXEC_WITH_RESOURCE:
    /// this runs the client's code on this host, as this user. Only for
    /// clients you trust as you trust the agent's operator.
    #[arg(long)]
    pub allow_client_libraries: bool,
    /// One log line per call on stderr (method, session, op, status,
    /// duration); also SKIFF_LOG=info.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Plugins (default: $VACCEL_PLUGINS, else cpu), models and libraries
    /// the agent's clients may use.
    #[command(flatten)]
    pub accel: AccelArgs,
}

impl AgentArgs {
    pub fn into_config(
        mut self,
        env: Option<String>,
    ) -> Result<AgentConfig, crate::accel::config::AccelConfigError> {
        if self.accel.accel.is_none() && env.is_none() {
            self.accel.accel = Some("cpu".into());
        }
        Ok(AgentConfig {
            address: self.address,
            accel: self.accel.into_config(env)?,
            max_frame: self.max_frame_mib << 20,
            max_connections: self.max_connections as usize,
            max_connections_per_peer: self.max_connections_per_peer as usize,
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout),
            frame_timeout: std::time::Duration::from_secs(self.frame_timeout),
            shared_memory: !self.no_shared_memory,
            allow_client_libraries: self.allow_client_libraries,
        })
    }
}

pub fn main(prog: &str, a: AgentArgs) -> i32 {
    crate::trace::init(a.verbose);
    let cfg = match a.into_config(std::env::var("VACCEL_PLUGINS").ok()) {
        Ok(c) => c,
        Err(e) => {
            super::report(prog, &e);
            return 1;
        }
    };
    let ready = |addr: &Address, plugins: &str| {
        // stdout: the address (tcp: the real port), for whoever started us.
        let _ = writeln!(std::io::stdout(), "{addr}");
        let _ = std::io::stdout().flush();
        super::report(prog, &format_args!("agent: serving {addr} with {plugins}"));
    };
    match crate::agent::serve(cfg, ready) {
        // A stop signal N is 128+N, as for every subcommand (docs/cli.md).
        Ok(signal) => {
            super::report(prog, &format_args!("agent: stopped on signal {signal}"));
            128 + signal
        }
        Err(e) => {
            super::report(prog, &e);
            1
        }
    }
}
