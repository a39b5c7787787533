//! The agent's side of skiff's co-located fast path
//! ([`crate::vaccel::shm`]): `Attach` makes the connection's
//! shared region, and a Genop's arguments that name it become spans of
//! it, checked here.

use super::conn::Failure;
use super::exec::Buf;
use crate::vaccel::proto::{self, Arg, ShmAttachRequest};
use crate::vaccel::shm::{Region, ALIGN};
use guest_abi::accel::arg;
use std::os::fd::OwnedFd;
use std::sync::Arc;

fn einval() -> Failure {
    proto::ffi_status(libc::EINVAL)
}

/// A region for `r`: at least its size, page-rounded, at most `max`
/// bytes (the agent's frame limit: what one request may cost). The
/// region's pages are the client's to touch (and are charged to it).
pub fn attach(r: &ShmAttachRequest, max: u32) -> Result<(Region, OwnedFd), Failure> {
    let size = r.size.next_multiple_of(4096);
    if size == 0 || size > u64::from(max) {
        return Err(proto::ffi_status(libc::ENOMEM));
    }
    Region::create(size as usize, false).map_err(|_| proto::ffi_status(libc::ENOMEM))
}

/// The span of `region` that `a` names: only float arrays (any bit
/// pattern is a value: the client may write them concurrently), aligned,
/// inside the region, with no inline bytes.
pub fn span(a: &Arg, off: u64, region: Option<&Arc<Region>>) -> Result<Buf, Failure> {
    let region = region.ok_or_else(einval)?;
    let numbers = matches!(a.arg_type, arg::FLOAT32_ARRAY | arg::FLOAT64_ARRAY);
    if !numbers || !a.buf.is_empty() || a.size == 0 || !off.is_multiple_of(ALIGN) {
        return Err(einval());
    }
    Buf::shared(a.arg_type, region, off, a.size as usize).ok_or_else(einval)
}

/// Refuses a request whose spans overlap (one output aliasing another
/// argument).
pub fn disjoint(bufs: &[&Buf]) -> Result<(), Failure> {
    let mut spans: Vec<(u64, u64)> = bufs
        .iter()
        .filter_map(|b| Some((b.shm_offset()?, b.bytes().len() as u64)))
        .collect();
    spans.sort_unstable();
    if spans.windows(2).any(|w| w[0].0 + w[0].1 > w[1].0) {
        return Err(einval());
    }
    Ok(())
}
