//! The run loop's hook (`Vm::run_with`), in process on real KVM with the
//! `hello` guest: a hook sees each decoded hypercall before its device,
//! can pause the run there or answer the hypercall itself, and a guest
//! fault it raises ends the run located at the guest's rip.

mod common;

use skiff::config::{MemSize, RunConfig};
use skiff::devices::Stop;
use skiff::hypercall::{Control, GuestFault, Request};
use skiff::memory::GuestMemory;
use skiff::vmm::{Ended, Hooked, RunError, RunHook, Vm};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The hello guest, its console on a pipe: the guest, the read end, and
/// the write end (which the console borrows: keep it until the end).
fn hello() -> (Vm, std::fs::File, OwnedFd) {
    let cfg = RunConfig {
        mem: MemSize::from_mib("32").unwrap(),
        kernel: common::guest("hello"),
        ..Default::default()
    };
    let mut vm = skiff::builder::build(&cfg).expect("build the hello guest");
    let mut fds = [0; 2];
    // SAFETY: a valid out-array of two ints.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: pipe just made both fds; each is owned once from here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    vm.set_console(w.as_raw_fd());
    (vm, std::fs::File::from(r), w)
}

/// What the console has written so far (FIONREAD, so it never blocks).
fn console(r: &mut std::fs::File) -> String {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD on our own pipe into a valid int.
    let rc = unsafe { libc::ioctl(r.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0);
    let mut buf = vec![0u8; n as usize];
    r.read_exact(&mut buf).unwrap();
    String::from_utf8(buf).unwrap()
}

/// Pauses at the first PUTS, returning its length.
struct PauseAtPuts;

impl RunHook for PauseAtPuts {
    type Pause = u64;
    fn on_request(&mut self, req: &Request, _: &GuestMemory) -> Hooked<u64> {
        match req {
            Request::Puts { arg } => Hooked::Pause(arg.len),
            _ => Hooked::Handle,
        }
    }
}

#[test]
fn a_hook_pauses_before_the_hypercall_is_handled() {
    let (mut vm, mut out, _w) = hello();
    let paused = vm
        .run_with(&mut PauseAtPuts)
        .expect("run to the first PUTS");
    assert_eq!(paused, Ended::Paused("Hello, world!\n".len() as u64));
    assert_eq!(console(&mut out), "", "the paused PUTS was not handled");
    // Running on: the paused hypercall stays unanswered (its owner, e.g.
    // a snapshot, answers it later); the guest goes on to its HALT.
    assert_eq!(vm.run().expect("run to HALT"), 0);
}

/// Answers every PUTS itself (counting them) without printing.
struct SwallowPuts(u32);

impl RunHook for SwallowPuts {
    type Pause = std::convert::Infallible;
    fn on_request(&mut self, req: &Request, _: &GuestMemory) -> Hooked<Self::Pause> {
        match req {
            Request::Puts { .. } => {
                self.0 += 1;
                Hooked::Handled(Ok(Control::Continue))
            }
            _ => Hooked::Handle,
        }
    }
}

#[test]
fn a_hook_can_answer_a_hypercall_itself() {
    let (mut vm, mut out, _w) = hello();
    let mut hook = SwallowPuts(0);
    assert_eq!(
        vm.run_with(&mut hook).expect("run to HALT"),
        Ended::Halted(0)
    );
    assert_eq!(hook.0, 1, "hello makes one PUTS");
    assert_eq!(console(&mut out), "");
}

/// Ends the run at the first PUTS with a guest fault.
struct FaultAtPuts;

impl RunHook for FaultAtPuts {
    type Pause = std::convert::Infallible;
    fn on_request(&mut self, req: &Request, _: &GuestMemory) -> Hooked<Self::Pause> {
        match req {
            Request::Puts { .. } => Hooked::Handled(Err(Stop::Fault(GuestFault::Hlt))),
            _ => Hooked::Handle,
        }
    }
}

#[test]
fn a_fault_ends_the_run_with_the_guests_rip() {
    let (mut vm, _out, _w) = hello();
    match vm.run_with(&mut FaultAtPuts) {
        Err(e @ RunError::Guest { rip: Some(rip), .. }) => {
            // The guest's code is loaded at 1 MiB and up.
            assert!(rip >= 0x10_0000, "rip 0x{rip:x}");
            assert!(e.to_string().contains(&format!("(rip=0x{rip:x})")), "{e}");
        }
        other => panic!("expected a located guest fault, got {other:?}"),
    }
}
