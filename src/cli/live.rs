//! `skiff run --control PATH` and `--incoming ADDR` (docs/migration.md):
//! the guest is received (or built), the control socket bound, then the
//! run is confined and served.

use super::run::{build_vm, confine, outcome, signalled, LiveArgs};
use super::{refuse, report, REFUSED};
use crate::config::RunConfig;
use crate::control::run::Outcome;
use crate::control::Control;
use crate::migrate::source::Origin;
use crate::seccomp::{Installed, Policy};
use crate::snapshot::save::Source;
use sha2::{Digest, Sha256};
use std::path::Path;

pub fn run(
    prog: &str,
    cfg: &RunConfig,
    restore: Option<&Path>,
    live: &LiveArgs,
    kernel_given: bool,
) -> i32 {
    // 1. The guest: received from a source, restored or booted, and the
    //    image it runs (kept for snapshots and migrations).
    let (mut vm, image) = match &live.incoming {
        Some(addr) => match crate::migrate::dest::receive(addr, cfg, kernel_given) {
            Ok(r) => (r.vm, r.image),
            Err(_) if crate::signals::pending().is_some() => return signalled(prog),
            Err(e) => return refuse(prog, &e),
        },
        None => {
            let image = match crate::builder::read_image(&cfg.kernel, cfg.mem.bytes()) {
                Ok(i) => i,
                Err(e) => return refuse(prog, &e),
            };
            match build_vm(prog, cfg, restore) {
                Ok(vm) => (vm, image),
                Err(status) => return status,
            }
        }
    };
    // 2. The control socket, before the filter (its thread and socket).
    let ctl = match live.control.as_deref().map(Control::bind) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return refuse(prog, &e),
        None => None,
    };
    // A controlled run opens files (snapshot FILE), sockets (migrate ADDR)
    // and threads on command: run's allowlist plus those (seccomp/
    // live.json). Accelerator plugins need the denylist whatever else.
    let policy = match (cfg.accel.plugins.is_some(), ctl.is_some()) {
        (true, _) => Policy::Accel,
        (false, true) => Policy::Live,
        (false, false) => Policy::Run,
    };
    let Some(confined) = confine(prog, policy) else {
        return REFUSED;
    };
    let src = Source {
        sha256: Sha256::digest(&image).into(),
        cmdline: &cfg.cmdline,
    };
    let origin = Origin { src, image: &image };
    let result = match &ctl {
        Some(ctl) => {
            let silence = std::time::Duration::from_secs(live.migrate_timeout);
            crate::control::run::run(&mut vm, ctl, &origin, silence)
        }
        None => vm.run().map(Outcome::Halted),
    };
    if confined != Installed::OuterFilter {
        crate::teardown::defer(vm);
    }
    drop(ctl);
    match result {
        Ok(Outcome::Migrated { addr, report: r }) => {
            report(prog, &format!("migrated to {addr}: {r}"));
            0
        }
        Ok(Outcome::Halted(status)) => outcome(prog, Ok(status)),
        Err(e) => outcome(prog, Err(e)),
    }
}
