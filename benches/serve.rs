//! `skiff serve` against the classic watchdog's model (fork+exec of
//! `skiff run` per request), both driven by wrk (Debian's `wrk`) on
//! loopback in the same run: echo of a 1 KiB POST at 1, 2 and 8
//! connections; p50, p99 and requests/s (also `--fresh-process` and
//! `--warm`). Prints a table and writes the
//! latency plot to docs/serve-latency.svg.
//!
//! `cargo bench --bench serve` (needs `wrk` on PATH; SKIFF_BENCH_SECS sets
//! each run's length, default 5).

mod common;

use plotters::prelude::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CONNS: [usize; 3] = [1, 2, 8];
const MEM: &str = "--mem=32";

fn skiff() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skiff"))
}

/// One wrk run's numbers.
#[derive(Debug, Clone, Copy)]
struct Run {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
}

/// wrk's latency ("812.00us", "1.20ms", "2.00s") in milliseconds.
fn ms(s: &str) -> f64 {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        _ => f64::NAN,
    }
}

fn wrk(url: &str, conns: usize, secs: u64, script: &Path) -> Run {
    let out = Command::new("wrk")
        .args(["--latency", "-t", &conns.min(2).to_string()])
        .args(["-c", &conns.to_string(), "-d", &format!("{secs}s")])
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(|r| r.trim().to_string()))
            .unwrap_or_else(|| panic!("no {key:?} in wrk's output:\n{text}"))
    };
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        eprintln!("wrk reported errors:\n{text}");
    }
    Run {
        p50_ms: ms(&field("50%")),
        p99_ms: ms(&field("99%")),
        rps: field("Requests/sec:").parse().unwrap_or(f64::NAN),
    }
}

/// The classic watchdog's model: every request forks and execs
/// `skiff run` with the request on stdin, Http_* in the environment and
/// the response on stdout. A thread per connection, keep-alive.
fn fork_exec_server(kernel: PathBuf) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let kernel = kernel.clone();
            std::thread::spawn(move || serve_fork_exec(c, &kernel));
        }
    });
    addr
}

fn serve_fork_exec(c: TcpStream, kernel: &Path) {
    let _ = c.set_nodelay(true);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("GET").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let mut child = Command::new(skiff())
            .args(["run", MEM])
            .arg(kernel)
            .env("Http_Method", &method)
            .env("Http_Path", &path)
            .env("Http_Content_Length", len.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn skiff run");
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let mut out = Vec::new();
        let _ = child.stdout.take().unwrap().read_to_end(&mut out);
        let _ = feeder.join();
        let ok = child.wait().map(|s| s.success()).unwrap_or(false);
        let status = if ok {
            "200 OK"
        } else {
            "500 Internal Server Error"
        };
        let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n", out.len());
        if w.write_all(head.as_bytes()).is_err() || w.write_all(&out).is_err() {
            return;
        }
    }
}

