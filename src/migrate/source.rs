//! The source: handshake, pre-copy while the guest runs, stop-and-copy.
//!
//! The vCPU stays on the calling (main) thread. After the destination
//! accepts, KVM logs the guest's writes (KVM_MEM_LOG_DIRTY_PAGES on the
//! one slot) and guest memory records skiff's own; a pre-copy thread sends
//! every non-zero resident page (round 0), then what was dirtied during
//! the last round, until the dirty set is small, stops shrinking or
//! `MAX_ROUNDS` is reached. It then kicks the vCPU: the main thread stops
//! the guest between two exits, sends the rest with the vCPU state, and
//! waits for the destination's word that it holds the guest. Anything
//! that fails before that word (refusal, cancel, a broken stream, a
//! timeout) turns logging off and returns an error: the guest runs on
//! here as before. Open accelerator sessions are handed over at the stop
//! (parked at their agent) and taken back if the migration then fails.

use super::stream::{self, Kind, StreamError, PAGE, PAGES_PER_RECORD};
use super::{MigrateError, Report};
use crate::memory::{HostWrites, Reader};
use crate::snapshot::format;
use crate::snapshot::save::{self, Source};
use crate::vaccel::addr::{Address, Stream};
use crate::vmm::Vm;
use std::io::{BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const CONNECT: Duration = Duration::from_secs(5);
/// A destination that takes longer than this for any read or write is
/// gone (the guest must not stay stopped for long on a dead peer):
/// `skiff run --migrate-timeout`'s default.
pub const SILENCE: Duration = Duration::from_secs(10);
const MAX_ROUNDS: u32 = 30;
/// Stop when no more than this many pages (1 MiB) remain dirty.
const SMALL: u64 = 256;
/// Rounds in a row that did not shrink the dirty set before stopping.
const STALLS: u32 = 3;
/// KVM_GET_DIRTY_LOG = _IOW(KVMIO, 0x42, struct kvm_dirty_log).
const KVM_GET_DIRTY_LOG: libc::c_ulong = 0x4010_ae42;
/// KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, struct
/// kvm_userspace_memory_region).
const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_ae46;

/// What the running guest was made from (a controlled run keeps it).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub src: Source<'a>,
    pub image: &'a [u8],
}

/// The stream out, counting bytes.
struct Out {
    w: BufWriter<Stream>,
    bytes: u64,
}

impl Out {
    fn record(&mut self, kind: Kind, parts: &[&[u8]]) -> Result<(), StreamError> {
        self.bytes += 9 + parts.iter().map(|p| p.len() as u64).sum::<u64>();
        stream::write_record(&mut self.w, kind, parts)
    }

    /// Flushes, then waits for the destination's answer.
    fn answer(&mut self, reader: &mut Stream) -> Result<(), MigrateError> {
        self.w.flush().map_err(StreamError::from)?;
        Self::read_answer(reader)
    }

    /// The answer to the whole guest. A failed flush left the last
    /// record (End) unsent, so the destination cannot run the guest; but
    /// once it is sent, a missing answer says nothing about whether the
    /// destination runs it: the source must not run it too.
    fn confirm(&mut self, reader: &mut Stream) -> Result<(), MigrateError> {
        self.w.flush().map_err(StreamError::from)?;
        match Self::read_answer(reader) {
            Err(MigrateError::Stream(e)) => Err(MigrateError::InDoubt {
                why: e.to_string(),
                handed: None,
            }),
            other => other,
        }
    }

    fn read_answer(reader: &mut Stream) -> Result<(), MigrateError> {
        let mut buf = Vec::new();
        match stream::read_record(reader, &mut buf)? {
            Kind::Ok => Ok(()),
            Kind::Refused => Err(MigrateError::Refused(
                String::from_utf8_lossy(&buf).into_owned(),
            )),
            _ => Err(StreamError::Invalid("unexpected record from the destination").into()),
        }
    }
}

