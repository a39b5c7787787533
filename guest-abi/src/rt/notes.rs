//! The MFT1 manifest note a guest carries, and the [`manifest!`] macro.
//!
//! Layout, as in Solo5's `struct mft1_note` (checked against solo5-hvt's
//! `test_hello.hvt`): the 20-byte note header, 4 bytes of padding so the
//! manifest starts 8-byte aligned, the [`MftHeader`] and `N` entries. The
//! padding is counted in `n_descsz` (Solo5 strips it again when it reads the
//! note), so `n_descsz = 4 + 8 + N * 104`.
//!
//! The note is emitted as 4-aligned bytes ([`NoteBytes`]), as Solo5's is
//! (`aligned(4)`): readers such as readelf and goblin parse a note section
//! or PT_NOTE with 8-byte alignment by the other, 8-aligned note format, in
//! which the padding would be part of the header. The linker script starts
//! the section on a page, so the manifest is still 8-aligned in the file.
//!
//! [`manifest!`]: crate::manifest!

use core::mem::{offset_of, size_of};

use crate::elf::{NoteHeader, NOTE_HEADER_SIZE, NOTE_NAME, NOTE_NAMESZ, NOTE_TYPE_MFT};
use crate::manifest::{
    MftEntry, MftHeader, MFT_DEV_BLOCK_BASIC, MFT_DEV_NET_BASIC, MFT_MAX_ENTRIES, MFT_NAME_MAX,
    MFT_VERSION,
};

/// The whole MFT1 note with `N` entries (the reserved first one included).
#[repr(C, align(8))]
#[derive(Debug, Clone, Copy)]
pub struct MftNote<const N: usize> {
    pub header: NoteHeader,
    /// Aligns `mft` to 8; counted in `n_descsz`.
    pub pad: u32,
    pub mft: MftHeader,
    pub entries: [MftEntry; N],
}

/// Bytes between the end of the note header and the manifest.
pub const MFT_NOTE_PAD: usize = 4;

const _: () = assert!(offset_of!(MftNote<1>, mft) == NOTE_HEADER_SIZE + MFT_NOTE_PAD);
const _: () = assert!(offset_of!(MftNote<1>, entries) == 32);
const _: () = assert!(size_of::<MftNote<1>>() == 32 + 104);
const _: () = assert!(size_of::<MftNote<3>>() == 32 + 3 * 104);

impl<const N: usize> MftNote<N> {
    /// A note declaring `devices` (name, `MFT_DEV_*` type) after the reserved
    /// first entry. Evaluated at compile time by [`manifest!`](crate::manifest!),
    /// so a bad manifest is a build error rather than a tender refusal:
    /// names must be 1..=67 bytes, free of NUL and unique.
    pub const fn new(devices: &[(&str, u32)]) -> Self {
        assert!(devices.len() + 1 == N, "MftNote<N>: N must be devices + 1");
        assert!(
            N <= MFT_MAX_ENTRIES as usize,
            "manifest: more than 63 devices"
        );
        let mut entries = [MftEntry::reserved_first(); N];
        let mut i = 0;
        while i < devices.len() {
            let (name, kind) = devices[i];
            let b = name.as_bytes();
            assert!(
                !b.is_empty() && b.len() <= MFT_NAME_MAX,
                "manifest: name must be 1..=67 bytes"
            );
            let mut k = 0;
            while k < b.len() {
                assert!(b[k] != 0, "manifest: name contains NUL");
                k += 1;
            }
            assert!(
                kind == MFT_DEV_BLOCK_BASIC || kind == MFT_DEV_NET_BASIC,
                "manifest: unknown device type"
            );
            let mut j = 0;
            while j < i {
                assert!(
                    !bytes_eq(b, devices[j].0.as_bytes()),
                    "manifest: duplicate name"
                );
                j += 1;
            }
            entries[i + 1] = MftEntry::new(name, kind);
            i += 1;
        }
        Self {
            header: NoteHeader {
                namesz: NOTE_NAMESZ,
                descsz: (size_of::<Self>() - NOTE_HEADER_SIZE) as u32,
                kind: NOTE_TYPE_MFT,
                name: NOTE_NAME,
            },
            pad: 0,
            mft: MftHeader {
                version: MFT_VERSION,
                entries: N as u32,
            },
            entries,
        }
    }
}

impl<const N: usize> MftNote<N> {
    /// The note's bytes; `S` must be `size_of::<Self>()`.
    pub const fn to_bytes<const S: usize>(&self) -> NoteBytes<S> {
        assert!(
            S == size_of::<Self>(),
            "NoteBytes<S>: S must be the note's size"
        );
        // SAFETY: `S` is the size of `Self`, and `Self` has no padding bytes
        // (every gap is an explicit field), so all `S` bytes are initialised;
        // a byte array needs no alignment.
        NoteBytes(unsafe { core::ptr::read((self as *const Self).cast::<[u8; S]>()) })
    }
}

/// A note as bytes, aligned to 4 like every Solo5 note (see the module docs).
#[repr(C, align(4))]
#[derive(Debug, Clone, Copy)]
pub struct NoteBytes<const S: usize>(pub [u8; S]);

const fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Declares the guest's devices in its MFT1 note: a device's handle is its
/// position in the list plus one (entry 0 is reserved).
///
/// ```ignore
/// guest_abi::manifest!();                                // no devices
/// guest_abi::manifest!(block "storage", net "service0"); // handles 1 and 2
/// ```
///
/// Use it exactly once per guest: the note is a `#[no_mangle]` static, so a
/// second use fails to link, and the linker script refuses an image with
/// none. The ABI1 note comes from [`entry!`](crate::entry!).
#[macro_export]
macro_rules! manifest {
    ($($kind:ident $name:literal),* $(,)?) => {
        /// Manifest entries, the reserved first one included.
        const __SKIFF_MFT1_ENTRIES: usize = 1 + <[&str]>::len(&[$($name),*]);
        #[no_mangle]
        #[used]
        #[link_section = ".note.solo5.manifest"]
        static __SKIFF_MFT1_NOTE: $crate::rt::NoteBytes<
            { ::core::mem::size_of::<$crate::rt::MftNote<{ __SKIFF_MFT1_ENTRIES }>>() },
        > = $crate::rt::MftNote::<{ __SKIFF_MFT1_ENTRIES }>::new(&[
            $(($name, $crate::__mft_kind!($kind))),*
        ])
        .to_bytes();
    };
}

/// Maps a [`manifest!`](crate::manifest!) device keyword to its `MFT_DEV_*`.
#[doc(hidden)]
#[macro_export]
macro_rules! __mft_kind {
    (block) => {
        $crate::manifest::MFT_DEV_BLOCK_BASIC
    };
    (net) => {
        $crate::manifest::MFT_DEV_NET_BASIC
    };
}
