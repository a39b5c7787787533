//! vCPU state in and out of a snapshot: registers, special registers,
//! XSAVE area (FPU/SSE/AVX), XCR0, the MSRs that matter, and the TSC.
//!
//! The kvm_* structs are kernel ABI, plain integers: they are stored as
//! their raw bytes and read back only into a struct of the same size.

use kvm_bindings::{kvm_msr_entry, kvm_regs, kvm_sregs, kvm_xcrs, kvm_xsave, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;

pub const MSR_IA32_TSC: u32 = 0x10;
use crate::vcpu::MSR_PVM_REGISTER;

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
