//! The vCPU: KVM set-up of the long-mode entry state, and one `KVM_RUN`
//! turned into a KVM-free [`Exit`] for the hypercall layer.

mod cpuid;
pub use cpuid::{boot_id, missing_features, CpuTemplate};
mod exit;
mod pvm;
pub mod state;

pub use exit::Exit;
pub use pvm::{is_kvm_pvm, MSR_PVM_REGISTER};

use crate::memory::{BootState, GuestMemory, BOOT_CR3, BOOT_GDT_SELECTORS};
use crate::signals;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_regs, kvm_segment, CpuId, KVM_VCPUEVENT_VALID_TRIPLE_FAULT,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use thiserror::Error;

const CR0_PE: u64 = 1 << 0;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Why the vCPU could not be set up or run.
#[derive(Debug, Error)]
pub enum VcpuError {
    #[error("KVM_CREATE_VCPU failed: {0}")]
    Create(kvm_ioctls::Error),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    GetCpuid(kvm_ioctls::Error),
    #[error("this host's CPU lacks features the snapshot's guest saw: {0} (on a standard KVM, --cpu-template baseline makes snapshots that travel)")]
    Features(String),
    #[error("kvm_pvm runs guests natively, where CPUID answers with the host CPU's own features: a CPU template cannot mask them (--cpu-template host only)")]
    TemplatePvm,
    #[error("KVM_SET_CPUID2 failed: {0}")]
    SetCpuid(kvm_ioctls::Error),
    #[error("KVM_GET_TSC_KHZ failed (the host TSC is unusable): {0}")]
    TscKhz(kvm_ioctls::Error),
    #[error("setting the vCPU registers failed: {0}")]
    Regs(kvm_ioctls::Error),
    #[error("KVM_RUN failed: {0}")]
    Run(kvm_ioctls::Error),
}

/// The CPUID a new vCPU gets.
#[derive(Debug, Clone, Copy)]
pub enum GuestCpuid<'a> {
    /// A boot: the host's supported CPUID, masked to a template.
    Template(CpuTemplate),
    /// A restore: what the snapshot's guest saw, if this host has all of
    /// its features.
    Saved(&'a [kvm_cpuid_entry2]),
}

/// The one vCPU of a guest.
#[derive(Debug)]
pub struct Vcpu {
    fd: VcpuFd,
    /// Whether kvm_pvm runs the guest natively (see [`pvm`]).
    pvm_native: bool,
    /// The stub that spends kvm_pvm's one-time HLT wake, where the vCPU
    /// starts when native (see [`pvm::FirstHlt`]).
    first_hlt: Option<pvm::FirstHlt>,
}

impl Drop for Vcpu {
    fn drop(&mut self) {
        // Before the fd (and its kvm_run mapping) goes: a later signal must
        // find no kvm_run to write into.
        // (The pvm watchdog's CPU limit stays: lifting it would need
        // prlimit64, which the seccomp policies leave out, and its SIGXCPU
        // is harmless once nothing points at a kvm_run.)
        signals::clear_kvm_run();
    }
}

impl Vcpu {
    /// Creates vCPU 0 with the CPUID `cpu` says.
    pub fn new(kvm: &Kvm, vm: &VmFd, cpu: GuestCpuid) -> Result<Self, VcpuError> {
        let fd = vm.create_vcpu(0).map_err(VcpuError::Create)?;
        let mut cpuid = cpuid::supported(kvm).map_err(VcpuError::GetCpuid)?;
        match cpu {
            GuestCpuid::Template(CpuTemplate::Host) => {}
            // kvm_pvm runs guests natively, where CPUID is the CPU's own.
            GuestCpuid::Template(_) if pvm::is_kvm_pvm(&fd) => return Err(VcpuError::TemplatePvm),
            GuestCpuid::Template(t) => cpuid::apply_template(&mut cpuid, t),
            GuestCpuid::Saved(saved) => {
                let here = match pvm::is_kvm_pvm(&fd) {
                    true => cpuid::native(),
                    false => cpuid.as_slice().to_vec(),
                };
                let missing = cpuid::missing_features(saved, &here);
                if !missing.is_empty() {
                    return Err(VcpuError::Features(missing.join(" ")));
                }
                cpuid = CpuId::from_entries(saved)
                    .map_err(|_| VcpuError::Features("(a CPUID list too long)".into()))?;
            }
        }
        fd.set_cpuid2(&cpuid).map_err(VcpuError::SetCpuid)?;
        Ok(Self {
            fd,
            pvm_native: false,
            first_hlt: None,
        })
    }

    /// The CPUID the guest sees (KVM_GET_CPUID2).
    pub fn cpuid(&self) -> Result<Vec<kvm_cpuid_entry2>, VcpuError> {
        let c = self
            .fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(VcpuError::GetCpuid)?;
        Ok(c.as_slice().to_vec())
    }

