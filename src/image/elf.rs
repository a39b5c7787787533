//! ELF64 header and program headers (goblin's types, read with bounds
//! checks), and the rules Solo5 places on loadable segments.

use super::ImageError;
use crate::memory::KERNEL_BASE;
use goblin::elf::{header, program_header as ph};
use goblin::elf64::header::{Header, SIZEOF_EHDR};
use goblin::elf64::program_header::{ProgramHeader, SIZEOF_PHDR};
use scroll::{Pread, LE};

/// The architectural page size segment bounds must align to.
pub const PAGE_SIZE: u64 = 0x1000;

/// A loadable segment: where it goes and the bytes the file gives it.
#[derive(Debug, Clone)]
pub struct Segment<'a> {
    pub addr: u64,
    pub memsz: u64,
    /// Page-aligned bounds, for host-side protection.
    pub start: u64,
    pub end: u64,
    pub data: &'a [u8],
    pub writable: bool,
    pub executable: bool,
}

/// The ELF64 header's size.
pub(super) const EHDR_SIZE: usize = SIZEOF_EHDR;

/// The most of a PT_NOTE segment read: far more than the largest Solo5
/// note (the manifest, under 8 KiB).
const NOTE_READ_MAX: u64 = 64 << 10;

/// A byte range of the file the image needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Range {
    pub off: u64,
    pub len: u64,
    /// A PT_LOAD segment's bytes (copied into guest memory).
    pub load: bool,
}

/// The file ranges an image needs, from its header (`head`, as much of
/// the first [`EHDR_SIZE`] bytes as the file has) and its program headers
/// (read with `read_at`). Anything malformed yields just the ranges read
/// so far: [`Elf::parse`] then names the problem.
pub(super) fn ranges(
    head: &[u8],
    mut read_at: impl FnMut(&mut [u8], u64) -> Result<usize, ImageError>,
) -> Result<Vec<Range>, ImageError> {
    let mut out = vec![Range {
        off: 0,
        len: head.len() as u64,
        load: false,
    }];
    let Ok(h) = head.pread_with::<Header>(0, LE) else {
        return Ok(out);
    };
    if head[header::EI_CLASS] != header::ELFCLASS64 || usize::from(h.e_phentsize) != SIZEOF_PHDR {
        return Ok(out);
    }
    let table_len = usize::from(h.e_phnum) * SIZEOF_PHDR;
    out.push(Range {
        off: h.e_phoff,
        len: table_len as u64,
        load: false,
    });
    let mut table = vec![0u8; table_len];
    if read_at(&mut table, h.e_phoff)? < table_len {
        return Ok(out);
    }
    for i in 0..usize::from(h.e_phnum) {
        let Ok(p) = table.pread_with::<ProgramHeader>(i * SIZEOF_PHDR, LE) else {
            break;
        };
        // A note segment is read as far as its first note can reach (the
        // Solo5 notes are each the first of their segment).
        match p.p_type {
            ph::PT_LOAD => out.push(Range {
                off: p.p_offset,
                len: p.p_filesz,
                load: true,
            }),
            ph::PT_NOTE => out.push(Range {
                off: p.p_offset,
                len: p.p_filesz.min(NOTE_READ_MAX),
                load: false,
            }),
            _ => {}
        }
    }
    Ok(out)
}

pub(super) struct Elf<'a> {
    pub bytes: &'a [u8],
    pub entry: u64,
    pub phdrs: Vec<ProgramHeader>,
}

