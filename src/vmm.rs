//! The running guest: only running state lives here (the builder made it
//! from the config). [`Vm::run_with`] is the one vCPU loop: exit ->
//! decode -> (hook) -> handle. A [`RunHook`] sees each decoded hypercall
//! first and may pause the run there (`skiff snapshot` stops at the first
//! REQ_READ) or answer it itself, and a debugger's hook pauses at the
//! #BP and single-step exits it asked for; [`Vm::run`] is the loop with no
//! hook.

use crate::devices::{Devices, Stop};
use crate::hypercall::{self, Control, GuestFault, Request};
use crate::marks::{self, Mark};
use crate::memory::GuestMemory;
use crate::signals;
use crate::vcpu::{Exit, Vcpu, VcpuError};
use kvm_ioctls::{Kvm, VmFd};
use std::convert::Infallible;
use thiserror::Error;

/// Why a run ended other than by the guest's HALT.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("guest fault: {fault}{}", Rip(*.rip))]
    Guest {
        fault: GuestFault,
        /// Where the guest was, when known (the vCPU loop fills it in).
        rip: Option<u64>,
    },
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

impl RunError {
    /// The process exit status for a run that ended this way: 128+N for
    /// signal N (as a shell reports a death by signal), else 1.
    pub fn exit_status(&self) -> i32 {
        match self {
            RunError::Signal(sig) => 128 + sig,
            _ => 1,
        }
    }
}

/// The process exit status for a run's result: the guest's HALT status
/// (low 8 bits, as the kernel keeps them) or [`RunError::exit_status`].
pub fn exit_status(result: &Result<i32, RunError>) -> i32 {
    match result {
        Ok(status) => status & 0xff,
        Err(e) => e.exit_status(),
    }
}

impl From<Stop> for RunError {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::Fault(fault) => RunError::Guest { fault, rip: None },
            Stop::Stdout(e) => RunError::Stdout(e),
            Stop::Function(e) => RunError::Function(e),
            Stop::Device(e) => RunError::Device(e),
        }
    }
}

/// Shows ` (rip=0x...)` when the instruction pointer is known.
struct Rip(Option<u64>);

impl std::fmt::Display for Rip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(rip) => write!(f, " (rip=0x{rip:x})"),
            None => Ok(()),
        }
    }
}

/// What a [`RunHook`] does with a decoded hypercall.
#[derive(Debug)]
pub enum Hooked<P> {
    /// Let the owning device handle it, as a plain run does.
    Handle,
    /// The hook handled it itself, with this result.
    Handled(Result<Control, Stop>),
    /// End the run here, before the hypercall is handled: the caller owns
    /// it from then on (a snapshot saves it; the restored `Vm` answers it
    /// first). Running on without answering it leaves the guest's
    /// OUT fields as they were.
    Pause(P),
}

/// How a run with a hook ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended<P> {
    /// The guest's HALT, with its status.
    Halted(i32),
    /// The hook paused the run.
    Paused(P),
}

/// Watches a run: sees each decoded hypercall before its device does.
/// Called only on hypercalls (not on every exit), so a hook costs nothing
/// the loop does not already do; the plain run's hook compiles away.
pub trait RunHook {
    /// What the hook returns when it pauses the run.
    type Pause;
    fn on_request(&mut self, req: &Request, mem: &GuestMemory) -> Hooked<Self::Pause>;
    /// A debug exit (#BP or single step: only a debugger's
    /// KVM_SET_GUEST_DEBUG makes them): `Some` pauses the run there, with
    /// the vCPU at the stop; `None` (the default) ends the run as the guest
    /// fault of an exit nobody asked for.
    #[inline(always)]
    fn on_debug(&mut self) -> Option<Self::Pause> {
        None
    }
}

/// The plain run: every hypercall goes to its device; never pauses.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHook;

