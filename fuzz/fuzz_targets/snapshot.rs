//! The snapshot file parser (header, checksummed metadata, layout) on
//! arbitrary bytes, and the vCPU state and CPUID read from what it
//! accepts. Most inputs fail the checksum; the target also re-encodes the
//! data as a valid file (fresh checksum) so the fuzzer reaches the
//! metadata decoder and the layout checks behind it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::snapshot::format::{self, PAGE};

fn check(b: &[u8], file_len: u64) {
    if let Ok((h, m)) = format::decode(b, file_len) {
        // Every run inside guest memory and the file's data pages.
        for r in &m.runs {
            assert!(r.gpa + r.pages * PAGE <= h.mem_size);
            assert!(r.file_page + r.pages <= h.data_pages);
        }
        assert!(h.data_offset + h.data_pages * PAGE <= file_len);
        let _ = skiff::snapshot::vcpu::from_meta(&m);
        let c = skiff::snapshot::vcpu::cpuid_from_meta(&m);
        let _ = skiff::vcpu::missing_features(&c, &[]);
    }
}

fuzz_target!(|data: &[u8]| {
    let file_len = data.len() as u64 + 4 * PAGE;
    check(data, file_len);
    // The same bytes as metadata behind a valid header and checksum.
    if data.len() > format::HEADER_LEN && format::decode_header(data).is_ok() {
        check(&format::seal(data), file_len);
    }
});
