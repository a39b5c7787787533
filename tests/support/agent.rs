//! A `skiff agent` child process: spawned, its address read from the first
//! line it prints, killed (and its unix socket removed) on drop. Shared by
//! tests/remote_agent/ and benches/remote.rs, which include this file by
//! path (tests and benches cannot import each other); std only. Each
//! includer uses only some of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

/// A running `skiff agent`, killed (and its socket removed) on drop.
pub struct Agent {
    pub child: Child,
    /// The address it listens on, as it printed it.
    pub addr: String,
    stderr: std::thread::JoinHandle<String>,
}

impl Agent {
    /// Spawns `cmd` (a `skiff agent` command line: its stdout and stderr
    /// are taken here) and waits until it prints its address.
    pub fn spawn(mut cmd: Command) -> Agent {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn skiff agent");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        assert!(
            !line.is_empty(),
            "agent did not start: {}",
            stderr.join().unwrap()
        );
        Agent {
            child,
            addr: line.trim().to_string(),
            stderr,
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Sends `sig` and waits for the agent to end; its status and stderr.
    pub fn stop(mut self, sig: i32) -> (std::process::ExitStatus, String) {
        self.signal(sig);
        let st = self.child.wait().unwrap();
        let err = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        // What the agent left behind is the caller's to see: not removed.
        self.addr.clear();
        (st, err.join().unwrap())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(p) = self.addr.strip_prefix("unix://") {
            if !p.starts_with('@') {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}
