//! `skiff bench`: runs an image N times, a fresh process each time, and
//! reports each phase from exec (median/min/max in microseconds), as a
//! table or JSON. With `--compare PROGRAM` it alternates with a second
//! tender given the same arguments (solo5-hvt takes skiff's run argv) and
//! reports the exec-to-exit ratio pair by pair. With `--throughput SECS`
//! it measures sustained runs per second with `--callers` concurrent
//! callers instead.

use super::marks::{self, Mark, NAMES};
use serde::Serialize;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use thiserror::Error;

/// What went wrong while benchmarking.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error(
        "{program} exited with status {status} (expected {expected}); run it by hand to see why"
    )]
    Status {
        program: String,
        status: i32,
        expected: i32,
    },
    #[error("skiff reported no phase marks (is {0} a skiff binary?)")]
    NoMarks(String),
    #[error("cannot create a pipe: {0}")]
    Pipe(std::io::Error),
}

/// One process run, times in nanoseconds from just before spawn.
#[derive(Debug, Clone, Default)]
struct Sample {
    /// Cumulative phase times (skiff only), as in `marks::NAMES`.
    phases: Option<[u64; marks::COUNT]>,
    exits: u64,
    total: u64,
    max_rss_kib: u64,
}

/// median/min/max in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Stat {
    pub median_us: f64,
    pub min_us: f64,
    pub max_us: f64,
}

fn stat(mut v: Vec<u64>) -> Stat {
    v.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    };
    Stat {
        median_us: median / 1000.0,
        min_us: us(v[0]),
        max_us: us(v[n - 1]),
    }
}

/// The report, also the `--json` output.
#[derive(Debug, Serialize)]
pub struct Report {
    pub image_args: Vec<String>,
    pub runs: usize,
    /// Cumulative time from exec to each phase: main, kvm_ready,
    /// first_instruction, first_hypercall, halt, exit.
    pub phases: Vec<(String, Stat)>,
    pub exits_per_run: u64,
    pub max_rss_kib: u64,
    pub compare: Option<CompareReport>,
    /// skiff's own start-up (or restore) work: from `main` to the guest's
    /// first instruction, run by run.
    pub main_to_first_instruction: Stat,
    /// From having the request (`main`, or a pool worker's accept) to the
    /// guest's first instruction: a restore's own latency.
    pub request_to_first_instruction: Stat,
    /// Every run's numbers, for `--plot` (not part of the JSON).
    #[serde(skip)]
    pub samples: Samples,
}

/// Per-run times in nanoseconds from exec, in run order.
#[derive(Debug, Default)]
pub struct Samples {
    /// skiff's cumulative phase marks (as `marks::NAMES`) per run.
    pub phases: Vec<[u64; marks::COUNT]>,
    /// skiff's exec-to-exit per run.
    pub total: Vec<u64>,
    /// The compared tender's exec-to-exit per run.
    pub other_total: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct CompareReport {
    pub program: String,
    pub exec_to_exit: Stat,
    pub max_rss_kib: u64,
    /// skiff's exec-to-exit divided by the other's, pair by pair.
    pub ratio: RatioStat,
}

#[derive(Debug, Serialize)]
pub struct RatioStat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// How to benchmark.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub skiff: PathBuf,
    pub compare: Option<PathBuf>,
    pub runs: usize,
    pub expect_status: i32,
    /// skiff's arguments: `run` and the run arguments, or `call PATH`.
    pub skiff_args: Vec<OsString>,
    /// The run arguments (also what --compare's program is given).
    pub run_args: Vec<OsString>,
    /// A file every run reads as its stdin (a request body); else /dev/null.
    pub stdin: Option<PathBuf>,
    /// A pause before each timed run (requests arriving apart, as a pool
    /// sees them, rather than back to back).
    pub interval: std::time::Duration,
}

