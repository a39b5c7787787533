//! Function I/O handlers on plain guest memory (no KVM, no stdin reads).

use super::*;

const ARG: Gpa = Gpa(0x1000);
const NAME: u64 = 0x2000;
const BUF: u64 = 0x3000;

fn with_meta(pairs: &[(&str, &str)]) -> Function {
    Function {
        meta: pairs
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect(),
        ..Function::default()
    }
}

fn meta(f: &mut Function, mem: &GuestMemory, name: &[u8], len: u64) -> HcReqMeta {
    mem.write_bytes(name, Gpa(NAME)).unwrap();
    let req = HcReqMeta {
        name: NAME,
        name_len: name.len() as u64,
        data: BUF,
        len,
        ret: ret::EUNSPEC,
        _pad: 0,
    };
    mem.write_obj(req, ARG).unwrap();
    f.req_meta(mem, ARG).unwrap();
    mem.read_obj(ARG).unwrap()
}

#[test]
fn metadata_lookups() {
    let mem = GuestMemory::new(2 << 20).unwrap();
    let mut f = with_meta(&[("Method", "POST"), ("Path", "/x")]);
    let r = meta(&mut f, &mem, b"Method", 64);
    assert_eq!((r.ret, r.len), (ret::OK, 4));
    let mut v = [0u8; 4];
    mem.read_bytes(&mut v, Gpa(BUF)).unwrap();
    assert_eq!(&v, b"POST");
    let r = meta(&mut f, &mem, b"Query", 64);
    assert_eq!(r.ret, skiff::ret::NOT_FOUND);
    let r = meta(&mut f, &mem, b"Method", 3);
    assert_eq!((r.ret, r.len), (skiff::ret::TOO_SMALL, 4));
    for bad in [&b""[..], b"Me-thod", b"Path\0", b"../x"] {
        assert_eq!(meta(&mut f, &mem, bad, 64).ret, ret::EINVAL, "{bad:?}");
    }
}

#[test]
fn only_http_variables_are_captured() {
    let vars = [
        ("Http_Method", "GET"),
        ("PATH", "/bin"),
        ("Method", "evil"),
        ("HTTP_X", "1"),
    ];
    let f = Function::from_vars(vars.iter().map(|(k, v)| (k.into(), v.into())));
    assert_eq!(f.meta, vec![(b"Method".to_vec(), b"GET".to_vec())]);
}

#[test]
fn bad_guest_buffers_are_einval_not_faults() {
    let mem = GuestMemory::new(2 << 20).unwrap();
    let mut f = Function::default();
    for (data, len) in [(u64::MAX - 4, 16), (0x1f_f000, 0x2000), (0, u64::MAX)] {
        let req = HcReqRead {
            data,
            len,
            limit: 0,
            ret: ret::EUNSPEC,
            flags: 0,
        };
        mem.write_obj(req, ARG).unwrap();
        f.req_read(&mem, ARG).unwrap();
        assert_eq!(mem.read_obj::<HcReqRead>(ARG).unwrap().ret, ret::EINVAL);
        let w = HcRespWrite {
            data,
            len,
            ret: ret::EUNSPEC,
            _pad: 0,
        };
        mem.write_obj(w, ARG).unwrap();
        f.resp_write(&mem, ARG).unwrap();
        assert_eq!(mem.read_obj::<HcRespWrite>(ARG).unwrap().ret, ret::EINVAL);
    }
    // Unknown flags are refused before anything is read.
    let req = HcReqRead {
        data: 0x10000,
        len: 16,
        limit: 0,
        ret: ret::EUNSPEC,
        flags: 1 << 5,
    };
    mem.write_obj(req, ARG).unwrap();
    f.req_read(&mem, ARG).unwrap();
    assert_eq!(mem.read_obj::<HcReqRead>(ARG).unwrap().ret, ret::EINVAL);
    // An argument struct outside memory ends the guest with a fault.
    assert!(matches!(
        f.req_read(&mem, Gpa(u64::MAX - 8)),
        Err(Stop::Fault(GuestFault::BadArgument { .. }))
    ));
}
