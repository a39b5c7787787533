//! Putting a restored guest back to its snapshot after a run, in the same
//! VM: what lets a pool worker serve request after request, each with a
//! guest that starts from the snapshot and carries nothing of the last.
//!
//! A new VM per request costs the pool more than the guest's whole run on
//! some KVMs (KVM_CREATE_VM, the vCPU, the slot, their teardown; about
//! 1 ms of CPU on kvm_pvm), so a worker keeps its VM and, after each run,
//! rewinds it: every page of guest memory is dropped and the snapshot's
//! pages are mapped again (memory/: `discard`, then the restore's own
//! mapping), and every piece of vCPU state KVM keeps is set back to what
//! it was before the first run: registers, special registers, XSAVE (FPU,
//! SSE, AVX), XCRs, debug registers, pending events, MP state, and every
//! MSR KVM reports it saves and restores (KVM_GET_MSR_INDEX_LIST, the ones
//! a migration carries) plus the MTRRs and the snapshot's own list. The
//! TSC is set when the next request starts, as after any restore.
//!
//! What is *not* rewound is the worker process: a guest that broke out of
//! KVM into its tender would find the host-side remains of earlier
//! requests served by that worker. `--fresh-process` (one process per
//! request) closes that too, at the cost of a VM per request
//! (docs/serve.md).

use super::format::Run;
use super::restore::{Prepared, RestoreError};
use super::vcpu::{StateError, MSR_IA32_TSC};
use crate::hypercall::Request;
use crate::memory::Gpa;
use crate::vmm::Vm;
use guest_abi::hvt::Hypercall;
use kvm_bindings::{
    kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd};

/// KVM refuses a KVM_GET/SET_MSRS of 256 MSRs or more (E2BIG).
const MSRS_PER_CALL: usize = 128;

use crate::vcpu::MSR_PVM_REGISTER;

/// MSRs a guest can write that KVM_GET_MSR_INDEX_LIST may leave out
/// (VMMs save the MTRRs themselves): the variable ranges, the fixed
/// ranges and the default type.
fn mtrrs() -> impl Iterator<Item = u32> {
    (0x200..0x210)
        .chain([0x250, 0x258, 0x259])
        .chain(0x268..0x270)
        .chain([0x2ff])
}

/// Where the snapshot's pages live, to map them again.
#[derive(Debug)]
pub(super) struct Pages {
    pub file: std::fs::File,
    pub data_offset: u64,
    pub runs: Vec<Run>,
    pub read_only: Vec<(u64, u64)>,
    pub pending_req_read: u64,
}

