//! `skiff run --gdb`: a gdb remote-serial-protocol stub (the `gdbstub`
//! crate) over one TCP connection, accepted before the guest's first
//! instruction. Memory is read and written at guest-virtual addresses
//! through the guest's page tables (src/debug/paging.rs); breakpoints and
//! single steps use KVM_SET_GUEST_DEBUG (software breakpoints: skiff
//! patches `int3`, KVM reports the #BP, and the run hook [`Stops`] pauses
//! the run there); Ctrl-C arrives as SIGIO-style
//! signal on the socket, which kicks the vCPU out of KVM_RUN.

use super::regs;
use crate::hypercall::Request;
use crate::memory::GuestMemory;
use crate::vmm::{Ended, Hooked, RunError, RunHook, Vm};
use gdbstub::common::Signal;
use gdbstub::conn::ConnectionExt;
use gdbstub::stub::run_blocking::{self, BlockingEventLoop};
use gdbstub::stub::{DisconnectReason, GdbStub, SingleThreadStopReason};
use gdbstub::target::ext::base::singlethread::{
    SingleThreadBase, SingleThreadResume, SingleThreadResumeOps, SingleThreadSingleStep,
    SingleThreadSingleStepOps,
};
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, SwBreakpoint, SwBreakpointOps,
};
use gdbstub::target::ext::monitor_cmd::{outputln, ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use kvm_bindings::{
    kvm_guest_debug, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
    KVM_GUESTDBG_USE_SW_BP,
};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use thiserror::Error;

const INT3: u8 = 0xcc;

/// Why the debugger could not be served.
#[derive(Debug, Error)]
pub enum GdbError {
    #[error("cannot listen for gdb on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("waiting for gdb failed: {0}")]
    Accept(std::io::Error),
    #[error("cannot set up the gdb connection: {0}")]
    Socket(std::io::Error),
    #[error("KVM_SET_GUEST_DEBUG failed (this KVM cannot single-step or break): {0}")]
    GuestDebug(kvm_ioctls::Error),
    #[error("cannot read or write the vCPU's registers: {0}")]
    Regs(kvm_ioctls::Error),
    #[error("gdb connection: {0}")]
    Connection(std::io::Error),
    #[error("gdb protocol: {0}")]
    Protocol(String),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// How a debugged run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The guest ran to its end (halted, faulted, or a signal), with or
    /// without gdb attached to the end (after a detach it runs on).
    Finished(Result<i32, RunError>),
    /// gdb killed it.
    Killed,
}

/// Binds the stub's listening socket (before the guest is built, so a
/// bad address fails early).
pub fn listen(addr: SocketAddr) -> Result<TcpListener, GdbError> {
    TcpListener::bind(addr).map_err(|e| GdbError::Listen(addr, e))
}

/// Waits for gdb to connect; then the connection is armed so that bytes
/// from gdb (Ctrl-C) interrupt a running guest.
/// Returns the connection and whether the vCPU is kvm_pvm's (which then
/// leaves native mode: there KVM_SET_GUEST_DEBUG is accepted but ignored,
/// and the guest itself would take the #BP and #DB).
pub fn accept(listener: &TcpListener, vm: &mut Vm) -> Result<(TcpStream, bool), GdbError> {
    let (stream, _) = listener.accept().map_err(GdbError::Accept)?;
    vm.vcpu.arm_signals();
    let pvm = vm.vcpu.leave_pvm_native();
    stream.set_nodelay(true).map_err(GdbError::Socket)?;
    super::kick::arm(&stream).map_err(GdbError::Socket)?;
    Ok((stream, pvm))
}

/// Serves gdb on `stream` until it detaches (the guest then runs on to
/// its end), kills the guest, or the guest ends.
pub fn serve(vm: &mut Vm, stream: TcpStream, pvm: bool) -> Result<Outcome, GdbError> {
    let mut target = Debuggee {
        vm,
        breakpoints: BTreeMap::new(),
        stepping: false,
        hw_only: pvm,
        slots: [None; 4],
        fault: None,
    };
    // Stop before the first instruction: gdb's first question finds the
    // guest at its entry point.
    target.set_guest_debug(false)?;
    let stub = GdbStub::new(stream);
    let reason = match stub.run_blocking::<Loop<'_>>(&mut target) {
        Ok(r) => r,
        Err(e) => {
            return Err(if e.is_target_error() {
                e.into_target_error()
                    .unwrap_or_else(|| GdbError::Protocol("target error".into()))
            } else if e.is_connection_error() {
                match e.into_connection_error() {
                    Some((io, _)) => GdbError::Connection(io),
                    None => GdbError::Protocol("connection error".into()),
                }
            } else {
                GdbError::Protocol(e.to_string())
            })
        }
    };
    match reason {
        DisconnectReason::Disconnect => {
            // gdb removed its breakpoints before detaching; the guest runs
            // on without debug exits.
            target.clear_breakpoints();
            target.disable_guest_debug()?;
            if let Some(fault) = target.fault.take() {
                return Ok(Outcome::Finished(Err(fault)));
            }
            Ok(Outcome::Finished(target.vm.run()))
        }
        DisconnectReason::TargetExited(status) => Ok(Outcome::Finished(Ok(i32::from(status)))),
        DisconnectReason::TargetTerminated(_) => Ok(Outcome::Finished(Err(target
            .fault
            .take()
            .unwrap_or(RunError::Signal(libc::SIGTERM))))),
        DisconnectReason::Kill => Ok(Outcome::Killed),
    }
}

