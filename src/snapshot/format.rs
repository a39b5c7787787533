//! The snapshot file: a fixed header, a checksummed metadata block (vCPU
//! state, memory runs, run flags, device record), then the saved guest
//! pages, page-aligned so restore can map them straight from the file.
//!
//! ```text
//! 0       header (HEADER_LEN bytes, little-endian)
//! 136     metadata (meta_len bytes)
//! data_offset (page-aligned): data_pages pages, in run order
//! ```
//!
//! The checksum (SHA-256) covers the header and the metadata, so a
//! corrupted or truncated file is refused before anything runs. The page
//! data is not hashed at restore: that would be work per saved page and
//! would read every page in; its length is checked against the file size.

use sha2::{Digest, Sha256};
use thiserror::Error;

pub const MAGIC: [u8; 8] = *b"SKIFFSNP";
pub const VERSION: u32 = 2;
pub const PAGE: u64 = 4096;
/// [`Meta::kvm`] of a snapshot made on kvm_pvm.
pub const KVM_PVM: u32 = 1;
pub const HEADER_LEN: usize = 136;
/// [`Meta::pending_req_read`] of a guest stopped anywhere else than inside
/// a REQ_READ (`snapshot` on a control socket, a migration): it resumes
/// with nothing to answer first.
pub const NO_PENDING_REQ_READ: u64 = u64::MAX;
const CHECKSUM_AT: usize = 104;

/// Why a snapshot file was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a skiff snapshot (bad magic)")]
    Magic,
    #[error("snapshot format version {0} is not supported (this skiff reads version {VERSION})")]
    Version(u32),
    #[error("snapshot is truncated")]
    Truncated,
    #[error("snapshot is corrupted (checksum mismatch)")]
    Checksum,
    #[error("snapshot is corrupted ({0})")]
    Invalid(&'static str),
}

/// The fixed header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    pub version: u32,
    /// The host features the guest was booted with (boot info).
    pub host_features: u32,
    pub mem_size: u64,
    pub image_sha256: [u8; 32],
    /// CLOCK_REALTIME at the moment `guest_tsc` was read, in ns.
    pub saved_at_ns: u64,
    pub guest_tsc: u64,
    pub tsc_hz: u64,
    pub meta_len: u64,
    pub data_offset: u64,
    pub data_pages: u64,
}

/// A run of saved pages: guest pages `[gpa, gpa + pages * PAGE)` are the
/// file's data pages `[file_page, file_page + pages)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub gpa: u64,
    pub pages: u64,
    pub file_page: u64,
}

/// What a device the guest was booted with looked like to it: a restore
/// must bind a device of the same kind and name, with the same geometry
/// (block) or MAC/MTU (net), since the guest cached them at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// 1: block, 2: net (guest_abi's manifest types).
    pub kind: u32,
    pub name: String,
    /// Block: capacity in bytes, block size. Net: MTU, MAC in the low 48 bits.
    pub a: u64,
    pub b: u64,
}

/// Everything but the header and the pages.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    pub cmdline: Vec<u8>,
    /// The host's boot id when the snapshot was made (empty if unknown)
    /// and CLOCK_MONOTONIC_RAW at `Header::saved_at_ns` (snapshot/clock.rs).
    pub boot_id: Vec<u8>,
    pub saved_raw_ns: u64,
    /// The guest-physical argument of the REQ_READ the guest is inside, or
    /// [`NO_PENDING_REQ_READ`].
    pub pending_req_read: u64,
    /// Page-aligned ranges mapped read-only (the image's text and rodata).
    pub read_only: Vec<(u64, u64)>,
    pub devices: Vec<DeviceRecord>,
    /// The vCPU (vcpu/state.rs): raw kvm_regs, kvm_sregs, kvm_xsave,
    /// kvm_xcrs, and kvm_debugregs, kvm_vcpu_events, kvm_mp_state (empty
    /// where the KVM had none).
    pub regs: Vec<u8>,
    pub sregs: Vec<u8>,
    pub xsave: Vec<u8>,
    pub xcrs: Vec<u8>,
    pub debugregs: Vec<u8>,
    pub events: Vec<u8>,
    pub mp_state: Vec<u8>,
    /// The CPUID the guest saw: (function, index, flags, eax, ebx, ecx, edx).
    pub cpuid: Vec<[u32; 7]>,
    /// Which KVM made it: [`KVM_PVM`] or 0 (a standard KVM).
    pub kvm: u32,
    /// (index, value), IA32_TSC excluded (it is set from the header).
    pub msrs: Vec<(u32, u64)>,
    pub runs: Vec<Run>,
}

