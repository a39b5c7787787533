//! `skiff run --gdb` driven by Debian's real gdb in batch mode: breakpoints
//! by symbol, registers, backtraces, memory at guest-virtual addresses,
//! stepping, writing a variable the guest then prints, detach, kill, and
//! Ctrl-C on a spinning guest.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A `skiff run --gdb=127.0.0.1:0 GUEST` waiting for gdb; killed on drop.
struct Stub {
    child: Child,
    port: u16,
    stderr: mpsc::Receiver<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Stub {
    fn start(guest: &str) -> Self {
        let mut child = Command::new(common::skiff())
            .args(["run", "--gdb=127.0.0.1:0"])
            .arg(common::guest(guest))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn skiff");
        let (tx, rx) = mpsc::channel();
        let err = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let first = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("skiff says where it waits for gdb");
        let port = first
            .rsplit_once("waiting for gdb on 127.0.0.1:")
            .and_then(|(_, p)| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no port in {first:?}"));
        Stub {
            child,
            port,
            stderr: rx,
            stdout: Some(stdout),
        }
    }

    /// Runs gdb in batch mode on `guest`'s image with `cmds` after
    /// connecting; returns its output.
    fn gdb(&self, guest: &str, cmds: &[&str]) -> String {
        let cmd = gdb_command(guest, self.port, cmds);
        let out = common::run_with(cmd, b"", Duration::from_secs(120));
        gdb_text(&out)
    }

    /// Waits for skiff to end; its status, stdout and remaining stderr.
    fn finish(mut self) -> (Option<i32>, String, String) {
        let mut status = None;
        for _ in 0..2000 {
            if let Some(s) = self.child.try_wait().unwrap() {
                status = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let status = status.expect("skiff ended after gdb let go");
        let out = self.stdout.take().unwrap().join().unwrap();
        let err: Vec<String> = self.stderr.try_iter().collect();
        (status.code(), out, err.join("\n"))
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gdb_command(guest: &str, port: u16, cmds: &[&str]) -> Command {
    let mut c = Command::new("gdb");
    c.args([
        "-nx",
        "-batch",
        "-ex",
        "set pagination off",
        "-ex",
        "set confirm off",
    ]);
    c.args(["-ex", &format!("target remote 127.0.0.1:{port}")]);
    for x in cmds {
        c.args(["-ex", x]);
    }
    c.arg(common::guest(guest));
    c
}

fn gdb_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn break_inspect_step_set_and_detach() {
    let stub = Stub::start("debugme");
    let out = stub.gdb(
        "debugme",
        &[
            "break debugme::main",
            "continue",
            "info registers",
            "bt",
            "x/gx &debugme::ANSWER",
            "print debugme::ANSWER",
            "set var debugme::ANSWER = 1234",
            "print debugme::ANSWER",
            "break debugme::report",
            "continue",
            "bt",
            "step",
            "info registers rip",
            "delete",
            "detach",
        ],
    );
    // The breakpoint by symbol name, hit with source position.
    assert!(out.contains("Breakpoint 1 at 0x"), "{out}");
    assert!(out.contains("Breakpoint 1, debugme::main"), "{out}");
    // General, segment and SSE registers.
    for reg in ["rax", "rsp", "rip", "eflags", "cs ", "ss "] {
        assert!(
            out.lines().any(|l| l.starts_with(reg)),
            "no {reg} in info registers: {out}"
        );
    }
    // A backtrace of guest frames, in the guest's source.
    assert!(out.contains("debugme.rs"), "{out}");
    assert!(out.contains("Breakpoint 2, debugme::report"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("#1") && l.contains("main")),
        "bt from report lacks main's frame: {out}"
    );
    // Memory at the global's guest-virtual address: 41 = 0x29.
    assert!(
        out.lines()
            .any(|l| l.contains("ANSWER") && l.contains(":\t0x0000000000000029")),
        "{out}"
    );
    assert!(out.contains("$1 = 41"), "{out}");
    assert!(out.contains("$2 = 1234"), "{out}");
    // `step` moved on inside the guest.
    assert!(out.contains("rip            0x"), "{out}");
    assert!(
        out.contains("Detaching from program") || out.contains("detached"),
        "{out}"
    );
    let (status, stdout, stderr) = stub.finish();
    assert_eq!(status, Some(0), "stderr: {stderr}");
    // The guest ran on after the detach and printed the value gdb set.
    assert_eq!(stdout.trim(), "debugme: answer=1234", "stderr: {stderr}");
}

#[test]
fn stepi_and_registers_at_the_entry_point() {
    let stub = Stub::start("hello");
    let out = stub.gdb(
        "hello",
        &[
            "info registers rip",
            "stepi",
            "stepi",
            "info registers rip",
            "monitor regs",
            "kill",
        ],
    );
    // The guest waits at its ELF entry point for gdb.
    assert!(out.contains("0x100000 <_start>"), "{out}");
    assert!(out.contains("<_start+"), "stepi did not advance: {out}");
    // Control registers through the monitor command.
    assert!(out.contains("cr3  0x0000000000002000"), "{out}");
    assert!(out.contains("efer "), "{out}");
    let (status, stdout, stderr) = stub.finish();
    // Killed by gdb before it printed anything.
    assert_eq!(status, Some(128 + 9), "stderr: {stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("guest killed by gdb"), "{stderr}");
}

#[test]
fn ctrl_c_stops_a_spinning_guest() {
    let stub = Stub::start("spin");
    // gdb continues; a SIGINT to gdb is its Ctrl-C, which it sends to the
    // stub as 0x03.
    let mut cmd = gdb_command(
        "spin",
        stub.port,
        &["continue", "info registers rip", "bt", "kill"],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut gdb = cmd.spawn().expect("spawn gdb");
    // Once gdb is connected (its SIGINT handler is in place by then) and
    // has had time to send `continue`.
    let line = stub
        .stderr
        .recv_timeout(Duration::from_secs(60))
        .expect("skiff reports gdb's connection");
    assert!(line.contains("gdb connected from 127.0.0.1:"), "{line}");
    std::thread::sleep(common::scaled(Duration::from_secs(2)));
    assert!(
        gdb.try_wait().unwrap().is_none(),
        "gdb ended while the guest spins"
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(gdb.id() as i32, libc::SIGINT) };
    let mut done = None;
    for _ in 0..3000 {
        if let Some(s) = gdb.try_wait().unwrap() {
            done = Some(s);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if done.is_none() {
        let _ = gdb.kill();
    }
    let out = gdb.wait_with_output().unwrap();
    let text = gdb_text(&out);
    assert!(done.is_some(), "gdb did not stop the guest: {text}");
    assert!(text.contains("SIGINT"), "{text}");
    // Stopped inside the guest (its spin loop is inlined into the runtime's
    // start, under spin's own entry frame).
    assert!(text.contains("Program received signal SIGINT"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with('#') && l.contains("spin::")),
        "{text}"
    );
    let (status, _, stderr) = stub.finish();
    assert_eq!(status, Some(128 + 9), "stderr: {stderr}");
}

#[test]
fn a_busy_gdb_address_is_one_line() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let o = common::run_guest(&[&format!("--gdb={addr}")], "hello", &[]);
    common::assert_refused(&o, &format!("cannot listen for gdb on {addr}"));
    // A malformed address is a usage error (clap's, exit 2).
    let o = common::run_guest(&["--gdb=nowhere"], "hello", &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        common::stderr(&o).contains("not an address"),
        "{}",
        common::stderr(&o)
    );
}
