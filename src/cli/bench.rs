//! `skiff bench`: the boot-time harness (src/bench/harness.rs).

use super::report;
use crate::bench::harness::{self, BenchError};
use clap::Args;
use serde::Serialize;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

/// `skiff bench [options] -- [run flags] KERNEL [ARGS...]`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// How many timed runs (after one untimed warm-up); at least 1.
    #[arg(long, default_value_t = 30, value_parser = at_least_one::<usize>)]
    pub(super) runs: usize,
    /// A second tender run with the same arguments in alternating runs
    /// (e.g. solo5-hvt); the report gives the ratio pair by pair.
    #[arg(long, value_name = "PROGRAM")]
    pub(super) compare: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(super) json: bool,
    /// Also draw the runs as an SVG picture in FILE (phases, distribution).
    #[arg(long, value_name = "FILE.svg")]
    pub(super) plot: Option<PathBuf>,
    /// The exit status every run must have.
    #[arg(long, default_value_t = 0)]
    pub(super) expect_status: i32,
    /// Instead: sustained runs per second for SECS seconds (at least 1).
    #[arg(long, value_name = "SECS", value_parser = at_least_one::<u64>)]
    pub(super) throughput: Option<u64>,
    /// A file each run reads as stdin (the request body).
    #[arg(long, value_name = "FILE")]
    pub(super) stdin: Option<PathBuf>,
    /// Concurrent callers for --throughput (at least 1).
    #[arg(long, default_value_t = 2, value_parser = at_least_one::<usize>)]
    pub(super) callers: usize,
    /// Pause MS milliseconds before each timed run.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub(super) interval: u64,
    /// Time `skiff call PATH` (a request to a running `skiff pool`)
    /// instead of `skiff run RUN-ARGS`.
    #[arg(long, value_name = "PATH")]
    pub(super) pool: Option<PathBuf>,
    /// `skiff run`'s arguments: [flags] KERNEL [ARGS...]
    #[arg(
        value_name = "RUN-ARGS",
        required_unless_present = "pool",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub(super) args: Vec<OsString>,
}

/// A count that must be at least 1 (0 runs would report nothing).
fn at_least_one<T: std::str::FromStr + PartialEq + From<u8>>(s: &str) -> Result<T, String> {
    match s.parse::<T>() {
        Ok(n) if n != T::from(0) => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(_) => Err("expected a whole number".into()),
    }
}

/// `--throughput`'s result for one program (also its JSON).
#[derive(Debug, Serialize)]
struct Throughput {
    program: String,
    runs_per_s: f64,
    pub(super) callers: usize,
    secs: u64,
}

pub fn main(prog: &str, b: BenchArgs) -> i32 {
    let r = match std::env::current_exe() {
        Ok(skiff) => bench(&skiff, b),
        Err(e) => return super::refuse(prog, &format_args!("cannot find my own executable: {e}")),
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            report(prog, &e);
            e.exit_status()
        }
    }
}

fn bench(skiff: &std::path::Path, b: BenchArgs) -> Result<(), BenchError> {
    // What skiff is run with: `run RUN-ARGS` or `call PATH`.
    let skiff_args: Vec<OsString> = match &b.pool {
        Some(sock) => vec!["call".into(), sock.into()],
        None => std::iter::once("run".into())
            .chain(b.args.iter().cloned())
            .collect(),
    };
    if let Some(secs) = b.throughput {
        let mut all = Vec::new();
        let mut one = |program: &std::path::Path, args: &[OsString]| {
            let runs_per_s = harness::throughput(
                &program.to_path_buf(),
                args,
                b.callers,
                secs,
                b.expect_status,
            )?;
            all.push(Throughput {
                program: program.display().to_string(),
                runs_per_s,
                callers: b.callers,
                secs,
            });
            Ok::<(), BenchError>(())
        };
        one(skiff, &skiff_args)?;
        if let Some(other) = &b.compare {
            one(other, &b.args)?;
        }
        let text = match b.json {
            true => serde_json::to_string_pretty(&all).unwrap_or_default(),
            false => all
                .iter()
                .map(|t| {
                    format!(
                        "{}: {:.1} runs/s ({} callers, {} s)",
                        t.program.rsplit('/').next().unwrap_or(&t.program),
                        t.runs_per_s,
                        t.callers,
                        t.secs
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        };
        let _ = writeln!(std::io::stdout(), "{text}");
        return Ok(());
    }
    let label = match &b.pool {
        Some(_) => skiff_args.clone(),
        None => b.args.clone(),
    };
    let cfg = harness::BenchConfig {
        skiff: skiff.to_path_buf(),
        compare: b.compare,
        runs: b.runs,
        expect_status: b.expect_status,
        skiff_args,
        run_args: b.args,
        label,
        stdin: b.stdin,
        interval: std::time::Duration::from_millis(b.interval),
    };
    let r = harness::bench(&cfg)?;
    if let Some(path) = &b.plot {
        crate::bench::plot::write(&r, path)?;
    }
    if b.json {
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&r).unwrap_or_default()
        );
    } else {
        harness::print_table(&r);
    }
    Ok(())
}
