//! Bounded attackers on loopback against `skiff serve` and `skiff agent`
//! (issue 28): slow headers, slow bodies, idle keep-alives, a connection
//! flood from one peer, many small pipelined requests; meanwhile a normal
//! client is served. Every attacker is a bounded set of sockets owned by
//! the test (closed when it ends, also on failure), with small server
//! limits so a few hundred sockets go well over them.

mod common;
mod remote_agent;

use common::serve::*;
use common::*;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Attackers per test: over every limit set below, well under `ulimit -n`.
const ATTACKERS: usize = 200;

/// `n` requests from a well-behaved client, each on a fresh connection:
/// all must be answered 200 with their body echoed. Their latencies.
fn normal(s: &Server, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let body = random_bytes(64 + i, i as u64);
            let t = Instant::now();
            let r = s.request("POST", "/", &body);
            let took = t.elapsed();
            assert_eq!(r.status, 200, "normal request {i}: {}", s.log());
            assert!(r.body == body, "normal request {i}: wrong body");
            took
        })
        .collect()
}

/// Prints the normal client's p50/p99 under `what` (the issue asks for
/// p99 under 50 ms; the benchmark reports it on a quiet machine).
fn report(what: &str, mut lat: Vec<Duration>) {
    lat.sort();
    let at = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    eprintln!(
        "{what}: {} normal requests, p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        at(0.5),
        at(0.99)
    );
}

/// `n` connections that each send `bytes` and then nothing more.
fn stalled(addr: SocketAddr, n: usize, bytes: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|_| {
            let mut c = TcpStream::connect(addr).ok()?;
            c.set_read_timeout(Some(scaled(Duration::from_secs(20))))
                .ok()?;
            let _ = c.write_all(bytes);
            Some(c)
        })
        .collect()
}

/// What the server sent on `c` before closing it (empty: closed silently;
/// `None`: still open after the read timeout).
fn until_closed(c: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    match c.read_to_end(&mut got) {
        Ok(_) => Some(String::from_utf8_lossy(&got).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Some(String::from_utf8_lossy(&got).into_owned())
        }
        Err(_) => None,
    }
}

/// `--FLAG=MS` for `ms` stretched on the emulated lane ([`scaled`]).
fn after(flag: &str, ms: u64) -> String {
    format!("--{flag}={}", scaled(Duration::from_millis(ms)).as_millis())
}

/// A port free now, for `--metrics`.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The metrics text from `--metrics 127.0.0.1:PORT`.
fn metrics(port: u16) -> String {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send(&mut c, "GET", "/metrics", b"", &["Connection: close"]);
    String::from_utf8(read_response(&mut BufReader::new(c)).body).unwrap()
}

/// The value of the metrics line starting `name` (labels included).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[test]
fn slow_bodies_hold_a_connection_never_a_worker_and_get_408() {
    let dir = TempDir::new("slow-bodies");
    let body_timeout = after("body-timeout", 3000);
    let s = restored(
        &dir,
        "echo",
        &[
            "--workers=2",
            "--queue=4",
            &body_timeout,
            "--max-connections-per-peer=1000",
            "--max-connections=1000",
        ],
    );
    // The attack: a body of 100 promised, 2 sent. Before, 66 such
    // connections took both workers and the queue.
    let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab";
    let mut slow = stalled(s.addr, ATTACKERS, head);
    assert_eq!(slow.len(), ATTACKERS);
    std::thread::sleep(Duration::from_millis(300));
    report("slow bodies", normal(&s, 100));
    // Each gets 408 once its body is late, and is closed.
    for c in slow.iter_mut().take(20) {
        let got = until_closed(c).expect("a slow body's connection must close");
        assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
    }
    s.log_with("(body not in within --body-timeout)");
}

#[test]
fn slow_headers_get_408_and_their_connections_close() {
    let dir = TempDir::new("slow-headers");
    let port = free_port();
    let m = format!("--metrics=127.0.0.1:{port}");
    let header_timeout = after("header-timeout", 1000);
    let s = restored(
        &dir,
        "echo",
        &[
            &header_timeout,
            "--max-connections-per-peer=1000",
            "--max-connections=1000",
            &m,
        ],
    );
    let t = Instant::now();
    let mut slow = stalled(s.addr, ATTACKERS, b"POST / HTTP/1.1\r\nHost: x\r\n");
    report("slow headers", normal(&s, 50));
    for c in &mut slow {
        let got = until_closed(c).expect("a slow head's connection must close");
        assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
    }
    // Within the header timeout plus the sweep, with slack for a loaded
    // machine.
    assert!(
        t.elapsed() < scaled(Duration::from_secs(10)),
        "{:?}",
        t.elapsed()
    );
    let text = metrics(port);
    assert!(
        metric(
            &text,
            "skiff_serve_connections_closed_total{reason=\"header_timeout\"}"
        ) >= ATTACKERS as u64,
        "{text}"
    );
    assert_eq!(metric(&text, "skiff_serve_connections_open"), 0, "{text}");
    s.log_with("(no whole request head within --header-timeout)");
}