struct W(Vec<u8>);

impl W {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

struct R<'a>(&'a [u8]);

impl<'a> R<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], FormatError> {
        let n = usize::try_from(n).map_err(|_| FormatError::Truncated)?;
        if n > self.0.len() {
            return Err(FormatError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, FormatError> {
        let n = self.u64()?;
        Ok(self.take(n)?.to_vec())
    }
    /// A count of items at least `min` bytes each, checked against what is
    /// left so a corrupted count cannot ask for a huge allocation.
    fn count(&mut self, min: u64) -> Result<usize, FormatError> {
        let n = self.u64()?;
        if n.saturating_mul(min) > self.0.len() as u64 {
            return Err(FormatError::Truncated);
        }
        Ok(n as usize)
    }
}

impl Header {
    fn encode_raw(&self, checksum: &[u8; 32]) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(HEADER_LEN));
        w.0.extend_from_slice(&MAGIC);
        w.u32(self.version);
        w.u32(self.host_features);
        w.u64(self.mem_size);
        w.0.extend_from_slice(&self.image_sha256);
        for v in [
            self.saved_at_ns,
            self.guest_tsc,
            self.tsc_hz,
            self.meta_len,
            self.data_offset,
            self.data_pages,
        ] {
            w.u64(v);
        }
        debug_assert_eq!(w.0.len(), CHECKSUM_AT);
        w.0.extend_from_slice(checksum);
        w.0
    }
}

fn checksum(header_zeroed: &[u8], meta: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(header_zeroed);
    h.update(meta);
    h.finalize().into()
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut w = W(Vec::with_capacity(8192));
        w.bytes(&self.cmdline);
        w.bytes(&self.boot_id);
        w.u64(self.saved_raw_ns);
        w.u64(self.pending_req_read);
        w.u64(self.read_only.len() as u64);
        for &(a, b) in &self.read_only {
            w.u64(a);
            w.u64(b);
        }
        w.u64(self.devices.len() as u64);
        for d in &self.devices {
            w.u32(d.kind);
            w.bytes(d.name.as_bytes());
            w.u64(d.a);
            w.u64(d.b);
        }
        for b in [
            &self.regs,
            &self.sregs,
            &self.xsave,
            &self.xcrs,
            &self.debugregs,
            &self.events,
            &self.mp_state,
        ] {
            w.bytes(b);
        }
        w.u64(self.cpuid.len() as u64);
        for e in &self.cpuid {
            e.iter().for_each(|&v| w.u32(v));
        }
        w.u32(self.kvm);
        w.u64(self.msrs.len() as u64);
        for &(i, v) in &self.msrs {
            w.u32(i);
            w.u64(v);
        }
        w.u64(self.runs.len() as u64);
        for r in &self.runs {
            w.u64(r.gpa);
            w.u64(r.pages);
            w.u64(r.file_page);
        }
        w.0
    }

    fn decode(b: &[u8]) -> Result<Self, FormatError> {
        let mut r = R(b);
        let mut m = Meta {
            cmdline: r.bytes()?,
            boot_id: r.bytes()?,
            saved_raw_ns: r.u64()?,
            pending_req_read: r.u64()?,
            ..Meta::default()
        };
        for _ in 0..r.count(16)? {
            m.read_only.push((r.u64()?, r.u64()?));
        }
        for _ in 0..r.count(28)? {
            let kind = r.u32()?;
            let name =
                String::from_utf8(r.bytes()?).map_err(|_| FormatError::Invalid("device name"))?;
            m.devices.push(DeviceRecord {
                kind,
                name,
                a: r.u64()?,
                b: r.u64()?,
            });
        }
        m.regs = r.bytes()?;
        m.sregs = r.bytes()?;
        m.xsave = r.bytes()?;
        m.xcrs = r.bytes()?;
        m.debugregs = r.bytes()?;
        m.events = r.bytes()?;
        m.mp_state = r.bytes()?;
        for _ in 0..r.count(28)? {
            let mut e = [0u32; 7];
            for v in &mut e {
                *v = r.u32()?;
            }
            m.cpuid.push(e);
        }
        m.kvm = r.u32()?;
        for _ in 0..r.count(12)? {
            m.msrs.push((r.u32()?, r.u64()?));
        }
        for _ in 0..r.count(24)? {
            m.runs.push(Run {
                gpa: r.u64()?,
                pages: r.u64()?,
                file_page: r.u64()?,
            });
        }
        if !matches!(m.boot_id.len(), 0 | 36) {
            return Err(FormatError::Invalid("boot id"));
        }
        if !r.0.is_empty() {
            return Err(FormatError::Invalid("trailing metadata"));
        }
        Ok(m)
    }
}

