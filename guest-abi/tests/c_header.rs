//! The C header `include/skiff_hvt.h` compiled with the host's `cc`: its
//! `_Static_assert`s run, and the numbers and sizes it gives (printed by a
//! small C program generated from the Rust definitions) must equal the
//! Rust ones. A hypercall added to `hypercalls!` but not to the header
//! fails here.

use guest_abi::accel::{AccelArg, HcAccel};
use guest_abi::hvt::*;
use guest_abi::manifest::{MftEntry, MftHeader};
use guest_abi::skiff::{self, HcReqMeta, HcReqNext, HcReqRead, HcRespHead, HcRespWrite};
use std::path::PathBuf;
use std::process::Command;

/// Structs that exist in both languages: (C struct, Rust size).
fn structs() -> Vec<(&'static str, usize)> {
    vec![
        ("skiff_hvt_boot_info", size_of::<BootInfo>()),
        ("skiff_hvt_walltime", size_of::<HcWalltime>()),
        ("skiff_hvt_puts", size_of::<HcPuts>()),
        ("skiff_hvt_poll", size_of::<HcPoll>()),
        ("skiff_hvt_block", size_of::<HcBlock>()),
        ("skiff_hvt_net", size_of::<HcNet>()),
        ("skiff_hvt_halt", size_of::<HcHalt>()),
        ("skiff_req_read", size_of::<HcReqRead>()),
        ("skiff_resp_write", size_of::<HcRespWrite>()),
        ("skiff_req_meta", size_of::<HcReqMeta>()),
        ("skiff_resp_head", size_of::<HcRespHead>()),
        ("skiff_req_next", size_of::<HcReqNext>()),
        ("skiff_accel", size_of::<HcAccel>()),
        ("skiff_accel_arg", size_of::<AccelArg>()),
        ("skiff_mft_entry", size_of::<MftEntry>()),
        ("skiff_mft", size_of::<MftHeader>()),
    ]
}

/// Constants that exist in both languages: (C macro, Rust value).
fn constants() -> Vec<(&'static str, i64)> {
    vec![
        ("SKIFF_HVT_ABI_VERSION", guest_abi::HVT_ABI_VERSION.into()),
        ("SKIFF_HVT_PIO_BASE", HYPERCALL_PIO_BASE.into()),
        ("SKIFF_HVT_HYPERCALL_MAX", HYPERCALL_MAX.into()),
        ("SKIFF_HVT_RING_IO_KICK_PORT", RING_IO_KICK_PORT.into()),
        ("SKIFF_HVT_BOOT_INFO_BASE", BOOT_INFO_BASE as i64),
        ("SKIFF_HVT_KERNEL_BASE", KERNEL_BASE as i64),
        ("SKIFF_HVT_CMDLINE_SIZE", CMDLINE_SIZE as i64),
        ("SKIFF_HVT_HALT_COOKIE_MAX", HALT_COOKIE_MAX as i64),
        ("SKIFF_HVT_R_OK", ret::OK.into()),
        ("SKIFF_HVT_R_AGAIN", ret::AGAIN.into()),
        ("SKIFF_HVT_R_EINVAL", ret::EINVAL.into()),
        ("SKIFF_HVT_R_EUNSPEC", ret::EUNSPEC.into()),
        ("SKIFF_HVT_FEATURE_RING_IO", HVT_FEATURE_RING_IO.into()),
        ("SKIFF_FEATURE_EXT", skiff::SKIFF_FEATURE_EXT.into()),
        (
            "SKIFF_FEATURE_FUNCTION",
            skiff::SKIFF_FEATURE_FUNCTION.into(),
        ),
        ("SKIFF_FEATURE_ACCEL", skiff::SKIFF_FEATURE_ACCEL.into()),
        (
            "SKIFF_FEATURE_RESP_HEAD",
            skiff::SKIFF_FEATURE_RESP_HEAD.into(),
        ),
        (
            "SKIFF_FEATURE_REQ_NEXT",
            skiff::SKIFF_FEATURE_REQ_NEXT.into(),
        ),
        (
            "SKIFF_ABI_FLAG_FUNCTION",
            guest_abi::elf::ABI_FLAG_FUNCTION.into(),
        ),
        ("SKIFF_R_NOT_FOUND", skiff::ret::NOT_FOUND.into()),
        ("SKIFF_R_TOO_SMALL", skiff::ret::TOO_SMALL.into()),
        ("SKIFF_REQ_META_NAME_MAX", skiff::REQ_META_NAME_MAX as i64),
        ("SKIFF_REQ_READ_FILL", skiff::REQ_READ_FILL.into()),
    ]
}

