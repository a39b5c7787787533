//! The remote plugin against the frames captured between vAccel's own
//! agent and client (the fact sheet's): what it sends for an op, what it
//! writes back, where it finds its agent.

use super::{request, write_back};
use crate::accel::ops::{Layout, Op, Sgemm};
use crate::vaccel::addr::Address;
use crate::vaccel::frame;
use crate::vaccel::proto::{self, *};
use crate::vaccel::tests::{frame_of, CREATE_REQ, CREATE_RESP};
use protobuf::Message;
use std::io::Write;

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
    let mut l = Layout::of(&mut op, &[]);
    let req = request(1, &mut l);
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
        &mut l.write,
    )
    .unwrap();
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
    let mut l = Layout::of(&mut op, &[]);
    let e = write_back(
        &reply_args(&resp.write_to_bytes().unwrap()).unwrap(),
        None,
        &mut l.write,
    )
    .unwrap_err();
    assert_eq!(e.errno(), libc::EPROTO);
    drop(l);
    assert_eq!(c, [7.0; 4]);
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
