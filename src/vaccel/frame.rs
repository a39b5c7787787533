//! ttrpc's framing, written here rather than taken from the `ttrpc` crate:
//! that crate refuses bodies over 4 MiB, while vAccel's peers send up to
//! 1 GiB (a model blob, a large sgemm). A frame is a 10-byte header
//! (`len:u32 BE` of the body, `stream_id:u32 BE`, `type:u8`, `flags:u8`)
//! and `len` body bytes.
//!
//! Reading never trusts `len` with memory: the body buffer grows only as
//! bytes arrive, so a header that promises 1 GiB and sends nothing costs
//! nothing, and a limit refuses larger promises before any read.

use std::io::{self, Read, Write};
use std::time::Instant;
use thiserror::Error;

pub const HEADER_LEN: usize = 10;
/// The largest body vAccel's ttrpc fork accepts.
pub const VACCEL_MAX: u32 = 1 << 30;

pub const TYPE_REQUEST: u8 = 1;
pub const TYPE_RESPONSE: u8 = 2;
pub const TYPE_DATA: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub stream: u32,
    pub kind: u8,
    pub flags: u8,
}

#[derive(Debug, Error)]
pub enum FrameError {
    /// The peer closed the connection between frames.
    #[error("connection closed")]
    Closed,
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooBig { len: u32, max: u32, stream: u32 },
    #[error("unknown frame type {0}")]
    BadType(u8),
    #[error("timed out")]
    TimedOut,
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&self.len.to_be_bytes());
        h[4..8].copy_from_slice(&self.stream.to_be_bytes());
        h[8] = self.kind;
        h[9] = self.flags;
        h
    }

    /// Parses and checks a header: a known type, `len <= max`.
    pub fn decode(h: &[u8; HEADER_LEN], max: u32) -> Result<Self, FrameError> {
        let be = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let hd = Header {
            len: be(0),
            stream: be(4),
            kind: h[8],
            flags: h[9],
        };
        if !(TYPE_REQUEST..=TYPE_DATA).contains(&hd.kind) {
            return Err(FrameError::BadType(hd.kind));
        }
        if hd.len > max {
            return Err(FrameError::TooBig {
                len: hd.len,
                max,
                stream: hd.stream,
            });
        }
        Ok(hd)
    }
}

/// A stream whose reads can be bounded in time.
pub trait Timed: Read + Write {
    fn set_read_timeout(&self, t: Option<std::time::Duration>) -> io::Result<()>;
}

/// Reads exactly `buf.len()` bytes before `deadline`. `Ok(false)`: the peer
/// closed before the first byte.
fn fill<S: Timed + ?Sized>(
    s: &mut S,
    buf: &mut [u8],
    deadline: Option<Instant>,
) -> Result<bool, FrameError> {
    let mut got = 0;
    // The socket timeout set last: re-set (a syscall) only when the time
    // left has shrunk well below it, not before every read of a large
    // body; a read then overshoots the deadline by at most SLACK.
    const SLACK: std::time::Duration = std::time::Duration::from_millis(10);
    let mut set: Option<std::time::Duration> = None;
    while got < buf.len() {
        if let Some(d) = deadline {
            let left = d.checked_duration_since(Instant::now());
            let left = left.filter(|l| !l.is_zero()).ok_or(FrameError::TimedOut)?;
            if set.is_none_or(|t| left + SLACK < t) {
                s.set_read_timeout(Some(left))?;
                set = Some(left);
            }
        }
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(FrameError::TimedOut)
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// Body bytes read per step: what a lying header can make us allocate
/// beyond the bytes actually received.
const CHUNK: usize = 1 << 20;

/// Reads one frame. `header_deadline` bounds the wait for the header (the
/// agent waits for idle clients forever: `None`); `body_deadline` is
/// computed once the header is in (a body must then arrive promptly).
pub fn read_frame<S: Timed + ?Sized>(
    s: &mut S,
    max: u32,
    header_deadline: Option<Instant>,
    body_time: Option<std::time::Duration>,
) -> Result<(Header, Vec<u8>), FrameError> {
    let mut body = Vec::new();
    let hd = read_frame_into(s, max, header_deadline, body_time, &mut body)?;
    body.truncate(hd.len as usize);
    Ok((hd, body))
}

/// [`read_frame`] into `buf`, reused from call to call: the body is
/// `buf[..len]`. `buf` only grows (as bytes arrive, as above), so a
/// connection's steady stream of large frames costs no allocation, page
/// fault or zeroing per frame.
pub fn read_frame_into<S: Timed + ?Sized>(
    s: &mut S,
    max: u32,
    header_deadline: Option<Instant>,
    body_time: Option<std::time::Duration>,
    buf: &mut Vec<u8>,
) -> Result<Header, FrameError> {
    let mut h = [0u8; HEADER_LEN];
    if header_deadline.is_none() {
        s.set_read_timeout(None)?;
    }
    if !fill(s, &mut h, header_deadline)? {
        return Err(FrameError::Closed);
    }
    let hd = Header::decode(&h, max)?;
    let deadline = body_time.map(|t| Instant::now() + t).or(header_deadline);
    let len = hd.len as usize;
    let mut at = 0;
    while at < len {
        let end = (at + CHUNK).min(len);
        if buf.len() < end {
            buf.try_reserve(end - buf.len())
                .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
            buf.resize(end, 0);
        }
        if !fill(s, &mut buf[at..end], deadline)? {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        at = end;
    }
    Ok(hd)
}

/// Writes one frame (header and body in one write where they fit).
pub fn write_frame<W: Write + ?Sized>(w: &mut W, hd: Header, body: &[u8]) -> io::Result<()> {
    debug_assert_eq!(hd.len as usize, body.len());
    if body.len() <= 64 << 10 {
        let mut buf = Vec::with_capacity(HEADER_LEN + body.len());
        buf.extend_from_slice(&hd.encode());
        buf.extend_from_slice(body);
        w.write_all(&buf)
    } else {
        w.write_all(&hd.encode())?;
        w.write_all(body)
    }
}

/// Writes one frame whose body is `body`, encoded straight to `w`: the
/// header and small fields go out together (protobuf's 8 KiB buffer),
/// large bytes fields directly from their buffers, with no copy of the
/// body in between.
pub fn write_envelope(
    w: &mut dyn Write,
    stream: u32,
    kind: u8,
    body: &(impl super::proto::Encode + ?Sized),
) -> io::Result<()> {
    let len = u32::try_from(body.size())
        .ok()
        .filter(|&l| l <= VACCEL_MAX)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "frame over 1 GiB"))?;
    let hd = Header {
        len,
        stream,
        kind,
        flags: 0,
    };
    let mut os = protobuf::CodedOutputStream::new(w);
    os.write_raw_bytes(&hd.encode())?;
    body.encode(&mut os)?;
    os.flush()?;
    Ok(())
}
