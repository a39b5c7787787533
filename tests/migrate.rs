//! Live migration on real KVM with real processes: a source `skiff run
//! --control SOCK` moved by `skiff ctl SOCK migrate ADDR` into a `skiff run
//! --incoming ADDR` on this host, over TCP and a unix socket. The ticker
//! guest's lines must form one sequence across the two processes; the
//! block writer's disk must match a run that never moved; a cancelled,
//! refused or broken migration leaves the source running to its normal
//! end; a bad stream ends the destination with one line; accelerator
//! sessions move with their guest (accel.rs). Every skiff,
//! relay and file a test makes goes when it ends, passing or not.
//!
//! Waits are counted in guest lines, not sleeps, and every limit is
//! scaled (SKIFF_TEST_TIME_SCALE) for the standard-KVM lane.

#[path = "migrate/accel.rs"]
mod accel;
mod common;
#[path = "migrate/doubt.rs"]
mod doubt;
#[path = "support/migrate.rs"]
mod mig;

use common::*;
use mig::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Ticks the ticker makes in a test: long enough for a migration to
/// finish well inside it (2 ms apart, 4 s at least; longer when loaded).
const COUNT: u64 = 2000;
const PERIOD_US: &str = "period=2000";
/// Ticks printed before a migration starts.
const BEFORE: usize = 100;

fn limit(secs: u64) -> Duration {
    scaled(Duration::from_secs(secs))
}

/// `skiff run --mem=32 --control SOCK FLAGS GUEST ARGS`, waited for until
/// its control socket exists.
fn source(dir: &Path, flags: &[&str], name: &str, args: &[&str]) -> (Proc, PathBuf) {
    let sock = dir.join("control.sock");
    let mut c = Command::new(skiff());
    c.args(["run", "--mem=32", "--control"])
        .arg(&sock)
        .args(flags)
        .arg(guest(name))
        .args(args);
    let mut p = Proc::spawn(c);
    wait_path(&sock, &mut p, limit(20));
    (p, sock)
}

/// `skiff run --incoming ADDR FLAGS [KERNEL]`, waited for until it listens.
fn destination(addr: &str, flags: &[&str], kernel: Option<&Path>) -> Proc {
    let mut c = Command::new(skiff());
    c.args(["run", "--incoming", addr]).args(flags);
    if let Some(k) = kernel {
        c.arg(k);
    }
    let mut p = Proc::spawn(c);
    wait_listening(addr, &mut p, limit(20));
    p
}

fn tcp_addr() -> String {
    format!("tcp://127.0.0.1:{}", free_port())
}

fn unix_addr(dir: &Path) -> String {
    format!("unix://{}", dir.join("incoming.sock").display())
}

