//! A vCPU's whole state as KVM keeps it, one definition for the three
//! users: a snapshot saves it, a restore sets it, a pool worker's rewind
//! sets it back before each request. Everything a guest can change:
//! general registers; segment, control (CR8 too) and descriptor-table
//! registers and EFER (sregs); the XSAVE area (x87 with its control word,
//! MXCSR, SSE, AVX, AVX-512, PKRU: every component this host's XCR0 can
//! enable fits KVM_GET_XSAVE's 4 KiB; AMX tiles would not, and no host
//! here has them); XCR0; debug registers; pending events; MP state; and
//! every MSR KVM lists as saved and restored (KVM_GET_MSR_INDEX_LIST) with
//! the MTRRs and the paravirtual ranges, the TSC excepted (set from the
//! snapshot's clock, snapshot/clock.rs).
//!
//! Without an in-kernel irqchip, KVM_RUN starts by setting CR8 from the
//! shared `kvm_run` page, not from what KVM_SET_SREGS set: [`apply`]
//! writes it there too.
//!
//! The kvm_* structs are kernel ABI, plain integers: they travel as their
//! raw bytes and are read back only into a struct of the same size.
//!
//! [`apply`]: VcpuState::apply

use super::{pvm, Vcpu};
use crate::vcpu::MSR_PVM_REGISTER;
use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd};
use thiserror::Error;

pub const MSR_IA32_TSC: u32 = 0x10;

/// KVM refuses a KVM_GET/SET_MSRS of 256 MSRs or more (E2BIG).
const MSRS_PER_CALL: usize = 128;

/// kvm_pvm's own MSRs (its registration among them): never set on
/// another KVM, which refuses them.
fn pvm_only(index: u32) -> bool {
    (0x4b56_4d10..0x4b56_4d20).contains(&index)
}

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
    #[error("this KVM refuses MSR 0x{index:x} = 0x{value:x}, which the snapshot's guest had set")]
    MsrRefused { index: u32, value: u64 },
}

fn ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> StateError {
    move |e| StateError::Ioctl(what, e)
}

