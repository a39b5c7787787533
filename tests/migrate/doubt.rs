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
