//! Byte-level checks against the frames captured between vAccel's own
//! agent and client (the fact sheet's), and the pieces around them.

use super::addr::Address;
use super::frame::{self, FrameError, Header, Timed};
use super::proto::{self, *};
use super::{genop_request, write_back};
use crate::accel::ops::{Op, Sgemm};
use protobuf::Message;
use std::io::{self, Read, Write};

const CREATE_REQ: &[u8] = b"\x00\x00\x00\x2f\x00\x00\x00\x01\x01\x00\
\x0a\x1evaccel.sync.agent.AgentService\x12\x0dCreateSession";
const CREATE_RESP: &[u8] = b"\x00\x00\x00\x06\x00\x00\x00\x01\x02\x00\x0a\x00\x12\x02\x08\x01";

fn frame_of(kind: u8, stream: u32, body: &[u8]) -> Vec<u8> {
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

/// The fact sheet's Genop payload for sgemm m=n=k=2, alpha 1, beta 0.
fn captured_sgemm(a: &[f32; 4], b: &[f32; 4]) -> Vec<u8> {
    let mut v = vec![0x08, 0x01];
    let arg = |v: &mut Vec<u8>, tag: u8, buf: &[u8], ty: u8| {
        v.extend([tag, (buf.len() + 6) as u8, 0x0a, buf.len() as u8]);
        v.extend_from_slice(buf);
        v.extend([0x10, buf.len() as u8, 0x18, ty]);
    };
    let f32s = |x: &[f32]| x.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>();
    let two = 2i64.to_le_bytes();
    arg(&mut v, 0x12, &[17], 0x09);
    for _ in 0..3 {
        arg(&mut v, 0x12, &two, 0x07);
    }
    arg(&mut v, 0x12, &1f32.to_le_bytes(), 0x11);
    arg(&mut v, 0x12, &f32s(a), 0x12);
    arg(&mut v, 0x12, &two, 0x07);
    arg(&mut v, 0x12, &f32s(b), 0x12);
    arg(&mut v, 0x12, &two, 0x07);
    arg(&mut v, 0x12, &0f32.to_le_bytes(), 0x11);
    arg(&mut v, 0x12, &two, 0x07);
    arg(&mut v, 0x1a, &[0; 16], 0x12);
    v
}

#[test]
fn sgemm_genop_matches_the_captured_frame_and_reply() {
    let (a, b) = ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]);
    let mut c = [0f32; 4];
    let mut op = Op::Sgemm(Sgemm {
        m: 2,
        n: 2,
        k: 2,
        alpha: 1.0,
        a: &a,
        lda: 2,
        b: &b,
        ldb: 2,
        beta: 0.0,
        c: &mut c,
        ldc: 2,
    });
    let req = genop_request(1, &op, &[]);
    // Encoded from the borrowed buffers, and as the generated message.
    assert_eq!(proto::to_vec(&req).unwrap(), captured_sgemm(&a, &b));
    let generated = req.to_request().write_to_bytes().unwrap();
    assert_eq!(generated, captured_sgemm(&a, &b));
    drop(req);
    // The reply as the agent sends it: `0a 00 12 18 [0a 16 [Arg C]]`.
    let want = [19.0f32, 22.0, 43.0, 50.0];
    let cbytes: Vec<u8> = want.iter().flat_map(|f| f.to_le_bytes()).collect();
    let resp = GenopResponse {
        write_args: vec![Arg {
            buf: cbytes.clone(),
            size: 16,
            arg_type: 18,
            ..Default::default()
        }],
        ..Default::default()
    };
    let body = ok_response(&resp).unwrap();
    let mut expect = vec![0x0a, 0x00, 0x12, 0x18, 0x0a, 0x16, 0x0a, 0x10];
    expect.extend(&cbytes);
    expect.extend([0x10, 0x10, 0x18, 0x12]);
    assert_eq!(body, expect);
    write_back(
        &reply_args(&resp.write_to_bytes().unwrap()).unwrap(),
        None,
        &mut op,
    )
    .unwrap();
    let _ = op;
    assert_eq!(c, want);
}