fn ticker_args(count: u64, extra: &[&str]) -> Vec<String> {
    let mut v = vec![format!("count={count}"), PERIOD_US.to_string()];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The ticks of `outs` (one process's stdout after another's) are
/// 0..count once each, in order, with clocks that never go back, and the
/// last one says it is done.
fn assert_one_sequence(outs: &[&str], count: u64) {
    let all: Vec<Tick> = outs.iter().flat_map(|o| ticks(o)).collect();
    for (i, t) in all.iter().enumerate() {
        assert_eq!(t.seq, i as u64, "tick {i} has sequence number {}", t.seq);
    }
    assert_eq!(all.len() as u64, count, "{} ticks, not {count}", all.len());
    for w in all.windows(2) {
        assert!(w[1].mono >= w[0].mono, "monotonic clock went back: {w:?}");
        assert!(w[1].wall >= w[0].wall, "wall clock went back: {w:?}");
    }
    let last = outs.last().unwrap();
    assert!(
        last.ends_with(&format!("ticker: done {count}\n")),
        "{:?}",
        &last[last.len().saturating_sub(200)..]
    );
}

/// Asserts one stderr line containing `needle`, and no panic.
fn one_line(err: &str, needle: &str) {
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A ticker moved over `addr` after BEFORE ticks: one sequence, the source
/// exits 0 with the report line, the destination with the guest's 0.
fn ticker_moves(dir: &TempDir, addr: &str, kernel: bool) {
    // A move must end before the ticker does: under emulation (the lane)
    // pre-copy is far slower than the guest's clock, so it ticks longer.
    let count = scaled(Duration::from_secs(COUNT)).as_secs();
    let args = ticker_args(count, &["mem=8M", "rate=4M"]);
    let (mut src, sock) = source(dir.path(), &[], "ticker", &strs(&args));
    let g = guest("ticker");
    let dst = destination(addr, &[], kernel.then_some(g.as_path()));
    src.wait_for("tick ", BEFORE, limit(30));
    let (code, reply, err) = ctl(&skiff(), &sock, &["migrate", addr], limit(60));
    assert_eq!(code, Some(0), "migrate: {reply} {err}");
    assert!(reply.starts_with("ok migrated: downtime "), "{reply:?}");
    let (scode, sout, serr) = src.finish(limit(30));
    assert_eq!(scode, Some(0), "source: {serr}");
    let line = format!("skiff: migrated to {addr}: downtime ");
    assert!(serr.starts_with(&line), "{serr:?}");
    assert_eq!(serr.lines().count(), 1, "{serr:?}");
    let r = report(&serr).unwrap_or_else(|| panic!("no report in {serr:?}"));
    assert!(r.rounds >= 1 && r.bytes > 0, "{r:?}");
    let (dcode, dout, derr) = dst.finish(limit(120));
    assert_eq!(dcode, Some(0), "destination: {derr}");
    assert!(!ticks(&sout).is_empty() && !ticks(&dout).is_empty());
    assert_one_sequence(&[&sout, &dout], count);
    assert!(!sock.exists(), "the source left its control socket");
}

#[test]
fn ticker_moves_over_tcp_with_no_gap_and_no_repeat() {
    let dir = TempDir::new("mig-tcp");
    ticker_moves(&dir, &tcp_addr(), false);
}

#[test]
fn ticker_moves_over_a_unix_socket_with_its_kernel_checked() {
    let dir = TempDir::new("mig-unix");
    let addr = unix_addr(dir.path());
    ticker_moves(&dir, &addr, true);
}

const BLK_ARGS: &[&str] = &["passes=8", "blocks=512", "delay=400"];

fn disk(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; 512 * 512]).unwrap();
    p
}

#[test]
fn block_writers_disk_after_a_move_matches_a_run_that_never_moved() {
    let dir = TempDir::new("mig-blk");
    let still = disk(dir.path(), "still.img");
    let flag = format!("--block:storage={}", still.display());
    let o = run_guest(&["--mem=32", &flag], "blkwriter", BLK_ARGS);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    let moved = disk(dir.path(), "moved.img");
    let flag = format!("--block:storage={}", moved.display());
    let (mut src, sock) = source(dir.path(), &[&flag], "blkwriter", BLK_ARGS);
    let addr = tcp_addr();
    let dst = destination(&addr, &[&flag], Some(&guest("blkwriter")));
    // Mid-pass: the mirror holds reads the tender wrote during pre-copy.
    src.wait_for("blkwriter: pass 2", 1, limit(30));
    let (code, reply, err) = ctl(&skiff(), &sock, &["migrate", &addr], limit(60));
    assert_eq!(code, Some(0), "migrate: {reply} {err}");
    let (scode, sout, serr) = src.finish(limit(30));
    assert_eq!(scode, Some(0), "source: {serr}");
    assert!(
        !sout.contains("blkwriter: ok"),
        "finished before the move: {sout}"
    );
    let (dcode, dout, derr) = dst.finish(limit(120));
    assert_eq!(dcode, Some(0), "destination: {dout} {derr}");
    assert!(
        dout.contains("blkwriter: ok 8 passes of 512 blocks"),
        "{dout}"
    );
    assert!(
        std::fs::read(&still).unwrap() == std::fs::read(&moved).unwrap(),
        "the moved guest's disk differs from the unmoved one's"
    );
}

