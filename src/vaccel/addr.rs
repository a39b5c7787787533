//! vAccel's RPC addresses: `tcp://HOST:PORT`, `unix://PATH` (a leading `@`
//! is Linux's abstract namespace), `vsock://CID:PORT`; connecting and
//! listening on them with std's sockets (vsock through libc).

use super::frame::Timed;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;
use thiserror::Error;

/// vAccel's default agent address.
pub const DEFAULT: &str = "tcp://127.0.0.1:65500";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Tcp(String),
    Unix(PathBuf),
    Abstract(Vec<u8>),
    Vsock { cid: u32, port: u32 },
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("address '{0}': expected tcp://HOST:PORT, unix://PATH, unix://@NAME or vsock://CID:PORT")]
pub struct AddressError(pub String);

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, AddressError> {
        let bad = || AddressError(s.into());
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        match scheme {
            "tcp" => {
                let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(bad());
                }
                Ok(Address::Tcp(rest.into()))
            }
            "unix" if rest.len() > 1 && rest.starts_with('@') => {
                Ok(Address::Abstract(rest.as_bytes()[1..].to_vec()))
            }
            "unix" if !rest.is_empty() && !rest.starts_with('@') => Ok(Address::Unix(rest.into())),
            "vsock" => {
                let (cid, port) = rest.split_once(':').ok_or_else(bad)?;
                Ok(Address::Vsock {
                    cid: cid.parse().map_err(|_| bad())?,
                    port: port.parse().map_err(|_| bad())?,
                })
            }
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "tcp://{a}"),
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Abstract(n) => write!(f, "unix://@{}", String::from_utf8_lossy(n)),
            Address::Vsock { cid, port } => write!(f, "vsock://{cid}:{port}"),
        }
    }
}

/// A connected socket of any of the three families.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    /// unix sockets, and vsock sockets (every call used on it is
    /// family-independent: read, write, SO_RCVTIMEO/SO_SNDTIMEO, shutdown).
    Unix(UnixStream),
}

/// Socket buffers for a connection: a 512^3 sgemm's 4 MiB request then
/// crosses in a few large copies instead of many small ones with a
/// wake-up of the reader between each (the kernel caps this at
/// net.core.wmem_max / rmem_max; where they are lower, less is used).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

fn big_buffers(fd: RawFd) {
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with a valid int option value on our socket;
        // a failure only leaves the default.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&SOCKET_BUFFER as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl Stream {
    /// Sizes the socket's buffers for large frames (tcp and unix; vsock
    /// has its own buffer options).
    pub fn tune(&self) {
        match self {
            Stream::Tcp(s) => {
                let _ = s.set_nodelay(true);
                big_buffers(s.as_raw_fd());
            }
            Stream::Unix(s) => big_buffers(s.as_raw_fd()),
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }

    pub fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t).and_then(|_| s.set_write_timeout(t)),
            Stream::Unix(s) => s.set_read_timeout(t).and_then(|_| s.set_write_timeout(t)),
        }
    }
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Timed for Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
}

/// A listening socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
    /// std's unix listener would refuse a non-unix peer address.
    Vsock(OwnedFd),
}

impl Listener {
    pub fn accept(&self) -> io::Result<Stream> {
        Ok(match self {
            Listener::Tcp(l) => {
                let s = Stream::Tcp(l.accept()?.0);
                s.tune();
                s
            }
            Listener::Unix(l) => {
                let s = Stream::Unix(l.accept()?.0);
                s.tune();
                s
            }
            Listener::Vsock(fd) => {
                // SAFETY: accept4 on our listening socket, peer address
                // not wanted; the new fd is owned below.
                let c = unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if c < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a fresh fd nobody else owns.
                Stream::Unix(UnixStream::from(unsafe { OwnedFd::from_raw_fd(c) }))
            }
        })
    }
    pub fn raw_fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
            Listener::Vsock(fd) => fd.as_raw_fd(),
        }
    }
    /// The bound address (tcp: with the kernel-chosen port).
    pub fn local(&self, asked: &Address) -> Address {
        match (self, asked) {
            (Listener::Tcp(l), _) => match l.local_addr() {
                Ok(a) => Address::Tcp(a.to_string()),
                Err(_) => asked.clone(),
            },
            _ => asked.clone(),
        }
    }
}

fn tcp_within(a: &str, t: Duration) -> io::Result<TcpStream> {
    use std::net::ToSocketAddrs;
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for sa in a.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sa, t) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

type SockCall =
    unsafe extern "C" fn(libc::c_int, *const libc::sockaddr, libc::socklen_t) -> libc::c_int;

/// A vsock stream socket `call`ed (connect or bind) with `cid:port`.
fn vsock(cid: u32, port: u32, call: SockCall) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain integers; all-zero is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    // SAFETY: `a` is a valid sockaddr_vm of VM_LEN bytes, `fd` our socket.
    check(unsafe {
        call(
            fd.as_raw_fd(),
            (&a as *const libc::sockaddr_vm).cast(),
            VM_LEN,
        )
    })?;
    Ok(fd)
}

fn check(r: libc::c_int) -> io::Result<()> {
    match r {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

const VM_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

impl Address {
    pub fn connect(&self) -> io::Result<Stream> {
        self.connect_within(None)
    }

    /// Connects, a tcp connect bounded by `limit` per address the name
    /// resolves to (an unreachable host would otherwise take minutes).
    pub fn connect_within(&self, limit: Option<Duration>) -> io::Result<Stream> {
        Ok(match self {
            Address::Tcp(a) => {
                let s = match limit {
                    Some(t) => tcp_within(a, t)?,
                    None => TcpStream::connect(a.as_str())?,
                };
                let s = Stream::Tcp(s);
                s.tune();
                s
            }
            Address::Unix(p) => {
                let s = Stream::Unix(UnixStream::connect(p)?);
                s.tune();
                s
            }
            Address::Abstract(n) => {
                let a = SocketAddr::from_abstract_name(n)?;
                let s = Stream::Unix(UnixStream::connect_addr(&a)?);
                s.tune();
                s
            }
            Address::Vsock { cid, port } => {
                let fd = vsock(*cid, *port, libc::connect)?;
                Stream::Unix(UnixStream::from(fd))
            }
        })
    }

    pub fn listen(&self) -> io::Result<Listener> {
        Ok(match self {
            Address::Tcp(a) => Listener::Tcp(TcpListener::bind(a.as_str())?),
            Address::Unix(p) => Listener::Unix(UnixListener::bind(p)?),
            Address::Abstract(n) => Listener::Unix(UnixListener::bind_addr(
                &SocketAddr::from_abstract_name(n)?,
            )?),
            Address::Vsock { cid, port } => {
                let fd = vsock(*cid, *port, libc::bind)?;
                // SAFETY: listen(2) on our own bound socket.
                check(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
                Listener::Vsock(fd)
            }
        })
    }
}
