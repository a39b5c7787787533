//! Byte-level checks against the frames captured between vAccel's own
//! agent and client (the fact sheet's): framing, messages, addresses and
//! the shared region. The captures are shared with the remote plugin's
//! tests (accel/remote/tests.rs).

use super::addr::Address;
use super::frame::{self, FrameError, Header, Timed};
use super::proto::{self, *};
use protobuf::Message;
use std::io::{self, Read, Write};

pub(crate) const CREATE_REQ: &[u8] = b"\x00\x00\x00\x2f\x00\x00\x00\x01\x01\x00\
\x0a\x1evaccel.sync.agent.AgentService\x12\x0dCreateSession";
pub(crate) const CREATE_RESP: &[u8] =
    b"\x00\x00\x00\x06\x00\x00\x00\x01\x02\x00\x0a\x00\x12\x02\x08\x01";

pub(crate) fn frame_of(kind: u8, stream: u32, body: &[u8]) -> Vec<u8> {
    let hd = Header {
        len: body.len() as u32,
        stream,
        kind,
        flags: 0,
    };
    let mut v = Vec::new();
    frame::write_frame(&mut v, hd, body).unwrap();
    v
}

#[test]
fn create_session_request_is_byte_identical_to_vaccels() {
    let body = proto::request("CreateSession", &CreateSessionRequest::new()).unwrap();
    assert_eq!(frame_of(frame::TYPE_REQUEST, 1, &body), CREATE_REQ);
}

#[test]
fn create_session_response_is_byte_identical_to_vaccels() {
    let r = CreateSessionResponse {
        session_id: 1,
        ..Default::default()
    };
    let body = ok_response(&r).unwrap();
    assert_eq!(frame_of(frame::TYPE_RESPONSE, 1, &body), CREATE_RESP);
    // An Empty reply is the whole body `0a 00`.
    assert_eq!(ok_response(&Empty::new()).unwrap(), [0x0a, 0x00]);
}

#[test]
fn captured_request_decodes_with_a_missing_payload_as_empty() {
    let hd = Header::decode(CREATE_REQ[..10].try_into().unwrap(), frame::VACCEL_MAX).unwrap();
    assert_eq!((hd.len, hd.stream, hd.kind, hd.flags), (0x2f, 1, 1, 0));
    let req = Request::parse_from_bytes(&CREATE_REQ[10..]).unwrap();
    assert_eq!(req.service, SERVICE);
    assert_eq!(req.method, "CreateSession");
    assert!(req.payload.is_empty());
    assert_eq!(
        CreateSessionRequest::parse_from_bytes(&req.payload)
            .unwrap()
            .flags,
        0
    );
}

#[test]
fn vaccel_errors_carry_their_errno_through_the_detail() {
    let s = ffi_status(95);
    assert_eq!((s.code, s.message.as_str()), (13, "FFI error: 95"));
    assert_eq!(s.details[0].type_url, ERROR_TYPE_URL);
    // FFI (0) is omitted on the wire: the detail is `10 5f` alone.
    assert_eq!(s.details[0].value, [0x10, 95]);
    assert_eq!(errno_of(&s), 95);
    let c = conversion_status("x");
    assert_eq!(c.details[0].value, [0x08, 6]);
    assert_eq!(errno_of(&c), libc::EPROTO);
    assert_eq!(
        errno_of(&status(5, "Unknown session 3".into())),
        libc::EPROTO
    );
}

/// A reader that hands out its bytes a few at a time.
struct Slow(Vec<u8>, usize);

