//! Links every guest binary as a static hvt image with `../link.ld`.
//!
//! The codegen side (static relocation model, no red zone) is in
//! `../.cargo/config.toml`; this is the link side, kept next to the script
//! it passes.

use std::env;
use std::path::PathBuf;

fn main() {
    let target = env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" {
        panic!(
            "skiff guests are built for x86_64-unknown-linux-gnu (got {target:?}); \
             build from guests/ so .cargo/config.toml applies"
        );
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let script = manifest_dir.join("../link.ld");
    let script = script.canonicalize().unwrap_or(script);
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");

    let args = [
        // No crt1.o/crti.o and no libc or libgcc: the runtime is the guest's
        // whole world, and `_start` is ours.
        "-nostartfiles".to_string(),
        "-nostdlib".to_string(),
        format!("-Wl,-T,{}", script.display()),
        // A build-id would be one more note, in a PT_NOTE of its own.
        "-Wl,--build-id=none".to_string(),
        "-Wl,-z,max-page-size=0x1000".to_string(),
        "-Wl,-z,noexecstack".to_string(),
        "-Wl,-z,norelro".to_string(),
        // Fail on any section the script does not place.
        "-Wl,--orphan-handling=error".to_string(),
    ];
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
