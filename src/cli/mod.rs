//! Command-line entry: argv[0] picks the mode (`skiff ...` or the drop-in
//! `solo5-hvt ...`), clap parses, and each subcommand's `main` (one file
//! per subcommand) reports its typed errors and picks the exit status.
//!
//! Exit statuses (docs/cli.md): a usage error is clap's whole message and
//! [`USAGE`] (2, as clap and most tools); input skiff refuses (an image, a
//! device, a snapshot, a socket) is one line and [`REFUSED`] (1); a signal
//! N is 128+N; a run is its guest's HALT status. As `solo5-hvt`, usage
//! errors are solo5-hvt's own lines and status 1 (see `solo5.rs`).

mod accel;
mod agent;
mod bench;
mod call;
mod ctl;
mod debug;
mod hook;
mod inspect;
mod live;
mod pool;
mod run;
mod serve;
mod snapshot;
mod solo5;

pub use run::RunArgs;

use clap::{CommandFactory, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

/// Exit status for input skiff refuses (one line on stderr says why).
pub const REFUSED: i32 = 1;
/// Exit status for a command line clap refuses (its whole message).
pub const USAGE: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    about = "A small, fast KVM tender for Solo5 hvt unikernel functions",
    arg_required_else_help = true
)]
struct Skiff {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a unikernel: skiff run [solo5-hvt flags] [--] KERNEL [ARGS...]
    Run(run::RunCmd),
    /// Measure start-up: run an image N times (fresh processes) and report
    /// each phase from exec; optionally alternate with another tender.
    Bench(bench::BenchArgs),
    /// Boot a function to the point where it asks for its request body and
    /// save it there: skiff snapshot [run flags] --out FILE KERNEL [ARGS...]
    Snapshot(snapshot::SnapshotArgs),
    /// Keep guests restored from a snapshot ready on a unix socket:
    /// skiff pool --socket PATH --restore FILE [run flags] KERNEL
    Pool(pool::PoolArgs),
    /// Serve HTTP: every request gets a fresh guest (restored from
    /// --restore FILE, or booted cold): skiff serve --listen ADDR KERNEL
    Serve(serve::ServeArgs),
    /// Serve one request with a pool's ready guest: skiff call PATH
    /// (stdin, stdout, stderr and Http_* variables go to the guest)
    Call(call::CallArgs),
    /// Serve this machine's accelerators to remote functions (vAccel's
    /// agent protocol): skiff agent --address ADDR [--accel=PLUGINS]
    Agent(agent::AgentArgs),
    /// Show what a snapshot records and whether this host can restore it,
    /// or an image's ABI and manifest: skiff inspect FILE
    Inspect(inspect::InspectArgs),
    /// Send one command to a running guest's control socket
    /// (`skiff run --control PATH`): skiff ctl PATH COMMAND [ARG]
    Ctl(ctl::CtlArgs),
    /// OCI runtime hook: container state JSON on stdin; checks the image
    /// named by the annotation org.skiff.kernel (see README)
    Hook,
}

/// The program's name as invoked (argv[0]'s basename).
fn invoked_as(argv0: Option<&OsString>) -> String {
    argv0
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "skiff".into())
}

/// Prints `prog: message` on stderr as one line.
pub fn report(prog: &str, msg: &dyn std::fmt::Display) {
    crate::diag::line(prog, msg);
}

/// Reports a one-line error; returns [`REFUSED`].
fn refuse(prog: &str, msg: &dyn std::fmt::Display) -> i32 {
    report(prog, msg);
    REFUSED
}

/// Prints clap's whole message (help and version on stdout, errors with
/// their tips and usage on stderr) and returns its exit status.
fn clap_exit(e: clap::Error) -> i32 {
    let _ = e.print();
    match e.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
        _ => USAGE,
    }
}

/// skiff's own clap command, built (subcommands know their full names,
/// for usage lines).
pub(super) fn skiff_command() -> clap::Command {
    let mut cmd = run::kernel_optional_with_incoming(Skiff::command());
    cmd.build();
    cmd
}

/// The whole program; returns the process exit status.
pub fn main() -> i32 {
    crate::marks::mark(crate::marks::Mark::Main);
    crate::marks::mark(crate::marks::Mark::Request);
    crate::signals::install();
    crate::stdio::reserve_stdio();
    let argv: Vec<OsString> = std::env::args_os().collect();
    let prog = invoked_as(argv.first());
    if prog.starts_with("solo5-hvt") {
        return match solo5::parse(&prog, argv) {
            Ok(r) => run::main(&prog, r),
            Err(status) => status,
        };
    }
    match parse(argv) {
        Ok(Command::Run(r)) => run::main(&prog, r),
        Ok(Command::Bench(b)) => bench::main(&prog, b),
        Ok(Command::Snapshot(s)) => snapshot::main(&prog, s),
        Ok(Command::Pool(p)) => pool::main(&prog, p),
        Ok(Command::Call(c)) => call::main(&prog, c),
        Ok(Command::Serve(s)) => serve::main(&prog, s),
        Ok(Command::Hook) => hook::main(&prog),
        Ok(Command::Inspect(i)) => inspect::main(&prog, i),
        Ok(Command::Agent(a)) => agent::main(&prog, a),
        Ok(Command::Ctl(c)) => ctl::main(&prog, c),
        Err(e) => clap_exit(transposed_subcommand(e)),
    }
}

/// skiff's argv (not solo5-hvt's), by the argv rule and clap.
/// One clap command serves both the argv rule and the parse: building it
/// is part of every start-up.
fn parse(argv: Vec<OsString>) -> Result<Command, clap::Error> {
    use clap::FromArgMatches;
    let mut top = run::kernel_optional_with_incoming(Skiff::command());
    let argv = solo5::kernel_rule(&top, argv)?;
    let m = top.try_get_matches_from_mut(argv)?;
    Skiff::from_arg_matches(&m).map(|s| s.cmd)
}

/// clap's similarity test misses transposed letters (`skiff rnu`): the
/// tip it would give for other typos, given for those too.
fn transposed_subcommand(e: clap::Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::InvalidSubcommand || e.get(ContextKind::SuggestedSubcommand).is_some()
    {
        return e;
    }
    let Some(ContextValue::String(given)) = e.get(ContextKind::InvalidSubcommand) else {
        return e;
    };
    let letters = |s: &str| {
        let mut v: Vec<char> = s.chars().collect();
        v.sort_unstable();
        v
    };
    let mut top = skiff_command();
    let Some(name) = top
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .find(|n| letters(n) == letters(given))
    else {
        return e;
    };
    clap::Error::raw(
        ErrorKind::InvalidSubcommand,
        format!(
            "unrecognized subcommand '{given}'\n\n  tip: a similar subcommand exists: '{name}'"
        ),
    )
    .format(&mut top)
}

/// Every subcommand's name and its options that take a value (`--mem`,
/// `--socket`, ...), as clap defines them: for tests and the argv rule.
pub fn value_flags() -> Vec<(String, Vec<String>)> {
    skiff_command()
        .get_subcommands()
        .map(|s| (s.get_name().to_string(), solo5::value_flags(s)))
        .collect()
}

#[cfg(test)]
mod tests;