#[test]
fn idle_keep_alives_close_after_the_idle_timeout() {
    let dir = TempDir::new("idle-keep-alive");
    let idle_timeout = after("idle-timeout", 1000);
    let s = restored(
        &dir,
        "echo",
        &[
            &idle_timeout,
            "--max-connections-per-peer=1000",
            "--max-connections=1000",
        ],
    );
    // One request each, then idle with the connection kept alive.
    let mut idle: Vec<TcpStream> = (0..ATTACKERS / 2)
        .map(|_| {
            let mut c = s.connect();
            send(&mut c, "POST", "/", b"hi", &[]);
            let mut r = BufReader::new(c.try_clone().unwrap());
            assert_eq!(read_response(&mut r).status, 200);
            c.set_read_timeout(Some(scaled(Duration::from_secs(20))))
                .unwrap();
            c
        })
        .collect();
    report("idle keep-alives", normal(&s, 50));
    for c in &mut idle {
        let got = until_closed(c).expect("an idle keep-alive must close");
        assert_eq!(got, "", "closed quietly, between requests");
    }
}

#[test]
fn a_connection_flood_from_one_peer_closes_its_own_idle_ones_first() {
    let dir = TempDir::new("flood");
    let body_timeout = after("body-timeout", 2000);
    let port = free_port();
    let m = format!("--metrics=127.0.0.1:{port}");
    let s = restored(
        &dir,
        "echo",
        &[
            "--max-connections=64",
            "--max-connections-per-peer=32",
            &body_timeout,
            &m,
        ],
    );
    // Connections that send nothing: each over the cap closes the
    // longest-idle one, so a new (normal) connection always gets in.
    let idle = stalled(s.addr, ATTACKERS, b"");
    report("idle flood", normal(&s, 50));
    let text = metrics(port);
    assert!(
        metric(
            &text,
            "skiff_serve_connections_closed_total{reason=\"evicted\"}"
        ) >= (ATTACKERS - 32) as u64,
        "{text}"
    );
    assert!(
        metric(&text, "skiff_serve_connections_open") <= 33,
        "{text}"
    );
    drop(idle);
    // Connections that each hold a request in progress (a slow body) are
    // not idle: past the cap they are refused 503 with Retry-After, until
    // --body-timeout frees them.
    let head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\na";
    std::thread::sleep(scaled(Duration::from_millis(200)));
    let mut busy = stalled(s.addr, 32, head);
    // (Their heads parsed: busy now, not idle.)
    std::thread::sleep(scaled(Duration::from_millis(300)));
    let mut over = stalled(s.addr, 20, head);
    let refused = over
        .iter_mut()
        .filter_map(until_closed)
        .filter(|got| got.starts_with("HTTP/1.1 503 ") && got.contains("Retry-After: 1\r\n"))
        .count();
    assert!(refused >= 15, "{refused} of 20 refused");
    let text = metrics(port);
    assert!(
        metric(&text, "skiff_serve_connections_refused_total{cap=\"peer\"}") >= 15,
        "{text}"
    );
    s.log_with("connection refused 503 (--max-connections-per-peer reached, none idle)");
    // Once their bodies are late (408), the peer is served again.
    for c in &mut busy {
        let got = until_closed(c).expect("closed after --body-timeout");
        assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
    }
    report("after the flood", normal(&s, 20));
}

