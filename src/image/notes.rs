//! The Solo5 ELF notes: ABI1 says "hvt, version 2", MFT1 carries the
//! manifest. Each must be the first note of its own PT_NOTE segment.

use super::{elf::Elf, ImageError};
use goblin::elf::program_header::PT_NOTE;
use guest_abi::elf::{NOTE_HEADER_SIZE, NOTE_NAME, NOTE_NAMESZ, NOTE_TYPE_ABI, NOTE_TYPE_MFT};
use guest_abi::manifest::{MftEntry, MFT_MAX_ENTRIES};

const ABI_DESC_SIZE: u64 = 16;
/// The MFT1 descriptor starts 8-aligned: 4 padding bytes follow the 20-byte
/// header, and Solo5 counts them in `n_descsz`.
const MFT_PAD: u64 = 4;
const MFT_DESC_MAX: u64 =
    MFT_PAD + 8 + MFT_MAX_ENTRIES as u64 * std::mem::size_of::<MftEntry>() as u64;

/// The descriptor (after `skip` bytes) of the Solo5 note of type `kind`.
fn find<'a>(elf: &Elf<'a>, kind: u32, max: u64, skip: u64) -> Result<Option<&'a [u8]>, ImageError> {
    for (i, p) in elf.phdrs.iter().enumerate() {
        if p.p_type != PT_NOTE || p.p_filesz < NOTE_HEADER_SIZE as u64 {
            continue;
        }
        let hdr = elf.file_range(p.p_offset, NOTE_HEADER_SIZE as u64, "a note header")?;
        let word = |o: usize| u32::from_le_bytes([hdr[o], hdr[o + 1], hdr[o + 2], hdr[o + 3]]);
        let (namesz, descsz, ty) = (word(0), word(4), word(8));
        if namesz != NOTE_NAMESZ || hdr[12..20] != NOTE_NAME || ty != kind {
            continue;
        }
        let descsz = u64::from(descsz);
        if descsz <= skip || descsz > max || NOTE_HEADER_SIZE as u64 + descsz > p.p_filesz {
            return Err(ImageError::Invalid(format!(
                "note in program header {i} has an invalid size ({descsz} bytes)"
            )));
        }
        let off = p.p_offset + NOTE_HEADER_SIZE as u64 + skip;
        return elf.file_range(off, descsz - skip, "a note").map(Some);
    }
    Ok(None)
}

/// Refuses images that are not for hvt, ABI version 2; returns the note's
/// `reserved0` word (skiff's `ABI_FLAG_*`; 0 from Solo5's toolchain).
pub(super) fn check_abi(elf: &Elf<'_>) -> Result<u32, ImageError> {
    let d = find(elf, NOTE_TYPE_ABI, ABI_DESC_SIZE, 0)?.ok_or(ImageError::NoAbiNote)?;
    if d.len() != ABI_DESC_SIZE as usize {
        return Err(ImageError::Invalid("ABI1 note has the wrong size".into()));
    }
    let target = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    let version = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
    let name = match target {
        1 => "hvt",
        2 => "spt",
        3 => "virtio",
        4 => "muen",
        5 => "genode",
        6 => "xen",
        _ => "unknown",
    };
    if target != guest_abi::elf::ABI_TARGET_HVT {
        return Err(ImageError::WrongTarget(name));
    }
    if version != guest_abi::HVT_ABI_VERSION {
        return Err(ImageError::WrongAbiVersion(version));
    }
    Ok(u32::from_le_bytes([d[8], d[9], d[10], d[11]]))
}

/// The manifest bytes (header and entries) from the MFT1 note.
pub(super) fn manifest_desc<'a>(elf: &Elf<'a>) -> Result<&'a [u8], ImageError> {
    find(elf, NOTE_TYPE_MFT, MFT_DESC_MAX, MFT_PAD)?.ok_or(ImageError::NoManifest)
}