/// How the source is driven: the control socket's cancel flag, how to
/// kick the vCPU thread (the caller) out of `KVM_RUN`, and whether the
/// guest runs during the pre-copy (a paused guest stays paused).
pub struct Driver<'a> {
    pub cancel: &'a AtomicBool,
    pub kick: &'a (dyn Fn() + Sync),
    /// Told the stream's socket once connected and `None` before it is
    /// closed (a cancel shuts it down, ending a write or read blocked on
    /// a stalled peer).
    pub stream: &'a (dyn Fn(Option<RawFd>) + Sync),
    pub running: bool,
    /// How long the destination may stay silent ([`SILENCE`]).
    pub silence: Duration,
}

/// Migrates the guest to `addr`.
pub fn migrate(
    vm: &mut Vm,
    addr: &Address,
    origin: &Origin,
    d: &Driver,
) -> Result<Report, MigrateError> {
    let t0 = Instant::now();
    if let Some(a) = vm.devices.accel.as_ref() {
        a.movable()?;
    }
    if let Some(name) = vm.devices.net.unmovable() {
        return Err(MigrateError::Unmovable(name.to_string()));
    }
    let mut handed = None;
    let mut result = send(vm, addr, origin, d, &mut handed);
    if result.is_err() && d.cancel.load(Ordering::SeqCst) {
        // Whatever the shut-down socket made fail, it was the cancel.
        result = Err(MigrateError::Cancelled);
    }
    if let Err(MigrateError::Stream(StreamError::Timeout)) = result {
        result = Err(MigrateError::Silent(d.silence.as_secs()));
    }
    let _ = set_logging(vm, false);
    vm.mem.track_host_writes(false);
    if let Err(MigrateError::InDoubt { handed: h, .. }) = &mut result {
        // In doubt the sessions stay parked: the destination may hold
        // them. A `resume` here takes them back.
        *h = handed.take();
    }
    if result.is_err() && !matches!(result, Err(MigrateError::InDoubt { .. })) {
        // The stream is closed (the destination gives up); the guest
        // gets its TAPs back if the stop had handed them over (in doubt,
        // the destination may hold them: they come back with `resume`).
        if let Err(e) = vm.devices.net.open_taps() {
            tracing::warn!("migrate: cannot take the TAPs back: {e}");
        }
        // Its accelerator sessions too, if they were parked at the agent.
        if let (Some(a), Some(bytes)) = (vm.devices.accel.as_mut(), handed) {
            if let Err(e) = a.take_back(&bytes) {
                tracing::warn!("migrate: cannot take the accelerator sessions back: {e}");
            }
        }
    }
    let (rounds, downtime, bytes) = result?;
    Ok(Report {
        downtime_ms: downtime.as_secs_f64() * 1e3,
        total_ms: t0.elapsed().as_secs_f64() * 1e3,
        rounds,
        bytes,
    })
}

/// Forgets the registered stream when dropped: before the stream closes.
struct Unregister<'a>(&'a (dyn Fn(Option<RawFd>) + Sync));

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        (self.0)(None);
    }
}

/// What the pre-copy thread leaves for the stop. Field order is drop
/// order: the stream is forgotten before it closes.
struct Precopied<'a> {
    _unregister: Unregister<'a>,
    out: Out,
    reader: Stream,
    /// Rounds sent and the pages dirtied since the last one; `None`
    /// without a dirty log (everything goes at the stop).
    left: Option<(u32, Vec<u64>)>,
}

