//! vCPU state in and out of a snapshot: registers, special registers,
//! XSAVE area (FPU/SSE/AVX), XCR0, the MSRs that matter, and the TSC.
//!
//! The kvm_* structs are kernel ABI, plain integers: they are stored as
//! their raw bytes and read back only into a struct of the same size.

use kvm_bindings::{
    kvm_device_attr, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_xcrs, kvm_xsave, Msrs,
    KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET,
};
use kvm_ioctls::VcpuFd;
use thiserror::Error;

pub const MSR_IA32_TSC: u32 = 0x10;
/// kvm_pvm's vCPU registration (see vcpu/pvm.rs): restored like any MSR,
/// which re-registers the shared page so the guest runs natively again.
const MSR_PVM_REGISTER: u32 = 0x4b56_4d10;

/// What the guest's code can have changed: SYSCALL/SYSENTER targets,
/// segment bases (FS/GS also live in sregs), KERNEL_GS_BASE, TSC_AUX, PAT,
/// MISC_ENABLE, and kvm_pvm's registration. EFER is part of sregs.
pub(super) const MSRS: [u32; 14] = [
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x1a0,       // MISC_ENABLE
    0x277,       // PAT
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0100, // FS_BASE
    0xc000_0101, // GS_BASE
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
    MSR_PVM_REGISTER,
];

#[derive(Debug, Error)]
pub enum StateError {
    #[error("{0} failed: {1}")]
    Ioctl(&'static str, kvm_ioctls::Error),
    #[error("saved {0} has the wrong size")]
    Size(&'static str),
    #[error("kvm_pvm does not let skiff set the guest's TSC (it gives guests the host's), and the host's differs from the snapshot's clock by {off_us} us (a snapshot from another host boot, or backdated): the guest's time would be wrong")]
    TscPvm { off_us: i64 },
    #[error("this KVM kept the guest's TSC {off_us} us away from the snapshot's clock after skiff set it (by the TSC offset attribute or MSR): the guest's time would be wrong")]
    TscKept { off_us: i64 },
    #[error("KVM_SET_DEVICE_ATTR (TSC offset) failed: {0}")]
    TscOffset(std::io::Error),
    #[error("KVM_SET_MSRS set {set} of {want} MSRs (MSR 0x{failed:x} refused)")]
    Msrs {
        set: usize,
        want: usize,
        failed: u32,
    },
}

/// The captured state, as raw bytes.
pub struct Captured {
    pub regs: Vec<u8>,
    pub sregs: Vec<u8>,
    pub xsave: Vec<u8>,
    pub xcrs: Vec<u8>,
    pub msrs: Vec<(u32, u64)>,
}

fn raw<T>(v: &T) -> Vec<u8> {
    // SAFETY: T is a plain-integer kvm struct; reading its bytes is sound.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn from_raw<T: Default>(b: &[u8], what: &'static str) -> Result<T, StateError> {
    if b.len() != size_of::<T>() {
        return Err(StateError::Size(what));
    }
    let mut v = T::default();
    // SAFETY: sizes match and every bit pattern is valid for these
    // plain-integer kvm structs.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast(), b.len()) };
    Ok(v)
}

/// Reads the MSRs of `MSRS` that this KVM knows (KVM_GET_MSRS stops at
/// the first unknown one: drop it and ask again).
fn read_msrs(fd: &VcpuFd) -> Result<Vec<(u32, u64)>, StateError> {
    let mut want: Vec<u32> = MSRS.to_vec();
    loop {
        let entries: Vec<kvm_msr_entry> = want
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| StateError::Size("MSR list"))?;
        let n = fd
            .get_msrs(&mut msrs)
            .map_err(|e| StateError::Ioctl("KVM_GET_MSRS", e))?;
        if n == want.len() {
            return Ok(msrs.as_slice().iter().map(|e| (e.index, e.data)).collect());
        }
        want.remove(n);
    }
}

/// The guest's TSC now, with CLOCK_REALTIME read around it (midpoint).
pub fn read_tsc(fd: &VcpuFd) -> Result<(u64, u64), StateError> {
    read_tsc_within(fd).map(|(tsc, at, _)| (tsc, at))
}

/// [`read_tsc`], and how long the read took (ns): the midpoint is only
/// that exact, e.g. when the host preempts skiff mid-read.
fn read_tsc_within(fd: &VcpuFd) -> Result<(u64, u64, u64), StateError> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])
    .map_err(|_| StateError::Size("MSR list"))?;
    let t0 = crate::devices::clock::now_ns();
    fd.get_msrs(&mut msrs)
        .map_err(|e| StateError::Ioctl("KVM_GET_MSRS", e))?;
    let t1 = crate::devices::clock::now_ns();
    Ok((msrs.as_slice()[0].data, t0 + (t1 - t0) / 2, t1 - t0))
}

