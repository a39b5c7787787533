//! The destination: `skiff run --incoming ADDR`. Everything from the
//! source is untrusted input: the handshake is checked with the code a
//! snapshot restore uses (image, memory size, devices, CPU features, TSC,
//! kvm_pvm's boot) and refused in one line before any page arrives; every
//! page record is bounds-checked against the handshake's memory size
//! (stream.rs). The VM (memory, vCPU with the source's CPUID, devices) is
//! built at the handshake, so the stop only sets state.

use super::stream::{self, Kind, StreamError};
use super::MigrateError;
use crate::accel::handover::HandOverError;
use crate::builder;
use crate::config::RunConfig;
use crate::memory::{Gpa, GuestMemory};
use crate::snapshot::format::{self, Header, Meta};
use crate::snapshot::restore::{self, Prepared, RestoreError};
use crate::vaccel::addr::{Address, Listener, Stream};
use crate::vcpu::GuestCpuid;
use crate::vmm::Vm;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::time::Duration;

/// A source silent for this long is gone.
const IO: Duration = Duration::from_secs(30);
/// skiff's largest guest (--mem's limit).
const MAX_MEM: u64 = 4 << 30;

/// A received guest, ready to run.
#[derive(Debug)]
pub struct Received {
    pub vm: Vm,
    /// The image it runs (the source sent it), for migrating it on.
    pub image: Vec<u8>,
}

/// Waits on `addr` for one source and receives its guest. `cfg.kernel`,
/// when `kernel_given`, must be the source's image.
pub fn receive(
    addr: &Address,
    cfg: &RunConfig,
    kernel_given: bool,
) -> Result<Received, MigrateError> {
    let listen = |err| MigrateError::Listen {
        addr: addr.to_string(),
        err,
    };
    let listener = addr.listen().map_err(listen)?;
    let accepted = accept(&listener);
    if let Address::Unix(p) = addr {
        let _ = std::fs::remove_file(p);
    }
    drop(listener);
    let mut s = accepted.map_err(listen)?;
    s.set_timeouts(Some(IO)).map_err(StreamError::from)?;
    let (h, meta, image) = read_hello(&mut s)?;
    let vm = match build(cfg, kernel_given, &h, &meta, &image) {
        Ok(vm) => vm,
        Err(e) => {
            let line = e.to_string();
            let _ = stream::write_record(&mut s, Kind::Refused, &[line.as_bytes()]);
            return Err(MigrateError::Refusing(line));
        }
    };
    stream::write_record(&mut s, Kind::Ok, &[])?;
    match take_guest(&mut s, vm, &h, &meta) {
        Ok(vm) => {
            stream::write_record(&mut s, Kind::Ok, &[])?;
            Ok(Received { vm, image })
        }
        Err(e) => {
            let line = e.to_string();
            let _ = stream::write_record(&mut s, Kind::Refused, &[line.as_bytes()]);
            Err(e)
        }
    }
}

