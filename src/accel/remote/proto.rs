//! vAccel's messages (generated from proto/vaccel_agent.proto by build.rs)
//! and the ttrpc envelopes around them: what both the agent and the
//! remote plugin put on the wire.

mod generated {
    include!(concat!(env!("OUT_DIR"), "/proto/mod.rs"));
}
pub use generated::vaccel_agent::*;
use protobuf::{Message, MessageField};

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

/// A Request envelope; the payload field is left out when the inner
/// message encodes to nothing, as vAccel's client does.
pub fn request(method: &str, inner: &impl Message) -> protobuf::Result<Vec<u8>> {
    let r = Request {
        service: SERVICE.into(),
        method: method.into(),
        ..Default::default()
    };
    wrap(&r, 3, inner)
}

/// A successful Response: an empty Status (always present), then the
/// payload when it encodes to at least one byte.
pub fn ok_response(inner: &impl Message) -> protobuf::Result<Vec<u8>> {
    let r = Response {
        status: MessageField::some(Status::default()),
        ..Default::default()
    };
    wrap(&r, 2, inner)
}

/// `outer`'s fields, then `inner` as bytes field `field` (the last one),
/// encoded straight into one buffer: a large sgemm's matrices are not
/// copied once more into an intermediate payload.
fn wrap(outer: &impl Message, field: u32, inner: &impl Message) -> protobuf::Result<Vec<u8>> {
    let (osize, isize) = (outer.compute_size(), inner.compute_size());
    let mut out = Vec::with_capacity((osize + isize + 16) as usize);
    let mut os = protobuf::CodedOutputStream::vec(&mut out);
    outer.write_to_with_cached_sizes(&mut os)?;
    if isize > 0 {
        os.write_tag(field, protobuf::rt::WireType::LengthDelimited)?;
        os.write_raw_varint64(isize)?;
        inner.write_to_with_cached_sizes(&mut os)?;
    }
    os.flush()?;
    drop(os);
    Ok(out)
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
