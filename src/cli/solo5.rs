//! solo5-hvt's argv rule, for `solo5-hvt` and skiff's KERNEL-taking
//! subcommands alike: `[flags] [--] KERNEL [guest args...]`. Options end at
//! KERNEL (the first argument that is not an option or an option's value);
//! everything after it is the guest's, however much it looks like a flag
//! (MirageOS passes `--ipv4=...`). And its device grammar,
//! `--block:NAME=PATH`, which clap cannot express (the flag name carries
//! the device name), is rewritten to `--block NAME=PATH` among the options.
//!
//! Which options take their value as the next argument is read from clap's
//! own definition of the command, so it cannot drift from it.

use super::run::RunCmd;
use super::REFUSED;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, FromArgMatches, Parser};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// solo5-hvt's exact argv: no subcommand word.
#[derive(Debug, Parser)]
#[command(
    name = "solo5-hvt",
    version,
    about = "skiff, as a drop-in for Solo5's hvt tender"
)]
struct Solo5Hvt {
    #[command(flatten)]
    run: RunCmd,
}

/// `cmd`'s long (and short) options that take a value.
pub fn value_flags(cmd: &clap::Command) -> Vec<String> {
    let mut out = Vec::new();
    for a in cmd.get_arguments() {
        // `--gdb[=ADDR]`: an optional value only ever comes after `=`.
        if a.is_positional() || !a.get_action().takes_values() || a.is_require_equals_set() {
            continue;
        }
        if let Some(longs) = a.get_long_and_visible_aliases() {
            out.extend(longs.into_iter().map(|l| format!("--{l}")));
        }
        if let Some(shorts) = a.get_short_and_visible_aliases() {
            out.extend(shorts.into_iter().map(|s| format!("-{s}")));
        }
    }
    out
}

/// An argv split by the rule: the options (device flags rewritten) and,
/// when there is one, KERNEL with the guest's arguments.
#[derive(Debug, PartialEq, Eq)]
struct Split {
    options: Vec<OsString>,
    kernel: Option<Vec<OsString>>,
}

/// Whether `flag` (`--name` or `-c`, no value attached) is one of `cmd`'s
/// options that take a value. Allocation-free: it runs for every option
/// on every start-up.
fn takes_value(cmd: &clap::Command, flag: &[u8]) -> bool {
    let long = flag.strip_prefix(b"--");
    let short = match flag {
        [b'-', c] if *c != b'-' => Some(char::from(*c)),
        _ => None,
    };
    // `--gdb[=ADDR]`: an optional value only ever comes after `=`.
    cmd.get_arguments().any(|a| {
        !a.is_positional()
            && a.get_action().takes_values()
            && !a.is_require_equals_set()
            && (long.is_some_and(|l| {
                a.get_long().is_some_and(|x| x.as_bytes() == l)
                    || a.get_visible_aliases()
                        .is_some_and(|v| v.iter().any(|x| x.as_bytes() == l))
            }) || short.is_some_and(|c| a.get_short() == Some(c)))
    })
}

fn split(args: impl IntoIterator<Item = OsString>, cmd: &clap::Command) -> Split {
    let mut options = Vec::new();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let b = a.as_bytes();
        if b == b"--" {
            let rest: Vec<OsString> = args.collect();
            let kernel = (!rest.is_empty()).then_some(rest);
            return Split { options, kernel };
        }
        if !b.starts_with(b"-") || b == b"-" {
            let kernel = Some(std::iter::once(a).chain(args).collect());
            return Split { options, kernel };
        }
        let takes_value = |f: &[u8]| takes_value(cmd, f);
        // `--block:NAME=PATH` -> `--block`, `NAME=PATH`.
        if let Some(colon) = b.iter().position(|&c| c == b':') {
            if b.starts_with(b"--") && takes_value(&b[..colon]) {
                options.push(OsString::from_vec(b[..colon].to_vec()));
                options.push(OsString::from_vec(b[colon + 1..].to_vec()));
                continue;
            }
        }
        options.push(a.clone());
        // `--restore FILE`: FILE is the option's value, not the kernel.
        if takes_value(b) {
            options.extend(args.next());
        }
    }
    Split {
        options,
        kernel: None,
    }
}

