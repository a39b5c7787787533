//! Exit cost: one hypercall round trip (a 1-byte PUTS, a WALLTIME) on
//! kvm_pvm in native mode and under its emulator, in process; then the
//! guest's own view (the `cost` guest's TSC-timed loop of N hypercalls)
//! through a skiff process and, when SOLO5_HVT names a solo5-hvt binary,
//! through solo5-hvt on the same guest, and (on kvm_pvm) in process under
//! kvm_pvm's emulator. On any other KVM the "emulated" rows are skipped
//! (there is no native mode to leave).
//!
//!     cargo bench --bench exit_cost
//!     SOLO5_HVT=/path/to/solo5-hvt FLOOD=1000000 cargo bench --bench exit_cost
//!
//! Numbers and what skiff makes of them: docs/kvm-pvm.md.

mod common;

use std::process::Command;
use std::time::Instant;

/// Average ns per `step` over `n` steps, after 500 unmeasured ones (the
/// first exits touch fresh pages).
fn per_step(vm: &mut skiff::vmm::Vm, n: u32) -> u64 {
    for _ in 0..500 {
        vm.step().unwrap();
    }
    let t = Instant::now();
    for _ in 0..n {
        vm.step().unwrap();
    }
    (t.elapsed().as_nanos() / u128::from(n)) as u64
}

/// The `cost` guest's own line (`cost WHAT N ns=T per=P`) from `tender`.
fn guest_view(tender: &str, args: &[&str], what: &str, n: u64) -> String {
    let image = guest_images::image("cost");
    let t = Instant::now();
    let o = Command::new(tender)
        .args(args)
        .arg(&image)
        .args([what, &n.to_string()])
        .output()
        .expect("run the tender");
    let wall = t.elapsed();
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().last().unwrap_or("(no output)").to_string();
    format!("{line}  (process {:.2} s)", wall.as_secs_f64())
}

fn main() {
    // Round trips timed per row.
    let n: u32 = common::env_num("ROUNDS", 5000);
    println!("exit cost, in process, {n} round trips each (ns per round trip):");
    for (kind, mode) in [("PUTS 1 byte", "loop-puts"), ("WALLTIME", "loop-walltime")] {
        let mut vm = common::cost_vm(mode);
        let native = per_step(&mut vm, n);
        let emulated = vm.leave_pvm_native().then(|| per_step(&mut vm, n));
        match emulated {
            Some(e) => println!("  {kind:<12} native {native:>7}  emulated {e:>7}"),
            None => println!("  {kind:<12} {native:>7}  (not kvm_pvm's native mode)"),
        }
    }
    let flood: u64 = std::env::var("FLOOD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let skiff = env!("CARGO_BIN_EXE_skiff");
    println!("guest view, {flood} hypercalls in a loop (ns per hypercall):");
    for what in ["walltime", "puts"] {
        println!(
            "  skiff     {}",
            guest_view(skiff, &["run", "--mem=16"], what, flood)
        );
        if let Ok(hvt) = std::env::var("SOLO5_HVT") {
            println!(
                "  solo5-hvt {}",
                guest_view(&hvt, &["--mem=16"], what, flood)
            );
        }
        // The same loop under kvm_pvm's emulator, which no skiff process
        // chooses: in process, the whole run timed from outside.
        let mut vm = common::cost_vm(&format!("{what} {flood}"));
        if vm.leave_pvm_native() {
            let t = Instant::now();
            vm.run().expect("run the cost guest");
            let ns = t.elapsed().as_nanos() / u128::from(flood);
            println!("  skiff emulated, in process: {what} {flood} per={ns}  (whole run)");
        }
    }
}