fn send(
    vm: &mut Vm,
    addr: &Address,
    origin: &Origin,
    d: &Driver,
    handed: &mut Option<Vec<u8>>,
) -> Result<(u32, Duration, u64), MigrateError> {
    let cancel = d.cancel;
    // What a snapshot records, for the handshake (microseconds: the rest
    // happens while the guest runs).
    let (mut h, mut m) = save::describe(vm, &origin.src, 0)?;
    save::stamp_clock(vm, &mut h, &mut m, 0)?;
    let hello = format::encode(&h, &m);
    let mem = {
        // SAFETY: every thread holding the reader is joined in this
        // function, while `vm` (and its memory) is borrowed by it.
        unsafe { vm.mem.reader() }
    };
    let log = DirtyLog::new(vm).map_err(MigrateError::DirtyLog)?;
    let host = vm.mem.track_host_writes(true);

    let p = precopy_while_running(vm, d, |halted| {
        let stop = || cancel.load(Ordering::SeqCst) || halted.load(Ordering::SeqCst);
        let mut p = handshake(addr, &hello, origin.image, d.stream, d.silence)?;
        if stop() {
            return Err(MigrateError::Cancelled);
        }
        p.left = match log.start() {
            Ok(()) => Some(precopy(&mut p.out, mem, &log, &host, &stop)?),
            Err(e) => {
                tracing::debug!("migrate: no dirty log ({e}): all memory goes at the stop");
                None
            }
        };
        // The destination catches up with what the socket buffers hold
        // (megabytes) before the guest stops, not during the downtime.
        p.out.record(Kind::Sync, &[])?;
        p.out.answer(&mut p.reader)?;
        Ok(p)
    })?;
    let mut p = p;
    let (out, reader) = (&mut p.out, &mut p.reader);

    // Stop and copy: the guest stays stopped from here.
    let stop = Instant::now();
    if cancel.load(Ordering::SeqCst) {
        return Err(MigrateError::Cancelled);
    }
    vm.complete_io()?;
    let rounds = match p.left.take() {
        Some((rounds, mut left)) => {
            or_into(&mut left, &log.take().map_err(MigrateError::DirtyLog)?);
            or_into(&mut left, &host.take());
            send_pages(out, mem, &left, cancel)?;
            rounds
        }
        None => {
            send_resident(out, mem, cancel)?;
            0
        }
    };
    vm.devices.block.flush().map_err(MigrateError::Flush)?;
    // The destination attaches the same TAPs once it has the state.
    vm.devices.net.close_taps();
    save::capture(vm, &mut h, &mut m, 0)?;
    out.record(Kind::State, &[&format::encode(&h, &m)])?;
    // Open sessions are parked at their agent for the destination to
    // claim (a local plugin's, or a vAccel agent's, refuse: the guest
    // runs on here).
    if let Some(a) = vm.devices.accel.as_mut().filter(|a| a.in_use()) {
        let bytes = handed.insert(a.hand_over()?);
        out.record(Kind::Accel, &[bytes])?;
    }
    out.record(Kind::End, &[])?;
    out.confirm(reader)?;
    Ok((rounds, stop.elapsed(), out.bytes))
}

/// Connects and has the destination check the handshake (on the
/// pre-copy thread, while the guest runs).
fn handshake<'a>(
    addr: &Address,
    hello: &[u8],
    image: &[u8],
    register: &'a (dyn Fn(Option<RawFd>) + Sync),
    silence: Duration,
) -> Result<Precopied<'a>, MigrateError> {
    let connect = |err| MigrateError::Connect {
        addr: addr.to_string(),
        err,
    };
    let s = addr.connect_within(Some(CONNECT)).map_err(connect)?;
    register(Some(s.raw_fd()));
    // Declared after the stream: dropped (forgotten) before it closes.
    let unregister = Unregister(register);
    s.set_timeouts(Some(silence)).map_err(connect)?;
    let reader = s.try_clone().map_err(connect)?;
    let mut p = Precopied {
        _unregister: unregister,
        out: Out {
            w: BufWriter::with_capacity(1 << 20, s),
            bytes: 0,
        },
        reader,
        left: None,
    };
    stream::write_preamble(&mut p.out.w)?;
    p.out.record(Kind::Hello, &[hello])?;
    p.out.record(Kind::Image, &[image])?;
    p.out.answer(&mut p.reader)?;
    Ok(p)
}