    /// The guest TSC frequency in Hz (the boot info's `cpu_cycle_freq`).
    pub fn tsc_hz(&self) -> Result<u64, VcpuError> {
        let khz = self.fd.get_tsc_khz().map_err(VcpuError::TscKhz)?;
        Ok(u64::from(khz) * 1000)
    }

    /// Sets the 64-bit entry state Solo5 guests expect (`mem`: the guest's
    /// memory, for kvm_pvm's first-HLT stub, see [`pvm::FirstHlt`]).
    pub fn set_boot_state(&mut self, b: &BootState, mem: &GuestMemory) -> Result<(), VcpuError> {
        let mut sregs = self.fd.get_sregs().map_err(VcpuError::Regs)?;
        let (code_sel, data_sel) = BOOT_GDT_SELECTORS;
        let code = kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector: code_sel,
            type_: 9,
            present: 1,
            s: 1,
            l: 1,
            g: 1,
            ..Default::default()
        };
        let data = kvm_segment {
            selector: data_sel,
            type_: 3,
            l: 0,
            db: 1,
            ..code
        };
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        // A busy 64-bit TSS, as VM entry requires a usable TR.
        sregs.tr = kvm_segment {
            type_: 11,
            present: 1,
            ..Default::default()
        };
        sregs.ldt = kvm_segment {
            unusable: 1,
            ..Default::default()
        };
        sregs.gdt.base = b.gdt_base;
        sregs.gdt.limit = b.gdt_limit;
        sregs.idt.base = 0;
        sregs.idt.limit = 0xffff;
        sregs.cr0 = CR0_PE | CR0_NE | CR0_WP | CR0_PG;
        sregs.cr3 = b.cr3;
        sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        sregs.efer = EFER_LME | EFER_LMA;
        self.fd.set_sregs(&sregs).map_err(VcpuError::Regs)?;

