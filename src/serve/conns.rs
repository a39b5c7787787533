//! The front's open connections and what bounds them (docs/serve.md,
//! "Slow and hostile clients"):
//! - at most `--max-connections` open, and `--max-connections-per-peer`
//!   from one peer address; a connection over either cap closes the
//!   longest-idle one (of that peer, or of all) to make room, and is
//!   refused with 503 only when none is idle;
//! - a connection with no request in progress is idle: a fresh one must
//!   send a whole request head within `--header-timeout`; a keep-alive one
//!   may wait `--idle-timeout` for its next request's first byte, then has
//!   `--header-timeout` for the rest of the head. A sweep every
//!   [`SWEEP`] closes the late ones (a head that was late gets 408);
//! - any connection whose socket has taken no response byte for
//!   `--send-timeout` (a client that stopped reading) is closed, and its
//!   request's guest, if any, stopped.
//!
//! hyper's own `header_read_timeout` (which starts when the previous
//! response ends) is set to the sum of both as a backstop.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// How often idle connections are checked against their deadlines.
pub const SWEEP: Duration = Duration::from_millis(250);

/// Written as-is on a connection refused before hyper reads anything from
/// it (so no request was parsed), then the connection closes.
pub const REFUSED_503: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
Content-Type: text/plain\r\nContent-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n";
/// Written as-is on an idle connection whose request head came too slowly.
pub const TIMEOUT_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\n\
Content-Length: 27\r\nConnection: close\r\n\r\nrequest head took too long\n";

/// The connection limits ([`super::ServeConfig`]'s).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max: usize,
    pub per_peer: usize,
    pub header: Duration,
    pub idle: Duration,
    pub send: Duration,
}

/// Why the front closed a connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Closed {
    /// Still open.
    No = 0,
    /// Made room for a newer connection (over a cap, this was the longest idle).
    Evicted = 1,
    /// A keep-alive connection idle for `--idle-timeout`.
    Idle = 2,
    /// No whole request head within `--header-timeout`.
    HeadTimeout = 3,
    /// The client took no response byte for `--send-timeout`.
    SendTimeout = 4,
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `--max-connections` open, none idle.
    Full,
    /// `--max-connections-per-peer` from its address, none idle.
    Peer,
}

/// One open connection, shared by its task, its requests and the sweep.
#[derive(Debug)]
pub struct Conn {
    id: u64,
    pub peer: IpAddr,
    /// Requests in progress (a response still streaming counts).
    active: AtomicU32,
    /// Requests served so far.
    served: AtomicU32,
    /// When it last became idle (ms on the registry's clock).
    idle_since: AtomicU64,
    /// The first byte read while idle (0: none yet).
    first_byte: AtomicU64,
    /// Since when a write has found the socket full (0: not blocked).
    blocked: AtomicU64,
    closed: AtomicU8,
    /// Wakes the connection's task to close it.
    pub close: Notify,
    clock: Instant,
}

impl Conn {
    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64 + 1
    }

    /// Why the front closed it (`Closed::No` while open).
    pub fn closed(&self) -> Closed {
        match self.closed.load(Relaxed) {
            1 => Closed::Evicted,
            2 => Closed::Idle,
            3 => Closed::HeadTimeout,
            4 => Closed::SendTimeout,
            _ => Closed::No,
        }
    }

    fn shut(&self, why: Closed) {
        self.closed.store(why as u8, Relaxed);
        self.close.notify_one();
    }

    fn idle(&self) -> bool {
        self.active.load(Relaxed) == 0
    }

    /// A request starts: the connection is busy until the guard drops
    /// (after its response's last byte).
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Relaxed);
        Busy(self.clone())
    }

    /// Its deadline has passed: why.
    fn late(&self, now: u64, l: &Limits) -> Option<Closed> {
        let ms = |d: Duration| d.as_millis() as u64;
        let blocked = self.blocked.load(Relaxed);
        if blocked != 0 && now.saturating_sub(blocked) > ms(l.send) {
            return Some(Closed::SendTimeout);
        }
        if !self.idle() {
            return None;
        }
        let first = self.first_byte.load(Relaxed);
        let since = self.idle_since.load(Relaxed);
        if first != 0 {
            (now.saturating_sub(first) > ms(l.header)).then_some(Closed::HeadTimeout)
        } else if self.served.load(Relaxed) == 0 {
            (now.saturating_sub(since) > ms(l.header)).then_some(Closed::HeadTimeout)
        } else {
            (now.saturating_sub(since) > ms(l.idle)).then_some(Closed::Idle)
        }
    }
}

/// Marks a connection's request in progress; dropped with its response.
pub struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        let c = &self.0;
        c.served.fetch_add(1, Relaxed);
        c.first_byte.store(0, Relaxed);
        c.idle_since.store(c.now(), Relaxed);
        c.active.fetch_sub(1, Relaxed);
    }
}

#[derive(Default)]
struct Inner {
    next: u64,
    open: HashMap<u64, Arc<Conn>>,
    per_peer: HashMap<IpAddr, usize>,
}

impl Inner {
    fn forget(&mut self, id: u64) -> Option<Arc<Conn>> {
        let c = self.open.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&c.peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&c.peer);
            }
        }
        Some(c)
    }

    /// Closes the longest-idle connection (of `peer` when given): whether
    /// there was one.
    fn evict(&mut self, peer: Option<IpAddr>) -> bool {
        let oldest = self
            .open
            .values()
            .filter(|c| c.idle() && peer.is_none_or(|p| p == c.peer))
            .min_by_key(|c| c.idle_since.load(Relaxed))
            .map(|c| c.id);
        match oldest.and_then(|id| self.forget(id)) {
            Some(c) => {
                c.shut(Closed::Evicted);
                true
            }
            None => false,
        }
    }
}

