//! A network namespace with TAPs for the tests that need a network
//! (tests/net.rs, tests/migrate.rs). Needs root and iproute2/iputils-ping.

use super::{stderr, stdout};
use std::process::Command;

/// A network namespace with TAPs, deleted on drop.
pub struct Netns(pub String);

pub fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
}

impl Netns {
    /// A namespace with `taps` (name, host address/prefix, mtu).
    pub fn new(tag: &str, taps: &[(&str, &str, u32)]) -> Self {
        let name = format!("skiff-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        for (tap, addr, mtu) in taps {
            ns.exec_ok(&["ip", "tuntap", "add", tap, "mode", "tap"]);
            ns.exec_ok(&["ip", "addr", "add", addr, "dev", tap]);
            ns.exec_ok(&["ip", "link", "set", tap, "mtu", &mtu.to_string(), "up"]);
        }
        ns
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }

    pub fn exec_ok(&self, args: &[&str]) {
        let o = self.cmd(args).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }

    /// `count` pings to `addr`; asserts every one was answered.
    pub fn ping(&self, addr: &str, count: u32) {
        let n = count.to_string();
        let o = self
            .cmd(&["ping", "-c", &n, "-i", "0.05", "-W", "5", addr])
            .output()
            .unwrap();
        let out = stdout(&o);
        assert!(
            o.status.success() && out.contains(&format!("{count} received")),
            "{out} {}",
            stderr(&o)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}
