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
/// [--timeout MS] [client limits] [--restore FILE] [run flags] KERNEL [ARGS...]`
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
    /// Requests from one client address that may wait for a worker (its
    /// share of --queue; default half of it); more get 503.
    #[arg(long, value_name = "N")]
    pub queue_per_peer: Option<usize>,
    /// Connections open at once; over it the longest-idle one is closed,
    /// or the new one refused (503) when none is idle.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub max_connections: usize,
    /// Connections open at once from one client address (as above, among
    /// that address's own).
    #[arg(long, value_name = "N", default_value_t = 128)]
    pub max_connections_per_peer: usize,
    /// A request's head must be in within this: from a new connection's
    /// opening, or a keep-alive one's first byte (later: 408, closed).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub header_timeout: u64,
    /// How long a keep-alive connection may wait for its next request.
    #[arg(long, value_name = "MS", default_value_t = 60_000)]
    pub idle_timeout: u64,
    /// A client must take some of its response within this of the last
    /// bytes it took (else closed, its guest stopped).
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub send_timeout: u64,
    /// A request body must be in within this of its head (later: 408).
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub body_timeout: u64,
    /// A body up to this size is read whole before its request takes a
    /// worker; a larger one takes a worker after this many bytes and
    /// streams the rest (still within --body-timeout).
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub body_buffer: usize,
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
    for (flag, ms) in [
        ("--timeout", a.timeout),
        ("--header-timeout", a.header_timeout),
        ("--idle-timeout", a.idle_timeout),
        ("--body-timeout", a.body_timeout),
        ("--send-timeout", a.send_timeout),
    ] {
        if ms == 0 {
            return refuse(prog, &format_args!("{flag} must be at least 1 ms"));
        }
    }
    for (flag, n) in [
        ("--max-connections", a.max_connections),
        ("--max-connections-per-peer", a.max_connections_per_peer),
        ("--queue-per-peer", a.queue_per_peer.unwrap_or(1)),
    ] {
        if n == 0 {
            return refuse(prog, &format_args!("{flag} must be at least 1"));
        }
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
        max_connections: a.max_connections,
        max_connections_per_peer: a.max_connections_per_peer,
        queue_per_peer: a.queue_per_peer.unwrap_or((a.queue / 2).max(1)),
        header_timeout: Duration::from_millis(a.header_timeout),
        idle_timeout: Duration::from_millis(a.idle_timeout),
        send_timeout: Duration::from_millis(a.send_timeout),
        body_timeout: Duration::from_millis(a.body_timeout),
        body_buffer: a.body_buffer,
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
