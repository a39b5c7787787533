//! The guest's clock across a snapshot. Solo5 guests read WALLTIME once at
//! boot and add TSC deltas, so a restored guest's wall time is the
//! snapshot's plus however far its TSC moved since.
//!
//! - A KVM that lets skiff set the guest's TSC (any standard KVM): the TSC
//!   is set so that the guest's wall time is the host's at resume, however
//!   old the snapshot and however the host's wall clock was stepped or
//!   slewed meanwhile (checked by reading it back: 1 ms).
//! - kvm_pvm gives guests the host's own TSC and ignores every way of
//!   moving it. Within one boot of the host that TSC counted real time
//!   since the snapshot, so the guest's clock is right but for the host's
//!   own wall-clock adjustments since (NTP steps and slews): that error is
//!   stated (trace, `skiff inspect`), not refused. A snapshot from another
//!   boot (its TSC restarted) is refused. The boot is told by the boot id;
//!   where /proc is missing (urunc), by the TSC against CLOCK_MONOTONIC_RAW,
//!   which neither NTP nor `date` moves and which restarts at boot too.

use crate::devices::clock::{clock_ns, now_ns};
use crate::vcpu::state::{set_msrs, StateError, MSR_IA32_TSC};
use kvm_bindings::{kvm_device_attr, kvm_msr_entry, Msrs, KVM_VCPU_TSC_CTRL, KVM_VCPU_TSC_OFFSET};
use kvm_ioctls::VcpuFd;
use thiserror::Error;

/// How far a TSC may run from CLOCK_MONOTONIC_RAW within one boot, when
/// there is no boot id to go by: 1 ms plus 50 ppm of the snapshot's age
/// (the kernel's TSC-to-ns factor is exact to well under a ppm; kvm-clock
/// and a refined TSC rate account for the rest).
const RAW_SLACK_NS: u64 = 1_000_000;
const RAW_SLACK_PPM: u64 = 50;

#[derive(Debug, Error)]
pub enum ClockError {
    #[error("the snapshot was made in another boot, of this host or another (boot id {snap}, now {here}), and kvm_pvm gives guests the host's TSC, which restarted at boot: the guest's clock would be wrong")]
    OtherBoot { snap: String, here: String },
    #[error("the host's TSC is {off_us} us away from where CLOCK_MONOTONIC_RAW puts the snapshot's (no boot id to go by): a snapshot from another boot, whose guest clock kvm_pvm cannot set right")]
    RawMismatch { off_us: i64 },
    #[error("this KVM kept the guest's TSC {off_us} us away from the snapshot's clock after skiff set it (by the TSC offset attribute or MSR): the guest's time would be wrong")]
    TscKept { off_us: i64 },
    #[error("the snapshot's guest was booted with a {snap_khz} kHz TSC, this host's is {here_khz} kHz ({ppm} ppm off; without KVM_SET_TSC_KHZ at most {TSC_HZ_TOLERANCE_PPM} ppm is accepted)")]
    TscHz {
        snap_khz: u64,
        here_khz: u64,
        ppm: i64,
    },
    #[error("KVM_GET_TSC_KHZ failed: {0}")]
    TscKhz(kvm_ioctls::Error),
    #[error("KVM_SET_DEVICE_ATTR (TSC offset) failed: {0}")]
    TscOffset(std::io::Error),
    #[error("{0}")]
    State(#[from] StateError),
}

/// How far this host's TSC frequency may be from the snapshot's where KVM
/// cannot scale it (KVM_SET_TSC_KHZ): the guest, converting ticks with
/// the snapshot's frequency, then gains or loses up to this much of the
/// time it runs (250 ppm: 0.9 s an hour, well inside what NTP corrects
/// in a guest that asks; the standard-KVM lane's TCG and this project's
/// kvm_pvm host differ by 9 ppm).
pub const TSC_HZ_TOLERANCE_PPM: i64 = 250;

/// Gives the guest the snapshot's TSC frequency `snap_hz`: as it is, by
/// KVM_SET_TSC_KHZ where KVM can scale the TSC (KVM_CAP_TSC_CONTROL), or
/// within [`TSC_HZ_TOLERANCE_PPM`]. Returns how many ppm the guest's clock
/// runs fast (positive) or slow (stated as a debug trace line).
pub fn match_tsc_hz(kvm: &kvm_ioctls::Kvm, fd: &VcpuFd, snap_hz: u64) -> Result<i64, ClockError> {
    let here = |fd: &VcpuFd| {
        fd.get_tsc_khz()
            .map(|k| u64::from(k) * 1000)
            .map_err(ClockError::TscKhz)
    };
    let mut hz = here(fd)?;
    if hz != snap_hz
        && kvm.check_extension(kvm_ioctls::Cap::TscControl)
        && fd.set_tsc_khz((snap_hz / 1000) as u32).is_ok()
    {
        hz = here(fd)?;
    }
    let ppm =
        ((i128::from(hz) - i128::from(snap_hz)) * 1_000_000 / i128::from(snap_hz.max(1))) as i64;
    if ppm.abs() > TSC_HZ_TOLERANCE_PPM {
        return Err(ClockError::TscHz {
            snap_khz: snap_hz / 1000,
            here_khz: hz / 1000,
            ppm,
        });
    }
    if hz != snap_hz {
        tracing::debug!(
            "restore: this host's TSC runs at {} kHz, the snapshot's guest counts {} kHz: its clock runs {ppm} ppm off",
            hz / 1000,
            snap_hz / 1000
        );
    }
    Ok(ppm)
}

/// The clock as the snapshot recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Saved {
    pub tsc_hz: u64,
    pub guest_tsc: u64,
    /// CLOCK_REALTIME when `guest_tsc` was read, in ns.
    pub wall_ns: u64,
    /// CLOCK_MONOTONIC_RAW then, in ns.
    pub raw_ns: u64,
    /// The host's boot id, if it could be read.
    pub boot_id: Option<[u8; 36]>,
}