#[test]
fn a_reply_of_the_wrong_size_writes_nothing() {
    let mut c = [7f32; 4];
    let mut op = Op::Sgemm(Sgemm {
        m: 2,
        n: 2,
        k: 2,
        alpha: 1.0,
        a: &[0.0; 4],
        lda: 2,
        b: &[0.0; 4],
        ldb: 2,
        beta: 0.0,
        c: &mut c,
        ldc: 2,
    });
    let resp = GenopResponse {
        write_args: vec![Arg {
            buf: vec![0; 12],
            size: 12,
            arg_type: 18,
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = write_back(
        &reply_args(&resp.write_to_bytes().unwrap()).unwrap(),
        None,
        &mut op,
    )
    .unwrap_err();
    assert_eq!(e.errno(), libc::EPROTO);
    let _ = op;
    assert_eq!(c, [7.0; 4]);
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
fn the_address_follows_vaccels_order() {
    use super::RemoteConfig;
    let t = std::time::Duration::from_secs(1);
    let env = |a: Option<&'static str>, b: Option<&'static str>| {
        move |k: &str| match k {
            "VACCEL_RPC_ADDRESS" => a.map(String::from),
            "VACCEL_RPC_ADDR" => b.map(String::from),
            _ => None,
        }
    };
    let addr = |f: Option<&str>, e| RemoteConfig::resolve(f, e, t).unwrap().addr.to_string();
    assert_eq!(addr(None, env(None, None)), "tcp://127.0.0.1:65500");
    assert_eq!(addr(None, env(None, Some("unix:///b"))), "unix:///b");
    assert_eq!(
        addr(None, env(Some("unix:///a"), Some("unix:///b"))),
        "unix:///a"
    );
    assert_eq!(
        addr(Some("vsock://3:4"), env(Some("unix:///a"), None)),
        "vsock://3:4"
    );
    assert!(RemoteConfig::resolve(None, env(Some("bogus"), None), t).is_err());
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

/// skiff's remote plugin against vAccel's agent: an EXEC names its
/// library by the run's PATH (what vAccel's agent dlopens), never by the
/// guest's NAME. The agent here replays vAccel's captured CreateSession
/// reply and answers the Genop as vAccel's agent does (caller-sized).
#[test]
fn exec_sends_the_path_vaccels_agent_dlopens() {
    use crate::accel::args::{Args, In, Out};
    use crate::accel::plugins::Plugin;
    use guest_abi::accel::{arg, op};
    let listener: Address = "tcp://127.0.0.1:0".parse().unwrap();
    let l = listener.listen().unwrap();
    let addr = l.local(&listener);
    let agent = std::thread::spawn(move || {
        let mut s = l.accept().unwrap();
        let (_, body) = frame::read_frame(&mut s, frame::VACCEL_MAX, None, None).unwrap();
        assert_eq!(body, CREATE_REQ[10..]);
        s.write_all(CREATE_RESP).unwrap();
        let (hd, body) = frame::read_frame(&mut s, frame::VACCEL_MAX, None, None).unwrap();
        let (req, p) = proto::split::<Request>(&body, 3).unwrap();
        assert_eq!(req.method, "Genop");
        let g = GenopRequest::parse_from_bytes(&body[p]).unwrap();
        let reply = GenopResponse {
            write_args: vec![Arg {
                buf: 15u32.to_le_bytes().to_vec(),
                size: 4,
                arg_type: arg::UINT32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let b = ok_response(&reply).unwrap();
        s.write_all(&frame_of(frame::TYPE_RESPONSE, hd.stream, &b))
            .unwrap();
        g
    });
    let cfg = super::RemoteConfig {
        addr,
        timeout: std::time::Duration::from_secs(20),
    };
    let lib = "/opt/functions/libskiffexec.so";
    let mut remote = super::Remote::connect(&cfg)
        .unwrap()
        .with_libs(vec![("testlib".into(), lib.into())]);
    let nums: Vec<u8> = [1u32, 2, 3, 4, 5]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let read = [
        In {
            ty: arg::UINT8,
            custom: 0,
            bytes: &[op::EXEC],
        },
        In {
            ty: arg::STRING,
            custom: 0,
            bytes: b"testlib\0",
        },
        In {
            ty: arg::STRING,
            custom: 0,
            bytes: b"sum_u32\0",
        },
        In {
            ty: arg::UINT32_ARRAY,
            custom: 0,
            bytes: &nums,
        },
    ];
    let mut sum = [0u8; 4];
    let write = [Out {
        ty: arg::UINT32,
        custom: 0,
        bytes: &mut sum,
    }];
    {
        let mut args = Args::from_host(&read, write).unwrap();
        let mut o = crate::accel::ops::decode(&mut args).unwrap();
        remote.forward(1, 0, &[], &mut o).unwrap();
    }
    assert_eq!(u32::from_le_bytes(sum), 15);
    let g = agent.join().unwrap();
    let sent: Vec<&[u8]> = g.read_args.iter().map(|a| &a.buf[..]).collect();
    let mut path = lib.as_bytes().to_vec();
    path.push(0);
    assert_eq!(sent, [&[op::EXEC][..], &path, b"sum_u32\0", &nums]);
    assert_eq!(g.read_args[1].size as usize, path.len()); // STRING sizes count the NUL
}
