//! Soak: normal and slow traffic at once against `skiff serve` and `skiff
//! agent` on loopback (issue 28). Normal: two keep-alive clients POSTing
//! 1 KiB to serve (echo, restored), and `skiff run --accel=remote sgemm`
//! runs one after another against the agent. Slow, kept up for the whole
//! run: connections that send half a head, a body that never ends, idle
//! keep-alives, a burst of idle connections every second (serve); idle
//! connections and a frame trickled byte by byte (agent).
//!
//! Prints requests served, p50/p99, refused or closed connections, and
//! both servers' open fds and RSS at start and end.
//!
//! `cargo bench --bench soak` (SKIFF_SOAK_SECS: length, default 20;
//! docs/serve.md has a 600 s run).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MEM: &str = "--mem=32";
/// Slow connections each attacker keeps open (serve; the agent gets a
/// quarter): over serve's per-peer cap only together.
const SLOW: usize = 100;

fn skiff() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skiff"))
}

/// A child killed (and reaped) on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd`; returns it and what `pick` finds in the first line it
/// matches on stdout (agent) or stderr (serve). Both are drained.
fn start(mut cmd: Command, stdout: bool, pick: fn(&str) -> Option<String>) -> (Guard, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn skiff");
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let drain = move |r: Box<dyn Read + Send>, tx: Option<std::sync::mpsc::Sender<String>>| {
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                if let (Some(tx), Some(v)) = (&tx, pick(&line)) {
                    let _ = tx.send(v);
                }
            }
        });
    };
    let (o, e) = if stdout {
        (Some(tx), None)
    } else {
        (None, Some(tx))
    };
    drain(Box::new(out), o);
    drain(Box::new(err), e);
    let child = Guard(child);
    let v = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("skiff did not start");
    (child, v)
}

/// (open fds, RSS in KiB) of `pid`.
fn usage(pid: u32) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    (fds, rss)
}

fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    lat: Mutex<Vec<Duration>>,
}

/// Reads one response's status and skips its Content-Length body.
fn response(r: &mut impl BufRead) -> Option<u16> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut len = 0;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(status)
}

/// A keep-alive client POSTing 1 KiB until `stop`; a connection the
/// server closed between requests (idle, evicted) is opened again, as
/// any HTTP client does.
fn normal_http(addr: String, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: 1024\r\n\r\n{}",
        "x".repeat(1024)
    );
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    while !stop.load(Relaxed) {
        let (w, r) = match conn.as_mut() {
            Some(c) => c,
            None => {
                let Ok(s) = TcpStream::connect(&addr) else {
                    t.failed.fetch_add(1, Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                let r = BufReader::new(s.try_clone().unwrap());
                conn.insert((s, r))
            }
        };
        let start = Instant::now();
        let got = w.write_all(req.as_bytes()).ok().and_then(|_| response(r));
        match got {
            Some(200) => {
                t.ok.fetch_add(1, Relaxed);
                t.lat.lock().unwrap().push(start.elapsed());
            }
            Some(_) => {
                t.failed.fetch_add(1, Relaxed);
                conn = None;
            }
            // Closed under us between requests: retried on a new one.
            None => conn = None,
        }
    }
}

/// `skiff run --accel=remote sgemm` one after another until `stop`.
fn normal_sgemm(remote: String, stop: Arc<AtomicBool>, t: Arc<Tally>) {
    let kernel = guest_images::image("sgemm");
    while !stop.load(Relaxed) {
        let start = Instant::now();
        let ok = Command::new(skiff())
            .args(["run", "--accel=remote", &remote])
            .arg(&kernel)
            .env_remove("VACCEL_PLUGINS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        let ok = match ok {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                eprintln!(
                    "soak: sgemm failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                false
            }
            Err(_) => false,
        };
        if ok {
            t.ok.fetch_add(1, Relaxed);
            t.lat.lock().unwrap().push(start.elapsed());
        } else {
            t.failed.fetch_add(1, Relaxed);
        }
    }
}

