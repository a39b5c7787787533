//! Block devices on real KVM with the project's own guests: 512- and
//! 4096-byte sectors, refused images and bindings (one line, exit 1),
//! EINVAL for bad requests, 63 devices, and no acknowledged write lost
//! when skiff is SIGKILLed.

mod common;
use common::*;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A zeroed image of `len` bytes in `dir`, starting with `head`.
fn image(dir: &TempDir, name: &str, len: usize, head: &[u8]) -> String {
    let p = dir.path().join(name);
    let mut b = vec![0u8; len];
    b[..head.len()].copy_from_slice(head);
    std::fs::write(&p, b).unwrap();
    p.to_str().unwrap().to_string()
}

/// Block `i`'s pattern as the blk guest writes it.
fn pattern(i: u64, bs: usize) -> Vec<u8> {
    (0..bs)
        .map(|j| (i.wrapping_mul(7) as u8).wrapping_add(j as u8) ^ 0x5a)
        .collect()
}

fn blk_ok(sector: Option<u16>) {
    let dir = TempDir::new("blk");
    let len = 64 * 1024;
    let img = image(&dir, "s.img", len, b"SKIFFBLK");
    let flag = format!("--block:storage={img}");
    let mut flags = vec![flag.as_str()];
    let size;
    if let Some(s) = sector {
        size = format!("--block-sector-size:storage={s}");
        flags.push(&size);
    }
    let o = run_guest(&flags, "blk", &[]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out} {}", stderr(&o));
    let bs = sector.unwrap_or(512) as usize;
    assert!(
        out.contains(&format!("capacity {len} block_size {bs} attached 1")),
        "{out}"
    );
    // The guest saw the file's contents, and its writes reached the file.
    assert!(out.contains("first bytes 534b494646424c4b"), "{out}");
    assert!(
        out.contains(&format!("blk: ok ({} blocks)", len / bs)),
        "{out}"
    );
    let file = std::fs::read(&img).unwrap();
    for i in 0..(len / bs) as u64 {
        let at = i as usize * bs;
        assert_eq!(file[at..at + bs], pattern(i, bs)[..], "block {i}");
    }
}

#[test]
fn blk_512_byte_sectors() {
    blk_ok(None);
}

#[test]
fn blk_4096_byte_sectors() {
    blk_ok(Some(4096));
}

#[test]
fn bad_images_and_sector_sizes_are_refused() {
    let dir = TempDir::new("blkbad");
    let six_k = image(&dir, "m.img", 6144, b"");
    let empty = image(&dir, "e.img", 0, b"");
    let good = image(&dir, "g.img", 4096, b"");
    let cases: [(Vec<String>, &str); 7] = [
        (
            vec![
                format!("--block:storage={six_k}"),
                "--block-sector-size:storage=4096".into(),
            ],
            "Backing storage size must be block aligned (4096 bytes)",
        ),
        (
            vec![
                format!("--block:storage={good}"),
                "--block-sector-size:storage=521".into(),
            ],
            "block size 521: Block size must be a multiple of 2",
        ),
        (
            vec![
                format!("--block:storage={good}"),
                "--block-sector-size:storage=256".into(),
            ],
            "Block size must be a multiple of 2 greater than or equal 512",
        ),
        (
            vec![format!("--block:storage={empty}")],
            "at least 1 block (512 bytes)",
        ),
        (
            vec!["--block:storage=/nonexistent/skiff.img".into()],
            "cannot open backing storage",
        ),
        (
            vec![
                format!("--block:storage={good}"),
                "--block-sector-size:other=512".into(),
            ],
            "--block-sector-size:other given without --block:other",
        ),
        (
            vec![
                format!("--block:storage={good}"),
                format!("--block:storage={good}"),
            ],
            "--block:storage given more than once",
        ),
    ];
    for (flags, needle) in cases {
        let f: Vec<&str> = flags.iter().map(String::as_str).collect();
        assert_refused(&run_guest(&f, "blk", &[]), needle);
    }
}

#[test]
fn unbound_unknown_and_wrong_type_bindings_are_refused() {
    let dir = TempDir::new("blkbind");
    let good = image(&dir, "g.img", 4096, b"");
    assert_refused(
        &run_guest(&[], "blk", &[]),
        "device 'storage' of type BLOCK_BASIC is declared in the manifest but not attached",
    );
    let f = format!("--block:storage={good}");
    let g = format!("--block:nosuch={good}");
    assert_refused(
        &run_guest(&[&f, &g], "blk", &[]),
        "--block:nosuch: no device 'nosuch' is declared in the manifest",
    );
    assert_refused(
        &run_guest(&["--net:storage=tap0"], "blk", &[]),
        "device 'storage' is BLOCK_BASIC in the manifest, not NET_BASIC",
    );
    // The drop-in name takes solo5-hvt's grammar too.
    let link = solo5_hvt(dir.path());
    let mut cmd = Command::new(link);
    cmd.args(["--block:foo=/x", "--", guest("blk").to_str().unwrap()]);
    let o = run_with(cmd, b"", Duration::from_secs(30));
    assert_refused(&o, "no device 'foo'");
}

#[test]
fn sixty_three_devices() {
    let dir = TempDir::new("maxdev");
    let flags: Vec<String> = (0..63)
        .map(|i| {
            format!(
                "--block:storage{i}={}",
                image(&dir, &format!("{i}.img"), 4096, b"")
            )
        })
        .collect();
    let f: Vec<&str> = flags.iter().map(String::as_str).collect();
    let o = run_guest(&f, "maxdev", &[]);
    assert_eq!(o.status.code(), Some(0), "{} {}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("maxdev: ok (63 devices)"),
        "{}",
        stdout(&o)
    );
    for i in 1..=63u8 {
        let b = std::fs::read(dir.path().join(format!("{}.img", i - 1))).unwrap();
        assert!(b[..512].iter().all(|&x| x == i), "device {i}");
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = TempDir::new("durable");
    let img = image(&dir, "d.img", 512 * 64, b"");
    let mut child = ChildGuard::new(
        Command::new(skiff())
            .args([
                "run",
                &format!("--block:storage={img}"),
                guest("blk").to_str().unwrap(),
            ])
            .args(["durable", "64"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Read until the guest has been told 20 writes are done, then kill
    // skiff at once, mid-run.
    let mut out = child.stdout.take().unwrap();
    let mut seen = String::new();
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while !seen.contains("acked 19\n") {
        assert!(start.elapsed() < scaled(Duration::from_secs(30)), "{seen}");
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "guest ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let acked = seen.matches("acked ").count() as u64;
    let file = std::fs::read(&img).unwrap();
    for i in 0..acked {
        let at = i as usize * 512;
        assert_eq!(
            file[at..at + 512],
            pattern(i, 512)[..],
            "acked block {i} lost"
        );
    }
}
