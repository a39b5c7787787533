//! The guest's CPUID: what `KVM_GET_SUPPORTED_CPUID` returns, as Solo5's
//! tender passes it. That ioctl costs about 0.35 ms here, a sixth of a
//! whole start-up, and its answer is fixed for a boot of the host, so it is
//! cached in a file keyed by the boot id.
//!
//! The cache is only trusted when it is a regular file owned by us and
//! writable by nobody else, with the right boot id, count and checksum;
//! otherwise the ioctl answers. Writing it uses only open/write/close
//! (also allowed under urunc's seccomp allowlist); a torn write fails the
//! checksum and is simply redone.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};

use kvm_ioctls::Kvm;
use std::ffi::CString;
use std::mem::size_of;

const MAGIC: &[u8; 8] = b"skiffcpu";
const ENTRY: usize = size_of::<kvm_cpuid_entry2>();

/// The supported CPUID, from the cache when it is valid.
pub fn supported(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    let boot = boot_id();
    if let Some(c) = boot.as_ref().and_then(load) {
        return Ok(c);
    }
    let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)?;
    for_vcpu0(&mut cpuid);
    if let Some(b) = boot {
        store(&b, &cpuid);
    }
    Ok(cpuid)
}

/// KVM reports the APIC ID of whichever host CPU ran the ioctl (leaf 1
/// EBX[31:24], leaf 0xB EDX); the guest's only vCPU has APIC ID 0. This
/// also makes the answer the same on every host CPU, hence cacheable.
fn for_vcpu0(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => e.ebx &= 0x00ff_ffff,
            0xb | 0x1f => e.edx = 0,
            _ => {}
        }
    }
}

fn read_small(path: &str, buf: &mut [u8]) -> Option<(usize, libc::stat)> {
    let c = CString::new(path).ok()?;
    // SAFETY: a valid C path; the fd is closed below on every path.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: fstat and read into buffers we own, on the fd we opened.

    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        let ok = libc::fstat(fd, &mut st) == 0;
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        libc::close(fd);
        (ok && n >= 0).then_some((n as usize, st))
    }
}

/// This boot of the host (`/proc/sys/kernel/random/boot_id`); `None` where
/// there is no /proc (urunc's sandbox).
pub fn boot_id() -> Option<[u8; 36]> {
    let mut b = [0u8; 64];
    let (n, _) = read_small("/proc/sys/kernel/random/boot_id", &mut b)?;
    (n >= 36).then(|| b[..36].try_into().ok()).flatten()
}

/// In /run itself: creating a directory would need mkdir, which urunc's
/// seccomp allowlist (solo5-hvt mode) does not have.
const CACHE_PATH: &str = "/run/skiff-cpuid";

/// FNV-1a: enough to reject a torn or stale file.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn load(boot: &[u8; 36]) -> Option<CpuId> {
    let mut buf = vec![0u8; 8 + 36 + 4 + KVM_MAX_CPUID_ENTRIES * ENTRY + 8 + 1];
    let (n, st) = read_small(CACHE_PATH, &mut buf)?;
    // From the auxiliary vector: geteuid(2) is not in urunc's allowlist.
    // SAFETY: getauxval has no preconditions.
    let me = unsafe { libc::getauxval(libc::AT_EUID) } as libc::uid_t;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_uid != me || st.st_mode & 0o022 != 0 {
        return None;
    }
    let body = buf.get(..n.checked_sub(8)?)?;
    if &body[..8] != MAGIC || body.get(8..44)? != boot {
        return None;
    }
    let count = u32::from_le_bytes(body.get(44..48)?.try_into().ok()?) as usize;
    let entries = body.get(48..)?;
    if count == 0 || count > KVM_MAX_CPUID_ENTRIES || entries.len() != count * ENTRY {
        return None;
    }
    if u64::from_le_bytes(buf[n - 8..n].try_into().ok()?) != checksum(body) {
        return None;
    }
    let list: Vec<kvm_cpuid_entry2> = entries
        .chunks_exact(ENTRY)
        .map(|c| {
            let w = |i: usize| u32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
            kvm_cpuid_entry2 {
                function: w(0),
                index: w(1),
                flags: w(2),
                eax: w(3),
                ebx: w(4),
                ecx: w(5),
                edx: w(6),
                padding: [0; 3],
            }
        })
        .collect();
    CpuId::from_entries(&list).ok()
}

