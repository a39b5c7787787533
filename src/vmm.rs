//! The running guest: only running state lives here (the builder made it
//! from the config). `run` is the vCPU loop: exit -> decode -> handle.

use crate::bench::marks::{self, Mark};
use crate::devices::{Devices, Stop};
use crate::hypercall::{self, Control};
use crate::memory::GuestMemory;
use crate::vcpu::{signals, GuestFault, Vcpu, VcpuError};
use kvm_ioctls::{Kvm, VmFd};
use thiserror::Error;

/// Why a run ended other than by the guest's HALT.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("guest fault: {fault} (rip=0x{rip:x})")]
    Guest { fault: GuestFault, rip: u64 },
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("cannot write the guest's output to stdout: {0}")]
    Stdout(std::io::Error),
    #[error(transparent)]
    Function(#[from] crate::devices::function::FunctionError),
    #[error("exiting on signal {0}")]
    Signal(i32),
    #[error(transparent)]
    Device(#[from] crate::devices::DeviceError),
}

/// A guest ready to run.
#[derive(Debug)]
pub struct Vm {
    // Field order is drop order: the vCPU before the VM before /dev/kvm.
    pub(crate) vcpu: Vcpu,
    pub(crate) mem: GuestMemory,
    pub(crate) devices: Devices,
    pub(crate) vm: VmFd,
    pub(crate) kvm: Kvm,
    /// A hypercall to answer before the first KVM_RUN: a restored guest
    /// resumes inside its REQ_READ (see snapshot/).
    pub(crate) resume: Option<hypercall::Request>,
}

impl Vm {
    /// Runs the guest to its HALT and returns its exit status.
    pub fn run(&mut self) -> Result<i32, RunError> {
        self.vcpu.arm_signals();
        marks::mark(Mark::FirstRun);
        loop {
            if let Some(status) = self.step()? {
                return Ok(status);
            }
        }
    }

    /// Runs the guest to its next exit and acts on it: `Some(status)` once
    /// the guest has halted. The hot path: no allocation, one `KVM_RUN`.
    pub fn step(&mut self) -> Result<Option<i32>, RunError> {
        let decoded = match self.resume.take() {
            Some(req) => Ok(Some(req)),
            None => {
                if let Some(sig) = signals::pending() {
                    return Err(RunError::Signal(sig));
                }
                let exit = self.vcpu.run()?;
                marks::count_exit();
                crate::debug::trace::exit(&exit);
                hypercall::decode(&exit, &self.mem)
            }
        };
        let step = match decoded {
            Ok(None) => return Ok(None),
            Ok(Some(req)) => {
                marks::mark(Mark::FirstHypercall);
                let traced = crate::debug::trace::hypercall(&req);
                let result = self.devices.handle(req, &self.mem);
                crate::debug::trace::answered(traced, &result);
                result
            }
            Err(fault) => Err(Stop::Fault(fault)),
        };
        match step {
            Ok(Control::Continue) => Ok(None),
            Ok(Control::Halt(status)) => {
                marks::mark(Mark::Halt);
                Ok(Some(status))
            }
            Err(Stop::Fault(fault)) => Err(RunError::Guest {
                fault,
                rip: self.vcpu.rip(),
            }),
            Err(Stop::Stdout(e)) => Err(RunError::Stdout(e)),
            Err(Stop::Function(e)) => Err(RunError::Function(e)),
            Err(Stop::Device(e)) => Err(RunError::Device(e)),
        }
    }

    /// Sends the guest's console (PUTS) to `fd` instead of stdout.
    pub fn set_console(&mut self, fd: std::os::fd::RawFd) {
        self.devices.console = crate::devices::console::Console::to_fd(fd);
    }

    /// Guest memory (for tests and snapshots).
    pub fn memory(&self) -> &GuestMemory {
        &self.mem
    }

    /// The VM file descriptors, kept alive as long as the guest.
    pub fn fds(&self) -> (&Kvm, &VmFd) {
        (&self.kvm, &self.vm)
    }
}
