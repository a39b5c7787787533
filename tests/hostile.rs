//! Hostile guests: the `hostile` guest does, one mode at a time, what a
//! guest should not get away with; each has one deterministic outcome: a
//! one-line message and exit 1, an exception the guest's own handler
//! reports (255), or an error code returned to the guest. The endless loop
//! (`spin`, ended by SIGTERM/SIGINT) is in tests/core.rs; an endless POLL
//! is here.

mod common;
use common::*;
use std::process::{Command, Stdio};

/// `skiff run --mem=8 hostile MODE [ARGS]`.
fn hostile(args: &[&str]) -> std::process::Output {
    run_guest(&["--mem=8"], "hostile", args)
}

#[test]
fn bad_hypercall_arguments_end_the_guest_with_one_line() {
    let outside = "lies outside guest memory (0x800000 bytes) or is read-only";
    for (mode, needle) in [
        ("arg-outside", "hypercall PUTS: guest range 0xfffffff0+0x10"),
        ("arg-straddle", "hypercall PUTS: guest range 0x7ffff8+0x10"),
        ("buf-outside", "hypercall PUTS: guest range 0x800000+0x1"),
        // addr + len wraps around 2^64: still refused, no overflow.
        (
            "len-overflow",
            "hypercall PUTS: guest range 0x100000+0xfffffffffff00000",
        ),
        // The guest's own text is read-only for skiff's writes too.
        ("walltime-readonly", "hypercall WALLTIME: guest range 0x"),
        (
            "halt-outside",
            "hypercall HALT: guest range 0xfffffff0+0x10",
        ),
    ] {
        let o = hostile(&[mode]);
        assert_refused(&o, needle);
        assert_refused(&o, outside);
        assert_eq!(stdout(&o), "", "{mode}");
    }
}

#[test]
fn bad_port_accesses_end_the_guest_with_one_line() {
    for (mode, needle) in [
        ("unknown-hypercall", "unknown hypercall 31"),
        (
            "unknown-port",
            "invalid port access: OUT of 4 bytes to port 0x1234",
        ),
        ("in", "invalid port access: IN of 4 bytes from port 0x502"),
        ("out8", "invalid port access: OUT of 1 bytes to port 0x508"),
        ("out16", "invalid port access: OUT of 2 bytes to port 0x508"),
    ] {
        let o = hostile(&[mode]);
        assert_refused(&o, needle);
        assert_eq!(stdout(&o), "", "{mode}");
    }
}

#[test]
fn memory_accesses_past_guest_memory_end_the_guest() {
    // The guest loads page tables of its own (supervisor-only, as a
    // kernel's are) mapping the address, and touches it: 16 MiB (past the
    // 8 MiB it has), the local APIC, a PCI hole, 4 GiB. On kvm_pvm such
    // tables livelock native mode until skiff's watchdog moves the guest
    // to emulation (src/vcpu/pvm.rs); the outcome is the same everywhere.
    for (mode, addr) in [
        ("mmio-read", None),
        ("mmio-write", None),
        ("mmio-write", Some("0xfee00000")),
        ("mmio-read", Some("0xfee00000")),
        ("mmio-write", Some("0xd0000000")),
        ("mmio-read", Some("0x100000000")),
    ] {
        let o = hostile(&[[mode].as_slice(), addr.as_slice()].concat());
        let at = addr.unwrap_or("0x1000000");
        let kind = if mode == "mmio-read" { "read" } else { "write" };
        assert_refused(
            &o,
            &format!("memory access outside guest memory at {at} ({kind})"),
        );
        assert_eq!(stdout(&o), "", "{mode} {at}");
    }
}

