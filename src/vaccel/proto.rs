//! vAccel's messages (generated from proto/vaccel_agent.proto by build.rs)
//! and the ttrpc envelopes around them: what both the agent and the
//! remote plugin put on the wire.

mod generated {
    include!(concat!(env!("OUT_DIR"), "/proto/mod.rs"));
}
pub use generated::vaccel_agent::*;
use protobuf::rt::WireType;
use protobuf::{CodedInputStream, CodedOutputStream, Message, MessageField};
use std::ops::Range;

/// The sync agent's service name (async builds use another: they and
/// sync peers cannot talk).
pub const SERVICE: &str = "vaccel.sync.agent.AgentService";
/// The type URL of vAccel's error detail.
pub const ERROR_TYPE_URL: &str = "type.googleapis.com/vaccel.ProtoError";

/// gRPC status codes the agent answers with.
pub const CODE_OK: i32 = 0;
pub const CODE_INVALID_ARGUMENT: i32 = 3;
pub const CODE_NOT_FOUND: i32 = 5;
pub const CODE_INTERNAL: i32 = 13;

/// A message that can write itself to a stream: every generated message,
/// and [`GenopRef`] (a Genop request over borrowed buffers).
pub trait Encode {
    /// The encoded size (for generated messages, also caches the sizes
    /// [`Encode::encode`] uses).
    fn size(&self) -> u64;
    fn encode(&self, os: &mut CodedOutputStream<'_>) -> protobuf::Result<()>;
}

impl<M: Message> Encode for M {
    fn size(&self) -> u64 {
        self.compute_size()
    }
    fn encode(&self, os: &mut CodedOutputStream<'_>) -> protobuf::Result<()> {
        self.write_to_with_cached_sizes(os)
    }
}

/// An envelope (`outer`) whose last field `field` carries `inner` as
/// bytes, encoded straight to the output: a large sgemm's matrices go
/// from the caller's buffers to the socket without an intermediate copy.
pub struct Envelope<'a, O: Message, I: Encode + ?Sized> {
    outer: O,
    field: u32,
    inner: &'a I,
    /// (outer, inner) encoded sizes
    sizes: (u64, u64),
}

impl<'a, O: Message, I: Encode + ?Sized> Envelope<'a, O, I> {
    fn new(outer: O, field: u32, inner: &'a I) -> Self {
        let sizes = (outer.compute_size(), inner.size());
        Envelope {
            outer,
            field,
            inner,
            sizes,
        }
    }
}

impl<O: Message, I: Encode + ?Sized> Encode for Envelope<'_, O, I> {
    /// The body's length: the 10-byte frame header's `len`.
    fn size(&self) -> u64 {
        let (o, i) = self.sizes;
        // vAccel leaves the payload out when it encodes to nothing.
        o + if i > 0 {
            protobuf::rt::tag_size(self.field) + protobuf::rt::compute_raw_varint64_size(i) + i
        } else {
            0
        }
    }

    fn encode(&self, os: &mut CodedOutputStream<'_>) -> protobuf::Result<()> {
        self.outer.write_to_with_cached_sizes(os)?;
        if self.sizes.1 > 0 {
            os.write_tag(self.field, WireType::LengthDelimited)?;
            os.write_raw_varint64(self.sizes.1)?;
            self.inner.encode(os)?;
        }
        Ok(())
    }
}

/// `m` encoded into one buffer.
pub fn to_vec(m: &(impl Encode + ?Sized)) -> protobuf::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(m.size() as usize);
    let mut os = CodedOutputStream::vec(&mut out);
    m.encode(&mut os)?;
    os.flush()?;
    drop(os);
    Ok(out)
}

/// A Request envelope for `method`; the payload field is left out when
/// the inner message encodes to nothing, as vAccel's client does.
pub fn request_envelope<'a, I: Encode + ?Sized>(
    method: &str,
    inner: &'a I,
) -> Envelope<'a, Request, I> {
    service_envelope(SERVICE, method, inner)
}

/// A Request envelope for another service's method (skiff's
/// SharedMemory: [`super::shm`]).
pub fn service_envelope<'a, I: Encode + ?Sized>(
    service: &str,
    method: &str,
    inner: &'a I,
) -> Envelope<'a, Request, I> {
    let r = Request {
        service: service.into(),
        method: method.into(),
        ..Default::default()
    };
    Envelope::new(r, 3, inner)
}

