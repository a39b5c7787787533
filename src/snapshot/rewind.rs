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
//! it was before the first run (vcpu/state.rs, the state a snapshot saves
//! and a restore sets: registers, CR8 also in `kvm_run`, EFER, XSAVE,
//! debug registers, events, MP state, every MSR KVM lists). The TSC is
//! set when the next request starts, as after any restore.
//!
//! What is *not* rewound is the worker process: a guest that broke out of
//! KVM into its tender would find the host-side remains of earlier
//! requests served by that worker. `--fresh-process` (one process per
//! request) closes that too, at the cost of a VM per request
//! (docs/serve.md).

use super::clock::{Keeping, Saved};
use super::format::Run;
use super::restore::{Prepared, RestoreError};
use crate::vcpu::state::VcpuState;
use crate::vmm::Vm;

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
#[derive(Debug)]
pub struct Origin {
    pages: Pages,
    state: VcpuState,
    clock: (Saved, Option<Keeping>),
}

impl Origin {
    /// Records `p`'s state (a guest restored and not yet run). Needs the
    /// KVM_GET_* ioctls, so it runs before the worker is confined.
    pub fn capture(p: &Prepared) -> Result<Origin, RestoreError> {
        let (vm, pages) = p.parts();
        let pages = pages.ok_or_else(|| {
            RestoreError::Map(std::io::Error::other("the guest was rewound already"))
        })?;
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
            state: VcpuState::capture(&vm.kvm, &vm.vcpu)?,
            clock: p.clock(),
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
        let native = self.state.apply(&mut vm.vcpu)?;
        vm.vcpu.set_pvm_native(native);
        vm.vcpu.resume_through_stub(&vm.mem)?;
        vm.resume = super::restore::pending_request(self.pages.pending_req_read);
        Ok(Prepared::from_parts(vm, self.clock))
    }
}