/// How a restored guest's clock is kept on this KVM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keeping {
    /// skiff sets the guest's TSC at each resume.
    SetsTsc,
    /// kvm_pvm: the guest has the host's TSC, of the snapshot's boot.
    HostTsc,
}

fn ticks(ns: i128, hz: u64) -> i128 {
    ns * i128::from(hz) / 1_000_000_000
}

fn ns_of(ticks: i128, hz: u64) -> i128 {
    ticks * 1_000_000_000 / i128::from(hz.max(1))
}

impl Saved {
    /// The guest TSC that makes the guest's wall time `now` (ns): the
    /// snapshot's, moved on by the wall time since. Never before the
    /// snapshot's (the guest's monotonic time must not go back, even when
    /// the host's wall clock was stepped back).
    pub fn tsc_at(&self, now: u64) -> u64 {
        let elapsed = now.saturating_sub(self.wall_ns);
        self.guest_tsc
            .wrapping_add(ticks(i128::from(elapsed), self.tsc_hz) as u64)
    }

    /// The guest's wall time (ns) when its TSC reads `tsc`, minus the
    /// host's wall time `now`: the guest's clock error.
    pub fn error_ns(&self, tsc: u64, now: u64) -> i64 {
        let since = i128::from(tsc.wrapping_sub(self.guest_tsc) as i64);
        (i128::from(self.wall_ns) + ns_of(since, self.tsc_hz) - i128::from(now)) as i64
    }

    /// Whether a host TSC reading `tsc` at CLOCK_MONOTONIC_RAW `raw` is of
    /// the snapshot's boot: `Err(off_us)` if not.
    pub fn raw_check(&self, tsc: u64, raw: u64) -> Result<(), i64> {
        let Some(age) = raw.checked_sub(self.raw_ns) else {
            return Err(i64::MIN); // the raw clock restarted: another boot
        };
        let want = i128::from(self.guest_tsc) + ticks(i128::from(age), self.tsc_hz);
        let off_ns = ns_of(i128::from(tsc) - want, self.tsc_hz);
        let slack = RAW_SLACK_NS + age / 1_000_000 * RAW_SLACK_PPM;
        match off_ns.unsigned_abs() <= u128::from(slack) {
            true => Ok(()),
            false => Err((off_ns / 1000) as i64),
        }
    }