/// A successful Response envelope: an empty Status (always present), then
/// the payload when it encodes to at least one byte.
pub fn ok_envelope<I: Encode + ?Sized>(inner: &I) -> Envelope<'_, Response, I> {
    let r = Response {
        status: MessageField::some(Status::default()),
        ..Default::default()
    };
    Envelope::new(r, 2, inner)
}

/// A Request body (see [`request_envelope`]).
pub fn request(method: &str, inner: &impl Message) -> protobuf::Result<Vec<u8>> {
    to_vec(&request_envelope(method, inner))
}

/// A successful Response body (see [`ok_envelope`]).
pub fn ok_response(inner: &impl Message) -> protobuf::Result<Vec<u8>> {
    to_vec(&ok_envelope(inner))
}

/// Decodes an envelope `M` from `body`, except its bytes field `field`
/// (the payload), whose place in `body` is returned: the payload is
/// parsed once, from the frame, instead of first being copied out of it.
pub fn split<M: Message>(body: &[u8], field: u32) -> protobuf::Result<(M, Range<usize>)> {
    let mut is = CodedInputStream::from_bytes(body);
    let mut rest = Vec::new();
    let mut payload = 0..0;
    while let Some((f, whole, content)) = next_field(&mut is)? {
        match content {
            // As protobuf's own parser: the last occurrence wins.
            Some(c) if f == field => payload = c,
            _ => rest.extend_from_slice(&body[whole]),
        }
    }
    Ok((M::parse_from_bytes(&rest)?, payload))
}

/// A Genop reply's write arguments, each with its buffer borrowed from
/// `payload` (not copied: it is copied once, into the guest).
pub fn reply_args(payload: &[u8]) -> protobuf::Result<Vec<(Arg, &[u8])>> {
    let mut is = CodedInputStream::from_bytes(payload);
    let mut out = Vec::new();
    while let Some((f, _, content)) = next_field(&mut is)? {
        if let (1, Some(c)) = (f, content) {
            let m = &payload[c];
            let (arg, buf) = split::<Arg>(m, 1)?;
            out.push((arg, &m[buf]));
        }
    }
    Ok(out)
}

/// The next field from `is`: its number, the place of its whole encoding,
/// and for a length-delimited field the place of its contents.
type Field = (u32, Range<usize>, Option<Range<usize>>);

fn next_field(is: &mut CodedInputStream<'_>) -> protobuf::Result<Option<Field>> {
    let start = is.pos() as usize;
    let Some(tag) = is.read_raw_tag_or_eof()? else {
        return Ok(None);
    };
    let wt = WireType::new(tag & 7)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad wire type"))?;
    let content = if wt == WireType::LengthDelimited {
        let n = is.read_raw_varint32()?;
        let at = is.pos() as usize;
        is.skip_raw_bytes(n)?;
        Some(at..at + n as usize)
    } else {
        is.skip_field(wt)?;
        None
    };
    Ok(Some((tag >> 3, start..is.pos() as usize, content)))
}

/// An argument borrowed from the caller (a guest's checked buffer), or a
/// small value made for the call.
#[derive(Debug)]
pub struct ArgRef<'a> {
    pub ty: u32,
    pub custom: u32,
    pub bytes: std::borrow::Cow<'a, [u8]>,
    /// Sent through the shared region at this offset instead of inline
    /// (skiff's SharedMemory service: [`super::shm`]).
    pub shm: Option<u64>,
}

impl ArgRef<'_> {
    /// As the generated `Arg`: proto3 leaves zero and empty fields out.
    fn size(&self) -> u64 {
        let b = &self.bytes;
        let len = b.len() as u32;
        let mut n = 0;
        if !b.is_empty() && self.shm.is_none() {
            n += protobuf::rt::bytes_size(1, b);
        }
        for (f, v) in [(2, len), (3, self.ty), (4, self.custom)] {
            if v != 0 {
                n += protobuf::rt::uint32_size(f, v);
            }
        }
        if let Some(o) = self.shm {
            n += protobuf::rt::uint64_size(15, o);
        }
        n
    }

    fn encode(&self, os: &mut CodedOutputStream<'_>) -> protobuf::Result<()> {
        if !self.bytes.is_empty() && self.shm.is_none() {
            os.write_bytes(1, &self.bytes)?;
        }
        for (f, v) in [(2, self.bytes.len() as u32), (3, self.ty), (4, self.custom)] {
            if v != 0 {
                os.write_uint32(f, v)?;
            }
        }
        if let Some(o) = self.shm {
            os.write_uint64(15, o)?;
        }
        Ok(())
    }

    /// The generated message, copying the bytes.
    pub fn to_arg(&self) -> Arg {
        Arg {
            buf: match self.shm {
                None => self.bytes.to_vec(),
                Some(_) => Vec::new(),
            },
            shm_offset: self.shm,
            size: self.bytes.len() as u32,
            arg_type: self.ty,
            custom_type_id: self.custom,
            ..Default::default()
        }
    }
}