/// Header and metadata as written at the start of the file (not padded).
pub fn encode(header: &Header, meta: &Meta) -> Vec<u8> {
    let meta_bytes = meta.encode();
    let mut h = header.clone();
    h.meta_len = meta_bytes.len() as u64;
    h.data_offset = (HEADER_LEN as u64 + h.meta_len).next_multiple_of(PAGE);
    let zero = h.encode_raw(&[0; 32]);
    let sum = checksum(&zero, &meta_bytes);
    let mut out = h.encode_raw(&sum);
    out.extend_from_slice(&meta_bytes);
    out
}

/// `b` (header and metadata) with its checksum recomputed over whatever
/// it holds, and `meta_len` set to the rest: for the fuzzer, to get past
/// the checksum into the metadata decoder. `b` must hold a header.
pub fn seal(b: &[u8]) -> Vec<u8> {
    let mut out = b.to_vec();
    if out.len() < HEADER_LEN {
        return out;
    }
    let meta_len = (out.len() - HEADER_LEN) as u64;
    out[80..88].copy_from_slice(&meta_len.to_le_bytes());
    out[CHECKSUM_AT..HEADER_LEN].fill(0);
    let sum = checksum(&out[..HEADER_LEN], &out[HEADER_LEN..]);
    out[CHECKSUM_AT..HEADER_LEN].copy_from_slice(&sum);
    out
}

/// Parses the header alone (magic, version, lengths), for sizing the
/// metadata read; nothing in it is trusted until [`decode`] checks the sum.
pub fn decode_header(b: &[u8]) -> Result<Header, FormatError> {
    if b.len() < 8 || b[..8] != MAGIC {
        return Err(if b.len() < 8 {
            FormatError::Truncated
        } else {
            FormatError::Magic
        });
    }
    let mut r = R(b);
    r.take(8)?;
    let version = r.u32()?;
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let mut h = Header {
        version,
        host_features: r.u32()?,
        mem_size: r.u64()?,
        ..Header::default()
    };
    h.image_sha256.copy_from_slice(r.take(32)?);
    h.saved_at_ns = r.u64()?;
    h.guest_tsc = r.u64()?;
    h.tsc_hz = r.u64()?;
    h.meta_len = r.u64()?;
    h.data_offset = r.u64()?;
    h.data_pages = r.u64()?;
    r.take(32)?;
    Ok(h)
}