    /// Whether kvm_pvm can resume this snapshot's guest here: same boot.
    pub fn same_boot(&self, host_tsc: impl Fn() -> (u64, u64)) -> Result<(), ClockError> {
        match (self.boot_id, crate::vcpu::boot_id()) {
            (Some(a), Some(b)) if a == b => Ok(()),
            (Some(a), Some(b)) => Err(ClockError::OtherBoot {
                snap: String::from_utf8_lossy(&a).into_owned(),
                here: String::from_utf8_lossy(&b).into_owned(),
            }),
            _ => {
                let (tsc, raw) = host_tsc();
                self.raw_check(tsc, raw)
                    .map_err(|off_us| ClockError::RawMismatch { off_us })
            }
        }
    }
}

/// The host's TSC with CLOCK_MONOTONIC_RAW read around it (midpoint).
pub fn host_tsc_raw() -> (u64, u64) {
    let t0 = clock_ns(libc::CLOCK_MONOTONIC_RAW);
    // SAFETY: RDTSC only reads the time-stamp counter.
    let tsc = unsafe { core::arch::x86_64::_rdtsc() };
    let t1 = clock_ns(libc::CLOCK_MONOTONIC_RAW);
    (tsc, t0 + (t1 - t0) / 2)
}

/// Decides how this KVM keeps the restored guest's clock, and sets it now
/// if skiff can: fails now rather than at every request when the guest's
/// time cannot be right.
pub fn check(fd: &VcpuFd, saved: &Saved) -> Result<Keeping, ClockError> {
    if crate::vcpu::is_kvm_pvm(fd) {
        saved.same_boot(host_tsc_raw)?;
        Ok(Keeping::HostTsc)
    } else {
        set_tsc(fd, saved)?;
        Ok(Keeping::SetsTsc)
    }
}

/// On kvm_pvm, whether the snapshot is of this boot (see [`check`]): a
/// restore asks first, before setting any state another KVM's snapshot
/// may carry.
pub fn check_boot(fd: &VcpuFd, saved: &Saved) -> Result<(), ClockError> {
    match crate::vcpu::is_kvm_pvm(fd) {
        true => saved.same_boot(host_tsc_raw),
        false => Ok(()),
    }
}

/// At resume: sets the guest's TSC (a standard KVM) or states the guest's
/// clock error (kvm_pvm: the host's wall-clock adjustments since the
/// snapshot), as a debug trace line.
pub fn resume(fd: &VcpuFd, saved: &Saved, keeping: Keeping) -> Result<(), ClockError> {
    match keeping {
        Keeping::SetsTsc => set_tsc(fd, saved),
        Keeping::HostTsc => {
            if tracing::enabled!(tracing::Level::DEBUG) {
                let (tsc, at, _) = read_tsc_within(fd)?;
                let err = saved.error_ns(tsc, at);
                tracing::debug!(
                    "restore: kvm_pvm keeps the host's TSC (same boot as the snapshot): the guest's wall clock is {} us off the host's (the host's own wall-clock adjustments since the snapshot)",
                    err / 1000
                );
            }
            Ok(())
        }
    }
}

/// The guest's TSC now, with CLOCK_REALTIME read around it (midpoint) and
/// CLOCK_MONOTONIC_RAW after it.
pub fn read_tsc(fd: &VcpuFd) -> Result<(u64, u64, u64), StateError> {
    let (tsc, at, _) = read_tsc_within(fd)?;
    Ok((tsc, at, clock_ns(libc::CLOCK_MONOTONIC_RAW)))
}

/// The guest's TSC, the wall time at the read's midpoint, and how long
/// the read took (ns): the midpoint is only that exact.
fn read_tsc_within(fd: &VcpuFd) -> Result<(u64, u64, u64), StateError> {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_TSC,
        ..Default::default()
    }])
    .map_err(|_| StateError::Size("MSR list"))?;
    let t0 = now_ns();
    fd.get_msrs(&mut msrs)
        .map_err(|e| StateError::Ioctl("KVM_GET_MSRS", e))?;
    let t1 = now_ns();
    Ok((msrs.as_slice()[0].data, t0 + (t1 - t0) / 2, t1 - t0))
}