/// The guest as gdb sees it.
struct Debuggee<'a> {
    vm: &'a mut Vm,
    /// Software breakpoints: guest-virtual address -> the byte `int3`
    /// replaced.
    breakpoints: BTreeMap<u64, u8>,
    /// Whether the next resume is a single step.
    stepping: bool,
    /// kvm_pvm's emulated vCPU cannot execute `int3` (KVM reports an
    /// emulation failure) but its instruction emulator checks the debug
    /// registers: there, breakpoints use DR0-DR3 (at most four).
    hw_only: bool,
    /// The addresses in DR0-DR3.
    slots: [Option<u64>; 4],
    /// The error that stopped the guest for good (reported to gdb as a
    /// signal; it stays inspectable until gdb lets go).
    fault: Option<RunError>,
}

impl Debuggee<'_> {
    fn set_guest_debug(&mut self, step: bool) -> Result<(), GdbError> {
        let mut control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP;
        if step {
            control |= KVM_GUESTDBG_SINGLESTEP;
        }
        let mut dbg = kvm_guest_debug {
            control,
            ..Default::default()
        };
        if self.slots.iter().any(Option::is_some) {
            dbg.control |= KVM_GUESTDBG_USE_HW_BP;
            // DR7: a local enable bit per slot; R/W and LEN 0 (execute).
            let mut dr7 = 0u64;
            for (i, a) in self.slots.iter().enumerate() {
                if let Some(a) = a {
                    dbg.arch.debugreg[i] = *a;
                    dr7 |= 1 << (2 * i);
                }
            }
            dbg.arch.debugreg[7] = dr7;
        }
        self.vm
            .vcpu
            .fd()
            .set_guest_debug(&dbg)
            .map_err(GdbError::GuestDebug)
    }

    fn disable_guest_debug(&mut self) -> Result<(), GdbError> {
        let dbg = kvm_guest_debug::default();
        self.vm
            .vcpu
            .fd()
            .set_guest_debug(&dbg)
            .map_err(GdbError::GuestDebug)
    }

    fn cr3(&self) -> u64 {
        self.vm.vcpu.fd().get_sregs().map(|s| s.cr3).unwrap_or(0)
    }

    fn clear_breakpoints(&mut self) {
        let cr3 = self.cr3();
        for (addr, orig) in std::mem::take(&mut self.breakpoints) {
            super::paging::write_virt(&self.vm.mem, cr3, addr, &[orig]);
        }
    }

    /// Runs the guest until it stops for gdb, or bytes arrive from gdb.
    fn run(&mut self, conn: &mut TcpStream) -> Result<Event, GdbError> {
        loop {
            if conn.peek().map_err(GdbError::Connection)?.is_some() {
                return Ok(Event::Incoming(
                    ConnectionExt::read(conn).map_err(GdbError::Connection)?,
                ));
            }
            match self.vm.step_with(&mut Stops) {
                Ok(None) => {}
                Ok(Some(Ended::Halted(status))) => {
                    return Ok(Event::Stopped(SingleThreadStopReason::Exited(status as u8)))
                }
                Ok(Some(Ended::Paused(Stop))) => {
                    return Ok(Event::Stopped(if self.stepping {
                        SingleThreadStopReason::DoneStep
                    } else {
                        SingleThreadStopReason::SwBreak(())
                    }))
                }
                Err(RunError::Signal(sig)) => {
                    return Err(GdbError::Run(RunError::Signal(sig)));
                }
                Err(e) => {
                    // The guest cannot go on; gdb may still look at it.
                    tracing::debug!(error = %e, "guest stopped by a fault");
                    self.fault = Some(e);
                    return Ok(Event::Stopped(SingleThreadStopReason::Signal(
                        Signal::SIGSEGV,
                    )));
                }
            }
        }
    }
}

