//! `skiff snapshot`: boot the function, stop it inside its first REQ_READ
//! (ready for its request), write the snapshot.

use super::format::{self, DeviceRecord, Header, Meta, Run, PAGE};
use crate::config::RunConfig;
use crate::devices::Stop;
use crate::hypercall::{Control, Request};
use crate::memory::{Gpa, GuestMemory};
use crate::vcpu::state::{StateError, VcpuState};
use crate::vmm::{Ended, Hooked, RunError, RunHook, Vm};
use guest_abi::hvt::{BootInfo, HcWalltime, Hypercall, BOOT_INFO_BASE};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SaveError {
    #[error("{0}")]
    Build(#[from] crate::builder::BuildError),
    #[error("{0}")]
    Run(#[from] RunError),
    #[error("the guest halted (status {0}) before asking for its request: nothing to snapshot")]
    Halted(i32),
    #[error("the guest has accelerator sessions open; they live in skiff, not in guest memory, and cannot be saved or moved")]
    AccelInUse,
    #[error("cannot read the vCPU state: {0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Vcpu(#[from] crate::vcpu::VcpuError),
    #[error("cannot read guest memory: {0}")]
    Memory(#[from] crate::memory::OutOfRange),
    #[error("cannot write {path}: {err}")]
    Write { path: String, err: std::io::Error },
}

/// What was written.
#[derive(Debug)]
pub struct Saved {
    pub pages: u64,
    pub runs: usize,
    pub file_bytes: u64,
}

/// Boots `cfg`'s guest to its first REQ_READ and writes the snapshot to
/// `out`. `backdate_ns`: a testing aid (`--backdate`) that makes the
/// snapshot look that much older: the guest's WALLTIME during boot and
/// the saved timestamp are both moved back by it (not the TSC, which the
/// restore must then move forward by as much more).
pub fn snapshot(cfg: &RunConfig, out: &Path, backdate_ns: u64) -> Result<Saved, SaveError> {
    let image = crate::builder::read_image(&cfg.kernel, cfg.mem.bytes())?;
    let mut vm = crate::builder::build_image(cfg, &image)?;
    let arg = match vm.run_with(&mut UntilRequest { backdate_ns })? {
        Ended::Paused(arg) => arg,
        Ended::Halted(status) => return Err(SaveError::Halted(status)),
    };
    if vm.devices.accel.as_ref().is_some_and(|a| a.in_use()) {
        return Err(SaveError::AccelInUse);
    }
    // The guest is just past its REQ_READ, whose result the restoring
    // skiff provides.
    vm.complete_io()?;
    let image = Source {
        sha256: Sha256::digest(&image).into(),
        cmdline: &cfg.cmdline,
    };
    let (mut header, mut meta) = describe(&vm, &image, backdate_ns)?;
    capture(&vm, &mut header, &mut meta, backdate_ns)?;
    meta.pending_req_read = arg.0;
    let (runs, pages) = nonzero_runs(&vm.mem)?;
    header.data_pages = pages;
    meta.runs = runs;
    write_file(out, &header, &meta, &vm.mem)
}

/// What a running guest was made from: its image's hash and command line
/// (a controlled run keeps them for snapshots and migrations).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub sha256: [u8; 32],
    pub cmdline: &'a [u8],
}

/// A stopped guest's header and metadata without its vCPU state, clock
/// or pages (those are [`capture`]'s and the caller's): what a snapshot
/// and a migration's handshake record about the guest and this host.
pub fn describe(vm: &Vm, src: &Source, backdate_ns: u64) -> Result<(Header, Meta), SaveError> {
    // A backdated snapshot's TSC did not count the time it claims: it
    // stands for one whose boot is unknown (its raw clock moved back too).
    let boot_id = match backdate_ns {
        0 => crate::vcpu::boot_id().map(Vec::from).unwrap_or_default(),
        _ => Vec::new(),
    };
    let bi: BootInfo = vm.mem.read_obj(Gpa(BOOT_INFO_BASE))?;
    let header = Header {
        version: format::VERSION,
        host_features: bi.host_features,
        mem_size: vm.mem.size(),
        image_sha256: src.sha256,
        tsc_hz: bi.cpu_cycle_freq,
        ..Header::default()
    };
    let mut meta = Meta {
        cmdline: src.cmdline.to_vec(),
        boot_id,
        pending_req_read: format::NO_PENDING_REQ_READ,
        read_only: vm.mem.read_only().to_vec(),
        devices: device_record(&vm.mem, &bi)?,
        ..Meta::default()
    };
    meta.cpuid = super::vcpu::cpuid_to_meta(&vm.vcpu.cpuid()?);
    if crate::vcpu::is_kvm_pvm(vm.vcpu.fd()) {
        meta.kvm = format::KVM_PVM;
    }
    Ok((header, meta))
}

/// Adds the vCPU state and the guest's clock now to `h`/`m`. The vCPU
/// must be stopped between exits with no I/O pending (`Vm::complete_io`).
pub fn capture(vm: &Vm, h: &mut Header, m: &mut Meta, backdate_ns: u64) -> Result<(), SaveError> {
    let state = VcpuState::capture(&vm.kvm, &vm.vcpu)?;
    super::vcpu::to_meta(&state, m);
    stamp_clock(vm, h, m, backdate_ns)
}

/// Records the guest's TSC now, with the host's wall and raw clocks.
pub fn stamp_clock(
    vm: &Vm,
    h: &mut Header,
    m: &mut Meta,
    backdate_ns: u64,
) -> Result<(), SaveError> {
    let (guest_tsc, now, raw) = super::clock::read_tsc(vm.vcpu.fd())?;
    h.guest_tsc = guest_tsc;
    h.saved_at_ns = now - backdate_ns;
    m.saved_raw_ns = raw.saturating_sub(backdate_ns);
    Ok(())
}

/// `skiff run --control`'s `snapshot FILE`: the guest as it is now,
/// stopped between two exits anywhere in its life (no REQ_READ pending:
/// the restored guest simply runs on).
pub fn snapshot_now(vm: &mut Vm, src: &Source, out: &Path) -> Result<Saved, SaveError> {
    if vm.devices.accel.as_ref().is_some_and(|a| a.in_use()) {
        return Err(SaveError::AccelInUse);
    }
    vm.complete_io()?;
    let (mut header, mut meta) = describe(vm, src, 0)?;
    capture(vm, &mut header, &mut meta, 0)?;
    vm.devices.block.flush().map_err(|err| SaveError::Write {
        path: "(a block device)".into(),
        err,
    })?;
    let (runs, pages) = nonzero_runs(&vm.mem)?;
    header.data_pages = pages;
    meta.runs = runs;
    write_file(out, &header, &meta, &vm.mem)
}

/// The run of `skiff snapshot`: pauses at the guest's first REQ_READ
/// (returning its argument) and, with `--backdate`, answers WALLTIME with
/// a time that much earlier.
struct UntilRequest {
    backdate_ns: u64,
}

impl RunHook for UntilRequest {
    type Pause = Gpa;
    fn on_request(&mut self, req: &Request, mem: &GuestMemory) -> Hooked<Gpa> {
        match *req {
            Request::Extension {
                nr: Hypercall::ReqRead,
                arg,
            } => Hooked::Pause(arg),
            Request::Walltime { arg } if self.backdate_ns > 0 => {
                let nsecs = crate::devices::clock::now_ns().saturating_sub(self.backdate_ns);
                Hooked::Handled(
                    crate::devices::write_back(mem, "WALLTIME", arg, HcWalltime { nsecs })
                        .map(|()| Control::Continue)
                        .map_err(Stop::from),
                )
            }
            _ => Hooked::Handle,
        }
    }
}

/// The devices as the guest saw them at boot: its manifest copy's
/// attached entries (block: capacity and block size; net: MAC and MTU).
fn device_record(mem: &GuestMemory, bi: &BootInfo) -> Result<Vec<DeviceRecord>, SaveError> {
    use guest_abi::manifest::{MftEntry, MftHeader};
    let hdr: MftHeader = mem.read_obj(Gpa(bi.mft))?;
    let mut out = Vec::new();
    for i in 0..u64::from(hdr.entries) {
        let at = bi.mft + size_of::<MftHeader>() as u64 + i * size_of::<MftEntry>() as u64;
        let e: MftEntry = mem.read_obj(Gpa(at))?;
        if e.attached == 0 {
            continue;
        }
        out.push(DeviceRecord {
            kind: e.kind,
            name: String::from_utf8_lossy(e.name_bytes().unwrap_or_default()).into_owned(),
            a: e.u[0],
            b: e.u[1],
        });
    }
    Ok(out)
}

/// The guest pages that hold anything but zeros, as runs. Only pages the
/// host has backed (mincore) are looked at: an untouched page is zero.
pub(crate) fn nonzero_runs(mem: &GuestMemory) -> Result<(Vec<Run>, u64), SaveError> {
    let n = (mem.size() / PAGE) as usize;
    let mut resident = vec![0u8; n];
    // SAFETY: the range is our own mapping; `resident` has one byte per page.
    let r = unsafe {
        libc::mincore(
            mem.host_base().cast(),
            mem.size() as usize,
            resident.as_mut_ptr(),
        )
    };
    let all = r != 0; // cannot tell: look at every page
    let mut runs: Vec<Run> = Vec::new();
    let mut pages = 0;
    let mut buf = [0u8; PAGE as usize];
    for (i, res) in resident.iter().enumerate() {
        if !all && res & 1 == 0 {
            continue;
        }
        let gpa = i as u64 * PAGE;
        mem.read_bytes(&mut buf, Gpa(gpa))?;
        if buf.iter().all(|&b| b == 0) {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r.gpa + r.pages * PAGE == gpa => r.pages += 1,
            _ => runs.push(Run {
                gpa,
                pages: 1,
                file_page: pages,
            }),
        }
        pages += 1;
    }
    Ok((runs, pages))
}

/// Writes to a temporary name, then renames: a reader never sees a
/// half-written snapshot.
fn write_file(out: &Path, h: &Header, m: &Meta, mem: &GuestMemory) -> Result<Saved, SaveError> {
    let err = |err| SaveError::Write {
        path: out.display().to_string(),
        err,
    };
    let mut head = format::encode(h, m);
    let data_offset = format::decode_header(&head)
        .map_err(|e| err(std::io::Error::other(e.to_string())))?
        .data_offset;
    head.resize(data_offset as usize, 0);
    let mut tmp = out.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(err)?);
    f.write_all(&head).map_err(err)?;
    let mut buf = vec![0u8; PAGE as usize];
    for r in &m.runs {
        for p in 0..r.pages {
            mem.read_bytes(&mut buf, Gpa(r.gpa + p * PAGE))?;
            f.write_all(&buf).map_err(err)?;
        }
    }
    f.into_inner()
        .map_err(|e| err(e.into_error()))?
        .sync_all()
        .map_err(err)?;
    std::fs::rename(&tmp, out).map_err(err)?;
    Ok(Saved {
        pages: h.data_pages,
        runs: m.runs.len(),
        file_bytes: data_offset + h.data_pages * PAGE,
    })
}
