//! Ping rate: flood pings (`ping -fq`) answered per second by a guest on
//! skiff, and, when SOLO5_HVT and SOLO5_TEST_NET are set, by Solo5's own
//! test_net on solo5-hvt and on skiff (the same guest on both tenders).
//!
//!     cargo bench --bench ping_rate
//!     SOLO5_HVT=/opt/solo5/src/tenders/hvt/solo5-hvt \
//!     SOLO5_TEST_NET=/opt/solo5/src/tests/test_net/test_net.hvt \
//!     PING_COUNT=100000 cargo bench --bench ping_rate
//!
//! Needs root, iproute2 and iputils-ping. Everything happens in a network
//! namespace made here (TAP 10.0.0.1/24, the guest is 10.0.0.2, as
//! test_net expects), deleted afterwards.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NS: &str = "skiff-bench-ping";

fn ns(args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", NS]).args(args);
    c
}

fn must(mut c: Command) {
    let st = c.status().expect("run");
    assert!(st.success(), "{c:?} failed");
}

fn setup() {
    let _ = Command::new("ip").args(["netns", "del", NS]).status();
    must({
        let mut c = Command::new("ip");
        c.args(["netns", "add", NS]);
        c
    });
    must(ns(&["ip", "tuntap", "add", "tap0", "mode", "tap"]));
    must(ns(&["ip", "addr", "add", "10.0.0.1/24", "dev", "tap0"]));
    must(ns(&["ip", "link", "set", "tap0", "up"]));
}

/// Starts a tender in the namespace and waits until its guest serves.
fn start(tender: &Path, extra: &[&str], kernel: &Path, args: &[&str]) -> Child {
    let mut v: Vec<&str> = vec![tender.to_str().unwrap()];
    v.extend_from_slice(extra);
    v.extend_from_slice(&["--net:service0=tap0", "--", kernel.to_str().unwrap()]);
    v.extend_from_slice(args);
    let mut child = ns(&v)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tender");
    let mut out = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 256];
    let t = Instant::now();
    while !seen.to_lowercase().contains("serving ping") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "guest did not start: {seen}"
        );
        let n = out.read(&mut buf).unwrap_or(0);
        assert!(n > 0, "guest ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    // Keep draining the guest's output so it never blocks on a full pipe.
    std::thread::spawn(move || while let Ok(1..) = out.read(&mut buf) {});
    child
}

/// Flood-pings the guest; returns (answered, seconds).
fn flood(count: u32) -> (u64, f64) {
    let t = Instant::now();
    let o = ns(&[
        "ping",
        "-fq",
        "-c",
        &count.to_string(),
        "-w",
        "120",
        "10.0.0.2",
    ])
    .output()
    .expect("ping");
    let secs = t.elapsed().as_secs_f64();
    let out = String::from_utf8_lossy(&o.stdout);
    let received = out
        .split(',')
        .find(|p| p.contains("received"))
        .and_then(|p| p.trim().split(' ').next()?.parse().ok())
        .unwrap_or(0);
    (received, secs)
}

fn measure(label: &str, tender: &Path, extra: &[&str], kernel: &Path, args: &[&str], n: u32) {
    let mut child = start(tender, extra, kernel, args);
    let (got, secs) = flood(n);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{label:<34} {got:>7}/{n} answered in {secs:6.2} s: {:8.0} pings/s",
        got as f64 / secs
    );
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let n: u32 = std::env::var("PING_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let skiff = PathBuf::from(env!("CARGO_BIN_EXE_skiff"));
    let dir = std::env::temp_dir().join(format!("skiff-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The drop-in name, so skiff takes solo5-hvt's exact argv.
    let skiff_hvt = dir.join("solo5-hvt");
    let _ = std::fs::remove_file(&skiff_hvt);
    std::os::unix::fs::symlink(&skiff, &skiff_hvt).unwrap();

    setup();
    let ping = guest_images::image("ping");
    measure(
        "skiff, ping guest",
        &skiff_hvt,
        &["--mem=64"],
        &ping,
        &["10.0.0.2"],
        n,
    );
    match (
        std::env::var_os("SOLO5_HVT"),
        std::env::var_os("SOLO5_TEST_NET"),
    ) {
        (Some(hvt), Some(test_net)) => {
            let (hvt, tn) = (PathBuf::from(hvt), PathBuf::from(test_net));
            measure(
                "skiff, Solo5 test_net",
                &skiff_hvt,
                &["--mem=64"],
                &tn,
                &[],
                n,
            );
            measure(
                "solo5-hvt, Solo5 test_net",
                &hvt,
                &["--mem=64"],
                &tn,
                &[],
                n,
            );
        }
        _ => println!("solo5-hvt comparison skipped: set SOLO5_HVT and SOLO5_TEST_NET"),
    }
    let _ = Command::new("ip").args(["netns", "del", NS]).status();
    let _ = std::fs::remove_dir_all(&dir);
}