/// Runs the guest on this thread (unless it is paused) while `work` runs
/// on another (it is told when the guest halted); once `work` is done it
/// kicks the vCPU out for the stop.
fn precopy_while_running<T: Send>(
    vm: &mut Vm,
    d: &Driver,
    work: impl FnOnce(&AtomicBool) -> Result<T, MigrateError> + Send,
) -> Result<T, MigrateError> {
    let kick = d.kick;
    let done = AtomicBool::new(false);
    let halted = AtomicBool::new(false);
    let (ran, worked) = std::thread::scope(|sc| {
        let t = sc.spawn(|| {
            let r = work(&halted);
            done.store(true, Ordering::SeqCst);
            kick();
            r
        });
        // The guest stopped (for the stop, or it halted or failed): the
        // work must not wait for it any more.
        let ran = match d.running {
            true => {
                let r = vm.run_until(|| done.load(Ordering::Relaxed));
                halted.store(true, Ordering::SeqCst);
                r
            }
            false => Ok(None),
        };
        (ran, t.join())
    });
    let worked = worked.unwrap_or(Err(MigrateError::Stream(StreamError::Invalid(
        "the pre-copy thread panicked",
    ))));
    match ran? {
        Some(status) => Err(MigrateError::Halted(status)),
        None => worked,
    }
}

/// Round 0 and the rounds after it (on the pre-copy thread).
fn precopy(
    out: &mut Out,
    mem: Reader,
    log: &DirtyLog,
    host: &HostWrites,
    stop: &dyn Fn() -> bool,
) -> Result<(u32, Vec<u64>), MigrateError> {
    let cancelled = AtomicBool::new(false);
    let check = || {
        if stop() {
            cancelled.store(true, Ordering::SeqCst);
        }
        &cancelled
    };
    send_resident(out, mem, check())?;
    let mut rounds = 1;
    let mut last = u64::MAX;
    let mut stalls = 0;
    // Every page skiff wrote during the migration goes again at the stop:
    // a hypercall marks its pages before it writes them, so a round can
    // harvest a mark and send the page just before the write lands.
    let mut ever = vec![0u64; mem.size().div_ceil(PAGE * 64) as usize];
    loop {
        let mut dirty = log.take().map_err(MigrateError::DirtyLog)?;
        let written = host.take();
        or_into(&mut ever, &written);
        or_into(&mut dirty, &written);
        let n: u64 = dirty.iter().map(|w| u64::from(w.count_ones())).sum();
        if n >= last {
            stalls += 1;
        }
        if n <= SMALL || rounds >= MAX_ROUNDS || stalls >= STALLS {
            or_into(&mut dirty, &ever);
            return Ok((rounds, dirty));
        }
        last = n;
        send_pages(out, mem, &dirty, check())?;
        rounds += 1;
    }
}

fn or_into(a: &mut [u64], b: &[u64]) {
    a.iter_mut().zip(b).for_each(|(x, y)| *x |= y);
}

/// Every page the host backs that is not all zeros (untouched pages are
/// zero on the destination too).
fn send_resident(out: &mut Out, mem: Reader, cancel: &AtomicBool) -> Result<(), MigrateError> {
    let pages = mem.size() / PAGE;
    let resident = mem.resident();
    let mut page = vec![0u8; PAGE as usize];
    let mut run = Run::default();
    for p in 0..pages {
        if resident.as_ref().is_some_and(|r| r[p as usize] & 1 == 0) {
            continue;
        }
        mem.read(p * PAGE, &mut page);
        if page.iter().all(|&b| b == 0) {
            continue;
        }
        run.push(out, p, &page, cancel)?;
    }
    run.flush(out)
}

/// The pages set in `bitmap`, zero or not (a page may have been cleared).
fn send_pages(
    out: &mut Out,
    mem: Reader,
    bitmap: &[u64],
    cancel: &AtomicBool,
) -> Result<(), MigrateError> {
    let mut page = vec![0u8; PAGE as usize];
    let mut run = Run::default();
    let pages = mem.size() / PAGE;
    for (i, &w) in bitmap.iter().enumerate() {
        let mut w = w;
        while w != 0 {
            let p = i as u64 * 64 + u64::from(w.trailing_zeros());
            w &= w - 1;
            if p >= pages {
                break;
            }
            mem.read(p * PAGE, &mut page);
            run.push(out, p, &page, cancel)?;
        }
    }
    run.flush(out)
}