#[test]
fn a_guest_on_page_tables_of_its_own_runs() {
    let o = hostile(&["own-tables"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "own-tables: ok, clock true\n");
    assert_eq!(stderr(&o), "");
}

#[test]
fn a_forged_manifest_copy_does_not_attach_a_device() {
    // The guest rewrites its manifest copy through its own tables to claim
    // an attached block device: skiff's own record answers (EINVAL).
    let o = hostile(&["forge-manifest"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let einval = guest_abi::hvt::ret::EINVAL;
    assert_eq!(
        stdout(&o),
        format!("forge-manifest: block_write={einval}\n")
    );
}

#[test]
fn writes_to_read_only_memory_fault() {
    // The boot area is read-only in the guest's page tables: a #PF that
    // the guest's own handler reports before it aborts.
    let o = hostile(&["write-boot"]);
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("trap: type=#PF") && stdout(&o).contains("addr(cr2)=0x10000"),
        "{}",
        stdout(&o)
    );
    assert_eq!(stderr(&o), "");
    // Its own text is writable in its page tables but read-only in skiff.
    // (KVM names the address where it exits with MMIO; kvm_pvm's native
    // mode fails KVM_RUN with EFAULT instead, without one.)
    assert_refused(&hostile(&["write-text"]), "write to read-only guest memory");
}

#[test]
fn hlt_and_triple_fault_end_the_guest_with_one_line() {
    // The same on every KVM, kvm_pvm's native mode included, where the
    // guest's first HLT would return at once unless skiff spent kvm_pvm's
    // one-time wake first (src/vcpu/pvm.rs, `FirstHlt`): a single HLT, a
    // halt loop, and a HLT after a hypercall and after a CPU second of
    // compute (past the native-mode watchdog's first kick).
    for args in [
        &["hlt"][..],
        &["hlt-loop"],
        &["hlt-after", "puts"],
        &["hlt-after", "compute"],
    ] {
        let o = hostile(args);
        assert_refused(&o, "the guest halted the CPU (HLT) with no way to wake it");
        let expected = if args[1..] == ["puts"] {
            "before\n"
        } else {
            ""
        };
        assert_eq!(stdout(&o), expected, "{args:?}");
    }
    assert_refused(
        &run_guest(&[], "triplefault", &[]),
        "triple fault (the guest could not handle an exception)",
    );
}

#[test]
fn hypercalls_for_absent_devices_return_einval_to_the_guest() {
    let o = hostile(&["no-devices"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let einval = guest_abi::hvt::ret::EINVAL;
    assert_eq!(
        stdout(&o),
        format!("no-devices: block_write={einval} block_read={einval} net={einval}\n")
    );
}

/// Runs the flood with `n` hypercalls of each kind; returns skiff's peak
/// RSS in KiB (from wait4's rusage for that one child).
// The child is reaped by wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn flood_peak_rss_kib(n: u64) -> i64 {
    let mut child = Command::new(skiff())
        .args(["run", "--mem=8", guest("hostile").to_str().unwrap()])
        .args(["flood", &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; we wait for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointers; the pid is our child's.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status:#x}"
    );
    assert_eq!(out, format!("flood: {n} hypercalls of each kind\n"));
    ru.ru_maxrss
}

#[test]
fn a_flood_of_hypercalls_completes_in_bounded_memory() {
    // Each exit costs tens of microseconds on nested KVM, so the flood is
    // 20,000 PUTS + 20,000 WALLTIME rather than a million; what matters is
    // that skiff's memory does not grow with the number of hypercalls.
    let small = flood_peak_rss_kib(100);
    let big = flood_peak_rss_kib(20_000);
    assert!(
        big - small < 1024,
        "peak RSS grew from {small} KiB to {big} KiB with 200x more hypercalls"
    );
}

#[test]
fn an_unknown_mode_is_the_guests_own_failure() {
    let o = hostile(&["no-such-mode"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o), "");
}

#[test]
fn an_endless_poll_ends_promptly_on_sigterm() {
    let g = guest("hostile");
    signal_running(
        &["--mem=8", g.to_str().unwrap(), "poll-forever"],
        libc::SIGTERM,
    );
}
