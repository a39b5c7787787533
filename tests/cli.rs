//! The command line as people use it (issue 20): clap's whole message and
//! exit status 2 for usage errors, solo5-hvt's own messages and argv rule
//! when invoked as `solo5-hvt`, `skiff bench`'s refusals and reports, the
//! errors that must name their object, and the layering rule that only
//! `src/cli/` and `src/main.rs` use `crate::cli`.

mod common;
use common::*;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A usage error: clap's whole message on stderr and exit status 2.
fn assert_usage(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} lacks {n:?}");
    }
    assert!(err.contains("For more information, try '--help'"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn usage_errors_are_clap_s_whole_message_and_status_2() {
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    assert_usage(
        &skiff_run(&["run"]),
        &[
            "the following required arguments were not provided:\n  <KERNEL>",
            "Usage: skiff run",
        ],
    );
    assert_usage(
        &skiff_run(&["call"]),
        &["<PATH>", "Usage: skiff call <PATH>"],
    );
    assert_usage(
        &skiff_run(&["bench"]),
        &["<RUN-ARGS>", "Usage: skiff bench"],
    );
    assert_usage(
        &skiff_run(&["snapshot", hello]),
        &["required arguments were not provided:\n  --out <FILE>"],
    );
    assert_usage(
        &skiff_run(&["rnu"]),
        &[
            "unrecognized subcommand 'rnu'",
            "tip: a similar subcommand exists: 'run'",
        ],
    );
    assert_usage(
        &skiff_run(&["run", "-mem=64", hello]),
        &[
            "unexpected argument '-mem=64'",
            "tip: long options take two dashes: '--mem=64'",
        ],
    );
    // The value is named once, by clap.
    let o = skiff_run(&["run", "--mem=1", hello]);
    assert_usage(&o, &["invalid value '1' for '--mem <MB>': too small"]);
    assert_eq!(stderr(&o).matches('1').count(), 1, "{}", stderr(&o));
    // A bare `skiff`: its usage and the subcommands, status 2.
    let o = skiff_run(&[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("Usage: skiff <COMMAND>"), "{err}");
    for sub in ["run", "bench", "snapshot", "pool", "call", "hook"] {
        assert!(err.contains(&format!("  {sub} ")), "{sub} missing: {err}");
    }
    // Help and version are not errors.
    let o = skiff_run(&["run", "--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("Usage: skiff run"), "{}", stdout(&o));
    assert_eq!(skiff_run(&["--version"]).status.code(), Some(0));
}

#[test]
fn nothing_after_kernel_is_an_option() {
    // skiff run: --mem=64 and --help after KERNEL are the guest's.
    let o = run_guest(&[], "hello", &["--mem=64", "--help", "--ipv4=10.0.0.2/24"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "Hello, world!\ncmdline: --mem=64 --help --ipv4=10.0.0.2/24\n"
    );
    // `--` then a kernel whose name starts with a dash is still a kernel.
    let o = skiff_run(&["run", "--", "-k.hvt"]);
    assert_refused(&o, "-k.hvt: cannot open");
}

fn hvt(dir: &TempDir, args: &[&str]) -> Output {
    let mut cmd = Command::new(solo5_hvt(dir.path()));
    cmd.args(args);
    run_with(cmd, b"", Duration::from_secs(30))
}

#[test]
fn as_solo5_hvt_its_own_messages_argv_rule_and_status() {
    let dir = TempDir::new("cli-solo5");
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    // No kernel: solo5-hvt's line, then its usage; status 1.
    for args in [&[][..], &["--mem=64"], &["--mem=64", "--"]] {
        let o = hvt(&dir, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(
            err.starts_with("solo5-hvt: Missing KERNEL operand\nusage: solo5-hvt [ CORE OPTIONS ]"),
            "{err}"
        );
        assert!(
            err.contains("KERNEL is the filename of the unikernel to run."),
            "{err}"
        );
    }
    let o = hvt(&dir, &["--bogus", hello]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("solo5-hvt: Invalid option: `--bogus'\nusage: solo5-hvt "),
        "{}",
        stderr(&o)
    );
    let o = hvt(&dir, &["--help"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).starts_with("usage: solo5-hvt "),
        "{}",
        stderr(&o)
    );
    // Everything after KERNEL is the guest's, --help included.
    let o = hvt(&dir, &[hello, "--mem=64", "--help"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "Hello, world!\ncmdline: --mem=64 --help\n");
    // urunc's shape: no `--`, flags with values, then the kernel.
    let o = hvt(&dir, &["--mem=32", hello, "a", "--net:x=y"]);
    assert_eq!(
        stdout(&o),
        "Hello, world!\ncmdline: a --net:x=y\n",
        "{}",
        stderr(&o)
    );
    // A bad value: one line naming flag and value, status 1.
    assert_refused(
        &hvt(&dir, &["--mem=lots", hello]),
        "invalid value 'lots' for '--mem <MB>'",
    );
}

#[test]
fn pool_takes_socket_and_workers_before_device_flags() {
    // Issue 15: `--socket s --restore f --block:disk=d k` was refused with
    // "unexpected argument '--block:disk'". It now reaches the snapshot.
    let dir = TempDir::new("cli-pool");
    let sock = dir.path().join("p.sock");
    let o = skiff_run(&[
        "pool",
        "--socket",
        sock.to_str().unwrap(),
        "--workers",
        "1",
        "--restore",
        "/nonexistent/f.snap",
        "--block:disk=/nonexistent/d",
        guest("blk").to_str().unwrap(),
    ]);
    assert_refused(&o, "--restore /nonexistent/f.snap: No such file");
}

#[test]
fn bench_refuses_bad_counts_and_says_why_a_run_failed() {
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    for (flag, value) in [("--runs", "0"), ("--throughput", "0"), ("--callers", "0")] {
        let mut args = vec!["bench", flag, value];
        if flag == "--callers" {
            args.extend(["--throughput", "1"]);
        }
        args.extend(["--", hello]);
        assert_usage(
            &skiff_run(&args),
            &[
                &format!("invalid value '0' for '{flag} "),
                "must be at least 1",
            ],
        );
    }
    // The run's own last line, not "run it by hand".
    let o = skiff_run(&["bench", "--runs", "2", "--", "/nonexistent/k.hvt"]);
    assert_refused(
        &o,
        "exited with status 1 (expected 0): skiff: /nonexistent/k.hvt: cannot open",
    );
    assert!(
        stdout(&o).is_empty(),
        "a report was printed: {}",
        stdout(&o)
    );
    // --stdin names the file, not a program that cannot start.
    let o = skiff_run(&["bench", "--stdin", "/nonexistent/body", "--", hello]);
    assert_refused(&o, "cannot open --stdin /nonexistent/body: No such file");
}

#[test]
fn bench_reports_phases_by_name_as_table_and_json() {
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    let o = skiff_run(&["bench", "--runs", "3", "--json", "--", "--mem=64", hello]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["runs"], 3);
    let phases = v["phases"].as_object().expect("phases is an object");
    let names: Vec<&str> = phases.keys().map(String::as_str).collect();
    for want in ["main", "kvm_ready", "first_instruction", "halt", "exit"] {
        assert!(names.contains(&want), "{names:?}");
        assert!(phases[want]["median_us"].as_f64().unwrap() > 0.0, "{want}");
    }
    // The table: every line ends in a newline, the header names the image.
    let o = skiff_run(&["bench", "--runs", "2", "--", hello]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with(&format!("skiff bench: {hello} (2 runs)\n")),
        "{out}"
    );
    assert!(out.ends_with('\n'), "{out:?}");
    assert!(out.contains("\nexit "), "{out}");
    // --throughput honours --json.
    let o = skiff_run(&[
        "bench",
        "--throughput",
        "1",
        "--callers",
        "1",
        "--json",
        "--",
        hello,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v[0]["runs_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v[0]["callers"], 1);
}

#[test]
fn bench_pool_header_names_the_call() {
    let dir = TempDir::new("cli-bench-pool");
    let snap = make_snapshot(dir.path(), "echo", "--mem=64", &[], &[]);
    let pool = common::pool::Pool::start(dir.path(), "echo", &snap, 1, &["--mem=64"]);
    let body = dir.path().join("body");
    std::fs::write(&body, b"hi").unwrap();
    let o = skiff_run(&[
        "bench",
        "--runs",
        "2",
        "--pool",
        pool.socket.to_str().unwrap(),
        "--stdin",
        body.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let first = stdout(&o).lines().next().unwrap_or_default().to_string();
    assert_eq!(
        first,
        format!("skiff bench: call {} (2 runs)", pool.socket.display())
    );
}

#[test]
fn device_and_library_errors_name_the_problem() {
    // A net device on an interface that exists but is no TAP.
    let o = run_guest(&["--net:service0=lo"], "ping", &[]);
    assert_refused(&o, "service0: interface lo is not a TAP device");
    // dlopen's reason, not just "dlopen failed".
    let o = run_guest(
        &["--accel=cpu", "--accel-lib=x=/nonexistent/l.so"],
        "hello",
        &[],
    );
    assert_refused(
        &o,
        "--accel-lib x=/nonexistent/l.so: cannot load the library: /nonexistent/l.so: cannot open shared object file",
    );
    // "lies" no more.
    let dir = TempDir::new("cli-trunc");
    let img = std::fs::read(guest("hello")).unwrap();
    let p = dir.path().join("t.hvt");
    std::fs::write(&p, &img[..70]).unwrap();
    assert_refused(
        &skiff_run(&["run", p.to_str().unwrap()]),
        "truncated ELF: the file ends inside the program headers",
    );
}

#[test]
fn a_huge_image_is_refused_from_its_header() {
    let dir = TempDir::new("cli-huge");
    // 3 GiB, sparse: not an ELF file, said at once.
    let p = dir.path().join("huge.hvt");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(3 << 30).unwrap();
    let t = Instant::now();
    let o = skiff_run(&["run", p.to_str().unwrap()]);
    assert_refused(&o, "not an ELF file");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    // A real image followed by 3 GiB of nothing: only what its headers
    // name is read, and it runs.
    let q = dir.path().join("padded.hvt");
    std::fs::write(&q, std::fs::read(guest("hello")).unwrap()).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&q)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let t = Instant::now();
    let o = skiff_run(&["run", "--mem=8", q.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn only_cli_and_main_use_crate_cli() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    assert!(files.len() > 20);
    let offenders: Vec<_> = files
        .iter()
        .filter(|p| !p.starts_with(src.join("cli")) && *p != &src.join("main.rs"))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            text.contains("crate::cli")
                || text.contains("super::cli")
                || text.contains("skiff::cli")
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "library modules use crate::cli: {offenders:?}"
    );
}

#[test]
fn a_second_pool_on_a_live_socket_leaves_the_first_alone() {
    let dir = TempDir::new("cli-pool-live");
    let snap = make_snapshot(dir.path(), "echo", "--mem=64", &[], &[]);
    let sock = dir.path().join("live.sock");
    let log = dir.path().join("first.err");
    let pool_args = |extra: &[&str]| {
        let mut v: Vec<String> = ["pool", "--socket", sock.to_str().unwrap(), "--workers", "1"]
            .map(String::from)
            .to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend(
            [
                "--mem=64",
                "--restore",
                snap.to_str().unwrap(),
                guest("echo").to_str().unwrap(),
            ]
            .map(String::from),
        );
        v
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
    let mut first = Kill(
        Command::new(skiff())
            .args(pool_args(&[]))
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("workers ready")
    {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the first pool never got ready"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let args = pool_args(&[]);
    let o = skiff_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_refused(&o, "a pool is already serving there");
    // The first pool's worker was not taken by the check, and serves.
    std::thread::sleep(Duration::from_millis(200));
    let mut c = Command::new(skiff());
    c.arg("call").arg(&sock);
    let o = run_with(c, b"still mine", Duration::from_secs(30));
    assert_eq!(o.stdout, b"still mine", "{}", stderr(&o));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.0.id() as i32, libc::SIGTERM) };
    first.0.wait().unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(
        !err.contains("hung up"),
        "the first pool was disturbed: {err}"
    );
}
