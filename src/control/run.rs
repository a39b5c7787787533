//! The controlled run: the guest runs on this (the main) thread and,
//! between two exits, this thread serves the control socket's commands as
//! the VM's owner. A paused guest waits here; `snapshot` and `migrate`
//! stop it between exits (never inside a hypercall).

use super::{Command, Control, State};
use crate::migrate::{source, Report};
use crate::snapshot::save;
use crate::vmm::{RunError, Vm};
use std::time::Duration;

/// How a controlled run ended.
#[derive(Debug)]
pub enum Outcome {
    /// The guest's HALT, with its status.
    Halted(i32),
    /// The guest left for `addr`.
    Migrated { addr: String, report: Report },
}

/// Runs `vm` to its HALT or until it migrates away; a migration gives up
/// on a destination silent for `silence`.
pub fn run(
    vm: &mut Vm,
    ctl: &Control,
    origin: &source::Origin,
    silence: Duration,
) -> Result<Outcome, RunError> {
    ctl.on_vcpu_thread();
    loop {
        if let Some(status) = vm.run_until(|| ctl.requested())? {
            return Ok(Outcome::Halted(status));
        }
        if let Some(done) = serve(vm, ctl, origin, silence)? {
            return Ok(done);
        }
    }
}

/// Serves waiting commands; while paused, waits for more. `None`: run on.
fn serve(
    vm: &mut Vm,
    ctl: &Control,
    origin: &source::Origin,
    silence: Duration,
) -> Result<Option<Outcome>, RunError> {
    let mut paused = false;
    // A migration in doubt left the guest paused without its TAPs (and
    // with its accelerator sessions parked at the agent: these bytes).
    let mut in_doubt: Option<Option<Vec<u8>>> = None;
    loop {
        if let Some(sig) = crate::signals::pending() {
            return Err(RunError::Signal(sig));
        }
        let Some(req) = ctl.take(paused) else {
            if paused {
                continue;
            }
            return Ok(None);
        };
        match req.cmd.clone() {
            Command::Pause => {
                paused = true;
                ctl.set_state(State::Paused);
                req.reply(Ok("paused".into()));
            }
            Command::Resume if paused => {
                let mut note = String::new();
                if let Some(handed) = &in_doubt {
                    // A TAP held elsewhere means the destination runs the
                    // guest: refuse. Sessions gone (claimed, or expired at
                    // the agent) are said, and the guest runs without them.
                    if let Err(e) = vm.devices.net.open_taps() {
                        req.reply(Err(format!("cannot take the TAPs back: {e}")));
                        continue;
                    }
                    if let (Some(a), Some(bytes)) = (vm.devices.accel.as_mut(), handed) {
                        if let Err(e) = a.take_back(bytes) {
                            tracing::warn!("resume: accelerator sessions lost: {e}");
                            note = format!(" (accelerator sessions lost: {e})");
                        }
                    }
                    in_doubt = None;
                }
                paused = false;
                ctl.set_state(State::Running);
                req.reply(Ok(format!("running{note}")));
            }
            Command::Resume => req.reply(Err("not paused".into())),
            Command::Snapshot(path) => {
                let r = save::snapshot_now(vm, &origin.src, &path)
                    .map(|s| format!("saved {} ({} pages)", path.display(), s.pages))
                    .map_err(|e| e.to_string());
                req.reply(r);
            }
            Command::Migrate(addr) => {
                ctl.set_migrating(true);
                let kick = || ctl.kick();
                let stream = |fd| ctl.set_stream(fd);
                let driver = source::Driver {
                    cancel: ctl.cancel_flag(),
                    kick: &kick,
                    stream: &stream,
                    running: !paused,
                    silence,
                };
                let r = source::migrate(vm, &addr, origin, &driver);
                ctl.set_migrating(false);
                match r {
                    Ok(report) => {
                        req.reply_last(Ok(format!("migrated: {report}")));
                        return Ok(Some(Outcome::Migrated {
                            addr: addr.to_string(),
                            report,
                        }));
                    }
                    Err(crate::migrate::MigrateError::Halted(status)) => {
                        req.reply_last(Err(format!(
                            "the guest halted (status {status}) during the migration"
                        )));
                        return Ok(Some(Outcome::Halted(status)));
                    }
                    Err(crate::migrate::MigrateError::Run(e)) => {
                        req.reply(Err(e.to_string()));
                        return Err(e);
                    }
                    Err(crate::migrate::MigrateError::InDoubt { why, handed }) => {
                        let e = crate::migrate::MigrateError::InDoubt { why, handed: None };
                        // Never two running copies: the operator decides.
                        paused = true;
                        in_doubt = Some(handed);
                        ctl.set_state(State::Paused);
                        tracing::warn!("migrate: {e}");
                        req.reply(Err(e.to_string()));
                    }
                    Err(e) => req.reply(Err(e.to_string())),
                }
            }
            // Answered by the connection's thread.
            Command::Status | Command::Cancel => {
                req.reply(Err("internal: not for the vCPU".into()))
            }
        }
        if !paused && !ctl.requested() {
            return Ok(None);
        }
    }
}
