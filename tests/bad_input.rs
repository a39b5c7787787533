//! Bad input to `skiff run`: every refusal is one line on stderr and exit
//! status 1, before any guest code runs.

mod common;
use common::elf::*;
use common::*;

const ABI1: u32 = 0x3149_4241;
const MFT1: u32 = 0x3154_464d;

fn hello() -> Vec<u8> {
    std::fs::read(guest("hello")).unwrap()
}

/// Writes `bytes` as an image and runs it.
fn run_bytes(tmp: &TempDir, bytes: &[u8]) -> std::process::Output {
    let p = tmp.path().join("bad.hvt");
    std::fs::write(&p, bytes).unwrap();
    skiff_run(&["run", "--mem=64", p.to_str().unwrap()])
}

fn refused_with(mutate: impl FnOnce(&mut Vec<u8>), needle: &str) {
    let tmp = TempDir::new("bad");
    let mut b = hello();
    mutate(&mut b);
    assert_refused(&run_bytes(&tmp, &b), needle);
}

/// Sets the u32 at byte `at` of the `kind` note's header and expects
/// `needle` in the refusal.
fn note_u32_refused(kind: u32, at: usize, value: u32, needle: &str) {
    refused_with(
        |b| {
            let n = note(b, kind);
            put_u32(b, n + at, value)
        },
        needle,
    );
}

#[test]
fn the_unmodified_image_runs() {
    let tmp = TempDir::new("good");
    let o = run_bytes(&tmp, &hello());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn missing_and_unreadable_files() {
    assert_refused(
        &skiff_run(&["run", "/nonexistent/k.hvt"]),
        "/nonexistent/k.hvt: cannot open",
    );
    assert_refused(&skiff_run(&["run", "/tmp"]), "not a regular file");
    let tmp = TempDir::new("empty");
    assert_refused(&run_bytes(&tmp, b""), "not an ELF file");
    assert_refused(&run_bytes(&tmp, b"#!/bin/sh\necho hi\n"), "not an ELF file");
}

#[test]
fn truncated_elves() {
    let b = hello();
    let tmp = TempDir::new("trunc");
    assert_refused(
        &run_bytes(&tmp, &b[..40]),
        "truncated ELF: the file ends inside the ELF header",
    );
    assert_refused(
        &run_bytes(&tmp, &b[..70]),
        "truncated ELF: the file ends inside the program headers",
    );
    // Everything the headers promise, cut short: segment contents missing.
    let last = phdrs(&b, PT_LOAD)
        .into_iter()
        .map(|p| u64_at(&b, p + P_OFFSET))
        .max()
        .unwrap();
    assert_refused(&run_bytes(&tmp, &b[..last as usize + 1]), "truncated ELF");
}

#[test]
fn wrong_class_machine_and_type() {
    refused_with(|b| b[4] = 1, "not a 64-bit ELF");
    refused_with(|b| b[5] = 2, "not little-endian");
    refused_with(|b| put_u16(b, 18, 3), "not an x86_64 executable");
    refused_with(|b| put_u16(b, 16, 3), "ET_EXEC expected");
    refused_with(
        |b| put_u16(b, 54, 32),
        "unexpected ELF header or program header size",
    );
}

#[test]
fn abi_note_problems() {
    note_u32_refused(ABI1, 8, 0x1234, "no Solo5 ABI1 note");
    note_u32_refused(ABI1, 20, 2, "for the Solo5 spt target, not hvt");
    note_u32_refused(ABI1, 20, 3, "for the Solo5 virtio target");
    note_u32_refused(ABI1, 24, 3, "unsupported ABI version 3");
    note_u32_refused(ABI1, 4, 4000, "invalid size");
}

#[test]
fn manifest_problems() {
    note_u32_refused(MFT1, 8, 0x99, "no Solo5 manifest");
    // Header at note+24: version, entries.
    note_u32_refused(MFT1, 24, 7, "invalid Solo5 manifest: version 7");
    note_u32_refused(MFT1, 28, 0, "bad entry count 0");
    note_u32_refused(MFT1, 28, 2, "does not match 2 entries");
    note_u32_refused(MFT1, 28, 65, "bad entry count 65");
    // Entry 0 at note+32: its name must be empty and NUL-terminated.
    refused_with(
        |b| {
            let n = note(b, MFT1);
            b[n + 32] = b'x'
        },
        "the first entry is not the reserved one",
    );
    refused_with(
        |b| {
            let n = note(b, MFT1);
            b[n + 32..n + 32 + 68].fill(b'x')
        },
        "name is not NUL-terminated",
    );
    refused_with(
        |b| {
            let n = note(b, MFT1);
            b[n + 32 + 96] = 1
        },
        "marked attached",
    );
}

#[test]
fn segment_problems() {
    let first = |b: &Vec<u8>| phdrs(b, PT_LOAD)[0];
    refused_with(
        |b| {
            let p = first(b);
            put_u64(b, p + P_VADDR, 0x1000);
            put_u64(b, p + P_PADDR, 0x1000)
        },
        "below 1 MiB",
    );
    refused_with(
        |b| {
            let p = first(b);
            put_u64(b, p + P_MEMSZ, 1 << 40)
        },
        "does not fit in guest memory",
    );
    refused_with(
        |b| {
            let p = first(b);
            put_u64(b, p + P_MEMSZ, u64::MAX - 0x10)
        },
        "overflows",
    );
    refused_with(
        |b| {
            let p = first(b);
            put_u32(b, p + P_FLAGS, 7)
        },
        "both writable and executable",
    );
    refused_with(
        |b| {
            let p = first(b);
            put_u64(b, p + P_FILESZ, 1 << 20);
            put_u64(b, p + P_MEMSZ, 1 << 20)
        },
        "truncated ELF",
    );
    refused_with(
        |b| {
            let (p0, p1) = (phdrs(b, PT_LOAD)[0], phdrs(b, PT_LOAD)[1]);
            let v = u64_at(b, p0 + P_VADDR);
            put_u64(b, p1 + P_VADDR, v);
            put_u64(b, p1 + P_PADDR, v);
        },
        "overlaps or precedes",
    );
}

/// A usage error: clap's whole message (the problem, then "For more
/// information, try '--help'") and exit status 2.
fn assert_usage(o: &std::process::Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    assert!(err.contains("For more information, try '--help'"), "{err}");
}

#[test]
fn bad_flags_and_memory_sizes() {
    let g = guest("hello");
    let g = g.to_str().unwrap();
    assert_usage(
        &skiff_run(&["run", "--bogus", g]),
        "unexpected argument '--bogus'",
    );
    assert_usage(
        &skiff_run(&["run", "--mem=1", g]),
        "invalid value '1' for '--mem <MB>': too small: guest memory needs at least 2 MiB",
    );
    assert_usage(&skiff_run(&["run", "--mem=4097", g]), "at most 4096 MiB");
    assert_usage(
        &skiff_run(&["run", "--mem=lots", g]),
        "invalid value 'lots' for '--mem <MB>': expected a whole number of MiB",
    );
    assert_usage(
        &skiff_run(&["run"]),
        "required arguments were not provided:\n  <KERNEL>",
    );
    assert_usage(
        &skiff_run(&["frobnicate"]),
        "unrecognized subcommand 'frobnicate'",
    );
    // The smallest memory still runs a small guest.
    let o = skiff_run(&["run", "--mem=2", g]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let long = "x".repeat(9000);
    assert_refused(&skiff_run(&["run", g, &long]), "command line too long");
}