/// The debugged run's hook: hypercalls go to their devices; the #BP and
/// single-step exits gdb asked KVM for pause the run.
struct Stops;

/// A stop gdb asked for (a breakpoint or the end of a step).
struct Stop;

impl RunHook for Stops {
    type Pause = Stop;
    fn on_request(&mut self, _: &Request, _: &GuestMemory) -> Hooked<Stop> {
        Hooked::Handle
    }
    fn on_debug(&mut self) -> Option<Stop> {
        Some(Stop)
    }
}

enum Event {
    Incoming(u8),
    Stopped(SingleThreadStopReason<u64>),
}

/// The event loop, for a `Debuggee` borrowing the guest for `'a`.
struct Loop<'a>(std::marker::PhantomData<&'a mut ()>);

impl<'a> BlockingEventLoop for Loop<'a> {
    type Target = Debuggee<'a>;
    type Connection = TcpStream;
    type StopReason = SingleThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut Self::Target,
        conn: &mut TcpStream,
    ) -> Result<
        run_blocking::Event<Self::StopReason>,
        run_blocking::WaitForStopReasonError<GdbError, std::io::Error>,
    > {
        if target.fault.is_some() {
            // A faulted guest does not run again: report the fault again.
            return Ok(run_blocking::Event::TargetStopped(
                SingleThreadStopReason::Signal(Signal::SIGSEGV),
            ));
        }
        match target.run(conn) {
            Ok(Event::Incoming(b)) => Ok(run_blocking::Event::IncomingData(b)),
            Ok(Event::Stopped(r)) => Ok(run_blocking::Event::TargetStopped(r)),
            Err(GdbError::Connection(e)) => {
                Err(run_blocking::WaitForStopReasonError::Connection(e))
            }
            Err(e) => Err(run_blocking::WaitForStopReasonError::Target(e)),
        }
    }

    fn on_interrupt(_target: &mut Self::Target) -> Result<Option<Self::StopReason>, GdbError> {
        Ok(Some(SingleThreadStopReason::Signal(Signal::SIGINT)))
    }
}

impl Target for Debuggee<'_> {
    type Arch = X86_64_SSE;
    type Error = GdbError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::SingleThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

fn fatal(e: kvm_ioctls::Error) -> TargetError<GdbError> {
    TargetError::Fatal(GdbError::Regs(e))
}

