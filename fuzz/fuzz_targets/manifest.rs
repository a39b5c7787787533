//! The Solo5 manifest (MFT1 note descriptor) parser on arbitrary bytes,
//! without the ELF around it, so the fuzzer reaches it directly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::image::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        assert!(m.entries.len() <= guest_abi::manifest::MFT_MAX_ENTRIES as usize);
        assert!(m.devices.len() < m.entries.len().max(1));
    }
});
