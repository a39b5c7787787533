//! The core tender on real KVM with the project's own guests: console,
//! command line, memory, traps, TLS, SSE, time, exit status, signals, and
//! the `solo5-hvt` drop-in name.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn hello_prints_and_sees_its_command_line() {
    let o = run_guest(&[], "hello", &["Hello", "Solo5", "--x=y"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Hello, world!\ncmdline: Hello Solo5 --x=y\n");
    assert_eq!(stderr(&o), "");
}

#[test]
fn quiet_prints_nothing() {
    let o = run_guest(&[], "quiet", &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
}

#[test]
fn guests_checking_themselves_pass() {
    for (g, line) in [
        ("globals", "globals: ok"),
        ("tls", "tls: ok"),
        ("time", "time: ok"),
    ] {
        let o = run_guest(&["--mem=32"], g, &[]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{g}: {} {}",
            stdout(&o),
            stderr(&o)
        );
        assert!(stdout(&o).contains(line), "{g}: {}", stdout(&o));
    }
}

#[test]
fn traps_abort_the_guest_with_255() {
    for (g, ty) in [("exception", "#UD"), ("zeropage", "#PF"), ("notls", "#PF")] {
        let o = run_guest(&[], g, &[]);
        assert_eq!(o.status.code(), Some(255), "{g}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(
            out.contains("trap: type=") && out.contains(ty),
            "{g}: {out}"
        );
    }
    // abort is a function (ABI1 note): its console, the panic message
    // included, goes to stderr and never into its response on stdout.
    let o = run_guest(&[], "abort", &[]);
    assert_eq!(o.status.code(), Some(255));
    assert!(stderr(&o).contains("deliberate"), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
}

#[test]
fn exceptions_on_an_ist_stack_are_delivered() {
    // Solo5's guests take every trap on an IST stack in low memory.
    let o = run_guest(&[], "iststack", &[]);
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    assert!(stdout(&o).contains("trap: type=#UD"), "{}", stdout(&o));
}

#[test]
fn exit_status_is_the_guests() {
    for code in ["0", "1", "42", "255"] {
        let o = run_guest(&[], "exitcode", &[code]);
        assert_eq!(o.status.code(), Some(code.parse().unwrap()));
    }
}

#[test]
fn memory_sizes_from_small_to_4gib() {
    for mem in ["--mem=2", "--mem=3", "--mem=64", "--mem=4096"] {
        let o = run_guest(&[mem], "hello", &[]);
        assert_eq!(o.status.code(), Some(0), "{mem}: {}", stderr(&o));
    }
    // globals has a 3 MiB .bss: it needs more than 2 MiB, and says so.
    assert_refused(
        &run_guest(&["--mem=2"], "globals", &[]),
        "does not fit in guest memory",
    );
    for mem in ["--mem=8", "--mem=4096"] {
        let o = run_guest(&[mem], "globals", &[]);
        assert_eq!(o.status.code(), Some(0), "{mem}: {}", stderr(&o));
    }
}

#[test]
fn solo5_hvt_name_takes_solo5_argv() {
    let tmp = TempDir::new("drop-in");
    let hvt = solo5_hvt(tmp.path());
    let mut cmd = Command::new(&hvt);
    cmd.args(["--mem=16", "--"])
        .arg(guest("hello"))
        .args(["a", "b"]);
    let o = run_with(cmd, b"", Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Hello, world!\ncmdline: a b\n");
    // Its errors are solo5-hvt's own: the line, its usage, status 1.
    let o = run_with(Command::new(&hvt), b"", Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("solo5-hvt: Missing KERNEL operand\nusage: solo5-hvt "),
        "{}",
        stderr(&o)
    );
    // No `run` word in this mode: `run` is taken as the kernel path.
    let mut cmd = Command::new(&hvt);
    cmd.arg("run").arg(guest("hello"));
    assert_refused(
        &run_with(cmd, b"", Duration::from_secs(30)),
        "run: cannot open",
    );
}

#[test]
fn sigterm_and_sigint_end_a_spinning_guest_promptly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_running(&[guest("spin").to_str().unwrap()], sig);
    }
}

#[test]
fn guest_faults_end_with_one_line() {
    // A spinning guest that never halts is killed by the test; faults are
    // covered by the hostile-guest tests. Here: a triple fault.
    let o = run_guest(&[], "triplefault", &[]);
    assert_refused(&o, "triple fault");
}

/// SSE and x87 work in the guest. On kvm_pvm (skiff's own machines) this
/// needs skiff's PV registration (src/vcpu/pvm.rs): without it every guest
/// instruction is emulated and SSE fails, as it does under solo5-hvt there.
#[test]
fn sse_runs_in_the_guest() {
    let o = run_guest(&[], "sse", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "sse: ok\n");
}
