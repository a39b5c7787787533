//! `skiff bench`: runs an image N times, a fresh process each time, and
//! reports each phase from exec (median/min/max in microseconds), as a
//! table or JSON. With `--compare PROGRAM` it alternates with a second
//! tender given the same arguments (solo5-hvt takes skiff's run argv) and
//! reports the exec-to-exit ratio pair by pair. With `--throughput SECS`
//! it measures sustained runs per second with `--callers` concurrent
//! callers instead.

use super::process::{open_stdin, pause, run_once, Sample};
use crate::marks::{Mark, NAMES};
use serde::{Serialize, Serializer};
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use thiserror::Error;

/// What went wrong while benchmarking.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("cannot start {0}: {1}")]
    Spawn(String, std::io::Error),
    #[error("cannot open --stdin {0}: {1}")]
    Stdin(String, std::io::Error),
    #[error("{program} exited with status {status} (expected {expected}): {}", last_line.as_deref().unwrap_or("it printed nothing on stderr"))]
    Status {
        program: String,
        status: i32,
        expected: i32,
        /// The run's last line on stderr: usually why it failed.
        last_line: Option<String>,
    },
    #[error("cannot wait for {0}: {1}")]
    Wait(String, std::io::Error),
    #[error("exiting on signal {0}")]
    Signal(i32),
    #[error("skiff reported no phase marks (is {0} a skiff binary?)")]
    NoMarks(String),
    #[error("cannot create a pipe: {0}")]
    Pipe(std::io::Error),
    #[error(transparent)]
    Plot(#[from] super::plot::PlotError),
}

impl BenchError {
    /// 128+N for signal N, else 1.
    pub fn exit_status(&self) -> i32 {
        match self {
            BenchError::Signal(s) => 128 + s,
            _ => 1,
        }
    }
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
    /// first_instruction, first_hypercall, halt, exit (in JSON: an object
    /// keyed by phase, in this order).
    #[serde(serialize_with = "keyed")]
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
    pub phases: Vec<[u64; crate::marks::COUNT]>,
    /// skiff's exec-to-exit per run.
    pub total: Vec<u64>,
    /// The compared tender's exec-to-exit per run.
    pub other_total: Vec<u64>,
}

/// Pairs as a JSON object, in their order.
fn keyed<S: Serializer>(v: &[(String, Stat)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(k, st)| (k, st)))
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
    /// What the report names as the thing timed (the run arguments, or
    /// `call PATH` for a pool).
    pub label: Vec<OsString>,
    /// A file every run reads as its stdin (a request body); else /dev/null.
    pub stdin: Option<PathBuf>,
    /// A pause before each timed run (requests arriving apart, as a pool
    /// sees them, rather than back to back).
    pub interval: std::time::Duration,
}

/// Runs the benchmark and returns its report.
pub fn bench(cfg: &BenchConfig) -> Result<Report, BenchError> {
    if let Some(p) = &cfg.stdin {
        open_stdin(p)?;
    }
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
        pause(cfg.interval)?;
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
            .label
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
