//! sgemm 512^3 through skiff's AccelOp hypercall (the accelbench guest
//! timing its own calls) against the same plugin called directly from
//! Rust, per plugin; and the NOOP round trip. Prints numbers.
//!
//! `cargo bench --bench accel` (release build). SKIFF_BENCH_N (default
//! 512) and SKIFF_BENCH_ITERS (default 20) change the shape and count.

use guest_abi::accel::{arg, op, AccelArg, HcAccel, CMD_GENOP, CMD_SESSION_INIT, OK};
use skiff::accel::exec::Libraries;
use skiff::accel::ops::{Op, Sgemm};
use skiff::accel::plugins::{OpContext, Plugin, PluginKind};
use skiff::accel::Accel;
use skiff::memory::{Gpa, GuestMemory};
use std::process::Command;
use std::time::Instant;

/// (min, mean) ns per sgemm `plugin.run` on n x n x n.
fn direct(plugin: &mut dyn Plugin, n: usize, iters: usize) -> (f64, f64) {
    let a = vec![0.0f32; n * n];
    let b = vec![0.0f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let libs = Libraries::default();
    let cx = OpContext { libs: &libs };
    let mut call = |c: &mut [f32]| {
        let mut s = Op::Sgemm(Sgemm {
            m: n,
            n,
            k: n,
            alpha: 1.0,
            a: &a,
            lda: n,
            b: &b,
            ldb: n,
            beta: 0.0,
            c,
            ldc: n,
        });
        plugin.run(&mut s, &cx).expect("sgemm");
    };
    call(&mut c); // warm-up
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        call(&mut c);
        times.push(t.elapsed().as_nanos() as f64);
    }
    let min = times.iter().cloned().fold(f64::MAX, f64::min);
    (min, times.iter().sum::<f64>() / iters as f64)
}

/// (min, mean) ns per call of the runtime's whole request path without
/// KVM: `Accel::handle` reading and checking an sgemm request laid out in
/// guest memory as the guest lays it out, then the plugin.
fn handled(plugin: Box<dyn Plugin>, n: usize, iters: usize) -> (f64, f64) {
    let mem = GuestMemory::new(64 << 20).unwrap();
    let mut next = 0x10_0000u64;
    let mut put = |bytes: &[u8]| {
        let at = next;
        mem.write_bytes(bytes, Gpa(at)).unwrap();
        next = (at + bytes.len() as u64 + 4095) & !4095;
        at
    };
    let mut desc = |ty, bytes: &[u8]| AccelArg {
        gpa: put(bytes),
        size: bytes.len() as u64,
        ty,
        custom: 0,
    };
    let dim = (n as i64).to_le_bytes();
    let zeros = vec![0u8; n * n * 4];
    let read = [
        desc(arg::UINT8, &[op::BLAS_SGEMM]),
        desc(arg::INT64, &dim),
        desc(arg::INT64, &dim),
        desc(arg::INT64, &dim),
        desc(arg::FLOAT32, &1f32.to_le_bytes()),
        desc(arg::FLOAT32_ARRAY, &zeros),
        desc(arg::INT64, &dim),
        desc(arg::FLOAT32_ARRAY, &zeros),
        desc(arg::INT64, &dim),
        desc(arg::FLOAT32, &0f32.to_le_bytes()),
        desc(arg::INT64, &dim),
    ];
    let c = desc(arg::FLOAT32_ARRAY, &zeros);
    let raw = |d: &[AccelArg]| -> Vec<u8> {
        d.iter()
            .flat_map(|a| {
                [a.gpa.to_le_bytes(), a.size.to_le_bytes()]
                    .concat()
                    .into_iter()
                    .chain(a.ty.to_le_bytes())
                    .chain(a.custom.to_le_bytes())
            })
            .collect()
    };
    let (read_args, write_args) = (put(&raw(&read)), put(&raw(&[c])));
    let mut accel = Accel::with_plugins(vec![plugin]);
    let mut init = HcAccel {
        cmd: CMD_SESSION_INIT,
        ..HcAccel::default()
    };
    accel.handle(&mem, &mut init);
    let req = HcAccel {
        cmd: CMD_GENOP,
        session: init.session,
        read_args,
        write_args,
        nr_read: read.len() as u32,
        nr_write: 1,
        ..HcAccel::default()
    };
    let mut call = || {
        let mut r = req;
        accel.handle(&mem, &mut r);
        assert_eq!(r.ret, OK);
    };
    call(); // warm-up
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        call();
        times.push(t.elapsed().as_nanos() as f64);
    }
    let min = times.iter().cloned().fold(f64::MAX, f64::min);
    (min, times.iter().sum::<f64>() / iters as f64)
}

/// Runs the accelbench guest; its (min, mean) ns per call.
fn via_hypercall(plugin: &str, args: &[&str]) -> Option<(f64, f64)> {
    let o = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .arg("run")
        .arg(format!("--accel={plugin}"))
        .arg(guest_images::image("accelbench"))
        .args(args)
        .env(
            "POCL_CACHE_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/pocl-cache"),
        )
        .output()
        .expect("run skiff");
    let out = String::from_utf8_lossy(&o.stdout);
    let field = |k: &str| -> Option<f64> {
        out.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
    };
    let r = field("min_ns=").zip(field("mean_ns="));
    if r.is_none() {
        eprintln!(
            "accelbench failed: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    r
}

mod common;

fn gflops(n: usize, ns: f64) -> f64 {
    2.0 * (n as f64).powi(3) / ns
}

fn main() {
    let quick = common::quick();
    let (n, iters) = common::sgemm_shape();
    std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/target/pocl-cache")).ok();
    std::env::set_var(
        "POCL_CACHE_DIR",
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/pocl-cache"),
    );
    println!("sgemm {n}^3, {iters} calls after one warm-up; min and mean per call");
    println!("direct: the plugin called from Rust; handle: skiff's request path");
    println!("without KVM (Accel::handle); hcall: the guest timing its hypercalls");
    println!("(includes the VM exit); GFLOP/s from the fastest call, overhead vs direct");
    println!(
        "{:8} {:>10} {:>10} {:>10} {:>12} {:>12} {:>14}",
        "plugin", "direct", "handle", "hcall", "handle ovh", "hcall ovh", "hcall ovh mean"
    );
    for kind in PluginKind::ALL {
        let mut p = match kind.init() {
            Ok(p) => p,
            Err(why) => {
                println!("{:8} unavailable: {why} (not measured)", kind.name());
                continue;
            }
        };
        let (dmin, dmean) = direct(p.as_mut(), n, iters);
        let (smin, _) = handled(p, n, iters); // one OpenCL user at a time
        let ns = n.to_string();
        let its = iters.to_string();
        let Some((hmin, hmean)) = via_hypercall(kind.name(), &["sgemm", &ns, &its]) else {
            continue;
        };
        let pct = |x: f64, base: f64| (x - base) / base * 100.0;
        println!(
            "{:8} {:>10.1} {:>10.1} {:>10.1} {:>11.2}% {:>11.2}% {:>13.2}%",
            kind.name(),
            gflops(n, dmin),
            gflops(n, smin),
            gflops(n, hmin),
            pct(smin, dmin),
            pct(hmin, dmin),
            pct(hmean, dmean),
        );
    }
    let noops = if quick { "10" } else { "20000" };
    if let Some((min, mean)) = via_hypercall("cpu", &["noop", noops]) {
        println!(
            "NOOP round trip ({noops} calls): min {:.1} us, mean {:.1} us",
            min / 1e3,
            mean / 1e3
        );
    }
}
