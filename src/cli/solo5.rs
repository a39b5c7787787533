//! solo5-hvt's device-flag grammar, `--block:NAME=PATH`, is not one clap
//! can express (the flag name carries the device name). It is rewritten
//! to `--block NAME=PATH` before clap sees it, up to `--` or the kernel.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// skiff's options that take their value as the next argument.
const VALUE_FLAGS: [&str; 7] = [
    "--mem",
    "--restore",
    "--out",
    "--backdate",
    "--accel",
    "--accel-lib",
    "--accel-model",
];

/// Splits `--FLAG:NAME=VALUE` into `--FLAG`, `NAME=VALUE` among the options,
/// which start after the first `skip` arguments (argv[0], and `run` for skiff).
pub fn rewrite_device_flags(argv: Vec<OsString>, skip: usize) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len() + 4);
    let mut options = true;
    let mut value = false;
    for (i, a) in argv.into_iter().enumerate() {
        let b = a.as_bytes();
        if i < skip || !options || std::mem::take(&mut value) {
            out.push(a);
            continue;
        }
        // `--restore FILE`: FILE is the option's value, not the kernel.
        if VALUE_FLAGS.iter().any(|f| f.as_bytes() == b) {
            value = true;
            out.push(a);
            continue;
        }
        if b == b"--" || !b.starts_with(b"-") {
            // The kernel (or `--`): everything after it is the guest's.
            options = b.starts_with(b"-") && b != b"--";
            out.push(a);
            continue;
        }
        // Only a colon in the flag's name splits (`--gdb=HOST:PORT` stays).
        let name_end = b.iter().position(|&c| c == b'=').unwrap_or(b.len());
        match (
            b.starts_with(b"--"),
            b[..name_end].iter().position(|&c| c == b':'),
        ) {
            (true, Some(colon)) => {
                out.push(OsString::from_vec(b[..colon].to_vec()));
                out.push(OsString::from_vec(b[colon + 1..].to_vec()));
            }
            _ => out.push(a),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_colon_in_a_value_stays() {
        let got = rewrite_device_flags(v(&["skiff", "run", "--gdb=127.0.0.1:0", "k.hvt"]), 2);
        assert_eq!(got, v(&["skiff", "run", "--gdb=127.0.0.1:0", "k.hvt"]));
    }

    #[test]
    fn rewrites_only_options() {
        let got = rewrite_device_flags(
            v(&[
                "solo5-hvt",
                "--mem=2",
                "--block:storage=/tmp/x",
                "--net-mac:service=aa:bb",
                "--",
                "k.hvt",
                "--block:no=rewrite",
            ]),
            1,
        );
        assert_eq!(
            got,
            v(&[
                "solo5-hvt",
                "--mem=2",
                "--block",
                "storage=/tmp/x",
                "--net-mac",
                "service=aa:bb",
                "--",
                "k.hvt",
                "--block:no=rewrite"
            ])
        );
        let got = rewrite_device_flags(v(&["skiff", "run", "k.hvt", "--x:y=z"]), 2);
        assert_eq!(got, v(&["skiff", "run", "k.hvt", "--x:y=z"]));
        let got = rewrite_device_flags(v(&["skiff", "run", "--net:a=b", "k.hvt"]), 2);
        assert_eq!(got, v(&["skiff", "run", "--net", "a=b", "k.hvt"]));
    }
}