/// Keeps `n` connections open that each sent `first` (and, every
/// `drip`, one more byte of `drip_byte`), replacing those the server
/// closes; counts the closed ones.
fn slow(
    addr: String,
    n: usize,
    first: Vec<u8>,
    drip: Option<u8>,
    stop: Arc<AtomicBool>,
    closed: Arc<AtomicU64>,
) {
    let mut open: Vec<TcpStream> = Vec::new();
    while !stop.load(Relaxed) {
        open.retain_mut(|c| {
            let mut b = [0u8; 256];
            let alive = match c.read(&mut b) {
                Ok(0) => false,
                Ok(_) => true, // an answer (200, 408, 503): a close may follow
                Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock),
            };
            let alive = alive && drip.is_none_or(|d| c.write_all(&[d]).is_ok());
            if !alive {
                closed.fetch_add(1, Relaxed);
            }
            alive
        });
        while open.len() < n {
            let Ok(mut c) = TcpStream::connect(&addr) else {
                break;
            };
            let _ = c.write_all(&first);
            let _ = c.set_nonblocking(true);
            open.push(c);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every second, `n` connections that connect and send nothing, dropped
/// a second later.
fn bursts(addr: String, n: usize, stop: Arc<AtomicBool>) {
    while !stop.load(Relaxed) {
        let burst: Vec<_> = (0..n)
            .filter_map(|_| TcpStream::connect(&addr).ok())
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        drop(burst);
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    // Under `cargo test --benches`: a 2 s check that it runs.
    let secs: u64 = match common::quick() {
        true => 2,
        false => common::env_num("SKIFF_SOAK_SECS", 20),
    };
    let dir = std::env::temp_dir().join(format!("skiff-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let echo = guest_images::image("echo");
    let snap = common::snapshot(&dir, &echo, "echo", MEM);
    let mport = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(skiff());
    // Every client here is 127.0.0.1, as behind one proxy: the per-peer
    // caps are the totals, or the normal clients would share the
    // attackers' (tests/slow_clients covers those caps).
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--workers=2", MEM])
        .args(["--max-connections-per-peer=512", "--queue-per-peer=64"])
        .arg(format!("--metrics=127.0.0.1:{mport}"))
        .arg("--restore")
        .arg(&snap)
        .arg(&echo);
    let (serve, http) = start(cmd, false, |l| {
        Some(
            l.split("serving http://")
                .nth(1)?
                .split(' ')
                .next()?
                .to_string(),
        )
    });
    let mut cmd = Command::new(skiff());
    cmd.args(["agent", "-a", "tcp://127.0.0.1:0", "--accel=cpu"])
        .arg("--max-connections-per-peer=64")
        .env_remove("VACCEL_PLUGINS");
    let (agent, remote) = start(cmd, true, |l| {
        l.starts_with("tcp://").then(|| l.to_string())
    });
    let tcp = remote.trim_start_matches("tcp://").to_string();
    let remote = format!("--accel-remote={remote}");
    let (spid, apid) = (serve.0.id(), agent.0.id());
    // Warm: the first restores and runs.
    std::thread::sleep(Duration::from_millis(500));
    let (s0, a0) = (usage(spid), usage(apid));

    let stop = Arc::new(AtomicBool::new(false));
    let (web, acc) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let (s_closed, a_closed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut threads = Vec::new();
    let mut spawn = |f: Box<dyn FnOnce() + Send>| threads.push(std::thread::spawn(f));
    for _ in 0..2 {
        let (a, s, t) = (http.clone(), stop.clone(), web.clone());
        spawn(Box::new(move || normal_http(a, s, t)));
    }
    let (s, t) = (stop.clone(), acc.clone());
    let r = remote.clone();
    spawn(Box::new(move || normal_sgemm(r, s, t)));
    let head = b"POST / HTTP/1.1\r\nHost: soak\r\n".to_vec();
    let body = b"POST / HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\nab".to_vec();
    let keep = b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n".to_vec();
    for (first, n, drip) in [
        (head, SLOW, None),
        (body, SLOW, Some(b'x')),
        (keep, SLOW / 2, None),
    ] {
        let (a, s, c) = (http.clone(), stop.clone(), s_closed.clone());
        spawn(Box::new(move || slow(a, n, first, drip, s, c)));
    }
    let (a, s) = (http.clone(), stop.clone());
    spawn(Box::new(move || bursts(a, SLOW, s)));
    let trickle = vec![0, 0, 0, 100, 0, 0, 0, 1, 1, 0];
    for (first, n, drip) in [
        (Vec::new(), SLOW / 4, None),
        (trickle, SLOW / 4, Some(0x0a)),
    ] {
        let (a, s, c) = (tcp.clone(), stop.clone(), a_closed.clone());
        spawn(Box::new(move || slow(a, n, first, drip, s, c)));
    }
    let begun = Instant::now();
    let mut peak = (s0, a0);
    while begun.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        let (s, a) = (usage(spid), usage(apid));
        peak.0 = (peak.0 .0.max(s.0), peak.0 .1.max(s.1));
        peak.1 = (peak.1 .0.max(a.0), peak.1 .1.max(a.1));
    }
    stop.store(true, Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // The attackers' sockets are closed; give both a moment to notice.
    std::thread::sleep(Duration::from_secs(2));
    let (s1, a1) = (usage(spid), usage(apid));
    let text = TcpStream::connect(("127.0.0.1", mport))
        .ok()
        .and_then(|mut c| {
            c.write_all(b"GET / HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut s = String::new();
            c.read_to_string(&mut s).ok()?;
            Some(s)
        })
        .unwrap_or_default();
    drop((serve, agent));
    let _ = std::fs::remove_dir_all(&dir);

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("soak: {secs} s, loadavg at end {}", load.trim());
    let (p50, p99) = percentiles(std::mem::take(&mut *web.lat.lock().unwrap()));
    println!(
        "serve: {} normal requests answered 200, {} not; p50 {p50:.2} ms, p99 {p99:.2} ms",
        web.ok.load(Relaxed),
        web.failed.load(Relaxed)
    );
    println!(
        "serve: slow connections closed by it {}; refused at accept {} (total cap) + {} (peer cap); \
         closed: {} evicted, {} idle, {} head timeouts; 408s {}, 503s {}",
        s_closed.load(Relaxed),
        metric(&text, "skiff_serve_connections_refused_total{cap=\"total\"}"),
        metric(&text, "skiff_serve_connections_refused_total{cap=\"peer\"}"),
        metric(&text, "skiff_serve_connections_closed_total{reason=\"evicted\"}"),
        metric(&text, "skiff_serve_connections_closed_total{reason=\"idle\"}"),
        metric(&text, "skiff_serve_connections_closed_total{reason=\"header_timeout\"}"),
        metric(&text, "skiff_serve_requests_total{code=\"408\"}"),
        metric(&text, "skiff_serve_requests_total{code=\"503\"}"),
    );
    let (p50, p99) = percentiles(std::mem::take(&mut *acc.lat.lock().unwrap()));
    println!(
        "agent: {} sgemm runs ok, {} failed; p50 {p50:.1} ms, p99 {p99:.1} ms (a whole skiff run each); \
         slow connections it closed {}",
        acc.ok.load(Relaxed),
        acc.failed.load(Relaxed),
        a_closed.load(Relaxed)
    );
    for (name, start, peak, end) in [("serve", s0, peak.0, s1), ("agent", a0, peak.1, a1)] {
        println!(
            "{name}: fds {} at start, {} peak, {} at end; RSS {} KiB at start, {} peak, {} at end",
            start.0, peak.0, end.0, start.1, peak.1, end.1
        );
    }
}