/// `-mem=64` (one dash, a long option's name): clap would see `-m` and
/// say only that; this says what was meant.
fn one_dash_long(sub: &clap::Command, options: &[OsString]) -> Option<clap::Error> {
    let given = options.iter().find(|o| {
        let b = o.as_bytes();
        if b.len() < 3 || b.starts_with(b"--") || !b.starts_with(b"-") {
            return false;
        }
        let end = b.iter().position(|&c| c == b'=' || c == b':');
        let name = &b[1..end.unwrap_or(b.len())];
        sub.get_arguments()
            .any(|a| a.get_long().is_some_and(|l| l.as_bytes() == name))
    })?;
    // The error path only: the command is built here, for its usage line.
    let top = super::skiff_command();
    let mut cmd = top.find_subcommand(sub.get_name())?.clone();
    let given = given.to_string_lossy();
    let msg = format!(
        "unexpected argument '{given}' found\n\n  tip: long options take two dashes: '-{given}'"
    );
    Some(clap::Error::raw(ErrorKind::UnknownArgument, msg).format(&mut cmd))
}

/// The rule for `skiff SUBCOMMAND ...`: for subcommands that take a
/// KERNEL, argv is rebuilt as `skiff SUB OPTIONS -- KERNEL ARGS...`, so
/// clap parses nothing after KERNEL. Others pass through unchanged.
pub fn kernel_rule(top: &clap::Command, argv: Vec<OsString>) -> Result<Vec<OsString>, clap::Error> {
    let Some(sub) = argv
        .get(1)
        .and_then(|s| top.find_subcommand(s))
        .filter(|s| s.get_arguments().any(|a| a.get_id() == "kernel"))
    else {
        return Ok(argv);
    };
    let mut argv = argv.into_iter();
    let head: Vec<OsString> = argv.by_ref().take(2).collect();
    let s = split(argv, sub);
    if let Some(e) = one_dash_long(sub, &s.options) {
        return Err(e);
    }
    Ok(rebuild(head, s))
}

fn rebuild(head: Vec<OsString>, s: Split) -> Vec<OsString> {
    let mut out = head;
    out.extend(s.options);
    if let Some(k) = s.kernel {
        out.push("--".into());
        out.extend(k);
    }
    out
}

/// Parses solo5-hvt's argv. On a usage error it prints what solo5-hvt
/// would (`solo5-hvt: Invalid option: ...`, `Missing KERNEL operand`, then
/// its usage) and returns the exit status, 1, as solo5-hvt does.
pub fn parse(prog: &str, argv: Vec<OsString>) -> Result<RunCmd, i32> {
    let cmd = Solo5Hvt::command();
    let mut argv = argv.into_iter();
    let head: Vec<OsString> = argv.by_ref().take(1).collect();
    let s = split(argv, &cmd);
    if s.options.iter().any(|o| o == "--help") {
        return Err(usage(prog));
    }
    if s.kernel.is_none() && !s.options.iter().any(|o| o == "--version") {
        crate::diag::line(prog, &"Missing KERNEL operand");
        return Err(usage(prog));
    }
    if let Some(bad) = s.options.iter().find(|o| {
        let b = o.as_bytes();
        b.len() > 2 && b.starts_with(b"-") && !b.starts_with(b"--")
    }) {
        return Err(invalid_option(prog, &bad.to_string_lossy()));
    }
    let mut cmd = cmd;
    let parsed = cmd.try_get_matches_from_mut(rebuild(head, s));
    match parsed.and_then(|m| Solo5Hvt::from_arg_matches(&m)) {
        Ok(s) => Ok(s.run),
        Err(e) => Err(match e.kind() {
            ErrorKind::DisplayVersion => {
                let _ = e.print();
                0
            }
            ErrorKind::UnknownArgument => {
                let arg = match e.get(ContextKind::InvalidArg) {
                    Some(ContextValue::String(a)) => a.clone(),
                    _ => "?".into(),
                };
                invalid_option(prog, &arg)
            }
            _ => {
                // A bad value (`--mem=lots`): clap's first line names the
                // flag, the value and the problem.
                let text = e.to_string();
                let line = text.lines().next().unwrap_or("invalid arguments");
                crate::diag::line(prog, &line.trim_start_matches("error: "));
                REFUSED
            }
        }),
    }
}

