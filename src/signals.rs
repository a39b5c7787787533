//! SIGINT/SIGTERM (and SIGHUP, SIGQUIT: a closed terminal, Ctrl-\\) end a
//! running guest promptly: the handler records the
//! signal and sets `immediate_exit` so `KVM_RUN` returns at once, even if
//! the signal lands just before the guest is entered. Works as PID 1 too,
//! where default dispositions would ignore SIGTERM.
//!
//! A leaf (process-wide state: one handler per signal), used by the vCPU,
//! the pool, `skiff call`, oci and the bench harness alike.

use kvm_bindings::kvm_run;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};

static PENDING: AtomicI32 = AtomicI32::new(0);
/// A kick (not a terminating signal) made `KVM_RUN` return: see
/// [`kick_on`].
static KICKED: AtomicBool = AtomicBool::new(false);
static KVM_RUN: AtomicPtr<kvm_run> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_signal(sig: libc::c_int) {
    PENDING.store(sig, Ordering::SeqCst);
    interrupt_run();
}

/// Makes the vCPU's next (or current) `KVM_RUN` return at once. Async-
/// signal-safe: for signal handlers (here, and the debugger's socket
/// kick), which must not keep a kvm_run pointer of their own.
pub fn interrupt_run() {
    let run = KVM_RUN.load(Ordering::SeqCst);
    if !run.is_null() {
        // SAFETY: `run` points at the live vCPU's mmap'd kvm_run: the
        // vCPU clears it (`clear_kvm_run`) before its mapping goes, so a
        // signal after that finds null; a byte store is async-signal-safe.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// The signals that stop whatever skiff is doing (exit status 128+N).
pub const STOP: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Installs the handlers (no SA_RESTART: blocking calls return EINTR) and
/// ignores SIGPIPE so a closed stdout is an error, not a silent death.
pub fn install() {
    for sig in STOP {
        watch(sig);
    }
    // SAFETY: setting a standard disposition has no memory-safety effect.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Makes `sig` end a running guest as SIGINT/SIGTERM do (a pool worker:
/// SIGIO when its caller hangs up).
pub fn watch(sig: libc::c_int) {
    // SAFETY: a zeroed sigaction with a valid handler and empty mask is a
    // valid argument; the handler only does async-signal-safe stores.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as *const () as usize;
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

extern "C" fn on_kick(_sig: libc::c_int) {
    KICKED.store(true, Ordering::SeqCst);
    interrupt_run();
}

/// Makes `sig` interrupt a running guest so skiff can look at it (kvm_pvm's
/// native-mode watchdog, see vcpu/pvm.rs), without ending it: SA_RESTART,
/// so no other blocking call of skiff's sees EINTR.
pub(crate) fn kick_on(sig: libc::c_int) {
    // SAFETY: as in `watch`; the handler only does async-signal-safe stores.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Whether a kick arrived since the last call.
pub(crate) fn take_kick() -> bool {
    KICKED.swap(false, Ordering::SeqCst)
}

pub(crate) fn set_kvm_run(run: &mut kvm_run) {
    KVM_RUN.store(run, Ordering::SeqCst);
}

/// Forgets the kvm_run (its vCPU is going): a signal that arrives later
/// (a stop signal, the pvm watchdog's SIGXCPU, gdb's socket) must not write
/// into an unmapped page.
pub(crate) fn clear_kvm_run() {
    KVM_RUN.store(std::ptr::null_mut(), Ordering::SeqCst);
}

/// The terminating signal received so far, if any.
pub fn pending() -> Option<i32> {
    match PENDING.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
