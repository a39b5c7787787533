//! Helpers for live migration's tests (tests/migrate.rs) and benchmark
//! (benches/migrate.rs): a skiff running in the background whose output is
//! collected as it comes, `skiff ctl`, addresses to migrate to, a TCP relay
//! that can stall or record a migration stream, and the ticker guest's
//! lines. Everything started here is killed and removed on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A child process killed and reaped on drop.
pub struct Killed(Option<Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A process in the background, stdout and stderr collected as they come.
pub struct Proc {
    child: Killed,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    pub what: String,
}

fn collect(mut pipe: impl Read + Send + 'static, into: Arc<Mutex<String>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf) {
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let (out, err) = Default::default();
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&out)),
            collect(child.stderr.take().unwrap(), Arc::clone(&err)),
        ];
        Self {
            child: Killed(Some(child)),
            out,
            err,
            readers,
            what,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.0.as_ref().unwrap().id() as i32
    }

    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    pub fn running(&mut self) -> bool {
        self.child.0.as_mut().unwrap().try_wait().unwrap().is_none()
    }

    /// Waits until stdout holds `n` occurrences of `needle`, or panics after `limit`.
    pub fn wait_for(&mut self, needle: &str, n: usize, limit: Duration) {
        let start = Instant::now();
        while self.out.lock().unwrap().matches(needle).count() < n {
            let running = self.running();
            assert!(
                start.elapsed() < limit && running,
                "{} never printed {n} x {needle:?} (running: {}); stdout tail {:?}, stderr {:?}",
                self.what,
                running,
                tail(&self.stdout()),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, now.
    pub fn kill9(&mut self) {
        let _ = self.child.0.as_mut().unwrap().kill();
    }

    /// Waits for the end (killing it after `limit`): exit code, stdout, stderr.
    pub fn finish(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let mut c = self.child.0.take().unwrap();
        let start = Instant::now();
        let status = loop {
            if let Some(s) = c.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > limit {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "{} still ran after {limit:?}; stdout tail {:?}, stderr {:?}",
                    self.what,
                    tail(&self.stdout()),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        (status.code(), self.stdout(), self.stderr())
    }
}

fn tail(s: &str) -> &str {
    let cut = s.len().saturating_sub(600);
    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    &s[cut..]
}

/// `skiff ctl SOCKET WORDS...` in the background (a migrate blocks).
pub fn ctl_spawn(skiff: &Path, sock: &Path, words: &[&str]) -> Proc {
    let mut c = Command::new(skiff);
    c.arg("ctl").arg(sock).args(words);
    Proc::spawn(c)
}

/// `skiff ctl SOCKET WORDS...`, waited for (up to `limit`).
pub fn ctl(
    skiff: &Path,
    sock: &Path,
    words: &[&str],
    limit: Duration,
) -> (Option<i32>, String, String) {
    ctl_spawn(skiff, sock, words).finish(limit)
}

/// Waits until `path` exists (a socket skiff creates), or panics.
pub fn wait_path(path: &Path, p: &mut Proc, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < limit && p.running(),
            "{} never made {}: stderr {:?}",
            p.what,
            path.display(),
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A loopback TCP port nobody listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether something listens on loopback TCP `port` (from /proc/net/tcp,
/// since connecting to a `--incoming` would be taken for the source).
pub fn listening(port: u16) -> bool {
    listening_in("/proc/net/tcp", port)
}

/// As [`listening`], in the TCP table `table` (`/proc/PID/net/tcp`: the
/// network namespace of process PID).
pub fn listening_in(table: &str, port: u16) -> bool {
    let want = format!(":{port:04X} ");
    std::fs::read_to_string(table)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && format!("{} ", &f[1][f[1].len() - 5..]) == want && f[3] == "0A"
        })
}

/// Waits until a destination listens on `addr` (`tcp://…:PORT` or `unix://PATH`).
pub fn wait_listening(addr: &str, p: &mut Proc, limit: Duration) {
    if let Some(path) = addr.strip_prefix("unix://") {
        return wait_path(Path::new(path), p, limit);
    }
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let start = Instant::now();
    while !listening(port) {
        assert!(
            start.elapsed() < limit && p.running(),
            "{} never listened on {addr}: stderr {:?}",
            p.what,
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// What a [`Relay`] does with the source's bytes after `stall_after`.
pub struct Relay {
    pub addr: String,
    forwarded: Arc<AtomicU64>,
    stalled: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
    cut: Arc<AtomicBool>,
    record: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

/// A TCP relay from a migrating source to a destination at `upstream`:
/// forwards the destination's replies as they come, and the source's
/// bytes up to `stall_after` (then stops reading from the source until
/// [`Relay::release`] or [`Relay::cut`]), recording them.
impl Relay {
    pub fn new(upstream: &str, stall_after: u64) -> Self {
        Self::with(upstream, stall_after, false)
    }

    /// A relay that forwards everything but the destination's last
    /// answer (its word that it took the guest), then closes the
    /// source's connection: the source cannot know whether the guest
    /// runs there.
    pub fn swallowing_the_confirmation(upstream: &str) -> Self {
        Self::with(upstream, u64::MAX, true)
    }

    fn with(upstream: &str, stall_after: u64, swallow: bool) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("tcp://{}", l.local_addr().unwrap());
        let up = upstream.strip_prefix("tcp://").unwrap().to_string();
        let forwarded = Arc::new(AtomicU64::new(0));
        let stalled = Arc::new(AtomicBool::new(false));
        let release = Arc::new(AtomicBool::new(false));
        let cut = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(Vec::new()));
        let (f, s, r, c, rec) = (
            forwarded.clone(),
            stalled.clone(),
            release.clone(),
            cut.clone(),
            record.clone(),
        );
        let thread = std::thread::spawn(move || {
            let Ok((mut src, _)) = l.accept() else { return };
            let Ok(mut dst) = TcpStream::connect(&up) else {
                return;
            };
            let (mut src_r, mut dst_w) = (src.try_clone().unwrap(), dst.try_clone().unwrap());
            let back = std::thread::spawn(move || {
                if swallow {
                    // The answers are 9-byte Ok records: to the
                    // handshake, to the end of the pre-copy, to the guest.
                    let _ = std::io::copy(&mut (&mut dst).take(18), &mut src);
                    let _ = dst.read_exact(&mut [0u8; 9]);
                } else {
                    let _ = std::io::copy(&mut dst, &mut src);
                }
                let _ = src.shutdown(Shutdown::Both);
            });
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let room = stall_after.saturating_sub(f.load(Ordering::SeqCst));
                if room == 0 && !r.load(Ordering::SeqCst) {
                    s.store(true, Ordering::SeqCst);
                    if c.load(Ordering::SeqCst) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                let want = if r.load(Ordering::SeqCst) {
                    buf.len()
                } else {
                    buf.len().min(room as usize)
                };
                let n = match src_r.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                rec.lock().unwrap().extend_from_slice(&buf[..n]);
                if dst_w.write_all(&buf[..n]).is_err() {
                    break;
                }
                f.fetch_add(n as u64, Ordering::SeqCst);
            }
            let _ = dst_w.shutdown(Shutdown::Both);
            let _ = src_r.shutdown(Shutdown::Both);
            let _ = back.join();
        });
        Self {
            addr,
            forwarded,
            stalled,
            release,
            cut,
            record,
            thread: Some(thread),
        }
    }

    /// Waits until the source has sent `stall_after` bytes and is held.
    pub fn wait_stalled(&self, limit: Duration) {
        let start = Instant::now();
        while !self.stalled.load(Ordering::SeqCst) {
            assert!(
                start.elapsed() < limit,
                "the source sent only {} bytes",
                self.forwarded.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn release(&self) {
        self.release.store(true, Ordering::SeqCst);
    }

    /// Closes both connections where they stand.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Everything the source sent through, once its connection has ended.
    pub fn recorded(mut self) -> Vec<u8> {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(&mut *self.record.lock().unwrap())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        // A relay nobody connected to still blocks in accept: leave it.
    }
}

/// One `tick SEQ MONO WALL` line of the ticker guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    pub seq: u64,
    pub mono: u64,
    pub wall: u64,
}

/// The ticks in `out`, in order.
pub fn ticks(out: &str) -> Vec<Tick> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("tick ")?.split(' ');
            Some(Tick {
                seq: w.next()?.parse().ok()?,
                mono: w.next()?.parse().ok()?,
                wall: w.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The largest gap between consecutive ticks' wall clock, and where (the
/// later tick's index).
pub fn largest_wall_gap(t: &[Tick]) -> (u64, usize) {
    t.windows(2)
        .enumerate()
        .map(|(i, w)| (w[1].wall.saturating_sub(w[0].wall), i + 1))
        .max()
        .unwrap_or((0, 0))
}

/// The fields of a `downtime X ms, total Y ms, N rounds, B bytes` report.
#[derive(Debug, Clone, Copy, Default)]
pub struct Report {
    pub downtime_ms: f64,
    pub total_ms: f64,
    pub rounds: u64,
    pub bytes: u64,
}

pub fn report(line: &str) -> Option<Report> {
    let num = |key: &str| -> Option<&str> {
        let before = line.split(key).next()?;
        if before.len() == line.len() {
            return None;
        }
        before.rsplit([' ', ':', ',']).find(|w| !w.is_empty())
    };
    let after = |key: &str| -> Option<&str> {
        let rest = line.split_once(key)?.1;
        rest.split_whitespace().next()
    };
    Some(Report {
        downtime_ms: after("downtime ")?.parse().ok()?,
        total_ms: after("total ")?.parse().ok()?,
        rounds: num(" rounds")?.parse().ok()?,
        bytes: num(" bytes")?.parse().ok()?,
    })
}
