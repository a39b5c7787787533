//! vAccel's remote protocol: the same guests timing their own hypercalls
//! with `--accel=cpu` (local) and `--accel=remote` against a `skiff
//! agent` on tcp loopback and on a unix socket. NOOP round trip, sgemm
//! 512^3, and classify images/s (the model registered once per session).
//! Prints numbers.
//!
//! `cargo bench --bench remote` (release build; classify needs
//! tools/setup-model.sh). SKIFF_BENCH_N (default 512), SKIFF_BENCH_ITERS
//! (default 20) and SKIFF_BENCH_ROUNDS (default 3: local and remote
//! alternate, the best round counts) change the shape and counts.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

mod common;
use common::env_num;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[path = "../tests/support/agent.rs"]
mod agent;
use agent::Agent;

/// `skiff agent -a ADDR --accel=cpu`, with the model when there is one.
fn agent(addr: &str, model: Option<&PathBuf>, flags: &[&str]) -> Agent {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args(["agent", "-a", addr, "--accel=cpu"]).args(flags);
    if let Some(m) = model {
        cmd.arg(format!("--accel-model=imagenet={}", m.display()));
    }
    Agent::spawn(cmd)
}

/// `skiff run --accel=cpu` (no agent) or `--accel=remote` (agent).
fn skiff(agent: Option<&Agent>, guest: &str, args: &[&str], model: Option<&PathBuf>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.arg("run");
    match agent {
        Some(a) => cmd.args(["--accel=remote", &format!("--accel-remote={}", a.addr)]),
        None => cmd.arg("--accel=cpu"),
    };
    if let Some(m) = model {
        cmd.arg(format!("--accel-model=imagenet={}", m.display()));
    }
    cmd.arg(guest_images::image(guest)).args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` with `stdin`; the numbers of its output line containing
/// `marker`.
fn numbers(mut cmd: Command, stdin: &[u8], marker: &str) -> Vec<f64> {
    let mut child = cmd.spawn().expect("skiff run");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.contains(marker)).unwrap_or_else(|| {
        panic!(
            "no {marker:?} in: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    line.split([' ', '=', ','])
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// accelbench's (min, mean) ns per call.
fn accelbench(agent: Option<&Agent>, args: &[&str]) -> (f64, f64) {
    let n = numbers(skiff(agent, "accelbench", args, None), b"", "min_ns=");
    let (min, mean) = (n[n.len() - 2], n[n.len() - 1]);
    (min, mean)
}

/// The best (lowest) (min, mean) of `rounds` measurements.
fn best(rounds: usize, mut f: impl FnMut() -> (f64, f64)) -> (f64, f64) {
    (0..rounds)
        .map(|_| f())
        .fold((f64::MAX, f64::MAX), |a, b| (a.0.min(b.0), a.1.min(b.1)))
}

fn main() {
    let quick = common::quick();
    let (n, iters) = common::sgemm_shape();
    let rounds = if quick {
        1
    } else {
        env_num("SKIFF_BENCH_ROUNDS", 3)
    };
    let dir = root().join("target/model");
    let model = dir.join("efficientnet-lite0.safetensors");
    let have_model = model.exists();
    let sock = std::env::temp_dir().join(format!("skiff-bench-remote-{}.sock", std::process::id()));
    let m = have_model.then_some(&model);
    let sock2 = sock.with_extension("vaccel.sock");
    let tcp = agent("tcp://127.0.0.1:0", m, &[]);
    let unix = agent(&format!("unix://{}", sock.display()), m, &[]);
    // vAccel's protocol over unix: what a vAccel agent there would allow.
    let unix_wire = agent(
        &format!("unix://{}", sock2.display()),
        m,
        &["--no-shared-memory"],
    );
    let setups: [(&str, Option<&Agent>); 4] = [
        ("local", None),
        ("tcp", Some(&tcp)),
        ("unix", Some(&unix)),
        ("unix-w", Some(&unix_wire)),
    ];
    println!(
        "remote: skiff agent (cpu plugin) vs local --accel=cpu; the guests time their own calls"
    );
    println!("(best of {rounds} rounds; overhead vs local from the fastest call;");
    println!(" unix: skiff to skiff, large arrays through shared memory;");
    println!(" unix-w: vAccel's wire protocol over unix, as with a vAccel agent)");

    let noops = if quick { "10" } else { "20000" };
    println!("NOOP round trip ({noops} calls):");
    for (name, a) in setups {
        let (min, mean) = best(rounds, || accelbench(a, &["noop", noops]));
        println!(
            "  {name:6} min {:8.1} us  mean {:8.1} us",
            min / 1e3,
            mean / 1e3
        );
    }

    let (ns, its) = (n.to_string(), iters.to_string());
    println!("sgemm {n}^3 ({iters} calls after one warm-up):");
    let mut base = 0.0;
    for (name, a) in setups {
        let (min, mean) = best(rounds, || accelbench(a, &["sgemm", &ns, &its]));
        if a.is_none() {
            base = min;
        }
        let gflops = 2.0 * (n as f64).powi(3) / min;
        println!(
            "  {name:6} min {:9.3} ms  mean {:9.3} ms  {gflops:6.2} GFLOP/s  overhead {:+6.2}%",
            min / 1e6,
            mean / 1e6,
            (min - base) / base * 100.0
        );
    }

    if quick {
        println!(
            "classify: not run by `cargo test --benches` (a debug build takes seconds per image)"
        );
        return;
    }
    if !have_model {
        println!(
            "classify: skipped ({} missing: run tools/setup-model.sh)",
            model.display()
        );
        return;
    }
    let image = std::fs::read(dir.join("images/coffee.png")).expect("coffee.png");
    let rep = format!("repeat={}", if quick { 2 } else { iters + 1 });
    println!(
        "classify: EfficientNet-Lite0, coffee.png, {rep} (model registered once per session):"
    );
    let mut base = 0.0;
    for (name, a) in setups {
        let (min, mean) = best(rounds, || {
            let n = numbers(
                skiff(a, "classify", &[&rep], Some(&model)),
                &image,
                " timed calls, min ",
            );
            (n[1], n[2])
        });
        if a.is_none() {
            base = mean;
        }
        println!(
            "  {name:6} {:7.2} images/s (mean {:7.2} ms, min {:7.2} ms)  overhead {:+6.2}%",
            1e9 / mean,
            mean / 1e6,
            min / 1e6,
            (mean - base) / base * 100.0
        );
    }
}