#[test]
fn many_small_pipelined_requests_take_one_worker_at_a_time() {
    let dir = TempDir::new("pipelined");
    let s = restored(&dir, "echo", &["--workers=2", "--queue=4"]);
    // 300 requests written at once on one connection, read only later.
    let n = 300;
    let mut c = s.connect();
    let mut all = Vec::new();
    for i in 0..n {
        let body = format!("request {i}");
        all.extend_from_slice(
            format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    c.write_all(&all).unwrap();
    report("pipelined", normal(&s, 50));
    let mut r = BufReader::new(c);
    for i in 0..n {
        let resp = read_response(&mut r);
        assert_eq!(resp.status, 200, "pipelined {i}");
        assert_eq!(resp.body, format!("request {i}").as_bytes());
    }
}

mod agent {
    use super::common::*;
    use super::remote_agent::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    fn sgemm_ok(agent: &Agent, want: &str) {
        let o = run(&["--accel=remote", &remote_flag(agent)], "sgemm", &[]);
        assert_eq!(ok(&o), want);
    }

    /// Reads until the agent closes `c` (true) or 20 s pass (false).
    fn closed(c: &mut TcpStream) -> bool {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut sink = Vec::new();
        c.read_to_end(&mut sink).is_ok()
    }

    #[test]
    fn idle_connections_no_longer_lock_clients_out() {
        let agent = Agent::tcp(&[
            "--max-connections=16",
            "--max-connections-per-peer=8",
            "--idle-timeout=2",
        ]);
        let want = ok(&run(&["--accel=cpu"], "sgemm", &[]));
        let host = agent.addr.trim_start_matches("tcp://").to_string();
        // The attack, over both caps: sockets that send nothing.
        let mut idle: Vec<TcpStream> = (0..super::ATTACKERS / 2)
            .filter_map(|_| TcpStream::connect(&host).ok())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // A client holding a session is never closed for room.
        let mut kept = agent.connect();
        let sid = kept.session();
        for _ in 0..3 {
            sgemm_ok(&agent, &want);
        }
        // The flood's surplus was closed at once (for room), the rest
        // after --idle-timeout.
        let t = Instant::now();
        assert!(idle.iter_mut().all(closed));
        assert!(t.elapsed() < scaled(Duration::from_secs(10)));
        let (st, _) = kept.call(
            "DestroySession",
            &skiff::vaccel::proto::DestroySessionRequest {
                session_id: sid,
                ..Default::default()
            },
        );
        assert_eq!(st.code, 0, "{}", st.message);
    }

    #[test]
    fn a_slow_frame_is_closed_after_the_frame_timeout() {
        let agent = Agent::tcp(&["--frame-timeout=1", "--idle-timeout=30"]);
        let want = ok(&run(&["--accel=cpu"], "sgemm", &[]));
        let host = agent.addr.trim_start_matches("tcp://").to_string();
        // Half a header; a header announcing 1000 bytes and 10 of them;
        // a body trickled a byte at a time (one every 300 ms).
        let mut half = TcpStream::connect(&host).unwrap();
        half.write_all(&[0, 0, 0, 0x10, 0]).unwrap();
        let mut short = TcpStream::connect(&host).unwrap();
        short
            .write_all(&[0, 0, 0x03, 0xe8, 0, 0, 0, 1, 1, 0])
            .unwrap();
        short.write_all(&[0x0a; 10]).unwrap();
        let mut trickle = TcpStream::connect(&host).unwrap();
        trickle
            .write_all(&[0, 0, 0, 100, 0, 0, 0, 1, 1, 0])
            .unwrap();
        let t = Instant::now();
        let mut cut = false;
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(300));
            if trickle.write_all(&[0x0a]).is_err() {
                cut = true;
                break;
            }
        }
        sgemm_ok(&agent, &want);
        assert!(closed(&mut half) && closed(&mut short));
        assert!(cut || closed(&mut trickle), "the trickle was never cut");
        assert!(t.elapsed() < scaled(Duration::from_secs(15)));
    }

    #[test]
    fn one_peers_sessions_cannot_take_every_slot() {
        let agent = Agent::tcp(&["--max-connections=16", "--max-connections-per-peer=4"]);
        // Four connections holding sessions: the peer's share.
        let mut held: Vec<_> = (0..4).map(|_| agent.connect()).collect();
        for c in &mut held {
            c.session();
        }
        // Its fifth is closed at once (no idle connection of its own to
        // close for room), though the agent has 12 slots free.
        let host = agent.addr.trim_start_matches("tcp://").to_string();
        let mut fifth = TcpStream::connect(&host).unwrap();
        assert!(closed(&mut fifth));
        // Once one closes, the peer gets in again.
        held.pop();
        std::thread::sleep(Duration::from_millis(200));
        let mut again = agent.connect();
        again.session();
    }
}