/// A source whose migration is held by a relay after `stall` bytes, with
/// the destination behind it.
struct Held {
    dir: TempDir,
    src: Proc,
    sock: PathBuf,
    dst: Proc,
    relay: Relay,
    migrate: Proc,
}

fn held(tag: &str, stall: u64) -> Held {
    let dir = TempDir::new(tag);
    let args = ticker_args(COUNT, &["mem=16M"]);
    let (mut src, sock) = source(dir.path(), &[], "ticker", &strs(&args));
    let addr = tcp_addr();
    let dst = destination(&addr, &[], Some(&guest("ticker")));
    let relay = Relay::new(&addr, stall);
    src.wait_for("tick ", BEFORE, limit(30));
    let migrate = ctl_spawn(&skiff(), &sock, &["migrate", &relay.addr]);
    relay.wait_stalled(limit(30));
    Held {
        dir,
        src,
        sock,
        dst,
        relay,
        migrate,
    }
}

/// The source ran to its own end as if never asked to move.
fn assert_ran_on(src: Proc, count: u64) {
    let (code, out, err) = src.finish(limit(60));
    assert_eq!(code, Some(0), "source: {err}");
    assert!(!err.contains("migrated"), "{err}");
    assert_one_sequence(&[&out], count);
}

#[test]
fn cancel_mid_stream_leaves_the_source_running() {
    let h = held("mig-cancel", 1 << 20);
    let (code, reply, err) = ctl(&skiff(), &h.sock, &["cancel"], limit(10));
    assert_eq!(code, Some(0), "cancel: {reply} {err}");
    let (code, reply, err) = h.migrate.finish(limit(30));
    assert_eq!(code, Some(1), "migrate after cancel: {reply}");
    one_line(&err, "cancelled");
    let (code, reply, _) = ctl(&skiff(), &h.sock, &["status"], limit(10));
    assert_eq!((code, reply.trim()), (Some(0), "ok running"));
    h.relay.cut();
    // The destination saw its source go away mid-stream.
    let (dcode, dout, derr) = h.dst.finish(limit(30));
    assert_eq!(dcode, Some(1), "destination: {dout} {derr}");
    one_line(&derr, "");
    assert_ran_on(h.src, COUNT);
    drop(h.dir);
}

#[test]
fn killing_the_destination_mid_stream_leaves_the_source_running() {
    let mut h = held("mig-killdst", 1 << 20);
    h.dst.kill9();
    h.relay.cut();
    let (code, reply, err) = h.migrate.finish(limit(60));
    assert_eq!(code, Some(1), "migrate to a killed destination: {reply}");
    one_line(&err, "");
    let _ = h.dst.finish(limit(10));
    assert_ran_on(h.src, COUNT);
}

#[test]
fn killing_the_source_mid_stream_ends_the_destination_with_one_line() {
    let mut h = held("mig-killsrc", 1 << 20);
    h.src.kill9();
    h.relay.release();
    let (code, out, err) = h.dst.finish(limit(60));
    assert_eq!(code, Some(1), "destination: {out} {err}");
    one_line(&err, "");
    assert!(
        ticks(&out).is_empty(),
        "the destination ran the guest: {out}"
    );
    let _ = h.migrate.finish(limit(10));
    let _ = h.src.finish(limit(10));
}

/// A whole migration stream of a small ticker, recorded by a relay.
fn recorded_stream(dir: &Path) -> Vec<u8> {
    let args = ticker_args(COUNT, &[]);
    let (mut src, sock) = source(dir, &[], "ticker", &strs(&args));
    let addr = tcp_addr();
    let dst = destination(&addr, &[], Some(&guest("ticker")));
    let relay = Relay::new(&addr, u64::MAX);
    src.wait_for("tick ", BEFORE, limit(30));
    let (code, reply, err) = ctl(&skiff(), &sock, &["migrate", &relay.addr], limit(60));
    assert_eq!(code, Some(0), "migrate: {reply} {err}");
    let _ = src.finish(limit(30));
    let (dcode, _, derr) = dst.finish(limit(120));
    assert_eq!(dcode, Some(0), "destination: {derr}");
    relay.recorded()
}

