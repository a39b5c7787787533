//! Network devices: `--net:NAME=IFACE|@FD` and `--net-mac:NAME=MAC`, the
//! TAP, and NET_READ/NET_WRITE. Readiness for POLL lives in `poll.rs`.
//!
//! A frame moves straight between the TAP and guest memory (one read or
//! write on the checked slice). As in Solo5, NET_READ does one read of the
//! guest's buffer size: a frame longer than the buffer is truncated to it.

use super::poll::Waiter;
use super::{write_back, DeviceError, Stop};
use crate::hypercall::GuestFault;
use crate::memory::{Gpa, GuestMemory};
use guest_abi::hvt::{ret, HcNet, HcPoll};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use thiserror::Error;

/// Where a net device's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetTarget {
    /// A TAP interface, by name.
    Iface(String),
    /// An inherited, already-attached TAP file descriptor (`@FD`).
    Fd(RawFd),
}

/// A validated `--net` binding (nothing opened yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub name: String,
    pub target: NetTarget,
    /// From `--net-mac`; generated at attach time when absent.
    pub mac: Option<[u8; 6]>,
    /// Check the TAP now but open it only at [`NetDevices::open_taps`]:
    /// a migration's destination, whose TAP the source holds until the
    /// stop.
    pub open_later: bool,
}

/// A bad `--net` or `--net-mac` value.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetFlagError {
    #[error("bad interface name '{0}' (1 to 15 characters, or @FD)")]
    Iface(String),
    #[error("bad file descriptor '{0}' (expected @N, N >= 0)")]
    Fd(String),
    #[error("bad MAC address '{0}' (expected six hex bytes like 02:00:00:00:00:01)")]
    Mac(String),
    #[error("MAC address {0} is a multicast address")]
    MacMulticast(String),
}

/// Parses `IFACE` or `@FD`.
pub fn parse_target(s: &str) -> Result<NetTarget, NetFlagError> {
    if let Some(n) = s.strip_prefix('@') {
        return match n.parse::<RawFd>() {
            Ok(fd) if fd >= 0 && !n.starts_with('+') => Ok(NetTarget::Fd(fd)),
            _ => Err(NetFlagError::Fd(s.to_string())),
        };
    }
    let ok = (1..libc::IFNAMSIZ).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_graphic() && c != b'/' && c != b'%');
    if !ok {
        return Err(NetFlagError::Iface(s.to_string()));
    }
    Ok(NetTarget::Iface(s.to_string()))
}

/// Parses `xx:xx:xx:xx:xx:xx`; a multicast address is refused.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetFlagError> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next().ok_or_else(|| NetFlagError::Mac(s.into()))?;
        if p.len() != 2 {
            return Err(NetFlagError::Mac(s.into()));
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| NetFlagError::Mac(s.into()))?;
    }
    if parts.next().is_some() {
        return Err(NetFlagError::Mac(s.into()));
    }
    if mac[0] & 1 != 0 {
        return Err(NetFlagError::MacMulticast(s.into()));
    }
    Ok(mac)
}

