//! The Solo5 ELF notes that mark an image as an hvt unikernel.

use core::mem::{offset_of, size_of};

/// Note name of both notes (`"Solo5"`, NUL-terminated, padded to 8).
pub const NOTE_NAME: [u8; 8] = *b"Solo5\0\0\0";
/// `n_namesz` of a Solo5 note.
pub const NOTE_NAMESZ: u32 = 6;
/// ELF note type of the ABI note (`"ABI1"`).
pub const NOTE_TYPE_ABI: u32 = 0x3149_4241;
/// ELF note type of the manifest note (`"MFT1"`).
pub const NOTE_TYPE_MFT: u32 = 0x3154_464d;
/// Size of a note header plus the padded name.
pub const NOTE_HEADER_SIZE: usize = 20;

/// ABI targets (`abi_target`).
pub const ABI_TARGET_HVT: u32 = 1;

/// An ELF note header with the padded "Solo5" name.
#[repr(C, align(4))]
#[derive(Debug, Clone, Copy)]
pub struct NoteHeader {
    pub namesz: u32,
    pub descsz: u32,
    pub kind: u32,
    pub name: [u8; 8],
}

/// `AbiDesc::reserved0` flag (a skiff extension; Solo5 writes 0 and never
/// reads it): the guest is a function. Its response is what it writes with
/// RESP_WRITE, so its console is a log: skiff sends the console to stderr
/// instead of stdout, and console text never enters a response.
pub const ABI_FLAG_FUNCTION: u32 = 1 << 0;

/// The ABI1 descriptor.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AbiDesc {
    pub abi_target: u32,
    pub abi_version: u32,
    pub reserved0: u32,
    pub reserved1: u32,
}

/// The whole ABI1 note, as a guest places it in `.note.solo5.abi`.
#[repr(C, align(4))]
#[derive(Debug, Clone, Copy)]
pub struct AbiNote {
    pub header: NoteHeader,
    pub desc: AbiDesc,
}

impl AbiNote {
    /// The note of an hvt function (see [`ABI_FLAG_FUNCTION`]).
    pub const fn hvt_function() -> Self {
        let mut n = Self::hvt();
        n.desc.reserved0 = ABI_FLAG_FUNCTION;
        n
    }

    /// The note of an hvt guest of this ABI version.
    pub const fn hvt() -> Self {
        Self {
            header: NoteHeader {
                namesz: NOTE_NAMESZ,
                descsz: size_of::<AbiDesc>() as u32,
                kind: NOTE_TYPE_ABI,
                name: NOTE_NAME,
            },
            desc: AbiDesc {
                abi_target: ABI_TARGET_HVT,
                abi_version: crate::HVT_ABI_VERSION,
                reserved0: 0,
                reserved1: 0,
            },
        }
    }
}

const _: () = assert!(size_of::<NoteHeader>() == NOTE_HEADER_SIZE);
const _: () = assert!(size_of::<AbiNote>() == 36);
const _: () = assert!(offset_of!(AbiNote, desc) == 20);
