//! Per-exit tracing (`--trace`, or `SKIFF_LOG=trace`): each vCPU exit and
//! each hypercall with its decoded arguments and how long skiff took to
//! answer it, as `tracing` events printed to stderr.
//!
//! Off, this costs the hot path one relaxed load per call site (tracing's
//! global max level, which stays OFF until a subscriber is installed).
//!
//! A leaf: it takes what it prints as `Debug`, so the vCPU loop (and
//! anything else) may call it without this module knowing their types.

use std::fmt::Debug;
use std::time::Instant;

/// Installs the stderr subscriber if `flag` or `SKIFF_LOG` asks for it
/// (`SKIFF_LOG=trace` for every exit, `debug` for less). Returns whether
/// tracing is on.
pub fn init(flag: bool) -> bool {
    let level = match std::env::var("SKIFF_LOG").ok().as_deref() {
        _ if flag => tracing::Level::TRACE,
        Some("trace") => tracing::Level::TRACE,
        Some("debug") => tracing::Level::DEBUG,
        Some("info") => tracing::Level::INFO,
        Some("warn") => tracing::Level::WARN,
        _ => return false,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .try_init()
        .is_ok()
}

/// One vCPU exit.
#[inline]
pub fn exit(e: &impl Debug) {
    tracing::trace!(exit = ?e, "exit");
}

/// A hypercall about to be handled: its start time if tracing is on.
#[inline]
pub fn hypercall(req: &impl Debug) -> Option<Instant> {
    if tracing::enabled!(tracing::Level::TRACE) {
        tracing::trace!(request = ?req, "hypercall");
        Some(Instant::now())
    } else {
        None
    }
}

/// The hypercall's result and the time skiff took to answer it.
#[inline]
pub fn answered<T: Debug, E: Debug>(start: Option<Instant>, result: &Result<T, E>) {
    if let Some(t) = start {
        let us = t.elapsed().as_secs_f64() * 1e6;
        match result {
            Ok(c) => tracing::trace!(result = ?c, took_us = format_args!("{us:.1}"), "answered"),
            Err(e) => tracing::trace!(error = ?e, took_us = format_args!("{us:.1}"), "refused"),
        }
    }
}
