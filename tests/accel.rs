//! The accelerator extension on real KVM with the project's guests and
//! real plugins: CPU (matrixmultiply), OpenCL on pocl, CUDA (absent here:
//! skipped with a note). Every bad input gets its errno, never a crash.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// pocl's program cache, kept across runs so kernels build once.
fn pocl_cache() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pocl-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `skiff run FLAGS GUEST ARGS` with pocl's cache set and VACCEL_PLUGINS
/// as given (unset when `None`).
fn run_accel(flags: &[&str], guest_name: &str, args: &[&str], env: Option<&str>) -> Output {
    let mut cmd = Command::new(skiff());
    cmd.arg("run").args(flags).arg(guest(guest_name)).args(args);
    cmd.env("POCL_CACHE_DIR", pocl_cache());
    match env {
        Some(v) => cmd.env("VACCEL_PLUGINS", v),
        None => cmd.env_remove("VACCEL_PLUGINS"),
    };
    run_with(cmd, b"", Duration::from_secs(120))
}

/// The line the sgemm guest must print for its default 40 x 24 x 33
/// (C = 2*A*B + C0), computed here independently.
fn expected_sgemm_line() -> String {
    let (m, n, k) = (40usize, 24usize, 33usize);
    let a = |i: usize, p: usize| ((i * 7 + p * 3) % 11) as i64 - 5;
    let b = |p: usize, j: usize| ((p * 5 + j * 2) % 9) as i64 - 4;
    let c0 = |i: usize, j: usize| ((i + j) % 7) as i64 - 3;
    let mut sum = 0i64;
    for i in 0..m {
        for j in 0..n {
            sum += 2 * (0..k).map(|p| a(i, p) * b(p, j)).sum::<i64>() + c0(i, j);
        }
    }
    format!("sgemm {m} {n} {k} checksum={sum}\n")
}

const CUDA_NOTE: &str = "skiff: accel: plugin cuda unavailable: no CUDA driver; skipped\n";

/// Whether this host has no CUDA driver (true on skiff's machines).
fn no_cuda() -> bool {
    skiff::accel::plugins::cuda::probe().is_err()
}

#[test]
fn sgemm_gives_the_same_line_on_cpu_and_opencl() {
    let want = expected_sgemm_line();
    for plugin in ["cpu", "opencl"] {
        let o = run_accel(&[&format!("--accel={plugin}")], "sgemm", &[], None);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{plugin}: {} {}",
            stdout(&o),
            stderr(&o)
        );
        assert_eq!(stdout(&o), want, "{plugin}");
        assert_eq!(stderr(&o), "", "{plugin}");
    }
}

#[test]
fn sgemm_larger_and_odd_shapes_agree_across_plugins() {
    for dims in [["1", "1", "1"], ["17", "65", "3"], ["64", "48", "80"]] {
        let lines: Vec<String> = ["cpu", "opencl"]
            .iter()
            .map(|p| {
                let o = run_accel(&[&format!("--accel={p}")], "sgemm", &dims, None);
                assert_eq!(o.status.code(), Some(0), "{p} {dims:?}: {}", stdout(&o));
                stdout(&o)
            })
            .collect();
        assert_eq!(lines[0], lines[1], "{dims:?}");
        assert!(lines[0].starts_with(&format!(
            "sgemm {} {} {} checksum=",
            dims[0], dims[1], dims[2]
        )));
    }
}

#[test]
fn cuda_is_skipped_cleanly_without_a_driver() {
    let o = run_accel(&["--accel=cuda,cpu"], "sgemm", &[], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), expected_sgemm_line());
    if no_cuda() {
        assert_eq!(stderr(&o), CUDA_NOTE);
        // CUDA alone: the extension is there, no plugin serves the op.
        let o = run_accel(&["--accel=cuda"], "sgemm", &[], None);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(stdout(&o), "sgemm: BLAS_SGEMM failed: errno 95\n");
        assert_eq!(stderr(&o), CUDA_NOTE);
    } else {
        eprintln!("note: this host has a CUDA driver; the skip path was not exercised");
    }
}

#[test]
fn vaccel_plugins_is_the_fallback_and_the_flag_wins() {
    let o = run_accel(&[], "sgemm", &[], Some("opencl:cpu"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), expected_sgemm_line());
    // The flag wins over a bogus environment.
    let o = run_accel(&["--accel=cpu"], "sgemm", &[], Some("bogus"));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn without_accel_the_guest_sees_no_extension() {
    let o = run_accel(&[], "sgemm", &[], None);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        "sgemm: the host offers no accelerator extension\n"
    );
    assert_eq!(stderr(&o), "");
}

/// `hint=... noop=... minmax=...` lines of the accelsel guest.
fn selection(accel: &str) -> Vec<String> {
    let o = run_accel(
        &[&format!("--accel={accel}")],
        "accelsel",
        &["0", "0x1", "0x2", "0x8", "0x80", "0x10000"],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o).lines().map(String::from).collect()
}

