//! Mutated images: 300 copies of the bundled guests with random bytes
//! changed (in the ELF header, the program headers and notes, and
//! anywhere), from a fixed seed. skiff must never die by a signal or
//! panic on any of them, and never hang.
//!
//! The hang rule: a run still going after `LIMIT` gets SIGTERM. If skiff
//! then exits promptly with 143, it was in its vCPU loop and the guest was
//! spinning by itself (the guest's doing, like `spin`); if it does not,
//! skiff itself is stuck, which fails the test.
//!
//! `SKIFF_MUTATION_IMAGE=PATH` mutates that image instead (e.g. a Solo5
//! test unikernel, by hand); `SKIFF_MUTATION_COUNT` changes the count.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SEED: u64 = 0x5eed_5c1f_f00d; // fixed: failures reproduce
const COUNT: usize = 300;
const LIMIT: Duration = Duration::from_millis(500);
const GUESTS: [&str; 7] = [
    "hello", "quiet", "exitcode", "time", "tls", "globals", "abort",
];

/// splitmix64: small, seedable, good enough to pick bytes.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// File ranges worth aiming at: the ELF header, the program headers and
/// every PT_NOTE's contents (ABI1 note, manifest).
fn header_ranges(b: &[u8]) -> Vec<(usize, usize)> {
    let mut r = vec![(0, 64.min(b.len()))];
    if b.len() >= 64 {
        let off = elf::u64_at(b, 32) as usize;
        let n = elf::u16_at(b, 56) as usize;
        if off < b.len() {
            r.push((off, (off + n * 56).min(b.len())));
            for p in elf::phdrs(b, elf::PT_NOTE) {
                let o = elf::u64_at(b, p + elf::P_OFFSET) as usize;
                let sz = elf::u64_at(b, p + elf::P_FILESZ) as usize;
                if o < b.len() {
                    r.push((o, o.saturating_add(sz).min(b.len())));
                }
            }
        }
    }
    r.retain(|&(a, z)| a < z);
    r
}

fn mutate(orig: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = orig.to_vec();
    let ranges = header_ranges(orig);
    for _ in 0..1 + rng.below(4) {
        let pos = if rng.below(10) < 6 {
            let (a, z) = ranges[rng.below(ranges.len())];
            a + rng.below(z - a)
        } else {
            rng.below(b.len())
        };
        b[pos] = match rng.below(4) {
            0 => 0,
            1 => 0xff,
            2 => b[pos] ^ (1 << rng.below(8)),
            _ => rng.next() as u8,
        };
    }
    b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// skiff exited with this status (guest status, or 1 for a refusal).
    Exit(i32),
    /// The guest spun; SIGTERM ended skiff promptly (143).
    GuestSpun,
}

/// Runs skiff on one image; `Err` describes a failure of skiff itself.
fn run_one(image: &std::path::Path, errfile: &std::path::Path) -> Result<Outcome, String> {
    let mut child = Command::new(skiff())
        .args(["run", "--mem=16"])
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(errfile).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut spun = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if !spun && start.elapsed() > LIMIT {
            spun = true;
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        } else if spun && start.elapsed() > LIMIT + Duration::from_secs(5) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("skiff ignored SIGTERM for 5 s: stuck outside KVM_RUN".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let err = std::fs::read_to_string(errfile).unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        return Err(format!("killed by signal {sig}; stderr: {err}"));
    }
    if err.contains("panicked") || err.lines().count() > 1 {
        return Err(format!("stderr is not one line: {err:?}"));
    }
    match status.code() {
        Some(143) if spun => Ok(Outcome::GuestSpun),
        Some(c) if spun => Err(format!("after SIGTERM: exit {c}, stderr {err:?}")),
        Some(c) => Ok(Outcome::Exit(c)),
        None => unreachable!("neither a code nor a signal"),
    }
}

#[test]
fn mutated_images_never_crash_or_hang_skiff() {
    let dir = TempDir::new("mutation");
    let bases: Vec<(String, Vec<u8>)> = match std::env::var_os("SKIFF_MUTATION_IMAGE") {
        Some(p) => vec![(
            PathBuf::from(&p).display().to_string(),
            std::fs::read(&p).unwrap(),
        )],
        None => GUESTS
            .iter()
            .map(|g| (g.to_string(), std::fs::read(guest(g)).unwrap()))
            .collect(),
    };
    let count = std::env::var("SKIFF_MUTATION_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(COUNT);
    let mut rng = Rng(SEED);
    let mut tally: BTreeMap<Outcome, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    let errfile = dir.path().join("stderr");
    for i in 0..count {
        let (name, orig) = &bases[i % bases.len()];
        let img = mutate(orig, &mut rng);
        let path = dir.path().join(format!("m{i}.hvt"));
        std::fs::write(&path, &img).unwrap();
        match run_one(&path, &errfile) {
            Ok(o) => *tally.entry(o).or_default() += 1,
            Err(e) => {
                // Keep the image for reproduction outside the temp dir.
                let keep = std::env::temp_dir().join(format!("skiff-mutant-{i}.hvt"));
                std::fs::write(&keep, &img).unwrap();
                failures.push(format!("#{i} ({name}, kept at {}): {e}", keep.display()));
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    eprintln!("mutation: {count} images (seed {SEED:#x}): {tally:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The mutations must reach past the loader's checks at times, or the
    // test only tests refusals.
    let ran = tally
        .iter()
        .filter(|(o, _)| **o != Outcome::Exit(1))
        .map(|(_, n)| n)
        .sum::<usize>();
    assert!(ran > 0, "every mutant was refused: {tally:?}");
}
