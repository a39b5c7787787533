//! A running `skiff serve` and a small HTTP/1.1 client for tests
//! (tests/serve.rs, tests/slow_clients.rs).
#![allow(dead_code)]

use super::{guest, make_snapshot, skiff, TempDir};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `skiff serve`; killed (with its pool and workers, which end
/// with it) when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// `skiff serve --listen 127.0.0.1:0 FLAGS... KERNEL ARGS`, once it
    /// says where it listens.
    pub fn start(flags: &[&str], kernel: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(skiff())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(flags)
            .arg(kernel)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn skiff serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving http://").nth(1) {
                    let addr = rest.split(' ').next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().expect("address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("skiff serve did not start: {}", log.lock().unwrap());
            }
        };
        Server { child, addr, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The log once it holds `needle` (its lines arrive through a pipe,
    /// a little after the response); panics after 10 s.
    pub fn log_with(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {needle:?} in: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// One request on a fresh connection.
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Resp {
        let mut s = self.connect();
        send(&mut s, method, path, body, &[]);
        read_response(&mut BufReader::new(s))
    }
}

impl Drop for Server {
    /// SIGTERM (so the server removes its pool's socket directory), then
    /// SIGKILL if it has not ended within 3 s; its pool and workers end
    /// with it either way (PDEATHSIG).
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended cleanly (length reached, or the last chunk came).
    pub complete: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn send(s: &mut TcpStream, method: &str, path: &str, body: &[u8], extra: &[&str]) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in extra {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut msg = head.into_bytes();
    msg.extend_from_slice(body);
    s.write_all(&msg).unwrap();
}

pub fn read_line(r: &mut impl BufRead) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l.trim_end().to_string()
}

/// Reads one response: Content-Length or chunked bodies.
pub fn read_response(r: &mut impl BufRead) -> Resp {
    let status_line = read_line(r);
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let l = read_line(r);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut resp = Resp {
        status,
        headers,
        body: Vec::new(),
        complete: false,
    };
    if let Some(n) = resp.header("content-length") {
        let n: usize = n.parse().unwrap();
        resp.body.resize(n, 0);
        resp.complete = r.read_exact(&mut resp.body).is_ok();
    } else if resp.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut l = String::new();
            if r.read_line(&mut l).unwrap_or(0) == 0 {
                break; // cut short: no last chunk
            }
            let n = usize::from_str_radix(l.trim(), 16).unwrap();
            if n == 0 {
                read_line(r);
                resp.complete = true;
                break;
            }
            let at = resp.body.len();
            resp.body.resize(at + n, 0);
            if r.read_exact(&mut resp.body[at..]).is_err() {
                break;
            }
            read_line(r);
        }
    }
    resp
}

pub fn snapshot(dir: &TempDir, name: &str) -> PathBuf {
    make_snapshot(dir.path(), name, "--mem=32", &[], &[])
}

pub fn restored(dir: &TempDir, name: &str, flags: &[&str]) -> Server {
    let snap = snapshot(dir, name);
    let mut all = vec!["--mem=32", "--restore", snap.to_str().unwrap()];
    all.extend_from_slice(flags);
    Server::start(&all, &guest(name), &[])
}
