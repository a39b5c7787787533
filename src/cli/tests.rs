//! Every option of every subcommand, in every position the README shows
//! (before, between and after the others; `--flag VALUE`, `--flag=VALUE`
//! and solo5-hvt's `--flag:NAME=VALUE`; with and without `--`), parsed
//! as skiff parses argv: KERNEL and the guest's arguments must come out
//! the same whatever the order, and nothing after KERNEL is an option.

use super::*;

fn os(v: &[&str]) -> Vec<OsString> {
    v.iter().map(OsString::from).collect()
}

/// A valid value for each option, by clap id.
fn sample(id: &str) -> &'static str {
    match id {
        "mem" => "64",
        "workers" | "callers" | "runs" | "throughput" | "interval" => "2",
        "expect_status" | "backdate" => "0",
        "accel" => "cpu",
        "models" | "libs" => "m=/tmp/m",
        "block" => "disk=/tmp/d.img",
        "block_sector_size" => "disk=4096",
        "net" => "service0=tap0",
        "net_mac" => "service0=02:00:00:00:00:01",
        "restore" => "f.snap",
        "out" => "o.snap",
        "socket" => "s.sock",
        "compare" => "/bin/true",
        "stdin" => "body",
        "pool" => "p.sock",
        "listen" => "127.0.0.1:8080",
        "metrics" => "127.0.0.1:9100",
        "max_body"
        | "timeout"
        | "queue"
        | "drain"
        | "queue_per_peer"
        | "max_connections"
        | "max_connections_per_peer"
        | "header_timeout"
        | "idle_timeout"
        | "send_timeout"
        | "body_timeout"
        | "body_buffer"
        | "frame_timeout"
        | "migrate_timeout" => "100",
        "remote" => "127.0.0.1:9",
        "remote_timeout" => "2",
        "gdb" => "127.0.0.1:0",
        "dumpcore" => "/tmp",
        "plot" => "p.svg",
        "cpu_template" => "baseline",
        "control" => "c.sock",
        "incoming" => "tcp://127.0.0.1:9",
        other => panic!("no sample value for --{other}: add one"),
    }
}

/// The ways to write option `a`.
fn forms(a: &clap::Arg) -> Vec<Vec<String>> {
    let long = a.get_long().expect("every option is long");
    if !a.get_action().takes_values() {
        return vec![vec![format!("--{long}")]];
    }
    let v = sample(a.get_id().as_str());
    // `--gdb[=ADDR]`: the value, if any, only after `=`.
    if a.is_require_equals_set() {
        return vec![vec![format!("--{long}")], vec![format!("--{long}={v}")]];
    }
    let mut f = vec![
        vec![format!("--{long}"), v.to_string()],
        vec![format!("--{long}={v}")],
    ];
    if a.get_value_names()
        .is_some_and(|n| n.iter().any(|n| n.starts_with("NAME=")))
    {
        f.push(vec![format!("--{long}:{v}")]);
    }
    f
}