impl<'a> Elf<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        if bytes.len() < 4 || &bytes[..4] != header::ELFMAG {
            return Err(ImageError::NotElf);
        }
        if bytes.len() < SIZEOF_EHDR {
            return Err(ImageError::Truncated("the ELF header"));
        }
        if bytes[header::EI_CLASS] != header::ELFCLASS64 {
            return Err(ImageError::Unsupported(
                "not a 64-bit ELF (ELFCLASS64 expected)",
            ));
        }
        if bytes[header::EI_DATA] != header::ELFDATA2LSB {
            return Err(ImageError::Unsupported("not little-endian"));
        }
        let h: Header = bytes
            .pread_with(0, LE)
            .map_err(|_| ImageError::Truncated("the ELF header"))?;
        if h.e_version != u32::from(header::EV_CURRENT) {
            return Err(ImageError::Unsupported("unknown ELF version"));
        }
        if h.e_machine != header::EM_X86_64 {
            return Err(ImageError::Unsupported("not an x86_64 executable"));
        }
        if h.e_type != header::ET_EXEC {
            return Err(ImageError::Unsupported(
                "not a static executable (ET_EXEC expected)",
            ));
        }
        if usize::from(h.e_ehsize) != SIZEOF_EHDR || usize::from(h.e_phentsize) != SIZEOF_PHDR {
            return Err(ImageError::Unsupported(
                "unexpected ELF header or program header size",
            ));
        }
        if h.e_phnum == 0 {
            return Err(ImageError::Invalid("no program headers".into()));
        }
        let table_len = usize::from(h.e_phnum) * SIZEOF_PHDR;
        let off =
            usize::try_from(h.e_phoff).map_err(|_| ImageError::Truncated("the program headers"))?;
        match off.checked_add(table_len) {
            Some(end) if end <= bytes.len() => {}
            _ => return Err(ImageError::Truncated("the program headers")),
        }
        let phdrs = (0..usize::from(h.e_phnum))
            .map(|i| bytes.pread_with::<ProgramHeader>(off + i * SIZEOF_PHDR, LE))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ImageError::Truncated("the program headers"))?;
        Ok(Self {
            bytes,
            entry: h.e_entry,
            phdrs,
        })
    }

    /// The file bytes `[off, off+len)`, checked.
    pub fn file_range(
        &self,
        off: u64,
        len: u64,
        what: &'static str,
    ) -> Result<&'a [u8], ImageError> {
        let end = off.checked_add(len).ok_or(ImageError::Truncated(what))?;
        if end > self.bytes.len() as u64 {
            return Err(ImageError::Truncated(what));
        }
        Ok(&self.bytes[off as usize..end as usize])
    }

    /// The PT_LOAD segments with contents, checked against `mem_size`, and
    /// `kernel_end`. Empty segments (Solo5's toolchain emits some) are skipped.
    pub fn segments(&self, mem_size: u64) -> Result<(Vec<Segment<'a>>, u64), ImageError> {
        let mut out: Vec<Segment<'a>> = Vec::with_capacity(4);
        let mut end_so_far = KERNEL_BASE;
        for (i, p) in self.phdrs.iter().enumerate() {
            if p.p_type != ph::PT_LOAD || p.p_memsz == 0 {
                continue;
            }
            let bad = |why: String| ImageError::Invalid(format!("segment {i}: {why}"));
            let align = p.p_align.max(1);
            if !align.is_power_of_two() {
                return Err(bad(format!(
                    "alignment 0x{:x} is not a power of two",
                    p.p_align
                )));
            }
            if p.p_vaddr != p.p_paddr {
                return Err(bad("virtual and physical addresses differ".into()));
            }
            if p.p_filesz > p.p_memsz {
                return Err(bad("file size exceeds memory size".into()));
            }
            let start = p.p_vaddr & !(align - 1);
            if start < KERNEL_BASE {
                return Err(bad(format!("address 0x{:x} is below 1 MiB", p.p_vaddr)));
            }
            if start < end_so_far && !out.is_empty() {
                return Err(bad(format!(
                    "address 0x{:x} overlaps or precedes the previous segment",
                    p.p_vaddr
                )));
            }
            let end = p
                .p_vaddr
                .checked_add(p.p_memsz)
                .and_then(|e| e.checked_add(align - 1))
                .map(|e| e & !(align - 1))
                .ok_or_else(|| bad("address + size overflows".into()))?;
            if end > mem_size {
                return Err(ImageError::TooBig(format!(
                    "segment {i} ends at 0x{end:x}, guest memory is 0x{mem_size:x} bytes"
                )));
            }
            if start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
                return Err(bad("bounds are not page-aligned".into()));
            }
            let writable = p.p_flags & ph::PF_W != 0;
            let executable = p.p_flags & ph::PF_X != 0;
            if writable && executable {
                return Err(bad("is both writable and executable".into()));
            }
            let data = self.file_range(p.p_offset, p.p_filesz, "a segment's contents")?;
            out.push(Segment {
                addr: p.p_vaddr,
                memsz: p.p_memsz,
                start,
                end,
                data,
                writable,
                executable,
            });
            end_so_far = end;
        }
        if out.is_empty() {
            return Err(ImageError::Invalid("no loadable segment".into()));
        }
        Ok((out, end_so_far))
    }
}
