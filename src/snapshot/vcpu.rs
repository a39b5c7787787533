//! The vCPU's state (vcpu/state.rs) in and out of the snapshot's metadata.

use super::format::Meta;
use crate::vcpu::state::{from_raw, from_raw_opt, raw, StateError, VcpuState};
use kvm_bindings::kvm_cpuid_entry2;

/// Puts `s` into `m`'s vCPU fields.
pub fn to_meta(s: &VcpuState, m: &mut Meta) {
    m.regs = raw(&s.regs);
    m.sregs = raw(&s.sregs);
    m.xsave = raw(&s.xsave);
    m.xcrs = raw(&s.xcrs);
    m.debugregs = s.debugregs.as_ref().map(raw).unwrap_or_default();
    m.events = s.events.as_ref().map(raw).unwrap_or_default();
    m.mp_state = s.mp_state.as_ref().map(raw).unwrap_or_default();
    m.msrs = s.msrs.iter().map(|e| (e.index, e.data)).collect();
}

/// The CPUID as a snapshot records it.
pub fn cpuid_to_meta(c: &[kvm_cpuid_entry2]) -> Vec<[u32; 7]> {
    c.iter()
        .map(|e| [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx])
        .collect()
}

/// The CPUID a snapshot records, for KVM.
pub fn cpuid_from_meta(m: &Meta) -> Vec<kvm_cpuid_entry2> {
    m.cpuid
        .iter()
        .map(|e| kvm_cpuid_entry2 {
            function: e[0],
            index: e[1],
            flags: e[2],
            eax: e[3],
            ebx: e[4],
            ecx: e[5],
            edx: e[6],
            padding: [0; 3],
        })
        .collect()
}

/// The vCPU state `m` records (every struct checked for its size).
pub fn from_meta(m: &Meta) -> Result<VcpuState, StateError> {
    Ok(VcpuState {
        regs: from_raw(&m.regs, "regs")?,
        sregs: from_raw(&m.sregs, "sregs")?,
        xsave: from_raw(&m.xsave, "xsave")?,
        xcrs: from_raw(&m.xcrs, "xcrs")?,
        debugregs: from_raw_opt(&m.debugregs, "debug registers")?,
        events: from_raw_opt(&m.events, "vCPU events")?,
        mp_state: from_raw_opt(&m.mp_state, "MP state")?,
        msrs: m
            .msrs
            .iter()
            .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect(),
    })
}
