//! Phase marks for the boot-time harness: CLOCK_MONOTONIC timestamps that
//! skiff takes of itself at fixed points of a run (a clock read each, via
//! the vDSO), reported on the fd named by `SKIFF_BENCH_FD` when set.
//! The guest-side marks are taken at the exits, from skiff's own clock.
//!
//! A leaf: the vCPU loop, the builder, the pool's wire format and the
//! bench harness all use it, and it uses nothing of skiff's.

use std::sync::atomic::{AtomicU64, Ordering};

/// The marked points of one run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// `main` entered (after exec, the dynamic loader and libc start-up).
    Main = 0,
    /// skiff has the request: `main` for `skiff run`; for a call to a
    /// pool (`skiff call`), the moment a ready worker accepted it.
    Request = 1,
    /// VM, memory, vCPU and boot state ready.
    KvmReady = 2,
    /// Just before the first `KVM_RUN`: the guest's first instruction.
    FirstRun = 3,
    /// The first hypercall exit.
    FirstHypercall = 4,
    /// The guest's HALT.
    Halt = 5,
}

/// How many marks there are.
pub const COUNT: usize = 6;

pub const NAMES: [&str; COUNT] = [
    "main",
    "request",
    "kvm_ready",
    "first_instruction",
    "first_hypercall",
    "halt",
];

static MARKS: [AtomicU64; COUNT] = [const { AtomicU64::new(0) }; COUNT];
static EXITS: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds of CLOCK_MONOTONIC (shared with the harness process).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Records `m` the first time it is reached.
#[inline]
pub fn mark(m: Mark) {
    let slot = &MARKS[m as usize];
    if slot.load(Ordering::Relaxed) == 0 {
        slot.store(now_ns(), Ordering::Relaxed);
    }
}

/// Counts one vCPU exit.
#[inline]
pub fn count_exit() {
    EXITS.fetch_add(1, Ordering::Relaxed);
}

/// All marks taken so far (0: not reached) and the exit count.
pub fn taken() -> ([u64; COUNT], u64) {
    (
        std::array::from_fn(|i| MARKS[i].load(Ordering::Relaxed)),
        EXITS.load(Ordering::Relaxed),
    )
}

/// Replaces the marks from `first` on and the exit count: a pool worker
/// starts its request from scratch, and `skiff call` reports the
/// worker's marks after its own `main`.
pub fn set_from(first: Mark, marks: &[u64; COUNT], exits: u64) {
    for (slot, v) in MARKS.iter().zip(marks).skip(first as usize) {
        slot.store(*v, Ordering::Relaxed);
    }
    EXITS.store(exits, Ordering::Relaxed);
}

/// Writes `skiff-marks main=NS kvm_ready=NS ... exits=N` to the fd in
/// `SKIFF_BENCH_FD`, if set. Called once, as skiff finishes.
pub fn report() {
    let Some(fd) = std::env::var_os("SKIFF_BENCH_FD").and_then(|v| v.to_str()?.parse::<i32>().ok())
    else {
        return;
    };
    let mut line = String::from("skiff-marks");
    for (name, m) in NAMES.iter().zip(MARKS.iter()) {
        line.push_str(&format!(" {name}={}", m.load(Ordering::Relaxed)));
    }
    line.push_str(&format!(" exits={}\n", EXITS.load(Ordering::Relaxed)));
    // SAFETY: writing a buffer we own to an fd the caller handed us.
    unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
}

/// Parses a `skiff-marks` line back into (marks, exits).
pub fn parse(line: &str) -> Option<([u64; COUNT], u64)> {
    let rest = line.trim().strip_prefix("skiff-marks ")?;
    let mut marks = [0u64; COUNT];
    let mut exits = None;
    for kv in rest.split(' ') {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        if k == "exits" {
            exits = Some(v);
        } else {
            marks[NAMES.iter().position(|n| *n == k)?] = v;
        }
    }
    Some((marks, exits?))
}