fn invalid_option(prog: &str, arg: &str) -> i32 {
    crate::diag::line(prog, &format_args!("Invalid option: `{arg}'"));
    usage(prog)
}

/// solo5-hvt's usage text, on stderr, with skiff's options; status 1.
fn usage(prog: &str) -> i32 {
    let mut text = format!(
        "usage: {prog} [ CORE OPTIONS ] [ MODULE OPTIONS ] [ -- ] KERNEL [ ARGS ]\n\
         KERNEL is the filename of the unikernel to run.\n\
         ARGS are optional arguments passed to the unikernel.\n\
         Core options:\n  [ --mem=512 ] (guest memory in MB)\n    --help (display this help)\n\
         Compiled-in modules: net block\n\
         Compiled-in module options:\n\
         \x20   [ --net:NAME=IFACE | @NN ] [ --net-mac:NAME=HWADDR ]\n\
         \x20   [ --block:NAME=PATH ] [ --block-sector-size:NAME=SIZE ]\n\
         skiff's own options:\n"
    );
    let cmd = RunCmd::augment_args(clap::Command::new("solo5-hvt"));
    for a in cmd.get_arguments().filter(|a| !a.is_positional()) {
        let Some(long) = a.get_long() else { continue };
        if matches!(
            long,
            "mem" | "block" | "net" | "net-mac" | "block-sector-size"
        ) {
            continue;
        }
        let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
        text.push_str(&format!("    [ --{long}=... ] {help}\n"));
    }
    let _ = std::io::stderr().write_all(text.as_bytes());
    REFUSED
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    fn flags() -> Vec<String> {
        value_flags(&Solo5Hvt::command())
    }

    #[test]
    fn value_flags_come_from_clap() {
        let f = flags();
        for want in ["--mem", "--restore", "--block", "--net", "--accel-lib"] {
            assert!(f.iter().any(|x| x == want), "{want} missing from {f:?}");
            assert!(takes_value(&Solo5Hvt::command(), want.as_bytes()));
        }
        for not in ["--help", "--version", "--bogus", "-x", "--"] {
            assert!(!takes_value(&Solo5Hvt::command(), not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn options_end_at_the_kernel() {
        let s = split(
            v(&[
                "--mem=2",
                "--block:storage=/tmp/x",
                "--net-mac:service=aa:bb",
                "--restore",
                "snap",
                "k.hvt",
                "--mem=64",
                "--block:no=rewrite",
                "--help",
            ]),
            &Solo5Hvt::command(),
        );
        assert_eq!(
            s.options,
            v(&[
                "--mem=2",
                "--block",
                "storage=/tmp/x",
                "--net-mac",
                "service=aa:bb",
                "--restore",
                "snap"
            ])
        );
        assert_eq!(
            s.kernel,
            Some(v(&["k.hvt", "--mem=64", "--block:no=rewrite", "--help"]))
        );
        let s = split(v(&["--", "--odd-kernel", "a"]), &Solo5Hvt::command());
        assert_eq!(s.kernel, Some(v(&["--odd-kernel", "a"])));
        assert_eq!(
            split(v(&["--mem=2", "--"]), &Solo5Hvt::command()).kernel,
            None
        );
        assert_eq!(split(v(&["--mem=2"]), &Solo5Hvt::command()).kernel, None);
    }
}