impl Read for Slow {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let n = b.len().min(3).min(self.0.len() - self.1);
        b[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
        self.1 += n;
        Ok(n)
    }
}
impl Write for Slow {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Timed for Slow {
    fn set_read_timeout(&self, _: Option<std::time::Duration>) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn frames_are_read_across_short_reads_and_checked() {
    let mut two = CREATE_REQ.to_vec();
    two.extend_from_slice(CREATE_RESP);
    let mut s = Slow(two, 0);
    let (hd, body) = frame::read_frame(&mut s, 1 << 20, None, None).unwrap();
    assert_eq!((hd.len, body.as_slice()), (0x2f, &CREATE_REQ[10..]));
    let (hd, body) = frame::read_frame(&mut s, 1 << 20, None, None).unwrap();
    assert_eq!((hd.kind, body.as_slice()), (2, &CREATE_RESP[10..]));
    assert!(matches!(
        frame::read_frame(&mut s, 1 << 20, None, None),
        Err(FrameError::Closed)
    ));
    // Truncated body, lying length, over the limit, unknown type.
    let mut t = Slow(CREATE_REQ[..20].to_vec(), 0);
    assert!(matches!(
        frame::read_frame(&mut t, 1 << 20, None, None),
        Err(FrameError::Io(_))
    ));
    let gib = b"\x40\x00\x00\x00\x00\x00\x00\x01\x01\x00".to_vec();
    let mut g = Slow(gib, 0);
    assert!(matches!(
        frame::read_frame(&mut g, 256 << 20, None, None),
        Err(FrameError::TooBig {
            len: 0x4000_0000,
            ..
        })
    ));
    let mut bad = Slow(b"\x00\x00\x00\x00\x00\x00\x00\x01\x07\x00".to_vec(), 0);
    assert!(matches!(
        frame::read_frame(&mut bad, 1 << 20, None, None),
        Err(FrameError::BadType(7))
    ));
}

#[test]
fn addresses_parse_as_vaccels() {
    let ok = [
        (
            "tcp://127.0.0.1:65500",
            Address::Tcp("127.0.0.1:65500".into()),
        ),
        ("tcp://[::1]:9", Address::Tcp("[::1]:9".into())),
        ("unix:///run/v.sock", Address::Unix("/run/v.sock".into())),
        ("unix://@vaccel", Address::Abstract(b"vaccel".to_vec())),
        ("vsock://2:2048", Address::Vsock { cid: 2, port: 2048 }),
    ];
    for (text, want) in ok {
        let a: Address = text.parse().unwrap();
        assert_eq!(a, want, "{text}");
        assert_eq!(a.to_string(), text);
    }
    for bad in [
        "",
        "tcp://",
        "tcp://host",
        "tcp://:1",
        "tcp://h:99999",
        "unix://",
        "unix://@",
        "vsock://x:1",
        "vsock://2",
        "http://x:1",
        "127.0.0.1:65500",
    ] {
        assert!(bad.parse::<Address>().is_err(), "{bad}");
    }
}

#[test]
fn borrowed_genops_encode_as_the_generated_message() {
    use std::borrow::Cow;
    let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
    let arg = |ty, custom, b: &'static [u8]| ArgRef {
        ty,
        custom,
        bytes: Cow::Borrowed(b),
        shm: None,
    };
    let big: &'static [u8] = big.leak();
    for sid in [0, 1, -3, i64::MAX] {
        let g = GenopRef {
            session_id: sid,
            // empty buffers, zero types and custom ids are left out, as
            // proto3 does; a large one needs a 3-byte length
            read: vec![arg(0, 0, b""), arg(9, 0, b"\x11"), arg(5, 77, big)],
            write: vec![arg(18, 0, &big[..16]), arg(0, 1, b"")],
        };
        let generated = g.to_request().write_to_bytes().unwrap();
        assert_eq!(proto::to_vec(&g).unwrap(), generated);
        // Framed and streamed: the same bytes as the buffered envelope.
        let env = request_envelope("Genop", &g);
        let mut framed = Vec::new();
        frame::write_envelope(&mut framed, 9, frame::TYPE_REQUEST, &env).unwrap();
        let body = proto::request("Genop", &g.to_request()).unwrap();
        assert_eq!(framed, frame_of(frame::TYPE_REQUEST, 9, &body));
    }
    // CreateSession with flags 0: no payload field at all, as captured.
    let mut framed = Vec::new();
    let empty = CreateSessionRequest::new();
    let env = request_envelope("CreateSession", &empty);
    frame::write_envelope(&mut framed, 1, frame::TYPE_REQUEST, &env).unwrap();
    assert_eq!(framed, CREATE_REQ);
}

#[test]
fn split_takes_the_payload_wherever_it_is() {
    let inner = CreateSessionRequest {
        flags: 8,
        ..Default::default()
    };
    let mut body = proto::request("CreateSession", &inner).unwrap();
    // Fields after the payload (timeout, metadata) and a second payload,
    // which wins, as protobuf's own parser decides.
    body.extend([0x20, 0x05, 0x2a, 0x05, 0x0a, 0x01, b'k', 0x12, 0x00]);
    body.extend([0x1a, 0x02, 0x08, 0x09]);
    let (req, p) = proto::split::<Request>(&body, 3).unwrap();
    let whole = Request::parse_from_bytes(&body).unwrap();
    assert_eq!(&body[p.clone()], &whole.payload[..]);
    assert_eq!(&body[p], [0x08, 0x09]);
    assert_eq!((req.service, req.method), (whole.service, whole.method));
    assert_eq!(req.timeout_nano, 5);
    assert_eq!(req.metadata.len(), 1);
    assert!(req.payload.is_empty());
    // Truncated and bad wire types are errors, not panics.
    for n in 1..body.len() {
        let _ = proto::split::<Request>(&body[..n], 3);
    }
    assert!(proto::split::<Request>(&[0x0f], 3).is_err());
    assert!(proto::split::<Request>(&[0x1a, 0x05, 0x00], 3).is_err());
}

#[test]
fn reply_args_borrow_what_the_generated_parser_copies() {
    let arg = |buf: &[u8], ty, shm| Arg {
        buf: buf.to_vec(),
        size: buf.len() as u32,
        arg_type: ty,
        shm_offset: shm,
        ..Default::default()
    };
    let resp = GenopResponse {
        write_args: vec![
            arg(b"abc", 12, None),
            arg(b"", 18, Some(64)),
            arg(&[7; 300], 0, None),
        ],
        ..Default::default()
    };
    let bytes = resp.write_to_bytes().unwrap();
    let got = reply_args(&bytes).unwrap();
    assert_eq!(got.len(), 3);
    for ((a, buf), want) in got.iter().zip(&resp.write_args) {
        assert_eq!(*buf, &want.buf[..]);
        assert_eq!(
            (a.size, a.arg_type, a.shm_offset),
            (want.size, want.arg_type, want.shm_offset)
        );
    }
    for n in 0..bytes.len() {
        let _ = reply_args(&bytes[..n]); // truncated: an error or fewer args, never a panic
    }
}

#[test]
fn only_a_sealed_memfd_large_enough_is_mapped() {
    use super::shm::Region;
    let (r, fd) = Region::create(8192, false).unwrap();
    assert_eq!(r.len(), 8192);
    assert!(r.slice(8192 - 64, 64).is_some());
    assert!(r.slice(8192 - 63, 64).is_none());
    assert!(r.slice(u64::MAX, 1).is_none());
    assert!(Region::map(&fd, 8192, true).is_ok());
    assert!(
        Region::map(&fd, 8193, false).is_err(),
        "larger than the file"
    );
    assert!(Region::map(&fd, 0, false).is_err());
    // A file that cannot be sealed (not a memfd) is refused.
    let f = std::fs::File::open("/proc/self/exe").unwrap();
    let fd = std::os::fd::OwnedFd::from(f);
    assert!(Region::map(&fd, 4096, false).is_err());
    // An unsealed memfd too.
    // SAFETY: memfd_create with a static name; owned at once.
    let raw = unsafe { libc::memfd_create(c"skiff-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(raw >= 0);
    // SAFETY: a fresh fd nobody else owns.
    let m = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    // SAFETY: ftruncate on our own memfd.
    assert_eq!(unsafe { libc::ftruncate(raw, 4096) }, 0);
    assert!(Region::map(&m, 4096, false).is_err());
}
