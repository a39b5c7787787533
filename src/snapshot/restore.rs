//! `skiff run --restore FILE`: map the saved pages copy-on-write from the
//! file, put the vCPU back, and resume the guest inside its REQ_READ.
//!
//! Guest memory is one anonymous MAP_NORESERVE reservation with each run
//! of saved pages mapped over it MAP_FIXED|MAP_PRIVATE from the file: zero
//! pages stay anonymous, saved pages come from the page cache and are
//! shared by every concurrent restore until a guest writes one (then that
//! guest gets its own copy; the file never changes). Work is one mmap per
//! run, nothing per page and nothing per byte of guest memory.

use super::clock::{self, ClockError, Keeping};
use super::format::{self, FormatError, Header, Meta, HEADER_LEN, PAGE};
use super::rewind::Pages;
use crate::builder::{self, BuildError};
use crate::config::RunConfig;
use crate::hypercall::Request;
use crate::memory::{Gpa, GuestMemory, MemoryError};
use crate::vcpu::state::StateError;
use crate::vcpu::{GuestCpuid, VcpuError};
use crate::vmm::Vm;
use guest_abi::hvt::Hypercall;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum RestoreError {
    #[error("{path}: {err}")]
    Open { path: String, err: std::io::Error },
    #[error("{path}: {err}")]
    Format { path: String, err: FormatError },
    /// A step of the builder's recipe (image, devices, memory, KVM).
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("the snapshot was made from another image than {0}")]
    OtherImage(String),
    #[error("the snapshot has {snap} MiB of guest memory, this run asks for {given} MiB (--mem)")]
    MemSize { snap: u64, given: u64 },
    #[error("the guest arguments differ from the snapshot's ('{0}'); give none or the same")]
    Cmdline(String),
    #[error("the snapshot's guest was booted with accelerators: give the same --accel at restore")]
    AccelMissing,
    #[error(
        "the snapshot's guest was booted without accelerators: --accel cannot be added at restore"
    )]
    AccelAdded,
    #[error("device {0} differs from the one the snapshot's guest was booted with (type, size, block size, MAC or MTU)")]
    Device(String),
    #[error("{0}")]
    Memory(#[from] MemoryError),
    #[error("cannot map the snapshot's pages: {0}")]
    Map(std::io::Error),
    #[error("{0}")]
    Vcpu(#[from] VcpuError),
    #[error("cannot restore the vCPU: {0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Clock(#[from] ClockError),
}

/// The devices attached now must look to the guest exactly as the ones
/// it was booted with (it read their geometry or MAC at boot).
fn check_devices(
    recorded: &[format::DeviceRecord],
    now: &[guest_abi::manifest::MftEntry],
) -> Result<(), RestoreError> {
    let now: Vec<_> = now.iter().filter(|e| e.attached != 0).collect();
    for d in recorded {
        let name = d.name.as_bytes();
        match now.iter().find(|e| e.name_bytes() == Some(name)) {
            Some(e) if e.kind == d.kind && e.u == [d.a, d.b] => {}
            _ => return Err(RestoreError::Device(d.name.clone())),
        }
    }
    if now.len() != recorded.len() {
        return Err(RestoreError::Device("(another device)".into()));
    }
    Ok(())
}

/// Net devices bound without --net-mac get the MAC the guest was booted
/// with, not a new one.
fn with_recorded_macs(
    b: &crate::devices::attach::Bindings,
    recorded: &[format::DeviceRecord],
) -> crate::devices::attach::Bindings {
    let mut b = b.clone();
    for n in b.net.iter_mut().filter(|n| n.mac.is_none()) {
        if let Some(d) = recorded.iter().find(|d| d.name == n.name) {
            let m = d.a.to_le_bytes();
            n.mac = Some([m[0], m[1], m[2], m[3], m[4], m[5]]);
        }
    }
    b
}

/// Reads and checks the snapshot's header and metadata (one read when the
/// metadata fits in the first 16 KiB, as it does for one vCPU).
pub(crate) fn read_meta(f: &mut std::fs::File, path: &str) -> Result<(Header, Meta), RestoreError> {
    let ferr = |err| RestoreError::Format {
        path: path.into(),
        err,
    };
    let ioerr = |err| RestoreError::Open {
        path: path.into(),
        err,
    };
    // SAFETY: an all-zero stat is valid for fstat to overwrite.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on our own open fd writes only into `st` (fstat, not
    // statx: urunc's seccomp allowlist).
    if unsafe { libc::fstat(f.as_raw_fd(), &mut st) } != 0 {
        return Err(ioerr(std::io::Error::last_os_error()));
    }
    let file_len = st.st_size as u64;
    let mut buf = vec![0u8; 16 << 10];
    let n = read_full(f, &mut buf).map_err(ioerr)?;
    buf.truncate(n);
    let h = format::decode_header(&buf).map_err(ferr)?;
    let want = (HEADER_LEN as u64).saturating_add(h.meta_len);
    if want > n as u64 {
        if want > file_len {
            return Err(ferr(FormatError::Truncated));
        }
        buf.resize(want as usize, 0);
        let m = read_full(f, &mut buf[n..]).map_err(ioerr)?;
        buf.truncate(n + m);
    }
    format::decode(&buf, file_len).map_err(ferr)
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Builds a guest from the snapshot at `snap`, ready to [`Vm::run`]: the
/// first thing it does is answer the guest's pending REQ_READ from stdin.
/// Every check happens before KVM is opened.
pub fn restore(snap: &Path, cfg: &RunConfig) -> Result<Vm, RestoreError> {
    prepare(snap, cfg)?.resume(crate::devices::function::Function::from_env())
}

/// A restored guest with everything in place but its clock and its
/// request: what a pool worker holds ready before a request arrives.
#[derive(Debug)]
pub struct Prepared {
    vm: Vm,
    clock: clock::Saved,
    /// How this KVM keeps the guest's clock, once checked.
    keeping: Option<Keeping>,
    /// Where its pages came from (for a worker's [`Origin`]); `None` once
    /// rewound (the origin keeps them).
    pages: Option<Pages>,
}

impl Prepared {
    pub(super) fn parts(&self) -> (&Vm, Option<&Pages>) {
        (&self.vm, self.pages.as_ref())
    }

    /// The snapshot's clock and how this KVM keeps it.
    pub(super) fn clock(&self) -> (clock::Saved, Option<Keeping>) {
        (self.clock, self.keeping)
    }

    pub(crate) fn from_parts(vm: Vm, clock: (clock::Saved, Option<Keeping>)) -> Self {
        Prepared {
            vm,
            clock: clock.0,
            keeping: clock.1,
            pages: None,
        }
    }

    /// Fails now, not at every request, when this KVM cannot give the
    /// guest the right time (see snapshot/clock.rs).
    pub fn check_clock(&mut self) -> Result<(), RestoreError> {
        self.keeping = Some(clock::check(self.vm.vcpu.fd(), &self.clock)?);
        Ok(())
    }

    /// Sets the guest's clock for the time since the snapshot and hands
    /// it this request's metadata: the guest can run.
    pub fn resume(
        mut self,
        function: crate::devices::function::Function,
    ) -> Result<Vm, RestoreError> {
        match self.keeping {
            Some(k) => clock::resume(self.vm.vcpu.fd(), &self.clock, k)?,
            None => {
                self.check_clock()?;
                if let Some(Keeping::HostTsc) = self.keeping {
                    clock::resume(self.vm.vcpu.fd(), &self.clock, Keeping::HostTsc)?;
                }
            }
        }
        let mut vm = self.vm;
        vm.take_request(function);
        Ok(vm)
    }
}

/// Everything of [`restore`] that does not depend on the request or the
/// time: checks, then the builder's steps with the snapshot's memory and
/// vCPU state in place of a boot.
pub fn prepare(snap: &Path, cfg: &RunConfig) -> Result<Prepared, RestoreError> {
    let path = snap.display().to_string();
    let mut f = std::fs::File::open(snap).map_err(|err| RestoreError::Open {
        path: path.clone(),
        err,
    })?;
    let (h, meta) = read_meta(&mut f, &path)?;

    // 1. The image: the one the snapshot was booted from.
    let image = builder::read_image(&cfg.kernel, cfg.mem.bytes())?;
    if <[u8; 32]>::from(Sha256::digest(&image)) != h.image_sha256 {
        return Err(RestoreError::OtherImage(cfg.kernel.display().to_string()));
    }
    if h.mem_size != cfg.mem.bytes() {
        return Err(RestoreError::MemSize {
            snap: h.mem_size >> 20,
            given: cfg.mem.bytes() >> 20,
        });
    }
    if !cfg.cmdline.is_empty() && cfg.cmdline != meta.cmdline {
        return Err(RestoreError::Cmdline(
            String::from_utf8_lossy(&meta.cmdline).into_owned(),
        ));
    }
    let img = builder::parse_image(&cfg.kernel, &image, h.mem_size)?;

    // 2. Devices as the guest saw them at boot.
    let devices = devices_for(&img, cfg, &h, &meta)?;

    // 3. Memory: the saved pages, copy-on-write.
    let mut mem = GuestMemory::new(h.mem_size)?;
    map_runs(&mem, &f, h.data_offset, &meta.runs).map_err(RestoreError::Map)?;
    for &(a, b) in &meta.read_only {
        mem.protect(a, b).map_err(RestoreError::Map)?;
    }

    // 4. KVM.
    let cpuid = super::vcpu::cpuid_from_meta(&meta);
    let mut vm = builder::machine(mem, devices, GuestCpuid::Saved(&cpuid))?;

    // 5. The saved vCPU; it resumes inside its REQ_READ.
    let saved = apply_state(&mut vm, &h, &meta)?;
    Ok(Prepared {
        vm,
        clock: saved,
        keeping: None,
        pages: Some(Pages {
            file: f,
            data_offset: h.data_offset,
            runs: meta.runs,
            read_only: meta.read_only,
            pending_req_read: meta.pending_req_read,
        }),
    })
}

/// Attaches `cfg`'s devices as the guest saw them at boot (net devices
/// keep its MAC) and checks them against the record. It learnt at boot
/// whether accelerators are there; it has no session open (save.rs and
/// migrations refuse then), so a fresh runtime is its.
pub(crate) fn devices_for(
    img: &crate::image::Image<'_>,
    cfg: &RunConfig,
    h: &Header,
    meta: &Meta,
) -> Result<crate::devices::Devices, RestoreError> {
    let bindings = with_recorded_macs(&cfg.devices, &meta.devices);
    let (devices, entries) = builder::attach(img, &bindings, &cfg.accel)?;
    check_devices(&meta.devices, &entries)?;
    match (
        h.host_features & guest_abi::skiff::SKIFF_FEATURE_ACCEL != 0,
        devices.accel.is_some(),
    ) {
        (true, false) => Err(RestoreError::AccelMissing),
        (false, true) => Err(RestoreError::AccelAdded),
        _ => Ok(devices),
    }
}

/// What this KVM must do for the recorded guest before any of its state
/// is set: its TSC frequency (which converts its ticks), and on kvm_pvm
/// the host's boot.
pub(crate) fn host_check(vm: &Vm, h: &Header, meta: &Meta) -> Result<clock::Saved, RestoreError> {
    clock::match_tsc_hz(&vm.kvm, vm.vcpu.fd(), h.tsc_hz)?;
    let saved = saved_clock(h, meta);
    clock::check_boot(vm.vcpu.fd(), &saved)?;
    Ok(saved)
}

/// Puts the recorded vCPU back (after [`host_check`]); the guest will
/// first answer the hypercall it was stopped in, if any. The clock is the
/// caller's ([`Prepared::resume`]).
pub(crate) fn apply_state(
    vm: &mut Vm,
    h: &Header,
    meta: &Meta,
) -> Result<clock::Saved, RestoreError> {
    let saved = host_check(vm, h, meta)?;
    let native = super::vcpu::from_meta(meta)?.apply(&mut vm.vcpu)?;
    vm.vcpu.set_pvm_native(native);
    vm.vcpu.resume_through_stub(&vm.mem)?;
    vm.resume = pending_request(meta.pending_req_read);
    Ok(saved)
}

/// The hypercall a restored guest is inside, which the restoring skiff
/// answers first: its REQ_READ, unless it was stopped elsewhere.
pub(crate) fn pending_request(arg: u64) -> Option<Request> {
    (arg != format::NO_PENDING_REQ_READ).then_some(Request::Extension {
        nr: Hypercall::ReqRead,
        arg: Gpa(arg),
    })
}

/// The clock as the snapshot recorded it.
pub(crate) fn saved_clock(h: &Header, m: &Meta) -> clock::Saved {
    clock::Saved {
        tsc_hz: h.tsc_hz,
        guest_tsc: h.guest_tsc,
        wall_ns: h.saved_at_ns,
        raw_ns: m.saved_raw_ns,
        boot_id: m.boot_id.as_slice().try_into().ok(),
    }
}

/// One MAP_FIXED|MAP_PRIVATE file mapping per run, over the reservation.
pub(super) fn map_runs(
    mem: &GuestMemory,
    f: &std::fs::File,
    data_offset: u64,
    runs: &[format::Run],
) -> std::io::Result<()> {
    for r in runs {
        // In range: format::decode checked every run against mem_size and
        // the file's data pages.
        // SAFETY: the target lies inside our own reservation (replacing
        // part of it, which nothing references yet); the file is open.
        let p = unsafe {
            libc::mmap(
                mem.host_base().add(r.gpa as usize).cast(),
                (r.pages * PAGE) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                f.as_raw_fd(),
                (data_offset + r.file_page * PAGE) as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