fn run_once(
    program: &PathBuf,
    args: &[OsString],
    want_marks: bool,
    expect: i32,
    stdin: Option<&PathBuf>,
) -> Result<Sample, BenchError> {
    let name = program.display().to_string();
    let mut fds = [-1; 2];
    if want_marks {
        // SAFETY: `fds` is a valid array of two ints for pipe2.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(BenchError::Pipe(std::io::Error::last_os_error()));
        }
    }
    let input = match stdin {
        Some(p) => Stdio::from(
            std::fs::File::open(p).map_err(|e| BenchError::Spawn(p.display().to_string(), e))?,
        ),
        None => Stdio::null(),
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(input)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if want_marks {
        let w = fds[1];
        cmd.env("SKIFF_BENCH_FD", w.to_string());
        // SAFETY: only async-signal-safe fcntl between fork and exec: keep
        // the write end open across exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::fcntl(w, libc::F_SETFD, 0);
                Ok(())
            })
        };
    }
    let t0 = marks::now_ns();
    let child = cmd
        .spawn()
        .map_err(|e| BenchError::Spawn(name.clone(), e))?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid out-pointers.
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let total = marks::now_ns() - t0;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    if code != expect {
        return Err(BenchError::Status {
            program: name,
            status: code,
            expected: expect,
        });
    }
    let mut sample = Sample {
        total,
        max_rss_kib: ru.ru_maxrss as u64,
        ..Default::default()
    };
    if want_marks {
        // SAFETY: closing our copy of the write end, then reading the line
        // the child wrote into a buffer we own.
        let line = unsafe {
            libc::close(fds[1]);
            let mut buf = [0u8; 512];
            let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
            libc::close(fds[0]);
            String::from_utf8_lossy(&buf[..n.max(0) as usize]).into_owned()
        };
        let (m, exits) = marks::parse(&line).ok_or(BenchError::NoMarks(name))?;
        sample.phases = Some(m.map(|t| t.saturating_sub(t0)));
        sample.exits = exits;
    }
    Ok(sample)
}

/// Runs the benchmark and returns its report.
pub fn bench(cfg: &BenchConfig) -> Result<Report, BenchError> {
    let mut mine = Vec::with_capacity(cfg.runs);
    let mut theirs = Vec::with_capacity(cfg.runs);
    let skiff_args = &cfg.skiff_args;
    // One untimed warm-up of each, so page-cache and first-exec effects do
    // not land on the first pair.
    run_once(
        &cfg.skiff,
        skiff_args,
        true,
        cfg.expect_status,
        cfg.stdin.as_ref(),
    )?;
    if let Some(other) = &cfg.compare {
        run_once(
            other,
            &cfg.run_args,
            false,
            cfg.expect_status,
            cfg.stdin.as_ref(),
        )?;
    }
    for _ in 0..cfg.runs {
        std::thread::sleep(cfg.interval);
        mine.push(run_once(
            &cfg.skiff,
            skiff_args,
            true,
            cfg.expect_status,
            cfg.stdin.as_ref(),
        )?);
        if let Some(other) = &cfg.compare {
            theirs.push(run_once(
                other,
                &cfg.run_args,
                false,
                cfg.expect_status,
                cfg.stdin.as_ref(),
            )?);
        }
    }
    let mut phases = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        phases.push((
            name.to_string(),
            stat(
                mine.iter()
                    .map(|s| s.phases.unwrap_or_default()[i])
                    .collect(),
            ),
        ));
    }
    phases.push(("exit".into(), stat(mine.iter().map(|s| s.total).collect())));
    let compare = cfg.compare.as_ref().map(|p| {
        let mut ratios: Vec<f64> = mine
            .iter()
            .zip(&theirs)
            .map(|(a, b)| a.total as f64 / b.total as f64)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        CompareReport {
            program: p.display().to_string(),
            exec_to_exit: stat(theirs.iter().map(|s| s.total).collect()),
            max_rss_kib: theirs.iter().map(|s| s.max_rss_kib).max().unwrap_or(0),
            ratio: RatioStat {
                median: if n % 2 == 1 {
                    ratios[n / 2]
                } else {
                    (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
                },
                min: ratios[0],
                max: ratios[n - 1],
            },
        }
    });
    Ok(Report {
        image_args: cfg
            .run_args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        runs: cfg.runs,
        phases,
        exits_per_run: mine.iter().map(|s| s.exits).max().unwrap_or(0),
        max_rss_kib: mine.iter().map(|s| s.max_rss_kib).max().unwrap_or(0),
        compare,
        main_to_first_instruction: span(&mine, Mark::Main, Mark::FirstRun),
        request_to_first_instruction: span(&mine, Mark::Request, Mark::FirstRun),
        samples: Samples {
            phases: mine.iter().map(|s| s.phases.unwrap_or_default()).collect(),
            total: mine.iter().map(|s| s.total).collect(),
            other_total: theirs.iter().map(|s| s.total).collect(),
        },
    })
}

