//! Live migration: `migrate ADDR` on a control socket streams a running
//! guest to `skiff run --incoming ADDR` (docs/migration.md).
//!
//! - `stream.rs`: records, checksums, bounds (the untrusted-input side)
//! - `source.rs`: handshake, pre-copy rounds with KVM's dirty log and
//!   skiff's own writes, stop-and-copy, and the way back on failure
//! - `dest.rs`: checks (the snapshot's), the VM built before the pages
//!   arrive, the vCPU, devices and clock set at the stop

pub mod dest;
pub mod source;
pub mod stream;

use crate::snapshot::format::FormatError;
use crate::snapshot::restore::RestoreError;
use crate::snapshot::save::SaveError;
use stream::StreamError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum MigrateError {
    #[error("cannot connect to {addr}: {err}")]
    Connect { addr: String, err: std::io::Error },
    #[error("cannot listen on {addr}: {err}")]
    Listen { addr: String, err: std::io::Error },
    #[error("{0}")]
    Stream(#[from] StreamError),
    #[error("the destination refused: {0}")]
    Refused(String),
    /// On the destination: why it refused the source (sent back too).
    #[error("refused the incoming guest: {0}")]
    Refusing(String),
    #[error("cancelled")]
    Cancelled,
    /// On the source: no word from the destination within the bound.
    #[error("the destination was silent for {0} s (skiff run --migrate-timeout)")]
    Silent(u64),
    /// The whole guest was sent but the destination's word that it took
    /// it never came: it may be running there. The source stays paused;
    /// `handed` is its accelerator sessions' hand-over, to take back if
    /// the operator resumes it here.
    #[error("the destination did not confirm it took the guest ({why}); the guest is paused here and may be running there: resume it here only if it is not")]
    InDoubt {
        why: String,
        handed: Option<Vec<u8>>,
    },
    /// On the source: its sessions cannot be handed over.
    #[error("migration refused: {0}")]
    Accel(#[from] crate::accel::handover::HandOverError),
    /// On the destination: the handed-over sessions cannot be claimed.
    #[error("cannot claim the guest's accelerator sessions: {0}")]
    Claim(crate::accel::handover::HandOverError),
    #[error(
        "net device {0} is an inherited file descriptor (@FD): it cannot move to another process"
    )]
    Unmovable(String),
    #[error("{0}")]
    Net(#[from] crate::devices::net::NetAttachError),
    #[error("the guest halted (status {0}) during the migration")]
    Halted(i32),
    #[error("{0}")]
    Save(#[from] SaveError),
    #[error("bad migration stream: {0}")]
    Format(#[from] FormatError),
    #[error("{0}")]
    Restore(#[from] RestoreError),
    #[error("{0}")]
    Run(#[from] crate::vmm::RunError),
    #[error("KVM's dirty log: {0}")]
    DirtyLog(std::io::Error),
    #[error("cannot flush the block devices: {0}")]
    Flush(std::io::Error),
    #[error("exiting on signal {0}")]
    Signal(i32),
}

/// How a migration went (the source's report line).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// From the guest's stop on the source to the destination's answer
    /// that it resumed it.
    pub downtime_ms: f64,
    pub total_ms: f64,
    /// Pre-copy rounds (0: the whole memory was copied at the stop).
    pub rounds: u32,
    pub bytes: u64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "downtime {:.1} ms, total {:.1} ms, {} rounds, {} bytes",
            self.downtime_ms, self.total_ms, self.rounds, self.bytes
        )
    }
}
