//! Warm start: `skiff snapshot` saves a function at the moment it first
//! asks for its request body; `skiff run --restore FILE` resumes it there
//! for a new request, mapping the saved pages copy-on-write.
//!
//! - `format.rs`: the file (header, checksummed metadata, page data)
//! - `clock.rs`: the guest's clock after a restore (TSC, boot, wall clock)
//! - `vcpu.rs`: vCPU state out and in (registers, XSAVE, MSRs)
//! - `save.rs`: boot to the first REQ_READ, write the file
//! - `restore.rs`: check, map, restore, resume
//! - `inspect.rs`: what a snapshot records, and whether this host can
//!   restore it (`skiff inspect`)
//! - `rewind.rs`: put a restored guest back to the snapshot after a run
//!   (a pool worker's next request)

pub mod clock;
pub mod format;
pub mod inspect;
pub mod restore;
pub mod rewind;
pub mod save;
pub mod vcpu;
