//! Helpers the benches share (each bench includes this with `mod common;`
//! and uses only some of it, hence the `dead_code` allowance).
#![allow(dead_code)]

use skiff::config::{MemSize, RunConfig};
use std::str::FromStr;

/// `skiff snapshot MEM` of `kernel` into `dir/NAME.snap` (a server's
/// snapshot, made through the CLI as a user makes it).
pub fn snapshot(
    dir: &std::path::Path,
    kernel: &std::path::Path,
    name: &str,
    mem: &str,
) -> std::path::PathBuf {
    let snap = dir.join(format!("{name}.snap"));
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["snapshot", mem, "--out"])
        .arg(&snap)
        .arg(kernel)
        .stdin(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "snapshot failed");
    snap
}

/// `name` from the environment, parsed, or `default` when unset or unparsable.
pub fn env_num<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// True under `cargo test --benches`, which (unlike `cargo bench`) passes
/// no `--bench`: then a bench only checks that it runs, on a tiny shape.
pub fn quick() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// The sgemm benches' shape: (n, calls), from SKIFF_BENCH_N (512) and
/// SKIFF_BENCH_ITERS (20), or tiny under [`quick`].
pub fn sgemm_shape() -> (usize, usize) {
    match quick() {
        true => (16, 2),
        false => (
            env_num("SKIFF_BENCH_N", 512),
            env_num("SKIFF_BENCH_ITERS", 20),
        ),
    }
}

/// A VM of the `cost` guest in `mode` (its command line: `loop-puts`,
/// `loop-poll`, `loop-walltime`), built but not yet run, its console on
/// /dev/null so the loop's output costs nothing.
pub fn cost_vm(mode: &str) -> skiff::vmm::Vm {
    let cfg = RunConfig {
        mem: MemSize::from_mib("32").unwrap(),
        kernel: guest_images::image("cost"),
        cmdline: mode.as_bytes().to_vec(),
        ..Default::default()
    };
    let mut vm = skiff::builder::build(&cfg).expect("build the cost guest");
    let devnull = std::fs::File::options()
        .write(true)
        .open("/dev/null")
        .unwrap();
    vm.set_console(std::os::fd::IntoRawFd::into_raw_fd(devnull));
    vm
}

/// The plots' legend: the series' labels, upper left, on a pale box.
pub fn legend<
    'a,
    DB: plotters::prelude::DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
>(
    chart: &mut plotters::prelude::ChartContext<'a, DB, CT>,
) -> Result<(), plotters::prelude::DrawingAreaErrorKind<DB::ErrorType>> {
    use plotters::prelude::*;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
}