/// The registry of open connections.
pub struct Conns {
    limits: Limits,
    clock: Instant,
    inner: Mutex<Inner>,
}

impl Conns {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            clock: Instant::now(),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open(&self) -> usize {
        self.lock().open.len()
    }

    /// Admits a new connection from `peer`, closing the longest-idle one
    /// over a cap; the evicted count is returned beside it.
    pub fn admit(&self, peer: IpAddr) -> Result<(Arc<Conn>, u32), Refused> {
        let mut g = self.lock();
        let mut evicted = 0;
        if g.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.per_peer {
            if !g.evict(Some(peer)) {
                return Err(Refused::Peer);
            }
            evicted += 1;
        }
        if g.open.len() >= self.limits.max {
            if !g.evict(None) {
                return Err(Refused::Full);
            }
            evicted += 1;
        }
        g.next += 1;
        let c = Arc::new(Conn {
            id: g.next,
            peer,
            active: AtomicU32::new(0),
            served: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            closed: AtomicU8::new(0),
            close: Notify::new(),
            clock: self.clock,
        });
        c.idle_since.store(c.now(), Relaxed);
        g.open.insert(c.id, c.clone());
        *g.per_peer.entry(peer).or_default() += 1;
        Ok((c, evicted))
    }

    /// The connection has ended (its task is done).
    pub fn remove(&self, c: &Conn) {
        self.lock().forget(c.id);
    }

    /// Closes every idle connection past its deadline.
    pub fn sweep(&self) {
        let mut g = self.lock();
        let now = self.clock.elapsed().as_millis() as u64 + 1;
        let late: Vec<(u64, Closed)> = g
            .open
            .values()
            .filter_map(|c| c.late(now, &self.limits).map(|w| (c.id, w)))
            .collect();
        for (id, why) in late {
            if let Some(c) = g.forget(id) {
                c.shut(why);
            }
        }
    }
}

/// A connection's socket, noting when the first byte of a request head
/// arrives on an idle connection (the header deadline runs from there).
pub struct Watched {
    pub io: tokio::net::TcpStream,
    pub conn: Arc<Conn>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.io).poll_read(cx, buf);
        let c = &me.conn;
        if buf.filled().len() > before && c.idle() && c.first_byte.load(Relaxed) == 0 {
            c.first_byte.store(c.now(), Relaxed);
        }
        r
    }
}

impl Watched {
    /// Notes when writes start finding the socket full, and that they
    /// stopped (the send deadline runs between two writes that progress).
    fn wrote<T>(&self, r: Poll<T>) -> Poll<T> {
        let c = &self.conn;
        match r {
            Poll::Pending => {
                if c.blocked.load(Relaxed) == 0 {
                    c.blocked.store(c.now(), Relaxed);
                }
            }
            Poll::Ready(_) => c.blocked.store(0, Relaxed),
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_write(cx, buf);
        me.wrote(r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
        me.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max: 3,
            per_peer: 2,
            header: Duration::from_millis(50),
            idle: Duration::from_millis(200),
            send: Duration::from_millis(50),
        }
    }

    #[test]
    fn caps_close_the_longest_idle_first_and_refuse_when_none_is() {
        let r = Conns::new(limits());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let (a1, _) = r.admit(a).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let (a2, _) = r.admit(a).unwrap();
        // a's third: its own longest idle (a1) makes room.
        let (a3, ev) = r.admit(a).unwrap();
        assert_eq!(
            (ev, a1.closed(), a2.closed()),
            (1, Closed::Evicted, Closed::No)
        );
        let _busy = (a2.busy(), a3.busy());
        // a is at its share with both busy: refused, not evicted.
        assert_eq!(r.admit(a).unwrap_err(), Refused::Peer);
        let (_b1, _) = r.admit(b).unwrap();
        let _b1busy = _b1.busy();
        // 3 open, all busy.
        assert_eq!(r.admit(b).unwrap_err(), Refused::Full);
        assert_eq!(r.open(), 3);
    }

    #[test]
    fn sweep_closes_late_heads_and_idle_keep_alives() {
        let r = Conns::new(limits());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let (fresh, _) = r.admit(a).unwrap();
        let (kept, _) = r.admit(a).unwrap();
        drop(kept.busy()); // served one request: keep-alive now
        std::thread::sleep(Duration::from_millis(80));
        r.sweep();
        assert_eq!(fresh.closed(), Closed::HeadTimeout);
        assert_eq!(kept.closed(), Closed::No);
        std::thread::sleep(Duration::from_millis(150));
        r.sweep();
        assert_eq!(kept.closed(), Closed::Idle);
        assert_eq!(r.open(), 0);
    }

    #[test]
    fn sweep_closes_a_busy_connection_whose_writes_are_stuck() {
        let r = Conns::new(limits());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let (c, _) = r.admit(a).unwrap();
        let _busy = c.busy();
        c.blocked.store(c.now(), Relaxed);
        r.sweep();
        assert_eq!(c.closed(), Closed::No, "not yet");
        std::thread::sleep(Duration::from_millis(80));
        r.sweep();
        assert_eq!(c.closed(), Closed::SendTimeout);
    }
}
