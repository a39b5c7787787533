//! skiff's co-located fast path (not vAccel's protocol): over a unix
//! socket, a skiff agent and a skiff client share one memory region per
//! connection, and a Genop's large float arrays travel through it instead
//! of through the socket. The agent makes the region (a sealed memfd: a
//! client cannot shrink it under the agent's feet) and hands it over with
//! SCM_RIGHTS in its reply to `skiff.agent.SharedMemory/Attach`; a vAccel
//! agent answers that service "does not exist", and the client keeps to
//! vAccel's wire protocol. See docs/remote-accelerators.md.
//!
//! Both processes may write the region at any time, so only plain
//! numbers cross it (f32 and f64 arrays: any bit pattern is a value, and
//! nothing about memory safety depends on them); lengths, types and
//! offsets always come in the protobuf message and are checked.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The service both sides recognise; its methods are `Attach` and `Genop`.
pub const SERVICE: &str = "skiff.agent.SharedMemory";

/// Args at least this large go through the region (smaller ones are
/// cheaper inline).
pub const MIN_ARG: usize = 64 << 10;

/// Offsets in the region are multiples of this (f64 alignment; 64 keeps
/// arrays on their own cache lines).
pub const ALIGN: u64 = 64;

/// A fresh empty memfd that can be sealed (close-on-exec).
pub fn memfd(name: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: memfd_create with a NUL-terminated name.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A shared mapping of a memfd.
#[derive(Debug)]
pub struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory, valid until drop; concurrent
// access is by design (see the module docs) and confined to number arrays.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// A fresh sealed memfd of `len` bytes, mapped; the fd is returned to
    /// be passed on.
    pub fn create(len: usize, populate: bool) -> io::Result<(Region, OwnedFd)> {
        let fd = memfd(c"skiff-agent-shm")?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: ftruncate and fcntl on our own memfd.
        let r = unsafe {
            if libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) < 0
                || libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) < 0
            {
                -1
            } else {
                0
            }
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((Region::map(&fd, len, populate)?, fd))
    }

    /// Maps `len` bytes of `fd` (shared, read-write; `populate`: faulted
    /// in now rather than call by call). The receiving side checks that
    /// the file is at least that long and sealed against shrinking:
    /// otherwise an access could become a SIGBUS.
    pub fn map(fd: &OwnedFd, len: usize, populate: bool) -> io::Result<Region> {
        // SAFETY: fstat fills a plain struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a valid stat buffer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: F_GET_SEALS on a valid fd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        // (-1: a file that cannot be sealed at all, i.e. not a memfd)
        let sealed = seals >= 0 && seals & libc::F_SEAL_SHRINK != 0;
        if len == 0 || (st.st_size as u64) < len as u64 || !sealed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared memory smaller than announced, or not sealed",
            ));
        }
        let populate = if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: a fresh shared mapping of `len` bytes of the file; nothing
        // else lives there.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | populate,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region { ptr: p.cast(), len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `len` bytes at `off`, if inside the region.
    pub fn slice(&self, off: u64, len: usize) -> Option<&[u8]> {
        let (at, _) = self.span(off, len)?;
        // SAFETY: in bounds of the live mapping (checked by span).
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(at), len) })
    }

    /// `len` bytes at `off`, writable, if inside the region.
    #[allow(clippy::mut_from_ref)]
    pub fn slice_mut(&self, off: u64, len: usize) -> Option<&mut [u8]> {
        let (at, _) = self.span(off, len)?;
        // SAFETY: in bounds of the live mapping; callers hand out disjoint
        // spans per request (the agent checks overlaps, the client lays
        // them out itself). The peer process may write concurrently:
        // only number arrays live here (module docs).
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) })
    }

    fn span(&self, off: u64, len: usize) -> Option<(usize, usize)> {
        let at = usize::try_from(off).ok()?;
        let end = at.checked_add(len)?;
        (end <= self.len).then_some((at, end))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; no slice outlives the
        // Region (they borrow it).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Sends `data` with `fd` attached (SCM_RIGHTS), all of it.
pub fn send_with_fd(sock: RawFd, data: &[u8], fd: &OwnedFd) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cmsg = [0u64; 4]; // CMSG_SPACE(sizeof(int)) = 24 bytes, aligned
                              // SAFETY: msghdr is plain data; all fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
    // SAFETY: msg_control points at 32 bytes, enough for one int cmsg; the
    // CMSG macros stay within it.
    let sent = unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd.as_raw_fd());
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let rest = &data[sent as usize..];
    if rest.is_empty() {
        return Ok(());
    }
    // SAFETY: borrowing the fd for a plain write of the rest; the
    // ManuallyDrop keeps it from being closed here.
    let mut s =
        std::mem::ManuallyDrop::new(unsafe { std::os::unix::net::UnixStream::from_raw_fd(sock) });
    io::Write::write_all(&mut *s, rest)
}

/// Receives up to `buf.len()` bytes and the fd that came with them, if
/// any (any other ancillary data is closed and ignored).
pub fn recv_with_fd(
    sock: RawFd,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cmsg = [0u64; 8];
    // SAFETY: msghdr is plain data; all fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg);
    // SAFETY: iov and control point at live buffers of the stated sizes.
    let n = unsafe { libc::recvmsg(sock, &mut msg, flags | libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut got = None;
    // SAFETY: walking the control buffer the kernel filled, with the CMSG
    // macros; every fd found is owned from here on (so closed if unused).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    let fd = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    got.get_or_insert(fd);
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, got))
}

/// Where each large argument goes in the region: offsets for `lens`, in
/// order, aligned; and the total size needed.
pub fn layout(lens: impl Iterator<Item = usize>) -> (Vec<u64>, u64) {
    let mut at = 0u64;
    let offs = lens
        .map(|l| {
            let o = at;
            at = (at + l as u64).div_ceil(ALIGN) * ALIGN;
            o
        })
        .collect();
    (offs, at)
}
