//! Native execution on kvm_pvm, the paravirtualized nested KVM of skiff's
//! build and CI machines.
//!
//! kvm_pvm runs a CPL0 guest entirely in KVM's instruction emulator (about
//! 10 us per instruction, and most SSE/x87 instructions fail with an
//! emulation error) until the guest's vCPU registers a shared page through
//! a PV MSR; PV Linux guests do this themselves. skiff does it for the
//! guest, so unmodified Solo5 guests run natively there (in hardware ring 3,
//! hence the U bit on every boot page-table entry, see memory/layout.rs).
//!
//! The MSR is undocumented: this module was written from that host's own
//! PV-guest code (it registers `page | 1`). On any other KVM the write is
//! refused and nothing changes.
//!
//! Native mode has one trap: the guest runs in hardware ring 3, so pages
//! the guest's page tables mark supervisor-only (every kernel's own tables,
//! unlike the tender's boot tables) fault forever. kvm_pvm's shadow MMU
//! finds nothing to fix and re-enters the guest: a livelock inside
//! `KVM_RUN`, with no exit skiff could see. So while native, a watchdog
//! kicks `KVM_RUN` after each CPU second (RLIMIT_CPU's SIGXCPU: one
//! `prlimit64`, which urunc's allowlist has, and no thread or timer), and a
//! kicked guest running on page tables of its own leaves native mode and
//! goes on under emulation, where kvm_pvm treats its tables as hardware
//! does (see docs/kvm-pvm.md).
//!
//! And one quirk: registering arms a one-time wake, so the vCPU's next HLT
//! returns to the guest at once instead of exiting; every HLT after that
//! one exits to skiff as on any KVM. skiff spends that wake itself before
//! the guest's first instruction ([`FirstHlt`]).

use crate::memory::{Gpa, GuestMemory};
use crate::signals;
use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

/// kvm_pvm's vCPU registration MSR: guest-physical page address | flags.
pub const MSR_PVM_REGISTER: u32 = 0x4b56_4d10;
/// Bit 0: register the page.
pub const REGISTER: u64 = 1;
/// A page inside guest memory the guest never maps (below the boot info,
/// after the boot page tables), handed to kvm_pvm as the shared page.
pub const SHARED_PAGE: u64 = 0x9000;

/// Registers the shared page; returns whether kvm_pvm accepted it.
pub fn register(vcpu: &VcpuFd) -> bool {
    write(vcpu, SHARED_PAGE | REGISTER)
}

/// Unregisters the shared page: the vCPU goes back to full emulation,
/// where kvm_pvm delivers exceptions like hardware does.
///
/// Registered (bit 0), kvm_pvm treats the guest as a PV kernel and refuses
/// any TSS stack (IST or RSP0) in the lower half of the address space
/// (`pvm_tss_stack_lm` raises #SS), so the exceptions of a guest with IST
/// gates in low memory, as Solo5's, end in a triple fault.
pub fn unregister(vcpu: &VcpuFd) -> bool {
    write(vcpu, 0)
}

/// Where the vCPU starts when registration armed kvm_pvm's one-time wake:
/// a stub, `hlt; jmp [rip+0]; .quad target`, whose HLT spends the wake
/// (one trapped instruction inside `KVM_RUN`, no exit to skiff) and which
/// then jumps to where the guest starts. Without it, a guest's own first
/// HLT (`cli; hlt`: "stop here for good") would return and the guest run
/// on past it; with it, that HLT ends the guest as on any other KVM.
#[derive(Debug, Clone, Copy)]
pub struct FirstHlt {
    /// The stub's address (guest-virtual and guest-physical: it is only
    /// used on the tender's identity-mapped tables).
    pub at: u64,
    /// Where the stub jumps: the guest's own first instruction.
    pub target: u64,
}

/// How far below the stack pointer the stub goes: past any red zone, in
/// stack memory the guest's own pushes overwrite, which no guest may
/// expect to hold anything.
const STUB_BELOW_SP: u64 = 256;

impl FirstHlt {
    /// Writes the stub below `rsp` for a guest about to start at `rip`;
    /// `None` where that memory is not the guest's (then the guest's own
    /// first HLT returns at once, as without the stub).
    pub fn write(mem: &GuestMemory, rip: u64, rsp: u64) -> Option<Self> {
        let at = rsp.checked_sub(STUB_BELOW_SP)? & !0xf;
        let mut stub = [0u8; 15];
        // hlt; jmp [rip+0] (the next 8 bytes: the target)
        stub[..7].copy_from_slice(&[0xf4, 0xff, 0x25, 0, 0, 0, 0]);
        stub[7..].copy_from_slice(&rip.to_le_bytes());
        mem.write_bytes(&stub, Gpa(at)).ok()?;
        Some(Self { at, target: rip })
    }
}

/// CPU time after which the first kick comes; then one each CPU second.
const WATCHDOG_CPU_SECONDS: libc::rlim_t = 1;

/// Arms the native-mode watchdog: SIGXCPU kicks `KVM_RUN` once skiff has
/// used a CPU second, and each second after that. Only where no CPU limit
/// is set already (a user's limit keeps its meaning: SIGXCPU then ends
/// skiff as the user asked); without the watchdog the guest still runs.
pub fn arm_watchdog() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_CPU, &mut lim) } != 0
        || lim.rlim_cur != libc::RLIM_INFINITY
        || lim.rlim_max != libc::RLIM_INFINITY
    {
        return;
    }
    signals::kick_on(libc::SIGXCPU);
    lim.rlim_cur = WATCHDOG_CPU_SECONDS;
    // SAFETY: setrlimit only reads `lim`; lowering the soft limit below an
    // infinite hard one needs no privilege.
    unsafe { libc::setrlimit(libc::RLIMIT_CPU, &lim) };
}

/// kvm_pvm, and only it, knows its registration MSR.
pub fn is_kvm_pvm(vcpu: &VcpuFd) -> bool {
    let Ok(mut msrs) = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_PVM_REGISTER,
        ..Default::default()
    }]) else {
        return false;
    };
    vcpu.get_msrs(&mut msrs) == Ok(1)
}

fn write(vcpu: &VcpuFd, data: u64) -> bool {
    let entry = kvm_msr_entry {
        index: MSR_PVM_REGISTER,
        data,
        ..Default::default()
    };
    match Msrs::from_entries(&[entry]) {
        // KVM_SET_MSRS returns how many entries it set: 0 where the MSR is
        // unknown (any KVM but kvm_pvm).
        Ok(msrs) => matches!(vcpu.set_msrs(&msrs), Ok(1)),
        Err(_) => false,
    }
}
