//! Command-line entry: argv[0] picks the mode (`skiff ...` or the drop-in
//! `solo5-hvt ...`), clap parses, errors become one line and exit 1.

mod serve;
mod solo5;

use crate::config::{self, MemSize, RunConfig};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

/// The flags `skiff run` shares with solo5-hvt.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest memory in MiB (rounded down to 2 MiB; at most 4096).
    #[arg(long, value_name = "MB", value_parser = MemSize::from_mib, default_value = "512")]
    pub mem: MemSize,
    #[command(flatten)]
    pub accel: crate::accel::config::AccelArgs,
    /// Resume the function from this snapshot (`skiff snapshot`) instead of
    /// booting it; KERNEL and the flags must be the snapshot's.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// Attach block device NAME to the file PATH (`--block:NAME=PATH`).
    #[arg(long = "block", value_name = "NAME=PATH")]
    pub block: Vec<OsString>,
    /// Block size of device NAME: a power of two >= 512 (default 512).
    #[arg(long = "block-sector-size", value_name = "NAME=N")]
    pub block_sector_size: Vec<OsString>,
    /// Attach net device NAME to TAP interface IFACE, or inherited fd @FD.
    #[arg(long = "net", value_name = "NAME=IFACE|@FD")]
    pub net: Vec<OsString>,
    /// MAC address of net device NAME (default: generated).
    #[arg(long = "net-mac", value_name = "NAME=MAC")]
    pub net_mac: Vec<OsString>,
    /// The unikernel (.hvt ELF image).
    #[arg(value_name = "KERNEL")]
    pub kernel: PathBuf,
    /// Arguments passed to the unikernel as its command line.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<OsString>,
}

impl RunArgs {
    /// [`Self::into_config`], with the error reported on stderr as one line.
    pub fn config_or_report(self, prog: &str) -> Option<RunConfig> {
        self.into_config().map_err(|e| report(prog, &e)).ok()
    }

    pub fn into_config(self) -> Result<RunConfig, config::ConfigError> {
        let devices =
            crate::devices::attach::Bindings::from_flags(&crate::devices::attach::DeviceFlags {
                block: self.block,
                block_sector_size: self.block_sector_size,
                net: self.net,
                net_mac: self.net_mac,
            })?;
        Ok(RunConfig {
            devices,
            mem: self.mem,
            cmdline: config::cmdline(&self.args)?,
            accel: self
                .accel
                .into_config(std::env::var("VACCEL_PLUGINS").ok())?,
            kernel: self.kernel,
        })
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    about = "A small, fast KVM tender for Solo5 hvt unikernel functions"
)]
struct Skiff {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a unikernel: skiff run [solo5-hvt flags] [--] KERNEL [ARGS...]
    Run(RunArgs),
    /// Measure start-up: run an image N times (fresh processes) and report
    /// each phase from exec; optionally alternate with another tender.
    Bench(BenchArgs),
    /// Boot a function to the point where it asks for its request body and
    /// save it there: skiff snapshot [run flags] --out FILE KERNEL [ARGS...]
    Snapshot(crate::snapshot::cli::SnapshotArgs),
    /// Keep guests restored from a snapshot ready on a unix socket:
    /// skiff pool --socket PATH --restore FILE [run flags] KERNEL
    Pool(crate::pool::PoolArgs),
    /// Serve HTTP: every request gets a fresh guest (restored from
    /// --restore FILE, or booted cold): skiff serve --listen ADDR KERNEL
    Serve(serve::ServeArgs),
    /// Serve one request with a pool's ready guest: skiff call PATH
    /// (stdin, stdout, stderr and Http_* variables go to the guest)
    Call(crate::pool::call::CallArgs),
    /// OCI runtime hook: container state JSON on stdin; checks the image
    /// named by the annotation org.skiff.kernel (see README)
    Hook,
}

/// `skiff bench [options] -- [run flags] KERNEL [ARGS...]`
#[derive(Debug, Args)]
struct BenchArgs {
    /// How many timed runs (after one untimed warm-up).
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// A second tender run with the same arguments in alternating runs
    /// (e.g. solo5-hvt); the report gives the ratio pair by pair.
    #[arg(long, value_name = "PROGRAM")]
    compare: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// The exit status every run must have.
    #[arg(long, default_value_t = 0)]
    expect_status: i32,
    /// Instead: sustained runs per second for SECS seconds.
    #[arg(long, value_name = "SECS")]
    throughput: Option<u64>,
    /// A file each run reads as stdin (the request body).
    #[arg(long, value_name = "FILE")]
    stdin: Option<PathBuf>,
    /// Concurrent callers for --throughput.
    #[arg(long, default_value_t = 2)]
    callers: usize,
    /// Pause MS milliseconds before each timed run.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    interval: u64,
    /// Time `skiff call PATH` (a request to a running `skiff pool`)
    /// instead of `skiff run RUN-ARGS`.
    #[arg(long, value_name = "PATH")]
    pool: Option<PathBuf>,
    /// `skiff run`'s arguments: [flags] KERNEL [ARGS...]
    #[arg(
        value_name = "RUN-ARGS",
        required_unless_present = "pool",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    args: Vec<OsString>,
}

/// solo5-hvt's exact argv: no subcommand word.
#[derive(Debug, Parser)]
#[command(
    name = "solo5-hvt",
    version,
    about = "skiff, as a drop-in for Solo5's hvt tender"
)]
struct Solo5Hvt {
    #[command(flatten)]
    run: RunArgs,
}

/// The program's name as invoked (argv[0]'s basename).
fn invoked_as(argv0: Option<&OsString>) -> String {
    argv0
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "skiff".into())
}

/// Prints `prog: message` on stderr.
pub fn report(prog: &str, msg: &dyn std::fmt::Display) {
    let _ = writeln!(std::io::stderr(), "{prog}: {msg}");
}