/// A locally administered unicast MAC from the kernel's random source.
fn generate_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: `mac` is a valid 6-byte buffer; getrandom writes at most that.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), 6, 0) };
    if n != 6 {
        // No entropy source: derive from the pid and the clock instead.
        let seed = u64::from(std::process::id()) ^ super::clock::now_ns();
        mac.copy_from_slice(&seed.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Why a net device could not be attached.
#[derive(Debug, Error)]
pub enum NetAttachError {
    #[error("{name}: could not attach interface {iface}: {err}")]
    Iface {
        name: String,
        iface: String,
        err: std::io::Error,
    },
    #[error("{name}: interface {iface} is not up")]
    Down { name: String, iface: String },
    #[error("{name}: interface {iface} is not a TAP device")]
    NotTap { name: String, iface: String },
    #[error("{name}: TAP interface {iface} is in use by another process (a TAP serves one guest)")]
    Busy { name: String, iface: String },
    #[error("{name}: could not use file descriptor {fd}: {err}")]
    Fd {
        name: String,
        fd: RawFd,
        err: std::io::Error,
    },
}

/// `struct ifreq`: a name and a union whose first int we use.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &[u8]) -> Self {
        let mut r = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        let n = name.len().min(libc::IFNAMSIZ - 1);
        r.name[..n].copy_from_slice(&name[..n]);
        r
    }
    fn int(&self) -> i32 {
        i32::from_ne_bytes(self.data[..4].try_into().expect("4 bytes"))
    }
    fn short(&self) -> i16 {
        i16::from_ne_bytes(self.data[..2].try_into().expect("2 bytes"))
    }
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;

fn ioctl(fd: RawFd, req: libc::c_ulong, ifr: &mut IfReq) -> std::io::Result<()> {
    // SAFETY: every request used here reads or writes one `struct ifreq`.
    if unsafe { libc::ioctl(fd, req as _, ifr as *mut IfReq) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The flags and MTU of interface `name` (ENODEV if it does not exist).
fn iface_info(name: &[u8]) -> std::io::Result<(i16, u16)> {
    // SAFETY: plain socket(2); the result is checked and owned below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `s` is a fresh fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let mut r = IfReq::new(name);
    ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut r)?;
    let flags = r.short();
    let mut r = IfReq::new(name);
    ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut r)?;
    Ok((flags, r.int().clamp(0, i32::from(u16::MAX)) as u16))
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    let mut on: libc::c_int = 1;
    // SAFETY: FIONBIO takes a pointer to an int (ioctl, not fcntl, which
    // urunc's seccomp filter does not allow).
    if unsafe { libc::ioctl(fd, libc::FIONBIO, &mut on) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// An attached net device.
#[derive(Debug)]
pub struct Net {
    /// `None` while a migration has handed the TAP over (or not yet
    /// taken it): reads and writes then fail with EBADF.
    fd: Option<OwnedFd>,
    pub mac: [u8; 6],
    pub mtu: u16,
    spec: NetSpec,
}

impl Net {
    /// Opens the TAP (or takes over the inherited fd), nonblocking.
    pub fn attach(spec: &NetSpec) -> Result<Self, NetAttachError> {
        let fd = match &spec.target {
            NetTarget::Iface(iface) if spec.open_later => {
                check_tap(spec, iface)?;
                None
            }
            NetTarget::Iface(iface) => Some(open_tap(spec, iface)?),
            NetTarget::Fd(raw) => {
                let fd_err = |err| NetAttachError::Fd {
                    name: spec.name.clone(),
                    fd: *raw,
                    err,
                };
                set_nonblocking(*raw).map_err(fd_err)?;
                // SAFETY: `@FD` hands this fd to skiff for the whole run;
                // it is open (FIONBIO just succeeded) and owned by no one
                // else in this process.
                Some(unsafe { OwnedFd::from_raw_fd(*raw) })
            }
        };
        // The MTU is the interface's; for an inherited fd, ask the TAP
        // which interface it is, falling back to Ethernet's 1500.
        let mtu = match &spec.target {
            NetTarget::Iface(iface) => iface_info(iface.as_bytes()).map(|i| i.1),
            NetTarget::Fd(_) => {
                let mut r = IfReq::new(b"");
                let raw = fd.as_ref().map_or(-1, |f| f.as_raw_fd());
                ioctl(raw, TUNGETIFF, &mut r).and_then(|_| {
                    let len = r.name.iter().position(|&c| c == 0).unwrap_or(0);
                    iface_info(&r.name[..len]).map(|i| i.1)
                })
            }
        }
        .unwrap_or(1500);
        Ok(Self {
            fd,
            mac: spec.mac.unwrap_or_else(generate_mac),
            mtu,
            spec: spec.clone(),
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, |f| f.as_raw_fd())
    }
}

/// The interface `iface` exists and is up.
fn check_tap(spec: &NetSpec, iface: &str) -> Result<(), NetAttachError> {
    let err = |err| NetAttachError::Iface {
        name: spec.name.clone(),
        iface: iface.to_string(),
        err,
    };
    // Check first that it exists: TUNSETIFF would create a new one.
    let (flags, _) = iface_info(iface.as_bytes()).map_err(err)?;
    if flags & (libc::IFF_UP as i16) == 0 {
        return Err(NetAttachError::Down {
            name: spec.name.clone(),
            iface: iface.to_string(),
        });
    }
    Ok(())
}

/// Opens `/dev/net/tun` attached to the existing, up interface `iface`.
fn open_tap(spec: &NetSpec, iface: &str) -> Result<OwnedFd, NetAttachError> {
    let err = |err| NetAttachError::Iface {
        name: spec.name.clone(),
        iface: iface.to_string(),
        err,
    };
    check_tap(spec, iface)?;
    // SAFETY: open(2) on a constant NUL-terminated path; checked below.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut r = IfReq::new(iface.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl(fd.as_raw_fd(), TUNSETIFF, &mut r).map_err(|e| {
        let (name, iface) = (spec.name.clone(), iface.to_string());
        match e.raw_os_error() {
            // The kernel's answer for an existing interface that is not a
            // TAP (eth0, a bridge, a TUN).
            Some(libc::EINVAL) => NetAttachError::NotTap { name, iface },
            Some(libc::EBUSY) => NetAttachError::Busy { name, iface },
            _ => err(e),
        }
    })?;
    // Refuse a different device than the one named (e.g. a name with %d).
    if r.name[..iface.len()] != *iface.as_bytes() || r.name[iface.len()] != 0 {
        return Err(err(std::io::Error::from_raw_os_error(libc::EINVAL)));
    }
    Ok(fd)
}

/// The net devices of one guest, indexed by handle, and their waiter.
#[derive(Debug, Default)]
pub struct NetDevices {
    by_handle: Vec<Option<Net>>,
    waiter: Option<Waiter>,
}

impl NetDevices {
    /// Adds `dev` as handle `handle` and to POLL's wait set.
    pub fn insert(&mut self, handle: u64, dev: Net) -> std::io::Result<()> {
        let waiter = match &mut self.waiter {
            Some(w) => w,
            None => self.waiter.insert(Waiter::new()?),
        };
        if dev.fd.is_some() {
            waiter.add(dev.raw_fd(), handle)?;
        }
        let i = handle as usize;
        if self.by_handle.len() <= i {
            self.by_handle.resize_with(i + 1, || None);
        }
        self.by_handle[i] = Some(dev);
        Ok(())
    }

    /// A device that cannot leave this process (an inherited `@FD`), by
    /// name: a migration refuses to start then.
    pub fn unmovable(&self) -> Option<&str> {
        self.by_handle
            .iter()
            .flatten()
            .find(|d| matches!(d.spec.target, NetTarget::Fd(_)))
            .map(|d| d.spec.name.as_str())
    }

    /// Closes every TAP opened by name (a migration's stop: the
    /// destination attaches the same interfaces next).
    pub fn close_taps(&mut self) {
        for d in self.by_handle.iter_mut().flatten() {
            if matches!(d.spec.target, NetTarget::Iface(_)) {
                d.fd = None;
            }
        }
    }

    /// Opens the TAPs closed or not yet opened ([`Self::close_taps`],
    /// [`NetSpec::open_later`]) and puts them back in POLL's wait set.
    pub fn open_taps(&mut self) -> Result<(), NetAttachError> {
        for (h, slot) in self.by_handle.iter_mut().enumerate() {
            let Some(d) = slot.as_mut().filter(|d| d.fd.is_none()) else {
                continue;
            };
            let NetTarget::Iface(iface) = &d.spec.target else {
                continue;
            };
            let fd = open_tap(&d.spec, iface)?;
            if let Some(w) = self.waiter.as_mut() {
                w.add(fd.as_raw_fd(), h as u64)
                    .map_err(|err| NetAttachError::Iface {
                        name: d.spec.name.clone(),
                        iface: iface.clone(),
                        err,
                    })?;
            }
            d.fd = Some(fd);
        }
        Ok(())
    }

    fn get(&self, handle: u64) -> Option<&Net> {
        self.by_handle.get(handle as usize).and_then(Option::as_ref)
    }

    /// POLL: waits on every net device and the timeout.
    pub fn poll(&mut self, mem: &GuestMemory, arg: Gpa, mut req: HcPoll) -> Result<(), Stop> {
        let (set, n) = match &mut self.waiter {
            Some(w) => w.wait(req.timeout_nsecs)?,
            None => {
                super::poll::sleep(req.timeout_nsecs);
                (0, 0)
            }
        };
        req.ready_set = set;
        req.ret = n;
        Ok(write_back(mem, "POLL", arg, req)?)
    }

    /// NET_WRITE: one frame out.
    pub fn write(&self, mem: &GuestMemory, arg: Gpa, mut req: HcNet) -> Result<(), Stop> {
        req.ret = match self.get(req.handle) {
            None => ret::EINVAL,
            Some(dev) => {
                let buf =
                    mem.slice(Gpa(req.data), req.len)
                        .map_err(|err| GuestFault::BadArgument {
                            call: "NET_WRITE",
                            err,
                        })?;
                let guard = buf.ptr_guard();
                // SAFETY: the checked guest slice is readable for `len`
                // bytes for the life of `mem`; the vCPU is stopped.
                let n = unsafe { libc::write(dev.raw_fd(), guard.as_ptr().cast(), buf.len()) };
                if n == buf.len() as isize {
                    ret::OK
                } else if n >= 0 {
                    ret::EUNSPEC
                } else {
                    // The guest's frame was refused (bad size) or the host
                    // queue is full: the guest's problem, not a fatal one.
                    match std::io::Error::last_os_error().raw_os_error() {
                        Some(libc::EINVAL) => ret::EINVAL,
                        Some(libc::EAGAIN | libc::ENOBUFS | libc::EINTR | libc::EIO) => {
                            ret::EUNSPEC
                        }
                        _ => {
                            let err = std::io::Error::last_os_error();
                            return Err(DeviceError::NetIo {
                                call: "NET_WRITE",
                                err,
                            }
                            .into());
                        }
                    }
                }
            }
        };
        Ok(write_back(mem, "NET_WRITE", arg, req)?)
    }

    /// NET_READ: one frame in, or AGAIN when nothing is waiting.
    pub fn read(&self, mem: &GuestMemory, arg: Gpa, mut req: HcNet) -> Result<(), Stop> {
        req.ret = match self.get(req.handle) {
            None => ret::EINVAL,
            Some(dev) => {
                let buf = mem.slice_mut(Gpa(req.data), req.len).map_err(|err| {
                    GuestFault::BadArgument {
                        call: "NET_READ",
                        err,
                    }
                })?;
                let guard = buf.ptr_guard_mut();
                // SAFETY: the checked guest slice is writable for `len`
                // bytes for the life of `mem`; the vCPU is stopped.
                let n = unsafe { libc::read(dev.raw_fd(), guard.as_ptr().cast(), buf.len()) };
                if n > 0 {
                    // The TAP reports the frame's length even when it
                    // copied only the buffer's worth.
                    req.len = (n as u64).min(req.len);
                    ret::OK
                } else if n == 0 {
                    ret::AGAIN
                } else {
                    let err = std::io::Error::last_os_error();
                    match err.raw_os_error() {
                        Some(libc::EAGAIN | libc::EINTR) => ret::AGAIN,
                        _ => {
                            return Err(DeviceError::NetIo {
                                call: "NET_READ",
                                err,
                            }
                            .into())
                        }
                    }
                }
            }
        };
        Ok(write_back(mem, "NET_READ", arg, req)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("02:00:0a:Bc:00:ff"),
            Ok([2, 0, 0xa, 0xbc, 0, 0xff])
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "2:0:0:0:0:0",
            "zz:00:00:00:00:00",
        ] {
            assert!(matches!(parse_mac(bad), Err(NetFlagError::Mac(_))), "{bad}");
        }
        assert!(matches!(
            parse_mac("01:00:5e:00:00:01"),
            Err(NetFlagError::MacMulticast(_))
        ));
        let m = generate_mac();
        assert_eq!(m[0] & 3, 2);
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("tap0"), Ok(NetTarget::Iface("tap0".into())));
        assert_eq!(parse_target("@3"), Ok(NetTarget::Fd(3)));
        for bad in ["", "@", "@-1", "@x", "a/b", "tap%d", "0123456789abcdef"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