/// The state; see the module's comment for what it holds.
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    /// Not every KVM has these (kvm_pvm may not): state it does not keep
    /// is state a guest cannot leave behind.
    pub debugregs: Option<kvm_debugregs>,
    pub events: Option<kvm_vcpu_events>,
    pub mp_state: Option<kvm_mp_state>,
    /// kvm_pvm's registration, if present, last (setting it registers).
    pub msrs: Vec<kvm_msr_entry>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("cr8", &self.sregs.cr8)
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// The raw bytes of a kvm struct.
pub fn raw<T>(v: &T) -> Vec<u8> {
    // SAFETY: T is a plain-integer kvm struct; reading its bytes is sound.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

/// A kvm struct from its raw bytes, which must be exactly its size.
pub fn from_raw<T: Default>(b: &[u8], what: &'static str) -> Result<T, StateError> {
    if b.len() != size_of::<T>() {
        return Err(StateError::Size(what));
    }
    let mut v = T::default();
    // SAFETY: sizes match and every bit pattern is valid for these
    // plain-integer kvm structs.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast(), b.len()) };
    Ok(v)
}

/// An optional struct: empty bytes for `None`.
pub fn from_raw_opt<T: Default>(b: &[u8], what: &'static str) -> Result<Option<T>, StateError> {
    (!b.is_empty()).then(|| from_raw(b, what)).transpose()
}

/// MSRs a guest can write that KVM_GET_MSR_INDEX_LIST may leave out
/// (VMMs save the MTRRs themselves): the variable ranges, the fixed
/// ranges and the default type; the SYSCALL/SYSENTER targets and segment
/// bases; KVM's and kvm_pvm's paravirtual ranges.
fn extra_msrs() -> impl Iterator<Item = u32> {
    (0x200..0x210)
        .chain([0x250, 0x258, 0x259])
        .chain(0x268..0x270)
        .chain([0x2ff])
        .chain([0x174, 0x175, 0x176, 0x1a0, 0x277])
        .chain(0xc000_0081..=0xc000_0084)
        .chain(0xc000_0100..=0xc000_0103)
        .chain(0x4b56_4d00..0x4b56_4d20)
}

impl VcpuState {
    /// Reads the state of `vcpu`, stopped between instructions (at the
    /// first-HLT stub on kvm_pvm, the rip is the guest's own: see
    /// [`Vcpu::guest_regs`]). `kvm`: for KVM's MSR list.
    ///
    /// Each MSR read is set back at once to find those KVM will not take
    /// from the host (read-only ones, which no guest can change either):
    /// setting what was just read changes nothing.
    pub fn capture(kvm: &Kvm, vcpu: &Vcpu) -> Result<Self, StateError> {
        let fd = vcpu.fd();
        Ok(VcpuState {
            regs: vcpu.guest_regs().map_err(|e| match e {
                super::VcpuError::Regs(e) => StateError::Ioctl("KVM_GET_REGS", e),
                _ => StateError::Size("regs"),
            })?,
            sregs: fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?,
            debugregs: fd.get_debug_regs().ok(),
            events: fd.get_vcpu_events().ok(),
            mp_state: fd.get_mp_state().ok(),
            msrs: settable_msrs(kvm, fd)?,
        })
    }

    /// Sets this state on `vcpu` (all of it; a rewind's is the same KVM's
    /// capture, a restore's may be another KVM's: kvm_pvm's own MSRs are
    /// left out elsewhere, and an MSR this KVM refuses is skipped only
    /// where it already holds the saved value or does not know it). On kvm_pvm the vCPU is
    /// registered last, so the guest runs natively (a snapshot from
    /// another KVM registers the way a boot does). Returns whether it
    /// runs natively.
    pub fn apply(&self, vcpu: &mut Vcpu) -> Result<bool, StateError> {
        vcpu.fd_mut().set_kvm_immediate_exit(0);
        vcpu.fd_mut().get_kvm_run().cr8 = self.sregs.cr8;
        let fd = vcpu.fd();
        fd.set_sregs(&self.sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        // SAFETY: a kvm_xsave of the kernel's fixed size, as KVM_GET_XSAVE
        // returns it; no FAM part is used.
        unsafe { fd.set_xsave(&self.xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
        fd.set_xcrs(&self.xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
        fd.set_regs(&self.regs).map_err(ioctl("KVM_SET_REGS"))?;
        if let Some(d) = &self.debugregs {
            fd.set_debug_regs(d).map_err(ioctl("KVM_SET_DEBUGREGS"))?;
        }
        if let Some(e) = &self.events {
            fd.set_vcpu_events(e)
                .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
        }
        if let Some(m) = self.mp_state {
            fd.set_mp_state(m).map_err(ioctl("KVM_SET_MP_STATE"))?;
        }
        let here_pvm = pvm::is_kvm_pvm(fd);
        let (mut msrs, register): (Vec<kvm_msr_entry>, Vec<kvm_msr_entry>) = self
            .msrs
            .iter()
            .filter(|e| here_pvm || !pvm_only(e.index))
            .partition(|e| e.index != MSR_PVM_REGISTER);
        if here_pvm {
            msrs.push(register.first().copied().unwrap_or(kvm_msr_entry {
                index: MSR_PVM_REGISTER,
                data: pvm::SHARED_PAGE | pvm::REGISTER,
                ..Default::default()
            }));
        }
        set_tolerant(fd, &msrs)?;
        Ok(here_pvm
            && msrs
                .last()
                .is_some_and(|e| e.index == MSR_PVM_REGISTER && e.data & pvm::REGISTER != 0))
    }
}

/// Every MSR this vCPU can read *and* have set back, with its value now
/// (see [`VcpuState::capture`]); the TSC left out, kvm_pvm's registration
/// last.
fn settable_msrs(kvm: &Kvm, fd: &VcpuFd) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut want: Vec<u32> = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    want.extend(extra_msrs());
    want.sort_unstable();
    want.dedup();
    want.retain(|&i| i != MSR_IA32_TSC && i != MSR_PVM_REGISTER);
    want.push(MSR_PVM_REGISTER);
    let mut entries = readable(fd, want)?;
    loop {
        match set_all(fd, &entries) {
            Ok(()) => return Ok(entries),
            // KVM stops at the one it refuses: leave it out, try the rest.
            Err(StateError::Msrs { failed, .. }) => entries.retain(|e| e.index != failed),
            Err(e) => return Err(e),
        }
    }
}

/// The MSRs of `want` that KVM_GET_MSRS reads, with their values (it stops
/// at the first one it does not know: drop that and ask again).
fn readable(fd: &VcpuFd, mut want: Vec<u32>) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut out = Vec::with_capacity(want.len());
    while !want.is_empty() {
        let chunk: Vec<kvm_msr_entry> = want
            .iter()
            .take(MSRS_PER_CALL)
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&chunk).map_err(|_| StateError::Size("MSR list"))?;
        let n = fd.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n]);
        // The n read, and the one that stopped the read (if any), are done.
        let done = if n < chunk.len() { n + 1 } else { n };
        want.drain(..done);
    }
    Ok(out)
}

/// KVM_SET_MSRS of all `entries` (in calls KVM takes), or the first
/// refusal.
pub fn set_all(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), StateError> {
    entries
        .chunks(MSRS_PER_CALL)
        .try_for_each(|chunk| set_msrs(fd, chunk))
}

/// [`set_all`], going on past an MSR this KVM refuses when it holds the
/// saved value already or does not know it at all (another KVM's).
fn set_tolerant(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), StateError> {
    let mut rest = entries;
    while !rest.is_empty() {
        match set_all(fd, rest) {
            Ok(()) => return Ok(()),
            Err(StateError::Msrs { failed, .. }) => {
                let at = rest.iter().position(|e| e.index == failed).unwrap_or(0);
                let e = rest[at];
                // Unknown here (another KVM's, e.g. SMBASE on kvm_pvm): no
                // guest here can read or write it either. Known here with
                // another value: refused.
                let now = readable(fd, vec![e.index])?;
                if now.is_empty() {
                    tracing::debug!(
                        "restore: MSR 0x{:x} is unknown to this KVM: left out",
                        e.index
                    );
                }
                if now.first().is_some_and(|n| n.data != e.data) {
                    return Err(StateError::MsrRefused {
                        index: e.index,
                        value: e.data,
                    });
                }
                rest = &rest[at + 1..];
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One KVM_SET_MSRS call (at most [`MSRS_PER_CALL`] entries).
pub fn set_msrs(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), StateError> {
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