fn store(boot: &[u8; 36], cpuid: &CpuId) {
    let mut body = Vec::with_capacity(48 + cpuid.as_slice().len() * ENTRY + 8);
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(boot);
    body.extend_from_slice(&(cpuid.as_slice().len() as u32).to_le_bytes());
    for e in cpuid.as_slice() {
        for w in [
            e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx, 0, 0, 0,
        ] {
            body.extend_from_slice(&w.to_le_bytes());
        }
    }
    let sum = checksum(&body);
    body.extend_from_slice(&sum.to_le_bytes());
    let Ok(path) = CString::new(CACHE_PATH) else {
        return;
    };
    // SAFETY: a valid C string; if open fails (no permission) the cache is
    // skipped. O_TRUNC rewrites a stale file in place.
    unsafe {
        let fd = libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o644,
        );
        if fd >= 0 {
            libc::write(fd, body.as_ptr().cast(), body.len());
            libc::close(fd);
        }
    }
}

/// What CPUID a booted guest sees (`--cpu-template`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CpuTemplate {
    /// Everything KVM supports on this host.
    #[default]
    Host,
    /// A fleet-common x86-64 feature set (docs/snapshots.md, "Travel"):
    /// x86-64-v3 (SSE to SSE4.2, POPCNT, AVX, AVX2, FMA, BMI1/2, F16C,
    /// MOVBE, LZCNT), AES, PCLMULQDQ, RDRAND/RDSEED, ADX, XSAVE with x87,
    /// SSE and AVX state only; no AVX-512, AMX, PKU, TSX, SHA or vendor-only
    /// extensions. Any AMD since Zen and Intel since Haswell has all of it.
    Baseline,
}

/// The feature registers a template masks and a restore compares:
/// (leaf, subleaf, register 0..4 = EAX..EDX, the baseline's mask, the bits
/// a restore checks). Checked are what guest code can use and a host may
/// lack: instruction sets, XSAVE components, paging and system features a
/// guest turns on; not what only informs (hypervisor, HTT, APIC, TSC
/// deadline, LA57, which a guest started in long mode cannot turn on,
/// speculation-control and performance-monitoring bits, SVM/VMX).
const FEATURE_REGS: [(u32, u32, usize, u32, u32); 10] = [
    // SSE3 PCLMUL SSSE3 FMA CX16 SSE4.1 SSE4.2 x2APIC MOVBE POPCNT
    // TSC-deadline AES XSAVE OSXSAVE AVX F16C RDRAND hypervisor
    (1, 0, 2, 0xfff8_3203, 0x76da_320f),
    (1, 0, 3, 0xffff_ffff, 0x078b_a971),
    // FSGSBASE BMI1 AVX2 SMEP BMI2 ERMS INVPCID RDSEED ADX SMAP
    // CLFLUSHOPT CLWB
    (7, 0, 1, 0x019c_07a9, 0xfdbf_4fb9),
    (7, 0, 2, 0, 0x3ac0_5fef),
    (7, 0, 3, 0, 0x03c1_410c),
    (7, 1, 0, 0, 0xffff_ffff),
    // XCR0: x87, SSE, AVX; XSAVEOPT
    (0xd, 0, 0, 0x7, 0xffff_ffff),
    (0xd, 1, 0, 0x1, 0xffff_ffff),
    // LAHF LZCNT PREFETCHW
    (0x8000_0001, 0, 2, 0x0000_0121, 0x2021_09e1),
    // SYSCALL NX 1G-pages RDTSCP LM, and the rest of the old AMD EDX bits.
    (0x8000_0001, 0, 3, 0x2c10_0800 | 0x0183_f3ff, 0xee50_0800),
];

/// Bits that say what the guest's OS turned on, not what the CPU has.
fn dynamic(leaf: u32, sub: u32, reg: usize) -> u32 {
    match (leaf, sub, reg) {
        (1, 0, 2) => 1 << 27, // OSXSAVE
        (1, 0, 3) => 1 << 9,  // APIC (follows the APIC base MSR)
        (7, 0, 2) => 1 << 4,  // OSPKE
        _ => 0,
    }
}

fn reg(e: &kvm_cpuid_entry2, r: usize) -> u32 {
    [e.eax, e.ebx, e.ecx, e.edx][r]
}

fn reg_mut(e: &mut kvm_cpuid_entry2, r: usize) -> &mut u32 {
    match r {
        0 => &mut e.eax,
        1 => &mut e.ebx,
        2 => &mut e.ecx,
        _ => &mut e.edx,
    }
}

/// Every feature register, with the baseline's mask and the checked bits.
fn feature_regs() -> impl Iterator<Item = (u32, u32, usize, u32, u32)> {
    FEATURE_REGS.into_iter()
}

