//! A running `skiff pool` for tests (tests/pool.rs, tests/classify.rs).

use super::{guest, run_with, skiff};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A running `skiff pool`, ended with SIGTERM on drop.
pub struct Pool {
    pub child: Child,
    pub socket: PathBuf,
}

impl Pool {
    /// Starts a pool of `workers` for NAME from `snap` with run `flags`
    /// and waits until it says its workers are ready.
    pub fn start(dir: &Path, name: &str, snap: &Path, workers: usize, flags: &[&str]) -> Pool {
        let socket = dir.join(format!("{name}.sock"));
        let mut child = Command::new(skiff())
            .arg("pool")
            .args(flags)
            .args(["--workers", &workers.to_string(), "--socket"])
            .arg(&socket)
            .arg("--restore")
            .arg(snap)
            .arg(guest(name))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pool");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        // Made first, so a pool that fails to start is ended on drop.
        let pool = Pool { child, socket };
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("workers ready"), "pool said: {line:?}");
        // Keep draining (a worker's messages go to the pool's stderr until
        // it has a caller).
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        pool
    }

    pub fn call(&self, body: &[u8], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(skiff());
        cmd.arg("call").arg(&self.socket).envs(env.iter().copied());
        run_with(cmd, body, Duration::from_secs(60))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The pids whose parent is `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so after ')'.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: i32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == pid {
            out.push(p);
        }
    }
    out
}