/// `skiff serve` on an ephemeral port; its address once it listens.
fn start_serve(snap: &Path, kernel: &Path, workers: usize, flags: &[&str]) -> (Child, String) {
    let mut child = Command::new(skiff())
        .args(["serve", "--listen", "127.0.0.1:0", "--workers"])
        .arg(workers.to_string())
        .args(flags)
        .args([MEM, "--restore"])
        .arg(snap)
        .arg(kernel)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn skiff serve");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Drained (one line per request) so the server never blocks on it.
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("serving http://").nth(1) {
                let _ = tx.send(rest.split(' ').next().unwrap_or("").to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("skiff serve did not start");
    (child, addr)
}

fn snapshot(dir: &Path, kernel: &Path, name: &str) -> PathBuf {
    common::snapshot(dir, kernel, name, MEM)
}

/// A `skiff serve` with `flags`, warmed once, measured at each of CONNS.
fn measure(snap: &Path, kernel: &Path, flags: &[&str], script: &Path, secs: u64) -> Vec<Run> {
    let (mut server, addr) = start_serve(snap, kernel, 4, flags);
    let url = format!("http://{addr}/");
    wrk(&url, 1, 1, script);
    let runs = CONNS.iter().map(|&c| wrk(&url, c, secs, script)).collect();
    let _ = server.kill();
    let _ = server.wait();
    runs
}

fn plot(
    path: &Path,
    serve: &[Run],
    fork: &[Run],
    warm: &[Run],
    fresh: &[Run],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = serve
        .iter()
        .chain(fork)
        .chain(warm)
        .chain(fresh)
        .map(|r| r.p99_ms)
        .fold(1.0f64, f64::max)
        * 1.3;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "echo, 1 KiB POST, loopback: latency (ms, log scale)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.5f64..8.5f64, (0.05f64..top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("connections")
        .y_desc("ms")
        .x_labels(8)
        .draw()?;
    let series = [
        ("skiff serve p50", serve, false, BLUE),
        ("skiff serve p99", serve, true, RGBColor(120, 150, 255)),
        (
            "serve --fresh-process p50",
            fresh,
            false,
            RGBColor(0, 140, 0),
        ),
        (
            "serve --fresh-process p99",
            fresh,
            true,
            RGBColor(120, 200, 120),
        ),
        ("fork+exec skiff run p50", fork, false, RED),
        (
            "fork+exec skiff run p99",
            fork,
            true,
            RGBColor(255, 140, 120),
        ),
    ];
    for (name, runs, p99, color) in series {
        let pts: Vec<(f64, f64)> = CONNS
            .iter()
            .zip(runs)
            .map(|(&c, r)| (c as f64, if p99 { r.p99_ms } else { r.p50_ms }))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    common::legend(&mut chart)?;
    root.present()?;
    Ok(())
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("serve bench: wrk is not installed (apt-get install wrk)");
        std::process::exit(1);
    }
    let secs: u64 = std::env::var("SKIFF_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("skiff-serve-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = guest_images::image("echo");
    let snap = snapshot(&dir, &kernel, "echo");
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", 1024)\n\
         wrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n",
    )
    .unwrap();

    let (mut server, addr) = start_serve(&snap, &kernel, 4, &[]);
    let fork_addr = fork_exec_server(kernel.clone());
    let serve_url = format!("http://{addr}/");
    let fork_url = format!("http://{fork_addr}/");
    // Warm both (page cache, first restores).
    wrk(&serve_url, 1, 1, &script);
    wrk(&fork_url, 1, 1, &script);
    let mut serve = Vec::new();
    let mut fork = Vec::new();
    for c in CONNS {
        serve.push(wrk(&serve_url, c, secs, &script));
        fork.push(wrk(&fork_url, c, secs, &script));
    }
    let _ = server.kill();
    let _ = server.wait();
    // One process and VM per request (--fresh-process).
    let fresh = measure(&snap, &kernel, &["--fresh-process"], &script, secs);
    // The warm guest (REQ_NEXT) under --warm: what the front and one
    // worker hand-off cost when no guest is restored per request.
    let wkernel = guest_images::image("warm");
    let wsnap = snapshot(&dir, &wkernel, "warm");
    let warm = measure(&wsnap, &wkernel, &["--warm"], &script, secs);
    let _ = std::fs::remove_dir_all(&dir);

    println!("echo, 1 KiB POST, wrk on loopback, {secs} s per run");
    println!(
        "{:>5}  {:>22}  {:>22}  {:>7}",
        "conns", "skiff serve p50/p99 ms", "fork+exec p50/p99 ms", "ratio"
    );
    for ((c, s), f) in CONNS.iter().zip(&serve).zip(&fork) {
        println!(
            "{c:>5}  {:>7.3} / {:>7.3} {:>6.0}/s  {:>7.3} / {:>7.3} {:>6.0}/s  {:>6.1}x",
            s.p50_ms,
            s.p99_ms,
            s.rps,
            f.p50_ms,
            f.p99_ms,
            f.rps,
            s.rps / f.rps
        );
    }
    println!("skiff serve --fresh-process (a process and VM per request):");
    for ((c, r), f) in CONNS.iter().zip(&fresh).zip(&fork) {
        println!(
            "{c:>5}  {:>7.3} / {:>7.3} {:>6.0}/s  {:>32.1}x",
            r.p50_ms,
            r.p99_ms,
            r.rps,
            r.rps / f.rps
        );
    }
    println!("skiff serve --warm (guests kept across requests, REQ_NEXT):");
    for (c, w) in CONNS.iter().zip(&warm) {
        println!(
            "{c:>5}  {:>7.3} / {:>7.3} {:>6.0}/s",
            w.p50_ms, w.p99_ms, w.rps
        );
    }
    let svg = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/serve-latency.svg");
    match plot(&svg, &serve, &fork, &warm, &fresh) {
        Ok(()) => println!("plot: {}", svg.display()),
        Err(e) => eprintln!("serve bench: cannot draw {}: {e}", svg.display()),
    }
}
