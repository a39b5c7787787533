//! The migration stream: a preamble (magic, version), then records
//! `[kind u8][len u32][payload][crc32 u32]`, little-endian. The CRC covers
//! kind, length and payload, so a flipped byte anywhere is refused; every
//! length is bounded per kind before anything is allocated, and a page
//! record's address and count are checked against the handshake's
//! memory size before any byte reaches guest memory.

use crate::accel::registry::RESOURCE_TOTAL_MAX;
use std::io::{self, Read, Write};
use thiserror::Error;

pub const MAGIC: [u8; 8] = *b"SKIFFMIG";
pub const VERSION: u32 = 1;
pub const PAGE: u64 = 4096;
/// Pages per page record (256 KiB): large enough that the per-record
/// overhead is nothing, small enough that a cancel is seen quickly.
pub const PAGES_PER_RECORD: usize = 64;

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Source: the snapshot header and metadata (snapshot::format), no
    /// vCPU state and no runs yet: what the destination checks.
    Hello = 1,
    /// Source: the image's bytes (the destination may have no KERNEL).
    Image = 2,
    /// Source: `[gpa u64][count u32]` then `count` pages.
    Pages = 3,
    /// Source: header and metadata again, with the vCPU state at the stop.
    State = 4,
    /// Source: nothing more follows.
    End = 5,
    /// Source, at the end of the pre-copy: answer `Ok` once everything
    /// before this is in guest memory (so the stop does not wait for
    /// pages still queued in socket buffers).
    Sync = 6,
    /// Source, at the stop: the guest's accelerator sessions, handed over
    /// (accel::handover's bytes; only when it has sessions open).
    Accel = 7,
    /// Destination: go on (after Hello) or resumed (after End).
    Ok = 0x81,
    /// Destination: refused, with a one-line reason.
    Refused = 0x82,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Image,
            3 => Kind::Pages,
            4 => Kind::State,
            5 => Kind::End,
            6 => Kind::Sync,
            7 => Kind::Accel,
            0x81 => Kind::Ok,
            0x82 => Kind::Refused,
            _ => return None,
        })
    }

    /// The largest payload a record of this kind may have.
    fn limit(self) -> u32 {
        match self {
            Kind::Hello | Kind::State => 1 << 20,
            Kind::Image => 256 << 20,
            Kind::Pages => 12 + PAGES_PER_RECORD as u32 * PAGE as u32,
            // Every resource byte a guest may register, and room for ids,
            // paths and the agents' tokens.
            Kind::Accel => RESOURCE_TOTAL_MAX as u32 + (1 << 20),
            Kind::End | Kind::Sync | Kind::Ok => 0,
            Kind::Refused => 4096,
        }
    }
}

#[derive(Debug, Error)]
pub enum StreamError {
    #[error("the peer closed the stream mid-migration")]
    Closed,
    #[error("the stream timed out (the peer went silent)")]
    Timeout,
    #[error("stream I/O failed: {0}")]
    Io(io::Error),
    #[error("not a skiff migration stream (bad magic)")]
    Magic,
    #[error("migration stream version {0} is not supported (this skiff speaks version {VERSION})")]
    Version(u32),
    #[error("bad migration stream: unknown record kind {0}")]
    Kind(u8),
    #[error("bad migration stream: record of kind {0:?} is {1} bytes (at most {2})")]
    Length(Kind, u32, u32),
    #[error("bad migration stream: record checksum mismatch")]
    Checksum,
    #[error("bad migration stream: {0}")]
    Invalid(&'static str),
}

impl From<io::Error> for StreamError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => StreamError::Closed,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => StreamError::Timeout,
            _ => StreamError::Io(e),
        }
    }
}

pub fn write_preamble(w: &mut impl Write) -> Result<(), StreamError> {
    w.write_all(&MAGIC)?;
    w.write_all(&VERSION.to_le_bytes())?;
    Ok(())
}

pub fn read_preamble(r: &mut impl Read) -> Result<(), StreamError> {
    let mut b = [0u8; 12];
    r.read_exact(&mut b)?;
    if b[..8] != MAGIC {
        return Err(StreamError::Magic);
    }
    let v = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if v != VERSION {
        return Err(StreamError::Version(v));
    }
    Ok(())
}