/// Masks `cpuid` to `template`.
pub fn apply_template(cpuid: &mut CpuId, template: CpuTemplate) {
    if template == CpuTemplate::Host {
        return;
    }
    for e in cpuid.as_mut_slice() {
        for (leaf, sub, r, mask, _) in feature_regs() {
            if e.function == leaf && e.index == sub {
                // OSXSAVE and APIC stay as KVM keeps them; OSPKE goes with
                // PKU, which the baseline leaves out.
                let keep = match (leaf, sub, r) {
                    (7, 0, 2) => 0,
                    _ => dynamic(leaf, sub, r),
                };
                *reg_mut(e, r) &= mask | keep;
            }
        }
        match (e.function, e.index) {
            // The XSAVE area for x87, SSE and AVX only.
            (0xd, 0) => {
                e.ecx = 0x340;
                e.ebx = e.ebx.min(0x340);
                e.edx = 0;
            }
            (0xd, 1) => (e.ebx, e.ecx, e.edx) = (0, 0, 0),
            (0xd, i) if i > 2 => {
                (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0);
            }
            _ => {}
        }
    }
}

/// The feature leaves as this process's own CPUID instruction sees them:
/// what a guest kvm_pvm runs natively sees (CPUID is not KVM's there).
pub fn native() -> Vec<kvm_cpuid_entry2> {
    let mut leaves: Vec<(u32, u32)> = feature_regs().map(|(l, s, ..)| (l, s)).collect();
    leaves.dedup();
    leaves
        .into_iter()
        .map(|(function, index)| {
            let r = core::arch::x86_64::__cpuid_count(function, index);
            kvm_cpuid_entry2 {
                function,
                index,
                flags: 1, // KVM_CPUID_FLAG_SIGNIFCANT_INDEX
                eax: r.eax,
                ebx: r.ebx,
                ecx: r.ecx,
                edx: r.edx,
                padding: [0; 3],
            }
        })
        .collect()
}

/// The checked features a guest saw (`guest`) that this host's KVM lacks
/// (`host`), named: empty when the guest can run here.
pub fn missing_features(guest: &[kvm_cpuid_entry2], host: &[kvm_cpuid_entry2]) -> Vec<String> {
    let find = |l: &[kvm_cpuid_entry2], leaf, sub| {
        l.iter()
            .find(|e| e.function == leaf && (e.index == sub || e.flags & 1 == 0))
            .copied()
    };
    let mut out = Vec::new();
    for (leaf, sub, r, _, checked) in feature_regs() {
        let Some(g) = find(guest, leaf, sub) else {
            continue;
        };
        let h = find(host, leaf, sub).map_or(0, |h| reg(&h, r));
        let lacking = reg(&g, r) & !h & checked & !dynamic(leaf, sub, r);
        for bit in (0..32).filter(|b| lacking & (1 << b) != 0) {
            out.push(feature_name(leaf, sub, r, bit));
        }
    }
    out
}

