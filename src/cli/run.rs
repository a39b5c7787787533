//! `skiff run` (and `solo5-hvt`): the flags shared with solo5-hvt, and
//! one guest built (or restored), confined and run to its HALT.

use super::{refuse, report, REFUSED};
use crate::config::{self, MemSize, RunConfig};
use crate::seccomp::{Installed, Policy};
use clap::Args;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `skiff run` (and solo5-hvt): the shared flags and the live ones.
#[derive(Debug, Args)]
pub struct RunCmd {
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Live orchestration (docs/migration.md): none of it costs anything
/// when absent (no thread, no socket).
#[derive(Debug, Clone, Args)]
pub struct LiveArgs {
    /// Serve a control socket at PATH (mode 0600): status, pause, resume,
    /// snapshot FILE, migrate ADDR, cancel (`skiff ctl PATH COMMAND`).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Receive a running guest from a `migrate` at ADDR (tcp://HOST:PORT
    /// or unix:///PATH) instead of booting KERNEL, then run it.
    #[arg(long, value_name = "ADDR", conflicts_with = "restore")]
    pub incoming: Option<crate::vaccel::addr::Address>,
    /// A `migrate` gives up (the guest runs on) when its destination
    /// stays silent this many seconds (a slow link or host: more).
    #[arg(long, value_name = "SECS", default_value = "10", requires = "control",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub migrate_timeout: u64,
}

/// The flags `skiff run` shares with solo5-hvt.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Guest memory in MiB (rounded down to 2 MiB; at most 4096).
    #[arg(long, value_name = "MB", value_parser = MemSize::from_mib, default_value = "512")]
    pub mem: MemSize,
    #[command(flatten)]
    pub accel: super::accel::AccelArgs,
    #[command(flatten)]
    pub debug: super::debug::DebugArgs,
    /// Resume the function from this snapshot (`skiff snapshot`) instead of
    /// booting it; KERNEL and the flags must be the snapshot's.
    #[arg(long, value_name = "FILE")]
    pub restore: Option<PathBuf>,
    /// The CPU features a booted guest sees: `host` (all this host's) or
    /// `baseline` (a fleet-common set, for snapshots that move between
    /// CPUs: docs/snapshots.md). A restore gives the snapshot's.
    #[arg(long, value_enum, value_name = "TEMPLATE", default_value = "host")]
    pub cpu_template: CpuTemplateArg,
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
    /// The unikernel (.hvt ELF image). Options end here: what follows is
    /// the guest's. (`skiff run --incoming` may leave it out: see
    /// [`kernel_optional_with_incoming`].)
    #[arg(value_name = "KERNEL", required = true)]
    pub kernel: Option<PathBuf>,
    /// Arguments passed to the unikernel as its command line.
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<OsString>,
}

/// `skiff run --incoming ADDR` takes its image from the source; KERNEL,
/// when given, must be the same. Only `run` has --incoming, so only its
/// KERNEL is made optional (clap would refuse the rule on the others).
pub fn kernel_optional_with_incoming(cmd: clap::Command) -> clap::Command {
    // mut_arg moves an argument to the end: the guest's ARGS are moved
    // after it again, so the positionals keep their order.
    cmd.mut_subcommand("run", |c| {
        c.mut_arg("kernel", |a| {
            a.required(false).required_unless_present("incoming")
        })
        .mut_arg("args", |a| a)
    })
}

impl RunArgs {
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
            kernel: self.kernel.unwrap_or_default(),
            cpu_template: self.cpu_template.into(),
        })
    }

    /// [`Self::into_config`], the error reported as one line.
    pub fn config_or_report(self, prog: &str) -> Result<RunConfig, i32> {
        self.into_config().map_err(|e| refuse(prog, &e))
    }
}

pub fn main(prog: &str, cmd: RunCmd) -> i32 {
    let RunCmd { live, run } = cmd;
    let kernel_given = run.kernel.is_some();
    let restore = run.restore.clone();
    if let Some(Err(e)) = restore.as_deref().map(regular_file) {
        return refuse(prog, &e);
    }
    let debug = run.debug.clone();
    let live_asked = live.control.is_some() || live.incoming.is_some();
    match run.config_or_report(prog) {
        Ok(_) if live_asked && debug.any() => refuse(
            prog,
            &"--control and --incoming cannot be combined with --gdb, --dumpcore or --trace",
        ),
        Ok(cfg) if live_asked => {
            super::live::run(prog, &cfg, restore.as_deref(), &live, kernel_given)
        }
        Ok(cfg) if debug.any() || super::debug::log_env() => {
            super::debug::run(prog, &cfg, restore.as_deref(), &debug)
        }
        Ok(cfg) => run_guest(prog, &cfg, restore.as_deref()),
        Err(status) => status,
    }
}

