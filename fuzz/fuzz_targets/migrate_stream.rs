//! The migration stream as the destination decodes it (src/migrate/):
//! preamble, handshake, image, page records, final state, end, on
//! arbitrary bytes. Every page handed on must lie inside the handshake's
//! guest memory. Most inputs fail a record's CRC; the target also feeds
//! the bytes as one correctly framed record of each kind behind a valid
//! handshake, so the fuzzer reaches the page and state checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::migrate::{dest, stream};
use skiff::snapshot::format::{self, Header, Meta};

/// The stream's bytes to read; what the destination answers is dropped.
struct Peer<'a>(&'a [u8]);

impl std::io::Read for Peer<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}

impl std::io::Write for Peer<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn decode(bytes: &[u8]) {
    let mut r = Peer(bytes);
    let Ok((h, m, _image)) = dest::read_hello(&mut r) else {
        return;
    };
    let _ = dest::read_guest(&mut r, &h, &m, &mut |gpa, data| {
        assert!(gpa % stream::PAGE == 0);
        assert!(gpa + data.len() as u64 <= h.mem_size);
    });
}

/// A valid stream start: preamble, a handshake for 2 MiB, an image.
fn hello() -> Vec<u8> {
    let h = Header {
        version: format::VERSION,
        mem_size: 2 << 20,
        ..Header::default()
    };
    let mut out = Vec::new();
    stream::write_preamble(&mut out).unwrap();
    stream::write_record(&mut out, stream::Kind::Hello, &[&format::encode(&h, &Meta::default())])
        .unwrap();
    stream::write_record(&mut out, stream::Kind::Image, &[b"image"]).unwrap();
    out
}

fuzz_target!(|data: &[u8]| {
    decode(data);
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let kind = match kind % 4 {
        0 => stream::Kind::Pages,
        1 => stream::Kind::State,
        2 => stream::Kind::Sync,
        _ => stream::Kind::End,
    };
    let mut s = hello();
    if stream::write_record(&mut s, kind, &[body]).is_ok() {
        let _ = stream::write_record(&mut s, stream::Kind::End, &[]);
        decode(&s);
    }
});