/// Checks and parses header + metadata from the file's first bytes
/// (at least `HEADER_LEN + meta_len` of them), and the layout against
/// `file_len`: every run inside guest memory and inside the file.
pub fn decode(b: &[u8], file_len: u64) -> Result<(Header, Meta), FormatError> {
    let h = decode_header(b)?;
    let meta_end = (HEADER_LEN as u64)
        .checked_add(h.meta_len)
        .filter(|&e| e <= b.len() as u64)
        .ok_or(FormatError::Truncated)?;
    let meta_bytes = &b[HEADER_LEN..meta_end as usize];
    let mut zero = b[..HEADER_LEN].to_vec();
    zero[CHECKSUM_AT..HEADER_LEN].fill(0);
    if checksum(&zero, meta_bytes)[..] != b[CHECKSUM_AT..HEADER_LEN] {
        return Err(FormatError::Checksum);
    }
    let meta = Meta::decode(meta_bytes)?;
    let data_end = h
        .data_pages
        .checked_mul(PAGE)
        .and_then(|n| n.checked_add(h.data_offset));
    match data_end {
        Some(end) if end <= file_len => {}
        Some(_) => return Err(FormatError::Truncated),
        None => return Err(FormatError::Invalid("data size")),
    }
    if h.data_offset % PAGE != 0 || h.data_offset < meta_end || h.mem_size % PAGE != 0 {
        return Err(FormatError::Invalid("layout"));
    }
    let mut next_gpa = 0;
    for r in &meta.runs {
        let end = r.pages.checked_mul(PAGE).and_then(|n| n.checked_add(r.gpa));
        let fend = r.file_page.checked_add(r.pages);
        match (end, fend) {
            (Some(e), Some(fe))
                if r.gpa % PAGE == 0
                    && r.pages > 0
                    && r.gpa >= next_gpa
                    && e <= h.mem_size
                    && fe <= h.data_pages =>
            {
                next_gpa = e
            }
            _ => return Err(FormatError::Invalid("memory run")),
        }
    }
    for &(a, b) in &meta.read_only {
        if a % PAGE != 0 || b % PAGE != 0 || a >= b || b > h.mem_size {
            return Err(FormatError::Invalid("read-only range"));
        }
    }
    Ok((h, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Meta) {
        let h = Header {
            version: VERSION,
            host_features: 3,
            mem_size: 4 << 20,
            image_sha256: [7; 32],
            saved_at_ns: 1,
            guest_tsc: 2,
            tsc_hz: 3,
            data_pages: 3,
            ..Header::default()
        };
        let m = Meta {
            cmdline: b"a b".to_vec(),
            boot_id: vec![b'x'; 36],
            saved_raw_ns: 99,
            pending_req_read: 0x1234,
            read_only: vec![(0x100000, 0x102000)],
            devices: vec![DeviceRecord {
                kind: 1,
                name: "disk".into(),
                a: 512 * 8,
                b: 512,
            }],
            regs: vec![1; 10],
            sregs: vec![2; 20],
            xsave: vec![3; 30],
            xcrs: vec![4; 4],
            debugregs: vec![5; 5],
            events: vec![],
            mp_state: vec![6; 4],
            cpuid: vec![[1, 0, 0, 2, 3, 4, 5]],
            kvm: KVM_PVM,
            msrs: vec![(0x10, 5)],
            runs: vec![
                Run {
                    gpa: 0,
                    pages: 2,
                    file_page: 0,
                },
                Run {
                    gpa: 0x100000,
                    pages: 1,
                    file_page: 2,
                },
            ],
        };
        (h, m)
    }

    #[test]
    fn round_trip_and_refusals() {
        let (h, m) = sample();
        let b = encode(&h, &m);
        let hd = decode_header(&b).unwrap();
        let len = hd.data_offset + 3 * PAGE;
        let (h2, m2) = decode(&b, len).unwrap();
        assert_eq!(m2, m);
        assert_eq!(h2.mem_size, h.mem_size);
        assert_eq!(decode(&b, len - 1), Err(FormatError::Truncated));
        assert_eq!(decode(&b[..b.len() - 1], len), Err(FormatError::Truncated));
        let mut bad = b.clone();
        bad[0] ^= 1;
        assert_eq!(decode(&bad, len), Err(FormatError::Magic));
        let mut bad = b.clone();
        bad[8] = 9;
        assert_eq!(decode(&bad, len), Err(FormatError::Version(9)));
        // Any flipped byte in header fields or metadata breaks the sum.
        for at in [16, 60, HEADER_LEN + 3, b.len() - 1] {
            let mut bad = b.clone();
            bad[at] ^= 0x40;
            assert!(decode(&bad, len).is_err(), "byte {at}");
        }
    }

    #[test]
    fn seal_makes_the_checksum_whatever_the_bytes() {
        let (h, m) = sample();
        let b = encode(&h, &m);
        assert_eq!(seal(&b), b);
        let mut bad = b.clone();
        bad[HEADER_LEN + 3] ^= 1;
        assert_eq!(decode_header(&seal(&bad)).unwrap().meta_len, h_meta_len(&b));
        assert_ne!(decode(&bad, 1 << 20), decode(&seal(&bad), 1 << 20));
    }

    fn h_meta_len(b: &[u8]) -> u64 {
        decode_header(b).unwrap().meta_len
    }

    #[test]
    fn runs_are_checked() {
        let (h, mut m) = sample();
        m.runs[1].gpa = 4 << 20;
        let b = encode(&h, &m);
        let len = decode_header(&b).unwrap().data_offset + 3 * PAGE;
        assert_eq!(decode(&b, len), Err(FormatError::Invalid("memory run")));
        let (h, mut m) = sample();
        m.runs[1].file_page = 3;
        let b = encode(&h, &m);
        assert_eq!(decode(&b, len), Err(FormatError::Invalid("memory run")));
    }
}
