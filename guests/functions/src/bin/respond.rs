//! An HTTP function (ABI1 note marked a function, so its console goes to
//! stderr) steered by its query string, for `skiff serve`'s tests:
//! `status=N` and `type=T` set the response head (RESP_HEAD), `log` prints
//! a console line, then the body is echoed back; `exit=N` halts with N
//! after answering, `panic` panics after answering, `spin` never answers.
#![no_std]
#![no_main]

use guest_abi::rt::{function, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main, function);

const BUF_MAX: usize = 256 << 10;

/// The value of `key` in `a=b&c=d`, or `None`.
fn param<'a>(query: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    query.split(|&c| c == b'&').find_map(|kv| {
        let mut it = kv.splitn(2, |&c| c == b'=');
        (it.next()? == key).then(|| it.next().unwrap_or(b""))
    })
}

fn number(s: &[u8]) -> Option<u32> {
    core::str::from_utf8(s).ok()?.parse().ok()
}

fn main(ctx: &Ctx) -> i32 {
    if !function::available(ctx) {
        guest_abi::println!("respond: the tender does not serve function I/O");
        return 1;
    }
    // SAFETY: called once; nothing else uses memory past the image.
    let buf = unsafe { function::scratch(ctx, BUF_MAX) };
    // The first REQ_READ comes first: a snapshot (`skiff snapshot`) is
    // taken there, so everything after it sees this request's metadata.
    let Ok(mut n) = function::req_read(buf, 0) else {
        return 1;
    };
    let mut qbuf = [0u8; 1024];
    let query = function::req_meta("Query", &mut qbuf).unwrap_or(b"");
    if param(query, b"spin").is_some() {
        loop {
            core::hint::spin_loop();
        }
    }
    if param(query, b"log").is_some() {
        guest_abi::println!("respond: a console line, not part of the response");
    }
    let status = param(query, b"status").and_then(number);
    let ctype = param(query, b"type").and_then(|t| core::str::from_utf8(t).ok());
    if status.is_some() || ctype.is_some() {
        let s = status.unwrap_or(200) as u16;
        if function::resp_head(ctx, s, ctype.unwrap_or("")).is_err() {
            guest_abi::println!("respond: RESP_HEAD refused status {s}");
            return 2;
        }
    }
    while n > 0 {
        if function::resp_write(&buf[..n]).is_err() {
            return 1;
        }
        n = match function::req_read(buf, 0) {
            Ok(n) => n,
            Err(_) => return 1,
        };
    }
    if param(query, b"panic").is_some() {
        panic!("respond: deliberate panic after answering");
    }
    param(query, b"exit").and_then(number).unwrap_or(0) as i32
}