#[test]
fn selection_follows_the_hint_then_the_operators_order() {
    // Flags: cpu = CPU|SOFTWARE (0x9); opencl on pocl's CPU device =
    // GENERIC|CPU (0x81), and it implements no MINMAX.
    assert_eq!(
        selection("opencl,cpu"),
        [
            "hint=0x0 noop=0x81 minmax=0x9",  // no hint: first loaded
            "hint=0x1 noop=0x81 minmax=0x9",  // CPU: opencl matches first
            "hint=0x2 noop=0x81 minmax=0x9",  // GPU: none matches, first
            "hint=0x8 noop=0x9 minmax=0x9",   // SOFTWARE: cpu
            "hint=0x80 noop=0x81 minmax=0x9", // GENERIC: opencl
            "hint=0x10000 session=e22",       // not a hint bit
        ]
    );
    assert_eq!(
        selection("cpu,opencl"),
        [
            "hint=0x0 noop=0x9 minmax=0x9",
            "hint=0x1 noop=0x9 minmax=0x9",
            "hint=0x2 noop=0x9 minmax=0x9",
            "hint=0x8 noop=0x9 minmax=0x9",
            "hint=0x80 noop=0x81 minmax=0x9",
            "hint=0x10000 session=e22",
        ]
    );
}

/// A scratch dir with the EXEC test library and a model file.
fn exec_fixture() -> (TempDir, PathBuf, PathBuf) {
    let tmp = TempDir::new("accel");
    let (lib, model) = common::exec_fixture(tmp.path());
    (tmp, lib, model)
}

#[test]
fn every_bad_request_gets_its_errno() {
    let (_tmp, lib, model) = exec_fixture();
    let o = run_accel(
        &[
            "--mem=128",
            "--accel=cpu",
            &format!("--accel-lib=testlib={}", lib.display()),
            &format!("--accel-model=model={}", model.display()),
        ],
        "accelbad",
        &[],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{} {}", stdout(&o), stderr(&o));
    let want = "\
no_session=2
bad_hint=22
unknown_op=95
image_classify=22
op_wrong_type=22
no_args=22
sgemm_ok=0 result_ok=true
sgemm_short=22
sgemm_no_output=22
sgemm_wrong_type=22
sgemm_wrong_size=22
sgemm_overflow=22
sgemm_too_big=22
sgemm_negative=22
sgemm_small_ld=22
buffer_outside=22
buffer_wraps=22
unaligned=22
output_in_text=22
output_overlaps_input=22
args_outside=22
too_many_args=22
unknown_cmd=95
minmax=0 min=Some(-2) max=Some(7) out=[3, 0, 5, 1]
minmax_low_above_high=22
minmax_short_output=22
resource_lib_bytes=22
resource_bad_type=22
resource_unknown_name=2
resource_bytes=0 unregister=0
resource_named=0
unregister_unknown=2
resource_over_cap=12
exec_sum=0 value=15
exec_fails=71
exec_unknown_lib=2
exec_unknown_symbol=2
exec_dependency_symbol=2
exec_data_symbol=2
release=0
noop_after=0 plugin=0x9
";
    assert_eq!(stdout(&o), want);
    // The one backend failure is reported to the operator too.
    assert_eq!(
        stderr(&o),
        "skiff: accel: cpu: EXEC function failed: testlib:always_fails returned 7\n"
    );
}

#[test]
fn an_unreadable_request_struct_ends_the_guest() {
    let o = run_accel(&["--accel=cpu"], "accelbad", &["badstruct"], None);
    assert_refused(&o, "hypercall ACCEL_OP: guest range");
    assert!(!stdout(&o).contains("survived"));
}

#[test]
fn bad_flags_are_one_line_and_exit_1() {
    let (_tmp, lib, _model) = exec_fixture();
    let sg = guest("sgemm");
    let sg = sg.to_str().unwrap();
    let lib_flag = format!("--accel-lib=l={}", lib.display());
    let cases: &[(&[&str], &str)] = &[
        (
            &["--accel=tpu"],
            "--accel: unknown accelerator plugin 'tpu'",
        ),
        (&["--accel=cpu,cpu"], "plugin 'cpu' is listed twice"),
        (&["--accel="], "--accel: no plugin named"),
        (
            &["--accel=cpu", "--accel-model=m=/nonexistent/m.bin"],
            "--accel-model m=/nonexistent/m.bin: No such file",
        ),
        (
            &["--accel=cpu", "--accel-model=m=/tmp"],
            "not a regular file",
        ),
        (
            &["--accel=cpu", "--accel-lib=l=/nonexistent/l.so"],
            "--accel-lib l=/nonexistent/l.so",
        ),
        (
            &["--accel=cpu", "--accel-lib=l=/etc/hostname"],
            "--accel-lib l=/etc/hostname",
        ),
        (
            &["--accel=cpu", "--accel-lib=noequals"],
            "--accel-lib=noequals: expected NAME=PATH",
        ),
        (
            &["--accel=cpu", &lib_flag, &lib_flag],
            "NAME 'l' is given twice",
        ),
        (&[&lib_flag], "--accel-lib needs --accel"),
    ];
    for (flags, needle) in cases {
        let mut v = vec!["run"];
        v.extend_from_slice(flags);
        v.push(sg);
        let mut cmd = Command::new(skiff());
        cmd.args(&v).env_remove("VACCEL_PLUGINS");
        assert_refused(&run_with(cmd, b"", Duration::from_secs(30)), needle);
    }
    let o = run_accel(&[], "sgemm", &[], Some("cpu:gpu"));
    assert_refused(&o, "VACCEL_PLUGINS: unknown accelerator plugin 'gpu'");
}
