//! `skiff inspect`'s library half: what a snapshot records, and whether
//! this host can restore it (the checks a restore makes that need no
//! image: KVM, CPU features, TSC frequency, the clock). src/cli prints.

use super::clock::{self, ClockError};
use super::format::{Header, Meta};
use super::restore::{read_meta, RestoreError};
use crate::vcpu::{GuestCpuid, Vcpu, VcpuError};
use kvm_ioctls::Kvm;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum InspectError {
    #[error("{0}")]
    Read(#[from] RestoreError),
    #[error("cannot open /dev/kvm: {0}")]
    Kvm(kvm_ioctls::Error),
}

/// Reads and checks a snapshot file (as a restore does).
pub fn read(path: &Path) -> Result<(Header, Meta), InspectError> {
    let p = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|err| RestoreError::Open {
        path: p.clone(),
        err,
    })?;
    Ok(read_meta(&mut f, &p)?)
}

/// This host against a snapshot.
#[derive(Debug)]
pub struct HostCheck {
    /// Whether this KVM is kvm_pvm (unknown when the vCPU was refused).
    pub kvm_pvm: Option<bool>,
    /// `Err`: why this host cannot restore it.
    pub verdict: Result<(), String>,
    /// How far the restored guest's TSC frequency is from its own, in ppm
    /// (after KVM_SET_TSC_KHZ where KVM can), when checked.
    pub tsc_ppm: Option<i64>,
    /// kvm_pvm, same boot: the guest's clock error if restored now (ns).
    pub clock_error_ns: Option<i64>,
}

/// Makes a VM and vCPU (no memory) and runs a restore's host checks.
pub fn check_host(h: &Header, m: &Meta) -> Result<HostCheck, InspectError> {
    let kvm = Kvm::new().map_err(InspectError::Kvm)?;
    let vm = kvm.create_vm().map_err(InspectError::Kvm)?;
    let cpuid = super::vcpu::cpuid_from_meta(m);
    let mut out = HostCheck {
        kvm_pvm: None,
        verdict: Ok(()),
        tsc_ppm: None,
        clock_error_ns: None,
    };
    let vcpu = match Vcpu::new(&kvm, &vm, GuestCpuid::Saved(&cpuid)) {
        Ok(v) => v,
        Err(e @ VcpuError::Features(_)) => {
            out.verdict = Err(e.to_string());
            return Ok(out);
        }
        Err(e) => return Err(InspectError::Read(RestoreError::Vcpu(e))),
    };
    let fd = vcpu.fd();
    let pvm = crate::vcpu::is_kvm_pvm(fd);
    out.kvm_pvm = Some(pvm);
    let verdict = clock::match_tsc_hz(&kvm, fd, h.tsc_hz).and_then(|ppm| {
        out.tsc_ppm = Some(ppm);
        let saved = super::restore::saved_clock(h, m);
        if pvm {
            saved.same_boot(clock::host_tsc_raw)?;
            // SAFETY: RDTSC only reads the time-stamp counter.
            let tsc = unsafe { core::arch::x86_64::_rdtsc() };
            out.clock_error_ns = Some(saved.error_ns(tsc, crate::devices::clock::now_ns()));
        }
        Ok::<(), ClockError>(())
    });
    out.verdict = verdict.map_err(|e| e.to_string());
    Ok(out)
}
