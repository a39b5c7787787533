//! `skiff pool`: guests restored from a snapshot, ready on a unix socket
//! (src/pool/).

use super::run::RunArgs;
use super::{refuse, report};
use crate::pool::{Pool, PoolError};
use clap::Args;
use std::path::PathBuf;

/// `skiff pool [--workers N] --socket PATH --restore FILE [run flags] KERNEL`
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// The unix socket to serve calls on (`skiff call PATH`).
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,
    /// How many restored guests to keep ready (1 to 64).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub workers: usize,
    /// One worker process (and VM) per request, instead of workers that
    /// rewind their guest to the snapshot between requests.
    #[arg(long)]
    pub fresh_process: bool,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn main(prog: &str, a: PoolArgs) -> i32 {
    let Some(snapshot) = a.run.restore.clone() else {
        return refuse(
            prog,
            &"pool needs --restore FILE (a snapshot made by skiff snapshot)",
        );
    };
    if let Err(e) = super::run::regular_file(&snapshot) {
        return refuse(prog, &e);
    }
    let cfg = match a.run.config_or_report(prog) {
        Ok(c) => c,
        Err(status) => return status,
    };
    let pool = Pool {
        prog,
        cfg: &cfg,
        snapshot: Some(&snapshot),
        socket: &a.socket,
        workers: a.workers,
        fresh_process: a.fresh_process,
    };
    let ready = || {
        report(
            prog,
            &format_args!(
                "pool: {} workers ready on {}",
                a.workers,
                a.socket.display()
            ),
        )
    };
    let e: PoolError = pool.serve(&ready);
    report(prog, &e);
    e.exit_status()
}