/// One connection, or the stop signal skiff got while waiting.
fn accept(l: &Listener) -> std::io::Result<Stream> {
    loop {
        if let Some(sig) = crate::signals::pending() {
            return Err(std::io::Error::other(format!(
                "stopped by signal {sig} while waiting"
            )));
        }
        let mut pfd = libc::pollfd {
            fd: l.raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for our own listening socket.
        let n = unsafe { libc::poll(&mut pfd, 1, 200) };
        if n > 0 {
            return l.accept();
        }
    }
}

/// The preamble, the handshake and the image.
pub fn read_hello(s: &mut impl Read) -> Result<(Header, Meta, Vec<u8>), MigrateError> {
    let mut buf = Vec::new();
    stream::read_preamble(s)?;
    expect(s, &mut buf, Kind::Hello)?;
    let (h, meta) = format::decode(&buf, u64::MAX)?;
    expect(s, &mut buf, Kind::Image)?;
    Ok((h, meta, buf))
}

fn expect(s: &mut impl Read, buf: &mut Vec<u8>, want: Kind) -> Result<(), StreamError> {
    match stream::read_record(s, buf)? {
        k if k == want => Ok(()),
        _ => Err(StreamError::Invalid("record out of order")),
    }
}

/// The handshake's checks, and the VM built for it (no pages yet).
fn build(
    cfg: &RunConfig,
    kernel_given: bool,
    h: &Header,
    meta: &Meta,
    image: &[u8],
) -> Result<Vm, MigrateError> {
    if h.mem_size == 0 || h.mem_size > MAX_MEM {
        return Err(MigrateError::Refusing(format!(
            "the source's guest memory size ({} bytes) is not one skiff runs",
            h.mem_size
        )));
    }
    if <[u8; 32]>::from(Sha256::digest(image)) != h.image_sha256 {
        return Err(StreamError::Invalid("the image does not match its hash").into());
    }
    if kernel_given {
        let mine = builder::read_image(&cfg.kernel, h.mem_size).map_err(RestoreError::from)?;
        if <[u8; 32]>::from(Sha256::digest(&mine)) != h.image_sha256 {
            return Err(RestoreError::OtherImage(cfg.kernel.display().to_string()).into());
        }
    }
    if !cfg.cmdline.is_empty() && cfg.cmdline != meta.cmdline {
        return Err(
            RestoreError::Cmdline(String::from_utf8_lossy(&meta.cmdline).into_owned()).into(),
        );
    }
    let img = builder::parse_image(&cfg.kernel, image, h.mem_size).map_err(RestoreError::from)?;
    // The source holds its TAPs until the stop: check ours now, open
    // them then.
    let mut cfg = cfg.clone();
    cfg.devices.net.iter_mut().for_each(|n| n.open_later = true);
    let devices = restore::devices_for(&img, &cfg, h, meta)?;
    let mem = GuestMemory::new(h.mem_size).map_err(RestoreError::from)?;
    let cpuid = crate::snapshot::vcpu::cpuid_from_meta(meta);
    let vm =
        builder::machine(mem, devices, GuestCpuid::Saved(&cpuid)).map_err(RestoreError::from)?;
    restore::host_check(&vm, h, meta)?;
    Ok(vm)
}

/// What follows the pages: the vCPU state and the accelerator sessions.
#[derive(Debug)]
pub struct Stopped {
    pub header: Header,
    pub meta: Meta,
    /// accel::handover's bytes, when the guest had sessions open.
    pub accel: Option<Vec<u8>>,
}

/// Page records (each handed to `page` once checked against the
/// handshake's memory size; a sync answered) until the final state, the
/// sessions if any, then the end. The final header and metadata are
/// checked against the handshake's.
pub fn read_guest<S: Read + std::io::Write>(
    s: &mut S,
    h: &Header,
    meta: &Meta,
    page: &mut dyn FnMut(u64, &[u8]),
) -> Result<Stopped, MigrateError> {
    let mut buf = Vec::new();
    let mut state = None;
    let mut accel = None;
    loop {
        match stream::read_record(s, &mut buf)? {
            Kind::Pages if state.is_none() => {
                let (gpa, data) = stream::pages(&buf, h.mem_size)?;
                page(gpa, data);
            }
            Kind::State if state.is_none() => {
                let (h2, m2) = format::decode(&buf, u64::MAX)?;
                if h2.mem_size != h.mem_size
                    || h2.image_sha256 != h.image_sha256
                    || h2.tsc_hz != h.tsc_hz
                    || m2.devices != meta.devices
                    || m2.cpuid != meta.cpuid
                {
                    return Err(StreamError::Invalid("the final state is of another guest").into());
                }
                state = Some((h2, m2));
            }
            Kind::Sync if state.is_none() => stream::write_record(s, Kind::Ok, &[])?,
            Kind::Accel if state.is_some() && accel.is_none() => accel = Some(buf.clone()),
            Kind::End => break,
            _ => return Err(StreamError::Invalid("record out of order").into()),
        }
    }
    let (header, meta) = state.ok_or(StreamError::Invalid(
        "the stream ended without the vCPU state",
    ))?;
    Ok(Stopped {
        header,
        meta,
        accel,
    })
}

/// Pages until the state, then the guest set up to resume.
fn take_guest(s: &mut Stream, mut vm: Vm, h: &Header, meta: &Meta) -> Result<Vm, MigrateError> {
    let mem = &vm.mem;
    let stopped = read_guest(s, h, meta, &mut |gpa, data| {
        // In range: stream::pages checked it against the handshake's
        // mem_size, which is this memory's size.
        if let Ok(dst) = mem.slice(Gpa(gpa), data.len() as u64) {
            dst.copy_from(data);
        }
    })?;
    let (h2, m2) = (&stopped.header, &stopped.meta);
    for &(a, b) in &m2.read_only {
        vm.mem.protect(a, b).map_err(RestoreError::Map)?;
    }
    let saved = restore::apply_state(&mut vm, h2, m2)?;
    vm.devices.net.open_taps()?;
    // Last before the guest runs: once claimed here, the source cannot
    // take its sessions back. The runtime was built at the handshake
    // (the same --accel flags: devices_for checked they are there).
    if let Some(bytes) = &stopped.accel {
        match vm.devices.accel.as_mut() {
            Some(a) => a.claim_here(bytes),
            None => Err(HandOverError::Off),
        }
        .map_err(MigrateError::Claim)?;
    }
    let vm = Prepared::from_parts(vm, (saved, None))
        .resume(crate::devices::function::Function::from_env())?;
    Ok(vm)
}