/// Sends `bytes` to a fresh destination as a source would, then ends the
/// connection; asserts it exits 1 with one line and never runs the guest.
fn refuses_stream(bytes: &[u8], what: &str) {
    let addr = tcp_addr();
    let dst = destination(&addr, &[], Some(&guest("ticker")));
    let mut s = std::net::TcpStream::connect(addr.strip_prefix("tcp://").unwrap()).unwrap();
    let mut r = s.try_clone().unwrap();
    let replies = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
    });
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let (code, out, err) = dst.finish(limit(60));
    assert_eq!(code, Some(1), "{what}: {out} {err}");
    one_line(&err, "");
    assert!(
        ticks(&out).is_empty(),
        "{what}: the destination ran the guest: {out}"
    );
    drop(s);
    let _ = replies.join();
}

#[test]
fn a_corrupt_or_truncated_stream_ends_the_destination_with_one_line() {
    let dir = TempDir::new("mig-corrupt");
    let good = recorded_stream(dir.path());
    assert!(good.len() > 4096, "a {}-byte stream", good.len());
    refuses_stream(&[], "an empty stream");
    refuses_stream(&good[..7], "7 bytes");
    refuses_stream(&good[..good.len() / 2], "half a stream");
    refuses_stream(&good[..good.len() - 1], "all but the last byte");
    refuses_stream(&random_bytes(1 << 16, 25), "random bytes");
    for at in [
        good.len() / 3,
        good.len() / 2,
        good.len() * 2 / 3,
        good.len() - 4,
    ] {
        let mut bad = good.clone();
        bad[at] ^= 0x40;
        refuses_stream(&bad, &format!("a flipped byte at {at} of {}", good.len()));
    }
}

/// A destination that refuses (`flags`, `kernel`): the source's migrate
/// says why in one line, less than the working set crossed, the source
/// runs on to its end.
fn refused(
    tag: &str,
    src_flags: &[&str],
    name: &str,
    args: &[&str],
    dst_flags: &[&str],
    kernel: Option<&Path>,
) {
    let dir = TempDir::new(tag);
    let (mut src, sock) = source(dir.path(), src_flags, name, args);
    let addr = tcp_addr();
    let dst = destination(&addr, dst_flags, kernel);
    let relay = Relay::new(&addr, u64::MAX);
    src.wait_for(
        if name == "ticker" {
            "tick "
        } else {
            "blkwriter: pass"
        },
        1,
        limit(30),
    );
    let (code, reply, err) = ctl(&skiff(), &sock, &["migrate", &relay.addr], limit(60));
    assert_eq!(code, Some(1), "migrate: {reply}");
    one_line(&err, "refused");
    let (dcode, _, derr) = dst.finish(limit(30));
    assert_eq!(dcode, Some(1), "destination: {derr}");
    one_line(&derr, "");
    let sent = relay.recorded().len();
    assert!(sent < 1 << 20, "{sent} bytes crossed before the refusal");
    let (scode, sout, serr) = src.finish(limit(60));
    assert_eq!(scode, Some(0), "source: {serr}");
    assert!(!serr.contains("migrated"), "{serr}");
    if name == "ticker" {
        assert_one_sequence(&[&sout], COUNT);
    } else {
        assert!(sout.contains("blkwriter: ok"), "{sout}");
    }
}

#[test]
fn a_destination_without_the_guests_block_device_refuses_before_memory() {
    let dir = TempDir::new("mig-nodev");
    let d = disk(dir.path(), "d.img");
    let flag = format!("--block:storage={}", d.display());
    let k = guest("blkwriter");
    refused(
        "mig-nodev-run",
        &[&flag],
        "blkwriter",
        BLK_ARGS,
        &[],
        Some(&k),
    );
}

