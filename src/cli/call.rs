//! `skiff call PATH`: one request to a pool (src/pool/call.rs).

use clap::Args;
use std::path::PathBuf;

/// `skiff call PATH`
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The pool's socket (`skiff pool --socket PATH`).
    #[arg(value_name = "PATH")]
    pub socket: PathBuf,
}

pub fn main(prog: &str, a: CallArgs) -> i32 {
    match crate::pool::call::call(&a.socket) {
        Ok(status) => {
            crate::marks::report();
            status
        }
        Err(e) => {
            super::report(prog, &e);
            e.exit_status()
        }
    }
}
