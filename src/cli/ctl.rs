//! `skiff ctl PATH COMMAND...`: one command to a control socket
//! (`skiff run --control PATH`); the reply on stdout (`ok ...`, exit 0)
//! or stderr (`error: ...`, exit 1).

use super::{refuse, REFUSED};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The control socket (`skiff run --control PATH`).
    #[arg(value_name = "PATH")]
    pub socket: PathBuf,
    /// status | pause | resume | snapshot FILE | migrate ADDR | cancel
    #[arg(value_name = "COMMAND", required = true, num_args = 1..)]
    pub command: Vec<String>,
}

pub fn main(prog: &str, a: CtlArgs) -> i32 {
    let line = a.command.join(" ");
    let mut conn = match crate::control::Client::connect(&a.socket) {
        Ok(c) => c,
        Err(e) => return refuse(prog, &e),
    };
    if super::run::confine(prog, crate::seccomp::Policy::Ctl).is_none() {
        return REFUSED;
    }
    match conn.send(&line) {
        Ok(reply) if reply == "ok" || reply.starts_with("ok ") => {
            println!("{reply}");
            0
        }
        Ok(reply) => {
            eprintln!("{reply}");
            REFUSED
        }
        Err(e) => refuse(prog, &e),
    }
}
