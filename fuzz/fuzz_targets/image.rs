//! The image loader on arbitrary bytes: `Image::parse` (ELF header, program
//! headers, Solo5 ABI1/MFT1 notes, manifest, segment layout) and, for an
//! accepted image, `Image::load` into guest memory. Oracle: no panic, and
//! an accepted image lies inside the memory it was checked against.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::image::Image;
use skiff::memory::GuestMemory;
use std::sync::OnceLock;

/// Guest memory size the images are checked against (lazily backed).
const MEM: u64 = 4 << 20;

fn memory() -> &'static GuestMemory {
    static MEMORY: OnceLock<GuestMemory> = OnceLock::new();
    MEMORY.get_or_init(|| GuestMemory::new(MEM).expect("guest memory"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(img) = Image::parse(data, MEM) else {
        return;
    };
    assert!(img.entry >= skiff::memory::KERNEL_BASE && img.entry < MEM);
    assert!(img.kernel_end <= MEM);
    let mut prev_end = 0;
    for s in &img.segments {
        assert!(s.addr >= prev_end, "segments overlap or are unordered");
        assert!(s.data.len() as u64 <= s.memsz);
        assert!(s.addr + s.memsz <= MEM && s.start <= s.addr && s.end <= MEM);
        prev_end = s.addr + s.memsz;
    }
    img.load(memory()).expect("an accepted image loads");
});
