//! `skiff snapshot`: boot the function to its first REQ_READ and save it.

use super::refuse;
use super::run::{signalled, RunArgs};
use crate::snapshot::save::SaveError;
use crate::vmm::RunError;
use clap::Args;
use std::path::{Path, PathBuf};

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
        return refuse(prog, &"--restore cannot be used with snapshot");
    }
    let cfg = match a.run.config_or_report(prog) {
        Ok(c) => c,
        Err(status) => return status,
    };
    let saved =
        crate::snapshot::save::snapshot(&cfg, &a.out, a.backdate.saturating_mul(1_000_000_000));
    // Nothing half-written stays behind, nor a file the user stopped.
    let signal = crate::signals::pending();
    if saved.is_err() || signal.is_some() {
        remove_partial(&a.out, saved.is_ok());
    }
    match saved {
        _ if signal.is_some() => signalled(prog),
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
        Err(SaveError::Run(e @ RunError::Signal(_))) => {
            super::report(prog, &e);
            e.exit_status()
        }
        Err(e) => refuse(prog, &e),
    }
}

/// Removes the temporary file `snapshot` writes before its rename, and
/// the snapshot itself when it was completed after a stop signal.
fn remove_partial(out: &Path, completed: bool) {
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let _ = std::fs::remove_file(tmp);
    if completed {
        let _ = std::fs::remove_file(out);
    }
}