/// The time from mark `a` to mark `b`, run by run.
fn span(samples: &[Sample], a: Mark, b: Mark) -> Stat {
    stat(
        samples
            .iter()
            .map(|s| {
                let p = s.phases.unwrap_or_default();
                p[b as usize].saturating_sub(p[a as usize])
            })
            .collect(),
    )
}

/// Prints the report as a table (a closed stdout ends it quietly).
pub fn print_table(r: &Report) {
    let _ = write_table(&mut std::io::stdout().lock(), r);
}

fn write_table(w: &mut impl std::io::Write, r: &Report) -> std::io::Result<()> {
    let against = r
        .compare
        .as_ref()
        .map(|c| format!(", alternating with {}", c.program));
    writeln!(
        w,
        "skiff bench: {} ({} runs{})",
        r.image_args.join(" "),
        r.runs,
        against.unwrap_or_default()
    )?;
    writeln!(
        w,
        "{:<28} {:>10} {:>10} {:>10}",
        "phase (from exec, us)", "median", "min", "max"
    )?;
    for (name, s) in &r.phases {
        writeln!(
            w,
            "{:<28} {:>10.0} {:>10.0} {:>10.0}",
            name, s.median_us, s.min_us, s.max_us
        )?;
    }
    for (name, s) in [
        ("main -> first_instruction", &r.main_to_first_instruction),
        (
            "request -> first_instruction",
            &r.request_to_first_instruction,
        ),
    ] {
        writeln!(
            w,
            "{:<28} {:>10.0} {:>10.0} {:>10.0}",
            name, s.median_us, s.min_us, s.max_us
        )?;
    }
    writeln!(
        w,
        "exits per run: {}; peak RSS: {} KiB",
        r.exits_per_run, r.max_rss_kib
    )?;
    if let Some(c) = &r.compare {
        let e = &c.exec_to_exit;
        let name = short(&c.program);
        writeln!(
            w,
            "{:<28} {:>10.0} {:>10.0} {:>10.0}",
            format!("{name} exec-to-exit"),
            e.median_us,
            e.min_us,
            e.max_us
        )?;
        writeln!(w, "peak RSS of {name}: {} KiB", c.max_rss_kib)?;
        let q = &c.ratio;
        writeln!(
            w,
            "ratio skiff/{name} (pair by pair): median {:.3}, min {:.3}, max {:.3}",
            q.median, q.min, q.max
        )?;
    }
    Ok(())
}

fn short(p: &str) -> &str {
    p.rsplit('/').next().unwrap_or(p)
}

/// Sustained throughput: `callers` concurrent loops of fresh runs for
/// `secs` seconds; returns runs per second.
pub fn throughput(
    program: &PathBuf,
    args: &[OsString],
    callers: usize,
    secs: u64,
    expect: i32,
) -> Result<f64, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let results: Vec<Result<u64, BenchError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..callers)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        run_once(program, args, false, expect, None)?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Ok(0)))
            .collect()
    });
    let mut total = 0;
    for r in results {
        total += r?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