/// A `GenopRequest` over borrowed arguments, encoded exactly as the
/// generated message would be (tested byte for byte), without copying
/// the buffers into one first.
#[derive(Debug)]
pub struct GenopRef<'a> {
    pub session_id: i64,
    pub read: Vec<ArgRef<'a>>,
    pub write: Vec<ArgRef<'a>>,
}

impl GenopRef<'_> {
    fn args(&self) -> impl Iterator<Item = (u32, &ArgRef<'_>)> {
        let r = self.read.iter().map(|a| (2, a));
        r.chain(self.write.iter().map(|a| (3, a)))
    }

    /// The generated message, copying every buffer.
    pub fn to_request(&self) -> GenopRequest {
        GenopRequest {
            session_id: self.session_id,
            read_args: self.read.iter().map(ArgRef::to_arg).collect(),
            write_args: self.write.iter().map(ArgRef::to_arg).collect(),
            ..Default::default()
        }
    }
}

impl Encode for GenopRef<'_> {
    fn size(&self) -> u64 {
        let mut n = 0;
        if self.session_id != 0 {
            n += protobuf::rt::int64_size(1, self.session_id);
        }
        for (f, a) in self.args() {
            let s = a.size();
            n += protobuf::rt::tag_size(f) + protobuf::rt::compute_raw_varint64_size(s) + s;
        }
        n
    }

    fn encode(&self, os: &mut CodedOutputStream<'_>) -> protobuf::Result<()> {
        if self.session_id != 0 {
            os.write_int64(1, self.session_id)?;
        }
        for (f, a) in self.args() {
            os.write_tag(f, WireType::LengthDelimited)?;
            os.write_raw_varint64(a.size())?;
            a.encode(os)?;
        }
        Ok(())
    }
}

/// A failed Response carrying `status`.
pub fn error_response(status: Status) -> Vec<u8> {
    let r = Response {
        status: MessageField::some(status),
        ..Default::default()
    };
    // A message of strings and integers always encodes.
    r.write_to_bytes().unwrap_or_default()
}

/// The status for a vAccel error: code 13, "FFI error: E", and vAccel's
/// error detail carrying the errno (`ErrorType::FFI`, omitted on the wire).
pub fn ffi_status(errno: i32) -> Status {
    detail_status(format!("FFI error: {errno}"), ErrorType::FFI, Some(errno))
}

/// The status for an argument whose size differs from its buffer.
pub fn conversion_status(what: &str) -> Status {
    detail_status(
        format!("Conversion failed: {what}"),
        ErrorType::CONVERSION_FAILED,
        None,
    )
}

fn detail_status(message: String, ty: ErrorType, errno: Option<i32>) -> Status {
    let e = ProtoError {
        type_: ty.into(),
        ffi_error: errno.map(|e| e as u32),
        ..Default::default()
    };
    Status {
        code: CODE_INTERNAL,
        message,
        details: vec![Any {
            type_url: ERROR_TYPE_URL.into(),
            value: e.write_to_bytes().unwrap_or_default(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A status with just a code and a message.
pub fn status(code: i32, message: String) -> Status {
    Status {
        code,
        message,
        ..Default::default()
    }
}

/// The errno a vAccel client hands its caller for a failed status:
/// vAccel's `ffi_error` when present, else EPROTO.
pub fn errno_of(s: &Status) -> i32 {
    s.details
        .iter()
        .filter(|d| d.type_url == ERROR_TYPE_URL)
        .find_map(|d| ProtoError::parse_from_bytes(&d.value).ok()?.ffi_error)
        .map_or(libc::EPROTO, |e| e as i32)
}
