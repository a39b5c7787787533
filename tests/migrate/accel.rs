//! Accelerator sessions and live migration: a guest multiplying through a
//! real `skiff agent` (`--accel=remote`) keeps its session across the move
//! (parked at the agent at the stop, claimed by the destination); one with
//! a session on a local plugin (cpu) is refused in one line and runs on.

use super::*;

#[path = "../support/agent.rs"]
mod agent;
use agent::Agent;

/// Multiplications the sgemm guest makes in a test, 20 ms apart (10 s at
/// least: a move must end well inside it).
const ROUNDS: u64 = 500;
const PERIOD_US: &str = "20000";
/// Rounds printed before a migration starts.
const ROUNDS_BEFORE: usize = 5;
const SGEMM: &str = "sgemm 40 24 33 checksum=";

/// `skiff agent` on a free TCP port, serving the cpu plugin.
fn agent() -> Agent {
    let mut c = Command::new(skiff());
    c.args(["agent", "-a", "tcp://127.0.0.1:0", "--accel=cpu"]);
    for v in ["VACCEL_PLUGINS", "VACCEL_RPC_ADDRESS", "VACCEL_RPC_ADDR"] {
        c.env_remove(v);
    }
    Agent::spawn(c)
}

/// `40 24 33 ROUNDS PERIOD_US`: the guest checks every product itself
/// (exit 1 on a wrong one) and prints one line per round.
fn sgemm_args() -> Vec<String> {
    let rounds = scaled(Duration::from_secs(ROUNDS)).as_secs();
    ["40", "24", "33", &rounds.to_string(), PERIOD_US]
        .map(String::from)
        .to_vec()
}

/// Every line of `outs` together is the same product, `rounds` times.
fn assert_rounds(outs: &[&str], rounds: usize) {
    let lines: Vec<&str> = outs.iter().flat_map(|o| o.lines()).collect();
    assert_eq!(lines.len(), rounds, "{} rounds, not {rounds}", lines.len());
    assert!(lines[0].starts_with(SGEMM), "{:?}", lines[0]);
    assert!(lines.iter().all(|l| *l == lines[0]), "{lines:?}");
}

#[test]
fn a_remote_sgemm_loop_keeps_its_session_and_correct_results_across_the_move() {
    let dir = TempDir::new("mig-accel");
    let a = agent();
    let remote = format!("--accel-remote={}", a.addr);
    let flags = ["--accel=remote", remote.as_str()];
    let args = sgemm_args();
    let (mut src, sock) = source(dir.path(), &flags, "sgemm", &strs(&args));
    let addr = tcp_addr();
    let dst = destination(&addr, &flags, Some(&guest("sgemm")));
    src.wait_for(SGEMM, ROUNDS_BEFORE, limit(30));
    let (code, reply, err) = ctl(&skiff(), &sock, &["migrate", &addr], limit(60));
    assert_eq!(code, Some(0), "migrate: {reply} {err}");
    let (scode, sout, serr) = src.finish(limit(30));
    assert_eq!(scode, Some(0), "source: {serr}");
    assert!(serr.starts_with("skiff: migrated to "), "{serr:?}");
    let (dcode, dout, derr) = dst.finish(limit(120));
    assert_eq!(dcode, Some(0), "destination: {dout} {derr}");
    assert!(sout.lines().count() >= ROUNDS_BEFORE, "{sout}");
    assert!(!dout.is_empty(), "no round ran on the destination");
    assert_rounds(&[&sout, &dout], args[3].parse().unwrap());
}

#[test]
fn a_session_on_a_local_plugin_refuses_the_move_in_one_line_and_the_guest_runs_on() {
    let dir = TempDir::new("mig-accel-cpu");
    let args = sgemm_args();
    let (mut src, sock) = source(dir.path(), &["--accel=cpu"], "sgemm", &strs(&args));
    src.wait_for(SGEMM, 2, limit(30));
    // Refused before connecting: nothing needs to listen there.
    let (code, reply, err) = ctl(&skiff(), &sock, &["migrate", &tcp_addr()], limit(60));
    assert_eq!(code, Some(1), "migrate: {reply}");
    one_line(&err, "refused: accelerator sessions are open on plugin cpu");
    let (code, reply, _) = ctl(&skiff(), &sock, &["status"], limit(10));
    assert_eq!((code, reply.trim()), (Some(0), "ok running"));
    let (scode, sout, serr) = src.finish(limit(60));
    assert_eq!(scode, Some(0), "source: {serr}");
    assert!(!serr.contains("migrated"), "{serr}");
    assert_rounds(&[&sout], args[3].parse().unwrap());
}

#[test]
fn a_destination_that_cannot_claim_the_session_refuses_and_the_source_takes_it_back() {
    let dir = TempDir::new("mig-accel-claim");
    let (a, other) = (agent(), agent());
    let remote = format!("--accel-remote={}", a.addr);
    let args = sgemm_args();
    let (mut src, sock) = source(
        dir.path(),
        &["--accel=remote", &remote],
        "sgemm",
        &strs(&args),
    );
    // Another agent holds no session parked under the source's token.
    let addr = tcp_addr();
    let elsewhere = format!("--accel-remote={}", other.addr);
    let dst = destination(&addr, &["--accel=remote", &elsewhere], None);
    src.wait_for(SGEMM, ROUNDS_BEFORE, limit(30));
    let (code, reply, err) = ctl(&skiff(), &sock, &["migrate", &addr], limit(60));
    assert_eq!(code, Some(1), "migrate: {reply}");
    one_line(
        &err,
        "refused: cannot claim the guest's accelerator sessions",
    );
    let (dcode, dout, derr) = dst.finish(limit(30));
    assert_eq!(dcode, Some(1), "destination: {dout} {derr}");
    one_line(&derr, "cannot claim the guest's accelerator sessions");
    // Back on the source, its session serves every round after.
    let (scode, sout, serr) = src.finish(limit(60));
    assert_eq!(scode, Some(0), "source: {sout} {serr}");
    assert!(!serr.contains("migrated"), "{serr}");
    assert_rounds(&[&sout], args[3].parse().unwrap());
}