/// Consecutive pages gathered into one record.
#[derive(Default)]
struct Run {
    first: u64,
    data: Vec<u8>,
}

impl Run {
    fn push(
        &mut self,
        out: &mut Out,
        p: u64,
        page: &[u8],
        cancel: &AtomicBool,
    ) -> Result<(), MigrateError> {
        let n = (self.data.len() as u64) / PAGE;
        if n > 0 && (self.first + n != p || n as usize == PAGES_PER_RECORD) {
            self.flush(out)?;
            if cancel.load(Ordering::SeqCst) {
                return Err(MigrateError::Cancelled);
            }
        }
        if self.data.is_empty() {
            self.first = p;
        }
        self.data.extend_from_slice(page);
        Ok(())
    }

    fn flush(&mut self, out: &mut Out) -> Result<(), MigrateError> {
        if !self.data.is_empty() {
            let n = self.data.len() / PAGE as usize;
            let head = stream::pages_head(self.first * PAGE, n);
            out.record(Kind::Pages, &[&head, &self.data])?;
            self.data.clear();
        }
        Ok(())
    }
}

/// Turns KVM's dirty log of the one memory slot off (the main thread,
/// after a migration).
fn set_logging(vm: &Vm, on: bool) -> std::io::Result<()> {
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags: if on {
            kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: 0,
        memory_size: vm.mem.size(),
        userspace_addr: vm.mem.host_base() as u64,
    };
    // SAFETY: the same slot, address and size as the builder registered
    // (our own live mapping, which outlives the VM); only the flags change.
    unsafe { vm.vm.set_user_memory_region(region) }
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// KVM's dirty log of the one memory slot, through a duplicate of the VM
/// fd: the pre-copy thread turns it on and reads it while the vCPU runs.
struct DirtyLog {
    fd: OwnedFd,
    words: usize,
    region: kvm_bindings::kvm_userspace_memory_region,
}

impl DirtyLog {
    fn new(vm: &Vm) -> std::io::Result<Self> {
        // SAFETY: dup of our own open VM fd; the new fd is owned below.
        let fd = unsafe { libc::fcntl(vm.vm.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(DirtyLog {
            // SAFETY: a fresh fd nobody else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            words: vm.mem.size().div_ceil(PAGE * 64) as usize,
            region: kvm_bindings::kvm_userspace_memory_region {
                slot: 0,
                flags: kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
                guest_phys_addr: 0,
                memory_size: vm.mem.size(),
                userspace_addr: vm.mem.host_base() as u64,
            },
        })
    }

    /// Registers the slot again with KVM_MEM_LOG_DIRTY_PAGES (KVM allows
    /// it while the vCPU runs), and clears the log.
    fn start(&self) -> std::io::Result<()> {
        // SAFETY: the builder's slot, address and size again (our own
        // live mapping, which outlives the VM); only the flags change.
        let r = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                KVM_SET_USER_MEMORY_REGION,
                &self.region,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.take().map(|_| ())
    }

    /// The pages the guest wrote since the last call, cleared.
    fn take(&self) -> std::io::Result<Vec<u64>> {
        let mut bitmap = vec![0u64; self.words];
        let log = kvm_bindings::kvm_dirty_log {
            slot: 0,
            padding1: 0,
            __bindgen_anon_1: kvm_bindings::kvm_dirty_log__bindgen_ty_1 {
                dirty_bitmap: bitmap.as_mut_ptr().cast(),
            },
        };
        // SAFETY: a VM fd; the bitmap has a bit for every page of slot 0.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), KVM_GET_DIRTY_LOG, &log) };
        match r {
            0 => Ok(bitmap),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}