/// Captures the state of a vCPU stopped between instructions.
pub fn capture(fd: &VcpuFd) -> Result<Captured, StateError> {
    let e = |what| move |err| StateError::Ioctl(what, err);
    Ok(Captured {
        regs: raw(&fd.get_regs().map_err(e("KVM_GET_REGS"))?),
        sregs: raw(&fd.get_sregs().map_err(e("KVM_GET_SREGS"))?),
        xsave: raw(&fd.get_xsave().map_err(e("KVM_GET_XSAVE"))?),
        xcrs: raw(&fd.get_xcrs().map_err(e("KVM_GET_XCRS"))?),
        msrs: read_msrs(fd)?,
    })
}

/// Puts the saved state back, all but the TSC ([`set_tsc`], which is due
/// when the guest resumes). Returns whether kvm_pvm's native mode was
/// restored.
pub fn restore(fd: &VcpuFd, m: &super::format::Meta) -> Result<bool, StateError> {
    let e = |what| move |err| StateError::Ioctl(what, err);
    let sregs: kvm_sregs = from_raw(&m.sregs, "sregs")?;
    let regs: kvm_regs = from_raw(&m.regs, "regs")?;
    let xsave: kvm_xsave = from_raw(&m.xsave, "xsave")?;
    let xcrs: kvm_xcrs = from_raw(&m.xcrs, "xcrs")?;
    fd.set_sregs(&sregs).map_err(e("KVM_SET_SREGS"))?;
    // SAFETY: a kvm_xsave of the kernel's fixed size, as KVM_GET_XSAVE
    // returned it on this host type; no FAM part is used.
    unsafe { fd.set_xsave(&xsave) }.map_err(e("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&xcrs).map_err(e("KVM_SET_XCRS"))?;
    fd.set_regs(&regs).map_err(e("KVM_SET_REGS"))?;
    let entries: Vec<kvm_msr_entry> = m
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    set_msrs(fd, &entries)?;
    // kvm_pvm runs the guest natively again if it was registered.
    Ok(m.msrs
        .iter()
        .any(|&(i, v)| i == MSR_PVM_REGISTER && v & 1 != 0))
}

pub(super) fn set_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), StateError> {
    let msrs = Msrs::from_entries(entries).map_err(|_| StateError::Size("MSR list"))?;
    let set = fd
        .set_msrs(&msrs)
        .map_err(|err| StateError::Ioctl("KVM_SET_MSRS", err))?;
    if set != entries.len() {
        return Err(StateError::Msrs {
            set,
            want: entries.len(),
            failed: entries[set].index,
        });
    }
    Ok(())
}

/// Sets the guest's TSC to `tsc(now)` (`now`: wall time in ns, the value
/// due then), then reads it back.
///
/// Linux KVM before 6.7 takes a KVM_SET_MSRS of the TSC within 1 s of the
/// value it expects (the last write plus the time since) as a vCPU
/// synchronisation and keeps the old offset: a restore within about a
/// second of the snapshot would silently keep the new vCPU's clock. The
/// TSC offset attribute (Linux 5.16+) sets the offset as given; older KVMs
/// get the MSR, and a second write when the first one was taken as a sync.
pub fn set_tsc(fd: &VcpuFd, tsc_hz: u64, tsc: impl Fn(u64) -> u64) -> Result<(), StateError> {
    let limit = tsc_hz / 1000; // 1 ms
    let by_offset = has_tsc_offset(fd);
    let mut off;
    if by_offset {
        // The offset applies after KVM's scaling of the host TSC, which
        // may not be exactly 1 (a nested KVM's own, refined TSC rate): the
        // first offset can be off by milliseconds. Moving it by the error
        // just measured moves the guest's TSC by exactly that.
        let first = tsc_offset_now(&tsc)?;
        set_tsc_offset(fd, first)?;
        off = tsc_error(fd, &tsc)?;
        if off.unsigned_abs() > limit / 10 {
            set_tsc_offset(fd, first.wrapping_sub(off as u64))?;
            off = tsc_error(fd, &tsc)?;
        }
    } else {
        set_tsc_msr(fd, tsc(crate::devices::clock::now_ns()))?;
        off = tsc_error(fd, &tsc)?;
    }
    if off.unsigned_abs() > limit && !by_offset {
        // Taken as a sync: a write far (10 s) from the expected value is
        // not, and then neither is the real one, far from that.
        set_tsc_msr(
            fd,
            tsc(crate::devices::clock::now_ns()).wrapping_add(10 * tsc_hz),
        )?;
        set_tsc_msr(fd, tsc(crate::devices::clock::now_ns()))?;
        off = tsc_error(fd, &tsc)?;
    }
    // kvm_pvm gives its guests the host's own TSC and ignores both ways.
    // That is still right for a snapshot from this host boot (both count
    // real time), but not for one from another boot (or --backdate):
    // refuse rather than resume a guest whose clock is off.
    if off.unsigned_abs() > limit {
        let off_us = (i128::from(off) * 1_000_000 / i128::from(tsc_hz.max(1))) as i64;
        return Err(if is_kvm_pvm(fd) {
            StateError::TscPvm { off_us }
        } else {
            StateError::TscKept { off_us }
        });
    }
    Ok(())
}

fn set_tsc_msr(fd: &VcpuFd, value: u64) -> Result<(), StateError> {
    set_msrs(
        fd,
        &[kvm_msr_entry {
            index: MSR_IA32_TSC,
            data: value,
            ..Default::default()
        }],
    )
}

/// How far the guest's TSC is from the value due, in ticks: the read
/// that took least time of a few (a preempted read says nothing).
fn tsc_error(fd: &VcpuFd, tsc: &impl Fn(u64) -> u64) -> Result<i64, StateError> {
    least_disturbed(|| {
        let (got, at, took) = read_tsc_within(fd)?;
        Ok((got.wrapping_sub(tsc(at)) as i64, took))
    })
}

/// The value of the quickest of up to 5 timed reads (`read` returns the
/// value and the ns it took); under 20 us is quick enough.
fn least_disturbed<T: Copy + Default>(
    mut read: impl FnMut() -> Result<(T, u64), StateError>,
) -> Result<T, StateError> {
    let mut best = (T::default(), u64::MAX);
    for _ in 0..5 {
        let (v, took) = read()?;
        if took < best.1 {
            best = (v, took);
        }
        if took < 20_000 {
            break;
        }
    }
    Ok(best.0)
}

fn tsc_offset_attr(addr: u64) -> kvm_device_attr {
    kvm_device_attr {
        group: KVM_VCPU_TSC_CTRL,
        attr: u64::from(KVM_VCPU_TSC_OFFSET),
        addr,
        flags: 0,
    }
}

/// KVM_SET_DEVICE_ATTR (0xe1) or KVM_HAS_DEVICE_ATTR (0xe3) on the vCPU:
/// kvm-ioctls offers them on x86 only for device fds.
fn vcpu_attr(fd: &VcpuFd, nr: u64, attr: &kvm_device_attr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // _IOW(KVMIO, nr, struct kvm_device_attr)
    let req = (1u64 << 30) | ((size_of::<kvm_device_attr>() as u64) << 16) | (0xae << 8) | nr;
    // SAFETY: `attr` is a valid kvm_device_attr the kernel only reads, and
    // its `addr` is 0 or points at a live u64.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, attr as *const kvm_device_attr) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `SKIFF_TSC_BY_MSR` (any value) takes the older KVMs' way on a new one:
/// how the tests check that way on the standard-KVM lane's Linux 6.1.
fn has_tsc_offset(fd: &VcpuFd) -> bool {
    std::env::var_os("SKIFF_TSC_BY_MSR").is_none()
        && vcpu_attr(fd, 0xe3, &tsc_offset_attr(0)).is_ok()
}

/// The offset KVM would add to the host's TSC, unscaled, for the guest
/// to read `tsc(now)` (refined by [`set_tsc`]).
fn tsc_offset_now(tsc: &impl Fn(u64) -> u64) -> Result<u64, StateError> {
    least_disturbed(|| {
        let t0 = crate::devices::clock::now_ns();
        // SAFETY: RDTSC only reads the time-stamp counter.
        let host = unsafe { core::arch::x86_64::_rdtsc() };
        let t1 = crate::devices::clock::now_ns();
        Ok((tsc(t0 + (t1 - t0) / 2).wrapping_sub(host), t1 - t0))
    })
}

/// Sets the offset KVM adds to the (scaled) host TSC for the guest's.
fn set_tsc_offset(fd: &VcpuFd, offset: u64) -> Result<(), StateError> {
    // KVM reads the u64 at `addr` during the call.
    vcpu_attr(fd, 0xe1, &tsc_offset_attr(&offset as *const u64 as u64))
        .map_err(StateError::TscOffset)
}

/// kvm_pvm, and only it, knows its registration MSR.
fn is_kvm_pvm(fd: &VcpuFd) -> bool {
    let Ok(mut msrs) = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_PVM_REGISTER,
        ..Default::default()
    }]) else {
        return false;
    };
    fd.get_msrs(&mut msrs) == Ok(1)
}
