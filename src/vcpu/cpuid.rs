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

#[cfg(test)]
mod tests {
    use super::*;

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
