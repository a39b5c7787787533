//! Shared helpers for the integration tests: run skiff (or solo5-hvt,
//! through a symlink) on the project's own guests, with a time limit.
#![allow(dead_code)]

pub mod netns;
pub mod pool;
pub mod serve;
pub mod urunc;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn skiff() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skiff"))
}

pub fn guest(name: &str) -> PathBuf {
    guest_images::image(name)
}

/// A `solo5-hvt` symlink to skiff in a fresh temporary directory.
pub fn solo5_hvt(dir: &Path) -> PathBuf {
    let link = dir.join("solo5-hvt");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(skiff(), &link).unwrap();
    link
}

/// `d` times SKIFF_TEST_TIME_SCALE (default 1): the standard-KVM lane
/// runs everything under emulation, tens of times slower, and stretches
/// the time limits of tests that bound how long skiff takes.
pub fn scaled(d: Duration) -> Duration {
    let k: u32 = std::env::var("SKIFF_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    d * k.max(1)
}

/// Runs `cmd` with `stdin` as its input, killing it after `limit`;
/// stdout and stderr are drained while it runs (a full pipe would stall it).
pub fn run_with(mut cmd: Command, stdin: &[u8], limit: Duration) -> Output {
    use std::io::Read;
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut sin = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = sin.write_all(&input);
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let limit = scaled(limit);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("timed out after {limit:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let _ = writer.join();
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// Starts `skiff run ARGS...`, lets the guest run for 300 ms (it must
/// still be running), sends `sig` and asserts that skiff ends within 2 s
/// with 128+sig and says so in one line.
pub fn signal_running(args: &[&str], sig: i32) -> Output {
    let mut child = ChildGuard::new(
        Command::new(skiff())
            .arg("run")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_catching(child.id(), sig);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "{args:?} ended by itself"
    );
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    let t = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(
        t.elapsed() < scaled(Duration::from_secs(2)),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(o.status.code(), Some(128 + sig));
    assert_eq!(stderr(&o), format!("skiff: exiting on signal {sig}\n"));
    o
}

/// Waits (up to 10 s) until process `pid` catches `sig`: sent before
/// skiff has installed its handler (a slow start, as under emulation), the
/// signal would kill it by default and the test would see no message.
pub fn wait_catching(pid: u32, sig: i32) {
    let bit = 1u64 << (sig - 1);
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let caught = s
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        if caught & bit != 0 {
            return;
        }
        assert!(
            start.elapsed() < scaled(Duration::from_secs(10)),
            "process {pid} never caught signal {sig}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `skiff ARGS...` with a 30 s limit and no input.
pub fn skiff_run(args: &[&str]) -> Output {
    let mut cmd = Command::new(skiff());
    cmd.args(args);
    run_with(cmd, b"", Duration::from_secs(30))
}

/// `skiff run [flags] GUEST [guest args]`.
pub fn run_guest(flags: &[&str], name: &str, args: &[&str]) -> Output {
    let g = guest(name);
    let mut v = vec!["run"];
    v.extend_from_slice(flags);
    v.push(g.to_str().unwrap());
    v.extend_from_slice(args);
    skiff_run(&v)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a refusal: exit status 1 and exactly one stderr line
/// containing `needle`.
pub fn assert_refused(o: &Output, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("skiff-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// ELF64 field access for making malformed images from good ones.
pub mod elf {
    pub fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
    }
    pub fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }
    pub fn u64_at(b: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
    }
    pub fn put_u16(b: &mut [u8], o: usize, v: u16) {
        b[o..o + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u32(b: &mut [u8], o: usize, v: u32) {
        b[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u64(b: &mut [u8], o: usize, v: u64) {
        b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    }

    pub const PT_LOAD: u32 = 1;
    pub const PT_NOTE: u32 = 4;
    // Program header field offsets.
    pub const P_FLAGS: usize = 4;
    pub const P_OFFSET: usize = 8;
    pub const P_VADDR: usize = 16;
    pub const P_PADDR: usize = 24;
    pub const P_FILESZ: usize = 32;
    pub const P_MEMSZ: usize = 40;

    /// File offsets of the program headers of type `ty`.
    pub fn phdrs(b: &[u8], ty: u32) -> Vec<usize> {
        let off = u64_at(b, 32) as usize;
        let n = u16_at(b, 56) as usize;
        (0..n)
            .map(|i| off + i * 56)
            .filter(|&p| u32_at(b, p) == ty)
            .collect()
    }

    /// File offset of the Solo5 note of `kind` (its header).
    pub fn note(b: &[u8], kind: u32) -> usize {
        phdrs(b, PT_NOTE)
            .into_iter()
            .map(|p| u64_at(b, p + P_OFFSET) as usize)
            .find(|&o| u32_at(b, o + 8) == kind && &b[o + 12..o + 17] == b"Solo5")
            .expect("note present")
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// `skiff snapshot MEM EXTRA... --out DIR/NAME.snap NAME.hvt ARGS...`,
/// which must succeed; returns the snapshot's path.
pub fn make_snapshot(dir: &Path, name: &str, mem: &str, extra: &[&str], args: &[&str]) -> PathBuf {
    make_snapshot_env(dir, name, mem, extra, args, &[])
}

/// [`make_snapshot`] with `env` set for skiff.
pub fn make_snapshot_env(
    dir: &Path,
    name: &str,
    mem: &str,
    extra: &[&str],
    args: &[&str],
    env: &[(&str, &str)],
) -> PathBuf {
    let out = dir.join(format!("{name}.snap"));
    let mut cmd = Command::new(skiff());
    cmd.args(["snapshot", mem, "--out"])
        .arg(&out)
        .args(extra)
        .arg(guest(name))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("Http_Method");
    let o = run_with(cmd, b"", Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(0), "snapshot: {}", stderr(&o));
    out
}

/// Request body number `i` of a series: empty, 1 KiB, and sizes up to
/// 3 MiB, in random bytes.
pub fn request_body(i: u64) -> Vec<u8> {
    let n = match i % 4 {
        0 => (i * 37) as usize,
        1 => 1024,
        2 => (i * 4099) as usize,
        _ => (i * 31_337) as usize % (3 << 20),
    };
    random_bytes(n, i + 1)
}

/// A child process killed and reaped when dropped, so a failing test
/// (a panic before its own kill/wait) leaves no skiff running behind it.
pub struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    pub fn new(child: std::process::Child) -> Self {
        Self(Some(child))
    }

    /// The child, no longer guarded (for `wait_with_output` and the like).
    pub fn into_inner(mut self) -> std::process::Child {
        self.0.take().expect("child taken twice")
    }

    pub fn wait_with_output(self) -> std::io::Result<Output> {
        self.into_inner().wait_with_output()
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("child taken")
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.0.as_mut().expect("child taken")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The EXEC test library (compiled from tests/accel/execlib.c) and an
/// opaque model file, in `tmp`.
pub fn exec_fixture(tmp: &Path) -> (PathBuf, PathBuf) {
    let lib = tmp.join("libskiffexec.so");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/accel/execlib.c");
    let st = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(src)
        .status()
        .expect("cc");
    assert!(st.success(), "cannot compile {src}");
    let model = tmp.join("model.bin");
    std::fs::write(&model, b"model bytes").unwrap();
    (lib, model)
}

/// Passes on the line `residue` writes when it had to enable AVX again
/// after a #UD at its AVX instructions (the standard-KVM lane, where QEMU's
/// TCG keeps a nested guest's XSETBV from its KVM: see residue.rs).
pub fn note_avx_retries(o: &Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    for l in err
        .lines()
        .filter(|l| l.starts_with("residue: AVX enabled again"))
    {
        println!("{l}");
    }
}
