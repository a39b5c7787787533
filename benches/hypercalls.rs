//! Hot paths, in process with criterion: one hypercall round trip (a
//! 1-byte PUTS, and POLL with a zero timeout: guest OUT -> KVM exit ->
//! decode -> handle -> back into the guest), and 16 MiB of function I/O
//! end to end through a skiff process (stdin -> guest -> stdout).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::io::Write;
use std::process::{Command, Stdio};

mod common;

fn vm_running(mode: &str) -> skiff::vmm::Vm {
    let mut vm = common::cost_vm(mode);
    // Past start-up: the first exits touch fresh pages.
    for _ in 0..1000 {
        vm.step().unwrap();
    }
    vm
}

fn hypercalls(c: &mut Criterion) {
    let mut g = c.benchmark_group("hypercall");
    let mut vm = vm_running("loop-puts");
    g.bench_function("puts_1_byte_round_trip", |b| b.iter(|| vm.step().unwrap()));
    let mut vm = vm_running("loop-poll");
    g.bench_function("poll_zero_timeout_round_trip", |b| {
        b.iter(|| vm.step().unwrap())
    });
    g.finish();
}

fn function_io(c: &mut Criterion) {
    let body: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let skiff = env!("CARGO_BIN_EXE_skiff");
    let echo = guest_images::image("echo");
    let mut g = c.benchmark_group("function_io");
    g.sample_size(10)
        .throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("echo_16MiB_end_to_end", |b| {
        b.iter_batched(
            || (),
            |_| {
                let mut child = Command::new(skiff)
                    .args(["run", "--mem=64"])
                    .arg(&echo)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut sin = child.stdin.take().unwrap();
                let body = &body;
                std::thread::scope(|s| {
                    s.spawn(move || sin.write_all(body).unwrap());
                    let out = child.wait_with_output().unwrap();
                    assert_eq!(out.stdout.len(), body.len());
                });
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, hypercalls, function_io);
criterion_main!(benches);
