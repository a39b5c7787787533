//! vAccel's wire format, shared by both ends: the remote plugin (the
//! client, `crate::accel::remote`) and `skiff agent` (the server,
//! `crate::agent`). Neither end imports the other; both stand on this.
//!
//! - [`addr`]: tcp, unix, abstract and vsock addresses.
//! - [`frame`]: ttrpc's 10-byte framing (our own: see there why).
//! - [`proto`]: the messages and envelopes.
//! - [`shm`]: skiff's co-located shared-memory fast path.

pub mod addr;
pub mod frame;
pub mod proto;
pub mod shm;

/// skiff's hand-over service (not vAccel's): `Park` and `Claim` a
/// connection's sessions, for live migration (`agent/handover.rs`).
pub const HANDOVER: &str = "skiff.agent.Handover";

/// Keeps large message buffers in malloc's heap between calls instead of
/// fresh mmaps: every first touch of a fresh page is a fault, and under
/// nested virtualisation a fault costs microseconds, which for a 512^3
/// sgemm's 4 MiB of messages dwarfed the socket transfer. (Both ends of
/// the protocol call this; it only tunes glibc's allocator.)
pub fn keep_buffers() {
    // SAFETY: mallopt only changes allocator thresholds. 32 MiB is glibc's
    // largest mmap threshold; freed memory stays up to 512 MiB.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(test)]
pub(crate) mod tests;
