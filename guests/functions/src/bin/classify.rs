//! Classifies the image in its request body (PNG or JPEG) with the
//! operator's model through skiff's IMAGE_CLASSIFY, e.g.
//! `skiff run --accel=opencl --accel-model=imagenet=PATH classify.hvt < photo.jpg`.
//!
//! Response: `INDEX LABEL` of the top-1 class, then the top-5, one
//! `INDEX PROBABILITY LABEL` line each. Arguments: the model's name
//! (default `imagenet`); `session-first` opens the accelerator session
//! before reading the request (which a snapshot must refuse: the session
//! lives in the tender); `repeat=N` classifies N times and then prints
//! `classify: N-1 timed calls, min NS ns, mean NS ns` (benches; the first
//! call is a warm-up). Exits 1 with a
//! one-line message on failure.
#![no_std]
#![no_main]

use guest_abi::accel::{op, RESOURCE_MODEL};
use guest_abi::rt::accel::{self, arg, arg_mut, Session};
use guest_abi::rt::{function, monotonic_ns, Ctx};

guest_abi::manifest!();
guest_abi::entry!(main);

/// Largest image body accepted.
const BODY_MAX: usize = 32 << 20;

fn fail(what: &str, errno: i32) -> i32 {
    guest_abi::println!("classify: {what} failed: errno {errno}");
    1
}

/// The part of `buf` before its first NUL.
fn text(buf: &[u8]) -> &[u8] {
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    &buf[..n]
}

fn main(ctx: &Ctx) -> i32 {
    if !function::available(ctx) || !accel::available(ctx) {
        guest_abi::println!("classify: the tender serves no function I/O or accelerators");
        return 1;
    }
    let (mut model, mut repeat, mut early) = ("imagenet", 1u64, None);
    for word in ctx.cmdline().split_ascii_whitespace() {
        match word.strip_prefix("repeat=").map(str::parse) {
            Some(Ok(n)) if n > 0 => repeat = n,
            Some(_) => {
                guest_abi::println!("classify: usage: classify [MODEL] [session-first] [repeat=N]");
                return 1;
            }
            None if word == "session-first" => match Session::new(0) {
                Ok(s) => early = Some(s),
                Err(e) => return fail("session init", e),
            },
            None => model = word,
        }
    }
    // SAFETY: called once; nothing else uses memory past the image.
    let buf = unsafe { function::scratch(ctx, BODY_MAX) };
    let n = match function::req_read_all(buf) {
        Ok(0) => {
            guest_abi::println!("classify: empty request body: send an image");
            return 1;
        }
        Ok(n) => n,
        Err(e) => return fail("reading the body", e),
    };
    let sess = match early.map_or_else(|| Session::new(0), Ok) {
        Ok(s) => s,
        Err(e) => return fail("session init", e),
    };
    if let Err(e) = sess.register_named(RESOURCE_MODEL, model) {
        return fail("registering the model", e);
    }
    let (mut top1, mut top5) = ([0u8; 256], [0u8; 1024]);
    let read = [
        arg(guest_abi::accel::arg::UINT8, &[op::IMAGE_CLASSIFY]),
        arg(guest_abi::accel::arg::BUFFER, &buf[..n]),
    ];
    let write = [
        arg_mut(guest_abi::accel::arg::UCHAR_ARRAY, &mut top1),
        arg_mut(guest_abi::accel::arg::UCHAR_ARRAY, &mut top5),
    ];
    let (mut min, mut total) = (u64::MAX, 0);
    for i in 0..repeat {
        let t0 = monotonic_ns();
        if let Err(e) = sess.genop(&read, &write) {
            return fail("IMAGE_CLASSIFY", e);
        }
        // The first call warms caches up: not timed when repeating.
        if i > 0 {
            let dt = monotonic_ns() - t0;
            (min, total) = (min.min(dt), total + dt);
        }
    }
    let _ = sess.release();
    if repeat > 1 {
        let n = repeat - 1;
        let mean = total / n;
        guest_abi::println!("classify: {n} timed calls, min {min} ns, mean {mean} ns");
    }
    let out = [text(&top1), b"\n", text(&top5)];
    match out.iter().try_for_each(|part| function::resp_write(part)) {
        Ok(()) => 0,
        Err(e) => fail("writing the response", e),
    }
}
