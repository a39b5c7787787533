//! Debugging a unikernel: a gdb stub (`--gdb`), ELF core files of a
//! guest that faults (`--dumpcore`), and per-exit tracing (`--trace`).
//! All off by default; nothing here runs on a normal run's hot path.

pub mod dumpcore;
pub mod gdb;
mod kick;
pub mod paging;
pub mod regs;

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

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