#[test]
fn a_destination_given_another_kernel_refuses_before_memory() {
    let args = ticker_args(COUNT, &["mem=16M"]);
    let other = guest("hello");
    refused("mig-kernel", &[], "ticker", &strs(&args), &[], Some(&other));
}

/// The MAC the namespace's neighbour table holds for `addr`.
fn neighbour_mac(ns: &common::netns::Netns, addr: &str) -> String {
    let o = ns.cmd(&["ip", "neigh", "show", addr]).output().unwrap();
    let out = stdout(&o);
    out.split("lladdr ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no neighbour entry for {addr}: {out:?}"))
        .to_string()
}

#[test]
fn a_guest_with_a_tap_keeps_its_mac_and_answers_ping_after_the_move() {
    let dir = TempDir::new("mig-net");
    let ns = common::netns::Netns::new("mig", &[("tap0", "10.77.0.1/24", 1500)]);
    let sock = dir.path().join("control.sock");
    let sk = skiff();
    let (sk, g) = (sk.to_str().unwrap(), guest("ping"));
    let s = sock.to_str().unwrap();
    let mut src = Proc::spawn(ns.cmd(&[
        sk,
        "run",
        "--mem=32",
        "--control",
        s,
        "--net:service0=tap0",
        g.to_str().unwrap(),
        "limit",
        "11",
    ]));
    src.wait_for("serving ping", 1, limit(20));
    ns.ping("10.77.0.2", 5);
    let mac = neighbour_mac(&ns, "10.77.0.2");
    let addr = unix_addr(dir.path());
    let mut dst = Proc::spawn(ns.cmd(&[
        sk,
        "run",
        "--incoming",
        &addr,
        "--net:service0=tap0",
        g.to_str().unwrap(),
    ]));
    wait_listening(&addr, &mut dst, limit(20));
    let (code, reply, err) = ctl(&skiff(), &sock, &["migrate", &addr], limit(60));
    assert_eq!(code, Some(0), "migrate: {reply} {err}");
    let (scode, _, serr) = src.finish(limit(30));
    assert_eq!(scode, Some(0), "source: {serr}");
    // The guest answers ARP afresh from the destination, with the same MAC.
    ns.exec_ok(&["ip", "neigh", "flush", "dev", "tap0"]);
    ns.ping("10.77.0.2", 5);
    assert_eq!(neighbour_mac(&ns, "10.77.0.2"), mac);
    // The last ping ends the guest (and its TAP's neighbours go with it).
    ns.ping("10.77.0.2", 1);
    let (dcode, dout, derr) = dst.finish(limit(30));
    assert_eq!(dcode, Some(0), "destination: {dout} {derr}");
    assert!(dout.contains("limit reached, 11 pings answered"), "{dout}");
}

/// The fleet-common CPU features (docs/snapshots.md), for the lane's guest:
/// without them its move to this host is refused for CPU features alone.
const BASELINE: &[&str] = &["--cpu-template=baseline"];

/// Ticks of a guest moved between the host and the lane: the lane's
/// checks of a handshake, under emulation, take seconds.
const LANE_COUNT: u64 = 5 * COUNT;

/// Port the lane's destination listens on (QEMU forwards the host's
/// SKIFF_TEST_LANE_FWD port to it).
const LANE_PORT: u16 = 7700;

/// Either side's move across machines: refused with one line before the
/// working set crossed and the source ran on, or done and the source
/// reported it. Returns what happened, for the log.
fn moved_or_refused(mut src: Proc, sock: &Path, to: &str) -> String {
    src.wait_for("tick ", BEFORE, limit(60));
    let relay = Relay::new(to, u64::MAX);
    let (code, reply, err) = ctl(&skiff(), sock, &["migrate", &relay.addr], limit(300));
    let sent = relay.recorded().len();
    if code == Some(0) {
        let (scode, _, serr) = src.finish(limit(60));
        assert_eq!(scode, Some(0), "source: {serr}");
        assert!(serr.contains("skiff: migrated to "), "{serr}");
        return format!("moved ({sent} bytes): {}", serr.trim());
    }
    assert_eq!(code, Some(1), "migrate: {reply} {err}");
    one_line(&err, "refused");
    assert!(sent < 1 << 20, "{sent} bytes crossed before the refusal");
    assert_ran_on(src, LANE_COUNT);
    format!("refused after {sent} bytes: {}", err.trim())
}

