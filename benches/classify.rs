//! EfficientNet-Lite0 image classification per plugin: images/s of the
//! plugin alone (decode + preprocess + network, called from Rust), the same
//! op through skiff's hypercall (the classify guest timing its own calls),
//! and classify's exec-to-exit latency (skiff started, image piped in,
//! model loaded and network built, answer printed, exit). Prints numbers.
//!
//! `cargo bench --bench classify` (release build) after
//! `tools/setup-model.sh`. SKIFF_BENCH_ROUNDS (default 5) rounds of
//! SKIFF_BENCH_ITERS (default 10) calls each, alone and inside skiff in
//! turn; SKIFF_BENCH_RUNS (default 10) exec-to-exit runs.

use guest_abi::accel::op;
use skiff::accel::classify::{Classifiers, Classify};
use skiff::accel::plugins::{Plugin, PluginKind};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

mod common;
use common::env_num;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn stats(mut t: Vec<f64>) -> (f64, f64, f64) {
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2], t.iter().sum::<f64>() / t.len() as f64)
}

/// The plugin alone: a network built once, classifications timed from Rust.
struct Direct {
    cls: Classifiers,
}

impl Direct {
    fn new(kind: PluginKind, model: &Path) -> Option<Self> {
        let p = kind
            .init()
            .map_err(|e| println!("  unavailable: {e}"))
            .ok()?;
        assert!(p.implements(op::IMAGE_CLASSIFY));
        let mut plugins: Vec<Box<dyn Plugin>> = vec![p];
        let models = [("imagenet".to_string(), model.to_path_buf())];
        let cls = Classifiers::build(&models, &mut plugins).expect("network");
        Some(Direct { cls })
    }

    /// (min, mean) ns per classification of `image`.
    fn time(&mut self, image: &[u8], iters: usize) -> (f64, f64) {
        let (mut name, mut text) = ([0u8; 256], [0u8; 1024]);
        let mut call = || {
            let mut req = Classify {
                image,
                imgname: &mut name,
                text: &mut text,
            };
            self.cls.run(0, 0, &mut req).expect("classify");
        };
        call(); // warm-up, as the guest's first call
        let t: Vec<f64> = (0..iters)
            .map(|_| {
                let t0 = Instant::now();
                call();
                t0.elapsed().as_nanos() as f64
            })
            .collect();
        let (min, _, mean) = stats(t);
        (min, mean)
    }
}

fn skiff_cmd(kind: PluginKind, model: &Path, extra: &[&str]) -> Command {
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
fn in_skiff(kind: PluginKind, model: &Path, image: &[u8], iters: usize) -> (f64, f64) {
    let rep = format!("repeat={}", iters + 1);
    let out = run(skiff_cmd(kind, model, &[&rep]), image);
    let line = out
        .lines()
        .find(|l| l.contains(" timed calls, min "))
        .expect("timing line");
    let nums: Vec<f64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
    (nums[1], nums[2])
}

fn main() {
    let iters = env_num("SKIFF_BENCH_ITERS", 10);
    let rounds = env_num("SKIFF_BENCH_ROUNDS", 5);
    let runs = env_num("SKIFF_BENCH_RUNS", 10);
    let dir = root().join("target/model");
    let model = dir.join("efficientnet-lite0.safetensors");
    let image = std::fs::read(dir.join("images/coffee.png"))
        .expect("target/model/images/coffee.png: run tools/setup-model.sh first");
    let cache = root().join("target/pocl-cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::env::set_var("POCL_CACHE_DIR", &cache);
    println!("classify: EfficientNet-Lite0, coffee.png (600x400 PNG, 467 KB), {rounds} rounds of {iters} calls, {runs} exec-to-exit runs");
    for kind in PluginKind::ALL {
        println!("{}:", kind.name());
        let Some(mut direct) = Direct::new(kind, &model) else {
            println!("  skipped: plugin unavailable on this host");
            continue;
        };
        // Alone and inside skiff take turns, so both see the same load
        // from the machine's other users; the best round of each counts.
        let (mut d, mut s) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            d.push(direct.time(&image, iters));
            s.push(in_skiff(kind, &model, &image, iters));
        }
        let best = |v: &[(f64, f64)]| {
            let min = v.iter().map(|x| x.0).fold(f64::MAX, f64::min);
            let mean = v.iter().map(|x| x.1).fold(f64::MAX, f64::min);
            (min, mean)
        };
        let ((dmin, dmean), (smin, smean)) = (best(&d), best(&s));
        let ms = |ns: f64| ns / 1e6;
        println!(
            "  plugin alone:  min {:.1} ms, best mean {:.1} ms = {:.1} images/s",
            ms(dmin),
            ms(dmean),
            1e9 / dmean
        );
        println!(
            "  inside skiff:  min {:.1} ms, best mean {:.1} ms = {:.1} images/s",
            ms(smin),
            ms(smean),
            1e9 / smean
        );
        println!(
            "  skiff vs alone: {:+.2} % (min), {:+.2} % (best mean)",
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
