//! EfficientNet-Lite0 image classification per plugin: images/s of the
//! plugin alone (decode + preprocess + network, called from Rust), the same
//! op through skiff's hypercall (the classify guest timing its own calls),
//! and classify's exec-to-exit latency (skiff started, image piped in,
//! model loaded and network built, answer printed, exit). Prints numbers.
//!
//! `cargo bench --bench classify` (release build) after
//! `tools/setup-model.sh`. SKIFF_BENCH_ITERS (default 20) calls per
//! measurement, SKIFF_BENCH_RUNS (default 10) exec-to-exit runs.

use guest_abi::accel::op;
use skiff::accel::classify::{Classifiers, Classify};
use skiff::accel::plugins::{Plugin, PluginKind};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stats(mut t: Vec<f64>) -> (f64, f64, f64) {
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2], t.iter().sum::<f64>() / t.len() as f64)
}

/// (min, mean) ns per classification with `kind` called directly.
fn direct(kind: PluginKind, model: &PathBuf, image: &[u8], iters: usize) -> Option<(f64, f64)> {
    let p = kind
        .init()
        .map_err(|e| eprintln!("  {}: unavailable: {e}", kind.name()))
        .ok()?;
    assert!(p.implements(op::IMAGE_CLASSIFY));
    let mut plugins: Vec<Box<dyn Plugin>> = vec![p];
    let models = [("imagenet".to_string(), model.clone())];
    let mut cls = Classifiers::build(&models, &mut plugins).expect("network");
    let (mut name, mut text) = ([0u8; 256], [0u8; 1024]);
    let mut call = || {
        let mut req = Classify {
            image,
            imgname: &mut name,
            text: &mut text,
        };
        cls.run(0, 0, &mut req).expect("classify");
    };
    call(); // warm-up
    let t: Vec<f64> = (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            call();
            t0.elapsed().as_nanos() as f64
        })
        .collect();
    let (min, _, mean) = stats(t);
    Some((min, mean))
}

fn skiff_cmd(kind: PluginKind, model: &PathBuf, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.arg("run")
        .arg(format!("--accel={}", kind.name()))
        .arg(format!("--accel-model=imagenet={}", model.display()))
        .arg(guest_images::image("classify"))
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

fn run(mut cmd: Command, image: &[u8]) -> String {
    let mut child = cmd.spawn().expect("spawn skiff");
    child.stdin.take().unwrap().write_all(image).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "skiff failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (min, mean) ns per call as the classify guest measured them.
fn in_skiff(kind: PluginKind, model: &PathBuf, image: &[u8], iters: usize) -> (f64, f64) {
    let rep = format!("repeat={}", iters + 1);
    let out = run(skiff_cmd(kind, model, &[&rep]), image);
    let line = out
        .lines()
        .find(|l| l.contains(" calls, min "))
        .expect("timing line");
    let nums: Vec<f64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    (nums[1], nums[2])
}

fn main() {
    let iters = env_num("SKIFF_BENCH_ITERS", 20);
    let runs = env_num("SKIFF_BENCH_RUNS", 10);
    let dir = root().join("target/model");
    let model = dir.join("efficientnet-lite0.safetensors");
    let image = std::fs::read(dir.join("images/coffee.png"))
        .expect("target/model/images/coffee.png: run tools/setup-model.sh first");
    let cache = root().join("target/pocl-cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::env::set_var("POCL_CACHE_DIR", &cache);
    println!("classify: EfficientNet-Lite0, coffee.png (600x400 PNG, 467 KB), {iters} calls, {runs} exec-to-exit runs");
    for kind in PluginKind::ALL {
        println!("{}:", kind.name());
        let Some((dmin, dmean)) = direct(kind, &model, &image, iters) else {
            println!("  skipped: plugin unavailable on this host");
            continue;
        };
        let (smin, smean) = in_skiff(kind, &model, &image, iters);
        let ms = |ns: f64| ns / 1e6;
        println!(
            "  plugin alone:  min {:.1} ms, mean {:.1} ms = {:.1} images/s",
            ms(dmin),
            ms(dmean),
            1e9 / dmean
        );
        println!(
            "  inside skiff:  min {:.1} ms, mean {:.1} ms = {:.1} images/s",
            ms(smin),
            ms(smean),
            1e9 / smean
        );
        println!(
            "  skiff vs alone: {:+.2} % (min), {:+.2} % (mean)",
            (smin / dmin - 1.0) * 100.0,
            (smean / dmean - 1.0) * 100.0
        );
        let t: Vec<f64> = (0..runs)
            .map(|_| {
                let t0 = Instant::now();
                let out = run(skiff_cmd(kind, &model, &[]), &image);
                assert!(out.starts_with("967 espresso"), "{out}");
                t0.elapsed().as_nanos() as f64
            })
            .collect();
        let (min, med, _) = stats(t);
        println!(
            "  exec-to-exit:  min {:.1} ms, median {:.1} ms",
            min / 1e6,
            med / 1e6
        );
    }
}
