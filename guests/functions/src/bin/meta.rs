//! A function that answers with its request's method, path and query and
//! its body's length, as JSON: `{"method":"GET","path":"/x","query":"",
//! "body_bytes":0}`. It accepts bodies of at most 64 KiB.
#![no_std]
#![no_main]

use guest_abi::rt::function::{self, MetaError};
use guest_abi::rt::Ctx;

guest_abi::manifest!();
guest_abi::entry!(main, function);

const BODY_MAX: usize = 64 << 10;

/// A small response buffer: the JSON is built here, then written once.
struct Out {
    buf: [u8; 8192],
    len: usize,
}

impl Out {
    fn raw(&mut self, s: &[u8]) {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s[..n]);
        self.len += n;
    }

    /// A JSON string: quotes, backslashes and control bytes escaped.
    fn string(&mut self, s: &[u8]) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.raw(b"\"");
        for &c in s {
            match c {
                b'"' => self.raw(b"\\\""),
                b'\\' => self.raw(b"\\\\"),
                c if c < 0x20 => self.raw(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(c >> 4) as usize],
                    HEX[(c & 15) as usize],
                ]),
                c => self.raw(&[c]),
            }
        }
        self.raw(b"\"");
    }

    fn number(&mut self, mut n: u64) {
        let mut d = [0u8; 20];
        let mut i = d.len();
        loop {
            i -= 1;
            d[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.raw(&d[i..]);
    }
}

fn main(ctx: &Ctx) -> i32 {
    if !function::available(ctx) {
        guest_abi::println!("meta: the tender does not serve function I/O");
        return 1;
    }
    // SAFETY: called once; nothing else uses memory past the image.
    let body = unsafe { function::scratch(ctx, BODY_MAX) };
    let Ok(body_len) = function::req_read_all(body) else {
        return 1;
    };
    let mut out = Out {
        buf: [0; 8192],
        len: 0,
    };
    let mut sep = b"{" as &[u8];
    for (key, name) in [("method", "Method"), ("path", "Path"), ("query", "Query")] {
        let mut val = [0u8; 2048];
        out.raw(sep);
        sep = b",";
        out.string(key.as_bytes());
        out.raw(b":");
        match function::req_meta(name, &mut val) {
            Ok(v) => out.string(v),
            Err(MetaError::NotFound) => out.raw(b"null"),
            Err(_) => return 1,
        }
    }
    out.raw(b",\"body_bytes\":");
    out.number(body_len as u64);
    out.raw(b"}\n");
    match function::resp_write(&out.buf[..out.len]) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
