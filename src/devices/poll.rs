//! POLL's wait: every net device's fd plus the guest's timeout, in one
//! epoll set waited on with `epoll_pwait` (urunc's seccomp filter allows
//! it; `poll`, `ppoll` and `epoll_wait` are not).
//!
//! The common path is cheap: one `epoll_pwait`, which returns at once when
//! a device already has input. A timerfd (Solo5's way to get nanosecond
//! timeouts) is armed only when the guest must really sleep for a time
//! that is not a whole number of milliseconds. Nothing is allocated per
//! call.

use super::DeviceError;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NS_PER_MS: u64 = 1_000_000;
/// Manifest handles are below 64; this tag marks the timerfd.
const TIMER_TAG: u64 = u64::MAX;
/// Up to 63 devices plus the timer.
const MAX_EVENTS: usize = 64;

/// An epoll set over the net devices, with a lazily made timerfd.
#[derive(Debug)]
pub struct Waiter {
    epoll: OwnedFd,
    timer: Option<OwnedFd>,
    /// Whether the timer is armed or holds an expiry nobody cleared.
    timer_armed: bool,
    events: [libc::epoll_event; MAX_EVENTS],
}

fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl Waiter {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: plain epoll_create1; the result is checked and owned.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Self {
            // SAFETY: `fd` is a fresh fd that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            timer: None,
            timer_armed: false,
            events: [libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS],
        })
    }

    /// Watches `fd` for input, reporting it as `tag` (the device handle).
    pub fn add(&mut self, fd: RawFd, tag: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: tag,
        };
        // SAFETY: both fds are open; `ev` is a valid epoll_event.
        cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) })?;
        Ok(())
    }

    fn timer(&mut self) -> std::io::Result<RawFd> {
        if let Some(t) = &self.timer {
            return Ok(t.as_raw_fd());
        }
        // SAFETY: plain timerfd_create; the result is checked and owned.
        let fd = cvt(unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        })?;
        // SAFETY: `fd` is a fresh fd that nothing else owns.
        let t = unsafe { OwnedFd::from_raw_fd(fd) };
        self.add(fd, TIMER_TAG)?;
        Ok(self.timer.insert(t).as_raw_fd())
    }

    /// Arms the timer for `ns` from now (re-arming clears a past expiry).
    fn arm(&mut self, ns: u64) -> std::io::Result<()> {
        let fd = self.timer()?;
        let it = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000).min(i64::MAX as u64) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec; the old value is not wanted.
        cvt(unsafe { libc::timerfd_settime(fd, 0, &it, std::ptr::null_mut()) })?;
        self.timer_armed = true;
        Ok(())
    }

    /// Stops the timer and clears an expiry it may have recorded.
    fn disarm(&mut self) -> std::io::Result<()> {
        if self.timer_armed {
            self.arm(0)?;
            self.timer_armed = false;
        }
        Ok(())
    }

    fn epoll_pwait(&mut self, ms: libc::c_int) -> std::io::Result<usize> {
        // SAFETY: `events` is a writable array of MAX_EVENTS entries; a
        // null sigmask means "keep the current one".
        let n = unsafe {
            libc::epoll_pwait(
                self.epoll.as_raw_fd(),
                self.events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                ms,
                std::ptr::null(),
            )
        };
        match n {
            n if n >= 0 => Ok(n as usize),
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    // A signal: report nothing ready; the vCPU loop sees
                    // the signal before the guest runs again.
                    Ok(0)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Waits until a device has input or `timeout_ns` passes; returns the
    /// ready set (bit per handle) and how many devices are ready.
    pub fn wait(&mut self, timeout_ns: u64) -> Result<(u64, i32), DeviceError> {
        self.wait_io(timeout_ns).map_err(DeviceError::Poll)
    }

    fn wait_io(&mut self, timeout_ns: u64) -> std::io::Result<(u64, i32)> {
        // 1. Already ready (or a zero timeout): one non-blocking look.
        let n = self.epoll_pwait(0)?;
        let (mut set, mut ready) = self.collect(n)?;
        if ready == 0 && timeout_ns > 0 {
            // 2. Sleep: epoll's own timeout when it is exact to the
            //    millisecond (or so long that rounding up to one does not
            //    matter), else the timerfd for nanoseconds.
            let n = if timeout_ns.is_multiple_of(NS_PER_MS) || timeout_ns >= 1_000 * NS_PER_MS {
                self.disarm()?;
                let ms = timeout_ns.div_ceil(NS_PER_MS).min(i32::MAX as u64);
                self.epoll_pwait(ms as libc::c_int)?
            } else {
                self.arm(timeout_ns)?;
                self.epoll_pwait(-1)?
            };
            (set, ready) = self.collect(n)?;
        }
        Ok((set, ready))
    }

    /// The ready set and count among the first `n` events; a fired timer
    /// is cleared so it cannot wake a later wait.
    fn collect(&mut self, n: usize) -> std::io::Result<(u64, i32)> {
        let mut set = 0u64;
        let mut ready = 0;
        let mut fired = false;
        for ev in &self.events[..n] {
            let tag = ev.u64;
            if tag == TIMER_TAG {
                fired = true;
            } else {
                set |= 1 << (tag & 63);
                ready += 1;
            }
        }
        if fired {
            self.disarm()?;
        }
        Ok((set, ready))
    }
}

/// POLL with no net device: just sleep for the timeout. A signal cuts the
/// sleep short; the guest simply polls again, or the run ends.
pub fn sleep(ns: u64) {
    if ns > 0 {
        let ts = libc::timespec {
            tv_sec: (ns / 1_000_000_000).min(i64::MAX as u64) as libc::time_t,
            tv_nsec: (ns % 1_000_000_000) as libc::c_long,
        };
        // The nanosleep system call itself: glibc's nanosleep() makes
        // clock_nanosleep, which urunc's seccomp allowlist lacks.
        // SAFETY: valid timespec; a null remainder pointer is allowed.
        unsafe {
            libc::syscall(
                libc::SYS_nanosleep,
                &ts as *const libc::timespec,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_and_reports_ready_handles() {
        let mut w = Waiter::new().unwrap();
        let mut fds = [0; 2];
        // SAFETY: valid out-array of two ints.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        w.add(fds[0], 5).unwrap();
        let t = std::time::Instant::now();
        assert_eq!(w.wait(3_500_000).unwrap(), (0, 0));
        assert!(t.elapsed() >= std::time::Duration::from_micros(3_400));
        assert_eq!(w.wait(2 * NS_PER_MS).unwrap(), (0, 0));
        // SAFETY: writes one byte from a valid buffer to our pipe.
        assert_eq!(unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) }, 1);
        assert_eq!(w.wait(u64::MAX).unwrap(), (1 << 5, 1));
        assert_eq!(w.wait(0).unwrap(), (1 << 5, 1));
        // SAFETY: closing our own pipe fds.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
