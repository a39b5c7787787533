//! `skiff run` with `--gdb`, `--dumpcore` or `--trace` (src/debug/): the
//! same build and run as a plain run, with the debugger in between and a
//! core file after a fault.

use super::report;
use super::run::{build_vm, confine, outcome};
use crate::config::RunConfig;
use crate::debug::dumpcore::{self, Core};
use crate::debug::gdb::{self, Outcome};
use crate::vmm::RunError;
use clap::Args;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where `--gdb` listens when given no address.
pub const DEFAULT_GDB: &str = "127.0.0.1:1234";

/// `skiff run`'s debugging flags.
#[derive(Debug, Args, Default, Clone)]
pub struct DebugArgs {
    /// Wait for gdb on ADDR (default 127.0.0.1:1234; a bare port means
    /// 127.0.0.1:PORT) before the guest's first instruction.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, require_equals = true,
          default_missing_value = DEFAULT_GDB, value_parser = parse_gdb_addr)]
    pub gdb: Option<SocketAddr>,
    /// When the guest faults or aborts, write an ELF core file of it to
    /// DIR (default: the current directory).
    #[arg(long, value_name = "DIR", num_args = 0..=1, require_equals = true,
          default_missing_value = ".")]
    pub dumpcore: Option<PathBuf>,
    /// Print each exit and hypercall, its arguments and its time to
    /// stderr (also: SKIFF_LOG=trace).
    #[arg(long)]
    pub trace: bool,
}

impl DebugArgs {
    /// Whether any debugging flag was given.
    pub fn any(&self) -> bool {
        self.gdb.is_some() || self.dumpcore.is_some() || self.trace
    }
}

/// `--gdb`'s address: HOST:PORT, or a port alone on 127.0.0.1.
pub fn parse_gdb_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not an address (HOST:PORT or PORT)"))
}

/// Whether `SKIFF_LOG` asks for tracing on a run without debug flags.
pub fn log_env() -> bool {
    std::env::var_os("SKIFF_LOG").is_some_and(|v| !v.is_empty())
}

pub fn run(prog: &str, cfg: &RunConfig, restore: Option<&Path>, d: &DebugArgs) -> i32 {
    let status = build_and_debug(prog, cfg, restore, d);
    crate::marks::report();
    status
}

fn build_and_debug(prog: &str, cfg: &RunConfig, restore: Option<&Path>, d: &DebugArgs) -> i32 {
    crate::trace::init(d.trace);
    // Bind first, so a bad or busy address fails before any work.
    let listener = match d.gdb.map(gdb::listen).transpose() {
        Ok(l) => l,
        Err(e) => {
            report(prog, &e);
            return 1;
        }
    };
    // The image again for the core's build id (read now: after the
    // seccomp filter, opening files is no longer allowed).
    let image = match &d.dumpcore {
        Some(_) => std::fs::read(&cfg.kernel).unwrap_or_default(),
        None => Vec::new(),
    };
    let mut vm = match build_vm(prog, cfg, restore) {
        Ok(vm) => vm,
        Err(status) => return status,
    };
    let stream = match &listener {
        Some(l) => {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            report(prog, &format_args!("waiting for gdb on {addr}"));
            match gdb::accept(l, &mut vm) {
                Ok(conn) => {
                    let peer = conn
                        .0
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    report(prog, &format_args!("gdb connected from {peer}"));
                    Some(conn)
                }
                Err(e) => {
                    report(prog, &e);
                    return 1;
                }
            }
        }
        None => None,
    };
    drop(listener);
    let Some(confined) = confine(prog, crate::seccomp::Policy::Debug) else {
        return super::REFUSED;
    };
    let result = match stream {
        None => vm.run(),
        Some((s, pvm)) => match gdb::serve(&mut vm, s, pvm) {
            Ok(Outcome::Finished(r)) => r,
            Ok(Outcome::Killed) => {
                report(prog, &"guest killed by gdb");
                return 128 + libc::SIGKILL;
            }
            Err(gdb::GdbError::Run(e)) => Err(e),
            Err(e) => {
                report(prog, &e);
                return 1;
            }
        },
    };
    let status = match (&d.dumpcore, &result) {
        (Some(dir), Ok(255)) => {
            report(
                prog,
                &format_args!(
                    "guest aborted (status 255); {}",
                    dump(&vm, &image, cfg, dir, true)
                ),
            );
            255
        }
        (Some(dir), Err(e @ RunError::Guest { .. })) => {
            report(
                prog,
                &format_args!("{e}; {}", dump(&vm, &image, cfg, dir, false)),
            );
            1
        }
        _ => return finish(prog, vm, confined, result),
    };
    if confined != crate::seccomp::Installed::OuterFilter {
        crate::teardown::defer(vm);
    }
    status
}

fn finish(
    prog: &str,
    vm: crate::vmm::Vm,
    confined: crate::seccomp::Installed,
    result: Result<i32, RunError>,
) -> i32 {
    if confined != crate::seccomp::Installed::OuterFilter {
        crate::teardown::defer(vm);
    }
    outcome(prog, result)
}

/// Writes the core; the words for the one-line report either way.
fn dump(vm: &crate::vmm::Vm, image: &[u8], cfg: &RunConfig, dir: &Path, halted: bool) -> String {
    let name = cfg
        .kernel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "guest".into());
    let core = Core::gather(vm, image, &name, halted);
    let lost = core.as_ref().is_ok_and(|c| c.regs_lost);
    match core.and_then(|c| dumpcore::write(&c, &vm.mem, dir)) {
        Ok(path) if lost => format!(
            "core dumped to {} (memory only: KVM had reset the vCPU's registers)",
            path.display()
        ),
        Ok(path) => format!("core dumped to {}", path.display()),
        Err(e) => format!("no core: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdb_addresses() {
        assert_eq!(
            parse_gdb_addr("1234").unwrap(),
            "127.0.0.1:1234".parse().unwrap()
        );
        assert_eq!(
            parse_gdb_addr("0.0.0.0:9").unwrap(),
            "0.0.0.0:9".parse().unwrap()
        );
        assert!(parse_gdb_addr("nowhere").is_err());
    }
}