/// A clap error as one line (help and version print in full, exit 0).
fn clap_exit(prog: &str, e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            0
        }
        _ => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            report(prog, &line.trim_start_matches("error: "));
            1
        }
    }
}

/// The whole program; returns the process exit status.
pub fn main() -> i32 {
    crate::bench::marks::mark(crate::bench::marks::Mark::Main);
    crate::bench::marks::mark(crate::bench::marks::Mark::Request);
    crate::vcpu::signals::install();
    crate::devices::function::reserve_stdio();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let prog = invoked_as(argv.first());
    let solo5 = prog.starts_with("solo5-hvt");
    // skiff's options follow its `run` word; solo5-hvt's follow argv[0].
    let argv = solo5::rewrite_device_flags(argv, if solo5 { 1 } else { 2 });
    let parsed = if solo5 {
        Solo5Hvt::try_parse_from(argv).map(|s| Command::Run(s.run))
    } else {
        Skiff::try_parse_from(argv).map(|s| s.cmd)
    };
    let run = match parsed {
        Ok(Command::Run(r)) => r,
        Ok(Command::Bench(b)) => return bench(&prog, b),
        Ok(Command::Hook) => return crate::oci::main(&prog),
        Ok(Command::Snapshot(s)) => return crate::snapshot::cli::main(&prog, s),
        Ok(Command::Pool(p)) => return crate::pool::main(&prog, p),
        Ok(Command::Call(c)) => return crate::pool::call::main(&prog, c),
        Ok(Command::Serve(s)) => return serve::main(&prog, s),
        Err(e) => return clap_exit(&prog, e),
    };
    let restore = run.restore.clone();
    let Some(cfg) = run.config_or_report(&prog) else {
        return 1;
    };
    run_guest(&prog, &cfg, restore.as_deref())
}

/// Builds (or restores from a snapshot) and runs one guest; its HALT
/// status is the exit status.
pub fn run_guest(prog: &str, cfg: &RunConfig, restore: Option<&std::path::Path>) -> i32 {
    let status = build_and_run(prog, cfg, restore);
    crate::bench::marks::report();
    status
}

fn build_and_run(prog: &str, cfg: &RunConfig, restore: Option<&std::path::Path>) -> i32 {
    let built = match restore {
        Some(snap) => crate::snapshot::restore::restore(snap, cfg).map_err(|e| e.to_string()),
        None => crate::builder::build(cfg).map_err(|e| e.to_string()),
    };
    let mut vm = match built {
        Ok(vm) => vm,
        Err(e) => {
            report(prog, &e);
            return 1;
        }
    };
    // Accelerator plugins (pocl's threads) need the looser policy.
    let policy = match cfg.accel.plugins {
        Some(_) => crate::seccomp::Policy::Accel,
        None => crate::seccomp::Policy::Run,
    };
    let Some(confined) = crate::seccomp::confine(prog, policy) else {
        return 1;
    };
    let result = vm.run();
    // The VM is destroyed after our exit, unless an outer filter (urunc's
    // allowlist has no clone) might forbid the holder process.
    if confined != crate::seccomp::Installed::OuterFilter {
        crate::teardown::defer(vm);
    }
    outcome(prog, result)
}

/// The exit status for how a run ended (a message on stderr unless the
/// guest halted).
pub fn outcome(prog: &str, result: Result<i32, crate::vmm::RunError>) -> i32 {
    match result {
        Ok(status) => status & 0xff,
        Err(crate::vmm::RunError::Signal(sig)) => {
            report(prog, &format_args!("exiting on signal {sig}"));
            128 + sig
        }
        Err(e) => {
            report(prog, &e);
            1
        }
    }
}

fn bench(prog: &str, b: BenchArgs) -> i32 {
    use crate::bench::harness;
    let skiff = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            report(prog, &format_args!("cannot find my own executable: {e}"));
            return 1;
        }
    };
    // What skiff is run with: `run RUN-ARGS` or `call PATH`.
    let skiff_args: Vec<OsString> = match &b.pool {
        Some(sock) => vec!["call".into(), sock.into()],
        None => std::iter::once("run".into())
            .chain(b.args.iter().cloned())
            .collect(),
    };
    if let Some(secs) = b.throughput {
        let args = skiff_args;
        let mut lines = Vec::new();
        let r =
            harness::throughput(&skiff, &args, b.callers, secs, b.expect_status).and_then(|mine| {
                lines.push(format!(
                    "skiff: {mine:.1} runs/s ({} callers, {secs} s)",
                    b.callers
                ));
                if let Some(other) = &b.compare {
                    let theirs =
                        harness::throughput(other, &b.args, b.callers, secs, b.expect_status)?;
                    lines.push(format!(
                        "{}: {theirs:.1} runs/s ({} callers, {secs} s)",
                        other.display(),
                        b.callers
                    ));
                }
                Ok(())
            });
        return match r {
            Ok(()) => {
                let _ = writeln!(std::io::stdout(), "{}", lines.join("\n"));
                0
            }
            Err(e) => {
                report(prog, &e);
                1
            }
        };
    }
    let cfg = harness::BenchConfig {
        skiff,
        compare: b.compare,
        runs: b.runs.max(1),
        expect_status: b.expect_status,
        skiff_args,
        run_args: b.args,
        stdin: b.stdin,
        interval: std::time::Duration::from_millis(b.interval),
    };
    match harness::bench(&cfg) {
        Ok(r) if b.json => {
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                serde_json::to_string_pretty(&r).unwrap_or_default()
            );
            0
        }
        Ok(r) => {
            harness::print_table(&r);
            0
        }
        Err(e) => {
            report(prog, &e);
            1
        }
    }
}
