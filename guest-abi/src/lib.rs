//! The guest ABI of skiff: Solo5's hvt ABI (version 2, x86_64) plus skiff's
//! extensions, as Rust types shared by the tender and its guests.
//!
//! Everything here is `no_std` and plain data: `#[repr(C)]` structs whose
//! sizes and field offsets are checked at compile time against the Solo5
//! layout, so host and guest cannot drift apart.
#![no_std]

#[cfg(not(target_pointer_width = "64"))]
compile_error!("the hvt ABI is defined for 64-bit x86 only");

pub mod accel;
pub mod elf;
pub mod hvt;
pub mod manifest;
pub mod skiff;

#[cfg(feature = "rt")]
pub mod rt;

/// Version of the hvt ABI (the `abi_version` in the ABI1 note).
pub const HVT_ABI_VERSION: u32 = 2;

#[cfg(feature = "host")]
mod host {
    //! `ByteValued` for the ABI structs, so the tender copies them out of
    //! guest memory whole instead of borrowing into memory the guest owns.
    use crate::{accel::*, hvt::*, manifest::*, skiff::*};

    macro_rules! byte_valued {
        ($($t:ty),*) => {$(
            // SAFETY: a #[repr(C)] struct of integers and integer arrays with
            // explicit padding fields: every bit pattern is a valid value.
            unsafe impl vm_memory::ByteValued for $t {}
        )*};
    }
    byte_valued!(BootInfo, HcWalltime, HcPuts, HcPoll, HcBlock, HcNet, HcHalt, MftEntry, MftHeader);
    byte_valued!(HcReqRead, HcRespWrite, HcReqMeta, HcRespHead, HcReqNext);
    byte_valued!(HcAccel, AccelArg);
}
