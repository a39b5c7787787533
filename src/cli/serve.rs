//! `skiff serve`'s flags and entry point (the server is src/serve/).

use super::run::RunArgs;
use super::{refuse, report};
use crate::serve::ServeConfig;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::pool::WORKERS_MAX;

/// `skiff serve --listen ADDR [--workers N] [--max-body BYTES]
/// [--timeout MS] [--restore FILE] [run flags] KERNEL [ARGS...]`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to serve HTTP on (OpenFaaS: 0.0.0.0:8080).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve Prometheus metrics on this address (any path).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Guests kept ready, each serving one request at a time (at most 64).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub workers: usize,
    /// Largest request body accepted; larger gets 413.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    pub max_body: u64,
    /// Longest a request may take; longer gets 504 and its guest stopped.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub timeout: u64,
    /// Requests that may wait for a busy worker; more get 503.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub queue: usize,
    /// On SIGTERM, how long requests in flight may take to finish.
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub drain: u64,
    /// Let a function that asks for the next request (REQ_NEXT) keep its
    /// guest across requests: faster, but those requests share the guest's
    /// memory (one function only: a server serves one image).
    #[arg(long)]
    pub warm: bool,
    /// One worker process (and VM) per request, instead of workers that
    /// rewind their guest to the snapshot between requests: slower, but a
    /// guest that escaped KVM finds no earlier request in its process.
    #[arg(long)]
    pub fresh_process: bool,
    // With --restore (a run flag) every guest is restored from that
    // snapshot; without it each guest boots cold.
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn main(prog: &str, a: ServeArgs) -> i32 {
    if a.workers == 0 || a.workers > WORKERS_MAX {
        return refuse(prog, &format_args!("--workers must be 1 to {WORKERS_MAX}"));
    }
    if a.timeout == 0 {
        return refuse(prog, &"--timeout must be at least 1 ms");
    }
    let restore: Option<PathBuf> = a.run.restore.clone();
    if let Some(snap) = &restore {
        if let Err(e) = super::run::regular_file(snap) {
            return refuse(prog, &e);
        }
    }
    let run = match a.run.config_or_report(prog) {
        Ok(c) => c,
        Err(status) => return status,
    };
    if !run.devices.net.is_empty() {
        return refuse(
            prog,
            &"serve runs many guests at once: --net is not supported",
        );
    }
    let cfg = ServeConfig {
        listen: a.listen,
        metrics: a.metrics,
        workers: a.workers,
        max_body: a.max_body,
        timeout: Duration::from_millis(a.timeout),
        queue: a.queue,
        drain: Duration::from_millis(a.drain),
        restore,
        warm: a.warm,
        fresh_process: a.fresh_process,
    };
    match crate::serve::run(prog, cfg, run) {
        Ok(()) => 0,
        // Its reason is on stderr already.
        Err(crate::serve::ServeError::Function) => super::REFUSED,
        Err(e) => {
            report(prog, &e);
            super::REFUSED
        }
    }
}
