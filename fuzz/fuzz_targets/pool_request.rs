//! A pool worker's request parser on arbitrary bytes: anyone who can open
//! the pool's socket sends these.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::pool::proto;

fuzz_target!(|data: &[u8]| {
    let Some(header) = data.get(..proto::REQUEST_HEADER) else {
        return;
    };
    if let Ok((flags, n)) = proto::decode_request_header(header.try_into().unwrap()) {
        assert!(n <= proto::VARS_MAX);
        let body = &data[proto::REQUEST_HEADER..];
        if let Ok(vars) = proto::decode_vars(&body[..n.min(body.len())]) {
            // What decodes re-encodes to the same bytes, flags and all.
            let again = proto::encode_request(flags, &vars).unwrap();
            let h = again[..proto::REQUEST_HEADER].try_into().unwrap();
            assert_eq!(proto::decode_request_header(h).unwrap().0, flags);
            assert_eq!(&again[proto::REQUEST_HEADER..], &body[..n.min(body.len())]);
        }
    }
});
