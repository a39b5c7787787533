//! Hypercall decoding and argument validation on made-up exits: a short
//! sequence of KVM exits (mostly `OUT`s to the hypercall ports) against a
//! small guest memory whose contents are the rest of the input, through
//! `hypercall::decode` and `Devices::handle`, as the vCPU loop does.
//! Oracle: no panic; decode accepts only a 32-bit OUT to a known
//! hypercall port with its argument struct inside guest memory; a fault
//! or HALT ends the sequence, as it ends the run.
#![no_main]

use guest_abi::hvt::{Hypercall, HYPERCALL_PIO_BASE};
use libfuzzer_sys::fuzz_target;
use skiff::devices::{Devices, Stop};
use skiff::hypercall::{self, Control, Request};
use skiff::memory::{Gpa, GuestMemory};
use skiff::vcpu::Exit;
use std::sync::OnceLock;

/// A small guest, so fuzzed 32-bit addresses often land inside it.
const MEM: u64 = 64 << 10;
/// A read-only range (as the image's text is), which writes must refuse.
const RO: (u64, u64) = (0x8000, 0xa000);
const MAX_EXITS: usize = 16;

fn memory() -> &'static GuestMemory {
    static MEMORY: OnceLock<GuestMemory> = OnceLock::new();
    MEMORY.get_or_init(|| {
        // PUTS writes to fd 1: send it to /dev/null, not the terminal.
        // SAFETY: plain fd calls on a path literal; fd 1 is ours to replace.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            assert!(null >= 0);
            libc::dup2(null, 1);
            libc::close(null);
        }
        let mut m = GuestMemory::new(MEM).expect("guest memory");
        m.protect(RO.0, RO.1).expect("protect");
        m
    })
}

/// One 8-byte record: `[kind, size, port_lo, port_hi, d0, d1, d2, d3]`.
fn exit_from(r: &[u8]) -> Exit {
    let port = u16::from_le_bytes([r[2], r[3]]);
    let data = [r[4], r[5], r[6], r[7]];
    let word = u32::from_le_bytes(data);
    match r[0] % 17 {
        // Mostly well-formed hypercalls, so the handlers get exercised.
        0..=5 => Exit::IoOut {
            port: HYPERCALL_PIO_BASE + u16::from(r[2] % 24),
            size: 4,
            data,
        },
        6 => Exit::IoOut {
            port,
            size: r[1],
            data,
        },
        7 => Exit::IoIn { port, size: r[1] },
        8 => Exit::Mmio {
            addr: u64::from(word) << (r[1] % 33),
            write: r[1] & 1 == 1,
        },
        9 => Exit::Hlt,
        10 => Exit::Shutdown,
        11 => Exit::FailEntry(u64::from(word)),
        12 => Exit::InternalError(word),
        13 => Exit::TranslationFault,
        14 => Exit::Interrupted,
        15 => Exit::Debug,
        _ => Exit::Other(word),
    }
}

/// Size of the argument struct decode checked, or `None` for an extension
/// hypercall, whose owner reads (and checks) its own argument.
fn arg_size(req: &Request) -> Option<u64> {
    use guest_abi::hvt::*;
    let s = match req {
        Request::Walltime { .. } => size_of::<HcWalltime>(),
        Request::Puts { .. } => size_of::<HcPuts>(),
        Request::Poll { .. } => size_of::<HcPoll>(),
        Request::BlockWrite { .. } | Request::BlockRead { .. } => size_of::<HcBlock>(),
        Request::NetWrite { .. } | Request::NetRead { .. } => size_of::<HcNet>(),
        Request::Halt { .. } => size_of::<HcHalt>(),
        Request::Extension { .. } => return None,
    };
    Some(s as u64)
}

fuzz_target!(|data: &[u8]| {
    let mem = memory();
    let n = data
        .first()
        .map_or(0, |b| usize::from(*b) % (MAX_EXITS + 1));
    let (records, rest) = data
        .get(1..)
        .unwrap_or(&[])
        .split_at((n * 8).min(data.len().saturating_sub(1)));
    // Guest memory: the rest of the input from 0, the writable part only,
    // zeroed first so runs do not see each other's state.
    static ZERO: [u8; MEM as usize] = [0; MEM as usize];
    mem.write_bytes(&ZERO[..RO.0 as usize], Gpa(0)).unwrap();
    mem.write_bytes(&ZERO[RO.1 as usize..], Gpa(RO.1)).unwrap();
    let head = &rest[..rest.len().min(RO.0 as usize)];
    mem.write_bytes(head, Gpa(0)).unwrap();
    let tail = &rest[head.len()..];
    let tail = &tail[..tail.len().min((MEM - RO.1) as usize)];
    mem.write_bytes(tail, Gpa(MEM - tail.len() as u64)).unwrap();

    let mut devices = Devices::default();
    for r in records.chunks_exact(8) {
        let exit = exit_from(r);
        let req = match hypercall::decode(&exit, mem) {
            Ok(None) => continue,
            Ok(Some(req)) => req,
            Err(_) => return,
        };
        let Exit::IoOut { port, size, data } = exit else {
            panic!("{exit:?} decoded as a hypercall");
        };
        assert_eq!(size, 4);
        assert!(Hypercall::try_from(port - HYPERCALL_PIO_BASE).is_ok());
        let arg = u64::from(u32::from_le_bytes(data));
        if let Some(size) = arg_size(&req) {
            assert!(arg + size <= MEM, "{req:?} outside memory");
        }
        // POLL's timeout is real time: the fuzzer must not sleep.
        let req = match req {
            Request::Poll { arg, mut req } => {
                req.timeout_nsecs = 0;
                Request::Poll { arg, req }
            }
            other => other,
        };
        match devices.handle(req, mem) {
            Ok(Control::Continue) => {}
            Ok(Control::Halt(_)) | Err(Stop::Fault(_)) => return,
            Err(e) => panic!("host error from a guest request: {e}"),
        }
    }
});