/// A C program printing `name value` for every hypercall, constant and
/// struct size, and the lines the Rust side expects it to print.
fn program() -> (String, Vec<String>) {
    let mut c = String::from("#include \"skiff_hvt.h\"\n#include <stdio.h>\nint main(void)\n{\n");
    let mut want = Vec::new();
    let mut line = |name: &str, expr: String, value: i64| {
        c.push_str(&format!(
            "    printf(\"%s %lld\\n\", \"{name}\", (long long)({expr}));\n"
        ));
        want.push(format!("{name} {value}"));
    };
    for &h in Hypercall::ALL {
        line(h.c_name(), h.c_name().into(), h as i64);
    }
    for (name, value) in constants() {
        line(name, name.into(), value);
    }
    for (name, size) in structs() {
        line(name, format!("sizeof(struct {name})"), size as i64);
    }
    c.push_str("    return 0;\n}\n");
    (c, want)
}

#[test]
fn the_c_header_compiles_and_agrees_with_the_rust_abi() {
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("include");
    let dir = std::env::temp_dir().join(format!("skiff-c-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    let _cleanup = RemoveOnDrop(dir.clone());
    let (source, want) = program();
    let src = dir.join("check.c");
    let exe = dir.join("check");
    std::fs::write(&src, source).expect("write the C program");

    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(&include)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("run {cc} (a C compiler is needed): {e}"));
    assert!(
        out.status.success(),
        "skiff_hvt.h does not compile (a _Static_assert failed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().expect("run the C program");
    assert!(run.status.success());
    let got: Vec<String> = String::from_utf8(run.stdout)
        .expect("ASCII output")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, want, "skiff_hvt.h differs from the Rust ABI");
}

#[test]
fn every_hypercall_argument_size_matches_its_c_struct() {
    // The table's argument type per hypercall, by its C struct's size.
    let sizes: std::collections::HashMap<_, _> = structs().into_iter().collect();
    let c_struct = |h: Hypercall| match h {
        Hypercall::Walltime => "skiff_hvt_walltime",
        Hypercall::Puts => "skiff_hvt_puts",
        Hypercall::Poll => "skiff_hvt_poll",
        Hypercall::BlockWrite | Hypercall::BlockRead => "skiff_hvt_block",
        Hypercall::NetWrite | Hypercall::NetRead => "skiff_hvt_net",
        Hypercall::Halt => "skiff_hvt_halt",
        Hypercall::ReqRead => "skiff_req_read",
        Hypercall::RespWrite => "skiff_resp_write",
        Hypercall::ReqMeta => "skiff_req_meta",
        Hypercall::RespHead => "skiff_resp_head",
        Hypercall::ReqNext => "skiff_req_next",
        Hypercall::AccelOp => "skiff_accel",
    };
    for &h in Hypercall::ALL {
        assert_eq!(sizes[c_struct(h)], h.arg_size(), "{}", h.name());
        assert_eq!(Hypercall::try_from(h as u16), Ok(h));
        assert!((h as u16) < HYPERCALL_MAX);
    }
    assert_eq!(Hypercall::try_from(9), Err(9));
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