/// Writes one record whose payload is the concatenation of `parts`.
pub fn write_record(w: &mut impl Write, kind: Kind, parts: &[&[u8]]) -> Result<(), StreamError> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len).map_err(|_| StreamError::Invalid("record too large"))?;
    let mut head = [0u8; 5];
    head[0] = kind as u8;
    head[1..].copy_from_slice(&len.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    w.write_all(&head)?;
    for p in parts {
        crc.update(p);
        w.write_all(p)?;
    }
    w.write_all(&crc.finalize().to_le_bytes())?;
    Ok(())
}

/// Reads one record into `buf` (reused between records); returns its
/// kind. The payload is `buf` afterwards.
pub fn read_record(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Kind, StreamError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let kind = Kind::from_u8(head[0]).ok_or(StreamError::Kind(head[0]))?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if len > kind.limit() {
        return Err(StreamError::Length(kind, len, kind.limit()));
    }
    buf.clear();
    buf.resize(len as usize, 0);
    r.read_exact(buf)?;
    let mut sum = [0u8; 4];
    r.read_exact(&mut sum)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.update(buf);
    if crc.finalize() != u32::from_le_bytes(sum) {
        return Err(StreamError::Checksum);
    }
    Ok(kind)
}

/// A page record's payload, checked: `(gpa, pages)` with `pages` whole
/// pages inside `[0, mem_size)`, at a page-aligned address.
pub fn pages(payload: &[u8], mem_size: u64) -> Result<(u64, &[u8]), StreamError> {
    if payload.len() < 12 {
        return Err(StreamError::Invalid("short page record"));
    }
    let gpa = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
    let count = u32::from_le_bytes(payload[8..12].try_into().unwrap_or_default()) as u64;
    let data = &payload[12..];
    if count == 0 || count.saturating_mul(PAGE) != data.len() as u64 {
        return Err(StreamError::Invalid("page count does not match the record"));
    }
    if !gpa.is_multiple_of(PAGE)
        || gpa
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > mem_size)
    {
        return Err(StreamError::Invalid("pages outside guest memory"));
    }
    Ok((gpa, data))
}

/// A page record's header for `count` pages at `gpa`.
pub fn pages_head(gpa: u64, count: usize) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[..8].copy_from_slice(&gpa.to_le_bytes());
    h[8..].copy_from_slice(&(count as u32).to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_flipped_byte_is_refused() {
        let mut out = Vec::new();
        write_preamble(&mut out).unwrap();
        let page = vec![7u8; PAGE as usize];
        write_record(&mut out, Kind::Pages, &[&pages_head(0x2000, 1), &page]).unwrap();
        let mut r = &out[..];
        read_preamble(&mut r).unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_record(&mut r, &mut buf).unwrap(), Kind::Pages);
        let (gpa, data) = pages(&buf, 1 << 20).unwrap();
        assert_eq!((gpa, data.len()), (0x2000, PAGE as usize));
        assert!(pages(&buf, 0x2000).is_err(), "past the end of memory");

        for at in 12..out.len() {
            let mut bad = out.clone();
            bad[at] ^= 0x10;
            let mut r = &bad[12..];
            assert!(read_record(&mut r, &mut buf).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn lengths_are_bounded_before_allocation() {
        let mut r: &[u8] = &[3, 0xff, 0xff, 0xff, 0x7f];
        let mut buf = Vec::new();
        assert!(matches!(
            read_record(&mut r, &mut buf),
            Err(StreamError::Length(Kind::Pages, _, _))
        ));
        assert!(buf.capacity() < 1 << 20);
        let mut r: &[u8] = &[7, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_record(&mut r, &mut buf),
            Err(StreamError::Length(Kind::Accel, _, _))
        ));
        let mut r: &[u8] = &[1, 0, 0];
        assert!(matches!(
            read_record(&mut r, &mut buf),
            Err(StreamError::Closed)
        ));
        let mut r: &[u8] = b"SKIFFMIG\x02\0\0\0";
        assert!(matches!(
            read_preamble(&mut r),
            Err(StreamError::Version(2))
        ));
    }
}
