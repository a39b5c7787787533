//! The TAP a skiff container's guest will use, created persistent and up
//! inside the container's network namespace (entered through the pid the
//! runtime gives in the state), so the container needs no privilege to
//! make it and nothing leaks into the host's namespace.

use std::os::fd::AsRawFd;
use thiserror::Error;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

#[derive(Debug, Error)]
pub enum NetError {
    #[error("'{0}' is not a valid interface name (1 to 15 of A-Z a-z 0-9 . _ -)")]
    BadName(String),
    #[error("cannot enter the network namespace of pid {pid}: {err}")]
    Netns { pid: i32, err: std::io::Error },
    #[error("cannot create TAP '{name}': {err}")]
    Tap { name: String, err: std::io::Error },
    #[error("cannot bring TAP '{name}' up: {err}")]
    Up { name: String, err: std::io::Error },
}

/// `struct ifreq` with the name and the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str, flags: libc::c_int) -> Self {
        let mut r = Self {
            name: [0; libc::IFNAMSIZ],
            flags: flags as libc::c_short,
            _pad: [0; 22],
        };
        r.name[..name.len()].copy_from_slice(name.as_bytes());
        r
    }
}

/// A name the kernel accepts and that cannot confuse a shell or a path.
pub fn valid_name(name: &str) -> bool {
    (1..libc::IFNAMSIZ).contains(&name.len())
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
}

fn last_err(r: libc::c_int) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Creates TAP `name` (persistent, up) in the network namespace of `pid`.
/// An existing TAP of that name is reused.
pub fn create_tap_in(pid: i32, name: &str) -> Result<(), NetError> {
    if !valid_name(name) {
        return Err(NetError::BadName(name.into()));
    }
    let netns = |err| NetError::Netns { pid, err };
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(netns)?;
    // SAFETY: setns on an open namespace fd; this process is single-
    // threaded and exits right after, so nothing else sees the change.
    last_err(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map_err(netns)?;

    let tap = |err| NetError::Tap {
        name: name.into(),
        err,
    };
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(tap)?;
    let mut req = IfReq::new(name, libc::IFF_TAP | libc::IFF_NO_PI);
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
    last_err(unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) }).map_err(tap)?;
    // SAFETY: TUNSETPERSIST takes an integer argument.
    last_err(unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) })
        .map_err(tap)?;

    let up = |err| NetError::Up {
        name: name.into(),
        err,
    };
    // SAFETY: plain socket creation; the fd is owned right below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    last_err(s).map_err(up)?;
    // SAFETY: `s` is a fresh socket fd nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) };
    let mut req = IfReq::new(name, 0);
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write one ifreq.
    unsafe {
        last_err(libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req)).map_err(up)?;
        req.flags |= libc::IFF_UP as libc::c_short;
        last_err(libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut req)).map_err(up)?;
    }
    Ok(())
}
