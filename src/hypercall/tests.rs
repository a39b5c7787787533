//! Decoding and handling with made-up exits: no KVM involved.

use super::*;
use crate::devices::{Devices, Stop};
use guest_abi::hvt::{ret, HcWalltime};

const MEM: u64 = 4 << 20;

fn out(nr: u16, arg: u32) -> Exit {
    Exit::IoOut {
        port: HYPERCALL_PIO_BASE + nr,
        size: 4,
        data: arg.to_le_bytes(),
    }
}

#[test]
fn only_32bit_out_to_hypercall_ports_decodes() {
    let mem = GuestMemory::new(MEM).unwrap();
    assert_eq!(
        decode(
            &Exit::IoOut {
                port: 0x501,
                size: 1,
                data: [0; 4]
            },
            &mem
        ),
        Err(GuestFault::BadOut {
            port: 0x501,
            size: 1
        })
    );
    assert_eq!(
        decode(&out(0x100, 0), &mem),
        Err(GuestFault::BadOut {
            port: 0x600,
            size: 4
        })
    );
    assert_eq!(
        decode(
            &Exit::IoIn {
                port: 0x502,
                size: 4
            },
            &mem
        ),
        Err(GuestFault::BadIn {
            port: 0x502,
            size: 4
        })
    );
    assert_eq!(
        decode(&out(9, 0x1000), &mem),
        Err(GuestFault::UnknownHypercall(9))
    );
    assert_eq!(decode(&Exit::Interrupted, &mem), Ok(None));
    assert_eq!(decode(&Exit::Shutdown, &mem), Err(GuestFault::TripleFault));
    assert_eq!(decode(&Exit::Hlt, &mem), Err(GuestFault::Hlt));
}

#[test]
fn every_hypercalls_argument_struct_is_checked_whole() {
    let mem = GuestMemory::new(MEM).unwrap();
    for &call in Hypercall::ALL {
        let size = call.arg_size() as u64;
        // The struct's last byte one past the end of memory: refused,
        // named after the table's row. Extensions read their own.
        let straddling = decode(&out(call as u16, (MEM - size + 1) as u32), &mem);
        let fits = decode(&out(call as u16, (MEM - size) as u32), &mem);
        match call {
            Hypercall::ReqRead
            | Hypercall::RespWrite
            | Hypercall::ReqMeta
            | Hypercall::RespHead
            | Hypercall::ReqNext
            | Hypercall::AccelOp => {
                assert!(
                    matches!(straddling, Ok(Some(Request::Extension { nr, .. })) if nr == call)
                );
            }
            _ => {
                assert!(
                    matches!(straddling, Err(GuestFault::BadArgument { call: name, .. }) if name == call.name()),
                    "{}: {straddling:?}",
                    call.name()
                );
                assert!(matches!(fits, Ok(Some(_))), "{}: {fits:?}", call.name());
            }
        }
    }
}

#[test]
fn argument_structs_must_lie_in_memory() {
    let mem = GuestMemory::new(MEM).unwrap();
    // A PUTS struct straddling the end of memory.
    let at = (MEM - 8) as u32;
    assert!(matches!(
        decode(&out(2, at), &mem),
        Err(GuestFault::BadArgument { call: "PUTS", .. })
    ));
    // The highest 32-bit address is far outside 4 MiB.
    assert!(matches!(
        decode(&out(8, u32::MAX), &mem),
        Err(GuestFault::BadArgument { .. })
    ));
    mem.write_obj(
        HcHalt {
            cookie: 0,
            exit_status: 42,
            _pad: 0,
        },
        Gpa(0x2000),
    )
    .unwrap();
    assert_eq!(
        decode(&out(8, 0x2000), &mem),
        Ok(Some(Request::Halt { status: 42 }))
    );
}

#[test]
fn puts_with_a_wild_buffer_ends_the_guest() {
    let mem = GuestMemory::new(MEM).unwrap();
    let mut dev = Devices::default();
    for (data, len) in [(MEM, 1), (u64::MAX, 2), (0x1000, u64::MAX), (MEM - 1, 2)] {
        let r = dev.handle(
            Request::Puts {
                arg: HcPuts { data, len },
            },
            &mem,
        );
        assert!(
            matches!(
                r,
                Err(Stop::Fault(GuestFault::BadArgument { call: "PUTS", .. }))
            ),
            "{data:x}+{len:x}"
        );
    }
}

#[test]
fn walltime_and_poll_write_their_results() {
    let mem = GuestMemory::new(MEM).unwrap();
    let mut dev = Devices::default();
    let req = decode(&out(1, 0x3000), &mem).unwrap().unwrap();
    assert_eq!(dev.handle(req, &mem).unwrap(), Control::Continue);
    let t: HcWalltime = mem.read_obj(Gpa(0x3000)).unwrap();
    assert!(t.nsecs > 1_600_000_000 * 1_000_000_000, "{}", t.nsecs);

    mem.write_obj(
        HcPoll {
            timeout_nsecs: 1000,
            ready_set: 77,
            ret: 9,
            _pad: 0,
        },
        Gpa(0x4000),
    )
    .unwrap();
    let req = decode(&out(3, 0x4000), &mem).unwrap().unwrap();
    dev.handle(req, &mem).unwrap();
    let p: HcPoll = mem.read_obj(Gpa(0x4000)).unwrap();
    assert_eq!((p.ready_set, p.ret), (0, 0));
}

#[test]
fn block_and_net_without_devices_get_einval() {
    let mem = GuestMemory::new(MEM).unwrap();
    let mut dev = Devices::default();
    mem.write_obj(
        HcBlock {
            handle: 1,
            len: 512,
            ..Default::default()
        },
        Gpa(0x5000),
    )
    .unwrap();
    let req = decode(&out(5, 0x5000), &mem).unwrap().unwrap();
    dev.handle(req, &mem).unwrap();
    let b: HcBlock = mem.read_obj(Gpa(0x5000)).unwrap();
    assert_eq!(b.ret, ret::EINVAL);
}

#[test]
fn mmio_exits_inside_memory_are_writes_to_read_only_pages() {
    let mem = GuestMemory::new(MEM).unwrap();
    let inside = Exit::Mmio {
        addr: 0x10_0000,
        write: true,
    };
    assert_eq!(
        decode(&inside, &mem),
        Err(GuestFault::ReadOnlyWrite { addr: 0x10_0000 })
    );
    let past = Exit::Mmio {
        addr: MEM,
        write: false,
    };
    assert_eq!(
        decode(&past, &mem),
        Err(GuestFault::Mmio {
            addr: MEM,
            write: false
        })
    );
}
