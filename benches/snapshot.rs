//! What a restore and a rewind cost, in process, on this KVM: `prepare`
//! (read and check the snapshot, map its pages, make the VM and vCPU, set
//! the vCPU state) plus the clock check and `resume` (the guest TSC), as
//! `skiff run --restore` pays before the guest's first instruction; and a
//! pool worker's rewind (memory re-mapped, vCPU state set back) plus the
//! next `resume`. The guest is `echo` at --mem=64; nothing is run.
//!
//!   cargo bench --bench snapshot [-- --bench]     (SKIFF_BENCH_RUNS, 300)
//!
//! Prints medians and 10th/90th percentiles in microseconds.

mod common;

use skiff::config::{MemSize, RunConfig};
use skiff::devices::function::Function;
use skiff::snapshot::{restore, rewind::Origin};
use std::time::Instant;

fn stats(name: &str, mut us: Vec<f64>) {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q) as usize];
    println!(
        "{name}: median {:.1} us (p10 {:.1}, p90 {:.1}; {} runs)",
        at(0.5),
        at(0.1),
        at(0.9),
        us.len()
    );
}

fn main() {
    let runs = match common::quick() {
        true => 3,
        false => common::env_num("SKIFF_BENCH_RUNS", 300),
    };
    let cfg = RunConfig {
        mem: MemSize::from_mib("64").unwrap(),
        kernel: guest_images::image("echo"),
        ..Default::default()
    };
    let dir = std::env::temp_dir().join(format!("skiff-bench-snap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snap = dir.join("echo.snap");
    skiff::snapshot::save::snapshot(&cfg, &snap, 0).expect("snapshot echo");

    let (mut restore_us, mut prepare_us, mut clock_us) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let t = Instant::now();
        let mut p = restore::prepare(&snap, &cfg).expect("prepare");
        let t1 = t.elapsed();
        p.check_clock().expect("clock");
        let t2 = t.elapsed();
        let vm = p.resume(Function::from_env()).expect("resume");
        restore_us.push(t.elapsed().as_secs_f64() * 1e6);
        prepare_us.push(t1.as_secs_f64() * 1e6);
        clock_us.push((t2 - t1).as_secs_f64() * 1e6);
        drop(vm);
    }
    stats("restore (prepare + clock + resume)", restore_us);
    stats("  of which prepare", prepare_us);
    stats("  of which the clock check", clock_us);

    let mut p = restore::prepare(&snap, &cfg).expect("prepare");
    p.check_clock().expect("clock");
    let origin = Origin::capture(&p).expect("capture");
    let mut vm = p.resume(Function::from_env()).expect("resume");
    let mut rewind_us = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let p = origin.rewind(vm).expect("rewind");
        vm = p.resume(Function::from_env()).expect("resume");
        rewind_us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    stats("rewind + resume", rewind_us);
    let _ = std::fs::remove_dir_all(&dir);
}