/// The guest as restored, before it ever ran: what each rewind puts back.
pub struct Origin {
    pages: Pages,
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    debugregs: Option<kvm_debugregs>,
    events: Option<kvm_vcpu_events>,
    mp_state: Option<kvm_mp_state>,
    msrs: Vec<kvm_msr_entry>,
    clock: (super::clock::Saved, Option<super::clock::Keeping>),
    native: bool,
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

fn ioctl(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> StateError {
    move |e| StateError::Ioctl(what, e)
}

impl Origin {
    /// Records `p`'s state (a guest restored and not yet run). Needs the
    /// KVM_GET_* ioctls, so it runs before the worker is confined.
    pub fn capture(p: &Prepared) -> Result<Origin, RestoreError> {
        let (vm, pages) = p.parts();
        let pages = pages.ok_or_else(|| {
            RestoreError::Map(std::io::Error::other("the guest was rewound already"))
        })?;
        let fd = vm.vcpu.fd();
        let err = RestoreError::Map;
        Ok(Origin {
            pages: Pages {
                file: pages.file.try_clone().map_err(err)?,
                data_offset: pages.data_offset,
                runs: pages.runs.clone(),
                read_only: pages.read_only.clone(),
                pending_req_read: pages.pending_req_read,
            },
            // Not the first-HLT stub's rip (vcpu/pvm.rs): each rewind
            // writes the stub again.
            regs: vm.vcpu.guest_regs()?,
            sregs: fd.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
            xsave: fd.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?,
            xcrs: fd.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?,
            // Not every KVM has these (kvm_pvm may not): state it does not
            // keep is state a guest cannot leave behind.
            debugregs: fd.get_debug_regs().ok(),
            events: fd.get_vcpu_events().ok(),
            mp_state: fd.get_mp_state().ok(),
            msrs: settable_msrs(&vm.kvm, fd)?,
            clock: p.clock(),
            native: vm.vcpu.pvm_native(),
        })
    }

    /// Puts `vm` (this origin's guest, after a run) back as it was
    /// restored: ready for [`Prepared::resume`] with the next request.
    pub fn rewind(&self, mut vm: Vm) -> Result<Prepared, RestoreError> {
        vm.mem.discard().map_err(RestoreError::Map)?;
        super::restore::map_runs(
            &vm.mem,
            &self.pages.file,
            self.pages.data_offset,
            &self.pages.runs,
        )
        .map_err(RestoreError::Map)?;
        for &(a, b) in &self.pages.read_only {
            vm.mem.protect(a, b).map_err(RestoreError::Map)?;
        }
        vm.vcpu.fd_mut().set_kvm_immediate_exit(0);
        let fd = vm.vcpu.fd();
        fd.set_sregs(&self.sregs).map_err(ioctl("KVM_SET_SREGS"))?;
        // SAFETY: a kvm_xsave of the kernel's fixed size, as KVM_GET_XSAVE
        // returned it; no FAM part is used.
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
        set_all(fd, &self.msrs)?;
        vm.vcpu.set_pvm_native(self.native);
        vm.vcpu.resume_through_stub(&vm.mem)?;
        vm.resume = Some(Request::Extension {
            nr: Hypercall::ReqRead,
            arg: Gpa(self.pages.pending_req_read),
        });
        Ok(Prepared::from_parts(vm, self.clock))
    }
}

/// Every MSR this vCPU can read *and* have set back, with its value now:
/// KVM's save/restore list, the MTRRs, the paravirtual range and the
/// snapshot's list, minus the
/// TSC (set per request) and those KVM refuses to set from the host
/// (read-only ones, which no guest can change either). kvm_pvm's
/// registration goes last.
fn settable_msrs(kvm: &Kvm, fd: &VcpuFd) -> Result<Vec<kvm_msr_entry>, RestoreError> {
    let mut want: Vec<u32> = kvm
        .get_msr_index_list()
        .map(|l| l.as_slice().to_vec())
        .unwrap_or_default();
    want.extend(mtrrs());
    // KVM's paravirtual MSRs and kvm_pvm's, where the list leaves them out.
    want.extend(0x4b56_4d00..0x4b56_4d20);
    want.extend(super::vcpu::MSRS);
    want.sort_unstable();
    want.dedup();
    want.retain(|&i| i != MSR_IA32_TSC && i != MSR_PVM_REGISTER);
    if super::vcpu::MSRS.contains(&MSR_PVM_REGISTER) {
        want.push(MSR_PVM_REGISTER);
    }
    let mut entries = readable(fd, want)?;
    // Setting what was just read changes nothing; a refusal names the
    // MSR (KVM stops at it): leave it out and try the rest again.
    loop {
        match set_all(fd, &entries) {
            Ok(()) => return Ok(entries),
            Err(StateError::Msrs { failed, .. }) => entries.retain(|e| e.index != failed),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The MSRs of `want` that KVM_GET_MSRS reads, with their values (it stops
/// at the first one it does not know: drop that and ask again).
fn readable(fd: &VcpuFd, mut want: Vec<u32>) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut out = Vec::with_capacity(want.len());
    // Msrs holds at most KVM_MAX_MSR_ENTRIES at a time.
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

fn set_all(fd: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), StateError> {
    entries
        .chunks(MSRS_PER_CALL)
        .try_for_each(|chunk| super::vcpu::set_msrs(fd, chunk))
}