impl RunHook for NoHook {
    type Pause = Infallible;
    #[inline(always)]
    fn on_request(&mut self, _: &Request, _: &GuestMemory) -> Hooked<Infallible> {
        Hooked::Handle
    }
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
        match self.run_with(&mut NoHook)? {
            Ended::Halted(status) => Ok(status),
            Ended::Paused(never) => match never {},
        }
    }

    /// Runs the guest to its HALT or until `hook` pauses it.
    pub fn run_with<H: RunHook>(&mut self, hook: &mut H) -> Result<Ended<H::Pause>, RunError> {
        self.vcpu.arm_signals();
        marks::mark(Mark::FirstRun);
        loop {
            if let Some(end) = self.step_with(hook)? {
                return Ok(end);
            }
        }
    }

    /// Runs the guest to its HALT (`Some(status)`) or until `stop()` holds
    /// between two exits (`None`): a controlled run (control.rs) checks
    /// its request flag there, one atomic load per exit. Whatever made
    /// `stop()` true must also kick `KVM_RUN` (signals::interrupt_run).
    pub fn run_until(&mut self, stop: impl Fn() -> bool) -> Result<Option<i32>, RunError> {
        self.vcpu.arm_signals();
        marks::mark(Mark::FirstRun);
        // A request made before the signals were armed kicked nothing.
        if stop() {
            return Ok(None);
        }
        loop {
            if let Some(status) = self.step()? {
                return Ok(Some(status));
            }
            if stop() {
                return Ok(None);
            }
        }
    }

    /// Runs the guest to its next exit and acts on it: `Some(status)` once
    /// the guest has halted (benches/exit_cost times one exit).
    pub fn step(&mut self) -> Result<Option<i32>, RunError> {
        Ok(match self.step_with(&mut NoHook)? {
            Some(Ended::Halted(status)) => Some(status),
            Some(Ended::Paused(never)) => match never {},
            None => None,
        })
    }

    /// One exit of the loop: `Some` once the guest halted or `hook` paused
    /// it. The hot path: no allocation, one `KVM_RUN`.
    pub fn step_with<H: RunHook>(
        &mut self,
        hook: &mut H,
    ) -> Result<Option<Ended<H::Pause>>, RunError> {
        let decoded = match self.resume.take() {
            Some(req) => Ok(Some(req)),
            None => {
                if let Some(sig) = signals::pending() {
                    return Err(RunError::Signal(sig));
                }
                let exit = self.vcpu.run()?;
                marks::count_exit();
                crate::trace::exit(&exit);
                if exit == Exit::Debug {
                    if let Some(p) = hook.on_debug() {
                        return Ok(Some(Ended::Paused(p)));
                    }
                }
                hypercall::decode(&exit, &self.mem)
            }
        };
        let step = match decoded {
            Ok(None) => return Ok(None),
            Ok(Some(req)) => {
                marks::mark(Mark::FirstHypercall);
                let traced = crate::trace::hypercall(&req);
                let result = match hook.on_request(&req, &self.mem) {
                    Hooked::Handle => self.devices.handle(req, &self.mem),
                    Hooked::Handled(result) => result,
                    Hooked::Pause(p) => return Ok(Some(Ended::Paused(p))),
                };
                crate::trace::answered(traced, &result);
                result
            }
            Err(fault) => Err(Stop::Fault(fault)),
        };
        match step {
            Ok(Control::Continue) => Ok(None),
            Ok(Control::Halt(status)) => {
                marks::mark(Mark::Halt);
                Ok(Some(Ended::Halted(status)))
            }
            Err(stop) => Err(self.located(stop.into())),
        }
    }

    /// Adds where the guest was to a guest fault (one more ioctl, only on
    /// the way out).
    fn located(&self, err: RunError) -> RunError {
        match err {
            RunError::Guest { fault, rip: None } => RunError::Guest {
                fault,
                rip: self.vcpu.fault_rip(),
            },
            other => other,
        }
    }

    /// Completes a port write the run paused in (KVM finishes an `OUT` on
    /// the next `KVM_RUN`; with immediate_exit it returns before any guest
    /// instruction runs), so the saved state is just past the `OUT`.
    pub(crate) fn complete_io(&mut self) -> Result<(), RunError> {
        self.vcpu.fd_mut().set_kvm_immediate_exit(1);
        self.vcpu.run()?;
        Ok(())
    }

    /// The last step of every path to a runnable guest (a boot, a restore,
    /// a pool worker's request): the guest gets its request's function
    /// I/O, piped stdio is widened, and the VM is marked ready.
    pub fn take_request(&mut self, function: crate::devices::function::Function) {
        self.devices.function = function;
        crate::stdio::widen_pipes();
        marks::mark(Mark::KvmReady);
    }

    /// Sends the guest's console (PUTS) to `fd` instead of stdout.
    pub fn set_console(&mut self, fd: std::os::fd::RawFd) {
        self.devices.console = crate::devices::console::Console::to_fd(fd);
    }

    /// On kvm_pvm: runs the rest of the guest under kvm_pvm's emulator
    /// instead of natively; false where it was not native (benches).
    pub fn leave_pvm_native(&mut self) -> bool {
        self.vcpu.leave_pvm_native()
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
