//! The one window a migration cannot close by itself: the destination
//! took the guest but its word never reached the source. A relay swallows
//! that last answer; the source must stay paused (never two running
//! copies) until the operator decides.

use super::*;

/// The destination took the guest but its word never reached the
/// source: the source stays paused (never two running copies) and says
/// so; the guest runs on at the destination.
#[test]
fn a_lost_confirmation_leaves_the_source_paused_in_doubt() {
    let dir = TempDir::new("mig-doubt");
    let args = ticker_args(COUNT, &["mem=8M"]);
    let (mut src, sock) = source(dir.path(), &[], "ticker", &strs(&args));
    let addr = tcp_addr();
    let dst = destination(&addr, &[], Some(&guest("ticker")));
    let relay = Relay::swallowing_the_confirmation(&addr);
    src.wait_for("tick ", BEFORE, limit(30));
    let (code, reply, err) = ctl(&skiff(), &sock, &["migrate", &relay.addr], limit(60));
    assert_eq!(code, Some(1), "migrate: {reply}");
    one_line(&err, "did not confirm it took the guest");
    let (code, reply, _) = ctl(&skiff(), &sock, &["status"], limit(10));
    assert_eq!((code, reply.trim()), (Some(0), "ok paused"));
    // The destination runs the guest to its end; the source, paused,
    // added nothing: together one sequence.
    let (dcode, dout, derr) = dst.finish(limit(120));
    assert_eq!(dcode, Some(0), "destination: {derr}");
    let before = ticks(&src.stdout()).len();
    assert!(src.running(), "the source in doubt exited");
    src.kill9();
    let (_, sout, _) = src.finish(limit(10));
    assert_eq!(ticks(&sout).len(), before, "the paused source ticked");
    assert_one_sequence(&[&sout, &dout], COUNT);
    drop(relay);
}

/// In doubt, the operator finds the destination gone and resumes the
/// source: it runs on to its end as if never moved.
#[test]
fn a_source_in_doubt_resumes_when_told() {
    let dir = TempDir::new("mig-doubt-resume");
    let args = ticker_args(COUNT, &["mem=8M"]);
    let (mut src, sock) = source(dir.path(), &[], "ticker", &strs(&args));
    let addr = tcp_addr();
    let mut dst = destination(&addr, &[], Some(&guest("ticker")));
    let relay = Relay::swallowing_the_confirmation(&addr);
    src.wait_for("tick ", BEFORE, limit(30));
    let (code, reply, _) = ctl(&skiff(), &sock, &["migrate", &relay.addr], limit(60));
    assert_eq!(code, Some(1), "migrate: {reply}");
    dst.kill9();
    let _ = dst.finish(limit(10));
    let (code, reply, err) = ctl(&skiff(), &sock, &["resume"], limit(10));
    assert_eq!((code, reply.trim()), (Some(0), "ok running"), "{err}");
    assert_ran_on(src, COUNT);
    drop(relay);
}

/// `f` on a thread inside network namespace `ns` (threads it starts stay
/// there): a [`Relay`] between a source and destination that run in it.
fn in_netns<T: Send + 'static>(
    ns: &common::netns::Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/var/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        let netns = std::fs::File::open(&path).unwrap();
        // SAFETY: setns(2) of this new thread alone into a netns fd.
        let r = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// In doubt with a TAP: the stop handed the TAP over, the operator finds
/// the destination gone and resumes the source, which takes its TAP back
/// (reopening /dev/net/tun under a controlled run's seccomp allowlist)
/// and answers ping again.
#[test]
fn a_tap_guest_resumed_in_doubt_takes_its_tap_back() {
    let dir = TempDir::new("mig-doubt-tap");
    let ns = common::netns::Netns::new("mdt", &[("tap0", "10.77.0.1/24", 1500)]);
    ns.exec_ok(&["ip", "link", "set", "lo", "up"]);
    let sock = dir.path().join("control.sock");
    let (sk, g) = (skiff(), guest("ping"));
    let (sk, g, s) = (
        sk.to_str().unwrap(),
        g.to_str().unwrap(),
        sock.to_str().unwrap(),
    );
    let net = "--net:service0=tap0";
    let mut src = Proc::spawn(ns.cmd(&[
        sk,
        "run",
        "--mem=32",
        "--control",
        s,
        net,
        g,
        "limit",
        "100",
    ]));
    src.wait_for("serving ping", 1, limit(20));
    ns.ping("10.77.0.2", 2);
    let addr = tcp_addr();
    let mut dst = Proc::spawn(ns.cmd(&[sk, "run", "--incoming", &addr, net, g]));
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let table = format!("/proc/{}/net/tcp", dst.pid());
    let start = std::time::Instant::now();
    while !listening_in(&table, port) {
        assert!(
            start.elapsed() < limit(20) && dst.running(),
            "destination: {}",
            dst.stderr()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let up = addr.clone();
    let relay = in_netns(&ns, move || Relay::swallowing_the_confirmation(&up));
    let (code, reply, err) = ctl(&skiff(), &sock, &["migrate", &relay.addr], limit(60));
    assert_eq!(code, Some(1), "migrate: {reply}");
    one_line(&err, "did not confirm it took the guest");
    dst.kill9();
    let _ = dst.finish(limit(10));
    let (code, reply, err) = ctl(&skiff(), &sock, &["resume"], limit(10));
    assert_eq!((code, reply.trim()), (Some(0), "ok running"), "{err}");
    ns.exec_ok(&["ip", "neigh", "flush", "dev", "tap0"]);
    ns.ping("10.77.0.2", 3);
    assert!(src.running(), "the resumed source exited: {}", src.stderr());
    src.kill9();
    let _ = src.finish(limit(10));
    drop(relay);
}
