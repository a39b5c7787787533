//! skiff: a small, fast KVM tender for Solo5 hvt unikernel functions.
//!
//! The path of one run: [`cli`] (argv) -> [`config`] (validated, no KVM)
//! -> [`builder`] (image, memory, KVM, vCPU) -> [`vmm::Vm::run`] (exit ->
//! [`hypercall::decode`] -> [`devices::Devices::handle`]) -> exit status.

pub mod accel;
pub mod agent;
pub mod bench;
pub mod builder;
pub mod cli;
pub mod config;
pub mod control;
pub mod debug;
pub mod devices;
pub mod diag;
pub mod hypercall;
pub mod image;
pub mod marks;
pub mod memory;
pub mod migrate;
pub mod oci;
pub mod pool;
pub mod seccomp;
pub mod serve;
pub mod signals;
pub mod snapshot;
pub mod stdio;
pub mod teardown;
pub mod trace;
pub mod vaccel;
pub mod vcpu;
pub mod vmm;
