//! `skiff snapshot`'s flags and entry point.

use crate::cli::{report, RunArgs};
use clap::Args;
use std::path::PathBuf;

/// `skiff snapshot [run flags] --out FILE KERNEL [ARGS...]`
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// Where to write the snapshot.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Testing aid: make the snapshot look SECS seconds old (the guest's
    /// WALLTIME during its boot and the saved timestamp both move back by
    /// SECS; its TSC cannot), to test restoring old snapshots without
    /// waiting.
    #[arg(long, value_name = "SECS", default_value_t = 0, hide = true)]
    pub backdate: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn main(prog: &str, a: SnapshotArgs) -> i32 {
    if a.run.restore.is_some() {
        report(prog, &"--restore cannot be used with snapshot");
        return 1;
    }
    let Some(cfg) = a.run.config_or_report(prog) else {
        return 1;
    };
    match super::save::snapshot(&cfg, &a.out, a.backdate.saturating_mul(1_000_000_000)) {
        Ok(s) => {
            eprintln!(
                "{prog}: snapshot {}: {} pages in {} runs, {} bytes",
                a.out.display(),
                s.pages,
                s.runs,
                s.file_bytes
            );
            0
        }
        Err(e) => {
            report(prog, &e);
            1
        }
    }
}
