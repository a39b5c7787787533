//! Builds the `guests/` workspace with a nested cargo and copies every guest
//! binary to `<target dir>/guests/NAME.hvt`.
//!
//! The guests are a workspace of their own (no_std, panic=abort, their own
//! rustflags and linker script), so they cannot be ordinary dependencies.
//! The nested cargo runs in `guests/`, so `guests/.cargo/config.toml`
//! applies, with a scrubbed environment: the variables the outer cargo sets
//! for build scripts (and any RUSTFLAGS or wrapper the user set for the host
//! build) would otherwise leak into the guest build and break or change it.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let started = SystemTime::now();
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir
        .parent()
        .expect("guest-images lives in the workspace root")
        .to_path_buf();
    let guests = root.join("guests");
    let target_dir = target_dir();
    let build_dir = target_dir.join("guests-build");
    let image_dir = target_dir.join("guests");

    // Everything the images are made from; cargo rescans a directory for
    // any changed file.
    for path in [
        "guests/Cargo.toml",
        "guests/Cargo.lock",
        "guests/.cargo",
        "guests/link.ld",
        "guests/functions",
        "guest-abi/Cargo.toml",
        "guest-abi/src",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let executables = build_guests(&guests, &build_dir);
    fs::create_dir_all(&image_dir)
        .unwrap_or_else(|e| panic!("create {}: {e}", image_dir.display()));
    let mut names = Vec::new();
    for exe in executables {
        let name = exe
            .file_stem()
            .and_then(OsStr::to_str)
            .expect("guest binary name")
            .to_string();
        let image = image_dir.join(format!("{name}.hvt"));
        install(&exe, &image, started);
        // Watch the image too, so deleting it rebuilds it (see `install`).
        println!("cargo:rerun-if-changed={}", image.display());
        names.push(name);
    }
    names.sort();

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let list = format!("pub const GUESTS: &[&str] = &{names:?};\n");
    fs::write(out_dir.join("guests.rs"), list).expect("write guests.rs");
    println!("cargo:rustc-env=SKIFF_GUEST_DIR={}", image_dir.display());
}

/// The root target directory: an absolute `CARGO_TARGET_DIR` if set, else
/// the ancestor of OUT_DIR above `[<triple>/]<profile>/build/<pkg>-<hash>/out`
/// (which is also where a relative `CARGO_TARGET_DIR`, resolved against a
/// working directory a build script cannot see, ends up).
fn target_dir() -> PathBuf {
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        if dir.is_absolute() {
            return dir;
        }
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let profile_dir = out_dir
        .ancestors()
        .nth(3)
        .expect("OUT_DIR is <target>/<profile>/build/<pkg>/out");
    let parent = profile_dir.parent().expect("profile dir has a parent");
    // With --target, cargo puts the profile dirs under <target>/<triple>/.
    match (parent.file_name(), env::var_os("TARGET")) {
        (Some(name), Some(triple)) if name == triple.as_os_str() => parent
            .parent()
            .expect("triple dir has a parent")
            .to_path_buf(),
        _ => parent.to_path_buf(),
    }
}

/// Runs the nested `cargo build --release` and returns the binaries it built.
fn build_guests(guests: &Path, build_dir: &Path) -> Vec<PathBuf> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(guests)
        .args(["build", "--release", "--target", GUEST_TARGET])
        .args(["--message-format", "json-render-diagnostics"]);
    scrub_env(&mut cmd);
    cmd.env("CARGO_TARGET_DIR", build_dir);

    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo for the guests: {e}"));
    if !output.status.success() {
        // Build-script stderr is shown when the build script fails: the
        // nested cargo's rendered diagnostics are the useful part.
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        panic!(
            "building the guests failed ({}); reproduce with: cd {} && cargo build --release",
            output.status,
            guests.display()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let executables: Vec<PathBuf> = stdout
        .lines()
        .filter(|line| line.contains("\"reason\":\"compiler-artifact\""))
        .filter_map(json_executable)
        .collect();
    assert!(
        !executables.is_empty(),
        "the guest build produced no binaries:\n{stdout}"
    );
    executables
}

/// Removes what the outer cargo (and the user, for the host build) put in
/// the environment that would change the nested build: flags, wrappers
/// (clippy-driver, sccache), the jobserver, target/profile overrides and the
/// per-package variables cargo sets for build scripts. RUSTC is kept, so the
/// guests are built by the same compiler as the outer build, as are
/// RUSTUP_TOOLCHAIN and CARGO_HOME.
fn scrub_env(cmd: &mut Command) {
    const KEEP_CARGO: &[&str] = &["CARGO_HOME", "CARGO_NET_", "CARGO_HTTP_", "CARGO_TERM_"];
    const DROP: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_LINKER",
        "CLIPPY_ARGS",
        "CLIPPY_CONF_DIR",
        "MAKEFLAGS",
        "MFLAGS",
        "OUT_DIR",
        "TARGET",
        "HOST",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "RUSTDOC",
    ];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let cargo_var = (key.starts_with("CARGO_") || key == "CARGO" || key.starts_with("__CARGO"))
            && !KEEP_CARGO.iter().any(|k| key.starts_with(k));
        if cargo_var || DROP.contains(&key) || key.starts_with("DEP_") {
            cmd.env_remove(key);
        }
    }
}

/// The `"executable"` path of one cargo JSON message, if it has one.
fn json_executable(line: &str) -> Option<PathBuf> {
    const KEY: &str = "\"executable\":\"";
    let start = line.find(KEY)? + KEY.len();
    let mut path = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(PathBuf::from(path)),
            '\\' => match chars.next()? {
                'n' => path.push('\n'),
                't' => path.push('\t'),
                other => path.push(other), // \" \\ \/
            },
            c => path.push(c),
        }
    }
    None
}

/// Copies `from` to `to` through a temporary file and a rename, so a test
/// running meanwhile never sees a half-written image.
///
/// The copy is dated a little before this build script started: cargo
/// compares watched paths against the time it launched the script, and a
/// file written during the run would otherwise make every later build rerun
/// it.
fn install(from: &Path, to: &Path, started: SystemTime) {
    let tmp = to.with_extension(format!("hvt.{}.tmp", std::process::id()));
    fs::copy(from, &tmp)
        .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), tmp.display()));
    let stamp = started
        .checked_sub(Duration::from_secs(2))
        .unwrap_or(started);
    fs::File::options()
        .write(true)
        .open(&tmp)
        .and_then(|f| f.set_modified(stamp))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", tmp.display()));
    fs::rename(&tmp, to)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), to.display()));
}