/// A feature's usual name, or its CPUID coordinates.
fn feature_name(leaf: u32, sub: u32, r: usize, bit: u32) -> String {
    let known = match (leaf, sub, r, bit) {
        (1, 0, 2, 0) => "sse3",
        (1, 0, 2, 1) => "pclmulqdq",
        (1, 0, 2, 9) => "ssse3",
        (1, 0, 2, 12) => "fma",
        (1, 0, 2, 19) => "sse4.1",
        (1, 0, 2, 20) => "sse4.2",
        (1, 0, 2, 22) => "movbe",
        (1, 0, 2, 23) => "popcnt",
        (1, 0, 2, 25) => "aes",
        (1, 0, 2, 26) => "xsave",
        (1, 0, 2, 28) => "avx",
        (1, 0, 2, 29) => "f16c",
        (1, 0, 2, 30) => "rdrand",
        (1, 0, 2, 3) => "monitor",
        (1, 0, 2, 17) => "pcid",
        (1, 0, 3, 15) => "cmov",
        (1, 0, 3, 19) => "clflush",
        (1, 0, 3, 23) => "mmx",
        (1, 0, 3, 24) => "fxsr",
        (1, 0, 3, 25) => "sse",
        (1, 0, 3, 26) => "sse2",
        (7, 0, 1, 0) => "fsgsbase",
        (7, 0, 1, 3) => "bmi1",
        (7, 0, 1, 4) => "hle",
        (7, 0, 1, 7) => "smep",
        (7, 0, 1, 9) => "erms",
        (7, 0, 1, 10) => "invpcid",
        (7, 0, 1, 11) => "rtm",
        (7, 0, 1, 17) => "avx512dq",
        (7, 0, 1, 20) => "smap",
        (7, 0, 1, 21) => "avx512ifma",
        (7, 0, 1, 23) => "clflushopt",
        (7, 0, 1, 24) => "clwb",
        (7, 0, 1, 28) => "avx512cd",
        (7, 0, 1, 30) => "avx512bw",
        (7, 0, 1, 31) => "avx512vl",
        (7, 0, 2, 1) => "avx512vbmi",
        (7, 0, 2, 2) => "umip",
        (7, 0, 2, 8) => "gfni",
        (7, 0, 2, 11) => "avx512vnni",
        (7, 0, 2, 22) => "rdpid",
        (0xd, 1, 0, 0) => "xsaveopt",
        (0xd, 1, 0, 1) => "xsavec",
        (0xd, 1, 0, 2) => "xgetbv1",
        (0xd, 1, 0, 3) => "xsaves",
        (0xd, 0, 0, 0) => "xsave-x87",
        (0xd, 0, 0, 1) => "xsave-sse",
        (0x8000_0001, 0, 2, 0) => "lahf",
        (0x8000_0001, 0, 2, 8) => "prefetchw",
        (0x8000_0001, 0, 2, 11) => "xop",
        (0x8000_0001, 0, 2, 16) => "fma4",
        (0x8000_0001, 0, 3, 11) => "syscall",
        (0x8000_0001, 0, 3, 20) => "nx",
        (0x8000_0001, 0, 3, 22) => "mmxext",
        (0x8000_0001, 0, 3, 26) => "pdpe1gb",
        (0x8000_0001, 0, 3, 29) => "lm",
        (0x8000_0001, 0, 3, 30) => "3dnowext",
        (0x8000_0001, 0, 3, 31) => "3dnow",
        (7, 0, 1, 5) => "avx2",
        (7, 0, 1, 8) => "bmi2",
        (7, 0, 1, 16) => "avx512f",
        (7, 0, 1, 18) => "rdseed",
        (7, 0, 1, 19) => "adx",
        (7, 0, 1, 29) => "sha",
        (7, 0, 2, 3) => "pku",
        (7, 0, 2, 9) => "vaes",
        (7, 0, 2, 10) => "vpclmulqdq",
        (0xd, 0, 0, 2) => "xsave-avx",
        (0xd, 0, 0, 5..=7) => "xsave-avx512",
        (0xd, 0, 0, 9) => "xsave-pkru",
        (0x8000_0001, 0, 2, 5) => "lzcnt",
        (0x8000_0001, 0, 2, 6) => "sse4a",
        (0x8000_0001, 0, 3, 27) => "rdtscp",
        _ => "",
    };
    match known {
        "" => format!(
            "cpuid.{leaf:#x}.{sub}.{}[{bit}]",
            ["eax", "ebx", "ecx", "edx"][r]
        ),
        k => k.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, r: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 1,
            eax: r[0],
            ebx: r[1],
            ecx: r[2],
            edx: r[3],
            padding: [0; 3],
        }
    }

    #[test]
    fn baseline_masks_and_missing_features_are_named() {
        let all = [u32::MAX; 4];
        let host = vec![
            entry(1, 0, all),
            entry(7, 0, all),
            entry(0xd, 0, [0x2e7, 0xa88, 0xa88, 0]),
            entry(0x8000_0001, 0, all),
        ];
        let mut c = CpuId::from_entries(&host).unwrap();
        apply_template(&mut c, CpuTemplate::Baseline);
        let l7 = c.as_slice()[1];
        assert_eq!(l7.ebx & (1 << 16), 0, "avx512f stays out");
        assert_ne!(l7.ebx & (1 << 5), 0, "avx2 stays in");
        assert_eq!((l7.ecx, l7.edx), (0, 0));
        assert_eq!(c.as_slice()[2].eax, 0x7, "XCR0: x87, SSE, AVX");
        assert_eq!(c.as_slice()[2].ecx, 0x340);
        // The baseline guest runs on the full host; not the other way.
        assert!(missing_features(c.as_slice(), &host).is_empty());
        let missing = missing_features(&host, c.as_slice());
        assert!(missing.contains(&"avx512f".to_string()), "{missing:?}");
        assert!(missing.contains(&"xsave-avx512".to_string()), "{missing:?}");
        // Informational bits are not checked: hypervisor (1.ecx[31]).
        assert!(!missing.iter().any(|m| m == "cpuid.0x1.0.ecx[31]"));
        // A leaf the host does not have at all lacks all of its features.
        let missing = missing_features(&host[..1], &host[1..]);
        assert!(missing.contains(&"sse3".to_string()), "{missing:?}");
    }

    #[test]
    fn cached_cpuid_matches_kvm() {
        let kvm = Kvm::new().unwrap();
        let mut direct = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        for_vcpu0(&mut direct);
        let first = supported(&kvm).unwrap();
        let second = supported(&kvm).unwrap();
        assert_eq!(first.as_slice(), direct.as_slice());
        assert_eq!(second.as_slice(), direct.as_slice());
        let boot = boot_id().unwrap();
        assert_eq!(load(&boot).unwrap().as_slice(), direct.as_slice());
        let mut other = boot;
        other[0] ^= 1;
        assert!(
            load(&other).is_none(),
            "another boot's cache must not be used"
        );
    }
}