/// Refuses a `--restore` FILE that is not a regular file before anything
/// opens it for reading: a FIFO with no writer would block that open, and
/// std retries it through the signals meant to stop skiff.
/// fstat, not `metadata()`: std uses statx, which urunc's seccomp filter
/// does not allow.
pub fn regular_file(path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path);
    let f = opened.map_err(|e| format!("--restore {}: {e}", path.display()))?;
    // SAFETY: an all-zero `stat` is a valid out-buffer for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `f` is open; `st` is a valid, writable stat buffer.
    let ok = unsafe { libc::fstat(f.as_raw_fd(), &mut st) } == 0;
    match ok && st.st_mode & libc::S_IFMT == libc::S_IFREG {
        true => Ok(()),
        false => Err(format!("--restore {}: not a regular file", path.display())),
    }
}

/// Builds (or restores from a snapshot) and runs one guest; its HALT
/// status is the exit status.
fn run_guest(prog: &str, cfg: &RunConfig, restore: Option<&Path>) -> i32 {
    let status = build_and_run(prog, cfg, restore);
    crate::marks::report();
    status
}

/// Builds the guest (or restores it from a snapshot); on failure, the
/// error is reported and its exit status returned.
pub(super) fn build_vm(
    prog: &str,
    cfg: &RunConfig,
    restore: Option<&Path>,
) -> Result<crate::vmm::Vm, i32> {
    let built = match restore {
        Some(snap) => crate::snapshot::restore::restore(snap, cfg).map_err(|e| e.to_string()),
        None => crate::builder::build(cfg).map_err(|e| e.to_string()),
    };
    match built {
        Ok(vm) => Ok(vm),
        // A signal during the build (a FIFO, a slow plugin) ends it too.
        Err(_) if crate::signals::pending().is_some() => Err(signalled(prog)),
        Err(e) => Err(refuse(prog, &e)),
    }
}

fn build_and_run(prog: &str, cfg: &RunConfig, restore: Option<&Path>) -> i32 {
    let mut vm = match build_vm(prog, cfg, restore) {
        Ok(vm) => vm,
        Err(status) => return status,
    };
    // Accelerator plugins (pocl's threads) need the looser policy.
    let policy = match cfg.accel.plugins {
        Some(_) => Policy::Accel,
        None => Policy::Run,
    };
    let Some(confined) = confine(prog, policy) else {
        return REFUSED;
    };
    let result = vm.run();
    // The VM is destroyed after our exit, unless an outer filter (urunc's
    // allowlist has no clone) might forbid the holder process.
    if confined != Installed::OuterFilter {
        crate::teardown::defer(vm);
    }
    outcome(prog, result)
}

/// Installs the seccomp filter, saying so when an outer one is kept;
/// `None` (reported) when it cannot be installed.
pub fn confine(prog: &str, policy: Policy) -> Option<Installed> {
    match crate::seccomp::install(policy) {
        Ok(i) => {
            if let Some(note) = i.note() {
                report(prog, &note);
            }
            Some(i)
        }
        Err(e) => {
            report(prog, &e);
            None
        }
    }
}

/// The exit status for how a run ended (a message on stderr unless the
/// guest halted).
pub fn outcome(prog: &str, result: Result<i32, crate::vmm::RunError>) -> i32 {
    if let Err(e) = &result {
        report(prog, e);
    }
    crate::vmm::exit_status(&result)
}

/// Reports the pending signal; its 128+N status.
pub fn signalled(prog: &str) -> i32 {
    let sig = crate::signals::pending().unwrap_or(libc::SIGTERM);
    let e = crate::vmm::RunError::Signal(sig);
    report(prog, &e);
    e.exit_status()
}

/// `--cpu-template`'s values; the library's `vcpu::CpuTemplate` says what
/// each one masks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuTemplateArg {
    /// Everything KVM supports on this host.
    #[default]
    Host,
    /// A fleet-common x86-64 feature set (docs/snapshots.md, "Travel").
    Baseline,
}

impl From<CpuTemplateArg> for crate::vcpu::CpuTemplate {
    fn from(t: CpuTemplateArg) -> Self {
        match t {
            CpuTemplateArg::Host => Self::Host,
            CpuTemplateArg::Baseline => Self::Baseline,
        }
    }
}