impl SingleThreadBase for Debuggee<'_> {
    fn read_registers(&mut self, out: &mut X86_64CoreRegs) -> TargetResult<(), Self> {
        let fd = self.vm.vcpu.fd();
        let r = fd.get_regs().map_err(fatal)?;
        let s = fd.get_sregs().map_err(fatal)?;
        // kvm_pvm refuses KVM_GET_FPU in some modes; gdb then sees zeros.
        let f = fd.get_fpu().ok();
        *out = regs::to_gdb(&r, &s, f.as_ref());
        Ok(())
    }

    fn write_registers(&mut self, new: &X86_64CoreRegs) -> TargetResult<(), Self> {
        let fd = self.vm.vcpu.fd();
        let mut r = fd.get_regs().map_err(fatal)?;
        regs::from_gdb(new, &mut r);
        fd.set_regs(&r).map_err(fatal)?;
        if let Ok(mut f) = fd.get_fpu() {
            regs::fpu_from_gdb(new, &mut f);
            fd.set_fpu(&f).map_err(fatal)?;
        }
        Ok(())
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8]) -> TargetResult<usize, Self> {
        let cr3 = self.cr3();
        // Byte-exact: stop at the first unmapped page.
        let mut done = 0;
        while done < data.len() {
            let va = start.wrapping_add(done as u64);
            let room = (4096 - (va & 4095)) as usize;
            let n = room.min(data.len() - done);
            if !super::paging::read_virt(&self.vm.mem, cr3, va, &mut data[done..done + n]) {
                break;
            }
            done += n;
        }
        if done == 0 && !data.is_empty() {
            return Err(TargetError::Errno(libc::EFAULT as u8));
        }
        Ok(done)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8]) -> TargetResult<(), Self> {
        let cr3 = self.cr3();
        if super::paging::write_virt(&self.vm.mem, cr3, start, data) {
            Ok(())
        } else {
            Err(TargetError::Errno(libc::EFAULT as u8))
        }
    }

    fn support_resume(&mut self) -> Option<SingleThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadResume for Debuggee<'_> {
    fn resume(&mut self, _signal: Option<Signal>) -> Result<(), GdbError> {
        self.stepping = false;
        self.set_guest_debug(false)
    }

    fn support_single_step(&mut self) -> Option<SingleThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl SingleThreadSingleStep for Debuggee<'_> {
    fn step(&mut self, _signal: Option<Signal>) -> Result<(), GdbError> {
        self.stepping = true;
        self.set_guest_debug(true)
    }
}

impl Breakpoints for Debuggee<'_> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }
}

impl Debuggee<'_> {
    /// Puts `addr` in a free debug register (the next resume loads them).
    fn add_slot(&mut self, addr: u64) -> bool {
        if self.slots.contains(&Some(addr)) {
            return true;
        }
        match self.slots.iter_mut().find(|s| s.is_none()) {
            Some(s) => {
                *s = Some(addr);
                true
            }
            None => false,
        }
    }

    fn remove_slot(&mut self, addr: u64) -> bool {
        match self.slots.iter_mut().find(|s| **s == Some(addr)) {
            Some(s) => {
                *s = None;
                true
            }
            None => false,
        }
    }
}

impl HwBreakpoint for Debuggee<'_> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.add_slot(addr))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        Ok(self.remove_slot(addr))
    }
}

impl SwBreakpoint for Debuggee<'_> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        // The first four in debug registers everywhere (they need no write
        // into the guest's text); `int3` beyond that, except on kvm_pvm.
        if self.add_slot(addr) || self.hw_only {
            return Ok(self.slots.contains(&Some(addr)));
        }
        if self.breakpoints.contains_key(&addr) {
            return Ok(true);
        }
        let cr3 = self.cr3();
        let mut orig = [0u8];
        if !super::paging::read_virt(&self.vm.mem, cr3, addr, &mut orig)
            || !super::paging::write_virt(&self.vm.mem, cr3, addr, &[INT3])
        {
            return Ok(false);
        }
        self.breakpoints.insert(addr, orig[0]);
        Ok(true)
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.remove_slot(addr) || self.hw_only {
            return Ok(true);
        }
        let Some(orig) = self.breakpoints.remove(&addr) else {
            return Ok(false);
        };
        let cr3 = self.cr3();
        Ok(super::paging::write_virt(&self.vm.mem, cr3, addr, &[orig]))
    }
}

impl MonitorCmd for Debuggee<'_> {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), GdbError> {
        match cmd {
            b"regs" | b"sregs" => {
                let s = self.vm.vcpu.fd().get_sregs().map_err(GdbError::Regs)?;
                for line in regs::control_lines(&s) {
                    outputln!(out, "{line}");
                }
            }
            b"fault" => match &self.fault {
                Some(f) => outputln!(out, "{f}"),
                None => outputln!(out, "no fault"),
            },
            _ => {
                outputln!(out, "skiff monitor commands:");
                outputln!(
                    out,
                    "  regs   control registers (cr0, cr2, cr3, cr4, efer), fs/gs base, gdt, idt"
                );
                outputln!(out, "  fault  why the guest stopped for good, if it did");
            }
        }
        Ok(())
    }
}