/// The destination's end: refused (exit 1, one line, no guest output) or
/// the moved ticker's output continuing from where the source stopped.
fn dest_outcome(code: Option<i32>, out: &str, err: &str) -> String {
    if code == Some(1) {
        one_line(err, "");
        assert!(ticks(out).is_empty(), "{out}");
        return format!("destination refused: {}", err.trim());
    }
    assert_eq!(code, Some(0), "destination: {err}");
    let t = ticks(out);
    assert!(t.first().is_some_and(|t| t.seq > 0), "{out}");
    assert!(t.windows(2).all(|w| w[1].seq == w[0].seq + 1), "{out}");
    assert!(
        out.ends_with(&format!("ticker: done {LANE_COUNT}\n")),
        "{out}"
    );
    format!("destination ran on from tick {}", t[0].seq)
}

/// A move from this host into the standard-KVM lane and one back, run by
/// tools/stdkvm/migrate.sh on both machines at once: the host side (here,
/// SKIFF_TEST_LANE_LOG = the lane's console log) and the lane side (in the
/// VM, SKIFF_TEST_LANE_HOST = this host as the VM reaches it). Different
/// CPUID, TSC and KVM. The lane's guest has the baseline CPU features (a
/// kvm_pvm guest cannot), so what decides its move is the rest, as for
/// snapshots (docs/snapshots.md). A refusal
/// must be one line, before memory, the source running on; a move that
/// succeeds must continue the guest's output.
#[test]
#[ignore = "needs the standard-KVM lane running beside it: tools/stdkvm/migrate.sh"]
fn moves_between_the_host_and_the_lane() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set"));
    let nonce = env("SKIFF_TEST_LANE_NONCE");
    let dir = TempDir::new("mig-lane");
    let args = ticker_args(LANE_COUNT, &["mem=16M"]);
    if let Ok(host) = std::env::var("SKIFF_TEST_LANE_HOST") {
        // In the lane: first a destination for the host's guest...
        let addr = format!("tcp://0.0.0.0:{LANE_PORT}");
        let mut dst = Proc::spawn({
            let mut c = Command::new(skiff());
            c.args(["run", "--incoming", &addr]).arg(guest("ticker"));
            c
        });
        wait_listening(&addr, &mut dst, limit(60));
        println!("@@lane listening {nonce}");
        // The host migrates as soon as it sees the line above.
        let (code, out, err) = dst.finish(Duration::from_secs(600));
        println!("@@lane host -> lane: {}", dest_outcome(code, &out, &err));
        // ...then a source moved to the host.
        let (src, sock) = source(dir.path(), BASELINE, "ticker", &strs(&args));
        let to = format!("tcp://{host}:{}", env("SKIFF_TEST_LANE_BACK"));
        println!("@@lane lane -> host: {}", moved_or_refused(src, &sock, &to));
        return;
    }
    let log = PathBuf::from(env("SKIFF_TEST_LANE_LOG"));
    let back = format!("tcp://127.0.0.1:{}", env("SKIFF_TEST_LANE_BACK"));
    let dst = destination(&back, &[], Some(&guest("ticker")));
    let marker = format!("@@lane listening {nonce}");
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&marker)
    {
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "the lane never listened"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // kvm_pvm cannot mask CPUID (--cpu-template host only).
    let (src, sock) = source(dir.path(), &[], "ticker", &strs(&args));
    let to = format!("tcp://127.0.0.1:{}", env("SKIFF_TEST_LANE_FWD"));
    println!("host -> lane: {}", moved_or_refused(src, &sock, &to));
    let (code, out, err) = dst.finish(Duration::from_secs(1800));
    println!("lane -> host: {}", dest_outcome(code, &out, &err));
}