        let native = pvm::register(&self.fd);
        self.first_hlt = native
            .then(|| pvm::FirstHlt::write(mem, b.entry, b.stack))
            .flatten();
        let regs = kvm_regs {
            rip: self.first_hlt.map_or(b.entry, |stub| stub.at),
            rsp: b.stack,
            rdi: b.boot_info,
            rflags: 0x2,
            ..Default::default()
        };
        self.fd.set_regs(&regs).map_err(VcpuError::Regs)?;
        self.set_pvm_native(native);
        Ok(())
    }

    /// Makes the kvm_run area reachable from the signal handler, so a
    /// SIGTERM can force the next `KVM_RUN` to return at once.
    pub fn arm_signals(&mut self) {
        signals::set_kvm_run(self.fd.get_kvm_run());
    }

    /// Runs the guest until its next exit.
    pub fn run(&mut self) -> Result<Exit, VcpuError> {
        match self.enter()? {
            // The stub's own HLT (a kvm_pvm that armed no wake): the guest
            // goes on to where the stub jumps.
            Exit::Hlt if self.past_stub() => Ok(Exit::Interrupted),
            exit => Ok(exit),
        }
    }

    fn enter(&mut self) -> Result<Exit, VcpuError> {
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                VcpuExit::IoOut(port, data) => Exit::io_out(port, data),
                VcpuExit::IoIn(port, data) => Exit::IoIn {
                    port,
                    size: data.len() as u8,
                },
                VcpuExit::MmioRead(addr, _) => Exit::Mmio { addr, write: false },
                VcpuExit::MmioWrite(addr, _) => Exit::Mmio { addr, write: true },
                VcpuExit::Hlt => Exit::Hlt,
                VcpuExit::Debug(_) => Exit::Debug,
                VcpuExit::Shutdown if self.pvm_native => return self.redeliver(),
                VcpuExit::Shutdown => Exit::Shutdown,
                VcpuExit::FailEntry(reason, _) => Exit::FailEntry(reason),
                VcpuExit::InternalError => {
                    // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
                    // kernel filled the `internal` member of the union.
                    let sub = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                    Exit::InternalError(sub)
                }
                _ => Exit::Other(self.fd.get_kvm_run().exit_reason),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                if signals::take_kick() && self.pvm_native {
                    self.leave_native_on_own_tables()?;
                }
                Ok(Exit::Interrupted)
            }
            Err(e) if e.errno() == libc::EFAULT => Ok(Exit::TranslationFault),
            Err(e) => Err(VcpuError::Run(e)),
        }
    }

    /// Whether the vCPU stopped just past the first-HLT stub's HLT (the
    /// stub is forgotten either way: only the first HLT can be its).
    fn past_stub(&mut self) -> bool {
        let Some(stub) = self.first_hlt.take() else {
            return false;
        };
        self.fd.get_regs().is_ok_and(|r| r.rip == stub.at + 1)
    }

    /// The guest's registers as the guest knows them: at the first-HLT
    /// stub, the rip is where the stub jumps (for a record of the guest's
    /// state, e.g. the state a pool worker rewinds to).
    pub(crate) fn guest_regs(&self) -> Result<kvm_regs, VcpuError> {
        let mut regs = self.fd.get_regs().map_err(VcpuError::Regs)?;
        if let Some(stub) = self.first_hlt.filter(|s| s.at == regs.rip) {
            regs.rip = stub.target;
        }
        Ok(regs)
    }

    /// A restored or rewound guest on kvm_pvm: registering the PV page
    /// again armed the one-time HLT wake again, so the guest resumes
    /// through the stub too, written below its stack pointer and jumping
    /// to where it stopped (see [`pvm::FirstHlt`]). Nothing elsewhere.
    pub(crate) fn resume_through_stub(&mut self, mem: &GuestMemory) -> Result<(), VcpuError> {
        if !self.pvm_native {
            return Ok(());
        }
        let mut regs = self.fd.get_regs().map_err(VcpuError::Regs)?;
        self.first_hlt = pvm::FirstHlt::write(mem, regs.rip, regs.rsp);
        if let Some(stub) = self.first_hlt {
            regs.rip = stub.at;
            self.fd.set_regs(&regs).map_err(VcpuError::Regs)?;
        }
        Ok(())
    }

    /// The vCPU fd, for saving and restoring its state (snapshot/).
    pub(crate) fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    pub(crate) fn fd_mut(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }

    /// Whether kvm_pvm runs the guest natively (after a boot or restore);
    /// arms the watchdog that notices own page tables there.
    pub(crate) fn set_pvm_native(&mut self, on: bool) {
        // Once per process: a pool worker sets it again for each request,
        // confined by then (no prlimit64), with the watchdog still armed.
        static WATCHDOG: std::sync::Once = std::sync::Once::new();
        self.pvm_native = on;
        if on {
            WATCHDOG.call_once(pvm::arm_watchdog);
        }
    }

    /// The watchdog kicked a native guest: if it runs on page tables of its
    /// own (which may livelock natively, see [`pvm`]), it goes on under
    /// emulation. A guest on the tender's tables stays native.
    fn leave_native_on_own_tables(&mut self) -> Result<(), VcpuError> {
        let sregs = self.fd.get_sregs().map_err(VcpuError::Regs)?;
        if sregs.cr3 & !0xfff != BOOT_CR3 {
            self.leave_pvm_native();
        }
        Ok(())
    }

    /// Leaves kvm_pvm's native mode for good: the guest goes on under
    /// kvm_pvm's emulator (a debugger's single steps and breakpoints need
    /// it; benches compare the two, see docs/kvm-pvm.md). Returns whether
    /// it was native.
    pub fn leave_pvm_native(&mut self) -> bool {
        if !(self.pvm_native && pvm::unregister(&self.fd)) {
            return false;
        }
        self.pvm_native = false;
        // Under emulation the stub's HLT would end the guest: one that has
        // not started yet (a debugger, a bench) starts at its entry. A
        // failure here can only leave it at the stub, whose HLT then ends
        // it with skiff's one line.
        if let Some(stub) = self.first_hlt.take() {
            if let Ok(mut regs) = self.fd.get_regs() {
                if regs.rip == stub.at {
                    regs.rip = stub.target;
                    let _ = self.fd.set_regs(&regs);
                }
            }
        }
        true
    }

    /// A triple fault in kvm_pvm's native mode: the guest's exception could
    /// not be delivered there (see [`pvm::unregister`]). Leaves native mode
    /// for good and delivers the same exception again under emulation; a
    /// guest that still cannot take it triple-faults again there.
    fn redeliver(&mut self) -> Result<Exit, VcpuError> {
        self.pvm_native = false;
        let mut events = self.fd.get_vcpu_events().map_err(VcpuError::Regs)?;
        if !pvm::unregister(&self.fd) {
            return Ok(Exit::Shutdown);
        }
        // The first exception is still recorded (CR2 too, for a #PF);
        // re-inject it rather than the #SS/#DF kvm_pvm raised after it.
        events.exception.injected = 1;
        events.exception.pending = 0;
        events.triple_fault.pending = 0;
        events.flags &= !KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
        self.fd.set_vcpu_events(&events).map_err(VcpuError::Regs)?;
        self.run()
    }

    /// The guest's instruction pointer, for fault messages; `None` when
    /// it is unknown: AMD SVM's KVM resets the vCPU on a triple fault, so
    /// its registers then hold the reset state (RIP 0xfff0, RFLAGS 0x2),
    /// where no skiff guest runs (its images load above 1 MiB).
    pub fn fault_rip(&self) -> Option<u64> {
        let r = self.fd.get_regs().ok()?;
        let reset = r.rip == 0xfff0 && r.rflags == 0x2;
        (!reset).then_some(r.rip)
    }
}
