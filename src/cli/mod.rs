//! Command-line entry: argv[0] picks the mode (`skiff ...` or the drop-in
//! `solo5-hvt ...`), clap parses, errors become one line and exit 1.

mod solo5;

use crate::config::{self, MemSize, RunConfig};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

/// The flags `skiff run` shares with solo5-hvt.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest memory in MiB (rounded down to 2 MiB; at most 4096).
    #[arg(long, value_name = "MB", value_parser = MemSize::from_mib, default_value = "512")]
    pub mem: MemSize,
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
    pub fn into_config(self) -> Result<RunConfig, config::ConfigError> {
        Ok(RunConfig {
            mem: self.mem,
            cmdline: config::cmdline(&self.args)?,
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
    eprintln!("{prog}: {msg}");
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
    crate::vcpu::signals::install();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let prog = invoked_as(argv.first());
    let argv = solo5::rewrite_device_flags(argv);
    let parsed = if prog.starts_with("solo5-hvt") {
        Solo5Hvt::try_parse_from(argv).map(|s| s.run)
    } else {
        Skiff::try_parse_from(argv).map(|s| match s.cmd {
            Command::Run(r) => r,
        })
    };
    let run = match parsed {
        Ok(r) => r,
        Err(e) => return clap_exit(&prog, e),
    };
    let cfg = match run.into_config() {
        Ok(c) => c,
        Err(e) => {
            report(&prog, &e);
            return 1;
        }
    };
    run_guest(&prog, &cfg)
}

/// Builds and runs one guest; its HALT status is the exit status.
pub fn run_guest(prog: &str, cfg: &RunConfig) -> i32 {
    let mut vm = match crate::builder::build(cfg) {
        Ok(vm) => vm,
        Err(e) => {
            report(prog, &e);
            return 1;
        }
    };
    if !crate::seccomp::confine(prog, crate::seccomp::Policy::Run) {
        return 1;
    }
    match vm.run() {
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