/// Sets the guest's TSC to the value due now ([`Saved::tsc_at`]), then
/// reads it back.
///
/// Linux KVM before 6.7 takes a KVM_SET_MSRS of the TSC within 1 s of the
/// value it expects (the last write plus the time since) as a vCPU
/// synchronisation and keeps the old offset: a restore within about a
/// second of the snapshot would silently keep the new vCPU's clock. The
/// TSC offset attribute (Linux 5.16+) sets the offset as given; older KVMs
/// get the MSR, and a second write when the first one was taken as a sync.
fn set_tsc(fd: &VcpuFd, saved: &Saved) -> Result<(), ClockError> {
    let tsc_hz = saved.tsc_hz;
    let tsc = |now| saved.tsc_at(now);
    let limit = tsc_hz / 1000; // 1 ms
    let by_offset = has_tsc_offset(fd);
    let mut off;
    if by_offset {
        // The offset applies after KVM's scaling of the host TSC, which
        // may not be exactly 1 (a nested KVM's own, refined TSC rate): the
        // first offset can be off by milliseconds. Moving it by the error
        // just measured moves the guest's TSC by exactly that.
        let first = tsc_offset_now(&tsc)?;
        set_tsc_offset(fd, first)?;
        off = tsc_error(fd, &tsc)?;
        if off.unsigned_abs() > limit / 10 {
            set_tsc_offset(fd, first.wrapping_sub(off as u64))?;
            off = tsc_error(fd, &tsc)?;
        }
    } else {
        set_tsc_msr(fd, tsc(now_ns()))?;
        off = tsc_error(fd, &tsc)?;
    }
    // Taken as a sync: a write far (10 s) from the expected value is not,
    // and then neither is the real one, far from that. Tried up to 3 times:
    // the value written is late by however long skiff was preempted before
    // KVM took it (seen: 3 ms on a loaded emulated host).
    for _ in 0..3 {
        if off.unsigned_abs() <= limit || by_offset {
            break;
        }
        set_tsc_msr(fd, tsc(now_ns()).wrapping_add(10 * tsc_hz))?;
        set_tsc_msr(fd, tsc(now_ns()))?;
        off = tsc_error(fd, &tsc)?;
    }
    if off.unsigned_abs() > limit {
        let off_us = (i128::from(off) * 1_000_000 / i128::from(tsc_hz.max(1))) as i64;
        return Err(ClockError::TscKept { off_us });
    }
    Ok(())
}

fn set_tsc_msr(fd: &VcpuFd, value: u64) -> Result<(), StateError> {
    set_msrs(
        fd,
        &[kvm_msr_entry {
            index: MSR_IA32_TSC,
            data: value,
            ..Default::default()
        }],
    )
}

/// How far the guest's TSC is from the value due, in ticks: the read
/// that took least time of a few (a preempted read says nothing).
fn tsc_error(fd: &VcpuFd, tsc: &impl Fn(u64) -> u64) -> Result<i64, StateError> {
    least_disturbed(|| {
        let (got, at, took) = read_tsc_within(fd)?;
        Ok((got.wrapping_sub(tsc(at)) as i64, took))
    })
}

/// The value of the quickest of up to 5 timed reads (`read` returns the
/// value and the ns it took); under 20 us is quick enough.
fn least_disturbed<T: Copy + Default>(
    mut read: impl FnMut() -> Result<(T, u64), StateError>,
) -> Result<T, StateError> {
    let mut best = (T::default(), u64::MAX);
    for _ in 0..5 {
        let (v, took) = read()?;
        if took < best.1 {
            best = (v, took);
        }
        if took < 20_000 {
            break;
        }
    }
    Ok(best.0)
}

fn tsc_offset_attr(addr: u64) -> kvm_device_attr {
    kvm_device_attr {
        group: KVM_VCPU_TSC_CTRL,
        attr: u64::from(KVM_VCPU_TSC_OFFSET),
        addr,
        flags: 0,
    }
}

