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
    let line = match resolved(&a.command) {
        Ok(words) => words.join(" "),
        Err(e) => return refuse(prog, &e),
    };
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

/// `migrate tcp://NAME:PORT` with the name resolved here, before this
/// process is confined: the controlled run resolves no names (its
/// allowlist has no resolv.conf, NSS modules or DNS sockets).
fn resolved(words: &[String]) -> Result<Vec<String>, String> {
    use crate::vaccel::addr::Address;
    use std::net::{SocketAddr, ToSocketAddrs};
    let mut out = words.to_vec();
    if let [verb, addr] = &mut out[..] {
        if let (true, Ok(Address::Tcp(hp))) = (verb == "migrate", addr.parse::<Address>()) {
            if hp.parse::<SocketAddr>().is_err() {
                let first = hp
                    .to_socket_addrs()
                    .map_err(|e| format!("cannot resolve '{hp}': {e}"))?
                    .next()
                    .ok_or_else(|| format!("cannot resolve '{hp}': no address"))?;
                *addr = format!("tcp://{first}");
            }
        }
    }
    Ok(out)
}