/// The positional part and what it must parse to.
fn check(cmd: Command, argv: &[String]) {
    let (kernel, args) = match cmd {
        Command::Run(r) => (r.run.kernel, r.run.args),
        Command::Snapshot(s) => (s.run.kernel, s.run.args),
        Command::Pool(p) => (p.run.kernel, p.run.args),
        Command::Serve(s) => (s.run.kernel, s.run.args),
        Command::Bench(b) => {
            assert_eq!(b.args, os(&["--mem=64", "k.hvt", "--x=y"]), "{argv:?}");
            return;
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(
        kernel.as_deref(),
        Some(std::path::Path::new("k.hvt")),
        "{argv:?}"
    );
    assert_eq!(args, os(&["a", "--mem=8", "--help"]), "{argv:?}");
}

#[test]
fn every_option_of_every_subcommand_in_every_position() {
    let top = skiff_command();
    let mut tried = 0;
    for sub in top.get_subcommands() {
        let name = sub.get_name();
        // The subcommands whose argv ends in KERNEL (the argv rule), and
        // bench (whose run arguments follow `--`).
        if name != "bench" && !sub.get_arguments().any(|a| a.get_id() == "kernel") {
            continue;
        }
        // Options every line needs (clap requires them).
        let required: Vec<String> = match name {
            "snapshot" => vec!["--out".into(), "o.snap".into()],
            "pool" => vec!["--socket".into(), "s.sock".into()],
            _ => vec![],
        };
        let tail: Vec<String> = match name {
            "bench" => ["--", "--mem=64", "k.hvt", "--x=y"]
                .map(String::from)
                .to_vec(),
            _ => ["k.hvt", "a", "--mem=8", "--help"]
                .map(String::from)
                .to_vec(),
        };
        let options: Vec<&clap::Arg> = sub
            .get_arguments()
            .filter(|a| !a.is_positional() && !matches!(a.get_id().as_str(), "help" | "version"))
            .collect();
        assert!(!options.is_empty(), "{name}");
        for a in &options {
            let mut required: Vec<String> = match required.first() {
                Some(r) if Some(&r[2..]) == a.get_long() => vec![],
                _ => required.clone(),
            };
            // Options that only mean something beside another (clap's
            // `requires`).
            if a.get_id() == "migrate_timeout" {
                required.extend(["--control".into(), "c.sock".into()]);
            }
            for form in forms(a) {
                let before = |mut v: Vec<String>, x: &[String]| {
                    v.extend_from_slice(x);
                    v
                };
                let orders = [
                    before(form.clone(), &required),
                    before(required.clone(), &form),
                ];
                for middle in orders {
                    for dashdash in [false, true] {
                        let mut argv = vec!["skiff".to_string(), name.to_string()];
                        argv.extend(middle.iter().cloned());
                        if dashdash && name != "bench" {
                            argv.push("--".into());
                        }
                        argv.extend(tail.iter().cloned());
                        let parsed = parse(argv.iter().map(OsString::from).collect());
                        match parsed {
                            Ok(cmd) => check(cmd, &argv),
                            Err(e) => panic!("{argv:?}: {e}"),
                        }
                        tried += 1;
                    }
                }
            }
        }
    }
    assert!(tried > 100, "only {tried} lines");
}

/// The README's own lines (and issue 15's pool line, which once failed).
#[test]
fn readme_lines_parse() {
    for line in [
        "skiff run --mem=64 --block:storage=disk.img --net:service0=tap0 --accel=cpu -- k.hvt a --mem=8 --help",
        "skiff run --block:storage=disk.img --block-sector-size:storage=4096 --net:service0=tap0 --net-mac:service0=02:00:00:00:00:01 -- k.hvt a --mem=8 --help",
        "skiff run --accel=cuda,opencl,cpu --accel-lib=n=/tmp/l.so --accel-model=imagenet=/tmp/m k.hvt a --mem=8 --help",
        "skiff snapshot --mem=64 --out o.snap k.hvt a --mem=8 --help",
        "skiff run --mem=64 --restore echo.snap k.hvt a --mem=8 --help",
        "skiff pool --socket /run/echo.sock --restore echo.snap --workers 2 --mem=64 k.hvt a --mem=8 --help",
        "skiff pool --socket s --restore f --block:disk=d k.hvt a --mem=8 --help",
        "skiff pool --workers 1 --socket s --net:service0=tap0 --restore f k.hvt a --mem=8 --help",
        "skiff bench --runs 5 --json --compare /bin/true --expect-status 0 -- --mem=64 k.hvt --x=y",
        "skiff bench --throughput 2 --callers 2 --compare /bin/true -- --mem=64 k.hvt --x=y",
        "skiff bench --stdin body --interval 20 -- --mem=64 k.hvt --x=y",
    ] {
        let argv: Vec<String> = line.split(' ').map(String::from).collect();
        match parse(argv.iter().map(OsString::from).collect()) {
            Ok(cmd) => check(cmd, &argv),
            Err(e) => panic!("{line}: {e}"),
        }
    }
    let call = parse(os(&["skiff", "call", "/run/echo.sock"])).unwrap();
    assert!(matches!(call, Command::Call(c) if c.socket == std::path::Path::new("/run/echo.sock")));
    let pool = parse(os(&[
        "skiff", "bench", "--pool", "p.sock", "--stdin", "body",
    ]))
    .unwrap();
    assert!(matches!(pool, Command::Bench(b) if b.pool.is_some() && b.args.is_empty()));
}

#[test]
fn value_flags_are_clap_s() {
    let flags = value_flags();
    let pool = &flags.iter().find(|(n, _)| n == "pool").unwrap().1;
    for f in ["--socket", "--workers", "--restore", "--mem", "--block"] {
        assert!(pool.iter().any(|x| x == f), "pool lacks {f}: {pool:?}");
    }
}

/// The argv rule (`solo5::kernel_rule`) finds a subcommand's KERNEL by
/// its clap id `kernel`: under another id, skiff would parse the guest's
/// arguments as its own, and the test above would skip the subcommand.
#[test]
fn a_kernel_operand_has_the_id_kernel() {
    for sub in skiff_command().get_subcommands() {
        for a in sub.get_positionals() {
            let names = a.get_value_names().unwrap_or_default();
            if a.get_id() == "kernel" || names.iter().any(|n| n == "KERNEL") {
                assert_eq!(a.get_id(), "kernel", "skiff {}", sub.get_name());
                assert_eq!(names, ["KERNEL"], "skiff {}", sub.get_name());
            }
        }
    }
}