/// KVM_SET_DEVICE_ATTR (0xe1) or KVM_HAS_DEVICE_ATTR (0xe3) on the vCPU:
/// kvm-ioctls offers them on x86 only for device fds.
fn vcpu_attr(fd: &VcpuFd, nr: u64, attr: &kvm_device_attr) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // _IOW(KVMIO, nr, struct kvm_device_attr)
    let req = (1u64 << 30) | ((size_of::<kvm_device_attr>() as u64) << 16) | (0xae << 8) | nr;
    // SAFETY: `attr` is a valid kvm_device_attr the kernel only reads, and
    // its `addr` is 0 or points at a live u64.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, attr as *const kvm_device_attr) };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `SKIFF_TSC_BY_MSR` (any value) takes the older KVMs' way on a new one:
/// how the tests check that way on the standard-KVM lane's Linux 6.1.
fn has_tsc_offset(fd: &VcpuFd) -> bool {
    std::env::var_os("SKIFF_TSC_BY_MSR").is_none()
        && vcpu_attr(fd, 0xe3, &tsc_offset_attr(0)).is_ok()
}

/// The offset KVM would add to the host's TSC, unscaled, for the guest
/// to read `tsc(now)` (refined by [`set_tsc`]).
fn tsc_offset_now(tsc: &impl Fn(u64) -> u64) -> Result<u64, StateError> {
    least_disturbed(|| {
        let t0 = now_ns();
        // SAFETY: RDTSC only reads the time-stamp counter.
        let host = unsafe { core::arch::x86_64::_rdtsc() };
        let t1 = now_ns();
        Ok((tsc(t0 + (t1 - t0) / 2).wrapping_sub(host), t1 - t0))
    })
}

/// Sets the offset KVM adds to the (scaled) host TSC for the guest's.
fn set_tsc_offset(fd: &VcpuFd, offset: u64) -> Result<(), ClockError> {
    // KVM reads the u64 at `addr` during the call.
    vcpu_attr(fd, 0xe1, &tsc_offset_attr(&offset as *const u64 as u64))
        .map_err(ClockError::TscOffset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u64 = 2_445_426_000;

    fn saved() -> Saved {
        Saved {
            tsc_hz: HZ,
            guest_tsc: 1_000 * HZ,
            wall_ns: 1_700_000_000_000_000_000,
            raw_ns: 500_000_000_000,
            boot_id: None,
        }
    }

    #[test]
    fn wall_time_moves_the_tsc_forward_only() {
        let s = saved();
        assert_eq!(s.tsc_at(s.wall_ns + 2_000_000_000), s.guest_tsc + 2 * HZ);
        // A wall clock stepped back before the snapshot's time.
        assert_eq!(s.tsc_at(s.wall_ns - 5_000_000_000), s.guest_tsc);
        assert_eq!(s.error_ns(s.guest_tsc + HZ, s.wall_ns + 1_000_000_000), 0);
        // The host's wall clock ran 20 ms fast: the guest is 20 ms behind.
        let e = s.error_ns(s.guest_tsc + 4 * HZ, s.wall_ns + 4_020_000_000);
        assert!((e + 20_000_000).abs() < 2, "{e}");
    }

    #[test]
    fn the_raw_clock_tells_the_boot() {
        let s = saved();
        let hour = 3_600_000_000_000u64;
        let tsc = s.guest_tsc + 3600 * HZ;
        assert_eq!(s.raw_check(tsc, s.raw_ns + hour), Ok(()));
        // 500 ms off within an hour (slack: 181 ms) is another boot's TSC.
        assert_eq!(s.raw_check(tsc + HZ / 2, s.raw_ns + hour), Err(500_000));
        assert_eq!(s.raw_check(tsc + HZ / 10, s.raw_ns + hour), Ok(()));
        // The raw clock went back: restarted.
        assert!(s.raw_check(tsc, s.raw_ns - 1).is_err());
        // Slack grows with age: 50 ppm of an hour is 180 ms.
        let tsc10 = s.guest_tsc + 36_000 * HZ;
        assert_eq!(s.raw_check(tsc10 + HZ / 10, s.raw_ns + 10 * hour), Ok(()));
    }
}
