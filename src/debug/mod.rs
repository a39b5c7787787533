//! Debugging a unikernel: a gdb stub (`--gdb`), ELF core files of a
//! guest that faults (`--dumpcore`); the flags are parsed in
//! src/cli/debug.rs, per-exit tracing (`--trace`) is the leaf src/trace.rs.
//! All off by default; nothing here runs on a normal run's hot path.

pub mod dumpcore;
pub mod gdb;
mod kick;
pub mod paging;
pub mod regs;
